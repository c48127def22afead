//! Where an admission is decided: the [`AdmissionStore`] trait, and
//! [`InTurn`], the two stores asked one after the other.

use std::sync::Arc;

use crate::budget::{BudgetSpec, Ledger, Money, ReserveOutcome, ReservePolicy};
use crate::rate_limit::{
    Acquire, Admission, Limit, LimitStates, RateLimitKey, RateLimitStore, Receipt, ScopeSettle,
    Settle, Verdict,
};
use crate::store::{StoreError, StoreFuture};

/// The budgets' half of an admission: hold `amount` against every budget
/// of `budgets`, or none.
#[derive(Debug, Clone, Copy)]
pub struct Reserve<'a> {
    /// The budgets, as [`Ledger::reserve`] takes them.
    pub budgets: &'a Arc<[BudgetSpec]>,
    /// The amount to hold: the request's worst case.
    pub amount: Money,
    /// How the hold is made.
    pub policy: ReservePolicy,
    /// Hold it even when the limits refuse the request: the rate limit is
    /// in shadow mode and admits it anyway.
    pub when_limited: bool,
}

/// The answer to one admission: the rate limits' and the budgets'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JointAdmission {
    /// The limits' decision. An empty [`Acquire`] is admitted with no
    /// states.
    pub admission: Admission,
    /// The budgets' answer: `None` when they were not asked (no
    /// [`Reserve`], or the limits refused and it is not
    /// [`when_limited`](Reserve::when_limited)), an error when the ledger
    /// failed but the limits did not (stores apart).
    ///
    /// When the budgets deny the request, the limits charge nothing: the
    /// admission's states are those the charge would have left (as if the
    /// request had been counted, as the two layers stacked report it) but
    /// nothing was written.
    pub reservation: Option<Result<ReserveOutcome, StoreError>>,
}

/// A store that decides a request's rate limits and budgets together,
/// writing both or neither.
///
/// The `acquire` is all or nothing as [`RateLimitStore::acquire`] says,
/// the reservation as [`Ledger::reserve`] says, and the two together: a
/// request the budgets deny is not counted by the limits, and one the
/// limits refuse holds no money. [`InTurn`] asks a rate-limit store and a
/// ledger one after the other (ready answers for the stores in memory);
/// [`RedisAdmissionStore`](crate::store::redis::RedisAdmissionStore) does
/// both in one script call.
pub trait AdmissionStore: Send + Sync + 'static {
    /// Admits `acquire` and, if it is admitted (or
    /// [`when_limited`](Reserve::when_limited)), `reserve`.
    fn admit(
        &self,
        acquire: &Acquire<'_>,
        reserve: Option<&Reserve<'_>>,
    ) -> StoreFuture<JointAdmission>;
}

impl<T: AdmissionStore + ?Sized> AdmissionStore for Arc<T> {
    fn admit(
        &self,
        acquire: &Acquire<'_>,
        reserve: Option<&Reserve<'_>>,
    ) -> StoreFuture<JointAdmission> {
        (**self).admit(acquire, reserve)
    }
}

/// An [`AdmissionStore`] of a rate-limit store and a ledger asked in turn:
/// the limits, then (if they admit) the budgets; when the budgets deny the
/// request, the limits' charge is settled back (a refund of every cost and
/// the concurrency slots freed).
///
/// Not atomic across the two stores: between the acquire and its refund
/// a concurrent request may see the charge. The refused request itself is
/// answered only once its refund has landed, so a client that retries
/// after a 402 is never rate limited by its own refused calls. Use a store
/// that does both in one operation where that matters
/// ([`RedisAdmissionStore`](crate::store::redis::RedisAdmissionStore)).
#[derive(Debug, Clone)]
pub struct InTurn<St, L> {
    rate_limits: St,
    ledger: L,
}

impl<St: RateLimitStore, L: Ledger> InTurn<St, L> {
    /// The limits of `rate_limits` and the budgets of `ledger`.
    pub fn new(rate_limits: St, ledger: L) -> Self {
        InTurn {
            rate_limits,
            ledger,
        }
    }
}

