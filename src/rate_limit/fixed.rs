//! The calendar-aligned fixed window as a pure function of
//! `(state, now, cost)`.
//!
//! # Units
//!
//! Time is Unix time in microseconds (UTC, as the store's clock gives it);
//! window `i` of a limit is `[i · W, (i + 1) · W)`. For a minute, an hour or
//! a day those are the UTC minutes, hours and days (Unix time has no leap
//! seconds), as providers that reset "on the hour" count them; other windows
//! are aligned on multiples of themselves since the Unix epoch. The state is
//! `(window index, cost admitted in it)`: it does not depend on the amount.
//!
//! # Guarantee
//!
//! A request of cost `n` is admitted iff the cost already admitted in the
//! current window plus `n` is at most `amount`. So:
//!
//! - at most `amount` in each calendar window, and everything is free again
//!   at its end (so "reset" and a refused request's retry-after are the
//!   window's end);
//! - over an interval of length `W` straddling two windows, up to twice the
//!   amount: the end of one window and the start of the next.
//!
//! A debt (a settlement charging more than was reserved) is forgiven when
//! the window ends. The property tests below check the guarantee.

use super::Limit;
use super::gcra::window_us;
use super::sliding::Outcome;

/// One limit's calendar window, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fixed {
    amount: u64,
    window_us: u64,
}

impl Fixed {
    /// The window of `limit`. A window shorter than a microsecond counts as one.
    pub(crate) fn new(limit: &Limit) -> Self {
        Fixed {
            amount: limit.amount,
            window_us: window_us(limit),
        }
    }

    /// The window `unix_us` falls in.
    pub(crate) fn index_at(&self, unix_us: u64) -> u64 {
        unix_us / self.window_us
    }

    /// When window `index` ends (µs, Unix).
    pub(crate) fn end_of(&self, index: u64) -> u64 {
        index.saturating_add(1).saturating_mul(self.window_us)
    }

    /// The cost admitted in the current window, given the stored state.
    pub(crate) fn used(&self, state: (u64, u64), unix_us: u64) -> u64 {
        if state.0 == self.index_at(unix_us) {
            state.1
        } else {
            0
        }
    }

    /// Checks `cost` at `unix_us`. Admitted, the new state is
    /// `(index_at(unix_us), used + cost)`.
    pub(crate) fn check(&self, state: (u64, u64), unix_us: u64, cost: u64) -> Outcome {
        let used = self.used(state, unix_us);
        let end = self.end_of(self.index_at(unix_us)).saturating_sub(unix_us);
        let charged = used.saturating_add(cost);
        if cost <= self.amount && charged <= self.amount {
            return Outcome {
                admitted: true,
                remaining: self.amount - charged,
                reset_us: if charged == 0 { 0 } else { end },
                retry_after_us: Some(0),
            };
        }
        Outcome {
            admitted: false,
            remaining: self.amount.saturating_sub(used),
            reset_us: end,
            retry_after_us: (cost <= self.amount).then_some(end),
        }
    }

    /// The state after charging (`delta > 0`) or refunding (`delta < 0`)
    /// without a check.
    pub(crate) fn adjust(&self, state: (u64, u64), unix_us: u64, delta: i64) -> (u64, u64) {
        let used = self.used(state, unix_us);
        let used = if delta >= 0 {
            used.saturating_add(delta.unsigned_abs())
        } else {
            used.saturating_sub(delta.unsigned_abs())
        };
        (self.index_at(unix_us), used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn windows_are_utc_minutes_hours_and_days() {
        // 2026-03-20T12:30:59.5Z
        let t = 1_774_009_859_500_000u64;
        let minute = Fixed::new(&Limit::requests_per_minute(2));
        assert_eq!(minute.end_of(minute.index_at(t)) - t, 500_000);
        let hour = Fixed::new(&Limit::requests_per_hour(2));
        assert_eq!(hour.end_of(hour.index_at(t)) - t, 29 * 60_000_000 + 500_000);
        let day = Fixed::new(&Limit::requests_per_day(2));
        assert_eq!(day.end_of(day.index_at(t)) % 86_400_000_000, 0);

        let mut state = (0, 0);
        for _ in 0..2 {
            let o = minute.check(state, t, 1);
            assert!(o.admitted);
            state = (minute.index_at(t), minute.used(state, t) + 1);
        }
        let o = minute.check(state, t, 1);
        assert!(!o.admitted);
        assert_eq!(o.retry_after_us, Some(500_000));
        // At the top of the minute, everything is free again.
        assert!(minute.check(state, t + 500_000, 2).admitted);
        assert_eq!(minute.check(state, t, 3).retry_after_us, None);
        assert_eq!(minute.adjust(state, t, -5), (minute.index_at(t), 0));
        assert_eq!(minute.adjust(state, t + 500_000, 7).1, 7);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// At most `amount` per calendar window; at most twice that in any
        /// interval of length `W`.
        #[test]
        fn at_most_amount_per_window(
            amount in 1u64..50,
            window_us in 1u64..5_000_000,
            start in 0u64..1_000_000_000_000,
            arrivals in prop::collection::vec((0u64..3_000_000, 0u64..60), 1..200),
        ) {
            let f = Fixed::new(&Limit::requests(amount, Duration::from_micros(window_us)));
            let (mut now, mut state) = (start, (0, 0));
            let mut admitted: Vec<(u64, u64)> = Vec::new();
            for (gap, cost) in arrivals {
                now += gap;
                let o = f.check(state, now, cost);
                if o.admitted {
                    state = (f.index_at(now), f.used(state, now) + cost);
                    admitted.push((now, cost));
                } else if let Some(wait) = o.retry_after_us {
                    prop_assert!(wait > 0);
                    prop_assert!(f.check(state, now + wait, cost).admitted);
                }
            }
            for &(t, _) in &admitted {
                let same: u64 = admitted.iter().filter(|(s, _)| f.index_at(*s) == f.index_at(t)).map(|(_, c)| c).sum();
                prop_assert!(same <= amount);
                let span: u64 = admitted.iter().filter(|(s, _)| *s >= t && s - t < window_us).map(|(_, c)| c).sum();
                prop_assert!(span <= 2 * amount);
            }
        }
    }
}
