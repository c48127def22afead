//! The in-process budget ledger: [`MemoryLedger`].

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, ready};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::budget::{
    BudgetMode, BudgetScope, BudgetSpec, BudgetStatus, Ledger, Money, Period, PeriodWindow,
    Reservation, ReservationId, ReserveOutcome, ReservePolicy, Settlement,
};
use crate::clock::{Clock, SharedClock, TokioClock};
use crate::store::StoreError;

/// A [`Ledger`] in this process's memory: the default for a single gateway
/// instance (several instances need a shared ledger, such as Redis).
///
/// - **Sharded**: budgets and holds are spread over mutex-guarded shards, so
///   requests of different keys rarely contend. No lock is held across an
///   `.await`; every operation completes before its future is first polled.
/// - **Bounded**: at most [`max_budgets`](Self::max_budgets) budgets (default
///   1,000,000) and [`max_reservations`](Self::max_reservations) holds in
///   flight (default 1,000,000). When full, budgets that carry no
///   information (a past period's spend, nothing held) are evicted; prepaid
///   balances and current spend never are. If nothing can be evicted the
///   operation fails with [`StoreError::Unavailable`], which the layer turns
///   into a 503 by default: a ledger never forgets money to make room.
/// - **Clocked**: periods come from a [`Clock`](crate::clock::Clock),
///   [`TokioClock`] by default, so a paused tokio runtime drives month ends
///   in tests.
/// - **Leased**: a hold not settled within [`lease`](Self::lease) (default
///   one hour) is released, so a leaked hold cannot lock a budget forever.
///
/// Cloning is cheap and shares the state: keep a clone to top up balances or
/// read budgets while a `BudgetLayer` uses another.
///
/// ```
/// use std::sync::Arc;
/// use tollgate::budget::{BudgetScope, BudgetSpec, Ledger, Money, ReserveOutcome, ReservePolicy};
/// use tollgate::store::memory::MemoryLedger;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tollgate::store::StoreError> {
/// let ledger = MemoryLedger::new();
/// let wallet = BudgetSpec::balance(BudgetScope::Org("acme".into()), Money::from_usd(5));
/// ledger.top_up(&wallet, Money::from_usd(10)).await?;
///
/// let budgets: Arc<[BudgetSpec]> = Arc::new([wallet.clone()]);
/// let outcome = ledger.reserve(&budgets, Money::from_usd(1), ReservePolicy::Strict).await?;
/// let ReserveOutcome::Reserved { reservation, .. } = outcome else { unreachable!() };
/// ledger.settle(&reservation, "0.25".parse().unwrap()).await?;
///
/// let status = ledger.read(&wallet).await?;
/// assert_eq!(status.remaining().to_string(), "$14.75");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryLedger {
    inner: Arc<Inner>,
}

struct Inner {
    clock: SharedClock,
    lease: Duration,
    max_budgets: usize,
    max_reservations: usize,
    budgets: Box<[Mutex<BudgetShard>]>,
    holds: Box<[Mutex<HoldShard>]>,
    /// Per hold shard: when (nanoseconds since the epoch) to sweep next.
    next_sweep: Box<[AtomicU64]>,
    next_id: AtomicU64,
    hasher: ScopeHashing,
}

/// Maps keyed by a `u64` that is already a hash (or a sequential id): one
/// multiply instead of hashing again.
type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Hashes budget scopes: a multiply-fold over 8-byte words, seeded per
/// ledger. Much cheaper than SipHash on the hot path; scopes are key, team
/// and org ids the operator issues, not text a client chooses, and a
/// collision only puts two accounts in one bucket.
#[derive(Clone, Copy)]
struct ScopeHashing {
    seed: u64,
}

impl ScopeHashing {
    fn new() -> ScopeHashing {
        ScopeHashing {
            seed: RandomState::new().hash_one(0x5eed_u64) | 1,
        }
    }
}

impl BuildHasher for ScopeHashing {
    type Hasher = ScopeHasher;

    fn build_hasher(&self) -> ScopeHasher {
        ScopeHasher(self.seed)
    }
}

struct ScopeHasher(u64);

