//! What the layer reads on the wire and what it tells whoever relays its
//! answer: spent budgets in every format, failures retried to the limit,
//! gRPC status, the gateway's own upstream failing.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_budget_or_quota_429_is_never_retried_in_any_format() {
    let bodies = [
        // OpenAI's quota, by code and by type.
        r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        r#"{"error":{"message":"quota","type":"insufficient_quota","param":null,"code":null}}"#,
        // The virtual-key guide: "Exceeded your rate limit or budget", its
        // budget type and code on a 429.
        r#"{"error":{"message":"Budget exceeded: $50.00 limit reached","type":"budget_exceeded_error","code":"budget_exceeded"}}"#,
        r#"{"error":{"message":"Budget exceeded","type":"budget_exceeded_error","code":"rate_limit_exceeded"}}"#,
        // AltLLM's type.
        r#"{"error":{"message":"API key budget limit reached","type":"budget_exceeded","code":"rate_limit_exceeded"}}"#,
        // Anthropic's billing error.
        r#"{"type":"error","error":{"type":"billing_error","message":"Your credit balance is too low"},"request_id":"req_1"}"#,
        // HAI's and Humanloop's shapes naming a budget.
        r#"{"error_code":"budget_exceeded","detail":"Budget exceeded"}"#,
        r#"{"detail":{"type":"budget_exceeded","message":"Budget exceeded","code":429,"origin":"OpenAI"}}"#,
    ];
    for body in bodies {
        let (task, mut handle) = start(layer(), request("{}"));
        serve(
            &mut handle,
            vec![response(429, &[("retry-after", "1")], body)],
        )
        .await;
        let res = task.await.unwrap().unwrap();
        let info = *res.extensions().get::<RetryInfo>().unwrap();
        assert_eq!((info.attempts, info.exhausted), (1, false), "{body}");
        assert_eq!(body_string(res.into_body()).await, body);
    }
    // A plain rate limit still is retried.
    let (task, mut handle) = start(layer(), request("{}"));
    serve(
        &mut handle,
        vec![
            response(
                429,
                &[("retry-after", "1")],
                r#"{"error":{"message":"Rate limit exceeded: 100 requests/hour","type":"rate_limit_error","code":"rate_limit_exceeded"}}"#,
            ),
            response(200, &[], "ok"),
        ],
    )
    .await;
    assert_eq!(info(&task.await.unwrap().unwrap()).0, 2);
}

#[tokio::test(start_paused = true)]
async fn retry_info_says_when_a_failure_was_retried_to_the_limit() {
    let exhausted = |res: &Response<_>| res.extensions().get::<RetryInfo>().unwrap().exhausted;
    // Three 503s: the attempts ran out.
    let (task, mut handle) = start(layer(), request("{}"));
    serve(
        &mut handle,
        vec![
            response(503, &[], ""),
            response(503, &[], ""),
            response(503, &[("retry-after", "1")], "last"),
        ],
    )
    .await;
    let res = task.await.unwrap().unwrap();
    assert!(exhausted(&res));
    // So the error relayed to the client says: do not retry, no delay.
    let upstream = tollgate::envelope::parse(res.status(), res.headers(), b"last");
    assert!(upstream.should_retry());
    let relayed = res
        .extensions()
        .get::<RetryInfo>()
        .unwrap()
        .advise(upstream);
    assert!(!relayed.should_retry());
    assert_eq!(relayed.retry_after(), None);

    // Also when the deadline or the budget stops it.
    let policy = RetryPolicy::new().deadline(Duration::from_secs(5));
    let (task, mut handle) = start(layer().policy(policy), request("{}"));
    serve(
        &mut handle,
        vec![response(503, &[("retry-after", "6")], "")],
    )
    .await;
    assert!(exhausted(&task.await.unwrap().unwrap()));
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.0).unwrap();
    let (task, mut handle) = start(layer().budget(budget), request("{}"));
    serve(&mut handle, vec![response(500, &[], "")]).await;
    assert!(exhausted(&task.await.unwrap().unwrap()));

    // Not for a success, a final failure, nor a delay over the cap (the
    // client may wait it out).
    for (status, headers) in [
        (200, vec![]),
        (400, vec![]),
        (429, vec![("retry-after", "300")]),
    ] {
        let (task, mut handle) = start(layer(), request("{}"));
        serve(&mut handle, vec![response(status, &headers, "")]).await;
        let res = task.await.unwrap().unwrap();
        assert!(!exhausted(&res), "{status}");
        let error = ApiError::rate_limited().with_retry_after(Duration::from_secs(300));
        let advised = res
            .extensions()
            .get::<RetryInfo>()
            .unwrap()
            .advise(error.clone());
        assert_eq!(advised, error);
    }
}

