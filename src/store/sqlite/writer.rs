//! The one thread that writes the file: group commit of the ledger's
//! changes, and the key store's writes, in the order they were made.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use tokio::sync::oneshot;

use super::SqliteError;
use super::batch::Batch;
use super::health::{HealthState, SqliteHealth};
use super::schema::{count_to_sql, duration_to_nanos, encode_period, synchronous, write_key};
use crate::auth::{KeyRecord, PutMode, TenantRecord};
use crate::budget::{BudgetMode, BudgetScope, Charge, Reservation};
use crate::store::memory::{MemoryKeyStore, MemoryLedger, TOP_UP_KEYS_KEPT};
use crate::store::{StoreError, read, write};

/// Answered once the change it came with is committed (or the commit
/// failed: the change stays queued, and is retried).
pub(super) type Ack = oneshot::Sender<Result<(), StoreError>>;

/// What the writer is asked to persist.
pub(super) enum Job {
    /// A settlement: its budgets' books changed, and its charge adds to the
    /// aggregates of its attribution on `day`.
    Settled {
        reservation: Reservation,
        charge: Charge,
        day: i64,
    },
    /// A reservation refused, a hold released or a read named these
    /// budgets: it may have opened their books (a prepaid balance at its
    /// opening funds, which must outlive a restart even if nothing is ever
    /// settled against it) or started them over (a spec that turned a
    /// budget into a balance, or back).
    Touched(Reservation),
    /// A top-up or reset changed `scope`'s books (a top-up with its
    /// idempotency key and when it was used, on the ledger's clock).
    Books {
        scope: BudgetScope,
        top_up_key: Option<(String, Duration)>,
        done: Ack,
    },
    /// An admin write of the key store: on disk first, then in memory,
    /// then answered.
    Key {
        op: KeyOp,
        done: oneshot::Sender<Result<KeyOutcome, StoreError>>,
    },
    /// Commit everything sent before.
    Flush(Ack),
    /// Commit everything sent before, then stop.
    Close(Ack),
    /// Runs on the writer's connection before the next commit (tests
    /// change its per-connection limits with it).
    #[cfg(test)]
    Run(RunOnConnection, Ack),
}

#[cfg(test)]
pub(super) type RunOnConnection = Box<dyn FnOnce(&Connection) -> rusqlite::Result<()> + Send>;

/// A key store write.
pub(super) enum KeyOp {
    Put(Box<KeyRecord>, PutMode),
    Delete(String),
    PutTenant(Box<TenantRecord>, PutMode),
    DeleteTenant(BudgetScope),
}

/// What a [`KeyOp`] did.
pub(super) enum KeyOutcome {
    /// The record replaced.
    Put(Option<Arc<KeyRecord>>),
    /// Whether the key (or tenant) existed.
    Deleted(bool),
    /// The tenant record replaced.
    PutTenant(Option<Arc<TenantRecord>>),
}

/// How the writer batches.
#[derive(Debug, Clone, Copy)]
pub(super) struct BatchPolicy {
    /// A batch is committed this long after its first change...
    pub(super) window: Duration,
    /// ... or once this many changes arrived, whichever is first.
    pub(super) max_changes: usize,
    /// A commit syncs the log when the last sync is this old (every
    /// commit if zero).
    pub(super) sync_interval: Duration,
}

