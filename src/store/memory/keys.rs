//! [`MemoryKeyStore`]: API keys in process memory, changed at run time.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::auth::{KeyFile, KeyFileError, KeyHash, KeyRecord, KeyStore, Lookup};

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
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[RwLock<Shard>]>,
    /// id → hash, for the admin operations. Also serialises writers, so the
    /// two indexes change together; lookups never touch it.
    ids: Mutex<HashMap<String, KeyHash>>,
}

type Shard = HashMap<KeyHash, Arc<KeyRecord>, PrehashedState>;

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
        MemoryKeyStore {
            inner: Arc::new(Inner {
                shards: (0..shards).map(|_| RwLock::default()).collect(),
                ids: Mutex::default(),
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

    /// A store holding the keys of a JSON or TOML key file
    /// (see [`KeyFile`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, KeyFileError> {
        let file = KeyFile::load(path)?;
        MemoryKeyStore::from_records(file).map_err(|e| KeyFileError::DuplicateSecret {
            id: e.id,
            other: e.existing,
        })
    }

    fn shard(&self, hash: &KeyHash) -> &RwLock<Shard> {
        // The hash is uniformly random: its first bytes spread keys evenly.
        let n = u16::from_le_bytes([hash.0[0], hash.0[1]]) as usize;
        &self.inner.shards[n & (self.inner.shards.len() - 1)]
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, HashMap<String, KeyHash>> {
        // A panic elsewhere cannot leave the maps half-written (each write is
        // one `HashMap` call), so a poisoned lock is still usable.
        self.inner
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `record`, or replaces the record with the same id (returned).
    /// Refused if another key already has the same secret.
    pub fn insert(&self, record: KeyRecord) -> Result<Option<Arc<KeyRecord>>, DuplicateSecret> {
        let mut ids = self.ids();
        let hash = record.secret_hash;
        let shard = self.shard(&hash);
        if let Some(existing) = read(shard).get(&hash) {
            if existing.id != record.id {
                return Err(DuplicateSecret {
                    id: record.id,
                    existing: existing.id.clone(),
                });
            }
        }
        let old_hash = ids.insert(record.id.clone(), hash);
        let mut replaced = None;
        if let Some(old) = old_hash.filter(|old| *old != hash) {
            // The key's secret was rotated: the old secret stops working.
            replaced = write(self.shard(&old)).remove(&old);
        }
        let previous = write(shard).insert(hash, Arc::new(record));
        Ok(previous.or(replaced))
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
        let hash = ids.remove(id)?;
        write(self.shard(&hash)).remove(&hash)
    }

    /// The record of key `id`.
    pub fn get(&self, id: &str) -> Option<Arc<KeyRecord>> {
        let hash = *self.ids().get(id)?;
        self.get_by_hash(&hash)
    }

    /// The record whose secret hashes to `hash`: one read lock, one map read.
    pub fn get_by_hash(&self, hash: &KeyHash) -> Option<Arc<KeyRecord>> {
        read(self.shard(hash)).get(hash).cloned()
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
        let ids = self.ids();
        let Some(hash) = ids.get(id) else {
            return false;
        };
        let mut shard = write(self.shard(hash));
        match shard.get_mut(hash) {
            Some(record) => {
                // Copy-on-write: requests holding the old record keep it.
                change(Arc::make_mut(record));
                true
            }
            None => false,
        }
    }
}

impl KeyStore for MemoryKeyStore {
    fn lookup(&self, hash: &KeyHash) -> Lookup {
        Lookup::ready(Ok(self.get_by_hash(hash)))
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
            .field("shards", &self.inner.shards.len())
            .finish()
    }
}

fn read(lock: &RwLock<Shard>) -> std::sync::RwLockReadGuard<'_, Shard> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(lock: &RwLock<Shard>) -> std::sync::RwLockWriteGuard<'_, Shard> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Keys are SHA-256 outputs, already uniformly random: hashing them again
/// (SipHash) would only cost time. This folds the bytes with a rotate-xor,
/// which is enough to spread random input over the table.
#[derive(Clone, Copy, Default)]
struct PrehashedState;

impl BuildHasher for PrehashedState {
    type Hasher = Prehashed;

    fn build_hasher(&self) -> Prehashed {
        Prehashed(0)
    }
}

struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(23) ^ u64::from_le_bytes(word);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replace_rotate_remove() {
        let store = MemoryKeyStore::new();
        let a1 = KeyHash::of("sk-a1");
        assert!(store.insert(KeyRecord::new("a", a1)).unwrap().is_none());
        assert_eq!(store.len(), 1);
        // Same id, new secret: the old secret stops working.
        let a2 = KeyHash::of("sk-a2");
        let old = store.insert(KeyRecord::new("a", a2)).unwrap().unwrap();
        assert_eq!(old.secret_hash, a1);
        assert!(store.get_by_hash(&a1).is_none());
        assert_eq!(store.get("a").unwrap().secret_hash, a2);
        // Another id with the same secret is refused.
        let err = store.insert(KeyRecord::new("b", a2)).unwrap_err();
        assert_eq!(err.to_string(), "key `b` has the same secret as key `a`");
        assert!(store.set_disabled("a", true));
        assert!(store.get("a").unwrap().disabled);
        assert!(store.revoke("a") && !store.revoke("nobody"));
        assert!(store.remove("a").unwrap().revoked);
        assert!(store.is_empty() && store.get_by_hash(&a2).is_none());
    }

    #[test]
    fn revocation_is_copy_on_write() {
        let store = MemoryKeyStore::new();
        store.insert(KeyRecord::new("a", KeyHash::of("s"))).unwrap();
        let held = store.get("a").unwrap();
        store.revoke("a");
        assert!(!held.revoked);
        assert!(store.get("a").unwrap().revoked);
    }

    #[test]
    fn many_keys_spread_over_shards() {
        let store = MemoryKeyStore::new();
        for i in 0..2000 {
            store
                .insert(KeyRecord::new(
                    format!("k{i}"),
                    KeyHash::of(format!("s{i}")),
                ))
                .unwrap();
        }
        let sizes: Vec<usize> = store.inner.shards.iter().map(|s| read(s).len()).collect();
        let expected = 2000 / sizes.len();
        assert!(sizes.iter().all(|&n| n > expected / 3), "{sizes:?}");
        for i in (0..2000).step_by(97) {
            assert_eq!(
                store.get_by_hash(&KeyHash::of(format!("s{i}"))).unwrap().id,
                format!("k{i}")
            );
        }
    }
}
