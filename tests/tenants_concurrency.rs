//! Exactness under concurrency for every scope: 1,000 concurrent requests
//! from 10 keys of one team never overshoot the team's Strict budget, and
//! its `requests_per_minute` admits exactly its amount, in memory, on
//! SQLite and across three instances sharing one Redis. Each charge reaches
//! the key, the team and the team's org, all or nothing.
//!
//! The full server stack runs (`AuthLayer` finding the key and its tenants,
//! `RateLimitLayer`, `BudgetLayer`), over real stores, with the requests
//! released at once by a barrier. Each key also belongs to one of five
//! users, so every admitted request is charged to four scopes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tollgate::ApiError;
use tollgate::auth::{AuthLayer, KeyHash, KeyRecord, KeyStore, PutMode, TenantAdmin};
use tollgate::auth::{TenantKind, TenantRecord};
use tollgate::budget::{
    BudgetLayer, BudgetScope, BudgetSpec, Ledger, ModelPrice, Money, Period, Pricing, ReservePolicy,
};
use tollgate::rate_limit::{Limit, RateLimitLayer, RateLimitStore};
use tower::{ServiceBuilder, ServiceExt, service_fn};

const REQUESTS: usize = 1_000;
const KEYS: usize = 10;

/// Model `m`: $1 per million input tokens, $2 per million output tokens.
fn pricing() -> Pricing {
    Pricing::new().with(
        "m",
        ModelPrice::per_million("1", "2")
            .unwrap()
            .max_output_tokens(1_000),
    )
}

/// A request's worst case: 1 prompt token and `max_tokens` 10, in nanos.
const WORST: i64 = 1_000 + 10 * 2_000;
/// What the upstream reports it cost: 1 prompt and 5 completion tokens.
const ACTUAL: i64 = 1_000 + 5 * 2_000;
/// The team's Strict budget: exactly 100 worst cases.
const TEAM_LIMIT: i64 = 100 * WORST;
/// The team's requests per minute.
const TEAM_RPM: u64 = 100;

fn key_budget(i: usize) -> BudgetSpec {
    BudgetSpec::budget(
        BudgetScope::Key(format!("k{i}")),
        Money::from_usd(100),
        Period::Monthly,
    )
}

/// Keys `k{i}` and `k{i + 5}` belong to user `u{i}`.
fn user_budget(user: usize) -> BudgetSpec {
    BudgetSpec::budget(
        TenantKind::User.scope(format!("u{user}")),
        Money::from_usd(100),
        Period::Daily,
    )
}

fn team_budget() -> BudgetSpec {
    BudgetSpec::budget(
        TenantKind::Team.scope("research"),
        Money::from_nanos(TEAM_LIMIT),
        Period::Monthly,
    )
}

fn org_budget() -> BudgetSpec {
    BudgetSpec::budget(
        TenantKind::Org.scope("acme"),
        Money::from_usd(100),
        Period::Monthly,
    )
}

/// What a test puts in the store: team `research` (in org `acme`) with a
/// budget or a rate limit, the org with a large budget, and 10 member keys,
/// each with a large budget of its own.
async fn provision(store: &dyn TenantAdmin, scenario: Scenario) {
    let mut team = TenantRecord::new(TenantKind::Team, "research");
    team.org = Some("acme".into());
    match scenario {
        Scenario::Budget => team.budgets.push(team_budget()),
        Scenario::Rpm => team.rate_limits.push(Limit::requests_per_minute(TEAM_RPM)),
    }
    store.put_tenant(team, PutMode::Create).await.unwrap();
    let mut org = TenantRecord::new(TenantKind::Org, "acme");
    org.budgets.push(org_budget());
    store.put_tenant(org, PutMode::Create).await.unwrap();
    for u in 0..KEYS / 2 {
        let mut user = TenantRecord::new(TenantKind::User, format!("u{u}"));
        user.budgets.push(user_budget(u));
        store.put_tenant(user, PutMode::Create).await.unwrap();
    }
    for i in 0..KEYS {
        let mut key = KeyRecord::new(format!("k{i}"), KeyHash::of(format!("sk-k{i}")));
        key.team = Some("research".into());
        key.user = Some(format!("u{}", i % (KEYS / 2)));
        key.budgets.push(key_budget(i));
        store.put(key, PutMode::Create).await.unwrap();
    }
}

