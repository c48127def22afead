//! One limit's stored state in one scope, whatever its algorithm: what an
//! in-process store keeps per (scope, measure, window, algorithm). The Redis
//! scripts keep the same numbers (`src/store/redis/scripts/rate_limit.lua`).

use super::fixed::Fixed;
use super::gcra::Gcra;
use super::sliding::{Bucket, Outcome, Sliding};
use super::{Algorithm, Limit};

/// The time of a decision, as the algorithms read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Now {
    /// Microseconds since the store's origin (GCRA and sliding windows
    /// count from it).
    pub(crate) rel_us: u64,
    /// Microseconds since the Unix epoch (fixed windows are calendar ones).
    pub(crate) unix_us: u64,
}

/// A limit's state. None of it depends on the limit's amount or burst.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cell {
    /// GCRA: the cost outstanding (`debt`, in units of cost) at `at` µs.
    Gcra { debt: u64, at: u64 },
    /// A fixed window: the cost admitted in window `index`.
    Fixed { index: u64, used: u64 },
    /// A sliding window's buckets, oldest first (a thin pointer: most cells
    /// are GCRA or fixed, and stay 16 bytes).
    #[allow(clippy::box_collection)]
    Sliding(Box<Vec<Bucket>>),
}

impl Cell {
    /// The state of a limit never used.
    pub(crate) fn empty(limit: &Limit) -> Cell {
        match limit.algorithm {
            Algorithm::Gcra => Cell::Gcra { debt: 0, at: 0 },
            Algorithm::Fixed => Cell::Fixed { index: 0, used: 0 },
            Algorithm::Sliding => Cell::Sliding(Box::default()),
        }
    }

    /// Whether the cell holds `limit`'s kind of state.
    fn fits(&self, limit: &Limit) -> bool {
        matches!(
            (self, limit.algorithm),
            (Cell::Gcra { .. }, Algorithm::Gcra)
                | (Cell::Fixed { .. }, Algorithm::Fixed)
                | (Cell::Sliding(_), Algorithm::Sliding)
        )
    }

    fn tat(g: &Gcra, debt: u64, at: u64) -> u64 {
        g.units_at(at).saturating_add(debt)
    }

    /// Checks `cost` against this state, without charging it.
    pub(crate) fn check(&self, limit: &Limit, now: Now, cost: u64) -> Outcome {
        if !self.fits(limit) {
            return Cell::empty(limit).check(limit, now, cost);
        }
        match self {
            Cell::Gcra { debt, at } => {
                let g = Gcra::new(limit);
                let d = g.check(Cell::tat(&g, *debt, *at), now.rel_us, cost);
                Outcome {
                    admitted: d.admitted,
                    remaining: d.remaining,
                    reset_us: d.reset_us,
                    retry_after_us: d.retry_after_us,
                }
            }
            Cell::Fixed { index, used } => {
                Fixed::new(limit).check((*index, *used), now.unix_us, cost)
            }
            Cell::Sliding(buckets) => {
                let s = Sliding::new(limit);
                let oldest = s
                    .bucket_at(now.rel_us)
                    .saturating_sub(super::sliding::BUCKETS);
                let from = buckets.iter().take_while(|(k, _)| *k < oldest).count();
                s.check(&buckets[from..], now.rel_us, cost)
            }
        }
    }

    /// Charges `cost`, which [`check`](Cell::check) admitted.
    pub(crate) fn charge(&mut self, limit: &Limit, now: Now, cost: u64) {
        self.adjust_by(limit, now, cost, 0);
    }

    /// Charges (`delta > 0`) or refunds (`delta < 0`) without a check.
    pub(crate) fn adjust(&mut self, limit: &Limit, now: Now, delta: i64) {
        if delta >= 0 {
            self.adjust_by(limit, now, delta.unsigned_abs(), 0);
        } else {
            self.adjust_by(limit, now, 0, delta.unsigned_abs());
        }
    }

    fn adjust_by(&mut self, limit: &Limit, now: Now, charge: u64, refund: u64) {
        if !self.fits(limit) {
            *self = Cell::empty(limit);
        }
        match self {
            Cell::Gcra { debt, at } => {
                let g = Gcra::new(limit);
                let mut tat = Cell::tat(&g, *debt, *at);
                if charge > 0 || refund == 0 {
                    tat = g.adjust(tat, now.rel_us, i64::try_from(charge).unwrap_or(i64::MAX));
                }
                if refund > 0 {
                    tat = g.adjust(tat, now.rel_us, -i64::try_from(refund).unwrap_or(i64::MAX));
                }
                *debt = tat.saturating_sub(g.units_at(now.rel_us));
                *at = now.rel_us;
            }
            Cell::Fixed { index, used } => {
                let f = Fixed::new(limit);
                let mut state = f.adjust((*index, *used), now.unix_us, 0);
                state.1 = state.1.saturating_add(charge).saturating_sub(refund);
                (*index, *used) = state;
            }
            Cell::Sliding(buckets) => {
                let s = Sliding::new(limit);
                s.prune_and_charge(buckets, now.rel_us, charge);
                if refund > 0 {
                    // `adjust`'s refund (a delta, at most `i64::MAX`), on
                    // the buckets pruned above.
                    s.refund(buckets, refund.min(i64::MAX.unsigned_abs()));
                }
            }
        }
    }

    /// When the state is the same as none (µs since the store's origin):
    /// `unix_offset_us` turns a fixed window's Unix end into that time.
    pub(crate) fn full_at(&self, limit: &Limit, unix_offset_us: u64) -> u64 {
        match self {
            Cell::Gcra { debt, at } => {
                let g = Gcra::new(limit);
                g.time_of(Cell::tat(&g, *debt, *at))
            }
            Cell::Fixed { index, used } => {
                if *used == 0 {
                    0
                } else {
                    Fixed::new(limit)
                        .end_of(*index)
                        .saturating_sub(unix_offset_us)
                }
            }
            Cell::Sliding(buckets) => Sliding::new(limit).full_at(buckets),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(us: u64) -> Now {
        Now {
            rel_us: us,
            unix_us: us,
        }
    }

    #[test]
    fn a_changed_amount_keeps_what_was_used() {
        for algorithm in [Algorithm::Gcra, Algorithm::Fixed, Algorithm::Sliding] {
            let sixty = Limit::requests_per_minute(60).algorithm(algorithm);
            let mut cell = Cell::empty(&sixty);
            for _ in 0..30 {
                assert!(cell.check(&sixty, at(0), 1).admitted);
                cell.charge(&sixty, at(0), 1);
            }
            // Raised to 120: 30 used, 90 left. Lowered to 40: 10 left.
            let raised = Limit::requests_per_minute(120).algorithm(algorithm);
            assert_eq!(cell.check(&raised, at(0), 0).remaining, 90, "{algorithm:?}");
            let lowered = Limit::requests_per_minute(40).algorithm(algorithm);
            assert_eq!(
                cell.check(&lowered, at(0), 0).remaining,
                10,
                "{algorithm:?}"
            );
            assert!(
                !cell
                    .check(
                        &Limit::requests_per_minute(30).algorithm(algorithm),
                        at(0),
                        1
                    )
                    .admitted
            );
            cell.adjust(&raised, at(0), -10);
            assert_eq!(cell.check(&sixty, at(0), 0).remaining, 40, "{algorithm:?}");
            assert!(cell.full_at(&sixty, 0) > 0);
        }
        let _ = Duration::ZERO;
    }
}
