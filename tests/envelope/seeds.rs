//! The API guides' own example bodies (`tests/fixtures/seeds/`, copied from
//! the guides), both ways: each parses to the right error, and tollgate's
//! errors render to it, byte for byte modulo whitespace and field order.

use super::*;

/// One example body: its guide's file, its status and name, and the body
/// as the guide prints it.
struct Example {
    status: u16,
    name: &'static str,
    body: &'static str,
}

/// The bodies of a `.bodies` file (see the fixtures' README).
fn examples(file: &'static str) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    let mut start: Option<(u16, &'static str, usize)> = None;
    let mut offset = 0;
    let mut close = |start: Option<(u16, &'static str, usize)>, end: usize| {
        if let Some((status, name, from)) = start {
            out.push(Example {
                status,
                name,
                body: file[from..end].trim_end(),
            });
        }
    };
    for line in file.split_inclusive('\n') {
        if let Some(head) = line.strip_prefix("=== ") {
            close(start.take(), offset);
            let mut words = head.split_whitespace();
            let status = words.next().unwrap().parse().unwrap();
            let name = words.next().unwrap();
            start = Some((status, name, offset + line.len()));
        } else if start.is_none() {
            assert!(
                line.starts_with('#') || line.trim().is_empty(),
                "text outside a body: {line}"
            );
        }
        offset += line.len();
    }
    close(start, file.len());
    out
}

fn example(file: &'static str, name: &str) -> Example {
    examples(file)
        .into_iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no example {name}"))
}

const HIVEOPS: &str = include_str!("../fixtures/seeds/000-hiveops-errors.bodies");
const VIRTUAL_KEY: &str = include_str!("../fixtures/seeds/001-virtual-key-gateway-errors.bodies");
const ALTLLM: &str = include_str!("../fixtures/seeds/002-altllm-errors.bodies");
const HAI: &str = include_str!("../fixtures/seeds/003-hai-errors.bodies");
const HUMANLOOP: &str = include_str!("../fixtures/seeds/004-humanloop-errors.bodies");
const ANTHROPIC: &str = include_str!("../fixtures/seeds/anthropic-api-errors.bodies");

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap()
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// `rendered` is `expected` modulo whitespace and field order (JSON value
/// equality). The one allowance is OpenAI's: tollgate sends `"param": null`
/// as OpenAI's API does, where the HiveOps and virtual-key guides leave out
/// a `param` that does not apply; every SDK reads the two alike.
fn assert_same(format: ErrorFormat, rendered: &[u8], expected: &str, ctx: &str) {
    let mut rendered = json(rendered);
    let expected = json(expected.as_bytes());
    if format == ErrorFormat::OpenAi
        && expected.pointer("/error/param").is_none()
        && let Some(error) = rendered.get_mut("error").and_then(|e| e.as_object_mut())
    {
        assert_eq!(
            error.remove("param"),
            Some(serde_json::Value::Null),
            "{ctx}"
        );
    }
    assert_eq!(rendered, expected, "{ctx}");
}

/// The example parsed, checked by `check`, rendered again in `format`: the
/// same body and status.
fn round_trip(
    format: ErrorFormat,
    e: &Example,
    wire_body: &str,
    check: impl Fn(&ApiError),
) -> ApiError {
    let ctx = format!("{format:?} {} {}", e.status, e.name);
    let parsed = envelope::parse(status(e.status), &HeaderMap::new(), e.body.as_bytes());
    check(&parsed);
    let (parts, body) = body_of(format.render(&parsed));
    assert_eq!(parts.status.as_u16(), e.status, "{ctx}");
    assert_same(format, &body, wire_body, &ctx);
    parsed
}

/// `error` rendered in `format`: the example's body and status.
fn renders_as(format: ErrorFormat, error: &ApiError, e: &Example) {
    let ctx = format!("{format:?} {} {} from {error:?}", e.status, e.name);
    let (parts, body) = body_of(format.render(error));
    assert_eq!(parts.status.as_u16(), e.status, "{ctx}");
    assert_same(format, &body, e.body, &ctx);
}

fn expect(
    kind: ErrorKind,
    message: &'static str,
    error_type: &'static str,
    code: Option<&'static str>,
    param: Option<&'static str>,
) -> impl Fn(&ApiError) {
    move |e: &ApiError| {
        assert_eq!(e.kind(), kind, "{e:?}");
        assert_eq!(e.message(), message);
        assert_eq!(e.error_type(), error_type);
        assert_eq!(e.code(), code);
        assert_eq!(e.param(), param);
    }
}

