//! One key as configuration gives it: [`KeyEntry`], shared by key files and
//! the gateway's `[[keys]]` table.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde::{Serialize, Serializer};

use super::{KeyHash, KeyRecord};
use crate::budget::{BudgetScope, Money};
use crate::rate_limit::ModelLimits;

mod budgets;
mod limits;
mod tenant;
pub(crate) use self::budgets::{budget_fields, budgets_of};
pub(crate) use self::limits::shorthand;
pub use self::limits::{LimitEntry, ModelLimitEntry};
use self::limits::{entries_of, limits_of};
pub use self::tenant::TenantEntry;
use crate::time::{format_rfc3339, parse_rfc3339};

/// One key in a key file or a gateway's configuration, before validation.
///
/// Deserialize it from any serde format (unknown fields are refused, and a
/// bad value's error names its field), then turn it into a [`KeyRecord`]
/// with [`KeyEntry::into_record`]. Embed `Vec<KeyEntry>` in your own
/// configuration to share the key file format; [`KeyFile`](super::KeyFile)
/// checks a list of entries for duplicates.
///
/// | field | type | meaning |
/// |---|---|---|
/// | `id` | string, required | stable id, in logs and limit/budget keys |
/// | `name` | string | display name |
/// | `secret` | string | the key in plaintext (development only; hashed at load), or `"sha256:<hex>"` |
/// | `secret_sha256` | string | the key's SHA-256, 64 hex digits (exactly one of `secret`, `secret_sha256`) |
/// | `created_at` | RFC 3339 | when the key was minted (default: load time) |
/// | `expires_at` | RFC 3339 | when the key stops working |
/// | `revoked` | bool | refuse with 401 `revoked_api_key` |
/// | `disabled` | bool | refuse with 403 `account_disabled` |
/// | `models` | list of strings | allowed models, exact or `*` globs (empty: all) |
/// | `requests_per_second`, `_minute`, `_hour`, `_day` | integer | request rate limits (sliding windows) |
/// | `tokens_per_minute`, `_hour`, `_day` | integer | token rate limits (sliding windows) |
/// | `limits` | list of tables | rate limits in the general form: `amount`, `measure` (`requests` or `tokens`), `window` (`"90s"`, `"1h"`, `"1d"`, …), `algorithm` (`sliding`, the default, `gcra` or `fixed`), `burst` (GCRA only) |
/// | `model_limits` | list of tables | the key's own limits per model: `model` (exact or `*` glob) and the fields above (`requests_per_minute`, …, `limits`, `max_concurrent`) |
/// | `max_concurrent` | integer | requests in flight |
/// | `budget_usd` | number or string | spend limit per `budget_period` |
/// | `budget_period` | `daily`, `weekly`, `monthly` (default), `never` | when the spend resets |
/// | `balance_usd` | number or string | prepaid opening balance |
/// | `user`, `team`, `org` | string | who the key belongs to: at most one user and one team (whose records, [`TenantEntry`], hold their shared limits and budgets); `org` only for a key without a team record (a team's org is its record's) |
/// | `metadata` | table of strings | free-form |
///
/// ```
/// use tollgate::auth::{KeyEntry, KeyHash};
///
/// let entry: KeyEntry = serde_json::from_str(
///     r#"{"id": "alice", "secret": "sk-dev-alice", "models": ["gpt-4o*"], "budget_usd": 50}"#,
/// )?;
/// let record = entry.into_record()?;
/// assert_eq!(record.secret_hash, KeyHash::of("sk-dev-alice"));
/// assert!(record.allows_model("gpt-4o-mini"));
/// assert_eq!(record.budgets[0].id(), "key:alice");
///
/// let err = serde_json::from_str::<KeyEntry>(r#"{"id": "bob", "revoked": "yes"}"#).unwrap_err();
/// assert!(err.to_string().contains("`revoked`"), "{err}");
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct KeyEntry {
    /// Stable id.
    pub id: String,
    /// Display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The secret in plaintext, or `sha256:<hex>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The secret's SHA-256 in hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_sha256: Option<String>,
    /// RFC 3339 creation time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// RFC 3339 expiry time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Revoked.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
    /// Disabled (blocked account).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Allowed models.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
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
    /// The key's own limits per model.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub model_limits: Vec<ModelLimitEntry>,
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
    /// User.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Team.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Organisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Free-form metadata.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// A [`KeyEntry`] (or a [`TenantEntry`]) whose values do not make a valid
/// record. The message names the entry, its kind and the field, and never
/// repeats a secret: "key `alice`: `budget_period` must be one of …",
/// "team `research`: …".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} `{id}`: `{field}` {reason}")]
pub struct InvalidKeyEntry {
    kind: &'static str,
    id: String,
    field: &'static str,
    reason: Cow<'static, str>,
}

impl InvalidKeyEntry {
    pub(crate) fn new(id: &str, field: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        InvalidKeyEntry {
            kind: "key",
            id: id.to_owned(),
            field,
            reason: reason.into(),
        }
    }

    /// The same error, of an entry of `kind` (`user`, `team`, `org`).
    pub(crate) fn of(mut self, kind: &'static str) -> Self {
        self.kind = kind;
        self
    }

    /// The entry's kind: `key`, `user`, `team` or `org`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The entry's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The field at fault.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl KeyEntry {
    /// The longest accepted id, in bytes.
    pub const MAX_ID_LEN: usize = 256;

    /// Validates the entry and builds its record: secrets hashed, dates
    /// parsed, limits and budgets (scoped to this key) built.
    pub fn into_record(self) -> Result<KeyRecord, InvalidKeyEntry> {
        let id = self.id;
        let bad = |field, reason: &'static str| InvalidKeyEntry::new(&id, field, reason);
        if let Some(reason) = id_problem(&id) {
            return Err(bad("id", reason));
        }
        let hash = match (self.secret.as_deref(), self.secret_sha256.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(bad("secret", "and `secret_sha256` are both set: keep one"));
            }
            (None, None) => {
                return Err(bad("secret", "is missing: set `secret` or `secret_sha256`"));
            }
            (Some(secret), None) => match secret.strip_prefix("sha256:") {
                Some(hex) => KeyHash::from_hex(hex)
                    .map_err(|_| bad("secret", "must be 64 hex digits after `sha256:`"))?,
                None if secret.trim().is_empty() => return Err(bad("secret", "is empty")),
                None if secret.trim() != secret => {
                    return Err(bad("secret", "has leading or trailing whitespace"));
                }
                None => KeyHash::of(secret),
            },
            (None, Some(hex)) => KeyHash::from_hex(hex)
                .map_err(|_| bad("secret_sha256", "must be 64 hex digits (a SHA-256)"))?,
        };
        let mut record = KeyRecord::new(id.clone(), hash);
        let time = |field, value: &str| {
            parse_rfc3339(value)
                .map(|since| UNIX_EPOCH + since)
                .ok_or_else(|| {
                    bad(
                        field,
                        "is not an RFC 3339 date-time like 2026-01-31T00:00:00Z",
                    )
                })
        };
        if let Some(at) = &self.created_at {
            record.created_at = time("created_at", at)?;
        }
        if let Some(at) = &self.expires_at {
            let at = time("expires_at", at)?;
            // Only two dates the file gives can contradict each other: an
            // expiry in the past with no `created_at` is a key that has
            // expired (refused at request time), not a broken file.
            if self.created_at.is_some() && at <= record.created_at {
                return Err(bad("expires_at", "is not after `created_at`"));
            }
            record.expires_at = Some(at);
        }
        record.name = self.name;
        record.revoked = self.revoked;
        record.disabled = self.disabled;
        if self.models.iter().any(|m| m.trim().is_empty()) {
            return Err(bad("models", "contains an empty model name"));
        }
        record.allowed_models = self.models;
        let zero = |field| bad(field, AT_LEAST_ONE);
        record.rate_limits = limits_of(&id, &shorthand!(self), &self.limits, "")?;
        for entry in &self.model_limits {
            if entry.model.trim().is_empty() {
                return Err(bad("model_limits.model", "is empty"));
            }
            let limits = limits_of(&id, &shorthand!(entry), &entry.limits, "model_limits.")?;
            if entry.max_concurrent == Some(0) {
                return Err(zero("model_limits.max_concurrent"));
            }
            if limits.is_empty() && entry.max_concurrent.is_none() {
                return Err(bad("model_limits", "sets no limit for its model"));
            }
            let mut model = ModelLimits::new(entry.model.clone(), limits);
            model.max_concurrent = entry.max_concurrent;
            record.model_limits.push(model);
        }
        if self.max_concurrent == Some(0) {
            return Err(zero("max_concurrent"));
        }
        record.max_concurrent = self.max_concurrent;
        record.budgets = budgets_of(
            &id,
            BudgetScope::Key(id.clone()),
            self.budget_usd,
            self.budget_period.as_deref(),
            self.balance_usd,
        )?;
        check_label(&id, "user", self.user.as_deref())?;
        check_label(&id, "team", self.team.as_deref())?;
        check_label(&id, "org", self.org.as_deref())?;
        record.user = self.user;
        record.team = self.team;
        record.org = self.org;
        record.metadata = self.metadata;
        Ok(record)
    }

    /// The same entry with a plaintext `secret` replaced by its
    /// `secret_sha256`: what a store may keep of it.
    ///
    /// (`user`, `team` and `org` name tenants: see [`TenantEntry`].)
    pub fn hashed(&self) -> KeyEntry {
        let mut entry = self.clone();
        if let Some(secret) = entry.secret.take() {
            entry.secret_sha256 = Some(match secret.strip_prefix("sha256:") {
                Some(hex) => hex.to_ascii_lowercase(),
                None => KeyHash::of(secret.as_bytes()).to_hex(),
            });
        }
        entry
    }

    /// The entry describing `record`, its secret given as `secret_sha256`:
    /// what a key file holds for a minted key. Budgets of other scopes and
    /// limits of shared scopes have no entry field and are left out.
    pub fn from_record(record: &KeyRecord) -> KeyEntry {
        let since_epoch = |at: SystemTime| at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let (shorthand, limits) = entries_of(&record.rate_limits);
        let mut entry = KeyEntry {
            id: record.id.clone(),
            name: record.name.clone(),
            secret_sha256: Some(record.secret_hash.to_hex()),
            created_at: Some(format_rfc3339(since_epoch(record.created_at))),
            expires_at: record.expires_at.map(|at| format_rfc3339(since_epoch(at))),
            revoked: record.revoked,
            disabled: record.disabled,
            models: record.allowed_models.clone(),
            limits,
            model_limits: record
                .model_limits
                .iter()
                .map(|m| {
                    let (s, limits) = entries_of(&m.limits);
                    let mut entry = ModelLimitEntry {
                        model: m.model.clone(),
                        limits,
                        max_concurrent: m.max_concurrent,
                        ..ModelLimitEntry::default()
                    };
                    shorthand!(entry) = s;
                    entry
                })
                .collect(),
            max_concurrent: record.max_concurrent,
            user: record.user.clone(),
            team: record.team.clone(),
            org: record.org.clone(),
            metadata: record.metadata.clone(),
            ..KeyEntry::default()
        };
        shorthand!(entry) = shorthand;
        (entry.budget_usd, entry.budget_period, entry.balance_usd) =
            budget_fields(&record.budgets, &BudgetScope::Key(record.id.clone()));
        entry
    }
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEntry")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_sha256", &self.secret_sha256)
            .finish_non_exhaustive()
    }
}

