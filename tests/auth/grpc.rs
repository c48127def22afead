//! AuthLayer in a tonic server, inside the envelope: refusals reach a tonic
//! client as `UNAUTHENTICATED` / `PERMISSION_DENIED`. The service is written
//! by hand with a tiny UTF-8 codec, so no protoc is needed.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tollgate::Principal;
use tollgate::auth::{AuthLayer, KeyHash, KeyRecord};
use tollgate::envelope::ErrorEnvelopeLayer;
use tollgate::store::memory::MemoryKeyStore;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use super::SECRET;

// The same hand-written codec the tonic example uses.
#[allow(dead_code)]
#[path = "../../examples/support/echo_grpc.rs"]
mod echo_grpc;
use echo_grpc::Utf8;

/// `test.Whoami/Call`: answers "<caller>: <message>".
#[derive(Debug, Clone)]
struct Whoami;

impl tonic::server::NamedService for Whoami {
    const NAME: &'static str = "test.Whoami";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for Whoami {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            if req.uri().path() != "/test.Whoami/Call" {
                return Ok(Status::unimplemented("").into_http());
            }
            let method = tower::service_fn(|req: tonic::Request<String>| async move {
                let caller = req
                    .extensions()
                    .get::<Principal>()
                    .map_or("anonymous".to_owned(), |p| p.key_id().to_owned());
                Ok::<_, Status>(tonic::Response::new(format!(
                    "{caller}: {}",
                    req.into_inner()
                )))
            });
            Ok(tonic::server::Grpc::new(Utf8).unary(method, req).await)
        })
    }
}

async fn call(
    addr: std::net::SocketAddr,
    metadata: Option<(&'static str, String)>,
) -> Result<String, Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let mut request = tonic::Request::new("ping".to_owned());
    if let Some((name, value)) = metadata {
        let value: MetadataValue<_> = value.parse().unwrap();
        request.metadata_mut().insert(name, value);
    }
    let path = http::uri::PathAndQuery::from_static("/test.Whoami/Call");
    let response = client.unary(request, path, Utf8).await?;
    Ok(response.into_inner())
}

#[tokio::test]
async fn tonic_server_gets_grpc_status_codes() {
    let store = MemoryKeyStore::from_records([
        KeyRecord::new("alice", KeyHash::of(SECRET)),
        KeyRecord::new("blocked", KeyHash::of("sk-blocked")).with_disabled(true),
        KeyRecord::new("gone", KeyHash::of("sk-gone")).with_revoked(true),
    ])
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .layer(ErrorEnvelopeLayer::new())
        .layer(AuthLayer::new(store))
        .add_service(Whoami)
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    let server = tokio::spawn(server);

    let run = async {
        let ok = call(addr, Some(("authorization", format!("Bearer {SECRET}")))).await;
        assert_eq!(ok.unwrap(), "alice: ping");
        let ok = call(addr, Some(("x-api-key", SECRET.to_owned()))).await;
        assert_eq!(ok.unwrap(), "alice: ping");

        let missing = call(addr, None).await.unwrap_err();
        assert_eq!(missing.code(), Code::Unauthenticated);
        assert!(
            missing.message().contains("API key"),
            "{}",
            missing.message()
        );

        let wrong = call(addr, Some(("authorization", "Bearer sk-wrong".into()))).await;
        assert_eq!(wrong.unwrap_err().code(), Code::Unauthenticated);

        let revoked = call(addr, Some(("x-api-key", "sk-gone".into())))
            .await
            .unwrap_err();
        assert_eq!(revoked.code(), Code::Unauthenticated);
        assert!(
            revoked.message().contains("revoked"),
            "{}",
            revoked.message()
        );

        let blocked = call(addr, Some(("x-api-key", "sk-blocked".into()))).await;
        let blocked = blocked.unwrap_err();
        assert_eq!(blocked.code(), Code::PermissionDenied);
        assert!(!blocked.message().contains("sk-blocked"));
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap();
    server.abort();
}
