//! Configuration entries are grants, not state: [`KeyEntry::grant`] (see
//! the [`auth`](crate::auth#configuration-entries-are-grants) module docs).
//!
//! Were the file's values written over the store's at every start, a
//! restart would undo each change made at run time: a key revoked because
//! it leaked would work again, a rotated secret would be reverted. So a
//! store keeps with each record the entry it was last granted from, and
//! the next grant applies only the file's edits since. Counters, spend and
//! balances are the ledger's and never change here.

use std::sync::Arc;

use super::entry::shorthand;
use super::{InvalidKeyEntry, KeyEntry, KeyRecord};

/// What a configuration entry does to the store's record of its key (or,
/// `Grant<TenantRecord>`, of its tenant: [`TenantEntry::grant`](super::TenantEntry::grant)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "made once per configured key at start-up and reload, and matched at once"
)]
pub enum Grant<R = KeyRecord> {
    /// Nothing changed in the file since the record was last granted.
    Unchanged,
    /// Store this record (new, or the stored one with the file's changes).
    Put(R),
}

impl KeyEntry {
    /// What this entry does to `existing`, the store's record of its key
    /// (`None`: the store has none yet, and the entry creates it).
    ///
    /// Each group of fields is applied when the file changed it since the
    /// entry `existing` was last granted from (or always, for a record an
    /// admin API made, which has none): the secret; `created_at`;
    /// `expires_at`; `revoked`; `disabled`; `name`; `models`; the rate
    /// limits and concurrency; the budget and balance fields; `user`,
    /// `team` and `org` together; `metadata`. The returned record remembers this entry,
    /// its secret as a hash.
    ///
    /// ```
    /// use tollgate::auth::{Grant, KeyEntry, KeyHash};
    ///
    /// let entry: KeyEntry = serde_json::from_str(r#"{"id":"a","secret":"sk-a","requests_per_minute":60}"#)?;
    /// let Grant::Put(mut record) = entry.grant(None)? else { unreachable!() };
    /// assert_eq!(record.secret_hash, KeyHash::of("sk-a"));
    ///
    /// // Revoked at run time (an admin API), then the gateway restarts:
    /// record.revoked = true;
    /// assert!(matches!(entry.grant(Some(&record))?, Grant::Unchanged));
    ///
    /// // The file raises the limit: that change is applied, the revocation kept.
    /// let raised: KeyEntry = serde_json::from_str(r#"{"id":"a","secret":"sk-a","requests_per_minute":90}"#)?;
    /// let Grant::Put(updated) = raised.grant(Some(&record))? else { unreachable!() };
    /// assert!(updated.revoked);
    /// assert_eq!(updated.rate_limits[0].amount, 90);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn grant(&self, existing: Option<&KeyRecord>) -> Result<Grant, InvalidKeyEntry> {
        let fresh = self.clone().into_record()?;
        let entry = Arc::new(self.hashed());
        // A new record is the fresh one, granted from no entry: it takes
        // every group of fields.
        let existing = existing.unwrap_or(&fresh);
        let last = existing.config_entry.as_deref();
        let changed =
            |same: fn(&KeyEntry, &KeyEntry) -> bool| last.is_none_or(|l| !same(l, &entry));
        let mut record = existing.clone();
        if changed(|a, b| a.secret_sha256 == b.secret_sha256) {
            record.secret_hash = fresh.secret_hash;
            record.retired.retain(|r| r.hash != fresh.secret_hash);
        }
        if self.created_at.is_some() && changed(|a, b| a.created_at == b.created_at) {
            record.created_at = fresh.created_at;
        }
        if changed(|a, b| a.expires_at == b.expires_at) {
            record.expires_at = fresh.expires_at;
        }
        if changed(|a, b| a.revoked == b.revoked) {
            record.revoked = fresh.revoked;
        }
        if changed(|a, b| a.disabled == b.disabled) {
            record.disabled = fresh.disabled;
        }
        if changed(|a, b| a.name == b.name) {
            record.name = fresh.name.clone();
        }
        if changed(|a, b| a.models == b.models) {
            record.allowed_models = fresh.allowed_models.clone();
        }
        if changed(|a, b| {
            shorthand!(a) == shorthand!(b)
                && a.limits == b.limits
                && a.model_limits == b.model_limits
                && a.max_concurrent == b.max_concurrent
        }) {
            record.rate_limits = fresh.rate_limits.clone();
            record.model_limits = fresh.model_limits.clone();
            record.max_concurrent = fresh.max_concurrent;
        }
        if changed(|a, b| {
            (&a.budget_usd, &a.budget_period, &a.balance_usd)
                == (&b.budget_usd, &b.budget_period, &b.balance_usd)
        }) {
            record.budgets = fresh.budgets.clone();
        }
        if changed(|a, b| (&a.user, &a.team, &a.org) == (&b.user, &b.team, &b.org)) {
            record.user = fresh.user.clone();
            record.team = fresh.team.clone();
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
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::auth::KeyHash;

    fn entry(json: &str) -> KeyEntry {
        serde_json::from_str(json).unwrap()
    }

    /// The grant of the entry `json` over `existing`.
    fn grant(json: &str, existing: Option<&KeyRecord>) -> Grant {
        entry(json).grant(existing).unwrap()
    }

    fn put(grant: Grant) -> KeyRecord {
        match grant {
            Grant::Put(record) => record,
            Grant::Unchanged => panic!("expected a change"),
        }
    }

    #[test]
    fn a_new_entry_creates_its_key_and_remembers_the_entry_without_its_secret() {
        let record = put(grant(r#"{"id":"a","secret":"sk-a"}"#, None));
        let kept = record.config_entry.as_deref().unwrap();
        assert_eq!(kept.secret, None);
        assert_eq!(
            kept.secret_sha256.as_deref(),
            Some(KeyHash::of("sk-a").to_hex().as_str())
        );
        let same = grant(r#"{"id":"a","secret":"sk-a"}"#, Some(&record));
        assert_eq!(same, Grant::Unchanged);
        // The same secret given as its hash changes nothing either.
        let hashed = format!(
            r#"{{"id":"a","secret_sha256":"{}"}}"#,
            KeyHash::of("sk-a").to_hex()
        );
        assert_eq!(grant(&hashed, Some(&record)), Grant::Unchanged);
    }

    #[test]
    fn run_time_changes_survive_until_the_file_changes_the_same_field() {
        let e = entry(r#"{"id":"a","secret":"sk-a","models":["m"]}"#);
        let mut record = put(e.grant(None).unwrap());
        // An admin rotates the secret and revokes nothing.
        record.rotate(
            KeyHash::of("sk-rotated"),
            UNIX_EPOCH + Duration::from_secs(4_000_000_000),
        );
        record.allowed_models = vec!["other".into()];
        assert_eq!(e.grant(Some(&record)).unwrap(), Grant::Unchanged);
        // The file now revokes the key: only that is applied.
        let revoked = entry(r#"{"id":"a","secret":"sk-a","models":["m"],"revoked":true}"#);
        let record = put(revoked.grant(Some(&record)).unwrap());
        assert!(record.revoked);
        assert_eq!(record.secret_hash, KeyHash::of("sk-rotated"));
        assert_eq!(record.allowed_models, ["other"]);
        // The file's new secret replaces the rotated one.
        let renewed = entry(r#"{"id":"a","secret":"sk-b","models":["m"],"revoked":true}"#);
        let record = put(renewed.grant(Some(&record)).unwrap());
        assert_eq!(record.secret_hash, KeyHash::of("sk-b"));
    }

    #[test]
    fn a_key_made_at_run_time_takes_the_whole_entry() {
        let mut record = KeyRecord::new("a", KeyHash::of("sk-a"));
        record.revoked = true;
        let record = put(grant(
            r#"{"id":"a","secret":"sk-a","budget_usd":5}"#,
            Some(&record),
        ));
        assert!(!record.revoked);
        assert_eq!(record.budgets.len(), 1);
    }

    #[test]
    fn an_expired_key_is_loaded_not_refused() {
        let expired = r#"{"id":"a","secret":"sk-a","expires_at":"2020-01-01T00:00:00Z"}"#;
        let record = put(grant(expired, None));
        assert!(record.expires_at.unwrap() < std::time::SystemTime::now());
        // Two dates of the file that contradict each other are still an error.
        let both = entry(
            r#"{"id":"a","secret":"sk-a","created_at":"2021-01-01T00:00:00Z","expires_at":"2020-01-01T00:00:00Z"}"#,
        );
        assert!(both.grant(None).is_err());
    }
}
