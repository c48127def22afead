//! The books: one account per budget scope, the holds in flight, and the
//! shards that keep them. The ledger's operations (`super`) lock and change
//! them; nothing here takes a lock.

use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use crate::budget::{
    BudgetMode, BudgetScope, BudgetSpec, BudgetStatus, Money, Period, PeriodWindow,
};
use crate::store::StoreError;

use crate::store::memory::hash::IdMap;

/// Accounts by the hash of their scope; a bucket holds every scope of one
/// hash, so a collision costs a comparison, never a merged account.
#[derive(Default)]
pub(super) struct BudgetShard {
    pub(super) buckets: IdMap<Vec<(BudgetScope, Account)>>,
    pub(super) len: usize,
}

impl BudgetShard {
    pub(super) fn get_mut(&mut self, hash: u64, scope: &BudgetScope) -> Option<&mut Account> {
        self.buckets
            .get_mut(&hash)?
            .iter_mut()
            .find(|(s, _)| s == scope)
            .map(|(_, a)| a)
    }

    pub(super) fn contains(&self, hash: u64, scope: &BudgetScope) -> bool {
        self.buckets
            .get(&hash)
            .is_some_and(|b| b.iter().any(|(s, _)| s == scope))
    }

    /// The account of `spec`, opened if new (making room for it first).
    pub(super) fn account(
        &mut self,
        hash: u64,
        spec: &BudgetSpec,
        now: Duration,
        max: usize,
    ) -> Result<&mut Account, StoreError> {
        if self.len >= max && !self.contains(hash, &spec.scope) {
            self.make_room(max, now)?;
        }
        let bucket = self.buckets.entry(hash).or_default();
        let at = match bucket.iter().position(|(s, _)| *s == spec.scope) {
            Some(at) => at,
            None => {
                bucket.push((spec.scope.clone(), Account::new(spec, now)));
                self.len += 1;
                bucket.len() - 1
            }
        };
        Ok(&mut bucket[at].1)
    }

    /// Makes room for one more account by evicting the idle ones; fails if
    /// none is idle.
    pub(super) fn make_room(&mut self, max: usize, now: Duration) -> Result<(), StoreError> {
        self.buckets.retain(|_, bucket| {
            bucket.retain(|(_, a)| !a.is_idle(now));
            !bucket.is_empty()
        });
        self.len = self.buckets.values().map(Vec::len).sum();
        if self.len < max {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                "budget ledger is full: no idle budget to evict".into(),
            ))
        }
    }
}

#[derive(Default)]
pub(super) struct HoldShard {
    pub(super) holds: IdMap<Hold>,
}

pub(super) struct Hold {
    pub(super) amount: Money,
    /// Clamped below the request's worst case (Bounded).
    pub(super) partial: bool,
    pub(super) expires: Duration,
    pub(super) budgets: Arc<[BudgetSpec]>,
}

impl Hold {
    pub(super) fn new(
        amount: Money,
        partial: bool,
        budgets: &Arc<[BudgetSpec]>,
        expires: Duration,
    ) -> Hold {
        Hold {
            amount,
            partial,
            expires,
            budgets: budgets.clone(),
        }
    }
}

/// One budget's books.
#[derive(Debug, Clone, Copy)]
pub(super) struct Account {
    pub(super) mode: BudgetMode,
    pub(super) period: Period,
    pub(super) window: PeriodWindow,
    /// Budget: the spec's limit. Balance: opening + top-ups.
    pub(super) limit: Money,
    pub(super) spent: Money,
    pub(super) reserved: Money,
    /// Partial (clamped) holds in flight: at most one is admitted at a time,
    /// which is what bounds a `Bounded` overshoot to one request's excess.
    pub(super) partial: u32,
}

impl Account {
    pub(super) fn new(spec: &BudgetSpec, now: Duration) -> Account {
        Account {
            mode: spec.mode,
            period: spec.period,
            window: window_of(spec, now),
            limit: spec.limit,
            spent: Money::ZERO,
            reserved: Money::ZERO,
            partial: 0,
        }
    }

    /// Brings the books to `now` and to the current spec.
    pub(super) fn refresh(&mut self, spec: &BudgetSpec, now: Duration) {
        if self.mode != spec.mode {
            // The scope changed from budget to balance or back: new books,
            // but holds in flight still count.
            *self = Account {
                reserved: self.reserved,
                partial: self.partial,
                ..Account::new(spec, now)
            };
            return;
        }
        if spec.mode == BudgetMode::Budget {
            self.limit = spec.limit;
            if self.period != spec.period || self.window.has_ended(now) {
                let window = window_of(spec, now);
                if window.start != self.window.start {
                    self.spent = Money::ZERO;
                }
                self.window = window;
                self.period = spec.period;
            }
        }
    }

    pub(super) fn unhold(&mut self, amount: Money, partial: bool) {
        self.reserved = (self.reserved - amount).max(Money::ZERO);
        if partial {
            self.partial = self.partial.saturating_sub(1);
        }
    }

    pub(super) fn status(&self) -> BudgetStatus {
        BudgetStatus {
            mode: self.mode,
            limit: self.limit,
            spent: self.spent,
            reserved: self.reserved,
            period: self.window,
        }
    }

    /// Whether evicting this account loses nothing.
    pub(super) fn is_idle(&self, now: Duration) -> bool {
        self.reserved == Money::ZERO
            && self.partial == 0
            && self.mode == BudgetMode::Budget
            && (self.spent == Money::ZERO || self.window.has_ended(now))
    }
}

pub(super) fn window_of(spec: &BudgetSpec, now: Duration) -> PeriodWindow {
    match spec.mode {
        BudgetMode::Budget => spec.period.window(now),
        BudgetMode::Balance => PeriodWindow::NEVER,
    }
}

pub(super) enum Locked<'a> {
    One(MutexGuard<'a, BudgetShard>),
    Many(Vec<(usize, MutexGuard<'a, BudgetShard>)>),
}

impl Locked<'_> {
    /// The locked shard `index` (one of those passed to `lock_budgets`).
    pub(super) fn shard(&mut self, index: usize) -> &mut BudgetShard {
        match self {
            Locked::One(guard) => guard,
            Locked::Many(guards) => {
                let at = guards
                    .binary_search_by_key(&index, |(i, _)| *i)
                    .unwrap_or_else(|at| at.min(guards.len() - 1));
                &mut guards[at].1
            }
        }
    }
}
