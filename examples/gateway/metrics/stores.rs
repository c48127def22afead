//! `tollgate_store_errors_total{store,op}`: the gateway's stores wrapped
//! in a decorator that counts failed operations.
//!
//! The library's stores report failures to the layers (which fail open or
//! closed); how often that happens is the operator's question, so the
//! counting lives here, around whatever store the config picked. A ready
//! answer (the memory store) is checked in place, without an allocation;
//! a pending one (a remote store) is wrapped in one more box.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use tollgate::admission::{AdmissionStore, JointAdmission, Reserve};
use tollgate::auth::{KeyHash, KeyRecord, KeyStore, TenantRecord};
use tollgate::budget::{
    BudgetScope, BudgetSpec, BudgetStatus, Charge, Ledger, Money, Reservation, ReserveOutcome,
    ReservePolicy, Settlement, SpendQuery, SpendRow, TopUpOutcome,
};
use tollgate::rate_limit::{Acquire, Admission, RateLimitStore, Settle};
use tollgate::store::StoreFuture;

use super::Metrics;

/// A store whose failed operations are counted.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    errors: Arc<[Counter]>,
}

impl<S> Counted<S> {
    fn with(inner: S, metrics: &Metrics, store: &str, ops: &[&str]) -> Self {
        Counted {
            inner,
            errors: ops
                .iter()
                .map(|op| metrics.store_errors(store, op))
                .collect(),
        }
    }

    fn count<T: Send + 'static>(&self, op: usize, mut future: StoreFuture<T>) -> StoreFuture<T> {
        let Some(counter) = self.errors.get(op) else {
            return future;
        };
        match future.take_ready() {
            Some(result) => {
                if result.is_err() {
                    counter.inc();
                }
                StoreFuture::ready(result)
            }
            None => {
                let counter = counter.clone();
                StoreFuture::pending(async move {
                    let result = future.await;
                    if result.is_err() {
                        counter.inc();
                    }
                    result
                })
            }
        }
    }
}

impl<K: KeyStore> Counted<K> {
    /// The key store `inner`, counted as `store="keys"`.
    pub fn keys(inner: K, metrics: &Metrics) -> Self {
        Counted::with(inner, metrics, "keys", &["lookup", "tenant"])
    }
}

impl<K: KeyStore> KeyStore for Counted<K> {
    fn lookup(&self, hash: &KeyHash) -> StoreFuture<Option<Arc<KeyRecord>>> {
        self.count(0, self.inner.lookup(hash))
    }

    // Forwarded, or `AuthLayer` would find no user, team or org.
    fn tenant(&self, scope: &BudgetScope) -> StoreFuture<Option<Arc<TenantRecord>>> {
        self.count(1, self.inner.tenant(scope))
    }
}

const LEDGER_OPS: [&str; 7] = [
    "reserve", "settle", "release", "top_up", "read", "reset", "spend",
];

impl<L: Ledger> Counted<L> {
    /// The ledger `inner`, counted as `store="ledger"`.
    pub fn ledger(inner: L, metrics: &Metrics) -> Self {
        Counted::with(inner, metrics, "ledger", &LEDGER_OPS)
    }
}

impl<L: Ledger> Ledger for Counted<L> {
    fn reserve(
        &self,
        budgets: &Arc<[BudgetSpec]>,
        amount: Money,
        policy: ReservePolicy,
    ) -> StoreFuture<ReserveOutcome> {
        self.count(0, self.inner.reserve(budgets, amount, policy))
    }

    fn settle(&self, reservation: &Reservation, charge: &Charge) -> StoreFuture<Settlement> {
        self.count(1, self.inner.settle(reservation, charge))
    }

    fn release(&self, reservation: &Reservation) -> StoreFuture<()> {
        self.count(2, self.inner.release(reservation))
    }

    fn top_up(
        &self,
        budget: &BudgetSpec,
        amount: Money,
        idempotency_key: Option<&str>,
    ) -> StoreFuture<TopUpOutcome> {
        self.count(3, self.inner.top_up(budget, amount, idempotency_key))
    }

    fn read(&self, budget: &BudgetSpec) -> StoreFuture<BudgetStatus> {
        self.count(4, self.inner.read(budget))
    }

    fn reset(&self, budget: &BudgetSpec) -> StoreFuture<BudgetStatus> {
        self.count(5, self.inner.reset(budget))
    }

    fn spend(&self, query: &SpendQuery) -> StoreFuture<Vec<SpendRow>> {
        self.count(6, self.inner.spend(query))
    }
}

impl<R: RateLimitStore> Counted<R> {
    /// The rate-limit store `inner`, counted as `store="rate_limits"`.
    pub fn rate_limits(inner: R, metrics: &Metrics) -> Self {
        Counted::with(inner, metrics, "rate_limits", &["acquire", "settle"])
    }
}

impl<R: RateLimitStore> RateLimitStore for Counted<R> {
    fn acquire(&self, request: &Acquire<'_>) -> StoreFuture<Admission> {
        self.count(0, self.inner.acquire(request))
    }

    fn settle(&self, request: &Settle<'_>) -> StoreFuture<()> {
        self.count(1, self.inner.settle(request))
    }
}

impl<A: AdmissionStore> Counted<A> {
    /// The joint admission store `inner`, counted as `store="admission"`.
    pub fn admission(inner: A, metrics: &Metrics) -> Self {
        Counted::with(inner, metrics, "admission", &["admit"])
    }
}

impl<A: AdmissionStore> AdmissionStore for Counted<A> {
    fn admit(
        &self,
        acquire: &Acquire<'_>,
        reserve: Option<&Reserve<'_>>,
    ) -> StoreFuture<JointAdmission> {
        self.count(0, self.inner.admit(acquire, reserve))
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Counted<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Counted").field(&self.inner).finish()
    }
}

#[cfg(test)]
mod tests {
    use tollgate::store::StoreError;

    use super::*;

    #[tokio::test]
    async fn failures_are_counted_ready_or_pending() {
        let metrics = Metrics::new();
        let counted = Counted::with((), &metrics, "ledger", &["read"]);
        let ok: StoreFuture<u8> = StoreFuture::ready(Ok(1));
        assert_eq!(counted.count(0, ok).await.ok(), Some(1));
        let failed: StoreFuture<u8> =
            StoreFuture::ready(Err(StoreError::Unavailable("down".into())));
        assert!(counted.count(0, failed).await.is_err());
        let later: StoreFuture<u8> =
            StoreFuture::pending(async { Err(StoreError::Unavailable("down".into())) });
        assert!(counted.count(0, later).await.is_err());
        let text = metrics.render();
        assert!(
            text.contains(r#"tollgate_store_errors_total{store="ledger",op="read"} 2"#),
            "{text}"
        );
    }
}
