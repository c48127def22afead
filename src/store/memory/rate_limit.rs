//! [`MemoryRateLimitStore`]: rate-limit state in process memory.

use std::collections::HashMap;
use std::fmt;
use std::future::{Ready, ready};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::clock::{SharedClock, TokioClock};
use crate::rate_limit::gcra::{Gcra, micros};
use crate::rate_limit::{
    Acquire, Admission, Limit, LimitState, LimitStates, RateLimitKey, RateLimitStore, Settle,
    Verdict,
};
use crate::store::StoreError;

/// Rate-limit state in process memory: exact for one gateway instance.
///
/// ```
/// use std::time::Duration;
/// use tollgate::rate_limit::{Acquire, Limit, RateLimitKey, RateLimitStore, Verdict};
/// use tollgate::store::memory::MemoryRateLimitStore;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tollgate::store::StoreError> {
/// let store = MemoryRateLimitStore::builder()
///     .max_keys(100_000)
///     .sweep_interval(Duration::from_secs(30))
///     .build();
/// let limits = [Limit::requests_per_minute(2)];
/// let one = Acquire { limits: &limits, costs: &[1], max_concurrent: None };
/// let key = RateLimitKey::new("alice");
///
/// assert_eq!(store.acquire(key, &one).await?.verdict, Verdict::Admitted);
/// assert_eq!(store.acquire(key, &one).await?.verdict, Verdict::Admitted);
/// let third = store.acquire(key, &one).await?;
/// assert_eq!(third.verdict, Verdict::Limited);
/// assert_eq!(third.states[0].retry_after, Some(Duration::from_secs(30)));
/// # Ok(())
/// # }
/// ```
///
/// # Layout and cost
///
/// Keys are spread over shards (64 by default), each a `Mutex<HashMap>`, so
/// concurrent admissions of different keys rarely wait on each other and
/// there is no global lock. A key is held as a 128-bit fingerprint (a
/// SipHash-1-3 digest under a key drawn at random when the store is built,
/// and a second, seeded digest): the store never keeps the key's text, and
/// two live keys sharing a fingerprint is far rarer than a hardware fault. Each key's state is 32 bytes: one GCRA state (`u64`) for
/// each of its first two limits (more limits take 8 bytes each on the heap),
/// the time its state is back to full, its in-flight count and a digest of its
/// limits. With the map's own overhead that is 50 to 120 bytes per key
/// (`benches/rate_limit.rs` measures it). The in-flight count is 16 bits: a
/// concurrency limit above 65,535 per key acts as 65,535.
///
/// # Bounded
///
/// - **Idle keys are evicted.** A key whose every limit is back to full and
///   that has nothing in flight is indistinguishable from a key never seen, so
///   it is dropped. Each shard sweeps itself when it is used and its last
///   sweep is older than [`sweep_interval`](MemoryRateLimitStoreBuilder::sweep_interval)
///   (default 60 s), and gives memory back when it has shrunk to a quarter;
///   [`sweep`](MemoryRateLimitStore::sweep) sweeps every shard now.
/// - **A hard cap on keys** ([`max_keys`](MemoryRateLimitStoreBuilder::max_keys),
///   default 1,000,000, about 100 MB; split evenly over the shards, so a shard
///   may reach its share a little before the store reaches the cap). When a new key arrives
///   at a full shard, the shard first evicts its idle keys (at most once a
///   second); if none are idle, it evicts, among 32 of its keys, the one with
///   nothing in flight that will be back to full soonest. That key's next
///   request starts from a full limit: the cap costs the least-loaded key a
///   little leniency, never a new caller its access, and a flood of new keys
///   cannot grow memory.
///
/// # Time
///
/// Time comes from a [`Clock`](crate::clock::Clock) ([`TokioClock`] by
/// default), so under `tokio::time::pause()` windows advance with
/// `tokio::time::advance`. The store keeps microseconds since it was built.
#[derive(Clone)]
pub struct MemoryRateLimitStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Shard]>,
    shard_mask: u64,
    hash_key: RandomState,
    mix_seed: u64,
    clock: SharedClock,
    epoch: tokio::time::Instant,
    max_keys_per_shard: usize,
    sweep_interval_s: u32,
}

