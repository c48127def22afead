//! [`MemoryRateLimitStore`]: rate-limit state in process memory.
//!
//! Longer than most files (about 950 lines): the store's layout, its
//! bounded map, its multi-shard locking and its two operations are one
//! invariant (all or nothing under the same locks) best read in one place.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::clock::{SharedClock, TokioClock};
use crate::rate_limit::cell::{Cell, Now};
use crate::rate_limit::gcra::micros;
use crate::rate_limit::{
    Acquire, Admission, Limit, LimitState, LimitStates, RateLimitKey, RateLimitStore, Receipt,
    Settle, Verdict,
};
use crate::small::Small;
use crate::store::{StoreFuture, lock};

/// Rate-limit state in process memory: exact for one gateway instance.
///
/// ```
/// use std::time::Duration;
/// use tollgate::rate_limit::{Acquire, Limit, RateLimitKey, RateLimitStore, ScopeCharge, Verdict};
/// use tollgate::store::memory::MemoryRateLimitStore;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tollgate::store::StoreError> {
/// let store = MemoryRateLimitStore::builder()
///     .max_keys(100_000)
///     .sweep_interval(Duration::from_secs(30))
///     .build();
/// let limits = [Limit::requests_per_minute(2)];
/// let scopes = [ScopeCharge {
///     key: RateLimitKey::new("alice"),
///     limits: &limits,
///     costs: &[1],
///     max_concurrent: None,
/// }];
/// let one = Acquire { scopes: &scopes };
///
/// assert_eq!(store.acquire(&one).await?.verdict, Verdict::Admitted);
/// tokio::time::advance(Duration::from_secs(10)).await;
/// assert_eq!(store.acquire(&one).await?.verdict, Verdict::Admitted);
/// let third = store.acquire(&one).await?;
/// assert_eq!(third.verdict, Verdict::Limited);
/// // The first request leaves the (sliding) window after a minute.
/// assert_eq!(third.states[0].retry_after, Some(Duration::from_secs(51)));
/// # Ok(())
/// # }
/// ```
///
/// # Layout and cost
///
/// State is spread over shards (64 by default), each a `Mutex<HashMap>`, so
/// concurrent admissions of different keys rarely wait on each other and
/// there is no global lock; an admission locks the shards of its scopes
/// (all of a scope's state is in one shard), each once, in a fixed order.
/// A scope is held as a 128-bit fingerprint (a SipHash-1-3 digest under a
/// key drawn at random when the store is built, and a foldhash digest
/// under a second random seed): the store never keeps a key's text, and two live keys sharing a
/// fingerprint is far rarer than a hardware fault.
///
/// Each (scope, limit) state is one map entry keyed by a fingerprint derived
/// from the scope's and the limit's measure, window and algorithm, never its
/// amount: a limit raised or lowered keeps what was used, and two
/// configurations of one key share one count. An entry is 48 bytes with its
/// fingerprint: a [`Gcra`](crate::rate_limit::Algorithm::Gcra) or
/// [`Fixed`](crate::rate_limit::Algorithm::Fixed) state is two integers in
/// it, so with the map's own overhead that is 55 to 110 bytes per key and
/// limit (`benches/rate_limit.rs` and `tests/rate_limit_memory.rs` measure
/// it; at most 128). A [`Sliding`](crate::rate_limit::Algorithm::Sliding)
/// state adds its buckets on the heap: 16 bytes for each of the window's 60
/// buckets that has an admission (a key sending one request a second under
/// a per-minute limit uses all 60: about 1.1 KB; a key that sent one
/// request, about 110 bytes more than GCRA). A scope with a concurrency
/// limit holds one more entry while it has requests in flight.
///
/// # Bounded
///
/// - **Idle state is evicted.** A limit's state back to full, or a scope
///   with nothing in flight, is indistinguishable from one never seen, so it
///   is dropped. Each shard sweeps itself when it is used and its last
///   sweep is older than [`sweep_interval`](MemoryRateLimitStoreBuilder::sweep_interval)
///   (default 60 s), and gives memory back when it has shrunk to a quarter;
///   [`sweep`](MemoryRateLimitStore::sweep) sweeps every shard now.
/// - **A hard cap on states** ([`max_keys`](MemoryRateLimitStoreBuilder::max_keys),
///   default 1,000,000 (scope, limit) states, about 100 MB; split evenly
///   over the shards, so a shard may reach its share a little before the
///   store reaches the cap; a cap too small to give each shard 64 states
///   uses fewer shards, so that a key's limits always fit together). When a new state arrives at a full shard, the
///   shard first evicts its idle states (at most once a second); if none are
///   idle, it evicts, among 32 of its states, the one with nothing in flight
///   that will be back to full soonest. That limit's next request starts
///   from a full limit: the cap costs the least-loaded key a little
///   leniency, never a new caller its access, and a flood of new keys cannot
///   grow memory.
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
    /// The fingerprint's second half: foldhash under its own random seed
    /// (a few multiplications per 16 bytes, not a second SipHash); the
    /// first half is already a keyed 64-bit digest, this one only makes two
    /// keys sharing a fingerprint rarer still.
    second_half: foldhash::fast::RandomState,
    /// This store's [`Receipt`] issuer: nonzero, random, so that a receipt
    /// of another store is never taken for one of this store's.
    issuer: u64,
    clock: SharedClock,
    epoch: tokio::time::Instant,
    /// The Unix time of `epoch`, in µs (fixed windows are calendar ones).
    epoch_unix_us: u64,
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
#[derive(Clone, Copy, PartialEq, Eq, Default)]
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

