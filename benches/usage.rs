//! Usage observer: scanner throughput over a 10 MiB SSE stream, and the
//! per-frame cost of `UsageBody` over a bare body.
//!
//! `cargo bench --bench usage -- --warm-up-time 1 --measurement-time 3`
//!
//! For instruction counts, which a busy machine does not blur, one case runs
//! in `profile_loop` (cases: `openai_frame_per_event`,
//! `anthropic_frame_per_event`, `openai_16KiB_frames`, `anthropic_16KiB_frames`
//! (each one 10 MiB scan), `sse_observed` (1,000 frames through `observe`,
//! 100 times), `json_observed` (one JSON answer through `observe`, 10,000
//! times)):
//!
//! ```text
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*profile_loop*' \
//!     target/release/deps/usage-<hash> --profile-usage json_observed
//! ```

use std::collections::VecDeque;
use std::convert::Infallible;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use http::Response;
use http_body::{Body, Frame};
use tollgate::usage::{self, UsageOptions, UsageScanner};

const TEN_MIB: usize = 10 * 1024 * 1024;

/// A typical OpenAI chunk of a stream with `include_usage` on.
fn openai_event(i: usize) -> String {
    let words = [
        "Hello",
        " world",
        ",",
        " this",
        " is",
        " a",
        " streamed",
        " answer",
        ".",
    ];
    format!(
        "data: {{\"id\":\"chatcmpl-AbC123xyz\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n",
        words[i % words.len()]
    )
}

/// A typical Anthropic content_block_delta event.
fn anthropic_event(i: usize) -> String {
    let words = [
        "Hello",
        " world",
        ",",
        " this",
        " is",
        " a",
        " streamed",
        " answer",
        ".",
    ];
    format!(
        "event: content_block_delta\ndata: {{\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {{\"type\": \"text_delta\", \"text\": \"{}\"}}}}\n\n",
        words[i % words.len()]
    )
}

/// About 10 MiB of events, one per frame, ending with a usage chunk.
fn stream(event: fn(usize) -> String, end: &str) -> Vec<Bytes> {
    let mut frames = Vec::new();
    let mut len = 0;
    while len < TEN_MIB {
        let e = event(frames.len());
        len += e.len();
        frames.push(Bytes::from(e));
    }
    frames.push(Bytes::from(end.to_owned()));
    frames
}

/// The same bytes in 16 KiB frames (events split anywhere).
fn rechunk(frames: &[Bytes], size: usize) -> Vec<Bytes> {
    let all: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
    all.chunks(size).map(Bytes::copy_from_slice).collect()
}

fn scan(frames: &[Bytes]) -> u64 {
    let mut scanner = UsageScanner::sse();
    for frame in frames {
        scanner.feed(frame);
    }
    scanner.finish();
    scanner.reported().map_or(0, |u| u.total_tokens) + scanner.content_chars()
}

