//! One gateway process: its long-lived stores and the [`App`] its config
//! builds, swapped whole by a reload.
//!
//! ```text
//! Gateway (one per process)
//! ├── stores: Stores        opened once; counters, spend and keys live here
//! ├── current: ArcSwap<App> swapped by a reload (SIGHUP, POST /admin/reload)
//! └── how to read the config again, the shutdown, the mock upstream
//! ```
//!
//! Each request loads the current [`App`] once and runs to its end on it: a
//! reload never changes the config a request (or a stream) started with,
//! and never resets a counter, because counters live in the stores, which
//! every `App` shares.
//!
//! # Config entries are grants
//!
//! At start-up and at every reload the `[[orgs]]`, `[[teams]]`, `[[users]]`
//! and `[[keys]]` of the file (in that order, so a key's first request
//! finds the records it names) are applied to the key store with the
//! library's [`sync_tenants`] and [`sync_keys`]: a record the store does
//! not have is created; one it has gets only what changed in the file since
//! it was last granted, so a key revoked or rotated, or a team disabled,
//! through the admin API stays so across restarts, and no balance is
//! refilled nor spend reset (balances are the ledger's, opened once). A
//! record that was granted from the file and is no longer in it is deleted,
//! so removing an entry and reloading takes its access away; records made
//! through the admin API are never touched. Each change is one audit line
//! (`admin = "config"`), and a key naming a user or team the store has no
//! record of is logged as a warning (it is charged to its own budgets only).
//!
//! # Why a reload swaps a whole `App`
//!
//! Models, prices, limits, the error format and the upstream are read by
//! layers built once per router. Rebuilding the router from the new config
//! and swapping it in one atomic store means a request sees either the old
//! config or the new one, never a mix, and costs each request one atomic
//! load. Only what a running server cannot change in place needs a restart
//! (the listen address, the store, the connection limits); a reload says
//! which of those the new file changes.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use axum::extract::Request;
use axum::response::Response;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc, oneshot};
use tollgate::auth::{Synced, TenantAdmin, TenantKind, sync_keys, sync_tenants};
use tollgate::store::StoreError;
use tower::Service;

use crate::app::App;
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::mock;
use crate::routing;
use crate::server::{self, ServeSettings};
use crate::shutdown::Shutdown;
use crate::stack::AppFuture;
use crate::stores::Stores;

/// Reads the configuration again (the file, then the command line's
/// options), for a reload.
pub type LoadConfig = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// A gateway process's state.
pub struct Gateway {
    stores: Stores,
    /// The process's metrics: like the stores, they outlive every app.
    metrics: Metrics,
    current: ArcSwap<App>,
    load: LoadConfig,
    shutdown: Shutdown,
    reloads: Reloads,
    /// The base URL of the built-in mock upstream, once started.
    mock: Mutex<Option<String>>,
    /// Reloads run one at a time.
    reloading: Mutex<()>,
}

/// Why a reload was refused; the running config stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file cannot be read, parsed or validated (field and line in the
    /// message, never a secret).
    #[error("{0}")]
    Config(String),
    /// The key store could not take the file's keys; the ones before the
    /// failure were applied.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The mock upstream could not start.
    #[error("the mock upstream could not start: {0}")]
    Io(#[from] std::io::Error),
    /// The process is shutting down and serves no more reloads.
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

/// What a reload did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Reloaded {
    /// What the file's `[[keys]]` grants did.
    pub keys: Synced,
    /// What its `[[users]]` did.
    pub users: Synced,
    /// What its `[[teams]]` did.
    pub teams: Synced,
    /// What its `[[orgs]]` did.
    pub orgs: Synced,
    /// Fields the new file changes that only a restart applies.
    pub restart_required: Vec<&'static str>,
}

