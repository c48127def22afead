//! [`ErrorKind`]: the classes of failure, and the defaults each one fixes.

use std::fmt;

use http::StatusCode;

use super::RetryClass;

/// The class of a failure. It fixes the default HTTP status, the OpenAI `type`,
/// the default `code`, and whether a retry can help ([`RetryClass`]).
///
/// | kind | status | type | default code |
/// |---|---|---|---|
/// | `InvalidRequest` | 400 | `invalid_request_error` | `invalid_request` |
/// | `InvalidModel` | 400 | `invalid_request_error` | `invalid_model` (param `model`) |
/// | `ContextLengthExceeded` | 400 | `invalid_request_error` | `context_length_exceeded` |
/// | `ContentFilter` | 400 | `invalid_request_error` | `content_filter` |
/// | `Authentication` | 401 | `invalid_request_error` | `invalid_api_key` |
/// | `BudgetExceeded` | 402 | `budget_exceeded_error` | `budget_exceeded` |
/// | `PermissionDenied` | 403 | `permission_error` | `permission_denied` |
/// | `InsufficientBalance` | 403 | `insufficient_quota` | `insufficient_balance` |
/// | `NotFound` | 404 | `not_found_error` | `not_found` |
/// | `Conflict` | 409 | `conflict_error` | `conflict` |
/// | `PayloadTooLarge` | 413 | `invalid_request_error` | `payload_too_large` |
/// | `Unprocessable` | 422 | `invalid_request_error` | `unprocessable_entity` |
/// | `RateLimited` | 429 | `rate_limit_error` | `rate_limit_exceeded` |
/// | `QuotaExhausted` | 429 | `insufficient_quota` | `insufficient_quota` |
/// | `Internal` | 500 | `server_error` | `internal_error` |
/// | `BadGateway` | 502 | `server_error` | `bad_gateway` |
/// | `Unavailable` | 503 | `server_error` | `service_unavailable` |
/// | `Timeout` | 504 | `timeout_error` | `timeout` |
/// | `Overloaded` | 529 | `overloaded_error` | `overloaded` |
/// | `Connection` | 502 | `api_connection_error` | `api_connection_error` |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is malformed or has an invalid value.
    InvalidRequest,
    /// The requested model does not exist or is not served here.
    InvalidModel,
    /// Prompt plus requested output exceed the model's context window.
    ContextLengthExceeded,
    /// The content was refused by a content filter.
    ContentFilter,
    /// No key, or a key that is unknown, expired or revoked.
    Authentication,
    /// A spend limit for the period has been reached (402).
    BudgetExceeded,
    /// The caller is known but may not do this.
    PermissionDenied,
    /// A prepaid balance is used up (403).
    InsufficientBalance,
    /// The resource does not exist.
    NotFound,
    /// The request conflicts with the current state.
    Conflict,
    /// The request body is larger than allowed.
    PayloadTooLarge,
    /// The request is well-formed but cannot be processed.
    Unprocessable,
    /// Too many requests or tokens in a window; retry after a delay.
    RateLimited,
    /// The account's quota is exhausted; retrying cannot help.
    QuotaExhausted,
    /// An unexpected failure inside the gateway.
    Internal,
    /// The upstream answered with something unusable.
    BadGateway,
    /// The service (or a store it depends on) is unavailable for now.
    Unavailable,
    /// The request took too long.
    Timeout,
    /// The upstream is overloaded (Anthropic's 529).
    Overloaded,
    /// The upstream could not be reached.
    Connection,
}

