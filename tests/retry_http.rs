//! `RetryLayer` over real HTTP clients against a loopback server: hyper-util's
//! legacy `Client` and, with the `reqwest` feature, reqwest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate::retry::{ExponentialBackoff, RetryInfo, RetryLayer, RetryPolicy, TransportFailure};
use tower::{Service, ServiceBuilder, ServiceExt};

/// Every test is bounded in time, whatever the network does.
const LIMIT: Duration = Duration::from_secs(20);

/// Calls made, and the `Idempotency-Key` of each.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicU32>, Arc<std::sync::Mutex<Vec<String>>>);

impl Calls {
    fn next(&self) -> u32 {
        self.0.fetch_add(1, Ordering::SeqCst)
    }
    fn count(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Behaviour picked by the `x-scenario` request header.
async fn upstream(State(calls): State<Calls>, headers: HeaderMap, body: Bytes) -> Response {
    let n = calls.next();
    if let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        calls.1.lock().unwrap().push(key.to_owned());
    }
    let scenario = headers
        .get("x-scenario")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let retry_count = headers
        .get("x-retry-count")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    match (scenario.as_str(), n) {
        ("flaky", 0 | 1) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after-ms", "20"), ("content-type", "application/json")],
            r#"{"error":{"message":"Overloaded, retry","type":"server_error","param":null,"code":null}}"#,
        )
            .into_response(),
        ("quota", _) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1"), ("content-type", "application/json")],
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        )
            .into_response(),
        ("sse", 0) => (
            [("content-type", "text/event-stream")],
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        )
            .into_response(),
        ("sse", _) => (
            [("content-type", "text/event-stream")],
            format!("data: {{\"retry\":\"{retry_count}\"}}\n\ndata: [DONE]\n\n"),
        )
            .into_response(),
        _ => (
            [("x-echo-retry-count", retry_count)],
            body, // echo: proves the replayed body arrived whole
        )
            .into_response(),
    }
}

async fn server() -> (SocketAddr, Calls) {
    let calls = Calls::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(upstream))
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, calls)
}

fn request(addr: SocketAddr, scenario: &str, body: &'static str) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-scenario", scenario)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn fast_layer() -> RetryLayer {
    RetryLayer::new().policy(RetryPolicy::new().backoff(
        ExponentialBackoff::new(Duration::from_millis(10), Duration::from_millis(20)).unwrap(),
    ))
}

const BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn hyper_util_client_is_retried_over_the_network() {
    tokio::time::timeout(LIMIT, async {
        let (addr, calls) = server().await;
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut service = ServiceBuilder::new().layer(fast_layer()).service(client);

        let response = service
            .ready()
            .await
            .unwrap()
            .call(request(addr, "flaky", BODY))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-echo-retry-count"], "2");
        let info = *response.extensions().get::<RetryInfo>().unwrap();
        assert_eq!(info.attempts, 3);
        assert_eq!(info.total_wait, Duration::from_millis(40));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], BODY.as_bytes());
        assert_eq!(calls.count(), 3);
        // One logical request, one idempotency key on its three attempts.
        let keys = calls.1.lock().unwrap().clone();
        assert_eq!(keys.len(), 3);
        assert!(
            keys.iter()
                .all(|k| *k == keys[0] && k.starts_with("tollgate-"))
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_quota_error_is_final_over_the_network() {
    tokio::time::timeout(LIMIT, async {
        let (addr, calls) = server().await;
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let service = ServiceBuilder::new().layer(fast_layer()).service(client);
        let response = service.oneshot(request(addr, "quota", BODY)).await.unwrap();
        assert_eq!(response.status(), 429);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(br#"{"error":{"message":"You exceeded your current quota""#));
        assert_eq!(calls.count(), 1);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_in_band_stream_error_is_retried_over_the_network() {
    tokio::time::timeout(LIMIT, async {
        let (addr, calls) = server().await;
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let service = ServiceBuilder::new().layer(fast_layer()).service(client);
        let response = service.oneshot(request(addr, "sse", BODY)).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"data: {\"retry\":\"1\"}\n\ndata: [DONE]\n\n");
        assert_eq!(calls.count(), 2);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn connection_refused_is_retried_then_returned() {
    tokio::time::timeout(LIMIT, async {
        // A port nobody listens on any more.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let service = ServiceBuilder::new().layer(fast_layer()).service(client);
        let started = std::time::Instant::now();
        let error = service.oneshot(request(addr, "", BODY)).await.unwrap_err();
        assert!(error.is_connect(), "{error:?}");
        // Told by hyper-util's error type, which the classifier reads.
        assert!(TransportFailure::new(Some(&error), false).is_connect());
        // Two backoffs of at most 10 and 20 ms.
        assert!(started.elapsed() < Duration::from_secs(5));
    })
    .await
    .unwrap();
}

#[cfg(feature = "reqwest")]
#[tokio::test]
async fn reqwest_is_retried_over_the_network() {
    use tollgate::client::ReqwestService;

    tokio::time::timeout(LIMIT, async {
        let (addr, calls) = server().await;
        let mut service = ServiceBuilder::new()
            .layer(fast_layer())
            .service(ReqwestService::new(reqwest::Client::new()));

        let response = service
            .ready()
            .await
            .unwrap()
            .call(request(addr, "flaky", BODY))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-echo-retry-count"], "2");
        assert_eq!(
            response.extensions().get::<RetryInfo>().unwrap().attempts,
            3
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], BODY.as_bytes());
        assert_eq!(calls.count(), 3);

        // Streams come through the adapter as streams, peeked and retried.
        let (addr, calls) = server().await;
        let response = service
            .ready()
            .await
            .unwrap()
            .call(request(addr, "sse", BODY))
            .await
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"data: {\"retry\":\"1\"}\n\ndata: [DONE]\n\n");
        assert_eq!(calls.count(), 2);

        // Connection errors are reqwest's own, returned as they are.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = listener.local_addr().unwrap();
        drop(listener);
        let error = service
            .ready()
            .await
            .unwrap()
            .call(request(closed, "", BODY))
            .await
            .unwrap_err();
        assert!(error.is_connect() || error.is_request(), "{error:?}");
    })
    .await
    .unwrap();
}

/// A server that reads each request's head and then hangs up without an
/// answer (a reset after the request was sent), or, with `hang`, holds the
/// connection open without ever answering. Counts the connections.
async fn broken_server(hang: bool) -> (SocketAddr, Arc<AtomicU32>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU32::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                if hang {
                    // Bounded, like every wait in these tests.
                    tokio::time::sleep(LIMIT).await;
                }
                drop(socket);
            });
        }
    });
    (addr, accepted)
}

fn request_to(addr: SocketAddr, path: &str, body: &'static str) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

const STREAMED: &str = r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#;

#[tokio::test]
async fn a_reset_after_sending_is_retried_only_when_replay_safe() {
    tokio::time::timeout(LIMIT, async {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let service = ServiceBuilder::new().layer(fast_layer()).service(client);

        // A non-streamed completion may have been done and billed: once.
        let (addr, accepted) = broken_server(false).await;
        let error = service
            .clone()
            .oneshot(request_to(addr, "/v1/chat/completions", BODY))
            .await
            .unwrap_err();
        assert!(!error.is_connect(), "{error:?}");
        let failure = TransportFailure::new(Some(&error), false);
        assert!(!failure.is_connect() && !failure.is_timeout(), "{error:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        // A stream broke before its first byte, embeddings are cheap: again.
        for (path, body) in [
            ("/v1/chat/completions", STREAMED),
            ("/v1/embeddings", r#"{"model":"e","input":"x"}"#),
        ] {
            let (addr, accepted) = broken_server(false).await;
            let error = service
                .clone()
                .oneshot(request_to(addr, path, body))
                .await
                .unwrap_err();
            assert!(!error.is_connect(), "{error:?}");
            assert_eq!(accepted.load(Ordering::SeqCst), 3, "{path}");
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_attempt_that_hangs_times_out() {
    tokio::time::timeout(LIMIT, async {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let layer = fast_layer().policy(
            RetryPolicy::new()
                .backoff(
                    ExponentialBackoff::new(Duration::from_millis(10), Duration::from_millis(20))
                        .unwrap(),
                )
                .attempt_timeout(Duration::from_millis(300)),
        );
        let service = ServiceBuilder::new().layer(layer).service(client);

        let (addr, accepted) = broken_server(true).await;
        let started = std::time::Instant::now();
        let response = service
            .clone()
            .oneshot(request_to(addr, "/v1/chat/completions", BODY))
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(response.status(), 504);
        assert_eq!(response.headers()["x-should-retry"], "false");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        let (addr, accepted) = broken_server(true).await;
        let response = service
            .clone()
            .oneshot(request_to(addr, "/v1/embeddings", r#"{"input":"x"}"#))
            .await
            .unwrap();
        assert_eq!(response.status(), 504);
        let info = *response.extensions().get::<RetryInfo>().unwrap();
        assert_eq!((info.attempts, info.exhausted), (3, true));
        // Each timed-out attempt's connection was dropped, not reused.
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    })
    .await
    .unwrap();
}

#[cfg(feature = "reqwest")]
#[tokio::test]
async fn reqwest_errors_are_classified_by_type() {
    use tollgate::client::ReqwestService;

    tokio::time::timeout(LIMIT, async {
        let service = ServiceBuilder::new()
            .layer(fast_layer())
            .service(ReqwestService::new(reqwest::Client::new()));

        // Refused: nothing was sent, so every attempt is made.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = listener.local_addr().unwrap();
        drop(listener);
        let error = service
            .clone()
            .oneshot(request_to(closed, "/v1/chat/completions", BODY))
            .await
            .unwrap_err();
        assert!(error.is_connect(), "{error:?}");

        // Reset after sending: once for a completion, thrice for a stream.
        let (addr, accepted) = broken_server(false).await;
        let error = service
            .clone()
            .oneshot(request_to(addr, "/v1/chat/completions", BODY))
            .await
            .unwrap_err();
        assert!(!error.is_connect(), "{error:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let (addr, accepted) = broken_server(false).await;
        service
            .clone()
            .oneshot(request_to(addr, "/v1/chat/completions", STREAMED))
            .await
            .unwrap_err();
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    })
    .await
    .unwrap();
}
