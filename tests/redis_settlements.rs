//! Settlements batched by the connection's writer, against a real
//! `redis-server` (one per test, on 127.0.0.1): what queues together goes
//! as one script call, every settlement applies exactly once when a batch's
//! answer is lost (Redis frozen, killed and restarted mid-batch), a flush
//! waits for what is queued, and the queue is bounded.
#![cfg(feature = "redis")]

#[path = "support/manual_clock.rs"]
mod manual_clock;

#[path = "support/redis.rs"]
mod redis_support;

use manual_clock::ManualClock;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::join_all;
use tollgate::budget::{
    BudgetScope, BudgetSpec, Charge, Ledger, Money, Reservation, ReserveOutcome, ReservePolicy,
};
use tollgate::clock::SharedClock;
use tollgate::rate_limit::{
    Acquire, Limit, RateLimitKey, RateLimitStore, ScopeCharge, ScopeSettle, Settle, Verdict,
};
use tollgate::store::redis::{RedisConfig, RedisConnection, RedisLedger, RedisRateLimitStore};

use redis_support::RedisServer;

/// The writer's queue bound (`settlements::QUEUE`) and batch size
/// (`settlements::BATCH`).
const QUEUE: usize = 16_384;
const BATCH: usize = 128;

const TOKENS: u64 = 1_000_000;

fn config(server: &RedisServer) -> RedisConfig {
    RedisConfig::from_url(&server.url())
        .unwrap()
        .call_timeout(Duration::from_millis(250))
        .connect_timeout(Duration::from_millis(500))
        .reconnect_max_delay(Duration::from_millis(200))
}

