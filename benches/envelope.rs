//! What the error model costs: rendering one error, parsing one, and the
//! overhead of `ErrorEnvelopeLayer` on a success response.
//!
//! ```text
//! cargo bench --bench envelope -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Targets: rendering one error < 1 µs; the layer's overhead on a success
//! response < 100 ns over the bare service (`success_response/overhead/*`
//! measures that difference directly).

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use tollgate::ApiError;
use tollgate::envelope::{self, ErrorEnvelopeLayer, ErrorFormat};
use tower::{Layer, Service, service_fn};

fn render(c: &mut Criterion) {
    let error = ApiError::rate_limited()
        .with_message("Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000, Used 29958, Requested 520.")
        .with_retry_after(Duration::from_millis(956))
        .with_request_id("req_0123456789abcdef01234567");
    let mut group = c.benchmark_group("render");
    for format in [
        ErrorFormat::OpenAi,
        ErrorFormat::AltLlm,
        ErrorFormat::Anthropic,
        ErrorFormat::ErrorCodeDetail,
        ErrorFormat::Humanloop,
        ErrorFormat::Grpc,
    ] {
        group.bench_function(format!("{format:?}"), |b| {
            b.iter(|| black_box(format).render(black_box(&error)))
        });
    }
    group.bench_function("into_response", |b| {
        b.iter_batched(
            || error.clone(),
            |e| e.into_http_response(),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn parse(c: &mut Criterion) {
    let body = br#"{"error":{"message":"Incorrect API key provided: sk-abc***def. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    let mut headers = HeaderMap::new();
    headers.insert("x-request-id", HeaderValue::from_static("req_abc"));
    c.bench_function("parse/openai_401", |b| {
        b.iter(|| {
            envelope::parse(
                StatusCode::UNAUTHORIZED,
                black_box(&headers),
                black_box(body),
            )
        })
    });
}

/// The bare service: a ready JSON response, with the one header every real
/// response has, so the header map exists in both variants.
fn ok(_req: Request<Full<Bytes>>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    std::future::ready(Ok(response))
}

fn layer_overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("success_response");
    let id = HeaderValue::from_static("req_0123456789abcdef01234567");
    // Built the same way for both services: a request as clients send it,
    // with a content type and a key, and optionally a request id.
    let request = |with_id: bool| {
        let mut req = Request::new(Full::new(Bytes::new()));
        let headers = req.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("authorization", HeaderValue::from_static("Bearer sk-bench"));
        if with_id {
            req.headers_mut().insert("x-request-id", id.clone());
        }
        req
    };

    for with_id in [false, true] {
        let suffix = if with_id {
            "with_request_id"
        } else {
            "without_request_id"
        };
        let mut bare = service_fn(ok);
        group.bench_function(format!("bare/{suffix}"), |b| {
            b.iter(|| bare.call(request(with_id)).now_or_never())
        });
        let mut wrapped = ErrorEnvelopeLayer::new().layer(service_fn(ok));
        group.bench_function(format!("envelope/{suffix}"), |b| {
            b.iter(|| wrapped.call(request(with_id)).now_or_never())
        });
        // The overhead itself: both services timed in alternating blocks,
        // so a busy machine slows both alike and the difference stays
        // meaningful. Reported per request.
        group.bench_function(format!("overhead/{suffix}"), |b| {
            b.iter_custom(|iters| {
                let (mut with, mut without) = (Duration::ZERO, Duration::ZERO);
                let mut left = iters;
                while left > 0 {
                    let n = left.min(64);
                    let start = Instant::now();
                    for _ in 0..n {
                        black_box(wrapped.call(request(with_id)).now_or_never());
                    }
                    with += start.elapsed();
                    let start = Instant::now();
                    for _ in 0..n {
                        black_box(bare.call(request(with_id)).now_or_never());
                    }
                    without += start.elapsed();
                    left -= n;
                }
                // A sample where noise beat the overhead counts as 1 ns
                // (criterion rejects zero).
                with.saturating_sub(without).max(Duration::from_nanos(1))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, render, parse, layer_overhead);
criterion_main!(benches);
