use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::sync::mpsc;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt, service_fn};

use super::*;
use crate::usage::{self, BodyEnd, UsageOptions, UsageReport};

type Frames = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;
type Slot = Arc<Mutex<Option<UsageReport>>>;
type Detached =
    BoxCloneService<Request<Full<Bytes>>, Response<UnsyncBoxBody<Bytes, BoxError>>, Infallible>;

/// A service whose response body is fed by the test through the returned
/// sender; its usage report lands in the returned slot.
fn fed(layer: DetachLayer) -> (Detached, mpsc::Receiver<Frames>, Slot) {
    let (senders, senders_rx) = mpsc::channel(4);
    let report = Arc::new(Mutex::new(None));
    let slot = report.clone();
    let service = ServiceBuilder::new()
        .map_response(|response: Response<_>| response.map(BodyExt::boxed_unsync))
        .layer(layer)
        .map_response(move |response| {
            let slot = slot.clone();
            usage::observe(response, UsageOptions::default(), move |r| {
                *slot.lock().unwrap() = Some(*r);
            })
        })
        .service(service_fn(move |_req: Request<Full<Bytes>>| {
            let senders = senders.clone();
            async move {
                let (tx, rx) = mpsc::channel(16);
                senders.send(tx).await.unwrap();
                let stream = tokio_stream(rx);
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(StreamBody::new(stream))
                        .unwrap(),
                )
            }
        }));
    (BoxCloneService::new(service), senders_rx, report)
}

/// A call through [`fed`] with `layer`: its response, the sender of its
/// body's frames and its usage report's slot.
async fn started(layer: DetachLayer) -> (Response<UnsyncBoxBody<Bytes, BoxError>>, Frames, Slot) {
    let (service, mut senders, report) = fed(layer);
    let response = service.oneshot(Request::new(Full::default())).await;
    let frames = senders.recv().await.unwrap();
    (response.unwrap(), frames, report)
}

/// `rx` as a stream (no tokio-stream dependency).
fn tokio_stream<T: Send + 'static>(rx: mpsc::Receiver<T>) -> impl futures_core::Stream<Item = T> {
    struct Rx<T>(mpsc::Receiver<T>);
    impl<T> futures_core::Stream for Rx<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
    Rx(rx)
}

fn event(text: &str) -> Result<Frame<Bytes>, Infallible> {
    Ok(Frame::data(Bytes::from(format!("data: {text}\n\n"))))
}

const CONTENT: &str = r#"{"choices":[{"index":0,"delta":{"content":"abcdefgh"}}]}"#;
const USAGE: &str =
    r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":40,"total_tokens":47}}"#;

