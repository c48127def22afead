//! Estimates, and every way a body ends: completed, cut, failed, dropped,
//! an error status, empty, with trailers.

use super::*;

#[test]
fn a_stream_without_usage_is_estimated() {
    let stream = openai_without_usage_chunk();
    let options = UsageOptions::default().prompt_tokens_estimate(12);
    let (_, report) = run("text/event-stream", whole(&stream), options);
    assert_eq!(report.source, UsageSource::Estimated);
    assert_eq!(report.end, BodyEnd::Completed);
    let completion = OPENAI_CHARS.div_ceil(4);
    assert_eq!(
        report.usage,
        Usage {
            prompt_tokens: 12,
            completion_tokens: completion,
            total_tokens: 12 + completion,
            cached_tokens: None,
            reasoning_tokens: None,
        }
    );
}

#[test]
fn a_json_body_without_usage_is_estimated_from_its_content() {
    let json = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"12345678 "}}]}"#;
    let options = UsageOptions::default().prompt_tokens_estimate(4);
    let (_, report) = run(
        "application/json",
        split(json.as_bytes(), &[20, 50]),
        options,
    );
    assert_eq!(report.source, UsageSource::Estimated);
    assert_eq!(
        (report.usage.prompt_tokens, report.usage.completion_tokens),
        (4, 3)
    );
}

#[test]
fn other_content_types_are_not_scanned() {
    let options = UsageOptions::default().prompt_tokens_estimate(4);
    let (_, report) = run("text/plain", whole(OPENAI_STREAM), options);
    assert_eq!(report.source, UsageSource::Estimated);
    assert_eq!(
        (report.usage.prompt_tokens, report.usage.completion_tokens),
        (4, 0)
    );
}

#[tokio::test]
async fn a_stream_cut_in_the_middle_fails_with_an_estimate() {
    // The upstream dies after the second content chunk.
    let events: Vec<&str> = OPENAI_STREAM.split_inclusive("\n\n").collect();
    let frames: Vec<Item> = vec![
        Ok(Frame::data(Bytes::from(events[0]))),
        Ok(Frame::data(Bytes::from(events[1]))),
        Ok(Frame::data(Bytes::from(events[2]))),
        Err(Broken),
    ];
    let reports = Reports::default();
    let res = response(
        StatusCode::OK,
        "text/event-stream",
        StreamBody::new(stream::iter(frames)),
    );
    let options = UsageOptions::default().prompt_tokens_estimate(19);
    let res = usage::observe(res, options, reports.callback());
    let err = res.into_body().collect().await.unwrap_err();
    assert_eq!(err.to_string(), "upstream connection reset");
    let report = reports.one();
    assert_eq!(report.end, BodyEnd::Failed);
    assert_eq!(report.source, UsageSource::Estimated);
    assert_eq!(report.usage.prompt_tokens, 19);
    assert_eq!(report.usage.completion_tokens, OPENAI_CHARS.div_ceil(4));
}

#[tokio::test]
async fn an_anthropic_stream_cut_after_message_start_keeps_the_reported_prompt() {
    let cut = ANTHROPIC_STREAM.find("event: content_block_stop").unwrap();
    let frames: Vec<Item> = vec![
        Ok(Frame::data(Bytes::from(&ANTHROPIC_STREAM[..cut]))),
        Err(Broken),
    ];
    let reports = Reports::default();
    let res = response(
        StatusCode::OK,
        "text/event-stream",
        StreamBody::new(stream::iter(frames)),
    );
    let res = usage::observe(
        res,
        UsageOptions::default().prompt_tokens_estimate(999),
        reports.callback(),
    );
    assert!(res.into_body().collect().await.is_err());
    let report = reports.one();
    assert_eq!(
        (report.end, report.source),
        (BodyEnd::Failed, UsageSource::Estimated)
    );
    // "Hello" + "! How can I help?" = 22 characters → 6 tokens, more than
    // message_start's output_tokens of 1.
    assert_eq!(report.usage.prompt_tokens, 35);
    assert_eq!(report.usage.completion_tokens, 6);
    assert_eq!(report.usage.cached_tokens, Some(10));
}

