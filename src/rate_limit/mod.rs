//! Requests and tokens per window, per key.
//!
//! ```
//! use tollgate::rate_limit::Limit;
//! assert_eq!(Limit::tokens_per_minute(150_000).to_string(), "150000 tokens per minute");
//! ```

mod body;
pub mod future;
pub(crate) mod gcra;
mod headers;
mod key;
mod layer;
mod limit;
mod permit;
mod service;
mod store;

pub use self::body::ResponseBody;
pub use self::future::ResponseFuture;
pub use self::headers::{HeaderStyle, format_duration};
pub use self::key::{HeaderKey, KeyExtractor, PrincipalKey, Unkeyed};
pub use self::layer::{FailurePolicy, RateLimitLayer};
pub use self::limit::{Limit, Measure};
pub use self::service::RateLimit;
pub use self::store::{
    Acquire, Admission, BoxRateLimitStore, BoxStoreFuture, LimitState, LimitStates, RateLimitKey,
    RateLimitStore, Settle, Verdict,
};
