//! The SQLite stores (feature `sqlite`) as a gateway uses them: the same
//! answers as the memory stores on random operation sequences, before and
//! after reopens (`sqlite/ledger_props.rs`, `sqlite/key_props.rs`);
//! `kill -9` of a process that settles without pause, the loss window
//! measured (`sqlite/crash.rs`); 1,000 concurrent settlements; restarts
//! that must not refill a balance; files that are locked, deleted, not a
//! database, or open in another store.
#![cfg(feature = "sqlite")]

#[path = "sqlite/crash.rs"]
mod crash;
#[path = "sqlite/key_props.rs"]
mod key_props;
#[path = "sqlite/ledger_props.rs"]
mod ledger_props;

use std::path::Path;
use std::sync::Arc;

use tollgate::auth::{KeyAdmin, KeyHash, KeyRecord, PutMode};
use tollgate::budget::{
    Attribution, BudgetScope, BudgetSpec, Charge, Ledger, Money, Period, Reservation,
    ReserveOutcome, ReservePolicy, SpendGroup, SpendQuery, SpendTokens,
};
use tollgate::store::StoreError;
use tollgate::store::sqlite::{SqliteError, SqliteStore};

fn usd(s: &str) -> Money {
    s.parse().unwrap()
}

fn cents(n: i64) -> Money {
    Money::from_nanos(n * 10_000_000)
}

const MODELS: [&str; 2] = ["gpt-4o-mini", "claude-haiku"];

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_settlements_are_all_on_disk_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).unwrap();
    let org = BudgetSpec::balance(BudgetScope::Org("acme".into()), usd("1000"));
    let team = BudgetSpec::budget(BudgetScope::Team("t".into()), usd("1000"), Period::Monthly);
    let tasks: Vec<_> = (0..1_000u64)
        .map(|i| {
            let ledger = store.ledger();
            let (org, team) = (org.clone(), team.clone());
            tokio::spawn(async move {
                // Ten keys, each with its own budget, sharing the team's and the org's.
                let key = BudgetScope::Key(format!("k{}", i % 10));
                let budgets: Arc<[BudgetSpec]> = Arc::new([
                    BudgetSpec::budget(key.clone(), usd("100"), Period::Daily),
                    team,
                    org,
                ]);
                let cost = Money::from_nanos(1_000 + i as i64);
                let outcome = ledger
                    .reserve(&budgets, cost, ReservePolicy::Strict)
                    .await
                    .unwrap();
                let ReserveOutcome::Reserved { reservation, .. } = outcome else {
                    panic!("{outcome:?}")
                };
                tokio::task::yield_now().await;
                let attribution = Attribution::new([key], MODELS[i as usize % 2]);
                let charge = Charge::new(cost, SpendTokens::new(i, 1, 0)).attributed(attribution);
                ledger.settle(&reservation, &charge).await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    // Σ (1000 + i) nano-dollars for i in 0..1000.
    let total = Money::from_nanos(1_000 * 1_000 + 999 * 1_000 / 2);
    assert_eq!(store.ledger().read(&org).await.unwrap().spent, total);
    store.close().await.unwrap();
    drop(store);

    let store = SqliteStore::open(&path).unwrap();
    let ledger = store.ledger();
    assert_eq!(ledger.read(&org).await.unwrap().spent, total);
    assert_eq!(ledger.read(&team).await.unwrap().spent, total);
    let by_key = ledger
        .spend(&SpendQuery::new(SpendGroup::Key))
        .await
        .unwrap();
    assert_eq!(by_key.len(), 10);
    let (mut cost, mut requests, mut prompt) = (Money::ZERO, 0, 0);
    for row in &by_key {
        assert_eq!(row.totals.requests, 100, "{row:?}");
        cost = cost + row.totals.cost;
        requests += row.totals.requests;
        prompt += row.totals.prompt_tokens;
    }
    assert_eq!((cost, requests, prompt), (total, 1_000, 999 * 1_000 / 2));
    let key = BudgetSpec::budget(BudgetScope::Key("k3".into()), usd("100"), Period::Daily);
    assert_eq!(
        by_key[3].totals.cost,
        ledger.read(&key).await.unwrap().spent
    );
}

#[tokio::test]
async fn a_restart_keeps_spend_and_balances_whatever_the_config_grants() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let wallet = BudgetSpec::balance(BudgetScope::Key("alice".into()), usd("10"));
    let monthly = BudgetSpec::budget(BudgetScope::Team("t".into()), usd("50"), Period::Monthly);
    let budgets: Arc<[BudgetSpec]> = Arc::new([wallet.clone(), monthly.clone()]);
    {
        let store = SqliteStore::open(&path).unwrap();
        let ledger = store.ledger();
        for _ in 0..4 {
            let outcome = ledger
                .reserve(&budgets, usd("1"), ReservePolicy::Strict)
                .await
                .unwrap();
            let ReserveOutcome::Reserved { reservation, .. } = outcome else {
                panic!("{outcome:?}")
            };
            ledger
                .settle(&reservation, &Charge::cost(usd("0.75")))
                .await
                .unwrap();
        }
        // Dropping the last handle commits what is queued.
    }
    for opening in ["10", "10", "500"] {
        let store = SqliteStore::open(&path).unwrap();
        let ledger = store.ledger();
        // The config now grants a larger opening balance and a larger budget.
        let wallet = BudgetSpec::balance(BudgetScope::Key("alice".into()), usd(opening));
        let raised = BudgetSpec::budget(BudgetScope::Team("t".into()), usd("80"), Period::Monthly);
        let status = ledger.read(&wallet).await.unwrap();
        assert_eq!(
            (status.limit, status.spent),
            (usd("10"), usd("3")),
            "{opening}"
        );
        let status = ledger.read(&raised).await.unwrap();
        assert_eq!((status.limit, status.spent), (usd("80"), usd("3")));
        store.close().await.unwrap();
    }
}

/// A connection of another process's kind, holding the file's write lock.
fn lock_file(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

#[tokio::test]
async fn a_file_locked_by_another_process_fails_loudly_then_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).unwrap();
    let ledger = store.ledger();
    let keys = store.keys();
    let wallet = BudgetSpec::balance(BudgetScope::Key("k".into()), usd("10"));
    let budgets: Arc<[BudgetSpec]> = Arc::new([wallet.clone()]);
    let lock = lock_file(&path);
    for _ in 0..5 {
        let outcome = ledger
            .reserve(&budgets, usd("1"), ReservePolicy::Strict)
            .await
            .unwrap();
        let ReserveOutcome::Reserved { reservation, .. } = outcome else {
            panic!("{outcome:?}")
        };
        ledger
            .settle(&reservation, &Charge::cost(usd("1")))
            .await
            .unwrap();
    }
    // The writer waits a second for the lock, then reports.
    let refused = store.flush().await;
    assert!(
        matches!(&refused, Err(StoreError::Unavailable(m)) if m.contains("locked")),
        "{refused:?}"
    );
    let health = store.health();
    assert!(!health.is_healthy(), "{health:?}");
    assert!(health.last_error.as_deref().unwrap().contains("state.db"));
    // Requests are still decided in memory.
    assert_eq!(ledger.read(&wallet).await.unwrap().remaining(), usd("5"));
    // A key write is refused rather than made in memory alone.
    let put = keys
        .put(KeyRecord::new("k", KeyHash::of("sk-k")), PutMode::Create)
        .await;
    assert!(matches!(put, Err(StoreError::Unavailable(_))), "{put:?}");
    assert!(keys.get("k").await.unwrap().is_none());

    drop(lock);
    store.flush().await.unwrap();
    assert!(store.health().is_healthy());
    drop((store, ledger, keys));
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.ledger().read(&wallet).await.unwrap().remaining(),
        usd("5")
    );
}

