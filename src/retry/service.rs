use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::body::ResponseBody;
use super::future::ResponseFuture;
use super::layer::Shared;
use crate::BoxError;
use crate::request::FromBytes;

/// The service built by [`RetryLayer`](super::RetryLayer).
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Retry<S> {
    pub(crate) fn from_parts(inner: S, shared: Arc<Shared>) -> Self {
        Retry { inner, shared }
    }

    /// Wraps `inner` with the default configuration.
    pub fn new(inner: S) -> Self {
        use tower_layer::Layer;
        super::RetryLayer::new().layer(inner)
    }

    crate::macros::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Retry<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    S::Error: 'static,
    ReqBody: Body<Data = Bytes> + FromBytes,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The ready service goes with the request (it makes the first
        // attempt, and the retries).
        let inner = crate::macros::take_ready(&mut self.inner);
        ResponseFuture::new(inner, self.shared.clone(), req)
    }
}
