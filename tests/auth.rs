//! AuthLayer: every outcome, every extractor, revocation under load, key
//! files, and the layer in axum and tonic.
//!
//! One file for the layer, as each layer has; over 600 lines because each
//! test builds its own stack and reads alone.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tollgate::auth::{
    Auth, AuthLayer, Extractor, KeyHash, KeyRecord, KeyStore, Principal, X_API_KEY_EXPIRES_IN,
};
use tollgate::clock::TokioClock;
use tollgate::envelope::{ErrorEnvelopeLayer, ErrorFormat};
use tollgate::rate_limit::Limit;
use tollgate::store::StoreError;
use tollgate::store::memory::MemoryKeyStore;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

// Longer scenarios, in tests/auth/.
#[path = "auth/files.rs"]
mod files;
#[cfg(feature = "tonic")]
#[path = "auth/grpc.rs"]
mod grpc;
#[path = "auth/leaks.rs"]
mod leaks;
#[path = "support/logs.rs"]
mod logs_support;
#[path = "auth/revocation.rs"]
mod revocation;
#[cfg(feature = "axum")]
#[path = "auth/web.rs"]
mod web;

const SECRET: &str = "sk-test-0123456789abcdef";

/// Echoes the caller's key id, or "anonymous".
type Echo =
    tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

fn echo() -> Echo {
    tower::util::BoxCloneSyncService::new(service_fn(|req: Request<Full<Bytes>>| async move {
        let id = req
            .extensions()
            .get::<Principal>()
            .map_or("anonymous".to_owned(), |p| p.key_id().to_owned());
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(id))))
    }))
}

fn store_with(records: impl IntoIterator<Item = KeyRecord>) -> MemoryKeyStore {
    MemoryKeyStore::from_records(records).unwrap()
}

fn alice() -> KeyRecord {
    KeyRecord::new("alice", KeyHash::of(SECRET))
}

fn service(store: MemoryKeyStore) -> Auth<Echo, MemoryKeyStore> {
    AuthLayer::new(store).layer(echo())
}

fn chat(header: (&str, &str), model: &str) -> Request<Full<Bytes>> {
    Request::post("/v1/chat/completions")
        .header(header.0, header.1)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#
        ))))
        .unwrap()
}

fn bearer(secret: &str) -> Request<Full<Bytes>> {
    chat(("authorization", &format!("Bearer {secret}")), "gpt-4o")
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn error(&self) -> Value {
        let v: Value = serde_json::from_str(&self.body).unwrap_or(Value::Null);
        v["error"].clone()
    }

    fn code(&self) -> String {
        self.error()["code"].as_str().unwrap_or_default().to_owned()
    }
}

async fn send<S, B>(svc: &mut S, req: Request<Full<Bytes>>) -> Answer
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let response = svc.ready().await.unwrap().call(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

fn unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

// ---------------------------------------------------------------- outcomes

#[tokio::test]
async fn valid_key_passes_with_its_principal() {
    let record = alice()
        .with_team("research")
        .with_rate_limit(Limit::requests_per_minute(60));
    let mut svc = AuthLayer::new(store_with([record])).layer(service_fn(
        |req: Request<Full<Bytes>>| async move {
            let p = req.extensions().get::<Principal>().unwrap().clone();
            assert_eq!(p.team(), Some("research"));
            assert_eq!(p.rate_limits(), [Limit::requests_per_minute(60)]);
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(p.key_id().to_owned()))))
        },
    ));
    let a = send(&mut svc, bearer(SECRET)).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "alice"));
    assert!(!a.headers.contains_key(X_API_KEY_EXPIRES_IN));
}

#[tokio::test]
async fn missing_key_is_401_missing_api_key_naming_the_headers() {
    let mut svc = service(store_with([alice()]));
    let req = Request::get("/v1/models").body(Full::default()).unwrap();
    let a = send(&mut svc, req).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.code(), "missing_api_key");
    assert_eq!(a.error()["type"], "invalid_request_error");
    let message = a.error()["message"].as_str().unwrap().to_owned();
    for header in [
        "Authorization",
        "Bearer",
        "x-api-key",
        "`api-key`",
        "x-bf-vk",
    ] {
        assert!(message.contains(header), "{message}");
    }
    // An empty value is no key either.
    let a = send(&mut svc, chat(("authorization", "Bearer   "), "m")).await;
    assert_eq!(a.code(), "missing_api_key");
    let a = send(&mut svc, chat(("x-api-key", ""), "m")).await;
    assert_eq!(a.code(), "missing_api_key");
}

