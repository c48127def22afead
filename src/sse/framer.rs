//! [`Framer`]: events out of frames, with one hold-back buffer.

use std::ops::Range;

use bytes::Bytes;

use super::fields::{DataField, Fields, Overflow, is_done, line_end, parse_lines, value_start};
use super::json_lines::JsonLines;
use super::release::Fed;
use super::{DATA, DONE, Event, OnEvent, UNFINISHED};
use crate::body::collect::Buffered;

/// Where the framer is in the line structure when a frame ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// The next byte starts a line.
    LineStart,
    /// The last byte was a `\r` ending a line: a `\n` next belongs to it.
    AfterCr,
    /// The last byte was a `\r` blank line, which ended an event: a `\n`
    /// next belongs to it.
    AfterBlankCr,
    /// Inside a line.
    InLine,
}

/// What a callback asks of the framer after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dispatch {
    /// Go on.
    Keep,
    /// Go on, and leave this event out of the released bytes (the usage
    /// chunk a client did not ask for). Ignored for a partial event, whose
    /// bytes were released before it ended.
    Cut,
    /// Go on, and leave out of this event the `,"usage":null` that OpenAI
    /// puts at the end of every chunk once usage is asked for (a client
    /// that did not ask gets chunks without it, as OpenAI would send
    /// them). The rest of the event is released. Ignored for a partial
    /// event, and for one whose raw bytes do not hold the member whole (a
    /// data field split over lines).
    CutNullUsage,
    /// Stop after this event: the rest of the frame is not framed yet. The
    /// caller feeds `frame.slice(fed.released_to()..)` again later.
    Pause,
}

/// [`Framer::feed_one`] for a frame of two lines, `event: …` (ending at
/// `i`) and `data: …`. Out of line: the one-line path stays small.
#[inline(never)]
fn feed_named<F: OnEvent>(frame: &Bytes, i: usize, on_event: &mut F) -> Option<Dispatch> {
    let buf: &[u8] = frame;
    let len = buf.len();
    if buf[i] != b'\n' {
        return None;
    }
    let name = value_start(&buf[..i], b"event")?;
    let j = i + 1 + line_end(&buf[i + 1..])?;
    let at = i + 1 + value_start(&buf[i + 1..j], b"data")?;
    if j + 2 != len || buf[j] != b'\n' || buf[j + 1] != b'\n' {
        return None;
    }
    Some(on_event.on_event(&whole(frame, Some(&buf[name..i]), &buf[at..j])))
}

/// The event of a frame that holds it whole, its data one `data:` line.
#[inline(always)]
fn whole<'a>(frame: &'a Bytes, name: Option<&'a [u8]>, data: &'a [u8]) -> Event<'a> {
    let done = if is_done(data) { DONE } else { 0 };
    Event {
        name,
        data,
        flags: DATA | done,
        source: Some(frame),
        len: frame.len(),
    }
}

/// The incremental SSE framer (see the [module docs](super)).
#[derive(Debug)]
pub(crate) struct Framer {
    at: At,
    /// The unfinished event's bytes, from its first byte.
    pub(super) held: Buffered,
    /// The unfinished event went over `limit`: it is not held.
    overflow: Option<Box<Overflow>>,
    pub(super) limit: usize,
    /// The joined data of an event with several `data:` lines.
    scratch: Vec<u8>,
    /// The event cut last ended with a `\r` blank line at the end of a
    /// frame: the `\n` that may follow is cut with it.
    cut_lf: bool,
    /// Frames bare JSON objects instead of SSE events.
    pub(super) json: Option<Box<JsonLines>>,
}

impl Framer {
    /// A framer that holds back at most `limit` bytes of an unfinished event.
    pub(crate) fn new(limit: usize) -> Framer {
        Framer {
            at: At::LineStart,
            held: Buffered::Empty,
            overflow: None,
            limit,
            scratch: Vec::new(),
            cut_lf: false,
            json: None,
        }
    }

    /// A framer of bare JSON objects (see [`json_lines`](super::json_lines)),
    /// which holds back at most `limit` bytes of an unfinished one.
    pub(crate) fn json_lines(limit: usize) -> Framer {
        Framer {
            json: Some(Box::new(JsonLines::new())),
            ..Framer::new(limit)
        }
    }

    /// Frames bare JSON objects.
    pub(crate) fn is_json(&self) -> bool {
        self.json.is_some()
    }

    /// Bare JSON: whether the bytes released so far end a line (or are none).
    pub(crate) fn ends_line(&self) -> bool {
        self.json.as_ref().is_none_or(|json| json.ends_line())
    }

