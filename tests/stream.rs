//! `StreamErrorTrailerLayer` over real loopback HTTP (axum server, hyper
//! client), plus in-process tests for timers (paused tokio time) and a
//! property test over every split point of a stream.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use proptest::prelude::*;
use tollgate::ApiError;
use tollgate::stream::{StreamErrorTrailerLayer, StreamFormat};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

const CHUNK: &str =
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n";
const DONE: &str = "data: [DONE]\n\n";
/// A generous bound for every loopback exchange; tests finish in milliseconds.
const BOUND: Duration = Duration::from_secs(10);

/// What an upstream does after its frames.
#[derive(Clone, Copy)]
enum Then {
    End,
    Fail,
    Stall,
    /// Fail after a pause, so a server flushes what came before.
    FailLater,
}

fn sse(frames: &[&'static str], then: Then) -> Response<Body> {
    let frames = frames
        .iter()
        .map(|f| Ok::<_, io::Error>(Bytes::from_static(f.as_bytes())))
        .collect::<Vec<_>>();
    let body = stream::iter(frames);
    let body = match then {
        Then::End => body.boxed(),
        Then::Fail => body
            .chain(stream::once(async {
                Err(io::Error::other("upstream connection reset"))
            }))
            .boxed(),
        Then::Stall => body.chain(stream::pending()).boxed(),
        Then::FailLater => body
            .chain(stream::once(async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                Err(io::Error::other("upstream connection reset"))
            }))
            .boxed(),
    };
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap()
}

fn upstream() -> Router {
    Router::new()
        .route(
            "/fail/v1/chat/completions",
            post(|| async { sse(&[CHUNK, CHUNK, CHUNK], Then::Fail) }),
        )
        .route(
            "/fail-later/v1/chat/completions",
            post(|| async { sse(&[CHUNK, CHUNK], Then::FailLater) }),
        )
        .route(
            "/cut/v1/chat/completions",
            post(|| async { sse(&[CHUNK, CHUNK], Then::End) }),
        )
        .route(
            "/stall/v1/chat/completions",
            post(|| async { sse(&[CHUNK, CHUNK], Then::Stall) }),
        )
        .route(
            "/partial/v1/chat/completions",
            // The upstream dies inside its second event.
            post(|| async { sse(&[CHUNK, "data: {\"id\":\"c1\",\"cho"], Then::Fail) }),
        )
        .route(
            "/ok/v1/chat/completions",
            post(|| async { sse(&[CHUNK, CHUNK, DONE], Then::End) }),
        )
        .route(
            "/split/v1/chat/completions",
            // Events split at awkward bytes, `\r\n` line endings, a comment.
            post(|| async {
                sse(
                    &[
                        ": ping\r\n\r\ndata: {\"choices\"",
                        ":[]}\r",
                        "\n\r",
                        "\ndata: [DO",
                        "NE]\r\n\r\n",
                    ],
                    Then::End,
                )
            }),
        )
        .route(
            "/rate/v1/chat/completions",
            post(|| async {
                sse(
                    &[
                        ": OPENROUTER PROCESSING\n\n",
                        "data: {\"error\":{\"message\":\"Rate limit reached for gpt-4o\",\"type\":\"rate_limit_error\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}\n\n",
                    ],
                    Then::End,
                )
            }),
        )
        .route(
            "/v1/messages",
            post(|| async {
                sse(
                    &[
                        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5}}}\n\n",
                        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
                    ],
                    Then::End,
                )
            }),
        )
        .route(
            "/overloaded/v1/messages",
            post(|| async {
                sse(
                    &["event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"],
                    Then::End,
                )
            }),
        )
        .route(
            "/complete/v1/messages",
            post(|| async {
                sse(
                    &[
                        "event: message_start\ndata: {\"type\":\"message_start\"}\n\n",
                        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
                    ],
                    Then::End,
                )
            }),
        )
        .route(
            "/v1/responses",
            post(|| async {
                sse(
                    &["event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"status\":\"in_progress\"}}\n\n"],
                    Then::Fail,
                )
            }),
        )
        .route(
            "/json/v1/chat/completions",
            post(|| async {
                Response::builder()
                    .header("content-type", "application/json")
                    .header("x-upstream", "kept")
                    .body(Body::from("{\"choices\":[]}"))
                    .unwrap()
            }),
        )
        .route(
            "/sse-404",
            get(|| async {
                Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .header("content-type", "text/event-stream")
                    .body(Body::from("not here"))
                    .unwrap()
            }),
        )
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

