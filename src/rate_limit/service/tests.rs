use std::time::Duration;

use super::verdict::{ceil_millis, limited_error};
use super::*;
use crate::rate_limit::LimitState;

fn plan(limits: &[Limit], reserved_tokens: u64) -> Plan {
    Plan {
        key: KeyId::Static("k"),
        model: None,
        per_model: false,
        key_scope: Some((LimitSet::Layer(limits.into()), None)),
        more: Vec::new(),
        reserved_tokens,
        prompt_tokens: 0,
        fixed: false,
        usage: UsageOptions::default(),
        receipt: crate::rate_limit::Receipt::NONE,
        releases: false,
        counts_tokens: limits.iter().any(|l| l.measure == Measure::Tokens),
    }
}

#[test]
fn costs_are_one_per_request_and_the_reservation_per_token_limit() {
    let limits: Vec<Limit> = (1..=17)
        .map(|i| {
            if i % 2 == 0 {
                Limit::tokens_per_minute(i)
            } else {
                Limit::requests_per_minute(i)
            }
        })
        .collect();
    for n in [0, 1, 16, 17] {
        let p = plan(&limits[..n], 42);
        with_charges(&p, |acquire| {
            let expected: Vec<u64> = (1..=n).map(|i| if i % 2 == 0 { 42 } else { 1 }).collect();
            assert_eq!(acquire.scopes[0].costs, &expected[..]);
        });
    }
}

#[test]
fn the_last_limit_to_admit_is_named() {
    let limits = [
        Limit::requests_per_minute(60),
        Limit::tokens_per_minute(1000),
    ];
    let state = |ms| LimitState {
        remaining: 0,
        reset: Duration::ZERO,
        retry_after: Some(Duration::from_millis(ms)),
    };
    let e = limited_error(&plan(&limits, 10), &[state(1500), state(2000)]);
    assert_eq!(e.message(), "Rate limit exceeded: 1000 tokens per minute");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
    let never = LimitState {
        retry_after: None,
        ..state(0)
    };
    let e = limited_error(&plan(&limits, 5000), &[state(1500), never]);
    assert_eq!(
        e.message(),
        "Request too large: 5000 tokens requested, limit 1000 per minute"
    );
    assert!(!e.should_retry());
    assert_eq!(
        ceil_millis(Duration::from_micros(1)),
        Duration::from_millis(1)
    );
}
