//! Where keys live: the [`KeyStore`] trait and its [`Lookup`] future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::{KeyHash, KeyRecord};
use crate::store::StoreError;

/// What a lookup finds: the record, no record (an unknown key), or a store
/// that could not answer (the request is refused with 503: fail closed).
pub type LookupResult = Result<Option<Arc<KeyRecord>>, StoreError>;

/// Finds key records by the SHA-256 of their secret.
///
/// The trait is dyn-compatible: `Arc<dyn KeyStore>` is a `KeyStore`, so a
/// gateway can choose its store at run time. [`MemoryKeyStore`] is the
/// in-process implementation.
///
/// # Writing a remote store
///
/// A store backed by a database or Redis keeps a local cache (a
/// [`MemoryKeyStore`] does), answers hits with [`Lookup::ready`] (no
/// allocation, no await), and misses with [`Lookup::pending`] over a future
/// that owns what it needs (a connection handle, the hash). Revocations must
/// reach every instance's cache at once, not when an entry's TTL runs out:
/// publish them (Redis pub/sub, a database `LISTEN`) and apply them with
/// [`MemoryKeyStore::revoke`] or [`MemoryKeyStore::remove`]. Cache unknown
/// hashes briefly, if at all, so a key minted on one instance works on the
/// others within that time.
///
/// ```
/// use std::sync::Arc;
/// use tollgate::auth::{KeyHash, KeyRecord, KeyStore, Lookup};
/// use tollgate::store::StoreError;
///
/// /// A store that knows one key, answering as a remote store would.
/// struct OneKey(Arc<KeyRecord>);
///
/// impl KeyStore for OneKey {
///     fn lookup(&self, hash: &KeyHash) -> Lookup {
///         let (record, hash) = (self.0.clone(), *hash);
///         Lookup::pending(async move {
///             Ok::<_, StoreError>((record.secret_hash == hash).then_some(record))
///         })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), StoreError> {
/// let store: Arc<dyn KeyStore> = Arc::new(OneKey(Arc::new(KeyRecord::new("a", KeyHash::of("sk-a")))));
/// assert!(store.lookup(&KeyHash::of("sk-a")).await?.is_some());
/// assert!(store.lookup(&KeyHash::of("sk-b")).await?.is_none());
/// # Ok(())
/// # }
/// ```
///
/// [`MemoryKeyStore`]: crate::store::memory::MemoryKeyStore
/// [`MemoryKeyStore::revoke`]: crate::store::memory::MemoryKeyStore::revoke
/// [`MemoryKeyStore::remove`]: crate::store::memory::MemoryKeyStore::remove
pub trait KeyStore: Send + Sync {
    /// The record whose secret hashes to `hash`, if any.
    ///
    /// The returned [`Lookup`] must not borrow `self`: clone what the lookup
    /// needs into it.
    fn lookup(&self, hash: &KeyHash) -> Lookup;
}

impl<T: KeyStore + ?Sized> KeyStore for Arc<T> {
    fn lookup(&self, hash: &KeyHash) -> Lookup {
        (**self).lookup(hash)
    }
}

impl<T: KeyStore + ?Sized> KeyStore for Box<T> {
    fn lookup(&self, hash: &KeyHash) -> Lookup {
        (**self).lookup(hash)
    }
}

type BoxLookup = Pin<Box<dyn Future<Output = LookupResult> + Send>>;

/// The answer of [`KeyStore::lookup`]: already known (an in-memory store or
/// a cache hit, answered without allocating), or on its way.
#[must_use = "a lookup does nothing unless awaited"]
pub struct Lookup {
    state: State,
}

enum State {
    Ready(Option<LookupResult>),
    Pending(BoxLookup),
}

impl Lookup {
    /// A lookup answered at once.
    pub fn ready(result: LookupResult) -> Lookup {
        Lookup {
            state: State::Ready(Some(result)),
        }
    }

    /// A lookup answered by `future` (a remote store's round trip).
    pub fn pending<F>(future: F) -> Lookup
    where
        F: Future<Output = LookupResult> + Send + 'static,
    {
        Lookup {
            state: State::Pending(Box::pin(future)),
        }
    }

    /// The answer, if it is already known, without polling.
    pub(crate) fn take_ready(&mut self) -> Option<LookupResult> {
        match &mut self.state {
            State::Ready(result) => result.take(),
            State::Pending(_) => None,
        }
    }
}

impl Future for Lookup {
    type Output = LookupResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<LookupResult> {
        match &mut self.state {
            State::Ready(result) => Poll::Ready(result.take().unwrap_or_else(|| {
                Err(StoreError::Unavailable(
                    "key lookup polled after completion".into(),
                ))
            })),
            State::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Ready(_) => f.write_str("Lookup::Ready"),
            State::Pending(_) => f.write_str("Lookup::Pending"),
        }
    }
}
