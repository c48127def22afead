//! Reading `usage` objects, and the few SSE events that hold one, with
//! `serde_json` (through [`crate::json`]) into derived structs:
//! [`RawUsage`] for a usage object under any provider's names, [`Event`]
//! for the members of an event that can hold one.
//!
//! An event is read once or twice per stream (the usage chunk, Anthropic's
//! `message_start` and `message_delta`), by serde alone. The `usage` of a
//! JSON body, read once per answer, takes the fast path first
//! ([`json::Cursor`]): the `usage` bench's cost per JSON answer grew by a
//! quarter with serde alone. What the scanners need beyond a struct:
//!
//! - [`usage_value`] reads a usage object from a prefix of a JSON body that
//!   may still be arriving: [`Stop::Eof`] means "wait for more bytes",
//!   also when the bytes end inside a number of a member it does not know
//!   (see [`json::read_prefix`]);
//! - [`event`] reads one whole event's data, or nothing.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::report::{Count, Details, RawUsage};
pub(crate) use crate::json::Stop;
use crate::json::{self, Cursor, field};

/// Reads the value at `at` in `b` as an `Option<RawUsage>` (`null` is
/// `None`); what follows the value is not looked at.
pub(crate) fn usage_value(b: &[u8], at: usize) -> Result<Option<RawUsage>, Stop> {
    let b = b.get(at..).unwrap_or_default();
    match quick_usage(&mut Cursor::new(b)) {
        Some(usage) => Ok(usage),
        None => json::read_prefix(b),
    }
}

/// The fast path of [`usage_value`]: a usage object of plain counts.
fn quick_usage(c: &mut Cursor<'_>) -> Option<Option<RawUsage>> {
    if c.null()? {
        return Some(None);
    }
    let mut u = RawUsage::default();
    c.fields(|c, key| {
        Some(match key {
            b"prompt_tokens" => field(&mut u.prompt_tokens, quick_count(c)?, 0),
            b"completion_tokens" => field(&mut u.completion_tokens, quick_count(c)?, 1),
            b"total_tokens" => field(&mut u.total_tokens, quick_count(c)?, 2),
            b"input_tokens" => field(&mut u.input_tokens, quick_count(c)?, 3),
            b"output_tokens" => field(&mut u.output_tokens, quick_count(c)?, 4),
            b"cache_read_input_tokens" => field(&mut u.cache_read_input_tokens, quick_count(c)?, 5),
            b"cache_creation_input_tokens" => {
                field(&mut u.cache_creation_input_tokens, quick_count(c)?, 6)
            }
            b"prompt_tokens_details" => field(&mut u.prompt_tokens_details, quick_details(c)?, 7),
            b"completion_tokens_details" => {
                field(&mut u.completion_tokens_details, quick_details(c)?, 8)
            }
            b"input_tokens_details" => field(&mut u.input_tokens_details, quick_details(c)?, 9),
            b"output_tokens_details" => field(&mut u.output_tokens_details, quick_details(c)?, 10),
            _ => return c.skip().map(|()| 0),
        })
    })?;
    Some(Some(u))
}

fn quick_details(c: &mut Cursor<'_>) -> Option<Option<Details>> {
    if c.null()? {
        return Some(None);
    }
    let mut d = Details::default();
    c.fields(|c, key| {
        Some(match key {
            b"cached_tokens" => field(&mut d.cached_tokens, quick_count(c)?, 0),
            b"reasoning_tokens" => field(&mut d.reasoning_tokens, quick_count(c)?, 1),
            _ => return c.skip().map(|()| 0),
        })
    })?;
    Some(Some(d))
}

