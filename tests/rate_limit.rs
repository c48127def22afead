//! RateLimitLayer end to end, on tokio's paused clock, with GCRA limits
//! (what these tests were written for; `rate_limit_scopes.rs` covers the
//! default sliding windows, scopes and the other algorithms).
//!
//! Over 600 lines: one file for the layer's GCRA behaviour, each test with
//! its own stack and clock, reading alone.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderName, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tollgate::auth::{KeyHash, KeyRecord, Principal};
use tollgate::clock::TokioClock;
use tollgate::envelope::ErrorEnvelopeLayer;
use tollgate::rate_limit::{
    Acquire, Admission, Algorithm, FailurePolicy, HeaderKey, HeaderStyle, Limit, RateLimitKey,
    RateLimitLayer, RateLimitStore, ResponseBody, ScopeCharge, ScopeSettle, Settle, Unkeyed,
};
use tollgate::store::memory::MemoryRateLimitStore;
use tollgate::store::{StoreError, StoreFuture};
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

type Svc = BoxCloneService<Request<Full<Bytes>>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

/// `limit` counted with GCRA.
fn gcra(limit: Limit) -> Limit {
    limit.algorithm(Algorithm::Gcra)
}

fn principal(id: &str, limits: &[Limit], max_concurrent: Option<u32>) -> Principal {
    let mut record = KeyRecord::new(id, KeyHash([0; 32]));
    record.rate_limits = limits.iter().copied().map(gcra).collect();
    record.max_concurrent = max_concurrent;
    Principal::new(record)
}

fn request(principal: Option<&Principal>, body: &str) -> Request<Full<Bytes>> {
    let mut req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    if let Some(p) = principal {
        req.extensions_mut().insert(p.clone());
    }
    req
}

fn chat(model: &str, max_tokens: u64) -> String {
    format!(
        r#"{{"model":"{model}","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"abcdefgh"}}]}}"#
    )
}

fn ok_service(layer: RateLimitLayer<impl RateLimitStore + Clone>) -> Svc {
    BoxCloneService::new(ServiceBuilder::new().layer(layer).service(service_fn(
        |_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        },
    )))
}

async fn send(svc: &mut Svc, req: Request<Full<Bytes>>) -> Response<ResponseBody<Full<Bytes>>> {
    svc.ready().await.unwrap().call(req).await.unwrap()
}

fn header<'a, B>(r: &'a Response<B>, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

