//! Nothing unmetered, and every call that reached the upstream charged:
//! exact amounts for each way a call can end (`ChargePolicy`), in memory and
//! on Redis, and requests whose facts cannot be read refused or reserved a
//! fixed amount (`Unreadable`) by `BudgetLayer` and `RateLimitLayer` alone.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use tollgate::auth::{KeyHash, KeyRecord, Principal};
use tollgate::budget::{
    BudgetLayer, BudgetScope, BudgetSpec, ChargePolicy, Ledger, ModelPrice, Money, Period, Pricing,
};
use tollgate::rate_limit::{Limit, RateLimitLayer};
use tollgate::request::Unreadable;
use tollgate::store::memory::MemoryLedger;
use tollgate::{ApiError, BoxError};
use tower::{Layer, ServiceExt, service_fn};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Model `m`: $1 per million input tokens (1,000 nano-USD each), $2 per
/// million output tokens (2,000 each).
fn pricing() -> Pricing {
    Pricing::new().with("m", ModelPrice::per_million("1", "2").unwrap())
}

fn nanos(n: i64) -> Money {
    Money::from_nanos(n)
}

fn budget() -> BudgetSpec {
    BudgetSpec::budget(
        BudgetScope::Key("alice".into()),
        Money::from_usd(1),
        Period::Monthly,
    )
}

fn alice() -> Principal {
    let mut record = KeyRecord::new("alice", KeyHash::of("sk-alice"));
    record.budgets = vec![budget()];
    record.rate_limits = vec![Limit::tokens_per_minute(250)];
    Principal::new(record)
}

/// A streamed chat request with a 1-token prompt ("abcd") and `max_tokens`
/// 10: its worst case is 1 × 1,000 + 10 × 2,000 = 21,000 nano-USD.
fn chat() -> Request<Full<Bytes>> {
    let body = r#"{"model":"m","stream":true,"max_tokens":10,"messages":[{"role":"user","content":"abcd"}]}"#;
    let mut req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    req.extensions_mut().insert(alice());
    req
}

const PROMPT: i64 = 1_000;
const WORST: i64 = 1_000 + 10 * 2_000;

fn chunk(content: &str) -> Bytes {
    Bytes::from(format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}}}}]}}\n\n"
    ))
}

/// An SSE response that sends `events` and then never ends.
fn endless(events: Vec<Bytes>) -> Response<Body> {
    let frames =
        stream::iter(events.into_iter().map(|e| Ok(Frame::data(e)))).chain(stream::pending());
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(StreamBody::new(frames).boxed_unsync())
        .unwrap()
}

fn status_only(status: StatusCode, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync())
        .unwrap()
}

/// How a call ends, each with its expected charge under `Produced` and
/// under `Reservation` (nano-USD).
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// The client reads 8 characters of content, then goes away.
    DisconnectMidStream,
    /// The client goes away before the response headers.
    DisconnectBeforeHeaders,
    /// A timeout inside the budget layer fires before the headers.
    Timeout,
    /// The upstream answers 503 without usage.
    Refused,
    /// The upstream could not be reached (nothing was sent).
    ConnectError,
    /// A 500 that still reports usage.
    ErrorWithUsage,
}

impl Ending {
    fn expected(self, policy: ChargePolicy) -> i64 {
        let reservation = matches!(policy, ChargePolicy::Reservation);
        match self {
            // The prompt plus ceil(8 / 4) completion tokens seen.
            Ending::DisconnectMidStream if !reservation => PROMPT + 2 * 2_000,
            Ending::DisconnectBeforeHeaders | Ending::Timeout if !reservation => PROMPT,
            Ending::DisconnectMidStream | Ending::DisconnectBeforeHeaders | Ending::Timeout => {
                WORST
            }
            Ending::Refused | Ending::ConnectError => 0,
            // 3 prompt and 4 completion tokens, whatever the policy.
            Ending::ErrorWithUsage => 3 * 1_000 + 4 * 2_000,
        }
    }

