//! A deterministic stand-in for the LLM providers, for demos and tests.
//!
//! The gateway example proxies to it when `upstream = "mock"`,
//! `examples/mock_upstream.rs` serves it alone, and tests start it on
//! loopback. It answers every endpoint the gateway proxies with the shapes,
//! headers and errors the providers send, so an end-to-end test sees what a
//! provider sends:
//!
//! | endpoint | as | streamed |
//! |---|---|---|
//! | `POST /v1/chat/completions` | OpenAI chat (`n`, `stream_options.include_usage`) | `data:` chunks, `[DONE]` |
//! | `POST /v1/completions` | OpenAI legacy completions (`prompt` string, strings, token arrays) | `data:` chunks, `[DONE]` |
//! | `POST /v1/embeddings` | OpenAI embeddings (`encoding_format` float or base64, `dimensions`) | no |
//! | `POST /v1/responses` | OpenAI Responses API (`max_output_tokens`) | `event:` + `data:` with `sequence_number` |
//! | `POST /v1/messages` | Anthropic Messages (a key, `anthropic-version` and `max_tokens` required) | Anthropic's event sequence |
//! | `GET /v1/models`, `GET /v1/models/{id}` | OpenAI's list (Anthropic's when `anthropic-version` is sent) | no |
//! | `GET /mock/calls`, `DELETE /mock/calls` | the calls received so far, as JSON (see [`Calls`]); forget them | no |
//!
//! Each path is served under `/v1` and without it (`/chat/completions`).
//!
//! # What it generates
//!
//! The reply is `mock reply: <the last user text>`, cut to the request's
//! output cap (`max_tokens`, `max_completion_tokens`, `max_output_tokens`),
//! repeated for each of `n` choices. A token is a whitespace-separated word
//! (or an integer of a token-array prompt): `"hello world"` costs 2 prompt
//! tokens and its reply 4 completion tokens; streams send one word per delta.
//!
//! # Headers
//!
//! Every answer carries the provider's request id (`x-request-id`, or
//! Anthropic's `request-id`) and rate-limit headers (`x-ratelimit-*`, or
//! `anthropic-ratelimit-*`) counted over a real one-minute window; OpenAI
//! answers add `openai-processing-ms` and `openai-version`; 429, 503 and 529
//! add `retry-after` and `retry-after-ms`.
//!
//! # Directives
//!
//! A test plays a fault by writing `MOCK:key=value,key=value…` in the text of
//! its request (a user message, `prompt`, `input`, an Anthropic message):
//!
//! | directive | effect |
//! |---|---|
//! | `status=N` | answer N, with the provider's error body for it |
//! | `type=T`, `code=C` | the error's `type` / `code` (`type=insufficient_quota` is OpenAI's quota error, body and all) |
//! | `format=F` | the error body as `html`, `text`, `openai`, `anthropic`, `error_code_detail` or `humanloop` instead |
//! | `times=K` | play the faults on the first K calls with this text only, then answer normally |
//! | `retry_after=S`, `retry_after_ms=M` | the `retry-after` (`none`: no header) and `retry-after-ms` headers of a 429/503/529 (default 1 s and 20 ms) |
//! | `hang_ms=M` | wait M ms before sending anything, headers included |
//! | `reset` | read the request, then close the connection (TCP reset) without an answer |
//! | `delay_ms=M` | a slow upstream: M ms between stream events, or before a non-streamed answer |
//! | `cut_after=N` | drop the connection after N content events of a stream |
//! | `error_after=N` | end a stream with the dialect's error event after N content events (Responses: `error_event=error\|failed\|both`, default both) |
//! | `stall_after=N,stall_ms=M` | pause M ms before content event N |
//! | `usage=none` | leave usage out |
//! | `usage=null` | with `include_usage`, OpenAI's `"usage": null` on every chunk before the usage chunk (see `openai.rs`) |
//! | `words=N` | a reply of N words (before the output cap) |
//!
//! # Keys and counts
//!
//! [`Mock::require_key`] makes it check the upstream key as the providers
//! do (`Authorization: Bearer`, or on `/v1/messages` `x-api-key` or
//! `Authorization: Bearer`) and refuse others with their 401. Anthropic's
//! endpoint always wants some key and `anthropic-version`. [`Mock::requests_per_minute`] enforces a real
//! request rate limit. Every call is counted per route and per
//! `x-tollgate-test` or `Idempotency-Key` header, so a retry test can assert
//! how many calls the upstream saw ([`Mock::calls`], `GET /mock/calls`).
//!
//! It needs axum, hyper-util, tokio, serde_json and base64.

