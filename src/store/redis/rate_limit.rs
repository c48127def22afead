//! [`RedisRateLimitStore`]: rate limits shared by every gateway instance.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::RedisConnection;
use super::scripts::{RATE_LIMIT_ACQUIRE, RATE_LIMIT_SETTLE};
use crate::clock::SharedClock;
use crate::rate_limit::{
    Acquire, Admission, BoxStoreFuture, Limit, LimitState, Measure, RateLimitKey, RateLimitStore,
    Settle, Verdict,
};
use crate::store::StoreError;
use crate::store::memory::MemoryRateLimitStore;

/// Amounts, windows and costs are clamped below this so that the scripts'
/// arithmetic (Lua doubles) stays exact: 2^51 tokens or µs (71 years).
const LUA_MAX: u64 = 1 << 51;

/// Rate-limit state in Redis: N gateway instances share exactly one set of
/// limits.
///
/// ```no_run
/// use std::time::Duration;
/// use tollgate::rate_limit::{Acquire, Limit, RateLimitKey, RateLimitStore, Verdict};
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
/// let request = Acquire { limits: &limits, costs: &[1, 1_200], max_concurrent: Some(8) };
/// let admission = store.acquire(RateLimitKey::new("alice"), &request).await?;
/// assert_eq!(admission.verdict, Verdict::Admitted);
/// # Ok(())
/// # }
/// ```
///
/// # One round trip, all or nothing
///
/// An admission is one `EVALSHA` of a Lua script: it reads the key's state,
/// runs GCRA for every limit, checks the concurrency slots, and writes the
/// charges only if every limit admits the request. Redis runs a script
/// atomically, so concurrent admissions on any number of instances see each
/// other's charges exactly: 300 concurrent requests against a limit of 100
/// admit 100. A settlement (refund or extra charge of tokens, freeing the
/// slot) is one more `EVALSHA`.
///
/// The script is the same GCRA as [`MemoryRateLimitStore`] (integer units of
/// `window / amount`, exact for any ratio), with the same
/// [`LimitState`]s, so the layer's headers do not depend on the store.
/// Amounts and windows are clamped to 2^51 (tokens, µs), far beyond any real
/// limit, to keep the script's arithmetic exact.
///
/// # Time: the server's
///
/// The script reads Redis's `TIME`, so instances whose clocks disagree
/// still agree on every window. [`clock`](RedisRateLimitStoreBuilder::clock)
/// replaces it with a clock of the caller's (for tests).
///
/// # Bounded memory
///
/// A key's state is one hash (`<prefix>rl:<key>`) that expires (`PEXPIRE`)
/// when every one of its limits is back to full, the moment it becomes
/// indistinguishable from no state. Concurrency slots are a sorted set
/// (`<prefix>rc:<key>`) of leases: a slot whose request never settled (its
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
        let mut seed = [0u8; 8];
        // A failure leaves the seed zero: tokens then rely on the counter and
        // the time alone, still unique in practice.
        let _ = getrandom::fill(&mut seed);
        let clock_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
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
                instance: u64::from_le_bytes(seed) ^ clock_seed,
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

/// The Redis keys of a rate-limit key: its GCRA state and its slots. The id
/// is length-prefixed so that `("a", Some("b"))` and `("a:b", None)` differ.
fn redis_keys(redis: &RedisConnection, key: RateLimitKey<'_>) -> Vec<String> {
    let mut name = format!("{}:{}", key.id.len(), key.id);
    if let Some(model) = key.model {
        name.push(':');
        name.push_str(model);
    }
    vec![
        redis.key(&format!("rl:{name}")),
        redis.key(&format!("rc:{name}")),
    ]
}

/// The limit list as the script compares it: a change starts the key afresh.
fn config_string(limits: &[Limit]) -> String {
    let mut s = String::with_capacity(limits.len() * 16);
    for limit in limits {
        let measure = match limit.measure {
            Measure::Requests => 'R',
            Measure::Tokens => 'T',
        };
        s.push_str(&format!(
            "{measure}{}/{};",
            limit.amount,
            limit.window.as_nanos()
        ));
    }
    s
}