async fn error_json<B: Body<Data = Bytes>>(r: Response<B>) -> serde_json::Value
where
    B::Error: std::fmt::Debug,
{
    let bytes = r.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// Sends `n` requests now and counts the admitted ones.
async fn burst(svc: &mut Svc, p: &Principal, n: usize) -> usize {
    let mut admitted = 0;
    for _ in 0..n {
        if send(svc, request(Some(p), "")).await.status() == StatusCode::OK {
            admitted += 1;
        }
    }
    admitted
}

#[tokio::test(start_paused = true)]
async fn exact_admission_counts_over_windows() {
    let alice = principal("alice", &[Limit::requests_per_minute(60)], None);
    let mut svc = ok_service(RateLimitLayer::new());

    assert_eq!(burst(&mut svc, &alice, 100).await, 60);
    // One per second refills; nothing in between.
    tokio::time::advance(Duration::from_millis(999)).await;
    assert_eq!(burst(&mut svc, &alice, 5).await, 0);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(burst(&mut svc, &alice, 5).await, 1);

    // Under constant demand (a request every 100 ms for 10 minutes), exactly
    // one per second is admitted.
    let mut admitted = 0;
    for _ in 0..6000 {
        tokio::time::advance(Duration::from_millis(100)).await;
        admitted += burst(&mut svc, &alice, 1).await;
    }
    assert_eq!(admitted, 600);

    // An idle window refills the whole burst, and no more.
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(burst(&mut svc, &alice, 100).await, 60);
}

#[tokio::test(start_paused = true)]
async fn burst_then_refill() {
    let bob = principal("bob", &[Limit::requests(10, Duration::from_secs(10))], None);
    let mut svc = ok_service(RateLimitLayer::new());
    assert_eq!(burst(&mut svc, &bob, 15).await, 10);
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(burst(&mut svc, &bob, 3).await, 1);
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(burst(&mut svc, &bob, 15).await, 5);
}

#[tokio::test(start_paused = true)]
async fn rejection_is_a_429_naming_the_limit() {
    let carol = principal("carol", &[Limit::requests_per_minute(60)], None);
    let mut svc = ok_service(RateLimitLayer::new());
    assert_eq!(burst(&mut svc, &carol, 60).await, 60);
    tokio::time::advance(Duration::from_millis(400)).await;
    let r = send(&mut svc, request(Some(&carol), "")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "retry-after"), "1");
    assert_eq!(header(&r, "retry-after-ms"), "600");
    assert_eq!(header(&r, "x-should-retry"), "true");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "0");
    assert!(r.extensions().get::<tollgate::ApiError>().is_some());
    let json = error_json(r).await;
    assert_eq!(
        json["error"]["message"],
        "Rate limit exceeded: 60 requests per minute"
    );
    assert_eq!(json["error"]["type"], "rate_limit_error");
    assert_eq!(json["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_never_zero() {
    // 1000 per second: a refused request may retry after 1 ms.
    let dave = principal(
        "dave",
        &[Limit::requests(1000, Duration::from_secs(1))],
        None,
    );
    let mut svc = ok_service(RateLimitLayer::new());
    assert_eq!(burst(&mut svc, &dave, 1000).await, 1000);
    let r = send(&mut svc, request(Some(&dave), "")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "retry-after"), "1");
    assert_eq!(header(&r, "retry-after-ms"), "1");
    assert_eq!(header(&r, "x-ratelimit-reset-requests"), "1s");

    // A sub-millisecond wait still says 1 ms, never 0.
    let odd = principal(
        "odd",
        &[Limit::requests(3, Duration::from_micros(1001))],
        None,
    );
    assert_eq!(burst(&mut svc, &odd, 3).await, 3);
    let r = send(&mut svc, request(Some(&odd), "")).await;
    assert_eq!(header(&r, "retry-after-ms"), "1");
    assert_eq!(header(&r, "retry-after"), "1");
}

#[tokio::test(start_paused = true)]
async fn openai_headers_on_every_response() {
    let erin = principal(
        "erin",
        &[
            Limit::requests_per_minute(3),
            Limit::tokens(1000, Duration::from_secs(360)),
        ],
        None,
    );
    let mut svc = ok_service(RateLimitLayer::new().default_max_tokens(100));
    let r = send(&mut svc, request(Some(&erin), &chat("m", 98))).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "3");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "2");
    assert_eq!(header(&r, "x-ratelimit-reset-requests"), "20s");
    assert_eq!(header(&r, "x-ratelimit-limit-tokens"), "1000");
    // 98 max_tokens + 2 prompt tokens ("abcdefgh" / 4) reserved.
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), "900");
    assert_eq!(header(&r, "x-ratelimit-reset-tokens"), "36s");

    // Responses still streaming hold their reservations.
    let mut open = vec![r];
    for _ in 0..2 {
        open.push(send(&mut svc, request(Some(&erin), &chat("m", 98))).await);
    }
    let r = send(&mut svc, request(Some(&erin), &chat("m", 98))).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "0");
    assert_eq!(header(&r, "x-ratelimit-reset-requests"), "1m0s");
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), "700");
    assert_eq!(header(&r, "x-ratelimit-reset-tokens"), "1m48s");
    drop(open);
}

