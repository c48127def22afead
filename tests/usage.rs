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

#[path = "usage/ends.rs"]
mod ends;
#[path = "usage/observers.rs"]
mod observers;
