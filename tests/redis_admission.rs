//! `AdmissionLayer` on `RedisAdmissionStore`, against a real `redis-server`
//! (one per test, on 127.0.0.1): one script call per admission (where the
//! rate limit and the budget stacked make two), both or neither (a request
//! the budget denies leaves no count, one the limits refuse holds no
//! money), and 200 requests at once never overshoot a budget or a limit.
//! The same on a Redis Cluster (`on_a_cluster`), where the store asks the
//! two stores in turn.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;

#[path = "support/boxed.rs"]
mod boxed_support;
use boxed_support::{Body, Svc, boxed};
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use futures_util::{StreamExt, stream};
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tollgate::admission::AdmissionLayer;
use tollgate::auth::{KeyHash, KeyRecord, Principal};
use tollgate::budget::{
    BudgetLayer, BudgetScope, BudgetSpec, Ledger, ModelPrice, Money, Period, Pricing, ReservePolicy,
};
use tollgate::rate_limit::{Limit, RateLimitLayer};
use tollgate::store::redis::{
    RedisAdmissionStore, RedisConfig, RedisConnection, RedisLedger, RedisRateLimitStore,
};
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

use redis_support::RedisServer;

/// A request's worst case: 1 prompt token at $1 per million and 10 output
/// tokens at $2 per million, in nano-USD.
const WORST: i64 = 1_000 + 10 * 2_000;

fn pricing() -> Pricing {
    Pricing::new().with("m", ModelPrice::per_million("1", "2").unwrap())
}

fn budget(limit: Money) -> BudgetSpec {
    BudgetSpec::budget(BudgetScope::Key("alice".into()), limit, Period::Monthly)
}

fn request(limits: &[Limit], limit: Money) -> Request<Full<Bytes>> {
    let mut record = KeyRecord::new("alice", KeyHash::of("sk-alice"));
    record.budgets = vec![budget(limit)];
    record.rate_limits = limits.to_vec();
    let body = r#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"abcd"}]}"#;
    let mut req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    req.extensions_mut().insert(Principal::new(record));
    req
}

/// An upstream whose answers never end: every admitted request holds its
/// reservation and its count until its response is dropped.
fn upstream() -> Svc {
    boxed(service_fn(|_req: Request<Full<Bytes>>| async {
        let head = stream::once(async { Ok(Frame::data(Bytes::from_static(b"{\"choices\":[]"))) });
        let body = StreamBody::new(head.chain(stream::pending())).boxed_unsync();
        Ok::<_, Infallible>(Response::new(body))
    }))
}

struct Setup {
    server: RedisServer,
    redis: RedisConnection,
    ledger: RedisLedger,
    joint: Svc,
    stacked: Svc,
}

async fn setup() -> Setup {
    setup_with(Duration::from_secs(10)).await
}

/// Stores whose calls give up after `timeout`.
async fn setup_with(timeout: Duration) -> Setup {
    let server = RedisServer::start();
    let config = RedisConfig::from_url(&server.url())
        .unwrap()
        .call_timeout(timeout);
    let redis = RedisConnection::connect(config).await.unwrap();
    let limits = RedisRateLimitStore::new(redis.clone());
    let ledger = RedisLedger::new(redis.clone());
    let rate_limit = RateLimitLayer::new().store(limits.clone());
    let budgets = BudgetLayer::with_ledger(pricing(), ledger.clone()).policy(ReservePolicy::Strict);
    let joint = AdmissionLayer::new(rate_limit.clone(), budgets.clone())
        .store(RedisAdmissionStore::new(limits, ledger.clone()))
        .layer(upstream());
    let stacked = ServiceBuilder::new()
        .layer(rate_limit)
        .layer(budgets)
        .service(upstream());
    Setup {
        server,
        redis,
        ledger,
        joint: boxed(joint),
        stacked: boxed(stacked),
    }
}

