//! One log line and one set of metrics per request.
//!
//! Each request ends with one `tracing` line (`"message": "request"`): key
//! id, model, method, route, status, tokens, cost, attempts, upstream (its
//! URL without credentials, or `mock`) and its name, latency; never a
//! secret. A stream is logged when its body ends (its
//! usage is known then), so its latency is the whole stream's. The same
//! moment records the request's metrics ([`RequestMetrics::record`]), so the
//! log and `/metrics` always agree.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use pin_project_lite::pin_project;
use tollgate::budget::Pricing;
use tollgate::retry::RetryInfo;
use tollgate::usage::{UsageReport, UsageTap};
use tollgate::{ApiError, Origin, Principal};

use crate::metrics::{Completed, RequestMetrics};

/// What the access log needs besides the request.
pub struct AccessLog {
    /// Prices, for the cost of each request.
    pub pricing: Pricing,
    /// The per-request series.
    pub metrics: Arc<RequestMetrics>,
}

/// What the inner part of the stack learns about a request, for its log
/// line: the key, the model, the upstream.
#[derive(Clone, Default)]
pub struct LogSlot(Arc<Mutex<LogFields>>);

#[derive(Clone, Default)]
struct LogFields {
    /// The caller (an `Arc`: no copy of its id per request).
    key: Option<Principal>,
    model: Option<String>,
    /// The upstream's name and its label (URL without credentials, or `mock`).
    upstream: Option<(Arc<str>, Arc<str>)>,
}

impl LogSlot {
    /// Records the caller and the request's model.
    pub fn record(&self, key: Option<Principal>, model: Option<String>) {
        if let Ok(mut fields) = self.0.lock() {
            fields.key = key;
            fields.model = model;
        }
    }

    /// Records the upstream the request is routed to: its name and label.
    pub fn set_upstream(&self, name: Arc<str>, label: Arc<str>) {
        if let Ok(mut fields) = self.0.lock() {
            fields.upstream = Some((name, label));
        }
    }

    fn take(&self) -> LogFields {
        self.0
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default()
    }
}

/// The access-log layer (see the module docs). A tower layer rather than
/// `from_fn`, which would cost every request a boxed future and two boxed
/// service clones.
#[derive(Clone)]
pub struct AccessLogLayer(Arc<AccessLog>);

impl AccessLogLayer {
    /// Logs and records every request with `log`'s prices and series.
    pub fn new(log: Arc<AccessLog>) -> Self {
        AccessLogLayer(log)
    }
}

impl<S> tower::Layer<S> for AccessLogLayer {
    type Service = AccessLogService<S>;

    fn layer(&self, inner: S) -> AccessLogService<S> {
        AccessLogService {
            inner,
            log: self.0.clone(),
        }
    }
}

/// The service of [`AccessLogLayer`].
#[derive(Clone)]
pub struct AccessLogService<S> {
    inner: S,
    log: Arc<AccessLog>,
}

impl<S: tower::Service<Request, Response = Response>> tower::Service<Request>
    for AccessLogService<S>
{
    type Response = Response;
    type Error = S::Error;
    type Future = AccessLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let start = Instant::now();
        let method = req.method().clone();
        // The route's pattern, not the path: a path is what a client made up.
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| "-".to_owned(), |p| p.as_str().to_owned());
        let slot = LogSlot::default();
        req.extensions_mut().insert(slot.clone());
        AccessLogFuture {
            inner: self.inner.call(req),
            started: Some(Started {
                log: self.log.clone(),
                start,
                method,
                route,
                slot,
            }),
        }
    }
}

/// What is known of a request when it starts.
struct Started {
    log: Arc<AccessLog>,
    start: Instant,
    method: http::Method,
    route: String,
    slot: LogSlot,
}

pin_project! {
    /// The future of [`AccessLogService`].
    pub struct AccessLogFuture<F> {
        #[pin]
        inner: F,
        started: Option<Started>,
    }
}

impl<F: Future<Output = Result<Response, E>>, E> Future for AccessLogFuture<F> {
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        Poll::Ready(Ok(match this.started.take() {
            Some(started) => finish(started, response),
            None => response,
        }))
    }
}

/// Logs and records `response` (when its usage is known, for a stream at
/// its end).
fn finish(started: Started, response: Response) -> Response {
    let Started {
        log,
        start,
        method,
        route,
        slot,
    } = started;
    let LogFields {
        key,
        model,
        upstream,
    } = slot.take();
    let attempts = response
        .extensions()
        .get::<RetryInfo>()
        .map(|r| r.attempts)
        .unwrap_or(0);
    let status = response.status().as_u16();
    let error = response.extensions().get::<ApiError>();
    // Called, or failed to be reached (a transport failure carries no count).
    let called = attempts > 0 || error.is_some_and(|e| e.origin() == Origin::Upstream);
    let (upstream_name, upstream) = match upstream {
        Some(upstream) if called => upstream,
        _ => (Arc::from("-"), Arc::from("-")),
    };
    let rejection = error
        .filter(|e| e.origin() == Origin::Gateway)
        .and_then(crate::metrics::rejection_reason);
    let done = move |report: Option<&UsageReport>| {
        let usage = report.map(|r| r.usage).unwrap_or_default();
        let cost = match (report, model.as_deref().and_then(|m| log.pricing.get(m))) {
            (Some(r), Some(price)) => Some(price.cost_of(
                r.usage.prompt_tokens,
                r.usage.cached_tokens.unwrap_or(0),
                r.usage.completion_tokens,
            )),
            _ => None,
        };
        let elapsed = start.elapsed();
        log.metrics.record(&Completed {
            route: &route,
            model: model.as_deref(),
            key: key.as_ref().map(Principal::key_id),
            status,
            elapsed,
            usage: report.map(|r| &r.usage),
            cost_usd: cost.map_or(0.0, |c| c.as_usd_f64()),
            rejection,
        });
        tracing::info!(
            key = key.as_ref().map_or("-", Principal::key_id),
            model = model.as_deref().unwrap_or("-"),
            %method,
            route,
            status,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            tokens = usage.total_tokens,
            cost = cost.map_or_else(|| "$0.00".to_owned(), |c| c.to_string()),
            attempts,
            upstream = &*upstream,
            upstream_name = &*upstream_name,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    };
    match response.extensions().get::<UsageTap>() {
        Some(tap) => tap.subscribe(move |report| done(Some(report))),
        None => done(None),
    }
    response
}
