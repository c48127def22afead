//! How many times, how long, and for which failures: [`RetryPolicy`].

use std::fmt;
use std::time::Duration;

use super::backoff::ExponentialBackoff;
use crate::{ErrorKind, RetryClass};

const KINDS: usize = ErrorKind::ALL.len();

/// The retry rules of a [`RetryLayer`](super::RetryLayer).
///
/// | knob | default | meaning |
/// |---|---|---|
/// | [`max_attempts`](Self::max_attempts) | 3 | attempts in total, the first included (the SDKs' 2 retries) |
/// | [`attempts_for`](Self::attempts_for) | `max_attempts` | attempts while failing with one [`ErrorKind`] |
/// | [`backoff`](Self::backoff) | 0.5 s doubling to 8 s, full jitter | wait when the server gives no delay |
/// | [`deadline`](Self::deadline) | 10 min | no sleep ends, and no retry starts, later than this after the call |
/// | [`max_server_delay`](Self::max_server_delay) | 120 s | a longer server-requested delay means "don't retry" |
///
/// Which failures are retried at all is the classifier's call
/// ([`RetryClass`]); the policy only bounds how often and how late.
///
/// ```
/// use std::time::Duration;
/// use tollgate::ErrorKind;
/// use tollgate::retry::RetryPolicy;
///
/// let policy = RetryPolicy::new()
///     .max_attempts(5)
///     .attempts_for(ErrorKind::Overloaded, 2) // 529: back off to another model instead
///     .deadline(Duration::from_secs(60));
/// assert_eq!(policy.attempts_allowed(ErrorKind::RateLimited), 5);
/// assert_eq!(policy.attempts_allowed(ErrorKind::Overloaded), 2);
/// ```
///
/// # Why a deadline?
///
/// Attempts and backoff alone do not bound time: three attempts that each
/// wait 60 s for a slow upstream, plus a `Retry-After: 100`, keep a user
/// staring at a spinner for over four minutes, long after their own client
/// gave up. The deadline is the answer to "how long may this call take in
/// total": the layer never sleeps past it and never starts an attempt after
/// it, and returns the last failure as it is instead. It does not cut an
/// attempt in flight (a streaming completion may rightly take minutes); put a
/// timeout layer inside the retry layer for that.
///
/// # Why per-kind attempts?
///
/// Failures differ in what another try costs and how likely it is to work. A
/// connection refused is cheap to retry; a 529 "overloaded" during a
/// provider incident mostly adds to the pile; a 429 with a server-given delay
/// will likely succeed. [`attempts_for`](Self::attempts_for) tunes each, like
/// a per-exception retry policy, under the global [`max_attempts`](Self::max_attempts).
#[derive(Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    per_kind: [Option<u32>; KINDS],
    backoff: ExponentialBackoff,
    deadline: Duration,
    max_server_delay: Duration,
}

/// Why a failure was not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The class is [`RetryClass::Never`].
    NotRetryable,
    /// The global or per-kind attempts are used up.
    Attempts,
    /// The server asked for a delay longer than `max_server_delay`.
    ServerDelay(Duration),
    /// The delay would end after the deadline.
    Deadline,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::NotRetryable => f.write_str("the failure is not retryable"),
            Stop::Attempts => f.write_str("attempts exhausted"),
            Stop::ServerDelay(d) => write!(f, "server asked for {d:?}, over the cap"),
            Stop::Deadline => f.write_str("the delay would pass the deadline"),
        }
    }
}

impl RetryPolicy {
    /// Default attempts in total: 3.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
    /// Default deadline: 10 minutes (the official SDKs' default timeout).
    pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);
    /// Default cap on a server-requested delay: 120 s.
    pub const DEFAULT_MAX_SERVER_DELAY: Duration = Duration::from_secs(120);

    /// The defaults in the table above.
    pub fn new() -> Self {
        RetryPolicy {
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            per_kind: [None; KINDS],
            backoff: ExponentialBackoff::default(),
            deadline: Self::DEFAULT_DEADLINE,
            max_server_delay: Self::DEFAULT_MAX_SERVER_DELAY,
        }
    }

    /// Attempts in total, the first included (0 is taken as 1: no retries).
    /// Caps [`attempts_for`](Self::attempts_for).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// At most `attempts` tries while they fail with `kind` (0 is taken as 1).
    /// Failures of other kinds count against their own limits; all count
    /// against [`max_attempts`](Self::max_attempts).
    pub fn attempts_for(mut self, kind: ErrorKind, attempts: u32) -> Self {
        if let Some(slot) = self.per_kind.get_mut(kind_index(kind)) {
            *slot = Some(attempts.max(1));
        }
        self
    }

    /// The backoff used when the server gives no delay.
    pub fn backoff(mut self, backoff: ExponentialBackoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The total time a call may spend in the retry loop, counted from the
    /// first attempt.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The longest server-requested delay that is honoured; a longer one
    /// returns the response as it is.
    pub fn max_server_delay(mut self, cap: Duration) -> Self {
        self.max_server_delay = cap;
        self
    }

    /// How many tries a request gets while failing with `kind`.
    pub fn attempts_allowed(&self, kind: ErrorKind) -> u32 {
        self.per_kind
            .get(kind_index(kind))
            .copied()
            .flatten()
            .unwrap_or(self.max_attempts)
            .min(self.max_attempts)
    }

    pub(crate) fn max_attempts_total(&self) -> u32 {
        self.max_attempts
    }

    pub(crate) fn deadline_duration(&self) -> Duration {
        self.deadline
    }

    /// The delay before the next attempt, or why there is none.
    ///
    /// `attempts` have been made, `kind_failures` of them failed with `kind`
    /// (this one included), `elapsed` since the first; `random` draws the
    /// jitter.
    pub(crate) fn decide(
        &self,
        failure: Failure,
        attempts: u32,
        kind_failures: u32,
        elapsed: Duration,
        random: u64,
    ) -> Result<Duration, Stop> {
        if failure.class == RetryClass::Never {
            return Err(Stop::NotRetryable);
        }
        if attempts >= self.max_attempts || kind_failures >= self.attempts_allowed(failure.kind) {
            return Err(Stop::Attempts);
        }
        let delay = match failure.retry_after {
            Some(delay) if delay > self.max_server_delay => return Err(Stop::ServerDelay(delay)),
            Some(delay) => delay,
            None => self.backoff.delay(attempts, random),
        };
        if elapsed.saturating_add(delay) >= self.deadline {
            return Err(Stop::Deadline);
        }
        Ok(delay)
    }
}

