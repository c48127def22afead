//! Incremental SSE framing: where events end, and which events end a stream.
//!
//! The [`Framer`] reads a stream in the frames it arrives in, split at any
//! byte, and reports the offset just past the last complete event of each
//! frame. It keeps no copy of the stream: only the first [`PREFIX`] bytes of
//! a line that continues into the next frame, which is all the terminal-marker
//! checks ever look at.
//!
//! Lines end with `\n`, `\r\n` or `\r`; an empty line ends an event (so `\n\n`,
//! `\r\n\r\n`, `\r\r` and their mixes all do), as the WHATWG SSE parser says.

use std::borrow::Cow;

use memchr::memchr2;

/// The event has a line (a comment counts).
pub(crate) const HAS_LINE: u8 = 1;
/// The event has a `data:` field, so clients dispatch it.
pub(crate) const HAS_DATA: u8 = 2;
/// `event: error`, or data that opens with `{"error"` or `{"type":"error"`.
pub(crate) const ERROR: u8 = 4;
/// The event ends the stream: `data: [DONE]`, `message_stop`,
/// `response.completed|failed|incomplete`, or an error.
pub(crate) const TERMINAL: u8 = 8;

/// Bytes kept of a line that spans frames: enough for every marker.
pub(crate) const PREFIX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// The next byte starts a line.
    LineStart,
    /// The last byte was a `\r` ending a line; a `\n` next belongs to it.
    AfterCr,
    /// The last byte was a `\r` ending an event; a `\n` next belongs to it
    /// (and so to the event boundary).
    AfterBlankCr,
    /// Inside a line that started in an earlier frame.
    InLine,
}

/// What one frame held. Offsets are never 0 (a boundary follows a line
/// ending), so 0 stands for "none".
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Offset just past the last event boundary (blank line) in the frame.
    pub(crate) last_boundary: usize,
    /// Events completed in the frame (comment-only events included).
    pub(crate) events: u32,
    /// Offset just past the first completed event with data.
    pub(crate) first_data_end: usize,
    /// That event's flags.
    pub(crate) first_data_flags: u8,
}

/// The incremental SSE event-boundary scanner.
#[derive(Debug, Clone)]
pub(crate) struct Framer {
    at: At,
    prefix: [u8; PREFIX],
    prefix_len: usize,
    overflow: bool,
    flags: u8,
    terminated: bool,
}

impl Default for Framer {
    fn default() -> Self {
        Framer {
            at: At::LineStart,
            prefix: [0; PREFIX],
            prefix_len: 0,
            overflow: false,
            flags: 0,
            terminated: false,
        }
    }
}

impl Framer {
    /// Whether a complete event has ended the stream (a terminal marker or an
    /// error event).
    pub(crate) fn terminated(&self) -> bool {
        self.terminated
    }

    /// Scans the next frame of the stream.
    #[inline]
    pub(crate) fn scan(&mut self, chunk: &[u8]) -> Scan {
        let len = chunk.len();
        if self.at == At::LineStart && self.flags == 0 && len > 2 {
            // The hot path: a frame holding exactly one one-line event, as
            // chat-completion upstreams flush them (`data: {…}\n\n`).
            if let Some(i) = memchr2(b'\n', b'\r', chunk) {
                if i + 2 == len && chunk[i] == b'\n' && chunk[i + 1] == b'\n' && i > 0 {
                    let flags = classify(&chunk[..i], true);
                    let mut scan = Scan::default();
                    self.flags = flags;
                    self.dispatch(&mut scan, len);
                    return scan;
                }
            }
        }
        self.scan_lines(chunk)
    }

    fn scan_lines(&mut self, chunk: &[u8]) -> Scan {
        let mut scan = Scan::default();
        let len = chunk.len();
        let mut pos = 0;
        if self.at == At::InLine {
            match memchr2(b'\n', b'\r', chunk) {
                None => {
                    self.carry(chunk);
                    return scan;
                }
                Some(i) => {
                    self.carry(&chunk[..i]);
                    self.flags |= classify(&self.prefix[..self.prefix_len], !self.overflow);
                    self.at = if chunk[i] == b'\r' {
                        At::AfterCr
                    } else {
                        At::LineStart
                    };
                    pos = i + 1;
                }
            }
        }
        while pos < len {
            let b = chunk[pos];
            if b == b'\n' || b == b'\r' {
                if b == b'\n' && self.at == At::AfterCr {
                    // The `\n` of a `\r\n` line ending.
                    self.at = At::LineStart;
                    pos += 1;
                    continue;
                }
                if b == b'\n' && self.at == At::AfterBlankCr {
                    // The `\n` of a `\r\n` blank line split from its `\r`.
                    self.at = At::LineStart;
                    pos += 1;
                    scan.last_boundary = pos;
                    continue;
                }
                // An empty line: the event ends here (with its `\n` when the
                // empty line is a `\r\n` we can already see).
                pos += 1;
                self.at = At::LineStart;
                if b == b'\r' {
                    if pos < len && chunk[pos] == b'\n' {
                        pos += 1;
                    } else {
                        self.at = At::AfterBlankCr;
                    }
                }
                self.dispatch(&mut scan, pos);
                continue;
            }
            match memchr2(b'\n', b'\r', &chunk[pos..]) {
                Some(i) => {
                    self.flags |= classify(&chunk[pos..pos + i], true);
                    pos += i;
                    self.at = if chunk[pos] == b'\r' {
                        At::AfterCr
                    } else {
                        At::LineStart
                    };
                    pos += 1;
                }
                None => {
                    self.prefix_len = 0;
                    self.overflow = false;
                    self.carry(&chunk[pos..]);
                    self.at = At::InLine;
                    break;
                }
            }
        }
        scan
    }

