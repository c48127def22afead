//! tollgate's main job: an OpenAI-compatible gateway with keys, limits,
//! budgets, retries, error envelopes and safe streams.
//!
//! ```sh
//! cargo run --example gateway                                  # embedded demo config, mock upstream
//! cargo run --example gateway -- --config gateway.toml         # your config
//! cargo run --example gateway -- --listen 0.0.0.0:8080 --upstream http://127.0.0.1:11434/v1
//! cargo run --example gateway -- --config gateway.toml --check # validate, exit 0 or 2
//! cargo run --example gateway -- --proxy-only                  # no tollgate layer: the floor benches/load measures
//! cargo run --example gateway -- --help
//! ```
//!
//! It prints `tollgate gateway listening on http://ADDR` on stdout once it
//! accepts connections (the address actually bound, for `--listen
//! 127.0.0.1:0`); logs go to stderr. SIGTERM or SIGINT shut it down
//! gracefully (see `shutdown.rs`); it then exits 0. SIGHUP (or `POST
//! /admin/reload`) reads the config file again and applies it without a
//! restart (see `gateway.rs`); a file that does not parse or validate is
//! refused, and the running config stays.

mod access_log;
mod admin;
mod app;
mod body_timeout;
mod cli;
mod config;
mod gateway;
mod metrics;
#[path = "../support/mock/mod.rs"]
mod mock;
mod model_check;
mod proxy;
mod proxy_only;
mod record;
mod routing;
mod server;
mod shutdown;
mod stack;
mod stores;

use std::process::ExitCode;

use clap::Parser;

use tokio::signal::unix::{SignalKind, signal};

use crate::app::StartError;
use crate::cli::Cli;
use crate::gateway::{Gateway, ReloadError, Reloaded};
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
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            eprintln!("error: cannot handle SIGHUP: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let load: gateway::LoadConfig = Box::new(move || cli.load_config().map(|(config, _)| config));
    let (mut running, mut reload_requests) = match app::start(config, load).await {
        Ok(started) => started,
        Err(StartError::Config(error)) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(error @ (StartError::Io(_) | StartError::Store(_))) => {
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
    // Reloads (SIGHUP, the admin API) are served here, one at a time,
    // until a signal asks for a shutdown.
    let gateway = running.gateway.clone();
    let signal = loop {
        tokio::select! {
            signal = signals.next() => break signal,
            _ = hangups.recv() => {
                let _ = reload(&gateway, "SIGHUP").await;
            }
            Some(answer) = reload_requests.next() => {
                let _ = answer.send(reload(&gateway, "admin").await);
            }
            error = running.failed() => {
                tracing::error!(%error, "the server failed");
                return ExitCode::from(EXIT_FAILURE);
            }
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

/// Reloads the config, logging what happened: the fields that need a
/// restart, or why the file was refused (field and line, never a secret).
async fn reload(gateway: &Gateway, asked_by: &'static str) -> Result<Reloaded, ReloadError> {
    let reloaded = gateway.reload().await;
    match &reloaded {
        Ok(reloaded) => {
            tracing::info!(
                asked_by,
                keys_created = reloaded.keys.created,
                keys_updated = reloaded.keys.updated,
                keys_deleted = reloaded.keys.deleted,
                keys_skipped = reloaded.keys.skipped,
                "config reloaded"
            );
            if !reloaded.restart_required.is_empty() {
                tracing::warn!(
                    fields = %reloaded.restart_required.join(", "),
                    "these changes apply at the next restart, not on reload"
                );
            }
        }
        Err(error) => {
            tracing::error!(asked_by, %error, "config not reloaded; the running config stays")
        }
    }
    reloaded
}
