//! Proxy-only mode (`--proxy-only`): the gateway's
//! own server and upstream client stack with none of tollgate's layers, so
//! that the load bench (`benches/load/gateway.sh`) can tell what the layers
//! cost from what the proxying itself costs.
//!
//! ```sh
//! cargo run --release --example gateway -- --proxy-only --upstream http://127.0.0.1:9000/v1
//! ```
//!
//! Every `POST /v1/*` request goes to the default upstream (`upstream =`),
//! through the client stack [`crate::routing`] builds for the first model
//! served there (timeout, retries, attempt meter, hyper-util's pool), served
//! by the same `server.rs` (client timeouts, connection cap, drain on
//! shutdown) and the same reload as the full gateway. What is forwarded is
//! what the full gateway's `proxy::forward` sends: the path under the
//! upstream's base URL, the body as it came (bounded as the full gateway
//! bounds it), `content-type`, the gateway's upstream credentials and
//! `x-request-id`; what comes back is the status, `content-type`,
//! `cache-control` and the body, streamed as it arrives.
//!
//! What it leaves out is everything tollgate adds: no envelope, key check,
//! model check, routing by model, rate limit, budget, usage reading, stream
//! trailer or access log. **It lets every client through to the upstream
//! with the gateway's key**: a benchmark baseline, never a deployment. The
//! flag exists only on the command line (never in a config file), and the
//! gateway warns at every build of the app.
//!
//! # Why a mode of the gateway and not a separate proxy?
//!
//! The layers' share of the gateway's CPU is the difference between the
//! full gateway and this mode. A separate proxy would differ in its server
//! (timeouts, connection accounting, runtime) and its client as well, and
//! the difference would no longer be the layers alone.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::HeaderName;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http_body_util::{BodyExt, Full, Limited};
use tollgate::{ApiError, Origin, RequestMeta};
use tower::ServiceExt;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::Api;
use crate::routing::{Route, Routes};
use crate::stack::AppService;

/// The client's request headers passed on, besides the credentials.
const FORWARDED: [HeaderName; 2] = [CONTENT_TYPE, HeaderName::from_static("x-request-id")];

/// The proxy-only application of `config` (see the module docs), served
/// as the full gateway's is (one boxed future per request).
pub fn service(
    config: &Config,
    mock_url: &str,
    metrics: &Metrics,
) -> Result<AppService, Box<dyn std::error::Error + Send + Sync>> {
    let routes = Routes::build(config, mock_url, metrics)?;
    let route = config
        .models
        .iter()
        .filter(|m| m.upstream.is_none())
        .find_map(|m| routes.get(&m.name))
        .cloned()
        .ok_or("proxy-only mode needs a model served by the default upstream")?;
    tracing::warn!(
        upstream = %route.target.label,
        "proxy-only mode: no keys, limits or budgets; every POST /v1/* goes to the upstream"
    );
    Ok(AppService::new(
        Router::new()
            .route("/v1/{*path}", post(forward))
            .with_state(route),
    ))
}

/// Forwards one request (see the module docs).
async fn forward(State(route): State<Arc<Route>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, RequestMeta::DEFAULT_MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        // Over the limit: 413, as the full gateway answers.
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return ApiError::payload_too_large().into_response();
        }
        Err(_) => {
            return ApiError::invalid_request()
                .with_message("The request body could not be read.")
                .into_response();
        }
    };
    let path = parts.uri.path();
    let below_v1 = path.strip_prefix("/v1").unwrap_or(path);
    // An API's URL is made once per upstream, as the full gateway's is.
    let uri = match Api::of_path(path) {
        Some(api) => route.target.uri(api),
        None => match format!("{}{below_v1}", route.target.base_url).parse() {
            Ok(uri) => uri,
            Err(_) => return ApiError::internal().into_response(),
        },
    };
    let mut builder = http::Request::builder().method(parts.method).uri(uri);
    for name in &FORWARDED {
        if let Some(value) = parts.headers.get(name) {
            builder = builder.header(name, value.clone());
        }
    }
    let api = Api::of_path(path).unwrap_or(Api::Chat);
    if let Some((name, value)) = route.target.credentials(api) {
        builder = builder.header(name, value);
    }
    let Ok(upstream_req) = builder.body(Full::new(bytes)) else {
        return ApiError::internal().into_response();
    };
    let response = match route.client.clone().oneshot(upstream_req).await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(%error, "upstream request failed");
            return ApiError::connection()
                .with_message("Could not reach the upstream service.")
                .with_origin(Origin::Upstream)
                .into_response();
        }
    };
    let (up_parts, up_body) = response.into_parts();
    let mut out = Response::new(up_body);
    *out.status_mut() = up_parts.status;
    for name in [CONTENT_TYPE, CACHE_CONTROL] {
        if let Some(value) = up_parts.headers.get(&name) {
            out.headers_mut().insert(name, value.clone());
        }
    }
    out
}
