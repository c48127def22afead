//! What a call that reached the upstream is charged when it did not end
//! well: [`ChargePolicy`].

use std::any::Any;

use crate::retry::TransportFailure;
use crate::usage::{BodyEnd, Usage, UsageReport, UsageSource};
use crate::{ApiError, BoxError, ErrorKind};

/// What a metered call is charged when it failed or was cut after the
/// upstream accepted it, for [`BudgetLayer::charge_policy`](super::BudgetLayer::charge_policy)
/// and [`RateLimitLayer::charge_policy`](crate::rate_limit::RateLimitLayer::charge_policy).
///
/// Every call is settled exactly once, by the first of these that happens:
///
/// | how the call ended | charged |
/// |---|---|
/// | the upstream reported usage (any status, any end) | that usage |
/// | a response < 400 whose body ended without usage | the estimate of what was produced: the prompt estimate plus one token per four characters of output seen, never less |
/// | a response < 400 whose body failed (the upstream connection broke) or was dropped (the client went away) before its usage | **the policy**: the prompt estimate plus the output tokens seen (`Produced`), or the reservation (`Reservation`) |
/// | the inner service timed out (a timeout error, or a response carrying a gateway's `Timeout` [`ApiError`]), or the call was dropped while the inner service had the request (the client went away before the headers, a timeout further out) | **the policy**: the prompt estimate (`Produced`), or the reservation (`Reservation`) |
/// | a response ≥ 400 without usage (the upstream refused it: 4xx, a 5xx with no usage) | nothing |
/// | the inner service failed otherwise (a connect error: nothing was sent) | nothing |
///
/// # Why charge a call that failed
///
/// Providers bill the work they did, not the work the client saw: a stream
/// cut at its tenth token was still processed (the whole prompt), and an
/// upstream that timed out on a long completion usually finished it and
/// billed it. Charging $0 for these (what a gateway does when it settles
/// only reported usage) is the usage LiteLLM loses on disconnect
/// (#14457), and it lets a client that hangs up early spend without limit.
/// A call the upstream refused or never received (a 4xx, a 5xx without
/// usage, a connect error) did no work, and is not charged.
///
/// # Why two policies
///
/// What was *seen* is a lower bound of what the upstream did: after a
/// client disconnects, OpenAI generates (and bills) the rest of the
/// completion unless the request is cancelled. A gateway that drains the
/// upstream body after the client left (the example gateway does, within a
/// time limit) settles with the real usage and needs nothing more:
/// [`Produced`](ChargePolicy::Produced), the default, charges what the
/// evidence shows. An operator who cannot drain, and whose provider bills
/// cut requests in full, charges the [`Reservation`](ChargePolicy::Reservation)
/// (the request's worst case): never under, sometimes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ChargePolicy {
    /// Charge what the evidence shows was produced: the prompt estimate
    /// plus the output tokens seen (the default).
    #[default]
    Produced,
    /// Charge the whole reservation: the request's worst case.
    Reservation,
}

/// How a metered call ended, for charging.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CallEnd<'a> {
    /// The response body ended, failed or was dropped, with this report;
    /// `timed_out`: the response is a gateway's timeout (an [`ApiError`] of
    /// kind `Timeout` in its extensions) rather than the upstream's answer.
    Response {
        report: &'a UsageReport,
        timed_out: bool,
    },
    /// The inner service failed without a response; whether by a timeout.
    Error { timed_out: bool },
    /// The call was dropped while the inner service had the request.
    Abandoned,
}

/// What a call is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Billed {
    /// Nothing: the upstream refused it or never had it.
    Nothing,
    /// These tokens.
    Usage(Usage),
    /// The reservation, whole.
    Reservation,
}

impl ChargePolicy {
    /// What a call that ended as `end` is charged, for a request whose
    /// prompt was estimated at `prompt_tokens_estimate`.
    pub(crate) fn bill(self, end: CallEnd<'_>, prompt_tokens_estimate: u64) -> Billed {
        let accepted_unseen = || match self {
            ChargePolicy::Produced => Billed::Usage(Usage {
                prompt_tokens: prompt_tokens_estimate,
                total_tokens: prompt_tokens_estimate,
                ..Usage::default()
            }),
            ChargePolicy::Reservation => Billed::Reservation,
        };
        match end {
            CallEnd::Response { report, .. } if report.source == UsageSource::Reported => {
                Billed::Usage(report.usage)
            }
            CallEnd::Response { report, timed_out } if report.status.as_u16() >= 400 => {
                if timed_out {
                    accepted_unseen()
                } else {
                    Billed::Nothing
                }
            }
            CallEnd::Response { report, .. } => match (report.end, self) {
                (BodyEnd::Completed, _) | (_, ChargePolicy::Produced) => {
                    Billed::Usage(report.usage)
                }
                (_, ChargePolicy::Reservation) => Billed::Reservation,
            },
            CallEnd::Error { timed_out: true } | CallEnd::Abandoned => accepted_unseen(),
            CallEnd::Error { timed_out: false } => Billed::Nothing,
        }
    }
}

