//! What an admitted request holds until its response is done: its token
//! reservation and its concurrency slot.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use super::{Limit, Measure, RateLimitKey, RateLimitStore, Settle};
use crate::Principal;
use crate::store::StoreError;

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
    fn settle(&self, key: RateLimitKey<'_>, request: &Settle<'_>);
}

pub(crate) struct StoreSettler<St>(pub(crate) St);

impl<St: RateLimitStore> Settler for StoreSettler<St> {
    fn settle(&self, key: RateLimitKey<'_>, request: &Settle<'_>) {
        drive(self.0.settle(key, request), key);
    }
}

/// Polls `future` once; a store that answers at once (memory) is done here,
/// without a task. Otherwise the rest runs on the current tokio runtime.
fn drive<F>(mut future: F, key: RateLimitKey<'_>)
where
    F: Future<Output = Result<(), StoreError>> + Send + Unpin + 'static,
{
    match Pin::new(&mut future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(error)) => {
            tracing::warn!(%error, key = %key, "rate limit settlement failed");
        }
        Poll::Pending => match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(error) = future.await {
                        tracing::warn!(%error, "rate limit settlement failed");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(key = %key, "no tokio runtime to settle a rate limit on");
            }
        },
    }
}

/// An admitted request's hold on its key: settled exactly once, when the
/// response reports its usage, when it ends, or when it is dropped.
pub(crate) struct Permit {
    settler: Arc<dyn Settler>,
    key: KeyId,
    model: Option<String>,
    limits: LimitSet,
    reserved_tokens: u64,
    release: bool,
    settled: bool,
}

impl Permit {
    pub(crate) fn new(
        settler: Arc<dyn Settler>,
        key: KeyId,
        model: Option<String>,
        limits: LimitSet,
        reserved_tokens: u64,
        release: bool,
    ) -> Self {
        Permit {
            settler,
            key,
            model,
            limits,
            reserved_tokens,
            release,
            settled: false,
        }
    }

    /// Settles with the tokens the response used (refunding or charging
    /// the difference from the reservation), or, with `None`, keeps the
    /// reservation as the charge.
    pub(crate) fn settle(mut self, used_tokens: Option<u64>) {
        self.settle_now(used_tokens);
    }

    fn settle_now(&mut self, used_tokens: Option<u64>) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let delta = used_tokens.map_or(0, |used| {
            i64::try_from(i128::from(used) - i128::from(self.reserved_tokens)).unwrap_or(
                if used > self.reserved_tokens {
                    i64::MAX
                } else {
                    i64::MIN
                },
            )
        });
        let limits = self.limits.as_slice();
        let mut deltas = crate::small::Small::<i64, 8>::new(limits.len());
        for (d, limit) in deltas.iter_mut().zip(limits) {
            if limit.measure == Measure::Tokens {
                *d = delta;
            }
        }
        if !self.release && deltas.iter().all(|&d| d == 0) {
            return;
        }
        let key = RateLimitKey {
            id: self.key.as_str(),
            model: self.model.as_deref(),
        };
        self.settler.settle(
            key,
            &Settle {
                limits,
                deltas: &deltas,
                release: self.release,
            },
        );
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.settle_now(None);
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("key", &self.key.as_str())
            .field("model", &self.model)
            .field("reserved_tokens", &self.reserved_tokens)
            .field("release", &self.release)
            .finish_non_exhaustive()
    }
}
