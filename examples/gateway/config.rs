//! The gateway's configuration file (TOML), and its embedded demo defaults.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

mod admin;
mod secrets;
mod tenants;
mod upstreams;

pub use self::admin::{Usd, one_kind_of_money};
use self::admin::{
    default_budget_policy, default_max_top_up, default_min_top_up, default_store_timeout,
};
pub use self::secrets::Redacted;
pub use self::tenants::table_of;
pub use self::upstreams::{DEFAULT_UPSTREAM, UpstreamConfig, UpstreamKind};

/// The demo configuration `cargo run --example gateway` starts with.
pub const DEMO_CONFIG: &str = r#"
listen = "127.0.0.1:8080"
upstream = "mock"
error_format = "openai"
rate_limit_headers = "openai"
request_timeout_secs = 60
stream_idle_timeout_secs = 60
drain_timeout_secs = 60

[retry]
max_attempts = 3
initial_backoff_ms = 500
max_backoff_ms = 8000
max_retry_after_secs = 120

[[models]]
name = "llama3:8b-instruct-q8_0"
input_usd_per_million = 0.01
output_usd_per_million = 0.02
max_output_tokens = 4096
context_window = 8192

[[models]]
name = "gpt-4o-mini"
input_usd_per_million = 0.15
output_usd_per_million = 0.60
max_output_tokens = 16384
context_window = 128000

[[keys]]
id = "demo"
name = "Demo key"
secret = "sk-tollgate-demo-0123456789"
models = ["*"]
requests_per_minute = 60
tokens_per_minute = 150000
max_concurrent = 10
budget_usd = 5.0
budget_period = "monthly"

[[keys]]
id = "prepaid"
name = "Prepaid demo key"
secret = "sk-tollgate-prepaid-0123456789"
models = ["llama3:*"]
requests_per_minute = 20
balance_usd = 0.01
"#;

/// One entry of `[[models]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The model name clients send.
    pub name: String,
    /// USD per million prompt tokens.
    pub input_usd_per_million: f64,
    /// USD per million completion tokens.
    pub output_usd_per_million: f64,
    /// USD per million cached prompt tokens (defaults to the input price).
    #[serde(default)]
    pub cached_input_usd_per_million: Option<f64>,
    /// Completion tokens reserved when a request sets no `max_tokens`.
    #[serde(default = "default_max_output")]
    pub max_output_tokens: u64,
    /// Prompt + completion tokens the model accepts.
    #[serde(default)]
    pub context_window: Option<u64>,

    // Routing and model-wide limits (gw16: issues 16 and 18; see `config/upstreams.rs`).
    /// The upstream serving it: an `[[upstreams]]` name (default: the
    /// default upstream, `upstream = ...`).
    #[serde(default)]
    pub upstream: Option<String>,
    /// The model's name at the upstream, when it differs from `name`.
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// Per-attempt timeout for this model (default: its upstream's `[retry]`).
    #[serde(default)]
    pub attempt_timeout_secs: Option<u64>,
    /// Requests per minute to this model, all keys together.
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// Tokens per minute to this model, all keys together.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// Requests in flight to this model at most, all keys together.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
}

fn default_max_output() -> u64 {
    4096
}

/// `[retry]`: the gateway's retries towards the upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// First backoff.
    pub initial_backoff_ms: u64,
    /// Backoff cap.
    pub max_backoff_ms: u64,
    /// A longer `Retry-After` from the upstream is not waited for.
    pub max_retry_after_secs: u64,
    /// The longest wait for one attempt's response head (default 30 s, the
    /// HiveOps guide's `timeout=30`); a model may set its own.
    pub attempt_timeout_secs: u64,
}

