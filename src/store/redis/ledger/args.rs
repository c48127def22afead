//! What the ledger scripts are given: a call's distinct budgets, and each
//! budget's mode, limit and period as the scripts read them.

use crate::budget::{BudgetMode, BudgetSpec, Period};

/// The budgets of a call without repeats (a scope named twice counts once),
/// and where each of the caller's budgets went.
pub(super) struct Distinct<'a> {
    pub(super) budgets: Vec<&'a BudgetSpec>,
    /// For each budget passed, its index in `budgets`.
    pub(super) of: Vec<usize>,
}

impl<'a> Distinct<'a> {
    pub(super) fn new(budgets: &'a [BudgetSpec]) -> Self {
        let mut distinct: Vec<&BudgetSpec> = Vec::with_capacity(budgets.len());
        let of = budgets
            .iter()
            .map(|b| match distinct.iter().position(|d| d.scope == b.scope) {
                Some(i) => i,
                None => {
                    distinct.push(b);
                    distinct.len() - 1
                }
            })
            .collect();
        Distinct {
            budgets: distinct,
            of,
        }
    }
}

/// Periods as the scripts read them.
pub(super) fn period_code(period: Period) -> String {
    match period {
        Period::Daily => "d".into(),
        Period::Weekly => "w".into(),
        Period::Monthly => "m".into(),
        Period::Rolling(length) if !length.is_zero() => {
            let us = u64::try_from(length.as_micros()).unwrap_or(u64::MAX);
            format!("r{}", us.clamp(1, 1 << 51))
        }
        Period::Rolling(_) | Period::Never => "n".into(),
    }
}

pub(super) fn push_spec(args: &mut Vec<String>, spec: &BudgetSpec) {
    args.push(
        match spec.mode {
            BudgetMode::Budget => "b",
            BudgetMode::Balance => "p",
        }
        .into(),
    );
    args.push(spec.limit.nanos().to_string());
    args.push(period_code(spec.period));
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::budget::{BudgetScope, Money};

    #[test]
    fn repeated_scopes_count_once() {
        let key =
            |id: &str| BudgetSpec::budget(BudgetScope::Key(id.into()), Money::ZERO, Period::Never);
        let budgets = [key("a"), key("b"), key("a")];
        let d = Distinct::new(&budgets);
        assert_eq!(d.budgets.len(), 2);
        assert_eq!(d.of, [0, 1, 0]);
    }

    #[test]
    fn period_codes() {
        assert_eq!(period_code(Period::Monthly), "m");
        assert_eq!(
            period_code(Period::Rolling(Duration::from_secs(90))),
            "r90000000"
        );
        assert_eq!(period_code(Period::Rolling(Duration::ZERO)), "n");
        assert_eq!(period_code(Period::Rolling(Duration::from_nanos(1))), "r1");
    }
}
