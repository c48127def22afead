//! [`RedisLedger`]: budgets and balances shared by every gateway instance.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::RedisConnection;
use super::scripts::{
    LEDGER_READ, LEDGER_RELEASE, LEDGER_RESERVE, LEDGER_RESET, LEDGER_SETTLE, LEDGER_SPEND,
    LEDGER_TOP_UP,
};
use crate::budget::{
    BudgetMode, BudgetScope, BudgetSpec, BudgetStatus, Charge, Ledger, Money, Period, PeriodWindow,
    Reservation, ReservationId, ReserveOutcome, ReservePolicy, Settlement, SpendQuery, SpendRow,
    SpendTotals, TopUpOutcome,
};
use crate::clock::SharedClock;
use crate::store::{StoreError, StoreFuture};

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
/// Lua script, which
/// Redis runs atomically: a reservation checks every budget of the request
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
/// # Memory
///
/// A budget's books (`<prefix>budget:<scope>`) expire once its period has
/// ended and its holds' leases have run out; prepaid balances and lifetime
/// (`Period::Never`) budgets are kept, as they carry money. Holds are
/// deleted when settled, released, or swept.
///
/// # When Redis fails
///
/// Every call is bounded by the connection's call timeout and fails with a
/// [`StoreError`]; [`BudgetLayer`](crate::budget::BudgetLayer)'s failure
/// policy decides: by default it refuses with 503 `store_unavailable` (no
/// spend the ledger cannot see). Settlements and releases that could not be
/// sent while Redis was unreachable are retried in the background for
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
}

impl RedisLedger {
    /// Default hold lease: one hour (as [`MemoryLedger`](crate::store::memory::MemoryLedger)).
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(3600);

    /// A ledger on `redis`: server time, one-hour leases.
    pub fn new(redis: RedisConnection) -> Self {
        RedisLedger {
            inner: Arc::new(Inner {
                redis,
                lease: Self::DEFAULT_LEASE,
                clock: None,
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
            .finish()
    }
}

/// The budgets of a call without repeats (a scope named twice counts once),
/// and where each of the caller's budgets went.
struct Distinct<'a> {
    budgets: Vec<&'a BudgetSpec>,
    /// For each budget passed, its index in `budgets`.
    of: Vec<usize>,
}

impl<'a> Distinct<'a> {
    fn new(budgets: &'a [BudgetSpec]) -> Self {
        let mut distinct: Vec<&BudgetSpec> = Vec::with_capacity(budgets.len());
        let of = budgets
            .iter()
            .map(|b| match distinct.iter().position(|d| d.scope == b.scope) {
                Some(i) => i,
                None => {
                    distinct.push(b);
                    distinct.len() - 1
                }
            })
            .collect();
        Distinct {
            budgets: distinct,
            of,
        }
    }
}

/// Periods as the scripts read them.
fn period_code(period: Period) -> String {
    match period {
        Period::Daily => "d".into(),
        Period::Weekly => "w".into(),
        Period::Monthly => "m".into(),
        Period::Rolling(length) if !length.is_zero() => {
            let us = u64::try_from(length.as_micros()).unwrap_or(u64::MAX);
            format!("r{}", us.clamp(1, 1 << 51))
        }
        Period::Rolling(_) | Period::Never => "n".into(),
    }
}

fn push_spec(args: &mut Vec<String>, spec: &BudgetSpec) {
    args.push(
        match spec.mode {
            BudgetMode::Budget => "b",
            BudgetMode::Balance => "p",
        }
        .into(),
    );
    args.push(spec.limit.nanos().to_string());
    args.push(period_code(spec.period));
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

    fn budget_key(&self, spec: &BudgetSpec) -> String {
        self.redis.key(&format!("budget:{}", spec.id()))
    }

    fn holds_key(&self) -> String {
        self.redis.key("holds")
    }

    fn hold_prefix(&self) -> String {
        self.redis.key("hold:")
    }

    fn spend_prefix(&self) -> String {
        self.redis.key("spend:")
    }

    fn spend_scopes_key(&self) -> String {
        self.redis.key("spend-scopes")
    }
}

const NO_BUDGET: BudgetSpec = BudgetSpec {
    scope: BudgetScope::Key(String::new()),
    limit: Money::ZERO,
    period: Period::Never,
    mode: BudgetMode::Budget,
};

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("ledger script returned {what}"))
}

