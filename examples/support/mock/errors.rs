//! Error bodies as each provider writes them.
//!
//! Written here by hand rather than with tollgate's own `ErrorFormat`: the
//! mock stands in for the providers, so what the gateway parses must come
//! from an independent copy of their wire format, or a bug in tollgate's
//! renderer would be mirrored here and never seen.
//!
//! Shapes:
//! - OpenAI: `{"error":{"message","type","param","code"}}`, `param` and
//!   `code` present as `null` when unset
//!   (<https://platform.openai.com/docs/guides/error-codes>); the quota error
//!   is `{"message":"You exceeded your current quota…","type":"insufficient_quota","code":"insufficient_quota"}`.
//! - Anthropic: `{"type":"error","error":{"type","message"},"request_id"}`,
//!   with the status ↔ type table of <https://docs.anthropic.com/en/api/errors>
//!   (400 `invalid_request_error`, 401 `authentication_error`, 402
//!   `billing_error`, 403 `permission_error`, 404 `not_found_error`, 413
//!   `request_too_large`, 429 `rate_limit_error`, 500 `api_error`, 504
//!   `timeout_error`, 529 `overloaded_error`).

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::faults::Faults;

/// Which provider an endpoint imitates: its error shape and its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
    /// `/v1/responses`, `/v1/models`.
    OpenAi,
    /// `/v1/messages`.
    Anthropic,
}

/// OpenAI's message for an exhausted quota, verbatim.
pub const QUOTA_MESSAGE: &str = "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.";

/// One error, before it is written in a provider's shape.
#[derive(Debug, Clone)]
pub struct ProviderError {
    /// The HTTP status.
    pub status: StatusCode,
    /// `error.type`.
    pub error_type: String,
    /// OpenAI's `error.code`.
    pub code: Option<String>,
    /// `error.message`.
    pub message: String,
    /// OpenAI's `error.param`.
    pub param: Option<String>,
}

impl ProviderError {
    /// The error `api` sends with `status`, with that provider's usual type,
    /// code and message.
    pub fn new(api: Api, status: StatusCode) -> ProviderError {
        let s = status.as_u16();
        let (error_type, code, message): (&str, Option<&str>, String) = match api {
            Api::OpenAi => match s {
                401 => (
                    "invalid_request_error",
                    Some("invalid_api_key"),
                    "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.".into(),
                ),
                429 => (
                    "requests",
                    Some("rate_limit_exceeded"),
                    "Rate limit reached for requests. Please try again in 20ms.".into(),
                ),
                500 => (
                    "server_error",
                    None,
                    "The server had an error while processing your request. Sorry about that!"
                        .into(),
                ),
                503 => (
                    "server_error",
                    None,
                    "The engine is currently overloaded, please try again later.".into(),
                ),
                s if s >= 500 => ("server_error", None, format!("mock upstream failure ({s})")),
                _ => (
                    "invalid_request_error",
                    None,
                    format!("mock upstream failure ({s})"),
                ),
            },
            Api::Anthropic => {
                let (t, m): (&str, String) = match s {
                    400 => ("invalid_request_error", format!("mock upstream failure ({s})")),
                    401 => ("authentication_error", "invalid x-api-key".into()),
                    402 => ("billing_error", "Your credit balance is too low.".into()),
                    403 => (
                        "permission_error",
                        "Your API key does not have permission to use the specified resource."
                            .into(),
                    ),
                    404 => ("not_found_error", "Not found".into()),
                    413 => (
                        "request_too_large",
                        "Request exceeds the maximum allowed number of bytes.".into(),
                    ),
                    429 => (
                        "rate_limit_error",
                        "Number of requests has exceeded your per-minute rate limit".into(),
                    ),
                    500 => ("api_error", "Internal server error".into()),
                    504 => ("timeout_error", "Request timed out".into()),
                    529 => ("overloaded_error", "Overloaded".into()),
                    s if s >= 500 => ("api_error", format!("mock upstream failure ({s})")),
                    _ => ("invalid_request_error", format!("mock upstream failure ({s})")),
                };
                (t, None, m)
            }
        };
        ProviderError {
            status,
            error_type: error_type.to_owned(),
            code: code.map(str::to_owned),
            message,
            param: None,
        }
    }

