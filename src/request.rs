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
    ///
    /// A hand-written scanner that allocates nothing but the `model`
    /// string. It accepts, rejects and explains exactly as reading the body
    /// with `serde_json` would: the same facts, the same errors, at the same
    /// line and column.
    pub fn from_json(body: &[u8]) -> Result<RequestMeta, ApiError> {
        // Common bodies in one quick pass; anything else, and every error,
        // through the exact scanner.
        if let Some(mut meta) = Scanner::new(body).quick_request() {
            meta.body_len = body.len();
            return Ok(meta);
        }
        let mut scanner = Scanner::new(body);
        let result = scanner.request();
        let mut meta = result.map_err(|e| {
            let error = ApiError::invalid_request();
            match scanner.field {
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
        let mut collected = Collected::Empty;
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
                if collected.len() + data.len() > limit {
                    return Err(too_large(limit));
                }
                collected.push(data);
            }
        }
        let bytes = collected.into_bytes();
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

/// A body's data frames as they arrive. Most bodies come in one frame
/// (`Full`, small hyper bodies): that frame's `Bytes` is kept as it is, and
/// a buffer is only started, and the bytes copied, when a second one comes.
enum Collected {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Collected {
    fn len(&self) -> usize {
        match self {
            Collected::Empty => 0,
            Collected::One(bytes) => bytes.len(),
            Collected::Many(buf) => buf.len(),
        }
    }

    fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        *self = match std::mem::replace(self, Collected::Empty) {
            Collected::Empty => Collected::One(data),
            Collected::One(first) => {
                let mut buf = BytesMut::with_capacity(first.len() + data.len());
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&data);
                Collected::Many(buf)
            }
            Collected::Many(mut buf) => {
                buf.extend_from_slice(&data);
                Collected::Many(buf)
            }
        };
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Collected::Empty => Bytes::new(),
            Collected::One(bytes) => bytes,
            Collected::Many(buf) => buf.freeze(),
        }
    }
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
            // Media types are case-insensitive; compared in place.
            let ct = ct.trim().as_bytes();
            if starts_with_ignore_case(ct, b"application/json")
                || contains_ignore_case(ct, b"+json")
            {
                BodyKind::Json
            } else if starts_with_ignore_case(ct, b"application/x-www-form-urlencoded") {
                BodyKind::Sniff
            } else {
                BodyKind::Other
            }
        }
        Some(Err(_)) => BodyKind::Other,
    }
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    // Mostly written as in the standard, in lower case.
    s.starts_with(prefix)
        || s.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

fn contains_ignore_case(s: &[u8], needle: &[u8]) -> bool {
    s.windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

// ---------------------------------------------------------------------------
// The JSON scanner behind `RequestMeta::from_json`.
//
// Every request through the stack is read here, so it is written by hand:
// no allocation but the `model` string (and, past 128 levels of nesting in
// a skipped value, a spill of its bracket stack), no recursion but into the
// containers of prompt text (at most 127 deep). Common bodies take the fast
// path at the end of this file; this part is the exact reader.
//
// It was a serde visitor over `serde_json::Deserializer::from_slice`, and it
// keeps that visitor's contract to the byte: it accepts what serde_json
// accepted, rejects what it rejected, and says why with serde_json's words at
// serde_json's line and column. That means keeping serde_json's quirks too:
// values the visitor ignored (`IgnoredAny`) are only checked for syntax (no
// UTF-8 check, no surrogate check, no number range, no depth limit), while
// values it read (keys, text, numbers) are checked fully. So each method
// below mirrors the serde_json 1.0 routine it names, including which byte it
// has consumed when it fails, since that byte is the column it reports. The
// tests keep the serde visitor as an oracle and compare the two.
// ---------------------------------------------------------------------------

/// Boxed so that `Parsed<()>` is one word on the happy path.
type Parsed<T> = Result<T, Box<JsonError>>;

/// Why a body is not the JSON object we read, and where.
#[derive(Debug)]
struct JsonError {
    code: Code,
    /// 1-based, or 0 while unknown: a type error learns its position from
    /// the value it was found in (serde_json's `fix_position`).
    line: usize,
    /// Bytes before the error on its line (serde_json's convention).
    column: usize,
}

/// serde_json's `ErrorCode`s that these bodies can produce.
#[derive(Debug)]
enum Code {
    EofWhileParsingList,
    EofWhileParsingObject,
    EofWhileParsingString,
    EofWhileParsingValue,
    ExpectedColon,
    ExpectedListCommaOrEnd,
    ExpectedObjectCommaOrEnd,
    ExpectedSomeIdent,
    ExpectedSomeValue,
    InvalidEscape,
    InvalidNumber,
    NumberOutOfRange,
    InvalidUnicodeCodePoint,
    ControlCharacterWhileParsingString,
    KeyMustBeAString,
    LoneLeadingSurrogateInHexEscape,
    TrailingComma,
    TrailingCharacters,
    UnexpectedEndOfHexEscape,
    RecursionLimitExceeded,
    /// A value of the wrong type ("invalid type: …, expected …").
    Message(String),
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Code::EofWhileParsingList => "EOF while parsing a list",
            Code::EofWhileParsingObject => "EOF while parsing an object",
            Code::EofWhileParsingString => "EOF while parsing a string",
            Code::EofWhileParsingValue => "EOF while parsing a value",
            Code::ExpectedColon => "expected `:`",
            Code::ExpectedListCommaOrEnd => "expected `,` or `]`",
            Code::ExpectedObjectCommaOrEnd => "expected `,` or `}`",
            Code::ExpectedSomeIdent => "expected ident",
            Code::ExpectedSomeValue => "expected value",
            Code::InvalidEscape => "invalid escape",
            Code::InvalidNumber => "invalid number",
            Code::NumberOutOfRange => "number out of range",
            Code::InvalidUnicodeCodePoint => "invalid unicode code point",
            Code::ControlCharacterWhileParsingString => {
                "control character (\\u0000-\\u001F) found while parsing a string"
            }
            Code::KeyMustBeAString => "key must be a string",
            Code::LoneLeadingSurrogateInHexEscape => "lone leading surrogate in hex escape",
            Code::TrailingComma => "trailing comma",
            Code::TrailingCharacters => "trailing characters",
            Code::UnexpectedEndOfHexEscape => "unexpected end of hex escape",
            Code::RecursionLimitExceeded => "recursion limit exceeded",
            Code::Message(message) => message,
        })
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            self.code.fmt(f)
        } else {
            write!(
                f,
                "{} at line {} column {}",
                self.code, self.line, self.column
            )
        }
    }
}

/// A value of the wrong type, as serde names it in an error.
enum Unexpected {
    Unit,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Str(String),
    Seq,
    Map,
}

impl fmt::Display for Unexpected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unexpected::Unit => f.write_str("null"),
            Unexpected::Bool(b) => write!(f, "boolean `{b}`"),
            Unexpected::Unsigned(n) => write!(f, "integer `{n}`"),
            Unexpected::Signed(n) => write!(f, "integer `{n}`"),
            // serde_json prints the shortest representation that reads
            // back as the same float; `Debug` is close enough.
            Unexpected::Float(x) => write!(f, "floating point `{x:?}`"),
            Unexpected::Str(s) => write!(f, "string {s:?}"),
            Unexpected::Seq => f.write_str("sequence"),
            Unexpected::Map => f.write_str("map"),
        }
    }
}

/// An error whose position the caller fills in.
#[cold]
fn message(message: String) -> Box<JsonError> {
    Box::new(JsonError {
        code: Code::Message(message),
        line: 0,
        column: 0,
    })
}

#[cold]
fn invalid_type(unexpected: Unexpected, expected: &str) -> Box<JsonError> {
    message(format!("invalid type: {unexpected}, expected {expected}"))
}

