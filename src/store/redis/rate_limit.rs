//! [`RedisRateLimitStore`]: rate limits shared by every gateway instance.
//!
//! Longer than most files (about 800 lines): the admission in one script or
//! in two slots, and the fallback that must settle what it admitted, share
//! the same owned request types and are read together.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::RedisConnection;
use super::scripts::RATE_LIMIT_ACQUIRE;
use super::settlements::{SettleCall, SettleKind};
use crate::clock::SharedClock;
use crate::rate_limit::{
    Acquire, Admission, Algorithm, Limit, LimitState, LimitStates, Measure, RateLimitKey,
    RateLimitStore, Receipt, ScopeCharge, ScopeSettle, Settle, Verdict,
};
use crate::store::memory::MemoryRateLimitStore;
use crate::store::{StoreError, StoreFuture};

/// Amounts, windows and costs are clamped below this so that the scripts'
/// arithmetic (Lua doubles) stays exact: 2^51 tokens or µs (71 years).
const LUA_MAX: u64 = 1 << 51;

/// Rate-limit state in Redis: N gateway instances share exactly one set of
/// limits.
///
/// ```no_run
/// use std::time::Duration;
/// use tollgate::rate_limit::{Acquire, Limit, RateLimitKey, RateLimitStore, ScopeCharge, Verdict};
/// use tollgate::store::memory::MemoryRateLimitStore;
/// use tollgate::store::redis::{RedisConfig, RedisConnection, RedisRateLimitStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let redis = RedisConnection::connect(RedisConfig::from_url("redis://127.0.0.1:6379/0")?).await?;
/// let store = RedisRateLimitStore::builder(redis)
///     // Three gateway instances: during a Redis outage each admits a third.
///     .fail_open_fallback(MemoryRateLimitStore::new(), 1.0 / 3.0)
///     .build();
///
/// let limits = [Limit::requests_per_minute(100), Limit::tokens_per_minute(50_000)];
/// let scopes = [ScopeCharge {
///     key: RateLimitKey::new("alice"),
///     limits: &limits,
///     costs: &[1, 1_200],
///     max_concurrent: Some(8),
/// }];
/// let admission = store.acquire(&Acquire { scopes: &scopes }).await?;
/// assert_eq!(admission.verdict, Verdict::Admitted);
/// # Ok(())
/// # }
/// ```
///
/// # One round trip, all or nothing
///
/// An admission is one `EVALSHA` of a Lua script: it reads each scope's
/// state, runs every limit's algorithm (the same integer arithmetic as the
/// memory store: sliding windows, GCRA, fixed windows), checks the
/// concurrency slots, and writes the charges only if every limit of every
/// scope admits the request. Redis runs a script atomically, so concurrent
/// admissions on any number of instances see each other's charges exactly:
/// 300 concurrent requests against a limit of 100 admit 100. A settlement
/// (refund or extra charge of tokens, freeing the slots) goes to the
/// connection's settlement writer, which sends the settlements that queued
/// meanwhile (of every store on the connection) as one `EVALSHA`, each
/// applied exactly once. Amounts, windows and costs are clamped to 2^51 (tokens, µs),
/// far beyond any real limit, to keep the script's arithmetic exact.
///
/// A scope's state is one hash with a field per limit, named by the limit's
/// measure, algorithm and window, never its amount: a limit raised or
/// lowered keeps its count, and instances configured differently share it
/// (a field another instance uses is kept until it is back to full).
///
/// # Redis Cluster: one slot per caller, one for shared scopes
///
/// Every key a script touches is declared in `KEYS` and carries a hash tag.
/// A caller's own scopes (its key, its key per model) are tagged with its
/// key id, so one caller's state lives in one slot and callers spread over
/// the cluster. Scopes shared by every caller (a model's capacity, an
/// upstream, a team) are all tagged `{shared}`: they are global counters
/// anyway, and one slot lets one script check several of them at once.
///
/// On a single Redis (or Sentinel) every admission stays one script, all
/// or nothing. On a cluster ([`RedisConfig::cluster`](super::RedisConfig::cluster)),
/// an admission that touches only one of the two kinds is still one
/// script; one that touches both runs the caller's script, then the shared
/// one, and undoes the first if the second refuses. **The trade-off**:
/// two round trips for those requests, and between the two scripts another
/// request of the same caller may be refused for a charge that is then
/// undone: a cluster can refuse a little more than a single Redis, never
/// admit more. The alternative, one tag for everything, keeps one script
/// but puts every key's state on one node, which is what a cluster is
/// there to avoid.
///
/// # Time: the server's
///
/// The script reads Redis's `TIME`, so instances whose clocks disagree
/// still agree on every window. [`clock`](RedisRateLimitStoreBuilder::clock)
/// replaces it with a clock of the caller's, passed to the script (for
/// tests: with one clock, the memory store and this one decide exactly
/// alike, `tests/redis_rate_limit.rs` checks it). GCRA units and sliding
/// buckets are counted on grids anchored at the Unix epoch, fixed windows
/// are UTC-aligned: every instance agrees whenever it first saw a key.
///
/// # Bounded memory
///
/// A scope's state is one hash (`<prefix>rl:{<tag>}:…`) that expires
/// (`PEXPIRE`) when every one of its limits is back to full, the moment it
/// becomes indistinguishable from no state; a field back to full is dropped
/// by the next write. Concurrency slots are a sorted set
/// (`<prefix>rc:{<tag>}:…`) of leases: a slot whose request never settled (its
/// instance crashed) is freed when its lease runs out
/// ([`slot_lease`](RedisRateLimitStoreBuilder::slot_lease), default 10
/// minutes), and the set expires with its last lease.
///
/// # When Redis fails
///
/// Without a fallback, `acquire` returns the [`StoreError`] and the layer's
/// [`FailurePolicy`](crate::rate_limit::FailurePolicy) decides (by default
/// it admits without limits). With
/// [`fail_open_fallback`](RedisRateLimitStoreBuilder::fail_open_fallback),
/// the store answers from a local [`MemoryRateLimitStore`] with every limit
/// scaled to this instance's share, so an outage neither stops traffic nor
/// lifts the limits: N instances each admitting `1/N` of a limit admit the
/// limit. The fallback is used call by call: as soon as Redis answers again,
/// admissions go back to it. Requests admitted by the fallback are settled
/// by the fallback.
#[derive(Clone)]
pub struct RedisRateLimitStore {
    inner: Arc<Inner>,
}

