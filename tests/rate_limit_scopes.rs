//! RateLimitLayer with the default sliding windows, the other algorithms,
//! and every scope a request counts against: its key, its key and model,
//! its model for all keys, its upstream, a scope its key record names. On
//! tokio's paused clock.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tollgate::auth::{KeyHash, KeyRecord, Principal};
use tollgate::clock::TokioClock;
use tollgate::rate_limit::{
    Algorithm, HeaderStyle, Limit, ModelLimits, RateLimitLayer, RateLimitStore, ResponseBody,
    ScopeLimits, Upstream,
};
use tollgate::store::memory::MemoryRateLimitStore;
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

type Svc = BoxCloneService<Request<Full<Bytes>>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

fn record(id: &str, limits: &[Limit]) -> KeyRecord {
    let mut record = KeyRecord::new(id, KeyHash([0; 32]));
    record.rate_limits = limits.to_vec();
    record
}

fn chat(p: &Principal, model: &str) -> Request<Full<Bytes>> {
    let body = format!(r#"{{"model":"{model}","max_tokens":10,"messages":[]}}"#);
    let mut req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    req.extensions_mut().insert(p.clone());
    req
}

fn service(layer: RateLimitLayer<impl RateLimitStore + Clone>) -> Svc {
    BoxCloneService::new(ServiceBuilder::new().layer(layer).service(service_fn(
        |_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        },
    )))
}

async fn send(svc: &mut Svc, req: Request<Full<Bytes>>) -> Response<ResponseBody<Full<Bytes>>> {
    svc.ready().await.unwrap().call(req).await.unwrap()
}

async fn message(r: Response<ResponseBody<Full<Bytes>>>) -> String {
    let bytes = r.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    json["error"]["message"].as_str().unwrap().to_owned()
}

fn header<'a, B>(r: &'a Response<B>, name: &str) -> &'a str {
    r.headers()[name].to_str().unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_hiveops_test_gets_its_429_before_the_loop_ends() {
    // The guide's own test: 65 requests 0.1 s apart at 60 per minute, with
    // the default algorithm. GCRA let all 65 through (a burst of 60, then
    // one more a second).
    let key = Principal::new(record("hive", &[Limit::requests_per_minute(60)]));
    let mut svc = service(RateLimitLayer::new());
    let started = tokio::time::Instant::now();
    let mut admitted_at = Vec::new();
    let mut first_refused = None;
    for i in 0..65 {
        let r = send(&mut svc, chat(&key, "llama3:8b-instruct-q8_0")).await;
        if r.status() == StatusCode::OK {
            admitted_at.push(started.elapsed());
        }
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            first_refused = Some(i);
            assert_eq!(
                message(r).await,
                "Rate limit exceeded: 60 requests per minute"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(first_refused, Some(60));

    // And "60 per minute" holds over any minute, not just the first: two
    // more minutes of a request every 0.1 s.
    for _ in 0..1200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if send(&mut svc, chat(&key, "m")).await.status() == StatusCode::OK {
            admitted_at.push(started.elapsed());
        }
    }
    for (i, &t) in admitted_at.iter().enumerate() {
        let in_minute = admitted_at[i..]
            .iter()
            .take_while(|&&u| u - t < Duration::from_secs(60))
            .count();
        assert!(in_minute <= 60, "{in_minute} in the minute from {t:?}");
    }
    // The first 60 (0 to 5.9 s) leave the window a second at a time from
    // 61 s (their buckets are a second wide), and are replaced as they go.
    assert_eq!(admitted_at.len(), 60 + 101);
}

#[tokio::test(start_paused = true)]
async fn gcra_bursts_are_configurable() {
    let spaced = Limit::requests_per_minute(60)
        .algorithm(Algorithm::Gcra)
        .burst(1);
    let key = Principal::new(record("spaced", &[spaced]));
    let mut svc = service(RateLimitLayer::new());
    assert_eq!(
        send(&mut svc, chat(&key, "m")).await.status(),
        StatusCode::OK
    );
    let r = send(&mut svc, chat(&key, "m")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "retry-after-ms"), "1000");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        send(&mut svc, chat(&key, "m")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn fixed_windows_reset_at_the_top_of_the_utc_minute() {
    // 12:30:50Z: ten seconds to the next minute.
    let start = UNIX_EPOCH + Duration::from_secs(1_774_009_850);
    let store = MemoryRateLimitStore::builder()
        .clock(Arc::new(TokioClock::starting_at(start)))
        .build();
    let fixed = Limit::requests_per_minute(2).algorithm(Algorithm::Fixed);
    let key = Principal::new(record("cal", &[fixed]));
    let mut svc = service(RateLimitLayer::new().store(store));
    for _ in 0..2 {
        assert_eq!(
            send(&mut svc, chat(&key, "m")).await.status(),
            StatusCode::OK
        );
    }
    let r = send(&mut svc, chat(&key, "m")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "retry-after"), "10");
    tokio::time::advance(Duration::from_secs(10)).await;
    for _ in 0..2 {
        assert_eq!(
            send(&mut svc, chat(&key, "m")).await.status(),
            StatusCode::OK
        );
    }
}

#[tokio::test(start_paused = true)]
async fn per_model_limits_of_a_key_name_the_model() {
    let mut r = record("ann", &[Limit::requests_per_minute(100)]);
    r.model_limits = vec![ModelLimits::new("gpt-4o*", [Limit::requests_per_minute(2)])];
    let ann = Principal::new(r);
    let mut svc = service(RateLimitLayer::new());
    for _ in 0..2 {
        assert_eq!(
            send(&mut svc, chat(&ann, "gpt-4o-mini")).await.status(),
            StatusCode::OK
        );
    }
    let refused = send(&mut svc, chat(&ann, "gpt-4o-mini")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        message(refused).await,
        "Rate limit exceeded: 2 requests per minute for model gpt-4o-mini"
    );
    // Each model the glob matches has its own count; others only the key's.
    assert_eq!(
        send(&mut svc, chat(&ann, "gpt-4o")).await.status(),
        StatusCode::OK
    );
    for _ in 0..5 {
        assert_eq!(
            send(&mut svc, chat(&ann, "claude")).await.status(),
            StatusCode::OK
        );
    }
    // The key's own limit counted all of them: 2 + 1 + 5 admitted.
    let r = send(&mut svc, chat(&ann, "claude")).await;
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "91");
}

