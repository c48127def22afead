//! `tollgate.demo.Echo/Say`: a one-method gRPC service and its client,
//! written by hand so that no `protoc` and no `build.rs` are needed.
//!
//! This is the part `tonic-build` would generate from
//!
//! ```proto
//! package tollgate.demo;
//! service Echo { rpc Say (Text) returns (Text); }
//! ```
//!
//! except that the messages are plain UTF-8 strings instead of protobuf
//! (the [`Utf8`] codec). Nothing here knows about tollgate: the layers wrap
//! [`Echo`] from the outside, and the method reads the caller that
//! `AuthLayer` put in the request's extensions. With a real `.proto`, use the
//! generated `EchoServer` / `EchoClient` instead; the tollgate stack stays
//! the same.
//!
//! Shared by `examples/tonic_server.rs` and `tests/tonic_example.rs`.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut};
use tollgate::Principal;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Service, http};
use tonic::metadata::MetadataValue;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// The full name of the service, as a `.proto` would declare it.
pub const SERVICE: &str = "tollgate.demo.Echo";

/// The HTTP/2 path of its one method.
pub const SAY: &str = "/tollgate.demo.Echo/Say";

/// Messages are UTF-8 strings, sent as their bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Utf8;

impl Codec for Utf8 {
    type Encode = String;
    type Decode = String;
    type Encoder = Utf8;
    type Decoder = Utf8;

    fn encoder(&mut self) -> Utf8 {
        Utf8
    }

    fn decoder(&mut self) -> Utf8 {
        Utf8
    }
}

impl Encoder for Utf8 {
    type Item = String;
    type Error = Status;

    fn encode(&mut self, item: String, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(item.as_bytes());
        Ok(())
    }
}

impl Decoder for Utf8 {
    type Item = String;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<String>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        String::from_utf8(bytes.into())
            .map(Some)
            .map_err(|_| Status::invalid_argument("the message is not UTF-8"))
    }
}

/// The server side: `Say` answers `"<caller> said: <text>"`, where the
/// caller is the key id of the `Principal` that `AuthLayer` found.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl NamedService for Echo {
    const NAME: &'static str = SERVICE;
}

/// The method itself, as a tonic `UnaryService` would see it.
async fn say(request: Request<String>) -> Result<Response<String>, Status> {
    // Without AuthLayer in front there is no Principal: refuse rather than
    // guess, the way a method that bills someone must.
    let caller = request
        .extensions()
        .get::<Principal>()
        .map(|p| p.key_id().to_owned())
        .ok_or_else(|| Status::unauthenticated("no caller: is AuthLayer in front?"))?;
    Ok(Response::new(format!(
        "{caller} said: {}",
        request.into_inner()
    )))
}

impl<B> Service<http::Request<B>> for Echo
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        Box::pin(async move {
            if req.uri().path() != SAY {
                return Ok(Status::unimplemented(req.uri().path().to_owned()).into_http());
            }
            let method = tower::service_fn(say);
            Ok(tonic::server::Grpc::new(Utf8).unary(method, req).await)
        })
    }
}

/// The client side: calls `Say` over `channel`, with `key` (if any) sent
/// the way the OpenAI SDKs send it, as `authorization: Bearer <key>`. The
/// response's metadata holds the server's headers (`x-ratelimit-*`).
pub async fn call_say(
    channel: Channel,
    key: Option<&str>,
    text: &str,
) -> Result<Response<String>, Status> {
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(format!("connecting: {e}")))?;
    let mut request = Request::new(text.to_owned());
    if let Some(key) = key {
        let value: MetadataValue<_> = format!("Bearer {key}")
            .parse()
            .map_err(|_| Status::invalid_argument("the key is not a valid header value"))?;
        request.metadata_mut().insert("authorization", value);
    }
    let path = http::uri::PathAndQuery::from_static(SAY);
    client.unary(request, path, Utf8).await
}
