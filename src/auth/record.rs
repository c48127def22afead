//! Key records and the identity they give a request.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use super::Tenants;
use crate::budget::{BudgetScope, BudgetSpec};
use crate::rate_limit::{Limit, ModelLimits, ScopeLimits};

/// The SHA-256 of an API key's secret. The secret itself is never stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A prefix is enough to tell records apart in logs.
        write!(
            f,
            "KeyHash({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// One API key (or virtual key) as the store holds it. Its `Debug` output
/// holds no secret: a hash, and a configuration entry's redacted `Debug`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyRecord {
    /// Stable id, shown in logs and used to key limits and budgets.
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// SHA-256 of the secret.
    pub secret_hash: KeyHash,
    /// When the key was minted.
    pub created_at: SystemTime,
    /// When the key stops working, if ever.
    pub expires_at: Option<SystemTime>,
    /// Revoked keys are refused with 401 `revoked_api_key`.
    pub revoked: bool,
    /// Disabled (blocked account) keys are refused with 403 `account_disabled`.
    pub disabled: bool,
    /// Models the key may use: exact names and `*` globs; empty means all.
    pub allowed_models: Vec<String>,
    /// Rate limits for this key (the rate-limit layer's defaults apply when empty).
    pub rate_limits: Vec<Limit>,
    /// In-flight requests allowed for this key.
    pub max_concurrent: Option<u32>,
    /// This key's own limits per model (`model` an exact name or a `*`
    /// glob; the first entry matching a request's model applies, and each
    /// model it matches has a count of its own), on top of `rate_limits`.
    pub model_limits: Vec<ModelLimits>,
    /// Limits of scopes shared with other keys that this key's requests
    /// also count against (its user, team, organisation).
    pub scope_limits: Vec<ScopeLimits>,
    /// Budgets this key's requests are charged to (its own, its team's, …).
    pub budgets: Vec<BudgetSpec>,
    /// Secrets the key had before it was rotated, each working until its
    /// grace period ends and refused as revoked afterwards.
    pub retired: Vec<RetiredSecret>,
    /// User the key belongs to.
    pub user: Option<String>,
    /// Team the key belongs to.
    pub team: Option<String>,
    /// Organisation the key belongs to.
    pub org: Option<String>,
    /// Free-form metadata.
    pub metadata: BTreeMap<String, String>,
    /// The configuration entry this record was last granted from (its
    /// secret as a hash), for a key that a configuration file lists: the
    /// next synchronisation applies only what changed in the file since
    /// (see [`KeyEntry::grant`](super::KeyEntry::grant)). `None` for keys
    /// made through an admin API.
    pub config_entry: Option<Arc<super::KeyEntry>>,
    /// `budgets` as the shared slice a reservation keeps, made once per
    /// record instead of once per request.
    shared_budgets: Cached<Arc<[BudgetSpec]>>,
    /// The key's spend scopes (key, user, team, org), made once per record.
    spend_scopes: Cached<Arc<[BudgetScope]>>,
}

/// A secret a key held before a rotation: it keeps working until `until`,
/// then gets 401 `revoked_api_key` (not `invalid_api_key`: the caller learns
/// to fetch the new secret, and nothing is revealed that the old secret's
/// holder did not know).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RetiredSecret {
    /// SHA-256 of the old secret.
    pub hash: KeyHash,
    /// When the grace period ends.
    pub until: SystemTime,
}

impl RetiredSecret {
    /// Retired secrets a record keeps: older ones are forgotten (their
    /// holders then get `invalid_api_key`).
    pub const MAX_KEPT: usize = 4;
}

/// A value derived from a record's fields, made on first use. Not part of
/// the record's value: equal to any other, and empty in a clone (whose
/// fields may then be changed). Users check it against the fields, as a
/// record held alone can be changed in place.
#[derive(Default)]
struct Cached<T>(OnceLock<T>);

impl<T> Clone for Cached<T> {
    fn clone(&self) -> Self {
        Cached(OnceLock::new())
    }
}

impl<T> PartialEq for Cached<T> {
    fn eq(&self, _: &Cached<T>) -> bool {
        true
    }
}

impl<T> Eq for Cached<T> {}

impl<T> fmt::Debug for Cached<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cached")
    }
}

