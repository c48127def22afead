//! The gateway example end to end: started in-process on 127.0.0.1:0 with
//! its built-in mock upstream, called over loopback with hyper and with the
//! official `openai` Python SDK.

#[allow(dead_code)]
#[path = "../examples/gateway/app.rs"]
mod app;
#[allow(dead_code)]
#[path = "../examples/gateway/config.rs"]
mod config;
#[path = "../examples/support/mock/mod.rs"]
mod mock;
mod support;
#[allow(dead_code)]
#[path = "../examples/gateway/upstream.rs"]
mod upstream;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const MODEL: &str = "llama3:8b-instruct-q8_0";

const TEST_CONFIG: &str = r#"
listen = "127.0.0.1:0"
upstream = "mock"
request_timeout_secs = 10
stream_idle_timeout_secs = 5

[retry]
max_attempts = 3
initial_backoff_ms = 10
max_backoff_ms = 50
max_retry_after_secs = 5

[[models]]
name = "llama3:8b-instruct-q8_0"
input_usd_per_million = 1.0
output_usd_per_million = 2.0
max_output_tokens = 100
context_window = 200

[[models]]
name = "other-model"
input_usd_per_million = 1.0
output_usd_per_million = 1.0

[[keys]]
id = "ok"
secret = "sk-test-ok"
requests_per_minute = 1000
tokens_per_minute = 1000000
budget_usd = 100.0
budget_period = "monthly"

[[keys]]
id = "expired"
secret = "sk-test-expired"
created_at = "2019-01-01T00:00:00Z"
expires_at = "2020-01-01T00:00:00Z"

[[keys]]
id = "revoked"
secret = "sk-test-revoked"
revoked = true

[[keys]]
id = "disabled"
secret = "sk-test-disabled"
disabled = true

[[keys]]
id = "restricted"
secret = "sk-test-restricted"
models = ["other-*"]

[[keys]]
id = "rpm"
secret = "sk-test-rpm"
requests_per_minute = 1

[[keys]]
id = "budget"
secret = "sk-test-budget"
budget_usd = 0.00001
budget_period = "monthly"

[[keys]]
id = "balance"
secret = "sk-test-balance"
balance_usd = 0.0

[[keys]]
id = "stream"
secret = "sk-test-stream"
budget_usd = 1.0
budget_period = "monthly"
"#;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn start() -> (String, HttpClient) {
    let config =
        config::Config::from_toml(TEST_CONFIG, "test config").expect("test config is valid");
    let running = app::start(config).await.expect("gateway starts");
    let base = format!("http://{}", running.addr);
    (base, Client::builder(TokioExecutor::new()).build_http())
}

async fn call(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("answered in time")
        .expect("request succeeds");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, bytes)
}

