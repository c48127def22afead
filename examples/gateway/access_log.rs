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
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::MatchedPath;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tollgate::budget::Pricing;
use tollgate::retry::RetryInfo;
use tollgate::usage::{UsageReport, UsageTap};
use tollgate::{ApiError, Origin, Principal};

use crate::metrics::{Completed, RequestMetrics};
use crate::record::{Endpoint, RequestRecord};

/// What the access log needs besides the request.
pub struct AccessLog {
    /// Prices, for the cost of each request.
    pub pricing: Pricing,
    /// The per-request series.
    pub metrics: Arc<RequestMetrics>,
}

/// The access-log layer (see the module docs). A tower layer rather than
/// `from_fn`, which would cost every request a boxed future and two boxed
/// service clones. It makes the request's [`RequestRecord`], which the
/// layers inside fill in.
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

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for AccessLogService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = AccessLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let start = Instant::now();
        let method = req.method().clone();
        // The route's pattern, not the path: a path is what a client made up.
        let endpoint = Endpoint::of(req.uri().path());
        let route = match endpoint {
            Some(endpoint) => RouteLabel::Endpoint(endpoint.route()),
            // Beside the endpoints, in an axum `Router`: its matched route.
            None => req
                .extensions()
                .get::<MatchedPath>()
                .cloned()
                .map_or(RouteLabel::Unknown, RouteLabel::Matched),
        };
        let record = RequestRecord::new(endpoint);
        req.extensions_mut().insert(record.clone());
        AccessLogFuture {
            inner: self.inner.call(req),
            started: Some(Started {
                log: self.log.clone(),
                start,
                method,
                route,
                record,
            }),
        }
    }
}

/// A request's route pattern, without a copy.
enum RouteLabel {
    Endpoint(&'static str),
    Matched(MatchedPath),
    Unknown,
}

impl RouteLabel {
    fn as_str(&self) -> &str {
        match self {
            RouteLabel::Endpoint(route) => route,
            RouteLabel::Matched(path) => path.as_str(),
            RouteLabel::Unknown => "-",
        }
    }
}

/// What is known of a request when it starts.
struct Started {
    log: Arc<AccessLog>,
    start: Instant,
    method: http::Method,
    route: RouteLabel,
    record: Arc<RequestRecord>,
}

pin_project! {
    /// The future of [`AccessLogService`].
    pub struct AccessLogFuture<F> {
        #[pin]
        inner: F,
        started: Option<Started>,
    }
}

impl<F: Future<Output = Result<Response<B>, E>>, B, E> Future for AccessLogFuture<F> {
    type Output = Result<Response<B>, E>;

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
fn finish<B>(started: Started, response: Response<B>) -> Response<B> {
    let Started {
        log,
        start,
        method,
        route,
        record,
    } = started;
    let attempts = response
        .extensions()
        .get::<RetryInfo>()
        .map(|r| r.attempts)
        .unwrap_or(0);
    let status = response.status().as_u16();
    let error = response.extensions().get::<ApiError>();
    // Called, or failed to be reached (a transport failure carries no count).
    let called = attempts > 0 || error.is_some_and(|e| e.origin() == Origin::Upstream);
    let rejection = error
        .filter(|e| e.origin() == Origin::Gateway)
        .and_then(crate::metrics::rejection_reason);
    let done = move |report: Option<&UsageReport>| {
        let usage = report.map(|r| r.usage).unwrap_or_default();
        let model = record.model();
        let key = record.key();
        // A request that reached an upstream went through the routing
        // layer, so its route is the one it was sent on.
        let target = record.route().filter(|_| called).map(|r| &r.target);
        let cost = match (report, model.and_then(|m| log.pricing.get(m))) {
            (Some(r), Some(price)) => Some(price.cost_of(
                r.usage.prompt_tokens,
                r.usage.cached_tokens.unwrap_or(0),
                r.usage.completion_tokens,
            )),
            _ => None,
        };
        let elapsed = start.elapsed();
        log.metrics.record(&Completed {
            route: route.as_str(),
            model,
            key: key.map(Principal::key_id),
            status,
            elapsed,
            usage: report.map(|r| &r.usage),
            cost_usd: cost.map_or(0.0, |c| c.as_usd_f64()),
            rejection,
        });
        tracing::info!(
            key = key.map_or("-", Principal::key_id),
            model = model.unwrap_or("-"),
            %method,
            route = route.as_str(),
            status,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            tokens = usage.total_tokens,
            cost = cost.map_or_else(|| "$0.00".to_owned(), |c| c.to_string()),
            attempts,
            upstream = target.map_or("-", |t| &*t.label),
            upstream_name = target.map_or("-", |t| &*t.name),
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
