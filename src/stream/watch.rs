//! The watched SSE stream: forwards whole events, holds back an unfinished
//! one, and ends a failed stream with one terminal error event.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};

use super::failure::{Failure, body_failure};
use super::layer::Settings;
use super::marker;
use super::seen::Seen;
use super::tick::{Tick, Ticker};
use crate::sse::{Dispatch, Event, EventSink, FirstEvent, Framer, OnEvent, SseHost, null_usage_at};

mod hold;
use self::hold::HeldEvent;
use crate::usage::BodyEnd;
use crate::{ApiError, BoxError};

const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The head is held until the first content-bearing event.
    Holding,
    /// As `Streaming`, before the first poll of a frame (which starts the
    /// usage reader handed over, if any): kept off the hot path.
    Starting,
    /// Complete events are forwarded; the stream is watched.
    Streaming,
    /// The stream has ended itself (marker or error event): pass the rest.
    Passing,
    /// Nothing more from the inner body; drain `out`, then trailers.
    Done,
}

enum Input<E> {
    Data(Bytes),
    Trailers(HeaderMap),
    Failed(E),
    End,
}

/// The watched SSE stream. Boxed by its users (`Box::new` in
/// [`new`](Self::new)), so it is `Unpin` and small: the response future
/// polls it for the first event, then hands it over.
pub(crate) struct SseBody<B> {
    body: Option<Pin<Box<B>>>,
    ticker: Ticker,
    /// Frames the stream, and holds back the unfinished event.
    framer: Framer,
    /// The rest of the frame that ended the hold, framed once the
    /// stream starts (after a usage reader from further out came in).
    unframed: Option<Bytes>,
    out: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    phase: Phase,
    settings: Settings,
    /// A terminal event (marker or error) has been framed.
    terminated: bool,
    /// The first event with data, read while holding the head.
    first: Option<FirstEvent>,
    /// The data events read while holding the head, until the start.
    held: Vec<HeldEvent>,
    /// What the terminal event continues.
    seen: Seen,
    /// Until the first frame is polled: where a reader can be handed over.
    host: Option<SseHost>,
    /// The usage observer's reader, fed every event the client gets.
    sink: Option<Box<dyn EventSink>>,
    /// How the inner body ended, for the reader: as the body it stands in
    /// for would have seen it (dropped until it ends or fails).
    inner_end: BodyEnd,
}

impl<B> SseBody<B> {
    /// The first event with data, if holding read it.
    pub(crate) fn first_event(&self) -> Option<&FirstEvent> {
        self.first.as_ref()
    }
}

impl<B> Drop for SseBody<B> {
    fn drop(&mut self) {
        // A reader handed over but never started still reports (as dropped).
        if let Some(host) = self.host.take() {
            drop(host.close());
        }
    }
}

