//! An upstream's failure as the client's error.
//!
//! The client must learn what it can do about a failure, not what went on
//! between the gateway and its provider:
//!
//! - an error answer is parsed (any provider's shape, HTML, text) and
//!   rendered again by the envelope in the client's format, naming the
//!   upstream as its origin;
//! - the gateway's own account failing there (a 401 or 403 about its key,
//!   a 402, a quota 429: [`UpstreamFault`]) is a 502 `upstream_auth_failed`
//!   or a 503 `upstream_quota_exhausted`, logged and counted, never a
//!   401/403/429 the tenant's SDK would blame on the tenant's key;
//! - a failure the gateway already retried to its limit says
//!   `x-should-retry: false` and carries no `retry-after`, so the SDK does
//!   not retry it again ([`RetryInfo::advise`]; a transport error carries no
//!   `RetryInfo`, so its attempts are counted below the retry layer).

use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http_body_util::BodyExt;
use tollgate::retry::{RetryInfo, TransportFailure, UpstreamFault};
use tollgate::{ApiError, BoxError, Origin};

use crate::routing::Route;

/// How much of an upstream's error body is read to parse it.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// How long an upstream's error body may take to arrive.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The client's answer to an upstream's error answer (status ≥ 400).
pub async fn upstream_error(route: &Route, response: http::Response<Body>) -> Response {
    let retry = response.extensions().get::<RetryInfo>().copied();
    let (parts, body) = response.into_parts();
    let bytes = read_head(body).await;
    let parsed = tollgate::envelope::parse(parts.status, &parts.headers, &bytes);
    let target = &route.target;
    let error = match UpstreamFault::of(&parsed) {
        Some(fault) => {
            // The upstream's message may quote the gateway's key: logged by
            // its code and status only.
            tracing::warn!(
                upstream = %target.name,
                status = parts.status.as_u16(),
                code = parsed.code().unwrap_or("-"),
                fault = ?fault,
                "the upstream refused the gateway's own credentials or quota"
            );
            target.metrics.fault(fault);
            fault.error().with_provider(target.name.to_string())
        }
        None => parsed
            .with_origin(Origin::Upstream)
            .with_provider(target.name.to_string()),
    };
    let error = match retry {
        Some(info) => info.advise(error),
        None => error,
    };
    let mut response = error.into_response();
    if let Some(info) = retry {
        response.extensions_mut().insert(info);
    }
    response
}

/// The client's error for an upstream that gave no answer: `attempts` were
/// made (counted below the retry layer), and the request was
/// `replay_safe` (sent again by the retry layer after a timeout or reset).
pub fn transport(route: &Route, error: BoxError, attempts: u32, replay_safe: bool) -> ApiError {
    let failure = TransportFailure::new(Some(&*error), replay_safe);
    let timed_out = failure.is_timeout();
    tracing::warn!(
        upstream = %route.target.name,
        attempts,
        timed_out,
        error = %error,
        "upstream request failed"
    );
    let error = if timed_out {
        ApiError::timeout().with_message("The upstream did not answer in time.")
    } else {
        ApiError::connection().with_message("Could not reach the upstream service.")
    }
    .with_origin(Origin::Upstream)
    .with_provider(route.target.name.to_string());
    // The retry layer sends a request again after a refused connection,
    // and after a timeout or reset only when it is replay-safe. What it
    // retried to its limit, the client must not retry; what it would not
    // send again (the upstream may have done, and billed, the work), the
    // client must not either.
    let retried_by_policy = failure.is_connect() || replay_safe;
    if attempts >= route.max_attempts || !retried_by_policy {
        error.with_should_retry(false)
    } else {
        error
    }
}

/// Up to [`MAX_ERROR_BODY`] of `body`, within [`ERROR_BODY_TIMEOUT`]; what
/// came before a failure or the timeout.
async fn read_head(body: Body) -> BytesMut {
    let mut buf = BytesMut::new();
    let mut body = body;
    let read = async {
        while buf.len() < MAX_ERROR_BODY {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let room = MAX_ERROR_BODY - buf.len();
                        buf.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
    };
    let _ = tokio::time::timeout(ERROR_BODY_TIMEOUT, read).await;
    buf
}
