//! The in-process budget ledger: [`MemoryLedger`].

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, ready};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::budget::{
    BudgetMode, BudgetScope, BudgetSpec, BudgetStatus, Ledger, Money, Period, PeriodWindow,
    Reservation, ReservationId, ReserveOutcome, ReservePolicy, Settlement,
};
use crate::clock::{SharedClock, TokioClock};
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
/// use tollgate::budget::{BudgetScope, BudgetSpec, Ledger, Money, ReserveOutcome, ReservePolicy};
/// use tollgate::store::memory::MemoryLedger;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tollgate::store::StoreError> {
/// let ledger = MemoryLedger::new();
/// let wallet = BudgetSpec::balance(BudgetScope::Org("acme".into()), Money::from_usd(5));
/// ledger.top_up(&wallet, Money::from_usd(10)).await?;
///
/// let outcome = ledger.reserve(&[wallet.clone()], Money::from_usd(1), ReservePolicy::Strict).await?;
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
    next_id: AtomicU64,
    shard_hasher: std::hash::RandomState,
}

#[derive(Default)]
struct BudgetShard {
    accounts: HashMap<BudgetScope, Account>,
}

struct HoldShard {
    holds: HashMap<u64, Hold>,
    next_sweep: tokio::time::Instant,
}

struct Hold {
    amount: Money,
    expires: tokio::time::Instant,
    budgets: Arc<[BudgetSpec]>,
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
        }
    }

    /// Brings the books to `now` and to the current spec.
    fn refresh(&mut self, spec: &BudgetSpec, now: Duration) {
        if self.mode != spec.mode {
            // The scope changed from budget to balance or back: new books,
            // but holds in flight still count.
            *self = Account {
                reserved: self.reserved,
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
            && self.mode == BudgetMode::Budget
            && (self.spent == Money::ZERO || self.window.has_ended(now))
    }
}

fn window_of(spec: &BudgetSpec, now: Duration) -> PeriodWindow {
    match spec.mode {
        BudgetMode::Budget => spec.period.window(now),
        BudgetMode::Balance => Period::Never.window(now),
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

impl MemoryLedger {
    /// Default hold lease: one hour (longer than any sane streamed response).
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(3600);
    /// Default bound on budgets kept: 1,000,000.
    pub const DEFAULT_MAX_BUDGETS: usize = 1_000_000;
    /// Default bound on holds in flight: 1,000,000.
    pub const DEFAULT_MAX_RESERVATIONS: usize = 1_000_000;

    /// An empty ledger on [`TokioClock`], with the defaults above and one
    /// shard per 4 available CPUs' worth of contention (at least 16).
    pub fn new() -> Self {
        let shards = std::thread::available_parallelism()
            .map(|n| (n.get() * 4).next_power_of_two())
            .unwrap_or(16)
            .max(16);
        MemoryLedger::build(
            Arc::new(TokioClock::new()),
            Self::DEFAULT_LEASE,
            Self::DEFAULT_MAX_BUDGETS,
            Self::DEFAULT_MAX_RESERVATIONS,
            shards,
        )
    }

    fn build(
        clock: SharedClock,
        lease: Duration,
        max_budgets: usize,
        max_reservations: usize,
        shards: usize,
    ) -> Self {
        let shards = shards.max(1);
        let now = clock.now();
        MemoryLedger {
            inner: Arc::new(Inner {
                clock,
                lease,
                max_budgets,
                max_reservations,
                budgets: (0..shards).map(|_| Mutex::default()).collect(),
                holds: (0..shards)
                    .map(|_| {
                        Mutex::new(HoldShard {
                            holds: HashMap::new(),
                            next_sweep: now,
                        })
                    })
                    .collect(),
                next_id: AtomicU64::new(1),
                shard_hasher: std::hash::RandomState::new(),
            }),
        }
    }

    fn rebuild(self, f: impl FnOnce(&mut (SharedClock, Duration, usize, usize, usize))) -> Self {
        let i = &self.inner;
        let mut config = (
            i.clock.clone(),
            i.lease,
            i.max_budgets,
            i.max_reservations,
            i.budgets.len(),
        );
        f(&mut config);
        let (clock, lease, max_budgets, max_reservations, shards) = config;
        MemoryLedger::build(clock, lease, max_budgets, max_reservations, shards)
    }

    /// Uses `clock` for periods and leases. Configure before use: each setter
    /// returns an empty ledger.
    pub fn with_clock(self, clock: impl crate::clock::Clock) -> Self {
        let clock: SharedClock = Arc::new(clock);
        self.rebuild(|c| c.0 = clock)
    }

    /// How long a hold lives without being settled (default one hour).
    pub fn lease(self, lease: Duration) -> Self {
        self.rebuild(|c| c.1 = lease)
    }

    /// At most `max` budgets are kept (default 1,000,000).
    pub fn max_budgets(self, max: usize) -> Self {
        self.rebuild(|c| c.2 = max)
    }

    /// At most `max` holds are in flight (default 1,000,000).
    pub fn max_reservations(self, max: usize) -> Self {
        self.rebuild(|c| c.3 = max)
    }

    /// Spreads the state over `shards` locks (default: 4 per CPU, at least 16).
    pub fn shards(self, shards: usize) -> Self {
        self.rebuild(|c| c.4 = shards)
    }

    /// How many budgets the ledger keeps books for.
    pub fn budget_count(&self) -> usize {
        self.inner
            .budgets
            .iter()
            .map(|s| lock(s).accounts.len())
            .sum()
    }

    /// How many holds are in flight.
    pub fn reservation_count(&self) -> usize {
        self.inner.holds.iter().map(|s| lock(s).holds.len()).sum()
    }

    fn budget_shard(&self, scope: &BudgetScope) -> usize {
        let mut h = self.inner.shard_hasher.build_hasher();
        scope.hash(&mut h);
        (h.finish() % self.inner.budgets.len() as u64) as usize
    }

    fn hold_shard(&self, id: u64) -> usize {
        (id % self.inner.holds.len() as u64) as usize
    }

    fn now_unix(&self) -> Duration {
        self.inner.clock.now_unix()
    }

    /// Locks the shards of `budgets` in ascending order (no deadlock between
    /// requests naming the same budgets in different orders).
    fn lock_budgets(&self, budgets: &[BudgetSpec]) -> Locked<'_> {
        let mut shards: Vec<usize> = budgets
            .iter()
            .map(|b| self.budget_shard(&b.scope))
            .collect();
        let of_budget = shards.clone();
        shards.sort_unstable();
        shards.dedup();
        let guards = shards
            .iter()
            .map(|&i| (i, lock(&self.inner.budgets[i])))
            .collect();
        Locked { guards, of_budget }
    }

    /// Releases holds whose lease ran out, at most every quarter lease per shard.
    fn sweep(&self, shard: usize) {
        let now = self.inner.clock.now();
        let expired: Vec<Hold> = {
            let mut holds = lock(&self.inner.holds[shard]);
            if now < holds.next_sweep {
                return;
            }
            holds.next_sweep = now + self.inner.lease / 4;
            let ids: Vec<u64> = holds
                .holds
                .iter()
                .filter(|(_, h)| h.expires <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| holds.holds.remove(id)).collect()
        };
        for hold in expired {
            tracing::warn!(amount = %hold.amount, "budget reservation lease expired; released");
            self.unhold(&hold.budgets, hold.amount);
        }
    }

    fn unhold(&self, budgets: &[BudgetSpec], amount: Money) {
        let now = self.now_unix();
        let mut locked = self.lock_budgets(budgets);
        for (i, spec) in budgets.iter().enumerate() {
            if is_repeat(budgets, i) {
                continue;
            }
            if let Some(account) = locked.shard(i).accounts.get_mut(&spec.scope) {
                account.reserved = (account.reserved - amount).max(Money::ZERO);
                account.refresh(spec, now);
            }
        }
    }

    fn reserve_now(
        &self,
        budgets: &[BudgetSpec],
        amount: Money,
        policy: ReservePolicy,
    ) -> Result<ReserveOutcome, StoreError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let hold_shard = self.hold_shard(id);
        self.sweep(hold_shard);
        let now = self.now_unix();
        let amount = amount.max(Money::ZERO);

        let mut locked = self.lock_budgets(budgets);
        // Check every budget before touching any.
        let mut tightest: Option<(usize, BudgetStatus)> = None;
        for (i, spec) in budgets.iter().enumerate() {
            if is_repeat(budgets, i) {
                continue;
            }
            let shard = locked.shard(i);
            let status = match shard.accounts.get_mut(&spec.scope) {
                Some(account) => {
                    account.refresh(spec, now);
                    account.status()
                }
                None => BudgetStatus::fresh(spec, window_of(spec, now)),
            };
            let remaining = status.remaining();
            let refused =
                !remaining.is_positive() || (policy == ReservePolicy::Strict && amount > remaining);
            if refused {
                return Ok(ReserveOutcome::Denied { index: i, status });
            }
            if tightest.is_none_or(|(_, t)| remaining < t.remaining()) {
                tightest = Some((i, status));
            }
        }
        let held = match (&tightest, policy) {
            (Some((_, t)), ReservePolicy::Bounded) => amount.min(t.remaining()),
            _ => amount,
        };

        // Room for the hold and any new accounts, or fail before changing anything.
        let mut holds = lock(&self.inner.holds[hold_shard]);
        let per_shard = self.inner.max_reservations.div_ceil(self.inner.holds.len());
        if holds.holds.len() >= per_shard {
            return Err(StoreError::Unavailable(
                "budget ledger holds too many reservations in flight".into(),
            ));
        }
        let budget_room = self.inner.max_budgets.div_ceil(self.inner.budgets.len());
        for (i, spec) in budgets.iter().enumerate() {
            let shard = locked.shard(i);
            if !shard.accounts.contains_key(&spec.scope) && shard.accounts.len() >= budget_room {
                shard.accounts.retain(|_, a| !a.is_idle(now));
                if shard.accounts.len() >= budget_room {
                    return Err(StoreError::Unavailable(
                        "budget ledger is full: no idle budget to evict".into(),
                    ));
                }
            }
        }

        for (i, spec) in budgets.iter().enumerate() {
            if is_repeat(budgets, i) {
                continue;
            }
            let account = locked
                .shard(i)
                .accounts
                .entry(spec.scope.clone())
                .or_insert_with(|| Account::new(spec, now));
            account.reserved = account.reserved + held;
        }
        drop(locked);
        let budgets: Arc<[BudgetSpec]> = budgets.into();
        holds.holds.insert(
            id,
            Hold {
                amount: held,
                expires: self.inner.clock.now() + self.inner.lease,
                budgets: budgets.clone(),
            },
        );
        let (index, status) = match tightest {
            Some(t) => t,
            // No budgets at all: nothing to hold against.
            None => (0, BudgetStatus::fresh(&NO_BUDGET, PeriodWindow::NEVER)),
        };
        Ok(ReserveOutcome::Reserved {
            reservation: Reservation::new(ReservationId(id), held, budgets),
            index,
            status,
        })
    }

    fn settle_now(&self, reservation: &Reservation, actual: Money) -> Settlement {
        let id = reservation.id().0;
        let held = lock(&self.inner.holds[self.hold_shard(id)])
            .holds
            .remove(&id)
            .map(|h| h.amount);
        let actual = actual.max(Money::ZERO);
        let budgets = reservation.budgets();
        let now = self.now_unix();
        let mut locked = self.lock_budgets(budgets);
        let mut statuses = Vec::with_capacity(budgets.len());
        for (i, spec) in budgets.iter().enumerate() {
            let account = locked
                .shard(i)
                .accounts
                .entry(spec.scope.clone())
                .or_insert_with(|| Account::new(spec, now));
            if !is_repeat(budgets, i) {
                account.refresh(spec, now);
                if let Some(held) = held {
                    account.reserved = (account.reserved - held).max(Money::ZERO);
                }
                account.spent = account.spent + actual;
            }
            statuses.push(account.status());
        }
        Settlement {
            charged: actual,
            statuses,
        }
    }

    fn release_now(&self, reservation: &Reservation) {
        let id = reservation.id().0;
        let held = lock(&self.inner.holds[self.hold_shard(id)])
            .holds
            .remove(&id);
        if let Some(hold) = held {
            self.unhold(&hold.budgets, hold.amount);
        }
    }

    fn top_up_now(&self, spec: &BudgetSpec, amount: Money) -> Result<BudgetStatus, StoreError> {
        let now = self.now_unix();
        let shard = self.budget_shard(&spec.scope);
        let mut shard = lock(&self.inner.budgets[shard]);
        let room = self.inner.max_budgets.div_ceil(self.inner.budgets.len());
        if !shard.accounts.contains_key(&spec.scope) && shard.accounts.len() >= room {
            shard.accounts.retain(|_, a| !a.is_idle(now));
            if shard.accounts.len() >= room {
                return Err(StoreError::Unavailable(
                    "budget ledger is full: no idle budget to evict".into(),
                ));
            }
        }
        let account = shard
            .accounts
            .entry(spec.scope.clone())
            .or_insert_with(|| Account::new(spec, now));
        account.refresh(spec, now);
        account.limit = account.limit + amount;
        Ok(account.status())
    }

    fn read_now(&self, spec: &BudgetSpec) -> BudgetStatus {
        let now = self.now_unix();
        let shard = self.budget_shard(&spec.scope);
        let mut shard = lock(&self.inner.budgets[shard]);
        match shard.accounts.get_mut(&spec.scope) {
            Some(account) => {
                account.refresh(spec, now);
                account.status()
            }
            None => BudgetStatus::fresh(spec, window_of(spec, now)),
        }
    }
}

const NO_BUDGET: BudgetSpec = BudgetSpec {
    scope: BudgetScope::Key(String::new()),
    limit: Money::ZERO,
    period: Period::Never,
    mode: BudgetMode::Budget,
};

/// Whether `budgets[i]` names a scope already named before it.
fn is_repeat(budgets: &[BudgetSpec], i: usize) -> bool {
    budgets[..i].iter().any(|b| b.scope == budgets[i].scope)
}

struct Locked<'a> {
    guards: Vec<(usize, MutexGuard<'a, BudgetShard>)>,
    /// The shard of each budget, in the caller's order.
    of_budget: Vec<usize>,
}

impl Locked<'_> {
    fn shard(&mut self, budget: usize) -> &mut BudgetShard {
        let want = self.of_budget[budget];
        let at = self
            .guards
            .binary_search_by_key(&want, |(i, _)| *i)
            .unwrap_or_default();
        &mut self.guards[at].1
    }
}

/// Locks a mutex, recovering from poisoning: every critical section leaves
/// the books consistent before anything that could panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Ledger for MemoryLedger {
    fn reserve(
        &self,
        budgets: &[BudgetSpec],
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
        ready(Ok(self.settle_now(reservation, actual)))
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
