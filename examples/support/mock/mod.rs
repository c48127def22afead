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
mod faults;
mod headers;
mod openai;
mod responses;
mod sse;
mod text;

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};

pub use self::errors::Api;
use self::errors::{ProviderError, masked_key};
pub use self::faults::Faults;
use self::headers::{DEFAULT_REQUESTS_PER_MINUTE, RateWindow};

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
            .route("/v1/models", get(models))
            .route("/models", get(models))
            .route("/v1/models/{id}", get(model))
            .route("/models/{id}", get(model))
            .route("/mock/calls", get(show_calls).delete(forget_calls))
            .fallback(unknown_route)
            .method_not_allowed_fallback(unknown_route)
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

    /// Receives a call to `route`: counts it, reads its body, checks the key
    /// and the rate limit. An `Err` is the answer already.
    pub(crate) async fn receive(
        &self,
        api: Api,
        route: &'static str,
        request: Request,
    ) -> Result<(Exchange, Bytes), Response> {
        let (parts, body) = request.into_parts();
        self.count(route, &parts.headers);
        let exchange = Exchange {
            mock: self.clone(),
            api,
            route,
            request_id: format!("req_{}", self.next_id()),
            started: Instant::now(),
            reset: parts.extensions.get::<ResetSignal>().cloned(),
        };
        let body = match axum::body::to_bytes(body, MAX_BODY).await {
            Ok(body) => body,
            Err(_) => {
                let mut error = ProviderError::new(api, StatusCode::PAYLOAD_TOO_LARGE);
                error.message = "Request exceeds the maximum allowed number of bytes.".into();
                return Err(exchange.fail(error, &Faults::default()));
            }
        };
        if let Err(error) = self.authenticate(api, &parts.headers) {
            return Err(exchange.fail(error, &Faults::default()));
        }
        let limit = self.config.requests_per_minute;
        // The guard must be gone before `fail` takes the lock again.
        let admitted = lock(&self.state.window).admit(limit.unwrap_or(u64::MAX));
        if let Err(wait) = admitted {
            let error = ProviderError::new(api, StatusCode::TOO_MANY_REQUESTS);
            let faults = Faults {
                retry_after_ms: Some(wait.as_millis() as u64),
                ..Faults::default()
            };
            return Err(exchange.fail(error, &faults));
        }
        Ok((exchange, body))
    }

    fn authenticate(&self, api: Api, request: &HeaderMap) -> Result<(), ProviderError> {
        let value = |name: &str| request.get(name).and_then(|v| v.to_str().ok());
        let bearer = value(header::AUTHORIZATION.as_str())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|key| !key.is_empty());
        let expected = self.config.upstream_key.as_deref();
        let mut error = ProviderError::new(api, StatusCode::UNAUTHORIZED);
        match api {
            Api::OpenAi => {
                let Some(expected) = expected else {
                    return Ok(());
                };
                match bearer {
                    Some(key) if key == expected => return Ok(()),
                    // OpenAI's own answer to a request without a key: no code.
                    None => {
                        error.code = None;
                        error.message = "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key from https://platform.openai.com/account/api-keys.".into();
                    }
                    Some(key) => {
                        error.message = format!(
                            "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                            masked_key(key)
                        );
                    }
                }
                Err(error)
            }
            // Anthropic takes the key in `x-api-key` or, as its current SDKs
            // send it, `Authorization: Bearer`.
            Api::Anthropic => match value("x-api-key").or(bearer) {
                None => {
                    error.message = "x-api-key header is required".into();
                    Err(error)
                }
                Some(key) if expected.is_some_and(|e| e != key) => Err(error),
                Some(_) if value("anthropic-version").is_none_or(str::is_empty) => Err(
                    ProviderError::invalid(api, "anthropic-version: header is required", None),
                ),
                Some(_) => Ok(()),
            },
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

/// One call in progress: who answers it, and the headers its answer gets.
pub(crate) struct Exchange {
    mock: Mock,
    api: Api,
    route: &'static str,
    request_id: String,
    started: Instant,
    reset: Option<ResetSignal>,
}

impl Exchange {
    /// The provider's request id for this call.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// A fresh id (for response and item ids).
    pub fn new_id(&self) -> String {
        self.mock.next_id()
    }

    /// Seconds since the epoch (`created`).
    pub fn now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// The body as a JSON object, or the provider's 400.
    pub fn parse(&self, body: &[u8]) -> Result<Value, Response> {
        match serde_json::from_slice::<Value>(body) {
            Ok(value @ Value::Object(_)) => Ok(value),
            _ => {
                let message = match self.api {
                    Api::OpenAi => {
                        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
                    }
                    Api::Anthropic => {
                        "There was an issue with the request body: it is not valid JSON"
                    }
                };
                Err(self.fail(
                    ProviderError::invalid(self.api, message, None),
                    &Faults::default(),
                ))
            }
        }
    }

    /// Plays the directives that come before an answer (`hang_ms`, `reset`,
    /// `status`), counting `times` against `text`. `Ok` holds the faults
    /// left for the answer (none once `times` is used up).
    pub async fn play(&self, faults: Faults, text: &str) -> Result<Faults, Response> {
        if let Some(k) = faults.times {
            let key = format!("{}\n{text}", self.route);
            let mut failures = lock(&self.mock.state.failures);
            let n = failures.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            if *n > k {
                return Ok(Faults {
                    words: faults.words,
                    no_usage: faults.no_usage,
                    null_usage: faults.null_usage,
                    ..Faults::default()
                });
            }
        }
        if let Some(hang) = faults.hang() {
            tokio::time::sleep(hang).await;
        }
        if faults.reset {
            return Err(self.reset().await);
        }
        if let Some(status) = faults.status {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            // `format=openai|anthropic` writes the other provider's error:
            // its type for the status too, not only its envelope.
            let api = match faults.format.as_deref() {
                Some("openai") => Api::OpenAi,
                Some("anthropic") => Api::Anthropic,
                _ => self.api,
            };
            let error = ProviderError::from_directives(api, status, &faults);
            return Err(self.fail(error, &faults));
        }
        Ok(faults)
    }

    async fn reset(&self) -> Response {
        if let Some(signal) = &self.reset {
            signal.0.notify_one();
            // The connection task drops this call with the connection.
            std::future::pending::<()>().await;
        }
        // A router served by someone else: a body that fails at once is the
        // nearest thing to no answer.
        let failing = futures_util::stream::once(async {
            Err::<Bytes, _>(std::io::Error::other("mock upstream reset"))
        });
        Response::new(Body::from_stream(failing))
    }

    /// The provider's error response.
    pub fn fail(&self, error: ProviderError, faults: &Faults) -> Response {
        self.finish(error.response(self.api, faults, &self.request_id), 0)
    }

    /// A JSON answer, after `delay_ms`.
    pub async fn answer(&self, body: Value, faults: &Faults, tokens: u64) -> Response {
        if let Some(delay) = faults.delay() {
            tokio::time::sleep(delay).await;
        }
        let mut response = Response::new(Body::from(body.to_string()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.finish(response, tokens)
    }

    /// Adds the headers every answer carries, charging `tokens` to the
    /// rate-limit window first.
    pub fn finish(&self, mut response: Response, tokens: u64) -> Response {
        let rate = {
            let mut window = lock(&self.mock.state.window);
            window.charge(tokens);
            window.state(
                self.mock
                    .config
                    .requests_per_minute
                    .unwrap_or(DEFAULT_REQUESTS_PER_MINUTE),
            )
        };
        headers::write(
            self.api,
            response.headers_mut(),
            &self.request_id,
            self.started.elapsed(),
            rate,
        );
        response
    }
}

/// Which API a `/v1/models` call speaks: Anthropic's SDK sends its version.
fn api_of(request: &Request) -> Api {
    if request.headers().contains_key("anthropic-version") {
        Api::Anthropic
    } else {
        Api::OpenAi
    }
}

async fn models(State(mock): State<Mock>, request: Request) -> Response {
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

async fn model(State(mock): State<Mock>, Path(id): Path<String>, request: Request) -> Response {
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

async fn show_calls(State(mock): State<Mock>) -> axum::Json<Value> {
    axum::Json(mock.calls().to_json())
}

async fn forget_calls(State(mock): State<Mock>) -> StatusCode {
    *lock(&mock.state.calls) = Calls::default();
    StatusCode::NO_CONTENT
}

/// OpenAI's answer to a path it does not serve (Anthropic's, for a client
/// that sent `anthropic-version`).
async fn unknown_route(State(mock): State<Mock>, request: Request) -> Response {
    let api = api_of(&request);
    let line = format!("{} {}", request.method(), request.uri().path());
    let exchange = Exchange {
        mock: mock.clone(),
        api,
        route: "unknown",
        request_id: format!("req_{}", mock.next_id()),
        started: Instant::now(),
        reset: None,
    };
    mock.count(request.uri().path(), request.headers());
    let mut error = ProviderError::new(api, StatusCode::NOT_FOUND);
    error.message = match api {
        Api::OpenAi => format!("Invalid URL ({line})"),
        Api::Anthropic => "Not found".into(),
    };
    exchange.fail(error, &Faults::default())
}
