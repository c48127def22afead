//! Settlements per second through `SqliteLedger` (decided in memory,
//! persisted by group commit), with the memory ledger next to it.
//!
//! `cargo bench --features sqlite --bench sqlite`
//!
//! Each case runs reserve + settle in a loop on 1 and 2 threads for about
//! two seconds, as a gateway does per request: 3 budgets (the key's daily
//! budget, its team's monthly budget, its org's prepaid balance) and an
//! attribution to the key and team, over 1,000 keys in 20 teams. For the
//! SQLite cases it also reports:
//!
//! - **durable/s**: settlements divided by the time until the last one is
//!   committed (the run plus the final `flush`): whether the writer keeps
//!   up with the hot path;
//! - **commits** and **settlements per commit**;
//! - **flush latency** (p50 / max of a flush every 50 ms during the run):
//!   how long a change waits for the disk, an upper bound of what a
//!   `kill -9` loses.
//!
//! And, on Linux, the CPU time per settlement of the settling threads (the
//! hot path) and of the writer thread, from `/proc` (user + system ticks):
//! meaningful on a machine shared with other work, where wall-clock rates
//! depend on the load.
//!
//! A plain timing bench (`harness = false`): throughput across threads is
//! what matters here, not one call's latency.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tollgate::budget::{
    Attribution, BudgetScope, BudgetSpec, Charge, Ledger, Money, Period, ReserveOutcome,
    ReservePolicy, SpendTokens,
};
use tollgate::store::memory::MemoryLedger;
use tollgate::store::sqlite::SqliteStore;

const KEYS: usize = 1_000;
const TEAMS: usize = 20;
const RUN: Duration = Duration::from_secs(2);

/// The ledgers' reserve and settle answer at once: poll without a runtime.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("reserve and settle never wait"),
    }
}

/// What a gateway's principals carry: per key, its budgets and its
/// attribution, shared by all its requests.
fn keys() -> Vec<(Arc<[BudgetSpec]>, Charge)> {
    (0..KEYS)
        .map(|k| {
            let key = BudgetScope::Key(format!("key-{k}"));
            let team = BudgetScope::Team(format!("team-{}", k % TEAMS));
            let org = BudgetScope::Org("org".into());
            let budgets: Arc<[BudgetSpec]> = Arc::new([
                BudgetSpec::budget(key.clone(), Money::from_usd(1_000_000), Period::Daily),
                BudgetSpec::budget(team.clone(), Money::from_usd(1_000_000), Period::Monthly),
                BudgetSpec::balance(org, Money::from_usd(1_000_000_000)),
            ]);
            let charge = Charge::new(Money::from_nanos(1_500), SpendTokens::new(1_000, 200, 0))
                .attributed(Attribution::new([key, team], "gpt-4o-mini"));
            (budgets, charge)
        })
        .collect()
}

