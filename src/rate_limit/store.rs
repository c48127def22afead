//! Where rate-limit state lives: the [`RateLimitStore`] trait.
//!
//! The trait has two operations, each one round trip to the store:
//!
//! - [`acquire`](RateLimitStore::acquire): check the request's cost against
//!   every limit of every scope it belongs to (its key, its key and model,
//!   its model for all keys, its upstream, …) and a concurrency slot in each
//!   scope that caps them, and charge them all, or none when any refuses;
//! - [`settle`](RateLimitStore::settle): once the response is done, adjust
//!   limits by a delta (refund or charge the difference between the tokens
//!   reserved and the tokens used) and free the concurrency slots. The
//!   admission's [`Receipt`] comes back with it: what the store kept so as
//!   not to work it out again (the memory store: the first scope's digest).
//!
//! Both return a [`StoreFuture`]: the in-process
//! [`MemoryRateLimitStore`](crate::store::memory::MemoryRateLimitStore)
//! answers at once with no allocation, a networked store (a Redis `EVALSHA`
//! of a Lua script running on the server's clock) with one box. The trait is
//! dyn-compatible: `Arc<dyn RateLimitStore>` is a store chosen at run time.
//!
//! # State is kept per scope, measure, window and algorithm
//!
//! A store keeps one state per scope ([`RateLimitKey`]) and per limit's
//! measure, window and [`Algorithm`](super::Algorithm), never by a limit's
//! amount or its position in a list. Raising or lowering a limit (a config
//! reload, an admin edit) keeps what was already used, and two gateway
//! instances configured with different limits for the same key each enforce
//! their own view of one shared count. Within one scope of one request, the
//! limits must differ in measure, window or algorithm (the layer keeps the
//! tightest of two that do not).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::Limit;
use crate::small::Small;
use crate::store::StoreFuture;

/// A scope a request counts against: the caller's key (optionally per
/// model), a model for all keys, an upstream, or any other scope the
/// configuration names (a user, a team, an organisation).
///
/// A store treats keys that differ in any field as distinct, and
/// `model: None` as distinct from any `Some`. Scope names are data: a new
/// kind of scope needs no new code in the layer or the stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimitKey<'a> {
    /// What kind of scope: [`KEY`](RateLimitKey::KEY), [`MODEL`](RateLimitKey::MODEL),
    /// [`UPSTREAM`](RateLimitKey::UPSTREAM), or another name.
    pub scope: &'a str,
    /// Which one: the caller's key id, the model, the upstream, …
    pub id: &'a str,
    /// The model, when the scope's limits are per model.
    pub model: Option<&'a str>,
}

impl<'a> RateLimitKey<'a> {
    /// The scope of a caller's own key. Its state belongs to that caller
    /// alone (in Redis Cluster it lives in the caller's hash slot).
    pub const KEY: &'static str = "key";
    /// The scope of a model for every key together (the upstream's capacity
    /// for that model).
    pub const MODEL: &'static str = "model";
    /// The scope of an upstream for every key and model together.
    pub const UPSTREAM: &'static str = "upstream";

    /// The key `id`, without a model.
    pub fn new(id: &'a str) -> Self {
        RateLimitKey {
            scope: Self::KEY,
            id,
            model: None,
        }
    }

    /// The scope `scope` named `id`, without a model: `scoped("team", "acme")`.
    pub fn scoped(scope: &'a str, id: &'a str) -> Self {
        RateLimitKey {
            scope,
            id,
            model: None,
        }
    }

    /// The same scope per model.
    pub fn with_model(self, model: Option<&'a str>) -> Self {
        RateLimitKey { model, ..self }
    }

    /// Whether this is a caller's own key (with or without a model).
    pub fn is_caller(&self) -> bool {
        self.scope == Self::KEY
    }

    /// What a refusal adds to name this scope: nothing for the caller's key,
    /// ` for model gpt-4o-mini` for its per-model limits, ` for model
    /// gpt-4o-mini (all keys)`, ` for upstream openai`, ` for team acme`.
    pub(crate) fn describe(&self) -> String {
        let model = self.model.map(|m| m.escape_debug().to_string());
        match (self.scope, model) {
            (Self::KEY, None) => String::new(),
            (Self::KEY, Some(m)) => format!(" for model {m}"),
            (Self::MODEL, _) => format!(" for model {} (all keys)", self.id.escape_debug()),
            (scope, None) => format!(" for {} {}", scope.escape_debug(), self.id.escape_debug()),
            (scope, Some(m)) => format!(
                " for {} {} and model {m}",
                scope.escape_debug(),
                self.id.escape_debug()
            ),
        }
    }
}

