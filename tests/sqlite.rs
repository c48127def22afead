//! The SQLite stores (feature `sqlite`) as a gateway uses them: the same
//! answers as the memory stores on random operation sequences, before and
//! after a reopen; `kill -9` of a process that settles without pause (the
//! loss window measured); 1,000 concurrent settlements; a restart that
//! must not refill a balance; files that are locked, deleted or damaged.
//!
//! The crash test re-runs this test binary as its child process (with
//! `TOLLGATE_SQLITE_CRASH_CHILD` set) and prints what it measured:
//! `cargo test --features sqlite --test sqlite kill_9 -- --nocapture`.
#![cfg(feature = "sqlite")]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use tollgate::auth::{KeyAdmin, KeyHash, KeyRecord, KeyStore, PutMode, RetiredSecret};
use tollgate::budget::{
    Attribution, BudgetScope, BudgetSpec, BudgetStatus, Charge, Ledger, Money, Period, Reservation,
    ReserveOutcome, ReservePolicy, SpendGroup, SpendQuery, SpendTokens,
};
use tollgate::clock::TokioClock;
use tollgate::store::StoreError;
use tollgate::store::memory::{MemoryKeyStore, MemoryLedger};
use tollgate::store::sqlite::{SqliteError, SqliteStore};

fn usd(s: &str) -> Money {
    s.parse().unwrap()
}

fn cents(n: i64) -> Money {
    Money::from_nanos(n * 10_000_000)
}

// ---------------------------------------------------------------------------
// The ledger against the memory ledger
// ---------------------------------------------------------------------------

/// Budgets of every kind, period and mode; `key:flip` is a budget and a
/// balance by turns (a key whose spec an admin changed).
fn specs() -> Vec<BudgetSpec> {
    let key = |id: &str| BudgetScope::Key(id.into());
    vec![
        BudgetSpec::budget(key("a"), usd("5"), Period::Daily),
        BudgetSpec::budget(key("b"), usd("3"), Period::Monthly),
        BudgetSpec::budget(
            BudgetScope::Team("t".into()),
            usd("8"),
            Period::Rolling(Duration::from_secs(6 * 3600)),
        ),
        BudgetSpec::balance(BudgetScope::Org("o".into()), usd("10")),
        BudgetSpec::balance(key("w"), usd("2")),
        BudgetSpec::budget(key("flip"), usd("4"), Period::Never),
        BudgetSpec::balance(key("flip"), usd("6")),
        // The same balance, granted again with a larger opening: never a refill.
        BudgetSpec::balance(key("w"), usd("50")),
    ]
}

const MODELS: [&str; 2] = ["gpt-4o-mini", "claude-haiku"];

#[derive(Debug, Clone)]
enum LedgerOp {
    Reserve {
        budgets: Vec<usize>,
        cents: i64,
        strict: bool,
    },
    Settle {
        pick: usize,
        cents: i64,
        scopes: Vec<usize>,
        model: usize,
    },
    Release {
        pick: usize,
    },
    TopUp {
        spec: usize,
        cents: i64,
        key: Option<u8>,
    },
    Reset {
        spec: usize,
    },
    Read {
        spec: usize,
    },
    Spend {
        group: usize,
        model: Option<usize>,
        from_day: Option<i64>,
    },
    Advance {
        minutes: u64,
    },
    Restart,
}

