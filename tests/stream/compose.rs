//! With the layers a stream meets: a usage observer outside, a retry layer
//! on either side.

use http::StatusCode;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;

/// The usage observer sees the partial stream and our error event, which it
/// ignores: the content streamed before the failure is estimated.
#[tokio::test]
async fn usage_observer_outside_counts_the_partial_stream() {
    use std::sync::{Arc, Mutex};
    use tollgate::usage::{self, UsageOptions, UsageReport, UsageSource};

    let reports = Arc::new(Mutex::new(Vec::<UsageReport>::new()));
    let sink = reports.clone();
    let mut service = ServiceBuilder::new()
        .map_response(move |response| {
            let sink = sink.clone();
            let options = UsageOptions {
                prompt_tokens_estimate: 5,
                ..UsageOptions::default()
            };
            usage::observe(response, options, move |report| {
                sink.lock().unwrap().push(*report)
            })
        })
        .layer(StreamErrorTrailerLayer::new())
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(sse(
                &[
                    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}]}\n\n",
                    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"}}]}\n\n",
                ],
                Then::Fail,
            ))
        }));
    let response = bounded(service.ready().await.unwrap().call(chat_request()))
        .await
        .unwrap();
    let body = bounded(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert!(
        body.ends_with(
            error_event(
                "bad_gateway",
                "The upstream stream failed before it completed.",
                "server_error"
            )
            .as_bytes()
        )
    );
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1);
    let report = reports[0];
    assert_eq!(report.source, UsageSource::Estimated);
    // The layer read for the observer: it reports the upstream's failure,
    // as the observer reading the body itself would.
    assert_eq!(report.end, tollgate::usage::BodyEnd::Failed);
    assert_eq!(report.status, StatusCode::OK);
    assert_eq!(report.usage.prompt_tokens, 5);
    // "Hello world": 11 characters, a quarter of them rounded up.
    assert_eq!(report.usage.completion_tokens, 3);
}

// ---- one framing pass on the server: the layer reads for the observer ----

/// An opening chunk (a role, empty content) as OpenAI sends it once usage
/// is asked for.
const ROLE_CHUNK_NULL_USAGE: &str = "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n";

const USAGE_CHUNK: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n";