impl ScopeHasher {
    fn mix(&mut self, word: u64) {
        let m = u128::from(self.0 ^ word) * 0x9e37_79b9_7f4a_7c15_u128;
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

impl Hasher for ScopeHasher {
    fn finish(&self) -> u64 {
        let m = u128::from(self.0) * 0xa076_1d64_78bd_642f_u128;
        (m as u64) ^ ((m >> 64) as u64)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.mix(u64::from_le_bytes(word.try_into().unwrap_or_default()));
        }
        let rest = words.remainder();
        let mut tail = [0u8; 8];
        tail[..rest.len()].copy_from_slice(rest);
        self.mix(u64::from_le_bytes(tail) ^ ((rest.len() as u64) << 59));
    }

    fn write_u8(&mut self, n: u8) {
        self.mix(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    fn write_isize(&mut self, n: isize) {
        self.mix(n as u64);
    }
}

/// Accounts by the hash of their scope; a bucket holds every scope of one
/// hash, so a collision costs a comparison, never a merged account.
#[derive(Default)]
struct BudgetShard {
    buckets: IdMap<Vec<(BudgetScope, Account)>>,
    len: usize,
}

impl BudgetShard {
    fn get_mut(&mut self, hash: u64, scope: &BudgetScope) -> Option<&mut Account> {
        self.buckets
            .get_mut(&hash)?
            .iter_mut()
            .find(|(s, _)| s == scope)
            .map(|(_, a)| a)
    }

    fn contains(&self, hash: u64, scope: &BudgetScope) -> bool {
        self.buckets
            .get(&hash)
            .is_some_and(|b| b.iter().any(|(s, _)| s == scope))
    }

    /// The account of `spec`, opened if new (making room for it first).
    fn account(
        &mut self,
        hash: u64,
        spec: &BudgetSpec,
        now: Duration,
        max: usize,
    ) -> Result<&mut Account, StoreError> {
        if self.len >= max && !self.contains(hash, &spec.scope) {
            self.make_room(max, now)?;
        }
        let bucket = self.buckets.entry(hash).or_default();
        let at = match bucket.iter().position(|(s, _)| *s == spec.scope) {
            Some(at) => at,
            None => {
                bucket.push((spec.scope.clone(), Account::new(spec, now)));
                self.len += 1;
                bucket.len() - 1
            }
        };
        Ok(&mut bucket[at].1)
    }

    /// Makes room for one more account by evicting the idle ones; fails if
    /// none is idle.
    fn make_room(&mut self, max: usize, now: Duration) -> Result<(), StoreError> {
        self.buckets.retain(|_, bucket| {
            bucket.retain(|(_, a)| !a.is_idle(now));
            !bucket.is_empty()
        });
        self.len = self.buckets.values().map(Vec::len).sum();
        if self.len < max {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                "budget ledger is full: no idle budget to evict".into(),
            ))
        }
    }
}

#[derive(Default)]
struct HoldShard {
    holds: IdMap<Hold>,
}

struct Hold {
    amount: Money,
    /// Clamped below the request's worst case (Bounded).
    partial: bool,
    expires: Duration,
    budgets: Arc<[BudgetSpec]>,
}

impl Hold {
    fn new(amount: Money, partial: bool, budgets: &Arc<[BudgetSpec]>, expires: Duration) -> Hold {
        Hold {
            amount,
            partial,
            expires,
            budgets: budgets.clone(),
        }
    }
}

/// One budget's books.
#[derive(Debug, Clone, Copy)]
struct Account {
    mode: BudgetMode,
    period: Period,
    window: PeriodWindow,
    /// Budget: the spec's limit. Balance: opening + top-ups.
    limit: Money,
    spent: Money,
    reserved: Money,
    /// Partial (clamped) holds in flight: at most one is admitted at a time,
    /// which is what bounds a `Bounded` overshoot to one request's excess.
    partial: u32,
}

impl Account {
    fn new(spec: &BudgetSpec, now: Duration) -> Account {
        Account {
            mode: spec.mode,
            period: spec.period,
            window: window_of(spec, now),
            limit: spec.limit,
            spent: Money::ZERO,
            reserved: Money::ZERO,
            partial: 0,
        }
    }

    /// Brings the books to `now` and to the current spec.
    fn refresh(&mut self, spec: &BudgetSpec, now: Duration) {
        if self.mode != spec.mode {
            // The scope changed from budget to balance or back: new books,
            // but holds in flight still count.
            *self = Account {
                reserved: self.reserved,
                partial: self.partial,
                ..Account::new(spec, now)
            };
            return;
        }
        if spec.mode == BudgetMode::Budget {
            self.limit = spec.limit;
            if self.period != spec.period || self.window.has_ended(now) {
                let window = window_of(spec, now);
                if window.start != self.window.start {
                    self.spent = Money::ZERO;
                }
                self.window = window;
                self.period = spec.period;
            }
        }
    }

    fn unhold(&mut self, amount: Money, partial: bool) {
        self.reserved = (self.reserved - amount).max(Money::ZERO);
        if partial {
            self.partial = self.partial.saturating_sub(1);
        }
    }

    fn status(&self) -> BudgetStatus {
        BudgetStatus {
            mode: self.mode,
            limit: self.limit,
            spent: self.spent,
            reserved: self.reserved,
            period: self.window,
        }
    }

    /// Whether evicting this account loses nothing.
    fn is_idle(&self, now: Duration) -> bool {
        self.reserved == Money::ZERO
            && self.partial == 0
            && self.mode == BudgetMode::Budget
            && (self.spent == Money::ZERO || self.window.has_ended(now))
    }
}

fn window_of(spec: &BudgetSpec, now: Duration) -> PeriodWindow {
    match spec.mode {
        BudgetMode::Budget => spec.period.window(now),
        BudgetMode::Balance => PeriodWindow::NEVER,
    }
}

impl Default for MemoryLedger {
    fn default() -> Self {
        MemoryLedger::new()
    }
}

impl fmt::Debug for MemoryLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLedger")
            .field("shards", &self.inner.budgets.len())
            .field("lease", &self.inner.lease)
            .field("max_budgets", &self.inner.max_budgets)
            .field("max_reservations", &self.inner.max_reservations)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Config {
    clock: SharedClock,
    lease: Duration,
    max_budgets: usize,
    max_reservations: usize,
    shards: usize,
}

impl MemoryLedger {
    /// Default hold lease: one hour (longer than any sane streamed response).
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(3600);
    /// Default bound on budgets kept: 1,000,000.
    pub const DEFAULT_MAX_BUDGETS: usize = 1_000_000;
    /// Default bound on holds in flight: 1,000,000.
    pub const DEFAULT_MAX_RESERVATIONS: usize = 1_000_000;