fn ledger_op() -> impl Strategy<Value = LedgerOp> {
    let n = specs().len();
    prop_oneof![
        6 => (prop::collection::vec(0..n, 0..4), 0i64..400, any::<bool>())
            .prop_map(|(budgets, cents, strict)| LedgerOp::Reserve { budgets, cents, strict }),
        6 => (any::<usize>(), -50i64..500, prop::collection::vec(0..n, 0..3), 0..MODELS.len())
            .prop_map(|(pick, cents, scopes, model)| LedgerOp::Settle { pick, cents, scopes, model }),
        2 => any::<usize>().prop_map(|pick| LedgerOp::Release { pick }),
        2 => (0..n, -300i64..2_000, prop::option::of(0u8..3))
            .prop_map(|(spec, cents, key)| LedgerOp::TopUp { spec, cents, key }),
        1 => (0..n).prop_map(|spec| LedgerOp::Reset { spec }),
        2 => (0..n).prop_map(|spec| LedgerOp::Read { spec }),
        1 => (0usize..6, prop::option::of(0..MODELS.len()), prop::option::of(0i64..3))
            .prop_map(|(group, model, from_day)| LedgerOp::Spend { group, model, from_day }),
        2 => (1u64..1_500).prop_map(|minutes| LedgerOp::Advance { minutes }),
        1 => Just(LedgerOp::Restart),
    ]
}

/// 2026-01-31T21:00:00Z, late on the last day of a month: days and months
/// end within a run.
const T0_SECS: u64 = 20_484 * 86_400 + 21 * 3600;

fn clock() -> TokioClock {
    TokioClock::starting_at(UNIX_EPOCH + Duration::from_secs(T0_SECS))
}

fn open_with(path: &Path, clock: TokioClock) -> SqliteStore {
    SqliteStore::builder(path)
        .ledger(MemoryLedger::new().with_clock(clock))
        .open()
        .unwrap()
}

/// A reserve outcome without its reservation id (a restarted ledger
/// numbers its holds from one again).
fn comparable(outcome: &ReserveOutcome) -> (bool, Money, usize, BudgetStatus) {
    match outcome {
        ReserveOutcome::Reserved {
            reservation,
            index,
            status,
        } => (true, reservation.amount(), *index, *status),
        ReserveOutcome::Denied { index, status } => (false, Money::ZERO, *index, *status),
    }
}

fn query(group: usize, model: Option<usize>, from_day: Option<i64>, day0: i64) -> SpendQuery {
    let group = [
        SpendGroup::Key,
        SpendGroup::Model,
        SpendGroup::Day,
        SpendGroup::User,
        SpendGroup::Team,
        SpendGroup::Org,
    ][group];
    let mut query = SpendQuery::new(group).days(from_day.map(|d| day0 + d), None);
    if let Some(model) = model {
        query = query.model(MODELS[model]);
    }
    query
}

