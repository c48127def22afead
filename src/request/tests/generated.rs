//! Generated request bodies: valid OpenAI-style requests with random
//! fields, escapes, numbers, Unicode and nesting, sometimes mutated.

use proptest::prelude::*;
use proptest::sample::{Index, select};

/// A JSON value as written, before whitespace.
#[derive(Debug, Clone)]
pub(super) enum J {
    /// A literal or number, as written.
    Raw(String),
    /// A string's contents between the quotes (escapes as written).
    Str(Vec<u8>),
    Arr(Vec<J>),
    Obj(Vec<(Vec<u8>, J)>),
    /// `inner` inside `depth` arrays, or objects under `key`.
    Deep {
        depth: usize,
        key: Option<Vec<u8>>,
        inner: Box<J>,
    },
}

const WHITESPACE: [&str; 9] = ["", "", "", "", "", " ", "\n", "\t", "\r\n  "];

struct Out<'a> {
    bytes: Vec<u8>,
    spaces: &'a [u8],
    next: usize,
}

impl Out<'_> {
    fn space(&mut self) {
        if let Some(&choice) = self.spaces.get(self.next % self.spaces.len().max(1)) {
            self.next += 1;
            let ws = WHITESPACE[usize::from(choice) % WHITESPACE.len()];
            self.bytes.extend_from_slice(ws.as_bytes());
        }
    }

    fn string(&mut self, s: &[u8]) {
        self.bytes.push(b'"');
        self.bytes.extend_from_slice(s);
        self.bytes.push(b'"');
    }

    fn value(&mut self, j: &J) {
        match j {
            J::Raw(raw) => self.bytes.extend_from_slice(raw.as_bytes()),
            J::Str(s) => self.string(s),
            J::Arr(items) => {
                self.bytes.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.bytes.push(b',');
                    }
                    self.space();
                    self.value(item);
                    self.space();
                }
                self.bytes.push(b']');
            }
            J::Obj(entries) => {
                self.bytes.push(b'{');
                for (i, (key, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        self.bytes.push(b',');
                    }
                    self.space();
                    self.string(key);
                    self.space();
                    self.bytes.push(b':');
                    self.space();
                    self.value(value);
                    self.space();
                }
                self.bytes.push(b'}');
            }
            J::Deep { depth, key, inner } => {
                for _ in 0..*depth {
                    match key {
                        Some(key) => {
                            self.bytes.push(b'{');
                            self.string(key);
                            self.bytes.push(b':');
                        }
                        None => self.bytes.push(b'['),
                    }
                }
                self.value(inner);
                let close = if key.is_some() { b'}' } else { b']' };
                self.bytes.extend(std::iter::repeat_n(close, *depth));
            }
        }
    }
}

pub(super) fn render(j: &J, spaces: &[u8]) -> Vec<u8> {
    let mut out = Out {
        bytes: Vec::new(),
        spaces,
        next: 0,
    };
    out.space();
    out.value(j);
    out.space();
    out.bytes
}

/// A piece of a string's contents; `broken` ones (invalid UTF-8,
/// escapes or control characters) only if `broken`.
fn piece(broken: u32) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        6 => "[a-zA-Z0-9 .,!?'{}:\\[\\]]{0,12}".prop_map(String::into_bytes),
        3 => any::<char>()
            .prop_filter("plain", |c| !matches!(c, '"' | '\\') && !c.is_control())
            .prop_map(|c| c.to_string().into_bytes()),
        2 => select(&["\\n", "\\t", "\\\"", "\\\\", "\\/", "\\b", "\\f", "\\r"][..])
            .prop_map(|s| s.as_bytes().to_vec()),
        2 => (any::<u16>(), any::<bool>()).prop_map(|(n, upper)| {
            if upper { format!("\\u{n:04X}") } else { format!("\\u{n:04x}") }.into_bytes()
        }),
        2 => (0x1_0000u32..0x11_0000).prop_map(|c| {
            let mut units = [0u16; 2];
            let units = char::from_u32(c).unwrap_or('x').encode_utf16(&mut units);
            units.iter().map(|u| format!("\\u{u:04x}")).collect::<String>().into_bytes()
        }),
        broken => select(vec![
            &b"\xff"[..], b"\xc3", b"\x80", b"\xe2\x82", b"\xf0\x9f\x98", b"\xed\xa0\x80",
            b"\x01", b"\x1f", b"\x7f", b"\t", b"\\x", b"\\u12", b"\\uD800", b"\\uDC00",
            b"\\uD800\\n", b"\\uD800x", b"\\uDBFF\\uDFFF", b"\\", b"\"",
        ])
        .prop_map(<[u8]>::to_vec),
    ]
    .boxed()
}