    /// The stream has ended: whether the unfinished event (if any) carried a
    /// terminal marker.
    pub(crate) fn finish(&mut self) -> bool {
        if self.at == At::InLine {
            self.flags |= classify(&self.prefix[..self.prefix_len], !self.overflow);
            self.at = At::LineStart;
        }
        self.flags & TERMINAL != 0
    }

    fn carry(&mut self, bytes: &[u8]) {
        let room = PREFIX - self.prefix_len;
        let n = bytes.len().min(room);
        self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&bytes[..n]);
        self.prefix_len += n;
        if bytes.len() > room {
            self.overflow = true;
        }
    }

    #[inline]
    fn dispatch(&mut self, scan: &mut Scan, end: usize) {
        let flags = std::mem::take(&mut self.flags);
        scan.last_boundary = end;
        if flags & HAS_LINE != 0 {
            scan.events += 1;
            if flags & HAS_DATA != 0 && scan.first_data_end == 0 {
                scan.first_data_end = end;
                scan.first_data_flags = flags;
            }
            if flags & TERMINAL != 0 {
                self.terminated = true;
            }
        }
    }
}

/// Flags of one line, from its first bytes. `complete` says whether `line`
/// is the whole line (event names must match exactly).
#[inline(always)]
fn classify(line: &[u8], complete: bool) -> u8 {
    match line.first() {
        Some(b'd') => match field_value(line, b"data") {
            Some(value) => HAS_LINE | HAS_DATA | classify_data(value),
            None => HAS_LINE,
        },
        Some(b'e') => match field_value(line, b"event") {
            Some(value) if complete => HAS_LINE | classify_name(value),
            _ => HAS_LINE,
        },
        _ => HAS_LINE,
    }
}

/// The value of field `name` on `line`, without the one optional space.
#[inline]
fn field_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?;
    if rest.is_empty() {
        return Some(rest);
    }
    let value = rest.strip_prefix(b":")?;
    Some(value.strip_prefix(b" ").unwrap_or(value))
}

#[inline]
fn classify_data(value: &[u8]) -> u8 {
    let object = match value {
        [b'[', ..] => {
            return if value.starts_with(b"[DONE]") {
                TERMINAL
            } else {
                0
            };
        }
        // The hot path: a chunk whose first key starts with neither `e`
        // (`error`) nor `t` (`type`), like every `{"id":…` chat chunk.
        [b'{', b'"', first, ..] if *first != b'e' && *first != b't' => return 0,
        [b'{', object @ ..] => object,
        _ => return 0,
    };
    match first_member(object) {
        Some((b"error", value)) if !value.starts_with(b"null") => ERROR | TERMINAL,
        Some((b"type", value)) => match json_string(value) {
            Some(name) => classify_name(name),
            None => 0,
        },
        _ => 0,
    }
}

fn classify_name(name: &[u8]) -> u8 {
    match name {
        b"error" => ERROR | TERMINAL,
        b"message_stop" | b"response.completed" | b"response.failed" | b"response.incomplete" => {
            TERMINAL
        }
        _ => 0,
    }
}

fn skip_ws(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(s.len());
    &s[n..]
}

/// The first key of a JSON object (after its `{`) and what follows its colon.
fn first_member(object: &[u8]) -> Option<(&[u8], &[u8])> {
    let s = skip_ws(object);
    let key = json_string(s)?;
    let rest = skip_ws(&s[key.len() + 2..]);
    let rest = rest.strip_prefix(b":")?;
    Some((key, skip_ws(rest)))
}