async fn same_ledgers(ops: Vec<LedgerOp>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let clock = clock();
    let day0 = (T0_SECS / 86_400) as i64;
    let specs = specs();
    let reference = MemoryLedger::new().with_clock(clock);
    let mut store = open_with(&path, clock);
    let mut ledger = store.ledger();
    // Holds in flight: (reference's, SQLite's).
    let mut flight: Vec<(Reservation, Reservation)> = Vec::new();
    for op in ops {
        match op {
            LedgerOp::Reserve {
                budgets,
                cents: amount,
                strict,
            } => {
                let budgets: Arc<[BudgetSpec]> =
                    budgets.iter().map(|&i| specs[i].clone()).collect();
                let policy = match strict {
                    true => ReservePolicy::Strict,
                    false => ReservePolicy::Bounded,
                };
                let expected = reference.reserve(&budgets, cents(amount), policy).await;
                let got = ledger.reserve(&budgets, cents(amount), policy).await;
                match (expected, got) {
                    (Ok(expected), Ok(got)) => {
                        prop_assert_eq!(comparable(&expected), comparable(&got));
                        if let (
                            ReserveOutcome::Reserved { reservation: r, .. },
                            ReserveOutcome::Reserved { reservation: s, .. },
                        ) = (expected, got)
                        {
                            flight.push((r, s));
                        }
                    }
                    (expected, got) => prop_assert_eq!(expected.is_ok(), got.is_ok()),
                }
            }
            LedgerOp::Settle {
                pick,
                cents: cost,
                scopes,
                model,
            } => {
                let mut charge = Charge::new(cents(cost), SpendTokens::new(100, 20, 5));
                if !scopes.is_empty() {
                    let scopes: Vec<BudgetScope> =
                        scopes.iter().map(|&i| specs[i].scope.clone()).collect();
                    charge = charge.attributed(Attribution::new(scopes, MODELS[model]));
                }
                let (r, s) = match flight.len() {
                    0 => {
                        // Admitted without a hold (a key without budgets,
                        // or a ledger that was down): settling charges.
                        let budgets: Arc<[BudgetSpec]> =
                            Arc::new([specs[pick % specs.len()].clone()]);
                        (
                            Reservation::unheld(budgets.clone()),
                            Reservation::unheld(budgets),
                        )
                    }
                    n => flight.swap_remove(pick % n),
                };
                let expected = reference.settle(&r, &charge).await.unwrap();
                let got = ledger.settle(&s, &charge).await.unwrap();
                prop_assert_eq!(expected, got);
            }
            LedgerOp::Release { pick } => {
                if !flight.is_empty() {
                    let (r, s) = flight.swap_remove(pick % flight.len());
                    reference.release(&r).await.unwrap();
                    ledger.release(&s).await.unwrap();
                }
            }
            LedgerOp::TopUp {
                spec,
                cents: amount,
                key,
            } => {
                let key = key.map(|k| format!("topup-{k}"));
                let expected = reference
                    .top_up(&specs[spec], cents(amount), key.as_deref())
                    .await
                    .unwrap();
                let got = ledger
                    .top_up(&specs[spec], cents(amount), key.as_deref())
                    .await
                    .unwrap();
                prop_assert_eq!(expected, got);
            }
            LedgerOp::Reset { spec } => {
                let expected = reference.reset(&specs[spec]).await.unwrap();
                prop_assert_eq!(expected, ledger.reset(&specs[spec]).await.unwrap());
            }
            LedgerOp::Read { spec } => {
                let expected = reference.read(&specs[spec]).await.unwrap();
                prop_assert_eq!(expected, ledger.read(&specs[spec]).await.unwrap());
            }
            LedgerOp::Spend {
                group,
                model,
                from_day,
            } => {
                let q = query(group, model, from_day, day0);
                prop_assert_eq!(
                    reference.spend(&q).await.unwrap(),
                    ledger.spend(&q).await.unwrap()
                );
            }
            LedgerOp::Advance { minutes } => {
                tokio::time::advance(Duration::from_secs(minutes * 60)).await;
            }
            LedgerOp::Restart => {
                // A clean shutdown: the requests in flight end first.
                for (r, s) in flight.drain(..) {
                    reference.release(&r).await.unwrap();
                    ledger.release(&s).await.unwrap();
                }
                store.close().await.unwrap();
                drop((store, ledger));
                store = open_with(&path, clock);
                ledger = store.ledger();
            }
        }
    }
    for (r, s) in flight.drain(..) {
        reference.release(&r).await.unwrap();
        ledger.release(&s).await.unwrap();
    }
    store.close().await.unwrap();
    prop_assert!(store.health().failed_commits == 0);
    drop((store, ledger));
    let store = open_with(&path, clock);
    let ledger = store.ledger();
    for spec in &specs {
        prop_assert_eq!(
            reference.read(spec).await.unwrap(),
            ledger.read(spec).await.unwrap(),
            "{:?} after the last reopen",
            spec
        );
    }
    for group in 0..6 {
        let q = query(group, None, None, day0);
        prop_assert_eq!(
            reference.spend(&q).await.unwrap(),
            ledger.spend(&q).await.unwrap()
        );
    }
    Ok(())
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_ledger_answers_as_the_memory_ledger_before_and_after_reopens(
        ops in prop::collection::vec(ledger_op(), 1..60)
    ) {
        paused_runtime().block_on(same_ledgers(ops))?;
    }
}

