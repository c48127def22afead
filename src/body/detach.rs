//! Calls that finish, and get paid for, after their client went away:
//! [`DetachLayer`].
//!
//! A client that hangs up does not stop the provider: the request was sent,
//! the model generates the answer and the provider bills it. But hyper drops
//! a request's service future when its client disconnects before the
//! response head, and the response body when it disconnects during the
//! body, so everything inside (the budget's hold, the usage scan, the rate
//! limiter's token count) ends early: a budget releases its hold and charges
//! nothing, or charges only the part of a stream the client saw. An operator
//! then pays the provider for work nobody was charged for, and a client that
//! hangs up early spends without limit.
//!
//! [`DetachLayer`] lets the call and its body run in place while the client
//! is there, and hands them to a task of their own the moment the client
//! leaves: before the head (the call's future is dropped) or during the
//! body (the body is dropped). The task finishes the call and reads the
//! inner body to its end (throwing the bytes away), so the layers inside
//! settle as if the client had read it all: with the usage the upstream
//! reports at the end. The
//! drain is bounded in time ([`drain_timeout`](DetachLayer::drain_timeout),
//! default 60 s) and in bytes ([`max_drain_bytes`](DetachLayer::max_drain_bytes),
//! default 64 MiB); past either, the inner body is dropped and the layers
//! inside settle as for any body dropped before its end (for the budget: the
//! prompt plus the output seen).
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tollgate::body::DetachLayer;
//! use tollgate::usage::{self, BodyEnd, UsageOptions};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let completed = Arc::new(AtomicBool::new(false));
//! let seen = completed.clone();
//! let mut service = ServiceBuilder::new()
//!     .layer(DetachLayer::new().drain_timeout(Duration::from_secs(30)))
//!     // Inside: whatever must see the whole body (here, the usage scan).
//!     .map_response(move |response| {
//!         let seen = seen.clone();
//!         usage::observe(response, UsageOptions::default(), move |report| {
//!             seen.store(report.end == BodyEnd::Completed, Ordering::SeqCst);
//!         })
//!     })
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         let body = r#"{"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#;
//!         let response = Response::builder().header("content-type", "application/json");
//!         Ok::<_, Infallible>(response.body(Full::new(Bytes::from(body))).unwrap())
//!     }));
//!
//! // The client takes the head and hangs up without reading the body.
//! let response = service.ready().await?.call(Request::new(Full::default())).await?;
//! drop(response);
//! // The task reads the body to its end anyway.
//! for _ in 0..100 {
//!     if completed.load(Ordering::SeqCst) {
//!         break;
//!     }
//!     tokio::time::sleep(Duration::from_millis(10)).await;
//! }
//! assert!(completed.load(Ordering::SeqCst));
//! # Ok(())
//! # }
//! ```
//!
//! # Why in place, and a task only for the calls left behind
//!
//! A future that must outlive its caller has to be owned by someone other
//! than the caller: this is how axum and hyper users opt out of
//! cancellation (`tokio::spawn` the work). Spawning every call, with a
//! channel to pass its frames to the client, did that, but cost every
//! request a task, a oneshot, a channel and a hop through it per frame,
//! most of what the layer cost (`PERFORMANCE.md`). Only the calls whose
//! client left need an owner, so the layer polls the call and the body
//! where the client does, and their `Drop` spawns the task that finishes
//! them. The call's future and the body are boxed, so that they can move to
//! that task after they were polled (two allocations per call). A panic in
//! the call or the body reaches the caller as any panic does; what
//! panicked is not handed on.
//!
//! # Why bounded
//!
//! A client that hangs up must not leave an unbounded amount of work
//! behind: a stream that never ends, or one that ends only after an hour,
//! would hold an upstream connection and a task for as long. The time bound
//! is the operator's trade-off between exact charges for long answers and
//! connections held for nobody; the byte bound stops an upstream that sends
//! far more than any answer.
//!
//! # Where it goes
//!
//! Outside every layer that settles on the body's end (the budget, the rate
//! limiter, the usage observers), and inside the layers that only answer the
//! client (the error envelope, an access log). Its responses' bodies are
//! [`ResponseBody<DetachedBody<B>>`](ResponseBody). A call runs without a
//! tokio runtime; handing it on when its client leaves needs one (without
//! it, the call is dropped and an error logged).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use super::ResponseBody;
use crate::{ApiError, BoxError};

