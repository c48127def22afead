//! Where keys live: the [`KeyStore`] trait (the lookup every request makes)
//! and [`KeyAdmin`] (what an admin API does with keys).

use std::sync::Arc;

use super::{KeyHash, KeyRecord};
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
}

impl<T: KeyStore + ?Sized> KeyStore for Arc<T> {
    fn lookup(&self, hash: &KeyHash) -> StoreFuture<Option<Arc<KeyRecord>>> {
        (**self).lookup(hash)
    }
}

impl<T: KeyStore + ?Sized> KeyStore for Box<T> {
    fn lookup(&self, hash: &KeyHash) -> StoreFuture<Option<Arc<KeyRecord>>> {
        (**self).lookup(hash)
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

impl<T: KeyAdmin + ?Sized> KeyAdmin for Arc<T> {
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

impl<T: KeyAdmin + ?Sized> KeyAdmin for Box<T> {
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
