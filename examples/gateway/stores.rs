//! Where the gateway keeps its state: keys, spend, balances and rate-limit
//! counters, chosen by `store = "…"` and opened once per process.
//!
//! | `store` | keys and ledger | rate-limit counters | for |
//! |---|---|---|---|
//! | `memory` (default) | in this process | in this process | demos, tests |
//! | `sqlite:PATH` | one SQLite file (feature `sqlite`) | in this process | one machine, durable |
//! | `redis://HOST:PORT/DB`, `rediss://…` | Redis (feature `redis`; `redis-tls` for `rediss://`) | Redis | many instances, exact |
//!
//! A `rediss://` store verifies Redis's certificate against the system's
//! roots, or against `store_ca_file` (PEM) instead.
//!
//! The stores outlive every reload: an [`App`](crate::app::App) built from a
//! new config gets clones of the same handles, so no counter, spend or key
//! is reset by a reload. At shutdown, after the last connection closed,
//! [`Stores::flush`] writes out what is still on its way.
//!
//! # Why rate-limit counters stay in memory with SQLite
//!
//! They describe the last minute, not money: a restart starts every window
//! full, which costs at most one window of extra requests per key, once per
//! restart; a disk write per request would cost far more.
//!
//! # Why the ledger is watched with Redis
//!
//! `BudgetLayer` settles a request when its body ends, from a `Drop`, and a
//! remote ledger's settlement then runs as a task of its own. A process that
//! exits right after its last response would drop those tasks, and their
//! spend with them. [`Pending`] counts the settlements still on their way,
//! and [`Stores::flush`] waits for them (bounded) before the process exits.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
#[cfg(feature = "redis")]
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[cfg(feature = "redis")]
use tokio::sync::Notify;
use tollgate::auth::TenantAdmin;
use tollgate::budget::Ledger;
#[cfg(feature = "redis")]
use tollgate::budget::{
    BudgetSpec, BudgetStatus, Charge, Money, Reservation, ReserveOutcome, ReservePolicy,
    Settlement, SpendQuery, SpendRow, TopUpOutcome,
};
use tollgate::rate_limit::RateLimitStore;
use tollgate::store::StoreError;
#[cfg(feature = "redis")]
use tollgate::store::StoreFuture;
use tollgate::store::memory::{MemoryKeyStore, MemoryLedger, MemoryRateLimitStore};

use crate::config::StoreChoice;

/// How long a shutdown waits for settlements still on their way to Redis.
#[cfg(feature = "redis")]
const FLUSH_LIMIT: Duration = Duration::from_secs(10);

/// The gateway's stores, shared by every [`App`](crate::app::App) a config
/// builds. Cheap to clone.
#[derive(Clone)]
pub struct Stores {
    /// Keys and their users, teams and orgs: the lookups of every request,
    /// and the admin API's changes.
    pub keys: Arc<dyn TenantAdmin>,
    /// Budgets, balances and spend aggregates.
    pub ledger: Arc<dyn Ledger>,
    /// Rate-limit counters and concurrency slots.
    pub rate_limits: Arc<dyn RateLimitStore>,
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Memory,
    #[cfg(feature = "sqlite")]
    Sqlite(tollgate::store::sqlite::SqliteStore),
    #[cfg(feature = "redis")]
    Redis {
        connection: tollgate::store::redis::RedisConnection,
        pending: Pending,
    },
}

impl fmt::Debug for Stores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stores")
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

/// Why the stores could not be opened (the gateway does not start: exit 1).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store needs a cargo feature this binary was built without.
    #[error(
        "store {store}: this gateway was built without the `{feature}` feature \
         (cargo run --features {feature} --example gateway)"
    )]
    Unsupported {
        /// The store, without credentials.
        store: String,
        /// The missing feature.
        feature: &'static str,
    },
    /// The store could not be reached or opened; the message never holds a
    /// password.
    #[error("store {store}: {message}")]
    Failed {
        /// The store, without credentials.
        store: String,
        /// Why.
        message: String,
    },
}