impl<St: RateLimitStore + Clone, L: Ledger + Clone> AdmissionStore for InTurn<St, L> {
    fn admit(
        &self,
        acquire: &Acquire<'_>,
        reserve: Option<&Reserve<'_>>,
    ) -> StoreFuture<JointAdmission> {
        let mut limits = if acquire.scopes.is_empty() {
            // Nothing to acquire: admitted, with no states.
            StoreFuture::ready(Ok(Admission {
                verdict: Verdict::Admitted,
                states: LimitStates::new(),
                busy: None,
                receipt: Receipt::NONE,
            }))
        } else {
            self.rate_limits.acquire(acquire)
        };
        let Some(reserve) = reserve else {
            return limits.map(|admission| JointAdmission {
                admission,
                reservation: None,
            });
        };
        let owned = OwnedReserve::of(reserve);
        let admission = match limits.take_ready() {
            Some(Ok(admission)) => admission,
            Some(Err(error)) => return StoreFuture::ready(Err(error)),
            None => {
                let charges = OwnedCharges::of(acquire);
                let store = self.rate_limits.clone();
                let ledger = self.ledger.clone();
                return StoreFuture::pending(async move {
                    let admission = limits.await?;
                    let result = match owned.asked(&admission) {
                        true => Some(owned.reserve(&ledger).await),
                        false => None,
                    };
                    if refunds(&admission, &result) {
                        logged(charges.refund(&store).await);
                    }
                    Ok(joint(admission, result))
                });
            }
        };
        if !owned.asked(&admission) {
            return StoreFuture::ready(Ok(joint(admission, None)));
        }
        let mut budgets = owned.reserve(&self.ledger);
        if let Some(result) = budgets.take_ready() {
            let result = Some(result);
            if refunds(&admission, &result) {
                let mut refund = OwnedCharges::of(acquire).refund(&self.rate_limits);
                let Some(done) = refund.take_ready() else {
                    // A refund that must wait (a fail-open store's answer
                    // from memory, then Redis): answered once it lands.
                    return StoreFuture::pending(async move {
                        logged(refund.await);
                        Ok(joint(admission, result))
                    });
                };
                logged(done);
            }
            return StoreFuture::ready(Ok(joint(admission, result)));
        }
        let charges = OwnedCharges::of(acquire);
        let store = self.rate_limits.clone();
        StoreFuture::pending(async move {
            let result = Some(budgets.await);
            if refunds(&admission, &result) {
                logged(charges.refund(&store).await);
            }
            Ok(joint(admission, result))
        })
    }
}

/// The joint answer of `admission` and the budgets' `result` (given once
/// the refund [`refunds`] asks for has landed: see [`InTurn`]).
fn joint(
    admission: Admission,
    result: Option<Result<ReserveOutcome, StoreError>>,
) -> JointAdmission {
    JointAdmission {
        admission,
        reservation: result,
    }
}

/// How a refund ended, logged when it failed (the request is answered
/// either way: the charge then stands until its window passes).
fn logged(refund: Result<(), StoreError>) {
    if let Err(error) = refund {
        tracing::warn!(%error, "rate limit refund of a request over budget failed");
    }
}

/// Whether the limits charged a request the budgets then denied.
fn refunds(admission: &Admission, result: &Option<Result<ReserveOutcome, StoreError>>) -> bool {
    let denied = matches!(result, Some(Ok(ReserveOutcome::Denied { .. })));
    denied && admission.verdict == Verdict::Admitted
}

/// A [`Reserve`] that outlives its borrow.
struct OwnedReserve {
    budgets: Arc<[BudgetSpec]>,
    amount: Money,
    policy: ReservePolicy,
    when_limited: bool,
}

impl OwnedReserve {
    fn of(reserve: &Reserve<'_>) -> Self {
        OwnedReserve {
            budgets: reserve.budgets.clone(),
            amount: reserve.amount,
            policy: reserve.policy,
            when_limited: reserve.when_limited,
        }
    }

    /// Whether the budgets are asked after `admission`.
    fn asked(&self, admission: &Admission) -> bool {
        admission.verdict == Verdict::Admitted || self.when_limited
    }

    fn reserve<L: Ledger>(&self, ledger: &L) -> StoreFuture<ReserveOutcome> {
        ledger.reserve(&self.budgets, self.amount, self.policy)
    }
}

/// The charges of an [`Acquire`], owned, to settle back later.
struct OwnedCharges {
    scopes: Vec<OwnedScope>,
}

/// One scope's refund: its key, limits, deltas, and whether it holds a
/// slot.
struct OwnedScope {
    scope: String,
    id: String,
    model: Option<String>,
    limits: Vec<Limit>,
    deltas: Vec<i64>,
    release: bool,
}

impl OwnedCharges {
    fn of(acquire: &Acquire<'_>) -> Self {
        OwnedCharges {
            scopes: acquire
                .scopes
                .iter()
                .map(|s| OwnedScope {
                    scope: s.key.scope.to_owned(),
                    id: s.key.id.to_owned(),
                    model: s.key.model.map(str::to_owned),
                    limits: s.limits.to_vec(),
                    deltas: s
                        .costs
                        .iter()
                        .map(|&c| i64::try_from(c).map_or(i64::MIN, |c| -c))
                        .collect(),
                    release: s.max_concurrent.is_some(),
                })
                .collect(),
        }
    }