    /// Bytes of the unfinished event held back.
    pub(crate) fn held_len(&self) -> usize {
        self.held.len()
    }

    /// An event over the limit is in progress: its bytes are released as
    /// they come.
    pub(crate) fn overflowing(&self) -> bool {
        self.overflow.is_some() || self.json.as_ref().is_some_and(|json| json.overflowing())
    }

    /// The last event dispatched is cut after all (by a reader that came
    /// later): a `\n` completing its blank line in the next frame goes too.
    pub(crate) fn cut_last(&mut self) {
        self.cut_lf = self.at == At::AfterBlankCr;
    }

    /// The held bytes, which stay held (the framing goes on).
    pub(crate) fn share_held(&mut self) -> Bytes {
        self.held.share()
    }

    /// The held bytes, given up: the framer is not fed any more.
    pub(crate) fn take_held(&mut self) -> Bytes {
        self.held.take()
    }

    /// Frames the next frame of the stream, calling `on_event` for each
    /// event it completes.
    #[inline]
    pub(crate) fn feed<F: OnEvent>(&mut self, frame: &Bytes, on_event: &mut F) -> Fed {
        match self.feed_one(frame, on_event) {
            Some(dispatch) => Fed::one(frame, dispatch),
            None => self.feed_frame(frame, on_event),
        }
    }

    /// The hot path of [`feed`](Self::feed): a frame holding exactly one
    /// event, `data: …` (or `event: …` then `data: …`), its lines ending
    /// with `\n`, nothing held before it: a chat-completion chunk (or an
    /// Anthropic event), as upstreams flush them. Returns what `on_event`
    /// said of it, or `None` (having done nothing) for any other frame,
    /// which [`feed_frame`](Self::feed_frame) takes.
    #[inline]
    pub(crate) fn feed_one<F: OnEvent>(
        &mut self,
        frame: &Bytes,
        on_event: &mut F,
    ) -> Option<Dispatch> {
        let len = frame.len();
        if self.at != At::LineStart
            || !self.held.is_empty()
            || self.overflow.is_some()
            || len < 3
            || self.json.is_some()
        {
            return None;
        }
        let buf: &[u8] = frame;
        let i = line_end(buf)?;
        if i + 2 != len {
            return feed_named(frame, i, on_event);
        }
        let at = value_start(&buf[..i], b"data")?;
        if buf[i] != b'\n' || buf[i + 1] != b'\n' {
            return None;
        }
        Some(on_event.on_event(&whole(frame, None, &buf[at..i])))
    }

    /// [`feed`](Self::feed), for any frame.
    pub(crate) fn feed_frame<F: OnEvent>(&mut self, frame: &Bytes, on_event: &mut F) -> Fed {
        if self.json.is_some() {
            return self.feed_json(frame, on_event);
        }
        let mut fed = Fed::default();
        let len = frame.len();
        if len == 0 {
            return fed;
        }
        let mut pos = 0;
        if self.at == At::AfterBlankCr {
            // The `\n` of a `\r\n` blank line whose `\r` ended the last frame.
            if frame[0] == b'\n' {
                pos = 1;
                if self.cut_lf {
                    fed.from = 1;
                }
            }
            self.cut_lf = false;
            self.at = At::LineStart;
        } else if self.overflow.is_some() || !self.held.is_empty() {
            let Some(end) = self.find_end(frame) else {
                match self.overflow.as_mut() {
                    Some(overflow) => overflow.read(frame),
                    None if self.held.len() + len > self.limit => {
                        self.start_overflow(frame, 0, &mut fed);
                    }
                    None => {
                        self.held.push(frame.clone());
                        return fed;
                    }
                }
                fed.to = len;
                return fed;
            };
            fed.events += 1;
            if let Some(mut overflow) = self.overflow.take() {
                // Its bytes went out as they came; a cut cannot take them back.
                overflow.read(&frame[..end]);
                let dispatch = on_event.on_event(&overflow.event(0));
                fed.to = end;
                if dispatch == Dispatch::Pause {
                    fed.paused = true;
                    return fed;
                }
            } else {
                self.held.push(frame.slice(..end));
                let joined = self.held.take();
                let fields = parse_lines(&joined, &mut self.scratch);
                let dispatch = self.dispatch(&joined, &fields, joined.len(), on_event);
                fed.earlier = Some(joined);
                (fed.from, fed.to) = (end, end);
                match dispatch {
                    Dispatch::Keep => {}
                    Dispatch::Cut => {
                        fed.cuts.get_or_insert_default().earlier = true;
                        self.cut_lf = self.at == At::AfterBlankCr;
                    }
                    Dispatch::CutNullUsage => {
                        fed.earlier = fed.earlier.take().map(|joined| without_null_usage(&joined));
                    }
                    Dispatch::Pause => {
                        fed.paused = true;
                        return fed;
                    }
                }
            }
            pos = end;
        }
        let complete = self.scan(frame, pos, on_event, &mut fed);
        fed.to = complete;
        if fed.paused || complete == len {
            return fed;
        }
        if len - complete > self.limit {
            self.start_overflow(frame, complete, &mut fed);
            fed.to = len;
        } else {
            self.held.push(frame.slice(complete..));
        }
        fed
    }

