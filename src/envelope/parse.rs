//! Any error body (every [`ErrorFormat`](super::ErrorFormat), plain text, HTML,
//! unknown JSON, nothing at all) → [`ApiError`].

use std::borrow::Cow;

use http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::render::{GRPC_MESSAGE, GRPC_STATUS, X_REQUEST_ID, X_SHOULD_RETRY};
use crate::body::is_encoded;
use crate::error::{ApiError, ErrorKind, Origin, Spend};
use crate::retry::hints::server_delay;

/// Messages taken from unstructured bodies (plain text, HTML, unknown JSON)
/// are cut to this many characters, so a whole error page never becomes a
/// message. Messages from a recognised error shape are kept whole: the body
/// they come from is already bounded by the reader (`ErrorEnvelopeLayer`
/// reads 64 KiB by default), and relaying them unchanged is what makes
/// `render(parse(render(e))) == render(e)` hold.
const MAX_MESSAGE_CHARS: usize = 2048;

/// Parses an error response into an [`ApiError`], keeping its status, message,
/// `type`, `param` and `code` where the body has them.
///
/// Accepts every [`ErrorFormat`](super::ErrorFormat) tollgate renders, gRPC
/// status headers, plain text, HTML pages, unknown JSON (kept as the message)
/// and empty bodies (the kind's default message). The kind comes from the
/// `code` when it is a known one, else from the status and `type`. A body
/// with a `content-encoding` other than `identity` is not read (its bytes
/// would make no message), only its status. Headers give `retry-after-ms`,
/// `retry-after` (seconds or an HTTP date), `x-should-retry` and
/// `x-request-id`. It never panics, whatever the bytes.
pub fn parse(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ApiError {
    let body = if is_encoded(headers) { &[][..] } else { body };
    let mut error = match grpc_code(headers) {
        Some(code) => parse_grpc(code, headers),
        None => parse_body(status, body),
    };
    // `retry-after-ms`, else `retry-after` (seconds or an HTTP date), read
    // as the retry layer reads them.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    if let Some(delay) = server_delay(headers, now.unwrap_or_default(), false) {
        error = error.with_retry_after(delay);
    }
    if let Some(v) = headers.get(X_SHOULD_RETRY).and_then(|v| v.to_str().ok()) {
        match v.trim() {
            "true" => error = error.with_should_retry(true),
            "false" => error = error.with_should_retry(false),
            _ => {}
        }
    }
    if error.request_id().is_none()
        && let Some(id) = headers.get(X_REQUEST_ID).and_then(|v| v.to_str().ok())
    {
        error = error.with_request_id(id.to_owned());
    }
    error
}

/// Whether `headers` say gRPC (`content-type: application/grpc…`).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status of a gRPC error response: its `grpc-status` header (2,
/// UNKNOWN, when unreadable). `None` for a response that is not gRPC, or a
/// gRPC one without `grpc-status`: a proxy's 503 in front of a gRPC server
/// says more through its HTTP status than UNKNOWN would.
pub(crate) fn grpc_code(headers: &HeaderMap) -> Option<u8> {
    let value = headers.get(GRPC_STATUS)?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u8>().ok())
            .unwrap_or(2),
    )
}

fn parse_grpc(code: u8, headers: &HeaderMap) -> ApiError {
    let (status, kind) = match code {
        3 | 9 | 11 => (StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest),
        16 => (StatusCode::UNAUTHORIZED, ErrorKind::Authentication),
        7 => (StatusCode::FORBIDDEN, ErrorKind::PermissionDenied),
        8 => (StatusCode::TOO_MANY_REQUESTS, ErrorKind::RateLimited),
        5 => (StatusCode::NOT_FOUND, ErrorKind::NotFound),
        6 | 10 => (StatusCode::CONFLICT, ErrorKind::Conflict),
        14 => (StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Unavailable),
        4 => (StatusCode::GATEWAY_TIMEOUT, ErrorKind::Timeout),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Internal),
    };
    let mut error = ApiError::from_kind(kind).with_status(status);
    // Present but empty stays empty: the sender chose no message.
    if let Some(message) = headers.get(GRPC_MESSAGE) {
        error = error.with_message(percent_decode(message.as_bytes()));
    }
    error
}

/// A `grpc-message` as sent: `%XX` decoded, anything else (a `%` without
/// two hex digits) kept as it is, invalid UTF-8 replaced.
fn percent_decode(input: &[u8]) -> String {
    percent_encoding::percent_decode(input)
        .decode_utf8_lossy()
        .into_owned()
}

