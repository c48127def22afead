//! In-process stores: sharded, bounded, driven by an injectable clock.

mod rate_limit;
pub use self::rate_limit::{MemoryRateLimitStore, MemoryRateLimitStoreBuilder};
