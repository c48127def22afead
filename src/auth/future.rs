//! The response future of [`Auth`](super::Auth).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::layer::Policy;
use super::outcome::{self, Admitted};
use super::resolve::{Resolution, Resolving, resolve};
use super::{KeyHash, KeyRecord, KeyStore, Principal};
use crate::body::{ResponseBody, reject};
use crate::request::{FromBytes, ReadMeta};
use crate::store::StoreFuture;
use crate::{ApiError, BoxError, RequestMeta};

/// `x-api-key-expires-in`: seconds until the key expires, sent when it is
/// within the layer's warning window.
pub const X_API_KEY_EXPIRES_IN: HeaderName = HeaderName::from_static("x-api-key-expires-in");

pin_project! {
    /// Resolves to the inner service's response, or to the rejection.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
        expires_in: Option<HeaderValue>,
    }
}

pin_project! {
    #[project = StateProj]
    pub(super) enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        // A remote store is answering.
        Lookup {
            lookup: StoreFuture<Option<Arc<KeyRecord>>>,
            waiting: Option<Waiting<S, B>>,
        },
        // A remote store is finding the key's tenants.
        Tenants {
            resolving: Resolving,
            waiting: Option<(S, Request<B>, Arc<Policy>)>,
        },
        // The key has a model allow-list: the body is read for its `model`.
        // Boxed: only keys with an allow-list read here, and inline it would
        // make every request's future larger.
        ReadMeta {
            read: Pin<Box<ReadMeta<B>>>,
            waiting: Option<(S, Principal)>,
        },
        Call {
            #[pin]
            future: S::Future,
        },
        Reject {
            error: Option<ApiError>,
        },
    }
}

pub(super) struct Waiting<S, B> {
    pub(super) inner: S,
    pub(super) req: Request<B>,
    pub(super) hash: KeyHash,
    pub(super) policy: Arc<Policy>,
    /// For the key's tenants, once the key is found.
    pub(super) store: Arc<dyn KeyStore>,
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn reject(error: ApiError) -> Self {
        Self::with_state(State::Reject { error: Some(error) }, None)
    }

    pub(crate) fn call(future: S::Future, expires_in: Option<HeaderValue>) -> Self {
        Self::with_state(State::Call { future }, expires_in)
    }

    pub(super) fn with_state(state: State<S, B>, expires_in: Option<HeaderValue>) -> Self {
        ResponseFuture { state, expires_in }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    B: Body<Data = Bytes> + FromBytes + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Lookup { lookup, waiting } => {
                    let found = ready!(Pin::new(lookup).poll(cx));
                    let Some(Waiting {
                        inner,
                        req,
                        hash,
                        policy,
                        store,
                    }) = waiting.take()
                    else {
                        return Poll::Ready(Ok(reject(ApiError::internal())));
                    };
                    match outcome::admit(&policy, found, &hash) {
                        Err(error) => State::Reject { error: Some(error) },
                        Ok(Admitted {
                            principal,
                            expires_in,
                        }) => {
                            *this.expires_in = expires_in;
                            match resolve(&store, principal) {
                                Resolution::Now(Ok(principal)) => {
                                    proceed(inner, req, principal, &policy)
                                }
                                Resolution::Now(Err(error)) => State::Reject { error: Some(error) },
                                Resolution::Later(resolving) => State::Tenants {
                                    resolving,
                                    waiting: Some((inner, req, policy)),
                                },
                            }
                        }
                    }
                }
                StateProj::Tenants { resolving, waiting } => {
                    let resolved = ready!(resolving.as_mut().poll(cx));
                    let Some((inner, req, policy)) = waiting.take() else {
                        return Poll::Ready(Ok(reject(ApiError::internal())));
                    };
                    match resolved {
                        Ok(principal) => proceed(inner, req, principal, &policy),
                        Err(error) => State::Reject { error: Some(error) },
                    }
                }
                StateProj::ReadMeta { read, waiting } => {
                    let read = ready!(read.as_mut().poll(cx));
                    let Some((inner, principal)) = waiting.take() else {
                        return Poll::Ready(Ok(reject(ApiError::internal())));
                    };
                    let checked = read.and_then(|req| {
                        outcome::check_model(&principal, req.extensions().get::<RequestMeta>())
                            .map(|()| req)
                    });
                    match checked {
                        Err(error) => State::Reject { error: Some(error) },
                        Ok(mut req) => {
                            req.extensions_mut().insert(principal);
                            call(inner, req)
                        }
                    }
                }
                StateProj::Call { future } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(seconds) = this.expires_in.take() {
                        response.headers_mut().insert(X_API_KEY_EXPIRES_IN, seconds);
                    }
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
                StateProj::Reject { error } => {
                    let error = error.take().unwrap_or_else(ApiError::internal);
                    return Poll::Ready(Ok(reject(error)));
                }
            };
            this.state.set(next);
        }
    }
}

/// What an admitted principal's request needs next: its body read for the
/// model check, the check, then the call.
fn proceed<S, B>(
    inner: S,
    mut req: Request<B>,
    principal: Principal,
    policy: &Policy,
) -> State<S, B>
where
    S: Service<Request<B>>,
    B: Body,
{
    let meta = req.extensions().get::<RequestMeta>();
    if outcome::needs_meta(&principal, meta.is_some()) {
        return State::ReadMeta {
            read: Box::pin(ReadMeta::new(req, policy.max_request_body_bytes)),
            waiting: Some((inner, principal)),
        };
    }
    match outcome::check_model(&principal, meta) {
        Err(error) => State::Reject { error: Some(error) },
        Ok(()) => {
            req.extensions_mut().insert(principal);
            call(inner, req)
        }
    }
}

fn call<S, B>(mut inner: S, req: Request<B>) -> State<S, B>
where
    S: Service<Request<B>>,
{
    State::Call {
        future: inner.call(req),
    }
}