#[tokio::test]
async fn a_client_dropping_the_body_after_two_events_reports_once() {
    let events: Vec<Item> = OPENAI_STREAM
        .split_inclusive("\n\n")
        .map(|e| Ok(Frame::data(Bytes::copy_from_slice(e.as_bytes()))))
        .collect();
    // The upstream would go on; the client reads two events and leaves.
    let upstream = stream::iter(events).chain(stream::pending());
    let calls = Arc::new(AtomicUsize::new(0));
    let reports = Reports::default();
    let res = response(
        StatusCode::OK,
        "text/event-stream",
        StreamBody::new(upstream),
    );
    let counter = calls.clone();
    let sink = reports.callback();
    let res = usage::observe(
        res,
        UsageOptions::default().prompt_tokens_estimate(3),
        move |r| {
            counter.fetch_add(1, Ordering::SeqCst);
            sink(r);
        },
    );
    let mut body = res.into_body();
    for _ in 0..2 {
        body.frame().await.unwrap().unwrap();
    }
    assert!(reports.all().is_empty(), "no report before the end");
    drop(body);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let report = reports.one();
    assert_eq!(report.end, BodyEnd::Dropped);
    assert_eq!(report.source, UsageSource::Estimated);
    // Two events: the role chunk ("") and "Hello".
    assert_eq!(
        (report.usage.prompt_tokens, report.usage.completion_tokens),
        (3, 2)
    );
}

#[test]
fn a_body_dropped_before_its_first_poll_reports_dropped() {
    let reports = Reports::default();
    let res = response(
        StatusCode::OK,
        "text/event-stream",
        body_of(whole(OPENAI_STREAM)),
    );
    drop(usage::observe(
        res,
        UsageOptions::default(),
        reports.callback(),
    ));
    assert_eq!(reports.one().end, BodyEnd::Dropped);
}

#[test]
fn an_error_response_reports_zero() {
    let error = r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    let reports = Reports::default();
    let res = response(
        StatusCode::TOO_MANY_REQUESTS,
        "application/json",
        Full::new(Bytes::from(error)),
    );
    let res = usage::observe(
        res,
        UsageOptions::default().prompt_tokens_estimate(50),
        reports.callback(),
    );
    let body = res
        .into_body()
        .collect()
        .now_or_never()
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], error.as_bytes());
    let report = reports.one();
    assert_eq!(report.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        (report.usage, report.source),
        (Usage::default(), UsageSource::Estimated)
    );
    assert_eq!(report.end, BodyEnd::Completed);
}

#[test]
fn a_tollgate_rejection_reports_zero() {
    let reports = Reports::default();
    let res = tollgate::body::reject::<Full<Bytes>>(tollgate::ApiError::rate_limited());
    let res = usage::observe(res, UsageOptions::default(), reports.callback());
    drop(res.into_body().collect().now_or_never().unwrap().unwrap());
    let report = reports.one();
    assert_eq!(report.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(report.usage, Usage::default());
}

#[test]
fn an_empty_body_is_reported_at_once() {
    let reports = Reports::default();
    let res = response(
        StatusCode::NO_CONTENT,
        "application/json",
        Full::new(Bytes::new()),
    );
    let res = usage::observe(res, UsageOptions::default(), reports.callback());
    assert!(res.body().is_end_stream());
    assert_eq!(reports.one().end, BodyEnd::Completed);
    drop(res);
    assert_eq!(reports.all().len(), 1);
}

#[test]
fn the_last_frame_completes_the_body_without_another_poll() {
    // A server stops polling once `is_end_stream` is true.
    let reports = Reports::default();
    let res = response(
        StatusCode::OK,
        "text/event-stream",
        Full::new(Bytes::from(OPENAI_STREAM)),
    );
    let mut body = usage::observe(res, UsageOptions::default(), reports.callback()).into_body();
    assert!(!body.is_end_stream());
    body.frame().now_or_never().unwrap().unwrap().unwrap();
    assert!(body.is_end_stream());
    drop(body);
    assert_eq!(reports.one().end, BodyEnd::Completed);
}

#[test]
fn trailers_pass_through() {
    let frames: Vec<Item> = vec![
        Ok(Frame::data(Bytes::from(OPENAI_STREAM))),
        Ok(Frame::trailers(HeaderMap::new())),
    ];
    let reports = Reports::default();
    let res = response(
        StatusCode::OK,
        "text/event-stream",
        StreamBody::new(stream::iter(frames)),
    );
    let res = usage::observe(
        res,
        UsageOptions::default().strip_usage_chunk(true),
        reports.callback(),
    );
    let collected = res.into_body().collect().now_or_never().unwrap().unwrap();
    assert!(collected.trailers().is_some());
    assert_eq!(
        &collected.to_bytes()[..],
        openai_without_usage_chunk().as_bytes()
    );
    assert_eq!(reports.one().source, UsageSource::Reported);
}
