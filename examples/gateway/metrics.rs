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
//! | `tollgate_store_errors_total` | `store` (`keys`, `ledger`, `rate_limits`), `op` | store operations that failed |
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
mod stores;
mod streams;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tollgate::retry::UpstreamFault;
use tollgate::usage::Usage;
use tollgate::{ApiError, ErrorKind};

use crate::config::Config;
use crate::proxy::Api;

pub use self::attempts::AttemptLayer;
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

/// What the access log knows when a request is done.
pub struct Completed<'a> {
    /// The matched route, or `-`.
    pub route: &'a str,
    /// The request's model, as the client named it.
    pub model: Option<&'a str>,
    /// The caller's key id.
    pub key: Option<&'a str>,
    /// The answer's status.
    pub status: u16,
    /// From head to last byte.
    pub elapsed: Duration,
    /// The usage reported (or estimated) for its body.
    pub usage: Option<&'a Usage>,
    /// What it cost.
    pub cost_usd: f64,
    /// Why the gateway refused it, if it did.
    pub rejection: Option<&'static str>,
}

/// The per-request handles of one app (one config): arrays indexed by
/// route, model and status.
pub struct RequestMetrics {
    metrics: Metrics,
    per_key: bool,
    routes: Vec<Arc<str>>,
    /// Model name → index into `models` (0 is `-`).
    model_index: HashMap<Arc<str>, usize>,
    models: Vec<Arc<str>>,
    /// `[route][model][status]`; `None` where not registered up front.
    requests: Vec<Option<Counter>>,
    durations: Vec<Histogram>,
    tokens: Vec<[Counter; 3]>,
    spend: Vec<Dollars>,
    rejections: [Counter; 7],
}

impl RequestMetrics {
    fn new(metrics: &Metrics, config: &Config) -> RequestMetrics {
        let f = &metrics.inner;
        let mut models: Vec<Arc<str>> = vec![Arc::from("-")];
        models.extend(config.models.iter().map(|m| Arc::from(m.name.as_str())));
        let model_index = models
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, m)| (m.clone(), i))
            .collect();
        let routes: Vec<Arc<str>> = Api::ALL
            .iter()
            .map(|a| a.route())
            .chain(OTHER_ROUTES)
            .map(Arc::from)
            .collect();
        let mut requests = Vec::with_capacity(routes.len() * models.len() * STATUSES.len());
        for (r, route) in routes.iter().enumerate() {
            let proxied = r < Api::ALL.len();
            for (m, model) in models.iter().enumerate() {
                for status in STATUSES {
                    // Routes without a model only ever count under `-`.
                    let counter = (proxied || m == 0).then(|| {
                        f.requests
                            .get_or_create(&vec![
                                ("route", route.clone()),
                                ("model", model.clone()),
                                ("status", Arc::from(status.to_string())),
                            ])
                            .clone()
                    });
                    requests.push(counter);
                }
            }
        }
        let durations = routes
            .iter()
            .map(|route| {
                f.request_duration
                    .get_or_create(&vec![("route", route.clone())])
                    .clone()
            })
            .collect();
        let tokens = models
            .iter()
            .map(|model| {
                TOKEN_KINDS.map(|kind| {
                    f.tokens
                        .get_or_create(&vec![("model", model.clone()), ("kind", Arc::from(kind))])
                        .clone()
                })
            })
            .collect();
        let spend = models
            .iter()
            .map(|model| {
                f.spend
                    .get_or_create(&vec![("model", model.clone())])
                    .clone()
            })
            .collect();
        let rejections = REASONS.map(|reason| {
            f.rejections
                .get_or_create(&labels([("reason", reason)]))
                .clone()
        });
        RequestMetrics {
            metrics: metrics.clone(),
            per_key: config.metrics_per_key,
            routes,
            model_index,
            models,
            requests,
            durations,
            tokens,
            spend,
            rejections,
        }
    }

    /// Records a request that is done.
    pub fn record(&self, done: &Completed<'_>) {
        let f = &self.metrics.inner;
        let route = self
            .routes
            .iter()
            .position(|r| **r == *done.route)
            .unwrap_or(self.routes.len() - 1);
        let model = done
            .model
            .and_then(|m| self.model_index.get(m))
            .copied()
            .unwrap_or(0);
        if let Some(histogram) = self.durations.get(route) {
            histogram.observe(done.elapsed.as_secs_f64());
        }
        if let Some(reason) = done
            .rejection
            .and_then(|r| REASONS.iter().position(|x| *x == r))
        {
            self.rejections[reason].inc();
        }
        let key = done.key.filter(|_| self.per_key);
        let status_at = STATUSES.iter().position(|s| *s == done.status);
        let registered = status_at
            .filter(|_| key.is_none())
            .and_then(|s| {
                self.requests
                    .get((route * self.models.len() + model) * STATUSES.len() + s)
            })
            .and_then(Option::as_ref);
        match registered {
            Some(counter) => {
                counter.inc();
            }
            None => {
                let mut labels: Labels = vec![
                    ("route", self.routes[route].clone()),
                    ("model", self.models[model].clone()),
                    ("status", Arc::from(done.status.to_string())),
                ];
                if let Some(key) = key {
                    labels.push(("key", Arc::from(key)));
                }
                f.requests.get_or_create(&labels).inc();
            }
        }
        let Some(usage) = done.usage else { return };
        let counts = [
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens.unwrap_or(0),
        ];
        match key {
            None => {
                for (counter, n) in self.tokens[model].iter().zip(counts) {
                    if n > 0 {
                        counter.inc_by(n);
                    }
                }
                if done.cost_usd > 0.0 {
                    self.spend[model].inc_by(done.cost_usd);
                }
            }
            Some(key) => {
                for (kind, n) in TOKEN_KINDS.iter().zip(counts) {
                    if n > 0 {
                        let labels = vec![
                            ("model", self.models[model].clone()),
                            ("kind", Arc::from(*kind)),
                            ("key", Arc::from(key)),
                        ];
                        f.tokens.get_or_create(&labels).inc_by(n);
                    }
                }
                if done.cost_usd > 0.0 {
                    let labels = vec![
                        ("model", self.models[model].clone()),
                        ("key", Arc::from(key)),
                    ];
                    f.spend.get_or_create(&labels).inc_by(done.cost_usd);
                }
            }
        }
    }
}

