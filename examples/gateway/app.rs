//! The gateway: all six tollgate layers around an OpenAI-compatible proxy.
//!
//! Server stack, outermost first:
//! `ErrorEnvelopeLayer → access log → body timeout (408) → Auth → model check →
//! RateLimit → Budget → StreamErrorTrailer → shutdown cut → proxy`, and
//! towards the upstream `timeout → Retry → hyper-util Client`. The admin API
//! (`/admin/*`, see `admin/`) sits inside the envelope and the access log,
//! beside the proxy, with its own authentication.
//!
//! An [`App`] is what one config builds on the long-lived stores
//! (`gateway.rs` swaps it on reload); served by `server.rs` (connections,
//! client timeouts, shutdown drain). [`start`] puts it together and
//! [`Running::shutdown`] stops it.

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
use tollgate::auth::AuthLayer;
use tollgate::budget::{BudgetLayer, Ledger, ModelPrice, Pricing, TokenPrice};
use tollgate::rate_limit::{HeaderStyle, RateLimitLayer};
use tollgate::retry::RetryInfo;
use tollgate::stream::StreamErrorTrailerLayer;
use tollgate::usage::{UsageReport, UsageTap};
use tollgate::{ApiError, ErrorEnvelopeLayer, ErrorFormat, Principal, RequestMeta};
use tower::ServiceBuilder;

use crate::admin::{self, AdminState};
use crate::config::{Config, ModelConfig, StoreChoice};
use crate::gateway::{Gateway, LoadConfig, ReloadRequests, Reloads};
use crate::server::{self, ServeSettings};
use crate::shutdown::Shutdown;
use crate::stores::Stores;
use crate::upstream::{self, Upstream};

/// What one config builds: the router with every layer, on the stores
/// every app of the process shares. Immutable; a reload builds another.
pub struct App {
    /// The config it was built from.
    pub config: Arc<Config>,
    /// Every route, every layer.
    pub router: Router,
}

/// Shared state of the handlers of one [`App`].
pub struct AppState {
    config: Arc<Config>,
    pricing: Pricing,
    ledger: Arc<dyn Ledger>,
    /// The upstream for logs: its base URL without credentials, or `mock`.
    upstream_label: String,
    stores: Stores,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration cannot be used (exit code 2).
    #[error("{0}")]
    Config(String),
    /// The listener, the store or the mock upstream could not start (exit
    /// code 1).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The store could not be opened or took no keys (exit code 1).
    #[error("{0}")]
    Store(String),
}

/// A gateway that is serving.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The upstream it forwards to (without credentials).
    pub upstream: String,
    /// The gateway.
    pub gateway: Arc<Gateway>,
    shutdown: Shutdown,
    server: tokio::task::JoinHandle<()>,
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

/// Checks that `config` can start: the store is one this binary supports
/// and the keys, prices and formats build. Binds and opens nothing.
pub fn check(config: &Config) -> Result<(), StartError> {
    let choice: StoreChoice = config
        .store
        .parse()
        .map_err(|e| StartError::Config(format!("store: {e}")))?;
    crate::stores::supported(&choice).map_err(|e| StartError::Config(e.to_string()))?;
    let url = config.upstream_url().unwrap_or("http://127.0.0.1:9/v1");
    let (reloads, _) = crate::gateway::reload_channel();
    App::build(
        config.clone(),
        &Stores::memory(),
        url.to_owned(),
        &Shutdown::new(),
        reloads,
    )
    .map(|_| ())
    .map_err(|e| StartError::Config(e.to_string()))
}

