//! `AdmissionLayer` on the memory stores answers as `RateLimitLayer`
//! stacked outside `BudgetLayer` does: the same statuses, headers, bodies
//! and settled amounts for a request admitted, rate limited, over budget,
//! refused for concurrency, and admitted in shadow mode; and a request the
//! budgets deny is not counted by the limits (both or neither).

#[path = "support/boxed.rs"]
mod boxed_support;
use boxed_support::{Body, Svc, boxed};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::sync::Notify;
use tollgate::RequestMeta;
use tollgate::admission::AdmissionLayer;
use tollgate::auth::{KeyHash, KeyRecord, Principal, TenantKind, TenantRecord, Tenants};
use tollgate::budget::{
    BudgetLayer, BudgetScope, BudgetSpec, Ledger, ModelPrice, Money, Period, Pricing,
};
use tollgate::rate_limit::{Limit, RateLimitLayer};
use tollgate::store::memory::{MemoryLedger, MemoryRateLimitStore};
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

/// Model `m`: $1 per million input tokens, $2 per million output tokens.
fn pricing() -> Pricing {
    Pricing::new().with("m", ModelPrice::per_million("1", "2").unwrap())
}

fn budget(limit: Money) -> BudgetSpec {
    BudgetSpec::budget(BudgetScope::Key("alice".into()), limit, Period::Monthly)
}

/// What a test configures: alice's limits and budget, and shadow mode.
#[derive(Clone)]
struct Setup {
    limits: Vec<Limit>,
    max_concurrent: Option<u32>,
    budget: Money,
    /// Alice has no budget at all (only the rate limit meters her).
    unbudgeted: bool,
    shadow: bool,
    /// The request's `RequestMeta` is read before the layers.
    read_before: bool,
    /// Alice's team, with its own limits and budgets.
    team: Option<TenantRecord>,
}

impl Setup {
    fn new(limits: Vec<Limit>, budget: Money) -> Self {
        Setup {
            limits,
            max_concurrent: None,
            budget,
            unbudgeted: false,
            shadow: false,
            read_before: false,
            team: None,
        }
    }

    fn alice(&self) -> Principal {
        let mut record = KeyRecord::new("alice", KeyHash::of("sk-alice"));
        if !self.unbudgeted {
            record.budgets = vec![budget(self.budget)];
        }
        record.rate_limits = self.limits.clone();
        record.max_concurrent = self.max_concurrent;
        record.team = self.team.as_ref().map(|t| t.id.clone());
        Principal::new(record).with_tenants(Tenants {
            team: self.team.clone().map(Arc::new),
            ..Default::default()
        })
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let body = r#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"abcd"}]}"#;
        let mut req = Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        req.extensions_mut().insert(self.alice());
        req
    }
}

/// An upstream answering with usage (3 prompt, 4 completion tokens); while
/// `hold` is set, its body waits for `release` before it ends.
#[derive(Clone, Default)]
struct Upstream {
    hold: Arc<AtomicBool>,
    release: Arc<Notify>,
}

impl Upstream {
    fn service(
        &self,
    ) -> impl tower::Service<
        Request<Full<Bytes>>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        let this = self.clone();
        service_fn(move |_req: Request<Full<Bytes>>| {
            let this = this.clone();
            async move {
                let json = Bytes::from_static(
                    br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
                );
                let body = if this.hold.load(Ordering::SeqCst) {
                    let release = this.release.clone();
                    let wait = stream::once(async move {
                        release.notified().await;
                        Ok(Frame::data(json))
                    });
                    StreamBody::new(wait).boxed_unsync()
                } else {
                    Full::new(json).boxed_unsync()
                };
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "application/json")
                        .body(body)
                        .unwrap(),
                )
            }
        })
    }
}

/// One of the two compositions under test, on stores of its own.
struct Stack {
    service: Svc,
    ledger: MemoryLedger,
    upstream: Upstream,
}

fn layers(setup: &Setup) -> (RateLimitLayer, BudgetLayer, MemoryLedger) {
    let ledger = MemoryLedger::new();
    let rate_limit = RateLimitLayer::new()
        .store(MemoryRateLimitStore::new())
        .shadow(setup.shadow);
    let budget = BudgetLayer::with_ledger(pricing(), ledger.clone());
    (rate_limit, budget, ledger)
}

fn stacked(setup: &Setup) -> Stack {
    let (rate_limit, budget, ledger) = layers(setup);
    let upstream = Upstream::default();
    let service = ServiceBuilder::new()
        .layer(rate_limit)
        .layer(budget)
        .service(upstream.service());
    Stack {
        service: boxed(service),
        ledger,
        upstream,
    }
}

fn joint(setup: &Setup) -> Stack {
    let (rate_limit, budget, ledger) = layers(setup);
    let upstream = Upstream::default();
    let service = AdmissionLayer::new(rate_limit, budget).layer(upstream.service());
    Stack {
        service: boxed(service),
        ledger,
        upstream,
    }
}