/// Why the gateway refused a request, for `tollgate_rejections_total`
/// (`None`: not a refusal, e.g. a 500).
pub fn rejection_reason(error: &ApiError) -> Option<&'static str> {
    Some(match error.kind() {
        ErrorKind::Authentication => "auth",
        ErrorKind::PermissionDenied if error.code() == Some("model_not_allowed") => "model",
        ErrorKind::PermissionDenied => "auth",
        ErrorKind::InvalidModel => "model",
        ErrorKind::RateLimited if error.message().starts_with("Concurrency") => "concurrency",
        ErrorKind::RateLimited => "rate_limit",
        ErrorKind::BudgetExceeded => "budget",
        ErrorKind::InsufficientBalance => "balance",
        ErrorKind::InvalidRequest
        | ErrorKind::ContextLengthExceeded
        | ErrorKind::PayloadTooLarge
        | ErrorKind::Unprocessable
        | ErrorKind::NotFound => "invalid",
        ErrorKind::Timeout if error.status().as_u16() == 408 => "invalid",
        _ => return None,
    })
}

/// Who may read `/metrics` on the main listener: the admin keys of the
/// config, compared by SHA-256 in constant time.
///
/// The admin API (gw15) brings the one check for admin keys; until it is
/// merged, this reads the same config fields.
pub struct MetricsAccess {
    hashes: Vec<[u8; 32]>,
}

impl MetricsAccess {
    /// From `admin_keys` and `admin_key_sha256s`; a hash that is not 64 hex
    /// digits is an error naming its field.
    pub fn new(config: &Config) -> Result<MetricsAccess, String> {
        use sha2::Digest;
        let mut hashes: Vec<[u8; 32]> = config
            .admin_keys
            .iter()
            .map(|k| sha2::Sha256::digest(k.expose().as_bytes()).into())
            .collect();
        for (i, hex) in config.admin_key_sha256s.iter().enumerate() {
            let bytes = (0..32)
                .map(|j| {
                    hex.get(2 * j..2 * j + 2)
                        .and_then(|b| u8::from_str_radix(b, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .filter(|_| hex.len() == 64);
            match bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                Some(hash) => hashes.push(hash),
                None => {
                    return Err(format!("admin_key_sha256s[{i}]: expected 64 hex digits"));
                }
            }
        }
        Ok(MetricsAccess { hashes })
    }

    /// Whether `req` carries an admin key.
    fn admits(&self, req: &Request) -> bool {
        use sha2::Digest;
        use subtle::ConstantTimeEq;
        let Some(key) = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let hash: [u8; 32] = sha2::Sha256::digest(key.trim().as_bytes()).into();
        self.hashes
            .iter()
            .fold(false, |found, h| found | bool::from(h.ct_eq(&hash)))
    }
}

/// `GET /metrics` for the main listener, behind an admin key.
pub fn admin_router(metrics: Metrics, access: Arc<MetricsAccess>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(admin_metrics))
        .with_state((metrics, access))
}

/// `GET /metrics` for `metrics_listen`, without a key.
pub fn open_router(metrics: Metrics) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(open_metrics))
        .with_state(metrics)
}

