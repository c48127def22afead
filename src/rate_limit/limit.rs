//! What a limit counts and over which window.

use std::fmt;
use std::time::Duration;

/// What a [`Limit`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Measure {
    /// Requests.
    Requests,
    /// Tokens (prompt + completion, as reported by the upstream).
    Tokens,
}

/// `amount` of `measure` per `window`, e.g. 60 requests per minute.
///
/// ```
/// use std::time::Duration;
/// use tollgate::rate_limit::{Limit, Measure};
///
/// let rpm = Limit::requests_per_minute(60);
/// assert_eq!(rpm, Limit::new(Measure::Requests, 60, Duration::from_secs(60)));
/// assert_eq!(rpm.to_string(), "60 requests per minute");
/// assert_eq!(Limit::tokens(150_000, Duration::from_secs(90)).to_string(), "150000 tokens per 90s");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    /// What is counted.
    pub measure: Measure,
    /// How many per window.
    pub amount: u64,
    /// The window.
    pub window: Duration,
}

impl Limit {
    /// `amount` of `measure` per `window`.
    pub const fn new(measure: Measure, amount: u64, window: Duration) -> Self {
        Limit {
            measure,
            amount,
            window,
        }
    }

    /// `amount` requests per `window`.
    pub const fn requests(amount: u64, window: Duration) -> Self {
        Limit::new(Measure::Requests, amount, window)
    }

    /// `amount` tokens per `window`.
    pub const fn tokens(amount: u64, window: Duration) -> Self {
        Limit::new(Measure::Tokens, amount, window)
    }

    /// Requests per second.
    pub const fn requests_per_second(amount: u64) -> Self {
        Limit::requests(amount, Duration::from_secs(1))
    }

    /// Requests per minute.
    pub const fn requests_per_minute(amount: u64) -> Self {
        Limit::requests(amount, Duration::from_secs(60))
    }

    /// Requests per hour.
    pub const fn requests_per_hour(amount: u64) -> Self {
        Limit::requests(amount, Duration::from_secs(3600))
    }

    /// Requests per day.
    pub const fn requests_per_day(amount: u64) -> Self {
        Limit::requests(amount, Duration::from_secs(86_400))
    }

    /// Tokens per minute.
    pub const fn tokens_per_minute(amount: u64) -> Self {
        Limit::tokens(amount, Duration::from_secs(60))
    }

    /// Tokens per hour.
    pub const fn tokens_per_hour(amount: u64) -> Self {
        Limit::tokens(amount, Duration::from_secs(3600))
    }

    /// Tokens per day.
    pub const fn tokens_per_day(amount: u64) -> Self {
        Limit::tokens(amount, Duration::from_secs(86_400))
    }

    /// The window in words: `second`, `minute`, `hour`, `day`, or `90s`.
    pub fn window_name(&self) -> String {
        match self.window.as_millis() {
            1_000 => "second".into(),
            60_000 => "minute".into(),
            3_600_000 => "hour".into(),
            86_400_000 => "day".into(),
            ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
            ms => format!("{ms}ms"),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.measure {
            Measure::Requests => "requests",
            Measure::Tokens => "tokens",
        };
        write!(f, "{} {what} per {}", self.amount, self.window_name())
    }
}
