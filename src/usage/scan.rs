//! [`UsageScanner`]: the incremental scanner behind [`UsageBody`](super::UsageBody).

use std::fmt;

use bytes::Bytes;
use http::header::HeaderMap;

use super::json::JsonScan;
use super::report::{BodyEnd, Tally, Usage, UsageReport};
use super::sse::{self, Sse};
use crate::sse::{Dispatch, Event};

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

impl Format {
    fn name(&self) -> &'static str {
        match self {
            Format::Sse(_) => "sse",
            Format::Json(_) => "json",
            Format::Off => "off",
        }
    }
}

impl UsageScanner {
    /// A scanner for a `text/event-stream` body.
    pub fn sse() -> Self {
        UsageScanner::with(Format::Sse(Sse::default()))
    }

    /// A scanner for a non-streamed JSON body.
    pub fn json() -> Self {
        UsageScanner::with(Format::Json(JsonScan::default()))
    }

    /// A scanner that looks at nothing (bodies that are neither SSE nor
    /// JSON): its report is always an estimate.
    pub fn off() -> Self {
        UsageScanner::with(Format::Off)
    }

    fn with(format: Format) -> Self {
        UsageScanner {
            format,
            found: Found::default(),
        }
    }

    /// The scanner for a response with these headers: `text/event-stream`
    /// → [`sse`](Self::sse); `application/json` or `*/*+json` →
    /// [`json`](Self::json); anything else, or no `content-type` →
    /// [`off`](Self::off).
    pub fn for_headers(headers: &HeaderMap) -> Self {
        match Kind::of(headers) {
            Kind::Sse => Self::sse(),
            Kind::Json => Self::json(),
            Kind::Other => Self::off(),
        }
    }

    /// Whether this scanner reads SSE.
    pub fn is_sse(&self) -> bool {
        matches!(self.format, Format::Sse(_))
    }

    /// Scans the next data frame.
    pub fn feed(&mut self, chunk: &Bytes) {
        match &mut self.format {
            Format::Sse(sse) => sse.scan(chunk, &mut self.found),
            Format::Json(scan) => scan.feed(chunk, &mut self.found),
            Format::Off => {}
        }
    }

    /// Ends the scan: a last SSE event without its blank line is still
    /// read, and a JSON body without usage has its content counted.
    /// Idempotent.
    pub fn finish(&mut self) {
        match &mut self.format {
            Format::Sse(sse) => {
                sse.finish(&mut self.found);
            }
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

    /// Scans `chunk` and returns what of it the client gets now: with
    /// stripping, whole SSE events only, without the usage-only chunks (an
    /// unfinished event is held back until it ends); otherwise all of it.
    pub(crate) fn forward(&mut self, chunk: Bytes) -> Option<Bytes> {
        match &mut self.format {
            Format::Sse(sse) if sse.strip => {
                sse.feed(&chunk, &mut self.found).release(chunk).into_one()
            }
            _ => {
                self.feed(&chunk);
                Some(chunk).filter(|c| !c.is_empty())
            }
        }
    }

    /// Ends the scan ([`finish`](Self::finish)) and returns the bytes
    /// [`forward`](Self::forward) still held back, unless they were cut.
    pub(crate) fn finish_forward(&mut self) -> Option<Bytes> {
        match &mut self.format {
            Format::Sse(sse) if sse.strip => sse.finish(&mut self.found),
            _ => {
                self.finish();
                None
            }
        }
    }

    /// Bytes [`forward`](Self::forward) holds back.
    pub(crate) fn held_len(&self) -> usize {
        match &self.format {
            Format::Sse(sse) if sse.strip => sse.framer.held_len(),
            _ => 0,
        }
    }

    /// Reads one SSE event framed by someone else (the stream layer's body,
    /// which frames the stream anyway). `Cut` asks for a usage-only chunk
    /// to be left out, when stripping.
    pub(crate) fn read_event(&mut self, event: &Event<'_>) -> Dispatch {
        match &self.format {
            Format::Sse(own) => sse::read(event, own.strip, &mut self.found),
            _ => Dispatch::Keep,
        }
    }
}

/// What a response's `content-type` says its body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `text/event-stream`.
    Sse,
    /// `application/json` or `*/*+json`.
    Json,
    /// Anything else, or no `content-type`.
    Other,
}

impl Kind {
    pub(crate) fn of(headers: &HeaderMap) -> Kind {
        match crate::sse::media_type(headers) {
            Some(t) if t.eq_ignore_ascii_case(b"text/event-stream") => Kind::Sse,
            Some(t)
                if t.eq_ignore_ascii_case(b"application/json")
                    || t.len() > 5 && t[t.len() - 5..].eq_ignore_ascii_case(b"+json") =>
            {
                Kind::Json
            }
            _ => Kind::Other,
        }
    }
}

impl fmt::Debug for UsageScanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageScanner")
            .field("format", &self.format.name())
            .field("reported", &self.reported())
            .field("content_chars", &self.found.content_chars)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::sse::EVENT_LIMIT;
    use http::header::CONTENT_TYPE;

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
        for (content_type, format) in [
            (Some("text/event-stream; charset=utf-8"), "sse"),
            (Some("Application/JSON"), "json"),
            (Some("application/problem+json"), "json"),
            (Some("text/plain"), "off"),
            (None, "off"),
        ] {
            let headers: HeaderMap = content_type
                .map(|ct| (CONTENT_TYPE, ct.parse().unwrap()))
                .into_iter()
                .collect();
            let scanner = UsageScanner::for_headers(&headers);
            assert_eq!(scanner.format.name(), format, "{content_type:?}");
            assert_eq!(scanner.is_sse(), format == "sse");
        }
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
    fn overlong_events_are_skipped_not_kept() {
        let mut s = UsageScanner::sse();
        s.feed(&Bytes::from_static(b"data: {\"delta\":\""));
        let big = Bytes::from(vec![b'a'; EVENT_LIMIT]);
        s.feed(&big);
        s.feed(&big);
        if let Format::Sse(sse) = &s.format {
            assert!(sse.framer.overflowing() && sse.framer.held_len() == 0);
        }
        s.feed(&Bytes::from_static(
            b"\"}\n\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n",
        ));
        s.finish();
        assert_eq!(s.reported().map(|u| u.total_tokens), Some(3));
        assert_eq!(s.content_chars(), 0);
    }

    #[test]
    fn a_last_line_without_a_break_is_read() {
        let s = scan(&[b"data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}"]);
        assert_eq!(s.reported().map(|u| u.total_tokens), Some(3));
    }

    #[test]
    fn stripping_cuts_the_usage_event() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\ndata: [DONE]\n\n";
        let mut s = UsageScanner::sse();
        s.strip_usage_chunks();
        let out = s.forward(Bytes::from_static(stream)).unwrap();
        assert_eq!(
            &out[..],
            &b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: [DONE]\n\n"[..]
        );
        assert_eq!(s.held_len(), 0);
    }

    #[test]
    fn a_usage_object_over_several_data_lines_is_read() {
        for eol in ["\n", "\r\n", "\r"] {
            let stream = [
                "data: {\"choices\":[],",
                "data: \"usage\":{\"prompt_tokens\":9,",
                "data:  \"completion_tokens\":2,\"total_tokens\":11}}",
                "",
                "data: [DONE]",
                "",
                "",
            ]
            .join(eol);
            for split in 0..=stream.len() {
                let s = scan(&[&stream.as_bytes()[..split], &stream.as_bytes()[split..]]);
                assert_eq!(
                    s.reported().map(|u| u.total_tokens),
                    Some(11),
                    "{eol:?} split at {split}"
                );
            }
        }
    }
}