fn amount_and_window(limit: &Limit) -> [String; 2] {
    let window_us = u64::try_from(limit.window.as_micros()).unwrap_or(u64::MAX);
    [
        limit.amount.min(LUA_MAX).to_string(),
        window_us.clamp(1, LUA_MAX).to_string(),
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
}

/// Parses the acquire script's reply.
fn admission(reply: &[i64], n: usize) -> Result<Admission, StoreError> {
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
    Ok(Admission { verdict, states })
}

impl RateLimitStore for RedisRateLimitStore {
    type AcquireFuture = BoxStoreFuture<Admission>;
    type SettleFuture = BoxStoreFuture<()>;

    fn acquire(&self, key: RateLimitKey<'_>, request: &Acquire<'_>) -> Self::AcquireFuture {
        let inner = &self.inner;
        let n = request.limits.len().min(request.costs.len());
        let limits = &request.limits[..n];
        let mut args = Vec::with_capacity(6 + 3 * n);
        args.push(inner.now_arg());
        args.push(config_string(limits));
        args.push(n.to_string());
        args.push(
            request
                .max_concurrent
                .map_or("-1".into(), |m| m.to_string()),
        );
        args.push(inner.slot_token());
        args.push(inner.slot_lease.as_millis().to_string());
        for (limit, &cost) in limits.iter().zip(request.costs) {
            args.extend(amount_and_window(limit));
            args.push(cost.min(LUA_MAX * 2).to_string());
        }
        let call =
            inner
                .redis
                .eval::<Vec<i64>>(&RATE_LIMIT_ACQUIRE, redis_keys(&inner.redis, key), args);
        let Some(fallback) = inner.fallback.clone() else {
            return Box::pin(async move { admission(&call.await?, n) });
        };
        let owned = OwnedRequest::new(key, limits, &request.costs[..n], request.max_concurrent);
        Box::pin(async move {
            match call.await.and_then(|reply| admission(&reply, n)) {
                Ok(admission) => Ok(admission),
                Err(error) => {
                    tracing::debug!(%error, key = %owned.key(), "redis rate limit store failed; using the local fallback");
                    Ok(fallback.acquire(&owned).await)
                }
            }
        })
    }

    fn settle(&self, key: RateLimitKey<'_>, request: &Settle<'_>) -> Self::SettleFuture {
        let inner = &self.inner;
        if let Some(fallback) = &inner.fallback {
            if fallback.take_outstanding(key, inner.slot_lease) {
                return Box::pin(fallback.settle(key, request));
            }
        }
        let n = request.limits.len().min(request.deltas.len());
        let limits = &request.limits[..n];
        let mut args = Vec::with_capacity(4 + 3 * n);
        args.push(inner.now_arg());
        args.push(config_string(limits));
        args.push(n.to_string());
        args.push(if request.release { "1" } else { "0" }.into());
        let bound = LUA_MAX as i64 * 2;
        for (limit, &delta) in limits.iter().zip(request.deltas) {
            args.extend(amount_and_window(limit));
            args.push(delta.clamp(-bound, bound).to_string());
        }
        let call = inner.redis.eval_settlement::<i64>(
            &RATE_LIMIT_SETTLE,
            redis_keys(&inner.redis, key),
            args,
        );
        Box::pin(async move { call.await.map(drop) })
    }
}

/// The local limiter used while Redis is unreachable.
struct Fallback {
    store: MemoryRateLimitStore,
    share: f64,
    /// Admissions by the fallback that the layer will settle, per key: their
    /// settlements go to the fallback too, not to Redis, which never saw them.
    outstanding: Mutex<Outstanding>,
}

/// Per `(key, model)`: admissions to settle, and when the last was made.
type Outstanding = HashMap<(String, Option<String>), (u32, Instant)>;

/// Bound on `Fallback::outstanding` (keys).
const MAX_OUTSTANDING_KEYS: usize = 100_000;

struct OwnedRequest {
    id: String,
    model: Option<String>,
    limits: Vec<Limit>,
    costs: Vec<u64>,
    max_concurrent: Option<u32>,
}

impl OwnedRequest {
    fn new(
        key: RateLimitKey<'_>,
        limits: &[Limit],
        costs: &[u64],
        max_concurrent: Option<u32>,
    ) -> Self {
        OwnedRequest {
            id: key.id.to_owned(),
            model: key.model.map(str::to_owned),
            limits: limits.to_vec(),
            costs: costs.to_vec(),
            max_concurrent,
        }
    }

    fn key(&self) -> RateLimitKey<'_> {
        RateLimitKey {
            id: &self.id,
            model: self.model.as_deref(),
        }
    }

    /// Whether `RateLimitLayer` will settle this admission: it holds a
    /// concurrency slot or reserved tokens.
    fn will_settle(&self) -> bool {
        self.max_concurrent.is_some()
            || self
                .limits
                .iter()
                .zip(&self.costs)
                .any(|(l, &c)| l.measure == Measure::Tokens && c > 0)
    }
}

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
                ..*l
            })
            .collect()
    }

    async fn acquire(&self, request: &OwnedRequest) -> Admission {
        let limits = self.scaled(&request.limits);
        let max_concurrent = request
            .max_concurrent
            .map(|m| u32::try_from(self.scale(u64::from(m))).unwrap_or(m));
        let scaled = Acquire {
            limits: &limits,
            costs: &request.costs,
            max_concurrent,
        };
        let admission = match self.store.acquire(request.key(), &scaled).await {
            Ok(admission) => admission,
            // The memory store does not fail; if it ever does, admit.
            Err(_) => Admission {
                verdict: Verdict::Admitted,
                states: vec![LimitState::default(); limits.len()].into(),
            },
        };
        if admission.verdict == Verdict::Admitted && request.will_settle() {
            let mut outstanding = self.lock();
            if outstanding.len() >= MAX_OUTSTANDING_KEYS {
                outstanding.clear();
            }
            let entry = outstanding
                .entry((request.id.clone(), request.model.clone()))
                .or_insert((0, Instant::now()));
            entry.0 += 1;
            entry.1 = Instant::now();
        }
        admission
    }

    /// Whether `key` has an admission by the fallback to settle (taking it).
    /// Entries older than a slot lease are forgotten.
    fn take_outstanding(&self, key: RateLimitKey<'_>, lease: Duration) -> bool {
        let mut outstanding = self.lock();
        if outstanding.is_empty() {
            return false;
        }
        let k = (key.id.to_owned(), key.model.map(str::to_owned));
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

    fn settle(
        &self,
        key: RateLimitKey<'_>,
        request: &Settle<'_>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let limits = self.scaled(request.limits);
        let scaled = Settle {
            limits: &limits,
            ..*request
        };
        self.store.settle(key, &scaled)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Outstanding> {
        self.outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_strings_tell_limit_lists_apart() {
        let a = [Limit::requests_per_minute(60)];
        let b = [Limit::tokens_per_minute(60)];
        let c = [Limit::requests(60, Duration::from_nanos(60_000_000_001))];
        let strings = [config_string(&a), config_string(&b), config_string(&c)];
        assert_eq!(strings[0], "R60/60000000000;");
        assert_ne!(strings[0], strings[1]);
        assert_ne!(strings[0], strings[2]);
    }

    #[test]
    fn inputs_are_clamped_for_lua() {
        let huge = Limit::tokens(u64::MAX, Duration::MAX);
        assert_eq!(
            amount_and_window(&huge),
            [LUA_MAX.to_string(), LUA_MAX.to_string()]
        );
        let tiny = Limit::requests(1, Duration::from_nanos(1));
        assert_eq!(amount_and_window(&tiny), ["1".to_owned(), "1".to_owned()]);
    }

    #[test]
    fn replies_are_checked() {
        assert!(admission(&[0, 0, 5, 10, 0], 1).is_ok());
        let limited = admission(&[1, 0, 0, 10, -1], 1).unwrap();
        assert_eq!(limited.verdict, Verdict::Limited);
        assert_eq!(limited.states[0].retry_after, None);
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
