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
//! let req = RequestMeta::read(req, RequestMeta::DEFAULT_MAX_BODY_BYTES).await?;
//! let meta = req.extensions().get::<RequestMeta>().unwrap();
//! assert_eq!(meta.model.as_deref(), Some("gpt-4o"));
//! assert!(meta.stream);
//! assert_eq!(meta.max_tokens, Some(256));
//! assert_eq!(meta.prompt_tokens_estimate, 7); // 25 characters / 4, rounded up
//!
//! // A second read finds the cached facts and leaves the body alone.
//! let req = RequestMeta::read(req, RequestMeta::DEFAULT_MAX_BODY_BYTES).await?;
//! assert!(req.extensions().get::<RequestMeta>().is_some());
//! # Ok(())
//! # }
//! ```
//!
//! # Reading the body
//!
//! The facts come from the crate's one JSON reader: a fast path takes the
//! common body (plain keys, values of the expected types) in one pass that
//! also counts the prompt's characters; any other body is read by
//! `serde_json` into the same derived struct of borrowed fields. A body
//! that is not a JSON object of these fields is rejected with 400
//! `invalid_request` in serde's own words, at serde's line and column,
//! and the field at fault in `param` (`max_tokens` for `"max_tokens": -5`).
//!
//! # Why a field given twice is rejected
//!
//! `{"model":"cheap","model":"dear"}` is valid JSON, but which `model` does
//! the upstream use? If tollgate priced one and the upstream ran the other,
//! a client could buy the dear model at the cheap price. Serde's derived
//! readers refuse a duplicate field, and so does tollgate: 400, naming the
//! field.
//!
//! # Facts travel forward
//!
//! A later step that needs to know more about the body finds it here rather
//! than reading the body again: the body's length, and where its
//! `stream_options` is, so that
//! [`request_usage`](crate::usage::request_usage) asks the upstream for
//! usage by splicing a few bytes in.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use pin_project_lite::pin_project;

pub(crate) use self::facts::StreamOptionsAt;
use crate::body::collect::{Collect, Collected};
use crate::{ApiError, BoxError};

/// Facts about an OpenAI-style request, read once from its JSON body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestMeta {
    /// The `model` field.
    pub model: Option<String>,
    /// The `stream` field (false when absent).
    pub stream: bool,
    /// The output cap: `max_completion_tokens` and `max_tokens` (chat),
    /// `max_tokens` (completions, Anthropic messages), `max_output_tokens`
    /// (Responses); the largest when a body gives several. Reasoning tokens
    /// count against it in every API.
    pub max_tokens: Option<u64>,
    /// `n`: how many choices to return (chat, completions).
    pub n: Option<u64>,
    /// `best_of`: how many completions to generate server-side
    /// (completions).
    pub best_of: Option<u64>,
    /// `stream_options.include_usage` as the client sent it.
    pub include_usage: bool,
    /// Estimated prompt tokens: characters of the text in `messages`,
    /// `prompt`, `input`, `system` and `instructions`, plus the length of
    /// the JSON of `tools`, `functions`, `response_format` and `text` (the
    /// upstream renders these definitions into the prompt), divided by 4
    /// and rounded up (OpenAI's rule of thumb), plus one token per integer
    /// (token arrays), plus the tokens of the images and audio in the
    /// prompt (see [`media`]). Roles, part types, ids and file payloads are
    /// not counted.
    pub prompt_tokens_estimate: u64,
    /// Size of the body in bytes.
    pub body_len: usize,
    /// What the body is: none, JSON (these facts), or one whose facts
    /// cannot be read.
    pub content: Content,
    /// Where `stream_options` is in the body, for
    /// [`request_usage`](crate::usage::request_usage) to edit it without
    /// reading the body again.
    pub(crate) stream_options_at: StreamOptionsAt,
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
    pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

    /// Reads the facts from a JSON body. Not an object, malformed JSON, a
    /// field of the wrong type or given twice → 400 `invalid_request` with
    /// `serde_json`'s words for the problem, at its line and column; a
    /// field at fault is also named in `param`.
    ///
    /// Common bodies are read by a fast path that allocates nothing but the
    /// `model` string; any other body, and every error, by `serde_json`
    /// (see [Reading the body](self#reading-the-body)).
    pub fn from_json(body: &[u8]) -> Result<RequestMeta, ApiError> {
        facts::read(body)
    }

    /// Makes sure `req` carries a `RequestMeta` in its extensions, reading the
    /// body (at most `limit` bytes) when it does not, and putting the bytes back.
    ///
    /// Only bodies that may be JSON are read: methods with a body and a JSON
    /// or missing `content-type`, and `application/x-www-form-urlencoded`
    /// bodies that start with `{` (what `curl -d '{…}'` sends). Others
    /// (multipart uploads, gRPC, …) are not read: their `RequestMeta` has
    /// no facts but its [`content`](RequestMeta::content). Over `limit` →
    /// 413 `payload_too_large`; malformed
    /// JSON → 400 `invalid_request`; a body that fails to arrive → 400.
    ///
    /// [`RequestMeta::content`] says which: [`Content::None`] for a method
    /// without a body or an empty body, [`Content::Json`] for a body read,
    /// [`Content::Unsupported`] for a body of another media type and
    /// [`Content::NotJson`] for a form body that is not a JSON object (both
    /// [unreadable](RequestMeta::is_unreadable)).
    pub async fn read<B>(req: Request<B>, limit: usize) -> Result<Request<B>, ApiError>
    where
        B: Body<Data = Bytes> + FromBytes,
        B::Error: Into<BoxError>,
    {
        ReadMeta::new(req, limit).await
    }

    /// Tokens to reserve for this request: the prompt estimate plus
    /// [`output_tokens_bound`](Self::output_tokens_bound).
    pub fn reserve_tokens(&self, default_max_tokens: u64) -> u64 {
        self.prompt_tokens_estimate
            .saturating_add(self.output_tokens_bound(default_max_tokens))
    }

    /// The most output tokens the request can produce: its cap
    /// ([`max_tokens`](Self::max_tokens), or `default_max_tokens` when it
    /// sets none) for each completion it makes: `n`, or `best_of` when
    /// larger (the upstream generates `best_of` and returns `n`).
    pub fn output_tokens_bound(&self, default_max_tokens: u64) -> u64 {
        self.max_tokens
            .unwrap_or(default_max_tokens)
            .saturating_mul(self.completions())
    }

    /// How many completions the request makes: the larger of `n` and
    /// `best_of`, at least 1.
    pub fn completions(&self) -> u64 {
        self.n.unwrap_or(1).max(self.best_of.unwrap_or(1)).max(1)
    }

    /// Whether the body's facts could not be read: a body of a media type
    /// tollgate does not read (multipart, gRPC, …), or one sent as a form
    /// that is not a JSON object. A request without a body is not.
    pub fn is_unreadable(&self) -> bool {
        matches!(self.content, Content::Unsupported | Content::NotJson)
    }
}

