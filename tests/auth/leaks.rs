//! The secret a client presents never appears in a response body, a
//! response header, or a log line, whatever the outcome.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tollgate::auth::{AuthLayer, KeyHash, KeyRecord, KeyStore};
use tollgate::clock::TokioClock;
use tollgate::envelope::{ErrorEnvelopeLayer, ErrorFormat};
use tollgate::store::StoreError;
use tollgate::store::memory::MemoryKeyStore;
use tower::{Layer, ServiceBuilder};

use super::{chat, echo, send, unix};

struct Failing;

impl KeyStore for Failing {
    fn lookup(
        &self,
        _hash: &KeyHash,
    ) -> tollgate::store::StoreFuture<Option<std::sync::Arc<KeyRecord>>> {
        tollgate::store::StoreFuture::ready(Err(StoreError::Unavailable(
            "redis: connection reset".into(),
        )))
    }
}

/// One secret per outcome, each distinctive enough to search for.
const VALID: &str = "sk-leak-valid-4f1c2d3e";
const REVOKED: &str = "sk-leak-revoked-8a7b6c5d";
const EXPIRED: &str = "sk-leak-expired-1a2b3c4d";
const DISABLED: &str = "sk-leak-disabled-9e8d7c6b";
const RESTRICTED: &str = "sk-leak-restricted-5f4e3d2c";
const UNKNOWN: &str = "sk-leak-unknown-0a1b2c3d";
const MALFORMED: &str = "sk-leak-malformed-7e6f5a4b";

#[tokio::test(start_paused = true)]
async fn secrets_never_reach_bodies_headers_or_logs() {
    let logs = crate::logs_support::captured();

    let t0 = 1_800_000_000;
    let store = MemoryKeyStore::from_records([
        KeyRecord::new("valid", KeyHash::of(VALID))
            .with_created_at(unix(t0))
            .with_expires_at(unix(t0 + 3600)),
        KeyRecord::new("revoked", KeyHash::of(REVOKED)).with_revoked(true),
        KeyRecord::new("expired", KeyHash::of(EXPIRED))
            .with_created_at(unix(t0 - 7200))
            .with_expires_at(unix(t0 - 3600)),
        KeyRecord::new("disabled", KeyHash::of(DISABLED)).with_disabled(true),
        KeyRecord::new("restricted", KeyHash::of(RESTRICTED)).with_allowed_models(["gpt-4o-mini"]),
    ])
    .unwrap();

    let requests = || {
        let mut all = Vec::new();
        for secret in [VALID, REVOKED, EXPIRED, DISABLED, RESTRICTED, UNKNOWN] {
            for header in ["authorization", "x-api-key", "api-key", "x-bf-vk"] {
                let value = if header == "authorization" {
                    format!("Bearer {secret}")
                } else {
                    secret.to_owned()
                };
                all.push(chat((header, &value), "gpt-4o"));
            }
        }
        all.push(chat(("x-unrelated", MALFORMED), "m"));
        all.push(chat(("authorization", "Bearer "), "m"));
        all.push(chat(("authorization", &format!("Token {MALFORMED}")), "m"));
        all.push(chat(
            ("authorization", &format!("Bearer {MALFORMED} extra")),
            "m",
        ));
        let mut twice = chat(("x-api-key", MALFORMED), "m");
        twice
            .headers_mut()
            .append("x-api-key", MALFORMED.parse().unwrap());
        all.push(twice);
        all.push(
            Request::get("/v1/models")
                .header("content-type", "application/grpc")
                .header("authorization", format!("Bearer {UNKNOWN}"))
                .body(Full::<Bytes>::default())
                .unwrap(),
        );
        all
    };

    let clock = TokioClock::starting_at(unix(t0));
    let mut seen = Vec::new();
    // Alone, inside the envelope (every format), and with a failing store.
    let mut bare = AuthLayer::new(store.clone()).clock(clock).layer(echo());
    for req in requests() {
        seen.push(send(&mut bare, req).await);
    }
    for format in [
        ErrorFormat::OpenAi,
        ErrorFormat::Anthropic,
        ErrorFormat::ErrorCodeDetail,
        ErrorFormat::Humanloop,
    ] {
        let mut wrapped = ServiceBuilder::new()
            .layer(ErrorEnvelopeLayer::new().format(format))
            .layer(AuthLayer::new(store.clone()).clock(clock))
            .service(echo());
        for req in requests() {
            seen.push(send(&mut wrapped, req).await);
        }
    }
    let mut failing = AuthLayer::new(Failing).layer(echo());
    for req in requests() {
        seen.push(send(&mut failing, req).await);
    }
    tokio::time::advance(Duration::from_secs(1)).await;

    let secrets = [
        VALID, REVOKED, EXPIRED, DISABLED, RESTRICTED, UNKNOWN, MALFORMED,
    ];
    // Every outcome was exercised.
    let codes: std::collections::BTreeSet<String> = seen.iter().map(|a| a.code()).collect();
    for code in [
        "missing_api_key",
        "invalid_api_key",
        "revoked_api_key",
        "expired_api_key",
        "account_disabled",
        "model_not_allowed",
        "store_unavailable",
    ] {
        assert!(
            codes.contains(code) || seen.iter().any(|a| a.body.contains(code)),
            "{code} not exercised: {codes:?}"
        );
    }
    for answer in &seen {
        for secret in secrets {
            assert!(!answer.body.contains(secret), "body: {}", answer.body);
            for (name, value) in &answer.headers {
                let value = String::from_utf8_lossy(value.as_bytes());
                assert!(!value.contains(secret), "header {name}: {value}");
                // Nor percent-encoded, as in `grpc-message`.
                assert!(
                    !value.contains(&secret.replace('-', "%2D")),
                    "header {name}: {value}"
                );
            }
        }
    }

    let logs = logs.text();
    assert!(
        logs.contains("API key refused"),
        "nothing was logged:\n{logs}"
    );
    assert!(logs.contains("key_id=revoked"), "{logs}");
    for secret in secrets {
        assert!(!logs.contains(secret), "log:\n{logs}");
    }
    // Nor any hash of them, which would let a reader confirm a guess.
    for secret in secrets {
        assert!(
            !logs.contains(&KeyHash::of(secret).to_hex()),
            "log:\n{logs}"
        );
    }
}

#[test]
fn debug_output_holds_no_secret() {
    let (secret, record) = KeyRecord::generate().unwrap();
    let principal = tollgate::Principal::new(record.clone());
    let layer = AuthLayer::new(MemoryKeyStore::from_records([record.clone()]).unwrap());
    for debug in [
        format!("{secret:?}"),
        format!("{record:?}"),
        format!("{principal:?}"),
        format!("{layer:?}"),
        format!("{:?}", record.secret_hash),
    ] {
        assert!(!debug.contains(secret.expose()), "{debug}");
        assert!(!debug.contains(&secret.expose()[3..]), "{debug}");
    }
}
