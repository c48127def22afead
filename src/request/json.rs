//! The JSON scanner behind `RequestMeta::from_json`.
//!
//! Every request through the stack is read here, so it is written by hand:
//! no allocation but the `model` string (and, past 128 levels of nesting in
//! a skipped value, a spill of its bracket stack), no recursion but into the
//! containers of prompt text (at most 127 deep). Common bodies take the fast
//! path (`quick`); this module is the exact reader.
//!
//! It was a serde visitor over `serde_json::Deserializer::from_slice`, and it
//! keeps that visitor's contract to the byte: it accepts what serde_json
//! accepted, rejects what it rejected, and says why with serde_json's words at
//! serde_json's line and column. That means keeping serde_json's quirks too:
//! values the visitor ignored (`IgnoredAny`) are only checked for syntax (no
//! UTF-8 check, no surrogate check, no number range, no depth limit), while
//! values it read (keys, text, numbers) are checked fully. So each method
//! below mirrors the serde_json 1.0 routine it names, including which byte it
//! has consumed when it fails, since that byte is the column it reports. The
//! tests keep the serde visitor as an oracle and compare the two.

use std::fmt;

use super::RequestMeta;
use crate::ApiError;

mod quick;

/// [`RequestMeta::from_json`]: common bodies in one quick pass; anything
/// else, and every error, through the exact scanner.
pub(super) fn parse(body: &[u8]) -> Result<RequestMeta, ApiError> {
    if let Some(mut meta) = Scanner::new(body).quick_request() {
        meta.body_len = body.len();
        return Ok(meta);
    }
    let mut scanner = Scanner::new(body);
    let result = scanner.request();
    let mut meta = result.map_err(|e| {
        let error = ApiError::invalid_request();
        match scanner.field {
            Some(field) => error.with_param(field).with_message(format!(
                "We could not parse the JSON body of your request: \
                 invalid `{field}`: {e}"
            )),
            None => error.with_message(format!(
                "We could not parse the JSON body of your request: {e}"
            )),
        }
    })?;
    meta.body_len = body.len();
    Ok(meta)
}

/// Boxed so that `Parsed<()>` is one word on the happy path.
type Parsed<T> = Result<T, Box<JsonError>>;

/// Why a body is not the JSON object we read, and where.
#[derive(Debug)]
pub(super) struct JsonError {
    code: Code,
    /// 1-based, or 0 while unknown: a type error learns its position from
    /// the value it was found in (serde_json's `fix_position`).
    line: usize,
    /// Bytes before the error on its line (serde_json's convention).
    column: usize,
}

/// serde_json's `ErrorCode`s that these bodies can produce.
#[derive(Debug)]
enum Code {
    EofWhileParsingList,
    EofWhileParsingObject,
    EofWhileParsingString,
    EofWhileParsingValue,
    ExpectedColon,
    ExpectedListCommaOrEnd,
    ExpectedObjectCommaOrEnd,
    ExpectedSomeIdent,
    ExpectedSomeValue,
    InvalidEscape,
    InvalidNumber,
    NumberOutOfRange,
    InvalidUnicodeCodePoint,
    ControlCharacterWhileParsingString,
    KeyMustBeAString,
    LoneLeadingSurrogateInHexEscape,
    TrailingComma,
    TrailingCharacters,
    UnexpectedEndOfHexEscape,
    RecursionLimitExceeded,
    /// A value of the wrong type ("invalid type: …, expected …").
    Message(String),
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Code::EofWhileParsingList => "EOF while parsing a list",
            Code::EofWhileParsingObject => "EOF while parsing an object",
            Code::EofWhileParsingString => "EOF while parsing a string",
            Code::EofWhileParsingValue => "EOF while parsing a value",
            Code::ExpectedColon => "expected `:`",
            Code::ExpectedListCommaOrEnd => "expected `,` or `]`",
            Code::ExpectedObjectCommaOrEnd => "expected `,` or `}`",
            Code::ExpectedSomeIdent => "expected ident",
            Code::ExpectedSomeValue => "expected value",
            Code::InvalidEscape => "invalid escape",
            Code::InvalidNumber => "invalid number",
            Code::NumberOutOfRange => "number out of range",
            Code::InvalidUnicodeCodePoint => "invalid unicode code point",
            Code::ControlCharacterWhileParsingString => {
                "control character (\\u0000-\\u001F) found while parsing a string"
            }
            Code::KeyMustBeAString => "key must be a string",
            Code::LoneLeadingSurrogateInHexEscape => "lone leading surrogate in hex escape",
            Code::TrailingComma => "trailing comma",
            Code::TrailingCharacters => "trailing characters",
            Code::UnexpectedEndOfHexEscape => "unexpected end of hex escape",
            Code::RecursionLimitExceeded => "recursion limit exceeded",
            Code::Message(message) => message,
        })
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            self.code.fmt(f)
        } else {
            write!(
                f,
                "{} at line {} column {}",
                self.code, self.line, self.column
            )
        }
    }
}

/// A value of the wrong type, as serde names it in an error.
enum Unexpected {
    Unit,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Str(String),
    Seq,
    Map,
}

impl fmt::Display for Unexpected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unexpected::Unit => f.write_str("null"),
            Unexpected::Bool(b) => write!(f, "boolean `{b}`"),
            Unexpected::Unsigned(n) => write!(f, "integer `{n}`"),
            Unexpected::Signed(n) => write!(f, "integer `{n}`"),
            // serde_json prints the shortest representation that reads
            // back as the same float; `Debug` is close enough.
            Unexpected::Float(x) => write!(f, "floating point `{x:?}`"),
            Unexpected::Str(s) => write!(f, "string {s:?}"),
            Unexpected::Seq => f.write_str("sequence"),
            Unexpected::Map => f.write_str("map"),
        }
    }
}

