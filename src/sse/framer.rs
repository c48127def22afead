//! [`Framer`]: events out of frames, with one hold-back buffer.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use memchr::memchr2;

use super::{COMMENT, DATA, DONE, Event, PARTIAL, PREFIX, UNFINISHED};
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
    /// Stop after this event: the rest of the frame is not framed yet. The
    /// caller feeds `frame.slice(fed.released_to()..)` again later.
    Pause,
}

/// The `data` field of the event being read.
#[derive(Debug, Clone, Copy)]
enum DataField {
    None,
    /// One `data:` line: its value's span.
    One(usize, usize),
    /// Several: joined in the framer's scratch buffer.
    Joined,
}

/// The fields of the event being read, as spans of the bytes it is in.
#[derive(Debug, Clone, Copy)]
struct Fields {
    start: usize,
    lines: bool,
    name: Option<(usize, usize)>,
    data: DataField,
    flags: u8,
}

impl Fields {
    fn new(start: usize) -> Fields {
        Fields {
            start,
            lines: false,
            name: None,
            data: DataField::None,
            flags: 0,
        }
    }

    /// The line `buf[start..end]` (not empty, without its line end).
    #[inline(always)]
    fn line(&mut self, buf: &[u8], start: usize, end: usize, scratch: &mut Vec<u8>) {
        self.lines = true;
        let line = &buf[start..end];
        match line[0] {
            b':' => self.flags |= COMMENT,
            b'd' => {
                if let Some(at) = value_start(line, b"data") {
                    self.data(buf, start + at, end, scratch);
                }
            }
            b'e' => {
                if let Some(at) = value_start(line, b"event") {
                    self.name = Some((start + at, end));
                }
            }
            _ => {}
        }
    }

    #[inline]
    fn data(&mut self, buf: &[u8], start: usize, end: usize, scratch: &mut Vec<u8>) {
        self.flags |= DATA;
        match self.data {
            DataField::None => self.data = DataField::One(start, end),
            DataField::One(a, b) => {
                scratch.clear();
                scratch.extend_from_slice(&buf[a..b]);
                scratch.push(b'\n');
                scratch.extend_from_slice(&buf[start..end]);
                self.data = DataField::Joined;
            }
            DataField::Joined => {
                scratch.push(b'\n');
                scratch.extend_from_slice(&buf[start..end]);
            }
        }
    }
}

/// Where the value of field `name` starts on `line`: past `name:` and one
/// optional space, or at the end of a line that is only `name`. `None` when
/// the line is another field (`dataset: …`).
#[inline]
fn value_start(line: &[u8], name: &[u8]) -> Option<usize> {
    let rest = line.strip_prefix(name)?;
    match rest.first() {
        None => Some(name.len()),
        Some(b':') => Some(name.len() + 1 + usize::from(rest.get(1) == Some(&b' '))),
        Some(_) => None,
    }
}

/// The fields of the one event in `buf` (its lines may end with any line
/// end; the last one may have none).
fn parse_lines(buf: &[u8], scratch: &mut Vec<u8>) -> Fields {
    let mut fields = Fields::new(0);
    let mut pos = 0;
    while pos < buf.len() {
        if matches!(buf[pos], b'\n' | b'\r') {
            pos += 1;
            continue;
        }
        let end = memchr2(b'\n', b'\r', &buf[pos..]).map_or(buf.len(), |i| pos + i);
        fields.line(buf, pos, end, scratch);
        pos = end;
    }
    fields
}

/// The start of an event larger than the limit: its bytes are released as
/// they come, only the first bytes of its name and data are kept, read line
/// by line as they pass.
#[derive(Debug, Default)]
struct Overflow {
    name: Option<Vec<u8>>,
    data: Vec<u8>,
    flags: u8,
    /// The start of the line in progress.
    line: Vec<u8>,
}

/// Bytes kept of a line of an event over the limit: a field name and
/// [`PREFIX`] bytes of its value.
const LINE_START: usize = PREFIX + 8;

