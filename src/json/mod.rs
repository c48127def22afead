//! The crate's one JSON reader: a fast path for the facts tollgate reads,
//! and `serde_json` as the exact reader behind it.
//!
//! Every request through a gateway has its body read for the facts the
//! layers need ([`RequestMeta`](crate::RequestMeta): model, stream, output
//! caps, a prompt estimate), and every response has its `usage` object read
//! ([`usage`](crate::usage)). A body a client gets wrong must be rejected
//! with a message that says what is wrong and where.
//!
//! Each fact is declared once, as a field of a derived `Deserialize` struct
//! of borrowed fields (`Cow<str>`, numbers; everything else skipped as
//! `serde::de::IgnoredAny`), and read one of two ways:
//!
//! 1. **The fast path** ([`Cursor`]): one pass over the bytes that takes the
//!    common body (plain keys, values of the expected types) and gives up,
//!    with `None`, at anything else. It never explains anything.
//! 2. **The exact reader**: `serde_json` into the derived struct, whenever
//!    the fast path gives up. It decides what is valid, and its errors are
//!    the ones the client sees, in serde's own words, at serde's line and
//!    column ([`read`] adds the name of the field they are in).
//!
//! Request facts are read so in `request/facts.rs`, usage objects in
//! `usage/parse.rs` (the usage-bearing SSE events, one or two per stream,
//! by serde alone).
//!
//! # Why a fast path
//!
//! Every request is read before it is admitted, and every JSON answer for
//! its usage. On the `request_meta` bench's bodies, serde into the same
//! struct takes up to three times the fast path's time (as long on a body
//! of mostly non-ASCII text, whose characters both must count), and serde
//! alone made the `usage` bench's cost per JSON answer a quarter higher.
//!
//! # Why serde behind it
//!
//! A hand-written reader that must also explain every error ends up a copy
//! of serde's error messages, byte for byte. So the fast path only has to be
//! right about what it accepts: the property tests (`request/tests`,
//! `usage/parse.rs`) hold it to serde there, the same facts for every body
//! both take, and nothing taken that serde rejects.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor,
};
use serde_json::value::RawValue;

mod cursor;

pub(crate) use self::cursor::{Cursor, field};

/// A body serde rejected, and the field the error is in.
#[derive(Debug)]
pub(crate) struct Rejected {
    /// serde's error: its message, line and column.
    pub(crate) error: serde_json::Error,
    /// The struct's field whose value (or duplicate key) is at fault.
    pub(crate) field: Option<&'static str>,
}

/// Reads `bytes` as one JSON document of type `T`, a struct that must be a
/// JSON object (serde would also take an array of its fields). An error
/// names the field it is in.
pub(crate) fn read<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Rejected> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut field = None;
    let value = T::deserialize(Named {
        de: &mut de,
        field: &mut field,
    })
    .and_then(|value| de.end().map(|()| value));
    value.map_err(|error| Rejected { error, field })
}

/// Why a value could not be read from a prefix of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The input ends before the value does: more bytes may complete it.
    Eof,
    /// The value is not valid JSON, or not of the expected shape.
    Invalid,
}

/// Reads the value at the start of `bytes` as a `T`; what follows it is not
/// looked at. [`Stop::Eof`] when serde's error is the end of the input, and
/// also when the input ends inside a number where JSON needs one more digit
/// (`-`, `1.`, `2e`, `2e+`): serde calls that invalid inside a skipped
/// value, and a `"cost": 0.00012` cut after its `0.` by a frame boundary
/// would lose the whole usage object.
pub(crate) fn read_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Stop> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match T::deserialize(&mut de) {
        Ok(value) => Ok(value),
        Err(e) if e.is_eof() => Err(Stop::Eof),
        Err(e) if e.is_syntax() && ends_in_a_number::<T>(bytes) => Err(Stop::Eof),
        Err(_) => Err(Stop::Invalid),
    }
}

/// Whether one more digit at the end of `bytes` makes serde's syntax error
/// an end of input (rare: only a prefix cut in a number gets here).
#[cold]
fn ends_in_a_number<T: DeserializeOwned>(bytes: &[u8]) -> bool {
    if !matches!(bytes.last(), Some(b'-' | b'+' | b'.' | b'e' | b'E')) {
        return false;
    }
    let longer = [bytes, b"0"].concat();
    let mut de = serde_json::Deserializer::from_slice(&longer);
    matches!(T::deserialize(&mut de), Err(e) if e.is_eof())
}

/// The members of the JSON object `json`, in order: each key and its value
/// as written (a slice of `json`). Serde reads them, so duplicate keys are
/// all there.
pub(crate) fn members(json: &[u8]) -> Result<Vec<(Key<'_>, &RawValue)>, serde_json::Error> {
    struct Members;

    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(Key<'de>, &'de RawValue)>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut members = Vec::new();
            while let Some(member) = map.next_entry()? {
                members.push(member);
            }
            Ok(members)
        }
    }

    let mut de = serde_json::Deserializer::from_slice(json);
    let members = de.deserialize_map(Members)?;
    de.end()?;
    Ok(members)
}

/// Where `part` (a slice of `whole`, as [`members`] gives them) starts in
/// `whole`.
pub(crate) fn offset_in(whole: &[u8], part: &str) -> Option<usize> {
    let offset = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (offset + part.len() <= whole.len()).then_some(offset)
}