struct Inner {
    redis: RedisConnection,
    slot_lease: Duration,
    clock: Option<SharedClock>,
    fallback: Option<Arc<Fallback>>,
    /// Slot tokens: unique per admission across instances.
    instance: u64,
    next_slot: AtomicU64,
}

/// Builds a [`RedisRateLimitStore`].
pub struct RedisRateLimitStoreBuilder {
    redis: RedisConnection,
    slot_lease: Duration,
    clock: Option<SharedClock>,
    fallback: Option<(MemoryRateLimitStore, f64)>,
}

impl RedisRateLimitStore {
    /// Default lease of a concurrency slot: 10 minutes.
    pub const DEFAULT_SLOT_LEASE: Duration = Duration::from_secs(600);

    /// A store on `redis` with the defaults: server time, 10-minute slot
    /// leases, no fallback.
    pub fn new(redis: RedisConnection) -> Self {
        RedisRateLimitStore::builder(redis).build()
    }

    /// A builder to change the defaults.
    pub fn builder(redis: RedisConnection) -> RedisRateLimitStoreBuilder {
        RedisRateLimitStoreBuilder {
            redis,
            slot_lease: Self::DEFAULT_SLOT_LEASE,
            clock: None,
            fallback: None,
        }
    }

    /// The connection.
    pub fn connection(&self) -> &RedisConnection {
        &self.inner.redis
    }
}

impl RedisRateLimitStoreBuilder {
    /// How long a concurrency slot is held when its request never settles
    /// (its gateway instance crashed); default 10 minutes. A request that
    /// runs longer than this loses its slot early.
    pub fn slot_lease(mut self, lease: Duration) -> Self {
        self.slot_lease = lease.max(Duration::from_millis(1));
        self
    }

    /// Reads time from `clock` instead of the Redis server. Every instance
    /// sharing the limits must then have the same clock: use it for tests.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// When Redis fails (unreachable, timed out), answer from `store` with
    /// every limit and concurrency cap scaled by `share` (rounded up), this
    /// instance's part of the whole: `1.0 / 3.0` for three instances. A
    /// `share` outside `(0, 1]` (or NaN) counts as 1.
    pub fn fail_open_fallback(mut self, store: MemoryRateLimitStore, share: f64) -> Self {
        let share = if share > 0.0 && share <= 1.0 {
            share
        } else {
            1.0
        };
        self.fallback = Some((store, share));
        self
    }

