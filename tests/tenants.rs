//! Users, teams and orgs end to end: their records in every key store,
//! `AuthLayer` finding a key's tenants (at once from memory, through a
//! remote store's futures otherwise), their limits and budgets shared by
//! every key, refusals that name them, and disabled tenants.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tollgate::ApiError;
use tollgate::auth::{
    AuthLayer, Grant, KeyHash, KeyRecord, KeyStore, Principal, PutMode, TenantAdmin, TenantEntry,
    TenantKind, TenantRecord,
};
use tollgate::budget::{
    BudgetLayer, BudgetScope, BudgetSpec, Ledger, ModelPrice, Money, Period, Pricing,
    ReservePolicy, ScopeKind,
};
use tollgate::rate_limit::{Limit, RateLimitLayer, ScopeLimits};
use tollgate::store::memory::{MemoryKeyStore, MemoryLedger};
use tollgate::store::{StoreError, StoreFuture};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn usd(s: &str) -> Money {
    s.parse().unwrap()
}

/// Model `m`: $1 per million input tokens, $2 per million output tokens.
fn pricing() -> Pricing {
    Pricing::new().with(
        "m",
        ModelPrice::per_million("1", "2")
            .unwrap()
            .max_output_tokens(1_000),
    )
}

fn team(id: &str) -> TenantRecord {
    TenantRecord::new(TenantKind::Team, id)
}

fn key(id: &str, team: Option<&str>) -> KeyRecord {
    let mut record = KeyRecord::new(id, KeyHash::of(format!("sk-{id}")));
    record.team = team.map(str::to_owned);
    record
}

/// A chat request for model `m` with a 1-token prompt and `max_tokens`.
fn request(key: &str, max_tokens: u64) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"m","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"abcd"}}]}}"#
    );
    Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer sk-{key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// An upstream that reports `prompt` and `completion` tokens.
fn upstream(
    prompt: u64,
    completion: u64,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Body>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(move |req: Request<Full<Bytes>>| async move {
        let caller = req.extensions().get::<Principal>().cloned();
        let body = format!(
            r#"{{"choices":[],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{}}}}}"#,
            prompt + completion
        );
        let mut response = Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)).boxed_unsync())
            .unwrap();
        if let Some(caller) = caller {
            response.extensions_mut().insert(caller);
        }
        Ok::<_, Infallible>(response)
    })
}