impl Stores {
    /// Opens the store `choice` names: connects to Redis (and checks that it
    /// persists its data), or opens (creates) the SQLite file and loads it.
    /// `timeout` bounds each call to a remote store; `ca_file` (PEM) is
    /// what a `rediss://` store's certificate must chain to.
    pub async fn open(
        choice: &StoreChoice,
        timeout: Duration,
        ca_file: Option<&Path>,
    ) -> Result<Stores, OpenError> {
        let label = choice.to_string();
        match choice {
            StoreChoice::Redis(url) => open_redis(url, label, timeout, ca_file).await,
            _ if ca_file.is_some() => Err(OpenError::Failed {
                store: label,
                message: "store_ca_file is for a rediss:// store".into(),
            }),
            StoreChoice::Memory => Ok(Stores::memory()),
            StoreChoice::Sqlite(path) => open_sqlite(path, label).await,
        }
    }

    /// Stores in this process only.
    pub fn memory() -> Stores {
        Stores {
            keys: Arc::new(MemoryKeyStore::new()),
            ledger: Arc::new(MemoryLedger::new()),
            rate_limits: Arc::new(MemoryRateLimitStore::new()),
            backend: Backend::Memory,
        }
    }

    /// `memory`, `sqlite` or `redis`, for logs and `/health`.
    pub fn kind(&self) -> &'static str {
        match &self.backend {
            Backend::Memory => "memory",
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(_) => "sqlite",
            #[cfg(feature = "redis")]
            Backend::Redis { .. } => "redis",
        }
    }

    /// Whether the store can take writes now, and why not: Redis connected,
    /// the SQLite file committing.
    pub fn health(&self) -> Result<(), String> {
        match &self.backend {
            Backend::Memory => Ok(()),
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(store) => {
                let health = store.health();
                if health.is_healthy() {
                    Ok(())
                } else {
                    Err(health
                        .last_error
                        .unwrap_or_else(|| "the SQLite store stopped writing".to_owned()))
                }
            }
            #[cfg(feature = "redis")]
            Backend::Redis { connection, .. } => {
                if connection.is_connected() {
                    Ok(())
                } else {
                    Err("not connected to Redis".into())
                }
            }
        }
    }

    /// The store that admits a request's rate limits and budgets in one
    /// call where the backend has one (Redis: one script instead of two,
    /// one after the other); `None` where asking `rate_limits` and
    /// `ledger` in turn costs no round trip (memory, SQLite).
    pub fn admission(&self) -> Option<Arc<dyn tollgate::admission::AdmissionStore>> {
        match &self.backend {
            #[cfg(feature = "redis")]
            Backend::Redis { connection, .. } => {
                use tollgate::store::redis::{
                    RedisAdmissionStore, RedisLedger, RedisRateLimitStore,
                };
                Some(Arc::new(RedisAdmissionStore::new(
                    RedisRateLimitStore::new(connection.clone()),
                    RedisLedger::new(connection.clone()),
                )))
            }
            _ => None,
        }
    }

    /// Writes out what is not yet stored: the SQLite file's pending
    /// settlements are committed and its writer stopped; settlements on their way to Redis are
    /// waited for (at most 10 s). Called once, after the last connection
    /// closed, so every request has been settled or released.
    pub async fn flush(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory => Ok(()),
            // The last commit, then the writer stops: nothing comes after.
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(store) => store.close().await,
            #[cfg(feature = "redis")]
            Backend::Redis {
                pending,
                connection,
            } => {
                let left = pending.wait_idle(FLUSH_LIMIT).await;
                // The rate limits' settlements, queued on the connection.
                let _ = tokio::time::timeout(FLUSH_LIMIT, connection.flush()).await;
                if left == 0 {
                    Ok(())
                } else {
                    Err(StoreError::Unavailable(format!(
                        "{left} settlements still on their way to Redis after {FLUSH_LIMIT:?}"
                    )))
                }
            }
        }
    }
}

