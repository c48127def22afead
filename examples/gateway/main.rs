//! tollgate's main job: an OpenAI-compatible gateway with keys, limits,
//! budgets, retries, error envelopes and safe streams.
//!
//! ```sh
//! cargo run --example gateway                                  # embedded demo config, mock upstream
//! cargo run --example gateway -- --config gateway.toml         # your config
//! cargo run --example gateway -- --listen 0.0.0.0:8080 --upstream http://127.0.0.1:11434/v1
//! cargo run --example gateway -- --config gateway.toml --check # validate, exit 0 or 2
//! cargo run --example gateway -- --help
//! ```
//!
//! It prints `tollgate gateway listening on http://ADDR` on stdout once it
//! accepts connections (the address actually bound, for `--listen
//! 127.0.0.1:0`); logs go to stderr. SIGTERM or SIGINT shut it down
//! gracefully (see `shutdown.rs`); it then exits 0.

mod access_log;
mod app;
mod cli;
mod config;
mod metrics;
#[path = "../support/mock/mod.rs"]
mod mock;
mod proxy;
mod routing;
mod server;
mod shutdown;

use std::process::ExitCode;

use clap::Parser;

use crate::app::StartError;
use crate::cli::Cli;
use crate::shutdown::Signals;

/// A usage or configuration error.
const EXIT_USAGE: u8 = 2;
/// A failure at run time.
const EXIT_FAILURE: u8 = 1;

#[tokio::main]
async fn main() -> ExitCode {
    // Usage errors exit 2, `--help` and `--version` exit 0, as clap does.
    let cli = Cli::parse();
    cli::init_logging(cli.log_format);
    let (config, demo) = match cli.load_config() {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if cli.check {
        return match app::check(&config) {
            Ok(()) => {
                let origin = cli.config.as_ref().map_or_else(
                    || "embedded demo config".to_owned(),
                    |p| p.display().to_string(),
                );
                println!("{origin}: ok");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(EXIT_USAGE)
            }
        };
    }
    // Before the address is printed: a signal sent as soon as it is must
    // find its handler.
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("error: cannot handle signals: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let first_model = config
        .models
        .first()
        .map(|m| m.name.clone())
        .unwrap_or_else(|| "MODEL".into());
    let mut running = match app::start(config).await {
        Ok(running) => running,
        Err(StartError::Config(error)) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(StartError::Io(error)) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    println!("tollgate gateway listening on http://{}", running.addr);
    println!("upstream: {}", running.upstream);
    if let Some(addr) = running.metrics_addr {
        println!("metrics on http://{addr}/metrics");
    }
    tracing::info!(addr = %running.addr, upstream = %running.upstream, "listening");
    if demo {
        println!("\ntry it (demo key from the embedded config):\n");
        println!(
            "  curl -s http://{}/v1/chat/completions \\\n    -H 'Authorization: Bearer sk-tollgate-demo-0123456789' \\\n    -H 'Content-Type: application/json' \\\n    -d '{{\"model\":\"{first_model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'\n",
            running.addr
        );
    }
    let signal = tokio::select! {
        signal = signals.next() => signal,
        error = running.failed() => {
            tracing::error!(%error, "the server failed");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    tracing::info!(signal, "shutting down");
    let second_signal = async move {
        signals.next().await;
    };
    match running.shutdown(second_signal).await {
        Ok(()) => {
            tracing::info!("shutdown complete");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "shutdown failed");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
