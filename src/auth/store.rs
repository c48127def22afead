//! Where keys live: the [`KeyStore`] trait (the lookups every request
//! makes: its key, and its key's tenants), [`KeyAdmin`] (what an admin API
//! does with keys) and [`TenantAdmin`] (with users, teams and orgs).
//!
//! # Why tenants are looked up through the key store
//!
//! A key's tenants are found right after the key, on every request, and
//! change as rarely as keys do, through the same admin API: they need the
//! same cache, the same invalidation and the same failure policy, which a
//! key store already has. So [`KeyStore::tenant`] is a method of the key
//! store with a default that finds none (a store of keys alone still works,
//! unchanged), and [`AuthLayer`](super::AuthLayer) needs no second store.
//! The admin side is a trait of its own, [`TenantAdmin`], a [`KeyAdmin`]
//! with four more operations: an `Arc<dyn TenantAdmin>` is also a key admin
//! (the gateway keeps one handle), and stores of keys alone need not
//! pretend to hold tenants.

use std::sync::Arc;

use super::{KeyHash, KeyRecord, TenantKind, TenantRecord};
use crate::budget::BudgetScope;
use crate::store::StoreFuture;

/// What a lookup finds: the record, no record (an unknown key), or a store
/// that could not answer (the request is refused with 503: fail closed).
pub type LookupResult = Result<Option<Arc<KeyRecord>>, crate::store::StoreError>;

/// Finds key records by the SHA-256 of their secret.
///
/// The trait is dyn-compatible: `Arc<dyn KeyStore>` is a `KeyStore`, so a
/// gateway can choose its store at run time. [`MemoryKeyStore`] is the
/// in-process implementation.
///
/// A record is found by its current secret and by the secrets it retired in
/// a rotation ([`KeyRecord::retired`]): the layer decides whether a retired
/// secret is still within its grace period.
///
/// # Writing a remote store
///
/// A store backed by a database or Redis keeps a local cache (a
/// [`MemoryKeyStore`] does), answers hits with [`StoreFuture::ready`] (no
/// allocation, no await), and misses with [`StoreFuture::pending`] over a
/// future that owns what it needs (a connection handle, the hash).
/// Revocations must reach every instance's cache at once, not when an
/// entry's TTL runs out: publish them (Redis pub/sub, a database `LISTEN`)
/// and apply them with [`MemoryKeyStore::revoke`] or
/// [`MemoryKeyStore::remove`]. Cache unknown hashes briefly, if at all, so a
/// key minted on one instance works on the others within that time.
///
/// ```
/// use std::sync::Arc;
/// use tollgate::auth::{KeyHash, KeyRecord, KeyStore};
/// use tollgate::store::{StoreError, StoreFuture};
///
/// /// A store that knows one key, answering as a remote store would.
/// struct OneKey(Arc<KeyRecord>);
///
/// impl KeyStore for OneKey {
///     fn lookup(&self, hash: &KeyHash) -> StoreFuture<Option<Arc<KeyRecord>>> {
///         let (record, hash) = (self.0.clone(), *hash);
///         StoreFuture::pending(async move { Ok((record.secret_hash == hash).then_some(record)) })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), StoreError> {
/// let store: Arc<dyn KeyStore> = Arc::new(OneKey(Arc::new(KeyRecord::new("a", KeyHash::of("sk-a")))));
/// assert!(store.lookup(&KeyHash::of("sk-a")).await?.is_some());
/// assert!(store.lookup(&KeyHash::of("sk-b")).await?.is_none());
/// # Ok(())
/// # }
/// ```
///
/// [`MemoryKeyStore`]: crate::store::memory::MemoryKeyStore
/// [`MemoryKeyStore::revoke`]: crate::store::memory::MemoryKeyStore::revoke
/// [`MemoryKeyStore::remove`]: crate::store::memory::MemoryKeyStore::remove
pub trait KeyStore: Send + Sync {
    /// The record whose current or retired secret hashes to `hash`, if any.
    fn lookup(&self, hash: &KeyHash) -> StoreFuture<Option<Arc<KeyRecord>>>;

