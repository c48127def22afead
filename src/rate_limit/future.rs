//! The response future of [`RateLimit`](super::RateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::ResponseBody;
use super::permit::Permit;
use super::service::{PendingHeaders, Plan, Shared, begin, decide, rejection};
use super::{Admission, ExtractLimitKey, RateLimitStore};
use crate::request::{FromBytes, ReadMeta};
use crate::store::StoreFuture;
use crate::usage::{self, UsageOptions};
use crate::{ApiError, BoxError};

/// What an admitted request carries to its response.
pub(crate) struct Admitted {
    pub(crate) headers: PendingHeaders,
    pub(crate) permit: Option<Permit>,
    pub(crate) usage: UsageOptions,
}

pin_project! {
    /// Resolves to the inner service's response with rate-limit headers, or
    /// to a 429 rejection.
    pub struct ResponseFuture<S, B, St, K>
    where
        S: Service<Request<B>>,
        St: RateLimitStore,
    {
        #[pin]
        state: State<S, B>,
        shared: Arc<Shared<St, K>>,
    }
}

pin_project! {
    #[project = StateProj]
    pub(crate) enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        // Reading the body for `RequestMeta` (model, max_tokens).
        Meta {
            #[pin]
            future: ReadMeta<B>,
            service: Option<S>,
        },
        // Waiting for the store's admission.
        Acquire {
            future: StoreFuture<Admission>,
            request: Option<Request<B>>,
            service: Option<S>,
            plan: Option<Plan>,
        },
        // Admitted (or not limited): calling the inner service.
        Call {
            #[pin]
            future: S::Future,
            admitted: Option<Admitted>,
        },
        // Refused.
        Reject {
            error: Option<ApiError>,
            headers: HeaderMap,
        },
    }
}

impl<S, B> State<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn call(mut service: S, req: Request<B>, admitted: Option<Admitted>) -> Self {
        State::Call {
            future: service.call(req),
            admitted,
        }
    }

    pub(crate) fn meta(future: ReadMeta<B>, service: S) -> Self {
        State::Meta {
            future,
            service: Some(service),
        }
    }

    pub(crate) fn acquire(
        future: StoreFuture<Admission>,
        request: Request<B>,
        service: S,
        plan: Plan,
    ) -> Self {
        State::Acquire {
            future,
            request: Some(request),
            service: Some(service),
            plan: Some(plan),
        }
    }

    pub(crate) fn reject(error: ApiError, headers: HeaderMap) -> Self {
        State::Reject {
            error: Some(error),
            headers,
        }
    }
}

impl<S, B, St, K> ResponseFuture<S, B, St, K>
where
    S: Service<Request<B>>,
    St: RateLimitStore,
{
    pub(crate) fn new(shared: Arc<Shared<St, K>>, state: State<S, B>) -> Self {
        ResponseFuture { state, shared }
    }
}

impl<S, B, St, K, ResBody> Future for ResponseFuture<S, B, St, K>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: 'static,
    St: RateLimitStore,
    K: ExtractLimitKey<B>,
    B: Body<Data = Bytes> + FromBytes + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Meta { future, service } => {
                    let result = ready!(future.poll(cx));
                    match (result, service.take()) {
                        (Ok(req), Some(service)) => begin(this.shared, req, service, true),
                        (Err(error), _) => State::reject(error, HeaderMap::new()),
                        (Ok(_), None) => State::reject(ApiError::internal(), HeaderMap::new()),
                    }
                }
                StateProj::Acquire {
                    future,
                    request,
                    service,
                    plan,
                } => {
                    let result = ready!(Pin::new(future).poll(cx));
                    match (request.take(), service.take(), plan.take()) {
                        (Some(req), Some(service), Some(plan)) => {
                            decide(this.shared, result, req, service, plan)
                        }
                        // Only reachable if polled again after a panic.
                        _ => State::reject(ApiError::internal(), HeaderMap::new()),
                    }
                }
                StateProj::Call { future, admitted } => {
                    let result = ready!(future.poll(cx));
                    let admitted = admitted.take();
                    return Poll::Ready(match result {
                        Ok(response) => Ok(respond(admitted, response)),
                        Err(error) => {
                            failed(admitted, crate::budget::is_timeout_error(&error));
                            Err(error)
                        }
                    });
                }
                StateProj::Reject { error, headers } => {
                    let error = error.take().unwrap_or_else(ApiError::internal);
                    return Poll::Ready(Ok(rejection(error, std::mem::take(headers))));
                }
            };
            this.state.set(next);
        }
    }
}

/// The inner service's response to an admitted (or unlimited) request:
/// the limit headers written, the body observed for the permit's
/// settlement.
pub(crate) fn respond<B: Body<Data = Bytes>>(
    admitted: Option<Admitted>,
    mut response: Response<B>,
) -> Response<ResponseBody<B>> {
    match admitted {
        Some(Admitted {
            headers,
            permit: Some(permit),
            usage,
        }) => {
            headers.write(response.headers_mut());
            let timed_out = crate::budget::is_timeout_response(response.extensions());
            usage::observe(response, usage, move |report| {
                permit.finish(report, timed_out);
            })
            .map(super::body::observed)
        }
        Some(Admitted { headers, .. }) => {
            headers.write(response.headers_mut());
            response.map(super::body::passthrough)
        }
        None => response.map(super::body::passthrough),
    }
}

/// No response: counted as the charge policy says for an error of this
/// kind (a connect error: a refund of the whole reservation).
pub(crate) fn failed(admitted: Option<Admitted>, timed_out: bool) {
    if let Some(permit) = admitted.and_then(|a| a.permit) {
        permit.failed(timed_out);
    }
}

impl<S, B, St, K> fmt::Debug for ResponseFuture<S, B, St, K>
where
    S: Service<Request<B>>,
    St: RateLimitStore,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
