//! Every call that reached the upstream is charged, through the example
//! gateway binary and a real socket: a client that hangs up before the
//! response head or in the middle of a stream is charged the usage the
//! upstream reports at the end (the gateway keeps reading for
//! `drain_timeout_secs`); an answer that ends without usage, a drain cut by
//! its time limit and a stream the upstream breaks are charged the estimate
//! of what was produced (the prompt estimate plus the output seen); a call
//! the upstream refused (a 5xx without usage) or never got (a connect
//! error) is charged nothing. Each in memory and on Redis, read back from
//! `GET /admin/spend` and `GET /v1/key`.
#![cfg(feature = "redis")]

#[path = "support/gateway.rs"]
mod gateway_support;
#[path = "support/redis.rs"]
mod redis_support;

use std::time::{Duration, Instant};

use gateway_support::{Gateway, GatewayCommand, Http};
use http::StatusCode;
use redis_support::RedisServer;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN: &str = "sk-admin-test-0123456789";
const MODEL: &str = "m";
/// A model whose upstream refuses connections.
const UNREACHABLE: &str = "unreachable";
/// A model whose upstream (the mock) the gateway gives up on after 1 s.
const IMPATIENT: &str = "impatient";

/// Keys, one per case, so each case's spend is its own.
const CASES: [&str; 9] = [
    "shutdown",
    "midstream",
    "beforehead",
    "nousage",
    "timelimit",
    "upstreamcut",
    "refused",
    "noconnect",
    "timedout",
];

fn secret(case: &str) -> String {
    format!("sk-{case}-0123456789")
}

/// $1 per million prompt tokens, $2 per million completion tokens: a
/// charge of P prompt and C completion tokens is P + 2C micro-dollars.
fn config(store: &str) -> String {
    let keys: String = CASES
        .iter()
        .map(|case| {
            format!(
                "[[keys]]\nid = \"{case}\"\nsecret = \"{}\"\nbudget_usd = 100\n\n",
                secret(case)
            )
        })
        .collect();
    format!(
        r#"
upstream = "mock"
store = "{store}"
admin_keys = ["{ADMIN}"]
request_timeout_secs = 20
drain_timeout_secs = 4
store_timeout_ms = 5000

[retry]
max_attempts = 1

[[upstreams]]
name = "closed"
url = "http://127.0.0.1:9/v1"

[[models]]
name = "{MODEL}"
input_usd_per_million = 1.0
output_usd_per_million = 2.0
max_output_tokens = 50

[[upstreams]]
name = "slow"
url = "mock"
timeout_secs = 1

[[models]]
name = "{IMPATIENT}"
upstream = "slow"
input_usd_per_million = 1.0
output_usd_per_million = 2.0
max_output_tokens = 50

[[models]]
name = "{UNREACHABLE}"
upstream = "closed"
input_usd_per_million = 1.0
output_usd_per_million = 2.0
max_output_tokens = 50

{keys}"#
    )
}

/// `n` micro-dollars as the ledger writes them.
fn micros(n: u64) -> String {
    let text = format!("{}.{:06}", n / 1_000_000, n % 1_000_000);
    // Trailing zeros dropped down to two decimals.
    let trimmed = text.trim_end_matches('0');
    let decimals = trimmed.len() - trimmed.find('.').expect("a point") - 1;
    if decimals < 2 {
        format!("{trimmed}{}", "0".repeat(2 - decimals))
    } else {
        trimmed.to_owned()
    }
}

/// The prompt estimate of a one-message chat saying `text`: a token per
/// four characters of the message contents.
fn prompt_estimate(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// The mock's reply to `text`: `mock reply: <text>`, a token per word.
fn reply_words(text: &str) -> Vec<String> {
    format!("mock reply: {text}")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The estimate of a stream of the first `n` words of the reply: a token
/// per four characters of the deltas (each word but the first with the
/// space before it).
fn completion_estimate(text: &str, n: usize) -> u64 {
    let words = reply_words(text);
    let chars: usize = words[..n].iter().map(|w| w.chars().count()).sum::<usize>() + n - 1;
    (chars as u64).div_ceil(4)
}

fn chat(text: &str, stream: bool) -> Value {
    json!({
        "model": MODEL,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    })
}

/// Writes `body` as a chat completion request of `case` on a new
/// connection to the gateway.
async fn send_raw(gateway: &Gateway, case: &str, body: &Value) -> TcpStream {
    let mut socket =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(gateway.addr()))
            .await
            .expect("connect within 5 s")
            .expect("connect");
    let body = body.to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        secret(case),
        body.len()
    );
    socket
        .write_all(format!("{head}{body}").as_bytes())
        .await
        .expect("write the request");
    socket
}