/// What a request's body is, as far as its facts go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Content {
    /// No body: a method without one (`GET`, `DELETE`, …) or an empty body.
    #[default]
    None,
    /// A JSON object: the facts are its.
    Json,
    /// A body of a media type tollgate does not read (`multipart/form-data`,
    /// `application/grpc`, …): it has facts, but they cannot be read.
    Unsupported,
    /// A body sent as `application/x-www-form-urlencoded` that is not a
    /// JSON object (what `curl -d` sends).
    NotJson,
}

/// What a layer that needs a request's facts (to price it, to count its
/// tokens) does with a request whose facts cannot be read
/// ([`RequestMeta::is_unreadable`]): `BudgetLayer::unreadable` and
/// `RateLimitLayer::unreadable`.
///
/// # Why refuse by default
///
/// A layer that lets an unreadable request through lets it through
/// unmetered: a client that sends its chat request as `multipart/form-data`
/// would run up a bill no budget sees and no token limit counts. So such a
/// request is refused, with 415 `unsupported_media_type` for a media type
/// tollgate does not read and 400 `invalid_request` for a form body that
/// is not JSON, each naming the problem. An operator who serves such
/// requests on purpose (audio uploads) reserves a fixed amount for each
/// instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Unreadable {
    /// Refuse it (the default).
    #[default]
    Reject,
    /// Admit it with a fixed reservation: `usd` against each budget (and
    /// charged in full: there is no model to price its usage with), and
    /// `tokens` against each token limit (settled to the usage the response
    /// reports, if any).
    Reserve {
        /// The amount reserved and charged, per request.
        usd: crate::budget::Money,
        /// The tokens reserved, per request.
        tokens: u64,
    },
}

/// The refusal of a request whose facts cannot be read, naming the
/// problem: the media type, or the body that is not JSON.
pub(crate) fn unreadable_error(meta: &RequestMeta, headers: &http::HeaderMap) -> ApiError {
    match meta.content {
        Content::NotJson => ApiError::invalid_request().with_message(
            "The request body is not a JSON object: send the request as JSON \
             (`content-type: application/json`).",
        ),
        _ => {
            let media_type = headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|ct| ct.split(';').next().unwrap_or(ct).trim())
                .filter(|ct| !ct.is_empty() && ct.len() <= 100)
                .unwrap_or("this media type");
            ApiError::invalid_request()
                .with_status(http::StatusCode::UNSUPPORTED_MEDIA_TYPE)
                .with_code("unsupported_media_type")
                .with_message(format!(
                    "Request bodies of type {media_type} cannot be metered on this route: \
                     send the request as JSON (`content-type: application/json`)."
                ))
        }
    }
}

pin_project! {
    /// The future of [`RequestMeta::read`], named so that a layer keeps it
    /// in its own response future instead of boxing it.
    pub(crate) struct ReadMeta<B> {
        #[pin]
        state: ReadState<B>,
        limit: usize,
    }
}

