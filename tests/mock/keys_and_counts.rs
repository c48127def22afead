//! Upstream keys, call counts, rate-limit headers and bad requests.

use super::*;

#[tokio::test]
async fn calls_are_counted_per_route_test_and_idempotency_key() {
    let (base, client) = start().await;
    for _ in 0..3 {
        let mut request = Chat.request(&base, "MOCK:status=500", false);
        request
            .headers_mut()
            .insert("x-tollgate-test", "retry-1".parse().expect("value"));
        request
            .headers_mut()
            .insert("idempotency-key", "idem-9".parse().expect("value"));
        call(&client, request).await;
    }
    call(&client, Messages.request(&base, "hi", false)).await;
    let (_, _, calls) = call(&client, get(&base, "/mock/calls")).await;
    assert_eq!(calls["total"], 4);
    assert_eq!(
        calls["routes"],
        json!({"/v1/chat/completions": 3, "/v1/messages": 1})
    );
    assert_eq!(calls["tests"], json!({"retry-1": 3}));
    assert_eq!(calls["idempotency_keys"], json!({"idem-9": 3}));
    let forget = Request::delete(format!("{base}/mock/calls"))
        .body(Full::default())
        .expect("request");
    let (status, _, _) = send(&client, forget).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, _, calls) = call(&client, get(&base, "/mock/calls")).await;
    assert_eq!(calls["total"], 0);
}

#[tokio::test]
async fn the_mock_counts_in_process_too() {
    let mock = mock::Mock::new(Vec::new());
    let (base, client) = start_with(mock.clone()).await;
    let mut request = Embeddings.request(&base, "x", false);
    request
        .headers_mut()
        .insert("x-tollgate-test", "in-process".parse().expect("value"));
    call(&client, request).await;
    assert_eq!(mock.calls().test("in-process"), 1);
    assert_eq!(mock.calls().route("/v1/embeddings"), 1);
}

#[tokio::test]
async fn the_upstream_key_is_checked_as_each_provider_checks_it() {
    let (base, client) = start().await;
    let unauthenticated = |path: &str, headers: &[(&str, &str)]| {
        let mut builder = Request::post(format!("{base}{path}"));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let body =
            json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]});
        builder
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request")
    };
    let (status, _, body) = call(&client, unauthenticated("/v1/chat/completions", &[])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], Value::Null);
    let wrong = "sk-up-wrong-key-987654";
    let (status, _, body) = call(
        &client,
        unauthenticated(
            "/v1/responses",
            &[("authorization", &format!("Bearer {wrong}"))],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("sk-") && message.contains("7654") && !message.contains(wrong),
        "{message}"
    );

    let version = ("anthropic-version", "2023-06-01");
    let (status, headers, body) = call(&client, unauthenticated("/v1/messages", &[version])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(body["request_id"], header(&headers, "request-id"));
    let (status, _, _) = call(
        &client,
        unauthenticated("/v1/messages", &[version, ("x-api-key", wrong)]),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = call(
        &client,
        unauthenticated("/v1/messages", &[("x-api-key", KEY)]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error"]["message"],
        "anthropic-version: header is required"
    );

    // Without `require_key`, OpenAI endpoints take any key (or none).
    let (base, client) = start_with(mock::Mock::new(Vec::new())).await;
    let open = Request::post(format!("{base}/v1/embeddings"))
        .body(Full::new(Bytes::from(r#"{"model":"m","input":"x"}"#)))
        .expect("request");
    let (status, _, _) = call(&client, open).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn rate_limit_headers_count_down_and_the_limit_is_enforced() {
    let (base, client) = start_with(mock::Mock::new(Vec::new()).requests_per_minute(2)).await;
    let (_, first, _) = call(&client, Chat.request(&base, "a", false)).await;
    let (_, second, _) = call(&client, Chat.request(&base, "a", false)).await;
    assert_eq!(header(&first, "x-ratelimit-limit-requests"), "2");
    assert_eq!(header(&first, "x-ratelimit-remaining-requests"), "1");
    assert_eq!(header(&second, "x-ratelimit-remaining-requests"), "0");
    assert_ne!(
        header(&first, "x-request-id"),
        header(&second, "x-request-id")
    );
    let remaining = |h: &HeaderMap| {
        header(h, "x-ratelimit-remaining-tokens")
            .parse::<u64>()
            .expect("number")
    };
    assert_eq!(
        remaining(&first) - remaining(&second),
        4,
        "1 prompt + 3 completion tokens"
    );
    assert!(header(&first, "x-ratelimit-reset-requests").ends_with('s'));
    let (status, headers, body) = call(&client, Chat.request(&base, "a", false)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let retry_ms: u64 = header(&headers, "retry-after-ms").parse().expect("ms");
    assert!((1..=60_000).contains(&retry_ms));

    let (base, client) = start().await;
    let (_, headers, _) = call(&client, Messages.request(&base, "a", false)).await;
    let reset = header(&headers, "anthropic-ratelimit-requests-reset");
    assert!(reset.parse::<jiff::Timestamp>().is_ok(), "{reset}");
    for name in [
        "anthropic-ratelimit-requests-limit",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-tokens-limit",
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
    ] {
        header(&headers, name);
    }
    let (_, headers, _) = call(&client, get(&base, "/v1/models")).await;
    header(&headers, "openai-processing-ms");
}

#[tokio::test]
async fn bad_requests_get_the_providers_400() {
    let (base, client) = start().await;
    let raw = |path: &str, body: &'static str, anthropic: bool| {
        let mut request = post(&base, path, &Value::Null, anthropic);
        *request.body_mut() = Full::new(Bytes::from_static(body.as_bytes()));
        request
    };
    let (status, _, body) = call(&client, raw("/v1/chat/completions", "{not json", false)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, _, body) = call(&client, raw("/v1/messages", "[]", true)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["type"], "error");
    let (status, _, body) = call(
        &client,
        raw("/v1/messages", r#"{"model":"m","messages":[]}"#, true),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["message"], "max_tokens: Field required");
    let (status, _, body) = call(
        &client,
        raw(
            "/v1/embeddings",
            r#"{"model":"m","input":"x","encoding_format":"hex"}"#,
            false,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "encoding_format");
    let (status, _, body) = call(
        &client,
        raw("/v1/embeddings", r#"{"model":"m","input":[]}"#, false),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "input");
    let (status, _, body) = call(
        &client,
        raw("/v1/chat/completions", r#"{"messages":[]}"#, false),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("model"))
    );
    let (status, _, body) = call(&client, get(&base, "/v1/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["message"], "Invalid URL (GET /v1/nope)");
}
