//! Where a request carries its key: [`Extractor`] and the [`ExtractApiKey`] trait.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::header::{AUTHORIZATION, HeaderName};
use http::request::Parts;
use http::{HeaderMap, HeaderValue};

/// Finds the key in a request's head. Implemented for closures
/// `Fn(&Parts) -> Option<Cow<'_, str>>`; pass a closure through
/// [`Extractor::from_fn`] so its signature is inferred.
///
/// Return `None` when the request carries no key in this place. A value that
/// is present but unusable may be returned as is: it fails the lookup and
/// the request gets 401 `invalid_api_key`.
pub trait ExtractApiKey: Send + Sync + 'static {
    /// The key in `parts`, if any.
    fn extract<'a>(&self, parts: &'a Parts) -> Option<Cow<'a, str>>;
}

impl<F> ExtractApiKey for F
where
    F: Fn(&Parts) -> Option<Cow<'_, str>> + Send + Sync + 'static,
{
    fn extract<'a>(&self, parts: &'a Parts) -> Option<Cow<'a, str>> {
        self(parts)
    }
}

/// One place a key may be presented. [`AuthLayer`](super::AuthLayer) tries
/// its extractors in order and uses the first key found.
///
/// ```
/// use std::borrow::Cow;
/// use tollgate::auth::Extractor;
///
/// // Anthropic-style clients only, plus a `?key=` query parameter.
/// let extractors = [
///     Extractor::x_api_key(),
///     Extractor::from_fn(|parts| {
///         let query = parts.uri.query()?;
///         query.split('&').find_map(|pair| pair.strip_prefix("key=")).map(Cow::Borrowed)
///     })
///     .described_as("the `key` query parameter"),
/// ];
/// assert_eq!(extractors[1].description(), "the `key` query parameter");
/// ```
#[derive(Clone)]
pub struct Extractor {
    source: Source,
    description: Cow<'static, str>,
}

#[derive(Clone)]
enum Source {
    Bearer,
    Header(HeaderName),
    Custom(Arc<dyn ExtractApiKey>),
}

/// What the extractors found in a request.
pub(crate) enum Found<'a> {
    /// Its bytes: the built-in extractors' keys are visible ASCII, read
    /// without decoding them as text.
    Key(Cow<'a, [u8]>),
    /// A key header was present but unusable (a reason fit for the client).
    Malformed(&'static str),
    Missing,
}

impl Extractor {
    /// `Authorization: Bearer <key>` (OpenAI style). The scheme is
    /// case-insensitive and whitespace around the scheme and the key is
    /// ignored; another scheme (`Basic …`) is not a key.
    pub fn bearer() -> Extractor {
        Extractor {
            source: Source::Bearer,
            description: Cow::Borrowed(
                "the `Authorization` header (`Authorization: Bearer <key>`)",
            ),
        }
    }

    /// The whole value of header `name`, surrounding whitespace ignored.
    pub fn header(name: HeaderName) -> Extractor {
        let description = Cow::Owned(format!("the `{name}` header"));
        Extractor {
            source: Source::Header(name),
            description,
        }
    }

    /// `x-api-key: <key>` (Anthropic style).
    pub fn x_api_key() -> Extractor {
        Extractor::header(HeaderName::from_static("x-api-key"))
    }

    /// `api-key: <key>` (Azure OpenAI style).
    pub fn api_key() -> Extractor {
        Extractor::header(HeaderName::from_static("api-key"))
    }

    /// `x-bf-vk: <key>` (virtual keys, Bifrost style).
    pub fn virtual_key() -> Extractor {
        Extractor::header(HeaderName::from_static("x-bf-vk"))
    }

    /// The default order: [`bearer`](Extractor::bearer),
    /// [`x_api_key`](Extractor::x_api_key), [`api_key`](Extractor::api_key),
    /// [`virtual_key`](Extractor::virtual_key).
    pub fn defaults() -> Vec<Extractor> {
        vec![
            Extractor::bearer(),
            Extractor::x_api_key(),
            Extractor::api_key(),
            Extractor::virtual_key(),
        ]
    }

    /// Your own extractor.
    pub fn custom(extractor: impl ExtractApiKey) -> Extractor {
        Extractor {
            source: Source::Custom(Arc::new(extractor)),
            description: Cow::Borrowed("a custom location"),
        }
    }

    /// Your own extractor, as a closure.
    pub fn from_fn<F>(extract: F) -> Extractor
    where
        F: Fn(&Parts) -> Option<Cow<'_, str>> + Send + Sync + 'static,
    {
        Extractor::custom(extract)
    }

    /// Sets how the 401 `missing_api_key` message names this place
    /// (`"the \`key\` query parameter"`).
    pub fn described_as(mut self, description: impl Into<Cow<'static, str>>) -> Extractor {
        self.description = description.into();
        self
    }

    /// How the 401 `missing_api_key` message names this place.
    pub fn description(&self) -> &str {
        &self.description
    }

    fn find<'a>(&self, head: Head<'a>) -> Found<'a> {
        match &self.source {
            Source::Bearer => bearer(head.headers()),
            Source::Header(name) => single(head.headers(), name),
            Source::Custom(extract) => match head {
                Head::Parts(parts) => match extract.extract(parts) {
                    Some(Cow::Borrowed(key)) => Found::Key(Cow::Borrowed(key.as_bytes())),
                    Some(Cow::Owned(key)) => Found::Key(Cow::Owned(key.into_bytes())),
                    None => Found::Missing,
                },
                // Not reached: `needs_parts` gives a custom extractor the
                // whole head. Were it reached, the key is missing: a 401.
                Head::Headers(_) => Found::Missing,
            },
        }
    }
}

