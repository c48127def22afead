//! The first event of a stream, when it is an error: the error response to
//! answer instead of a 200 stream.

use http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::sse::{self, ERROR};
use crate::{ApiError, ErrorKind, Origin};

/// If the first event is an error, the error to answer with instead of a
/// stream. An event is an error when its name is `error` or its JSON has a
/// truthy `error` key (the test the OpenAI SDKs apply).
pub(crate) fn first_event_error(region: &[u8], flags: u8, headers: &HeaderMap) -> Option<ApiError> {
    let event = sse::last_event(region)?;
    // A healthy first event has no `error` key: without the bytes `"error"`,
    // or a `\u` escape that could spell them, its data need not be parsed.
    if flags & ERROR == 0
        && event.name.as_deref() != Some("error")
        && memchr::memmem::find(&event.data, b"\"error\"").is_none()
        && memchr::memmem::find(&event.data, b"\\u").is_none()
    {
        return None;
    }
    let value: Option<Value> = serde_json::from_slice(&event.data).ok();
    let is_error = flags & ERROR != 0
        || event.name.as_deref() == Some("error")
        || value
            .as_ref()
            .and_then(|v| v.get("error"))
            .is_some_and(truthy);
    if !is_error {
        return None;
    }
    let status = status_of(value.as_ref());
    Some(crate::envelope::parse(status, headers, &event.data).with_origin(Origin::Upstream))
}

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

/// The status for an error event, which has none of its own: an explicit
/// numeric status if the event carries one, else the status of the kind its
/// `code` or `type` names, else 502.
fn status_of(value: Option<&Value>) -> StatusCode {
    let Some(object) = value.and_then(Value::as_object) else {
        return ErrorKind::BadGateway.status();
    };
    let error = match object.get("error") {
        Some(Value::Object(error)) => error,
        _ => object,
    };
    for candidate in [error.get("status"), error.get("code"), object.get("status")] {
        if let Some(status) = candidate
            .and_then(Value::as_u64)
            .filter(|s| (400..=599).contains(s))
            .and_then(|s| StatusCode::from_u16(s as u16).ok())
        {
            return status;
        }
    }
    error
        .get("code")
        .and_then(Value::as_str)
        .and_then(ErrorKind::from_code)
        .or_else(|| {
            error
                .get("type")
                .and_then(Value::as_str)
                .and_then(kind_from_type)
        })
        .unwrap_or(ErrorKind::BadGateway)
        .status()
}

/// The kind an OpenAI or Anthropic `error.type` stands for.
fn kind_from_type(error_type: &str) -> Option<ErrorKind> {
    use ErrorKind::*;
    Some(match error_type {
        "invalid_request_error" => InvalidRequest,
        "authentication_error" => Authentication,
        "permission_error" => PermissionDenied,
        "not_found_error" => NotFound,
        "request_too_large" => PayloadTooLarge,
        "rate_limit_error" => RateLimited,
        "insufficient_quota" => QuotaExhausted,
        "billing_error" | "budget_exceeded_error" => BudgetExceeded,
        "conflict_error" => Conflict,
        "server_error" | "api_error" => Internal,
        "timeout_error" => Timeout,
        "overloaded_error" => Overloaded,
        "api_connection_error" => Connection,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_of_error_events() {
        let s = |json: &str| status_of(serde_json::from_str::<Value>(json).ok().as_ref()).as_u16();
        assert_eq!(
            s(r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#),
            429
        );
        assert_eq!(
            s(r#"{"error":{"code":"context_length_exceeded","type":"invalid_request_error"}}"#),
            400
        );
        assert_eq!(
            s(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#),
            529
        );
        assert_eq!(s(r#"{"error":{"code":503,"message":"down"}}"#), 503);
        assert_eq!(
            s(r#"{"type":"error","code":"rate_limit_exceeded","message":"x"}"#),
            429
        );
        assert_eq!(s(r#"{"error":"something"}"#), 502);
        assert_eq!(s("not json"), 502);
    }

    #[test]
    fn truthiness_follows_python() {
        for (json, t) in [
            ("null", false),
            ("{}", false),
            ("\"\"", false),
            ("0", false),
            ("{\"m\":1}", true),
            ("\"x\"", true),
        ] {
            assert_eq!(truthy(&serde_json::from_str(json).unwrap()), t, "{json}");
        }
    }
}
