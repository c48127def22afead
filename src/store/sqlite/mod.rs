//! SQLite-backed stores: keys, budgets and balances that survive a
//! restart, for one gateway instance on one machine (feature `sqlite`).
//!
//! A gateway that keeps its state in memory forgets it at every restart: a
//! deploy refills every prepaid balance, a month's spend starts over at
//! zero, and the keys an admin minted, rotated or revoked at run time are
//! gone (a leaked key works again). [`SqliteStore`] keeps all of it in one
//! file on the gateway's own disk, with nothing else to install or run,
//! while every request is still decided in memory, at memory speed.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tollgate::auth::{AuthLayer, KeyAdmin, KeyHash, KeyRecord, PutMode};
//! use tollgate::budget::{BudgetLayer, BudgetScope, BudgetSpec, Ledger, ModelPrice, Pricing};
//! use tollgate::rate_limit::{Limit, RateLimitLayer};
//! use tollgate::store::sqlite::SqliteStore;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("state.db");
//! // `store = "sqlite:/var/lib/tollgate/state.db"`
//! let store = SqliteStore::open(&path)?;
//! let wallet = BudgetSpec::balance(BudgetScope::Key("alice".into()), "5.00".parse()?);
//! let mut alice = KeyRecord::new("alice", KeyHash::of("sk-alice"));
//! alice.budgets.push(wallet.clone());
//! store.keys().put(alice, PutMode::Create).await?; // on disk when answered
//!
//! let pricing = Pricing::new().with("gpt-4o-mini", ModelPrice::per_million("0.15", "0.60")?);
//! let mut gateway = ServiceBuilder::new()
//!     .layer(AuthLayer::new(store.keys()))
//!     .layer(RateLimitLayer::new().limit(Limit::requests_per_minute(600)).store(store.rate_limits()))
//!     .layer(BudgetLayer::with_ledger(pricing, store.ledger()))
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         let body = r#"{"choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":500}}"#;
//!         let response = Response::builder().header("content-type", "application/json");
//!         Ok::<_, Infallible>(response.body(Full::new(Bytes::from(body))).unwrap())
//!     }));
//! let request = Request::post("/v1/chat/completions")
//!     .header("authorization", "Bearer sk-alice")
//!     .body(Full::new(Bytes::from(r#"{"model":"gpt-4o-mini","max_tokens":100,"messages":[]}"#)))?;
//! let response = gateway.ready().await?.call(request).await?;
//! assert_eq!(response.status(), 200);
//! response.into_body().collect().await?; // settled in memory as the body ends
//!
//! // At shutdown: everything settled is committed before `close` answers.
//! drop(gateway);
//! store.close().await?;
//! drop(store);
//!
//! // The next start finds the balance where it was, not refilled.
//! let store = SqliteStore::open(&path)?;
//! assert_eq!(store.ledger().read(&wallet).await?.remaining().to_string(), "$4.99955");
//! assert!(store.keys().get("alice").await?.is_some());
//! # Ok(())
//! # }
//! ```
//!
//! | store | trait | on disk |
//! |---|---|---|
//! | [`SqliteKeyStore`] | [`KeyStore`](crate::auth::KeyStore), [`KeyAdmin`](crate::auth::KeyAdmin) | every key record (secret hashes only), written before the admin call answers |
//! | [`SqliteLedger`] | [`Ledger`](crate::budget::Ledger) | balances, each budget's spend in its current period, spend aggregates per scope × model × UTC day, top-up idempotency keys |
//! | [`MemoryRateLimitStore`] ([`rate_limits`](SqliteStore::rate_limits)) | [`RateLimitStore`](crate::rate_limit::RateLimitStore) | nothing (see below) |
//!
//! # The durability contract
//!
//! - **A clean shutdown loses nothing.** [`SqliteStore::close`] (or
//!   [`flush`](SqliteStore::flush)) answers once every change made before
//!   it is committed; a gateway calls it after draining its requests on
//!   SIGTERM. Dropping the last handle of a store does the same, blocking
//!   until the last commit is done.
//! - **`kill -9` (or a crash of the process) loses at most the last batch
//!   window**: the settlements of the last
//!   [`batch_window`](SqliteStoreBuilder::batch_window) (10 ms by default)
//!   and of the commit in progress. `tests/sqlite.rs` measures it: a child
//!   process settling without pause over 100 keys is killed with SIGKILL
//!   three times, and the oldest settlement missing from the file had been
//!   made at most 14 ms before the kill (an unoptimised build on a loaded
//!   two-core machine); the test fails above one second. Under a heavier
//!   load the commit itself takes longer: `benches/sqlite.rs` measures how
//!   long a change waits for its commit while one thread settles 150,000
//!   to 220,000 a second over 1,000 keys (25 to 36 ms at the median, about
//!   100 ms at worst, on the same machine; with both cores busy settling,
//!   the writer thread competes for CPU and the worst wait reaches 300 to
//!   600 ms).
//! - **A power loss or a kernel crash loses at most about a second**: the
//!   log is synced to the disk by the first commit after each
//!   [`sync_interval`](SqliteStoreBuilder::sync_interval) (1 s by default),
//!   which makes every commit before it durable too.
//! - **Each settlement is saved whole or not at all**: the books of all its
//!   budgets are read in one step, and its aggregates are committed with
//!   them or after them, never before.
//! - **A restart never refills a balance or resets spend.** A prepaid
//!   balance is written when it is opened (by its first reservation or
//!   top-up) and after every change, and restored at open: a spec whose
//!   opening balance is larger does not change its funds. A budget's spend
//!   is restored into its period; a period that ended while the gateway was
//!   down starts from zero, as it would have.
//! - **Admin writes are on disk when answered**: a key's
//!   [`put`](crate::auth::KeyAdmin::put) and
//!   [`delete`](crate::auth::KeyAdmin::delete), a
//!   [`top_up`](crate::budget::Ledger::top_up) and a
//!   [`reset`](crate::budget::Ledger::reset) answer after their commit.
//!
//! What is not persisted: holds of requests in flight (they die with the
//! process, like the requests; their settlements, if the process lives to
//! make them, are), and rate-limit counters.
//!
//! # When the disk fails
//!
//! Disk full, file system read-only, file deleted or locked by another
//! process: requests are still decided in memory (a failing disk does not
//! become an outage), the writer keeps the changes it could not write
//! (merged: one row per budget and per aggregate, however many
//! settlements) and retries with backoff, at least once a second, logging each
//! failure with `tracing::error!` and the path. [`SqliteStore::health`]
//! says how many commits failed, why, and how much is unsaved: report it
//! as the gateway's readiness. When the disk takes writes again, everything
//! queued is written in one commit. Admin key writes fail with 503
//! `store_unavailable` meanwhile (nothing is changed).
//!
//! A file that cannot be opened at all (a missing directory, a file that is
//! not a database, a schema written by a newer version) is a
//! [`SqliteError`] at [`open`](SqliteStore::open), naming the path.
//!
//! # Why decide in memory and write in batches
//!
//! A durable commit costs a `fsync`: from 50 µs on a fast NVMe disk to
//! several milliseconds on cloud block storage. Waiting for one per request
//! would cap a gateway at a few hundred to a few thousand requests a second
//! and put the disk's worst latency on every response. Deciding in a
//! [`MemoryLedger`] keeps reservations exact and fast (there is one
//! process, so memory *is* the truth), and one writer thread commits
//! everything that changed in the last window in one transaction: one
//! commit for thousands of settlements, at most one `fsync` a second (see
//! below), and the hot path never waits on either. The price is the window: a crash loses its
//! settlements (the money was spent, the books do not show it), which is
//! why the window is milliseconds, and why admin writes wait.
//!
//! The writer records *which* budgets changed and writes their books as
//! they stand at the commit, rather than the state each settlement saw:
//! settlements from many threads reach it in any order, and writing an
//! older state over a newer one would lose spend. Aggregates are deltas
//! (sums commute), added in the same transaction.
//!
//! # Why WAL mode, and a sync once a second
//!
//! In WAL mode a commit appends to the log, and readers (`sqlite3`, a
//! backup) never block the writer. What a commit waits for is
//! `PRAGMA synchronous`: under `FULL` it syncs the log (`fsync`), so the
//! batch survives a power loss; under `NORMAL` it does not (the process
//! can die, the kernel still writes the log out), and a power loss undoes
//! the commits since the last sync. A sync also makes every commit before
//! it durable, so the writer commits under `NORMAL` and syncs the first
//! commit after each [`sync_interval`](SqliteStoreBuilder::sync_interval):
//! a power loss then loses about a second, and the other commits do not
//! wait for the disk. `benches/sqlite.rs` measures both on a loaded
//! two-core VM: the hot path's throughput is the same (it never waits),
//! but a sync per commit makes commits slower and the wait for the disk
//! longer, so what a `kill -9` loses grows with the load (with one thread
//! settling: a median of 57 to 76 ms and a worst of 120 to 150 ms, against
//! 25 to 36 ms and about 100 ms with a sync a second). Set
//! `sync_interval(Duration::ZERO)` for a sync per commit.
//!
//! # Why rate-limit counters are not persisted
//!
//! They describe the last minute, not money: after a restart every limit
//! starts full, which at worst admits one window's worth of extra requests
//! per key, once per restart. Persisting them would put a disk write on
//! every request for no lasting benefit. Use
//! [`rate_limits`](SqliteStore::rate_limits) (a
//! [`MemoryRateLimitStore`]).
//!
//! # Why spend queries are answered from memory
//!
//! The memory ledger keeps the same aggregates, updated in the same step
//! as the books, so a spend report and the budgets never disagree, and a
//! report costs no disk read. At open, the newest aggregate rows are
//! restored, up to the memory ledger's
//! [`max_spend_rows`](crate::store::memory::MemoryLedger::max_spend_rows)
//! (1,000,000 by default); older days stay in the file (table `spend`),
//! for `sqlite3` or a reporting job.
//!
//! # One process per file
//!
//! Only one [`SqliteStore`] (one gateway process) may write a file: two
//! would overwrite each other's books, and the file is not locked against
//! it. Readers may share it (WAL mode): `sqlite3 state.db` for a report,
//! `.backup` or Litestream for a copy. Several gateway instances need a
//! shared store: the Redis stores (feature `redis`).