#[tokio::test]
async fn unknown_or_malformed_key_is_401_invalid_api_key() {
    let mut svc = service(store_with([alice()]));
    for req in [
        bearer("sk-test-unknown"),
        chat(("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l"), "m"),
        chat(("authorization", "Bearer two keys"), "m"),
    ] {
        let a = send(&mut svc, req).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(a.code(), "invalid_api_key", "{}", a.body);
    }
    // Not printable ASCII (obs-text).
    let mut req = chat(("x-other", "1"), "m");
    let value = http::HeaderValue::from_bytes(b"sk-caf\xe9").unwrap();
    req.headers_mut().insert("x-api-key", value);
    assert_eq!(send(&mut svc, req).await.code(), "invalid_api_key");
    // Two key headers of one name are ambiguous.
    let mut req = chat(("x-api-key", SECRET), "m");
    req.headers_mut()
        .append("x-api-key", "sk-other".parse().unwrap());
    assert_eq!(send(&mut svc, req).await.code(), "invalid_api_key");
}

#[tokio::test(start_paused = true)]
async fn expired_key_is_401_expired_api_key() {
    let t0 = 1_800_000_000;
    let record = alice()
        .with_created_at(unix(t0 - 100))
        .with_expires_at(unix(t0 + 60));
    let layer = AuthLayer::new(store_with([record]))
        .clock(TokioClock::starting_at(unix(t0)))
        .expiry_warning(Duration::from_secs(3600));
    let mut svc = layer.layer(echo());

    let a = send(&mut svc, bearer(SECRET)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers[X_API_KEY_EXPIRES_IN], "60");

    tokio::time::advance(Duration::from_secs(60)).await;
    let a = send(&mut svc, bearer(SECRET)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.code(), "expired_api_key");
}

#[tokio::test(start_paused = true)]
async fn max_key_lifetime_expires_old_keys() {
    let t0 = 1_800_000_000;
    let day = 86_400;
    let young =
        KeyRecord::new("young", KeyHash::of("sk-young")).with_created_at(unix(t0 - 85 * day));
    let old = KeyRecord::new("old", KeyHash::of("sk-old")).with_created_at(unix(t0 - 91 * day));
    let mut svc = AuthLayer::new(store_with([young, old]))
        .clock(TokioClock::starting_at(unix(t0)))
        .max_key_lifetime(Duration::from_secs(90 * day))
        .layer(echo());

    let a = send(&mut svc, bearer("sk-young")).await;
    assert_eq!(a.status, StatusCode::OK);
    // Five days left, inside the default seven-day warning window.
    assert_eq!(
        a.headers[X_API_KEY_EXPIRES_IN],
        (5 * day).to_string().as_str()
    );
    assert_eq!(
        send(&mut svc, bearer("sk-old")).await.code(),
        "expired_api_key"
    );
}

