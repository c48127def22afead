//! GCRA (the generic cell rate algorithm) as a pure function of
//! `(state, now, cost)`.
//!
//! # Units
//!
//! A limit of `amount` per `window` is run in *units of cost*: one unit is
//! `window / amount` of time, so a request costing `n` advances the state by
//! exactly `n` units and the arithmetic stays in integers with no rounding
//! drift, whatever the ratio of `window` to `amount` (60 requests per minute,
//! 7 per minute, 999,999 tokens per minute alike). Time enters once, as
//! `now_units = ⌊now_µs · amount / window_µs⌋`, and leaves once, when a state
//! is turned back into a duration (rounded up, so a client told to wait that
//! long is admitted).
//!
//! The state is the *theoretical arrival time* `tat` (in units): the time at
//! which the limit would be back to full. It is one `u64` per key and limit.
//!
//! # Guarantee
//!
//! With a burst `b` (`1 ≤ b ≤ amount`, the amount unless set), a request of
//! cost `n` is admitted at `now` iff `max(tat, now) + n − now ≤ b`; then
//! `tat` becomes `max(tat, now) + n`. A rejected request leaves `tat`
//! unchanged. So:
//!
//! - up to `b` is admitted at once (the burst), after which capacity
//!   refills smoothly at `amount / window`; `b = 1` spaces requests
//!   `window / amount` apart;
//! - over **any** span of time of length `L` (both ends included), the cost
//!   admitted is at most `b + ⌈amount · L / window⌉`. For `L = window` and
//!   the default burst that is twice the limit in the worst case: a full
//!   burst at the start of the span and the whole refill spent at its end.
//!
//! # State that survives a change of amount
//!
//! The stores keep a GCRA state as `(debt, at)`: the cost still
//! outstanding at time `at`, which does not depend on the amount. On read,
//! `tat = units_at(at) + debt` under the limit's current amount: the same
//! `tat` as stored when the amount did not change, and the same cost
//! outstanding (now refilling at the new rate) when it did.
//!
//! The property tests below check both, and that a rejected request is
//! admitted exactly when its `retry_after` has passed.

use std::time::Duration;

use super::Limit;

/// One limit's rate and burst, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    amount: u64,
    window_us: u64,
    /// The most admitted at once, in units: the burst (the amount by default).
    capacity: u64,
}

/// The outcome of [`Gcra::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The state to store: the charged state if admitted, unchanged otherwise.
    pub(crate) tat: u64,
    /// Whether the cost fits.
    pub(crate) admitted: bool,
    /// Units left (after the charge, if admitted).
    pub(crate) remaining: u64,
    /// Microseconds until the limit is back to full (after the charge, if admitted).
    pub(crate) reset_us: u64,
    /// Microseconds until this cost would fit: 0 when admitted, `None` when
    /// the cost exceeds the whole burst and never can.
    pub(crate) retry_after_us: Option<u64>,
}

impl Gcra {
    /// The rate and burst of `limit`. A window shorter than a microsecond
    /// counts as one.
    pub(crate) fn new(limit: &Limit) -> Self {
        Gcra {
            amount: limit.amount,
            window_us: window_us(limit),
            capacity: limit.capacity(),
        }
    }

    /// `now_us` in units: `⌊now_us · amount / window_us⌋`.
    pub(crate) fn units_at(&self, now_us: u64) -> u64 {
        mul_div_floor(now_us, self.amount, self.window_us)
    }

    /// The first microsecond at which `units_at` reaches `units`.
    pub(crate) fn time_of(&self, units: u64) -> u64 {
        if units == 0 {
            return 0;
        }
        if self.amount == 0 {
            return u64::MAX;
        }
        mul_div_ceil(units, self.window_us, self.amount)
    }

