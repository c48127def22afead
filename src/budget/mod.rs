//! Spend limits and prepaid balances per key, team and org, that concurrent
//! requests cannot overshoot.
//!
//! An operator hands out keys and wants two money guarantees: "this team
//! spends at most $50 a month" (a 402 `Budget exceeded: $50.00 limit
//! reached` once it has) and "this customer spends what they prepaid, no
//! more" (a 403 `Insufficient account balance`). [`BudgetLayer`] gives both:
//! it prices each request from [`Pricing`], reserves its worst-case cost
//! against every budget of the caller (its key's, its user's, its team's,
//! its org's: all
//! or nothing) in a [`Ledger`] before the call, and settles the actual cost
//! from the response's token usage when the body ends.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use tollgate::auth::{KeyHash, KeyRecord, Principal};
//! use tollgate::budget::{
//!     BudgetLayer, BudgetScope, BudgetSpec, Ledger, ModelPrice, Period, Pricing, ReservePolicy,
//! };
//! use tollgate::store::memory::MemoryLedger;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let pricing = Pricing::new().with("gpt-4o-mini", ModelPrice::per_million("0.15", "0.60")?);
//! let ledger = MemoryLedger::new();
//! let mut service = ServiceBuilder::new()
//!     .layer(BudgetLayer::with_ledger(pricing, ledger.clone()).policy(ReservePolicy::Strict))
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         let body = r#"{"choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":500,"total_tokens":1500}}"#;
//!         let response = Response::builder().header("content-type", "application/json");
//!         Ok::<_, Infallible>(response.body(Full::new(Bytes::from(body))).unwrap())
//!     }));
//!
//! // `AuthLayer` puts the caller in the request's extensions; here, by hand.
//! let budget = BudgetSpec::budget(BudgetScope::Key("alice".into()), "0.01".parse()?, Period::Monthly);
//! let mut record = KeyRecord::new("alice", KeyHash([0; 32]));
//! record.budgets.push(budget.clone());
//! let alice = Principal::new(record);
//! let request = |max_tokens: u64| {
//!     let body = format!(r#"{{"model":"gpt-4o-mini","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"hi"}}]}}"#);
//!     let mut req = Request::post("/v1/chat/completions").body(Full::new(Bytes::from(body))).unwrap();
//!     req.extensions_mut().insert(alice.clone());
//!     req
//! };
//!
//! let response = service.ready().await?.call(request(1_000)).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.headers()["x-budget-limit-usd"], "0.01");
//! assert_eq!(response.headers()["x-budget-remaining-usd"], "0.01");
//! response.into_body().collect().await?; // settled when the body ends:
//! // 1,000 × $0.15/1M + 500 × $0.60/1M
//! assert_eq!(ledger.read(&budget).await?.spent.to_string(), "$0.00045");
//!
//! // Up to 100,000 output tokens could cost $0.06: more than is left.
//! let response = service.ready().await?.call(request(100_000)).await?;
//! assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
//! assert_eq!(response.headers()["x-budget-remaining-usd"], "0.00955");
//! let body = response.into_body().collect().await?.to_bytes();
//! assert!(std::str::from_utf8(&body)?.contains("Budget exceeded: $0.01 limit reached"));
//! # Ok(())
//! # }
//! ```
//!
//! # What a request goes through
//!
//! 1. **Price.** The model comes from the request's [`RequestMeta`](crate::RequestMeta)
//!    (read from the body if no earlier layer did). A request without a
//!    `model` (listing models, uploading files) is not metered. A model
//!    without a price is refused with 400 `no price configured for model X`
//!    (param `model`), or served free with a warning
//!    ([`UnpricedModel::ChargeZero`]).
//! 2. **Reserve.** The worst case is reserved in one ledger round trip
//!    against every budget of the caller's
//!    [`Principal::budgets`](crate::Principal::budgets) (its key's, its
//!    user's, its team's and its team's org's), all or nothing: the prompt
//!    estimate (text, images, audio, tool and schema definitions: see
//!    [`RequestMeta::prompt_tokens_estimate`](crate::RequestMeta::prompt_tokens_estimate))
//!    as input, plus every completion the request can make (`n`, or
//!    `best_of` when larger) at its output cap (or the model's
//!    [`max_output_tokens`](ModelPrice::max_output_tokens) when it sets
//!    none) as output. A budget that cannot afford it refuses the request,
//!    naming its scope (`Budget exceeded: $50.00 limit reached for team
//!    research`): 402 `budget_exceeded` for a [`BudgetMode::Budget`], 403
//!    `insufficient_balance` for a [`BudgetMode::Balance`]. A body whose
//!    facts cannot be read (multipart, not JSON) is refused, or reserved a
//!    fixed amount ([`BudgetLayer::unreadable`]).
//! 3. **Call.** The response gets `x-budget-limit-usd`,
//!    `x-budget-remaining-usd` (what was left *before* this request) and
//!    `x-budget-reset` (RFC 3339, absent for balances and lifetime budgets)
//!    of the budget with the least left; a refusal gets those of the budget
//!    that refused.
//! 4. **Settle.** The response body is observed as it streams
//!    ([`usage::observe`]); when it ends, fails or is
//!    dropped, the actual cost is charged and the rest of the reservation
//!    released. A call that failed or was cut after the upstream accepted
//!    it (a client gone mid-stream or before the headers, a timeout) is
//!    charged by the [`ChargePolicy`]; one the upstream refused or never
//!    received (a 4xx, a 5xx without usage, a connect error) is not.
//!    Every metered request is then reported to the [`SpendSink`], and any
//!    soft limit its charge crossed fires [`OnSoftLimit`].
//!
//! Requests without a [`Principal`](crate::Principal) (no `AuthLayer` in
//! front) are priced and reported, but charged to no budget.
//!
//! # Why reserve, and the two policies
//!
//! Checking "is there budget left?" and recording the cost after the
//! response, in separate steps, is how budgets get overshot: a hundred
//! concurrent requests all see the same remaining $1 and all run. The layer
//! closes that race by reserving before the call, atomically in the ledger.
//! What to reserve is a trade-off between never overshooting and not refusing
//! requests a budget could have paid for, so it is a policy
//! ([`ReservePolicy`]):
//!
//! - **`Strict`** reserves the full worst case and refuses a request whose
//!   worst case is more than what remains. *Why:* spend can never exceed the
//!   limit, not by a cent, whatever the concurrency. Choose it for prepaid
//!   balances and contractual caps; the cost is that a budget near its end
//!   refuses large `max_tokens` requests it may well have afforded.
//! - **`Bounded`** (the default) admits a request while anything remains and
//!   reserves `min(worst case, remaining)`. *Why:* the last dollars of a
//!   budget stay usable, and the overshoot is still bounded: only a request
//!   whose reservation was cut to the remainder can cost more than it holds,
//!   and a budget lets one such request through at a time, so spend can
//!   exceed the limit by at most one request's cost beyond its reservation.
//!   Choose it for internal team budgets, where a small bounded overshoot
//!   beats refusing work.
//!
//! # Guarantees, and what each needs
//!
//! | guarantee | holds when |
//! |---|---|
//! | **`Strict` never overshoots**: a budget's settled spend never exceeds its limit, whatever the concurrency | the reservation is an upper bound of the actual cost (below), every instance charging the budget shares one ledger, and the ledger is reachable ([`FailurePolicy::FailOpen`] admits unreserved requests during an outage) |
//! | **`Bounded` overshoots by at most one request**: by that request's cost beyond its (clamped) reservation | the same |
//! | **all or nothing across scopes**: a request is held against, and settled to, every budget of its key, user, team and org, or none | always: each is one ledger operation: in [`MemoryLedger`](crate::store::memory::MemoryLedger) under the locks of every budget held at once (SQLite decides in memory the same way and persists the decisions), on Redis one Lua script (on a cluster, with every key it touches in one hash slot: see `RedisLedger`) |
//! | **charged exactly once** for every call that reached the upstream | the response body is polled to its end or dropped (either settles), and the process lives until it settles: a crash releases its holds when their lease ends and loses their charges, and a store loses what it had not made durable (SQLite's group-commit window, Redis without AOF) |
//! | **config never refills**: a restart or a reload never refills a balance or resets a spend | balances are opened once by the ledger and changed only by [`Ledger::top_up`]; grants ([`sync_tenants`](crate::auth::sync_tenants)) change specs, never the ledger |
//!
//! The reservation is an upper bound when: the model's price sets
//! [`max_output_tokens`](ModelPrice::max_output_tokens) to at least what the
//! model can produce (for requests that give no cap), the upstream honours
//! the request's output cap for each of its `n`/`best_of` completions
//! (reasoning tokens included), and the prompt costs no more than its
//! estimate. The estimate counts images, audio and tool definitions at their
//! most, but text at four characters a token: a prompt that tokenizes
//! denser (code, some scripts), files (PDFs), or a model that prices image
//! tiles above gpt-4o's, costs more than its estimate, and a budget can then
//! be overshot by the difference. `tests/reservation_proptest.rs` checks the
//! bound against generated requests; `tests/budget.rs`,
//! `tests/tenants_concurrency.rs` and `tests/redis.rs` check the guarantees
//! under concurrency.
//!
//! # Budgets and balances
//!
//! A [`BudgetSpec`] of mode `Budget` is a spend limit that resets every
//! [`Period`]: `Daily`, `Weekly` (Mondays), `Monthly`, all at 00:00 UTC, a
//! `Rolling` window, or `Never`. *Why UTC calendar periods:* every gateway
//! instance, and a shared ledger, agree on when a month ends without talking
//! to each other, and the `x-budget-reset` header means the same thing to
//! every client. A budget whose spend reaches its limit refuses until the
//! period ends.
//!
//! Mode `Balance` is prepaid money: its limit is the opening balance, funds
//! are added with [`Ledger::top_up`], and it never resets. At or below zero
//! it refuses with 403.
//!
//! # Failures
//!
//! The layer rejects through [`crate::body::reject`], so each refusal is an
//! OpenAI error body with the [`ApiError`](crate::ApiError) in the response
//! extensions for an outer `ErrorEnvelopeLayer`. If the ledger fails, the
//! request is refused with 503 `store_unavailable` (fail closed, the
//! default) or admitted unreserved and charged afterwards
//! ([`FailurePolicy::FailOpen`]). *Why closed by default:* a budget that stops
//! working during an outage is a budget nobody can rely on.
//!
//! # Where it goes
//!
//! After `AuthLayer` (it needs the [`Principal`](crate::Principal)) and the
//! rate limiter (no money is reserved for a request the rate limiter would
//! refuse), before the handler or proxy. Its error type is the inner
//! service's, so it sits in `axum::Router::layer` as is.

