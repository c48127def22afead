//! Attempts that got no response: [`TransportFailure`], and how the
//! default classifier treats them.
//!
//! An upstream that never answered may still have done the work. A
//! connection that was refused sent nothing, so any request may be sent
//! again; a timeout or a reset after the request went out may follow a
//! completion the provider finished and billed, so only a request the
//! policy calls [replay-safe](super::RetryPolicy::replay_safe) is. And
//! every attempt of one request carries the same `Idempotency-Key`, so an
//! upstream that honours it does the work once however often it is sent.

use std::fmt;

use http::HeaderValue;

use super::classify::Classification;
use super::layer::Shared;
use crate::{ErrorKind, RetryClass};

/// What a classifier sees of an attempt that got no response: the inner
/// service's error, or the per-attempt timeout, and whether the request may
/// be sent again once it may have reached the upstream.
///
/// A connect error is told from the others by its type, never its text:
/// hyper-util's `client::legacy::Error::is_connect` (feature `hyper-util`),
/// reqwest's `Error::is_connect` (feature `reqwest`), or an
/// `std::io::Error` of kind `ConnectionRefused`, found anywhere along the
/// error's `source()` chain. The first hyper-util or reqwest error on the
/// chain decides: when it says "not a connect error", the request may have
/// been sent, whatever lies below it.
#[derive(Clone, Copy)]
pub struct TransportFailure<'a> {
    error: Option<&'a (dyn std::error::Error + 'static)>,
    timed_out: bool,
    replay_safe: bool,
}

impl fmt::Debug for TransportFailure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportFailure")
            .field("connect", &self.is_connect())
            .field("timeout", &self.is_timeout())
            .field("replay_safe", &self.replay_safe)
            .finish()
    }
}

impl<'a> TransportFailure<'a> {
    /// The inner service failed with `error` (`None` when its error type is
    /// not one tollgate can look into: not a `BoxError`, an `std::io::Error`,
    /// nor, with their features, a hyper-util or reqwest error).
    pub fn new(error: Option<&'a (dyn std::error::Error + 'static)>, replay_safe: bool) -> Self {
        TransportFailure {
            error,
            timed_out: false,
            replay_safe,
        }
    }

    /// The attempt outlived the [per-attempt timeout](super::RetryPolicy::attempt_timeout).
    pub fn attempt_timeout(replay_safe: bool) -> Self {
        TransportFailure {
            error: None,
            timed_out: true,
            replay_safe,
        }
    }

    /// The inner service's error, when there is one to look into.
    pub fn error(&self) -> Option<&'a (dyn std::error::Error + 'static)> {
        self.error
    }

    /// Whether the per-attempt timeout fired.
    pub fn is_attempt_timeout(&self) -> bool {
        self.timed_out
    }

    /// Whether the request may be sent again although it may have reached
    /// the upstream ([`RetryPolicy::replay_safe`](super::RetryPolicy::replay_safe)).
    pub fn is_replay_safe(&self) -> bool {
        self.replay_safe
    }

    fn chain(&self) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
        std::iter::successors(self.error, |e| e.source())
    }

    /// Whether no connection was made, so nothing was sent.
    pub fn is_connect(&self) -> bool {
        for e in self.chain() {
            #[cfg(feature = "hyper-util")]
            if let Some(e) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
                return e.is_connect();
            }
            #[cfg(feature = "reqwest")]
            if let Some(e) = e.downcast_ref::<reqwest::Error>() {
                return e.is_connect();
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::ConnectionRefused
            {
                return true;
            }
        }
        false
    }

    /// Whether the attempt timed out: the per-attempt timeout, or a timeout
    /// error along the chain (tower's and tokio's `Elapsed`, reqwest's
    /// timeouts, an `std::io::Error` of kind `TimedOut`).
    pub fn is_timeout(&self) -> bool {
        self.timed_out
            || self.chain().any(|e| {
                #[cfg(feature = "reqwest")]
                if e.downcast_ref::<reqwest::Error>()
                    .is_some_and(reqwest::Error::is_timeout)
                {
                    return true;
                }
                e.is::<tower::timeout::error::Elapsed>()
                    || e.is::<tokio::time::error::Elapsed>()
                    || e.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            })
    }
}

/// The default classification of an attempt without a response (see
/// [`Classify::classify_transport`](super::Classify::classify_transport)).
pub(crate) fn classify_transport(failure: &TransportFailure<'_>) -> Classification {
    if failure.is_connect() {
        return Classification::failure(ErrorKind::Connection);
    }
    let kind = if failure.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Connection
    };
    let class = if failure.is_replay_safe() {
        RetryClass::Transient
    } else {
        RetryClass::Never
    };
    Classification::failure(kind).with_class(class)
}

/// An inner service's error as something to look into, when its type is
/// one tollgate knows: a `BoxError` (tower's stacks, `tower_test`), an
/// `std::io::Error`, and with their features hyper-util's and reqwest's
/// errors. Known by type at run time so the layer asks nothing more of the
/// inner service's error type than `'static`.
pub(crate) fn error_source<E: 'static>(error: &E) -> Option<&(dyn std::error::Error + 'static)> {
    let any: &dyn std::any::Any = error;
    if let Some(boxed) = any.downcast_ref::<crate::BoxError>() {
        return Some(&**boxed);
    }
    if let Some(io) = any.downcast_ref::<std::io::Error>() {
        return Some(io);
    }
    #[cfg(feature = "hyper-util")]
    if let Some(e) = any.downcast_ref::<hyper_util::client::legacy::Error>() {
        return Some(e);
    }
    #[cfg(feature = "reqwest")]
    if let Some(e) = any.downcast_ref::<reqwest::Error>() {
        return Some(e);
    }
    None
}

/// `Idempotency-Key`: one per logical request, the same on each attempt, so
/// an upstream that honours it does the work once.
const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// Sets an `Idempotency-Key` on a request that has none and whose method
/// is not idempotent already: `tollgate-` and 32 hex digits from the
/// layer's generator (seeded from the OS), shared by all its attempts.
pub(crate) fn add_idempotency_key(shared: &Shared, parts: &mut http::request::Parts) {
    if !shared.idempotency_key
        || !matches!(parts.method, http::Method::POST | http::Method::PATCH)
        || parts.headers.contains_key(IDEMPOTENCY_KEY)
    {
        return;
    }
    // Written like the envelope's request ids: hex into a stack buffer, cut
    // from a shared chunk, so each attempt's copy is a reference count.
    let mut text = [0u8; 41];
    text[..9].copy_from_slice(b"tollgate-");
    crate::envelope::write_hex(shared.jitter.next(), &mut text[9..25]);
    crate::envelope::write_hex(shared.jitter.next(), &mut text[25..]);
    if let Ok(value) = HeaderValue::from_maybe_shared(crate::header_values::shared_bytes(&text)) {
        parts.headers.insert(IDEMPOTENCY_KEY, value);
    }
}
