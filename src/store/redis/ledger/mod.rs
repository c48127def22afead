//! [`RedisLedger`]: budgets and balances shared by every gateway instance.

mod args;
mod placement;
mod replies;

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Value;

use self::args::{Distinct, push_spec};
use self::placement::Books;
pub use self::placement::LedgerPlacement;
pub(super) use self::replies::reserve_outcome;
use self::replies::{corrupt, int, spend_rows, status, statuses};
use super::RedisConnection;
use super::scripts::{
    LEDGER_READ, LEDGER_RESERVE, LEDGER_RESET, LEDGER_SPEND, LEDGER_TENANTS, LEDGER_TOP_UP,
};
use super::settlements::{SettleCall, SettleKind};
use crate::budget::{
    BudgetScope, BudgetSpec, BudgetStatus, Charge, Ledger, Money, Reservation, ReserveOutcome,
    ReservePolicy, Settlement, SpendQuery, SpendRow, TopUpOutcome,
};
use crate::clock::SharedClock;
use crate::store::{StoreError, StoreFuture, lock};

/// A budget ledger in Redis: every gateway instance reserves against, and
/// charges, the same books.
///
/// ```no_run
/// use std::sync::Arc;
/// use tollgate::budget::{BudgetScope, BudgetSpec, Charge, Ledger, Money, Period, ReserveOutcome, ReservePolicy};
/// use tollgate::store::redis::{RedisConfig, RedisConnection, RedisLedger};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let redis = RedisConnection::connect(RedisConfig::from_url("redis://127.0.0.1:6379/0")?).await?;
/// let ledger = RedisLedger::new(redis);
/// let team = BudgetSpec::budget(BudgetScope::Team("research".into()), Money::from_usd(50), Period::Monthly);
///
/// let budgets: Arc<[BudgetSpec]> = Arc::new([team.clone()]);
/// let outcome = ledger.reserve(&budgets, "0.40".parse()?, ReservePolicy::Strict).await?;
/// if let ReserveOutcome::Reserved { reservation, .. } = outcome {
///     // ... the upstream call; its usage prices at $0.12:
///     ledger.settle(&reservation, &Charge::cost("0.12".parse()?)).await?;
/// }
/// println!("{} left this month", ledger.read(&team).await?.remaining());
/// # Ok(())
/// # }
/// ```
///
/// # One round trip each, atomic
///
/// Every operation ([`reserve`](Ledger::reserve), [`settle`](Ledger::settle)
/// with its spend aggregates, [`release`](Ledger::release),
/// [`top_up`](Ledger::top_up) with its idempotency key, [`read`](Ledger::read),
/// [`reset`](Ledger::reset), [`spend`](Ledger::spend)) is one `EVALSHA` of a
/// Lua script (a spend report across tenants placed in several slots: one
/// per tenant, see "Redis Cluster"; settlements and releases are batched
/// with the connection's other settlements, each applied exactly once, see
/// [the module's docs](super)), which Redis runs atomically: a reservation checks every budget of the request
/// (key, team, org) and holds the amount against all of them or none, with
/// the same policies ([`ReservePolicy`]) and outcomes as
/// [`MemoryLedger`](crate::store::memory::MemoryLedger). Under `Strict`,
/// concurrent reservations from any number of instances never overshoot.
///
/// Money is integer nano-dollars end to end: Redis keeps decimal strings and
/// the scripts compute on exact halves of them, never on a rounded double.
///
/// # Calendar periods on one clock
///
/// The scripts compute the period window (UTC day, Monday-based week,
/// month, rolling window from the epoch) from Redis's `TIME`, so every
/// instance agrees on when a month ends whatever its own clock says.
/// [`clock`](RedisLedger::clock) replaces the server's time with the
/// caller's (for tests).
///
/// # Leases: a crashed gateway does not lock money away
///
/// Each reservation is a hold (`<prefix>hold:<id>`) indexed by its lease
/// expiry in `<prefix>holds`. Every script first releases up to 32 holds
/// whose lease ([`lease`](RedisLedger::lease), default one hour) has run
/// out, so the holds of a gateway that crashed between reserve and settle
/// are given back by the next operations of any instance. Settling an
/// expired hold still charges its cost. Reservation ids come from a Redis
/// counter seeded with the server time, so they stay unique across a Redis
/// restart that lost the data, and a hold is only released by the
/// reservation whose amount it holds.
///
/// # Redis Cluster
///
/// A cluster runs a script only when every key it touches is in one hash
/// slot. Under [`LedgerPlacement::Untagged`] (the names a single Redis has
/// always had, and its default there) the ledger is not cluster-safe: the holds
/// index and the id sequence are global keys, the budgets of one request
/// hash to different slots, and releasing a hold (which every script's
/// sweep of expired holds does) writes to the books of whichever budgets
/// that hold names, keys no script declared. A
/// [`placement`](RedisLedger::placement) puts every key of a call under one
/// hash tag, `<prefix>{tag}:…`:
///
/// - [`LedgerPlacement::OneSlot`], the default on a cluster
///   ([`RedisConfig::cluster`](super::RedisConfig::cluster)): everything
///   under `{ledger}`. Correct on any cluster; one node does all the
///   ledger's work, as a single Redis does.
/// - [`LedgerPlacement::ByTenant`]: a call's tag is the top-most tenant of
///   its budgets (for a key in an org, the org; else its team, else its
///   user, else the key), named by a function the gateway gives, as it
///   knows who belongs to whom. Each tenant has its own books, holds, holds
///   index, id sequence, top-up markers and spend aggregates under its tag,
///   so a sweep only releases holds of the same tenant, whose budgets are
///   in the same slot. Every key a script is given is declared in `KEYS`;
///   those it reaches through names it holds (a hold's budgets, the
///   aggregates of the charged scopes) share their slot. Tenants spread
///   over the cluster's nodes.
///
/// Why a function of each scope, and not the top-most scope of each
/// request's budget list: [`read`](Ledger::read), [`reset`](Ledger::reset)
/// and [`top_up`](Ledger::top_up) name one budget and must find it where
/// reservations booked it, and a team's books must not move to its org's
/// slot on the day the org gets a budget. What it asks of the operator:
///
/// - the budgets of one request must belong to one tenant: a request whose
///   budgets span two (a user budget shared by keys of two orgs) cannot be
///   booked atomically and is refused with a [`StoreError`] (503);
/// - a scope that changes tenant (a team moved to another org) starts new
///   books in its new slot, its spend and balance so far left in the old
///   ones; so does a ledger whose placement changes (the names differ).
///   `Untagged` keeps the names of earlier versions, so a single Redis
///   upgraded in place keeps its books;
/// - a spend report across every scope of a kind (no scope given) reads the
///   list of tenants (`<prefix>{ledger}:tenants`, added to once per tenant
///   and process) and then each tenant's aggregates: 1 + N round trips, on
///   the admin path only;
/// - expired holds are released by the next call in their tenant's slot,
///   not by any call: a quiet tenant's wait for its next call (a read
///   sweeps first, so what it reports is right).
///
/// # Memory
///
/// A budget's books (`<prefix>budget:<scope>`; with a placement, after
/// `<prefix>{tag}:`) expire once its period has
/// ended and its holds' leases have run out; prepaid balances and lifetime
/// (`Period::Never`) budgets are kept, as they carry money. Holds are
/// deleted when settled, released, or swept.
///
/// # When Redis fails
///
/// Every call is bounded by the connection's call timeout and fails with a
/// [`StoreError`]; [`BudgetLayer`](crate::budget::BudgetLayer)'s failure
/// policy decides: by default it refuses with 503 `store_unavailable` (no
/// spend the ledger cannot see). Settlements and releases that Redis did not
/// answer are sent again in the background, and applied once, for
/// [`settlement_retry`](super::RedisConfig::settlement_retry) (30 s), so a
/// short outage loses no spend of the requests in flight.
#[derive(Clone)]
pub struct RedisLedger {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    redis: RedisConnection,
    lease: Duration,
    clock: Option<SharedClock>,
    placement: LedgerPlacement,
    /// Tenant tags this process has listed (for spend reports across
    /// tenants), so each is listed once.
    tenants: Arc<Mutex<HashSet<String>>>,
}