/// The content of a short JSON string without escapes at the start of `s`.
/// Every key and name the markers use is short, so longer strings are `None`
/// (and a plain loop beats a SIMD search at these lengths).
fn json_string(s: &[u8]) -> Option<&[u8]> {
    let body = s.strip_prefix(b"\"")?;
    for (i, &b) in body.iter().take(32).enumerate() {
        match b {
            b'"' => return Some(&body[..i]),
            b'\\' => return None,
            _ => {}
        }
    }
    None
}

/// One dispatched event, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event<'a> {
    /// The `event:` field, if any.
    pub(crate) name: Option<Cow<'a, str>>,
    /// The `data:` lines joined by `\n`.
    pub(crate) data: Cow<'a, [u8]>,
}

/// The last event with data in `region`, a run of complete events. Used once
/// per stream, on the first event, so it favours clarity over speed.
pub(crate) fn last_event(region: &[u8]) -> Option<Event<'_>> {
    let mut last = None;
    let mut name: Option<&[u8]> = None;
    let mut data: Vec<&[u8]> = Vec::new();
    let mut saw_data = false;
    for line in lines(region) {
        if line.is_empty() {
            if saw_data {
                last = Some((name, std::mem::take(&mut data)));
            }
            name = None;
            data.clear();
            saw_data = false;
            continue;
        }
        if line.first() == Some(&b':') {
            continue;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &line[line.len()..]),
        };
        match field {
            b"data" => {
                saw_data = true;
                data.push(value);
            }
            b"event" => name = Some(value),
            _ => {}
        }
    }
    let (name, data) = last?;
    let data = match data.as_slice() {
        [one] => Cow::Borrowed(*one),
        many => Cow::Owned(many.join(&b'\n')),
    };
    Some(Event {
        name: name.map(String::from_utf8_lossy),
        data,
    })
}

