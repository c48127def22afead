//! [`SseHost`]: how a body that frames a stream anyway serves a per-event
//! callback from further out, so that the stream is framed once; and
//! [`SseGuest`], the same for a callback from further in (a gateway that
//! observes usage innermost, below the stream layer).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Dispatch, Event};
use crate::usage::{BodyEnd, GuestSlot};

/// A per-event reader that a framing body can run for its owner (the usage
/// observer's SSE reader). Dropped without [`end`](Self::end) when the body
/// is dropped before its end.
pub(crate) trait EventSink: Send + Sync {
    /// One event of the stream the client gets; `Cut` leaves it out.
    fn event(&mut self, event: &Event<'_>) -> Dispatch;

    /// The body has ended: nothing more comes. `end` is how the body the
    /// sink stands in for would have ended: completed when its inner body
    /// ended, failed on its error, dropped when the host stopped reading it
    /// (an idle stream cut).
    fn end(&mut self, end: BodyEnd);

    /// The largest event the sink must read whole: the host must hold back
    /// at least this much of an unfinished event.
    fn event_limit(&self) -> usize;
}

/// In the response extensions of a stream that a body frames anyway (the
/// stream layer's watcher): a layer further out that would frame it again
/// hands its [`EventSink`] over instead, until the body starts.
#[derive(Clone)]
pub(crate) struct SseHost(Arc<Slot>);

struct Slot {
    /// The most the host holds back of an unfinished event.
    limit: usize,
    state: Mutex<State>,
}

enum State {
    Open(Option<Box<dyn EventSink>>),
    Closed,
}

impl SseHost {
    /// A host that holds back `limit` bytes of an unfinished event, and
    /// already reads for `guest` if there is one (adopted from further in:
    /// later offers are refused).
    pub(crate) fn with(limit: usize, guest: Option<Box<dyn EventSink>>) -> SseHost {
        SseHost(Arc::new(Slot {
            limit,
            state: Mutex::new(State::Open(guest)),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing runs under the lock but moves: it holds consistent state.
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands `sink` to the body. It is given back when the body cannot take
    /// it: it has started already, has a sink, or holds back less than the
    /// sink needs to read an event whole.
    pub(crate) fn offer<S: EventSink + 'static>(&self, sink: Box<S>) -> Result<(), Box<S>> {
        if sink.event_limit() > self.0.limit {
            return Err(sink);
        }
        match &mut *self.lock() {
            State::Open(slot @ None) => {
                *slot = Some(sink);
                Ok(())
            }
            _ => Err(sink),
        }
    }

    /// The body starts (or is dropped): takes the sink offered, if any, and
    /// refuses later offers.
    pub(crate) fn close(&self) -> Option<Box<dyn EventSink>> {
        match std::mem::replace(&mut *self.lock(), State::Closed) {
            State::Open(sink) => sink,
            State::Closed => None,
        }
    }
}

impl fmt::Debug for SseHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseHost")
            .field("limit", &self.0.limit)
            .finish_non_exhaustive()
    }
}

/// In the response extensions of a stream whose usage is observed further
/// in than the body that frames it: that body, further out, adopts the
/// observer's reader ([`GuestSlot::adopt`]), and the observed body only passes
/// frames through. Unadopted by its first poll, the observer frames the
/// stream itself.
#[derive(Clone)]
pub(crate) struct SseGuest(pub(crate) Arc<GuestSlot>);

impl fmt::Debug for SseGuest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseGuest").finish_non_exhaustive()
    }
}
