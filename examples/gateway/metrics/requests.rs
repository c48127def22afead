//! The per-request series: `tollgate_requests_total`,
//! `tollgate_request_duration_seconds`, `tollgate_tokens_total`,
//! `tollgate_spend_usd_total`, `tollgate_rejections_total`, counted by
//! handles registered when the app is built (see the parent module).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tollgate::usage::Usage;
use tollgate::{ApiError, ErrorKind};

use super::{Dollars, Labels, Metrics, OTHER_ROUTES, REASONS, STATUSES, TOKEN_KINDS, labels};
use crate::config::Config;
use crate::proxy::Api;

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
    pub(super) fn new(metrics: &Metrics, config: &Config) -> RequestMetrics {
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
