//! `RetryLayer` against `tower_test::mock`, on paused time.
//!
//! One file for the layer, as each layer has; over 600 lines because each
//! test scripts its own mock upstream and reads alone.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use proptest::prelude::*;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tollgate::clock::TokioClock;
use tollgate::request::FromBytes;
use tollgate::retry::{
    Classification, Classify, DefaultClassifier, ExponentialBackoff, Outcome, RetryBudget,
    RetryInfo, RetryLayer, RetryPolicy, TransportFailure,
};
use tollgate::{ApiError, BoxError, ErrorKind, RetryClass};
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

type ResBody = BoxBody<Bytes, BoxError>;
type Handle<B> = mock::Handle<Request<B>, Response<ResBody>>;
type Call =
    tokio::task::JoinHandle<Result<Response<tollgate::retry::ResponseBody<ResBody>>, BoxError>>;

const NOW: Duration = Duration::from_secs(1_800_000_000); // 2027-01-15T08:00:00Z

fn full(bytes: impl Into<Bytes>) -> ResBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response<ResBody> {
    let mut builder = Response::builder().status(status);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(full(body.to_owned())).unwrap()
}

fn sse(chunks: &[&str]) -> Response<ResBody> {
    let chunks: String = chunks.concat();
    Response::builder()
        .header("content-type", "text/event-stream; charset=utf-8")
        .body(full(chunks))
        .unwrap()
}

/// A stream body fed by the test, chunk by chunk.
fn channel_body() -> (mpsc::UnboundedSender<Result<Bytes, BoxError>>, ResBody) {
    let (tx, rx) = mpsc::unbounded_channel::<Result<Bytes, BoxError>>();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Frame::data), rx))
    });
    (tx, StreamBody::new(stream).boxed())
}

fn request(body: &str) -> Request<Full<Bytes>> {
    Request::post("http://upstream.test/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-test")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

/// No budget, a backoff capped at 500 ms (full jitter: each wait is in
/// [0, 500 ms)), and a wall clock at `NOW`.
fn layer() -> RetryLayer {
    RetryLayer::new()
        .without_budget()
        .clock(Arc::new(TokioClock::starting_at(UNIX_EPOCH + NOW)))
        .policy(
            RetryPolicy::new().backoff(
                ExponentialBackoff::new(Duration::from_millis(500), Duration::from_millis(500))
                    .unwrap(),
            ),
        )
}

/// Calls a layered mock in a task; returns the task and the mock's handle.
fn start<B>(layer: RetryLayer, req: Request<B>) -> (Call, Handle<B>)
where
    B: Body<Data = Bytes> + FromBytes + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (service, handle) = mock::pair::<Request<B>, Response<ResBody>>();
    let service = layer.layer(service);
    (tokio::spawn(service.oneshot(req)), handle)
}

