//! A deterministic stand-in for OpenAI and Anthropic, with fault injection.
//!
//! ```sh
//! cargo run --example mock_upstream -- --listen 127.0.0.1:9000 --require-key sk-up-test
//! curl -s http://127.0.0.1:9000/v1/chat/completions -H 'authorization: Bearer sk-up-test' \
//!   -H 'content-type: application/json' \
//!   -d '{"model":"m","messages":[{"role":"user","content":"hello MOCK:status=503,times=1"}]}'
//! curl -s http://127.0.0.1:9000/v1/messages -H 'x-api-key: sk-up-test' \
//!   -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' \
//!   -d '{"model":"m","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}'
//! curl -s http://127.0.0.1:9000/mock/calls
//! ```
//!
//! See `examples/support/mock/mod.rs` for the endpoints and the directives.

#[path = "support/mock/mod.rs"]
mod mock;

use std::net::SocketAddr;

const USAGE: &str = "usage: mock_upstream [--listen ADDR] [--require-key KEY] [--requests-per-minute N] [--model NAME]...

  --listen ADDR              address to listen on (default 127.0.0.1:9000)
  --require-key KEY          accept only this upstream key (Authorization: Bearer, or x-api-key)
  --requests-per-minute N    answer 429 past N requests a minute
  --model NAME               a model to list at /v1/models (repeatable; default two demo models)";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let mut listen: SocketAddr = "127.0.0.1:9000".parse()?;
    let mut key = None;
    let mut rpm = None;
    let mut models = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        match arg.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                listen = v.parse().map_err(|e| format!("--listen {v:?}: {e}"))?;
            }
            "--require-key" => key = Some(value("--require-key")?),
            "--requests-per-minute" => {
                let v = value("--requests-per-minute")?;
                rpm = Some(
                    v.parse::<u64>()
                        .map_err(|e| format!("--requests-per-minute {v:?}: {e}"))?,
                );
            }
            "--model" => models.push(value("--model")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}").into()),
        }
    }
    if models.is_empty() {
        models = vec!["llama3:8b-instruct-q8_0".into(), "gpt-4o-mini".into()];
    }
    let mut mock = mock::Mock::new(models);
    if let Some(key) = key {
        mock = mock.require_key(key);
    }
    if let Some(rpm) = rpm {
        mock = mock.requests_per_minute(rpm);
    }
    let addr = mock.serve(listen).await?;
    println!("mock upstream listening on http://{addr}/v1");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
