use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::body::ResponseBody;
use super::future::{Admitted, ResponseFuture, State};
use super::layer::{Config, FailurePolicy};
use super::permit::{KeyId, LimitSet, Permit, Settler, StoreSettler};
use super::{
    Acquire, Admission, HeaderStyle, KeyExtractor, Limit, LimitState, Measure, PrincipalKey,
    RateLimitKey, RateLimitStore, Unkeyed, Verdict,
};
use crate::request::{FromBytes, ReadMeta};
use crate::small::Small;
use crate::store::StoreError;
use crate::store::memory::MemoryRateLimitStore;
use crate::usage::UsageOptions;
use crate::{ApiError, BoxError, Principal, RequestMeta};

/// What every clone of a [`RateLimit`] service shares.
pub(crate) struct Shared<St, K> {
    pub(crate) config: Config,
    pub(crate) store: St,
    pub(crate) extractor: K,
    pub(crate) settler: Arc<dyn Settler>,
}

/// Limits requests and tokens per key; built by
/// [`RateLimitLayer`](super::RateLimitLayer).
pub struct RateLimit<S, St = MemoryRateLimitStore, K = PrincipalKey> {
    inner: S,
    shared: Arc<Shared<St, K>>,
}

impl<S, St, K> RateLimit<S, St, K> {
    pub(crate) fn from_parts(inner: S, shared: Arc<Shared<St, K>>) -> Self {
        RateLimit { inner, shared }
    }

    crate::macros::define_inner_service_accessors!();
}

impl<S: Clone, St, K> Clone for RateLimit<S, St, K> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, St: fmt::Debug, K> fmt::Debug for RateLimit<S, St, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("limits", &self.shared.config.limits)
            .field("store", &self.shared.store)
            .field("extractor", &std::any::type_name::<K>())
            .finish_non_exhaustive()
    }
}

impl<S, St, K, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, St, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    St: RateLimitStore,
    K: KeyExtractor<ReqBody>,
    ReqBody: Body<Data = Bytes> + FromBytes + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, St, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The readied service goes with the request; its clone stays.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let state = begin(&self.shared, req, service, false);
        ResponseFuture::new(self.shared.clone(), state)
    }
}

/// What an admission charges, kept until the store answers.
pub(crate) struct Plan {
    key: KeyId,
    model: Option<String>,
    limits: LimitSet,
    costs: Costs,
    reserved_tokens: u64,
    max_concurrent: Option<u32>,
    usage: UsageOptions,
}

impl<St, K> Shared<St, K> {
    pub(crate) fn new(config: Config, store: St, extractor: K) -> Self
    where
        St: RateLimitStore + Clone,
    {
        Shared {
            settler: Arc::new(StoreSettler(store.clone())),
            config,
            store,
            extractor,
        }
    }
}

/// Decides what a request needs: nothing, its `RequestMeta`, or the store.
pub(crate) fn begin<S, St, K, B>(
    shared: &Shared<St, K>,
    req: Request<B>,
    service: S,
    meta_read: bool,
) -> State<S, B, St>
where
    S: Service<Request<B>>,
    St: RateLimitStore,
    K: KeyExtractor<B>,
    B: Body<Data = Bytes> + FromBytes + Send + 'static,
    B::Error: Into<BoxError>,
{
    let config = &shared.config;
    let principal = req.extensions().get::<Principal>();
    let (key, limits, max_concurrent) = match shared.extractor.extract(&req) {
        Some(key) => {
            let limits = match principal {
                Some(p) if !p.rate_limits().is_empty() => LimitSet::Principal(p.clone()),
                _ => LimitSet::Layer(config.limits.clone()),
            };
            let max_concurrent = principal
                .and_then(Principal::max_concurrent)
                .or(config.max_concurrent);
            (key, limits, max_concurrent)
        }
        None => match &config.unkeyed {
            Unkeyed::Shared(key) => (
                Cow::Borrowed(&**key),
                LimitSet::Layer(config.limits.clone()),
                config.max_concurrent,
            ),
            Unkeyed::Pass => return State::call(service, req, None),
        },
    };
    if limits.as_slice().is_empty() && max_concurrent.is_none() {
        return State::call(service, req, None);
    }
    let has_tokens = limits
        .as_slice()
        .iter()
        .any(|l| l.measure == Measure::Tokens);
    let meta = req.extensions().get::<RequestMeta>();
    if (has_tokens || config.per_model) && meta.is_none() && !meta_read {
        let max_body = config.max_body;
        return State::meta(ReadMeta::new(req, max_body), service);
    }
    let reserved_tokens = match meta {
        Some(meta) if has_tokens && meta.body_len > 0 => {
            meta.reserve_tokens(config.default_max_tokens)
        }
        _ => 0,
    };
    let model = if config.per_model {
        meta.and_then(|m| m.model.clone())
    } else {
        None
    };
    let costs = Costs::new(limits.as_slice(), reserved_tokens);
    let future = shared.store.acquire(
        RateLimitKey {
            id: &key,
            model: model.as_deref(),
        },
        &Acquire {
            limits: limits.as_slice(),
            costs: costs.as_slice(),
            max_concurrent,
        },
    );
    let usage = meta.map(UsageOptions::from_meta).unwrap_or_default();
    // The caller's key id is kept as its `Principal` (a reference count),
    // not copied.
    let key = match key {
        Cow::Borrowed(id) => match principal {
            Some(p) if std::ptr::eq(id, p.key_id()) => KeyId::Principal(p.clone()),
            _ => match &config.unkeyed {
                Unkeyed::Shared(Cow::Borrowed(shared)) if std::ptr::eq(id, *shared) => {
                    KeyId::Static(shared)
                }
                _ => KeyId::Owned(id.into()),
            },
        },
        Cow::Owned(id) => KeyId::Owned(id.into_boxed_str()),
    };
    let plan = Plan {
        key,
        model,
        limits,
        costs,
        reserved_tokens,
        max_concurrent,
        usage,
    };
    // Polled once here, with no waker to wake: a store that answers at once
    // (memory) is decided now, and the inner service called, without the
    // `Acquire` state. One that must wait is polled again, with the task's
    // waker, by the response future.
    let mut future = future;
    match Pin::new(&mut future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => decide(shared, result, req, service, plan),
        Poll::Pending => State::acquire(future, req, service, plan),
    }
}