    /// Runs one call ending this way through `BudgetLayer` over `ledger`.
    async fn run<L: Ledger + Clone>(self, ledger: L, policy: ChargePolicy) {
        let upstream = service_fn(move |_req: Request<Full<Bytes>>| async move {
            match self {
                Ending::DisconnectMidStream => Ok(endless(vec![chunk("Once"), chunk(" upo")])),
                Ending::DisconnectBeforeHeaders | Ending::Timeout => {
                    std::future::pending::<()>().await;
                    unreachable!()
                }
                Ending::Refused => Ok(status_only(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"error":{"message":"overloaded","type":"server_error"}}"#,
                )),
                Ending::ConnectError => Err::<_, BoxError>(Box::new(std::io::Error::from(
                    std::io::ErrorKind::ConnectionRefused,
                ))),
                Ending::ErrorWithUsage => Ok(status_only(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    r#"{"error":{"message":"cut"},"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
                )),
            }
        });
        // A timeout inside the budget layer, as a gateway's upstream timeout.
        let upstream = tower::timeout::Timeout::new(upstream, Duration::from_millis(50));
        let svc = BudgetLayer::with_ledger(pricing(), ledger)
            .charge_policy(policy)
            .layer(upstream);
        match self {
            Ending::DisconnectMidStream => {
                let mut body = svc.oneshot(chat()).await.unwrap().into_body();
                for _ in 0..2 {
                    body.frame().await.unwrap().unwrap();
                }
                drop(body);
            }
            Ending::DisconnectBeforeHeaders => {
                let call = svc.oneshot(chat());
                let gone = tokio::time::timeout(Duration::from_millis(10), call).await;
                assert!(gone.is_err(), "the upstream never answers");
            }
            Ending::Timeout => {
                let error = svc.oneshot(chat()).await.unwrap_err();
                assert!(error.is::<tower::timeout::error::Elapsed>(), "{error}");
            }
            Ending::ConnectError => {
                svc.oneshot(chat()).await.unwrap_err();
            }
            Ending::Refused | Ending::ErrorWithUsage => {
                let response = svc.oneshot(chat()).await.unwrap();
                response.into_body().collect().await.unwrap();
            }
        }
    }
}

const ENDINGS: [Ending; 6] = [
    Ending::DisconnectMidStream,
    Ending::DisconnectBeforeHeaders,
    Ending::Timeout,
    Ending::Refused,
    Ending::ConnectError,
    Ending::ErrorWithUsage,
];

