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
/// | `Responses` | `event: error` / `data: {"type":"error","error":{…}}`, then `event: response.failed` |
/// | `FinishReasonMetadata` | `data: {"delta":{"content":"","meta_data":{"type":"common_metadata","finish_reason":"<code>","detail":"<message>"}}}` |
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
    /// OpenAI Responses: `event: error` (with an `error` key, so the OpenAI
    /// SDKs raise `APIError`), then `event: response.failed` for clients that
    /// follow the response's status.
    Responses,
    /// A last chunk whose `meta_data.finish_reason` is the error code, for
    /// APIs that report stream errors that way.
    FinishReasonMetadata,
}

/// A stream format name that [`StreamFormat::from_str`] does not know.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unknown stream format {0:?}: expected chat_completions, anthropic_messages, responses or finish_reason_metadata"
)]
pub struct UnknownStreamFormat(String);

impl FromStr for StreamFormat {
    type Err = UnknownStreamFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "chat_completions" | "chat" | "openai" => StreamFormat::ChatCompletions,
            "anthropic_messages" | "anthropic" | "messages" => StreamFormat::AnthropicMessages,
            "responses" => StreamFormat::Responses,
            "finish_reason_metadata" | "metadata" => StreamFormat::FinishReasonMetadata,
            _ => return Err(UnknownStreamFormat(s.to_owned())),
        })
    }
}

#[derive(Serialize)]
struct MetadataChunk<'a> {
    delta: MetadataDelta<'a>,
}

#[derive(Serialize)]
struct MetadataDelta<'a> {
    content: &'static str,
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
    /// `…/responses`, chat completions otherwise.
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
        let mut out = BytesMut::with_capacity(256);
        match self {
            StreamFormat::ChatCompletions => {
                event(&mut out, None, &ErrorFormat::OpenAi.render_body(error));
            }
            StreamFormat::AnthropicMessages => {
                event(
                    &mut out,
                    Some("error"),
                    &ErrorFormat::Anthropic.render_body(error),
                );
            }
            StreamFormat::Responses => {
                let rendered = ErrorFormat::OpenAi.render_body(error);
                // `{"error":{…}}` → the `{…}`, as rendered (fields in order).
                let object = rendered
                    .strip_prefix(b"{\"error\":")
                    .and_then(|rest| rest.strip_suffix(b"}"))
                    .unwrap_or(b"{}");
                let error_event = [&b"{\"type\":\"error\",\"error\":"[..], object, b"}"].concat();
                event(&mut out, Some("error"), &error_event);
                let failed = [
                    &b"{\"type\":\"response.failed\",\"response\":{\"object\":\"response\",\"status\":\"failed\",\"error\":"[..],
                    object,
                    b"}}",
                ]
                .concat();
                event(&mut out, Some("response.failed"), &failed);
            }
            StreamFormat::FinishReasonMetadata => {
                let rendered = rendered_json(ErrorFormat::ErrorCodeDetail, error);
                let chunk = to_json(&MetadataChunk {
                    delta: MetadataDelta {
                        content: "",
                        meta_data: Metadata {
                            kind: "common_metadata",
                            finish_reason: rendered.get("error_code").unwrap_or(&Value::Null),
                            detail: rendered.get("detail").unwrap_or(&Value::Null),
                        },
                    },
                });
                event(&mut out, None, &chunk);
            }
        }
        if done_after_error
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

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing borrowed strings and JSON values into a Vec cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Appends one SSE event. The JSON is compact, so it is a single line.
fn event(out: &mut BytesMut, name: Option<&str>, data: &[u8]) {
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

    fn text(format: StreamFormat, done: bool) -> String {
        let error = ApiError::bad_gateway()
            .with_code("stream_truncated")
            .with_message("The upstream stream ended early.");
        String::from_utf8(format.terminal_event(&error, done).to_vec()).unwrap()
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
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"message\":\"The upstream stream ended early.\",\"type\":\"server_error\",\"param\":null,\"code\":\"stream_truncated\"}}\n\n\
             event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"object\":\"response\",\"status\":\"failed\",\"error\":{\"message\":\"The upstream stream ended early.\",\"type\":\"server_error\",\"param\":null,\"code\":\"stream_truncated\"}}}\n\n"
        );
    }

    #[test]
    fn finish_reason_metadata() {
        assert_eq!(
            text(StreamFormat::FinishReasonMetadata, false),
            "data: {\"delta\":{\"content\":\"\",\"meta_data\":{\"type\":\"common_metadata\",\"finish_reason\":\"api_error\",\"detail\":\"The upstream stream ended early.\"}}}\n\n"
        );
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
        let f = |path: &str, anthropic: bool| {
            let mut headers = HeaderMap::new();
            if anthropic {
                headers.insert("anthropic-version", "2023-06-01".parse().unwrap());
            }
            StreamFormat::from_request(&path.parse().unwrap(), &headers)
        };
        assert_eq!(f("/v1/messages", false), StreamFormat::AnthropicMessages);
        assert_eq!(f("/v1/responses", false), StreamFormat::Responses);
        assert_eq!(
            f("/v1/chat/completions", false),
            StreamFormat::ChatCompletions
        );
        assert_eq!(
            f("/v1/chat/completions", true),
            StreamFormat::AnthropicMessages
        );
        assert_eq!(
            "Responses".parse::<StreamFormat>().ok(),
            Some(StreamFormat::Responses)
        );
        assert!("grpc".parse::<StreamFormat>().is_err());
    }
}