/// `stream` in two frames, cut at every place in turn (with the place).
fn halves(stream: &str) -> impl Iterator<Item = (usize, Vec<&'static str>)> + '_ {
    (0..=stream.len()).map(|split| {
        let (a, b) = stream.split_at(split);
        (split, vec![&*a.to_owned().leak(), &*b.to_owned().leak()])
    })
}

/// The stream layer inside a usage observer (as in a gateway: rate limit and
/// budget outside it), with `frames` from the upstream.
async fn observed(
    frames: Vec<&'static str>,
    options: tollgate::usage::UsageOptions,
) -> (String, String, tollgate::usage::UsageReport) {
    use std::sync::{Arc, Mutex};
    use tollgate::usage;

    let reports = Arc::new(Mutex::new(Vec::new()));
    let sink = reports.clone();
    let service = ServiceBuilder::new()
        .map_response(move |response| {
            let sink = sink.clone();
            usage::observe(response, options.clone(), move |report| {
                sink.lock().unwrap().push(*report)
            })
        })
        .layer(StreamErrorTrailerLayer::new())
        .service(service_fn(move |_req: Request<Full<Bytes>>| {
            let response = sse(&frames, Then::End);
            async move { Ok::<_, Infallible>(response) }
        }));
    let response = bounded(service.oneshot(chat_request())).await.unwrap();
    let debug = format!("{:?}", response.body());
    let body = bounded(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1, "one report");
    (String::from_utf8(body.to_vec()).unwrap(), debug, reports[0])
}

/// The stream layer frames every event anyway: the observer outside hands it
/// its reader and only passes frames through, and the report is the same as
/// if it had framed the stream itself.
#[tokio::test]
async fn an_observer_outside_reads_the_events_the_layer_frames() {
    use tollgate::usage::{BodyEnd, UsageOptions, UsageSource};

    let stream = format!("{CHUNK}{USAGE_CHUNK}{DONE}");
    for (split, frames) in halves(&stream) {
        let (body, debug, report) = observed(frames, UsageOptions::default()).await;
        assert_eq!(body, stream, "split at {split}");
        assert!(debug.contains("observing: false"), "{debug}");
        assert_eq!(report.source, UsageSource::Reported, "split at {split}");
        assert_eq!(report.end, BodyEnd::Completed);
        assert_eq!(report.usage.total_tokens, 11);
    }
}

/// Stripping the usage chunk works through the layer too, wherever the
/// upstream cut its frames, also when the usage chunk is the first event
/// (read while the layer held the head).
#[tokio::test]
async fn an_observer_outside_strips_through_the_layer() {
    use tollgate::usage::{UsageOptions, UsageSource};

    let options = UsageOptions::default().strip_usage_chunk(true);
    for (stream, expected) in [
        (
            format!("{CHUNK}{USAGE_CHUNK}{DONE}"),
            format!("{CHUNK}{DONE}"),
        ),
        (
            format!(": ping\n\n{USAGE_CHUNK}{CHUNK}{DONE}"),
            format!(": ping\n\n{CHUNK}{DONE}"),
        ),
        (
            format!("{USAGE_CHUNK}{CHUNK}{DONE}").replace('\n', "\r\n"),
            format!("{CHUNK}{DONE}").replace('\n', "\r\n"),
        ),
        // An opening chunk held with the head, with OpenAI's
        // `"usage":null`: left out of it too.
        (
            format!("{ROLE_CHUNK_NULL_USAGE}{CHUNK}{USAGE_CHUNK}{DONE}"),
            format!(
                "{}{CHUNK}{DONE}",
                ROLE_CHUNK_NULL_USAGE.replace(",\"usage\":null", "")
            ),
        ),
        // And a chunk after the head was sent.
        (
            format!("{CHUNK}{ROLE_CHUNK_NULL_USAGE}{USAGE_CHUNK}{DONE}"),
            format!(
                "{CHUNK}{}{DONE}",
                ROLE_CHUNK_NULL_USAGE.replace(",\"usage\":null", "")
            ),
        ),
    ] {
        // Each event in a frame of its own, as upstreams flush them.
        let events: Vec<&'static str> = stream
            .split_inclusive("\n\n")
            .map(|e| &*e.to_owned().leak())
            .collect();
        let (body, _, report) = observed(events, options.clone()).await;
        assert_eq!(body, expected, "an event a frame of {stream:?}");
        assert_eq!(report.usage.total_tokens, 11);
        for (split, frames) in halves(&stream) {
            let (body, debug, report) = observed(frames, options.clone()).await;
            assert_eq!(body, expected, "split at {split} of {stream:?}");
            assert!(debug.contains("observing: false"), "{debug}");
            assert_eq!(report.source, UsageSource::Reported);
            assert_eq!(report.usage.total_tokens, 11);
        }
    }
}

// ---- an observer inside the layer (a gateway observing innermost) ----

/// A body that keeps the `Debug` of the body it wraps as it was after its
/// last poll: what a `UsageBody` inside the stream layer ended up doing.
struct Spy<B> {
    inner: std::pin::Pin<Box<B>>,
    seen: std::sync::Arc<std::sync::Mutex<String>>,
}

impl<B: http_body::Body + std::fmt::Debug> http_body::Body for Spy<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        *self.seen.lock().unwrap() = format!("{:?}", self.inner);
        polled
    }
}

/// The usage observer inside the stream layer, on the upstream's response
/// (as the gateway example observes it, below the stream layer), with
/// `frames` and then `then`: the body, the observed body's `Debug` after
/// its last poll, and the report.
async fn observed_inside(
    frames: Vec<&'static str>,
    then: Then,
    options: tollgate::usage::UsageOptions,
) -> (String, String, tollgate::usage::UsageReport) {
    observed_inside_of(StreamErrorTrailerLayer::new(), frames, then, options).await
}