#![allow(dead_code)]

mod anthropic;
mod errors;
mod exchange;
mod faults;
mod headers;
mod models;
mod openai;
mod responses;
mod sse;
mod text;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde_json::{Value, json};

use self::headers::RateWindow;

/// The largest request body read (providers take tens of MB; tests far less).
const MAX_BODY: usize = 16 << 20;

/// The mock upstream: cheap to clone, every clone shares the counts.
#[derive(Clone)]
pub struct Mock {
    config: Arc<Config>,
    state: Arc<Shared>,
}

#[derive(Clone, Default)]
struct Config {
    models: Vec<String>,
    upstream_key: Option<String>,
    requests_per_minute: Option<u64>,
}

struct Shared {
    /// How often each failing (route, text) has failed so far (`times=K`).
    failures: Mutex<HashMap<String, u32>>,
    calls: Mutex<Calls>,
    window: Mutex<RateWindow>,
    next_id: AtomicU64,
    seed: u64,
}

/// The calls a mock received, as `GET /mock/calls` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Calls {
    /// Every call (`/mock/*` excepted).
    pub total: u64,
    /// Per path, under its `/v1` name (`/v1/chat/completions`).
    pub routes: BTreeMap<String, u64>,
    /// Per `x-tollgate-test` header value.
    pub tests: BTreeMap<String, u64>,
    /// Per `Idempotency-Key` header value.
    pub idempotency_keys: BTreeMap<String, u64>,
}

impl Calls {
    /// The calls that carried `x-tollgate-test: <name>`.
    pub fn test(&self, name: &str) -> u64 {
        self.tests.get(name).copied().unwrap_or(0)
    }

    /// The calls to `path` (`/v1/...`).
    pub fn route(&self, path: &str) -> u64 {
        self.routes.get(path).copied().unwrap_or(0)
    }

    /// `{"total", "routes", "tests", "idempotency_keys"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "total": self.total,
            "routes": self.routes,
            "tests": self.tests,
            "idempotency_keys": self.idempotency_keys,
        })
    }
}

