//! Overhead of `RetryLayer` on a first-try success with a 1 KiB JSON body.
//!
//! `cargo bench --bench retry -- --warm-up-time 1 --measurement-time 3`
//!
//! The inner service answers at once, so the difference between `inner` and
//! `layered` is the layer's own cost: buffering the body for replay (no copy
//! for a `Full<Bytes>`: its one chunk is kept as it is), cloning the request
//! head for the first attempt, the budget deposit, and the response wrapper.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use tollgate::retry::RetryLayer;
use tower::{Layer, Service, service_fn};

fn request(body: &Bytes) -> Request<Full<Bytes>> {
    Request::post("http://upstream.test/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-bench")
        .body(Full::new(body.clone()))
        .unwrap()
}

/// Polls a future that completes without waiting (the inner service here).
fn run<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the bench's inner service never waits"),
    }
}

fn clone_head(req: &Request<Full<Bytes>>) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.headers_mut() = req.headers().clone();
    *head.extensions_mut() = req.extensions().clone();
    head
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let body = Bytes::from(format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(1024 - 65)
    ));
    assert_eq!(body.len(), 1024);

    let inner = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
    });

    let mut group = c.benchmark_group("retry_first_try_success_1KiB");
    group.bench_function("inner", |b| {
        let mut service = inner;
        b.iter(|| {
            let response = run(service.call(request(&body))).unwrap();
            black_box(response)
        })
    });
    // What any replaying retry pays at least: a copy of the request head
    // kept for the next attempt (the body is shared, not copied).
    group.bench_function("inner_plus_head_clone", |b| {
        let mut service = inner;
        b.iter(|| {
            let req = request(&body);
            let kept = clone_head(&req);
            let response = run(service.call(req)).unwrap();
            black_box((response, kept))
        })
    });
    group.bench_function("layered", |b| {
        let mut service = RetryLayer::new().layer(inner);
        b.iter(|| {
            let response = run(service.call(request(&body))).unwrap();
            black_box(response)
        })
    });
    group.bench_function("layered_without_budget", |b| {
        let mut service = RetryLayer::new().without_budget().layer(inner);
        b.iter(|| {
            let response = run(service.call(request(&body))).unwrap();
            black_box(response)
        })
    });
    // What the per-attempt timer (a timer-wheel entry per call) and the
    // generated `Idempotency-Key` (two draws and a formatted header) cost,
    // each measured by leaving it out.
    group.bench_function("layered_without_attempt_timeout", |b| {
        let policy = tollgate::retry::RetryPolicy::new().without_attempt_timeout();
        let mut service = RetryLayer::new().policy(policy).layer(inner);
        b.iter(|| {
            let response = run(service.call(request(&body))).unwrap();
            black_box(response)
        })
    });
    group.bench_function("layered_without_idempotency_key", |b| {
        let mut service = RetryLayer::new().idempotency_key(false).layer(inner);
        b.iter(|| {
            let response = run(service.call(request(&body))).unwrap();
            black_box(response)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