/// One (scope, limit) state, or one scope's requests in flight: 32 bytes.
struct Entry {
    kind: Kind,
    /// Seconds since the epoch at which the state is back to full.
    full_at_s: u32,
}

enum Kind {
    Limit(Cell),
    /// Requests in flight in a scope.
    Slots(u32),
}

impl Entry {
    fn is_idle(&self, now_s: u32) -> bool {
        match self.kind {
            Kind::Slots(n) => n == 0,
            Kind::Limit(_) => self.full_at_s <= now_s,
        }
    }

    fn busy(&self) -> bool {
        matches!(self.kind, Kind::Slots(n) if n > 0)
    }
}

/// The least share of the cap a shard gets (see `build`).
const MIN_SHARD_SHARE: usize = 64;

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
    /// Fewer are used when [`max_keys`](Self::max_keys) would leave each
    /// fewer than 64 states.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// The most (scope, limit) states held at once (default 1,000,000); see
    /// the type's docs for what happens at the cap.
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
        // A scope's states all live in one shard, so a shard's share of the
        // cap must hold a key's limits and more: with a share of one or two
        // a key's own limits would evict each other on every request (each
        // then starting from full, so never refusing). Fewer shards for a
        // small cap.
        let most = (self.max_keys / MIN_SHARD_SHARE).max(1);
        let shards = self
            .shards
            .clamp(1, 1 << 16)
            .next_power_of_two()
            .min(1 << most.ilog2());
        let clock = self
            .clock
            .unwrap_or_else(|| Arc::new(TokioClock::new()) as SharedClock);
        let epoch = clock.now();
        let epoch_unix_us = u64::try_from(clock.now_unix().as_micros()).unwrap_or(u64::MAX);
        let sweep_interval_s =
            u32::try_from(self.sweep_interval.as_secs().max(1)).unwrap_or(u32::MAX);
        let hash_key = RandomState::new();
        let issuer = hash_key.hash_one("receipt issuer") | 1;
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
                hash_key,
                second_half: foldhash::fast::RandomState::default(),
                issuer,
                clock,
                epoch,
                epoch_unix_us,
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
    /// Default cap on (scope, limit) states.
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

    /// States held now (idle ones not yet swept included): one per scope and
    /// limit in use, and one per scope with requests in flight.
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

    /// Drops every idle state now, in every shard, and gives memory back to
    /// the allocator where a shard has shrunk. Returns the states dropped.
    pub fn sweep(&self) -> usize {
        let now_s = self.inner.now_s(self.inner.now().rel_us);
        self.inner
            .shards
            .iter()
            .map(|s| lock(&s.map).sweep(now_s))
            .sum()
    }
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

    /// The entry `fp`, made with `make` (after making room under `cap`) if
    /// there is none.
    fn entry_or_make_room(
        &mut self,
        fp: Fingerprint,
        make: impl FnOnce() -> Kind,
        cap: usize,
        now_s: u32,
    ) -> &mut Entry {
        // Below the cap there is room: no lookup to see whether it is needed.
        if self.entries.len() >= cap && !self.entries.contains_key(&fp) {
            self.make_room(cap, now_s);
        }
        self.entries.entry(fp).or_insert_with(|| Entry {
            kind: make(),
            full_at_s: 0,
        })
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
            .min_by_key(|(_, e)| (e.busy(), e.full_at_s))
            .map(|(k, _)| *k);
        if let Some(victim) = victim {
            self.entries.remove(&victim);
        }
    }
}

