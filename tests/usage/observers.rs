//! Subscribers, stripping the usage chunk the client did not ask for, the
//! request side end to end, and the observer behind a real server.

use super::*;

// Subscribers.

#[test]
fn every_subscriber_is_called_once_late_ones_at_once() {
    let first = Reports::default();
    let res = response(
        StatusCode::OK,
        "text/event-stream",
        body_of(whole(OPENAI_STREAM)),
    );
    let res = usage::observe(res, UsageOptions::default(), first.callback());
    let tap = res.extensions().get::<UsageTap>().unwrap().clone();
    let second = Reports::default();
    tap.subscribe(second.callback());
    assert_eq!(tap.report(), None);

    // An outer layer observing the same response subscribes: no second scan.
    let outer = Reports::default();
    let res = usage::observe(res, UsageOptions::default(), outer.callback());
    drop(res.into_body().collect().now_or_never().unwrap().unwrap());

    let late = Reports::default();
    tap.subscribe(late.callback());
    for reports in [&first, &second, &outer, &late] {
        assert_eq!(reports.one().usage, OPENAI_USAGE);
    }
    assert_eq!(tap.report().map(|r| r.usage), Some(OPENAI_USAGE));
}

#[test]
fn an_outer_observer_subscribes_whatever_the_headers_say() {
    // The inner observer read the content type; the outer one only
    // subscribes, even if a layer in between changed the headers.
    let inner = Reports::default();
    let outer = Reports::default();
    let res = response(
        StatusCode::OK,
        "application/json",
        body_of(whole(OPENAI_JSON)),
    );
    let mut res = usage::observe(res, UsageOptions::default(), inner.callback());
    res.headers_mut().remove("content-type");
    let res = usage::observe(
        res,
        UsageOptions::default().strip_usage_chunk(true),
        outer.callback(),
    );
    drop(res.into_body().collect().now_or_never().unwrap().unwrap());
    assert_eq!(inner.one().usage.total_tokens, 1163);
    assert_eq!(outer.one(), inner.one());
}

// Stripping the usage chunk the client did not ask for.

#[test]
fn strip_usage_chunk_hides_it_and_still_counts_it() {
    let expected = openai_without_usage_chunk();
    let options = UsageOptions::default().strip_usage_chunk(true);
    for cut in 0..=OPENAI_STREAM.len() {
        let (body, report) = run(
            "text/event-stream",
            split(OPENAI_STREAM.as_bytes(), &[cut]),
            options.clone(),
        );
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            expected,
            "split at {cut}"
        );
        assert_eq!(report.usage, OPENAI_USAGE);
        assert_eq!(report.source, UsageSource::Reported);
    }
    let cuts: Vec<usize> = (1..OPENAI_STREAM.len()).collect();
    let (body, report) = run(
        "text/event-stream",
        split(OPENAI_STREAM.as_bytes(), &cuts),
        options,
    );
    assert_eq!(std::str::from_utf8(&body).unwrap(), expected);
    assert_eq!(report.usage, OPENAI_USAGE);
}

#[test]
fn strip_usage_chunk_cuts_the_null_usage_with_crlf_line_breaks_too() {
    let crlf = OPENAI_STREAM.replace('\n', "\r\n");
    let expected = openai_without_usage_chunk().replace('\n', "\r\n");
    assert!(!expected.contains("\"usage\""), "{expected}");
    let options = UsageOptions::default().strip_usage_chunk(true);
    for cut in 0..=crlf.len() {
        let (body, report) = run(
            "text/event-stream",
            split(crlf.as_bytes(), &[cut]),
            options.clone(),
        );
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            expected,
            "split at {cut}"
        );
        assert_eq!(report.usage, OPENAI_USAGE);
    }
    // Without stripping, every byte stays.
    let (body, _) = run("text/event-stream", whole(&crlf), UsageOptions::default());
    assert_eq!(&body[..], crlf.as_bytes());
}

#[test]
fn strip_usage_chunk_keeps_usage_in_content_chunks_and_other_providers() {
    // vLLM's continuous usage stats: usage rides on content chunks, which stay.
    let stream = concat!(
        r#"data: {"choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#,
        "\n\n",
        "data: [DONE]\n\n",
    );
    let options = UsageOptions::default().strip_usage_chunk(true);
    let (body, report) = run("text/event-stream", whole(stream), options.clone());
    assert_eq!(&body[..], stream.as_bytes());
    assert_eq!(report.usage.total_tokens, 6);
    let (body, _) = run("text/event-stream", whole(ANTHROPIC_STREAM), options);
    assert_eq!(&body[..], ANTHROPIC_STREAM.as_bytes());
}

#[test]
fn strip_usage_chunk_drops_content_length() {
    let res = Response::builder()
        .header("content-type", "text/event-stream")
        .header("content-length", OPENAI_STREAM.len())
        .body(Full::new(Bytes::from(OPENAI_STREAM)))
        .unwrap();
    let res = usage::observe(res, UsageOptions::default().strip_usage_chunk(true), |_| {});
    assert!(res.headers().get("content-length").is_none());
    assert_eq!(res.body().size_hint().exact(), None);
}

#[test]
fn an_outer_stripping_observer_scans_again() {
    let inner = Reports::default();
    let outer = Reports::default();
    let res = response(
        StatusCode::OK,
        "text/event-stream",
        body_of(whole(OPENAI_STREAM)),
    );
    let res = usage::observe(res, UsageOptions::default(), inner.callback());
    let res = usage::observe(
        res,
        UsageOptions::default().strip_usage_chunk(true),
        outer.callback(),
    );
    let body = res
        .into_body()
        .collect()
        .now_or_never()
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        openai_without_usage_chunk()
    );
    assert_eq!(inner.one().usage, OPENAI_USAGE);
    assert_eq!(outer.one().usage, OPENAI_USAGE);
}