#[tokio::test(start_paused = true)]
async fn expiry_warning_can_be_turned_off() {
    let t0 = 1_800_000_000;
    let record = alice()
        .with_created_at(unix(t0))
        .with_expires_at(unix(t0 + 60));
    let mut svc = AuthLayer::new(store_with([record]))
        .clock(TokioClock::starting_at(unix(t0)))
        .expiry_warning(Duration::ZERO)
        .layer(echo());
    let a = send(&mut svc, bearer(SECRET)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(!a.headers.contains_key(X_API_KEY_EXPIRES_IN));
}

#[tokio::test(start_paused = true)]
async fn a_rotated_secret_works_until_its_grace_ends_then_is_revoked() {
    let t0 = 1_800_000_000;
    let store = store_with([alice().with_created_at(unix(t0 - 100))]);
    let mut record = (*store.get("alice").unwrap()).clone();
    record.rotate(KeyHash::of("sk-new-secret"), unix(t0 + 3600));
    store.insert(record).unwrap();
    let mut svc = AuthLayer::new(store)
        .clock(TokioClock::starting_at(unix(t0)))
        .layer(echo());

    // The old secret still works, and says for how long.
    let a = send(&mut svc, bearer(SECRET)).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "alice"));
    assert_eq!(a.headers[X_API_KEY_EXPIRES_IN], "3600");
    // The new one works without a warning.
    let a = send(&mut svc, bearer("sk-new-secret")).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "alice"));
    assert!(!a.headers.contains_key(X_API_KEY_EXPIRES_IN));

    tokio::time::advance(Duration::from_secs(3600)).await;
    let a = send(&mut svc, bearer(SECRET)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.code(), "revoked_api_key");
    assert!(!a.body.contains(SECRET));
    let a = send(&mut svc, bearer("sk-new-secret")).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn revoked_key_is_401_revoked_api_key() {
    let mut svc = service(store_with([alice().with_revoked(true)]));
    let a = send(&mut svc, bearer(SECRET)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.code(), "revoked_api_key");
}