async fn report_within(slot: &Slot) -> UsageReport {
    for _ in 0..200 {
        if let Some(report) = *slot.lock().unwrap() {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no usage report");
}

#[tokio::test]
async fn the_client_reads_every_frame() {
    let (response, frames, report) = started(DetachLayer::new()).await;
    frames.send(event(CONTENT)).await.unwrap();
    frames.send(event(USAGE)).await.unwrap();
    drop(frames);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        format!("data: {CONTENT}\n\ndata: {USAGE}\n\n").as_bytes()
    );
    let report = report_within(&report).await;
    assert_eq!(report.end, BodyEnd::Completed);
    assert_eq!(report.usage.total_tokens, 47);
}

#[tokio::test]
async fn a_body_dropped_mid_stream_is_read_to_its_usage() {
    let (response, frames, report) = started(DetachLayer::new()).await;
    frames.send(event(CONTENT)).await.unwrap();
    let mut body = response.into_body();
    assert!(body.frame().await.is_some());
    drop(body); // the client hangs up
    frames.send(event(CONTENT)).await.unwrap();
    frames.send(event(USAGE)).await.unwrap();
    drop(frames);
    let report = report_within(&report).await;
    assert_eq!(report.end, BodyEnd::Completed);
    assert_eq!(report.usage.completion_tokens, 40);
}

#[tokio::test]
async fn a_call_whose_head_nobody_waits_for_still_runs() {
    let (service, mut senders, report) = fed(DetachLayer::new());
    let call = tokio::spawn(service.oneshot(Request::new(Full::default())));
    let frames = senders.recv().await.unwrap();
    call.abort(); // the client hangs up before the head
    let _ = call.await;
    frames.send(event(USAGE)).await.unwrap();
    drop(frames);
    let report = report_within(&report).await;
    assert_eq!(report.end, BodyEnd::Completed);
    assert_eq!(report.usage.total_tokens, 47);
}

#[tokio::test(start_paused = true)]
async fn the_drain_stops_at_its_time_limit() {
    let layer = DetachLayer::new().drain_timeout(Duration::from_secs(5));
    let (response, frames, report) = started(layer).await;
    frames.send(event(CONTENT)).await.unwrap();
    drop(response);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(report.lock().unwrap().is_none(), "still draining");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = report_within(&report).await;
    assert_eq!(report.end, BodyEnd::Dropped);
    // The estimate: the content seen (8 characters, 2 tokens).
    assert_eq!(report.usage.completion_tokens, 2);
    drop(frames);
}

#[tokio::test]
async fn the_drain_stops_at_its_byte_limit() {
    let layer = DetachLayer::new().max_drain_bytes(100);
    let (response, frames, report) = started(layer).await;
    drop(response);
    // 66 bytes each: the second passes the limit.
    for _ in 0..3 {
        frames.send(event(CONTENT)).await.unwrap();
    }
    let report = report_within(&report).await;
    assert_eq!(report.end, BodyEnd::Dropped);
    assert_eq!(
        report.usage.completion_tokens, 4,
        "two events of 8 characters"
    );
    assert!(
        frames.send(event(USAGE)).await.is_err(),
        "the body was dropped"
    );
}

#[tokio::test]
async fn errors_and_panics_reach_the_caller() {
    let failing = DetachLayer::new().layer(service_fn(|_req: Request<()>| async {
        Err::<Response<Full<Bytes>>, _>("refused")
    }));
    assert_eq!(
        failing.oneshot(Request::new(())).await.unwrap_err(),
        "refused"
    );
    let panicking = DetachLayer::new().layer(service_fn(|_req: Request<()>| async {
        if true {
            panic!("boom");
        }
        Ok::<Response<Full<Bytes>>, Infallible>(Response::new(Full::default()))
    }));
    let caught = tokio::spawn(panicking.oneshot(Request::new(()))).await;
    assert!(caught.unwrap_err().is_panic());
}

#[test]
fn without_a_runtime_a_call_still_answers() {
    // In place, a call needs no runtime; only handing it on would.
    let mut service = DetachLayer::new().layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("ok")))
    }));
    let future = service.call(Request::new(()));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(response)) => {
            assert_eq!(response.status(), StatusCode::OK);
            let mut body = std::pin::pin!(response.into_body());
            match body.as_mut().poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    assert_eq!(frame.into_data().unwrap(), Bytes::from("ok"));
                }
                _ => panic!("expected the body's frame"),
            }
        }
        _ => panic!("expected the answer at once"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_left_before_its_head_runs_on_in_a_task_and_is_counted() {
    // The call is still waiting for its upstream when the client leaves:
    // it moves to a task, counted as running until its body was drained.
    let calls = DetachedCalls::new();
    let report: Slot = Arc::new(Mutex::new(None));
    let slot = report.clone();
    let service = ServiceBuilder::new()
        .layer(DetachLayer::new().calls(calls.clone()))
        .map_response(move |response| {
            let slot = slot.clone();
            usage::observe(response, UsageOptions::default(), move |r| {
                *slot.lock().unwrap() = Some(*r);
            })
        })
        .service(service_fn(|_req: Request<()>| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let body = Full::new(Bytes::from(format!("data: {USAGE}\n\n")));
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(body)
                    .unwrap(),
            )
        }));
    let mut call = Box::pin(service.oneshot(Request::new(())));
    let waited = tokio::time::timeout(Duration::from_millis(10), call.as_mut()).await;
    assert!(waited.is_err(), "the upstream answers after a second");
    assert_eq!(calls.running(), 1);
    drop(call);
    assert_eq!(calls.running(), 1, "handed to a task, still running");
    let report = report_within(&report).await;
    assert_eq!(report.end, BodyEnd::Completed);
    assert_eq!(report.usage.total_tokens, 47);
    tokio::time::timeout(Duration::from_secs(5), calls.idle())
        .await
        .expect("idle once the drain ended");
}

#[tokio::test(start_paused = true)]
async fn the_calls_still_draining_are_counted() {
    let calls = DetachedCalls::new();
    let layer = DetachLayer::new()
        .drain_timeout(Duration::from_secs(5))
        .calls(calls.clone());
    assert_eq!(calls.running(), 0);
    let (response, frames, _report) = started(layer).await;
    assert_eq!(calls.running(), 1);
    drop(response);
    let idle = tokio::spawn({
        let calls = calls.clone();
        async move { calls.idle().await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!idle.is_finished(), "the call is still draining");
    drop(frames); // the upstream ends
    tokio::time::timeout(Duration::from_secs(1), idle)
        .await
        .expect("idle once the drain ended")
        .unwrap();
    assert_eq!(calls.running(), 0);
}

#[tokio::test]
async fn a_body_dropped_at_its_end_needs_no_task() {
    // hyper stops polling a body that says it is at its end, and drops it:
    // that is a body read whole, not a client that left.
    let calls = DetachedCalls::new();
    let service =
        DetachLayer::new()
            .calls(calls.clone())
            .layer(service_fn(|_req: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("whole"))))
            }));
    let response = service.oneshot(Request::new(())).await.unwrap();
    let mut body = Box::pin(response.into_body());
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), Bytes::from("whole"));
    assert!(body.is_end_stream());
    assert_eq!(calls.running(), 1);
    drop(body);
    // Counted out at once: no task was spawned to drain it.
    assert_eq!(calls.running(), 0);
}