/// What a client sees of a response.
#[derive(Debug, PartialEq)]
struct Seen {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

async fn call(stack: &Stack, setup: &Setup) -> Seen {
    let mut req = setup.request();
    if setup.read_before {
        req = RequestMeta::read(req, 1 << 20).await.unwrap();
    }
    let response = stack.service.clone().oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    Seen {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// The budget's spend and holds, once every settlement has run.
async fn spend(stack: &Stack, setup: &Setup) -> (Money, Money) {
    tokio::task::yield_now().await;
    let status = stack.ledger.read(&budget(setup.budget)).await.unwrap();
    (status.spent, status.reserved)
}

/// Runs `n` requests through both compositions, each answer compared:
/// once with the body read by the layers, once with its `RequestMeta` read
/// further out (the gateway's case: decided without a future of its own).
async fn same_answers(setup: &Setup, n: usize) -> Vec<Seen> {
    let mut runs = Vec::new();
    for read_before in [false, true] {
        let mut setup = setup.clone();
        setup.read_before = read_before;
        let (a, b) = (stacked(&setup), joint(&setup));
        let mut seen = Vec::new();
        for i in 0..n {
            let (x, y) = (call(&a, &setup).await, call(&b, &setup).await);
            assert_eq!(x, y, "request {i}, read before: {read_before}");
            assert_eq!(
                spend(&a, &setup).await,
                spend(&b, &setup).await,
                "request {i}, read before: {read_before}"
            );
            seen.push(x);
        }
        runs.push(seen);
    }
    let seen = runs.remove(0);
    assert_eq!(seen, runs[0], "the same with the body read before");
    seen
}

const WORST: i64 = 1_000 + 10 * 2_000;
const USED: i64 = 3 * 1_000 + 4 * 2_000;

#[tokio::test(start_paused = true)]
async fn admitted_requests_answer_and_settle_the_same() {
    let setup = Setup::new(
        vec![
            Limit::requests_per_minute(3),
            Limit::tokens_per_minute(1_000),
        ],
        Money::from_usd(1),
    );
    let seen = same_answers(&setup, 2).await;
    for s in &seen {
        assert_eq!(s.status, StatusCode::OK);
        assert!(s.headers.contains_key("x-budget-remaining-usd"), "{s:?}");
    }
    assert_eq!(seen[1].headers["x-ratelimit-remaining-requests"], "1");
    let (b, setup2) = (joint(&setup), setup.clone());
    call(&b, &setup2).await;
    assert_eq!(
        spend(&b, &setup2).await,
        (Money::from_nanos(USED), Money::ZERO)
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limited_requests_answer_the_same_and_hold_nothing() {
    let setup = Setup::new(vec![Limit::requests_per_minute(1)], Money::from_usd(1));
    let seen = same_answers(&setup, 3).await;
    assert_eq!(seen[0].status, StatusCode::OK);
    for s in &seen[1..] {
        assert_eq!(s.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(
            std::str::from_utf8(&s.body)
                .unwrap()
                .contains("Rate limit exceeded: 1 requests per minute"),
            "{s:?}"
        );
        assert!(s.headers.contains_key("retry-after"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_over_budget_answers_the_same() {
    let setup = Setup::new(vec![Limit::requests_per_minute(5)], Money::ZERO);
    let seen = same_answers(&setup, 1).await;
    let s = &seen[0];
    assert_eq!(s.status, StatusCode::PAYMENT_REQUIRED);
    assert!(
        std::str::from_utf8(&s.body)
            .unwrap()
            .contains("Budget exceeded: $0.00 limit reached"),
        "{s:?}"
    );
    assert_eq!(s.headers["x-budget-remaining-usd"], "0.00");
    // The limit headers as the charge would have left them, as stacked.
    assert_eq!(s.headers["x-ratelimit-remaining-requests"], "4");
}

#[tokio::test(start_paused = true)]
async fn a_request_over_budget_is_not_counted_by_the_limits() {
    let setup = Setup::new(vec![Limit::requests_per_minute(2)], Money::ZERO);
    let (a, b) = (stacked(&setup), joint(&setup));
    for _ in 0..2 {
        assert_eq!(call(&a, &setup).await.status, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(call(&b, &setup).await.status, StatusCode::PAYMENT_REQUIRED);
    }
    // Stacked, the two refusals used the limit; together, neither did.
    assert_eq!(call(&a, &setup).await.status, StatusCode::TOO_MANY_REQUESTS);
    let third = call(&b, &setup).await;
    assert_eq!(third.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(third.headers["x-ratelimit-remaining-requests"], "1");
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_request_holds_no_money() {
    let setup = Setup::new(vec![Limit::requests_per_minute(1)], Money::from_usd(1));
    let b = joint(&setup);
    b.upstream.hold.store(true, Ordering::SeqCst);
    let first = b.service.clone().oneshot(setup.request()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        spend(&b, &setup).await,
        (Money::ZERO, Money::from_nanos(WORST))
    );
    let second = call(&b, &setup).await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        spend(&b, &setup).await,
        (Money::ZERO, Money::from_nanos(WORST)),
        "the refusal holds nothing"
    );
    b.upstream.release.notify_one();
    first.into_body().collect().await.unwrap();
    assert_eq!(
        spend(&b, &setup).await,
        (Money::from_nanos(USED), Money::ZERO)
    );
}

#[tokio::test(start_paused = true)]
async fn concurrency_refusals_answer_the_same_and_slots_free() {
    let mut setup = Setup::new(vec![Limit::requests_per_minute(10)], Money::from_usd(1));
    setup.max_concurrent = Some(1);
    let (a, b) = (stacked(&setup), joint(&setup));
    let mut held = Vec::new();
    for stack in [&a, &b] {
        stack.upstream.hold.store(true, Ordering::SeqCst);
        let first = stack
            .service
            .clone()
            .oneshot(setup.request())
            .await
            .unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        held.push(first);
    }
    let (x, y) = (call(&a, &setup).await, call(&b, &setup).await);
    assert_eq!(x, y);
    assert_eq!(x.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        std::str::from_utf8(&x.body)
            .unwrap()
            .contains("Concurrency limit exceeded: 1 requests in flight"),
        "{x:?}"
    );
    for (stack, first) in [&a, &b].into_iter().zip(held) {
        stack.upstream.hold.store(false, Ordering::SeqCst);
        stack.upstream.release.notify_one();
        first.into_body().collect().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    let (x, y) = (call(&a, &setup).await, call(&b, &setup).await);
    assert_eq!(x, y);
    assert_eq!(x.status, StatusCode::OK);
    assert_eq!(spend(&a, &setup).await, spend(&b, &setup).await);
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_admits_and_charges_the_same() {
    let mut setup = Setup::new(vec![Limit::requests_per_minute(1)], Money::from_usd(1));
    setup.shadow = true;
    let seen = same_answers(&setup, 3).await;
    for s in &seen {
        assert_eq!(s.status, StatusCode::OK, "{s:?}");
    }
    assert_eq!(seen[2].headers["x-ratelimit-remaining-requests"], "0");
    let b = joint(&setup);
    for _ in 0..3 {
        call(&b, &setup).await;
    }
    assert_eq!(
        spend(&b, &setup).await,
        (Money::from_nanos(3 * USED), Money::ZERO)
    );
}

#[tokio::test(start_paused = true)]
async fn a_key_with_only_limits_or_only_a_budget_answers_the_same() {
    // Only a budget: the rate limit does not limit alice.
    let setup = Setup::new(Vec::new(), Money::from_nanos(WORST));
    let seen = same_answers(&setup, 4).await;
    assert_eq!(seen[0].status, StatusCode::OK);
    assert!(
        !seen[0]
            .headers
            .contains_key("x-ratelimit-remaining-requests")
    );
    assert_eq!(seen[3].status, StatusCode::PAYMENT_REQUIRED);
    // Only limits: nothing held.
    let mut setup = Setup::new(vec![Limit::requests_per_minute(2)], Money::from_usd(1));
    setup.unbudgeted = true;
    let seen = same_answers(&setup, 3).await;
    assert_eq!(seen[1].status, StatusCode::OK);
    assert!(!seen[1].headers.contains_key("x-budget-remaining-usd"));
    assert_eq!(seen[2].status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(start_paused = true)]
async fn token_limits_reserve_and_settle_the_same() {
    let setup = Setup::new(vec![Limit::tokens_per_minute(1_000)], Money::from_usd(1));
    let seen = same_answers(&setup, 2).await;
    assert_eq!(seen[1].status, StatusCode::OK);
    assert_eq!(seen[1].headers["x-ratelimit-remaining-tokens"], "982");
}

#[tokio::test(start_paused = true)]
async fn a_teams_limits_and_budgets_answer_the_same() {
    let team = |limit: Limit, usd: Money| {
        let mut research = TenantRecord::new(TenantKind::Team, "research");
        research.rate_limits.push(limit);
        research
            .budgets
            .push(BudgetSpec::budget(research.scope(), usd, Period::Monthly));
        research
    };
    // The team's limit refuses, named.
    let mut setup = Setup::new(vec![Limit::requests_per_minute(10)], Money::from_usd(1));
    setup.team = Some(team(Limit::requests_per_minute(2), Money::from_usd(1)));
    let seen = same_answers(&setup, 3).await;
    assert_eq!(seen[1].status, StatusCode::OK);
    assert_eq!(seen[2].status, StatusCode::TOO_MANY_REQUESTS);
    let message = std::str::from_utf8(&seen[2].body).unwrap();
    assert!(message.contains("for team research"), "{message}");
    // The team's budget refuses, named (once: stacked, the refusal is
    // counted by the limits, and the next one's headers differ).
    setup.team = Some(team(Limit::requests_per_minute(10), Money::ZERO));
    let seen = same_answers(&setup, 1).await;
    assert_eq!(seen[0].status, StatusCode::PAYMENT_REQUIRED);
    let message = std::str::from_utf8(&seen[0].body).unwrap();
    assert!(
        message.contains("limit reached for team research"),
        "{message}"
    );
}
