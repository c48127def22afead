//! tollgate's main job: an OpenAI-compatible gateway with keys, limits,
//! budgets, retries, error envelopes and safe streams.
//!
//! ```sh
//! cargo run --example gateway                                  # embedded demo config, mock upstream
//! cargo run --example gateway -- --config gateway.toml         # your config
//! cargo run --example gateway -- --listen 0.0.0.0:8080 --upstream http://127.0.0.1:11434/v1
//! ```

mod app;
mod config;
#[path = "../support/mock/mod.rs"]
mod mock;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use config::{Config, DEMO_CONFIG};

const USAGE: &str = "usage: gateway [--config PATH] [--listen ADDR] [--upstream URL|mock]

  --config PATH     TOML configuration (default: the embedded demo config)
  --listen ADDR     address to listen on, e.g. 127.0.0.1:8080
  --upstream URL    OpenAI-compatible base URL (e.g. http://127.0.0.1:9000/v1), or mock";

struct Args {
    config: Option<PathBuf>,
    listen: Option<SocketAddr>,
    upstream: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        config: None,
        listen: None,
        upstream: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value\n\n{USAGE}"));
        match arg.as_str() {
            "--config" => args.config = Some(PathBuf::from(value("--config")?)),
            "--listen" => {
                let v = value("--listen")?;
                args.listen = Some(v.parse().map_err(|e| format!("--listen {v:?}: {e}"))?);
            }
            "--upstream" => args.upstream = Some(value("--upstream")?),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tollgate=info".into()),
        )
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let (mut config, demo) = match &args.config {
        Some(path) => match Config::from_file(path) {
            Ok(config) => (config, false),
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(2);
            }
        },
        None => match Config::from_toml(DEMO_CONFIG, "embedded demo config") {
            Ok(config) => (config, true),
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(2);
            }
        },
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(upstream) = args.upstream {
        config.upstream = upstream;
    }
    if let Err(error) = config.validate("command line") {
        eprintln!("error: {error}");
        return ExitCode::from(2);
    }
    let first_model = config
        .models
        .first()
        .map(|m| m.name.clone())
        .unwrap_or_else(|| "MODEL".into());
    let running = match app::start(config).await {
        Ok(running) => running,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(1);
        }
    };
    println!("tollgate gateway listening on http://{}", running.addr);
    println!("upstream: {}", running.upstream);
    if demo {
        println!("\ntry it (demo key from the embedded config):\n");
        println!(
            "  curl -s http://{}/v1/chat/completions \\\n    -H 'Authorization: Bearer sk-tollgate-demo-0123456789' \\\n    -H 'Content-Type: application/json' \\\n    -d '{{\"model\":\"{first_model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'\n",
            running.addr
        );
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
        result = running.task => match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(1),
        },
    }
}
