//! The response future of [`Budget`](super::Budget).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::Ledger;
use super::service::{AdmissionFuture, Admitted, Rejected};
use super::usage::{self, UsageBody};
use crate::body::ResponseBody;

pin_project! {
    /// Asks the ledger, then calls the inner service and meters its
    /// response, or resolves to the budget's refusal.
    pub struct ResponseFuture<S, ReqBody, L>
    where
        S: Service<Request<ReqBody>>,
        L: Ledger,
    {
        #[pin]
        state: State<S, ReqBody, L>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, L>
    where
        S: Service<Request<ReqBody>>,
        L: Ledger,
    {
        Admitting {
            admission: AdmissionFuture<ReqBody, L>,
            inner: Option<S>,
        },
        Calling {
            #[pin]
            future: S::Future,
            admitted: Option<Admitted<L>>,
        },
        Rejected {
            rejected: Option<Rejected>,
        },
    }
}

impl<S, ReqBody, L> ResponseFuture<S, ReqBody, L>
where
    S: Service<Request<ReqBody>>,
    L: Ledger,
{
    pub(crate) fn new(admission: AdmissionFuture<ReqBody, L>, inner: S) -> Self {
        ResponseFuture {
            state: State::Admitting {
                admission,
                inner: Some(inner),
            },
        }
    }

    pub(crate) fn calling(future: S::Future, mut admitted: Admitted<L>) -> Self {
        calling(&mut admitted);
        ResponseFuture {
            state: State::Calling {
                future,
                admitted: Some(admitted),
            },
        }
    }

    pub(crate) fn rejected(rejected: Rejected) -> Self {
        ResponseFuture {
            state: State::Rejected {
                rejected: Some(rejected),
            },
        }
    }
}

/// The inner service's response to an admitted request: the budget
/// headers written, the body metered for the settlement.
pub(crate) fn respond<B: Body<Data = Bytes>, L: Ledger>(
    admitted: Option<Admitted<L>>,
    mut response: Response<B>,
) -> Response<ResponseBody<UsageBody<B>>> {
    let Some(admitted) = admitted else {
        return crate::body::reject(crate::ApiError::internal());
    };
    if let Some(headers) = admitted.headers {
        headers.apply(response.headers_mut());
    }
    let timed_out = super::is_timeout_response(response.extensions());
    let response = match admitted.settler {
        Some(settler) => usage::observe(response, admitted.options, move |report| {
            settler.finish(report, timed_out)
        }),
        None => usage::observe(response, admitted.options, |_| {}),
    };
    response.map(ResponseBody::inner)
}

/// No response: charged as the policy says for an error of this kind, at
/// once.
pub(crate) fn failed<L: Ledger>(admitted: Option<Admitted<L>>, timed_out: bool) {
    if let Some(settler) = admitted.and_then(|a| a.settler) {
        settler.failed(timed_out);
    }
}

/// The inner service is being called for an admitted request.
pub(crate) fn calling<L: Ledger>(admitted: &mut Admitted<L>) {
    if let Some(settler) = &mut admitted.settler {
        settler.called();
    }
}

/// The response for a refused request: the error, with the budget's headers.
pub(crate) fn rejection<B>(rejected: Rejected) -> Response<ResponseBody<B>> {
    let mut response = crate::body::reject(rejected.error);
    if let Some(headers) = rejected.headers {
        headers.apply(response.headers_mut());
    }
    response
}

impl<S, ReqBody, ResBody, L> Future for ResponseFuture<S, ReqBody, L>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: 'static,
    ResBody: Body<Data = Bytes>,
    L: Ledger,
{
    type Output = Result<Response<ResponseBody<UsageBody<ResBody>>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Admitting { admission, inner } => {
                    let (req, mut admitted) = match ready!(admission.as_mut().poll(cx)) {
                        Ok(admitted) => admitted,
                        Err(rejected) => return Poll::Ready(Ok(rejection(rejected))),
                    };
                    let Some(mut service) = inner.take() else {
                        // Polled after completion: a caller bug, answered
                        // without panicking.
                        return Poll::Ready(Ok(crate::body::reject(crate::ApiError::internal())));
                    };
                    let future = service.call(req);
                    calling(&mut admitted);
                    this.state.set(State::Calling {
                        future,
                        admitted: Some(admitted),
                    });
                }
                StateProj::Calling { future, admitted } => {
                    let result = ready!(future.poll(cx));
                    let admitted = admitted.take();
                    return Poll::Ready(match result {
                        Ok(response) => Ok(respond(admitted, response)),
                        Err(error) => {
                            failed(admitted, super::is_timeout_error(&error));
                            Err(error)
                        }
                    });
                }
                StateProj::Rejected { rejected } => {
                    return Poll::Ready(Ok(match rejected.take() {
                        Some(rejected) => rejection(rejected),
                        None => crate::body::reject(crate::ApiError::internal()),
                    }));
                }
            }
        }
    }
}
