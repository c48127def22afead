//! Where rate-limit state lives: the [`RateLimitStore`] trait.
//!
//! The trait has two operations, each one round trip to the store:
//!
//! - [`acquire`](RateLimitStore::acquire): check the request's cost against
//!   every limit of its key (and a concurrency slot), and charge them all, or
//!   none when any of them refuses;
//! - [`settle`](RateLimitStore::settle): once the response is done, adjust
//!   limits by a delta (refund or charge the difference between the tokens
//!   reserved and the tokens used) and free the concurrency slot.
//!
//! Both return futures with an associated type, so the in-process
//! [`MemoryRateLimitStore`](crate::store::memory::MemoryRateLimitStore)
//! answers with a ready future and no allocation, and a networked store (a
//! Redis `EVALSHA` of a Lua script running on the server's clock) can return
//! a boxed one. [`BoxRateLimitStore`] erases the type when the store is
//! chosen at run time.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::Limit;
use crate::store::StoreError;

/// The key a request is limited under: an id (by default the `Principal`'s
/// key id) and, when the layer scopes limits per model, the model.
///
/// A store must treat `(id, model)` pairs as distinct keys, and `model: None`
/// as distinct from any `Some`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimitKey<'a> {
    /// The caller's id.
    pub id: &'a str,
    /// The model, when limits are scoped per model.
    pub model: Option<&'a str>,
}

impl<'a> RateLimitKey<'a> {
    /// A key without a model scope.
    pub fn new(id: &'a str) -> Self {
        RateLimitKey { id, model: None }
    }

    /// The same key scoped to `model`.
    pub fn with_model(self, model: Option<&'a str>) -> Self {
        RateLimitKey { model, ..self }
    }
}

/// `alice`, or `alice (model gpt-4o)`, with control characters escaped: a
/// key or a model may come from the client, and this is what logs show.
impl fmt::Display for RateLimitKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.id.escape_debug())?;
        if let Some(model) = self.model {
            write!(f, " (model {})", model.escape_debug())?;
        }
        Ok(())
    }
}

/// What one admission asks: charge `costs[i]` against `limits[i]` for every
/// `i`, and take a concurrency slot if `max_concurrent` is set; all or nothing.
///
/// A store keeps one state per key and *position* in `limits`: callers pass
/// the same list, in the same order, for a key every time. A store that sees
/// a key's list change may start that key afresh.
#[derive(Debug, Clone, Copy)]
pub struct Acquire<'a> {
    /// The key's limits.
    pub limits: &'a [Limit],
    /// The cost against each limit (same length as `limits`).
    pub costs: &'a [u64],
    /// In-flight requests allowed for the key, if limited.
    pub max_concurrent: Option<u32>,
}

/// What one settlement asks: add `deltas[i]` to `limits[i]` (negative:
/// refund) without a check, and free a concurrency slot if `release`.
#[derive(Debug, Clone, Copy)]
pub struct Settle<'a> {
    /// The key's limits, as passed to [`Acquire`].
    pub limits: &'a [Limit],
    /// The adjustment of each limit (same length as `limits`; 0 leaves it).
    pub deltas: &'a [i64],
    /// Whether the request held a concurrency slot to free.
    pub release: bool,
}

/// One limit's state as seen by an admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimitState {
    /// What is left of the limit (after this request's charge, if admitted).
    pub remaining: u64,
    /// Until the limit is back to full (`remaining == amount`).
    pub reset: Duration,
    /// Until this limit would admit the request's cost: zero if it admits it
    /// now, `None` if the cost is more than the whole limit.
    pub retry_after: Option<Duration>,
}

impl LimitState {
    /// Whether this limit admits the request now.
    pub fn admits(&self) -> bool {
        self.retry_after == Some(Duration::ZERO)
    }
}

/// Why an admission was refused, or that it was not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Every limit admitted the request; all were charged.
    Admitted,
    /// At least one limit refused; nothing was charged. The refusing limits
    /// are those whose [`LimitState::admits`] is false.
    Limited,
    /// The limits admitted the request but the key has `max_concurrent`
    /// requests in flight; nothing was charged.
    Concurrency,
}