#[tokio::test(start_paused = true)]
async fn the_envelope_tells_the_client_not_to_retry_what_was_retried() {
    use tollgate::envelope::ErrorEnvelopeLayer;
    use tower::ServiceBuilder;

    // A gateway: envelope in front, a proxy that relays the upstream's
    // response (with its `RetryInfo`), the retry layer towards the upstream.
    let (upstream, mut handle) = mock::pair::<Request<Full<Bytes>>, Response<ResBody>>();
    let client = layer().layer(upstream);
    let gateway = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new())
        .service_fn(move |req: Request<Full<Bytes>>| {
            let client = client.clone();
            async move { client.oneshot(req).await }
        });
    let call = tokio::spawn(gateway.oneshot(request("{}")));
    let overloaded = r#"{"error":{"message":"Service temporarily unavailable","type":"server_error","code":"service_unavailable"}}"#;
    let hint = [("x-should-retry", "true"), ("retry-after", "1")];
    serve(
        &mut handle,
        vec![
            response(503, &hint, overloaded),
            response(503, &hint, overloaded),
            response(503, &hint, overloaded),
        ],
    )
    .await;
    let res = call.await.unwrap().unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["x-should-retry"], "false");
    assert!(res.headers().get("retry-after").is_none());
    assert!(res.headers().get("retry-after-ms").is_none());
    assert_eq!(
        body_string(res.into_body()).await,
        r#"{"error":{"message":"Service temporarily unavailable","type":"server_error","param":null,"code":"service_unavailable"}}"#
    );
}

fn grpc(headers: &[(&str, &str)]) -> Response<ResBody> {
    let mut all = vec![("content-type", "application/grpc")];
    all.extend_from_slice(headers);
    response(200, &all, "")
}

