//! The Redis rate-limit store against real Redis servers (one per test, or
//! a three-primary Redis Cluster, on 127.0.0.1, started and killed by the
//! test): several gateway instances sharing exact limits, every scope and
//! algorithm, the same decisions as the memory store, state that survives
//! an edit, the fallback.
#![cfg(feature = "redis")]

#[path = "support/manual_clock.rs"]
mod manual_clock;

#[path = "support/redis.rs"]
mod redis_support;

use manual_clock::ManualClock;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tollgate::auth::{KeyHash, KeyRecord, Principal};
use tollgate::clock::SharedClock;
use tollgate::rate_limit::{
    Acquire, Admission, Algorithm, Limit, RateLimitKey, RateLimitLayer, RateLimitStore,
    ScopeCharge, ScopeSettle, Settle, Verdict,
};
use tollgate::store::StoreFuture;
use tollgate::store::memory::MemoryRateLimitStore;
use tollgate::store::redis::{RedisConfig, RedisConnection, RedisRateLimitStore};
use tower::{ServiceBuilder, ServiceExt, service_fn};

use redis_support::{RedisCluster, RedisServer};

fn config(server: &RedisServer) -> RedisConfig {
    RedisConfig::from_url(&server.url())
        .unwrap()
        .call_timeout(Duration::from_millis(250))
        .connect_timeout(Duration::from_millis(500))
        .reconnect_max_delay(Duration::from_millis(200))
}

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

async fn cluster_instance(cluster: &RedisCluster) -> RedisConnection {
    let config = cluster.config();
    RedisConnection::connect(config).await.unwrap()
}

/// One scope's admission.
fn one(
    store: &impl RateLimitStore,
    key: RateLimitKey<'_>,
    limits: &[Limit],
    costs: &[u64],
    max_concurrent: Option<u32>,
) -> StoreFuture<Admission> {
    store.acquire(&Acquire {
        scopes: &[ScopeCharge {
            key,
            limits,
            costs,
            max_concurrent,
        }],
    })
}

fn release(
    store: &impl RateLimitStore,
    key: RateLimitKey<'_>,
    limits: &[Limit],
) -> StoreFuture<()> {
    let deltas = vec![0; limits.len()];
    store.settle(&Settle {
        scopes: &[ScopeSettle {
            key,
            limits,
            deltas: &deltas,
            release: true,
        }],
        receipt: tollgate::rate_limit::Receipt::NONE,
    })
}

fn principal(id: &str, limits: &[Limit]) -> Principal {
    let mut record = KeyRecord::new(id, KeyHash::of(id));
    record.rate_limits = limits.to_vec();
    Principal::new(record)
}

