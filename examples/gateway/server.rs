//! Serving: the accept loop, what a client may hold, and the drain on
//! shutdown.
//!
//! A gateway is a shared front door: one client that is slow or hostile must
//! not be able to hold it. `axum::serve` has no timeout on a request's head
//! or body and no cap on connections, so a client sending one header line
//! every 2 s, or a chunked body one byte a second, kept its connection (and
//! the gateway's memory and file descriptors) forever. This accept loop,
//! on hyper-util's server, bounds each:
//!
//! | config | default | what happens |
//! |---|---|---|
//! | `client_header_timeout_secs` | 10 | a request head not whole within it of its first byte (of the connection's opening, for the first request): the connection is closed |
//! | `client_body_timeout_secs` | 30 | a body not whole within it of its head: 408 `request_timeout` (in the configured envelope), `Connection: close`; nothing reaches the upstream |
//! | `client_idle_timeout_secs` | 120 | a kept-alive connection with no request in progress for that long is closed |
//! | `max_connections` | 4096 | more connections wait in the listen backlog until one closes |
//! | `shutdown_grace_secs` | 30 | see [`crate::shutdown`] |
//!
//! Every accepted and upstream connection has `TCP_NODELAY`: a stream's
//! small writes otherwise wait for the peer's delayed ACK (Nagle's
//! algorithm), ~40 ms each on Linux.
//!
//! # Why an idle timeout of 120 s?
//!
//! Closing an idle connection races with a client that sends its next
//! request on it at that moment, and a POST that meets a closed connection
//! is not retried by most clients: the client or the load balancer in front
//! should be the side that closes. Their idle timeouts are shorter: AWS ALB
//! 60 s, Go's `http.Transport` 90 s, nginx upstream keep-alive 60 s, httpx
//! (the OpenAI and Anthropic Python SDKs) 5 s, Node's undici 4 s. 120 s is
//! above all of them, and short enough that abandoned connections do not
//! pile up against `max_connections`.
//!
//! # Why not hyper's `header_read_timeout`?
//!
//! hyper starts its header timer when it begins waiting for the next request
//! on a kept-alive connection, so it also closes idle connections, after the
//! header timeout (10 s), not the idle one: the race above, with every client
//! whose pool keeps connections longer. The connection's clock here
//! ([`ClientIo`]) tells waiting from reading a head: it starts the header
//! timeout at the first byte of a request. hyper's own timer is turned off.
//!
//! # Why wait in the backlog over `max_connections`?
//!
//! Not accepting is the cheapest answer to a flood (the kernel holds the
//! connection, or refuses it when the backlog is full) and costs a healthy
//! client only a wait, which its connect timeout bounds; accepting to close
//! at once costs a syscall pair per attempt and shows clients a reset they
//! retry at once. Connections free slots as they close, idle ones within
//! `client_idle_timeout_secs`. A warning is logged each time the cap is
//! reached.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;
use tower::util::Oneshot;

use crate::body_timeout::{BodyTimedOut, DeadlineBody};
use crate::shutdown::Shutdown;

/// After the grace, how long streams get to write their error event and
/// close before their connections are dropped.
const CUT_DRAIN: Duration = Duration::from_secs(1);

/// What a client may hold, and for how long (see the module docs).
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// Whole request head, from its first byte.
    pub header_timeout: Duration,
    /// Whole request body, from its head.
    pub body_timeout: Duration,
    /// A connection with no request in progress.
    pub idle_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// In-flight work gets this long to finish on shutdown.
    pub shutdown_grace: Duration,
}

