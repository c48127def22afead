//! [`UsageScanner`]: the incremental scanner behind [`UsageBody`](super::UsageBody).

use std::fmt;
use std::ops::Range;
use std::sync::LazyLock;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap};
use memchr::memmem::Finder;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, de};

use super::json::{self, JsonScan, USAGE, USAGE_KEY};
use super::report::{BodyEnd, RawUsage, Tally, Usage, UsageReport};

/// Longest SSE line kept while it arrives over several frames. A longer line
/// (a base64 image, say) is skipped, not buffered: the scanner resumes at the
/// next line.
pub(crate) const LINE_LIMIT: usize = 1024 * 1024;

const DELTA_KEY: &[u8] = b"\"delta\"";
static DELTA: LazyLock<Finder<'static>> = LazyLock::new(|| json::json_finder(DELTA_KEY));

/// Finds token usage in a response body, frame by frame, without keeping the
/// body.
///
/// [`UsageBody`](super::UsageBody) drives one of these; it is public for
/// layers that see frames some other way (and for the benchmarks). Feed it
/// every data frame in order, call [`finish`](Self::finish) at the end, and
/// read [`reported`](Self::reported) or [`report`](Self::report).
///
/// ```
/// use bytes::Bytes;
/// use tollgate::usage::UsageScanner;
///
/// let mut scanner = UsageScanner::sse();
/// scanner.feed(&Bytes::from_static(
///     b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"choices\":[],\"usa",
/// ));
/// scanner.feed(&Bytes::from_static(
///     b"ge\":{\"prompt_tokens\":9,\"completion_tokens\":1,\"total_tokens\":10}}\n\ndata: [DONE]\n\n",
/// ));
/// scanner.finish();
/// assert_eq!(scanner.reported().map(|u| u.total_tokens), Some(10));
/// assert_eq!(scanner.content_chars(), 2);
/// ```
pub struct UsageScanner {
    format: Format,
    found: Found,
}

#[derive(Default)]
pub(crate) struct Found {
    pub(crate) tally: Tally,
    pub(crate) content_chars: u64,
}

enum Format {
    Sse(Sse),
    Json(JsonScan),
    Off,
}

impl UsageScanner {
    /// A scanner for a `text/event-stream` body.
    pub fn sse() -> Self {
        UsageScanner {
            format: Format::Sse(Sse::default()),
            found: Found::default(),
        }
    }

    /// A scanner for a non-streamed JSON body.
    pub fn json() -> Self {
        UsageScanner {
            format: Format::Json(JsonScan::default()),
            found: Found::default(),
        }
    }

    /// A scanner that looks at nothing (bodies that are neither SSE nor
    /// JSON): its report is always an estimate.
    pub fn off() -> Self {
        UsageScanner {
            format: Format::Off,
            found: Found::default(),
        }
    }

