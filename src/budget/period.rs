//! Where a budget period starts and ends, on the UTC calendar.
//!
//! A monthly budget that resets "on the first" resets at `00:00:00Z` on the
//! first of the month for every gateway instance, whatever their time zone:
//! periods are pure functions of the wall clock in UTC, so two instances (or
//! a Redis ledger and a gateway) agree on them without talking.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::Period;
use crate::time::{civil_from_days, days_from_civil};

const DAY: u64 = 86_400;

/// One period of a budget: spend counted from `start`, reset at `end`.
///
/// ```
/// use std::time::Duration;
/// use tollgate::budget::Period;
///
/// let day = Duration::from_secs(86_400);
/// let now = day * 20_485 - Duration::from_secs(30); // 2026-01-31T23:59:30Z
/// let window = Period::Monthly.window(now);
/// assert_eq!(window.start, day * 20_454); // 2026-01-01T00:00:00Z
/// assert_eq!(window.end, Some(day * 20_485)); // 2026-02-01T00:00:00Z
/// assert_eq!(Period::Never.window(now).end, None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeriodWindow {
    /// When the period began (time since the Unix epoch).
    pub start: Duration,
    /// When it ends and spend resets; `None` for [`Period::Never`].
    pub end: Option<Duration>,
}

impl PeriodWindow {
    /// The window of [`Period::Never`]: from the epoch, never ending.
    pub const NEVER: PeriodWindow = PeriodWindow {
        start: Duration::ZERO,
        end: None,
    };

    /// Whether `now` falls after this window's end.
    pub fn has_ended(&self, now: Duration) -> bool {
        self.end.is_some_and(|end| now >= end)
    }
}

impl Period {
    /// The period `now` (time since the Unix epoch) falls in.
    ///
    /// `Daily` starts at 00:00 UTC, `Weekly` on Monday 00:00 UTC, `Monthly`
    /// on the first at 00:00 UTC; `Rolling(d)` windows are counted from the
    /// Unix epoch (a zero duration behaves like `Never`).
    pub fn window(self, now: Duration) -> PeriodWindow {
        let secs = now.as_secs();
        let day = secs / DAY;
        let (start_day, end_day) = match self {
            Period::Daily => (day, day + 1),
            Period::Weekly => {
                // 1970-01-01 was a Thursday: Monday is 3 days before it.
                let since_monday = (day + 3) % 7;
                (day - since_monday, day - since_monday + 7)
            }
            Period::Monthly => {
                let (y, m, _) = civil_from_days(day as i64);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (
                    days_from_civil(y, m, 1) as u64,
                    days_from_civil(ny, nm, 1) as u64,
                )
            }
            Period::Rolling(length) if !length.is_zero() => {
                let len = length.as_nanos();
                let start = now.as_nanos() / len * len;
                let start = Duration::new(
                    u64::try_from(start / 1_000_000_000).unwrap_or(u64::MAX),
                    (start % 1_000_000_000) as u32,
                );
                return PeriodWindow {
                    start,
                    end: start.checked_add(length),
                };
            }
            Period::Rolling(_) | Period::Never => return PeriodWindow::NEVER,
        };
        PeriodWindow {
            start: Duration::from_secs(start_day * DAY),
            end: Some(Duration::from_secs(end_day * DAY)),
        }
    }
}

impl fmt::Display for Period {
    /// `daily`, `weekly`, `monthly`, `never`, or `rolling:<seconds>s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Period::Daily => f.write_str("daily"),
            Period::Weekly => f.write_str("weekly"),
            Period::Monthly => f.write_str("monthly"),
            Period::Never => f.write_str("never"),
            Period::Rolling(d) => write!(f, "rolling:{}s", d.as_secs()),
        }
    }
}

/// A period that [`Period::from_str`] cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid budget period {0:?}: expected daily, weekly, monthly, never, or rolling:<n><s|m|h|d> (e.g. rolling:30d)"
)]
pub struct InvalidPeriod(String);

impl FromStr for Period {
    type Err = InvalidPeriod;