impl Default for ServeSettings {
    fn default() -> Self {
        ServeSettings {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            max_connections: 4096,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Serves `router` (an axum `Router`, or any service like it) on `listener`
/// until `shutdown` begins, then drains (see [`crate::shutdown`]). Resolves
/// when every connection is closed, so every response body has ended or been
/// dropped and its reservations settled.
pub async fn serve<S>(listener: TcpListener, router: S, settings: ServeSettings, shutdown: Shutdown)
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let settings = Arc::new(settings);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The connection's own clock (`ClientIo`) times heads: see the module docs.
        .header_read_timeout(None)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut at_cap = false;
    loop {
        while connections.try_join_next().is_some() {}
        if slots.available_permits() == 0 && !at_cap {
            tracing::warn!(
                max_connections = settings.max_connections,
                "connection cap reached; new connections wait in the backlog"
            );
        }
        at_cap = slots.available_permits() == 0;
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = shutdown.begun() => break,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.begun() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                accept_failed(error).await;
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
        let activity = Arc::new(Activity::default());
        let io = TokioIo::new(ClientIo::new(stream, peer, activity.clone(), &settings));
        let service = ConnectionService {
            router: router.clone(),
            activity,
            body_timeout: settings.body_timeout,
        };
        let connection = builder.serve_connection(io, service).into_owned();
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, error = %error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    drain(graceful, connections, &settings, &shutdown).await;
}

/// Closes idle connections, lets the others finish their last response
/// within the grace, then cuts the streams still open and drops what is left.
async fn drain(
    graceful: GracefulShutdown,
    mut connections: JoinSet<()>,
    settings: &ServeSettings,
    shutdown: &Shutdown,
) {
    while connections.try_join_next().is_some() {}
    tracing::info!(
        open_connections = connections.len(),
        grace_secs = settings.shutdown_grace.as_secs_f64(),
        "no longer accepting; waiting for in-flight requests"
    );
    let closed = graceful.shutdown();
    tokio::pin!(closed);
    let mut all_closed = false;
    // Then the answers still read for clients that left, so their charges
    // settle before the store is flushed.
    let closed_and_drained = async {
        (&mut closed).await;
        all_closed = true;
        shutdown.detached().idle().await;
    };
    let in_grace = tokio::select! {
        () = closed_and_drained => true,
        () = tokio::time::sleep(settings.shutdown_grace) => false,
        () = shutdown.streams_cut() => false,
    };
    if !in_grace {
        while connections.try_join_next().is_some() {}
        tracing::warn!(
            open_connections = connections.len(),
            "shutdown grace over; ending the streams still open"
        );
        shutdown.cut_streams();
        if !all_closed && tokio::time::timeout(CUT_DRAIN, &mut closed).await.is_err() {
            tracing::warn!("connections still open after their streams were ended; closing them");
        }
        if tokio::time::timeout(CUT_DRAIN, shutdown.detached().idle())
            .await
            .is_err()
        {
            tracing::warn!(
                running = shutdown.detached().running(),
                "answers still read for clients that left; their holds expire with their leases"
            );
        }
    }
    // Aborts what is left and waits for it: every response body is dropped,
    // and with it every reservation settled, before this returns.
    connections.shutdown().await;
    if !in_grace
        && tokio::time::timeout(CUT_DRAIN, shutdown.detached().idle())
            .await
            .is_err()
    {
        tracing::warn!(
            running = shutdown.detached().running(),
            "answers still read for clients that left; their holds expire with their leases"
        );
    }
}

/// Per-connection accept errors (the peer left already) are skipped; others
/// (out of file descriptors) are logged and retried after a pause, since
/// accepting again at once would fail the same way.
async fn accept_failed(error: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accept failed; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// How many requests of one connection are in progress: from the call of
/// the service until its response body is done or dropped.
#[derive(Debug, Default)]
struct Activity {
    in_flight: AtomicUsize,
    /// The connection's reader, woken when the last request ends so its
    /// clock starts the idle timeout even if hyper read (and found the
    /// connection busy) just before the response body was dropped.
    reader: AtomicWaker,
}

/// One request in progress on its connection.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.reader.wake();
        }
    }
}

/// Where a connection is between requests, for its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request is in progress: no deadline here (the body has its own).
    Busy,
    /// No request in progress and no byte of the next: the idle deadline.
    Idle,
    /// Bytes of a request head have come: the header deadline.
    Head,
}