/// An error whose position the caller fills in.
#[cold]
fn message(message: String) -> Box<JsonError> {
    Box::new(JsonError {
        code: Code::Message(message),
        line: 0,
        column: 0,
    })
}

#[cold]
fn invalid_type(unexpected: Unexpected, expected: &str) -> Box<JsonError> {
    message(format!("invalid type: {unexpected}, expected {expected}"))
}

/// A JSON number as serde_json reads it: integers that fit are `U64` (or
/// `I64` when negative), everything else (a fraction, an exponent, too many
/// digits, `-0`) is `F64`.
#[derive(Clone, Copy)]
enum Number {
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Number {
    fn invalid_type(self, expected: &str) -> Box<JsonError> {
        invalid_type(
            match self {
                Number::U64(n) => Unexpected::Unsigned(n),
                Number::I64(n) => Unexpected::Signed(n),
                Number::F64(x) => Unexpected::Float(x),
            },
            expected,
        )
    }
}

/// `significand * 10 + digit` would not fit in a u64 (serde_json's `overflow!`).
fn overflows_u64(significand: u64, digit: u64) -> bool {
    significand >= u64::MAX / 10 && (significand > u64::MAX / 10 || digit > u64::MAX % 10)
}

/// `10^e` as the literal `1e{e}` (serde_json's `POW10` table), for
/// `e <= 308`.
#[cold]
fn pow10(e: u32) -> Option<f64> {
    if e > 308 {
        return None;
    }
    let digits = [
        b'1',
        b'e',
        b'0' + (e / 100) as u8,
        b'0' + (e / 10 % 10) as u8,
        b'0' + (e % 10) as u8,
    ];
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

fn hex(b: u8) -> Option<u16> {
    (b as char).to_digit(16).map(|d| d as u16)
}

fn both<T>(value: Parsed<T>, end: Parsed<()>) -> Parsed<T> {
    match (value, end) {
        (Ok(value), Ok(())) => Ok(value),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// Where `Scanner::parse_str` puts the characters of a string.
trait StrSink {
    /// A run of the string as written: valid UTF-8, all ASCII if `ascii`.
    fn text(&mut self, text: &[u8], ascii: bool);
    /// The character an escape stands for.
    fn escaped(&mut self, c: char);
}

/// Counts the characters (Unicode scalar values) of a string.
struct CharCount(u64);

impl StrSink for CharCount {
    fn text(&mut self, text: &[u8], ascii: bool) {
        let chars = if ascii {
            text.len()
        } else {
            // Valid UTF-8: a character is any byte but a continuation byte.
            text.iter().filter(|&&b| (b as i8) >= -0x40).count()
        };
        self.0 = self.0.saturating_add(chars as u64);
    }

    fn escaped(&mut self, _: char) {
        self.0 = self.0.saturating_add(1);
    }
}

/// Keeps the string: the `model`, or a wrong-typed string for the error.
impl StrSink for String {
    fn text(&mut self, text: &[u8], ascii: bool) {
        if ascii {
            self.extend(text.iter().map(|&b| char::from(b)));
        } else if let Ok(text) = std::str::from_utf8(text) {
            // Always valid: `parse_str` checked it.
            self.push_str(text);
        }
    }

    fn escaped(&mut self, c: char) {
        self.push(c);
    }
}

/// An object key with escapes, unescaped into a small buffer: long enough
/// for every key we look for, and a longer key is none of them.
struct Unescaped {
    buf: [u8; 24],
    len: usize,
    too_long: bool,
}

impl StrSink for Unescaped {
    fn text(&mut self, text: &[u8], _: bool) {
        let end = self.len + text.len();
        match self.buf.get_mut(self.len..end) {
            Some(dst) if !self.too_long => {
                dst.copy_from_slice(text);
                self.len = end;
            }
            _ => self.too_long = true,
        }
    }

    fn escaped(&mut self, c: char) {
        self.text(c.encode_utf8(&mut [0; 4]).as_bytes(), false);
    }
}

impl Unescaped {
    /// The key, or `None` when it is longer than any key we know.
    fn get(&self) -> Option<&[u8]> {
        if self.too_long {
            None
        } else {
            self.buf.get(..self.len)
        }
    }
}

/// The top-level fields the request visitor reads.
#[derive(Clone, Copy)]
enum Field {
    Model,
    Stream,
    MaxTokens,
    MaxCompletionTokens,
    MaxOutputTokens,
    StreamOptions,
    // Fields whose strings are prompt text.
    Messages,
    Prompt,
    Input,
    System,
    Instructions,
    Tools,
    Functions,
    Other,
}

impl Field {
    fn of(key: Option<&[u8]>) -> Field {
        match key {
            Some(b"model") => Field::Model,
            Some(b"stream") => Field::Stream,
            Some(b"max_tokens") => Field::MaxTokens,
            Some(b"max_completion_tokens") => Field::MaxCompletionTokens,
            Some(b"max_output_tokens") => Field::MaxOutputTokens,
            Some(b"stream_options") => Field::StreamOptions,
            Some(b"messages") => Field::Messages,
            Some(b"prompt") => Field::Prompt,
            Some(b"input") => Field::Input,
            Some(b"system") => Field::System,
            Some(b"instructions") => Field::Instructions,
            Some(b"tools") => Field::Tools,
            Some(b"functions") => Field::Functions,
            _ => Field::Other,
        }
    }

    /// The name an error in this field's value is reported under.
    fn name(self) -> Option<&'static str> {
        Some(match self {
            Field::Model => "model",
            Field::Stream => "stream",
            Field::MaxTokens => "max_tokens",
            Field::MaxCompletionTokens => "max_completion_tokens",
            Field::MaxOutputTokens => "max_output_tokens",
            Field::StreamOptions => "stream_options",
            Field::Messages => "messages",
            Field::Prompt => "prompt",
            Field::Input => "input",
            Field::System => "system",
            Field::Instructions => "instructions",
            Field::Tools => "tools",
            Field::Functions => "functions",
            Field::Other => return None,
        })
    }
}

/// Keys inside prompt text whose values are not text: roles, part types,
/// ids, image, audio and file payloads.
fn is_payload_key(key: Option<&[u8]>) -> bool {
    matches!(
        key,
        Some(
            b"type"
                | b"role"
                | b"id"
                | b"tool_call_id"
                | b"image_url"
                | b"url"
                | b"input_audio"
                | b"file"
                | b"file_data"
                | b"data"
                | b"detail"
        )
    )
}

/// The open containers of a value being skipped, one bit each (set for an
/// object). Skipped values have no depth limit in serde_json, so the stack
/// spills to the heap past 128 levels, which no real request reaches.
struct Frames {
    top: u128,
    len: usize,
    spilled: Vec<u128>,
}

impl Frames {
    fn new() -> Frames {
        Frames {
            top: 0,
            len: 0,
            spilled: Vec::new(),
        }
    }

    fn push(&mut self, object: bool) {
        let slot = self.len % 128;
        if slot == 0 && self.len > 0 {
            self.spilled.push(self.top);
            self.top = 0;
        }
        self.top |= u128::from(object) << slot;
        self.len += 1;
    }

    /// The innermost open container (`true` for an object), closed.
    fn pop(&mut self) -> Option<bool> {
        self.len = self.len.checked_sub(1)?;
        let slot = self.len % 128;
        let object = (self.top >> slot) & 1 == 1;
        self.top &= !(1 << slot);
        if slot == 0 && self.len > 0 {
            self.top = self.spilled.pop().unwrap_or(0);
        }
        Some(object)
    }
}

/// Reads a request body the way the serde visitor over serde_json's
/// `Deserializer::from_slice` did (see the comment above `Parsed`).
pub(super) struct Scanner<'a> {
    bytes: &'a [u8],
    /// The next byte to read.
    index: usize,
    /// serde_json's recursion limit, spent by containers that are read (not
    /// skipped): 128 levels including the top-level object fail.
    remaining_depth: u8,
    /// Characters of prompt text so far; integers count 4.
    chars: u64,
    /// The known top-level field whose value is being read, if any: an
    /// error there is reported as that field's.
    field: Option<&'static str>,
}

impl<'a> Scanner<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Scanner<'a> {
        Scanner {
            bytes,
            index: 0,
            remaining_depth: 128,
            chars: 0,
            field: None,
        }
    }

    // Bytes and positions.

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.index).copied()
    }

    #[inline]
    fn peek_or_null(&self) -> u8 {
        self.peek().unwrap_or(0)
    }

    #[inline]
    fn eat(&mut self) {
        self.index += 1;
    }

    #[inline]
    fn next_char(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.index += 1;
        Some(b)
    }

    /// Skips JSON whitespace; the next byte.
    #[inline]
    fn parse_whitespace(&mut self) -> Option<u8> {
        loop {
            match self.peek() {
                Some(b' ' | b'\n' | b'\t' | b'\r') => self.eat(),
                other => return other,
            }
        }
    }

    /// The line and the column (bytes before `index` on its line) of `index`.
    #[cold]
    fn position_of_index(&self, index: usize) -> (usize, usize) {
        let before = self.bytes.get(..index).unwrap_or(self.bytes);
        let start_of_line = memchr::memrchr(b'\n', before).map_or(0, |newline| newline + 1);
        let line = 1 + memchr::memchr_iter(b'\n', &before[..start_of_line]).count();
        (line, before.len() - start_of_line)
    }

    /// An error at the last byte read.
    #[cold]
    fn error(&self, code: Code) -> Box<JsonError> {
        let (line, column) = self.position_of_index(self.index);
        Box::new(JsonError { code, line, column })
    }

    /// An error at the byte about to be read.
    #[cold]
    fn peek_error(&self, code: Code) -> Box<JsonError> {
        let (line, column) = self.position_of_index((self.index + 1).min(self.bytes.len()));
        Box::new(JsonError { code, line, column })
    }

    /// Gives a type error the position of the last byte read.
    #[cold]
    fn fix_position(&self, mut e: Box<JsonError>) -> Box<JsonError> {
        if e.line == 0 {
            (e.line, e.column) = self.position_of_index(self.index);
        }
        e
    }

    /// serde_json's `check_recursion!` on entering a container that is read.
    fn enter(&mut self) -> Parsed<()> {
        self.remaining_depth = self.remaining_depth.saturating_sub(1);
        if self.remaining_depth == 0 {
            return Err(self.peek_error(Code::RecursionLimitExceeded));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.remaining_depth += 1;
    }

    // The request.

    /// `deserialize_map` with the request visitor, then `Deserializer::end`.
    pub(super) fn request(&mut self) -> Parsed<RequestMeta> {
        let Some(peek) = self.parse_whitespace() else {
            return Err(self.peek_error(Code::EofWhileParsingValue));
        };
        let meta = if peek == b'{' {
            self.enter()?;
            self.eat();
            let meta = self.request_fields();
            self.leave();
            let end = self.end_map();
            both(meta, end)
        } else {
            Err(self.peek_invalid_type("a JSON object"))
        };
        let meta = meta.map_err(|e| self.fix_position(e))?;
        match self.parse_whitespace() {
            Some(_) => Err(self.peek_error(Code::TrailingCharacters)),
            None => Ok(meta),
        }
    }

    /// The request visitor's `visit_map`: the known fields, in any order;
    /// a repeated field's last value wins (prompt text adds up).
    fn request_fields(&mut self) -> Parsed<RequestMeta> {
        let mut meta = RequestMeta::default();
        let (mut max_tokens, mut max_completion, mut max_output) = (None, None, None);
        let mut first = true;
        while self.next_key(&mut first)? {
            let field = self.parse_key(Field::of)?;
            self.field = field.name();
            self.parse_object_colon()?;
            match field {
                Field::Model => meta.model = self.option(Self::string)?,
                Field::Stream => meta.stream = self.option(Self::bool)?.unwrap_or(false),
                Field::MaxTokens => max_tokens = self.option(Self::u64)?,
                Field::MaxCompletionTokens => max_completion = self.option(Self::u64)?,
                Field::MaxOutputTokens => max_output = self.option(Self::u64)?,
                Field::StreamOptions => {
                    meta.include_usage = self
                        .option(Self::stream_options)?
                        .flatten()
                        .unwrap_or(false);
                }
                Field::Messages
                | Field::Prompt
                | Field::Input
                | Field::System
                | Field::Instructions
                | Field::Tools
                | Field::Functions => self.count_value()?,
                Field::Other => self.ignore_value()?,
            }
            // The value was fine: a later syntax error is not this field's.
            self.field = None;
        }
        meta.max_tokens = max_completion.or(max_tokens).or(max_output);
        meta.prompt_tokens_estimate = self.chars.div_ceil(4);
        Ok(meta)
    }

    // Objects and arrays (`MapAccess`, `SeqAccess`, `end_map`, `end_seq`).

    /// `MapAccess::next_key` up to the key: `false` at the closing `}` (left
    /// for `end_map`), `true` with the key's opening quote consumed.
    fn next_key(&mut self, first: &mut bool) -> Parsed<bool> {
        let Some(peek) = self.parse_whitespace() else {
            return Err(self.peek_error(Code::EofWhileParsingObject));
        };
        let quote = if peek == b'}' {
            return Ok(false);
        } else if *first {
            *first = false;
            Some(peek)
        } else if peek == b',' {
            self.eat();
            self.parse_whitespace()
        } else {
            return Err(self.peek_error(Code::ExpectedObjectCommaOrEnd));
        };
        match quote {
            Some(b'"') => {
                self.eat();
                Ok(true)
            }
            Some(b'}') => Err(self.peek_error(Code::TrailingComma)),
            Some(_) => Err(self.peek_error(Code::KeyMustBeAString)),
            None => Err(self.peek_error(Code::EofWhileParsingValue)),
        }
    }

    /// `SeqAccess::next_element` up to the element: `false` at the closing
    /// `]` (left for `end_seq`), `true` before an element.
    fn next_element(&mut self, first: &mut bool) -> Parsed<bool> {
        let Some(peek) = self.parse_whitespace() else {
            return Err(self.peek_error(Code::EofWhileParsingList));
        };
        if peek == b']' {
            Ok(false)
        } else if *first {
            *first = false;
            Ok(true)
        } else if peek == b',' {
            self.eat();
            match self.parse_whitespace() {
                Some(b']') => Err(self.peek_error(Code::TrailingComma)),
                Some(_) => Ok(true),
                None => Err(self.peek_error(Code::EofWhileParsingValue)),
            }
        } else {
            Err(self.peek_error(Code::ExpectedListCommaOrEnd))
        }
    }

    fn parse_object_colon(&mut self) -> Parsed<()> {
        match self.parse_whitespace() {
            Some(b':') => {
                self.eat();
                Ok(())
            }
            Some(_) => Err(self.peek_error(Code::ExpectedColon)),
            None => Err(self.peek_error(Code::EofWhileParsingObject)),
        }
    }

    fn end_map(&mut self) -> Parsed<()> {
        match self.parse_whitespace() {
            Some(b'}') => {
                self.eat();
                Ok(())
            }
            Some(b',') => Err(self.peek_error(Code::TrailingComma)),
            Some(_) => Err(self.peek_error(Code::TrailingCharacters)),
            None => Err(self.peek_error(Code::EofWhileParsingObject)),
        }
    }

    fn end_seq(&mut self) -> Parsed<()> {
        match self.parse_whitespace() {
            Some(b']') => {
                self.eat();
                Ok(())
            }
            Some(b',') => {
                self.eat();
                match self.parse_whitespace() {
                    Some(b']') => Err(self.peek_error(Code::TrailingComma)),
                    _ => Err(self.peek_error(Code::TrailingCharacters)),
                }
            }
            Some(_) => Err(self.peek_error(Code::TrailingCharacters)),
            None => Err(self.peek_error(Code::EofWhileParsingList)),
        }
    }

    // Typed values of the known fields.

    /// `deserialize_option`: `null` is `None`, anything else is read by `read`.
    fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> Parsed<T>) -> Parsed<Option<T>> {
        if self.parse_whitespace() == Some(b'n') {
            self.eat();
            self.parse_ident(b"ull")?;
            return Ok(None);
        }
        read(self).map(Some)
    }

    /// `deserialize_string`.
    fn string(&mut self) -> Parsed<String> {
        let value = match self.parse_whitespace() {
            None => return Err(self.peek_error(Code::EofWhileParsingValue)),
            Some(b'"') => {
                self.eat();
                let mut s = String::new();
                self.parse_str(&mut s).map(|()| s)
            }
            Some(_) => Err(self.peek_invalid_type("a string")),
        };
        value.map_err(|e| self.fix_position(e))
    }

    /// `deserialize_bool`.
    fn bool(&mut self) -> Parsed<bool> {
        let value = match self.parse_whitespace() {
            None => return Err(self.peek_error(Code::EofWhileParsingValue)),
            Some(b't') => {
                self.eat();
                self.parse_ident(b"rue").map(|()| true)
            }
            Some(b'f') => {
                self.eat();
                self.parse_ident(b"alse").map(|()| false)
            }
            Some(_) => Err(self.peek_invalid_type("a boolean")),
        };
        value.map_err(|e| self.fix_position(e))
    }

    /// `deserialize_u64` (`deserialize_number`).
    fn u64(&mut self) -> Parsed<u64> {
        let number = match self.parse_whitespace() {
            None => return Err(self.peek_error(Code::EofWhileParsingValue)),
            Some(b'-') => {
                self.eat();
                self.parse_integer(false)?
            }
            Some(b'0'..=b'9') => self.parse_integer(true)?,
            Some(_) => return Err(self.peek_invalid_type("u64")),
        };
        match number {
            Number::U64(n) => Ok(n),
            Number::I64(n) => Err(self.fix_position(message(format!(
                "invalid value: {}, expected u64",
                Unexpected::Signed(n)
            )))),
            Number::F64(x) => Err(self.fix_position(invalid_type(Unexpected::Float(x), "u64"))),
        }
    }

    /// `deserialize_struct` for `struct StreamOptions { include_usage:
    /// Option<bool> }` (an object, or an array of its one field, as serde
    /// allows): `include_usage`.
    fn stream_options(&mut self) -> Parsed<Option<bool>> {
        let value = match self.parse_whitespace() {
            None => return Err(self.peek_error(Code::EofWhileParsingValue)),
            Some(b'[') => {
                self.enter()?;
                self.eat();
                let include_usage = match self.parse_whitespace() {
                    Some(b']') => Err(message(
                        "invalid length 0, expected struct StreamOptions with 1 element".into(),
                    )),
                    Some(_) => self.option(Self::bool),
                    None => Err(self.peek_error(Code::EofWhileParsingList)),
                };
                self.leave();
                let end = self.end_seq();
                both(include_usage, end)
            }
            Some(b'{') => {
                self.enter()?;
                self.eat();
                let include_usage = self.stream_options_fields();
                self.leave();
                let end = self.end_map();
                both(include_usage, end)
            }
            Some(_) => Err(self.peek_invalid_type("struct StreamOptions")),
        };
        value.map_err(|e| self.fix_position(e))
    }

    /// The derived `visit_map` of `StreamOptions`.
    fn stream_options_fields(&mut self) -> Parsed<Option<bool>> {
        let mut include_usage = None;
        let mut first = true;
        while self.next_key(&mut first)? {
            if self.parse_key(|key| key == Some(b"include_usage"))? {
                if include_usage.is_some() {
                    return Err(message("duplicate field `include_usage`".into()));
                }
                self.parse_object_colon()?;
                include_usage = Some(self.option(Self::bool)?);
            } else {
                self.parse_object_colon()?;
                self.ignore_value()?;
            }
        }
        Ok(include_usage.flatten())
    }

    /// serde_json's `peek_invalid_type`: reads the value that is not what
    /// the field expects, to name it in the error.
    #[cold]
    fn peek_invalid_type(&mut self, expected: &str) -> Box<JsonError> {
        let e = match self.peek_or_null() {
            b'n' => {
                self.eat();
                if let Err(e) = self.parse_ident(b"ull") {
                    return e;
                }
                invalid_type(Unexpected::Unit, expected)
            }
            b't' => {
                self.eat();
                if let Err(e) = self.parse_ident(b"rue") {
                    return e;
                }
                invalid_type(Unexpected::Bool(true), expected)
            }
            b'f' => {
                self.eat();
                if let Err(e) = self.parse_ident(b"alse") {
                    return e;
                }
                invalid_type(Unexpected::Bool(false), expected)
            }
            b'-' => {
                self.eat();
                match self.parse_integer(false) {
                    Ok(n) => n.invalid_type(expected),
                    Err(e) => return e,
                }
            }
            b'0'..=b'9' => match self.parse_integer(true) {
                Ok(n) => n.invalid_type(expected),
                Err(e) => return e,
            },
            b'"' => {
                self.eat();
                let mut s = String::new();
                match self.parse_str(&mut s) {
                    Ok(()) => invalid_type(Unexpected::Str(s), expected),
                    Err(e) => return e,
                }
            }
            b'[' => invalid_type(Unexpected::Seq, expected),
            b'{' => invalid_type(Unexpected::Map, expected),
            _ => self.peek_error(Code::ExpectedSomeValue),
        };
        self.fix_position(e)
    }

    fn parse_ident(&mut self, ident: &[u8]) -> Parsed<()> {
        for &expected in ident {
            match self.next_char() {
                None => return Err(self.error(Code::EofWhileParsingValue)),
                Some(next) if next != expected => return Err(self.error(Code::ExpectedSomeIdent)),
                Some(_) => {}
            }
        }
        Ok(())
    }

    // Prompt text.

    /// `deserialize_any` with the text counter: every string's characters
    /// and 4 per integer go to `self.chars`; a payload key's value is skipped.
    fn count_value(&mut self) -> Parsed<()> {
        let Some(peek) = self.parse_whitespace() else {
            return Err(self.peek_error(Code::EofWhileParsingValue));
        };
        match peek {
            b'n' => {
                self.eat();
                self.parse_ident(b"ull")
            }
            b't' => {
                self.eat();
                self.parse_ident(b"rue")
            }
            b'f' => {
                self.eat();
                self.parse_ident(b"alse")
            }
            b'-' | b'0'..=b'9' => {
                let positive = peek != b'-';
                if !positive {
                    self.eat();
                }
                // An integer is a token id (`prompt`/`input` given as token
                // arrays): one token, so four "characters".
                if !matches!(self.parse_integer(positive)?, Number::F64(_)) {
                    self.chars = self.chars.saturating_add(4);
                }
                Ok(())
            }
            b'"' => {
                self.eat();
                let mut count = CharCount(0);
                self.parse_str(&mut count)?;
                self.chars = self.chars.saturating_add(count.0);
                Ok(())
            }
            b'[' => {
                self.enter()?;
                self.eat();
                let mut first = true;
                let mut elements = Ok(());
                loop {
                    match self.next_element(&mut first) {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => {
                            elements = Err(e);
                            break;
                        }
                    }
                    if let Err(e) = self.count_value() {
                        elements = Err(e);
                        break;
                    }
                }
                self.leave();
                let end = self.end_seq();
                both(elements, end)
            }
            b'{' => {
                self.enter()?;
                self.eat();
                let entries = self.count_entries();
                self.leave();
                let end = self.end_map();
                both(entries, end)
            }
            _ => Err(self.peek_error(Code::ExpectedSomeValue)),
        }
    }

    fn count_entries(&mut self) -> Parsed<()> {
        let mut first = true;
        while self.next_key(&mut first)? {
            let payload = self.parse_key(is_payload_key)?;
            self.parse_object_colon()?;
            if payload {
                self.ignore_value()?;
            } else {
                self.count_value()?;
            }
        }
        Ok(())
    }

    // Numbers (`parse_integer` and what it calls, without serde_json's
    // `float_roundtrip` and `arbitrary_precision` features).

    /// After the sign.
    fn parse_integer(&mut self, positive: bool) -> Parsed<Number> {
        match self.next_char() {
            None => Err(self.error(Code::EofWhileParsingValue)),
            Some(b'0') => match self.peek_or_null() {
                // There can be only one leading '0'.
                b'0'..=b'9' => Err(self.peek_error(Code::InvalidNumber)),
                _ => self.parse_number(positive, 0),
            },
            Some(c @ b'1'..=b'9') => {
                let mut significand = u64::from(c - b'0');
                loop {
                    match self.peek_or_null() {
                        c @ b'0'..=b'9' => {
                            let digit = u64::from(c - b'0');
                            if overflows_u64(significand, digit) {
                                return self
                                    .parse_long_integer(positive, significand)
                                    .map(Number::F64);
                            }
                            self.eat();
                            significand = significand * 10 + digit;
                        }
                        _ => return self.parse_number(positive, significand),
                    }
                }
            }
            Some(_) => Err(self.error(Code::InvalidNumber)),
        }
    }

    fn parse_number(&mut self, positive: bool, significand: u64) -> Parsed<Number> {
        Ok(match self.peek_or_null() {
            b'.' => Number::F64(self.parse_decimal(positive, significand, 0)?),
            b'e' | b'E' => Number::F64(self.parse_exponent(positive, significand, 0)?),
            _ if positive => Number::U64(significand),
            _ => {
                let negated = (significand as i64).wrapping_neg();
                // Below i64::MIN, and `-0`, are floats.
                if negated >= 0 {
                    Number::F64(-(significand as f64))
                } else {
                    Number::I64(negated)
                }
            }
        })
    }

    #[cold]
    fn parse_decimal(
        &mut self,
        positive: bool,
        mut significand: u64,
        exponent_before: i32,
    ) -> Parsed<f64> {
        self.eat();
        let mut exponent_after = 0i32;
        while let c @ b'0'..=b'9' = self.peek_or_null() {
            let digit = u64::from(c - b'0');
            if overflows_u64(significand, digit) {
                let exponent = exponent_before.wrapping_add(exponent_after);
                return self.parse_decimal_overflow(positive, significand, exponent);
            }
            self.eat();
            significand = significand * 10 + digit;
            exponent_after -= 1;
        }
        // At least one digit after the decimal point.
        if exponent_after == 0 {
            return Err(match self.peek() {
                Some(_) => self.peek_error(Code::InvalidNumber),
                None => self.peek_error(Code::EofWhileParsingValue),
            });
        }
        let exponent = exponent_before.wrapping_add(exponent_after);
        match self.peek_or_null() {
            b'e' | b'E' => self.parse_exponent(positive, significand, exponent),
            _ => self.f64_from_parts(positive, significand, exponent),
        }
    }

    #[cold]
    fn parse_exponent(
        &mut self,
        positive: bool,
        significand: u64,
        starting_exp: i32,
    ) -> Parsed<f64> {
        self.eat();
        let positive_exp = match self.peek_or_null() {
            b'+' => {
                self.eat();
                true
            }
            b'-' => {
                self.eat();
                false
            }
            _ => true,
        };
        let mut exp = match self.next_char() {
            None => return Err(self.error(Code::EofWhileParsingValue)),
            // A digit follows the exponent mark.
            Some(c @ b'0'..=b'9') => i32::from(c - b'0'),
            Some(_) => return Err(self.error(Code::InvalidNumber)),
        };
        while let c @ b'0'..=b'9' = self.peek_or_null() {
            self.eat();
            let digit = i32::from(c - b'0');
            if exp >= i32::MAX / 10 && (exp > i32::MAX / 10 || digit > i32::MAX % 10) {
                return self.parse_exponent_overflow(positive, significand == 0, positive_exp);
            }
            exp = exp * 10 + digit;
        }
        let final_exp = if positive_exp {
            starting_exp.saturating_add(exp)
        } else {
            starting_exp.saturating_sub(exp)
        };
        self.f64_from_parts(positive, significand, final_exp)
    }

    /// serde_json's float, including when it is out of range (an error).
    #[cold]
    fn f64_from_parts(
        &mut self,
        positive: bool,
        significand: u64,
        mut exponent: i32,
    ) -> Parsed<f64> {
        let mut f = significand as f64;
        loop {
            match pow10(exponent.unsigned_abs()) {
                Some(pow) => {
                    if exponent >= 0 {
                        f *= pow;
                        if f.is_infinite() {
                            return Err(self.error(Code::NumberOutOfRange));
                        }
                    } else {
                        f /= pow;
                    }
                    break;
                }
                None => {
                    if f == 0.0 {
                        break;
                    }
                    if exponent >= 0 {
                        return Err(self.error(Code::NumberOutOfRange));
                    }
                    f /= 1e308;
                    exponent += 308;
                }
            }
        }
        Ok(if positive { f } else { -f })
    }

    /// An integer past u64: the rest of its digits scale it.
    #[cold]
    fn parse_long_integer(&mut self, positive: bool, significand: u64) -> Parsed<f64> {
        let mut exponent = 0i32;
        loop {
            match self.peek_or_null() {
                b'0'..=b'9' => {
                    self.eat();
                    exponent = exponent.wrapping_add(1);
                }
                b'.' => return self.parse_decimal(positive, significand, exponent),
                b'e' | b'E' => return self.parse_exponent(positive, significand, exponent),
                _ => return self.f64_from_parts(positive, significand, exponent),
            }
        }
    }

    #[cold]
    fn parse_decimal_overflow(
        &mut self,
        positive: bool,
        significand: u64,
        exponent: i32,
    ) -> Parsed<f64> {
        // Further digits are ignored.
        while let b'0'..=b'9' = self.peek_or_null() {
            self.eat();
        }
        match self.peek_or_null() {
            b'e' | b'E' => self.parse_exponent(positive, significand, exponent),
            _ => self.f64_from_parts(positive, significand, exponent),
        }
    }

    #[cold]
    fn parse_exponent_overflow(
        &mut self,
        positive: bool,
        zero_significand: bool,
        positive_exp: bool,
    ) -> Parsed<f64> {
        // An error rather than infinity.
        if !zero_significand && positive_exp {
            return Err(self.error(Code::NumberOutOfRange));
        }
        while let b'0'..=b'9' = self.peek_or_null() {
            self.eat();
        }
        Ok(if positive { 0.0 } else { -0.0 })
    }

    // Strings.

    /// `SliceRead::parse_str`, after the opening quote: checks escapes,
    /// control characters and UTF-8, and hands the characters to `sink`.
    fn parse_str(&mut self, sink: &mut impl StrSink) -> Parsed<()> {
        // serde_json checks UTF-8 once the string is complete, so other
        // errors come first, and it points back from the closing quote to
        // the first bad byte: keep the unescaped length and where that is.
        let mut len = 0usize;
        let mut invalid = None;
        loop {
            let start = self.index;
            let (end, ascii) = scan_plain(self.bytes, start);
            self.index = end;
            let Some(stop) = self.peek() else {
                return Err(self.error(Code::EofWhileParsingString));
            };
            if stop != b'"' && stop != b'\\' {
                self.eat();
                return Err(self.error(Code::ControlCharacterWhileParsingString));
            }
            let run = &self.bytes[start..end];
            if invalid.is_none() {
                if ascii {
                    sink.text(run, true);
                } else {
                    match std::str::from_utf8(run) {
                        Ok(_) => sink.text(run, false),
                        Err(e) => invalid = Some(len + e.valid_up_to()),
                    }
                }
            }
            len += run.len();
            self.eat();
            if stop == b'"' {
                break;
            }
            let c = self.parse_escape()?;
            len += c.len_utf8();
            if invalid.is_none() {
                sink.escaped(c);
            }
        }
        match invalid {
            None => Ok(()),
            Some(at) => {
                let (line, column) = self.position_of_index(self.index);
                Err(Box::new(JsonError {
                    code: Code::InvalidUnicodeCodePoint,
                    line,
                    column: column.saturating_sub(len - at),
                }))
            }
        }
    }

    /// A key, after its opening quote (`parse_str`), as `classify` sees
    /// it: unescaped, or `None` when longer than any key we look for. Most
    /// keys are plain ASCII, seen where they are in the body.
    fn parse_key<K>(&mut self, classify: impl FnOnce(Option<&[u8]>) -> K) -> Parsed<K> {
        let start = self.index;
        let (end, ascii) = scan_plain(self.bytes, start);
        if ascii && self.bytes.get(end) == Some(&b'"') {
            self.index = end + 1;
            return Ok(classify(self.bytes.get(start..end)));
        }
        let mut key = Unescaped {
            buf: [0; 24],
            len: 0,
            too_long: false,
        };
        self.parse_str(&mut key)?;
        Ok(classify(key.get()))
    }

    /// After the backslash.
    fn parse_escape(&mut self) -> Parsed<char> {
        let Some(ch) = self.next_char() else {
            return Err(self.error(Code::EofWhileParsingString));
        };
        Ok(match ch {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\x08',
            b'f' => '\x0c',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => return self.parse_unicode_escape(),
            _ => return Err(self.error(Code::InvalidEscape)),
        })
    }

    /// After `\u`: a character, or a surrogate pair written as two escapes.
    fn parse_unicode_escape(&mut self) -> Parsed<char> {
        let n = self.decode_hex_escape()?;
        if (0xDC00..=0xDFFF).contains(&n) {
            // A trailing surrogate first: serde_json's wording.
            return Err(self.error(Code::LoneLeadingSurrogateInHexEscape));
        }
        let code = if (0xD800..=0xDBFF).contains(&n) {
            for expected in [b'\\', b'u'] {
                match self.peek() {
                    None => return Err(self.error(Code::EofWhileParsingString)),
                    Some(b) => {
                        self.eat();
                        if b != expected {
                            return Err(self.error(Code::UnexpectedEndOfHexEscape));
                        }
                    }
                }
            }
            let n2 = self.decode_hex_escape()?;
            if !(0xDC00..=0xDFFF).contains(&n2) {
                return Err(self.error(Code::LoneLeadingSurrogateInHexEscape));
            }
            ((u32::from(n - 0xD800) << 10) | u32::from(n2 - 0xDC00)) + 0x1_0000
        } else {
            u32::from(n)
        };
        // Always a char: surrogates were handled above.
        char::from_u32(code).ok_or_else(|| self.error(Code::InvalidUnicodeCodePoint))
    }

    fn decode_hex_escape(&mut self) -> Parsed<u16> {
        match self.bytes.get(self.index..self.index + 4) {
            Some(&[a, b, c, d]) => {
                self.index += 4;
                match (hex(a), hex(b), hex(c), hex(d)) {
                    (Some(a), Some(b), Some(c), Some(d)) => Ok(a << 12 | b << 8 | c << 4 | d),
                    _ => Err(self.error(Code::InvalidEscape)),
                }
            }
            _ => {
                self.index = self.bytes.len();
                Err(self.error(Code::EofWhileParsingString))
            }
        }
    }

    // Skipped values (`IgnoredAny`).

    /// serde_json's `ignore_value`: syntax only, at any depth; strings are
    /// not checked for UTF-8 or surrogates, numbers not for range.
    fn ignore_value(&mut self) -> Parsed<()> {
        let mut frames = Frames::new();
        loop {
            let Some(peek) = self.parse_whitespace() else {
                return Err(self.peek_error(Code::EofWhileParsingValue));
            };
            let opened = match peek {
                b'n' => {
                    self.eat();
                    self.parse_ident(b"ull")?;
                    None
                }
                b't' => {
                    self.eat();
                    self.parse_ident(b"rue")?;
                    None
                }
                b'f' => {
                    self.eat();
                    self.parse_ident(b"alse")?;
                    None
                }
                b'-' => {
                    self.eat();
                    self.ignore_integer()?;
                    None
                }
                b'0'..=b'9' => {
                    self.ignore_integer()?;
                    None
                }
                b'"' => {
                    self.eat();
                    self.ignore_str()?;
                    None
                }
                b'[' | b'{' => {
                    self.eat();
                    Some(peek == b'{')
                }
                _ => return Err(self.peek_error(Code::ExpectedSomeValue)),
            };
            // After a value: a comma, or the ends of its containers.
            let (mut accept_comma, mut object) = match opened {
                Some(object) => (false, object),
                None => match frames.pop() {
                    Some(object) => (true, object),
                    None => return Ok(()),
                },
            };
            loop {
                match self.parse_whitespace() {
                    Some(b',') if accept_comma => {
                        self.eat();
                        break;
                    }
                    Some(b']') if !object => {}
                    Some(b'}') if object => {}
                    Some(_) if accept_comma => {
                        return Err(self.peek_error(if object {
                            Code::ExpectedObjectCommaOrEnd
                        } else {
                            Code::ExpectedListCommaOrEnd
                        }));
                    }
                    Some(_) => break,
                    None => {
                        return Err(self.peek_error(if object {
                            Code::EofWhileParsingObject
                        } else {
                            Code::EofWhileParsingList
                        }));
                    }
                }
                self.eat();
                object = match frames.pop() {
                    Some(object) => object,
                    None => return Ok(()),
                };
                accept_comma = true;
            }
            if object {
                match self.parse_whitespace() {
                    Some(b'"') => self.eat(),
                    Some(_) => return Err(self.peek_error(Code::KeyMustBeAString)),
                    None => return Err(self.peek_error(Code::EofWhileParsingObject)),
                }
                self.ignore_str()?;
                match self.parse_whitespace() {
                    Some(b':') => self.eat(),
                    Some(_) => return Err(self.peek_error(Code::ExpectedColon)),
                    None => return Err(self.peek_error(Code::EofWhileParsingObject)),
                }
            }
            frames.push(object);
        }
    }

    /// After the sign.
    fn ignore_integer(&mut self) -> Parsed<()> {
        match self.next_char() {
            Some(b'0') => {
                // There can be only one leading '0'.
                if let b'0'..=b'9' = self.peek_or_null() {
                    return Err(self.peek_error(Code::InvalidNumber));
                }
            }
            Some(b'1'..=b'9') => {
                while let b'0'..=b'9' = self.peek_or_null() {
                    self.eat();
                }
            }
            _ => return Err(self.error(Code::InvalidNumber)),
        }
        match self.peek_or_null() {
            b'.' => self.ignore_decimal(),
            b'e' | b'E' => self.ignore_exponent(),
            _ => Ok(()),
        }
    }

    fn ignore_decimal(&mut self) -> Parsed<()> {
        self.eat();
        let mut at_least_one_digit = false;
        while let b'0'..=b'9' = self.peek_or_null() {
            self.eat();
            at_least_one_digit = true;
        }
        if !at_least_one_digit {
            return Err(self.peek_error(Code::InvalidNumber));
        }
        match self.peek_or_null() {
            b'e' | b'E' => self.ignore_exponent(),
            _ => Ok(()),
        }
    }

    fn ignore_exponent(&mut self) -> Parsed<()> {
        self.eat();
        if let b'+' | b'-' = self.peek_or_null() {
            self.eat();
        }
        // A digit follows the exponent mark.
        match self.next_char() {
            Some(b'0'..=b'9') => {}
            _ => return Err(self.error(Code::InvalidNumber)),
        }
        while let b'0'..=b'9' = self.peek_or_null() {
            self.eat();
        }
        Ok(())
    }

    /// `SliceRead::ignore_str`, after the opening quote: escapes and
    /// control characters are checked, UTF-8 is not.
    fn ignore_str(&mut self) -> Parsed<()> {
        loop {
            self.index = scan_plain(self.bytes, self.index).0;
            match self.peek() {
                None => return Err(self.error(Code::EofWhileParsingString)),
                Some(b'"') => {
                    self.eat();
                    return Ok(());
                }
                Some(b'\\') => {
                    self.eat();
                    match self.next_char() {
                        None => return Err(self.error(Code::EofWhileParsingString)),
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                        Some(b'u') => {
                            self.decode_hex_escape()?;
                        }
                        Some(_) => return Err(self.error(Code::InvalidEscape)),
                    }
                }
                Some(_) => return Err(self.error(Code::ControlCharacterWhileParsingString)),
            }
        }
    }
}

/// The end of the run of plain string bytes from `start`: the index of the
/// first quote, backslash or control character (or of the end), and
/// whether the run is all ASCII.
///
/// Most strings are short (keys, roles, model names): up to 16 bytes are
/// read a word at a time. Longer ones (prompts) go to `scan_long`.
#[inline]
pub(super) fn scan_plain(bytes: &[u8], start: usize) -> (usize, bool) {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut i = start;
    for _ in 0..2 {
        let Some(word) = bytes.get(i..i + 8) else {
            break;
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