/// The four 10 MiB streams of the scanner bench.
fn streams() -> [(&'static str, Vec<Bytes>); 4] {
    let openai = stream(
        openai_event,
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":100,\"total_tokens\":109}}\n\ndata: [DONE]\n\n",
    );
    let anthropic = stream(
        anthropic_event,
        "event: message_delta\ndata: {\"type\": \"message_delta\", \"delta\": {\"stop_reason\": \"end_turn\"}, \"usage\": {\"output_tokens\": 100}}\n\n",
    );
    [
        ("openai_frame_per_event", openai.clone()),
        ("openai_16KiB_frames", rechunk(&openai, 16 * 1024)),
        ("anthropic_frame_per_event", anthropic.clone()),
        ("anthropic_16KiB_frames", rechunk(&anthropic, 16 * 1024)),
    ]
}

fn scanner(c: &mut Criterion) {
    let mut group = c.benchmark_group("usage_scan_10MiB");
    for (name, frames) in streams() {
        let bytes: usize = frames.iter().map(Bytes::len).sum();
        assert!(scan(&frames) > 0);
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(name, |b| b.iter(|| black_box(scan(black_box(&frames)))));
    }
    group.finish();
}

/// A body of ready frames: what a bare upstream body costs to poll.
struct Frames(VecDeque<Bytes>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

fn drain<B: Body<Data = Bytes> + Unpin>(mut body: B) -> usize {
    let mut cx = Context::from_waker(Waker::noop());
    let mut n = 0;
    while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
        n += frame.data_ref().map_or(0, Bytes::len);
    }
    n
}

fn sse_response(frames: &[Bytes]) -> Response<Frames> {
    typed_response("text/event-stream", frames)
}

fn typed_response(content_type: &str, frames: &[Bytes]) -> Response<Frames> {
    Response::builder()
        .header("content-type", content_type)
        .body(Frames(frames.iter().cloned().collect()))
        .unwrap()
}

/// 1,000 chunks of an OpenAI stream and its usage chunk, one per frame.
fn frames_1000() -> Vec<Bytes> {
    let mut frames: Vec<Bytes> = (0..1000).map(|i| Bytes::from(openai_event(i))).collect();
    frames.push(Bytes::from_static(
        b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":100,\"total_tokens\":109}}\n\n",
    ));
    frames
}

/// A non-streamed chat answer with usage, in one frame.
const JSON_ANSWER: &[u8] = br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#;

fn json_response() -> Response<Frames> {
    typed_response("application/json", &[Bytes::from_static(JSON_ANSWER)])
}

fn observed(res: Response<Frames>) -> usize {
    drain(
        usage::observe(res, UsageOptions::default(), |r| {
            black_box(r);
        })
        .into_body(),
    )
}

fn per_frame(c: &mut Criterion) {
    let frames = frames_1000();
    let mut group = c.benchmark_group("usage_body_1000_frames");
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.bench_function("bare", |b| {
        b.iter_batched(
            || sse_response(&frames),
            |res| drain(res.into_body()),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("observed", |b| {
        b.iter_batched(
            || sse_response(&frames),
            |res| {
                drain(
                    usage::observe(res, UsageOptions::default(), |r| {
                        black_box(r);
                    })
                    .into_body(),
                )
            },
            BatchSize::SmallInput,
        )
    });
    // The wrapper alone: a content type that is not scanned.
    group.bench_function("observed_unscanned", |b| {
        b.iter_batched(
            || typed_response("application/octet-stream", &frames),
            |res| {
                drain(
                    usage::observe(res, UsageOptions::default(), |r| {
                        black_box(r);
                    })
                    .into_body(),
                )
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("observed_strip", |b| {
        b.iter_batched(
            || sse_response(&frames),
            |res| {
                let options = UsageOptions::default().strip_usage_chunk(true);
                drain(
                    usage::observe(res, options, |r| {
                        black_box(r);
                    })
                    .into_body(),
                )
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    // The fixed cost per response: observe (tap, extensions) + report.
    let mut group = c.benchmark_group("usage_per_response_json");
    group.bench_function("bare", |b| {
        b.iter_batched(
            json_response,
            |res| drain(res.into_body()),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("observed", |b| {
        b.iter_batched(
            json_response,
            |res| {
                drain(
                    usage::observe(res, UsageOptions::default(), |r| {
                        black_box(r);
                    })
                    .into_body(),
                )
            },
            BatchSize::SmallInput,
        )
    });
    // Two layers (rate limit over budget): the outer one subscribes to the
    // inner one's tap.
    group.bench_function("observed_twice", |b| {
        b.iter_batched(
            json_response,
            |res| {
                let inner = usage::observe(res, UsageOptions::default(), |r| {
                    black_box(r);
                });
                drain(
                    usage::observe(inner, UsageOptions::default(), |r| {
                        black_box(r);
                    })
                    .into_body(),
                )
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// `--profile-usage <case>`: runs one case in `profile_loop`, for callgrind
/// (see the module docs); its input is built before.
#[inline(never)]
fn profile_loop(case: &str, frames: &[Bytes]) {
    match case {
        "sse_observed" => {
            for _ in 0..100 {
                black_box(observed(sse_response(frames)));
            }
        }
        "json_observed" => {
            for _ in 0..10_000 {
                black_box(observed(json_response()));
            }
        }
        _ => {
            black_box(scan(frames));
        }
    }
}

fn profile(case: &str) {
    let frames = match case {
        "sse_observed" => frames_1000(),
        "json_observed" => Vec::new(),
        _ => {
            streams()
                .into_iter()
                .find(|(name, _)| *name == case)
                .expect("a known case")
                .1
        }
    };
    profile_loop(case, &frames);
}

criterion_group!(benches, scanner, per_frame);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--profile-usage") {
        profile(args.get(at + 1).map_or("json_observed", String::as_str));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
