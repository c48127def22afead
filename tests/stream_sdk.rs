//! The official `openai` Python SDK consumes streams that fail behind
//! `StreamErrorTrailerLayer` and raises `openai.APIError` with the message
//! and code the layer sent (tests/sdk/stream_openai.py).

mod support;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::Response;
use serde_json::Value;
use tollgate::stream::StreamErrorTrailerLayer;

const CHUNK: &str = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";

/// A Responses stream's first event, as OpenAI sends it (the SDK's
/// `Response` type, complete).
const RESPONSE_CREATED: &str = concat!(
    "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{",
    "\"id\":\"resp_1\",\"object\":\"response\",\"created_at\":1700000000,\"status\":\"in_progress\",",
    "\"background\":false,\"error\":null,\"incomplete_details\":null,\"instructions\":null,",
    "\"max_output_tokens\":null,\"max_tool_calls\":null,\"model\":\"gpt-4o-mini\",\"output\":[],",
    "\"parallel_tool_calls\":true,\"previous_response_id\":null,\"reasoning\":{\"effort\":null,\"summary\":null},",
    "\"service_tier\":\"default\",\"store\":true,\"temperature\":1.0,\"text\":{\"format\":{\"type\":\"text\"},",
    "\"verbosity\":\"medium\"},\"tool_choice\":\"auto\",\"tools\":[],\"top_logprobs\":0,\"top_p\":1.0,",
    "\"truncation\":\"disabled\",\"usage\":null,\"user\":null,\"metadata\":{}}}\n\n"
);

const TEXT_DELTA: &str = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hi\",\"logprobs\":[]}\n\n";

fn sse(frames: Vec<&'static str>, then: &'static str) -> Response<Body> {
    let body = stream::iter(
        frames
            .into_iter()
            .map(|f| Ok::<_, io::Error>(Bytes::from_static(f.as_bytes()))),
    );
    let body = match then {
        "fail" => body
            .chain(stream::once(async {
                Err(io::Error::other("upstream connection reset"))
            }))
            .boxed(),
        "stall" => body.chain(stream::pending()).boxed(),
        _ => body.boxed(),
    };
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap()
}

fn upstream() -> Router {
    Router::new()
        .route(
            "/fail/v1/chat/completions",
            post(|| async { sse(vec![CHUNK, CHUNK], "fail") }),
        )
        .route(
            "/cut/v1/chat/completions",
            post(|| async { sse(vec![CHUNK, CHUNK], "end") }),
        )
        .route(
            "/stall/v1/chat/completions",
            post(|| async { sse(vec![CHUNK], "stall") }),
        )
        .route(
            "/rate/v1/chat/completions",
            post(|| async {
                sse(
                    vec!["data: {\"error\":{\"message\":\"Rate limit reached for gpt-4o-mini\",\"type\":\"rate_limit_error\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}\n\n"],
                    "end",
                )
            }),
        )
        .route(
            "/responses-cut/v1/responses",
            post(|| async { sse(vec![RESPONSE_CREATED, TEXT_DELTA], "end") }),
        )
        .route(
            "/ok/v1/chat/completions",
            post(|| async { sse(vec![CHUNK, CHUNK, "data: [DONE]\n\n"], "end") }),
        )
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_raises_api_error_for_failed_streams() {
    let python = tokio::task::spawn_blocking(support::sdk_python)
        .await
        .unwrap();
    let layer = StreamErrorTrailerLayer::new().idle_timeout(Duration::from_millis(200));
    let addr = serve(upstream().layer(layer)).await;
    let script = support::repo_root().join("tests/sdk/stream_openai.py");
    let scenarios = ["fail", "cut", "stall", "rate", "ok", "responses-cut"];
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(format!("http://{addr}"))
        .args(scenarios)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the SDK script finished within 90 s")
        .expect("the SDK script ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "script failed: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), scenarios.len(), "{stdout}");
    let by = |name: &str| {
        results
            .iter()
            .find(|r| r["scenario"] == name)
            .unwrap_or_else(|| panic!("no result for {name}: {stdout}"))
    };

    // Mid-stream failures: the chunks before the error arrive, then the SDK
    // raises a plain APIError (not a connection error) with our message/code.
    for (scenario, text, message, code, error_type) in [
        (
            "fail",
            "HiHi",
            "The upstream stream failed before it completed.",
            "bad_gateway",
            "server_error",
        ),
        (
            "cut",
            "HiHi",
            "The upstream stream ended before it completed.",
            "stream_truncated",
            "server_error",
        ),
        (
            "stall",
            "Hi",
            "The upstream sent no event for 200 ms.",
            "timeout",
            "timeout_error",
        ),
    ] {
        let r = by(scenario);
        assert_eq!(r["raised"], "APIError", "{r}");
        assert_eq!(r["is_api_error"], true, "{r}");
        assert_eq!(r["text"], text, "{r}");
        assert_eq!(r["message"], message, "{r}");
        assert_eq!(r["code"], code, "{r}");
        assert_eq!(r["type"], error_type, "{r}");
    }

    // A first event that is an error is a real 429: the SDK's RateLimitError.
    let r = by("rate");
    assert_eq!(r["raised"], "RateLimitError", "{r}");
    assert_eq!(r["is_api_error"], true, "{r}");
    assert_eq!(r["status"], 429, "{r}");
    assert_eq!(r["code"], "rate_limit_exceeded", "{r}");
    assert_eq!(r["text"], "", "{r}");

    // A healthy stream is untouched.
    let r = by("ok");
    assert_eq!(r["raised"], Value::Null, "{r}");
    assert_eq!(r["text"], "HiHi", "{r}");

    // A Responses stream cut after its content ends with the documented
    // `error` event, then `response.failed` with the response the stream
    // announced: both valid as the SDK's own types, their sequence numbers
    // continuing the stream's.
    let r = by("responses-cut");
    assert_eq!(r["raised"], Value::Null, "{r}");
    assert_eq!(r["text"], "Hi", "{r}");
    assert_eq!(
        r["types"],
        serde_json::json!([
            "response.created",
            "response.output_text.delta",
            "error",
            "response.failed"
        ]),
        "{r}"
    );
    assert_eq!(r["sequence"], serde_json::json!([0, 1, 2, 3]), "{r}");
    assert_eq!(r["invalid"], serde_json::json!([]), "{r}");
    let message = "The upstream stream ended before it completed.";
    assert_eq!(
        r["error"],
        serde_json::json!({"code": "stream_truncated", "message": message, "param": null}),
        "{r}"
    );
    assert_eq!(
        r["failed"],
        serde_json::json!({"id": "resp_1", "status": "failed", "code": "server_error", "message": message}),
        "{r}"
    );
}
