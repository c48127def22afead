//! Parsing the vendors' real error bodies.

use super::*;

fn parse(status: u16, headers: &[(&str, &str)], body: &str) -> ApiError {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    envelope::parse(StatusCode::from_u16(status).unwrap(), &map, body.as_bytes())
}

#[test]
fn parses_openai_invalid_api_key() {
    let e = parse(
        401,
        &[("x-request-id", "req_abc")],
        r#"{"error":{"message":"Incorrect API key provided: sk-abc***def. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
    );
    assert_eq!(e.kind(), ErrorKind::Authentication);
    assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        e.message(),
        "Incorrect API key provided: sk-abc***def. You can find your API key at https://platform.openai.com/account/api-keys."
    );
    assert_eq!(e.error_type(), "invalid_request_error");
    assert_eq!(e.param(), None);
    assert_eq!(e.code(), Some("invalid_api_key"));
    assert_eq!(e.request_id(), Some("req_abc"));
    assert!(!e.should_retry());
}

#[test]
fn parses_openai_rate_limit_with_its_headers() {
    let e = parse(
        429,
        &[
            ("retry-after-ms", "20"),
            ("retry-after", "1"),
            ("x-should-retry", "true"),
        ],
        r#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, Used 29958, Requested 520. Please try again in 956ms.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#,
    );
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert_eq!(e.code(), Some("rate_limit_exceeded"));
    assert_eq!(e.error_type(), "tokens");
    assert_eq!(e.retry_after(), Some(Duration::from_millis(20)));
    assert!(e.should_retry());
    assert!(e.message().starts_with("Rate limit reached for gpt-4o"));

    let e = parse(
        429,
        &[("retry-after", "7")],
        r#"{"error":{"message":"Rate limit exceeded","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}"#,
    );
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
}

#[test]
fn parses_insufficient_balance_and_quota() {
    let e = parse(
        403,
        &[],
        r#"{"error":{"message":"Insufficient account balance","type":"insufficient_quota","param":null,"code":"insufficient_balance"}}"#,
    );
    assert_eq!(e.kind(), ErrorKind::InsufficientBalance);
    assert_eq!(e.status(), StatusCode::FORBIDDEN);
    assert_eq!(e.code(), Some("insufficient_balance"));
    assert!(!e.should_retry());

    let e = parse(
        429,
        &[],
        r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
    );
    assert_eq!(e.kind(), ErrorKind::QuotaExhausted);
    assert!(!e.should_retry());
}