    /// The scanner for a response with these headers: `text/event-stream`
    /// → [`sse`](Self::sse); `application/json` or `*/*+json` →
    /// [`json`](Self::json); anything else, or no `content-type` →
    /// [`off`](Self::off).
    pub fn for_headers(headers: &HeaderMap) -> Self {
        let essence = headers.get(CONTENT_TYPE).map(|v| v.as_bytes()).map(|v| {
            v.split(|&b| b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii()
        });
        match essence {
            Some(e) if e.eq_ignore_ascii_case(b"text/event-stream") => Self::sse(),
            Some(e)
                if e.eq_ignore_ascii_case(b"application/json")
                    || (e.len() > 5 && e[e.len() - 5..].eq_ignore_ascii_case(b"+json")) =>
            {
                Self::json()
            }
            _ => Self::off(),
        }
    }

    /// Whether this scanner reads SSE.
    pub fn is_sse(&self) -> bool {
        matches!(self.format, Format::Sse(_))
    }

    /// Scans the next data frame.
    pub fn feed(&mut self, chunk: &Bytes) {
        match &mut self.format {
            Format::Sse(sse) => sse.feed(chunk, &mut self.found),
            Format::Json(scan) => scan.feed(chunk, &mut self.found),
            Format::Off => {}
        }
    }

    /// Ends the scan: a last SSE line without a line break is still read, and
    /// a JSON body without usage has its content counted. Idempotent.
    pub fn finish(&mut self) {
        match &mut self.format {
            Format::Sse(sse) => sse.finish(&mut self.found),
            Format::Json(scan) => scan.finish(&mut self.found),
            Format::Off => {}
        }
    }

    /// The usage the upstream reported in full, if it did.
    ///
    /// Only the opening half of a report (Anthropic's `message_start` without
    /// its `message_delta`) is not a full report.
    pub fn reported(&self) -> Option<Usage> {
        self.found.tally.complete.then(|| self.found.tally.usage())
    }

    /// Characters of generated text seen so far (for the estimate). For a
    /// JSON body they are only counted by [`finish`](Self::finish), and only
    /// when it reported no usage.
    pub fn content_chars(&self) -> u64 {
        self.found.content_chars
    }

    /// The report for a response with `status` that ended as `end`: the
    /// reported usage, else an estimate of `prompt_tokens_estimate` plus one
    /// token per 4 content characters (rounded up), all zero for a status
    /// ≥ 400.
    pub fn report(
        &self,
        status: http::StatusCode,
        prompt_tokens_estimate: u64,
        end: BodyEnd,
    ) -> UsageReport {
        self.found.tally.report(
            self.found.content_chars,
            prompt_tokens_estimate,
            status,
            end,
        )
    }

    /// Marks usage-only chunks (`choices: []` + `usage`) for removal.
    pub(crate) fn strip_usage_chunks(&mut self) {
        if let Format::Sse(sse) = &mut self.format {
            sse.strip = true;
        }
    }

    /// For stripping: bytes fed so far, the stream offset where the event in
    /// progress begins (everything before it is complete events), and the
    /// ranges of the complete usage-only events not yet taken.
    pub(crate) fn sse_cut(&mut self) -> Option<(u64, u64, &mut Vec<Range<u64>>)> {
        match &mut self.format {
            Format::Sse(sse) => Some((sse.pos, sse.event_start, &mut sse.ranges)),
            _ => None,
        }
    }
}

impl fmt::Debug for UsageScanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = match self.format {
            Format::Sse(_) => "sse",
            Format::Json(_) => "json",
            Format::Off => "off",
        };
        f.debug_struct("UsageScanner")
            .field("format", &format)
            .field("reported", &self.reported())
            .field("content_chars", &self.found.content_chars)
            .finish()
    }
}

