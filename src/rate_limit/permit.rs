//! What an admitted request holds until its response is done: its token
//! reservation and its concurrency slot.

use std::fmt;
use std::sync::Arc;

use super::service::Plan;
use super::{Limit, Measure, RateLimitKey, RateLimitStore, ScopeSettle, Settle};
use crate::Principal;
use crate::budget::{Billed, CallEnd, ChargePolicy};
use crate::small::Small;
use crate::store::StoreFuture;
use crate::usage::{UsageReport, UsageSource};

/// The limits of a key, shared rather than copied per request.
#[derive(Clone)]
pub(crate) enum LimitSet {
    /// The layer's defaults.
    Layer(Arc<[Limit]>),
    /// The limits on the caller's key record.
    Principal(Principal),
}

impl LimitSet {
    pub(crate) fn as_slice(&self) -> &[Limit] {
        match self {
            LimitSet::Layer(limits) => limits,
            LimitSet::Principal(p) => p.rate_limits(),
        }
    }
}

/// The key a request counts against, kept from admission to settlement
/// without a copy when it is the caller's key id (the common case).
#[derive(Clone)]
pub(crate) enum KeyId {
    /// The key id of the request's `Principal`.
    Principal(Principal),
    /// The layer's key for unkeyed requests.
    Static(&'static str),
    /// A key some other extractor made.
    Owned(Box<str>),
}

impl KeyId {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            KeyId::Principal(p) => p.key_id(),
            KeyId::Static(s) => s,
            KeyId::Owned(s) => s,
        }
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Runs a store's settlement from a synchronous context (a body's end or
/// `Drop`), with the store's type erased so bodies do not carry it.
pub(crate) trait Settler: Send + Sync + 'static {
    fn settle(&self, request: &Settle<'_>);
}

pub(crate) struct StoreSettler<St>(pub(crate) St);

impl<St: RateLimitStore> Settler for StoreSettler<St> {
    fn settle(&self, request: &Settle<'_>) {
        drive(self.0.settle(request), request);
    }
}

/// Takes an answer known at once (memory) here, without a task. Otherwise
/// the rest runs on the current tokio runtime. The key, for the log, is
/// written only when the settlement failed or must wait (not on every
/// settlement of the memory store).
fn drive(mut future: StoreFuture<()>, request: &Settle<'_>) {
    let key = || {
        request
            .scopes
            .first()
            .map(|s| s.key.to_string())
            .unwrap_or_default()
    };
    match future.take_ready() {
        Some(Ok(())) => {}
        Some(Err(error)) => {
            tracing::warn!(%error, key = %key(), "rate limit settlement failed");
        }
        None => match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let key = key();
                handle.spawn(async move {
                    if let Err(error) = future.await {
                        tracing::warn!(%error, key = %key, "rate limit settlement failed");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(key = %key(), "no tokio runtime to settle a rate limit on");
            }
        },
    }
}

/// An admitted request's hold on its scopes: settled exactly once, when the
/// response reports its usage, when it ends, or when it is dropped.
pub(crate) struct Permit {
    settler: Arc<dyn Settler>,
    plan: Plan,
    policy: ChargePolicy,
    settled: bool,
}

impl Permit {
    pub(crate) fn new(settler: Arc<dyn Settler>, plan: Plan, policy: ChargePolicy) -> Self {
        Permit {
            settler,
            plan,
            policy,
            settled: false,
        }
    }

    /// Settles from the report of the response's body; `timed_out`: the
    /// response is a gateway's timeout.
    pub(crate) fn finish(mut self, report: &UsageReport, timed_out: bool) {
        let end = CallEnd::Response { report, timed_out };
        // A fixed reservation (an unreadable body) stands unless the
        // upstream says what was used.
        if self.plan.fixed && report.source != UsageSource::Reported {
            return self.settle_now(None);
        }
        let used = self.used(end);
        self.settle_now(used);
    }

    /// Settles a call whose inner service failed without a response.
    pub(crate) fn failed(mut self, timed_out: bool) {
        let used = self.used(CallEnd::Error { timed_out });
        self.settle_now(used);
    }

    /// The tokens a call that ended as `end` counts (`None`: the
    /// reservation).
    fn used(&self, end: CallEnd<'_>) -> Option<u64> {
        match self.policy.bill(end, self.plan.prompt_tokens) {
            Billed::Nothing => Some(0),
            Billed::Usage(usage) => Some(usage.total_tokens),
            Billed::Reservation => None,
        }
    }

    fn settle_now(&mut self, used_tokens: Option<u64>) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let reserved = self.plan.reserved_tokens;
        let delta =
            used_tokens.map_or(0, |used| {
                i64::try_from(i128::from(used) - i128::from(reserved))
                    .unwrap_or(if used > reserved { i64::MAX } else { i64::MIN })
            });
        let plan = &self.plan;
        // Nothing to write back: no slot to free, no token count to correct.
        if !plan.releases && (delta == 0 || !plan.counts_tokens) {
            return;
        }
        // On the stack for up to four scopes and sixteen limits, as the
        // admission's charges: each token limit's delta, then the scopes.
        let mut deltas = Small::<i64, 16>::new(plan.limit_count());
        let mut at = 0;
        for (_, limits, _) in plan.scopes() {
            for limit in limits {
                if limit.measure == Measure::Tokens {
                    deltas[at] = delta;
                }
                at += 1;
            }
        }
        let empty = ScopeSettle {
            key: RateLimitKey::new(""),
            limits: &[],
            deltas: &[],
            release: false,
        };
        let mut scopes = Small::<ScopeSettle<'_>, 4>::filled(plan.scope_count(), empty);
        let mut at = 0;
        for (slot, (key, limits, max)) in scopes.iter_mut().zip(plan.scopes()) {
            *slot = ScopeSettle {
                key,
                limits,
                deltas: &deltas[at..at + limits.len()],
                release: max.is_some(),
            };
            at += limits.len();
        }
        self.settler.settle(&Settle {
            scopes: &scopes,
            receipt: self.plan.receipt,
        });
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // Dropped while the inner service had the request (the client went
        // away before the headers, a timeout further out).
        let used = if self.plan.fixed {
            None
        } else {
            self.used(CallEnd::Abandoned)
        };
        self.settle_now(used);
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("key", &self.plan.key.as_str())
            .field("model", &self.plan.model)
            .field("reserved_tokens", &self.plan.reserved_tokens)
            .finish_non_exhaustive()
    }
}
