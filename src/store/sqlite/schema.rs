//! The file: its pragmas, its versioned schema, what is read back from it
//! at open, and how a key is written to it.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};

use super::SqliteError;
use super::writer::KeyOp;
use crate::auth::PutMode;
use crate::budget::{BudgetScope, BudgetSpec, Money, Period, SpendTotals};
use crate::store::memory::{self, MemoryKeyStore, MemoryLedger, TOP_UP_KEYS_KEPT};
use crate::store::{StoreError, codec};

/// The schema this version writes, kept in `PRAGMA user_version`.
pub(super) const SCHEMA_VERSION: i64 = 2;

/// `MIGRATIONS[n]` takes the schema from version `n` to `n + 1`. Append
/// only: a file is migrated through every step it has not seen, in one
/// transaction with the new `user_version`.
const MIGRATIONS: &[&str] = &[
    // 0 → 1: keys, their secret hashes, the books, the aggregates, the
    // top-up idempotency keys.
    "
    CREATE TABLE keys (
        id TEXT PRIMARY KEY NOT NULL,
        -- store::codec JSON: the secret's hash, never the secret
        record TEXT NOT NULL
    );
    CREATE TABLE key_secrets (
        -- SHA-256 of a current or retired secret
        sha256 BLOB PRIMARY KEY NOT NULL CHECK (length(sha256) = 32),
        key_id TEXT NOT NULL REFERENCES keys(id) ON DELETE CASCADE
    ) WITHOUT ROWID;
    CREATE INDEX key_secrets_by_key ON key_secrets(key_id);
    CREATE TABLE accounts (
        -- key:alice, team:research, ...
        scope TEXT PRIMARY KEY NOT NULL,
        balance INTEGER NOT NULL CHECK (balance IN (0, 1)),
        -- daily, weekly, monthly, never, or rolling (rolling_ns long)
        period TEXT NOT NULL,
        rolling_ns INTEGER NOT NULL,
        -- a budget: its limit; a balance: its funds (opening + top-ups)
        limit_nanos INTEGER NOT NULL,
        spent_nanos INTEGER NOT NULL,
        -- spent_nanos counts from here (0 for a balance)
        window_start_ns INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE spend (
        scope TEXT NOT NULL,
        model TEXT NOT NULL,
        -- UTC days since 1970-01-01
        day INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        PRIMARY KEY (scope, model, day)
    ) WITHOUT ROWID;
    CREATE INDEX spend_by_day ON spend(day);
    CREATE TABLE top_up_keys (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        at_ns INTEGER NOT NULL,
        PRIMARY KEY (scope, key)
    ) WITHOUT ROWID;
    ",
    // 1 → 2: users, teams and orgs.
    "
    CREATE TABLE tenants (
        -- user:ann, team:research, org:acme
        scope TEXT PRIMARY KEY NOT NULL,
        -- store::codec JSON
        record TEXT NOT NULL
    ) WITHOUT ROWID;
    ",
];

/// A connection to `path` with the store's pragmas (`synchronous = FULL`
/// if `sync_every_commit`, else `NORMAL`), its schema migrated to
/// [`SCHEMA_VERSION`].
pub(super) fn open(path: &Path, sync_every_commit: bool) -> Result<Connection, SqliteError> {
    let failed = |e: rusqlite::Error| SqliteError::sqlite(path, e);
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(failed)?;
    // Another process (an operator's `sqlite3`, a backup) may hold the
    // lock for a moment: wait for it rather than fail the batch.
    conn.busy_timeout(Duration::from_secs(1)).map_err(failed)?;
    // The first statement reads the header: a file that is not a database
    // fails here, with the path.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(failed)?;
    if !mode.eq_ignore_ascii_case("wal") {
        // The file system cannot share memory for the WAL index (a
        // network mount): still correct, each commit costs more.
        tracing::warn!(path = %path.display(), %mode, "sqlite store: WAL mode unavailable");
    }
    conn.pragma_update(None, "synchronous", synchronous(sync_every_commit))
        .map_err(failed)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(failed)?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

/// The `synchronous` pragma: `FULL` syncs the log at every commit,
/// `NORMAL` (in WAL mode) only at checkpoints.
pub(super) fn synchronous(full: bool) -> &'static str {
    if full { "FULL" } else { "NORMAL" }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), SqliteError> {
    let failed = |e: rusqlite::Error| SqliteError::sqlite(path, e);
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(failed)?;
    if found > SCHEMA_VERSION {
        return Err(SqliteError::NewerSchema {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let Some(steps) = usize::try_from(found)
        .ok()
        .and_then(|n| MIGRATIONS.get(n..))
    else {
        return Err(SqliteError::corrupt(
            path,
            format!("schema version {found}"),
        ));
    };
    if steps.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction().map_err(failed)?;
    for step in steps {
        tx.execute_batch(step).map_err(failed)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(failed)?;
    tx.commit().map_err(failed)
}

/// Loads every `(id, JSON)` row of `sql` with `load`; how many. A record
/// that cannot be read stops the open, with `load`'s reason (skipping it
/// could let the config re-grant a key an admin had revoked).
fn load_records(
    conn: &Connection,
    path: &Path,
    sql: &str,
    mut load: impl FnMut(&str, &str) -> Result<(), String>,
) -> Result<usize, SqliteError> {
    let failed = |e: rusqlite::Error| SqliteError::sqlite(path, e);
    let mut statement = conn.prepare(sql).map_err(failed)?;
    let mut rows = statement.query([]).map_err(failed)?;
    let mut loaded = 0;
    while let Some(row) = rows.next().map_err(failed)? {
        let id: String = row.get(0).map_err(failed)?;
        let json: String = row.get(1).map_err(failed)?;
        load(&id, &json).map_err(|what| SqliteError::corrupt(path, what))?;
        loaded += 1;
    }
    Ok(loaded)
}

/// Loads every key record into `memory`; how many.
pub(super) fn load_keys(
    conn: &Connection,
    path: &Path,
    memory: &MemoryKeyStore,
) -> Result<usize, SqliteError> {
    let sql = "SELECT id, record FROM keys ORDER BY id";
    load_records(conn, path, sql, |id, json| {
        let record =
            codec::decode(json, None).map_err(|e| format!("key `{}`: {e}", id.escape_debug()))?;
        if record.id != id {
            return Err(format!(
                "key `{}` holds the record of another id",
                id.escape_debug()
            ));
        }
        memory.insert(record).map(drop).map_err(|dup| {
            let (id, other) = (dup.id.escape_debug(), dup.existing.escape_debug());
            format!("keys `{id}` and `{other}` share a secret")
        })
    })
}

/// Loads every tenant record into `memory`; how many.
pub(super) fn load_tenants(
    conn: &Connection,
    path: &Path,
    memory: &MemoryKeyStore,
) -> Result<usize, SqliteError> {
    let sql = "SELECT scope, record FROM tenants ORDER BY scope";
    load_records(conn, path, sql, |scope, json| {
        let what = |e: &dyn fmt::Display| format!("tenant `{}`: {e}", scope.escape_debug());
        let record = codec::decode_tenant(json).map_err(|e| what(&e))?;
        if record.scope().id() != scope {
            return Err(what(&"holds the record of another tenant"));
        }
        memory.insert_tenant(record).map(drop).map_err(|e| what(&e))
    })
}

/// What [`load_ledger`] restored.
#[derive(Debug, Default)]
pub(super) struct Restored {
    /// Prepaid balances restored.
    pub(super) balances: usize,
    /// Budgets restored with their current period's spend.
    pub(super) budgets: usize,
    /// Aggregate rows restored, and rows left on disk only (past the
    /// memory ledger's bound).
    pub(super) spend_rows: usize,
    pub(super) spend_rows_on_disk_only: usize,
}

/// Restores the books, the newest spend aggregates and the top-up keys of
/// the last 24 hours into `memory`; deletes the books of budgets whose
/// period has ended.
pub(super) fn load_ledger(
    conn: &mut Connection,
    path: &Path,
    memory: &MemoryLedger,
) -> Result<Restored, SqliteError> {
    let failed = |e: rusqlite::Error| SqliteError::sqlite(path, e);
    let corrupt = |what: String| SqliteError::corrupt(path, what);
    let now = memory.now_unix();
    let mut restored = Restored::default();
    let mut ended = Vec::new();
    {
        let mut statement = conn
            .prepare(
                "SELECT scope, balance, period, rolling_ns, limit_nanos, spent_nanos, \
                 window_start_ns FROM accounts",
            )
            .map_err(failed)?;
        let mut rows = statement.query([]).map_err(failed)?;
        while let Some(row) = rows.next().map_err(failed)? {
            let id: String = row.get(0).map_err(failed)?;
            let scope = BudgetScope::parse(&id)
                .ok_or_else(|| corrupt(format!("budget scope `{}`", id.escape_debug())))?;
            let balance: bool = row.get(1).map_err(failed)?;
            let period: String = row.get(2).map_err(failed)?;
            let period = decode_period(&period, row.get(3).map_err(failed)?)
                .ok_or_else(|| corrupt(format!("period of budget `{}`", id.escape_debug())))?;
            let limit = Money::from_nanos(row.get(4).map_err(failed)?);
            let spent = Money::from_nanos(row.get(5).map_err(failed)?);
            let start = nanos_to_duration(row.get(6).map_err(failed)?);
            let spec = if balance {
                restored.balances += 1;
                BudgetSpec::balance(scope, limit)
            } else {
                if period.window(now).start != start {
                    // Spend of a period that has ended: nothing to restore.
                    ended.push(id);
                    continue;
                }
                if spent == Money::ZERO {
                    continue;
                }
                restored.budgets += 1;
                BudgetSpec::budget(scope, limit, period)
            };
            memory
                .restore_account(&spec, limit, spent, start)
                .map_err(|e| {
                    SqliteError::open(
                        path,
                        format!("{e}: the file holds more budgets; raise the memory ledger's max_budgets"),
                    )
                })?;
        }
    }
    {
        let tx = conn.transaction().map_err(failed)?;
        for id in &ended {
            tx.execute("DELETE FROM accounts WHERE scope = ?1", [id])
                .map_err(failed)?;
        }
        let kept_since = duration_to_nanos(now.saturating_sub(TOP_UP_KEYS_KEPT));
        tx.execute("DELETE FROM top_up_keys WHERE at_ns < ?1", [kept_since])
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
    }
    {
        let mut statement = conn
            .prepare("SELECT scope, key, at_ns FROM top_up_keys ORDER BY at_ns DESC")
            .map_err(failed)?;
        let mut rows = statement.query([]).map_err(failed)?;
        while let Some(row) = rows.next().map_err(failed)? {
            let id: String = row.get(0).map_err(failed)?;
            let scope = BudgetScope::parse(&id)
                .ok_or_else(|| corrupt(format!("top-up scope `{}`", id.escape_debug())))?;
            let at = nanos_to_duration(row.get(2).map_err(failed)?);
            memory.restore_top_up_key(scope, row.get(1).map_err(failed)?, at);
        }
    }
    let mut statement = conn
        .prepare(
            "SELECT scope, model, day, cost_nanos, prompt_tokens, completion_tokens, \
             cached_tokens, requests FROM spend ORDER BY day DESC",
        )
        .map_err(failed)?;
    let mut rows = statement.query([]).map_err(failed)?;
    let mut models: HashSet<Arc<str>> = HashSet::new();
    while let Some(row) = rows.next().map_err(failed)? {
        let id: String = row.get(0).map_err(failed)?;
        let scope = BudgetScope::parse(&id)
            .ok_or_else(|| corrupt(format!("spend scope `{}`", id.escape_debug())))?;
        let model: String = row.get(1).map_err(failed)?;
        // One allocation per model, shared by its rows.
        let model = match models.get(model.as_str()) {
            Some(model) => model.clone(),
            None => {
                let model: Arc<str> = model.into();
                models.insert(model.clone());
                model
            }
        };
        let count = |i: usize| -> Result<u64, SqliteError> {
            let n: i64 = row.get(i).map_err(failed)?;
            Ok(u64::try_from(n).unwrap_or(0))
        };
        let totals = SpendTotals {
            cost: Money::from_nanos(row.get(3).map_err(failed)?),
            prompt_tokens: count(4)?,
            completion_tokens: count(5)?,
            cached_tokens: count(6)?,
            requests: count(7)?,
        };
        if memory.restore_spend(scope, model, row.get(2).map_err(failed)?, totals) {
            restored.spend_rows += 1;
        } else {
            restored.spend_rows_on_disk_only += 1;
        }
    }
    Ok(restored)
}

/// The `period` and `rolling_ns` columns of a period.
pub(super) fn encode_period(period: Period) -> (&'static str, i64) {
    match period {
        Period::Daily => ("daily", 0),
        Period::Weekly => ("weekly", 0),
        Period::Monthly => ("monthly", 0),
        Period::Never => ("never", 0),
        Period::Rolling(d) => ("rolling", duration_to_nanos(d)),
    }
}

fn decode_period(name: &str, rolling_ns: i64) -> Option<Period> {
    Some(match name {
        "daily" => Period::Daily,
        "weekly" => Period::Weekly,
        "monthly" => Period::Monthly,
        "never" => Period::Never,
        "rolling" => Period::Rolling(nanos_to_duration(rolling_ns)),
        _ => return None,
    })
}

/// Nanoseconds as SQLite stores them (a signed 64-bit integer: until 2262).
pub(super) fn duration_to_nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn nanos_to_duration(nanos: i64) -> Duration {
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
}

/// A count as SQLite stores it.
pub(super) fn count_to_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Writes one key op in `tx`: `Ok(Err(conflict))` when the store refuses
/// it (nothing written), with the memory store's messages.
pub(super) fn write_key(
    tx: &Transaction<'_>,
    op: &KeyOp,
) -> Result<Result<(), StoreError>, rusqlite::Error> {
    match op {
        KeyOp::Put(record, mode) => {
            let exists = tx
                .prepare_cached("SELECT 1 FROM keys WHERE id = ?1")?
                .exists([&record.id])?;
            if *mode == PutMode::Create && exists {
                return Ok(Err(memory::key_exists(&record.id)));
            }
            let mut owner =
                tx.prepare_cached("SELECT key_id FROM key_secrets WHERE sha256 = ?1")?;
            for hash in record.secret_hashes() {
                let held: Option<String> = owner
                    .query_row(params![&hash.0[..]], |row| row.get(0))
                    .optional()?;
                if held.is_some_and(|owner| owner != record.id) {
                    return Ok(Err(memory::secret_taken(&record.id)));
                }
            }
            tx.prepare_cached(
                "INSERT INTO keys (id, record) VALUES (?1, ?2) \
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            )?
            .execute(params![record.id, crate::store::codec::encode(record)])?;
            tx.prepare_cached("DELETE FROM key_secrets WHERE key_id = ?1")?
                .execute([&record.id])?;
            let mut index = tx.prepare_cached(
                "INSERT INTO key_secrets (sha256, key_id) VALUES (?1, ?2) \
                 ON CONFLICT (sha256) DO NOTHING",
            )?;
            for hash in record.secret_hashes() {
                index.execute(params![&hash.0[..], record.id])?;
            }
            Ok(Ok(()))
        }
        KeyOp::Delete(id) => {
            // The secrets go with it (ON DELETE CASCADE).
            tx.prepare_cached("DELETE FROM keys WHERE id = ?1")?
                .execute([id])?;
            Ok(Ok(()))
        }
        KeyOp::PutTenant(record, mode) => {
            if let Err(invalid) = record.check() {
                return Ok(Err(StoreError::Conflict(invalid.to_string())));
            }
            let scope = record.scope();
            let exists = tx
                .prepare_cached("SELECT 1 FROM tenants WHERE scope = ?1")?
                .exists([scope.id()])?;
            if *mode == PutMode::Create && exists {
                return Ok(Err(memory::tenant_exists(&scope)));
            }
            tx.prepare_cached(
                "INSERT INTO tenants (scope, record) VALUES (?1, ?2) \
                 ON CONFLICT (scope) DO UPDATE SET record = excluded.record",
            )?
            .execute(params![scope.id(), codec::encode_tenant(record)])?;
            Ok(Ok(()))
        }
        KeyOp::DeleteTenant(scope) => {
            tx.prepare_cached("DELETE FROM tenants WHERE scope = ?1")?
                .execute([scope.id()])?;
            Ok(Ok(()))
        }
    }
}