fn text() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(piece(0), 0..5),
        1 => prop::collection::vec(piece(1), 0..5),
    ]
    .prop_map(|pieces| pieces.concat())
    .boxed()
}

const KEYS: &[&str] = &[
    "model",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "stream_options",
    "include_usage",
    "messages",
    "prompt",
    "input",
    "system",
    "instructions",
    "tools",
    "functions",
    "type",
    "role",
    "id",
    "tool_call_id",
    "image_url",
    "url",
    "input_audio",
    "file",
    "file_data",
    "data",
    "detail",
    "content",
    "text",
    "name",
    "arguments",
    "metadata",
    "user",
    "a",
];

/// A key as written: mostly known, sometimes with an escaped letter.
fn key() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        8 => select(KEYS).prop_map(|k| k.as_bytes().to_vec()),
        2 => (select(KEYS), any::<Index>()).prop_map(|(k, i)| escape_one(k, i)),
        1 => text(),
    ]
    .boxed()
}

pub(super) fn escape_one(key: &str, at: Index) -> Vec<u8> {
    let at = at.index(key.len());
    let mut out = key.as_bytes()[..at].to_vec();
    out.extend_from_slice(format!("\\u{:04x}", key.as_bytes()[at]).as_bytes());
    out.extend_from_slice(&key.as_bytes()[at + 1..]);
    out
}

fn number() -> BoxedStrategy<String> {
    prop_oneof![
        2 => (0u64..5000).prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(|x| format!("{x:?}")),
        1 => any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(|x| format!("{x:e}")),
        3 => "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,22})?([eE][+-]?[0-9]{1,3})?",
        1 => "[0-9]{15,25}(\\.[0-9]{0,20})?[eE][+-]?(29[0-9]|30[0-9]|31[0-9]|32[0-9])",
        1 => select(&[
            "-0", "1e400", "-1e400", "1e-400", "0e999999999999", "1e2147483647",
            "1e2147483648", "1e-2147483649", "18446744073709551615",
            "18446744073709551616", "-9223372036854775808", "-9223372036854775809",
            "1.7976931348623157e308", "1.7976931348623159e308", "1.8e308", "01", "1.",
            "-", "1e", "1e+", ".5", "-a", "2.e3", "1E5", "-01", "1.5.5", "1ee5",
            "123456789012345678901234567890.5e-3", "10e307", "0.1e310", "1e308",
        ][..])
        .prop_map(String::from),
    ]
    .boxed()
}

fn leaf() -> BoxedStrategy<J> {
    prop_oneof![
        4 => select(&["null", "true", "false"][..]).prop_map(|s| J::Raw(s.into())),
        1 => select(&["nul", "tru", "fals", "nulll"][..]).prop_map(|s| J::Raw(s.into())),
        8 => number().prop_map(J::Raw),
        12 => text().prop_map(J::Str),
    ]
    .boxed()
}

fn value() -> BoxedStrategy<J> {
    leaf()
        .prop_recursive(4, 24, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(J::Arr),
                prop::collection::vec((key(), inner), 0..5).prop_map(J::Obj),
            ]
        })
        .boxed()
}

fn s(text: &str) -> J {
    J::Str(text.as_bytes().to_vec())
}

fn k(key: &str) -> Vec<u8> {
    key.as_bytes().to_vec()
}

/// A content part, as chat clients send them.
fn part() -> BoxedStrategy<J> {
    prop_oneof![
        text().prop_map(|t| J::Obj(vec![(k("type"), s("text")), (k("text"), J::Str(t))])),
        text().prop_map(|t| J::Obj(vec![
            (k("type"), s("image_url")),
            (
                k("image_url"),
                J::Obj(vec![(k("url"), J::Str(t)), (k("detail"), s("high"))])
            ),
        ])),
        text().prop_map(|t| J::Obj(vec![
            (k("type"), s("input_audio")),
            (
                k("input_audio"),
                J::Obj(vec![(k("data"), J::Str(t)), (k("format"), s("wav"))])
            ),
        ])),
        value(),
    ]
    .boxed()
}

fn message() -> BoxedStrategy<J> {
    let content = prop_oneof![
        3 => text().prop_map(J::Str),
        2 => prop::collection::vec(part(), 0..3).prop_map(J::Arr),
        1 => Just(J::Raw("null".into())),
        1 => value(),
    ];
    (
        select(&["system", "user", "assistant", "tool"][..]),
        content,
        text(),
    )
        .prop_map(|(role, content, id)| {
            let mut fields = vec![(k("role"), s(role)), (k("content"), content)];
            if role == "tool" {
                fields.push((k("tool_call_id"), J::Str(id)));
            } else if role == "assistant" {
                fields.push((
                    k("tool_calls"),
                    J::Arr(vec![J::Obj(vec![
                        (k("id"), J::Str(id)),
                        (k("type"), s("function")),
                        (
                            k("function"),
                            J::Obj(vec![
                                (k("name"), s("f")),
                                (k("arguments"), s("{\\\"x\\\":1}")),
                            ]),
                        ),
                    ])]),
                ));
            }
            J::Obj(fields)
        })
        .boxed()
}

