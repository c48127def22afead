//! The fast path.
//!
//! Nearly every body is a well-formed request: plain keys, strings, small
//! integers, the known fields with the types they should have. The
//! `quick_*` methods read those in one tight pass that keeps no more than it
//! needs and knows nothing of errors: at the first thing they do not handle
//! (an escaped key, a float in prompt text, deep nesting, anything
//! malformed…) they give up with `None`, and `from_json` reads the body again
//! with the exact scanner in the parent module, which handles everything and explains the
//! errors. So the fast path only has to be right about the bodies it
//! accepts; the tests hold it to serde's results on those.

use super::*;

impl<'a> Scanner<'a> {
    /// `request`, for common bodies only.
    pub(in crate::request) fn quick_request(&mut self) -> Option<RequestMeta> {
        let mut meta = RequestMeta::default();
        let (mut max_tokens, mut max_completion, mut max_output) = (None, None, None);
        if self.parse_whitespace()? != b'{' {
            return None;
        }
        self.eat();
        if self.parse_whitespace()? == b'}' {
            self.eat();
        } else {
            loop {
                match Field::of(Some(self.quick_key()?)) {
                    Field::Model => {
                        meta.model = match self.parse_whitespace()? {
                            b'n' => self.quick_literal(b"null").map(|()| None)?,
                            b'"' => Some(self.quick_ascii_string()?),
                            _ => return None,
                        }
                    }
                    Field::Stream => meta.stream = self.quick_bool()?.unwrap_or(false),
                    Field::MaxTokens => max_tokens = self.quick_option_u64()?,
                    Field::MaxCompletionTokens => max_completion = self.quick_option_u64()?,
                    Field::MaxOutputTokens => max_output = self.quick_option_u64()?,
                    Field::StreamOptions => meta.include_usage = self.quick_stream_options()?,
                    Field::Messages
                    | Field::Prompt
                    | Field::Input
                    | Field::System
                    | Field::Instructions
                    | Field::Tools
                    | Field::Functions => self.quick_value(true)?,
                    Field::Other => self.quick_value(false)?,
                }
                match self.parse_whitespace()? {
                    b',' => self.eat(),
                    b'}' => {
                        self.eat();
                        break;
                    }
                    _ => return None,
                }
            }
        }
        if self.parse_whitespace().is_some() {
            return None;
        }
        meta.max_tokens = max_completion.or(max_tokens).or(max_output);
        meta.prompt_tokens_estimate = self.chars.div_ceil(4);
        Some(meta)
    }