#[test]
fn hiveops_examples_both_ways() {
    let cases = [
        (
            "invalid_api_key",
            ErrorKind::Authentication,
            ApiError::authentication().with_message("Invalid API key provided"),
        ),
        (
            "rate_limit_exceeded",
            ErrorKind::RateLimited,
            ApiError::rate_limited().with_message("Rate limit exceeded. Please try again later."),
        ),
        (
            "insufficient_balance",
            ErrorKind::InsufficientBalance,
            // The kind's default message is the guide's.
            ApiError::insufficient_balance(),
        ),
    ];
    for (name, kind, error) in cases {
        let e = example(HIVEOPS, name);
        let parsed = round_trip(ErrorFormat::OpenAi, &e, e.body, |p| {
            assert_eq!(p.kind(), kind, "{name}")
        });
        assert_eq!(parsed.message(), error.message());
        assert_eq!(parsed.code(), error.code());
        renders_as(ErrorFormat::OpenAi, &error, &e);
    }
    // The guide's 403 balance is final: `"insufficient_balance" ... Cannot retry.`
    let e = example(HIVEOPS, "insufficient_balance");
    let parsed = envelope::parse(status(403), &HeaderMap::new(), e.body.as_bytes());
    assert!(!parsed.should_retry());
}

#[test]
fn virtual_key_examples_both_ways() {
    let cases = [
        (
            "invalid_api_key",
            expect(
                ErrorKind::Authentication,
                "Invalid Virtual Key",
                "invalid_request_error",
                Some("invalid_api_key"),
                None,
            ),
            ApiError::authentication().with_message("Invalid Virtual Key"),
        ),
        (
            "rate_limit_exceeded",
            expect(
                ErrorKind::RateLimited,
                "Rate limit exceeded: 100 requests/hour",
                "rate_limit_error",
                Some("rate_limit_exceeded"),
                None,
            ),
            ApiError::rate_limited().with_message("Rate limit exceeded: 100 requests/hour"),
        ),
        (
            "invalid_model",
            expect(
                ErrorKind::InvalidModel,
                "Invalid model name",
                "invalid_request_error",
                Some("invalid_model"),
                Some("model"),
            ),
            ApiError::invalid_model().with_message("Invalid model name"),
        ),
        (
            "budget_exceeded",
            expect(
                ErrorKind::BudgetExceeded,
                "Budget exceeded: $50.00 limit reached",
                "budget_exceeded_error",
                Some("budget_exceeded"),
                None,
            ),
            ApiError::budget_exceeded().with_message("Budget exceeded: $50.00 limit reached"),
        ),
        (
            "internal_error",
            expect(
                ErrorKind::Internal,
                "Internal server error",
                "server_error",
                Some("internal_error"),
                None,
            ),
            ApiError::internal().with_message("Internal server error"),
        ),
        (
            "service_unavailable",
            expect(
                ErrorKind::Unavailable,
                "Service temporarily unavailable",
                "server_error",
                Some("service_unavailable"),
                None,
            ),
            ApiError::unavailable().with_message("Service temporarily unavailable"),
        ),
    ];
    for (name, check, error) in cases {
        let e = example(VIRTUAL_KEY, name);
        round_trip(ErrorFormat::OpenAi, &e, e.body, check);
        renders_as(ErrorFormat::OpenAi, &error, &e);
    }
}

#[test]
fn altllm_type_names_both_ways() {
    let cases = [
        (
            "auth_error",
            ErrorKind::Authentication,
            ApiError::authentication().with_message("Authentication failed"),
        ),
        (
            "invalid_request_error",
            ErrorKind::InvalidRequest,
            ApiError::invalid_request()
                .with_message("Invalid request parameters")
                .with_param("messages"),
        ),
        (
            "rate_limit_error",
            ErrorKind::RateLimited,
            ApiError::rate_limited().with_message("Rate limit exceeded"),
        ),
        (
            "model_error",
            ErrorKind::InvalidModel,
            ApiError::invalid_model()
                .with_status(status(404))
                .with_code("model_not_found")
                .with_message("Model-related issues"),
        ),
        (
            "budget_exceeded",
            ErrorKind::BudgetExceeded,
            ApiError::budget_exceeded()
                .with_status(status(403))
                .with_message("API key budget limit reached"),
        ),
        (
            "budget_exceeded_429",
            ErrorKind::BudgetExceeded,
            ApiError::budget_exceeded()
                .with_status(status(429))
                .with_message("API key budget limit reached"),
        ),
        (
            "api_error",
            ErrorKind::Internal,
            ApiError::internal().with_message("Internal server error"),
        ),
    ];
    for (name, kind, error) in cases {
        let e = example(ALTLLM, name);
        let parsed = round_trip(ErrorFormat::AltLlm, &e, e.body, |p| {
            assert_eq!(p.kind(), kind, "{name}")
        });
        renders_as(ErrorFormat::AltLlm, &error, &e);
        // A budget is final, also as a 429.
        if name.starts_with("budget") {
            assert!(!parsed.should_retry(), "{name}");
        }
    }
}

