//! [`SqliteHealth`]: whether what the gateway decides reaches the disk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

/// The writer's state, for a health endpoint or a metric. While the disk
/// fails (see [When the disk fails](super#when-the-disk-fails)),
/// `consecutive_failures` grows, `last_error` says why, and `unsaved` is
/// what a crash would lose now: a gateway reports
/// [`is_healthy`](SqliteHealth::is_healthy) as its readiness.
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

/// The state behind [`SqliteHealth`], written by the writer thread.
#[derive(Default)]
pub(super) struct HealthState {
    /// Read by every change handed to the writer: apart from the lock.
    closed: AtomicBool,
    /// The rest, changed once per commit.
    health: Mutex<SqliteHealth>,
}

impl HealthState {
    fn health(&self) -> MutexGuard<'_, SqliteHealth> {
        crate::store::lock(&self.health)
    }

    pub(super) fn snapshot(&self) -> SqliteHealth {
        SqliteHealth {
            closed: self.is_closed(),
            ..self.health().clone()
        }
    }

    /// A commit succeeded; the number of failures it ends.
    pub(super) fn committed(&self) -> u64 {
        let mut health = self.health();
        health.commits += 1;
        health.last_commit = Some(SystemTime::now());
        health.unsaved = 0;
        health.last_error = None;
        std::mem::take(&mut health.consecutive_failures)
    }

    /// A commit failed with `error`, `unsaved` changes waiting; the number
    /// of consecutive failures.
    pub(super) fn failed(&self, error: String, unsaved: u64) -> u64 {
        let mut health = self.health();
        health.failed_commits += 1;
        health.unsaved = unsaved;
        health.last_error = Some(error);
        health.consecutive_failures += 1;
        health.consecutive_failures
    }

    /// A change could not be handed to the writer; the number so far.
    pub(super) fn dropped(&self) -> u64 {
        let mut health = self.health();
        health.dropped += 1;
        health.dropped
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}
