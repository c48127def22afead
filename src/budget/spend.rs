//! What a settlement charges, and the spend aggregates a ledger keeps from
//! it: [`Charge`], [`Attribution`], [`SpendQuery`], [`SpendRow`].
//!
//! An operator's first questions about money are "who spent what, on which
//! model, when?". A ledger answers them from aggregates it updates in the
//! same atomic step as each settlement, so the report and the budgets can
//! never disagree: per scope (the key, and its user, team and org), per
//! model, per UTC day, the cost, the prompt, completion and cached tokens,
//! and the number of requests.
//!
//! ```
//! use std::sync::Arc;
//! use tollgate::budget::{
//!     Attribution, BudgetScope, Charge, Ledger, Money, Reservation, ReservationId, SpendGroup,
//!     SpendQuery, SpendTokens,
//! };
//! use tollgate::store::memory::MemoryLedger;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tollgate::store::StoreError> {
//! let ledger = MemoryLedger::new();
//! let alice = Attribution::new(
//!     [BudgetScope::Key("alice".into()), BudgetScope::Team("research".into())],
//!     "gpt-4o-mini",
//! );
//! let charge = Charge::new(Money::from_nanos(1_500), SpendTokens::new(1_000, 2_000, 0))
//!     .attributed(alice);
//! // A key without budgets still settles: its hold is empty, its spend is kept.
//! ledger.settle(&Reservation::unheld(Arc::new([])), &charge).await?;
//!
//! let rows = ledger.spend(&SpendQuery::new(SpendGroup::Team)).await?;
//! assert_eq!(rows[0].group, "research");
//! assert_eq!(rows[0].totals.requests, 1);
//! assert_eq!(rows[0].totals.completion_tokens, 2_000);
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use super::{BudgetScope, Money};

/// Tokens a settled request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SpendTokens {
    /// Prompt (input) tokens, cached ones included.
    pub prompt: u64,
    /// Completion (output) tokens, reasoning included.
    pub completion: u64,
    /// Prompt tokens read from the provider's cache.
    pub cached: u64,
}

impl SpendTokens {
    /// `prompt` prompt tokens, `completion` completion tokens, `cached` of
    /// the prompt cached.
    pub fn new(prompt: u64, completion: u64, cached: u64) -> Self {
        SpendTokens {
            prompt,
            completion,
            cached,
        }
    }
}

/// Whose spend a charge is and on which model: the rows of the aggregates
/// a settlement adds to.
///
/// Two shared slices: cloning one for a request allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attribution {
    /// The scopes charged: the key first, then its user, team and org.
    pub scopes: Arc<[BudgetScope]>,
    /// The model, as priced.
    pub model: Arc<str>,
}

impl Attribution {
    /// The spend of `scopes` on `model`.
    pub fn new(scopes: impl Into<Arc<[BudgetScope]>>, model: impl Into<Arc<str>>) -> Self {
        Attribution {
            scopes: scopes.into(),
            model: model.into(),
        }
    }
}

/// What one settlement charges: the cost, against every budget of the
/// reservation, and, when attributed, the aggregates of each scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// What the request cost.
    pub cost: Money,
    /// The tokens it used.
    pub tokens: SpendTokens,
    /// Whose spend it is; `None` keeps no aggregates.
    pub attribution: Option<Attribution>,
}

impl Charge {
    /// A charge of `cost` for `tokens`, not attributed.
    pub fn new(cost: Money, tokens: SpendTokens) -> Self {
        Charge {
            cost,
            tokens,
            attribution: None,
        }
    }

    /// A charge of `cost` alone (no tokens, no aggregates).
    pub fn cost(cost: Money) -> Self {
        Charge::new(cost, SpendTokens::default())
    }

    /// The same charge, counted in the aggregates of `attribution`.
    pub fn attributed(mut self, attribution: Attribution) -> Self {
        self.attribution = Some(attribution);
        self
    }
}

/// Sums over settled requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SpendTotals {
    /// Money charged.
    pub cost: Money,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Cached prompt tokens.
    pub cached_tokens: u64,
    /// Requests settled.
    pub requests: u64,
}

impl SpendTotals {
    /// Adds one settled charge.
    pub fn add_charge(&mut self, charge: &Charge) {
        self.cost = self.cost.saturating_add(charge.cost);
        self.prompt_tokens = self.prompt_tokens.saturating_add(charge.tokens.prompt);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(charge.tokens.completion);
        self.cached_tokens = self.cached_tokens.saturating_add(charge.tokens.cached);
        self.requests = self.requests.saturating_add(1);
    }

    /// Adds `other`'s sums.
    pub fn add(&mut self, other: &SpendTotals) {
        self.cost = self.cost.saturating_add(other.cost);
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(other.cached_tokens);
        self.requests = self.requests.saturating_add(other.requests);
    }
}

/// What [`SpendQuery`] rows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpendGroup {
    /// One row per key.
    Key,
    /// One row per model.
    Model,
    /// One row per UTC day (`2026-12-06`).
    Day,
    /// One row per user.
    User,
    /// One row per team.
    Team,
    /// One row per org.
    Org,
}

impl SpendGroup {
    /// The scope kind whose aggregates answer a query grouped this way.
    /// Grouping by model or day sums the keys' rows: every attributed
    /// charge has exactly one key, so nothing is counted twice.
    pub fn scope_kind(self) -> ScopeKind {
        match self {
            SpendGroup::Key | SpendGroup::Model | SpendGroup::Day => ScopeKind::Key,
            SpendGroup::User => ScopeKind::User,
            SpendGroup::Team => ScopeKind::Team,
            SpendGroup::Org => ScopeKind::Org,
        }
    }
}

