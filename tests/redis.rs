//! The Redis stores against a real `redis-server` (one per test, on
//! 127.0.0.1, started and killed by the test): several gateway instances
//! (separate connections, stores and layer stacks) sharing one Redis, Redis
//! killed, frozen and restarted under traffic, and the stores' semantics
//! against the memory stores'. The rate-limit store's own tests are in
//! `redis_rate_limit.rs`.
//!
//! Over 600 lines: every test here starts its own `redis-server` and
//! stacks, and reads alone; splitting by topic would move the shared
//! instance and stack helpers into one more support file for no reader's
//! gain. New topics get files of their own (`redis_rate_limit.rs`,
//! `redis_settlements.rs`).
#![cfg(feature = "redis")]

#[path = "support/manual_clock.rs"]
mod manual_clock;

#[path = "support/redis.rs"]
mod redis_support;

use manual_clock::ManualClock;
use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tollgate::auth::{AuthLayer, KeyAdmin, KeyHash, KeyRecord, KeyStore, Principal};
use tollgate::budget::{
    BudgetLayer, BudgetMode, BudgetScope, BudgetSpec, Charge, Ledger, ModelPrice, Money, Period,
    Pricing, Reservation, ReserveOutcome, ReservePolicy,
};
use tollgate::envelope::ErrorEnvelopeLayer;
use tollgate::rate_limit::{
    Acquire, FailurePolicy as RateLimitFailure, Limit, RateLimitKey, RateLimitLayer,
    RateLimitStore, ScopeCharge, ScopeSettle, Settle,
};
use tollgate::store::StoreError;
use tollgate::store::memory::MemoryRateLimitStore;
use tollgate::store::redis::{
    FailurePolicy, KeyWriteError, RedisConfig, RedisConnection, RedisKeyStore, RedisLedger,
    RedisRateLimitStore,
};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

use redis_support::RedisServer;

const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// A request may take the call timeout plus this before it counts as hung
/// (scheduling on a loaded CI machine).
const SLACK: Duration = Duration::from_secs(1);

fn config(server: &RedisServer) -> RedisConfig {
    RedisConfig::from_url(&server.url())
        .unwrap()
        .call_timeout(CALL_TIMEOUT)
        .connect_timeout(Duration::from_millis(500))
        .reconnect_max_delay(Duration::from_millis(200))
}

/// A new connection: a gateway instance of its own.
async fn instance(server: &RedisServer) -> RedisConnection {
    RedisConnection::connect(config(server)).await.unwrap()
}

/// An instance for the exactness tests, which are not about timeouts: a
/// loaded machine may take longer than 250 ms to run hundreds of scripts.
async fn patient_instance(server: &RedisServer) -> RedisConnection {
    RedisConnection::connect(config(server).call_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
}

fn rfc3339(s: &str) -> Duration {
    std::time::Duration::from_nanos(
        u64::try_from(s.parse::<jiff::Timestamp>().unwrap().as_nanosecond()).unwrap(),
    )
}

fn usd(s: &str) -> Money {
    s.parse().unwrap()
}

/// Sends `req` through a clone of `svc` and reads the whole response (so
/// layers settle at body end).
fn send<S, B>(
    svc: &S,
    req: Request<Full<Bytes>>,
) -> impl Future<Output = (StatusCode, HeaderMap, Bytes)> + use<S, B>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: Debug,
    B: Body<Data = Bytes>,
    B::Error: Debug,
{
    let svc = svc.clone();
    async move {
        let response = svc.oneshot(req).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, bytes)
    }
}

/// `send`, failing the test if the response takes longer than the call
/// timeout (plus slack) per store round trip.
fn send_bounded<S, B>(
    svc: &S,
    req: Request<Full<Bytes>>,
) -> impl Future<Output = (StatusCode, HeaderMap, Bytes)> + use<S, B>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: Debug,
    B: Body<Data = Bytes>,
    B::Error: Debug,
{
    let answer = send(svc, req);
    async move {
        let bound = 2 * CALL_TIMEOUT + SLACK;
        let started = Instant::now();
        match tokio::time::timeout(bound, answer).await {
            Ok(answer) => answer,
            Err(_) => panic!("a request hung for {:?}", started.elapsed()),
        }
    }
}

fn error_code(body: &Bytes) -> String {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    json["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn chat(principal: Option<&Principal>, max_tokens: u64) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"m","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let mut req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    if let Some(p) = principal {
        req.extensions_mut().insert(p.clone());
    }
    req
}

fn with_key(secret: &str) -> Request<Full<Bytes>> {
    let mut req = chat(None, 10);
    req.headers_mut()
        .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    req
}

/// An upstream that answers every request after a short pause (so requests
/// overlap) with 1,000 completion tokens of usage.
async fn upstream(_req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    tokio::time::sleep(Duration::from_millis(2)).await;
    let body = r#"{"choices":[],"usage":{"prompt_tokens":0,"completion_tokens":1000,"total_tokens":1000}}"#;
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn principal(id: &str, limits: &[Limit], budgets: &[BudgetSpec]) -> Principal {
    let mut record = KeyRecord::new(id, KeyHash::of(id));
    record.rate_limits = limits.to_vec();
    record.budgets = budgets.to_vec();
    Principal::new(record)
}

/// Output at $10 per million tokens: a request with `max_tokens: 3000`
/// reserves $0.03, and the upstream's 1,000 tokens cost $0.01.
fn pricing() -> Pricing {
    Pricing::new().with("m", ModelPrice::per_million("0", "10").unwrap())
}

/// Runs `n` requests at once, spread over `stacks` round robin; returns the
/// statuses.
async fn concurrently<S, B, F>(stacks: &[S], n: usize, request: F) -> Vec<StatusCode>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Debug,
    F: Fn(usize) -> Request<Full<Bytes>>,
{
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let svc = stacks[i % stacks.len()].clone();
            let req = request(i);
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                send(&svc, req).await.0
            })
        })
        .collect();
    let mut statuses = Vec::with_capacity(n);
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses
}

// ---------------------------------------------------------------------------
// Several instances, one Redis
// ---------------------------------------------------------------------------

