//! What an event read while the head is held says: whether the stream has
//! got to its content yet, has ended, or has failed (and the error response
//! to answer instead of a 200 stream).
//!
//! Streams open with events that are not the answer: the Responses API's
//! `response.created`/`response.in_progress`, Anthropic's `message_start`
//! and `ping`, OpenAI's chunk with an empty role delta (or Azure's with no
//! choices), HAI's chunks with an empty `content`. An upstream that fails
//! early fails after those, so the head is held until the first event that
//! is none of them.

use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use super::failure::Failure;
use super::marker::{self, ERROR, TERMINAL};
use crate::sse::Event;
use crate::{ApiError, Origin};

/// What an event with data says before the stream has started.
#[derive(Debug)]
pub(crate) enum Opening {
    /// An opening event, not the answer yet: keep holding.
    Preamble,
    /// The answer has begun (or the event is not known to be an opening
    /// one): start the stream.
    Content,
    /// The stream ends here without failing (`[DONE]`, `message_stop`,
    /// `response.completed`, HAI's finishing chunk): start it.
    Ends,
    /// The stream failed before its content: answer this error instead.
    Fails(ApiError),
}

/// The events that open a stream without being its answer, by name (the SSE
/// `event:` field or the data's `type`).
const PREAMBLE: [&[u8]; 5] = [
    b"response.created",
    b"response.in_progress",
    b"response.queued",
    b"message_start",
    b"ping",
];

/// Reads `event` (one with data) as it opens a stream whose headers are
/// `headers`.
pub(crate) fn opening(event: &Event<'_>, headers: &HeaderMap) -> Opening {
    let flags = marker::classify(event);
    if flags & ERROR != 0 || event.name == Some(b"error") {
        return Opening::Fails(failure(event, headers));
    }
    if flags & TERMINAL != 0 {
        let failed = b"response.failed";
        if event.name == Some(failed) || named(event.data, failed) {
            return Opening::Fails(response_failed(event.data, headers));
        }
        return Opening::Ends;
    }
    if event.is_partial() {
        // Over the event limit: too big to be an opening event.
        return Opening::Content;
    }
    // A healthy chat chunk has no `error` key: without the bytes `"error"`,
    // or a `\u` escape that could spell them, it is read no further for one.
    let may_err = memchr::memmem::find(event.data, b"\"error\"").is_some()
        || memchr::memmem::find(event.data, b"\\u").is_some();
    if may_err && let Some(error) = parse_error(None, event.data, headers) {
        return Opening::Fails(error);
    }
    match event.name {
        Some(name) if name != b"message" => preamble_if(PREAMBLE.contains(&name)),
        // The usual chunk of a healthy stream carries text: known without
        // parsing it.
        _ if has_text(event.data) => Opening::Content,
        _ => match serde_json::from_slice::<Value>(event.data) {
            Ok(Value::Object(chunk)) => preamble_if(is_preamble(&chunk)),
            _ => Opening::Content,
        },
    }
}

/// Whether a chunk has a non-empty `"content":"…"` string (a chat or HAI
/// delta's text).
fn has_text(data: &[u8]) -> bool {
    const KEY: &[u8] = b"\"content\":\"";
    memchr::memmem::find_iter(data, KEY).any(|at| data.get(at + KEY.len()) != Some(&b'"'))
}

fn preamble_if(preamble: bool) -> Opening {
    if preamble {
        Opening::Preamble
    } else {
        Opening::Content
    }
}

/// Whether the data's JSON `type` is `name`.
fn named(data: &[u8], name: &[u8]) -> bool {
    serde_json::from_slice::<Value>(data)
        .ok()
        .is_some_and(|v| v.get("type").and_then(Value::as_str).map(str::as_bytes) == Some(name))
}

/// An opening chunk: a typed event of [`PREAMBLE`], a chat chunk whose
/// choices (if any) carry only an empty delta, or a HAI chunk with an empty
/// delta. Anything else is content, so that an unknown stream is not held.
fn is_preamble(chunk: &Map<String, Value>) -> bool {
    if let Some(name) = chunk.get("type").and_then(Value::as_str) {
        return PREAMBLE.contains(&name.as_bytes());
    }
    if let Some(choices) = chunk.get("choices") {
        let Some(choices) = choices.as_array() else {
            return false;
        };
        return choices.iter().all(|choice| {
            choice.get("finish_reason").is_none_or(Value::is_null)
                && choice
                    .get("delta")
                    .is_none_or(|delta| delta.as_object().is_some_and(empty_delta))
        });
    }
    match chunk.get("delta") {
        Some(Value::Object(delta)) => empty_delta(delta),
        _ => false,
    }
}

/// A delta that says nothing yet: a role, and empty content, refusal,
/// reasoning, tool calls, sources and metadata.
fn empty_delta(delta: &Map<String, Value>) -> bool {
    delta.iter().all(|(key, value)| match key.as_str() {
        "role" => true,
        "content" | "refusal" | "reasoning" | "reasoning_content" | "meta_data" => {
            value.is_null() || value.as_str() == Some("")
        }
        "tool_calls" | "sources" => value.is_null() || value.as_array().is_some_and(Vec::is_empty),
        _ => false,
    })
}

/// The error an error event (or HAI's failing chunk) stands for.
fn failure(event: &Event<'_>, headers: &HeaderMap) -> ApiError {
    if let Some(error) = hai_failure(event.data, headers) {
        return error;
    }
    let data = responses_error(event.data);
    let data = data.as_deref().unwrap_or(event.data);
    parse_error(Some("error"), data, headers).unwrap_or_else(|| Failure::BodyError.error())
}

