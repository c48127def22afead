//! The watched stream before its head is sent: reading up to the first
//! event with data, and starting the stream from there.

use std::collections::VecDeque;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::Body;

use super::super::failure::{Failure, body_failure};
use super::super::first_event::first_event_error;
use super::super::marker;
use super::super::tick::Tick;
use super::{Input, Phase, SseState};
use crate::sse::{Dispatch, Event, FirstEvent, SseHost};
use crate::{ApiError, BoxError};

impl<B> SseState<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    pub(super) fn poll_first_event(
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
                    self.hold(bytes);
                    if let Some(first) = &self.first {
                        if let Some(error) = first_event_error(first, headers) {
                            self.close();
                            return Poll::Ready(Err(error));
                        }
                        self.commit();
                        return Poll::Ready(Ok(()));
                    }
                    let held =
                        self.framer.held_len() + self.out.iter().map(Bytes::len).sum::<usize>();
                    if held >= self.settings.config.max_first_event_bytes {
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

    /// A data frame while holding: frames it up to the first event with
    /// data, which is kept; the rest of the frame waits in `unframed`.
    fn hold(&mut self, bytes: Bytes) {
        let SseState {
            framer,
            first,
            terminated,
            ..
        } = self;
        let fed = framer.feed(&bytes, &mut |event: &Event<'_>| {
            *terminated |= marker::ends_stream(event);
            if event.has_data() {
                *first = Some(FirstEvent::new(event));
                return Dispatch::Pause;
            }
            Dispatch::Keep
        });
        self.ticker.progress |= fed.events > 0;
        let to = fed.released_to();
        if fed.paused && to < bytes.len() {
            self.unframed = Some(bytes.slice(to..));
        }
        self.out.extend(fed.release(bytes).pieces());
    }

    /// The inner body ended before any event with data.
    fn end_while_holding(&mut self) -> Result<(), ApiError> {
        if self.terminated {
            // An ending without data (`event: error` alone): stream it, and
            // whatever followed it, as it is.
            self.commit();
            return Ok(());
        }
        let SseState { framer, first, .. } = self;
        let mut terminal = false;
        let rest = framer.finish(&mut |event: &Event<'_>| {
            terminal = marker::ends_stream(event);
            if event.has_data() {
                *first = Some(FirstEvent::new(event));
            }
            Dispatch::Keep
        });
        if terminal {
            // An unfinished marker (`data: [DONE]` without its blank line):
            // finish it, and stream.
            self.out.extend(rest);
            self.out.push_back(Bytes::from_static(b"\n\n"));
            self.terminated = true;
            self.commit();
            return Ok(());
        }
        self.close();
        Err(Failure::Truncated.error())
    }

    /// The first poll of a frame: the usage reader handed over (if any)
    /// starts, with the first event it missed while the head was held.
    pub(super) fn start(&mut self, host: SseHost) {
        if self.phase == Phase::Starting && self.unframed.is_none() {
            self.phase = Phase::Streaming;
        }
        let Some(mut sink) = host.close() else {
            return;
        };
        if let Some(first) = &self.first {
            let cut = sink.event(&first.event()) == Dispatch::Cut;
            if cut && first.len() > 0 {
                // It is the last event held: framing paused right after it.
                cut_tail(&mut self.out, first.len());
                self.framer.cut_last();
            }
        }
        self.sink = Some(sink);
    }
}

/// Takes the last `len` bytes off `out`.
fn cut_tail(out: &mut VecDeque<Bytes>, mut len: usize) {
    while len > 0 {
        let Some(last) = out.back_mut() else {
            return;
        };
        if last.len() <= len {
            len -= last.len();
            out.pop_back();
        } else {
            last.truncate(last.len() - len);
            len = 0;
        }
    }
}
