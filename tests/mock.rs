//! The mock upstream (`examples/support/mock/`) on loopback: each endpoint's
//! shapes, headers and directives, checked with hyper here and with the
//! official `openai` and `anthropic` Python SDKs (`tests/sdk/mock_*.py`).

#[path = "../examples/support/mock/mod.rs"]
mod mock;
mod support;

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

#[tokio::test]
async fn each_endpoint_answers_with_its_providers_shape_and_usage() {
    let (base, client) = start().await;
    let (status, _, chat) = call(&client, Chat.request(&base, "hello world", false)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(
        chat["choices"][0]["message"]["content"],
        "mock reply: hello world"
    );
    assert_eq!(chat["usage"]["prompt_tokens"], 2);
    assert_eq!(chat["usage"]["completion_tokens"], 4);

    let (_, _, completion) = call(&client, Completions.request(&base, "a b c", false)).await;
    assert_eq!(completion["object"], "text_completion");
    assert_eq!(completion["choices"][0]["text"], "mock reply: a b c");
    assert_eq!(completion["usage"]["total_tokens"], 3 + 5);

    let (_, _, embedding) = call(&client, Embeddings.request(&base, "a b", false)).await;
    assert_eq!(
        embedding["data"][0]["embedding"].as_array().map(Vec::len),
        Some(4)
    );
    assert_eq!(
        embedding["usage"],
        json!({"prompt_tokens": 2, "total_tokens": 2})
    );

    let (_, _, response) = call(&client, Responses.request(&base, "hi", false)).await;
    assert_eq!(response["object"], "response");
    assert_eq!(response["status"], "completed");
    assert_eq!(
        response["output"][0]["content"][0]["text"],
        "mock reply: hi"
    );
    assert_eq!(
        response["usage"],
        json!({
            "input_tokens": 1,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 3,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 4,
        })
    );

    let (_, _, message) = call(&client, Messages.request(&base, "hi there", false)).await;
    assert_eq!(message["type"], "message");
    assert_eq!(
        message["content"][0],
        json!({"type": "text", "text": "mock reply: hi there"})
    );
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(message["usage"]["input_tokens"], 2);
    assert_eq!(message["usage"]["output_tokens"], 4);
}

#[tokio::test]
async fn n_and_output_caps_shape_the_completion() {
    let (base, client) = start().await;
    let body = json!({"model": "m", "n": 3, "max_completion_tokens": 3,
        "messages": [{"role": "user", "content": "one two three"}]});
    let (_, _, chat) = call(&client, post(&base, "/v1/chat/completions", &body, false)).await;
    let choices = chat["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 3);
    assert!(choices.iter().all(|c| c["message"]["content"] == "mock reply: one"
        && c["finish_reason"] == "length"));
    assert_eq!(chat["usage"]["completion_tokens"], 9);

    let body = json!({"model": "m", "input": "MOCK:words=40", "max_output_tokens": 20});
    let (_, _, response) = call(&client, post(&base, "/v1/responses", &body, false)).await;
    assert_eq!(response["status"], "incomplete");
    assert_eq!(
        response["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    assert_eq!(response["usage"]["output_tokens"], 20);
    let body = json!({"model": "m", "input": "x", "max_output_tokens": 15});
    let (status, _, error) = call(&client, post(&base, "/v1/responses", &body, false)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"]["param"], "max_output_tokens");

    let body =
        json!({"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "a b"}]});
    let (_, _, message) = call(&client, post(&base, "/v1/messages", &body, true)).await;
    assert_eq!(message["stop_reason"], "max_tokens");
    assert_eq!(message["usage"]["output_tokens"], 2);
}

#[tokio::test]
async fn the_usage_chunk_comes_only_when_asked() {
    let (base, client) = start().await;
    let (_, _, plain) = send(&client, Chat.request(&base, "a b", true)).await;
    let plain = plain.expect("stream");
    assert!(!String::from_utf8_lossy(&plain).contains("\"usage\""));
    assert_eq!(deltas(Chat, &plain).concat(), "mock reply: a b");

    let mut asked = Chat.body("a b", true);
    asked["stream_options"] = json!({"include_usage": true});
    let (_, _, body) = send(&client, post(&base, Chat.path(), &asked, false)).await;
    let events = events(&body.expect("stream"));
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("[DONE]"));
    let last: Value = serde_json::from_str(&events[events.len() - 2].1).expect("usage chunk");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 4);
    let with_usage = events
        .iter()
        .filter(|(_, d)| d.contains("\"usage\""))
        .count();
    assert_eq!(with_usage, 1, "one usage chunk, no null usage: {events:?}");

    // OpenAI's exact form on request: `"usage": null` on every other chunk.
    let mut exact = Chat.body("MOCK:usage=null", true);
    exact["stream_options"] = json!({"include_usage": true});
    let (_, _, body) = send(&client, post(&base, Chat.path(), &exact, false)).await;
    let events = self::events(&body.expect("stream"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).expect("chunk"))
        .collect();
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null()
        && c.as_object().is_some_and(|o| o.contains_key("usage"))));
}

#[tokio::test]
async fn streams_follow_each_providers_event_sequence() {
    let (base, client) = start().await;
    let (_, headers, body) = send(&client, Responses.request(&base, "hi you", true)).await;
    assert!(header(&headers, "content-type").starts_with("text/event-stream"));
    let events = events(&body.expect("stream"));
    let names: Vec<&str> = events.iter().filter_map(|(n, _)| n.as_deref()).collect();
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(["response.output_text.delta"; 4]);
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names, expected);
    for (i, (name, data)) in events.iter().enumerate() {
        let data: Value = serde_json::from_str(data).expect("json");
        assert_eq!(data["sequence_number"], i, "{name:?}");
        assert_eq!(
            Some(data["type"].as_str().unwrap_or_default()),
            name.as_deref()
        );
    }

    let (_, headers, body) = send(&client, Messages.request(&base, "hi you", true)).await;
    assert!(header(&headers, "request-id").starts_with("req_"));
    let events = self::events(&body.expect("stream"));
    let names: Vec<&str> = events.iter().filter_map(|(n, _)| n.as_deref()).collect();
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(["content_block_delta"; 4]);
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);
    let start: Value = serde_json::from_str(&events[0].1).expect("json");
    assert_eq!(start["message"]["usage"]["input_tokens"], 2);
    let delta: Value = serde_json::from_str(&events[events.len() - 2].1).expect("json");
    assert_eq!(delta["usage"]["output_tokens"], 4);
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
}

#[tokio::test]
async fn status_and_times_work_on_every_endpoint_in_the_providers_envelope() {
    let (base, client) = start().await;
    for endpoint in ALL {
        let text = format!("{endpoint:?} MOCK:status=503,times=1");
        let (status, headers, body) = call(&client, endpoint.request(&base, &text, false)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{endpoint:?}");
        assert_eq!(header(&headers, "retry-after"), "1");
        assert_eq!(header(&headers, "retry-after-ms"), "20");
        if endpoint.anthropic() {
            assert_eq!(body["type"], "error");
            assert_eq!(body["error"]["type"], "api_error");
            assert_eq!(body["request_id"], header(&headers, "request-id"));
        } else {
            assert_eq!(body["error"]["type"], "server_error", "{endpoint:?}");
            assert!(
                body["error"]
                    .as_object()
                    .is_some_and(|e| e.contains_key("param"))
            );
            assert!(header(&headers, "x-request-id").starts_with("req_"));
        }
        let (status, _, _) = call(&client, endpoint.request(&base, &text, false)).await;
        assert_eq!(status, StatusCode::OK, "{endpoint:?} after times=1");
    }
    let (status, headers, body) =
        call(&client, Messages.request(&base, "MOCK:status=529", true)).await;
    assert_eq!(status.as_u16(), 529);
    assert_eq!(
        body["error"],
        json!({"type": "overloaded_error", "message": "Overloaded"})
    );
    assert!(headers.contains_key("retry-after"));
}

#[tokio::test]
async fn insufficient_quota_is_openais_body() {
    let (base, client) = start().await;
    let text = "MOCK:status=429,type=insufficient_quota,retry_after=none";
    let (status, headers, body) = call(&client, Chat.request(&base, text, false)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body,
        json!({"error": {
            "message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "type": "insufficient_quota",
            "param": null,
            "code": "insufficient_quota",
        }})
    );
    assert!(!headers.contains_key("retry-after"));
}

#[tokio::test]
async fn format_directives_write_other_dialects() {
    let (base, client) = start().await;
    let (status, headers, body) = send(
        &client,
        Chat.request(&base, "MOCK:status=502,format=html", false),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(header(&headers, "content-type"), "text/html");
    assert!(
        String::from_utf8_lossy(&body.expect("body")).contains("<title>502 Bad Gateway</title>")
    );
    let (_, _, hai) = call(
        &client,
        Chat.request(&base, "MOCK:status=429,format=error_code_detail", false),
    )
    .await;
    assert_eq!(hai["error_code"], "rate_limit_error");
    let (_, _, humanloop) = call(
        &client,
        Chat.request(&base, "MOCK:status=504,format=humanloop", false),
    )
    .await;
    assert_eq!(humanloop["detail"]["code"], 504);
    assert_eq!(humanloop["detail"]["origin"], "mock");
    let (_, _, anthropic) = call(
        &client,
        Chat.request(&base, "MOCK:status=500,format=anthropic", false),
    )
    .await;
    assert_eq!(anthropic["error"]["type"], "api_error");
}

#[tokio::test]
async fn error_after_ends_every_stream_in_its_dialect() {
    let (base, client) = start().await;
    for endpoint in STREAMING {
        for n in [0, 2] {
            let text = format!("a b c d MOCK:error_after={n}");
            let (status, _, body) = send(&client, endpoint.request(&base, &text, true)).await;
            assert_eq!(status, StatusCode::OK);
            let body = body.expect("the stream ends cleanly");
            assert_eq!(deltas(endpoint, &body).len(), n, "{endpoint:?} {n}");
            let events = events(&body);
            let (name, data) = events.last().expect("events");
            let data: Value = serde_json::from_str(data).expect("json");
            match endpoint {
                Chat | Completions => assert_eq!(data["error"]["type"], "server_error"),
                Responses => {
                    assert_eq!(name.as_deref(), Some("response.failed"));
                    assert_eq!(data["response"]["status"], "failed");
                    assert_eq!(data["response"]["error"]["code"], "server_error");
                    let (name, error) = &events[events.len() - 2];
                    assert_eq!(name.as_deref(), Some("error"));
                    let error: Value = serde_json::from_str(error).expect("json");
                    assert_eq!(error["code"], "server_error");
                    assert_eq!(error["sequence_number"], events.len() - 2);
                }
                Messages => {
                    assert_eq!(name.as_deref(), Some("error"));
                    assert_eq!(data["error"]["type"], "overloaded_error");
                }
                Embeddings => unreachable!(),
            }
            assert!(!String::from_utf8_lossy(&body).contains("[DONE]"));
        }
    }
    let text = "MOCK:error_after=0,error_event=error";
    let (_, _, body) = send(&client, Responses.request(&base, text, true)).await;
    let body = body.expect("stream");
    let events = events(&body);
    assert_eq!(events.last().and_then(|e| e.0.as_deref()), Some("error"));
    assert!(!String::from_utf8_lossy(&body).contains("response.failed"));
}

#[tokio::test]
async fn cut_after_drops_every_stream_mid_body() {
    let (base, client) = start().await;
    for endpoint in STREAMING {
        let (status, _, body) = send(
            &client,
            endpoint.request(&base, "a b c d MOCK:cut_after=3", true),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.is_err(),
            "{endpoint:?}: the body must fail, got {body:?}"
        );
    }
}

#[tokio::test]
async fn slow_streams_stall_and_delay_between_events() {
    let (base, client) = start().await;
    // delay_ms: between every two events (8 events for a 4-word chat reply).
    let started = Instant::now();
    let (_, _, body) = send(&client, Chat.request(&base, "a b MOCK:delay_ms=25", true)).await;
    let events = events(&body.expect("stream"));
    assert!(started.elapsed() >= Duration::from_millis(25) * (events.len() as u32 - 1));
    let started = Instant::now();
    let text = "a b MOCK:stall_after=1,stall_ms=200";
    let (_, _, body) = send(&client, Messages.request(&base, text, true)).await;
    assert_eq!(deltas(Messages, &body.expect("stream")).len(), 5);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn hang_holds_even_the_headers() {
    let (base, client) = start().await;
    let waited = tokio::time::timeout(
        Duration::from_millis(300),
        client.request(Responses.request(&base, "MOCK:hang_ms=5000", true)),
    )
    .await;
    assert!(waited.is_err(), "headers arrived during the hang");
    let started = Instant::now();
    let (status, _, _) = call(
        &client,
        Embeddings.request(&base, "MOCK:hang_ms=150", false),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn reset_closes_the_connection_without_an_answer() {
    let (base, client) = start().await;
    for endpoint in ALL {
        let text = format!("{endpoint:?} MOCK:reset,times=1");
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            client.request(endpoint.request(&base, &text, false)),
        )
        .await
        .expect("the reset comes at once");
        assert!(answer.is_err(), "{endpoint:?} answered: {answer:?}");
        // `times=1`: the retry is answered.
        let (status, _, _) = call(&client, endpoint.request(&base, &text, false)).await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn calls_are_counted_per_route_test_and_idempotency_key() {
    let (base, client) = start().await;
    for _ in 0..3 {
        let mut request = Chat.request(&base, "MOCK:status=500", false);
        request
            .headers_mut()
            .insert("x-tollgate-test", "retry-1".parse().expect("value"));
        request
            .headers_mut()
            .insert("idempotency-key", "idem-9".parse().expect("value"));
        call(&client, request).await;
    }
    call(&client, Messages.request(&base, "hi", false)).await;
    let (_, _, calls) = call(&client, get(&base, "/mock/calls")).await;
    assert_eq!(calls["total"], 4);
    assert_eq!(
        calls["routes"],
        json!({"/v1/chat/completions": 3, "/v1/messages": 1})
    );
    assert_eq!(calls["tests"], json!({"retry-1": 3}));
    assert_eq!(calls["idempotency_keys"], json!({"idem-9": 3}));
    let forget = Request::delete(format!("{base}/mock/calls"))
        .body(Full::default())
        .expect("request");
    let (status, _, _) = send(&client, forget).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, _, calls) = call(&client, get(&base, "/mock/calls")).await;
    assert_eq!(calls["total"], 0);
}

#[tokio::test]
async fn the_mock_counts_in_process_too() {
    let mock = mock::Mock::new(Vec::new());
    let (base, client) = start_with(mock.clone()).await;
    let mut request = Embeddings.request(&base, "x", false);
    request
        .headers_mut()
        .insert("x-tollgate-test", "in-process".parse().expect("value"));
    call(&client, request).await;
    assert_eq!(mock.calls().test("in-process"), 1);
    assert_eq!(mock.calls().route("/v1/embeddings"), 1);
}

#[tokio::test]
async fn the_upstream_key_is_checked_as_each_provider_checks_it() {
    let (base, client) = start().await;
    let unauthenticated = |path: &str, headers: &[(&str, &str)]| {
        let mut builder = Request::post(format!("{base}{path}"));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let body =
            json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]});
        builder
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request")
    };
    let (status, _, body) = call(&client, unauthenticated("/v1/chat/completions", &[])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], Value::Null);
    let wrong = "sk-up-wrong-key-987654";
    let (status, _, body) = call(
        &client,
        unauthenticated(
            "/v1/responses",
            &[("authorization", &format!("Bearer {wrong}"))],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("sk-") && message.contains("7654") && !message.contains(wrong),
        "{message}"
    );

    let version = ("anthropic-version", "2023-06-01");
    let (status, headers, body) = call(&client, unauthenticated("/v1/messages", &[version])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(body["request_id"], header(&headers, "request-id"));
    let (status, _, _) = call(
        &client,
        unauthenticated("/v1/messages", &[version, ("x-api-key", wrong)]),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = call(
        &client,
        unauthenticated("/v1/messages", &[("x-api-key", KEY)]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error"]["message"],
        "anthropic-version: header is required"
    );

    // Without `require_key`, OpenAI endpoints take any key (or none).
    let (base, client) = start_with(mock::Mock::new(Vec::new())).await;
    let open = Request::post(format!("{base}/v1/embeddings"))
        .body(Full::new(Bytes::from(r#"{"model":"m","input":"x"}"#)))
        .expect("request");
    let (status, _, _) = call(&client, open).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn rate_limit_headers_count_down_and_the_limit_is_enforced() {
    let (base, client) = start_with(mock::Mock::new(Vec::new()).requests_per_minute(2)).await;
    let (_, first, _) = call(&client, Chat.request(&base, "a", false)).await;
    let (_, second, _) = call(&client, Chat.request(&base, "a", false)).await;
    assert_eq!(header(&first, "x-ratelimit-limit-requests"), "2");
    assert_eq!(header(&first, "x-ratelimit-remaining-requests"), "1");
    assert_eq!(header(&second, "x-ratelimit-remaining-requests"), "0");
    assert_ne!(
        header(&first, "x-request-id"),
        header(&second, "x-request-id")
    );
    let remaining = |h: &HeaderMap| {
        header(h, "x-ratelimit-remaining-tokens")
            .parse::<u64>()
            .expect("number")
    };
    assert_eq!(
        remaining(&first) - remaining(&second),
        4,
        "1 prompt + 3 completion tokens"
    );
    assert!(header(&first, "x-ratelimit-reset-requests").ends_with('s'));
    let (status, headers, body) = call(&client, Chat.request(&base, "a", false)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let retry_ms: u64 = header(&headers, "retry-after-ms").parse().expect("ms");
    assert!((1..=60_000).contains(&retry_ms));

    let (base, client) = start().await;
    let (_, headers, _) = call(&client, Messages.request(&base, "a", false)).await;
    let reset = header(&headers, "anthropic-ratelimit-requests-reset");
    assert!(tollgate::time::parse_rfc3339(reset).is_some(), "{reset}");
    for name in [
        "anthropic-ratelimit-requests-limit",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-tokens-limit",
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
    ] {
        header(&headers, name);
    }
    let (_, headers, _) = call(&client, get(&base, "/v1/models")).await;
    header(&headers, "openai-processing-ms");
}

#[tokio::test]
async fn bad_requests_get_the_providers_400() {
    let (base, client) = start().await;
    let raw = |path: &str, body: &'static str, anthropic: bool| {
        let mut request = post(&base, path, &Value::Null, anthropic);
        *request.body_mut() = Full::new(Bytes::from_static(body.as_bytes()));
        request
    };
    let (status, _, body) = call(&client, raw("/v1/chat/completions", "{not json", false)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, _, body) = call(&client, raw("/v1/messages", "[]", true)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["type"], "error");
    let (status, _, body) = call(
        &client,
        raw("/v1/messages", r#"{"model":"m","messages":[]}"#, true),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["message"], "max_tokens: Field required");
    let (status, _, body) = call(
        &client,
        raw(
            "/v1/embeddings",
            r#"{"model":"m","input":"x","encoding_format":"hex"}"#,
            false,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "encoding_format");
    let (status, _, body) = call(
        &client,
        raw("/v1/embeddings", r#"{"model":"m","input":[]}"#, false),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "input");
    let (status, _, body) = call(
        &client,
        raw("/v1/chat/completions", r#"{"messages":[]}"#, false),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("model"))
    );
    let (status, _, body) = call(&client, get(&base, "/v1/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["message"], "Invalid URL (GET /v1/nope)");
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
