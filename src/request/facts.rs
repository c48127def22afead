//! The facts of a request body: one derived struct ([`RequestBody`]), read
//! by the fast path ([`quick`]) or by serde ([`exact`]), and turned into a
//! [`RequestMeta`] in one place.
//!
//! To read one more fact: a field in `RequestBody` (serde reads it), an arm
//! in `quick` (or none: the fast path then gives up on bodies that have the
//! field, and serde reads them), and a line in `RequestBody::into_meta`.
//! The tests compare the two readers on every field of `RequestBody`.
//!
//! Images and audio in prompt text are priced with
//! [`media`]: by [`CountText`] in serde's reader, and by the
//! fast path where they are when their value says all (chat's `image_url`
//! object with its `detail`, `input_audio`: [`quick_media`]); the fast path
//! hands a field of prompt text with any other (a `detail` beside the image,
//! Anthropic's `source`) to serde's reader, that field alone.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::media::{self, Detail};
use super::{Content, RequestMeta};
use crate::ApiError;
use crate::json::{self, Cursor, Key, field};

/// The fields of a request body that tollgate reads, as serde reads them
/// (the fast path fills the same struct). Other fields are skipped.
#[derive(Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, expecting = "a JSON object")]
pub(super) struct RequestBody<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    n: Option<u64>,
    best_of: Option<u64>,
    stream_options: Option<StreamOptions>,
    // The fields whose strings are prompt text.
    messages: Text,
    prompt: Text,
    input: Text,
    system: Text,
    instructions: Text,
    // Definitions the upstream renders into the prompt: counted by their
    // JSON's length, keys and punctuation included.
    tools: Raw,
    functions: Raw,
    response_format: Raw,
    /// The Responses API's output settings (`text.format`: a JSON schema).
    text: Raw,
}

#[derive(Debug, Default, PartialEq, Eq, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Prompt text in a field's value: the characters of its strings, and 4
/// per integer (a token id: `prompt`/`input` given as token arrays), the
/// values under [`is_payload_key`] keys left out; and the tokens of the
/// images and audio in it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Text {
    /// The field is in the body (`null` included).
    present: bool,
    chars: u64,
    /// Tokens of images and audio ([`media`]).
    media: u64,
}

/// A value counted by the length of its JSON.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Raw {
    bytes: u64,
}

/// Keys inside prompt text whose values are not text: roles, part types,
/// ids, image, audio and file payloads.
fn is_payload_key(key: &[u8]) -> bool {
    matches!(
        key,
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
}

/// Where a body's `stream_options` is: what
/// [`request_usage`](crate::usage::request_usage) needs to ask for usage
/// without reading the body again. Offsets are byte indices in the body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum StreamOptionsAt {
    /// Not recorded: the request is not a streamed chat or completions
    /// request that left usage out, or its body cannot be edited in place
    /// (a key written with escapes, `stream_options` as an array).
    #[default]
    Unknown,
    /// Not in the body, whose object opens just before `open`.
    Absent { open: usize },
    /// `null`, at `start..end`.
    Null { start: usize, end: usize },
    /// An object that opens just before `open`, with its `include_usage`
    /// value at that span, if it has one.
    Object {
        open: usize,
        empty: bool,
        include_usage: Option<(usize, usize)>,
    },
}

/// [`RequestMeta::from_json`].
pub(super) fn read(body: &[u8]) -> Result<RequestMeta, ApiError> {
    let mut facts = RequestBody::default();
    if let Some(at) = quick(body, &mut facts) {
        return Ok(facts.into_meta(body.len(), || at));
    }
    let facts = exact(body).map_err(rejection)?;
    Ok(facts.into_meta(body.len(), || locate(body)))
}

/// The exact reader: serde.
pub(super) fn exact(body: &[u8]) -> Result<RequestBody<'_>, json::Rejected> {
    json::read(body)
}

fn rejection(rejected: json::Rejected) -> ApiError {
    let error = ApiError::invalid_request();
    let reason = rejected.error;
    match rejected.field {
        Some(field) => error.with_param(field).with_message(format!(
            "We could not parse the JSON body of your request: invalid `{field}`: {reason}"
        )),
        None => error.with_message(format!(
            "We could not parse the JSON body of your request: {reason}"
        )),
    }
}