mod alerts;
mod charge;
mod events;
pub mod future;
pub(crate) mod layer;
mod ledger;
mod money;
mod period;
mod pricing;
pub(crate) mod service;
pub(crate) mod settle;
mod spec;
mod spend;

use crate::usage;

pub use self::alerts::{OnSoftLimit, SoftLimitAlert};
pub use self::charge::ChargePolicy;
pub(crate) use self::charge::{Billed, CallEnd, is_timeout_error, is_timeout_response};
pub use self::events::{SpendEvent, SpendSink};
pub use self::layer::{BudgetLayer, FailurePolicy, UnpricedModel};
pub(crate) use self::ledger::NO_BUDGET;
pub use self::ledger::{
    BudgetStatus, BudgetStatuses, Ledger, Reservation, ReservationId, ReserveOutcome,
    ReservePolicy, Settlement, TopUpOutcome,
};
pub use self::money::{InvalidMoney, Money};
pub use self::period::{InvalidPeriod, PeriodWindow};
pub use self::pricing::{InvalidPrice, ModelPrice, Pricing, PricingError, TokenPrice};
pub use self::service::{Budget, X_BUDGET_LIMIT_USD, X_BUDGET_REMAINING_USD, X_BUDGET_RESET};
pub use self::spec::{BudgetMode, BudgetScope, BudgetSpec, Period};
pub use self::spend::{
    Attribution, Charge, ScopeKind, SpendGroup, SpendQuery, SpendRow, SpendTokens, SpendTotals,
    report as spend_report,
};