/// CPU time a thread has run (user + system), from its `stat` file.
fn cpu_time(stat: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(stat).ok()?;
    // Fields after the command name: state is field 3, utime 14, stime 15.
    let mut fields = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux configuration in use.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// The `stat` file of this process's thread named `name`.
fn thread_stat(name: &str) -> Option<String> {
    std::fs::read_dir("/proc/self/task").ok()?.find_map(|task| {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        (comm.trim() == name).then(|| dir.join("stat").to_string_lossy().into_owned())
    })
}

/// Settles in a loop on `threads` threads for [`RUN`]; the count, and the
/// CPU time the threads used.
fn settle_for<L: Ledger + Clone>(ledger: &L, threads: usize) -> (u64, Duration) {
    let keys = Arc::new(keys());
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (ledger, keys) = (ledger.clone(), keys.clone());
            std::thread::spawn(move || {
                let cpu = cpu_time("/proc/thread-self/stat");
                let start = Instant::now();
                let mut n = 0u64;
                let mut k = t * 7919;
                while !n.is_multiple_of(1024) || start.elapsed() < RUN {
                    k = (k + 1) % KEYS;
                    let (budgets, charge) = &keys[k];
                    let worst = Money::from_nanos(3_000);
                    match now(ledger.reserve(budgets, worst, ReservePolicy::Bounded)).unwrap() {
                        ReserveOutcome::Reserved { reservation, .. } => {
                            black_box(now(ledger.settle(&reservation, charge)).unwrap());
                        }
                        ReserveOutcome::Denied { .. } => unreachable!("the budgets are large"),
                    }
                    n += 1;
                }
                let cpu = cpu_time("/proc/thread-self/stat")
                    .zip(cpu)
                    .map_or(Duration::ZERO, |(end, start)| end - start);
                (n, cpu)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold((0, Duration::ZERO), |(n, cpu), (m, c)| (n + m, cpu + c))
}

fn per(cpu: Duration, n: u64) -> String {
    format!("{:.0} ns", cpu.as_nanos() as f64 / n.max(1) as f64)
}

fn memory(threads: usize) {
    let ledger = MemoryLedger::new();
    let start = Instant::now();
    let (n, cpu) = settle_for(&ledger, threads);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "memory   {threads} thread(s): {:>9.0} settlements/s; CPU per settlement {}",
        n as f64 / secs,
        per(cpu, n),
    );
}

fn sqlite(threads: usize, sync_interval: Duration, window: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::builder(dir.path().join("bench.db"))
        .sync_interval(sync_interval)
        .batch_window(window)
        .open()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // A flush every 50 ms, timed: how long a change waits for the disk.
    let running = Arc::new(AtomicBool::new(true));
    let prober = {
        let (store, running) = (store.clone(), running.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let mut waits = Vec::new();
            while running.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                let start = Instant::now();
                runtime.block_on(store.flush()).unwrap();
                waits.push(start.elapsed());
            }
            waits.sort();
            waits
        })
    };
    let ledger = store.ledger();
    // The thread names itself once it runs.
    let writer = (0..1_000).find_map(|_| {
        thread_stat("tollgate-sqlite").or_else(|| {
            std::thread::sleep(Duration::from_millis(1));
            None
        })
    });
    let writer_cpu = || writer.as_deref().and_then(cpu_time).unwrap_or_default();
    let writer_before = writer_cpu();
    let start = Instant::now();
    let (n, cpu) = settle_for(&ledger, threads);
    let decided = start.elapsed().as_secs_f64();
    running.store(false, Ordering::Relaxed);
    runtime.block_on(store.flush()).unwrap();
    let durable = start.elapsed().as_secs_f64();
    let writer_used = writer_cpu() - writer_before;
    let waits = prober.join().unwrap();
    let health = store.health();
    assert!(health.is_healthy(), "{health:?}");
    println!(
        "sqlite   {threads} thread(s), sync every {sync_interval:?}, window {window:?}: {:>9.0} settlements/s decided, {:>9.0} durable/s; \
         CPU per settlement {} (hot path) + {} (writer); \
         {} commits ({:.0} settlements each); flush latency p50 {:?}, max {:?}",
        n as f64 / decided,
        n as f64 / durable,
        per(cpu, n),
        per(writer_used, n),
        health.commits,
        n as f64 / health.commits.max(1) as f64,
        waits.get(waits.len() / 2).copied().unwrap_or_default(),
        waits.last().copied().unwrap_or_default(),
    );
    runtime.block_on(store.close()).unwrap();
}

fn main() {
    // `cargo bench` passes `--bench`; a filter is not supported.
    let ms = Duration::from_millis;
    for threads in [1, 2] {
        memory(threads);
        // The default: a sync a second, a 10 ms window.
        sqlite(threads, ms(1_000), ms(10));
        // Every commit synced (`PRAGMA synchronous = FULL`).
        sqlite(threads, Duration::ZERO, ms(10));
    }
    sqlite(1, ms(1_000), ms(1));
}