async fn gateway(layer: StreamErrorTrailerLayer) -> SocketAddr {
    serve(upstream().layer(layer)).await
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

/// POSTs to `path` and reads the whole answer; the body must not fail.
async fn call(addr: SocketAddr, method: &str, path: &str) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::from_static(b"{\"stream\":true}")))
        .unwrap();
    let exchange = async {
        let response = client().request(request).await.expect("response head");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("a body that ends cleanly");
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(body.to_bytes().to_vec()).unwrap(),
        }
    };
    tokio::time::timeout(BOUND, exchange)
        .await
        .expect("bounded exchange")
}

fn short_timeouts() -> StreamErrorTrailerLayer {
    StreamErrorTrailerLayer::new().idle_timeout(Duration::from_millis(150))
}

fn error_event(code: &str, message: &str, error_type: &str) -> String {
    format!(
        "data: {{\"error\":{{\"message\":\"{message}\",\"type\":\"{error_type}\",\"param\":null,\"code\":\"{code}\"}}}}\n\n"
    )
}

#[tokio::test]
async fn upstream_error_after_events_ends_with_bad_gateway_event() {
    let addr = gateway(short_timeouts()).await;
    let answer = call(addr, "POST", "/fail/v1/chat/completions").await;
    assert_eq!(answer.status, StatusCode::OK);
    let expected = format!(
        "{CHUNK}{CHUNK}{CHUNK}{}",
        error_event(
            "bad_gateway",
            "The upstream stream failed before it completed.",
            "server_error"
        )
    );
    assert_eq!(answer.body, expected);
}

#[tokio::test]
async fn close_without_done_is_stream_truncated() {
    let addr = gateway(short_timeouts()).await;
    let answer = call(addr, "POST", "/cut/v1/chat/completions").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.body,
        format!(
            "{CHUNK}{CHUNK}{}",
            error_event(
                "stream_truncated",
                "The upstream stream ended before it completed.",
                "server_error"
            )
        )
    );
    assert!(!answer.body.contains("[DONE]"));
}

#[tokio::test]
async fn done_after_error_is_configurable() {
    let addr = gateway(short_timeouts().done_after_error(true)).await;
    let answer = call(addr, "POST", "/cut/v1/chat/completions").await;
    assert!(
        answer
            .body
            .ends_with("\"code\":\"stream_truncated\"}}\n\ndata: [DONE]\n\n")
    );
}

#[tokio::test]
async fn stalled_upstream_times_out() {
    let addr = gateway(short_timeouts()).await;
    let started = std::time::Instant::now();
    let answer = call(addr, "POST", "/stall/v1/chat/completions").await;
    let waited = started.elapsed();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.body,
        format!(
            "{CHUNK}{CHUNK}{}",
            error_event(
                "timeout",
                "The upstream sent no event for 150 ms.",
                "timeout_error"
            )
        )
    );
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
}

#[tokio::test]
async fn keep_alive_comments_fill_idle_gaps() {
    let layer = StreamErrorTrailerLayer::new()
        .idle_timeout(Duration::from_millis(200))
        .keep_alive(Duration::from_millis(20));
    let addr = gateway(layer).await;
    let answer = call(addr, "POST", "/stall/v1/chat/completions").await;
    let keep_alives = answer.body.matches(": keep-alive\n\n").count();
    assert!(
        keep_alives >= 3,
        "{keep_alives} keep-alives in {:?}",
        answer.body
    );
    assert!(
        answer
            .body
            .starts_with(&format!("{CHUNK}{CHUNK}: keep-alive\n\n"))
    );
    assert!(answer.body.ends_with(&error_event(
        "timeout",
        "The upstream sent no event for 200 ms.",
        "timeout_error"
    )));
}

#[tokio::test]
async fn partial_event_is_withheld_before_the_error() {
    let addr = gateway(short_timeouts()).await;
    let answer = call(addr, "POST", "/partial/v1/chat/completions").await;
    assert_eq!(
        answer.body,
        format!(
            "{CHUNK}{}",
            error_event(
                "bad_gateway",
                "The upstream stream failed before it completed.",
                "server_error"
            )
        )
    );
}

