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

const FORMATS: [ErrorFormat; 6] = [
    ErrorFormat::OpenAi,
    ErrorFormat::AltLlm,
    ErrorFormat::Anthropic,
    ErrorFormat::ErrorCodeDetail,
    ErrorFormat::Humanloop,
    ErrorFormat::Grpc,
];

/// One row of the table, written out independently of `ErrorKind`'s
/// own methods so the test checks the code against the spec, not itself.
/// The HAI and AltLLM columns come from their guides
/// (`tests/fixtures/seeds/`), the mapping of each kind to them from
/// `docs/formats.md`.
struct Row {
    kind: ErrorKind,
    status: u16,
    error_type: &'static str,
    code: &'static str,
    param: Option<&'static str>,
    anthropic_type: &'static str,
    grpc_status: u8,
    should_retry: bool,
    hai: (u16, &'static str),
    altllm_type: &'static str,
}

#[allow(clippy::too_many_arguments)]
const fn row(
    kind: ErrorKind,
    status: u16,
    error_type: &'static str,
    code: &'static str,
    anthropic_type: &'static str,
    grpc_status: u8,
    should_retry: bool,
    hai: (u16, &'static str),
    altllm_type: &'static str,
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
        hai,
        altllm_type,
    }
}

#[rustfmt::skip]
const TABLE: [Row; 20] = {
    use ErrorKind::*;
    [
        row(InvalidRequest, 400, "invalid_request_error", "invalid_request", "invalid_request_error", 3, false, (400, "bad_request"), "invalid_request_error"),
        Row { param: Some("model"), ..row(InvalidModel, 400, "invalid_request_error", "invalid_model", "invalid_request_error", 3, false, (400, "bad_request"), "model_error") },
        row(ContextLengthExceeded, 400, "invalid_request_error", "context_length_exceeded", "invalid_request_error", 3, false, (400, "bad_request"), "invalid_request_error"),
        row(ContentFilter, 400, "invalid_request_error", "content_filter", "invalid_request_error", 3, false, (400, "content_filter_error"), "invalid_request_error"),
        row(Authentication, 401, "invalid_request_error", "invalid_api_key", "authentication_error", 16, false, (401, "unauthorized"), "auth_error"),
        row(BudgetExceeded, 402, "budget_exceeded_error", "budget_exceeded", "billing_error", 8, false, (403, "permission_denied"), "budget_exceeded"),
        row(PermissionDenied, 403, "permission_error", "permission_denied", "permission_error", 7, false, (403, "permission_denied"), "auth_error"),
        row(InsufficientBalance, 403, "insufficient_quota", "insufficient_balance", "billing_error", 7, false, (403, "permission_denied"), "budget_exceeded"),
        row(NotFound, 404, "not_found_error", "not_found", "not_found_error", 5, false, (400, "bad_request"), "invalid_request_error"),
        row(Conflict, 409, "conflict_error", "conflict", "invalid_request_error", 10, true, (409, "conflict_error"), "invalid_request_error"),
        row(PayloadTooLarge, 413, "invalid_request_error", "payload_too_large", "request_too_large", 3, false, (400, "bad_request"), "invalid_request_error"),
        row(Unprocessable, 422, "invalid_request_error", "unprocessable_entity", "invalid_request_error", 3, false, (422, "unprocessable_entity"), "invalid_request_error"),
        row(RateLimited, 429, "rate_limit_error", "rate_limit_exceeded", "rate_limit_error", 8, true, (429, "rate_limit_error"), "rate_limit_error"),
        row(QuotaExhausted, 429, "insufficient_quota", "insufficient_quota", "billing_error", 8, false, (403, "permission_denied"), "budget_exceeded"),
        row(Internal, 500, "server_error", "internal_error", "api_error", 13, true, (500, "api_error"), "api_error"),
        row(BadGateway, 502, "server_error", "bad_gateway", "api_error", 14, true, (500, "api_error"), "api_error"),
        row(Unavailable, 503, "server_error", "service_unavailable", "api_error", 14, true, (500, "api_error"), "api_error"),
        row(Timeout, 504, "timeout_error", "timeout", "timeout_error", 4, true, (500, "api_timeout_error"), "api_error"),
        row(Overloaded, 529, "overloaded_error", "overloaded", "overloaded_error", 14, true, (500, "api_error"), "api_error"),
        row(Connection, 502, "api_connection_error", "api_connection_error", "api_error", 14, true, (500, "api_connection_error"), "api_error"),
    ]
};

/// HAI's table (003-hai-errors.txt), `error_code` → `detail`; the content
/// filter's from the guide's example.
fn hai_detail(code: &str) -> &'static str {
    match code {
        "content_filter_error" => {
            "Could not parse response content as the request was rejected by the content filter"
        }
        "bad_request" => "OpenAI API request was invalid.",
        "length_finish_reason_error" => "OpenAI length filter finished with an error.",
        "unauthorized" => "Authentication credentials.",
        "permission_denied" => "OpenAI API request was denied permission.",
        "conflict_error" => "OpenAI API request resulted in a conflict.",
        "unprocessable_entity" => "OpenAI API request was unprocessable.",
        "rate_limit_error" => "OpenAI API request rate limit exceeded.",
        "api_timeout_error" => "OpenAI API request timed out.",
        "api_connection_error" => "OpenAI API request connection error.",
        "api_error" => "OpenAI API request resulted in an error.",
        other => panic!("not a HAI code: {other}"),
    }
}

/// Humanloop's `type` for a status: its reason phrase, snake case, `_error`
/// (004-humanloop-errors.txt names 422 `unprocessable_entity_error`).
fn humanloop_type(status: u16) -> &'static str {
    match status {
        400 => "bad_request_error",
        401 => "unauthorized_error",
        402 => "payment_required_error",
        403 => "forbidden_error",
        404 => "not_found_error",
        409 => "conflict_error",
        413 => "payload_too_large_error",
        422 => "unprocessable_entity_error",
        429 => "too_many_requests_error",
        500 => "internal_server_error",
        502 => "bad_gateway_error",
        503 => "service_unavailable_error",
        504 => "gateway_timeout_error",
        529 => "overloaded_error",
        other => panic!("no Humanloop name written for {other}"),
    }
}

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
#[path = "envelope/seeds.rs"]
mod seeds;