impl RequestBody<'_> {
    /// The facts; `stream_options_at` is asked only for a request that
    /// [`request_usage`](crate::usage::request_usage) would edit.
    fn into_meta(
        self,
        body_len: usize,
        stream_options_at: impl FnOnce() -> StreamOptionsAt,
    ) -> RequestMeta {
        let texts = [
            self.messages,
            self.prompt,
            self.input,
            self.system,
            self.instructions,
        ];
        let chars = texts
            .iter()
            .map(|t| t.chars)
            .chain(
                [self.tools, self.functions, self.response_format, self.text]
                    .iter()
                    .map(|r| r.bytes),
            )
            .fold(0, u64::saturating_add);
        let media = texts.iter().map(|t| t.media).fold(0, u64::saturating_add);
        let include_usage = self.stream_options.and_then(|o| o.include_usage) == Some(true);
        let stream = self.stream == Some(true);
        // Chat and completions; the Responses and Anthropic APIs reject
        // `stream_options` (and report usage anyway).
        let chat = self.messages.present || self.prompt.present;
        RequestMeta {
            model: self.model.map(Cow::into_owned),
            stream,
            // Each API names its cap differently; a body that gives several
            // gets the largest, so the bound holds whichever the upstream reads.
            // (`None` is below every `Some`.)
            max_tokens: self
                .max_completion_tokens
                .max(self.max_tokens)
                .max(self.max_output_tokens),
            n: self.n,
            best_of: self.best_of,
            include_usage,
            prompt_tokens_estimate: chars.div_ceil(4).saturating_add(media),
            body_len,
            content: Content::Json,
            stream_options_at: if stream && !include_usage && chat {
                stream_options_at()
            } else {
                StreamOptionsAt::Unknown
            },
        }
    }
}

/// The fast path: fills `facts` from a plain body and says where its
/// `stream_options` is; `None` at anything else (`facts` then half filled).
pub(super) fn quick<'a>(body: &'a [u8], facts: &mut RequestBody<'a>) -> Option<StreamOptionsAt> {
    let mut c = Cursor::new(body);
    c.peek()?;
    let mut at = StreamOptionsAt::Absent { open: c.at() + 1 };
    // `move` of a reference: the closure holds one pointer, not one per
    // field it sets.
    let stream_options_at = &mut at;
    c.fields(move |c, key| {
        Some(match key {
            b"model" => field(&mut facts.model, c.string_or_null()?.map(Cow::Owned), 0),
            b"stream" => field(&mut facts.stream, c.bool_or_null()?, 1),
            b"max_tokens" => field(&mut facts.max_tokens, c.u64_or_null()?, 2),
            b"max_completion_tokens" => {
                field(&mut facts.max_completion_tokens, c.u64_or_null()?, 3)
            }
            b"max_output_tokens" => field(&mut facts.max_output_tokens, c.u64_or_null()?, 4),
            b"n" => field(&mut facts.n, c.u64_or_null()?, 13),
            b"best_of" => field(&mut facts.best_of, c.u64_or_null()?, 14),
            b"stream_options" => {
                (facts.stream_options, *stream_options_at) = quick_stream_options(c)?;
                1 << 5
            }
            b"messages" => field(&mut facts.messages, quick_text(c, body)?, 6),
            b"prompt" => field(&mut facts.prompt, quick_text(c, body)?, 7),
            b"input" => field(&mut facts.input, quick_text(c, body)?, 8),
            b"system" => field(&mut facts.system, quick_text(c, body)?, 9),
            b"instructions" => field(&mut facts.instructions, quick_text(c, body)?, 10),
            b"tools" => field(&mut facts.tools, quick_raw(c)?, 11),
            b"functions" => field(&mut facts.functions, quick_raw(c)?, 12),
            b"response_format" => field(&mut facts.response_format, quick_raw(c)?, 15),
            b"text" => field(&mut facts.text, quick_raw(c)?, 16),
            _ => return c.skip().map(|()| 0),
        })
    })?;
    c.end()?;
    Some(at)
}

/// A field of prompt text in `body`. Chat's images (`image_url` objects
/// with their `detail`) and audio are priced where they are ([`quick_media`]);
/// a value with other media in it is read again, that value alone, by
/// serde's reader, which prices them all.
fn quick_text(c: &mut Cursor<'_>, body: &[u8]) -> Option<Text> {
    c.peek()?;
    let from = c.at();
    let (media, whole) = (Cell::new(0u64), Cell::new(false));
    let chars = c.text(|key| match key {
        b"image_url" | b"input_audio" => {
            match quick_media(body, key) {
                Some(tokens) => media.set(media.get().saturating_add(tokens)),
                None => whole.set(true),
            }
            true
        }
        // Anthropic's `source`: an image, or not, by its sibling `type`.
        b"source" => {
            whole.set(true);
            false
        }
        _ => is_payload_key(key),
    })?;
    if whole.get() {
        let value = body.get(from..c.at())?;
        let mut de = serde_json::Deserializer::from_slice(value);
        return Text::deserialize(&mut de).ok();
    }
    Some(Text {
        present: true,
        chars,
        media: media.get(),
    })
}