/// A tenant named by a key (`user`, `team`, `org`): an id as any other.
fn check_label(id: &str, field: &'static str, label: Option<&str>) -> Result<(), InvalidKeyEntry> {
    match label {
        Some(label) if id_problem(label).is_some() => Err(InvalidKeyEntry::new(
            id,
            field,
            "must be 1 to 256 bytes without whitespace or control characters",
        )),
        _ => Ok(()),
    }
}

/// What is wrong with a zero limit of a key.
const AT_LEAST_ONE: &str = "must be at least 1 (set `disabled = true` to block a key)";

/// What is wrong with `id` as the id of a key or a tenant, if anything.
pub(crate) fn id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() || id.len() > KeyEntry::MAX_ID_LEN {
        Some("must be 1 to 256 bytes long")
    } else if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("must not contain whitespace or control characters")
    } else {
        None
    }
}

/// A dollar amount as `"50.00"`: exact, where a float would not be.
fn ser_money<S: Serializer>(money: &Option<Money>, s: S) -> Result<S::Ok, S::Error> {
    money.map(Money::to_decimal).serialize(s)
}

/// `Deserialize` for an entry struct with these fields (each read with
/// [`value`], or the function after `with`): unknown and repeated fields
/// refused, `id` required, and each value's error naming its field, which
/// a derive does not do.
macro_rules! deserialize_entry {
    ($entry:ident, $expecting:literal, [$($field:ident $(with $read:path)?),* $(,)?]) => {
        impl<'de> Deserialize<'de> for $entry {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                const FIELDS: &[&str] = &[$(stringify!($field)),*];

                struct EntryVisitor;

                impl<'de> Visitor<'de> for EntryVisitor {
                    type Value = $entry;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }

                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<$entry, A::Error> {
                        let mut entry = $entry::default();
                        let mut seen = 0u32;
                        while let Some(key) = map.next_key::<String>()? {
                            let Some(index) = FIELDS.iter().position(|f| *f == key) else {
                                return Err(de::Error::unknown_field(&key, FIELDS));
                            };
                            let field = FIELDS[index];
                            if seen & (1 << index) != 0 {
                                return Err(de::Error::duplicate_field(field));
                            }
                            seen |= 1 << index;
                            match field {
                                $(stringify!($field) => {
                                    entry.$field = deserialize_entry!(@read $($read)?)(&mut map, field)?
                                })*
                                _ => unreachable!("FIELDS lists the fields matched"),
                            }
                        }
                        if seen & 1 == 0 {
                            return Err(de::Error::missing_field("id"));
                        }
                        Ok(entry)
                    }
                }

                deserializer.deserialize_struct(stringify!($entry), FIELDS, EntryVisitor)
            }
        }
    };
    (@read) => { value };
    (@read $read:path) => { $read };
}
use deserialize_entry;