#[derive(Debug, Clone, Copy)]
enum Scenario {
    Budget,
    Rpm,
}

fn request(i: usize) -> Request<Full<Bytes>> {
    let body = r#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"abcd"}]}"#;
    Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer sk-k{}", i % KEYS))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

async fn upstream(_req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    tokio::task::yield_now().await;
    let body =
        r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":5,"total_tokens":6}}"#;
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap())
}

/// One gateway instance's stores.
struct Instance<K, R, L> {
    keys: K,
    rate_limits: R,
    ledger: L,
}

/// What the 1,000 requests got.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    refused: usize,
    /// One refusal's message.
    message: Option<String>,
}

/// Sends `REQUESTS` requests at once, round robin over `instances` and the
/// 10 keys, each through the whole stack; reads every body to its end (so
/// every admitted request settles).
async fn thousand<K, R, L>(instances: &[Instance<K, R, L>], refused_with: StatusCode) -> Tally
where
    K: KeyStore + Clone + 'static,
    R: RateLimitStore + Clone + Send + Sync + 'static,
    L: Ledger + Clone,
{
    let start = Arc::new(tokio::sync::Barrier::new(REQUESTS));
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let instance = &instances[i % instances.len()];
            let svc = ServiceBuilder::new()
                .layer(AuthLayer::new(instance.keys.clone()))
                .layer(RateLimitLayer::new().store(instance.rate_limits.clone()))
                .layer(
                    BudgetLayer::with_ledger(pricing(), instance.ledger.clone())
                        .policy(ReservePolicy::Strict),
                )
                .service(service_fn(upstream));
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let response = svc.oneshot(request(i)).await.unwrap();
                let status = response.status();
                let error = response.extensions().get::<ApiError>().cloned();
                response.into_body().collect().await.unwrap();
                (status, error)
            })
        })
        .collect();
    let mut tally = Tally::default();
    for task in tasks {
        match task.await.unwrap() {
            (StatusCode::OK, _) => tally.ok += 1,
            (status, error) if status == refused_with => {
                tally.refused += 1;
                tally.message = error.map(|e| e.message().to_owned());
            }
            (other, error) => panic!("unexpected {other}: {error:?}"),
        }
    }
    tally
}

