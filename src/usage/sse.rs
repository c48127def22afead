//! The SSE half of [`UsageScanner`](super::UsageScanner): what each event
//! says about usage. The events come from the crate's one SSE framer
//! ([`crate::sse`]), fed by the scanner itself or, on the server, by the
//! stream layer's body that frames them anyway.

use bytes::Bytes;

use super::json::{self, USAGE_KEY};
use super::keys::{DELTA_KEY, Keys};
use super::parse;
use super::report::RawUsage;
use super::scan::Found;
use crate::json::Cursor;
use crate::sse::{Dispatch, Event, Fed, Framer};

/// Largest unfinished SSE event held back while it arrives over several
/// frames. A larger one (a base64 image, say) is not held and not read: the
/// scanner resumes at the next event.
pub(crate) const EVENT_LIMIT: usize = 1024 * 1024;

/// A scanner's own framing of the stream, and whether usage-only chunks are
/// cut.
pub(crate) struct Sse {
    pub(super) framer: Framer,
    pub(super) strip: bool,
}

impl Default for Sse {
    fn default() -> Self {
        Sse {
            framer: Framer::new(EVENT_LIMIT),
            strip: false,
        }
    }
}

impl Sse {
    /// Reads the events `chunk` completes.
    pub(super) fn scan(&mut self, chunk: &Bytes, found: &mut Found) {
        let strip = self.strip;
        let mut read = |event: &Event<'_>| read(event, strip, found);
        if self.framer.feed_one(chunk, &mut read).is_none() {
            self.framer.feed_frame(chunk, &mut read);
        }
    }

    /// As [`scan`](Self::scan), and what of `chunk` is released (whole
    /// events, less those cut).
    pub(super) fn feed(&mut self, chunk: &Bytes, found: &mut Found) -> Fed {
        let strip = self.strip;
        self.framer
            .feed(chunk, &mut |event: &Event<'_>| read(event, strip, found))
    }

    /// The end: an unfinished event is read all the same. Returns its bytes
    /// unless they were cut.
    pub(super) fn finish(&mut self, found: &mut Found) -> Option<Bytes> {
        let strip = self.strip;
        self.framer
            .finish(&mut |event: &Event<'_>| read(event, strip, found))
    }
}

/// Reads one event: its generated text and usage go to `found`. With
/// `strip`, a usage-only chunk (`choices: []` with usage) is cut.
pub(crate) fn read(event: &Event<'_>, strip: bool, found: &mut Found) -> Dispatch {
    if !event.has_data() || event.is_done() || event.is_partial() {
        return Dispatch::Keep;
    }
    let data = event.data;
    let keys = Keys::get();
    // Every `"delta"`, searched from past the value of the one before.
    let mut from = 0;
    while let Some(k) = data.get(from..).and_then(|rest| keys.delta(rest)) {
        let (chars, end) = delta_text(data, from + k);
        found.content_chars += chars;
        from = end;
    }
    // Every chunk of an OpenAI stream with usage on ends with a null usage:
    // that one needs no search.
    let named_content = event
        .name
        .is_some_and(|name| cannot_hold_usage(name.trim_ascii()));
    if named_content {
        return Dispatch::Keep;
    }
    if data.ends_with(b"\"usage\":null}") {
        // Stripping means the client did not ask for usage: it gets the
        // chunk as OpenAI sends it then, without the null.
        return if strip && data.ends_with(b",\"usage\":null}") {
            Dispatch::CutNullUsage
        } else {
            Dispatch::Keep
        };
    }
    let mut from = 0;
    loop {
        let Some(k) = data.get(from..).and_then(|rest| keys.usage(rest)) else {
            return Dispatch::Keep;
        };
        if holds_object(data, from + k) {
            break;
        }
        from += k + USAGE_KEY.len();
    }
    // The few events that can hold usage are parsed; nothing else is.
    let Some(event) = parse::event(data) else {
        return Dispatch::Keep;
    };
    if event.error {
        return Dispatch::Keep;
    }
    let mut cut = false;
    if let Some(usage) = event.usage.filter(RawUsage::has_counts) {
        // OpenAI's usage chunk, Anthropic's message_delta.
        found.tally.merge(&usage, true);
        cut = strip && event.choices == Some(true);
    }
    if let Some(usage) = event.message.filter(RawUsage::has_counts) {
        // Anthropic's message_start: the prompt side only.
        found.tally.merge(&usage, false);
    }
    if let Some(usage) = event.response.filter(RawUsage::has_counts) {
        // OpenAI Responses: response.completed (or .incomplete, .failed).
        found.tally.merge(&usage, true);
    }
    if cut { Dispatch::Cut } else { Dispatch::Keep }
}

/// The generated text under the `"delta"` key at `k`: a string (OpenAI
/// Responses) or an object (chat chunks, Anthropic deltas). Returns its
/// characters and the index past the value (or where it stopped reading).
///
/// The two objects that make up nearly every stream, OpenAI's
/// `{"content":"…"}` and Anthropic's `{"type": "text_delta", "text": "…"}`,
/// are matched whole; any other value is walked.
fn delta_text(data: &[u8], k: usize) -> (u64, usize) {
    const SHAPES: [&[u8]; 3] = [
        br#"{"content":""#,
        br#"{"type": "text_delta", "text": ""#,
        br#"{"type":"text_delta","text":""#,
    ];
    let mut c = Cursor::starting_at(data, k + DELTA_KEY.len());
    if c.peek() != Some(b':') {
        return (0, c.at());
    }
    c.bump();
    c.peek();
    let at = c.at();
    if let Some(shape) = SHAPES
        .iter()
        .find(|s| data.get(at..).is_some_and(|d| d.starts_with(s)))
    {
        let mut fast = Cursor::starting_at(data, at + shape.len());
        if let Some(s) = fast.string()
            && fast.literal(b"}").is_some()
        {
            return (s.chars, fast.at());
        }
    }
    (json::count_text(&mut c, true), c.at())
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
    let mut c = Cursor::starting_at(data, k + USAGE_KEY.len());
    if c.peek() != Some(b':') {
        return false;
    }
    c.bump();
    c.peek() == Some(b'{')
}
