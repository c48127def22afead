//! Where spend is kept: the [`Ledger`] trait, its contract, and what its
//! operations answer.

use std::fmt;
use std::sync::Arc;

use super::{BudgetMode, BudgetSpec, Charge, Money, PeriodWindow, SpendQuery, SpendRow};
use crate::small::Small;
use crate::store::StoreFuture;

/// How much of a budget a request may reserve: worst case or nothing
/// ([`Strict`](ReservePolicy::Strict): spend **never** exceeds the limit),
/// or at most what remains ([`Bounded`](ReservePolicy::Bounded): one
/// partial reservation at a time per budget, so spend exceeds the limit by
/// at most **one request's** cost beyond its reservation).
///
/// Why a reservation, and why two policies: see the
/// [module docs](crate::budget#why-reserve-and-the-two-policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ReservePolicy {
    /// Refuse when the worst case exceeds what remains: never overshoot.
    Strict,
    /// Admit while anything remains, reserving at most what remains.
    #[default]
    Bounded,
}

/// One budget's state in its current period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetStatus {
    /// Budget (resets each period) or prepaid balance.
    pub mode: BudgetMode,
    /// For a budget, the period's limit; for a balance, everything funded
    /// (opening balance plus top-ups).
    pub limit: Money,
    /// Settled spend in the current period (for a balance: ever).
    pub spent: Money,
    /// Held by requests in flight.
    pub reserved: Money,
    /// The current period (for a balance: from the epoch, never ending).
    pub period: PeriodWindow,
}

impl BudgetStatus {
    /// The status of a budget nothing has been charged to yet.
    pub fn fresh(spec: &BudgetSpec, period: PeriodWindow) -> BudgetStatus {
        BudgetStatus {
            mode: spec.mode,
            limit: spec.limit,
            spent: Money::ZERO,
            reserved: Money::ZERO,
            period,
        }
    }

    /// What a new request may still use: `limit - spent - reserved`
    /// (negative after a `Bounded` overshoot).
    pub fn remaining(&self) -> Money {
        self.limit - self.spent - self.reserved
    }
}

/// The status a reservation against no budget at all reports (every
/// ledger's): nothing limits it.
pub(crate) const NO_BUDGET: BudgetStatus = BudgetStatus {
    mode: BudgetMode::Budget,
    limit: Money::ZERO,
    spent: Money::ZERO,
    reserved: Money::ZERO,
    period: PeriodWindow::NEVER,
};

/// The id of a reservation, unique within its ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationId(pub u64);

impl ReservationId {
    /// An id no ledger ever issues: a [`Reservation`] with it holds nothing,
    /// so settling it only charges. `BudgetLayer` uses it to charge requests
    /// it admitted while the ledger was unreachable (fail-open).
    pub const UNHELD: ReservationId = ReservationId(0);
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rsv_{:016x}", self.0)
    }
}

/// A hold on budgets, returned by [`Ledger::reserve`]; give it back to
/// [`Ledger::settle`] or [`Ledger::release`] exactly once.
///
/// It carries the budgets it holds, so a ledger can still charge them when
/// the hold itself has expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    id: ReservationId,
    amount: Money,
    budgets: Arc<[BudgetSpec]>,
}

impl Reservation {
    /// A reservation of `amount` against each of `budgets` (for ledger
    /// implementations).
    pub fn new(id: ReservationId, amount: Money, budgets: Arc<[BudgetSpec]>) -> Reservation {
        Reservation {
            id,
            amount,
            budgets,
        }
    }

    /// A reservation that holds nothing against `budgets`: settling it
    /// charges them (and keeps the charge's aggregates). For requests
    /// admitted without a hold (no budgets, or a ledger that was down).
    pub fn unheld(budgets: Arc<[BudgetSpec]>) -> Reservation {
        Reservation::new(ReservationId::UNHELD, Money::ZERO, budgets)
    }

