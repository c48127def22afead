//! The error model on the wire: every `ErrorKind` in every `ErrorFormat`,
//! parsing of each vendor's real error bodies, round trips, and
//! `ErrorEnvelopeLayer` in front of the failures a gateway meets.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tollgate::envelope::{self, ErrorFormat};
use tollgate::{ApiError, ErrorKind, Origin};

const FORMATS: [ErrorFormat; 5] = [
    ErrorFormat::OpenAi,
    ErrorFormat::Anthropic,
    ErrorFormat::ErrorCodeDetail,
    ErrorFormat::Humanloop,
    ErrorFormat::Grpc,
];

/// One row of the issue's table, written out independently of `ErrorKind`'s
/// own methods so the test checks the code against the spec, not itself.
struct Row {
    kind: ErrorKind,
    status: u16,
    error_type: &'static str,
    code: &'static str,
    param: Option<&'static str>,
    anthropic_type: &'static str,
    grpc_status: u8,
    should_retry: bool,
}

const fn row(
    kind: ErrorKind,
    status: u16,
    error_type: &'static str,
    code: &'static str,
    anthropic_type: &'static str,
    grpc_status: u8,
    should_retry: bool,
) -> Row {
    Row {
        kind,
        status,
        error_type,
        code,
        param: None,
        anthropic_type,
        grpc_status,
        should_retry,
    }
}

const TABLE: [Row; 20] = {
    use ErrorKind::*;
    [
        row(
            InvalidRequest,
            400,
            "invalid_request_error",
            "invalid_request",
            "invalid_request_error",
            3,
            false,
        ),
        Row {
            param: Some("model"),
            ..row(
                InvalidModel,
                400,
                "invalid_request_error",
                "invalid_model",
                "invalid_request_error",
                3,
                false,
            )
        },
        row(
            ContextLengthExceeded,
            400,
            "invalid_request_error",
            "context_length_exceeded",
            "invalid_request_error",
            3,
            false,
        ),
        row(
            ContentFilter,
            400,
            "invalid_request_error",
            "content_filter",
            "invalid_request_error",
            3,
            false,
        ),
        row(
            Authentication,
            401,
            "invalid_request_error",
            "invalid_api_key",
            "authentication_error",
            16,
            false,
        ),
        row(
            BudgetExceeded,
            402,
            "budget_exceeded_error",
            "budget_exceeded",
            "billing_error",
            8,
            false,
        ),
        row(
            PermissionDenied,
            403,
            "permission_error",
            "permission_denied",
            "permission_error",
            7,
            false,
        ),
        row(
            InsufficientBalance,
            403,
            "insufficient_quota",
            "insufficient_balance",
            "billing_error",
            7,
            false,
        ),
        row(
            NotFound,
            404,
            "not_found_error",
            "not_found",
            "not_found_error",
            5,
            false,
        ),
        row(
            Conflict,
            409,
            "conflict_error",
            "conflict",
            "invalid_request_error",
            10,
            true,
        ),
        row(
            PayloadTooLarge,
            413,
            "invalid_request_error",
            "payload_too_large",
            "request_too_large",
            3,
            false,
        ),
        row(
            Unprocessable,
            422,
            "invalid_request_error",
            "unprocessable_entity",
            "invalid_request_error",
            3,
            false,
        ),
        row(
            RateLimited,
            429,
            "rate_limit_error",
            "rate_limit_exceeded",
            "rate_limit_error",
            8,
            true,
        ),
        row(
            QuotaExhausted,
            429,
            "insufficient_quota",
            "insufficient_quota",
            "billing_error",
            8,
            false,
        ),
        row(
            Internal,
            500,
            "server_error",
            "internal_error",
            "api_error",
            13,
            true,
        ),
        row(
            BadGateway,
            502,
            "server_error",
            "bad_gateway",
            "api_error",
            14,
            true,
        ),
        row(
            Unavailable,
            503,
            "server_error",
            "service_unavailable",
            "api_error",
            14,
            true,
        ),
        row(
            Timeout,
            504,
            "timeout_error",
            "timeout",
            "timeout_error",
            4,
            true,
        ),
        row(
            Overloaded,
            529,
            "overloaded_error",
            "overloaded",
            "overloaded_error",
            14,
            true,
        ),
        row(
            Connection,
            502,
            "api_connection_error",
            "api_connection_error",
            "api_error",
            14,
            true,
        ),
    ]
};

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn json_opt(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_owned(), json_str)
}