/// The tokens of the image or audio under `key` (a slice of `body`), read
/// by serde as [`Part::count`] reads it, when its value holds all that
/// prices it: an `input_audio` object, or an `image_url` object with its
/// `detail` (without one, a `detail` beside it counts). `None` otherwise.
fn quick_media(body: &[u8], key: &[u8]) -> Option<u64> {
    // Past the key's closing quote, its colon and spaces.
    let end = (key.as_ptr() as usize).checked_sub(body.as_ptr() as usize)? + key.len() + 1;
    let mut c = Cursor::starting_at(body, end);
    (c.peek()? == b':').then(|| c.bump())?;
    c.peek()?;
    let mut de = serde_json::Deserializer::from_slice(body.get(c.at()..)?);
    if key == b"input_audio" {
        let audio = InputAudio::deserialize(&mut de).ok()?;
        let data = audio.data.as_deref().unwrap_or("");
        return Some(media::audio(data, audio.format.as_deref()));
    }
    let image = ImageUrl::deserialize(&mut de).ok()?;
    let url = image.url.as_deref().unwrap_or("");
    Some(media::openai_image(url, Detail::parse(&image.detail?)))
}

/// A value's JSON, measured.
fn quick_raw(c: &mut Cursor<'_>) -> Option<Raw> {
    c.peek()?;
    let from = c.at();
    c.skip()?;
    Some(Raw {
        bytes: (c.at() - from) as u64,
    })
}

/// `null`, or an object with at most one `include_usage`.
fn quick_stream_options(c: &mut Cursor<'_>) -> Option<(Option<StreamOptions>, StreamOptionsAt)> {
    c.peek()?;
    let start = c.at();
    if c.null()? {
        let end = c.at();
        return Some((None, StreamOptionsAt::Null { start, end }));
    }
    let mut options = StreamOptions::default();
    let (mut empty, mut include_usage) = (true, None);
    c.fields(|c, key| {
        empty = false;
        if key != b"include_usage" {
            return c.skip().map(|()| 0);
        }
        c.peek()?;
        let from = c.at();
        options.include_usage = c.bool_or_null()?;
        include_usage = Some((from, c.at()));
        Some(1)
    })?;
    let at = StreamOptionsAt::Object {
        open: start + 1,
        empty,
        include_usage,
    };
    Some((Some(options), at))
}

/// Where `stream_options` is in a body serde accepted, found with serde
/// (the exact reader's counterpart of what `quick` records as it reads).
pub(super) fn locate(body: &[u8]) -> StreamOptionsAt {
    let located = || {
        let members = json::members(body).ok()?;
        if members.iter().any(|(key, _)| key.is_escaped()) {
            return None;
        }
        let open = body.iter().position(|&b| b == b'{')? + 1;
        let Some((_, value)) = members.iter().find(|(key, _)| key.0 == "stream_options") else {
            return Some(StreamOptionsAt::Absent { open });
        };
        let text = value.get();
        let start = json::offset_in(body, text)?;
        let end = start + text.len();
        match text.as_bytes().first()? {
            b'n' => Some(StreamOptionsAt::Null { start, end }),
            b'{' => {
                let options = json::members(text.as_bytes()).ok()?;
                if options.iter().any(|(key, _)| key.is_escaped()) {
                    return None;
                }
                let include_usage = match options.iter().find(|(key, _)| key.0 == "include_usage") {
                    Some((_, value)) => {
                        let from = json::offset_in(body, value.get())?;
                        Some((from, from + value.get().len()))
                    }
                    None => None,
                };
                Some(StreamOptionsAt::Object {
                    open: start + 1,
                    empty: options.is_empty(),
                    include_usage,
                })
            }
            _ => None,
        }
    };
    located().unwrap_or_default()
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        let mut counts = Counts::default();
        CountText {
            counts: &mut counts,
        }
        .deserialize(d)?;
        Ok(Text {
            present: true,
            chars: counts.chars,
            media: counts.media,
        })
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        let raw = <&'de RawValue>::deserialize(d)?;
        Ok(Raw {
            bytes: raw.get().len() as u64,
        })
    }
}

