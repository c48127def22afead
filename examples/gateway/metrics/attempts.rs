//! The attempt meter: below the retry layer, each attempt to an upstream
//! is counted by outcome and timed to its response head.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::UpstreamMetrics;
use std::sync::Arc;

use crate::record::RequestRecord;

/// Meters the attempts of the client it wraps (see the module docs).
#[derive(Clone)]
pub struct AttemptLayer {
    metrics: UpstreamMetrics,
}

impl AttemptLayer {
    /// Counting into one upstream's series.
    pub fn new(metrics: UpstreamMetrics) -> AttemptLayer {
        AttemptLayer { metrics }
    }
}

impl<S> Layer<S> for AttemptLayer {
    type Service = Attempts<S>;

    fn layer(&self, inner: S) -> Attempts<S> {
        Attempts {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`AttemptLayer`] builds. Its error is the inner client's,
/// unchanged: the retry layer looks into it to tell a refused connection
/// from the others.
#[derive(Clone)]
pub struct Attempts<S> {
    inner: S,
    metrics: UpstreamMetrics,
}

impl<S, B, R> Service<http::Request<B>> for Attempts<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = AttemptFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some(record) = req.extensions().get::<Arc<RequestRecord>>() {
            record.add_attempt();
        }
        AttemptFuture {
            inner: self.inner.call(req),
            started: Instant::now(),
            metrics: Some(self.metrics.clone()),
        }
    }
}

pin_project! {
    /// An attempt in flight; counted when it ends, or as `timeout` when the
    /// retry layer abandons it (its per-attempt timeout).
    pub struct AttemptFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        // `None` once counted.
        metrics: Option<UpstreamMetrics>,
    }

    impl<F> PinnedDrop for AttemptFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(metrics) = this.metrics.take() {
                metrics.attempt(TIMEOUT, this.started.elapsed());
            }
        }
    }
}

/// Indexes into `OUTCOMES`.
const SUCCESS: usize = 0;
const CLIENT_ERROR: usize = 1;
const RATE_LIMITED: usize = 2;
const SERVER_ERROR: usize = 3;
const TRANSPORT_ERROR: usize = 4;
const TIMEOUT: usize = 5;

impl<F, R, E> Future for AttemptFuture<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let outcome = match &result {
            Ok(response) => match response.status().as_u16() {
                429 => RATE_LIMITED,
                s if s >= 500 => SERVER_ERROR,
                s if s >= 400 => CLIENT_ERROR,
                _ => SUCCESS,
            },
            Err(_) => TRANSPORT_ERROR,
        };
        if let Some(metrics) = this.metrics.take() {
            metrics.attempt(outcome, this.started.elapsed());
        }
        Poll::Ready(result)
    }
}