// Each lock on its own cache line, so shards do not contend through it.
#[repr(align(64))]
struct Shard {
    map: Mutex<ShardMap>,
}

struct ShardMap {
    entries: HashMap<Fingerprint, Entry, BuildFingerprint>,
    last_sweep_s: u32,
}

/// A key's 128-bit digest. The map hashes the first half; the shard is
/// chosen from the second.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fingerprint(u64, u64);

impl Hash for Fingerprint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

/// The fingerprint is already a keyed hash: the map uses it as is.
#[derive(Clone, Copy, Default)]
struct BuildFingerprint;

impl BuildHasher for BuildFingerprint {
    type Hasher = FingerprintHasher;
    fn build_hasher(&self) -> FingerprintHasher {
        FingerprintHasher(0)
    }
}

struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8)) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// One key's state: 32 bytes.
#[derive(Default)]
struct Entry {
    /// GCRA states of the first two limits.
    tats: [u64; 2],
    /// Seconds since the epoch at which every limit is back to full.
    full_at_s: u32,
    /// Digest of the key's limit list; a change starts the key afresh.
    config: u16,
    in_flight: u16,
    /// GCRA states of the limits after the second (a thin pointer: a
    /// `Box<[u64]>` would be two words in every entry).
    #[allow(clippy::box_collection)]
    more: Option<Box<Vec<u64>>>,
}

impl Entry {
    fn tat(&self, i: usize) -> u64 {
        match i {
            0 | 1 => self.tats[i],
            _ => self
                .more
                .as_ref()
                .and_then(|m| m.get(i - 2))
                .copied()
                .unwrap_or(0),
        }
    }

    fn set_tat(&mut self, i: usize, tat: u64) {
        if i < 2 {
            self.tats[i] = tat;
            return;
        }
        let more = self.more.get_or_insert_with(Default::default);
        if more.len() < i - 1 {
            more.resize(i - 1, 0);
        }
        more[i - 2] = tat;
    }

    fn reset_limits(&mut self, config: u16) {
        self.tats = [0; 2];
        self.more = None;
        self.full_at_s = 0;
        self.config = config;
    }

    fn is_idle(&self, now_s: u32) -> bool {
        self.in_flight == 0 && self.full_at_s <= now_s
    }
}

/// A fast seeded hash for the fingerprint's second half. The first half is
/// SipHash-1-3 under a random key, already a 64-bit keyed digest; this half
/// only makes two keys sharing a fingerprint rarer still, and costs a few
/// multiplications per 8 bytes instead of a second SipHash.
struct Mix(u64);

impl Hasher for Mix {
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.word(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        // The length tells "ab" from "ab\0".
        self.word(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
    }
}

impl Mix {
    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
}

/// Builds a [`MemoryRateLimitStore`].
#[derive(Clone)]
pub struct MemoryRateLimitStoreBuilder {
    shards: usize,
    max_keys: usize,
    sweep_interval: Duration,
    clock: Option<SharedClock>,
}

impl fmt::Debug for MemoryRateLimitStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRateLimitStoreBuilder")
            .field("shards", &self.shards)
            .field("max_keys", &self.max_keys)
            .field("sweep_interval", &self.sweep_interval)
            .finish_non_exhaustive()
    }
}