/// Turns the store's answer into a call of the inner service or a rejection.
pub(crate) fn decide<S, St, K, B>(
    shared: &Shared<St, K>,
    result: Result<Admission, StoreError>,
    req: Request<B>,
    mut service: S,
    plan: Plan,
) -> State<S, B, St>
where
    S: Service<Request<B>>,
    St: RateLimitStore,
{
    let config = &shared.config;
    let admission = match result {
        Ok(admission) => admission,
        Err(error) => {
            return match config.failure_policy {
                FailurePolicy::FailClosed => State::reject(ApiError::from(error), HeaderMap::new()),
                _ => {
                    tracing::warn!(%error, key = %plan.key, "rate limit store failed; admitting");
                    State::call(service, req, None)
                }
            };
        }
    };
    let limits = plan.limits.as_slice();
    let now_unix = if config.header_style == HeaderStyle::Timestamp {
        config.clock.now_unix()
    } else {
        Duration::ZERO
    };
    // Written straight into the response when it comes: no map of their
    // own to build, copy from and drop.
    let headers = PendingHeaders {
        style: config.header_style,
        limits: plan.limits.clone(),
        states: admission.states,
        now_unix,
    };
    let error = match admission.verdict {
        Verdict::Admitted => {
            let release = plan.max_concurrent.is_some();
            let permit = (release || plan.reserved_tokens > 0).then(|| {
                Permit::new(
                    shared.settler.clone(),
                    plan.key,
                    plan.model,
                    plan.limits,
                    plan.reserved_tokens,
                    release,
                )
            });
            let future = service.call(req);
            return State::Call {
                future,
                admitted: Some(Admitted {
                    headers,
                    permit,
                    usage: plan.usage,
                }),
            };
        }
        Verdict::Limited => limited_error(limits, plan.costs.as_slice(), &headers.states),
        Verdict::Concurrency => ApiError::rate_limited()
            .with_message(format!(
                "Concurrency limit exceeded: {} requests in flight",
                plan.max_concurrent.unwrap_or(0)
            ))
            .with_retry_after(config.concurrency_retry_after),
    };
    let key = RateLimitKey {
        id: plan.key.as_str(),
        model: plan.model.as_deref(),
    };
    if config.shadow {
        tracing::warn!(key = %key, reason = error.message(), "rate limit would refuse (shadow mode)");
        let future = service.call(req);
        return State::Call {
            future,
            admitted: Some(Admitted {
                headers,
                permit: None,
                usage: plan.usage,
            }),
        };
    }
    tracing::debug!(key = %key, reason = error.message(), "rate limited");
    State::reject(error, headers.into_map())
}

/// What each limit charges a request: one request, or its reserved tokens.
/// Inline for up to eight limits (no allocation), on the heap beyond.
pub(crate) struct Costs(Small<u64, 8>);

impl Costs {
    fn new(limits: &[Limit], reserved_tokens: u64) -> Costs {
        let mut costs = Small::new(limits.len());
        for (cost, limit) in costs.iter_mut().zip(limits) {
            *cost = match limit.measure {
                Measure::Requests => 1,
                Measure::Tokens => reserved_tokens,
            };
        }
        Costs(costs)
    }