    /// The record of the tenant `scope` (a user, team or org; a key's scope
    /// has none), if the store holds one. Asked by
    /// [`AuthLayer`](super::AuthLayer) after each lookup of a key that
    /// names a user, team or org: answer from memory or a cache when you
    /// can, as for [`lookup`](Self::lookup). The default holds no tenants.
    fn tenant(&self, scope: &BudgetScope) -> StoreFuture<Option<Arc<TenantRecord>>> {
        let _ = scope;
        StoreFuture::ready(Ok(None))
    }
}

/// Whether [`KeyAdmin::put`] may replace a key that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PutMode {
    /// Only create: a key with the same id is a
    /// [`StoreError::Conflict`](crate::store::StoreError::Conflict).
    Create,
    /// Create, or replace the key with the same id.
    Upsert,
}

/// What an admin API does with keys: create, read, list, change, delete.
///
/// Every store of the crate implements it. A change made through one
/// instance is seen by every instance that shares the store within one
/// second (the Redis store publishes it; the others are one process), and
/// requests already admitted finish under the record they were admitted
/// with.
///
/// Changes are whole records: read one with [`get`](KeyAdmin::get), change
/// it, and [`put`](KeyAdmin::put) it back. Two admins changing one key at
/// the same instant: the last write wins.
///
/// ```
/// use tollgate::auth::{KeyAdmin, KeyHash, KeyRecord, KeyStore, PutMode};
/// use tollgate::store::memory::MemoryKeyStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tollgate::store::StoreError> {
/// let store: Box<dyn KeyAdmin> = Box::new(MemoryKeyStore::new());
/// store.put(KeyRecord::new("alice", KeyHash::of("sk-alice")), PutMode::Create).await?;
/// assert!(store.put(KeyRecord::new("alice", KeyHash::of("sk-other")), PutMode::Create).await.is_err());
///
/// let mut record = (*store.get("alice").await?.unwrap()).clone();
/// record.revoked = true;
/// store.put(record, PutMode::Upsert).await?;
/// assert!(store.lookup(&KeyHash::of("sk-alice")).await?.unwrap().revoked);
/// assert_eq!(store.list(None, 10).await?.len(), 1);
/// # Ok(())
/// # }
/// ```
pub trait KeyAdmin: KeyStore {
    /// The record of key `id`.
    fn get(&self, id: &str) -> StoreFuture<Option<Arc<KeyRecord>>>;

    /// Up to `limit` records whose ids sort after `after` (all when `None`),
    /// in id order: a page of keys, the next starting after its last id.
    fn list(&self, after: Option<&str>, limit: usize) -> StoreFuture<Vec<Arc<KeyRecord>>>;

    /// Stores `record` under its id and every secret it holds (current and
    /// retired), and returns the record it replaced. A secret (current or
    /// retired) that belongs to another key is a
    /// [`StoreError::Conflict`](crate::store::StoreError::Conflict), as is an
    /// existing id under [`PutMode::Create`]. Secrets the replaced record
    /// held and this one does not stop working.
    fn put(&self, record: KeyRecord, mode: PutMode) -> StoreFuture<Option<Arc<KeyRecord>>>;

    /// Deletes key `id` and every secret it holds; whether it existed.
    fn delete(&self, id: &str) -> StoreFuture<bool>;
}