/// The handle on the writer thread, shared by the stores of one file. The
/// last one dropped stops the thread after a last commit.
pub(super) struct Writer {
    jobs: Sender<Job>,
    /// Held (shared) by every ledger change from its step in memory to its
    /// job's send, and (exclusive) by the writer while it takes the jobs
    /// queued so far and reads the books they changed: so the books it
    /// writes reflect exactly the settlements whose jobs it holds. Without
    /// it, a settlement made in memory between the two would show in the
    /// books of a budget already in the batch (the org every key shares)
    /// and not in those of its own key, and a `kill -9` before the next
    /// commit would leave them apart on disk.
    order: Arc<RwLock<()>>,
    health: Arc<HealthState>,
    thread: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

impl Writer {
    /// Starts the thread that writes what `ledger` and `keys` decide to
    /// `conn`, the file at `path`, holding the file's `lock` until it ends.
    pub(super) fn start(
        conn: Connection,
        lock: Option<std::fs::File>,
        path: PathBuf,
        ledger: MemoryLedger,
        keys: MemoryKeyStore,
        policy: BatchPolicy,
    ) -> Result<Writer, SqliteError> {
        let (jobs, receiver) = mpsc::channel();
        let health = Arc::new(HealthState::default());
        let order = Arc::new(RwLock::new(()));
        let thread = Thread {
            conn,
            lock,
            file: FileIdentity::of(&path),
            path: path.clone(),
            jobs: receiver,
            order: order.clone(),
            ledger,
            keys,
            health: health.clone(),
            policy,
            synced_at: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("tollgate-sqlite".into())
            .spawn(move || thread.run())
            .map_err(|e| SqliteError::open(&path, e))?;
        Ok(Writer {
            jobs,
            order,
            health,
            thread: Mutex::new(Some(thread)),
            path,
        })
    }

    /// Held across a ledger change in memory and the send of its job (see
    /// the field's docs).
    pub(super) fn ordered(&self) -> RwLockReadGuard<'_, ()> {
        read(&self.order)
    }

    /// Hands `job` to the writer; never waits. After the writer stopped,
    /// the change is counted as dropped.
    pub(super) fn send(&self, job: Job) {
        // Once closed, the thread may still be finishing: a job it would
        // never read must not look accepted.
        if self.health.is_closed() || self.jobs.send(job).is_err() {
            dropped(&self.health, &self.path);
        }
    }

    /// Sends the job `make` builds around its answer's sender (an [`Ack`],
    /// or a key write's), and waits for the answer.
    pub(super) async fn acked<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        let (done, answer) = oneshot::channel();
        self.send(make(done));
        answer.await.unwrap_or_else(|_| {
            let path = self.path.display();
            Err(StoreError::Unavailable(format!(
                "the state store {path} is closed"
            )))
        })
    }

    pub(super) fn health(&self) -> SqliteHealth {
        self.health.snapshot()
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Writer {
    /// The last handle: commit what is queued and wait for the thread.
    /// Bounded by the last commit's attempts (a disk that keeps failing
    /// is given up on after [`CLOSE_ATTEMPTS`]).
    fn drop(&mut self) {
        let (done, _) = oneshot::channel();
        let _ = self.jobs.send(Job::Close(done));
        let thread = self
            .thread
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "sqlite store: the writer thread panicked");
        }
    }
}

/// Counts (and logs, sparingly) a change made after the writer stopped.
fn dropped(health: &HealthState, path: &Path) {
    let dropped = health.dropped();
    if dropped.is_power_of_two() {
        tracing::error!(
            path = %path.display(),
            dropped,
            "sqlite store: a change was made after the store was closed; it is not saved"
        );
    }
}

/// Attempts of the last commit before the writer stops.
const CLOSE_ATTEMPTS: u32 = 3;

/// The wait before retrying a failed commit: 25 ms, doubling, at most 1 s.
pub(super) fn retry_delay(failures: u32) -> Duration {
    Duration::from_millis(25u64 << failures.clamp(1, 7).saturating_sub(1))
        .min(Duration::from_secs(1))
}

struct Thread {
    conn: Connection,
    /// The file's lock (see `lock` in `mod.rs`): released after the last
    /// commit, before `close` is answered, so the file can be opened again
    /// once `close` returns.
    lock: Option<std::fs::File>,
    path: PathBuf,
    /// The file `path` named at open (see [`FileIdentity`]).
    file: Option<FileIdentity>,
    jobs: Receiver<Job>,
    order: Arc<RwLock<()>>,
    ledger: MemoryLedger,
    keys: MemoryKeyStore,
    health: Arc<HealthState>,
    policy: BatchPolicy,
    /// When a commit last synced the log.
    synced_at: Instant,
}