    fn as_slice(&self) -> &[u64] {
        &self.0
    }
}

/// The rate-limit headers of an admission, written when the response exists.
pub(crate) struct PendingHeaders {
    style: HeaderStyle,
    limits: LimitSet,
    states: super::LimitStates,
    now_unix: Duration,
}

impl PendingHeaders {
    fn into_map(self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        self.write(&mut headers);
        headers
    }

    /// Writes the headers into a response's `headers`, replacing any of the
    /// same names.
    pub(crate) fn write(&self, headers: &mut HeaderMap) {
        if self.style != HeaderStyle::None {
            self.style
                .write(self.limits.as_slice(), &self.states, self.now_unix, headers);
        }
    }
}

/// The error for a request some limit refused: the one that can never admit
/// it, or else the one that admits it last.
fn limited_error(limits: &[Limit], costs: &[u64], states: &[LimitState]) -> ApiError {
    let refusing = limits
        .iter()
        .zip(costs)
        .zip(states)
        .filter(|(_, s)| !s.admits());
    let mut worst: Option<(&Limit, u64, Option<Duration>)> = None;
    for ((limit, &cost), state) in refusing {
        let later = match (worst, state.retry_after) {
            (None, _) => true,
            (Some((_, _, None)), _) => false,
            (Some(_), None) => true,
            (Some((_, _, Some(a))), Some(b)) => b > a,
        };
        if later {
            worst = Some((limit, cost, state.retry_after));
        }
    }
    let Some((limit, cost, retry_after)) = worst else {
        return ApiError::rate_limited();
    };
    match retry_after {
        Some(delay) => ApiError::rate_limited()
            .with_message(format!("Rate limit exceeded: {limit}"))
            .with_retry_after(ceil_millis(delay)),
        None if limit.measure == Measure::Tokens => ApiError::rate_limited()
            .with_message(format!(
                "Request too large: {cost} tokens requested, limit {} per {}",
                limit.amount,
                limit.window_name()
            ))
            .with_should_retry(false),
        None => ApiError::rate_limited()
            .with_message(format!("Rate limit exceeded: {limit}"))
            .with_should_retry(false),
    }
}

/// Rounds up to whole milliseconds, so `retry-after-ms` never says a
/// client may retry before it can.
fn ceil_millis(d: Duration) -> Duration {
    let ms = d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 > 0);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// A response carrying the admission's headers.
pub(crate) fn with_headers<B>(mut response: Response<B>, headers: HeaderMap) -> Response<B> {
    let target = response.headers_mut();
    // Moved, not cloned. Each name replaces the response's values; a name
    // with several values (`None` after the first) keeps them all.
    let mut last = None;
    for (name, value) in headers {
        match name {
            Some(name) => {
                target.insert(name.clone(), value);
                last = Some(name);
            }
            None => {
                if let Some(name) = &last {
                    target.append(name.clone(), value);
                }
            }
        }
    }
    response
}

/// The rejection response: the error rendered, with the limit headers.
pub(crate) fn rejection<B>(error: ApiError, headers: HeaderMap) -> Response<ResponseBody<B>> {
    with_headers(error.into_http_response(), headers).map(super::body::full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_inline_up_to_eight_limits_and_right_beyond() {
        let limits: Vec<Limit> = (1..=9)
            .map(|i| {
                if i % 2 == 0 {
                    Limit::tokens_per_minute(i)
                } else {
                    Limit::requests_per_minute(i)
                }
            })
            .collect();
        for n in [0, 1, 8, 9] {
            let costs = Costs::new(&limits[..n], 42);
            assert_eq!(matches!(costs.0, Small::Inline(..)), n <= 8);
            let expected: Vec<u64> = (1..=n).map(|i| if i % 2 == 0 { 42 } else { 1 }).collect();
            assert_eq!(costs.as_slice(), &expected[..]);
        }
    }

    #[test]
    fn the_last_limit_to_admit_is_named() {
        let limits = [
            Limit::requests_per_minute(60),
            Limit::tokens_per_minute(1000),
        ];
        let state = |ms| LimitState {
            remaining: 0,
            reset: Duration::ZERO,
            retry_after: Some(Duration::from_millis(ms)),
        };
        let e = limited_error(&limits, &[1, 10], &[state(1500), state(2000)]);
        assert_eq!(e.message(), "Rate limit exceeded: 1000 tokens per minute");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        let never = LimitState {
            retry_after: None,
            ..state(0)
        };
        let e = limited_error(&limits, &[1, 5000], &[state(1500), never]);
        assert_eq!(
            e.message(),
            "Request too large: 5000 tokens requested, limit 1000 per minute"
        );
        assert!(!e.should_retry());
        assert_eq!(
            ceil_millis(Duration::from_micros(1)),
            Duration::from_millis(1)
        );
    }
}
