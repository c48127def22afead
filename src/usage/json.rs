//! Byte-level JSON helpers, and the scanner of non-streamed JSON bodies.
//!
//! The helpers walk JSON text without building values: where a string ends,
//! how many characters it holds, where a value ends. They never fail and never
//! panic on malformed input; they just stop at the end of the slice.

use std::sync::LazyLock;

use bytes::Bytes;
use memchr::arch::all::packedpair::HeuristicFrequencyRank;
use memchr::memmem::{Finder, FinderBuilder};

use super::keys::Keys;
use super::parse::{self, Stop};
use super::report::{RawUsage, Tally};
use super::scan::Found;

pub(crate) const USAGE_KEY: &[u8] = b"\"usage\"";
pub(crate) static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| json_finder(USAGE_KEY));

/// A `memmem` finder tuned for JSON: its prefilter looks for the needle's
/// rarest bytes, and memchr's default ranking (made for prose and code)
/// thinks `"` is rare, so every string in a chunk would be a candidate.
pub(crate) fn json_finder(needle: &'static [u8]) -> Finder<'static> {
    FinderBuilder::new().build_forward_with_ranker(JsonRank, needle)
}

struct JsonRank;

impl HeuristicFrequencyRank for JsonRank {
    fn rank(&self, byte: u8) -> u8 {
        match byte {
            b'"' | b':' | b',' | b'{' | b'}' | b'[' | b']' | b' ' | b'_' => 255,
            b'0'..=b'9' => 250,
            b'e' | b't' | b'a' | b'o' | b'i' | b'n' | b's' | b'r' | b'h' | b'l' => 245,
            b'd' | b'c' | b'u' | b'm' | b'f' | b'p' | b'g' | b'w' | b'y' | b'b' => 225,
            b'A'..=b'Z' | b'a'..=b'z' => 190,
            _ => 128,
        }
    }
}

/// Longest `usage` value kept while it arrives over several frames.
const CAPTURE_LIMIT: usize = 64 * 1024;
/// Largest JSON body kept to estimate its content when it reports no usage.
const HOLD_LIMIT: usize = 1024 * 1024;

/// Keys whose string values are generated text: chat `content`, Anthropic
/// `text`/`thinking`/`partial_json`, tool-call `arguments`, the reasoning
/// fields of OpenAI-compatible servers, and refusals.
const COUNTED_KEYS: [&[u8]; 8] = [
    b"content",
    b"text",
    b"arguments",
    b"partial_json",
    b"thinking",
    b"reasoning_content",
    b"reasoning",
    b"refusal",
];

pub(crate) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// `start` is just past an opening quote. Returns the index of the closing
/// quote, or `b.len()` when the string is not closed.
pub(crate) fn string_end(b: &[u8], start: usize) -> usize {
    // Keys and most deltas are short: byte by byte beats a SIMD call there.
    let mut i = start;
    let short = b.len().min(start.saturating_add(32));
    while i < short {
        match b[i] {
            b'"' => return i,
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    loop {
        let rest = b.get(i..).unwrap_or_default();
        match memchr::memchr2(b'"', b'\\', rest) {
            Some(j) if rest[j] == b'"' => return i + j,
            Some(j) => i += j + 2,
            None => return b.len(),
        }
    }
}

/// Characters of the raw contents of a JSON string: UTF-8 characters, with
/// an escape (`\n`, `\"`, `\u00e9`) counted as one.
pub(crate) fn count_chars(s: &[u8]) -> u64 {
    if memchr::memchr(b'\\', s).is_none() {
        return s.iter().filter(|&&b| (b & 0xC0) != 0x80).count() as u64;
    }
    let (mut n, mut i) = (0u64, 0usize);
    while let Some(&b) = s.get(i) {
        if b == b'\\' {
            i += if s.get(i + 1) == Some(&b'u') { 6 } else { 2 };
            n += 1;
        } else {
            n += u64::from((b & 0xC0) != 0x80);
            i += 1;
        }
    }
    n
}

fn is_counted(key: &[u8]) -> bool {
    COUNTED_KEYS.contains(&key)
}

/// A string that starts after the quote at `start`: the index of its closing
/// quote (or `b.len()`) and its characters as [`count_chars`] counts them,
/// found in one pass for short strings (eight bytes at a time while they
/// hold no quote and no backslash).
pub(crate) fn string_chars(b: &[u8], start: usize) -> (usize, u64) {
    const HI: u64 = 0x8080_8080_8080_8080;
    const QUOTES: u64 = 0x2222_2222_2222_2222;
    const BACKSLASHES: u64 = 0x5c5c_5c5c_5c5c_5c5c;
    // The high bit of each zero byte of `y`, exactly (no carry crosses bytes).
    let zero_bytes = |y: u64| !(((y & !HI) + !HI) | y) & HI;
    let (mut i, mut n) = (start, 0u64);
    let short = b.len().min(start.saturating_add(64));
    while let Some(word) = b.get(i..i + 8).filter(|_| i + 8 <= short) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes);
        // UTF-8 continuation bytes, 10xxxxxx, do not start a character
        // (and ASCII has none: no count of bits needed).
        let continuation = |upto: u64| {
            if x & HI == 0 {
                0
            } else {
                u64::from((x & !(x << 1) & HI & upto).count_ones())
            }
        };
        let special = zero_bytes(x ^ QUOTES) | zero_bytes(x ^ BACKSLASHES);
        if special == 0 {
            n += 8 - continuation(u64::MAX);
            i += 8;
            continue;
        }
        let k = special.trailing_zeros() / 8;
        n += u64::from(k) - continuation((1u64 << (8 * k)) - 1);
        i += k as usize;
        break;
    }
    while i < short {
        match b[i] {
            b'"' => return (i, n),
            b'\\' => {
                i += if b.get(i + 1) == Some(&b'u') { 6 } else { 2 };
                n += 1;
            }
            c => {
                n += u64::from((c & 0xC0) != 0x80);
                i += 1;
            }
        }
    }
    long_string_chars(b, i, n)
}

/// The rest of a string longer than `string_chars`' first pass.
#[cold]
#[inline(never)]
fn long_string_chars(b: &[u8], i: usize, n: u64) -> (usize, u64) {
    let end = string_end(b, i);
    (end, n + count_chars(b.get(i..end).unwrap_or_default()))
}

/// Walks the JSON value at the start of `b` and counts the characters of
/// the string values under [`COUNTED_KEYS`] (or of the value itself, when it
/// is a string and `counted`). Returns the count and the index just past the
/// value (scalars end at the next `,`, `}` or `]`).
pub(crate) fn count_text(b: &[u8], counted: bool) -> (u64, usize) {
    let (mut chars, mut depth, mut i) = (0u64, 0usize, 0usize);
    let mut counted_key = counted;
    while let Some(&c) = b.get(i) {
        match c {
            b'"' => {
                let end = string_end(b, i + 1);
                let next = skip_ws(b, end + 1);
                if depth > 0 && b.get(next) == Some(&b':') {
                    counted_key = is_counted(b.get(i + 1..end).unwrap_or_default());
                    i = skip_ws(b, next + 1);
                    if counted_key && b.get(i) == Some(&b'"') {
                        // The usual case: a counted key and its string.
                        let (end, n) = string_chars(b, i + 1);
                        chars += n;
                        i = end + 1;
                    }
                } else {
                    if counted_key {
                        chars += count_chars(b.get(i + 1..end).unwrap_or_default());
                    }
                    i = end + 1;
                    if depth == 0 {
                        break;
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' | b',' if depth == 0 => break,
            b'}' | b']' => {
                depth -= 1;
                i += 1;
                if depth == 0 {
                    break;
                }
            }
            _ => i += 1,
        }
    }
    (chars, i.min(b.len()))
}

/// Parses `"usage" : <value>` at the start of `buf`: [`Stop::Eof`] when the
/// value goes on past the end of `buf`, [`Stop::Invalid`] when this is not
/// a `usage` member (`"usage"` was a value, or not followed by JSON).
pub(crate) fn parse_member(buf: &[u8]) -> Result<Option<RawUsage>, Stop> {
    let i = skip_ws(buf, USAGE_KEY.len());
    match buf.get(i) {
        None => return Err(Stop::Eof),
        Some(b':') => {}
        Some(_) => return Err(Stop::Invalid),
    }
    let i = skip_ws(buf, i + 1);
    if i >= buf.len() {
        return Err(Stop::Eof);
    }
    parse::usage_value(buf, i)
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
            if let Some(p) = USAGE.find(&joint[..self.seam_len + m]) {
                if p < self.seam_len {
                    self.capture.clear();
                    self.capture.extend_from_slice(&joint[p..self.seam_len]);
                    self.capturing = true;
                }
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
        let start = skip_ws(body, 0);
        found.content_chars += count_text(body.get(start..).unwrap_or_default(), false).0;
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
    use proptest::prelude::*;

    use super::*;

    /// `string_chars` as it was, byte by byte: the oracle.
    fn string_chars_bytewise(b: &[u8], start: usize) -> (usize, u64) {
        let (mut i, mut n) = (start, 0u64);
        let short = b.len().min(start.saturating_add(64));
        while i < short {
            match b[i] {
                b'"' => return (i, n),
                b'\\' => {
                    i += if b.get(i + 1) == Some(&b'u') { 6 } else { 2 };
                    n += 1;
                }
                c => {
                    n += u64::from((c & 0xC0) != 0x80);
                    i += 1;
                }
            }
        }
        let end = string_end(b, i);
        (end, n + count_chars(b.get(i..end).unwrap_or_default()))
    }

    proptest! {
        #[test]
        fn string_chars_counts_as_byte_by_byte(
            pieces in proptest::collection::vec(
                prop_oneof![
                    4 => proptest::sample::select(vec![
                        &b"a"[..], b"word ", "é".as_bytes(), "✓".as_bytes(), "😀".as_bytes(),
                        b"\\n", b"\\\"", b"\\u00e9", b"\\u12\"4", b"\\", b"\xff", b"\x80",
                    ]),
                    1 => Just(&b"\""[..]),
                ],
                0..40,
            ),
            start in 0usize..4,
        ) {
            let b = pieces.concat();
            for end in [b.len(), b.len().saturating_sub(1), b.len() / 2] {
                let b = &b[..end];
                prop_assert_eq!(string_chars(b, start), string_chars_bytewise(b, start));
            }
        }
    }

    #[test]
    fn chars() {
        for s in [
            &b"Hello"[..],
            "héllo ✓".as_bytes(),
            br#"a\nb\"c\u00e9"#,
            "a long string with é and \\\" escapes, longer than sixty-four bytes in all".as_bytes(),
        ] {
            let quoted = [s, b"\" tail"].concat();
            assert_eq!(string_chars(&quoted, 0), (s.len(), count_chars(s)));
        }
        assert_eq!(count_chars(b"Hello"), 5);
        assert_eq!(count_chars("héllo ✓".as_bytes()), 7);
        assert_eq!(count_chars(br#"a\nb\"c\u00e9"#), 6);
        assert_eq!(count_chars(br"trailing\"), 9);
    }

    #[test]
    fn text_under_counted_keys() {
        let (n, end) = count_text(br#"{"role":"assistant","content":"Hi!"} rest"#, false);
        assert_eq!((n, end), (3, 36));
        let (n, _) = count_text(br#"{"type":"text_delta","text":"Hello"}"#, false);
        assert_eq!(n, 5);
        let (n, _) = count_text(
            br#"{"tool_calls":[{"index":0,"id":"call_1","function":{"name":"f","arguments":"{\"a\":1}"}}]}"#,
            false,
        );
        assert_eq!(n, 7);
        assert_eq!(count_text(br#""abc", 1"#, true), (3, 5));
        assert_eq!(count_text(br#"null, 1"#, true), (0, 4));
        assert_eq!(count_text(br#"{"content":"unterminated"#, false).0, 12);
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
            let _ = count_text(input, true);
            let _ = count_text(input, false);
            let _ = string_end(input, 1);
        }
    }
}