mod batch;
mod health;
mod keys;
mod ledger;
mod schema;
#[cfg(test)]
mod tests;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use self::health::SqliteHealth;
pub use self::keys::SqliteKeyStore;
pub use self::ledger::SqliteLedger;
use self::writer::{BatchPolicy, Job, Writer};
use crate::store::StoreError;
use crate::store::memory::{MemoryKeyStore, MemoryLedger, MemoryRateLimitStore};

/// One SQLite file holding a gateway's keys and books: the
/// [`SqliteKeyStore`], the [`SqliteLedger`] and the rate-limit store to use
/// with them, sharing one writer thread.
///
/// Cheap to clone; the clones and the stores share the file. The writer
/// stops after [`close`](Self::close), or when the last handle (store,
/// key store or ledger) is dropped, after a last commit.
///
/// A file is open in one store at a time: a second [`open`](Self::open) of
/// it, in this process or another, fails with [`SqliteError::InUse`] until
/// the first store's writer has stopped: an advisory lock on `<file>.lock`,
/// a file left beside it, which the system also releases when the process
/// ends, however it ends. (Two stores would each keep the books in memory
/// and write over each other's; gateway instances that share state share a
/// Redis.)
#[derive(Clone)]
pub struct SqliteStore {
    keys: SqliteKeyStore,
    ledger: SqliteLedger,
    rate_limits: MemoryRateLimitStore,
    writer: Arc<Writer>,
}