fn parse_body(status: StatusCode, body: &[u8]) -> ApiError {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim();
    let fallback = || by_status(status);
    if trimmed.is_empty() {
        return fallback();
    }
    if (trimmed.starts_with('{') || trimmed.starts_with('['))
        && let Ok(value) = serde_json::from_str::<Value>(trimmed)
    {
        return parse_json(status, &value)
            .unwrap_or_else(|| fallback().with_message(cut(&compact(&value))));
    }
    if trimmed.starts_with('<') {
        return match html_title(trimmed) {
            Some(title) => fallback().with_message(cut(&title)),
            None => fallback(),
        };
    }
    fallback().with_message(cut(trimmed))
}

/// The error a bare status stands for.
fn by_status(status: StatusCode) -> ApiError {
    ApiError::from_kind(ErrorKind::from_status(status)).with_status(status)
}

fn compact(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn cut(s: &str) -> String {
    match s.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((idx, _)) => format!("{}…", &s[..idx]),
        None => s.to_owned(),
    }
}

fn html_title(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let start = lower.find("<title>")? + "<title>".len();
    let end = start + lower[start..].find("</title>")?;
    let title = html
        .get(start..end)?
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    (!title.is_empty()).then_some(title)
}

fn as_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(s) => Some(Cow::Borrowed(s.as_str())),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

/// Builds the error from recognised JSON shapes; `None` for unknown JSON.
fn parse_json(status: StatusCode, value: &Value) -> Option<ApiError> {
    parse_object(status, value.as_object()?)
}

fn parse_object(status: StatusCode, obj: &serde_json::Map<String, Value>) -> Option<ApiError> {
    // FastAPI and Humanloop wrap the payload in `detail`.
    if let Some(Value::Object(inner)) = obj.get("detail")
        && inner.contains_key("message")
    {
        return parse_object(status, inner);
    }
    match obj.get("error") {
        Some(Value::Object(err)) => {
            let etype = err.get("type").and_then(as_text);
            let code = err.get("code").and_then(as_text);
            // Anthropic: {"type":"error","error":{"type","message"},"request_id"}
            let anthropic = obj.get("type").and_then(Value::as_str) == Some("error");
            let kind = if anthropic {
                kind_from_anthropic(status, etype.as_deref())
            } else {
                kind_from(status, code.as_deref(), etype.as_deref())
            };
            let mut e = ApiError::from_kind(kind).with_status(status);
            if let Some(m) = err.get("message").and_then(as_text) {
                e = e.with_message(m.into_owned());
            }
            if anthropic {
                if let Some(id) = obj.get("request_id").and_then(Value::as_str) {
                    e = e.with_request_id(id.to_owned());
                }
                return Some(e);
            }
            if let Some(t) = etype {
                e = e.with_type(t.into_owned());
            }
            e = match err.get("param").and_then(as_text) {
                Some(p) => e.with_param(p.into_owned()),
                None => e.without_param(),
            };
            Some(match code {
                Some(c) => e.with_code(c.into_owned()),
                None => e.without_code(),
            })
        }
        Some(Value::String(message)) => Some(by_status(status).with_message(message.clone())),
        _ => {
            if obj.contains_key("error_code") || obj.contains_key("detail") {
                let code = obj.get("error_code").and_then(as_text);
                let kind = kind_from(status, code.as_deref(), None);
                let mut e = ApiError::from_kind(kind).with_status(status);
                if let Some(detail) = obj.get("detail") {
                    e = e.with_message(match as_text(detail) {
                        Some(text) => text.into_owned(),
                        None => cut(&compact(detail)),
                    });
                }
                return Some(match code {
                    Some(c) => e.with_code(c.into_owned()),
                    None if obj.contains_key("error_code") => e.without_code(),
                    None => e,
                });
            }
            let message = obj.get("message").and_then(as_text)?;
            let etype = obj.get("type").and_then(as_text);
            // Humanloop: {"type","message","code":<status>,"origin"}
            let kind = kind_from(status, None, etype.as_deref());
            let mut e = ApiError::from_kind(kind)
                .with_status(status)
                .with_message(message.into_owned());
            if let Some(t) = etype {
                e = e.with_type(t.into_owned());
            }
            if let Some(Value::String(code)) = obj.get("code") {
                e = e.with_code(code.clone());
            }
            match obj.get("origin").and_then(Value::as_str) {
                Some("Gateway") | None => {}
                Some("Upstream") => e = e.with_origin(Origin::Upstream),
                Some(provider) => e = e.with_provider(provider.to_owned()),
            }
            Some(e)
        }
    }
}

