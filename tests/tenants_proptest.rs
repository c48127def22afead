//! "Never over", as a property: for generated team budgets, policies and
//! bursts of concurrent requests from the team's keys (each with its own
//! output cap and actual usage), a team's `Strict` budget never ends above
//! its limit, a `Bounded` one never by more than one request's cost, and
//! every admitted request is charged exactly once, to its key and to the
//! team alike. The whole server stack runs (`AuthLayer` finding the team,
//! `BudgetLayer`), in memory, on a two-thread runtime.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tollgate::auth::{AuthLayer, KeyHash, KeyRecord, TenantKind, TenantRecord};
use tollgate::budget::{
    BudgetLayer, BudgetScope, BudgetSpec, Ledger, ModelPrice, Money, Period, Pricing, ReservePolicy,
};
use tollgate::store::memory::{MemoryKeyStore, MemoryLedger};
use tower::{ServiceBuilder, ServiceExt, service_fn};

const KEYS: usize = 4;

/// Model `m`: $1 per million input tokens, $2 per million output tokens.
fn price() -> ModelPrice {
    ModelPrice::per_million("1", "2").unwrap()
}

/// One request: its key, its `max_tokens`, and the completion tokens the
/// upstream reports (at most its cap).
#[derive(Debug, Clone, Copy)]
struct Call {
    key: usize,
    max_tokens: u64,
    completion: u64,
}

fn call() -> impl Strategy<Value = Call> {
    (0..KEYS, 1u64..200)
        .prop_flat_map(|(key, max_tokens)| (Just(key), Just(max_tokens), 0..=max_tokens))
        .prop_map(|(key, max_tokens, completion)| Call {
            key,
            max_tokens,
            completion,
        })
}

fn team_budget(limit: Money) -> BudgetSpec {
    BudgetSpec::budget(TenantKind::Team.scope("t"), limit, Period::Monthly)
}

fn key_budget(key: usize) -> BudgetSpec {
    BudgetSpec::budget(
        BudgetScope::Key(format!("k{key}")),
        Money::from_usd(1_000),
        Period::Monthly,
    )
}

/// What the team spent and what the admitted calls cost.
async fn burst(limit: Money, policy: ReservePolicy, calls: Vec<Call>) -> (Money, Money, Money) {
    let keys = MemoryKeyStore::new();
    let mut team = TenantRecord::new(TenantKind::Team, "t");
    team.budgets.push(team_budget(limit));
    keys.insert_tenant(team).unwrap();
    for k in 0..KEYS {
        let mut key = KeyRecord::new(format!("k{k}"), KeyHash::of(format!("sk-{k}")));
        key.team = Some("t".into());
        key.budgets.push(key_budget(k));
        keys.insert(key).unwrap();
    }
    let ledger = MemoryLedger::new();
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::new(keys))
        .layer(
            BudgetLayer::with_ledger(Pricing::new().with("m", price()), ledger.clone())
                .policy(policy),
        )
        .service(service_fn(|req: Request<Full<Bytes>>| async move {
            let completion = req.headers()["x-completion"].to_str().unwrap().to_owned();
            tokio::task::yield_now().await;
            let body = format!(
                r#"{{"usage":{{"prompt_tokens":1,"completion_tokens":{completion},"total_tokens":1}}}}"#
            );
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap(),
            )
        }));
    let start = Arc::new(tokio::sync::Barrier::new(calls.len()));
    let tasks: Vec<_> = calls
        .iter()
        .map(|call| {
            let body = format!(
                r#"{{"model":"m","max_tokens":{},"messages":[{{"role":"user","content":"abcd"}}]}}"#,
                call.max_tokens
            );
            let req = Request::post("/v1/chat/completions")
                .header("authorization", format!("Bearer sk-{}", call.key))
                .header("x-completion", call.completion.to_string())
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let (svc, start, call) = (svc.clone(), start.clone(), *call);
            tokio::spawn(async move {
                start.wait().await;
                let response = svc.oneshot(req).await.unwrap();
                let status = response.status();
                response.into_body().collect().await.unwrap();
                match status {
                    StatusCode::OK => Some(price().cost_of(1, 0, call.completion)),
                    StatusCode::PAYMENT_REQUIRED => None,
                    other => panic!("unexpected {other}"),
                }
            })
        })
        .collect();
    let mut admitted = Money::ZERO;
    let mut largest = Money::ZERO;
    for task in tasks {
        if let Some(cost) = task.await.unwrap() {
            admitted = admitted + cost;
            largest = largest.max(cost);
        }
    }
    let team = ledger.read(&team_budget(limit)).await.unwrap();
    assert_eq!(team.reserved, Money::ZERO);
    let mut keys_spent = Money::ZERO;
    for k in 0..KEYS {
        keys_spent = keys_spent + ledger.read(&key_budget(k)).await.unwrap().spent;
    }
    assert_eq!(keys_spent, team.spent, "all or nothing");
    (team.spent, admitted, largest)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_team_budget_is_never_over(
        limit in 1_000i64..1_000_000,
        strict in any::<bool>(),
        calls in prop::collection::vec(call(), 1..80),
    ) {
        let policy = if strict { ReservePolicy::Strict } else { ReservePolicy::Bounded };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let limit = Money::from_nanos(limit);
        let (spent, admitted, largest) = runtime.block_on(burst(limit, policy, calls));
        prop_assert_eq!(spent, admitted, "charged exactly once");
        match policy {
            ReservePolicy::Strict => prop_assert!(spent <= limit, "{} over {}", spent, limit),
            _ => prop_assert!(
                spent <= limit + largest,
                "{} beyond one request ({}) over {}", spent, largest, limit
            ),
        }
    }
}
