//! `GET /v1/models` and `/v1/models/{id}` in OpenAI's shape, or Anthropic's
//! (<https://docs.anthropic.com/en/api/models-list>) for a client that sends
//! `anthropic-version`; and the provider's 404 for a path not served.

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::Mock;
use super::errors::{Api, ProviderError};
use super::exchange::Exchange;
use super::faults::Faults;

/// Which API a `/v1/models` call speaks: Anthropic's SDK sends its version.
fn api_of(request: &Request) -> Api {
    if request.headers().contains_key("anthropic-version") {
        Api::Anthropic
    } else {
        Api::OpenAi
    }
}

pub async fn list(State(mock): State<Mock>, request: Request) -> Response {
    let api = api_of(&request);
    let (exchange, _) = match mock.receive(api, "/v1/models", request).await {
        Ok(received) => received,
        Err(answer) => return answer,
    };
    let body = match api {
        Api::OpenAi => json!({
            "object": "list",
            "data": mock.config.models.iter().map(|m| openai_model(m)).collect::<Vec<_>>(),
        }),
        Api::Anthropic => json!({
            "data": mock.config.models.iter().map(|m| anthropic_model(m)).collect::<Vec<_>>(),
            "has_more": false,
            "first_id": mock.config.models.first(),
            "last_id": mock.config.models.last(),
        }),
    };
    exchange.answer(body, &Faults::default(), 0).await
}

pub async fn retrieve(
    State(mock): State<Mock>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let api = api_of(&request);
    let (exchange, _) = match mock.receive(api, "/v1/models/{id}", request).await {
        Ok(received) => received,
        Err(answer) => return answer,
    };
    if !mock.config.models.contains(&id) {
        let mut error = ProviderError::new(api, StatusCode::NOT_FOUND);
        if api == Api::OpenAi {
            error.message = format!("The model '{id}' does not exist");
            error.code = Some("model_not_found".into());
            error.param = Some("model".into());
        } else {
            error.message = format!("model: {id}");
        }
        return exchange.fail(error, &Faults::default());
    }
    let body = match api {
        Api::OpenAi => openai_model(&id),
        Api::Anthropic => anthropic_model(&id),
    };
    exchange.answer(body, &Faults::default(), 0).await
}

fn openai_model(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "mock"})
}

fn anthropic_model(id: &str) -> Value {
    json!({
        "type": "model",
        "id": id,
        "display_name": id,
        "created_at": "2025-01-01T00:00:00Z",
        "lifecycle": "active",
    })
}

/// OpenAI's answer to a path it does not serve (Anthropic's, for a client
/// that sent `anthropic-version`).
pub async fn unknown_route(State(mock): State<Mock>, request: Request) -> Response {
    let api = api_of(&request);
    let line = format!("{} {}", request.method(), request.uri().path());
    let exchange = Exchange::new(&mock, api, "unknown", None);
    mock.count(request.uri().path(), request.headers());
    let mut error = ProviderError::new(api, StatusCode::NOT_FOUND);
    error.message = match api {
        Api::OpenAi => format!("Invalid URL ({line})"),
        Api::Anthropic => "Not found".into(),
    };
    exchange.fail(error, &Faults::default())
}
