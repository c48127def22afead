//! The usage observer against the documented stream shapes of OpenAI and
//! Anthropic, under every framing, and at every way a body can end.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::stream::{self, StreamExt};
use http::{HeaderMap, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, StreamBody};
use proptest::prelude::*;
use tollgate::usage::{
    self, BodyEnd, Usage, UsageOptions, UsageReport, UsageScanner, UsageSource, UsageTap,
    request_usage,
};

// Fixtures, written after the formats documented by OpenAI ("The chat
// completion chunk object", `stream_options.include_usage`) and Anthropic
// ("Streaming Messages", event flow). Anthropic's examples put a space after
// every colon; OpenAI's do not.

const OPENAI_STREAM: &str = concat!(
    r#"data: {"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"content":" there, \"usage\" é!"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#,
    "\n\n",
    "data: [DONE]\n\n",
);

/// `OPENAI_STREAM` without its usage chunk, and without the `"usage":null`
/// OpenAI adds to every other chunk once usage is asked for: what a client
/// that did not ask for usage receives.
fn openai_without_usage_chunk() -> String {
    OPENAI_STREAM
        .split_inclusive("\n\n")
        .filter(|event| !event.contains(r#""choices":[]"#))
        .collect::<String>()
        .replace(r#","usage":null}"#, "}")
}

const OPENAI_USAGE: Usage = Usage {
    prompt_tokens: 19,
    completion_tokens: 10,
    total_tokens: 29,
    cached_tokens: Some(3),
    reasoning_tokens: Some(0),
};

/// Characters of generated text in `OPENAI_STREAM`: "Hello" and
/// " there, \"usage\" é!" (escapes count as one character).
const OPENAI_CHARS: u64 = 5 + 18;

const ANTHROPIC_STREAM: &str = concat!(
    "event: message_start\n",
    r#"data: {"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 10, "output_tokens": 1}}}"#,
    "\n\n",
    "event: content_block_start\n",
    r#"data: {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}"#,
    "\n\n",
    "event: ping\n",
    r#"data: {"type": "ping"}"#,
    "\n\n",
    "event: content_block_delta\n",
    r#"data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}"#,
    "\n\n",
    "event: content_block_delta\n",
    r#"data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "! How can I help?"}}"#,
    "\n\n",
    "event: content_block_stop\n",
    r#"data: {"type": "content_block_stop", "index": 0}"#,
    "\n\n",
    "event: message_delta\n",
    r#"data: {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 15}}"#,
    "\n\n",
    "event: message_stop\n",
    r#"data: {"type": "message_stop"}"#,
    "\n\n",
);

const ANTHROPIC_USAGE: Usage = Usage {
    prompt_tokens: 35,
    completion_tokens: 15,
    total_tokens: 50,
    cached_tokens: Some(10),
    reasoning_tokens: None,
};

const RESPONSES_STREAM: &str = concat!(
    "event: response.created\n",
    r#"data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","status":"in_progress","output":[],"usage":null}}"#,
    "\n\n",
    "event: response.output_text.delta\n",
    r#"data: {"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hi"}"#,
    "\n\n",
    "event: response.completed\n",
    r#"data: {"type":"response.completed","sequence_number":9,"response":{"id":"resp_1","object":"response","status":"completed","output":[{"type":"message","id":"msg_1","role":"assistant","content":[{"type":"output_text","text":"Hi","annotations":[]}]}],"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":64},"total_tokens":123}}}"#,
    "\n\n",
);

const OPENAI_JSON: &str = r#"{
  "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
  "object": "chat.completion",
  "created": 1741570283,
  "model": "gpt-4o-2024-08-06",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": "The usage of a \"usage\" key in text is harmless.",
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "stop"
    }
  ],
  "usage": {
    "prompt_tokens": 1117,
    "completion_tokens": 46,
    "total_tokens": 1163,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
  },
  "service_tier": "default",
  "system_fingerprint": "fp_fc9f1d7035"
}"#;

const ANTHROPIC_JSON: &str = r#"{"id":"msg_013Zva2CMHLNnXjNJJKqJ2EF","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hi! My name is Claude."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":2095,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":503}}"#;

// Harness.

#[derive(Debug)]
struct Broken;

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream connection reset")
    }
}

impl std::error::Error for Broken {}

type Item = Result<Frame<Bytes>, Broken>;

fn body_of(chunks: Vec<Bytes>) -> StreamBody<impl futures_core::Stream<Item = Item>> {
    StreamBody::new(stream::iter(chunks.into_iter().map(|c| Ok(Frame::data(c)))))
}

fn response<B>(status: StatusCode, content_type: &str, body: B) -> Response<B> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(body)
        .unwrap()
}

