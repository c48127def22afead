//! Serving `GET /metrics`: on its own listener, or on the main one behind
//! an admin key.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use tollgate::ApiError;

use super::Metrics;
use crate::config::Config;

/// Who may read `/metrics` on the main listener: the admin keys of the
/// config, compared by SHA-256 in constant time.
///
/// The admin API (gw15) brings the one check for admin keys; until it is
/// merged, this reads the same config fields.
pub struct MetricsAccess {
    hashes: Vec<[u8; 32]>,
}

impl MetricsAccess {
    /// From `admin_keys` and `admin_key_sha256s`; a hash that is not 64 hex
    /// digits is an error naming its field.
    pub fn new(config: &Config) -> Result<MetricsAccess, String> {
        use sha2::Digest;
        let mut hashes: Vec<[u8; 32]> = config
            .admin_keys
            .iter()
            .map(|k| sha2::Sha256::digest(k.expose().as_bytes()).into())
            .collect();
        for (i, hex) in config.admin_key_sha256s.iter().enumerate() {
            let bytes = (0..32)
                .map(|j| {
                    hex.get(2 * j..2 * j + 2)
                        .and_then(|b| u8::from_str_radix(b, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .filter(|_| hex.len() == 64);
            match bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                Some(hash) => hashes.push(hash),
                None => {
                    return Err(format!("admin_key_sha256s[{i}]: expected 64 hex digits"));
                }
            }
        }
        Ok(MetricsAccess { hashes })
    }

    /// Whether `req` carries an admin key.
    fn admits(&self, req: &Request) -> bool {
        use sha2::Digest;
        use subtle::ConstantTimeEq;
        let Some(key) = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let hash: [u8; 32] = sha2::Sha256::digest(key.trim().as_bytes()).into();
        self.hashes
            .iter()
            .fold(false, |found, h| found | bool::from(h.ct_eq(&hash)))
    }
}

/// `GET /metrics` for the main listener, behind an admin key.
pub fn admin_router(metrics: Metrics, access: Arc<MetricsAccess>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(admin_metrics))
        .with_state((metrics, access))
}

/// `GET /metrics` for `metrics_listen`, without a key.
pub fn open_router(metrics: Metrics) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(open_metrics))
        .with_state(metrics)
}

/// `GET /metrics` on the main listener: 404 when no admin key is
/// configured (as if absent), 401 without one.
pub async fn admin_metrics(
    State((metrics, access)): State<(Metrics, Arc<MetricsAccess>)>,
    req: Request,
) -> Response {
    if access.hashes.is_empty() {
        return ApiError::not_found()
            .with_message("Unknown path.")
            .into_response();
    }
    if !access.admits(&req) {
        return ApiError::authentication()
            .with_message("The metrics need an admin key: Authorization: Bearer <admin key>.")
            .into_response();
    }
    exposition(&metrics)
}

/// `GET /metrics` on `metrics_listen`.
pub async fn open_metrics(State(metrics): State<Metrics>) -> Response {
    exposition(&metrics)
}

fn exposition(metrics: &Metrics) -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}
