//! The sliding window as a pure function of `(buckets, now, cost)`.
//!
//! # Units
//!
//! A window `W` is cut into 60 buckets: time `t` (µs) falls in bucket
//! `⌊60 · t / W⌋`, computed in integers like [`gcra`](super::gcra) so that
//! no rounding drifts, whatever `W`. The state is the admitted cost per
//! bucket, for the buckets that can still hold an admission of the last
//! window: at most 61 `(bucket, cost)` pairs, whatever the amount or the
//! traffic. It does not depend on the amount: a limit raised or lowered
//! keeps what was already admitted.
//!
//! # Guarantee
//!
//! At time `t` in bucket `k`, the buckets `k − 60 ..= k` cover every instant
//! of `(t − W, t]`; their sum `s` is therefore at least the cost admitted in
//! the last window. A request of cost `n` is admitted iff `s + n ≤ amount`.
//! So:
//!
//! - **never more than `amount` in any interval of length `W`**: the last
//!   admission of such an interval sees all of it in its own last window;
//! - **refusing early by at most `W / 60`**: a cost admitted at `s` counts
//!   until its bucket leaves, which is before `s + W + W/60`; a refused
//!   request would have been refused by an exact log at any time before
//!   that;
//! - a refused request fits, if nothing else is admitted meanwhile, exactly
//!   after its `retry_after`: when enough of the oldest buckets have left.
//!
//! "Reset" is the time until the next unit frees up: the oldest non-empty
//! bucket leaving the window.
//!
//! The property tests below check all three.

use super::Limit;
use super::gcra::{mul_div_ceil, mul_div_floor, window_us};

/// Buckets per window.
pub(crate) const BUCKETS: u64 = 60;

/// One bucket: its index and the cost admitted in it.
pub(crate) type Bucket = (u64, u64);

/// The outcome of a check, shared by the algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Whether the cost fits.
    pub(crate) admitted: bool,
    /// Units left (after the charge, if admitted).
    pub(crate) remaining: u64,
    /// Microseconds until the next unit frees up (after the charge, if
    /// admitted); 0 when nothing is used.
    pub(crate) reset_us: u64,
    /// Microseconds until this cost would fit: 0 when admitted, `None` when
    /// the cost exceeds the whole limit and never can.
    pub(crate) retry_after_us: Option<u64>,
}

/// One limit's window, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sliding {
    amount: u64,
    window_us: u64,
}

impl Sliding {
    /// The window of `limit`. A window shorter than a microsecond counts as one.
    pub(crate) fn new(limit: &Limit) -> Self {
        Sliding {
            amount: limit.amount,
            window_us: window_us(limit),
        }
    }

    /// The bucket of `now_us`.
    pub(crate) fn bucket_at(&self, now_us: u64) -> u64 {
        mul_div_floor(now_us, BUCKETS, self.window_us)
    }

    /// The first microsecond of bucket `k`.
    pub(crate) fn start_of(&self, k: u64) -> u64 {
        mul_div_ceil(k, self.window_us, BUCKETS)
    }

    /// When bucket `k` stops counting: the start of bucket `k + 61`.
    pub(crate) fn leaves_at(&self, k: u64) -> u64 {
        self.start_of(k.saturating_add(BUCKETS + 1))
    }

    /// Drops the buckets that no longer count at `now_us`. (The stores
    /// prune with `prune_and_charge`; the tests step with this, `check` and
    /// `charge`.)
    #[cfg(test)]
    pub(crate) fn prune(&self, buckets: &mut Vec<Bucket>, now_us: u64) {
        prune_before(buckets, self.bucket_at(now_us).saturating_sub(BUCKETS));
    }

    /// Drops the buckets that no longer count at `now_us`, then adds `cost`
    /// to the bucket of `now_us` (the test steps' `prune` and `charge`, the
    /// bucket found once for both).
    pub(crate) fn prune_and_charge(&self, buckets: &mut Vec<Bucket>, now_us: u64, cost: u64) {
        let k = self.bucket_at(now_us);
        prune_before(buckets, k.saturating_sub(BUCKETS));
        charge_bucket(buckets, k, cost);
    }

    /// Checks `cost` against pruned `buckets` (oldest first) at `now_us`.
    pub(crate) fn check(&self, buckets: &[Bucket], now_us: u64, cost: u64) -> Outcome {
        let used = buckets
            .iter()
            .fold(0u64, |sum, (_, c)| sum.saturating_add(*c));
        let charged = used.saturating_add(cost);
        if cost <= self.amount && charged <= self.amount {
            let oldest = buckets
                .iter()
                .map(|(k, _)| *k)
                .next()
                .or((cost > 0).then(|| self.bucket_at(now_us)));
            return Outcome {
                admitted: true,
                remaining: self.amount - charged,
                reset_us: oldest.map_or(0, |k| self.leaves_at(k).saturating_sub(now_us)),
                retry_after_us: Some(0),
            };
        }
        let retry_after_us = (cost <= self.amount).then(|| {
            // Enough of the oldest buckets must leave to make room.
            let excess = charged - self.amount;
            let mut freed = 0u64;
            let mut at = u64::MAX;
            for (k, c) in buckets {
                freed = freed.saturating_add(*c);
                if freed >= excess {
                    at = self.leaves_at(*k);
                    break;
                }
            }
            at.saturating_sub(now_us)
        });
        Outcome {
            admitted: false,
            remaining: self.amount.saturating_sub(used),
            reset_us: buckets
                .first()
                .map_or(0, |(k, _)| self.leaves_at(*k).saturating_sub(now_us)),
            retry_after_us,
        }
    }