    /// An empty ledger on [`TokioClock`], with the defaults above and 4
    /// shards per available CPU (at least 16).
    pub fn new() -> Self {
        let shards = std::thread::available_parallelism()
            .map(|n| (n.get() * 4).next_power_of_two())
            .unwrap_or(16)
            .max(16);
        MemoryLedger::build(Config {
            clock: Arc::new(TokioClock::new()),
            lease: Self::DEFAULT_LEASE,
            max_budgets: Self::DEFAULT_MAX_BUDGETS,
            max_reservations: Self::DEFAULT_MAX_RESERVATIONS,
            shards,
        })
    }

    fn build(config: Config) -> Self {
        let shards = config.shards.clamp(1, 1 << 16).next_power_of_two();
        let now = config.clock.now_unix();
        MemoryLedger {
            inner: Arc::new(Inner {
                clock: config.clock,
                lease: config.lease,
                max_budgets: config.max_budgets.div_ceil(shards),
                max_reservations: config.max_reservations.div_ceil(shards),
                budgets: (0..shards).map(|_| Mutex::default()).collect(),
                holds: (0..shards).map(|_| Mutex::default()).collect(),
                next_sweep: (0..shards).map(|_| AtomicU64::new(nanos(now))).collect(),
                next_id: AtomicU64::new(1),
                hasher: ScopeHashing::new(),
            }),
        }
    }

    fn reconfigure(self, f: impl FnOnce(&mut Config)) -> Self {
        let i = &self.inner;
        let shards = i.budgets.len();
        let mut config = Config {
            clock: i.clock.clone(),
            lease: i.lease,
            max_budgets: i.max_budgets * shards,
            max_reservations: i.max_reservations * shards,
            shards,
        };
        f(&mut config);
        MemoryLedger::build(config)
    }

    /// Uses `clock` for periods and leases. Configure before use: each
    /// setter returns an empty ledger.
    pub fn with_clock(self, clock: impl Clock) -> Self {
        let clock: SharedClock = Arc::new(clock);
        self.reconfigure(|c| c.clock = clock)
    }

    /// How long a hold lives without being settled (default one hour).
    pub fn lease(self, lease: Duration) -> Self {
        self.reconfigure(|c| c.lease = lease)
    }

    /// At most about `max` budgets are kept (default 1,000,000; the bound
    /// is applied per shard).
    pub fn max_budgets(self, max: usize) -> Self {
        self.reconfigure(|c| c.max_budgets = max)
    }

    /// At most about `max` holds are in flight (default 1,000,000; the bound
    /// is applied per shard).
    pub fn max_reservations(self, max: usize) -> Self {
        self.reconfigure(|c| c.max_reservations = max)
    }

    /// Spreads the state over `shards` locks, rounded up to a power of two
    /// (default: 4 per CPU, at least 16).
    pub fn shards(self, shards: usize) -> Self {
        self.reconfigure(|c| c.shards = shards)
    }

    /// How many budgets the ledger keeps books for.
    pub fn budget_count(&self) -> usize {
        self.inner.budgets.iter().map(|s| lock(s).len).sum()
    }

    /// How many holds are in flight.
    pub fn reservation_count(&self) -> usize {
        self.inner.holds.iter().map(|s| lock(s).holds.len()).sum()
    }

    fn now(&self) -> Duration {
        self.inner.clock.now_unix()
    }

    fn hashes(&self, budgets: &[BudgetSpec]) -> Small {
        let mut hashes = Small::new(budgets.len());
        for (slot, spec) in hashes.iter_mut().zip(budgets) {
            *slot = self.inner.hasher.hash_one(&spec.scope);
        }
        hashes
    }

    fn shard_of(&self, hash: u64) -> usize {
        (hash >> 32) as usize & (self.inner.budgets.len() - 1)
    }

    /// Locks the shards of `hashes` in ascending order, so requests naming
    /// the same budgets in different orders cannot deadlock.
    fn lock_budgets(&self, hashes: &[u64]) -> Locked<'_> {
        let first = hashes.first().map_or(0, |h| self.shard_of(*h));
        if hashes.iter().all(|h| self.shard_of(*h) == first) {
            return Locked::One(lock(&self.inner.budgets[first]));
        }
        let mut shards: Vec<usize> = hashes.iter().map(|h| self.shard_of(*h)).collect();
        shards.sort_unstable();
        shards.dedup();
        Locked::Many(
            shards
                .into_iter()
                .map(|i| (i, lock(&self.inner.budgets[i])))
                .collect(),
        )
    }

    /// Releases the holds of shard `shard` whose lease ran out; at most
    /// every quarter lease, and checked without a lock in between.
    fn sweep(&self, shard: usize, now: Duration) {
        let due = &self.inner.next_sweep[shard];
        let next = due.load(Ordering::Relaxed);
        if nanos(now) < next {
            return;
        }
        let after = nanos(now + self.inner.lease / 4);
        if due
            .compare_exchange(next, after, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another thread sweeps
        }
        let mut expired = Vec::new();
        lock(&self.inner.holds[shard]).holds.retain(|_, hold| {
            let keep = hold.expires > now;
            if !keep {
                expired.push((hold.amount, hold.partial, hold.budgets.clone()));
            }
            keep
        });
        for (amount, partial, budgets) in expired {
            tracing::warn!(%amount, "budget reservation lease expired; released");
            self.unhold(&budgets, amount, partial, now);
        }
    }