async fn body_string<B>(body: B) -> String
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let bytes = body.collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// `(attempts, total_wait)` of the response's `RetryInfo`.
fn info<B>(response: &Response<B>) -> (u32, Duration) {
    let info: &RetryInfo = response.extensions().get().unwrap();
    (info.attempts, info.total_wait)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Answers each request with the next response; returns the requests and
/// when they arrived.
async fn serve<B>(
    handle: &mut Handle<B>,
    responses: Vec<Response<ResBody>>,
) -> Vec<(Request<B>, Instant)> {
    let mut seen = Vec::new();
    for response in responses {
        let (req, send) = handle.next_request().await.expect("another attempt");
        seen.push((req, Instant::now()));
        send.send_response(response);
    }
    seen
}

#[tokio::test(start_paused = true)]
async fn first_try_success_is_returned_with_retry_info() {
    let (task, mut handle) = start(layer(), request("{}"));
    let seen = serve(&mut handle, vec![response(200, &[], "ok")]).await;
    let res = task.await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(info(&res), (1, Duration::ZERO));
    assert!(!seen[0].0.headers().contains_key("x-retry-count"));
    assert_eq!(body_string(res.into_body()).await, "ok");
}

#[tokio::test(start_paused = true)]
async fn transient_statuses_are_retried_with_the_same_request() {
    for status in [408, 409, 500, 502, 503, 504, 529] {
        let mut req = request(r#"{"model":"m"}"#);
        req.extensions_mut().insert("request-scoped");
        let (task, mut handle) = start(layer(), req);
        let seen = serve(
            &mut handle,
            vec![response(status, &[], "failed"), response(200, &[], "ok")],
        )
        .await;
        let res = task.await.unwrap().unwrap();
        assert_eq!(res.status(), 200, "{status}");
        let (attempts, waited) = info(&res);
        assert_eq!(attempts, 2, "{status}");
        assert!(waited < ms(500), "{status}: {waited:?}");
        let (first, t0) = &seen[0];
        let (retry, t1) = &seen[1];
        assert!(*t1 - *t0 >= waited && *t1 - *t0 <= waited + ms(1));
        assert_eq!(retry.headers()["x-retry-count"], "1");
        assert_eq!(retry.method(), first.method());
        assert_eq!(retry.uri(), first.uri());
        assert_eq!(retry.headers()["authorization"], "Bearer sk-test");
        assert_eq!(retry.extensions().get::<&str>(), Some(&"request-scoped"));
        for (req, _) in seen {
            assert_eq!(body_string(req.into_body()).await, r#"{"model":"m"}"#);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn final_failures_are_returned_at_once_and_intact() {
    let cases: &[(u16, &str)] = &[
        (
            400,
            r#"{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}"#,
        ),
        (
            401,
            r#"{"error":{"message":"Incorrect API key","type":"invalid_request_error","code":"invalid_api_key"}}"#,
        ),
        (402, "payment required"),
        (403, "forbidden"),
        (404, "<html><title>404 Not Found</title></html>"),
        (422, "unprocessable"),
        (
            400,
            r#"{"error":{"message":"filtered","type":"invalid_request_error","code":"content_filter"}}"#,
        ),
        (
            400,
            r#"{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
        ),
        (
            429,
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
        ),
        (
            429,
            r#"{"error":{"message":"spend limit","type":"invalid_request_error","code":"enforced_spend_limit_reached"}}"#,
        ),
    ];
    for (status, body) in cases {
        let (task, mut handle) = start(layer(), request("{}"));
        serve(
            &mut handle,
            vec![response(*status, &[("retry-after", "1")], body)],
        )
        .await;
        let res = task.await.unwrap().unwrap();
        assert_eq!(res.status().as_u16(), *status);
        assert_eq!(info(&res), (1, Duration::ZERO), "{status} {body}");
        assert_eq!(body_string(res.into_body()).await, *body);
    }
}

#[tokio::test(start_paused = true)]
async fn a_large_error_body_comes_back_whole() {
    let big = "x".repeat(200 * 1024);
    let layer = layer()
        .policy(RetryPolicy::new().max_attempts(1))
        .max_error_body_bytes(1024);
    let (task, mut handle) = start(layer.clone(), request("{}"));
    serve(&mut handle, vec![response(500, &[], &big)]).await;
    let res = task.await.unwrap().unwrap();
    assert_eq!(body_string(res.into_body()).await.len(), big.len());

    // Also when it was read (in part) to classify it.
    let (task, mut handle) = start(layer.policy(RetryPolicy::new()), request("{}"));
    serve(&mut handle, vec![response(400, &[], &big)]).await;
    let res = task.await.unwrap().unwrap();
    assert_eq!(info(&res).0, 1);
    assert_eq!(body_string(res.into_body()).await, big);
}

#[tokio::test(start_paused = true)]
async fn rate_limits_wait_for_every_header_format() {
    let http_date = httpdate::fmt_http_date(UNIX_EPOCH + NOW + Duration::from_secs(7));
    let cases: Vec<(Vec<(&str, &str)>, Duration)> = vec![
        (vec![("retry-after-ms", "1234")], ms(1234)),
        (
            vec![("retry-after-ms", "12.5")],
            Duration::from_micros(12_500),
        ),
        (vec![("retry-after", "3")], ms(3000)),
        (vec![("retry-after", "0.75")], ms(750)),
        (vec![("retry-after", &http_date)], ms(7000)),
        (vec![("x-ratelimit-reset-requests", "1s")], ms(1000)),
        (vec![("x-ratelimit-reset-requests", "6m0s")], ms(360_000)),
        (vec![("x-ratelimit-reset-tokens", "12ms")], ms(12)),
        (
            vec![("x-ratelimit-reset-tokens", "1h2m3.5s")],
            Duration::from_secs(120),
        ),
        (
            vec![("x-ratelimit-reset-requests", "2027-01-15T08:00:05Z")],
            ms(5000),
        ),
        (
            vec![
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "2s"),
                ("x-ratelimit-remaining-tokens", "100"),
                ("x-ratelimit-reset-tokens", "30s"),
            ],
            ms(2000),
        ),
        (
            vec![("anthropic-ratelimit-requests-reset", "2027-01-15T08:00:09Z")],
            ms(9000),
        ),
        (
            vec![
                ("anthropic-ratelimit-tokens-remaining", "0"),
                ("anthropic-ratelimit-tokens-reset", "2027-01-15T08:00:04.5Z"),
                ("anthropic-ratelimit-requests-reset", "2027-01-15T08:00:01Z"),
            ],
            ms(4500),
        ),
    ];
    for (headers, expected) in cases {
        // `1h2m3.5s` is over the 120 s cap and the 10 min deadline: lift
        // them here (both are tested on their own below).
        let policy = RetryPolicy::new()
            .max_server_delay(Duration::from_secs(7200))
            .deadline(Duration::from_secs(7200))
            .backoff(ExponentialBackoff::new(ms(500), ms(500)).unwrap());
        let expected = if expected == Duration::from_secs(120) {
            Duration::from_secs(3723) + ms(500)
        } else {
            expected
        };
        let (task, mut handle) = start(layer().policy(policy), request("{}"));
        let seen = serve(
            &mut handle,
            vec![
                response(429, &headers, "slow down"),
                response(200, &[], "ok"),
            ],
        )
        .await;
        let res = task.await.unwrap().unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(info(&res), (2, expected), "{headers:?}");
        // tokio's timer rounds up to the millisecond.
        let waited = seen[1].1 - seen[0].1;
        assert!(
            waited >= expected && waited <= expected + ms(1),
            "{headers:?}: {waited:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_without_a_hint_backs_off() {
    let (task, mut handle) = start(layer(), request("{}"));
    let seen = serve(
        &mut handle,
        vec![
            response(429, &[("x-ratelimit-remaining-requests", "0")], "slow down"),
            response(200, &[], "ok"),
        ],
    )
    .await;
    let res = task.await.unwrap().unwrap();
    let (attempts, waited) = info(&res);
    assert_eq!(attempts, 2);
    assert!(waited < ms(500), "{waited:?}");
    assert!(seen[1].1 - seen[0].1 <= ms(500));
}

#[tokio::test(start_paused = true)]
async fn a_server_delay_over_the_cap_returns_the_response() {
    for headers in [
        vec![("retry-after", "121")],
        vec![("retry-after-ms", "120001")],
        vec![("x-ratelimit-reset-requests", "2m1s")],
        vec![("retry-after", "Fri, 15 Jan 2027 09:00:00 GMT")],
    ] {
        let (task, mut handle) = start(layer(), request("{}"));
        serve(&mut handle, vec![response(429, &headers, "later")]).await;
        let res = task.await.unwrap().unwrap();
        assert_eq!(res.status(), 429);
        assert_eq!(info(&res), (1, Duration::ZERO), "{headers:?}");
        assert_eq!(res.headers()[headers[0].0], headers[0].1);
        assert_eq!(body_string(res.into_body()).await, "later");
    }
}

#[tokio::test(start_paused = true)]
async fn the_deadline_is_never_passed() {
    let policy = RetryPolicy::new()
        .max_attempts(10)
        .deadline(Duration::from_secs(5));
    let started = Instant::now();
    let (task, mut handle) = start(layer().policy(policy), request("{}"));
    let hint = [("retry-after", "2")];
    serve(
        &mut handle,
        vec![
            response(503, &hint, "1"),
            response(503, &hint, "2"),
            response(503, &hint, "3"),
        ],
    )
    .await;
    let res = task.await.unwrap().unwrap();
    // Attempts at 0 s, 2 s, 4 s; a third wait would end at 6 s.
    assert_eq!(info(&res), (3, Duration::from_secs(4)));
    assert_eq!(body_string(res.into_body()).await, "3");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn attempts_are_limited_globally_and_per_kind() {
    let policy = RetryPolicy::new()
        .max_attempts(4)
        .attempts_for(ErrorKind::Overloaded, 2)
        .backoff(ExponentialBackoff::new(ms(500), ms(500)).unwrap());
    let (task, mut handle) = start(layer().policy(policy.clone()), request("{}"));
    serve(
        &mut handle,
        vec![response(529, &[], ""), response(529, &[], "last")],
    )
    .await;
    let res = task.await.unwrap().unwrap();
    assert_eq!(info(&res).0, 2);
    assert_eq!(body_string(res.into_body()).await, "last");

    // Other kinds in between do not use up the 529 allowance...
    let (task, mut handle) = start(layer().policy(policy.clone()), request("{}"));
    serve(
        &mut handle,
        vec![
            response(529, &[], ""),
            response(503, &[], ""),
            response(529, &[], "third"),
        ],
    )
    .await;
    let res = task.await.unwrap().unwrap();
    assert_eq!(info(&res).0, 3);
    assert_eq!(body_string(res.into_body()).await, "third");

    // ...but every attempt counts against the global limit.
    let (task, mut handle) = start(layer().policy(policy), request("{}"));
    serve(
        &mut handle,
        vec![
            response(529, &[], ""),
            response(503, &[], ""),
            response(500, &[], ""),
            response(502, &[], "fourth"),
        ],
    )
    .await;
    let res = task.await.unwrap().unwrap();
    assert_eq!(info(&res).0, 4);
    assert_eq!(body_string(res.into_body()).await, "fourth");

    // The default: 3 attempts in total, like the SDKs' 2 retries.
    let (task, mut handle) = start(layer(), request("{}"));
    let seen = serve(
        &mut handle,
        vec![
            response(500, &[], ""),
            response(502, &[], ""),
            response(503, &[], "third"),
        ],
    )
    .await;
    let res = task.await.unwrap().unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(seen[2].0.headers()["x-retry-count"], "2");
    let (attempts, waited) = info(&res);
    assert_eq!(attempts, 3);
    assert!(waited < ms(1000), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn x_should_retry_overrides_both_ways() {
    let (task, mut handle) = start(layer(), request("{}"));
    serve(
        &mut handle,
        vec![
            response(400, &[("x-should-retry", "true")], "retry me"),
            response(200, &[], "ok"),
        ],
    )
    .await;
    let res = task.await.unwrap().unwrap();
    assert_eq!((res.status().as_u16(), info(&res).0), (200, 2));

    let (task, mut handle) = start(layer(), request("{}"));
    serve(
        &mut handle,
        vec![response(503, &[("x-should-retry", "false")], "stop")],
    )
    .await;
    let res = task.await.unwrap().unwrap();
    assert_eq!((res.status().as_u16(), info(&res).0), (503, 1));
    assert_eq!(body_string(res.into_body()).await, "stop");
}

#[tokio::test(start_paused = true)]
async fn connection_errors_are_retried_then_returned_as_is() {
    let (task, mut handle) = start(layer(), request("{}"));
    for _ in 0..3 {
        let (_, send) = handle.next_request().await.unwrap();
        send.send_error(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
    }
    let error = task.await.unwrap().unwrap_err();
    let io = error
        .downcast_ref::<std::io::Error>()
        .expect("the inner error, as is");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);

    // One refused connection, then a success. (A reset after the request
    // was sent is another matter: see `retry/transport.rs`.)
    let (task, mut handle) = start(layer(), request("{}"));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connection refused",
    ));
    serve(&mut handle, vec![response(200, &[], "ok")]).await;
    let res = task.await.unwrap().unwrap();
    assert_eq!(info(&res).0, 2);
    assert!(info(&res).1 < ms(500));
}

#[tokio::test(start_paused = true)]
async fn a_readiness_error_is_returned() {
    let (service, mut handle) = mock::pair::<Request<Full<Bytes>>, Response<ResBody>>();
    let mut service = layer().layer(service);
    handle.send_error("pool closed");
    let error = service.ready().await.map(|_| ()).unwrap_err();
    assert_eq!(error.to_string(), "pool closed");
}

#[tokio::test(start_paused = true)]
async fn the_budget_runs_dry_during_an_outage() {
    // 10 s window, a floor of 1 retry per second (10 in the window), and
    // 10 % of requests. No backoff, so the clock (and the window) stand still.
    let budget = RetryBudget::new(Duration::from_secs(10), 1, 0.1).unwrap();
    let layer = layer()
        .budget(budget.clone())
        .policy(RetryPolicy::new().backoff(ExponentialBackoff::new(ms(0), ms(0)).unwrap()));
    let (service, mut handle) = mock::pair::<Request<Full<Bytes>>, Response<ResBody>>();
    let service = layer.layer(service);

    let outage = tokio::spawn(async move {
        let mut calls = 0u32;
        while let Some((_, send)) = handle.next_request().await {
            calls += 1;
            send.send_response(response(503, &[], "down"));
        }
        calls
    });
    let mut attempts = Vec::new();
    for _ in 0..100 {
        let res = service.clone().oneshot(request("{}")).await.unwrap();
        assert_eq!(res.status(), 503);
        attempts.push(info(&res).0);
    }
    drop(service);
    let calls = outage.await.unwrap();
    // 3 attempts each would be 300 calls. The budget allows 10 + 10 % of 100.
    assert_eq!(calls, 100 + 20, "{attempts:?}");
    assert_eq!(&attempts[..5], &[3, 3, 3, 3, 3]);
    assert!(attempts[50..].iter().filter(|a| **a > 1).count() <= 5);
    assert_eq!(budget.available(), 0);
}

/// A request body of several chunks with an exact size, like an axum body
/// with a content-length; optionally failing.
struct Chunked {
    chunks: VecDeque<Result<Bytes, &'static str>>,
    len: u64,
}

impl Chunked {
    fn new(chunks: &[&'static str]) -> Self {
        Chunked {
            len: chunks.iter().map(|c| c.len() as u64).sum(),
            chunks: chunks
                .iter()
                .map(|c| Ok(Bytes::from_static(c.as_bytes())))
                .collect(),
        }
    }
}

impl Body for Chunked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(
            self.chunks
                .pop_front()
                .map(|c| c.map(Frame::data).map_err(Into::into)),
        )
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

impl FromBytes for Chunked {
    fn from_bytes(bytes: Bytes) -> Self {
        Chunked {
            len: bytes.len() as u64,
            chunks: VecDeque::from([Ok(bytes)]),
        }
    }
}

fn chunked_request(body: Chunked) -> Request<Chunked> {
    Request::post("http://upstream.test/v1/chat/completions")
        .body(body)
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_streamed_body_is_buffered_and_replayed() {
    let body = Chunked::new(&[r#"{"model":"#, r#""m","#, r#""stream":false}"#]);
    let (task, mut handle) = start(layer(), chunked_request(body));
    let seen = serve(
        &mut handle,
        vec![response(502, &[], ""), response(200, &[], "ok")],
    )
    .await;
    assert_eq!(task.await.unwrap().unwrap().status(), 200);
    for (req, _) in seen {
        assert_eq!(
            body_string(req.into_body()).await,
            r#"{"model":"m","stream":false}"#
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_cap_is_sent_once() {
    let layer = layer().max_request_body_bytes(10);
    let (task, mut handle) = start(layer.clone(), request("{\"model\":\"m\"}"));
    let seen = serve(&mut handle, vec![response(503, &[], "down")]).await;
    let res = task.await.unwrap().unwrap();
    assert_eq!((res.status().as_u16(), info(&res).0), (503, 1));
    let (req, _) = seen.into_iter().next().unwrap();
    assert_eq!(body_string(req.into_body()).await, "{\"model\":\"m\"}");

    // A body of unknown length cannot be bounded: sent once as it is.
    let (tx, rx) = mpsc::unbounded_channel::<Result<Frame<Bytes>, BoxError>>();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let body: BoxBody<Bytes, BoxError> = StreamBody::new(stream).boxed();
    tx.send(Ok(Frame::data(Bytes::from_static(b"streamed"))))
        .unwrap();
    drop(tx);
    let req = Request::post("http://upstream.test/").body(body).unwrap();
    let (task, mut handle) = start(RetryLayer::new(), req);
    let seen = serve(&mut handle, vec![response(503, &[], "down")]).await;
    let res = task.await.unwrap().unwrap();
    assert_eq!(info(&res).0, 1);
    let (req, _) = seen.into_iter().next().unwrap();
    assert_eq!(body_string(req.into_body()).await, "streamed");
}

#[tokio::test(start_paused = true)]
async fn a_failing_request_body_is_a_400_and_no_call() {
    let mut body = Chunked::new(&["{\"a\":"]);
    body.chunks.push_back(Err("client went away"));
    let (service, mut handle) = mock::pair::<Request<Chunked>, Response<ResBody>>();
    let res = layer()
        .layer(service)
        .oneshot(chunked_request(body))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let error = res.extensions().get::<ApiError>().unwrap();
    assert_eq!(error.message(), "The request body could not be read.");
    // The upstream was never called (and the mock is gone with the service).
    assert!(matches!(handle.poll_request(), Poll::Ready(None)));
}

#[tokio::test(start_paused = true)]
async fn an_error_as_the_first_event_is_retried() {
    let openai_error = "data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n";
    let anthropic_error = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let good = [
        ": keep-alive\n\n",
        "data: {\"id\":\"1\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
        "data: [DONE]\n\n",
    ];
    for error in [openai_error, anthropic_error] {
        let (task, mut handle) = start(layer(), request(r#"{"stream":true}"#));
        let seen = serve(&mut handle, vec![sse(&[error]), sse(&good)]).await;
        let res = task.await.unwrap().unwrap();
        assert_eq!(info(&res).0, 2);
        assert_eq!(seen[1].0.headers()["x-retry-count"], "1");
        assert_eq!(body_string(res.into_body()).await, good.concat());
    }

    // A final in-band error (a bad request) is handed over as it came.
    let final_error = "data: {\"error\":{\"message\":\"too long\",\"type\":\"invalid_request_error\",\"code\":\"context_length_exceeded\"}}\n\n";
    let (task, mut handle) = start(layer(), request(r#"{"stream":true}"#));
    serve(&mut handle, vec![sse(&[final_error])]).await;
    let res = task.await.unwrap().unwrap();
    assert_eq!(info(&res).0, 1);
    assert_eq!(body_string(res.into_body()).await, final_error);
}

#[tokio::test(start_paused = true)]
async fn an_error_after_the_first_event_is_not_retried() {
    let (task, mut handle) = start(layer(), request(r#"{"stream":true}"#));
    let (tx, body) = channel_body();
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap(),
    );
    let first = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n";
    // The first event arrives in two pieces; the response is held until it
    // is complete, then handed over while the stream is still open.
    tx.send(Ok(Bytes::from(&first[..10]))).unwrap();
    tokio::task::yield_now().await;
    assert!(!task.is_finished());
    tx.send(Ok(Bytes::from(&first[10..]))).unwrap();
    let res = task.await.unwrap().unwrap();
    assert_eq!(info(&res).0, 1);
    let later_error = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    tx.send(Ok(Bytes::from(later_error))).unwrap();
    drop(tx);
    assert_eq!(
        body_string(res.into_body()).await,
        format!("{first}{later_error}")
    );
    // No second attempt was made.
    assert!(matches!(
        handle.poll_request(),
        Poll::Pending | Poll::Ready(None)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_silent_stream_is_handed_over_after_the_peek_timeout() {
    let layer = layer().peek_timeout(Duration::from_secs(2));
    let (task, mut handle) = start(layer, request(r#"{"stream":true}"#));
    let (tx, body) = channel_body();
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap(),
    );
    let started = Instant::now();
    tx.send(Ok(Bytes::from_static(b": still thinking\n\n")))
        .unwrap();
    let res = task.await.unwrap().unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(info(&res).0, 1);
    tx.send(Ok(Bytes::from_static(b"data: 1\n\n"))).unwrap();
    drop(tx);
    assert_eq!(
        body_string(res.into_body()).await,
        ": still thinking\n\ndata: 1\n\n"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_broken_before_its_first_event_is_retried() {
    let (task, mut handle) = start(layer(), request(r#"{"stream":true}"#));
    let (tx, body) = channel_body();
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap(),
    );
    tx.send(Ok(Bytes::from_static(b"data: {\"choi"))).unwrap();
    tx.send(Err("connection reset".into())).unwrap();
    serve(&mut handle, vec![sse(&["data: ok\n\n"])]).await;
    let res = task.await.unwrap().unwrap();
    assert_eq!(info(&res).0, 2);
    assert_eq!(body_string(res.into_body()).await, "data: ok\n\n");
}

#[tokio::test(start_paused = true)]
async fn streams_are_not_peeked_when_disabled() {
    let error = "data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n";
    let (task, mut handle) = start(layer().peek_streams(false), request("{}"));
    serve(&mut handle, vec![sse(&[error])]).await;
    let res = task.await.unwrap().unwrap();
    assert_eq!(info(&res).0, 1);
    assert_eq!(body_string(res.into_body()).await, error);
}

#[tokio::test(start_paused = true)]
async fn a_custom_classifier_decides() {
    // Retry 404s (a model still loading), defer to the default otherwise.
    let classify = |outcome: &Outcome<'_>| {
        if outcome.status() == StatusCode::NOT_FOUND {
            return Classification::failure(ErrorKind::NotFound)
                .with_class(RetryClass::Transient)
                .with_retry_after(Duration::from_secs(1));
        }
        DefaultClassifier::new().classify(outcome)
    };
    let (task, mut handle) = start(layer().classify(classify), request("{}"));
    serve(
        &mut handle,
        vec![response(404, &[], ""), response(400, &[], "bad")],
    )
    .await;
    let res = task.await.unwrap().unwrap();
    assert_eq!((res.status().as_u16(), info(&res)), (400, (2, ms(1000))));
}

#[path = "support/logs.rs"]
mod logs_support;

#[tokio::test(start_paused = true)]
async fn every_retry_is_a_tracing_event() {
    let captured = logs_support::captured();
    let (service, mut handle) = mock::pair::<Request<Full<Bytes>>, Response<ResBody>>();
    let call = layer().layer(service).oneshot(request("{}"));
    let serve = serve(
        &mut handle,
        vec![
            response(503, &[("retry-after", "2.345")], ""),
            response(200, &[], ""),
        ],
    );
    let (res, _) = tokio::join!(call, serve);
    assert_eq!(res.unwrap().status(), 200);
    let logs = captured.text();
    assert!(logs.contains("retrying request"), "{logs}");
    assert!(logs.contains("kind=service_unavailable"), "{logs}");
    assert!(logs.contains("class=Transient"), "{logs}");
    assert!(logs.contains("delay_ms=2345"), "{logs}");
    assert!(!logs.contains("sk-test"), "{logs}");
}

#[test]
fn layer_and_service_are_clone_and_debug() {
    let layer = RetryLayer::new();
    let debug = format!("{layer:?}");
    assert!(debug.contains("max_attempts: 3"), "{debug}");
    let service = layer
        .clone()
        .layer(tower::service_fn(|_: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }));
    let mut service = service.clone();
    let _ = service.get_ref();
    let _ = service.get_mut();
    let _ = service.into_inner();
}

#[test]
fn config_errors_say_what_is_wrong() {
    let e = ExponentialBackoff::new(ms(10), ms(1)).unwrap_err();
    assert!(e.to_string().contains("initial delay"), "{e}");
    let e = RetryBudget::new(Duration::from_secs(120), 1, 0.2).unwrap_err();
    assert!(e.to_string().contains("between 1 s and 60 s"), "{e}");
}

#[path = "retry/schedule.rs"]
mod schedule;
#[path = "retry/transport.rs"]
mod transport;
#[path = "retry/wire.rs"]
mod wire;

#[allow(dead_code)]
fn assert_send<T: Send>(_: &T) {}

#[allow(dead_code)]
fn the_future_is_send(
    service: tollgate::retry::Retry<mock::Mock<Request<Full<Bytes>>, Response<ResBody>>>,
) {
    let mut service = service;
    let future = service.call(request("{}"));
    assert_send(&future);
    let _ = HeaderMap::new();
}
