//! Key and tenant records as JSON: the one format every durable store
//! (Redis, SQLite) keeps them in. Versioned, and never holding a secret:
//! only its hash.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::{KeyHash, KeyRecord, RetiredSecret, TenantKind, TenantRecord};
use crate::budget::{BudgetMode, BudgetScope, BudgetSpec, Money, Period};
use crate::rate_limit::{Algorithm, Limit, Measure, ModelLimits, ScopeLimits};
use crate::store::StoreError;

/// A key record as stored (JSON).
#[derive(Serialize, Deserialize)]
struct Stored {
    v: u32,
    id: String,
    /// The current secret's SHA-256, hex (absent in version 1, where the
    /// storage key held it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    retired: Vec<StoredRetired>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    revoked: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    disabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    /// The configuration entry last granted from, its secret as a hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config_entry: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    created_at_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allowed_models: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rate_limits: Vec<StoredLimit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    model_limits: Vec<StoredScopeLimits>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    scope_limits: Vec<StoredScopeLimits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_concurrent: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    budgets: Vec<StoredBudget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    org: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct StoredRetired {
    sha256: String,
    until_ns: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredLimit {
    tokens: bool,
    amount: u64,
    window_ns: u64,
    /// `sliding`, `gcra` or `fixed`; absent in records written before
    /// algorithms were chosen, which counted with GCRA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    algorithm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    burst: Option<u64>,
}

impl StoredLimit {
    fn of(l: &Limit) -> StoredLimit {
        StoredLimit {
            tokens: l.measure == Measure::Tokens,
            amount: l.amount,
            window_ns: u64::try_from(l.window.as_nanos()).unwrap_or(u64::MAX),
            algorithm: Some(l.algorithm.as_str().to_owned()),
            burst: l.burst,
        }
    }

    fn limit(&self) -> Result<Limit, StoreError> {
        let measure = if self.tokens {
            Measure::Tokens
        } else {
            Measure::Requests
        };
        let algorithm = match self.algorithm.as_deref() {
            None => Algorithm::Gcra,
            Some(name) => name
                .parse()
                .map_err(|_| StoreError::Corrupt("key record: unknown limit algorithm".into()))?,
        };
        let mut limit = Limit::new(measure, self.amount, Duration::from_nanos(self.window_ns));
        limit.algorithm = algorithm;
        limit.burst = self.burst;
        Ok(limit)
    }
}

/// A set of limits of one model or one shared scope.
#[derive(Serialize, Deserialize)]
struct StoredScopeLimits {
    /// The model glob, or the scope kind (`user`, `team`, `org`).
    name: String,
    /// The scope's id (absent for a model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    limits: Vec<StoredLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_concurrent: Option<u32>,
}

#[derive(Serialize, Deserialize)]
struct StoredBudget {
    /// `key`, `user`, `team` or `org`.
    scope: String,
    scope_id: String,
    limit_nanos: i64,
    balance: bool,
    /// `d`, `w`, `m`, `n` or `r<nanoseconds>`.
    period: String,
}

impl StoredBudget {
    fn of(b: &BudgetSpec) -> StoredBudget {
        StoredBudget {
            scope: b.scope.kind_name().into(),
            scope_id: b.scope.name().to_owned(),
            limit_nanos: b.limit.nanos(),
            balance: b.mode == BudgetMode::Balance,
            period: match b.period {
                Period::Daily => "d".into(),
                Period::Weekly => "w".into(),
                Period::Monthly => "m".into(),
                Period::Never => "n".into(),
                Period::Rolling(d) => {
                    format!("r{}", u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                }
            },
        }
    }

    fn spec(&self) -> Result<BudgetSpec, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("budget: {what}"));
        let scope = BudgetScope::parse(&format!("{}:{}", self.scope, self.scope_id))
            .ok_or_else(|| corrupt("unknown budget scope"))?;
        let period = match self.period.as_str() {
            "d" => Period::Daily,
            "w" => Period::Weekly,
            "m" => Period::Monthly,
            "n" => Period::Never,
            r => Period::Rolling(Duration::from_nanos(
                r.strip_prefix('r')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| corrupt("unknown budget period"))?,
            )),
        };
        let limit = Money::from_nanos(self.limit_nanos);
        Ok(if self.balance {
            BudgetSpec::balance(scope, limit)
        } else {
            BudgetSpec::budget(scope, limit, period)
        })
    }
}