#[tokio::test]
async fn healthy_streams_pass_byte_for_byte() {
    let addr = gateway(short_timeouts()).await;
    let answer = call(addr, "POST", "/ok/v1/chat/completions").await;
    assert_eq!(answer.body, format!("{CHUNK}{CHUNK}{DONE}"));
    let answer = call(addr, "POST", "/split/v1/chat/completions").await;
    assert_eq!(
        answer.body,
        ": ping\r\n\r\ndata: {\"choices\":[]}\r\n\r\ndata: [DONE]\r\n\r\n"
    );
    let answer = call(addr, "POST", "/complete/v1/messages").await;
    assert!(
        answer
            .body
            .ends_with("data: {\"type\":\"message_stop\"}\n\n")
    );
    assert!(!answer.body.contains("error"));
}

#[tokio::test]
async fn first_event_error_becomes_an_error_status() {
    let addr = gateway(short_timeouts()).await;
    let answer = call(addr, "POST", "/rate/v1/chat/completions").await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.headers["content-type"], "application/json");
    assert_eq!(answer.headers["x-should-retry"], "true");
    assert_eq!(
        answer.body,
        "{\"error\":{\"message\":\"Rate limit reached for gpt-4o\",\"type\":\"rate_limit_error\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}"
    );
}

#[tokio::test]
async fn anthropic_first_event_error_is_529_in_anthropic_shape() {
    let addr = gateway(short_timeouts()).await;
    let answer = call(addr, "POST", "/overloaded/v1/messages").await;
    assert_eq!(answer.status.as_u16(), 529);
    let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "overloaded_error");
    assert_eq!(body["error"]["message"], "Overloaded");
}

#[tokio::test]
async fn anthropic_stream_ends_with_event_error() {
    let addr = gateway(short_timeouts()).await;
    let answer = call(addr, "POST", "/v1/messages").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer.body.ends_with(
            "data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
             event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"The upstream stream ended before it completed.\"},\"request_id\":null}\n\n"
        ),
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn responses_stream_ends_with_error_then_response_failed() {
    let addr = gateway(short_timeouts()).await;
    let answer = call(addr, "POST", "/v1/responses").await;
    let tail = answer
        .body
        .split_once("\"in_progress\"}}\n\n")
        .map(|(_, tail)| tail)
        .unwrap();
    let events: Vec<&str> = tail.split_terminator("\n\n").collect();
    assert_eq!(events.len(), 2, "{tail}");
    assert!(events[0].starts_with("event: error\ndata: {\"type\":\"error\",\"error\":{\"message\":\"The upstream stream failed before it completed.\""));
    assert!(events[1].starts_with("event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"object\":\"response\",\"status\":\"failed\",\"error\":{"));
    let data: serde_json::Value =
        serde_json::from_str(events[1].split_once("data: ").unwrap().1).unwrap();
    assert_eq!(data["response"]["error"]["code"], "bad_gateway");
}

#[tokio::test]
async fn finish_reason_metadata_format_by_configuration() {
    let addr = gateway(short_timeouts().format(StreamFormat::FinishReasonMetadata)).await;
    let answer = call(addr, "POST", "/cut/v1/chat/completions").await;
    assert!(answer.body.ends_with(
        "data: {\"delta\":{\"content\":\"\",\"meta_data\":{\"type\":\"common_metadata\",\"finish_reason\":\"api_error\",\"detail\":\"The upstream stream ended before it completed.\"}}}\n\n"
    ));
}

#[tokio::test]
async fn non_sse_responses_are_untouched() {
    let addr = gateway(short_timeouts()).await;
    let answer = call(addr, "POST", "/json/v1/chat/completions").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["content-length"], "14");
    assert_eq!(answer.headers["x-upstream"], "kept");
    assert_eq!(answer.body, "{\"choices\":[]}");
    let answer = call(addr, "GET", "/sse-404").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.body, "not here");
}

/// Client side: the layer in front of a hyper client turns a connection the
/// upstream cut mid-stream into an error event for the caller.
#[tokio::test]
async fn client_side_layer_reports_a_cut_connection() {
    let upstream = serve(upstream()).await;
    let mut service = ServiceBuilder::new()
        .layer(short_timeouts())
        .service(client());
    let request = Request::post(format!("http://{upstream}/fail-later/v1/chat/completions"))
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let exchange = async {
        let response = service.ready().await?.call(request).await?;
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, tollgate::BoxError>(body)
    };
    let body = tokio::time::timeout(BOUND, exchange)
        .await
        .unwrap()
        .unwrap();
    let text = std::str::from_utf8(&body).unwrap();
    assert!(text.ends_with(&error_event(
        "bad_gateway",
        "The upstream stream failed before it completed.",
        "server_error"
    )));
}

