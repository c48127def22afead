//! The endpoints: each request forwarded to its model's upstream, through
//! the client stack of [`crate::routing`], its answer streamed back.
//!
//! | route | module | upstream kind |
//! |---|---|---|
//! | `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/responses` | [`openai`] | `openai` |
//! | `POST /v1/messages` | [`anthropic`] | `anthropic` |
//! | `GET /v1/models`, `GET /v1/models/{id}` | [`models`] | none: answered from the config |
//!
//! The server stack in front (auth, model check, routing, rate limits,
//! budget, stream trailer; see `stack.rs`) is the same for every endpoint; what differs is
//! the upstream path, the headers an API needs, and whether the gateway
//! must ask for usage itself. An upstream's error becomes an [`ApiError`]
//! here ([`upstream_error`]), so the envelope renders it in the client's
//! format, with `x-should-retry` and `retry-after` only where a retry can
//! help.

pub mod anthropic;
pub mod models;
pub mod openai;
mod upstream_error;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, Method};
use http_body_util::{BodyExt, Full, Limited};
use tollgate::retry::RetryInfo;
use tollgate::usage::{self, UsageOptions};
use tollgate::{ApiError, ErrorFormat, RequestMeta};
use tower::ServiceExt;

use crate::config::UpstreamKind;
use crate::record::RequestRecord;
use crate::routing::Route;

pub use self::upstream_error::upstream_error;