/// A tenant record as stored (JSON).
#[derive(Serialize, Deserialize)]
struct StoredTenant {
    v: u32,
    /// `user`, `team` or `org`.
    kind: String,
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    org: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rate_limits: Vec<StoredLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_concurrent: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    budgets: Vec<StoredBudget>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    disabled: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config_entry: Option<serde_json::Value>,
}

/// A tenant record as JSON.
pub(crate) fn encode_tenant(record: &TenantRecord) -> String {
    let stored = StoredTenant {
        v: 1,
        kind: record.kind.name().into(),
        id: record.id.clone(),
        name: record.name.clone(),
        org: record.org.clone(),
        rate_limits: record.rate_limits.iter().map(StoredLimit::of).collect(),
        max_concurrent: record.max_concurrent,
        budgets: record.budgets.iter().map(StoredBudget::of).collect(),
        disabled: record.disabled,
        metadata: record.metadata.clone(),
        config_entry: record
            .config_entry
            .as_deref()
            .and_then(|entry| serde_json::to_value(entry).ok()),
    };
    // Plain data with string keys: serialization cannot fail.
    serde_json::to_string(&stored).unwrap_or_default()
}

/// A tenant record back from [`encode_tenant`]'s JSON.
pub(crate) fn decode_tenant(json: &str) -> Result<TenantRecord, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("tenant record: {what}"));
    let stored: StoredTenant = serde_json::from_str(json).map_err(|_| corrupt("malformed JSON"))?;
    if stored.v != 1 {
        return Err(corrupt("unknown version"));
    }
    let kind = [TenantKind::User, TenantKind::Team, TenantKind::Org]
        .into_iter()
        .find(|kind| kind.name() == stored.kind)
        .ok_or_else(|| corrupt("unknown kind"))?;
    let mut record = TenantRecord::new(kind, stored.id);
    record.name = stored.name;
    record.org = stored.org;
    record.rate_limits = limits(&stored.rate_limits)?;
    record.max_concurrent = stored.max_concurrent;
    record.budgets = budgets(&stored.budgets)?;
    record.disabled = stored.disabled;
    record.metadata = stored.metadata;
    record.config_entry =
        config_entry(stored.config_entry).map_err(|_| corrupt("bad config entry"))?;
    Ok(record)
}

/// Stored limits back.
fn limits(stored: &[StoredLimit]) -> Result<Vec<Limit>, StoreError> {
    stored.iter().map(StoredLimit::limit).collect()
}

/// Stored budgets back.
fn budgets(stored: &[StoredBudget]) -> Result<Vec<BudgetSpec>, StoreError> {
    stored.iter().map(StoredBudget::spec).collect()
}

/// A stored configuration entry back.
fn config_entry<E: DeserializeOwned>(
    value: Option<serde_json::Value>,
) -> serde_json::Result<Option<Arc<E>>> {
    value
        .map(|v| serde_json::from_value(v).map(Arc::new))
        .transpose()
}