#[tokio::test(start_paused = true)]
async fn a_models_capacity_is_shared_by_every_key_all_or_nothing() {
    let layer = RateLimitLayer::new()
        .model_limit("gpt-4o-mini", Limit::requests_per_minute(3))
        .model_max_concurrent("gpt-4o-mini", 100);
    let alice = Principal::new(record("alice", &[Limit::requests_per_minute(10)]));
    let bob = Principal::new(record("bob", &[Limit::requests_per_minute(10)]));
    let mut svc = service(layer);
    assert_eq!(
        send(&mut svc, chat(&alice, "gpt-4o-mini")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&mut svc, chat(&bob, "gpt-4o-mini")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&mut svc, chat(&bob, "gpt-4o-mini")).await.status(),
        StatusCode::OK
    );
    let refused = send(&mut svc, chat(&alice, "gpt-4o-mini")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // The headers describe the tightest limit: the model's, with none left.
    assert_eq!(header(&refused, "x-ratelimit-remaining-requests"), "0");
    assert_eq!(header(&refused, "x-ratelimit-limit-requests"), "3");
    assert_eq!(
        message(refused).await,
        "Rate limit exceeded: 3 requests per minute for model gpt-4o-mini (all keys)"
    );
    // Refused by the model: alice's own limit was not charged (9 left after
    // this admission of another model).
    let r = send(&mut svc, chat(&alice, "gpt-4o")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "8");
}

#[tokio::test(start_paused = true)]
async fn upstreams_are_limited_by_extension_or_by_route() {
    let layer = RateLimitLayer::new()
        .upstream_limit("openai", Limit::requests_per_minute(2))
        .upstream_for("gpt-*", "openai");
    let key = Principal::new(record("u", &[]));
    let mut svc = service(layer);
    // Routed by model.
    assert_eq!(
        send(&mut svc, chat(&key, "gpt-4o")).await.status(),
        StatusCode::OK
    );
    // Set by the router in front.
    let mut req = chat(&key, "o3");
    req.extensions_mut().insert(Upstream::new("openai"));
    assert_eq!(send(&mut svc, req).await.status(), StatusCode::OK);
    let refused = send(&mut svc, chat(&key, "gpt-4.1")).await;
    assert_eq!(
        message(refused).await,
        "Rate limit exceeded: 2 requests per minute for upstream openai"
    );
    // Another upstream, or none: not limited.
    let mut req = chat(&key, "gpt-4o");
    req.extensions_mut().insert(Upstream::new("azure"));
    assert_eq!(send(&mut svc, req).await.status(), StatusCode::OK);
    assert_eq!(
        send(&mut svc, chat(&key, "claude")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn scopes_a_key_record_names_need_no_code() {
    let team = ScopeLimits::new("team", "acme", [Limit::requests_per_hour(3)]);
    let mut a = record("a", &[]);
    a.scope_limits = vec![team.clone()];
    let mut b = record("b", &[]);
    b.scope_limits = vec![team];
    let (a, b) = (Principal::new(a), Principal::new(b));
    let mut svc = service(RateLimitLayer::new());
    for p in [&a, &b, &a] {
        assert_eq!(send(&mut svc, chat(p, "m")).await.status(), StatusCode::OK);
    }
    let refused = send(&mut svc, chat(&b, "m")).await;
    assert_eq!(
        message(refused).await,
        "Rate limit exceeded: 3 requests per hour for team acme"
    );
}

#[tokio::test(start_paused = true)]
async fn a_response_ends_by_releasing_every_scope_even_past_four() {
    // Six named scopes, each one request in flight at most: the next
    // request is admitted only if the first's end released all six.
    let mut r = record("six", &[]);
    r.scope_limits = (0..6)
        .map(|i| {
            let mut s = ScopeLimits::new("team", format!("t{i}"), [Limit::requests_per_hour(100)]);
            s.max_concurrent = Some(1);
            s
        })
        .collect();
    let six = Principal::new(r);
    let mut svc = service(RateLimitLayer::new());
    for _ in 0..3 {
        let r = send(&mut svc, chat(&six, "m")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let held = send(&mut svc, chat(&six, "m")).await;
        assert_eq!(held.status(), StatusCode::TOO_MANY_REQUESTS);
        r.into_body().collect().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn an_edited_limit_keeps_what_was_used_and_two_configurations_share_one_count() {
    let store = MemoryRateLimitStore::new();
    let mut svc = service(RateLimitLayer::new().store(store.clone()));
    let before = Principal::new(record("ed", &[Limit::requests_per_hour(10)]));
    for _ in 0..6 {
        assert_eq!(
            send(&mut svc, chat(&before, "m")).await.status(),
            StatusCode::OK
        );
    }
    // Raised to 20 (an admin edit): 6 used, 14 left, not 20.
    let raised = Principal::new(record("ed", &[Limit::requests_per_hour(20)]));
    let r = send(&mut svc, chat(&raised, "m")).await;
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "13");
    // Lowered to 5: already over, refused.
    let lowered = Principal::new(record("ed", &[Limit::requests_per_hour(5)]));
    assert_eq!(
        send(&mut svc, chat(&lowered, "m")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // A second instance configured with 10 sees the same 7, and enforcing
    // its own view wipes nothing: the first still counts 7.
    let mut other = service(RateLimitLayer::new().store(store));
    let r = send(&mut other, chat(&before, "m")).await;
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "2");
    let r = send(&mut svc, chat(&raised, "m")).await;
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "11");
}

#[tokio::test(start_paused = true)]
async fn the_virtual_key_guides_hourly_limit_and_legacy_headers() {
    let start = UNIX_EPOCH + Duration::from_secs(1_774_009_800);
    let vk = Principal::new(record("vk", &[Limit::requests_per_hour(100)]));
    let mut svc = service(
        RateLimitLayer::new()
            .headers(HeaderStyle::Legacy)
            .clock(Arc::new(TokioClock::starting_at(start))),
    );
    let r = send(&mut svc, chat(&vk, "m")).await;
    assert_eq!(header(&r, "x-ratelimit-limit"), "100");
    assert_eq!(header(&r, "x-ratelimit-remaining"), "99");
    // The next unit frees when the first request leaves the hour (its
    // bucket is a minute wide): a Unix time, as clients parse it.
    assert_eq!(header(&r, "x-ratelimit-reset"), "1774013460");
    assert!(r.headers().get("x-ratelimit-remaining-requests").is_none());
    for _ in 0..99 {
        send(&mut svc, chat(&vk, "m")).await;
    }
    let refused = send(&mut svc, chat(&vk, "m")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "x-ratelimit-remaining"), "0");
    assert_eq!(
        message(refused).await,
        "Rate limit exceeded: 100 requests per hour"
    );
}