/// The books of a commit's budgets, read together with the jobs that
/// changed them (see [`Writer::order`]).
type Books = (
    Vec<BudgetScope>,
    Vec<Option<(crate::budget::Period, crate::budget::BudgetStatus)>>,
);

/// Which file a path names. A file deleted (or replaced) while SQLite has
/// it open takes writes without an error, and loses them with the process:
/// the writer checks the path still names the file it opened before each
/// commit, and fails loudly if not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
}

impl FileIdentity {
    #[cfg(unix)]
    fn of(path: &Path) -> Option<FileIdentity> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(FileIdentity {
            device: meta.dev(),
            inode: meta.ino(),
        })
    }

    #[cfg(not(unix))]
    fn of(_: &Path) -> Option<FileIdentity> {
        None
    }
}

/// Marks the writer closed when its thread ends.
struct ClosedOnExit(Arc<HealthState>);

impl Drop for ClosedOnExit {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// What one transaction wrote: per key op, in order, done or refused (a
/// conflict).
type Written = Vec<Result<(), StoreError>>;

impl Thread {
    fn run(mut self) {
        // However the thread ends (a panic included), health says so.
        let _closed = ClosedOnExit(self.health.clone());
        let mut batch = Batch::default();
        let mut failures = 0u32;
        loop {
            if batch.is_empty() {
                match self.jobs.recv() {
                    Ok(job) => batch.add(job),
                    Err(_) => batch.closing = true,
                }
            }
            // Collect until the window closes (or, after a failure, until
            // the retry), the batch is full, or someone waits on it.
            let wait = match failures {
                0 => self.policy.window,
                n => retry_delay(n),
            };
            let deadline = Instant::now() + wait;
            while !batch.urgent() && (failures > 0 || batch.received < self.policy.max_changes) {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.jobs.recv_timeout(left) {
                    Ok(job) => batch.add(job),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => batch.closing = true,
                }
            }
            // What is queued already joins this commit (bounded, so a
            // flood of settlements cannot hold the commit back).
            for job in self.jobs.try_iter().take(self.policy.max_changes) {
                batch.add(job);
            }
            batch.received = 0;
            failures = match self.commit(&mut batch) {
                true => 0,
                false => failures.saturating_add(1),
            };
            if batch.closing {
                let mut attempts = 1;
                while batch.unsaved() > 0 && attempts < CLOSE_ATTEMPTS {
                    std::thread::sleep(retry_delay(attempts));
                    self.commit(&mut batch);
                    attempts += 1;
                }
                let result = match batch.unsaved() {
                    0 => Ok(()),
                    unsaved => {
                        tracing::error!(
                            path = %self.path.display(),
                            unsaved,
                            "sqlite store: closed with changes the disk did not take; they are lost"
                        );
                        Err(StoreError::Unavailable(format!(
                            "{} changes could not be written to {}",
                            unsaved,
                            self.path.display()
                        )))
                    }
                };
                self.health.close();
                drop(self.lock.take());
                for done in batch.closers.drain(..) {
                    let _ = done.send(result.clone());
                }
                // Sent while closing: not written (their waiters learn it
                // as their answer is dropped).
                while self.jobs.try_recv().is_ok() {
                    dropped(&self.health, &self.path);
                }
                return;
            }
        }
    }