fn int(value: &Value) -> Result<i64, StoreError> {
    match value {
        Value::Int(n) => Ok(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt("a non-integer")),
        Value::SimpleString(s) => s.parse().map_err(|_| corrupt("a non-integer")),
        _ => Err(corrupt("an unexpected value")),
    }
}

fn money(value: &Value) -> Result<Money, StoreError> {
    let text = match value {
        Value::Int(n) => return Ok(Money::from_nanos(*n)),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).map_err(|_| corrupt("non-UTF-8"))?,
        Value::SimpleString(s) => s.as_str(),
        _ => return Err(corrupt("an unexpected amount")),
    };
    // Sums can leave i64 in Lua (exact there); they saturate here.
    let nanos: i128 = text.parse().map_err(|_| corrupt("a malformed amount"))?;
    Ok(Money::from_nanos(
        nanos.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
    ))
}

fn micros(value: &Value) -> Result<Duration, StoreError> {
    Ok(Duration::from_micros(
        u64::try_from(int(value)?).unwrap_or(0),
    ))
}

/// A status: mode, limit, spent, reserved, window start, window end (-1: none).
fn status(values: &[Value]) -> Result<BudgetStatus, StoreError> {
    let [mode, limit, spent, reserved, start, end] = values else {
        return Err(corrupt("a malformed status"));
    };
    let mode = match mode {
        Value::BulkString(b) if b.as_slice() == b"p" => BudgetMode::Balance,
        Value::BulkString(b) if b.as_slice() == b"b" => BudgetMode::Budget,
        _ => return Err(corrupt("an unknown budget mode")),
    };
    Ok(BudgetStatus {
        mode,
        limit: money(limit)?,
        spent: money(spent)?,
        reserved: money(reserved)?,
        period: PeriodWindow {
            start: micros(start)?,
            end: (int(end)? >= 0).then(|| micros(end)).transpose()?,
        },
    })
}

fn statuses(values: &[Value], n: usize) -> Result<Vec<BudgetStatus>, StoreError> {
    if values.len() != 6 * n {
        return Err(corrupt("the wrong number of statuses"));
    }
    values.chunks_exact(6).map(status).collect()
}

/// Reads the reserve script's reply; `of` maps each budget passed to its
/// distinct budget (the script numbers distinct budgets from 1).
fn reserve_outcome(
    reply: &[Value],
    of: &[usize],
    budgets: Arc<[BudgetSpec]>,
) -> Result<ReserveOutcome, StoreError> {
    let index = |v: &Value| -> Result<usize, StoreError> {
        let i = usize::try_from(int(v)?).map_err(|_| corrupt("a bad index"))?;
        // The first budget passed that maps to distinct budget `i`.
        of.iter()
            .position(|&d| d + 1 == i)
            .ok_or_else(|| corrupt("a bad index"))
    };
    match reply {
        [flag, i, rest @ ..] if int(flag)? == 0 => Ok(ReserveOutcome::Denied {
            index: index(i)?,
            status: status(rest)?,
        }),
        [_, id, held, tightest, rest @ ..] => {
            let id = u64::try_from(int(id)?).map_err(|_| corrupt("a bad id"))?;
            let (index, status) = if int(tightest)? == 0 {
                (0, BudgetStatus::fresh(&NO_BUDGET, PeriodWindow::NEVER))
            } else {
                (index(tightest)?, status(rest)?)
            };
            Ok(ReserveOutcome::Reserved {
                reservation: Reservation::new(ReservationId(id), money(held)?, budgets),
                index,
                status,
            })
        }
        _ => Err(corrupt("a malformed reservation")),
    }
}