fn chat(principal: &Principal, model: &str) -> Request<Full<Bytes>> {
    let body = format!(r#"{{"model":"{model}","max_tokens":10,"messages":[]}}"#);
    let mut req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    req.extensions_mut().insert(principal.clone());
    req
}

async fn upstream(_req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    tokio::time::sleep(Duration::from_millis(2)).await;
    Ok(Response::new(Full::new(Bytes::from_static(b"{}"))))
}

/// Runs `n` requests at once through `layers` round robin (each a gateway
/// instance); returns how many were admitted and refused.
async fn concurrently<St: RateLimitStore + Clone>(
    layers: &[RateLimitLayer<St>],
    n: usize,
    request: impl Fn(usize) -> Request<Full<Bytes>>,
) -> (usize, usize) {
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let svc = ServiceBuilder::new()
                .layer(layers[i % layers.len()].clone())
                .service(service_fn(upstream));
            let req = request(i);
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let response = svc.oneshot(req).await.unwrap();
                let status = response.status();
                drop(response.into_body().collect().await);
                status
            })
        })
        .collect();
    let (mut ok, mut limited) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    (ok, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_admit_exactly_100_of_300_concurrent_requests() {
    let server = redis_server!();
    let mut layers = Vec::new();
    for _ in 0..3 {
        let store = RedisRateLimitStore::new(patient_instance(&server).await);
        layers.push(RateLimitLayer::new().store(store));
    }
    let pat = principal("pat", &[Limit::requests_per_hour(100)]);
    assert_eq!(
        concurrently(&layers, 300, |_| chat(&pat, "m")).await,
        (100, 200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_three_primary_cluster_300_concurrent_requests_admit_exactly_100() {
    let cluster = RedisCluster::start();
    let mut layers = Vec::new();
    for _ in 0..3 {
        let store = RedisRateLimitStore::new(cluster_instance(&cluster).await);
        layers.push(
            RateLimitLayer::new()
                .store(store)
                .model_limit("shared-model", Limit::requests_per_minute(100)),
        );
    }
    // One key: its scope in its own slot.
    let pat = principal("pat", &[Limit::requests_per_minute(100)]);
    assert_eq!(
        concurrently(&layers, 300, |_| chat(&pat, "m")).await,
        (100, 200)
    );
    // Thirty keys sharing a model's capacity: the callers' slots and the
    // shared slot, in two scripts; still exactly 100.
    let keys: Vec<Principal> = (0..30)
        .map(|i| principal(&format!("k{i}"), &[Limit::requests_per_minute(10)]))
        .collect();
    let (ok, limited) = concurrently(&layers, 300, |i| chat(&keys[i % 30], "shared-model")).await;
    assert_eq!((ok, limited), (100, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_slots_are_shared_and_a_crashed_instances_slots_expire() {
    let server = redis_server!();
    let limits = [Limit::requests_per_hour(1_000)];
    let store = |redis| {
        RedisRateLimitStore::builder(redis)
            .slot_lease(Duration::from_millis(300))
            .build()
    };
    let a = store(instance(&server).await);
    let b = store(instance(&server).await);
    let key = RateLimitKey::new("quinn");
    let verdict = |admission: Admission| admission.verdict;
    assert_eq!(
        verdict(one(&a, key, &limits, &[1], Some(2)).await.unwrap()),
        Verdict::Admitted
    );
    assert_eq!(
        verdict(one(&a, key, &limits, &[1], Some(2)).await.unwrap()),
        Verdict::Admitted
    );
    assert_eq!(
        verdict(one(&b, key, &limits, &[1], Some(2)).await.unwrap()),
        Verdict::Concurrency
    );
    // A settlement on any instance frees a slot.
    release(&b, key, &limits).await.unwrap();
    assert_eq!(
        verdict(one(&b, key, &limits, &[1], Some(2)).await.unwrap()),
        Verdict::Admitted
    );
    // Instance `a` crashes holding its slot; the lease frees it.
    drop(a);
    assert_eq!(
        verdict(one(&b, key, &limits, &[1], Some(2)).await.unwrap()),
        Verdict::Concurrency
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        verdict(one(&b, key, &limits, &[1], Some(2)).await.unwrap()),
        Verdict::Admitted
    );
}

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

/// Random sequences of admissions and settlements over several scopes and
/// every algorithm, at controlled times: Redis decides exactly as memory.
/// Both read the test's clock (Redis through the store's `clock` override,
/// passed to the script instead of `TIME`), and it starts at a UTC midnight,
/// where the memory store's counting (from its start) and the scripts'
/// (from the Unix epoch) fall on the same grid.
async fn decisions_match(redis: RedisConnection) {
    let clock = ManualClock::at(Duration::from_secs(1_773_964_800)); // 2026-03-20T00:00:00Z
    let shared: SharedClock = clock.clone();
    let memory = MemoryRateLimitStore::builder()
        .clock(shared.clone())
        .build();
    let redis = RedisRateLimitStore::builder(redis)
        .clock(shared)
        // The memory store holds slots until settled: so does this one here.
        .slot_lease(Duration::from_secs(100 * 365 * 86_400))
        .build();
    let key_limits: Vec<(&str, Vec<Limit>)> = vec![
        ("a", vec![Limit::requests_per_minute(7)]),
        (
            "b",
            vec![
                Limit::requests_per_second(3).algorithm(Algorithm::Gcra),
                Limit::tokens_per_minute(999_999)
                    .algorithm(Algorithm::Gcra)
                    .burst(500_000),
            ],
        ),
        // Big enough that products overflow 2^53: the scripts' exact path.
        (
            "c",
            vec![
                Limit::tokens_per_day(50_000_000_000),
                Limit::requests_per_hour(11).algorithm(Algorithm::Fixed),
            ],
        ),
        (
            "d",
            vec![
                Limit::requests(5, Duration::from_secs(90)),
                Limit::tokens_per_hour(10_000).algorithm(Algorithm::Fixed),
            ],
        ),
    ];
    let scope_key = |k: usize| match k {
        1 => RateLimitKey::new("b").with_model(Some("gpt")),
        3 => RateLimitKey::scoped(RateLimitKey::MODEL, "gpt"),
        _ => RateLimitKey::new(key_limits[k].0),
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut in_flight: Vec<Vec<(usize, Vec<u64>)>> = Vec::new();
    for step in 0..1_500 {
        clock.advance(Duration::from_micros(match rng.below(4) {
            0 => 0,
            1 => rng.below(2_000_000),
            2 => rng.below(60_000_000),
            _ => rng.below(400_000),
        }));
        if !in_flight.is_empty() && rng.below(3) == 0 {
            let at = rng.below(in_flight.len() as u64) as usize;
            let held = in_flight.swap_remove(at);
            let deltas: Vec<Vec<i64>> = held
                .iter()
                .map(|(k, costs)| {
                    costs
                        .iter()
                        .zip(&key_limits[*k].1)
                        .map(|(&c, l)| {
                            if l.measure == tollgate::rate_limit::Measure::Tokens {
                                rng.below(2 * c + 2) as i64 - c as i64
                            } else {
                                0
                            }
                        })
                        .collect()
                })
                .collect();
            let scopes: Vec<ScopeSettle<'_>> = held
                .iter()
                .zip(&deltas)
                .map(|((k, _), d)| ScopeSettle {
                    key: scope_key(*k),
                    limits: &key_limits[*k].1,
                    deltas: d,
                    release: true,
                })
                .collect();
            memory
                .settle(&Settle {
                    scopes: &scopes,
                    receipt: tollgate::rate_limit::Receipt::NONE,
                })
                .await
                .unwrap();
            redis
                .settle(&Settle {
                    scopes: &scopes,
                    receipt: tollgate::rate_limit::Receipt::NONE,
                })
                .await
                .unwrap();
            continue;
        }
        // One to three scopes, all or nothing.
        let first = rng.below(4) as usize;
        let mut picked = vec![first];
        for k in 0..4 {
            if k != first && rng.below(3) == 0 {
                picked.push(k);
            }
        }
        let costs: Vec<Vec<u64>> = picked
            .iter()
            .map(|&k| {
                key_limits[k]
                    .1
                    .iter()
                    .map(|l| rng.below(l.amount.min(1 << 40) / 2 + 2))
                    .collect()
            })
            .collect();
        let scopes: Vec<ScopeCharge<'_>> = picked
            .iter()
            .zip(&costs)
            .map(|(&k, c)| ScopeCharge {
                key: scope_key(k),
                limits: &key_limits[k].1,
                costs: c,
                max_concurrent: Some(3),
            })
            .collect();
        let request = Acquire { scopes: &scopes };
        let expected = memory.acquire(&request).await.unwrap();
        let got = redis.acquire(&request).await.unwrap();
        // The same decision; each store's receipt is its own.
        let decision = |a: &Admission| (a.verdict, a.states.clone(), a.busy);
        assert_eq!(
            decision(&got),
            decision(&expected),
            "step {step}, scopes {picked:?}, costs {costs:?}"
        );
        if got.verdict == Verdict::Admitted {
            in_flight.push(picked.into_iter().zip(costs).collect());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_decisions_and_headers_match_the_memory_store() {
    let server = redis_server!();
    decisions_match(instance(&server).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_limit_keeps_its_count_and_two_configurations_share_it() {
    let server = redis_server!();
    let a = RedisRateLimitStore::new(instance(&server).await);
    let b = RedisRateLimitStore::new(instance(&server).await);
    let key = RateLimitKey::new("ed");
    for algorithm in [Algorithm::Sliding, Algorithm::Gcra, Algorithm::Fixed] {
        let key = RateLimitKey::new(algorithm.as_str()).with_model(key.model);
        let ten = [Limit::requests_per_hour(10).algorithm(algorithm)];
        let twenty = [Limit::requests_per_hour(20).algorithm(algorithm)];
        let daily = [
            Limit::requests_per_hour(20).algorithm(algorithm),
            Limit::requests_per_day(1000),
        ];
        for _ in 0..6 {
            let admission = one(&a, key, &ten, &[1], None).await.unwrap();
            assert_eq!(admission.verdict, Verdict::Admitted);
        }
        // Raised on instance b (with one more limit): 6 used, 14 left.
        let admission = one(&b, key, &daily, &[1, 1], None).await.unwrap();
        assert_eq!(admission.states[0].remaining, 13, "{algorithm:?}");
        // Instance a, still at 10, counts b's request too, and b's daily
        // limit is not wiped by a's writes.
        let admission = one(&a, key, &ten, &[0], None).await.unwrap();
        assert_eq!(admission.states[0].remaining, 3, "{algorithm:?}");
        let admission = one(&b, key, &twenty, &[1], None).await.unwrap();
        assert_eq!(admission.states[0].remaining, 12, "{algorithm:?}");
        let admission = one(&b, key, &daily, &[0, 0], None).await.unwrap();
        assert_eq!(admission.states[1].remaining, 999, "{algorithm:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_state_expires_once_full() {
    let server = redis_server!();
    let store = RedisRateLimitStore::new(instance(&server).await);
    let limits = [Limit::requests_per_second(10).algorithm(Algorithm::Gcra)];
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let started = std::time::Instant::now();
    one(&store, RateLimitKey::new("ttl"), &limits, &[1], None)
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg("tollgate:rl:{3:ttl}:3:key:3:ttl")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Full again within 100 ms; kept 1 s longer as slack: 1,000 to 1,100
    // ms when written, less whatever time passed before the PTTL (on a
    // loaded machine that can be a millisecond or more: it once read 999).
    let waited = i64::try_from(started.elapsed().as_millis()).unwrap();
    assert!(
        (1_000 - waited..=1_100).contains(&ttl),
        "{ttl} after {waited} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefixes_keep_gateways_apart() {
    let server = redis_server!();
    let eu = RedisRateLimitStore::new(
        RedisConnection::connect(config(&server).key_prefix("eu:"))
            .await
            .unwrap(),
    );
    let us = RedisRateLimitStore::new(
        RedisConnection::connect(config(&server).key_prefix("us:"))
            .await
            .unwrap(),
    );
    let limits = [Limit::requests_per_minute(1)];
    let key = RateLimitKey::new("same");
    let verdict = |a: Admission| a.verdict;
    assert_eq!(
        verdict(one(&eu, key, &limits, &[1], None).await.unwrap()),
        Verdict::Admitted
    );
    assert_eq!(
        verdict(one(&us, key, &limits, &[1], None).await.unwrap()),
        Verdict::Admitted
    );
    assert_eq!(
        verdict(one(&eu, key, &limits, &[1], None).await.unwrap()),
        Verdict::Limited
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_limits_at_the_share_and_settles_its_own_admissions() {
    let mut server = redis_server!();
    let fallback = MemoryRateLimitStore::new();
    let store = RedisRateLimitStore::builder(instance(&server).await)
        .fail_open_fallback(fallback.clone(), 0.25)
        .build();
    server.kill();
    let limits = [Limit::requests_per_hour(8)];
    let key = RateLimitKey::new("k");
    let mut verdicts = Vec::new();
    for _ in 0..3 {
        verdicts.push(
            one(&store, key, &limits, &[1], Some(4))
                .await
                .unwrap()
                .verdict,
        );
    }
    // 8 × 0.25 = 2 requests; 4 × 0.25 = 1 in flight.
    assert_eq!(
        verdicts,
        [
            Verdict::Admitted,
            Verdict::Concurrency,
            Verdict::Concurrency
        ]
    );
    release(&store, key, &limits).await.unwrap();
    assert_eq!(
        one(&store, key, &limits, &[1], Some(4))
            .await
            .unwrap()
            .verdict,
        Verdict::Admitted
    );
    release(&store, key, &limits).await.unwrap();
    assert_eq!(
        one(&store, key, &limits, &[1], Some(4))
            .await
            .unwrap()
            .verdict,
        Verdict::Limited
    );
}