/// An object key, borrowed from the body unless it has escapes (a
/// `Cow<str>` would always be copied into a `String`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Key<'a>(pub(crate) Cow<'a, str>);

impl Key<'_> {
    /// Whether the key was written with escapes: its bytes in the body are
    /// not its name.
    pub(crate) fn is_escaped(&self) -> bool {
        matches!(self.0, Cow::Owned(_))
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key<'de>, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }

        d.deserialize_str(KeyVisitor)
    }
}

/// The top-level deserializer of [`read`]: serde_json's, reading a derived
/// struct as a map (so an array is "not a JSON object") and noting, as each
/// key is read, whether it names one of the struct's fields, so that an
/// error in its value can name the field.
struct Named<'r, 'de> {
    de: &'r mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
    field: &'r mut Option<&'static str>,
}

impl<'de> Deserializer<'de> for Named<'_, 'de> {
    type Error = serde_json::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, serde_json::Error> {
        self.de.deserialize_map(NamedVisitor {
            visitor,
            fields,
            field: self.field,
        })
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, serde_json::Error> {
        self.deserialize_struct("", &[], visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

struct NamedVisitor<'r, V> {
    visitor: V,
    fields: &'static [&'static str],
    field: &'r mut Option<&'static str>,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for NamedVisitor<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_map(NamedMap {
            map,
            fields: self.fields,
            field: self.field,
        })
    }
}

struct NamedMap<'r, A> {
    map: A,
    fields: &'static [&'static str],
    field: &'r mut Option<&'static str>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for NamedMap<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let Some(Key(key)) = self.map.next_key::<Key<'de>>()? else {
            return Ok(None);
        };
        *self.field = self.fields.iter().copied().find(|field| *field == key);
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        let value = self.map.next_value_seed(seed)?;
        // The value was fine: a later syntax error is not this field's.
        *self.field = None;
        Ok(value)
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(expecting = "a JSON object")]
    struct Facts<'a> {
        #[serde(borrow)]
        name: Option<Cow<'a, str>>,
        n: Option<u64>,
    }

    fn rejected(body: &str) -> (Option<&'static str>, String) {
        let e = read::<Facts<'_>>(body.as_bytes()).unwrap_err();
        (e.field, e.error.to_string())
    }

    #[test]
    fn errors_are_serdes_and_name_their_field() {
        assert_eq!(
            read::<Facts<'_>>(br#"{"name":"a","other":[1,{"x":null}],"n":3}"#).unwrap(),
            Facts {
                name: Some(Cow::Borrowed("a")),
                n: Some(3)
            }
        );
        assert_eq!(
            rejected(r#"{"name":"a","n":-1}"#),
            (
                Some("n"),
                "invalid value: integer `-1`, expected u64 at line 1 column 18".into()
            )
        );
        assert_eq!(
            rejected(r#"{"n":1,"n":2}"#),
            (Some("n"), "duplicate field `n` at line 1 column 10".into())
        );
        assert_eq!(
            rejected(r#"{"n":1,"other":tru}"#),
            (None, "expected ident at line 1 column 19".into())
        );
        assert_eq!(
            rejected(r#"{"n":1} x"#),
            (None, "trailing characters at line 1 column 9".into())
        );
        // A struct is an object here, not an array of its fields.
        assert_eq!(
            rejected(r#"["a",1]"#),
            (
                None,
                "invalid type: sequence, expected a JSON object at line 1 column 0".into()
            )
        );
        // An escaped key names its field too.
        assert_eq!(rejected(r#"{"\u006e":"1"}"#).0, Some("n"));
    }

    #[test]
    fn a_prefix_cut_in_a_number_is_incomplete() {
        #[derive(Debug, Deserialize)]
        struct Usage {
            #[serde(rename = "n")]
            _n: Option<u64>,
        }
        for (text, stop) in [
            (r#"{"n":5,"cost":0."#, Stop::Eof),
            (r#"{"x":-"#, Stop::Eof),
            (r#"{"x":[2e+"#, Stop::Eof),
            (r#"{"n":1"#, Stop::Eof),
            (r#"{"n":5,"cost":0.x"#, Stop::Invalid),
            (r#"{"n":-1}"#, Stop::Invalid),
            (r#"{"n":tru}"#, Stop::Invalid),
        ] {
            let read = read_prefix::<Usage>(text.as_bytes());
            assert_eq!(read.unwrap_err(), stop, "{text}");
        }
        assert!(read_prefix::<Usage>(br#"{"n":1} and more"#).is_ok());
    }

    #[test]
    fn members_are_found_where_they_are() {
        let body = br#" {"a" : 1 , "b\u0063":{"x":null}, "a":"s"} "#;
        let members = members(body).unwrap();
        let found: Vec<_> = members
            .iter()
            .map(|(key, value)| {
                let at = offset_in(body, value.get()).unwrap();
                (key.0.as_ref(), key.is_escaped(), at, value.get())
            })
            .collect();
        assert_eq!(
            found,
            [
                ("a", false, 8, "1"),
                ("bc", true, 22, r#"{"x":null}"#),
                ("a", false, 38, r#""s""#),
            ]
        );
        assert!(super::members(b"[1]").is_err());
        assert_eq!(offset_in(b"abc", "x"), None);
    }
}
