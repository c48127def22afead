//! The watched stream before its head is sent: reading up to the first
//! content-bearing event (past the opening events of
//! [`first_event`](super::super::first_event)), and starting the stream
//! from there.

use std::collections::VecDeque;
use std::ops::Range;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::Body;

use super::super::failure::{Failure, body_failure};
use super::super::first_event::{Opening, opening};
use super::super::marker;
use super::super::tick::Tick;
use super::{Input, Phase, SseBody};
use crate::sse::{Dispatch, Event, FirstEvent, SseHost, null_usage_at};
use crate::{ApiError, BoxError};

impl<B> SseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    /// Holding phase: reads until the first content-bearing event. `Ok`
    /// when the stream may start (the head is sent), `Err` with the error
    /// to answer instead of a stream.
    pub(crate) fn poll_first_event(
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
                    match self.hold(bytes, headers) {
                        Some(Err(error)) => {
                            self.close();
                            return Poll::Ready(Err(error));
                        }
                        Some(Ok(())) => {
                            self.commit();
                            return Poll::Ready(Ok(()));
                        }
                        None => {}
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

    /// A data frame while holding: frames it event by event until one
    /// decides (content or an end: `Ok`, the stream starts; a failure:
    /// `Err`); the rest of the frame waits in `unframed`. `None`: still
    /// holding. Each data event is kept for a usage reader handed over at
    /// the start, which must read the events it missed.
    fn hold(&mut self, bytes: Bytes, headers: &HeaderMap) -> Option<Result<(), ApiError>> {
        let mut rest = bytes;
        loop {
            let SseBody {
                framer,
                terminated,
                seen,
                ..
            } = self;
            let mut read = None;
            let fed = framer.feed(&rest, &mut |event: &Event<'_>| {
                *terminated |= marker::ends_stream(event);
                if event.has_data() {
                    seen.note(event.data);
                    read = Some((FirstEvent::new(event), opening(event, headers)));
                    return Dispatch::Pause;
                }
                Dispatch::Keep
            });
            self.ticker.progress |= fed.events > 0;
            let to = fed.released_to();
            let unframed = (fed.paused && to < rest.len()).then(|| rest.slice(to..));
            self.out.extend(fed.release(rest).pieces());
            let (event, opening) = read?;
            let end = self.out.iter().map(Bytes::len).sum();
            if self.first.is_none() {
                self.first = Some(event.clone());
            }
            self.held.push(HeldEvent { event, end });
            match opening {
                Opening::Fails(error) => return Some(Err(error)),
                Opening::Content | Opening::Ends => {
                    self.unframed = unframed;
                    return Some(Ok(()));
                }
                Opening::Preamble => rest = unframed?,
            }
        }
    }

    /// The inner body ended before any event with data.
    fn end_while_holding(&mut self) -> Result<(), ApiError> {
        if self.terminated {
            // An ending without data (`event: error` alone): stream it, and
            // whatever followed it, as it is.
            self.commit();
            return Ok(());
        }
        let SseBody { framer, first, .. } = self;
        let mut terminal = false;
        let rest = framer.finish(&mut |event: &Event<'_>| {
            terminal = marker::ends_stream_unfinished(event);
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
    /// starts, with the events it missed while the head was held.
    pub(super) fn start(&mut self, host: SseHost) {
        if self.phase == Phase::Starting && self.unframed.is_none() {
            self.phase = Phase::Streaming;
        }
        let held = std::mem::take(&mut self.held);
        let Some(mut sink) = host.close() else {
            return;
        };
        let total: usize = self.out.iter().map(Bytes::len).sum();
        let mut cuts = Vec::new();
        for HeldEvent { event, end } in &held {
            let len = event.len();
            let span = end - len..*end;
            match sink.event(&event.event()) {
                Dispatch::Cut if len > 0 => {
                    let mut cut = span;
                    // A `\r` blank line whose `\n` came in the next frame:
                    // the `\n` goes with it.
                    if byte_at(&self.out, cut.end - 1) == Some(b'\r')
                        && byte_at(&self.out, cut.end) == Some(b'\n')
                    {
                        cut.end += 1;
                    }
                    cuts.push(cut);
                }
                Dispatch::CutNullUsage if len > 0 => {
                    let raw: Vec<u8> = span.clone().filter_map(|i| byte_at(&self.out, i)).collect();
                    if let Some(at) = null_usage_at(&raw) {
                        cuts.push(span.start + at.start..span.start + at.end);
                    }
                }
                _ => {}
            }
        }
        // The last event held ends the bytes framed so far: framing paused
        // right after it, so a `\n` of its blank line may come next.
        if cuts.last().is_some_and(|cut| cut.end == total) {
            self.framer.cut_last();
        }
        for cut in cuts.into_iter().rev() {
            cut_range(&mut self.out, cut);
        }
        self.sink = Some(sink);
    }
}

/// A data event read while the head was held, and where its bytes end in
/// what is held to send.
pub(super) struct HeldEvent {
    event: FirstEvent,
    end: usize,
}

/// The byte at `offset` in the concatenation of `out`.
fn byte_at(out: &VecDeque<Bytes>, mut offset: usize) -> Option<u8> {
    for piece in out {
        if offset < piece.len() {
            return Some(piece[offset]);
        }
        offset -= piece.len();
    }
    None
}

/// Takes the bytes at `range` (offsets in the concatenation) off `out`.
fn cut_range(out: &mut VecDeque<Bytes>, range: Range<usize>) {
    let mut at = 0;
    let mut kept = VecDeque::with_capacity(out.len() + 1);
    for piece in out.drain(..) {
        let (start, end) = (at, at + piece.len());
        at = end;
        if end <= range.start || start >= range.end {
            kept.push_back(piece);
            continue;
        }
        if range.start > start {
            kept.push_back(piece.slice(..range.start - start));
        }
        if range.end < end {
            kept.push_back(piece.slice(range.end - start..));
        }
    }
    *out = kept;
}
