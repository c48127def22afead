//! The tenants of a [`MemoryKeyStore`]: users, teams and orgs by scope.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};

use super::MemoryKeyStore;
use crate::auth::{InvalidTenant, PutMode, TenantAdmin, TenantKind, TenantRecord};
use crate::budget::BudgetScope;
use crate::store::{StoreError, StoreFuture, read, write};

/// Tenant records by scope, in (kind, id) order for paged listing. Read on
/// every request of a key that names a tenant: one read lock, one map
/// read; written rarely, by an admin or a configuration load.
pub(super) type TenantMap = RwLock<BTreeMap<BudgetScope, Arc<TenantRecord>>>;

/// Tenants.
impl MemoryKeyStore {
    /// Adds the tenant `record` (a user, team or org), or replaces the one
    /// of the same scope (returned). Refused if it breaks the rules of the
    /// records ([`TenantRecord::check`]).
    pub fn insert_tenant(
        &self,
        record: TenantRecord,
    ) -> Result<Option<Arc<TenantRecord>>, InvalidTenant> {
        record.check()?;
        let scope = record.scope();
        Ok(write(&self.inner.tenants).insert(scope, Arc::new(record)))
    }

    /// Removes the tenant `scope`: keys naming it are no longer charged to
    /// its budgets nor counted against its limits.
    pub fn remove_tenant(&self, scope: &BudgetScope) -> Option<Arc<TenantRecord>> {
        write(&self.inner.tenants).remove(scope)
    }

    /// The record of the tenant `scope` (none for a key's scope: tenants
    /// are stored under their own).
    pub fn get_tenant(&self, scope: &BudgetScope) -> Option<Arc<TenantRecord>> {
        read(&self.inner.tenants).get(scope).cloned()
    }

    /// Up to `limit` tenants of `kind` whose ids sort after `after`, in id
    /// order.
    pub fn list_tenants(
        &self,
        kind: TenantKind,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<Arc<TenantRecord>> {
        let from = match after {
            Some(after) => Bound::Excluded(kind.scope(after)),
            None => Bound::Included(kind.scope("")),
        };
        read(&self.inner.tenants)
            .range((from, Bound::Unbounded))
            .take_while(|(scope, _)| TenantKind::of(scope).is_some_and(|(k, _)| k == kind))
            .take(limit)
            .map(|(_, record)| record.clone())
            .collect()
    }

    /// The number of tenants.
    pub fn tenant_count(&self) -> usize {
        read(&self.inner.tenants).len()
    }
}

impl TenantAdmin for MemoryKeyStore {
    fn get_tenant(&self, scope: &BudgetScope) -> StoreFuture<Option<Arc<TenantRecord>>> {
        StoreFuture::ready(Ok(MemoryKeyStore::get_tenant(self, scope)))
    }

    fn list_tenants(
        &self,
        kind: TenantKind,
        after: Option<&str>,
        limit: usize,
    ) -> StoreFuture<Vec<Arc<TenantRecord>>> {
        StoreFuture::ready(Ok(MemoryKeyStore::list_tenants(self, kind, after, limit)))
    }

    /// The check and the write under one lock.
    fn put_tenant(
        &self,
        record: TenantRecord,
        mode: PutMode,
    ) -> StoreFuture<Option<Arc<TenantRecord>>> {
        if let Err(invalid) = record.check() {
            return StoreFuture::ready(Err(StoreError::Conflict(invalid.to_string())));
        }
        let scope = record.scope();
        let mut records = write(&self.inner.tenants);
        if mode == PutMode::Create && records.contains_key(&scope) {
            return StoreFuture::ready(Err(exists(&scope)));
        }
        StoreFuture::ready(Ok(records.insert(scope, Arc::new(record))))
    }

    fn delete_tenant(&self, scope: &BudgetScope) -> StoreFuture<bool> {
        StoreFuture::ready(Ok(self.remove_tenant(scope).is_some()))
    }
}

/// The conflict of a tenant created twice.
pub(crate) fn exists(scope: &BudgetScope) -> StoreError {
    StoreError::Conflict(format!(
        "a {} with the id `{}` already exists",
        scope.kind_name(),
        scope.name().escape_debug()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_one_kind_in_id_order_and_pages() {
        let map = MemoryKeyStore::new();
        for (kind, id) in [
            (TenantKind::Team, "b"),
            (TenantKind::User, "z"),
            (TenantKind::Team, "a"),
            (TenantKind::Org, "a"),
            (TenantKind::Team, "c"),
        ] {
            map.insert_tenant(TenantRecord::new(kind, id)).unwrap();
        }
        let ids = |v: Vec<Arc<TenantRecord>>| v.iter().map(|t| t.id.clone()).collect::<Vec<_>>();
        assert_eq!(
            ids(map.list_tenants(TenantKind::Team, None, 10)),
            ["a", "b", "c"]
        );
        assert_eq!(ids(map.list_tenants(TenantKind::Team, Some("a"), 1)), ["b"]);
        assert_eq!(ids(map.list_tenants(TenantKind::User, None, 10)), ["z"]);
        assert_eq!(ids(map.list_tenants(TenantKind::Org, None, 10)), ["a"]);
        let again = TenantRecord::new(TenantKind::Team, "a");
        assert!(
            TenantAdmin::put_tenant(&map, again, PutMode::Create)
                .take_ready()
                .unwrap()
                .is_err()
        );
        assert!(map.get_tenant(&BudgetScope::Key("a".into())).is_none());
        assert_eq!(map.tenant_count(), 5);
    }
}