    /// The id.
    pub fn id(&self) -> ReservationId {
        self.id
    }

    /// The amount held against each budget.
    pub fn amount(&self) -> Money {
        self.amount
    }

    /// The budgets held.
    pub fn budgets(&self) -> &[BudgetSpec] {
        &self.budgets
    }
}

/// What [`Ledger::reserve`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// Held against every budget.
    Reserved {
        /// The hold, to settle or release.
        reservation: Reservation,
        /// Index (in the budgets passed) of the budget with the least remaining.
        index: usize,
        /// That budget's status *before* this reservation.
        status: BudgetStatus,
    },
    /// Held against none: a budget cannot afford the request.
    Denied {
        /// Index (in the budgets passed) of the first budget that refused.
        index: usize,
        /// That budget's status.
        status: BudgetStatus,
    },
}

/// What [`Ledger::settle`] charged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The amount charged to each budget.
    pub charged: Money,
    /// Each budget's status after the charge, in the reservation's order.
    pub statuses: BudgetStatuses,
    /// The UTC day (days since 1970-01-01) the charge was counted in, in the
    /// aggregates and the budgets' periods.
    pub day: i64,
}

/// Each budget's status after a settlement, in the reservation's order
/// ([`Settlement::statuses`]); read it as a slice.
///
/// Held inline for up to two budgets (a key's own and one more), on the
/// heap beyond: a settlement is made for every metered response, and a
/// `Vec` cost it an allocation.
///
/// ```
/// use tollgate::budget::{BudgetMode, BudgetStatus, BudgetStatuses, Money, PeriodWindow};
///
/// let status = BudgetStatus {
///     mode: BudgetMode::Budget,
///     limit: Money::from_usd(5),
///     spent: Money::from_usd(1),
///     reserved: Money::ZERO,
///     period: PeriodWindow::NEVER,
/// };
/// let statuses: BudgetStatuses = [status, status, status].into_iter().collect();
/// assert_eq!(statuses.len(), 3);
/// assert_eq!(statuses[2].spent, Money::from_usd(1));
/// ```
#[derive(Clone)]
pub struct BudgetStatuses(Small<BudgetStatus, 2>);

crate::small::small_newtype!(BudgetStatuses, BudgetStatus, NO_BUDGET);

/// What [`Ledger::top_up`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopUpOutcome {
    /// The balance after the top-up.
    pub status: BudgetStatus,
    /// The idempotency key had been used already: nothing was added this
    /// time, and `status` is the balance now.
    pub replayed: bool,
}

