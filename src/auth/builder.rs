//! Consuming setters for [`KeyRecord`], for code that builds records by hand
//! (tests, admin tools) rather than from a key file.

use std::time::SystemTime;

use super::KeyRecord;
use crate::budget::BudgetSpec;
use crate::rate_limit::Limit;

impl KeyRecord {
    /// Sets the display name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets when the key was minted (the start of its maximum lifetime).
    pub fn with_created_at(mut self, at: SystemTime) -> Self {
        self.created_at = at;
        self
    }

    /// Sets when the key stops working.
    pub fn with_expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Marks the key revoked (401 `revoked_api_key`).
    pub fn with_revoked(mut self, revoked: bool) -> Self {
        self.revoked = revoked;
        self
    }

    /// Marks the key's account disabled (403 `account_disabled`).
    pub fn with_disabled(mut self, disabled: bool) -> Self {
        self.disabled = disabled;
        self
    }

    /// Restricts the key to these models: exact names and `*` globs.
    pub fn with_allowed_models<I>(mut self, models: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.allowed_models = models.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a rate limit.
    pub fn with_rate_limit(mut self, limit: Limit) -> Self {
        self.rate_limits.push(limit);
        self
    }

    /// Sets the number of requests the key may have in flight.
    pub fn with_max_concurrent(mut self, max: u32) -> Self {
        self.max_concurrent = Some(max);
        self
    }

    /// Adds a budget the key's requests are charged to.
    pub fn with_budget(mut self, budget: BudgetSpec) -> Self {
        self.budgets.push(budget);
        self
    }

    /// Sets the team.
    pub fn with_team(mut self, team: impl Into<String>) -> Self {
        self.team = Some(team.into());
        self
    }

    /// Sets the organisation.
    pub fn with_org(mut self, org: impl Into<String>) -> Self {
        self.org = Some(org.into());
        self
    }

    /// Adds a metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}
