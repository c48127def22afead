//! The mock upstream (`examples/support/mock/`) on loopback: each endpoint's
//! shapes, headers and directives, checked with hyper and with the official
//! `openai` and `anthropic` Python SDKs (`tests/sdk/mock_*.py`).
//!
//! One test binary; its parts live in `tests/mock/`.

#[path = "../examples/support/mock/mod.rs"]
mod mock;
mod support;

#[path = "mock/directives.rs"]
mod directives;
#[path = "mock/keys_and_counts.rs"]
mod keys_and_counts;
#[path = "mock/shapes.rs"]
mod shapes;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const KEY: &str = "sk-up-test-0123456789";
const MODELS: [&str; 2] = ["gpt-4o-mini", "claude-sonnet-4-5"];

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn start_with(mock: mock::Mock) -> (String, HttpClient) {
    let addr = mock
        .serve(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("mock binds");
    (
        format!("http://{addr}"),
        Client::builder(TokioExecutor::new()).build_http(),
    )
}

async fn start() -> (String, HttpClient) {
    start_with(mock::Mock::new(MODELS.map(String::from).to_vec()).require_key(KEY)).await
}

/// The endpoints that take text, and how each is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Responses,
    Messages,
}

use Endpoint::*;

const ALL: [Endpoint; 5] = [Chat, Completions, Embeddings, Responses, Messages];
const STREAMING: [Endpoint; 4] = [Chat, Completions, Responses, Messages];

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Chat => "/v1/chat/completions",
            Completions => "/v1/completions",
            Embeddings => "/v1/embeddings",
            Responses => "/v1/responses",
            Messages => "/v1/messages",
        }
    }

    fn body(self, text: &str, stream: bool) -> Value {
        match self {
            Chat => {
                json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": text}]})
            }
            Completions => json!({"model": "m", "stream": stream, "prompt": text}),
            Embeddings => json!({"model": "m", "input": text, "dimensions": 4}),
            Responses => json!({"model": "m", "stream": stream, "input": text}),
            Messages => json!({
                "model": "m", "max_tokens": 64, "stream": stream,
                "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
            }),
        }
    }

    fn request(self, base: &str, text: &str, stream: bool) -> Request<Full<Bytes>> {
        post(
            base,
            self.path(),
            &self.body(text, stream),
            self == Messages,
        )
    }

    fn anthropic(self) -> bool {
        self == Messages
    }
}

fn post(base: &str, path: &str, body: &Value, anthropic: bool) -> Request<Full<Bytes>> {
    let builder = Request::post(format!("{base}{path}")).header("content-type", "application/json");
    let builder = if anthropic {
        builder
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
    } else {
        builder.header("authorization", format!("Bearer {KEY}"))
    };
    builder
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

fn get(base: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("{base}{path}"))
        .header("authorization", format!("Bearer {KEY}"))
        .body(Full::default())
        .expect("request")
}

/// Status, headers and the body, or the error that ended the body.
async fn send(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Result<Bytes, String>) {
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .expect("answered in time")
        .expect("the mock answers");
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .expect("body in time")
        .map(|b| b.to_bytes())
        .map_err(|e| e.to_string());
    (parts.status, parts.headers, body)
}

async fn call(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Value) {
    let (status, headers, body) = send(client, request).await;
    let body = body.expect("a whole body");
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, headers, json)
}

/// `(event name, data)` per SSE event.
fn events(body: &[u8]) -> Vec<(Option<String>, String)> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|event| {
            let mut name = None;
            let mut data = String::new();
            for line in event.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = v.to_owned();
                }
            }
            (name, data)
        })
        .collect()
}

/// The text deltas of a stream, in any dialect.
fn deltas(endpoint: Endpoint, body: &[u8]) -> Vec<String> {
    events(body)
        .into_iter()
        .filter_map(|(_, data)| serde_json::from_str::<Value>(&data).ok())
        .filter_map(|e| {
            let text = match endpoint {
                Chat => e.pointer("/choices/0/delta/content"),
                Completions => e.pointer("/choices/0/text"),
                Responses => (e["type"] == "response.output_text.delta")
                    .then(|| e.get("delta"))
                    .flatten(),
                Messages => e.pointer("/delta/text"),
                Embeddings => None,
            };
            text.and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
        })
        .collect()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

/// Runs one of `tests/sdk/mock_*.py` against a fresh mock, within two minutes.
async fn run_sdk_script(script: &str) {
    let python = support::sdk_python();
    let (base, _client) = start().await;
    let script = support::repo_root().join("tests/sdk").join(script);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("MOCK_BASE_URL", base)
            .env("MOCK_KEY", KEY)
            .output()
    });
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .expect("the SDK script finishes in time")
        .expect("join")
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "SDK script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

/// The official openai SDK parses and validates every OpenAI shape the mock
/// sends, streamed and not, and raises the right exception for each error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_parses_every_shape() {
    run_sdk_script("mock_openai.py").await;
}

/// The official anthropic SDK parses and validates `/v1/messages`, streamed
/// and not, and raises the right exception for each error status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_python_sdk_parses_every_shape() {
    run_sdk_script("mock_anthropic.py").await;
}
