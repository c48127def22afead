//! The rate limit's verdict on a request from the store's answer: admit
//! (with the permit that settles it), refuse (the error naming the limit,
//! with the limit headers), or admit in shadow mode; and the responses
//! that carry them. Shared by [`RateLimit`](super::RateLimit) and
//! [`Admission`](crate::admission::Admission).

use std::time::Duration;

use http::{HeaderMap, Request, Response};
use tower_service::Service;

use super::super::body::ResponseBody;
use super::super::future::{Admitted, State};
use super::super::layer::FailurePolicy;
use super::super::permit::{LimitSet, Permit};
use super::super::{
    Admission, HeaderStyle, Limit, LimitState, Measure, RateLimitKey, RateLimitStore, Verdict,
};
use super::{Plan, Shared};
use crate::ApiError;
use crate::store::StoreError;

/// Turns the store's answer into a call of the inner service or a rejection.
pub(crate) fn decide<S, St, K, B>(
    shared: &Shared<St, K>,
    result: Result<Admission, StoreError>,
    req: Request<B>,
    mut service: S,
    plan: Plan,
) -> State<S, B>
where
    S: Service<Request<B>>,
    St: RateLimitStore,
{
    let admitted = match judge(shared, result, plan) {
        Decision::Pass => None,
        Decision::Admit(headers, plan) => Some(admit(shared, headers, plan)),
        Decision::Shadow(admitted) => Some(admitted),
        Decision::Refuse(error, headers) => return State::reject(error, headers),
    };
    State::Call {
        future: service.call(req),
        admitted,
    }
}

/// The rate limit's decision on a request, from the store's answer.
pub(crate) enum Decision {
    /// The store failed and the layer fails open: admitted, not limited.
    Pass,
    /// Admitted and charged: [`admit`] makes the permit that settles it.
    Admit(PendingHeaders, Plan),
    /// Refused, but the layer is in shadow mode: admitted, nothing charged.
    Shadow(Admitted),
    /// Refused: the error and the limit headers.
    Refuse(ApiError, HeaderMap),
}

/// Decides on an admission from the store's answer `result`.
pub(crate) fn judge<St, K>(
    shared: &Shared<St, K>,
    result: Result<Admission, StoreError>,
    mut plan: Plan,
) -> Decision {
    let config = &shared.config;
    let admission = match result {
        Ok(admission) => admission,
        Err(error) => {
            return match config.failure_policy {
                FailurePolicy::FailClosed => {
                    Decision::Refuse(ApiError::from(error), HeaderMap::new())
                }
                _ => {
                    tracing::warn!(%error, key = %plan.key, "rate limit store failed; admitting");
                    Decision::Pass
                }
            };
        }
    };
    plan.receipt = admission.receipt;
    let now_unix = if config.header_style.needs_clock() {
        config.clock.now_unix()
    } else {
        Duration::ZERO
    };
    // Written straight into the response when it comes: no map of their
    // own to build, copy from and drop.
    let headers = PendingHeaders {
        style: config.header_style,
        limits: plan.all_limits(),
        states: admission.states,
        now_unix,
    };
    let error = match admission.verdict {
        Verdict::Admitted => return Decision::Admit(headers, plan),
        Verdict::Limited => limited_error(&plan, &headers.states),
        Verdict::Concurrency => {
            let busy = plan.scopes().nth(admission.busy.unwrap_or(0));
            let (max, scope) = busy.map_or((0, String::new()), |(key, _, max)| {
                (max.unwrap_or(0), key.describe())
            });
            ApiError::rate_limited()
                .with_message(format!(
                    "Concurrency limit exceeded: {max} requests in flight{scope}"
                ))
                .with_retry_after(config.concurrency_retry_after)
        }
    };
    let key = RateLimitKey::new(plan.key.as_str()).with_model(plan.model.as_deref());
    if config.shadow {
        tracing::warn!(key = %key, reason = error.message(), "rate limit would refuse (shadow mode)");
        return Decision::Shadow(Admitted {
            headers,
            permit: None,
            usage: plan.usage,
        });
    }
    tracing::debug!(key = %key, reason = error.message(), "rate limited");
    Decision::Refuse(error, headers.into_map())
}

/// An admitted request's headers and the permit that settles its charge
/// (none when nothing needs settling).
pub(crate) fn admit<St, K>(
    shared: &Shared<St, K>,
    headers: PendingHeaders,
    mut plan: Plan,
) -> Admitted {
    let usage = std::mem::take(&mut plan.usage);
    let permit = (plan.releases || plan.reserved_tokens > 0)
        .then(|| Permit::new(shared.settler.clone(), plan, shared.config.charge_policy));
    Admitted {
        headers,
        permit,
        usage,
    }
}

/// An admitted request whose charge was not made after all (its budgets
/// denied it, and the store wrote neither): its headers, no permit.
pub(crate) fn uncharged(headers: PendingHeaders, plan: Plan) -> Admitted {
    Admitted {
        headers,
        permit: None,
        usage: plan.usage,
    }
}

/// The rate-limit headers of an admission, written when the response exists.
pub(crate) struct PendingHeaders {
    style: HeaderStyle,
    limits: LimitSet,
    states: super::super::LimitStates,
    now_unix: Duration,
}

impl PendingHeaders {
    pub(crate) fn into_map(self) -> HeaderMap {
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
/// it, or else the one that admits it last. It names the limit and, beyond
/// the caller's key, its scope.
pub(super) fn limited_error(plan: &Plan, states: &[LimitState]) -> ApiError {
    let mut worst: Option<(RateLimitKey<'_>, &Limit, u64, Option<Duration>)> = None;
    let mut n = 0;
    for (key, limits, _) in plan.scopes() {
        for limit in limits {
            let Some(state) = states.get(n) else { break };
            n += 1;
            if state.admits() {
                continue;
            }
            let later = match (worst, state.retry_after) {
                (None, _) => true,
                (Some((_, _, _, None)), _) => false,
                (Some(_), None) => true,
                (Some((_, _, _, Some(a))), Some(b)) => b > a,
            };
            if later {
                let cost = match limit.measure {
                    Measure::Requests => 1,
                    Measure::Tokens => plan.reserved_tokens,
                };
                worst = Some((key, limit, cost, state.retry_after));
            }
        }
    }
    let Some((key, limit, cost, retry_after)) = worst else {
        return ApiError::rate_limited();
    };
    let scope = key.describe();
    match retry_after {
        Some(delay) => ApiError::rate_limited()
            .with_message(format!("Rate limit exceeded: {limit}{scope}"))
            .with_retry_after(ceil_millis(delay)),
        None if limit.measure == Measure::Tokens => ApiError::rate_limited()
            .with_message(format!(
                "Request too large: {cost} tokens requested, limit {} per {}{scope}",
                limit.amount,
                limit.window_name()
            ))
            .with_should_retry(false),
        None => ApiError::rate_limited()
            .with_message(format!("Rate limit exceeded: {limit}{scope}"))
            .with_should_retry(false),
    }
}

/// Rounds up to whole milliseconds, so `retry-after-ms` never says a
/// client may retry before it can.
pub(super) fn ceil_millis(d: Duration) -> Duration {
    let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// A response carrying the admission's headers.
fn with_headers<B>(mut response: Response<B>, headers: HeaderMap) -> Response<B> {
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
    with_headers(error.into_http_response(), headers).map(super::super::body::full)
}
