//! `ApiError` → wire bytes and headers, in every [`ErrorFormat`].

use std::str::FromStr;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::Serialize;

use super::dialect::{altllm_type, anthropic_type, hai_row, humanloop_type};
use crate::error::{ApiError, Origin};

/// `x-should-retry`: the server's advice to clients (and to tollgate's
/// `RetryLayer`) on whether repeating the request can succeed.
pub const X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");
/// `retry-after-ms`: the exact delay before a retry may succeed.
pub const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
/// `x-request-id`: the request's id, propagated or generated.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `grpc-status` (trailers-only gRPC responses carry it as a header).
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`, percent-encoded.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// The wire shape of an error body, one per API tollgate speaks.
///
/// | format | body | the API that uses it |
/// |---|---|---|
/// | [`OpenAi`](Self::OpenAi) | `{"error":{"message","type","param","code"}}` | OpenAI, and the OpenAI-compatible APIs of the HiveOps and virtual-key guides |
/// | [`AltLlm`](Self::AltLlm) | the same, with AltLLM's `type` names | AltLLM |
/// | [`Anthropic`](Self::Anthropic) | `{"type":"error","error":{"type","message"},"request_id"}` | Anthropic's Messages API |
/// | [`ErrorCodeDetail`](Self::ErrorCodeDetail) | `{"error_code","detail"}` with HAI's codes and statuses | HAI |
/// | [`Humanloop`](Self::Humanloop) | `{"detail":{"type","message","code","origin"}}` | Humanloop |
/// | [`Grpc`](Self::Grpc) | no body: `grpc-status`, `grpc-message` | gRPC (`application/grpc`) |
///
/// `docs/formats.md` has each format's mapping from [`ErrorKind`](crate::ErrorKind) in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ErrorFormat {
    /// `{"error":{"message","type","param","code"}}`, `param` and `code` present
    /// as `null` when absent, as OpenAI's API sends them (the HiveOps and
    /// virtual-key guides leave out a `param` that does not apply; the SDKs
    /// read both alike). What the official OpenAI SDKs read.
    #[default]
    OpenAi,
    /// `{"type":"error","error":{"type","message"},"request_id"}`, as Anthropic's
    /// Messages API answers, with Anthropic's `type` names
    /// (`invalid_request_error`, `authentication_error`, `billing_error`,
    /// `permission_error`, `not_found_error`, `request_too_large`,
    /// `rate_limit_error`, `api_error`, `timeout_error`, `overloaded_error`).
    Anthropic,
    /// `{"error_code","detail"}`: HAI's table exactly. Every error renders as
    /// one of its eleven rows, with the row's status (all three 500s
    /// included) and, when the error has no message of its own, the row's
    /// `detail`.
    ErrorCodeDetail,
    /// `{"detail":{"type","message","code","origin"}}`, as Humanloop answers:
    /// `code` is the HTTP status, `type` its name (`unprocessable_entity_error`
    /// for 422), `origin` the provider's name for an upstream's error
    /// ([`ApiError::with_provider`]) and `Gateway` for the gateway's own.
    Humanloop,
    /// A trailers-only gRPC response: HTTP 200, `content-type: application/grpc`,
    /// `grpc-status` and a percent-encoded `grpc-message`, empty body.
    Grpc,
    /// `{"error":{"message","type","param","code"}}` with AltLLM's `type` names
    /// (`auth_error`, `invalid_request_error`, `rate_limit_error`,
    /// `model_error`, `budget_exceeded`, `api_error`); `param` only when one
    /// applies, as its guide writes it.
    AltLlm,
}

/// A format name that [`ErrorFormat::from_str`] does not know.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unknown error format {0:?}: expected openai, altllm, anthropic, error_code_detail (hai), humanloop or grpc"
)]
pub struct UnknownFormat(String);

impl FromStr for ErrorFormat {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "openai" | "open_ai" => ErrorFormat::OpenAi,
            "altllm" | "alt_llm" => ErrorFormat::AltLlm,
            "anthropic" => ErrorFormat::Anthropic,
            "error_code_detail" | "errorcodedetail" | "hai" => ErrorFormat::ErrorCodeDetail,
            "humanloop" => ErrorFormat::Humanloop,
            "grpc" => ErrorFormat::Grpc,
            _ => return Err(UnknownFormat(s.to_owned())),
        })
    }
}

#[derive(Serialize)]
struct OpenAiBody<'a> {
    error: OpenAiInner<'a>,
}

/// The OpenAI shape, AltLLM's too: `param` is left out when `None`, and
/// is `null` when `Some(None)` (OpenAI sends it so).
#[derive(Serialize)]
struct OpenAiInner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    param: Option<Option<&'a str>>,
    code: Option<&'a str>,
}

#[derive(Serialize)]
struct AnthropicBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicInner<'a>,
    request_id: Option<&'a str>,
}

#[derive(Serialize)]
struct AnthropicInner<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct ErrorCodeDetailBody<'a> {
    error_code: &'a str,
    detail: &'a str,
}

#[derive(Serialize)]
struct HumanloopBody<'a> {
    detail: HumanloopDetail<'a>,
}

#[derive(Serialize)]
struct HumanloopDetail<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
    code: u16,
    origin: &'a str,
}

/// The gRPC status code for an error (by HTTP status, as the gRPC
/// HTTP-mapping table does).
pub fn grpc_status(error: &ApiError) -> u8 {
    match error.status().as_u16() {
        400 | 413 | 422 => 3,  // INVALID_ARGUMENT
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        402 | 429 => 8,        // RESOURCE_EXHAUSTED
        404 => 5,              // NOT_FOUND
        409 => 10,             // ABORTED
        502 | 503 | 529 => 14, // UNAVAILABLE
        504 | 408 => 4,        // DEADLINE_EXCEEDED
        _ => 13,               // INTERNAL
    }
}

/// `grpc-status` and `grpc-message` of `error`: a gRPC response's trailers
/// (a trailers-only response's headers).
pub(crate) fn grpc_trailers(error: &ApiError) -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(2);
    trailers.insert(GRPC_STATUS, grpc_status_value(grpc_status(error)));
    if let Ok(message) = HeaderValue::try_from(grpc_percent_encode(error.message())) {
        trailers.insert(GRPC_MESSAGE, message);
    }
    trailers
}

/// A gRPC status code as a header value, without allocating.
fn grpc_status_value(code: u8) -> HeaderValue {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    match CODES.get(usize::from(code)) {
        Some(text) => HeaderValue::from_static(text),
        None => HeaderValue::from(u16::from(code)),
    }
}

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 spec asks: every byte
/// outside printable ASCII, and `%` itself.
pub fn grpc_percent_encode(message: &str) -> String {
    // `CONTROLS` is 0x00 to 0x1f and 0x7f; bytes above 0x7f are always encoded.
    const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');
    utf8_percent_encode(message, GRPC_MESSAGE).to_string()
}

fn is_visible_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn origin_name(error: &ApiError) -> &str {
    match (error.origin(), error.provider()) {
        (_, Some(name)) => name,
        (Origin::Upstream, None) => "Upstream",
        (Origin::Gateway, None) => "Gateway",
    }
}

impl ErrorFormat {
    /// The body bytes of `error` in this format (empty for [`ErrorFormat::Grpc`]).
    pub fn render_body(self, error: &ApiError) -> Bytes {
        if self == ErrorFormat::Grpc {
            return Bytes::new();
        }
        // One allocation in the common case: room for the fields and the
        // JSON around them (escapes may still grow it).
        let len = |s: Option<&str>| s.map_or(0, str::len);
        let mut buf = Vec::with_capacity(
            96 + error.message().len()
                + error.error_type().len()
                + len(error.param())
                + len(error.code())
                + len(error.request_id())
                + len(error.provider()),
        );
        let result = match self {
            ErrorFormat::OpenAi => serde_json::to_writer(
                &mut buf,
                &OpenAiBody {
                    error: OpenAiInner {
                        message: error.message(),
                        kind: error.error_type(),
                        param: Some(error.param()),
                        code: error.code(),
                    },
                },
            ),
            ErrorFormat::Anthropic => serde_json::to_writer(
                &mut buf,
                &AnthropicBody {
                    kind: "error",
                    error: AnthropicInner {
                        kind: anthropic_type(error.kind()),
                        message: error.message(),
                    },
                    request_id: error.request_id(),
                },
            ),
            ErrorFormat::ErrorCodeDetail => {
                let row = hai_row(error);
                serde_json::to_writer(
                    &mut buf,
                    &ErrorCodeDetailBody {
                        error_code: row.code,
                        detail: error.explicit_message().unwrap_or(row.detail),
                    },
                )
            }
            ErrorFormat::Grpc => Ok(()),
            ErrorFormat::Humanloop => serde_json::to_writer(
                &mut buf,
                &HumanloopBody {
                    detail: HumanloopDetail {
                        kind: humanloop_type(error.status()),
                        message: error.message(),
                        code: error.status().as_u16(),
                        origin: origin_name(error),
                    },
                },
            ),
            ErrorFormat::AltLlm => serde_json::to_writer(
                &mut buf,
                &OpenAiBody {
                    error: OpenAiInner {
                        message: error.message(),
                        kind: altllm_type(error),
                        param: error.param().map(Some),
                        code: error.code(),
                    },
                },
            ),
        };
        // Serializing strings and integers into a Vec cannot fail; were it
        // to, an empty body is still a valid error response.
        match result {
            Ok(()) => Bytes::from(buf),
            Err(_) => Bytes::new(),
        }
    }

    /// Sets the status-independent headers of `error` in this format:
    /// `content-type`, `x-should-retry`, `retry-after`/`retry-after-ms`,
    /// `x-request-id`, and for gRPC `grpc-status`/`grpc-message`.
    pub fn write_headers(self, error: &ApiError, headers: &mut HeaderMap) {
        if self == ErrorFormat::Grpc {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.extend(grpc_trailers(error));
        } else {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let should_retry = error.should_retry();
        headers.insert(
            X_SHOULD_RETRY,
            HeaderValue::from_static(if should_retry { "true" } else { "false" }),
        );
        // A delay is advice to wait and retry: an error the client must not
        // retry carries none, and neither does a re-rendered upstream
        // response whose own `retry-after` would say otherwise.
        match error.retry_after().filter(|_| should_retry) {
            Some(delay) => {
                let millis = delay.as_millis().min(u64::MAX as u128) as u64;
                // Whole seconds rounded up, never 0: `Retry-After: 0` invites a storm.
                let secs = millis.div_ceil(1000).max(1);
                headers.insert(RETRY_AFTER, HeaderValue::from(secs));
                headers.insert(RETRY_AFTER_MS, HeaderValue::from(millis));
            }
            None => {
                headers.remove(RETRY_AFTER);
                headers.remove(RETRY_AFTER_MS);
            }
        }
        // Only a visible-ASCII id goes in the header: `HeaderValue` would
        // take raw UTF-8 too, but no client can read it back as text.
        if let Some(id) = error.request_id().filter(|id| is_visible_ascii(id))
            && let Ok(v) = HeaderValue::from_str(id)
        {
            headers.insert(X_REQUEST_ID, v);
        }
    }

    /// The HTTP status to send `error` with in this format: 200 for gRPC,
    /// the status of its HAI row for [`ErrorFormat::ErrorCodeDetail`], the
    /// error's own otherwise.
    pub fn http_status(self, error: &ApiError) -> StatusCode {
        match self {
            ErrorFormat::Grpc => StatusCode::OK,
            ErrorFormat::ErrorCodeDetail => {
                StatusCode::from_u16(hai_row(error).status).unwrap_or(error.status())
            }
            _ => error.status(),
        }
    }

    /// A complete response for `error`: status, headers, body, and the
    /// `ApiError` itself in the response extensions so an outer
    /// `ErrorEnvelopeLayer` can re-render it without parsing bytes.
    pub fn render(self, error: &ApiError) -> Response<Full<Bytes>> {
        self.render_owned(error.clone())
    }

    fn render_owned(self, error: ApiError) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.render_body(&error)));
        *response.status_mut() = self.http_status(&error);
        self.write_headers(&error, response.headers_mut());
        response.extensions_mut().insert(error);
        response
    }
}

impl ApiError {
    /// Renders the error as an OpenAI-format response (see [`ErrorFormat::render`]).
    ///
    /// Named apart from axum's `IntoResponse::into_response` (which the
    /// `axum` feature implements with the same rendering) so the two never
    /// shadow each other in a handler.
    pub fn to_http_response(&self) -> Response<Full<Bytes>> {
        ErrorFormat::OpenAi.render(self)
    }

    /// Renders the error as an OpenAI-format response, consuming it.
    pub fn into_http_response(self) -> Response<Full<Bytes>> {
        ErrorFormat::OpenAi.render_owned(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn openai_has_null_param_and_code() {
        let e = ApiError::internal().without_code();
        let body = ErrorFormat::OpenAi.render_body(&e);
        assert_eq!(
            &body[..],
            br#"{"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}"#
        );
    }

    #[test]
    fn retry_after_is_never_zero() {
        let e = ApiError::rate_limited().with_retry_after(Duration::from_millis(12));
        let r = ErrorFormat::OpenAi.render(&e);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(r.headers()["retry-after-ms"], "12");
        assert_eq!(r.headers()["x-should-retry"], "true");
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_percent_encode("a b%ç"), "a b%25%C3%A7");
        assert_eq!(grpc_percent_encode("\t~\u{7f} !"), "%09~%7F !");
        let r = ErrorFormat::Grpc.render(&ApiError::authentication());
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "16");
    }

    #[test]
    fn format_names_parse() {
        assert_eq!(
            "OpenAI".parse::<ErrorFormat>().ok(),
            Some(ErrorFormat::OpenAi)
        );
        assert!("xml".parse::<ErrorFormat>().is_err());
    }
}
