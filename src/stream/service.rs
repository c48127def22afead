use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::body::ResponseBody;
use super::future::ResponseFuture;
use super::layer::Config;
use crate::BoxError;

/// The service built by [`StreamErrorTrailerLayer`](super::StreamErrorTrailerLayer).
#[derive(Debug, Clone)]
pub struct StreamErrorTrailer<S> {
    inner: S,
    config: Config,
}

impl<S> StreamErrorTrailer<S> {
    pub(crate) fn from_parts(inner: S, config: Config) -> Self {
        StreamErrorTrailer { inner, config }
    }

    /// Wraps `inner` with the default configuration.
    pub fn new(inner: S) -> Self {
        use tower_layer::Layer;
        super::StreamErrorTrailerLayer::new().layer(inner)
    }

    crate::macros::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for StreamErrorTrailer<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let settings = self.config.settings(req.method(), req.uri(), req.headers());
        ResponseFuture::new(self.inner.call(req), settings)
    }
}