/// Finishes each call, and reads its response body to its end, even when
/// the client has gone away. See the [module docs](crate::body::detach).
#[derive(Debug, Clone)]
pub struct DetachLayer {
    limits: Limits,
    calls: DetachedCalls,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    drain_timeout: Duration,
    max_drain_bytes: u64,
}

impl Default for DetachLayer {
    fn default() -> Self {
        DetachLayer::new()
    }
}

impl DetachLayer {
    /// A layer that drains for at most 60 s and 64 MiB after the client left.
    pub fn new() -> Self {
        DetachLayer {
            limits: Limits {
                drain_timeout: Duration::from_secs(60),
                max_drain_bytes: 64 << 20,
            },
            calls: DetachedCalls::new(),
        }
    }

    /// Counts the calls still running in `calls` (shared with the layers of
    /// other routers), for a shutdown to wait for them.
    pub fn calls(mut self, calls: DetachedCalls) -> Self {
        self.calls = calls;
        self
    }

    /// How long a body is still read after its client left (default 60 s);
    /// zero drops it at once.
    pub fn drain_timeout(mut self, limit: Duration) -> Self {
        self.limits.drain_timeout = limit;
        self
    }

    /// How many bytes of a body are still read after its client left
    /// (default 64 MiB).
    pub fn max_drain_bytes(mut self, limit: u64) -> Self {
        self.limits.max_drain_bytes = limit;
        self
    }
}

impl<S> Layer<S> for DetachLayer {
    type Service = Detach<S>;

    fn layer(&self, inner: S) -> Detach<S> {
        Detach {
            inner,
            limits: self.limits,
            calls: self.calls.clone(),
        }
    }
}

/// The service built by [`DetachLayer`].
#[derive(Debug, Clone)]
pub struct Detach<S> {
    inner: S,
    limits: Limits,
    calls: DetachedCalls,
}

impl<S> Detach<S> {
    crate::macros::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Detach<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<DetachedBody<ResBody>>>;
    type Error = S::Error;
    type Future = DetachFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let mut inner = crate::macros::take_ready(&mut self.inner);
        DetachFuture {
            call: Some(Box::pin(inner.call(req))),
            left: Some(Left {
                limits: self.limits,
                running: self.calls.start(),
                span: tracing::Span::current(),
            }),
            finish_call: finish_call::<S::Future, ResBody, S::Error>,
            finish_body: finish_body::<ResBody>,
        }
    }
}

/// What a call needs once its client has left: the drain's bounds, its
/// place in the count, and the request's span for what it logs.
struct Left {
    limits: Limits,
    running: Running,
    span: tracing::Span,
}

impl Left {
    /// Runs `work` as a task of its own, counted until it ends. Without a
    /// tokio runtime (it is shutting down) there is nothing to run it on.
    fn spawn(self, work: impl Future<Output = ()> + Send + 'static) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("DetachLayer has no tokio runtime to finish a call on");
            return;
        };
        let Left { running, span, .. } = self;
        runtime.spawn(
            async move {
                work.await;
                drop(running);
            }
            .instrument(span),
        );
    }
}

/// A call whose client left before its head: finished, and its body
/// drained, by a task.
fn finish_call<F, B, E>(call: Pin<Box<F>>, left: Left)
where
    F: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
{
    let limits = left.limits;
    left.spawn(async move {
        // An error is the answer: nothing left to read.
        let Ok(response) = call.await else {
            return;
        };
        drain(
            Box::pin(response.into_body()),
            limits,
            "before the response head",
        )
        .await;
    });
}

/// A body whose client left before its end: drained by a task. A body
/// that says it is at its end was read whole (hyper stops polling such a
/// body and drops it): its last poll, which lets the layers inside see the
/// end, is made here, and a task only if that poll cannot finish at once.
fn finish_body<B>(mut body: Pin<Box<B>>, left: Left)
where
    B: Body<Data = Bytes> + Send + 'static,
{
    if body.is_end_stream() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if let Poll::Ready(None) = body.as_mut().poll_frame(&mut cx) {
            return; // `left` counts the call out
        }
    }
    let limits = left.limits;
    left.spawn(drain(body, limits, "during the response body"));
}

