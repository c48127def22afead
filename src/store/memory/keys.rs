//! [`MemoryKeyStore`]: API keys in process memory, changed at run time.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::hash::SeededHashing;
use super::tenants::TenantMap;
use crate::auth::{
    KeyAdmin, KeyFile, KeyFileError, KeyHash, KeyRecord, KeyStore, PutMode, TenantRecord,
};
use crate::budget::BudgetScope;
use crate::store::{StoreError, StoreFuture, lock, read, write};

/// Key records in memory, by the SHA-256 of their secret.
///
/// A cheap handle: clones share the same keys, so keep one to
/// [`insert`](MemoryKeyStore::insert), [`revoke`](MemoryKeyStore::revoke)
/// or [`remove`](MemoryKeyStore::remove) keys while the layer serves
/// requests. A change is visible to the next lookup on every thread;
/// requests already admitted finish.
///
/// Lookups take a read lock on one of several shards (chosen by the hash,
/// which is uniformly random), so concurrent requests do not contend; writes
/// lock one shard briefly. The store holds every key it is given: it is the
/// source of truth, not a cache, and evicts nothing.
///
/// It holds tenants too (users, teams, orgs:
/// [`insert_tenant`](MemoryKeyStore::insert_tenant), and the
/// [`TenantAdmin`](crate::auth::TenantAdmin) operations), answered to [`KeyStore::tenant`] at once.
///
/// ```
/// use tollgate::auth::{KeyHash, KeyRecord, KeyStore};
/// use tollgate::store::memory::MemoryKeyStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = MemoryKeyStore::new();
/// store.insert(KeyRecord::new("alice", KeyHash::of("sk-alice")))?;
///
/// let found = store.lookup(&KeyHash::of("sk-alice")).await?.unwrap();
/// assert!(!found.revoked);
///
/// store.revoke("alice");
/// let found = store.lookup(&KeyHash::of("sk-alice")).await?.unwrap();
/// assert!(found.revoked);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryKeyStore {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    /// Every secret hash (current and retired) → its key's record.
    shards: Box<[RwLock<Shard>]>,
    /// id → the record, in id order for paged listing. Also serialises
    /// writers, so the two indexes change together; lookups never touch it.
    ids: Mutex<BTreeMap<String, Arc<KeyRecord>>>,
    /// Users, teams and orgs.
    pub(super) tenants: TenantMap,
    /// The seeded hashing of every shard's map, and of the shard choice.
    hashing: SeededHashing,
}

type Shard = HashMap<KeyHash, Arc<KeyRecord>, SeededHashing>;

impl Inner {
    fn shard(&self, hash: &KeyHash) -> &RwLock<Shard> {
        // Bits the map's own probing does not use (it takes the lowest for
        // the slot and the top seven as a tag).
        let n = (self.hashing.hash_one(hash) >> 40) as usize;
        &self.shards[n & (self.shards.len() - 1)]
    }
}

