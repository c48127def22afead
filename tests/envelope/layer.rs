//! `ErrorEnvelopeLayer` in front of the failures a gateway meets.
//!
//! Over 600 lines: one file for the layer's failure cases, each test with its
//! own stack, reading alone.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use super::*;
use http::Request;
use http_body::Frame;
use tollgate::BoxError;
use tollgate::body::ResponseBody;
use tollgate::envelope::ErrorEnvelopeLayer;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

type Req = Request<Full<Bytes>>;

fn request() -> Req {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

fn respond(status: u16, headers: &[(&str, &str)], body: &'static str) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

async fn collect<B>(response: Response<B>) -> (http::response::Parts, serde_json::Value)
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (parts, value)
}

/// Runs one request through `ErrorEnvelopeLayer` → a service answering `inner`.
async fn through(
    layer: ErrorEnvelopeLayer,
    req: Req,
    inner: Result<Response<Full<Bytes>>, BoxError>,
) -> (http::response::Parts, serde_json::Value) {
    let inner = Mutex::new(Some(inner));
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(move |_req: Req| {
            let answer = inner.lock().unwrap().take().unwrap();
            async move { answer }
        }));
    collect(service.oneshot(req).await.unwrap()).await
}

fn openai(
    message: &str,
    error_type: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> serde_json::Value {
    serde_json::json!({"error": {"message": message, "type": error_type, "param": param, "code": code}})
}

fn assert_error_headers(parts: &http::response::Parts, should_retry: &str) {
    assert_eq!(parts.headers["content-type"], "application/json");
    assert_eq!(parts.headers["x-should-retry"], should_retry);
    assert!(
        parts.headers["x-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
    assert!(parts.extensions.get::<ApiError>().is_some());
}

#[tokio::test]
async fn inner_api_error_renders_as_itself() {
    let error = ApiError::rate_limited()
        .with_message("Rate limit exceeded: 60 requests per minute")
        .with_retry_after(Duration::from_millis(1500));
    let (parts, body) = through(ErrorEnvelopeLayer::new(), request(), Err(error.into())).await;
    assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
    assert_error_headers(&parts, "true");
    assert_eq!(parts.headers["retry-after"], "2");
    assert_eq!(parts.headers["retry-after-ms"], "1500");
    assert_eq!(
        body,
        openai(
            "Rate limit exceeded: 60 requests per minute",
            "rate_limit_error",
            None,
            Some("rate_limit_exceeded")
        )
    );
}

/// A `tracing` writer into memory, to see what the layer logs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    (captured, guard)
}

#[tokio::test(flavor = "current_thread")]
async fn other_inner_errors_are_logged_not_sent() {
    let (logs, _guard) = capture_logs();
    let secret = "connection to postgres://admin:hunter2@db failed";
    let error: BoxError = io::Error::other(secret).into();
    let (parts, body) = through(ErrorEnvelopeLayer::new(), request(), Err(error)).await;
    assert_eq!(parts.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_error_headers(&parts, "true");
    assert_eq!(
        body,
        openai(
            ErrorKind::Internal.default_message(),
            "server_error",
            None,
            Some("internal_error")
        )
    );
    assert!(!body.to_string().contains("hunter2"));
    assert!(!format!("{:?}", parts.headers).contains("hunter2"));
    let logs = logs.text();
    assert!(logs.contains("inner service failed"), "{logs}");
    assert!(logs.contains(secret), "{logs}");
}

/// An application error wrapping another, as `thiserror`'s `#[source]` does.
#[derive(Debug)]
struct Wrapped(BoxError);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("proxy failed")
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

#[tokio::test(flavor = "current_thread")]
async fn known_errors_are_found_along_the_source_chain() {
    let cases: [(BoxError, u16); 3] = [
        (
            Box::new(Wrapped(Box::new(tower::timeout::error::Elapsed::new()))),
            504,
        ),
        (
            Box::new(Wrapped(
                Box::new(tower::load_shed::error::Overloaded::new()),
            )),
            503,
        ),
        (Box::new(Wrapped(Box::new(ApiError::not_found()))), 404),
    ];
    for (error, status) in cases {
        let (parts, _) = through(ErrorEnvelopeLayer::new(), request(), Err(error)).await;
        assert_eq!(parts.status.as_u16(), status);
    }
    // An unknown chain is logged whole, and answered with a generic 500.
    let (logs, _guard) = capture_logs();
    let error: BoxError = Box::new(Wrapped(io::Error::other("dns lookup failed").into()));
    let (parts, body) = through(ErrorEnvelopeLayer::new(), request(), Err(error)).await;
    assert_eq!(parts.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!body.to_string().contains("dns"));
    assert!(
        logs.text().contains("proxy failed: dns lookup failed"),
        "{}",
        logs.text()
    );
}

#[tokio::test(start_paused = true)]
async fn timeout_is_504() {
    let service = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new())
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(30)))
        .service(service_fn(|_req: Req| async {
            tokio::time::sleep(Duration::from_secs(600)).await;
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        }));
    let started = tokio::time::Instant::now();
    let (parts, body) = collect(service.oneshot(request()).await.unwrap()).await;
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    assert_eq!(parts.status, StatusCode::GATEWAY_TIMEOUT);
    assert_error_headers(&parts, "true");
    assert_eq!(
        body,
        openai(
            ErrorKind::Timeout.default_message(),
            "timeout_error",
            None,
            Some("timeout")
        )
    );
}

