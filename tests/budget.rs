//! BudgetLayer end to end: admission, reservation, settlement from JSON and
//! SSE bodies, periods, modes, soft limits, spend events, concurrency.
//!
//! One file for the layer, as each layer has; over 600 lines because each
//! test builds its own ledger and stack and reads alone.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use tollgate::ApiError;
use tollgate::auth::{KeyHash, KeyRecord, Principal};
use tollgate::budget::{
    BudgetLayer, BudgetScope, BudgetSpec, BudgetStatus, Charge, FailurePolicy, Ledger, ModelPrice,
    Money, Period, Pricing, Reservation, ReserveOutcome, ReservePolicy, Settlement, SoftLimitAlert,
    SpendEvent, SpendQuery, SpendRow, TopUpOutcome, UnpricedModel,
};
use tollgate::clock::TokioClock;
use tollgate::store::memory::MemoryLedger;
use tollgate::store::{StoreError, StoreFuture};
use tower::{Layer, Service, ServiceExt, service_fn};

type Body = UnsyncBoxBody<Bytes, Infallible>;

// ---- fixtures -------------------------------------------------------------

/// Model `m`: $1 per million input tokens (1,000 nano-USD each), $2 per
/// million output tokens (2,000 nano-USD each), 1,000 output tokens by default.
fn pricing() -> Pricing {
    Pricing::new().with(
        "m",
        ModelPrice::per_million("1", "2")
            .unwrap()
            .cached_input("0.5")
            .unwrap()
            .max_output_tokens(1_000),
    )
}

fn nanos(n: i64) -> Money {
    Money::from_nanos(n)
}

fn ledger_at(rfc3339: &str) -> MemoryLedger {
    let at = UNIX_EPOCH
        + Duration::from_secs(rfc3339.parse::<jiff::Timestamp>().unwrap().as_second() as u64);
    MemoryLedger::new().with_clock(TokioClock::starting_at(at))
}

fn key_budget(id: &str, limit: Money, period: Period) -> BudgetSpec {
    BudgetSpec::budget(BudgetScope::Key(id.into()), limit, period)
}

fn principal(id: &str, budgets: Vec<BudgetSpec>) -> Principal {
    let mut record = KeyRecord::new(id, KeyHash([0; 32]));
    record.budgets = budgets;
    Principal::new(record)
}

