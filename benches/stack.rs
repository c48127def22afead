//! What the whole server stack costs per request, in process (no sockets):
//! `ErrorEnvelope → Auth → RateLimit (requests + tokens) → Budget →
//! StreamErrorTrailer` around a handler that answers a fixed 300-byte
//! completion with usage, against the same handler bare; the same for a
//! streamed answer of 200 events; and the allocations per request.
//!
//! Over 600 lines: the bare and layered stacks must be built side by side,
//! from the same handler, to be compared.
//!
//! ```text
//! cargo bench --bench stack -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! - `chat/{bare,stack_1_key,stack_1m_keys}`: one non-streamed request (built,
//!   served, its body drained). The stores of `stack_1m_keys` hold 1,000,000
//!   keys (key store, rate limit states, budgets), each used once before.
//! - `chat/overhead_{1_key,1m_keys}`: stack minus bare, timed in alternating
//!   blocks of 32 requests so that a busy machine slows both alike; per request.
//! - `stream/{bare,stack}` and `stream/overhead`: a streamed response of 200
//!   events (one event per frame), reported per event.
//! - Allocations per request (counting global allocator) are printed first.
//!
//! Targets: added time per non-streamed request < 1.5 µs at 1 key and
//! < 2.5 µs at 1M keys; per streamed event < 50 ns; allocations ≤ bare + 4.
//!
//! Instruction counts (repeatable on a loaded machine): `STACK_PROFILE=<case>`
//! runs `STACK_ITERS` (default 20,000) requests of one case in
//! `profile_loop` and exits; run the bench binary under
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*profile_loop*'`
//! (see `benches/load/callgrind.sh`); with `STACK_ALLOCS=1` the case prints
//! its allocations per request instead. Cases: `chat_bare`, `chat_stack`,
//! `chat_stack_1m`, `stream_bare`, `stream_stack`, and `chat_depth_1` to
//! `chat_depth_4` (the stack built up one layer at a time: envelope, then
//! auth, rate limit and budget added). `STACK_PROMPT_BYTES`, `STACK_COMPLETION_BYTES`,
//! `STACK_LIMITS` and `STACK_ALGORITHM` vary the request body, the answer,
//! the rate limits per key and their algorithm (see `Knobs`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tollgate::ErrorEnvelopeLayer;
use tollgate::auth::{AuthLayer, KeyHash, KeyRecord};
use tollgate::budget::{BudgetLayer, BudgetScope, BudgetSpec, ModelPrice, Money, Period, Pricing};
use tollgate::rate_limit::{Algorithm, Limit, RateLimitLayer};
use tollgate::store::memory::{MemoryKeyStore, MemoryLedger, MemoryRateLimitStore};
use tollgate::stream::StreamErrorTrailerLayer;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