    /// Builds the store.
    pub fn build(self) -> RedisRateLimitStore {
        RedisRateLimitStore {
            inner: Arc::new(Inner {
                redis: self.redis,
                slot_lease: self.slot_lease,
                clock: self.clock,
                fallback: self.fallback.map(|(store, share)| {
                    Arc::new(Fallback {
                        store,
                        share,
                        outstanding: Mutex::new(HashMap::new()),
                    })
                }),
                instance: crate::rng::os_seed(),
                next_slot: AtomicU64::new(0),
            }),
        }
    }
}

impl fmt::Debug for RedisRateLimitStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitStoreBuilder")
            .field("slot_lease", &self.slot_lease)
            .field("server_time", &self.clock.is_none())
            .field("fallback_share", &self.fallback.as_ref().map(|(_, s)| *s))
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RedisRateLimitStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitStore")
            .field("redis", &self.inner.redis)
            .field("slot_lease", &self.inner.slot_lease)
            .field("server_time", &self.inner.clock.is_none())
            .field(
                "fallback_share",
                &self.inner.fallback.as_ref().map(|f| f.share),
            )
            .finish()
    }
}

/// The hash tag of a scope's keys: the caller's own slot for its key
/// scopes (`{<len>:<id>}`, never empty), one slot for every scope shared by
/// several keys (`{shared}`).
fn tag(key: RateLimitKey<'_>) -> String {
    if key.is_caller() {
        format!("{{{}:{}}}", key.id.len(), key.id)
    } else {
        "{shared}".to_owned()
    }
}

/// The Redis keys of a scope: its limits' states and its slots. Parts are
/// length-prefixed so that no two scopes share a name.
fn redis_keys(redis: &RedisConnection, key: RateLimitKey<'_>) -> [String; 2] {
    let mut name = format!(
        "{}:{}:{}:{}:{}",
        tag(key),
        key.scope.len(),
        key.scope,
        key.id.len(),
        key.id
    );
    if let Some(model) = key.model {
        name.push(':');
        name.push_str(model);
    }
    [
        redis.key(&format!("rl:{name}")),
        redis.key(&format!("rc:{name}")),
    ]
}

/// A limit's field in its scope's hash: measure, algorithm, window. Not
/// the amount: a changed amount keeps the state.
fn field(limit: &Limit) -> String {
    let measure = match limit.measure {
        Measure::Requests => 'R',
        Measure::Tokens => 'T',
    };
    format!("{measure}{}{}", algorithm(limit), limit.window.as_nanos())
}

/// A limit's algorithm as the scripts name it.
fn algorithm(limit: &Limit) -> &'static str {
    match limit.algorithm {
        Algorithm::Gcra => "g",
        Algorithm::Fixed => "f",
        Algorithm::Sliding => "s",
    }
}

/// Field, algorithm, amount, window and burst, as the scripts read them.
fn limit_args(limit: &Limit) -> [String; 5] {
    let window_us = u64::try_from(limit.window.as_micros()).unwrap_or(u64::MAX);
    [
        field(limit),
        algorithm(limit).to_owned(),
        limit.amount.min(LUA_MAX).to_string(),
        window_us.clamp(1, LUA_MAX).to_string(),
        limit.capacity().min(LUA_MAX).to_string(),
    ]
}

impl Inner {
    fn now_arg(&self) -> String {
        match &self.clock {
            Some(clock) => clock
                .now_unix()
                .as_micros()
                .min(u128::from(LUA_MAX) * 4)
                .to_string(),
            None => String::new(),
        }
    }

    fn slot_token(&self) -> String {
        let n = self.next_slot.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{n:x}", self.instance)
    }

    /// One acquire script call for `scopes`.
    fn acquire_call(
        &self,
        scopes: &[&ScopeCharge<'_>],
    ) -> impl Future<Output = Result<Vec<i64>, StoreError>> + Send + 'static {
        let (keys, args) = self.acquire_args(scopes);
        self.redis.eval::<Vec<i64>>(&RATE_LIMIT_ACQUIRE, keys, args)
    }