impl RetryConfig {
    /// Checks values that parse but cannot work; the message starts with
    /// the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts: must be at least 1".into());
        }
        if self.initial_backoff_ms > self.max_backoff_ms {
            return Err("initial_backoff_ms: must not exceed max_backoff_ms".into());
        }
        if self.attempt_timeout_secs == 0 {
            return Err("attempt_timeout_secs: must be at least 1".into());
        }
        Ok(())
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            initial_backoff_ms: 500,
            max_backoff_ms: 8000,
            max_retry_after_secs: 120,
            attempt_timeout_secs: 30,
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `"mock"` or a base URL such as `http://127.0.0.1:9000/v1`.
    #[serde(default = "default_upstream")]
    pub upstream: String,
    /// Sent upstream as a Bearer token.
    #[serde(default)]
    pub upstream_api_key: Option<Redacted<String>>,
    /// PEM CA certificates an `https://` `upstream` must chain to, instead
    /// of the system's roots (a private CA).
    #[serde(default)]
    pub upstream_ca_file: Option<std::path::PathBuf>,
    /// openai | anthropic | error_code_detail | humanloop
    #[serde(default = "default_error_format")]
    pub error_format: String,
    /// openai | timestamp | ietf | legacy | none
    #[serde(default = "default_rate_limit_headers")]
    pub rate_limit_headers: String,
    /// Whole-request timeout towards the upstream (response head).
    #[serde(default = "default_timeout")]
    pub request_timeout_secs: u64,
    /// A stream silent for longer ends with a timeout error event.
    #[serde(default = "default_timeout")]
    pub stream_idle_timeout_secs: u64,
    /// When a client disconnects before or during a proxied answer, the
    /// gateway keeps reading the upstream's answer for up to this many
    /// seconds (and 64 MiB), so the call is charged its reported usage; past
    /// that, the prompt plus the output read so far. 0: stop at once.
    #[serde(default = "default_timeout")]
    pub drain_timeout_secs: u64,
    /// Retries towards the upstream.
    #[serde(default)]
    pub retry: RetryConfig,
    /// The models served.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// The keys accepted.
    #[serde(default)]
    pub keys: Vec<tollgate::auth::KeyEntry>,
    /// Users: limits and budgets shared by the keys naming them (`[[keys]]
    /// user = "ann"`). See `config/tenants.rs`.
    #[serde(default)]
    pub users: Vec<tollgate::auth::TenantEntry>,
    /// Teams, shared by their keys (`[[keys]] team = "research"`), each in
    /// at most one org.
    #[serde(default)]
    pub teams: Vec<tollgate::auth::TenantEntry>,
    /// Orgs, shared by their teams' keys.
    #[serde(default)]
    pub orgs: Vec<tollgate::auth::TenantEntry>,
    /// Where keys, spend and balances live: `memory`, `sqlite:PATH` or
    /// `redis://HOST:PORT/DB` (`rediss://` with TLS). See [`StoreChoice`].
    #[serde(default = "default_store")]
    pub store: String,
    /// PEM CA certificates a `rediss://` store must chain to, instead of
    /// the system's roots (a private CA, a self-signed Redis).
    #[serde(default)]
    pub store_ca_file: Option<std::path::PathBuf>,
    /// A request head must arrive whole within this many seconds of its
    /// first byte (of the connection's opening, for its first request), or
    /// the connection is closed.
    #[serde(default = "default_client_header_timeout")]
    pub client_header_timeout_secs: u64,
    /// A request body must arrive whole within this many seconds of its
    /// head, or the request is answered 408 and nothing reaches the upstream.
    #[serde(default = "default_client_body_timeout")]
    pub client_body_timeout_secs: u64,
    /// A kept-alive connection with no request in progress is closed after
    /// this many seconds (default 120: longer than the idle timeouts of
    /// load balancers and client pools, so they close first; see `server.rs`).
    #[serde(default = "default_client_idle_timeout")]
    pub client_idle_timeout_secs: u64,
    /// Open client connections at most; more wait in the listen backlog
    /// until one closes. Each may also hold an upstream connection: keep it
    /// under half the open-file limit (`ulimit -n`).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// On SIGTERM or SIGINT, in-flight requests and streams get this many
    /// seconds to finish; streams still open then end with an error event.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,

    // Issue 15: the admin API and how budgets reserve (see `admin/`).
    /// Bearer keys of the admin API (`/admin/*`); with none here nor in
    /// `admin_key_sha256s`, every `/admin/*` path answers 404.
    #[serde(default)]
    pub admin_keys: Vec<Redacted<String>>,
    /// SHA-256 (64 hex digits) of admin keys: the same, without the secret
    /// in the file.
    #[serde(default)]
    pub admin_key_sha256s: Vec<String>,
    /// The smallest prepaid top-up `POST /admin/keys/{id}/balance` takes.
    #[serde(default = "default_min_top_up")]
    pub min_top_up_usd: Usd,
    /// The largest prepaid top-up it takes, per call.
    #[serde(default = "default_max_top_up")]
    pub max_top_up_usd: Usd,
    /// `bounded` (admit while anything remains; overshoot by at most one
    /// request) or `strict` (reserve each request's worst case; never
    /// overshoot). See `tollgate::budget::ReservePolicy`.
    #[serde(default = "default_budget_policy")]
    pub budget_policy: String,
    /// Each call to a remote store (Redis) must answer within this many
    /// milliseconds, or the layer applies its failure policy (rate limits
    /// admit, budgets and keys refuse with 503). Default 250: far above a
    /// healthy Redis's worst case, small next to an LLM call.
    #[serde(default = "default_store_timeout")]
    pub store_timeout_ms: u64,

    // Upstreams and metrics (gw16: issue 16 items 2-3; see `config/upstreams.rs`).
    /// More upstreams besides the default one (`upstream`), for
    /// `[[models]] upstream` to name.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// Serve `GET /metrics` on this address, without a key; otherwise it is
    /// served on the main listener to admin keys only.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Add a `key` label to the per-request series (one series per key:
    /// only for a few keys).
    #[serde(default)]
    pub metrics_per_key: bool,
    /// Serve with no tollgate layer, for the load bench (`proxy_only.rs`):
    /// set by `--proxy-only` only, never read from a file.
    #[serde(skip)]
    pub proxy_only: bool,
}