/// A store of budget spend, shared by every clone of a `BudgetLayer` (and,
/// for a shared backend, every gateway instance).
///
/// Every operation is one round trip and atomic across all budgets it names,
/// so a shared store (Redis, with a Lua script per operation) answers it
/// atomically for every gateway instance at once. The trait is
/// dyn-compatible (`Arc<dyn Ledger>` is a ledger), and each operation
/// returns a [`StoreFuture`] that owns what it needs: a ledger that answers
/// without waiting (one in memory) returns it ready, and the layer then
/// decides in `call` and settles in place, with no future to keep or box.
///
/// A [`BudgetSpec`], from the caller's key record, comes with every call and
/// grants: the ledger keeps no configuration. Implementations must uphold:
///
/// - **all or nothing**: `reserve` holds the amount against every budget or
///   against none;
/// - **policy**: a budget with `remaining() <= 0` refuses every request;
///   under [`ReservePolicy::Strict`] a budget also refuses an amount larger
///   than its `remaining()`; under [`ReservePolicy::Bounded`] the amount held
///   is `min(amount, remaining())` of the tightest budget, held against all,
///   and a hold below `amount` (a partial hold) is refused while any of the
///   budgets has another partial hold in flight;
/// - **periods**: a budget's spend counts in the period
///   [`Period::window`](super::Period::window) gives for the ledger's current
///   time (its clock, so every instance that shares a ledger agrees on when
///   a month ends), and starts from zero in a new period; a settlement
///   counts in the period it happens in; balances never reset;
/// - **grants**: a budget's limit is its spec's on every call (a changed
///   limit holds from the next request) while its spend is the ledger's (a
///   changed limit keeps what was spent); a balance opens at its spec's
///   `limit` the first time the ledger sees it, and later specs never change
///   its funds (only [`top_up`](Ledger::top_up) does);
/// - **leases**: a hold not settled or released within the ledger's lease is
///   released by the ledger (a gateway that crashes between reserve and
///   settle cannot lock money away); settling it afterwards still charges
///   the cost;
/// - **aggregates**: a settlement of an attributed [`Charge`] adds it to the
///   aggregates of each of its scopes, for its model and the UTC day of the
///   settlement, in the same atomic step as the charge.
pub trait Ledger: Send + Sync + 'static {
    /// Holds `amount` against every one of `budgets`, or against none.
    ///
    /// `budgets` is shared so the [`Reservation`] can keep it without a copy.
    fn reserve(
        &self,
        budgets: &Arc<[BudgetSpec]>,
        amount: Money,
        policy: ReservePolicy,
    ) -> StoreFuture<ReserveOutcome>;

    /// Charges `charge.cost` to every budget of `reservation`, releases its
    /// hold, and adds the charge to its attribution's aggregates.
    fn settle(&self, reservation: &Reservation, charge: &Charge) -> StoreFuture<Settlement>;

    /// Releases `reservation`'s hold without charging anything.
    fn release(&self, reservation: &Reservation) -> StoreFuture<()>;

    /// Adds `amount` to the prepaid balance `budget` (negative amounts debit
    /// it) and returns its new status. With an `idempotency_key`, a key
    /// already used for this balance within the last 24 hours adds nothing
    /// and answers the balance as it is ([`TopUpOutcome::replayed`]).
    fn top_up(
        &self,
        budget: &BudgetSpec,
        amount: Money,
        idempotency_key: Option<&str>,
    ) -> StoreFuture<TopUpOutcome>;

    /// `budget`'s status in its current period.
    fn read(&self, budget: &BudgetSpec) -> StoreFuture<BudgetStatus>;

    /// Sets `budget`'s spend in its current period to zero (holds in flight
    /// stay) and returns its status. A balance is not a budget: resetting
    /// one changes nothing (top it up instead).
    fn reset(&self, budget: &BudgetSpec) -> StoreFuture<BudgetStatus>;

    /// The spend aggregates `query` asks for.
    fn spend(&self, query: &SpendQuery) -> StoreFuture<Vec<SpendRow>>;
}

impl<L: Ledger + ?Sized> Ledger for Arc<L> {
    fn reserve(
        &self,
        budgets: &Arc<[BudgetSpec]>,
        amount: Money,
        policy: ReservePolicy,
    ) -> StoreFuture<ReserveOutcome> {
        (**self).reserve(budgets, amount, policy)
    }

    fn settle(&self, reservation: &Reservation, charge: &Charge) -> StoreFuture<Settlement> {
        (**self).settle(reservation, charge)
    }

    fn release(&self, reservation: &Reservation) -> StoreFuture<()> {
        (**self).release(reservation)
    }

    fn top_up(
        &self,
        budget: &BudgetSpec,
        amount: Money,
        idempotency_key: Option<&str>,
    ) -> StoreFuture<TopUpOutcome> {
        (**self).top_up(budget, amount, idempotency_key)
    }

    fn read(&self, budget: &BudgetSpec) -> StoreFuture<BudgetStatus> {
        (**self).read(budget)
    }

    fn reset(&self, budget: &BudgetSpec) -> StoreFuture<BudgetStatus> {
        (**self).reset(budget)
    }

    fn spend(&self, query: &SpendQuery) -> StoreFuture<Vec<SpendRow>> {
        (**self).spend(query)
    }
}
