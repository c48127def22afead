//! The serde visitor `from_json` replaced, kept as the oracle the scanner
//! is compared with.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::RequestMeta;
use crate::ApiError;

pub(super) fn from_json(body: &[u8]) -> Result<RequestMeta, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut failed_field = None;
    let mut meta = de
        .deserialize_map(MetaVisitor {
            failed_field: &mut failed_field,
        })
        .and_then(|meta| de.end().map(|()| meta))
        .map_err(|e| {
            let error = ApiError::invalid_request();
            match failed_field {
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

/// Reads the known fields; on a field's error, leaves its name in
/// `failed_field` so the rejection can say which field is wrong.
struct MetaVisitor<'a> {
    failed_field: &'a mut Option<&'static str>,
}

/// The fields `MetaVisitor` reads, by name.
const FIELDS: [&str; 13] = [
    "model",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "stream_options",
    "messages",
    "prompt",
    "input",
    "system",
    "instructions",
    "tools",
    "functions",
];

/// An object key, borrowed from the body unless it has escapes (a
/// `Cow<str>` key would always be copied into a `String`).
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key<'de>, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v)))
            }
        }

        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Visitor<'de> for MetaVisitor<'_> {
    type Value = RequestMeta;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RequestMeta, A::Error> {
        let mut meta = RequestMeta::default();
        let (mut max_tokens, mut max_completion, mut max_output) = (None, None, None);
        let mut chars = 0u64;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            *self.failed_field = FIELDS.iter().find(|f| **f == key).copied();
            match &*key {
                "model" => meta.model = map.next_value::<Option<String>>()?,
                "stream" => meta.stream = map.next_value::<Option<bool>>()?.unwrap_or(false),
                "max_tokens" => max_tokens = map.next_value::<Option<u64>>()?,
                "max_completion_tokens" => max_completion = map.next_value::<Option<u64>>()?,
                "max_output_tokens" => max_output = map.next_value::<Option<u64>>()?,
                "stream_options" => {
                    meta.include_usage = map
                        .next_value::<Option<StreamOptions>>()?
                        .and_then(|o| o.include_usage)
                        .unwrap_or(false)
                }
                "messages" | "prompt" | "input" | "system" | "instructions" | "tools"
                | "functions" => map.next_value_seed(CountText { chars: &mut chars })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            // The value was fine: a later syntax error is not this field's.
            *self.failed_field = None;
        }
        meta.max_tokens = max_completion.or(max_tokens).or(max_output);
        meta.prompt_tokens_estimate = chars.div_ceil(4);
        Ok(meta)
    }
}

#[derive(serde::Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Sums the characters of every string in a JSON value, except under keys
/// that hold non-text payloads (images, audio, ids).
struct CountText<'a> {
    chars: &'a mut u64,
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
        *self.chars += s.chars().count() as u64;
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    // An integer is a token id (`prompt`/`input` given as token arrays, as
    // some embedding clients send them): one token, so four "characters".
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        *self.chars += 4;
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        *self.chars += 4;
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(CountText {
                chars: &mut *self.chars,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match &*key {
                "type" | "role" | "id" | "tool_call_id" | "image_url" | "url" | "input_audio"
                | "file" | "file_data" | "data" | "detail" => {
                    map.next_value::<IgnoredAny>()?;
                }
                _ => map.next_value_seed(CountText {
                    chars: &mut *self.chars,
                })?,
            }
        }
        Ok(())
    }
}