    /// A plain ASCII key and its colon.
    #[inline(always)]
    fn quick_key(&mut self) -> Option<&'a [u8]> {
        if self.parse_whitespace()? != b'"' {
            return None;
        }
        let bytes = self.bytes;
        let start = self.index + 1;
        let (end, ascii) = scan_plain(bytes, start);
        if !ascii || bytes.get(end) != Some(&b'"') {
            return None;
        }
        self.index = end + 1;
        if self.parse_whitespace()? != b':' {
            return None;
        }
        self.eat();
        bytes.get(start..end)
    }

    fn quick_literal(&mut self, literal: &[u8]) -> Option<()> {
        let end = self.index + literal.len();
        if self.bytes.get(self.index..end)? != literal {
            return None;
        }
        self.index = end;
        Some(())
    }

    /// `true`, `false` or `null`.
    fn quick_bool(&mut self) -> Option<Option<bool>> {
        Some(match self.parse_whitespace()? {
            b't' => self.quick_literal(b"true").map(|()| Some(true))?,
            b'f' => self.quick_literal(b"false").map(|()| Some(false))?,
            b'n' => self.quick_literal(b"null").map(|()| None)?,
            _ => return None,
        })
    }

    /// A string of plain ASCII (no escapes).
    fn quick_ascii_string(&mut self) -> Option<String> {
        let start = self.index + 1;
        let (end, ascii) = scan_plain(self.bytes, start);
        if !ascii || self.bytes.get(end) != Some(&b'"') {
            return None;
        }
        self.index = end + 1;
        String::from_utf8(self.bytes.get(start..end)?.to_vec()).ok()
    }

    /// An integer that serde reads as a u64: digits, no leading zero, no
    /// fraction or exponent, not past `u64::MAX`.
    fn quick_u64(&mut self) -> Option<u64> {
        let start = self.index;
        let mut n = 0u64;
        while let Some(digit @ b'0'..=b'9') = self.peek() {
            n = n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
            self.eat();
        }
        let digits = self.index - start;
        if digits == 0
            || (digits > 1 && self.bytes.get(start) == Some(&b'0'))
            || matches!(self.peek(), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        Some(n)
    }

    fn quick_option_u64(&mut self) -> Option<Option<u64>> {
        match self.parse_whitespace()? {
            b'n' => self.quick_literal(b"null").map(|()| None),
            b'0'..=b'9' => self.quick_u64().map(Some),
            _ => None,
        }
    }

    /// `null`, or an object with at most one `include_usage`.
    fn quick_stream_options(&mut self) -> Option<bool> {
        match self.parse_whitespace()? {
            b'n' => return self.quick_literal(b"null").map(|()| false),
            b'{' => self.eat(),
            _ => return None,
        }
        let mut include_usage = None;
        if self.parse_whitespace()? == b'}' {
            self.eat();
            return Some(false);
        }
        loop {
            if self.quick_key()? == b"include_usage" {
                if include_usage.is_some() {
                    return None;
                }
                include_usage = Some(self.quick_bool()?);
            } else {
                self.quick_value(false)?;
            }
            match self.parse_whitespace()? {
                b',' => self.eat(),
                b'}' => {
                    self.eat();
                    return Some(include_usage.flatten().unwrap_or(false));
                }
                _ => return None,
            }
        }
    }

    /// One value, its text counted when `count` (`count_value`) or skipped
    /// (`ignore_value`). Containers are followed on a stack of bits, to
    /// 64 deep: deeper ones (and serde_json's limit) are the exact
    /// scanner's business.
    fn quick_value(&mut self, count: bool) -> Option<()> {
        // Bit n: whether the container at depth n is an object, and
        // whether its values are counted.
        let (mut objects, mut counted) = (0u64, 0u64);
        let mut depth = 0;
        let mut counting = count;
        loop {
            match self.parse_whitespace()? {
                b'"' => {
                    self.eat();
                    if counting {
                        self.quick_count_string()?;
                    } else {
                        self.ignore_str().ok()?;
                    }
                }
                b'-' | b'0'..=b'9' if counting => self.quick_count_integer()?,
                b'-' => {
                    self.eat();
                    self.ignore_integer().ok()?;
                }
                b'0'..=b'9' => self.ignore_integer().ok()?,
                b't' => self.quick_literal(b"true")?,
                b'f' => self.quick_literal(b"false")?,
                b'n' => self.quick_literal(b"null")?,
                open @ (b'[' | b'{') => {
                    if depth == 64 {
                        return None;
                    }
                    self.eat();
                    let object = open == b'{';
                    let bit = 1u64 << depth;
                    objects = if object {
                        objects | bit
                    } else {
                        objects & !bit
                    };
                    counted = if counting {
                        counted | bit
                    } else {
                        counted & !bit
                    };
                    depth += 1;
                    let close = if object { b'}' } else { b']' };
                    if self.parse_whitespace()? != close {
                        if object {
                            let key = self.quick_key()?;
                            counting = counting && !is_payload_key(Some(key));
                        }
                        continue;
                    }
                    // Empty: a whole value, closed below.
                    depth -= 1;
                    self.eat();
                }
                _ => return None,
            }
            // After a value: a comma, or the ends of its containers.
            loop {
                if depth == 0 {
                    return Some(());
                }
                let bit = 1u64 << (depth - 1);
                let object = objects & bit != 0;
                match self.parse_whitespace()? {
                    b',' => {
                        self.eat();
                        counting = counted & bit != 0;
                        if object {
                            let key = self.quick_key()?;
                            counting = counting && !is_payload_key(Some(key));
                        }
                        break;
                    }
                    b']' if !object => {}
                    b'}' if object => {}
                    _ => return None,
                }
                self.eat();
                depth -= 1;
            }
        }
    }

    /// A string to count, after its opening quote.
    fn quick_count_string(&mut self) -> Option<()> {
        let start = self.index;
        let (end, ascii) = scan_plain(self.bytes, start);
        let chars = if ascii && self.bytes.get(end) == Some(&b'"') {
            self.index = end + 1;
            (end - start) as u64
        } else {
            // Escapes, or UTF-8 to check.
            let mut count = CharCount(0);
            self.parse_str(&mut count).ok()?;
            count.0
        };
        self.chars = self.chars.saturating_add(chars);
        Some(())
    }

    /// An integer to count (a token id), that serde reads as a u64 or i64.
    fn quick_count_integer(&mut self) -> Option<()> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.eat();
        }
        let n = self.quick_u64()?;
        // `-0` and integers below i64::MIN are floats to serde.
        if negative && !(1..=1 << 63).contains(&n) {
            return None;
        }
        self.chars = self.chars.saturating_add(4);
        Some(())
    }
}