    /// Checks `cost` against the state `tat` at `now_us`; see the module docs.
    pub(crate) fn check(&self, tat: u64, now_us: u64, cost: u64) -> Decision {
        let now = self.units_at(now_us);
        let base = tat.max(now);
        let charged = base.saturating_add(cost);
        if cost <= self.capacity && charged - now <= self.capacity {
            return Decision {
                tat: charged,
                admitted: true,
                remaining: self.capacity - (charged - now),
                reset_us: self.time_of(charged).saturating_sub(now_us),
                retry_after_us: Some(0),
            };
        }
        // `charged - capacity > now` here, so the wait below is at least 1µs.
        let retry_after_us = (cost <= self.capacity)
            .then(|| self.time_of(charged - self.capacity).saturating_sub(now_us));
        let (remaining, reset_us) = self.peek(tat, now_us);
        Decision {
            tat,
            admitted: false,
            remaining,
            reset_us,
            retry_after_us,
        }
    }

    /// The state at `now_us` without a charge: `(remaining, reset_us)`.
    pub(crate) fn peek(&self, tat: u64, now_us: u64) -> (u64, u64) {
        let now = self.units_at(now_us);
        let base = tat.max(now);
        (
            self.capacity.saturating_sub(base - now),
            self.time_of(base).saturating_sub(now_us),
        )
    }

    /// Charges (`delta > 0`) or refunds (`delta < 0`) without a check. A
    /// charge may push the state past the limit (a debt later requests wait
    /// out); a refund never makes it fuller than full.
    pub(crate) fn adjust(&self, tat: u64, now_us: u64, delta: i64) -> u64 {
        let now = self.units_at(now_us);
        if delta >= 0 {
            tat.max(now).saturating_add(delta.unsigned_abs())
        } else {
            tat.saturating_sub(delta.unsigned_abs()).max(now)
        }
    }
}

