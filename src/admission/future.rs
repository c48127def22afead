//! The response future of [`Admission`](super::Admission).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::service::{Decided, DecidedFuture, ResponseBody, refusal};
use crate::ApiError;
use crate::budget::Ledger;
use crate::budget::future as budget;
use crate::budget::service::Admitted as BudgetAdmitted;
use crate::rate_limit::future as rate_limit;
use crate::rate_limit::service::rejection;

pin_project! {
    /// Decides on the request, then calls the inner service and settles its
    /// response as the rate limit and the budget each would, or resolves
    /// to the refusal of whichever refused it.
    pub struct ResponseFuture<S, B, L>
    where
        S: Service<Request<B>>,
        L: Ledger,
    {
        #[pin]
        state: State<S, B, L>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, L>
    where
        S: Service<Request<B>>,
        L: Ledger,
    {
        Deciding {
            future: DecidedFuture<B, L>,
            service: Option<S>,
        },
        Calling {
            #[pin]
            future: S::Future,
            rate_limit: Option<rate_limit::Admitted>,
            budget: Option<BudgetAdmitted<L>>,
        },
        Refused {
            decided: Option<Decided<B, L>>,
        },
    }
}

impl<S, B, L> ResponseFuture<S, B, L>
where
    S: Service<Request<B>>,
    L: Ledger,
{
    pub(crate) fn deciding(future: DecidedFuture<B, L>, service: S) -> Self {
        ResponseFuture {
            state: State::Deciding {
                future,
                service: Some(service),
            },
        }
    }

    pub(crate) fn decided(decided: Decided<B, L>, service: S) -> Self {
        ResponseFuture {
            state: State::next(decided, service),
        }
    }
}

impl<S, B, L> State<S, B, L>
where
    S: Service<Request<B>>,
    L: Ledger,
{
    fn next(decided: Decided<B, L>, mut service: S) -> Self {
        match decided {
            Decided::Call(req, rate_limit, mut budget) => {
                budget::calling(&mut budget);
                State::Calling {
                    future: service.call(req),
                    rate_limit,
                    budget: Some(budget),
                }
            }
            refused => State::Refused {
                decided: Some(refused),
            },
        }
    }
}

impl<S, B, L, ResBody> Future for ResponseFuture<S, B, L>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: 'static,
    L: Ledger,
    ResBody: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Deciding { future, service } => {
                    let decided = ready!(future.as_mut().poll(cx));
                    match service.take() {
                        Some(service) => State::next(decided, service),
                        // Polled after completion: a caller bug, answered
                        // without panicking.
                        None => return Poll::Ready(Ok(internal())),
                    }
                }
                StateProj::Calling {
                    future,
                    rate_limit,
                    budget,
                } => {
                    let result = ready!(future.poll(cx));
                    let (rate_limit, budget) = (rate_limit.take(), budget.take());
                    // The budget's step first, then the rate limit's: the
                    // order of the two layers stacked.
                    return Poll::Ready(match result {
                        Ok(response) => Ok(rate_limit::respond(
                            rate_limit,
                            budget::respond(budget, response),
                        )),
                        Err(error) => {
                            let timed_out = crate::budget::is_timeout_error(&error);
                            budget::failed(budget, timed_out);
                            rate_limit::failed(rate_limit, timed_out);
                            Err(error)
                        }
                    });
                }
                StateProj::Refused { decided } => {
                    let response = decided.take().and_then(refusal);
                    return Poll::Ready(Ok(response.unwrap_or_else(internal)));
                }
            };
            this.state.set(next);
        }
    }
}

fn internal<B>() -> Response<ResponseBody<B>> {
    rejection(ApiError::internal(), http::HeaderMap::new())
}

impl<S, B, L> fmt::Debug for ResponseFuture<S, B, L>
where
    S: Service<Request<B>>,
    L: Ledger,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
