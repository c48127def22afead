//! [`SqliteKeyStore`]: keys answered from memory, changed on disk first.

use std::fmt;
use std::sync::Arc;

use super::writer::{Job, KeyOp, KeyOutcome, Writer};
use crate::auth::{
    KeyAdmin, KeyHash, KeyRecord, KeyStore, PutMode, TenantAdmin, TenantKind, TenantRecord,
};
use crate::budget::BudgetScope;
use crate::store::StoreFuture;
use crate::store::memory::MemoryKeyStore;

/// A [`KeyStore`] and [`KeyAdmin`] whose records live in a SQLite file and
/// are answered from memory.
///
/// Made by [`SqliteStore::open`](super::SqliteStore::open), which loads
/// every record; clones share them.
///
/// - **Lookups** ([`lookup`](KeyStore::lookup), [`get`](KeyAdmin::get),
///   [`list`](KeyAdmin::list)) are answered from a [`MemoryKeyStore`]:
///   ready, no I/O on the request path.
/// - **Writes** ([`put`](KeyAdmin::put), [`delete`](KeyAdmin::delete)) are
///   committed to the file first, by the store's writer thread, then made
///   in memory, then answered: an admin API's 201 means the key is on disk.
///   A write the disk refuses is answered with
///   [`StoreError::Unavailable`](crate::store::StoreError::Unavailable) and
///   changes nothing.
///
/// The file holds each record in the crate's one JSON format for durable
/// stores, with the SHA-256 of its secrets (never a secret), and a table
/// of every secret hash (current and retired) to its key, which refuses a
/// secret that another key holds in the same transaction as the write.
///
/// Tenants (users, teams, orgs: [`TenantAdmin`]) live in a table of their
/// own, by scope, written and answered the same way.
#[derive(Clone)]
pub struct SqliteKeyStore {
    memory: MemoryKeyStore,
    writer: Arc<Writer>,
}

impl SqliteKeyStore {
    pub(super) fn new(memory: MemoryKeyStore, writer: Arc<Writer>) -> Self {
        SqliteKeyStore { memory, writer }
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.memory.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.memory.is_empty()
    }

    fn write(&self, op: KeyOp) -> StoreFuture<KeyOutcome> {
        let writer = self.writer.clone();
        // The writer thread does the whole write (file, then memory), so a
        // caller that stops waiting cannot leave the two apart.
        StoreFuture::pending(async move { writer.acked(|done| Job::Key { op, done }).await })
    }
}

impl KeyStore for SqliteKeyStore {
    fn lookup(&self, hash: &KeyHash) -> StoreFuture<Option<Arc<KeyRecord>>> {
        self.memory.lookup(hash)
    }

    fn tenant(&self, scope: &BudgetScope) -> StoreFuture<Option<Arc<TenantRecord>>> {
        self.memory.tenant(scope)
    }
}

/// Tenants, as keys: answered from memory, written to the file first (the
/// `tenants` table), through the same writer.
impl TenantAdmin for SqliteKeyStore {
    fn get_tenant(&self, scope: &BudgetScope) -> StoreFuture<Option<Arc<TenantRecord>>> {
        self.memory.tenant(scope)
    }

    fn list_tenants(
        &self,
        kind: TenantKind,
        after: Option<&str>,
        limit: usize,
    ) -> StoreFuture<Vec<Arc<TenantRecord>>> {
        TenantAdmin::list_tenants(&self.memory, kind, after, limit)
    }

    fn put_tenant(
        &self,
        record: TenantRecord,
        mode: PutMode,
    ) -> StoreFuture<Option<Arc<TenantRecord>>> {
        self.write(KeyOp::PutTenant(Box::new(record), mode))
            .map(|outcome| match outcome {
                KeyOutcome::PutTenant(previous) => previous,
                _ => None,
            })
    }

    fn delete_tenant(&self, scope: &BudgetScope) -> StoreFuture<bool> {
        self.write(KeyOp::DeleteTenant(scope.clone()))
            .map(|outcome| matches!(outcome, KeyOutcome::Deleted(true)))
    }
}

impl KeyAdmin for SqliteKeyStore {
    fn get(&self, id: &str) -> StoreFuture<Option<Arc<KeyRecord>>> {
        KeyAdmin::get(&self.memory, id)
    }

    fn list(&self, after: Option<&str>, limit: usize) -> StoreFuture<Vec<Arc<KeyRecord>>> {
        KeyAdmin::list(&self.memory, after, limit)
    }

    fn put(&self, record: KeyRecord, mode: PutMode) -> StoreFuture<Option<Arc<KeyRecord>>> {
        self.write(KeyOp::Put(Box::new(record), mode))
            .map(|outcome| match outcome {
                KeyOutcome::Put(previous) => previous,
                KeyOutcome::Deleted(_) | KeyOutcome::PutTenant(_) => None,
            })
    }

    fn delete(&self, id: &str) -> StoreFuture<bool> {
        self.write(KeyOp::Delete(id.to_owned()))
            .map(|outcome| matches!(outcome, KeyOutcome::Deleted(true)))
    }
}

impl fmt::Debug for SqliteKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteKeyStore")
            .field("path", &self.writer.path())
            .field("keys", &self.memory.len())
            .finish()
    }
}
