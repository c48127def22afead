//! Reserve + settle against the in-memory ledger: the money path of every
//! request, for a key alone (1 scope), a key in a team in an org (3), and
//! a key of a user in a team in an org (4): one step, all or nothing, for
//! every scope. Target: under 300 ns for one budget.
//!
//! `cargo bench --bench budget -- --warm-up-time 1 --measurement-time 3`
//!
//! Each case is measured twice: in wall-clock time (criterion's default),
//! and in CPU time of the benchmark thread (`budget-cpu/…`, Linux only,
//! from the user + system ticks in `/proc/thread-self/stat`, in ten samples
//! of about a second each so the 10 ms tick is a 1% error), which stays
//! meaningful on a machine shared with other work.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::budget::{
    BudgetScope, BudgetSpec, Charge, Ledger, ModelPrice, Money, Period, ReserveOutcome,
    ReservePolicy,
};
use tollgate::store::memory::MemoryLedger;

/// The memory ledger's futures are ready at once: poll without a runtime.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("the memory ledger never waits"),
    }
}

fn reserve_settle(ledger: &MemoryLedger, budgets: &Arc<[BudgetSpec]>, worst: Money, actual: Money) {
    match now(ledger.reserve(budgets, worst, ReservePolicy::Bounded)).unwrap() {
        ReserveOutcome::Reserved { reservation, .. } => {
            black_box(now(ledger.settle(&reservation, &Charge::cost(actual))).unwrap());
        }
        ReserveOutcome::Denied { .. } => unreachable!("the budget is large enough"),
    }
}

/// CPU time this thread has run (user + system), if the kernel tells.
fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
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

/// Runs `f` `iters` times and returns the CPU time it took (wall time when
/// CPU time is unavailable).
fn cpu_time(iters: u64, mut f: impl FnMut()) -> Duration {
    let (cpu, wall) = (thread_cpu_time(), Instant::now());
    for _ in 0..iters {
        f();
    }
    match (cpu, thread_cpu_time()) {
        (Some(start), Some(end)) => end.saturating_sub(start),
        _ => wall.elapsed(),
    }
}

fn bench(c: &mut Criterion) {
    // Runtime context for the TokioClock (not used for polling).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let ledger = MemoryLedger::new();
    let price = ModelPrice::per_million("2.50", "10.00").unwrap();
    let worst = price.worst_case(500, Some(1_000));
    let actual = price.cost_of(480, 0, 312);
    let key = BudgetSpec::budget(
        BudgetScope::Key("key_01HZX".into()),
        Money::from_usd(1_000_000),
        Period::Monthly,
    );
    let team = BudgetSpec::budget(
        BudgetScope::Team("research".into()),
        Money::from_usd(1_000_000),
        Period::Monthly,
    );
    let org = BudgetSpec::balance(BudgetScope::Org("acme".into()), Money::from_usd(1_000_000));
    let user = BudgetSpec::budget(
        BudgetScope::User("ann".into()),
        Money::from_usd(1_000_000),
        Period::Daily,
    );

    let one: Arc<[BudgetSpec]> = Arc::new([key.clone()]);
    let three: Arc<[BudgetSpec]> = Arc::new([key.clone(), team.clone(), org.clone()]);
    let four: Arc<[BudgetSpec]> = Arc::new([key, user, team, org]);
    let cases = [("1 scope", &one), ("3 scopes", &three), ("4 scopes", &four)];
    for (name, budgets) in cases {
        c.bench_function(&format!("budget/memory reserve+settle, {name}"), |b| {
            b.iter(|| reserve_settle(&ledger, black_box(budgets), worst, actual))
        });
    }
    if thread_cpu_time().is_some() {
        let mut cpu = c.benchmark_group("budget-cpu");
        cpu.sample_size(10)
            .measurement_time(Duration::from_secs(10));
        for (name, budgets) in cases {
            cpu.bench_function(format!("memory reserve+settle, {name}"), |b| {
                b.iter_custom(|iters| {
                    cpu_time(iters, || {
                        reserve_settle(&ledger, black_box(budgets), worst, actual)
                    })
                })
            });
        }
        cpu.finish();
    }
    c.bench_function("budget/price a request", |b| {
        b.iter(|| black_box(price).cost_of(black_box(480), 0, black_box(312)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
