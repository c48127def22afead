//! Serving `GET /metrics`: on its own listener (`metrics_listen`, open),
//! or on the main one behind an admin key (routed by `admin/`, which owns
//! the one check for admin keys).

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::Metrics;

/// `GET /metrics` for `metrics_listen`, without a key.
pub fn open_router(metrics: Metrics) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(open_metrics))
        .with_state(metrics)
}

/// `GET /metrics` on `metrics_listen`.
pub async fn open_metrics(State(metrics): State<Metrics>) -> Response {
    exposition(&metrics)
}

/// The exposition of `metrics`, in the OpenMetrics text format.
pub fn exposition(metrics: &Metrics) -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}