#[tokio::test]
async fn load_shed_overload_is_503() {
    let (mock, mut handle) = tower_test::mock::pair::<Req, Response<Full<Bytes>>>();
    handle.allow(0);
    let mut service = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new())
        .load_shed()
        .service(mock);
    let response = service
        .ready()
        .await
        .unwrap()
        .call(request())
        .await
        .unwrap();
    let (parts, body) = collect(response).await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_error_headers(&parts, "true");
    assert_eq!(body["error"]["code"], "service_unavailable");
}

/// A service whose readiness fails and which must then not be called.
#[derive(Clone)]
struct Broken;

impl Service<Req> for Broken {
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Err(ApiError::unavailable()
            .with_message("store is down")
            .into()))
    }

    fn call(&mut self, _: Req) -> Self::Future {
        panic!("called after poll_ready failed");
    }
}

#[tokio::test]
async fn readiness_failure_is_answered_without_calling_inner() {
    let mut service = ErrorEnvelopeLayer::new().layer_service(Broken);
    let response = service
        .ready()
        .await
        .unwrap()
        .call(request())
        .await
        .unwrap();
    let (parts, body) = collect(response).await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["message"], "store is down");
}

trait LayerService {
    fn layer_service<S>(self, inner: S) -> tollgate::envelope::ErrorEnvelope<S>;
}

impl LayerService for ErrorEnvelopeLayer {
    fn layer_service<S>(self, inner: S) -> tollgate::envelope::ErrorEnvelope<S> {
        tower::Layer::layer(&self, inner)
    }
}

#[tokio::test]
async fn plain_text_413_from_tower_http_limit_inside_axum() {
    use axum::routing::post;
    let router = axum::Router::new()
        .route(
            "/v1/chat/completions",
            post(|body: Bytes| async move { body }),
        )
        .layer(tower_http::limit::RequestBodyLimitLayer::new(8));
    let service = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new())
        .service(router);

    // Refused on content-length, and while streaming an unsized body.
    let sized = Request::post("/v1/chat/completions")
        .header("content-length", "32")
        .body(Full::new(Bytes::from(vec![b'a'; 32])))
        .unwrap();
    let (parts, body) = collect(service.clone().oneshot(sized).await.unwrap()).await;
    assert_eq!(parts.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error_headers(&parts, "false");
    assert_eq!(
        body,
        openai(
            "length limit exceeded",
            "invalid_request_error",
            None,
            Some("payload_too_large")
        )
    );

    let streamed = Request::post("/v1/chat/completions")
        .body(LazyBody::new(vec![Bytes::from(vec![b'a'; 32])]))
        .unwrap();
    let response = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new())
        .service(
            axum::Router::new()
                .route(
                    "/v1/chat/completions",
                    post(|body: Bytes| async move { body }),
                )
                .layer(tower_http::limit::RequestBodyLimitLayer::new(8)),
        )
        .oneshot(streamed)
        .await
        .unwrap();
    let (parts, body) = collect(response).await;
    assert_eq!(parts.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "payload_too_large");

    // A small body passes through untouched.
    let ok = Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from_static(b"1234")))
        .unwrap();
    let response = service.oneshot(ok).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&bytes[..], b"1234");
}

