//! `reqwest::Client` as a tower `Service`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::MapErr;
use http_body_util::{BodyExt, Full};
use tower_service::Service;

use crate::BoxError;

/// Makes a `reqwest::Client` a
/// `Service<http::Request<Full<Bytes>>, Response = http::Response<ReqwestBody>>`.
///
/// Requests keep their method, URI, version, headers and extensions; the
/// response's status, headers and extensions are kept and its body streams
/// as it arrives. The error is `reqwest::Error` (an invalid URI, a refused
/// connection, a timeout configured on the client).
///
/// Always ready: reqwest queues requests in its own pool.
#[derive(Clone, Default)]
pub struct ReqwestService {
    client: reqwest::Client,
}

impl ReqwestService {
    /// Wraps `client`.
    pub fn new(client: reqwest::Client) -> Self {
        ReqwestService { client }
    }

    /// The wrapped client.
    pub fn get_ref(&self) -> &reqwest::Client {
        &self.client
    }

    /// Unwraps the client.
    pub fn into_inner(self) -> reqwest::Client {
        self.client
    }
}

impl fmt::Debug for ReqwestService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReqwestService").finish_non_exhaustive()
    }
}

impl From<reqwest::Client> for ReqwestService {
    fn from(client: reqwest::Client) -> Self {
        ReqwestService::new(client)
    }
}

impl Service<http::Request<Full<Bytes>>> for ReqwestService {
    type Response = http::Response<ReqwestBody>;
    type Error = reqwest::Error;
    type Future = ReqwestFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Full<Bytes>>) -> Self::Future {
        let client = self.client.clone();
        ReqwestFuture {
            inner: Box::pin(async move {
                let (parts, body) = req.into_parts();
                // A `Full` yields its single chunk at once.
                let bytes = match body.collect().await {
                    Ok(collected) => collected.to_bytes(),
                    Err(never) => match never {},
                };
                let req = http::Request::from_parts(parts, reqwest::Body::from(bytes));
                let req = reqwest::Request::try_from(req)?;
                let response = client.execute(req).await?;
                let response: http::Response<reqwest::Body> = response.into();
                Ok(response.map(|body| body.map_err(BoxError::from as fn(_) -> _)))
            }),
        }
    }
}

type BoxFuture = Pin<
    Box<dyn Future<Output = Result<http::Response<ReqwestBody>, reqwest::Error>> + Send + 'static>,
>;

/// The response future of [`ReqwestService`].
pub struct ReqwestFuture {
    inner: BoxFuture,
}

impl Future for ReqwestFuture {
    type Output = Result<http::Response<ReqwestBody>, reqwest::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for ReqwestFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReqwestFuture")
    }
}

/// A reqwest response body, streamed frame by frame; its errors are boxed.
pub type ReqwestBody = MapErr<reqwest::Body, fn(reqwest::Error) -> BoxError>;