impl fmt::Debug for Extractor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Bearer => f.write_str("Bearer"),
            Source::Header(name) => f.debug_tuple("Header").field(name).finish(),
            Source::Custom(_) => f.debug_tuple("Custom").field(&self.description).finish(),
        }
    }
}

/// What the extractors read: the request's head, or, when none of them is
/// custom (the usual case, see [`needs_parts`]), only its headers, so that
/// the request need not be taken apart and put together again.
#[derive(Clone, Copy)]
pub(crate) enum Head<'a> {
    Parts(&'a Parts),
    Headers(&'a HeaderMap),
}

impl<'a> Head<'a> {
    fn headers(self) -> &'a HeaderMap {
        match self {
            Head::Parts(parts) => &parts.headers,
            Head::Headers(headers) => headers,
        }
    }
}

/// Whether `extractors` need the whole head ([`Head::Parts`]): a custom one
/// reads it.
pub(crate) fn needs_parts(extractors: &[Extractor]) -> bool {
    extractors
        .iter()
        .any(|extractor| matches!(extractor.source, Source::Custom(_)))
}

/// The first key any extractor finds. A malformed value is reported only
/// when no other place holds a key, so a stray header of another scheme does
/// not hide a good key.
pub(crate) fn find<'a>(extractors: &[Extractor], head: Head<'a>) -> Found<'a> {
    let mut malformed = None;
    for extractor in extractors {
        match extractor.find(head) {
            Found::Key(key) => return Found::Key(key),
            Found::Malformed(reason) => {
                malformed.get_or_insert(reason);
            }
            Found::Missing => {}
        }
    }
    malformed.map_or(Found::Missing, Found::Malformed)
}

/// The trimmed value of `name`: missing when absent or blank, malformed
/// when repeated (two keys are ambiguous) or not visible ASCII.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Found<'a> {
    match only_value(headers, name) {
        Ok(value) => trimmed(value),
        Err(found) => found,
    }
}

/// The one value of `name`, or what its absence or repetition means.
fn only_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<&'a HeaderValue, Found<'a>> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Err(Found::Missing);
    };
    if values.next().is_some() {
        return Err(Found::Malformed(
            "The request carries more than one key header of the same name.",
        ));
    }
    Ok(value)
}

/// `value` trimmed, as a key: missing when blank, malformed when not
/// visible ASCII.
fn trimmed(value: &HeaderValue) -> Found<'_> {
    // The usual value, visible ASCII only, in one pass without a branch
    // per byte: nothing to trim. The general path below is its oracle.
    if let Some(key) = visible_key(value.as_bytes()) {
        return Found::Key(Cow::Borrowed(key));
    }
    // `to_str` admits visible ASCII and tabs only: ASCII trimming is the
    // whole of `trim` here, without decoding characters.
    match value.to_str().map(str::trim_ascii) {
        Ok("") => Found::Missing,
        Ok(value) => Found::Key(Cow::Borrowed(value.as_bytes())),
        Err(_) => {
            Found::Malformed("The API key header contains characters that are not printable ASCII.")
        }
    }
}

/// `bytes` as a key when they are one as they stand: not empty, visible
/// ASCII only (no whitespace to trim or to split at).
fn visible_key(bytes: &[u8]) -> Option<&[u8]> {
    (!bytes.is_empty() && crate::header_values::is_visible_ascii(bytes)).then_some(bytes)
}