    /// Commits `batch`; whether it succeeded. On success the batch is
    /// empty and everyone waiting is answered; on failure its ledger
    /// changes stay for the next attempt, and its waiters are answered
    /// with the error.
    fn commit(&mut self, batch: &mut Batch) -> bool {
        #[cfg(test)]
        for (f, done) in batch.run.drain(..) {
            let _ = done.send(f(&self.conn).map_err(|e| StoreError::Unavailable(e.to_string())));
        }
        if batch.unsaved() == 0 {
            batch.answer(&Ok(()));
            return true;
        }
        let books = {
            let _order = write(&self.order);
            // Every change made in memory so far has its job queued: all
            // join this commit, and the books are read before any other
            // change can be made.
            while let Ok(job) = self.jobs.try_recv() {
                batch.add(job);
            }
            let scopes: Vec<BudgetScope> = batch.accounts.iter().cloned().collect();
            let books = self.ledger.books(&scopes);
            (scopes, books)
        };
        batch.fold_recent();
        let written = match self.file_is_gone() {
            Some(gone) => Err(gone),
            None => self.write_synced(batch, books).map_err(|e| e.to_string()),
        };
        match written {
            Ok(written) => {
                // Health first: whoever is answered next may read it.
                let ended = self.health.committed();
                for ((op, done), result) in batch.keys.drain(..).zip(written) {
                    let _ = done.send(result.and_then(|()| self.apply(op)));
                }
                batch.clear_saved();
                batch.answer(&Ok(()));
                if ended > 0 {
                    tracing::warn!(
                        path = %self.path.display(),
                        failures = ended,
                        "sqlite store: the disk takes writes again; everything queued is saved"
                    );
                }
                true
            }
            Err(error) => {
                let message = format!("cannot write {}: {error}", self.path.display());
                let unsaved = batch.unsaved() - batch.keys.len();
                let failures = self.health.failed(message.clone(), unsaved as u64);
                tracing::error!(
                    path = %self.path.display(),
                    %error,
                    failures,
                    unsaved,
                    "sqlite store: commit failed; deciding in memory and retrying"
                );
                for (_, done) in batch.keys.drain(..) {
                    let _ = done.send(Err(StoreError::Unavailable(message.clone())));
                }
                batch.answer(&Err(StoreError::Unavailable(message)));
                false
            }
        }
    }

    /// Why the file the store opened is no longer at its path, if it is not.
    fn file_is_gone(&self) -> Option<String> {
        let opened = self.file?;
        match FileIdentity::of(&self.path) {
            Some(now) if now == opened => None,
            Some(_) => {
                Some("the file was replaced since it was opened; restart the gateway".into())
            }
            None => Some("the file was deleted since it was opened; restart the gateway".into()),
        }
    }

    /// [`write`](Self::write), syncing the log if the last sync is
    /// [`sync_interval`](BatchPolicy::sync_interval) old: one `fsync` makes
    /// every commit before it durable too, so the commits in between need
    /// none (they survive the process dying, not the machine).
    fn write_synced(&mut self, batch: &Batch, books: Books) -> Result<Written, rusqlite::Error> {
        let interval = self.policy.sync_interval;
        if interval.is_zero() || self.synced_at.elapsed() < interval {
            return self.write(batch, books);
        }
        self.conn
            .pragma_update(None, "synchronous", synchronous(true))?;
        let written = self.write(batch, books);
        let normal = self
            .conn
            .pragma_update(None, "synchronous", synchronous(false));
        if written.is_ok() {
            self.synced_at = Instant::now();
        }
        let written = written?;
        normal?;
        Ok(written)
    }

