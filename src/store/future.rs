//! [`StoreFuture`]: the one shape of every store operation's answer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::StoreError;

type Boxed<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// The answer of a store operation: already known (a store in this
/// process's memory, or a cache hit), or on its way (a round trip to Redis or
/// to a disk).
///
/// Every store trait of the crate ([`KeyStore`](crate::auth::KeyStore),
/// [`RateLimitStore`](crate::rate_limit::RateLimitStore),
/// [`Ledger`](crate::budget::Ledger)) returns one, so the traits are
/// dyn-compatible (a gateway picks its store at run time as an
/// `Arc<dyn Ledger>`) and a layer can take an answer that is already known
/// without keeping a future: [`take_ready`](StoreFuture::take_ready) in its
/// `call`. A ready answer allocates nothing; a pending one is one box,
/// which a networked store's future needs anyway.
///
/// The future owns what it needs (a connection handle, the arguments): it
/// never borrows the store.
///
/// ```
/// use tollgate::store::{StoreError, StoreFuture};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), StoreError> {
/// let mut now: StoreFuture<u32> = StoreFuture::ready(Ok(7));
/// assert_eq!(now.take_ready(), Some(Ok(7))); // no await, no allocation
///
/// let later: StoreFuture<u32> = StoreFuture::pending(async { Ok(8) });
/// assert_eq!(later.await?, 8);
/// # Ok(())
/// # }
/// ```
#[must_use = "a store operation does nothing unless awaited"]
pub struct StoreFuture<T> {
    state: State<T>,
}

enum State<T> {
    Ready(Option<Result<T, StoreError>>),
    Pending(Boxed<T>),
}

// Neither state is self-referential: `Ready` holds a plain value and
// `Pending` a pinned box, so moving a `StoreFuture` never moves what it polls.
impl<T> Unpin for StoreFuture<T> {}

impl<T> StoreFuture<T> {
    /// An answer known at once.
    pub fn ready(result: Result<T, StoreError>) -> Self {
        StoreFuture {
            state: State::Ready(Some(result)),
        }
    }

    /// An answer `future` will give (a remote store's round trip).
    pub fn pending<F>(future: F) -> Self
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        StoreFuture {
            state: State::Pending(Box::pin(future)),
        }
    }

    /// Whether the answer is known without polling.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready(Some(_)))
    }

    /// The answer, if it is known without polling; `None` for a pending
    /// answer (poll or await it) and for one already taken.
    pub fn take_ready(&mut self) -> Option<Result<T, StoreError>> {
        match &mut self.state {
            State::Ready(result) => result.take(),
            State::Pending(_) => None,
        }
    }

    /// Transforms the answer, keeping a ready one ready.
    pub fn map<U, F>(self, f: F) -> StoreFuture<U>
    where
        T: Send + 'static,
        F: FnOnce(T) -> U + Send + 'static,
    {
        match self.state {
            State::Ready(result) => StoreFuture {
                state: State::Ready(result.map(|r| r.map(f))),
            },
            State::Pending(future) => StoreFuture::pending(async move { future.await.map(f) }),
        }
    }
}

impl<T> Future for StoreFuture<T> {
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            State::Ready(result) => Poll::Ready(result.take().unwrap_or_else(|| {
                Err(StoreError::Unavailable(
                    "store answer polled after it was taken".into(),
                ))
            })),
            State::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

impl<T> From<Result<T, StoreError>> for StoreFuture<T> {
    fn from(result: Result<T, StoreError>) -> Self {
        StoreFuture::ready(result)
    }
}

impl<T> fmt::Debug for StoreFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Ready(Some(_)) => f.write_str("StoreFuture::Ready"),
            State::Ready(None) => f.write_str("StoreFuture::Taken"),
            State::Pending(_) => f.write_str("StoreFuture::Pending"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_is_taken_once_then_errs() {
        let mut answer = StoreFuture::ready(Ok(1u8));
        assert!(answer.is_ready());
        assert_eq!(answer.take_ready(), Some(Ok(1)));
        assert!(!answer.is_ready());
        assert_eq!(answer.take_ready(), None);
        assert!(matches!(answer.await, Err(StoreError::Unavailable(_))));
    }

    #[tokio::test]
    async fn pending_is_not_taken_but_awaited() {
        let mut answer = StoreFuture::pending(async { Ok(2u8) });
        assert!(!answer.is_ready());
        assert_eq!(answer.take_ready(), None);
        assert_eq!(answer.await, Ok(2));
    }

    #[tokio::test]
    async fn map_keeps_ready_ready() {
        let mut answer = StoreFuture::ready(Ok(2u8)).map(|n| n * 2);
        assert_eq!(answer.take_ready(), Some(Ok(4)));
        let answer = StoreFuture::pending(async { Ok(2u8) }).map(|n| n + 1);
        assert_eq!(answer.await, Ok(3));
        let mut failed = StoreFuture::<u8>::ready(Err(StoreError::Timeout)).map(|n| n + 1);
        assert_eq!(failed.take_ready(), Some(Err(StoreError::Timeout)));
    }

    #[test]
    fn is_send_and_unpin() {
        fn check<T: Send + Unpin>() {}
        check::<StoreFuture<String>>();
        check::<StoreFuture<std::marker::PhantomPinned>>();
    }
}
