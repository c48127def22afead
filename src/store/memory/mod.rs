//! In-process stores: sharded, bounded, driven by an injectable clock.

mod hash;
mod keys;
pub use self::keys::{DuplicateSecret, MemoryKeyStore};
mod ledger;
mod tenants;
#[cfg(any(feature = "redis", feature = "sqlite"))]
pub(crate) use self::{
    keys::{key_exists, secret_taken},
    tenants::exists as tenant_exists,
};

pub use self::ledger::MemoryLedger;
#[cfg(feature = "sqlite")]
pub(crate) use self::ledger::top_ups::KEEP as TOP_UP_KEYS_KEPT;

mod rate_limit;
pub use self::rate_limit::{MemoryRateLimitStore, MemoryRateLimitStoreBuilder};