#[test]
fn hai_table_both_ways() {
    use ErrorKind::*;
    // Each row: the kind it parses to, and a tollgate error that renders as
    // it (with the row's default detail: no message of its own).
    let rows = [
        ("content_filter_error", ContentFilter, None),
        (
            "bad_request",
            InvalidRequest,
            Some(ApiError::invalid_request()),
        ),
        (
            "length_finish_reason_error",
            InvalidRequest,
            Some(ApiError::invalid_request().with_code("length_finish_reason_error")),
        ),
        (
            "unauthorized",
            Authentication,
            Some(ApiError::authentication()),
        ),
        (
            "permission_denied",
            PermissionDenied,
            Some(ApiError::permission_denied()),
        ),
        ("conflict_error", Conflict, Some(ApiError::conflict())),
        (
            "unprocessable_entity",
            Unprocessable,
            Some(ApiError::unprocessable()),
        ),
        (
            "rate_limit_error",
            RateLimited,
            Some(ApiError::rate_limited()),
        ),
        ("api_timeout_error", Timeout, Some(ApiError::timeout())),
        (
            "api_connection_error",
            Connection,
            Some(ApiError::connection()),
        ),
        ("api_error", Internal, Some(ApiError::internal())),
    ];
    assert_eq!(examples(HAI).len(), rows.len() + 1);
    for (name, kind, error) in rows {
        let e = example(HAI, name);
        let parsed = round_trip(ErrorFormat::ErrorCodeDetail, &e, e.body, |p| {
            assert_eq!(p.kind(), kind, "{name}");
            assert_eq!(p.code(), Some(name));
        });
        assert_eq!(parsed.status().as_u16(), e.status);
        if let Some(error) = error {
            renders_as(ErrorFormat::ErrorCodeDetail, &error, &e);
        }
    }
    // The guide's example is what a content filter renders as by default.
    let e = example(HAI, "example");
    round_trip(ErrorFormat::ErrorCodeDetail, &e, e.body, |p| {
        assert_eq!(p.kind(), ContentFilter)
    });
    renders_as(
        ErrorFormat::ErrorCodeDetail,
        &ApiError::content_filter(),
        &e,
    );
    // The other gateway kinds land on the row of the OpenAI exception they
    // stand for: every 5xx is one of HAI's three 500s.
    for (error, row) in [
        (ApiError::bad_gateway(), "api_error"),
        (ApiError::unavailable(), "api_error"),
        (ApiError::overloaded(), "api_error"),
        (ApiError::upstream_auth_failed(), "api_error"),
    ] {
        let (parts, body) = body_of(ErrorFormat::ErrorCodeDetail.render(&error));
        assert_eq!(parts.status.as_u16(), 500, "{error:?}");
        assert_eq!(json(&body)["error_code"], row, "{error:?}");
    }
}