#[tokio::test]
async fn a_deleted_file_fails_loudly_and_close_says_what_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).unwrap();
    let ledger = store.ledger();
    // SQLite would keep writing to the unlinked file, and lose it all.
    std::fs::remove_file(&path).unwrap();
    let wallet = BudgetSpec::balance(BudgetScope::Key("k".into()), usd("10"));
    ledger
        .settle(
            &Reservation::unheld(Arc::new([wallet.clone()])),
            &Charge::cost(usd("2")),
        )
        .await
        .unwrap();
    let flushed = store.flush().await;
    assert!(
        matches!(&flushed, Err(StoreError::Unavailable(m)) if m.contains("deleted")),
        "{flushed:?}"
    );
    let health = store.health();
    assert!(!health.is_healthy() && health.unsaved > 0, "{health:?}");
    // Still decided in memory.
    assert_eq!(ledger.read(&wallet).await.unwrap().remaining(), usd("8"));
    // Closing tries a last time, and says the changes are lost.
    let closed = store.close().await;
    assert!(
        matches!(&closed, Err(StoreError::Unavailable(m)) if m.contains("could not be written")),
        "{closed:?}"
    );
}

/// Two stores on one file would each keep the books in memory and write
/// over each other's: the second is refused, until the first is closed or
/// dropped.
#[tokio::test]
async fn a_file_is_open_in_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let first = SqliteStore::open(&path).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, SqliteError::InUse { .. }), "{err:?}");
    assert_eq!(err.path(), path);
    let message = err.to_string();
    assert!(
        message.contains("state.db") && message.contains("in use"),
        "{message}"
    );
    // Any handle keeps the writer, and the writer the file.
    let ledger = first.ledger();
    drop(first);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, SqliteError::InUse { .. }), "{err:?}");
    // The last handle dropped, the writer has ended and the file is free.
    drop(ledger);
    let again = SqliteStore::open(&path).unwrap();
    // Closed, it frees the file by the time `close` returns, handles or not.
    again.close().await.unwrap();
    let third = SqliteStore::open(&path).unwrap();
    assert_eq!(third.path(), again.path());
}

#[test]
fn a_file_that_is_not_a_database_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    std::fs::write(
        &path,
        "this is not a database, but a config file put in its place\n".repeat(100),
    )
    .unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, SqliteError::Corrupt { .. }), "{err:?}");
    assert_eq!(err.path(), path);
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
}