/// 300 concurrent requests of two keys sharing a $0.50 team budget, spread
/// over three instances: each reserves its worst case ($0.03) and costs
/// $0.01. Returns the team's status, the keys' spend, and the requests served.
async fn three_instances_share_budgets(
    policy: ReservePolicy,
) -> (tollgate::budget::BudgetStatus, Money, i64) {
    let server = RedisServer::start();
    let team = BudgetSpec::budget(BudgetScope::Team("t".into()), usd("0.50"), Period::Monthly);
    let key = |id: &str| BudgetSpec::budget(BudgetScope::Key(id.into()), usd("1"), Period::Monthly);
    let bob = principal("bob", &[], &[key("bob"), team.clone()]);
    let eve = principal("eve", &[], &[key("eve"), team.clone()]);
    let mut stacks = Vec::new();
    for _ in 0..3 {
        let ledger = RedisLedger::new(patient_instance(&server).await);
        stacks.push(
            ServiceBuilder::new()
                .layer(BudgetLayer::with_ledger(pricing(), ledger).policy(policy))
                .service(service_fn(upstream)),
        );
    }
    let statuses = concurrently(&stacks, 300, |i| {
        chat(Some(if i % 2 == 0 { &bob } else { &eve }), 3_000)
    })
    .await;
    let served = statuses.iter().filter(|s| **s == StatusCode::OK).count() as i64;
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::PAYMENT_REQUIRED)
    );

    let ledger = RedisLedger::new(instance(&server).await);
    // Settlement runs when each body ends; give the last ones a moment.
    let mut team_status = ledger.read(&team).await.unwrap();
    for _ in 0..100 {
        if team_status.reserved == Money::ZERO {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        team_status = ledger.read(&team).await.unwrap();
    }
    let bob_spent = ledger.read(&key("bob")).await.unwrap().spent;
    let eve_spent = ledger.read(&key("eve")).await.unwrap().spent;
    assert_eq!(team_status.reserved, Money::ZERO);
    assert_eq!(team_status.spent, Money::from_nanos(served * 10_000_000));
    assert!(served >= 16, "only {served} requests served");
    (team_status, bob_spent + eve_spent, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_budgets_are_never_overshot_by_three_instances() {
    let (team, keys_spent, _) = three_instances_share_budgets(ReservePolicy::Strict).await;
    assert!(team.spent <= usd("0.50"), "overshot: {team:?}");
    // All or nothing: every charge went to the key and to the team.
    assert_eq!(keys_spent, team.spent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bounded_budgets_overshoot_by_at_most_one_request_across_three_instances() {
    let (team, keys_spent, _) = three_instances_share_budgets(ReservePolicy::Bounded).await;
    assert!(
        team.spent <= usd("0.51"),
        "beyond one request's excess: {team:?}"
    );
    assert_eq!(keys_spent, team.spent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_ledgers_under_concurrency_never_overshoot_a_strict_budget() {
    let server = redis_server!();
    let mut ledgers = Vec::new();
    for _ in 0..3 {
        ledgers.push(RedisLedger::new(patient_instance(&server).await));
    }
    let budgets: Arc<[BudgetSpec]> = [
        BudgetSpec::budget(BudgetScope::Key("k".into()), usd("1"), Period::Monthly),
        BudgetSpec::balance(BudgetScope::Org("o".into()), usd("5")),
    ]
    .into();
    let start = Arc::new(tokio::sync::Barrier::new(600));
    let tasks: Vec<_> = (0..600)
        .map(|i| {
            let (ledger, budgets, start) = (ledgers[i % 3].clone(), budgets.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                match ledger
                    .reserve(&budgets, usd("0.03"), ReservePolicy::Strict)
                    .await
                    .unwrap()
                {
                    ReserveOutcome::Reserved { reservation, .. } => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        ledger
                            .settle(&reservation, &Charge::cost(usd("0.01")))
                            .await
                            .unwrap();
                        1
                    }
                    ReserveOutcome::Denied { .. } => 0,
                }
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap();
    }
    let key = ledgers[0].read(&budgets[0]).await.unwrap();
    let org = ledgers[1].read(&budgets[1]).await.unwrap();
    assert!(key.spent <= usd("1"), "{key:?}");
    assert_eq!(key.spent, Money::from_nanos(10_000_000 * admitted));
    assert_eq!(org.spent, key.spent);
    assert_eq!((key.reserved, org.reserved), (Money::ZERO, Money::ZERO));
    assert!(admitted >= 33, "{admitted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_revoked_on_one_instance_is_refused_by_the_others_within_a_second() {
    let server = redis_server!();
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(RedisKeyStore::new(instance(&server).await));
    }
    wait_until(|| stores.iter().all(RedisKeyStore::is_listening)).await;
    stores[0]
        .insert(KeyRecord::new("alice", KeyHash::of("sk-alice")))
        .await
        .unwrap();
    let stacks: Vec<_> = stores
        .iter()
        .map(|s| {
            ServiceBuilder::new()
                .layer(AuthLayer::new(s.clone()))
                .service(service_fn(upstream))
        })
        .collect();
    for stack in &stacks {
        // Twice: the second answer comes from the instance's cache.
        assert_eq!(send(stack, with_key("sk-alice")).await.0, StatusCode::OK);
        assert_eq!(send(stack, with_key("sk-alice")).await.0, StatusCode::OK);
    }
    assert!(stores.iter().all(|s| s.cached() == 1));

    let revoked_at = Instant::now();
    assert!(stores[0].revoke("alice").await.unwrap());
    let mut took = Vec::new();
    for stack in &stacks[1..] {
        loop {
            let (status, _, body) = send(stack, with_key("sk-alice")).await;
            if status == StatusCode::UNAUTHORIZED {
                assert_eq!(error_code(&body), "revoked_api_key");
                took.push(revoked_at.elapsed());
                break;
            }
            assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "still admitted after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    eprintln!("revocation seen by the other instances after {took:?}");
    assert!(took.iter().all(|t| *t < Duration::from_secs(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_store_admin_operations() {
    let server = redis_server!();
    let a = RedisKeyStore::new(instance(&server).await);
    let b = RedisKeyStore::new(instance(&server).await);
    wait_until(|| a.is_listening() && b.is_listening()).await;

    // An unknown key is remembered as unknown on b; minting it on a makes it
    // work on b at once all the same.
    assert!(b.lookup(&KeyHash::of("sk-1")).await.unwrap().is_none());
    let mut record = KeyRecord::new("k", KeyHash::of("sk-1"));
    record.team = Some("t".into());
    record.rate_limits = vec![Limit::requests_per_minute(7)];
    a.insert(record.clone()).await.unwrap();
    wait_for_lookup(&b, "sk-1", |r| r.is_some()).await;
    assert_eq!(*b.get("k").await.unwrap().unwrap(), record);

    // Another key with the same secret is refused.
    let clash = a.insert(KeyRecord::new("other", KeyHash::of("sk-1"))).await;
    assert!(matches!(clash, Err(KeyWriteError::DuplicateSecret(ref e)) if e.existing == "k"));

    // Rotation: the old secret stops working everywhere.
    a.insert(KeyRecord::new("k", KeyHash::of("sk-2")))
        .await
        .unwrap();
    wait_for_lookup(&b, "sk-1", |r| r.is_none()).await;
    assert!(b.lookup(&KeyHash::of("sk-2")).await.unwrap().is_some());

    assert!(a.set_disabled("k", true).await.unwrap());
    wait_for_lookup(&b, "sk-2", |r| r.is_some_and(|r| r.disabled)).await;
    assert!(!a.set_disabled("nobody", true).await.unwrap());

    assert!(b.delete("k").await.unwrap());
    wait_for_lookup(&a, "sk-2", |r| r.is_none()).await;
    assert!(!b.delete("k").await.unwrap());
    assert!(a.get("k").await.unwrap().is_none());
}

async fn wait_until(mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ready() {
        assert!(Instant::now() < deadline, "not ready within 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_for_lookup(
    store: &RedisKeyStore,
    secret: &str,
    expected: impl Fn(Option<&KeyRecord>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let found = store.lookup(&KeyHash::of(secret)).await.unwrap();
        if expected(found.as_deref()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "lookup of {secret} still {found:?} after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ---------------------------------------------------------------------------
// Faults: Redis killed, restarted, frozen
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_redis_mid_traffic_each_layer_follows_its_policy_and_resumes_on_restart() {
    let mut server = redis_server!();
    let redis = instance(&server).await;
    let keys = RedisKeyStore::new(redis.clone());
    let open_keys = RedisKeyStore::builder(redis.clone())
        .on_unavailable(FailurePolicy::FailOpen)
        .build();
    wait_until(|| keys.is_listening() && open_keys.is_listening()).await;
    let alice = KeyRecord::new("alice", KeyHash::of("sk-alice"));
    keys.insert(alice.clone()).await.unwrap();

    let budget = BudgetSpec::budget(BudgetScope::Key("carol".into()), usd("100"), Period::Daily);
    // Carol makes the background traffic; the checks are dave's.
    let carol = principal(
        "carol",
        &[Limit::requests_per_minute(10)],
        std::slice::from_ref(&budget),
    );
    let dave = principal(
        "dave",
        &[Limit::requests_per_minute(10)],
        std::slice::from_ref(&budget),
    );

    let envelope = || ErrorEnvelopeLayer::new();
    let auth = ServiceBuilder::new()
        .layer(envelope())
        .layer(AuthLayer::new(keys.clone()))
        .service(service_fn(upstream));
    let auth_open = ServiceBuilder::new()
        .layer(envelope())
        .layer(AuthLayer::new(open_keys.clone()))
        .service(service_fn(upstream));
    let budgets = ServiceBuilder::new()
        .layer(envelope())
        .layer(BudgetLayer::with_ledger(
            pricing(),
            RedisLedger::new(redis.clone()),
        ))
        .service(service_fn(upstream));
    let limits_open = ServiceBuilder::new()
        .layer(RateLimitLayer::new().store(RedisRateLimitStore::new(redis.clone())))
        .service(service_fn(upstream));
    let limits_closed = ServiceBuilder::new()
        .layer(envelope())
        .layer(
            RateLimitLayer::new()
                .store(RedisRateLimitStore::new(redis.clone()))
                .on_store_error(RateLimitFailure::FailClosed),
        )
        .service(service_fn(upstream));
    let limits_fallback = ServiceBuilder::new()
        .layer(
            RateLimitLayer::new().store(
                RedisRateLimitStore::builder(redis.clone())
                    .fail_open_fallback(MemoryRateLimitStore::new(), 0.5)
                    .build(),
            ),
        )
        .service(service_fn(upstream));

    // Healthy: everything is served (and alice is cached by both key stores).
    for _ in 0..2 {
        assert_eq!(send(&auth, with_key("sk-alice")).await.0, StatusCode::OK);
        assert_eq!(
            send(&auth_open, with_key("sk-alice")).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(
        send(&budgets, chat(Some(&carol), 100)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(&limits_closed, chat(Some(&carol), 10)).await.0,
        StatusCode::OK
    );

    // Traffic runs through every stack while Redis is killed.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic: Vec<_> = (0..4)
        .map(|i| {
            let (auth, budgets, limits_open) = (auth.clone(), budgets.clone(), limits_open.clone());
            let (carol, stop) = (carol.clone(), stop.clone());
            tokio::spawn(async move {
                let mut served = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let status = match i % 3 {
                        0 => send_bounded(&auth, with_key("sk-alice")).await.0,
                        1 => send_bounded(&budgets, chat(Some(&carol), 100)).await.0,
                        _ => send_bounded(&limits_open, chat(Some(&carol), 10)).await.0,
                    };
                    served += usize::from(status == StatusCode::OK);
                    // While Redis is down the stores answer at once: without
                    // a pause this loop would never give its thread back.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                served
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Down. Budgets and keys fail closed: 503 store_unavailable, retry advised.
    let (status, headers, body) = send_bounded(&budgets, chat(Some(&dave), 100)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["x-should-retry"], "true");
    assert_eq!(error_code(&body), "store_unavailable");
    let (status, headers, body) = send_bounded(&auth, with_key("sk-alice")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["x-should-retry"], "true");
    assert_eq!(error_code(&body), "store_unavailable");
    // A fail-open key store serves the keys it knows, and only those.
    assert_eq!(
        send_bounded(&auth_open, with_key("sk-alice")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send_bounded(&auth_open, with_key("sk-mallory")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Rate limits: admitted without limits by default, 503 when closed, and
    // limited at this instance's share (5 of 10) with the fallback.
    for _ in 0..20 {
        assert_eq!(
            send_bounded(&limits_open, chat(Some(&dave), 10)).await.0,
            StatusCode::OK
        );
    }
    let (status, _, body) = send_bounded(&limits_closed, chat(Some(&dave), 10)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(&body), "store_unavailable");
    let mut fallback_admitted = 0;
    for _ in 0..20 {
        let status = send_bounded(&limits_fallback, chat(Some(&dave), 10))
            .await
            .0;
        fallback_admitted += usize::from(status == StatusCode::OK);
    }
    assert_eq!(fallback_admitted, 5);

    // Restarted (empty: no persistence): service resumes on its own.
    server.restart();
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(5);
    while send_bounded(&budgets, chat(Some(&dave), 100)).await.0 != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "budgets did not resume within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "budgets resumed {:?} after the restart",
        restarted.elapsed()
    );
    assert_eq!(
        send_bounded(&limits_closed, chat(Some(&dave), 10)).await.0,
        StatusCode::OK
    );
    // The restarted Redis lost the keys: re-provisioned, they work again.
    keys.insert(alice).await.unwrap();
    wait_until(|| keys.is_listening()).await;
    assert_eq!(
        send_bounded(&auth, with_key("sk-alice")).await.0,
        StatusCode::OK
    );
    // The fallback is left as soon as Redis answers: Redis has fresh state.
    assert_eq!(
        send_bounded(&limits_fallback, chat(Some(&dave), 10))
            .await
            .0,
        StatusCode::OK
    );

    stop.store(true, Ordering::Relaxed);
    for task in traffic {
        // No panic, no request past its bound (asserted in `send_bounded`).
        assert!(task.await.unwrap() > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_times_out_every_call_then_recovers() {
    let server = redis_server!();
    let ledger = RedisLedger::new(instance(&server).await);
    let limits = RedisRateLimitStore::new(ledger.connection().clone());
    let budget = BudgetSpec::budget(BudgetScope::Org("o".into()), usd("1"), Period::Never);
    ledger.read(&budget).await.unwrap();

    server.freeze();
    let rl = [Limit::requests_per_minute(5)];
    let scopes = [ScopeCharge {
        key: RateLimitKey::new("a"),
        limits: &rl,
        costs: &[1],
        max_concurrent: None,
    }];
    let acquire = Acquire { scopes: &scopes };
    for _ in 0..6 {
        let started = Instant::now();
        let read = ledger.read(&budget).await;
        assert!(
            matches!(read, Err(StoreError::Timeout | StoreError::Unavailable(_))),
            "{read:?}"
        );
        assert!(
            started.elapsed() < CALL_TIMEOUT + SLACK,
            "{:?}",
            started.elapsed()
        );
        let started = Instant::now();
        assert!(limits.acquire(&acquire).await.is_err());
        assert!(
            started.elapsed() < CALL_TIMEOUT + SLACK,
            "{:?}",
            started.elapsed()
        );
    }

    server.thaw();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ledger.read(&budget).await.is_err() {
        assert!(Instant::now() < deadline, "no recovery within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(limits.acquire(&acquire).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_starting_while_redis_is_down_connects_when_it_is_up() {
    let mut server = redis_server!();
    server.kill();
    let redis = RedisConnection::connect_lazy(config(&server)).unwrap();
    assert!(RedisConnection::connect(config(&server)).await.is_err());
    let ledger = RedisLedger::new(redis.clone());
    let budget = BudgetSpec::balance(BudgetScope::Org("o".into()), usd("3"));
    let started = Instant::now();
    assert!(matches!(
        ledger.read(&budget).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(
        started.elapsed() < CALL_TIMEOUT,
        "a call while down fails at once"
    );
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ledger.read(&budget).await.is_err() {
        assert!(Instant::now() < deadline, "not connected within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(redis.is_connected());
    assert!(redis.ping().await.unwrap() < CALL_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_reservation_is_released_by_its_lease() {
    let server = redis_server!();
    let lease = Duration::from_millis(300);
    let crashed = RedisLedger::new(instance(&server).await).lease(lease);
    let other = RedisLedger::new(instance(&server).await).lease(lease);
    let budget = specs([BudgetSpec::budget(
        BudgetScope::Key("k".into()),
        usd("1"),
        Period::Monthly,
    )]);

    let ReserveOutcome::Reserved { reservation, .. } = crashed
        .reserve(&budget, usd("1"), ReservePolicy::Strict)
        .await
        .unwrap()
    else {
        panic!("reserved")
    };
    drop(crashed); // never settled
    let denied = other
        .reserve(&budget, usd("0.5"), ReservePolicy::Strict)
        .await
        .unwrap();
    assert!(matches!(denied, ReserveOutcome::Denied { .. }));

    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    // Any operation of any instance sweeps the expired hold.
    assert_eq!(other.read(&budget[0]).await.unwrap().reserved, Money::ZERO);
    let ReserveOutcome::Reserved {
        reservation: live, ..
    } = other
        .reserve(&budget, usd("0.5"), ReservePolicy::Strict)
        .await
        .unwrap()
    else {
        panic!("reserved after the lease")
    };
    // The crashed request's late settlement still charges, and leaves the
    // live hold alone.
    let late = RedisLedger::new(instance(&server).await);
    let settled = late
        .settle(&reservation, &Charge::cost(usd("0.2")))
        .await
        .unwrap();
    assert_eq!(settled.statuses[0].spent, usd("0.2"));
    assert_eq!(settled.statuses[0].reserved, usd("0.5"));
    other.release(&live).await.unwrap();
    let status = other.read(&budget[0]).await.unwrap();
    assert_eq!((status.spent, status.reserved), (usd("0.2"), Money::ZERO));
    assert_eq!(hold_count(&server).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_made_while_redis_is_down_is_applied_when_it_is_back() {
    let mut server = redis_server!();
    let ledger = RedisLedger::new(instance(&server).await);
    let limits = RedisRateLimitStore::new(ledger.connection().clone());
    let budget = specs([BudgetSpec::balance(BudgetScope::Org("o".into()), usd("5"))]);
    let reservation = reserved(
        ledger
            .reserve(&budget, usd("1"), ReservePolicy::Strict)
            .await
            .unwrap(),
    );
    server.kill();
    // The first call finds the connection broken; later ones are not sent.
    assert!(ledger.read(&budget[0]).await.is_err());
    assert!(!ledger.connection().is_connected());
    let settlement = tokio::spawn({
        let ledger = ledger.clone();
        async move {
            ledger
                .settle(&reservation, &Charge::cost(usd("0.25")))
                .await
        }
    });
    let rl = [Limit::tokens_per_minute(1_000)];
    let refund = tokio::spawn(async move {
        let scopes = [ScopeSettle {
            key: RateLimitKey::new("k"),
            limits: &rl,
            deltas: &[-5],
            release: true,
        }];
        limits
            .settle(&Settle {
                scopes: &scopes,
                receipt: tollgate::rate_limit::Receipt::NONE,
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    // Both wait for Redis rather than fail, then apply.
    let settled = settlement.await.unwrap().unwrap();
    assert!(refund.await.unwrap().is_ok());
    // (The restarted Redis had lost the hold and the balance: only the
    // charge is left, on a fresh opening balance.)
    assert_eq!(settled.statuses[0].spent, usd("0.25"));
    assert_eq!(
        ledger.read(&budget[0]).await.unwrap().remaining(),
        usd("4.75")
    );
}

/// Holds left in Redis (the index and the hashes).
async fn hold_count(server: &RedisServer) -> usize {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let index: usize = redis::cmd("ZCARD")
        .arg("tollgate:holds")
        .query_async(&mut conn)
        .await
        .unwrap();
    let hashes: Vec<String> = redis::cmd("KEYS")
        .arg("tollgate:hold:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    index + hashes.len()
}

// ---------------------------------------------------------------------------
// Semantics: the same answers as the memory stores
// ---------------------------------------------------------------------------

/// A small deterministic generator (no extra dependency).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Budgets as the ledger takes them.
fn specs<const N: usize>(budgets: [BudgetSpec; N]) -> Arc<[BudgetSpec]> {
    Arc::new(budgets)
}

fn reserved(outcome: ReserveOutcome) -> Reservation {
    match outcome {
        ReserveOutcome::Reserved { reservation, .. } => reservation,
        denied => panic!("expected a reservation, got {denied:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_semantics_match_the_memory_ledger() {
    let server = redis_server!();
    let clock = ManualClock::at(rfc3339("2026-01-31T23:59:00Z"));
    let ledger = RedisLedger::new(instance(&server).await).clock(clock.clone());
    let key = |id: &str, dollars: &str, period| {
        BudgetSpec::budget(BudgetScope::Key(id.into()), usd(dollars), period)
    };

    // Strict refuses what Bounded clamps; nothing remains while in flight.
    let b = specs([key("a", "10", Period::Never)]);
    let r = reserved(
        ledger
            .reserve(&b, usd("9"), ReservePolicy::Strict)
            .await
            .unwrap(),
    );
    ledger.settle(&r, &Charge::cost(usd("9"))).await.unwrap();
    match ledger
        .reserve(&b, usd("2"), ReservePolicy::Strict)
        .await
        .unwrap()
    {
        ReserveOutcome::Denied { index, status } => {
            assert_eq!(index, 0);
            assert_eq!(status.remaining(), usd("1"));
        }
        other => panic!("{other:?}"),
    }
    let r = reserved(
        ledger
            .reserve(&b, usd("2"), ReservePolicy::Bounded)
            .await
            .unwrap(),
    );
    assert_eq!(r.amount(), usd("1"));
    for policy in [ReservePolicy::Strict, ReservePolicy::Bounded] {
        let denied = ledger.reserve(&b, Money::ZERO, policy).await.unwrap();
        assert!(matches!(denied, ReserveOutcome::Denied { .. }));
    }
    ledger.settle(&r, &Charge::cost(usd("2"))).await.unwrap();
    assert_eq!(ledger.read(&b[0]).await.unwrap().remaining(), usd("-1"));

    // All or nothing, the tightest budget reported, a repeated scope once.
    let team = BudgetSpec::budget(BudgetScope::Team("t".into()), usd("1"), Period::Monthly);
    let x = specs([
        key("x", "10", Period::Monthly),
        team.clone(),
        key("x", "10", Period::Monthly),
    ]);
    let r = reserved(
        ledger
            .reserve(&x, usd("0.8"), ReservePolicy::Strict)
            .await
            .unwrap(),
    );
    let settled = ledger.settle(&r, &Charge::cost(usd("0.8"))).await.unwrap();
    assert_eq!(settled.statuses.len(), 3);
    assert_eq!(settled.statuses[0], settled.statuses[2]);
    assert_eq!(settled.statuses[0].spent, usd("0.8"));
    let y = specs([key("y", "10", Period::Monthly), team.clone()]);
    match ledger
        .reserve(&y, usd("0.5"), ReservePolicy::Strict)
        .await
        .unwrap()
    {
        ReserveOutcome::Denied { index, .. } => assert_eq!(index, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(ledger.read(&y[0]).await.unwrap().reserved, Money::ZERO);
    match ledger
        .reserve(&y, usd("0.1"), ReservePolicy::Strict)
        .await
        .unwrap()
    {
        ReserveOutcome::Reserved {
            index,
            status,
            reservation,
        } => {
            assert_eq!(index, 1);
            assert_eq!(status.remaining(), usd("0.2"));
            ledger.release(&reservation).await.unwrap();
            ledger.release(&reservation).await.unwrap(); // twice is harmless
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ledger.read(&team).await.unwrap().reserved, Money::ZERO);

    // Calendar periods on the ledger's clock: the month ends at 00:00 UTC.
    let monthly = specs([key("m", "1", Period::Monthly)]);
    let r = reserved(
        ledger
            .reserve(&monthly, usd("1"), ReservePolicy::Strict)
            .await
            .unwrap(),
    );
    ledger.settle(&r, &Charge::cost(usd("1"))).await.unwrap();
    let status = ledger.read(&monthly[0]).await.unwrap();
    assert_eq!(status.remaining(), Money::ZERO);
    assert_eq!(status.period.start, rfc3339("2026-01-01T00:00:00Z"));
    assert_eq!(status.period.end, Some(rfc3339("2026-02-01T00:00:00Z")));
    let held = reserved(
        ledger
            .reserve(&specs([team.clone()]), usd("0.1"), ReservePolicy::Strict)
            .await
            .unwrap(),
    );
    clock.advance(Duration::from_secs(59));
    assert_eq!(ledger.read(&monthly[0]).await.unwrap().spent, usd("1"));
    clock.advance(Duration::from_secs(1));
    let status = ledger.read(&monthly[0]).await.unwrap();
    assert_eq!(status.spent, Money::ZERO);
    assert_eq!(status.period.end, Some(rfc3339("2026-03-01T00:00:00Z")));
    // A hold from January settles into February; the hold still counted.
    assert_eq!(ledger.read(&team).await.unwrap().reserved, usd("0.1"));
    let settled = ledger
        .settle(&held, &Charge::cost(usd("0.05")))
        .await
        .unwrap();
    assert_eq!(
        (settled.statuses[0].spent, settled.statuses[0].reserved),
        (usd("0.05"), Money::ZERO)
    );
    for (period, start, end) in [
        (
            Period::Daily,
            "2026-02-01T00:00:00Z",
            "2026-02-02T00:00:00Z",
        ),
        (
            Period::Weekly,
            "2026-01-26T00:00:00Z",
            "2026-02-02T00:00:00Z",
        ),
        (
            Period::Rolling(Duration::from_secs(7_200)),
            "2026-02-01T00:00:00Z",
            "2026-02-01T02:00:00Z",
        ),
        (Period::Never, "1970-01-01T00:00:00Z", ""),
    ] {
        let status = ledger.read(&key("p", "1", period)).await.unwrap();
        assert_eq!(status.period.start, rfc3339(start), "{period}");
        assert_eq!(
            status.period.end,
            (!end.is_empty()).then(|| rfc3339(end)),
            "{period}"
        );
    }

    // Balances open once, take top-ups, never reset.
    let wallet = BudgetSpec::balance(BudgetScope::Org("o".into()), usd("1"));
    let r = reserved(
        ledger
            .reserve(&specs([wallet.clone()]), usd("1"), ReservePolicy::Strict)
            .await
            .unwrap(),
    );
    ledger.settle(&r, &Charge::cost(usd("1"))).await.unwrap();
    let denied = ledger
        .reserve(
            &specs([wallet.clone()]),
            Money::ZERO,
            ReservePolicy::Bounded,
        )
        .await
        .unwrap();
    assert!(
        matches!(denied, ReserveOutcome::Denied { status, .. } if status.mode == BudgetMode::Balance)
    );
    let status = ledger.top_up(&wallet, usd("3"), None).await.unwrap().status;
    assert_eq!((status.limit, status.remaining()), (usd("4"), usd("3")));
    clock.advance(Duration::from_secs(400 * 86_400));
    assert_eq!(ledger.read(&wallet).await.unwrap().remaining(), usd("3"));
    let fresh = BudgetSpec::balance(BudgetScope::Org("p".into()), usd("2"));
    assert_eq!(
        ledger
            .top_up(&fresh, usd("1"), None)
            .await
            .unwrap()
            .status
            .remaining(),
        usd("3")
    );

    // Money is exact to the nano-dollar over the whole i64 range.
    let huge = BudgetSpec::balance(
        BudgetScope::Org("big".into()),
        Money::from_nanos(i64::MAX - 1),
    );
    let r = reserved(
        ledger
            .reserve(
                &specs([huge.clone()]),
                Money::from_nanos(i64::MAX - 2),
                ReservePolicy::Strict,
            )
            .await
            .unwrap(),
    );
    assert_eq!(
        ledger.read(&huge).await.unwrap().remaining(),
        Money::from_nanos(1)
    );
    ledger
        .settle(&r, &Charge::cost(Money::from_nanos(3)))
        .await
        .unwrap();
    let status = ledger.read(&huge).await.unwrap();
    assert_eq!(
        (status.spent, status.remaining()),
        (Money::from_nanos(3), Money::from_nanos(i64::MAX - 4))
    );
}

/// An outcome without its reservation id (ids differ between ledgers).
fn shape(outcome: &ReserveOutcome) -> (bool, usize, Option<Money>, tollgate::budget::BudgetStatus) {
    match outcome {
        ReserveOutcome::Reserved {
            reservation,
            index,
            status,
        } => (true, *index, Some(reservation.amount()), *status),
        ReserveOutcome::Denied { index, status } => (false, *index, None, *status),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_admits_one_partial_hold_at_a_time_like_the_memory_ledger() {
    let server = redis_server!();
    let clock = ManualClock::at(rfc3339("2026-05-05T10:00:00Z"));
    let redis = RedisLedger::new(instance(&server).await).clock(clock.clone());
    let memory = tollgate::store::memory::MemoryLedger::new().with_clock(clock.clone());
    let team = BudgetSpec::budget(BudgetScope::Team("t".into()), usd("1"), Period::Monthly);
    let both = specs([
        BudgetSpec::budget(BudgetScope::Key("k".into()), usd("10"), Period::Monthly),
        team,
    ]);
    let bounded = ReservePolicy::Bounded;

    let mut held = Vec::new();
    // Whole, partial (clamped to the team's $0.20), refused (a second
    // partial), whole again, and partial once the first partial settled.
    for (step, amount) in ["0.8", "0.5", "-release 0", "1", "0.5", "-settle 1", "1"]
        .into_iter()
        .enumerate()
    {
        if let Some(which) = amount.strip_prefix("-release ") {
            let (m, r): &(Reservation, Reservation) = &held[which.parse::<usize>().unwrap()];
            memory.release(m).await.unwrap();
            redis.release(r).await.unwrap();
            continue;
        }
        if let Some(which) = amount.strip_prefix("-settle ") {
            let (m, r): &(Reservation, Reservation) = &held[which.parse::<usize>().unwrap()];
            let expected = memory.settle(m, &Charge::cost(usd("0.3"))).await.unwrap();
            assert_eq!(
                redis.settle(r, &Charge::cost(usd("0.3"))).await.unwrap(),
                expected
            );
            continue;
        }
        let expected = memory.reserve(&both, usd(amount), bounded).await.unwrap();
        let got = redis.reserve(&both, usd(amount), bounded).await.unwrap();
        assert_eq!(
            shape(&got),
            shape(&expected),
            "step {step}: reserve {amount}"
        );
        if let (
            ReserveOutcome::Reserved { reservation: m, .. },
            ReserveOutcome::Reserved { reservation: r, .. },
        ) = (expected, got)
        {
            held.push((m, r));
        }
    }
    assert_eq!(held.len(), 4);
    assert_eq!(held[1].1.amount(), usd("0.2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_keys_expire_or_persist_by_what_they_hold() {
    let server = redis_server!();
    let ledger = RedisLedger::new(instance(&server).await);
    let daily = BudgetSpec::budget(BudgetScope::Key("d".into()), usd("1"), Period::Daily);
    let wallet = BudgetSpec::balance(BudgetScope::Org("w".into()), usd("1"));
    for spec in [&daily, &wallet] {
        let r = reserved(
            ledger
                .reserve(&specs([spec.clone()]), usd("0.1"), ReservePolicy::Strict)
                .await
                .unwrap(),
        );
        ledger.settle(&r, &Charge::cost(usd("0.1"))).await.unwrap();
    }
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pttl = |key: &'static str| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("PTTL")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };
    let day_ms = 86_400_000;
    let lease_ms = 3_600_000;
    let daily_ttl = pttl("tollgate:budget:key:d").await;
    assert!(
        daily_ttl > lease_ms && daily_ttl <= day_ms + lease_ms + 60_000,
        "{daily_ttl}"
    );
    assert_eq!(pttl("tollgate:budget:org:w").await, -1, "a balance is kept");
    assert_eq!(hold_count(&server).await, 0);
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
}

// ---------------------------------------------------------------------------
// The scripts' arithmetic: exact where Lua has only doubles
// ---------------------------------------------------------------------------

const COMMON_LUA: &str = include_str!("../src/store/redis/scripts/common.lua");
const MONEY_LUA: &str = include_str!("../src/store/redis/scripts/money.lua");

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn lua_mul_div_is_exact_over_its_whole_domain() {
    let server = redis_server!();
    let mut conn = raw(&server).await;
    let script = redis::Script::new(&format!(
        "{COMMON_LUA}\nlocal out = {{}}\n\
         for i = 1, #ARGV, 3 do\n\
           local q, exact = mul_div(tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]))\n\
           out[#out + 1] = istr(q) .. (exact and '=' or '~')\n\
         end\nreturn out"
    ));
    let max: u128 = 1 << 53;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    // Values of every magnitude below 2^bits.
    let mut pick = |bits: u64| {
        let width = 1 + rng.below(bits);
        rng.below(1u64 << width)
    };
    for _ in 0..8 {
        let triples: Vec<(u64, u64, u64)> = (0..500)
            .map(|_| (pick(53), pick(53), pick(51).max(1)))
            .collect();
        let mut invocation = script.prepare_invoke();
        for (a, b, d) in &triples {
            invocation
                .arg(a.to_string())
                .arg(b.to_string())
                .arg(d.to_string());
        }
        let got: Vec<String> = invocation.invoke_async(&mut conn).await.unwrap();
        for ((a, b, d), got) in triples.iter().zip(got) {
            let p = u128::from(*a) * u128::from(*b);
            let q = p / u128::from(*d);
            let expected = if q >= max {
                format!("{max}~")
            } else {
                format!("{q}{}", if p % u128::from(*d) == 0 { '=' } else { '~' })
            };
            assert_eq!(got, expected, "mul_div({a}, {b}, {d})");
        }
    }
}

#[tokio::test]
async fn lua_money_is_exact_over_the_i64_range() {
    let server = redis_server!();
    let mut conn = raw(&server).await;
    let script = redis::Script::new(&format!(
        "{COMMON_LUA}\n{MONEY_LUA}\nlocal out = {{}}\n\
         for i = 1, #ARGV, 2 do\n\
           local a, b = m_parse(ARGV[i]), m_parse(ARGV[i + 1])\n\
           out[#out + 1] = m_str(a) .. ' ' .. m_str(m_add(a, b)) .. ' ' .. m_str(m_sub(a, b)) .. ' ' .. m_cmp(a, b)\n\
         end\nreturn out"
    ));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut pick = || {
        let v = match rng.below(4) {
            0 => rng.below(2_000_000_000),
            1 => rng.below(1 << 40),
            _ => rng.below(u64::MAX),
        } as i64;
        if rng.below(2) == 0 {
            v
        } else {
            v.wrapping_neg()
        }
    };
    let mut pairs: Vec<(i64, i64)> = (0..2_000).map(|_| (pick(), pick())).collect();
    pairs.extend([
        (0, 0),
        (i64::MAX, i64::MAX),
        (i64::MIN + 1, i64::MAX),
        (-1, 1),
        (-999_999_999, -1),
    ]);
    for chunk in pairs.chunks(500) {
        let mut invocation = script.prepare_invoke();
        for (a, b) in chunk {
            invocation.arg(a.to_string()).arg(b.to_string());
        }
        let got: Vec<String> = invocation.invoke_async(&mut conn).await.unwrap();
        for ((a, b), got) in chunk.iter().zip(got) {
            let (a, b) = (i128::from(*a), i128::from(*b));
            let expected = format!("{a} {} {} {}", a + b, a - b, (a > b) as i8 - (a < b) as i8);
            assert_eq!(got, expected);
        }
    }
}

// ---- ledger: aggregates, idempotent top-ups, resets ----------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_settlements_keep_spend_aggregates_like_memory() {
    use tollgate::budget::{Attribution, SpendGroup, SpendQuery, SpendTokens};
    let server = RedisServer::start();
    let redis = RedisLedger::new(instance(&server).await);
    let memory = tollgate::store::memory::MemoryLedger::new();
    let alice = BudgetScope::Key("alice".into());
    let bob = BudgetScope::Key("bob".into());
    let team = BudgetScope::Team("research".into());
    let budget = BudgetSpec::budget(alice.clone(), usd("10"), Period::Monthly);
    let charges = [
        (vec![alice.clone(), team.clone()], "gpt-4o", "0.5"),
        (vec![bob.clone(), team.clone()], "gpt-4o", "0.25"),
        (vec![alice.clone(), team.clone()], "o3|mini:x", "1.125"),
    ];
    for ledger in [&redis as &dyn Ledger, &memory] {
        for (scopes, model, cost) in &charges {
            let budgets: Arc<[BudgetSpec]> = if scopes[0] == alice {
                Arc::new([budget.clone()])
            } else {
                Arc::new([])
            };
            let reservation = tollgate::budget::Reservation::unheld(budgets);
            let charge = Charge::new(usd(cost), SpendTokens::new(100, 200, 7))
                .attributed(Attribution::new(scopes.clone(), *model));
            let settled = ledger.settle(&reservation, &charge).await.unwrap();
            assert!(settled.day > 20_000);
        }
        assert_eq!(ledger.read(&budget).await.unwrap().spent, usd("1.625"));
    }
    for query in [
        SpendQuery::new(SpendGroup::Key),
        SpendQuery::new(SpendGroup::Team),
        SpendQuery::new(SpendGroup::Model),
        SpendQuery::new(SpendGroup::Day),
        SpendQuery::new(SpendGroup::Model).scope(alice.clone()),
        SpendQuery::new(SpendGroup::Key).model("o3|mini:x"),
        SpendQuery::new(SpendGroup::Key).days(Some(0), Some(1)),
    ] {
        let (r, m) = (
            redis.spend(&query).await.unwrap(),
            memory.spend(&query).await.unwrap(),
        );
        assert_eq!(r, m, "{query:?}");
    }
    let by_key = redis
        .spend(&SpendQuery::new(SpendGroup::Key))
        .await
        .unwrap();
    assert_eq!(by_key[0].group, "alice");
    assert_eq!(by_key[0].totals.cost, usd("1.625"));
    assert_eq!(by_key[0].totals.requests, 2);
    assert_eq!(by_key[0].totals.cached_tokens, 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_top_ups_apply_once_per_key_and_resets_keep_holds() {
    let server = RedisServer::start();
    let a = RedisLedger::new(instance(&server).await);
    let b = RedisLedger::new(instance(&server).await);
    let wallet = BudgetSpec::balance(BudgetScope::Key("w".into()), usd("10"));
    let first = a.top_up(&wallet, usd("25"), Some("idem-1")).await.unwrap();
    assert!(!first.replayed);
    assert_eq!(first.status.remaining(), usd("35"));
    // The retry reaches another instance: still applied once.
    let again = b.top_up(&wallet, usd("25"), Some("idem-1")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.status.remaining(), usd("35"));
    let other = b.top_up(&wallet, usd("25"), Some("idem-2")).await.unwrap();
    assert_eq!(other.status.remaining(), usd("60"));

    let budget = BudgetSpec::budget(BudgetScope::Key("k".into()), usd("10"), Period::Monthly);
    let budgets: Arc<[BudgetSpec]> = Arc::new([budget.clone()]);
    let ReserveOutcome::Reserved { reservation, .. } = a
        .reserve(&budgets, usd("4"), ReservePolicy::Strict)
        .await
        .unwrap()
    else {
        panic!("not reserved")
    };
    a.settle(&reservation, &Charge::cost(usd("4")))
        .await
        .unwrap();
    let ReserveOutcome::Reserved {
        reservation: held, ..
    } = a
        .reserve(&budgets, usd("1"), ReservePolicy::Strict)
        .await
        .unwrap()
    else {
        panic!("not reserved")
    };
    let status = b.reset(&budget).await.unwrap();
    assert_eq!((status.spent, status.reserved), (Money::ZERO, usd("1")));
    a.release(&held).await.unwrap();
    assert_eq!(a.read(&budget).await.unwrap().remaining(), usd("10"));
    // A balance is not reset.
    assert_eq!(b.reset(&wallet).await.unwrap().remaining(), usd("60"));
}

// ---- keys: the KeyAdmin contract, two instances, the previous layout -----------

mod key_admin {
    use std::time::{SystemTime, UNIX_EPOCH};

    use tollgate::auth::{KeyAdmin, PutMode, RetiredSecret};
    use tollgate::budget::{BudgetScope, BudgetSpec, Money, Period};
    use tollgate::store::memory::MemoryKeyStore;

    use super::*;

    fn ids(page: &[Arc<KeyRecord>]) -> Vec<&str> {
        page.iter().map(|r| r.id.as_str()).collect()
    }

    async fn found(store: &dyn KeyAdmin, secret: &str) -> Option<Arc<KeyRecord>> {
        store.lookup(&KeyHash::of(secret)).await.unwrap()
    }

    fn conflict(answer: Result<Option<Arc<KeyRecord>>, StoreError>) -> String {
        match answer {
            Err(StoreError::Conflict(message)) => message,
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    /// What every [`KeyAdmin`] does, run against the memory store and the
    /// Redis store alike.
    pub(super) async fn key_admin_contract(store: &dyn KeyAdmin) {
        let put = |record: KeyRecord, mode| store.put(record, mode);
        let a = KeyRecord::new("a", KeyHash::of("sa"));
        assert!(put(a, PutMode::Create).await.unwrap().is_none());
        let again = conflict(put(KeyRecord::new("a", KeyHash::of("sx")), PutMode::Create).await);
        assert!(again.contains("`a` already exists"), "{again}");
        assert_eq!(found(store, "sa").await.unwrap().id, "a");
        assert!(found(store, "sx").await.is_none());

        // A secret of another key, current or retired, is a conflict whose
        // message names no secret; nothing is written.
        let taken = conflict(put(KeyRecord::new("b", KeyHash::of("sa")), PutMode::Upsert).await);
        assert!(!taken.contains(&KeyHash::of("sa").to_hex()), "{taken}");
        let mut b = KeyRecord::new("b", KeyHash::of("sb"));
        b.retired.push(RetiredSecret {
            hash: KeyHash::of("sa"),
            until: UNIX_EPOCH,
        });
        conflict(put(b, PutMode::Upsert).await);
        assert!(store.get("b").await.unwrap().is_none());
        assert!(found(store, "sb").await.is_none());
        assert!(
            put(KeyRecord::new("b", KeyHash::of("sb")), PutMode::Upsert)
                .await
                .unwrap()
                .is_none()
        );

        // A rotation: the record answers to both secrets, the new one
        // current, and returns what it replaced.
        let until = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let mut a = (*store.get("a").await.unwrap().unwrap()).clone();
        a.rotate(KeyHash::of("sa2"), until);
        let replaced = put(a, PutMode::Upsert).await.unwrap().unwrap();
        assert_eq!(replaced.secret_hash, KeyHash::of("sa"));
        for secret in ["sa", "sa2"] {
            let record = found(store, secret).await.unwrap();
            assert_eq!(record.id, "a");
            assert_eq!(record.secret_hash, KeyHash::of("sa2"));
            assert_eq!(
                record.retired,
                [RetiredSecret {
                    hash: KeyHash::of("sa"),
                    until
                }]
            );
        }
        // The retired secret is still a's: b cannot take it.
        conflict(put(KeyRecord::new("b", KeyHash::of("sa")), PutMode::Upsert).await);

        // Rotating until more than MAX_KEPT are retired forgets the oldest.
        for n in 3..3 + RetiredSecret::MAX_KEPT {
            let mut a = (*store.get("a").await.unwrap().unwrap()).clone();
            a.rotate(KeyHash::of(format!("sa{n}")), until);
            put(a, PutMode::Upsert).await.unwrap();
        }
        let a = store.get("a").await.unwrap().unwrap();
        assert_eq!(a.retired.len(), RetiredSecret::MAX_KEPT);
        assert!(found(store, "sa").await.is_none());
        assert_eq!(found(store, "sa2").await.unwrap().id, "a");

        // Replaced without its secrets: they stop working, all of them.
        let held: Vec<KeyHash> = a.secret_hashes().collect();
        put(KeyRecord::new("a", KeyHash::of("sz")), PutMode::Upsert)
            .await
            .unwrap()
            .unwrap();
        for hash in held {
            assert!(store.lookup(&hash).await.unwrap().is_none());
        }
        assert_eq!(found(store, "sz").await.unwrap().id, "a");

        // Pages in id order, odd ids included.
        for id in ["e", "c", "(d", "ü {x}"] {
            put(KeyRecord::new(id, KeyHash::of(id)), PutMode::Create)
                .await
                .unwrap();
        }
        assert_eq!(ids(&store.list(None, 2).await.unwrap()), ["(d", "a"]);
        assert_eq!(ids(&store.list(Some("(d"), 2).await.unwrap()), ["a", "b"]);
        assert_eq!(ids(&store.list(Some("b"), 2).await.unwrap()), ["c", "e"]);
        assert_eq!(ids(&store.list(Some("e"), 2).await.unwrap()), ["ü {x}"]);
        assert!(store.list(Some("ü {x}"), 2).await.unwrap().is_empty());
        assert!(store.list(None, 0).await.unwrap().is_empty());
        assert_eq!(store.list(None, usize::MAX).await.unwrap().len(), 6);

        // Every field comes back as it was put; a flag is a put.
        let mut rich = KeyRecord::new("f", KeyHash::of("sf"));
        rich.name = Some("Rich".into());
        rich.team = Some("t".into());
        rich.expires_at = Some(UNIX_EPOCH + Duration::new(1_900_000_000, 7));
        rich.budgets = vec![BudgetSpec::budget(
            BudgetScope::Team("t".into()),
            Money::from_usd(5),
            Period::Monthly,
        )];
        rich.metadata.insert("owner".into(), "ops".into());
        put(rich.clone(), PutMode::Create).await.unwrap();
        assert_eq!(*store.get("f").await.unwrap().unwrap(), rich);
        rich.revoked = true;
        put(rich.clone(), PutMode::Upsert).await.unwrap();
        assert!(found(store, "sf").await.unwrap().revoked);

        // Deleting drops the id and every secret.
        assert!(store.delete("a").await.unwrap());
        assert!(found(store, "sz").await.is_none());
        assert!(store.get("a").await.unwrap().is_none());
        assert!(!store.delete("a").await.unwrap());
        assert_eq!(
            ids(&store.list(None, 10).await.unwrap()),
            ["(d", "b", "c", "e", "f", "ü {x}"]
        );
    }

    #[tokio::test]
    async fn the_memory_key_store_keeps_the_key_admin_contract() {
        key_admin_contract(&MemoryKeyStore::new()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_redis_key_store_keeps_the_key_admin_contract() {
        let server = redis_server!();
        let store = RedisKeyStore::new(instance(&server).await);
        key_admin_contract(&store).await;
        // Every key it wrote is under the one hash tag (one cluster slot).
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut raw(&server).await)
            .await
            .unwrap();
        assert!(!keys.is_empty());
        assert!(
            keys.iter().all(|k| k.starts_with("tollgate:{keys}:")),
            "{keys:?}"
        );
    }

    /// Looks `secret` up on every store until each lookup satisfies
    /// `expected` (within 1 s), so that each store has it cached.
    async fn cache_everywhere(
        stores: &[&RedisKeyStore],
        secret: &str,
        expected: impl Fn(Option<&KeyRecord>) -> bool + Copy,
    ) {
        for store in stores {
            wait_for_lookup(store, secret, expected).await;
            let cached = store.lookup(&KeyHash::of(secret)).await.unwrap();
            assert!(expected(cached.as_deref()));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_instances_see_each_others_puts_rotations_revocations_and_deletes() {
        let server = redis_server!();
        let a = RedisKeyStore::new(instance(&server).await);
        let b = RedisKeyStore::new(instance(&server).await);
        wait_until(|| a.is_listening() && b.is_listening()).await;
        let both = [&a, &b];

        // Unknown everywhere (and cached as unknown), then put on a.
        cache_everywhere(&both, "sk-1", |r| r.is_none()).await;
        KeyAdmin::put(
            &a,
            KeyRecord::new("k", KeyHash::of("sk-1")),
            PutMode::Create,
        )
        .await
        .unwrap();
        cache_everywhere(&both, "sk-1", |r| r.is_some()).await;
        cache_everywhere(&both, "sk-2", |r| r.is_none()).await;

        // Rotated on b, with a grace: a finds both secrets, the old one retired.
        let mut record = (*KeyAdmin::get(&b, "k").await.unwrap().unwrap()).clone();
        record.rotate(
            KeyHash::of("sk-2"),
            SystemTime::now() + Duration::from_secs(3600),
        );
        KeyAdmin::put(&b, record, PutMode::Upsert).await.unwrap();
        let rotated =
            |r: Option<&KeyRecord>| r.is_some_and(|r| r.secret_hash == KeyHash::of("sk-2"));
        cache_everywhere(&both, "sk-2", rotated).await;
        cache_everywhere(&both, "sk-1", rotated).await;

        // Revoked on a: both secrets refused on b.
        assert!(a.revoke("k").await.unwrap());
        let revoked = |r: Option<&KeyRecord>| r.is_some_and(|r| r.revoked);
        cache_everywhere(&both, "sk-1", revoked).await;
        cache_everywhere(&both, "sk-2", revoked).await;

        // Deleted on b: both secrets unknown on a.
        assert!(KeyAdmin::delete(&b, "k").await.unwrap());
        cache_everywhere(&both, "sk-1", |r| r.is_none()).await;
        cache_everywhere(&both, "sk-2", |r| r.is_none()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_rotated_key_works_on_every_instance_until_its_grace_ends() {
        let server = redis_server!();
        let a = RedisKeyStore::new(instance(&server).await);
        let b = RedisKeyStore::new(instance(&server).await);
        wait_until(|| a.is_listening() && b.is_listening()).await;
        let on_b = ServiceBuilder::new()
            .layer(AuthLayer::new(b.clone()))
            .service(service_fn(upstream));
        a.insert(KeyRecord::new("k", KeyHash::of("sk-old")))
            .await
            .unwrap();
        assert_eq!(send(&on_b, with_key("sk-old")).await.0, StatusCode::OK);

        // Rotated on a with an hour of grace: b takes the new secret, and
        // the old one with a warning of when it stops.
        let mut record = (*a.get("k").await.unwrap().unwrap()).clone();
        record.rotate(
            KeyHash::of("sk-new"),
            SystemTime::now() + Duration::from_secs(3600),
        );
        KeyAdmin::put(&a, record, PutMode::Upsert).await.unwrap();
        let rotated_at = Instant::now();
        while send(&on_b, with_key("sk-new")).await.0 != StatusCode::OK {
            assert!(
                rotated_at.elapsed() < Duration::from_secs(1),
                "new secret refused after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (status, headers, _) = send(&on_b, with_key("sk-old")).await;
        assert_eq!(status, StatusCode::OK);
        let left: u64 = headers["x-api-key-expires-in"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((3500..=3600).contains(&left), "{left}");

        // Rotated again with no grace: the secret just retired is refused
        // as revoked on b, the first one still has its hour.
        let mut record = (*a.get("k").await.unwrap().unwrap()).clone();
        record.rotate(KeyHash::of("sk-newer"), SystemTime::now());
        KeyAdmin::put(&a, record, PutMode::Upsert).await.unwrap();
        let rotated_at = Instant::now();
        loop {
            let (status, _, body) = send(&on_b, with_key("sk-new")).await;
            if status == StatusCode::UNAUTHORIZED {
                assert_eq!(error_code(&body), "revoked_api_key");
                break;
            }
            assert!(
                rotated_at.elapsed() < Duration::from_secs(1),
                "still admitted after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(send(&on_b, with_key("sk-old")).await.0, StatusCode::OK);
        assert_eq!(send(&on_b, with_key("sk-newer")).await.0, StatusCode::OK);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_flag_changes_on_two_instances_never_undo_each_other() {
        let server = redis_server!();
        let a = RedisKeyStore::new(patient_instance(&server).await);
        let b = RedisKeyStore::new(patient_instance(&server).await);
        for round in 0..20 {
            let id = format!("k{round}");
            a.insert(KeyRecord::new(&id, KeyHash::of(&id)))
                .await
                .unwrap();
            // Each reads the record and writes it back with its flag: a
            // write over a record changed since it was read would drop the
            // other's flag.
            let (revoked, disabled) = tokio::join!(a.revoke(&id), b.set_disabled(&id, true));
            assert!(revoked.unwrap() && disabled.unwrap());
            let record = b.get(&id).await.unwrap().unwrap();
            assert!(record.revoked && record.disabled, "{record:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_of_the_previous_layout_move_to_the_current_one() {
        let server = redis_server!();
        let store = RedisKeyStore::new(instance(&server).await);
        let mut conn = raw(&server).await;
        let legacy = |prefix: &str, id: &str, secret: &str, rec: &str| {
            let hex = KeyHash::of(secret).to_hex();
            let mut pipe = redis::pipe();
            pipe.cmd("HSET")
                .arg(format!("{prefix}key:{hex}"))
                .arg(&["id", id, "rec", rec, "revoked", "1", "disabled", "0"])
                .ignore();
            pipe.cmd("SET")
                .arg(format!("{prefix}keyid:{id}"))
                .arg(&hex)
                .ignore();
            pipe
        };
        // Version 1 JSON, its flags in fields of their own.
        let old = r#"{"v":1,"id":"old","created_at_ns":1800000000000000000,"team":"t"}"#;
        let dup = r#"{"v":1,"id":"dup","created_at_ns":0}"#;
        let other = r#"{"v":1,"id":"x","created_at_ns":0}"#;
        for pipe in [
            legacy("tollgate:", "old", "sk-old", old),
            legacy("tollgate:", "dup", "sk-dup-old", dup),
            legacy("other:", "x", "sk-x", other),
        ] {
            pipe.query_async::<()>(&mut conn).await.unwrap();
        }
        // An index without its record, and a key made since by a current
        // instance under an id the previous layout also has.
        let _: () = redis::cmd("SET")
            .arg("tollgate:keyid:ghost")
            .arg(KeyHash::of("sk-ghost").to_hex())
            .query_async(&mut conn)
            .await
            .unwrap();
        store
            .insert(KeyRecord::new("dup", KeyHash::of("sk-dup-new")))
            .await
            .unwrap();

        assert_eq!(store.migrate_legacy_layout().await.unwrap(), 1);
        let moved = store.lookup(&KeyHash::of("sk-old")).await.unwrap().unwrap();
        assert_eq!(moved.id, "old");
        assert!(moved.revoked && !moved.disabled);
        assert_eq!(moved.team.as_deref(), Some("t"));
        assert_eq!(
            moved.created_at,
            UNIX_EPOCH + Duration::from_secs(1_800_000_000)
        );
        assert_eq!(*store.get("old").await.unwrap().unwrap(), *moved);
        // The current record won; the old one is gone.
        assert!(
            store
                .lookup(&KeyHash::of("sk-dup-old"))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .lookup(&KeyHash::of("sk-dup-new"))
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            ids(&KeyAdmin::list(&store, None, 10).await.unwrap()),
            ["dup", "old"]
        );
        let left: Vec<String> = redis::cmd("KEYS")
            .arg("tollgate:key*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(left.is_empty(), "{left:?}");
        // Another prefix's records are not this store's.
        let others: Vec<String> = redis::cmd("KEYS")
            .arg("other:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(others.len(), 2, "{others:?}");
        // Idempotent.
        assert_eq!(store.migrate_legacy_layout().await.unwrap(), 0);
        assert!(
            store
                .lookup(&KeyHash::of("sk-old"))
                .await
                .unwrap()
                .is_some()
        );
    }
}

// ---- Redis persistence -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistence_is_reported_off_on_or_unknown() {
    use tollgate::store::redis::Persistence;

    // The test servers run with `--appendonly no --save ""`.
    let mut off = redis_server!();
    let redis = instance(&off).await;
    let found = Persistence::check(&redis).await.unwrap();
    assert_eq!(
        (found.aof, found.rdb, found.is_on()),
        (Some(false), Some(false), Some(false))
    );
    assert!(found.warning().unwrap().contains("money dies with Redis"));

    let dir = std::env::temp_dir().join(format!("tollgate-aof-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let aof = RedisServer::start_with(&["--appendonly", "yes", "--dir", &dir.to_string_lossy()]);
    let found = Persistence::check(&instance(&aof).await).await.unwrap();
    assert_eq!(
        (found.aof, found.rdb, found.is_on()),
        (Some(true), Some(false), Some(true))
    );
    assert_eq!(found.warning(), None);
    drop(aof);
    let _ = std::fs::remove_dir_all(&dir);

    // RDB snapshots alone count too.
    let mut conn = raw(&off).await;
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "save", "3600 1"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let found = Persistence::check(&redis).await.unwrap();
    assert_eq!((found.aof, found.rdb), (Some(false), Some(true)));
    assert_eq!(found.warning(), None);

    // CONFIG denied, as managed services do: unknown, with its own warning.
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "-config"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let found = Persistence::check(&redis).await.unwrap();
    assert_eq!((found.aof, found.rdb, found.is_on()), (None, None, None));
    assert!(found.warning().unwrap().contains("CONFIG refused"));

    // Only an unreachable Redis is an error.
    off.kill();
    assert!(Persistence::check(&redis).await.is_err());
}

// ---- the ledger's placement: every call in one hash slot (Redis Cluster) ---------

mod ledger_placement {
    use tollgate::budget::{Attribution, SpendGroup, SpendQuery, SpendTokens};
    use tollgate::store::memory::MemoryLedger;
    use tollgate::store::redis::LedgerPlacement;

    use super::*;

    /// Keys `a` and `b`, team `t` and user `u` belong to the org `o`; key
    /// `solo` is a tenant of its own.
    pub(super) fn by_tenant() -> LedgerPlacement {
        LedgerPlacement::by_tenant(|scope| match scope {
            BudgetScope::Key(id) if id == "solo" => scope.clone(),
            _ => BudgetScope::Org("o".into()),
        })
    }

    fn scope(id: &str) -> BudgetScope {
        BudgetScope::parse(id).unwrap()
    }

    /// Runs the same calls on `redis` and `memory` and checks they answer
    /// alike.
    pub(super) async fn same_answers(
        redis: &RedisLedger,
        memory: &MemoryLedger,
        clock: &ManualClock,
    ) {
        let key_a = BudgetSpec::budget(scope("key:a"), usd("10"), Period::Monthly);
        let key_b = BudgetSpec::budget(scope("key:b"), usd("10"), Period::Never);
        let team = BudgetSpec::budget(scope("team:t"), usd("1"), Period::Monthly);
        let org = BudgetSpec::balance(scope("org:o"), usd("5"));
        let solo = BudgetSpec::budget(scope("key:solo"), usd("2"), Period::Daily);
        let a = specs([key_a.clone(), team.clone(), org.clone()]);
        let b = specs([key_b.clone(), team.clone(), org.clone()]);
        let s = specs([solo.clone()]);
        let attributed = |scopes: &[&str], cost: &str| {
            Charge::new(usd(cost), SpendTokens::new(10, 20, 0)).attributed(Attribution::new(
                scopes.iter().map(|s| scope(s)).collect::<Vec<_>>(),
                "gpt-4o",
            ))
        };
        let ledgers: [&dyn Ledger; 2] = [redis, memory];

        let mut outcomes = Vec::new();
        let mut held = Vec::new();
        for ledger in ledgers {
            let r1 = ledger
                .reserve(&a, usd("0.8"), ReservePolicy::Strict)
                .await
                .unwrap();
            let denied = ledger
                .reserve(&b, usd("0.3"), ReservePolicy::Strict)
                .await
                .unwrap();
            outcomes.push((shape(&r1), shape(&denied)));
            held.push(reserved(r1));
        }
        assert_eq!(outcomes[0], outcomes[1]);

        let mut answers = Vec::new();
        for (ledger, r1) in ledgers.into_iter().zip(&held) {
            let settled = ledger
                .settle(
                    r1,
                    &attributed(&["key:a", "user:u", "team:t", "org:o"], "0.5"),
                )
                .await
                .unwrap();
            let r2 = ledger
                .reserve(&b, usd("0.6"), ReservePolicy::Bounded)
                .await
                .unwrap();
            let r2_shape = shape(&r2);
            ledger.release(&reserved(r2)).await.unwrap();
            let rs = reserved(
                ledger
                    .reserve(&s, usd("1"), ReservePolicy::Strict)
                    .await
                    .unwrap(),
            );
            let solo_settled = ledger
                .settle(&rs, &attributed(&["key:solo"], "1.5"))
                .await
                .unwrap();
            // A key without budgets is charged in its aggregates all the same.
            ledger
                .settle(
                    &Reservation::unheld(Arc::new([])),
                    &attributed(&["key:b", "team:t", "org:o"], "0.125"),
                )
                .await
                .unwrap();
            let first = ledger.top_up(&org, usd("10"), Some("idem")).await.unwrap();
            let again = ledger.top_up(&org, usd("10"), Some("idem")).await.unwrap();
            let reset = ledger.reset(&team).await.unwrap();
            let mut reads = Vec::new();
            for spec in [&key_a, &key_b, &team, &org, &solo] {
                reads.push(ledger.read(spec).await.unwrap());
            }
            let mut reports = Vec::new();
            for query in [
                SpendQuery::new(SpendGroup::Key),
                SpendQuery::new(SpendGroup::Team),
                SpendQuery::new(SpendGroup::Org),
                SpendQuery::new(SpendGroup::User),
                SpendQuery::new(SpendGroup::Model).scope(scope("key:solo")),
                SpendQuery::new(SpendGroup::Day).scope(scope("org:o")),
                SpendQuery::new(SpendGroup::Key).model("gpt-4o"),
            ] {
                reports.push(ledger.spend(&query).await.unwrap());
            }
            answers.push((
                settled.statuses,
                r2_shape,
                solo_settled.statuses,
                (first.status, first.replayed, again.status, again.replayed),
                reset,
                reads,
                reports,
            ));
        }
        assert_eq!(answers[0], answers[1]);
        let (.., reports) = &answers[0];
        assert_eq!(reports[0].len(), 3, "{:?}", reports[0]);

        // A hold whose lease ran out is given back by the next call in its
        // slot, as in memory.
        let forgotten = reserved(
            redis
                .reserve(&a, usd("0.1"), ReservePolicy::Strict)
                .await
                .unwrap(),
        );
        assert_eq!(redis.read(&team).await.unwrap().reserved, usd("0.1"));
        clock.advance(Duration::from_secs(2));
        assert_eq!(redis.read(&team).await.unwrap().reserved, Money::ZERO);
        redis.release(&forgotten).await.unwrap();
    }

    /// The keys under `prefix`, by hash tag.
    async fn keys_by_tag(server: &RedisServer, prefix: &str) -> Vec<(String, String)> {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut raw(server).await)
            .await
            .unwrap();
        let mut tagged: Vec<(String, String)> = keys
            .into_iter()
            .map(|key| {
                let rest = key.strip_prefix(prefix).unwrap();
                let tag = rest
                    .strip_prefix('{')
                    .and_then(|r| r.split_once("}:"))
                    .map(|(tag, _)| tag.to_owned())
                    .unwrap_or_else(|| panic!("untagged key {key}"));
                (tag, key)
            })
            .collect();
        tagged.sort();
        tagged
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ledger_placed_by_tenant_decides_like_memory_with_each_tenant_in_one_slot() {
        let server = redis_server!();
        let clock = ManualClock::at(rfc3339("2026-03-31T23:00:00Z"));
        let conn = RedisConnection::connect(config(&server).key_prefix("ten:"))
            .await
            .unwrap();
        let redis = RedisLedger::new(conn)
            .clock(clock.clone())
            .lease(Duration::from_secs(1))
            .placement(by_tenant());
        let memory = MemoryLedger::new()
            .with_clock(clock.clone())
            .lease(Duration::from_secs(1));
        same_answers(&redis, &memory, &clock).await;

        let tags: std::collections::BTreeMap<String, Vec<String>> = keys_by_tag(&server, "ten:")
            .await
            .into_iter()
            .fold(Default::default(), |mut map, (tag, key)| {
                map.entry(tag).or_default().push(key);
                map
            });
        assert_eq!(
            tags.keys().collect::<Vec<_>>(),
            ["key:solo", "ledger", "org:o"],
            "{tags:?}"
        );
        // The org's slot holds its keys', team's and user's books and spend.
        for name in [
            "ten:{org:o}:budget:key:a",
            "ten:{org:o}:budget:team:t",
            "ten:{org:o}:budget:org:o",
            "ten:{org:o}:spend-scopes",
            "ten:{org:o}:ledger:seq",
        ] {
            assert!(tags["org:o"].iter().any(|k| k == name), "{name}: {tags:?}");
        }
        assert!(
            tags["org:o"]
                .iter()
                .any(|k| k.starts_with("ten:{org:o}:spend:user:u:"))
        );
        assert_eq!(tags["ledger"], ["ten:{ledger}:tenants"]);

        // A request whose budgets belong to two tenants cannot be booked in
        // one slot: refused, and nothing is held.
        let mixed = specs([
            BudgetSpec::budget(scope("key:a"), usd("10"), Period::Monthly),
            BudgetSpec::budget(scope("key:solo"), usd("2"), Period::Daily),
        ]);
        let refused = redis
            .reserve(&mixed, usd("0.1"), ReservePolicy::Strict)
            .await;
        assert!(
            matches!(&refused, Err(StoreError::Unavailable(m)) if m.contains("`org:o` and `key:solo`")),
            "{refused:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ledger_in_one_slot_decides_like_memory() {
        let server = redis_server!();
        let clock = ManualClock::at(rfc3339("2026-03-31T23:00:00Z"));
        let conn = RedisConnection::connect(config(&server).key_prefix("one:"))
            .await
            .unwrap();
        let redis = RedisLedger::new(conn)
            .clock(clock.clone())
            .lease(Duration::from_secs(1))
            .placement(LedgerPlacement::OneSlot);
        let memory = MemoryLedger::new()
            .with_clock(clock.clone())
            .lease(Duration::from_secs(1));
        same_answers(&redis, &memory, &clock).await;
        let tags = keys_by_tag(&server, "one:").await;
        assert!(!tags.is_empty());
        assert!(tags.iter().all(|(tag, _)| tag == "ledger"), "{tags:?}");
    }
}

// ---- keys, ledger and persistence on a Redis Cluster of three primaries ----------

mod on_a_cluster {
    use tollgate::auth::{KeyAdmin, PutMode};
    use tollgate::store::memory::MemoryLedger;
    use tollgate::store::redis::{LedgerPlacement, Persistence};

    use super::redis_support::RedisCluster;
    use super::*;

    async fn cluster_instance(cluster: &RedisCluster) -> RedisConnection {
        let config = cluster.config();
        RedisConnection::connect(config).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn keys_ledgers_and_the_persistence_check_run_on_a_cluster() {
        let cluster = RedisCluster::start();

        // Keys: the whole contract, and a change on one instance seen by
        // another within a second.
        let a = RedisKeyStore::new(cluster_instance(&cluster).await);
        let b = RedisKeyStore::new(cluster_instance(&cluster).await);
        super::key_admin::key_admin_contract(&a).await;
        wait_until(|| a.is_listening() && b.is_listening()).await;
        KeyAdmin::put(
            &a,
            KeyRecord::new("z", KeyHash::of("sk-z")),
            PutMode::Create,
        )
        .await
        .unwrap();
        wait_for_lookup(&b, "sk-z", |r| r.is_some()).await;
        wait_for_lookup(&b, "sk-z", |r| r.is_some()).await;
        assert!(a.revoke("z").await.unwrap());
        wait_for_lookup(&b, "sk-z", |r| r.is_some_and(|r| r.revoked)).await;
        assert_eq!(a.migrate_legacy_layout().await.unwrap(), 0);

        // The ledger, in one slot (the default there) and by tenant,
        // answers as the memory ledger does.
        for (prefix, placement) in [
            ("one:", None),
            ("ten:", Some(super::ledger_placement::by_tenant())),
        ] {
            let clock = ManualClock::at(rfc3339("2026-03-31T23:00:00Z"));
            let config = cluster.config().key_prefix(prefix);
            let mut redis = RedisLedger::new(RedisConnection::connect(config).await.unwrap())
                .clock(clock.clone())
                .lease(Duration::from_secs(1));
            if let Some(placement) = placement {
                redis = redis.placement(placement);
            }
            let memory = MemoryLedger::new()
                .with_clock(clock.clone())
                .lease(Duration::from_secs(1));
            super::ledger_placement::same_answers(&redis, &memory, &clock).await;
        }

        // The untagged layout cannot run there: its scripts cross slots.
        let untagged =
            RedisLedger::new(cluster_instance(&cluster).await).placement(LedgerPlacement::Untagged);
        let budgets = specs([
            BudgetSpec::budget(BudgetScope::Key("k".into()), usd("1"), Period::Monthly),
            BudgetSpec::budget(BudgetScope::Team("t".into()), usd("1"), Period::Monthly),
        ]);
        assert!(
            untagged
                .reserve(&budgets, usd("0.1"), ReservePolicy::Strict)
                .await
                .is_err()
        );

        let persistence = Persistence::check(&cluster_instance(&cluster).await)
            .await
            .unwrap();
        assert_eq!(persistence.is_on(), Some(false));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn three_ledgers_on_a_cluster_never_overshoot_a_tenants_strict_budget() {
        let cluster = RedisCluster::start();
        let mut ledgers = Vec::new();
        for _ in 0..3 {
            ledgers.push(
                RedisLedger::new(cluster_instance(&cluster).await)
                    .placement(super::ledger_placement::by_tenant()),
            );
        }
        // Two keys of the org `o` share its team's strict budget.
        let team = BudgetSpec::budget(BudgetScope::Team("t".into()), usd("1"), Period::Monthly);
        let of_key = |id: &str| -> Arc<[BudgetSpec]> {
            Arc::new([
                BudgetSpec::budget(BudgetScope::Key(id.into()), usd("10"), Period::Monthly),
                team.clone(),
            ])
        };
        let keys = [of_key("a"), of_key("b")];
        let start = Arc::new(tokio::sync::Barrier::new(300));
        let tasks: Vec<_> = (0..300)
            .map(|i| {
                let ledger = ledgers[i % 3].clone();
                let budgets = keys[i % 2].clone();
                let start = start.clone();
                tokio::spawn(async move {
                    start.wait().await;
                    match ledger
                        .reserve(&budgets, usd("0.03"), ReservePolicy::Strict)
                        .await
                        .unwrap()
                    {
                        ReserveOutcome::Reserved { reservation, .. } => {
                            ledger
                                .settle(&reservation, &Charge::cost(usd("0.01")))
                                .await
                                .unwrap();
                            1
                        }
                        ReserveOutcome::Denied { .. } => 0,
                    }
                })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            admitted += task.await.unwrap();
        }
        let spent = ledgers[1].read(&team).await.unwrap();
        assert!(spent.spent <= usd("1"), "{spent:?}");
        assert_eq!(spent.spent, Money::from_nanos(10_000_000 * admitted));
        assert_eq!(spent.reserved, Money::ZERO);
        assert!(admitted >= 33, "{admitted}");
    }
}
