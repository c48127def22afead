//! Code every layer's service writes the same way, written once.

/// The ready inner service, leaving a fresh clone in its place: a future
/// that outlives `call` must own the instance `poll_ready` readied.
pub(crate) fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// The inner-service accessors of a layer's service (a struct with an
/// `inner: S` field), as tower-http's `define_inner_service_accessors!`.
macro_rules! define_inner_service_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Unwraps the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

pub(crate) use define_inner_service_accessors;

/// `Clone` for a layer or service whose shared parts sit behind `Arc`s:
/// only the parameters given a `Clone` bound need it, where
/// `#[derive(Clone)]` would ask it of every one (a key store, a ledger).
///
/// `impl_clone!(Auth<S: Clone, K> { inner, store, policy });`
macro_rules! impl_clone {
    ($name:ident<$($param:ident $(: $bound:path)?),+> { $($field:ident),+ $(,)? }) => {
        impl<$($param $(: $bound)?),+> Clone for $name<$($param),+> {
            fn clone(&self) -> Self {
                $name {
                    $($field: self.$field.clone()),+
                }
            }
        }
    };
}

pub(crate) use impl_clone;