#[test]
fn humanloop_example_both_ways() {
    let e = example(HUMANLOOP, "openai_context_length");
    let wrapped = format!(r#"{{"detail": {}}}"#, e.body);
    let message = "This model's maximum context length is 4097 tokens. However, you requested 10000012 tokens (12 in the messages, 10000000 in the completion). Please reduce the length of the messages or completion.";
    // As printed, and as sent (wrapped in `detail`): the same error.
    for body in [e.body, &wrapped] {
        let parsed = envelope::parse(status(422), &HeaderMap::new(), body.as_bytes());
        assert_eq!(parsed.kind(), ErrorKind::Unprocessable);
        assert_eq!(parsed.message(), message);
        assert_eq!(parsed.origin(), Origin::Upstream);
        assert_eq!(parsed.provider(), Some("OpenAI"));
        let (parts, rendered) = body_of(ErrorFormat::Humanloop.render(&parsed));
        assert_eq!(parts.status.as_u16(), 422);
        assert_same(ErrorFormat::Humanloop, &rendered, &wrapped, "parsed");
    }
    // An upstream's 422 relayed with the provider's name as its origin.
    let error = ApiError::unprocessable()
        .with_message(message)
        .with_provider("OpenAI");
    let (parts, rendered) = body_of(ErrorFormat::Humanloop.render(&error));
    assert_eq!(parts.status.as_u16(), 422);
    assert_same(ErrorFormat::Humanloop, &rendered, &wrapped, "built");
}

#[test]
fn anthropic_examples_both_ways() {
    use ErrorKind::*;
    let cases = [
        ("not_found_error", NotFound, ApiError::not_found()),
        (
            "invalid_request_error",
            InvalidRequest,
            ApiError::invalid_request(),
        ),
        (
            "authentication_error",
            Authentication,
            ApiError::authentication(),
        ),
        ("billing_error", BudgetExceeded, ApiError::budget_exceeded()),
        (
            "permission_error",
            PermissionDenied,
            ApiError::permission_denied(),
        ),
        (
            "request_too_large",
            PayloadTooLarge,
            ApiError::payload_too_large(),
        ),
        ("rate_limit_error", RateLimited, ApiError::rate_limited()),
        ("api_error", Internal, ApiError::internal()),
        ("timeout_error", Timeout, ApiError::timeout()),
        ("overloaded_error", Overloaded, ApiError::overloaded()),
    ];
    assert_eq!(examples(ANTHROPIC).len(), cases.len());
    for (name, kind, error) in cases {
        let e = example(ANTHROPIC, name);
        let body = json(e.body.as_bytes());
        let message = body["error"]["message"].as_str().unwrap().to_owned();
        let id = body["request_id"].as_str().unwrap().to_owned();
        let parsed = round_trip(ErrorFormat::Anthropic, &e, e.body, |p| {
            assert_eq!(p.kind(), kind, "{name}");
            assert_eq!(p.message(), message);
            assert_eq!(p.request_id(), Some(id.as_str()));
        });
        // 529 is kept, and retried; the 4xx are final.
        assert_eq!(parsed.status().as_u16(), e.status);
        assert_eq!(parsed.should_retry(), e.status >= 429 && e.status != 402);
        let error = error.with_message(message).with_request_id(id);
        renders_as(ErrorFormat::Anthropic, &error, &e);
    }
}

#[test]
fn every_example_parses_the_same_through_the_layer() {
    // What `ErrorEnvelopeLayer` does with an upstream's error: parse, then
    // render in the format of the client's API. Each example, relayed in
    // its own format, comes out as it went in.
    use tower::{ServiceExt, service_fn};
    let sets: [(&str, ErrorFormat); 6] = [
        (HIVEOPS, ErrorFormat::OpenAi),
        (VIRTUAL_KEY, ErrorFormat::OpenAi),
        (ALTLLM, ErrorFormat::AltLlm),
        (HAI, ErrorFormat::ErrorCodeDetail),
        (ANTHROPIC, ErrorFormat::Anthropic),
        (HUMANLOOP, ErrorFormat::Humanloop),
    ];
    for (file, format) in sets {
        for e in examples(file) {
            let upstream = Response::builder()
                .status(e.status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(e.body.as_bytes())))
                .unwrap();
            let upstream = std::sync::Mutex::new(Some(upstream));
            let service = tower::ServiceBuilder::new()
                .layer(tollgate::ErrorEnvelopeLayer::new().format(format))
                .service(service_fn(move |_req: http::Request<Full<Bytes>>| {
                    let answer = upstream.lock().unwrap().take().unwrap();
                    std::future::ready(Ok::<_, Infallible>(answer))
                }));
            let response = futures_util::FutureExt::now_or_never(
                service.oneshot(http::Request::new(Full::default())),
            )
            .unwrap()
            .unwrap();
            let ctx = format!("{format:?} {}", e.name);
            assert_eq!(response.status().as_u16(), e.status, "{ctx}");
            let bytes = futures_util::FutureExt::now_or_never(response.into_body().collect())
                .unwrap()
                .unwrap()
                .to_bytes();
            let expected = match format {
                ErrorFormat::Humanloop => format!(r#"{{"detail": {}}}"#, e.body),
                // The envelope names this gateway's request id, not the upstream's.
                ErrorFormat::Anthropic => {
                    let mut v = json(e.body.as_bytes());
                    v["request_id"] = json(&bytes)["request_id"].clone();
                    assert!(v["request_id"].as_str().unwrap().starts_with("req_"));
                    v.to_string()
                }
                _ => e.body.to_owned(),
            };
            assert_same(format, &bytes, &expected, &ctx);
        }
    }
}
