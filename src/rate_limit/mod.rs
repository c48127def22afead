//! Requests and tokens per window, per key: the quotas a provider sells
//! ("60 requests per minute, 150,000 tokens per minute"), enforced by the
//! gateway before a request costs anything upstream.
//!
//! An operator hands out keys and wants each to get its share: no key may
//! starve the others of the upstream's capacity, no key may run up a bill by
//! looping, and a client told to slow down must learn exactly when it may
//! retry. [`RateLimitLayer`] admits or refuses every request against the
//! limits of its key, counts tokens as well as requests (reserved before the
//! call, settled to the real usage after it), caps requests in flight, and
//! tells clients where they stand in the headers their SDKs already read.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use tollgate::auth::{KeyHash, KeyRecord, Principal};
//! use tollgate::rate_limit::{Limit, RateLimitLayer};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let mut service = ServiceBuilder::new()
//!     .layer(
//!         RateLimitLayer::new()
//!             .limit(Limit::requests_per_minute(2))
//!             .limit(Limit::tokens_per_minute(150_000)),
//!     )
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("{}"))))
//!     }));
//!
//! // `AuthLayer` puts the caller's `Principal` in the extensions; here by hand.
//! let alice = Principal::new(KeyRecord::new("alice", KeyHash([0; 32])));
//! let request = || {
//!     let mut req = Request::post("/v1/chat/completions")
//!         .body(Full::new(Bytes::from(r#"{"model":"gpt-4o","max_tokens":100}"#)))
//!         .unwrap();
//!     req.extensions_mut().insert(alice.clone());
//!     req
//! };
//!
//! let first = service.ready().await?.call(request()).await?;
//! assert_eq!(first.status(), StatusCode::OK);
//! assert_eq!(first.headers()["x-ratelimit-remaining-requests"], "1");
//! assert_eq!(first.headers()["x-ratelimit-remaining-tokens"], "149900");
//! service.ready().await?.call(request()).await?;
//!
//! let third = service.ready().await?.call(request()).await?;
//! assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(third.headers()["retry-after"], "30");
//! let body = third.into_body().collect().await?.to_bytes();
//! assert!(std::str::from_utf8(&body)?.contains("Rate limit exceeded: 2 requests per minute"));
//! # Ok(())
//! # }
//! ```
//!
//! # Limits and keys
//!
//! A key has any number of [`Limit`]s, each `amount` of [`Measure::Requests`]
//! or [`Measure::Tokens`] per `window` (a second, a minute, an hour, a day,
//! or any duration), and optionally a cap on requests in flight. They come
//! from the caller's key record ([`Principal::rate_limits`],
//! [`Principal::max_concurrent`]); a record that sets none gets the layer's
//! defaults ([`RateLimitLayer::limit`], [`RateLimitLayer::max_concurrent`]).
//! A request is admitted only if every limit of its key admits it; a refused
//! request consumes nothing.
//!
//! Requests are keyed by the `Principal`'s key id ([`PrincipalKey`]), or by
//! any [`KeyExtractor`]: a header ([`HeaderKey`]), the client's address, any
//! closure. Requests without a key share the key `"anonymous"` by default, or
//! pass ([`Unkeyed`]). With [`RateLimitLayer::per_model`], each (key, model)
//! pair has its own state: 60 requests per minute per model.
//!
//! [`Principal::rate_limits`]: crate::Principal::rate_limits
//! [`Principal::max_concurrent`]: crate::Principal::max_concurrent
//!
//! # The algorithm: GCRA
//!
//! Each limit is a GCRA (generic cell rate algorithm) over the store's clock:
//! one number per key and limit, the time at which the limit would be full
//! again. A key may spend its whole limit at once (the burst), then capacity
//! refills smoothly, `amount / window` at a time: a 60-per-minute key gets
//! one more request every second, not 60 more at the top of each minute.
//!
//! **The guarantee**: over any span of time `L`, a limit admits at most
//! `amount + ⌈amount · L / window⌉`. Within one window that is up to twice
//! the limit (a full burst, then the refill spent as it comes), and over long
//! spans it tends to exactly the rate. The arithmetic is in integers with no
//! rounding drift: 7 per minute admits exactly 7 at once and one every
//! 8.571429 s after.
//!
//! **Why GCRA and not fixed windows?** A fixed window resets on the minute:
//! a client can send 60 requests at 12:00:59 and 60 more at 12:01:00, and
//! every client that was told "wait" retries at the same instant. A sliding
//! log is exact but keeps a timestamp per request. GCRA gives a smooth rate
//! with one integer of state and an exact time at which the next request
//! will fit, which is what `Retry-After` needs.
//!
//! # Tokens: reserve, then settle
//!
//! A token limit is checked when the request arrives, against an estimate:
//! the prompt's estimate from [`RequestMeta`](crate::RequestMeta) plus its
//! `max_tokens` (or [`RateLimitLayer::default_max_tokens`], 4096 by default,
//! when it sets none). When the response's body ends, fails or is dropped,
//! the usage observer ([`crate::usage::observe`]) reports what was used, and
//! the difference is refunded, or charged when the response used more than
//! reserved (the key then waits out the debt). A request that fails before a
//! response is refunded in full.
//!
//! **Why reserve?** Checked only after the fact, a token limit lets any
//! number of concurrent requests through while the counter still shows room:
//! a key allowed 10,000 tokens per minute could start fifty 4,000-token
//! completions at once. Reserving the worst case keeps the limit a limit;
//! settling keeps honest clients from paying for tokens they did not use.
//!
//! A request whose estimate alone exceeds a token limit can never be
//! admitted: it is refused at once with 429, `x-should-retry: false`, and
//! "Request too large: 5002 tokens requested, limit 1000 per minute".
//!
//! # Rejections and headers
//!
//! A refused request gets 429 `rate_limit_error` / `rate_limit_exceeded`
//! naming the limit that refused ("Rate limit exceeded: 60 requests per
//! minute"), with `Retry-After` in whole seconds rounded up (never 0) and
//! `retry-after-ms`: the exact time after which the same request fits. The
//! [`ApiError`](crate::ApiError) rides in the response extensions, so an outer
//! [`ErrorEnvelopeLayer`](crate::ErrorEnvelopeLayer) can re-render it.
//!
//! Every response of a limited key, admitted or refused, carries rate-limit
//! headers in the chosen [`HeaderStyle`] (OpenAI's `x-ratelimit-*` by
//! default). They are computed at admission and set on the response head, so
//! a streamed response has them before its first event.
//!
//! # Concurrency
//!
//! With a concurrency limit, an admitted request holds a slot until its
//! response body ends or is dropped, so a long stream holds it to its last
//! event and a client that hangs up frees it at once. A request over the
//! limit is refused with 429 and a `Retry-After` of
//! [`RateLimitLayer::concurrency_retry_after`] (1 s by default).
//!
//! # Shadow mode
//!
//! [`RateLimitLayer::shadow`] counts and sends headers as usual but refuses
//! nothing: each request that would have been refused is logged (`tracing`,
//! `warn`) with its key and the limit. **Why?** New limits meet real traffic
//! for the first time in production; shadow mode shows who they would have
//! refused before anyone is refused.
//!
//! # Stores and failures
//!
//! State lives in a [`RateLimitStore`]: one round trip per admission ("check
//! and charge these limits, all or nothing") and one per settlement ("adjust
//! by this delta, free the slot"). [`MemoryRateLimitStore`] (the default) is
//! sharded and bounded; its docs say how. Every service the layer builds, and
//! every clone of them, shares the layer's store, so limits do not multiply
//! with the number of clones a server makes.
//!
//! When the store fails, the layer admits by default
//! ([`FailurePolicy::FailOpen`]) and logs the failure, or refuses with 503
//! ([`FailurePolicy::FailClosed`]). **Why fail open?** A rate limit protects
//! capacity; turning a store outage into a full outage protects nothing.
//!
//! [`MemoryRateLimitStore`]: crate::store::memory::MemoryRateLimitStore

mod body;
pub(crate) mod cell;
pub(crate) mod fixed;
pub mod future;
pub(crate) mod gcra;
mod headers;
mod key;
mod layer;
mod limit;
mod permit;
mod scope;
mod service;
pub(crate) mod sliding;
mod store;

pub use self::body::ResponseBody;
pub use self::future::ResponseFuture;
pub use self::headers::{HeaderStyle, format_duration};
pub use self::key::{HeaderKey, KeyExtractor, PrincipalKey, Unkeyed};
pub use self::layer::{FailurePolicy, RateLimitLayer};
pub use self::limit::{Algorithm, Limit, Measure};
pub use self::scope::{ModelLimits, ScopeLimits, Upstream};
pub use self::service::RateLimit;
pub use self::store::{
    Acquire, Admission, LimitState, LimitStates, RateLimitKey, RateLimitStore, ScopeCharge,
    ScopeSettle, Settle, Verdict,
};