    /// The keys and arguments of `rate_limit_acquire` for `scopes`.
    fn acquire_args(&self, scopes: &[&ScopeCharge<'_>]) -> (Vec<String>, Vec<String>) {
        let mut keys = Vec::with_capacity(2 * scopes.len());
        let mut args = vec![
            self.now_arg(),
            self.slot_token(),
            self.slot_lease.as_millis().to_string(),
            scopes.len().to_string(),
        ];
        for scope in scopes {
            keys.extend(redis_keys(&self.redis, scope.key));
            let n = scope.limits.len().min(scope.costs.len());
            args.push(scope.max_concurrent.map_or("-1".into(), |m| m.to_string()));
            args.push(n.to_string());
            for (limit, cost) in scope.limits.iter().zip(scope.costs) {
                args.extend(limit_args(limit));
                args.push(cost.min(&(LUA_MAX * 2)).to_string());
            }
        }
        (keys, args)
    }

    /// One settle script call for `scopes`.
    fn settle_call(
        &self,
        scopes: &[ScopeSettle<'_>],
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let mut keys = Vec::with_capacity(2 * scopes.len());
        let mut args = vec![self.now_arg(), scopes.len().to_string()];
        let bound = LUA_MAX as i64 * 2;
        for scope in scopes {
            keys.extend(redis_keys(&self.redis, scope.key));
            let n = scope.limits.len().min(scope.deltas.len());
            args.push(if scope.release { "1" } else { "0" }.into());
            args.push(n.to_string());
            for (limit, delta) in scope.limits.iter().zip(scope.deltas) {
                args.extend(limit_args(limit));
                args.push(delta.clamp(&-bound, &bound).to_string());
            }
        }
        let call = self.redis.settle(SettleCall {
            kind: SettleKind::RateLimit,
            keys,
            args,
        });
        async move { call.await.map(drop) }
    }
}

/// Parses the acquire script's reply for `n` limits.
pub(super) fn admission(reply: &[i64], n: usize) -> Result<Admission, StoreError> {
    if reply.len() != 2 + 3 * n {
        return Err(StoreError::Corrupt(format!(
            "rate limit script returned {} values for {n} limits",
            reply.len()
        )));
    }
    let verdict = match reply[0] {
        0 => Verdict::Admitted,
        1 => Verdict::Limited,
        2 => Verdict::Concurrency,
        other => {
            return Err(StoreError::Corrupt(format!(
                "rate limit script returned verdict {other}"
            )));
        }
    };
    let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    let states = reply[2..]
        .chunks_exact(3)
        .map(|s| LimitState {
            remaining: u64::try_from(s[0]).unwrap_or(0),
            reset: micros(s[1]),
            retry_after: (s[2] >= 0).then(|| micros(s[2])),
        })
        .collect();
    let busy = usize::try_from(reply[1]).ok();
    Ok(Admission {
        verdict,
        states,
        busy: busy.filter(|_| verdict == Verdict::Concurrency),
        receipt: Receipt::NONE,
    })
}

/// Scopes as owned data, for an answer that comes later (the fallback, a
/// second script on a cluster).
#[derive(Clone)]
struct OwnedScope {
    scope: String,
    id: String,
    model: Option<String>,
    limits: Vec<Limit>,
    costs: Vec<u64>,
    max_concurrent: Option<u32>,
}

impl OwnedScope {
    fn of_charge(charge: &ScopeCharge<'_>) -> Self {
        OwnedScope {
            scope: charge.key.scope.to_owned(),
            id: charge.key.id.to_owned(),
            model: charge.key.model.map(str::to_owned),
            limits: charge.limits.to_vec(),
            costs: charge.costs.to_vec(),
            max_concurrent: charge.max_concurrent,
        }
    }

    fn key(&self) -> RateLimitKey<'_> {
        RateLimitKey {
            scope: &self.scope,
            id: &self.id,
            model: self.model.as_deref(),
        }
    }
}

/// The limits checked for `scopes` (each its limits that have a cost).
fn limit_count<'a>(scopes: impl Iterator<Item = &'a ScopeCharge<'a>>) -> usize {
    scopes.map(|s| s.limits.len().min(s.costs.len())).sum()
}