fn chat(base: &str, key: &str, body: Value) -> Request<Full<Bytes>> {
    Request::post(format!("{base}/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

fn get(base: &str, path: &str, key: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder = Request::get(format!("{base}{path}"));
    if let Some(key) = key {
        builder = builder.header("authorization", format!("Bearer {key}"));
    }
    builder.body(Full::default()).expect("request")
}

fn json_of(bytes: &Bytes) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

#[tokio::test]
async fn health_needs_no_key_and_unknown_paths_are_enveloped() {
    let (base, client) = start().await;
    let (status, _, body) = call(&client, get(&base, "/health", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&body)["status"], "ok");
    let (status, headers, body) = call(&client, get(&base, "/nope", None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json_of(&body)["error"]["type"], "not_found_error");
    assert!(headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn models_lists_what_the_key_may_use() {
    let (base, client) = start().await;
    let (status, _, body) = call(
        &client,
        get(&base, "/v1/models", Some("sk-test-restricted")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<String> = json_of(&body)["data"]
        .as_array()
        .expect("list")
        .iter()
        .map(|m| m["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids, ["other-model"]);
    let (status, _, _) = call(&client, get(&base, "/v1/models", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unknown_model_and_context_length_are_refused_before_the_upstream() {
    let (base, client) = start().await;
    let (status, _, body) = call(
        &client,
        chat(
            &base,
            "sk-test-ok",
            json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = &json_of(&body)["error"];
    assert_eq!(error["code"], "invalid_model");
    assert_eq!(error["param"], "model");
    assert_eq!(error["message"], "Invalid model 'gpt-9' specified");

    let (status, _, body) = call(
        &client,
        chat(
            &base,
            "sk-test-ok",
            json!({"model": MODEL, "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = &json_of(&body)["error"];
    assert_eq!(error["code"], "context_length_exceeded");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("200") && message.contains("1001"),
        "{message}"
    );
}

#[tokio::test]
async fn a_stream_without_include_usage_is_billed_from_reported_usage_and_hides_it() {
    let (base, client) = start().await;
    let (status, headers, body) = call(
        &client,
        chat(
            &base,
            "sk-test-stream",
            json!({"model": MODEL, "stream": true, "messages": [{"role": "user", "content": "one two three"}]}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers.contains_key("x-ratelimit-limit-requests")
            || headers.contains_key("x-budget-limit-usd")
    );
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("data: [DONE]"), "{text}");
    assert!(
        !text.contains("\"usage\""),
        "the usage chunk leaked: {text}"
    );

    // prompt 3 words × $1/M + completion 5 words × $2/M = $0.000013, exactly.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, _, body) = call(&client, get(&base, "/v1/key", Some("sk-test-stream"))).await;
    assert_eq!(status, StatusCode::OK);
    let key = json_of(&body);
    assert_eq!(key["id"], "stream");
    let remaining = key["budgets"][0]["remaining_usd"]
        .as_f64()
        .expect("remaining");
    assert!((remaining - (1.0 - 0.000013)).abs() < 1e-12, "{key}");
}

#[tokio::test]
async fn upstream_failures_are_retried_or_enveloped() {
    let (base, client) = start().await;
    let body =
        |text: &str| json!({"model": MODEL, "messages": [{"role": "user", "content": text}]});
    let (status, _, _) = call(
        &client,
        chat(&base, "sk-test-ok", body("flaky MOCK:status=503,times=2")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, bytes) = call(
        &client,
        chat(
            &base,
            "sk-test-ok",
            body("html MOCK:status=502,format=html"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(json_of(&bytes)["error"]["message"], "502 Bad Gateway");
    let (status, headers, _) = call(
        &client,
        chat(
            &base,
            "sk-test-ok",
            body("quota MOCK:status=429,code=insufficient_quota"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["x-should-retry"], "false");
}

#[test]
fn config_errors_name_the_field_and_line() {
    let err = config::Config::from_toml("listen = \"127.0.0.1:1\"\nbogus = 1\n", "t.toml")
        .expect_err("unknown field")
        .to_string();
    assert!(err.contains("bogus") && err.contains("line 2"), "{err}");
    let dup = format!(
        "{}\n[[keys]]\nid = \"ok\"\nsecret = \"sk-test-other\"\n",
        TEST_CONFIG
    );
    let err = config::Config::from_toml(&dup, "t.toml")
        .expect_err("duplicate")
        .to_string();
    assert!(
        err.contains("duplicate key id") && err.contains("\"ok\""),
        "{err}"
    );
    // The duplicate is the last `[[keys]]` entry: the error names its line.
    let last_header = dup
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim() == "[[keys]]")
        .last()
        .map(|(n, _)| n + 1)
        .unwrap_or(0);
    assert!(err.contains(&format!("line {last_header}:")), "{err}");
    let err = config::Config::from_toml("upstream = \"ftp://x\"\n", "t.toml")
        .expect_err("bad upstream")
        .to_string();
    assert!(err.contains("upstream"), "{err}");
    assert!(config::Config::from_toml(config::DEMO_CONFIG, "demo").is_ok());
}

/// The official openai Python SDK against the gateway: every failure class
/// must map to the SDK's matching exception.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_sees_the_right_exceptions() {
    let python = support::sdk_python();
    let (base, _client) = start().await;
    let script = support::repo_root().join("tests/sdk/test_gateway.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("TOLLGATE_BASE_URL", format!("{base}/v1"))
            .output()
    });
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .expect("the SDK tests finish in time")
        .expect("join")
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "SDK tests failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
