//! One user, team or org as configuration gives it: [`TenantEntry`], the
//! gateway's `[[users]]`, `[[teams]]` and `[[orgs]]` tables.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use super::limits::{LimitEntry, entries_of, limits_of, shorthand};
use super::{
    InvalidKeyEntry, budget_fields, budgets_of, deserialize_entry, dollars, id_problem, ser_money,
    value,
};
use crate::auth::{Grant, TenantKind, TenantRecord};
use crate::budget::Money;

/// One tenant (a user, a team or an org) in a gateway's configuration,
/// before validation. Its fields are a [`KeyEntry`](super::KeyEntry)'s where they mean the
/// same; its kind is the table it is in.
///
/// | field | type | meaning |
/// |---|---|---|
/// | `id` | string, required | stable id within its kind, in limit and budget scopes (`team:research`) |
/// | `name` | string | display name |
/// | `disabled` | bool | refuse every key of the tenant with 403 `account_disabled` |
/// | `requests_per_second`, `_minute`, `_hour`, `_day` | integer | request rate limits shared by all its keys |
/// | `tokens_per_minute`, `_hour`, `_day` | integer | token rate limits shared by all its keys |
/// | `limits` | list of tables | rate limits in the general form (as for keys) |
/// | `max_concurrent` | integer | requests in flight, all its keys together |
/// | `budget_usd` | number or string | spend limit per `budget_period`, all its keys together |
/// | `budget_period` | `daily`, `weekly`, `monthly` (default), `never` | when the spend resets |
/// | `balance_usd` | number or string | prepaid opening balance |
/// | `org` | string | the org a team belongs to (teams only) |
/// | `metadata` | table of strings | free-form |
///
/// ```
/// use tollgate::auth::{TenantEntry, TenantKind};
///
/// let entry: TenantEntry = toml::from_str(r#"
///     id = "research"
///     org = "acme"
///     requests_per_minute = 600
///     budget_usd = 50
/// "#)?;
/// let team = entry.into_record(TenantKind::Team)?;
/// assert_eq!(team.budgets[0].id(), "team:research");
/// assert_eq!(team.rate_limits[0].amount, 600);
///
/// // Only a team belongs to an org.
/// let user: TenantEntry = toml::from_str(r#"id = "ann"
/// org = "acme""#)?;
/// let err = user.into_record(TenantKind::User).unwrap_err();
/// assert!(err.to_string().starts_with("user `ann`: `org`"), "{err}");
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TenantEntry {
    /// Stable id.
    pub id: String,
    /// Display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Disabled.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Requests per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u64>,
    /// Requests per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    /// Requests per hour.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_hour: Option<u64>,
    /// Requests per day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
    /// Tokens per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Tokens per hour.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_hour: Option<u64>,
    /// Tokens per day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    /// Rate limits in the general form.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitEntry>,
    /// Requests in flight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Spend limit per period.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_money")]
    pub budget_usd: Option<Money>,
    /// `daily`, `weekly`, `monthly` or `never`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_period: Option<String>,
    /// Prepaid opening balance.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_money")]
    pub balance_usd: Option<Money>,
    /// The org of a team.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Free-form metadata.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl TenantEntry {
    /// Validates the entry and builds the record of a tenant of `kind`:
    /// limits and budgets (scoped to the tenant) built, an `org` refused
    /// unless it is a team's.
    pub fn into_record(self, kind: TenantKind) -> Result<TenantRecord, InvalidKeyEntry> {
        let id = self.id;
        let bad =
            |field, reason: &'static str| InvalidKeyEntry::new(&id, field, reason).of(kind.name());
        let mut record = TenantRecord::new(kind, id.clone());
        if let Some(reason) = id_problem(&id) {
            return Err(bad("id", reason));
        }
        record.rate_limits =
            limits_of(&id, &shorthand!(self), &self.limits, "").map_err(|e| e.of(kind.name()))?;
        if self.max_concurrent == Some(0) {
            return Err(bad(
                "max_concurrent",
                "must be at least 1 (set `disabled = true` to block a tenant)",
            ));
        }
        record.max_concurrent = self.max_concurrent;
        record.budgets = budgets_of(
            &id,
            kind.scope(id.clone()),
            self.budget_usd,
            self.budget_period.as_deref(),
            self.balance_usd,
        )
        .map_err(|e| e.of(kind.name()))?;
        match self.org {
            Some(_) if kind != TenantKind::Team => {
                return Err(bad(
                    "org",
                    "is only for a team: users and orgs belong to no org",
                ));
            }
            Some(org)
                if org.is_empty() || org.chars().any(|c| c.is_control() || c.is_whitespace()) =>
            {
                return Err(bad(
                    "org",
                    "must be an org id without whitespace or control characters",
                ));
            }
            org => record.org = org,
        }
        record.name = self.name;
        record.disabled = self.disabled;
        record.metadata = self.metadata;
        Ok(record)
    }

    /// What this entry, of `kind`, does to `existing`, the store's record
    /// of its tenant (`None`: the entry creates it), as
    /// [`KeyEntry::grant`](super::KeyEntry::grant) does for keys: each
    /// group of fields (`name`; `disabled`; the rate limits and
    /// concurrency; the budget and balance fields; `org`; `metadata`) is
    /// applied when the file changed it since the entry `existing` was last
    /// granted from, so a change made at run time survives a restart.
    /// Spend and balances are the ledger's, never changed here.
    pub fn grant(
        &self,
        kind: TenantKind,
        existing: Option<&TenantRecord>,
    ) -> Result<Grant<TenantRecord>, InvalidKeyEntry> {
        let fresh = self.clone().into_record(kind)?;
        let entry = Arc::new(self.clone());
        // A new record is the fresh one, granted from no entry: it takes
        // every group of fields.
        let existing = existing.unwrap_or(&fresh);
        let last = existing.config_entry.as_deref();
        let changed =
            |same: fn(&TenantEntry, &TenantEntry) -> bool| last.is_none_or(|l| !same(l, &entry));
        let mut record = existing.clone();
        if changed(|a, b| a.name == b.name) {
            record.name = fresh.name.clone();
        }
        if changed(|a, b| a.disabled == b.disabled) {
            record.disabled = fresh.disabled;
        }
        if changed(|a, b| {
            shorthand!(a) == shorthand!(b)
                && a.limits == b.limits
                && a.max_concurrent == b.max_concurrent
        }) {
            record.rate_limits = fresh.rate_limits.clone();
            record.max_concurrent = fresh.max_concurrent;
        }
        if changed(|a, b| {
            (&a.budget_usd, &a.budget_period, &a.balance_usd)
                == (&b.budget_usd, &b.budget_period, &b.balance_usd)
        }) {
            record.budgets = fresh.budgets.clone();
        }
        if changed(|a, b| a.org == b.org) {
            record.org = fresh.org.clone();
        }
        if changed(|a, b| a.metadata == b.metadata) {
            record.metadata = fresh.metadata.clone();
        }
        let unchanged = record == *existing && last == Some(&*entry);
        record.config_entry = Some(entry);
        Ok(if unchanged {
            Grant::Unchanged
        } else {
            Grant::Put(record)
        })
    }

    /// The entry describing `record`: what an admin API shows of it.
    pub fn from_record(record: &TenantRecord) -> TenantEntry {
        let (shorthand, limits) = entries_of(&record.rate_limits);
        let (budget_usd, budget_period, balance_usd) =
            budget_fields(&record.budgets, &record.scope());
        let mut entry = TenantEntry {
            id: record.id.clone(),
            name: record.name.clone(),
            disabled: record.disabled,
            limits,
            max_concurrent: record.max_concurrent,
            budget_usd,
            budget_period,
            balance_usd,
            org: record.org.clone(),
            metadata: record.metadata.clone(),
            ..TenantEntry::default()
        };
        shorthand!(entry) = shorthand;
        entry
    }
}