impl MemoryRateLimitStoreBuilder {
    /// The number of shards, rounded up to a power of two (default 64).
    /// More shards, less contention between keys; each costs a few bytes.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// The most keys held at once (default 1,000,000); see the type's docs
    /// for what happens at the cap.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// How often each shard drops its idle keys (default 60 s; at least 1 s).
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// The clock (default [`TokioClock`]).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Builds the store. Its time starts now.
    pub fn build(self) -> MemoryRateLimitStore {
        let shards = self.shards.clamp(1, 1 << 16).next_power_of_two();
        let clock = self
            .clock
            .unwrap_or_else(|| Arc::new(TokioClock::new()) as SharedClock);
        let epoch = clock.now();
        let sweep_interval_s =
            u32::try_from(self.sweep_interval.as_secs().max(1)).unwrap_or(u32::MAX);
        MemoryRateLimitStore {
            inner: Arc::new(Inner {
                shards: (0..shards)
                    .map(|_| Shard {
                        map: Mutex::new(ShardMap {
                            entries: HashMap::with_hasher(BuildFingerprint),
                            last_sweep_s: 0,
                        }),
                    })
                    .collect(),
                shard_mask: shards as u64 - 1,
                hash_key: RandomState::new(),
                mix_seed: RandomState::new().hash_one(0x9e37_79b9_7f4a_7c15_u64) | 1,
                clock,
                epoch,
                max_keys_per_shard: self.max_keys.div_ceil(shards).max(1),
                sweep_interval_s,
            }),
        }
    }
}

impl Default for MemoryRateLimitStore {
    fn default() -> Self {
        MemoryRateLimitStore::new()
    }
}

impl fmt::Debug for MemoryRateLimitStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRateLimitStore")
            .field("shards", &self.inner.shards.len())
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

impl MemoryRateLimitStore {
    /// Default shards.
    pub const DEFAULT_SHARDS: usize = 64;
    /// Default cap on keys.
    pub const DEFAULT_MAX_KEYS: usize = 1_000_000;
    /// Default sweep interval.
    pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

    /// A store with the defaults: 64 shards, at most 1,000,000 keys, idle
    /// keys swept every 60 s, [`TokioClock`].
    pub fn new() -> Self {
        MemoryRateLimitStore::builder().build()
    }

    /// A builder to change the defaults.
    pub fn builder() -> MemoryRateLimitStoreBuilder {
        MemoryRateLimitStoreBuilder {
            shards: Self::DEFAULT_SHARDS,
            max_keys: Self::DEFAULT_MAX_KEYS,
            sweep_interval: Self::DEFAULT_SWEEP_INTERVAL,
            clock: None,
        }
    }

    /// Keys held now (idle keys not yet swept included).
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| lock(&s.map).entries.len())
            .sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every idle key now, in every shard, and gives memory back to
    /// the allocator where a shard has shrunk. Returns the keys dropped.
    pub fn sweep(&self) -> usize {
        let now_s = self.inner.now_s(self.inner.now_us());
        self.inner
            .shards
            .iter()
            .map(|s| lock(&s.map).sweep(now_s))
            .sum()
    }
}

fn lock(m: &Mutex<ShardMap>) -> MutexGuard<'_, ShardMap> {
    // A panic while holding the lock cannot leave a shard half-written in a
    // way that matters more than losing rate-limit state: keep going.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ShardMap {
    fn sweep(&mut self, now_s: u32) -> usize {
        self.last_sweep_s = now_s;
        let before = self.entries.len();
        self.entries.retain(|_, e| !e.is_idle(now_s));
        let len = self.entries.len();
        if self.entries.capacity() > 64 && self.entries.capacity() / 4 > len {
            self.entries.shrink_to(len * 2);
        }
        before - len
    }

    /// Makes room for one more key under `cap`.
    fn make_room(&mut self, cap: usize, now_s: u32) {
        if self.entries.len() < cap {
            return;
        }
        // A full sweep at most once a second, so a flood of new keys at a
        // full shard cannot turn every admission into a scan.
        if now_s > self.last_sweep_s {
            self.sweep(now_s);
            if self.entries.len() < cap {
                return;
            }
        }
        let victim = self
            .entries
            .iter()
            .take(32)
            .min_by_key(|(_, e)| (e.in_flight > 0, e.full_at_s))
            .map(|(k, _)| *k);
        if let Some(victim) = victim {
            self.entries.remove(&victim);
        }
    }
}

