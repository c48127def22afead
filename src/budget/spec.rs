//! What a budget is: its scope, limit, period and mode.

use std::time::Duration;

use super::Money;

/// When a budget's spend goes back to zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// Every UTC day at 00:00.
    Daily,
    /// Every Monday at 00:00 UTC.
    Weekly,
    /// The first of every month at 00:00 UTC.
    Monthly,
    /// Windows of this length, counted from the Unix epoch.
    Rolling(Duration),
    /// Never: a lifetime budget.
    Never,
}

/// How a budget stops a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetMode {
    /// A spend limit per period; exceeded → 402 `budget_exceeded`.
    Budget,
    /// A prepaid balance, topped up through the ledger; at or below zero →
    /// 403 `insufficient_balance`. `limit` is the opening balance.
    Balance,
}

/// Whose money a budget is: every budget a request belongs to (its key's,
/// its team's, its org's) is checked and charged together.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BudgetScope {
    /// One API key.
    Key(String),
    /// A team of keys.
    Team(String),
    /// An organisation.
    Org(String),
}

/// One budget: a scope, a limit, a period and a mode.
///
/// ```
/// use tollgate::budget::{BudgetSpec, BudgetScope, Money, Period};
///
/// let team = BudgetSpec::budget(BudgetScope::Team("research".into()), Money::from_usd(50), Period::Monthly);
/// assert_eq!(team.id(), "team:research");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BudgetSpec {
    /// Whose money this is.
    pub scope: BudgetScope,
    /// The spend limit per period, or the opening balance.
    pub limit: Money,
    /// When the spend resets (ignored for balances).
    pub period: Period,
    /// Budget or prepaid balance.
    pub mode: BudgetMode,
}

impl BudgetSpec {
    /// A spend limit that resets every `period`.
    pub fn budget(scope: BudgetScope, limit: Money, period: Period) -> Self {
        BudgetSpec {
            scope,
            limit,
            period,
            mode: BudgetMode::Budget,
        }
    }

    /// A prepaid balance opening at `opening`.
    pub fn balance(scope: BudgetScope, opening: Money) -> Self {
        BudgetSpec {
            scope,
            limit: opening,
            period: Period::Never,
            mode: BudgetMode::Balance,
        }
    }

    /// The ledger id: `key:<id>`, `team:<id>` or `org:<id>`.
    pub fn id(&self) -> String {
        match &self.scope {
            BudgetScope::Key(id) => format!("key:{id}"),
            BudgetScope::Team(id) => format!("team:{id}"),
            BudgetScope::Org(id) => format!("org:{id}"),
        }
    }
}
