//! What a limit counts, over which window, and how.

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

/// How a [`Limit`] counts over its window; see the
/// [module docs](crate::rate_limit#choosing-an-algorithm) for which to choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Algorithm {
    /// Never more than `amount` in any interval of length `window` (the
    /// default): what "60 per minute" means to the people who read it.
    #[default]
    Sliding,
    /// GCRA: a burst of up to `burst` (the whole amount by default), then
    /// a smooth refill of `amount / window`.
    Gcra,
    /// Calendar-aligned windows (UTC minute, hour, day), reset at their end.
    Fixed,
}

impl Algorithm {
    /// `sliding`, `gcra` or `fixed`: the name configuration uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sliding => "sliding",
            Algorithm::Gcra => "gcra",
            Algorithm::Fixed => "fixed",
        }
    }
}

impl std::str::FromStr for Algorithm {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sliding" => Ok(Algorithm::Sliding),
            "gcra" => Ok(Algorithm::Gcra),
            "fixed" => Ok(Algorithm::Fixed),
            _ => Err("must be one of sliding, gcra, fixed"),
        }
    }
}

/// `amount` of `measure` per `window`, e.g. 60 requests per minute, counted
/// with an [`Algorithm`] ([`Sliding`](Algorithm::Sliding) unless set).
///
/// ```
/// use std::time::Duration;
/// use tollgate::rate_limit::{Algorithm, Limit, Measure};
///
/// let rpm = Limit::requests_per_minute(60);
/// assert_eq!(rpm, Limit::new(Measure::Requests, 60, Duration::from_secs(60)));
/// assert_eq!(rpm.algorithm, Algorithm::Sliding);
/// assert_eq!(rpm.to_string(), "60 requests per minute");
/// assert_eq!(Limit::tokens(150_000, Duration::from_secs(90)).to_string(), "150000 tokens per 90s");
///
/// // Today's smooth GCRA, one request every second and no burst:
/// let spaced = Limit::requests_per_minute(60).algorithm(Algorithm::Gcra).burst(1);
/// assert_eq!(spaced.burst, Some(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    /// What is counted.
    pub measure: Measure,
    /// How many per window.
    pub amount: u64,
    /// The window.
    pub window: Duration,
    /// How it is counted.
    pub algorithm: Algorithm,
    /// For [`Algorithm::Gcra`], the most admitted at once (`None`: the whole
    /// amount). Ignored by the other algorithms.
    pub burst: Option<u64>,
}

impl Limit {
    /// `amount` of `measure` per `window`, sliding.
    pub const fn new(measure: Measure, amount: u64, window: Duration) -> Self {
        Limit {
            measure,
            amount,
            window,
            algorithm: Algorithm::Sliding,
            burst: None,
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

    /// The same limit counted with `algorithm`.
    pub const fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// The same limit with a GCRA burst of `burst` (at least 1; at most the
    /// amount): `1` spaces requests evenly, `window / amount` apart.
    pub const fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The GCRA capacity: the burst, within `1..=amount`.
    pub(crate) fn capacity(&self) -> u64 {
        match self.burst {
            Some(b) => b.clamp(1, self.amount.max(1)).min(self.amount),
            None => self.amount,
        }
    }

    /// What a limit's state is kept under, besides its scope: its measure,
    /// window and algorithm. Not its amount or burst, so a limit raised or
    /// lowered keeps what was already used.
    pub(crate) fn same_state(&self, other: &Limit) -> bool {
        self.measure == other.measure
            && self.window == other.window
            && self.algorithm == other.algorithm
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_the_burst_within_the_amount() {
        let l = Limit::requests_per_minute(60);
        assert_eq!(l.capacity(), 60);
        assert_eq!(l.burst(1).capacity(), 1);
        assert_eq!(l.burst(0).capacity(), 1);
        assert_eq!(l.burst(600).capacity(), 60);
        assert_eq!(Limit::requests_per_minute(0).burst(5).capacity(), 0);
        assert!(l.same_state(&Limit::requests_per_minute(7).burst(2)));
        assert!(!l.same_state(&l.algorithm(Algorithm::Gcra)));
        assert_eq!("fixed".parse(), Ok(Algorithm::Fixed));
        assert!("leaky".parse::<Algorithm>().is_err());
    }
}