impl Inner {
    fn now(&self) -> Now {
        let elapsed = self.clock.now().saturating_duration_since(self.epoch);
        let rel_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        Now {
            rel_us,
            unix_us: self.epoch_unix_us.saturating_add(rel_us),
        }
    }

    fn now_s(&self, now_us: u64) -> u32 {
        u32::try_from(now_us / 1_000_000).unwrap_or(u32::MAX)
    }

    fn fingerprint(&self, key: RateLimitKey<'_>) -> Fingerprint {
        fn feed<H: Hasher>(mut h: H, key: RateLimitKey<'_>) -> u64 {
            // 0xFF never occurs in UTF-8: the parts cannot run into each other.
            h.write(key.scope.as_bytes());
            h.write_u8(0xff);
            h.write(key.id.as_bytes());
            if let Some(model) = key.model {
                h.write_u8(0xff);
                h.write(model.as_bytes());
            }
            h.finish()
        }
        Fingerprint(
            feed(self.hash_key.build_hasher(), key),
            feed(self.second_half.build_hasher(), key),
        )
    }

    fn shard_of(&self, fp: Fingerprint) -> usize {
        // The mask keeps the index below the shard count, a power of two.
        (fp.1 & self.shard_mask) as usize
    }

    /// Locks the shards of `scopes`, each once, in index order (so two
    /// admissions sharing shards never wait on each other in a cycle).
    fn lock_shards(&self, scopes: &[Fingerprint], now_s: u32) -> Locked<'_> {
        let mut order = Small::<usize, 8>::new(scopes.len());
        for (slot, fp) in order.iter_mut().zip(scopes) {
            *slot = self.shard_of(*fp);
        }
        order.sort_unstable();
        let mut locked = Locked {
            inline: Default::default(),
            more: Vec::new(),
        };
        let mut last = None;
        for (n, &index) in order.iter().enumerate() {
            if last == Some(index) {
                continue;
            }
            last = Some(index);
            let guard = self.lock_swept(index, now_s);
            match locked.inline.get_mut(n) {
                Some(slot) => *slot = Some((index, guard)),
                None => locked.more.push((index, guard)),
            }
        }
        locked
    }

    /// Locks shard `index`, sweeping it first when its last sweep is old.
    fn lock_swept(&self, index: usize, now_s: u32) -> MutexGuard<'_, ShardMap> {
        let mut guard = lock(&self.shards[index].map);
        if now_s.saturating_sub(guard.last_sweep_s) >= self.sweep_interval_s {
            guard.sweep(now_s);
        }
        guard
    }

    fn entry_full_at(&self, entry: &Entry, limit: &Limit) -> u32 {
        match &entry.kind {
            Kind::Limit(cell) => {
                let full_at_us = cell.full_at(limit, self.epoch_unix_us);
                self.now_s(full_at_us.saturating_add(999_999))
            }
            Kind::Slots(_) => 0,
        }
    }

    fn acquire(&self, request: &Acquire<'_>) -> Admission {
        let now = self.now();
        let now_s = self.now_s(now.rel_us);
        let mut fps = Small::<Fingerprint, 4>::new(request.scopes.len());
        for (fp, scope) in fps.iter_mut().zip(request.scopes) {
            *fp = self.fingerprint(scope.key);
        }
        // One scope (most requests): its shard's guard is all there is to
        // hold, with no `Locked` to build, move and drop.
        if let &[fp] = &fps[..] {
            let mut guard = self.lock_swept(self.shard_of(fp), now_s);
            return self.acquire_locked(request, &fps, &mut guard, now, now_s);
        }
        let mut locked = self.lock_shards(&fps, now_s);
        self.acquire_locked(request, &fps, &mut locked, now, now_s)
    }

    /// [`acquire`](Self::acquire) with the shards of `fps` locked.
    fn acquire_locked(
        &self,
        request: &Acquire<'_>,
        fps: &[Fingerprint],
        locked: &mut impl ShardMaps,
        now: Now,
        now_s: u32,
    ) -> Admission {
        let scopes = request.scopes;
        // The state keys of the first limits, kept from the check for the
        // charge (a request nearly always has at most four).
        let mut keys = [Fingerprint::default(); 4];
        let mut n = 0;
        let mut states = LimitStates::new();
        let mut admitted = true;
        let mut busy = None;
        for (i, scope) in scopes.iter().enumerate() {
            let map = locked.map(self.shard_of(fps[i]));
            for (limit, &cost) in scope.limits.iter().zip(scope.costs) {
                let key = fps[i].of_limit(limit);
                if let Some(slot) = keys.get_mut(n) {
                    *slot = key;
                }
                n += 1;
                let outcome = match map.entries.get(&key) {
                    Some(Entry {
                        kind: Kind::Limit(cell),
                        ..
                    }) => cell.check(limit, now, cost),
                    _ => Cell::empty(limit).check(limit, now, cost),
                };
                admitted &= outcome.admitted;
                states.push(LimitState {
                    remaining: outcome.remaining,
                    reset: micros(outcome.reset_us),
                    retry_after: outcome.retry_after_us.map(micros),
                });
            }
            if let Some(max) = scope.max_concurrent {
                let in_flight = match map.entries.get(&fps[i].of_slots()) {
                    Some(Entry {
                        kind: Kind::Slots(n),
                        ..
                    }) => *n,
                    _ => 0,
                };
                if in_flight >= max && busy.is_none() {
                    busy = Some(i);
                }
            }
        }
        let verdict = match (admitted, busy) {
            (false, _) => Verdict::Limited,
            (true, Some(_)) => Verdict::Concurrency,
            (true, None) => Verdict::Admitted,
        };
        if verdict != Verdict::Admitted {
            // Nothing is charged: limits that would have admitted report
            // their state as it is, not as the charge would have left it.
            let mut n = 0;
            for (i, scope) in scopes.iter().enumerate() {
                let map = locked.map(self.shard_of(fps[i]));
                for limit in scope.limits.iter().take(scope.costs.len()) {
                    if states[n].admits() {
                        let outcome = match map.entries.get(&fps[i].of_limit(limit)) {
                            Some(Entry {
                                kind: Kind::Limit(cell),
                                ..
                            }) => cell.check(limit, now, 0),
                            _ => Cell::empty(limit).check(limit, now, 0),
                        };
                        states[n].remaining = outcome.remaining;
                        states[n].reset = micros(outcome.reset_us);
                    }
                    n += 1;
                }
            }
            return Admission {
                verdict,
                states,
                busy: busy.filter(|_| verdict == Verdict::Concurrency),
                receipt: Receipt::NONE,
            };
        }
        let mut n = 0;
        for (i, scope) in scopes.iter().enumerate() {
            let map = locked.map(self.shard_of(fps[i]));
            for (limit, &cost) in scope.limits.iter().zip(scope.costs) {
                let kept = keys.get(n).copied();
                n += 1;
                if cost == 0 {
                    continue;
                }
                let entry = map.entry_or_make_room(
                    kept.unwrap_or_else(|| fps[i].of_limit(limit)),
                    || Kind::Limit(Cell::empty(limit)),
                    self.max_keys_per_shard,
                    now_s,
                );
                if let Kind::Limit(cell) = &mut entry.kind {
                    cell.charge(limit, now, cost);
                }
                entry.full_at_s = self.entry_full_at(entry, limit);
            }
            if scope.max_concurrent.is_some() {
                let entry = map.entry_or_make_room(
                    fps[i].of_slots(),
                    || Kind::Slots(0),
                    self.max_keys_per_shard,
                    now_s,
                );
                if let Kind::Slots(n) = &mut entry.kind {
                    *n = n.saturating_add(1);
                }
            }
        }
        Admission {
            verdict,
            states,
            busy: None,
            receipt: self.receipt(fps.first().copied()),
        }
    }

    /// The receipt of an admission: its first scope's fingerprint, which
    /// its settlement then need not compute again.
    fn receipt(&self, first: Option<Fingerprint>) -> Receipt {
        match first {
            Some(Fingerprint(a, b)) => {
                Receipt::new(self.issuer, u128::from(a) << 64 | u128::from(b))
            }
            None => Receipt::NONE,
        }
    }

    /// The fingerprint of the scope at `index` of a settlement: the
    /// admission's own for the first scope, when its receipt is this
    /// store's.
    fn settled_fingerprint(
        &self,
        receipt: Receipt,
        index: usize,
        key: RateLimitKey<'_>,
    ) -> Fingerprint {
        match (index, receipt.issuer()) {
            (0, Some(issuer)) if issuer == self.issuer => {
                let value = receipt.value();
                Fingerprint((value >> 64) as u64, value as u64)
            }
            _ => self.fingerprint(key),
        }
    }

    fn settle(&self, request: &Settle<'_>) {
        let now = self.now();
        let now_s = self.now_s(now.rel_us);
        let mut fps = Small::<Fingerprint, 4>::new(request.scopes.len());
        for (i, (fp, scope)) in fps.iter_mut().zip(request.scopes).enumerate() {
            *fp = self.settled_fingerprint(request.receipt, i, scope.key);
        }
        // One scope: its guard alone, as in `acquire`.
        if let &[fp] = &fps[..] {
            let mut guard = self.lock_swept(self.shard_of(fp), now_s);
            return self.settle_locked(request, &fps, &mut guard, now, now_s);
        }
        let mut locked = self.lock_shards(&fps, now_s);
        self.settle_locked(request, &fps, &mut locked, now, now_s);
    }

    /// [`settle`](Self::settle) with the shards of `fps` locked.
    fn settle_locked(
        &self,
        request: &Settle<'_>,
        fps: &[Fingerprint],
        locked: &mut impl ShardMaps,
        now: Now,
        now_s: u32,
    ) {
        for (i, scope) in request.scopes.iter().enumerate() {
            let map = locked.map(self.shard_of(fps[i]));
            if scope.release
                && let Some(Entry {
                    kind: Kind::Slots(n),
                    ..
                }) = map.entries.get_mut(&fps[i].of_slots())
            {
                *n = n.saturating_sub(1);
            }
            for (limit, &delta) in scope.limits.iter().zip(scope.deltas) {
                if delta == 0 {
                    continue;
                }
                let fp = fps[i].of_limit(limit);
                let entry = match map.entries.get_mut(&fp) {
                    Some(entry) => entry,
                    // Nothing to refund on a state that is gone (it was
                    // full); charges stand.
                    None if delta < 0 => continue,
                    None => map.entry_or_make_room(
                        fp,
                        || Kind::Limit(Cell::empty(limit)),
                        self.max_keys_per_shard,
                        now_s,
                    ),
                };
                if let Kind::Limit(cell) = &mut entry.kind {
                    cell.adjust(limit, now, delta);
                }
                entry.full_at_s = self.entry_full_at(entry, limit);
            }
        }
    }
}

