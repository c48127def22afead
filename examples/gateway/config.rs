//! The gateway's configuration file (TOML), and its embedded demo defaults.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

/// The demo configuration `cargo run --example gateway` starts with.
pub const DEMO_CONFIG: &str = r#"
listen = "127.0.0.1:8080"
upstream = "mock"
error_format = "openai"
rate_limit_headers = "openai"
request_timeout_secs = 60
stream_idle_timeout_secs = 60

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
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            initial_backoff_ms: 500,
            max_backoff_ms: 8000,
            max_retry_after_secs: 120,
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
    /// openai | anthropic | error_code_detail | humanloop
    #[serde(default = "default_error_format")]
    pub error_format: String,
    /// openai | timestamp | ietf | none
    #[serde(default = "default_rate_limit_headers")]
    pub rate_limit_headers: String,
    /// Whole-request timeout towards the upstream (response head).
    #[serde(default = "default_timeout")]
    pub request_timeout_secs: u64,
    /// A stream silent for longer ends with a timeout error event.
    #[serde(default = "default_timeout")]
    pub stream_idle_timeout_secs: u64,
    /// Retries towards the upstream.
    #[serde(default)]
    pub retry: RetryConfig,
    /// The models served.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// The keys accepted.
    #[serde(default)]
    pub keys: Vec<tollgate::auth::KeyEntry>,
    /// Where keys, spend and balances live: `memory`, `sqlite:PATH` or
    /// `redis://HOST:PORT/DB` (`rediss://` with TLS). See [`StoreChoice`].
    #[serde(default = "default_store")]
    pub store: String,
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
}

/// A value from the file that must not be printed: `Debug` shows
/// `<redacted>`. Read it with [`Redacted::expose`].
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    /// The value, for the one place that uses it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> std::fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A dollar amount in the file: a number (`10`, `0.5`) or a decimal string
/// (`"12.50"`, exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usd(pub tollgate::budget::Money);

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Amount {
            Integer(i64),
            Number(f64),
            Text(String),
        }
        use serde::de::Error;
        match Amount::deserialize(deserializer)? {
            Amount::Integer(usd) => usd
                .checked_mul(1_000_000_000)
                .map(|nanos| Usd(tollgate::budget::Money::from_nanos(nanos)))
                .ok_or_else(|| D::Error::custom("the amount is too large")),
            Amount::Number(usd) if usd.is_finite() && usd.abs() < 9.0e9 => {
                Ok(Usd(tollgate::budget::Money::from_usd_f64(usd)))
            }
            Amount::Number(_) => Err(D::Error::custom(
                "the amount is not a finite number below 9e9",
            )),
            Amount::Text(text) => text.parse().map(Usd).map_err(D::Error::custom),
        }
    }
}

fn default_min_top_up() -> Usd {
    // HiveOps: "Minimum top-up: $10, Maximum: $1,000 per transaction".
    Usd(tollgate::budget::Money::from_usd(10))
}

fn default_max_top_up() -> Usd {
    Usd(tollgate::budget::Money::from_usd(1000))
}

fn default_store_timeout() -> u64 {
    250
}