fn nanos_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The record as JSON, secrets as hashes.
pub(crate) fn encode(record: &KeyRecord) -> String {
    let stored = Stored {
        v: 2,
        id: record.id.clone(),
        secret_sha256: Some(record.secret_hash.to_hex()),
        retired: record
            .retired
            .iter()
            .map(|r| StoredRetired {
                sha256: r.hash.to_hex(),
                until_ns: nanos_since_epoch(r.until),
            })
            .collect(),
        revoked: record.revoked,
        disabled: record.disabled,
        user: record.user.clone(),
        config_entry: record
            .config_entry
            .as_deref()
            .and_then(|entry| serde_json::to_value(entry.hashed()).ok()),
        name: record.name.clone(),
        created_at_ns: nanos_since_epoch(record.created_at),
        expires_at_ns: record.expires_at.map(nanos_since_epoch),
        allowed_models: record.allowed_models.clone(),
        rate_limits: record.rate_limits.iter().map(StoredLimit::of).collect(),
        model_limits: record
            .model_limits
            .iter()
            .map(|m| StoredScopeLimits {
                name: m.model.clone(),
                id: None,
                limits: m.limits.iter().map(StoredLimit::of).collect(),
                max_concurrent: m.max_concurrent,
            })
            .collect(),
        scope_limits: record
            .scope_limits
            .iter()
            .map(|s| StoredScopeLimits {
                name: s.scope.clone(),
                id: Some(s.id.clone()),
                limits: s.limits.iter().map(StoredLimit::of).collect(),
                max_concurrent: s.max_concurrent,
            })
            .collect(),
        max_concurrent: record.max_concurrent,
        budgets: record.budgets.iter().map(StoredBudget::of).collect(),
        team: record.team.clone(),
        org: record.org.clone(),
        metadata: record.metadata.clone(),
    };
    // Plain data with string keys: serialization cannot fail.
    serde_json::to_string(&stored).unwrap_or_default()
}

