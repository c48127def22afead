//! One admission round trip to Redis, for a rate limit (`EVALSHA` of the
//! rate-limit script, sliding windows) and for a budget (`EVALSHA` of the reserve script), and a
//! key lookup (from the instance's cache, and its one `HGET` on a miss),
//! next to the memory stores and a bare `INCR` on a plain multiplexed connection;
//! and the settlements (`settle_rate_limit`, `settle_budget`: a token
//! correction, a budget's charge), which the connection's writer batches:
//! sequential latency (`redis/sequential/…`) and throughput with 64 calls
//! in flight on one connection (`redis/64-in-flight/…`, reported per call
//! and as calls per second).
//!
//! `cargo bench --features redis --bench redis -- --warm-up-time 1 --measurement-time 3`
//!
//! It starts its own `redis-server` on a free loopback port (no
//! persistence), and fails saying what to install when there is none.

#[path = "../tests/support/redis.rs"]
mod redis_support;

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use futures_util::StreamExt;
use tollgate::auth::{KeyHash, KeyRecord, KeyStore};
use tollgate::budget::{
    BudgetScope, BudgetSpec, Charge, Ledger, Money, Period, Reservation, ReserveOutcome,
    ReservePolicy,
};
use tollgate::rate_limit::{
    Acquire, Admission, Limit, RateLimitKey, RateLimitStore, Receipt, ScopeCharge, ScopeSettle,
    Settle, Verdict,
};
use tollgate::store::StoreFuture;
use tollgate::store::memory::{MemoryKeyStore, MemoryLedger, MemoryRateLimitStore};
use tollgate::store::redis::{
    RedisConfig, RedisConnection, RedisKeyStore, RedisLedger, RedisRateLimitStore,
};

const IN_FLIGHT: usize = 64;
/// Reservations are released between batches, outside the timed part, so
/// holds do not pile up (the memory ledger bounds them).
const BATCH: u64 = 10_000;

/// The memory stores' futures are ready at once: poll without a runtime.
fn now<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("memory stores never wait"),
    }
}

fn limits() -> [Limit; 2] {
    // A large tier that the bench never exhausts: every call is admitted.
    [
        Limit::requests_per_minute(1_000_000),
        Limit::tokens_per_minute(1_000_000_000),
    ]
}

fn acquire<S: RateLimitStore>(store: &S, limits: &[Limit]) -> StoreFuture<Admission> {
    store.acquire(&Acquire {
        scopes: &[ScopeCharge {
            key: RateLimitKey::new("bench"),
            limits,
            costs: &[1, 1_000],
            max_concurrent: None,
        }],
    })
}

fn budgets() -> Arc<[BudgetSpec]> {
    Arc::new([
        BudgetSpec::budget(
            BudgetScope::Key("bench".into()),
            Money::from_usd(1 << 30),
            Period::Monthly,
        ),
        BudgetSpec::budget(
            BudgetScope::Team("bench".into()),
            Money::from_usd(1 << 30),
            Period::Monthly,
        ),
    ])
}

fn held(outcome: ReserveOutcome) -> Reservation {
    match outcome {
        ReserveOutcome::Reserved { reservation, .. } => reservation,
        ReserveOutcome::Denied { .. } => unreachable!("the budget is large enough"),
    }
}

/// Times `iters` reservations (in batches, `in_flight` at a time), releasing
/// them untimed between batches.
async fn time_reservations<L: Ledger + Clone>(
    ledger: &L,
    budgets: &Arc<[BudgetSpec]>,
    iters: u64,
    in_flight: usize,
) -> Duration {
    let mut elapsed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(BATCH);
        left -= n;
        let started = Instant::now();
        let holds: Vec<Reservation> = futures_util::stream::iter(0..n)
            .map(|_| ledger.reserve(budgets, Money::from_nanos(1_000), ReservePolicy::Strict))
            .buffer_unordered(in_flight)
            .map(|outcome| held(outcome.expect("redis answers")))
            .collect()
            .await;
        elapsed += started.elapsed();
        futures_util::stream::iter(&holds)
            .for_each_concurrent(in_flight, |hold| async {
                ledger.release(hold).await.expect("redis answers");
            })
            .await;
    }
    elapsed
}

/// Times the settlement of `iters` reservations (in batches, `in_flight`
/// at a time), made untimed before each batch.
async fn time_settlements<L: Ledger + Clone>(
    ledger: &L,
    budgets: &Arc<[BudgetSpec]>,
    iters: u64,
    in_flight: usize,
) -> Duration {
    let mut elapsed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(BATCH);
        left -= n;
        let holds: Vec<Reservation> = futures_util::stream::iter(0..n)
            .map(|_| ledger.reserve(budgets, Money::from_nanos(1_000), ReservePolicy::Strict))
            .buffer_unordered(in_flight)
            .map(|outcome| held(outcome.expect("redis answers")))
            .collect()
            .await;
        let started = Instant::now();
        futures_util::stream::iter(&holds)
            .for_each_concurrent(in_flight, |hold| async {
                let charge = Charge::cost(Money::from_nanos(700));
                black_box(ledger.settle(hold, &charge).await.expect("redis answers"));
            })
            .await;
        elapsed += started.elapsed();
    }
    elapsed
}

