//! Attempts without a response: the per-attempt timeout, connect errors
//! against resets, replay safety, and the idempotency key.

use super::*;

fn post(path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(format!("http://upstream.test{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

const CHAT: &str = "/v1/chat/completions";
const COMPLETION: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
const STREAMED: &str = r#"{"model":"m","stream":true,"messages":[]}"#;

fn refused() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused")
}

fn reset() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset by peer",
    )
}

/// No attempt is left in the mock's queue (the call is over, or waits on
/// nothing the test will answer).
fn no_more_attempts<B>(handle: &mut Handle<B>) {
    assert!(matches!(
        handle.poll_request(),
        Poll::Pending | Poll::Ready(None)
    ));
}

#[tokio::test(start_paused = true)]
async fn an_attempt_times_out_after_30_seconds_by_default() {
    // A non-streamed completion: the provider may have finished and billed
    // it, so the timeout is final, and the client is told not to retry.
    let started = Instant::now();
    let (task, mut handle) = start(layer(), post(CHAT, COMPLETION));
    let (_, _hanging) = handle.next_request().await.unwrap();
    let res = task.await.unwrap().unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.headers()["x-should-retry"], "false");
    let info = *res.extensions().get::<RetryInfo>().unwrap();
    assert_eq!((info.attempts, info.exhausted), (1, false));
    let error = res.extensions().get::<ApiError>().unwrap().clone();
    assert_eq!(error.kind(), ErrorKind::Timeout);
    assert_eq!(error.message(), "The upstream did not answer within 30 s.");
    let body = body_string(res.into_body()).await;
    assert!(body.contains(r#""type":"timeout_error""#), "{body}");
    no_more_attempts(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn a_replay_safe_request_is_retried_after_a_timeout() {
    for (path, body) in [(CHAT, STREAMED), ("/v1/embeddings", r#"{"input":"x"}"#)] {
        let policy = RetryPolicy::new().attempt_timeout(Duration::from_secs(5));
        let started = Instant::now();
        let (task, mut handle) = start(layer().policy(policy), post(path, body));
        let (_, _hanging) = handle.next_request().await.unwrap();
        // 5 s timeout, then the server-error schedule's first wait: 1 s.
        serve(&mut handle, vec![response(200, &[], "ok")]).await;
        assert_eq!(started.elapsed(), Duration::from_secs(6), "{path}");
        let res = task.await.unwrap().unwrap();
        assert_eq!((res.status().as_u16(), info(&res).0), (200, 2), "{path}");
    }

    // Timing out every time: the attempts run out, and the client is told
    // not to retry what was retried to the limit.
    let policy = RetryPolicy::new().attempt_timeout(Duration::from_secs(5));
    let (task, mut handle) = start(layer().policy(policy), post(CHAT, STREAMED));
    let mut hanging = Vec::new();
    for _ in 0..3 {
        hanging.push(handle.next_request().await.unwrap());
    }
    let res = task.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.headers()["x-should-retry"], "false");
    let info = *res.extensions().get::<RetryInfo>().unwrap();
    assert_eq!((info.attempts, info.exhausted), (3, true));
}

#[tokio::test(start_paused = true)]
async fn the_attempt_timeout_can_be_lifted() {
    let policy = RetryPolicy::new().without_attempt_timeout();
    let (task, mut handle) = start(layer().policy(policy), post(CHAT, COMPLETION));
    let (_, send) = handle.next_request().await.unwrap();
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(!task.is_finished());
    send.send_response(response(200, &[], "slow but fine"));
    let res = task.await.unwrap().unwrap();
    assert_eq!(body_string(res.into_body()).await, "slow but fine");
}

#[tokio::test(start_paused = true)]
async fn a_connect_error_is_retried_for_any_request() {
    // Nothing was sent: as safe to repeat as it gets.
    let (task, mut handle) = start(layer(), post(CHAT, COMPLETION));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(refused());
    serve(&mut handle, vec![response(200, &[], "ok")]).await;
    let res = task.await.unwrap().unwrap();
    assert_eq!(info(&res).0, 2);
}

#[tokio::test(start_paused = true)]
async fn a_failure_after_sending_is_retried_only_when_replay_safe() {
    type MakeError = fn() -> BoxError;
    let errors: [(&str, MakeError); 4] = [
        ("reset", || reset().into()),
        ("unknown", || {
            "connection closed before message completed".into()
        }),
        ("io timeout", || {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out").into()
        }),
        ("tower timeout", || {
            tower::timeout::error::Elapsed::new().into()
        }),
    ];
    for (what, make) in errors {
        // A non-streamed completion: returned as it is after one attempt.
        let (task, mut handle) = start(layer(), post(CHAT, COMPLETION));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_error(make());
        let error = task.await.unwrap().unwrap_err();
        assert_eq!(error.to_string(), make().to_string(), "{what}");
        no_more_attempts(&mut handle);

        // Streamed, embeddings, a GET: sent again.
        for req in [
            post(CHAT, STREAMED),
            post("/v1/embeddings", r#"{"input":"x"}"#),
            Request::get("http://upstream.test/v1/models")
                .body(Full::default())
                .unwrap(),
        ] {
            let path = req.uri().path().to_owned();
            let (task, mut handle) = start(layer(), req);
            let (_, send) = handle.next_request().await.unwrap();
            send.send_error(make());
            serve(&mut handle, vec![response(200, &[], "ok")]).await;
            let res = task.await.unwrap().unwrap();
            assert_eq!(info(&res).0, 2, "{what} {path}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_policy_says_which_requests_are_replay_safe() {
    // An operator whose upstream honours `Idempotency-Key` can call every
    // request safe.
    let policy = RetryPolicy::new().replay_safe(|_, _| true);
    let (task, mut handle) = start(layer().policy(policy), post(CHAT, COMPLETION));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(reset());
    serve(&mut handle, vec![response(200, &[], "ok")]).await;
    assert_eq!(info(&task.await.unwrap().unwrap()).0, 2);

    // And one that trusts nothing can call nothing safe.
    let policy = RetryPolicy::new().replay_safe(|_, _| false);
    let (task, mut handle) = start(layer().policy(policy), post(CHAT, STREAMED));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(reset());
    assert!(task.await.unwrap().is_err());
    no_more_attempts(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn a_classifier_may_decide_transport_failures_too() {
    struct NeverAgain;
    impl Classify for NeverAgain {
        fn classify(&self, outcome: &Outcome<'_>) -> Classification {
            DefaultClassifier::new().classify(outcome)
        }
        fn classify_transport(&self, failure: &TransportFailure<'_>) -> Classification {
            assert!(failure.is_connect());
            Classification::failure(ErrorKind::Connection).with_class(RetryClass::Never)
        }
    }
    let (task, mut handle) = start(layer().classify(NeverAgain), post(CHAT, COMPLETION));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(refused());
    assert!(task.await.unwrap().is_err());
    no_more_attempts(&mut handle);
}

#[test]
fn connect_errors_are_told_by_type_along_the_chain() {
    #[derive(Debug)]
    struct Wrapped(std::io::Error);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let wrapped = Wrapped(refused());
    let f = TransportFailure::new(Some(&wrapped), false);
    assert!(f.is_connect() && !f.is_timeout());
    // The words "Connect" or "refused" in a message prove nothing.
    let text: BoxError = "client error (Connect): connection refused".into();
    let f = TransportFailure::new(Some(&*text), false);
    assert!(!f.is_connect());
    let timeout = TransportFailure::attempt_timeout(true);
    assert!(timeout.is_timeout() && timeout.is_attempt_timeout() && timeout.is_replay_safe());
    assert_eq!(
        DefaultClassifier::new().classify_transport(&timeout),
        Classification::failure(ErrorKind::Timeout)
    );
    assert_eq!(
        DefaultClassifier::new().classify_transport(&TransportFailure::attempt_timeout(false)),
        Classification::failure(ErrorKind::Timeout).with_class(RetryClass::Never)
    );
}

fn idempotency_key<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test(start_paused = true)]
async fn one_idempotency_key_per_logical_request_reused_by_its_attempts() {
    let mut keys = Vec::new();
    for _ in 0..2 {
        let (task, mut handle) = start(layer(), post(CHAT, COMPLETION));
        let seen = serve(
            &mut handle,
            vec![
                response(503, &[], ""),
                response(502, &[], ""),
                response(200, &[], "ok"),
            ],
        )
        .await;
        assert_eq!(info(&task.await.unwrap().unwrap()).0, 3);
        let attempt_keys: Vec<_> = seen.iter().map(|(req, _)| idempotency_key(req)).collect();
        let key = attempt_keys[0].clone().expect("a key on the first attempt");
        assert!(key.starts_with("tollgate-") && key.len() == 9 + 32, "{key}");
        assert!(attempt_keys.iter().all(|k| k.as_deref() == Some(&*key)));
        keys.push(key);
    }
    assert_ne!(keys[0], keys[1], "two requests, two keys");

    // The caller's own key is the one sent.
    let mut req = post(CHAT, COMPLETION);
    req.headers_mut()
        .insert("idempotency-key", "client-chosen".parse().unwrap());
    let (task, mut handle) = start(layer(), req);
    let seen = serve(
        &mut handle,
        vec![response(500, &[], ""), response(200, &[], "ok")],
    )
    .await;
    task.await.unwrap().unwrap();
    for (req, _) in &seen {
        assert_eq!(idempotency_key(req).as_deref(), Some("client-chosen"));
    }

    // Not for a method that is idempotent already, nor when turned off.
    let get = Request::get("http://upstream.test/v1/models")
        .body(Full::default())
        .unwrap();
    for (layer, req) in [
        (layer(), get),
        (layer().idempotency_key(false), post(CHAT, COMPLETION)),
    ] {
        let (task, mut handle) = start(layer, req);
        let seen = serve(&mut handle, vec![response(200, &[], "ok")]).await;
        task.await.unwrap().unwrap();
        assert_eq!(idempotency_key(&seen[0].0), None);
    }
}