    /// A 400 about the request itself (`param` names the field at fault).
    pub fn invalid(api: Api, message: impl Into<String>, param: Option<&str>) -> ProviderError {
        let mut error = ProviderError::new(api, StatusCode::BAD_REQUEST);
        error.message = message.into();
        error.param = param.map(str::to_owned);
        error
    }

    /// The error a `MOCK:status=…` directive asks for: the provider's
    /// default for the status, refined by `type=` and `code=`. OpenAI's
    /// quota error is `type=insufficient_quota` (or `code=…`): its body is
    /// OpenAI's own, message included.
    pub fn from_directives(api: Api, status: StatusCode, faults: &Faults) -> ProviderError {
        let mut error = ProviderError::new(api, status);
        let quota = [faults.error_type.as_deref(), faults.code.as_deref()]
            .contains(&Some("insufficient_quota"));
        if quota && api == Api::OpenAi {
            error.error_type = "insufficient_quota".into();
            error.code = Some("insufficient_quota".into());
            error.message = QUOTA_MESSAGE.into();
        }
        if let Some(t) = &faults.error_type {
            error.error_type = t.clone();
        }
        if let Some(code) = &faults.code {
            error.code = Some(code.clone());
        }
        error
    }

    /// OpenAI's envelope.
    pub fn openai_json(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.error_type,
            "param": self.param,
            "code": self.code,
        }})
    }

    /// Anthropic's envelope.
    pub fn anthropic_json(&self, request_id: &str) -> Value {
        json!({
            "type": "error",
            "error": {"type": self.error_type, "message": self.message},
            "request_id": request_id,
        })
    }

    /// The error response in `api`'s shape, or in the `MOCK:format=…` one.
    /// Headers common to every answer are added by the caller.
    pub fn response(&self, api: Api, faults: &Faults, request_id: &str) -> Response {
        let status = self.status;
        let (content_type, body) = match (faults.format.as_deref(), api) {
            (Some("html"), _) => (
                "text/html",
                format!(
                    "<html><head><title>{} {}</title></head><body><h1>upstream error</h1></body></html>",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("Error")
                ),
            ),
            (Some("text"), _) => ("text/plain", self.message.clone()),
            (Some("openai"), _) | (None, Api::OpenAi) => {
                ("application/json", self.openai_json().to_string())
            }
            (Some("anthropic"), _) | (None, Api::Anthropic) => (
                "application/json",
                self.anthropic_json(request_id).to_string(),
            ),
            (Some("error_code_detail"), _) => (
                "application/json",
                json!({
                    "error_code": faults.code.clone().unwrap_or_else(|| hai_code(status).into()),
                    "detail": self.message,
                })
                .to_string(),
            ),
            (Some("humanloop"), _) => (
                "application/json",
                json!({"detail": {
                    "type": self.error_type,
                    "message": self.message,
                    "code": status.as_u16(),
                    "origin": "mock",
                }})
                .to_string(),
            ),
            (Some(_), Api::OpenAi) => ("application/json", self.openai_json().to_string()),
            (Some(_), Api::Anthropic) => (
                "application/json",
                self.anthropic_json(request_id).to_string(),
            ),
        };
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if matches!(status.as_u16(), 429 | 503 | 529) {
            let (secs, millis) = faults.retry_after();
            let headers = response.headers_mut();
            if let Some(v) = secs.and_then(|v| HeaderValue::from_str(&v).ok()) {
                headers.insert(header::RETRY_AFTER, v);
            }
            if let Some(v) = millis.and_then(|v| HeaderValue::from_str(&v).ok()) {
                headers.insert("retry-after-ms", v);
            }
        }
        response
    }
}

/// The HAI guide's `error_code` for a status (`seeds/003-hai-errors.txt`).
fn hai_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "unauthorized",
        403 => "permission_denied",
        409 => "conflict_error",
        422 => "unprocessable_entity",
        429 => "rate_limit_error",
        s if s >= 500 => "api_error",
        _ => "bad_request",
    }
}

/// A key as OpenAI shows it in an error: its first 3 and last 4 characters.
pub fn masked_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}