impl RateLimitStore for RedisRateLimitStore {
    fn acquire(&self, request: &Acquire<'_>) -> StoreFuture<Admission> {
        let inner = &self.inner;
        let scopes = request.scopes;
        let n = limit_count(scopes.iter());
        // Only a cluster keeps a caller's scopes and shared ones apart.
        let callers: Vec<usize> = match inner.redis.is_cluster() {
            true => (0..scopes.len())
                .filter(|&i| scopes[i].key.is_caller())
                .collect(),
            false => Vec::new(),
        };
        let split = !callers.is_empty() && callers.len() < scopes.len();
        let call: StoreFuture<Admission> = if split {
            self.acquire_in_two_slots(scopes, &callers)
        } else {
            let all: Vec<&ScopeCharge<'_>> = scopes.iter().collect();
            let call = inner.acquire_call(&all);
            StoreFuture::pending(async move { admission(&call.await?, n) })
        };
        let Some(fallback) = inner.fallback.clone() else {
            return call;
        };
        let owned: Vec<OwnedScope> = scopes.iter().map(OwnedScope::of_charge).collect();
        StoreFuture::pending(async move {
            match call.await {
                Ok(admission) => Ok(admission),
                Err(error) => {
                    tracing::debug!(%error, "redis rate limit store failed; using the local fallback");
                    Ok(fallback.acquire(&owned).await)
                }
            }
        })
    }

    fn settle(&self, request: &Settle<'_>) -> StoreFuture<()> {
        let inner = &self.inner;
        if let Some(fallback) = &inner.fallback
            && fallback.take_outstanding(request, inner.slot_lease)
        {
            return fallback.settle(request);
        }
        let scopes = request.scopes;
        if inner.redis.is_cluster() {
            let (callers, shared): (Vec<_>, Vec<_>) =
                scopes.iter().copied().partition(|s| s.key.is_caller());
            if !callers.is_empty() && !shared.is_empty() {
                let (a, b) = (inner.settle_call(&callers), inner.settle_call(&shared));
                return StoreFuture::pending(async move {
                    let (a, b) = (a.await, b.await);
                    a.and(b)
                });
            }
        }
        StoreFuture::pending(inner.settle_call(scopes))
    }
}

impl RedisRateLimitStore {
    /// The keys and arguments of `rate_limit_acquire` for `request` and
    /// the number of limits it has, when one script call on one
    /// connection can admit it: not when a fallback may answer instead,
    /// nor when a cluster keeps its scopes in two slots.
    pub(super) fn joint_args(
        &self,
        request: &Acquire<'_>,
    ) -> Option<(Vec<String>, Vec<String>, usize)> {
        let inner = &self.inner;
        if inner.fallback.is_some() || inner.redis.is_cluster() {
            return None;
        }
        let n = limit_count(request.scopes.iter());
        let all: Vec<&ScopeCharge<'_>> = request.scopes.iter().collect();
        let (keys, args) = inner.acquire_args(&all);
        Some((keys, args, n))
    }