fn body_of(response: Response<Full<Bytes>>) -> (http::response::Parts, Bytes) {
    let (parts, body) = response.into_parts();
    let bytes = futures_util::FutureExt::now_or_never(body.collect())
        .expect("a Full body is ready")
        .unwrap()
        .to_bytes();
    (parts, bytes)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

fn grpc_encoded(message: &str) -> String {
    let mut out = String::new();
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[test]
fn the_table_is_complete_and_in_order() {
    assert_eq!(ErrorKind::ALL.len(), TABLE.len());
    for (kind, row) in ErrorKind::ALL.iter().zip(&TABLE) {
        assert_eq!(*kind, row.kind);
    }
}

#[test]
fn every_kind_renders_exactly_in_every_format() {
    for row in &TABLE {
        for request_id in [None, Some("req_0123")] {
            for retry_after in [None, Some(Duration::from_millis(2500))] {
                let mut error = ApiError::from_kind(row.kind);
                if let Some(id) = request_id {
                    error = error.with_request_id(id);
                }
                if let Some(delay) = retry_after {
                    error = error.with_retry_after(delay);
                }
                assert_eq!(error.should_retry(), row.should_retry, "{:?}", row.kind);
                for format in FORMATS {
                    check_rendering(row, &error, format, request_id, retry_after);
                }
            }
        }
    }
}

fn check_rendering(
    row: &Row,
    error: &ApiError,
    format: ErrorFormat,
    request_id: Option<&str>,
    retry_after: Option<Duration>,
) {
    let ctx = format!("{:?} in {format:?}", row.kind);
    let message = row.kind.default_message();
    let (parts, body) = body_of(format.render(error));
    let h = &parts.headers;

    let expected_body = match format {
        ErrorFormat::OpenAi => format!(
            r#"{{"error":{{"message":{},"type":"{}","param":{},"code":"{}"}}}}"#,
            json_str(message),
            row.error_type,
            json_opt(row.param),
            row.code
        ),
        ErrorFormat::Anthropic => format!(
            r#"{{"type":"error","error":{{"type":"{}","message":{}}},"request_id":{}}}"#,
            row.anthropic_type,
            json_str(message),
            json_opt(request_id)
        ),
        ErrorFormat::ErrorCodeDetail => format!(
            r#"{{"error_code":"{}","detail":{}}}"#,
            row.code,
            json_str(message)
        ),
        ErrorFormat::Humanloop => format!(
            r#"{{"type":"{}","message":{},"code":{},"origin":"Gateway"}}"#,
            row.error_type,
            json_str(message),
            row.status
        ),
        _ => String::new(),
    };
    assert_eq!(std::str::from_utf8(&body).unwrap(), expected_body, "{ctx}");

    if format == ErrorFormat::Grpc {
        assert_eq!(parts.status, StatusCode::OK, "{ctx}");
        assert_eq!(header(h, "content-type"), Some("application/grpc"), "{ctx}");
        let grpc_status = row.grpc_status.to_string();
        assert_eq!(header(h, "grpc-status"), Some(&*grpc_status), "{ctx}");
        let encoded = grpc_encoded(message);
        assert_eq!(header(h, "grpc-message"), Some(&*encoded), "{ctx}");
    } else {
        assert_eq!(parts.status.as_u16(), row.status, "{ctx}");
        assert_eq!(header(h, "content-type"), Some("application/json"), "{ctx}");
        assert!(!h.contains_key("grpc-status"), "{ctx}");
        assert!(!h.contains_key("grpc-message"), "{ctx}");
    }
    let should_retry = if row.should_retry { "true" } else { "false" };
    assert_eq!(header(h, "x-should-retry"), Some(should_retry), "{ctx}");
    assert_eq!(header(h, "x-request-id"), request_id, "{ctx}");
    match retry_after {
        Some(_) => {
            assert_eq!(header(h, "retry-after"), Some("3"), "{ctx}");
            assert_eq!(header(h, "retry-after-ms"), Some("2500"), "{ctx}");
        }
        None => {
            assert!(!h.contains_key("retry-after"), "{ctx}");
            assert!(!h.contains_key("retry-after-ms"), "{ctx}");
        }
    }
    // The error travels with the response for an outer envelope.
    assert_eq!(parts.extensions.get::<ApiError>(), Some(error), "{ctx}");
    let expected_headers = 2 // content-type, x-should-retry
        + usize::from(request_id.is_some())
        + 2 * usize::from(retry_after.is_some())
        + 2 * usize::from(format == ErrorFormat::Grpc);
    assert_eq!(h.len(), expected_headers, "{ctx}: {h:?}");
}

#[test]
fn into_response_is_the_openai_rendering() {
    let error = ApiError::budget_exceeded()
        .with_message("Budget exceeded: $50.00 limit reached")
        .with_request_id("req_1");
    let (a, a_body) = body_of(error.to_response());
    let (b, b_body) = body_of(error.clone().into_response());
    let (c, c_body) = body_of(ErrorFormat::OpenAi.render(&error));
    assert_eq!(
        (a.status, &a.headers, &a_body),
        (c.status, &c.headers, &c_body)
    );
    assert_eq!(
        (b.status, &b.headers, &b_body),
        (c.status, &c.headers, &c_body)
    );
    assert_eq!(b.extensions.get::<ApiError>(), Some(&error));
}

#[test]
fn overrides_change_what_is_rendered() {
    let error = ApiError::unavailable()
        .with_should_retry(false)
        .with_status(StatusCode::from_u16(599).unwrap())
        .with_type("custom_error")
        .with_code("maintenance")
        .with_param("model")
        .with_provider("OpenAI");
    let (parts, body) = body_of(ErrorFormat::OpenAi.render(&error));
    assert_eq!(parts.status.as_u16(), 599);
    assert_eq!(parts.headers["x-should-retry"], "false");
    assert_eq!(
        &body[..],
        br#"{"error":{"message":"The service is temporarily unavailable. Please retry.","type":"custom_error","param":"model","code":"maintenance"}}"#
    );
    let (_, body) = body_of(ErrorFormat::Humanloop.render(&error));
    assert_eq!(
        &body[..],
        br#"{"type":"custom_error","message":"The service is temporarily unavailable. Please retry.","code":599,"origin":"OpenAI"}"#
    );
    let upstream = ApiError::internal().with_origin(Origin::Upstream);
    let (_, body) = body_of(ErrorFormat::Humanloop.render(&upstream));
    assert!(body.ends_with(br#""origin":"Upstream"}"#));
    // A code that means an exhausted account is never retried, whatever the kind.
    let quota = ApiError::rate_limited().with_code("insufficient_quota");
    let (parts, _) = body_of(ErrorFormat::OpenAi.render(&quota));
    assert_eq!(parts.headers["x-should-retry"], "false");
}

#[test]
fn retry_after_rounds_up_to_whole_seconds() {
    for (delay, secs, ms) in [
        (Duration::ZERO, "1", "0"),
        (Duration::from_micros(999), "1", "0"),
        (Duration::from_millis(1000), "1", "1000"),
        (Duration::from_millis(1001), "2", "1001"),
        (Duration::from_secs(60), "60", "60000"),
    ] {
        let error = ApiError::rate_limited().with_retry_after(delay);
        let (parts, _) = body_of(ErrorFormat::OpenAi.render(&error));
        assert_eq!(parts.headers["retry-after"], secs, "{delay:?}");
        assert_eq!(parts.headers["retry-after-ms"], ms, "{delay:?}");
    }
}

#[test]
fn grpc_message_escapes_everything_but_printable_ascii() {
    let error = ApiError::invalid_request().with_message("100% \"bad\"\n\u{e9}\u{1F600}");
    let (parts, body) = body_of(ErrorFormat::Grpc.render(&error));
    assert!(body.is_empty());
    assert_eq!(
        parts.headers["grpc-message"],
        "100%25 \"bad\"%0A%C3%A9%F0%9F%98%80"
    );
}

#[test]
fn messages_are_json_escaped() {
    let error = ApiError::invalid_request()
        .with_message("a \"quoted\" \\ line\nbreak \u{0} \u{2028} \u{1F600}");
    for format in FORMATS {
        if format == ErrorFormat::Grpc {
            continue;
        }
        let (_, body) = body_of(format.render(&error));
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let message = value
            .pointer("/error/message")
            .or_else(|| value.pointer("/detail"))
            .or_else(|| value.pointer("/message"))
            .and_then(|m| m.as_str());
        assert_eq!(message, Some(error.message()), "{format:?}");
    }
}

// ---------------------------------------------------------------------------
// Parsing the vendors' real bodies.

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

fn body_humanloop(e: &ApiError) -> String {
    format!(
        r#"{{"type":"unprocessable_entity_error","message":{},"code":422,"origin":"OpenAI"}}"#,
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

// ---------------------------------------------------------------------------
// Round trips and fuzzing.

fn arb_kind() -> impl Strategy<Value = ErrorKind> {
    proptest::sample::select(ErrorKind::ALL.to_vec())
}

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\"\\\\%<>{}\\[\\]\u{0}-\u{1f}\u{7f}\u{80}\u{a0}\u{2028}\u{2029}\u{e9}\u{4e2d}\u{1F600} a-zA-Z0-9]{0,40}",
        Just(String::new()),
        Just(" padded ".to_owned()),
        // Longer than the cut applied to unstructured bodies.
        proptest::collection::vec(any::<char>(), 2040..2100).prop_map(String::from_iter),
        Just("{\"error\":{\"message\":\"nested\"}}".to_owned()),
        Just("<html><title>x</title></html>".to_owned()),
    ]
}

fn arb_code() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        arb_text().prop_map(Some),
        proptest::sample::select(
            ErrorKind::ALL
                .iter()
                .map(|k| k.default_code().to_owned())
                .collect::<Vec<_>>()
        )
        .prop_map(Some),
    ]
}

fn arb_delay() -> impl Strategy<Value = Option<Duration>> {
    prop_oneof![
        Just(None),
        (0u64..100_000).prop_map(|ms| Some(Duration::from_millis(ms))),
        (0u64..10_000_000_000).prop_map(|us| Some(Duration::from_micros(us))),
        any::<u64>().prop_map(|s| Some(Duration::from_secs(s))),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Some(Duration::new(s, n))),
    ]
}

prop_compose! {
    fn arb_error()(
        kind in arb_kind(),
        message in arb_text(),
        error_type in proptest::option::of(arb_text()),
        param in proptest::option::of(arb_text()),
        keep_param in any::<bool>(),
        code in arb_code(),
        keep_code in any::<bool>(),
        delay in arb_delay(),
        should_retry in proptest::option::of(any::<bool>()),
        request_id in proptest::option::of(prop_oneof![arb_text(), "req_[a-z0-9]{1,24}"]),
        provider in proptest::option::of(prop_oneof![arb_text(), Just("OpenAI".to_owned())]),
        upstream in any::<bool>(),
    ) -> ApiError {
        let mut e = ApiError::new(kind, message);
        if let Some(t) = error_type {
            e = e.with_type(t);
        }
        if !keep_param {
            e = match param {
                Some(p) => e.with_param(p),
                None => e.without_param(),
            };
        }
        if !keep_code {
            e = match code {
                Some(c) => e.with_code(c),
                None => e.without_code(),
            };
        }
        if let Some(d) = delay {
            e = e.with_retry_after(d);
        }
        if let Some(s) = should_retry {
            e = e.with_should_retry(s);
        }
        if let Some(id) = request_id {
            e = e.with_request_id(id);
        }
        if let Some(p) = provider {
            e = e.with_provider(p);
        } else if upstream {
            e = e.with_origin(Origin::Upstream);
        }
        e
    }
}

const COMPARED_HEADERS: [&str; 8] = [
    "content-type",
    "x-should-retry",
    "retry-after",
    "retry-after-ms",
    "x-request-id",
    "grpc-status",
    "grpc-message",
    "content-length",
];

fn wire(format: ErrorFormat, error: &ApiError) -> (StatusCode, Vec<Option<HeaderValue>>, Bytes) {
    let (parts, body) = body_of(format.render(error));
    let headers = COMPARED_HEADERS
        .iter()
        .map(|name| parts.headers.get(*name).cloned())
        .collect();
    (parts.status, headers, body)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn render_parse_render_is_stable(error in arb_error()) {
        for format in FORMATS {
            let first = format.render(&error);
            let (parts, body) = body_of(first);
            let parsed = envelope::parse(parts.status, &parts.headers, &body);
            let again = wire(format, &parsed);
            prop_assert_eq!(wire(format, &error), again, "{:?} / {:?}", format, parsed);
        }
    }

    #[test]
    fn openai_round_trip_keeps_every_field(error in arb_error()) {
        let (parts, body) = body_of(ErrorFormat::OpenAi.render(&error));
        let parsed = envelope::parse(parts.status, &parts.headers, &body);
        prop_assert_eq!(parsed.status(), error.status());
        prop_assert_eq!(parsed.message(), error.message());
        prop_assert_eq!(parsed.error_type(), error.error_type());
        prop_assert_eq!(parsed.param(), error.param());
        prop_assert_eq!(parsed.code(), error.code());
        prop_assert_eq!(parsed.should_retry(), error.should_retry());
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis().min(u128::from(u64::MAX)));
        prop_assert_eq!(ms(parsed.retry_after()), ms(error.retry_after()));
    }

    #[test]
    fn parse_never_panics(
        status in 0u16..1000,
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..512),
            arb_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            arb_text().prop_map(String::into_bytes),
        ],
        headers in proptest::collection::vec(
            (
                proptest::sample::select(vec![
                    "content-type", "content-encoding", "grpc-status", "grpc-message",
                    "retry-after", "retry-after-ms", "x-should-retry", "x-request-id",
                ]),
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..40),
                    "application/grpc|gzip|identity|[0-9]{1,30}|-?[0-9.e+]{1,20}|true|false|%[0-9A-Fa-f%]{0,6}"
                        .prop_map(String::into_bytes),
                ],
            ),
            0..6,
        ),
    ) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                map.append(name, value);
            }
        }
        let error = envelope::parse(status, &map, &body);
        for format in FORMATS {
            let _ = format.render(&error);
        }
    }
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        arb_text().prop_map(Value::String),
        proptest::sample::select(vec![
            "error",
            "message",
            "type",
            "code",
            "detail",
            "error_code",
            "origin",
            "request_id",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec(
                (
                    prop_oneof![
                        proptest::sample::select(vec![
                            "error",
                            "message",
                            "type",
                            "code",
                            "param",
                            "detail",
                            "error_code",
                            "origin",
                            "request_id",
                        ])
                        .prop_map(str::to_owned),
                        "[a-z]{1,6}",
                    ],
                    inner,
                ),
                0..5,
            )
            .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

// ---------------------------------------------------------------------------
// ErrorEnvelopeLayer.

mod layer {
    use std::collections::VecDeque;
    use std::io;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use super::*;
    use http::Request;
    use http_body::Frame;
    use tollgate::BoxError;
    use tollgate::body::ResponseBody;
    use tollgate::envelope::ErrorEnvelopeLayer;
    use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

    type Req = Request<Full<Bytes>>;

    fn request() -> Req {
        Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    }

    fn respond(status: u16, headers: &[(&str, &str)], body: &'static str) -> Response<Full<Bytes>> {
        let mut builder = Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    async fn collect<B>(response: Response<B>) -> (http::response::Parts, serde_json::Value)
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: std::fmt::Debug,
    {
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (parts, value)
    }

    /// Runs one request through `ErrorEnvelopeLayer` → a service answering `inner`.
    async fn through(
        layer: ErrorEnvelopeLayer,
        req: Req,
        inner: Result<Response<Full<Bytes>>, BoxError>,
    ) -> (http::response::Parts, serde_json::Value) {
        let inner = Mutex::new(Some(inner));
        let service = ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(move |_req: Req| {
                let answer = inner.lock().unwrap().take().unwrap();
                async move { answer }
            }));
        collect(service.oneshot(req).await.unwrap()).await
    }

    fn openai(
        message: &str,
        error_type: &str,
        param: Option<&str>,
        code: Option<&str>,
    ) -> serde_json::Value {
        serde_json::json!({"error": {"message": message, "type": error_type, "param": param, "code": code}})
    }

    fn assert_error_headers(parts: &http::response::Parts, should_retry: &str) {
        assert_eq!(parts.headers["content-type"], "application/json");
        assert_eq!(parts.headers["x-should-retry"], should_retry);
        assert!(
            parts.headers["x-request-id"]
                .to_str()
                .unwrap()
                .starts_with("req_")
        );
        assert!(parts.extensions.get::<ApiError>().is_some());
    }

    #[tokio::test]
    async fn inner_api_error_renders_as_itself() {
        let error = ApiError::rate_limited()
            .with_message("Rate limit exceeded: 60 requests per minute")
            .with_retry_after(Duration::from_millis(1500));
        let (parts, body) = through(ErrorEnvelopeLayer::new(), request(), Err(error.into())).await;
        assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
        assert_error_headers(&parts, "true");
        assert_eq!(parts.headers["retry-after"], "2");
        assert_eq!(parts.headers["retry-after-ms"], "1500");
        assert_eq!(
            body,
            openai(
                "Rate limit exceeded: 60 requests per minute",
                "rate_limit_error",
                None,
                Some("rate_limit_exceeded")
            )
        );
    }

    /// A `tracing` writer into memory, to see what the layer logs.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (captured, guard)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn other_inner_errors_are_logged_not_sent() {
        let (logs, _guard) = capture_logs();
        let secret = "connection to postgres://admin:hunter2@db failed";
        let error: BoxError = io::Error::other(secret).into();
        let (parts, body) = through(ErrorEnvelopeLayer::new(), request(), Err(error)).await;
        assert_eq!(parts.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_error_headers(&parts, "true");
        assert_eq!(
            body,
            openai(
                ErrorKind::Internal.default_message(),
                "server_error",
                None,
                Some("internal_error")
            )
        );
        assert!(!body.to_string().contains("hunter2"));
        assert!(!format!("{:?}", parts.headers).contains("hunter2"));
        let logs = logs.text();
        assert!(logs.contains("inner service failed"), "{logs}");
        assert!(logs.contains(secret), "{logs}");
    }

    /// An application error wrapping another, as `thiserror`'s `#[source]` does.
    #[derive(Debug)]
    struct Wrapped(BoxError);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("proxy failed")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn known_errors_are_found_along_the_source_chain() {
        let cases: [(BoxError, u16); 3] = [
            (
                Box::new(Wrapped(Box::new(tower::timeout::error::Elapsed::new()))),
                504,
            ),
            (
                Box::new(Wrapped(
                    Box::new(tower::load_shed::error::Overloaded::new()),
                )),
                503,
            ),
            (Box::new(Wrapped(Box::new(ApiError::not_found()))), 404),
        ];
        for (error, status) in cases {
            let (parts, _) = through(ErrorEnvelopeLayer::new(), request(), Err(error)).await;
            assert_eq!(parts.status.as_u16(), status);
        }
        // An unknown chain is logged whole, and answered with a generic 500.
        let (logs, _guard) = capture_logs();
        let error: BoxError = Box::new(Wrapped(io::Error::other("dns lookup failed").into()));
        let (parts, body) = through(ErrorEnvelopeLayer::new(), request(), Err(error)).await;
        assert_eq!(parts.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!body.to_string().contains("dns"));
        assert!(
            logs.text().contains("proxy failed: dns lookup failed"),
            "{}",
            logs.text()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_is_504() {
        let service = ServiceBuilder::new()
            .layer(ErrorEnvelopeLayer::new())
            .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(30)))
            .service(service_fn(|_req: Req| async {
                tokio::time::sleep(Duration::from_secs(600)).await;
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
            }));
        let started = tokio::time::Instant::now();
        let (parts, body) = collect(service.oneshot(request()).await.unwrap()).await;
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!(parts.status, StatusCode::GATEWAY_TIMEOUT);
        assert_error_headers(&parts, "true");
        assert_eq!(
            body,
            openai(
                ErrorKind::Timeout.default_message(),
                "timeout_error",
                None,
                Some("timeout")
            )
        );
    }

    #[tokio::test]
    async fn load_shed_overload_is_503() {
        let (mock, mut handle) = tower_test::mock::pair::<Req, Response<Full<Bytes>>>();
        handle.allow(0);
        let mut service = ServiceBuilder::new()
            .layer(ErrorEnvelopeLayer::new())
            .load_shed()
            .service(mock);
        let response = service
            .ready()
            .await
            .unwrap()
            .call(request())
            .await
            .unwrap();
        let (parts, body) = collect(response).await;
        assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_error_headers(&parts, "true");
        assert_eq!(body["error"]["code"], "service_unavailable");
    }

    /// A service whose readiness fails and which must then not be called.
    #[derive(Clone)]
    struct Broken;

    impl Service<Req> for Broken {
        type Response = Response<Full<Bytes>>;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Self::Response, BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Err(ApiError::unavailable()
                .with_message("store is down")
                .into()))
        }

        fn call(&mut self, _: Req) -> Self::Future {
            panic!("called after poll_ready failed");
        }
    }

    #[tokio::test]
    async fn readiness_failure_is_answered_without_calling_inner() {
        let mut service = ErrorEnvelopeLayer::new().layer_service(Broken);
        let response = service
            .ready()
            .await
            .unwrap()
            .call(request())
            .await
            .unwrap();
        let (parts, body) = collect(response).await;
        assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["message"], "store is down");
    }

    trait LayerService {
        fn layer_service<S>(self, inner: S) -> tollgate::envelope::ErrorEnvelope<S>;
    }

    impl LayerService for ErrorEnvelopeLayer {
        fn layer_service<S>(self, inner: S) -> tollgate::envelope::ErrorEnvelope<S> {
            tower::Layer::layer(&self, inner)
        }
    }

    #[tokio::test]
    async fn plain_text_413_from_tower_http_limit_inside_axum() {
        use axum::routing::post;
        let router = axum::Router::new()
            .route(
                "/v1/chat/completions",
                post(|body: Bytes| async move { body }),
            )
            .layer(tower_http::limit::RequestBodyLimitLayer::new(8));
        let service = ServiceBuilder::new()
            .layer(ErrorEnvelopeLayer::new())
            .service(router);

        // Refused on content-length, and while streaming an unsized body.
        let sized = Request::post("/v1/chat/completions")
            .header("content-length", "32")
            .body(Full::new(Bytes::from(vec![b'a'; 32])))
            .unwrap();
        let (parts, body) = collect(service.clone().oneshot(sized).await.unwrap()).await;
        assert_eq!(parts.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_error_headers(&parts, "false");
        assert_eq!(
            body,
            openai(
                "length limit exceeded",
                "invalid_request_error",
                None,
                Some("payload_too_large")
            )
        );

        let streamed = Request::post("/v1/chat/completions")
            .body(LazyBody::new(vec![Bytes::from(vec![b'a'; 32])]))
            .unwrap();
        let response = ServiceBuilder::new()
            .layer(ErrorEnvelopeLayer::new())
            .service(
                axum::Router::new()
                    .route(
                        "/v1/chat/completions",
                        post(|body: Bytes| async move { body }),
                    )
                    .layer(tower_http::limit::RequestBodyLimitLayer::new(8)),
            )
            .oneshot(streamed)
            .await
            .unwrap();
        let (parts, body) = collect(response).await;
        assert_eq!(parts.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"]["code"], "payload_too_large");

        // A small body passes through untouched.
        let ok = Request::post("/v1/chat/completions")
            .body(Full::new(Bytes::from_static(b"1234")))
            .unwrap();
        let response = service.oneshot(ok).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"1234");
    }

    #[tokio::test]
    async fn empty_401() {
        let (parts, body) = through(
            ErrorEnvelopeLayer::new(),
            request(),
            Ok(respond(401, &[], "")),
        )
        .await;
        assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
        assert_error_headers(&parts, "false");
        assert_eq!(
            body,
            openai(
                ErrorKind::Authentication.default_message(),
                "invalid_request_error",
                None,
                Some("invalid_api_key")
            )
        );
    }

    #[tokio::test]
    async fn upstream_html_502() {
        let html = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body><center><h1>502 Bad Gateway</h1></center><hr><center>cloudflare</center></body>\r\n</html>\r\n";
        let upstream = respond(
            502,
            &[
                ("content-type", "text/html"),
                ("content-length", "150"),
                ("cf-ray", "8a1b"),
            ],
            html,
        );
        let (parts, body) = through(ErrorEnvelopeLayer::new(), request(), Ok(upstream)).await;
        assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
        assert_error_headers(&parts, "true");
        assert_eq!(parts.headers["cf-ray"], "8a1b");
        assert!(!parts.headers.contains_key("content-length"));
        assert_eq!(
            body,
            openai("502 Bad Gateway", "server_error", None, Some("bad_gateway"))
        );
    }

    #[tokio::test]
    async fn another_vendors_json_is_rerendered() {
        let anthropic = respond(
            529,
            &[
                ("content-type", "application/json"),
                ("x-request-id", "req_upstream"),
            ],
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_018EeWyXxfu5pfWkrYcMdjWG"}"#,
        );
        let req = Request::post("/v1/chat/completions")
            .header("x-request-id", "req_client")
            .body(Full::default())
            .unwrap();
        let (parts, body) = through(ErrorEnvelopeLayer::new(), req, Ok(anthropic)).await;
        assert_eq!(parts.status.as_u16(), 529);
        assert_eq!(parts.headers["x-should-retry"], "true");
        // The envelope is the gateway's answer: it carries the client's id.
        assert_eq!(parts.headers["x-request-id"], "req_client");
        assert_eq!(
            body,
            openai("Overloaded", "overloaded_error", None, Some("overloaded"))
        );

        let openai_429 = respond(
            429,
            &[
                ("retry-after-ms", "956"),
                ("x-should-retry", "true"),
                ("x-request-id", "req_upstream"),
            ],
            r#"{"error":{"message":"Rate limit reached for gpt-4o","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#,
        );
        let (parts, body) = through(
            ErrorEnvelopeLayer::new().format(ErrorFormat::Anthropic),
            request(),
            Ok(openai_429),
        )
        .await;
        assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(parts.headers["retry-after"], "1");
        assert_eq!(parts.headers["retry-after-ms"], "956");
        let id = parts.headers["x-request-id"].to_str().unwrap();
        assert!(id.starts_with("req_") && id != "req_upstream");
        assert_eq!(
            body,
            serde_json::json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached for gpt-4o"}, "request_id": id})
        );
    }

    #[tokio::test]
    async fn compressed_upstream_error_loses_its_encoding() {
        let gzip = Response::builder()
            .status(503)
            .header("content-encoding", "gzip")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(&[
                0x1f, 0x8b, 0x08, 0x00, 0x01, 0x02,
            ])))
            .unwrap();
        let (parts, body) = through(ErrorEnvelopeLayer::new(), request(), Ok(gzip)).await;
        assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!parts.headers.contains_key("content-encoding"));
        assert_eq!(parts.headers["content-type"], "application/json");
        assert_eq!(
            body["error"]["message"],
            ErrorKind::Unavailable.default_message()
        );
    }

    /// A body that yields its chunks one poll at a time and counts the polls.
    struct LazyBody {
        chunks: VecDeque<Bytes>,
        polls: Arc<AtomicUsize>,
        fail_at_end: bool,
    }

    impl LazyBody {
        fn new(chunks: Vec<Bytes>) -> Self {
            LazyBody {
                chunks: chunks.into(),
                polls: Arc::default(),
                fail_at_end: false,
            }
        }
    }

    impl http_body::Body for LazyBody {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            let n = self.polls.fetch_add(1, Ordering::SeqCst);
            // Every other poll is pending, as a network body would be.
            if n % 2 == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            match self.chunks.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None if self.fail_at_end => Poll::Ready(Some(Err("connection reset".into()))),
                None => Poll::Ready(None),
            }
        }
    }

    #[tokio::test]
    async fn success_passes_through_unbuffered() {
        let body = LazyBody::new(vec![
            Bytes::from_static(b"data: 1\n\n"),
            Bytes::from_static(b"data: 2\n\n"),
        ]);
        let polls = body.polls.clone();
        let body = Mutex::new(Some(body));
        let service = ServiceBuilder::new()
            .layer(ErrorEnvelopeLayer::new())
            .service(service_fn(move |_req: Req| {
                let body = body.lock().unwrap().take().unwrap();
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(body)
                            .unwrap(),
                    )
                }
            }));
        let response = service.oneshot(request()).await.unwrap();
        assert_eq!(
            polls.load(Ordering::SeqCst),
            0,
            "the layer read the success body"
        );
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert!(!response.headers().contains_key("x-should-retry"));
        assert!(response.extensions().get::<ApiError>().is_none());
        assert!(matches!(response.body(), ResponseBody::Inner { .. }));
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"data: 1\n\ndata: 2\n\n");
    }

    #[tokio::test]
    async fn oversized_error_body_is_read_up_to_the_bound() {
        let chunk = Bytes::from(vec![b'x'; 1024]);
        let body = LazyBody::new(vec![chunk; 1000]);
        let polls = body.polls.clone();
        let body = Mutex::new(Some(body));
        let service =
            ServiceBuilder::new()
                .layer(ErrorEnvelopeLayer::new().max_error_body(4096))
                .service(service_fn(move |_req: Req| {
                    let body = body.lock().unwrap().take().unwrap();
                    async move {
                        Ok::<_, Infallible>(Response::builder().status(500).body(body).unwrap())
                    }
                }));
        let (parts, body) = collect(service.oneshot(request()).await.unwrap()).await;
        assert_eq!(parts.status, StatusCode::INTERNAL_SERVER_ERROR);
        // Four chunks of 1 KiB, each after one pending poll: nothing more.
        assert_eq!(polls.load(Ordering::SeqCst), 8);
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.len() < 4096 && message.starts_with("xxxx"),
            "{}",
            message.len()
        );

        // The default bound is 64 KiB, and a JSON body cut there still
        // yields a valid envelope.
        let mut big = br#"{"error":{"message":""#.to_vec();
        big.extend(std::iter::repeat_n(b'y', 100 * 1024));
        big.extend(br#"","type":"server_error"}}"#);
        let upstream = Response::builder()
            .status(502)
            .body(Full::new(Bytes::from(big)))
            .unwrap();
        let (parts, body) = through(ErrorEnvelopeLayer::new(), request(), Ok(upstream)).await;
        assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
        assert_eq!(body["error"]["code"], "bad_gateway");
        assert!(body["error"]["message"].as_str().unwrap().len() < 64 * 1024);
    }

    #[tokio::test]
    async fn failing_error_body_still_answers() {
        let mut body = LazyBody::new(vec![Bytes::from_static(b"upstream fell")]);
        body.fail_at_end = true;
        let body = Mutex::new(Some(body));
        let service =
            ServiceBuilder::new()
                .layer(ErrorEnvelopeLayer::new())
                .service(service_fn(move |_req: Req| {
                    let body = body.lock().unwrap().take().unwrap();
                    async move {
                        Ok::<_, Infallible>(Response::builder().status(502).body(body).unwrap())
                    }
                }));
        let (parts, body) = collect(service.oneshot(request()).await.unwrap()).await;
        assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
        assert_eq!(body["error"]["message"], "upstream fell");
    }

    /// A service that answers 200 or an error and reports the request id it saw.
    fn echo_id(
        fail: bool,
    ) -> impl Service<Req, Response = Response<Full<Bytes>>, Error = BoxError, Future: Send> + Clone
    {
        service_fn(move |req: Req| async move {
            let seen = req.headers().get("x-request-id").cloned();
            let seen = seen
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            if fail {
                Err(ApiError::not_found().with_message(seen).into())
            } else {
                Ok(Response::new(Full::new(Bytes::from(seen))))
            }
        })
    }

    #[tokio::test]
    async fn request_id_is_propagated_or_generated() {
        for fail in [false, true] {
            let service = ServiceBuilder::new()
                .layer(ErrorEnvelopeLayer::new())
                .service(echo_id(fail));
            // Propagated.
            let req = Request::get("/")
                .header("x-request-id", "abc-123")
                .body(Full::default())
                .unwrap();
            let response = service.clone().oneshot(req).await.unwrap();
            assert_eq!(response.headers()["x-request-id"], "abc-123");
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            assert!(std::str::from_utf8(&bytes).unwrap().contains("abc-123"));

            // Generated, and the inner service saw the same id.
            for bad in [None, Some(""), Some("has space"), Some("\u{e9}t\u{e9}")] {
                let mut req = Request::get("/").body(Full::default()).unwrap();
                if let Some(bad) = bad {
                    req.headers_mut().insert(
                        "x-request-id",
                        HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
                    );
                }
                let response = service.clone().oneshot(req).await.unwrap();
                let id = response.headers()["x-request-id"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                assert!(id.starts_with("req_") && id.len() == 28, "{id}");
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                assert!(std::str::from_utf8(&bytes).unwrap().contains(&id));
            }
        }
        // An id the inner service set on a success response is kept.
        let service = ServiceBuilder::new()
            .layer(ErrorEnvelopeLayer::new())
            .service(service_fn(|_req: Req| async {
                Ok::<_, Infallible>(respond(200, &[("x-request-id", "inner")], "ok"))
            }));
        let response = service.oneshot(request()).await.unwrap();
        assert_eq!(response.headers()["x-request-id"], "inner");
    }

    #[tokio::test]
    async fn generated_ids_differ() {
        let service = ServiceBuilder::new()
            .layer(ErrorEnvelopeLayer::new())
            .service(echo_id(false));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let response = service
                .clone()
                .oneshot(Request::new(Full::default()))
                .await
                .unwrap();
            assert!(seen.insert(response.headers()["x-request-id"].clone()));
        }
    }

    #[tokio::test]
    async fn auto_format_picks_per_request() {
        let cases = [
            ("/v1/chat/completions", None, "openai"),
            ("/v1/messages", None, "anthropic"),
            ("/anthropic/v1/messages/count_tokens", None, "anthropic"),
            ("/v1/threads/thread_abc/messages", None, "openai"),
            ("/v1/complete", Some("2023-06-01"), "anthropic"),
        ];
        for (path, version, expected) in cases {
            let mut req = Request::post(path).body(Full::default()).unwrap();
            if let Some(v) = version {
                req.headers_mut()
                    .insert("anthropic-version", HeaderValue::from_static(v));
            }
            let (parts, body) = through(
                ErrorEnvelopeLayer::new().auto_format(),
                req,
                Err(ApiError::overloaded().into()),
            )
            .await;
            assert_eq!(parts.status.as_u16(), 529);
            let got = if body.get("type") == Some(&"error".into()) {
                "anthropic"
            } else {
                "openai"
            };
            assert_eq!(got, expected, "{path}");
        }
    }

    #[tokio::test]
    async fn format_fn_picks_per_request() {
        let layer = ErrorEnvelopeLayer::new().format_fn(|uri, headers| {
            if headers.contains_key("x-legacy") {
                ErrorFormat::ErrorCodeDetail
            } else if uri.path().starts_with("/humanloop") {
                ErrorFormat::Humanloop
            } else {
                ErrorFormat::OpenAi
            }
        });
        let error = || Err(ApiError::content_filter().with_message("filtered").into());
        let req = Request::post("/x")
            .header("x-legacy", "1")
            .body(Full::default())
            .unwrap();
        let (_, body) = through(layer.clone(), req, error()).await;
        assert_eq!(
            body,
            serde_json::json!({"error_code": "content_filter", "detail": "filtered"})
        );
        let req = Request::post("/humanloop/call")
            .body(Full::default())
            .unwrap();
        let (_, body) = through(layer.clone(), req, error()).await;
        assert_eq!(
            body,
            serde_json::json!({"type": "invalid_request_error", "message": "filtered", "code": 400, "origin": "Gateway"})
        );
        // gRPC requests get gRPC status whatever the function says.
        let req = Request::post("/humanloop/call")
            .header("content-type", "application/grpc+proto")
            .body(Full::default())
            .unwrap();
        let (parts, body) = through(layer, req, error()).await;
        assert_eq!(parts.headers["grpc-status"], "3");
        assert_eq!(body, serde_json::Value::Null);
    }

    #[tokio::test]
    async fn grpc_request_gets_trailers_only_status() {
        let grpc = || {
            Request::post("/tollgate.Chat/Complete")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::default())
                .unwrap()
        };
        let layer = ErrorEnvelopeLayer::new().format(ErrorFormat::Anthropic);
        let error = ApiError::authentication().with_message("Invalid API key: sk-…");
        let (parts, body) = through(layer.clone(), grpc(), Err(error.into())).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers["content-type"], "application/grpc");
        assert_eq!(parts.headers["grpc-status"], "16");
        assert_eq!(
            parts.headers["grpc-message"],
            "Invalid API key: sk-%E2%80%A6"
        );
        assert_eq!(parts.headers["x-should-retry"], "false");
        assert!(parts.headers.contains_key("x-request-id"));
        assert_eq!(body, serde_json::Value::Null);

        // A plain HTTP error from inside becomes a gRPC status too.
        let (parts, _) = through(
            layer,
            grpc(),
            Ok(respond(429, &[("retry-after", "3")], "slow down")),
        )
        .await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers["grpc-status"], "8");
        assert_eq!(parts.headers["grpc-message"], "slow down");
        assert_eq!(parts.headers["retry-after"], "3");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn catch_panic_turns_panics_into_500() {
        let (logs, _guard) = capture_logs();
        // A panic while polling the inner future …
        let service = ServiceBuilder::new()
            .layer(ErrorEnvelopeLayer::new().catch_panic(true))
            .service(service_fn(|_req: Req| async {
                if true {
                    panic!("handler bug: index out of range");
                }
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
            }));
        let (parts, body) = collect(service.oneshot(request()).await.unwrap()).await;
        assert_eq!(parts.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "internal_error");
        assert!(!body.to_string().contains("handler bug"));

        // … and one in `call` itself.
        #[derive(Clone)]
        struct PanicsInCall;
        impl Service<Req> for PanicsInCall {
            type Response = Response<Full<Bytes>>;
            type Error = Infallible;
            type Future = std::future::Ready<Result<Self::Response, Infallible>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: Req) -> Self::Future {
                panic!("bug in call")
            }
        }
        let service = ErrorEnvelopeLayer::new()
            .catch_panic(true)
            .layer_service(PanicsInCall);
        let (parts, _) = collect(service.oneshot(request()).await.unwrap()).await;
        assert_eq!(parts.status, StatusCode::INTERNAL_SERVER_ERROR);
        let logs = logs.text();
        assert!(
            logs.contains("handler bug") && logs.contains("bug in call"),
            "{logs}"
        );
    }

    #[tokio::test]
    async fn without_catch_panic_a_panic_propagates() {
        let service = ServiceBuilder::new()
            .layer(ErrorEnvelopeLayer::new())
            .service(service_fn(|_req: Req| async {
                if true {
                    panic!("not caught");
                }
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
            }));
        let joined = tokio::spawn(service.oneshot(request())).await;
        assert!(joined.unwrap_err().is_panic());
    }

    #[tokio::test]
    async fn inner_rejection_is_rerendered_keeping_its_headers() {
        // An inner tollgate layer rejects through `reject`, adding its own headers.
        let service = ServiceBuilder::new()
            .layer(ErrorEnvelopeLayer::new().format(ErrorFormat::Anthropic))
            .service(service_fn(|_req: Req| async {
                let mut response = tollgate::body::reject::<Full<Bytes>>(
                    ApiError::rate_limited()
                        .with_message("Rate limit exceeded: 10 requests per minute")
                        .with_retry_after(Duration::from_secs(6)),
                );
                response.headers_mut().insert(
                    "x-ratelimit-remaining-requests",
                    HeaderValue::from_static("0"),
                );
                Ok::<_, Infallible>(response)
            }));
        let req = Request::post("/v1/messages")
            .header("x-request-id", "req_42")
            .body(Full::default())
            .unwrap();
        let (parts, body) = collect(service.oneshot(req).await.unwrap()).await;
        assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(parts.headers["x-ratelimit-remaining-requests"], "0");
        assert_eq!(parts.headers["retry-after"], "6");
        assert_eq!(parts.headers["retry-after-ms"], "6000");
        assert_eq!(parts.headers["content-type"], "application/json");
        assert_eq!(parts.headers["x-request-id"], "req_42");
        assert_eq!(parts.headers.get_all("content-type").iter().count(), 1);
        assert_eq!(
            body,
            serde_json::json!({
                "type": "error",
                "error": {"type": "rate_limit_error", "message": "Rate limit exceeded: 10 requests per minute"},
                "request_id": "req_42",
            })
        );
        assert_eq!(
            parts.extensions.get::<ApiError>().unwrap().request_id(),
            Some("req_42")
        );
    }

    #[tokio::test]
    async fn envelopes_nest() {
        // An inner envelope's answer carries its ApiError: the outer one
        // re-renders it without parsing and keeps the id.
        let service = ServiceBuilder::new()
            .layer(ErrorEnvelopeLayer::new().format(ErrorFormat::ErrorCodeDetail))
            .layer(ErrorEnvelopeLayer::new())
            .service(service_fn(|_req: Req| async {
                Err::<Response<Full<Bytes>>, _>(ApiError::conflict().with_message("busy"))
            }));
        let (parts, body) = collect(service.oneshot(request()).await.unwrap()).await;
        assert_eq!(parts.status, StatusCode::CONFLICT);
        assert_eq!(
            body,
            serde_json::json!({"error_code": "conflict", "detail": "busy"})
        );
    }

    #[test]
    fn layer_and_service_are_clone_and_debug() {
        let layer = ErrorEnvelopeLayer::new().format_fn(|_, _| ErrorFormat::OpenAi);
        let service = layer.clone().layer_service(echo_id(false));
        let _ = service.clone();
        assert!(format!("{layer:?}").contains("Custom"));
        fn assert_send_sync<T: Send + Sync>(_: &T) {}
        assert_send_sync(&layer);
    }

    #[cfg(feature = "axum")]
    #[tokio::test]
    async fn api_error_is_an_axum_response() {
        use axum::routing::post;
        async fn handler() -> Result<&'static str, ApiError> {
            Err(ApiError::budget_exceeded().with_message("Budget exceeded: $50.00 limit reached"))
        }
        let router = axum::Router::new().route("/v1/chat/completions", post(handler));
        let (parts, body) = collect(router.clone().oneshot(request()).await.unwrap()).await;
        assert_eq!(parts.status, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(parts.headers["content-type"], "application/json");
        assert_eq!(parts.headers["x-should-retry"], "false");
        assert_eq!(
            body,
            openai(
                "Budget exceeded: $50.00 limit reached",
                "budget_exceeded_error",
                None,
                Some("budget_exceeded")
            )
        );
        // Behind an envelope in `Router::layer`: re-rendered from the extension.
        let router = router.layer(ErrorEnvelopeLayer::new().format(ErrorFormat::Humanloop));
        let (parts, body) = collect(router.oneshot(request()).await.unwrap()).await;
        assert_eq!(parts.status, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(body["type"], "budget_exceeded_error");
        assert_eq!(body["code"], 402);
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn api_error_is_a_tonic_status() {
        for row in &TABLE {
            let error = ApiError::new(row.kind, "why \u{e9}");
            let status = tonic::Status::from(error);
            assert_eq!(
                status.code() as i32,
                i32::from(row.grpc_status),
                "{:?}",
                row.kind
            );
            assert_eq!(status.message(), "why \u{e9}");
        }
    }
}
