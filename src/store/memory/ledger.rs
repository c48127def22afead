//! The in-process budget ledger: [`MemoryLedger`].
//!
//! (About 600 lines: `MemoryLedger`'s documented builder and its operations,
//! which share the books' locking order; the books, the restore hooks, the
//! aggregates and the idempotency keys are in the files beside it.)

use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::budget::{
    BudgetMode, BudgetSpec, BudgetStatus, BudgetStatuses, Charge, Ledger, Money, NO_BUDGET,
    Reservation, ReservationId, ReserveOutcome, ReservePolicy, Settlement, SpendQuery, SpendRow,
    TopUpOutcome,
};
use crate::clock::{Clock, SharedClock, TokioClock};
use crate::store::{StoreError, StoreFuture, lock};

use self::books::{BudgetShard, Hold, HoldShard, Locked, window_of};
use self::spend::{SpendShard, row_hash};
use self::top_ups::TopUpKeys;
use super::hash::{SeededHashing, Small};

mod books;
#[cfg(feature = "sqlite")]
mod restore;
mod spend;
#[cfg(test)]
mod tests;
pub(crate) mod top_ups;

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
/// - **Clocked**: periods come from a [`Clock`],
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
/// use tollgate::budget::{BudgetScope, BudgetSpec, Charge, Ledger, Money, ReserveOutcome, ReservePolicy};
/// use tollgate::store::memory::MemoryLedger;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tollgate::store::StoreError> {
/// let ledger = MemoryLedger::new();
/// let wallet = BudgetSpec::balance(BudgetScope::Org("acme".into()), Money::from_usd(5));
/// ledger.top_up(&wallet, Money::from_usd(10), None).await?;
///
/// let budgets: Arc<[BudgetSpec]> = Arc::new([wallet.clone()]);
/// let outcome = ledger.reserve(&budgets, Money::from_usd(1), ReservePolicy::Strict).await?;
/// let ReserveOutcome::Reserved { reservation, .. } = outcome else { unreachable!() };
/// ledger.settle(&reservation, &Charge::cost("0.25".parse().unwrap())).await?;
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
    /// As configured: each setter builds a new ledger from it.
    config: Config,
    /// `config`'s bounds per shard.
    max_budgets: usize,
    max_reservations: usize,
    budgets: Box<[Mutex<BudgetShard>]>,
    holds: Box<[Mutex<HoldShard>]>,
    /// Per hold shard: when (nanoseconds since the epoch) to sweep next.
    next_sweep: Box<[AtomicU64]>,
    next_id: AtomicU64,
    hasher: SeededHashing,
    /// Spend aggregates by scope, model and day, sharded as the budgets are
    /// (by the scope's hash) and locked while its budgets are, so a
    /// settlement and its aggregates change in one step.
    spend: Box<[Mutex<SpendShard>]>,
    /// Rows kept per spend shard.
    max_spend_rows: usize,
    top_up_keys: Mutex<TopUpKeys>,
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
            .field("lease", &self.inner.config.lease)
            .field("max_budgets", &self.inner.config.max_budgets)
            .field("max_reservations", &self.inner.config.max_reservations)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Config {
    clock: SharedClock,
    lease: Duration,
    max_budgets: usize,
    max_reservations: usize,
    max_spend_rows: usize,
    shards: usize,
}

