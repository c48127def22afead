//! The server of the load benchmark (`benches/load/run.sh`): one fixed chat
//! completion handler, served bare or behind the whole tollgate server stack.
//!
//! ```text
//! cargo run --release --example load_server -- --mode full --listen 127.0.0.1:8787
//! cargo run --release --example load_server --features redis -- --mode full-redis --redis redis://127.0.0.1:6379/0
//! ```
//!
//! `POST /v1/chat/completions` answers a fixed ~300-byte completion with
//! usage (or, with `--stream`, a stream of 200 `chat.completion.chunk`
//! events, the last with usage, then `data: [DONE]`). The handler reads the
//! request body, as a proxy would.
//!
//! Modes:
//! - `bare`: the handler in axum, nothing else.
//! - `full`: `ErrorEnvelope → Auth → RateLimit (requests + tokens) → Budget →
//!   StreamErrorTrailer → handler`, memory stores. Limits and the budget are
//!   large enough never to refuse; every request is checked and charged.
//! - `full-redis` (feature `redis`): the same, with the rate limit store and
//!   the ledger in Redis.
//! - `upstream`: the fake upstream of `benches/load/gateway.sh` and
//!   `benches/peers/run.sh`: hyper's HTTP/1.1 server alone (no axum, no
//!   router, no layer) answering every request, whatever its path, with the
//!   same completion (or stream) once it has read the body. It is the
//!   cheapest server of the crate's stack, so that it shares the client's
//!   CPU without setting the pace.
//!
//! The key is [`KEY`]; `--keys N` adds `N - 1` more keys to the key store
//! (to see lookups in a large store). `--events N` sets how many chunk
//! events a stream has before its usage event (default 199; the cost of one
//! streamed event is the difference between two counts, see
//! `benches/load/profile.sh`).

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::response::Response;
use axum::routing::post;
use tollgate::ErrorEnvelopeLayer;
use tollgate::auth::{AuthLayer, KeyHash, KeyRecord};
use tollgate::budget::{BudgetLayer, BudgetScope, BudgetSpec, ModelPrice, Money, Period, Pricing};
use tollgate::rate_limit::{Limit, RateLimitLayer};
use tollgate::store::memory::{MemoryKeyStore, MemoryLedger};
use tollgate::stream::StreamErrorTrailerLayer;
use tower::ServiceBuilder;

/// The API key the load script sends.
pub const KEY: &str = "sk-load-0123456789abcdef0123456789abcdef";

/// The non-streamed answer: 300 bytes with usage.
const COMPLETION: &str = concat!(
    r#"{"id":"chatcmpl-load0000000000000000000","object":"chat.completion","created":1700000000,"#,
    r#""model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help?"},"#,
    r#""finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"#,
);

/// One streamed event.
const CHUNK: &str = "data: {\"id\":\"chatcmpl-load\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" word\"},\"finish_reason\":null}]}\n\n";

/// The last streamed events: usage, then the end marker.
const TAIL: &str = "data: {\"id\":\"chatcmpl-load\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":199,\"total_tokens\":211}}\n\ndata: [DONE]\n\n";

struct Args {
    mode: String,
    listen: SocketAddr,
    stream: bool,
    keys: usize,
    redis: String,
}

/// Chunk events per stream (`--events`), before the usage event.
static EVENTS: OnceLock<usize> = OnceLock::new();

