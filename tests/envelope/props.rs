//! Round trips and fuzzing, with proptest.

use super::*;

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
        // The delay travels only with an error the client should retry.
        let sent = error.retry_after().filter(|_| error.should_retry());
        prop_assert_eq!(ms(parsed.retry_after()), ms(sent));
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever error response the inner service sends, the client gets a
    /// valid envelope with the same status.
    #[test]
    fn the_layer_always_answers_a_valid_envelope(
        status in 400u16..600,
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            arb_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        ],
        content_type in proptest::option::of(prop_oneof![
            Just("application/json"), Just("text/html"), Just("text/plain"),
        ]),
        format in proptest::sample::select(FORMATS[..5].to_vec()),
    ) {
        use tower::{ServiceExt, service_fn};
        let mut upstream = Response::builder().status(status);
        if let Some(ct) = content_type {
            upstream = upstream.header("content-type", ct);
        }
        let upstream = upstream.body(Full::new(Bytes::from(body))).unwrap();
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
        .expect("ready")
        .unwrap();
        if format == ErrorFormat::ErrorCodeDetail {
            // HAI has seven statuses; an error keeps its class among them.
            let hai = response.status().as_u16();
            prop_assert!([400, 401, 403, 409, 422, 429, 500].contains(&hai), "{}", hai);
            prop_assert_eq!(hai >= 500, status >= 500);
        } else {
            prop_assert_eq!(response.status().as_u16(), status);
        }
        prop_assert_eq!(&response.headers()["content-type"], "application/json");
        prop_assert_eq!(response.headers().get_all("content-type").iter().count(), 1);
        let bytes = futures_util::FutureExt::now_or_never(response.into_body().collect())
            .expect("ready")
            .unwrap()
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let message = value
            .pointer("/error/message")
            .or_else(|| value.pointer("/detail/message"))
            .or_else(|| value.get("detail"));
        prop_assert!(message.is_some_and(serde_json::Value::is_string), "{}", value);
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
