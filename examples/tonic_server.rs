//! tollgate in front of a tonic gRPC service: API keys, a rate limit per key,
//! and refusals that reach gRPC clients as proper status codes.
//!
//! ```sh
//! # Serve tollgate.demo.Echo/Say on 127.0.0.1:50051, show the demo below
//! # against itself, then keep serving until Ctrl-C:
//! cargo run --example tonic_server
//! # The demo alone (exits non-zero if an outcome is not the expected one):
//! cargo run --example tonic_server -- --demo --listen 127.0.0.1:0
//! # Call a running server yourself:
//! cargo run --example tonic_server -- --call http://127.0.0.1:50051 --key sk-tollgate-demo-bob hello
//! ```
//!
//! The stack is the one an HTTP gateway uses, in `Server::builder().layer`:
//!
//! ```text
//! ErrorEnvelopeLayer   refusals become `grpc-status` / `grpc-message` (gRPC requests always get gRPC status)
//!  └ AuthLayer         `authorization: Bearer <key>` metadata → Principal in the request extensions
//!     └ RateLimitLayer 5 requests per minute per key
//!        └ Echo        the method reads the caller from the extensions
//! ```
//!
//! The demo prints:
//!
//! ```text
//! no key                 → UNAUTHENTICATED: You didn't provide an API key. Send it in the `Authorization` header ...
//! alice, call 1          → OK: alice said: hello 1 (remaining: 4)
//! ...
//! alice, call 5          → OK: alice said: hello 5 (remaining: 0)
//! alice, call 6          → RESOURCE_EXHAUSTED: Rate limit exceeded: 5 requests per minute (retry-after: 12 s)
//! bob, call 1            → OK: bob said: hello 1 (remaining: 4)
//! ```
//!
//! The service and its client are written by hand (`support/echo_grpc.rs`,
//! a UTF-8 codec), so neither `protoc` nor a `build.rs` is needed; with
//! `tonic-build`, put the generated `EchoServer` where `Echo` is.
//! `tests/tonic_example.rs` runs this file's [`serve`] and [`demo`].

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use tokio::net::TcpListener;
use tollgate::auth::{AuthLayer, KeyHash, KeyRecord};
use tollgate::envelope::ErrorEnvelopeLayer;
use tollgate::rate_limit::{Algorithm, Limit, RateLimitLayer};
use tollgate::store::memory::MemoryKeyStore;
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Status};
use tower::ServiceBuilder;

#[path = "support/echo_grpc.rs"]
pub mod echo_grpc;

use echo_grpc::{Echo, call_say};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Alice's key: the demo spends her 5 requests.
pub const ALICE_KEY: &str = "sk-tollgate-demo-alice";
/// Bob's key: untouched by Alice's calls, since limits are per key.
pub const BOB_KEY: &str = "sk-tollgate-demo-bob";
/// Requests per minute, per key.
pub const REQUESTS_PER_MINUTE: u64 = 5;

/// The demo keys. A real server loads a key file
/// (`MemoryKeyStore::load("keys.toml")`, see `examples/mint_key.rs`),
/// which holds only the keys' SHA-256, never the keys.
pub fn demo_keys() -> MemoryKeyStore {
    MemoryKeyStore::from_records([
        KeyRecord::new("alice", KeyHash::of(ALICE_KEY)),
        KeyRecord::new("bob", KeyHash::of(BOB_KEY)),
    ])
    .expect("the demo keys are distinct")
}

/// Serves `Echo` behind tollgate on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    keys: MemoryKeyStore,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // Outermost first. The envelope sees every refusal of the layers inside
    // it and, the request being gRPC, renders it as a trailers-only gRPC
    // response: `UNAUTHENTICATED` for a missing or unknown key,
    // `RESOURCE_EXHAUSTED` (with `retry-after`) over the limit.
    let tollgate = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new())
        .layer(AuthLayer::new(keys))
        // Keyed by the caller's Principal; a key record's own
        // `rate_limits` would replace this default for that key.
        .layer(RateLimitLayer::new().limit(
            // GCRA: after the burst, one more request every 12 s.
            Limit::requests_per_minute(REQUESTS_PER_MINUTE).algorithm(Algorithm::Gcra),
        ));

    Server::builder()
        .layer(tollgate)
        .add_service(Echo)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}

/// One demo call: who calls, and the code it should get.
struct Step {
    label: String,
    key: Option<&'static str>,
    text: String,
    expect: Code,
}

/// Calls the server at `addr` as the demo does, prints each outcome, and
/// fails if one is not the expected one: no key → `UNAUTHENTICATED`,
/// Alice's first 5 calls → `OK`, her 6th → `RESOURCE_EXHAUSTED`, Bob's
/// first → `OK`.
///
/// It needs a server whose limits are untouched: run it once per start.
pub async fn demo(addr: SocketAddr) -> Result<(), Error> {
    let channel = connect(addr).await?;
    let mut steps = vec![Step {
        label: "no key".into(),
        key: None,
        text: "hello".into(),
        expect: Code::Unauthenticated,
    }];
    for n in 1..=REQUESTS_PER_MINUTE + 1 {
        steps.push(Step {
            label: format!("alice, call {n}"),
            key: Some(ALICE_KEY),
            text: format!("hello {n}"),
            expect: if n <= REQUESTS_PER_MINUTE {
                Code::Ok
            } else {
                Code::ResourceExhausted
            },
        });
    }
    steps.push(Step {
        label: "bob, call 1".into(),
        key: Some(BOB_KEY),
        text: "hello 1".into(),
        expect: Code::Ok,
    });

    let mut unexpected = Vec::new();
    for step in &steps {
        let result = call_say(channel.clone(), step.key, &step.text).await;
        println!("{:<22} → {}", step.label, describe(&result));
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        if code != step.expect {
            unexpected.push(format!(
                "{}: expected {}, got {}",
                step.label,
                code_name(step.expect),
                code_name(code)
            ));
        }
    }
    if unexpected.is_empty() {
        Ok(())
    } else {
        Err(unexpected.join("; ").into())
    }
}

