//! The fast path: [`Cursor`], a reader of the JSON that clients send.
//!
//! Nearly every body is well-formed and plain: keys without escapes,
//! strings, small integers, the known fields with the types they should
//! have. A `Cursor` reads those in one pass that keeps nothing but what the
//! caller asks for and knows nothing of errors: at the first thing it does
//! not handle (an escaped key, a lone surrogate, a float serde could find
//! out of range, nesting past 64 levels, anything malformed…) it answers
//! `None`, and the caller reads the body again with serde (see the parent
//! module). So the fast path only has to be right about what it accepts:
//! serde accepts it too and reads the same facts from it. Where serde checks
//! less (the strings and numbers of a skipped value), the cursor may check
//! more: declining is always safe.

/// A position in JSON text, moving forward. Every method that reads a
/// value answers `None` when the value is not one the fast path takes.
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    /// The next byte to read.
    at: usize,
    /// The characters [`string`](Self::string) read before it gave up on
    /// a string (one the input ends in, say).
    cut: u64,
}

/// A string read by [`Cursor::string`].
pub(crate) struct Str<'a> {
    /// The bytes between the quotes, escapes as written.
    pub(crate) raw: &'a [u8],
    /// Characters (Unicode scalar values) once unescaped.
    pub(crate) chars: u64,
    pub(crate) escaped: bool,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor::starting_at(bytes, 0)
    }

    /// A cursor at index `at` of `bytes`.
    pub(crate) fn starting_at(bytes: &'a [u8], at: usize) -> Cursor<'a> {
        Cursor { bytes, at, cut: 0 }
    }

    /// The index of the next byte.
    pub(crate) fn at(&self) -> usize {
        self.at
    }

    /// Skips whitespace; the next byte, not consumed.
    #[inline]
    pub(crate) fn peek(&mut self) -> Option<u8> {
        // Most tokens follow the one before without a space.
        if let Some(&b) = self.bytes.get(self.at)
            && b > b' '
        {
            return Some(b);
        }
        loop {
            match self.bytes.get(self.at) {
                Some(b' ' | b'\n' | b'\t' | b'\r') => self.at += 1,
                other => return other.copied(),
            }
        }
    }

    #[inline]
    pub(crate) fn bump(&mut self) {
        self.at += 1;
    }

    /// Reads `literal` if it is what comes next (no whitespace skipped).
    pub(crate) fn literal(&mut self, literal: &[u8]) -> Option<()> {
        let end = self.at + literal.len();
        (self.bytes.get(self.at..end)? == literal).then(|| self.at = end)
    }

    /// What is left, from the next byte that is not whitespace.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        self.peek();
        self.bytes.get(self.at..).unwrap_or_default()
    }

    /// Nothing but whitespace is left.
    pub(crate) fn end(&mut self) -> Option<()> {
        self.peek().is_none().then_some(())
    }

    /// Reads `null` if that is what comes: whether it was.
    pub(crate) fn null(&mut self) -> Option<bool> {
        if self.peek()? != b'n' {
            return Some(false);
        }
        self.literal(b"null").map(|()| true)
    }

    /// An object read as serde reads a struct: `member` reads each member's
    /// value (its key and colon read) and answers the bit of the field it
    /// set (see [`field`]), or 0 for a member that is not a field (skipped).
    /// A field given twice is declined: serde rejects it.
    pub(crate) fn fields(
        &mut self,
        mut member: impl FnMut(&mut Self, &'a [u8]) -> Option<u32>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.bump();
            return Some(());
        }
        let mut seen = 0u32;
        loop {
            let key = self.key(false)?;
            let bit = member(self, key)?;
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            match self.peek()? {
                b',' => self.bump(),
                b'}' => {
                    self.bump();
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Reads `byte`, after whitespace.
    #[inline(always)]
    /// Reads `byte` if it comes next, after whitespace.
    pub(crate) fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.bump())
    }

    /// A key and its colon. Escaped keys are declined unless `any`: their
    /// bytes are not their name.
    #[inline(always)]
    pub(crate) fn key(&mut self, any: bool) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let key = self.string()?;
        if key.escaped && !any {
            return None;
        }
        self.eat(b':')?;
        Some(key.raw)
    }

    /// `true`, `false` or `null`.
    pub(crate) fn bool_or_null(&mut self) -> Option<Option<bool>> {
        match self.peek()? {
            b't' => self.literal(b"true").map(|()| Some(true)),
            b'f' => self.literal(b"false").map(|()| Some(false)),
            b'n' => self.literal(b"null").map(|()| None),
            _ => None,
        }
    }

    /// An integer that serde reads as a `u64` (digits, no leading zero, no
    /// fraction or exponent, not past `u64::MAX`), or `null`.
    pub(crate) fn u64_or_null(&mut self) -> Option<Option<u64>> {
        if self.null()? {
            return Some(None);
        }
        let start = self.at;
        let mut n = 0u64;
        while let Some(&digit @ b'0'..=b'9') = self.bytes.get(self.at) {
            n = n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
            self.bump();
        }
        let digits = self.at - start;
        let leading_zero = digits > 1 && self.bytes.get(start) == Some(&b'0');
        if digits == 0
            || leading_zero
            || matches!(self.bytes.get(self.at), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        Some(Some(n))
    }

    /// A string without escapes, copied, or `null`.
    pub(crate) fn string_or_null(&mut self) -> Option<Option<String>> {
        if self.null()? {
            return Some(None);
        }
        self.eat(b'"')?;
        let s = self.string()?;
        if s.escaped {
            return None;
        }
        // Checked by `string` already; copied first, the check of a short
        // name (aligned) costs less.
        String::from_utf8(s.raw.to_vec()).ok().map(Some)
    }

    /// Any value, read as serde reads one it skips (`IgnoredAny`).
    pub(crate) fn skip(&mut self) -> Option<()> {
        self.walk(false, false, |_, _| false, &mut 0)
    }

    /// Any value, read as serde reads one for a visitor of every string and
    /// number: the characters of its strings and 4 per integer (a token
    /// id), the values under keys that are `payload` left out.
    pub(crate) fn text(&mut self, payload: impl Fn(&[u8]) -> bool + Copy) -> Option<u64> {
        if self.peek()? == b'[' {
            return self.text_array(payload);
        }
        self.text_walk(payload)
    }

    /// `text` of an array (chat's `messages`): its elements' characters,
    /// an object's plain strings read by a loop of its own rather than the
    /// general walk, which its other values are left to. The sums are the
    /// walk's: it counts each value alike wherever it is, and these two
    /// outer levels only add to the depth serde allows (128), not to what
    /// is counted.
    fn text_array(&mut self, payload: impl Fn(&[u8]) -> bool + Copy) -> Option<u64> {
        self.bump();
        let mut chars = 0u64;
        if self.peek()? == b']' {
            self.bump();
            return Some(0);
        }
        loop {
            let n = if self.peek()? == b'{' {
                self.text_object(payload)?
            } else {
                self.text_walk(payload)?
            };
            chars = chars.saturating_add(n);
            match self.peek()? {
                b',' => self.bump(),
                b']' => {
                    self.bump();
                    return Some(chars);
                }
                _ => return None,
            }
        }
    }

    /// `text` of an object in [`text_array`](Self::text_array).
    #[inline(always)]
    fn text_object(&mut self, payload: impl Fn(&[u8]) -> bool + Copy) -> Option<u64> {
        self.bump();
        let mut chars = 0u64;
        if self.peek()? == b'}' {
            self.bump();
            return Some(0);
        }
        loop {
            // A counted object's keys are compared: as written (see `member`).
            let counted = !payload(self.key(false)?);
            let n = if self.peek()? == b'"' {
                self.bump();
                let s = self.string()?;
                if counted { s.chars } else { 0 }
            } else if counted {
                self.text_walk(payload)?
            } else {
                self.skip()?;
                0
            };
            chars = chars.saturating_add(n);
            match self.peek()? {
                b',' => self.bump(),
                b'}' => {
                    self.bump();
                    return Some(chars);
                }
                _ => return None,
            }
        }
    }

    /// `text` by the general walk.
    fn text_walk(&mut self, payload: impl Fn(&[u8]) -> bool + Copy) -> Option<u64> {
        let mut chars = 0;
        self.walk(
            true,
            true,
            |counting, key| counting && !payload(key),
            &mut chars,
        )?;
        Some(chars)
    }

    /// Generated text in an answer: the characters of the strings whose
    /// nearest key is `counted` (or of the value itself if `counted` is
    /// true and it is a string), added to `chars` as they are read, so that
    /// a value the cursor gives up on (or that the input ends in) keeps
    /// what came before.
    pub(crate) fn answer_text(
        &mut self,
        counted: bool,
        is_counted: impl Fn(&[u8]) -> bool + Copy,
        chars: &mut u64,
    ) -> Option<()> {
        self.walk(counted, false, |_, key| is_counted(key), chars)
    }

    /// A value, its characters counted into `chars` while `count` (and its
    /// integers, 4 each, with `numbers`); `member` decides, from whether
    /// its object is counted and its key, whether a member's value is.
    /// Containers are followed on two stacks of bits, 64 deep: deeper ones
    /// (and serde's limit of 128) are serde's business.
    fn walk(
        &mut self,
        count: bool,
        numbers: bool,
        member: impl Fn(bool, &[u8]) -> bool + Copy,
        chars: &mut u64,
    ) -> Option<()> {
        // Bit d: whether the container at depth d is an object, and whether
        // its values are counted.
        let (mut objects, mut counted) = (0u64, 0u64);
        let mut depth = 0u32;
        let mut counting = count;
        loop {
            match self.peek()? {
                b'"' => {
                    self.bump();
                    let s = self.string();
                    if counting {
                        *chars = chars.saturating_add(s.as_ref().map_or(self.cut, |s| s.chars));
                    }
                    s?;
                }
                b'-' | b'0'..=b'9' => {
                    let n = self.number(counting && numbers)?;
                    *chars = chars.saturating_add(n);
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                open @ (b'[' | b'{') => {
                    if depth == 64 {
                        return None;
                    }
                    self.bump();
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
                    if self.peek()? != close {
                        if object {
                            counting = self.member(counting, member)?;
                        }
                        continue;
                    }
                    // Empty: a whole value, closed below.
                    self.bump();
                    depth -= 1;
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
                match self.peek()? {
                    b',' => {
                        self.bump();
                        counting = counted & bit != 0;
                        if object {
                            counting = self.member(counting, member)?;
                        }
                        break;
                    }
                    b']' if !object => {}
                    b'}' if object => {}
                    _ => return None,
                }
                self.bump();
                depth -= 1;
            }
        }
    }

    /// A member's key in `walk`: whether its value is counted.
    #[inline(always)]
    fn member(&mut self, counting: bool, member: impl Fn(bool, &[u8]) -> bool) -> Option<bool> {
        // A counted object's keys are compared, so they must be as written;
        // a skipped one's may be escaped.
        let key = self.key(!counting)?;
        Some(member(counting, key))
    }

    /// A number. Read (`read`) as serde reads one for a visitor: 4
    /// characters for what serde calls an integer (a `u64`, or an `i64`
    /// below zero), 0 for a float; declined when serde could find it out of
    /// range (an exponent, or more than 20 digits before the point).
    /// Skipped: its grammar only (0).
    fn number(&mut self, read: bool) -> Option<u64> {
        let negative = self.bytes.get(self.at) == Some(&b'-');
        if negative {
            self.bump();
        }
        let int = self.at;
        match self.bytes.get(self.at)? {
            b'0' => self.bump(),
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        let int = self.bytes.get(int..self.at)?;
        // One leading zero only.
        if matches!(self.bytes.get(self.at), Some(b'0'..=b'9')) {
            return None;
        }
        let fraction = self.bytes.get(self.at) == Some(&b'.');
        if fraction {
            self.bump();
            if self.digits() == 0 {
                return None;
            }
        }
        let exponent = matches!(self.bytes.get(self.at), Some(b'e' | b'E'));
        if exponent {
            self.bump();
            if let Some(b'+' | b'-') = self.bytes.get(self.at) {
                self.bump();
            }
            if self.digits() == 0 {
                return None;
            }
        }
        if !read {
            return Some(0);
        }
        if exponent || int.len() > 20 {
            return None;
        }
        let magnitude = int.iter().try_fold(0u64, |m, &d| {
            m.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        // `-0`, and integers past `u64::MAX` or below `i64::MIN`, are floats
        // to serde.
        let integer =
            !fraction && magnitude.is_some_and(|m| !negative || (1..=1 << 63).contains(&m));
        Some(if integer { 4 } else { 0 })
    }

    /// Skips digits; how many.
    fn digits(&mut self) -> usize {
        let from = self.at;
        while let Some(b'0'..=b'9') = self.bytes.get(self.at) {
            self.bump();
        }
        self.at - from
    }

    /// A string, after its opening quote, as serde reads one: escapes,
    /// surrogate pairs and UTF-8 checked. A lone surrogate (which serde
    /// rejects when it reads the string, and lets pass when it skips it)
    /// is declined.
    #[inline(always)]
    pub(crate) fn string(&mut self) -> Option<Str<'a>> {
        let start = self.at;
        let (end, ascii) = scan_plain(self.bytes, start);
        if ascii && self.bytes.get(end) == Some(&b'"') {
            // The usual string: ASCII, no escape.
            self.at = end + 1;
            let raw = self.bytes.get(start..end)?;
            let chars = raw.len() as u64;
            return Some(Str {
                raw,
                chars,
                escaped: false,
            });
        }
        self.string_rest(start)
    }

    /// `string` past a first run that was not all of it.
    #[inline(never)]
    fn string_rest(&mut self, start: usize) -> Option<Str<'a>> {
        let mut chars = 0u64;
        let mut escaped = false;
        self.cut = 0;
        loop {
            let run_start = self.at;
            let (end, ascii) = scan_plain(self.bytes, run_start);
            let run = self.bytes.get(run_start..end)?;
            let run_chars = if ascii {
                run.len()
            } else {
                std::str::from_utf8(run).ok()?.chars().count()
            };
            chars = chars.saturating_add(run_chars as u64);
            self.at = end;
            self.cut = chars;
            match self.bytes.get(end)? {
                b'"' => {
                    self.bump();
                    let raw = self.bytes.get(start..end)?;
                    return Some(Str {
                        raw,
                        chars,
                        escaped,
                    });
                }
                b'\\' => {
                    self.bump();
                    chars = chars.saturating_add(1);
                    self.cut = chars;
                    self.escape()?;
                    escaped = true;
                }
                // A control character.
                _ => return None,
            }
        }
    }

    /// An escape, after its backslash: one character.
    fn escape(&mut self) -> Option<()> {
        let c = *self.bytes.get(self.at)?;
        self.bump();
        match c {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(()),
            b'u' => match self.hex4()? {
                0xD800..=0xDBFF => {
                    // A leading surrogate: its trailing one must follow.
                    self.literal(b"\\u")?;
                    matches!(self.hex4()?, 0xDC00..=0xDFFF).then_some(())
                }
                0xDC00..=0xDFFF => None,
                _ => Some(()),
            },
            _ => None,
        }
    }

    fn hex4(&mut self) -> Option<u16> {
        let digits = self.bytes.get(self.at..self.at + 4)?;
        self.at += 4;
        digits.iter().try_fold(0u16, |n, &d| {
            Some(n << 4 | (char::from(d).to_digit(16)? as u16))
        })
    }
}

/// Sets a field that [`Cursor::fields`] read, and answers the field's bit:
/// `n` is its own number among the struct's fields.
pub(crate) fn field<T>(slot: &mut T, value: T, n: u32) -> u32 {
    *slot = value;
    1 << n
}

/// The end of the run of plain string bytes from `start`: the index of the
/// first quote, backslash or control character (or of the end), and
/// whether the run is all ASCII.
///
/// Most strings are short (keys, roles, model names): up to 16 bytes are
/// read a word at a time. Longer ones (prompts) go to `scan_long`.
#[inline]
pub(crate) fn scan_plain(bytes: &[u8], start: usize) -> (usize, bool) {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut i = start;
    for _ in 0..2 {
        let Some(word) = bytes.get(i..i + 8) else {
            return scan_tail(bytes, i);
        };
        let Ok(word) = <[u8; 8]>::try_from(word) else {
            break;
        };
        let w = u64::from_le_bytes(word);
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        // The high bit of each byte that is < 0x20, '"', '\\' or not ASCII
        // (Mycroft's trick, as serde_json does it). A borrow can also mark a
        // byte above a marked one, never below, so the lowest mark is exact.
        let stop = ((w.wrapping_sub(ONES * 0x20) & !w)
            | (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | w)
            & HIGH;
        if stop != 0 {
            i += (stop.trailing_zeros() / 8) as usize;
            if bytes.get(i).is_some_and(|&b| b < 0x80) {
                return (i, true);
            }
            break;
        }
        i += 8;
    }
    scan_long(bytes, i)
}

/// `scan_plain` over the last bytes, fewer than 8 (a string that ends a
/// body): byte by byte, a call to `memchr` costs more.
#[inline(never)]
fn scan_tail(bytes: &[u8], i: usize) -> (usize, bool) {
    let tail = bytes.get(i..).unwrap_or_default();
    match tail
        .iter()
        .position(|&b| matches!(b, b'"' | b'\\' | ..0x20 | 0x80..))
    {
        Some(n) if tail[n] >= 0x80 => scan_long(bytes, i),
        Some(n) => (i + n, true),
        None => (bytes.len(), true),
    }
}

/// `scan_plain` from `i`, past a run of plain ASCII: finds the closing quote
/// or backslash with `memchr` (SIMD), then checks the run in between for
/// control characters and non-ASCII bytes in passes the compiler vectorizes.
#[inline(never)]
fn scan_long(bytes: &[u8], i: usize) -> (usize, bool) {
    let rest = bytes.get(i..).unwrap_or_default();
    let mut run = &rest[..memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len())];
    // A control character ends the run too (it is an error).
    if run.iter().fold(u8::MAX, |min, &b| min.min(b)) < 0x20 {
        run = &run[..run.iter().position(|&b| b < 0x20).unwrap_or(run.len())];
    }
    (i + run.len(), run.is_ascii())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn scan_plain_stops_where_a_byte_loop_does(
            bytes in proptest::collection::vec(
                prop_oneof![
                    8 => proptest::sample::select(&b"aZ ~"[..]),
                    1 => proptest::sample::select(&b"\"\\\x00\x1f\x20\x7f\x80\xbf\xc3\xff"[..]),
                ],
                0..200,
            ),
            start in 0usize..64,
        ) {
            let start = start.min(bytes.len());
            let end = bytes[start..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .map_or(bytes.len(), |n| start + n);
            let ascii = bytes[start..end].is_ascii();
            prop_assert_eq!(scan_plain(&bytes, start), (end, ascii));
        }
    }
}
