//! Exponential backoff with jitter, and the small PRNG that draws it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::ConfigError;
use super::hints::nanos_to_duration;

/// How a backoff spreads its delays: the random part of a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Jitter {
    /// "Full jitter": uniform in `[0, ceiling)`. The flattest load on a
    /// recovering upstream; what the official SDKs do.
    Full,
    /// The ceiling plus a uniform `[0, d)`: HiveOps' `2^n s + U(0, 1) s` for
    /// rate limits. Never shorter than the schedule, still spread.
    Additive(Duration),
    /// Exactly the ceiling: HiveOps' `1 s, 2 s, 4 s` for 500 and 503.
    None,
}

/// Exponential backoff with a choice of [`Jitter`].
///
/// The `n`-th retry's ceiling is `min(max, initial × 2ⁿ⁻¹)`; the delay is
/// drawn from it by the jitter: `[0, ceiling)` ([`Jitter::Full`], the
/// default of [`new`](Self::new)), `ceiling + [0, d)` ([`Jitter::Additive`])
/// or the ceiling itself ([`Jitter::None`]).
///
/// # Why full jitter by default?
///
/// Without jitter, every client that failed at the same moment comes back at
/// the same moment, and a provider recovering from an outage is knocked over
/// again by the synchronized wave. Spreading each retry over its whole
/// interval ("full jitter", in the words of the AWS architecture blog) keeps
/// the load flat, at the cost of a slightly less predictable wait. Delays the
/// server asks for (`Retry-After`, …) are honoured as given, without jitter.
/// A provider's guide may ask for a schedule of its own (HiveOps: `2^n s +
/// U(0, 1) s` on 429, `1 s, 2 s, 4 s` on 500 and 503), which is what
/// [`RetryPolicy`](super::RetryPolicy) uses unless told otherwise; the
/// other jitters are there to follow it.
///
/// ```
/// use std::time::Duration;
/// use tollgate::retry::{ExponentialBackoff, Jitter};
///
/// let backoff = ExponentialBackoff::default(); // 0.5 s initial, 8 s max, full jitter
/// assert_eq!(backoff.ceiling(1), Duration::from_millis(500));
/// assert_eq!(backoff.ceiling(3), Duration::from_secs(2));
/// assert_eq!(backoff.ceiling(10), Duration::from_secs(8));
/// // The delay is the ceiling scaled by a random fraction in [0, 1).
/// assert_eq!(backoff.delay(3, u64::MAX / 2), Duration::from_secs(1) - Duration::from_nanos(1));
///
/// // HiveOps' 429 schedule: 2^n s plus up to a second.
/// let hiveops = ExponentialBackoff::new(Duration::from_secs(1), Duration::from_secs(8))?
///     .with_jitter(Jitter::Additive(Duration::from_secs(1)));
/// assert_eq!(hiveops.delay(3, 0), Duration::from_secs(4));
/// assert_eq!(hiveops.delay(3, u64::MAX / 2), Duration::from_millis(4500) - Duration::from_nanos(1));
/// # Ok::<(), tollgate::retry::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExponentialBackoff {
    initial: Duration,
    max: Duration,
    jitter: Jitter,
}

impl ExponentialBackoff {
    /// The official OpenAI and Anthropic SDKs' first delay: 0.5 s.
    pub const DEFAULT_INITIAL: Duration = Duration::from_millis(500);
    /// The official SDKs' longest delay: 8 s.
    pub const DEFAULT_MAX: Duration = Duration::from_secs(8);

    /// HiveOps' rate-limit schedule (000-hiveops-errors.txt): `2^n s +
    /// U(0, 1) s` for the `n`-th retry counted from 0, the `2^n` capped at 8 s.
    pub const RATE_LIMITS: ExponentialBackoff = ExponentialBackoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(8),
        jitter: Jitter::Additive(Duration::from_secs(1)),
    };

    /// HiveOps' server-error schedule (000-hiveops-errors.txt): 1 s, 2 s,
    /// 4 s, … capped at 8 s, no jitter.
    pub const SERVER_ERRORS: ExponentialBackoff = ExponentialBackoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(8),
        jitter: Jitter::None,
    };

    /// Backoff starting at `initial` and doubling up to `max`, with full
    /// jitter.
    ///
    /// Fails when `initial` is greater than `max`. Zero is allowed for both
    /// (every retry then happens at once, which only makes sense in tests).
    pub fn new(initial: Duration, max: Duration) -> Result<Self, ConfigError> {
        if initial > max {
            return Err(ConfigError::Backoff { initial, max });
        }
        Ok(ExponentialBackoff {
            initial,
            max,
            jitter: Jitter::Full,
        })
    }

    /// The same schedule with another jitter.
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The first retry's ceiling.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The largest ceiling.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// How the delays are spread.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The `retry`-th retry's ceiling (1-based):
    /// `min(max, initial × 2^(retry-1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let shift = retry.saturating_sub(1).min(63);
        let nanos = self.initial.as_nanos().saturating_mul(1u128 << shift);
        let max = self.max.as_nanos();
        nanos_to_duration(nanos.min(max))
    }

    /// The `retry`-th retry's delay for a `random` draw, uniform over `u64`:
    /// the ceiling scaled by `random / 2⁶⁴` (full jitter), the ceiling plus
    /// `d × random / 2⁶⁴` (additive), or the ceiling.
    pub fn delay(&self, retry: u32, random: u64) -> Duration {
        let ceiling = self.ceiling(retry).as_nanos();
        let scaled = |nanos: u128| (nanos * u128::from(random)) >> 64;
        nanos_to_duration(match self.jitter {
            Jitter::Full => scaled(ceiling),
            Jitter::Additive(spread) => ceiling.saturating_add(scaled(spread.as_nanos())),
            Jitter::None => ceiling,
        })
    }
}