#[tokio::test(start_paused = true)]
async fn timestamp_headers() {
    let start = UNIX_EPOCH + Duration::from_secs(1_774_009_800); // 2026-03-20T12:30:00Z
    let frank = principal("frank", &[Limit::requests_per_minute(2)], None);
    let mut svc = ok_service(
        RateLimitLayer::new()
            .headers(HeaderStyle::Timestamp)
            .clock(Arc::new(TokioClock::starting_at(start))),
    );
    tokio::time::advance(Duration::from_millis(250)).await;
    let r = send(&mut svc, request(Some(&frank), "")).await;
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "2");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "1");
    assert_eq!(
        header(&r, "x-ratelimit-reset-requests"),
        "2026-03-20T12:30:30Z"
    );
}

#[tokio::test(start_paused = true)]
async fn ietf_headers() {
    let gus = principal(
        "gus",
        &[
            Limit::requests_per_minute(60),
            Limit::tokens_per_day(100_000),
        ],
        None,
    );
    let mut svc = ok_service(RateLimitLayer::new().headers(HeaderStyle::Ietf));
    let r = send(&mut svc, request(Some(&gus), &chat("m", 998))).await;
    assert_eq!(
        header(&r, "ratelimit-policy"),
        r#""requests-per-minute";q=60;w=60, "tokens-per-day";q=100000;w=86400;qu="tokens""#
    );
    assert_eq!(
        header(&r, "ratelimit"),
        r#""requests-per-minute";r=59;t=1, "tokens-per-day";r=99000;t=864"#
    );
    assert!(r.headers().get("x-ratelimit-limit-requests").is_none());
}

#[tokio::test(start_paused = true)]
async fn no_headers_style() {
    let hal = principal("hal", &[Limit::requests_per_minute(1)], None);
    let mut svc = ok_service(RateLimitLayer::new().headers(HeaderStyle::None));
    let r = send(&mut svc, request(Some(&hal), "")).await;
    assert!(!r.headers().keys().any(|k| k.as_str().contains("ratelimit")));
    let r = send(&mut svc, request(Some(&hal), "")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(!r.headers().keys().any(|k| k.as_str().contains("ratelimit")));
    assert_eq!(header(&r, "retry-after"), "60");
}

#[tokio::test(start_paused = true)]
async fn request_too_large_is_never_retried() {
    let ivy = principal(
        "ivy",
        &[
            Limit::requests_per_minute(10),
            Limit::tokens_per_minute(1000),
        ],
        None,
    );
    let mut svc = ok_service(RateLimitLayer::new());
    let r = send(&mut svc, request(Some(&ivy), &chat("m", 5000))).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "x-should-retry"), "false");
    assert!(r.headers().get("retry-after").is_none());
    let json = error_json(r).await;
    assert_eq!(
        json["error"]["message"],
        "Request too large: 5002 tokens requested, limit 1000 per minute"
    );
    // It consumed nothing.
    let r = send(&mut svc, request(Some(&ivy), &chat("m", 8))).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "9");
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), "990");
}

#[tokio::test(start_paused = true)]
async fn a_refused_request_consumes_nothing() {
    let jo = principal(
        "jo",
        &[
            Limit::requests_per_minute(10),
            Limit::tokens_per_minute(100),
        ],
        None,
    );
    let mut svc = ok_service(RateLimitLayer::new());
    let r = send(&mut svc, request(Some(&jo), &chat("m", 58))).await;
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), "40");
    // Refused by tokens: the requests limit is not charged either.
    for _ in 0..5 {
        let r = send(&mut svc, request(Some(&jo), &chat("m", 58))).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "9");
        assert_eq!(
            error_json(r).await["error"]["message"],
            "Rate limit exceeded: 100 tokens per minute"
        );
    }
    let r = send(&mut svc, request(Some(&jo), &chat("m", 38))).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "8");
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), "0");
}

