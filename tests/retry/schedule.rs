//! The backoff schedules, end to end through the layer on paused time.

use super::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// By default the n-th retry after a 500 waits HiveOps' `2 ** attempt`
    /// seconds (1 s, 2 s, 4 s, 8 s, then 8 s), and after a 429 without a
    /// server delay `2 ** attempt + random.uniform(0, 1)` seconds
    /// (000-hiveops-errors.txt).
    #[test]
    fn default_backoff_follows_the_hiveops_schedule(failures in 1usize..6, rate_limited: bool) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let status = if rate_limited { 429 } else { 500 };
        let waits = rt.block_on(async move {
            let layer = RetryLayer::new()
                .without_budget()
                .policy(RetryPolicy::new().max_attempts(10));
            let (task, mut handle) = start(layer, request("{}"));
            let mut responses: Vec<_> = (0..failures).map(|_| response(status, &[], "")).collect();
            responses.push(response(200, &[], ""));
            let seen = serve(&mut handle, responses).await;
            let res = task.await.unwrap().unwrap();
            assert_eq!(info(&res).0 as usize, failures + 1);
            let waits: Vec<_> = seen.windows(2).map(|w| w[1].1 - w[0].1).collect();
            (waits, info(&res).1)
        });
        let (waits, total) = waits;
        let mut sum = Duration::ZERO;
        for (i, wait) in waits.iter().enumerate() {
            let base = Duration::from_secs(1 << i.min(3));
            // tokio's timer rounds up to the millisecond.
            if rate_limited {
                prop_assert!(*wait >= base && *wait <= base + ms(1000), "retry {}: {:?}", i + 1, wait);
            } else {
                prop_assert_eq!(*wait, base, "retry {}", i + 1);
            }
            sum += base;
        }
        prop_assert!(total >= sum);
        if !rate_limited {
            prop_assert_eq!(total, sum);
        }
    }

    /// Full jitter stays an option: the n-th retry waits in
    /// [0, min(8 s, 0.5 s × 2ⁿ⁻¹)).
    #[test]
    fn full_jitter_stays_within_bounds(failures in 1usize..6) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let waits = rt.block_on(async move {
            let layer = RetryLayer::new().without_budget().policy(
                RetryPolicy::new()
                    .max_attempts(10)
                    .backoff(ExponentialBackoff::default()),
            );
            let (task, mut handle) = start(layer, request("{}"));
            let mut responses: Vec<_> = (0..failures).map(|_| response(500, &[], "")).collect();
            responses.push(response(200, &[], ""));
            let seen = serve(&mut handle, responses).await;
            let res = task.await.unwrap().unwrap();
            assert_eq!(info(&res).0 as usize, failures + 1);
            let waits: Vec<_> = seen.windows(2).map(|w| w[1].1 - w[0].1).collect();
            (waits, info(&res).1)
        });
        let (waits, total) = waits;
        let mut ceilings = Duration::ZERO;
        for (i, wait) in waits.iter().enumerate() {
            let ceiling = ExponentialBackoff::default().ceiling(i as u32 + 1);
            ceilings += ceiling;
            // Drawn in [0, ceiling); tokio's timer rounds up to the millisecond.
            prop_assert!(*wait <= ceiling, "retry {}: {:?} > {:?}", i + 1, wait, ceiling);
        }
        prop_assert!(total < ceilings);
    }
}