impl KeyRecord {
    /// Every secret hash this record answers to: the current one, then the
    /// retired ones.
    pub fn secret_hashes(&self) -> impl Iterator<Item = KeyHash> + '_ {
        std::iter::once(self.secret_hash).chain(self.retired.iter().map(|r| r.hash))
    }

    /// Rotates the key to `new_secret`: the current secret keeps working
    /// until `until` (pass the current time for no grace), then is refused
    /// as revoked. At most [`RetiredSecret::MAX_KEPT`] retired secrets are
    /// kept, the newest.
    pub fn rotate(&mut self, new_secret: KeyHash, until: SystemTime) {
        let old = std::mem::replace(&mut self.secret_hash, new_secret);
        self.retired
            .retain(|r| r.hash != new_secret && r.hash != old);
        self.retired.insert(0, RetiredSecret { hash: old, until });
        self.retired.truncate(RetiredSecret::MAX_KEPT);
    }

    /// A record for `id` whose secret hashes to `secret_hash`, created now,
    /// with no expiry, limits, budgets or model restrictions.
    pub fn new(id: impl Into<String>, secret_hash: KeyHash) -> Self {
        KeyRecord {
            id: id.into(),
            name: None,
            secret_hash,
            created_at: SystemTime::now(),
            expires_at: None,
            revoked: false,
            disabled: false,
            allowed_models: Vec::new(),
            rate_limits: Vec::new(),
            max_concurrent: None,
            model_limits: Vec::new(),
            scope_limits: Vec::new(),
            budgets: Vec::new(),
            retired: Vec::new(),
            user: None,
            team: None,
            org: None,
            metadata: BTreeMap::new(),
            config_entry: None,
            shared_budgets: Cached::default(),
            spend_scopes: Cached::default(),
        }
    }

    /// Adds this key's own limits for the models matching `model` (an exact
    /// name or a `*` glob).
    pub fn with_model_limits(mut self, limits: ModelLimits) -> Self {
        self.model_limits.push(limits);
        self
    }
}

/// The caller of a request, as `AuthLayer` found it: its key's record and
/// the records of its [`Tenants`] (user, team, org). Inserted into the
/// request's extensions; rate limits and budgets key on it. Cheap to clone.
///
/// It holds no secret, so its `Debug` output is safe to log.
#[derive(Clone)]
pub struct Principal {
    record: Arc<KeyRecord>,
    /// `None` for a key without tenant records: no allocation.
    tenants: Option<Arc<Resolved>>,
}

/// A key's tenants and what they add to it, made once per request that has
/// any.
struct Resolved {
    tenants: Tenants,
    org: Option<String>,
    budgets: Arc<[BudgetSpec]>,
    scope_limits: Vec<ScopeLimits>,
    spend_scopes: Arc<[BudgetScope]>,
}

impl PartialEq for Principal {
    fn eq(&self, other: &Principal) -> bool {
        self.record == other.record
            && self.tenants.as_ref().map(|t| &t.tenants)
                == other.tenants.as_ref().map(|t| &t.tenants)
    }
}

impl Eq for Principal {}

impl Principal {
    /// The principal of `record`, without tenants.
    pub fn new(record: impl Into<Arc<KeyRecord>>) -> Self {
        Principal {
            record: record.into(),
            tenants: None,
        }
    }

    /// The same principal with its key's tenants: their budgets are charged
    /// with the key's, their limits counted as named scopes, the key's
    /// spend kept under them. A budget or a named limit the key record
    /// holds for a scope that has a record here is the record's copy, and
    /// is left out: the tenant's record is the one source of truth.
    pub fn with_tenants(self, tenants: Tenants) -> Self {
        if tenants.is_empty() {
            return Principal {
                tenants: None,
                ..self
            };
        }
        let record = &*self.record;
        let has_record = |scope: &BudgetScope| tenants.iter().any(|t| t.scope() == *scope);
        let budgets: Vec<BudgetSpec> = record
            .budgets
            .iter()
            .filter(|b| !has_record(&b.scope))
            .chain(tenants.iter().flat_map(|t| t.budgets.iter()))
            .cloned()
            .collect();
        let scope_limits: Vec<ScopeLimits> = record
            .scope_limits
            .iter()
            .filter(|s| {
                !tenants
                    .iter()
                    .any(|t| t.kind.name() == s.scope && t.id == s.id)
            })
            .cloned()
            .chain(tenants.iter().filter_map(|t| t.scope_limits()))
            .collect();
        let org = tenants
            .team
            .as_ref()
            .and_then(|t| t.org.clone())
            .or_else(|| tenants.org.as_ref().map(|o| o.id.clone()))
            .or_else(|| record.org.clone());
        let scopes = scopes_of(record, org.as_ref());
        Principal {
            tenants: Some(Arc::new(Resolved {
                tenants,
                org,
                budgets: budgets.into(),
                scope_limits,
                spend_scopes: scopes.into(),
            })),
            ..self
        }
    }

    /// The records of the key's user, team and org, when it has any.
    pub fn tenants(&self) -> Option<&Tenants> {
        self.tenants.as_deref().map(|t| &t.tenants)
    }

    /// The key's id.
    pub fn key_id(&self) -> &str {
        &self.record.id
    }

    /// The key's display name.
    pub fn name(&self) -> Option<&str> {
        self.record.name.as_deref()
    }

    /// The key's user.
    pub fn user(&self) -> Option<&str> {
        self.record.user.as_deref()
    }