#[tokio::test(start_paused = true)]
async fn an_inner_error_refunds_the_reservation() {
    let kim = principal("kim", &[Limit::tokens_per_minute(100)], None);
    let layer = RateLimitLayer::new();
    let store = layer.store_ref().clone();
    let mut svc = ServiceBuilder::new().layer(layer).service(service_fn(
        |_req: Request<Full<Bytes>>| async {
            Err::<Response<Full<Bytes>>, _>(std::io::Error::other("upstream down"))
        },
    ));
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(request(Some(&kim), &chat("m", 78)))
        .await;
    assert!(err.is_err());
    let limits = [gcra(Limit::tokens_per_minute(100))];
    let probe = acquire_one(&store, RateLimitKey::new("kim"), &limits, &[0], None)
        .await
        .unwrap();
    assert_eq!(probe.states[0].remaining, 100);
}

#[tokio::test(start_paused = true)]
async fn principal_limits_override_the_defaults() {
    let limited = principal("limited", &[Limit::requests_per_minute(1)], None);
    let plain = principal("plain", &[], None);
    let mut svc = ok_service(RateLimitLayer::new().limit(gcra(Limit::requests_per_minute(3))));
    assert_eq!(burst(&mut svc, &limited, 5).await, 1);
    assert_eq!(burst(&mut svc, &plain, 5).await, 3);
}

#[tokio::test(start_paused = true)]
async fn unkeyed_requests_share_a_key_or_pass() {
    let mut shared = ok_service(RateLimitLayer::new().limit(gcra(Limit::requests_per_minute(2))));
    let mut admitted = 0;
    for _ in 0..5 {
        if send(&mut shared, request(None, "")).await.status() == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 2);

    let mut pass = ok_service(
        RateLimitLayer::new()
            .limit(gcra(Limit::requests_per_minute(2)))
            .unkeyed(Unkeyed::Pass),
    );
    for _ in 0..5 {
        let r = send(&mut pass, request(None, "")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers().get("x-ratelimit-limit-requests").is_none());
    }
}