impl Inner {
    fn now_us(&self) -> u64 {
        let elapsed = self.clock.now().saturating_duration_since(self.epoch);
        u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
    }

    fn now_s(&self, now_us: u64) -> u32 {
        u32::try_from(now_us / 1_000_000).unwrap_or(u32::MAX)
    }

    fn fingerprint(&self, key: RateLimitKey<'_>) -> Fingerprint {
        fn feed<H: Hasher>(mut h: H, key: RateLimitKey<'_>) -> u64 {
            h.write(key.id.as_bytes());
            if let Some(model) = key.model {
                // 0xFF never occurs in UTF-8: `("a", "b")` ≠ `("a\u{ff}b", None)`.
                h.write_u8(0xff);
                h.write(model.as_bytes());
            }
            h.finish()
        }
        Fingerprint(
            feed(self.hash_key.build_hasher(), key),
            feed(Mix(self.mix_seed), key),
        )
    }

    fn shard(&self, fp: Fingerprint) -> &Mutex<ShardMap> {
        // The mask keeps the index below the shard count, a power of two.
        let index = (fp.1 & self.shard_mask) as usize;
        &self.shards[index].map
    }

    fn maybe_sweep(&self, map: &mut ShardMap, now_s: u32) {
        if now_s.saturating_sub(map.last_sweep_s) >= self.sweep_interval_s {
            map.sweep(now_s);
        }
    }

    fn acquire(&self, key: RateLimitKey<'_>, request: &Acquire<'_>) -> Admission {
        let now_us = self.now_us();
        let now_s = self.now_s(now_us);
        let config = config_digest(request.limits);
        let fp = self.fingerprint(key);
        let mut map = lock(self.shard(fp));
        self.maybe_sweep(&mut map, now_s);

        let mut fresh = Entry::default();
        let (entry, known) = match map.entries.get_mut(&fp) {
            Some(entry) => (entry, true),
            None => (&mut fresh, false),
        };
        if entry.config != config {
            entry.reset_limits(config);
        }
        let latest_full_us = u64::from(entry.full_at_s).saturating_mul(1_000_000);

        let n = request.limits.len().min(request.costs.len());
        let mut states = LimitStates::new();
        let mut tats = [0u64; 4];
        let mut spilled = Vec::new();
        let mut admitted = true;
        let mut full_at_us = 0u64;
        for (i, (limit, &cost)) in request.limits.iter().zip(request.costs).enumerate() {
            let gcra = Gcra::new(limit);
            let d = gcra.check_clamped(entry.tat(i), now_us, cost, latest_full_us);
            admitted &= d.admitted;
            full_at_us = full_at_us.max(now_us.saturating_add(d.reset_us));
            if i < tats.len() {
                tats[i] = d.tat;
            } else {
                spilled.push(d.tat);
            }
            states.push(LimitState {
                remaining: d.remaining,
                reset: micros(d.reset_us),
                retry_after: d.retry_after_us.map(micros),
            });
        }
        let slot_free = match request.max_concurrent {
            Some(max) => u32::from(entry.in_flight) < max.min(u32::from(u16::MAX)),
            None => true,
        };
        let verdict = match (admitted, slot_free) {
            (false, _) => Verdict::Limited,
            (true, false) => Verdict::Concurrency,
            (true, true) => Verdict::Admitted,
        };
        if verdict != Verdict::Admitted {
            // Nothing is charged: limits that would have admitted report
            // their state as it is, not as the charge would have left it.
            for (i, (limit, state)) in request.limits.iter().zip(states.iter_mut()).enumerate() {
                if state.admits() {
                    let gcra = Gcra::new(limit);
                    let tat = gcra.clamp(entry.tat(i), now_us, latest_full_us);
                    let (remaining, reset_us) = gcra.peek(tat, now_us);
                    state.remaining = remaining;
                    state.reset = micros(reset_us);
                }
            }
        } else {
            for i in 0..n {
                let tat = if i < tats.len() {
                    tats[i]
                } else {
                    spilled[i - tats.len()]
                };
                entry.set_tat(i, tat);
            }
            entry.full_at_s = self.now_s(full_at_us.saturating_add(999_999));
            if request.max_concurrent.is_some() {
                entry.in_flight += 1;
            }
            if !known {
                map.make_room(self.max_keys_per_shard, now_s);
                map.entries.insert(fp, fresh);
            }
        }
        Admission { verdict, states }
    }