/// The answer to an [`Acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The decision.
    pub verdict: Verdict,
    /// The state of each limit, in the order of [`Acquire::limits`].
    pub states: LimitStates,
}

/// The [`LimitState`]s of an admission, in the order of its limits: a
/// vector that holds two without allocating (an admission is on every
/// request's path; most keys have a requests and a tokens limit).
///
/// ```
/// use tollgate::rate_limit::{LimitState, LimitStates};
///
/// let mut states = LimitStates::new();
/// states.push(LimitState { remaining: 59, ..LimitState::default() });
/// assert_eq!(states.len(), 1);
/// assert_eq!(states[0].remaining, 59);
/// ```
#[derive(Clone, PartialEq, Eq, Default)]
pub struct LimitStates {
    len: usize,
    inline: [LimitState; 2],
    spilled: Vec<LimitState>,
}

impl LimitStates {
    /// No states.
    pub fn new() -> Self {
        LimitStates::default()
    }

    /// Appends a state.
    pub fn push(&mut self, state: LimitState) {
        if self.len < self.inline.len() {
            self.inline[self.len] = state;
        } else {
            if self.spilled.is_empty() {
                self.spilled.extend_from_slice(&self.inline);
            }
            self.spilled.push(state);
        }
        self.len += 1;
    }
}

impl std::ops::Deref for LimitStates {
    type Target = [LimitState];

    fn deref(&self) -> &[LimitState] {
        if self.len <= self.inline.len() {
            &self.inline[..self.len]
        } else {
            &self.spilled
        }
    }
}

impl std::ops::DerefMut for LimitStates {
    fn deref_mut(&mut self) -> &mut [LimitState] {
        if self.len <= self.inline.len() {
            &mut self.inline[..self.len]
        } else {
            &mut self.spilled
        }
    }
}

impl FromIterator<LimitState> for LimitStates {
    fn from_iter<I: IntoIterator<Item = LimitState>>(iter: I) -> Self {
        let mut states = LimitStates::new();
        for state in iter {
            states.push(state);
        }
        states
    }
}

impl From<Vec<LimitState>> for LimitStates {
    fn from(states: Vec<LimitState>) -> Self {
        states.into_iter().collect()
    }
}

impl fmt::Debug for LimitStates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// State for [`RateLimitLayer`](super::RateLimitLayer): checks and charges
/// limits per key, atomically, in one round trip.
///
/// Implementations must make `acquire` all or nothing (a refused request
/// consumes nothing) and atomic with respect to concurrent calls for the same
/// key, so that N gateway instances (or N clones of a service) sharing a store
/// share exact limits. The returned futures own what they need (`'static`):
/// the layer settles from a response body's `Drop`, where nothing can be
/// borrowed.
///
/// A distributed store should expire concurrency slots it never sees released
/// (an instance that crashed mid-request), and read time from one clock (the
/// server's), not from each instance.
pub trait RateLimitStore: Send + Sync + 'static {
    /// The future of [`acquire`](RateLimitStore::acquire).
    ///
    /// `Unpin`, so that the layer can poll it once where it is made: an
    /// in-memory store's `Ready` answers there, and the request goes on to
    /// the inner service without another state. A store whose future is not
    /// `Unpin` returns it boxed ([`BoxStoreFuture`]).
    type AcquireFuture: Future<Output = Result<Admission, StoreError>> + Send + Unpin + 'static;
    /// The future of [`settle`](RateLimitStore::settle).
    ///
    /// `Unpin`, so that a settlement started from a body's end or `Drop` is
    /// polled once in place and only moved to a task if it must wait: an
    /// in-memory store's `Ready` costs no allocation. A store whose future
    /// is not `Unpin` returns it boxed ([`BoxStoreFuture`]).
    type SettleFuture: Future<Output = Result<(), StoreError>> + Send + Unpin + 'static;

    /// Checks `request` against the state of `key` and, if every limit admits
    /// it and a concurrency slot is free, charges it; otherwise charges
    /// nothing.
    fn acquire(&self, key: RateLimitKey<'_>, request: &Acquire<'_>) -> Self::AcquireFuture;

    /// Applies `request`'s deltas to the state of `key` and frees its
    /// concurrency slot if asked. Settling a key the store no longer holds
    /// (evicted) applies the charges and ignores the rest.
    fn settle(&self, key: RateLimitKey<'_>, request: &Settle<'_>) -> Self::SettleFuture;
}

