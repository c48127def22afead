//! # tollgate
//!
//! Composable [Tower](https://docs.rs/tower) layers for OpenAI-compatible LLM
//! APIs: the part of a gateway (or of a client) that decides who may call,
//! how often, for how much money, what to retry, and what a failure looks like
//! on the wire.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tollgate::ApiError;
//! use tollgate::envelope::ErrorEnvelopeLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let service = ServiceBuilder::new()
//!     .layer(ErrorEnvelopeLayer::new())
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         Err::<Response<Full<Bytes>>, _>(ApiError::rate_limited())
//!     }));
//! let response = service.oneshot(Request::new(Full::default())).await?;
//! assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
//! # Ok(())
//! # }
//! ```
//!
//! | module | layer | what it decides |
//! |---|---|---|
//! | [`envelope`] | `ErrorEnvelopeLayer` | what every failure looks like on the wire |
//! | [`rate_limit`] | `RateLimitLayer` | how many requests and tokens each key may use, and when |
//! | [`retry`] | `RetryLayer` | which upstream failures are retried, when, and how often |
//! | [`usage`] | (`observe`, used by the layers) | how many tokens each response really used |
//! | [`auth`] | `AuthLayer` | who is calling: API keys, stored hashed, revocable at run time |
//! | [`budget`] | `BudgetLayer` | what each request costs, and when a key, team or org has spent enough (402) or run out of prepaid funds (403) |
//! | [`stream`] | `StreamErrorTrailerLayer` | how a failing stream ends: with an error event the client's SDK raises |
//!
//! ## Feature flags
//!
//! | feature | enables |
//! |---|---|
//! | `axum` | `impl axum::response::IntoResponse for ApiError` |
//! | `tonic` | `impl From<ApiError> for tonic::Status` |
//! | `redis` | Redis-backed stores shared by several gateway instances |
//! | `redis-tls` | `rediss://` (TLS, rustls) for the Redis stores |
//! | `sqlite` | SQLite-backed durable stores for one gateway instance (keys, budgets, balances, spend) |
//! | `reqwest` | an adapter making `reqwest::Client` a tower `Service` |
//! | `hyper-util` | `RetryLayer` tells hyper-util's connect errors from its others |
//!
//! No integration is on by default, and no layer depends on axum.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admission;
pub mod auth;
pub mod body;
pub mod budget;
pub mod client;
pub mod clock;
pub mod envelope;
mod error;
mod header_values;
mod integrations;
mod json;
mod macros;
pub mod rate_limit;
pub mod request;
pub mod retry;
mod rng;
mod small;
mod sse;
pub mod store;
pub mod stream;
mod time;
pub mod usage;

pub use self::auth::Principal;
pub use self::envelope::{ErrorEnvelopeLayer, ErrorFormat};
pub use self::error::{ApiError, ErrorKind, Origin, RetryClass};
pub use self::request::RequestMeta;
pub use self::retry::RetryLayer;
pub use self::usage::Usage;

/// The boxed error type tower middleware uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The README's Rust examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
