//! The headers providers put on every answer: request ids, processing time
//! and rate-limit state.
//!
//! - OpenAI (<https://platform.openai.com/docs/guides/rate-limits>, "Rate
//!   limits in headers"; <https://platform.openai.com/docs/api-reference/debugging-requests>):
//!   `x-request-id`, `openai-processing-ms`, `openai-version`,
//!   `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, resets written
//!   as durations the way OpenAI writes them (`1s`, `6m0s`, `20ms`).
//! - Anthropic (<https://docs.anthropic.com/en/api/rate-limits#response-headers>,
//!   <https://docs.anthropic.com/en/api/errors#request-id>): `request-id`,
//!   `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`,
//!   resets as RFC 3339 times.
//!
//! The window is a fixed minute: the counts are real (every admitted
//! request and its tokens), so a test can watch `remaining` go down.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::errors::Api;

/// Requests per minute reported when no limit is configured.
pub const DEFAULT_REQUESTS_PER_MINUTE: u64 = 10_000;
/// Tokens per minute reported.
pub const TOKENS_PER_MINUTE: u64 = 2_000_000;
const WINDOW: Duration = Duration::from_secs(60);

/// One minute of admitted requests and tokens.
#[derive(Debug)]
pub struct RateWindow {
    started: Instant,
    requests: u64,
    tokens: u64,
}

/// The window's state when an answer leaves.
#[derive(Debug, Clone, Copy)]
pub struct RateState {
    /// The request limit.
    pub requests_limit: u64,
    /// Requests left in the window.
    pub requests_remaining: u64,
    /// Tokens left in the window.
    pub tokens_remaining: u64,
    /// Time until the window starts over.
    pub reset_in: Duration,
}

impl Default for RateWindow {
    fn default() -> Self {
        RateWindow {
            started: Instant::now(),
            requests: 0,
            tokens: 0,
        }
    }
}

impl RateWindow {
    fn roll(&mut self, now: Instant) {
        if now.duration_since(self.started) >= WINDOW {
            *self = RateWindow {
                started: now,
                requests: 0,
                tokens: 0,
            };
        }
    }

    /// Admits one request under `limit`, or says how long until it may come.
    pub fn admit(&mut self, limit: u64) -> Result<(), Duration> {
        let now = Instant::now();
        self.roll(now);
        if self.requests >= limit {
            return Err(WINDOW.saturating_sub(now.duration_since(self.started)));
        }
        self.requests += 1;
        Ok(())
    }

    /// Counts `tokens` against the window.
    pub fn charge(&mut self, tokens: u64) {
        self.roll(Instant::now());
        self.tokens = self.tokens.saturating_add(tokens);
    }

    /// The state to report.
    pub fn state(&self, limit: u64) -> RateState {
        RateState {
            requests_limit: limit,
            requests_remaining: limit.saturating_sub(self.requests),
            tokens_remaining: TOKENS_PER_MINUTE.saturating_sub(self.tokens),
            reset_in: WINDOW.saturating_sub(self.started.elapsed()),
        }
    }
}

/// Sets the headers every answer of `api` carries.
pub fn write(
    api: Api,
    headers: &mut HeaderMap,
    request_id: &str,
    processing: Duration,
    rate: RateState,
) {
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    match api {
        Api::OpenAi => {
            set("x-request-id", request_id.to_owned());
            set("openai-processing-ms", processing.as_millis().to_string());
            set("openai-version", "2020-10-01".into());
            set(
                "x-ratelimit-limit-requests",
                rate.requests_limit.to_string(),
            );
            set("x-ratelimit-limit-tokens", TOKENS_PER_MINUTE.to_string());
            set(
                "x-ratelimit-remaining-requests",
                rate.requests_remaining.to_string(),
            );
            set(
                "x-ratelimit-remaining-tokens",
                rate.tokens_remaining.to_string(),
            );
            set("x-ratelimit-reset-requests", go_duration(rate.reset_in));
            set("x-ratelimit-reset-tokens", go_duration(rate.reset_in));
        }
        Api::Anthropic => {
            set("request-id", request_id.to_owned());
            let reset = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                + rate.reset_in;
            let secs = reset.as_secs() + u64::from(reset.subsec_nanos() > 0);
            let reset = i64::try_from(secs)
                .ok()
                .and_then(|s| jiff::Timestamp::from_second(s).ok())
                .map(|t| t.to_string())
                .unwrap_or_default();
            set(
                "anthropic-ratelimit-requests-limit",
                rate.requests_limit.to_string(),
            );
            set(
                "anthropic-ratelimit-requests-remaining",
                rate.requests_remaining.to_string(),
            );
            set("anthropic-ratelimit-requests-reset", reset.clone());
            for (limit, remaining, reset_name) in [
                (
                    "anthropic-ratelimit-tokens-limit",
                    "anthropic-ratelimit-tokens-remaining",
                    "anthropic-ratelimit-tokens-reset",
                ),
                (
                    "anthropic-ratelimit-input-tokens-limit",
                    "anthropic-ratelimit-input-tokens-remaining",
                    "anthropic-ratelimit-input-tokens-reset",
                ),
                (
                    "anthropic-ratelimit-output-tokens-limit",
                    "anthropic-ratelimit-output-tokens-remaining",
                    "anthropic-ratelimit-output-tokens-reset",
                ),
            ] {
                set(limit, TOKENS_PER_MINUTE.to_string());
                set(remaining, rate.tokens_remaining.to_string());
                set(reset_name, reset.clone());
            }
        }
    }
}

/// A duration the way OpenAI's `x-ratelimit-reset-*` headers write it
/// (Go's `time.Duration` format, to the millisecond): `20ms`, `1s`,
/// `8.64s`, `6m0s`, `1h0m0s`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m) = (ms / 3_600_000, ms / 60_000 % 60);
    let (s, frac) = (ms / 1000 % 60, ms % 1000);
    let seconds = if frac == 0 {
        format!("{s}s")
    } else {
        let frac = format!("{frac:03}");
        format!("{s}.{}s", frac.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_openais() {
        let d = Duration::from_millis;
        assert_eq!(go_duration(d(20)), "20ms");
        assert_eq!(go_duration(d(1000)), "1s");
        assert_eq!(go_duration(d(8640)), "8.64s");
        assert_eq!(go_duration(d(360_000)), "6m0s");
        assert_eq!(go_duration(d(3_600_000)), "1h0m0s");
    }

    #[test]
    fn the_window_admits_up_to_its_limit() {
        let mut window = RateWindow::default();
        assert!(window.admit(2).is_ok());
        assert!(window.admit(2).is_ok());
        let wait = window.admit(2).expect_err("third is over");
        assert!(wait <= WINDOW);
        assert_eq!(window.state(2).requests_remaining, 0);
    }
}
