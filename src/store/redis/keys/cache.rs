//! The local key cache of one gateway instance.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::auth::{KeyHash, KeyRecord};

/// The local cache: records and unknown hashes, each with an expiry,
/// sharded by the (uniformly random) hash.
pub(super) struct Cache {
    shards: Box<[RwLock<HashMap<KeyHash, CacheEntry>>]>,
    max_per_shard: usize,
    ttl: Duration,
    negative_ttl: Duration,
}

struct CacheEntry {
    record: Option<Arc<KeyRecord>>,
    expires: Instant,
}

pub(super) const CACHE_SHARDS: usize = 16;

impl Cache {
    pub(super) fn new(max: usize, ttl: Duration, negative_ttl: Duration) -> Self {
        Cache {
            shards: (0..CACHE_SHARDS).map(|_| RwLock::default()).collect(),
            max_per_shard: max.div_ceil(CACHE_SHARDS),
            ttl,
            negative_ttl,
        }
    }

    fn shard(&self, hash: &KeyHash) -> &RwLock<HashMap<KeyHash, CacheEntry>> {
        &self.shards[usize::from(hash.0[0]) % CACHE_SHARDS]
    }

    /// The cached answer for `hash`: `Some(None)` for a known-unknown hash.
    /// `stale` also returns expired entries.
    #[allow(clippy::option_option)]
    pub(super) fn get(&self, hash: &KeyHash, stale: bool) -> Option<Option<Arc<KeyRecord>>> {
        let shard = self
            .shard(hash)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = shard.get(hash)?;
        (stale || entry.expires > Instant::now()).then(|| entry.record.clone())
    }

    pub(super) fn insert(&self, hash: KeyHash, record: Option<Arc<KeyRecord>>) {
        if self.max_per_shard == 0 {
            return;
        }
        let ttl = if record.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        };
        let now = Instant::now();
        let mut shard = self
            .shard(&hash)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.len() >= self.max_per_shard && !shard.contains_key(&hash) {
            shard.retain(|_, e| e.expires > now);
            if shard.len() >= self.max_per_shard {
                // Full of live entries: drop one (the map's order is arbitrary).
                if let Some(victim) = shard.keys().next().copied() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(
            hash,
            CacheEntry {
                record,
                expires: now + ttl,
            },
        );
    }

    pub(super) fn remove(&self, hash: &KeyHash) {
        self.shard(hash)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(hash);
    }

    pub(super) fn clear(&self) {
        for shard in &self.shards {
            shard
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
    }

    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_expires_bounds_and_serves_stale() {
        let cache = Cache::new(CACHE_SHARDS, Duration::from_secs(60), Duration::ZERO);
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
