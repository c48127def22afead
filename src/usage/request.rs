//! [`request_usage`]: ask the upstream for the usage of a stream.

use bytes::Bytes;

use crate::RequestMeta;
use crate::request::StreamOptionsAt;

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
/// `meta` is the body's [`RequestMeta`], as [`RequestMeta::read`] leaves it
/// in the request's extensions: it says whether and where to edit, so the
/// body is not read again. Without one (`None`, or one of a body of another
/// length), the body is read here.
///
/// The rewrite is a splice, not a re-serialization: the other fields keep
/// their bytes and their order. Only `stream_options` is touched: added
/// (`{"stream_options":{"include_usage":true},…`), or, when present,
/// given `include_usage: true` beside its other options. A body that is not
/// a JSON object with `"stream": true` and `messages` (chat) or `prompt`
/// (completions) is left alone: the Responses and Anthropic APIs reject
/// `stream_options` (and report usage anyway), so call this only for the
/// chat/completions and completions routes. So is a body whose keys are
/// written with escapes (`"stream\u005foptions"`), which a splice cannot
/// edit safely.
///
/// ```
/// use tollgate::RequestMeta;
/// use tollgate::usage::request_usage;
///
/// let body = br#"{"model":"gpt-4o","stream":true,"messages":[]}"#;
/// let meta = RequestMeta::from_json(body)?;
/// assert_eq!(
///     &request_usage(body, Some(&meta)).unwrap()[..],
///     br#"{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,"messages":[]}"#,
/// );
/// // Without the meta, the body is read here.
/// let body = br#"{"model":"gpt-4o","stream":true,"messages":[],"stream_options":{"include_usage":false}}"#;
/// assert_eq!(
///     &request_usage(body, None).unwrap()[..],
///     br#"{"model":"gpt-4o","stream":true,"messages":[],"stream_options":{"include_usage":true}}"#,
/// );
/// // Already asked for, or not streamed: nothing to do.
/// assert!(request_usage(br#"{"stream":true,"messages":[],"stream_options":{"include_usage":true}}"#, None).is_none());
/// assert!(request_usage(br#"{"stream":false,"messages":[]}"#, None).is_none());
/// # Ok::<(), tollgate::ApiError>(())
/// ```
pub fn request_usage(body: &[u8], meta: Option<&RequestMeta>) -> Option<Bytes> {
    let read;
    let meta = match meta {
        Some(meta) if meta.body_len == body.len() => meta,
        _ => {
            read = RequestMeta::from_json(body).ok()?;
            &read
        }
    };
    if !meta.stream || meta.include_usage {
        return None;
    }
    // Recorded for streamed chat and completions requests only.
    match meta.stream_options_at {
        StreamOptionsAt::Unknown => None,
        StreamOptionsAt::Absent { open } => splice(
            body,
            open..open,
            &[br#""stream_options":{"#, INCLUDE_USAGE, b"},"],
        ),
        StreamOptionsAt::Null { start, end } => {
            splice(body, start..end, &[b"{", INCLUDE_USAGE, b"}"])
        }
        StreamOptionsAt::Object {
            open,
            empty,
            include_usage,
        } => match include_usage {
            Some((from, to)) => splice(body, from..to, &[b"true"]),
            None if empty => splice(body, open..open, &[INCLUDE_USAGE]),
            None => splice(body, open..open, &[INCLUDE_USAGE, b","]),
        },
    }
}

/// `body` with `body[range]` replaced by `parts` (`None` if the range is
/// not in `body`: a meta of another body).
fn splice(body: &[u8], range: std::ops::Range<usize>, parts: &[&[u8]]) -> Option<Bytes> {
    let (before, after) = (body.get(..range.start)?, body.get(range.end..)?);
    let inserted: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(before.len() + inserted + after.len());
    out.extend_from_slice(before);
    for part in parts {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(after);
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rewrite, with the body's meta and without: the same.
    fn rewrite(body: &str) -> Option<String> {
        let without = request_usage(body.as_bytes(), None);
        let meta = RequestMeta::from_json(body.as_bytes()).ok();
        assert_eq!(
            request_usage(body.as_bytes(), meta.as_ref()),
            without,
            "{body}"
        );
        without.map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn rewrites() {
        for (body, rewritten) in [
            (
                r#" { "stream" : true , "messages":[] } "#,
                r#" {"stream_options":{"include_usage":true}, "stream" : true , "messages":[] } "#,
            ),
            (
                r#"{"stream":true,"prompt":"x","stream_options":null}"#,
                r#"{"stream":true,"prompt":"x","stream_options":{"include_usage":true}}"#,
            ),
            (
                r#"{"stream":true,"messages":[],"stream_options":{ }}"#,
                r#"{"stream":true,"messages":[],"stream_options":{"include_usage":true }}"#,
            ),
            (
                r#"{"stream":true,"messages":[],"stream_options":{"continuous_usage_stats":true,"include_usage":null}}"#,
                r#"{"stream":true,"messages":[],"stream_options":{"continuous_usage_stats":true,"include_usage":true}}"#,
            ),
            (
                r#"{"stream":true,"messages":[],"stream_options":{"include_obfuscation":false}}"#,
                r#"{"stream":true,"messages":[],"stream_options":{"include_usage":true,"include_obfuscation":false}}"#,
            ),
        ] {
            assert_eq!(rewrite(body).as_deref(), Some(rewritten));
        }
    }

    #[test]
    fn a_meta_of_another_body_is_not_trusted() {
        let body = br#"{"stream":true,"messages":[]}"#;
        let other = RequestMeta::from_json(br#"{"stream":true,"messages":[1,2,3]}"#).unwrap();
        assert_eq!(request_usage(body, Some(&other)), request_usage(body, None));
        // A meta of a body of the same length is trusted: it is what
        // `RequestMeta::read` left for these bytes.
        let unstreamed = RequestMeta::from_json(br#"{"stream":false,"messages":[]}"#).unwrap();
        let body = br#"{"stream":true ,"messages":[]}"#;
        assert_eq!(request_usage(body, Some(&unstreamed)), None);
        assert!(request_usage(body, None).is_some());
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
            let out = request_usage(body.as_bytes(), None).unwrap();
            let meta = RequestMeta::from_json(&out).unwrap();
            assert!(meta.stream && meta.include_usage, "{body}");
            let before: serde_json::Value = serde_json::from_str(body).unwrap();
            let after: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(before["messages"], after["messages"]);
        }
    }
}