/// A count as serde reads a plain one: an integer that fits a `u64`, or
/// `null` (no count).
fn quick_count(c: &mut Cursor<'_>) -> Option<Option<Count>> {
    Some(c.u64_or_null()?.map(|n| Count(Some(n))))
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
/// `None` if it is not one of the shape of [`EventData`].
pub(crate) fn event(data: &[u8]) -> Option<Event> {
    let e = serde_json::from_slice::<EventData>(data).ok()?;
    // `message` and `response` may be any value; an object's `usage` (the
    // last one, when given twice) is read.
    let held = |holder: Option<Value>| match holder.as_ref().and_then(|h| h.get("usage")) {
        Some(usage) => Option::<RawUsage>::deserialize(usage).ok(),
        None => Some(None),
    };
    Some(Event {
        usage: e.usage,
        message: held(e.message)?,
        response: held(e.response)?,
        choices: e.choices.map(|c| c.is_empty()),
        error: e.error.is_some(),
    })
}

/// The members of an event that can hold usage, as serde reads them.
#[derive(Default, Deserialize)]
#[serde(default)]
struct EventData {
    usage: Option<RawUsage>,
    message: Option<Value>,
    response: Option<Value>,
    choices: Option<Vec<IgnoredAny>>,
    error: Option<IgnoredAny>,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::any;

    use super::*;

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
        assert_eq!(usage_value(b"x:{}", 2), Ok(Some(RawUsage::default())));
    }

    #[test]
    fn counts_are_read_leniently() {
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
        }
        // null is no count at all; a float out of range fails the object.
        let u = usage_value(br#"{"prompt_tokens":null}"#, 0)
            .unwrap()
            .unwrap();
        assert_eq!(u.prompt_tokens, None);
        assert_eq!(
            usage_value(br#"{"prompt_tokens":1e400}"#, 0),
            Err(Stop::Invalid)
        );
    }

    #[test]
    fn serde_quirks_are_kept() {
        let read = |doc: &[u8]| usage_value(doc, 0).map(|u| u.unwrap_or_default());
        // A struct may be an array of its fields, in declared order.
        let u = read(br#"[1, 2, 3, null, 5, 6, 7, [8, 9], {"cached_tokens": 10}]"#).unwrap();
        assert_eq!((u.prompt_tokens, u.output_tokens), (count(1), count(5)));
        assert_eq!(u.prompt_tokens_details.unwrap().reasoning_tokens, count(9));
        assert_eq!(
            u.completion_tokens_details.unwrap().cached_tokens,
            count(10)
        );
        // A repeated field is an error; an escaped name is the name.
        assert_eq!(
            read(br#"{"total_tokens":1,"total\u005ftokens":2}"#),
            Err(Stop::Invalid)
        );
        assert_eq!(
            read(br#"{"prompt\u005Ftokens":7}"#).unwrap().prompt_tokens,
            count(7)
        );
        // Keys are checked as the strings serde reads, skipped values less.
        assert_eq!(read(br#"{"\ud800":1}"#), Err(Stop::Invalid));
        assert_eq!(read(b"{\"\xff\":1}"), Err(Stop::Invalid));
        assert!(read(br#"{"x":"\ud800"}"#).is_ok());
        assert!(read(b"{\"x\":\"\xff\"}").is_ok());
        assert_eq!(read(b"{\"x\":\"a\x01\"}"), Err(Stop::Invalid));
        assert_eq!(read(br#"{"a":1,}"#), Err(Stop::Invalid));
        assert_eq!(read(br#"{"prompt_tokens_details":5}"#), Err(Stop::Invalid));
    }

    #[test]
    fn a_cut_document_is_incomplete_at_every_cut() {
        for doc in [
            &br#"{"prompt_tokens":19,"completion_tokens":10,"cost":0.00012,"x":[-1.5e-3,"s\n"],"total_tokens":29}"#[..],
            br#"{"input_tokens": 25, "cache_read_input_tokens": 100, "output_tokens": 1}"#,
            br#"[1, 2, 3, null, {"cached_tokens": 1e2}]"#,
        ] {
            assert!(usage_value(doc, 0).is_ok());
            for cut in 0..doc.len() {
                assert_eq!(usage_value(&doc[..cut], 0), Err(Stop::Eof), "{cut}");
            }
        }
    }

    #[test]
    fn deep_nesting_is_skipped() {
        for depth in [127, 128, 129, 100_000] {
            let doc = format!(
                "{{\"x\":{}{},\"total_tokens\":3}}",
                "[{\"a\":".repeat(depth / 2) + "[",
                "]".to_owned() + &"}]".repeat(depth / 2)
            );
            let u = usage_value(doc.as_bytes(), 0).unwrap().unwrap();
            assert_eq!(u.total_tokens, count(3), "{depth}");
            assert_eq!(
                usage_value(&doc.as_bytes()[..doc.len() - 20], 0),
                Err(Stop::Eof)
            );
        }
    }

    /// The fast path agrees with serde on `doc`: whatever it reads, serde
    /// reads the same from it.
    fn assert_agrees(doc: &[u8]) {
        if let Some(fast) = quick_usage(&mut Cursor::new(doc)) {
            let exact = json::read_prefix::<Option<RawUsage>>(doc);
            assert_eq!(Ok(fast), exact, "{:?}", String::from_utf8_lossy(doc));
        }
    }

    #[test]
    fn the_fast_path_reads_common_usage() {
        for doc in [
            &br#"{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":4,"accepted_prediction_tokens":0}}"#[..],
            br#"{"input_tokens": 25, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 1, "service_tier": "standard"}"#,
            br#"{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":20},"total_tokens":123}"#,
            br#"{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11,"cost":0.00012,"prompt_tokens_details":null}"#,
            b"null",
        ] {
            assert!(quick_usage(&mut Cursor::new(doc)).is_some());
            assert_agrees(doc);
        }
    }

    mod generated {
        use proptest::prelude::*;

        const KEYS: [&str; 17] = [
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "prompt_tokens_details",
            "completion_tokens_details",
            "input_tokens_details",
            "output_tokens_details",
            "cached_tokens",
            "reasoning_tokens",
            "audio_tokens",
            "cost",
            "prompt\\u005ftokens",
            "\\ud800",
        ];

        fn ws() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec!["", "", "", " ", "\n", " \t\r\n "])
        }

        fn scalar() -> impl Strategy<Value = String> {
            prop_oneof![
                8 => (0u64..100_000).prop_map(|n| n.to_string()),
                1 => any::<u64>().prop_map(|n| n.to_string()),
                1 => any::<i64>().prop_map(|n| n.to_string()),
                1 => any::<f64>().prop_map(|f| format!("{f:?}")),
                2 => prop::sample::select(vec![
                    "null", "true", "-0", "12.0", "1e3", "1e400", "01", "1.", "-",
                    "18446744073709551616", "\"s\"", "\"\\ud800\"", "\"\u{e9}\"", "[]", "{}",
                ])
                .prop_map(String::from),
            ]
        }

        fn join(open: char, items: Vec<(String, &str)>, close: char) -> String {
            let items: Vec<String> = items
                .into_iter()
                .map(|(item, w)| format!("{w}{item}{w}"))
                .collect();
            format!("{open}{}{close}", items.join(","))
        }

        /// An object of `(key, value, whitespace)` members.
        fn object(members: Vec<(&str, String, &str)>) -> String {
            let members = members
                .into_iter()
                .map(|(k, v, w)| (format!("\"{k}\":{v}"), w));
            join('{', members.collect(), '}')
        }

        /// A usage object (or something near one) with mostly known keys.
        pub(super) fn usage_doc() -> impl Strategy<Value = String> {
            let key = prop::sample::select(&KEYS[..]);
            let value = scalar().prop_recursive(2, 16, 4, move |inner| {
                prop_oneof![
                    prop::collection::vec((key.clone(), inner.clone(), ws()), 0..4)
                        .prop_map(object),
                    prop::collection::vec((inner, ws()), 0..3).prop_map(|m| join('[', m, ']')),
                ]
            });
            let key = prop::sample::select(&KEYS[..]);
            prop::collection::vec((key, value, ws()), 0..8).prop_map(object)
        }
    }

    proptest::proptest! {
        #[test]
        fn the_fast_path_agrees_with_serde(doc in generated::usage_doc(), cut in any::<proptest::sample::Index>()) {
            let doc = doc.as_bytes();
            assert_agrees(doc);
            assert_agrees(&doc[..cut.index(doc.len() + 1)]);
        }
    }

    #[test]
    fn events() {
        let usage = |prompt| RawUsage {
            prompt_tokens: count(prompt),
            ..RawUsage::default()
        };
        let input = |n| RawUsage {
            input_tokens: count(n),
            ..RawUsage::default()
        };
        // A chunk with a top-level usage of `prompt` prompt tokens.
        let chunk = |prompt, choices| {
            Some(Event {
                usage: Some(usage(prompt)),
                choices,
                ..Event::default()
            })
        };
        for (doc, expected) in [
            (
                &br#"{"choices":[],"usage":{"prompt_tokens":1}}"#[..],
                chunk(1, Some(true)),
            ),
            (
                br#"{"choices":[{"delta":{}}],"usage":{"prompt_tokens":1}} "#,
                chunk(1, Some(false)),
            ),
            (
                br#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":3},"usage":null}}"#,
                Some(Event::default()),
            ),
            (
                br#"{"type":"message_start","message":{"usage":{"input_tokens":3}}}"#,
                Some(Event {
                    message: Some(input(3)),
                    ..Event::default()
                }),
            ),
            (
                br#"{"type":"response.completed","response":{"usage":{"input_tokens":3},"status":"x"}}"#,
                Some(Event {
                    response: Some(input(3)),
                    ..Event::default()
                }),
            ),
            (
                br#"{"error":{"message":"x"},"usage":{"prompt_tokens":1}}"#,
                Some(Event {
                    usage: Some(usage(1)),
                    error: true,
                    ..Event::default()
                }),
            ),
            (
                br#"{"error":null,"usage":{"prompt_tokens":1}}"#,
                chunk(1, None),
            ),
            (br#"{"usage":{"prompt_tokens":1}} x"#, None),
            (br#"{"usage":{"prompt_tokens":1},"usage":null}"#, None),
            (br#"{"choices":{},"usage":{"prompt_tokens":1}}"#, None),
            (br#"{"message":1e400,"usage":{"prompt_tokens":1}}"#, None),
            (br#"{"message":"\ud800","usage":{"prompt_tokens":1}}"#, None),
            (
                br#"[{"prompt_tokens":5}, null, null, [], null]"#,
                chunk(5, Some(true)),
            ),
            (br#"[{"prompt_tokens":5}, null, null, [], null, 1]"#, None),
        ] {
            assert_eq!(event(doc), expected, "{}", String::from_utf8_lossy(doc));
            if expected.is_some() {
                for cut in 0..doc.trim_ascii_end().len() {
                    assert_eq!(event(&doc[..cut]), None);
                }
            }
        }
    }
}
