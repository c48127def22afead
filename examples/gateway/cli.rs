//! The command line, and where the logs go.
//!
//! Every option can also come from the environment (`TOLLGATE_CONFIG`,
//! `TOLLGATE_LISTEN`, `TOLLGATE_UPSTREAM`, `TOLLGATE_STORE`,
//! `TOLLGATE_LOG_FORMAT`), which is how containers are configured; an
//! option on the command line wins over its variable, and both win over the
//! config file. Exit codes: 0 after a clean shutdown (or a `--check` that
//! passed), 2 for a usage or configuration error, 1 for a failure at run
//! time (the address is taken, the server failed).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::config::{Config, ConfigError, DEMO_CONFIG, StoreChoice};

/// tollgate's OpenAI-compatible gateway: keys, rate limits, budgets,
/// retries, error envelopes and safe streams in front of an LLM upstream.
///
/// Stops on SIGTERM or SIGINT, letting in-flight requests and streams finish
/// for `shutdown_grace_secs` (a second signal cuts the wait short).
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
pub struct Cli {
    /// TOML configuration file [default: the embedded demo configuration]
    #[arg(long, env = "TOLLGATE_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Address to listen on, e.g. 0.0.0.0:8080 (port 0: any free port; the
    /// address taken is printed) [default: the config's `listen`]
    #[arg(long, env = "TOLLGATE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// OpenAI-compatible base URL of the upstream, e.g.
    /// http://127.0.0.1:11434/v1, or `mock` [default: the config's `upstream`]
    #[arg(long, env = "TOLLGATE_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,

    /// Where keys, spend and balances live: memory, sqlite:PATH, or
    /// redis://HOST:PORT/DB (rediss:// with TLS) [default: the config's `store`]
    #[arg(long, env = "TOLLGATE_STORE", value_name = "STORE", value_parser = parse_store)]
    pub store: Option<StoreChoice>,

    /// Log format: human-readable text, or one JSON object per line for log
    /// shippers. Logs go to stderr; the filter is RUST_LOG (default info).
    #[arg(
        long,
        env = "TOLLGATE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,

    /// Check the configuration (with the options above applied) and exit:
    /// 0 when the gateway would start with it, 2 with the error otherwise.
    #[arg(long)]
    pub check: bool,

    /// Benchmark baseline: forward every POST /v1/* to the default upstream
    /// with no tollgate layer (no keys, limits, budgets or envelope); see
    /// proxy_only.rs. Never in production.
    #[arg(long)]
    pub proxy_only: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `2026-01-01T00:00:00Z INFO request key="demo" …`
    Text,
    /// `{"timestamp":…,"level":"INFO","message":"request","key":"demo",…}`
    Json,
}

fn parse_store(value: &str) -> Result<StoreChoice, String> {
    value.parse()
}

impl Cli {
    /// The configuration: the file (or the demo one), then the options.
    /// Also says whether it is the demo configuration.
    pub fn load_config(&self) -> Result<(Config, bool), ConfigError> {
        let (mut config, demo) = match &self.config {
            Some(path) => (Config::from_file(path)?, false),
            None => (
                Config::from_toml(DEMO_CONFIG, "embedded demo config")?,
                true,
            ),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(upstream) = &self.upstream {
            config.upstream.clone_from(upstream);
        }
        if let Some(store) = &self.store {
            config.store = match store {
                // The URL as given: `Display` hides its password.
                StoreChoice::Redis(url) => url.clone(),
                other => other.to_string(),
            };
        }
        config.proxy_only = self.proxy_only;
        config.validate("command line")?;
        Ok((config, demo))
    }
}

/// Installs the log subscriber: `format` on stderr, filtered by `RUST_LOG`
/// (default `info`). Colours only on a terminal, so files and shippers get
/// plain text.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}
