//! Exponential backoff with full jitter, and the small PRNG that draws it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::ConfigError;

/// Exponential backoff with full jitter.
///
/// The `n`-th retry waits a uniformly random time in `[0, min(max, initial ×
/// 2ⁿ⁻¹))`.
///
/// # Why full jitter?
///
/// Without jitter, every client that failed at the same moment comes back at
/// the same moment, and a provider recovering from an outage is knocked over
/// again by the synchronized wave. Spreading each retry over its whole
/// interval ("full jitter", in the words of the AWS architecture blog) keeps
/// the load flat, at the cost of a slightly less predictable wait. Delays the
/// server asks for (`Retry-After`, …) are honoured as given, without jitter.
///
/// ```
/// use std::time::Duration;
/// use tollgate::retry::ExponentialBackoff;
///
/// let backoff = ExponentialBackoff::default(); // 0.5 s initial, 8 s max
/// assert_eq!(backoff.ceiling(1), Duration::from_millis(500));
/// assert_eq!(backoff.ceiling(3), Duration::from_secs(2));
/// assert_eq!(backoff.ceiling(10), Duration::from_secs(8));
/// // The delay is the ceiling scaled by a random fraction in [0, 1).
/// assert_eq!(backoff.delay(3, u64::MAX / 2), Duration::from_secs(1) - Duration::from_nanos(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExponentialBackoff {
    initial: Duration,
    max: Duration,
}

impl ExponentialBackoff {
    /// The official OpenAI and Anthropic SDKs' first delay: 0.5 s.
    pub const DEFAULT_INITIAL: Duration = Duration::from_millis(500);
    /// The official SDKs' longest delay: 8 s.
    pub const DEFAULT_MAX: Duration = Duration::from_secs(8);

    /// Backoff starting at `initial` and doubling up to `max`.
    ///
    /// Fails when `initial` is greater than `max`. Zero is allowed for both
    /// (every retry then happens at once, which only makes sense in tests).
    pub fn new(initial: Duration, max: Duration) -> Result<Self, ConfigError> {
        if initial > max {
            return Err(ConfigError::Backoff { initial, max });
        }
        Ok(ExponentialBackoff { initial, max })
    }

    /// The first retry's ceiling.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The largest ceiling.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The upper bound of the `retry`-th retry's delay (1-based):
    /// `min(max, initial × 2^(retry-1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let shift = retry.saturating_sub(1).min(63);
        let nanos = self.initial.as_nanos().saturating_mul(1u128 << shift);
        let max = self.max.as_nanos();
        nanos_to_duration(nanos.min(max))
    }

    /// The `retry`-th retry's delay for a `random` draw: the ceiling scaled by
    /// `random / 2⁶⁴`, so uniform in `[0, ceiling)` for a uniform draw.
    pub fn delay(&self, retry: u32, random: u64) -> Duration {
        let ceiling = self.ceiling(retry).as_nanos();
        nanos_to_duration((ceiling * u128::from(random)) >> 64)
    }
}

impl Default for ExponentialBackoff {
    fn default() -> Self {
        ExponentialBackoff {
            initial: Self::DEFAULT_INITIAL,
            max: Self::DEFAULT_MAX,
        }
    }
}

fn nanos_to_duration(nanos: u128) -> Duration {
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    Duration::new(secs, (nanos % 1_000_000_000) as u32)
}

/// A lock-free SplitMix64 generator shared by every clone of a service:
/// one atomic add per draw. Seeded from the OS; not for cryptography.
#[derive(Debug)]
pub(crate) struct Jitter {
    state: AtomicU64,
}

use crate::rng::{GAMMA, mix};

impl Jitter {
    pub(crate) fn new() -> Self {
        Jitter::with_seed(crate::rng::os_seed())
    }

    pub(crate) fn with_seed(seed: u64) -> Self {
        Jitter {
            state: AtomicU64::new(seed),
        }
    }

    pub(crate) fn next(&self) -> u64 {
        let z = self
            .state
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        mix(z)
    }
}

impl Clone for Jitter {
    fn clone(&self) -> Self {
        // A clone draws a different sequence: two layers built from one
        // configuration must not retry in lockstep.
        Jitter::with_seed(mix(self.next()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults_match_the_sdks() {
        let b = ExponentialBackoff::default();
        let ceilings: Vec<_> = (1..=6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [500, 1000, 2000, 4000, 8000, 8000]);
        assert_eq!(b.ceiling(0), Duration::from_millis(500));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(8));
    }

    #[test]
    fn rejects_initial_above_max() {
        let err = ExponentialBackoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert!(err.is_err());
        assert!(ExponentialBackoff::new(Duration::ZERO, Duration::ZERO).is_ok());
    }

    #[test]
    fn jitter_draws_differ_and_spread() {
        let j = Jitter::with_seed(7);
        let draws: Vec<u64> = (0..1000).map(|_| j.next()).collect();
        let high = draws.iter().filter(|d| **d > u64::MAX / 2).count();
        assert!((400..600).contains(&high), "{high}");
        let k = j.clone();
        assert_ne!(j.next(), k.next());
    }

    proptest! {
        #[test]
        fn delay_is_within_zero_and_the_ceiling(
            initial_ms in 0u64..10_000,
            extra_ms in 0u64..100_000,
            retry in 0u32..100,
            random in any::<u64>(),
        ) {
            let b = ExponentialBackoff::new(
                Duration::from_millis(initial_ms),
                Duration::from_millis(initial_ms + extra_ms),
            ).unwrap();
            let ceiling = b.ceiling(retry);
            let delay = b.delay(retry, random);
            prop_assert!(ceiling <= b.max());
            prop_assert!(delay <= ceiling);
            if ceiling > Duration::ZERO {
                prop_assert!(delay < ceiling);
            }
        }

        #[test]
        fn ceilings_never_decrease(retry in 1u32..200) {
            let b = ExponentialBackoff::default();
            prop_assert!(b.ceiling(retry) <= b.ceiling(retry + 1));
        }

        #[test]
        fn jittered_delays_stay_in_bounds(seed in any::<u64>(), retry in 1u32..8) {
            let b = ExponentialBackoff::default();
            let j = Jitter::with_seed(seed);
            for _ in 0..32 {
                let d = b.delay(retry, j.next());
                prop_assert!(d < b.ceiling(retry));
            }
        }
    }
}
