//! [`AdmissionLayer`]: a configured rate limit and budget, as one layer.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::service::{Admission, Shared};
use super::store::{AdmissionStore, InTurn};
use crate::budget::{BudgetLayer, Ledger};
use crate::rate_limit::{PrincipalKey, RateLimitLayer, RateLimitStore};
use crate::store::memory::{MemoryLedger, MemoryRateLimitStore};

/// A [`RateLimitLayer`] and a [`BudgetLayer`] admitting each request
/// together, with one call to an [`AdmissionStore`]; see the
/// [module docs](super).
///
/// It answers as the rate limit stacked outside the budget does, with the
/// same configuration (limits, headers, shadow mode, failure policies,
/// prices, charge policy, spend sink), except that a request the budgets
/// deny is not counted by the limits.
pub struct AdmissionLayer<St = MemoryRateLimitStore, K = PrincipalKey, L = MemoryLedger> {
    rate_limit: RateLimitLayer<St, K>,
    budget: BudgetLayer<L>,
    store: Arc<dyn AdmissionStore>,
}

impl<St, K, L> AdmissionLayer<St, K, L>
where
    St: RateLimitStore + Clone,
    K: Clone,
    L: Ledger,
{
    /// `rate_limit` and `budget` together; their stores asked in turn
    /// ([`InTurn`]) until [`store`](AdmissionLayer::store) says otherwise.
    pub fn new(rate_limit: RateLimitLayer<St, K>, budget: BudgetLayer<L>) -> Self {
        let store = Arc::new(InTurn::new(
            rate_limit.store_ref().clone(),
            budget.shared().ledger.clone(),
        ));
        AdmissionLayer {
            rate_limit,
            budget,
            store,
        }
    }
}

impl<St, K, L> AdmissionLayer<St, K, L> {
    /// Admits with `store`, which must keep the same limits and budgets as
    /// the rate limit's store and the budget's ledger (they settle what it
    /// admits): for Redis, a
    /// [`RedisAdmissionStore`](crate::store::redis::RedisAdmissionStore)
    /// of the two.
    pub fn store(mut self, store: impl AdmissionStore) -> Self {
        self.store = Arc::new(store);
        self
    }
}

crate::macros::impl_clone!(AdmissionLayer<St: Clone, K: Clone, L> { rate_limit, budget, store });

impl<St: fmt::Debug, K, L> fmt::Debug for AdmissionLayer<St, K, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionLayer")
            .field("rate_limit", &self.rate_limit)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl<S, St, K, L> Layer<S> for AdmissionLayer<St, K, L>
where
    St: RateLimitStore + Clone,
    K: Clone,
{
    type Service = Admission<S, St, K, L>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission::from_parts(
            inner,
            Arc::new(Shared {
                rate_limit: self.rate_limit.shared(),
                budget: self.budget.shared().clone(),
                store: self.store.clone(),
            }),
        )
    }
}