/// A connection whose calls wait long enough for a loaded machine to run
/// hundreds of scripts (these tests are about exactness, not timeouts).
async fn patient(server: &RedisServer) -> RedisConnection {
    RedisConnection::connect(config(server).call_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
}

fn usd(s: &str) -> Money {
    s.parse().unwrap()
}

fn limits_on(redis: &RedisConnection) -> RedisRateLimitStore {
    // One time for every rate-limit call, so remaining tokens are exact.
    let clock: SharedClock = ManualClock::at(Duration::from_secs(1_780_000_000));
    RedisRateLimitStore::builder(redis.clone())
        .clock(clock)
        .build()
}

fn limit() -> [Limit; 1] {
    [Limit::tokens_per_minute(TOKENS)]
}

/// Charges `cost` tokens to key `k`; the tokens left after it.
async fn acquire(store: &RedisRateLimitStore, cost: u64) -> u64 {
    let limits = limit();
    let scopes = [ScopeCharge {
        key: RateLimitKey::new("k"),
        limits: &limits,
        costs: &[cost],
        max_concurrent: None,
    }];
    let admission = store.acquire(&Acquire { scopes: &scopes }).await.unwrap();
    assert_eq!(admission.verdict, Verdict::Admitted);
    admission.states[0].remaining
}

/// Adds `delta` tokens to key `k`'s count (queued at once).
fn refund(store: &RedisRateLimitStore, delta: i64) -> tollgate::store::StoreFuture<()> {
    let limits = limit();
    let scopes = [ScopeSettle {
        key: RateLimitKey::new("k"),
        limits: &limits,
        deltas: &[delta],
        release: false,
    }];
    store.settle(&Settle {
        scopes: &scopes,
        receipt: tollgate::rate_limit::Receipt::NONE,
    })
}

fn org() -> Arc<[BudgetSpec]> {
    Arc::new([BudgetSpec::balance(
        BudgetScope::Org("o".into()),
        usd("1000"),
    )])
}

async fn reserve(ledger: &RedisLedger, budgets: &Arc<[BudgetSpec]>, amount: &str) -> Reservation {
    match ledger
        .reserve(budgets, usd(amount), ReservePolicy::Strict)
        .await
        .unwrap()
    {
        ReserveOutcome::Reserved { reservation, .. } => reservation,
        denied => panic!("expected a reservation, got {denied:?}"),
    }
}

/// Keys Redis holds matching `pattern`.
async fn count_keys(server: &RedisServer, pattern: &str) -> usize {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.len()
}

// One thread: every settlement below is queued before the writer first
// runs, so the batches are exactly the queue cut in `BATCH`es.
#[tokio::test(flavor = "current_thread")]
async fn settlements_queued_together_go_as_one_script_call_per_batch() {
    let server = redis_support::RedisServer::start();
    let redis = patient(&server).await;
    let ledger = RedisLedger::new(redis.clone());
    let limits = limits_on(&redis);
    let budgets = org();
    let n = 200;
    let mut reservations = Vec::new();
    for _ in 0..n {
        reservations.push(reserve(&ledger, &budgets, "1").await);
        acquire(&limits, 100).await;
    }
    let before = server.script_calls();
    let charges: Vec<_> = reservations
        .iter()
        .map(|r| ledger.settle(r, &Charge::cost(usd("0.25"))))
        .collect();
    let refunds: Vec<_> = (0..n).map(|_| refund(&limits, -40)).collect();
    let (charged, refunded) = futures_util::join!(join_all(charges), join_all(refunds));
    let calls = server.script_calls() - before;
    // 400 settlements, of both stores: ceil(400 / 128) script calls.
    assert_eq!(calls, (2 * n as u64).div_ceil(BATCH as u64));
    for (i, settled) in charged.into_iter().enumerate() {
        let settled = settled.unwrap();
        assert_eq!(settled.charged, usd("0.25"));
        // Each reply is the settlement's own: its charge and the holds
        // still open after it, in queue order.
        let (done, open) = (i as i64 + 1, n as i64 - i as i64 - 1);
        assert_eq!(
            settled.statuses[0].spent,
            Money::from_nanos(done * 250_000_000)
        );
        assert_eq!(
            settled.statuses[0].reserved,
            Money::from_nanos(open * 1_000_000_000)
        );
    }
    assert!(refunded.into_iter().all(|r| r.is_ok()));
    let status = ledger.read(&budgets[0]).await.unwrap();
    assert_eq!((status.spent, status.reserved), (usd("50"), Money::ZERO));
    assert_eq!(acquire(&limits, 0).await, TOKENS - 200 * 60);
    assert_eq!(count_keys(&server, "tollgate:hold:*").await, 0);
    // Only the last batch's marker is left (each batch deletes the one
    // before), and it expires.
    assert_eq!(count_keys(&server, "*#settled:*").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_settlements_of_two_instances_are_exact() {
    let server = redis_support::RedisServer::start();
    let budgets = org();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let redis = patient(&server).await;
        for _ in 0..4 {
            let (ledger, limits) = (RedisLedger::new(redis.clone()), limits_on(&redis));
            let budgets = budgets.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..50 {
                    let r = reserve(&ledger, &budgets, "0.10").await;
                    acquire(&limits, 100).await;
                    let (charged, refunded) = tokio::join!(
                        ledger.settle(&r, &Charge::cost(usd("0.07"))),
                        refund(&limits, -30)
                    );
                    assert_eq!(charged.unwrap().charged, usd("0.07"));
                    refunded.unwrap();
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let ledger = RedisLedger::new(patient(&server).await);
    let status = ledger.read(&budgets[0]).await.unwrap();
    assert_eq!((status.spent, status.reserved), (usd("28"), Money::ZERO));
    let limits = limits_on(ledger.connection());
    assert_eq!(acquire(&limits, 0).await, TOKENS - 400 * 70);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_answer_is_lost_is_sent_again_and_applied_once() {
    let server = redis_support::RedisServer::start();
    // The default 250 ms call timeout: the frozen Redis makes calls time out.
    let redis = RedisConnection::connect(config(&server)).await.unwrap();
    let ledger = RedisLedger::new(redis.clone());
    let limits = limits_on(&redis);
    let budgets = org();
    let r = reserve(&ledger, &budgets, "1").await;
    acquire(&limits, 100).await;
    let before = server.script_calls();
    server.freeze();
    // Both reach Redis's socket, and wait there; the calls time out and the
    // batch is sent again (less than a second: the connection is kept).
    let charge = ledger.settle(&r, &Charge::cost(usd("0.25")));
    let refunded = refund(&limits, -40);
    let settled = tokio::spawn(async move { (charge.await, refunded.await) });
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.thaw();
    let (charged, refunded) = tokio::time::timeout(Duration::from_secs(10), settled)
        .await
        .unwrap()
        .unwrap();
    let charged = charged.unwrap();
    refunded.unwrap();
    // Sent more than once; applied once; the answer is the first run's.
    assert!(server.script_calls() - before >= 2);
    assert_eq!(charged.statuses[0].spent, usd("0.25"));
    assert_eq!(charged.statuses[0].reserved, Money::ZERO);
    let status = ledger.read(&budgets[0]).await.unwrap();
    assert_eq!((status.spent, status.reserved), (usd("0.25"), Money::ZERO));
    assert_eq!(acquire(&limits, 0).await, TOKENS - 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_batch_loses_and_doubles_nothing() {
    // Persistent, so the restarted Redis has what was applied before the
    // kill: every write on disk before its reply is sent.
    let dir = std::env::temp_dir().join(format!("tollgate-settle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_arg = dir.to_string_lossy().into_owned();
    let mut server = RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        &dir_arg,
    ]);
    let redis = patient(&server).await;
    let ledger = RedisLedger::new(redis.clone());
    let limits = limits_on(&redis);
    let budgets = org();
    let n = 300;
    let mut reservations = Vec::new();
    for _ in 0..n {
        reservations.push(reserve(&ledger, &budgets, "1").await);
        acquire(&limits, 100).await;
    }
    // Settled in waves while Redis is killed: some batches applied, one
    // perhaps applied without its answer, the rest sent after the restart.
    let (mut charges, mut refunds) = (Vec::new(), Vec::new());
    for (i, r) in reservations.iter().enumerate() {
        charges.push(tokio::spawn(ledger.settle(r, &Charge::cost(usd("0.5")))));
        refunds.push(tokio::spawn(refund(&limits, -40)));
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
        if i == n / 2 {
            server.kill();
        }
    }
    server.restart();
    let wait = Duration::from_secs(30);
    for charge in charges {
        let settled = tokio::time::timeout(wait, charge).await.unwrap().unwrap();
        assert_eq!(settled.unwrap().charged, usd("0.5"));
    }
    for refunded in refunds {
        tokio::time::timeout(wait, refunded)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    let status = ledger.read(&budgets[0]).await.unwrap();
    assert_eq!((status.spent, status.reserved), (usd("150"), Money::ZERO));
    assert_eq!(acquire(&limits, 0).await, TOKENS - n as u64 * 60);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_waits_for_settlements_nobody_waits_on() {
    let server = redis_support::RedisServer::start();
    let redis = patient(&server).await;
    let ledger = RedisLedger::new(redis.clone());
    let limits = limits_on(&redis);
    let budgets = org();
    let mut reservations = Vec::new();
    for _ in 0..100 {
        reservations.push(reserve(&ledger, &budgets, "1").await);
        acquire(&limits, 100).await;
    }
    // Queued when called: dropping the futures cancels nothing.
    for r in &reservations {
        drop(ledger.settle(r, &Charge::cost(usd("0.5"))));
        drop(refund(&limits, -40));
    }
    tokio::time::timeout(Duration::from_secs(10), redis.flush())
        .await
        .unwrap();
    // Read on another connection: nothing queued behind the flush.
    let other = RedisLedger::new(patient(&server).await);
    let status = other.read(&budgets[0]).await.unwrap();
    assert_eq!((status.spent, status.reserved), (usd("50"), Money::ZERO));
    assert_eq!(
        acquire(&limits_on(other.connection()), 0).await,
        TOKENS - 100 * 60
    );
}

// One thread: the writer does not run while the queue is filled.
#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_refuses_at_once_and_the_rest_fail_after_the_retry_window() {
    let mut server = redis_support::RedisServer::start();
    let redis =
        RedisConnection::connect(config(&server).settlement_retry(Duration::from_millis(300)))
            .await
            .unwrap();
    let limits = limits_on(&redis);
    server.kill();
    let extra = 500;
    let mut queued = Vec::new();
    let mut refused = 0;
    for _ in 0..QUEUE + extra {
        let mut settlement = refund(&limits, -1);
        match (&mut settlement).now_or_never() {
            Some(answer) => {
                assert!(answer.is_err());
                refused += 1;
            }
            None => queued.push(settlement),
        }
    }
    assert_eq!(refused, extra);
    let answers = tokio::time::timeout(Duration::from_secs(20), join_all(queued))
        .await
        .unwrap();
    assert_eq!(answers.len(), QUEUE);
    assert!(answers.iter().all(Result::is_err));
}