/// The SSE line machine. Lines are handled as soon as they are complete;
/// only a line split across frames is copied (into `carry`).
#[derive(Default)]
struct Sse {
    carry: Vec<u8>,
    /// Inside a line longer than [`LINE_LIMIT`]: drop bytes to its end.
    skipping: bool,
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
    strip: bool,
    /// The event in progress is a usage-only chunk to strip.
    strip_event: bool,
    pos: u64,
    event_start: u64,
    ranges: Vec<Range<u64>>,
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
    fn feed(&mut self, chunk: &[u8], found: &mut Found) {
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
                self.line(&carry, base + end as u64, found);
                self.carry = carry;
                self.carry.clear();
            }
            i = end;
        }
        while let Some(rest) = chunk.get(i..).filter(|r| !r.is_empty()) {
            match self.find_break(rest) {
                Some(j) => {
                    let end = self.line_end(chunk, i + j);
                    self.line(&rest[..j], base + end as u64, found);
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

    /// One complete line; `end` is the stream offset past its line break.
    fn line(&mut self, line: &[u8], end: u64, found: &mut Found) {
        // In `\n` mode a `\r\n` leaves its `\r` on the line.
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line.first() {
            None => {
                // A blank line dispatches the event.
                if std::mem::take(&mut self.strip_event) {
                    self.ranges.push(self.event_start..end);
                }
                self.no_usage_event = false;
                self.event_start = end;
            }
            Some(b'd') => {
                if let Some(value) = line.strip_prefix(b"data:") {
                    let value = value.strip_prefix(b" ").unwrap_or(value);
                    self.data(value, found);
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

    fn data(&mut self, data: &[u8], found: &mut Found) {
        if data == b"[DONE]" {
            return;
        }
        found.content_chars += count_deltas(data);
        // Every chunk of an OpenAI stream with usage on ends with a null
        // usage: that one needs no search.
        if self.no_usage_event || data.ends_with(b"\"usage\":null}") || !has_usage_object(data) {
            return;
        }
        // The few events that can hold usage are parsed; nothing else is.
        let Ok(event) = serde_json::from_slice::<Event>(data) else {
            return;
        };
        if event.error.is_some() {
            return;
        }
        if let Some(usage) = event.usage.filter(RawUsage::has_counts) {
            // OpenAI's usage chunk, Anthropic's message_delta.
            found.tally.merge(&usage, true);
            if self.strip && event.choices.is_some_and(|c| c.is_empty()) {
                self.strip_event = true;
            }
        }
        if let Some(usage) = event.message.and_then(|m| m.0).filter(RawUsage::has_counts) {
            // Anthropic's message_start: the prompt side only.
            found.tally.merge(&usage, false);
        }
        if let Some(usage) = event
            .response
            .and_then(|r| r.0)
            .filter(RawUsage::has_counts)
        {
            // OpenAI Responses: response.completed (or .incomplete, .failed).
            found.tally.merge(&usage, true);
        }
    }

    fn finish(&mut self, found: &mut Found) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let carry = std::mem::take(&mut self.carry);
        if !carry.is_empty() && !self.skipping {
            // A last line without a line break: read it all the same.
            self.line(&carry, self.pos, found);
        }
        if std::mem::take(&mut self.strip_event) {
            self.ranges.push(self.event_start..self.pos);
        }
        self.event_start = self.pos;
    }
}

/// Counts the generated text in an event: every `"delta"` value, a string
/// (OpenAI Responses) or an object (chat chunks, Anthropic deltas).
fn count_deltas(data: &[u8]) -> u64 {
    let mut chars = 0;
    let mut from = 0;
    while let Some(k) = data.get(from..).and_then(|rest| DELTA.find(rest)) {
        let mut i = json::skip_ws(data, from + k + DELTA_KEY.len());
        if data.get(i) == Some(&b':') {
            i = json::skip_ws(data, i + 1);
            match data.get(i) {
                Some(b'"') => {
                    let (end, n) = json::string_chars(data, i + 1);
                    chars += n;
                    i = end + 1;
                }
                Some(b'{') => {
                    let (n, len) = count_delta_object(&data[i..]);
                    chars += n;
                    i += len;
                }
                _ => {}
            }
        }
        from = i;
    }
    chars
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

/// Whether `data` has a `"usage"` key whose value is an object (not the
/// `"usage":null` of every chunk of an OpenAI stream with usage on).
fn has_usage_object(data: &[u8]) -> bool {
    USAGE.find_iter(data).any(|k| {
        let i = json::skip_ws(data, k + USAGE_KEY.len());
        data.get(i) == Some(&b':') && data.get(json::skip_ws(data, i + 1)) == Some(&b'{')
    })
}

/// The parts of an event that can hold usage.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Event {
    usage: Option<RawUsage>,
    message: Option<Holder>,
    response: Option<Holder>,
    choices: Option<Vec<IgnoredAny>>,
    error: Option<IgnoredAny>,
}

/// An object's `usage` member; any other value holds none.
struct Holder(Option<RawUsage>);

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum HolderKey {
    Usage,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for Holder {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Holder, D::Error> {
        d.deserialize_any(HolderVisitor)
    }
}

struct HolderVisitor;

impl<'de> Visitor<'de> for HolderVisitor {
    type Value = Holder;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Holder, A::Error> {
        let mut usage = None;
        while let Some(key) = map.next_key::<HolderKey>()? {
            match key {
                HolderKey::Usage => usage = map.next_value::<Option<RawUsage>>()?,
                HolderKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Holder(usage))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Holder, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Holder(None))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Holder, E> {
        Ok(Holder(None))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Holder, E> {
        Ok(Holder(None))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Holder, E> {
        Ok(Holder(None))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Holder, E> {
        Ok(Holder(None))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Holder, E> {
        Ok(Holder(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Holder, E> {
        Ok(Holder(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> UsageScanner {
        let mut s = UsageScanner::sse();
        for c in chunks {
            s.feed(&Bytes::copy_from_slice(c));
        }
        s.finish();
        s
    }

    #[test]
    fn content_type_picks_the_scanner() {
        let headers = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, ct.parse().unwrap());
            h
        };
        assert!(UsageScanner::for_headers(&headers("text/event-stream; charset=utf-8")).is_sse());
        assert!(matches!(
            UsageScanner::for_headers(&headers("Application/JSON")).format,
            Format::Json(_)
        ));
        assert!(matches!(
            UsageScanner::for_headers(&headers("application/problem+json")).format,
            Format::Json(_)
        ));
        assert!(matches!(
            UsageScanner::for_headers(&headers("text/plain")).format,
            Format::Off
        ));
        assert!(matches!(
            UsageScanner::for_headers(&HeaderMap::new()).format,
            Format::Off
        ));
    }

    #[test]
    fn null_usage_and_done_are_not_usage() {
        let s = scan(&[
            b"data: {\"choices\":[{\"delta\":{\"content\":\"abcd\"}}],\"usage\":null}\n\n",
            b"data: [DONE]\n\n",
        ]);
        assert_eq!(s.reported(), None);
        assert_eq!(s.content_chars(), 4);
    }

    #[test]
    fn error_events_are_not_usage() {
        let s = scan(&[
            b"event: error\ndata: {\"usage\":{\"prompt_tokens\":1}}\n\n",
            b"data: {\"error\":{\"message\":\"x\"},\"usage\":{\"prompt_tokens\":1}}\n\n",
        ]);
        assert_eq!(s.reported(), None);
    }

    #[test]
    fn crlf_and_cr_line_breaks() {
        for sep in [&b"\r\n"[..], b"\r", b"\n"] {
            let line = |s: &str| [s.as_bytes(), sep].concat();
            let stream = [
                line("event: message_delta"),
                line("data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}"),
                line(""),
            ]
            .concat();
            for split in 0..=stream.len() {
                let s = scan(&[&stream[..split], &stream[split..]]);
                assert_eq!(
                    s.reported().map(|u| u.completion_tokens),
                    Some(7),
                    "{split}"
                );
            }
        }
    }

    #[test]
    fn overlong_lines_are_skipped_not_kept() {
        let mut s = UsageScanner::sse();
        s.feed(&Bytes::from_static(b"data: {\"delta\":\""));
        let big = Bytes::from(vec![b'a'; LINE_LIMIT]);
        s.feed(&big);
        s.feed(&big);
        if let Format::Sse(sse) = &s.format {
            assert!(sse.skipping && sse.carry.capacity() == 0);
        }
        s.feed(&Bytes::from_static(
            b"\"}\n\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n",
        ));
        s.finish();
        assert_eq!(s.reported().map(|u| u.total_tokens), Some(3));
    }

    #[test]
    fn a_last_line_without_a_break_is_read() {
        let s = scan(&[b"data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}"]);
        assert_eq!(s.reported().map(|u| u.total_tokens), Some(3));
    }

    #[test]
    fn strip_ranges_cover_the_usage_event() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\ndata: [DONE]\n\n";
        let mut s = UsageScanner::sse();
        s.strip_usage_chunks();
        s.feed(&Bytes::from_static(stream));
        let (pos, cut, ranges) = s.sse_cut().unwrap();
        assert_eq!((pos, cut), (stream.len() as u64, stream.len() as u64));
        let r = ranges[0].clone();
        assert_eq!(
            &stream[r.start as usize..r.end as usize],
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n"
        );
    }
}
