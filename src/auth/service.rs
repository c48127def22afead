use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::extract::Head;
use super::future::{ResponseFuture, State, Waiting};
use super::layer::Policy;
use super::outcome;
use super::resolve::{Resolution, resolve};
use super::{AuthLayer, KeyStore, Principal};
use crate::macros::take_ready;
use crate::request::{FromBytes, ReadMeta};
use crate::{BoxError, RequestMeta};

/// The service built by [`AuthLayer`].
pub struct Auth<S, K> {
    inner: S,
    store: Arc<K>,
    policy: Arc<Policy>,
}

impl<S, K> Auth<S, K> {
    pub(crate) fn from_parts(inner: S, store: Arc<K>, policy: Arc<Policy>) -> Self {
        Auth {
            inner,
            store,
            policy,
        }
    }

    /// Wraps `inner`, authenticating against `store` with the defaults of
    /// [`AuthLayer::new`].
    pub fn new(inner: S, store: K) -> Self {
        use tower_layer::Layer;
        AuthLayer::new(store).layer(inner)
    }

    crate::macros::define_inner_service_accessors!();

    /// The key store.
    pub fn store(&self) -> &K {
        &self.store
    }
}

crate::macros::impl_clone!(Auth<S: Clone, K> { inner, store, policy });

impl<S: fmt::Debug, K> fmt::Debug for Auth<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("inner", &self.inner)
            .field("store", &std::any::type_name::<K>())
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for Auth<S, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    K: KeyStore + 'static,
    ReqBody: Body<Data = Bytes> + FromBytes + Send + 'static,
    ReqBody::Error: Into<BoxError>,
{
    type Response = Response<crate::body::ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // Taken apart only for a custom extractor, which reads the whole
        // head: each move copies the request.
        let presented = if self.policy.needs_parts {
            let (parts, body) = req.into_parts();
            let presented = outcome::presented_hash(&self.policy, Head::Parts(&parts));
            req = Request::from_parts(parts, body);
            presented
        } else {
            outcome::presented_hash(&self.policy, Head::Headers(req.headers()))
        };
        let hash = match presented {
            Ok(hash) => hash,
            Err(error) => return ResponseFuture::reject(error),
        };
        let mut lookup = self.store.lookup(&hash);
        match lookup.take_ready() {
            // The common case (memory store, cache hit): decide now.
            Some(found) => match outcome::admit(&self.policy, found, &hash) {
                // Then its tenants: at once too, from memory or a cache.
                Ok(admitted) => match resolve(&self.store, admitted.principal) {
                    Resolution::Now(Ok(principal)) => {
                        self.forward(req, principal, admitted.expires_in)
                    }
                    Resolution::Now(Err(error)) => ResponseFuture::reject(error),
                    Resolution::Later(resolving) => {
                        let waiting = Some((take_ready(&mut self.inner), req, self.policy.clone()));
                        let state = State::Tenants { resolving, waiting };
                        ResponseFuture::with_state(state, admitted.expires_in)
                    }
                },
                Err(error) => ResponseFuture::reject(error),
            },
            None => {
                let waiting = Some(Waiting {
                    inner: take_ready(&mut self.inner),
                    req,
                    hash,
                    policy: self.policy.clone(),
                    store: self.store.clone(),
                });
                ResponseFuture::with_state(State::Lookup { lookup, waiting }, None)
            }
        }
    }
}

impl<S, K> Auth<S, K> {
    fn forward<ReqBody, ResBody>(
        &mut self,
        mut req: Request<ReqBody>,
        principal: Principal,
        expires_in: Option<HeaderValue>,
    ) -> ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
        ReqBody: Body<Data = Bytes> + FromBytes + Send + 'static,
        ReqBody::Error: Into<BoxError>,
    {
        let meta = req.extensions().get::<RequestMeta>();
        if outcome::needs_meta(&principal, meta.is_some()) {
            let read = Box::pin(ReadMeta::new(req, self.policy.max_request_body_bytes));
            let waiting = Some((take_ready(&mut self.inner), principal));
            return ResponseFuture::with_state(State::ReadMeta { read, waiting }, expires_in);
        }
        if let Err(error) = outcome::check_model(&principal, meta) {
            return ResponseFuture::reject(error);
        }
        req.extensions_mut().insert(principal);
        ResponseFuture::call(self.inner.call(req), expires_in)
    }
}