#[tokio::test]
async fn empty_401() {
    let (parts, body) = through(
        ErrorEnvelopeLayer::new(),
        request(),
        Ok(respond(401, &[], "")),
    )
    .await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    assert_error_headers(&parts, "false");
    assert_eq!(
        body,
        openai(
            ErrorKind::Authentication.default_message(),
            "invalid_request_error",
            None,
            Some("invalid_api_key")
        )
    );
}

#[tokio::test]
async fn upstream_html_502() {
    let html = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body><center><h1>502 Bad Gateway</h1></center><hr><center>cloudflare</center></body>\r\n</html>\r\n";
    let upstream = respond(
        502,
        &[
            ("content-type", "text/html"),
            ("content-length", "150"),
            ("cf-ray", "8a1b"),
        ],
        html,
    );
    let (parts, body) = through(ErrorEnvelopeLayer::new(), request(), Ok(upstream)).await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    assert_error_headers(&parts, "true");
    assert_eq!(parts.headers["cf-ray"], "8a1b");
    assert!(!parts.headers.contains_key("content-length"));
    assert_eq!(
        body,
        openai("502 Bad Gateway", "server_error", None, Some("bad_gateway"))
    );
}

#[tokio::test]
async fn another_vendors_json_is_rerendered() {
    let anthropic = respond(
        529,
        &[
            ("content-type", "application/json"),
            ("x-request-id", "req_upstream"),
        ],
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_018EeWyXxfu5pfWkrYcMdjWG"}"#,
    );
    let req = Request::post("/v1/chat/completions")
        .header("x-request-id", "req_client")
        .body(Full::default())
        .unwrap();
    let (parts, body) = through(ErrorEnvelopeLayer::new(), req, Ok(anthropic)).await;
    assert_eq!(parts.status.as_u16(), 529);
    assert_eq!(parts.headers["x-should-retry"], "true");
    // The envelope is the gateway's answer: it carries the client's id.
    assert_eq!(parts.headers["x-request-id"], "req_client");
    assert_eq!(
        body,
        openai("Overloaded", "overloaded_error", None, Some("overloaded"))
    );

    let openai_429 = respond(
        429,
        &[
            ("retry-after-ms", "956"),
            ("x-should-retry", "true"),
            ("x-request-id", "req_upstream"),
        ],
        r#"{"error":{"message":"Rate limit reached for gpt-4o","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#,
    );
    let (parts, body) = through(
        ErrorEnvelopeLayer::new().format(ErrorFormat::Anthropic),
        request(),
        Ok(openai_429),
    )
    .await;
    assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(parts.headers["retry-after"], "1");
    assert_eq!(parts.headers["retry-after-ms"], "956");
    let id = parts.headers["x-request-id"].to_str().unwrap();
    assert!(id.starts_with("req_") && id != "req_upstream");
    assert_eq!(
        body,
        serde_json::json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached for gpt-4o"}, "request_id": id})
    );
}

#[tokio::test]
async fn compressed_upstream_error_loses_its_encoding() {
    let gzip = Response::builder()
        .status(503)
        .header("content-encoding", "gzip")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(&[
            0x1f, 0x8b, 0x08, 0x00, 0x01, 0x02,
        ])))
        .unwrap();
    let (parts, body) = through(ErrorEnvelopeLayer::new(), request(), Ok(gzip)).await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!parts.headers.contains_key("content-encoding"));
    assert_eq!(parts.headers["content-type"], "application/json");
    assert_eq!(
        body["error"]["message"],
        ErrorKind::Unavailable.default_message()
    );
}