    /// On a cluster, an admission touching the caller's scopes and shared
    /// ones: the caller's first (in its slot), then the shared ones (in
    /// theirs), undoing the first if the second refuses. See the type's
    /// docs for what this costs.
    fn acquire_in_two_slots(
        &self,
        scopes: &[ScopeCharge<'_>],
        callers: &[usize],
    ) -> StoreFuture<Admission> {
        let inner = self.inner.clone();
        let shared: Vec<usize> = (0..scopes.len()).filter(|i| !callers.contains(i)).collect();
        let owned: Vec<OwnedScope> = scopes.iter().map(OwnedScope::of_charge).collect();
        let first: Vec<&ScopeCharge<'_>> = callers.iter().map(|&i| &scopes[i]).collect();
        let second: Vec<&ScopeCharge<'_>> = shared.iter().map(|&i| &scopes[i]).collect();
        let (n1, n2) = (
            limit_count(first.iter().copied()),
            limit_count(second.iter().copied()),
        );
        let first_call = inner.acquire_call(&first);
        let second_call = inner.acquire_call(&second);
        let callers = callers.to_vec();
        StoreFuture::pending(async move {
            let a = admission(&first_call.await?, n1)?;
            // The states in the request's order: each scope's, from the
            // call that checked it (unchecked ones as admitting).
            let merge = |a: &Admission, b: Option<&Admission>| {
                let mut states = LimitStates::new();
                let (mut ia, mut ib) = (0, 0);
                for (i, scope) in owned.iter().enumerate() {
                    for limit in &scope.limits {
                        let state = if callers.contains(&i) {
                            ia += 1;
                            a.states.get(ia - 1).copied()
                        } else {
                            ib += 1;
                            b.and_then(|b| b.states.get(ib - 1).copied())
                        };
                        states.push(state.unwrap_or(LimitState {
                            remaining: limit.amount,
                            reset: Duration::ZERO,
                            retry_after: Some(Duration::ZERO),
                        }));
                    }
                }
                states
            };
            if a.verdict != Verdict::Admitted {
                return Ok(Admission {
                    verdict: a.verdict,
                    states: merge(&a, None),
                    busy: a.busy.map(|i| callers[i]),
                    receipt: Receipt::NONE,
                });
            }
            let b = admission(&second_call.await?, n2)?;
            if b.verdict != Verdict::Admitted {
                // Undo the caller's charges and slots.
                let undo: Vec<OwnedScope> = callers.iter().map(|&i| owned[i].clone()).collect();
                let deltas: Vec<Vec<i64>> = undo
                    .iter()
                    .map(|s| {
                        let undo = |&c: &u64| -i64::try_from(c).unwrap_or(i64::MAX);
                        s.costs.iter().map(undo).collect()
                    })
                    .collect();
                let settles: Vec<ScopeSettle<'_>> = undo
                    .iter()
                    .zip(&deltas)
                    .map(|(s, d)| ScopeSettle {
                        key: s.key(),
                        limits: &s.limits,
                        deltas: d,
                        release: s.max_concurrent.is_some(),
                    })
                    .collect();
                let undone = inner.settle_call(&settles);
                if let Err(error) = undone.await {
                    tracing::warn!(%error, "rate limit: undoing a caller's charge failed");
                }
                return Ok(Admission {
                    verdict: b.verdict,
                    states: merge(&a, Some(&b)),
                    busy: b.busy.map(|i| shared[i]),
                    receipt: Receipt::NONE,
                });
            }
            Ok(Admission {
                verdict: Verdict::Admitted,
                states: merge(&a, Some(&b)),
                busy: None,
                receipt: Receipt::NONE,
            })
        })
    }
}

/// The local limiter used while Redis is unreachable.
struct Fallback {
    store: MemoryRateLimitStore,
    share: f64,
    /// Admissions by the fallback that the layer will settle, per first
    /// scope: their settlements go to the fallback too, not to Redis, which
    /// never saw them.
    outstanding: Mutex<Outstanding>,
}

/// Per first scope (as displayed): admissions to settle, and when the last
/// was made.
type Outstanding = HashMap<String, (u32, Instant)>;

/// Bound on `Fallback::outstanding` (keys).
const MAX_OUTSTANDING_KEYS: usize = 100_000;

impl Fallback {
    fn scale(&self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((n as f64) * self.share).ceil().clamp(1.0, n as f64) as u64
    }

    fn scaled(&self, limits: &[Limit]) -> Vec<Limit> {
        limits
            .iter()
            .map(|l| Limit {
                amount: self.scale(l.amount),
                burst: l.burst.map(|b| self.scale(b)),
                ..*l
            })
            .collect()
    }

    async fn acquire(&self, scopes: &[OwnedScope]) -> Admission {
        let limits: Vec<Vec<Limit>> = scopes.iter().map(|s| self.scaled(&s.limits)).collect();
        let charges: Vec<ScopeCharge<'_>> = scopes
            .iter()
            .zip(&limits)
            .map(|(s, limits)| ScopeCharge {
                key: s.key(),
                limits,
                costs: &s.costs,
                max_concurrent: s
                    .max_concurrent
                    .map(|m| u32::try_from(self.scale(u64::from(m))).unwrap_or(m)),
            })
            .collect();
        let answer = self.store.acquire(&Acquire { scopes: &charges });
        let admission = match answer.await {
            Ok(admission) => admission,
            // The memory store does not fail; if it ever does, admit.
            Err(_) => Admission {
                verdict: Verdict::Admitted,
                states: LimitStates::new(),
                busy: None,
                receipt: Receipt::NONE,
            },
        };
        let will_settle = scopes.iter().any(|s| {
            s.max_concurrent.is_some()
                || s.limits
                    .iter()
                    .zip(&s.costs)
                    .any(|(l, &c)| l.measure == Measure::Tokens && c > 0)
        });
        if admission.verdict == Verdict::Admitted
            && will_settle
            && let Some(first) = scopes.first()
        {
            let mut outstanding = crate::store::lock(&self.outstanding);
            if outstanding.len() >= MAX_OUTSTANDING_KEYS {
                outstanding.clear();
            }
            let entry = outstanding
                .entry(first.key().to_string())
                .or_insert((0, Instant::now()));
            entry.0 += 1;
            entry.1 = Instant::now();
        }
        admission
    }

