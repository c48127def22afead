//! Soft limits: warn before the hard stop.
//!
//! A team that learns its budget is gone from a 402 in production learned it
//! too late. Soft limits fire at chosen fractions of a budget (say 50%, 80%
//! and 100%) so someone can act first: a callback ([`OnSoftLimit`]) and a
//! `tracing` warning, once per budget and threshold per period.
//!
//! "Once" holds across threads and across gateway instances sharing a
//! ledger without extra state: a threshold fires for the settlement whose
//! charge carried the budget's spend across it, and settlements of one
//! budget are serialised by the ledger, so exactly one settlement crosses
//! each threshold in a period. A new period starts spend from zero, so
//! thresholds fire again; a balance top-up raises the funded amount, so a
//! balance's thresholds re-arm as well.

use std::fmt;

use super::{BudgetSpec, BudgetStatus, Money};

/// A budget's spend crossed one of its soft-limit thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SoftLimitAlert {
    /// The budget.
    pub budget: BudgetSpec,
    /// The threshold crossed, in percent of the limit (`80` for 80%).
    pub threshold_percent: u32,
    /// The budget right after the charge that crossed it.
    pub status: BudgetStatus,
}

impl fmt::Display for SoftLimitAlert {
    /// `budget key:alice reached 80% of $50.00 ($40.01 spent)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "budget {} reached {}% of {} ({} spent)",
            self.budget.id(),
            self.threshold_percent,
            self.status.limit,
            self.status.spent
        )
    }
}

/// Called when a soft limit is reached. Implemented for closures
/// `Fn(&SoftLimitAlert)`.
///
/// It runs inline where the settlement happens (when the response body
/// ends): keep it quick, hand slow work (a webhook, an e-mail) to a task or a
/// channel.
pub trait OnSoftLimit: Send + Sync + 'static {
    /// One threshold of one budget was crossed.
    fn on_soft_limit(&self, alert: &SoftLimitAlert);
}

impl<F> OnSoftLimit for F
where
    F: Fn(&SoftLimitAlert) + Send + Sync + 'static,
{
    fn on_soft_limit(&self, alert: &SoftLimitAlert) {
        self(alert)
    }
}

/// Thresholds in percent, sorted and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Thresholds(Vec<u32>);

impl Thresholds {
    pub(crate) fn new(percents: impl IntoIterator<Item = u32>) -> Thresholds {
        let mut v: Vec<u32> = percents.into_iter().filter(|p| *p > 0).collect();
        v.sort_unstable();
        v.dedup();
        Thresholds(v)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The thresholds a charge of `charged`, which brought spend to
    /// `status.spent`, carried the spend across.
    pub(crate) fn crossed<'a>(
        &'a self,
        status: &'a BudgetStatus,
        charged: Money,
    ) -> impl Iterator<Item = u32> + 'a {
        let limit = i128::from(status.limit.nanos());
        let after = i128::from(status.spent.nanos()) * 100;
        let before = i128::from((status.spent - charged).max(Money::ZERO).nanos()) * 100;
        self.0.iter().copied().filter(move |&t| {
            let mark = limit * i128::from(t);
            limit > 0 && before < mark && mark <= after
        })
    }
}

/// Fires `handler` (and a `tracing` warning) for every threshold crossed by
/// a settlement.
pub(crate) fn fire(
    thresholds: &Thresholds,
    handler: Option<&dyn OnSoftLimit>,
    budgets: &[BudgetSpec],
    statuses: &[BudgetStatus],
    charged: Money,
) {
    for (i, (budget, status)) in budgets.iter().zip(statuses).enumerate() {
        if budgets[..i].iter().any(|b| b.scope == budget.scope) {
            continue; // the same budget named twice is alerted once
        }
        for threshold_percent in thresholds.crossed(status, charged) {
            let alert = SoftLimitAlert {
                budget: budget.clone(),
                threshold_percent,
                status: *status,
            };
            tracing::warn!(
                budget = %budget.id(),
                threshold_percent,
                limit = %status.limit,
                spent = %status.spent,
                "budget soft limit reached"
            );
            if let Some(handler) = handler {
                handler.on_soft_limit(&alert);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{BudgetMode, PeriodWindow};

    fn status(limit: i64, spent: i64) -> BudgetStatus {
        BudgetStatus {
            mode: BudgetMode::Budget,
            limit: Money::from_nanos(limit),
            spent: Money::from_nanos(spent),
            reserved: Money::ZERO,
            period: PeriodWindow::NEVER,
        }
    }

    #[test]
    fn fires_for_thresholds_crossed_by_this_charge_only() {
        let t = Thresholds::new([100, 50, 80, 80, 0]);
        assert_eq!(t.0, [50, 80, 100]);
        let crossed = |limit, spent, charged| {
            t.crossed(&status(limit, spent), Money::from_nanos(charged))
                .collect::<Vec<_>>()
        };
        assert_eq!(crossed(100, 49, 49), Vec::<u32>::new());
        assert_eq!(crossed(100, 50, 1), [50]);
        assert_eq!(crossed(100, 51, 1), Vec::<u32>::new());
        assert_eq!(crossed(100, 120, 120), [50, 80, 100]);
        assert_eq!(crossed(100, 100, 20), [100]);
        assert_eq!(crossed(0, 10, 10), Vec::<u32>::new());
    }
}
