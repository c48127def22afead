//! Calls an OpenAI-compatible API (a tollgate gateway, a local model server,
//! a provider) through hyper-util's client, with tollgate's `RetryLayer`.
//!
//! ```sh
//! OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=sk-... \
//!     cargo run --example client -- "Say hello in five words"
//! cargo run --example client -- --stream "Count to ten"
//! ```
//!
//! `OPENAI_MODEL` picks the model (default `gpt-4o-mini`). Retries are logged
//! (`RUST_LOG=tollgate=debug` for the give-ups too). hyper-util's connector
//! speaks plain HTTP only; for `https://` providers use the `reqwest` feature's
//! `tollgate::client::ReqwestService`, or a TLS connector such as hyper-rustls.

use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate::retry::{RetryInfo, RetryLayer, RetryPolicy};
use tower::{Service, ServiceBuilder, ServiceExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "tollgate=info".into()),
        )
        .init();

    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let stream = args.first().is_some_and(|a| a == "--stream");
    if stream {
        args.remove(0);
    }
    let prompt = if args.is_empty() {
        "Say hello in five words.".to_owned()
    } else {
        args.join(" ")
    };

    let base =
        std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "http://127.0.0.1:8080/v1".into());
    let key = std::env::var("OPENAI_API_KEY").unwrap_or_default();
    let model = std::env::var("OPENAI_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into());
    let url = format!("{}/chat/completions", base.trim_end_matches('/'));
    if !url.starts_with("http://") {
        return Err(format!(
            "{url}: this example's hyper-util connector speaks plain http:// only \
             (use tollgate::client::ReqwestService or a TLS connector for https://)"
        )
        .into());
    }

    // hyper-util's client is a tower Service already: the layer wraps it as is.
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut client = ServiceBuilder::new()
        .layer(
            RetryLayer::new().policy(
                RetryPolicy::new()
                    .max_attempts(3)
                    .deadline(Duration::from_secs(120)),
            ),
        )
        .service(http);

    let body = serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": prompt}],
    });
    let mut request = http::Request::post(&url)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
    if !key.is_empty() {
        request
            .headers_mut()
            .insert(AUTHORIZATION, format!("Bearer {key}").parse()?);
    }

    let response = client.ready().await?.call(request).await?;
    let status = response.status();
    let info = response.extensions().get::<RetryInfo>().copied();
    eprintln!("POST {url} -> {status}");
    if let Some(info) = info {
        eprintln!(
            "attempts: {}, waited {:?} between them",
            info.attempts, info.total_wait
        );
    }

    // The body streams: for `--stream`, events print as they arrive.
    let mut body = response.into_body();
    let mut stdout = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if stream {
                print!("{}", String::from_utf8_lossy(&data));
            } else {
                stdout.extend_from_slice(&data);
            }
        }
    }
    if !stream {
        match serde_json::from_slice::<serde_json::Value>(&stdout) {
            Ok(json) => println!("{}", serde_json::to_string_pretty(&json)?),
            Err(_) => println!("{}", String::from_utf8_lossy(&stdout)),
        }
    }
    if !status.is_success() {
        std::process::exit(1);
    }
    Ok(())
}
