//! `examples/tonic_server.rs` over real connections on 127.0.0.1: the
//! example's own stack, keys and demo, so the example cannot rot.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;

#[allow(dead_code)]
#[path = "../examples/tonic_server.rs"]
mod example;

use example::echo_grpc::call_say;
use example::{ALICE_KEY, BOB_KEY, REQUESTS_PER_MINUTE};

/// Every test finishes within this, or fails.
const BOUND: Duration = Duration::from_secs(30);

/// The example's server on 127.0.0.1:0; dropping the sender stops it.
async fn start() -> (
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(example::serve(listener, example::demo_keys(), async {
        let _ = stopped.await;
    }));
    (addr, stop, server)
}

#[tokio::test]
async fn no_key_then_ok_then_resource_exhausted() {
    let (addr, stop, server) = start().await;
    let run = async {
        let channel = example::connect(addr).await.unwrap();

        let missing = call_say(channel.clone(), None, "hi").await.unwrap_err();
        assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
        assert!(missing.message().contains("API key"), "{missing:?}");

        let wrong = call_say(channel.clone(), Some("sk-tollgate-demo-eve"), "hi").await;
        let wrong = wrong.unwrap_err();
        assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
        assert!(!wrong.message().contains("sk-tollgate-demo-eve"));

        for n in 1..=REQUESTS_PER_MINUTE {
            let reply = call_say(channel.clone(), Some(ALICE_KEY), &format!("hi {n}"))
                .await
                .unwrap();
            // The rate-limit headers reach the client as response metadata.
            let left = reply.metadata().get("x-ratelimit-remaining-requests");
            let left = left.unwrap().to_str().unwrap().parse::<u64>().unwrap();
            assert_eq!(left, REQUESTS_PER_MINUTE - n);
            assert_eq!(reply.into_inner(), format!("alice said: hi {n}"));
        }

        let over = call_say(channel.clone(), Some(ALICE_KEY), "one more")
            .await
            .unwrap_err();
        assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
        assert!(over.message().contains("5 requests per minute"), "{over:?}");
        // The refill is one request per 12 s: a client is told when to retry.
        let retry_after: u64 = over
            .metadata()
            .get("retry-after")
            .expect("retry-after metadata")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=12).contains(&retry_after), "{retry_after}");

        // Limits are per key: Bob still has all of his.
        let bob = call_say(channel.clone(), Some(BOB_KEY), "hi").await;
        assert_eq!(bob.unwrap().into_inner(), "bob said: hi");
    };
    tokio::time::timeout(BOUND, run).await.unwrap();
    stop.send(()).unwrap();
    tokio::time::timeout(BOUND, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_demo_sees_every_expected_outcome() {
    let (addr, stop, server) = start().await;
    let outcome = tokio::time::timeout(BOUND, example::demo(addr))
        .await
        .unwrap();
    if let Err(e) = outcome {
        panic!("{e}");
    }
    // A second run meets Alice's spent limit: the demo notices.
    let again = tokio::time::timeout(BOUND, example::demo(addr))
        .await
        .unwrap();
    assert!(again.unwrap_err().to_string().contains("alice, call 1"));
    stop.send(()).unwrap();
    tokio::time::timeout(BOUND, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn unknown_methods_are_unimplemented_after_auth() {
    let (addr, stop, server) = start().await;
    let run = async {
        let channel = example::connect(addr).await.unwrap();
        let mut client = tonic::client::Grpc::new(channel);
        client.ready().await.unwrap();
        let mut request = tonic::Request::new("hi".to_owned());
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {BOB_KEY}").parse().unwrap(),
        );
        let path = http::uri::PathAndQuery::from_static("/tollgate.demo.Echo/Shout");
        let status = client
            .unary::<_, String, _>(request, path, example::echo_grpc::Utf8)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    };
    tokio::time::timeout(BOUND, run).await.unwrap();
    stop.send(()).unwrap();
    tokio::time::timeout(BOUND, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