// The request side, end to end with the observer.

#[test]
fn request_usage_then_strip_gives_the_client_what_it_asked_for() {
    let request =
        br#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hello"}]}"#;
    let meta = tollgate::RequestMeta::from_json(request).unwrap();
    let rewritten =
        request_usage(request, Some(&meta)).expect("a streamed chat request without include_usage");
    let upstream_meta = tollgate::RequestMeta::from_json(&rewritten).unwrap();
    assert!(upstream_meta.include_usage);
    assert_eq!(upstream_meta.model, meta.model);

    let options = UsageOptions::from_meta(&meta).strip_usage_chunk(!meta.include_usage);
    let (body, report) = run("text/event-stream", whole(OPENAI_STREAM), options);
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        openai_without_usage_chunk()
    );
    assert_eq!(report.usage, OPENAI_USAGE);
}

// Through a real server: hyper drops the body when the client goes away.

#[tokio::test]
async fn a_client_disconnecting_from_a_server_reports_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let reports = Reports::default();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let rx = Arc::new(Mutex::new(Some(rx)));
    let sink = reports.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let rx = rx.lock().unwrap().take();
            let sink = sink.clone();
            async move {
                let first = OPENAI_STREAM.split_inclusive("\n\n").take(2).map(|e| {
                    Ok::<_, Infallible>(Frame::data(Bytes::copy_from_slice(e.as_bytes())))
                });
                // Two events, then the upstream is slow until the test ends.
                let rest = stream::once(async move {
                    if let Some(rx) = rx {
                        let _ = rx.await;
                    }
                    Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n")))
                });
                let body = StreamBody::new(stream::iter(first).chain(rest));
                let res = response(StatusCode::OK, "text/event-stream", body);
                usage::observe(res, UsageOptions::default(), sink.callback())
                    .map(axum::body::Body::new)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let wait = async {
        while !String::from_utf8_lossy(&seen).contains(r#""content":"Hello""#) {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed early");
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), wait)
        .await
        .unwrap();
    drop(conn);

    let settled = async {
        while reports.all().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), settled)
        .await
        .unwrap();
    let report = reports.one();
    assert_eq!(report.end, BodyEnd::Dropped);
    assert_eq!(report.usage.completion_tokens, 2);
    drop(tx);
    server.abort();
}

#[test]
fn a_large_json_body_is_not_kept() {
    // An embeddings answer of several MiB: usage at the end, after the
    // vectors, found without keeping the body.
    let vector = format!("[{}]", vec!["0.0123456789"; 1536].join(","));
    let data: Vec<String> = (0..300)
        .map(|i| format!(r#"{{"object":"embedding","index":{i},"embedding":{vector}}}"#))
        .collect();
    let body = format!(
        r#"{{"object":"list","data":[{}],"model":"text-embedding-3-small","usage":{{"prompt_tokens":8,"total_tokens":8}}}}"#,
        data.join(",")
    );
    assert!(body.len() > 4 * 1024 * 1024);
    let cuts: Vec<usize> = (1..body.len() / 16384).map(|i| i * 16384).collect();
    let (_, report) = run(
        "application/json",
        split(body.as_bytes(), &cuts),
        UsageOptions::default(),
    );
    assert_eq!(report.source, UsageSource::Reported);
    assert_eq!(
        (report.usage.prompt_tokens, report.usage.total_tokens),
        (8, 8)
    );

    // The same without usage: too large to keep, estimated from the prompt.
    let body = body.replace(r#","usage":{"prompt_tokens":8,"total_tokens":8}"#, "");
    let options = UsageOptions::default().prompt_tokens_estimate(8);
    let (_, report) = run("application/json", split(body.as_bytes(), &cuts), options);
    assert_eq!(report.source, UsageSource::Estimated);
    assert_eq!(
        (report.usage.prompt_tokens, report.usage.completion_tokens),
        (8, 0)
    );
}

#[test]
fn bodies_and_taps_are_send_sync_unpin() {
    fn check<T: Send + Sync + Unpin + 'static>() {}
    check::<usage::UsageBody<Full<Bytes>>>();
    check::<UsageTap>();
    check::<UsageScanner>();
    check::<UsageReport>();
}

#[test]
fn strip_usage_chunk_at_the_very_end_without_a_blank_line() {
    let content = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n";
    let stream = format!(
        "{content}data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}}}"
    );
    let options = UsageOptions::default().strip_usage_chunk(true);
    for cut in 0..=stream.len() {
        let (body, report) = run(
            "text/event-stream",
            split(stream.as_bytes(), &[cut]),
            options.clone(),
        );
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            content,
            "split at {cut}"
        );
        assert_eq!(report.usage.total_tokens, 4);
    }
}

#[test]
fn into_inner_ends_the_observation() {
    let reports = Reports::default();
    let res = response(
        StatusCode::OK,
        "text/event-stream",
        Full::new(Bytes::from(OPENAI_STREAM)),
    );
    let inner = usage::observe(res, UsageOptions::default(), reports.callback())
        .into_body()
        .into_inner();
    assert_eq!(reports.one().end, BodyEnd::Dropped);
    assert_eq!(inner.size_hint().exact(), Some(OPENAI_STREAM.len() as u64));
}
