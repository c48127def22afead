//! A clock the test moves by hand, shared by the stores it drives (an
//! `Arc<C>` is a `Clock`): monotonic and wall time both advance by the
//! offset set, never by themselves.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tollgate::clock::Clock;

/// A clock at `base_unix` plus an offset the test sets.
pub struct ManualClock {
    base: tokio::time::Instant,
    base_unix: Duration,
    offset_us: AtomicU64,
}

impl ManualClock {
    /// A clock at `unix` (since the epoch), not yet moved.
    pub fn at(unix: Duration) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            base: tokio::time::Instant::now(),
            base_unix: unix,
            offset_us: AtomicU64::new(0),
        })
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.offset_us
            .fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }

    /// Sets the clock to `offset` after where it started.
    pub fn set(&self, offset: Duration) {
        self.offset_us
            .store(offset.as_micros() as u64, Ordering::SeqCst);
    }

    /// How far the clock has been moved.
    pub fn offset(&self) -> Duration {
        Duration::from_micros(self.offset_us.load(Ordering::SeqCst))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> tokio::time::Instant {
        self.base + self.offset()
    }

    fn now_unix(&self) -> Duration {
        self.base_unix + self.offset()
    }
}