/// `GET /metrics` on the main listener: 404 when no admin key is
/// configured (as if absent), 401 without one.
pub async fn admin_metrics(
    State((metrics, access)): State<(Metrics, Arc<MetricsAccess>)>,
    req: Request,
) -> Response {
    if access.hashes.is_empty() {
        return ApiError::not_found()
            .with_message("Unknown path.")
            .into_response();
    }
    if !access.admits(&req) {
        return ApiError::authentication()
            .with_message("The metrics need an admin key: Authorization: Bearer <admin key>.")
            .into_response();
    }
    exposition(&metrics)
}

/// `GET /metrics` on `metrics_listen`.
pub async fn open_metrics(State(metrics): State<Metrics>) -> Response {
    exposition(&metrics)
}

fn exposition(metrics: &Metrics) -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        toml::from_str(toml).unwrap()
    }

    const MODELS: &str =
        "[[models]]\nname = \"m\"\ninput_usd_per_million = 1.0\noutput_usd_per_million = 2.0\n";

    #[test]
    fn known_series_are_there_from_the_start_and_counted_by_handle() {
        let metrics = Metrics::new();
        let requests = metrics.requests(&config(MODELS));
        let text = metrics.render();
        assert!(
            text.contains(
                r#"tollgate_requests_total{route="/v1/chat/completions",model="m",status="200"} 0"#
            ),
            "{text}"
        );
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 5,
            total_tokens: 8,
            ..Usage::default()
        };
        requests.record(&Completed {
            route: "/v1/chat/completions",
            model: Some("m"),
            key: Some("k1"),
            status: 200,
            elapsed: Duration::from_millis(20),
            usage: Some(&usage),
            cost_usd: 0.000013,
            rejection: None,
        });
        // An unusual status, and a model a client made up.
        requests.record(&Completed {
            route: "/v1/chat/completions",
            model: Some("invented"),
            key: None,
            status: 418,
            elapsed: Duration::from_millis(1),
            usage: None,
            cost_usd: 0.0,
            rejection: Some("invalid"),
        });
        let text = metrics.render();
        for line in [
            r#"tollgate_requests_total{route="/v1/chat/completions",model="m",status="200"} 1"#,
            r#"tollgate_requests_total{route="/v1/chat/completions",model="-",status="418"} 1"#,
            r#"tollgate_tokens_total{model="m",kind="completion"} 5"#,
            r#"tollgate_spend_usd_total{model="m"} 0.000013"#,
            r#"tollgate_rejections_total{reason="invalid"} 1"#,
            r#"tollgate_request_duration_seconds_count{route="/v1/chat/completions"} 2"#,
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert!(!text.contains("k1") && !text.contains("invented"), "{text}");
    }

    #[test]
    fn a_key_label_only_when_asked() {
        let metrics = Metrics::new();
        let requests = metrics.requests(&config(&format!("metrics_per_key = true\n{MODELS}")));
        requests.record(&Completed {
            route: "/v1/embeddings",
            model: Some("m"),
            key: Some("k1"),
            status: 200,
            elapsed: Duration::from_millis(1),
            usage: None,
            cost_usd: 0.0,
            rejection: None,
        });
        let text = metrics.render();
        assert!(
            text.contains(r#"tollgate_requests_total{route="/v1/embeddings",model="m",status="200",key="k1"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn rejections_have_reasons() {
        let reason = |e: ApiError| rejection_reason(&e);
        assert_eq!(reason(ApiError::authentication()), Some("auth"));
        assert_eq!(reason(ApiError::invalid_model()), Some("model"));
        assert_eq!(
            reason(ApiError::permission_denied().with_code("model_not_allowed")),
            Some("model")
        );
        assert_eq!(reason(ApiError::rate_limited()), Some("rate_limit"));
        assert_eq!(
            reason(ApiError::rate_limited().with_message("Concurrency limit exceeded: 1")),
            Some("concurrency")
        );
        assert_eq!(reason(ApiError::budget_exceeded()), Some("budget"));
        assert_eq!(reason(ApiError::insufficient_balance()), Some("balance"));
        assert_eq!(reason(ApiError::invalid_request()), Some("invalid"));
        assert_eq!(reason(ApiError::internal()), None);
    }

    #[test]
    fn admin_key_hashes_must_be_hex() {
        let err = MetricsAccess::new(&config("admin_key_sha256s = [\"abc\"]\n")).err();
        assert!(err.is_some_and(|e| e.contains("admin_key_sha256s[0]")));
        let hex = "00".repeat(32);
        assert!(MetricsAccess::new(&config(&format!("admin_key_sha256s = [\"{hex}\"]\n"))).is_ok());
    }
}