#[tokio::test(start_paused = true)]
async fn header_keys() {
    let layer = RateLimitLayer::new()
        .limit(gcra(Limit::requests_per_minute(1)))
        .unkeyed(Unkeyed::Pass)
        .limit_key(HeaderKey::new(HeaderName::from_static("x-tenant")));
    let mut svc: Svc = BoxCloneService::new(ServiceBuilder::new().layer(layer).service(
        service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }),
    ));
    let tenant = |t: &str| {
        let mut req = request(None, "");
        req.headers_mut().insert("x-tenant", t.parse().unwrap());
        req
    };
    assert_eq!(send(&mut svc, tenant("a")).await.status(), StatusCode::OK);
    assert_eq!(send(&mut svc, tenant("b")).await.status(), StatusCode::OK);
    assert_eq!(
        send(&mut svc, tenant("a")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // No header: unkeyed, passes.
    assert_eq!(
        send(&mut svc, request(None, "")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn closures_are_key_extractors() {
    let layer = RateLimitLayer::new()
        .limit(gcra(Limit::requests_per_minute(1)))
        .limit_key(|req: &Request<Full<Bytes>>| Some(req.uri().path().to_owned()));
    let mut svc: Svc = BoxCloneService::new(ServiceBuilder::new().layer(layer).service(
        service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }),
    ));
    let at = |path: &str| Request::get(path).body(Full::new(Bytes::new())).unwrap();
    assert_eq!(send(&mut svc, at("/a")).await.status(), StatusCode::OK);
    assert_eq!(send(&mut svc, at("/b")).await.status(), StatusCode::OK);
    assert_eq!(
        send(&mut svc, at("/a")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(start_paused = true)]
async fn per_model_scoping() {
    let lou = principal("lou", &[Limit::requests_per_minute(1)], None);
    let mut scoped = ok_service(RateLimitLayer::new().per_model(true));
    let status = |r: Response<_>| r.status();
    assert_eq!(
        status(send(&mut scoped, request(Some(&lou), &chat("gpt-4o", 1))).await),
        StatusCode::OK
    );
    assert_eq!(
        status(send(&mut scoped, request(Some(&lou), &chat("gpt-4o", 1))).await),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        status(send(&mut scoped, request(Some(&lou), &chat("gpt-4o-mini", 1))).await),
        StatusCode::OK
    );

    let mut unscoped = ok_service(RateLimitLayer::new());
    assert_eq!(
        status(send(&mut unscoped, request(Some(&lou), &chat("gpt-4o", 1))).await),
        StatusCode::OK
    );
    assert_eq!(
        status(send(&mut unscoped, request(Some(&lou), &chat("gpt-4o-mini", 1))).await),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(start_paused = true)]
async fn malformed_json_is_refused_when_tokens_are_limited() {
    let max = principal("max", &[Limit::tokens_per_minute(1000)], None);
    let mut svc = ok_service(RateLimitLayer::new());
    let r = send(&mut svc, request(Some(&max), "{\"model\": ")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[path = "support/logs.rs"]
mod logs_support;

#[tokio::test(start_paused = true)]
async fn shadow_mode_counts_and_logs_but_never_refuses() {
    let logs = logs_support::captured();

    let nia = principal("nia", &[Limit::requests_per_minute(2)], Some(1));
    let mut svc = ok_service(RateLimitLayer::new().shadow(true));
    let mut remaining = Vec::new();
    for _ in 0..4 {
        let r = send(&mut svc, request(Some(&nia), "")).await;
        assert_eq!(r.status(), StatusCode::OK);
        remaining.push(header(&r, "x-ratelimit-remaining-requests").to_owned());
    }
    assert_eq!(remaining, ["1", "0", "0", "0"]);
    // This test's lines: the capture is the whole binary's.
    let text: String = logs
        .text()
        .lines()
        .filter(|line| line.contains("nia"))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_eq!(text.matches("would refuse").count(), 2, "{text}");
    assert!(
        text.contains("Rate limit exceeded: 2 requests per minute"),
        "{text}"
    );
    assert!(text.contains("nia"), "{text}");
}

/// A body fed by a channel: it ends when the sender is dropped.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test(start_paused = true)]
async fn concurrency_slot_is_held_until_the_body_ends_or_is_dropped() {
    let senders = Arc::new(Mutex::new(Vec::new()));
    let inner_senders = senders.clone();
    let mut svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new())
        .service(service_fn(move |_req: Request<Full<Bytes>>| {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            inner_senders.lock().unwrap().push(tx);
            async move { Ok::<_, Infallible>(Response::new(ChannelBody(rx))) }
        }));
    let olga = principal("olga", &[], Some(2));
    async fn call<S>(svc: &mut S) -> S::Response
    where
        S: Service<Request<Full<Bytes>>>,
        S::Error: std::fmt::Debug,
    {
        let olga = principal("olga", &[], Some(2));
        svc.ready()
            .await
            .unwrap()
            .call(request(Some(&olga), ""))
            .await
            .unwrap()
    }
    let _ = olga;

    let first = call(&mut svc).await;
    let second = call(&mut svc).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
    let third = call(&mut svc).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&third, "retry-after"), "1");
    assert_eq!(
        error_json(third).await["error"]["message"],
        "Concurrency limit exceeded: 2 requests in flight"
    );

    // Drop the first stream mid-way: its slot frees.
    let mut first = first.into_body();
    let tx = senders.lock().unwrap()[0].clone();
    tx.send(Bytes::from("chunk")).await.unwrap();
    let frame = first.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "chunk");
    drop(first);
    let fourth = call(&mut svc).await;
    assert_eq!(fourth.status(), StatusCode::OK);
    assert_eq!(call(&mut svc).await.status(), StatusCode::TOO_MANY_REQUESTS);

    // End the second stream: its slot frees too.
    let mut second = second.into_body();
    let tx = senders.lock().unwrap().remove(1);
    tx.send(Bytes::from("last")).await.unwrap();
    drop(tx);
    while second.frame().await.is_some() {}
    assert_eq!(call(&mut svc).await.status(), StatusCode::OK);
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_requests_through_clones_admit_exactly_the_limit() {
    let pat = principal("pat", &[Limit::requests_per_hour(100)], None);
    let svc = ok_service(RateLimitLayer::new());
    let start = Arc::new(tokio::sync::Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let mut svc = svc.clone();
            let pat = pat.clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                send(&mut svc, request(Some(&pat), "")).await.status()
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        if task.await.unwrap() == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 100);
}

#[tokio::test(start_paused = true)]
async fn services_from_one_layer_share_limits() {
    let quinn = principal("quinn", &[Limit::requests_per_minute(2)], None);
    let layer = RateLimitLayer::new();
    let mut a = ok_service(layer.clone());
    let mut b = ok_service(layer);
    assert_eq!(burst(&mut a, &quinn, 1).await, 1);
    assert_eq!(burst(&mut b, &quinn, 5).await, 1);
}

/// A store that always fails.
#[derive(Clone, Debug)]
struct DownStore;

impl RateLimitStore for DownStore {
    fn acquire(&self, _: &Acquire<'_>) -> StoreFuture<Admission> {
        StoreFuture::ready(Err(StoreError::Timeout))
    }

    fn settle(&self, _: &Settle<'_>) -> StoreFuture<()> {
        StoreFuture::ready(Err(StoreError::Timeout))
    }
}

#[tokio::test(start_paused = true)]
async fn store_failures_fail_open_by_default_or_closed() {
    let rae = principal("rae", &[Limit::requests_per_minute(1)], None);
    let mut open = ok_service(RateLimitLayer::new().store(DownStore));
    assert_eq!(burst(&mut open, &rae, 3).await, 3);

    let mut closed = ok_service(
        RateLimitLayer::new()
            .store(DownStore)
            .on_store_error(FailurePolicy::FailClosed),
    );
    let r = send(&mut closed, request(Some(&rae), "")).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_json(r).await["error"]["code"], "store_unavailable");
}

#[tokio::test(start_paused = true)]
async fn an_outer_envelope_keeps_the_headers() {
    let sam = principal("sam", &[Limit::requests_per_minute(1)], None);
    let mut svc = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new().format(tollgate::ErrorFormat::Anthropic))
        .layer(RateLimitLayer::new())
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }));
    svc.ready()
        .await
        .unwrap()
        .call(request(Some(&sam), ""))
        .await
        .unwrap();
    let r = svc
        .ready()
        .await
        .unwrap()
        .call(request(Some(&sam), ""))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "0");
    assert_eq!(header(&r, "retry-after"), "60");
    let json = error_json(r).await;
    assert_eq!(json["type"], "error");
    assert_eq!(json["error"]["type"], "rate_limit_error");
}