impl MemoryLedger {
    /// Default hold lease: one hour (longer than any sane streamed response).
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(3600);
    /// Default bound on budgets kept: 1,000,000.
    pub const DEFAULT_MAX_BUDGETS: usize = 1_000_000;
    /// Default bound on holds in flight: 1,000,000.
    pub const DEFAULT_MAX_RESERVATIONS: usize = 1_000_000;
    /// Default bound on spend aggregate rows (scope × model × day):
    /// 1,000,000. Past it, each shard forgets its oldest day.
    pub const DEFAULT_MAX_SPEND_ROWS: usize = 1_000_000;
    /// Top-up idempotency keys remembered (for 24 hours each): 100,000.
    const MAX_TOP_UP_KEYS: usize = 100_000;

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
            max_spend_rows: Self::DEFAULT_MAX_SPEND_ROWS,
            shards,
        })
    }

    fn build(config: Config) -> Self {
        let shards = config.shards.clamp(1, 1 << 16).next_power_of_two();
        let now = config.clock.now_unix();
        MemoryLedger {
            inner: Arc::new(Inner {
                max_budgets: config.max_budgets.div_ceil(shards),
                max_reservations: config.max_reservations.div_ceil(shards),
                budgets: (0..shards).map(|_| Mutex::default()).collect(),
                holds: (0..shards).map(|_| Mutex::default()).collect(),
                next_sweep: (0..shards).map(|_| AtomicU64::new(nanos(now))).collect(),
                next_id: AtomicU64::new(1),
                hasher: SeededHashing::default(),
                spend: (0..shards).map(|_| Mutex::default()).collect(),
                max_spend_rows: config.max_spend_rows.div_ceil(shards),
                top_up_keys: Mutex::default(),
                config,
            }),
        }
    }

    fn reconfigure(self, f: impl FnOnce(&mut Config)) -> Self {
        let mut config = self.inner.config.clone();
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

    /// At most about `max` spend aggregate rows are kept (default
    /// 1,000,000; applied per shard, each forgetting its oldest day first).
    pub fn max_spend_rows(self, max: usize) -> Self {
        self.reconfigure(|c| c.max_spend_rows = max)
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

    /// How many spend aggregate rows are kept.
    pub fn spend_row_count(&self) -> usize {
        self.inner.spend.iter().map(|s| lock(s).len()).sum()
    }

    /// The ledger's current time (since the Unix epoch); a durable store
    /// records when something happened on it.
    pub(crate) fn now_unix(&self) -> Duration {
        self.inner.config.clock.now_unix()
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
        let after = nanos(now + self.inner.config.lease / 4);
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

    pub(crate) fn reserve_sync(
        &self,
        budgets: &Arc<[BudgetSpec]>,
        amount: Money,
        policy: ReservePolicy,
    ) -> Result<ReserveOutcome, StoreError> {
        let now = self.now_unix();
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
                let hold = Hold::new(held, partial, budgets, now + self.inner.config.lease);
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
            let hold = Hold::new(amount, false, budgets, now + self.inner.config.lease);
            self.hold_room(hold_shard)?.holds.insert(id, hold);
            return Ok(reserved(id, amount, budgets, (0, NO_BUDGET)));
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
        let hold = Hold::new(held, partial, budgets, now + self.inner.config.lease);
        holds.holds.insert(id, hold);
        Ok(reserved(id, held, budgets, tightest))
    }

    fn take_hold(&self, id: ReservationId) -> Option<Hold> {
        let shard = id.0 as usize & (self.inner.holds.len() - 1);
        lock(&self.inner.holds[shard]).holds.remove(&id.0)
    }

    pub(crate) fn settle_sync(
        &self,
        reservation: &Reservation,
        charge: &Charge,
    ) -> Result<Settlement, StoreError> {
        let now = self.now_unix();
        let day = day_of(now);
        let held = self.take_hold(reservation.id());
        let actual = charge.cost.max(Money::ZERO);
        let budgets = reservation.budgets();
        let hashes = self.hashes(budgets);
        let mut locked = self.lock_budgets(&hashes);
        let mut statuses = BudgetStatuses::new();
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
        // Still under the budgets' locks: the aggregates change in the same
        // step as the books.
        if let Some(attribution) = &charge.attribution {
            let charged = Charge {
                cost: actual,
                ..charge.clone()
            };
            for scope in attribution.scopes.iter() {
                let scope_hash = self.inner.hasher.hash_one(scope);
                let hash = row_hash(&self.inner.hasher, scope_hash, &attribution.model, day);
                lock(&self.inner.spend[self.shard_of(scope_hash)]).add(
                    hash,
                    scope,
                    &attribution.model,
                    day,
                    &charged,
                    self.inner.max_spend_rows,
                );
            }
        }
        drop(locked);
        Ok(Settlement {
            charged: actual,
            statuses,
            day,
        })
    }

    fn release_sync(&self, reservation: &Reservation) {
        if let Some(hold) = self.take_hold(reservation.id()) {
            self.unhold(&hold.budgets, hold.amount, hold.partial, self.now_unix());
        }
    }

    pub(crate) fn top_up_sync(
        &self,
        spec: &BudgetSpec,
        amount: Money,
        idempotency_key: Option<&str>,
    ) -> Result<TopUpOutcome, StoreError> {
        let now = self.now_unix();
        let hash = self.inner.hasher.hash_one(&spec.scope);
        let mut shard = lock(&self.inner.budgets[self.shard_of(hash)]);
        let account = shard.account(hash, spec, now, self.inner.max_budgets)?;
        account.refresh(spec, now);
        // Under the balance's lock: two top-ups with one key cannot both
        // pass this check.
        let replayed = idempotency_key.is_some_and(|key| {
            !lock(&self.inner.top_up_keys).first_use(&spec.scope, key, now, Self::MAX_TOP_UP_KEYS)
        });
        if !replayed {
            account.limit = account.limit + amount;
        }
        Ok(TopUpOutcome {
            status: account.status(),
            replayed,
        })
    }

    fn read_sync(&self, spec: &BudgetSpec) -> BudgetStatus {
        let now = self.now_unix();
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

    pub(crate) fn reset_sync(&self, spec: &BudgetSpec) -> Result<BudgetStatus, StoreError> {
        let now = self.now_unix();
        let hash = self.inner.hasher.hash_one(&spec.scope);
        let mut shard = lock(&self.inner.budgets[self.shard_of(hash)]);
        let account = shard.account(hash, spec, now, self.inner.max_budgets)?;
        account.refresh(spec, now);
        if account.mode == BudgetMode::Budget {
            account.spent = Money::ZERO;
        }
        Ok(account.status())
    }

    fn spend_sync(&self, query: &SpendQuery) -> Vec<SpendRow> {
        let shards: Vec<_> = self.inner.spend.iter().map(lock).collect();
        crate::budget::spend_report(query, shards.iter().flat_map(|s| s.rows()))
    }
}

/// The UTC day of `now` (days since 1970-01-01).
fn day_of(now: Duration) -> i64 {
    (now.as_secs() / 86_400) as i64
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

/// Whether `budgets[i]` names a scope already named before it.
fn is_repeat(budgets: &[BudgetSpec], hashes: &[u64], i: usize) -> bool {
    (0..i).any(|j| hashes[j] == hashes[i] && budgets[j].scope == budgets[i].scope)
}

impl Ledger for MemoryLedger {
    fn reserve(
        &self,
        budgets: &Arc<[BudgetSpec]>,
        amount: Money,
        policy: ReservePolicy,
    ) -> StoreFuture<ReserveOutcome> {
        StoreFuture::ready(self.reserve_sync(budgets, amount, policy))
    }

    fn settle(&self, reservation: &Reservation, charge: &Charge) -> StoreFuture<Settlement> {
        StoreFuture::ready(self.settle_sync(reservation, charge))
    }

    fn release(&self, reservation: &Reservation) -> StoreFuture<()> {
        self.release_sync(reservation);
        StoreFuture::ready(Ok(()))
    }

    fn top_up(
        &self,
        budget: &BudgetSpec,
        amount: Money,
        idempotency_key: Option<&str>,
    ) -> StoreFuture<TopUpOutcome> {
        StoreFuture::ready(self.top_up_sync(budget, amount, idempotency_key))
    }

    fn read(&self, budget: &BudgetSpec) -> StoreFuture<BudgetStatus> {
        StoreFuture::ready(Ok(self.read_sync(budget)))
    }

    fn reset(&self, budget: &BudgetSpec) -> StoreFuture<BudgetStatus> {
        StoreFuture::ready(self.reset_sync(budget))
    }

    fn spend(&self, query: &SpendQuery) -> StoreFuture<Vec<SpendRow>> {
        StoreFuture::ready(Ok(self.spend_sync(query)))
    }
}
