//! What reading a request's facts costs: `RequestMeta::from_json` (one pass
//! over the body) on typical bodies, and `RequestMeta::read` on a one-frame
//! body (nothing copied).
//!
//! ```text
//! cargo bench --bench request_meta -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! For instruction counts, which a busy machine does not blur:
//!
//! ```text
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*profile_loop*' \
//!     target/release/deps/request_meta-<hash> --profile-meta chat_small
//! ```

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group};
use futures_util::FutureExt;
use http::Request;
use http_body_util::Full;
use tollgate::RequestMeta;

/// The request of `benches/stack.rs`.
const CHAT_SMALL: &str = r#"{"model":"gpt-4o-mini","max_tokens":64,"messages":[{"role":"user","content":"Say hello."}]}"#;

/// A multi-turn chat with a tool, a tool call and an image.
fn chat_tools() -> String {
    let turn = r#"{"role":"user","content":[{"type":"text","text":"What is the weather in Paris today, and should I take an umbrella? Answer briefly."},{"type":"image_url","image_url":{"url":"https://example.com/sky.png","detail":"low"}}]},
    {"role":"assistant","content":null,"tool_calls":[{"id":"call_Xk2pRk1nQw0","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\",\"unit\":\"celsius\"}"}}]},
    {"role":"tool","tool_call_id":"call_Xk2pRk1nQw0","content":"{\"temperature\":17,\"conditions\":\"light rain\",\"precipitation_mm\":2.5}"},
    {"role":"assistant","content":"It is 17 °C with light rain in Paris: take an umbrella."}"#;
    format!(
        r#"{{"model":"gpt-4o","stream":true,"stream_options":{{"include_usage":true}},"max_completion_tokens":512,"temperature":0.7,
        "messages":[{{"role":"system","content":"You are a helpful assistant. Use the tools when they help."}},{turn},{turn}],
        "tools":[{{"type":"function","function":{{"name":"get_weather","description":"Current weather for a city.","parameters":{{"type":"object","properties":{{"city":{{"type":"string"}},"unit":{{"type":"string","enum":["celsius","fahrenheit"]}}}},"required":["city"]}}}}}}]}}"#
    )
}

/// A 10 kB prompt of plain ASCII text.
fn prompt_10k() -> String {
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(230);
    format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{text}"}}]}}"#)
}

/// Non-ASCII text and escapes.
fn unicode() -> String {
    let text = "Grüße aus München! 日本語のテキスト \\n\\t\\\"quoted\\\" \\u00e9\\ud83d\\ude00 "
        .repeat(20);
    format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{text}"}}]}}"#)
}

fn bodies() -> Vec<(&'static str, Bytes)> {
    vec![
        ("chat_small", Bytes::from_static(CHAT_SMALL.as_bytes())),
        ("chat_tools", Bytes::from(chat_tools())),
        ("prompt_10k", Bytes::from(prompt_10k())),
        ("unicode", Bytes::from(unicode())),
    ]
}

fn request(body: &Bytes) -> Request<Full<Bytes>> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .expect("a valid request")
}

fn from_json(c: &mut Criterion) {
    let mut group = c.benchmark_group("from_json");
    for (name, body) in bodies() {
        assert!(RequestMeta::from_json(&body).is_ok(), "{name}");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| RequestMeta::from_json(black_box(&body)))
        });
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    let mut group = c.benchmark_group("read");
    for (name, body) in bodies() {
        group.bench_function(name, |b| {
            b.iter(|| {
                RequestMeta::read(
                    request(black_box(&body)),
                    RequestMeta::DEFAULT_MAX_BODY_BYTES,
                )
                .now_or_never()
                .expect("a full body is ready")
            })
        });
    }
    group.finish();
}

/// `--profile-meta <body>`: reads that body 10,000 times in `profile_loop`,
/// for callgrind (see the module docs).
#[inline(never)]
fn profile_loop(body: &Bytes) {
    for _ in 0..10_000 {
        let req = RequestMeta::read(
            request(black_box(body)),
            RequestMeta::DEFAULT_MAX_BODY_BYTES,
        )
        .now_or_never()
        .expect("a full body is ready");
        black_box(req.expect("a valid body"));
    }
}

criterion_group!(benches, from_json, read);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--profile-meta") {
        let name = args.get(at + 1).map_or("chat_small", String::as_str);
        let (_, body) = bodies()
            .into_iter()
            .find(|(n, _)| *n == name)
            .expect("a known body");
        profile_loop(&body);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
