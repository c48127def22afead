//! The gateway: all six tollgate layers around the proxied endpoints.
//!
//! Server stack, outermost first (`stack.rs` composes it and says why):
//! `ErrorEnvelope → access log → body timeout (408) → Auth → model check →
//! stream meter → detach (the call outlives its client for
//! `drain_timeout_secs`) → routing → RateLimit → Budget → StreamErrorTrailer →
//! shutdown cut → proxy` (`proxy/`), and towards each model's upstream
//! `timeout → Retry → attempt meter → hyper-util Client` (`routing.rs`).
//! The admin API (`/admin/*`, see `admin/`), `/metrics` and `/health` sit
//! beside the endpoints, behind the same envelope and access log, with
//! their own authentication.
//!
//! An [`App`] is what one config builds on the long-lived stores
//! (`gateway.rs` swaps it on reload); served by `server.rs` (connections,
//! client timeouts, shutdown drain). [`start`] puts it together and
//! [`Running::shutdown`] stops it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tollgate::budget::{BudgetScope, BudgetSpec, Ledger, ModelPrice, Pricing, TokenPrice};
use tollgate::{ApiError, Principal};

use crate::admin;
use crate::config::{Config, ModelConfig, StoreChoice};
use crate::gateway::{Gateway, LoadConfig, ReloadRequests, Reloads};
use crate::metrics::{self, Metrics};
use crate::server::{self, ServeSettings};
use crate::shutdown::Shutdown;
use crate::stack::AppService;
use crate::stores::Stores;

/// What one config builds: the service with every layer (see `stack.rs`),
/// on the stores every app of the process shares. Immutable; a reload
/// builds another.
pub struct App {
    /// The config it was built from.
    pub config: Arc<Config>,
    /// Every endpoint, every layer.
    pub service: AppService,
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
    /// Where `/metrics` is served without a key (`metrics_listen`).
    pub metrics_addr: Option<SocketAddr>,
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
    let (reloads, _) = crate::gateway::reload_channel();
    App::build(
        config.clone(),
        &Stores::memory(),
        &Metrics::new(),
        "http://127.0.0.1:9/v1",
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
    let stores = Stores::open(
        &choice,
        Duration::from_millis(config.store_timeout_ms),
        config.store_ca_file.as_deref(),
    )
    .await
    .map_err(|e| StartError::Store(e.to_string()))?;
    tracing::info!(store = %choice, "state store open");
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let settings = serve_settings(&config);
    let metrics_listen = config.metrics_listen;
    let shutdown = Shutdown::new();
    let metrics = Metrics::new();
    let (gateway, reloads) = Gateway::new(config, stores, metrics.clone(), load, shutdown.clone())
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
    let metrics_addr = match metrics_listen {
        Some(at) => {
            let listener = TcpListener::bind(at).await?;
            let bound = listener.local_addr()?;
            tokio::spawn(server::serve(
                listener,
                metrics::open_router(metrics),
                ServeSettings::default(),
                shutdown.clone(),
            ));
            Some(bound)
        }
        None => None,
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
        metrics_addr,
        gateway,
        shutdown,
        server,
    };
    Ok((running, reloads))
}

/// The prices of `models`.
pub fn pricing(models: &[ModelConfig]) -> Result<Pricing, String> {
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
    /// Builds the app of `config` on `stores` and `metrics` (both outlive
    /// it); upstreams whose URL is `mock` are reached at `mock_url`. Its
    /// streams end when `shutdown` cuts them; its admin API asks `reloads`
    /// for a reload.
    pub fn build(
        config: Config,
        stores: &Stores,
        metrics: &Metrics,
        mock_url: &str,
        shutdown: &Shutdown,
        reloads: Reloads,
    ) -> Result<App, Box<dyn std::error::Error + Send + Sync>> {
        let config = Arc::new(config);
        let service = if config.proxy_only {
            crate::proxy_only::service(&config, mock_url, metrics)?
        } else {
            crate::stack::build(&config, stores, metrics, mock_url, shutdown, reloads)?
        };
        Ok(App { config, service })
    }
}

/// `GET /health`: 200 while the store takes writes, else 503 with why.
pub async fn health(State(stores): State<Stores>) -> Response {
    let store = stores.kind();
    match stores.health() {
        Ok(()) => axum::Json(json!({"status": "ok", "store": store})).into_response(),
        Err(error) => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "unavailable", "store": store, "error": error})),
        )
            .into_response(),
    }
}

/// `GET /v1/key`: the calling key's id, expiry, limits and, read from the
/// ledger, what each of its budgets and balances has left and when it
/// resets, without spending a request; then the same for each scope it
/// shares (`user`, `team`, `org`: `null` when it names none). A scope named
/// but without a record shows no limits or budgets: none apply.
pub async fn key_info(ledger: Arc<dyn Ledger>, principal: Option<Principal>) -> Response {
    let Some(principal) = principal else {
        return ApiError::authentication().into_response();
    };
    let record = principal.record();
    let budgets_of = |scope: &BudgetScope| -> Vec<BudgetSpec> {
        let budgets = principal.budgets().iter();
        budgets.filter(|b| b.scope == *scope).cloned().collect()
    };
    let scope_json = |scope: BudgetScope| {
        let ledger = ledger.clone();
        let budgets = budgets_of(&scope);
        let limits = principal
            .scope_limits()
            .iter()
            .find(|s| s.scope == scope.kind_name() && s.id == scope.name())
            .cloned();
        async move {
            let (rate_limits, max_concurrent) = match &limits {
                Some(l) => (
                    l.limits.iter().map(admin::limit_json).collect(),
                    l.max_concurrent,
                ),
                None => (Vec::new(), None),
            };
            Ok::<_, ApiError>(json!({
                "id": scope.name(),
                "rate_limits": rate_limits,
                "max_concurrent": max_concurrent,
                "budgets": admin::budgets_json(&*ledger, &budgets).await?,
            }))
        }
    };
    let own = budgets_of(&BudgetScope::Key(record.id.clone()));
    let answer = async {
        let mut shown = json!({
            "id": record.id,
            "name": record.name,
            "expires_at": record.expires_at.and_then(admin::rfc3339),
            "models": record.allowed_models,
            "rate_limits": record.rate_limits.iter().map(admin::limit_json).collect::<Vec<_>>(),
            "max_concurrent": record.max_concurrent,
            "budgets": admin::budgets_json(&*ledger, &own).await?,
        });
        for (field, scope) in [
            (
                "user",
                principal.user().map(|u| BudgetScope::User(u.to_owned())),
            ),
            (
                "team",
                principal.team().map(|t| BudgetScope::Team(t.to_owned())),
            ),
            (
                "org",
                principal.org().map(|o| BudgetScope::Org(o.to_owned())),
            ),
        ] {
            shown[field] = match scope {
                Some(scope) => scope_json(scope).await?,
                None => Value::Null,
            };
        }
        Ok::<_, ApiError>(shown)
    };
    match answer.await {
        Ok(shown) => axum::Json(shown).into_response(),
        Err(error) => error.into_response(),
    }
}
