//! The terminal error event of each streaming protocol, and how a request
//! picks its protocol.
//!
//! The error JSON inside every event is rendered by
//! [`ErrorFormat::render_body`]: this module only wraps it in the event
//! framing each protocol expects.

use std::str::FromStr;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Uri};
use serde::Serialize;
use serde_json::Value;

use super::seen::{Seen, failed_response, hai_id, hai_now, response_error_code};

use crate::ApiError;
use crate::envelope::ErrorFormat;

/// The streaming protocol of a response, which fixes the terminal error event
/// [`StreamErrorTrailerLayer`](super::StreamErrorTrailerLayer) appends when the
/// stream fails.
///
/// | format | terminal error event |
/// |---|---|
/// | `ChatCompletions` | `data: {"error":{"message","type","param","code"}}` |
/// | `AnthropicMessages` | `event: error` / `data: {"type":"error","error":{"type","message"},…}` |
/// | `Responses` | `event: error` / `data: {"type":"error","code","message","param","sequence_number"}`, then `event: response.failed` |
/// | `FinishReasonMetadata` | `data: {"message_id","thread_id","created_at","delta":{"role":"assistant","content":"","sources":[],"meta_data":{"type":"common_metadata","finish_reason":"<code>","detail":"<detail>"}}}` |
///
/// On a stream of bare JSON objects (`application/x-ndjson`), the same
/// events are written as JSON lines, without the SSE framing.
///
/// ```
/// use tollgate::ApiError;
/// use tollgate::stream::StreamFormat;
///
/// let event = StreamFormat::ChatCompletions.terminal_event(
///     &ApiError::bad_gateway().with_code("stream_truncated").with_message("cut"),
///     false,
/// );
/// assert_eq!(
///     &event[..],
///     &b"data: {\"error\":{\"message\":\"cut\",\"type\":\"server_error\",\"param\":null,\"code\":\"stream_truncated\"}}\n\n"[..]
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum StreamFormat {
    /// OpenAI chat completions (and legacy completions): an event whose JSON
    /// has an `error` key, which the official OpenAI SDKs raise as `APIError`.
    #[default]
    ChatCompletions,
    /// Anthropic Messages: `event: error`, which the Anthropic SDKs raise.
    AnthropicMessages,
    /// OpenAI Responses: the documented `error` event
    /// (`{"type":"error","code","message","param","sequence_number"}`, its
    /// sequence number the next of the stream's), then `response.failed`
    /// with the response the stream announced, its `status` `failed` and
    /// its `error` (`{"code","message"}`, the code one the API defines), for
    /// clients that follow the response's status.
    Responses,
    /// HAI's stream (003-hai-errors.txt): a last chunk in the stream's own
    /// shape (`message_id`, `thread_id`, `created_at`, `delta`) whose
    /// `delta.meta_data` carries `type`, `finish_reason` (the HAI error
    /// code) and `detail`.
    FinishReasonMetadata,
}

/// A stream format name that [`StreamFormat::from_str`] does not know.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unknown stream format {0:?}: expected chat_completions, anthropic_messages, responses or finish_reason_metadata (hai)"
)]
pub struct UnknownStreamFormat(String);

impl FromStr for StreamFormat {
    type Err = UnknownStreamFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "chat_completions" | "chat" | "openai" => StreamFormat::ChatCompletions,
            "anthropic_messages" | "anthropic" | "messages" => StreamFormat::AnthropicMessages,
            "responses" => StreamFormat::Responses,
            "finish_reason_metadata" | "metadata" | "hai" => StreamFormat::FinishReasonMetadata,
            _ => return Err(UnknownStreamFormat(s.to_owned())),
        })
    }
}

#[derive(Serialize)]
struct ResponsesError<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'a Value,
    message: &'a Value,
    param: &'a Value,
    sequence_number: u64,
}

#[derive(Serialize)]
struct MetadataChunk<'a> {
    message_id: &'a Value,
    thread_id: &'a Value,
    created_at: String,
    delta: MetadataDelta<'a>,
}

