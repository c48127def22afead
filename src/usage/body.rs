//! [`UsageBody`]: the response body that reports its usage.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::report::BodyEnd;
use super::scan::UsageScanner;
use super::sse::EVENT_LIMIT;
use super::tap::Tap;
use crate::sse::{Dispatch, Event, EventSink};

pin_project! {
    /// A response body that scans its frames for token usage as they pass
    /// and reports once, when it ends, fails or is dropped.
    ///
    /// Made by [`observe`](super::observe). Frames are passed on as they
    /// come (the same `Bytes`, not copied), except with
    /// [`strip_usage_chunk`](super::UsageOptions::strip_usage_chunk), where
    /// an event split across frames is held back until it is complete and
    /// the usage-only chunk is cut out. `size_hint` and `is_end_stream` are
    /// the inner body's. When the inner body frames the stream anyway (the
    /// stream layer's), it reads the events for this body, which then only
    /// passes frames through.
    pub struct UsageBody<B> {
        #[pin]
        inner: B,
        // Boxed: an observed response is moved whole through every layer
        // on its way out, and a body several layers wrap (each observer's,
        // most of them passing through) is moved with it. One allocation
        // per observed response costs less than those copies (see
        // PERFORMANCE.md, the sixth pass).
        observer: Option<Box<Observer>>,
        // The observer waiting, until the first poll, for the framing body
        // further out to adopt it.
        guest: Option<GuestHandle>,
    }
}

impl<B> UsageBody<B> {
    pub(crate) fn new(inner: B, observer: Option<Box<Observer>>) -> Self {
        UsageBody {
            inner,
            observer,
            guest: None,
        }
    }

    /// A body whose observer waits in `slot` to be adopted by a body
    /// further out that frames the stream anyway (see
    /// [`SseGuest`](crate::sse::SseGuest)); at
    /// the first poll, if nobody did, it observes the body itself.
    pub(crate) fn guest(inner: B, slot: Arc<GuestSlot>, strip: bool) -> Self {
        UsageBody {
            inner,
            observer: None,
            guest: Some(GuestHandle { slot, strip }),
        }
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner body, mutably. Frames taken from it directly are not seen
    /// by the scanner.
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// The inner body. The observation ends here (unless the inner body
    /// does the reading): if the report was not made yet, it is made now,
    /// as [`BodyEnd::Dropped`].
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> fmt::Debug for UsageBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageBody")
            .field("observing", &self.observer.is_some())
            .field("guest", &self.guest.is_some())
            .finish_non_exhaustive()
    }
}

/// The observing half of a [`UsageBody`]: the scanner, whether it strips,
/// and the Drop guard that reports a body dropped before its end. Also the
/// [`EventSink`] a framing body runs in its place.
pub(crate) struct Observer {
    scanner: UsageScanner,
    strip: bool,
    /// A frame to send after the one just sent (trailers after a flush).
    /// Boxed: it is rare, and the observer lives in every body.
    queued: Option<Box<Frame<Bytes>>>,
    shared: Arc<dyn Tap>,
    status: StatusCode,
    prompt_tokens_estimate: u64,
    fired: bool,
    /// The body is over for the client: return `None` (after `queued`).
    ended: bool,
}

impl Observer {
    /// `strip` only for an SSE scanner.
    pub(crate) fn new(
        mut scanner: UsageScanner,
        strip: bool,
        shared: Arc<dyn Tap>,
        status: StatusCode,
        prompt_tokens_estimate: u64,
    ) -> Self {
        if strip {
            scanner.strip_usage_chunks();
        }
        Observer {
            scanner,
            strip,
            queued: None,
            shared,
            status,
            prompt_tokens_estimate,
            fired: false,
            ended: false,
        }
    }

    /// Makes the report and sends it to the subscribers, once.
    pub(crate) fn fire(&mut self, end: BodyEnd) {
        if std::mem::replace(&mut self.fired, true) {
            return;
        }
        self.scanner.finish();
        let report = self
            .scanner
            .report(self.status, self.prompt_tokens_estimate, end);
        self.shared.fire(report);
    }

    /// For a body that is over before its first poll.
    pub(crate) fn complete_now(&mut self) {
        self.fire(BodyEnd::Completed);
        self.ended = true;
    }

    /// Cuts usage-only chunks (the body's length changes).
    pub(crate) fn strips(&self) -> bool {
        self.strip
    }
}

/// Run by a body that frames the stream anyway (the stream layer's): the
/// events come framed, the report is made when that body ends.
impl EventSink for Observer {
    fn event(&mut self, event: &Event<'_>) -> Dispatch {
        self.scanner.read_event(event)
    }

    fn end(&mut self, end: BodyEnd) {
        self.fire(end);
    }

    fn event_limit(&self) -> usize {
        EVENT_LIMIT
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        // The client went away before the end: report all the same, so that
        // reservations are settled.
        self.fire(BodyEnd::Dropped);
    }
}