/// A limit's window in microseconds, at least one.
pub(crate) fn window_us(limit: &Limit) -> u64 {
    u64::try_from(limit.window.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Microseconds as a `Duration`.
pub(crate) fn micros(us: u64) -> Duration {
    Duration::from_micros(us)
}

/// `⌊a·b/d⌋`, exactly. `a` (a time or a state) grows without bound while
/// `b·d` (a limit's amount and window) is fixed: splitting `a` by `d` keeps
/// the product in 64 bits for every limit whose `amount × window_µs` fits,
/// however long the process runs.
pub(crate) fn mul_div_floor(a: u64, b: u64, d: u64) -> u64 {
    if let Some(p) = a.checked_mul(b) {
        return p / d;
    }
    if b.checked_mul(d).is_some() {
        return (a / d).saturating_mul(b).saturating_add((a % d) * b / d);
    }
    u64::try_from(u128::from(a) * u128::from(b) / u128::from(d)).unwrap_or(u64::MAX)
}

/// `⌈a·b/d⌉`, exactly; see [`mul_div_floor`].
pub(crate) fn mul_div_ceil(a: u64, b: u64, d: u64) -> u64 {
    if let Some(p) = a.checked_mul(b) {
        return p.div_ceil(d);
    }
    if b.checked_mul(d).is_some() {
        return (a / d)
            .saturating_mul(b)
            .saturating_add(((a % d) * b).div_ceil(d));
    }
    u64::try_from((u128::from(a) * u128::from(b)).div_ceil(u128::from(d))).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn gcra(amount: u64, window: Duration) -> Gcra {
        Gcra::new(&Limit::requests(amount, window))
    }

    #[test]
    fn burst_then_smooth_refill() {
        let g = gcra(60, Duration::from_secs(60));
        let mut tat = 0;
        for i in 0..60 {
            let d = g.check(tat, 0, 1);
            assert!(d.admitted, "request {i}");
            assert_eq!(d.remaining, 59 - i);
            tat = d.tat;
        }
        let d = g.check(tat, 0, 1);
        assert!(!d.admitted);
        assert_eq!(d.tat, tat, "a rejection charges nothing");
        assert_eq!(d.retry_after_us, Some(1_000_000));
        assert_eq!(d.reset_us, 60_000_000);
        assert!(!g.check(tat, 999_999, 1).admitted);
        let d = g.check(tat, 1_000_000, 1);
        assert!(d.admitted);
        assert_eq!(d.remaining, 0);
    }

    #[test]
    fn uneven_rates_are_exact() {
        // 7 per minute: one every 8.571428…s, burst of exactly 7.
        let g = gcra(7, Duration::from_secs(60));
        let mut tat = 0;
        for _ in 0..7 {
            let d = g.check(tat, 0, 1);
            assert!(d.admitted);
            tat = d.tat;
        }
        let d = g.check(tat, 0, 1);
        assert!(!d.admitted);
        assert_eq!(d.retry_after_us, Some(8_571_429));
        assert!(!g.check(tat, 8_571_428, 1).admitted);
        assert!(g.check(tat, 8_571_429, 1).admitted);
        // 999,999 tokens per minute: more units than microseconds would round.
        let g = gcra(999_999, Duration::from_secs(60));
        let d = g.check(0, 0, 999_999);
        assert!(d.admitted);
        assert!(!g.check(d.tat, 0, 1).admitted);
    }

    #[test]
    fn too_large_never_fits() {
        let g = gcra(100, Duration::from_secs(60));
        let d = g.check(0, 0, 101);
        assert!(!d.admitted);
        assert_eq!(d.retry_after_us, None);
        assert_eq!(d.remaining, 100);
        let zero = gcra(0, Duration::from_secs(60));
        assert!(zero.check(0, 5, 0).admitted);
        assert_eq!(zero.check(0, 5, 1).retry_after_us, None);
    }

    #[test]
    fn degenerate_limits_do_not_panic() {
        for limit in [
            Limit::requests(u64::MAX, Duration::ZERO),
            Limit::requests(1, Duration::MAX),
            Limit::requests(u64::MAX, Duration::MAX),
            Limit::requests(0, Duration::ZERO),
        ] {
            let g = Gcra::new(&limit);
            for now in [0, 1, u64::MAX / 2, u64::MAX] {
                for cost in [0, 1, u64::MAX] {
                    let d = g.check(u64::MAX - 1, now, cost);
                    let _ = g.adjust(d.tat, now, i64::MIN);
                    let _ = g.adjust(d.tat, now, i64::MAX);
                }
            }
        }
    }

    #[test]
    fn adjust_refunds_and_charges() {
        let g = gcra(100, Duration::from_secs(100)); // 1 unit per second
        let d = g.check(0, 0, 50);
        assert_eq!(d.tat, 50);
        // Refund 30 of the 50: 80 left.
        let tat = g.adjust(d.tat, 0, -30);
        assert_eq!(g.check(tat, 0, 0).remaining, 80);
        // Refunds never overfill.
        assert_eq!(g.adjust(tat, 0, -1_000), 0);
        // Overcharge: 150 more than reserved leaves a debt of 70.
        let tat = g.adjust(tat, 0, 150);
        let d = g.check(tat, 0, 1);
        assert!(!d.admitted);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after_us, Some(71_000_000));
    }

    #[test]
    fn a_burst_of_one_spaces_requests_evenly() {
        let g = Gcra::new(&Limit::requests_per_minute(60).burst(1));
        let d = g.check(0, 0, 1);
        assert!(d.admitted);
        assert_eq!(d.remaining, 0);
        let refused = g.check(d.tat, 0, 1);
        assert!(!refused.admitted);
        assert_eq!(refused.retry_after_us, Some(1_000_000));
        assert!(!g.check(d.tat, 999_999, 1).admitted);
        assert!(g.check(d.tat, 1_000_000, 1).admitted);
        // A burst of 10 out of 60: ten at once, then one a second.
        let g = Gcra::new(&Limit::requests_per_minute(60).burst(10));
        let mut tat = 0;
        for _ in 0..10 {
            let d = g.check(tat, 0, 1);
            assert!(d.admitted);
            tat = d.tat;
        }
        assert!(!g.check(tat, 0, 1).admitted);
        assert_eq!(g.check(tat, 0, 11).retry_after_us, None);
    }

    /// A random limit and a random arrival sequence (gaps in µs, costs).
    fn scenario() -> impl Strategy<Value = (u64, u64, u64, Vec<(u64, u64)>)> {
        (1u64..50, 1u64..5_000_000).prop_flat_map(|(amount, window_us)| {
            let arrivals = prop::collection::vec(
                (
                    prop_oneof![Just(0u64), 0..window_us / 4 + 1, 0..window_us * 2],
                    0..=amount,
                ),
                1..200,
            );
            (Just(amount), Just(window_us), 1..=amount, arrivals)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The 64-bit paths agree with 128-bit arithmetic.
        #[test]
        fn mul_div_is_exact(a in any::<u64>(), b in 0u64..1 << 40, d in 1u64..1 << 40) {
            let exact = u128::from(a) * u128::from(b);
            let floor = u64::try_from(exact / u128::from(d)).unwrap_or(u64::MAX);
            let ceil = u64::try_from(exact.div_ceil(u128::from(d))).unwrap_or(u64::MAX);
            prop_assert_eq!(mul_div_floor(a, b, d), floor);
            prop_assert_eq!(mul_div_ceil(a, b, d), ceil);
        }

        /// Over any span `L`, admitted cost ≤ burst + ⌈amount·L/window⌉.
        #[test]
        fn never_exceeds_the_stated_bound((amount, window_us, burst, arrivals) in scenario()) {
            let g = Gcra::new(&Limit::requests(amount, Duration::from_micros(window_us)).burst(burst));
            let (mut now, mut tat) = (0u64, 0u64);
            let mut admitted: Vec<(u64, u64)> = Vec::new();
            for (gap, cost) in arrivals {
                now += gap;
                let d = g.check(tat, now, cost);
                if d.admitted {
                    tat = d.tat;
                    admitted.push((now, cost));
                } else {
                    prop_assert_eq!(d.tat, tat);
                }
            }
            for (i, &(start, _)) in admitted.iter().enumerate() {
                let mut sum = 0u64;
                for &(t, cost) in &admitted[i..] {
                    sum += cost;
                    let span = u128::from(t - start);
                    let bound = u128::from(burst)
                        + (u128::from(amount) * span).div_ceil(u128::from(window_us));
                    prop_assert!(u128::from(sum) <= bound,
                        "{} admitted over {}µs, bound {}", sum, span, bound);
                }
            }
        }

        /// A rejected request fits exactly when its retry-after has passed,
        /// not a microsecond earlier.
        #[test]
        fn retry_after_is_exact(
            amount in 1u64..1_000_000,
            window_us in 1u64..100_000_000,
            used in 0u64..2_000_000,
            cost in 1u64..1_000_000,
            now in 0u64..1_000_000_000,
        ) {
            let g = gcra(amount, Duration::from_micros(window_us));
            let tat = g.units_at(now) + used.min(amount);
            let d = g.check(tat, now, cost);
            match d.retry_after_us {
                Some(0) => prop_assert!(d.admitted),
                Some(wait) => {
                    prop_assert!(!d.admitted);
                    prop_assert!(g.check(tat, now + wait, cost).admitted);
                    prop_assert!(!g.check(tat, now + wait - 1, cost).admitted);
                }
                None => prop_assert!(cost > amount),
            }
        }

        /// After an admission, `remaining` more fit at once and one more does not,
        /// and the state is full again after `reset`.
        #[test]
        fn remaining_and_reset_are_truthful(
            amount in 1u64..10_000,
            window_us in 1u64..100_000_000,
            cost in 0u64..10_000,
            now in 0u64..1_000_000_000,
        ) {
            let g = gcra(amount, Duration::from_micros(window_us));
            let d = g.check(0, now, cost.min(amount));
            prop_assert!(d.admitted);
            prop_assert!(g.check(d.tat, now, d.remaining).admitted);
            prop_assert!(!g.check(d.tat, now, d.remaining + 1).admitted);
            prop_assert_eq!(g.check(d.tat, now + d.reset_us, 0).remaining, amount);
        }
    }
}