deserialize_entry!(
    KeyEntry,
    "a key entry with an `id` and a `secret` or `secret_sha256`",
    [
        id,
        name,
        secret,
        secret_sha256,
        created_at,
        expires_at,
        revoked,
        disabled,
        models,
        requests_per_second,
        requests_per_minute,
        requests_per_hour,
        requests_per_day,
        tokens_per_minute,
        tokens_per_hour,
        tokens_per_day,
        limits,
        model_limits,
        max_concurrent,
        budget_usd with dollars,
        budget_period,
        balance_usd with dollars,
        team,
        org,
        metadata,
        user,
    ]
);

/// The next value, its error naming `field`.
fn value<'de, A, T>(map: &mut A, field: &'static str) -> Result<T, A::Error>
where
    A: MapAccess<'de>,
    T: Deserialize<'de>,
{
    map.next_value()
        .map_err(|e| de::Error::custom(format_args!("field `{field}`: {}", strip_position(&e))))
}

/// An error's message without serde_json's " at line L column C" (which
/// it would append again to ours, and which a key file reports apart).
pub(crate) fn strip_position(error: &impl fmt::Display) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at)
            if text[at + 9..]
                .split(" column ")
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) =>
        {
            text[..at].to_owned()
        }
        _ => text,
    }
}