/// The kinds' defaults: for each kind, in table order, its status, `type`,
/// default code and default message.
macro_rules! defaults {
    ($($kind:ident => $status:expr, $error_type:literal, $code:literal, $message:literal;)*) => {
        impl ErrorKind {
            /// Every kind, in table order. Handy for exhaustive tests.
            pub const ALL: [ErrorKind; 20] = [$(ErrorKind::$kind),*];

            /// The default HTTP status of this kind.
            pub fn status(self) -> StatusCode {
                match self {
                    $(ErrorKind::$kind => $status,)*
                }
            }

            /// The OpenAI `error.type` of this kind.
            pub fn error_type(self) -> &'static str {
                match self {
                    $(ErrorKind::$kind => $error_type,)*
                }
            }

            /// The default machine-readable `error.code` of this kind.
            pub fn default_code(self) -> &'static str {
                match self {
                    $(ErrorKind::$kind => $code,)*
                }
            }

            /// A message for errors built without one. Never mentions request data.
            pub fn default_message(self) -> &'static str {
                match self {
                    $(ErrorKind::$kind => $message,)*
                }
            }
        }
    };
}

defaults! {
    InvalidRequest => StatusCode::BAD_REQUEST, "invalid_request_error",
        "invalid_request", "The request is invalid.";
    InvalidModel => StatusCode::BAD_REQUEST, "invalid_request_error",
        "invalid_model", "The requested model is not available.";
    ContextLengthExceeded => StatusCode::BAD_REQUEST, "invalid_request_error",
        "context_length_exceeded", "The request exceeds the model's context length.";
    ContentFilter => StatusCode::BAD_REQUEST, "invalid_request_error",
        "content_filter", "The request was rejected by the content filter.";
    Authentication => StatusCode::UNAUTHORIZED, "invalid_request_error",
        "invalid_api_key", "Invalid authentication credentials.";
    BudgetExceeded => StatusCode::PAYMENT_REQUIRED, "budget_exceeded_error",
        "budget_exceeded", "Budget exceeded.";
    PermissionDenied => StatusCode::FORBIDDEN, "permission_error",
        "permission_denied", "You do not have permission to perform this request.";
    InsufficientBalance => StatusCode::FORBIDDEN, "insufficient_quota",
        "insufficient_balance", "Insufficient account balance. Please add funds to continue.";
    NotFound => StatusCode::NOT_FOUND, "not_found_error",
        "not_found", "The requested resource was not found.";
    Conflict => StatusCode::CONFLICT, "conflict_error",
        "conflict", "The request conflicts with the current state of the resource.";
    PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error",
        "payload_too_large", "The request body is too large.";
    Unprocessable => StatusCode::UNPROCESSABLE_ENTITY, "invalid_request_error",
        "unprocessable_entity", "The request could not be processed.";
    RateLimited => StatusCode::TOO_MANY_REQUESTS, "rate_limit_error",
        "rate_limit_exceeded", "Rate limit exceeded. Please retry after a short wait.";
    QuotaExhausted => StatusCode::TOO_MANY_REQUESTS, "insufficient_quota",
        "insufficient_quota", "You exceeded your current quota.";
    Internal => StatusCode::INTERNAL_SERVER_ERROR, "server_error",
        "internal_error", "The server had an error while processing your request.";
    BadGateway => StatusCode::BAD_GATEWAY, "server_error",
        "bad_gateway", "The upstream service returned an invalid response.";
    Unavailable => StatusCode::SERVICE_UNAVAILABLE, "server_error",
        "service_unavailable", "The service is temporarily unavailable. Please retry.";
    Timeout => StatusCode::GATEWAY_TIMEOUT, "timeout_error",
        "timeout", "The request timed out.";
    // 529 is a valid status number, so this cannot fail.
    Overloaded => StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        "overloaded_error", "overloaded", "The service is overloaded. Please retry.";
    Connection => StatusCode::BAD_GATEWAY, "api_connection_error",
        "api_connection_error", "Could not connect to the upstream service.";
}

