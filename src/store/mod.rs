//! Where the stateful layers keep their state: counters, budgets, keys.
//!
//! Each stateful layer depends on a store trait of its own, with operations
//! shaped for one round trip. [`memory`] holds the in-process defaults;
//! `sqlite` (feature `sqlite`) keeps one instance's keys and books in a
//! file across restarts; `redis` (feature `redis`) shares them between
//! instances.
//! When a store fails, the layer answers with the [`StoreError`] rendered as
//! 503 `store_unavailable` (or admits, where its failure policy says so).
//!
//! ```
//! use tollgate::ApiError;
//! use tollgate::store::StoreError;
//!
//! let err: ApiError = StoreError::Timeout.into();
//! assert_eq!(err.status(), http::StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(err.code(), Some("store_unavailable"));
//! assert!(err.should_retry());
//! ```

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::ApiError;

#[cfg(any(feature = "redis", feature = "sqlite"))]
pub(crate) mod codec;
mod future;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use self::future::StoreFuture;

/// What a layer does when its store cannot answer (down, or too slow).
///
/// Every stateful layer takes one, with a default that fits what it guards:
/// `RateLimitLayer` fails open (a limiter outage should not become a full
/// outage), `BudgetLayer` and the key stores fail closed (no spend the ledger
/// cannot see, no caller the store cannot vouch for). Each layer's docs say
/// what "open" means for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailurePolicy {
    /// Refuse: 503 `store_unavailable` with `x-should-retry: true`.
    FailClosed,
    /// Serve from what this instance still knows, or without the check.
    FailOpen,
}

/// A store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store is unreachable or refused the operation.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store did not answer in time.
    #[error("store timed out")]
    Timeout,
    /// The store answered with something this version cannot read.
    #[error("store returned an unexpected reply: {0}")]
    Corrupt(String),
    /// The operation contradicts what the store holds (a key id or secret
    /// that exists already); the message says what, and names no secret.
    #[error("conflict: {0}")]
    Conflict(String),
}

impl From<StoreError> for ApiError {
    /// 503 `service_unavailable` with code `store_unavailable` and
    /// `x-should-retry: true`; the store's own message is logged, not sent.
    /// A [`StoreError::Conflict`] is the caller's to fix: 409 `conflict`
    /// with its message.
    fn from(error: StoreError) -> ApiError {
        if let StoreError::Conflict(message) = error {
            return ApiError::conflict().with_message(message);
        }
        tracing::warn!(%error, "state store failed");
        ApiError::unavailable()
            .with_code("store_unavailable")
            .with_message("The gateway's state store is unavailable. Please retry.")
            .with_should_retry(true)
    }
}

// The stores' locks, recovered when a panic poisoned them: every critical
// section of a store makes its checks before it changes anything, and
// leaves what it guards consistent, so a poisoned lock is still usable.

/// Locks `mutex`, recovering it from poisoning.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-locks `lock`, recovering it from poisoning.
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks `lock`, recovering it from poisoning.
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