/// Kind from a known code, else from the status with the `type` breaking ties.
///
/// A 429 whose code or type names a budget or a quota (`budget_exceeded`,
/// `budget_exceeded_error`, `insufficient_quota`, `billing_error`, …) is a
/// spent budget or quota whatever else it says: no wait makes it succeed,
/// so it must never be classified as a rate limit.
fn kind_from(status: StatusCode, code: Option<&str>, etype: Option<&str>) -> ErrorKind {
    if status == StatusCode::TOO_MANY_REQUESTS {
        match Spend::named(code, etype) {
            Some(Spend::Budget) => return ErrorKind::BudgetExceeded,
            Some(Spend::Quota) => return ErrorKind::QuotaExhausted,
            None => {}
        }
    }
    if let Some(kind) = code.and_then(ErrorKind::from_code) {
        // A code only wins when it agrees with the status class, so a 500
        // saying `invalid_request` still counts as a server error.
        if kind.status().is_server_error() == status.is_server_error() {
            return kind;
        }
    }
    let by_status = ErrorKind::from_status(status);
    match (by_status, etype) {
        (ErrorKind::PermissionDenied, Some(t)) if Spend::of(t).is_some() => {
            ErrorKind::InsufficientBalance
        }
        (ErrorKind::BadGateway, Some("api_connection_error")) => ErrorKind::Connection,
        (ErrorKind::Internal, Some("overloaded_error")) => ErrorKind::Overloaded,
        // AltLLM's name for a model that is unknown or not served.
        (kind, Some("model_error")) if kind.status().is_client_error() => ErrorKind::InvalidModel,
        (kind, _) => kind,
    }
}