/// `alice`, `alice (model gpt-4o)`, `model gpt-4o`, `upstream openai`, with
/// control characters escaped: a key or a model may come from the client,
/// and this is what logs show.
impl fmt::Display for RateLimitKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scope != Self::KEY {
            write!(f, "{} ", self.scope.escape_debug())?;
        }
        write!(f, "{}", self.id.escape_debug())?;
        if let Some(model) = self.model {
            write!(f, " (model {})", model.escape_debug())?;
        }
        Ok(())
    }
}

/// One scope of an admission: charge `costs[i]` against `limits[i]` for
/// every `i`, and take a concurrency slot if `max_concurrent` is set.
#[derive(Debug, Clone, Copy)]
pub struct ScopeCharge<'a> {
    /// The scope.
    pub key: RateLimitKey<'a>,
    /// Its limits.
    pub limits: &'a [Limit],
    /// The cost against each limit (same length as `limits`).
    pub costs: &'a [u64],
    /// Requests in flight allowed in the scope, if limited.
    pub max_concurrent: Option<u32>,
}

/// What one admission asks: every scope's charges, all or nothing.
///
/// ```
/// use tollgate::rate_limit::{Acquire, Limit, RateLimitKey, ScopeCharge};
///
/// let key = [Limit::requests_per_minute(60)];
/// let model = [Limit::tokens_per_minute(2_000_000)];
/// let scopes = [
///     ScopeCharge { key: RateLimitKey::new("alice"), limits: &key, costs: &[1], max_concurrent: None },
///     ScopeCharge {
///         key: RateLimitKey::scoped(RateLimitKey::MODEL, "gpt-4o"),
///         limits: &model,
///         costs: &[1_200],
///         max_concurrent: Some(64),
///     },
/// ];
/// let request = Acquire { scopes: &scopes };
/// # let _ = request;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Acquire<'a> {
    /// The scopes, each with its limits and costs.
    pub scopes: &'a [ScopeCharge<'a>],
}

/// One scope of a settlement: add `deltas[i]` to `limits[i]` (negative:
/// refund) without a check, and free a concurrency slot if `release`.
#[derive(Debug, Clone, Copy)]
pub struct ScopeSettle<'a> {
    /// The scope.
    pub key: RateLimitKey<'a>,
    /// Its limits, as passed to [`Acquire`].
    pub limits: &'a [Limit],
    /// The adjustment of each limit (same length as `limits`; 0 leaves it).
    pub deltas: &'a [i64],
    /// Whether the request held a concurrency slot in this scope.
    pub release: bool,
}

/// What one settlement asks, for every scope of an admission.
#[derive(Debug, Clone, Copy)]
pub struct Settle<'a> {
    /// The scopes.
    pub scopes: &'a [ScopeSettle<'a>],
    /// The admission's [`Admission::receipt`].
    pub receipt: Receipt,
}

/// One limit's state as seen by an admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimitState {
    /// What is left of the limit (after this request's charge, if admitted).
    pub remaining: u64,
    /// Until capacity frees up: for [`Sliding`](super::Algorithm::Sliding)
    /// when the next unit leaves the window, for
    /// [`Gcra`](super::Algorithm::Gcra) when the limit is back to full, for
    /// [`Fixed`](super::Algorithm::Fixed) when the window ends. Zero when
    /// nothing is used.
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
    /// The limits admitted the request but a scope has `max_concurrent`
    /// requests in flight ([`Admission::busy`] says which); nothing was
    /// charged.
    Concurrency,
}

/// The answer to an [`Acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The decision.
    pub verdict: Verdict,
    /// The state of each limit: the first scope's limits in order, then the
    /// second's, and so on.
    pub states: LimitStates,
    /// For [`Verdict::Concurrency`], the index of the (first) scope whose
    /// requests in flight are at their cap.
    pub busy: Option<usize>,
    /// What the store keeps for the settlement of this admission (passed
    /// back in [`Settle::receipt`]); [`Receipt::NONE`] if it needs nothing.
    pub receipt: Receipt,
}

/// What a store keeps from an admission for its settlement, so that it
/// need not work it out again: the memory store keeps the first scope's
/// keyed digest (hashing a scope is a good part of a settlement's cost).
/// The layer passes it back untouched in [`Settle::receipt`]. A store must
/// check that a receipt is its own ([`Receipt::issuer`]) and otherwise work
/// from the scopes, as for [`Receipt::NONE`].
///
/// ```
/// use tollgate::rate_limit::Receipt;
///
/// let receipt = Receipt::new(7, 0xfeed);
/// assert_eq!(receipt.issuer(), Some(7));
/// assert_eq!(receipt.value(), 0xfeed);
/// assert_eq!(Receipt::NONE.issuer(), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Receipt {
    issuer: u64,
    value: u128,
}

impl Receipt {
    /// No receipt: the store works from the settlement's scopes.
    pub const NONE: Receipt = Receipt {
        issuer: 0,
        value: 0,
    };