impl Overflow {
    /// Reads the next bytes of the event (its blank line included).
    fn read(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let end = memchr2(b'\n', b'\r', bytes);
            let part = &bytes[..end.unwrap_or(bytes.len())];
            let room = LINE_START.saturating_sub(self.line.len());
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            let Some(end) = end else {
                return;
            };
            self.end_line();
            bytes = &bytes[end + 1..];
        }
    }

    /// The line in progress is complete: reads its field.
    fn end_line(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.line);
        let mut fields = Fields::new(0);
        fields.line(&line, 0, line.len(), &mut Vec::new());
        let had_data = self.flags & DATA != 0;
        self.flags |= fields.flags;
        let cut = |s: &[u8]| s[..s.len().min(PREFIX)].to_vec();
        if let Some((a, b)) = fields.name {
            self.name = Some(cut(&line[a..b]));
        }
        if let DataField::One(a, b) = fields.data {
            if had_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(&line[a..b]);
            self.data.truncate(PREFIX);
        }
        self.line = line;
        self.line.clear();
    }

    fn event(&mut self, flags: u8) -> Event<'_> {
        self.end_line();
        let done = if self.data == b"[DONE]" { DONE } else { 0 };
        Event {
            name: self.name.as_deref(),
            data: &self.data,
            flags: self.flags | PARTIAL | done | flags,
            source: None,
            len: 0,
        }
    }
}

/// What feeding one frame did: which of its bytes (and of the earlier ones
/// held back) are released, how many events it completed, and whether a
/// callback paused the framing.
#[derive(Debug, Default)]
pub(crate) struct Fed {
    /// Bytes of earlier frames no longer held, to go before this frame's:
    /// an event that began there, joined with its end here
    /// (`frame[..from]`), or the start of an event over the limit.
    earlier: Bytes,
    /// This frame's released bytes are `frame[from..to]`; the rest is held
    /// (or, after a pause, not framed yet).
    from: usize,
    to: usize,
    /// Events completed (comment-only ones included).
    pub(crate) events: u32,
    /// A callback paused the framing at `to`.
    pub(crate) paused: bool,
    /// Events to leave out (rare: boxed).
    cuts: Option<Box<Cuts>>,
}

#[derive(Debug, Default)]
struct Cuts {
    earlier: bool,
    spans: Vec<Range<usize>>,
}

impl Fed {
    /// Whether the frame is released whole, as it came (the usual case).
    #[inline]
    pub(crate) fn releases_whole(&self, len: usize) -> bool {
        self.from == 0 && self.to == len && self.earlier.is_empty() && self.cuts.is_none()
    }

    /// Where this frame's released bytes end: what follows is held, or not
    /// framed yet after a pause.
    pub(crate) fn released_to(&self) -> usize {
        self.to
    }

