//! A deterministic OpenAI-compatible upstream for demos and tests.
//!
//! - `POST /v1/chat/completions` (and `/chat/completions`): the reply is
//!   `mock reply: <last user message>`, cut to `max_tokens` words;
//!   `prompt_tokens` counts whitespace-separated words over all message
//!   contents, `completion_tokens` the words of the reply. Streamed one word
//!   per chunk, a usage chunk when `stream_options.include_usage` is true,
//!   then `data: [DONE]`.
//! - `GET /v1/models`: the models it was told about.
//! - Fault directives in the last user message, `MOCK:key=value[,key=value…]`:
//!   `status=N`, `times=K`, `retry_after=S`, `code=X`,
//!   `format=html|text|anthropic|error_code_detail`, `cut_after=N`,
//!   `error_after=N`, `stall_after=N,stall_ms=M`, `delay_ms=M`, `usage=none`.
//!
//! Copy it into your own tests: it needs only axum, tokio and serde_json.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};
use tollgate::{ApiError, ErrorFormat, ErrorKind};

/// Shared state: how often each failing message has failed so far.
#[derive(Clone, Default)]
pub struct Mock {
    failures: Arc<Mutex<HashMap<String, u32>>>,
    models: Arc<Vec<String>>,
}

impl Mock {
    /// A mock that lists `models` at `/v1/models`.
    pub fn new(models: Vec<String>) -> Self {
        Mock {
            failures: Arc::default(),
            models: Arc::new(models),
        }
    }

    /// The router serving the mock.
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .route("/models", get(models))
            .with_state(self)
    }

    /// Serves the mock on `addr` until the process ends; returns the bound address.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let app = self.router();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "mock upstream stopped");
            }
        });
        Ok(local)
    }
}

async fn models(State(mock): State<Mock>) -> Response {
    let data: Vec<Value> = mock
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "mock"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// Parsed `MOCK:` directives.
#[derive(Debug, Default, Clone)]
struct Faults {
    status: Option<u16>,
    times: Option<u32>,
    retry_after: Option<String>,
    code: Option<String>,
    format: Option<String>,
    cut_after: Option<usize>,
    error_after: Option<usize>,
    stall_after: Option<usize>,
    stall_ms: u64,
    delay_ms: u64,
    no_usage: bool,
}

fn parse_faults(text: &str) -> Faults {
    let mut faults = Faults::default();
    let Some(start) = text.find("MOCK:") else {
        return faults;
    };
    let spec = text[start + 5..].split_whitespace().next().unwrap_or("");
    for pair in spec.split(',') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "status" => faults.status = v.parse().ok(),
            "times" => faults.times = v.parse().ok(),
            "retry_after" => faults.retry_after = Some(v.to_owned()),
            "code" => faults.code = Some(v.to_owned()),
            "format" => faults.format = Some(v.to_owned()),
            "cut_after" => faults.cut_after = v.parse().ok(),
            "error_after" => faults.error_after = v.parse().ok(),
            "stall_after" => faults.stall_after = v.parse().ok(),
            "stall_ms" => faults.stall_ms = v.parse().unwrap_or(0),
            "delay_ms" => faults.delay_ms = v.parse().unwrap_or(0),
            "usage" => faults.no_usage = v == "none",
            _ => {}
        }
    }
    faults
}

fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