impl Gateway {
    /// Builds the first [`App`] from `config` on `stores` and applies its
    /// keys. `load` reads the config again for a reload.
    pub async fn new(
        config: Config,
        stores: Stores,
        metrics: Metrics,
        load: LoadConfig,
        shutdown: Shutdown,
    ) -> Result<(Arc<Gateway>, ReloadRequests), ReloadError> {
        let (reloads, requests) = reload_channel();
        let mock = Mutex::new(None);
        let mock_url = mock_url(&config, &mock).await?;
        let app = App::build(
            config,
            &stores,
            &metrics,
            &mock_url,
            &shutdown,
            reloads.clone(),
        )
        .map_err(|e| ReloadError::Config(e.to_string()))?;
        apply_grants(&app.config, &*stores.keys).await?;
        let gateway = Arc::new(Gateway {
            stores,
            metrics,
            current: ArcSwap::from_pointee(app),
            load,
            shutdown,
            reloads,
            mock,
            reloading: Mutex::new(()),
        });
        Ok((gateway, requests))
    }

    /// The app requests run on now.
    pub fn app(&self) -> Arc<App> {
        self.current.load_full()
    }

    /// Reads the config again and swaps in the app it builds: models,
    /// prices, keys, limits, the upstream and the error format change,
    /// counters and spend stay. A config that does not parse or validate is
    /// refused and the running one stays.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let config = (self.load)().map_err(|e| ReloadError::Config(e.to_string()))?;
        let restart_required = restart_only_changes(&self.app().config, &config);
        let mock_url = mock_url(&config, &self.mock).await?;
        let app = App::build(
            config,
            &self.stores,
            &self.metrics,
            &mock_url,
            &self.shutdown,
            self.reloads.clone(),
        )
        .map_err(|e| ReloadError::Config(e.to_string()))?;
        let mut reloaded = apply_grants(&app.config, &*self.stores.keys).await?;
        self.current.store(Arc::new(app));
        reloaded.restart_required = restart_required;
        Ok(reloaded)
    }

    /// Writes out what the state store still holds in memory. Called once at
    /// the end of a shutdown, after every connection has closed and so every
    /// reservation has been settled or released (see [`Stores::flush`]).
    pub async fn flush_store(&self) -> Result<(), StoreError> {
        self.stores.flush().await
    }

    /// The service every connection calls: each request on the app current
    /// when it arrives. Served as it is, not as an axum `Router`'s fallback:
    /// a router around it would cost each request a route lookup, a boxed
    /// service clone and a boxed future.
    pub fn service(self: &Arc<Gateway>) -> Current {
        Current(self.clone())
    }
}

/// The built-in mock's base URL, for the upstreams of `config` whose URL
/// is `mock` (empty when none is): started the first time a config asks
/// for it and kept after (streams in flight keep their upstream until the
/// process ends).
async fn mock_url(config: &Config, mock: &Mutex<Option<String>>) -> std::io::Result<String> {
    if !routing::needs_mock(config) {
        return Ok(String::new());
    }
    let mut mock = mock.lock().await;
    if let Some(url) = &*mock {
        return Ok(url.clone());
    }
    let models = config.models.iter().map(|m| m.name.clone()).collect();
    let listener = TcpListener::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    // Served like the gateway (TCP_NODELAY), and never shut down.
    let router = mock::Mock::new(models).router();
    tokio::spawn(server::serve(
        listener,
        router,
        ServeSettings::default(),
        Shutdown::new(),
    ));
    let url = format!("http://{addr}/v1");
    *mock = Some(url.clone());
    Ok(url)
}

/// The fields of `new` that differ from `old` and that a reload cannot
/// apply: the listener, the store and the connection limits are set up once.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut fields = Vec::new();
    let mut differs = |field, changed: bool| {
        if changed {
            fields.push(field);
        }
    };
    differs("listen", old.listen != new.listen);
    differs("store", old.store != new.store);
    differs("store_ca_file", old.store_ca_file != new.store_ca_file);
    differs(
        "store_timeout_ms",
        old.store_timeout_ms != new.store_timeout_ms,
    );
    differs(
        "client_header_timeout_secs",
        old.client_header_timeout_secs != new.client_header_timeout_secs,
    );
    differs(
        "client_body_timeout_secs",
        old.client_body_timeout_secs != new.client_body_timeout_secs,
    );
    differs(
        "client_idle_timeout_secs",
        old.client_idle_timeout_secs != new.client_idle_timeout_secs,
    );
    differs(
        "max_connections",
        old.max_connections != new.max_connections,
    );
    differs("metrics_listen", old.metrics_listen != new.metrics_listen);
    differs(
        "shutdown_grace_secs",
        old.shutdown_grace_secs != new.shutdown_grace_secs,
    );
    fields
}