fn default_budget_policy() -> String {
    "bounded".into()
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

/// Adds the line of the `[[keys]]`/`[[models]]` entry an error names
/// (`keys[3]…` → the fourth `[[keys]]` header) to its message.
fn with_line(error: ConfigError, text: &str) -> ConfigError {
    let ConfigError::Invalid { origin, message } = error else {
        return error;
    };
    let entry = ["keys", "models"].iter().find_map(|table| {
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
            message: parse_error_message(text, &e),
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
        if !matches!(
            self.rate_limit_headers.as_str(),
            "openai" | "timestamp" | "ietf" | "none"
        ) {
            return Err(invalid(format!(
                "rate_limit_headers: expected openai, timestamp, ietf or none, got {:?}",
                self.rate_limit_headers
            )));
        }
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
        if self.retry.max_attempts == 0 {
            return Err(invalid("retry.max_attempts: must be at least 1".into()));
        }
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
        Ok(())
    }

    /// The upstream base URL without a trailing slash, or `None` for the mock.
    pub fn upstream_url(&self) -> Option<&str> {
        (self.upstream != "mock").then(|| self.upstream.trim_end_matches('/'))
    }
}

// Issue 15: what the admin API, the key grants and the stores need of the
// file, and errors that never print a secret.

/// Fields whose values are secrets: an error on their line is reported
/// without the line's text or the value.
const SECRET_FIELDS: &[&str] = &["secret", "upstream_api_key", "admin_keys", "api_key"];

impl Config {
    /// Checks the admin keys, the top-up bounds, the budget policy and every
    /// `[[keys]]` entry (as a grant would build it: an expired, revoked or
    /// disabled key is valid, a key whose fields contradict each other is
    /// not). Errors name the field, never a secret.
    fn validate_admin(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        for (i, key) in self.admin_keys.iter().enumerate() {
            let key = key.expose();
            if key.len() < 16 || key.trim() != key {
                return Err(invalid(format!(
                    "admin_keys[{i}]: must be at least 16 characters, without surrounding spaces (value not shown)"
                )));
            }
        }
        for (i, hex) in self.admin_key_sha256s.iter().enumerate() {
            if tollgate::auth::KeyHash::from_hex(hex).is_err() {
                return Err(invalid(format!(
                    "admin_key_sha256s[{i}]: must be 64 hex digits (a SHA-256)"
                )));
            }
        }
        let (min, max) = (self.min_top_up_usd.0, self.max_top_up_usd.0);
        if min <= tollgate::budget::Money::ZERO {
            return Err(invalid("min_top_up_usd: must be more than 0".into()));
        }
        if max < min {
            return Err(invalid(
                "max_top_up_usd: must not be less than min_top_up_usd".into(),
            ));
        }
        if self.store_timeout_ms == 0 {
            return Err(invalid("store_timeout_ms: must be at least 1".into()));
        }
        if !matches!(self.budget_policy.as_str(), "bounded" | "strict") {
            return Err(invalid(format!(
                "budget_policy: expected bounded or strict, got {:?}",
                self.budget_policy
            )));
        }
        let mut secrets = std::collections::HashMap::new();
        for (i, key) in self.keys.iter().enumerate() {
            let record = key
                .clone()
                .into_record()
                .map_err(|e| invalid(format!("keys[{i}]: {e}")))?;
            one_kind_of_money(&record).map_err(|e| invalid(format!("keys[{i}]: {e}")))?;
            if let Some(other) = secrets.insert(record.secret_hash, key.id.as_str()) {
                return Err(invalid(format!(
                    "keys[{i}].secret: key {:?} has the same secret as key {other:?}",
                    key.id
                )));
            }
        }
        Ok(())
    }

    /// The reserve policy of `budget_policy`.
    pub fn reserve_policy(&self) -> tollgate::budget::ReservePolicy {
        match self.budget_policy.as_str() {
            "strict" => tollgate::budget::ReservePolicy::Strict,
            _ => tollgate::budget::ReservePolicy::Bounded,
        }
    }
}

/// Refuses a key with both a budget (`budget_usd`) and a prepaid balance
/// (`balance_usd`): the ledgers keep one account per key, so the two would
/// overwrite each other's books.
pub fn one_kind_of_money(record: &tollgate::auth::KeyRecord) -> Result<(), String> {
    let own = |mode| {
        record.budgets.iter().any(|b| {
            b.mode == mode
                && matches!(&b.scope, tollgate::budget::BudgetScope::Key(id) if *id == record.id)
        })
    };
    if own(tollgate::budget::BudgetMode::Budget) && own(tollgate::budget::BudgetMode::Balance) {
        return Err(format!(
            "key `{}`: `balance_usd` and `budget_usd` are both set: keep one (a key's budget and \
             balance would share one account in the ledger)",
            record.id
        ));
    }
    Ok(())
}

/// A TOML error as `line L, column C: message`, without the source line the
/// parser quotes (it may hold a secret), and, when the line holds a secret
/// field, without anything the message quotes either (a value).
fn parse_error_message(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    let Some(span) = error.span() else {
        return message.to_owned();
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |n| n + 1);
    let line = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    match field_at(text, line_start) {
        Some(field) if SECRET_FIELDS.contains(&field) => format!(
            "line {line}, column {column}: `{field}`: {} (the value is not shown: it is a secret)",
            without_quoted(message)
        ),
        _ => format!("line {line}, column {column}: {message}"),
    }
}

/// The key of the `key = value` pair the line at `line_start` belongs to:
/// its own, or that of the line above it whose value (a multi-line array)
/// it continues.
fn field_at(text: &str, line_start: usize) -> Option<&str> {
    let before = &text[..line_start];
    let this_line = text[line_start..].lines().next().unwrap_or("");
    std::iter::once(this_line)
        .chain(before.lines().rev())
        .find_map(|line| {
            let line = line.trim_start();
            if line.starts_with('#') {
                return None;
            }
            if line.starts_with('[') {
                // A table header: the field is not above it.
                return Some(None);
            }
            let (key, _) = line.split_once('=')?;
            let key = key.trim();
            let key = key.rsplit('.').next().unwrap_or(key).trim();
            // `"secret" = …` is a key; `"sk-a=b",` in an array is not.
            let key = match key.strip_prefix('"') {
                Some(quoted) => quoted.strip_suffix('"')?,
                None => key,
            };
            (!key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
            .then_some(Some(key))
        })
        .flatten()
}

/// `message` with every `…` and "…" part replaced by `<redacted>`.
fn without_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(['`', '"', '\'']) {
        let quote = rest[at..].chars().next().unwrap_or('"');
        out.push_str(&rest[..at]);
        match rest[at + 1..].find(quote) {
            Some(end) => {
                out.push_str("<redacted>");
                rest = &rest[at + 1 + end + 1..];
            }
            None => {
                out.push_str("<redacted>");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "sk-hunter2-0123456789";

    fn error_of(toml: &str) -> String {
        Config::from_toml(toml, "test.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_on_a_secret_line_show_neither_the_line_nor_the_value() {
        for toml in [
            format!("upstream_api_key = {SECRET}\n"),
            format!("upstream_api_key = \"{SECRET}\n"),
            format!("admin_keys = [\n  \"{SECRET}\",\n  {SECRET}\n]\n"),
            format!("[[keys]]\nid = \"a\"\nsecret = [\"{SECRET}\"]\n"),
            format!("[[keys]]\nid = \"a\"\nsecret = \"{SECRET}\"\nsecret = \"{SECRET}\"\n"),
            format!("admin_keys = [\"{SECRET}\", 7]\n"),
        ] {
            let err = error_of(&toml);
            assert!(!err.contains("hunter2"), "{toml}\n→ {err}");
            assert!(err.contains("line "), "{err}");
        }
    }

    #[test]
    fn other_errors_keep_the_parsers_message_with_its_line() {
        let err = error_of("listen = \"127.0.0.1:1\"\nbogus = 1\n");
        assert!(err.contains("line 2") && err.contains("bogus"), "{err}");
        let err = error_of("shutdown_grace_secs = \"soon\"\n");
        assert!(err.contains("line 1") && err.contains("soon"), "{err}");
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let config = Config::from_toml(
            &format!(
                "upstream_api_key = \"{SECRET}\"\nadmin_keys = [\"{SECRET}-admin\"]\n\n[[keys]]\nid = \"a\"\nsecret = \"{SECRET}-key\"\n"
            ),
            "test.toml",
        )
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert_eq!(config.admin_keys[0].expose(), &format!("{SECRET}-admin"));
    }

    #[test]
    fn keys_in_any_state_load_and_contradictions_name_their_line() {
        let config = Config::from_toml(
            "[[keys]]\nid = \"old\"\nsecret = \"sk-old-0123456789\"\nexpires_at = \"2020-01-01T00:00:00Z\"\nrevoked = true\ndisabled = true\n",
            "test.toml",
        );
        assert!(config.is_ok(), "{config:?}");
        let err = error_of(
            "[[keys]]\nid = \"a\"\nsecret = \"sk-a-0123456789\"\n\n[[keys]]\nid = \"b\"\nsecret = \"sk-b-0123456789\"\ncreated_at = \"2021-01-01T00:00:00Z\"\nexpires_at = \"2020-01-01T00:00:00Z\"\n",
        );
        assert!(
            err.contains("line 5") && err.contains("expires_at"),
            "{err}"
        );
        let err = error_of(
            "[[keys]]\nid = \"a\"\nsecret = \"sk-same-0123456789\"\n[[keys]]\nid = \"b\"\nsecret = \"sk-same-0123456789\"\n",
        );
        assert!(
            err.contains("line 4") && err.contains("same secret"),
            "{err}"
        );
        assert!(!err.contains("sk-same"), "{err}");
    }

    #[test]
    fn admin_fields_are_checked() {
        assert!(error_of("admin_keys = [\"short\"]\n").contains("admin_keys[0]"));
        assert!(!error_of("admin_keys = [\"short\"]\n").contains("short\""));
        assert!(error_of("admin_key_sha256s = [\"abc\"]\n").contains("admin_key_sha256s[0]"));
        assert!(error_of("min_top_up_usd = 20\nmax_top_up_usd = 10\n").contains("max_top_up_usd"));
        assert!(error_of("budget_policy = \"loose\"\n").contains("budget_policy"));
        let config = Config::from_toml("min_top_up_usd = \"2.50\"\n", "t").unwrap();
        assert_eq!(config.min_top_up_usd.0.to_decimal(), "2.50");
    }
}
