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
//!   [`max_request_body`](RetryLayer::max_request_body), 16 MiB by default)
//!   and rebuilt for each attempt with [`FromBytes`](crate::request::FromBytes)
//!   (`Full<Bytes>`, boxed bodies, axum and tonic bodies). A body whose size
//!   hint says it may be larger than the cap, or has no upper bound (a
//!   chunked stream), is **sent once, as it is, and never retried**: holding
//!   an unbounded stream in memory to replay it is not a trade a client
//!   should make silently. A body that fails while being read is answered
//!   with a 400 [`ApiError`](crate::ApiError) without calling the upstream.
//! - **Classifies each attempt** with a [`Classify`] ([`DefaultClassifier`]
//!   unless set): status, headers, and up to
//!   [`max_error_body`](RetryLayer::max_error_body) of an error body parsed
//!   with [`envelope::parse`](crate::envelope::parse). The decision is made
//!   at the response head; nothing is retried once the caller has seen a byte.
//! - **Peeks at event streams.** For a `200 text/event-stream` response, the
//!   first event is read before the response is returned (bounded by
//!   `max_error_body` bytes and [`peek_timeout`](RetryLayer::peek_timeout)).
//!   An in-band error there (OpenAI `data: {"error":…}`, Anthropic
//!   `event: error`) is retried like an error status; otherwise the response
//!   is returned with the peeked bytes in front of the rest of the stream, so
//!   the caller loses nothing. An error later in the stream is the caller's:
//!   part of the answer has been delivered and a retry would repeat it.
//! - **Waits** the server's delay ([`hints`]) or an exponential backoff with
//!   [full jitter](ExponentialBackoff#why-full-jitter), within the [`RetryPolicy`]'s attempts, deadline and cap on
//!   server delays, and only while the shared [`RetryBudget`] allows.
//! - **Marks** each retried attempt with `x-retry-count: N` (1 for the first
//!   retry), so the upstream (or a gateway's logs) can tell, and the final
//!   response with a [`RetryInfo`] extension (also when nothing was retried).
//!   Every retry is a `tracing` event at `INFO` with the kind, the class and
//!   the delay; every give-up with its reason at `DEBUG` (budget exhaustion
//!   at `WARN`).
//! - When it stops retrying, it returns the **last response or error as it
//!   is**: the layer's error type is the inner service's.
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
//! up to 3 × 3 attempts. Put `RetryLayer` on the upstream client only, and
//! tell SDK clients not to repeat what was already retried: the
//! [`RetryInfo`] extension says how many attempts were made.

mod backoff;
mod body;
mod budget;
mod classify;
mod future;
pub mod hints;
mod layer;
mod policy;
mod service;

use std::time::Duration;

use http::HeaderName;

pub use self::backoff::ExponentialBackoff;
pub use self::body::{Peeked, ResponseBody};
pub use self::budget::RetryBudget;
pub use self::classify::{Classification, Classify, DefaultClassifier, Outcome};
pub use self::future::ResponseFuture;
pub use self::layer::RetryLayer;
pub use self::policy::RetryPolicy;
pub use self::service::Retry;

/// `x-retry-count`: set on every retried attempt, `1` for the first retry.
pub const X_RETRY_COUNT: HeaderName = HeaderName::from_static("x-retry-count");

/// What the retry loop did, in the final response's extensions (also when
/// nothing was retried; an inner error returned as is carries none).
///
/// ```
/// # use tollgate::retry::RetryInfo;
/// # fn f(response: http::Response<()>) {
/// if let Some(info) = response.extensions().get::<RetryInfo>() {
///     println!("{} attempts, {:?} waiting", info.attempts, info.total_wait);
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