/// Whether a response is a gateway's timeout: an [`ApiError`] of kind
/// `Timeout` in its extensions (a proxy that gave up waiting for the
/// upstream renders one).
pub(crate) fn is_timeout_response(extensions: &http::Extensions) -> bool {
    extensions
        .get::<ApiError>()
        .is_some_and(|e| e.kind() == ErrorKind::Timeout)
}

/// Whether an inner service's error is a timeout after a connection was
/// made (the upstream may have the request), as told by its type: an
/// [`ApiError`] of kind `Timeout`, or a `BoxError` or `std::io::Error`
/// that [`TransportFailure`] calls a timeout and not a connect error. Any
/// other error, or one of a type tollgate cannot look into, is not.
pub(crate) fn is_timeout_error<E: 'static>(error: &E) -> bool {
    let any: &dyn Any = error;
    if let Some(api) = any.downcast_ref::<ApiError>() {
        return api.kind() == ErrorKind::Timeout;
    }
    let source: &(dyn std::error::Error + 'static) =
        if let Some(boxed) = any.downcast_ref::<BoxError>() {
            &**boxed
        } else if let Some(io) = any.downcast_ref::<std::io::Error>() {
            io
        } else {
            return false;
        };
    let failure = TransportFailure::new(Some(source), false);
    failure.is_timeout() && !failure.is_connect()
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    fn report(
        status: u16,
        source: UsageSource,
        end: BodyEnd,
        prompt: u64,
        out: u64,
    ) -> UsageReport {
        UsageReport {
            usage: Usage {
                prompt_tokens: prompt,
                completion_tokens: out,
                total_tokens: prompt + out,
                ..Usage::default()
            },
            source,
            end,
            status: StatusCode::from_u16(status).unwrap(),
        }
    }

    fn tokens(billed: Billed) -> Option<u64> {
        match billed {
            Billed::Usage(u) => Some(u.total_tokens),
            Billed::Nothing => Some(0),
            Billed::Reservation => None,
        }
    }

    #[test]
    fn every_ending_is_charged_by_the_table() {
        use BodyEnd::*;
        use UsageSource::*;
        let produced = ChargePolicy::Produced;
        let reserved = ChargePolicy::Reservation;
        fn response(report: &UsageReport, timed_out: bool) -> CallEnd<'_> {
            CallEnd::Response { report, timed_out }
        }
        for policy in [produced, reserved] {
            // Reported usage wins, whatever the status and the end.
            for r in [
                report(200, Reported, Completed, 10, 5),
                report(500, Reported, Failed, 10, 5),
                report(200, Reported, Dropped, 10, 5),
            ] {
                assert_eq!(tokens(policy.bill(response(&r, false), 99)), Some(15));
            }
            // Ended without usage: the estimate of what was produced.
            let r = report(200, Estimated, Completed, 10, 3);
            assert_eq!(tokens(policy.bill(response(&r, false), 99)), Some(13));
            // Refused by the upstream, or never sent: nothing.
            let r = report(503, Estimated, Completed, 0, 0);
            assert_eq!(policy.bill(response(&r, false), 99), Billed::Nothing);
            assert_eq!(
                policy.bill(CallEnd::Error { timed_out: false }, 99),
                Billed::Nothing
            );
        }
        // Cut after the upstream accepted it: the policy.
        for end in [Failed, Dropped] {
            let r = report(200, Estimated, end, 10, 3);
            assert_eq!(tokens(produced.bill(response(&r, false), 99)), Some(13));
            assert_eq!(reserved.bill(response(&r, false), 99), Billed::Reservation);
        }
        let r = report(504, Estimated, Completed, 0, 0);
        for end in [
            response(&r, true),
            CallEnd::Error { timed_out: true },
            CallEnd::Abandoned,
        ] {
            assert_eq!(tokens(produced.bill(end, 99)), Some(99));
            assert_eq!(reserved.bill(end, 99), Billed::Reservation);
        }
    }

    #[test]
    fn timeouts_are_told_by_type() {
        let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert!(is_timeout_error(&elapsed));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!is_timeout_error(&refused));
        assert!(is_timeout_error(&std::io::Error::from(
            std::io::ErrorKind::TimedOut
        )));
        assert!(is_timeout_error(&ApiError::timeout()));
        assert!(!is_timeout_error(&ApiError::bad_gateway()));
        assert!(!is_timeout_error(&"a string"));
        let mut ext = http::Extensions::new();
        assert!(!is_timeout_response(&ext));
        ext.insert(ApiError::timeout());
        assert!(is_timeout_response(&ext));
    }
}