/// Cuts `s` at `cuts` (sorted or not, duplicates allowed).
fn split(s: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(s.len())).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut at = 0;
    for cut in cuts.into_iter().chain([s.len()]) {
        chunks.push(Bytes::copy_from_slice(&s[at..cut]));
        at = cut;
    }
    chunks
}

#[derive(Clone, Default)]
struct Reports(Arc<Mutex<Vec<UsageReport>>>);

impl Reports {
    fn callback(&self) -> impl FnOnce(&UsageReport) + Send + 'static {
        let reports = self.0.clone();
        move |report| reports.lock().unwrap().push(*report)
    }

    fn all(&self) -> Vec<UsageReport> {
        self.0.lock().unwrap().clone()
    }

    fn one(&self) -> UsageReport {
        let all = self.all();
        assert_eq!(all.len(), 1, "expected exactly one report: {all:?}");
        all[0]
    }
}

/// Observes a response made of `chunks` and reads it to the end, without a
/// runtime: every frame is ready at once.
fn run(content_type: &str, chunks: Vec<Bytes>, options: UsageOptions) -> (Bytes, UsageReport) {
    let reports = Reports::default();
    let res = response(StatusCode::OK, content_type, body_of(chunks));
    let res = usage::observe(res, options, reports.callback());
    let body = res
        .into_body()
        .collect()
        .now_or_never()
        .expect("the body is ready")
        .expect("the body does not fail")
        .to_bytes();
    (body, reports.one())
}

fn run_sse(chunks: Vec<Bytes>) -> UsageReport {
    run("text/event-stream", chunks, UsageOptions::default()).1
}

fn whole(s: &str) -> Vec<Bytes> {
    vec![Bytes::copy_from_slice(s.as_bytes())]
}

// Reported usage.

#[test]
fn openai_stream_reports_the_usage_chunk() {
    let (body, report) = run(
        "text/event-stream",
        whole(OPENAI_STREAM),
        UsageOptions::default(),
    );
    assert_eq!(
        &body[..],
        OPENAI_STREAM.as_bytes(),
        "the client sees every byte"
    );
    assert_eq!(report.usage, OPENAI_USAGE);
    assert_eq!(report.source, UsageSource::Reported);
    assert_eq!(report.end, BodyEnd::Completed);
    assert_eq!(report.status, StatusCode::OK);
}

#[test]
fn anthropic_stream_joins_message_start_and_message_delta() {
    let report = run_sse(whole(ANTHROPIC_STREAM));
    assert_eq!(report.usage, ANTHROPIC_USAGE);
    assert_eq!(report.source, UsageSource::Reported);
}

#[test]
fn responses_stream_reports_response_completed() {
    let report = run_sse(whole(RESPONSES_STREAM));
    assert_eq!(
        report.usage,
        Usage {
            prompt_tokens: 36,
            completion_tokens: 87,
            total_tokens: 123,
            cached_tokens: Some(0),
            reasoning_tokens: Some(64),
        }
    );
    assert_eq!(report.source, UsageSource::Reported);
}

#[test]
fn json_bodies_report_their_usage() {
    let (body, report) = run(
        "application/json",
        whole(OPENAI_JSON),
        UsageOptions::default(),
    );
    assert_eq!(&body[..], OPENAI_JSON.as_bytes());
    assert_eq!(report.source, UsageSource::Reported);
    assert_eq!(
        (
            report.usage.prompt_tokens,
            report.usage.completion_tokens,
            report.usage.total_tokens
        ),
        (1117, 46, 1163)
    );
    let (_, report) = run(
        "application/json; charset=utf-8",
        whole(ANTHROPIC_JSON),
        UsageOptions::default(),
    );
    assert_eq!(report.source, UsageSource::Reported);
    assert_eq!(
        (
            report.usage.prompt_tokens,
            report.usage.completion_tokens,
            report.usage.total_tokens
        ),
        (2095, 503, 2598)
    );
}

#[test]
fn a_reported_zero_stays_zero() {
    let stream = concat!(
        r#"data: {"choices":[{"index":0,"delta":{"content":"a long answer that would be estimated"}}]}"#,
        "\n\n",
        r#"data: {"choices":[],"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}"#,
        "\n\n",
    );
    let options = UsageOptions::default().prompt_tokens_estimate(100);
    let (_, report) = run("text/event-stream", whole(stream), options.clone());
    assert_eq!(
        (report.usage, report.source),
        (Usage::default(), UsageSource::Reported)
    );

    let json = r#"{"choices":[{"message":{"content":"cached"}}],"usage":{"prompt_tokens":0,"completion_tokens":0}}"#;
    let (_, report) = run("application/json", whole(json), options);
    assert_eq!(
        (report.usage, report.source),
        (Usage::default(), UsageSource::Reported)
    );
}