/// gRPC over real HTTP/2: a failing body becomes `grpc-status` trailers.
#[tokio::test]
async fn grpc_body_error_becomes_status_trailers() {
    let inner = service_fn(|req: Request<hyper::body::Incoming>| async move {
        let frames: Vec<Result<Frame<Bytes>, io::Error>> = match req.uri().path() {
            "/fail" => vec![
                Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x01A"))),
                Err(io::Error::other("upstream reset")),
            ],
            _ => {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                vec![
                    Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x01A"))),
                    Ok(Frame::trailers(trailers)),
                ]
            }
        };
        let response = Response::builder()
            .header("content-type", "application/grpc")
            .body(StreamBody::new(stream::iter(frames)))
            .unwrap();
        Ok::<_, Infallible>(response)
    });
    let service = ServiceBuilder::new().layer(short_timeouts()).service(inner);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let hyper_service =
                    hyper::service::service_fn(move |req| service.clone().oneshot(req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .http2_only()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), hyper_service)
                    .await;
            });
        }
    });
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    for (path, status, message) in [
        (
            "/fail",
            "14",
            Some("The upstream stream failed before it completed."),
        ),
        ("/ok", "0", None),
    ] {
        let request = Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .body(Full::default())
            .unwrap();
        let exchange = async {
            let response = client.request(request).await.unwrap();
            response.into_body().collect().await.unwrap()
        };
        let collected = tokio::time::timeout(BOUND, exchange).await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["grpc-status"], status, "{path}");
        assert_eq!(
            trailers.get("grpc-message").map(|v| v.to_str().unwrap()),
            message
        );
        assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x01A");
    }
}

// ---- in-process: timers under paused tokio time ----

/// A service answering an SSE stream of `chunks`, then doing `then`.
fn in_process(
    layer: StreamErrorTrailerLayer,
    chunks: Vec<&'static str>,
    then: Then,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<tollgate::stream::body::ResponseBody<Body>>,
    Error = Infallible,
> {
    ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(move |_req: Request<Full<Bytes>>| {
            let response = sse(&chunks, then);
            async move { Ok::<_, Infallible>(response) }
        }))
}

/// Bounds an in-process step. Under paused time a hang fails at once (the
/// clock jumps to the bound) instead of blocking the suite.
async fn bounded<F: std::future::Future>(step: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), step)
        .await
        .expect("the step finished within its bound")
}

fn chat_request() -> Request<Full<Bytes>> {
    Request::post("/v1/chat/completions")
        .body(Full::default())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn stall_before_the_first_event_is_a_504() {
    let layer = StreamErrorTrailerLayer::new()
        .idle_timeout(Duration::from_secs(30))
        .first_event_timeout(Duration::from_secs(60));
    let mut service = in_process(layer, vec![": processing\n\n"], Then::Stall);
    let started = tokio::time::Instant::now();
    let response = bounded(service.ready().await.unwrap().call(chat_request()))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        waited >= Duration::from_secs(30) && waited <= Duration::from_secs(34),
        "{waited:?}"
    );
    let error = response.extensions().get::<ApiError>().unwrap();
    assert_eq!(error.code(), Some("timeout"));
}

