//! The gateway: all six tollgate layers around an OpenAI-compatible proxy.
//!
//! Server stack, outermost first:
//! `ErrorEnvelope → access log → body timeout (408) → Auth → model check →
//! RateLimit → Budget → StreamErrorTrailer → shutdown cut → proxy`, and
//! towards the upstream `timeout → Retry → hyper-util Client`. Served by
//! `server.rs` (connections, client timeouts, shutdown drain); [`start`]
//! puts it together and [`Running::shutdown`] stops it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tollgate::auth::{AuthLayer, KeyEntry};
use tollgate::budget::{BudgetLayer, Ledger, ModelPrice, Pricing, TokenPrice};
use tollgate::rate_limit::{HeaderStyle, RateLimitLayer};
use tollgate::retry::RetryInfo;
use tollgate::store::memory::{MemoryKeyStore, MemoryLedger};
use tollgate::stream::StreamErrorTrailerLayer;
use tollgate::usage::{UsageReport, UsageTap};
use tollgate::{ApiError, ErrorEnvelopeLayer, ErrorFormat, Principal, RequestMeta};
use tower::ServiceBuilder;

use crate::config::{Config, ModelConfig, StoreChoice};
use crate::mock;
use crate::server::{self, ServeSettings};
use crate::shutdown::Shutdown;
use crate::upstream::{self, Upstream};

/// Shared state of the handlers.
pub struct Gateway {
    config: Config,
    pricing: Pricing,
    ledger: MemoryLedger,
    /// The upstream for logs: its base URL without credentials, or `mock`.
    upstream_label: String,
}

impl Gateway {
    /// Writes out what the state store still holds in memory. Called once at
    /// the end of a shutdown, after every connection has closed and so every
    /// reservation has been settled or released. The memory store has nothing
    /// to write; a durable store flushes its pending settlements here and a
    /// remote one waits for those still on their way.
    pub async fn flush_store(&self) -> Result<(), tollgate::store::StoreError> {
        Ok(())
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration cannot be used (exit code 2).
    #[error("{0}")]
    Config(String),
    /// The listener or the mock upstream could not start (exit code 1).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A gateway that is serving.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The upstream it forwards to (without credentials).
    pub upstream: String,
    shutdown: Shutdown,
    server: tokio::task::JoinHandle<()>,
    gateway: Arc<Gateway>,
}

impl Running {
    /// Resolves only if the server stops by itself (it panicked).
    pub async fn failed(&mut self) -> tokio::task::JoinError {
        match (&mut self.server).await {
            Ok(()) => std::future::pending().await,
            Err(error) => error,
        }
    }

