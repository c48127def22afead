//! `StreamErrorTrailerLayer` over real loopback HTTP (axum server, hyper
//! client), in process under paused tokio time, at every split point of a
//! stream, and composed with the usage observer and the retry layer.
//!
//! One test binary; its parts live in `tests/stream/`.

use std::convert::Infallible;
use std::io;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{Request, Response};
use http_body_util::Full;
use tollgate::stream::StreamErrorTrailerLayer;
use tower::{Service, ServiceBuilder, service_fn};

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

fn error_event(code: &str, message: &str, error_type: &str) -> String {
    format!(
        "data: {{\"error\":{{\"message\":\"{message}\",\"type\":\"{error_type}\",\"param\":null,\"code\":\"{code}\"}}}}\n\n"
    )
}

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

#[path = "stream/compose.rs"]
mod compose;
#[path = "stream/dialects.rs"]
mod dialects;
#[path = "stream/splits.rs"]
mod splits;
#[path = "stream/timers.rs"]
mod timers;
#[path = "stream/wire.rs"]
mod wire;
