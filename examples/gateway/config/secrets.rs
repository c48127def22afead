//! Secrets in the config file: never in `Debug`, never in an error.
//!
//! toml's error messages quote the source line they point at, and serde's
//! quote the value they refused: on a line that holds an upstream key, an
//! admin key or a key's secret, either would print the secret to a
//! terminal or a log shipper. Errors here say the line, the column and the
//! field, and on a secret's line leave every quoted part out.

use serde::Deserialize;

/// A value from the file that must not be printed: `Debug` shows
/// `<redacted>`. Read it with [`Redacted::expose`].
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    /// The value, for the one place that uses it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> std::fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Fields whose values are secrets: an error on their line is reported
/// without the line's text or the value.
const SECRET_FIELDS: &[&str] = &["secret", "upstream_api_key", "admin_keys", "api_key"];

/// A TOML error as `line L, column C: message`, without the source line the
/// parser quotes (it may hold a secret), and, when the line holds a secret
/// field, without anything the message quotes either (a value).
pub(super) fn parse_error_message(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    let Some(span) = error.span() else {
        return message.to_owned();
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |n| n + 1);
    let line = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    match field_at(text, line_start) {
        Some(field) if SECRET_FIELDS.contains(&field) => format!(
            "line {line}, column {column}: `{field}`: {} (the value is not shown: it is a secret)",
            without_quoted(message)
        ),
        _ => format!("line {line}, column {column}: {message}"),
    }
}

/// The key of the `key = value` pair the line at `line_start` belongs to:
/// its own, or that of the line above it whose value (a multi-line array)
/// it continues.
fn field_at(text: &str, line_start: usize) -> Option<&str> {
    let before = &text[..line_start];
    let this_line = text[line_start..].lines().next().unwrap_or("");
    std::iter::once(this_line)
        .chain(before.lines().rev())
        .find_map(|line| {
            let line = line.trim_start();
            if line.starts_with('#') {
                return None;
            }
            if line.starts_with('[') {
                // A table header: the field is not above it.
                return Some(None);
            }
            let (key, _) = line.split_once('=')?;
            let key = key.trim();
            let key = key.rsplit('.').next().unwrap_or(key).trim();
            // `"secret" = …` is a key; `"sk-a=b",` in an array is not.
            let key = match key.strip_prefix('"') {
                Some(quoted) => quoted.strip_suffix('"')?,
                None => key,
            };
            (!key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
            .then_some(Some(key))
        })
        .flatten()
}

/// `message` with every `…` and "…" part replaced by `<redacted>`.
fn without_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(['`', '"', '\'']) {
        let quote = rest[at..].chars().next().unwrap_or('"');
        out.push_str(&rest[..at]);
        match rest[at + 1..].find(quote) {
            Some(end) => {
                out.push_str("<redacted>");
                rest = &rest[at + 1 + end + 1..];
            }
            None => {
                out.push_str("<redacted>");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}
