//! The gateway example end to end, as a process: the example binary started
//! with its built-in mock upstream (`tests/support/gateway.rs`), called over
//! loopback with hyper and with the official `openai` Python SDK.

#[path = "support/gateway.rs"]
mod gateway_support;
mod support;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use gateway_support::{Gateway, GatewayCommand};
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

/// A gateway on `TEST_CONFIG`, its base URL and a client. The process lives
/// as long as the returned `Gateway`.
fn start() -> (Gateway, String, HttpClient) {
    let gateway = GatewayCommand::new().config(TEST_CONFIG).start();
    let base = gateway.base_url();
    (
        gateway,
        base,
        Client::builder(TokioExecutor::new()).build_http(),
    )
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
    let (_gateway, base, client) = start();
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
    let (_gateway, base, client) = start();
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
    let (_gateway, base, client) = start();
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
    let (gateway, base, client) = start();
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
    // The access-log line is written when the stream's usage is reported,
    // where the budget settles.
    let line = gateway.wait_for_log(Duration::from_secs(10), |l| {
        l["message"] == "request" && l["key"] == "stream"
    });
    assert_eq!(line["cost"], "$0.000013", "{line}");
    let (status, _, body) = call(&client, get(&base, "/v1/key", Some("sk-test-stream"))).await;
    assert_eq!(status, StatusCode::OK);
    let key = json_of(&body);
    assert_eq!(key["id"], "stream");
    // Money as exact decimal strings: $1 - $0.000013.
    assert_eq!(key["budgets"][0]["remaining_usd"], "0.999987", "{key}");
    assert_eq!(key["budgets"][0]["spent_usd"], "0.000013", "{key}");
}

#[tokio::test]
async fn upstream_failures_are_retried_or_enveloped() {
    let (_gateway, base, client) = start();
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
    // The gateway's own quota at its upstream is spent: not the tenant's
    // 429 `insufficient_quota` (issue 20), a 503 with the gateway's code,
    // never retried.
    let (status, headers, bytes) = call(
        &client,
        chat(
            &base,
            "sk-test-ok",
            body("quota MOCK:status=429,code=insufficient_quota"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["x-should-retry"], "false");
    assert_eq!(json_of(&bytes)["error"]["code"], "upstream_quota_exhausted");
}

/// `--check` with a config file: exit 0, or 2 with the error.
fn check(toml: &str) -> (Option<i32>, String) {
    let finished = GatewayCommand::new()
        .config(toml)
        .arg("--check")
        .run(Duration::from_secs(30));
    (finished.code(), finished.stderr)
}

#[test]
fn config_errors_name_the_field_and_line() {
    let (code, err) = check("listen = \"127.0.0.1:1\"\nbogus = 1\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("bogus") && err.contains("line 2"), "{err}");
    let dup = format!(
        "{}\n[[keys]]\nid = \"ok\"\nsecret = \"sk-test-other\"\n",
        TEST_CONFIG
    );
    let (code, err) = check(&dup);
    assert_eq!(code, Some(2), "{err}");
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
    let (code, err) = check("upstream = \"ftp://x\"\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("upstream"), "{err}");
    // The embedded demo config, and the test config, are valid.
    let demo = GatewayCommand::new()
        .arg("--check")
        .run(Duration::from_secs(30));
    assert_eq!(demo.code(), Some(0), "{}", demo.stderr);
    let (code, err) = check(TEST_CONFIG);
    assert_eq!(code, Some(0), "{err}");
}

/// Runs an SDK test script (`command`) against the gateway at `base`,
/// bounded in time, and asserts that every one of its checks passed.
async fn run_sdk_script(mut command: Command, base: String) {
    command.env("TOLLGATE_BASE_URL", format!("{base}/v1"));
    let output = tokio::task::spawn_blocking(move || command.output());
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .expect("the SDK tests finish in time")
        .expect("join")
        .expect("the SDK script runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "SDK tests failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

/// The official openai Node SDK (current major) against the gateway: every
/// failure class maps to the SDK's matching error, and with the SDK's
/// default retries on, a failure the gateway already retried is called
/// once.
#[tokio::test(flavor = "multi_thread")]
async fn the_openai_node_sdk_sees_the_right_exceptions_and_does_not_stack_retries() {
    let dir = support::sdk_node();
    let (_gateway, base, _client) = start();
    let mut node = Command::new("node");
    node.arg("test_gateway.mjs").current_dir(dir);
    run_sdk_script(node, base).await;
}

/// The official openai Python SDK against the gateway: every failure class
/// must map to the SDK's matching exception.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_sees_the_right_exceptions() {
    let mut python = Command::new(support::sdk_python());
    let (_gateway, base, _client) = start();
    python.arg(support::repo_root().join("tests/sdk/test_gateway.py"));
    run_sdk_script(python, base).await;
}
