//! The gateway: all six tollgate layers around the proxied endpoints.
//!
//! Server stack, outermost first:
//! `ErrorEnvelope → access log → body timeout (408) → Auth → model check →
//! routing → RateLimit → Budget → stream meter → StreamErrorTrailer →
//! shutdown cut → proxy` (`proxy/`), and towards each model's upstream
//! `timeout → Retry → attempt meter → hyper-util Client` (`routing.rs`). Served by
//! `server.rs` (connections, client timeouts, shutdown drain); [`start`]
//! puts it together and [`Running::shutdown`] stops it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tollgate::auth::{AuthLayer, KeyEntry};
use tollgate::budget::{BudgetLayer, Ledger, ModelPrice, Pricing, TokenPrice};
use tollgate::rate_limit::{HeaderStyle, RateLimitLayer};
use tollgate::store::memory::{MemoryKeyStore, MemoryLedger, MemoryRateLimitStore};
use tollgate::stream::StreamErrorTrailerLayer;
use tollgate::{ApiError, ErrorEnvelopeLayer, ErrorFormat, Principal, RequestMeta};
use tower::ServiceBuilder;

use crate::access_log::{self, AccessLog, LogSlot};
use crate::config::{Config, ModelConfig, StoreChoice};
use crate::metrics::{self, Counted, Metrics, MetricsAccess};
use crate::mock;
use crate::proxy::{self, models::ModelList};
use crate::routing::{self, Routes};
use crate::server::{self, ServeSettings};
use crate::shutdown::Shutdown;

/// Shared state of the handlers.
pub struct Gateway {
    config: Config,
    ledger: MemoryLedger,
    /// The upstream for logs: its base URL without credentials, or `mock`.
    upstream_label: String,
    /// Every metric of the process (gw16).
    metrics: Metrics,
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
    /// Where `/metrics` is served without a key (`metrics_listen`).
    pub metrics_addr: Option<SocketAddr>,
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
    router(
        config.clone(),
        "http://127.0.0.1:9/v1".to_owned(),
        &Shutdown::new(),
    )
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
    // The built-in mock, for every upstream whose URL is `mock`.
    let mock_url = if routing::needs_mock(&config) {
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
    } else {
        String::new()
    };
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let settings = serve_settings(&config);
    let metrics_listen = config.metrics_listen;
    let shutdown = Shutdown::new();
    let (app, gateway) =
        router(config, mock_url, &shutdown).map_err(|e| StartError::Config(e.to_string()))?;
    let metrics_addr = match metrics_listen {
        Some(at) => {
            let listener = TcpListener::bind(at).await?;
            let bound = listener.local_addr()?;
            let router = metrics::open_router(gateway.metrics.clone());
            tokio::spawn(server::serve(
                listener,
                router,
                ServeSettings::default(),
                shutdown.clone(),
            ));
            Some(bound)
        }
        None => None,
    };
    let server = tokio::spawn(server::serve(listener, app, settings, shutdown.clone()));
    Ok(Running {
        addr,
        upstream: gateway.upstream_label.clone(),
        metrics_addr,
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
/// streams end when `shutdown` cuts them; upstreams whose URL is `mock` are
/// reached at `mock_url`.
pub fn router(
    config: Config,
    mock_url: String,
    shutdown: &Shutdown,
) -> Result<(Router, Arc<Gateway>), Box<dyn std::error::Error + Send + Sync>> {
    let keys = MemoryKeyStore::new();
    for entry in config.keys.iter().cloned() {
        keys.insert(KeyEntry::into_record(entry)?)?;
    }
    let pricing = pricing(&config.models)?;
    let ledger = MemoryLedger::new();
    let error_format: ErrorFormat = config.error_format.parse()?;
    let header_style: HeaderStyle = config.rate_limit_headers.parse()?;
    let metrics = Metrics::new();
    let routes = Arc::new(Routes::build(&config, &mock_url, &metrics)?);
    let metrics_access = Arc::new(MetricsAccess::new(&config)?);
    let access_log_state = Arc::new(AccessLog {
        pricing: pricing.clone(),
        metrics: Arc::new(metrics.requests(&config)),
    });
    let model_list = Arc::new(ModelList::new(
        config.models.iter().map(|m| m.name.as_str()),
    ));
    let upstream_label = match config.upstream_url() {
        Some(url) => crate::config::without_credentials(url),
        None => "mock".to_owned(),
    };
    let idle = Duration::from_secs(config.stream_idle_timeout_secs);
    let rate_limit = routing::shared_limits(
        &config,
        RateLimitLayer::new()
            .headers(header_style)
            .store(Counted::rate_limits(MemoryRateLimitStore::new(), &metrics)),
    );
    let streams = metrics.streams();
    let gateway = Arc::new(Gateway {
        config,
        ledger: ledger.clone(),
        upstream_label,
        metrics: metrics.clone(),
    });
    let cut = shutdown.clone();

    let proxied = proxy::routes().layer(
        ServiceBuilder::new()
            .layer(middleware::from_fn_with_state(routes, routing::select))
            .layer(rate_limit)
            .layer(BudgetLayer::with_ledger(
                pricing,
                Counted::ledger(ledger, &metrics),
            ))
            // Outside the trailer layer, where every stream ends either as
            // its API ends it or with one terminal error event.
            .map_response(move |response| streams.watch(response))
            .layer(StreamErrorTrailerLayer::new().idle_timeout(idle))
            // Inside the trailer layer, so a stream cut at shutdown ends
            // with its terminal error event.
            .map_response(move |response: Response| cut.watch_stream(response)),
    );
    let authed = Router::new()
        .route("/v1/key", get(key_info))
        .with_state(gateway.clone())
        .merge(proxy::model_routes(model_list))
        .merge(proxied)
        .layer(
            ServiceBuilder::new()
                .layer(AuthLayer::new(Counted::keys(keys, &metrics)))
                .layer(middleware::from_fn_with_state(gateway.clone(), check_model)),
        );
    let app = Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .merge(metrics::admin_router(metrics, metrics_access))
        .merge(authed)
        .fallback(|| async { ApiError::not_found().with_message("Unknown path.") })
        .layer(
            ServiceBuilder::new()
                .layer(
                    ErrorEnvelopeLayer::new()
                        .format_fn(move |uri, headers| {
                            proxy::error_format(uri, headers, error_format)
                        })
                        .catch_panic(true),
                )
                .layer(middleware::from_fn_with_state(
                    access_log_state,
                    access_log::access_log,
                ))
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
        let key = req
            .extensions()
            .get::<Principal>()
            .map(|p| p.key_id().to_owned());
        slot.record(key, meta.model.clone());
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

/// `2026-12-06T00:00:00Z` for a time since the Unix epoch.
fn rfc3339(since_epoch: Duration) -> Option<String> {
    let secs = i64::try_from(since_epoch.as_secs()).ok()?;
    jiff::Timestamp::from_second(secs)
        .ok()
        .map(|t| t.to_string())
}