/// The spend of `budget` once every hold is settled (a remote ledger may
/// still be settling the last responses: bounded wait).
async fn settled(ledger: &impl Ledger, budget: &BudgetSpec) -> Money {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = ledger.read(budget).await.unwrap();
        if status.reserved == Money::ZERO {
            return status.spent;
        }
        assert!(Instant::now() < deadline, "holds never settled: {status:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The team's Strict budget is never overshot, every admitted request is
/// charged exactly once, to its key, the team and the org alike, and
/// refusals name the team.
async fn budget_is_never_overshot<K, R, L>(instances: &[Instance<K, R, L>])
where
    K: KeyStore + Clone + 'static,
    R: RateLimitStore + Clone + Send + Sync + 'static,
    L: Ledger + Clone,
{
    let tally = thousand(instances, StatusCode::PAYMENT_REQUIRED).await;
    let ledger = &instances[0].ledger;
    let team = settled(ledger, &team_budget()).await;
    assert!(
        team <= Money::from_nanos(TEAM_LIMIT),
        "the team's Strict budget was overshot: {team} after {tally:?}"
    );
    assert_eq!(
        team,
        Money::from_nanos(ACTUAL * tally.ok as i64),
        "{tally:?}"
    );
    // A request is refused only when less than its worst case remains, so
    // at least the 100 worst cases the budget holds are admitted.
    assert!(tally.ok >= 100, "{tally:?}");
    assert!(tally.refused > 0, "{tally:?}");
    assert_eq!(
        tally.message.as_deref(),
        Some("Budget exceeded: $0.0021 limit reached for team research")
    );
    // All or nothing: each charge reached the key, its user, the team and
    // the org.
    assert_eq!(settled(ledger, &org_budget()).await, team);
    let mut keys = Money::ZERO;
    for i in 0..KEYS {
        keys = keys + settled(ledger, &key_budget(i)).await;
    }
    assert_eq!(keys, team);
    let mut users = Money::ZERO;
    for u in 0..KEYS / 2 {
        users = users + settled(ledger, &user_budget(u)).await;
    }
    assert_eq!(users, team);
}

/// The team's requests per minute admit exactly its amount, whichever key
/// and instance each request comes through.
async fn rpm_is_exact<K, R, L>(instances: &[Instance<K, R, L>])
where
    K: KeyStore + Clone + 'static,
    R: RateLimitStore + Clone + Send + Sync + 'static,
    L: Ledger + Clone,
{
    let tally = thousand(instances, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(
        (tally.ok, tally.refused),
        (TEAM_RPM as usize, REQUESTS - TEAM_RPM as usize)
    );
    assert!(
        tally.message.as_deref().is_some_and(
            |m| m.contains("Rate limit exceeded: 100 requests per minute for team research")
        ),
        "{tally:?}"
    );
    // Every admitted request was charged to the team's org.
    let org = settled(&instances[0].ledger, &org_budget()).await;
    assert_eq!(org, Money::from_nanos(ACTUAL * TEAM_RPM as i64));
}

mod memory {
    use super::*;
    use tollgate::store::memory::{MemoryKeyStore, MemoryLedger, MemoryRateLimitStore};

    async fn instance(
        scenario: Scenario,
    ) -> [Instance<MemoryKeyStore, MemoryRateLimitStore, MemoryLedger>; 1] {
        let keys = MemoryKeyStore::new();
        provision(&keys, scenario).await;
        [Instance {
            keys,
            rate_limits: MemoryRateLimitStore::new(),
            ledger: MemoryLedger::new(),
        }]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_team_strict_budget_is_never_overshot() {
        budget_is_never_overshot(&instance(Scenario::Budget).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_team_requests_per_minute_is_exact() {
        rpm_is_exact(&instance(Scenario::Rpm).await).await;
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use tollgate::store::sqlite::SqliteStore;

    async fn run(scenario: Scenario) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("state.db")).unwrap();
        provision(&store.keys(), scenario).await;
        let instances = [Instance {
            keys: store.keys(),
            rate_limits: store.rate_limits(),
            ledger: store.ledger(),
        }];
        match scenario {
            Scenario::Budget => budget_is_never_overshot(&instances).await,
            Scenario::Rpm => rpm_is_exact(&instances).await,
        }
        // What was decided is what is on disk.
        let team = store.ledger().read(&team_budget()).await.unwrap().spent;
        store.close().await.unwrap();
        drop((instances, store));
        let store = SqliteStore::open(dir.path().join("state.db")).unwrap();
        assert_eq!(
            store.ledger().read(&team_budget()).await.unwrap().spent,
            team
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_team_strict_budget_is_never_overshot() {
        run(Scenario::Budget).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_team_requests_per_minute_is_exact() {
        run(Scenario::Rpm).await;
    }
}

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use tollgate::store::redis::{
        RedisConfig, RedisConnection, RedisKeyStore, RedisLedger, RedisRateLimitStore,
    };

    /// Three gateway instances on one Redis, each with its own connection
    /// and caches.
    async fn run(scenario: Scenario) {
        let server = super::redis_support::RedisServer::start();
        let mut instances = Vec::new();
        for _ in 0..3 {
            // Patient: a loaded machine may take a while to run a thousand
            // scripts; these tests are about exactness, not timeouts.
            let config = RedisConfig::from_url(&server.url())
                .unwrap()
                .call_timeout(Duration::from_secs(10));
            let redis = RedisConnection::connect(config).await.unwrap();
            instances.push(Instance {
                keys: RedisKeyStore::new(redis.clone()),
                rate_limits: RedisRateLimitStore::new(redis.clone()),
                ledger: RedisLedger::new(redis),
            });
        }
        provision(&instances[0].keys, scenario).await;
        match scenario {
            Scenario::Budget => budget_is_never_overshot(&instances).await,
            Scenario::Rpm => rpm_is_exact(&instances).await,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn three_instances_never_overshoot_a_team_strict_budget() {
        run(Scenario::Budget).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn three_instances_admit_exactly_a_team_s_requests_per_minute() {
        run(Scenario::Rpm).await;
    }
}
