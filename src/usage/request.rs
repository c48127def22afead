//! [`request_usage`]: ask the upstream for the usage of a stream.

use bytes::Bytes;

use super::json::{count_text, skip_ws, string_end};
use crate::RequestMeta;

const INCLUDE_USAGE: &[u8] = br#""include_usage":true"#;

/// If `body` is a streamed chat/completions request without
/// `stream_options.include_usage: true`, the same JSON rewritten to ask for
/// it; otherwise `None`.
///
/// OpenAI sends no usage in a stream unless asked, and a budget cannot be
/// settled from an estimate when the real count is one option away. A layer
/// that calls this should also set
/// [`UsageOptions::strip_usage_chunk`](super::UsageOptions::strip_usage_chunk),
/// so the client does not receive the extra chunk it did not ask for, and
/// fix the request's `content-length`.
///
/// The rewrite is a splice, not a re-serialization: the other fields keep
/// their bytes and their order. Only `stream_options` is touched: added
/// (`{"stream_options":{"include_usage":true},…`), or, when present,
/// given `include_usage: true` beside its other options. A body that is not
/// a JSON object with `"stream": true` and `messages` (chat) or `prompt`
/// (completions) is left alone: the Responses and Anthropic APIs reject
/// `stream_options` (and report usage anyway), so call this only for the
/// chat/completions and completions routes.
///
/// ```
/// use tollgate::usage::request_usage;
///
/// let body = br#"{"model":"gpt-4o","stream":true,"messages":[]}"#;
/// assert_eq!(
///     &request_usage(body).unwrap()[..],
///     br#"{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,"messages":[]}"#,
/// );
/// let body = br#"{"model":"gpt-4o","stream":true,"messages":[],"stream_options":{"include_usage":false}}"#;
/// assert_eq!(
///     &request_usage(body).unwrap()[..],
///     br#"{"model":"gpt-4o","stream":true,"messages":[],"stream_options":{"include_usage":true}}"#,
/// );
/// // Already asked for, or not streamed: nothing to do.
/// assert!(request_usage(br#"{"stream":true,"messages":[],"stream_options":{"include_usage":true}}"#).is_none());
/// assert!(request_usage(br#"{"stream":false,"messages":[]}"#).is_none());
/// ```
pub fn request_usage(body: &[u8]) -> Option<Bytes> {
    let meta = RequestMeta::from_json(body).ok()?;
    if !meta.stream || meta.include_usage {
        return None;
    }
    let open = skip_ws(body, 0);
    let mut is_chat = false;
    let mut options = None;
    for field in Fields::new(body, open) {
        let (key, value) = field.ok()?;
        match key {
            b"messages" | b"prompt" => is_chat = true,
            b"stream_options" => options = Some(value),
            _ => {}
        }
    }
    if !is_chat {
        return None;
    }
    let Some((start, end)) = options else {
        return Some(splice(
            body,
            open + 1,
            open + 1,
            &[br#""stream_options":{"#, INCLUDE_USAGE, b"},"],
        ));
    };
    match body.get(start)? {
        b'n' => Some(splice(body, start, end, &[b"{", INCLUDE_USAGE, b"}"])),
        b'{' => {
            let mut include = None;
            let mut empty = true;
            for field in Fields::new(body, start) {
                let (key, value) = field.ok()?;
                empty = false;
                if key == b"include_usage" {
                    include = Some(value);
                }
            }
            Some(match include {
                Some((from, to)) => splice(body, from, to, &[b"true"]),
                None if empty => splice(body, start + 1, start + 1, &[INCLUDE_USAGE]),
                None => splice(body, start + 1, start + 1, &[INCLUDE_USAGE, b","]),
            })
        }
        _ => None,
    }
}

/// `body` with `body[from..to]` replaced by `parts`.
fn splice(body: &[u8], from: usize, to: usize, parts: &[&[u8]]) -> Bytes {
    let inserted: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(body.len() - (to - from) + inserted);
    out.extend_from_slice(&body[..from]);
    for part in parts {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&body[to..]);
    Bytes::from(out)
}

/// The members of the JSON object at `body[open]`: raw key bytes and the
/// span of the value (trailing whitespace trimmed). `Some(Err(()))` when the
/// object is not as expected (an escaped key, say): the caller gives up.
struct Fields<'a> {
    body: &'a [u8],
    i: usize,
    done: bool,
}