// Any framing.

#[test]
fn every_split_point_gives_the_same_usage() {
    let crlf = ANTHROPIC_STREAM.replace('\n', "\r\n");
    for (stream, content_type) in [
        (OPENAI_STREAM, "text/event-stream"),
        (ANTHROPIC_STREAM, "text/event-stream"),
        (crlf.as_str(), "text/event-stream"),
        (RESPONSES_STREAM, "text/event-stream"),
        (OPENAI_JSON, "application/json"),
        (ANTHROPIC_JSON, "application/json"),
    ] {
        let (_, expected) = run(content_type, whole(stream), UsageOptions::default());
        assert_eq!(expected.source, UsageSource::Reported);
        for cut in 0..=stream.len() {
            let (body, report) = run(
                content_type,
                split(stream.as_bytes(), &[cut]),
                UsageOptions::default(),
            );
            assert_eq!(report, expected, "split at {cut} of {content_type}");
            assert_eq!(&body[..], stream.as_bytes());
        }
    }
}

#[test]
fn a_usage_object_with_float_members_survives_every_split() {
    // OpenRouter adds a cost (a float) to OpenAI's usage object. A frame
    // that ends right after "0." or "-" inside it must wait for the rest.
    let body = r#"{"id":"gen-1","choices":[{"message":{"content":"Hi"}}],"usage":{"prompt_tokens":194,"cost":0.000123,"cost_details":{"upstream_inference_cost":-1.5e-3},"completion_tokens":2,"total_tokens":196,"is_byok":false}}"#;
    let (_, expected) = run("application/json", whole(body), UsageOptions::default());
    assert_eq!(expected.source, UsageSource::Reported);
    assert_eq!(expected.usage.total_tokens, 196);
    for cut in 0..=body.len() {
        let (_, report) = run(
            "application/json",
            split(body.as_bytes(), &[cut]),
            UsageOptions::default(),
        );
        assert_eq!(report, expected, "split at {cut}: {:?}", &body[..cut]);
    }
}

#[test]
fn byte_by_byte_frames_give_the_same_usage() {
    for stream in [OPENAI_STREAM, ANTHROPIC_STREAM, RESPONSES_STREAM] {
        let cuts: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(
            run_sse(split(stream.as_bytes(), &cuts)),
            run_sse(whole(stream))
        );
    }
    let cuts: Vec<usize> = (1..OPENAI_JSON.len()).collect();
    let (_, report) = run(
        "application/json",
        split(OPENAI_JSON.as_bytes(), &cuts),
        UsageOptions::default(),
    );
    assert_eq!(report.usage.total_tokens, 1163);
}

proptest! {
    #[test]
    fn random_chunking_gives_the_same_usage(
        which in 0usize..3,
        cuts in proptest::collection::vec(0usize..3000, 0..40),
        strip in any::<bool>(),
    ) {
        let stream = [OPENAI_STREAM, ANTHROPIC_STREAM, RESPONSES_STREAM][which];
        let options = UsageOptions::default().strip_usage_chunk(strip).prompt_tokens_estimate(7);
        let (expected_body, expected) = run("text/event-stream", whole(stream), options.clone());
        let (body, report) = run("text/event-stream", split(stream.as_bytes(), &cuts), options);
        prop_assert_eq!(report, expected);
        prop_assert_eq!(body, expected_body);
    }

    #[test]
    fn random_chunking_of_a_cut_stream_gives_the_same_estimate(
        len in 0usize..OPENAI_STREAM.len(),
        cuts in proptest::collection::vec(0usize..1200, 0..20),
    ) {
        let stream = &OPENAI_STREAM.as_bytes()[..len];
        let mut whole = UsageScanner::sse();
        whole.feed(&Bytes::copy_from_slice(stream));
        whole.finish();
        let mut chunked = UsageScanner::sse();
        for chunk in split(stream, &cuts) {
            chunked.feed(&chunk);
        }
        chunked.finish();
        prop_assert_eq!(chunked.content_chars(), whole.content_chars());
        prop_assert_eq!(chunked.reported(), whole.reported());
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        cuts in proptest::collection::vec(0usize..400, 0..8),
    ) {
        for mut scanner in [UsageScanner::sse(), UsageScanner::json()] {
            for chunk in split(&bytes, &cuts) {
                scanner.feed(&chunk);
            }
            scanner.finish();
            let _ = scanner.report(StatusCode::OK, 1, BodyEnd::Completed);
        }
        let _ = request_usage(&bytes, None);
    }
}

#[path = "usage/sse.rs"]
mod sse;

// Estimates, and every way a body ends.

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
