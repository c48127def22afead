//! The SSE line machine behind [`UsageScanner::sse`](super::UsageScanner::sse).

use std::ops::Range;

use super::json::{self, USAGE_KEY};
use super::keys::{DELTA_KEY, Keys};
use super::parse;
use super::report::RawUsage;
use super::scan::Found;

/// Longest SSE line kept while it arrives over several frames. A longer line
/// (a base64 image, say) is skipped, not buffered: the scanner resumes at the
/// next line.
pub(crate) const LINE_LIMIT: usize = 1024 * 1024;

/// The SSE line machine. Lines are handled as soon as they are complete;
/// only a line split across frames is copied (into `carry`).
#[derive(Default)]
pub(crate) struct Sse {
    pub(super) carry: Vec<u8>,
    /// Inside a line longer than [`LINE_LIMIT`]: drop bytes to its end.
    pub(super) skipping: bool,
    /// How lines end, decided at the first line break: `\n` or `\r\n`
    /// (every provider) lets the fast `memchr` find them; a bare `\r`
    /// (allowed by the SSE spec) needs `memchr2`.
    breaks: Breaks,
    /// The previous frame ended with `\r`: a `\n` opening this one belongs
    /// to the same line break (`memchr2` mode only).
    after_cr: bool,
    /// The event in progress cannot hold usage: it is named `error`, or it
    /// is one of the content events of Anthropic and OpenAI Responses.
    no_usage_event: bool,
    pub(super) strip: bool,
    /// The event in progress is a usage-only chunk to strip.
    strip_event: bool,
    /// Where the event in progress has the `,"usage":null` member OpenAI
    /// puts on every chunk once usage is asked for: cut with the chunk
    /// when stripping, since the client did not ask for usage.
    null_usage: Option<u64>,
    pub(super) pos: u64,
    pub(super) event_start: u64,
    pub(super) ranges: Vec<Range<u64>>,
    finished: bool,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Breaks {
    #[default]
    Unknown,
    Lf,
    Cr,
}

impl Sse {
    pub(super) fn feed(&mut self, chunk: &[u8], found: &mut Found) {
        if self.finished {
            return;
        }
        let base = self.pos;
        self.pos += chunk.len() as u64;
        let mut i = 0;
        if std::mem::take(&mut self.after_cr) && chunk.first() == Some(&b'\n') {
            i = 1;
            if self.event_start == base {
                self.event_start = base + 1;
            }
        }
        if !self.carry.is_empty() || self.skipping {
            let rest = &chunk[i..];
            let Some(j) = self.find_break(rest) else {
                self.extend_carry(rest);
                return;
            };
            self.extend_carry(&rest[..j]);
            let end = self.line_end(chunk, i + j);
            if !std::mem::take(&mut self.skipping) {
                let carry = std::mem::take(&mut self.carry);
                let brk = (end - (i + j)) as u64;
                self.line(&carry, base + end as u64, brk, found);
                self.carry = carry;
                self.carry.clear();
            }
            i = end;
        }
        if self.breaks == Breaks::Lf {
            // Every provider's streams: lines end at `\n` (a `\r` before it
            // is cut by `line`), and an event ends with a blank line.
            while let Some(j) = chunk
                .get(i..)
                .filter(|rest| !rest.is_empty())
                .and_then(|rest| memchr::memchr(b'\n', rest))
            {
                let end = i + j + 1;
                self.line(&chunk[i..end - 1], base + end as u64, 1, found);
                i = end;
                while chunk.get(i) == Some(&b'\n') {
                    i += 1;
                    self.line(b"", base + i as u64, 1, found);
                }
            }
        }
        while let Some(rest) = chunk.get(i..).filter(|r| !r.is_empty()) {
            match self.find_break(rest) {
                Some(j) => {
                    let end = self.line_end(chunk, i + j);
                    let brk = (end - (i + j)) as u64;
                    self.line(&rest[..j], base + end as u64, brk, found);
                    i = end;
                }
                None => {
                    self.extend_carry(rest);
                    break;
                }
            }
        }
    }

    fn find_break(&self, bytes: &[u8]) -> Option<usize> {
        if self.breaks == Breaks::Lf {
            memchr::memchr(b'\n', bytes)
        } else {
            memchr::memchr2(b'\n', b'\r', bytes)
        }
    }

    /// `at` is a line break in `chunk`; returns the index past it (`\r\n`
    /// is one).
    fn line_end(&mut self, chunk: &[u8], at: usize) -> usize {
        if chunk.get(at) != Some(&b'\r') {
            if self.breaks == Breaks::Unknown {
                self.breaks = Breaks::Lf;
            }
            return at + 1;
        }
        match chunk.get(at + 1) {
            Some(b'\n') => {
                if self.breaks == Breaks::Unknown {
                    self.breaks = Breaks::Lf;
                }
                at + 2
            }
            Some(_) => {
                self.breaks = Breaks::Cr;
                at + 1
            }
            None => {
                self.after_cr = true;
                at + 1
            }
        }
    }

    fn extend_carry(&mut self, bytes: &[u8]) {
        if self.skipping {
            return;
        }
        if self.carry.len() + bytes.len() > LINE_LIMIT {
            self.skipping = true;
            self.carry = Vec::new();
        } else {
            self.carry.extend_from_slice(bytes);
        }
    }