// ---------------------------------------------------------------------------
// The key store against the memory key store
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum KeyOp {
    Put {
        id: u8,
        secrets: Vec<u8>,
        revoked: bool,
        create: bool,
    },
    Delete {
        id: u8,
    },
    Get {
        id: u8,
    },
    List {
        after: Option<u8>,
        limit: usize,
    },
    Lookup {
        secret: u8,
    },
    Restart,
}

fn key_op() -> impl Strategy<Value = KeyOp> {
    prop_oneof![
        6 => (0u8..5, prop::collection::vec(0u8..8, 1..4), any::<bool>(), any::<bool>())
            .prop_map(|(id, secrets, revoked, create)| KeyOp::Put { id, secrets, revoked, create }),
        2 => (0u8..5).prop_map(|id| KeyOp::Delete { id }),
        2 => (0u8..5).prop_map(|id| KeyOp::Get { id }),
        1 => (prop::option::of(0u8..5), 0usize..4).prop_map(|(after, limit)| KeyOp::List { after, limit }),
        3 => (0u8..8).prop_map(|secret| KeyOp::Lookup { secret }),
        1 => Just(KeyOp::Restart),
    ]
}

fn record(id: u8, secrets: &[u8], revoked: bool) -> KeyRecord {
    let mut record = KeyRecord::new(
        format!("key-{id}"),
        KeyHash::of(format!("sk-{}", secrets[0])),
    );
    record.created_at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    record.revoked = revoked;
    record.name = Some(format!("key number {id}"));
    record.budgets = vec![BudgetSpec::balance(
        BudgetScope::Key(record.id.clone()),
        usd("3.5"),
    )];
    record.retired = secrets[1..]
        .iter()
        .map(|s| RetiredSecret {
            hash: KeyHash::of(format!("sk-{s}")),
            until: UNIX_EPOCH + Duration::from_secs(1_900_000_000),
        })
        .collect();
    record
}

