//! Per-event overhead of `StreamErrorTrailerLayer` on a healthy SSE stream,
//! against the bare body.
//!
//! `cargo bench --bench stream -- --warm-up-time 1 --measurement-time 3`
//!
//! Each iteration drains a stream of `EVENTS` chat-completion chunks (one
//! event per frame, as upstreams flush them) and `[DONE]`, in a spawned task
//! as hyper drains a response body. Throughput is reported per event, so
//! `layer - bare` is the layer's cost per event (its per-response setup is
//! spread over the events). Two inner bodies:
//! - `ready`: every frame is ready at once (the layer's scanning and
//!   plumbing, nothing else);
//! - `channel`: frames come from a producer task through a one-slot channel,
//!   so the body is `Pending` between events as a real upstream is (the
//!   layer also keeps its idle timer armed).

use std::convert::Infallible;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use tollgate::stream::StreamErrorTrailerLayer;
use tower::{Layer, Service, service_fn};

const EVENTS: usize = 1000;
const CHUNK: &[u8] = b"data: {\"id\":\"chatcmpl-9x2\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" word\"},\"finish_reason\":null}]}\n\n";
const DONE: &[u8] = b"data: [DONE]\n\n";

/// The upstream body: pre-built frames, or a channel fed by a producer task.
enum Upstream {
    Ready {
        frames: Arc<Vec<Bytes>>,
        next: usize,
    },
    Channel(mpsc::Receiver<Bytes>),
}

impl Upstream {
    fn new(frames: &Arc<Vec<Bytes>>, channel: bool) -> Self {
        if !channel {
            return Upstream::Ready {
                frames: frames.clone(),
                next: 0,
            };
        }
        let (tx, rx) = mpsc::channel(1);
        let frames = frames.clone();
        tokio::spawn(async move {
            for frame in frames.iter() {
                if tx.send(frame.clone()).await.is_err() {
                    return;
                }
            }
        });
        Upstream::Channel(rx)
    }
}

impl Body for Upstream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Upstream::Ready { frames, next } => {
                let frame = frames.get(*next).cloned();
                *next += 1;
                Poll::Ready(frame.map(|b| Ok(Frame::data(b))))
            }
            Upstream::Channel(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }
}

fn frames() -> Arc<Vec<Bytes>> {
    let mut frames = vec![Bytes::from_static(CHUNK); EVENTS];
    frames.push(Bytes::from_static(DONE));
    Arc::new(frames)
}

/// Drains `body` in a spawned task and checks every byte arrived.
async fn drain<B>(body: B) -> usize
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Debug,
{
    let bytes = tokio::spawn(async move {
        let mut body = std::pin::pin!(body);
        let mut bytes = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                bytes += data.len();
            }
        }
        bytes
    })
    .await
    .unwrap();
    assert_eq!(bytes, CHUNK.len() * EVENTS + DONE.len());
    bytes
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let all = frames();
    let mut group = c.benchmark_group("stream");
    group.throughput(Throughput::Elements(EVENTS as u64));
    for channel in [false, true] {
        let label = if channel { "channel" } else { "ready" };
        group.bench_function(format!("bare/{label}"), |b| {
            b.iter(|| {
                runtime.block_on(async { black_box(drain(Upstream::new(&all, channel)).await) })
            })
        });
        let mut service =
            StreamErrorTrailerLayer::new().layer(service_fn(|_req: Request<Full<Bytes>>| {
                let response = Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Upstream::new(&all, channel))
                    .unwrap();
                async move { Ok::<_, Infallible>(response) }
            }));
        group.bench_function(format!("layer/{label}"), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let request = Request::post("/v1/chat/completions")
                        .body(Full::default())
                        .unwrap();
                    let response = service.call(request).await.unwrap();
                    black_box(drain(response.into_body()).await)
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
