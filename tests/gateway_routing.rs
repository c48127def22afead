//! Per-model upstreams and the limits that protect them, through the
//! example gateway (a process) in front of mock upstreams started here:
//! each model reaches its own upstream with that upstream's key and its
//! own name there; model-wide and upstream-wide limits hold across keys;
//! each model's attempt timeout; legacy rate-limit headers; and the
//! HiveOps guide's rate-limit test with the official `openai` SDK.

#[path = "support/gateway.rs"]
mod gateway_support;
#[path = "support/http.rs"]
mod http_support;
#[path = "../examples/support/mock/mod.rs"]
mod mock;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gateway_support::GatewayCommand;
use http::StatusCode;
use http_support::{call, post};
use serde_json::{Value, json};

const OPENAI_KEY: &str = "sk-upstream-openai-0123";
const ANTHROPIC_KEY: &str = "sk-upstream-anthropic-4567";

/// A mock upstream on loopback that accepts only `key`; its base URL.
async fn upstream(key: &str) -> (mock::Mock, String) {
    let mock = mock::Mock::new(vec![]).require_key(key);
    let addr = mock
        .clone()
        .serve(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("the mock binds");
    (mock, format!("http://{addr}/v1"))
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

const PRICES: &str = "input_usd_per_million = 1.0\noutput_usd_per_million = 1.0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_model_reaches_its_upstream_with_that_upstreams_key_and_name() {
    let (openai, openai_url) = upstream(OPENAI_KEY).await;
    let (anthropic, anthropic_url) = upstream(ANTHROPIC_KEY).await;
    let (default, default_url) = upstream("sk-default-upstream").await;
    let config = format!(
        r#"
upstream = "{default_url}"
upstream_api_key = "sk-default-upstream"

[[upstreams]]
name = "openai"
url = "{openai_url}"
api_key_env = "TEST_OPENAI_KEY"

[[upstreams]]
name = "anthropic"
url = "{anthropic_url}"
kind = "anthropic"
api_key = "{ANTHROPIC_KEY}"

[[models]]
name = "local"
{PRICES}

[[models]]
name = "gpt"
upstream = "openai"
upstream_model = "gpt-4o-mini-2024-07-18"
{PRICES}

[[models]]
name = "claude"
upstream = "anthropic"
{PRICES}

[[keys]]
id = "ok"
secret = "sk-test-ok"
"#
    );
    let gateway = GatewayCommand::new()
        .config(&config)
        .env("TEST_OPENAI_KEY", OPENAI_KEY)
        .start();
    let client = http_support::client();
    let url = gateway.url("/v1/chat/completions");

    let answer = call(
        &client,
        post(&url, Some("sk-test-ok"), &chat("gpt", "hi"), &[]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json()["model"], "gpt-4o-mini-2024-07-18");
    let answer = call(
        &client,
        post(&url, Some("sk-test-ok"), &chat("local", "hi"), &[]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let messages = json!({"model": "claude", "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}]});
    let answer = call(
        &client,
        post(
            &gateway.url("/v1/messages"),
            None,
            &messages,
            &[("x-api-key", "sk-test-ok")],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json()["model"], "claude");

    // Each upstream saw its own call, with its own key (it refuses others).
    assert_eq!(openai.calls().route("/v1/chat/completions"), 1);
    assert_eq!(openai.calls().total, 1);
    assert_eq!(default.calls().total, 1);
    assert_eq!(anthropic.calls().route("/v1/messages"), 1);
    assert_eq!(anthropic.calls().total, 1);
    // The log names the upstream; no upstream key appears anywhere.
    let line = gateway.wait_for_log(Duration::from_secs(10), |l| {
        l["message"] == "request" && l["model"] == "claude"
    });
    assert_eq!(line["upstream_name"], "anthropic", "{line}");
    assert_eq!(line["upstream"], anthropic_url.as_str(), "{line}");
    for secret in [OPENAI_KEY, ANTHROPIC_KEY, "sk-default-upstream"] {
        assert!(!gateway.stderr().contains(secret), "{secret} leaked");
    }
}

#[test]
fn an_upstream_key_variable_that_is_not_set_stops_the_start() {
    let config = format!(
        "[[upstreams]]\nname = \"openai\"\nurl = \"http://127.0.0.1:9/v1\"\napi_key_env = \"TOLLGATE_TEST_UNSET_KEY\"\n\n[[models]]\nname = \"m\"\nupstream = \"openai\"\n{PRICES}\n"
    );
    let finished = GatewayCommand::new()
        .config(&config)
        .arg("--check")
        .run(Duration::from_secs(30));
    assert_eq!(finished.code(), Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("upstreams[0].api_key_env")
            && finished.stderr.contains("TOLLGATE_TEST_UNSET_KEY"),
        "{}",
        finished.stderr
    );
    let finished = GatewayCommand::new()
        .config("[[models]]\nname = \"m\"\nupstream = \"nowhere\"\ninput_usd_per_million = 1.0\noutput_usd_per_million = 1.0\n")
        .arg("--check")
        .run(Duration::from_secs(30));
    assert_eq!(finished.code(), Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("models[0].upstream"),
        "{}",
        finished.stderr
    );
    assert!(finished.stderr.contains("line 1:"), "{}", finished.stderr);
}

const LIMITS: &str = r#"
upstream = "mock"
rate_limit_headers = "legacy"

[[upstreams]]
name = "pool"
url = "mock"
requests_per_minute = 3

[[models]]
name = "capped"
requests_per_minute = 2
input_usd_per_million = 1.0
output_usd_per_million = 1.0

[[models]]
name = "pooled-a"
upstream = "pool"
input_usd_per_million = 1.0
output_usd_per_million = 1.0

[[models]]
name = "pooled-b"
upstream = "pool"
input_usd_per_million = 1.0
output_usd_per_million = 1.0

[[models]]
name = "single"
max_concurrent = 1
input_usd_per_million = 1.0
output_usd_per_million = 1.0

[[keys]]
id = "a"
secret = "sk-test-a"
requests_per_minute = 100

[[keys]]
id = "b"
secret = "sk-test-b"
requests_per_minute = 100
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_and_upstream_limits_hold_across_keys() {
    let gateway = GatewayCommand::new().config(LIMITS).start();
    let client = http_support::client();
    let url = gateway.url("/v1/chat/completions");
    let send = |key: &'static str, model: &'static str| {
        let client = client.clone();
        let url = url.clone();
        async move { call(&client, post(&url, Some(key), &chat(model, "hi"), &[])).await }
    };

    // Two per minute for the model, whoever asks.
    assert_eq!(send("sk-test-a", "capped").await.status, StatusCode::OK);
    let second = send("sk-test-b", "capped").await;
    assert_eq!(second.status, StatusCode::OK);
    // Legacy headers describe the tightest limit: the model's.
    assert_eq!(
        second.header("x-ratelimit-limit"),
        "2",
        "{:?}",
        second.headers
    );
    assert_eq!(second.header("x-ratelimit-remaining"), "0");
    assert!(!second.header("x-ratelimit-reset").is_empty());
    let third = send("sk-test-a", "capped").await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    let message = third.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("2 requests per minute") && message.contains("model capped"),
        "{message}"
    );

    // Three per minute for the upstream, across its two models and two keys.
    assert_eq!(send("sk-test-a", "pooled-a").await.status, StatusCode::OK);
    assert_eq!(send("sk-test-b", "pooled-b").await.status, StatusCode::OK);
    assert_eq!(send("sk-test-a", "pooled-b").await.status, StatusCode::OK);
    let refused = send("sk-test-b", "pooled-a").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("upstream pool"), "{message}");

    // One in flight for the model: a slow stream holds the slot.
    let slow = json!({"model": "single", "stream": true,
        "messages": [{"role": "user", "content": "a b c d MOCK:delay_ms=300"}]});
    let held = tokio::spawn({
        let client = client.clone();
        let url = url.clone();
        async move { call(&client, post(&url, Some("sk-test-a"), &slow, &[])).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = send("sk-test-b", "single").await;
    assert_eq!(
        busy.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        busy.text()
    );
    let message = busy.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("Concurrency"), "{message}");
    assert_eq!(held.await.expect("join").status, StatusCode::OK);
    assert_eq!(send("sk-test-b", "single").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_model_has_its_own_attempt_timeout() {
    let (upstream_mock, url) = upstream("sk-up").await;
    let config = format!(
        r#"
upstream = "{url}"
upstream_api_key = "sk-up"
request_timeout_secs = 20

[retry]
max_attempts = 3
initial_backoff_ms = 10
max_backoff_ms = 20
attempt_timeout_secs = 10

[[models]]
name = "quick"
attempt_timeout_secs = 1
{PRICES}

[[keys]]
id = "ok"
secret = "sk-test-ok"
"#
    );
    let gateway = GatewayCommand::new().config(&config).start();
    let client = http_support::client();
    let chat_url = gateway.url("/v1/chat/completions");

    // Not streamed: the upstream may have done (and billed) the work, so
    // the timed-out attempt is not sent again, and the client is told not
    // to either.
    let started = Instant::now();
    let body = chat("quick", "slow MOCK:hang_ms=3000");
    let answer = call(
        &client,
        post(
            &chat_url,
            Some("sk-test-ok"),
            &body,
            &[("x-tollgate-test", "once")],
        ),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        answer.text()
    );
    assert_eq!(answer.header("x-should-retry"), "false");
    assert!(
        started.elapsed() < Duration::from_millis(2800),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(upstream_mock.calls().test("once"), 1);

    // Streamed: nothing reached the client before the timeout, so each
    // attempt is retried, to the limit, and the client is told not to retry.
    let body = json!({"model": "quick", "stream": true,
        "messages": [{"role": "user", "content": "slow MOCK:hang_ms=3000"}]});
    let answer = call(
        &client,
        post(
            &chat_url,
            Some("sk-test-ok"),
            &body,
            &[("x-tollgate-test", "thrice")],
        ),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        answer.text()
    );
    assert_eq!(answer.header("x-should-retry"), "false");
    assert_eq!(upstream_mock.calls().test("thrice"), 3);
}

/// The HiveOps guide's own test ("Test Rate Limiting", 000-hiveops-errors.txt):
/// 65 requests 0.1 s apart against 60 per minute, with the embedded demo
/// config, get a `RateLimitError` before the loop ends, at the 61st.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hiveops_rate_limit_test_gets_its_429_with_the_default_config() {
    let gateway = GatewayCommand::new().start();
    let out = http_support::run_sdk_script(
        "hiveops_rate_limit.py",
        vec![("TOLLGATE_BASE_URL", format!("{}/v1", gateway.base_url()))],
        Duration::from_secs(120),
    )
    .await;
    assert!(out.contains("Request 60: Rate limited!"), "{out}");
}