/// Reads from `socket` until what was read contains `marker`; within 10 s.
async fn read_until(socket: &mut TcpStream, marker: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains(marker) {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, socket.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {marker:?} within 10 s: {:?}",
                    String::from_utf8_lossy(&seen)
                )
            })
            .expect("read");
        assert!(
            n > 0,
            "closed before {marker:?}: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// The spend row of key `case` once its call is settled (a request counted,
/// nothing held); within 15 s.
async fn settled(http: &Http, gateway: &Gateway, case: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let spend = http
            .get(
                &gateway.url(&format!("/admin/spend?group_by=key&key={case}")),
                Some(ADMIN),
            )
            .await;
        assert_eq!(spend.status, StatusCode::OK, "{}", spend.text);
        let key = http.get(&gateway.url("/v1/key"), Some(&secret(case))).await;
        let budget = &key.json["budgets"][0];
        let row = spend.json["data"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["group"] == case))
            .cloned();
        if let Some(row) = row.filter(|r| r["requests"] == 1)
            && budget["reserved_usd"] == "0.00"
        {
            assert_eq!(budget["spent_usd"], row["cost_usd"], "{budget} {row}");
            return row;
        }
        assert!(
            Instant::now() < deadline,
            "{case}: not settled within 15 s: {} {budget}",
            spend.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts the row charges `prompt` and `completion` tokens, at their price.
fn assert_charged(row: &Value, prompt: u64, completion: u64) {
    assert_eq!(row["prompt_tokens"], prompt, "{row}");
    assert_eq!(row["completion_tokens"], completion, "{row}");
    assert_eq!(row["cost_usd"], micros(prompt + 2 * completion), "{row}");
}

/// Asserts `case` was charged nothing and holds nothing, within 15 s.
async fn assert_free(http: &Http, gateway: &Gateway, case: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let key = http.get(&gateway.url("/v1/key"), Some(&secret(case))).await;
        let budget = key.json["budgets"][0].clone();
        if budget["reserved_usd"] == "0.00" {
            assert_eq!(budget["spent_usd"], "0.00", "{case}: {budget}");
            let spend = http
                .get(
                    &gateway.url(&format!("/admin/spend?group_by=key&key={case}")),
                    Some(ADMIN),
                )
                .await;
            assert_eq!(spend.json["data"], json!([]), "{case}: {}", spend.text);
            return;
        }
        assert!(Instant::now() < deadline, "{case}: still held: {budget}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The client reads the head and the first event, then hangs up; the
/// upstream goes on for a second and a half and reports its usage last.
async fn left_mid_stream(http: &Http, gateway: &Gateway) {
    let case = "midstream";
    let text = "tell me more MOCK:delay_ms=150";
    let mut socket = send_raw(gateway, case, &chat(text, true)).await;
    let read = read_until(&mut socket, "data: ").await;
    assert!(read.starts_with("HTTP/1.1 200"), "{read}");
    assert!(!read.contains("[DONE]"), "{read}");
    drop(socket);
    let row = settled(http, gateway, case).await;
    // The mock's own count: words of the prompt and of the whole reply.
    assert_charged(&row, 4, reply_words(text).len() as u64);
}

/// The client hangs up while the upstream has not answered yet.
async fn left_before_head(http: &Http, gateway: &Gateway) {
    let case = "beforehead";
    let text = "a question MOCK:hang_ms=1500";
    let mut socket = send_raw(gateway, case, &chat(text, false)).await;
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), socket.read(&mut buf)).await;
    assert!(early.is_err(), "the head came before the client left");
    drop(socket);
    let row = settled(http, gateway, case).await;
    assert_charged(&row, 3, reply_words(text).len() as u64);
}

/// The client hangs up mid-stream, and the stream it left ends without a
/// usage report: the estimate of the whole answer, read to its end.
async fn left_a_stream_without_usage(http: &Http, gateway: &Gateway) {
    let case = "nousage";
    let text = "count the words MOCK:delay_ms=150,usage=none";
    let mut socket = send_raw(gateway, case, &chat(text, true)).await;
    read_until(&mut socket, "data: ").await;
    drop(socket);
    let row = settled(http, gateway, case).await;
    let words = reply_words(text).len();
    assert_charged(
        &row,
        prompt_estimate(text),
        completion_estimate(text, words),
    );
}

/// The client hangs up, and the upstream stalls for longer than the
/// drain's time limit (4 s): the prompt estimate plus the two words read.
async fn left_a_stalled_stream(http: &Http, gateway: &Gateway) {
    let case = "timelimit";
    let text = "stall here MOCK:stall_after=2,stall_ms=10000";
    let mut socket = send_raw(gateway, case, &chat(text, true)).await;
    read_until(&mut socket, "data: ").await;
    drop(socket);
    let row = settled(http, gateway, case).await;
    assert_charged(&row, prompt_estimate(text), completion_estimate(text, 2));
}

/// The upstream breaks the stream after three words, the client stays: the
/// prompt estimate plus the words seen.
async fn upstream_broke_the_stream(http: &Http, gateway: &Gateway) {
    let case = "upstreamcut";
    let text = "break it MOCK:cut_after=3";
    let answer = http
        .post(
            &gateway.url("/v1/chat/completions"),
            Some(&secret(case)),
            &chat(text, true),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert!(answer.text.contains("error"), "{}", answer.text);
    let row = settled(http, gateway, case).await;
    assert_charged(&row, prompt_estimate(text), completion_estimate(text, 3));
}

/// A 500 without usage: the upstream did no work.
async fn upstream_refused(http: &Http, gateway: &Gateway) {
    let case = "refused";
    let answer = http
        .post(
            &gateway.url("/v1/chat/completions"),
            Some(&secret(case)),
            &chat("fail MOCK:status=500", false),
        )
        .await;
    assert_eq!(
        answer.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        answer.text
    );
    assert_free(http, gateway, case).await;
}

/// The gateway gives up on the upstream (its `timeout_secs`) after the
/// request was sent: the upstream may have done the work, and the call is
/// charged the prompt estimate (`ChargePolicy::Produced`).
async fn upstream_timed_out(http: &Http, gateway: &Gateway) {
    let case = "timedout";
    let text = "slow answer MOCK:hang_ms=3000";
    let body = json!({
        "model": IMPATIENT,
        "messages": [{"role": "user", "content": text}],
    });
    let answer = http
        .post(
            &gateway.url("/v1/chat/completions"),
            Some(&secret(case)),
            &body,
        )
        .await;
    assert_eq!(
        answer.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        answer.text
    );
    let row = settled(http, gateway, case).await;
    assert_charged(&row, prompt_estimate(text), 0);
}

/// The upstream cannot be reached: nothing was sent.
async fn upstream_unreachable(http: &Http, gateway: &Gateway) {
    let case = "noconnect";
    let body = json!({
        "model": UNREACHABLE,
        "messages": [{"role": "user", "content": "hello"}],
    });
    let answer = http
        .post(
            &gateway.url("/v1/chat/completions"),
            Some(&secret(case)),
            &body,
        )
        .await;
    assert!(answer.status.is_server_error(), "{}", answer.text);
    assert_free(http, gateway, case).await;
}

/// Every case, at once, on one gateway.
async fn every_case(store: &str) {
    let gateway = GatewayCommand::new().config(&config(store)).start();
    let http = Http::new();
    tokio::join!(
        left_mid_stream(&http, &gateway),
        left_before_head(&http, &gateway),
        left_a_stream_without_usage(&http, &gateway),
        left_a_stalled_stream(&http, &gateway),
        upstream_broke_the_stream(&http, &gateway),
        upstream_refused(&http, &gateway),
        upstream_unreachable(&http, &gateway),
        upstream_timed_out(&http, &gateway),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_that_reached_the_upstream_is_charged_in_memory() {
    every_case("memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_that_reached_the_upstream_is_charged_on_redis() {
    let redis = RedisServer::start();
    every_case(&redis.url()).await;
}

/// SIGTERM right after a client left mid-stream: the gateway waits for the
/// answer it is still reading, so the charge is in the store when it exits
/// (read back by a second gateway on the same Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_waits_for_the_answers_of_clients_that_left() {
    let redis = RedisServer::start();
    let toml = config(&redis.url());
    let mut gateway = GatewayCommand::new().config(&toml).start();
    let case = "shutdown";
    let text = "before the end MOCK:delay_ms=150";
    let mut socket = send_raw(&gateway, case, &chat(text, true)).await;
    read_until(&mut socket, "data: ").await;
    drop(socket);
    gateway.signal("TERM");
    assert!(gateway.wait_exit(Duration::from_secs(20)).success());
    let after = GatewayCommand::new().config(&toml).start();
    let row = settled(&Http::new(), &after, case).await;
    assert_charged(&row, 4, reply_words(text).len() as u64);
}

#[test]
fn micro_dollars_are_written_as_the_ledger_writes_them() {
    assert_eq!(micros(13), "0.000013");
    assert_eq!(micros(1_000_000), "1.00");
    assert_eq!(micros(1_500_000), "1.50");
    assert_eq!(micros(1_250_000), "1.25");
    assert_eq!(micros(1_250_001), "1.250001");
}