/// What [`CountText`] sums.
#[derive(Debug, Default)]
struct Counts {
    chars: u64,
    media: u64,
}

/// Sums the characters of every string in a JSON value (and 4 per
/// integer), except under payload keys, and the tokens of its images and
/// audio.
struct CountText<'a> {
    counts: &'a mut Counts,
}

impl CountText<'_> {
    fn add<E>(self, n: u64) -> Result<(), E> {
        self.counts.chars = self.counts.chars.saturating_add(n);
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for CountText<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CountText<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        let n = s.chars().count() as u64;
        self.add(n)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.add(4)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.add(4)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let counts = self.counts;
        while seq
            .next_element_seed(CountText {
                counts: &mut *counts,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let counts = self.counts;
        let mut part = Part::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match key.as_bytes() {
                b"image_url" => part.image_url = Some(map.next_value()?),
                b"input_audio" => part.audio = Some(map.next_value()?),
                b"source" => part.source = Some(map.next_value()?),
                b"type" => part.kind = Some(map.next_value()?),
                b"detail" => part.detail = Some(map.next_value()?),
                key if is_payload_key(key) => {
                    map.next_value::<IgnoredAny>()?;
                }
                _ => map.next_value_seed(CountText {
                    counts: &mut *counts,
                })?,
            }
        }
        part.count(counts).map_err(de::Error::custom)
    }
}

/// The members of one object of prompt text that may make it an image or
/// an audio part, kept as written until the object ends (its `type` may
/// come after them).
#[derive(Default)]
struct Part<'de> {
    kind: Option<&'de RawValue>,
    image_url: Option<&'de RawValue>,
    detail: Option<&'de RawValue>,
    audio: Option<&'de RawValue>,
    source: Option<&'de RawValue>,
}

/// `image_url` as chat sends it (`{"url", "detail"}`).
#[derive(Deserialize)]
struct ImageUrl<'a> {
    #[serde(borrow)]
    url: Option<Cow<'a, str>>,
    #[serde(borrow)]
    detail: Option<Cow<'a, str>>,
}

/// `input_audio`: `{"data", "format"}`.
#[derive(Deserialize)]
struct InputAudio<'a> {
    #[serde(borrow)]
    data: Option<Cow<'a, str>>,
    #[serde(borrow)]
    format: Option<Cow<'a, str>>,
}

/// An Anthropic `source`: `{"type": "base64", "media_type", "data"}` or a
/// URL or file.
#[derive(Deserialize)]
struct Source<'a> {
    #[serde(borrow)]
    data: Option<Cow<'a, str>>,
}

/// A string, borrowed when it has no escapes (a `Cow<str>` alone is
/// always copied).
#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de> Part<'de> {
    /// Adds what the part costs to `counts`. A value of an unexpected shape
    /// costs the most its kind can (the upstream decides what it means).
    fn count(self, counts: &mut Counts) -> Result<(), serde_json::Error> {
        let string = |raw: Option<&'de RawValue>| {
            raw.and_then(|raw| serde_json::from_str::<Str<'de>>(raw.get()).ok())
                .map(|s| s.0)
        };
        let mut media = 0;
        if let Some(image) = self.image_url {
            // Chat: an object with `url` and `detail`; the Responses API: a
            // string, with `detail` beside it.
            let (url, detail) = match serde_json::from_str::<ImageUrl<'de>>(image.get()) {
                Ok(object) => (object.url, object.detail.or_else(|| string(self.detail))),
                Err(_) => (string(Some(image)), string(self.detail)),
            };
            let detail = detail.map_or(Detail::High, |d| Detail::parse(&d));
            media += media::openai_image(url.as_deref().unwrap_or(""), detail);
        }
        if let Some(audio) = self.audio
            && let Ok(audio) = serde_json::from_str::<InputAudio<'de>>(audio.get())
        {
            media += media::audio(audio.data.as_deref().unwrap_or(""), audio.format.as_deref());
        }
        if let Some(source) = self.source {
            if string(self.kind).as_deref() == Some("image") {
                let data = serde_json::from_str::<Source<'de>>(source.get())
                    .ok()
                    .and_then(|s| s.data);
                media += media::anthropic_image(data.as_deref());
            } else {
                // Not an image: text as any other.
                let mut de = serde_json::Deserializer::from_str(source.get());
                CountText {
                    counts: &mut *counts,
                }
                .deserialize(&mut de)?;
            }
        }
        counts.media = counts.media.saturating_add(media);
        Ok(())
    }
}