impl RedisLedger {
    /// Default hold lease: one hour (as [`MemoryLedger`](crate::store::memory::MemoryLedger)).
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(3600);

    /// A ledger on `redis`: server time, one-hour leases, the books
    /// [`Untagged`](LedgerPlacement::Untagged) on a single Redis and in
    /// [`OneSlot`](LedgerPlacement::OneSlot) on a cluster.
    pub fn new(redis: RedisConnection) -> Self {
        let placement = if redis.is_cluster() {
            LedgerPlacement::OneSlot
        } else {
            LedgerPlacement::Untagged
        };
        RedisLedger {
            inner: Arc::new(Inner {
                redis,
                lease: Self::DEFAULT_LEASE,
                clock: None,
                placement,
                tenants: Arc::default(),
            }),
        }
    }

    /// How long a hold lives without being settled or released (default
    /// one hour; at least 1 ms). Longer than any response you stream.
    pub fn lease(mut self, lease: Duration) -> Self {
        Arc::make_mut(&mut self.inner).lease = lease.max(Duration::from_millis(1));
        self
    }

    /// Reads time from `clock` instead of the Redis server. Every instance
    /// sharing the ledger must then have the same clock: use it for tests.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        Arc::make_mut(&mut self.inner).clock = Some(clock);
        self
    }

    /// Which hash slot each budget's books are kept in (default
    /// [`LedgerPlacement::Untagged`] on a single Redis,
    /// [`LedgerPlacement::OneSlot`] on a cluster); see "Redis Cluster"
    /// above. Every instance sharing the ledger must use the same placement.
    pub fn placement(mut self, placement: LedgerPlacement) -> Self {
        Arc::make_mut(&mut self.inner).placement = placement;
        self
    }

    /// The connection.
    pub fn connection(&self) -> &RedisConnection {
        &self.inner.redis
    }
}