/// A chat request for `model` with a 1-token prompt ("abcd").
fn request(
    principal: Option<&Principal>,
    model: &str,
    max_tokens: Option<u64>,
) -> Request<Full<Bytes>> {
    let max = max_tokens.map_or(String::new(), |m| format!(r#","max_tokens":{m}"#));
    let body =
        format!(r#"{{"model":"{model}"{max},"messages":[{{"role":"user","content":"abcd"}}]}}"#);
    let mut req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    if let Some(p) = principal {
        req.extensions_mut().insert(p.clone());
    }
    req
}

fn boxed(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

fn json_usage(prompt: u64, completion: u64) -> Response<Body> {
    let body = format!(
        r#"{{"id":"c1","object":"chat.completion","choices":[{{"index":0,"message":{{"role":"assistant","content":"hi"}}}}],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{}}}}}"#,
        prompt + completion
    );
    Response::builder()
        .header("content-type", "application/json")
        .body(boxed(body))
        .unwrap()
}

fn sse_chunk(content: &str) -> String {
    format!(
        "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}}}}]}}\n\n"
    )
}

fn sse_usage(prompt: u64, completion: u64) -> String {
    format!(
        "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion},\"total_tokens\":{}}}}}\n\n",
        prompt + completion
    )
}

fn sse(events: Vec<String>) -> Response<Body> {
    let frames = stream::iter(
        events
            .into_iter()
            .map(|e| Ok::<_, Infallible>(Frame::data(Bytes::from(e)))),
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(StreamBody::new(frames).boxed_unsync())
        .unwrap()
}

fn upstream_error() -> Response<Body> {
    Response::builder()
        .status(StatusCode::INTERNAL_SERVER_ERROR)
        .header("content-type", "application/json")
        .body(boxed(
            r#"{"error":{"message":"boom","type":"server_error","param":null,"code":null}}"#,
        ))
        .unwrap()
}

/// An inner service answering every request with `make()`.
fn upstream(
    make: impl Fn() -> Response<Body> + Clone + Send + Sync + 'static,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Body>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(move |_req: Request<Full<Bytes>>| {
        let response = make();
        async move { Ok::<_, Infallible>(response) }
    })
}

async fn body_text<B>(response: Response<B>) -> String
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn status_of(ledger: &MemoryLedger, spec: &BudgetSpec) -> BudgetStatus {
    ledger.read(spec).await.unwrap()
}

fn header<B>(response: &Response<B>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

// ---- reservation and settlement -----------------------------------------

#[tokio::test(start_paused = true)]
async fn json_response_reserves_the_worst_case_then_charges_the_actual_cost() {
    let ledger = ledger_at("2026-01-15T10:00:00Z");
    let budget = key_budget("alice", Money::from_usd(1), Period::Monthly);
    let alice = principal("alice", vec![budget.clone()]);
    let mut svc =
        BudgetLayer::with_ledger(pricing(), ledger.clone()).layer(upstream(|| json_usage(10, 20)));

    let response = svc
        .ready()
        .await
        .unwrap()
        .call(request(Some(&alice), "m", Some(100)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "x-budget-limit-usd").as_deref(),
        Some("1.00")
    );
    assert_eq!(
        header(&response, "x-budget-remaining-usd").as_deref(),
        Some("1.00")
    );
    assert_eq!(
        header(&response, "x-budget-reset").as_deref(),
        Some("2026-02-01T00:00:00Z")
    );

    // In flight: 1 prompt token + 100 output tokens are held.
    let status = status_of(&ledger, &budget).await;
    assert_eq!(
        (status.spent, status.reserved),
        (Money::ZERO, nanos(1_000 + 200_000))
    );

    body_text(response).await;
    // 10 × 1,000 + 20 × 2,000 nano-USD charged, the rest released.
    let status = status_of(&ledger, &budget).await;
    assert_eq!(
        (status.spent, status.reserved),
        (nanos(50_000), Money::ZERO)
    );

    // The next request sees what is left.
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(request(Some(&alice), "m", None))
        .await
        .unwrap();
    assert_eq!(
        header(&response, "x-budget-remaining-usd").as_deref(),
        Some("0.99995")
    );
    // No max_tokens: the model's default 1,000 output tokens are held.
    assert_eq!(
        status_of(&ledger, &budget).await.reserved,
        nanos(1_000 + 2_000_000)
    );
}

#[tokio::test(start_paused = true)]
async fn streamed_response_settles_from_the_usage_chunk() {
    let ledger = ledger_at("2026-01-15T10:00:00Z");
    let budget = key_budget("alice", Money::from_usd(1), Period::Monthly);
    let alice = principal("alice", vec![budget.clone()]);
    let svc = BudgetLayer::with_ledger(pricing(), ledger.clone()).layer(upstream(|| {
        sse(vec![
            sse_chunk("Hel"),
            sse_chunk("lo"),
            sse_usage(12, 7),
            "data: [DONE]\n\n".into(),
        ])
    }));
    let response = svc
        .oneshot(request(Some(&alice), "m", Some(100)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = body_text(response).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let status = status_of(&ledger, &budget).await;
    assert_eq!(
        (status.spent, status.reserved),
        (nanos(12 * 1_000 + 7 * 2_000), Money::ZERO)
    );
}

#[tokio::test(start_paused = true)]
async fn cached_prompt_tokens_are_charged_at_the_cached_price() {
    let ledger = ledger_at("2026-01-15T10:00:00Z");
    let budget = key_budget("alice", Money::from_usd(1), Period::Monthly);
    let alice = principal("alice", vec![budget.clone()]);
    let svc = BudgetLayer::with_ledger(pricing(), ledger.clone()).layer(upstream(|| {
        Response::builder()
            .header("content-type", "application/json")
            .body(boxed(
                r#"{"choices":[],"usage":{"prompt_tokens":100,"completion_tokens":0,"total_tokens":100,"prompt_tokens_details":{"cached_tokens":60}}}"#,
            ))
            .unwrap()
    }));
    body_text(
        svc.oneshot(request(Some(&alice), "m", Some(10)))
            .await
            .unwrap(),
    )
    .await;
    // 40 × 1,000 + 60 × 500
    assert_eq!(status_of(&ledger, &budget).await.spent, nanos(70_000));
}

#[tokio::test(start_paused = true)]
async fn client_disconnect_mid_stream_charges_what_was_produced() {
    let ledger = ledger_at("2026-01-15T10:00:00Z");
    let budget = key_budget("alice", Money::from_usd(1), Period::Monthly);
    let alice = principal("alice", vec![budget.clone()]);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let svc = BudgetLayer::with_ledger(pricing(), ledger.clone()).layer(service_fn(
        move |_req: Request<Full<Bytes>>| {
            let rx = rx.clone();
            async move {
                let rx = rx.lock().await.take().unwrap();
                let frames = stream::unfold(rx, |mut rx| async move {
                    let event = rx.recv().await?;
                    Some((Ok::<_, Infallible>(Frame::data(Bytes::from(event))), rx))
                });
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(StreamBody::new(frames).boxed_unsync())
                        .unwrap(),
                )
            }
        },
    ));
    let response = svc
        .oneshot(request(Some(&alice), "m", Some(500)))
        .await
        .unwrap();
    let mut body = response.into_body();
    // 16 characters of content: 4 estimated completion tokens.
    tx.send(sse_chunk("Once upon ")).unwrap();
    tx.send(sse_chunk("a time")).unwrap();
    for _ in 0..2 {
        body.frame().await.unwrap().unwrap();
    }
    assert_eq!(status_of(&ledger, &budget).await.spent, Money::ZERO);
    drop(body); // the client goes away; the upstream would have gone on
    let status = status_of(&ledger, &budget).await;
    assert_eq!(status.reserved, Money::ZERO);
    // 1 estimated prompt token + 4 estimated completion tokens.
    assert_eq!(status.spent, nanos(1_000 + 4 * 2_000));
}

#[tokio::test(start_paused = true)]
async fn upstream_errors_release_the_whole_reservation() {
    let ledger = ledger_at("2026-01-15T10:00:00Z");
    let budget = key_budget("alice", Money::from_usd(1), Period::Monthly);
    let alice = principal("alice", vec![budget.clone()]);

    // An error response with no tokens.
    let svc = BudgetLayer::with_ledger(pricing(), ledger.clone()).layer(upstream(upstream_error));
    let response = svc
        .oneshot(request(Some(&alice), "m", Some(100)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body_text(response).await.contains("boom"));
    let status = status_of(&ledger, &budget).await;
    assert_eq!((status.spent, status.reserved), (Money::ZERO, Money::ZERO));

    // The inner service failing outright.
    let svc = BudgetLayer::with_ledger(pricing(), ledger.clone()).layer(service_fn(
        |_req: Request<Full<Bytes>>| async { Err::<Response<Body>, _>(ApiError::bad_gateway()) },
    ));
    let err = svc
        .oneshot(request(Some(&alice), "m", Some(100)))
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
    let status = status_of(&ledger, &budget).await;
    assert_eq!((status.spent, status.reserved), (Money::ZERO, Money::ZERO));

    // The response future dropped before the upstream answered.
    let svc = BudgetLayer::with_ledger(pricing(), ledger.clone()).layer(service_fn(
        |_req: Request<Full<Bytes>>| std::future::pending::<Result<Response<Body>, Infallible>>(),
    ));
    let call = svc.oneshot(request(Some(&alice), "m", Some(100)));
    assert!(
        tokio::time::timeout(Duration::from_secs(1), call)
            .await
            .is_err()
    );
    assert_eq!(status_of(&ledger, &budget).await.reserved, Money::ZERO);
}

// ---- modes and refusals ---------------------------------------------------

#[tokio::test(start_paused = true)]
async fn budget_mode_refuses_with_402_and_balance_mode_with_403() {
    let ledger = ledger_at("2026-01-15T10:00:00Z");
    let layer = BudgetLayer::with_ledger(pricing(), ledger.clone()).policy(ReservePolicy::Strict);

    let budget = key_budget("alice", Money::from_usd(50), Period::Monthly);
    let alice = principal("alice", vec![budget.clone()]);
    let reservation = match ledger
        .reserve(
            &Arc::from([budget.clone()]),
            Money::from_usd(50),
            ReservePolicy::Strict,
        )
        .await
        .unwrap()
    {
        ReserveOutcome::Reserved { reservation, .. } => reservation,
        other => panic!("{other:?}"),
    };
    ledger
        .settle(&reservation, &Charge::cost(Money::from_usd(50)))
        .await
        .unwrap();
    let response = layer
        .layer(upstream(|| json_usage(1, 1)))
        .oneshot(request(Some(&alice), "m", Some(10)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        header(&response, "x-budget-limit-usd").as_deref(),
        Some("50.00")
    );
    assert_eq!(
        header(&response, "x-budget-remaining-usd").as_deref(),
        Some("0.00")
    );
    assert_eq!(
        header(&response, "x-budget-reset").as_deref(),
        Some("2026-02-01T00:00:00Z")
    );
    let error = response.extensions().get::<ApiError>().cloned().unwrap();
    assert_eq!(error.code(), Some("budget_exceeded"));
    assert_eq!(
        body_text(response).await,
        r#"{"error":{"message":"Budget exceeded: $50.00 limit reached","type":"budget_exceeded_error","param":null,"code":"budget_exceeded"}}"#
    );

    let wallet = BudgetSpec::balance(BudgetScope::Org("acme".into()), nanos(5_000));
    let bob = principal("bob", vec![wallet.clone()]);
    let svc = layer.layer(upstream(|| json_usage(1, 1)));
    // 1 prompt token + 10 output tokens = 21,000 nano-USD: more than the balance.
    let response = svc
        .clone()
        .oneshot(request(Some(&bob), "m", Some(10)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        header(&response, "x-budget-remaining-usd").as_deref(),
        Some("0.000005")
    );
    assert_eq!(header(&response, "x-budget-reset"), None);
    assert_eq!(
        body_text(response).await,
        r#"{"error":{"message":"Insufficient account balance. Please add funds to continue.","type":"insufficient_quota","param":null,"code":"insufficient_balance"}}"#
    );
    // A top-up through the ledger lets it through.
    ledger
        .top_up(&wallet, Money::from_usd(1), None)
        .await
        .unwrap();
    let response = svc
        .clone()
        .oneshot(request(Some(&bob), "m", Some(10)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "x-budget-limit-usd").as_deref(),
        Some("1.000005")
    );
    body_text(response).await;
    assert_eq!(status_of(&ledger, &wallet).await.spent, nanos(3_000));
}

#[tokio::test(start_paused = true)]
async fn bounded_admits_the_last_cents_strict_does_not() {
    let ledger = ledger_at("2026-01-15T10:00:00Z");
    // Room for 150,000 nano-USD; the worst case is 201,000; the actual cost 50,000.
    let budget = key_budget("alice", nanos(150_000), Period::Monthly);
    let alice = principal("alice", vec![budget.clone()]);
    let strict = BudgetLayer::with_ledger(pricing(), ledger.clone()).policy(ReservePolicy::Strict);
    let response = strict
        .layer(upstream(|| json_usage(10, 20)))
        .oneshot(request(Some(&alice), "m", Some(100)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);

    let bounded = BudgetLayer::with_ledger(pricing(), ledger.clone());
    let response = bounded
        .layer(upstream(|| json_usage(10, 20)))
        .oneshot(request(Some(&alice), "m", Some(100)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(status_of(&ledger, &budget).await.reserved, nanos(150_000));
    body_text(response).await;
    assert_eq!(
        status_of(&ledger, &budget).await.remaining(),
        nanos(100_000)
    );
}

#[tokio::test(start_paused = true)]
async fn team_budget_stops_a_key_with_budget_left() {
    let ledger = ledger_at("2026-01-15T10:00:00Z");
    let team = BudgetSpec::budget(
        BudgetScope::Team("research".into()),
        nanos(100_000),
        Period::Monthly,
    );
    let alice_budget = key_budget("alice", Money::from_usd(10), Period::Monthly);
    let bob_budget = key_budget("bob", Money::from_usd(10), Period::Monthly);
    let alice = principal("alice", vec![alice_budget.clone(), team.clone()]);
    let bob = principal("bob", vec![bob_budget.clone(), team.clone()]);
    let svc =
        BudgetLayer::with_ledger(pricing(), ledger.clone()).layer(upstream(|| json_usage(30, 40)));

    // Alice spends 110,000: the team is over, Alice's own budget is not.
    let response = svc
        .clone()
        .oneshot(request(Some(&alice), "m", Some(10)))
        .await
        .unwrap();
    assert_eq!(
        header(&response, "x-budget-remaining-usd").as_deref(),
        Some("0.0001")
    );
    body_text(response).await;
    assert_eq!(
        status_of(&ledger, &alice_budget).await.spent,
        nanos(110_000)
    );
    assert_eq!(status_of(&ledger, &team).await.spent, nanos(110_000));

    // Bob has $10 left on his key, but his team has nothing.
    let response = svc
        .clone()
        .oneshot(request(Some(&bob), "m", Some(10)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        header(&response, "x-budget-limit-usd").as_deref(),
        Some("0.0001")
    );
    assert_eq!(
        header(&response, "x-budget-remaining-usd").as_deref(),
        Some("-0.00001")
    );
    assert!(
        body_text(response)
            .await
            .contains("Budget exceeded: $0.0001 limit reached")
    );
    // Nothing was held on Bob's key for the refused request.
    assert_eq!(status_of(&ledger, &bob_budget).await.reserved, Money::ZERO);
}

#[tokio::test(start_paused = true)]
async fn unpriced_models_are_refused_or_served_free() {
    let ledger = ledger_at("2026-01-15T10:00:00Z");
    let budget = key_budget("alice", Money::from_usd(1), Period::Monthly);
    let alice = principal("alice", vec![budget.clone()]);
    let layer = BudgetLayer::with_ledger(pricing(), ledger.clone());

    let response = layer
        .layer(upstream(|| json_usage(10, 10)))
        .oneshot(request(Some(&alice), "gpt-9", Some(10)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error = response.extensions().get::<ApiError>().cloned().unwrap();
    assert_eq!(error.message(), "no price configured for model gpt-9");
    assert_eq!(error.param(), Some("model"));

    let free = layer.unpriced(UnpricedModel::ChargeZero);
    let response = free
        .layer(upstream(|| json_usage(10, 10)))
        .oneshot(request(Some(&alice), "gpt-9", Some(10)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    body_text(response).await;
    assert_eq!(status_of(&ledger, &budget).await.spent, Money::ZERO);
}

#[tokio::test(start_paused = true)]
async fn requests_without_a_model_or_a_principal() {
    let ledger = ledger_at("2026-01-15T10:00:00Z");
    let events = Arc::new(Mutex::new(Vec::<SpendEvent>::new()));
    let sink = events.clone();
    let layer = BudgetLayer::with_ledger(pricing(), ledger.clone())
        .spend_sink(move |e: SpendEvent| sink.lock().unwrap().push(e));

    // GET /v1/models: nothing to price, passes untouched.
    let svc = layer.layer(upstream(|| Response::new(boxed(r#"{"data":[]}"#))));
    let response = svc
        .oneshot(Request::get("/v1/models").body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "x-budget-limit-usd"), None);
    body_text(response).await;
    assert!(events.lock().unwrap().is_empty());

    // No principal: priced and reported, charged to nobody.
    let svc = layer.layer(upstream(|| json_usage(10, 20)));
    body_text(svc.oneshot(request(None, "m", Some(100))).await.unwrap()).await;
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].principal.as_ref(), events[0].cost),
        (None, nanos(50_000))
    );
}

#[tokio::test(start_paused = true)]
async fn malformed_json_is_refused_before_any_reservation() {
    let ledger = ledger_at("2026-01-15T10:00:00Z");
    let budget = key_budget("alice", Money::from_usd(1), Period::Monthly);
    let alice = principal("alice", vec![budget.clone()]);
    let svc =
        BudgetLayer::with_ledger(pricing(), ledger.clone()).layer(upstream(|| json_usage(1, 1)));
    let mut req = Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from_static(b"{\"model\": ")))
        .unwrap();
    req.extensions_mut().insert(alice);
    let response = svc.oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(status_of(&ledger, &budget).await.reserved, Money::ZERO);
}

// ---- periods ----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn monthly_budget_rolls_over_at_utc_month_end() {
    let ledger = ledger_at("2026-01-31T23:59:00Z");
    let budget = key_budget("alice", nanos(50_000), Period::Monthly);
    let alice = principal("alice", vec![budget.clone()]);
    let svc =
        BudgetLayer::with_ledger(pricing(), ledger.clone()).layer(upstream(|| json_usage(10, 20)));

    let response = svc
        .clone()
        .oneshot(request(Some(&alice), "m", Some(10)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    body_text(response).await;
    let response = svc
        .clone()
        .oneshot(request(Some(&alice), "m", Some(10)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        header(&response, "x-budget-reset").as_deref(),
        Some("2026-02-01T00:00:00Z")
    );

    tokio::time::advance(Duration::from_secs(59)).await;
    let response = svc
        .clone()
        .oneshot(request(Some(&alice), "m", Some(10)))
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::PAYMENT_REQUIRED,
        "23:59:59 is still January"
    );

    tokio::time::advance(Duration::from_secs(1)).await;
    let response = svc
        .clone()
        .oneshot(request(Some(&alice), "m", Some(10)))
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "February starts from zero"
    );
    assert_eq!(
        header(&response, "x-budget-remaining-usd").as_deref(),
        Some("0.00005")
    );
    assert_eq!(
        header(&response, "x-budget-reset").as_deref(),
        Some("2026-03-01T00:00:00Z")
    );
}

#[tokio::test(start_paused = true)]
async fn every_period_resets_at_its_boundary() {
    // 2026-03-15 is a Sunday: the week ends at Monday 00:00 UTC.
    let cases = [
        (
            Period::Daily,
            "2026-03-15T23:00:00Z",
            "2026-03-16T00:00:00Z",
        ),
        (
            Period::Weekly,
            "2026-03-15T23:00:00Z",
            "2026-03-16T00:00:00Z",
        ),
        (
            Period::Monthly,
            "2026-03-31T23:00:00Z",
            "2026-04-01T00:00:00Z",
        ),
        (
            Period::Rolling(Duration::from_secs(7_200)),
            "2026-03-15T23:00:00Z",
            "2026-03-16T00:00:00Z",
        ),
    ];
    for (period, start, reset) in cases {
        let ledger = ledger_at(start);
        let budget = key_budget("alice", nanos(50_000), period);
        let alice = principal("alice", vec![budget.clone()]);
        let svc = BudgetLayer::with_ledger(pricing(), ledger.clone())
            .layer(upstream(|| json_usage(10, 20)));
        let response = svc
            .clone()
            .oneshot(request(Some(&alice), "m", Some(10)))
            .await
            .unwrap();
        assert_eq!(
            header(&response, "x-budget-reset").as_deref(),
            Some(reset),
            "{period}"
        );
        body_text(response).await;
        let refused = svc
            .clone()
            .oneshot(request(Some(&alice), "m", Some(10)))
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::PAYMENT_REQUIRED, "{period}");
        tokio::time::advance(Duration::from_secs(3_600)).await;
        let admitted = svc
            .clone()
            .oneshot(request(Some(&alice), "m", Some(10)))
            .await
            .unwrap();
        assert_eq!(admitted.status(), StatusCode::OK, "{period} after {reset}");
    }

    // Never: a lifetime budget, no reset header.
    let ledger = ledger_at("2026-03-15T23:00:00Z");
    let budget = key_budget("alice", nanos(50_000), Period::Never);
    let alice = principal("alice", vec![budget.clone()]);
    let svc =
        BudgetLayer::with_ledger(pricing(), ledger.clone()).layer(upstream(|| json_usage(10, 20)));
    let response = svc
        .clone()
        .oneshot(request(Some(&alice), "m", Some(10)))
        .await
        .unwrap();
    assert_eq!(header(&response, "x-budget-reset"), None);
    body_text(response).await;
    tokio::time::advance(Duration::from_secs(400 * 86_400)).await;
    let refused = svc
        .clone()
        .oneshot(request(Some(&alice), "m", Some(10)))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::PAYMENT_REQUIRED);
}

// ---- soft limits and spend events ------------------------------------------

#[tokio::test(start_paused = true)]
async fn soft_limits_fire_once_per_budget_per_period() {
    let ledger = ledger_at("2026-01-31T12:00:00Z");
    // Each request costs 30,000 of 100,000.
    let budget = key_budget("alice", nanos(100_000), Period::Monthly);
    let team = BudgetSpec::budget(
        BudgetScope::Team("t".into()),
        Money::from_usd(1),
        Period::Monthly,
    );
    let alice = principal("alice", vec![budget.clone(), team.clone()]);
    let alerts = Arc::new(Mutex::new(Vec::<SoftLimitAlert>::new()));
    let seen = alerts.clone();
    let svc = BudgetLayer::with_ledger(pricing(), ledger.clone())
        .soft_limits([50, 80, 100])
        .on_soft_limit(move |alert: &SoftLimitAlert| seen.lock().unwrap().push(alert.clone()))
        .layer(upstream(|| json_usage(10, 10)));
    let fired = || {
        alerts
            .lock()
            .unwrap()
            .iter()
            .map(|a| (a.budget.id(), a.threshold_percent))
            .collect::<Vec<_>>()
    };

    let mut expected = Vec::new();
    for (i, crossing) in [None, Some(50), Some(80), Some(100), None]
        .into_iter()
        .enumerate()
    {
        let response = svc
            .clone()
            .oneshot(request(Some(&alice), "m", Some(10)))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
        body_text(response).await;
        expected.extend(crossing.map(|t| ("key:alice".to_owned(), t)));
        assert_eq!(fired(), expected, "after request {i}");
        if i == 3 {
            // Bounded: the fourth request overshot to 120%; the fifth waits
            // for the next period.
            let refused = svc
                .clone()
                .oneshot(request(Some(&alice), "m", Some(10)))
                .await
                .unwrap();
            assert_eq!(refused.status(), StatusCode::PAYMENT_REQUIRED);
            tokio::time::advance(Duration::from_secs(86_400)).await;
        }
    }
    // February: the thresholds are armed again.
    let response = svc
        .clone()
        .oneshot(request(Some(&alice), "m", Some(10)))
        .await
        .unwrap();
    body_text(response).await;
    expected.push(("key:alice".to_owned(), 50));
    assert_eq!(fired(), expected);
    let last = alerts.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.status.spent, nanos(60_000));
}

#[tokio::test(start_paused = true)]
async fn spend_events_reach_the_sink() {
    let ledger = ledger_at("2026-01-15T10:00:00Z");
    let alice = principal(
        "alice",
        vec![key_budget("alice", Money::from_usd(1), Period::Monthly)],
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<SpendEvent>();
    let svc = BudgetLayer::with_ledger(pricing(), ledger.clone())
        .spend_sink(tx)
        .layer(upstream(|| json_usage(10, 20)));
    body_text(
        svc.clone()
            .oneshot(request(Some(&alice), "m", Some(100)))
            .await
            .unwrap(),
    )
    .await;
    let event = rx.try_recv().unwrap();
    assert_eq!(
        event.principal.as_ref().map(Principal::key_id),
        Some("alice")
    );
    assert_eq!(event.model, "m");
    assert_eq!(
        (event.usage.prompt_tokens, event.usage.completion_tokens),
        (10, 20)
    );
    assert_eq!(event.cost, nanos(50_000));
    assert_eq!(event.source, tollgate::usage::UsageSource::Reported);
    assert_eq!(event.status, StatusCode::OK);
    assert!(rx.try_recv().is_err());
}

// ---- ledger failures ----------------------------------------------------------

/// A ledger that is down.
struct DownLedger;

/// Its answers come through futures, as a remote ledger's do.
fn down<T: Send + 'static>() -> StoreFuture<T> {
    StoreFuture::pending(async { Err(StoreError::Timeout) })
}

impl Ledger for DownLedger {
    fn reserve(
        &self,
        _: &Arc<[BudgetSpec]>,
        _: Money,
        _: ReservePolicy,
    ) -> StoreFuture<ReserveOutcome> {
        down()
    }
    fn settle(&self, _: &Reservation, _: &Charge) -> StoreFuture<Settlement> {
        down()
    }
    fn release(&self, _: &Reservation) -> StoreFuture<()> {
        down()
    }
    fn top_up(&self, _: &BudgetSpec, _: Money, _: Option<&str>) -> StoreFuture<TopUpOutcome> {
        down()
    }
    fn read(&self, _: &BudgetSpec) -> StoreFuture<BudgetStatus> {
        down()
    }
    fn reset(&self, _: &BudgetSpec) -> StoreFuture<BudgetStatus> {
        down()
    }
    fn spend(&self, _: &SpendQuery) -> StoreFuture<Vec<SpendRow>> {
        down()
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_ledger_fails_closed_by_default() {
    let alice = principal(
        "alice",
        vec![key_budget("alice", Money::from_usd(1), Period::Monthly)],
    );
    let layer = BudgetLayer::with_ledger(pricing(), DownLedger);
    let response = layer
        .layer(upstream(|| json_usage(1, 1)))
        .oneshot(request(Some(&alice), "m", Some(10)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(body_text(response).await.contains("store_unavailable"));

    let open = layer.on_store_error(FailurePolicy::FailOpen);
    let response = open
        .layer(upstream(|| json_usage(1, 1)))
        .oneshot(request(Some(&alice), "m", Some(10)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    body_text(response).await; // the failed settlement is logged, not fatal
}

/// A ledger that cannot answer at once (its answer is pending) is asked
/// through its future even when the body was read further out.
#[tokio::test(start_paused = true)]
async fn a_ledger_without_a_fast_path_is_awaited_for_pre_read_requests() {
    let alice = principal(
        "alice",
        vec![key_budget("alice", Money::from_usd(1), Period::Monthly)],
    );
    let pre_read = || async {
        tollgate::RequestMeta::read(request(Some(&alice), "m", Some(10)), 1 << 20)
            .await
            .unwrap()
    };
    let layer = BudgetLayer::with_ledger(pricing(), DownLedger);
    let response = layer
        .layer(upstream(|| json_usage(1, 1)))
        .oneshot(pre_read().await)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let response = layer
        .on_store_error(FailurePolicy::FailOpen)
        .layer(upstream(|| json_usage(1, 1)))
        .oneshot(pre_read().await)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    body_text(response).await;
}

// ---- concurrency ---------------------------------------------------------------

/// 1,000 concurrent requests against a budget that affords 100 at their
/// actual cost (the worst case is twice that).
async fn thousand_requests(policy: ReservePolicy) -> (Money, Money, usize) {
    let ledger = MemoryLedger::new();
    // Actual: 1 × 1,000 + 50 × 2,000 = 101,000. Worst: 1,000 + 100 × 2,000.
    let actual = nanos(101_000);
    let limit = nanos(100 * 101_000);
    let budget = key_budget("alice", limit, Period::Monthly);
    let alice = principal("alice", vec![budget.clone()]);
    let svc = BudgetLayer::with_ledger(pricing(), ledger.clone())
        .policy(policy)
        .layer(service_fn(|_req: Request<Full<Bytes>>| async {
            tokio::task::yield_now().await;
            Ok::<_, Infallible>(json_usage(1, 50))
        }));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1_000 {
        let (svc, req) = (svc.clone(), request(Some(&alice), "m", Some(100)));
        tasks.spawn(async move {
            let response = svc.oneshot(req).await.unwrap();
            let ok = response.status() == StatusCode::OK;
            body_text(response).await;
            ok
        });
    }
    let mut admitted = 0;
    while let Some(ok) = tasks.join_next().await {
        admitted += usize::from(ok.unwrap());
    }
    let status = status_of(&ledger, &budget).await;
    assert_eq!(status.reserved, Money::ZERO);
    assert_eq!(status.spent, nanos(101_000 * admitted as i64));
    (status.spent, limit + actual, admitted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_never_overshoots_under_concurrency() {
    let (spent, _, admitted) = thousand_requests(ReservePolicy::Strict).await;
    assert!(
        spent <= nanos(100 * 101_000),
        "spent {spent} over the limit"
    );
    assert!(admitted >= 50, "only {admitted} admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_overshoots_by_at_most_one_request_under_concurrency() {
    let (spent, limit_plus_one, admitted) = thousand_requests(ReservePolicy::Bounded).await;
    assert!(
        spent <= limit_plus_one,
        "spent {spent} beyond one request's excess"
    );
    assert!(admitted >= 50, "only {admitted} admitted");
}

// ---- composition -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn sits_in_an_axum_router_without_handle_error() {
    use axum::routing::post;
    let ledger = ledger_at("2026-01-15T10:00:00Z");
    let budget = key_budget("alice", Money::from_usd(1), Period::Monthly);
    let alice = principal("alice", vec![budget.clone()]);
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            post(|| async {
                (
                    [("content-type", "application/json")],
                    r#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}}"#,
                )
            }),
        )
        .layer(BudgetLayer::with_ledger(pricing(), ledger.clone()))
        .layer(tower::util::MapRequestLayer::new(
            move |mut req: Request<axum::body::Body>| {
                req.extensions_mut().insert(alice.clone());
                req
            },
        ));
    let req = request(None, "m", Some(100)).map(axum::body::Body::new);
    let response = app.clone().oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "x-budget-remaining-usd").as_deref(),
        Some("1.00")
    );
    body_text(response).await;
    assert_eq!(status_of(&ledger, &budget).await.spent, nanos(50_000));
}

// ---- the two admission paths ------------------------------------------------

/// A request whose body a layer further out already read (`RequestMeta` in
/// its extensions) is decided in `call`, without a future of its own; one
/// that was not is decided in the response future. Both must charge, refuse
/// and answer alike.
#[tokio::test(start_paused = true)]
async fn requests_read_further_out_are_decided_alike() {
    async fn run(pre_read: bool) -> Vec<(StatusCode, Option<String>, Money)> {
        let ledger = ledger_at("2026-01-15T10:00:00Z");
        // Room for two worst cases (1 + 10 output tokens: 21,000 nano-USD),
        // not for three.
        let budget = key_budget("alice", nanos(50_000), Period::Monthly);
        let alice = principal("alice", vec![budget.clone()]);
        let svc = BudgetLayer::with_ledger(pricing(), ledger.clone())
            .policy(ReservePolicy::Strict)
            .layer(upstream(|| json_usage(1, 10)));
        let mut seen = Vec::new();
        for _ in 0..4 {
            let mut req = request(Some(&alice), "m", Some(10));
            if pre_read {
                req = tollgate::RequestMeta::read(req, 1 << 20).await.unwrap();
            }
            let response = svc.clone().oneshot(req).await.unwrap();
            let status = response.status();
            let remaining = header(&response, "x-budget-remaining-usd");
            body_text(response).await;
            seen.push((status, remaining, status_of(&ledger, &budget).await.spent));
        }
        seen
    }
    let slow = run(false).await;
    assert_eq!(slow, run(true).await);
    let statuses: Vec<_> = slow.iter().map(|s| s.0).collect();
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::PAYMENT_REQUIRED,
            StatusCode::PAYMENT_REQUIRED
        ]
    );
    assert_eq!(slow[1].2, nanos(42_000));
}

/// A principal's budgets are shared between requests, and a record whose
/// budgets changed is charged to the new ones.
#[tokio::test(start_paused = true)]
async fn a_changed_record_is_charged_to_its_new_budgets() {
    let ledger = ledger_at("2026-01-15T10:00:00Z");
    let old = key_budget("old", Money::from_usd(1), Period::Monthly);
    let new = key_budget("new", Money::from_usd(1), Period::Monthly);
    let svc =
        BudgetLayer::with_ledger(pricing(), ledger.clone()).layer(upstream(|| json_usage(1, 1)));
    let mut record = Arc::new({
        let mut r = KeyRecord::new("alice", KeyHash([0; 32]));
        r.budgets = vec![old.clone()];
        r
    });
    let response = svc
        .clone()
        .oneshot(request(Some(&Principal::new(record.clone())), "m", Some(1)))
        .await
        .unwrap();
    body_text(response).await;
    assert_eq!(status_of(&ledger, &old).await.spent, nanos(3_000));
    // The only handle left: changed in place, after its budgets were shared.
    Arc::get_mut(&mut record).unwrap().budgets = vec![new.clone()];
    let response = svc
        .oneshot(request(Some(&Principal::new(record)), "m", Some(1)))
        .await
        .unwrap();
    body_text(response).await;
    assert_eq!(status_of(&ledger, &old).await.spent, nanos(3_000));
    assert_eq!(status_of(&ledger, &new).await.spent, nanos(3_000));
}

// ---- spend aggregates ----------------------------------------------------------

/// Every priced request is counted in the ledger's aggregates, for its key
/// and the key's team, whether or not the key has a budget.
#[tokio::test(start_paused = true)]
async fn every_settled_request_is_in_the_spend_aggregates() {
    use tollgate::budget::SpendGroup;
    let ledger = MemoryLedger::new();
    let mut record = KeyRecord::new("bob", KeyHash([1; 32]));
    record.team = Some("research".into());
    let bob = Principal::new(record); // no budgets
    let alice = principal(
        "alice",
        vec![key_budget("alice", Money::from_usd(1), Period::Monthly)],
    );
    let layer = BudgetLayer::with_ledger(pricing(), ledger.clone());
    for caller in [&alice, &bob, &bob] {
        let response = layer
            .layer(upstream(|| json_usage(1_000, 500)))
            .oneshot(request(Some(caller), "m", Some(10)))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        body_text(response).await;
    }
    // 1,000 × $1/1M + 500 × $2/1M = $0.002 a request.
    let by_key = ledger
        .spend(&SpendQuery::new(SpendGroup::Key))
        .await
        .unwrap();
    let keys: Vec<_> = by_key
        .iter()
        .map(|r| (r.group.as_str(), r.totals.requests, r.totals.cost))
        .collect();
    assert_eq!(
        keys,
        [("alice", 1, nanos(2_000_000)), ("bob", 2, nanos(4_000_000))]
    );
    let by_team = ledger
        .spend(&SpendQuery::new(SpendGroup::Team))
        .await
        .unwrap();
    assert_eq!(by_team.len(), 1);
    assert_eq!(
        (by_team[0].group.as_str(), by_team[0].totals.prompt_tokens),
        ("research", 2_000)
    );
    let by_model = ledger
        .spend(&SpendQuery::new(SpendGroup::Model))
        .await
        .unwrap();
    assert_eq!(
        (by_model[0].group.as_str(), by_model[0].totals.requests),
        ("m", 3)
    );
}
