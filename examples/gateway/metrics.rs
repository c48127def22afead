//! `GET /metrics`: what an operator alerts on, in the Prometheus text
//! exposition (OpenMetrics 1.0, which Prometheus scrapes natively).
//!
//! | series | labels | what |
//! |---|---|---|
//! | `tollgate_requests_total` | `route`, `model`, `status` (+ `key`) | requests answered, counted when the answer (a stream: its last byte) is done |
//! | `tollgate_request_duration_seconds` | `route` | histogram of the same, from head to last byte |
//! | `tollgate_upstream_attempts_total` | `upstream`, `outcome` | each attempt: `success`, `client_error`, `rate_limited`, `server_error`, `transport_error`, `timeout` (abandoned by the per-attempt timeout) |
//! | `tollgate_upstream_duration_seconds` | `upstream` | histogram of each attempt, to its response head |
//! | `tollgate_upstream_faults_total` | `upstream`, `fault` | the upstream refused the gateway's own `credentials`, or its `quota` is spent |
//! | `tollgate_tokens_total` | `model`, `kind` (`prompt`, `completion`, `cached`) (+ `key`) | tokens used, as settled |
//! | `tollgate_spend_usd_total` | `model` (+ `key`) | money charged, in USD |
//! | `tollgate_rejections_total` | `reason` (`auth`, `model`, `rate_limit`, `concurrency`, `budget`, `balance`, `invalid`) | requests the gateway refused itself |
//! | `tollgate_streams_active` | | streams open now |
//! | `tollgate_stream_errors_total` | `reason` (`upstream_failed`, `truncated`, `idle_timeout`, `shutdown`, `upstream_error`, `client_closed`) | streams that did not end as their API ends them |
//! | `tollgate_store_errors_total` | `store` (`keys`, `ledger`, `rate_limits`, `admission`: on Redis, the one call that admits a request's rate limits and budgets), `op` | store operations that failed |
//!
//! A `key` label is added only with `metrics_per_key = true`: one series
//! per key and model is fine for ten keys and ruinous for ten thousand.
//! `model` is a configured model name or `-`: a name a client made up never
//! becomes a label.
//!
//! Served on `metrics_listen` when set (no key: bind it where only the
//! scraper reaches), otherwise on the main listener to admin keys only.
//!
//! # Why prometheus-client, and not the `metrics` facade?
//!
//! Both hand out handles that are an `Arc` around atomics, so the hot path
//! can count without a lookup. Three things decided it: spend is money, and
//! `tollgate_spend_usd_total` must be a counter of dollars, which
//! prometheus-client has (`Counter<f64>`) and the facade does not (its
//! counters are integers); the registry is a value the gateway owns, not a
//! process-wide recorder, so every app built from a config (and every test)
//! has its own; and histograms are bucketed as they are observed, where the
//! facade's exporter keeps every sample until a scrape or an upkeep task
//! drains them (a gateway nobody scrapes would grow). The price is a mutex
//! per histogram observation, uncontended in practice (one per request and
//! one per attempt).
//!
//! # Why handles registered up front?
//!
//! A family lookup hashes the labels and takes a read lock; building the
//! labels allocates. Every request would pay that three or four times. So
//! the handles for the known label sets (each route × configured model ×
//! common status, each model × token kind, each upstream × outcome) are
//! registered when the app is built, and a request indexes arrays; only an
//! unusual status (or a `key` label) goes through the family.

mod attempts;
mod endpoint;
mod requests;
mod stores;
mod streams;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tollgate::retry::UpstreamFault;

use crate::config::Config;

pub use self::attempts::AttemptLayer;
pub use self::endpoint::{exposition, open_router};
pub use self::requests::{Completed, RequestMetrics, rejection_reason};
pub use self::stores::Counted;
pub use self::streams::StreamMeter;

/// A label set: names are fixed, values shared.
type Labels = Vec<(&'static str, Arc<str>)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;
type Dollars = Counter<f64, AtomicU64>;

/// Routes whose requests have a model, and the others; `-` is a path no
/// route matched.
const OTHER_ROUTES: [&str; 6] = [
    "/v1/models",
    "/v1/models/{*id}",
    "/v1/key",
    "/health",
    "/metrics",
    "-",
];
/// Statuses registered up front; others are registered when they happen.
const STATUSES: [u16; 12] = [200, 400, 401, 402, 403, 404, 408, 429, 500, 502, 503, 504];
/// The reasons of `tollgate_rejections_total`.
const REASONS: [&str; 7] = [
    "auth",
    "model",
    "rate_limit",
    "concurrency",
    "budget",
    "balance",
    "invalid",
];
/// The outcomes of `tollgate_upstream_attempts_total`.
const OUTCOMES: [&str; 6] = [
    "success",
    "client_error",
    "rate_limited",
    "server_error",
    "transport_error",
    "timeout",
];
const TOKEN_KINDS: [&str; 3] = ["prompt", "completion", "cached"];

/// Every metric family of the process, in one registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Families>,
}

