//! Time for the stateful layers: monotonic for windows, wall-clock for
//! calendar periods and headers, both driven by tokio's clock so tests can
//! `tokio::time::pause()` and `advance()`.
//!
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//! use tollgate::clock::{Clock, TokioClock};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let clock = TokioClock::starting_at(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
//! tokio::time::advance(Duration::from_secs(60)).await;
//! assert_eq!(clock.now_unix(), Duration::from_secs(1_800_000_060));
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of time. Implement it to drive the layers from your own clock.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time, for rate-limit windows and leases.
    fn now(&self) -> tokio::time::Instant;

    /// Wall-clock time since the Unix epoch, for calendar periods and headers.
    fn now_unix(&self) -> Duration;
}

/// The default clock: wall time anchored once, then advanced by tokio's
/// monotonic clock, so a paused tokio runtime pauses it too.
#[derive(Clone, Copy)]
pub struct TokioClock {
    anchor_unix: Duration,
    anchor: tokio::time::Instant,
}

impl TokioClock {
    /// Anchored at the system's current time.
    pub fn new() -> Self {
        TokioClock::starting_at(SystemTime::now())
    }

    /// Anchored at `at` (tests use this to sit just before a month's end).
    pub fn starting_at(at: SystemTime) -> Self {
        TokioClock {
            anchor_unix: at.duration_since(UNIX_EPOCH).unwrap_or_default(),
            anchor: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl fmt::Debug for TokioClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioClock")
            .field("now_unix", &self.now_unix())
            .finish()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }

    fn now_unix(&self) -> Duration {
        self.anchor_unix + self.anchor.elapsed()
    }
}

/// A clock behind an `Arc` is a clock: a [`SharedClock`], or a test's clock
/// it keeps a handle to (to move it) while a store or layer owns another.
impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> tokio::time::Instant {
        (**self).now()
    }

    fn now_unix(&self) -> Duration {
        (**self).now_unix()
    }
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The default shared clock.
pub fn default_clock() -> SharedClock {
    Arc::new(TokioClock::new())
}
