//! A client's request body bounded in time (`client_body_timeout_secs`),
//! and the 408 its timing out is answered with.
//!
//! The server wraps each request body in a [`DeadlineBody`] and marks the
//! request with a [`BodyTimedOut`] flag; whatever a handler made of the
//! failed read, [`AnswerBodyTimeoutLayer`] answers such a request 408
//! `request_timeout` and closes its connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http::header::CONNECTION;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tollgate::{ApiError, BoxError};

/// Set on a request (in its extensions) whose body did not arrive within
/// `client_body_timeout_secs`; [`AnswerBodyTimeoutLayer`] answers it 408.
#[derive(Debug, Clone, Default)]
pub struct BodyTimedOut(Arc<AtomicBool>);

impl BodyTimedOut {
    fn expired(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

pin_project! {
    /// A request body that fails once its deadline passes.
    pub struct DeadlineBody {
        #[pin]
        body: Incoming,
        #[pin]
        deadline: Sleep,
        timeout: Duration,
        expired: BodyTimedOut,
    }
}

impl DeadlineBody {
    /// `body`, failing once `timeout` has passed without its end; `expired`
    /// is set when it does.
    pub fn new(body: Incoming, timeout: Duration, expired: BodyTimedOut) -> DeadlineBody {
        DeadlineBody {
            body,
            deadline: tokio::time::sleep(timeout),
            timeout,
            expired,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        ready!(this.deadline.poll(cx));
        this.expired.0.store(true, Ordering::Release);
        let secs = this.timeout.as_secs_f64();
        Poll::Ready(Some(Err(format!(
            "the request body did not arrive within {secs} s"
        )
        .into())))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Layer: a request whose body timed out (whatever the handler made of the
/// failed read) is answered 408 `request_timeout`, and its connection
/// closed, since the rest of the body may still be on its way. A tower
/// layer rather than `from_fn`, which costs every request a boxed future
/// and two boxed service clones for what is a flag check.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnswerBodyTimeoutLayer;

impl<S> tower::Layer<S> for AnswerBodyTimeoutLayer {
    type Service = AnswerBodyTimeout<S>;

    fn layer(&self, inner: S) -> AnswerBodyTimeout<S> {
        AnswerBodyTimeout(inner)
    }
}

/// The service of [`AnswerBodyTimeoutLayer`].
#[derive(Debug, Clone)]
pub struct AnswerBodyTimeout<S>(S);

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for AnswerBodyTimeout<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<tollgate::body::ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = AnswerBodyTimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let timed_out = req.extensions().get::<BodyTimedOut>().cloned();
        AnswerBodyTimeoutFuture {
            inner: self.0.call(req),
            timed_out,
        }
    }
}

pin_project! {
    /// The future of [`AnswerBodyTimeout`].
    pub struct AnswerBodyTimeoutFuture<F> {
        #[pin]
        inner: F,
        timed_out: Option<BodyTimedOut>,
    }
}

impl<F, B, E> Future for AnswerBodyTimeoutFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<tollgate::body::ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        if !this.timed_out.take().is_some_and(|flag| flag.expired()) {
            return Poll::Ready(Ok(response.map(tollgate::body::ResponseBody::inner)));
        }
        let mut response = tollgate::body::reject(
            ApiError::timeout()
                .with_status(http::StatusCode::REQUEST_TIMEOUT)
                .with_code("request_timeout")
                .with_message("The request body did not arrive in time."),
        );
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        Poll::Ready(Ok(response))
    }
}
