//! [`SqliteHealth`]: whether what the gateway decides reaches the disk.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The writer's state, for a health endpoint or a metric.
///
/// While the disk fails (full, read-only, the file deleted or replaced,
/// locked by another process for over a second), the gateway keeps
/// deciding in memory and the writer retries, at least every second,
/// logging each failure with
/// `tracing::error!`: `consecutive_failures` grows, `last_error` says why,
/// and `unsaved` is what a crash would lose now. A gateway reports
/// [`is_healthy`](SqliteHealth::is_healthy) as its readiness, so an
/// orchestrator or an operator learns of the failure.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let store = tollgate::store::sqlite::SqliteStore::open(dir.path().join("state.db"))?;
/// let health = store.health();
/// assert!(health.is_healthy());
/// assert_eq!((health.failed_commits, health.unsaved), (0, 0));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteHealth {
    /// Batches committed since the store was opened.
    pub commits: u64,
    /// Commits that failed since the store was opened (each one retried).
    pub failed_commits: u64,
    /// Commits that failed since the last one that succeeded: zero while
    /// the disk takes every write.
    pub consecutive_failures: u64,
    /// Changes waiting in the writer for a commit (books of a budget,
    /// aggregate rows, top-up keys; changes to one budget count once):
    /// what a crash would lose now. Measured when the writer last tried.
    pub unsaved: u64,
    /// Changes made after the writer stopped
    /// ([`close`](super::SqliteStore::close)): decided in memory and never
    /// written.
    pub dropped: u64,
    /// Why the last commit failed (the path and SQLite's message), until
    /// one succeeds.
    pub last_error: Option<String>,
    /// When the last commit succeeded.
    pub last_commit: Option<SystemTime>,
    /// The writer has stopped: the store was closed.
    pub closed: bool,
}

impl SqliteHealth {
    /// The writer runs and its last commit succeeded.
    pub fn is_healthy(&self) -> bool {
        self.consecutive_failures == 0 && !self.closed
    }
}

/// The counters behind [`SqliteHealth`], written by the writer thread.
#[derive(Default)]
pub(super) struct HealthState {
    commits: AtomicU64,
    failed_commits: AtomicU64,
    consecutive_failures: AtomicU64,
    unsaved: AtomicU64,
    dropped: AtomicU64,
    /// Nanoseconds since the epoch; 0 before the first commit.
    last_commit: AtomicU64,
    closed: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl HealthState {
    pub(super) fn snapshot(&self) -> SqliteHealth {
        let last_commit = self.last_commit.load(Ordering::Relaxed);
        SqliteHealth {
            commits: self.commits.load(Ordering::Relaxed),
            failed_commits: self.failed_commits.load(Ordering::Relaxed),
            consecutive_failures: self.consecutive_failures.load(Ordering::Relaxed),
            unsaved: self.unsaved.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            last_commit: (last_commit > 0).then(|| UNIX_EPOCH + Duration::from_nanos(last_commit)),
            closed: self.closed.load(Ordering::Relaxed),
        }
    }

    /// A commit succeeded; the number of failures it ends.
    pub(super) fn committed(&self) -> u64 {
        self.commits.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.last_commit.store(now, Ordering::Relaxed);
        self.unsaved.store(0, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        self.consecutive_failures.swap(0, Ordering::Relaxed)
    }

    /// A commit failed with `error`, `unsaved` changes waiting; the number
    /// of consecutive failures.
    pub(super) fn failed(&self, error: String, unsaved: u64) -> u64 {
        self.failed_commits.fetch_add(1, Ordering::Relaxed);
        self.unsaved.store(unsaved, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A change could not be handed to the writer; the number so far.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}