/// Where the gateway keeps its state, parsed from `store` / `--store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// In this process only (the default): for demos and tests.
    Memory,
    /// An SQLite file.
    Sqlite(std::path::PathBuf),
    /// A Redis server, `redis://…` or `rediss://…`.
    Redis(String),
}

impl std::str::FromStr for StoreChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "memory" {
            Ok(StoreChoice::Memory)
        } else if let Some(path) = s.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(
                    "sqlite: needs a file path, e.g. sqlite:/var/lib/tollgate/state.db".into(),
                );
            }
            Ok(StoreChoice::Sqlite(path.into()))
        } else if s.starts_with("redis://") || s.starts_with("rediss://") {
            Ok(StoreChoice::Redis(s.to_owned()))
        } else {
            Err(format!(
                "expected memory, sqlite:PATH or redis://HOST:PORT/DB (rediss:// for TLS), got {s:?}"
            ))
        }
    }
}

impl std::fmt::Display for StoreChoice {
    /// The choice without any password a Redis URL carries.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreChoice::Memory => f.write_str("memory"),
            StoreChoice::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StoreChoice::Redis(url) => f.write_str(&without_credentials(url)),
        }
    }
}

/// `url` without the `user:password@` part, for logs and messages.
pub fn without_credentials(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

fn default_store() -> String {
    "memory".into()
}

fn default_client_header_timeout() -> u64 {
    10
}

fn default_client_body_timeout() -> u64 {
    30
}

fn default_client_idle_timeout() -> u64 {
    120
}

fn default_max_connections() -> usize {
    4096
}

fn default_shutdown_grace() -> u64 {
    30
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_upstream() -> String {
    "mock".into()
}

fn default_error_format() -> String {
    "openai".into()
}

fn default_rate_limit_headers() -> String {
    "openai".into()
}

fn default_timeout() -> u64 {
    60
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown field or a bad value (the message names the
    /// field, line and column).
    #[error("{origin}: {message}")]
    Parse {
        /// The file (or "embedded demo config").
        origin: String,
        /// What the parser said.
        message: String,
    },
    /// A value that parses but makes no sense.
    #[error("{origin}: {message}")]
    Invalid {
        /// The file.
        origin: String,
        /// What is wrong.
        message: String,
    },
}

/// Adds the line of the `[[keys]]`, `[[models]]`, `[[teams]]`, … entry an error names
/// (`keys[3]…` → the fourth `[[keys]]` header) to its message.
fn with_line(error: ConfigError, text: &str) -> ConfigError {
    let ConfigError::Invalid { origin, message } = error else {
        return error;
    };
    let entry = ["keys", "models", "upstreams", "users", "teams", "orgs"]
        .iter()
        .find_map(|table| {
            let rest = message.strip_prefix(table)?.strip_prefix('[')?;
            let index: usize = rest.split(']').next()?.parse().ok()?;
            let header = format!("[[{table}]]");
            text.lines()
                .enumerate()
                .filter(|(_, line)| line.trim() == header)
                .nth(index)
                .map(|(n, _)| n + 1)
        });
    let message = match entry {
        Some(line) => format!("line {line}: {message}"),
        None => message,
    };
    ConfigError::Invalid { origin, message }
}

impl Config {
    /// Reads and checks a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Parses and checks TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: secrets::parse_error_message(text, &e),
        })?;
        config
            .validate(origin)
            .map_err(|error| with_line(error, text))?;
        Ok(config)
    }

    /// Checks values that parse but make no sense; `origin` names the source.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        if self.upstream != "mock"
            && !(self.upstream.starts_with("http://") || self.upstream.starts_with("https://"))
        {
            return Err(invalid(format!(
                "upstream: expected \"mock\" or an http(s) base URL, got {:?}",
                self.upstream
            )));
        }
        self.error_format
            .parse::<tollgate::ErrorFormat>()
            .map_err(|e| invalid(format!("error_format: {e}")))?;
        self.store
            .parse::<StoreChoice>()
            .map_err(|e| invalid(format!("store: {e}")))?;
        for (field, secs) in [
            (
                "client_header_timeout_secs",
                self.client_header_timeout_secs,
            ),
            ("client_body_timeout_secs", self.client_body_timeout_secs),
            ("client_idle_timeout_secs", self.client_idle_timeout_secs),
        ] {
            if secs == 0 {
                return Err(invalid(format!("{field}: must be at least 1")));
            }
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections: must be at least 1".into()));
        }
        self.retry
            .validate()
            .map_err(|e| invalid(format!("retry.{e}")))?;
        let mut names = HashSet::new();
        for (i, model) in self.models.iter().enumerate() {
            if !names.insert(model.name.as_str()) {
                return Err(invalid(format!(
                    "models[{i}].name: duplicate model {:?}",
                    model.name
                )));
            }
            for (field, price) in [
                ("input_usd_per_million", Some(model.input_usd_per_million)),
                ("output_usd_per_million", Some(model.output_usd_per_million)),
                (
                    "cached_input_usd_per_million",
                    model.cached_input_usd_per_million,
                ),
            ] {
                if price.is_some_and(|p| !p.is_finite() || p < 0.0) {
                    return Err(invalid(format!(
                        "models[{i}].{field}: must be a non-negative number"
                    )));
                }
            }
        }
        upstreams::validate(self).map_err(invalid)?;
        let mut ids = HashSet::new();
        for (i, key) in self.keys.iter().enumerate() {
            if !ids.insert(key.id.as_str()) {
                return Err(invalid(format!(
                    "keys[{i}].id: duplicate key id {:?}",
                    key.id
                )));
            }
        }
        self.validate_admin(origin)?;
        self.validate_tenants().map_err(invalid)?;
        Ok(())
    }

    /// The upstream base URL without a trailing slash, or `None` for the mock.
    pub fn upstream_url(&self) -> Option<&str> {
        (self.upstream != "mock").then(|| self.upstream.trim_end_matches('/'))
    }
}