#[tokio::test(start_paused = true)]
async fn a_custom_store_clock_drives_windows() {
    let store = MemoryRateLimitStore::builder()
        .clock(Arc::new(TokioClock::new()))
        .build();
    let tom = principal("tom", &[Limit::requests_per_second(1)], None);
    let mut svc = ok_service(RateLimitLayer::new().store(store.clone()));
    assert_eq!(burst(&mut svc, &tom, 3).await, 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(burst(&mut svc, &tom, 3).await, 1);
    assert_eq!(store.len(), 1);
}

/// An upstream answering JSON with the given usage, or an SSE stream whose
/// events are fed by the test.
fn usage_service<St: RateLimitStore + Clone>(layer: RateLimitLayer<St>, total: u64) -> Svc {
    BoxCloneService::new(ServiceBuilder::new().layer(layer).service(service_fn(
        move |_req: Request<Full<Bytes>>| async move {
            let body = format!(
                r#"{{"id":"x","object":"chat.completion","choices":[],"usage":{{"prompt_tokens":2,"completion_tokens":{},"total_tokens":{total}}}}}"#,
                total - 2
            );
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap(),
            )
        },
    )))
}

/// One scope's admission.
fn acquire_one(
    store: &impl RateLimitStore,
    key: RateLimitKey<'_>,
    limits: &[Limit],
    costs: &[u64],
    max_concurrent: Option<u32>,
) -> StoreFuture<Admission> {
    store.acquire(&Acquire {
        scopes: &[ScopeCharge {
            key,
            limits,
            costs,
            max_concurrent,
        }],
    })
}