impl<'a> Fields<'a> {
    fn new(body: &'a [u8], open: usize) -> Self {
        let ok = body.get(open) == Some(&b'{');
        Fields {
            body,
            i: open + 1,
            done: !ok,
        }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(&'a [u8], (usize, usize)), ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let body = self.body;
        let mut fail = || {
            self.done = true;
            Some(Err(()))
        };
        let i = skip_ws(body, self.i);
        let i = match body.get(i) {
            Some(b',') => skip_ws(body, i + 1),
            _ => i,
        };
        match body.get(i) {
            Some(b'"') => {}
            Some(b'}') => {
                self.done = true;
                return None;
            }
            _ => return fail(),
        }
        let key_end = string_end(body, i + 1);
        let Some(key) = body.get(i + 1..key_end).filter(|k| !k.contains(&b'\\')) else {
            return fail();
        };
        let colon = skip_ws(body, key_end + 1);
        if body.get(colon) != Some(&b':') {
            return fail();
        }
        let start = skip_ws(body, colon + 1);
        let Some(rest) = body.get(start..).filter(|r| !r.is_empty()) else {
            return fail();
        };
        let (_, len) = count_text(rest, false);
        let end = start + rest[..len].trim_ascii_end().len();
        self.i = start + len;
        Some(Ok((key, (start, end))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(body: &str) -> Option<String> {
        request_usage(body.as_bytes()).map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn rewrites() {
        assert_eq!(
            rewrite(r#" { "stream" : true , "messages":[] } "#).as_deref(),
            Some(
                r#" {"stream_options":{"include_usage":true}, "stream" : true , "messages":[] } "#
            )
        );
        assert_eq!(
            rewrite(r#"{"stream":true,"prompt":"x","stream_options":null}"#).as_deref(),
            Some(r#"{"stream":true,"prompt":"x","stream_options":{"include_usage":true}}"#)
        );
        assert_eq!(
            rewrite(r#"{"stream":true,"messages":[],"stream_options":{ }}"#).as_deref(),
            Some(r#"{"stream":true,"messages":[],"stream_options":{"include_usage":true }}"#)
        );
        assert_eq!(
            rewrite(r#"{"stream":true,"messages":[],"stream_options":{"continuous_usage_stats":true,"include_usage":null}}"#)
                .as_deref(),
            Some(r#"{"stream":true,"messages":[],"stream_options":{"continuous_usage_stats":true,"include_usage":true}}"#)
        );
        assert_eq!(
            rewrite(
                r#"{"stream":true,"messages":[],"stream_options":{"include_obfuscation":false}}"#
            )
            .as_deref(),
            Some(
                r#"{"stream":true,"messages":[],"stream_options":{"include_usage":true,"include_obfuscation":false}}"#
            )
        );
    }

    #[test]
    fn leaves_alone() {
        for body in [
            r#"{"stream":true,"input":"responses api"}"#,
            r#"{"messages":[]}"#,
            r#"{"stream":true,"messages":[],"stream_options":{"include_usage":true}}"#,
            r#"{"stream":true,"messages":[],"stream\u005foptions":{"include_usage":false}}"#,
            r#"not json"#,
            r#"[1]"#,
            "",
        ] {
            assert_eq!(rewrite(body), None, "{body}");
        }
    }

    #[test]
    fn output_is_valid_json_with_the_option() {
        for body in [
            r#"{"stream":true,"messages":[{"role":"user","content":"a \"}\" b"}],"n":2}"#,
            r#"{"stream_options":{"include_usage":false},"stream":true,"messages":[]}"#,
        ] {
            let out = request_usage(body.as_bytes()).unwrap();
            let meta = RequestMeta::from_json(&out).unwrap();
            assert!(meta.stream && meta.include_usage, "{body}");
            let before: serde_json::Value = serde_json::from_str(body).unwrap();
            let after: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(before["messages"], after["messages"]);
        }
    }
}