async fn same_key_stores(ops: Vec<KeyOp>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let reference = MemoryKeyStore::new();
    let mut store = SqliteStore::open(&path).unwrap();
    let mut keys = store.keys();
    for op in ops {
        match op {
            KeyOp::Put {
                id,
                secrets,
                revoked,
                create,
            } => {
                let record = record(id, &secrets, revoked);
                let mode = if create {
                    PutMode::Create
                } else {
                    PutMode::Upsert
                };
                let expected = KeyAdmin::put(&reference, record.clone(), mode).await;
                prop_assert_eq!(expected, keys.put(record, mode).await);
            }
            KeyOp::Delete { id } => {
                let id = format!("key-{id}");
                let expected = KeyAdmin::delete(&reference, &id).await;
                prop_assert_eq!(expected, keys.delete(&id).await);
            }
            KeyOp::Get { id } => {
                let id = format!("key-{id}");
                let expected = KeyAdmin::get(&reference, &id).await;
                prop_assert_eq!(expected, keys.get(&id).await);
            }
            KeyOp::List { after, limit } => {
                let after = after.map(|a| format!("key-{a}"));
                let expected = KeyAdmin::list(&reference, after.as_deref(), limit).await;
                prop_assert_eq!(expected, keys.list(after.as_deref(), limit).await);
            }
            KeyOp::Lookup { secret } => {
                let hash = KeyHash::of(format!("sk-{secret}"));
                prop_assert_eq!(reference.lookup(&hash).await, keys.lookup(&hash).await);
            }
            KeyOp::Restart => {
                store.close().await.unwrap();
                drop((store, keys));
                store = SqliteStore::open(&path).unwrap();
                keys = store.keys();
            }
        }
    }
    drop((store, keys));
    let store = SqliteStore::open(&path).unwrap();
    let all = store.keys().list(None, usize::MAX).await;
    prop_assert_eq!(KeyAdmin::list(&reference, None, usize::MAX).await, all);
    for secret in 0..8 {
        let hash = KeyHash::of(format!("sk-{secret}"));
        prop_assert_eq!(
            reference.lookup(&hash).await,
            store.keys().lookup(&hash).await
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_key_store_answers_as_the_memory_key_store_before_and_after_reopens(
        ops in prop::collection::vec(key_op(), 1..40)
    ) {
        paused_runtime().block_on(same_key_stores(ops))?;
    }
}

// ---------------------------------------------------------------------------
// kill -9
// ---------------------------------------------------------------------------

/// Set in the child process the crash test starts: the path of its file.
const CRASH_CHILD: &str = "TOLLGATE_SQLITE_CRASH_CHILD";
const CRASH_TEST: &str = "kill_9_loses_at_most_the_settlements_of_the_last_batch_window";
/// What each settlement of the child costs: its count is spent / COST.
const COST: Money = Money::from_nanos(1_000);

/// The keys the child settles for, in turn.
const CRASH_KEYS: usize = 100;

/// Key `k`'s budgets: its own, and the org's balance that every key shares.
fn crash_budgets(k: usize) -> Arc<[BudgetSpec]> {
    Arc::new([
        BudgetSpec::balance(BudgetScope::Org("crash".into()), Money::from_usd(1_000_000)),
        BudgetSpec::budget(
            BudgetScope::Key(format!("crash-{k}")),
            Money::from_usd(1_000_000),
            Period::Never,
        ),
    ])
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The child: settles as fast as it can, printing `settled <n> <unix µs>`
/// after each settlement, until it is killed (or for 60 s at most, should
/// its parent be gone).
fn settle_until_killed(path: &str) {
    use std::io::Write;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(path).unwrap();
        let ledger = store.ledger();
        let keys: Vec<(Arc<[BudgetSpec]>, Charge)> = (0..CRASH_KEYS)
            .map(|k| {
                let budgets = crash_budgets(k);
                let attribution = Attribution::new([budgets[1].scope.clone()], "gpt-4o-mini");
                let charge = Charge::new(COST, SpendTokens::new(10, 5, 0)).attributed(attribution);
                (budgets, charge)
            })
            .collect();
        let org = &keys[0].0[0];
        let mut n = (ledger.read(org).await.unwrap().spent.nanos() / COST.nanos()) as u64;
        let mut out = std::io::stdout().lock();
        // On a line of its own: the harness has printed the test's name.
        writeln!(out, "\nstarted {n}").unwrap();
        let give_up = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < give_up {
            let (budgets, charge) = &keys[n as usize % CRASH_KEYS];
            let outcome = ledger
                .reserve(budgets, COST, ReservePolicy::Strict)
                .await
                .unwrap();
            let ReserveOutcome::Reserved { reservation, .. } = outcome else {
                panic!("{outcome:?}")
            };
            ledger.settle(&reservation, charge).await.unwrap();
            n += 1;
            writeln!(out, "settled {n} {}", unix_micros()).unwrap();
        }
    });
}

/// What the file holds: settlements counted by the books (the org's
/// balance, which must equal the sum of the keys' budgets: each settlement
/// is in all its budgets or in none) and by the keys' aggregates.
fn on_disk(path: &Path) -> (u64, u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(path).unwrap();
        let ledger = store.ledger();
        let org = ledger.read(&crash_budgets(0)[0]).await.unwrap().spent;
        let mut keys = Money::ZERO;
        for k in 0..CRASH_KEYS {
            keys = keys + ledger.read(&crash_budgets(k)[1]).await.unwrap().spent;
        }
        assert_eq!(org, keys, "one settlement's budgets are committed together");
        let rows = ledger
            .spend(&SpendQuery::new(SpendGroup::Key))
            .await
            .unwrap();
        let requests: u64 = rows.iter().map(|row| row.totals.requests).sum();
        let cost = rows
            .iter()
            .fold(Money::ZERO, |sum, row| sum + row.totals.cost);
        assert_eq!(cost.nanos(), requests as i64 * COST.nanos());
        ((org.nanos() / COST.nanos()) as u64, requests)
    })
}