/// What an admin API does with users, teams and orgs: create, read, list,
/// change, delete, with the same semantics as [`KeyAdmin`] has for keys.
///
/// Every store of the crate implements it. A write is checked with
/// [`TenantRecord::check`] (an invalid record is a
/// [`StoreError::Conflict`](crate::store::StoreError::Conflict)) and reaches
/// every instance that shares the store within one second, as a key's
/// does; requests already admitted finish under the records they were
/// admitted with.
///
/// ```
/// use tollgate::auth::{KeyStore, PutMode, TenantAdmin, TenantKind, TenantRecord};
/// use tollgate::store::memory::MemoryKeyStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tollgate::store::StoreError> {
/// let store = MemoryKeyStore::new();
/// let mut team = TenantRecord::new(TenantKind::Team, "research");
/// team.org = Some("acme".into());
/// store.put_tenant(team, PutMode::Create).await?;
///
/// let found = store.tenant(&TenantKind::Team.scope("research")).await?.unwrap();
/// assert_eq!(found.org.as_deref(), Some("acme"));
/// // (`MemoryKeyStore::list_tenants` answers at once; this is the trait's.)
/// assert_eq!(TenantAdmin::list_tenants(&store, TenantKind::Team, None, 10).await?.len(), 1);
/// // Only a team belongs to an org.
/// let mut user = TenantRecord::new(TenantKind::User, "ann");
/// user.org = Some("acme".into());
/// assert!(store.put_tenant(user, PutMode::Create).await.is_err());
/// # Ok(())
/// # }
/// ```
pub trait TenantAdmin: KeyAdmin {
    /// The record of the tenant `scope`, read from the store itself.
    fn get_tenant(&self, scope: &BudgetScope) -> StoreFuture<Option<Arc<TenantRecord>>>;

    /// Up to `limit` tenants of `kind` whose ids sort after `after` (all
    /// when `None`), in id order.
    fn list_tenants(
        &self,
        kind: TenantKind,
        after: Option<&str>,
        limit: usize,
    ) -> StoreFuture<Vec<Arc<TenantRecord>>>;

    /// Stores `record` under its scope and returns the record it replaced.
    /// An existing tenant under [`PutMode::Create`], or a record that fails
    /// [`TenantRecord::check`], is a
    /// [`StoreError::Conflict`](crate::store::StoreError::Conflict).
    fn put_tenant(
        &self,
        record: TenantRecord,
        mode: PutMode,
    ) -> StoreFuture<Option<Arc<TenantRecord>>>;

    /// Deletes the tenant `scope`; whether it existed. Keys that name it
    /// keep its name as a label, and are no longer charged to its budgets.
    fn delete_tenant(&self, scope: &BudgetScope) -> StoreFuture<bool>;
}

/// `Arc<T>` and `Box<T>` of a store are the store: the three traits'
/// methods forwarded.
macro_rules! forward_stores {
    ($ty:ident) => {
        impl<T: KeyStore + ?Sized> KeyStore for $ty<T> {
            fn lookup(&self, hash: &KeyHash) -> StoreFuture<Option<Arc<KeyRecord>>> {
                (**self).lookup(hash)
            }

            fn tenant(&self, scope: &BudgetScope) -> StoreFuture<Option<Arc<TenantRecord>>> {
                (**self).tenant(scope)
            }
        }

        impl<T: KeyAdmin + ?Sized> KeyAdmin for $ty<T> {
            fn get(&self, id: &str) -> StoreFuture<Option<Arc<KeyRecord>>> {
                (**self).get(id)
            }

            fn list(&self, after: Option<&str>, limit: usize) -> StoreFuture<Vec<Arc<KeyRecord>>> {
                (**self).list(after, limit)
            }

            fn put(&self, record: KeyRecord, mode: PutMode) -> StoreFuture<Option<Arc<KeyRecord>>> {
                (**self).put(record, mode)
            }

            fn delete(&self, id: &str) -> StoreFuture<bool> {
                (**self).delete(id)
            }
        }

        impl<T: TenantAdmin + ?Sized> TenantAdmin for $ty<T> {
            fn get_tenant(&self, scope: &BudgetScope) -> StoreFuture<Option<Arc<TenantRecord>>> {
                (**self).get_tenant(scope)
            }

            fn list_tenants(
                &self,
                kind: TenantKind,
                after: Option<&str>,
                limit: usize,
            ) -> StoreFuture<Vec<Arc<TenantRecord>>> {
                (**self).list_tenants(kind, after, limit)
            }

            fn put_tenant(
                &self,
                record: TenantRecord,
                mode: PutMode,
            ) -> StoreFuture<Option<Arc<TenantRecord>>> {
                (**self).put_tenant(record, mode)
            }

            fn delete_tenant(&self, scope: &BudgetScope) -> StoreFuture<bool> {
                (**self).delete_tenant(scope)
            }
        }
    };
}

forward_stores!(Arc);
forward_stores!(Box);
