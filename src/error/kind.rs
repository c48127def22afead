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

impl ErrorKind {
    /// Every kind, in table order. Handy for exhaustive tests.
    pub const ALL: [ErrorKind; 20] = [
        ErrorKind::InvalidRequest,
        ErrorKind::InvalidModel,
        ErrorKind::ContextLengthExceeded,
        ErrorKind::ContentFilter,
        ErrorKind::Authentication,
        ErrorKind::BudgetExceeded,
        ErrorKind::PermissionDenied,
        ErrorKind::InsufficientBalance,
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::PayloadTooLarge,
        ErrorKind::Unprocessable,
        ErrorKind::RateLimited,
        ErrorKind::QuotaExhausted,
        ErrorKind::Internal,
        ErrorKind::BadGateway,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::Overloaded,
        ErrorKind::Connection,
    ];

    /// The default HTTP status of this kind.
    pub fn status(self) -> StatusCode {
        use ErrorKind::*;
        match self {
            InvalidRequest | InvalidModel | ContextLengthExceeded | ContentFilter => {
                StatusCode::BAD_REQUEST
            }
            Authentication => StatusCode::UNAUTHORIZED,
            BudgetExceeded => StatusCode::PAYMENT_REQUIRED,
            PermissionDenied | InsufficientBalance => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            Conflict => StatusCode::CONFLICT,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            RateLimited | QuotaExhausted => StatusCode::TOO_MANY_REQUESTS,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
            BadGateway | Connection => StatusCode::BAD_GATEWAY,
            Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Timeout => StatusCode::GATEWAY_TIMEOUT,
            // 529 is a valid status number, so this cannot fail.
            Overloaded => StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        }
    }

    /// The OpenAI `error.type` of this kind.
    pub fn error_type(self) -> &'static str {
        use ErrorKind::*;
        match self {
            InvalidRequest
            | InvalidModel
            | ContextLengthExceeded
            | ContentFilter
            | Authentication
            | PayloadTooLarge
            | Unprocessable => "invalid_request_error",
            BudgetExceeded => "budget_exceeded_error",
            PermissionDenied => "permission_error",
            InsufficientBalance | QuotaExhausted => "insufficient_quota",
            NotFound => "not_found_error",
            Conflict => "conflict_error",
            RateLimited => "rate_limit_error",
            Internal | BadGateway | Unavailable => "server_error",
            Timeout => "timeout_error",
            Overloaded => "overloaded_error",
            Connection => "api_connection_error",
        }
    }

    /// The default machine-readable `error.code` of this kind.
    pub fn default_code(self) -> &'static str {
        use ErrorKind::*;
        match self {
            InvalidRequest => "invalid_request",
            InvalidModel => "invalid_model",
            ContextLengthExceeded => "context_length_exceeded",
            ContentFilter => "content_filter",
            Authentication => "invalid_api_key",
            BudgetExceeded => "budget_exceeded",
            PermissionDenied => "permission_denied",
            InsufficientBalance => "insufficient_balance",
            NotFound => "not_found",
            Conflict => "conflict",
            PayloadTooLarge => "payload_too_large",
            Unprocessable => "unprocessable_entity",
            RateLimited => "rate_limit_exceeded",
            QuotaExhausted => "insufficient_quota",
            Internal => "internal_error",
            BadGateway => "bad_gateway",
            Unavailable => "service_unavailable",
            Timeout => "timeout",
            Overloaded => "overloaded",
            Connection => "api_connection_error",
        }
    }

    /// The request field at fault by default (`"model"` for [`ErrorKind::InvalidModel`]).
    pub fn default_param(self) -> Option<&'static str> {
        match self {
            ErrorKind::InvalidModel => Some("model"),
            _ => None,
        }
    }

    /// A message for errors built without one. Never mentions request data.
    pub fn default_message(self) -> &'static str {
        use ErrorKind::*;
        match self {
            InvalidRequest => "The request is invalid.",
            InvalidModel => "The requested model is not available.",
            ContextLengthExceeded => "The request exceeds the model's context length.",
            ContentFilter => "The request was rejected by the content filter.",
            Authentication => "Invalid authentication credentials.",
            BudgetExceeded => "Budget exceeded.",
            PermissionDenied => "You do not have permission to perform this request.",
            InsufficientBalance => "Insufficient account balance. Please add funds to continue.",
            NotFound => "The requested resource was not found.",
            Conflict => "The request conflicts with the current state of the resource.",
            PayloadTooLarge => "The request body is too large.",
            Unprocessable => "The request could not be processed.",
            RateLimited => "Rate limit exceeded. Please retry after a short wait.",
            QuotaExhausted => "You exceeded your current quota.",
            Internal => "The server had an error while processing your request.",
            BadGateway => "The upstream service returned an invalid response.",
            Unavailable => "The service is temporarily unavailable. Please retry.",
            Timeout => "The request timed out.",
            Overloaded => "The service is overloaded. Please retry.",
            Connection => "Could not connect to the upstream service.",
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

/// The code of [`ApiError::upstream_auth_failed`].
pub(crate) const UPSTREAM_AUTH_FAILED: &str = "upstream_auth_failed";
/// The code of [`ApiError::upstream_quota_exhausted`].
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
