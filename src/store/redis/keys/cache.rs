//! The local caches of one gateway instance (key records by secret hash,
//! tenants by scope), and the lookups through them.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::{FailurePolicy, Inner};
use crate::auth::KeyHash;
use crate::budget::BudgetScope;
use crate::store::{StoreError, StoreFuture, read, write};

/// Records (and keys known to have none), each with an expiry, in shards
/// so that lookups of different keys seldom wait on one lock.
pub(super) struct Cache<K, V> {
    shards: Box<[ShardMap<K, V>]>,
    max_per_shard: usize,
    ttl: Duration,
    negative_ttl: Duration,
}

type ShardMap<K, V> = RwLock<HashMap<K, CacheEntry<V>>>;

struct CacheEntry<V> {
    record: Option<Arc<V>>,
    expires: Instant,
}

/// Shards of the key cache: secret hashes are uniformly random, so their
/// first byte spreads them. Tenants, few and read less, have one shard.
pub(super) const CACHE_SHARDS: usize = 16;

/// Which shard a cache key belongs to (taken modulo the shard count).
pub(super) trait Shard {
    fn shard(&self) -> usize;
}

impl Shard for KeyHash {
    fn shard(&self) -> usize {
        usize::from(self.0[0])
    }
}

impl Shard for BudgetScope {
    fn shard(&self) -> usize {
        0
    }
}

impl<K: Shard + Eq + Hash + Clone, V> Cache<K, V> {
    pub(super) fn new(shards: usize, max: usize, ttl: Duration, negative_ttl: Duration) -> Self {
        Cache {
            shards: (0..shards).map(|_| RwLock::default()).collect(),
            max_per_shard: max.div_ceil(shards),
            ttl,
            negative_ttl,
        }
    }

    fn shard(&self, key: &K) -> &ShardMap<K, V> {
        &self.shards[key.shard() % self.shards.len()]
    }

    /// The cached answer for `key`: `Some(None)` when it is known to have
    /// no record. `stale` also returns expired entries.
    #[allow(clippy::option_option)]
    pub(super) fn get(&self, key: &K, stale: bool) -> Option<Option<Arc<V>>> {
        let shard = read(self.shard(key));
        let entry = shard.get(key)?;
        (stale || entry.expires > Instant::now()).then(|| entry.record.clone())
    }

    pub(super) fn insert(&self, key: K, record: Option<Arc<V>>) {
        if self.max_per_shard == 0 {
            return;
        }
        let ttl = if record.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        };
        let now = Instant::now();
        let mut shard = write(self.shard(&key));
        if shard.len() >= self.max_per_shard && !shard.contains_key(&key) {
            shard.retain(|_, e| e.expires > now);
            if shard.len() >= self.max_per_shard {
                // Full of live entries: drop one (the map's order is arbitrary).
                if let Some(victim) = shard.keys().next().cloned() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(
            key,
            CacheEntry {
                record,
                expires: now + ttl,
            },
        );
    }

    pub(super) fn remove(&self, key: &K) {
        write(self.shard(key)).remove(key);
    }

    pub(super) fn clear(&self) {
        for shard in &self.shards {
            write(shard).clear();
        }
    }

    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }
}

impl Inner {
    /// A lookup through one of the caches: from it while the subscription
    /// is live, else by `read`, whose answer is cached unless an
    /// invalidation raced with it. Under [`FailurePolicy::FailOpen`], a
    /// failed read is answered from the cache, even past its TTL.
    pub(super) fn lookup<K, V, F>(
        self: &Arc<Self>,
        cache: fn(&Inner) -> &Cache<K, V>,
        key: &K,
        read: impl FnOnce(&Inner, &K) -> F,
    ) -> StoreFuture<Option<Arc<V>>>
    where
        K: Shard + Eq + Hash + Clone + Send + 'static,
        V: Send + Sync + 'static,
        F: Future<Output = Result<Option<Arc<V>>, StoreError>> + Send + 'static,
    {
        if !self.listener_started.load(Ordering::Relaxed) {
            self.start_listener();
        }
        if self.listening.load(Ordering::Acquire)
            && let Some(record) = cache(self).get(key, false)
        {
            return StoreFuture::ready(Ok(record));
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let read = read(self, key);
        let inner = self.clone();
        let key = key.clone();
        StoreFuture::pending(async move {
            match read.await {
                Ok(record) => {
                    // Cache only what no invalidation raced with, and only
                    // while invalidations are being received.
                    if inner.listening.load(Ordering::Acquire)
                        && inner.epoch.load(Ordering::Acquire) == epoch
                    {
                        cache(&inner).insert(key, record.clone());
                    }
                    Ok(record)
                }
                Err(error) => match (inner.policy, cache(&inner).get(&key, true)) {
                    (FailurePolicy::FailOpen, Some(record)) => {
                        tracing::debug!(%error, "redis key store unavailable; serving the cached record");
                        Ok(record)
                    }
                    _ => Err(error),
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::KeyRecord;

    #[test]
    fn cache_expires_bounds_and_serves_stale() {
        let cache = Cache::new(
            CACHE_SHARDS,
            CACHE_SHARDS,
            Duration::from_secs(60),
            Duration::ZERO,
        );
        let record = Arc::new(KeyRecord::new("a", KeyHash::of("a")));
        cache.insert(KeyHash::of("a"), Some(record.clone()));
        cache.insert(KeyHash::of("unknown"), None);
        assert_eq!(cache.get(&KeyHash::of("a"), false), Some(Some(record)));
        // Negative entries expired at once; still there for a stale read.
        assert_eq!(cache.get(&KeyHash::of("unknown"), false), None);
        assert_eq!(cache.get(&KeyHash::of("unknown"), true), Some(None));
        for i in 0..1000 {
            cache.insert(KeyHash::of(format!("k{i}")), None);
        }
        assert!(cache.len() <= 2 * CACHE_SHARDS, "{}", cache.len());
        cache.clear();
        assert_eq!(cache.len(), 0);
    }
}