/// The kind of a [`BudgetScope`], without its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeKind {
    /// [`BudgetScope::Key`].
    Key,
    /// [`BudgetScope::User`].
    User,
    /// [`BudgetScope::Team`].
    Team,
    /// [`BudgetScope::Org`].
    Org,
}

/// A question to a ledger's spend aggregates: sums grouped by one
/// dimension, filtered by scope, model and an inclusive range of UTC days.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct SpendQuery {
    /// The dimension of the rows.
    pub group_by: SpendGroup,
    /// Only the spend of this scope (a key, a team...). When set, it is the
    /// scope whose aggregates are read, whatever `group_by` says.
    pub scope: Option<BudgetScope>,
    /// Only the spend on this model.
    pub model: Option<String>,
    /// First UTC day counted (days since 1970-01-01), inclusive.
    pub from_day: Option<i64>,
    /// Last UTC day counted, inclusive.
    pub to_day: Option<i64>,
}

impl SpendQuery {
    /// All spend, grouped by `group_by`.
    pub fn new(group_by: SpendGroup) -> Self {
        SpendQuery {
            group_by,
            scope: None,
            model: None,
            from_day: None,
            to_day: None,
        }
    }

    /// Only `scope`'s spend.
    pub fn scope(mut self, scope: BudgetScope) -> Self {
        self.scope = Some(scope);
        self
    }

    /// Only the spend on `model`.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// The day count (since 1970-01-01) of a UTC date written `2026-12-06`,
    /// for [`days`](SpendQuery::days); `None` for anything else or an
    /// impossible date.
    pub fn day(date: &str) -> Option<i64> {
        crate::time::parse_date(date)
    }

    /// Only the days from `from` to `to` (days since 1970-01-01, inclusive).
    pub fn days(mut self, from: Option<i64>, to: Option<i64>) -> Self {
        self.from_day = from;
        self.to_day = to;
        self
    }

    /// Whether an aggregate row of `scope`, `model` and `day` counts.
    pub fn matches(&self, scope: &BudgetScope, model: &str, day: i64) -> bool {
        let scope_ok = match &self.scope {
            Some(wanted) => wanted == scope,
            None => scope.kind() == self.group_by.scope_kind(),
        };
        scope_ok
            && self.model.as_deref().is_none_or(|m| m == model)
            && self.from_day.is_none_or(|from| day >= from)
            && self.to_day.is_none_or(|to| day <= to)
    }

    /// The group an aggregate row of `scope`, `model` and `day` falls in.
    pub fn group_of(&self, scope: &BudgetScope, model: &str, day: i64) -> String {
        match self.group_by {
            SpendGroup::Model => model.to_owned(),
            SpendGroup::Day => crate::time::format_date(day),
            SpendGroup::Key | SpendGroup::User | SpendGroup::Team | SpendGroup::Org => {
                scope.name().to_owned()
            }
        }
    }
}

/// One row of a spend report.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpendRow {
    /// The key id, model, day (`2026-12-06`), user, team or org.
    pub group: String,
    /// The sums.
    pub totals: SpendTotals,
}

/// Sums aggregate rows into a report: `rows` are `(scope, model, day,
/// totals)` as a ledger keeps them; the report is sorted by group.
pub fn report<'a>(
    query: &SpendQuery,
    rows: impl IntoIterator<Item = (&'a BudgetScope, &'a str, i64, &'a SpendTotals)>,
) -> Vec<SpendRow> {
    let mut groups = std::collections::BTreeMap::<String, SpendTotals>::new();
    for (scope, model, day, totals) in rows {
        if query.matches(scope, model, day) {
            groups
                .entry(query.group_of(scope, model, day))
                .or_default()
                .add(totals);
        }
    }
    groups
        .into_iter()
        .map(|(group, totals)| SpendRow { group, totals })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(cost: i64) -> SpendTotals {
        SpendTotals {
            cost: Money::from_nanos(cost),
            requests: 1,
            ..SpendTotals::default()
        }
    }

    #[test]
    fn reports_group_and_filter_without_counting_twice() {
        let alice = BudgetScope::Key("alice".into());
        let bob = BudgetScope::Key("bob".into());
        let team = BudgetScope::Team("t".into());
        let (a1, a2, b1, t1) = (totals(10), totals(20), totals(5), totals(15));
        let rows = [
            (&alice, "m1", 100, &a1),
            (&alice, "m2", 101, &a2),
            (&bob, "m1", 101, &b1),
            (&team, "m1", 100, &t1),
        ];
        let by_model = report(&SpendQuery::new(SpendGroup::Model), rows);
        assert_eq!(by_model.len(), 2);
        assert_eq!(by_model[0].group, "m1");
        assert_eq!(by_model[0].totals.cost, Money::from_nanos(15));
        assert_eq!(by_model[0].totals.requests, 2);

        let by_day = report(
            &SpendQuery::new(SpendGroup::Day).days(Some(101), None),
            rows,
        );
        assert_eq!(by_day.len(), 1);
        assert_eq!(by_day[0].group, crate::time::format_date(101));
        assert_eq!(by_day[0].totals.cost, Money::from_nanos(25));

        let alice_by_day = report(&SpendQuery::new(SpendGroup::Day).scope(alice.clone()), rows);
        assert_eq!(alice_by_day.len(), 2);

        let by_team = report(&SpendQuery::new(SpendGroup::Team), rows);
        assert_eq!(
            by_team,
            [SpendRow {
                group: "t".into(),
                totals: t1
            }]
        );

        let by_key = report(&SpendQuery::new(SpendGroup::Key).model("m1"), rows);
        assert_eq!(by_key.len(), 2);
        assert_eq!(by_key[0].group, "alice");
    }
}