/// One row of the spend script's reply.
fn spend_rows(reply: &[Value]) -> Result<Vec<(BudgetScope, String, i64, SpendTotals)>, StoreError> {
    let text = |v: &Value| -> Result<String, StoreError> {
        match v {
            Value::BulkString(b) => String::from_utf8(b.clone()).map_err(|_| corrupt("non-UTF-8")),
            Value::SimpleString(s) => Ok(s.clone()),
            _ => Err(corrupt("an unexpected value")),
        }
    };
    let count = |v: &Value| int(v).map(|n| u64::try_from(n).unwrap_or(0));
    reply
        .chunks(8)
        .map(|row| {
            let [
                scope,
                model,
                day,
                cost,
                prompt,
                completion,
                cached,
                requests,
            ] = row
            else {
                return Err(corrupt("a malformed spend row"));
            };
            let scope = BudgetScope::parse(&text(scope)?).ok_or_else(|| corrupt("a bad scope"))?;
            Ok((
                scope,
                text(model)?,
                int(day)?,
                SpendTotals {
                    cost: money(cost)?,
                    prompt_tokens: count(prompt)?,
                    completion_tokens: count(completion)?,
                    cached_tokens: count(cached)?,
                    requests: count(requests)?,
                },
            ))
        })
        .collect()
}

impl Ledger for RedisLedger {
    fn reserve(
        &self,
        budgets: &Arc<[BudgetSpec]>,
        amount: Money,
        policy: ReservePolicy,
    ) -> StoreFuture<ReserveOutcome> {
        let inner = &self.inner;
        let distinct = Distinct::new(budgets);
        let n = distinct.budgets.len();
        let mut keys: Vec<String> = distinct
            .budgets
            .iter()
            .map(|b| inner.budget_key(b))
            .collect();
        keys.push(inner.holds_key());
        keys.push(inner.redis.key("ledger:seq"));
        let mut args = vec![
            inner.now_arg(),
            amount.max(Money::ZERO).nanos().to_string(),
            match policy {
                ReservePolicy::Strict => "s",
                ReservePolicy::Bounded => "b",
            }
            .into(),
            inner.lease_ms(),
            inner.hold_prefix(),
            n.to_string(),
        ];
        for spec in &distinct.budgets {
            push_spec(&mut args, spec);
        }
        let of = distinct.of;
        let call = inner.redis.eval::<Vec<Value>>(&LEDGER_RESERVE, keys, args);
        let budgets = budgets.clone();
        StoreFuture::pending(async move { reserve_outcome(&call.await?, &of, budgets) })
    }