/// What is left of `key`'s tokens limit, without charging anything.
async fn tokens_left(store: &MemoryRateLimitStore, key: &str, limits: &[Limit]) -> Vec<u64> {
    let costs = vec![0; limits.len()];
    let limits: Vec<Limit> = limits.iter().copied().map(gcra).collect();
    acquire_one(store, RateLimitKey::new(key), &limits, &costs, None)
        .await
        .unwrap()
        .states
        .iter()
        .map(|s| s.remaining)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn tokens_are_reserved_then_refunded_to_the_reported_usage() {
    let limits = [
        Limit::requests_per_minute(100),
        Limit::tokens_per_minute(1000),
    ];
    let uma = principal("uma", &limits, None);
    let layer = RateLimitLayer::new();
    let store = layer.store_ref().clone();
    let mut svc = usage_service(layer, 12);
    let r = send(&mut svc, request(Some(&uma), &chat("m", 298))).await;
    // 300 reserved at admission, and the headers say so.
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), "700");
    assert_eq!(tokens_left(&store, "uma", &limits).await, [99, 700]);
    // The response reports 12: 288 come back when the body ends.
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert!(body.starts_with(b"{\"id\""));
    assert_eq!(tokens_left(&store, "uma", &limits).await, [99, 988]);
}

#[tokio::test(start_paused = true)]
async fn tokens_used_beyond_the_reservation_are_charged() {
    let limits = [Limit::tokens_per_minute(1000)];
    let vic = principal("vic", &limits, None);
    let layer = RateLimitLayer::new();
    let store = layer.store_ref().clone();
    let mut svc = usage_service(layer, 900);
    // 100 reserved, 900 used: 800 more are charged.
    let r = send(&mut svc, request(Some(&vic), &chat("m", 98))).await;
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), "900");
    drop(r.into_body().collect().await.unwrap());
    assert_eq!(tokens_left(&store, "vic", &limits).await, [100]);
    // 100 fit; 101 do not, until 60 ms have refilled one more.
    let r = send(&mut svc, request(Some(&vic), &chat("m", 99))).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "retry-after-ms"), "60");
    tokio::time::advance(Duration::from_millis(60)).await;
    let r = send(&mut svc, request(Some(&vic), &chat("m", 99))).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_stream_dropped_midway_settles_to_its_estimate_and_frees_its_slot() {
    let limits = [Limit::tokens_per_minute(10_000)];
    let wes = principal("wes", &limits, Some(1));
    let senders = Arc::new(Mutex::new(Vec::new()));
    let inner_senders = senders.clone();
    let layer = RateLimitLayer::new();
    let store = layer.store_ref().clone();
    let mut svc = ServiceBuilder::new().layer(layer).service(service_fn(
        move |_req: Request<Full<Bytes>>| {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            inner_senders.lock().unwrap().push(tx);
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(ChannelBody(rx))
                        .unwrap(),
                )
            }
        },
    ));
    let req = || request(Some(&wes), &chat("m", 998));
    let r = svc.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), "9000");
    assert_eq!(tokens_left(&store, "wes", &limits).await, [9000]);
    // One in flight: the next waits for the stream.
    let busy = svc.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS);

    // 40 characters of content streamed, then the client hangs up.
    let tx = senders.lock().unwrap()[0].clone();
    let chunk = format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
        "x".repeat(40)
    );
    tx.send(Bytes::from(chunk)).await.unwrap();
    let mut body = r.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    // Settled to the estimate: 2 prompt tokens + 40 / 4 completion tokens.
    assert_eq!(tokens_left(&store, "wes", &limits).await, [9988]);
    let next = svc.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(next.status(), StatusCode::OK);
}

