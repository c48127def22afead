//! The names each format gives a failure: Anthropic's and AltLLM's `type`s,
//! HAI's `error_code` table, Humanloop's `type`s.
//!
//! Each table is written from the guide that defines the format (the files
//! in the repository's `tests/fixtures/seeds/`, copied from the API guides;
//! Anthropic's from its API reference), and each is a function of what
//! [`parse`](super::parse()) keeps of a body (status, code, type), so that
//! `render(parse(render(e)))` is `render(e)` in every format.

use http::StatusCode;

use crate::error::{ApiError, ErrorKind, Spend};

/// Anthropic's `error.type` for a kind (its API reference: 400
/// `invalid_request_error`, also for other 4xx; 401 `authentication_error`;
/// 402 `billing_error`; 403 `permission_error`; 404 `not_found_error`; 413
/// `request_too_large`; 429 `rate_limit_error`; 500 `api_error`; 504
/// `timeout_error`; 529 `overloaded_error`). A used-up balance or quota is
/// Anthropic's `billing_error` whatever its status.
pub(crate) fn anthropic_type(kind: ErrorKind) -> &'static str {
    use ErrorKind::*;
    match kind {
        Authentication => "authentication_error",
        BudgetExceeded | InsufficientBalance | QuotaExhausted => "billing_error",
        PermissionDenied => "permission_error",
        NotFound => "not_found_error",
        PayloadTooLarge => "request_too_large",
        RateLimited => "rate_limit_error",
        Internal | BadGateway | Unavailable | Connection => "api_error",
        Timeout => "timeout_error",
        Overloaded => "overloaded_error",
        _ => "invalid_request_error",
    }
}

/// AltLLM's own `type` names (002-altllm-errors.txt), which no other format
/// uses; an error that already carries one keeps it.
const ALTLLM_OWN_TYPES: [&str; 4] = ["auth_error", "model_error", "budget_exceeded", "api_error"];

/// AltLLM's `error.type` (002-altllm-errors.txt: `auth_error`,
/// `invalid_request_error`, `rate_limit_error`, `model_error`,
/// `budget_exceeded`, `api_error`).
///
/// Read from the status, the code and the type, never the kind: those three
/// are what a parsed body keeps verbatim, so a relayed AltLLM error renders
/// back exactly.
pub(crate) fn altllm_type(error: &ApiError) -> &'static str {
    if let Some(own) = ALTLLM_OWN_TYPES.iter().find(|t| **t == error.error_type()) {
        return own;
    }
    let spend = Spend::named(error.code(), Some(error.error_type())).is_some();
    match error.status().as_u16() {
        402 => "budget_exceeded",
        401 => "auth_error",
        403 if spend => "budget_exceeded",
        403 => "auth_error",
        429 if spend => "budget_exceeded",
        429 => "rate_limit_error",
        s if s >= 500 => "api_error",
        _ if matches!(error.code(), Some("invalid_model" | "model_not_found")) => "model_error",
        _ => "invalid_request_error",
    }
}

/// One row of HAI's table (003-hai-errors.txt): status, `error_code`, and
/// the `detail` HAI sends when it has nothing more specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HaiRow {
    pub(crate) status: u16,
    pub(crate) code: &'static str,
    pub(crate) detail: &'static str,
}

const fn hai(status: u16, code: &'static str, detail: &'static str) -> HaiRow {
    HaiRow {
        status,
        code,
        detail,
    }
}

/// HAI's table, row for row. The content filter's detail is the guide's
/// example (the table elides it as "Could not parse ...").
pub(crate) const HAI_TABLE: [HaiRow; 11] = [
    hai(
        400,
        "content_filter_error",
        "Could not parse response content as the request was rejected by the content filter",
    ),
    hai(400, "bad_request", "OpenAI API request was invalid."),
    hai(
        400,
        "length_finish_reason_error",
        "OpenAI length filter finished with an error.",
    ),
    hai(401, "unauthorized", "Authentication credentials."),
    hai(
        403,
        "permission_denied",
        "OpenAI API request was denied permission.",
    ),
    hai(
        409,
        "conflict_error",
        "OpenAI API request resulted in a conflict.",
    ),
    hai(
        422,
        "unprocessable_entity",
        "OpenAI API request was unprocessable.",
    ),
    hai(
        429,
        "rate_limit_error",
        "OpenAI API request rate limit exceeded.",
    ),
    hai(500, "api_timeout_error", "OpenAI API request timed out."),
    hai(
        500,
        "api_connection_error",
        "OpenAI API request connection error.",
    ),
    hai(500, "api_error", "OpenAI API request resulted in an error."),
];