    fn cut(&mut self, span: Range<usize>) {
        self.cuts.get_or_insert_default().spans.push(span);
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
                first: earlier,
                second,
            };
        };
        let mut out = BytesMut::new();
        if !cuts.earlier {
            out.extend_from_slice(&earlier);
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

/// The incremental SSE framer (see the [module docs](super)).
#[derive(Debug)]
pub(crate) struct Framer {
    at: At,
    /// The unfinished event's bytes, from its first byte.
    held: Buffered,
    /// The unfinished event went over `limit`: it is not held.
    overflow: Option<Box<Overflow>>,
    limit: usize,
    /// The joined data of an event with several `data:` lines.
    scratch: Vec<u8>,
    /// The event cut last ended with a `\r` blank line at the end of a
    /// frame: the `\n` that may follow is cut with it.
    cut_lf: bool,
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
        }
    }

    /// Bytes of the unfinished event held back.
    pub(crate) fn held_len(&self) -> usize {
        self.held.len()
    }

    /// An event over the limit is in progress: its bytes are released as
    /// they come.
    pub(crate) fn overflowing(&self) -> bool {
        self.overflow.is_some()
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
    pub(crate) fn feed<F>(&mut self, frame: &Bytes, on_event: &mut F) -> Fed
    where
        F: FnMut(&Event<'_>) -> Dispatch,
    {
        let len = frame.len();
        if self.at == At::LineStart && self.held.is_empty() && self.overflow.is_none() && len > 2 {
            // The hot path: a frame holding exactly one one-line event, as
            // chat-completion upstreams flush them (`data: {…}\n\n`).
            if let Some(i) = memchr2(b'\n', b'\r', frame) {
                if i + 2 == len && i > 0 && frame[i] == b'\n' && frame[i + 1] == b'\n' {
                    let mut fields = Fields::new(0);
                    fields.line(frame, 0, i, &mut self.scratch);
                    let mut fed = Fed {
                        to: len,
                        events: 1,
                        ..Fed::default()
                    };
                    match self.dispatch(frame, &fields, len, on_event) {
                        Dispatch::Keep => {}
                        Dispatch::Cut => fed.cut(0..len),
                        Dispatch::Pause => fed.paused = true,
                    }
                    return fed;
                }
            }
        }
        self.feed_frame(frame, on_event)
    }

    /// [`feed`](Self::feed), for any frame.
    fn feed_frame<F>(&mut self, frame: &Bytes, on_event: &mut F) -> Fed
    where
        F: FnMut(&Event<'_>) -> Dispatch,
    {
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
                let dispatch = on_event(&overflow.event(0));
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
                fed.earlier = joined;
                (fed.from, fed.to) = (end, end);
                match dispatch {
                    Dispatch::Keep => {}
                    Dispatch::Cut => {
                        fed.cuts.get_or_insert_default().earlier = true;
                        self.cut_lf = self.at == At::AfterBlankCr;
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
    pub(crate) fn finish<F>(&mut self, on_event: &mut F) -> Option<Bytes>
    where
        F: FnMut(&Event<'_>) -> Dispatch,
    {
        self.at = At::LineStart;
        if let Some(mut overflow) = self.overflow.take() {
            on_event(&overflow.event(UNFINISHED));
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
                At::InLine => match memchr2(b'\n', b'\r', &buf[pos..]) {
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
    fn scan<F>(&mut self, frame: &Bytes, mut pos: usize, on_event: &mut F, fed: &mut Fed) -> usize
    where
        F: FnMut(&Event<'_>) -> Dispatch,
    {
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
                    match self.dispatch(frame, &fields, end, on_event) {
                        Dispatch::Keep => {}
                        Dispatch::Cut => {
                            fed.cut(fields.start..end);
                            self.cut_lf = at == At::AfterBlankCr;
                        }
                        Dispatch::Pause => {
                            self.at = at;
                            fed.paused = true;
                            return complete;
                        }
                    }
                }
                fields = Fields::new(end);
                continue;
            }
            match memchr2(b'\n', b'\r', &buf[pos..]) {
                None => {
                    at = At::InLine;
                    break;
                }
                Some(i) => {
                    let end = pos + i;
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

    /// Calls `on_event` with the event whose fields are spans of `source`
    /// and which ends at `end`.
    #[inline(always)]
    fn dispatch<F>(
        &mut self,
        source: &Bytes,
        fields: &Fields,
        end: usize,
        on_event: &mut F,
    ) -> Dispatch
    where
        F: FnMut(&Event<'_>) -> Dispatch,
    {
        let data: &[u8] = match fields.data {
            DataField::None => &[],
            DataField::One(a, b) => &source[a..b],
            DataField::Joined => &self.scratch,
        };
        let mut flags = fields.flags;
        if data == b"[DONE]" {
            flags |= DONE;
        }
        let event = Event {
            name: fields.name.map(|(a, b)| &source[a..b]),
            data,
            flags,
            source: Some(source),
            len: end - fields.start,
        };
        let dispatch = on_event(&event);
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
            fed.earlier = held;
        }
    }
}