/// A JSON number as serde_json reads it: integers that fit are `U64` (or
/// `I64` when negative), everything else (a fraction, an exponent, too many
/// digits, `-0`) is `F64`.
#[derive(Clone, Copy)]
enum Number {
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Number {
    fn invalid_type(self, expected: &str) -> Box<JsonError> {
        invalid_type(
            match self {
                Number::U64(n) => Unexpected::Unsigned(n),
                Number::I64(n) => Unexpected::Signed(n),
                Number::F64(x) => Unexpected::Float(x),
            },
            expected,
        )
    }
}

/// `significand * 10 + digit` would not fit in a u64 (serde_json's `overflow!`).
fn overflows_u64(significand: u64, digit: u64) -> bool {
    significand >= u64::MAX / 10 && (significand > u64::MAX / 10 || digit > u64::MAX % 10)
}

/// `10^e` as the literal `1e{e}` (serde_json's `POW10` table), for
/// `e <= 308`.
#[cold]
fn pow10(e: u32) -> Option<f64> {
    if e > 308 {
        return None;
    }
    let digits = [
        b'1',
        b'e',
        b'0' + (e / 100) as u8,
        b'0' + (e / 10 % 10) as u8,
        b'0' + (e % 10) as u8,
    ];
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

fn hex(b: u8) -> Option<u16> {
    (b as char).to_digit(16).map(|d| d as u16)
}

fn both<T>(value: Parsed<T>, end: Parsed<()>) -> Parsed<T> {
    match (value, end) {
        (Ok(value), Ok(())) => Ok(value),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// Where `Scanner::parse_str` puts the characters of a string.
trait StrSink {
    /// A run of the string as written: valid UTF-8, all ASCII if `ascii`.
    fn text(&mut self, text: &[u8], ascii: bool);
    /// The character an escape stands for.
    fn escaped(&mut self, c: char);
}

/// Counts the characters (Unicode scalar values) of a string.
struct CharCount(u64);

impl StrSink for CharCount {
    fn text(&mut self, text: &[u8], ascii: bool) {
        let chars = if ascii {
            text.len()
        } else {
            // Valid UTF-8: a character is any byte but a continuation byte.
            text.iter().filter(|&&b| (b as i8) >= -0x40).count()
        };
        self.0 = self.0.saturating_add(chars as u64);
    }

    fn escaped(&mut self, _: char) {
        self.0 = self.0.saturating_add(1);
    }
}

/// Keeps the string: the `model`, or a wrong-typed string for the error.
impl StrSink for String {
    fn text(&mut self, text: &[u8], ascii: bool) {
        if ascii {
            self.extend(text.iter().map(|&b| char::from(b)));
        } else if let Ok(text) = std::str::from_utf8(text) {
            // Always valid: `parse_str` checked it.
            self.push_str(text);
        }
    }

    fn escaped(&mut self, c: char) {
        self.push(c);
    }
}

/// An object key with escapes, unescaped into a small buffer: long enough
/// for every key we look for, and a longer key is none of them.
struct Unescaped {
    buf: [u8; 24],
    len: usize,
    too_long: bool,
}

impl StrSink for Unescaped {
    fn text(&mut self, text: &[u8], _: bool) {
        let end = self.len + text.len();
        match self.buf.get_mut(self.len..end) {
            Some(dst) if !self.too_long => {
                dst.copy_from_slice(text);
                self.len = end;
            }
            _ => self.too_long = true,
        }
    }

    fn escaped(&mut self, c: char) {
        self.text(c.encode_utf8(&mut [0; 4]).as_bytes(), false);
    }
}

impl Unescaped {
    /// The key, or `None` when it is longer than any key we know.
    fn get(&self) -> Option<&[u8]> {
        if self.too_long {
            None
        } else {
            self.buf.get(..self.len)
        }
    }
}

/// The top-level fields the request visitor reads.
#[derive(Clone, Copy)]
enum Field {
    Model,
    Stream,
    MaxTokens,
    MaxCompletionTokens,
    MaxOutputTokens,
    StreamOptions,
    // Fields whose strings are prompt text.
    Messages,
    Prompt,
    Input,
    System,
    Instructions,
    Tools,
    Functions,
    Other,
}

impl Field {
    fn of(key: Option<&[u8]>) -> Field {
        match key {
            Some(b"model") => Field::Model,
            Some(b"stream") => Field::Stream,
            Some(b"max_tokens") => Field::MaxTokens,
            Some(b"max_completion_tokens") => Field::MaxCompletionTokens,
            Some(b"max_output_tokens") => Field::MaxOutputTokens,
            Some(b"stream_options") => Field::StreamOptions,
            Some(b"messages") => Field::Messages,
            Some(b"prompt") => Field::Prompt,
            Some(b"input") => Field::Input,
            Some(b"system") => Field::System,
            Some(b"instructions") => Field::Instructions,
            Some(b"tools") => Field::Tools,
            Some(b"functions") => Field::Functions,
            _ => Field::Other,
        }
    }

    /// The name an error in this field's value is reported under.
    fn name(self) -> Option<&'static str> {
        Some(match self {
            Field::Model => "model",
            Field::Stream => "stream",
            Field::MaxTokens => "max_tokens",
            Field::MaxCompletionTokens => "max_completion_tokens",
            Field::MaxOutputTokens => "max_output_tokens",
            Field::StreamOptions => "stream_options",
            Field::Messages => "messages",
            Field::Prompt => "prompt",
            Field::Input => "input",
            Field::System => "system",
            Field::Instructions => "instructions",
            Field::Tools => "tools",
            Field::Functions => "functions",
            Field::Other => return None,
        })
    }
}

/// Keys inside prompt text whose values are not text: roles, part types,
/// ids, image, audio and file payloads.
fn is_payload_key(key: Option<&[u8]>) -> bool {
    matches!(
        key,
        Some(
            b"type"
                | b"role"
                | b"id"
                | b"tool_call_id"
                | b"image_url"
                | b"url"
                | b"input_audio"
                | b"file"
                | b"file_data"
                | b"data"
                | b"detail"
        )
    )
}

/// The open containers of a value being skipped, one bit each (set for an
/// object). Skipped values have no depth limit in serde_json, so the stack
/// spills to the heap past 128 levels, which no real request reaches.
struct Frames {
    top: u128,
    len: usize,
    spilled: Vec<u128>,
}

impl Frames {
    fn new() -> Frames {
        Frames {
            top: 0,
            len: 0,
            spilled: Vec::new(),
        }
    }

    fn push(&mut self, object: bool) {
        let slot = self.len % 128;
        if slot == 0 && self.len > 0 {
            self.spilled.push(self.top);
            self.top = 0;
        }
        self.top |= u128::from(object) << slot;
        self.len += 1;
    }

    /// The innermost open container (`true` for an object), closed.
    fn pop(&mut self) -> Option<bool> {
        self.len = self.len.checked_sub(1)?;
        let slot = self.len % 128;
        let object = (self.top >> slot) & 1 == 1;
        self.top &= !(1 << slot);
        if slot == 0 && self.len > 0 {
            self.top = self.spilled.pop().unwrap_or(0);
        }
        Some(object)
    }
}

/// Reads a request body the way the serde visitor over serde_json's
/// `Deserializer::from_slice` did (see the comment above `Parsed`).
struct Scanner<'a> {
    bytes: &'a [u8],
    /// The next byte to read.
    index: usize,
    /// serde_json's recursion limit, spent by containers that are read (not
    /// skipped): 128 levels including the top-level object fail.
    remaining_depth: u8,
    /// Characters of prompt text so far; integers count 4.
    chars: u64,
    /// The known top-level field whose value is being read, if any: an
    /// error there is reported as that field's.
    field: Option<&'static str>,
}

impl<'a> Scanner<'a> {
    fn new(bytes: &'a [u8]) -> Scanner<'a> {
        Scanner {
            bytes,
            index: 0,
            remaining_depth: 128,
            chars: 0,
            field: None,
        }
    }

    // Bytes and positions.

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.index).copied()
    }

    #[inline]
    fn peek_or_null(&self) -> u8 {
        self.peek().unwrap_or(0)
    }

    #[inline]
    fn eat(&mut self) {
        self.index += 1;
    }

    #[inline]
    fn next_char(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.index += 1;
        Some(b)
    }

    /// Skips JSON whitespace; the next byte.
    #[inline]
    fn parse_whitespace(&mut self) -> Option<u8> {
        loop {
            match self.peek() {
                Some(b' ' | b'\n' | b'\t' | b'\r') => self.eat(),
                other => return other,
            }
        }
    }

    /// The line and the column (bytes before `index` on its line) of `index`.
    #[cold]
    fn position_of_index(&self, index: usize) -> (usize, usize) {
        let before = self.bytes.get(..index).unwrap_or(self.bytes);
        let start_of_line = memchr::memrchr(b'\n', before).map_or(0, |newline| newline + 1);
        let line = 1 + memchr::memchr_iter(b'\n', &before[..start_of_line]).count();
        (line, before.len() - start_of_line)
    }

    /// An error at the last byte read.
    #[cold]
    fn error(&self, code: Code) -> Box<JsonError> {
        let (line, column) = self.position_of_index(self.index);
        Box::new(JsonError { code, line, column })
    }

    /// An error at the byte about to be read.
    #[cold]
    fn peek_error(&self, code: Code) -> Box<JsonError> {
        let (line, column) = self.position_of_index((self.index + 1).min(self.bytes.len()));
        Box::new(JsonError { code, line, column })
    }

    /// Gives a type error the position of the last byte read.
    #[cold]
    fn fix_position(&self, mut e: Box<JsonError>) -> Box<JsonError> {
        if e.line == 0 {
            (e.line, e.column) = self.position_of_index(self.index);
        }
        e
    }

    /// serde_json's `check_recursion!` on entering a container that is read.
    fn enter(&mut self) -> Parsed<()> {
        self.remaining_depth = self.remaining_depth.saturating_sub(1);
        if self.remaining_depth == 0 {
            return Err(self.peek_error(Code::RecursionLimitExceeded));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.remaining_depth += 1;
    }

    // The request.

    /// `deserialize_map` with the request visitor, then `Deserializer::end`.
    fn request(&mut self) -> Parsed<RequestMeta> {
        let Some(peek) = self.parse_whitespace() else {
            return Err(self.peek_error(Code::EofWhileParsingValue));
        };
        let meta = if peek == b'{' {
            self.enter()?;
            self.eat();
            let meta = self.request_fields();
            self.leave();
            let end = self.end_map();
            both(meta, end)
        } else {
            Err(self.peek_invalid_type("a JSON object"))
        };
        let meta = meta.map_err(|e| self.fix_position(e))?;
        match self.parse_whitespace() {
            Some(_) => Err(self.peek_error(Code::TrailingCharacters)),
            None => Ok(meta),
        }
    }

    /// The request visitor's `visit_map`: the known fields, in any order;
    /// a repeated field's last value wins (prompt text adds up).
    fn request_fields(&mut self) -> Parsed<RequestMeta> {
        let mut meta = RequestMeta::default();
        let (mut max_tokens, mut max_completion, mut max_output) = (None, None, None);
        let mut first = true;
        while self.next_key(&mut first)? {
            let field = self.parse_key(Field::of)?;
            self.field = field.name();
            self.parse_object_colon()?;
            match field {
                Field::Model => meta.model = self.option(Self::string)?,
                Field::Stream => meta.stream = self.option(Self::bool)?.unwrap_or(false),
                Field::MaxTokens => max_tokens = self.option(Self::u64)?,
                Field::MaxCompletionTokens => max_completion = self.option(Self::u64)?,
                Field::MaxOutputTokens => max_output = self.option(Self::u64)?,
                Field::StreamOptions => {
                    meta.include_usage = self
                        .option(Self::stream_options)?
                        .flatten()
                        .unwrap_or(false);
                }
                Field::Messages
                | Field::Prompt
                | Field::Input
                | Field::System
                | Field::Instructions
                | Field::Tools
                | Field::Functions => self.count_value()?,
                Field::Other => self.ignore_value()?,
            }
            // The value was fine: a later syntax error is not this field's.
            self.field = None;
        }
        meta.max_tokens = max_completion.or(max_tokens).or(max_output);
        meta.prompt_tokens_estimate = self.chars.div_ceil(4);
        Ok(meta)
    }

    // Objects and arrays (`MapAccess`, `SeqAccess`, `end_map`, `end_seq`).

    /// `MapAccess::next_key` up to the key: `false` at the closing `}` (left
    /// for `end_map`), `true` with the key's opening quote consumed.
    fn next_key(&mut self, first: &mut bool) -> Parsed<bool> {
        let Some(peek) = self.parse_whitespace() else {
            return Err(self.peek_error(Code::EofWhileParsingObject));
        };
        let quote = if peek == b'}' {
            return Ok(false);
        } else if *first {
            *first = false;
            Some(peek)
        } else if peek == b',' {
            self.eat();
            self.parse_whitespace()
        } else {
            return Err(self.peek_error(Code::ExpectedObjectCommaOrEnd));
        };
        match quote {
            Some(b'"') => {
                self.eat();
                Ok(true)
            }
            Some(b'}') => Err(self.peek_error(Code::TrailingComma)),
            Some(_) => Err(self.peek_error(Code::KeyMustBeAString)),
            None => Err(self.peek_error(Code::EofWhileParsingValue)),
        }
    }

    /// `SeqAccess::next_element` up to the element: `false` at the closing
    /// `]` (left for `end_seq`), `true` before an element.
    fn next_element(&mut self, first: &mut bool) -> Parsed<bool> {
        let Some(peek) = self.parse_whitespace() else {
            return Err(self.peek_error(Code::EofWhileParsingList));
        };
        if peek == b']' {
            Ok(false)
        } else if *first {
            *first = false;
            Ok(true)
        } else if peek == b',' {
            self.eat();
            match self.parse_whitespace() {
                Some(b']') => Err(self.peek_error(Code::TrailingComma)),
                Some(_) => Ok(true),
                None => Err(self.peek_error(Code::EofWhileParsingValue)),
            }
        } else {
            Err(self.peek_error(Code::ExpectedListCommaOrEnd))
        }
    }

    fn parse_object_colon(&mut self) -> Parsed<()> {
        match self.parse_whitespace() {
            Some(b':') => {
                self.eat();
                Ok(())
            }
            Some(_) => Err(self.peek_error(Code::ExpectedColon)),
            None => Err(self.peek_error(Code::EofWhileParsingObject)),
        }
    }

    fn end_map(&mut self) -> Parsed<()> {
        match self.parse_whitespace() {
            Some(b'}') => {
                self.eat();
                Ok(())
            }
            Some(b',') => Err(self.peek_error(Code::TrailingComma)),
            Some(_) => Err(self.peek_error(Code::TrailingCharacters)),
            None => Err(self.peek_error(Code::EofWhileParsingObject)),
        }
    }

    fn end_seq(&mut self) -> Parsed<()> {
        match self.parse_whitespace() {
            Some(b']') => {
                self.eat();
                Ok(())
            }
            Some(b',') => {
                self.eat();
                match self.parse_whitespace() {
                    Some(b']') => Err(self.peek_error(Code::TrailingComma)),
                    _ => Err(self.peek_error(Code::TrailingCharacters)),
                }
            }
            Some(_) => Err(self.peek_error(Code::TrailingCharacters)),
            None => Err(self.peek_error(Code::EofWhileParsingList)),
        }
    }

    // Typed values of the known fields.

    /// `deserialize_option`: `null` is `None`, anything else is read by `read`.
    fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> Parsed<T>) -> Parsed<Option<T>> {
        if self.parse_whitespace() == Some(b'n') {
            self.eat();
            self.parse_ident(b"ull")?;
            return Ok(None);
        }
        read(self).map(Some)
    }

    /// `deserialize_string`.
    fn string(&mut self) -> Parsed<String> {
        let value = match self.parse_whitespace() {
            None => return Err(self.peek_error(Code::EofWhileParsingValue)),
            Some(b'"') => {
                self.eat();
                let mut s = String::new();
                self.parse_str(&mut s).map(|()| s)
            }
            Some(_) => Err(self.peek_invalid_type("a string")),
        };
        value.map_err(|e| self.fix_position(e))
    }

    /// `deserialize_bool`.
    fn bool(&mut self) -> Parsed<bool> {
        let value = match self.parse_whitespace() {
            None => return Err(self.peek_error(Code::EofWhileParsingValue)),
            Some(b't') => {
                self.eat();
                self.parse_ident(b"rue").map(|()| true)
            }
            Some(b'f') => {
                self.eat();
                self.parse_ident(b"alse").map(|()| false)
            }
            Some(_) => Err(self.peek_invalid_type("a boolean")),
        };
        value.map_err(|e| self.fix_position(e))
    }

    /// `deserialize_u64` (`deserialize_number`).
    fn u64(&mut self) -> Parsed<u64> {
        let number = match self.parse_whitespace() {
            None => return Err(self.peek_error(Code::EofWhileParsingValue)),
            Some(b'-') => {
                self.eat();
                self.parse_integer(false)?
            }
            Some(b'0'..=b'9') => self.parse_integer(true)?,
            Some(_) => return Err(self.peek_invalid_type("u64")),
        };
        match number {
            Number::U64(n) => Ok(n),
            Number::I64(n) => Err(self.fix_position(message(format!(
                "invalid value: {}, expected u64",
                Unexpected::Signed(n)
            )))),
            Number::F64(x) => Err(self.fix_position(invalid_type(Unexpected::Float(x), "u64"))),
        }
    }

    /// `deserialize_struct` for `struct StreamOptions { include_usage:
    /// Option<bool> }` (an object, or an array of its one field, as serde
    /// allows): `include_usage`.
    fn stream_options(&mut self) -> Parsed<Option<bool>> {
        let value = match self.parse_whitespace() {
            None => return Err(self.peek_error(Code::EofWhileParsingValue)),
            Some(b'[') => {
                self.enter()?;
                self.eat();
                let include_usage = match self.parse_whitespace() {
                    Some(b']') => Err(message(
                        "invalid length 0, expected struct StreamOptions with 1 element".into(),
                    )),
                    Some(_) => self.option(Self::bool),
                    None => Err(self.peek_error(Code::EofWhileParsingList)),
                };
                self.leave();
                let end = self.end_seq();
                both(include_usage, end)
            }
            Some(b'{') => {
                self.enter()?;
                self.eat();
                let include_usage = self.stream_options_fields();
                self.leave();
                let end = self.end_map();
                both(include_usage, end)
            }
            Some(_) => Err(self.peek_invalid_type("struct StreamOptions")),
        };
        value.map_err(|e| self.fix_position(e))
    }

    /// The derived `visit_map` of `StreamOptions`.
    fn stream_options_fields(&mut self) -> Parsed<Option<bool>> {
        let mut include_usage = None;
        let mut first = true;
        while self.next_key(&mut first)? {
            if self.parse_key(|key| key == Some(b"include_usage"))? {
                if include_usage.is_some() {
                    return Err(message("duplicate field `include_usage`".into()));
                }
                self.parse_object_colon()?;
                include_usage = Some(self.option(Self::bool)?);
            } else {
                self.parse_object_colon()?;
                self.ignore_value()?;
            }
        }
        Ok(include_usage.flatten())
    }

    /// serde_json's `peek_invalid_type`: reads the value that is not what
    /// the field expects, to name it in the error.
    #[cold]
    fn peek_invalid_type(&mut self, expected: &str) -> Box<JsonError> {
        let e = match self.peek_or_null() {
            b'n' => {
                self.eat();
                if let Err(e) = self.parse_ident(b"ull") {
                    return e;
                }
                invalid_type(Unexpected::Unit, expected)
            }
            b't' => {
                self.eat();
                if let Err(e) = self.parse_ident(b"rue") {
                    return e;
                }
                invalid_type(Unexpected::Bool(true), expected)
            }
            b'f' => {
                self.eat();
                if let Err(e) = self.parse_ident(b"alse") {
                    return e;
                }
                invalid_type(Unexpected::Bool(false), expected)
            }
            b'-' => {
                self.eat();
                match self.parse_integer(false) {
                    Ok(n) => n.invalid_type(expected),
                    Err(e) => return e,
                }
            }
            b'0'..=b'9' => match self.parse_integer(true) {
                Ok(n) => n.invalid_type(expected),
                Err(e) => return e,
            },
            b'"' => {
                self.eat();
                let mut s = String::new();
                match self.parse_str(&mut s) {
                    Ok(()) => invalid_type(Unexpected::Str(s), expected),
                    Err(e) => return e,
                }
            }
            b'[' => invalid_type(Unexpected::Seq, expected),
            b'{' => invalid_type(Unexpected::Map, expected),
            _ => self.peek_error(Code::ExpectedSomeValue),
        };
        self.fix_position(e)
    }

    fn parse_ident(&mut self, ident: &[u8]) -> Parsed<()> {
        for &expected in ident {
            match self.next_char() {
                None => return Err(self.error(Code::EofWhileParsingValue)),
                Some(next) if next != expected => return Err(self.error(Code::ExpectedSomeIdent)),
                Some(_) => {}
            }
        }
        Ok(())
    }

    // Prompt text.

    /// `deserialize_any` with the text counter: every string's characters
    /// and 4 per integer go to `self.chars`; a payload key's value is skipped.
    fn count_value(&mut self) -> Parsed<()> {
        let Some(peek) = self.parse_whitespace() else {
            return Err(self.peek_error(Code::EofWhileParsingValue));
        };
        match peek {
            b'n' => {
                self.eat();
                self.parse_ident(b"ull")
            }
            b't' => {
                self.eat();
                self.parse_ident(b"rue")
            }
            b'f' => {
                self.eat();
                self.parse_ident(b"alse")
            }
            b'-' | b'0'..=b'9' => {
                let positive = peek != b'-';
                if !positive {
                    self.eat();
                }
                // An integer is a token id (`prompt`/`input` given as token
                // arrays): one token, so four "characters".
                if !matches!(self.parse_integer(positive)?, Number::F64(_)) {
                    self.chars = self.chars.saturating_add(4);
                }
                Ok(())
            }
            b'"' => {
                self.eat();
                let mut count = CharCount(0);
                self.parse_str(&mut count)?;
                self.chars = self.chars.saturating_add(count.0);
                Ok(())
            }
            b'[' => {
                self.enter()?;
                self.eat();
                let mut first = true;
                let mut elements = Ok(());
                loop {
                    match self.next_element(&mut first) {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => {
                            elements = Err(e);
                            break;
                        }
                    }
                    if let Err(e) = self.count_value() {
                        elements = Err(e);
                        break;
                    }
                }
                self.leave();
                let end = self.end_seq();
                both(elements, end)
            }
            b'{' => {
                self.enter()?;
                self.eat();
                let entries = self.count_entries();
                self.leave();
                let end = self.end_map();
                both(entries, end)
            }
            _ => Err(self.peek_error(Code::ExpectedSomeValue)),
        }
    }

    fn count_entries(&mut self) -> Parsed<()> {
        let mut first = true;
        while self.next_key(&mut first)? {
            let payload = self.parse_key(is_payload_key)?;
            self.parse_object_colon()?;
            if payload {
                self.ignore_value()?;
            } else {
                self.count_value()?;
            }
        }
        Ok(())
    }

    // Numbers (`parse_integer` and what it calls, without serde_json's
    // `float_roundtrip` and `arbitrary_precision` features).

    /// After the sign.
    fn parse_integer(&mut self, positive: bool) -> Parsed<Number> {
        match self.next_char() {
            None => Err(self.error(Code::EofWhileParsingValue)),
            Some(b'0') => match self.peek_or_null() {
                // There can be only one leading '0'.
                b'0'..=b'9' => Err(self.peek_error(Code::InvalidNumber)),
                _ => self.parse_number(positive, 0),
            },
            Some(c @ b'1'..=b'9') => {
                let mut significand = u64::from(c - b'0');
                loop {
                    match self.peek_or_null() {
                        c @ b'0'..=b'9' => {
                            let digit = u64::from(c - b'0');
                            if overflows_u64(significand, digit) {
                                return self
                                    .parse_long_integer(positive, significand)
                                    .map(Number::F64);
                            }
                            self.eat();
                            significand = significand * 10 + digit;
                        }
                        _ => return self.parse_number(positive, significand),
                    }
                }
            }
            Some(_) => Err(self.error(Code::InvalidNumber)),
        }
    }

    fn parse_number(&mut self, positive: bool, significand: u64) -> Parsed<Number> {
        Ok(match self.peek_or_null() {
            b'.' => Number::F64(self.parse_decimal(positive, significand, 0)?),
            b'e' | b'E' => Number::F64(self.parse_exponent(positive, significand, 0)?),
            _ if positive => Number::U64(significand),
            _ => {
                let negated = (significand as i64).wrapping_neg();
                // Below i64::MIN, and `-0`, are floats.
                if negated >= 0 {
                    Number::F64(-(significand as f64))
                } else {
                    Number::I64(negated)
                }
            }
        })
    }

    #[cold]
    fn parse_decimal(
        &mut self,
        positive: bool,
        mut significand: u64,
        exponent_before: i32,
    ) -> Parsed<f64> {
        self.eat();
        let mut exponent_after = 0i32;
        while let c @ b'0'..=b'9' = self.peek_or_null() {
            let digit = u64::from(c - b'0');
            if overflows_u64(significand, digit) {
                let exponent = exponent_before.wrapping_add(exponent_after);
                return self.parse_decimal_overflow(positive, significand, exponent);
            }
            self.eat();
            significand = significand * 10 + digit;
            exponent_after -= 1;
        }
        // At least one digit after the decimal point.
        if exponent_after == 0 {
            return Err(match self.peek() {
                Some(_) => self.peek_error(Code::InvalidNumber),
                None => self.peek_error(Code::EofWhileParsingValue),
            });
        }
        let exponent = exponent_before.wrapping_add(exponent_after);
        match self.peek_or_null() {
            b'e' | b'E' => self.parse_exponent(positive, significand, exponent),
            _ => self.f64_from_parts(positive, significand, exponent),
        }
    }

    #[cold]
    fn parse_exponent(
        &mut self,
        positive: bool,
        significand: u64,
        starting_exp: i32,
    ) -> Parsed<f64> {
        self.eat();
        let positive_exp = match self.peek_or_null() {
            b'+' => {
                self.eat();
                true
            }
            b'-' => {
                self.eat();
                false
            }
            _ => true,
        };
        let mut exp = match self.next_char() {
            None => return Err(self.error(Code::EofWhileParsingValue)),
            // A digit follows the exponent mark.
            Some(c @ b'0'..=b'9') => i32::from(c - b'0'),
            Some(_) => return Err(self.error(Code::InvalidNumber)),
        };
        while let c @ b'0'..=b'9' = self.peek_or_null() {
            self.eat();
            let digit = i32::from(c - b'0');
            if exp >= i32::MAX / 10 && (exp > i32::MAX / 10 || digit > i32::MAX % 10) {
                return self.parse_exponent_overflow(positive, significand == 0, positive_exp);
            }
            exp = exp * 10 + digit;
        }
        let final_exp = if positive_exp {
            starting_exp.saturating_add(exp)
        } else {
            starting_exp.saturating_sub(exp)
        };
        self.f64_from_parts(positive, significand, final_exp)
    }

    /// serde_json's float, including when it is out of range (an error).
    #[cold]
    fn f64_from_parts(
        &mut self,
        positive: bool,
        significand: u64,
        mut exponent: i32,
    ) -> Parsed<f64> {
        let mut f = significand as f64;
        loop {
            match pow10(exponent.unsigned_abs()) {
                Some(pow) => {
                    if exponent >= 0 {
                        f *= pow;
                        if f.is_infinite() {
                            return Err(self.error(Code::NumberOutOfRange));
                        }
                    } else {
                        f /= pow;
                    }
                    break;
                }
                None => {
                    if f == 0.0 {
                        break;
                    }
                    if exponent >= 0 {
                        return Err(self.error(Code::NumberOutOfRange));
                    }
                    f /= 1e308;
                    exponent += 308;
                }
            }
        }
        Ok(if positive { f } else { -f })
    }

    /// An integer past u64: the rest of its digits scale it.
    #[cold]
    fn parse_long_integer(&mut self, positive: bool, significand: u64) -> Parsed<f64> {
        let mut exponent = 0i32;
        loop {
            match self.peek_or_null() {
                b'0'..=b'9' => {
                    self.eat();
                    exponent = exponent.wrapping_add(1);
                }
                b'.' => return self.parse_decimal(positive, significand, exponent),
                b'e' | b'E' => return self.parse_exponent(positive, significand, exponent),
                _ => return self.f64_from_parts(positive, significand, exponent),
            }
        }
    }

    #[cold]
    fn parse_decimal_overflow(
        &mut self,
        positive: bool,
        significand: u64,
        exponent: i32,
    ) -> Parsed<f64> {
        // Further digits are ignored.
        while let b'0'..=b'9' = self.peek_or_null() {
            self.eat();
        }
        match self.peek_or_null() {
            b'e' | b'E' => self.parse_exponent(positive, significand, exponent),
            _ => self.f64_from_parts(positive, significand, exponent),
        }
    }

    #[cold]
    fn parse_exponent_overflow(
        &mut self,
        positive: bool,
        zero_significand: bool,
        positive_exp: bool,
    ) -> Parsed<f64> {
        // An error rather than infinity.
        if !zero_significand && positive_exp {
            return Err(self.error(Code::NumberOutOfRange));
        }
        while let b'0'..=b'9' = self.peek_or_null() {
            self.eat();
        }
        Ok(if positive { 0.0 } else { -0.0 })
    }

    // Strings.

    /// `SliceRead::parse_str`, after the opening quote: checks escapes,
    /// control characters and UTF-8, and hands the characters to `sink`.
    fn parse_str(&mut self, sink: &mut impl StrSink) -> Parsed<()> {
        // serde_json checks UTF-8 once the string is complete, so other
        // errors come first, and it points back from the closing quote to
        // the first bad byte: keep the unescaped length and where that is.
        let mut len = 0usize;
        let mut invalid = None;
        loop {
            let start = self.index;
            let (end, ascii) = scan_plain(self.bytes, start);
            self.index = end;
            let Some(stop) = self.peek() else {
                return Err(self.error(Code::EofWhileParsingString));
            };
            if stop != b'"' && stop != b'\\' {
                self.eat();
                return Err(self.error(Code::ControlCharacterWhileParsingString));
            }
            let run = &self.bytes[start..end];
            if invalid.is_none() {
                if ascii {
                    sink.text(run, true);
                } else {
                    match std::str::from_utf8(run) {
                        Ok(_) => sink.text(run, false),
                        Err(e) => invalid = Some(len + e.valid_up_to()),
                    }
                }
            }
            len += run.len();
            self.eat();
            if stop == b'"' {
                break;
            }
            let c = self.parse_escape()?;
            len += c.len_utf8();
            if invalid.is_none() {
                sink.escaped(c);
            }
        }
        match invalid {
            None => Ok(()),
            Some(at) => {
                let (line, column) = self.position_of_index(self.index);
                Err(Box::new(JsonError {
                    code: Code::InvalidUnicodeCodePoint,
                    line,
                    column: column.saturating_sub(len - at),
                }))
            }
        }
    }

    /// A key, after its opening quote (`parse_str`), as `classify` sees
    /// it: unescaped, or `None` when longer than any key we look for. Most
    /// keys are plain ASCII, seen where they are in the body.
    fn parse_key<K>(&mut self, classify: impl FnOnce(Option<&[u8]>) -> K) -> Parsed<K> {
        let start = self.index;
        let (end, ascii) = scan_plain(self.bytes, start);
        if ascii && self.bytes.get(end) == Some(&b'"') {
            self.index = end + 1;
            return Ok(classify(self.bytes.get(start..end)));
        }
        let mut key = Unescaped {
            buf: [0; 24],
            len: 0,
            too_long: false,
        };
        self.parse_str(&mut key)?;
        Ok(classify(key.get()))
    }

    /// After the backslash.
    fn parse_escape(&mut self) -> Parsed<char> {
        let Some(ch) = self.next_char() else {
            return Err(self.error(Code::EofWhileParsingString));
        };
        Ok(match ch {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\x08',
            b'f' => '\x0c',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => return self.parse_unicode_escape(),
            _ => return Err(self.error(Code::InvalidEscape)),
        })
    }

    /// After `\u`: a character, or a surrogate pair written as two escapes.
    fn parse_unicode_escape(&mut self) -> Parsed<char> {
        let n = self.decode_hex_escape()?;
        if (0xDC00..=0xDFFF).contains(&n) {
            // A trailing surrogate first: serde_json's wording.
            return Err(self.error(Code::LoneLeadingSurrogateInHexEscape));
        }
        let code = if (0xD800..=0xDBFF).contains(&n) {
            for expected in [b'\\', b'u'] {
                match self.peek() {
                    None => return Err(self.error(Code::EofWhileParsingString)),
                    Some(b) => {
                        self.eat();
                        if b != expected {
                            return Err(self.error(Code::UnexpectedEndOfHexEscape));
                        }
                    }
                }
            }
            let n2 = self.decode_hex_escape()?;
            if !(0xDC00..=0xDFFF).contains(&n2) {
                return Err(self.error(Code::LoneLeadingSurrogateInHexEscape));
            }
            ((u32::from(n - 0xD800) << 10) | u32::from(n2 - 0xDC00)) + 0x1_0000
        } else {
            u32::from(n)
        };
        // Always a char: surrogates were handled above.
        char::from_u32(code).ok_or_else(|| self.error(Code::InvalidUnicodeCodePoint))
    }

    fn decode_hex_escape(&mut self) -> Parsed<u16> {
        match self.bytes.get(self.index..self.index + 4) {
            Some(&[a, b, c, d]) => {
                self.index += 4;
                match (hex(a), hex(b), hex(c), hex(d)) {
                    (Some(a), Some(b), Some(c), Some(d)) => Ok(a << 12 | b << 8 | c << 4 | d),
                    _ => Err(self.error(Code::InvalidEscape)),
                }
            }
            _ => {
                self.index = self.bytes.len();
                Err(self.error(Code::EofWhileParsingString))
            }
        }
    }

    // Skipped values (`IgnoredAny`).

    /// serde_json's `ignore_value`: syntax only, at any depth; strings are
    /// not checked for UTF-8 or surrogates, numbers not for range.
    fn ignore_value(&mut self) -> Parsed<()> {
        let mut frames = Frames::new();
        loop {
            let Some(peek) = self.parse_whitespace() else {
                return Err(self.peek_error(Code::EofWhileParsingValue));
            };
            let opened = match peek {
                b'n' => {
                    self.eat();
                    self.parse_ident(b"ull")?;
                    None
                }
                b't' => {
                    self.eat();
                    self.parse_ident(b"rue")?;
                    None
                }
                b'f' => {
                    self.eat();
                    self.parse_ident(b"alse")?;
                    None
                }
                b'-' => {
                    self.eat();
                    self.ignore_integer()?;
                    None
                }
                b'0'..=b'9' => {
                    self.ignore_integer()?;
                    None
                }
                b'"' => {
                    self.eat();
                    self.ignore_str()?;
                    None
                }
                b'[' | b'{' => {
                    self.eat();
                    Some(peek == b'{')
                }
                _ => return Err(self.peek_error(Code::ExpectedSomeValue)),
            };
            // After a value: a comma, or the ends of its containers.
            let (mut accept_comma, mut object) = match opened {
                Some(object) => (false, object),
                None => match frames.pop() {
                    Some(object) => (true, object),
                    None => return Ok(()),
                },
            };
            loop {
                match self.parse_whitespace() {
                    Some(b',') if accept_comma => {
                        self.eat();
                        break;
                    }
                    Some(b']') if !object => {}
                    Some(b'}') if object => {}
                    Some(_) if accept_comma => {
                        return Err(self.peek_error(if object {
                            Code::ExpectedObjectCommaOrEnd
                        } else {
                            Code::ExpectedListCommaOrEnd
                        }));
                    }
                    Some(_) => break,
                    None => {
                        return Err(self.peek_error(if object {
                            Code::EofWhileParsingObject
                        } else {
                            Code::EofWhileParsingList
                        }));
                    }
                }
                self.eat();
                object = match frames.pop() {
                    Some(object) => object,
                    None => return Ok(()),
                };
                accept_comma = true;
            }
            if object {
                match self.parse_whitespace() {
                    Some(b'"') => self.eat(),
                    Some(_) => return Err(self.peek_error(Code::KeyMustBeAString)),
                    None => return Err(self.peek_error(Code::EofWhileParsingObject)),
                }
                self.ignore_str()?;
                match self.parse_whitespace() {
                    Some(b':') => self.eat(),
                    Some(_) => return Err(self.peek_error(Code::ExpectedColon)),
                    None => return Err(self.peek_error(Code::EofWhileParsingObject)),
                }
            }
            frames.push(object);
        }
    }

    /// After the sign.
    fn ignore_integer(&mut self) -> Parsed<()> {
        match self.next_char() {
            Some(b'0') => {
                // There can be only one leading '0'.
                if let b'0'..=b'9' = self.peek_or_null() {
                    return Err(self.peek_error(Code::InvalidNumber));
                }
            }
            Some(b'1'..=b'9') => {
                while let b'0'..=b'9' = self.peek_or_null() {
                    self.eat();
                }
            }
            _ => return Err(self.error(Code::InvalidNumber)),
        }
        match self.peek_or_null() {
            b'.' => self.ignore_decimal(),
            b'e' | b'E' => self.ignore_exponent(),
            _ => Ok(()),
        }
    }

    fn ignore_decimal(&mut self) -> Parsed<()> {
        self.eat();
        let mut at_least_one_digit = false;
        while let b'0'..=b'9' = self.peek_or_null() {
            self.eat();
            at_least_one_digit = true;
        }
        if !at_least_one_digit {
            return Err(self.peek_error(Code::InvalidNumber));
        }
        match self.peek_or_null() {
            b'e' | b'E' => self.ignore_exponent(),
            _ => Ok(()),
        }
    }

    fn ignore_exponent(&mut self) -> Parsed<()> {
        self.eat();
        if let b'+' | b'-' = self.peek_or_null() {
            self.eat();
        }
        // A digit follows the exponent mark.
        match self.next_char() {
            Some(b'0'..=b'9') => {}
            _ => return Err(self.error(Code::InvalidNumber)),
        }
        while let b'0'..=b'9' = self.peek_or_null() {
            self.eat();
        }
        Ok(())
    }

    /// `SliceRead::ignore_str`, after the opening quote: escapes and
    /// control characters are checked, UTF-8 is not.
    fn ignore_str(&mut self) -> Parsed<()> {
        loop {
            self.index = scan_plain(self.bytes, self.index).0;
            match self.peek() {
                None => return Err(self.error(Code::EofWhileParsingString)),
                Some(b'"') => {
                    self.eat();
                    return Ok(());
                }
                Some(b'\\') => {
                    self.eat();
                    match self.next_char() {
                        None => return Err(self.error(Code::EofWhileParsingString)),
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                        Some(b'u') => {
                            self.decode_hex_escape()?;
                        }
                        Some(_) => return Err(self.error(Code::InvalidEscape)),
                    }
                }
                Some(_) => return Err(self.error(Code::ControlCharacterWhileParsingString)),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The fast path.
//
// Nearly every body is a well-formed request: plain keys, strings, small
// integers, the known fields with the types they should have. The
// `quick_*` methods read those in one tight pass that keeps no more than it
// needs and knows nothing of errors: at the first thing they do not handle
// (an escaped key, a float in prompt text, deep nesting, anything
// malformed…) they give up with `None`, and `from_json` reads the body again
// with the exact scanner above, which handles everything and explains the
// errors. So the fast path only has to be right about the bodies it
// accepts; the tests hold it to serde's results on those.
// ---------------------------------------------------------------------------

impl<'a> Scanner<'a> {
    /// `request`, for common bodies only.
    fn quick_request(&mut self) -> Option<RequestMeta> {
        let mut meta = RequestMeta::default();
        let (mut max_tokens, mut max_completion, mut max_output) = (None, None, None);
        if self.parse_whitespace()? != b'{' {
            return None;
        }
        self.eat();
        if self.parse_whitespace()? == b'}' {
            self.eat();
        } else {
            loop {
                match Field::of(Some(self.quick_key()?)) {
                    Field::Model => {
                        meta.model = match self.parse_whitespace()? {
                            b'n' => self.quick_literal(b"null").map(|()| None)?,
                            b'"' => Some(self.quick_ascii_string()?),
                            _ => return None,
                        }
                    }
                    Field::Stream => meta.stream = self.quick_bool()?.unwrap_or(false),
                    Field::MaxTokens => max_tokens = self.quick_option_u64()?,
                    Field::MaxCompletionTokens => max_completion = self.quick_option_u64()?,
                    Field::MaxOutputTokens => max_output = self.quick_option_u64()?,
                    Field::StreamOptions => meta.include_usage = self.quick_stream_options()?,
                    Field::Messages
                    | Field::Prompt
                    | Field::Input
                    | Field::System
                    | Field::Instructions
                    | Field::Tools
                    | Field::Functions => self.quick_value(true)?,
                    Field::Other => self.quick_value(false)?,
                }
                match self.parse_whitespace()? {
                    b',' => self.eat(),
                    b'}' => {
                        self.eat();
                        break;
                    }
                    _ => return None,
                }
            }
        }
        if self.parse_whitespace().is_some() {
            return None;
        }
        meta.max_tokens = max_completion.or(max_tokens).or(max_output);
        meta.prompt_tokens_estimate = self.chars.div_ceil(4);
        Some(meta)
    }

    /// A plain ASCII key and its colon.
    #[inline(always)]
    fn quick_key(&mut self) -> Option<&'a [u8]> {
        if self.parse_whitespace()? != b'"' {
            return None;
        }
        let bytes = self.bytes;
        let start = self.index + 1;
        let (end, ascii) = scan_plain(bytes, start);
        if !ascii || bytes.get(end) != Some(&b'"') {
            return None;
        }
        self.index = end + 1;
        if self.parse_whitespace()? != b':' {
            return None;
        }
        self.eat();
        bytes.get(start..end)
    }

    fn quick_literal(&mut self, literal: &[u8]) -> Option<()> {
        let end = self.index + literal.len();
        if self.bytes.get(self.index..end)? != literal {
            return None;
        }
        self.index = end;
        Some(())
    }

    /// `true`, `false` or `null`.
    fn quick_bool(&mut self) -> Option<Option<bool>> {
        Some(match self.parse_whitespace()? {
            b't' => self.quick_literal(b"true").map(|()| Some(true))?,
            b'f' => self.quick_literal(b"false").map(|()| Some(false))?,
            b'n' => self.quick_literal(b"null").map(|()| None)?,
            _ => return None,
        })
    }

    /// A string of plain ASCII (no escapes).
    fn quick_ascii_string(&mut self) -> Option<String> {
        let start = self.index + 1;
        let (end, ascii) = scan_plain(self.bytes, start);
        if !ascii || self.bytes.get(end) != Some(&b'"') {
            return None;
        }
        self.index = end + 1;
        String::from_utf8(self.bytes.get(start..end)?.to_vec()).ok()
    }

    /// An integer that serde reads as a u64: digits, no leading zero, no
    /// fraction or exponent, not past `u64::MAX`.
    fn quick_u64(&mut self) -> Option<u64> {
        let start = self.index;
        let mut n = 0u64;
        while let Some(digit @ b'0'..=b'9') = self.peek() {
            n = n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
            self.eat();
        }
        let digits = self.index - start;
        if digits == 0
            || (digits > 1 && self.bytes.get(start) == Some(&b'0'))
            || matches!(self.peek(), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        Some(n)
    }

    fn quick_option_u64(&mut self) -> Option<Option<u64>> {
        match self.parse_whitespace()? {
            b'n' => self.quick_literal(b"null").map(|()| None),
            b'0'..=b'9' => self.quick_u64().map(Some),
            _ => None,
        }
    }

    /// `null`, or an object with at most one `include_usage`.
    fn quick_stream_options(&mut self) -> Option<bool> {
        match self.parse_whitespace()? {
            b'n' => return self.quick_literal(b"null").map(|()| false),
            b'{' => self.eat(),
            _ => return None,
        }
        let mut include_usage = None;
        if self.parse_whitespace()? == b'}' {
            self.eat();
            return Some(false);
        }
        loop {
            if self.quick_key()? == b"include_usage" {
                if include_usage.is_some() {
                    return None;
                }
                include_usage = Some(self.quick_bool()?);
            } else {
                self.quick_value(false)?;
            }
            match self.parse_whitespace()? {
                b',' => self.eat(),
                b'}' => {
                    self.eat();
                    return Some(include_usage.flatten().unwrap_or(false));
                }
                _ => return None,
            }
        }
    }

    /// One value, its text counted when `count` (`count_value`) or skipped
    /// (`ignore_value`). Containers are followed on a stack of bits, to
    /// 64 deep: deeper ones (and serde_json's limit) are the exact
    /// scanner's business.
    fn quick_value(&mut self, count: bool) -> Option<()> {
        // Bit n: whether the container at depth n is an object, and
        // whether its values are counted.
        let (mut objects, mut counted) = (0u64, 0u64);
        let mut depth = 0;
        let mut counting = count;
        loop {
            match self.parse_whitespace()? {
                b'"' => {
                    self.eat();
                    if counting {
                        self.quick_count_string()?;
                    } else {
                        self.ignore_str().ok()?;
                    }
                }
                b'-' | b'0'..=b'9' if counting => self.quick_count_integer()?,
                b'-' => {
                    self.eat();
                    self.ignore_integer().ok()?;
                }
                b'0'..=b'9' => self.ignore_integer().ok()?,
                b't' => self.quick_literal(b"true")?,
                b'f' => self.quick_literal(b"false")?,
                b'n' => self.quick_literal(b"null")?,
                open @ (b'[' | b'{') => {
                    if depth == 64 {
                        return None;
                    }
                    self.eat();
                    let object = open == b'{';
                    let bit = 1u64 << depth;
                    objects = if object {
                        objects | bit
                    } else {
                        objects & !bit
                    };
                    counted = if counting {
                        counted | bit
                    } else {
                        counted & !bit
                    };
                    depth += 1;
                    let close = if object { b'}' } else { b']' };
                    if self.parse_whitespace()? != close {
                        if object {
                            let key = self.quick_key()?;
                            counting = counting && !is_payload_key(Some(key));
                        }
                        continue;
                    }
                    // Empty: a whole value, closed below.
                    depth -= 1;
                    self.eat();
                }
                _ => return None,
            }
            // After a value: a comma, or the ends of its containers.
            loop {
                if depth == 0 {
                    return Some(());
                }
                let bit = 1u64 << (depth - 1);
                let object = objects & bit != 0;
                match self.parse_whitespace()? {
                    b',' => {
                        self.eat();
                        counting = counted & bit != 0;
                        if object {
                            let key = self.quick_key()?;
                            counting = counting && !is_payload_key(Some(key));
                        }
                        break;
                    }
                    b']' if !object => {}
                    b'}' if object => {}
                    _ => return None,
                }
                self.eat();
                depth -= 1;
            }
        }
    }

    /// A string to count, after its opening quote.
    fn quick_count_string(&mut self) -> Option<()> {
        let start = self.index;
        let (end, ascii) = scan_plain(self.bytes, start);
        let chars = if ascii && self.bytes.get(end) == Some(&b'"') {
            self.index = end + 1;
            (end - start) as u64
        } else {
            // Escapes, or UTF-8 to check.
            let mut count = CharCount(0);
            self.parse_str(&mut count).ok()?;
            count.0
        };
        self.chars = self.chars.saturating_add(chars);
        Some(())
    }

    /// An integer to count (a token id), that serde reads as a u64 or i64.
    fn quick_count_integer(&mut self) -> Option<()> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.eat();
        }
        let n = self.quick_u64()?;
        // `-0` and integers below i64::MIN are floats to serde.
        if negative && !(1..=1 << 63).contains(&n) {
            return None;
        }
        self.chars = self.chars.saturating_add(4);
        Some(())
    }
}

/// The end of the run of plain string bytes from `start`: the index of the
/// first quote, backslash or control character (or of the end), and
/// whether the run is all ASCII.
///
/// Most strings are short (keys, roles, model names): up to 16 bytes are
/// read a word at a time. Longer ones (prompts) go to `scan_long`.
#[inline]
fn scan_plain(bytes: &[u8], start: usize) -> (usize, bool) {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut i = start;
    for _ in 0..2 {
        let Some(word) = bytes.get(i..i + 8) else {
            break;
        };
        let Ok(word) = <[u8; 8]>::try_from(word) else {
            break;
        };
        let w = u64::from_le_bytes(word);
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        // The high bit of each byte that is < 0x20, '"', '\\' or not ASCII
        // (Mycroft's trick, as serde_json does it). A borrow can also mark a
        // byte above a marked one, never below, so the lowest mark is exact.
        let stop = ((w.wrapping_sub(ONES * 0x20) & !w)
            | (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | w)
            & HIGH;
        if stop != 0 {
            i += (stop.trailing_zeros() / 8) as usize;
            if bytes.get(i).is_some_and(|&b| b < 0x80) {
                return (i, true);
            }
            break;
        }
        i += 8;
    }
    scan_long(bytes, i)
}

/// `scan_plain` from `i`, past a run of plain ASCII: finds the closing quote
/// or backslash with `memchr` (SIMD), then checks the run in between for
/// control characters and non-ASCII bytes in passes the compiler vectorizes.
#[inline(never)]
fn scan_long(bytes: &[u8], i: usize) -> (usize, bool) {
    let rest = bytes.get(i..).unwrap_or_default();
    let mut run = &rest[..memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len())];
    // A control character ends the run too (it is an error).
    if run.iter().fold(u8::MAX, |min, &b| min.min(b)) < 0x20 {
        run = &run[..run.iter().position(|&b| b < 0x20).unwrap_or(run.len())];
    }
    (i + run.len(), run.is_ascii())
}

/// The serde visitor `from_json` replaced, kept as the oracle the scanner
/// is compared with.
#[cfg(test)]
mod oracle {
    use std::fmt;

    use serde::de::{
        self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
    };

    use super::RequestMeta;
    use crate::ApiError;

    pub(super) fn from_json(body: &[u8]) -> Result<RequestMeta, ApiError> {
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

    /// An object key, borrowed from the body unless it has escapes (a
    /// `Cow<str>` key would always be copied into a `String`).
    struct Key<'de>(std::borrow::Cow<'de, str>);

    impl<'de> serde::Deserialize<'de> for Key<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key<'de>, D::Error> {
            struct KeyVisitor;

            impl<'de> Visitor<'de> for KeyVisitor {
                type Value = Key<'de>;

                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an object key")
                }

                fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                    Ok(Key(std::borrow::Cow::Borrowed(v)))
                }

                fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                    Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
                }

                fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                    Ok(Key(std::borrow::Cow::Owned(v)))
                }
            }

            d.deserialize_str(KeyVisitor)
        }
    }

    impl<'de> Visitor<'de> for MetaVisitor<'_> {
        type Value = RequestMeta;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RequestMeta, A::Error> {
            let mut meta = RequestMeta::default();
            let (mut max_tokens, mut max_completion, mut max_output) = (None, None, None);
            let mut chars = 0u64;
            while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
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
            while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                match &*key {
                    "type" | "role" | "id" | "tool_call_id" | "image_url" | "url"
                    | "input_audio" | "file" | "file_data" | "data" | "detail" => {
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
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_keys_are_read_like_plain_ones() {
        let meta = RequestMeta::from_json(
            br#"{"mod\u0065l":"m","max_tok\u0065ns":5,"messages":[{"r\u006fle":"user","cont\u0065nt":"abcd"}]}"#,
        )
        .unwrap();
        assert_eq!(meta.model.as_deref(), Some("m"));
        assert_eq!(meta.max_tokens, Some(5));
        assert_eq!(meta.prompt_tokens_estimate, 1);
    }

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

    #[test]
    fn deep_nesting_in_a_skipped_value_is_fine() {
        // serde_json has no depth limit for values it skips; neither do we.
        let body = format!(
            "{{\"metadata\":{}{}, \"messages\":[{{\"type\":{}1{}}}]}}",
            "[".repeat(100_000),
            "]".repeat(100_000),
            "{\"a\":".repeat(10_000),
            "}".repeat(10_000),
        );
        assert_eq!(
            RequestMeta::from_json(body.as_bytes()),
            oracle::from_json(body.as_bytes())
        );
        assert!(RequestMeta::from_json(body.as_bytes()).is_ok());
    }

    /// The scanner and the serde visitor agree on `body`: the same facts, or
    /// the same error (the same `param`, and the same message unless it
    /// names a float, which serde_json prints its own way).
    fn agree(body: &[u8]) -> Result<(), String> {
        let ours = RequestMeta::from_json(body);
        let theirs = oracle::from_json(body);
        let same = match (&ours, &theirs) {
            (Ok(a), Ok(b)) => a == b,
            (Err(a), Err(b)) if b.message().contains("floating point `") => {
                let at = |m: &str| m.rfind(" at line ").map(|i| m[i..].to_owned());
                a.param() == b.param() && at(a.message()) == at(b.message())
            }
            (Err(a), Err(b)) => a.param() == b.param() && a.message() == b.message(),
            _ => false,
        };
        if same {
            Ok(())
        } else {
            Err(format!(
                "for {:?}:\n  scanner: {:?}\n  serde:   {:?}",
                String::from_utf8_lossy(body),
                ours.as_ref().map_err(|e| (e.param(), e.message())),
                theirs.as_ref().map_err(|e| (e.param(), e.message())),
            ))
        }
    }

    #[test]
    fn agrees_with_serde_on_edge_cases() {
        let deep = |n: usize, open: &str, close: &str, inner: &str| {
            format!(
                "{{\"messages\":{}{inner}{}}}",
                open.repeat(n),
                close.repeat(n)
            )
        };
        let mut bodies: Vec<Vec<u8>> = [
            // Not an object, empty, trailing.
            "", " ", "[1,2]", "\"s\"", "\"s", "12", "-", "-0", "1.5", "1e999", "null", "nul",
            "true", "{", "{}", "{} ", "{} x", "{},", "{}}", "{\"a\":1}{",
            // Keys and commas.
            "{,}", "{\"a\":1,}", "{\"a\":1,,}", "{\"a\" 1}", "{\"a\":1 \"b\":2}", "{1:2}",
            "{\"a\"", "{\"a\":", "{\"a\":1", "{\"a\":1,", "{\"mod\\u0065l\":\"m\"}",
            "{\"model\":\"a\",\"model\":null}", "{\"model\":\"a\",\"model\":\"b\"}",
            // Typed fields of the wrong type.
            "{\"model\":5}", "{\"model\":-5}", "{\"model\":1.5}", "{\"model\":true}",
            "{\"model\":[]}", "{\"model\":{}}", "{\"model\":nul}", "{\"model\":\"\\q\"}",
            "{\"model\":\"caf\u{e9}\\u00e9\\ud83d\\ude00\"}", "{\"model\":01}",
            "{\"stream\":\"yes\"}", "{\"stream\":1}", "{\"stream\":tru}", "{\"stream\":null}",
            "{\"stream\":x}", "{\"stream\":}", "{\"stream\":", "{\"stream\" ",
            "{\"max_tokens\":-1}", "{\"max_tokens\":-0}", "{\"max_tokens\":1.0}",
            "{\"max_tokens\":1e3}", "{\"max_tokens\":18446744073709551615}",
            "{\"max_tokens\":18446744073709551616}", "{\"max_tokens\":1e400}",
            "{\"max_tokens\":\"7\"}", "{\"max_tokens\":[7]}", "{\"max_tokens\":-}",
            "{\"max_tokens\":-9223372036854775809}", "{\"max_tokens\":-9223372036854775808}",
            "{\"max_tokens\":1.}", "{\"max_tokens\":1.e}", "{\"max_tokens\":1e}",
            "{\"max_tokens\":1e+}", "{\"max_tokens\":00}",
            // Stream options as serde reads a struct.
            "{\"stream_options\":{\"include_usage\":true}}",
            "{\"stream_options\":{\"include_usage\":true,\"include_usage\":false}}",
            "{\"stream_options\":{\"include_usage\":true , \"include_usage\"}",
            "{\"stream_options\":{\"include_usage\":1}}",
            "{\"stream_options\":{\"other\":[1,{\"x\":\"\\ud800\"}],\"include_usage\":true}}",
            "{\"stream_options\":[true]}", "{\"stream_options\":[]}", "{\"stream_options\":[ ] }",
            "{\"stream_options\":[true,1]}", "{\"stream_options\":[true,]}",
            "{\"stream_options\":[null]}", "{\"stream_options\":[,]}", "{\"stream_options\":[",
            "{\"stream_options\":[true", "{\"stream_options\":5}", "{\"stream_options\":\"x\"}",
            "{\"stream_options\":null}", "{\"stream_options\":{}}", "{\"stream_options\":{\"a\"}}",
            // Prompt text.
            "{\"prompt\":[1,-1,1.5,-0,1e2,18446744073709551616,-9223372036854775809,true,null]}",
            "{\"prompt\":1e309}", "{\"prompt\":-1e309}", "{\"prompt\":1e-400}",
            "{\"prompt\":0e999999999999}", "{\"prompt\":1e999999999999}",
            "{\"prompt\":1e-999999999999}", "{\"prompt\":123456789012345678901234567890}",
            "{\"prompt\":1844674407370955161.9e300}", "{\"prompt\":0.1e310}",
            "{\"prompt\":17976931348623157e292}", "{\"prompt\":17976931348623159e292}",
            "{\"prompt\":\"\\ud800\"}", "{\"prompt\":\"\\udc00\"}", "{\"prompt\":\"\\ud800\\u0041\"}",
            "{\"prompt\":\"\\ud800x\"}", "{\"prompt\":\"\\ud800\\n\"}", "{\"prompt\":\"\\ud800\\",
            "{\"prompt\":\"\\ud800", "{\"prompt\":\"\\u12\"}", "{\"prompt\":\"\\u12",
            "{\"prompt\":\"\\uZZZZ\"}", "{\"prompt\":\"\\x\"}", "{\"prompt\":\"\\",
            "{\"prompt\":\"a\tb\"}", "{\"prompt\":\"a\nb\"}", "{\"prompt\":[1,]}",
            "{\"prompt\":[1 2]}", "{\"prompt\":[,1]}", "{\"prompt\":{\"a\":1,}}",
            "{\"prompt\":{\"a\" 1}}", "{\"prompt\":{\"type\":[1,]}}", "{\"prompt\":{\"type\":{\"a\":1,}}}",
            "{\"prompt\":{\"type\":\"\\ud800\"}}", "{\"prompt\":{\"type\":1e999}}",
            "{\"prompt\":{\"typ\\u0065\":\"abcd\"}}", "{\"prompt\":{\"type\":-}}",
            "{\"prompt\":{\"type\":01}}", "{\"prompt\":{\"type\":1.}}", "{\"prompt\":{\"type\":1.e5}}",
            "{\"prompt\":{\"type\":\"a\tb\"}}", "{\"prompt\":{\"type\":[1 2]}}",
            "{\"prompt\":{\"type\":{1:2}}}", "{\"prompt\":{\"type\":{\"a\" 2}}}",
            "{\"prompt\":{\"type\":[}}", "{\"prompt\":{\"type\":{\"a\":}}}",
            "{\"prompt\":{\"type\":{\"a\":1", "{\"prompt\":{\"type\":[1", "{\"prompt\":{\"type\":[",
            "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"\u{1F600}ab\\u00e9\"}]}]}",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        // Invalid UTF-8: checked in strings that are read, not in skipped ones.
        for body in [
            &b"{\"model\":\"\xff\"}"[..],
            b"{\"model\":\"ab\\n\xc3\"}",
            b"{\"model\":\"\xc3\\n\"}",
            b"{\"model\":\"\\n\xe2\x82\xac\xe2\x82\"}",
            b"{\"model\":\"\xff\\q\"}",
            b"{\"model\":\"\xff",
            b"{\"prompt\":[\"a\", \"\x80\"]}",
            b"{\"prompt\":{\"\xff\":1}}",
            b"{\"\xff\":1}",
            b"{\"user\":\"\xff\"}",
            b"{\"prompt\":{\"type\":\"\xff\"}}",
            b"{\"stream_options\":{\"\xff\":1}}",
            b"{\"stream_options\":{\"a\":\"\xff\"}}",
            b"{\"model\":\"a\"}\xff",
            b"\n\n  {\"model\":\n\"\xff\"}",
        ] {
            bodies.push(body.to_vec());
        }
        // Around the recursion limit (the top-level object is level 1).
        for n in [125, 126, 127, 128, 200] {
            bodies.push(deep(n, "[", "]", "1").into_bytes());
            bodies.push(deep(n, "{\"a\":", "}", "1").into_bytes());
            bodies.push(deep(n, "{\"type\":", "}", "1").into_bytes());
            bodies.push(deep(n, "[", "", "").into_bytes());
        }
        for body in &bodies {
            if let Err(e) = agree(body) {
                panic!("{e}");
            }
        }
    }

    /// Generated request bodies: valid OpenAI-style requests with random
    /// fields, escapes, numbers, Unicode and nesting, sometimes mutated.
    mod generated {
        use proptest::prelude::*;
        use proptest::sample::{Index, select};

        /// A JSON value as written, before whitespace.
        #[derive(Debug, Clone)]
        pub(super) enum J {
            /// A literal or number, as written.
            Raw(String),
            /// A string's contents between the quotes (escapes as written).
            Str(Vec<u8>),
            Arr(Vec<J>),
            Obj(Vec<(Vec<u8>, J)>),
            /// `inner` inside `depth` arrays, or objects under `key`.
            Deep {
                depth: usize,
                key: Option<Vec<u8>>,
                inner: Box<J>,
            },
        }

        const WHITESPACE: [&str; 9] = ["", "", "", "", "", " ", "\n", "\t", "\r\n  "];

        struct Out<'a> {
            bytes: Vec<u8>,
            spaces: &'a [u8],
            next: usize,
        }

        impl Out<'_> {
            fn space(&mut self) {
                if let Some(&choice) = self.spaces.get(self.next % self.spaces.len().max(1)) {
                    self.next += 1;
                    let ws = WHITESPACE[usize::from(choice) % WHITESPACE.len()];
                    self.bytes.extend_from_slice(ws.as_bytes());
                }
            }

            fn string(&mut self, s: &[u8]) {
                self.bytes.push(b'"');
                self.bytes.extend_from_slice(s);
                self.bytes.push(b'"');
            }

            fn value(&mut self, j: &J) {
                match j {
                    J::Raw(raw) => self.bytes.extend_from_slice(raw.as_bytes()),
                    J::Str(s) => self.string(s),
                    J::Arr(items) => {
                        self.bytes.push(b'[');
                        for (i, item) in items.iter().enumerate() {
                            if i > 0 {
                                self.bytes.push(b',');
                            }
                            self.space();
                            self.value(item);
                            self.space();
                        }
                        self.bytes.push(b']');
                    }
                    J::Obj(entries) => {
                        self.bytes.push(b'{');
                        for (i, (key, value)) in entries.iter().enumerate() {
                            if i > 0 {
                                self.bytes.push(b',');
                            }
                            self.space();
                            self.string(key);
                            self.space();
                            self.bytes.push(b':');
                            self.space();
                            self.value(value);
                            self.space();
                        }
                        self.bytes.push(b'}');
                    }
                    J::Deep { depth, key, inner } => {
                        for _ in 0..*depth {
                            match key {
                                Some(key) => {
                                    self.bytes.push(b'{');
                                    self.string(key);
                                    self.bytes.push(b':');
                                }
                                None => self.bytes.push(b'['),
                            }
                        }
                        self.value(inner);
                        let close = if key.is_some() { b'}' } else { b']' };
                        self.bytes.extend(std::iter::repeat_n(close, *depth));
                    }
                }
            }
        }

        pub(super) fn render(j: &J, spaces: &[u8]) -> Vec<u8> {
            let mut out = Out {
                bytes: Vec::new(),
                spaces,
                next: 0,
            };
            out.space();
            out.value(j);
            out.space();
            out.bytes
        }

        /// A piece of a string's contents; `broken` ones (invalid UTF-8,
        /// escapes or control characters) only if `broken`.
        fn piece(broken: u32) -> BoxedStrategy<Vec<u8>> {
            prop_oneof![
                6 => "[a-zA-Z0-9 .,!?'{}:\\[\\]]{0,12}".prop_map(String::into_bytes),
                3 => any::<char>()
                    .prop_filter("plain", |c| !matches!(c, '"' | '\\') && !c.is_control())
                    .prop_map(|c| c.to_string().into_bytes()),
                2 => select(&["\\n", "\\t", "\\\"", "\\\\", "\\/", "\\b", "\\f", "\\r"][..])
                    .prop_map(|s| s.as_bytes().to_vec()),
                2 => (any::<u16>(), any::<bool>()).prop_map(|(n, upper)| {
                    if upper { format!("\\u{n:04X}") } else { format!("\\u{n:04x}") }.into_bytes()
                }),
                2 => (0x1_0000u32..0x11_0000).prop_map(|c| {
                    let mut units = [0u16; 2];
                    let units = char::from_u32(c).unwrap_or('x').encode_utf16(&mut units);
                    units.iter().map(|u| format!("\\u{u:04x}")).collect::<String>().into_bytes()
                }),
                broken => select(vec![
                    &b"\xff"[..], b"\xc3", b"\x80", b"\xe2\x82", b"\xf0\x9f\x98", b"\xed\xa0\x80",
                    b"\x01", b"\x1f", b"\x7f", b"\t", b"\\x", b"\\u12", b"\\uD800", b"\\uDC00",
                    b"\\uD800\\n", b"\\uD800x", b"\\uDBFF\\uDFFF", b"\\", b"\"",
                ])
                .prop_map(<[u8]>::to_vec),
            ]
            .boxed()
        }

        fn text() -> BoxedStrategy<Vec<u8>> {
            prop_oneof![
                3 => prop::collection::vec(piece(0), 0..5),
                1 => prop::collection::vec(piece(1), 0..5),
            ]
            .prop_map(|pieces| pieces.concat())
            .boxed()
        }

        const KEYS: &[&str] = &[
            "model",
            "stream",
            "max_tokens",
            "max_completion_tokens",
            "max_output_tokens",
            "stream_options",
            "include_usage",
            "messages",
            "prompt",
            "input",
            "system",
            "instructions",
            "tools",
            "functions",
            "type",
            "role",
            "id",
            "tool_call_id",
            "image_url",
            "url",
            "input_audio",
            "file",
            "file_data",
            "data",
            "detail",
            "content",
            "text",
            "name",
            "arguments",
            "metadata",
            "user",
            "a",
        ];

        /// A key as written: mostly known, sometimes with an escaped letter.
        fn key() -> BoxedStrategy<Vec<u8>> {
            prop_oneof![
                8 => select(KEYS).prop_map(|k| k.as_bytes().to_vec()),
                2 => (select(KEYS), any::<Index>()).prop_map(|(k, i)| escape_one(k, i)),
                1 => text(),
            ]
            .boxed()
        }

        pub(super) fn escape_one(key: &str, at: Index) -> Vec<u8> {
            let at = at.index(key.len());
            let mut out = key.as_bytes()[..at].to_vec();
            out.extend_from_slice(format!("\\u{:04x}", key.as_bytes()[at]).as_bytes());
            out.extend_from_slice(&key.as_bytes()[at + 1..]);
            out
        }

        fn number() -> BoxedStrategy<String> {
            prop_oneof![
                2 => (0u64..5000).prop_map(|n| n.to_string()),
                1 => any::<u64>().prop_map(|n| n.to_string()),
                1 => any::<i64>().prop_map(|n| n.to_string()),
                1 => any::<f64>()
                    .prop_filter("finite", |x| x.is_finite())
                    .prop_map(|x| format!("{x:?}")),
                1 => any::<f64>()
                    .prop_filter("finite", |x| x.is_finite())
                    .prop_map(|x| format!("{x:e}")),
                3 => "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,22})?([eE][+-]?[0-9]{1,3})?",
                1 => "[0-9]{15,25}(\\.[0-9]{0,20})?[eE][+-]?(29[0-9]|30[0-9]|31[0-9]|32[0-9])",
                1 => select(&[
                    "-0", "1e400", "-1e400", "1e-400", "0e999999999999", "1e2147483647",
                    "1e2147483648", "1e-2147483649", "18446744073709551615",
                    "18446744073709551616", "-9223372036854775808", "-9223372036854775809",
                    "1.7976931348623157e308", "1.7976931348623159e308", "1.8e308", "01", "1.",
                    "-", "1e", "1e+", ".5", "-a", "2.e3", "1E5", "-01", "1.5.5", "1ee5",
                    "123456789012345678901234567890.5e-3", "10e307", "0.1e310", "1e308",
                ][..])
                .prop_map(String::from),
            ]
            .boxed()
        }

        fn leaf() -> BoxedStrategy<J> {
            prop_oneof![
                4 => select(&["null", "true", "false"][..]).prop_map(|s| J::Raw(s.into())),
                1 => select(&["nul", "tru", "fals", "nulll"][..]).prop_map(|s| J::Raw(s.into())),
                8 => number().prop_map(J::Raw),
                12 => text().prop_map(J::Str),
            ]
            .boxed()
        }

        fn value() -> BoxedStrategy<J> {
            leaf()
                .prop_recursive(4, 24, 5, |inner| {
                    prop_oneof![
                        prop::collection::vec(inner.clone(), 0..5).prop_map(J::Arr),
                        prop::collection::vec((key(), inner), 0..5).prop_map(J::Obj),
                    ]
                })
                .boxed()
        }

        fn s(text: &str) -> J {
            J::Str(text.as_bytes().to_vec())
        }

        fn k(key: &str) -> Vec<u8> {
            key.as_bytes().to_vec()
        }

        /// A content part, as chat clients send them.
        fn part() -> BoxedStrategy<J> {
            prop_oneof![
                text().prop_map(|t| J::Obj(vec![(k("type"), s("text")), (k("text"), J::Str(t))])),
                text().prop_map(|t| J::Obj(vec![
                    (k("type"), s("image_url")),
                    (
                        k("image_url"),
                        J::Obj(vec![(k("url"), J::Str(t)), (k("detail"), s("high"))])
                    ),
                ])),
                text().prop_map(|t| J::Obj(vec![
                    (k("type"), s("input_audio")),
                    (
                        k("input_audio"),
                        J::Obj(vec![(k("data"), J::Str(t)), (k("format"), s("wav"))])
                    ),
                ])),
                value(),
            ]
            .boxed()
        }

        fn message() -> BoxedStrategy<J> {
            let content = prop_oneof![
                3 => text().prop_map(J::Str),
                2 => prop::collection::vec(part(), 0..3).prop_map(J::Arr),
                1 => Just(J::Raw("null".into())),
                1 => value(),
            ];
            (
                select(&["system", "user", "assistant", "tool"][..]),
                content,
                text(),
            )
                .prop_map(|(role, content, id)| {
                    let mut fields = vec![(k("role"), s(role)), (k("content"), content)];
                    if role == "tool" {
                        fields.push((k("tool_call_id"), J::Str(id)));
                    } else if role == "assistant" {
                        fields.push((
                            k("tool_calls"),
                            J::Arr(vec![J::Obj(vec![
                                (k("id"), J::Str(id)),
                                (k("type"), s("function")),
                                (
                                    k("function"),
                                    J::Obj(vec![
                                        (k("name"), s("f")),
                                        (k("arguments"), s("{\\\"x\\\":1}")),
                                    ]),
                                ),
                            ])]),
                        ));
                    }
                    J::Obj(fields)
                })
                .boxed()
        }

        /// Nesting around serde_json's limit, read or skipped.
        fn deep() -> BoxedStrategy<J> {
            (
                prop_oneof![120usize..132, 1000usize..1500],
                select(&[None, Some("a"), Some("type"), Some("d\\u0061ta")][..]),
                leaf(),
            )
                .prop_map(|(depth, key, inner)| J::Deep {
                    depth,
                    key: key.map(|key| key.as_bytes().to_vec()),
                    inner: Box::new(inner),
                })
                .boxed()
        }

        fn max_tokens() -> BoxedStrategy<J> {
            prop_oneof![
                4 => (0u64..100_000).prop_map(|n| J::Raw(n.to_string())),
                1 => Just(J::Raw("null".into())),
                2 => number().prop_map(J::Raw),
                1 => value(),
            ]
            .boxed()
        }

        fn stream_options() -> BoxedStrategy<J> {
            let flag = prop_oneof![
                4 => select(&["true", "false", "null"][..]).prop_map(|s| J::Raw(s.into())),
                1 => value(),
            ];
            prop_oneof![
                4 => flag.clone().prop_map(|f| J::Obj(vec![(k("include_usage"), f)])),
                1 => (flag.clone(), flag.clone())
                    .prop_map(|(a, b)| J::Obj(vec![(k("include_usage"), a), (k("include_usage"), b)])),
                1 => (flag.clone(), key(), value())
                    .prop_map(|(f, key, v)| J::Obj(vec![(key, v), (k("include_usage"), f)])),
                1 => prop::collection::vec(flag, 0..3).prop_map(J::Arr),
                1 => Just(J::Raw("null".into())),
                1 => value(),
            ]
            .boxed()
        }

        fn text_field() -> BoxedStrategy<J> {
            prop_oneof![
                3 => text().prop_map(J::Str),
                3 => prop::collection::vec(message(), 0..4).prop_map(J::Arr),
                1 => prop::collection::vec(0u32..100_000, 0..6)
                    .prop_map(|ids| J::Arr(ids.into_iter().map(|id| J::Raw(id.to_string())).collect())),
                1 => prop::collection::vec(prop::collection::vec(0u32..100_000, 0..4), 0..3).prop_map(|rows| {
                    J::Arr(rows.into_iter().map(|ids| {
                        J::Arr(ids.into_iter().map(|id| J::Raw(id.to_string())).collect())
                    }).collect())
                }),
                2 => value(),
                1 => deep(),
            ]
            .boxed()
        }

        /// A top-level field: its key (maybe escaped) and value.
        fn field() -> BoxedStrategy<(Vec<u8>, J)> {
            let named = prop_oneof![
                2 => (Just("model"), prop_oneof![4 => text().prop_map(J::Str), 1 => value()]),
                1 => (Just("stream"), prop_oneof![
                    3 => select(&["true", "false", "null"][..]).prop_map(|s| J::Raw(s.into())),
                    1 => value(),
                ]),
                1 => (select(&["max_tokens", "max_completion_tokens", "max_output_tokens"][..]), max_tokens()),
                1 => (Just("stream_options"), stream_options()),
                4 => (select(&["messages", "prompt", "input", "system", "instructions", "tools", "functions"][..]), text_field()),
                1 => (select(&["metadata", "user", "temperature", "n"][..]), prop_oneof![value(), deep()]),
            ];
            prop_oneof![
                8 => named.clone().prop_map(|(key, value)| (k(key), value)),
                1 => (named, any::<Index>()).prop_map(|((key, value), at)| (escape_one(key, at), value)),
                1 => (key(), value()),
            ]
            .boxed()
        }

        #[derive(Debug, Clone)]
        pub(super) enum Mutation {
            Truncate(Index),
            Flip(Index, u8),
            Insert(Index, Vec<u8>),
            Delete(Index),
        }

        fn mutation() -> BoxedStrategy<Mutation> {
            prop_oneof![
                (any::<Index>()).prop_map(Mutation::Truncate),
                (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
                (
                    any::<Index>(),
                    prop_oneof![
                        3 => select(&[
                            "{", "}", "[", "]", ",", ":", "\"", "\\", " ", "0", "-", ".", "e", "n",
                            "\\u", "\\ud800", "\u{e9}", "\x0c", "\n",
                        ][..]).prop_map(|s| s.as_bytes().to_vec()),
                        1 => prop::collection::vec(any::<u8>(), 1..4),
                    ]
                )
                    .prop_map(|(i, bytes)| Mutation::Insert(i, bytes)),
                (any::<Index>()).prop_map(Mutation::Delete),
            ]
            .boxed()
        }

        pub(super) fn mutate(mut body: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
            for m in mutations {
                match m {
                    Mutation::Truncate(at) => body.truncate(at.index(body.len() + 1)),
                    Mutation::Flip(at, byte) if !body.is_empty() => {
                        let at = at.index(body.len());
                        body[at] = *byte;
                    }
                    Mutation::Insert(at, bytes) => {
                        let at = at.index(body.len() + 1);
                        body.splice(at..at, bytes.iter().copied());
                    }
                    Mutation::Delete(at) if !body.is_empty() => {
                        body.remove(at.index(body.len()));
                    }
                    _ => {}
                }
            }
            body
        }

        /// A body: mostly a request object, sometimes any value, with
        /// random whitespace, sometimes mutated.
        pub(super) fn body() -> BoxedStrategy<Vec<u8>> {
            let top = prop_oneof![
                9 => prop::collection::vec(field(), 0..8).prop_map(J::Obj),
                1 => value(),
            ];
            let mutations = prop_oneof![
                3 => Just(Vec::new()),
                2 => prop::collection::vec(mutation(), 1..3),
            ];
            (top, prop::collection::vec(any::<u8>(), 0..16), mutations)
                .prop_map(|(top, spaces, mutations)| mutate(render(&top, &spaces), &mutations))
                .boxed()
        }
    }

    /// The fast path takes the bodies clients send (else it is only slower).
    #[test]
    fn the_fast_path_reads_common_bodies() {
        let bodies = [
            r#"{}"#,
            r#" { "model" : "gpt-4o-mini" , "max_tokens" : 64 , "messages" : [ { "role" : "user" , "content" : "Say hello." } ] } "#,
            r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true,"x":[1]},"max_completion_tokens":512,
                "temperature":0.7,"top_p":1e-3,"metadata":{"k":["v",null,false,-1.5e3]},"user":"caf\u00e9 \ud83d\ude00",
                "messages":[{"role":"system","content":"Be brief.\nUse tools."},
                  {"role":"user","content":[{"type":"text","text":"Grüße 日本語"},
                    {"type":"image_url","image_url":{"url":"https://example.com/a.png","detail":"low"}}]},
                  {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
                    "function":{"name":"f","arguments":"{\"city\":\"Paris\"}"}}]},
                  {"role":"tool","tool_call_id":"call_1","content":"{\"t\":17}"}],
                "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object",
                  "properties":{"city":{"type":"string","enum":["a","b"]}},"required":["city"]}}}]}"#,
            r#"{"model":"text-embedding-3-small","input":[[1820,374,264],[3,4]],"max_tokens":null,"stream":null,"stream_options":null}"#,
            r#"{"model":null,"prompt":[-1,0,18446744073709551615,-9223372036854775808],"system":"","instructions":"x","functions":[]}"#,
        ];
        for body in bodies {
            let quick = Scanner::new(body.as_bytes()).quick_request();
            let mut exact = Scanner::new(body.as_bytes())
                .request()
                .unwrap_or_else(|e| panic!("{e}: {body}"));
            exact.body_len = 0;
            assert_eq!(quick, Some(exact), "{body}");
        }
    }

    proptest::proptest! {
        // 256 cases by default; `PROPTEST_CASES=20000` for a longer run.
        #[test]
        fn agrees_with_serde_on_generated_bodies(body in generated::body()) {
            if let Err(e) = agree(&body) {
                proptest::prop_assert!(false, "{}", e);
            }
        }

        #[test]
        fn scan_plain_stops_where_a_byte_loop_does(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    8 => proptest::sample::select(&b"aZ ~"[..]),
                    1 => proptest::sample::select(&b"\"\\\x00\x1f\x20\x7f\x80\xbf\xc3\xff"[..]),
                ],
                0..200,
            ),
            start in 0usize..64,
        ) {
            let start = start.min(bytes.len());
            let end = bytes[start..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .map_or(bytes.len(), |n| start + n);
            let ascii = bytes[start..end].is_ascii();
            proptest::prop_assert_eq!(scan_plain(&bytes, start), (end, ascii));
        }
    }
}
