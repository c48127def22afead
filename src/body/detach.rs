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
//! [`DetachLayer`] runs each call of the service it wraps in a task of its
//! own, which owns the inner response body and hands its frames to the
//! client through a channel. When the client leaves, before the head or
//! during the body, the task keeps reading the inner body to its end
//! (throwing the bytes away), so the layers inside settle as if the client
//! had read it all: with the usage the upstream reports at the end. The
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
//! # Why a task and a channel
//!
//! This is how axum and hyper users opt out of cancellation
//! (`tokio::spawn` the work, keep a handle to it): a future that must
//! outlive its caller has to be owned by someone other than the caller. The
//! layer spawns the call and, once the head is there, the reading of its
//! body; the client gets the head through a oneshot channel and the frames
//! through a bounded one (a few frames in flight: backpressure from a slow
//! client reaches the upstream as before). A panic in the call is carried
//! back to the caller and resumed there, so an outer `catch_panic` still
//! sees it.
//!
//! The call's future is boxed before it is spawned: spawning moves a
//! future into the task, and the call's future holds every layer below this
//! one (about 13 KB in the gateway example, where those moves were 45 % of
//! its instructions unboxed). One allocation per call; the task moves a
//! pointer.
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
//! [`ResponseBody<DetachedBody>`](ResponseBody): a call it could not start
//! (no tokio runtime) is answered 500.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tokio::sync::{Notify, mpsc, oneshot};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use super::ResponseBody;
use crate::{ApiError, BoxError};

/// Frames read ahead of a client: enough to keep the upstream busy, few
/// enough that a slow client slows the upstream down.
const FRAMES_IN_FLIGHT: usize = 4;

/// Runs each call in a task of its own that reads the response body to its
/// end even when the client has gone away. See the [module docs](crate::body::detach).
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
    ResBody::Error: Into<BoxError> + Send,
{
    type Response = Response<ResponseBody<DetachedBody>>;
    type Error = S::Error;
    type Future = DetachFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("DetachLayer needs a tokio runtime to run calls on");
            return DetachFuture { head: None };
        };
        // Take the service that was polled ready; leave a clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Boxed: a task's future is moved into the task's cell when it is
        // spawned, and the call's future holds every layer below it (13 KB
        // in the gateway example, where unboxed these moves were 45 % of
        // its instructions). One allocation; the task moves a pointer.
        let call = Box::pin(inner.call(req));
        let (head, head_rx) = oneshot::channel();
        let running = self.calls.start();
        let task = run(call, head, self.limits).instrument(tracing::Span::current());
        runtime.spawn(async move {
            task.await;
            drop(running);
        });
        DetachFuture {
            head: Some(head_rx),
        }
    }
}

/// What the task hands the caller: the inner service's answer, or the
/// panic of its call.
type Head<E> = Result<Result<Response<ResponseBody<DetachedBody>>, E>, Box<dyn Any + Send>>;

/// Calls, hands the head over, then passes the body's frames on, or, once
/// the client is gone, drains the body within `limits`.
async fn run<F, B, E>(call: F, head: oneshot::Sender<Head<E>>, limits: Limits)
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let response = match (CatchUnwind { inner: call }).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            let _ = head.send(Ok(Err(error)));
            return;
        }
        Err(panic) => {
            let _ = head.send(Err(panic));
            return;
        }
    };
    let (parts, body) = response.into_parts();
    let (frames, frames_rx) = mpsc::channel(FRAMES_IN_FLIGHT);
    let detached = DetachedBody {
        frames: frames_rx,
        remaining: body.size_hint(),
        ended: false,
    };
    let mut body = std::pin::pin!(body);
    let answer = Response::from_parts(parts, ResponseBody::inner(detached));
    if head.send(Ok(Ok(answer))).is_err() {
        return drain(body, limits, "before the response head", 0).await;
    }
    loop {
        // `None` from the outer option: the client is gone.
        let frame = tokio::select! {
            frame = body.frame() => Some(frame),
            () = frames.closed() => None,
        };
        let frame = match frame {
            None => return drain(body, limits, "during the response body", 0).await,
            Some(None) => return,
            Some(Some(Ok(frame))) => Ok(frame),
            Some(Some(Err(error))) => Err(error.into()),
        };
        let failed = frame.is_err();
        if let Err(unsent) = frames.send(frame).await {
            // Read after the client left: it counts towards the drain.
            let read = match &unsent.0 {
                Ok(frame) => frame.data_ref().map_or(0, |data| data.len() as u64),
                Err(_) => 0,
            };
            return drain(body, limits, "during the response body", read).await;
        }
        if failed {
            return;
        }
    }
}

/// Reads `body` to its end, its bytes thrown away, within `limits`
/// (`drained` bytes were read already).
async fn drain<B>(mut body: Pin<&mut B>, limits: Limits, when: &'static str, mut drained: u64)
where
    B: Body<Data = Bytes>,
{
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

pin_project! {
    /// Polls a future, catching a panic as a value.
    struct CatchUnwind<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// The response future of [`Detach`]: the head, once the task has it.
/// Dropping it leaves the call running.
pub struct DetachFuture<E> {
    head: Option<oneshot::Receiver<Head<E>>>,
}

impl<E> std::fmt::Debug for DetachFuture<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetachFuture").finish_non_exhaustive()
    }
}

impl<E> Future for DetachFuture<E> {
    type Output = Result<Response<ResponseBody<DetachedBody>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(head) = self.head.as_mut() else {
            return Poll::Ready(Ok(super::reject(ApiError::internal())));
        };
        let answer = ready!(Pin::new(head).poll(cx));
        self.head = None;
        match answer {
            Ok(Ok(result)) => Poll::Ready(result),
            // The call panicked: panic here too, where the caller's
            // `catch_panic` (if any) turns it into a 500.
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // The task was dropped unfinished: the runtime is shutting down.
            Err(_) => Poll::Ready(Ok(super::reject(ApiError::internal()))),
        }
    }
}

/// The client's side of a detached response body: the frames the task
/// reads from the inner body. Dropping it leaves the task draining.
pub struct DetachedBody {
    frames: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    remaining: SizeHint,
    ended: bool,
}

impl std::fmt::Debug for DetachedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetachedBody")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Body for DetachedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let frame = ready!(self.frames.poll_recv(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    let lower = self.remaining.lower().saturating_sub(len);
                    let upper = self.remaining.upper().map(|u| u.saturating_sub(len));
                    let mut hint = SizeHint::new();
                    hint.set_lower(lower);
                    if let Some(upper) = upper {
                        hint.set_upper(upper.max(lower));
                    }
                    self.remaining = hint;
                }
            }
            Some(Err(_)) | None => self.ended = true,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        self.remaining
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