async fn connection(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(server.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

async fn keys(server: &RedisServer) -> u64 {
    redis::cmd("DBSIZE")
        .query_async(&mut connection(server).await)
        .await
        .unwrap()
}

/// Script calls made by `n` requests in turn, their responses kept (so no
/// settlement runs while counting).
async fn calls_for(setup: &Setup, service: &Svc, n: usize, limits: &[Limit]) -> u64 {
    let before = setup.server.script_calls();
    let mut held = Vec::new();
    for _ in 0..n {
        let response = service
            .clone()
            .oneshot(request(limits, Money::from_usd(1)))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        held.push(response);
    }
    let calls = setup.server.script_calls() - before;
    drop(held);
    // Their settlements, batched, land before the next count starts.
    setup.redis.flush().await;
    calls
}

#[tokio::test]
async fn one_script_call_per_admission() {
    let setup = setup().await;
    let limits = [
        Limit::requests_per_minute(1_000),
        Limit::tokens_per_minute(1_000_000),
    ];
    assert_eq!(calls_for(&setup, &setup.joint, 20, &limits).await, 20);
    // The two layers stacked: an acquire, then a reservation.
    assert_eq!(calls_for(&setup, &setup.stacked, 20, &limits).await, 40);
}

#[tokio::test]
async fn a_request_over_budget_leaves_no_count() {
    let setup = setup().await;
    let limits = [Limit::requests_per_minute(2)];
    for _ in 0..4 {
        let response = setup
            .joint
            .clone()
            .oneshot(request(&limits, Money::ZERO))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
        // As if counted (the headers of the two layers stacked), but not.
        assert_eq!(response.headers()["x-ratelimit-remaining-requests"], "1");
    }
    assert_eq!(keys(&setup.server).await, 0, "nothing written");
    // Stacked, the rate limit counts what the budget then refuses.
    let response = setup
        .stacked
        .clone()
        .oneshot(request(&limits, Money::ZERO))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    assert_ne!(keys(&setup.server).await, 0);
}

#[tokio::test]
async fn a_rate_limited_request_holds_no_money() {
    let setup = setup().await;
    let limits = [Limit::requests_per_minute(1)];
    let usd = Money::from_usd(1);
    let first = setup
        .joint
        .clone()
        .oneshot(request(&limits, usd))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    for _ in 0..3 {
        let refused = setup
            .joint
            .clone()
            .oneshot(request(&limits, usd))
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    let status = setup.ledger.read(&budget(usd)).await.unwrap();
    assert_eq!(
        status.reserved,
        Money::from_nanos(WORST),
        "the first request's hold only"
    );
    drop(first);
}

/// Sends 200 requests at once; their statuses, the responses kept.
async fn at_once(service: &Svc, limits: &[Limit], usd: Money) -> Vec<Response<Body>> {
    let calls = (0..200).map(|_| service.clone().oneshot(request(limits, usd)));
    join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

fn count(responses: &[Response<Body>], status: StatusCode) -> usize {
    responses.iter().filter(|r| r.status() == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_at_once_never_overshoot_a_budget() {
    let setup = setup().await;
    let limits = [Limit::requests_per_minute(80)];
    let usd = Money::from_nanos(50 * WORST);
    let responses = at_once(&setup.joint, &limits, usd).await;
    assert_eq!(count(&responses, StatusCode::OK), 50);
    // Requests over budget are not counted: the limit never binds.
    assert_eq!(count(&responses, StatusCode::PAYMENT_REQUIRED), 150);
    let status = setup.ledger.read(&budget(usd)).await.unwrap();
    assert_eq!(status.reserved, usd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_at_once_never_overshoot_a_limit() {
    let setup = setup().await;
    let limits = [Limit::requests_per_minute(30)];
    let usd = Money::from_nanos(50 * WORST);
    let responses = at_once(&setup.joint, &limits, usd).await;
    assert_eq!(count(&responses, StatusCode::OK), 30);
    assert_eq!(count(&responses, StatusCode::TOO_MANY_REQUESTS), 170);
    let status = setup.ledger.read(&budget(usd)).await.unwrap();
    assert_eq!(
        status.reserved,
        Money::from_nanos(30 * WORST),
        "refusals hold nothing"
    );
}

#[tokio::test]
async fn a_store_that_does_not_answer_is_answered_as_stacked() {
    // The rate limit fails open (its default), the budget closed (its
    // default): together, the budget's 503 once its own call fails too.
    let setup = setup_with(Duration::from_millis(200)).await;
    let limits = [Limit::requests_per_minute(10)];
    let usd = Money::from_usd(1);
    setup.server.freeze();
    let mut seen = Vec::new();
    for service in [&setup.joint, &setup.stacked] {
        let response = service
            .clone()
            .oneshot(request(&limits, usd))
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        seen.push((status, body));
    }
    setup.server.thaw();
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0].0, StatusCode::SERVICE_UNAVAILABLE);
    // And once it answers again, admitted.
    let response = setup
        .joint
        .clone()
        .oneshot(request(&limits, usd))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// `RedisAdmissionStore` on a three-primary Redis Cluster. There a
/// caller's scopes (`{<key>}`), the scopes every key shares (`{shared}`: a
/// model's limit) and the ledger (`{ledger}`) live in different slots, so
/// no admission is one script: the store asks the two stores in turn
/// (`InTurn`): the limits (the caller's script, then the shared one), then
/// the budgets, and refunds the limits when the budgets deny.
mod on_a_cluster {
    use std::fmt::Debug;
    use std::time::Instant;

    use tokio::runtime::Builder;
    use tollgate::rate_limit::{Acquire, RateLimitKey, RateLimitStore, ScopeCharge};

    use super::redis_support::RedisCluster;
    use super::*;

    /// One cluster (starting it is most of this test's time) for three
    /// scenarios, their keys apart by prefix, each on the runtime it needs.
    /// The refusals run last: a failure there leaves the others checked.
    #[test]
    fn the_fallback_admits_and_charges_as_one_script_does() {
        let cluster = RedisCluster::start();
        let once = each_admitted_request_is_charged_exactly_once(&cluster);
        on(&mut Builder::new_current_thread(), once);
        let at_once = two_hundred_at_once_never_overshoot_a_budget_nor_a_limit(&cluster);
        on(Builder::new_multi_thread().worker_threads(2), at_once);
        // One thread: a refund left to a task would run only once the next
        // request is on its way, every time, not now and then.
        let refusals = a_refusal_charges_neither_the_limits_nor_the_budget(&cluster);
        on(&mut Builder::new_current_thread(), refusals);
    }

    /// Runs `scenario` to its end on a runtime of `builder`'s.
    fn on(builder: &mut Builder, scenario: impl Future<Output = ()>) {
        builder.enable_all().build().unwrap().block_on(scenario);
    }

    /// The model's limit, shared by every key.
    const MODEL: RateLimitKey<'static> = RateLimitKey {
        scope: RateLimitKey::MODEL,
        id: "m",
        model: None,
    };

    /// Alice's own scope.
    const ALICE: RateLimitKey<'static> = RateLimitKey {
        scope: RateLimitKey::KEY,
        id: "alice",
        model: None,
    };

    /// A request's usage (3 prompt, 4 completion tokens) at model `m`'s
    /// prices, in nano-USD.
    const USED: i64 = 3 * 1_000 + 4 * 2_000;

    /// The joint admission on a cluster, and its stores to read back.
    struct Stack {
        limits: RedisRateLimitStore,
        ledger: RedisLedger,
        joint: Svc,
    }

    /// `AdmissionLayer` with a `RedisAdmissionStore` on `cluster` (its keys
    /// under `prefix`), model `m` limited to `model` for every key (if any:
    /// a scope in the shared slot), in front of `upstream`.
    async fn stack(
        cluster: &RedisCluster,
        prefix: &str,
        model: Option<Limit>,
        upstream: Svc,
    ) -> Stack {
        let config = cluster.config().key_prefix(prefix);
        let redis = RedisConnection::connect(config).await.unwrap();
        let limits = RedisRateLimitStore::new(redis.clone());
        let ledger = RedisLedger::new(redis);
        let mut rate_limit = RateLimitLayer::new().store(limits.clone());
        if let Some(model) = model {
            rate_limit = rate_limit.model_limit("m", model);
        }
        let budgets =
            BudgetLayer::with_ledger(pricing(), ledger.clone()).policy(ReservePolicy::Strict);
        let joint = AdmissionLayer::new(rate_limit, budgets)
            .store(RedisAdmissionStore::new(limits.clone(), ledger.clone()))
            .layer(upstream);
        Stack {
            limits,
            ledger,
            joint: boxed(joint),
        }
    }

    /// An upstream answering at once with usage (3 prompt, 4 completion
    /// tokens): each request settles when its body is read.
    fn answering() -> Svc {
        boxed(service_fn(|_req: Request<Full<Bytes>>| async {
            let json = br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
            let response = Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(json)))
                .unwrap();
            Ok::<_, Infallible>(response)
        }))
    }

    /// What is left of `limit` in the scope `key`, read with an acquire
    /// that costs nothing.
    async fn left(store: &RedisRateLimitStore, key: RateLimitKey<'_>, limit: Limit) -> u64 {
        let limits = [limit];
        let scopes = [ScopeCharge {
            key,
            limits: &limits,
            costs: &[0],
            max_concurrent: None,
        }];
        let admission = store.acquire(&Acquire { scopes: &scopes }).await.unwrap();
        admission.states[0].remaining
    }

    /// Waits (5 s at most) until `read` answers `expected`: on a cluster a
    /// settlement (or a refund left to a task) lands after the response.
    async fn settles_to<T, F>(what: &str, expected: T, mut read: impl FnMut() -> F)
    where
        T: PartialEq + Debug,
        F: Future<Output = T>,
    {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let seen = read().await;
            if seen == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {seen:?} after 5 s, expected {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The budget's spend and holds.
    async fn spend(ledger: &RedisLedger, limit: Money) -> (Money, Money) {
        let status = ledger.read(&budget(limit)).await.unwrap();
        (status.spent, status.reserved)
    }

    /// Alice's request, with her `limits` and budget of `usd`.
    async fn send(stack: &Stack, limits: &[Limit], usd: Money) -> Response<Body> {
        let response = stack.joint.clone().oneshot(request(limits, usd)).await;
        response.unwrap()
    }

    /// Five requests through alice's slot and the shared one: the limits
    /// count five requests and their tokens, the budget five usages.
    async fn each_admitted_request_is_charged_exactly_once(cluster: &RedisCluster) {
        let (rpm, tpm) = (
            Limit::requests_per_minute(10),
            Limit::tokens_per_minute(1_000),
        );
        let model = Limit::requests_per_minute(100);
        let stack = stack(cluster, "once:", Some(model), answering()).await;
        let usd = Money::from_usd(1);
        for i in 1..=5 {
            let response = send(&stack, &[rpm, tpm], usd).await;
            assert_eq!(response.status(), StatusCode::OK, "request {i}");
            // Alice's own count, her tightest: one request more each time.
            let left = (10 - i).to_string();
            assert_eq!(response.headers()["x-ratelimit-remaining-requests"], *left);
            // Read to its end: its usage settles the limits and the budget.
            response.into_body().collect().await.unwrap();
        }
        let ledger = &stack.ledger;
        let spent = (Money::from_nanos(5 * USED), Money::ZERO);
        settles_to("spent, held", spent, || spend(ledger, usd)).await;
        // Five requests, 7 tokens each once settled (11 held until then).
        let limits = &stack.limits;
        settles_to("alice's requests", 5, || left(limits, ALICE, rpm)).await;
        settles_to("alice's tokens", 1_000 - 5 * 7, || left(limits, ALICE, tpm)).await;
        settles_to("the model's requests", 95, || left(limits, MODEL, model)).await;
        // Settled for good: nothing charged twice meanwhile.
        assert_eq!(spend(ledger, usd).await, spent);
        assert_eq!(left(limits, ALICE, rpm).await, 5);
    }

    /// 200 requests at once (their responses held), three ways: the budget
    /// binds, alice's limit binds, the model's limit binds.
    async fn two_hundred_at_once_never_overshoot_a_budget_nor_a_limit(cluster: &RedisCluster) {
        let usd = Money::from_nanos(50 * WORST);

        // The budget binds: 50 admitted. The requests it denies are
        // refunded (until then their charge may refuse others: 429s among
        // the 402s, a cluster refusing a little more, never admitting more).
        let (eighty, many) = (
            Limit::requests_per_minute(80),
            Limit::requests_per_minute(1_000),
        );
        let budget = stack(cluster, "budget:", Some(many), upstream()).await;
        let responses = at_once(&budget.joint, &[eighty], usd).await;
        assert_eq!(count(&responses, StatusCode::OK), 50);
        let refused = count(&responses, StatusCode::PAYMENT_REQUIRED)
            + count(&responses, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused, 150);
        assert_eq!(spend(&budget.ledger, usd).await, (Money::ZERO, usd));
        let limits = &budget.limits;
        settles_to("alice's requests", 30, || left(limits, ALICE, eighty)).await;
        settles_to("the model's requests", 950, || left(limits, MODEL, many)).await;

        // Alice's limit binds, her scope alone (one script in her slot,
        // then the budget in the ledger's).
        let thirty = Limit::requests_per_minute(30);
        let own = stack(cluster, "own:", None, upstream()).await;
        let responses = at_once(&own.joint, &[thirty], usd).await;
        assert_eq!(count(&responses, StatusCode::OK), 30);
        assert_eq!(count(&responses, StatusCode::TOO_MANY_REQUESTS), 170);
        let held = (Money::ZERO, Money::from_nanos(30 * WORST));
        assert_eq!(spend(&own.ledger, usd).await, held, "refusals hold nothing");

        // The model's limit binds (alice's script, then the shared one,
        // which refuses: her charge undone before the answer).
        let shared = stack(cluster, "shared:", Some(thirty), upstream()).await;
        let responses = at_once(&shared.joint, &[many], usd).await;
        assert_eq!(count(&responses, StatusCode::OK), 30);
        assert_eq!(count(&responses, StatusCode::TOO_MANY_REQUESTS), 170);
        assert_eq!(spend(&shared.ledger, usd).await, held, "no refusal held");
        assert_eq!(left(&shared.limits, ALICE, many).await, 970);
    }

    /// A request refused by alice's limit or the model's holds no money
    /// (and the model's refusal leaves no count in alice's slot); one over
    /// budget leaves no count, in alice's slot nor the shared one.
    async fn a_refusal_charges_neither_the_limits_nor_the_budget(cluster: &RedisCluster) {
        // Refused by alice's limit: no money held, the model not counted.
        let usd = Money::from_usd(1);
        let one = Limit::requests_per_minute(1);
        let ten = Limit::requests_per_minute(10);
        let busy = stack(cluster, "busy:", Some(ten), upstream()).await;
        let first = send(&busy, &[one], usd).await;
        assert_eq!(first.status(), StatusCode::OK);
        for _ in 0..3 {
            let refused = send(&busy, &[one], usd).await;
            assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        }
        let held = (Money::ZERO, Money::from_nanos(WORST));
        assert_eq!(spend(&busy.ledger, usd).await, held, "the first's only");
        assert_eq!(left(&busy.limits, MODEL, ten).await, 9);

        // Refused by the model's limit: alice's charge undone, no money held.
        let full = stack(cluster, "full:", Some(one), upstream()).await;
        let also_first = send(&full, &[ten], usd).await;
        assert_eq!(also_first.status(), StatusCode::OK);
        for _ in 0..3 {
            let refused = send(&full, &[ten], usd).await;
            assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
            let body = refused.into_body().collect().await.unwrap().to_bytes();
            let message = std::str::from_utf8(&body).unwrap();
            assert!(message.contains("for model m (all keys)"), "{message}");
        }
        assert_eq!(spend(&full.ledger, usd).await, held, "the first's only");
        assert_eq!(left(&full.limits, ALICE, ten).await, 9);

        // Over budget: the limits' charges are refunded before the 402 is
        // answered, as one script charges nothing: a client out of money
        // that retries is told so again, never rate limited.
        let poor = stack(cluster, "poor:", Some(one), upstream()).await;
        for i in 0..4 {
            let response = send(&poor, &[one], Money::ZERO).await;
            assert_eq!(
                response.status(),
                StatusCode::PAYMENT_REQUIRED,
                "request {i}"
            );
            // As if counted (the headers of the two layers stacked), but not.
            assert_eq!(response.headers()["x-ratelimit-remaining-requests"], "0");
        }
        let limits = &poor.limits;
        settles_to("alice's requests", 1, || left(limits, ALICE, one)).await;
        settles_to("the model's requests", 1, || left(limits, MODEL, one)).await;
    }
}