#[derive(Serialize)]
struct MetadataDelta<'a> {
    role: &'static str,
    content: &'static str,
    sources: [(); 0],
    meta_data: Metadata<'a>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    finish_reason: &'a Value,
    detail: &'a Value,
}

impl StreamFormat {
    /// The format a request speaks: Anthropic Messages for `…/messages` paths
    /// or requests with an `anthropic-version` header, Responses for
    /// `…/responses`, chat completions otherwise. HAI's
    /// (`FinishReasonMetadata`) is never guessed: a layer in front of a HAI
    /// API is given it ([`StreamErrorTrailerLayer::format`](super::StreamErrorTrailerLayer::format)).
    pub fn from_request(uri: &Uri, headers: &HeaderMap) -> StreamFormat {
        let path = uri.path().trim_end_matches('/');
        if headers.contains_key(crate::envelope::ANTHROPIC_VERSION) || path.ends_with("/messages") {
            StreamFormat::AnthropicMessages
        } else if path.ends_with("/responses") {
            StreamFormat::Responses
        } else {
            StreamFormat::ChatCompletions
        }
    }

    /// The bytes that end a failed stream with `error`, framed as complete SSE
    /// events. `done_after_error` adds `data: [DONE]` after the error in the
    /// formats that use it (chat completions and finish-reason metadata).
    pub fn terminal_event(self, error: &ApiError, done_after_error: bool) -> Bytes {
        self.terminal(error, done_after_error, &Seen::default(), false)
    }

    /// [`terminal_event`](Self::terminal_event) for a stream of which the
    /// watcher has seen `seen`; `bare`: JSON lines instead of SSE events.
    pub(crate) fn terminal(
        self,
        error: &ApiError,
        done_after_error: bool,
        seen: &Seen,
        bare: bool,
    ) -> Bytes {
        let mut out = BytesMut::with_capacity(256);
        let mut event = |name: Option<&str>, data: &[u8]| {
            if bare {
                out.extend_from_slice(data);
                out.extend_from_slice(b"\n");
            } else {
                sse_event(&mut out, name, data);
            }
        };
        match self {
            StreamFormat::ChatCompletions => {
                event(None, &ErrorFormat::OpenAi.render_body(error));
            }
            StreamFormat::AnthropicMessages => {
                event(Some("error"), &ErrorFormat::Anthropic.render_body(error));
            }
            StreamFormat::Responses => {
                let rendered = rendered_json(ErrorFormat::OpenAi, error);
                let field = |name| rendered["error"].get(name).unwrap_or(&Value::Null);
                let code = match field("code") {
                    Value::Null => field("type"),
                    code => code,
                };
                let message = field("message");
                let error_event = to_json(&ResponsesError {
                    kind: "error",
                    code,
                    message,
                    param: field("param"),
                    sequence_number: seen.events,
                });
                event(Some("error"), &error_event);
                // The response the stream announced, failed; or the least
                // of one.
                let code = response_error_code(code.as_str(), error.status());
                let error = serde_json::json!({ "code": code, "message": message });
                let response = failed_response(seen.response.as_deref(), &error);
                let failed = [
                    &b"{\"type\":\"response.failed\",\"sequence_number\":"[..],
                    (seen.events + 1).to_string().as_bytes(),
                    b",\"response\":",
                    &response,
                    b"}",
                ]
                .concat();
                event(Some("response.failed"), &failed);
            }
            StreamFormat::FinishReasonMetadata => {
                let rendered = rendered_json(ErrorFormat::ErrorCodeDetail, error);
                let (message_id, thread_id) = match &seen.hai {
                    Some(ids) => (ids.message_id.clone(), ids.thread_id.clone()),
                    None => (hai_id(), hai_id()),
                };
                let chunk = to_json(&MetadataChunk {
                    message_id: &message_id,
                    thread_id: &thread_id,
                    created_at: hai_now(),
                    delta: MetadataDelta {
                        role: "assistant",
                        content: "",
                        sources: [],
                        meta_data: Metadata {
                            kind: "common_metadata",
                            finish_reason: rendered.get("error_code").unwrap_or(&Value::Null),
                            detail: rendered.get("detail").unwrap_or(&Value::Null),
                        },
                    },
                });
                event(None, &chunk);
            }
        }
        if done_after_error
            && !bare
            && matches!(
                self,
                StreamFormat::ChatCompletions | StreamFormat::FinishReasonMetadata
            )
        {
            out.extend_from_slice(b"data: [DONE]\n\n");
        }
        out.freeze()
    }
}