/// Nesting around serde_json's limit, read or skipped.
fn deep() -> BoxedStrategy<J> {
    (
        prop_oneof![120usize..132, 1000usize..1500],
        select(&[None, Some("a"), Some("type"), Some("d\\u0061ta")][..]),
        leaf(),
    )
        .prop_map(|(depth, key, inner)| J::Deep {
            depth,
            key: key.map(|key| key.as_bytes().to_vec()),
            inner: Box::new(inner),
        })
        .boxed()
}

fn max_tokens() -> BoxedStrategy<J> {
    prop_oneof![
        4 => (0u64..100_000).prop_map(|n| J::Raw(n.to_string())),
        1 => Just(J::Raw("null".into())),
        2 => number().prop_map(J::Raw),
        1 => value(),
    ]
    .boxed()
}

fn stream_options() -> BoxedStrategy<J> {
    let flag = prop_oneof![
        4 => select(&["true", "false", "null"][..]).prop_map(|s| J::Raw(s.into())),
        1 => value(),
    ];
    prop_oneof![
        4 => flag.clone().prop_map(|f| J::Obj(vec![(k("include_usage"), f)])),
        1 => (flag.clone(), flag.clone())
            .prop_map(|(a, b)| J::Obj(vec![(k("include_usage"), a), (k("include_usage"), b)])),
        1 => (flag.clone(), key(), value())
            .prop_map(|(f, key, v)| J::Obj(vec![(key, v), (k("include_usage"), f)])),
        1 => prop::collection::vec(flag, 0..3).prop_map(J::Arr),
        1 => Just(J::Raw("null".into())),
        1 => value(),
    ]
    .boxed()
}

fn text_field() -> BoxedStrategy<J> {
    prop_oneof![
        3 => text().prop_map(J::Str),
        3 => prop::collection::vec(message(), 0..4).prop_map(J::Arr),
        1 => prop::collection::vec(0u32..100_000, 0..6)
            .prop_map(|ids| J::Arr(ids.into_iter().map(|id| J::Raw(id.to_string())).collect())),
        1 => prop::collection::vec(prop::collection::vec(0u32..100_000, 0..4), 0..3).prop_map(|rows| {
            J::Arr(rows.into_iter().map(|ids| {
                J::Arr(ids.into_iter().map(|id| J::Raw(id.to_string())).collect())
            }).collect())
        }),
        2 => value(),
        1 => deep(),
    ]
    .boxed()
}

/// A top-level field: its key (maybe escaped) and value.
fn field() -> BoxedStrategy<(Vec<u8>, J)> {
    let named = prop_oneof![
        2 => (Just("model"), prop_oneof![4 => text().prop_map(J::Str), 1 => value()]),
        1 => (Just("stream"), prop_oneof![
            3 => select(&["true", "false", "null"][..]).prop_map(|s| J::Raw(s.into())),
            1 => value(),
        ]),
        1 => (select(&["max_tokens", "max_completion_tokens", "max_output_tokens"][..]), max_tokens()),
        1 => (Just("stream_options"), stream_options()),
        4 => (select(&["messages", "prompt", "input", "system", "instructions", "tools", "functions"][..]), text_field()),
        1 => (select(&["metadata", "user", "temperature", "n"][..]), prop_oneof![value(), deep()]),
    ];
    prop_oneof![
        8 => named.clone().prop_map(|(key, value)| (k(key), value)),
        1 => (named, any::<Index>()).prop_map(|((key, value), at)| (escape_one(key, at), value)),
        1 => (key(), value()),
    ]
    .boxed()
}

#[derive(Debug, Clone)]
pub(super) enum Mutation {
    Truncate(Index),
    Flip(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index),
}

fn mutation() -> BoxedStrategy<Mutation> {
    prop_oneof![
        (any::<Index>()).prop_map(Mutation::Truncate),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (
            any::<Index>(),
            prop_oneof![
                3 => select(&[
                    "{", "}", "[", "]", ",", ":", "\"", "\\", " ", "0", "-", ".", "e", "n",
                    "\\u", "\\ud800", "\u{e9}", "\x0c", "\n",
                ][..]).prop_map(|s| s.as_bytes().to_vec()),
                1 => prop::collection::vec(any::<u8>(), 1..4),
            ]
        )
            .prop_map(|(i, bytes)| Mutation::Insert(i, bytes)),
        (any::<Index>()).prop_map(Mutation::Delete),
    ]
    .boxed()
}