async fn text<B: http_body::Body>(response: Response<B>) -> String
where
    B::Error: std::fmt::Debug,
{
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

// ---- the records ----------------------------------------------------------

#[test]
fn records_enforce_one_org_per_team_and_none_for_others() {
    let mut user = TenantRecord::new(TenantKind::User, "ann");
    user.check().unwrap();
    user.org = Some("acme".into());
    assert!(
        user.check()
            .unwrap_err()
            .to_string()
            .contains("only a team")
    );
    let mut research = team("research");
    research.org = Some("acme".into());
    research.check().unwrap();
    // A budget of another scope does not belong on a tenant.
    research.budgets.push(BudgetSpec::budget(
        BudgetScope::Team("other".into()),
        usd("1"),
        Period::Monthly,
    ));
    assert!(research.check().is_err());
    assert!(TenantRecord::new(TenantKind::Org, "a b").check().is_err());
}

#[test]
fn a_tenant_record_supersedes_the_copy_on_a_key() {
    // The old way: the team's limit and budget copied into the key.
    let mut record = key("alice", Some("research"));
    record.scope_limits.push(ScopeLimits::new(
        "team",
        "research",
        [Limit::requests_per_minute(5)],
    ));
    let copy = BudgetSpec::budget(
        BudgetScope::Team("research".into()),
        usd("9"),
        Period::Monthly,
    );
    record.budgets.push(copy.clone());
    let own = BudgetSpec::budget(BudgetScope::Key("alice".into()), usd("1"), Period::Monthly);
    record.budgets.push(own.clone());
    // The record is the one source of truth.
    let mut research = team("research");
    research.org = Some("acme".into());
    research.rate_limits.push(Limit::requests_per_minute(600));
    let budget = BudgetSpec::budget(research.scope(), usd("50"), Period::Monthly);
    research.budgets.push(budget.clone());
    let principal = Principal::new(record).with_tenants(tollgate::auth::Tenants {
        team: Some(Arc::new(research)),
        ..Default::default()
    });
    assert_eq!(principal.budgets(), [own, budget]);
    assert_eq!(principal.scope_limits().len(), 1);
    assert_eq!(principal.scope_limits()[0].limits[0].amount, 600);
    assert_eq!(principal.org(), Some("acme"));
    let scopes: Vec<_> = principal.spend_scopes().iter().map(|s| s.kind()).collect();
    assert_eq!(scopes, [ScopeKind::Key, ScopeKind::Team, ScopeKind::Org]);
}

// ---- the layers -----------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_team_limit_is_shared_by_its_keys_and_named_when_it_refuses() {
    let store = MemoryKeyStore::new();
    let mut research = team("research");
    research.rate_limits.push(Limit::requests_per_minute(3));
    store.insert_tenant(research).unwrap();
    store.insert(key("alice", Some("research"))).unwrap();
    store.insert(key("bob", Some("research"))).unwrap();
    store.insert(key("carol", None)).unwrap();
    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(store.clone()))
        .layer(RateLimitLayer::new())
        .service(upstream(1, 1));
    for caller in ["alice", "bob", "alice"] {
        let response = service.clone().oneshot(request(caller, 10)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{caller}");
    }
    let refused = service.clone().oneshot(request("bob", 10)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        text(refused)
            .await
            .contains("Rate limit exceeded: 3 requests per minute for team research"),
    );
    // A key outside the team is not limited by it.
    let other = service.clone().oneshot(request("carol", 10)).await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    // A change to the team reaches every key at once.
    let mut raised = (*store
        .get_tenant(&TenantKind::Team.scope("research"))
        .unwrap())
    .clone();
    raised.rate_limits = vec![Limit::requests_per_minute(5)];
    store.insert_tenant(raised).unwrap();
    let response = service.clone().oneshot(request("alice", 10)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_team_budget_is_charged_by_every_key_and_named_when_it_refuses() {
    let store = MemoryKeyStore::new();
    let ledger = MemoryLedger::new();
    let mut research = team("research");
    research.org = Some("acme".into());
    let budget = BudgetSpec::budget(research.scope(), usd("0.00005"), Period::Monthly);
    research.budgets.push(budget.clone());
    store.insert_tenant(research).unwrap();
    let mut acme = TenantRecord::new(TenantKind::Org, "acme");
    let org_budget = BudgetSpec::budget(acme.scope(), usd("100"), Period::Monthly);
    acme.budgets.push(org_budget.clone());
    store.insert_tenant(acme).unwrap();
    store.insert(key("alice", Some("research"))).unwrap();
    store.insert(key("bob", Some("research"))).unwrap();
    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(store.clone()))
        .layer(BudgetLayer::with_ledger(pricing(), ledger.clone()).policy(ReservePolicy::Strict))
        .service(upstream(1, 10));
    // Worst case 1 × $1/M + 10 × $2/M = $0.000021 of $0.00005: two fit,
    // the third does not.
    for caller in ["alice", "bob"] {
        let response = service.clone().oneshot(request(caller, 10)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
    }
    // Charged to the team and to its org, all or nothing.
    let spent = Money::from_nanos(2 * (1_000 + 10 * 2_000));
    assert_eq!(ledger.read(&budget).await.unwrap().spent, spent);
    assert_eq!(ledger.read(&org_budget).await.unwrap().spent, spent);
    let refused = service.clone().oneshot(request("alice", 10)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        refused.extensions().get::<ApiError>().unwrap().message(),
        "Budget exceeded: $0.00005 limit reached for team research"
    );
    // The org was not held for the refused request.
    let org = ledger.read(&org_budget).await.unwrap();
    assert_eq!((org.spent, org.reserved), (spent, Money::ZERO));
}

#[tokio::test]
async fn a_disabled_tenant_refuses_its_keys_like_a_disabled_key() {
    let store = MemoryKeyStore::new();
    let mut user = TenantRecord::new(TenantKind::User, "ann");
    user.disabled = true;
    store.insert_tenant(user).unwrap();
    let mut record = key("alice", None);
    record.user = Some("ann".into());
    store.insert(record).unwrap();
    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(store.clone()))
        .service(upstream(1, 1));
    let response = service.clone().oneshot(request("alice", 1)).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let error = response.extensions().get::<ApiError>().unwrap();
    assert_eq!(error.code(), Some("account_disabled"));
    assert_eq!(
        error.message(),
        "The user this API key belongs to is disabled."
    );
    // Re-enabled: admitted.
    let mut user = (*store.get_tenant(&TenantKind::User.scope("ann")).unwrap()).clone();
    user.disabled = false;
    store.insert_tenant(user).unwrap();
    let response = service.clone().oneshot(request("alice", 1)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// A store that answers every lookup later, as a remote one does on a
/// cache miss, and counts its tenant lookups.
#[derive(Clone)]
struct Remote {
    inner: MemoryKeyStore,
    fail_tenants: bool,
}

impl KeyStore for Remote {
    fn lookup(&self, hash: &KeyHash) -> StoreFuture<Option<Arc<KeyRecord>>> {
        let found = self.inner.get_by_hash(hash);
        StoreFuture::pending(async move {
            tokio::task::yield_now().await;
            Ok(found)
        })
    }

    fn tenant(&self, scope: &BudgetScope) -> StoreFuture<Option<Arc<TenantRecord>>> {
        let found = self.inner.get_tenant(scope);
        let fail = self.fail_tenants;
        StoreFuture::pending(async move {
            tokio::task::yield_now().await;
            if fail {
                return Err(StoreError::Timeout);
            }
            Ok(found)
        })
    }
}

#[tokio::test]
async fn a_remote_store_s_tenants_are_awaited_and_its_failures_refuse() {
    let inner = MemoryKeyStore::new();
    let mut research = team("research");
    research.org = Some("acme".into());
    inner.insert_tenant(research).unwrap();
    let mut acme = TenantRecord::new(TenantKind::Org, "acme");
    acme.disabled = true;
    inner.insert_tenant(acme).unwrap();
    inner.insert(key("alice", Some("research"))).unwrap();
    inner.insert(key("bob", None)).unwrap();
    let remote = Remote {
        inner: inner.clone(),
        fail_tenants: false,
    };
    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(remote))
        .service(upstream(1, 1));
    // The team is found, then its org (disabled), through futures.
    let response = service.clone().oneshot(request("alice", 1)).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.extensions().get::<ApiError>().unwrap().message(),
        "The org this API key belongs to is disabled."
    );
    let mut acme = (*inner.get_tenant(&TenantKind::Org.scope("acme")).unwrap()).clone();
    acme.disabled = false;
    inner.insert_tenant(acme).unwrap();
    let response = service.clone().oneshot(request("alice", 1)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let caller = response.extensions().get::<Principal>().unwrap();
    assert_eq!(caller.org(), Some("acme"));
    assert_eq!(caller.tenants().unwrap().iter().count(), 2);
    // A key without tenants asks nothing more.
    let response = service.clone().oneshot(request("bob", 1)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .extensions()
            .get::<Principal>()
            .unwrap()
            .tenants()
            .is_none()
    );

    // A store that cannot answer for the tenants fails closed.
    let failing = ServiceBuilder::new()
        .layer(AuthLayer::new(Remote {
            inner,
            fail_tenants: true,
        }))
        .service(upstream(1, 1));
    let response = failing.oneshot(request("alice", 1)).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

// ---- the stores -----------------------------------------------------------

/// What every store does with tenants.
async fn admin_conformance(store: &dyn TenantAdmin) {
    let mut research = team("research");
    research.org = Some("acme".into());
    research.rate_limits.push(Limit::tokens_per_minute(1_000));
    research.budgets.push(BudgetSpec::budget(
        research.scope(),
        usd("50"),
        Period::Monthly,
    ));
    assert_eq!(
        store
            .put_tenant(research.clone(), PutMode::Create)
            .await
            .unwrap(),
        None
    );
    let error = store
        .put_tenant(research.clone(), PutMode::Create)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Conflict(_)), "{error:?}");
    let mut invalid = TenantRecord::new(TenantKind::Org, "acme");
    invalid.org = Some("parent".into());
    assert!(matches!(
        store.put_tenant(invalid, PutMode::Upsert).await,
        Err(StoreError::Conflict(_))
    ));
    for id in ["a", "z"] {
        store.put_tenant(team(id), PutMode::Create).await.unwrap();
    }
    store
        .put_tenant(TenantRecord::new(TenantKind::User, "ann"), PutMode::Create)
        .await
        .unwrap();
    let scope = research.scope();
    assert_eq!(
        store.get_tenant(&scope).await.unwrap().as_deref(),
        Some(&research)
    );
    assert_eq!(
        store.tenant(&scope).await.unwrap().as_deref(),
        Some(&research)
    );
    let ids = |page: Vec<Arc<TenantRecord>>| page.iter().map(|t| t.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(store
            .list_tenants(TenantKind::Team, None, 10)
            .await
            .unwrap()),
        ["a", "research", "z"]
    );
    assert_eq!(
        ids(store
            .list_tenants(TenantKind::Team, Some("a"), 1)
            .await
            .unwrap()),
        ["research"]
    );
    assert_eq!(
        ids(store
            .list_tenants(TenantKind::User, None, 10)
            .await
            .unwrap()),
        ["ann"]
    );
    let mut changed = research.clone();
    changed.disabled = true;
    let replaced = store.put_tenant(changed, PutMode::Upsert).await.unwrap();
    assert_eq!(replaced.as_deref(), Some(&research));
    assert!(store.tenant(&scope).await.unwrap().unwrap().disabled);
    assert!(store.delete_tenant(&scope).await.unwrap());
    assert!(!store.delete_tenant(&scope).await.unwrap());
    assert_eq!(store.tenant(&scope).await.unwrap(), None);
    assert_eq!(
        store
            .get_tenant(&BudgetScope::Key("x".into()))
            .await
            .unwrap(),
        None
    );
    // Keys are the same store's.
    store
        .put(key("alice", Some("z")), PutMode::Create)
        .await
        .unwrap();
    assert!(store.get("alice").await.unwrap().is_some());
}

#[tokio::test]
async fn the_memory_store_keeps_tenants() {
    admin_conformance(&MemoryKeyStore::new()).await;
}

#[test]
fn configuration_entries_grant_tenants() {
    let entry: TenantEntry = toml::from_str(
        r#"
        id = "research"
        org = "acme"
        requests_per_minute = 60
        budget_usd = "50.00"
        budget_period = "weekly"
    "#,
    )
    .unwrap();
    let Grant::Put(record) = entry.grant(TenantKind::Team, None).unwrap() else {
        panic!("a new entry creates its tenant")
    };
    assert_eq!(record.budgets[0].period, Period::Weekly);
    assert_eq!(
        entry.grant(TenantKind::Team, Some(&record)).unwrap(),
        Grant::Unchanged
    );
    assert_eq!(
        TenantEntry::from_record(&record).org.as_deref(),
        Some("acme")
    );
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_store_keeps_tenants_on_disk() {
    use tollgate::store::sqlite::SqliteStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).unwrap();
    admin_conformance(&store.keys()).await;
    let mut acme = TenantRecord::new(TenantKind::Org, "acme");
    acme.metadata.insert("plan".into(), "gold".into());
    store
        .keys()
        .put_tenant(acme.clone(), PutMode::Create)
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    let keys = store.keys();
    assert_eq!(
        keys.tenant(&acme.scope()).await.unwrap().as_deref(),
        Some(&acme)
    );
    assert_eq!(
        keys.list_tenants(TenantKind::Team, None, 10)
            .await
            .unwrap()
            .len(),
        2
    );
}

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_keeps_tenants_and_every_instance_sees_a_change() {
    use std::time::{Duration, Instant};
    use tollgate::store::redis::{RedisConfig, RedisConnection, RedisKeyStore};
    let server = redis_support::RedisServer::start();
    let connect = || async {
        let config = RedisConfig::from_url(&server.url()).unwrap();
        RedisKeyStore::new(RedisConnection::connect(config).await.unwrap())
    };
    let one = connect().await;
    let two = connect().await;
    admin_conformance(&one).await;
    // Cached on the second instance, then changed through the first.
    let scope = TenantKind::Team.scope("a");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !two.is_listening() {
        assert!(Instant::now() < deadline, "the subscription never came up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!two.tenant(&scope).await.unwrap().unwrap().disabled);
    assert!(
        two.tenant(&scope).is_ready(),
        "a cached tenant is answered at once"
    );
    let mut disabled = team("a");
    disabled.disabled = true;
    one.put_tenant(disabled, PutMode::Upsert).await.unwrap();
    let changed = Instant::now();
    loop {
        if two.tenant(&scope).await.unwrap().unwrap().disabled {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "the change did not reach the other instance within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