/// `error` rendered by the envelope module, read back as JSON so its fields
/// can be framed the way a protocol nests them.
fn rendered_json(format: ErrorFormat, error: &ApiError) -> Value {
    serde_json::from_slice(&format.render_body(error)).unwrap_or(Value::Null)
}

pub(super) fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing borrowed strings and JSON values into a Vec cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Appends one SSE event. The JSON is compact, so it is a single line.
fn sse_event(out: &mut BytesMut, name: Option<&str>, data: &[u8]) {
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn truncated() -> ApiError {
        ApiError::bad_gateway()
            .with_code("stream_truncated")
            .with_message("The upstream stream ended early.")
    }

    fn text(format: StreamFormat, done: bool) -> String {
        String::from_utf8(format.terminal_event(&truncated(), done).to_vec()).unwrap()
    }

    #[test]
    fn chat_completions() {
        assert_eq!(
            text(StreamFormat::ChatCompletions, false),
            "data: {\"error\":{\"message\":\"The upstream stream ended early.\",\"type\":\"server_error\",\"param\":null,\"code\":\"stream_truncated\"}}\n\n"
        );
        assert!(text(StreamFormat::ChatCompletions, true).ends_with("}}\n\ndata: [DONE]\n\n"));
    }

    #[test]
    fn anthropic() {
        assert_eq!(
            text(StreamFormat::AnthropicMessages, true),
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"The upstream stream ended early.\"},\"request_id\":null}\n\n"
        );
    }

    #[test]
    fn responses() {
        assert_eq!(
            text(StreamFormat::Responses, true),
            "event: error\ndata: {\"type\":\"error\",\"code\":\"stream_truncated\",\"message\":\"The upstream stream ended early.\",\"param\":null,\"sequence_number\":0}\n\n\
             event: response.failed\ndata: {\"type\":\"response.failed\",\"sequence_number\":1,\"response\":{\"object\":\"response\",\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"The upstream stream ended early.\"}}}\n\n"
        );
        // The sequence continues the stream's; without a code, the type.
        let mut seen = Seen::new(StreamFormat::Responses);
        seen.note(br#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","created_at":1,"status":"in_progress","error":null,"output":[]}}"#);
        for _ in 1..7 {
            seen.note(b"{}");
        }
        let event = StreamFormat::Responses.terminal(&ApiError::internal(), false, &seen, false);
        let text = std::str::from_utf8(&event).unwrap();
        assert!(text.contains("\"sequence_number\":7}"), "{text}");
        assert!(text.contains("\"sequence_number\":8,"), "{text}");
        let data = |line: usize| -> Value {
            let line = text.split('\n').nth(line).unwrap();
            serde_json::from_str(line.strip_prefix("data: ").unwrap()).unwrap()
        };
        assert_eq!(data(1)["code"], "internal_error");
        // The response the stream announced, failed.
        assert_eq!(
            data(4)["response"],
            serde_json::json!({
                "id": "resp_1", "object": "response", "created_at": 1, "status": "failed",
                "error": {"code": "server_error", "message": data(1)["message"]},
                "output": [],
            })
        );
    }

    #[test]
    fn finish_reason_metadata_in_the_guides_chunk_shape() {
        let mut seen = Seen::new(StreamFormat::FinishReasonMetadata);
        seen.note(
            br#"{"message_id":"m-1","thread_id":"t-1","created_at":"2024-11-15T17:43:37.443794","delta":{}}"#,
        );
        let error = truncated();
        for bare in [false, true] {
            let event = StreamFormat::FinishReasonMetadata.terminal(&error, false, &seen, bare);
            let text = std::str::from_utf8(&event).unwrap();
            let json = if bare {
                text.strip_suffix('\n').unwrap()
            } else {
                text.strip_prefix("data: ")
                    .and_then(|t| t.strip_suffix("\n\n"))
                    .unwrap()
            };
            assert!(!json.contains('\n'));
            // The guide's field order.
            assert!(
                json.starts_with(r#"{"message_id":"m-1","thread_id":"t-1","created_at":""#),
                "{json}"
            );
            assert!(json.contains(r#"","delta":{"role":"assistant","content":"","sources":[],"meta_data":{"type":"common_metadata","#));
            let chunk: Value = serde_json::from_str(json).unwrap();
            let created = chunk["created_at"].as_str().unwrap();
            assert_eq!(
                created.len(),
                "2024-11-15T17:43:37.446459".len(),
                "{created}"
            );
            assert!(jiff::civil::DateTime::strptime("%Y-%m-%dT%H:%M:%S%.f", created).is_ok());
            assert_eq!(
                chunk["delta"],
                serde_json::json!({
                    "role": "assistant", "content": "", "sources": [],
                    "meta_data": {
                        "type": "common_metadata",
                        "finish_reason": "api_error",
                        "detail": "The upstream stream ended early.",
                    },
                })
            );
        }
        // Ids not seen: fresh ones, in HAI's UUID shape.
        let event = StreamFormat::FinishReasonMetadata.terminal_event(&error, true);
        let text = std::str::from_utf8(&event).unwrap();
        let (chunk, done) = text.split_once("\n\n").unwrap();
        assert_eq!(done, "data: [DONE]\n\n");
        let chunk: Value = serde_json::from_str(chunk.strip_prefix("data: ").unwrap()).unwrap();
        let id = chunk["message_id"].as_str().unwrap();
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
        assert_ne!(chunk["message_id"], chunk["thread_id"]);
    }

    #[test]
    fn messages_with_newlines_stay_one_line() {
        let error = ApiError::timeout().with_message("line one\nline two\r\n");
        for format in [
            StreamFormat::ChatCompletions,
            StreamFormat::AnthropicMessages,
            StreamFormat::Responses,
            StreamFormat::FinishReasonMetadata,
        ] {
            let bytes = format.terminal_event(&error, false);
            let events: Vec<&[u8]> = bytes
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .collect();
            assert!(events.iter().all(|l| !l.contains(&b'\r')));
            assert!(
                events
                    .iter()
                    .all(|l| l.starts_with(b"data: ") || l.starts_with(b"event: "))
            );
        }
    }

    #[test]
    fn format_by_request() {
        use StreamFormat::*;
        let f = |path: &str, anthropic: bool| {
            let mut headers = HeaderMap::new();
            if anthropic {
                headers.insert("anthropic-version", "2023-06-01".parse().unwrap());
            }
            StreamFormat::from_request(&path.parse().unwrap(), &headers)
        };
        for (path, anthropic, format) in [
            ("/v1/messages", false, AnthropicMessages),
            ("/v1/responses", false, Responses),
            ("/v1/chat/completions", false, ChatCompletions),
            ("/v1/chat/completions", true, AnthropicMessages),
        ] {
            assert_eq!(f(path, anthropic), format, "{path} {anthropic}");
        }
        for (name, format) in [
            ("Responses", Some(Responses)),
            ("hai", Some(FinishReasonMetadata)),
            ("grpc", None),
        ] {
            assert_eq!(name.parse::<StreamFormat>().ok(), format, "{name}");
        }
    }
}