/// Reads `body` to its end, its bytes thrown away, within `limits`.
async fn drain<B>(mut body: Pin<Box<B>>, limits: Limits, when: &'static str)
where
    B: Body<Data = Bytes>,
{
    let mut drained = 0u64;
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return "the body failed";
            };
            if let Some(data) = frame.data_ref() {
                drained = drained.saturating_add(data.remaining() as u64);
                if drained > limits.max_drain_bytes {
                    return "the byte limit was reached";
                }
            }
        }
        "the body ended"
    };
    let outcome = tokio::time::timeout(limits.drain_timeout, read)
        .await
        .unwrap_or("the time limit was reached");
    tracing::debug!(when, outcome, drained, "client left; response body drained");
}

/// The response future of [`Detach`]: the call, polled in place while its
/// client waits. Dropped before the call answered, it hands the call to a
/// task that finishes it and drains its body.
pub struct DetachFuture<F, B> {
    /// Boxed so that it can move to a task after it was polled; taken out
    /// while it is polled, so a call that panics is not handed on.
    call: Option<Pin<Box<F>>>,
    left: Option<Left>,
    /// The hand-overs, chosen where the types are known to be `Send`
    /// (a `Drop` impl cannot ask for more than the type does).
    finish_call: fn(Pin<Box<F>>, Left),
    finish_body: fn(Pin<Box<B>>, Left),
}

impl<F, B> std::fmt::Debug for DetachFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetachFuture")
            .field("answered", &self.call.is_none())
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for DetachFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<DetachedBody<B>>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(mut call) = self.call.take() else {
            // Polled after it answered: a caller's bug, not the client's.
            return Poll::Ready(Ok(super::reject(ApiError::internal())));
        };
        let response = match call.as_mut().poll(cx) {
            Poll::Pending => {
                self.call = Some(call);
                return Poll::Pending;
            }
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Ready(Ok(response)) => response,
        };
        let left = self.left.take();
        let finish = self.finish_body;
        Poll::Ready(Ok(response.map(|body| {
            ResponseBody::inner(DetachedBody {
                body: Some(Box::pin(body)),
                left,
                finish,
            })
        })))
    }
}

impl<F, B> Drop for DetachFuture<F, B> {
    fn drop(&mut self) {
        if let (Some(call), Some(left)) = (self.call.take(), self.left.take()) {
            (self.finish_call)(call, left);
        }
    }
}

/// The client's side of a detached response body: the inner body, read in
/// place while the client reads. Dropped before its end, it hands the
/// body to a task that drains it.
pub struct DetachedBody<B> {
    /// Boxed and taken out while polled, as the call is.
    body: Option<Pin<Box<B>>>,
    left: Option<Left>,
    finish: fn(Pin<Box<B>>, Left),
}

impl<B> std::fmt::Debug for DetachedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetachedBody")
            .field("ended", &self.body.is_none())
            .finish_non_exhaustive()
    }
}

impl<B> Body for DetachedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(mut body) = self.body.take() else {
            return Poll::Ready(None);
        };
        match body.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.body = Some(body);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                self.body = Some(body);
                Poll::Pending
            }
            // Ended or failed: the body is dropped here, and the call
            // counted out.
            Poll::Ready(end) => {
                drop(body);
                self.left = None;
                Poll::Ready(end.map(|failed| failed.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(|body| body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |body| body.size_hint())
    }
}

impl<B> Drop for DetachedBody<B> {
    fn drop(&mut self) {
        if let (Some(body), Some(left)) = (self.body.take(), self.left.take()) {
            (self.finish)(body, left);
        }
    }
}

/// The calls [`DetachLayer`]s run, counted, so that a server that shuts
/// down can wait for the answers still being read for clients that left:
/// their charges are settled when they end.
#[derive(Debug, Clone, Default)]
pub struct DetachedCalls(Arc<CallCount>);

#[derive(Debug, Default)]
struct CallCount {
    running: AtomicUsize,
    idle: Notify,
}

impl DetachedCalls {
    /// A count at zero.
    pub fn new() -> Self {
        DetachedCalls::default()
    }

    /// Calls running now: waiting for their head, passing their body on, or
    /// draining it.
    pub fn running(&self) -> usize {
        self.0.running.load(Ordering::Acquire)
    }

    /// Resolves when no call is running.
    pub async fn idle(&self) {
        loop {
            // Registered before the count is read, so an end in between
            // still wakes this.
            let notified = self.0.idle.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.running() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn start(&self) -> Running {
        self.0.running.fetch_add(1, Ordering::AcqRel);
        Running(self.0.clone())
    }
}

/// One running call; its drop counts it out.
struct Running(Arc<CallCount>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests;
