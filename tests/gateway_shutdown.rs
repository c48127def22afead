//! The gateway example's graceful shutdown, as a process: SIGTERM or SIGINT
//! in the middle of a stream lets it finish and records its cost; a stream
//! still open at the end of the grace ends with the stream layer's error
//! event; the process exits 0. Streams are made slow with the mock's
//! `MOCK:stall_after=N,stall_ms=M` directive.

#[path = "support/gateway.rs"]
mod gateway_support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_support::{Gateway, GatewayCommand, refuses_connections};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MODEL: &str = "llama3:8b-instruct-q8_0";
const KEY: &str = "sk-test-shutdown";
const LIMIT: Duration = Duration::from_secs(15);

fn config(grace_secs: u64) -> String {
    format!(
        r#"
upstream = "mock"
stream_idle_timeout_secs = 30
shutdown_grace_secs = {grace_secs}

[[models]]
name = "{MODEL}"
input_usd_per_million = 1.0
output_usd_per_million = 2.0

[[keys]]
id = "shutdown"
secret = "{KEY}"
budget_usd = 1.0
budget_period = "monthly"
"#
    )
}

/// Opens a streamed chat completion of `text` on its own connection and
/// waits for its first data: the stream is in flight.
async fn stream_in_flight(gateway: &Gateway, text: &str) -> (Incoming, Vec<u8>) {
    let stream = TcpStream::connect(gateway.addr()).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let body =
        json!({"model": MODEL, "stream": true, "messages": [{"role": "user", "content": text}]});
    let request = http::Request::post("/v1/chat/completions")
        .header("host", "gateway")
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let response = tokio::time::timeout(LIMIT, sender.send_request(request))
        .await
        .expect("answered in time")
        .expect("answered");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = tokio::time::timeout(LIMIT, body.frame())
        .await
        .expect("the first event in time")
        .expect("a first frame")
        .expect("a frame");
    let data = first.into_data().expect("data").to_vec();
    (body, data)
}

/// The rest of `body` after `seen`, all of it, as text.
async fn finish(mut body: Incoming, mut seen: Vec<u8>) -> String {
    while let Some(frame) = tokio::time::timeout(LIMIT, body.frame())
        .await
        .expect("the stream goes on in time")
    {
        if let Ok(data) = frame.expect("a frame").into_data() {
            seen.extend_from_slice(&data);
        }
    }
    String::from_utf8(seen).expect("UTF-8")
}

/// The content the client saw, joined from the stream's chunks.
fn content(stream: &str) -> String {
    stream
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")?
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

fn is_log(line: &Value, message: &str) -> bool {
    line["message"] == message
}

/// Issue 16 item 4: SIGTERM mid-stream. The listener closes, an idle
/// kept-alive connection is closed, the stream completes, its cost is
/// logged (from the usage the budget settles with) before the process
/// exits 0, within the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_stream_finish_and_records_its_cost() {
    let mut gateway = GatewayCommand::new().config(&config(10)).start();
    let addr = gateway.addr();
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: gateway\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(LIMIT, idle.read(&mut buf))
        .await
        .expect("health in time")
        .expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    let text = "one two three four MOCK:stall_after=2,stall_ms=1500";
    let (body, seen) = stream_in_flight(&gateway, text).await;
    let signalled = Instant::now();
    gateway.signal("TERM");
    gateway.wait_for_log(LIMIT, |l| {
        is_log(l, "no longer accepting; waiting for in-flight requests")
    });
    assert!(refuses_connections(addr), "still accepting after SIGTERM");
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the idle connection stayed open: {closed:?}"
    );

    let stream = finish(body, seen).await;
    assert!(stream.ends_with("data: [DONE]\n\n"), "{stream}");
    assert!(!stream.contains("\"error\""), "{stream}");
    assert_eq!(content(&stream), format!("mock reply: {text}"));

    let status = gateway.wait_exit(Duration::from_secs(10));
    let exited = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", gateway.stderr());
    assert!(exited < Duration::from_secs(10), "exited after {exited:?}");
    // 5 prompt words at $1/M + 7 completion words at $2/M = $0.000019.
    let logs = gateway.logs();
    let request = logs
        .iter()
        .position(|l| is_log(l, "request") && l["key"] == "shutdown")
        .unwrap_or_else(|| panic!("no access-log line: {}", gateway.stderr()));
    assert_eq!(logs[request]["status"], 200, "{}", logs[request]);
    assert_eq!(logs[request]["cost"], "$0.000019", "{}", logs[request]);
    let complete = logs
        .iter()
        .position(|l| is_log(l, "shutdown complete"))
        .unwrap_or_else(|| panic!("no shutdown line: {}", gateway.stderr()));
    assert!(request < complete, "{}", gateway.stderr());
}

