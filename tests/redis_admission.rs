//! `AdmissionLayer` on `RedisAdmissionStore`, against a real `redis-server`
//! (one per test, on 127.0.0.1): one script call per admission (where the
//! rate limit and the budget stacked make two), both or neither (a request
//! the budget denies leaves no count, one the limits refuse holds no
//! money), and 200 requests at once never overshoot a budget or a limit.
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
fn upstream() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    service_fn(|_req: Request<Full<Bytes>>| async {
        let head = stream::once(async { Ok(Frame::data(Bytes::from_static(b"{\"choices\":[]"))) });
        let body = StreamBody::new(head.chain(stream::pending())).boxed_unsync();
        Ok::<_, Infallible>(Response::new(body))
    })
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