    /// One complete line; `end` is the stream offset past its line break,
    /// `brk` the break's length.
    fn line(&mut self, line: &[u8], end: u64, brk: u64, found: &mut Found) {
        // In `\n` mode a `\r\n` leaves its `\r` on the line.
        let cr = line.strip_suffix(b"\r");
        let content_end = end - brk - u64::from(cr.is_some());
        let line = cr.unwrap_or(line);
        match line.first() {
            None => {
                // A blank line dispatches the event.
                self.dispatch(end);
                self.no_usage_event = false;
                self.event_start = end;
            }
            Some(b'd') => {
                if let Some(value) = line.strip_prefix(b"data:") {
                    let value = value.strip_prefix(b" ").unwrap_or(value);
                    self.data(value, content_end, found);
                }
            }
            Some(b'e') => {
                if let Some(name) = line.strip_prefix(b"event:") {
                    self.no_usage_event = cannot_hold_usage(name.trim_ascii());
                }
            }
            _ => {}
        }
    }

    /// The `data` of a line ending at stream offset `end`.
    fn data(&mut self, data: &[u8], end: u64, found: &mut Found) {
        if data == b"[DONE]" {
            return;
        }
        let keys = Keys::get();
        // Every `"delta"`, searched from past the value of the one before.
        let mut from = 0;
        while let Some(k) = data.get(from..).and_then(|rest| keys.delta(rest)) {
            let (chars, end) = delta_text(data, from + k);
            found.content_chars += chars;
            from = end;
        }
        // Every chunk of an OpenAI stream with usage on ends with a null
        // usage: that one needs no search.
        if self.no_usage_event || data.ends_with(b"\"usage\":null}") {
            if self.strip && data.ends_with(NULL_USAGE_END) {
                self.null_usage = Some(end - NULL_USAGE_END.len() as u64);
            }
            return;
        }
        let mut from = 0;
        loop {
            let Some(k) = data.get(from..).and_then(|rest| keys.usage(rest)) else {
                return;
            };
            if holds_object(data, from + k) {
                break;
            }
            from += k + USAGE_KEY.len();
        }
        // The few events that can hold usage are parsed; nothing else is.
        let Some(event) = parse::event(data) else {
            return;
        };
        if event.error {
            return;
        }
        if let Some(usage) = event.usage.filter(RawUsage::has_counts) {
            // OpenAI's usage chunk, Anthropic's message_delta.
            found.tally.merge(&usage, true);
            if self.strip && event.choices == Some(true) {
                self.strip_event = true;
            }
        }
        if let Some(usage) = event.message.filter(RawUsage::has_counts) {
            // Anthropic's message_start: the prompt side only.
            found.tally.merge(&usage, false);
        }
        if let Some(usage) = event.response.filter(RawUsage::has_counts) {
            // OpenAI Responses: response.completed (or .incomplete, .failed).
            found.tally.merge(&usage, true);
        }
    }

    pub(super) fn finish(&mut self, found: &mut Found) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let carry = std::mem::take(&mut self.carry);
        if !carry.is_empty() && !self.skipping {
            // A last line without a line break: read it all the same.
            self.line(&carry, self.pos, 0, found);
        }
        self.dispatch(self.pos);
        self.event_start = self.pos;
    }

    /// The event in progress ends at `end`: marks what to cut of it.
    fn dispatch(&mut self, end: u64) {
        let null_usage = self.null_usage.take();
        if std::mem::take(&mut self.strip_event) {
            self.ranges.push(self.event_start..end);
        } else if let Some(at) = null_usage {
            self.ranges.push(at..at + NULL_USAGE_END.len() as u64 - 1);
        }
    }
}

/// How a chunk ends when OpenAI adds `"usage": null` to it: the member
/// (cut when stripping) and the object's closing brace.
const NULL_USAGE_END: &[u8] = b",\"usage\":null}";

/// The generated text under the `"delta"` key at `k`: a string (OpenAI
/// Responses) or an object (chat chunks, Anthropic deltas). Returns its
/// characters and the index past the value (past the key, if it has none).
fn delta_text(data: &[u8], k: usize) -> (u64, usize) {
    let mut i = json::skip_ws(data, k + DELTA_KEY.len());
    if data.get(i) != Some(&b':') {
        return (0, i);
    }
    i = json::skip_ws(data, i + 1);
    match data.get(i) {
        Some(b'"') => {
            let (end, chars) = json::string_chars(data, i + 1);
            (chars, end + 1)
        }
        Some(b'{') => {
            let (chars, len) = count_delta_object(&data[i..]);
            (chars, i + len)
        }
        _ => (0, i),
    }
}

/// The text of a delta object (`b` starts at its `{`) and the index past
/// it. The two shapes that make up nearly every stream, OpenAI's
/// `{"content":"…"}` and Anthropic's `{"type": "text_delta", "text": "…"}`,
/// are read directly; any other goes through the generic walk.
fn count_delta_object(b: &[u8]) -> (u64, usize) {
    const SHAPES: [&[u8]; 3] = [
        br#"{"content":""#,
        br#"{"type": "text_delta", "text": ""#,
        br#"{"type":"text_delta","text":""#,
    ];
    for shape in SHAPES {
        if b.starts_with(shape) {
            let (end, n) = json::string_chars(b, shape.len());
            if b.get(end + 1) == Some(&b'}') {
                return (n, end + 2);
            }
            break;
        }
    }
    json::count_text(b, false)
}

/// Events named so carry no usage: errors, Anthropic's content events, and
/// the OpenAI Responses `*.delta` events.
fn cannot_hold_usage(name: &[u8]) -> bool {
    matches!(
        name,
        b"error"
            | b"ping"
            | b"content_block_delta"
            | b"content_block_start"
            | b"content_block_stop"
    ) || name.ends_with(b".delta")
}

/// Whether the `"usage"` key at `k` has an object for its value (not the
/// `"usage":null` of every chunk of an OpenAI stream with usage on).
fn holds_object(data: &[u8], k: usize) -> bool {
    let i = json::skip_ws(data, k + USAGE_KEY.len());
    data.get(i) == Some(&b':') && data.get(json::skip_ws(data, i + 1)) == Some(&b'{')
}
