//! The `MOCK:` directives on every endpoint and stream kind.

use super::*;

#[tokio::test]
async fn status_and_times_work_on_every_endpoint_in_the_providers_envelope() {
    let (base, client) = start().await;
    for endpoint in ALL {
        let text = format!("{endpoint:?} MOCK:status=503,times=1");
        let (status, headers, body) = call(&client, endpoint.request(&base, &text, false)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{endpoint:?}");
        assert_eq!(header(&headers, "retry-after"), "1");
        assert_eq!(header(&headers, "retry-after-ms"), "20");
        if endpoint.anthropic() {
            assert_eq!(body["type"], "error");
            assert_eq!(body["error"]["type"], "api_error");
            assert_eq!(body["request_id"], header(&headers, "request-id"));
        } else {
            assert_eq!(body["error"]["type"], "server_error", "{endpoint:?}");
            assert!(
                body["error"]
                    .as_object()
                    .is_some_and(|e| e.contains_key("param"))
            );
            assert!(header(&headers, "x-request-id").starts_with("req_"));
        }
        let (status, _, _) = call(&client, endpoint.request(&base, &text, false)).await;
        assert_eq!(status, StatusCode::OK, "{endpoint:?} after times=1");
    }
    let (status, headers, body) =
        call(&client, Messages.request(&base, "MOCK:status=529", true)).await;
    assert_eq!(status.as_u16(), 529);
    assert_eq!(
        body["error"],
        json!({"type": "overloaded_error", "message": "Overloaded"})
    );
    assert!(headers.contains_key("retry-after"));
}

#[tokio::test]
async fn insufficient_quota_is_openais_body() {
    let (base, client) = start().await;
    let text = "MOCK:status=429,type=insufficient_quota,retry_after=none";
    let (status, headers, body) = call(&client, Chat.request(&base, text, false)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body,
        json!({"error": {
            "message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "type": "insufficient_quota",
            "param": null,
            "code": "insufficient_quota",
        }})
    );
    assert!(!headers.contains_key("retry-after"));
}

#[tokio::test]
async fn format_directives_write_other_dialects() {
    let (base, client) = start().await;
    let (status, headers, body) = send(
        &client,
        Chat.request(&base, "MOCK:status=502,format=html", false),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(header(&headers, "content-type"), "text/html");
    assert!(
        String::from_utf8_lossy(&body.expect("body")).contains("<title>502 Bad Gateway</title>")
    );
    let (_, _, hai) = call(
        &client,
        Chat.request(&base, "MOCK:status=429,format=error_code_detail", false),
    )
    .await;
    assert_eq!(hai["error_code"], "rate_limit_error");
    let (_, _, humanloop) = call(
        &client,
        Chat.request(&base, "MOCK:status=504,format=humanloop", false),
    )
    .await;
    assert_eq!(humanloop["detail"]["code"], 504);
    assert_eq!(humanloop["detail"]["origin"], "mock");
    let (_, _, anthropic) = call(
        &client,
        Chat.request(&base, "MOCK:status=500,format=anthropic", false),
    )
    .await;
    assert_eq!(anthropic["error"]["type"], "api_error");
}

#[tokio::test]
async fn error_after_ends_every_stream_in_its_dialect() {
    let (base, client) = start().await;
    for endpoint in STREAMING {
        for n in [0, 2] {
            let text = format!("a b c d MOCK:error_after={n}");
            let (status, _, body) = send(&client, endpoint.request(&base, &text, true)).await;
            assert_eq!(status, StatusCode::OK);
            let body = body.expect("the stream ends cleanly");
            assert_eq!(deltas(endpoint, &body).len(), n, "{endpoint:?} {n}");
            let events = events(&body);
            let (name, data) = events.last().expect("events");
            let data: Value = serde_json::from_str(data).expect("json");
            match endpoint {
                Chat | Completions => assert_eq!(data["error"]["type"], "server_error"),
                Responses => {
                    assert_eq!(name.as_deref(), Some("response.failed"));
                    assert_eq!(data["response"]["status"], "failed");
                    assert_eq!(data["response"]["error"]["code"], "server_error");
                    let (name, error) = &events[events.len() - 2];
                    assert_eq!(name.as_deref(), Some("error"));
                    let error: Value = serde_json::from_str(error).expect("json");
                    assert_eq!(error["code"], "server_error");
                    assert_eq!(error["sequence_number"], events.len() - 2);
                }
                Messages => {
                    assert_eq!(name.as_deref(), Some("error"));
                    assert_eq!(data["error"]["type"], "overloaded_error");
                }
                Embeddings => unreachable!(),
            }
            assert!(!String::from_utf8_lossy(&body).contains("[DONE]"));
        }
    }
    let text = "MOCK:error_after=0,error_event=error";
    let (_, _, body) = send(&client, Responses.request(&base, text, true)).await;
    let body = body.expect("stream");
    let events = events(&body);
    assert_eq!(events.last().and_then(|e| e.0.as_deref()), Some("error"));
    assert!(!String::from_utf8_lossy(&body).contains("response.failed"));
}

#[tokio::test]
async fn cut_after_drops_every_stream_mid_body() {
    let (base, client) = start().await;
    for endpoint in STREAMING {
        let (status, _, body) = send(
            &client,
            endpoint.request(&base, "a b c d MOCK:cut_after=3", true),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.is_err(),
            "{endpoint:?}: the body must fail, got {body:?}"
        );
    }
}

#[tokio::test]
async fn slow_streams_stall_and_delay_between_events() {
    let (base, client) = start().await;
    // delay_ms: between every two events (8 events for a 4-word chat reply).
    let started = Instant::now();
    let (_, _, body) = send(&client, Chat.request(&base, "a b MOCK:delay_ms=25", true)).await;
    let events = events(&body.expect("stream"));
    assert!(started.elapsed() >= Duration::from_millis(25) * (events.len() as u32 - 1));
    let started = Instant::now();
    let text = "a b MOCK:stall_after=1,stall_ms=200";
    let (_, _, body) = send(&client, Messages.request(&base, text, true)).await;
    assert_eq!(deltas(Messages, &body.expect("stream")).len(), 5);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn hang_holds_even_the_headers() {
    let (base, client) = start().await;
    let waited = tokio::time::timeout(
        Duration::from_millis(300),
        client.request(Responses.request(&base, "MOCK:hang_ms=5000", true)),
    )
    .await;
    assert!(waited.is_err(), "headers arrived during the hang");
    let started = Instant::now();
    let (status, _, _) = call(
        &client,
        Embeddings.request(&base, "MOCK:hang_ms=150", false),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn reset_closes_the_connection_without_an_answer() {
    let (base, client) = start().await;
    for endpoint in ALL {
        let text = format!("{endpoint:?} MOCK:reset,times=1");
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            client.request(endpoint.request(&base, &text, false)),
        )
        .await
        .expect("the reset comes at once");
        assert!(answer.is_err(), "{endpoint:?} answered: {answer:?}");
        // `times=1`: the retry is answered.
        let (status, _, _) = call(&client, endpoint.request(&base, &text, false)).await;
        assert_eq!(status, StatusCode::OK);
    }
}