    /// Adds `cost` to the bucket of `now_us` (pruned `buckets`).
    #[cfg(test)]
    pub(crate) fn charge(&self, buckets: &mut Vec<Bucket>, now_us: u64, cost: u64) {
        if cost > 0 {
            charge_bucket(buckets, self.bucket_at(now_us), cost);
        }
    }

    /// Charges (`delta > 0`, to the current bucket, without a check) or
    /// refunds (`delta < 0`, from the oldest buckets first: what is left
    /// then counts at least as long as it would have, so a refund never lets
    /// more through than the window allows).
    #[cfg(test)]
    pub(crate) fn adjust(&self, buckets: &mut Vec<Bucket>, now_us: u64, delta: i64) {
        self.prune(buckets, now_us);
        if delta >= 0 {
            self.charge(buckets, now_us, delta.unsigned_abs());
            return;
        }
        self.refund(buckets, delta.unsigned_abs());
    }

    /// Refunds `cost` from the oldest of pruned `buckets` first: what is
    /// left then counts at least as long as it would have, so a refund never
    /// lets more through than the window allows. The buckets it empties are
    /// a prefix.
    pub(crate) fn refund(&self, buckets: &mut Vec<Bucket>, mut cost: u64) {
        let mut emptied = 0;
        for (_, c) in buckets.iter_mut() {
            let take = cost.min(*c);
            *c -= take;
            cost -= take;
            if *c == 0 {
                emptied += 1;
            }
            if cost == 0 {
                break;
            }
        }
        if emptied > 0 {
            buckets.drain(..emptied);
        }
    }

    /// When every bucket has left (µs): the state is then the same as none.
    pub(crate) fn full_at(&self, buckets: &[Bucket]) -> u64 {
        buckets.last().map_or(0, |(k, _)| self.leaves_at(*k))
    }
}

/// Drops the buckets before bucket `oldest`. Buckets are in order, so
/// those are a prefix, most often empty. No bucket holds a zero cost
/// (`charge_bucket` adds none, a refund drops those it empties), so there
/// is nothing else to drop.
fn prune_before(buckets: &mut Vec<Bucket>, oldest: u64) {
    let gone = buckets.iter().take_while(|(k, _)| *k < oldest).count();
    if gone > 0 {
        buckets.drain(..gone);
    }
}