#[tokio::test(start_paused = true)]
async fn slow_first_event_starts_the_stream_after_first_event_timeout() {
    let layer = StreamErrorTrailerLayer::new()
        .idle_timeout(Duration::from_secs(60))
        .first_event_timeout(Duration::from_secs(2));
    let mut service = in_process(layer, vec![": processing\n\n"], Then::Stall);
    let started = tokio::time::Instant::now();
    let response = bounded(service.ready().await.unwrap().call(chat_request()))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let body = bounded(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert!(body.starts_with(b": processing\n\ndata: {\"error\""));
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_secs(60) && idle <= Duration::from_secs(68),
        "{idle:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn first_event_limit_starts_the_stream() {
    let layer = StreamErrorTrailerLayer::new().first_event_limit(8);
    let mut service = in_process(layer, vec![": a long comment\n\n", CHUNK, DONE], Then::End);
    let response = bounded(service.ready().await.unwrap().call(chat_request()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = bounded(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, format!(": a long comment\n\n{CHUNK}{DONE}"));
}

#[tokio::test(start_paused = true)]
async fn without_holding_the_head_comes_at_once() {
    let layer = StreamErrorTrailerLayer::new().hold_first_event(false);
    let mut service = in_process(
        layer,
        vec!["data: {\"error\":{\"message\":\"no\",\"type\":\"invalid_request_error\"}}\n\n"],
        Then::End,
    );
    let response = bounded(service.ready().await.unwrap().call(chat_request()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = bounded(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    // The upstream's own error ends the stream: nothing is appended.
    assert_eq!(
        body,
        "data: {\"error\":{\"message\":\"no\",\"type\":\"invalid_request_error\"}}\n\n"
    );
}

#[tokio::test(start_paused = true)]
async fn oversized_events_are_forwarded_and_closed_before_the_error() {
    let layer = StreamErrorTrailerLayer::new().max_event_bytes(16);
    let mut service = in_process(
        layer,
        vec![CHUNK, "data: {\"a\":\"0123456789", "0123456789"],
        Then::Fail,
    );
    let response = bounded(service.ready().await.unwrap().call(chat_request()))
        .await
        .unwrap();
    let body = bounded(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    let text = std::str::from_utf8(&body).unwrap();
    assert!(
        text.starts_with(&format!(
            "{CHUNK}data: {{\"a\":\"01234567890123456789\n\ndata: {{\"error\""
        )),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn keep_alives_do_not_reset_the_idle_timeout() {
    let layer = StreamErrorTrailerLayer::new()
        .idle_timeout(Duration::from_secs(60))
        .keep_alive(Duration::from_secs(15));
    let mut service = in_process(layer, vec![CHUNK], Then::Stall);
    let started = tokio::time::Instant::now();
    let response = bounded(service.ready().await.unwrap().call(chat_request()))
        .await
        .unwrap();
    let body = bounded(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    let text = std::str::from_utf8(&body).unwrap();
    // Every 15 s give or take a tick, until the idle timeout at 60 s.
    let keep_alives = text.matches(": keep-alive\n\n").count();
    assert!((3..=4).contains(&keep_alives), "{text}");
    assert!(text.ends_with(&error_event(
        "timeout",
        "The upstream sent no event for 60 s.",
        "timeout_error"
    )));
    assert!(started.elapsed() <= Duration::from_secs(68));
}

// ---- every split point, through the whole layer ----

/// Runs `stream` through the layer in the given pieces, then ends (or fails).
async fn through_layer(pieces: Vec<Bytes>, fail: bool) -> (StatusCode, Bytes) {
    let inner = service_fn(move |_req: Request<Full<Bytes>>| {
        let mut frames: Vec<Result<Frame<Bytes>, io::Error>> =
            pieces.iter().cloned().map(|b| Ok(Frame::data(b))).collect();
        if fail {
            frames.push(Err(io::Error::other("reset")));
        }
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(StreamBody::new(stream::iter(frames)))
                    .unwrap(),
            )
        }
    });
    let exchange = async {
        let response = ServiceBuilder::new()
            .layer(StreamErrorTrailerLayer::new())
            .service(inner)
            .oneshot(chat_request())
            .await
            .unwrap();
        let status = response.status();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    };
    tokio::time::timeout(BOUND, exchange)
        .await
        .expect("bounded exchange")
}

fn event_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ]{0,12}"
            .prop_map(|s| format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{s}\"}}}}]}}")),
        Just("data: {\"choices\":[{\"delta\":{\"content\":\"data: [DONE]\"}}]}".to_owned()),
        Just(": keep-alive".to_owned()),
    ]
}

fn join(events: &[String], eol: &str) -> String {
    events
        .iter()
        .map(|e| format!("{}{eol}{eol}", e.replace('\n', eol)))
        .collect()
}

fn truncated(eol_stream_prefix: &str) -> String {
    format!(
        "{eol_stream_prefix}{}",
        error_event(
            "stream_truncated",
            "The upstream stream ended before it completed.",
            "server_error"
        )
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever byte the stream is split at: a stream with its end marker
    /// comes out unchanged, one without comes out whole-events-only plus one
    /// `stream_truncated` event.
    #[test]
    fn every_split_point(
        events in proptest::collection::vec(event_strategy(), 1..4),
        done in any::<bool>(),
        tail in prop_oneof![Just(""), Just("data: {\"cho"), Just("data: [DO")],
        eol in prop_oneof![Just("\n"), Just("\r\n")],
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let mut all = events.clone();
        if done {
            all.push("data: [DONE]".to_owned());
        }
        let complete = join(&all, eol);
        let stream = format!("{complete}{tail}");
        let has_data = all.iter().any(|e| e.starts_with("data"));
        for split in 0..=stream.len() {
            let pieces = vec![
                Bytes::copy_from_slice(&stream.as_bytes()[..split]),
                Bytes::copy_from_slice(&stream.as_bytes()[split..]),
            ];
            let (status, body) = runtime.block_on(through_layer(pieces, false));
            let body = String::from_utf8(body.to_vec()).unwrap();
            if !has_data && !done {
                // Only comments, then the end: nothing to stream.
                prop_assert_eq!(status, StatusCode::BAD_GATEWAY);
                continue;
            }
            prop_assert_eq!(status, StatusCode::OK);
            if done {
                // `[DONE]` seen: what follows it passes as it is.
                prop_assert_eq!(&body, &stream, "split at {}", split);
            } else {
                prop_assert_eq!(&body, &truncated(&complete), "split at {}", split);
            }
        }
    }

    /// Random multi-way splits with a failing end.
    #[test]
    fn random_splits_with_a_failure(
        events in proptest::collection::vec(event_strategy(), 1..5),
        cuts in proptest::collection::vec(0usize..400, 0..8),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let mut all = events.clone();
        all.insert(0, "data: {\"choices\":[]}".to_owned());
        let complete = join(&all, "\n");
        let stream = format!("{complete}data: {{\"partial");
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut last = 0;
        for cut in cuts.into_iter().chain([stream.len()]) {
            pieces.push(Bytes::copy_from_slice(&stream.as_bytes()[last..cut]));
            last = cut;
        }
        let (status, body) = runtime.block_on(through_layer(pieces, true));
        prop_assert_eq!(status, StatusCode::OK);
        let expected = format!(
            "{complete}{}",
            error_event("bad_gateway", "The upstream stream failed before it completed.", "server_error")
        );
        prop_assert_eq!(String::from_utf8(body.to_vec()).unwrap(), expected);
    }
}

// ---- with the usage observer outside ----

/// The usage observer sees the partial stream and our error event, which it
/// ignores: the content streamed before the failure is estimated.
#[tokio::test]
async fn usage_observer_outside_counts_the_partial_stream() {
    use std::sync::{Arc, Mutex};
    use tollgate::usage::{self, UsageOptions, UsageReport, UsageSource};

    let reports = Arc::new(Mutex::new(Vec::<UsageReport>::new()));
    let sink = reports.clone();
    let mut service = ServiceBuilder::new()
        .map_response(move |response| {
            let sink = sink.clone();
            let options = UsageOptions {
                prompt_tokens_estimate: 5,
                ..UsageOptions::default()
            };
            usage::observe(response, options, move |report| {
                sink.lock().unwrap().push(*report)
            })
        })
        .layer(StreamErrorTrailerLayer::new())
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(sse(
                &[
                    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}]}\n\n",
                    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"}}]}\n\n",
                ],
                Then::Fail,
            ))
        }));
    let response = bounded(service.ready().await.unwrap().call(chat_request()))
        .await
        .unwrap();
    let body = bounded(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert!(
        body.ends_with(
            error_event(
                "bad_gateway",
                "The upstream stream failed before it completed.",
                "server_error"
            )
            .as_bytes()
        )
    );
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1);
    let report = reports[0];
    assert_eq!(report.source, UsageSource::Estimated);
    assert_eq!(report.status, StatusCode::OK);
    assert_eq!(report.usage.prompt_tokens, 5);
    // "Hello world": 11 characters, a quarter of them rounded up.
    assert_eq!(report.usage.completion_tokens, 3);
}

/// Compressed streams and `HEAD` answers are not events: they pass through.
#[tokio::test(start_paused = true)]
async fn encoded_and_head_responses_pass_through() {
    let inner = service_fn(|req: Request<Full<Bytes>>| async move {
        let mut response = sse(&["\x1f\x08 not events"], Then::End);
        if req.method() != http::Method::HEAD {
            response
                .headers_mut()
                .insert("content-encoding", "gzip".parse().unwrap());
        }
        Ok::<_, Infallible>(response)
    });
    let mut service = ServiceBuilder::new()
        .layer(StreamErrorTrailerLayer::new())
        .service(inner);
    for method in [http::Method::POST, http::Method::HEAD] {
        let request = Request::builder()
            .method(method.clone())
            .uri("/v1/chat/completions")
            .body(Full::default())
            .unwrap();
        let response = bounded(service.ready().await.unwrap().call(request))
            .await
            .unwrap();
        assert_eq!(
            format!("{:?}", response.body()),
            "ResponseBody::Passthrough",
            "{method}"
        );
        let body = bounded(response.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"\x1f\x08 not events", "{method}");
    }
}