fn kind_from_anthropic(status: StatusCode, etype: Option<&str>) -> ErrorKind {
    let by_status = ErrorKind::from_status(status);
    match etype {
        Some("billing_error") => match status.as_u16() {
            402 => ErrorKind::BudgetExceeded,
            429 => ErrorKind::QuotaExhausted,
            _ => ErrorKind::InsufficientBalance,
        },
        Some("overloaded_error") => ErrorKind::Overloaded,
        Some("api_error") if by_status == ErrorKind::BadGateway => ErrorKind::BadGateway,
        _ => by_status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(status: u16, body: &str) -> ApiError {
        parse(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
        )
    }

    #[test]
    fn openai_401() {
        let e = p(
            401,
            r#"{"error":{"message":"Incorrect API key provided: sk-abc***def.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
        );
        assert_eq!(e.kind(), ErrorKind::Authentication);
        assert_eq!(e.code(), Some("invalid_api_key"));
        assert_eq!(e.param(), None);
    }

    #[test]
    fn quota_429_is_quota_exhausted() {
        let e = p(
            429,
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        );
        assert_eq!(e.kind(), ErrorKind::QuotaExhausted);
        assert!(!e.should_retry());
    }

    #[test]
    fn html_and_text_and_empty() {
        let e = p(
            502,
            "<html><head><title>502 Bad Gateway</title></head></html>",
        );
        assert_eq!(
            (e.kind(), e.message()),
            (ErrorKind::BadGateway, "502 Bad Gateway")
        );
        let e = p(413, "length limit exceeded");
        assert_eq!(
            (e.kind(), e.message()),
            (ErrorKind::PayloadTooLarge, "length limit exceeded")
        );
        let e = p(401, "");
        assert_eq!(e.kind(), ErrorKind::Authentication);
    }

    #[test]
    fn percent_decoding_tolerates_garbage() {
        assert_eq!(percent_decode(b"a%20b%"), "a b%");
        assert_eq!(percent_decode(b"%zz%4"), "%zz%4");
        assert_eq!(percent_decode(b"%C3%A7"), "ç");
    }
}

/// Parses an in-band SSE error event (OpenAI `data: {"error":…}`, Anthropic
/// `event: error`, the Responses API's `{"type":"error","code",…}`) into an
/// [`ApiError`]; `None` when the event is not an error.
///
/// An event is an error when it is named `error` or its JSON has a truthy
/// `error` key (the test the official OpenAI SDKs apply). Such an event has
/// no HTTP status of its own: it gets a numeric `status`/`code` in 400–599
/// when it carries one, else the status of the kind its `code` or `type`
/// names, else `fallback`. `headers` are the stream's (for `x-request-id`).
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use tollgate::ErrorKind;
/// use tollgate::envelope::parse_event;
///
/// let data = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
/// let err = parse_event(Some("error"), data, &HeaderMap::new(), StatusCode::BAD_GATEWAY).unwrap();
/// assert_eq!((err.kind(), err.status().as_u16()), (ErrorKind::Overloaded, 529));
/// assert!(parse_event(None, br#"{"choices":[]}"#, &HeaderMap::new(), StatusCode::BAD_GATEWAY).is_none());
/// ```
pub fn parse_event(
    name: Option<&str>,
    data: &[u8],
    headers: &HeaderMap,
    fallback: StatusCode,
) -> Option<ApiError> {
    let data = data.trim_ascii();
    let json: Option<Value> = if data.starts_with(b"{") {
        serde_json::from_slice(data).ok()
    } else {
        None
    };
    let is_error = name == Some("error")
        || json
            .as_ref()
            .and_then(|v| v.get("error"))
            .is_some_and(truthy);
    if !is_error {
        return None;
    }
    let status = event_status(json.as_ref()).unwrap_or(fallback);
    Some(parse(status, headers, data))
}

/// Python's truthiness, as the SDKs test `error` keys.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// The status an error event stands for, if it says.
fn event_status(json: Option<&Value>) -> Option<StatusCode> {
    let top = json?.as_object()?;
    let nested = top.get("error").and_then(Value::as_object);
    let objects = || nested.into_iter().chain(Some(top));
    for obj in objects() {
        for field in ["status", "code"] {
            let number = obj.get(field).and_then(|v| match v {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.parse::<u64>().ok(),
                _ => None,
            });
            if let Some(status) = number
                .filter(|n| (400..600).contains(n))
                .and_then(|n| StatusCode::from_u16(n as u16).ok())
            {
                return Some(status);
            }
        }
    }
    let text = |obj: &serde_json::Map<String, Value>, field: &str| {
        obj.get(field)
            .and_then(Value::as_str)
            .filter(|t| *t != "error")
            .map(str::to_owned)
    };
    for obj in objects() {
        if let Some(kind) = text(obj, "code").and_then(|c| ErrorKind::from_code(&c)) {
            return Some(kind.status());
        }
    }
    objects().find_map(|obj| text(obj, "type").and_then(|t| status_of_type(&t)))
}

/// The status of an error `type`: tollgate's own table, plus the Anthropic
/// types it does not render.
fn status_of_type(error_type: &str) -> Option<StatusCode> {
    if let Some(kind) = ErrorKind::ALL.iter().find(|k| k.error_type() == error_type) {
        return Some(kind.status());
    }
    Some(match error_type {
        "authentication_error" => StatusCode::UNAUTHORIZED,
        "billing_error" => StatusCode::PAYMENT_REQUIRED,
        "request_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "api_error" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => return None,
    })
}

#[cfg(test)]
mod event_tests {
    use super::*;

    /// The status `parse_event` gives the event (0: not an error).
    fn s(name: Option<&str>, data: &str, fallback: u16) -> u16 {
        let fallback = StatusCode::from_u16(fallback).unwrap();
        parse_event(name, data.as_bytes(), &HeaderMap::new(), fallback)
            .map_or(0, |e| e.status().as_u16())
    }

    #[test]
    fn statuses_of_error_events() {
        for (name, data, status) in [
            (
                None,
                r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#,
                429,
            ),
            (
                None,
                r#"{"error":{"code":"context_length_exceeded","type":"invalid_request_error"}}"#,
                400,
            ),
            (
                None,
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                529,
            ),
            (None, r#"{"error":{"code":503,"message":"down"}}"#, 503),
            (None, r#"{"error":{"code":"429","message":"x"}}"#, 429),
            (None, r#"{"error":"something"}"#, 502),
            (
                None,
                r#"{"error":{"type":"insufficient_quota","code":"insufficient_quota"}}"#,
                429,
            ),
            (
                Some("error"),
                r#"{"type":"error","code":"rate_limit_exceeded","message":"x"}"#,
                429,
            ),
        ] {
            assert_eq!(s(name, data, 502), status, "{data}");
        }
        assert_eq!(s(Some("error"), "upstream went away", 500), 500);
    }

    #[test]
    fn only_truthy_error_keys_are_errors() {
        for data in [
            r#"{"error":null}"#,
            r#"{"error":false}"#,
            r#"{"error":""}"#,
            r#"{"error":{}}"#,
            "[DONE]",
            "{}",
        ] {
            assert_eq!(s(Some("message"), data, 502), 0, "{data}");
        }
    }
}