/// The facts about one failed attempt that the policy needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) kind: ErrorKind,
    pub(crate) class: RetryClass,
    pub(crate) retry_after: Option<Duration>,
}

pub(crate) fn kind_index(kind: ErrorKind) -> usize {
    ErrorKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(KINDS)
}

/// Failures per kind in one call.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FailureCounts([u16; KINDS]);

impl FailureCounts {
    /// Counts one more failure of `kind`; returns the new count.
    pub(crate) fn record(&mut self, kind: ErrorKind) -> u32 {
        match self.0.get_mut(kind_index(kind)) {
            Some(n) => {
                *n = n.saturating_add(1);
                u32::from(*n)
            }
            None => 1,
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::new()
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_kind: Vec<_> = ErrorKind::ALL
            .iter()
            .zip(self.per_kind.iter())
            .filter_map(|(k, n)| n.map(|n| (*k, n)))
            .collect();
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("attempts_for", &per_kind)
            .field("backoff", &self.backoff)
            .field("deadline", &self.deadline)
            .field("max_server_delay", &self.max_server_delay)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(kind: ErrorKind, retry_after: Option<Duration>) -> Failure {
        Failure {
            kind,
            class: kind.retry_class(),
            retry_after,
        }
    }

    #[test]
    fn never_is_never_retried() {
        let p = RetryPolicy::new();
        let f = failure(ErrorKind::InvalidRequest, None);
        assert_eq!(
            p.decide(f, 1, 1, Duration::ZERO, 0),
            Err(Stop::NotRetryable)
        );
    }

    #[test]
    fn global_and_per_kind_attempts() {
        let p = RetryPolicy::new()
            .max_attempts(4)
            .attempts_for(ErrorKind::Overloaded, 2);
        let over = failure(ErrorKind::Overloaded, None);
        assert!(p.decide(over, 1, 1, Duration::ZERO, 0).is_ok());
        assert_eq!(p.decide(over, 2, 2, Duration::ZERO, 0), Err(Stop::Attempts));
        // Other kinds in between do not use up Overloaded's allowance...
        assert!(p.decide(over, 3, 1, Duration::ZERO, 0).is_ok());
        // ...but all count against the global maximum.
        assert_eq!(p.decide(over, 4, 1, Duration::ZERO, 0), Err(Stop::Attempts));
        // A per-kind value above the global one is capped.
        let p = RetryPolicy::new().attempts_for(ErrorKind::RateLimited, 9);
        assert_eq!(p.attempts_allowed(ErrorKind::RateLimited), 3);
        assert_eq!(RetryPolicy::new().max_attempts(0).max_attempts_total(), 1);
    }

    #[test]
    fn server_delay_is_used_as_is_up_to_the_cap() {
        let p = RetryPolicy::new();
        let hinted = failure(ErrorKind::RateLimited, Some(Duration::from_secs(7)));
        assert_eq!(
            p.decide(hinted, 1, 1, Duration::ZERO, u64::MAX),
            Ok(Duration::from_secs(7))
        );
        let long = failure(ErrorKind::RateLimited, Some(Duration::from_secs(121)));
        assert_eq!(
            p.decide(long, 1, 1, Duration::ZERO, 0),
            Err(Stop::ServerDelay(Duration::from_secs(121)))
        );
    }

    #[test]
    fn never_sleeps_past_the_deadline() {
        let p = RetryPolicy::new().deadline(Duration::from_secs(10));
        let f = failure(ErrorKind::Unavailable, Some(Duration::from_secs(3)));
        assert!(p.decide(f, 1, 1, Duration::from_secs(6), 0).is_ok());
        assert_eq!(
            p.decide(f, 1, 1, Duration::from_secs(7), 0),
            Err(Stop::Deadline)
        );
    }

    #[test]
    fn backoff_without_a_hint() {
        let p = RetryPolicy::new();
        let f = failure(ErrorKind::Internal, None);
        let d = p.decide(f, 2, 2, Duration::ZERO, u64::MAX).unwrap();
        assert!(d < Duration::from_secs(1) && d > Duration::from_millis(999));
    }

    #[test]
    fn counts_per_kind() {
        let mut c = FailureCounts::default();
        assert_eq!(c.record(ErrorKind::Timeout), 1);
        assert_eq!(c.record(ErrorKind::Internal), 1);
        assert_eq!(c.record(ErrorKind::Timeout), 2);
    }
}