    /// The stream has ended: dispatches the unfinished event, if any
    /// (flagged [`UNFINISHED`]), and returns its held bytes unless it was
    /// cut.
    ///
    /// Bare JSON: an unfinished object is never an event (it is not JSON),
    /// so it is dropped.
    pub(crate) fn finish<F: OnEvent>(&mut self, on_event: &mut F) -> Option<Bytes> {
        self.at = At::LineStart;
        if self.json.is_some() {
            self.json = Some(Box::new(JsonLines::new()));
            self.held.take();
            return None;
        }
        if let Some(mut overflow) = self.overflow.take() {
            on_event.on_event(&overflow.event(UNFINISHED));
            return None;
        }
        if self.held.is_empty() {
            return None;
        }
        let held = self.held.take();
        let mut fields = parse_lines(&held, &mut self.scratch);
        fields.flags |= UNFINISHED;
        match self.dispatch(&held, &fields, fields.start, on_event) {
            Dispatch::Cut => None,
            Dispatch::CutNullUsage => Some(without_null_usage(&held)),
            Dispatch::Keep | Dispatch::Pause => Some(held),
        }
    }

    /// Finds the end of the held event in `buf` (past its blank line).
    fn find_end(&mut self, buf: &[u8]) -> Option<usize> {
        let len = buf.len();
        let mut pos = 0;
        let mut at = self.at;
        while pos < len {
            match at {
                At::AfterCr => {
                    if buf[pos] == b'\n' {
                        pos += 1;
                    }
                    at = At::LineStart;
                }
                At::LineStart | At::AfterBlankCr => match buf[pos] {
                    b'\n' => {
                        self.at = At::LineStart;
                        return Some(pos + 1);
                    }
                    b'\r' => {
                        if pos + 1 == len {
                            self.at = At::AfterBlankCr;
                            return Some(len);
                        }
                        self.at = At::LineStart;
                        return Some(pos + 1 + usize::from(buf[pos + 1] == b'\n'));
                    }
                    _ => at = At::InLine,
                },
                At::InLine => match line_end(&buf[pos..]) {
                    None => pos = len,
                    Some(i) => {
                        let end = pos + i;
                        pos = end + 1;
                        at = if buf[end] == b'\r' {
                            At::AfterCr
                        } else {
                            At::LineStart
                        };
                    }
                },
            }
        }
        self.at = at;
        None
    }