    /// One transaction with every change of `batch`.
    fn write(&mut self, batch: &Batch, (scopes, books): Books) -> Result<Written, rusqlite::Error> {
        let tx = self.conn.transaction()?;
        let mut written = Written::with_capacity(batch.keys.len());
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO accounts (scope, balance, period, rolling_ns, limit_nanos, \
                 spent_nanos, window_start_ns) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (scope) DO UPDATE SET balance = excluded.balance, \
                 period = excluded.period, rolling_ns = excluded.rolling_ns, \
                 limit_nanos = excluded.limit_nanos, spent_nanos = excluded.spent_nanos, \
                 window_start_ns = excluded.window_start_ns",
            )?;
            let mut delete = tx.prepare_cached("DELETE FROM accounts WHERE scope = ?1")?;
            // The books as they stood when the batch's jobs were taken,
            // not as each settlement saw them: settlements reach this
            // thread in any order, the books only move forward. Read in
            // one step with the jobs (see `Writer::order`), so a
            // settlement is in the books of all its budgets or of none.
            for (scope, books) in scopes.iter().zip(books) {
                match books {
                    Some((period, status)) => {
                        let (period, rolling_ns) = encode_period(period);
                        upsert.execute(params![
                            scope.id(),
                            status.mode == BudgetMode::Balance,
                            period,
                            rolling_ns,
                            status.limit.nanos(),
                            status.spent.nanos(),
                            duration_to_nanos(status.period.start),
                        ])?;
                    }
                    // Evicted as idle (nothing spent this period): no
                    // books to keep, and none to restore.
                    None => {
                        delete.execute([scope.id()])?;
                    }
                }
            }
            let mut add = tx.prepare_cached(
                "INSERT INTO spend (scope, model, day, cost_nanos, prompt_tokens, \
                 completion_tokens, cached_tokens, requests) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (scope, model, day) DO UPDATE SET \
                 cost_nanos = cost_nanos + excluded.cost_nanos, \
                 prompt_tokens = prompt_tokens + excluded.prompt_tokens, \
                 completion_tokens = completion_tokens + excluded.completion_tokens, \
                 cached_tokens = cached_tokens + excluded.cached_tokens, \
                 requests = requests + excluded.requests",
            )?;
            for ((scope, model, day), totals) in &batch.spend {
                add.execute(params![
                    scope.id(),
                    &**model,
                    day,
                    totals.cost.nanos(),
                    count_to_sql(totals.prompt_tokens),
                    count_to_sql(totals.completion_tokens),
                    count_to_sql(totals.cached_tokens),
                    count_to_sql(totals.requests),
                ])?;
            }
            let mut used = tx.prepare_cached(
                "INSERT INTO top_up_keys (scope, key, at_ns) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (scope, key) DO UPDATE SET at_ns = excluded.at_ns",
            )?;
            let mut forget =
                tx.prepare_cached("DELETE FROM top_up_keys WHERE scope = ?1 AND at_ns < ?2")?;
            for (scope, key, at) in &batch.top_up_keys {
                let id = scope.id();
                forget.execute(params![
                    id,
                    duration_to_nanos(at.saturating_sub(TOP_UP_KEYS_KEPT))
                ])?;
                used.execute(params![id, key, duration_to_nanos(*at)])?;
            }
        }
        for (op, _) in &batch.keys {
            written.push(write_key(&tx, op)?);
        }
        tx.commit()?;
        Ok(written)
    }

    /// Applies a committed key write to memory.
    fn apply(&self, op: KeyOp) -> Result<KeyOutcome, StoreError> {
        match op {
            KeyOp::Put(record, _) => match self.keys.insert(*record) {
                Ok(previous) => Ok(KeyOutcome::Put(previous)),
                // The file refused the same conflicts in the transaction,
                // and only this thread writes either: unreachable unless
                // the two were changed behind the store's back.
                Err(dup) => {
                    tracing::error!(
                        path = %self.path.display(),
                        key = %dup.id.escape_debug(),
                        "sqlite store: the file and memory disagree on a key's secrets"
                    );
                    Err(StoreError::Corrupt(format!(
                        "key `{}`: memory and file disagree",
                        dup.id.escape_debug()
                    )))
                }
            },
            KeyOp::Delete(id) => Ok(KeyOutcome::Deleted(self.keys.remove(&id).is_some())),
            // Checked by the same rules in the transaction.
            KeyOp::PutTenant(record, _) => self
                .keys
                .insert_tenant(*record)
                .map(KeyOutcome::PutTenant)
                .map_err(|e| StoreError::Corrupt(e.to_string())),
            KeyOp::DeleteTenant(scope) => Ok(KeyOutcome::Deleted(
                self.keys.remove_tenant(&scope).is_some(),
            )),
        }
    }
}