impl fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLedger")
            .field("redis", &self.inner.redis)
            .field("lease", &self.inner.lease)
            .field("server_time", &self.inner.clock.is_none())
            .field("placement", &self.inner.placement)
            .finish()
    }
}

impl Inner {
    fn now_arg(&self) -> String {
        match &self.clock {
            Some(clock) => clock.now_unix().as_micros().to_string(),
            None => String::new(),
        }
    }

    fn lease_ms(&self) -> String {
        self.lease.as_millis().to_string()
    }

    /// The names of a call touching the books of `scopes`.
    fn books<'a>(
        &self,
        scopes: impl IntoIterator<Item = &'a BudgetScope>,
    ) -> Result<(Books, Option<String>), StoreError> {
        let tag = self.placement.tag(scopes)?;
        Ok((
            Books::new(self.redis.config().get_key_prefix(), tag.as_deref()),
            tag,
        ))
    }

    /// Adds `tag` to the list of tenants with spend, once per process (a
    /// spend report across tenants reads it).
    async fn register_tenant(&self, tag: String) -> Result<(), StoreError> {
        if lock(&self.tenants).contains(&tag) {
            return Ok(());
        }
        let keys = vec![Books::tenants(self.redis.config().get_key_prefix())];
        self.redis
            .eval::<Value>(&LEDGER_TENANTS, keys, vec![tag.clone()])
            .await?;
        let mut known = lock(&self.tenants);
        if known.len() >= MAX_KNOWN_TENANTS {
            known.clear();
        }
        known.insert(tag);
        Ok(())
    }
}

/// Tenants remembered as listed, per process; past this the memory is
/// cleared (and each tenant listed again, which is harmless).
const MAX_KNOWN_TENANTS: usize = 100_000;

/// A reservation's script keys and arguments, and the distinct budget each
/// budget passed maps to.
pub(in crate::store::redis) type ReserveCall = (Vec<String>, Vec<String>, Vec<usize>);

impl RedisLedger {
    /// The keys and arguments of `ledger_reserve` for a hold of `amount`
    /// against `budgets`, and the distinct budget each budget maps to (for
    /// `reserve_outcome`).
    pub(in crate::store::redis) fn reserve_args(
        &self,
        budgets: &Arc<[BudgetSpec]>,
        amount: Money,
        policy: ReservePolicy,
    ) -> Result<ReserveCall, StoreError> {
        let inner = &self.inner;
        let distinct = Distinct::new(budgets);
        let n = distinct.budgets.len();
        let (books, _) = inner.books(distinct.budgets.iter().map(|b| &b.scope))?;
        let mut keys: Vec<String> = distinct.budgets.iter().map(|b| books.budget(b)).collect();
        keys.push(books.holds());
        keys.push(books.sequence());
        let mut args = vec![
            inner.now_arg(),
            amount.max(Money::ZERO).nanos().to_string(),
            match policy {
                ReservePolicy::Strict => "s",
                ReservePolicy::Bounded => "b",
            }
            .into(),
            inner.lease_ms(),
            books.hold_prefix(),
            n.to_string(),
        ];
        for spec in &distinct.budgets {
            push_spec(&mut args, spec);
        }
        Ok((keys, args, distinct.of))
    }
}