/// The spend once the hold is settled (a remote ledger settles the call's
/// end in a task of its own: bounded wait).
async fn settled(ledger: &impl Ledger) -> Money {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = ledger.read(&budget()).await.unwrap();
        if status.reserved == Money::ZERO {
            return status.spent;
        }
        assert!(Instant::now() < deadline, "never settled: {status:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Each ending charges exactly its amount, once: a fresh ledger per case.
async fn every_ending_charges_exactly<L: Ledger + Clone>(fresh: impl AsyncFn() -> L) {
    for policy in [ChargePolicy::Produced, ChargePolicy::Reservation] {
        for ending in ENDINGS {
            let ledger = fresh().await;
            ending.run(ledger.clone(), policy).await;
            assert_eq!(
                settled(&ledger).await,
                nanos(ending.expected(policy)),
                "{ending:?} under {policy:?}"
            );
            // Charged once: nothing later changes it.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(
                ledger.read(&budget()).await.unwrap().spent,
                nanos(ending.expected(policy)),
                "{ending:?} under {policy:?}, later"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_every_call_that_reached_the_upstream_is_charged_exactly() {
    every_ending_charges_exactly(async || MemoryLedger::new()).await;
}

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_every_call_that_reached_the_upstream_is_charged_exactly() {
    use tollgate::store::redis::{RedisConfig, RedisConnection, RedisLedger};
    let server = redis_support::RedisServer::start();
    let prefix = std::sync::atomic::AtomicUsize::new(0);
    every_ending_charges_exactly(async || {
        // A key prefix per case: a fresh ledger on the same server.
        let n = prefix.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let config = RedisConfig::from_url(&server.url())
            .unwrap()
            .key_prefix(format!("case{n}:"));
        RedisLedger::new(RedisConnection::connect(config).await.unwrap())
    })
    .await;
}

// ---- nothing unmetered ------------------------------------------------------

fn multipart() -> Request<Full<Bytes>> {
    let mut req = Request::post("/v1/audio/transcriptions")
        .header("content-type", "multipart/form-data; boundary=x")
        .body(Full::new(Bytes::from_static(
            b"--x\r\ncontent-disposition: form-data; name=\"model\"\r\n\r\nm\r\n--x--\r\n",
        )))
        .unwrap();
    req.extensions_mut().insert(alice());
    req
}

fn form_not_json() -> Request<Full<Bytes>> {
    let mut req = Request::post("/v1/chat/completions")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(b"model=m&prompt=hi")))
        .unwrap();
    req.extensions_mut().insert(alice());
    req
}

async fn ok(_req: Request<Full<Bytes>>) -> Result<Response<Body>, Infallible> {
    Ok(status_only(StatusCode::OK, r#"{"text":"hello"}"#))
}

#[tokio::test]
async fn a_budget_refuses_what_it_cannot_read_unless_told_to_reserve() {
    let ledger = MemoryLedger::new();
    let layer = BudgetLayer::with_ledger(pricing(), ledger.clone());
    let response = layer
        .layer(service_fn(ok))
        .oneshot(multipart())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let error = response.extensions().get::<ApiError>().unwrap();
    assert_eq!(error.code(), Some("unsupported_media_type"));
    assert!(error.message().contains("multipart/form-data"), "{error:?}");
    let response = layer
        .layer(service_fn(ok))
        .oneshot(form_not_json())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(ledger.read(&budget()).await.unwrap().spent, Money::ZERO);

    // A fixed reservation: admitted, and charged in full (no model prices it).
    let reserve = Unreadable::Reserve {
        usd: "0.01".parse().unwrap(),
        tokens: 100,
    };
    let svc = layer.unreadable(reserve).layer(service_fn(ok));
    let response = svc.clone().oneshot(multipart()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
    assert_eq!(
        ledger.read(&budget()).await.unwrap().spent,
        "0.01".parse().unwrap()
    );
    // A request without a body is not unreadable: passes, unmetered.
    let mut get = Request::get("/v1/models")
        .body(Full::new(Bytes::new()))
        .unwrap();
    get.extensions_mut().insert(alice());
    let response = svc.oneshot(get).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
    assert_eq!(
        ledger.read(&budget()).await.unwrap().spent,
        "0.01".parse().unwrap()
    );
}

#[tokio::test(start_paused = true)]
async fn a_token_limit_refuses_what_it_cannot_read_unless_told_to_reserve() {
    // alice: 250 tokens per minute.
    let svc = RateLimitLayer::new().layer(service_fn(ok));
    let response = svc.clone().oneshot(multipart()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let response = svc.oneshot(form_not_json()).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // 100 tokens reserved each (the response reports no usage: kept).
    let svc = RateLimitLayer::new()
        .unreadable(Unreadable::Reserve {
            usd: Money::ZERO,
            tokens: 100,
        })
        .layer(service_fn(ok));
    for _ in 0..2 {
        let response = svc.clone().oneshot(multipart()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
    }
    let response = svc.clone().oneshot(multipart()).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(start_paused = true)]
async fn request_limits_alone_count_what_they_cannot_read() {
    // Only a request limit: the body's facts are not needed, so a
    // multipart upload is counted, not refused.
    let mut record = KeyRecord::new("bob", KeyHash::of("sk-bob"));
    record.rate_limits = vec![Limit::requests_per_minute(1)];
    let bob = Principal::new(record);
    let svc = RateLimitLayer::new().layer(service_fn(ok));
    let upload = || {
        let mut req = multipart();
        req.extensions_mut().insert(bob.clone());
        req
    };
    let response = svc.clone().oneshot(upload()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
    let response = svc.oneshot(upload()).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
}
