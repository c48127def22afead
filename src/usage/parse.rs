//! The reader of `usage` objects, and of the few SSE events that hold one.
//!
//! It replaces `serde_json` on this path (a usage object is read on every
//! response) without building values or allocating, and gives what
//! `serde_json` gave for the same bytes: the same [`RawUsage`] for every
//! document serde accepts, an error for every document it rejects, and
//! [`Stop::Eof`] exactly where serde's error `is_eof()`. The rules followed
//! are those of `serde_json`'s `Deserializer` over a slice, for the derived
//! `Deserialize` of a struct with `#[serde(default)]`:
//!
//! - a struct is an object (unknown keys skipped, a known key given twice an
//!   error) or an array of its fields in order, shorter arrays leaving the
//!   rest at their default;
//! - keys, and strings that are values of a token count, are checked as
//!   serde checks the strings it reads (UTF-8, paired `\u` surrogates);
//!   strings inside skipped values are checked as serde checks the strings
//!   it skips (escapes and control characters only);
//! - numbers follow JSON's grammar; a token count that is not a plain
//!   integer (a fraction, an exponent, more than 20 digits) is read by
//!   `serde_json` itself, so that its `f64`, and its "out of range" error,
//!   are serde's to the last bit, whatever serde's features.
//!
//! One deliberate difference: a number that the end of the input cuts
//! where JSON needs another digit (`-`, `1.`, `2e`, `2e+`) is [`Stop::Eof`]
//! inside a skipped value too. serde calls it invalid there (while it calls
//! it end-of-input in a token count), so an unknown `"cost": 0.00012` in a
//! usage object split by a frame right after its `0.` lost the whole usage.

use serde::de::IgnoredAny;

use super::report::{Count, Details, RawUsage};

/// Why a value could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The input ends before the value does: more bytes may complete it.
    Eof,
    /// The value is not valid JSON, or not of the expected shape.
    Invalid,
}

use Stop::{Eof, Invalid};

type Res<T> = Result<T, Stop>;

const HI: u64 = 0x8080_8080_8080_8080;
const QUOTES: u64 = 0x2222_2222_2222_2222;
const BACKSLASHES: u64 = 0x5c5c_5c5c_5c5c_5c5c;
/// The bits that are zero in every control character (below 0x20).
const CONTROL: u64 = 0x1f1f_1f1f_1f1f_1f1f;

/// The high bit of each zero byte of `y`, exactly (no carry crosses bytes).
#[inline]
fn zero_bytes(y: u64) -> u64 {
    !(((y & !HI) + !HI) | y) & HI
}

/// Containers deeper than this inside a skipped value are left to
/// `serde_json` (its skipping needs no depth bound, and neither may ours).
const MAX_DEPTH: usize = 512;

const USAGE_FIELDS: [&[u8]; 11] = [
    b"prompt_tokens",
    b"completion_tokens",
    b"total_tokens",
    b"input_tokens",
    b"output_tokens",
    b"cache_read_input_tokens",
    b"cache_creation_input_tokens",
    b"prompt_tokens_details",
    b"completion_tokens_details",
    b"input_tokens_details",
    b"output_tokens_details",
];

const DETAILS_FIELDS: [&[u8]; 2] = [b"cached_tokens", b"reasoning_tokens"];

const EVENT_FIELDS: [&[u8]; 5] = [b"usage", b"message", b"response", b"choices", b"error"];

/// Reads the value at `at` in `b` as an `Option<RawUsage>` (`null` is
/// `None`); what follows the value is not looked at.
pub(crate) fn usage_value(b: &[u8], at: usize) -> Res<Option<RawUsage>> {
    let mut r = Reader { b, i: at };
    if r.peek() == Some(b'n') {
        r.eat();
        r.literal(b"ull")?;
        return Ok(None);
    }
    let mut usage = RawUsage::default();
    r.usage_into(&mut usage)?;
    Ok(Some(usage))
}

/// The parts of an SSE event's data that can hold usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Event {
    /// The top-level `usage` (OpenAI chat chunks, Anthropic `message_delta`).
    pub(crate) usage: Option<RawUsage>,
    /// `message.usage` (Anthropic `message_start`).
    pub(crate) message: Option<RawUsage>,
    /// `response.usage` (OpenAI Responses `response.completed`).
    pub(crate) response: Option<RawUsage>,
    /// `Some(true)` for `"choices": []`, `Some(false)` for a non-empty array.
    pub(crate) choices: Option<bool>,
    /// A non-null `error` member.
    pub(crate) error: bool,
}

/// Reads a whole event's data (one JSON document, whitespace around it);
/// `None` if it is not one of the shape serde read into its `Event` struct
/// (the usage, message, response, choices and error members).
pub(crate) fn event(data: &[u8]) -> Option<Event> {
    let mut r = Reader { b: data, i: 0 };
    let mut event = Event::default();
    r.structure(&EVENT_FIELDS, event_field, |r, field| {
        match field {
            0 => event.usage = r.option(Reader::usage)?,
            1 => event.message = r.option(Reader::holder)?.flatten(),
            2 => event.response = r.option(Reader::holder)?.flatten(),
            3 => event.choices = r.option(Reader::choices)?,
            _ => event.error = r.option(Reader::skip)?.is_some(),
        }
        Ok(())
    })
    .ok()?;
    // Only whitespace may follow the document.
    r.peek().is_none().then_some(event)
}