/// Adds `cost` to bucket `k`, the newest (pruned `buckets`).
fn charge_bucket(buckets: &mut Vec<Bucket>, k: u64, cost: u64) {
    if cost == 0 {
        return;
    }
    match buckets.last_mut() {
        Some((last, c)) if *last == k => *c = c.saturating_add(cost),
        _ => buckets.push((k, cost)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn sliding(amount: u64, window_us: u64) -> Sliding {
        Sliding::new(&Limit::requests(amount, Duration::from_micros(window_us)))
    }

    /// Admits `cost` at `now` if it fits; returns the outcome.
    fn step(s: &Sliding, buckets: &mut Vec<Bucket>, now: u64, cost: u64) -> Outcome {
        s.prune(buckets, now);
        let o = s.check(buckets, now, cost);
        if o.admitted {
            s.charge(buckets, now, cost);
        }
        o
    }

    #[test]
    fn an_admission_into_an_empty_window_resets_when_its_own_bucket_leaves() {
        // Found by `retry_after_is_exact`: the reset of an admitted request
        // counts the request itself.
        let s = sliding(2, 40_738);
        let mut b = Vec::new();
        let o = step(&s, &mut b, 100_000, 1);
        assert!(o.admitted);
        assert_eq!(o.reset_us, s.leaves_at(s.bucket_at(100_000)) - 100_000);
        let mut later = b.clone();
        s.prune(&mut later, 100_000 + o.reset_us);
        assert_eq!(s.check(&later, 100_000 + o.reset_us, 0).remaining, 2);
        assert_eq!(s.check(&b, 100_000, 0).remaining, 1);
    }

    #[test]
    fn sixty_per_minute_is_sixty_in_any_minute() {
        let s = sliding(60, 60_000_000);
        let mut b = Vec::new();
        // The HiveOps test: 65 requests 0.1 s apart.
        let mut admitted = 0;
        for i in 0..65u64 {
            if step(&s, &mut b, i * 100_000, 1).admitted {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 60);
        let o = step(&s, &mut b, 6_500_000, 1);
        assert!(!o.admitted);
        // The first request (bucket 0) leaves at the start of bucket 61.
        assert_eq!(o.retry_after_us, Some(61_000_000 - 6_500_000));
        assert_eq!(o.reset_us, 61_000_000 - 6_500_000);
        assert!(!step(&s, &mut b, 60_999_999, 1).admitted);
        // Bucket 0 held the first ten (0 to 0.9 s): all ten free at once.
        let o = step(&s, &mut b, 61_000_000, 1);
        assert!(o.admitted);
        assert_eq!(o.remaining, 9);
        assert!(b.len() <= 61);
    }

    #[test]
    fn too_large_never_fits_and_refunds_come_from_the_oldest() {
        let s = sliding(100, 60_000_000);
        let mut b = Vec::new();
        assert_eq!(step(&s, &mut b, 0, 101).retry_after_us, None);
        step(&s, &mut b, 0, 40);
        step(&s, &mut b, 30_000_000, 40);
        s.adjust(&mut b, 30_000_000, -50);
        assert_eq!(b, [(30, 30)]);
        s.adjust(&mut b, 30_000_000, 25);
        assert_eq!(b, [(30, 55)]);
        assert_eq!(s.full_at(&b), s.leaves_at(30));
        assert_eq!(step(&s, &mut b, 30_000_000, 0).remaining, 45);
    }

    #[test]
    fn degenerate_limits_do_not_panic() {
        for (amount, window) in [(0, 0), (u64::MAX, 1), (1, u64::MAX), (u64::MAX, u64::MAX)] {
            let s = Sliding::new(&Limit::requests(amount, Duration::from_micros(window)));
            for now in [0, 1, u64::MAX / 2, u64::MAX] {
                let mut b = vec![(s.bucket_at(now), u64::MAX)];
                for cost in [0, 1, u64::MAX] {
                    step(&s, &mut b, now, cost);
                    s.adjust(&mut b, now, i64::MIN);
                    s.adjust(&mut b, now, i64::MAX);
                    let _ = s.full_at(&b);
                }
            }
        }
    }

    /// A random limit and a random arrival sequence (gaps in µs, costs).
    fn scenario() -> impl Strategy<Value = (u64, u64, Vec<(u64, u64)>)> {
        (1u64..80, 1u64..5_000_000).prop_flat_map(|(amount, window_us)| {
            let arrivals = prop::collection::vec(
                (
                    prop_oneof![
                        Just(0u64),
                        0..window_us / 50 + 1,
                        0..window_us / 4 + 1,
                        0..window_us * 2
                    ],
                    prop_oneof![Just(1u64), 0..=amount],
                ),
                1..300,
            );
            (Just(amount), Just(window_us), arrivals)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Never more than `amount` in any interval of length `window`, and
        /// a refusal only when an exact count over a window longer by
        /// `window / 60` would refuse too.
        #[test]
        fn never_more_than_n_in_any_window((amount, window_us, arrivals) in scenario()) {
            let s = sliding(amount, window_us);
            let (mut now, mut b) = (0u64, Vec::new());
            let mut admitted: Vec<(u64, u64)> = Vec::new();
            for (gap, cost) in arrivals {
                now += gap;
                let o = step(&s, &mut b, now, cost);
                prop_assert!(b.len() <= 61);
                if o.admitted {
                    admitted.push((now, cost));
                    // The interval of length W ending now.
                    let sum: u64 = admitted.iter().filter(|(t, _)| now - t < window_us).map(|(_, c)| c).sum();
                    prop_assert!(sum <= amount, "{} in a window of {}µs", sum, window_us);
                } else if cost <= amount {
                    // 60·(now − t) < 61·W: within W + W/60 before now.
                    let recent: u64 = admitted.iter()
                        .filter(|(t, _)| u128::from(now - t) * 60 < u128::from(window_us) * 61)
                        .map(|(_, c)| c).sum();
                    prop_assert!(recent + cost > amount, "refused with {} used over W + W/60", recent);
                }
            }
        }

        /// A refused request fits exactly when its retry-after has passed.
        #[test]
        fn retry_after_is_exact((amount, window_us, arrivals) in scenario(), cost in 1u64..80) {
            let s = sliding(amount, window_us);
            let (mut now, mut b) = (0u64, Vec::new());
            for (gap, c) in arrivals {
                now += gap;
                step(&s, &mut b, now, c);
            }
            s.prune(&mut b, now);
            let o = s.check(&b, now, cost);
            match o.retry_after_us {
                Some(0) => prop_assert!(o.admitted),
                Some(wait) => {
                    let mut later = b.clone();
                    s.prune(&mut later, now + wait);
                    prop_assert!(s.check(&later, now + wait, cost).admitted);
                    let mut before = b.clone();
                    s.prune(&mut before, now + wait - 1);
                    prop_assert!(!s.check(&before, now + wait - 1, cost).admitted);
                }
                None => prop_assert!(cost > amount),
            }
            // Reset: the next unit frees up then, not before. An admitted
            // request's reset counts its own charge, so compare with it.
            if o.reset_us > 0 {
                let mut base = b.clone();
                if o.admitted {
                    s.charge(&mut base, now, cost);
                }
                let mut at = base.clone();
                s.prune(&mut at, now + o.reset_us);
                prop_assert!(s.check(&at, now + o.reset_us, 0).remaining > s.check(&base, now, 0).remaining);
            }
        }
    }
}
