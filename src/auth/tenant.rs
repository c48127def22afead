//! Users, teams and organisations as records of their own: [`TenantRecord`]
//! (see the [`auth`](crate::auth#users-teams-and-orgs) module docs).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::budget::{BudgetScope, BudgetSpec};
use crate::rate_limit::{Limit, ScopeLimits};

/// What a tenant is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TenantKind {
    /// A user, owning keys.
    User,
    /// A team of keys, in at most one org.
    Team,
    /// An organisation of teams.
    Org,
}

impl TenantKind {
    /// `user`, `team` or `org`: the name of its scope in limits, budgets and
    /// messages.
    pub fn name(self) -> &'static str {
        match self {
            TenantKind::User => "user",
            TenantKind::Team => "team",
            TenantKind::Org => "org",
        }
    }

    /// The budget scope of the tenant `id` of this kind.
    pub fn scope(self, id: impl Into<String>) -> BudgetScope {
        let id = id.into();
        match self {
            TenantKind::User => BudgetScope::User(id),
            TenantKind::Team => BudgetScope::Team(id),
            TenantKind::Org => BudgetScope::Org(id),
        }
    }

    /// The kind and id of a tenant's scope (`None` for a key's).
    pub fn of(scope: &BudgetScope) -> Option<(TenantKind, &str)> {
        match scope {
            BudgetScope::Key(_) => None,
            BudgetScope::User(id) => Some((TenantKind::User, id)),
            BudgetScope::Team(id) => Some((TenantKind::Team, id)),
            BudgetScope::Org(id) => Some((TenantKind::Org, id)),
        }
    }
}

impl fmt::Display for TenantKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A user, team or organisation: limits and budgets shared by every key
/// that belongs to it (see [Users, teams and orgs](crate::auth#users-teams-and-orgs)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TenantRecord {
    /// Stable id within its kind (`research`).
    pub id: String,
    /// User, team or org.
    pub kind: TenantKind,
    /// Display name.
    pub name: Option<String>,
    /// The org a team belongs to (teams only).
    pub org: Option<String>,
    /// Rate limits shared by every key of the tenant.
    pub rate_limits: Vec<Limit>,
    /// Requests in flight allowed for all its keys together.
    pub max_concurrent: Option<u32>,
    /// Budgets and balances charged by every key of the tenant (each of
    /// this tenant's scope).
    pub budgets: Vec<BudgetSpec>,
    /// Disabled tenants' keys are refused with 403 `account_disabled`.
    pub disabled: bool,
    /// Free-form metadata.
    pub metadata: BTreeMap<String, String>,
    /// The configuration entry this record was last granted from (see
    /// [`TenantEntry::grant`](super::TenantEntry::grant)); `None` for a
    /// tenant made through an admin API.
    pub config_entry: Option<Arc<super::TenantEntry>>,
}

/// A [`TenantRecord`] that breaks the rules of the records: the message
/// says which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} `{id}`: {reason}")]
pub struct InvalidTenant {
    kind: TenantKind,
    id: String,
    reason: String,
}

impl TenantRecord {
    /// The tenant `id` of `kind`, with no limits, budgets or org.
    pub fn new(kind: TenantKind, id: impl Into<String>) -> Self {
        TenantRecord {
            id: id.into(),
            kind,
            name: None,
            org: None,
            rate_limits: Vec::new(),
            max_concurrent: None,
            budgets: Vec::new(),
            disabled: false,
            metadata: BTreeMap::new(),
            config_entry: None,
        }
    }

    /// Its scope: `team:research` as a [`BudgetScope`].
    pub fn scope(&self) -> BudgetScope {
        self.kind.scope(self.id.clone())
    }

    /// Checks the rules every store enforces on a write: an id, an `org`
    /// only on a team, and budgets of this tenant's own scope only.
    pub fn check(&self) -> Result<(), InvalidTenant> {
        let invalid = |reason: String| InvalidTenant {
            kind: self.kind,
            id: self.id.clone(),
            reason,
        };
        if super::entry::id_problem(&self.id).is_some() {
            return Err(invalid(
                "the id must be 1 to 256 bytes without whitespace or control characters".into(),
            ));
        }
        if self.org.is_some() && self.kind != TenantKind::Team {
            return Err(invalid(format!(
                "only a team belongs to an org, not a {}",
                self.kind
            )));
        }
        if self.org.as_deref() == Some("") {
            return Err(invalid("its org is empty".into()));
        }
        let scope = self.scope();
        if let Some(other) = self.budgets.iter().find(|b| b.scope != scope) {
            return Err(invalid(format!(
                "holds a budget of another scope ({})",
                other.id()
            )));
        }
        Ok(())
    }

    /// Its limits as a named scope of the rate limiter: `team research`.
    pub(crate) fn scope_limits(&self) -> Option<ScopeLimits> {
        if self.rate_limits.is_empty() && self.max_concurrent.is_none() {
            return None;
        }
        let mut limits =
            ScopeLimits::new(self.kind.name(), self.id.clone(), self.rate_limits.clone());
        limits.max_concurrent = self.max_concurrent;
        Some(limits)
    }
}

/// The tenants of one key, as [`AuthLayer`](super::AuthLayer) found them:
/// its user's, its team's and its team's org's records (each `None` when the
/// key names none, or the store holds no record of it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tenants {
    /// The key's user.
    pub user: Option<Arc<TenantRecord>>,
    /// The key's team.
    pub team: Option<Arc<TenantRecord>>,
    /// The team's org (or, for a key without a team record, the org the key
    /// names).
    pub org: Option<Arc<TenantRecord>>,
}

impl Tenants {
    /// Whether no tenant was found.
    pub fn is_empty(&self) -> bool {
        self.user.is_none() && self.team.is_none() && self.org.is_none()
    }

    /// The records found, user first, then team, then org.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<TenantRecord>> {
        [&self.user, &self.team, &self.org].into_iter().flatten()
    }

    /// The first disabled tenant, if any.
    pub fn disabled(&self) -> Option<&TenantRecord> {
        self.iter().map(|t| &**t).find(|t| t.disabled)
    }
}