/// A cursor over JSON text. `i <= b.len()` always.
struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    /// Skips whitespace; the next byte, not consumed.
    #[inline]
    fn peek(&mut self) -> Option<u8> {
        while let Some(&c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(c);
            }
            self.i += 1;
        }
        None
    }

    #[inline]
    fn eat(&mut self) {
        self.i = (self.i + 1).min(self.b.len());
    }

    /// The rest of a literal whose first letter was eaten.
    fn literal(&mut self, rest: &[u8]) -> Res<()> {
        for &expected in rest {
            let &c = self.b.get(self.i).ok_or(Eof)?;
            self.i += 1;
            if c != expected {
                return Err(Invalid);
            }
        }
        Ok(())
    }

    /// A string whose opening quote was eaten; returns its raw contents
    /// (and whether they hold an escape) and leaves the cursor past its
    /// closing quote. `strict`: checked as serde checks a string it reads,
    /// else as it checks one it skips.
    #[inline(always)]
    fn string(&mut self, strict: bool) -> Res<(&'a [u8], bool)> {
        let start = self.i;
        // The bytes passed, OR-ed: a high bit means some are not ASCII.
        let mut seen = 0u64;
        let at = self.next_special(&mut seen)?;
        if seen & HI == 0 && self.b.get(at) == Some(&b'"') {
            // The usual string: ASCII, no escape.
            self.i = at + 1;
            return Ok((self.b.get(start..at).unwrap_or_default(), false));
        }
        self.string_rest(start, at, seen, strict)
    }

    /// `string` past its first special byte, at `at`.
    #[inline(never)]
    fn string_rest(
        &mut self,
        start: usize,
        mut at: usize,
        mut seen: u64,
        strict: bool,
    ) -> Res<(&'a [u8], bool)> {
        let mut escaped = false;
        loop {
            match self.b.get(at) {
                Some(b'"') => {
                    let raw = self.b.get(start..at).unwrap_or_default();
                    self.i = at + 1;
                    // Escapes are ASCII in the text and whole characters once
                    // decoded: the raw text is UTF-8 exactly when the decoded
                    // string is.
                    if strict && seen & HI != 0 && std::str::from_utf8(raw).is_err() {
                        return Err(Invalid);
                    }
                    return Ok((raw, escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    self.i = at + 1;
                    self.escape(strict)?;
                }
                // A control character.
                _ => return Err(Invalid),
            }
            at = self.next_special(&mut seen)?;
        }
    }

    /// The index of the next quote, backslash or control character (eight
    /// bytes at a time); `Eof` if there is none.
    #[inline(always)]
    fn next_special(&mut self, seen: &mut u64) -> Res<usize> {
        while let Some(word) = self.b.get(self.i..self.i + 8) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            let x = u64::from_le_bytes(bytes);
            let special =
                zero_bytes(x ^ QUOTES) | zero_bytes(x ^ BACKSLASHES) | zero_bytes(x & !CONTROL);
            if special != 0 {
                let k = special.trailing_zeros() / 8;
                *seen |= x & ((1u64 << (8 * k)) - 1);
                return Ok(self.i + k as usize);
            }
            *seen |= x;
            self.i += 8;
        }
        let rest = self.b.get(self.i..).unwrap_or_default();
        for (k, &c) in rest.iter().enumerate() {
            if c == b'"' || c == b'\\' || c < 0x20 {
                return Ok(self.i + k);
            }
            *seen |= u64::from(c);
        }
        self.i = self.b.len();
        Err(Eof)
    }

    /// An escape whose backslash was eaten.
    fn escape(&mut self, strict: bool) -> Res<()> {
        let &c = self.b.get(self.i).ok_or(Eof)?;
        self.i += 1;
        match c {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(()),
            b'u' => {
                let n = self.hex4()?;
                if !strict || !(0xD800..=0xDFFF).contains(&n) {
                    return Ok(());
                }
                if n >= 0xDC00 {
                    // A trailing surrogate first.
                    return Err(Invalid);
                }
                // A leading surrogate: `\u` and a trailing one must follow.
                for expected in [b'\\', b'u'] {
                    let &c = self.b.get(self.i).ok_or(Eof)?;
                    if c != expected {
                        return Err(Invalid);
                    }
                    self.i += 1;
                }
                match self.hex4()? {
                    0xDC00..=0xDFFF => Ok(()),
                    _ => Err(Invalid),
                }
            }
            _ => Err(Invalid),
        }
    }

    fn hex4(&mut self) -> Res<u16> {
        let Some(digits) = self.b.get(self.i..self.i + 4) else {
            self.i = self.b.len();
            return Err(Eof);
        };
        self.i += 4;
        let mut n = 0u16;
        for &c in digits {
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return Err(Invalid),
            };
            n = n << 4 | u16::from(v);
        }
        Ok(n)
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// A number at the cursor (`-` or a digit); returns its text and, when
    /// it is a plain integer that fits a `u64`, its magnitude.
    fn number(&mut self) -> Res<(&'a [u8], Option<u64>)> {
        let start = self.i;
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let mut magnitude = Some(0u64);
        match self.b.get(self.i) {
            None => return Err(Eof),
            Some(b'0') => {
                self.i += 1;
                // One leading zero only.
                if let Some(b'0'..=b'9') = self.b.get(self.i) {
                    return Err(Invalid);
                }
            }
            Some(b'1'..=b'9') => {
                let from = self.i;
                let mut m = 0u64;
                while let Some(&c @ b'0'..=b'9') = self.b.get(self.i) {
                    m = m.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
                    self.i += 1;
                }
                // Nineteen digits always fit; more may not.
                if self.i - from > 19 {
                    magnitude = self.b.get(from..self.i).and_then(checked_integer);
                } else {
                    magnitude = Some(m);
                }
            }
            Some(_) => return Err(Invalid),
        }
        if self.b.get(self.i) == Some(&b'.') {
            magnitude = None;
            self.i += 1;
            let from = self.i;
            self.digits();
            if self.i == from {
                return Err(if self.i == self.b.len() { Eof } else { Invalid });
            }
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            magnitude = None;
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            match self.b.get(self.i) {
                None => return Err(Eof),
                Some(b'0'..=b'9') => self.digits(),
                Some(_) => return Err(Invalid),
            }
        }
        let text = self.b.get(start..self.i).unwrap_or_default();
        Ok((text, magnitude))
    }

    /// A number read as serde reads one (the "out of range" error
    /// included), as a token count: a non-negative value below `u64::MAX`,
    /// fraction dropped.
    fn count_number(&mut self) -> Res<Count> {
        let (text, magnitude) = self.number()?;
        let negative = text.first() == Some(&b'-');
        Ok(match (negative, magnitude) {
            (false, Some(n)) => Count(Some(n)),
            // serde reads `-0` as the float -0.0, which is not below zero.
            (true, Some(0)) => Count(Some(0)),
            (true, Some(_)) => Count(None),
            // Fractions, exponents, integers beyond u64: serde's own float.
            (_, None) => match serde_json::from_slice::<f64>(text) {
                Ok(v) => Count::from_f64(v),
                Err(e) if e.is_eof() => return Err(Eof),
                Err(_) => return Err(Invalid),
            },
        })
    }

    /// serde's `MapAccess::next_key`: whether a key follows (at its quote).
    fn next_key(&mut self, first: &mut bool) -> Res<bool> {
        match self.peek() {
            None => Err(Eof),
            Some(b'}') => Ok(false),
            Some(c) if *first => {
                *first = false;
                if c == b'"' { Ok(true) } else { Err(Invalid) }
            }
            Some(b',') => {
                self.eat();
                match self.peek() {
                    Some(b'"') => Ok(true),
                    Some(_) => Err(Invalid),
                    None => Err(Eof),
                }
            }
            Some(_) => Err(Invalid),
        }
    }

    /// A key at its quote, read as serde reads one.
    #[inline(always)]
    fn key(&mut self) -> Res<(&'a [u8], bool)> {
        self.eat();
        self.string(true)
    }

    fn colon(&mut self) -> Res<()> {
        match self.peek() {
            Some(b':') => {
                self.eat();
                Ok(())
            }
            Some(_) => Err(Invalid),
            None => Err(Eof),
        }
    }

    /// serde's `SeqAccess::next_element`: whether an element follows.
    fn next_element(&mut self, first: &mut bool) -> Res<bool> {
        let c = self.peek().ok_or(Eof)?;
        if c == b']' {
            Ok(false)
        } else if *first {
            *first = false;
            Ok(true)
        } else if c == b',' {
            self.eat();
            match self.peek() {
                Some(b']') => Err(Invalid),
                Some(_) => Ok(true),
                None => Err(Eof),
            }
        } else {
            Err(Invalid)
        }
    }

    fn end_seq(&mut self) -> Res<()> {
        match self.peek() {
            Some(b']') => {
                self.eat();
                Ok(())
            }
            Some(_) => Err(Invalid),
            None => Err(Eof),
        }
    }

    /// The error serde gives for a value of the wrong type: it reads a
    /// scalar to name it, so a scalar cut by the end of input is `Eof`.
    fn wrong_type(&mut self) -> Stop {
        let read = match self.peek() {
            Some(b'n') => {
                self.eat();
                self.literal(b"ull")
            }
            Some(b't') => {
                self.eat();
                self.literal(b"rue")
            }
            Some(b'f') => {
                self.eat();
                self.literal(b"alse")
            }
            Some(b'-' | b'0'..=b'9') => self.count_number().map(drop),
            Some(b'"') => {
                self.eat();
                self.string(true).map(drop)
            }
            _ => Ok(()),
        };
        match read {
            Err(Eof) => Eof,
            _ => Invalid,
        }
    }

    /// `deserialize_option`: `null` is `None`, anything else is read by `f`.
    #[inline]
    fn option<T>(&mut self, f: impl FnOnce(&mut Self) -> Res<T>) -> Res<Option<T>> {
        if self.peek() == Some(b'n') {
            self.eat();
            self.literal(b"ull")?;
            Ok(None)
        } else {
            f(self).map(Some)
        }
    }

    /// A struct with `#[serde(default)]` and these field names, in their
    /// declared order (`named` gives a name's index): `field` reads the
    /// value of field `k`.
    #[inline]
    fn structure(
        &mut self,
        names: &[&[u8]],
        named: fn(&[u8]) -> Option<usize>,
        mut field: impl FnMut(&mut Self, usize) -> Res<()>,
    ) -> Res<()> {
        match self.peek() {
            None => Err(Eof),
            Some(b'{') => {
                self.eat();
                let mut first = true;
                let mut seen = 0u32;
                while self.next_key(&mut first)? {
                    let key = self.key()?;
                    match field_index(key, named) {
                        Some(k) => {
                            if seen & (1 << k) != 0 {
                                // serde's "duplicate field", found at the key.
                                return Err(Invalid);
                            }
                            seen |= 1 << k;
                            self.colon()?;
                            field(self, k)?;
                        }
                        None => {
                            self.colon()?;
                            self.skip()?;
                        }
                    }
                }
                self.eat();
                Ok(())
            }
            Some(b'[') => {
                self.eat();
                let mut first = true;
                for k in 0..names.len() {
                    if !self.next_element(&mut first)? {
                        break;
                    }
                    field(self, k)?;
                }
                self.end_seq()
            }
            Some(_) => Err(self.wrong_type()),
        }
    }

    fn usage(&mut self) -> Res<RawUsage> {
        let mut u = RawUsage::default();
        self.usage_into(&mut u)?;
        Ok(u)
    }

    fn usage_into(&mut self, u: &mut RawUsage) -> Res<()> {
        self.structure(&USAGE_FIELDS, usage_field, |r, field| {
            match field {
                0 => u.prompt_tokens = r.option(Reader::count)?,
                1 => u.completion_tokens = r.option(Reader::count)?,
                2 => u.total_tokens = r.option(Reader::count)?,
                3 => u.input_tokens = r.option(Reader::count)?,
                4 => u.output_tokens = r.option(Reader::count)?,
                5 => u.cache_read_input_tokens = r.option(Reader::count)?,
                6 => u.cache_creation_input_tokens = r.option(Reader::count)?,
                7 => u.prompt_tokens_details = r.option(Reader::details)?,
                8 => u.completion_tokens_details = r.option(Reader::details)?,
                9 => u.input_tokens_details = r.option(Reader::details)?,
                _ => u.output_tokens_details = r.option(Reader::details)?,
            }
            Ok(())
        })
    }

    fn details(&mut self) -> Res<Details> {
        let mut d = Details::default();
        self.structure(&DETAILS_FIELDS, details_field, |r, field| {
            match field {
                0 => d.cached_tokens = r.option(Reader::count)?,
                _ => d.reasoning_tokens = r.option(Reader::count)?,
            }
            Ok(())
        })?;
        Ok(d)
    }

    /// A token count: any JSON value, only some of which are counts.
    #[inline]
    fn count(&mut self) -> Res<Count> {
        match self.peek().ok_or(Eof)? {
            c @ b'1'..=b'9' => {
                // The usual count: a few digits, then no fraction or exponent.
                let mut m = u64::from(c - b'0');
                let mut i = self.i + 1;
                while let Some(&d @ b'0'..=b'9') = self.b.get(i) {
                    m = m.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
                    i += 1;
                }
                if i - self.i <= 19 && !matches!(self.b.get(i), Some(b'.' | b'e' | b'E')) {
                    self.i = i;
                    return Ok(Count(Some(m)));
                }
                self.count_number()
            }
            b'-' | b'0' => self.count_number(),
            _ => self.other_value().map(|()| Count(None)),
        }
    }

    /// `message` or `response`: any JSON value; an object's `usage` member
    /// (the last one, when given twice).
    fn holder(&mut self) -> Res<Option<RawUsage>> {
        if self.peek() != Some(b'{') {
            return self.other_value().map(|()| None);
        }
        self.eat();
        let mut first = true;
        let mut usage = None;
        while self.next_key(&mut first)? {
            let key = self.key()?;
            self.colon()?;
            if field_index(key, holder_field).is_some() {
                usage = self.option(Reader::usage)?;
            } else {
                self.skip()?;
            }
        }
        self.eat();
        Ok(usage)
    }

    /// Any value, as serde's `deserialize_any` reads it for a visitor that
    /// keeps nothing: scalars read (numbers as serde reads them), array
    /// elements and object values skipped, object keys read.
    fn other_value(&mut self) -> Res<()> {
        match self.peek().ok_or(Eof)? {
            b'n' => {
                self.eat();
                self.literal(b"ull")
            }
            b't' => {
                self.eat();
                self.literal(b"rue")
            }
            b'f' => {
                self.eat();
                self.literal(b"alse")
            }
            b'-' | b'0'..=b'9' => self.count_number().map(drop),
            b'"' => {
                self.eat();
                self.string(true).map(drop)
            }
            b'[' => {
                self.eat();
                let mut first = true;
                while self.next_element(&mut first)? {
                    self.skip()?;
                }
                self.end_seq()
            }
            b'{' => {
                self.eat();
                let mut first = true;
                while self.next_key(&mut first)? {
                    self.key()?;
                    self.colon()?;
                    self.skip()?;
                }
                self.eat();
                Ok(())
            }
            _ => Err(Invalid),
        }
    }

    /// `choices`: an array; whether it is empty.
    fn choices(&mut self) -> Res<bool> {
        if self.peek().ok_or(Eof)? != b'[' {
            return Err(self.wrong_type());
        }
        self.eat();
        let mut first = true;
        let mut empty = true;
        while self.next_element(&mut first)? {
            self.skip()?;
            empty = false;
        }
        self.end_seq()?;
        Ok(empty)
    }

    /// Skips any value as serde's `ignore_value` does (without a stack on
    /// the heap: a bit per open container, up to [`MAX_DEPTH`]).
    fn skip(&mut self) -> Res<()> {
        let start = self.i;
        // Bit set: the container at that depth is an object.
        let mut objects = [0u64; MAX_DEPTH / 64];
        let mut depth = 0usize;
        let in_object = |objects: &[u64; MAX_DEPTH / 64], depth: usize| {
            let d = depth - 1;
            objects[d / 64] & (1 << (d % 64)) != 0
        };
        loop {
            // A value.
            let c = self.peek().ok_or(Eof)?;
            let opened = match c {
                b'n' => {
                    self.eat();
                    self.literal(b"ull")?;
                    false
                }
                b't' => {
                    self.eat();
                    self.literal(b"rue")?;
                    false
                }
                b'f' => {
                    self.eat();
                    self.literal(b"alse")?;
                    false
                }
                b'-' | b'0'..=b'9' => {
                    self.number()?;
                    false
                }
                b'"' => {
                    self.eat();
                    self.string(false)?;
                    false
                }
                b'[' | b'{' => {
                    if depth == MAX_DEPTH {
                        self.i = start;
                        return self.skip_deep();
                    }
                    let bit = 1 << (depth % 64);
                    if c == b'{' {
                        objects[depth / 64] |= bit;
                    } else {
                        objects[depth / 64] &= !bit;
                    }
                    depth += 1;
                    self.eat();
                    true
                }
                _ => return Err(Invalid),
            };
            if depth == 0 {
                return Ok(());
            }
            // After a value (a comma or a close may come) or an opening (a
            // close or the first member).
            let mut after_value = !opened;
            loop {
                let object = in_object(&objects, depth);
                match self.peek().ok_or(Eof)? {
                    b',' if after_value => {
                        self.eat();
                        break;
                    }
                    b']' if !object => {}
                    b'}' if object => {}
                    _ if after_value => return Err(Invalid),
                    _ => break,
                }
                self.eat();
                depth -= 1;
                if depth == 0 {
                    return Ok(());
                }
                after_value = true;
            }
            if in_object(&objects, depth) {
                match self.peek().ok_or(Eof)? {
                    b'"' => self.eat(),
                    _ => return Err(Invalid),
                }
                self.string(false)?;
                self.colon()?;
            }
        }
    }

    /// Skips a value nested deeper than [`MAX_DEPTH`] with `serde_json`.
    #[cold]
    fn skip_deep(&mut self) -> Res<()> {
        let rest = self.b.get(self.i..).unwrap_or_default();
        let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<IgnoredAny>();
        match values.next() {
            Some(Ok(_)) => {
                self.i += values.byte_offset();
                Ok(())
            }
            Some(Err(e)) if e.is_eof() => Err(Eof),
            Some(Err(_)) => Err(Invalid),
            None => Err(Eof),
        }
    }
}

