//! What several layers need to know about a request, read from its JSON body
//! once: [`RequestMeta`].
//!
//! Auth checks the `model` against a key's allow-list, rate limits reserve
//! `max_tokens` plus a prompt estimate, budgets price the same. Reading the
//! body in each would read (and buffer) it three times; instead the first
//! layer that needs the facts reads the body once, bounded in size, puts the
//! bytes back, and caches a `RequestMeta` in the request's extensions.
//!
//! ```
//! use bytes::Bytes;
//! use http::Request;
//! use http_body_util::Full;
//! use tollgate::RequestMeta;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tollgate::ApiError> {
//! let body = r#"{"model":"gpt-4o","stream":true,"max_tokens":256,
//!     "messages":[{"role":"user","content":"Say hello in twelve words"}]}"#;
//! let req = Request::post("/v1/chat/completions")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from(body)))
//!     .unwrap();
//!
//! let req = RequestMeta::read(req, RequestMeta::DEFAULT_LIMIT).await?;
//! let meta = req.extensions().get::<RequestMeta>().unwrap();
//! assert_eq!(meta.model.as_deref(), Some("gpt-4o"));
//! assert!(meta.stream);
//! assert_eq!(meta.max_tokens, Some(256));
//! assert_eq!(meta.prompt_tokens_estimate, 7); // 25 characters / 4, rounded up
//!
//! // A second read finds the cached facts and leaves the body alone.
//! let req = RequestMeta::read(req, RequestMeta::DEFAULT_LIMIT).await?;
//! assert!(req.extensions().get::<RequestMeta>().is_some());
//! # Ok(())
//! # }
//! ```

use std::fmt;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::{ApiError, BoxError};

/// Facts about an OpenAI-style request, read once from its JSON body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestMeta {
    /// The `model` field.
    pub model: Option<String>,
    /// The `stream` field (false when absent).
    pub stream: bool,
    /// `max_completion_tokens`, else `max_tokens`, else `max_output_tokens`.
    pub max_tokens: Option<u64>,
    /// `stream_options.include_usage` as the client sent it.
    pub include_usage: bool,
    /// Estimated prompt tokens: characters of the text in `messages`,
    /// `prompt`, `input`, `system`, `instructions`, `tools` and `functions`,
    /// divided by 4 and rounded up (OpenAI's rule of thumb), plus one token
    /// per integer (token arrays). Roles, part types, ids, image, audio and
    /// file payloads are not counted.
    pub prompt_tokens_estimate: u64,
    /// Size of the body in bytes.
    pub body_len: usize,
}

/// Request bodies tollgate can rebuild from bytes, after reading a body once
/// (for [`RequestMeta`]) or to replay it (for retries).
///
/// Implemented for `Full<Bytes>`, the `http-body-util` boxed bodies, and,
/// with their features, `axum::body::Body` and `tonic::body::Body`. A server
/// on raw hyper (`Incoming`) maps its body to one of these first.
pub trait FromBytes: Sized {
    /// A body that yields `bytes` and ends.
    fn from_bytes(bytes: Bytes) -> Self;
}

impl FromBytes for Full<Bytes> {
    fn from_bytes(bytes: Bytes) -> Self {
        Full::new(bytes)
    }
}

impl<E> FromBytes for http_body_util::combinators::BoxBody<Bytes, E> {
    fn from_bytes(bytes: Bytes) -> Self {
        Full::new(bytes).map_err(|never| match never {}).boxed()
    }
}

impl<E> FromBytes for http_body_util::combinators::UnsyncBoxBody<Bytes, E> {
    fn from_bytes(bytes: Bytes) -> Self {
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync()
    }
}

#[cfg(feature = "axum")]
impl FromBytes for axum_core::body::Body {
    fn from_bytes(bytes: Bytes) -> Self {
        axum_core::body::Body::from(bytes)
    }
}

#[cfg(feature = "tonic")]
impl FromBytes for tonic::body::Body {
    fn from_bytes(bytes: Bytes) -> Self {
        tonic::body::Body::new(Full::new(bytes))
    }
}

impl RequestMeta {
    /// The default body limit: 16 MiB.
    pub const DEFAULT_LIMIT: usize = 16 * 1024 * 1024;

