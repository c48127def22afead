use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::backoff::Random;
use super::classify::{Classify, DefaultClassifier};
use super::service::Retry;
use super::{RetryBudget, RetryPolicy};
use crate::clock::{SharedClock, default_clock};

/// Configuration shared by every service a [`RetryLayer`] builds, and by all
/// their clones: one budget, one jitter source.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) policy: RetryPolicy,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) classifier: Arc<dyn Classify>,
    pub(crate) clock: SharedClock,
    pub(crate) jitter: Arc<Random>,
    pub(crate) max_request_body_bytes: usize,
    pub(crate) max_error_body_bytes: usize,
    pub(crate) peek_streams: bool,
    pub(crate) peek_timeout: Duration,
    pub(crate) idempotency_key: bool,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.policy)
            .field("budget", &self.budget)
            .field("max_request_body_bytes", &self.max_request_body_bytes)
            .field("max_error_body_bytes", &self.max_error_body_bytes)
            .field("peek_streams", &self.peek_streams)
            .field("peek_timeout", &self.peek_timeout)
            .field("idempotency_key", &self.idempotency_key)
            .finish_non_exhaustive()
    }
}

/// Retries failed requests by error class, within a policy and a budget.
///
/// See the [module docs](super) for what it does, why, and an example.
///
/// | knob | default |
/// |---|---|
/// | [`policy`](Self::policy) | [`RetryPolicy::new`]: 3 attempts; backoff `2^n s + U(0, 1) s` on 429, `2^n s` otherwise, capped at 8 s; 30 s per attempt; 10 min deadline; 120 s cap on server delays |
/// | [`budget`](Self::budget) | [`RetryBudget::default`]: 20 % of requests over 10 s, plus 10 per second |
/// | [`classify`](Self::classify) | [`DefaultClassifier`] |
/// | [`max_request_body_bytes`](Self::max_request_body_bytes) | 16 MiB |
/// | [`max_error_body_bytes`](Self::max_error_body_bytes) | 64 KiB |
/// | [`peek_streams`](Self::peek_streams) | on |
/// | [`peek_timeout`](Self::peek_timeout) | 10 s |
/// | [`idempotency_key`](Self::idempotency_key) | on |
///
/// Every service built by one layer (and every clone of those) shares the
/// budget.
#[derive(Clone)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

impl RetryLayer {
    /// Default cap on a replayable request body: 16 MiB.
    pub const DEFAULT_MAX_REQUEST_BODY_BYTES: usize = 16 * 1024 * 1024;
    /// Default bytes read of an error body or a stream's head: 64 KiB.
    pub const DEFAULT_MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
    /// Default wait for an error body or a stream's first event: 10 s.
    pub const DEFAULT_PEEK_TIMEOUT: Duration = Duration::from_secs(10);

    /// The defaults in the table above.
    pub fn new() -> Self {
        RetryLayer {
            shared: Arc::new(Shared {
                policy: RetryPolicy::new(),
                budget: Some(RetryBudget::default()),
                classifier: Arc::new(DefaultClassifier::new()),
                clock: default_clock(),
                jitter: Arc::new(Random::new()),
                max_request_body_bytes: Self::DEFAULT_MAX_REQUEST_BODY_BYTES,
                max_error_body_bytes: Self::DEFAULT_MAX_ERROR_BODY_BYTES,
                peek_streams: true,
                peek_timeout: Self::DEFAULT_PEEK_TIMEOUT,
                idempotency_key: true,
            }),
        }
    }

    fn shared_mut(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.shared)
    }

    /// Attempts, backoff, deadline and the cap on server delays.
    pub fn policy(mut self, policy: RetryPolicy) -> Self {
        self.shared_mut().policy = policy;
        self
    }

    /// The retry budget. Pass a clone of one budget to several layers to
    /// make them share it.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.shared_mut().budget = Some(budget);
        self
    }

    /// No budget: every retryable failure is retried up to the policy's
    /// limits, however many requests fail at once. Not recommended in
    /// production.
    pub fn without_budget(mut self) -> Self {
        self.shared_mut().budget = None;
        self
    }

    /// The classifier deciding what failed and whether to retry.
    pub fn classify<C: Classify>(mut self, classifier: C) -> Self {
        self.shared_mut().classifier = Arc::new(classifier);
        self
    }

    /// The largest request body kept in memory for replay. A request whose
    /// body may be larger (by its size hint), or has no upper bound, is sent
    /// once and never retried.
    pub fn max_request_body_bytes(mut self, bytes: usize) -> Self {
        self.shared_mut().max_request_body_bytes = bytes;
        self
    }

    /// How much of an error body (or of an event stream, looking for its
    /// first event) is read before classifying. The bytes are kept and
    /// returned with the response.
    pub fn max_error_body_bytes(mut self, bytes: usize) -> Self {
        self.shared_mut().max_error_body_bytes = bytes;
        self
    }

    /// Whether `200 text/event-stream` responses are held until their first
    /// event, to retry an in-band error event (on by default).
    pub fn peek_streams(mut self, enabled: bool) -> Self {
        self.shared_mut().peek_streams = enabled;
        self
    }

    /// How long to wait for an error body or a stream's first event before
    /// returning the response with what has arrived.
    pub fn peek_timeout(mut self, timeout: Duration) -> Self {
        self.shared_mut().peek_timeout = timeout;
        self
    }

    /// Whether a `POST` or `PATCH` that the caller sent without an
    /// `Idempotency-Key` gets one (on by default): generated once per
    /// logical request and sent unchanged with each of its attempts, so an
    /// upstream that honours the header does the work, and bills it, once
    /// however often the request is retried. A caller's own key is kept.
    pub fn idempotency_key(mut self, enabled: bool) -> Self {
        self.shared_mut().idempotency_key = enabled;
        self
    }

    /// The wall clock used for absolute times in headers (HTTP-dates,
    /// RFC 3339 resets). Sleeps and the deadline follow tokio's clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.shared_mut().clock = clock;
        self
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        RetryLayer::new()
    }
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::from_parts(inner, self.shared.clone())
    }
}
