//! Every stream dialect, at every byte split: OpenAI chat completions, the
//! Responses API, Anthropic Messages, and HAI's stream as SSE and as bare
//! JSON objects (the guide's own chunks, `tests/fixtures/seeds/003-hai-stream.json`).
//!
//! Each stream is split at every byte into two frames, and sent one byte a
//! frame, and must give the same answer: a healthy stream passes unchanged;
//! a stream cut after its content ends with exactly one terminal error in
//! its dialect; a stream that fails before any content-bearing event (after
//! its opening events) is answered with an HTTP status in the dialect's
//! envelope.

use http::StatusCode;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde_json::{Value, json};
use tollgate::stream::StreamFormat;
use tower::ServiceExt;

use super::*;

const HAI_STREAM: &str = include_str!("../fixtures/seeds/003-hai-stream.json");
const HIVEOPS: &str = include_str!("../fixtures/seeds/000-hiveops-errors.bodies");
const ANTHROPIC: &str = include_str!("../fixtures/seeds/anthropic-api-errors.bodies");

/// The body named `name` in a `.bodies` fixture.
fn seed_body(file: &str, name: &str) -> String {
    let (_, rest) = file
        .split_once(&format!(" {name}\n"))
        .expect("the fixture has the body");
    rest.split("\n=== ").next().unwrap().trim_end().to_owned()
}

/// `json` as SSE data lines (a client joins them with `\n`: the same JSON).
fn data_lines(name: Option<&str>, json: &str) -> String {
    let mut event = name.map(|n| format!("event: {n}\n")).unwrap_or_default();
    for line in json.lines() {
        event.push_str(&format!("data: {line}\n"));
    }
    event.push('\n');
    event
}

/// The guide's HAI chunks, verbatim, one string each.
fn hai_chunks() -> Vec<String> {
    let mut chunks = Vec::new();
    let mut chunk = String::new();
    for line in HAI_STREAM.lines() {
        chunk.push_str(line);
        chunk.push('\n');
        if line == "}" {
            chunks.push(std::mem::take(&mut chunk).trim_end().to_owned());
        }
    }
    assert_eq!(chunks.len(), 6, "the guide's six chunks");
    chunks
}

/// A JSON text without the whitespace outside its strings.
fn compact(json: &str) -> String {
    let (mut out, mut in_string, mut escape) = (String::new(), false, false);
    for c in json.chars() {
        if in_string {
            in_string = escape || c != '"';
            escape = !escape && c == '\\';
        } else if c.is_whitespace() {
            continue;
        } else {
            in_string = c == '"';
        }
        out.push(c);
    }
    out
}

/// One dialect: where it is served, and its stream's parts.
struct Dialect {
    name: &'static str,
    path: &'static str,
    content_type: &'static str,
    format: Option<StreamFormat>,
    /// Events that open the stream without being content.
    opening: Vec<String>,
    /// Content-bearing events.
    content: Vec<String>,
    /// The stream's own end.
    end: String,
    /// An error event of the dialect, and the status and envelope it is
    /// answered with before any content.
    error: String,
    status: u16,
    envelope: Value,
    /// The status of an upstream that failed before content: 502, or
    /// HAI's 500 (every row of its table for a server error is a 500).
    upstream_failed: u16,
    /// Checks the terminal error appended to a stream cut after its content.
    terminal: fn(&str),
}

