//! Stopping without cutting streams or losing money.
//!
//! A deploy or a scale-down sends the gateway SIGTERM (Ctrl-C sends SIGINT).
//! Dying there and then would cut every stream in the middle of an answer
//! and leave their reservations unsettled. Instead, in two steps:
//!
//! 1. [`Shutdown::begin`]: stop accepting (the listener is closed, so a load
//!    balancer's next connection goes to another instance), close idle
//!    connections, and let in-flight requests and streams finish, each
//!    connection closing after its last response, and the answers still
//!    read for clients that left (`drain_timeout_secs`) end.
//! 2. [`Shutdown::cut_streams`], when `shutdown_grace_secs` have passed (or a
//!    second signal came): every stream still open ends with the stream
//!    layer's terminal error event, a 503 `shutting_down` its client's SDK
//!    raises, and is settled from the usage it had so far.
//!
//! Then the store is flushed and the process exits 0 (see `app::Running`).
//!
//! # Why end streams through their body?
//!
//! Dropping a connection mid-stream tells the client nothing it can act on
//! (a bare read error) and leaves half an event on the wire. A body that
//! fails with an [`ApiError`] is turned by `StreamErrorTrailerLayer` into
//! exactly one terminal event of the stream's own protocol after the last
//! whole event, as for any failing upstream; the usage observer and the
//! budget and rate-limit layers then settle as for any ended stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::Body as AxumBody;
use axum::response::Response;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio_util::sync::CancellationToken;
use tollgate::body::DetachedCalls;
use tollgate::{ApiError, BoxError};

/// The two steps of a shutdown, shared by the accept loop, every connection
/// and every stream.
///
/// One `Arc`: the proxied stack holds a clone that tower's `map_response`
/// clones again for every request, and a `CancellationToken`'s clone and
/// drop each take its tree's lock.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<Steps>);

#[derive(Debug, Default)]
struct Steps {
    stop: CancellationToken,
    cut: Arc<Cut>,
    /// The proxied calls still running, some for clients that left (see
    /// `app.rs`): waited for within the grace, so their charges settle.
    detached: DetachedCalls,
}

/// Step 2's signal: a flag every stream reads per frame without a lock, and
/// a `Notify` that wakes the streams that are waiting for their upstream.
#[derive(Debug, Default)]
struct Cut {
    done: AtomicBool,
    notify: Arc<Notify>,
}

impl Shutdown {
    /// A shutdown that has not begun.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// The proxied calls of every app built with this shutdown.
    pub fn detached(&self) -> &DetachedCalls {
        &self.0.detached
    }

    /// Step 1: stop accepting and let in-flight work finish.
    pub fn begin(&self) {
        self.0.stop.cancel();
    }

    /// Step 2: end every stream still open now.
    pub fn cut_streams(&self) {
        self.0.stop.cancel();
        self.0.cut.done.store(true, Ordering::Release);
        self.0.cut.notify.notify_waiters();
    }

    /// Resolves when step 1 has begun.
    pub async fn begun(&self) {
        self.0.stop.cancelled().await
    }

    /// Resolves when step 2 has begun.
    pub async fn streams_cut(&self) {
        // Registered before the flag is read, so a cut in between still wakes.
        let notified = self.0.cut.notify.notified();
        if !self.0.cut.done.load(Ordering::Acquire) {
            notified.await;
        }
    }

    /// `response` with its body watched when it is a stream
    /// (`text/event-stream`); other responses are short and left alone. Put
    /// it inside `StreamErrorTrailerLayer`, which turns the cut into the
    /// stream's terminal error event.
    pub fn watch_stream(&self, response: Response) -> Response {
        let stream = response
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if stream {
            response.map(|body| AxumBody::new(self.watch(body)))
        } else {
            response
        }
    }

    /// `body`, made to fail with a 503 `shutting_down` when streams are cut.
    pub fn watch<B>(&self, body: B) -> CutBody<B> {
        // The waiter exists from here on, so a cut before its first poll
        // still completes it.
        let notified = self.0.cut.notify.clone().notified_owned();
        CutBody {
            body,
            cut: self.0.cut.clone(),
            notified,
            ended: false,
        }
    }
}

/// The error every stream still open at the end of the grace ends with.
pub fn shutting_down() -> ApiError {
    ApiError::unavailable()
        .with_code("shutting_down")
        .with_message("The gateway is shutting down; retry the request.")
}

pin_project! {
    /// A response body that fails with [`shutting_down`] once streams are
    /// cut (see [`Shutdown::watch`]); otherwise the inner body unchanged.
    pub struct CutBody<B> {
        #[pin]
        body: B,
        cut: Arc<Cut>,
        #[pin]
        notified: OwnedNotified,
        ended: bool,
    }
}

impl<B> Body for CutBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        // A flag read per frame; the waiter (which takes the `Notify`'s
        // lock) is polled only when the inner body waits, and the task is
        // about to park anyway.
        if !this.cut.done.load(Ordering::Acquire) {
            if let Poll::Ready(frame) = this.body.poll_frame(cx) {
                return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
            }
            if this.notified.poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        *this.ended = true;
        Poll::Ready(Some(Err(Box::new(shutting_down()))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// SIGTERM and SIGINT, registered at start-up so that a signal sent as soon
/// as the gateway says it listens is never missed (the default action would
/// kill the process).
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Registers the handlers.
    pub fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next SIGTERM or SIGINT; its name.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