pin_project! {
    #[project = ReadProj]
    enum ReadState<B> {
        // Decided without reading (meta cached, not JSON, declared too large).
        Decided {
            result: Option<Result<Request<B>, ApiError>>,
        },
        // Collecting the body's frames.
        Reading {
            #[pin]
            body: Collect<B>,
            parts: Option<http::request::Parts>,
            sniff: bool,
        },
        Done,
    }
}

impl<B: Body> ReadMeta<B> {
    pub(crate) fn new(req: Request<B>, limit: usize) -> ReadMeta<B> {
        let decided = |result| ReadMeta {
            state: ReadState::Decided {
                result: Some(result),
            },
            limit,
        };
        if req.extensions().get::<RequestMeta>().is_some() {
            return decided(Ok(req));
        }
        let sniff = match body_kind(&req) {
            BodyKind::Json => false,
            BodyKind::Sniff => true,
            BodyKind::Bodiless => {
                let mut req = req;
                req.extensions_mut().insert(RequestMeta::default());
                return decided(Ok(req));
            }
            BodyKind::Other => {
                let mut req = req;
                let content = if req.body().is_end_stream() {
                    Content::None
                } else {
                    Content::Unsupported
                };
                req.extensions_mut().insert(RequestMeta {
                    content,
                    ..RequestMeta::default()
                });
                return decided(Ok(req));
            }
        };
        // A body known to fit (a buffered one) cannot be over the limit,
        // whatever a header says; any other is refused at once when its
        // declared length is.
        let fits = req
            .body()
            .size_hint()
            .upper()
            .is_some_and(|len| len <= limit as u64);
        let declared = || {
            req.headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        if !fits && declared().is_some_and(|len| len > limit as u64) {
            return decided(Err(too_large(limit)));
        }
        let (parts, body) = req.into_parts();
        ReadMeta {
            state: ReadState::Reading {
                body: Collect::new(body, limit),
                parts: Some(parts),
                sniff,
            },
            limit,
        }
    }
}

impl<B> Future for ReadMeta<B>
where
    B: Body<Data = Bytes> + FromBytes,
    B::Error: Into<BoxError>,
{
    type Output = Result<Request<B>, ApiError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let limit = *this.limit;
        let (parts, sniff, bytes) = match this.state.as_mut().project() {
            ReadProj::Decided { result } => {
                return Poll::Ready(result.take().unwrap_or_else(|| Err(ApiError::internal())));
            }
            // Polled after it was done.
            ReadProj::Done => return Poll::Ready(Err(ApiError::internal())),
            ReadProj::Reading { body, parts, sniff } => {
                let bytes = match ready!(body.poll(cx)) {
                    Collected::Complete(bytes) => Ok(bytes),
                    Collected::TooLarge => Err(too_large(limit)),
                    Collected::Failed(e) => Err(body_error(e.into())),
                };
                (parts.take(), *sniff, bytes)
            }
        };
        this.state.set(ReadState::Done);
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(error) => return Poll::Ready(Err(error)),
        };
        let Some(mut parts) = parts else {
            return Poll::Ready(Err(ApiError::internal()));
        };
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        let meta = if first.is_none() {
            RequestMeta::default()
        } else if sniff && first != Some(&b'{') {
            RequestMeta {
                content: Content::NotJson,
                body_len: bytes.len(),
                ..RequestMeta::default()
            }
        } else {
            match RequestMeta::from_json(&bytes) {
                Ok(meta) => meta,
                Err(error) => return Poll::Ready(Err(error)),
            }
        };
        parts.extensions.insert(meta);
        Poll::Ready(Ok(Request::from_parts(parts, B::from_bytes(bytes))))
    }
}

/// A body that failed to arrive: 413 when a limit further out
/// (`tower_http::limit`, `Limited`) cut it, else 400.
fn body_error(e: BoxError) -> ApiError {
    if e.is::<http_body_util::LengthLimitError>() {
        return ApiError::payload_too_large();
    }
    tracing::debug!(error = %e, "request body failed");
    ApiError::invalid_request().with_message("The request body could not be read.")
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
    /// Not ours to read (multipart uploads, gRPC, unknown types): its facts
    /// are unreadable, unless it is empty.
    Other,
    /// A method without a body.
    Bodiless,
}

fn body_kind<B>(req: &Request<B>) -> BodyKind {
    if !matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
        return BodyKind::Bodiless;
    }
    let content_type = req.headers().get(CONTENT_TYPE);
    // What the SDKs send, exactly: visible ASCII, nothing to trim or
    // decode, JSON. Any other value takes the general reading below.
    if content_type.is_some_and(|v| v.as_bytes() == b"application/json") {
        return BodyKind::Json;
    }
    match content_type.map(|v| v.to_str()) {
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

mod facts;
pub mod media;
#[cfg(test)]
mod tests;
