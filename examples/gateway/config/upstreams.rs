//! `[[upstreams]]`, and what `[[models]]` says about routing and shared
//! limits: where each model is served, and how much it and its upstream may
//! take (issues 16 and 18).
//!
//! ```toml
//! upstream = "mock"                 # the default upstream, named "default"
//!
//! [[upstreams]]
//! name = "anthropic"
//! url = "https://api.anthropic.com/v1"
//! kind = "anthropic"
//! api_key_env = "ANTHROPIC_API_KEY"
//! timeout_secs = 120
//! requests_per_minute = 4000
//! max_concurrent = 64
//! [upstreams.retry]
//! max_attempts = 2
//!
//! [[upstreams]]
//! name = "vllm"
//! url = "https://vllm.internal:8443/v1"
//! ca_file = "/etc/tollgate/internal-ca.pem"   # trusted instead of the system's roots
//!
//! [[models]]
//! name = "claude-sonnet"
//! upstream = "anthropic"
//! upstream_model = "claude-sonnet-4-5-20250929"
//! tokens_per_minute = 400000
//! attempt_timeout_secs = 90
//! ```

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::{Config, Redacted, RetryConfig};

/// The name of the upstream that `upstream = "…"` (the old single-upstream
/// form) configures, and that a model without `upstream` uses.
pub const DEFAULT_UPSTREAM: &str = "default";

/// Which API an upstream speaks, and so how the gateway authenticates to it
/// and which endpoints it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    /// OpenAI's API (and the compatible servers: vLLM, Ollama, …): chat
    /// completions, completions, embeddings, responses; `Authorization:
    /// Bearer`.
    OpenAi,
    /// Anthropic's Messages API; `x-api-key` and `anthropic-version`.
    Anthropic,
}

impl UpstreamKind {
    /// `openai` or `anthropic`, as the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamKind::OpenAi => "openai",
            UpstreamKind::Anthropic => "anthropic",
        }
    }
}

/// One `[[upstreams]]` entry.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// What `[[models]] upstream` names, and the `upstream` label of logs
    /// and metrics.
    pub name: String,
    /// The base URL the API's paths go under (`https://api.openai.com/v1`),
    /// or `mock` for the built-in mock, which speaks both kinds.
    pub url: String,
    /// `openai` (default) or `anthropic`.
    #[serde(default = "default_kind")]
    pub kind: UpstreamKind,
    /// The environment variable holding the upstream key (read at start).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The upstream key itself, for tests; prefer `api_key_env`.
    #[serde(default)]
    pub api_key: Option<Redacted<String>>,
    /// PEM CA certificates an `https://` upstream's certificate must chain
    /// to, instead of the system's roots (a private CA, a self-signed
    /// server).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Whole-request timeout towards this upstream, retries included, up to
    /// the response head (default: `request_timeout_secs`).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Retries towards this upstream (default: the top-level `[retry]`).
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// Requests per minute to this upstream, all keys and models together.
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// Tokens per minute to this upstream, all keys and models together.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// Requests in flight to this upstream at most.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
}

fn default_kind() -> UpstreamKind {
    UpstreamKind::OpenAi
}

impl fmt::Debug for UpstreamConfig {
    /// Without the key: `Debug` output ends up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("url", &super::without_credentials(&self.url))
            .field("kind", &self.kind)
            .field("api_key_env", &self.api_key_env)
            .field("api_key", &self.api_key)
            .field("ca_file", &self.ca_file)
            .field("timeout_secs", &self.timeout_secs)
            .field("retry", &self.retry)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("tokens_per_minute", &self.tokens_per_minute)
            .field("max_concurrent", &self.max_concurrent)
            .finish()
    }
}

/// Whether `url` is one an upstream may have: `mock` or an http(s) base URL.
pub fn is_upstream_url(url: &str) -> bool {
    url == "mock" || url.starts_with("http://") || url.starts_with("https://")
}

