//! How many times, how long, and for which failures: [`RetryPolicy`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::Method;

use super::backoff::ExponentialBackoff;
use crate::request::RequestMeta;
use crate::{ErrorKind, RetryClass};

const KINDS: usize = ErrorKind::ALL.len();

/// The retry rules of a [`RetryLayer`](super::RetryLayer).
///
/// | knob | default | meaning |
/// |---|---|---|
/// | [`max_attempts`](Self::max_attempts) | 3 | attempts in total, the first included (the SDKs' 2 retries) |
/// | [`attempts_for`](Self::attempts_for) | `max_attempts` | attempts while failing with one [`ErrorKind`] |
/// | [`backoff_for`](Self::backoff_for) | 429: `2^n s + U(0, 1) s`; anything else: `2^n s` (1 s, 2 s, 4 s); both capped at 8 s | wait when the server gives no delay ([`backoff`](Self::backoff) sets every kind's) |
/// | [`attempt_timeout`](Self::attempt_timeout) | 30 s | the longest wait for one attempt's response head |
/// | [`replay_safe`](Self::replay_safe) | streamed requests, embeddings, idempotent methods | which requests are sent again after a timeout or a reset |
/// | [`deadline`](Self::deadline) | 10 min | no sleep ends, and no retry starts, later than this after the call |
/// | [`max_server_delay`](Self::max_server_delay) | 120 s | a longer server-requested delay means "don't retry" |
///
/// The backoffs and the timeout are the HiveOps guide's (000-hiveops-errors.txt):
/// `2^attempt + random.uniform(0, 1)` seconds on a rate limit, `2 ** attempt`
/// (1 s, 2 s, 4 s) on a 500 or 503, `timeout=30`.
///
/// Which failures are retried at all is the classifier's call
/// ([`RetryClass`]); the policy only bounds how often and how late, and says
/// which requests may be repeated once they may have reached the upstream.
///
/// ```
/// use std::time::Duration;
/// use tollgate::ErrorKind;
/// use tollgate::retry::{ExponentialBackoff, RetryPolicy};
///
/// let policy = RetryPolicy::new()
///     .max_attempts(5)
///     .attempts_for(ErrorKind::Overloaded, 2) // 529: back off to another model instead
///     .backoff_for(ErrorKind::Overloaded, ExponentialBackoff::default())
///     .attempt_timeout(Duration::from_secs(120)) // a slow reasoning model
///     .deadline(Duration::from_secs(600));
/// assert_eq!(policy.attempts_allowed(ErrorKind::RateLimited), 5);
/// assert_eq!(policy.attempts_allowed(ErrorKind::Overloaded), 2);
/// assert_eq!(policy.backoff_of(ErrorKind::Unavailable), ExponentialBackoff::SERVER_ERRORS);
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
/// attempt in flight; the [per-attempt timeout](Self::attempt_timeout) does.
///
/// # Why a per-attempt timeout, and why it is not always retried
///
/// An upstream that accepted a connection and then hangs holds the caller
/// until the deadline, which is minutes; the guides ask for 30 s per attempt.
/// The timeout bounds the wait for the response head (for a stream, its
/// first bytes; the stream itself may then take as long as it takes). But an
/// attempt that timed out, or whose connection was reset, after the request
/// was sent may have been processed, and billed, by the provider: sending a
/// non-streamed completion again can pay for it twice. So such a failure is
/// retried only for a request the policy calls [replay-safe](Self::replay_safe);
/// a connection that was never made is always retried, since nothing was sent.
///
/// # Why per-kind attempts and backoffs?
///
/// Failures differ in what another try costs and how likely it is to work. A
/// connection refused is cheap to retry; a 529 "overloaded" during a
/// provider incident mostly adds to the pile; a 429 with a server-given delay
/// will likely succeed. [`attempts_for`](Self::attempts_for) and
/// [`backoff_for`](Self::backoff_for) tune each, like a per-exception retry
/// policy, under the global [`max_attempts`](Self::max_attempts).
#[derive(Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub(super) max_attempts: u32,
    per_kind: [Option<u32>; KINDS],
    backoffs: [ExponentialBackoff; KINDS],
    pub(super) deadline: Duration,
    max_server_delay: Duration,
    pub(super) attempt_timeout: Option<Duration>,
    replay_safe: ReplayRule,
}

type ReplaySafeFn = dyn Fn(&http::request::Parts, &[u8]) -> bool + Send + Sync;

/// The rule saying which requests may be sent again after they may have
/// reached the upstream; `None` for [`RetryPolicy::replay_safe_by_default`].
#[derive(Clone, Default)]
struct ReplayRule(Option<Arc<ReplaySafeFn>>);