    fn settle(&self, reservation: &Reservation, charge: &Charge) -> StoreFuture<Settlement> {
        let inner = &self.inner;
        let distinct = Distinct::new(reservation.budgets());
        let n = distinct.budgets.len();
        let id = reservation.id().0.to_string();
        let mut keys: Vec<String> = distinct
            .budgets
            .iter()
            .map(|b| inner.budget_key(b))
            .collect();
        keys.push(inner.holds_key());
        keys.push(inner.redis.key(&format!("hold:{id}")));
        keys.push(inner.spend_scopes_key());
        let actual = charge.cost.max(Money::ZERO);
        let mut args = vec![
            inner.now_arg(),
            actual.nanos().to_string(),
            reservation.amount().nanos().to_string(),
            id,
            inner.lease_ms(),
            inner.hold_prefix(),
            n.to_string(),
        ];
        for spec in &distinct.budgets {
            push_spec(&mut args, spec);
        }
        args.push(inner.spend_prefix());
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
        let call = inner
            .redis
            .eval_settlement::<Vec<Value>>(&LEDGER_SETTLE, keys, args);
        StoreFuture::pending(async move {
            let mut reply = call.await?;
            let day = match reply.pop() {
                Some(day) => int(&day)?,
                None => return Err(corrupt("no day")),
            };
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
        let id = reservation.id().0.to_string();
        let keys = vec![inner.holds_key(), inner.redis.key(&format!("hold:{id}"))];
        let args = vec![
            inner.now_arg(),
            reservation.amount().nanos().to_string(),
            id,
            inner.hold_prefix(),
        ];
        let call = inner
            .redis
            .eval_settlement::<i64>(&LEDGER_RELEASE, keys, args);
        StoreFuture::pending(async move { call.await.map(drop) })
    }

    fn top_up(
        &self,
        budget: &BudgetSpec,
        amount: Money,
        idempotency_key: Option<&str>,
    ) -> StoreFuture<TopUpOutcome> {
        let inner = &self.inner;
        let mut keys = vec![inner.budget_key(budget), inner.holds_key()];
        if let Some(key) = idempotency_key {
            keys.push(inner.redis.key(&format!("top-up:{}:{key}", budget.id())));
        }
        let mut args = vec![
            inner.now_arg(),
            amount.nanos().to_string(),
            inner.lease_ms(),
            inner.hold_prefix(),
        ];
        push_spec(&mut args, budget);
        let call = inner.redis.eval::<Vec<Value>>(&LEDGER_TOP_UP, keys, args);
        StoreFuture::pending(async move {
            let mut reply = call.await?;
            let replayed = match reply.pop() {
                Some(flag) => int(&flag)? == 1,
                None => return Err(corrupt("no replay flag")),
            };
            Ok(TopUpOutcome {
                status: status(&reply)?,
                replayed,
            })
        })
    }

    fn read(&self, budget: &BudgetSpec) -> StoreFuture<BudgetStatus> {
        let inner = &self.inner;
        let keys = vec![inner.budget_key(budget), inner.holds_key()];
        let mut args = vec![inner.now_arg(), inner.hold_prefix()];
        push_spec(&mut args, budget);
        let call = inner.redis.eval::<Vec<Value>>(&LEDGER_READ, keys, args);
        StoreFuture::pending(async move { status(&call.await?) })
    }

    fn reset(&self, budget: &BudgetSpec) -> StoreFuture<BudgetStatus> {
        let inner = &self.inner;
        let keys = vec![inner.budget_key(budget), inner.holds_key()];
        let mut args = vec![inner.now_arg(), inner.lease_ms(), inner.hold_prefix()];
        push_spec(&mut args, budget);
        let call = inner.redis.eval::<Vec<Value>>(&LEDGER_RESET, keys, args);
        StoreFuture::pending(async move { status(&call.await?) })
    }

    fn spend(&self, query: &SpendQuery) -> StoreFuture<Vec<SpendRow>> {
        let inner = &self.inner;
        let keys = vec![inner.spend_scopes_key()];
        let kind = match query.group_by.scope_kind() {
            crate::budget::ScopeKind::Key => "key:",
            crate::budget::ScopeKind::User => "user:",
            crate::budget::ScopeKind::Team => "team:",
            crate::budget::ScopeKind::Org => "org:",
        };
        let day = |d: Option<i64>, open: &str| d.map_or_else(|| open.to_owned(), |d| d.to_string());
        let args = vec![
            inner.spend_prefix(),
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
        let call = inner.redis.eval::<Vec<Value>>(&LEDGER_SPEND, keys, args);
        let query = query.clone();
        StoreFuture::pending(async move {
            let rows = spend_rows(&call.await?)?;
            Ok(crate::budget::spend_report(
                &query,
                rows.iter().map(|(s, m, d, t)| (s, m.as_str(), *d, t)),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_scopes_count_once() {
        let key =
            |id: &str| BudgetSpec::budget(BudgetScope::Key(id.into()), Money::ZERO, Period::Never);
        let budgets = [key("a"), key("b"), key("a")];
        let d = Distinct::new(&budgets);
        assert_eq!(d.budgets.len(), 2);
        assert_eq!(d.of, [0, 1, 0]);
    }

    #[test]
    fn period_codes() {
        assert_eq!(period_code(Period::Monthly), "m");
        assert_eq!(
            period_code(Period::Rolling(Duration::from_secs(90))),
            "r90000000"
        );
        assert_eq!(period_code(Period::Rolling(Duration::ZERO)), "n");
        assert_eq!(period_code(Period::Rolling(Duration::from_nanos(1))), "r1");
    }

    #[test]
    fn amounts_parse_exactly_and_saturate() {
        let s = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        assert_eq!(
            money(&s("-1500000000")).unwrap(),
            Money::from_nanos(-1_500_000_000)
        );
        assert_eq!(
            money(&s("9223372036854775807")).unwrap(),
            Money::from_nanos(i64::MAX)
        );
        assert_eq!(
            money(&s("99999999999999999999")).unwrap(),
            Money::from_nanos(i64::MAX)
        );
        assert!(money(&s("1.5")).is_err());
    }
}
