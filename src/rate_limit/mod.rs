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
//! // The first request leaves the (sliding) minute after 61 s: its bucket
//! // is a second wide.
//! assert_eq!(third.headers()["retry-after"], "61");
//! let body = third.into_body().collect().await?.to_bytes();
//! assert!(std::str::from_utf8(&body)?.contains("Rate limit exceeded: 2 requests per minute"));
//! # Ok(())
//! # }
//! ```
//!
//! # Limits, keys and scopes
//!
//! A limit is `amount` of [`Measure::Requests`] or [`Measure::Tokens`] per
//! `window` (a second, a minute, an hour, a day, or any duration), counted
//! with an [`Algorithm`]. A request counts against every scope it belongs
//! to, and is admitted only if every limit of every scope admits it; a
//! refused request consumes nothing, anywhere:
//!
//! | scope | limits from | shared by |
//! |---|---|---|
//! | the key | [`Principal::rate_limits`], [`Principal::max_concurrent`], or the layer's defaults ([`RateLimitLayer::limit`], [`RateLimitLayer::max_concurrent`]) | that key |
//! | the key and model | [`KeyRecord::model_limits`](crate::auth::KeyRecord::model_limits) (`model = "gpt-4o*"`, first match; each model has its own count) | that key |
//! | the model | [`RateLimitLayer::model_limit`], [`RateLimitLayer::model_max_concurrent`]: the upstream's own capacity | every key |
//! | the upstream | [`RateLimitLayer::upstream_limit`], by the request's [`Upstream`] extension or [`RateLimitLayer::upstream_for`] | every key and model |
//! | a named scope | [`KeyRecord::scope_limits`](crate::auth::KeyRecord::scope_limits) (`team = acme`, …) | every key naming it |
//!
//! A refusal names the limit that refused and its scope ("Rate limit
//! exceeded: 60 requests per minute for model gpt-4o-mini"); the headers
//! describe the tightest limit. Scope names are data
//! ([`RateLimitKey::scope`]): a new kind of scope needs no new code.
//!
//! Requests are keyed by the `Principal`'s key id ([`PrincipalKey`]), or by
//! any [`ExtractLimitKey`]: a header ([`HeaderKey`]), the client's address, any
//! closure. Requests without a key share the key `"anonymous"` by default, or
//! pass ([`Unkeyed`]). With [`RateLimitLayer::per_model`], the key's own
//! limits are counted per (key, model): 60 requests per minute per model.
//!
//! State is kept per scope and per limit's measure, window and algorithm,
//! never by its amount: raising or lowering a limit (a reload, an admin
//! edit) keeps what was already used, and two gateway instances configured
//! differently for one key each enforce their own limit on one shared count.
//!
//! [`Principal::rate_limits`]: crate::Principal::rate_limits
//! [`Principal::max_concurrent`]: crate::Principal::max_concurrent
//!
//! # Choosing an algorithm
//!
//! | [`Algorithm`] | in any interval of one window | state per key and limit | "reset" |
//! |---|---|---|---|
//! | [`Sliding`](Algorithm::Sliding) (default) | **at most `amount`**; refuses at most `window / 60` early | up to 61 buckets (16 bytes each, only those used) | when the next unit frees up |
//! | [`Gcra`](Algorithm::Gcra) | up to `burst + amount` (twice the amount with the default burst) | two integers | when the limit is full again |
//! | [`Fixed`](Algorithm::Fixed) | up to twice the amount, across a window's edge | two integers | the window's end (UTC minute, hour, day) |
//!
//! **Why sliding by default?** "60 requests per minute" is read literally:
//! at most 60 in any minute. A client that tests its limit the way the
//! HiveOps guide does (65 requests 0.1 s apart) expects its 61st request to
//! be refused; GCRA lets a whole burst of 60 through and then one a second,
//! so that test never sees a 429 and about 120 requests pass in the first
//! minute. A sliding window admits 60 and refuses the 61st.
//!
//! **Why buckets and not a log?** An exact sliding log keeps a timestamp for
//! every request of the window: memory grows with the amount (10,000
//! requests a day is 80 KB per key) and with traffic, and a store's worst
//! case is then set by whoever configures the biggest limit. Sixty buckets
//! per window bound the state at 61 `(bucket, count)` pairs whatever the
//! amount, keep the guarantee that matters (never more than `amount` in any
//! window; the property tests check it over random arrival times and
//! costs), and cost at most a 60th of the window in leniency: a request is
//! counted until its bucket leaves, at most a second late for a per-minute
//! limit. That is exact enough for requests and tokens alike, and one
//! design for both keeps the Lua scripts and the memory store the same.
//!
//! **Why keep GCRA?** Smoothness: with `burst = 1` it spaces requests
//! evenly, `window / amount` apart, which protects an upstream that cannot
//! take bursts; with the default burst it is what tollgate did before, with
//! the least state. **Why fixed windows?** Some providers reset on the
//! minute and clients (or contracts) expect that; a fixed window also
//! forgets everything at its end, and a sliding one does not.
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
//! minute", or "… per hour" as in the virtual-key guide's "100
//! requests/hour"), with `Retry-After` in whole seconds rounded up (never 0) and
//! `retry-after-ms`: the exact time after which the same request fits. The
//! [`ApiError`](crate::ApiError) rides in the response extensions, so an outer
//! [`ErrorEnvelopeLayer`](crate::ErrorEnvelopeLayer) can re-render it.
//!
//! Every response of a limited key, admitted or refused, carries rate-limit
//! headers in the chosen [`HeaderStyle`] (OpenAI's `x-ratelimit-*` by
//! default; `legacy` for the unsuffixed `X-RateLimit-Remaining` and
//! `X-RateLimit-Reset` that many clients read). They are computed at admission and set on the response head, so
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
//! and charge these limits of these scopes, all or nothing") and one per
//! settlement ("adjust by this delta, free the slots"). [`MemoryRateLimitStore`] (the default) is
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
pub(crate) mod layer;
mod limit;
mod permit;
mod scope;
pub(crate) mod service;
pub(crate) mod sliding;
mod store;

pub use self::body::ResponseBody;
pub use self::future::ResponseFuture;
pub use self::headers::{HeaderStyle, format_duration};
pub use self::key::{ExtractLimitKey, HeaderKey, PrincipalKey, Unkeyed};
pub use self::layer::{FailurePolicy, RateLimitLayer};
pub use self::limit::{Algorithm, Limit, Measure};
pub use self::scope::{ModelLimits, ScopeLimits, Upstream};
pub use self::service::RateLimit;
pub use self::store::{
    Acquire, Admission, LimitState, LimitStates, RateLimitKey, RateLimitStore, Receipt,
    ScopeCharge, ScopeSettle, Settle, Verdict,
};
