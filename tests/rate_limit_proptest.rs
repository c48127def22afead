//! For random arrival sequences, what the memory store admits never exceeds
//! the documented bound: over any span of time `L`, at most
//! `amount + ⌈amount · L / window⌉` per limit (a full burst plus the refill).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use tollgate::clock::Clock;
use tollgate::rate_limit::{Acquire, Limit, RateLimitKey, RateLimitStore, Settle, Verdict};
use tollgate::store::memory::MemoryRateLimitStore;

/// A clock moved by hand, in microseconds.
struct ManualClock {
    start: tokio::time::Instant,
    offset_us: AtomicU64,
}

impl Clock for ManualClock {
    fn now(&self) -> tokio::time::Instant {
        self.start + Duration::from_micros(self.offset_us.load(Ordering::Relaxed))
    }

    fn now_unix(&self) -> Duration {
        Duration::from_micros(self.offset_us.load(Ordering::Relaxed))
    }
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// Every span of admitted `(time_us, cost)` stays within the bound, plus
/// `extra`.
fn check_bound(admitted: &[(u64, u64)], limit: &Limit, extra: u64) -> Result<(), TestCaseError> {
    let amount = u128::from(limit.amount);
    let window = limit.window.as_micros();
    for (i, &(start, _)) in admitted.iter().enumerate() {
        let mut sum = 0u128;
        for &(t, cost) in &admitted[i..] {
            sum += u128::from(cost);
            let bound =
                u128::from(extra) + amount + (amount * u128::from(t - start)).div_ceil(window);
            prop_assert!(
                sum <= bound,
                "{} admitted over {}µs against {}: bound {}",
                sum,
                t - start,
                limit,
                bound
            );
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Arrival {
    gap_us: u64,
    tokens: u64,
    /// Tokens the response actually used (settled after admission).
    used: Option<u64>,
}

fn scenario() -> impl Strategy<Value = (Limit, Limit, Vec<Arrival>)> {
    (1u64..30, 1u64..3_000_000, 1u64..2_000, 1u64..3_000_000).prop_flat_map(
        |(requests, requests_window, tokens, tokens_window)| {
            let requests = Limit::requests(requests, Duration::from_micros(requests_window));
            let tokens = Limit::tokens(tokens, Duration::from_micros(tokens_window));
            let window = requests_window.max(tokens_window);
            let arrival = (
                prop_oneof![Just(0u64), 0..window / 8 + 1, 0..window * 2],
                0..=tokens.amount,
                proptest::option::of(0..=tokens.amount),
            )
                .prop_map(|(gap_us, tokens, used)| Arrival {
                    gap_us,
                    tokens,
                    used,
                });
            (
                Just(requests),
                Just(tokens),
                prop::collection::vec(arrival, 1..150),
            )
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Two limits, all or nothing: each stays within its own bound, and a
    /// request refused by one charges neither.
    #[test]
    fn admissions_never_exceed_the_bound((requests, tokens, arrivals) in scenario()) {
        let clock = Arc::new(ManualClock {
            start: tokio::time::Instant::now(),
            offset_us: AtomicU64::new(0),
        });
        let store = MemoryRateLimitStore::builder().clock(clock.clone()).build();
        let limits = [requests, tokens];
        let key = RateLimitKey::new("k");
        let mut now = 0u64;
        let (mut admitted_requests, mut admitted_tokens) = (Vec::new(), Vec::new());
        run(async {
            for a in &arrivals {
                now += a.gap_us;
                clock.offset_us.store(now, Ordering::Relaxed);
                let admission = store
                    .acquire(key, &Acquire { limits: &limits, costs: &[1, a.tokens], max_concurrent: None })
                    .await
                    .unwrap();
                if admission.verdict == Verdict::Admitted {
                    admitted_requests.push((now, 1));
                    admitted_tokens.push((now, a.tokens));
                }
            }
        });
        check_bound(&admitted_requests, &requests, 0)?;
        check_bound(&admitted_tokens, &tokens, 0)?;
        prop_assert!(!admitted_requests.is_empty(), "the first request always fits");
    }

    /// With settlement (refunds and overcharges), the tokens *used* still
    /// stay within the bound: a refund returns only what was not used, an
    /// overcharge is a debt later requests wait out.
    #[test]
    fn settled_usage_never_exceeds_the_bound((requests, tokens, arrivals) in scenario()) {
        let clock = Arc::new(ManualClock {
            start: tokio::time::Instant::now(),
            offset_us: AtomicU64::new(0),
        });
        let store = MemoryRateLimitStore::builder().clock(clock.clone()).build();
        let limits = [requests, tokens];
        let key = RateLimitKey::new("k");
        let mut now = 0u64;
        let mut used_tokens = Vec::new();
        run(async {
            for a in &arrivals {
                now += a.gap_us;
                clock.offset_us.store(now, Ordering::Relaxed);
                let admission = store
                    .acquire(key, &Acquire { limits: &limits, costs: &[1, a.tokens], max_concurrent: None })
                    .await
                    .unwrap();
                if admission.verdict != Verdict::Admitted {
                    continue;
                }
                // Settled at once, so usage is accounted at admission time.
                let used = a.used.unwrap_or(a.tokens);
                let delta = used as i64 - a.tokens as i64;
                store
                    .settle(key, &Settle { limits: &limits, deltas: &[0, delta], release: false })
                    .await
                    .unwrap();
                used_tokens.push((now, used));
            }
        });
        // The admission checks the reservation, so the last request of a
        // span may overcharge by up to `amount` (its usage, here at most one
        // limit): that one debt is the only slack.
        check_bound(&used_tokens, &tokens, tokens.amount)?;
    }
}