impl Default for Mock {
    fn default() -> Self {
        Mock::new(Vec::new())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock left plain counters behind.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Mock {
    /// A mock that lists `models` at `/v1/models` (and answers for any model).
    pub fn new(models: Vec<String>) -> Self {
        Mock {
            config: Arc::new(Config {
                models,
                ..Config::default()
            }),
            state: Arc::new(Shared {
                failures: Mutex::default(),
                calls: Mutex::default(),
                window: Mutex::default(),
                next_id: AtomicU64::new(0),
                seed: RandomState::new().hash_one(Instant::now()),
            }),
        }
    }

    /// Accept only this upstream key: `Authorization: Bearer <key>` on the
    /// OpenAI endpoints, `x-api-key: <key>` or `Authorization: Bearer <key>`
    /// on `/v1/messages`. A missing or wrong key gets the provider's 401.
    pub fn require_key(mut self, key: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.config).upstream_key = Some(key.into());
        self
    }

    /// Enforce a request rate limit: the call past `limit` in a minute gets
    /// the provider's 429 with `retry-after` until the minute ends.
    pub fn requests_per_minute(mut self, limit: u64) -> Self {
        Arc::make_mut(&mut self.config).requests_per_minute = Some(limit);
        self
    }

    /// The calls received so far.
    pub fn calls(&self) -> Calls {
        lock(&self.state.calls).clone()
    }

    /// The router serving the mock. [`Mock::serve`] adds what a router alone
    /// cannot do: `MOCK:reset` closes the connection only there.
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(openai::chat))
            .route("/chat/completions", post(openai::chat))
            .route("/v1/completions", post(openai::completions))
            .route("/completions", post(openai::completions))
            .route("/v1/embeddings", post(openai::embeddings))
            .route("/embeddings", post(openai::embeddings))
            .route("/v1/responses", post(responses::create))
            .route("/responses", post(responses::create))
            .route("/v1/messages", post(anthropic::messages))
            .route("/messages", post(anthropic::messages))
            .route("/v1/models", get(models::list))
            .route("/models", get(models::list))
            .route("/v1/models/{id}", get(models::retrieve))
            .route("/models/{id}", get(models::retrieve))
            .route("/mock/calls", get(show_calls).delete(forget_calls))
            .fallback(models::unknown_route)
            .method_not_allowed_fallback(models::unknown_route)
            .with_state(self)
    }

    /// Serves the mock on `addr` until the process ends; returns the bound
    /// address. Connections get `TCP_NODELAY`, as a provider's do: a mock
    /// that let Nagle's algorithm hold its small SSE writes would add its
    /// own latency to every measurement made through it.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let router = self.router();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve_connection(stream, router.clone()));
                    }
                    Err(error) => {
                        // Out of file descriptors and the like: wait, don't spin.
                        tracing::warn!(%error, "mock upstream: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok(local)
    }

    fn next_id(&self) -> String {
        let n = self.state.next_id.fetch_add(1, Ordering::Relaxed);
        format!(
            "{:016x}{:016x}",
            text::splitmix(self.state.seed ^ n),
            text::splitmix(n.wrapping_add(self.state.seed.rotate_left(17)))
        )
    }

    fn count(&self, route: &str, request: &HeaderMap) {
        let mut calls = lock(&self.state.calls);
        calls.total += 1;
        *calls.routes.entry(route.to_owned()).or_default() += 1;
        let value = |name: &str| request.get(name).and_then(|v| v.to_str().ok());
        if let Some(test) = value("x-tollgate-test") {
            *calls.tests.entry(test.to_owned()).or_default() += 1;
        }
        if let Some(key) = value("idempotency-key") {
            *calls.idempotency_keys.entry(key.to_owned()).or_default() += 1;
        }
    }
}

/// The connection's reset switch, handed to each request by [`Mock::serve`].
#[derive(Clone)]
struct ResetSignal(Arc<tokio::sync::Notify>);

async fn serve_connection(stream: tokio::net::TcpStream, router: Router) {
    let _ = stream.set_nodelay(true);
    // A second handle on the socket, to set SO_LINGER to zero when a
    // request asks for a reset: closing then sends RST, as a crashed or
    // reset upstream does, instead of a polite FIN.
    let Ok((stream, spare)) = stream
        .into_std()
        .and_then(|s| Ok((s.try_clone()?, s)))
        .and_then(|(spare, s)| Ok((tokio::net::TcpStream::from_std(s)?, spare)))
    else {
        return;
    };
    let signal = ResetSignal(Arc::new(tokio::sync::Notify::new()));
    let reset = signal.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(reset.clone());
        tower::ServiceExt::oneshot(router.clone(), request)
    });
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        () = signal.0.notified() => {
            if let Ok(spare) = tokio::net::TcpStream::from_std(spare) {
                let _ = spare.set_zero_linger();
            }
        }
    }
}

async fn show_calls(State(mock): State<Mock>) -> axum::Json<Value> {
    axum::Json(mock.calls().to_json())
}

async fn forget_calls(State(mock): State<Mock>) -> StatusCode {
    *lock(&mock.state.calls) = Calls::default();
    StatusCode::NO_CONTENT
}