#[test]
fn parses_budget_exceeded() {
    let e = parse(
        402,
        &[],
        r#"{"error":{"message":"Budget exceeded: $50.00 limit reached","type":"budget_exceeded_error","param":null,"code":"budget_exceeded"}}"#,
    );
    assert_eq!(e.kind(), ErrorKind::BudgetExceeded);
    assert_eq!(e.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(e.message(), "Budget exceeded: $50.00 limit reached");
    assert_eq!(e.error_type(), "budget_exceeded_error");
    assert_eq!(e.code(), Some("budget_exceeded"));
    // LiteLLM-style: the status says 400 but the type says budget.
    let e = parse(
        400,
        &[],
        r#"{"error":{"message":"Budget has been exceeded! Current cost: 50.1, Max budget: 50.0","type":"budget_exceeded","param":null,"code":"400"}}"#,
    );
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    assert_eq!(e.code(), Some("400"));
    assert_eq!(e.error_type(), "budget_exceeded");
}

#[test]
fn parses_error_code_detail() {
    let e = parse(
        400,
        &[],
        r#"{"error_code":"content_filter_error","detail":"The response was filtered due to the prompt triggering content management policy."}"#,
    );
    assert_eq!(e.kind(), ErrorKind::ContentFilter);
    assert_eq!(e.code(), Some("content_filter_error"));
    assert_eq!(
        e.message(),
        "The response was filtered due to the prompt triggering content management policy."
    );
    // FastAPI's bare `detail`.
    let e = parse(404, &[], r#"{"detail":"Not Found"}"#);
    assert_eq!((e.kind(), e.message()), (ErrorKind::NotFound, "Not Found"));
    // FastAPI's validation list is kept as compact JSON.
    let e = parse(
        422,
        &[],
        r#"{"detail":[{"loc":["body","model"],"msg":"field required"}]}"#,
    );
    assert_eq!(e.kind(), ErrorKind::Unprocessable);
    assert_eq!(
        e.message(),
        r#"[{"loc":["body","model"],"msg":"field required"}]"#
    );
}

#[test]
fn parses_humanloop_plain_and_wrapped() {
    let body = r#"{"type":"unprocessable_entity_error","message":"This model's maximum context length is 4097 tokens. However, your messages resulted in 4501 tokens. Please reduce the length of the messages.","code":422,"origin":"OpenAI"}"#;
    let wrapped = format!(r#"{{"detail":{body}}}"#);
    for body in [body, &wrapped] {
        let e = parse(422, &[], body);
        assert_eq!(e.kind(), ErrorKind::Unprocessable);
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.error_type(), "unprocessable_entity_error");
        assert!(
            e.message()
                .starts_with("This model's maximum context length is 4097 tokens.")
        );
        assert_eq!(e.origin(), Origin::Upstream);
        assert_eq!(e.provider(), Some("OpenAI"));
        let (_, rendered) = body_of(ErrorFormat::Humanloop.render(&e));
        assert_eq!(std::str::from_utf8(&rendered).unwrap(), body_humanloop(&e));
    }
}

/// Humanloop answers with the object wrapped in `detail`, whichever way it
/// came in.
fn body_humanloop(e: &ApiError) -> String {
    format!(
        r#"{{"detail":{{"type":"unprocessable_entity_error","message":{},"code":422,"origin":"OpenAI"}}}}"#,
        json_str(e.message())
    )
}

#[test]
fn parses_anthropic_overloaded() {
    let e = parse(
        529,
        &[("request-id", "req_018EeWyXxfu5pfWkrYcMdjWG")],
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_018EeWyXxfu5pfWkrYcMdjWG"}"#,
    );
    assert_eq!(e.kind(), ErrorKind::Overloaded);
    assert_eq!(e.status().as_u16(), 529);
    assert_eq!(e.message(), "Overloaded");
    assert_eq!(e.request_id(), Some("req_018EeWyXxfu5pfWkrYcMdjWG"));
    assert!(e.should_retry());
    let e = parse(
        400,
        &[],
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#,
    );
    assert_eq!(e.kind(), ErrorKind::InvalidRequest);
    assert_eq!(e.message(), "max_tokens: Field required");
    assert_eq!(e.request_id(), None);
}

#[test]
fn parses_html_text_and_empty_bodies() {
    let html = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
    let e = parse(502, &[("content-type", "text/html")], html);
    assert_eq!(e.kind(), ErrorKind::BadGateway);
    assert_eq!(e.message(), "502 Bad Gateway");
    assert_eq!(e.code(), Some("bad_gateway"));
    let e = parse(503, &[], "<!DOCTYPE html><html><body>down</body></html>");
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert_eq!(e.message(), ErrorKind::Unavailable.default_message());

    let e = parse(
        413,
        &[("content-type", "text/plain")],
        "length limit exceeded",
    );
    assert_eq!(e.kind(), ErrorKind::PayloadTooLarge);
    assert_eq!(e.message(), "length limit exceeded");

    for status in [400, 401, 403, 404, 429, 500, 502, 503, 504, 529] {
        let e = parse(status, &[], "");
        let kind = ErrorKind::from_status(StatusCode::from_u16(status).unwrap());
        assert_eq!(e.kind(), kind);
        assert_eq!(e.status().as_u16(), status);
        assert_eq!(e.message(), kind.default_message());
        assert_eq!(e.code(), Some(kind.default_code()));
    }
    let e = parse(418, &[], "  \n ");
    assert_eq!(
        (e.kind(), e.status().as_u16()),
        (ErrorKind::InvalidRequest, 418)
    );

    // Unknown JSON is kept as the message.
    let e = parse(500, &[], r#"{"oops":true}"#);
    assert_eq!(
        (e.kind(), e.message()),
        (ErrorKind::Internal, r#"{"oops":true}"#)
    );
    let e = parse(500, &[], r#"{"error":"upstream exploded"}"#);
    assert_eq!(e.message(), "upstream exploded");
}

#[test]
fn parses_grpc_status_headers() {
    let e = parse(
        200,
        &[
            ("content-type", "application/grpc"),
            ("grpc-status", "8"),
            ("grpc-message", "quota%20exceeded%3A%20%C3%A9"),
        ],
        "",
    );
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(e.message(), "quota exceeded: \u{e9}");
    for (code, status) in [
        (3, 400),
        (16, 401),
        (7, 403),
        (8, 429),
        (5, 404),
        (10, 409),
        (13, 500),
        (14, 503),
        (4, 504),
    ] {
        let e = parse(200, &[("grpc-status", &code.to_string())], "");
        assert_eq!(e.status().as_u16(), status, "grpc {code}");
        assert_eq!(envelope::grpc_status(&e), code, "grpc {code}");
    }
}

#[test]
fn parses_compressed_bodies_from_status_only() {
    // A gzip body cannot be read; its bytes must not become the message.
    let e = envelope::parse(
        StatusCode::BAD_GATEWAY,
        &{
            let mut h = HeaderMap::new();
            h.insert("content-encoding", HeaderValue::from_static("gzip"));
            h
        },
        &[0x1f, 0x8b, 0x08, 0x00, 0xff, 0xfe],
    );
    assert_eq!(e.kind(), ErrorKind::BadGateway);
    assert_eq!(e.message(), ErrorKind::BadGateway.default_message());
}

#[test]
fn parses_http_date_retry_after() {
    let later = std::time::SystemTime::now() + Duration::from_secs(120);
    let e = parse(503, &[("retry-after", &httpdate::fmt_http_date(later))], "");
    let delay = e.retry_after().expect("a date is a delay");
    assert!(
        delay > Duration::from_secs(100) && delay <= Duration::from_secs(120),
        "{delay:?}"
    );
    let e = parse(503, &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")], "");
    assert_eq!(e.retry_after(), Some(Duration::ZERO));
    let e = parse(503, &[("retry-after", "soon")], "");
    assert_eq!(e.retry_after(), None);
}

#[test]
fn long_foreign_text_is_cut() {
    let page = "x".repeat(100_000);
    let e = parse(500, &[], &page);
    assert!(e.message().chars().count() <= 2049);
    assert!(e.message().ends_with('\u{2026}'));
}