/// Decimal digits as a `u64`, if they fit.
fn checked_integer(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |m, &c| {
        m.checked_mul(10)?.checked_add(u64::from(c - b'0'))
    })
}

/// The field a key names, compared as serde compares it: after decoding.
#[inline]
fn field_index((key, escaped): (&[u8], bool), named: fn(&[u8]) -> Option<usize>) -> Option<usize> {
    if escaped {
        field_index_escaped(key, named)
    } else {
        named(key)
    }
}

/// An escaped key (rare): decoded as far as a field name can go.
#[cold]
fn field_index_escaped(key: &[u8], named: fn(&[u8]) -> Option<usize>) -> Option<usize> {
    let mut buf = [0u8; 32];
    let mut len = 0;
    let mut i = 0;
    while let Some(&c) = key.get(i) {
        let byte = if c == b'\\' {
            let e = *key.get(i + 1)?;
            i += 2;
            match e {
                b'b' => 0x08,
                b'f' => 0x0c,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'u' => {
                    let hex = std::str::from_utf8(key.get(i..i + 4)?).ok()?;
                    i += 4;
                    // Field names are ASCII: anything else names none.
                    u8::try_from(u16::from_str_radix(hex, 16).ok()?)
                        .ok()
                        .filter(u8::is_ascii)?
                }
                other => other,
            }
        } else {
            i += 1;
            c
        };
        *buf.get_mut(len)? = byte;
        len += 1;
    }
    named(&buf[..len])
}