    /// The hold shard `shard`, locked, if it has room for one more hold.
    fn hold_room(&self, shard: usize) -> Result<MutexGuard<'_, HoldShard>, StoreError> {
        let holds = lock(&self.inner.holds[shard]);
        if holds.holds.len() >= self.inner.max_reservations {
            return Err(StoreError::Unavailable(
                "budget ledger holds too many reservations in flight".into(),
            ));
        }
        Ok(holds)
    }

    fn unhold(&self, budgets: &[BudgetSpec], amount: Money, partial: bool, now: Duration) {
        let hashes = self.hashes(budgets);
        let mut locked = self.lock_budgets(&hashes);
        for (i, spec) in budgets.iter().enumerate() {
            if is_repeat(budgets, &hashes, i) {
                continue;
            }
            let shard = locked.shard(self.shard_of(hashes[i]));
            if let Some(account) = shard.get_mut(hashes[i], &spec.scope) {
                account.unhold(amount, partial);
                account.refresh(spec, now);
            }
        }
    }

    fn reserve_now(
        &self,
        budgets: &Arc<[BudgetSpec]>,
        amount: Money,
        policy: ReservePolicy,
    ) -> Result<ReserveOutcome, StoreError> {
        let now = self.now();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let hold_shard = id as usize & (self.inner.holds.len() - 1);
        self.sweep(hold_shard, now);
        let amount = amount.max(Money::ZERO);
        let hashes = self.hashes(budgets);
        let mut locked = self.lock_budgets(&hashes);
        let max = self.inner.max_budgets;

        // Check every budget before holding anything on any. (Accounts
        // opened here for a refused request hold nothing and are evictable.)
        let mut tightest: Option<(usize, BudgetStatus)> = None;
        let mut blocking: Option<(usize, BudgetStatus)> = None;
        for (i, spec) in budgets.iter().enumerate() {
            if is_repeat(budgets, &hashes, i) {
                continue;
            }
            let shard = locked.shard(self.shard_of(hashes[i]));
            let account = shard.account(hashes[i], spec, now, max)?;
            account.refresh(spec, now);
            let status = account.status();
            let remaining = status.remaining();
            if !remaining.is_positive() || (policy == ReservePolicy::Strict && amount > remaining) {
                return Ok(ReserveOutcome::Denied { index: i, status });
            }
            if budgets.len() == 1 {
                // Nothing else to check: hold at once.
                let held = match policy {
                    ReservePolicy::Bounded => amount.min(remaining),
                    ReservePolicy::Strict => amount,
                };
                let partial = held < amount;
                if partial && account.partial > 0 {
                    return Ok(ReserveOutcome::Denied { index: i, status });
                }
                // Lock order: budget shards, then the hold shard.
                let mut holds = self.hold_room(hold_shard)?;
                account.reserved = account.reserved + held;
                account.partial += u32::from(partial);
                let hold = Hold::new(held, partial, budgets, now + self.inner.lease);
                holds.holds.insert(id, hold);
                return Ok(reserved(id, held, budgets, (i, status)));
            }
            if account.partial > 0 && blocking.is_none() {
                blocking = Some((i, status));
            }
            if tightest.is_none_or(|(_, t)| remaining < t.remaining()) {
                tightest = Some((i, status));
            }
        }
        let Some(tightest) = tightest else {
            // No budgets at all: nothing limits the request.
            let hold = Hold::new(amount, false, budgets, now + self.inner.lease);
            self.hold_room(hold_shard)?.holds.insert(id, hold);
            let fresh = BudgetStatus::fresh(&NO_BUDGET, PeriodWindow::NEVER);
            return Ok(reserved(id, amount, budgets, (0, fresh)));
        };
        let held = match policy {
            ReservePolicy::Bounded => amount.min(tightest.1.remaining()),
            ReservePolicy::Strict => amount,
        };
        let partial = held < amount;
        if let (true, Some((index, status))) = (partial, blocking) {
            return Ok(ReserveOutcome::Denied { index, status });
        }
        let mut holds = self.hold_room(hold_shard)?;
        for (i, spec) in budgets.iter().enumerate() {
            if is_repeat(budgets, &hashes, i) {
                continue;
            }
            let shard = locked.shard(self.shard_of(hashes[i]));
            if let Some(account) = shard.get_mut(hashes[i], &spec.scope) {
                account.reserved = account.reserved + held;
                account.partial += u32::from(partial);
            }
        }
        let hold = Hold::new(held, partial, budgets, now + self.inner.lease);
        holds.holds.insert(id, hold);
        Ok(reserved(id, held, budgets, tightest))
    }

    fn take_hold(&self, id: ReservationId) -> Option<Hold> {
        let shard = id.0 as usize & (self.inner.holds.len() - 1);
        lock(&self.inner.holds[shard]).holds.remove(&id.0)
    }

    fn settle_now(
        &self,
        reservation: &Reservation,
        actual: Money,
    ) -> Result<Settlement, StoreError> {
        let now = self.now();
        let held = self.take_hold(reservation.id());
        let actual = actual.max(Money::ZERO);
        let budgets = reservation.budgets();
        let hashes = self.hashes(budgets);
        let mut locked = self.lock_budgets(&hashes);
        let mut statuses = Vec::with_capacity(budgets.len());
        for (i, spec) in budgets.iter().enumerate() {
            let shard = locked.shard(self.shard_of(hashes[i]));
            if is_repeat(budgets, &hashes, i) {
                if let Some(account) = shard.get_mut(hashes[i], &spec.scope) {
                    statuses.push(account.status());
                }
                continue;
            }
            // An account evicted since (its hold expired) is reopened: the
            // charge is never lost.
            let account = shard.account(hashes[i], spec, now, self.inner.max_budgets)?;
            account.refresh(spec, now);
            if let Some(held) = &held {
                account.unhold(held.amount, held.partial);
            }
            account.spent = account.spent + actual;
            statuses.push(account.status());
        }
        Ok(Settlement {
            charged: actual,
            statuses,
        })
    }

    fn release_now(&self, reservation: &Reservation) {
        if let Some(hold) = self.take_hold(reservation.id()) {
            self.unhold(&hold.budgets, hold.amount, hold.partial, self.now());
        }
    }

    fn top_up_now(&self, spec: &BudgetSpec, amount: Money) -> Result<BudgetStatus, StoreError> {
        let now = self.now();
        let hash = self.inner.hasher.hash_one(&spec.scope);
        let mut shard = lock(&self.inner.budgets[self.shard_of(hash)]);
        let account = shard.account(hash, spec, now, self.inner.max_budgets)?;
        account.refresh(spec, now);
        account.limit = account.limit + amount;
        Ok(account.status())
    }

    fn read_now(&self, spec: &BudgetSpec) -> BudgetStatus {
        let now = self.now();
        let hash = self.inner.hasher.hash_one(&spec.scope);
        let mut shard = lock(&self.inner.budgets[self.shard_of(hash)]);
        match shard.get_mut(hash, &spec.scope) {
            Some(account) => {
                account.refresh(spec, now);
                account.status()
            }
            None => BudgetStatus::fresh(spec, window_of(spec, now)),
        }
    }
}