/// A memory store behind a network-like hop: every answer comes after a
/// yield, so the layer waits on `acquire` and settles on a spawned task.
#[derive(Clone, Debug)]
struct RemoteStore(MemoryRateLimitStore);

impl RateLimitStore for RemoteStore {
    fn acquire(&self, request: &Acquire<'_>) -> StoreFuture<Admission> {
        let answer = self.0.acquire(request);
        StoreFuture::pending(async move {
            tokio::task::yield_now().await;
            answer.await
        })
    }

    fn settle(&self, request: &Settle<'_>) -> StoreFuture<()> {
        let store = self.0.clone();
        let owned: Vec<_> = request
            .scopes
            .iter()
            .map(|s| {
                (
                    s.key.scope.to_owned(),
                    s.key.id.to_owned(),
                    s.key.model.map(str::to_owned),
                    s.limits.to_vec(),
                    s.deltas.to_vec(),
                    s.release,
                )
            })
            .collect();
        StoreFuture::pending(async move {
            tokio::task::yield_now().await;
            let scopes: Vec<ScopeSettle<'_>> = owned
                .iter()
                .map(|(scope, id, model, limits, deltas, release)| ScopeSettle {
                    key: RateLimitKey::scoped(scope, id).with_model(model.as_deref()),
                    limits,
                    deltas,
                    release: *release,
                })
                .collect();
            store
                .settle(&Settle {
                    scopes: &scopes,
                    receipt: tollgate::rate_limit::Receipt::NONE,
                })
                .await
        })
    }
}

#[tokio::test(start_paused = true)]
async fn asynchronous_and_boxed_stores() {
    let memory = MemoryRateLimitStore::new();
    let limits = [
        Limit::requests_per_minute(2),
        Limit::tokens_per_minute(1000),
    ];
    let yan = principal("yan", &limits, Some(1));
    let store: Arc<dyn RateLimitStore> = Arc::new(RemoteStore(memory.clone()));
    let mut svc = usage_service(RateLimitLayer::new().store(store), 12);

    let r = send(&mut svc, request(Some(&yan), &chat("m", 98))).await;
    assert_eq!(r.status(), StatusCode::OK);
    // In flight: the concurrency slot is taken.
    let busy = send(&mut svc, request(Some(&yan), &chat("m", 98))).await;
    assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS);
    // The body ends; the settlement runs on a task of its own.
    drop(r.into_body().collect().await.unwrap());
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    assert_eq!(tokens_left(&memory, "yan", &limits).await, [1, 988]);
    let r = send(&mut svc, request(Some(&yan), &chat("m", 98))).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn behind_auth_and_an_envelope() {
    use tollgate::auth::AuthLayer;
    use tollgate::store::memory::MemoryKeyStore;

    let (secret, mut record) = KeyRecord::generate().unwrap();
    record.rate_limits = vec![
        gcra(Limit::requests_per_minute(1)),
        gcra(Limit::tokens_per_minute(1000)),
    ];
    let keys = MemoryKeyStore::new();
    keys.insert(record).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new())
        .layer(AuthLayer::new(keys))
        .layer(RateLimitLayer::new())
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }));
    let req = || {
        Request::post("/v1/chat/completions")
            .header("authorization", format!("Bearer {}", secret.expose()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(chat("gpt-4o", 98))))
            .unwrap()
    };
    let r = svc.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), "900");
    let r = svc.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "retry-after"), "60");
    assert!(r.headers().contains_key("x-request-id"));
    let text = String::from_utf8(error_json(r).await.to_string().into_bytes()).unwrap();
    assert!(!text.contains(secret.expose()));
}
