//! A layered service boxed to one type, so that stacks built from different
//! layers (the joint admission, the two layers stacked) can be compared
//! side by side. Shared by `tests/admission.rs` and
//! `tests/redis_admission.rs`.
#![allow(dead_code)]

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower::util::BoxCloneService;

/// Every stack's response body.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Every stack, boxed.
pub type Svc = BoxCloneService<Request<Full<Bytes>>, Response<Body>, Infallible>;

/// `service` with its response body boxed.
pub fn boxed<S, B>(service: S) -> Svc
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes, Error = Infallible> + Send + 'static,
{
    BoxCloneService::new(service.map_response(|r: Response<B>| r.map(|b| b.boxed_unsync())))
}