/// The locked shards an operation reads and writes.
trait ShardMaps {
    /// The map of shard `index`, which is locked.
    fn map(&mut self, index: usize) -> &mut ShardMap;
}

/// One scope's operation holds one shard: every index is that one.
impl ShardMaps for MutexGuard<'_, ShardMap> {
    fn map(&mut self, _index: usize) -> &mut ShardMap {
        self
    }
}

/// The shards an operation of several scopes holds, each locked once.
struct Locked<'a> {
    inline: [Option<(usize, MutexGuard<'a, ShardMap>)>; 8],
    more: Vec<(usize, MutexGuard<'a, ShardMap>)>,
}

impl ShardMaps for Locked<'_> {
    fn map(&mut self, index: usize) -> &mut ShardMap {
        let found = self
            .inline
            .iter_mut()
            .flatten()
            .chain(self.more.iter_mut())
            .find(|(i, _)| *i == index);
        match found {
            Some((_, guard)) => guard,
            // Every scope's shard is locked before it is looked up.
            None => unreachable!("shard {index} is not locked"),
        }
    }
}

impl Fingerprint {
    /// The fingerprint of a limit's state in this scope: derived from the
    /// scope's by its measure, window and algorithm (not its amount).
    fn of_limit(self, limit: &Limit) -> Fingerprint {
        let nanos = limit.window.as_nanos();
        let tag = (limit.measure as u64) * 4 + limit.algorithm as u64 + 1;
        let word = splitmix(splitmix(splitmix(nanos as u64) ^ (nanos >> 64) as u64) ^ tag);
        self.derive(word)
    }

    /// The fingerprint of the scope's requests in flight.
    fn of_slots(self) -> Fingerprint {
        self.derive(0x2545_f491_4f6c_dd1d)
    }

    fn derive(self, word: u64) -> Fingerprint {
        Fingerprint(
            self.0 ^ word,
            self.1 ^ splitmix(word ^ 0x5851_f42d_4c95_7f2d),
        )
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl RateLimitStore for MemoryRateLimitStore {
    fn acquire(&self, request: &Acquire<'_>) -> StoreFuture<Admission> {
        StoreFuture::ready(Ok(self.inner.acquire(request)))
    }

    fn settle(&self, request: &Settle<'_>) -> StoreFuture<()> {
        self.inner.settle(request);
        StoreFuture::ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 32);
        assert_eq!(std::mem::size_of::<(Fingerprint, Entry)>(), 48);
    }

    #[test]
    fn a_small_cap_uses_fewer_shards() {
        let shards = |max_keys| {
            MemoryRateLimitStore::builder()
                .max_keys(max_keys)
                .build()
                .inner
                .shards
                .len()
        };
        assert_eq!(shards(2), 1);
        assert_eq!(shards(200), 2);
        assert_eq!(shards(1_000_000), MemoryRateLimitStore::DEFAULT_SHARDS);
    }

    /// With a cap of a few states, a key's limits must not evict each
    /// other (each would then start from full and never refuse).
    #[tokio::test(start_paused = true)]
    async fn a_small_cap_holds_a_keys_limits() {
        let store = MemoryRateLimitStore::builder().max_keys(3).build();
        let limits = [
            Limit::requests_per_minute(2),
            Limit::requests_per_hour(100),
            Limit::tokens_per_minute(1000),
        ];
        let scopes = [crate::rate_limit::ScopeCharge {
            key: RateLimitKey::new("small"),
            limits: &limits,
            costs: &[1, 1, 10],
            max_concurrent: None,
        }];
        let acquire = Acquire { scopes: &scopes };
        let verdicts: Vec<Verdict> = (0..3)
            .map(|_| store.inner.acquire(&acquire).verdict)
            .collect();
        assert_eq!(
            verdicts,
            [Verdict::Admitted, Verdict::Admitted, Verdict::Limited]
        );
        assert_eq!(store.len(), 3);
    }

    /// A settlement finds the admission's scope from its receipt, and from
    /// the scope itself when the receipt is none or another store's: the
    /// refund lands on the same state either way.
    #[tokio::test(start_paused = true)]
    async fn a_receipt_is_used_only_by_its_own_store() {
        let store = MemoryRateLimitStore::new();
        let other = MemoryRateLimitStore::new();
        let limits = [Limit::tokens_per_minute(1000)];
        let key = RateLimitKey::new("alice").with_model(Some("gpt-4o"));
        let charge = |cost: u64| {
            let scopes = [crate::rate_limit::ScopeCharge {
                key,
                limits: &limits,
                costs: &[cost],
                max_concurrent: None,
            }];
            store.inner.acquire(&Acquire { scopes: &scopes })
        };
        let refund = |receipt: Receipt| {
            let scopes = [crate::rate_limit::ScopeSettle {
                key,
                limits: &limits,
                deltas: &[-100],
                release: false,
            }];
            store.inner.settle(&Settle {
                scopes: &scopes,
                receipt,
            });
        };
        let mine = charge(0).receipt;
        assert_eq!(mine.issuer(), Some(store.inner.issuer));
        assert_ne!(store.inner.issuer, other.inner.issuer);
        let foreign = Receipt::new(other.inner.issuer, mine.value());
        let wrong_value = Receipt::new(store.inner.issuer, mine.value() ^ 1);
        for receipt in [mine, Receipt::NONE, foreign] {
            assert_eq!(charge(300).states[0].remaining, 700);
            refund(receipt);
            // Refunded 100 of the 300: the next charge of 0 sees 800 left.
            assert_eq!(charge(0).states[0].remaining, 800, "{receipt:?}");
            refund(Receipt::NONE);
            refund(Receipt::NONE);
            assert_eq!(charge(0).states[0].remaining, 1000);
        }
        // The store trusts its own receipts: one it did not make for this
        // scope refunds nothing here.
        charge(300);
        refund(wrong_value);
        assert_eq!(charge(0).states[0].remaining, 700);
    }

    #[test]
    fn limit_states_differ_by_measure_window_and_algorithm_only() {
        let fp = Fingerprint(1, 2);
        let a = Limit::requests_per_minute(60);
        assert!(fp.of_limit(&a) == fp.of_limit(&Limit::requests_per_minute(7).burst(3)));
        for other in [
            Limit::tokens_per_minute(60),
            Limit::requests_per_hour(60),
            a.algorithm(crate::rate_limit::Algorithm::Gcra),
            a.algorithm(crate::rate_limit::Algorithm::Fixed),
        ] {
            assert!(fp.of_limit(&a) != fp.of_limit(&other), "{other:?}");
            assert!(fp.of_limit(&other) != fp.of_slots());
        }
    }
}