impl<B> Body for UsageBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        if let Some(guest) = this.guest.take() {
            // Not adopted by now, the observer reads the body itself.
            *this.observer = guest.slot.take();
        }
        let Some(obs) = this.observer.as_mut() else {
            return this.inner.poll_frame(cx);
        };
        if let Some(frame) = obs.queued.take() {
            return Poll::Ready(Some(Ok(*frame)));
        }
        if obs.ended {
            return Poll::Ready(None);
        }
        if obs.fired {
            // After a failure: whatever the inner body does next is its own.
            return this.inner.poll_frame(cx);
        }
        loop {
            let frame = match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    obs.fire(BodyEnd::Failed);
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    let rest = obs.scanner.finish_forward();
                    obs.fire(BodyEnd::Completed);
                    obs.ended = true;
                    return Poll::Ready(rest.map(|b| Ok(Frame::data(b))));
                }
            };
            let at_end = this.inner.is_end_stream();
            if !obs.strip && !at_end {
                // The usual frame: scanned, and passed on as it came.
                match frame.data_ref() {
                    Some(data) if data.is_empty() => continue,
                    Some(data) => {
                        obs.scanner.feed(data);
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    None => {}
                }
            }
            let (mut data, other) = match frame.into_data() {
                Ok(data) => (obs.scanner.forward(data), None),
                Err(frame) => (None, Some(frame)),
            };
            if other.is_some() || at_end {
                data = concat(data, obs.scanner.finish_forward());
            }
            if at_end {
                obs.fire(BodyEnd::Completed);
                obs.ended = true;
            }
            match (data, other) {
                (Some(data), Some(frame)) => {
                    obs.queued = Some(Box::new(frame));
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                (Some(data), None) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                (None, Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                (None, None) if at_end => return Poll::Ready(None),
                // Everything was held back or stripped: poll on.
                (None, None) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.guest.is_some() {
            // Not polled yet: its observer may still have a report to make.
            return false;
        }
        match &self.observer {
            None => self.inner.is_end_stream(),
            // Until the report is made, say "not yet", so that the server
            // polls once more and the body ends as Completed, not Dropped.
            Some(obs) => {
                obs.queued.is_none()
                    && (obs.ended
                        || (obs.fired && obs.scanner.held_len() == 0 && self.inner.is_end_stream()))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(guest) = &self.guest
            && guest.strip
        {
            // As a stripping observer's, whoever ends up reading.
            let mut hint = SizeHint::new();
            if let Some(upper) = self.inner.size_hint().upper() {
                hint.set_upper(upper);
            }
            return hint;
        }
        match &self.observer {
            None => self.inner.size_hint(),
            Some(obs) if obs.ended => {
                let queued = obs.queued.as_deref().and_then(Frame::data_ref);
                SizeHint::with_exact(queued.map_or(0, |d| d.len() as u64))
            }
            Some(obs) if obs.strip => {
                let mut hint = SizeHint::new();
                if let Some(upper) = self.inner.size_hint().upper() {
                    hint.set_upper(upper.saturating_add(obs.scanner.held_len() as u64));
                }
                hint
            }
            Some(_) => self.inner.size_hint(),
        }
    }
}

/// Where an observer waits to be adopted: shared by its [`UsageBody`] and
/// the [`SseGuest`](crate::sse::SseGuest) in the response extensions, taken by whichever comes
/// first (the framing body's adoption, or the observed body's first poll).
pub(crate) struct GuestSlot(Mutex<Option<Box<Observer>>>);

impl GuestSlot {
    pub(crate) fn new(observer: Box<Observer>) -> Arc<GuestSlot> {
        Arc::new(GuestSlot(Mutex::new(Some(observer))))
    }

    fn take(&self) -> Option<Box<Observer>> {
        // Nothing runs under the lock but a move.
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// Hands the observer over to the framing body further out, if it is
    /// still here and needs to hold back no more than `limit` bytes of an
    /// unfinished event.
    pub(crate) fn adopt(&self, limit: usize) -> Option<Box<dyn EventSink>> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref()?.event_limit() > limit {
            // The host would cut events this reader must read whole.
            return None;
        }
        slot.take().map(|observer| observer as Box<dyn EventSink>)
    }
}

/// A [`UsageBody`]'s hold on its waiting observer. Dropped before the
/// first poll (the client left), the observer is dropped with it and
/// reports at once, whoever else still holds the slot.
struct GuestHandle {
    slot: Arc<GuestSlot>,
    /// The observer strips usage chunks: the body's length is not known.
    strip: bool,
}

impl Drop for GuestHandle {
    fn drop(&mut self) {
        drop(self.slot.take());
    }
}

fn concat(a: Option<Bytes>, b: Option<Bytes>) -> Option<Bytes> {
    match (a, b) {
        (Some(a), Some(b)) => {
            let mut all = BytesMut::with_capacity(a.len() + b.len());
            all.extend_from_slice(&a);
            all.extend_from_slice(&b);
            Some(all.freeze())
        }
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_observer_stays_small() {
        // It lives in every observed body; keep an eye on it.
        let size = std::mem::size_of::<Observer>();
        assert!(size <= 320, "Observer is {size} bytes");
    }
}