async fn chat(State(mock): State<Mock>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error_response(
            &Faults::default(),
            ApiError::invalid_request()
                .with_message("We could not parse the JSON body of your request."),
        );
    };
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock")
        .to_owned();
    let messages = req
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let prompt_tokens: usize = messages
        .iter()
        .map(|m| {
            content_text(m.get("content").unwrap_or(&Value::Null))
                .split_whitespace()
                .count()
        })
        .sum();
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| content_text(m.get("content").unwrap_or(&Value::Null)))
        .unwrap_or_default();
    let faults = parse_faults(&last_user);

    if faults.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.delay_ms)).await;
    }
    if let Some(status) = faults.status {
        let fail = match faults.times {
            None => true,
            Some(k) => {
                let mut failures = mock.failures.lock().unwrap_or_else(|p| p.into_inner());
                let n = failures.entry(last_user.clone()).or_insert(0);
                *n += 1;
                *n <= k
            }
        };
        if fail {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut error = ApiError::from_kind(ErrorKind::from_status(status))
                .with_status(status)
                .with_message(format!("mock upstream failure ({})", status.as_u16()))
                .with_provider("mock");
            if let Some(code) = &faults.code {
                error = error.with_code(code.clone());
                if code == "insufficient_quota" {
                    error = error.with_type("insufficient_quota");
                }
            }
            return error_response(&faults, error);
        }
    }

    let max_words = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .unwrap_or(usize::MAX);
    let reply = format!("mock reply: {last_user}");
    let words: Vec<String> = reply
        .split_whitespace()
        .take(max_words)
        .map(str::to_owned)
        .collect();
    let completion_tokens = words.len();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let finish_reason = if words.len() < reply.split_whitespace().count() {
        "length"
    } else {
        "stop"
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        let mut out = json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": words.join(" ")},
                "finish_reason": finish_reason,
            }],
        });
        if !faults.no_usage {
            out["usage"] = usage;
        }
        return axum::Json(out).into_response();
    }
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        && !faults.no_usage;
    stream_response(
        model,
        words,
        finish_reason,
        include_usage.then_some(usage),
        faults,
    )
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> Bytes {
    let event = json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    Bytes::from(format!("data: {event}\n\n"))
}

fn stream_response(
    model: String,
    words: Vec<String>,
    finish_reason: &'static str,
    usage: Option<Value>,
    faults: Faults,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let send = |b: Bytes| {
            let tx = tx.clone();
            async move { tx.send(Ok(b)).await.is_ok() }
        };
        if !send(chunk(
            &model,
            json!({"role": "assistant", "content": ""}),
            None,
        ))
        .await
        {
            return;
        }
        for (i, word) in words.iter().enumerate() {
            if faults.cut_after == Some(i) {
                // Let what was sent reach the client before the connection dies.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tx
                    .send(Err(std::io::Error::other("mock upstream cut the stream")))
                    .await;
                return;
            }
            if faults.error_after == Some(i) {
                let err = ApiError::internal()
                    .with_message("mock upstream failed mid-stream")
                    .with_provider("mock");
                let body = ErrorFormat::OpenAi.render_body(&err);
                let mut event = b"data: ".to_vec();
                event.extend_from_slice(&body);
                event.extend_from_slice(b"\n\n");
                let _ = send(Bytes::from(event)).await;
                return;
            }
            if faults.stall_after == Some(i) {
                tokio::time::sleep(Duration::from_millis(faults.stall_ms)).await;
            }
            let text = if i == 0 {
                word.clone()
            } else {
                format!(" {word}")
            };
            if !send(chunk(&model, json!({"content": text}), None)).await {
                return;
            }
        }
        if faults.cut_after.is_some_and(|n| n >= words.len()) {
            let _ = tx
                .send(Err(std::io::Error::other("mock upstream cut the stream")))
                .await;
            return;
        }
        if !send(chunk(&model, json!({}), Some(finish_reason))).await {
            return;
        }
        if let Some(usage) = usage {
            let event = json!({
                "id": "chatcmpl-mock",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [],
                "usage": usage,
            });
            if !send(Bytes::from(format!("data: {event}\n\n"))).await {
                return;
            }
        }
        let _ = send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn error_response(faults: &Faults, error: ApiError) -> Response {
    let status = error.status();
    let (content_type, body): (&'static str, Bytes) = match faults.format.as_deref() {
        Some("html") => (
            "text/html",
            Bytes::from(format!(
                "<html><head><title>{} {}</title></head><body><h1>upstream error</h1></body></html>",
                status.as_u16(),
                status.canonical_reason().unwrap_or("Error")
            )),
        ),
        Some("text") => ("text/plain", Bytes::from(error.message().to_owned())),
        Some("anthropic") => (
            "application/json",
            ErrorFormat::Anthropic.render_body(&error),
        ),
        Some("error_code_detail") => (
            "application/json",
            ErrorFormat::ErrorCodeDetail.render_body(&error),
        ),
        _ => ("application/json", ErrorFormat::OpenAi.render_body(&error)),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(retry_after) = faults
        .retry_after
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, retry_after);
    }
    response
}
