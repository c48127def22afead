//! What the watcher has seen of a stream, for the terminal event that
//! continues it: the Responses API's sequence numbers and announced
//! response, HAI's ids; and the pieces of those events that come from the
//! APIs' definitions (the response error codes, HAI's timestamps and ids).

use std::borrow::Cow;

use serde_json::Value;
use serde_json::value::RawValue;

use super::StreamFormat;
use super::terminal::to_json;
use crate::json::Key;

/// What the watcher has seen of a stream when it ends it: what a terminal
/// event continues (the Responses API's sequence numbers and response, HAI's
/// ids).
#[derive(Debug, Default, Clone)]
pub(crate) struct Seen {
    /// Events with data the client got: the next `sequence_number` of a
    /// Responses stream, whose numbers count from 0.
    pub(crate) events: u64,
    /// The format whose first event is still to be read (Responses, HAI).
    pending: Option<StreamFormat>,
    /// HAI's `message_id` and `thread_id`, from the stream's first chunk.
    pub(super) hai: Option<Box<HaiIds>>,
    /// The response a Responses stream announced (`response.created`), as
    /// it came.
    pub(super) response: Option<Box<RawValue>>,
}

impl Seen {
    pub(crate) fn new(format: StreamFormat) -> Seen {
        let pending = matches!(
            format,
            StreamFormat::Responses | StreamFormat::FinishReasonMetadata
        );
        Seen {
            pending: pending.then_some(format),
            ..Seen::default()
        }
    }

    /// Notes an event with data the client gets: it is counted, and the
    /// first one is read for what the terminal event continues.
    #[inline(always)]
    pub(crate) fn note(&mut self, data: &[u8]) {
        self.events += 1;
        if let Some(format) = self.pending.take() {
            self.read_first(format, data);
        }
    }

    #[cold]
    fn read_first(&mut self, format: StreamFormat, data: &[u8]) {
        match format {
            StreamFormat::FinishReasonMetadata => self.hai = HaiIds::read(data),
            _ => {
                #[derive(serde::Deserialize)]
                struct Announced {
                    response: Box<RawValue>,
                }
                let announced = serde_json::from_slice::<Announced>(data).ok();
                self.response = announced.map(|a| a.response);
            }
        }
    }
}

/// The codes a response's `error.code` may take (the Responses API
/// reference, and the SDKs' `ResponseError` type, which refuses others).
const RESPONSE_ERROR_CODES: [&str; 21] = [
    "server_error",
    "rate_limit_exceeded",
    "invalid_prompt",
    "data_residency_mismatch",
    "bio_policy",
    "misalignment_policy_violation",
    "vector_store_timeout",
    "invalid_image",
    "invalid_image_format",
    "invalid_base64_image",
    "invalid_image_url",
    "image_too_large",
    "image_too_small",
    "image_parse_error",
    "image_content_policy_violation",
    "invalid_image_mode",
    "image_file_too_large",
    "unsupported_image_media_type",
    "empty_image_file",
    "failed_to_download_image",
    "image_file_not_found",
];

/// A failed response's `error.code`: the error's code when it is one of the
/// API's, else `rate_limit_exceeded` for a 429 and `server_error` for the
/// rest (the `error` event before it keeps the error's own code).
pub(super) fn response_error_code(code: Option<&str>, status: http::StatusCode) -> &'static str {
    match RESPONSE_ERROR_CODES.iter().find(|c| Some(**c) == code) {
        Some(code) => code,
        None if status == http::StatusCode::TOO_MANY_REQUESTS => "rate_limit_exceeded",
        None => "server_error",
    }
}

/// The announced `response` with `status` and `error` set (in their place,
/// or last), its other members as they came; `{"object":"response"}`, the
/// least of a response, when none was announced or it is not an object.
pub(super) fn failed_response(response: Option<&RawValue>, error: &Value) -> Vec<u8> {
    let least = || {
        let object = serde_json::from_str("\"response\"").ok()?;
        Some(vec![(Key(Cow::Borrowed("object")), object)])
    };
    let members = response
        .and_then(|r| crate::json::members(r.get().as_bytes()).ok())
        .or_else(least)
        .unwrap_or_default();
    let mut out = b"{".to_vec();
    let put = |out: &mut Vec<u8>, key: &str, value: &[u8]| {
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(&to_json(&key));
        out.push(b':');
        out.extend_from_slice(value);
    };
    let error = to_json(error);
    let (mut status, mut errored) = (false, false);
    for (key, value) in &members {
        match &*key.0 {
            "status" => (put(&mut out, "status", b"\"failed\""), status = true),
            "error" => (put(&mut out, "error", &error), errored = true),
            key => (put(&mut out, key, value.get().as_bytes()), ()),
        };
    }
    if !status {
        put(&mut out, "status", b"\"failed\"");
    }
    if !errored {
        put(&mut out, "error", &error);
    }
    out.push(b'}');
    out
}

/// The ids a HAI stream's chunks all carry.
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct HaiIds {
    pub(super) message_id: Value,
    pub(super) thread_id: Value,
}

impl HaiIds {
    /// The ids of a HAI chunk, if `data` is one.
    pub(crate) fn read(data: &[u8]) -> Option<Box<HaiIds>> {
        serde_json::from_slice(data).ok().map(Box::new)
    }
}

/// Now as HAI writes `created_at`: UTC without an offset, in microseconds
/// (`2024-11-15T17:43:37.446459`).
pub(super) fn hai_now() -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(26);
    let now = jiff::Timestamp::now();
    // Formatting a timestamp's own fields cannot fail; if it did, the field
    // would be empty rather than the event lost.
    let _ = write!(out, "{}", now.strftime("%Y-%m-%dT%H:%M:%S.%6f"));
    out
}

/// A fresh id in the shape of HAI's (a UUID), for a stream whose ids were
/// not seen.
pub(super) fn hai_id() -> Value {
    let (a, b) = (crate::rng::os_seed(), crate::rng::os_seed());
    let a = (a & !0xf000) | 0x4000;
    let b = (b & !(0xc << 60)) | (0x8 << 60);
    Value::String(format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    ))
}
