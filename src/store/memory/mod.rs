//! In-process stores: sharded, bounded, driven by an injectable clock.

mod keys;
pub use self::keys::{DuplicateSecret, MemoryKeyStore};
mod ledger;
mod tenants;

pub use self::ledger::MemoryLedger;

mod rate_limit;
pub use self::rate_limit::{MemoryRateLimitStore, MemoryRateLimitStoreBuilder};
