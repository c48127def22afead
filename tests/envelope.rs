//! The error model on the wire: every `ErrorKind` in every `ErrorFormat`,
//! parsing of each vendor's real error bodies, round trips, and
//! `ErrorEnvelopeLayer` in front of the failures a gateway meets.
//!
//! One test binary; its parts live in `tests/envelope/`.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tollgate::envelope::{self, ErrorFormat};
use tollgate::{ApiError, ErrorKind, Origin};

const FORMATS: [ErrorFormat; 5] = [
    ErrorFormat::OpenAi,
    ErrorFormat::Anthropic,
    ErrorFormat::ErrorCodeDetail,
    ErrorFormat::Humanloop,
    ErrorFormat::Grpc,
];

/// One row of the table, written out independently of `ErrorKind`'s
/// own methods so the test checks the code against the spec, not itself.
struct Row {
    kind: ErrorKind,
    status: u16,
    error_type: &'static str,
    code: &'static str,
    param: Option<&'static str>,
    anthropic_type: &'static str,
    grpc_status: u8,
    should_retry: bool,
}

const fn row(
    kind: ErrorKind,
    status: u16,
    error_type: &'static str,
    code: &'static str,
    anthropic_type: &'static str,
    grpc_status: u8,
    should_retry: bool,
) -> Row {
    Row {
        kind,
        status,
        error_type,
        code,
        param: None,
        anthropic_type,
        grpc_status,
        should_retry,
    }
}

#[rustfmt::skip]
const TABLE: [Row; 20] = {
    use ErrorKind::*;
    [
        row(InvalidRequest, 400, "invalid_request_error", "invalid_request", "invalid_request_error", 3, false),
        Row { param: Some("model"), ..row(InvalidModel, 400, "invalid_request_error", "invalid_model", "invalid_request_error", 3, false) },
        row(ContextLengthExceeded, 400, "invalid_request_error", "context_length_exceeded", "invalid_request_error", 3, false),
        row(ContentFilter, 400, "invalid_request_error", "content_filter", "invalid_request_error", 3, false),
        row(Authentication, 401, "invalid_request_error", "invalid_api_key", "authentication_error", 16, false),
        row(BudgetExceeded, 402, "budget_exceeded_error", "budget_exceeded", "billing_error", 8, false),
        row(PermissionDenied, 403, "permission_error", "permission_denied", "permission_error", 7, false),
        row(InsufficientBalance, 403, "insufficient_quota", "insufficient_balance", "billing_error", 7, false),
        row(NotFound, 404, "not_found_error", "not_found", "not_found_error", 5, false),
        row(Conflict, 409, "conflict_error", "conflict", "invalid_request_error", 10, true),
        row(PayloadTooLarge, 413, "invalid_request_error", "payload_too_large", "request_too_large", 3, false),
        row(Unprocessable, 422, "invalid_request_error", "unprocessable_entity", "invalid_request_error", 3, false),
        row(RateLimited, 429, "rate_limit_error", "rate_limit_exceeded", "rate_limit_error", 8, true),
        row(QuotaExhausted, 429, "insufficient_quota", "insufficient_quota", "billing_error", 8, false),
        row(Internal, 500, "server_error", "internal_error", "api_error", 13, true),
        row(BadGateway, 502, "server_error", "bad_gateway", "api_error", 14, true),
        row(Unavailable, 503, "server_error", "service_unavailable", "api_error", 14, true),
        row(Timeout, 504, "timeout_error", "timeout", "timeout_error", 4, true),
        row(Overloaded, 529, "overloaded_error", "overloaded", "overloaded_error", 14, true),
        row(Connection, 502, "api_connection_error", "api_connection_error", "api_error", 14, true),
    ]
};

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn json_opt(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_owned(), json_str)
}

fn body_of(response: Response<Full<Bytes>>) -> (http::response::Parts, Bytes) {
    let (parts, body) = response.into_parts();
    let bytes = futures_util::FutureExt::now_or_never(body.collect())
        .expect("a Full body is ready")
        .unwrap()
        .to_bytes();
    (parts, bytes)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

fn grpc_encoded(message: &str) -> String {
    let mut out = String::new();
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[path = "envelope/layer.rs"]
mod layer;
#[path = "envelope/parse.rs"]
mod parse;
#[path = "envelope/props.rs"]
mod props;
#[path = "envelope/render.rs"]
mod render;