impl SqliteStore {
    /// Opens (or creates) the file at `path` with the default settings:
    /// [`builder`](Self::builder)`(path)`[`.open()`](SqliteStoreBuilder::open)
    /// (blocking).
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, SqliteError> {
        SqliteStore::builder(path).open()
    }

    /// Settings for the file at `path`.
    pub fn builder(path: impl AsRef<Path>) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            path: path.as_ref().to_owned(),
            ledger: None,
            policy: BatchPolicy {
                window: SqliteStoreBuilder::DEFAULT_BATCH_WINDOW,
                max_changes: SqliteStoreBuilder::DEFAULT_MAX_BATCH,
                sync_interval: SqliteStoreBuilder::DEFAULT_SYNC_INTERVAL,
            },
        }
    }

    /// The key store (for `AuthLayer` and an admin API).
    pub fn keys(&self) -> SqliteKeyStore {
        self.keys.clone()
    }

    /// The ledger (for `BudgetLayer` and an admin API).
    pub fn ledger(&self) -> SqliteLedger {
        self.ledger.clone()
    }

    /// The rate-limit store to use with this one: in memory, as rate-limit
    /// counters are not worth a disk write (see the module docs).
    pub fn rate_limits(&self) -> MemoryRateLimitStore {
        self.rate_limits.clone()
    }

    /// Waits until every change made before the call is committed. An
    /// error says the disk refused the commit: the changes stay queued and
    /// the writer retries them.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.writer.acked(Job::Flush).await
    }

    /// Commits every change made before the call and stops the writer: call
    /// it at shutdown, once requests are drained. An error says some
    /// changes could not be written (the disk kept failing for three
    /// attempts). Changes made afterwards are decided in memory only, and
    /// counted in [`SqliteHealth::dropped`].
    pub async fn close(&self) -> Result<(), StoreError> {
        self.writer.acked(Job::Close).await
    }

    /// Whether the writer keeps up with the disk: for a readiness check.
    pub fn health(&self) -> SqliteHealth {
        self.writer.health()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.writer.path()
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.writer.path())
            .field("keys", &self.keys.len())
            .field("health", &self.writer.health())
            .finish_non_exhaustive()
    }
}