/// A body that yields its chunks one poll at a time and counts the polls.
struct LazyBody {
    chunks: VecDeque<Bytes>,
    polls: Arc<AtomicUsize>,
    fail_at_end: bool,
}

impl LazyBody {
    fn new(chunks: Vec<Bytes>) -> Self {
        LazyBody {
            chunks: chunks.into(),
            polls: Arc::default(),
            fail_at_end: false,
        }
    }
}

impl http_body::Body for LazyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let n = self.polls.fetch_add(1, Ordering::SeqCst);
        // Every other poll is pending, as a network body would be.
        if n.is_multiple_of(2) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match self.chunks.pop_front() {
            Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
            None if self.fail_at_end => Poll::Ready(Some(Err("connection reset".into()))),
            None => Poll::Ready(None),
        }
    }
}

#[tokio::test]
async fn success_passes_through_unbuffered() {
    let body = LazyBody::new(vec![
        Bytes::from_static(b"data: 1\n\n"),
        Bytes::from_static(b"data: 2\n\n"),
    ]);
    let polls = body.polls.clone();
    let body = Mutex::new(Some(body));
    let service = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new())
        .service(service_fn(move |_req: Req| {
            let body = body.lock().unwrap().take().unwrap();
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(body)
                        .unwrap(),
                )
            }
        }));
    let response = service.oneshot(request()).await.unwrap();
    assert_eq!(
        polls.load(Ordering::SeqCst),
        0,
        "the layer read the success body"
    );
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert!(!response.headers().contains_key("x-should-retry"));
    assert!(response.extensions().get::<ApiError>().is_none());
    assert!(matches!(response.body(), ResponseBody::Inner { .. }));
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&bytes[..], b"data: 1\n\ndata: 2\n\n");
}

#[tokio::test]
async fn oversized_error_body_is_read_up_to_the_bound() {
    let chunk = Bytes::from(vec![b'x'; 1024]);
    let body = LazyBody::new(vec![chunk; 1000]);
    let polls = body.polls.clone();
    let body = Mutex::new(Some(body));
    let service = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new().max_error_body_bytes(4096))
        .service(service_fn(move |_req: Req| {
            let body = body.lock().unwrap().take().unwrap();
            async move { Ok::<_, Infallible>(Response::builder().status(500).body(body).unwrap()) }
        }));
    let (parts, body) = collect(service.oneshot(request()).await.unwrap()).await;
    assert_eq!(parts.status, StatusCode::INTERNAL_SERVER_ERROR);
    // Four chunks of 1 KiB, each after one pending poll: nothing more.
    assert_eq!(polls.load(Ordering::SeqCst), 8);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.len() < 4096 && message.starts_with("xxxx"),
        "{}",
        message.len()
    );

    // The default bound is 64 KiB, and a JSON body cut there still
    // yields a valid envelope.
    let mut big = br#"{"error":{"message":""#.to_vec();
    big.extend(std::iter::repeat_n(b'y', 100 * 1024));
    big.extend(br#"","type":"server_error"}}"#);
    let upstream = Response::builder()
        .status(502)
        .body(Full::new(Bytes::from(big)))
        .unwrap();
    let (parts, body) = through(ErrorEnvelopeLayer::new(), request(), Ok(upstream)).await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["error"]["code"], "bad_gateway");
    assert!(body["error"]["message"].as_str().unwrap().len() < 64 * 1024);
}

#[tokio::test]
async fn failing_error_body_still_answers() {
    let mut body = LazyBody::new(vec![Bytes::from_static(b"upstream fell")]);
    body.fail_at_end = true;
    let body = Mutex::new(Some(body));
    let service = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new())
        .service(service_fn(move |_req: Req| {
            let body = body.lock().unwrap().take().unwrap();
            async move { Ok::<_, Infallible>(Response::builder().status(502).body(body).unwrap()) }
        }));
    let (parts, body) = collect(service.oneshot(request()).await.unwrap()).await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["error"]["message"], "upstream fell");
}