fn reserved(
    id: u64,
    held: Money,
    budgets: &Arc<[BudgetSpec]>,
    (index, status): (usize, BudgetStatus),
) -> ReserveOutcome {
    ReserveOutcome::Reserved {
        reservation: Reservation::new(ReservationId(id), held, budgets.clone()),
        index,
        status,
    }
}

fn nanos(t: Duration) -> u64 {
    u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)
}

const NO_BUDGET: BudgetSpec = BudgetSpec {
    scope: BudgetScope::Key(String::new()),
    limit: Money::ZERO,
    period: Period::Never,
    mode: BudgetMode::Budget,
};

/// Whether `budgets[i]` names a scope already named before it.
fn is_repeat(budgets: &[BudgetSpec], hashes: &[u64], i: usize) -> bool {
    (0..i).any(|j| hashes[j] == hashes[i] && budgets[j].scope == budgets[i].scope)
}

/// The hashes of a request's budgets: inline for the usual one to four.
enum Small {
    Inline([u64; 4], usize),
    Heap(Vec<u64>),
}

impl Small {
    fn new(len: usize) -> Small {
        if len <= 4 {
            Small::Inline([0; 4], len)
        } else {
            Small::Heap(vec![0; len])
        }
    }
}

impl std::ops::Deref for Small {
    type Target = [u64];

    fn deref(&self) -> &[u64] {
        match self {
            Small::Inline(buf, len) => &buf[..*len],
            Small::Heap(v) => v,
        }
    }
}

impl std::ops::DerefMut for Small {
    fn deref_mut(&mut self) -> &mut [u64] {
        match self {
            Small::Inline(buf, len) => &mut buf[..*len],
            Small::Heap(v) => v,
        }
    }
}

