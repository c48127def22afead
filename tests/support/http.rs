//! A small HTTP client for the gateway's process tests, and a runner for
//! the SDK scripts in `tests/sdk/`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A pooled HTTP/1 client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.status, self.text()))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value, `""` when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends `req` and reads the whole answer, within 30 s.
pub async fn call(client: &HttpClient, req: Request<Full<Bytes>>) -> Answer {
    let response = tokio::time::timeout(Duration::from_secs(30), async {
        let response = client.request(req).await.expect("the request is answered");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("the body is read").to_bytes();
        (parts, body)
    })
    .await
    .expect("answered within 30 s");
    Answer {
        status: response.0.status,
        headers: response.0.headers,
        body: response.1,
    }
}

/// `POST url` with a JSON body and `Authorization: Bearer key` (when
/// given), plus `headers`.
pub fn post(
    url: &str,
    key: Option<&str>,
    body: &Value,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut builder = Request::post(url).header("content-type", "application/json");
    if let Some(key) = key {
        builder = builder.header("authorization", format!("Bearer {key}"));
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a request")
}

/// `GET url`, with `headers`.
pub fn get(url: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut builder = Request::get(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::default()).expect("a request")
}

/// `$0.000013` → 0.000013.
pub fn dollars(cost: &Value) -> f64 {
    cost.as_str()
        .and_then(|c| c.strip_prefix('$'))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not a cost: {cost}"))
}

/// Runs `tests/sdk/<script>` with the SDKs' Python and `envs`, within
/// `limit`; panics with its output unless every test in it passed.
pub async fn run_sdk_script(
    script: &str,
    envs: Vec<(&'static str, String)>,
    limit: Duration,
) -> String {
    let python = crate::support::sdk_python();
    let script: PathBuf = crate::support::repo_root().join("tests/sdk").join(script);
    let output =
        tokio::task::spawn_blocking(move || Command::new(python).arg(script).envs(envs).output());
    let output = tokio::time::timeout(limit, output)
        .await
        .expect("the SDK script finishes in time")
        .expect("join")
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "SDK script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    stdout
}