/// A service that answers 200 or an error and reports the request id it saw.
fn echo_id(
    fail: bool,
) -> impl Service<Req, Response = Response<Full<Bytes>>, Error = BoxError, Future: Send> + Clone {
    service_fn(move |req: Req| async move {
        let seen = req.headers().get("x-request-id").cloned();
        let seen = seen
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        if fail {
            Err(ApiError::not_found().with_message(seen).into())
        } else {
            Ok(Response::new(Full::new(Bytes::from(seen))))
        }
    })
}

#[tokio::test]
async fn request_id_is_propagated_or_generated() {
    for fail in [false, true] {
        let service = ServiceBuilder::new()
            .layer(ErrorEnvelopeLayer::new())
            .service(echo_id(fail));
        // Propagated.
        let req = Request::get("/")
            .header("x-request-id", "abc-123")
            .body(Full::default())
            .unwrap();
        let response = service.clone().oneshot(req).await.unwrap();
        assert_eq!(response.headers()["x-request-id"], "abc-123");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert!(std::str::from_utf8(&bytes).unwrap().contains("abc-123"));

        // Generated, and the inner service saw the same id.
        for bad in [None, Some(""), Some("has space"), Some("\u{e9}t\u{e9}")] {
            let mut req = Request::get("/").body(Full::default()).unwrap();
            if let Some(bad) = bad {
                req.headers_mut().insert(
                    "x-request-id",
                    HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
                );
            }
            let response = service.clone().oneshot(req).await.unwrap();
            let id = response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(id.starts_with("req_") && id.len() == 28, "{id}");
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            assert!(std::str::from_utf8(&bytes).unwrap().contains(&id));
        }
    }
    // An id the inner service set on a success response is kept.
    let service = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new())
        .service(service_fn(|_req: Req| async {
            Ok::<_, Infallible>(respond(200, &[("x-request-id", "inner")], "ok"))
        }));
    let response = service.oneshot(request()).await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "inner");
}

#[tokio::test]
async fn generated_ids_differ() {
    let service = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new())
        .service(echo_id(false));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        let response = service
            .clone()
            .oneshot(Request::new(Full::default()))
            .await
            .unwrap();
        assert!(seen.insert(response.headers()["x-request-id"].clone()));
    }
}

#[tokio::test]
async fn auto_format_picks_per_request() {
    let cases = [
        ("/v1/chat/completions", None, "openai"),
        ("/v1/messages", None, "anthropic"),
        ("/anthropic/v1/messages/count_tokens", None, "anthropic"),
        ("/v1/threads/thread_abc/messages", None, "openai"),
        ("/v1/complete", Some("2023-06-01"), "anthropic"),
    ];
    for (path, version, expected) in cases {
        let mut req = Request::post(path).body(Full::default()).unwrap();
        if let Some(v) = version {
            req.headers_mut()
                .insert("anthropic-version", HeaderValue::from_static(v));
        }
        let (parts, body) = through(
            ErrorEnvelopeLayer::new().auto_format(),
            req,
            Err(ApiError::overloaded().into()),
        )
        .await;
        assert_eq!(parts.status.as_u16(), 529);
        let got = if body.get("type") == Some(&"error".into()) {
            "anthropic"
        } else {
            "openai"
        };
        assert_eq!(got, expected, "{path}");
    }
}