/// The next value, a dollar amount (see [`Dollars`]), its error naming
/// `field`.
fn dollars<'de, A: MapAccess<'de>>(
    map: &mut A,
    field: &'static str,
) -> Result<Option<Money>, A::Error> {
    Ok(value::<_, Option<Dollars>>(map, field)?.map(|d| d.0))
}

/// A dollar amount given as a number (`50`, `0.25`) or a string (`"50.00"`,
/// exact to the nano-dollar).
struct Dollars(Money);

impl<'de> Deserialize<'de> for Dollars {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DollarsVisitor;

        impl Visitor<'_> for DollarsVisitor {
            type Value = Dollars;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a dollar amount like 50, 0.25 or \"12.50\"")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dollars, E> {
                let v = i64::try_from(v).map_err(|_| E::custom("the amount is too large"))?;
                self.visit_i64(v)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dollars, E> {
                v.checked_mul(1_000_000_000)
                    .map(|nanos| Dollars(Money::from_nanos(nanos)))
                    .ok_or_else(|| E::custom("the amount is too large"))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dollars, E> {
                if !v.is_finite() || v.abs() > 9.0e9 {
                    return Err(E::custom("the amount is not a finite number below 9e9"));
                }
                Ok(Dollars(Money::from_usd_f64(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dollars, E> {
                v.parse()
                    .map(Dollars)
                    .map_err(|_| E::custom("expected a dollar amount like \"12.50\""))
            }
        }

        deserializer.deserialize_any(DollarsVisitor)
    }
}

#[cfg(test)]
mod tests;