/// As [`observed_inside`], under `layer`.
async fn observed_inside_of(
    layer: StreamErrorTrailerLayer,
    frames: Vec<&'static str>,
    then: Then,
    options: tollgate::usage::UsageOptions,
) -> (String, String, tollgate::usage::UsageReport) {
    use std::sync::{Arc, Mutex};
    use tollgate::usage;

    let reports = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(Mutex::new(String::new()));
    let (sink, spy) = (reports.clone(), seen.clone());
    let service = ServiceBuilder::new()
        .layer(layer)
        .map_response(move |response| {
            let sink = sink.clone();
            let spy = spy.clone();
            usage::observe(response, options.clone(), move |report| {
                sink.lock().unwrap().push(*report)
            })
            .map(|body| Spy {
                inner: Box::pin(body),
                seen: spy,
            })
        })
        .service(service_fn(move |_req: Request<Full<Bytes>>| {
            let response = sse(&frames, then);
            async move { Ok::<_, Infallible>(response) }
        }));
    let response = bounded(service.oneshot(chat_request())).await.unwrap();
    let body = bounded(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1, "one report");
    let seen = seen.lock().unwrap().clone();
    (String::from_utf8(body.to_vec()).unwrap(), seen, reports[0])
}

/// The stream layer adopts the reader of an observer inside it: the
/// observed body only passes frames through (the stream is framed once),
/// and the client gets the same bytes and the observer the same report as
/// with the observer outside, wherever the upstream cut its frames.
#[tokio::test]
async fn an_observer_inside_is_adopted_by_the_layer() {
    use tollgate::usage::{BodyEnd, UsageOptions, UsageSource};

    let stream = format!("{ROLE_CHUNK_NULL_USAGE}{CHUNK}{USAGE_CHUNK}{DONE}");
    let stripped = format!(
        "{}{CHUNK}{DONE}",
        ROLE_CHUNK_NULL_USAGE.replace(",\"usage\":null", "")
    );
    for (options, expected) in [
        (UsageOptions::default(), &stream),
        (UsageOptions::default().strip_usage_chunk(true), &stripped),
    ] {
        for (split, frames) in halves(&stream) {
            let (body, seen, report) = observed_inside(frames, Then::End, options.clone()).await;
            assert_eq!(&body, expected, "split at {split}");
            assert!(seen.contains("observing: false, guest: false"), "{seen}");
            assert_eq!(report.source, UsageSource::Reported, "split at {split}");
            assert_eq!(report.end, BodyEnd::Completed);
            assert_eq!(report.usage.total_tokens, 11);
        }
    }
}

/// An adopted observer reports how the upstream's body ended, as it would
/// reading the body itself: failed when the upstream broke mid-stream.
#[tokio::test]
async fn an_adopted_observer_reports_a_failed_upstream() {
    use tollgate::usage::{BodyEnd, UsageOptions, UsageSource};

    let (body, seen, report) =
        observed_inside(vec![CHUNK, CHUNK], Then::Fail, UsageOptions::default()).await;
    assert!(body.starts_with(&format!("{CHUNK}{CHUNK}")), "{body}");
    assert!(body.contains("bad_gateway"), "{body}");
    assert!(seen.contains("observing: false"), "{seen}");
    assert_eq!(report.end, BodyEnd::Failed);
    assert_eq!(report.source, UsageSource::Estimated);
    // "HiHi": 4 characters, one token.
    assert_eq!(report.usage.completion_tokens, 1);
}

/// A stream the layer cuts for idling: the adopted observer reports it
/// dropped, as it would when the layer stopped polling its body.
#[tokio::test(start_paused = true)]
async fn an_adopted_observer_reports_an_idle_cut_as_dropped() {
    use tollgate::usage::{BodyEnd, UsageOptions};

    let layer = StreamErrorTrailerLayer::new().idle_timeout(Duration::from_secs(30));
    let (body, seen, report) =
        observed_inside_of(layer, vec![CHUNK], Then::Stall, UsageOptions::default()).await;
    assert!(body.starts_with(CHUNK), "{body}");
    assert!(body.contains("error"), "{body}");
    assert!(seen.contains("observing: false"), "{seen}");
    assert_eq!(report.end, BodyEnd::Dropped);
}