#[tokio::test]
async fn disabled_key_is_403_account_disabled() {
    let store = store_with([alice().with_disabled(true)]);
    let mut svc = service(store.clone());
    let a = send(&mut svc, bearer(SECRET)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.code(), "account_disabled");
    assert_eq!(a.error()["type"], "permission_error");
    // Re-enabled at run time.
    store.set_disabled("alice", false);
    assert_eq!(send(&mut svc, bearer(SECRET)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn model_outside_the_allow_list_is_403_model_not_allowed() {
    let record = alice().with_allowed_models(["gpt-4o-mini", "claude-*"]);
    let mut svc = service(store_with([record]));
    let header = ("authorization", "Bearer sk-test-0123456789abcdef");

    let a = send(&mut svc, chat(header, "gpt-4o")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.code(), "model_not_allowed");
    assert_eq!(a.error()["param"], "model");
    assert!(a.error()["message"].as_str().unwrap().contains("`gpt-4o`"));

    for model in ["gpt-4o-mini", "claude-sonnet-4-5"] {
        assert_eq!(
            send(&mut svc, chat(header, model)).await.status,
            StatusCode::OK
        );
    }
    // No model: `GET /v1/models`, or a body without one.
    let req = Request::get("/v1/models")
        .header(header.0, header.1)
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&mut svc, req).await.status, StatusCode::OK);
    let req = Request::post("/v1/files")
        .header(header.0, header.1)
        .body(Full::new(Bytes::from(r#"{"purpose":"batch"}"#)))
        .unwrap();
    assert_eq!(send(&mut svc, req).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_body_is_read_only_for_keys_with_an_allow_list() {
    let store = store_with([
        alice(),
        KeyRecord::new("bob", KeyHash::of("sk-bob")).with_allowed_models(["gpt-4o"]),
    ]);
    let mut svc = service(store);
    let junk = |secret: &str| {
        Request::post("/v1/chat/completions")
            .header("authorization", format!("Bearer {secret}"))
            .body(Full::new(Bytes::from_static(b"{not json")))
            .unwrap()
    };
    // Unrestricted: the body is not looked at.
    assert_eq!(send(&mut svc, junk(SECRET)).await.status, StatusCode::OK);
    // Restricted: it is, and malformed JSON is a 400.
    let a = send(&mut svc, junk("sk-bob")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    // Over the body limit: 413.
    let mut svc = AuthLayer::new(store_with([
        KeyRecord::new("bob", KeyHash::of("sk-bob")).with_allowed_models(["gpt-4o"])
    ]))
    .max_request_body_bytes(16)
    .layer(echo());
    let a = send(&mut svc, bearer("sk-bob")).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_model_read_by_the_layer_reaches_the_handler_intact() {
    let record = alice().with_allowed_models(["gpt-4o"]);
    let mut svc = AuthLayer::new(store_with([record])).layer(service_fn(
        |req: Request<Full<Bytes>>| async move {
            assert!(req.extensions().get::<tollgate::RequestMeta>().is_some());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Ok::<_, Infallible>(Response::new(Full::new(body)))
        },
    ));
    let a = send(&mut svc, bearer(SECRET)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.starts_with(r#"{"model":"gpt-4o""#), "{}", a.body);
}

/// A store that answers like a remote one, or fails.
struct Remote {
    inner: MemoryKeyStore,
    fail: bool,
}

impl KeyStore for Remote {
    fn lookup(
        &self,
        hash: &KeyHash,
    ) -> tollgate::store::StoreFuture<Option<std::sync::Arc<KeyRecord>>> {
        let (inner, hash, fail) = (self.inner.clone(), *hash, self.fail);
        tollgate::store::StoreFuture::pending(async move {
            tokio::task::yield_now().await;
            if fail {
                Err(StoreError::Unavailable("connection refused".into()))
            } else {
                Ok(inner.get_by_hash(&hash))
            }
        })
    }
}

#[tokio::test]
async fn store_failure_is_503_and_fails_closed() {
    let store: Arc<dyn KeyStore> = Arc::new(Remote {
        inner: store_with([alice()]),
        fail: true,
    });
    let mut svc = AuthLayer::new(store).layer(echo());
    let a = send(&mut svc, bearer(SECRET)).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.code(), "store_unavailable");
    assert!(!a.body.contains("connection refused"));
}

#[tokio::test]
async fn a_remote_store_is_awaited() {
    let store = Remote {
        inner: store_with([
            alice(),
            KeyRecord::new("bob", KeyHash::of("sk-bob")).with_allowed_models(["gpt-4o-mini"]),
        ]),
        fail: false,
    };
    let mut svc = AuthLayer::new(store).layer(echo());
    assert_eq!(send(&mut svc, bearer(SECRET)).await.body, "alice");
    assert_eq!(
        send(&mut svc, bearer("sk-unknown")).await.code(),
        "invalid_api_key"
    );
    assert_eq!(
        send(&mut svc, bearer("sk-bob")).await.code(),
        "model_not_allowed"
    );
    let req = chat(("x-api-key", "sk-bob"), "gpt-4o-mini");
    assert_eq!(send(&mut svc, req).await.body, "bob");
}

#[tokio::test]
async fn refusals_are_decided_in_call_and_never_reach_the_inner_service() {
    let (mock, mut handle) =
        tower_test::mock::pair::<Request<Full<Bytes>>, Response<Full<Bytes>>>();
    let mut svc = AuthLayer::new(store_with([alice()])).layer(mock);
    handle.allow(1);
    let a = send(&mut svc, bearer("sk-nope")).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(handle.next_request().now_or_never_pending());

    let call = tokio::spawn(async move { send(&mut svc, bearer(SECRET)).await });
    let (req, respond) = handle.next_request().await.unwrap();
    assert_eq!(
        req.extensions().get::<Principal>().unwrap().key_id(),
        "alice"
    );
    respond.send_response(Response::new(Full::new(Bytes::from_static(b"ok"))));
    assert_eq!(call.await.unwrap().body, "ok");
}

trait NowOrNeverPending {
    fn now_or_never_pending(self) -> bool;
}

impl<F: std::future::Future> NowOrNeverPending for F {
    fn now_or_never_pending(self) -> bool {
        use futures_util::FutureExt;
        self.now_or_never().is_none()
    }
}

#[tokio::test]
async fn the_envelope_re_renders_refusals() {
    let mut svc = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new().format(ErrorFormat::Anthropic))
        .layer(AuthLayer::new(store_with([alice()])))
        .service(echo());
    let a = send(&mut svc, bearer("sk-nope")).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let v: Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    assert_eq!(a.headers["x-should-retry"], "false");
}

// -------------------------------------------------------------- extractors

#[tokio::test]
async fn every_default_extractor_finds_the_key() {
    let mut svc = service(store_with([alice()]));
    for (name, value) in [
        ("authorization", format!("Bearer {SECRET}")),
        ("authorization", format!("bearer {SECRET}")),
        ("authorization", format!("BEARER {SECRET}")),
        ("authorization", format!("  Bearer \t {SECRET}  ")),
        ("x-api-key", SECRET.to_owned()),
        ("x-api-key", format!(" {SECRET} ")),
        ("api-key", SECRET.to_owned()),
        ("x-bf-vk", SECRET.to_owned()),
    ] {
        let a = send(&mut svc, chat((name, &value), "m")).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (StatusCode::OK, "alice"),
            "{name}: {value:?}"
        );
    }
}

#[tokio::test]
async fn the_first_key_found_wins() {
    let bob = KeyRecord::new("bob", KeyHash::of("sk-bob"));
    let mut svc = service(store_with([alice(), bob]));
    let mut req = chat(("x-api-key", "sk-bob"), "m");
    req.headers_mut()
        .insert("authorization", format!("Bearer {SECRET}").parse().unwrap());
    assert_eq!(send(&mut svc, req).await.body, "alice");
    // A non-Bearer Authorization does not hide a key elsewhere.
    let mut req = chat(("x-api-key", "sk-bob"), "m");
    req.headers_mut()
        .insert("authorization", "Basic Ym9iOg==".parse().unwrap());
    assert_eq!(send(&mut svc, req).await.body, "bob");
}

#[tokio::test]
async fn extractors_can_be_chosen_and_written() {
    let query_key = Extractor::from_fn(|parts| {
        let query = parts.uri.query()?;
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("key="))
            .map(Cow::Borrowed)
    })
    .described_as("the `key` query parameter");
    let cookie = Extractor::from_fn(|parts| {
        let cookie = parts.headers.get("cookie")?.to_str().ok()?;
        cookie
            .split("; ")
            .find_map(|c| c.strip_prefix("session="))
            .map(|s| Cow::Owned(s.to_owned()))
    });
    let mut svc = AuthLayer::new(store_with([alice()]))
        .extractors([Extractor::x_api_key(), query_key, cookie])
        .layer(echo());

    let req = Request::get(format!("/v1beta/models?alt=sse&key={SECRET}"))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&mut svc, req).await.body, "alice");
    let req = Request::get("/v1/models")
        .header("cookie", format!("theme=dark; session={SECRET}"))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&mut svc, req).await.body, "alice");
    assert_eq!(
        send(&mut svc, chat(("x-api-key", SECRET), "m")).await.body,
        "alice"
    );

    // Bearer is no longer accepted, and the message says what is.
    let a = send(&mut svc, bearer(SECRET)).await;
    assert_eq!(a.code(), "missing_api_key");
    let message = a.error()["message"].as_str().unwrap().to_owned();
    assert_eq!(
        message,
        "You didn't provide an API key. Send it in the `x-api-key` header, \
         the `key` query parameter or a custom location."
    );
}

#[tokio::test]
async fn prefix_and_length_are_checked_before_lookup() {
    // Keys of the wrong shape never reach the store.
    struct Counting(AtomicUsize, MemoryKeyStore);
    impl KeyStore for Counting {
        fn lookup(
            &self,
            hash: &KeyHash,
        ) -> tollgate::store::StoreFuture<Option<std::sync::Arc<KeyRecord>>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            self.1.lookup(hash)
        }
    }
    let store = Arc::new(Counting(AtomicUsize::new(0), store_with([alice()])));
    let mut svc = AuthLayer::new(store.clone())
        .require_prefix("sk-")
        .key_length(20..=64)
        .layer(echo());
    for key in [
        "pk-test-0123456789abcdef",
        "sk-short",
        &format!("sk-{}", "a".repeat(70)),
    ] {
        let a = send(&mut svc, bearer(key)).await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (StatusCode::UNAUTHORIZED, "invalid_api_key")
        );
    }
    assert_eq!(store.0.load(Ordering::SeqCst), 0);
    assert_eq!(send(&mut svc, bearer(SECRET)).await.body, "alice");
    assert_eq!(store.0.load(Ordering::SeqCst), 1);
}

// --------------------------------------------------------------- minting

#[tokio::test]
async fn generated_keys_authenticate() {
    let (secret, record) = KeyRecord::generate().unwrap();
    assert!(secret.expose().starts_with("sk-"));
    let id = record.id.clone();
    let mut svc = AuthLayer::new(store_with([record]))
        .require_prefix(KeyRecord::SECRET_PREFIX)
        .layer(echo());
    assert_eq!(send(&mut svc, bearer(secret.expose())).await.body, id);
}