/// Applies `config`'s tenants (orgs, teams, users) and keys to `store` as
/// grants (see the module docs), logs what each table did, and warns of
/// each key naming a user or team the store has no record of. A store
/// failure stops it (what came before was applied); one entry that cannot
/// be stored is logged and skipped: one entry's state never stops a start.
pub async fn apply_grants(
    config: &Config,
    store: &dyn TenantAdmin,
) -> Result<Reloaded, StoreError> {
    let mut applied = Reloaded::default();
    for (kind, entries) in config.tenant_tables() {
        let synced = sync_tenants(store, kind, entries).await?;
        log_synced(crate::config::table_of(kind), &synced);
        *match kind {
            TenantKind::User => &mut applied.users,
            TenantKind::Team => &mut applied.teams,
            TenantKind::Org => &mut applied.orgs,
        } = synced;
    }
    applied.keys = sync_keys(store, &config.keys).await?;
    log_synced("keys", &applied.keys);
    for key in &config.keys {
        for (kind, name) in [(TenantKind::User, &key.user), (TenantKind::Team, &key.team)] {
            let Some(name) = name else { continue };
            if store.get_tenant(&kind.scope(name.clone())).await?.is_none() {
                tracing::warn!(
                    key = %key.id,
                    %kind,
                    tenant = %name,
                    "the key names a {kind} with no record (neither in the config nor made \
                     through the admin API): only the key's own limits and budgets apply"
                );
            }
        }
    }
    Ok(applied)
}

fn log_synced(table: &str, synced: &Synced) {
    tracing::info!(
        created = synced.created,
        updated = synced.updated,
        unchanged = synced.unchanged,
        deleted = synced.deleted,
        skipped = synced.skipped,
        "[[{table}]] from the config applied"
    );
}

/// A way to ask for reloads, and its receiving end.
pub fn reload_channel() -> (Reloads, ReloadRequests) {
    let (sender, requests) = mpsc::channel(8);
    (Reloads(sender), ReloadRequests(requests))
}

/// What a reload asked through [`Reloads`] answers.
type ReloadAnswer = oneshot::Sender<Result<Reloaded, ReloadError>>;

/// Asks the process for a reload (the admin API's `POST /admin/reload`),
/// served by the task that also serves SIGHUP, so reloads never overlap.
#[derive(Clone)]
pub struct Reloads(mpsc::Sender<ReloadAnswer>);

impl Reloads {
    /// Reloads and answers what happened.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let (answer, answered) = oneshot::channel();
        self.0
            .send(answer)
            .await
            .map_err(|_| ReloadError::ShuttingDown)?;
        answered.await.map_err(|_| ReloadError::ShuttingDown)?
    }
}

/// The receiving end of [`Reloads`]: `main` serves it.
pub struct ReloadRequests(mpsc::Receiver<ReloadAnswer>);

impl ReloadRequests {
    /// The next request; send it the reload's outcome.
    pub async fn next(&mut self) -> Option<ReloadAnswer> {
        self.0.recv().await
    }
}

/// Runs each request on the app current when it arrives.
#[derive(Clone)]
pub struct Current(Arc<Gateway>);

impl Service<Request> for Current {
    type Response = Response;
    type Error = Infallible;
    type Future = AppFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The request's future owns a clone of the app's stack (and so
        // everything its layers hold) as long as the request and its body
        // live, whatever is swapped in meanwhile.
        self.0.current.load().service.call(req)
    }
}
