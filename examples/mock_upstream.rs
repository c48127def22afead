//! A deterministic OpenAI-compatible upstream, with fault injection.
//!
//! ```sh
//! cargo run --example mock_upstream -- --listen 127.0.0.1:9000
//! curl -s http://127.0.0.1:9000/v1/chat/completions -H 'content-type: application/json' \
//!   -d '{"model":"m","messages":[{"role":"user","content":"hello MOCK:status=503,times=1"}]}'
//! ```
//!
//! See `examples/support/mock.rs` for the directives.

#[path = "support/mock.rs"]
mod mock;

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let mut listen: SocketAddr = "127.0.0.1:9000".parse()?;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let value = args
                    .next()
                    .ok_or("--listen needs an address, e.g. 127.0.0.1:9000")?;
                listen = value
                    .parse()
                    .map_err(|e| format!("--listen {value:?}: {e}"))?;
            }
            "-h" | "--help" => {
                println!("usage: mock_upstream [--listen ADDR]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    let mock = mock::Mock::new(vec!["llama3:8b-instruct-q8_0".into(), "gpt-4o-mini".into()]);
    let addr = mock.serve(listen).await?;
    println!("mock upstream listening on http://{addr}/v1");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