struct Families {
    registry: Registry,
    requests: Family<Labels, Counter>,
    request_duration: HistogramFamily,
    upstream_attempts: Family<Labels, Counter>,
    upstream_duration: HistogramFamily,
    upstream_faults: Family<Labels, Counter>,
    tokens: Family<Labels, Counter>,
    spend: Family<Labels, Dollars>,
    rejections: Family<Labels, Counter>,
    streams_active: Gauge,
    stream_errors: Family<Labels, Counter>,
    store_errors: Family<Labels, Counter>,
}

fn duration_histogram() -> Histogram {
    // 5 ms to ~82 s: a cached answer to a long stream.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.into_iter().map(|(k, v)| (k, Arc::from(v))).collect()
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every family, registered, with no series yet.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let histograms = || HistogramFamily::new_with_constructor(duration_histogram);
        let families = Families {
            requests: Family::default(),
            request_duration: histograms(),
            upstream_attempts: Family::default(),
            upstream_duration: histograms(),
            upstream_faults: Family::default(),
            tokens: Family::default(),
            spend: Family::default(),
            rejections: Family::default(),
            streams_active: Gauge::default(),
            stream_errors: Family::default(),
            store_errors: Family::default(),
            registry: Registry::default(),
        };
        // Counter names get `_total` from the encoder.
        let f = &families;
        registry.register("tollgate_requests", "Requests answered", f.requests.clone());
        registry.register(
            "tollgate_request_duration_seconds",
            "Time from a request's head to its answer's last byte",
            f.request_duration.clone(),
        );
        registry.register(
            "tollgate_upstream_attempts",
            "Attempts sent to an upstream, by outcome",
            f.upstream_attempts.clone(),
        );
        registry.register(
            "tollgate_upstream_duration_seconds",
            "Time from an attempt to its response head",
            f.upstream_duration.clone(),
        );
        registry.register(
            "tollgate_upstream_faults",
            "Upstream refusals of the gateway's own credentials or quota",
            f.upstream_faults.clone(),
        );
        registry.register("tollgate_tokens", "Tokens used", f.tokens.clone());
        registry.register(
            "tollgate_spend_usd",
            "Money charged, in USD",
            f.spend.clone(),
        );
        registry.register(
            "tollgate_rejections",
            "Requests the gateway refused itself",
            f.rejections.clone(),
        );
        registry.register(
            "tollgate_streams_active",
            "Streams open now",
            f.streams_active.clone(),
        );
        registry.register(
            "tollgate_stream_errors",
            "Streams that did not end as their API ends them",
            f.stream_errors.clone(),
        );
        registry.register(
            "tollgate_store_errors",
            "Store operations that failed",
            f.store_errors.clone(),
        );
        for reason in REASONS {
            let _ = f.rejections.get_or_create(&labels([("reason", reason)]));
        }
        let families = Families {
            registry,
            ..families
        };
        Metrics {
            inner: Arc::new(families),
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a `String` cannot fail.
        let _ = encode(&mut text, &self.inner.registry);
        text
    }

    /// The handles of one upstream's series.
    pub fn upstream(&self, name: &str) -> UpstreamMetrics {
        let f = &self.inner;
        let outcome = |outcome| {
            f.upstream_attempts
                .get_or_create(&labels([("upstream", name), ("outcome", outcome)]))
                .clone()
        };
        let fault = |fault| {
            f.upstream_faults
                .get_or_create(&labels([("upstream", name), ("fault", fault)]))
                .clone()
        };
        UpstreamMetrics(Arc::new(UpstreamHandles {
            outcomes: OUTCOMES.map(outcome),
            duration: f
                .upstream_duration
                .get_or_create(&labels([("upstream", name)]))
                .clone(),
            credentials: fault("credentials"),
            quota: fault("quota"),
        }))
    }

    /// The counter of failed `op`s of `store`.
    fn store_errors(&self, store: &str, op: &str) -> Counter {
        self.inner
            .store_errors
            .get_or_create(&labels([("store", store), ("op", op)]))
            .clone()
    }

    /// The handles for the requests of `config`'s routes and models.
    pub fn requests(&self, config: &Config) -> RequestMetrics {
        RequestMetrics::new(self, config)
    }

    /// The stream meter, for the layer outside the stream trailer.
    pub fn streams(&self) -> StreamMeter {
        StreamMeter::new(self)
    }
}

/// One upstream's handles.
#[derive(Clone)]
pub struct UpstreamMetrics(Arc<UpstreamHandles>);

struct UpstreamHandles {
    outcomes: [Counter; 6],
    duration: Histogram,
    credentials: Counter,
    quota: Counter,
}

impl UpstreamMetrics {
    /// Counts an attempt's `outcome` (an index into [`OUTCOMES`]).
    fn attempt(&self, outcome: usize, took: Duration) {
        if let Some(counter) = self.0.outcomes.get(outcome) {
            counter.inc();
        }
        self.0.duration.observe(took.as_secs_f64());
    }

    /// Counts a refusal of the gateway's own account.
    pub fn fault(&self, fault: UpstreamFault) {
        match fault {
            UpstreamFault::Quota => self.0.quota.inc(),
            _ => self.0.credentials.inc(),
        };
    }
}

#[cfg(test)]
mod tests;
