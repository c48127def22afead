//! The budget fields of key and tenant entries (`budget_usd`,
//! `budget_period`, `balance_usd`) and the budgets they give, both ways.

use crate::budget::{BudgetMode, BudgetScope, BudgetSpec, Money, Period};

use super::InvalidKeyEntry;

/// The budgets an entry's `budget_usd`, `budget_period` and `balance_usd`
/// give, of `scope`: shared by key and tenant entries.
pub(crate) fn budgets_of(
    id: &str,
    scope: BudgetScope,
    budget_usd: Option<Money>,
    budget_period: Option<&str>,
    balance_usd: Option<Money>,
) -> Result<Vec<BudgetSpec>, InvalidKeyEntry> {
    let bad = |field, reason: &'static str| InvalidKeyEntry::new(id, field, reason);
    let mut budgets = Vec::new();
    match (budget_usd, budget_period) {
        (Some(limit), period) => {
            if limit < Money::ZERO {
                return Err(bad("budget_usd", "must not be negative"));
            }
            let period = match period.map(str::trim) {
                None | Some("monthly") => Period::Monthly,
                Some("daily") => Period::Daily,
                Some("weekly") => Period::Weekly,
                Some("never") => Period::Never,
                Some(_) => {
                    return Err(bad(
                        "budget_period",
                        "must be one of daily, weekly, monthly, never",
                    ));
                }
            };
            budgets.push(BudgetSpec::budget(scope.clone(), limit, period));
        }
        (None, Some(_)) => return Err(bad("budget_period", "is set without `budget_usd`")),
        (None, None) => {}
    }
    if let Some(opening) = balance_usd {
        if opening < Money::ZERO {
            return Err(bad("balance_usd", "must not be negative"));
        }
        budgets.push(BudgetSpec::balance(scope, opening));
    }
    Ok(budgets)
}

/// The budget fields describing `budgets` (those of `scope`): the inverse
/// of [`budgets_of`].
pub(crate) fn budget_fields(
    budgets: &[BudgetSpec],
    scope: &BudgetScope,
) -> (Option<Money>, Option<String>, Option<Money>) {
    let (mut usd, mut period, mut balance) = (None, None, None);
    for budget in budgets.iter().filter(|b| b.scope == *scope) {
        match budget.mode {
            BudgetMode::Budget => {
                let name = match budget.period {
                    Period::Monthly => None,
                    Period::Rolling(_) => continue,
                    // `daily`, `weekly`, `never`.
                    other => Some(other.to_string()),
                };
                usd = Some(budget.limit);
                period = name;
            }
            BudgetMode::Balance => balance = Some(budget.limit),
        }
    }
    (usd, period, balance)
}
