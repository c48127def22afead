//! A request's rate limits and budgets admitted together: one store call
//! per request, both charged or neither.
//!
//! A gateway that limits requests per key and meters spend per key asks two
//! stores before every call: the rate limit's (is the key within its
//! requests and tokens per minute, is a concurrency slot free?) and the
//! ledger (can its budgets afford the worst case?). With
//! [`RateLimitLayer`](crate::rate_limit::RateLimitLayer) stacked outside
//! [`BudgetLayer`](crate::budget::BudgetLayer) these are two calls, one
//! after the other: on Redis, two round trips that every request waits for
//! in turn. And they are two decisions: a request the budget then refuses
//! has already been counted by the rate limit, so a caller out of money
//! also burns its request quota retrying.
//!
//! [`AdmissionLayer`] is the two layers, configured as usual, admitting
//! each request with one [`AdmissionStore::admit`]: check every limit,
//! check every budget, charge both or neither. On Redis that is one script
//! ([`RedisAdmissionStore`](crate::store::redis::RedisAdmissionStore));
//! for the stores in memory and SQLite the two stores are asked in turn
//! ([`InTurn`]), answers ready at once.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use tollgate::admission::AdmissionLayer;
//! use tollgate::auth::{KeyHash, KeyRecord, Principal};
//! use tollgate::budget::{BudgetLayer, BudgetScope, BudgetSpec, ModelPrice, Money, Period, Pricing};
//! use tollgate::rate_limit::{Limit, RateLimitLayer};
//! use http_body_util::Full;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let pricing = Pricing::new().with("gpt-4o-mini", ModelPrice::per_million("0.15", "0.60")?);
//! let mut service = ServiceBuilder::new()
//!     .layer(AdmissionLayer::new(
//!         RateLimitLayer::new().limit(Limit::requests_per_minute(2)),
//!         BudgetLayer::new(pricing),
//!     ))
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("{}"))))
//!     }));
//!
//! // A key with no money left (`AuthLayer` would put it in the extensions).
//! let mut record = KeyRecord::new("alice", KeyHash::of("sk-alice"));
//! record.budgets = vec![BudgetSpec::budget(
//!     BudgetScope::Key("alice".into()),
//!     Money::ZERO,
//!     Period::Monthly,
//! )];
//! let alice = Principal::new(record);
//! let request = || {
//!     let body = r#"{"model":"gpt-4o-mini","max_tokens":100}"#;
//!     let mut req = Request::post("/v1/chat/completions").body(Full::new(Bytes::from(body))).unwrap();
//!     req.extensions_mut().insert(alice.clone());
//!     req
//! };
//!
//! // Refused by the budget three times: never counted by the rate limit
//! // (stacked, the third would be a 429).
//! for _ in 0..3 {
//!     let response = service.ready().await?.call(request()).await?;
//!     assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
//!     assert_eq!(response.headers()["x-ratelimit-remaining-requests"], "1");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # What it answers
//!
//! What the rate limit outside the budget answers, from the same code (each
//! layer's steps: the rate limit's plan and verdict, the budget's price and
//! its reading of the ledger's answer, each one's settlement): the same 429
//! and 402 envelopes and messages, the same `x-ratelimit-*` and
//! `x-budget-*` headers, the same settlement of tokens, concurrency slots
//! and money under the same [`ChargePolicy`](crate::budget::ChargePolicy),
//! the same shadow mode, failure policies, scopes (key, model, upstream,
//! user, team, org) and usage tap. The differences, all in what is
//! *charged* for a refused request:
//!
//! - a request the budgets deny is not counted by the limits (no request,
//!   no tokens, no slot); its 402 carries the limit headers the charge
//!   would have left, as the stack's does;
//! - a request refused before any store is asked (a model without a price,
//!   a body too large or unreadable) is counted by neither; stacked, the
//!   rate limit would have counted it first.
//!
//! # Why one call, and why both or neither
//!
//! On Redis the admission was the one remaining sequential wait of every
//! request on the store besides its settlements (which are batched): two
//! `EVALSHA`s in a row, each a round trip, its dispatch and its client
//! encoding. `admit.lua` is the two scripts' bodies as functions of one
//! script, each split into its check and its writes, so the writes of
//! either run only when both checks pass; Redis runs one script at a time,
//! so two hundred requests at once neither overshoot a limit nor a budget.
//! A request denied by its budget counting against its rate limit was an
//! accident of the two calls, not a policy: a client out of money that
//! retries would find itself rate limited once it is topped up.
//!
//! # Why two layers' configuration and not a third
//!
//! Built from a configured [`RateLimitLayer`](crate::rate_limit::RateLimitLayer)
//! and [`BudgetLayer`](crate::budget::BudgetLayer), an application switches
//! between the two layers stacked and the one admission by changing one
//! line, and each layer alone keeps doing what it does.

mod future;
mod layer;
mod service;
mod store;

pub use self::future::ResponseFuture;
pub use self::layer::AdmissionLayer;
pub use self::service::{Admission, ResponseBody};
pub use self::store::{AdmissionStore, InTurn, JointAdmission, Reserve};