/// Checks `[[upstreams]]` and the routing and limit fields of `[[models]]`;
/// the message names the entry (`upstreams[2].name: …`).
pub fn validate(config: &Config) -> Result<(), String> {
    if config.upstream_ca_file.is_some() && !config.upstream.starts_with("https://") {
        return Err("upstream_ca_file: the default upstream is not an https:// URL".into());
    }
    let mut names = HashSet::from([DEFAULT_UPSTREAM]);
    for (i, upstream) in config.upstreams.iter().enumerate() {
        let at = |field: &str| format!("upstreams[{i}].{field}");
        if upstream.name.is_empty() || upstream.name.chars().any(char::is_control) {
            return Err(format!("{}: must be a non-empty name", at("name")));
        }
        if !names.insert(upstream.name.as_str()) {
            let why = if upstream.name == DEFAULT_UPSTREAM {
                "is the name of the default upstream (`upstream = ...`)"
            } else {
                "is a duplicate"
            };
            return Err(format!("{}: {:?} {why}", at("name"), upstream.name));
        }
        if !is_upstream_url(&upstream.url) {
            return Err(format!(
                "{}: expected \"mock\" or an http(s) base URL, got {:?}",
                at("url"),
                super::without_credentials(&upstream.url)
            ));
        }
        if upstream.ca_file.is_some() && !upstream.url.starts_with("https://") {
            return Err(format!("{}: only for an https:// url", at("ca_file")));
        }
        if upstream.api_key.is_some() && upstream.api_key_env.is_some() {
            return Err(format!(
                "{}: set api_key or api_key_env, not both",
                at("api_key")
            ));
        }
        if upstream.timeout_secs == Some(0) {
            return Err(format!("{}: must be at least 1", at("timeout_secs")));
        }
        if let Some(retry) = &upstream.retry {
            retry
                .validate()
                .map_err(|e| format!("{}.{e}", at("retry")))?;
        }
        positive(&at, upstream.requests_per_minute, "requests_per_minute")?;
        positive(&at, upstream.tokens_per_minute, "tokens_per_minute")?;
        positive(
            &at,
            upstream.max_concurrent.map(u64::from),
            "max_concurrent",
        )?;
    }
    for (i, model) in config.models.iter().enumerate() {
        let at = |field: &str| format!("models[{i}].{field}");
        if let Some(name) = &model.upstream
            && !names.contains(name.as_str())
        {
            return Err(format!(
                "{}: no upstream named {name:?} (the default upstream is {DEFAULT_UPSTREAM:?}; \
                     others are [[upstreams]] entries)",
                at("upstream")
            ));
        }
        if model.upstream_model.as_deref() == Some("") {
            return Err(format!("{}: must not be empty", at("upstream_model")));
        }
        if model.attempt_timeout_secs == Some(0) {
            return Err(format!(
                "{}: must be at least 1",
                at("attempt_timeout_secs")
            ));
        }
        positive(&at, model.requests_per_minute, "requests_per_minute")?;
        positive(&at, model.tokens_per_minute, "tokens_per_minute")?;
        positive(&at, model.max_concurrent.map(u64::from), "max_concurrent")?;
    }
    if config
        .rate_limit_headers
        .parse::<tollgate::rate_limit::HeaderStyle>()
        .is_err()
    {
        return Err(format!(
            "rate_limit_headers: expected openai, timestamp, ietf, legacy or none, got {:?}",
            config.rate_limit_headers
        ));
    }
    Ok(())
}

fn positive(at: &dyn Fn(&str) -> String, value: Option<u64>, field: &str) -> Result<(), String> {
    match value {
        Some(0) => Err(format!("{}: must be at least 1", at(field))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml: &str) -> Result<(), String> {
        let config: Config = toml::from_str(toml).map_err(|e| e.to_string())?;
        validate(&config)
    }

    #[test]
    fn upstream_entries_are_checked() {
        let ok = "[[upstreams]]\nname = \"a\"\nurl = \"mock\"\nkind = \"anthropic\"\n\
                  [[models]]\nname = \"m\"\nupstream = \"a\"\ninput_usd_per_million = 1.0\noutput_usd_per_million = 1.0\n";
        assert_eq!(check(ok), Ok(()));
        let err = check("[[upstreams]]\nname = \"default\"\nurl = \"mock\"\n").unwrap_err();
        assert!(err.contains("upstreams[0].name"), "{err}");
        let err = check("[[upstreams]]\nname = \"a\"\nurl = \"ftp://x\"\n").unwrap_err();
        assert!(err.contains("upstreams[0].url"), "{err}");
        let err = check(
            "[[models]]\nname = \"m\"\nupstream = \"nope\"\ninput_usd_per_million = 1.0\noutput_usd_per_million = 1.0\n",
        )
        .unwrap_err();
        assert!(
            err.contains("models[0].upstream") && err.contains("nope"),
            "{err}"
        );
        let err =
            check("[[upstreams]]\nname = \"a\"\nurl = \"mock\"\nmax_concurrent = 0\n").unwrap_err();
        assert!(err.contains("upstreams[0].max_concurrent"), "{err}");
        assert!(check("rate_limit_headers = \"legacy\"\n").is_ok());
        let err =
            check("[[upstreams]]\nname = \"a\"\nurl = \"http://x/v1\"\nca_file = \"ca.pem\"\n")
                .unwrap_err();
        assert!(err.contains("upstreams[0].ca_file"), "{err}");
        assert_eq!(
            check("[[upstreams]]\nname = \"a\"\nurl = \"https://x/v1\"\nca_file = \"ca.pem\"\n"),
            Ok(())
        );
        let err = check("upstream_ca_file = \"ca.pem\"\n").unwrap_err();
        assert!(err.contains("upstream_ca_file"), "{err}");
    }

    #[test]
    fn debug_hides_the_key() {
        let config: Config = toml::from_str(
            "[[upstreams]]\nname = \"a\"\nurl = \"https://u:pw@x/v1\"\napi_key = \"sk-upstream-secret\"\n",
        )
        .unwrap();
        let debug = format!("{:?}", config.upstreams[0]);
        assert!(
            !debug.contains("sk-upstream-secret") && !debug.contains("pw"),
            "{debug}"
        );
    }
}
