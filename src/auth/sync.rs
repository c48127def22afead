//! A configuration's keys and tenants applied to a store as grants:
//! [`sync_keys`] and [`sync_tenants`] (see the
//! [`auth`](crate::auth#configuration-entries-are-grants) module docs).

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use super::{Grant, KeyAdmin, KeyEntry, PutMode, TenantAdmin, TenantEntry, TenantKind};
use crate::store::StoreError;

/// What one sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Synced {
    /// Records the store did not have.
    pub created: usize,
    /// Records the configuration changed.
    pub updated: usize,
    /// Entries that changed nothing.
    pub unchanged: usize,
    /// Records granted by an earlier configuration and no longer in it.
    pub deleted: usize,
    /// Entries that could not be applied (an invalid entry, a secret that
    /// another key holds): logged, never a reason to stop a start.
    pub skipped: usize,
}

/// How many records a sync reads per page while looking for deletions.
const PAGE: usize = 1000;

/// Applies `entries` (the configuration's `[[keys]]`) to `store` as grants,
/// and deletes the keys an earlier configuration granted that `entries` no
/// longer lists. One audit event (target `tollgate::audit`) per change.
///
/// A store failure stops the sync (the entries before it were applied); an
/// entry that cannot be stored is logged, counted in
/// [`skipped`](Synced::skipped) and passed over.
pub async fn sync_keys(store: &dyn KeyAdmin, entries: &[KeyEntry]) -> Result<Synced, StoreError> {
    let mut synced = Synced::default();
    for entry in entries {
        let existing = store.get(&entry.id).await?;
        let grant = entry.grant(existing.as_deref());
        let put = |record| store.put(record, PutMode::Upsert);
        synced
            .apply("key", &entry.id, existing.is_some(), grant, put)
            .await?;
    }
    let listed: HashSet<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    let mut after: Option<String> = None;
    loop {
        let page = store.list(after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for record in &page {
            if record.config_entry.is_some() && !listed.contains(record.id.as_str()) {
                store.delete(&record.id).await?;
                synced.deleted += 1;
                audit("key", "delete", &record.id);
            }
        }
    }
    Ok(synced)
}

/// Applies `entries` (the configuration's `[[users]]`, `[[teams]]` or
/// `[[orgs]]`, as `kind` says) to `store` as grants
/// ([`TenantEntry::grant`]), and deletes the tenants of `kind` an earlier
/// configuration granted that `entries` no longer lists. As
/// [`sync_keys`] otherwise.
pub async fn sync_tenants(
    store: &dyn TenantAdmin,
    kind: TenantKind,
    entries: &[TenantEntry],
) -> Result<Synced, StoreError> {
    let mut synced = Synced::default();
    for entry in entries {
        let existing = store.get_tenant(&kind.scope(entry.id.clone())).await?;
        let grant = entry.grant(kind, existing.as_deref());
        let put = |record| store.put_tenant(record, PutMode::Upsert);
        synced
            .apply(kind.name(), &entry.id, existing.is_some(), grant, put)
            .await?;
    }
    let listed: HashSet<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    let mut after: Option<String> = None;
    loop {
        let page = store.list_tenants(kind, after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for record in &page {
            if record.config_entry.is_some() && !listed.contains(record.id.as_str()) {
                store.delete_tenant(&record.scope()).await?;
                synced.deleted += 1;
                audit(kind.name(), "delete", &record.id);
            }
        }
    }
    Ok(synced)
}

impl Synced {
    /// Stores one entry's grant and counts what it did.
    async fn apply<R, F>(
        &mut self,
        what: &'static str,
        id: &str,
        existed: bool,
        grant: Result<Grant<R>, super::InvalidKeyEntry>,
        put: impl FnOnce(R) -> F,
    ) -> Result<(), StoreError>
    where
        F: Future<Output = Result<Option<Arc<R>>, StoreError>>,
    {
        let record = match grant {
            Ok(Grant::Put(record)) => record,
            Ok(Grant::Unchanged) => {
                self.unchanged += 1;
                return Ok(());
            }
            Err(error) => {
                tracing::error!(%what, %id, %error, "configuration entry not applied");
                self.skipped += 1;
                return Ok(());
            }
        };
        match put(record).await {
            Ok(_) if existed => {
                self.updated += 1;
                audit(what, "update", id);
            }
            Ok(_) => {
                self.created += 1;
                audit(what, "create", id);
            }
            Err(StoreError::Conflict(message)) => {
                tracing::error!(%what, %id, %message, "configuration entry not applied");
                self.skipped += 1;
            }
            Err(error) => return Err(error),
        }
        Ok(())
    }
}

fn audit(what: &'static str, action: &'static str, id: &str) {
    tracing::info!(target: "tollgate::audit", admin = "config", %what, action, id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{KeyHash, KeyRecord, TenantRecord};
    use crate::budget::{BudgetMode, Charge, Money, ReserveOutcome, ReservePolicy};
    use crate::store::memory::MemoryKeyStore;

    fn tenant(json: &str) -> TenantEntry {
        serde_json::from_str(json).unwrap()
    }

    fn key(json: &str) -> KeyEntry {
        serde_json::from_str(json).unwrap()
    }

    async fn sync_teams(store: &MemoryKeyStore, entries: &[TenantEntry]) -> Synced {
        sync_tenants(store, TenantKind::Team, entries)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn tenants_are_created_changed_by_the_file_only_and_deleted_when_dropped() {
        let store = MemoryKeyStore::new();
        let teams = [
            tenant(r#"{"id":"research","org":"acme","requests_per_minute":60}"#),
            tenant(r#"{"id":"ops"}"#),
        ];
        let synced = sync_teams(&store, &teams).await;
        assert_eq!((synced.created, synced.updated), (2, 0));

        // Disabled at run time; the same file again keeps that.
        let scope = TenantKind::Team.scope("research");
        let mut research = (*store.get_tenant(&scope).unwrap()).clone();
        research.disabled = true;
        store.insert_tenant(research).unwrap();
        let synced = sync_teams(&store, &teams).await;
        assert_eq!((synced.unchanged, synced.updated), (2, 0));
        assert!(store.get_tenant(&scope).unwrap().disabled);

        // The file raises the limit: applied, the run-time change kept.
        let raised = [tenant(
            r#"{"id":"research","org":"acme","requests_per_minute":90}"#,
        )];
        let synced = sync_teams(&store, &raised).await;
        assert_eq!((synced.updated, synced.deleted), (1, 1));
        let research = store.get_tenant(&scope).unwrap();
        assert!(research.disabled);
        assert_eq!(research.rate_limits[0].amount, 90);
        assert!(store.get_tenant(&TenantKind::Team.scope("ops")).is_none());

        // A team an admin made is not the configuration's to delete, and
        // other kinds are untouched.
        store
            .insert_tenant(TenantRecord::new(TenantKind::Team, "adhoc"))
            .unwrap();
        store
            .insert_tenant(TenantRecord::new(TenantKind::Org, "acme"))
            .unwrap();
        let synced = sync_teams(&store, &[]).await;
        assert_eq!(synced.deleted, 1);
        assert!(store.get_tenant(&TenantKind::Team.scope("adhoc")).is_some());
        assert!(store.get_tenant(&TenantKind::Org.scope("acme")).is_some());
    }

    #[tokio::test]
    async fn an_invalid_entry_is_skipped_and_the_others_applied() {
        let store = MemoryKeyStore::new();
        let users = [
            tenant(r#"{"id":"ann","org":"acme"}"#),
            tenant(r#"{"id":"bob"}"#),
        ];
        let synced = sync_tenants(&store, TenantKind::User, &users)
            .await
            .unwrap();
        assert_eq!((synced.created, synced.skipped), (1, 1));
        assert!(store.get_tenant(&TenantKind::User.scope("bob")).is_some());
    }

    #[tokio::test]
    async fn a_balance_changed_in_the_file_changes_the_spec_not_the_ledger() {
        use crate::budget::Ledger;
        use crate::store::memory::MemoryLedger;

        let store = MemoryKeyStore::new();
        let ledger = MemoryLedger::new();
        let opened = [tenant(r#"{"id":"research","balance_usd":10}"#)];
        sync_teams(&store, &opened).await;
        let scope = TenantKind::Team.scope("research");
        let spec = store.get_tenant(&scope).unwrap().budgets[0].clone();
        assert_eq!(spec.mode, BudgetMode::Balance);
        // $4 spent from the balance.
        let ReserveOutcome::Reserved { reservation, .. } = ledger
            .reserve(
                &Arc::from([spec.clone()]),
                Money::from_usd(4),
                ReservePolicy::Strict,
            )
            .await
            .unwrap()
        else {
            panic!("$4 of $10 is reserved")
        };
        let charge = Charge::cost(Money::from_usd(4));
        ledger.settle(&reservation, &charge).await.unwrap();
        // The file now says 20: the spec follows, the ledger keeps the
        // balance it opened (10 - 4), never refilled by a configuration.
        let raised = [tenant(r#"{"id":"research","balance_usd":20}"#)];
        let synced = sync_teams(&store, &raised).await;
        assert_eq!(synced.updated, 1);
        let spec = store.get_tenant(&scope).unwrap().budgets[0].clone();
        let status = ledger.read(&spec).await.unwrap();
        assert_eq!(status.remaining(), Money::from_usd(6));
    }

    #[tokio::test]
    async fn keys_sync_like_tenants() {
        let store = MemoryKeyStore::new();
        let keys = [
            key(r#"{"id":"a","secret":"sk-a","team":"research"}"#),
            key(r#"{"id":"b","secret":"sk-b"}"#),
        ];
        let synced = sync_keys(&store, &keys).await.unwrap();
        assert_eq!(synced.created, 2);
        store.revoke("a");
        let synced = sync_keys(&store, &keys[..1]).await.unwrap();
        assert_eq!((synced.unchanged, synced.deleted), (1, 1));
        let a = store.get_by_hash(&KeyHash::of("sk-a")).unwrap();
        assert!(a.revoked);
        assert_eq!(a.team.as_deref(), Some("research"));
        // A second key with the same secret is skipped, not a failure.
        store
            .insert(KeyRecord::new("made", KeyHash::of("sk-c")))
            .unwrap();
        let clash = [key(r#"{"id":"c","secret":"sk-c"}"#)];
        let synced = sync_keys(&store, &clash).await.unwrap();
        assert_eq!((synced.skipped, synced.deleted), (1, 1));
    }
}