    /// The key's team.
    pub fn team(&self) -> Option<&str> {
        self.record.team.as_deref()
    }

    /// The key's organisation: its team's, when its team has a record
    /// that names one, else the one the key names.
    pub fn org(&self) -> Option<&str> {
        match &self.tenants {
            Some(t) => t.org.as_deref(),
            None => self.record.org.as_deref(),
        }
    }

    /// The key's rate limits.
    pub fn rate_limits(&self) -> &[Limit] {
        &self.record.rate_limits
    }

    /// The key's concurrency limit.
    pub fn max_concurrent(&self) -> Option<u32> {
        self.record.max_concurrent
    }

    /// The key's own limits per model.
    pub fn model_limits(&self) -> &[ModelLimits] {
        &self.record.model_limits
    }

    /// The limits of shared scopes (user, team, organisation) the key's
    /// requests also count against: its tenants' records' limits, and any
    /// the key record names for scopes without a record.
    pub fn scope_limits(&self) -> &[ScopeLimits] {
        match &self.tenants {
            Some(t) => &t.scope_limits,
            None => &self.record.scope_limits,
        }
    }

    /// The budgets the key's requests are charged to: the key's own, then
    /// its user's, team's and org's.
    pub fn budgets(&self) -> &[BudgetSpec] {
        match &self.tenants {
            Some(t) => &t.budgets,
            None => &self.record.budgets,
        }
    }

    /// [`budgets`](Principal::budgets) as a shared slice, built once per key
    /// record rather than copied for every request's reservation. Checked
    /// against the record's budgets on each use, so a record changed after
    /// the cache was made is never charged to its old budgets.
    pub(crate) fn shared_budgets(&self) -> Arc<[BudgetSpec]> {
        if let Some(t) = &self.tenants {
            return t.budgets.clone();
        }
        let record = &*self.record;
        let cached = record
            .shared_budgets
            .0
            .get_or_init(|| Arc::from(record.budgets.as_slice()));
        if **cached == *record.budgets {
            cached.clone()
        } else {
            Arc::from(record.budgets.as_slice())
        }
    }

    /// The scopes the key's spend is counted under: the key, then its
    /// user, team and org when it has them. Made once per key record.
    pub fn spend_scopes(&self) -> Arc<[BudgetScope]> {
        if let Some(t) = &self.tenants {
            return t.spend_scopes.clone();
        }
        let record = &*self.record;
        let cached = record
            .spend_scopes
            .0
            .get_or_init(|| scopes_of(record, record.org.as_ref()).into());
        if same_scopes(cached, record) {
            cached.clone()
        } else {
            scopes_of(record, record.org.as_ref()).into()
        }
    }

    /// The models the key may use (empty: all).
    pub fn allowed_models(&self) -> &[String] {
        &self.record.allowed_models
    }

    /// When the key expires.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.record.expires_at
    }

    /// Free-form metadata.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.record.metadata
    }

    /// The whole record.
    pub fn record(&self) -> &KeyRecord {
        &self.record
    }
}

/// The spend scopes of `record`, under `org` (the key's, or its team's).
fn scopes_of(record: &KeyRecord, org: Option<&String>) -> Vec<BudgetScope> {
    let mut scopes = Vec::with_capacity(4);
    scopes.push(BudgetScope::Key(record.id.clone()));
    if let Some(user) = &record.user {
        scopes.push(BudgetScope::User(user.clone()));
    }
    if let Some(team) = &record.team {
        scopes.push(BudgetScope::Team(team.clone()));
    }
    if let Some(org) = org {
        scopes.push(BudgetScope::Org(org.clone()));
    }
    scopes
}

/// Whether `scopes` are the spend scopes of `record`, compared without
/// building them.
fn same_scopes(scopes: &[BudgetScope], record: &KeyRecord) -> bool {
    let mut it = scopes.iter();
    let mut next_is = |want: Option<&String>, make: fn(&String, &BudgetScope) -> bool| match want {
        None => true,
        Some(id) => it.next().is_some_and(|scope| make(id, scope)),
    };
    next_is(
        Some(&record.id),
        |id, s| matches!(s, BudgetScope::Key(x) if x == id),
    ) && next_is(
        record.user.as_ref(),
        |id, s| matches!(s, BudgetScope::User(x) if x == id),
    ) && next_is(
        record.team.as_ref(),
        |id, s| matches!(s, BudgetScope::Team(x) if x == id),
    ) && next_is(
        record.org.as_ref(),
        |id, s| matches!(s, BudgetScope::Org(x) if x == id),
    ) && it.next().is_none()
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("key_id", &self.record.id)
            .field("name", &self.record.name)
            .field("user", &self.record.user)
            .field("team", &self.record.team)
            .field("org", &self.org())
            .field(
                "tenants",
                &self.tenants.as_ref().map(|t| t.tenants.iter().count()),
            )
            .finish_non_exhaustive()
    }
}