/// Settings of a [`SqliteStore`], from [`SqliteStore::builder`].
#[derive(Debug)]
pub struct SqliteStoreBuilder {
    path: PathBuf,
    ledger: Option<MemoryLedger>,
    policy: BatchPolicy,
}

impl SqliteStoreBuilder {
    /// Default [`batch_window`](Self::batch_window): 10 ms.
    pub const DEFAULT_BATCH_WINDOW: Duration = Duration::from_millis(10);
    /// Default [`max_batch`](Self::max_batch): 10,000 changes.
    pub const DEFAULT_MAX_BATCH: usize = 10_000;
    /// Default [`sync_interval`](Self::sync_interval): 1 s.
    pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(1);

    /// The memory ledger that decides, configured with its own setters
    /// (clock, lease, bounds); new and empty: the books are restored into
    /// it. Default: [`MemoryLedger::new`].
    pub fn ledger(mut self, ledger: MemoryLedger) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// A batch is committed this long after its first change (default
    /// 10 ms, at most 1 s): what a `kill -9` can lose. Shorter costs more
    /// commits, each a disk sync.
    pub fn batch_window(mut self, window: Duration) -> Self {
        self.policy.window = window.min(Duration::from_secs(1));
        self
    }

    /// A batch is committed as soon as this many changes arrived, even
    /// within its window (default 10,000; at least 1).
    pub fn max_batch(mut self, changes: usize) -> Self {
        self.policy.max_changes = changes.max(1);
        self
    }

    /// How often a commit waits until the disk holds everything committed
    /// so far (an `fsync` of the log), default 1 s: what a power loss or a
    /// kernel crash can lose (a killed process loses only the
    /// [`batch_window`](Self::batch_window)). `Duration::ZERO` syncs every
    /// commit (`PRAGMA synchronous = FULL`).
    pub fn sync_interval(mut self, interval: Duration) -> Self {
        self.policy.sync_interval = interval;
        self
    }

