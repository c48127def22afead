//! For random arrival sequences, what the memory store admits never exceeds
//! the documented bound: for GCRA, over any span of time `L`, at most
//! `amount + ⌈amount · L / window⌉` per limit (a full burst plus the
//! refill); for sliding windows (the default), never more than `amount` in
//! any interval of length `window`, whatever the costs and across scopes.

#[path = "support/manual_clock.rs"]
mod manual_clock;

use manual_clock::ManualClock;
use std::time::Duration;

use proptest::prelude::*;
use tollgate::rate_limit::{
    Acquire, Admission, Algorithm, Limit, RateLimitKey, RateLimitStore, Receipt, ScopeCharge,
    ScopeSettle, Settle, Verdict,
};
use tollgate::store::memory::MemoryRateLimitStore;

fn acquire(store: &MemoryRateLimitStore, limits: &[Limit], costs: &[u64]) -> Admission {
    let answer = store.acquire(&Acquire {
        scopes: &[ScopeCharge {
            key: RateLimitKey::new("k"),
            limits,
            costs,
            max_concurrent: None,
        }],
    });
    run(answer).unwrap()
}

fn settle(store: &MemoryRateLimitStore, limits: &[Limit], deltas: &[i64]) {
    let answer = store.settle(&Settle {
        scopes: &[ScopeSettle {
            key: RateLimitKey::new("k"),
            limits,
            deltas,
            release: false,
        }],
        receipt: Receipt::NONE,
    });
    run(answer).unwrap();
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
            let requests = Limit::requests(requests, Duration::from_micros(requests_window))
                .algorithm(Algorithm::Gcra);
            let tokens = Limit::tokens(tokens, Duration::from_micros(tokens_window))
                .algorithm(Algorithm::Gcra);
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
        let clock = ManualClock::at(Duration::ZERO);
        let store = MemoryRateLimitStore::builder().clock(clock.clone()).build();
        let limits = [requests, tokens];
        let mut now = 0u64;
        let (mut admitted_requests, mut admitted_tokens) = (Vec::new(), Vec::new());
        for a in &arrivals {
            now += a.gap_us;
            clock.set(Duration::from_micros(now));
            let admission = acquire(&store, &limits, &[1, a.tokens]);
            if admission.verdict == Verdict::Admitted {
                admitted_requests.push((now, 1));
                admitted_tokens.push((now, a.tokens));
            }
        }
        check_bound(&admitted_requests, &requests, 0)?;
        check_bound(&admitted_tokens, &tokens, 0)?;
        prop_assert!(!admitted_requests.is_empty(), "the first request always fits");
    }

    /// With settlement (refunds and overcharges), the tokens *used* still
    /// stay within the bound: a refund returns only what was not used, an
    /// overcharge is a debt later requests wait out.
    #[test]
    fn settled_usage_never_exceeds_the_bound((requests, tokens, arrivals) in scenario()) {
        let clock = ManualClock::at(Duration::ZERO);
        let store = MemoryRateLimitStore::builder().clock(clock.clone()).build();
        let limits = [requests, tokens];
        let mut now = 0u64;
        let mut used_tokens = Vec::new();
        for a in &arrivals {
            now += a.gap_us;
            clock.set(Duration::from_micros(now));
            let admission = acquire(&store, &limits, &[1, a.tokens]);
            if admission.verdict != Verdict::Admitted {
                continue;
            }
            // Settled at once, so usage is accounted at admission time.
            let used = a.used.unwrap_or(a.tokens);
            let delta = used as i64 - a.tokens as i64;
            settle(&store, &limits, &[0, delta]);
            used_tokens.push((now, used));
        }
        // The admission checks the reservation, so the last request of a
        // span may overcharge by up to `amount` (its usage, here at most one
        // limit): that one debt is the only slack.
        check_bound(&used_tokens, &tokens, tokens.amount)?;
    }

    /// Sliding windows: never more than `amount` in any interval of length
    /// `window`, for requests and tokens alike, with random arrival times
    /// and costs, two limits all or nothing, and settlements (a refund
    /// never lets more through than the window allows).
    #[test]
    fn sliding_never_admits_more_than_n_in_any_window(
        (requests, tokens, arrivals) in scenario(),
    ) {
        let clock = ManualClock::at(Duration::ZERO);
        let store = MemoryRateLimitStore::builder().clock(clock.clone()).build();
        let sliding = |l: Limit| Limit::new(l.measure, l.amount, l.window);
        let limits = [sliding(requests), sliding(tokens)];
        let mut now = 0u64;
        let (mut admitted_requests, mut used_tokens) = (Vec::new(), Vec::new());
        for a in &arrivals {
            now += a.gap_us;
            clock.set(Duration::from_micros(now));
            let admission = acquire(&store, &limits, &[1, a.tokens]);
            if admission.verdict != Verdict::Admitted {
                continue;
            }
            admitted_requests.push((now, 1u64));
            let used = a.used.unwrap_or(a.tokens).min(a.tokens);
            settle(&store, &limits, &[0, used as i64 - a.tokens as i64]);
            used_tokens.push((now, used));
        }
        for (limit, admitted) in [(&limits[0], &admitted_requests), (&limits[1], &used_tokens)] {
            let window = limit.window.as_micros() as u64;
            for &(t, _) in admitted.iter() {
                let sum: u64 = admitted.iter().filter(|(s, _)| *s <= t && t - s < window).map(|(_, c)| c).sum();
                prop_assert!(sum <= limit.amount, "{} in a window of {}µs against {}", sum, window, limit);
            }
        }
    }
}