/// A record back from [`encode`]'s JSON. Version 1 records (written before
/// the secret's hash was part of the JSON) take `storage_hash`, the hash
/// their storage key holds.
pub(crate) fn decode(json: &str, storage_hash: Option<KeyHash>) -> Result<KeyRecord, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("key record: {what}"));
    let stored: Stored = serde_json::from_str(json).map_err(|_| corrupt("malformed JSON"))?;
    if stored.v != 1 && stored.v != 2 {
        return Err(corrupt("unknown version"));
    }
    let at = |ns: u64| UNIX_EPOCH + Duration::from_nanos(ns);
    let hash = match (&stored.secret_sha256, storage_hash) {
        (Some(hex), _) => KeyHash::from_hex(hex).map_err(|_| corrupt("bad secret hash"))?,
        (None, Some(hash)) => hash,
        (None, None) => return Err(corrupt("no secret hash")),
    };
    let mut record = KeyRecord::new(stored.id, hash);
    record.retired = stored
        .retired
        .iter()
        .map(|r| {
            Ok(RetiredSecret {
                hash: KeyHash::from_hex(&r.sha256).map_err(|_| corrupt("bad retired hash"))?,
                until: at(r.until_ns),
            })
        })
        .collect::<Result<_, StoreError>>()?;
    record.revoked = stored.revoked;
    record.disabled = stored.disabled;
    record.user = stored.user;
    record.config_entry =
        config_entry(stored.config_entry).map_err(|_| corrupt("bad config entry"))?;
    record.name = stored.name;
    record.created_at = at(stored.created_at_ns);
    record.expires_at = stored.expires_at_ns.map(at);
    record.allowed_models = stored.allowed_models;
    record.rate_limits = limits(&stored.rate_limits)?;
    record.model_limits = stored
        .model_limits
        .iter()
        .map(|m| {
            let mut model = ModelLimits::new(m.name.clone(), limits(&m.limits)?);
            model.max_concurrent = m.max_concurrent;
            Ok(model)
        })
        .collect::<Result<_, StoreError>>()?;
    record.scope_limits = stored
        .scope_limits
        .iter()
        .map(|s| {
            let mut scope = ScopeLimits::new(
                s.name.clone(),
                s.id.clone().unwrap_or_default(),
                limits(&s.limits)?,
            );
            scope.max_concurrent = s.max_concurrent;
            Ok(scope)
        })
        .collect::<Result<_, StoreError>>()?;
    record.max_concurrent = stored.max_concurrent;
    record.budgets = budgets(&stored.budgets)?;
    record.team = stored.team;
    record.org = stored.org;
    record.metadata = stored.metadata;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{KeyEntry, TenantEntry};

    #[test]
    fn tenants_round_trip_through_json() {
        let mut team = TenantRecord::new(TenantKind::Team, "research");
        team.name = Some("Research".into());
        team.org = Some("acme".into());
        team.rate_limits = vec![Limit::requests_per_minute(600), Limit::tokens_per_minute(1)];
        team.max_concurrent = Some(4);
        team.budgets = vec![
            BudgetSpec::budget(team.scope(), Money::from_usd(50), Period::Weekly),
            BudgetSpec::balance(team.scope(), Money::from_nanos(7)),
        ];
        team.disabled = true;
        team.metadata.insert("k".into(), "v".into());
        let entry: TenantEntry =
            serde_json::from_str(r#"{"id":"research","budget_usd":1}"#).unwrap();
        team.config_entry = Some(std::sync::Arc::new(entry));
        assert_eq!(decode_tenant(&encode_tenant(&team)).unwrap(), team);
        assert!(decode_tenant(r#"{"v":1,"kind":"key","id":"a"}"#).is_err());
        assert!(decode_tenant(r#"{"v":9,"kind":"team","id":"a"}"#).is_err());
    }

    #[test]
    fn records_round_trip_through_json() {
        let hash = KeyHash::of("sk-test");
        let mut record = KeyRecord::new("alice", hash);
        record.name = Some("Alice".into());
        record.created_at = UNIX_EPOCH + Duration::new(1_800_000_000, 123);
        record.expires_at = Some(UNIX_EPOCH + Duration::from_secs(1_900_000_000));
        record.allowed_models = vec!["gpt-4o*".into()];
        record.rate_limits = vec![
            Limit::requests_per_minute(60),
            Limit::tokens(150_000, Duration::from_millis(90_500)),
        ];
        record.max_concurrent = Some(4);
        record.rate_limits[0] = record.rate_limits[0].algorithm(Algorithm::Gcra).burst(5);
        record.model_limits = vec![
            ModelLimits::new("gpt-4o*", [Limit::tokens_per_minute(10_000)]).with_max_concurrent(2),
        ];
        record.scope_limits = vec![ScopeLimits::new(
            "team",
            "t",
            [Limit::requests_per_minute(600)],
        )];
        record.budgets = vec![
            BudgetSpec::budget(
                BudgetScope::Team("t".into()),
                Money::from_nanos(i64::MAX),
                Period::Monthly,
            ),
            BudgetSpec::budget(
                BudgetScope::Key("k".into()),
                Money::from_usd(1),
                Period::Rolling(Duration::from_secs(3600)),
            ),
            BudgetSpec::balance(BudgetScope::Org("o".into()), Money::from_nanos(-5)),
        ];
        record.team = Some("t".into());
        record.org = Some("o".into());
        record.metadata.insert("owner".into(), "ops".into());

        record.user = Some("ann".into());
        record.revoked = true;
        record.rotate(
            KeyHash::of("sk-new"),
            UNIX_EPOCH + Duration::from_secs(1_850_000_000),
        );
        let entry: KeyEntry =
            serde_json::from_str(r#"{"id":"alice","secret":"sk-test","budget_usd":5}"#).unwrap();
        record.config_entry = Some(std::sync::Arc::new(entry));

        let json = encode(&record);
        assert!(!json.contains("sk-test"), "{json}");
        let back = decode(&json, None).unwrap();
        assert_eq!(
            back.config_entry.as_deref().map(|e| e.secret.is_none()),
            Some(true)
        );
        assert_eq!(
            back.config_entry
                .as_deref()
                .and_then(|e| e.secret_sha256.clone()),
            Some(hash.to_hex())
        );
        let mut expected = record.clone();
        expected.config_entry = back.config_entry.clone();
        assert_eq!(back, expected);
        assert!(decode("{", Some(hash)).is_err());
        assert!(decode(r#"{"v":3,"id":"a","created_at_ns":0}"#, Some(hash)).is_err());
        // Version 1: the hash came from the storage key.
        let v1 = decode(r#"{"v":1,"id":"a","created_at_ns":0}"#, Some(hash)).unwrap();
        assert_eq!(v1.secret_hash, hash);
    }
}
