//! The client of the streamed load benchmark (`benches/load/stream.sh`):
//! what wrk cannot measure, each response's time to first byte and to last
//! byte.
//!
//! ```text
//! cargo run --release --example load_client -- --url http://127.0.0.1:8080/v1/chat/completions \
//!     --connections 32 --seconds 10 --stream
//! ```
//!
//! Each connection sends chat completions one after another over one
//! kept-alive HTTP/1.1 connection until the time is up, and times each from
//! the moment its request is written: the first body byte (TTFB) and the
//! end of the body (TTLB). It prints one parseable line:
//!
//! ```text
//! RESULT rps=… ttfb_p50_us=… ttfb_p99_us=… ttlb_p50_us=… ttlb_p99_us=… requests=… errors=…
//! ```
//!
//! A request that fails, or answers other than 200, counts as an error and
//! ends its connection's run (the benchmark script then stops).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// The key `load_server` and the benchmark's gateway config accept.
const KEY: &str = "sk-load-0123456789abcdef0123456789abcdef";

struct Args {
    url: http::Uri,
    connections: usize,
    seconds: u64,
    stream: bool,
}

fn args() -> Result<Args, String> {
    let mut url = None;
    let mut args = Args {
        url: http::Uri::from_static("http://127.0.0.1:8080/v1/chat/completions"),
        connections: 32,
        seconds: 10,
        stream: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--url" => url = Some(value()?),
            "--connections" => {
                args.connections = value()?
                    .parse()
                    .map_err(|e| format!("--connections: {e}"))?
            }
            "--seconds" => {
                args.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?
            }
            "--stream" => args.stream = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if let Some(url) = url {
        args.url = url.parse().map_err(|e| format!("--url: {e}"))?;
    }
    Ok(args)
}

/// What one connection measured, in microseconds.
#[derive(Default)]
struct Samples {
    ttfb: Vec<u32>,
    ttlb: Vec<u32>,
    errors: usize,
}

async fn connection(args: &Args, body: Bytes, until: Instant) -> Samples {
    let mut samples = Samples::default();
    let authority = args.url.authority().map(|a| a.as_str()).unwrap_or_default();
    let Ok(stream) = tokio::net::TcpStream::connect(authority).await else {
        samples.errors += 1;
        return samples;
    };
    let _ = stream.set_nodelay(true);
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        samples.errors += 1;
        return samples;
    };
    tokio::spawn(conn);
    let path = args.url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    while Instant::now() < until {
        if sender.ready().await.is_err() {
            samples.errors += 1;
            break;
        }
        let Ok(request) = http::Request::post(path)
            .header("host", authority)
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
        else {
            samples.errors += 1;
            break;
        };
        let sent = Instant::now();
        let response = match sender.send_request(request).await {
            Ok(response) if response.status() == 200 => response,
            _ => {
                samples.errors += 1;
                break;
            }
        };
        let mut body = response.into_body();
        let mut first = None;
        let mut failed = false;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if first.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
                        first = Some(sent.elapsed());
                    }
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        let last = sent.elapsed();
        if failed {
            samples.errors += 1;
            break;
        }
        let micros = |d: Duration| u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        samples.ttfb.push(micros(first.unwrap_or(last)));
        samples.ttlb.push(micros(last));
    }
    samples
}

fn percentile(sorted: &[u32], p: usize) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(sorted.len() - 1) * p / 100]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    // One thread: the script pins the client to one CPU.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let body = Bytes::from(format!(
        r#"{{"model":"gpt-4o-mini","max_tokens":64,"stream":{},"messages":[{{"role":"user","content":"Say hello."}}]}}"#,
        args.stream
    ));
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let all = runtime.block_on(async {
        let args = &args;
        let runs = (0..args.connections).map(|_| connection(args, body.clone(), until));
        futures_util::future::join_all(runs).await
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut ttfb: Vec<u32> = all.iter().flat_map(|s| s.ttfb.iter().copied()).collect();
    let mut ttlb: Vec<u32> = all.iter().flat_map(|s| s.ttlb.iter().copied()).collect();
    let errors: usize = all.iter().map(|s| s.errors).sum();
    ttfb.sort_unstable();
    ttlb.sort_unstable();
    println!(
        "RESULT rps={:.1} ttfb_p50_us={} ttfb_p99_us={} ttlb_p50_us={} ttlb_p99_us={} requests={} errors={}",
        ttlb.len() as f64 / elapsed,
        percentile(&ttfb, 50),
        percentile(&ttfb, 99),
        percentile(&ttlb, 50),
        percentile(&ttlb, 99),
        ttlb.len(),
        errors
    );
    Ok(())
}