    /// Shuts down (see [`crate::shutdown`]): stops accepting, lets in-flight
    /// work finish within `shutdown_grace_secs` (or until `hurry` resolves,
    /// a second signal), ends the streams still open, then flushes the store.
    pub async fn shutdown(self, hurry: impl Future<Output = ()>) -> Result<(), String> {
        let Running {
            shutdown,
            mut server,
            gateway,
            ..
        } = self;
        shutdown.begin();
        let drained = tokio::select! {
            result = &mut server => result,
            () = hurry => {
                tracing::warn!("second signal: ending open streams now");
                shutdown.cut_streams();
                server.await
            }
        };
        drained.map_err(|e| format!("the server task failed: {e}"))?;
        gateway
            .flush_store()
            .await
            .map_err(|e| format!("flushing the store failed: {e}"))
    }
}

/// The serving limits of `config`.
pub fn serve_settings(config: &Config) -> ServeSettings {
    ServeSettings {
        header_timeout: Duration::from_secs(config.client_header_timeout_secs),
        body_timeout: Duration::from_secs(config.client_body_timeout_secs),
        idle_timeout: Duration::from_secs(config.client_idle_timeout_secs),
        max_connections: config.max_connections,
        shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
    }
}

/// Checks that `config` can start: the store is supported and the keys,
/// prices and formats build. Binds nothing.
pub fn check(config: &Config) -> Result<(), StartError> {
    supported_store(config)?;
    let url = config.upstream_url().unwrap_or("http://127.0.0.1:9/v1");
    router(config.clone(), url.to_owned(), &Shutdown::new())
        .map(|_| ())
        .map_err(|e| StartError::Config(e.to_string()))
}

/// Until the stores land, only `memory`.
fn supported_store(config: &Config) -> Result<(), StartError> {
    match config.store.parse::<StoreChoice>() {
        Ok(StoreChoice::Memory) => Ok(()),
        Ok(other) => Err(StartError::Config(format!(
            "store {other:?}: not supported yet; this gateway keeps its state in memory (store = \"memory\")",
            other = other.to_string()
        ))),
        Err(error) => Err(StartError::Config(format!("store: {error}"))),
    }
}

/// Builds everything and starts serving on `config.listen`.
pub async fn start(config: Config) -> Result<Running, StartError> {
    supported_store(&config)?;
    let upstream_url = match config.upstream_url() {
        Some(url) => url.to_owned(),
        None => {
            let models = config.models.iter().map(|m| m.name.clone()).collect();
            let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
            let addr = listener.local_addr()?;
            // Served like the gateway (TCP_NODELAY), and never shut down:
            // streams in flight keep their upstream until the process ends.
            let router = mock::Mock::new(models).router();
            tokio::spawn(server::serve(
                listener,
                router,
                ServeSettings::default(),
                Shutdown::new(),
            ));
            format!("http://{addr}/v1")
        }
    };
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let settings = serve_settings(&config);
    let shutdown = Shutdown::new();
    let (app, gateway) =
        router(config, upstream_url, &shutdown).map_err(|e| StartError::Config(e.to_string()))?;
    let server = tokio::spawn(server::serve(listener, app, settings, shutdown.clone()));
    Ok(Running {
        addr,
        upstream: gateway.upstream_label.clone(),
        shutdown,
        server,
        gateway,
    })
}

fn pricing(models: &[ModelConfig]) -> Result<Pricing, String> {
    let mut pricing = Pricing::new();
    for m in models {
        let price = |usd: f64, field: &str| {
            TokenPrice::from_usd_per_million(usd)
                .map_err(|e| format!("models.{}.{field}: {e}", m.name))
        };
        let input = price(m.input_usd_per_million, "input_usd_per_million")?;
        let output = price(m.output_usd_per_million, "output_usd_per_million")?;
        let cached = match m.cached_input_usd_per_million {
            Some(usd) => price(usd, "cached_input_usd_per_million")?,
            None => input,
        };
        pricing.insert(
            m.name.clone(),
            ModelPrice {
                input,
                output,
                cached_input: Some(cached),
                max_output_tokens: m.max_output_tokens,
            },
        );
    }
    Ok(pricing)
}

/// The whole application as an axum `Router`, and its shared state. Its
/// streams end when `shutdown` cuts them.
pub fn router(
    config: Config,
    upstream_url: String,
    shutdown: &Shutdown,
) -> Result<(Router, Arc<Gateway>), Box<dyn std::error::Error + Send + Sync>> {
    let keys = MemoryKeyStore::new();
    for entry in config.keys.iter().cloned() {
        keys.insert(KeyEntry::into_record(entry)?)?;
    }
    let pricing = pricing(&config.models)?;
    let ledger = MemoryLedger::new();
    let error_format: ErrorFormat = config.error_format.parse()?;
    let header_style = match config.rate_limit_headers.as_str() {
        "timestamp" => HeaderStyle::Timestamp,
        "ietf" => HeaderStyle::Ietf,
        "none" => HeaderStyle::None,
        _ => HeaderStyle::OpenAi,
    };
    let upstream_label = match config.upstream_url() {
        Some(url) => crate::config::without_credentials(url),
        None => "mock".to_owned(),
    };
    let upstream = Arc::new(Upstream::new(upstream_url, &config)?);
    let idle = Duration::from_secs(config.stream_idle_timeout_secs);
    let gateway = Arc::new(Gateway {
        config,
        pricing: pricing.clone(),
        ledger: ledger.clone(),
        upstream_label,
    });
    let cut = shutdown.clone();

    let chat = Router::new()
        .route("/v1/chat/completions", post(upstream::chat_completions))
        .with_state(upstream)
        .layer(
            ServiceBuilder::new()
                .layer(RateLimitLayer::new().headers(header_style))
                .layer(BudgetLayer::with_ledger(pricing, ledger))
                .layer(StreamErrorTrailerLayer::new().idle_timeout(idle))
                // Inside the trailer layer, so a stream cut at shutdown ends
                // with its terminal error event.
                .map_response(move |response: Response| cut.watch_stream(response)),
        );
    let authed = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/key", get(key_info))
        .with_state(gateway.clone())
        .merge(chat)
        .layer(
            ServiceBuilder::new()
                .layer(AuthLayer::new(keys))
                .layer(middleware::from_fn_with_state(gateway.clone(), check_model)),
        );
    let app = Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .merge(authed)
        .fallback(|| async { ApiError::not_found().with_message("Unknown path.") })
        .layer(
            ServiceBuilder::new()
                .layer(
                    ErrorEnvelopeLayer::new()
                        .format(error_format)
                        .catch_panic(true),
                )
                .layer(middleware::from_fn_with_state(gateway.clone(), access_log))
                .layer(middleware::from_fn(server::answer_body_timeout)),
        );
    Ok((app, gateway))
}

/// A model not in the config → 400 `invalid_model`; prompt + `max_tokens`
/// over the model's context window → 400 `context_length_exceeded`, before
/// any upstream call.
async fn check_model(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    let req = match RequestMeta::read(req, RequestMeta::DEFAULT_LIMIT).await {
        Ok(req) => req,
        Err(error) => return error.into_response(),
    };
    let Some(meta) = req.extensions().get::<RequestMeta>() else {
        return next.run(req).await;
    };
    if let Some(slot) = req.extensions().get::<LogSlot>() {
        if let Ok(mut fields) = slot.0.lock() {
            fields.0 = req
                .extensions()
                .get::<Principal>()
                .map(|p| p.key_id().to_owned());
            fields.1 = meta.model.clone();
        }
    }
    if req.method() == http::Method::POST {
        let Some(name) = meta.model.as_deref() else {
            return ApiError::invalid_request()
                .with_message("You must provide a model parameter.")
                .with_param("model")
                .into_response();
        };
        let Some(model) = gw.config.models.iter().find(|m| m.name == name) else {
            return ApiError::invalid_model()
                .with_message(format!("Invalid model '{name}' specified"))
                .into_response();
        };
        if let Some(window) = model.context_window {
            let completion = meta.max_tokens.unwrap_or(0);
            let requested = meta.prompt_tokens_estimate.saturating_add(completion);
            if requested > window {
                return ApiError::context_length_exceeded()
                    .with_param("messages")
                    .with_message(format!(
                        "This model's maximum context length is {window} tokens. However, you requested {requested} tokens ({} in the messages, {completion} in the completion). Please reduce the length of the messages or completion.",
                        meta.prompt_tokens_estimate
                    ))
                    .into_response();
            }
        }
    }
    next.run(req).await
}

/// `GET /v1/models`: the models the calling key may use, OpenAI list shape.
async fn list_models(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let principal = req.extensions().get::<Principal>();
    let data: Vec<Value> = gw
        .config
        .models
        .iter()
        .filter(|m| principal.is_none_or(|p| p.allows_model(&m.name)))
        .map(|m| json!({"id": m.name, "object": "model", "created": 0, "owned_by": "tollgate"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /v1/key`: the calling key's id, expiry, limits and remaining money,
/// without spending a request.
async fn key_info(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let Some(principal) = req.extensions().get::<Principal>().cloned() else {
        return ApiError::authentication().into_response();
    };
    let limits: Vec<Value> = principal
        .rate_limits()
        .iter()
        .map(|l| json!({"limit": l.to_string(), "amount": l.amount, "window_secs": l.window.as_secs_f64()}))
        .collect();
    let mut budgets = Vec::new();
    for spec in principal.budgets() {
        match gw.ledger.read(spec).await {
            Ok(status) => budgets.push(json!({
                "id": spec.id(),
                "mode": format!("{:?}", spec.mode).to_lowercase(),
                "limit_usd": spec.limit.as_usd_f64(),
                "remaining_usd": status.remaining().as_usd_f64(),
                "resets_at": status.period.end.map(rfc3339),
            })),
            Err(error) => return ApiError::from(error).into_response(),
        }
    }
    axum::Json(json!({
        "id": principal.key_id(),
        "name": principal.name(),
        "expires_at": principal.expires_at().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(rfc3339),
        "models": principal.allowed_models(),
        "rate_limits": limits,
        "max_concurrent": principal.max_concurrent(),
        "budgets": budgets,
    }))
    .into_response()
}

/// What the inner part of the stack learns about a request, for its log line.
#[derive(Clone, Default)]
struct LogSlot(Arc<std::sync::Mutex<(Option<String>, Option<String>)>>);

/// One `tracing` line per request: key id, model, route, status, tokens,
/// cost, attempts, upstream, latency; never a secret. Streams are logged
/// when their body ends.
async fn access_log(State(gw): State<Arc<Gateway>>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    // The route's pattern, not the path: a path is what a client made up.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "-".to_owned(), |p| p.as_str().to_owned());
    let slot = LogSlot::default();
    req.extensions_mut().insert(slot.clone());
    let response = next.run(req).await;
    let (key, model) = slot.0.lock().map(|g| g.clone()).unwrap_or_default();
    let attempts = response
        .extensions()
        .get::<RetryInfo>()
        .map(|r| r.attempts)
        .unwrap_or(0);
    let status = response.status().as_u16();
    // Called, or failed to be reached (a transport failure carries no count).
    let called = attempts > 0
        || response
            .extensions()
            .get::<ApiError>()
            .is_some_and(|e| e.origin() == tollgate::Origin::Upstream);
    let upstream = if called {
        gw.upstream_label.clone()
    } else {
        "-".to_owned()
    };
    let log = move |report: Option<&UsageReport>| {
        let usage = report.map(|r| r.usage).unwrap_or_default();
        let cost = match (report, model.as_deref().and_then(|m| gw.pricing.get(m))) {
            (Some(r), Some(price)) => price
                .cost_of(
                    r.usage.prompt_tokens,
                    r.usage.cached_tokens.unwrap_or(0),
                    r.usage.completion_tokens,
                )
                .to_string(),
            _ => "$0.00".to_owned(),
        };
        tracing::info!(
            key = key.as_deref().unwrap_or("-"),
            model = model.as_deref().unwrap_or("-"),
            %method,
            route,
            status,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            tokens = usage.total_tokens,
            cost,
            attempts,
            upstream,
            latency_ms = start.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
    };
    match response.extensions().get::<UsageTap>() {
        Some(tap) => tap.subscribe(move |report| log(Some(report))),
        None => log(None),
    }
    response
}

/// `2026-12-06T00:00:00Z` for a time since the Unix epoch.
fn rfc3339(since_epoch: Duration) -> Option<String> {
    let secs = i64::try_from(since_epoch.as_secs()).ok()?;
    jiff::Timestamp::from_second(secs)
        .ok()
        .map(|t| t.to_string())
}
