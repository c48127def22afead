//! `kill -9` of a process that settles without pause: what is on disk
//! afterwards, against what the process reported as settled.
//!
//! The test re-runs this test binary as its child process (with
//! `TOLLGATE_SQLITE_CRASH_CHILD` set) and prints what it measured:
//! `cargo test --features sqlite --test sqlite kill_9 -- --nocapture`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate::budget::{
    Attribution, BudgetScope, BudgetSpec, Charge, Ledger, Money, Period, ReserveOutcome,
    ReservePolicy, SpendGroup, SpendQuery, SpendTokens,
};
use tollgate::store::sqlite::SqliteStore;

/// Set in the child process the crash test starts: the path of its file.
const CRASH_CHILD: &str = "TOLLGATE_SQLITE_CRASH_CHILD";
const CRASH_TEST: &str = "crash::kill_9_loses_at_most_the_settlements_of_the_last_batch_window";
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