/// An in-band error, parsed by the envelope module: an upstream's broken
/// stream is a bad gateway unless the event says more.
fn parse_error(name: Option<&str>, data: &[u8], headers: &HeaderMap) -> Option<ApiError> {
    crate::envelope::parse_event(name, data, headers, StatusCode::BAD_GATEWAY)
        .map(|error| error.with_origin(Origin::Upstream))
}

/// HAI's finishing chunk with an error code: the error of that row of
/// HAI's table (`content_filter_error` is a 400), with the chunk's detail.
fn hai_failure(data: &[u8], headers: &HeaderMap) -> Option<ApiError> {
    let chunk: Value = serde_json::from_slice(data.trim_ascii()).ok()?;
    let meta = chunk.get("delta")?.get("meta_data")?;
    let code = meta.get("finish_reason")?.as_str()?;
    let status = crate::envelope::HAI_TABLE
        .iter()
        .find(|row| row.code == code)
        .map_or(500, |row| row.status);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({"error_code": code, "detail": meta.get("detail")});
    let body = serde_json::to_vec(&body).ok()?;
    Some(crate::envelope::parse(status, headers, &body).with_origin(Origin::Upstream))
}

/// The Responses API's `error` event (`{"type":"error","code","message",
/// "param"}`) as the OpenAI error it stands for, whose `type` is not
/// `"error"` but the one its code or status gives.
fn responses_error(data: &[u8]) -> Option<Vec<u8>> {
    let Ok(Value::Object(mut event)) = serde_json::from_slice::<Value>(data) else {
        return None;
    };
    if event.get("type").and_then(Value::as_str) != Some("error") || event.contains_key("error") {
        return None;
    }
    event.remove("type");
    event.remove("sequence_number");
    serde_json::to_vec(&serde_json::json!({ "error": event })).ok()
}

/// `response.failed` before any content: the error of its response
/// (`{"code","message"}`).
fn response_failed(data: &[u8], headers: &HeaderMap) -> ApiError {
    let error = serde_json::from_slice::<Value>(data)
        .ok()
        .and_then(|v| v.get("response")?.get("error").cloned())
        .filter(Value::is_object);
    let data =
        error.and_then(|error| serde_json::to_vec(&serde_json::json!({ "error": error })).ok());
    data.and_then(|data| parse_error(Some("error"), &data, headers))
        .unwrap_or_else(|| {
            ApiError::bad_gateway()
                .with_message("The upstream response failed.")
                .with_origin(Origin::Upstream)
        })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::sse::{Dispatch, Framer};

    fn open(stream: &str) -> Opening {
        let mut framer = Framer::new(1 << 16);
        let mut out = None;
        framer.feed(
            &Bytes::copy_from_slice(stream.as_bytes()),
            &mut |e: &Event<'_>| {
                if e.has_data() && out.is_none() {
                    out = Some(opening(e, &HeaderMap::new()));
                }
                Dispatch::Keep
            },
        );
        out.expect("an event with data")
    }

    #[test]
    fn opening_events_are_not_content() {
        for stream in [
            "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{}}\n\n",
            "data: {\"type\":\"response.in_progress\",\"response\":{}}\n\n",
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n",
            "event: ping\ndata: {\"type\": \"ping\"}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"\",\"choices\":[],\"prompt_filter_results\":[]}\n\n",
            "data: {\"message_id\":\"m\",\"thread_id\":\"t\",\"created_at\":\"x\",\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"sources\":[],\"meta_data\":null}}\n\n",
        ] {
            assert!(matches!(open(stream), Opening::Preamble), "{stream}");
        }
    }

    #[test]
    fn content_ends_and_failures() {
        for stream in [
            "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"tool_calls\":[{}]}}]}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\"}\n\n",
            "data: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n",
            "data: not json\n\n",
        ] {
            assert!(matches!(open(stream), Opening::Content), "{stream}");
        }
        for stream in [
            "data: [DONE]\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            "data: {\"message_id\":\"m\",\"delta\":{\"content\":\"\",\"meta_data\":{\"type\":\"common_metadata\",\"finish_reason\":\"stop\",\"detail\":null}}}\n\n",
        ] {
            assert!(matches!(open(stream), Opening::Ends), "{stream}");
        }
        let status = |stream: &str| match open(stream) {
            Opening::Fails(error) => error.status().as_u16(),
            other => panic!("{other:?} for {stream}"),
        };
        assert_eq!(
            status(
                "data: {\"message_id\":\"m\",\"delta\":{\"content\":\"\",\"meta_data\":{\"type\":\"common_metadata\",\"finish_reason\":\"content_filter_error\",\"detail\":\"Could not parse.\"}}}\n\n"
            ),
            400
        );
        assert_eq!(
            status(
                "event: error\ndata: {\"type\":\"error\",\"code\":\"rate_limit_exceeded\",\"message\":\"slow\",\"param\":null,\"sequence_number\":2}\n\n"
            ),
            429
        );
        assert_eq!(
            status(
                "event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"The model failed.\"}}}\n\n"
            ),
            502
        );
        assert_eq!(
            status("data: {\"error\":{\"message\":\"x\",\"type\":\"rate_limit_error\"}}\n\n"),
            429
        );
    }
}