fn bearer(headers: &HeaderMap) -> Found<'_> {
    let value = match only_value(headers, &AUTHORIZATION) {
        Ok(value) => value,
        Err(found) => return found,
    };
    // The usual form, `Bearer <key>` with one space and a visible-ASCII
    // key, read in one pass; every other form takes the general path.
    let bytes = value.as_bytes();
    if bytes.len() > 7
        && bytes[..7].eq_ignore_ascii_case(b"bearer ")
        && let Some(key) = visible_key(&bytes[7..])
    {
        return Found::Key(Cow::Borrowed(key));
    }
    let value = match trimmed(value) {
        Found::Key(Cow::Borrowed(value)) => value,
        other => return other,
    };
    // ASCII (see `trimmed`): bytes, not characters.
    let (scheme, rest) = match value.iter().position(u8::is_ascii_whitespace) {
        Some(at) => (&value[..at], &value[at + 1..]),
        None => (value, &[][..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Found::Malformed("The Authorization header must use the Bearer scheme.");
    }
    let key = rest.trim_ascii();
    if key.is_empty() {
        Found::Missing
    } else if key.iter().any(u8::is_ascii_whitespace) {
        Found::Malformed("The Authorization header must hold a single key after `Bearer`.")
    } else {
        Found::Key(Cow::Borrowed(key))
    }
}

/// "You didn't provide an API key. Send it in A, B or C."
pub(crate) fn missing_message(extractors: &[Extractor]) -> String {
    let mut message = String::from("You didn't provide an API key.");
    let places: Vec<&str> = extractors.iter().map(Extractor::description).collect();
    if let Some((last, first)) = places.split_last() {
        message.push_str(" Send it in ");
        if !first.is_empty() {
            message.push_str(&first.join(", "));
            message.push_str(" or ");
        }
        message.push_str(last);
        message.push('.');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder();
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    /// What the default extractors find in a request with `headers`.
    fn found(headers: &[(&str, &str)]) -> Result<String, &'static str> {
        match find(&Extractor::defaults(), Head::Parts(&parts(headers))) {
            Found::Key(key) => Ok(String::from_utf8(key.into_owned()).unwrap()),
            Found::Malformed(_) => Err("malformed"),
            Found::Missing => Err("missing"),
        }
    }

    #[test]
    fn bearer_forms() {
        for (value, expected) in [
            ("Bearer sk-1", Ok("sk-1".to_owned())),
            ("bearer sk-1", Ok("sk-1".to_owned())),
            ("BEARER   sk-1  ", Ok("sk-1".to_owned())),
            ("  Bearer\tsk-1", Ok("sk-1".to_owned())),
            ("Basic abc", Err("malformed")),
            ("Bearer a b", Err("malformed")),
            ("Bearer ", Err("missing")),
            ("Bearersk-1", Err("malformed")),
            ("Bearer  sk-1", Ok("sk-1".to_owned())),
            ("bEaReR sk-1\t", Ok("sk-1".to_owned())),
        ] {
            assert_eq!(found(&[("authorization", value)]), expected, "{value:?}");
        }
    }

    #[test]
    fn header_forms() {
        for (value, expected) in [
            ("sk-1", Ok("sk-1".to_owned())),
            ("  sk-1\t", Ok("sk-1".to_owned())),
            ("sk 1", Ok("sk 1".to_owned())),
            ("   ", Err("missing")),
        ] {
            assert_eq!(found(&[("x-api-key", value)]), expected, "{value:?}");
        }
        let mut head = parts(&[]);
        let bad = http::HeaderValue::from_bytes("sk-é".as_bytes()).unwrap();
        head.headers.insert("x-api-key", bad);
        assert!(matches!(
            find(&Extractor::defaults(), Head::Headers(&head.headers)),
            Found::Malformed(_)
        ));
    }

    #[test]
    fn malformed_does_not_hide_a_key_elsewhere() {
        let head = [("authorization", "Basic abc"), ("x-api-key", "sk-2")];
        assert_eq!(found(&head), Ok("sk-2".into()));
    }

    #[test]
    fn repeated_headers_are_ambiguous() {
        let head = [("x-api-key", "sk-1"), ("x-api-key", "sk-2")];
        assert_eq!(found(&head), Err("malformed"));
    }

    #[test]
    fn missing_message_names_every_place() {
        assert_eq!(
            missing_message(&[Extractor::x_api_key()]),
            "You didn't provide an API key. Send it in the `x-api-key` header."
        );
        let all = missing_message(&Extractor::defaults());
        assert!(
            all.contains("Bearer") && all.contains("`x-bf-vk` header."),
            "{all}"
        );
        assert_eq!(missing_message(&[]), "You didn't provide an API key.");
    }
}
