//! Over real loopback HTTP: an axum upstream, the layer in an axum gateway,
//! a hyper client.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tollgate::stream::StreamFormat;
use tower::ServiceExt;

use super::*;

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
                    &[
                        "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"error\":null}}\n\n",
                        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"delta\":\"Hi\"}\n\n",
                    ],
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
        .split_once("\"delta\":\"Hi\"}\n\n")
        .map(|(_, tail)| tail)
        .unwrap();
    let events: Vec<&str> = tail.split_terminator("\n\n").collect();
    assert_eq!(events.len(), 2, "{tail}");
    // The documented `error` event, its sequence number the stream's next.
    assert_eq!(
        events[0],
        "event: error\ndata: {\"type\":\"error\",\"code\":\"bad_gateway\",\"message\":\"The upstream stream failed before it completed.\",\"param\":null,\"sequence_number\":2}"
    );
    assert_eq!(
        events[1],
        "event: response.failed\ndata: {\"type\":\"response.failed\",\"sequence_number\":3,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"The upstream stream failed before it completed.\"}}}"
    );
}

#[tokio::test]
async fn finish_reason_metadata_format_by_configuration() {
    let addr = gateway(short_timeouts().format(StreamFormat::FinishReasonMetadata)).await;
    let answer = call(addr, "POST", "/cut/v1/chat/completions").await;
    let (_, last) = answer.body.trim_end().rsplit_once("\n\n").unwrap();
    let chunk: serde_json::Value =
        serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert!(chunk["message_id"].is_string() && chunk["thread_id"].is_string());
    assert!(chunk["created_at"].is_string());
    assert_eq!(
        chunk["delta"],
        serde_json::json!({"role": "assistant", "content": "", "sources": [], "meta_data": {
            "type": "common_metadata",
            "finish_reason": "api_error",
            "detail": "The upstream stream ended before it completed.",
        }})
    );
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