impl ErrorKind {
    /// The request field at fault by default (`"model"` for [`ErrorKind::InvalidModel`]).
    pub fn default_param(self) -> Option<&'static str> {
        match self {
            ErrorKind::InvalidModel => Some("model"),
            _ => None,
        }
    }

    /// Whether a retry can help, and when.
    pub fn retry_class(self) -> RetryClass {
        use ErrorKind::*;
        match self {
            RateLimited => RetryClass::AfterDelay,
            Internal | BadGateway | Unavailable | Timeout | Overloaded | Connection | Conflict => {
                RetryClass::Transient
            }
            _ => RetryClass::Never,
        }
    }

    /// The kind a bare HTTP status stands for (used when parsing foreign errors).
    /// Any other 4xx is [`ErrorKind::InvalidRequest`], any other 5xx [`ErrorKind::Internal`].
    pub fn from_status(status: StatusCode) -> ErrorKind {
        use ErrorKind::*;
        match status.as_u16() {
            401 => Authentication,
            402 => BudgetExceeded,
            403 => PermissionDenied,
            404 => NotFound,
            408 => Timeout,
            409 => Conflict,
            413 => PayloadTooLarge,
            422 => Unprocessable,
            429 => RateLimited,
            500 => Internal,
            502 => BadGateway,
            503 => Unavailable,
            504 => Timeout,
            529 => Overloaded,
            s if s >= 500 => Internal,
            _ => InvalidRequest,
        }
    }

    /// The kind whose default code is `code`, if any. Also knows a few
    /// provider codes with a clear meaning (`enforced_spend_limit_reached`,
    /// `content_filter_error`, …).
    pub fn from_code(code: &str) -> Option<ErrorKind> {
        use ErrorKind::*;
        if let Some(kind) = ErrorKind::ALL.iter().find(|k| k.default_code() == code) {
            return Some(*kind);
        }
        Some(match code {
            "model_not_found" => InvalidModel,
            "content_filter_error" | "content_policy_violation" => ContentFilter,
            "enforced_spend_limit_reached" | "billing_hard_limit_reached" => QuotaExhausted,
            "context_length_error" => ContextLengthExceeded,
            "request_too_large" => PayloadTooLarge,
            // HAI's `error_code`s (003-hai-errors.txt) that are not a kind's default.
            "bad_request" | "length_finish_reason_error" => InvalidRequest,
            "unauthorized" => Authentication,
            "conflict_error" => Conflict,
            "rate_limit_error" => RateLimited,
            "api_timeout_error" => Timeout,
            "api_error" => Internal,
            // The gateway's own upstream failing: never the tenant's fault.
            UPSTREAM_AUTH_FAILED => BadGateway,
            UPSTREAM_QUOTA_EXHAUSTED => Unavailable,
            _ => return None,
        })
    }
}

/// The code of [`ApiError::upstream_auth_failed`](crate::ApiError::upstream_auth_failed).
pub(crate) const UPSTREAM_AUTH_FAILED: &str = "upstream_auth_failed";
/// The code of [`ApiError::upstream_quota_exhausted`](crate::ApiError::upstream_quota_exhausted).
pub(crate) const UPSTREAM_QUOTA_EXHAUSTED: &str = "upstream_quota_exhausted";

/// What a `code` or `type` says about money, in any of the formats tollgate
/// reads: a spend limit (`budget_exceeded`, `budget_exceeded_error`) or a
/// used-up quota or balance (`insufficient_quota`, `billing_error`, …).
/// Either is final: no wait makes it succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spend {
    Budget,
    Quota,
}

impl Spend {
    pub(crate) fn of(name: &str) -> Option<Spend> {
        match name {
            "budget_exceeded" | "budget_exceeded_error" => Some(Spend::Budget),
            "insufficient_quota"
            | "insufficient_balance"
            | "enforced_spend_limit_reached"
            | "billing_hard_limit_reached"
            | "billing_error"
            | UPSTREAM_QUOTA_EXHAUSTED => Some(Spend::Quota),
            _ => None,
        }
    }

    /// The spend a code or type names, the code first.
    pub(crate) fn named(code: Option<&str>, error_type: Option<&str>) -> Option<Spend> {
        code.and_then(Spend::of)
            .or_else(|| error_type.and_then(Spend::of))
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.default_code())
    }
}
