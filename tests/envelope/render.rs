//! Every row of the `ErrorKind` table in every format, exactly.

use super::*;

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
        ErrorFormat::AltLlm => {
            let param = row
                .param
                .map(|p| format!(r#","param":{}"#, json_str(p)))
                .unwrap_or_default();
            format!(
                r#"{{"error":{{"message":{},"type":"{}"{param},"code":"{}"}}}}"#,
                json_str(message),
                row.altllm_type,
                row.code
            )
        }
        ErrorFormat::Anthropic => format!(
            r#"{{"type":"error","error":{{"type":"{}","message":{}}},"request_id":{}}}"#,
            row.anthropic_type,
            json_str(message),
            json_opt(request_id)
        ),
        // No message of its own: HAI's default detail for the row.
        ErrorFormat::ErrorCodeDetail => format!(
            r#"{{"error_code":"{}","detail":{}}}"#,
            row.hai.1,
            json_str(hai_detail(row.hai.1))
        ),
        ErrorFormat::Humanloop => format!(
            r#"{{"detail":{{"type":"{}","message":{},"code":{},"origin":"Gateway"}}}}"#,
            humanloop_type(row.status),
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
        let status = match format {
            ErrorFormat::ErrorCodeDetail => row.hai.0,
            _ => row.status,
        };
        assert_eq!(parts.status.as_u16(), status, "{ctx}");
        assert_eq!(header(h, "content-type"), Some("application/json"), "{ctx}");
        assert!(!h.contains_key("grpc-status"), "{ctx}");
        assert!(!h.contains_key("grpc-message"), "{ctx}");
    }
    let should_retry = if row.should_retry { "true" } else { "false" };
    assert_eq!(header(h, "x-should-retry"), Some(should_retry), "{ctx}");
    assert_eq!(header(h, "x-request-id"), request_id, "{ctx}");
    // A delay is sent only to a client that should wait and retry.
    let delay_sent = retry_after.is_some() && row.should_retry;
    if delay_sent {
        assert_eq!(header(h, "retry-after"), Some("3"), "{ctx}");
        assert_eq!(header(h, "retry-after-ms"), Some("2500"), "{ctx}");
    } else {
        assert!(!h.contains_key("retry-after"), "{ctx}");
        assert!(!h.contains_key("retry-after-ms"), "{ctx}");
    }
    // The error travels with the response for an outer envelope.
    assert_eq!(parts.extensions.get::<ApiError>(), Some(error), "{ctx}");
    let expected_headers = 2 // content-type, x-should-retry
        + usize::from(request_id.is_some())
        + 2 * usize::from(delay_sent)
        + 2 * usize::from(format == ErrorFormat::Grpc);
    assert_eq!(h.len(), expected_headers, "{ctx}: {h:?}");
}

#[test]
fn into_response_is_the_openai_rendering() {
    let error = ApiError::budget_exceeded()
        .with_message("Budget exceeded: $50.00 limit reached")
        .with_request_id("req_1");
    let (a, a_body) = body_of(error.to_http_response());
    let (b, b_body) = body_of(error.clone().into_http_response());
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
    // Humanloop names the status, not the type: a 599 is a server error.
    let (_, body) = body_of(ErrorFormat::Humanloop.render(&error));
    assert_eq!(
        &body[..],
        br#"{"detail":{"type":"internal_server_error","message":"The service is temporarily unavailable. Please retry.","code":599,"origin":"OpenAI"}}"#
    );
    let upstream = ApiError::internal().with_origin(Origin::Upstream);
    let (_, body) = body_of(ErrorFormat::Humanloop.render(&upstream));
    assert!(body.ends_with(br#""origin":"Upstream"}}"#));
    // HAI keeps an explicit message as its detail, even the default text.
    let explicit = ApiError::timeout().with_message(ErrorKind::Timeout.default_message());
    let (parts, body) = body_of(ErrorFormat::ErrorCodeDetail.render(&explicit));
    assert_eq!(parts.status.as_u16(), 500);
    assert_eq!(
        &body[..],
        br#"{"error_code":"api_timeout_error","detail":"The request timed out."}"#
    );
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
            .or_else(|| value.pointer("/detail/message"))
            .or_else(|| value.pointer("/detail"))
            .and_then(|m| m.as_str());
        assert_eq!(message, Some(error.message()), "{format:?}");
    }
}