enum Locked<'a> {
    One(MutexGuard<'a, BudgetShard>),
    Many(Vec<(usize, MutexGuard<'a, BudgetShard>)>),
}

impl Locked<'_> {
    /// The locked shard `index` (one of those passed to `lock_budgets`).
    fn shard(&mut self, index: usize) -> &mut BudgetShard {
        match self {
            Locked::One(guard) => guard,
            Locked::Many(guards) => {
                let at = guards
                    .binary_search_by_key(&index, |(i, _)| *i)
                    .unwrap_or_else(|at| at.min(guards.len() - 1));
                &mut guards[at].1
            }
        }
    }
}

/// Locks a mutex, recovering from poisoning: no critical section here can
/// leave the books half-written (they only do saturating arithmetic and
/// map operations).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Ledger for MemoryLedger {
    fn reserve(
        &self,
        budgets: &Arc<[BudgetSpec]>,
        amount: Money,
        policy: ReservePolicy,
    ) -> impl Future<Output = Result<ReserveOutcome, StoreError>> + Send {
        ready(self.reserve_now(budgets, amount, policy))
    }

    fn settle(
        &self,
        reservation: &Reservation,
        actual: Money,
    ) -> impl Future<Output = Result<Settlement, StoreError>> + Send {
        ready(self.settle_now(reservation, actual))
    }

    fn release(
        &self,
        reservation: &Reservation,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.release_now(reservation);
        ready(Ok(()))
    }

    fn top_up(
        &self,
        budget: &BudgetSpec,
        amount: Money,
    ) -> impl Future<Output = Result<BudgetStatus, StoreError>> + Send {
        ready(self.top_up_now(budget, amount))
    }

    fn read(
        &self,
        budget: &BudgetSpec,
    ) -> impl Future<Output = Result<BudgetStatus, StoreError>> + Send {
        ready(Ok(self.read_now(budget)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_rfc3339;
    use std::time::UNIX_EPOCH;

    fn key(id: &str, usd: i64, period: Period) -> BudgetSpec {
        BudgetSpec::budget(BudgetScope::Key(id.into()), Money::from_usd(usd), period)
    }

    fn reserve(
        ledger: &MemoryLedger,
        budgets: &[BudgetSpec],
        amount: Money,
        policy: ReservePolicy,
    ) -> Result<ReserveOutcome, StoreError> {
        ledger.reserve_now(&Arc::from(budgets), amount, policy)
    }

    fn usd(s: &str) -> Money {
        s.parse().unwrap()
    }

    fn reserved(outcome: ReserveOutcome) -> Reservation {
        match outcome {
            ReserveOutcome::Reserved { reservation, .. } => reservation,
            denied => panic!("expected a reservation, got {denied:?}"),
        }
    }

    fn ledger_at(rfc3339: &str) -> MemoryLedger {
        let at = UNIX_EPOCH + parse_rfc3339(rfc3339).unwrap();
        MemoryLedger::new().with_clock(TokioClock::starting_at(at))
    }

    #[tokio::test(start_paused = true)]
    async fn reserve_settle_release() {
        let ledger = MemoryLedger::new();
        let b = [key("a", 10, Period::Never)];
        let r = reserved(reserve(&ledger, &b, usd("4"), ReservePolicy::Strict).unwrap());
        assert_eq!(r.amount(), usd("4"));
        assert_eq!(ledger.read_now(&b[0]).remaining(), usd("6"));
        let s = ledger.settle_now(&r, usd("1.5")).unwrap();
        assert_eq!(s.statuses[0].spent, usd("1.5"));
        assert_eq!(s.statuses[0].reserved, Money::ZERO);
        let r = reserved(reserve(&ledger, &b, usd("4"), ReservePolicy::Strict).unwrap());
        ledger.release_now(&r);
        ledger.release_now(&r); // twice is harmless
        let status = ledger.read_now(&b[0]);
        assert_eq!((status.spent, status.reserved), (usd("1.5"), Money::ZERO));
        assert_eq!(ledger.reservation_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn strict_refuses_what_bounded_clamps() {
        let ledger = MemoryLedger::new();
        let b = [key("a", 10, Period::Never)];
        let r = reserved(reserve(&ledger, &b, usd("9"), ReservePolicy::Strict).unwrap());
        ledger.settle_now(&r, usd("9")).unwrap();
        match reserve(&ledger, &b, usd("2"), ReservePolicy::Strict).unwrap() {
            ReserveOutcome::Denied { index, status } => {
                assert_eq!(index, 0);
                assert_eq!(status.remaining(), usd("1"));
            }
            other => panic!("{other:?}"),
        }
        let r = reserved(reserve(&ledger, &b, usd("2"), ReservePolicy::Bounded).unwrap());
        assert_eq!(r.amount(), usd("1"));
        // Nothing remains while it is in flight, under either policy.
        for policy in [ReservePolicy::Strict, ReservePolicy::Bounded] {
            let denied = reserve(&ledger, &b, Money::ZERO, policy).unwrap();
            assert!(matches!(denied, ReserveOutcome::Denied { .. }));
        }
        // It overshoots by its excess, then everything is refused.
        ledger.settle_now(&r, usd("2")).unwrap();
        assert_eq!(ledger.read_now(&b[0]).remaining(), usd("-1"));
        let denied = reserve(&ledger, &b, Money::ZERO, ReservePolicy::Bounded).unwrap();
        assert!(matches!(denied, ReserveOutcome::Denied { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_allows_one_partial_hold_per_budget() {
        // Two partial holds in flight could both run over: the second must wait.
        let ledger = MemoryLedger::new();
        let b = [key("a", 10, Period::Never)];
        let full = reserved(reserve(&ledger, &b, usd("4"), ReservePolicy::Bounded).unwrap());
        let partial = reserved(reserve(&ledger, &b, usd("9"), ReservePolicy::Bounded).unwrap());
        assert_eq!(partial.amount(), usd("6"));
        ledger.settle_now(&full, Money::ZERO).unwrap();
        // 4 remain, but a partial hold is in flight: only a full hold fits.
        let denied = reserve(&ledger, &b, usd("9"), ReservePolicy::Bounded).unwrap();
        assert!(
            matches!(denied, ReserveOutcome::Denied { .. }),
            "{denied:?}"
        );
        let fits = reserved(reserve(&ledger, &b, usd("3"), ReservePolicy::Bounded).unwrap());
        assert_eq!(fits.amount(), usd("3"));
        ledger.settle_now(&partial, usd("9")).unwrap();
        ledger.settle_now(&fits, usd("3")).unwrap();
        // Over by the one partial hold's excess: 9 - 6.
        assert_eq!(ledger.read_now(&b[0]).remaining(), usd("-2"));
        // Released or expired, a partial hold frees the way for the next.
        let ledger = MemoryLedger::new().lease(Duration::from_secs(60));
        let p = reserved(reserve(&ledger, &b, usd("20"), ReservePolicy::Bounded).unwrap());
        ledger.release_now(&p);
        let p = reserved(reserve(&ledger, &b, usd("20"), ReservePolicy::Bounded).unwrap());
        assert_eq!(p.amount(), usd("10"));
        tokio::time::advance(Duration::from_secs(61)).await;
        for _ in 0..ledger.inner.holds.len() {
            if let ReserveOutcome::Reserved { reservation, .. } =
                reserve(&ledger, &b, usd("20"), ReservePolicy::Bounded).unwrap()
            {
                assert_eq!(reservation.amount(), usd("10"));
                return;
            }
        }
        panic!("the expired partial hold still blocks");
    }

    #[tokio::test(start_paused = true)]
    async fn all_or_nothing_across_budgets() {
        let ledger = MemoryLedger::new();
        let team = BudgetSpec::budget(BudgetScope::Team("t".into()), usd("1"), Period::Monthly);
        let a = [key("a", 10, Period::Monthly), team.clone()];
        let r = reserved(reserve(&ledger, &a, usd("0.8"), ReservePolicy::Strict).unwrap());
        ledger.settle_now(&r, usd("0.8")).unwrap();
        let b = [key("b", 10, Period::Monthly), team.clone()];
        match reserve(&ledger, &b, usd("0.5"), ReservePolicy::Strict).unwrap() {
            ReserveOutcome::Denied { index, .. } => assert_eq!(index, 1),
            other => panic!("{other:?}"),
        }
        // Key b was not touched by the refused reservation.
        assert_eq!(ledger.read_now(&b[0]).reserved, Money::ZERO);
        // The tightest budget is reported.
        match reserve(&ledger, &b, usd("0.1"), ReservePolicy::Strict).unwrap() {
            ReserveOutcome::Reserved { index, status, .. } => {
                assert_eq!(index, 1);
                assert_eq!(status.remaining(), usd("0.2"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_scope_twice_counts_once() {
        let ledger = MemoryLedger::new();
        let b = [key("a", 10, Period::Never), key("a", 10, Period::Never)];
        let r = reserved(reserve(&ledger, &b, usd("1"), ReservePolicy::Strict).unwrap());
        assert_eq!(ledger.read_now(&b[0]).reserved, usd("1"));
        ledger.settle_now(&r, usd("1")).unwrap();
        assert_eq!(ledger.read_now(&b[0]).spent, usd("1"));
    }

    #[tokio::test(start_paused = true)]
    async fn monthly_spend_resets_at_utc_month_end() {
        let ledger = ledger_at("2026-01-31T23:59:00Z");
        let b = [key("a", 1, Period::Monthly)];
        let r = reserved(reserve(&ledger, &b, usd("1"), ReservePolicy::Strict).unwrap());
        ledger.settle_now(&r, usd("1")).unwrap();
        let status = ledger.read_now(&b[0]);
        assert_eq!(status.remaining(), Money::ZERO);
        assert_eq!(
            status
                .period
                .end
                .map(crate::time::format_rfc3339)
                .as_deref(),
            Some("2026-02-01T00:00:00Z")
        );
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(ledger.read_now(&b[0]).spent, usd("1"));
        tokio::time::advance(Duration::from_secs(1)).await;
        let status = ledger.read_now(&b[0]);
        assert_eq!(status.spent, Money::ZERO);
        assert_eq!(
            status
                .period
                .end
                .map(crate::time::format_rfc3339)
                .as_deref(),
            Some("2026-03-01T00:00:00Z")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_settlement_after_rollover_counts_in_the_new_period() {
        let ledger = ledger_at("2026-03-31T23:59:59Z");
        let b = [key("a", 5, Period::Monthly)];
        let r = reserved(reserve(&ledger, &b, usd("2"), ReservePolicy::Strict).unwrap());
        tokio::time::advance(Duration::from_secs(2)).await;
        // Spend reset, the hold still counts.
        assert_eq!(ledger.read_now(&b[0]).reserved, usd("2"));
        ledger.settle_now(&r, usd("1")).unwrap();
        let status = ledger.read_now(&b[0]);
        assert_eq!((status.spent, status.reserved), (usd("1"), Money::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn balances_open_once_take_top_ups_and_never_reset() {
        let ledger = MemoryLedger::new();
        let wallet = BudgetSpec::balance(BudgetScope::Org("o".into()), usd("1"));
        let r = reserved(
            reserve(
                &ledger,
                std::slice::from_ref(&wallet),
                usd("1"),
                ReservePolicy::Strict,
            )
            .unwrap(),
        );
        ledger.settle_now(&r, usd("1")).unwrap();
        let denied = reserve(
            &ledger,
            std::slice::from_ref(&wallet),
            Money::ZERO,
            ReservePolicy::Bounded,
        )
        .unwrap();
        assert!(
            matches!(denied, ReserveOutcome::Denied { status, .. } if status.mode == BudgetMode::Balance)
        );
        let status = ledger.top_up_now(&wallet, usd("3")).unwrap();
        assert_eq!((status.limit, status.remaining()), (usd("4"), usd("3")));
        tokio::time::advance(Duration::from_secs(400 * 86_400)).await;
        assert_eq!(ledger.read_now(&wallet).remaining(), usd("3"));
        // A top-up before first use keeps the opening balance.
        let fresh = BudgetSpec::balance(BudgetScope::Org("p".into()), usd("2"));
        assert_eq!(
            ledger.top_up_now(&fresh, usd("1")).unwrap().remaining(),
            usd("3")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn expired_leases_are_released_and_still_charged() {
        let ledger = MemoryLedger::new().lease(Duration::from_secs(60));
        let b = [key("a", 10, Period::Never)];
        let r = reserved(reserve(&ledger, &b, usd("4"), ReservePolicy::Strict).unwrap());
        tokio::time::advance(Duration::from_secs(61)).await;
        // The next reservation sweeps the expired hold (every shard is swept on its own schedule).
        for _ in 0..ledger.inner.holds.len() {
            let r2 = reserved(reserve(&ledger, &b, Money::ZERO, ReservePolicy::Strict).unwrap());
            ledger.release_now(&r2);
        }
        assert_eq!(ledger.read_now(&b[0]).reserved, Money::ZERO);
        ledger.settle_now(&r, usd("3")).unwrap();
        let status = ledger.read_now(&b[0]);
        assert_eq!((status.spent, status.reserved), (usd("3"), Money::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_in_budgets_and_holds() {
        let ledger = MemoryLedger::new()
            .shards(1)
            .max_budgets(2)
            .max_reservations(2);
        let daily = |id: &str| [key(id, 1, Period::Daily)];
        let a = reserved(reserve(&ledger, &daily("a"), usd("0.1"), ReservePolicy::Strict).unwrap());
        let b = reserved(reserve(&ledger, &daily("b"), usd("0.1"), ReservePolicy::Strict).unwrap());
        // Full of holds.
        assert!(reserve(&ledger, &daily("a"), usd("0.1"), ReservePolicy::Strict).is_err());
        ledger.settle_now(&a, usd("0.1")).unwrap();
        ledger.release_now(&b);
        // "b" carries nothing and is evicted for "c"; "a" has spend and stays.
        let c = reserved(reserve(&ledger, &daily("c"), usd("0.1"), ReservePolicy::Strict).unwrap());
        assert_eq!(ledger.budget_count(), 2);
        assert_eq!(ledger.read_now(&daily("a")[0]).spent, usd("0.1"));
        // With "a" spent today and "c" in flight nothing can go.
        let err = reserve(&ledger, &daily("d"), usd("0.1"), ReservePolicy::Strict).unwrap_err();
        assert!(err.to_string().contains("full"), "{err}");
        ledger.release_now(&c);
        // Tomorrow, "a"'s spend is history and may be evicted.
        tokio::time::advance(Duration::from_secs(86_400)).await;
        reserved(reserve(&ledger, &daily("d"), usd("0.1"), ReservePolicy::Strict).unwrap());
        assert_eq!(ledger.budget_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_strict_reservations_never_overshoot() {
        let ledger = MemoryLedger::new();
        let b: Arc<[BudgetSpec]> = [key("a", 1, Period::Never)].into();
        let mut tasks = Vec::new();
        for _ in 0..1_000 {
            let (ledger, b) = (ledger.clone(), b.clone());
            tasks.push(tokio::spawn(async move {
                match ledger
                    .reserve(&b, usd("0.03"), ReservePolicy::Strict)
                    .await
                    .unwrap()
                {
                    ReserveOutcome::Reserved { reservation, .. } => {
                        tokio::task::yield_now().await;
                        ledger.settle(&reservation, usd("0.01")).await.unwrap();
                        true
                    }
                    ReserveOutcome::Denied { .. } => false,
                }
            }));
        }
        let mut admitted = 0;
        for t in tasks {
            admitted += usize::from(t.await.unwrap());
        }
        let status = ledger.read_now(&b[0]);
        assert!(status.spent <= usd("1"), "{status:?}");
        assert_eq!(
            status.spent,
            Money::from_nanos(10_000_000 * admitted as i64)
        );
        assert_eq!(status.reserved, Money::ZERO);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve { worst: i64, strict: bool },
        Settle { which: usize, percent: i64 },
        Release { which: usize },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (1i64..400, any::<bool>()).prop_map(|(worst, strict)| Op::Reserve { worst, strict }),
            (any::<usize>(), 0i64..=100).prop_map(|(which, percent)| Op::Settle { which, percent }),
            any::<usize>().prop_map(|which| Op::Release { which }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(1_000))]

        /// Whatever the interleaving: holds add up, a request never pays
        /// more than its worst case, and spend exceeds the limit by at most
        /// one request's excess over its hold (never, if all were Strict).
        #[test]
        fn the_books_balance(ops in proptest::collection::vec(op(), 1..200)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            let _guard = rt.enter();
            let ledger = MemoryLedger::new().shards(2);
            let limit = Money::from_nanos(1_000);
            let budgets: Arc<[BudgetSpec]> = Arc::new([
                BudgetSpec::budget(BudgetScope::Key("k".into()), limit, Period::Never),
                BudgetSpec::budget(BudgetScope::Team("t".into()), limit, Period::Never),
            ]);
            let mut open: Vec<(Reservation, i64)> = Vec::new();
            let mut any_bounded = false;
            let mut max_excess = 0i64;
            for op in ops {
                match op {
                    Op::Reserve { worst, strict } => {
                        let policy = if strict { ReservePolicy::Strict } else { ReservePolicy::Bounded };
                        any_bounded |= !strict;
                        if let ReserveOutcome::Reserved { reservation, .. } =
                            ledger.reserve_now(&budgets, Money::from_nanos(worst), policy).unwrap()
                        {
                            proptest::prop_assert!(reservation.amount().nanos() <= worst);
                            open.push((reservation, worst));
                        }
                    }
                    Op::Settle { which, percent } if !open.is_empty() => {
                        let (r, worst) = open.swap_remove(which % open.len());
                        let actual = worst * percent / 100;
                        max_excess = max_excess.max(actual - r.amount().nanos());
                        ledger.settle_now(&r, Money::from_nanos(actual)).unwrap();
                    }
                    Op::Release { which } if !open.is_empty() => {
                        let (r, _) = open.swap_remove(which % open.len());
                        ledger.release_now(&r);
                    }
                    _ => {}
                }
                let held: i64 = open.iter().map(|(r, _)| r.amount().nanos()).sum();
                for spec in budgets.iter() {
                    let status = ledger.read_now(spec);
                    proptest::prop_assert_eq!(status.reserved.nanos(), held);
                    let over = status.spent.nanos() - limit.nanos();
                    if any_bounded {
                        proptest::prop_assert!(over <= max_excess.max(0), "over by {} > {}", over, max_excess);
                    } else {
                        proptest::prop_assert!(over <= 0, "strict overshoot by {}", over);
                    }
                }
            }
        }
    }
}
