//! Retries that help, and only those: [`RetryLayer`] for any tower HTTP client.
//!
//! Every provider's documentation asks its users to write the same loop:
//! never retry a 400, 401 or 403; back off exponentially on a 500 or 503;
//! honour `Retry-After` on a 429. Hand-written loops get it wrong in known
//! ways: they retry `insufficient_quota` 429s that can never succeed, ignore
//! `retry-after-ms` and HTTP-dates, retry without jitter or cap, multiply the
//! load on a provider that is already down, and cannot replay a streaming
//! body. [`RetryLayer`] owns the whole loop, once, around any
//! `Service<http::Request<B>, Response = http::Response<R>>`: hyper-util's
//! legacy `Client`, the [`reqwest` adapter](crate::client), or another tower
//! stack.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tollgate::retry::{RetryInfo, RetryLayer};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // An upstream that is overloaded twice, then answers.
//! let calls = Arc::new(AtomicU32::new(0));
//! let upstream = service_fn(move |req: Request<Full<Bytes>>| {
//!     let n = calls.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         let retry_count = req.headers().get("x-retry-count").cloned();
//!         assert_eq!(retry_count.is_some(), n > 0);
//!         let status = if n < 2 { 503 } else { 200 };
//!         Ok::<_, Infallible>(
//!             Response::builder()
//!                 .status(status)
//!                 .header("retry-after-ms", "250")
//!                 .body(Full::new(Bytes::from_static(b"{}")))
//!                 .unwrap(),
//!         )
//!     }
//! });
//!
//! let mut client = ServiceBuilder::new()
//!     .layer(RetryLayer::new())
//!     .service(upstream);
//!
//! let request = Request::post("http://upstream.example/v1/chat/completions")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from(r#"{"model":"gpt-4o","messages":[]}"#)))?;
//! let response = client.ready().await?.call(request).await?;
//!
//! assert_eq!(response.status(), StatusCode::OK);
//! let info = response.extensions().get::<RetryInfo>().unwrap();
//! assert_eq!(info.attempts, 3);
//! assert_eq!(info.total_wait, Duration::from_millis(500)); // the server's 250 ms, twice
//! # Ok(())
//! # }
//! ```
//!
//! # What the layer does
//!
//! - **Replays the request.** The body is read into memory (up to
//!   [`max_request_body_bytes`](RetryLayer::max_request_body_bytes), 16 MiB by default)
//!   and rebuilt for each attempt with [`FromBytes`](crate::request::FromBytes)
//!   (`Full<Bytes>`, boxed bodies, axum and tonic bodies). A body whose size
//!   hint says it may be larger than the cap, or has no upper bound (a
//!   chunked stream), is **sent once, as it is, and never retried**: holding
//!   an unbounded stream in memory to replay it is not a trade a client
//!   should make silently. A body that fails while being read is answered
//!   with a 400 [`ApiError`] without calling the upstream.
//! - **Classifies each attempt** with a [`Classify`] ([`DefaultClassifier`]
//!   unless set): status, headers, and up to
//!   [`max_error_body_bytes`](RetryLayer::max_error_body_bytes) of an error body parsed
//!   with [`envelope::parse`](crate::envelope::parse). The decision is made
//!   at the response head; nothing is retried once the caller has seen a byte.
//! - **Peeks at event streams.** For a `200 text/event-stream` response, the
//!   first event is read before the response is returned (bounded by
//!   `max_error_body_bytes` bytes and [`peek_timeout`](RetryLayer::peek_timeout)).
//!   An in-band error there (OpenAI `data: {"error":…}`, Anthropic
//!   `event: error`) is retried like an error status; otherwise the response
//!   is returned with the peeked bytes in front of the rest of the stream, so
//!   the caller loses nothing. An error later in the stream is the caller's:
//!   part of the answer has been delivered and a retry would repeat it.
//! - **Reads gRPC status** in the headers of a trailers-only response, or,
//!   for a `200 application/grpc` response without one, in the trailers when
//!   they come before the first message.
//! - **Times each attempt** ([`RetryPolicy::attempt_timeout`], 30 s by
//!   default) up to its response head, and **classifies transport
//!   failures** ([`TransportFailure`]): a connect error (nothing was sent)
//!   is retried; a timeout or a reset after the request was sent only for a
//!   [replay-safe](RetryPolicy::replay_safe) request (a stream before its
//!   first byte, embeddings, an idempotent method, or what the policy says),
//!   since the upstream may have done, and billed, the work. An attempt that
//!   timed out and is not retried is answered with a 504 that says
//!   `x-should-retry: false`.
//! - **Waits** the server's delay ([`hints`]) or the backoff of the failure's
//!   kind (HiveOps' schedules by default, [full jitter](ExponentialBackoff#why-full-jitter-by-default)
//!   as an option), within the [`RetryPolicy`]'s attempts, deadline and cap on
//!   server delays, and only while the shared [`RetryBudget`] allows.
//! - **Sends one `Idempotency-Key`** per logical `POST` (unless the caller
//!   set one), the same on every attempt ([`RetryLayer::idempotency_key`]).
//! - **Marks** each retried attempt with `x-retry-count: N` (1 for the first
//!   retry), so the upstream (or a gateway's logs) can tell, and the final
//!   response with a [`RetryInfo`] extension (also when nothing was retried),
//!   which says whether the failure was retried to the limit.
//!   Every retry is a `tracing` event at `INFO` with the kind, the class and
//!   the delay; every give-up with its reason at `DEBUG` (budget exhaustion
//!   at `WARN`).
//! - When it stops retrying, it returns the **last response or error as it
//!   is**: the layer's error type is the inner service's.
//!
//! # A provider's own schedule
//!
//! The defaults are the HiveOps guide's (000-hiveops-errors.txt). Its
//! `robust_api_call` template, five attempts for rate limits and three for
//! server errors, is a few lines:
//!
//! ```
//! use std::time::Duration;
//! use tollgate::ErrorKind;
//! use tollgate::retry::{ExponentialBackoff, Jitter, RetryLayer, RetryPolicy};
//!
//! # fn main() -> Result<(), tollgate::retry::ConfigError> {
//! let hiveops = RetryPolicy::new()
//!     .max_attempts(5) // `max_retries=5`
//!     // 429: `wait_time = (2 ** attempt) + random.uniform(0, 1)`
//!     .backoff_for(ErrorKind::RateLimited, ExponentialBackoff::new(Duration::from_secs(1), Duration::from_secs(8))?
//!         .with_jitter(Jitter::Additive(Duration::from_secs(1))))
//!     // 500, 503: `wait_time = 2 ** attempt`, and only three tries
//!     .backoff_for(ErrorKind::Internal, ExponentialBackoff::SERVER_ERRORS)
//!     .backoff_for(ErrorKind::Unavailable, ExponentialBackoff::SERVER_ERRORS)
//!     .attempts_for(ErrorKind::Internal, 3)
//!     .attempts_for(ErrorKind::Unavailable, 3)
//!     .attempt_timeout(Duration::from_secs(30)); // `timeout=30`
//! let layer = RetryLayer::new().policy(hiveops);
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```
//!
//! Authentication errors and `insufficient_balance` are never retried, as
//! the template asks: that is the classifier's default.
//!
//! # Why classes?
//!
//! See [`Classify`](Classify#why-classes) for the long form. In short:
//! retrying a failure that will fail again costs money, quota and latency and
//! helps nobody, so each failure gets an [`ErrorKind`](crate::ErrorKind) and a
//! [`RetryClass`](crate::RetryClass) (never, after the server's delay,
//! transient), and only the last two are retried.
//!
//! # Why budgets?
//!
//! Attempts bound one request; a budget bounds the fleet. During an outage
//! every request fails, and three attempts each would triple the load on a
//! provider that is trying to recover. The [`RetryBudget`], shared by every
//! clone of the service, lets retries add at most 20 % to recent traffic
//! (plus a floor of 10 per second), so a blip is retried in full and an
//! outage fails fast. More in [`RetryBudget`](RetryBudget#why-budgets-and-not-only-max-attempts).
//!
//! # Why a deadline?
//!
//! Attempts times timeouts plus server delays can add up to minutes. The
//! deadline ([`RetryPolicy::deadline`], 10 minutes by default) caps the whole
//! loop: the layer never sleeps past it and returns the last failure instead.
//! More in [`RetryPolicy`](RetryPolicy#why-a-deadline).
//!
//! # Retries in a gateway
//!
//! A gateway that retries upstream and serves SDKs that also retry would make
//! up to 3 × 3 attempts (the stacking LiteLLM users reported). Put
//! `RetryLayer` on the upstream client only, and tell SDK clients not to
//! repeat what was already retried: relay the [`RetryInfo`] extension with
//! the response, and [`ErrorEnvelopeLayer`](crate::envelope::ErrorEnvelopeLayer)
//! answers a failure [retried to the limit](RetryInfo::exhausted) with
//! `x-should-retry: false` and no `retry-after` ([`RetryInfo::advise`] does
//! the same for a gateway that builds its own answer).
//!
//! The gateway's own credentials failing upstream (a 401, a 403, a quota
//! 429) is not the tenant's fault, and relaying it as is makes the tenant's
//! SDK blame the tenant's key: [`UpstreamFault`] recognises it and gives
//! the 502 or 503 to answer instead.

mod backoff;
mod body;
mod budget;
mod classify;
pub mod future;
pub mod hints;
mod layer;
mod policy;
mod service;
mod transport;
mod upstream;

use std::time::Duration;

use http::HeaderName;

use crate::ApiError;

pub use self::backoff::{ExponentialBackoff, Jitter};
pub use self::body::{Peeked, ResponseBody};
pub use self::budget::RetryBudget;
pub use self::classify::{Classification, Classify, DefaultClassifier, Outcome};
pub use self::layer::RetryLayer;
pub use self::policy::RetryPolicy;
pub use self::service::Retry;
pub use self::transport::TransportFailure;
pub use self::upstream::UpstreamFault;

/// `x-retry-count`: set on every retried attempt, `1` for the first retry.
pub const X_RETRY_COUNT: HeaderName = HeaderName::from_static("x-retry-count");

/// What the retry loop did, in the final response's extensions (also when
/// nothing was retried; an inner error returned as is carries none).
///
/// A gateway that relays an upstream's failure must not invite its clients
/// to retry what it already retried: the official SDKs retry twice by
/// default, so three gateway attempts would become up to nine upstream calls.
/// [`exhausted`](Self::exhausted) says the failure was retried to the
/// policy's limit, and [`advise`](Self::advise) turns the error relayed to
/// the client into one that says so (`x-should-retry: false`, no
/// `retry-after`). [`ErrorEnvelopeLayer`](crate::envelope::ErrorEnvelopeLayer)
/// does this by itself for an error response that carries a `RetryInfo`.
///
/// ```
/// use tollgate::ApiError;
/// use tollgate::retry::RetryInfo;
/// # fn f(response: http::Response<()>, upstream_error: ApiError) -> ApiError {
/// let info = response.extensions().get::<RetryInfo>();
/// if let Some(info) = info {
///     println!("{} attempts, {:?} waiting", info.attempts, info.total_wait);
/// }
/// // What the client is told: not to retry a failure retried to the limit.
/// match info {
///     Some(info) => info.advise(upstream_error),
///     None => upstream_error,
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryInfo {
    /// Attempts made, the first included (1 when nothing was retried).
    pub attempts: u32,
    /// Time spent sleeping between attempts.
    pub total_wait: Duration,
    /// The response is a failure that was retryable but got no further
    /// attempt because the policy's attempts, its deadline or the retry
    /// budget ran out. Whoever relays it must not have it retried again.
    /// `false` for a success, a failure that is not retryable, one whose
    /// server asked for a delay longer than the policy honours (the client
    /// may wait it out), and a request the layer could not replay.
    pub exhausted: bool,
}

impl RetryInfo {
    /// `error` as the client should see it: unchanged, or, when the failure
    /// was retried to the limit ([`exhausted`](Self::exhausted)), with
    /// `x-should-retry: false` and without the upstream's delay.
    pub fn advise(&self, error: ApiError) -> ApiError {
        if self.exhausted {
            error.with_should_retry(false).without_retry_after()
        } else {
            error
        }
    }
}

/// A retry configuration that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The backoff starts above its own maximum.
    #[error("the backoff's initial delay ({initial:?}) is longer than its maximum ({max:?})")]
    Backoff {
        /// The initial delay given.
        initial: Duration,
        /// The maximum given.
        max: Duration,
    },
    /// The budget's window is outside 1 s to 60 s.
    #[error("the retry budget's window must be between 1 s and 60 s, not {0:?}")]
    BudgetTtl(Duration),
    /// The budget's percentage is negative, above 1000 or not a number.
    #[error("the retry budget's percentage must be between 0 and 1000, not {0}")]
    BudgetPercent(f32),
}