    /// Opens (or creates) the file, migrates its schema, loads every key
    /// and the books into memory, and starts the writer.
    ///
    /// Blocking (it reads the whole file): call it at start-up, or in
    /// `tokio::task::spawn_blocking`.
    pub fn open(self) -> Result<SqliteStore, SqliteError> {
        let path = self.path;
        let lock = lock(&path)?;
        let mut conn = schema::open(&path, self.policy.sync_interval.is_zero())?;
        let keys = MemoryKeyStore::new();
        let loaded = schema::load_keys(&conn, &path, &keys)?;
        let tenants = schema::load_tenants(&conn, &path, &keys)?;
        let ledger = self.ledger.unwrap_or_default();
        let restored = schema::load_ledger(&mut conn, &path, &ledger)?;
        tracing::info!(
            path = %path.display(),
            keys = loaded,
            tenants,
            balances = restored.balances,
            budgets = restored.budgets,
            spend_rows = restored.spend_rows,
            "sqlite store: opened"
        );
        if restored.spend_rows_on_disk_only > 0 {
            tracing::info!(
                path = %path.display(),
                rows = restored.spend_rows_on_disk_only,
                "sqlite store: the oldest spend aggregates stay on disk only (past max_spend_rows)"
            );
        }
        let writer = Writer::start(conn, lock, path, ledger.clone(), keys.clone(), self.policy)?;
        let writer = Arc::new(writer);
        Ok(SqliteStore {
            keys: SqliteKeyStore::new(keys, writer.clone()),
            ledger: SqliteLedger::new(ledger, writer.clone()),
            rate_limits: MemoryRateLimitStore::new(),
            writer,
        })
    }
}

/// Takes the lock of the file at `path`: an exclusive `flock` on
/// `<path>.lock`, held by the writer until it ends (or by the system until
/// the process does, however it ends). Two stores on one file, in one
/// process or two, would each keep the books in memory and write over each
/// other's: the second is refused. A sidecar file, not the database:
/// SQLite locks the database with `fcntl` locks, which some file systems
/// (NFS) implement `flock` with. Where the file system has no locks at all,
/// the store opens with a warning.
fn lock(path: &Path) -> Result<Option<std::fs::File>, SqliteError> {
    use std::fs::TryLockError;
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&name)
        .map_err(|e| SqliteError::open(path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Err(SqliteError::InUse {
            path: path.to_owned(),
        }),
        Err(TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
            tracing::warn!(
                path = %path.display(),
                "sqlite store: the file system has no locks; open each file in one store only"
            );
            Ok(None)
        }
        Err(TryLockError::Error(e)) => Err(SqliteError::open(path, e)),
    }
}

/// A state file that cannot be opened. Each message names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteError {
    /// The file cannot be opened or created, or read: a missing directory,
    /// no permission, a disk error.
    #[error("cannot open the state store {}: {reason}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// SQLite's or the system's message.
        reason: String,
    },
    /// Another store has the file open, in this process or another (see
    /// [`SqliteStore`]): one store per file.
    #[error(
        "the state store {} is in use by another store, in this process or another: open each file once, and share state between gateway instances with Redis",
        path.display()
    )]
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// The file was written by a newer version of tollgate.
    #[error(
        "the state store {} has schema version {found}, and this tollgate reads up to version {supported}: run the newer tollgate, or restore a backup",
        path.display()
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// The newest this version reads.
        supported: i64,
    },
    /// The file is not a database, or holds something this version cannot
    /// read.
    #[error("the state store {} is damaged ({what}): restore a backup, or move it away to start empty", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What could not be read (never a secret).
        what: String,
    },
}

impl SqliteError {
    /// The file.
    pub fn path(&self) -> &Path {
        match self {
            SqliteError::Open { path, .. }
            | SqliteError::InUse { path }
            | SqliteError::NewerSchema { path, .. }
            | SqliteError::Corrupt { path, .. } => path,
        }
    }

    fn open(path: &Path, reason: impl fmt::Display) -> SqliteError {
        SqliteError::Open {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }

    fn corrupt(path: &Path, what: impl Into<String>) -> SqliteError {
        SqliteError::Corrupt {
            path: path.to_owned(),
            what: what.into(),
        }
    }

    /// `error` at `path`: damage for what SQLite reports as such.
    fn sqlite(path: &Path, error: rusqlite::Error) -> SqliteError {
        use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
        match error.sqlite_error_code() {
            Some(NotADatabase) => SqliteError::corrupt(path, "not a SQLite database"),
            Some(DatabaseCorrupt) => SqliteError::corrupt(path, error.to_string()),
            _ => SqliteError::open(path, error),
        }
    }
}