    /// Reads the facts from a JSON body. Not an object, malformed JSON, or a
    /// field of the wrong type → 400 `invalid_request` naming the problem
    /// and where it is; a field of the wrong type is also named in `param`.
    pub fn from_json(body: &[u8]) -> Result<RequestMeta, ApiError> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let mut failed_field = None;
        let mut meta = de
            .deserialize_map(MetaVisitor {
                failed_field: &mut failed_field,
            })
            .and_then(|meta| de.end().map(|()| meta))
            .map_err(|e| {
                let error = ApiError::invalid_request();
                match failed_field {
                    Some(field) => error.with_param(field).with_message(format!(
                        "We could not parse the JSON body of your request: \
                         invalid `{field}`: {e}"
                    )),
                    None => error.with_message(format!(
                        "We could not parse the JSON body of your request: {e}"
                    )),
                }
            })?;
        meta.body_len = body.len();
        Ok(meta)
    }

    /// Makes sure `req` carries a `RequestMeta` in its extensions, reading the
    /// body (at most `limit` bytes) when it does not, and putting the bytes back.
    ///
    /// Only bodies that may be JSON are read: methods with a body and a JSON
    /// or missing `content-type`, and `application/x-www-form-urlencoded`
    /// bodies that start with `{` (what `curl -d '{…}'` sends). Others
    /// (multipart uploads, gRPC, …) get an empty `RequestMeta`. Over `limit` → 413 `payload_too_large`; malformed
    /// JSON → 400 `invalid_request`; a body that fails to arrive → 400.
    pub async fn read<B>(req: Request<B>, limit: usize) -> Result<Request<B>, ApiError>
    where
        B: Body<Data = Bytes> + FromBytes,
        B::Error: Into<BoxError>,
    {
        if req.extensions().get::<RequestMeta>().is_some() {
            return Ok(req);
        }
        let sniff = match body_kind(&req) {
            BodyKind::Json => false,
            BodyKind::Sniff => true,
            BodyKind::Other => {
                let mut req = req;
                req.extensions_mut().insert(RequestMeta::default());
                return Ok(req);
            }
        };
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(too_large(limit));
        }
        let (mut parts, body) = req.into_parts();
        let mut body = std::pin::pin!(body);
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                let e: BoxError = e.into();
                // A limit set further out (`tower_http::limit`, `Limited`)
                // is still a body that is too large, not a broken one.
                if e.is::<http_body_util::LengthLimitError>() {
                    return ApiError::payload_too_large();
                }
                tracing::debug!(error = %e, "request body failed");
                ApiError::invalid_request().with_message("The request body could not be read.")
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(too_large(limit));
                }
                buf.extend_from_slice(&data);
            }
        }
        let bytes = buf.freeze();
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        let meta = if first.is_none() || (sniff && first != Some(&b'{')) {
            RequestMeta::default()
        } else {
            RequestMeta::from_json(&bytes)?
        };
        parts.extensions.insert(meta);
        Ok(Request::from_parts(parts, B::from_bytes(bytes)))
    }

    /// Tokens to reserve for this request: the prompt estimate plus
    /// `max_tokens`, or plus `default_max_tokens` when the client set none.
    pub fn reserve_tokens(&self, default_max_tokens: u64) -> u64 {
        self.prompt_tokens_estimate
            .saturating_add(self.max_tokens.unwrap_or(default_max_tokens))
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::payload_too_large().with_message(format!(
        "The request body is larger than the limit of {limit} bytes."
    ))
}

enum BodyKind {
    /// Declared JSON (or undeclared): parse it, reject what does not parse.
    Json,
    /// `curl -d` sends JSON as `application/x-www-form-urlencoded`: parse
    /// it when it looks like a JSON object, leave it alone otherwise.
    Sniff,
    /// Not ours to read (multipart uploads, gRPC, bodiless methods).
    Other,
}

fn body_kind<B>(req: &Request<B>) -> BodyKind {
    if !matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
        return BodyKind::Other;
    }
    match req.headers().get(CONTENT_TYPE).map(|v| v.to_str()) {
        None => BodyKind::Json,
        Some(Ok(ct)) => {
            let ct = ct.trim().to_ascii_lowercase();
            if ct.starts_with("application/json") || ct.contains("+json") {
                BodyKind::Json
            } else if ct.starts_with("application/x-www-form-urlencoded") {
                BodyKind::Sniff
            } else {
                BodyKind::Other
            }
        }
        Some(Err(_)) => BodyKind::Other,
    }
}