/// A key whose secret another key already uses: two keys with one secret
/// would make a request's caller ambiguous.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{id}` has the same secret as key `{existing}`")]
pub struct DuplicateSecret {
    /// The key being inserted.
    pub id: String,
    /// The key that already uses the secret.
    pub existing: String,
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        let shards = std::thread::available_parallelism()
            .map_or(4, usize::from)
            .saturating_mul(4)
            .clamp(8, 256)
            .next_power_of_two();
        let hashing = SeededHashing::default();
        MemoryKeyStore {
            inner: Arc::new(Inner {
                shards: (0..shards)
                    .map(|_| RwLock::new(HashMap::with_hasher(hashing.clone())))
                    .collect(),
                hashing,
                ids: Mutex::default(),
                tenants: TenantMap::default(),
            }),
        }
    }

    /// A store holding `records`.
    pub fn from_records(
        records: impl IntoIterator<Item = KeyRecord>,
    ) -> Result<Self, DuplicateSecret> {
        let store = MemoryKeyStore::new();
        for record in records {
            store.insert(record)?;
        }
        Ok(store)
    }

    /// A store holding the keys, users, teams and orgs of a JSON or TOML
    /// key file (see [`KeyFile`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, KeyFileError> {
        MemoryKeyStore::from_file(KeyFile::load(path)?)
    }

    /// A store holding the keys, users, teams and orgs of `file`.
    pub fn from_file(file: KeyFile) -> Result<Self, KeyFileError> {
        let tenants = file.tenants().to_vec();
        let store =
            MemoryKeyStore::from_records(file).map_err(|e| KeyFileError::DuplicateSecret {
                id: e.id,
                other: e.existing,
            })?;
        for tenant in tenants {
            // `KeyFile` built each record by the rules `insert_tenant`
            // checks; a refusal here would be a bug, reported, not skipped.
            store
                .insert_tenant(tenant)
                .map_err(|e| KeyFileError::Syntax {
                    format: "the",
                    line: None,
                    message: e.to_string(),
                })?;
        }
        Ok(store)
    }

    fn ids(&self) -> MutexGuard<'_, BTreeMap<String, Arc<KeyRecord>>> {
        lock(&self.inner.ids)
    }

    /// Adds `record`, or replaces the record with the same id (returned).
    /// Refused if another key already has one of its secrets (current or
    /// retired). Secrets the replaced record held and `record` does not
    /// stop working.
    pub fn insert(&self, record: KeyRecord) -> Result<Option<Arc<KeyRecord>>, DuplicateSecret> {
        Self::write_record(&self.inner, &mut self.ids(), record)
    }

    fn store(
        &self,
        record: KeyRecord,
        mode: PutMode,
    ) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let mut ids = self.ids();
        if mode == PutMode::Create && ids.contains_key(&record.id) {
            return Err(key_exists(&record.id));
        }
        Self::write_record(&self.inner, &mut ids, record).map_err(|dup| secret_taken(&dup.id))
    }

    /// Stores `record` under its id and secrets, `ids` locked by the caller.
    fn write_record(
        inner: &Inner,
        ids: &mut BTreeMap<String, Arc<KeyRecord>>,
        record: KeyRecord,
    ) -> Result<Option<Arc<KeyRecord>>, DuplicateSecret> {
        for hash in record.secret_hashes() {
            if let Some(existing) = read(inner.shard(&hash)).get(&hash)
                && existing.id != record.id
            {
                return Err(DuplicateSecret {
                    id: record.id.clone(),
                    existing: existing.id.clone(),
                });
            }
        }
        let record = Arc::new(record);
        let previous = ids.get(&record.id).cloned();
        if let Some(old) = &previous {
            for hash in old.secret_hashes() {
                if !record.secret_hashes().any(|h| h == hash) {
                    write(inner.shard(&hash)).remove(&hash);
                }
            }
        }
        for hash in record.secret_hashes() {
            write(inner.shard(&hash)).insert(hash, record.clone());
        }
        ids.insert(record.id.clone(), record);
        Ok(previous)
    }

    /// Marks key `id` revoked: its next request gets 401 `revoked_api_key`.
    /// Returns whether the key exists.
    pub fn revoke(&self, id: &str) -> bool {
        self.modify(id, |record| record.revoked = true)
    }

    /// Disables (or re-enables) key `id`'s account: 403 `account_disabled`.
    /// Returns whether the key exists.
    pub fn set_disabled(&self, id: &str, disabled: bool) -> bool {
        self.modify(id, |record| record.disabled = disabled)
    }

    /// Removes key `id`: its next request gets 401 `invalid_api_key`.
    pub fn remove(&self, id: &str) -> Option<Arc<KeyRecord>> {
        let mut ids = self.ids();
        let record = ids.remove(id)?;
        for hash in record.secret_hashes() {
            write(self.inner.shard(&hash)).remove(&hash);
        }
        Some(record)
    }

    /// The record of key `id`.
    pub fn get(&self, id: &str) -> Option<Arc<KeyRecord>> {
        self.ids().get(id).cloned()
    }

    /// The record with the secret (current or retired) that hashes to
    /// `hash`: one read lock, one map read.
    pub fn get_by_hash(&self, hash: &KeyHash) -> Option<Arc<KeyRecord>> {
        read(self.inner.shard(hash)).get(hash).cloned()
    }

    /// Up to `limit` records whose ids sort after `after`, in id order.
    pub fn list(&self, after: Option<&str>, limit: usize) -> Vec<Arc<KeyRecord>> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let ids = self.ids();
        let range = ids.range::<str, _>((from, Bound::Unbounded));
        range.take(limit).map(|(_, r)| r.clone()).collect()
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.ids().len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn modify(&self, id: &str, change: impl FnOnce(&mut KeyRecord)) -> bool {
        let mut ids = self.ids();
        let Some(current) = ids.get(id) else {
            return false;
        };
        // Copy-on-write: requests holding the old record keep it. The
        // change touches no secret: no other key can hold one of them.
        let mut record = (**current).clone();
        change(&mut record);
        Self::write_record(&self.inner, &mut ids, record).is_ok()
    }
}

/// The conflict of a key created with an id that exists (every store's).
pub(crate) fn key_exists(id: &str) -> StoreError {
    StoreError::Conflict(format!(
        "a key with the id `{}` already exists",
        id.escape_debug()
    ))
}

/// The conflict of a key given a secret another key holds (every
/// store's; the other key is not named).
pub(crate) fn secret_taken(id: &str) -> StoreError {
    StoreError::Conflict(format!(
        "key `{}` has the same secret as another key",
        id.escape_debug()
    ))
}

impl KeyStore for MemoryKeyStore {
    fn lookup(&self, hash: &KeyHash) -> StoreFuture<Option<Arc<KeyRecord>>> {
        StoreFuture::ready(Ok(self.get_by_hash(hash)))
    }

    fn tenant(&self, scope: &BudgetScope) -> StoreFuture<Option<Arc<TenantRecord>>> {
        StoreFuture::ready(Ok(self.get_tenant(scope)))
    }
}

impl KeyAdmin for MemoryKeyStore {
    fn get(&self, id: &str) -> StoreFuture<Option<Arc<KeyRecord>>> {
        StoreFuture::ready(Ok(MemoryKeyStore::get(self, id)))
    }

    fn list(&self, after: Option<&str>, limit: usize) -> StoreFuture<Vec<Arc<KeyRecord>>> {
        StoreFuture::ready(Ok(MemoryKeyStore::list(self, after, limit)))
    }

    fn put(&self, record: KeyRecord, mode: PutMode) -> StoreFuture<Option<Arc<KeyRecord>>> {
        StoreFuture::ready(self.store(record, mode))
    }

    fn delete(&self, id: &str) -> StoreFuture<bool> {
        StoreFuture::ready(Ok(self.remove(id).is_some()))
    }
}

impl Default for MemoryKeyStore {
    fn default() -> Self {
        MemoryKeyStore::new()
    }
}

impl fmt::Debug for MemoryKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryKeyStore")
            .field("keys", &self.len())
            .field("tenants", &self.tenant_count())
            .field("shards", &self.inner.shards.len())
            .finish()
    }
}

#[cfg(test)]
mod admin_tests;
#[cfg(test)]
mod tests;