    /// Settles back every cost the admission charged, and frees its slots.
    fn refund<St: RateLimitStore>(&self, store: &St) -> StoreFuture<()> {
        let scopes: Vec<ScopeSettle<'_>> = self
            .scopes
            .iter()
            .map(|s| ScopeSettle {
                key: RateLimitKey {
                    scope: &s.scope,
                    id: &s.id,
                    model: s.model.as_deref(),
                },
                limits: &s.limits,
                deltas: &s.deltas,
                release: s.release,
            })
            .collect();
        store.settle(&Settle {
            scopes: &scopes,
            receipt: Receipt::NONE,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{BudgetScope, Charge, Period, Reservation, Settlement, TopUpOutcome};
    use crate::budget::{BudgetStatus, SpendQuery, SpendRow};
    use crate::rate_limit::{Limit, ScopeCharge};
    use crate::store::memory::{MemoryLedger, MemoryRateLimitStore};

    /// A store whose every answer waits for a poll (as a remote one's).
    #[derive(Clone)]
    struct Later<T>(T);

    fn later<T: Send + 'static>(mut future: StoreFuture<T>) -> StoreFuture<T> {
        let result = future.take_ready();
        StoreFuture::pending(async move {
            tokio::task::yield_now().await;
            result.unwrap_or_else(|| Err(StoreError::Unavailable("not ready".into())))
        })
    }

    impl RateLimitStore for Later<MemoryRateLimitStore> {
        fn acquire(&self, request: &Acquire<'_>) -> StoreFuture<Admission> {
            later(self.0.acquire(request))
        }

        fn settle(&self, request: &Settle<'_>) -> StoreFuture<()> {
            later(self.0.settle(request))
        }
    }

    impl Ledger for Later<MemoryLedger> {
        fn reserve(
            &self,
            budgets: &Arc<[BudgetSpec]>,
            amount: Money,
            policy: ReservePolicy,
        ) -> StoreFuture<ReserveOutcome> {
            later(self.0.reserve(budgets, amount, policy))
        }

        fn settle(&self, reservation: &Reservation, charge: &Charge) -> StoreFuture<Settlement> {
            self.0.settle(reservation, charge)
        }

        fn release(&self, reservation: &Reservation) -> StoreFuture<()> {
            self.0.release(reservation)
        }

        fn top_up(
            &self,
            budget: &BudgetSpec,
            amount: Money,
            key: Option<&str>,
        ) -> StoreFuture<TopUpOutcome> {
            self.0.top_up(budget, amount, key)
        }

        fn read(&self, budget: &BudgetSpec) -> StoreFuture<BudgetStatus> {
            self.0.read(budget)
        }

        fn reset(&self, budget: &BudgetSpec) -> StoreFuture<BudgetStatus> {
            self.0.reset(budget)
        }

        fn spend(&self, query: &SpendQuery) -> StoreFuture<Vec<SpendRow>> {
            self.0.spend(query)
        }
    }

    fn budgets(usd: i64) -> Arc<[BudgetSpec]> {
        Arc::new([BudgetSpec::budget(
            BudgetScope::Key("k".into()),
            Money::from_usd(usd),
            Period::Monthly,
        )])
    }

    /// Admits one request of cost 1 against 2 requests per minute and a
    /// slot of 1, holding $1 against `budgets`.
    async fn admit(store: &impl AdmissionStore, budgets: &Arc<[BudgetSpec]>) -> JointAdmission {
        let limits = [Limit::requests_per_minute(2)];
        let scopes = [ScopeCharge {
            key: RateLimitKey::new("k"),
            limits: &limits,
            costs: &[1],
            max_concurrent: Some(1),
        }];
        let reserve = Reserve {
            budgets,
            amount: Money::from_usd(1),
            policy: ReservePolicy::Strict,
            when_limited: false,
        };
        store
            .admit(&Acquire { scopes: &scopes }, Some(&reserve))
            .await
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn stores_answering_later_are_both_or_neither_too() {
        let limits = Later(MemoryRateLimitStore::new());
        let store = InTurn::new(limits.clone(), Later(MemoryLedger::new()));
        let (poor, rich) = (budgets(0), budgets(10));
        // Denied by the budget three times: the request and the slot given
        // back each time (the refund runs in a task: let it).
        for _ in 0..3 {
            let joint = admit(&store, &poor).await;
            assert_eq!(joint.admission.verdict, Verdict::Admitted);
            assert!(matches!(
                joint.reservation,
                Some(Ok(ReserveOutcome::Denied { .. }))
            ));
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        }
        let joint = admit(&store, &rich).await;
        assert_eq!(joint.admission.verdict, Verdict::Admitted);
        assert_eq!(joint.admission.states[0].remaining, 1);
        assert!(matches!(
            joint.reservation,
            Some(Ok(ReserveOutcome::Reserved { .. }))
        ));
        // Its slot is held: the next is refused, and holds no money.
        let joint = admit(&store, &rich).await;
        assert_eq!(joint.admission.verdict, Verdict::Concurrency);
        assert_eq!(joint.reservation, None);
    }
}
