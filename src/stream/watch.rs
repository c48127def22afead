//! The watched SSE stream: forwards whole events, holds back an unfinished
//! one, and ends a failed stream with one terminal error event.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame};
use tokio::time::{Instant, Sleep};

use super::first_event::first_event_error;
use super::layer::Settings;
use super::sse::{Framer, Scan};
use crate::{ApiError, BoxError, Origin};

const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// Bytes received but not yet forwarded: an event still incomplete (or,
/// before the head is sent, everything so far). One frame is kept as is;
/// only an event split over frames is copied together.
#[derive(Debug, Default)]
enum Held {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Held {
    fn len(&self) -> usize {
        match self {
            Held::Empty => 0,
            Held::One(b) => b.len(),
            Held::Many(m) => m.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        *self = match std::mem::take(self) {
            Held::Empty => Held::One(bytes),
            Held::One(first) => {
                let mut buf = BytesMut::with_capacity(first.len() + bytes.len());
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&bytes);
                Held::Many(buf)
            }
            Held::Many(mut buf) => {
                buf.extend_from_slice(&bytes);
                Held::Many(buf)
            }
        };
    }

    fn take(&mut self) -> Bytes {
        match std::mem::take(self) {
            Held::Empty => Bytes::new(),
            Held::One(b) => b,
            Held::Many(buf) => buf.freeze(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The head is held until the first event with data.
    Holding,
    /// Complete events are forwarded; the stream is watched.
    Streaming,
    /// The stream has ended itself (marker or error event): pass the rest.
    Passing,
    /// Nothing more from the inner body; drain `out`, then trailers.
    Done,
}

/// Why a stream failed.
#[derive(Debug, Clone, Copy)]
enum Failure {
    BodyError,
    Truncated,
    Idle(Duration),
}

impl Failure {
    fn error(self) -> ApiError {
        let error = match self {
            Failure::BodyError => ApiError::bad_gateway()
                .with_message("The upstream stream failed before it completed."),
            Failure::Truncated => ApiError::bad_gateway()
                .with_code("stream_truncated")
                .with_message("The upstream stream ended before it completed."),
            Failure::Idle(after) => ApiError::timeout()
                .with_message(format!("The upstream sent no event for {}.", human(after))),
        };
        error.with_origin(Origin::Upstream)
    }
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// What a timer tick asks for.
enum Tick {
    Nothing,
    Idle,
    Commit,
    KeepAlive,
}

enum Input<E> {
    Data(Bytes),
    Trailers(HeaderMap),
    Failed(E),
    End,
}

/// The watched SSE stream. `Unpin` and small (its state is boxed) so the
/// response future can poll it for the first event, then hand it over.
pub(crate) struct SseBody<B>(Box<SseState<B>>);

impl<B> SseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    /// Watches `body`; with `hold` the caller must drive
    /// [`poll_first_event`](Self::poll_first_event) before polling frames.
    pub(crate) fn new(body: B, settings: Settings, hold: bool) -> Self {
        SseBody(Box::new(SseState::new(body, settings, hold)))
    }

    /// Holding phase: reads until the first event with data. `Ok` when the
    /// stream may start (the head is sent), `Err` with the error to answer
    /// instead of a stream.
    pub(crate) fn poll_first_event(
        &mut self,
        cx: &mut Context<'_>,
        headers: &HeaderMap,
    ) -> Poll<Result<(), ApiError>> {
        self.0.poll_first_event(cx, headers)
    }

    #[inline]
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.0.poll_frame(cx)
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

struct SseState<B> {
    body: Option<Pin<Box<B>>>,
    timer: Option<Pin<Box<Sleep>>>,
    /// The waker the pending `timer` will wake.
    timer_waker: Option<Waker>,
    tick: Duration,
    last_tick: Instant,
    framer: Framer,
    held: Held,
    /// Holding phase: how much of `held` is complete events.
    held_complete: usize,
    out: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    phase: Phase,
    settings: Settings,
    /// An upstream event arrived since the last tick.
    progress: bool,
    /// Something was sent to the client since the last tick.
    sent: bool,
    idle_for: Duration,
    quiet_for: Duration,
    holding_for: Duration,
    /// A partial event over `max_event_bytes` was forwarded: the client is
    /// inside an event.
    unaligned: bool,
}

impl<B> SseState<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    fn new(body: B, settings: Settings, hold: bool) -> Self {
        let phase = if hold {
            Phase::Holding
        } else {
            Phase::Streaming
        };
        let tick = tick_for(&settings, hold);
        let now = Instant::now();
        SseState {
            body: Some(Box::pin(body)),
            timer: tick.map(|t| Box::pin(tokio::time::sleep_until(now + t))),
            timer_waker: None,
            tick: tick.unwrap_or_default(),
            last_tick: now,
            framer: Framer::default(),
            held: Held::Empty,
            held_complete: 0,
            out: VecDeque::new(),
            trailers: None,
            phase,
            settings,
            progress: false,
            sent: false,
            idle_for: Duration::ZERO,
            quiet_for: Duration::ZERO,
            holding_for: Duration::ZERO,
            unaligned: false,
        }
    }

    fn poll_first_event(
        &mut self,
        cx: &mut Context<'_>,
        headers: &HeaderMap,
    ) -> Poll<Result<(), ApiError>> {
        if self.phase != Phase::Holding {
            return Poll::Ready(Ok(()));
        }
        loop {
            match self.poll_inner(cx) {
                Poll::Ready(Input::Data(bytes)) => {
                    let base = self.held.len();
                    let scan = self.framer.scan(&bytes);
                    self.note(&scan);
                    if scan.last_boundary > 0 {
                        self.held_complete = base + scan.last_boundary;
                    }
                    self.held.push(bytes);
                    if scan.first_data_end > 0 {
                        let all = self.held.take();
                        let first = &all[..base + scan.first_data_end];
                        if let Some(error) =
                            first_event_error(first, scan.first_data_flags, headers)
                        {
                            self.close();
                            return Poll::Ready(Err(error));
                        }
                        self.held.push(all);
                        self.commit();
                        return Poll::Ready(Ok(()));
                    }
                    if self.held.len() >= self.settings.config.first_event_limit {
                        self.commit();
                        return Poll::Ready(Ok(()));
                    }
                    continue;
                }
                Poll::Ready(Input::Trailers(trailers)) => {
                    self.trailers = Some(trailers);
                    self.body = None;
                    return Poll::Ready(self.end_while_holding());
                }
                Poll::Ready(Input::End) => return Poll::Ready(self.end_while_holding()),
                Poll::Ready(Input::Failed(error)) => {
                    self.close();
                    return Poll::Ready(Err(body_failure(error)));
                }
                Poll::Pending => {}
            }
            match self.poll_tick(cx) {
                Poll::Ready(Tick::Idle) => {
                    let idle = self.settings.config.idle_timeout.unwrap_or_default();
                    self.close();
                    return Poll::Ready(Err(Failure::Idle(idle).error()));
                }
                Poll::Ready(Tick::Commit) => {
                    self.commit();
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Tick::Nothing | Tick::KeepAlive) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The inner body ended before any event with data.
    fn end_while_holding(&mut self) -> Result<(), ApiError> {
        if self.framer.terminated() || self.framer.finish() {
            // An ending without data (`event: error` alone, an unfinished
            // `[DONE]`): stream it and let the end-of-stream rules apply.
            self.commit();
            return Ok(());
        }
        self.close();
        Err(Failure::Truncated.error())
    }

    /// Starts streaming: complete events held so far go out first.
    fn commit(&mut self) {
        if self.held_complete > 0 {
            let all = self.held.take();
            let complete = self.held_complete.min(all.len());
            self.out.push_back(all.slice(..complete));
            self.held.push(all.slice(complete..));
            self.held_complete = 0;
        }
        self.phase = Phase::Streaming;
        if self.framer.terminated() {
            self.pass_rest();
        }
        match tick_for(&self.settings, false) {
            Some(tick) => self.tick = tick,
            None => self.timer = None,
        }
    }

    /// The stream ended itself: whatever follows is passed as it comes.
    fn pass_rest(&mut self) {
        self.phase = Phase::Passing;
        self.timer = None;
        let rest = self.held.take();
        if !rest.is_empty() {
            self.out.push_back(rest);
        }
    }

    fn close(&mut self) {
        self.body = None;
        self.timer = None;
        self.held = Held::Empty;
        self.phase = Phase::Done;
    }

    fn note(&mut self, scan: &Scan) {
        if scan.events > 0 {
            self.progress = true;
        }
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Input<B::Error>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(Input::End);
        };
        Poll::Ready(match body.as_mut().poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => Input::Data(data),
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => Input::Trailers(trailers),
                    // A frame kind this layer does not know: skip it.
                    Err(_) => Input::Data(Bytes::new()),
                },
            },
            Poll::Ready(Some(Err(error))) => {
                self.body = None;
                Input::Failed(error)
            }
            Poll::Ready(None) => {
                self.body = None;
                Input::End
            }
        })
    }

    /// Whether the timer is pending and will wake this task: then polling it
    /// again (on every event of a busy stream) is waste. A fired timer is
    /// `is_elapsed` until it is polled and reset.
    #[inline]
    fn timer_armed(&self, cx: &Context<'_>) -> bool {
        match (&self.timer_waker, &self.timer) {
            (Some(waker), Some(timer)) => waker.will_wake(cx.waker()) && !timer.is_elapsed(),
            _ => false,
        }
    }

    fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<Tick> {
        if self.timer_armed(cx) {
            return Poll::Pending;
        }
        let Some(timer) = self.timer.as_mut() else {
            return Poll::Pending;
        };
        if timer.as_mut().poll(cx).is_pending() {
            self.timer_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        self.timer_waker = None;
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last_tick);
        self.last_tick = now;
        timer.as_mut().reset(now + self.tick);
        if std::mem::take(&mut self.progress) {
            self.idle_for = Duration::ZERO;
        } else {
            self.idle_for += elapsed;
        }
        if std::mem::take(&mut self.sent) {
            self.quiet_for = Duration::ZERO;
        } else {
            self.quiet_for += elapsed;
        }
        self.holding_for += elapsed;
        let config = &self.settings.config;
        if config.idle_timeout.is_some_and(|t| self.idle_for >= t) {
            return Poll::Ready(Tick::Idle);
        }
        match self.phase {
            Phase::Holding if self.holding_for >= config.first_event_timeout => {
                Poll::Ready(Tick::Commit)
            }
            Phase::Streaming if config.keep_alive.is_some_and(|k| self.quiet_for >= k) => {
                self.quiet_for = Duration::ZERO;
                Poll::Ready(Tick::KeepAlive)
            }
            _ => Poll::Ready(Tick::Nothing),
        }
    }

    /// A data frame while streaming: returns what to send now; anything more
    /// goes to `out`.
    #[inline]
    fn on_data(&mut self, bytes: Bytes) -> Option<Bytes> {
        let scan = self.framer.scan(&bytes);
        self.progress |= scan.events > 0;
        let end = scan.last_boundary;
        let now = if end == bytes.len() && self.held.is_empty() {
            // The common case: the frame is whole events.
            self.unaligned = false;
            Some(bytes)
        } else if end > 0 {
            self.unaligned = false;
            let head = bytes.slice(..end);
            let first = if self.held.is_empty() {
                head
            } else {
                self.out.push_back(head);
                self.held.take()
            };
            self.held.push(bytes.slice(end..));
            Some(first)
        } else if self.unaligned {
            Some(bytes)
        } else {
            self.held.push(bytes);
            if self.held.len() > self.settings.config.max_event_bytes {
                self.unaligned = true;
                Some(self.held.take())
            } else {
                None
            }
        };
        if self.framer.terminated() {
            self.pass_rest();
        }
        now
    }

    /// The inner body ended (or sent trailers) while streaming.
    fn on_end(&mut self) {
        self.body = None;
        if self.phase == Phase::Streaming {
            if self.framer.finish() {
                // The last event carries the marker but no blank line: finish it.
                self.pass_rest();
                self.out.push_back(Bytes::from_static(b"\n\n"));
            } else {
                return self.fail(Failure::Truncated.error());
            }
        }
        self.close_keeping_output();
    }

    fn close_keeping_output(&mut self) {
        let rest = self.held.take();
        if !rest.is_empty() {
            self.out.push_back(rest);
        }
        self.close();
    }

    /// Ends the stream with the terminal error event for `error`.
    fn fail(&mut self, error: ApiError) {
        self.close();
        if self.unaligned {
            self.out.push_back(Bytes::from_static(b"\n\n"));
        }
        let event = self
            .settings
            .format
            .terminal_event(&error, self.settings.config.done_after_error);
        self.out.push_back(event);
    }

    fn is_end_stream(&self) -> bool {
        self.phase == Phase::Done && self.out.is_empty() && self.trailers.is_none()
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        // The hot path of a healthy stream: a frame of whole events, or
        // `Pending` with the timer already armed for this task.
        if let (Phase::Streaming, true, Some(body)) =
            (self.phase, self.out.is_empty(), self.body.as_mut())
        {
            match body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(bytes) if !bytes.is_empty() => {
                        if let Some(now) = self.on_data(bytes) {
                            self.sent = true;
                            return Poll::Ready(Some(Ok(Frame::data(now))));
                        }
                    }
                    Ok(_) => {}
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.trailers = Some(trailers);
                            self.on_end();
                        }
                    }
                },
                Poll::Ready(Some(Err(error))) => self.fail(body_failure(error)),
                Poll::Ready(None) => self.on_end(),
                Poll::Pending => {
                    if self.timer.is_none() || self.timer_armed(cx) {
                        return Poll::Pending;
                    }
                }
            }
        }
        self.poll_frame_slow(cx)
    }

    fn poll_frame_slow(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        loop {
            if let Some(bytes) = self.out.pop_front() {
                self.sent = true;
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if self.phase == Phase::Done {
                return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            if self.phase == Phase::Holding {
                // Polled without `poll_first_event`: start streaming now.
                self.commit();
                continue;
            }
            match self.poll_inner(cx) {
                Poll::Ready(Input::Data(bytes)) => {
                    if bytes.is_empty() {
                        continue;
                    }
                    let now = if self.phase == Phase::Passing {
                        Some(bytes)
                    } else {
                        self.on_data(bytes)
                    };
                    if let Some(bytes) = now {
                        self.sent = true;
                        return Poll::Ready(Some(Ok(Frame::data(bytes))));
                    }
                    continue;
                }
                Poll::Ready(Input::Trailers(trailers)) => {
                    self.trailers = Some(trailers);
                    self.on_end();
                    continue;
                }
                Poll::Ready(Input::End) => {
                    self.on_end();
                    continue;
                }
                Poll::Ready(Input::Failed(error)) => {
                    if self.phase == Phase::Passing {
                        // The stream had already ended for the client.
                        let error: BoxError = error.into();
                        tracing::debug!(error = %error, "upstream failed after the end of its stream");
                        self.close_keeping_output();
                    } else {
                        self.fail(body_failure(error));
                    }
                    continue;
                }
                Poll::Pending => {}
            }
            match self.poll_tick(cx) {
                Poll::Ready(Tick::Idle) => {
                    let idle = self.settings.config.idle_timeout.unwrap_or_default();
                    tracing::warn!(idle = ?idle, "upstream stream idle; ending it with an error event");
                    self.fail(Failure::Idle(idle).error());
                }
                Poll::Ready(Tick::KeepAlive) => {
                    // Not counted as `sent`: the interval runs from this tick.
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(KEEP_ALIVE)))));
                }
                Poll::Ready(Tick::Nothing | Tick::Commit) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The error that ends a stream whose inner body failed with `error`: the
/// [`ApiError`] the body failed with (itself or anywhere in its `source()`
/// chain), which is how a server ends a stream from outside (a gateway
/// shutting down), else `502 bad_gateway`.
fn body_failure<E: Into<BoxError>>(error: E) -> ApiError {
    let error: BoxError = error.into();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
    while let Some(e) = cause {
        if let Some(api_error) = e.downcast_ref::<ApiError>() {
            tracing::debug!(error = %api_error, "stream ended by its body with an error");
            return api_error.clone();
        }
        cause = e.source();
    }
    tracing::warn!(error = %error, "upstream stream failed; ending it with an error event");
    Failure::BodyError.error()
}

/// The timer tick: fine enough for every active deadline (1/8 of the idle
/// timeout, 1/4 of the keep-alive interval and of the first-event timeout).
fn tick_for(settings: &Settings, holding: bool) -> Option<Duration> {
    let config = &settings.config;
    let candidates = [
        config.idle_timeout.map(|t| t / 8),
        config.keep_alive.map(|k| k / 4),
        holding.then_some(config.first_event_timeout / 4),
    ];
    candidates
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.max(Duration::from_millis(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_keeps_one_frame_without_copying() {
        let frame = Bytes::from_static(b"data: {\"a\"");
        let mut held = Held::Empty;
        held.push(frame.clone());
        let taken = held.take();
        assert_eq!(taken.as_ptr(), frame.as_ptr());
        held.push(frame.clone());
        held.push(Bytes::from_static(b":1}"));
        assert_eq!(&held.take()[..], b"data: {\"a\":1}");
        assert!(held.is_empty());
    }

    /// A body error whose `source()` is the `ApiError`, as
    /// `axum::body::Body` wraps the error of the body it boxes.
    #[derive(Debug)]
    struct Wrapped(ApiError);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// The status and body of a stream whose body fails with `error`, after
    /// one event or (`started` false) before any.
    async fn ended_by(error: BoxError, started: bool) -> (http::StatusCode, String) {
        use http_body_util::{BodyExt, StreamBody};
        use tower::{ServiceBuilder, ServiceExt, service_fn};

        let mut error = Some(error);
        let service = ServiceBuilder::new()
            .layer(crate::stream::StreamErrorTrailerLayer::new())
            .service(service_fn(move |_req: http::Request<()>| {
                let mut frames: Vec<Result<Frame<Bytes>, BoxError>> =
                    error.take().map(Err).into_iter().collect();
                if started {
                    frames.insert(
                        0,
                        Ok(Frame::data(Bytes::from_static(b"data: {\"id\":1}\n\n"))),
                    );
                }
                let body = StreamBody::new(futures_util::stream::iter(frames));
                let response = http::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(body)
                    .unwrap();
                async move { Ok::<_, std::convert::Infallible>(response) }
            }));
        let response = service.oneshot(http::Request::new(())).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_body_failing_with_an_api_error_ends_with_that_error() {
        let shutting_down = || {
            ApiError::unavailable()
                .with_code("shutting_down")
                .with_message("The gateway is shutting down.")
        };
        let event = "data: {\"error\":{\"message\":\"The gateway is shutting down.\",\"type\":\"server_error\",\"param\":null,\"code\":\"shutting_down\"}}\n\n";
        // Mid-stream, the error itself or as the source of the body's error.
        for error in [
            BoxError::from(shutting_down()),
            BoxError::from(Wrapped(shutting_down())),
        ] {
            let (status, body) = ended_by(error, true).await;
            assert_eq!(status, http::StatusCode::OK);
            assert_eq!(body, format!("data: {{\"id\":1}}\n\n{event}"));
        }
        // Before the first event: answered as that error's response.
        let (status, body) = ended_by(BoxError::from(shutting_down()), false).await;
        assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("\"code\":\"shutting_down\""), "{body}");
        // Any other body error is the upstream's failure.
        let (_, body) = ended_by(BoxError::from(std::io::Error::other("reset")), true).await;
        assert!(body.ends_with("\"code\":\"bad_gateway\"}}\n\n"), "{body}");
    }
}