/// A gRPC response whose status comes in trailers, after `messages`.
fn grpc_with_trailers(messages: &[&'static [u8]], status: &str) -> Response<ResBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", status.parse().unwrap());
    trailers.insert("grpc-message", "upstream%20busy".parse().unwrap());
    let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = messages
        .iter()
        .map(|m| Ok(Frame::data(Bytes::from_static(m))))
        .collect();
    frames.push(Ok(Frame::trailers(trailers)));
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
    Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn grpc_status_is_classified_in_headers_and_trailers() {
    // Trailers-only UNAVAILABLE, then OK.
    let (task, mut handle) = start(layer(), request("{}"));
    serve(
        &mut handle,
        vec![
            grpc(&[("grpc-status", "14")]),
            grpc(&[("grpc-status", "0")]),
        ],
    )
    .await;
    assert_eq!(info(&task.await.unwrap().unwrap()).0, 2);

    // UNAVAILABLE in the trailers of a body without messages, then a
    // message and OK: the peeked message and trailers are handed over.
    let (task, mut handle) = start(layer(), request("{}"));
    serve(
        &mut handle,
        vec![
            grpc_with_trailers(&[], "14"),
            grpc_with_trailers(&[b"\0\0\0\0\x02hi"], "0"),
        ],
    )
    .await;
    let res = task.await.unwrap().unwrap();
    assert_eq!(info(&res).0, 2);
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x02hi");

    // RESOURCE_EXHAUSTED waits the delay in its metadata.
    let (task, mut handle) = start(layer(), request("{}"));
    serve(
        &mut handle,
        vec![
            grpc(&[("grpc-status", "8"), ("retry-after-ms", "1500")]),
            grpc(&[("grpc-status", "0")]),
        ],
    )
    .await;
    assert_eq!(info(&task.await.unwrap().unwrap()), (2, ms(1500)));

    // INVALID_ARGUMENT and UNAUTHENTICATED are final.
    for code in ["3", "16"] {
        let (task, mut handle) = start(layer(), request("{}"));
        serve(&mut handle, vec![grpc(&[("grpc-status", code)])]).await;
        assert_eq!(info(&task.await.unwrap().unwrap()).0, 1, "{code}");
    }

    // A failure after a message: the caller has part of the answer.
    let (task, mut handle) = start(layer(), request("{}"));
    serve(
        &mut handle,
        vec![grpc_with_trailers(&[b"\0\0\0\0\x02hi"], "14")],
    )
    .await;
    let res = task.await.unwrap().unwrap();
    assert_eq!(info(&res).0, 1);
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "14");
}

#[test]
fn the_gateways_own_upstream_failing_is_not_the_tenants_fault() {
    use tollgate::envelope;
    use tollgate::retry::UpstreamFault;
    let parse = |status: u16, body: &str| {
        envelope::parse(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
        )
    };
    let credentials = [
        (
            401,
            r#"{"error":{"message":"Incorrect API key provided: sk-gw***123.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
        ),
        (
            401,
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
        ),
        (
            403,
            r#"{"error":{"message":"Project does not have access to model","type":"invalid_request_error","code":"model_not_found"}}"#,
        ),
        (
            401,
            r#"{"error_code":"unauthorized","detail":"Authentication credentials."}"#,
        ),
    ];
    for (status, body) in credentials {
        let fault = UpstreamFault::of(&parse(status, body));
        assert_eq!(fault, Some(UpstreamFault::Credentials), "{body}");
        let tenant = fault.unwrap().error();
        assert_eq!(tenant.status().as_u16(), 502);
        assert_eq!(tenant.code(), Some("upstream_auth_failed"));
        assert!(!tenant.message().contains("sk-"));
        assert!(!tenant.should_retry());
    }
    let quota = [
        (
            429,
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        ),
        (
            403,
            r#"{"error":{"message":"Insufficient account balance. Please add funds to continue.","type":"insufficient_quota","code":"insufficient_balance"}}"#,
        ),
        (
            402,
            r#"{"error":{"message":"Budget exceeded: $50.00 limit reached","type":"budget_exceeded_error","code":"budget_exceeded"}}"#,
        ),
        (
            429,
            r#"{"error":{"message":"API key budget limit reached","type":"budget_exceeded","code":"budget_exceeded"}}"#,
        ),
        (
            400,
            r#"{"type":"error","error":{"type":"billing_error","message":"Your credit balance is too low"}}"#,
        ),
    ];
    for (status, body) in quota {
        let fault = UpstreamFault::of(&parse(status, body));
        assert_eq!(fault, Some(UpstreamFault::Quota), "{body}");
        let tenant = fault.unwrap().error().with_provider("OpenAI");
        assert_eq!(tenant.status().as_u16(), 503);
        assert_eq!(tenant.code(), Some("upstream_quota_exhausted"));
        assert!(!tenant.should_retry());
    }
    // Rate limits, bad requests and outages are the upstream's to relay.
    for (status, body) in [
        (
            429,
            r#"{"error":{"message":"Rate limit exceeded","type":"rate_limit_error","code":"rate_limit_exceeded"}}"#,
        ),
        (
            400,
            r#"{"error":{"message":"Invalid model name","type":"invalid_request_error","param":"model","code":"invalid_model"}}"#,
        ),
        (503, ""),
    ] {
        assert_eq!(
            UpstreamFault::of(&parse(status, body)),
            None,
            "{status} {body}"
        );
    }
}