pub(super) fn mutate(mut body: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        match m {
            Mutation::Truncate(at) => body.truncate(at.index(body.len() + 1)),
            Mutation::Flip(at, byte) if !body.is_empty() => {
                let at = at.index(body.len());
                body[at] = *byte;
            }
            Mutation::Insert(at, bytes) => {
                let at = at.index(body.len() + 1);
                body.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete(at) if !body.is_empty() => {
                body.remove(at.index(body.len()));
            }
            _ => {}
        }
    }
    body
}

/// A body: mostly a request object, sometimes any value, with
/// random whitespace, sometimes mutated.
pub(super) fn body() -> BoxedStrategy<Vec<u8>> {
    let top = prop_oneof![
        9 => prop::collection::vec(field(), 0..8).prop_map(J::Obj),
        1 => value(),
    ];
    let mutations = prop_oneof![
        3 => Just(Vec::new()),
        2 => prop::collection::vec(mutation(), 1..3),
    ];
    (top, prop::collection::vec(any::<u8>(), 0..16), mutations)
        .prop_map(|(top, spaces, mutations)| mutate(render(&top, &spaces), &mutations))
        .boxed()
}

/// Text as clients write it: escapes and Unicode, nothing broken.
fn clean_text() -> BoxedStrategy<J> {
    prop::collection::vec(piece(0), 0..5)
        .prop_map(|pieces| J::Str(pieces.concat()))
        .boxed()
}

/// Any value as clients write one: integers, short floats, clean text.
fn clean_value() -> BoxedStrategy<J> {
    let leaf = prop_oneof![
        2 => select(&["null", "true", "false", "0.5", "-2.25", "1e-3", "3E+2"][..])
            .prop_map(|s| J::Raw(s.into())),
        3 => any::<i64>().prop_map(|n| J::Raw(n.to_string())),
        6 => clean_text(),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(J::Arr),
            prop::collection::vec((select(KEYS).prop_map(k), inner), 0..5).prop_map(J::Obj),
        ]
    })
    .boxed()
}

/// A request as clients send it: known fields of the types they should
/// have, in any order, other fields of any clean value, and whitespace.
pub(super) fn clean_body() -> BoxedStrategy<Vec<u8>> {
    let flag = || select(&["true", "false", "null"][..]).prop_map(|s| J::Raw(s.into()));
    let count = prop_oneof![
        4 => (0u64..100_000).prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => Just("null".to_owned()),
    ]
    .prop_map(J::Raw);
    let options = prop_oneof![
        3 => flag().prop_map(|f| J::Obj(vec![(k("include_usage"), f)])),
        1 => (flag(), clean_value()).prop_map(|(f, v)| {
            J::Obj(vec![(k("continuous_usage_stats"), v), (k("include_usage"), f)])
        }),
        1 => Just(J::Obj(vec![])),
        1 => Just(J::Raw("null".into())),
    ];
    let text = prop_oneof![
        2 => clean_text(),
        2 => prop::collection::vec(clean_value(), 0..4).prop_map(J::Arr),
        1 => prop::collection::vec(0u32..100_000, 0..6)
            .prop_map(|ids| J::Arr(ids.into_iter().map(|id| J::Raw(id.to_string())).collect())),
    ];
    let field = prop_oneof![
        2 => prop_oneof![clean_text(), Just(J::Raw("null".into()))]
            .prop_map(|v| (k("model"), v)),
        1 => flag().prop_map(|v| (k("stream"), v)),
        1 => (select(&["max_tokens", "max_completion_tokens", "max_output_tokens"][..]), count)
            .prop_map(|(key, v)| (k(key), v)),
        1 => options.prop_map(|v| (k("stream_options"), v)),
        4 => (select(&["messages", "prompt", "input", "system", "instructions", "tools", "functions"][..]), text)
            .prop_map(|(key, v)| (k(key), v)),
        2 => (select(&["metadata", "user", "temperature", "n"][..]), clean_value())
            .prop_map(|(key, v)| (k(key), v)),
    ];
    (
        prop::collection::vec(field, 0..8),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(fields, spaces)| {
            // One of each known field, as a client sends it.
            let mut seen = Vec::new();
            let fields = fields
                .into_iter()
                .filter(|(key, _)| {
                    let known = !matches!(&key[..], b"metadata" | b"user" | b"temperature" | b"n");
                    !known
                        || !seen.contains(key) && {
                            seen.push(key.clone());
                            true
                        }
                })
                .collect();
            render(&J::Obj(fields), &spaces)
        })
        .boxed()
}