/// A line of the child's.
enum Report {
    /// It found this many settlements on disk.
    Started(u64),
    /// Settlement `n` was made at this time (µs since the epoch).
    Settled(u64, u64),
}

/// How long before `killed_at` settlement `n` was reported (zero if it
/// never was: killed before it could say so).
fn age(reports: &[(u64, u64)], n: u64, killed_at: u64) -> Duration {
    match reports.binary_search_by_key(&n, |&(m, _)| m) {
        Ok(i) => Duration::from_micros(killed_at.saturating_sub(reports[i].1)),
        Err(_) => Duration::ZERO,
    }
}

#[test]
fn kill_9_loses_at_most_the_settlements_of_the_last_batch_window() {
    if let Ok(path) = std::env::var(CRASH_CHILD) {
        return settle_until_killed(&path);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let mut before = (0, 0);
    let mut worst = Duration::ZERO;
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([CRASH_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CRASH_CHILD, &path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, reports) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut words = line.split(' ');
                let report = match words.next() {
                    Some("started") => Report::Started(words.next().unwrap().parse().unwrap()),
                    Some("settled") => Report::Settled(
                        words.next().unwrap().parse().unwrap(),
                        words.next().unwrap().parse().unwrap(),
                    ),
                    _ => continue, // the test harness's own lines
                };
                if sender.send(report).is_err() {
                    break;
                }
            }
        });
        // Let it settle for a second (bounded: a child that never starts
        // fails the test), then kill it mid-stride.
        let settled = |report| match report {
            Report::Settled(n, at) => (n, at),
            Report::Started(_) => panic!("the child process started twice"),
        };
        let Ok(Report::Started(start)) = reports.recv_timeout(Duration::from_secs(60)) else {
            panic!("the child process did not start")
        };
        assert_eq!(start, before.0, "the child finds the books on disk");
        let mut seen = Vec::new();
        let first = reports
            .recv_timeout(Duration::from_secs(30))
            .map(settled)
            .expect("the child process never settled anything");
        seen.push(first);
        while seen.last().unwrap().1 < first.1 + 1_000_000 {
            let report = reports
                .recv_timeout(Duration::from_secs(30))
                .expect("the child process stopped settling");
            seen.push(settled(report));
        }
        child.kill().unwrap(); // SIGKILL
        let killed_at = unix_micros();
        child.wait().unwrap();
        reader.join().unwrap();
        seen.extend(reports.try_iter().map(settled));
        let reported = seen.last().unwrap().0;

        let (books, aggregates) = on_disk(&path);
        assert!(books > before.0, "round {round}: nothing was saved");
        assert!(
            books <= reported + 1,
            "round {round}: {books} settlements on disk, {reported} made"
        );
        // The settlements of this round are numbered from the books the
        // child found; the aggregates count from what they held then.
        let aggregated = start + (aggregates - before.1);
        assert!(
            aggregated <= books,
            "round {round}: settlements in the aggregates ({aggregated}) but not in the books ({books})"
        );
        let lost_books = age(&seen, books + 1, killed_at);
        let lost_aggregates = age(&seen, aggregated + 1, killed_at);
        println!(
            "round {round}: {} settled in {:.2} s; on disk {books} (books), {} (aggregates); \
             the oldest lost settlement was made {:?} (books), {:?} (aggregates) before the kill",
            reported - start,
            (seen.last().unwrap().1 - first.1) as f64 / 1e6,
            aggregated,
            lost_books,
            lost_aggregates,
        );
        worst = worst.max(lost_books).max(lost_aggregates);
        before = (books, aggregates);
    }
    println!("kill -9 loss window, worst of 3 rounds: {worst:?}");
    assert!(worst < Duration::from_secs(1), "{worst:?}");
}

// ---------------------------------------------------------------------------
// Concurrency, restarts, failing files
// ---------------------------------------------------------------------------

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