/// The HAI row an error renders as: its own code when that is one of
/// HAI's (and its row's status is of the error's class, 4xx or 5xx), else
/// the row of its kind.
///
/// HAI relays the OpenAI SDK's exception classes, so a kind goes to the row
/// of the exception it would raise, except that a spent budget, balance or
/// quota goes to 403 `permission_denied` rather than 429 `rate_limit_error`:
/// a 429 invites the retry that can never succeed.
pub(crate) fn hai_row(error: &ApiError) -> &'static HaiRow {
    use ErrorKind::*;
    let server_error = error.status().is_server_error();
    let by_kind = match error.kind() {
        ContentFilter => "content_filter_error",
        InvalidRequest | InvalidModel | ContextLengthExceeded | PayloadTooLarge | NotFound => {
            "bad_request"
        }
        Authentication => "unauthorized",
        PermissionDenied | BudgetExceeded | InsufficientBalance | QuotaExhausted => {
            "permission_denied"
        }
        Conflict => "conflict_error",
        Unprocessable => "unprocessable_entity",
        RateLimited => "rate_limit_error",
        Timeout => "api_timeout_error",
        Connection => "api_connection_error",
        _ => "api_error",
    };
    // A row keeps the error's class: a client's 408 is not HAI's 500
    // `api_timeout_error`, it is a bad request.
    let by_class = if server_error {
        "api_error"
    } else {
        "bad_request"
    };
    [error.code(), Some(by_kind), Some(by_class)]
        .into_iter()
        .flatten()
        .find_map(|code| {
            HAI_TABLE
                .iter()
                .find(|row| row.code == code && (row.status >= 500) == server_error)
        })
        .unwrap_or(&HAI_TABLE[HAI_TABLE.len() - 1])
}

/// Humanloop's `type` for a status (004-humanloop-errors.txt): the status's
/// reason phrase in snake case with `_error`, as its one example names 422
/// `unprocessable_entity_error`; 529 is `overloaded_error`, the guide's
/// word for it. A status without a reason phrase counts as its class (400
/// or 500).
pub(crate) fn humanloop_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request_error",
        401 => "unauthorized_error",
        402 => "payment_required_error",
        403 => "forbidden_error",
        404 => "not_found_error",
        405 => "method_not_allowed_error",
        408 => "request_timeout_error",
        409 => "conflict_error",
        413 => "payload_too_large_error",
        415 => "unsupported_media_type_error",
        422 => "unprocessable_entity_error",
        429 => "too_many_requests_error",
        500 => "internal_server_error",
        501 => "not_implemented_error",
        502 => "bad_gateway_error",
        503 => "service_unavailable_error",
        504 => "gateway_timeout_error",
        529 => "overloaded_error",
        s if s >= 500 => "internal_server_error",
        _ => "bad_request_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_hai_row_and_every_row_a_kind() {
        for kind in ErrorKind::ALL {
            let row = hai_row(&ApiError::from_kind(kind));
            assert!(HAI_TABLE.contains(row), "{kind:?}");
        }
        for row in &HAI_TABLE {
            // A row's code parses back to a kind that renders as that row.
            let kind = ErrorKind::from_code(row.code).expect(row.code);
            assert_eq!(hai_row(&ApiError::from_kind(kind).with_code(row.code)), row);
        }
    }

    #[test]
    fn a_hai_row_keeps_the_class_of_the_status() {
        // A 408 parses as a timeout, but the client's timeout is not HAI's
        // 500 `api_timeout_error` (found by the layer's property test).
        let client_timeout =
            ApiError::from_kind(ErrorKind::Timeout).with_status(StatusCode::REQUEST_TIMEOUT);
        assert_eq!(hai_row(&client_timeout).code, "bad_request");
        let gateway_timeout = ApiError::from_kind(ErrorKind::Timeout);
        assert_eq!(hai_row(&gateway_timeout).code, "api_timeout_error");
        let odd = ApiError::from_kind(ErrorKind::RateLimited)
            .with_status(StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(hai_row(&odd).code, "api_error");
    }

    #[test]
    fn humanloop_names_follow_the_reason_phrase() {
        for code in [
            400, 401, 402, 403, 404, 409, 413, 422, 429, 500, 502, 503, 504,
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            let reason = status.canonical_reason().unwrap().to_ascii_lowercase();
            let snake = reason.replace([' ', '-'], "_");
            let expected = if snake.ends_with("_error") {
                snake
            } else {
                format!("{snake}_error")
            };
            assert_eq!(humanloop_type(status), expected, "{code}");
        }
    }
}