/// A channel to `addr` (to 127.0.0.1 when the server listens on every
/// address), with bounded connect and call times.
pub async fn connect(addr: SocketAddr) -> Result<Channel, Error> {
    let addr = if addr.ip().is_unspecified() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
    } else {
        addr
    };
    connect_url(format!("http://{addr}")).await
}

async fn connect_url(url: String) -> Result<Channel, Error> {
    let channel = Endpoint::from_shared(url)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await?;
    Ok(channel)
}

/// `OK: <reply>` or `CODE: <message>`, with what the server said about the
/// caller's limit: requests left on success, `retry-after` on refusal.
fn describe(result: &Result<tonic::Response<String>, Status>) -> String {
    let header = |metadata: &MetadataMap, name: &str| {
        metadata
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    match result {
        Ok(response) => {
            let mut line = format!("OK: {}", response.get_ref());
            if let Some(left) = header(response.metadata(), "x-ratelimit-remaining-requests") {
                line.push_str(&format!(" (remaining: {left})"));
            }
            line
        }
        Err(status) => {
            let mut line = format!("{}: {}", code_name(status.code()), status.message());
            if let Some(after) = header(status.metadata(), "retry-after") {
                line.push_str(&format!(" (retry-after: {after} s)"));
            }
            line
        }
    }
}

/// The canonical gRPC name of `code`: `ResourceExhausted` → `RESOURCE_EXHAUSTED`.
fn code_name(code: Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

const USAGE: &str = "\
usage: tonic_server [--listen ADDR] [--demo]
       tonic_server --call URL [--key KEY] [TEXT...]

  --listen ADDR  where to serve (default 127.0.0.1:50051; port 0 picks one)
  --demo         run the demo against the server, then exit
                 (without it: run the demo, then keep serving until Ctrl-C)
  --call URL     call tollgate.demo.Echo/Say at URL (http://host:port) and exit
  --key KEY      the API key for --call (demo keys: sk-tollgate-demo-alice,
                 sk-tollgate-demo-bob)";

enum Mode {
    Serve {
        listen: SocketAddr,
        exit_after_demo: bool,
    },
    Call {
        url: String,
        key: Option<String>,
        text: String,
    },
    Help,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Mode, String> {
    let mut listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 50051));
    let mut exit_after_demo = false;
    let mut call = None;
    let mut key = None;
    let mut words = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--listen" => {
                let addr = value("--listen")?;
                listen = addr.parse().map_err(|e| format!("--listen {addr}: {e}"))?;
            }
            "--demo" => exit_after_demo = true,
            "--call" => call = Some(value("--call")?),
            "--key" => key = Some(value("--key")?),
            "-h" | "--help" => return Ok(Mode::Help),
            _ if arg.starts_with('-') => return Err(format!("unknown flag {arg}")),
            _ => words.push(arg),
        }
    }
    match call {
        Some(url) => Ok(Mode::Call {
            url,
            key,
            text: if words.is_empty() {
                "hello".to_owned()
            } else {
                words.join(" ")
            },
        }),
        None if key.is_some() || !words.is_empty() => Err("--key and TEXT go with --call".into()),
        None => Ok(Mode::Serve {
            listen,
            exit_after_demo,
        }),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let mode = match parse_args(std::env::args().skip(1)) {
        Ok(mode) => mode,
        Err(e) => {
            eprintln!("{e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(mode).await {
        Ok(code) => code,
        Err(e) => {
            // The whole chain: tonic's "transport error" alone says little.
            let mut line = format!("error: {e}");
            let mut source = e.source();
            while let Some(cause) = source {
                line.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{line}");
            ExitCode::FAILURE
        }
    }
}

async fn run(mode: Mode) -> Result<ExitCode, Error> {
    let (listen, exit_after_demo) = match mode {
        Mode::Help => {
            println!("{USAGE}");
            return Ok(ExitCode::SUCCESS);
        }
        Mode::Call { url, key, text } => {
            let channel = connect_url(url).await?;
            let result = call_say(channel, key.as_deref(), &text).await;
            println!("{}", describe(&result));
            return Ok(if result.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Mode::Serve {
            listen,
            exit_after_demo,
        } => (listen, exit_after_demo),
    };

    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listening on {listen}: {e} (try --listen 127.0.0.1:0)"))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        tokio::select! {
            _ = stopped => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let server = tokio::spawn(serve(listener, demo_keys(), shutdown));
    println!(
        "serving {} on {addr}: API key required, {REQUESTS_PER_MINUTE} requests per minute per key\n",
        echo_grpc::SERVICE
    );

    let outcome = demo(addr).await;
    if exit_after_demo || outcome.is_err() {
        let _ = stop.send(());
        server.await??;
        outcome.map_err(|e| format!("unexpected demo outcome: {e}"))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "\nstill serving; Ctrl-C to stop. Try:\n  \
         cargo run --example tonic_server -- --call http://{addr} --key {BOB_KEY} hello"
    );
    server.await??;
    Ok(ExitCode::SUCCESS)
}