    /// Reads `daily`, `weekly`, `monthly`, `never`, or `rolling:<n><unit>`
    /// with unit `s`, `m`, `h` or `d` and a non-zero `n`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::budget::Period;
    /// assert_eq!("monthly".parse::<Period>().unwrap(), Period::Monthly);
    /// assert_eq!("rolling:30d".parse::<Period>().unwrap(), Period::Rolling(Duration::from_secs(30 * 86_400)));
    /// assert!("fortnightly".parse::<Period>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Period, InvalidPeriod> {
        let err = || InvalidPeriod(s.to_owned());
        match s.trim().to_ascii_lowercase().as_str() {
            "daily" | "day" => Ok(Period::Daily),
            "weekly" | "week" => Ok(Period::Weekly),
            "monthly" | "month" => Ok(Period::Monthly),
            "never" | "lifetime" => Ok(Period::Never),
            other => {
                let spec = other.strip_prefix("rolling:").ok_or_else(err)?;
                let split = spec.len().checked_sub(1).ok_or_else(err)?;
                let (n, unit) = spec.split_at(split);
                let n: u64 = n.parse().map_err(|_| err())?;
                let unit = match unit {
                    "s" => 1,
                    "m" => 60,
                    "h" => 3600,
                    "d" => DAY,
                    _ => return Err(err()),
                };
                match n.checked_mul(unit) {
                    Some(secs) if secs > 0 => Ok(Period::Rolling(Duration::from_secs(secs))),
                    _ => Err(err()),
                }
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for Period {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Period, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Period {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{format_rfc3339, parse_rfc3339};
    use proptest::prelude::*;

    fn at(s: &str) -> Duration {
        parse_rfc3339(s).unwrap()
    }

    fn fmt_window(w: PeriodWindow) -> (String, Option<String>) {
        (format_rfc3339(w.start), w.end.map(format_rfc3339))
    }

    #[test]
    fn calendar_boundaries_are_utc() {
        let cases = [
            (
                Period::Daily,
                "2026-03-20T12:30:00Z",
                "2026-03-20T00:00:00Z",
                "2026-03-21T00:00:00Z",
            ),
            // 2026-03-20 is a Friday.
            (
                Period::Weekly,
                "2026-03-20T12:30:00Z",
                "2026-03-16T00:00:00Z",
                "2026-03-23T00:00:00Z",
            ),
            (
                Period::Weekly,
                "2026-03-16T00:00:00Z",
                "2026-03-16T00:00:00Z",
                "2026-03-23T00:00:00Z",
            ),
            (
                Period::Weekly,
                "2026-03-15T23:59:59Z",
                "2026-03-09T00:00:00Z",
                "2026-03-16T00:00:00Z",
            ),
            (
                Period::Monthly,
                "2026-12-31T23:59:59Z",
                "2026-12-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            (
                Period::Monthly,
                "2028-02-29T10:00:00Z",
                "2028-02-01T00:00:00Z",
                "2028-03-01T00:00:00Z",
            ),
            (
                Period::Monthly,
                "2026-02-01T00:00:00Z",
                "2026-02-01T00:00:00Z",
                "2026-03-01T00:00:00Z",
            ),
            (
                Period::Rolling(Duration::from_secs(3600)),
                "2026-03-20T12:30:00Z",
                "2026-03-20T12:00:00Z",
                "2026-03-20T13:00:00Z",
            ),
        ];
        for (period, now, start, end) in cases {
            assert_eq!(
                fmt_window(period.window(at(now))),
                (start.to_owned(), Some(end.to_owned())),
                "{period} at {now}"
            );
        }
        assert_eq!(Period::Never.window(at("2026-03-20T12:30:00Z")).end, None);
        assert_eq!(
            Period::Rolling(Duration::ZERO)
                .window(at("2026-03-20T12:30:00Z"))
                .end,
            None
        );
    }

    #[test]
    fn display_round_trips() {
        for p in [
            Period::Daily,
            Period::Weekly,
            Period::Monthly,
            Period::Never,
            Period::Rolling(Duration::from_secs(90)),
        ] {
            assert_eq!(p.to_string().parse::<Period>().unwrap(), p);
        }
        for bad in [
            "",
            "rolling:",
            "rolling:0d",
            "rolling:5y",
            "rolling:-1d",
            "rolling:99999999999999999999d",
        ] {
            assert!(bad.parse::<Period>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn now_is_inside_its_window(secs in 0u64..8_000_000_000, nanos in 0u32..1_000_000_000, which in 0usize..5) {
            let period = [Period::Daily, Period::Weekly, Period::Monthly,
                Period::Rolling(Duration::from_secs(7_777)),
                Period::Rolling(Duration::from_millis(3))][which];
            let now = Duration::new(secs, nanos);
            let w = period.window(now);
            let end = w.end.unwrap();
            prop_assert!(w.start <= now && now < end);
            // The next window starts where this one ends.
            prop_assert_eq!(period.window(end).start, end);
        }
    }
}