/// Matchers of field names: one `match` each (a length switch, then one
/// comparison), in the order of the `*_FIELDS` arrays.
fn usage_field(key: &[u8]) -> Option<usize> {
    let k = match key {
        b"prompt_tokens" => 0,
        b"completion_tokens" => 1,
        b"total_tokens" => 2,
        b"input_tokens" => 3,
        b"output_tokens" => 4,
        b"cache_read_input_tokens" => 5,
        b"cache_creation_input_tokens" => 6,
        b"prompt_tokens_details" => 7,
        b"completion_tokens_details" => 8,
        b"input_tokens_details" => 9,
        b"output_tokens_details" => 10,
        _ => return None,
    };
    Some(k)
}

fn details_field(key: &[u8]) -> Option<usize> {
    match key {
        b"cached_tokens" => Some(0),
        b"reasoning_tokens" => Some(1),
        _ => None,
    }
}

fn event_field(key: &[u8]) -> Option<usize> {
    let k = match key {
        b"usage" => 0,
        b"message" => 1,
        b"response" => 2,
        b"choices" => 3,
        b"error" => 4,
        _ => return None,
    };
    Some(k)
}

fn holder_field(key: &[u8]) -> Option<usize> {
    (key == b"usage").then_some(0)
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use proptest::prelude::*;
    use serde::Deserialize;
    use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

    use super::*;

    // ------------------------------------------------------------ the oracle

    /// How `serde_json` read a usage value (the code this parser replaced).
    fn serde_usage(b: &[u8], at: usize) -> Res<Option<RawUsage>> {
        let mut de = serde_json::Deserializer::from_slice(&b[at..]);
        match Option::<RawUsage>::deserialize(&mut de) {
            Ok(usage) => Ok(usage),
            Err(e) if e.is_eof() => Err(Eof),
            Err(_) => Err(Invalid),
        }
    }

    /// The event struct the SSE scanner read with `serde_json`.
    #[derive(Default, Deserialize)]
    #[serde(default)]
    struct SerdeEvent {
        usage: Option<RawUsage>,
        message: Option<Holder>,
        response: Option<Holder>,
        choices: Option<Vec<IgnoredAny>>,
        error: Option<IgnoredAny>,
    }

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

    fn serde_event(data: &[u8]) -> Option<Event> {
        let e = serde_json::from_slice::<SerdeEvent>(data).ok()?;
        Some(Event {
            usage: e.usage,
            message: e.message.and_then(|h| h.0),
            response: e.response.and_then(|h| h.0),
            choices: e.choices.map(|c| c.is_empty()),
            error: e.error.is_some(),
        })
    }

    /// The parser agrees with serde, but for the one deliberate difference:
    /// input that ends inside a skipped number where a digit must follow is
    /// `Eof`, not `Invalid` (one more digit makes serde say `Eof` too).
    fn assert_agrees(b: &[u8]) {
        let ours = usage_value(b, 0);
        let theirs = serde_usage(b, 0);
        if ours == theirs {
            return;
        }
        let extended = [b, b"0"].concat();
        assert!(
            ours == Err(Eof) && theirs == Err(Invalid) && serde_usage(&extended, 0) == Err(Eof),
            "{:?}: ours {ours:?}, serde {theirs:?}",
            String::from_utf8_lossy(b)
        );
    }

    fn assert_event_agrees(b: &[u8]) {
        assert_eq!(event(b), serde_event(b), "{:?}", String::from_utf8_lossy(b));
    }

    // ------------------------------------------------------------ examples

    fn count(n: u64) -> Option<Count> {
        Some(Count(Some(n)))
    }

    #[test]
    fn reads_every_provider_shape() {
        let u = usage_value(
            br#"{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,
                "prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0},
                "completion_tokens_details":{"reasoning_tokens":4}} tail"#,
            0,
        )
        .unwrap()
        .unwrap();
        assert_eq!(u.prompt_tokens, count(19));
        assert_eq!(u.total_tokens, count(29));
        assert_eq!(u.prompt_tokens_details.unwrap().cached_tokens, count(3));
        assert_eq!(
            u.completion_tokens_details.unwrap().reasoning_tokens,
            count(4)
        );
        let u = usage_value(
            br#"{"input_tokens": 25, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 1}"#,
            0,
        )
        .unwrap()
        .unwrap();
        assert_eq!(u.cache_read_input_tokens, count(100));
        assert_eq!(usage_value(b"null", 0), Ok(None));
        assert_eq!(usage_value(b"{}", 0), Ok(Some(RawUsage::default())));
    }

    #[test]
    fn counts_are_read_leniently_as_serde_read_them() {
        for (text, expected) in [
            ("12", Some(12)),
            ("12.0", Some(12)),
            ("12.9", Some(12)),
            ("1e3", Some(1000)),
            ("-0", Some(0)),
            ("-0.0", Some(0)),
            ("-1e-400", Some(0)),
            ("-1", None),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("\"7\"", None),
            ("true", None),
            ("[1]", None),
            ("{\"a\":1}", None),
        ] {
            let doc = format!("{{\"prompt_tokens\":{text}}}");
            let u = usage_value(doc.as_bytes(), 0).unwrap().unwrap();
            assert_eq!(u.prompt_tokens, Some(Count(expected)), "{text}");
            assert_agrees(doc.as_bytes());
        }
        // null is no count at all; a float out of range fails the object.
        let u = usage_value(br#"{"prompt_tokens":null}"#, 0)
            .unwrap()
            .unwrap();
        assert_eq!(u.prompt_tokens, None);
        assert_eq!(usage_value(br#"{"prompt_tokens":1e400}"#, 0), Err(Invalid));
    }

    #[test]
    fn serde_quirks_are_kept() {
        for doc in [
            // A struct may be an array of its fields, in declared order.
            &br#"[1, 2, 3, null, 5, 6, 7, [8, 9], {"cached_tokens": 10}]"#[..],
            br#"[1,2,3,4,5,6,7,null,null,null,null,12]"#,
            br#"{"prompt_tokens_details": [1, 2, 3]}"#,
            // A repeated field is an error, an escaped name is the name.
            br#"{"total_tokens":1,"total_tokens":2}"#,
            br#"{"total_tokens":1,"total\u005ftokens":2}"#,
            br#"{"prompt\u005Ftokens":7}"#,
            // Keys are checked as read strings, skipped strings less.
            br#"{"\ud800":1}"#,
            br#"{"x":"\ud800"}"#,
            b"{\"\xff\":1}",
            b"{\"x\":\"\xff\"}",
            b"{\"x\":\"a\x01\"}",
            // The same, past the first eight bytes of a string.
            b"{\"prompt_tokens\":\"abcdefgh\xffijklmnopq\"}",
            b"{\"abcdefghijkl\xffmnopqrstu\":1}",
            b"{\"abcdefghijklmnopqrstu\":\"abcdefghijkl\xffmnop\x01q\"}",
            "{\"prompt_tokens\":\"abcdefgh\u{e9}ijklmnopq\"}".as_bytes(),
            br#"{"x":[1,{"a":[true,false,null,"s",-1.5e-3]}],"y":{}}"#,
            br#"{"x":01}"#,
            br#"{"x":1e400}"#,
            br#"{"prompt_tokens":"\ud83d\ude00"}"#,
            br#"{"prompt_tokens":"\ud83d"}"#,
            br#"{"prompt_tokens":{"\ud83d":1}}"#,
            br#"{"prompt_tokens":[1,]}"#,
            br#"{"a":1,}"#,
            br#"{,"a":1}"#,
            br#"12"#,
            br#""usage""#,
            br#"{"prompt_tokens_details":5}"#,
        ] {
            assert_agrees(doc);
            for cut in 0..doc.len() {
                assert_agrees(&doc[..cut]);
            }
        }
    }

    #[test]
    fn a_number_cut_in_a_skipped_value_is_incomplete() {
        // serde said Invalid here, which lost a usage split after "0.".
        let doc = br#"{"prompt_tokens":5,"cost":0.00012}"#;
        let at = doc.iter().position(|&c| c == b'.').unwrap() + 1;
        assert_eq!(usage_value(&doc[..at], 0), Err(Eof));
        assert_eq!(serde_usage(&doc[..at], 0), Err(Invalid));
        assert_eq!(usage_value(&br#"{"x":-"#[..], 0), Err(Eof));
        assert_eq!(usage_value(&br#"{"x":[2e+"#[..], 0), Err(Eof));
    }

    #[test]
    fn field_matchers_follow_the_field_arrays() {
        for (names, named) in [
            (&USAGE_FIELDS[..], usage_field as fn(&[u8]) -> Option<usize>),
            (&DETAILS_FIELDS, details_field),
            (&EVENT_FIELDS, event_field),
            (&[&b"usage"[..]], holder_field),
        ] {
            for (k, name) in names.iter().enumerate() {
                assert_eq!(named(name), Some(k));
                assert_eq!(named(&name[1..]), None);
                assert_eq!(named(&[name, &b"x"[..]].concat()), None);
            }
        }
    }

    #[test]
    fn deep_nesting_is_skipped_without_recursion() {
        for depth in [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 100_000] {
            let doc = format!(
                "{{\"x\":{}{},\"total_tokens\":3}}",
                "[{\"a\":".repeat(depth / 2) + "[",
                "]".to_owned() + &"}]".repeat(depth / 2)
            );
            let u = usage_value(doc.as_bytes(), 0).unwrap().unwrap();
            assert_eq!(u.total_tokens, count(3), "{depth}");
            assert_agrees(doc.as_bytes());
            assert_eq!(usage_value(&doc.as_bytes()[..doc.len() - 20], 0), Err(Eof));
            let unclosed = format!("{{\"x\":{}}}", "[".repeat(depth));
            assert_agrees(unclosed.as_bytes());
        }
    }

    #[test]
    fn events() {
        for doc in [
            &br#"{"choices":[],"usage":{"prompt_tokens":1}}"#[..],
            br#"{"choices":[{"delta":{}}],"usage":{"prompt_tokens":1}} "#,
            br#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":3},"usage":null}}"#,
            br#"{"type":"message_start","message":{"usage":{"input_tokens":3}}}"#,
            br#"{"type":"response.completed","response":{"usage":{"input_tokens":3},"status":"x"}}"#,
            br#"{"error":{"message":"x"},"usage":{"prompt_tokens":1}}"#,
            br#"{"error":null,"usage":{"prompt_tokens":1}}"#,
            br#"{"usage":{"prompt_tokens":1}} x"#,
            br#"{"usage":{"prompt_tokens":1},"usage":null}"#,
            br#"{"choices":{},"usage":{"prompt_tokens":1}}"#,
            br#"{"message":1e400,"usage":{"prompt_tokens":1}}"#,
            br#"{"message":"\ud800","usage":{"prompt_tokens":1}}"#,
            br#"[{"prompt_tokens":5}, null, null, [], null]"#,
            br#"[{"prompt_tokens":5}, null, null, [], null, 1]"#,
        ] {
            assert_event_agrees(doc);
            for cut in 0..doc.len() {
                assert_event_agrees(&doc[..cut]);
            }
        }
    }

    // ------------------------------------------------------------ generated

    fn ws() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", "", "", " ", "\n", " \t\r\n "])
    }

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => (0u64..100_000).prop_map(|n| n.to_string()),
            1 => any::<u64>().prop_map(|n| n.to_string()),
            1 => any::<i64>().prop_map(|n| n.to_string()),
            1 => any::<f64>().prop_map(|f| format!("{f:?}")),
            1 => any::<f64>().prop_map(|f| format!("{f:e}")),
            2 => prop::sample::select(vec![
                "-0",
                "-0.0",
                "0.5",
                "12.0",
                "12.5",
                "1e3",
                "1E+2",
                "0.1e1",
                "1e400",
                "-1e400",
                "1e-400",
                "-1e-400",
                "18446744073709551615",
                "18446744073709551616",
                "18446744073709551615.5",
                "-9223372036854775808",
                "-9223372036854775809",
                "123456789012345678901234567890",
                "1.8446744073709552e19",
                "1.8446744073709551e19",
                "0.9999999999999999999",
                "2.9999999999999999999",
                "1000000000000000000000000e-10",
                "1e99999999999",
                "0e99999999999",
                "1e-99999999999",
            ])
            .prop_map(String::from),
        ]
    }

    fn string() -> impl Strategy<Value = Vec<u8>> {
        const VALID: [&[u8]; 12] = [
            b"a",
            b"usage",
            b" ",
            b"\\n",
            b"\\\"",
            b"\\\\",
            b"\\/",
            b"\\u00e9",
            b"\\u005f",
            b"\\ud83d\\ude00",
            "\u{e9}\u{2713}".as_bytes(),
            b"\x7f",
        ];
        // Valid for a skipped string only, or for none.
        const ODD: [&[u8]; 9] = [
            b"\\ud83d",
            b"\\ude00",
            b"\\ud83dx",
            b"\\x",
            b"\\u12g4",
            b"\xff",
            b"\xc3",
            b"\x01",
            b"\\",
        ];
        let piece = prop_oneof![
            8 => prop::sample::select(&VALID[..]),
            1 => prop::sample::select(&ODD[..]),
        ];
        prop::collection::vec(piece, 0..6).prop_map(|pieces| {
            let mut s = b"\"".to_vec();
            for p in pieces {
                s.extend_from_slice(p);
            }
            s.push(b'"');
            s
        })
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        let names: Vec<&'static [u8]> = USAGE_FIELDS
            .iter()
            .chain(&DETAILS_FIELDS)
            .chain(&EVENT_FIELDS)
            .copied()
            .chain([
                &b"audio_tokens"[..],
                b"cost",
                b"prompt\\u005ftokens",
                b"total_tokens\\u0000",
                b"id",
            ])
            .collect();
        prop_oneof![
            4 => prop::sample::select(names).prop_map(|k| [b"\"", k, b"\""].concat()),
            1 => string(),
        ]
    }

    fn scalar() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            6 => number().prop_map(String::into_bytes),
            2 => string(),
            1 => prop::sample::select(vec![&b"null"[..], b"true", b"false"]).prop_map(<[u8]>::to_vec),
        ]
    }

    fn join(open: u8, items: Vec<(Vec<u8>, &str, &str)>, close: u8) -> Vec<u8> {
        let mut out = vec![open];
        for (k, (item, before, after)) in items.into_iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            out.extend_from_slice(before.as_bytes());
            out.extend_from_slice(&item);
            out.extend_from_slice(after.as_bytes());
        }
        out.push(close);
        out
    }

    /// Any JSON value, usage-shaped more often than not.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        scalar().prop_recursive(4, 48, 6, |inner| {
            let member = (key(), ws(), inner.clone())
                .prop_map(|(k, w, v)| [k, w.into(), b":".to_vec(), v].concat());
            prop_oneof![
                prop::collection::vec((member, ws(), ws()), 0..6).prop_map(|m| join(b'{', m, b'}')),
                prop::collection::vec((inner, ws(), ws()), 0..5).prop_map(|m| join(b'[', m, b']')),
            ]
        })
    }

    /// A usage object (or array) with mostly known fields.
    fn usage_doc() -> impl Strategy<Value = Vec<u8>> {
        let details = prop_oneof![
            3 => prop::collection::vec(
                ((key(), ws()).prop_map(|(k, w)| [k, w.into(), b":".to_vec()].concat()), value()),
                0..3
            )
            .prop_map(|m| {
                let items = m.into_iter().map(|(k, v)| ([k, v].concat(), "", "")).collect();
                join(b'{', items, b'}')
            }),
            1 => value(),
        ];
        let field = prop_oneof![
            6 => scalar(),
            2 => details,
            1 => value(),
        ];
        let member = (key(), ws(), field.clone())
            .prop_map(|(k, w, v)| [k, w.into(), b":".to_vec(), v].concat());
        prop_oneof![
            8 => prop::collection::vec((member, ws(), ws()), 0..8).prop_map(|m| join(b'{', m, b'}')),
            1 => prop::collection::vec((field, ws(), ws()), 0..13).prop_map(|m| join(b'[', m, b']')),
            1 => value(),
        ]
    }

    fn event_doc() -> impl Strategy<Value = Vec<u8>> {
        let holder = prop_oneof![
            (usage_doc(), value()).prop_map(|(u, v)| [
                &b"{\"id\":"[..],
                &v,
                b",\"usage\":",
                &u,
                b"}"
            ]
            .concat()),
            value(),
        ];
        let member = prop_oneof![
            usage_doc().prop_map(|u| [&b"\"usage\":"[..], &u].concat()),
            holder
                .clone()
                .prop_map(|h| [&b"\"message\":"[..], &h].concat()),
            holder.prop_map(|h| [&b"\"response\":"[..], &h].concat()),
            value().prop_map(|v| [&b"\"choices\":"[..], &v].concat()),
            Just(b"\"choices\":[]".to_vec()),
            value().prop_map(|v| [&b"\"error\":"[..], &v].concat()),
            (key(), value()).prop_map(|(k, v)| [k, b":".to_vec(), v].concat()),
        ];
        prop::collection::vec((member, ws(), ws()), 0..5).prop_map(|m| join(b'{', m, b'}'))
    }

    /// A few random edits: bytes replaced, inserted, removed.
    fn mutate(doc: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
        const BYTES: &[u8] = b"{}[],:\"\\ 0123456789.eE+-ntfu\x01\xff";
        let mut out = doc.to_vec();
        for &(at, kind, byte) in edits {
            if out.is_empty() {
                break;
            }
            let at = at % out.len();
            let byte = BYTES[usize::from(byte) % BYTES.len()];
            match kind % 3 {
                0 => out[at] = byte,
                1 => out.insert(at, byte),
                _ => {
                    out.remove(at);
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn usage_values_read_as_serde_read_them(
            doc in usage_doc(),
            edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..3),
        ) {
            assert_agrees(&doc);
            for cut in 0..doc.len() {
                assert_agrees(&doc[..cut]);
            }
            let mutated = mutate(&doc, &edits);
            assert_agrees(&mutated);
            for cut in 0..mutated.len() {
                assert_agrees(&mutated[..cut]);
            }
        }

        #[test]
        fn events_read_as_serde_read_them(
            doc in event_doc(),
            edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..3),
        ) {
            assert_event_agrees(&doc);
            let mutated = mutate(&doc, &edits);
            assert_event_agrees(&mutated);
            for cut in (0..mutated.len()).step_by(3) {
                assert_event_agrees(&mutated[..cut]);
            }
        }

        #[test]
        fn usage_members_parse_as_before(
            doc in usage_doc(),
            before in ws(),
            after in ws(),
            cut in any::<prop::sample::Index>(),
        ) {
            let member = [&b"\"usage\""[..], before.as_bytes(), b":", after.as_bytes(), &doc, b"}"].concat();
            let member = &member[..cut.index(member.len() + 1)];
            let ours = crate::usage::json::parse_member(member);
            let theirs = serde_member(member);
            if ours != theirs {
                let extended = [member, b"0"].concat();
                prop_assert!(
                    ours == crate::usage::json::Parsed::Incomplete
                        && theirs == crate::usage::json::Parsed::Invalid
                        && serde_member(&extended) == crate::usage::json::Parsed::Incomplete,
                    "{:?}", String::from_utf8_lossy(member)
                );
            }
        }
    }

    const USAGE_KEY_LEN: usize = 7;

    /// `parse_member` as it was, on serde_json.
    fn serde_member(buf: &[u8]) -> crate::usage::json::Parsed {
        use crate::usage::json::{Parsed, skip_ws};
        let i = skip_ws(buf, USAGE_KEY_LEN);
        match buf.get(i) {
            None => return Parsed::Incomplete,
            Some(b':') => {}
            Some(_) => return Parsed::Invalid,
        }
        let i = skip_ws(buf, i + 1);
        let Some(value) = buf.get(i..).filter(|v| !v.is_empty()) else {
            return Parsed::Incomplete;
        };
        let mut de = serde_json::Deserializer::from_slice(value);
        match Option::<RawUsage>::deserialize(&mut de) {
            Ok(usage) => Parsed::Usage(usage),
            Err(e) if e.is_eof() => Parsed::Incomplete,
            Err(_) => Parsed::Invalid,
        }
    }
}
