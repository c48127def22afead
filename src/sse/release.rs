//! What feeding a frame released: the bytes that are no longer held back,
//! without the events a reader cut.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::Dispatch;

/// What feeding one frame did: which of its bytes (and of the earlier ones
/// held back) are released, how many events it completed, and whether a
/// callback paused the framing.
#[derive(Debug, Default)]
pub(crate) struct Fed {
    /// Bytes of earlier frames no longer held, to go before this frame's:
    /// an event that began there, joined with its end here
    /// (`frame[..from]`), or the start of an event over the limit.
    pub(super) earlier: Option<Bytes>,
    /// This frame's released bytes are `frame[from..to]`; the rest is held
    /// (or, after a pause, not framed yet).
    pub(super) from: usize,
    pub(super) to: usize,
    /// Events completed (comment-only ones included).
    pub(crate) events: u32,
    /// A callback paused the framing at `to`.
    pub(crate) paused: bool,
    /// Events to leave out (rare: boxed).
    pub(super) cuts: Option<Box<Cuts>>,
}

#[derive(Debug, Default)]
pub(super) struct Cuts {
    pub(super) earlier: bool,
    spans: Vec<Range<usize>>,
}

impl Fed {
    /// A frame that was one event, which `dispatch` was said of.
    #[inline]
    pub(super) fn one(frame: &[u8], dispatch: Dispatch) -> Fed {
        let len = frame.len();
        let mut fed = Fed {
            to: len,
            events: 1,
            ..Fed::default()
        };
        match dispatch {
            Dispatch::Keep => {}
            Dispatch::Cut => fed.cut(0..len),
            Dispatch::CutNullUsage => {
                if let Some(span) = super::framer::null_usage_at(frame) {
                    fed.cut(span);
                }
            }
            Dispatch::Pause => fed.paused = true,
        }
        fed
    }

    /// Where this frame's released bytes end: what follows is held, or not
    /// framed yet after a pause.
    pub(crate) fn released_to(&self) -> usize {
        self.to
    }

    pub(super) fn cut(&mut self, span: Range<usize>) {
        self.cuts.get_or_insert_default().spans.push(span);
    }

    /// Cuts the `,"usage":null` of the event at `span` of this frame, if
    /// its bytes hold it.
    pub(super) fn cut_null_usage(&mut self, span: Range<usize>, frame: &[u8]) {
        if let Some(at) = frame
            .get(span.clone())
            .and_then(super::framer::null_usage_at)
        {
            self.cut(span.start + at.start..span.start + at.end);
        }
    }

    /// The released bytes, from `frame` (the frame that was fed), without
    /// the events cut. No copy unless an event spanned frames (already
    /// joined) or was cut.
    pub(crate) fn release(self, frame: Bytes) -> Released {
        let Fed {
            earlier,
            from,
            to,
            cuts,
            ..
        } = self;
        let Some(cuts) = cuts else {
            let second = if from == 0 && to == frame.len() {
                frame
            } else {
                frame.slice(from..to)
            };
            return Released {
                first: earlier.unwrap_or_default(),
                second,
            };
        };
        let mut out = BytesMut::new();
        if let (false, Some(earlier)) = (cuts.earlier, &earlier) {
            out.extend_from_slice(earlier);
        }
        let mut at = from;
        for span in &cuts.spans {
            out.extend_from_slice(&frame[at..span.start]);
            at = span.end;
        }
        out.extend_from_slice(&frame[at..to]);
        Released {
            first: out.freeze(),
            second: Bytes::new(),
        }
    }
}

/// The bytes a frame released, in order: at most two pieces.
#[derive(Debug, Default)]
pub(crate) struct Released {
    first: Bytes,
    second: Bytes,
}

impl Released {
    /// The pieces, the empty ones left out.
    pub(crate) fn pieces(self) -> impl Iterator<Item = Bytes> {
        [self.first, self.second]
            .into_iter()
            .filter(|piece| !piece.is_empty())
    }

    /// The pieces as one `Bytes` (copied only when there are two).
    pub(crate) fn into_one(self) -> Option<Bytes> {
        match (self.first.is_empty(), self.second.is_empty()) {
            (true, true) => None,
            (false, true) => Some(self.first),
            (true, false) => Some(self.second),
            (false, false) => {
                let mut all = BytesMut::with_capacity(self.first.len() + self.second.len());
                all.extend_from_slice(&self.first);
                all.extend_from_slice(&self.second);
                Some(all.freeze())
            }
        }
    }
}
