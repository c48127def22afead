use super::*;

fn failure(kind: ErrorKind, retry_after: Option<Duration>) -> Failure {
    Failure {
        kind,
        class: kind.retry_class(),
        retry_after,
    }
}

#[test]
fn never_is_never_retried() {
    let p = RetryPolicy::new();
    let f = failure(ErrorKind::InvalidRequest, None);
    assert_eq!(
        p.decide(f, 1, 1, Duration::ZERO, 0),
        Err(Stop::NotRetryable)
    );
}

#[test]
fn global_and_per_kind_attempts() {
    let p = RetryPolicy::new()
        .max_attempts(4)
        .attempts_for(ErrorKind::Overloaded, 2);
    let over = failure(ErrorKind::Overloaded, None);
    assert!(p.decide(over, 1, 1, Duration::ZERO, 0).is_ok());
    assert_eq!(p.decide(over, 2, 2, Duration::ZERO, 0), Err(Stop::Attempts));
    // Other kinds in between do not use up Overloaded's allowance...
    assert!(p.decide(over, 3, 1, Duration::ZERO, 0).is_ok());
    // ...but all count against the global maximum.
    assert_eq!(p.decide(over, 4, 1, Duration::ZERO, 0), Err(Stop::Attempts));
    // A per-kind value above the global one is capped.
    let p = RetryPolicy::new().attempts_for(ErrorKind::RateLimited, 9);
    assert_eq!(p.attempts_allowed(ErrorKind::RateLimited), 3);
    assert_eq!(RetryPolicy::new().max_attempts(0).max_attempts, 1);
}

#[test]
fn server_delay_is_used_as_is_up_to_the_cap() {
    let p = RetryPolicy::new();
    let hinted = failure(ErrorKind::RateLimited, Some(Duration::from_secs(7)));
    assert_eq!(
        p.decide(hinted, 1, 1, Duration::ZERO, u64::MAX),
        Ok(Duration::from_secs(7))
    );
    let long = failure(ErrorKind::RateLimited, Some(Duration::from_secs(121)));
    assert_eq!(
        p.decide(long, 1, 1, Duration::ZERO, 0),
        Err(Stop::ServerDelay(Duration::from_secs(121)))
    );
}

#[test]
fn never_sleeps_past_the_deadline() {
    let p = RetryPolicy::new().deadline(Duration::from_secs(10));
    let f = failure(ErrorKind::Unavailable, Some(Duration::from_secs(3)));
    assert!(p.decide(f, 1, 1, Duration::from_secs(6), 0).is_ok());
    assert_eq!(
        p.decide(f, 1, 1, Duration::from_secs(7), 0),
        Err(Stop::Deadline)
    );
}

#[test]
fn backoff_without_a_hint_follows_the_hiveops_guide() {
    let p = RetryPolicy::new().max_attempts(5);
    // 500 and 503: `2 ** attempt`, 1 s, 2 s, 4 s, whatever the draw.
    for kind in [ErrorKind::Internal, ErrorKind::Unavailable] {
        let f = failure(kind, None);
        for (attempts, secs) in [(1, 1), (2, 2), (3, 4)] {
            for random in [0, u64::MAX] {
                let d = p.decide(f, attempts, 1, Duration::ZERO, random);
                assert_eq!(d, Ok(Duration::from_secs(secs)), "{kind:?} {attempts}");
            }
        }
    }
    // 429: `2 ** attempt + random.uniform(0, 1)`.
    let f = failure(ErrorKind::RateLimited, None);
    assert_eq!(
        p.decide(f, 2, 2, Duration::ZERO, 0),
        Ok(Duration::from_secs(2))
    );
    let d = p.decide(f, 2, 2, Duration::ZERO, u64::MAX).unwrap();
    assert!(d < Duration::from_secs(3) && d > Duration::from_millis(2999));
    // One backoff for every kind, and one kind refined after it.
    let p = RetryPolicy::new()
        .backoff(ExponentialBackoff::default())
        .backoff_for(ErrorKind::Timeout, ExponentialBackoff::SERVER_ERRORS);
    let d = p
        .decide(
            failure(ErrorKind::Internal, None),
            2,
            2,
            Duration::ZERO,
            u64::MAX,
        )
        .unwrap();
    assert!(d < Duration::from_secs(1) && d > Duration::from_millis(999));
    assert_eq!(
        p.backoff_of(ErrorKind::RateLimited),
        ExponentialBackoff::default()
    );
    assert_eq!(
        p.backoff_of(ErrorKind::Timeout),
        ExponentialBackoff::SERVER_ERRORS
    );
}

#[test]
fn replay_safety_by_default_and_by_rule() {
    let head = |method: Method, path: &str| {
        http::Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap()
            .into_parts()
            .0
    };
    let chat = head(Method::POST, "/v1/chat/completions");
    let p = RetryPolicy::new();
    assert!(!p.is_replay_safe(&chat, br#"{"model":"m","messages":[]}"#));
    assert!(!p.is_replay_safe(&chat, br#"{"model":"m","stream":false}"#));
    assert!(p.is_replay_safe(&chat, br#"{"model":"m","stream":true}"#));
    assert!(!p.is_replay_safe(&chat, b"not json"));
    assert!(p.is_replay_safe(&head(Method::POST, "/v1/embeddings"), b"{}"));
    assert!(p.is_replay_safe(&head(Method::GET, "/v1/models"), b""));
    // The facts another layer read are used as they are.
    let mut streamed = head(Method::POST, "/v1/chat/completions");
    streamed
        .extensions
        .insert(RequestMeta::from_json(br#"{"stream":true}"#).unwrap());
    assert!(p.is_replay_safe(&streamed, b""));

    let p = RetryPolicy::new().replay_safe(|head, _| head.uri.path().ends_with("/moderations"));
    assert!(p.is_replay_safe(&head(Method::POST, "/v1/moderations"), b"{}"));
    assert!(!p.is_replay_safe(&head(Method::POST, "/v1/embeddings"), b"{}"));
    assert_eq!(p.clone(), p);
    assert_ne!(p, RetryPolicy::new());
    assert_eq!(RetryPolicy::new(), RetryPolicy::new());
}

#[test]
fn the_attempt_timeout_defaults_to_30_seconds() {
    assert_eq!(
        RetryPolicy::new().attempt_timeout,
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        RetryPolicy::new().without_attempt_timeout().attempt_timeout,
        None
    );
}

#[test]
fn counts_per_kind() {
    let mut c = FailureCounts::default();
    assert_eq!(c.record(ErrorKind::Timeout), 1);
    assert_eq!(c.record(ErrorKind::Internal), 1);
    assert_eq!(c.record(ErrorKind::Timeout), 2);
}