impl<T: RateLimitStore> RateLimitStore for Arc<T> {
    type AcquireFuture = T::AcquireFuture;
    type SettleFuture = T::SettleFuture;

    fn acquire(&self, key: RateLimitKey<'_>, request: &Acquire<'_>) -> Self::AcquireFuture {
        (**self).acquire(key, request)
    }

    fn settle(&self, key: RateLimitKey<'_>, request: &Settle<'_>) -> Self::SettleFuture {
        (**self).settle(key, request)
    }
}

/// A boxed future, as [`BoxRateLimitStore`] returns.
pub type BoxStoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

trait ErasedStore: Send + Sync {
    fn acquire(&self, key: RateLimitKey<'_>, request: &Acquire<'_>) -> BoxStoreFuture<Admission>;
    fn settle(&self, key: RateLimitKey<'_>, request: &Settle<'_>) -> BoxStoreFuture<()>;
}

impl<T: RateLimitStore> ErasedStore for T {
    fn acquire(&self, key: RateLimitKey<'_>, request: &Acquire<'_>) -> BoxStoreFuture<Admission> {
        Box::pin(RateLimitStore::acquire(self, key, request))
    }

    fn settle(&self, key: RateLimitKey<'_>, request: &Settle<'_>) -> BoxStoreFuture<()> {
        Box::pin(RateLimitStore::settle(self, key, request))
    }
}

/// Any [`RateLimitStore`] behind one type, for a store chosen at run time
/// (memory in development, Redis in production). Costs one allocation per
/// operation.
///
/// ```
/// use tollgate::rate_limit::{BoxRateLimitStore, RateLimitLayer};
/// use tollgate::store::memory::MemoryRateLimitStore;
///
/// let store = BoxRateLimitStore::new(MemoryRateLimitStore::new());
/// let layer = RateLimitLayer::new().store(store);
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct BoxRateLimitStore {
    inner: Arc<dyn ErasedStore>,
}

impl BoxRateLimitStore {
    /// Erases the type of `store`.
    pub fn new<T: RateLimitStore>(store: T) -> Self {
        BoxRateLimitStore {
            inner: Arc::new(store),
        }
    }
}

impl fmt::Debug for BoxRateLimitStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BoxRateLimitStore")
    }
}

impl RateLimitStore for BoxRateLimitStore {
    type AcquireFuture = BoxStoreFuture<Admission>;
    type SettleFuture = BoxStoreFuture<()>;

    fn acquire(&self, key: RateLimitKey<'_>, request: &Acquire<'_>) -> Self::AcquireFuture {
        self.inner.acquire(key, request)
    }

    fn settle(&self, key: RateLimitKey<'_>, request: &Settle<'_>) -> Self::SettleFuture {
        self.inner.settle(key, request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_display_escaped() {
        let key = RateLimitKey::new("a\nb").with_model(Some("m\u{1b}[31m"));
        assert_eq!(key.to_string(), "a\\nb (model m\\u{1b}[31m)");
    }

    #[test]
    fn limit_states_spill_past_two() {
        let state = |remaining| LimitState {
            remaining,
            ..LimitState::default()
        };
        let states: LimitStates = (0..7).map(state).collect();
        assert_eq!(states[6].remaining, 6);
        assert_eq!(states.len(), 7);
        assert_eq!(
            states.iter().map(|s| s.remaining).collect::<Vec<_>>(),
            (0..7).collect::<Vec<_>>()
        );
        let mut three: LimitStates = vec![state(1), state(2), state(3)].into();
        three[1].remaining = 9;
        assert_eq!(three.iter().map(|s| s.remaining).sum::<u64>(), 13);
        assert_eq!(format!("{:?}", LimitStates::new()), "[]");
    }
}
