//! The scanner of non-streamed JSON bodies, and the generated text of an
//! answer, counted with the crate's JSON cursor ([`crate::json::Cursor`]).

use bytes::Bytes;

use super::keys::Keys;
use super::parse::{self, Stop};
use super::report::{RawUsage, Tally};
use super::scan::Found;
use crate::json::Cursor;

pub(crate) const USAGE_KEY: &[u8] = b"\"usage\"";

/// Longest `usage` value kept while it arrives over several frames.
const CAPTURE_LIMIT: usize = 64 * 1024;
/// Largest JSON body kept to estimate its content when it reports no usage.
const HOLD_LIMIT: usize = 1024 * 1024;

/// Keys whose string values are generated text: chat `content`, Anthropic
/// `text`/`thinking`/`partial_json`, tool-call `arguments`, the reasoning
/// fields of OpenAI-compatible servers, and refusals.
pub(crate) fn is_counted(key: &[u8]) -> bool {
    matches!(
        key,
        b"content"
            | b"text"
            | b"arguments"
            | b"partial_json"
            | b"thinking"
            | b"reasoning_content"
            | b"reasoning"
            | b"refusal"
    )
}

/// The generated text in the value at `c` ([`Cursor::answer_text`]): the
/// value itself if `counted` and a string, else the strings under
/// [`is_counted`] keys. Malformed or cut input keeps what was counted
/// before it.
pub(crate) fn count_text(c: &mut Cursor<'_>, counted: bool) -> u64 {
    let mut chars = 0;
    let _ = c.answer_text(counted, is_counted, &mut chars);
    chars
}

/// Parses `"usage" : <value>` at the start of `buf`: [`Stop::Eof`] when the
/// value goes on past the end of `buf`, [`Stop::Invalid`] when this is not
/// a `usage` member (`"usage"` was a value, or not followed by JSON).
pub(crate) fn parse_member(buf: &[u8]) -> Result<Option<RawUsage>, Stop> {
    let mut c = Cursor::starting_at(buf, USAGE_KEY.len());
    match c.peek() {
        None => return Err(Stop::Eof),
        Some(b':') => c.bump(),
        Some(_) => return Err(Stop::Invalid),
    }
    if c.peek().is_none() {
        return Err(Stop::Eof);
    }
    parse::usage_value(buf, c.at())
}

/// Scanner state for a non-streamed JSON body.
///
/// Usage: every `"usage"` key is found with `memmem` as the frames pass, and
/// the object after it is parsed in place; the last one wins (OpenAI,
/// Anthropic and the OpenAI-compatible servers put the top-level `usage`
/// after the content). Only a `usage` object split across frames is copied,
/// up to [`CAPTURE_LIMIT`].
///
/// Estimate: until a usage is found, the body is kept, up to
/// [`HOLD_LIMIT`], and walked at the end only if none was. The first frame
/// (most answers have one) is kept by reference; later ones are copied, so
/// that the kept frames never pin more of the server's read buffers than
/// the bytes they hold.
#[derive(Default)]
pub(crate) struct JsonScan {
    /// The last bytes of the previous frame, for a key split across frames.
    seam: [u8; USAGE_KEY.len() - 1],
    seam_len: usize,
    capture: Vec<u8>,
    capturing: bool,
    held_first: Option<Bytes>,
    held_rest: Vec<u8>,
    overflow: bool,
    finished: bool,
}

impl JsonScan {
    pub(crate) fn feed(&mut self, chunk: &Bytes, found: &mut Found) {
        let b = &chunk[..];
        if b.is_empty() || self.finished {
            return;
        }
        // 1. A key split between the previous frame and this one.
        if self.seam_len > 0 {
            let mut joint = [0u8; 2 * (USAGE_KEY.len() - 1)];
            let m = b.len().min(USAGE_KEY.len() - 1);
            joint[..self.seam_len].copy_from_slice(&self.seam[..self.seam_len]);
            joint[self.seam_len..self.seam_len + m].copy_from_slice(&b[..m]);
            if let Some(p) = Keys::get().usage(&joint[..self.seam_len + m])
                && p < self.seam_len
            {
                self.capture.clear();
                self.capture.extend_from_slice(&joint[p..self.seam_len]);
                self.capturing = true;
            }
        }
        // 2. A usage value that began in an earlier frame.
        if self.capturing {
            let room = CAPTURE_LIMIT.saturating_sub(self.capture.len());
            let take = b.len().min(room);
            self.capture.extend_from_slice(&b[..take]);
            match parse_member(&self.capture) {
                Ok(usage) => {
                    record(usage, found);
                    self.stop_capture();
                }
                Err(Stop::Invalid) => self.stop_capture(),
                Err(Stop::Eof) if take < b.len() => self.stop_capture(),
                Err(Stop::Eof) => {}
            }
        }
        // 3. Keys inside this frame, parsed in place.
        let keys = Keys::get();
        let mut from = 0;
        while let Some(k) = b.get(from..).and_then(|hay| keys.usage(hay)) {
            let k = from + k;
            from = k + USAGE_KEY.len();
            let rest = &b[k..];
            match parse_member(rest) {
                Ok(usage) => record(usage, found),
                Err(Stop::Invalid) => {}
                Err(Stop::Eof) => {
                    self.capture.clear();
                    if rest.len() <= CAPTURE_LIMIT {
                        self.capture.extend_from_slice(rest);
                        self.capturing = true;
                    } else {
                        self.stop_capture();
                    }
                }
            }
        }
        self.keep_seam(b);
        self.hold(chunk, found);
    }