#[tokio::test]
async fn format_fn_picks_per_request() {
    let layer = ErrorEnvelopeLayer::new().format_fn(|uri, headers| {
        if headers.contains_key("x-legacy") {
            ErrorFormat::ErrorCodeDetail
        } else if uri.path().starts_with("/humanloop") {
            ErrorFormat::Humanloop
        } else {
            ErrorFormat::OpenAi
        }
    });
    let error = || Err(ApiError::content_filter().with_message("filtered").into());
    let req = Request::post("/x")
        .header("x-legacy", "1")
        .body(Full::default())
        .unwrap();
    let (_, body) = through(layer.clone(), req, error()).await;
    // HAI's code for a content filter (003-hai-errors.txt).
    assert_eq!(
        body,
        serde_json::json!({"error_code": "content_filter_error", "detail": "filtered"})
    );
    let req = Request::post("/humanloop/call")
        .body(Full::default())
        .unwrap();
    let (_, body) = through(layer.clone(), req, error()).await;
    assert_eq!(
        body,
        serde_json::json!({"detail": {"type": "bad_request_error", "message": "filtered", "code": 400, "origin": "Gateway"}})
    );
    // gRPC requests get gRPC status whatever the function says.
    let req = Request::post("/humanloop/call")
        .header("content-type", "application/grpc+proto")
        .body(Full::default())
        .unwrap();
    let (parts, body) = through(layer, req, error()).await;
    assert_eq!(parts.headers["grpc-status"], "3");
    assert_eq!(body, serde_json::Value::Null);
}

#[tokio::test]
async fn grpc_request_gets_trailers_only_status() {
    let grpc = || {
        Request::post("/tollgate.Chat/Complete")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::default())
            .unwrap()
    };
    let layer = ErrorEnvelopeLayer::new().format(ErrorFormat::Anthropic);
    let error = ApiError::authentication().with_message("Invalid API key: sk-…");
    let (parts, body) = through(layer.clone(), grpc(), Err(error.into())).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers["content-type"], "application/grpc");
    assert_eq!(parts.headers["grpc-status"], "16");
    assert_eq!(
        parts.headers["grpc-message"],
        "Invalid API key: sk-%E2%80%A6"
    );
    assert_eq!(parts.headers["x-should-retry"], "false");
    assert!(parts.headers.contains_key("x-request-id"));
    assert_eq!(body, serde_json::Value::Null);

    // A plain HTTP error from inside becomes a gRPC status too.
    let (parts, _) = through(
        layer,
        grpc(),
        Ok(respond(429, &[("retry-after", "3")], "slow down")),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers["grpc-status"], "8");
    assert_eq!(parts.headers["grpc-message"], "slow down");
    assert_eq!(parts.headers["retry-after"], "3");
}

#[tokio::test(flavor = "current_thread")]
async fn catch_panic_turns_panics_into_500() {
    let (logs, _guard) = capture_logs();
    // A panic while polling the inner future …
    let service = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new().catch_panic(true))
        .service(service_fn(|_req: Req| async {
            if true {
                panic!("handler bug: index out of range");
            }
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        }));
    let (parts, body) = collect(service.oneshot(request()).await.unwrap()).await;
    assert_eq!(parts.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error"]["code"], "internal_error");
    assert!(!body.to_string().contains("handler bug"));

    // … and one in `call` itself.
    #[derive(Clone)]
    struct PanicsInCall;
    impl Service<Req> for PanicsInCall {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Req) -> Self::Future {
            panic!("bug in call")
        }
    }
    let service = ErrorEnvelopeLayer::new()
        .catch_panic(true)
        .layer_service(PanicsInCall);
    let (parts, _) = collect(service.oneshot(request()).await.unwrap()).await;
    assert_eq!(parts.status, StatusCode::INTERNAL_SERVER_ERROR);
    let logs = logs.text();
    assert!(
        logs.contains("handler bug") && logs.contains("bug in call"),
        "{logs}"
    );
}

#[tokio::test]
async fn without_catch_panic_a_panic_propagates() {
    let service = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new())
        .service(service_fn(|_req: Req| async {
            if true {
                panic!("not caught");
            }
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        }));
    let joined = tokio::spawn(service.oneshot(request())).await;
    assert!(joined.unwrap_err().is_panic());
}