// ---------------------------------------------------------------- allocator

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same layout, same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as in `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// ---------------------------------------------------------------- fixtures

const KEY: &str = "sk-bench-0123456789abcdef0123456789abcdef";
const REQUEST: &str = r#"{"model":"gpt-4o-mini","max_tokens":64,"messages":[{"role":"user","content":"Say hello."}]}"#;
const STREAM_REQUEST: &str = r#"{"model":"gpt-4o-mini","max_tokens":256,"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Say hello."}]}"#;

/// The non-streamed answer: 300 bytes with usage.
const COMPLETION: &str = concat!(
    r#"{"id":"chatcmpl-load0000000000000000000","object":"chat.completion","created":1700000000,"#,
    r#""model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help?"},"#,
    r#""finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"#,
);
const EVENTS: u64 = 200;
const CHUNK: &[u8] = b"data: {\"id\":\"chatcmpl-load\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" word\"},\"finish_reason\":null}]}\n\n";
const USAGE: &[u8] = b"data: {\"id\":\"chatcmpl-load\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":198,\"total_tokens\":210}}\n\n";
const DONE: &[u8] = b"data: [DONE]\n\n";

fn request(body: &'static str) -> Request<Full<Bytes>> {
    let body = if body == REQUEST {
        knobs().request.clone()
    } else {
        Bytes::from_static(body.as_bytes())
    };
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", bearer())
        .body(Full::new(body))
        .unwrap()
}

/// Sizes the profile cases can vary (environment variables; the criterion
/// benches leave them unset): `STACK_PROMPT_BYTES` pads the request's
/// message, `STACK_COMPLETION_BYTES` the answer's content, `STACK_LIMITS`
/// sets the rate limits per key (2 by default: requests and tokens),
/// `STACK_ALGORITHM` their algorithm (`sliding`, the default, `gcra` or
/// `fixed`; the figures before sliding windows were GCRA's).
struct Knobs {
    request: Bytes,
    completion: Bytes,
    limits: usize,
    algorithm: Algorithm,
}

fn knobs() -> &'static Knobs {
    static KNOBS: std::sync::OnceLock<Knobs> = std::sync::OnceLock::new();
    KNOBS.get_or_init(|| {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
        };
        let request = match var("STACK_PROMPT_BYTES") {
            Some(n) => Bytes::from(REQUEST.replace("Say hello.", &"a".repeat(n))),
            None => Bytes::from_static(REQUEST.as_bytes()),
        };
        let completion = match var("STACK_COMPLETION_BYTES") {
            Some(n) => Bytes::from(COMPLETION.replace("Hello! How can I help?", &"b".repeat(n))),
            None => Bytes::from_static(COMPLETION.as_bytes()),
        };
        Knobs {
            request,
            completion,
            limits: var("STACK_LIMITS").unwrap_or(2),
            algorithm: match std::env::var("STACK_ALGORITHM") {
                Ok(name) => name
                    .parse()
                    .expect("STACK_ALGORITHM: sliding, gcra or fixed"),
                Err(_) => Algorithm::default(),
            },
        }
    })
}

fn bearer() -> http::HeaderValue {
    http::HeaderValue::from_static("Bearer sk-bench-0123456789abcdef0123456789abcdef")
}

/// 198 content events, one usage event, `[DONE]`: one event per frame, every
/// frame ready (a `Bytes` refcount each).
struct Events {
    frames: Arc<[Bytes]>,
    next: usize,
}

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let i = self.next;
        self.next += 1;
        Poll::Ready(self.frames.get(i).cloned().map(|b| Ok(Frame::data(b))))
    }
}

fn events() -> Arc<[Bytes]> {
    let mut frames = vec![Bytes::from_static(CHUNK); EVENTS as usize - 2];
    frames.push(Bytes::from_static(USAGE));
    frames.push(Bytes::from_static(DONE));
    frames.into()
}

async fn completion(_req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(knobs().completion.clone()))
        .unwrap())
}

fn streamer(
    frames: Arc<[Bytes]>,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Events>, Error = Infallible, Future: Send>
+ Clone {
    service_fn(move |_req: Request<Full<Bytes>>| {
        let frames = frames.clone();
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Events { frames, next: 0 })
                    .unwrap(),
            )
        }
    })
}

fn record(id: String, secret: &str) -> KeyRecord {
    let mut record = KeyRecord::new(id.clone(), KeyHash::of(secret));
    record.rate_limits = (0..knobs().limits.max(1))
        .map(|i| {
            // Alternating measures, each limit with its own window.
            let window = Duration::from_secs(60 * (i as u64 / 2 + 1));
            let limit = if i % 2 == 0 {
                Limit::requests(1 << 30, window)
            } else {
                Limit::tokens(1 << 36, window)
            };
            limit.algorithm(knobs().algorithm)
        })
        .collect();
    record.budgets.push(BudgetSpec::budget(
        BudgetScope::Key(id),
        Money::from_usd(1_000_000_000),
        Period::Monthly,
    ));
    record
}

struct Stores {
    keys: MemoryKeyStore,
    limits: MemoryRateLimitStore,
    ledger: MemoryLedger,
}

impl Stores {
    fn new(capacity: usize) -> Stores {
        let keys = MemoryKeyStore::new();
        keys.insert(record("bench".into(), KEY)).unwrap();
        Stores {
            keys,
            limits: MemoryRateLimitStore::builder()
                .max_keys(capacity.max(1) * 2)
                .build(),
            ledger: MemoryLedger::new().max_budgets(capacity.max(1) * 2),
        }
    }
}

/// The server stack, outermost first, around `inner`.
macro_rules! stack {
    ($stores:expr, $inner:expr) => {{
        let stores: &Stores = $stores;
        let pricing = Pricing::new().with(
            "gpt-4o-mini",
            ModelPrice::per_million("0.15", "0.60").unwrap(),
        );
        ServiceBuilder::new()
            .layer(ErrorEnvelopeLayer::new())
            .layer(AuthLayer::new(stores.keys.clone()))
            .layer(RateLimitLayer::new().store(stores.limits.clone()))
            .layer(BudgetLayer::with_ledger(pricing, stores.ledger.clone()))
            .layer(StreamErrorTrailerLayer::new())
            .service($inner)
    }};
}

/// One request through `service`, its body drained; the bytes served.
async fn serve<S, B>(service: &mut S, req: Request<Full<Bytes>>) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let response = service.ready().await.unwrap().call(req).await.unwrap();
    assert!(response.status().is_success(), "{:?}", response.status());
    let mut body = pin!(response.into_body());
    let mut bytes = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            bytes += data.len();
        }
    }
    bytes
}

/// Fills the stores with `n` more keys, each used by one request, so their
/// rate limit states and budgets exist too.
fn fill(rt: &tokio::runtime::Runtime, stores: &Stores, n: usize) {
    let start = Instant::now();
    for i in 0..n {
        let id = format!("key-{i}");
        stores
            .keys
            .insert(record(id.clone(), &format!("sk-{id}")))
            .unwrap();
    }
    let mut service = stack!(stores, service_fn(completion));
    rt.block_on(async {
        for i in 0..n {
            let mut req = request(REQUEST);
            let value = format!("Bearer sk-key-{i}");
            req.headers_mut()
                .insert("authorization", value.parse().unwrap());
            serve(&mut service, req).await;
        }
    });
    eprintln!(
        "filled the stores with {n} keys in {:.1?}: {} rate limit keys, {} budgets",
        start.elapsed(),
        stores.limits.len(),
        stores.ledger.budget_count()
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------- benches

/// Times `a` and `b` in alternating blocks; returns `b - a` over `iters`
/// requests (at least 1 ns, when noise makes the difference negative).
fn alternate<A, B>(rt: &tokio::runtime::Runtime, iters: u64, mut a: A, mut b: B) -> Duration
where
    A: AsyncFnMut(),
    B: AsyncFnMut(),
{
    rt.block_on(async {
        let (mut ta, mut tb) = (Duration::ZERO, Duration::ZERO);
        let mut left = iters;
        while left > 0 {
            let n = left.min(32);
            let start = Instant::now();
            for _ in 0..n {
                a().await;
            }
            ta += start.elapsed();
            let start = Instant::now();
            for _ in 0..n {
                b().await;
            }
            tb += start.elapsed();
            left -= n;
        }
        tb.saturating_sub(ta).max(Duration::from_nanos(1))
    })
}

fn timed<F: AsyncFnMut()>(rt: &tokio::runtime::Runtime, iters: u64, mut f: F) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            f().await;
        }
        start.elapsed()
    })
}

fn chat(c: &mut Criterion, rt: &tokio::runtime::Runtime, big: &Stores) {
    let small = Stores::new(1);
    let mut group = c.benchmark_group("chat");
    group.throughput(Throughput::Elements(1));

    let mut bare = service_fn(completion);
    let mut one = stack!(&small, service_fn(completion));
    let mut million = stack!(big, service_fn(completion));

    group.bench_function("bare", |b| {
        b.iter_custom(|iters| {
            timed(rt, iters, async || {
                black_box(serve(&mut bare, request(REQUEST)).await);
            })
        })
    });
    group.bench_function("stack_1_key", |b| {
        b.iter_custom(|iters| {
            timed(rt, iters, async || {
                black_box(serve(&mut one, request(REQUEST)).await);
            })
        })
    });
    group.bench_function("stack_1m_keys", |b| {
        b.iter_custom(|iters| {
            timed(rt, iters, async || {
                black_box(serve(&mut million, request(REQUEST)).await);
            })
        })
    });
    let mut bare2 = service_fn(completion);
    group.bench_function("overhead_1_key", |b| {
        b.iter_custom(|iters| {
            alternate(
                rt,
                iters,
                async || {
                    black_box(serve(&mut bare2, request(REQUEST)).await);
                },
                async || {
                    black_box(serve(&mut one, request(REQUEST)).await);
                },
            )
        })
    });
    let mut bare3 = service_fn(completion);
    group.bench_function("overhead_1m_keys", |b| {
        b.iter_custom(|iters| {
            alternate(
                rt,
                iters,
                async || {
                    black_box(serve(&mut bare3, request(REQUEST)).await);
                },
                async || {
                    black_box(serve(&mut million, request(REQUEST)).await);
                },
            )
        })
    });
    group.finish();
}

fn stream(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let stores = Stores::new(1);
    let frames = events();
    let mut group = c.benchmark_group("stream");
    group.throughput(Throughput::Elements(EVENTS));
    let mut bare = streamer(frames.clone());
    let mut stack = stack!(&stores, streamer(frames.clone()));
    group.bench_function("bare", |b| {
        b.iter_custom(|iters| {
            timed(rt, iters, async || {
                black_box(serve(&mut bare, request(STREAM_REQUEST)).await);
            })
        })
    });
    group.bench_function("stack", |b| {
        b.iter_custom(|iters| {
            timed(rt, iters, async || {
                black_box(serve(&mut stack, request(STREAM_REQUEST)).await);
            })
        })
    });
    let mut bare2 = streamer(frames.clone());
    group.bench_function("overhead", |b| {
        b.iter_custom(|iters| {
            alternate(
                rt,
                iters,
                async || {
                    black_box(serve(&mut bare2, request(STREAM_REQUEST)).await);
                },
                async || {
                    black_box(serve(&mut stack, request(STREAM_REQUEST)).await);
                },
            )
        })
    });
    group.finish();
}

/// Allocations per request of `f`, counted over 1,000 requests after a
/// warm-up.
fn per_request<F: AsyncFnMut()>(rt: &tokio::runtime::Runtime, mut f: F) -> f64 {
    rt.block_on(async {
        for _ in 0..100 {
            f().await;
        }
        let before = ALLOCS.load(Ordering::Relaxed);
        for _ in 0..1000 {
            f().await;
        }
        (ALLOCS.load(Ordering::Relaxed) - before) as f64 / 1000.0
    })
}

/// Allocations per request of the bare service and the stack.
fn allocations(rt: &tokio::runtime::Runtime) {
    let stores = Stores::new(1);
    let frames = events();
    let mut bare = service_fn(completion);
    let mut stack = stack!(&stores, service_fn(completion));
    let mut sbare = streamer(frames.clone());
    let mut sstack = stack!(&stores, streamer(frames));
    let chat_bare = per_request(rt, async || {
        serve(&mut bare, request(REQUEST)).await;
    });
    let chat_stack = per_request(rt, async || {
        serve(&mut stack, request(REQUEST)).await;
    });
    let stream_bare = per_request(rt, async || {
        serve(&mut sbare, request(STREAM_REQUEST)).await;
    });
    let stream_stack = per_request(rt, async || {
        serve(&mut sstack, request(STREAM_REQUEST)).await;
    });
    eprintln!(
        "allocations per request: chat bare {chat_bare:.1}, stack {chat_stack:.1} (+{:.1}); \
         stream (200 events) bare {stream_bare:.1}, stack {stream_stack:.1} (+{:.1})",
        chat_stack - chat_bare,
        stream_stack - stream_bare,
    );
}

// ---------------------------------------------------------------- profiling

/// Runs one case: `STACK_ITERS` requests in [`profile_loop`], or with
/// `STACK_ALLOCS` set, prints its allocations per request instead (over
/// 1,000 requests after 100 of warm-up). Decided here, outside what
/// callgrind collects.
fn run_case<F: AsyncFnMut()>(rt: &tokio::runtime::Runtime, iters: u64, f: F) {
    if std::env::var_os("STACK_ALLOCS").is_none() {
        return profile_loop(rt, iters, f);
    }
    let per = per_request(rt, f);
    println!("{per:.1} allocations per request");
}

/// `STACK_ITERS` requests of one case: the function callgrind collects.
#[inline(never)]
fn profile_loop<F: AsyncFnMut()>(rt: &tokio::runtime::Runtime, iters: u64, mut f: F) {
    rt.block_on(async {
        for _ in 0..iters {
            f().await;
        }
    })
}

fn profile(case: &str) {
    let rt = runtime();
    let iters = std::env::var("STACK_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let frames = events();
    match case {
        "chat_bare" => {
            let mut s = service_fn(completion);
            run_case(&rt, iters, async || {
                black_box(serve(&mut s, request(REQUEST)).await);
            });
        }
        "chat_stack" | "chat_stack_1m" => {
            let big = case == "chat_stack_1m";
            let stores = Stores::new(if big { 1_000_000 } else { 1 });
            if big {
                fill(&rt, &stores, 1_000_000);
            }
            let mut s = stack!(&stores, service_fn(completion));
            run_case(&rt, iters, async || {
                black_box(serve(&mut s, request(REQUEST)).await);
            });
        }
        // The stack built up one layer at a time, outermost first: the
        // difference between consecutive depths is that layer's cost.
        "chat_depth_1" => {
            let mut s = ServiceBuilder::new()
                .layer(ErrorEnvelopeLayer::new())
                .service(service_fn(completion));
            run_case(&rt, iters, async || {
                black_box(serve(&mut s, request(REQUEST)).await);
            });
        }
        "chat_depth_2" => {
            let stores = Stores::new(1);
            let mut s = ServiceBuilder::new()
                .layer(ErrorEnvelopeLayer::new())
                .layer(AuthLayer::new(stores.keys.clone()))
                .service(service_fn(completion));
            run_case(&rt, iters, async || {
                black_box(serve(&mut s, request(REQUEST)).await);
            });
        }
        "chat_depth_3" => {
            let stores = Stores::new(1);
            let mut s = ServiceBuilder::new()
                .layer(ErrorEnvelopeLayer::new())
                .layer(AuthLayer::new(stores.keys.clone()))
                .layer(RateLimitLayer::new().store(stores.limits.clone()))
                .service(service_fn(completion));
            run_case(&rt, iters, async || {
                black_box(serve(&mut s, request(REQUEST)).await);
            });
        }
        "chat_depth_4" => {
            let stores = Stores::new(1);
            let pricing = Pricing::new().with(
                "gpt-4o-mini",
                ModelPrice::per_million("0.15", "0.60").unwrap(),
            );
            let mut s = ServiceBuilder::new()
                .layer(ErrorEnvelopeLayer::new())
                .layer(AuthLayer::new(stores.keys.clone()))
                .layer(RateLimitLayer::new().store(stores.limits.clone()))
                .layer(BudgetLayer::with_ledger(pricing, stores.ledger.clone()))
                .service(service_fn(completion));
            run_case(&rt, iters, async || {
                black_box(serve(&mut s, request(REQUEST)).await);
            });
        }
        "stream_bare" => {
            let mut s = streamer(frames);
            run_case(&rt, iters, async || {
                black_box(serve(&mut s, request(STREAM_REQUEST)).await);
            });
        }
        "stream_stack" => {
            let stores = Stores::new(1);
            let mut s = stack!(&stores, streamer(frames));
            run_case(&rt, iters, async || {
                black_box(serve(&mut s, request(STREAM_REQUEST)).await);
            });
        }
        other => panic!("unknown STACK_PROFILE case {other}"),
    }
}

fn main() {
    if let Ok(case) = std::env::var("STACK_PROFILE") {
        profile(&case);
        return;
    }
    let rt = runtime();
    allocations(&rt);
    let big = Stores::new(1_000_000);
    fill(&rt, &big, 1_000_000);
    let mut c = Criterion::default().configure_from_args();
    chat(&mut c, &rt, &big);
    stream(&mut c, &rt);
    c.final_summary();
}