fn args() -> Result<Args, String> {
    let mut args = Args {
        mode: "bare".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
        stream: false,
        keys: 1,
        redis: "redis://127.0.0.1:6379/0".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--mode" => args.mode = value()?,
            "--listen" => args.listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--keys" => args.keys = value()?.parse().map_err(|e| format!("--keys: {e}"))?,
            "--redis" => args.redis = value()?,
            "--stream" => args.stream = true,
            "--events" => {
                let n = value()?.parse().map_err(|e| format!("--events: {e}"))?;
                EVENTS.set(n).map_err(|_| "--events given twice")?;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

async fn completion(body: Bytes) -> Response {
    std::hint::black_box(body);
    completion_response()
}

fn completion_response() -> Response {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(COMPLETION))
        .unwrap_or_default()
}

async fn stream(body: Bytes) -> Response {
    std::hint::black_box(body);
    stream_response()
}

fn stream_response() -> Response {
    let n = EVENTS.get().copied().unwrap_or(199);
    let mut events = Vec::with_capacity(n + 1);
    events.extend(std::iter::repeat_n(Bytes::from_static(CHUNK.as_bytes()), n));
    events.push(Bytes::from_static(TAIL.as_bytes()));
    let frames =
        futures_util::stream::iter(events.into_iter().map(Ok::<_, std::convert::Infallible>));
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(frames))
        .unwrap_or_default()
}

fn handler(args: &Args) -> Router {
    if args.stream {
        Router::new().route("/v1/chat/completions", post(stream))
    } else {
        Router::new().route("/v1/chat/completions", post(completion))
    }
}

/// The key the load script sends, and `extra` more: limits and budget far
/// above what a benchmark can spend.
fn keys(extra: usize) -> Result<MemoryKeyStore, Box<dyn std::error::Error>> {
    let store = MemoryKeyStore::new();
    let mut record = KeyRecord::new("load", KeyHash::of(KEY));
    record.rate_limits = vec![
        Limit::requests_per_minute(1 << 30),
        Limit::tokens_per_minute(1 << 36),
    ];
    record.budgets.push(BudgetSpec::budget(
        BudgetScope::Key("load".into()),
        Money::from_usd(1_000_000_000),
        Period::Monthly,
    ));
    store.insert(record)?;
    for i in 1..extra {
        let id = format!("key-{i}");
        store.insert(KeyRecord::new(id.clone(), KeyHash::of(format!("sk-{id}"))))?;
    }
    Ok(store)
}

fn pricing() -> Result<Pricing, Box<dyn std::error::Error>> {
    Ok(Pricing::new().with("gpt-4o-mini", ModelPrice::per_million("0.15", "0.60")?))
}

fn app(args: &Args) -> Result<Router, Box<dyn std::error::Error>> {
    let app = handler(args);
    Ok(match args.mode.as_str() {
        "bare" => app,
        "full" => app.layer(
            ServiceBuilder::new()
                .layer(ErrorEnvelopeLayer::new())
                .layer(AuthLayer::new(keys(args.keys)?))
                .layer(RateLimitLayer::new())
                .layer(BudgetLayer::with_ledger(pricing()?, MemoryLedger::new()))
                .layer(StreamErrorTrailerLayer::new()),
        ),
        other => {
            return Err(format!("unknown mode {other} (bare|full|full-redis|upstream)").into());
        }
    })
}

/// The full stack with the rate limit store and the ledger in Redis (keys
/// stay in memory).
#[cfg(feature = "redis")]
async fn app_redis(args: &Args) -> Result<Router, Box<dyn std::error::Error + Send + Sync>> {
    use tollgate::store::redis::{RedisConfig, RedisConnection, RedisLedger, RedisRateLimitStore};
    let config = RedisConfig::from_url(&args.redis)?.key_prefix("tollgate-load:");
    let redis = RedisConnection::connect(config).await?;
    let limits = RedisRateLimitStore::builder(redis.clone()).build();
    let ledger = RedisLedger::new(redis);
    let keys = keys(args.keys).map_err(|e| e.to_string())?;
    let pricing = pricing().map_err(|e| e.to_string())?;
    Ok(handler(args).layer(
        ServiceBuilder::new()
            .layer(ErrorEnvelopeLayer::new())
            .layer(AuthLayer::new(keys))
            .layer(RateLimitLayer::new().store(limits))
            .layer(BudgetLayer::with_ledger(pricing, ledger))
            .layer(StreamErrorTrailerLayer::new()),
    ))
}

/// `--mode upstream`: one hyper HTTP/1.1 connection task per client, every
/// request answered with the fixed completion (or stream) once its body is
/// read.
async fn serve_upstream(listener: tokio::net::TcpListener, stream: bool) -> std::io::Result<()> {
    use http_body_util::BodyExt;
    loop {
        let (tcp, _) = listener.accept().await?;
        // TCP_NODELAY, as below.
        let _ = tcp.set_nodelay(true);
        let service = hyper::service::service_fn(
            move |req: http::Request<hyper::body::Incoming>| async move {
                let body = req.into_body().collect().await;
                std::hint::black_box(body.is_ok());
                Ok::<_, std::convert::Infallible>(if stream {
                    stream_response()
                } else {
                    completion_response()
                })
            },
        );
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
        );
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = args()?;
    if args.mode == "upstream" {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        eprintln!("load_server: fake upstream on {}", listener.local_addr()?);
        serve_upstream(listener, args.stream).await?;
        return Ok(());
    }
    let app = match args.mode.as_str() {
        #[cfg(feature = "redis")]
        "full-redis" => app_redis(&args).await?,
        #[cfg(not(feature = "redis"))]
        "full-redis" => return Err("full-redis needs --features redis".into()),
        _ => app(&args).map_err(|e| e.to_string())?,
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!(
        "load_server: mode {} ({}) on {}",
        args.mode,
        if args.stream { "stream" } else { "json" },
        listener.local_addr()?
    );
    // TCP_NODELAY: a stream's last small write would otherwise wait ~40 ms
    // for the client's delayed ACK (Nagle's algorithm).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            eprintln!("load_server: TCP_NODELAY not set: {error}");
        }
    });
    axum::serve(listener, app).await?;
    Ok(())
}