    /// Frames the whole events of `frame` from `pos` (a line start, no
    /// event in progress); returns the offset past the last one.
    #[inline]
    fn scan<F: OnEvent>(
        &mut self,
        frame: &Bytes,
        mut pos: usize,
        on_event: &mut F,
        fed: &mut Fed,
    ) -> usize {
        let buf: &[u8] = frame;
        let len = buf.len();
        let mut complete = pos;
        if pos >= len {
            return complete;
        }
        let mut fields = Fields::new(pos);
        let mut at = At::LineStart;
        while pos < len {
            let b = buf[pos];
            if b == b'\n' || b == b'\r' {
                // A blank line: the event ends here.
                let mut end = pos + 1;
                at = At::LineStart;
                if b == b'\r' {
                    if end == len {
                        at = At::AfterBlankCr;
                    } else if buf[end] == b'\n' {
                        end += 1;
                    }
                }
                pos = end;
                complete = end;
                if fields.lines {
                    fed.events += 1;
                    let dispatch = self.dispatch(frame, &fields, end, on_event);
                    if self.dispatched(fed, dispatch, buf, fields.start..end, at) {
                        return complete;
                    }
                }
                fields = Fields::new(end);
                continue;
            }
            match line_end(&buf[pos..]) {
                None => {
                    at = At::InLine;
                    break;
                }
                Some(i) => {
                    let end = pos + i;
                    let stop = end + 2;
                    if fields.flags == 0
                        && buf[end] == b'\n'
                        && buf.get(end + 1) == Some(&b'\n')
                        && let Some(value) = value_start(&buf[pos..end], b"data")
                    {
                        // The usual event: a `data:` line (after an
                        // `event:` line, maybe), then the blank line.
                        let data = &buf[pos + value..end];
                        let done = if is_done(data) { DONE } else { 0 };
                        let event = Event {
                            name: fields.name.map(|(a, b)| &buf[a..b]),
                            data,
                            flags: DATA | done,
                            source: Some(frame),
                            len: stop - fields.start,
                        };
                        fed.events += 1;
                        (pos, complete, at) = (stop, stop, At::LineStart);
                        let dispatch = on_event.on_event(&event);
                        if self.dispatched(fed, dispatch, buf, fields.start..stop, at) {
                            return complete;
                        }
                        fields = Fields::new(stop);
                        continue;
                    }
                    fields.line(buf, pos, end, &mut self.scratch);
                    pos = end + 1;
                    at = At::LineStart;
                    if buf[end] == b'\r' {
                        if pos == len {
                            at = At::AfterCr;
                        } else if buf[pos] == b'\n' {
                            pos += 1;
                        }
                    }
                }
            }
        }
        self.at = at;
        complete
    }

    /// Applies what a callback said of the event at `span`, after which
    /// the line structure is `at`; `true` when it paused the framing.
    #[inline(always)]
    fn dispatched(
        &mut self,
        fed: &mut Fed,
        dispatch: Dispatch,
        frame: &[u8],
        span: Range<usize>,
        at: At,
    ) -> bool {
        match dispatch {
            Dispatch::Keep => false,
            Dispatch::Cut => {
                fed.cut(span);
                self.cut_lf = at == At::AfterBlankCr;
                false
            }
            Dispatch::CutNullUsage => {
                fed.cut_null_usage(span, frame);
                false
            }
            Dispatch::Pause => {
                self.at = at;
                fed.paused = true;
                true
            }
        }
    }

    /// Calls `on_event` with the event whose fields are spans of `source`
    /// and which ends at `end`.
    #[inline(always)]
    fn dispatch<F: OnEvent>(
        &mut self,
        source: &Bytes,
        fields: &Fields,
        end: usize,
        on_event: &mut F,
    ) -> Dispatch {
        let data: &[u8] = match fields.data {
            DataField::None => &[],
            DataField::One(a, b) => &source[a..b],
            DataField::Joined => &self.scratch,
        };
        let mut flags = fields.flags;
        if is_done(data) {
            flags |= DONE;
        }
        let event = Event {
            name: fields.name.map(|(a, b)| &source[a..b]),
            data,
            flags,
            source: Some(source),
            len: end - fields.start,
        };
        let dispatch = on_event.on_event(&event);
        if let DataField::Joined = fields.data {
            self.scratch.clear();
        }
        dispatch
    }

    /// The unfinished event (held, plus `frame[at..]`) is over the limit:
    /// release its held bytes, and from now on keep only the start of its
    /// name and data.
    fn start_overflow(&mut self, frame: &Bytes, at: usize, fed: &mut Fed) {
        let held = self.held.take();
        let mut overflow = Box::<Overflow>::default();
        overflow.read(&held);
        overflow.read(&frame[at..]);
        self.overflow = Some(overflow);
        if !held.is_empty() {
            fed.earlier = Some(held);
        }
    }
}

/// The member [`Dispatch::CutNullUsage`] leaves out.
pub(super) const NULL_USAGE: &[u8] = b",\"usage\":null";

/// Where the last `,"usage":null` of `raw` (an event's bytes) is.
pub(crate) fn null_usage_at(raw: &[u8]) -> Option<Range<usize>> {
    memchr::memmem::rfind(raw, NULL_USAGE).map(|at| at..at + NULL_USAGE.len())
}

/// `event` without its last `,"usage":null` (copied; rare: only when the
/// event arrived over several frames).
pub(super) fn without_null_usage(event: &Bytes) -> Bytes {
    match null_usage_at(event) {
        Some(span) => {
            let mut out = bytes::BytesMut::with_capacity(event.len() - span.len());
            out.extend_from_slice(&event[..span.start]);
            out.extend_from_slice(&event[span.end..]);
            out.freeze()
        }
        None => event.clone(),
    }
}