/// Opens the store, builds everything and starts serving on
/// `config.listen`; `load` reads the config again for a reload. Also
/// answers the reloads the admin API asks for, which `main` serves.
pub async fn start(
    config: Config,
    load: LoadConfig,
) -> Result<(Running, ReloadRequests), StartError> {
    let choice: StoreChoice = config
        .store
        .parse()
        .map_err(|e| StartError::Config(format!("store: {e}")))?;
    let stores = Stores::open(&choice, Duration::from_millis(config.store_timeout_ms))
        .await
        .map_err(|e| StartError::Store(e.to_string()))?;
    tracing::info!(store = %choice, "state store open");
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let settings = serve_settings(&config);
    let shutdown = Shutdown::new();
    let (gateway, reloads) = Gateway::new(config, stores, load, shutdown.clone())
        .await
        .map_err(|e| match e {
            crate::gateway::ReloadError::Config(message) => StartError::Config(message),
            crate::gateway::ReloadError::Io(error) => StartError::Io(error),
            crate::gateway::ReloadError::ShuttingDown => {
                StartError::Config("the gateway is shutting down".into())
            }
            crate::gateway::ReloadError::Store(error) => StartError::Store(format!(
                "the keys of the config could not be stored: {error}"
            )),
        })?;
    let upstream = match gateway.app().config.upstream_url() {
        Some(url) => crate::config::without_credentials(url),
        None => "mock".to_owned(),
    };
    let server = tokio::spawn(server::serve(
        listener,
        gateway.service(),
        settings,
        shutdown.clone(),
    ));
    let running = Running {
        addr,
        upstream,
        gateway,
        shutdown,
        server,
    };
    Ok((running, reloads))
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

impl App {
    /// Builds the app of `config` on `stores`, forwarding to
    /// `upstream_url`. Its streams end when `shutdown` cuts them; its admin
    /// API asks `reloads` for a reload.
    pub fn build(
        config: Config,
        stores: &Stores,
        upstream_url: String,
        shutdown: &Shutdown,
        reloads: Reloads,
    ) -> Result<App, Box<dyn std::error::Error + Send + Sync>> {
        let config = Arc::new(config);
        let router = router(config.clone(), stores, upstream_url, shutdown, reloads)?;
        Ok(App { config, router })
    }
}

/// The whole application as an axum `Router`. Every stateful layer is built
/// on the shared `stores`, so counters and spend outlive the router.
fn router(
    config: Arc<Config>,
    stores: &Stores,
    upstream_url: String,
    shutdown: &Shutdown,
    reloads: Reloads,
) -> Result<Router, Box<dyn std::error::Error + Send + Sync>> {
    let pricing = pricing(&config.models)?;
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
    let state = Arc::new(AppState {
        config: config.clone(),
        pricing: pricing.clone(),
        ledger: stores.ledger.clone(),
        upstream_label,
        stores: stores.clone(),
    });
    let cut = shutdown.clone();

    let chat = Router::new()
        .route("/v1/chat/completions", post(upstream::chat_completions))
        .with_state(upstream)
        .layer(
            ServiceBuilder::new()
                .layer(
                    RateLimitLayer::new()
                        .headers(header_style)
                        .store(stores.rate_limits.clone()),
                )
                .layer(
                    BudgetLayer::with_ledger(pricing, stores.ledger.clone())
                        .policy(config.reserve_policy()),
                )
                .layer(StreamErrorTrailerLayer::new().idle_timeout(idle))
                // Inside the trailer layer, so a stream cut at shutdown ends
                // with its terminal error event.
                .map_response(move |response: Response| cut.watch_stream(response)),
        );
    let authed = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/key", get(key_info))
        .with_state(state.clone())
        .merge(chat)
        .layer(
            ServiceBuilder::new()
                .layer(AuthLayer::new(stores.keys.clone()))
                .layer(middleware::from_fn_with_state(state.clone(), check_model)),
        );
    let admin = admin::routes(AdminState::new(&config, stores, reloads));
    let app = Router::new()
        .route("/health", get(health))
        .with_state(state.clone())
        .merge(authed)
        .merge(admin)
        .fallback(|| async { ApiError::not_found().with_message("Unknown path.") })
        .layer(
            ServiceBuilder::new()
                .layer(
                    ErrorEnvelopeLayer::new()
                        .format(error_format)
                        .catch_panic(true),
                )
                .layer(middleware::from_fn_with_state(state, access_log))
                .layer(middleware::from_fn(server::answer_body_timeout)),
        );
    Ok(app)
}

/// `GET /health`: 200 while the store takes writes, else 503 with why.
async fn health(State(app): State<Arc<AppState>>) -> Response {
    let store = app.stores.kind();
    match app.stores.health() {
        Ok(()) => axum::Json(json!({"status": "ok", "store": store})).into_response(),
        Err(error) => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "unavailable", "store": store, "error": error})),
        )
            .into_response(),
    }
}

/// A model not in the config → 400 `invalid_model`; prompt + `max_tokens`
/// over the model's context window → 400 `context_length_exceeded`, before
/// any upstream call.
async fn check_model(State(gw): State<Arc<AppState>>, req: Request, next: Next) -> Response {
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
async fn list_models(State(gw): State<Arc<AppState>>, req: Request) -> Response {
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

/// `GET /v1/key`: the calling key's id, expiry, limits and, read from the
/// ledger, what each of its budgets and balances has left and when it
/// resets, without spending a request.
async fn key_info(State(gw): State<Arc<AppState>>, req: Request) -> Response {
    let Some(principal) = req.extensions().get::<Principal>().cloned() else {
        return ApiError::authentication().into_response();
    };
    let record = principal.record();
    let budgets = match admin::budgets_json(&*gw.ledger, record).await {
        Ok(budgets) => budgets,
        Err(error) => return error.into_response(),
    };
    axum::Json(json!({
        "id": record.id,
        "name": record.name,
        "expires_at": record.expires_at.and_then(admin::rfc3339),
        "models": record.allowed_models,
        "rate_limits": record.rate_limits.iter().map(admin::limit_json).collect::<Vec<_>>(),
        "max_concurrent": record.max_concurrent,
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
async fn access_log(State(gw): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
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