/// Whether this binary can open `choice` (it was built with the store's
/// feature), without opening it: for `--check`.
pub fn supported(choice: &StoreChoice) -> Result<(), OpenError> {
    let missing = match choice {
        StoreChoice::Memory => None,
        StoreChoice::Sqlite(_) => (!cfg!(feature = "sqlite")).then_some("sqlite"),
        StoreChoice::Redis(url) if url.starts_with("rediss://") => {
            (!cfg!(feature = "redis-tls")).then_some("redis-tls")
        }
        StoreChoice::Redis(_) => (!cfg!(feature = "redis")).then_some("redis"),
    };
    match missing {
        None => Ok(()),
        Some(feature) => Err(OpenError::Unsupported {
            store: choice.to_string(),
            feature,
        }),
    }
}

#[cfg(not(feature = "sqlite"))]
async fn open_sqlite(_: &std::path::Path, label: String) -> Result<Stores, OpenError> {
    Err(OpenError::Unsupported {
        store: label,
        feature: "sqlite",
    })
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(path: &std::path::Path, label: String) -> Result<Stores, OpenError> {
    use tollgate::store::sqlite::SqliteStore;
    let path = path.to_owned();
    // Blocking: it reads the whole file into memory.
    let opened = tokio::task::spawn_blocking(move || SqliteStore::open(path))
        .await
        .map_err(|e| OpenError::Failed {
            store: label.clone(),
            message: e.to_string(),
        })?;
    let store = opened.map_err(|e| OpenError::Failed {
        store: label,
        message: e.to_string(),
    })?;
    Ok(Stores {
        keys: Arc::new(store.keys()),
        ledger: Arc::new(store.ledger()),
        rate_limits: Arc::new(store.rate_limits()),
        backend: Backend::Sqlite(store),
    })
}

#[cfg(not(feature = "redis"))]
async fn open_redis(
    url: &str,
    label: String,
    _: Duration,
    _: Option<&Path>,
) -> Result<Stores, OpenError> {
    supported(&StoreChoice::Redis(url.to_owned()))?;
    Err(OpenError::Unsupported {
        store: label,
        feature: "redis",
    })
}

#[cfg(feature = "redis")]
async fn open_redis(
    url: &str,
    label: String,
    timeout: Duration,
    ca_file: Option<&Path>,
) -> Result<Stores, OpenError> {
    use tollgate::store::redis::{
        Persistence, RedisConfig, RedisConnection, RedisKeyStore, RedisLedger, RedisRateLimitStore,
    };
    supported(&StoreChoice::Redis(url.to_owned()))?;
    let failed = |message: String| OpenError::Failed {
        store: label.clone(),
        message,
    };
    let config = RedisConfig::from_url(url)
        .map_err(|e| failed(e.to_string()))?
        .call_timeout(timeout);
    let config = match ca_file {
        None => config,
        Some(path) => with_ca_file(config, path).map_err(failed)?,
    };
    let connection = RedisConnection::connect(config)
        .await
        .map_err(|e| failed(e.to_string()))?;
    match Persistence::check(&connection).await {
        Ok(persistence) => match persistence.warning() {
            Some(warning) => tracing::warn!(store = %label, "{warning}"),
            None => tracing::info!(
                store = %label,
                aof = ?persistence.aof,
                rdb = ?persistence.rdb,
                "Redis persists its data"
            ),
        },
        Err(error) => return Err(failed(error.to_string())),
    }
    let keys = RedisKeyStore::new(connection.clone());
    // Records an earlier version wrote move to the current layout (one
    // `SCAN` when there are none).
    let moved = keys
        .migrate_legacy_layout()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if moved > 0 {
        tracing::info!(store = %label, moved, "key records moved to the current layout");
    }
    let pending = Pending::default();
    Ok(Stores {
        keys: Arc::new(keys),
        ledger: Arc::new(Watched {
            ledger: RedisLedger::new(connection.clone()),
            pending: pending.clone(),
        }),
        rate_limits: Arc::new(RedisRateLimitStore::new(connection.clone())),
        backend: Backend::Redis {
            connection,
            pending,
        },
    })
}

/// `config` trusting the PEM CA certificates in `path`; the error names
/// the field and the file.
#[cfg(feature = "redis-tls")]
fn with_ca_file(
    config: tollgate::store::redis::RedisConfig,
    path: &Path,
) -> Result<tollgate::store::redis::RedisConfig, String> {
    let at = || format!("store_ca_file {}", path.display());
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", at()))?;
    config.tls_ca_pem(pem).map_err(|e| format!("{}: {e}", at()))
}

#[cfg(all(feature = "redis", not(feature = "redis-tls")))]
fn with_ca_file(
    _: tollgate::store::redis::RedisConfig,
    _: &Path,
) -> Result<tollgate::store::redis::RedisConfig, String> {
    Err("store_ca_file is for a rediss:// store, which needs the `redis-tls` feature".into())
}

#[cfg(feature = "redis")]
/// Ledger calls that have not answered yet (settlements running as tasks of
/// their own, see the module docs).
#[derive(Clone, Default)]
struct Pending(Arc<PendingCount>);

#[cfg(feature = "redis")]
#[derive(Default)]
struct PendingCount {
    count: AtomicUsize,
    idle: Notify,
}

#[cfg(feature = "redis")]
/// One ledger call on its way; counted until dropped.
struct InFlight(Arc<PendingCount>);

#[cfg(feature = "redis")]
impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(feature = "redis")]
impl Pending {
    /// `answer`, counted while it is pending. Ready answers (no task, no
    /// count) pass through untouched.
    fn watch<T: Send + 'static>(&self, answer: StoreFuture<T>) -> StoreFuture<T> {
        if answer.is_ready() {
            return answer;
        }
        self.0.count.fetch_add(1, Ordering::AcqRel);
        let in_flight = InFlight(self.0.clone());
        StoreFuture::pending(async move {
            let result = answer.await;
            drop(in_flight);
            result
        })
    }

    /// Waits until no call is pending, or `limit` passes; how many are left.
    async fn wait_idle(&self, limit: Duration) -> usize {
        let wait = async {
            loop {
                let idle = self.0.idle.notified();
                if self.0.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
        self.0.count.load(Ordering::Acquire)
    }
}

#[cfg(feature = "redis")]
/// A ledger whose settlements and releases are counted while pending.
struct Watched<L> {
    ledger: L,
    pending: Pending,
}

#[cfg(feature = "redis")]
impl<L: Ledger> Ledger for Watched<L> {
    fn reserve(
        &self,
        budgets: &Arc<[BudgetSpec]>,
        amount: Money,
        policy: ReservePolicy,
    ) -> StoreFuture<ReserveOutcome> {
        self.ledger.reserve(budgets, amount, policy)
    }

    fn settle(&self, reservation: &Reservation, charge: &Charge) -> StoreFuture<Settlement> {
        self.pending.watch(self.ledger.settle(reservation, charge))
    }

    fn release(&self, reservation: &Reservation) -> StoreFuture<()> {
        self.pending.watch(self.ledger.release(reservation))
    }

    fn top_up(
        &self,
        budget: &BudgetSpec,
        amount: Money,
        idempotency_key: Option<&str>,
    ) -> StoreFuture<TopUpOutcome> {
        self.ledger.top_up(budget, amount, idempotency_key)
    }

    fn read(&self, budget: &BudgetSpec) -> StoreFuture<BudgetStatus> {
        self.ledger.read(budget)
    }

    fn reset(&self, budget: &BudgetSpec) -> StoreFuture<BudgetStatus> {
        self.ledger.reset(budget)
    }

    fn spend(&self, query: &SpendQuery) -> StoreFuture<Vec<SpendRow>> {
        self.ledger.spend(query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn pending_calls_are_counted_until_they_answer() {
        let pending = Pending::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let answer = pending.watch(StoreFuture::pending(async move {
            let _ = rx.await;
            Ok(())
        }));
        let task = tokio::spawn(answer);
        assert_eq!(pending.wait_idle(Duration::from_millis(20)).await, 1);
        let _ = tx.send(());
        assert_eq!(pending.wait_idle(Duration::from_secs(5)).await, 0);
        assert!(task.await.unwrap().is_ok());
        // Ready answers are not counted.
        let ready = pending.watch(StoreFuture::ready(Ok(1)));
        assert!(ready.is_ready());
        assert_eq!(pending.wait_idle(Duration::ZERO).await, 0);
    }
}