#[tokio::test]
async fn inner_rejection_is_rerendered_keeping_its_headers() {
    // An inner tollgate layer rejects through `reject`, adding its own headers.
    let service = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new().format(ErrorFormat::Anthropic))
        .service(service_fn(|_req: Req| async {
            let mut response = tollgate::body::reject::<Full<Bytes>>(
                ApiError::rate_limited()
                    .with_message("Rate limit exceeded: 10 requests per minute")
                    .with_retry_after(Duration::from_secs(6)),
            );
            response.headers_mut().insert(
                "x-ratelimit-remaining-requests",
                HeaderValue::from_static("0"),
            );
            Ok::<_, Infallible>(response)
        }));
    let req = Request::post("/v1/messages")
        .header("x-request-id", "req_42")
        .body(Full::default())
        .unwrap();
    let (parts, body) = collect(service.oneshot(req).await.unwrap()).await;
    assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(parts.headers["x-ratelimit-remaining-requests"], "0");
    assert_eq!(parts.headers["retry-after"], "6");
    assert_eq!(parts.headers["retry-after-ms"], "6000");
    assert_eq!(parts.headers["content-type"], "application/json");
    assert_eq!(parts.headers["x-request-id"], "req_42");
    assert_eq!(parts.headers.get_all("content-type").iter().count(), 1);
    assert_eq!(
        body,
        serde_json::json!({
            "type": "error",
            "error": {"type": "rate_limit_error", "message": "Rate limit exceeded: 10 requests per minute"},
            "request_id": "req_42",
        })
    );
    assert_eq!(
        parts.extensions.get::<ApiError>().unwrap().request_id(),
        Some("req_42")
    );
}

#[tokio::test]
async fn envelopes_nest() {
    // An inner envelope's answer carries its ApiError: the outer one
    // re-renders it without parsing and keeps the id.
    let service = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new().format(ErrorFormat::ErrorCodeDetail))
        .layer(ErrorEnvelopeLayer::new())
        .service(service_fn(|_req: Req| async {
            Err::<Response<Full<Bytes>>, _>(ApiError::conflict().with_message("busy"))
        }));
    let (parts, body) = collect(service.oneshot(request()).await.unwrap()).await;
    assert_eq!(parts.status, StatusCode::CONFLICT);
    assert_eq!(
        body,
        serde_json::json!({"error_code": "conflict_error", "detail": "busy"})
    );
}

#[test]
fn layer_and_service_are_clone_and_debug() {
    let layer = ErrorEnvelopeLayer::new().format_fn(|_, _| ErrorFormat::OpenAi);
    let service = layer.clone().layer_service(echo_id(false));
    let _ = service.clone();
    assert!(format!("{layer:?}").contains("Custom"));
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    assert_send_sync(&layer);
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn api_error_is_an_axum_response() {
    use axum::routing::post;
    async fn handler() -> Result<&'static str, ApiError> {
        Err(ApiError::budget_exceeded().with_message("Budget exceeded: $50.00 limit reached"))
    }
    let router = axum::Router::new().route("/v1/chat/completions", post(handler));
    let (parts, body) = collect(router.clone().oneshot(request()).await.unwrap()).await;
    assert_eq!(parts.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(parts.headers["content-type"], "application/json");
    assert_eq!(parts.headers["x-should-retry"], "false");
    assert_eq!(
        body,
        openai(
            "Budget exceeded: $50.00 limit reached",
            "budget_exceeded_error",
            None,
            Some("budget_exceeded")
        )
    );
    // Behind an envelope in `Router::layer`: re-rendered from the extension.
    let router = router.layer(ErrorEnvelopeLayer::new().format(ErrorFormat::Humanloop));
    let (parts, body) = collect(router.oneshot(request()).await.unwrap()).await;
    assert_eq!(parts.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(body["detail"]["type"], "payment_required_error");
    assert_eq!(body["detail"]["code"], 402);
    assert_eq!(
        body["detail"]["message"],
        "Budget exceeded: $50.00 limit reached"
    );
}

#[cfg(feature = "tonic")]
#[test]
fn api_error_is_a_tonic_status() {
    for row in &TABLE {
        let error = ApiError::new(row.kind, "why \u{e9}");
        let status = tonic::Status::from(error);
        assert_eq!(
            status.code() as i32,
            i32::from(row.grpc_status),
            "{:?}",
            row.kind
        );
        assert_eq!(status.message(), "why \u{e9}");
    }
}