impl Ledger for RedisLedger {
    fn reserve(
        &self,
        budgets: &Arc<[BudgetSpec]>,
        amount: Money,
        policy: ReservePolicy,
    ) -> StoreFuture<ReserveOutcome> {
        let (keys, args, of) = match self.reserve_args(budgets, amount, policy) {
            Ok(call) => call,
            Err(error) => return StoreFuture::ready(Err(error)),
        };
        let call = self
            .inner
            .redis
            .eval::<Vec<Value>>(&LEDGER_RESERVE, keys, args);
        let budgets = budgets.clone();
        StoreFuture::pending(async move { reserve_outcome(&call.await?, &of, budgets) })
    }

    fn settle(&self, reservation: &Reservation, charge: &Charge) -> StoreFuture<Settlement> {
        let inner = &self.inner;
        let distinct = Distinct::new(reservation.budgets());
        let n = distinct.budgets.len();
        // The budgets' tenant; with none, the attributed scopes' (whose
        // aggregates the script writes in the same slot).
        let scopes: Vec<&BudgetScope> = if n > 0 {
            distinct.budgets.iter().map(|b| &b.scope).collect()
        } else {
            charge
                .attribution
                .iter()
                .flat_map(|a| a.scopes.iter())
                .collect()
        };
        let (books, tag) = match inner.books(scopes) {
            Ok(books) => books,
            Err(error) => return StoreFuture::ready(Err(error)),
        };
        let id = reservation.id().0.to_string();
        let mut keys: Vec<String> = distinct.budgets.iter().map(|b| books.budget(b)).collect();
        keys.push(books.holds());
        keys.push(books.hold(&id));
        keys.push(books.spend_scopes());
        let actual = charge.cost.max(Money::ZERO);
        let mut args = vec![
            inner.now_arg(),
            actual.nanos().to_string(),
            reservation.amount().nanos().to_string(),
            id,
            inner.lease_ms(),
            books.hold_prefix(),
            n.to_string(),
        ];
        for spec in &distinct.budgets {
            push_spec(&mut args, spec);
        }
        args.push(books.spend_prefix());
        match &charge.attribution {
            Some(attribution) => {
                let clamp = |n: u64| n.min(i64::MAX as u64).to_string();
                args.push(attribution.model.to_string());
                args.push(clamp(charge.tokens.prompt));
                args.push(clamp(charge.tokens.completion));
                args.push(clamp(charge.tokens.cached));
                args.push(attribution.scopes.len().to_string());
                args.extend(attribution.scopes.iter().map(BudgetScope::id));
            }
            None => args.extend(["".into(), "0".into(), "0".into(), "0".into(), "0".into()]),
        }
        let of = distinct.of;
        let call = inner.redis.settle(SettleCall {
            kind: SettleKind::Charge,
            keys,
            args,
        });
        let register = match tag {
            Some(tag) if inner.placement.is_by_tenant() && charge.attribution.is_some() => {
                Some((self.inner.clone(), tag))
            }
            _ => None,
        };
        StoreFuture::pending(async move {
            let Value::Array(mut reply) = call.await? else {
                return Err(corrupt("a settlement's reply is not a list"));
            };
            if let Some((inner, tag)) = register {
                // The charge is made: a failure to list its tenant only
                // delays it to the next settlement, and is not the
                // settlement's failure.
                if let Err(error) = inner.register_tenant(tag).await {
                    tracing::debug!(%error, "redis ledger: tenant not listed yet");
                }
            }
            let day = int(&reply.pop().ok_or_else(|| corrupt("no day"))?)?;
            let distinct = statuses(&reply, n)?;
            Ok(Settlement {
                charged: actual,
                statuses: of.iter().map(|&i| distinct[i]).collect(),
                day,
            })
        })
    }

    fn release(&self, reservation: &Reservation) -> StoreFuture<()> {
        let inner = &self.inner;
        let books = match inner.books(reservation.budgets().iter().map(|b| &b.scope)) {
            Ok((books, _)) => books,
            Err(error) => return StoreFuture::ready(Err(error)),
        };
        let id = reservation.id().0.to_string();
        let keys = vec![books.holds(), books.hold(&id)];
        let args = vec![
            inner.now_arg(),
            reservation.amount().nanos().to_string(),
            id,
            books.hold_prefix(),
        ];
        let call = inner.redis.settle(SettleCall {
            kind: SettleKind::Release,
            keys,
            args,
        });
        StoreFuture::pending(async move { call.await.map(drop) })
    }