impl PartialEq for ReplayRule {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for ReplayRule {}

impl fmt::Debug for ReplayRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "custom"
        } else {
            "default"
        })
    }
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
    /// Default per-attempt timeout: 30 s, the HiveOps guide's `timeout=30`.
    pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

    /// The defaults in the table above.
    pub fn new() -> Self {
        let backoffs = ErrorKind::ALL.map(|kind| match kind {
            ErrorKind::RateLimited | ErrorKind::QuotaExhausted => ExponentialBackoff::RATE_LIMITS,
            _ => ExponentialBackoff::SERVER_ERRORS,
        });
        RetryPolicy {
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            per_kind: [None; KINDS],
            backoffs,
            deadline: Self::DEFAULT_DEADLINE,
            max_server_delay: Self::DEFAULT_MAX_SERVER_DELAY,
            attempt_timeout: Some(Self::DEFAULT_ATTEMPT_TIMEOUT),
            replay_safe: ReplayRule::default(),
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

    /// The backoff of every kind of failure, used when the server gives no
    /// delay. [`backoff_for`](Self::backoff_for) after it refines one kind.
    pub fn backoff(mut self, backoff: ExponentialBackoff) -> Self {
        self.backoffs = [backoff; KINDS];
        self
    }

    /// The backoff after a failure of `kind`. The `n`-th retry's delay
    /// comes from the backoff of the failure before it, with `n` counting
    /// every attempt made so far.
    pub fn backoff_for(mut self, kind: ErrorKind, backoff: ExponentialBackoff) -> Self {
        if let Some(slot) = self.backoffs.get_mut(kind_index(kind)) {
            *slot = backoff;
        }
        self
    }

    /// The backoff after a failure of `kind`.
    pub fn backoff_of(&self, kind: ErrorKind) -> ExponentialBackoff {
        self.backoffs
            .get(kind_index(kind))
            .copied()
            .unwrap_or(ExponentialBackoff::SERVER_ERRORS)
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

    /// The longest wait for one attempt's response head (30 s by default).
    /// An attempt that takes longer is abandoned (its request dropped) and
    /// classified as a timeout: retried when the request is
    /// [replay-safe](Self::replay_safe), else answered with a 504 that tells
    /// the client not to retry either.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// No per-attempt timeout: an attempt may take until the deadline.
    pub fn without_attempt_timeout(mut self) -> Self {
        self.attempt_timeout = None;
        self
    }

    /// Which requests may be sent again after an attempt that may have
    /// reached the upstream (a timeout or a reset after the request was
    /// sent). `rule` sees the request's head and its body;
    /// [`replay_safe_by_default`](Self::replay_safe_by_default) is the
    /// default, for a rule to build on.
    ///
    /// ```
    /// use tollgate::retry::RetryPolicy;
    ///
    /// // Moderations are free: repeat them too.
    /// let policy = RetryPolicy::new().replay_safe(|head, body| {
    ///     head.uri.path().ends_with("/moderations")
    ///         || RetryPolicy::replay_safe_by_default(head, body)
    /// });
    /// ```
    pub fn replay_safe<F>(mut self, rule: F) -> Self
    where
        F: Fn(&http::request::Parts, &[u8]) -> bool + Send + Sync + 'static,
    {
        self.replay_safe = ReplayRule(Some(Arc::new(rule)));
        self
    }

    /// Whether this policy lets `head` and `body` be sent again after an
    /// attempt that may have reached the upstream.
    pub fn is_replay_safe(&self, head: &http::request::Parts, body: &[u8]) -> bool {
        match &self.replay_safe.0 {
            Some(rule) => rule(head, body),
            None => Self::replay_safe_by_default(head, body),
        }
    }

    /// The default [`replay_safe`](Self::replay_safe) rule: a request is
    /// safe to send again when
    ///
    /// - its method is idempotent (`GET`, `HEAD`, `OPTIONS`, `PUT`,
    ///   `DELETE`, `TRACE`);
    /// - it asks for a stream (`"stream": true`, read from the
    ///   [`RequestMeta`] in its extensions or else from the body): a failure
    ///   before the response head is before the first byte of the answer,
    ///   and a provider bills a stream by what it sent;
    /// - it is an embeddings request (path ending in `/embeddings`): cheap,
    ///   and the same input gives the same answer.
    ///
    /// A non-streamed completion is not: the provider may have finished it,
    /// and billed it, before the connection failed.
    pub fn replay_safe_by_default(head: &http::request::Parts, body: &[u8]) -> bool {
        if matches!(
            head.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        ) {
            return true;
        }
        if head
            .uri
            .path()
            .trim_end_matches('/')
            .ends_with("/embeddings")
        {
            return true;
        }
        match head.extensions.get::<RequestMeta>() {
            Some(meta) => meta.stream,
            None => RequestMeta::from_json(body).is_ok_and(|meta| meta.stream),
        }
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
            None => self.backoff_of(failure.kind).delay(attempts, random),
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
        // The backoffs that differ from the one of most kinds, by kind.
        let common = self.backoff_of(ErrorKind::Internal);
        let backoff_for: Vec<_> = ErrorKind::ALL
            .iter()
            .zip(self.backoffs.iter())
            .filter(|(_, b)| **b != common)
            .collect();
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("attempts_for", &per_kind)
            .field("backoff", &common)
            .field("backoff_for", &backoff_for)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("replay_safe", &self.replay_safe)
            .field("deadline", &self.deadline)
            .field("max_server_delay", &self.max_server_delay)
            .finish()
    }
}

#[cfg(test)]
mod tests;