impl<B> SseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    /// Watches `body`; with `hold` the caller must drive
    /// [`poll_first_event`](Self::poll_first_event) before polling frames.
    /// `host` is the slot through which a usage observer further out hands
    /// over its per-event reader (taken at the first poll of a frame).
    /// `bare`: the stream is bare JSON objects, not SSE.
    pub(crate) fn new(
        body: B,
        settings: Settings,
        hold: bool,
        host: SseHost,
        bare: bool,
    ) -> Box<Self> {
        let phase = if hold {
            Phase::Holding
        } else {
            Phase::Starting
        };
        Box::new(SseBody {
            body: Some(Box::pin(body)),
            ticker: Ticker::new(&settings, hold),
            framer: if bare {
                Framer::json_lines(settings.config.max_event_bytes)
            } else {
                Framer::new(settings.config.max_event_bytes)
            },
            unframed: None,
            out: VecDeque::new(),
            trailers: None,
            phase,
            settings,
            terminated: false,
            first: None,
            held: Vec::new(),
            seen: Seen::new(settings.format),
            host: Some(host),
            sink: None,
            inner_end: BodyEnd::Dropped,
        })
    }

    /// Starts streaming: the complete events held so far go out first.
    fn commit(&mut self) {
        self.phase = if self.host.is_some() {
            Phase::Starting
        } else {
            Phase::Streaming
        };
        if self.terminated {
            self.pass_rest();
        }
        self.ticker.streaming(&self.settings);
    }

    /// The stream ended itself: whatever follows is passed as it comes (and
    /// still read by the usage reader, if one was handed over).
    fn pass_rest(&mut self) {
        self.phase = Phase::Passing;
        self.ticker.stop();
        let rest = if self.sink.is_some() {
            self.framer.share_held()
        } else {
            self.framer.take_held()
        };
        if !rest.is_empty() {
            self.out.push_back(rest);
        }
    }

    fn close(&mut self) {
        self.body = None;
        self.ticker.stop();
        self.unframed = None;
        self.framer.take_held();
        self.phase = Phase::Done;
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Input<B::Error>> {
        if let Some(bytes) = self.unframed.take() {
            if self.phase == Phase::Starting {
                self.phase = Phase::Streaming;
            }
            return Poll::Ready(Input::Data(bytes));
        }
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(Input::End);
        };
        Poll::Ready(match body.as_mut().poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => Input::Data(data),
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => {
                        self.inner_end = BodyEnd::Completed;
                        Input::Trailers(trailers)
                    }
                    // A frame kind this layer does not know: skip it.
                    Err(_) => Input::Data(Bytes::new()),
                },
            },
            Poll::Ready(Some(Err(error))) => {
                self.body = None;
                self.inner_end = BodyEnd::Failed;
                Input::Failed(error)
            }
            Poll::Ready(None) => {
                self.body = None;
                self.inner_end = BodyEnd::Completed;
                Input::End
            }
        })
    }

    fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<Tick> {
        let holding = self.phase == Phase::Holding;
        let streaming = matches!(self.phase, Phase::Starting | Phase::Streaming);
        self.ticker.poll(cx, &self.settings, holding, streaming)
    }

    /// A data frame while streaming: returns what to send now; anything more
    /// goes to `out`. Only whole events are released, except those of an
    /// event over `max_event_bytes`, released as they come.
    #[inline]
    fn on_data(&mut self, bytes: Bytes) -> Option<Bytes> {
        let SseBody {
            framer,
            sink,
            terminated,
            seen,
            ..
        } = self;
        let mut streaming = Streaming {
            terminated,
            sink,
            seen,
        };
        let now = match framer.feed_one(&bytes, &mut streaming) {
            // The usual frame: one whole event, passed on as it came.
            Some(dispatch) => {
                self.ticker.progress = true;
                match dispatch {
                    Dispatch::Cut => None,
                    // Without its `,"usage":null`: the two sides of it,
                    // the second sent next.
                    Dispatch::CutNullUsage => match null_usage_at(&bytes) {
                        Some(span) => {
                            self.out.push_back(bytes.slice(span.end..));
                            Some(bytes.slice(..span.start))
                        }
                        None => Some(bytes),
                    },
                    Dispatch::Keep | Dispatch::Pause => Some(bytes),
                }
            }
            None => {
                let fed = framer.feed_frame(&bytes, &mut streaming);
                self.ticker.progress |= fed.events > 0;
                let mut pieces = fed.release(bytes).pieces();
                let now = pieces.next();
                self.out.extend(pieces);
                now
            }
        };
        if self.terminated {
            self.pass_rest();
        }
        now
    }

    /// A data frame after the stream ended itself: passed as it is, and read
    /// by the usage reader.
    fn on_passing(&mut self, bytes: &Bytes) {
        if let Some(sink) = self.sink.as_mut() {
            self.framer
                .feed(bytes, &mut |event: &Event<'_>| sink.event(event));
        }
    }

    /// The inner body ended (or sent trailers).
    fn on_end(&mut self) {
        self.body = None;
        let SseBody { framer, sink, .. } = self;
        match self.phase {
            Phase::Starting | Phase::Streaming => {
                // Read only if the client gets it: a terminal marker without
                // its blank line, which is finished here.
                let mut terminal = false;
                let rest = framer.finish(&mut |event: &Event<'_>| {
                    terminal = marker::ends_stream_unfinished(event);
                    match sink {
                        Some(sink) if terminal => sink.event(event),
                        _ => Dispatch::Keep,
                    }
                });
                if !terminal {
                    return self.fail(Failure::Truncated.error());
                }
                self.pass_rest();
                if let Some(rest) = rest {
                    self.out.push_back(rest);
                    self.out.push_back(Bytes::from_static(b"\n\n"));
                }
            }
            Phase::Passing => {
                if let Some(sink) = sink {
                    framer.finish(&mut |event: &Event<'_>| sink.event(event));
                }
            }
            Phase::Holding | Phase::Done => {}
        }
        self.close();
    }

    /// Ends the stream with the terminal error event for `error`. The
    /// unfinished event is dropped; if it was over the limit and partly
    /// sent, a blank line ends it first.
    fn fail(&mut self, error: ApiError) {
        let overflowing = self.framer.overflowing();
        let bare = self.framer.is_json();
        let ends_line = self.framer.ends_line();
        self.close();
        if overflowing && !bare {
            self.out.push_back(Bytes::from_static(b"\n\n"));
        } else if overflowing || !ends_line {
            // Bare JSON: the error object goes on a line of its own.
            self.out.push_back(Bytes::from_static(b"\n"));
        }
        let event = self.settings.format.terminal(
            &error,
            self.settings.config.done_after_error,
            &self.seen,
            bare,
        );
        self.out.push_back(event);
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.phase == Phase::Done
            && self.out.is_empty()
            && self.trailers.is_none()
            && self.sink.is_none()
    }

    #[inline]
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        // The hot path of a healthy stream: a frame of whole events, or
        // `Pending` with the timer already armed for this task.
        if let (Phase::Streaming, true, Some(body)) =
            (self.phase, self.out.is_empty(), self.body.as_mut())
        {
            match body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(bytes) if !bytes.is_empty() => {
                        if let Some(now) = self.on_data(bytes) {
                            self.ticker.sent = true;
                            return Poll::Ready(Some(Ok(Frame::data(now))));
                        }
                    }
                    Ok(_) => {}
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.trailers = Some(trailers);
                            self.inner_end = BodyEnd::Completed;
                            self.on_end();
                        }
                    }
                },
                Poll::Ready(Some(Err(error))) => {
                    self.inner_end = BodyEnd::Failed;
                    self.fail(body_failure(error));
                }
                Poll::Ready(None) => {
                    self.inner_end = BodyEnd::Completed;
                    self.on_end();
                }
                Poll::Pending => {
                    if self.ticker.is_stopped() || self.ticker.armed(cx) {
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
        if let Some(host) = self.host.take() {
            self.start(host);
        }
        loop {
            if let Some(bytes) = self.out.pop_front() {
                self.ticker.sent = true;
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if self.phase == Phase::Done {
                if let Some(trailers) = self.trailers.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                // The end: the usage reader reports now, as the body it
                // stands in for would.
                if let Some(mut sink) = self.sink.take() {
                    sink.end(self.inner_end);
                }
                return Poll::Ready(None);
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
                        self.on_passing(&bytes);
                        Some(bytes)
                    } else {
                        self.on_data(bytes)
                    };
                    if let Some(bytes) = now {
                        self.ticker.sent = true;
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
                        self.close();
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

/// What the watcher does with each event while streaming: notes an end
/// marker, and has the usage reader (if any) read it. A type of its own so
/// that the framer's call to it is inlined on the hot path.
struct Streaming<'a> {
    terminated: &'a mut bool,
    sink: &'a mut Option<Box<dyn EventSink>>,
    seen: &'a mut Seen,
}

impl OnEvent for Streaming<'_> {
    #[inline(always)]
    fn on_event(&mut self, event: &Event<'_>) -> Dispatch {
        *self.terminated |= marker::ends_stream(event);
        if event.has_data() {
            self.seen.note(event.data);
        }
        match self.sink {
            Some(sink) => sink.event(event),
            None => Dispatch::Keep,
        }
    }
}
