//! `GET /v1/models` and `GET /v1/models/{id}`: the models the calling key
//! may use, answered from the config without an upstream call, in OpenAI's
//! shape, or Anthropic's for a client that sends `anthropic-version`.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use http::Request;
use serde_json::{Value, json};
use tollgate::{ApiError, Principal};

/// The models of the config, in its order.
#[derive(Debug, Clone, Default)]
pub struct ModelList {
    names: Vec<Arc<str>>,
}

impl ModelList {
    /// The models named `names`.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> ModelList {
        ModelList {
            names: names.into_iter().map(Arc::from).collect(),
        }
    }

    fn visible<'a, B>(&'a self, req: &'a Request<B>) -> impl Iterator<Item = &'a str> + 'a {
        let principal = req.extensions().get::<Principal>();
        self.names
            .iter()
            .map(|n| &**n)
            .filter(move |n| principal.is_none_or(|p| p.allows_model(n)))
    }
}

fn anthropic<B>(req: &Request<B>) -> bool {
    req.headers().contains_key("anthropic-version")
}

fn entry(name: &str, anthropic: bool) -> Value {
    if anthropic {
        json!({"type": "model", "id": name, "display_name": name, "created_at": "1970-01-01T00:00:00Z"})
    } else {
        json!({"id": name, "object": "model", "created": 0, "owned_by": "tollgate"})
    }
}

/// `GET /v1/models`.
pub fn list<B>(models: &ModelList, req: &Request<B>) -> Response {
    let anthropic = anthropic(req);
    let data: Vec<Value> = models.visible(req).map(|n| entry(n, anthropic)).collect();
    let body = if anthropic {
        let first = data.first().map(|m| m["id"].clone());
        let last = data.last().map(|m| m["id"].clone());
        json!({"data": data, "has_more": false, "first_id": first, "last_id": last})
    } else {
        json!({"object": "list", "data": data})
    };
    axum::Json(body).into_response()
}

/// `GET /v1/models/{id}`: one model, or 404 as the providers answer an
/// unknown (or, for this key, forbidden) model. The id is the rest of the
/// path, percent-decoded.
pub fn retrieve<B>(models: &ModelList, req: &Request<B>) -> Response {
    let raw = req.uri().path().strip_prefix("/v1/models/").unwrap_or("");
    let id = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    match models.visible(req).find(|n| *n == id) {
        Some(name) => axum::Json(entry(name, anthropic(req))).into_response(),
        None => ApiError::not_found()
            .with_code("model_not_found")
            .with_param("model")
            .with_message(format!(
                "The model '{id}' does not exist or you do not have access to it."
            ))
            .into_response(),
    }
}