/// Reads the known fields; on a field's error, leaves its name in
/// `failed_field` so the rejection can say which field is wrong.
struct MetaVisitor<'a> {
    failed_field: &'a mut Option<&'static str>,
}

/// The fields `MetaVisitor` reads, by name.
const FIELDS: [&str; 13] = [
    "model",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "stream_options",
    "messages",
    "prompt",
    "input",
    "system",
    "instructions",
    "tools",
    "functions",
];

impl<'de> Visitor<'de> for MetaVisitor<'_> {
    type Value = RequestMeta;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RequestMeta, A::Error> {
        let mut meta = RequestMeta::default();
        let (mut max_tokens, mut max_completion, mut max_output) = (None, None, None);
        let mut chars = 0u64;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            *self.failed_field = FIELDS.iter().find(|f| **f == key).copied();
            match &*key {
                "model" => meta.model = map.next_value::<Option<String>>()?,
                "stream" => meta.stream = map.next_value::<Option<bool>>()?.unwrap_or(false),
                "max_tokens" => max_tokens = map.next_value::<Option<u64>>()?,
                "max_completion_tokens" => max_completion = map.next_value::<Option<u64>>()?,
                "max_output_tokens" => max_output = map.next_value::<Option<u64>>()?,
                "stream_options" => {
                    meta.include_usage = map
                        .next_value::<Option<StreamOptions>>()?
                        .and_then(|o| o.include_usage)
                        .unwrap_or(false)
                }
                "messages" | "prompt" | "input" | "system" | "instructions" | "tools"
                | "functions" => map.next_value_seed(CountText { chars: &mut chars })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            // The value was fine: a later syntax error is not this field's.
            *self.failed_field = None;
        }
        meta.max_tokens = max_completion.or(max_tokens).or(max_output);
        meta.prompt_tokens_estimate = chars.div_ceil(4);
        Ok(meta)
    }
}

#[derive(serde::Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Sums the characters of every string in a JSON value, except under keys
/// that hold non-text payloads (images, audio, ids).
struct CountText<'a> {
    chars: &'a mut u64,
}

impl<'de> DeserializeSeed<'de> for CountText<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CountText<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        *self.chars += s.chars().count() as u64;
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    // An integer is a token id (`prompt`/`input` given as token arrays, as
    // some embedding clients send them): one token, so four "characters".
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        *self.chars += 4;
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        *self.chars += 4;
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(CountText {
                chars: &mut *self.chars,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "type" | "role" | "id" | "tool_call_id" | "image_url" | "url" | "input_audio"
                | "file" | "file_data" | "data" | "detail" => {
                    map.next_value::<IgnoredAny>()?;
                }
                _ => map.next_value_seed(CountText {
                    chars: &mut *self.chars,
                })?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields() {
        let meta = RequestMeta::from_json(
            br#"{"model":"m","max_tokens":5,"max_completion_tokens":7,
                "stream":true,"stream_options":{"include_usage":true},
                "messages":[{"role":"user","content":[{"type":"text","text":"abcd"},
                {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}"#,
        )
        .unwrap();
        assert_eq!(meta.model.as_deref(), Some("m"));
        assert_eq!(meta.max_tokens, Some(7));
        assert!(meta.stream && meta.include_usage);
        assert_eq!(meta.prompt_tokens_estimate, 1);
        assert_eq!(meta.reserve_tokens(100), 8);
    }

    #[test]
    fn rejects_bad_json_with_a_reason() {
        let e = RequestMeta::from_json(b"{\"model\": ").unwrap_err();
        assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
        assert!(e.message().contains("EOF"), "{}", e.message());
        assert!(RequestMeta::from_json(b"[1,2]").is_err());
        assert!(RequestMeta::from_json(br#"{"max_tokens":-1}"#).is_err());
        assert!(RequestMeta::from_json(b"{} trailing").is_err());
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let body = format!(
            "{{\"messages\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(RequestMeta::from_json(body.as_bytes()).is_err());
    }
}