/// Without a stream layer further out, nobody adopts the observer: at its
/// body's first poll it reads the stream itself.
#[tokio::test]
async fn an_observer_nobody_adopts_reads_the_stream_itself() {
    use std::sync::{Arc, Mutex};
    use tollgate::usage::{self, BodyEnd, UsageOptions};

    let reports = Arc::new(Mutex::new(Vec::new()));
    let sink = reports.clone();
    let stream = format!("{CHUNK}{USAGE_CHUNK}{DONE}");
    let response = usage::observe(
        sse(&[CHUNK, USAGE_CHUNK, DONE], Then::End),
        UsageOptions::default().strip_usage_chunk(true),
        move |report| sink.lock().unwrap().push(*report),
    );
    let mut body = response.into_body();
    assert!(format!("{body:?}").contains("guest: true"), "{body:?}");
    let first = bounded(body.frame()).await.unwrap().unwrap();
    assert_eq!(first.data_ref().unwrap(), CHUNK.as_bytes());
    assert!(format!("{body:?}").contains("observing: true, guest: false"));
    let rest = bounded(body.collect()).await.unwrap().to_bytes();
    assert_eq!(
        rest,
        DONE.as_bytes(),
        "the usage chunk of {stream:?} is cut"
    );
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].end, BodyEnd::Completed);
    assert_eq!(reports[0].usage.total_tokens, 11);
}

/// An observed body dropped before its first poll (the client left while
/// the head was on its way) reports at once, as dropped, although the
/// response's extensions still hold the observer's slot.
#[tokio::test]
async fn a_waiting_observer_dropped_unpolled_reports_at_once() {
    use std::sync::{Arc, Mutex};
    use tollgate::usage::{self, BodyEnd, UsageOptions};

    let reports = Arc::new(Mutex::new(Vec::new()));
    let sink = reports.clone();
    let response = usage::observe(
        sse(&[CHUNK, DONE], Then::End),
        UsageOptions::default(),
        move |report| sink.lock().unwrap().push(*report),
    );
    let (parts, body) = response.into_parts();
    drop(body);
    let reports_now = reports.lock().unwrap().clone();
    assert_eq!(reports_now.len(), 1, "reported while the extensions live");
    assert_eq!(reports_now[0].end, BodyEnd::Dropped);
    drop(parts);
    assert_eq!(reports.lock().unwrap().len(), 1, "and only once");
}

// ---- the first event, read once on the client side ----

/// A body that counts the frames polled from it.
struct Counted<B> {
    inner: std::pin::Pin<Box<B>>,
    polls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<B: http_body::Body> http_body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.as_mut().poll_frame(cx)
    }
}

/// Counts the frames a layer further out polls from the response body.
fn counting<B>(
    polls: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> impl Fn(Response<B>) -> Response<Counted<B>> + Clone {
    let polls = polls.clone();
    move |response| {
        response.map(|body| Counted {
            inner: Box::pin(body),
            polls: polls.clone(),
        })
    }
}

fn upstream_stream(
    frames: Vec<&'static str>,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Body>, Error = Infallible> + Clone {
    service_fn(move |_req: Request<Full<Bytes>>| {
        let response = sse(&frames, Then::End);
        async move { Ok::<_, Infallible>(response) }
    })
}

/// Retry layer outside, stream layer inside: the stream layer read the
/// first event while holding the head, and the retry layer classifies with
/// that reading instead of peeking at the stream again.
#[tokio::test(start_paused = true)]
async fn the_retry_layer_reuses_the_stream_layers_first_event() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tollgate::RetryLayer;

    let stream = format!(": ping\n\n{CHUNK}{DONE}");
    for hold in [true, false] {
        let polls = Arc::new(AtomicUsize::new(0));
        let service = ServiceBuilder::new()
            .layer(RetryLayer::new())
            .map_response(counting(&polls))
            .layer(StreamErrorTrailerLayer::new().hold_first_event(hold))
            .service(upstream_stream(vec![": ping\n\n", CHUNK, DONE]));
        let response = bounded(service.oneshot(chat_request())).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let peeked = polls.load(Ordering::SeqCst);
        if hold {
            // Not one frame was read for the retry layer's classification.
            assert_eq!(peeked, 0);
        } else {
            // The stream layer did not read it: the retry layer peeks.
            assert!(peeked > 0);
        }
        let body = bounded(response.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, stream, "hold {hold}");
    }
}