/// A stream still open when the grace ends gets the stream layer's error
/// event (503 `shutting_down`, no `[DONE]`), is charged for what it used,
/// and the process still exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_open_after_the_grace_ends_with_an_error_event() {
    let mut gateway = GatewayCommand::new().config(&config(1)).start();
    let (body, seen) =
        stream_in_flight(&gateway, "one two three MOCK:stall_after=1,stall_ms=20000").await;
    let signalled = Instant::now();
    gateway.signal("TERM");
    let stream = finish(body, seen).await;
    let ended = signalled.elapsed();
    assert!(
        stream.ends_with(
            "data: {\"error\":{\"message\":\"The gateway is shutting down; retry the request.\",\
             \"type\":\"server_error\",\"param\":null,\"code\":\"shutting_down\"}}\n\n"
        ),
        "{stream}"
    );
    assert!(!stream.contains("[DONE]"), "{stream}");
    assert!(
        ended >= Duration::from_millis(900),
        "cut before the grace: {ended:?}"
    );
    let status = gateway.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "{}", gateway.stderr());
    assert!(
        signalled.elapsed() < Duration::from_secs(6),
        "{:?}",
        signalled.elapsed()
    );
    let line = gateway
        .access_log()
        .into_iter()
        .find(|l| l["key"] == "shutdown")
        .unwrap_or_else(|| panic!("no access-log line: {}", gateway.stderr()));
    assert_eq!(line["status"], 200, "{line}");
    assert!(line["tokens"].as_u64().is_some_and(|t| t > 0), "{line}");
    assert_ne!(line["cost"], "$0.00", "{line}");
}

/// A second signal ends the grace at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_the_grace() {
    let mut gateway = GatewayCommand::new().config(&config(30)).start();
    let (body, seen) =
        stream_in_flight(&gateway, "one two MOCK:stall_after=1,stall_ms=20000").await;
    gateway.signal("TERM");
    gateway.wait_for_log(LIMIT, |l| {
        is_log(l, "no longer accepting; waiting for in-flight requests")
    });
    let hurried = Instant::now();
    gateway.signal("INT");
    let stream = finish(body, seen).await;
    assert!(stream.contains("\"code\":\"shutting_down\""), "{stream}");
    assert_eq!(
        gateway.wait_exit(LIMIT).code(),
        Some(0),
        "{}",
        gateway.stderr()
    );
    assert!(
        hurried.elapsed() < Duration::from_secs(5),
        "{:?}",
        hurried.elapsed()
    );
}

/// SIGINT (Ctrl-C) stops an idle gateway at once, exit 0.
#[test]
fn sigint_stops_an_idle_gateway() {
    let mut gateway = GatewayCommand::new().config(&config(30)).start();
    let signalled = Instant::now();
    gateway.signal("INT");
    assert_eq!(
        gateway.wait_exit(LIMIT).code(),
        Some(0),
        "{}",
        gateway.stderr()
    );
    assert!(signalled.elapsed() < Duration::from_secs(5));
    let line = gateway.wait_for_log(LIMIT, |l| is_log(l, "shutting down"));
    assert_eq!(line["signal"], "SIGINT", "{line}");
}
