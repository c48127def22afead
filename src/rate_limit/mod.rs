//! Requests and tokens per window, per key.
//!
//! ```
//! use tollgate::rate_limit::Limit;
//! assert_eq!(Limit::tokens_per_minute(150_000).to_string(), "150000 tokens per minute");
//! ```

mod limit;

pub use self::limit::{Limit, Measure};