/// Lines of `region`, split at `\n`, `\r\n` and `\r`; a final line without
/// an ending is yielded too.
fn lines(region: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = region;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match memchr2(b'\n', b'\r', rest) {
            Some(i) => {
                let line = &rest[..i];
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
                Some(line)
            }
            None => {
                let line = rest;
                rest = &rest[rest.len()..];
                Some(line)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs `stream` through a framer in the given pieces; returns the
    /// absolute event boundaries, event count and the terminated flag.
    fn run(pieces: &[&[u8]]) -> (Vec<usize>, u32, bool) {
        let mut framer = Framer::default();
        let mut base = 0;
        let mut bounds = Vec::new();
        let mut events = 0;
        for piece in pieces {
            let scan = framer.scan(piece);
            if scan.last_boundary > 0 {
                bounds.push(base + scan.last_boundary);
            }
            events += scan.events;
            base += piece.len();
        }
        (bounds, events, framer.terminated())
    }

    #[test]
    fn markers_of_each_protocol() {
        for (stream, terminal) in [
            (&b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n"[..], true),
            (b"data:[DONE]\n\n", true),
            (b"data: {\"choices\":[]}\n\n", false),
            (
                b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
                true,
            ),
            (b"data: {\"type\": \"message_stop\"}\n\n", true),
            (b"event: message_stop_soon\ndata: {}\n\n", false),
            (
                b"event: response.completed\r\ndata: {\"type\":\"response.completed\"}\r\n\r\n",
                true,
            ),
            (b"data: {\"type\":\"response.failed\"}\r\r", true),
            (b"data: {\"error\":{\"message\":\"x\"}}\n\n", true),
            (b"data: {\"error\":null}\n\n", false),
            (b"event: error\ndata: {}\n\n", true),
            // Content that merely mentions a marker is not one.
            (
                b"data: {\"choices\":[{\"delta\":{\"content\":\"data: [DONE]\"}}]}\n\n",
                false,
            ),
            (b": data: [DONE]\n\n", false),
            // A marker without the blank line has not been dispatched.
            (b"data: [DONE]\n", false),
        ] {
            assert_eq!(
                run(&[stream]).2,
                terminal,
                "{:?}",
                String::from_utf8_lossy(stream)
            );
        }
    }

    #[test]
    fn boundaries_for_every_line_ending() {
        assert_eq!(run(&[b"data: a\n\ndata: b\n\n"]).0, vec![18]);
        assert_eq!(run(&[b"data: a\r\n\r\n"]), (vec![11], 1, false));
        assert_eq!(run(&[b"data: a\r\r"]), (vec![9], 1, false));
        assert_eq!(run(&[b"data: a\r", b"\r", b"\n"]), (vec![9, 10], 1, false));
        assert_eq!(run(&[b"data: a\r\n", b"\r", b"\n"]).0, vec![10, 11]);
        // The `\n` after a `\r` blank line seen in a later frame is no event.
        assert_eq!(run(&[b"data: a\r\r", b"\ndata: b\n\n"]).1, 2);
        // Extra blank lines are boundaries but not events.
        assert_eq!(run(&[b"\n\n\n"]), (vec![3], 0, false));
        assert_eq!(run(&[b": ping\n\n"]), (vec![8], 1, false));
    }

    #[test]
    fn finish_sees_an_unterminated_marker() {
        let mut framer = Framer::default();
        framer.scan(b"data: [DO");
        framer.scan(b"NE]");
        assert!(framer.finish());
        let mut framer = Framer::default();
        framer.scan(b"data: {\"choices\"");
        assert!(!framer.finish());
    }

    #[test]
    fn long_lines_are_bounded() {
        let mut line = b"event: ".to_vec();
        line.extend(std::iter::repeat_n(b'x', 500));
        line.extend_from_slice(b"\ndata: {}\n\n");
        let (a, b) = line.split_at(10);
        assert_eq!(run(&[a, b]), (vec![line.len()], 1, false));
    }

    #[test]
    fn last_event_joins_data_lines() {
        let region = b": comment\n\nevent: error\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n";
        let event = last_event(region).unwrap();
        assert_eq!(event.name.as_deref(), Some("error"));
        assert_eq!(&event.data[..], b"{\"a\":\n1}");
        assert_eq!(last_event(b": only a comment\n\n"), None);
        let event = last_event(b"data\n\n").unwrap();
        assert_eq!((event.name, &event.data[..]), (None, &b""[..]));
    }

    fn event_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            "[a-z \\[\\]{}\":,]{0,40}".prop_map(|s| format!("data: {s}")),
            Just("data: {\"choices\":[{\"delta\":{\"content\":\"[DONE]\"}}]}".to_owned()),
            Just(": keep-alive".to_owned()),
            Just("event: content_block_delta\ndata: {\"type\":\"content_block_delta\"}".to_owned()),
        ]
        .prop_map(String::into_bytes)
    }

    fn terminal_strategy() -> impl Strategy<Value = Option<Vec<u8>>> {
        prop_oneof![
            Just(None),
            Just(Some(b"data: [DONE]".to_vec())),
            Just(Some(
                b"event: message_stop\ndata: {\"type\":\"message_stop\"}".to_vec()
            )),
            Just(Some(
                b"event: response.completed\ndata: {\"type\":\"response.completed\"}".to_vec()
            )),
            Just(Some(b"data: {\"error\":{\"message\":\"boom\"}}".to_vec())),
        ]
    }

    fn join(events: &[Vec<u8>], eol: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for e in events {
            let text = String::from_utf8_lossy(e).replace('\n', eol);
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(eol.as_bytes());
            out.extend_from_slice(eol.as_bytes());
        }
        out
    }

    proptest! {
        /// Every split point of a stream gives the same boundaries, event
        /// count and terminal verdict as the unsplit stream.
        #[test]
        fn every_split_point_agrees(
            mut events in proptest::collection::vec(event_strategy(), 0..6),
            terminal in terminal_strategy(),
            eol in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
        ) {
            let expected_terminal = terminal.is_some();
            events.extend(terminal);
            let stream = join(&events, eol);
            let (whole_bounds, whole_events, whole_terminal) = run(&[&stream]);
            prop_assert_eq!(whole_terminal, expected_terminal);
            prop_assert_eq!(whole_events as usize, events.len());
            prop_assert_eq!(whole_bounds.last().copied(), (!stream.is_empty()).then_some(stream.len()));
            for split in 0..=stream.len() {
                let (a, b) = stream.split_at(split);
                let (bounds, n, terminal) = run(&[a, b]);
                prop_assert_eq!(n, whole_events);
                prop_assert_eq!(terminal, whole_terminal, "split at {}", split);
                prop_assert_eq!(bounds.last().copied(), whole_bounds.last().copied(), "split at {}", split);
            }
        }

        /// Byte-at-a-time delivery agrees too.
        #[test]
        fn byte_at_a_time_agrees(
            mut events in proptest::collection::vec(event_strategy(), 0..4),
            terminal in terminal_strategy(),
        ) {
            events.extend(terminal.clone());
            let stream = join(&events, "\n");
            let pieces: Vec<&[u8]> = stream.chunks(1).collect();
            let (_, n, t) = run(&pieces);
            prop_assert_eq!(n as usize, events.len());
            prop_assert_eq!(t, terminal.is_some());
        }

        /// Arbitrary bytes never panic the framer.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), split in 0usize..300) {
            let split = split.min(bytes.len());
            let (a, b) = bytes.split_at(split);
            let mut framer = Framer::default();
            let s1 = framer.scan(a);
            let s2 = framer.scan(b);
            framer.finish();
            prop_assert!(s1.last_boundary <= a.len());
            prop_assert!(s2.last_boundary <= b.len());
            let _ = last_event(&bytes);
        }
    }
}