    fn top_up(
        &self,
        budget: &BudgetSpec,
        amount: Money,
        idempotency_key: Option<&str>,
    ) -> StoreFuture<TopUpOutcome> {
        let inner = &self.inner;
        let args = vec![amount.nanos().to_string(), inner.lease_ms()];
        let call = inner.budget_script(&LEDGER_TOP_UP, budget, args, idempotency_key);
        StoreFuture::pending(async move {
            let mut reply = call?.await?;
            let replayed = int(&reply.pop().ok_or_else(|| corrupt("no replay flag"))?)? == 1;
            Ok(TopUpOutcome {
                status: status(&reply)?,
                replayed,
            })
        })
    }

    fn read(&self, budget: &BudgetSpec) -> StoreFuture<BudgetStatus> {
        let call = self.inner.budget_script(&LEDGER_READ, budget, vec![], None);
        StoreFuture::pending(async move { status(&call?.await?) })
    }

    fn reset(&self, budget: &BudgetSpec) -> StoreFuture<BudgetStatus> {
        let args = vec![self.inner.lease_ms()];
        let call = self.inner.budget_script(&LEDGER_RESET, budget, args, None);
        StoreFuture::pending(async move { status(&call?.await?) })
    }

    fn spend(&self, query: &SpendQuery) -> StoreFuture<Vec<SpendRow>> {
        let inner = self.inner.clone();
        let query = query.clone();
        StoreFuture::pending(async move {
            // The tags to read: the scope's, or (every scope of a kind)
            // every tenant's.
            let tags = match (&query.scope, inner.placement.is_by_tenant()) {
                (None, true) => {
                    let keys = vec![Books::tenants(inner.redis.config().get_key_prefix())];
                    let tags: Vec<String> = inner
                        .redis
                        .eval(&LEDGER_TENANTS, keys, vec![String::new()])
                        .await?;
                    tags.into_iter().map(Some).collect()
                }
                (scope, _) => vec![inner.placement.tag(scope)?],
            };
            let mut rows = Vec::new();
            for tag in tags {
                let books = Books::new(inner.redis.config().get_key_prefix(), tag.as_deref());
                rows.extend(spend_rows(&inner.spend_call(&books, &query).await?)?);
            }
            Ok(crate::budget::spend_report(
                &query,
                rows.iter().map(|(s, m, d, t)| (s, m.as_str(), *d, t)),
            ))
        })
    }
}

impl Inner {
    /// `script` on the books of `budget` alone: the keys `[budget, holds]`
    /// (and the record of the top-up `top_up_key`), the arguments `[now,
    /// args…, hold prefix]` and the budget's spec.
    fn budget_script(
        &self,
        script: &'static redis::Script,
        budget: &BudgetSpec,
        args: Vec<String>,
        top_up_key: Option<&str>,
    ) -> Result<impl Future<Output = Result<Vec<Value>, StoreError>> + Send + use<>, StoreError>
    {
        let (books, _) = self.books([&budget.scope])?;
        let mut keys = vec![books.budget(budget), books.holds()];
        keys.extend(top_up_key.map(|key| books.top_up(budget, key)));
        let mut all = vec![self.now_arg()];
        all.extend(args);
        all.push(books.hold_prefix());
        push_spec(&mut all, budget);
        Ok(self.redis.eval(script, keys, all))
    }

    /// The spend script on one tag's aggregates.
    fn spend_call(
        &self,
        books: &Books,
        query: &SpendQuery,
    ) -> impl Future<Output = Result<Vec<Value>, StoreError>> + Send + 'static {
        let keys = vec![books.spend_scopes()];
        let kind = match query.group_by.scope_kind() {
            crate::budget::ScopeKind::Key => "key:",
            crate::budget::ScopeKind::User => "user:",
            crate::budget::ScopeKind::Team => "team:",
            crate::budget::ScopeKind::Org => "org:",
        };
        let day = |d: Option<i64>, open: &str| d.map_or_else(|| open.to_owned(), |d| d.to_string());
        let args = vec![
            books.spend_prefix(),
            query
                .scope
                .as_ref()
                .map(BudgetScope::id)
                .unwrap_or_default(),
            kind.to_owned(),
            query.model.clone().unwrap_or_default(),
            day(query.from_day, "-inf"),
            day(query.to_day, "+inf"),
        ];
        self.redis.eval::<Vec<Value>>(&LEDGER_SPEND, keys, args)
    }
}
