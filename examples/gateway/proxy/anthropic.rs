//! Anthropic's Messages API, `POST /v1/messages`, passed through to an
//! Anthropic-compatible upstream.
//!
//! What an Anthropic client sends and expects, kept end to end:
//!
//! - its key in `x-api-key` (or `Authorization: Bearer`, as the current
//!   Python SDK can send it): the auth layer reads both;
//! - `anthropic-version` (and `anthropic-beta`), forwarded to the upstream;
//!   a client that sends no version gets [`DEFAULT_VERSION`], the version
//!   every current Anthropic SDK sends;
//! - errors in Anthropic's envelope (`{"type":"error","error":{"type",
//!   "message"},"request_id"}`; the gateway picks that format for this
//!   path), 529 `overloaded_error` kept as 529; the gateway's refusals map
//!   to the classes the Anthropic SDKs raise (401 `AuthenticationError`, 403
//!   `PermissionDeniedError`, 404 `NotFoundError`, 429 `RateLimitError`,
//!   402 `billing_error`);
//! - a stream that fails ends with `event: error` (the stream layer picks
//!   Anthropic's terminal event for this path);
//! - usage from `message_start` (input) and `message_delta` (output).

use http::HeaderMap;
use http::request::Builder;

/// The `anthropic-version` sent for a client that sent none.
pub const DEFAULT_VERSION: &str = "2023-06-01";

/// The client's `anthropic-version` (or [`DEFAULT_VERSION`]) and
/// `anthropic-beta` headers, for the upstream request.
pub fn upstream_headers(client: &HeaderMap, mut builder: Builder) -> Builder {
    builder = match client.get("anthropic-version") {
        Some(version) => builder.header("anthropic-version", version.clone()),
        None => builder.header("anthropic-version", DEFAULT_VERSION),
    };
    for beta in client.get_all("anthropic-beta") {
        builder = builder.header("anthropic-beta", beta.clone());
    }
    builder
}