/// Times `iters` calls of `op`, `in_flight` at a time.
async fn time_calls<F, Fut>(iters: u64, in_flight: usize, op: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: Future,
{
    let started = Instant::now();
    futures_util::stream::iter(0..iters)
        .map(|_| op())
        .buffer_unordered(in_flight)
        .for_each(|out| {
            black_box(out);
            async {}
        })
        .await;
    started.elapsed()
}

fn main() {
    let server = redis_support::RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let config = RedisConfig::from_url(&server.url())
        .expect("a valid URL")
        .call_timeout(Duration::from_secs(5));
    let redis = rt
        .block_on(RedisConnection::connect(config))
        .expect("the bench's redis-server answers");
    let bare = rt.block_on(async {
        redis::Client::open(server.url())
            .expect("a valid URL")
            .get_multiplexed_async_connection()
            .await
            .expect("the bench's redis-server answers")
    });
    let redis_limits = RedisRateLimitStore::new(redis.clone());
    // Keys: one store whose lookups hit its cache, one without a cache
    // (every lookup is the `HGET` of a miss).
    let (redis_keys, uncached_keys, memory_keys) = rt.block_on(async {
        let cached = RedisKeyStore::new(redis.clone());
        let uncached = RedisKeyStore::builder(redis.clone()).max_cached(0).build();
        cached
            .insert(KeyRecord::new("bench", KeyHash::of("sk-bench")))
            .await
            .expect("redis answers");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cached.is_listening() {
            assert!(Instant::now() < deadline, "the key store did not subscribe");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cached
            .lookup(&KeyHash::of("sk-bench"))
            .await
            .expect("redis answers");
        (cached, uncached, MemoryKeyStore::new())
    });
    memory_keys
        .insert(KeyRecord::new("bench", KeyHash::of("sk-bench")))
        .expect("a new key");
    let key_hash = KeyHash::of("sk-bench");
    let redis_ledger = RedisLedger::new(redis);
    let memory_limits = MemoryRateLimitStore::new();
    let memory_ledger = MemoryLedger::new();
    let (limits, budgets) = (limits(), budgets());
    let verdict = rt.block_on(acquire(&redis_limits, &limits));
    assert_eq!(verdict.map(|a| a.verdict), Ok(Verdict::Admitted));

    let mut c = Criterion::default().configure_from_args();
    for (group, in_flight) in [("sequential", 1), ("64-in-flight", IN_FLIGHT)] {
        let mut g = c.benchmark_group(format!("redis/{group}"));
        g.throughput(Throughput::Elements(1));
        // The memory stores do no I/O, so nothing overlaps: measured once.
        if in_flight == 1 {
            g.bench_function("rate_limit/memory", |b| {
                b.iter(|| black_box(now(acquire(&memory_limits, &limits))))
            });
            g.bench_function("key_lookup/memory", |b| {
                b.iter(|| black_box(now(memory_keys.lookup(&key_hash))))
            });
            g.bench_function("key_lookup/redis_cached", |b| {
                b.iter(|| {
                    let mut found = redis_keys.lookup(&key_hash);
                    black_box(found.take_ready().expect("a cache hit"))
                })
            });
            g.bench_function("budget/memory", |b| {
                b.iter_custom(|iters| {
                    rt.block_on(time_reservations(&memory_ledger, &budgets, iters, 1))
                })
            });
        }
        g.bench_function("rate_limit/redis", |b| {
            b.iter_custom(|iters| {
                rt.block_on(time_calls(iters, in_flight, || async {
                    acquire(&redis_limits, &limits)
                        .await
                        .expect("redis answers")
                }))
            })
        });
        g.bench_function("budget/redis", |b| {
            b.iter_custom(|iters| {
                rt.block_on(time_reservations(&redis_ledger, &budgets, iters, in_flight))
            })
        });
        g.bench_function("settle_rate_limit/redis", |b| {
            b.iter_custom(|iters| {
                rt.block_on(time_calls(iters, in_flight, || {
                    let scopes = [ScopeSettle {
                        key: RateLimitKey::new("bench"),
                        limits: &limits,
                        deltas: &[0, 1],
                        release: false,
                    }];
                    let settled = redis_limits.settle(&Settle {
                        scopes: &scopes,
                        receipt: Receipt::NONE,
                    });
                    async move { settled.await.expect("redis answers") }
                }))
            })
        });
        g.bench_function("settle_budget/redis", |b| {
            b.iter_custom(|iters| {
                rt.block_on(time_settlements(&redis_ledger, &budgets, iters, in_flight))
            })
        });
        g.bench_function("key_lookup/redis_uncached", |b| {
            b.iter_custom(|iters| {
                rt.block_on(time_calls(iters, in_flight, || async {
                    let found = uncached_keys.lookup(&key_hash).await;
                    found.expect("redis answers").expect("the key exists")
                }))
            })
        });
        g.bench_function("INCR", |b| {
            b.iter_custom(|iters| {
                rt.block_on(time_calls(iters, in_flight, || {
                    let mut conn = bare.clone();
                    async move {
                        redis::cmd("INCR")
                            .arg("bench:counter")
                            .query_async::<i64>(&mut conn)
                            .await
                            .expect("redis answers")
                    }
                }))
            })
        });
        g.finish();
    }
    c.final_summary();
    drop(server);
}