    fn settle(&self, key: RateLimitKey<'_>, request: &Settle<'_>) {
        let now_us = self.now_us();
        let now_s = self.now_s(now_us);
        let config = config_digest(request.limits);
        let fp = self.fingerprint(key);
        let mut map = lock(self.shard(fp));
        let charges = request.deltas.iter().any(|&d| d > 0);
        let mut fresh = Entry {
            config,
            ..Entry::default()
        };
        let (entry, known) = match map.entries.get_mut(&fp) {
            Some(entry) => (entry, true),
            // Nothing to refund or release on an evicted key; charges stand.
            None if charges => (&mut fresh, false),
            None => return,
        };
        if request.release {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
        if entry.config != config {
            // The limits changed since admission: the state was reset.
            return;
        }
        let latest_full_us = u64::from(entry.full_at_s).saturating_mul(1_000_000);
        let mut full_at_us = 0u64;
        for (i, limit) in request.limits.iter().enumerate() {
            let gcra = Gcra::new(limit);
            let mut tat = gcra.clamp(entry.tat(i), now_us, latest_full_us);
            if let Some(&delta) = request.deltas.get(i).filter(|&&d| d != 0) {
                tat = gcra.adjust(tat, now_us, delta);
                entry.set_tat(i, tat);
            }
            full_at_us = full_at_us.max(gcra.time_of(tat));
        }
        entry.full_at_s = self.now_s(full_at_us.saturating_add(999_999));
        if !known {
            map.make_room(self.max_keys_per_shard, now_s);
            map.entries.insert(fp, fresh);
        }
    }
}

/// A 16-bit digest of a limit list, to notice when a key's limits change.
fn config_digest(limits: &[Limit]) -> u16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ limits.len() as u64;
    for limit in limits {
        for word in [
            limit.measure as u64,
            limit.amount,
            limit.window.as_secs(),
            u64::from(limit.window.subsec_nanos()),
        ] {
            h = (h ^ word).wrapping_mul(0x0100_0000_01b3);
            h ^= h >> 29;
        }
    }
    (h ^ (h >> 16) ^ (h >> 32) ^ (h >> 48)) as u16
}

impl RateLimitStore for MemoryRateLimitStore {
    type AcquireFuture = Ready<Result<Admission, StoreError>>;
    type SettleFuture = Ready<Result<(), StoreError>>;

    fn acquire(&self, key: RateLimitKey<'_>, request: &Acquire<'_>) -> Self::AcquireFuture {
        ready(Ok(self.inner.acquire(key, request)))
    }

    fn settle(&self, key: RateLimitKey<'_>, request: &Settle<'_>) -> Self::SettleFuture {
        self.inner.settle(key, request);
        ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 32);
        assert_eq!(std::mem::size_of::<(Fingerprint, Entry)>(), 48);
    }

    #[test]
    fn more_than_two_limits_spill() {
        let mut e = Entry::default();
        e.set_tat(4, 7);
        e.set_tat(2, 5);
        assert_eq!((e.tat(2), e.tat(3), e.tat(4), e.tat(9)), (5, 0, 7, 0));
    }

    #[test]
    fn config_digest_sees_changes() {
        let a = [Limit::requests_per_minute(60)];
        let b = [Limit::requests_per_minute(61)];
        let c = [Limit::tokens_per_minute(60)];
        assert_ne!(config_digest(&a), config_digest(&b));
        assert_ne!(config_digest(&a), config_digest(&c));
        assert_eq!(config_digest(&a), config_digest(&a.clone()));
    }
}
