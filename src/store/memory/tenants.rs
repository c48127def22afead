//! The tenants of a [`MemoryKeyStore`](super::MemoryKeyStore): users, teams
//! and orgs by scope.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock};

use crate::auth::{InvalidTenant, PutMode, TenantKind, TenantRecord};
use crate::budget::BudgetScope;
use crate::store::StoreError;

/// Tenant records by scope, in (kind, id) order for paged listing. Read on
/// every request of a key that names a tenant: one read lock, one map
/// read; written rarely, by an admin or a configuration load.
#[derive(Default)]
pub(super) struct TenantMap {
    records: RwLock<BTreeMap<BudgetScope, Arc<TenantRecord>>>,
}

impl TenantMap {
    pub(super) fn get(&self, scope: &BudgetScope) -> Option<Arc<TenantRecord>> {
        if matches!(scope, BudgetScope::Key(_)) {
            return None;
        }
        self.records
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(scope)
            .cloned()
    }

    /// Stores `record` (checked), replacing the tenant of the same scope.
    pub(super) fn insert(
        &self,
        record: TenantRecord,
    ) -> Result<Option<Arc<TenantRecord>>, InvalidTenant> {
        record.check()?;
        let scope = record.scope();
        Ok(self
            .records
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(scope, Arc::new(record)))
    }

    /// [`TenantAdmin::put_tenant`](crate::auth::TenantAdmin::put_tenant):
    /// the check and the write under one lock.
    pub(super) fn put(
        &self,
        record: TenantRecord,
        mode: PutMode,
    ) -> Result<Option<Arc<TenantRecord>>, StoreError> {
        record
            .check()
            .map_err(|e| StoreError::Conflict(e.to_string()))?;
        let scope = record.scope();
        let mut records = self.records.write().unwrap_or_else(PoisonError::into_inner);
        if mode == PutMode::Create && records.contains_key(&scope) {
            return Err(exists(&scope));
        }
        Ok(records.insert(scope, Arc::new(record)))
    }

    pub(super) fn remove(&self, scope: &BudgetScope) -> Option<Arc<TenantRecord>> {
        self.records
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(scope)
    }

    pub(super) fn list(
        &self,
        kind: TenantKind,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<Arc<TenantRecord>> {
        let records = self.records.read().unwrap_or_else(PoisonError::into_inner);
        let from = match after {
            Some(after) => Bound::Excluded(kind.scope(after)),
            None => Bound::Included(kind.scope("")),
        };
        records
            .range((from, Bound::Unbounded))
            .take_while(|(scope, _)| TenantKind::of(scope).is_some_and(|(k, _)| k == kind))
            .take(limit)
            .map(|(_, record)| record.clone())
            .collect()
    }

    pub(super) fn len(&self) -> usize {
        self.records
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
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
        let map = TenantMap::default();
        for (kind, id) in [
            (TenantKind::Team, "b"),
            (TenantKind::User, "z"),
            (TenantKind::Team, "a"),
            (TenantKind::Org, "a"),
            (TenantKind::Team, "c"),
        ] {
            map.insert(TenantRecord::new(kind, id)).unwrap();
        }
        let ids = |v: Vec<Arc<TenantRecord>>| v.iter().map(|t| t.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(map.list(TenantKind::Team, None, 10)), ["a", "b", "c"]);
        assert_eq!(ids(map.list(TenantKind::Team, Some("a"), 1)), ["b"]);
        assert_eq!(ids(map.list(TenantKind::User, None, 10)), ["z"]);
        assert_eq!(ids(map.list(TenantKind::Org, None, 10)), ["a"]);
        assert!(
            map.put(TenantRecord::new(TenantKind::Team, "a"), PutMode::Create)
                .is_err()
        );
        assert!(map.get(&BudgetScope::Key("a".into())).is_none());
        assert_eq!(map.len(), 5);
    }
}
