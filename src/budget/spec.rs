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
/// its user's, its team's, its org's) is checked and charged together.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BudgetScope {
    /// One API key.
    Key(String),
    /// A user, owning keys.
    User(String),
    /// A team of keys.
    Team(String),
    /// An organisation.
    Org(String),
}

impl BudgetScope {
    /// The scope's kind.
    pub fn kind(&self) -> super::ScopeKind {
        match self {
            BudgetScope::Key(_) => super::ScopeKind::Key,
            BudgetScope::User(_) => super::ScopeKind::User,
            BudgetScope::Team(_) => super::ScopeKind::Team,
            BudgetScope::Org(_) => super::ScopeKind::Org,
        }
    }

    /// The scope's id within its kind (`alice` for `key:alice`).
    pub fn name(&self) -> &str {
        match self {
            BudgetScope::Key(id)
            | BudgetScope::User(id)
            | BudgetScope::Team(id)
            | BudgetScope::Org(id) => id,
        }
    }

    /// `key`, `user`, `team` or `org`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            BudgetScope::Key(_) => "key",
            BudgetScope::User(_) => "user",
            BudgetScope::Team(_) => "team",
            BudgetScope::Org(_) => "org",
        }
    }

    /// `key:<id>`, `user:<id>`, `team:<id>` or `org:<id>`: the ledger id.
    pub fn id(&self) -> String {
        format!("{}:{}", self.kind_name(), self.name())
    }

    /// Parses `key:<id>` (and the other kinds) back.
    pub fn parse(id: &str) -> Option<BudgetScope> {
        let (kind, name) = id.split_once(':')?;
        let name = name.to_owned();
        Some(match kind {
            "key" => BudgetScope::Key(name),
            "user" => BudgetScope::User(name),
            "team" => BudgetScope::Team(name),
            "org" => BudgetScope::Org(name),
            _ => return None,
        })
    }
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

    /// The ledger id: `key:<id>`, `user:<id>`, `team:<id>` or `org:<id>`.
    pub fn id(&self) -> String {
        self.scope.id()
    }
}