impl Default for ExponentialBackoff {
    fn default() -> Self {
        ExponentialBackoff {
            initial: Self::DEFAULT_INITIAL,
            max: Self::DEFAULT_MAX,
            jitter: Jitter::Full,
        }
    }
}

/// A lock-free SplitMix64 generator shared by every clone of a service:
/// one atomic add per draw. Seeded from the OS; not for cryptography.
#[derive(Debug)]
pub(crate) struct Random {
    state: AtomicU64,
}

use crate::rng::{GAMMA, mix};

impl Random {
    pub(crate) fn new() -> Self {
        Random::with_seed(crate::rng::os_seed())
    }

    pub(crate) fn with_seed(seed: u64) -> Self {
        Random {
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

impl Clone for Random {
    fn clone(&self) -> Self {
        // A clone draws a different sequence: two layers built from one
        // configuration must not retry in lockstep.
        Random::with_seed(mix(self.next()))
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
    fn the_hiveops_schedules() {
        // 000-hiveops-errors.txt: `2 ** attempt` for attempt 0, 1, 2, …
        let server: Vec<_> = (1..=5)
            .map(|n| ExponentialBackoff::SERVER_ERRORS.delay(n, u64::MAX))
            .collect();
        let secs = |s: &[u64]| {
            s.iter()
                .map(|s| Duration::from_secs(*s))
                .collect::<Vec<_>>()
        };
        assert_eq!(server, secs(&[1, 2, 4, 8, 8]));
        // `(2 ** attempt) + random.uniform(0, 1)`.
        let rate = ExponentialBackoff::RATE_LIMITS;
        for n in 1..=4 {
            let base = Duration::from_secs(1 << (n - 1));
            assert_eq!(rate.delay(n, 0), base);
            assert!(rate.delay(n, u64::MAX) < base + Duration::from_secs(1));
            assert!(rate.delay(n, u64::MAX) > base + Duration::from_millis(999));
        }
    }

    #[test]
    fn rejects_initial_above_max() {
        let err = ExponentialBackoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert!(err.is_err());
        assert!(ExponentialBackoff::new(Duration::ZERO, Duration::ZERO).is_ok());
    }

    #[test]
    fn jitter_draws_differ_and_spread() {
        let j = Random::with_seed(7);
        let draws: Vec<u64> = (0..1000).map(|_| j.next()).collect();
        let high = draws.iter().filter(|d| **d > u64::MAX / 2).count();
        assert!((400..600).contains(&high), "{high}");
        let k = j.clone();
        assert_ne!(j.next(), k.next());
    }

    proptest! {
        #[test]
        fn every_jitter_stays_in_its_interval(
            initial_ms in 0u64..10_000,
            extra_ms in 0u64..100_000,
            spread_ms in 0u64..5_000,
            retry in 0u32..100,
            random in any::<u64>(),
        ) {
            let b = ExponentialBackoff::new(
                Duration::from_millis(initial_ms),
                Duration::from_millis(initial_ms + extra_ms),
            ).unwrap();
            let ceiling = b.ceiling(retry);
            // Full jitter: within zero and the ceiling.
            let delay = b.delay(retry, random);
            prop_assert!(ceiling <= b.max());
            prop_assert!(delay <= ceiling);
            if ceiling > Duration::ZERO {
                prop_assert!(delay < ceiling);
            }
            let spread = Duration::from_millis(spread_ms);
            let additive = b.with_jitter(Jitter::Additive(spread)).delay(retry, random);
            prop_assert!(additive >= ceiling);
            prop_assert!(additive <= ceiling + spread);
            if spread > Duration::ZERO {
                prop_assert!(additive < ceiling + spread);
            }
            prop_assert_eq!(b.with_jitter(Jitter::None).delay(retry, random), ceiling);
        }

        #[test]
        fn ceilings_never_decrease(retry in 1u32..200) {
            let b = ExponentialBackoff::default();
            prop_assert!(b.ceiling(retry) <= b.ceiling(retry + 1));
        }

        #[test]
        fn jittered_delays_stay_in_bounds(seed in any::<u64>(), retry in 1u32..8) {
            let b = ExponentialBackoff::default();
            let j = Random::with_seed(seed);
            for _ in 0..32 {
                let d = b.delay(retry, j.next());
                prop_assert!(d < b.ceiling(retry));
            }
        }
    }
}