    /// A receipt of the store instance `issuer` (a nonzero number the store
    /// chooses, unlike any other instance's), holding `value`. An issuer of
    /// 0 makes [`Receipt::NONE`].
    pub const fn new(issuer: u64, value: u128) -> Receipt {
        Receipt { issuer, value }
    }

    /// The store instance that issued this receipt; `None` for
    /// [`Receipt::NONE`].
    pub const fn issuer(&self) -> Option<u64> {
        if self.issuer == 0 {
            None
        } else {
            Some(self.issuer)
        }
    }

    /// What the issuer kept.
    pub const fn value(&self) -> u128 {
        self.value
    }
}

/// The [`LimitState`]s of an admission, in the order of its limits: a
/// vector that holds four without allocating (an admission is on every
/// request's path; most have a requests and a tokens limit in one or two
/// scopes).
///
/// ```
/// use tollgate::rate_limit::{LimitState, LimitStates};
///
/// let mut states = LimitStates::new();
/// states.push(LimitState { remaining: 59, ..LimitState::default() });
/// assert_eq!(states.len(), 1);
/// assert_eq!(states[0].remaining, 59);
/// ```
#[derive(Clone)]
pub struct LimitStates(Small<LimitState, 4>);

crate::small::small_newtype!(LimitStates, LimitState, LimitState::default());

/// State for [`RateLimitLayer`](super::RateLimitLayer): checks and charges
/// limits per scope, atomically, in one round trip.
///
/// Implementations must make `acquire` all or nothing across every scope
/// (a refused request consumes nothing) and atomic with respect to
/// concurrent calls, so that N gateway instances (or N clones of a service)
/// sharing a store share exact limits. The returned futures own what they
/// need (`'static`): the layer settles from a response body's `Drop`, where
/// nothing can be borrowed. An in-memory store answers with
/// [`StoreFuture::ready`], a remote one with [`StoreFuture::pending`].
///
/// A distributed store should expire concurrency slots it never sees released
/// (an instance that crashed mid-request), and read time from one clock (the
/// server's), not from each instance.
pub trait RateLimitStore: Send + Sync + 'static {
    /// Checks `request` against the state of its scopes and, if every limit
    /// admits it and a concurrency slot is free in every capped scope,
    /// charges it; otherwise charges nothing.
    fn acquire(&self, request: &Acquire<'_>) -> StoreFuture<Admission>;

    /// Applies `request`'s deltas and frees its concurrency slots. Settling
    /// a scope the store no longer holds (evicted, expired) applies the
    /// charges and ignores the rest.
    fn settle(&self, request: &Settle<'_>) -> StoreFuture<()>;
}

impl<T: RateLimitStore + ?Sized> RateLimitStore for Arc<T> {
    fn acquire(&self, request: &Acquire<'_>) -> StoreFuture<Admission> {
        (**self).acquire(request)
    }

    fn settle(&self, request: &Settle<'_>) -> StoreFuture<()> {
        (**self).settle(request)
    }
}

impl<T: RateLimitStore + ?Sized> RateLimitStore for Box<T> {
    fn acquire(&self, request: &Acquire<'_>) -> StoreFuture<Admission> {
        (**self).acquire(request)
    }

    fn settle(&self, request: &Settle<'_>) -> StoreFuture<()> {
        (**self).settle(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_display_escaped() {
        let key = RateLimitKey::new("a\nb").with_model(Some("m\u{1b}[31m"));
        assert_eq!(key.to_string(), "a\\nb (model m\\u{1b}[31m)");
        assert_eq!(RateLimitKey::scoped("team", "t").to_string(), "team t");
        assert_eq!(key.describe(), " for model m\\u{1b}[31m");
        assert_eq!(RateLimitKey::new("a").describe(), "");
        assert_eq!(
            RateLimitKey::scoped(RateLimitKey::MODEL, "gpt-4o").describe(),
            " for model gpt-4o (all keys)"
        );
        assert_eq!(
            RateLimitKey::scoped(RateLimitKey::UPSTREAM, "openai").describe(),
            " for upstream openai"
        );
    }

    #[test]
    fn the_trait_is_dyn_compatible() {
        fn takes(_: &dyn RateLimitStore) {}
        let store: Arc<dyn RateLimitStore> =
            Arc::new(crate::store::memory::MemoryRateLimitStore::new());
        takes(&store);
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
        let mut spilled: LimitStates = (0..7).map(state).collect();
        spilled[0].remaining = 70;
        let expected: LimitStates = [70, 1, 2, 3, 4, 5, 6].into_iter().map(state).collect();
        assert_eq!(spilled, expected);
        assert_eq!(three.iter().map(|s| s.remaining).sum::<u64>(), 13);
        assert_eq!(format!("{:?}", LimitStates::new()), "[]");
    }
}
