//! The gateway example's command line and logs, as a process: options and
//! their environment variables, `--help`, `--version`, `--check`, exit
//! codes, the store choice, and one access-log line per request without a
//! secret, in text and in JSON.

#[path = "support/gateway.rs"]
mod gateway_support;

use std::time::Duration;

use bytes::Bytes;
use gateway_support::GatewayCommand;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const MODEL: &str = "llama3:8b-instruct-q8_0";
const KEY: &str = "sk-test-cli-secret-0123";
const UPSTREAM_KEY: &str = "sk-upstream-secret-4567";
const RUN: Duration = Duration::from_secs(30);

fn config(extra: &str) -> String {
    format!(
        r#"
upstream = "mock"
upstream_api_key = "{UPSTREAM_KEY}"
{extra}

[retry]
max_attempts = 1

[[models]]
name = "{MODEL}"
input_usd_per_million = 1.0
output_usd_per_million = 2.0

[[keys]]
id = "cli"
secret = "{KEY}"
budget_usd = 10.0
budget_period = "monthly"
"#
    )
}

#[test]
fn help_and_version() {
    let help = GatewayCommand::new().arg("--help").run(RUN);
    assert_eq!(help.code(), Some(0), "{}", help.stderr);
    for option in [
        "--config",
        "TOLLGATE_CONFIG",
        "--listen",
        "TOLLGATE_LISTEN",
        "--upstream",
        "TOLLGATE_UPSTREAM",
        "--store",
        "TOLLGATE_STORE",
        "--log-format",
        "--check",
        "--version",
        "SIGTERM",
    ] {
        assert!(
            help.stdout.contains(option),
            "{option} not in:\n{}",
            help.stdout
        );
    }
    let version = GatewayCommand::new().arg("--version").run(RUN);
    assert_eq!(version.code(), Some(0));
    assert_eq!(
        version.stdout.trim(),
        format!("gateway {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2_and_say_what_is_wrong() {
    for (args, says) in [
        (&["--bogus"][..], "--bogus"),
        (&["--listen", "not-an-address"], "--listen"),
        (
            &["--store", "postgres://db"],
            "expected memory, sqlite:PATH",
        ),
        (&["--store", "sqlite:"], "needs a file path"),
        (&["--log-format", "xml"], "--log-format"),
        (&["--upstream", "ftp://example"], "upstream"),
    ] {
        let finished = GatewayCommand::new().args(args).run(RUN);
        assert_eq!(finished.code(), Some(2), "{args:?}: {}", finished.stderr);
        assert!(
            finished.stderr.contains(says),
            "{args:?}: {}",
            finished.stderr
        );
    }
    // The same from the environment.
    let finished = GatewayCommand::new()
        .env("TOLLGATE_LISTEN", "nowhere")
        .run(RUN);
    assert_eq!(finished.code(), Some(2), "{}", finished.stderr);
}

/// `--store`, `TOLLGATE_STORE` and the file's `store` choose the store; one
/// that cannot be opened stops start-up (exit 1) with a message naming it,
/// without the password a Redis URL carries. `--check` knows the stores
/// this binary was built with, without opening them.
#[test]
fn a_store_that_cannot_be_opened_stops_start_up_without_its_password() {
    // Port 1 on loopback: refused at once.
    let redis = "redis://:hunter2@127.0.0.1:1/0";
    let sqlite = "sqlite:/nonexistent-tollgate-dir/state.db";
    for command in [
        GatewayCommand::new().args(["--store", redis]),
        GatewayCommand::new().env("TOLLGATE_STORE", redis),
        GatewayCommand::new().args(["--store", sqlite]),
        GatewayCommand::new().config(&config(&format!("store = \"{sqlite}\""))),
    ] {
        let finished = command.run(RUN);
        assert_eq!(finished.code(), Some(1), "{}", finished.stderr);
        assert!(
            finished.stderr.contains("error: store "),
            "{}",
            finished.stderr
        );
        assert!(!finished.stderr.contains("hunter2"), "{}", finished.stderr);
        assert!(
            !finished.stdout.contains("listening"),
            "{}",
            finished.stdout
        );
    }
    for (store, built) in [
        (redis, cfg!(feature = "redis")),
        (sqlite, cfg!(feature = "sqlite")),
        ("memory", true),
    ] {
        let finished = GatewayCommand::new()
            .args(["--store", store, "--check"])
            .run(RUN);
        let expected = if built { 0 } else { 2 };
        assert_eq!(
            finished.code(),
            Some(expected),
            "{store}: {}",
            finished.stderr
        );
        assert!(!finished.stderr.contains("hunter2"), "{}", finished.stderr);
    }
    let finished = GatewayCommand::new()
        .args(["--store", "postgres://127.0.0.1/x"])
        .run(RUN);
    assert_eq!(finished.code(), Some(2), "{}", finished.stderr);
}

#[test]
fn check_builds_what_the_gateway_would_start_with() {
    // Parses and validates, but the price does not fit a token price: only
    // building the pricing finds it.
    let finished = GatewayCommand::new()
        .config(&config("").replace(
            "input_usd_per_million = 1.0",
            "input_usd_per_million = 1e30",
        ))
        .arg("--check")
        .run(RUN);
    assert_eq!(finished.code(), Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("input_usd_per_million"),
        "{}",
        finished.stderr
    );
    assert!(!finished.stderr.contains(KEY), "{}", finished.stderr);
}

#[test]
fn a_runtime_failure_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let finished = GatewayCommand::new()
        .config(&config(""))
        .args(["--listen", &addr.to_string()])
        .run(RUN);
    assert_eq!(finished.code(), Some(1), "{}", finished.stderr);
    assert!(finished.stderr.contains("error"), "{}", finished.stderr);
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn post(client: &HttpClient, url: String, key: &str, body: Value) -> (StatusCode, Bytes) {
    let request = Request::post(url)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .expect("answered in time")
        .expect("answered");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

/// Every option from its environment variable; the command line wins over
/// the variable; the upstream is shown and logged without its password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_come_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("env.toml");
    std::fs::write(&path, config("")).expect("write");
    let gateway = GatewayCommand::new()
        .env("TOLLGATE_CONFIG", &path)
        .env("TOLLGATE_LISTEN", "127.0.0.1:0")
        .env("TOLLGATE_UPSTREAM", "http://user:hunter2@127.0.0.1:9/v1")
        .env("TOLLGATE_STORE", "memory")
        .env("TOLLGATE_LOG_FORMAT", "json")
        .start();
    gateway.wait_for_stdout(Duration::from_secs(10), "upstream: http://127.0.0.1:9/v1");
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    let (status, _) = post(&client, gateway.url("/v1/chat/completions"), KEY, body).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let line = gateway.wait_for_log(Duration::from_secs(10), |l| l["message"] == "request");
    assert_eq!(line["upstream"], "http://127.0.0.1:9/v1", "{line}");
    assert!(
        !gateway.stderr().contains("hunter2"),
        "{}",
        gateway.stderr()
    );
    assert!(
        !gateway.stdout().contains("hunter2"),
        "{}",
        gateway.stdout()
    );

    let gateway = GatewayCommand::new()
        .env("TOLLGATE_CONFIG", &path)
        .env("TOLLGATE_UPSTREAM", "http://127.0.0.1:9/v1")
        .args(["--upstream", "mock"])
        .start();
    gateway.wait_for_stdout(Duration::from_secs(10), "upstream: mock");
}

/// One access-log line per request, with key id, model, route, status,
/// tokens, cost, attempts, upstream and latency; no secret anywhere in the
/// logs, in JSON and in text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_one_log_line_without_secrets() {
    let gateway = GatewayCommand::new().config(&config("")).start();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let chat = |text: &str, stream: bool| json!({"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": text}]});
    let url = gateway.url("/v1/chat/completions");
    let (status, _) = post(&client, url.clone(), KEY, chat("hello world", false)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(&client, url.clone(), KEY, chat("hello world", true)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(&client, url.clone(), "sk-wrong-secret-89", chat("x", false)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(&client, gateway.url("/v1/nope"), KEY, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    gateway.wait_for_log(Duration::from_secs(10), |l| l["status"] == 404);
    // A stream's line is written when its body ends, maybe after the 404's.
    let lines = gateway.wait_for_access_log(Duration::from_secs(10), 4, |_| true);
    assert_eq!(lines.len(), 4, "{lines:?}");
    for line in &lines {
        for field in [
            "key",
            "model",
            "route",
            "status",
            "tokens",
            "cost",
            "attempts",
            "upstream",
            "latency_ms",
        ] {
            assert!(line.get(field).is_some(), "{field} missing: {line}");
        }
    }
    let find = |status: u64| {
        lines
            .iter()
            .find(|l| l["status"] == status)
            .cloned()
            .unwrap_or_else(|| panic!("no {status} line: {lines:?}"))
    };
    // "hello world": 2 prompt tokens at $1/M, "mock reply: hello world" 4 at $2/M.
    let ok: Vec<&Value> = lines.iter().filter(|l| l["status"] == 200).collect();
    assert_eq!(ok.len(), 2, "{lines:?}");
    for line in ok {
        assert_eq!(line["key"], "cli", "{line}");
        assert_eq!(line["model"], MODEL, "{line}");
        assert_eq!(line["route"], "/v1/chat/completions", "{line}");
        assert_eq!(line["tokens"], 6, "{line}");
        assert_eq!(line["cost"], "$0.00001", "{line}");
        assert_eq!(line["attempts"], 1, "{line}");
        assert_eq!(line["upstream"], "mock", "{line}");
    }
    let refused = find(401);
    assert_eq!(refused["key"], "-", "{refused}");
    assert_eq!(refused["attempts"], 0, "{refused}");
    assert_eq!(refused["upstream"], "-", "{refused}");
    let unknown = find(404);
    assert_eq!(unknown["route"], "-", "{unknown}");
    let logs = gateway.stderr();
    for secret in [KEY, UPSTREAM_KEY, "sk-wrong-secret-89"] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
    }

    // The same fields in text.
    let gateway = GatewayCommand::new()
        .config(&config(""))
        .args(["--log-format", "text"])
        .start();
    let (status, _) = post(
        &client,
        gateway.url("/v1/chat/completions"),
        KEY,
        chat("hi", false),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let line = gateway.wait_for_text(Duration::from_secs(10), " request ");
    for field in [
        "key=\"cli\"",
        "route=\"/v1/chat/completions\"",
        "status=200",
        "tokens=",
        "cost=",
        "attempts=1",
        "upstream=\"mock\"",
        "latency_ms=",
    ] {
        assert!(line.contains(field), "{field} not in {line}");
    }
    assert!(!line.contains('\u{1b}'), "colours in a log file: {line}");
    assert!(!gateway.stderr().contains(KEY));
}