/// A client connection with its clock: closes it (a read error to hyper)
/// when it sits idle past the idle timeout or a request head takes longer
/// than the header timeout. hyper polls reads whenever it waits for a
/// request, so the deadline's timer wakes it.
pub struct ClientIo {
    stream: TcpStream,
    // Boxed: hyper wants an `Unpin` connection; one allocation per connection.
    deadline: Pin<Box<Sleep>>,
    phase: Phase,
    /// HTTP/2 (by its preface): bytes while idle are pings, not a head.
    http2: bool,
    peer: SocketAddr,
    activity: Arc<Activity>,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl ClientIo {
    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        activity: Arc<Activity>,
        settings: &ServeSettings,
    ) -> ClientIo {
        // The first request's head is due within the header timeout of the
        // connection's opening: a connection that sends nothing is not idle
        // between requests, it holds a slot.
        ClientIo {
            stream,
            deadline: Box::pin(tokio::time::sleep(settings.header_timeout)),
            phase: Phase::Head,
            http2: false,
            peer,
            activity,
            header_timeout: settings.header_timeout,
            idle_timeout: settings.idle_timeout,
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Registered before the count is read: a request that ends after
        // the read wakes this task.
        this.activity.reader.register(cx.waker());
        if this.activity.in_flight.load(Ordering::Acquire) > 0 {
            this.phase = Phase::Busy;
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        if this.phase == Phase::Busy {
            this.phase = Phase::Idle;
            let deadline = Instant::now() + this.idle_timeout;
            this.deadline.as_mut().reset(deadline);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if before == 0 && read.starts_with(b"PRI * HTTP/2.0") {
                    this.http2 = true;
                }
                if !read.is_empty() && this.phase == Phase::Idle && !this.http2 {
                    this.phase = Phase::Head;
                    let deadline = Instant::now() + this.header_timeout;
                    this.deadline.as_mut().reset(deadline);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                ready!(this.deadline.as_mut().poll(cx));
                let (what, after) = match this.phase {
                    Phase::Idle => ("idle", this.idle_timeout),
                    _ => ("request head not received", this.header_timeout),
                };
                tracing::debug!(peer = %this.peer, after_secs = after.as_secs_f64(), "closing connection: {what}");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what} for {} s", after.as_secs_f64()),
                )))
            }
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The service of one connection: the router, with each request counted in
/// flight and its body timed.
#[derive(Clone)]
struct ConnectionService<S> {
    router: S,
    activity: Arc<Activity>,
    body_timeout: Duration,
}

impl<S> hyper::service::Service<http::Request<Incoming>> for ConnectionService<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone,
{
    type Response = http::Response<ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture<S>;

    fn call(&self, req: http::Request<Incoming>) -> ResponseFuture<S> {
        let in_flight = InFlight::begin(&self.activity);
        let (mut parts, incoming) = req.into_parts();
        let body = if hyper::body::Body::is_end_stream(&incoming) {
            Body::new(incoming)
        } else {
            let expired = BodyTimedOut::default();
            parts.extensions.insert(expired.clone());
            Body::new(DeadlineBody::new(incoming, self.body_timeout, expired))
        };
        ResponseFuture {
            inner: self
                .router
                .clone()
                .oneshot(Request::from_parts(parts, body)),
            in_flight: Some(in_flight),
        }
    }
}

pin_project! {
    /// The router's answer, its body carrying the request's [`InFlight`].
    struct ResponseFuture<S: tower::Service<Request>> {
        #[pin]
        inner: Oneshot<S, Request>,
        in_flight: Option<InFlight>,
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Output = Result<http::Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|body| ResponseBody {
            body,
            _in_flight: in_flight,
        })))
    }
}

pin_project! {
    /// A response body; the request stops counting as in flight when
    /// hyper drops it, after its last frame.
    struct ResponseBody {
        #[pin]
        body: Body,
        _in_flight: Option<InFlight>,
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