/// An API the gateway proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions` (legacy).
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/messages` (Anthropic).
    Messages,
}

impl Api {
    /// Every API, for metrics.
    pub const ALL: [Api; 5] = [
        Api::Chat,
        Api::Completions,
        Api::Embeddings,
        Api::Responses,
        Api::Messages,
    ];

    /// The gateway's route.
    pub fn route(self) -> &'static str {
        match self {
            Api::Chat => "/v1/chat/completions",
            Api::Completions => "/v1/completions",
            Api::Embeddings => "/v1/embeddings",
            Api::Responses => "/v1/responses",
            Api::Messages => "/v1/messages",
        }
    }

    /// The API of a gateway path.
    pub fn of_path(path: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|api| api.route() == path)
    }

    /// Its place in [`Api::ALL`].
    pub fn index(self) -> usize {
        match self {
            Api::Chat => 0,
            Api::Completions => 1,
            Api::Embeddings => 2,
            Api::Responses => 3,
            Api::Messages => 4,
        }
    }

    /// The path under the upstream's base URL.
    pub fn upstream_path(self) -> &'static str {
        // The base URL ends in `/v1` (or the provider's equivalent).
        &self.route()["/v1".len()..]
    }

    /// The kind of upstream that speaks it.
    pub fn kind(self) -> UpstreamKind {
        match self {
            Api::Messages => UpstreamKind::Anthropic,
            _ => UpstreamKind::OpenAi,
        }
    }

    /// Whether the gateway asks for a stream's usage itself
    /// (`stream_options.include_usage`). The Responses and Messages APIs
    /// always report it; embeddings do not stream.
    fn asks_for_usage(self) -> bool {
        matches!(self, Api::Chat | Api::Completions)
    }
}

/// The error format of a request: Anthropic's for the Messages API (and
/// for the model list asked by an Anthropic client), `configured` for the
/// rest.
pub fn error_format(uri: &http::Uri, headers: &HeaderMap, configured: ErrorFormat) -> ErrorFormat {
    let path = uri.path();
    let messages = path == "/v1/messages" || path.starts_with("/v1/messages/");
    let anthropic_models =
        path.starts_with("/v1/models") && headers.contains_key("anthropic-version");
    if messages || anthropic_models {
        ErrorFormat::Anthropic
    } else {
        configured
    }
}

/// The most request body forwarded: the server stack has read and bounded
/// it already ([`RequestMeta::DEFAULT_MAX_BODY_BYTES`]); this only keeps the copy
/// here from growing past that.
const MAX_BODY: usize = RequestMeta::DEFAULT_MAX_BODY_BYTES;

/// Forwards `req` (a POST of `api`) to its route's upstream.
pub async fn forward(req: Request, api: Api) -> Response {
    let (parts, body) = req.into_parts();
    let Some(record) = parts.extensions.get::<Arc<RequestRecord>>().cloned() else {
        return ApiError::internal().into_response();
    };
    let Some(route) = record.route().cloned() else {
        // The model check finds a route for every request for a configured
        // model, and refuses the others.
        return ApiError::invalid_model()
            .with_message("The model is not served by this gateway.")
            .into_response();
    };
    let no_facts;
    let meta = match parts.extensions.get::<RequestMeta>() {
        Some(meta) => meta,
        None => {
            no_facts = RequestMeta::default();
            &no_facts
        }
    };
    // Read once already by the server stack; this takes the buffered bytes.
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return ApiError::invalid_request()
                .with_message("The request body could not be read.")
                .into_response();
        }
    };
    // Ask for a stream's usage even when the client did not, so streams are
    // billed from reported usage; stripped again on the way back.
    let (bytes, strip_usage_chunk) = match api
        .asks_for_usage()
        .then(|| usage::request_usage(&bytes, Some(meta)))
        .flatten()
    {
        Some(rewritten) => (rewritten, true),
        None => (bytes, false),
    };
    let bytes = match &route.upstream_model {
        Some(name) => match rename_model(&bytes, name) {
            Ok(renamed) => renamed,
            Err(error) => return error.into_response(),
        },
        None => bytes,
    };
    let upstream_req = match upstream_request(&route, api, &parts.headers, &record, bytes) {
        Ok(req) => req,
        Err(error) => return error.into_response(),
    };
    let response = match route.client.clone().oneshot(upstream_req).await {
        Ok(response) => response,
        Err(error) => {
            let replay_safe = meta.stream || api == Api::Embeddings;
            return upstream_error::transport(&route, error, record.attempts(), replay_safe)
                .into_response();
        }
    };
    if response.status().as_u16() >= 400 {
        return upstream_error(&route, response).await;
    }
    let retry = response.extensions().get::<RetryInfo>().copied();
    let (up_parts, up_body) = response.into_parts();
    let mut out = Response::new(up_body);
    *out.status_mut() = up_parts.status;
    // Sized once for what the layers above add, so the map never grows on
    // the way out.
    *out.headers_mut() = HeaderMap::with_capacity(ANSWER_HEADERS);
    copy_headers(&up_parts.headers, out.headers_mut());
    if let Some(retry) = retry {
        out.extensions_mut().insert(retry);
    }
    // Observed here, innermost, so every response has one usage scan that
    // the rate limit, the budget and the access log subscribe to. A stream's
    // events are read by the stream layer further out, which frames them
    // anyway: framed once.
    let options = UsageOptions {
        strip_usage_chunk,
        ..UsageOptions::from_meta(meta)
    };
    usage::observe(out, options, |_| {}).map(Body::new)
}

/// Headers of a proxied answer: the two copied from the upstream's, six
/// rate-limit headers (`x-ratelimit-*` for requests and tokens), three
/// budget headers and the envelope's `x-request-id`.
const ANSWER_HEADERS: usize = 12;

/// The upstream's answer headers the client gets: what describes the body.
/// Not its rate-limit headers (they describe the gateway's account there,
/// and the gateway sends its own), nor its request id (the envelope's id is
/// the one in the gateway's logs).
fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for name in [CONTENT_TYPE, CACHE_CONTROL] {
        if let Some(v) = from.get(&name) {
            to.insert(name, v.clone());
        }
    }
}

/// The request to the upstream: its path, the gateway's credentials (never
/// the client's key), the request id, and what the API needs.
fn upstream_request(
    route: &Route,
    api: Api,
    client_headers: &HeaderMap,
    record: &Arc<RequestRecord>,
    body: Bytes,
) -> Result<http::Request<Full<Bytes>>, ApiError> {
    let mut builder = http::Request::builder()
        .method(Method::POST)
        .uri(route.target.uri(api))
        .header(CONTENT_TYPE, "application/json");
    if let Some((name, value)) = route.target.credentials(api) {
        builder = builder.header(name, value);
    }
    for name in ["x-request-id", "x-tollgate-test"] {
        if let Some(value) = client_headers.get(name) {
            builder = builder.header(name, value.clone());
        }
    }
    if api == Api::Messages {
        builder = anthropic::upstream_headers(client_headers, builder);
    }
    let mut req = builder
        .body(Full::new(body))
        .map_err(|_| ApiError::internal())?;
    // The attempt meter below the retry layer counts into it. (The retry
    // layer's replay rule reads `stream` from the body when no
    // `RequestMeta` is here, and only after a failure.)
    req.extensions_mut().insert(record.clone());
    Ok(req)
}

/// `body` with its top-level `model` set to `name`, every other member's
/// bytes kept (values are copied as they were written, not re-encoded).
fn rename_model(body: &[u8], name: &str) -> Result<Bytes, ApiError> {
    use serde_json::value::RawValue;
    let invalid = |e: serde_json::Error| {
        ApiError::invalid_request().with_message(format!("The request body is not valid JSON: {e}"))
    };
    // A body read as an ordered list of raw members: a map would reorder
    // them and re-encode numbers.
    let object: Vec<(String, Box<RawValue>)> = match serde_json::from_slice::<OrderedObject>(body) {
        Ok(object) => object.0,
        Err(e) => return Err(invalid(e)),
    };
    let model =
        RawValue::from_string(serde_json::to_string(name).map_err(invalid)?).map_err(invalid)?;
    let mut out = Vec::with_capacity(body.len() + name.len());
    out.push(b'{');
    for (i, (key, value)) in object.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, key).map_err(invalid)?;
        out.push(b':');
        let value = if key == "model" { &model } else { value };
        out.extend_from_slice(value.get().as_bytes());
    }
    out.push(b'}');
    Ok(Bytes::from(out))
}

/// A JSON object's members in their order, values as raw JSON.
struct OrderedObject(Vec<(String, Box<serde_json::value::RawValue>)>);

impl<'de> serde::Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = OrderedObject;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(OrderedObject(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renaming_keeps_every_other_member_as_written() {
        let body = br#"{"temperature":0.70,"model":"alias","n":12345678901234567890123,"messages":[{"role":"user","content":"hi \"x\""}]}"#;
        let out = rename_model(body, "real-name").unwrap();
        assert_eq!(
            &out[..],
            br#"{"temperature":0.70,"model":"real-name","n":12345678901234567890123,"messages":[{"role":"user","content":"hi \"x\""}]}"#
        );
        assert!(rename_model(b"[1]", "x").is_err());
    }

    #[test]
    fn paths() {
        assert_eq!(Api::of_path("/v1/messages"), Some(Api::Messages));
        assert_eq!(Api::Chat.upstream_path(), "/chat/completions");
        assert_eq!(Api::of_path("/v1/nope"), None);
    }

    #[test]
    fn each_api_has_its_own_place() {
        for (i, api) in Api::ALL.into_iter().enumerate() {
            assert_eq!(api.index(), i, "{api:?}");
        }
    }
}