deserialize_entry!(
    TenantEntry,
    "a user, team or org entry with an `id`",
    [
        id,
        name,
        disabled,
        requests_per_second,
        requests_per_minute,
        requests_per_hour,
        requests_per_day,
        tokens_per_minute,
        tokens_per_hour,
        tokens_per_day,
        limits,
        max_concurrent,
        budget_usd with dollars,
        budget_period,
        balance_usd with dollars,
        org,
        metadata,
    ]
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{BudgetMode, Period};

    fn entry(json: &str) -> TenantEntry {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn reads_every_field_and_round_trips() {
        let e = entry(
            r#"{"id":"research","name":"Research","org":"acme","requests_per_minute":600,
                "tokens_per_day":1000000,"max_concurrent":8,"budget_usd":"50","budget_period":"daily",
                "balance_usd":10,"metadata":{"cost_center":"42"}}"#,
        );
        let team = e.clone().into_record(TenantKind::Team).unwrap();
        team.check().unwrap();
        assert_eq!(team.org.as_deref(), Some("acme"));
        assert_eq!(team.budgets.len(), 2);
        assert_eq!(team.budgets[0].period, Period::Daily);
        assert_eq!(team.budgets[1].mode, BudgetMode::Balance);
        assert_eq!(team.max_concurrent, Some(8));
        let back = TenantEntry::from_record(&team);
        assert_eq!(back.into_record(TenantKind::Team).unwrap(), team);
    }

    #[test]
    fn errors_name_the_kind_the_entry_and_the_field() {
        use TenantKind::*;
        for (json, kind, expected) in [
            (r#"{"id":"ann","org":"acme"}"#, User, "user `ann`: `org`"),
            (r#"{"id":"acme","org":"x"}"#, Org, "org `acme`: `org`"),
            (
                r#"{"id":"r","requests_per_minute":0}"#,
                Team,
                "team `r`: `requests_per_minute`",
            ),
            (
                r#"{"id":"r","budget_period":"daily"}"#,
                Team,
                "team `r`: `budget_period`",
            ),
            (r#"{"id":"a b"}"#, Team, "team `a b`: `id`"),
        ] {
            let err = entry(json).into_record(kind).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{json}: {err}");
        }
        let err = serde_json::from_str::<TenantEntry>(r#"{"id":"r","secret":"sk-x"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `secret`"), "{err}");
    }

    #[test]
    fn grants_apply_the_file_s_changes_only() {
        let e = entry(r#"{"id":"r","requests_per_minute":60,"budget_usd":5}"#);
        let Grant::Put(mut team) = e.grant(TenantKind::Team, None).unwrap() else {
            panic!("a new entry creates its tenant")
        };
        // Disabled at run time; the same file changes nothing.
        team.disabled = true;
        assert_eq!(
            e.grant(TenantKind::Team, Some(&team)).unwrap(),
            Grant::Unchanged
        );
        // The file raises the limit: applied, the run-time change kept.
        let raised = entry(r#"{"id":"r","requests_per_minute":90,"budget_usd":5}"#);
        let Grant::Put(team) = raised.grant(TenantKind::Team, Some(&team)).unwrap() else {
            panic!("a changed entry changes its tenant")
        };
        assert!(team.disabled);
        assert_eq!(team.rate_limits[0].amount, 90);
    }
}