fn chat() -> Dialect {
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    let rate = seed_body(HIVEOPS, "rate_limit_exceeded");
    Dialect {
        name: "chat completions",
        path: "/v1/chat/completions",
        content_type: "text/event-stream",
        format: None,
        opening: vec![
            chunk(
                r#"{"role":"assistant","content":"","refusal":null}"#,
                "null",
            ),
            ": OPENROUTER PROCESSING\n\n".to_owned(),
        ],
        content: vec![
            chunk(r#"{"content":"Hel"}"#, "null"),
            chunk(r#"{"content":"lo"}"#, "null"),
            chunk("{}", "\"stop\""),
        ],
        end: "data: [DONE]\n\n".to_owned(),
        // HiveOps's 429, as the guide prints it, in data lines.
        error: data_lines(None, &rate),
        status: 429,
        upstream_failed: 502,
        envelope: json!({"error": {
            "message": "Rate limit exceeded. Please try again later.",
            "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded",
        }}),
        terminal: |tail| {
            assert_eq!(
                tail,
                "data: {\"error\":{\"message\":\"The upstream stream ended before it completed.\",\"type\":\"server_error\",\"param\":null,\"code\":\"stream_truncated\"}}\n\n"
            );
        },
    }
}

fn responses() -> Dialect {
    let event = |name: &str, rest: &str, n: u32| {
        format!("event: {name}\ndata: {{\"type\":\"{name}\",\"sequence_number\":{n}{rest}}}\n\n")
    };
    let response = |status: &str| {
        format!(
            ",\"response\":{{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"{status}\",\"output\":[]}}"
        )
    };
    Dialect {
        name: "responses",
        path: "/v1/responses",
        content_type: "text/event-stream",
        format: None,
        opening: vec![
            event("response.created", &response("in_progress"), 0),
            event("response.in_progress", &response("in_progress"), 1),
        ],
        content: vec![
            event(
                "response.output_text.delta",
                ",\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hi\"",
                2,
            ),
            event(
                "response.output_text.delta",
                ",\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"!\"",
                3,
            ),
        ],
        end: event("response.completed", &response("completed"), 4),
        error: "event: error\ndata: {\"type\":\"error\",\"code\":\"rate_limit_exceeded\",\"message\":\"Rate limit reached for gpt-4o.\",\"param\":null,\"sequence_number\":2}\n\n".to_owned(),
        status: 429,
        upstream_failed: 502,
        envelope: json!({"error": {
            "message": "Rate limit reached for gpt-4o.",
            "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded",
        }}),
        terminal: |tail| {
            assert_eq!(
                tail,
                "event: error\ndata: {\"type\":\"error\",\"code\":\"stream_truncated\",\"message\":\"The upstream stream ended before it completed.\",\"param\":null,\"sequence_number\":4}\n\n\
                 event: response.failed\ndata: {\"type\":\"response.failed\",\"sequence_number\":5,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"failed\",\"output\":[],\"error\":{\"code\":\"server_error\",\"message\":\"The upstream stream ended before it completed.\"}}}\n\n"
            );
        },
    }
}

fn anthropic() -> Dialect {
    let event = |name: &str, data: &str| format!("event: {name}\ndata: {data}\n\n");
    let overloaded = seed_body(ANTHROPIC, "overloaded_error");
    Dialect {
        name: "anthropic messages",
        path: "/v1/messages",
        content_type: "text/event-stream",
        format: None,
        opening: vec![
            event(
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5","stop_reason":null,"usage":{"input_tokens":25,"output_tokens":1}}}"#,
            ),
            event("ping", r#"{"type": "ping"}"#),
        ],
        content: vec![
            event(
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            event(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
            ),
            event(
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            event(
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
            ),
        ],
        end: event("message_stop", r#"{"type":"message_stop"}"#),
        // Anthropic's documented overloaded error, as an `error` event.
        error: data_lines(Some("error"), &overloaded),
        status: 529,
        upstream_failed: 502,
        envelope: json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        terminal: |tail| {
            assert_eq!(
                tail,
                "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"The upstream stream ended before it completed.\"},\"request_id\":null}\n\n"
            );
        },
    }
}

/// HAI's stream: the guide's chunks (two opening, three content, then its
/// finishing chunk with `content_filter_error`), `frame` turning each into
/// an SSE event or a bare JSON object.
fn hai(frame: fn(&str) -> String, content_type: &'static str, name: &'static str) -> Dialect {
    let chunks: Vec<String> = hai_chunks().iter().map(|c| frame(c)).collect();
    Dialect {
        name,
        path: "/v1/chat",
        content_type,
        format: Some(StreamFormat::FinishReasonMetadata),
        opening: chunks[..2].to_vec(),
        content: chunks[2..5].to_vec(),
        // HAI's finishing chunk ends the stream: it is not a truncation.
        end: chunks[5].clone(),
        error: chunks[5].clone(),
        status: 400,
        upstream_failed: 500,
        envelope: json!({
            "error_code": "content_filter_error",
            "detail": "Could not parse response content as the request was rejected by the content filter.",
        }),
        terminal: |tail| {
            let json = tail.strip_prefix("data: ").unwrap_or(tail).trim_end();
            assert!(
                json.starts_with(r#"{"message_id":"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx","thread_id":"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx","created_at":""#),
                "{tail}"
            );
            let chunk: Value = serde_json::from_str(json).unwrap();
            assert_eq!(
                chunk["delta"],
                json!({"role": "assistant", "content": "", "sources": [], "meta_data": {
                    "type": "common_metadata", "finish_reason": "api_error",
                    "detail": "The upstream stream ended before it completed.",
                }})
            );
        },
    }
}

fn dialects() -> Vec<Dialect> {
    vec![
        chat(),
        responses(),
        anthropic(),
        hai(
            |c| data_lines(None, &compact(c)),
            "text/event-stream",
            "HAI, SSE",
        ),
        hai(
            |c| data_lines(None, c),
            "text/event-stream",
            "HAI, SSE, data lines",
        ),
        hai(
            |c| format!("{}\n", compact(c)),
            "application/x-ndjson",
            "HAI, JSON lines",
        ),
        hai(
            |c| format!("{c}\n"),
            "application/x-ndjson",
            "HAI, the guide's bytes",
        ),
    ]
}

/// Runs `pieces` through the layer as `dialect`'s upstream; `fail`: the
/// upstream's body then fails.
async fn exchange(dialect: &Dialect, pieces: Vec<Bytes>, fail: bool) -> (StatusCode, String) {
    let content_type = dialect.content_type;
    let inner = service_fn(move |_req: Request<Full<Bytes>>| {
        let mut frames: Vec<Result<Frame<Bytes>, io::Error>> =
            pieces.iter().cloned().map(|b| Ok(Frame::data(b))).collect();
        if fail {
            frames.push(Err(io::Error::other("reset")));
        }
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", content_type)
                    .body(StreamBody::new(stream::iter(frames)))
                    .unwrap(),
            )
        }
    });
    let layer = match dialect.format {
        Some(format) => StreamErrorTrailerLayer::new().format(format),
        None => StreamErrorTrailerLayer::new(),
    };
    let request = Request::post(dialect.path).body(Full::default()).unwrap();
    let exchange = async {
        let response = ServiceBuilder::new()
            .layer(layer)
            .service(inner)
            .oneshot(request)
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    };
    tokio::time::timeout(BOUND, exchange)
        .await
        .expect("bounded exchange")
}

/// `check`s the answer to `stream` split at every byte into two frames,
/// and sent one byte a frame.
fn at_every_split(
    dialect: &Dialect,
    stream: &str,
    fail: bool,
    check: impl Fn(StatusCode, &str, &str),
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let bytes = stream.as_bytes();
    for split in 0..=bytes.len() {
        let pieces = vec![
            Bytes::copy_from_slice(&bytes[..split]),
            Bytes::copy_from_slice(&bytes[split..]),
        ];
        let (status, body) = runtime.block_on(exchange(dialect, pieces, fail));
        check(
            status,
            &body,
            &format!("{}: split at {split}", dialect.name),
        );
    }
    let pieces = bytes
        .iter()
        .map(|b| Bytes::copy_from_slice(&[*b]))
        .collect();
    let (status, body) = runtime.block_on(exchange(dialect, pieces, fail));
    check(status, &body, &format!("{}: a byte a frame", dialect.name));
}

#[test]
fn healthy_streams_pass_unchanged() {
    for d in dialects() {
        let stream = [d.opening.concat(), d.content.concat(), d.end.clone()].concat();
        at_every_split(&d, &stream, false, |status, body, at| {
            assert_eq!(status, StatusCode::OK, "{at}");
            assert_eq!(body, stream, "{at}");
        });
    }
}

#[test]
fn a_stream_cut_after_its_content_ends_with_one_terminal_error() {
    for d in dialects() {
        let complete = [d.opening.concat(), d.content.concat()].concat();
        // Cut inside its end event: the half event is dropped.
        let stream = format!("{complete}{}", &d.end[..d.end.len() / 2]);
        at_every_split(&d, &stream, false, |status, body, at| {
            assert_eq!(status, StatusCode::OK, "{at}");
            let tail = body
                .strip_prefix(&complete)
                .unwrap_or_else(|| panic!("{at}: {body}"));
            // Bare JSON: the error goes on a line of its own.
            (d.terminal)(tail);
        });
    }
}

#[test]
fn a_failure_before_content_is_an_http_status() {
    for d in dialects() {
        let opening = d.opening.concat();
        // The dialect's error event after the opening events.
        let stream = format!("{opening}{}{}", d.error, d.content.concat());
        at_every_split(&d, &stream, false, |status, body, at| {
            assert_eq!(status.as_u16(), d.status, "{at}: {body}");
            let mut envelope: Value = serde_json::from_str(body).unwrap();
            if let Some(object) = envelope.as_object_mut() {
                object.remove("request_id");
            }
            assert_eq!(envelope, d.envelope, "{at}");
        });
        // The opening events, then the upstream's body fails, or ends
        // without its end.
        for fail in [true, false] {
            at_every_split(&d, &opening, fail, |status, body, at| {
                assert_eq!(status.as_u16(), d.upstream_failed, "{at}: {body}");
                let mut envelope: Value = serde_json::from_str(body).unwrap();
                envelope.as_object_mut().unwrap().remove("request_id");
                let keys: Vec<&String> = envelope.as_object().unwrap().keys().collect();
                let expected: Vec<&String> = d.envelope.as_object().unwrap().keys().collect();
                assert_eq!(keys, expected, "{at}: the dialect's envelope");
            });
        }
    }
}
