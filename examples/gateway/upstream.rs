//! The proxy handler: forwards chat completions to the upstream through the
//! client stack (RetryLayer over hyper-util), streaming bodies through.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tollgate::retry::{ExponentialBackoff, RetryInfo, RetryLayer, RetryPolicy};
use tollgate::usage::{self, UsageOptions};
use tollgate::{ApiError, BoxError, RequestMeta};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

use crate::config::Config;

/// The client stack towards the upstream.
pub type UpstreamClient =
    BoxCloneSyncService<http::Request<Full<Bytes>>, http::Response<Body>, BoxError>;

/// Where and how to reach the upstream.
#[derive(Clone)]
pub struct Upstream {
    /// `http://host:port/v1`, no trailing slash.
    pub base_url: String,
    /// `Bearer …` for the upstream, if configured.
    pub authorization: Option<HeaderValue>,
    /// The client stack.
    pub client: UpstreamClient,
}

impl Upstream {
    /// The client stack: a whole-request timeout (response head) around
    /// retries around hyper-util's pooled client.
    pub fn new(base_url: String, config: &Config) -> Result<Upstream, String> {
        // TCP_NODELAY: a request's head and body are two writes, and the
        // second would wait for the upstream's delayed ACK (~40 ms).
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let backoff = ExponentialBackoff::new(
            Duration::from_millis(config.retry.initial_backoff_ms),
            Duration::from_millis(config.retry.max_backoff_ms),
        )
        .map_err(|e| format!("retry: {e}"))?;
        let policy = RetryPolicy::new()
            .max_attempts(config.retry.max_attempts)
            .backoff(backoff)
            .deadline(Duration::from_secs(config.request_timeout_secs))
            .max_server_delay(Duration::from_secs(config.retry.max_retry_after_secs));
        let stack = ServiceBuilder::new()
            .timeout(Duration::from_secs(config.request_timeout_secs))
            .layer(RetryLayer::new().policy(policy))
            .service(client)
            .map_response(|response| response.map(Body::new))
            .map_err(Into::<BoxError>::into);
        let authorization = match &config.upstream_api_key {
            Some(key) => Some(
                HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                    .map_err(|_| "upstream_api_key: not a valid header value".to_string())?,
            ),
            None => None,
        };
        Ok(Upstream {
            base_url,
            authorization,
            client: BoxCloneSyncService::new(stack),
        })
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(State(upstream): State<Arc<Upstream>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let meta = parts
        .extensions
        .get::<RequestMeta>()
        .cloned()
        .unwrap_or_default();
    // The body was read once already by an inner layer; collecting it again
    // only takes the buffered bytes back out.
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return reject(
                ApiError::invalid_request().with_message("The request body could not be read."),
            );
        }
    };
    // Ask the upstream for usage even when the client did not, so streams are
    // always billed from reported usage; strip it again on the way back.
    let (bytes, strip_usage_chunk) = match usage::request_usage(&bytes, Some(&meta)) {
        Some(rewritten) => (rewritten, true),
        None => (bytes, false),
    };
    let mut builder = http::Request::builder()
        .method(Method::POST)
        .uri(format!("{}/chat/completions", upstream.base_url))
        .header(CONTENT_TYPE, "application/json");
    if let Some(auth) = &upstream.authorization {
        builder = builder.header(AUTHORIZATION, auth.clone());
    }
    if let Some(id) = parts.headers.get("x-request-id") {
        builder = builder.header("x-request-id", id.clone());
    }
    let Ok(upstream_req) = builder.body(Full::new(bytes)) else {
        return reject(ApiError::internal());
    };
    let response = match upstream.client.clone().oneshot(upstream_req).await {
        Ok(response) => response,
        Err(error) => return reject(upstream_failure(error)),
    };
    let retry = response.extensions().get::<RetryInfo>().cloned();
    let (up_parts, up_body) = response.into_parts();
    let mut out = Response::new(up_body);
    *out.status_mut() = up_parts.status;
    for name in [CONTENT_TYPE, CACHE_CONTROL] {
        if let Some(v) = up_parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    if let Some(retry) = retry {
        out.extensions_mut().insert(retry);
    }
    if strip_usage_chunk {
        let options = UsageOptions {
            strip_usage_chunk: true,
            ..UsageOptions::from_meta(&meta)
        };
        // The outer layers subscribe to this observer instead of scanning again.
        return usage::observe(out, options, |_| {}).map(Body::new);
    }
    out
}

fn upstream_failure(error: BoxError) -> ApiError {
    if error.is::<tower::timeout::error::Elapsed>() {
        return ApiError::timeout()
            .with_message("The upstream did not answer in time.")
            .with_origin(tollgate::Origin::Upstream);
    }
    tracing::warn!(error = %error, "upstream request failed");
    ApiError::connection()
        .with_message("Could not reach the upstream service.")
        .with_origin(tollgate::Origin::Upstream)
}

/// A rejection as an axum response (the `ApiError` rides in the extensions).
pub fn reject(error: ApiError) -> Response {
    axum::response::IntoResponse::into_response(error)
}