/// Stream layer outside, retry layer inside (a gateway whose upstream client
/// retries): the retry layer peeked at the first event, and the stream layer
/// uses its reading instead of holding the head again; an error as the first
/// event still becomes an error status.
#[tokio::test(start_paused = true)]
async fn the_stream_layer_reuses_the_retry_layers_first_event() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tollgate::RetryLayer;

    let error = "data: {\"error\":{\"message\":\"Bad request.\",\"type\":\"invalid_request_error\",\"code\":\"bad\"}}\n\n";
    for (frames, status) in [
        (vec![": ping\n\n", CHUNK, DONE], StatusCode::OK),
        (vec![error], StatusCode::BAD_REQUEST),
    ] {
        for peek in [true, false] {
            let polls = Arc::new(AtomicUsize::new(0));
            let service = ServiceBuilder::new()
                .layer(StreamErrorTrailerLayer::new())
                .map_response(counting(&polls))
                .layer(RetryLayer::new().peek_streams(peek))
                .service(upstream_stream(frames.clone()));
            let response = bounded(service.oneshot(chat_request())).await.unwrap();
            assert_eq!(response.status(), status, "peek {peek}");
            let held = polls.load(Ordering::SeqCst);
            if peek {
                assert_eq!(held, 0, "the stream layer read nothing to hold the head");
            } else {
                assert!(
                    held > 0,
                    "without the retry layer's reading it holds the head"
                );
            }
            let body = bounded(response.into_body().collect())
                .await
                .unwrap()
                .to_bytes();
            if status == StatusCode::OK {
                assert_eq!(body, frames.concat());
            } else {
                let text = String::from_utf8(body.to_vec()).unwrap();
                assert!(text.contains("Bad request."), "{text}");
            }
        }
    }
}

/// The events held before the content (Anthropic's `message_start`, which
/// carries the input tokens, and `ping`) are read by the observer outside
/// too, wherever the upstream cut its frames.
#[tokio::test]
async fn an_observer_outside_reads_the_events_held_before_the_content() {
    use tollgate::usage::{BodyEnd, UsageOptions, UsageSource};

    let stream = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
        "event: ping\ndata: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    for (split, frames) in halves(stream) {
        let (body, debug, report) = observed(frames, UsageOptions::default()).await;
        assert_eq!(body, stream, "split at {split}");
        assert!(debug.contains("observing: false"), "{debug}");
        assert_eq!(report.source, UsageSource::Reported, "split at {split}");
        assert_eq!(report.end, BodyEnd::Completed);
        assert_eq!(
            (report.usage.prompt_tokens, report.usage.completion_tokens),
            (25, 15),
            "split at {split}"
        );
    }
}

/// Stream layer outside, retry layer inside: when the event the retry layer
/// read is an opening one (`message_start`), the stream layer still holds
/// the head until the content, and an error before it is a status.
#[tokio::test(start_paused = true)]
async fn an_opening_event_read_by_the_retry_layer_is_not_content() {
    use tollgate::RetryLayer;

    let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n";
    let error = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let service = ServiceBuilder::new()
        .layer(StreamErrorTrailerLayer::new())
        .layer(RetryLayer::new())
        .service(upstream_stream(vec![start, error]));
    let request = Request::post("/v1/messages").body(Full::default()).unwrap();
    let response = bounded(service.oneshot(request)).await.unwrap();
    assert_eq!(response.status().as_u16(), 529);
    let body = bounded(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["type"], "overloaded_error");
}