    fn stop_capture(&mut self) {
        self.capturing = false;
        self.capture = Vec::new();
    }

    fn keep_seam(&mut self, b: &[u8]) {
        let keep = USAGE_KEY.len() - 1;
        if b.len() >= keep {
            self.seam.copy_from_slice(&b[b.len() - keep..]);
            self.seam_len = keep;
        } else {
            let mut joint = [0u8; 2 * (USAGE_KEY.len() - 1)];
            joint[..self.seam_len].copy_from_slice(&self.seam[..self.seam_len]);
            joint[self.seam_len..self.seam_len + b.len()].copy_from_slice(b);
            let len = self.seam_len + b.len();
            let from = len.saturating_sub(keep);
            self.seam_len = len - from;
            self.seam[..self.seam_len].copy_from_slice(&joint[from..len]);
        }
    }

    fn hold(&mut self, chunk: &Bytes, found: &Found) {
        if self.overflow {
            return;
        }
        let held = self.held_first.as_ref().map_or(0, Bytes::len) + self.held_rest.len();
        if found.tally.complete || held + chunk.len() > HOLD_LIMIT {
            // No estimate will be needed, or none can be made: let go.
            self.overflow = true;
            self.held_first = None;
            self.held_rest = Vec::new();
        } else if self.held_first.is_none() {
            self.held_first = Some(chunk.clone());
        } else {
            self.held_rest.extend_from_slice(chunk);
        }
    }

    pub(crate) fn finish(&mut self, found: &mut Found) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.stop_capture();
        let first = self.held_first.take();
        let mut rest = std::mem::take(&mut self.held_rest);
        if found.tally.complete || self.overflow {
            return;
        }
        let Some(first) = first else { return };
        let body = if rest.is_empty() {
            &first[..]
        } else {
            rest.splice(0..0, first.iter().copied());
            &rest[..]
        };
        found.content_chars += count_text(&mut Cursor::new(body), false);
    }
}

fn record(usage: Option<RawUsage>, found: &mut Found) {
    if let Some(usage) = usage.filter(RawUsage::has_counts) {
        found.tally = Tally::default();
        found.tally.merge(&usage, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What [`count_text`] counts from the start of `b`, and where it stops.
    fn count(b: &[u8], counted: bool) -> (u64, usize) {
        let mut c = Cursor::new(b);
        (count_text(&mut c, counted), c.at())
    }

    #[test]
    fn chars() {
        for s in [
            &b"Hello"[..],
            "h\u{e9}llo \u{2713}".as_bytes(),
            br#"a\nb\"c\u00e9"#,
            "a long string with \u{e9} and \\\" escapes, longer than sixty-four bytes in all"
                .as_bytes(),
        ] {
            let quoted = [b"\"", s, b"\" tail"].concat();
            let text: String = serde_json::from_slice(&quoted[..s.len() + 2]).unwrap();
            let chars = text.chars().count() as u64;
            assert_eq!(count(&quoted, true), (chars, s.len() + 2));
        }
        assert_eq!(count(b"\"Hello\"", true).0, 5);
        assert_eq!(count("\"h\u{e9}llo \u{2713}\"".as_bytes(), true).0, 7);
        assert_eq!(count(br#""a\nb\"c\u00e9""#, true).0, 6);
        assert_eq!(count(br#""trailing\"#, true).0, 9);
    }

    #[test]
    fn text_under_counted_keys() {
        let (n, end) = count(br#"{"role":"assistant","content":"Hi!"} rest"#, false);
        assert_eq!((n, end), (3, 36));
        let (n, _) = count(br#"{"type":"text_delta","text":"Hello"}"#, false);
        assert_eq!(n, 5);
        let (n, _) = count(
            br#"{"tool_calls":[{"index":0,"id":"call_1","function":{"name":"f","arguments":"{\"a\":1}"}}]}"#,
            false,
        );
        assert_eq!(n, 7);
        assert_eq!(count(br#""abc", 1"#, true), (3, 5));
        assert_eq!(count(br#"null, 1"#, true), (0, 4));
        assert_eq!(count(br#"{"content":"unterminated"#, false).0, 12);
    }

    #[test]
    fn malformed_input_does_not_panic() {
        for input in [
            &b"\""[..],
            b"{",
            b"}",
            b"\"\\",
            b"{\"a\":\"\\u",
            b"]]]",
            b"{\"content\"",
        ] {
            let _ = count(input, true);
            let _ = count(input, false);
            let _ = parse_member(input);
        }
    }
}