    /// Whether the settlement's first scope has an admission by the fallback
    /// to settle (taking it). Entries older than a slot lease are forgotten.
    fn take_outstanding(&self, request: &Settle<'_>, lease: Duration) -> bool {
        let mut outstanding = crate::store::lock(&self.outstanding);
        if outstanding.is_empty() {
            return false;
        }
        let Some(first) = request.scopes.first() else {
            return false;
        };
        let k = first.key.to_string();
        match outstanding.get_mut(&k) {
            Some((count, at)) if at.elapsed() <= lease => {
                *count -= 1;
                if *count == 0 {
                    outstanding.remove(&k);
                }
                true
            }
            Some(_) => {
                outstanding.remove(&k);
                false
            }
            None => false,
        }
    }

    fn settle(&self, request: &Settle<'_>) -> StoreFuture<()> {
        let limits: Vec<Vec<Limit>> = request
            .scopes
            .iter()
            .map(|s| self.scaled(s.limits))
            .collect();
        let scaled: Vec<ScopeSettle<'_>> = request
            .scopes
            .iter()
            .zip(&limits)
            .map(|(s, l)| ScopeSettle { limits: l, ..*s })
            .collect();
        self.store.settle(&Settle {
            scopes: &scaled,
            receipt: request.receipt,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_name_measure_algorithm_and_window_not_amount() {
        let a = Limit::requests_per_minute(60);
        assert_eq!(field(&a), "Rs60000000000");
        assert_eq!(field(&a), field(&Limit::requests_per_minute(7)));
        assert_ne!(field(&a), field(&Limit::tokens_per_minute(60)));
        assert_ne!(field(&a), field(&a.algorithm(Algorithm::Gcra)));
    }

    #[test]
    fn tags_keep_a_callers_scopes_in_its_slot() {
        assert_eq!(tag(RateLimitKey::new("a}b")), "{3:a}b}");
        assert_eq!(tag(RateLimitKey::new("a").with_model(Some("m"))), "{1:a}");
        assert_eq!(
            tag(RateLimitKey::scoped(RateLimitKey::MODEL, "m")),
            "{shared}"
        );
    }

    #[test]
    fn inputs_are_clamped_for_lua() {
        let huge = Limit::tokens(u64::MAX, Duration::MAX);
        let args = limit_args(&huge);
        assert_eq!(args[2], LUA_MAX.to_string());
        assert_eq!(args[3], LUA_MAX.to_string());
        let tiny = Limit::requests(1, Duration::from_nanos(1));
        assert_eq!(limit_args(&tiny)[2..], ["1", "1", "1"]);
    }

    #[test]
    fn replies_are_checked() {
        assert!(admission(&[0, -1, 5, 10, 0], 1).is_ok());
        let limited = admission(&[1, -1, 0, 10, -1], 1).unwrap();
        assert_eq!(limited.verdict, Verdict::Limited);
        assert_eq!(limited.states[0].retry_after, None);
        let busy = admission(&[2, 1, 0, 10, 0], 1).unwrap();
        assert_eq!(busy.busy, Some(1));
        assert!(admission(&[0, 0, 5], 1).is_err());
        assert!(admission(&[7, 0], 0).is_err());
    }

    #[test]
    fn fallback_scales_up_and_never_to_zero() {
        let fallback = Fallback {
            store: MemoryRateLimitStore::new(),
            share: 1.0 / 3.0,
            outstanding: Mutex::new(HashMap::new()),
        };
        assert_eq!(fallback.scale(100), 34);
        assert_eq!(fallback.scale(1), 1);
        assert_eq!(fallback.scale(0), 0);
        assert!(fallback.scale(u64::MAX) > u64::MAX / 4);
    }
}
