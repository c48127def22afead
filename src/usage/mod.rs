//! Token usage of every response, read from the body as it streams:
//! [`observe`], [`Usage`], [`UsageTap`].
//!
//! Tokens-per-minute limits and budgets are only as good as the usage they
//! are settled with. A gateway must count the tokens of streams as well as
//! of plain JSON answers, must count them when the client hangs up halfway,
//! and must not replace a provider's reported zero with a guess. [`observe`]
//! wraps a response body in a [`UsageBody`] that watches the frames go by and
//! calls you back exactly once with a [`UsageReport`]: when the body ends,
//! when it fails, or when it is dropped before its end.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::{Arc, Mutex};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tollgate::usage::{self, BodyEnd, UsageOptions, UsageReport, UsageSource};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // An upstream streaming an OpenAI chat completion with its usage chunk.
//! let upstream = service_fn(|_req: Request<Full<Bytes>>| async {
//!     let sse = concat!(
//!         "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello!\"}}],\"usage\":null}\n\n",
//!         "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n",
//!         "data: [DONE]\n\n",
//!     );
//!     Ok::<_, Infallible>(
//!         Response::builder()
//!             .header("content-type", "text/event-stream")
//!             .body(Full::new(Bytes::from(sse)))
//!             .unwrap(),
//!     )
//! });
//!
//! let reports = Arc::new(Mutex::new(Vec::<UsageReport>::new()));
//! let sink = reports.clone();
//! let mut service = ServiceBuilder::new()
//!     .map_response(move |response| {
//!         let sink = sink.clone();
//!         usage::observe(response, UsageOptions::default(), move |report| {
//!             sink.lock().unwrap().push(*report);
//!         })
//!     })
//!     .service(upstream);
//!
//! let response = service.ready().await?.call(Request::new(Full::default())).await?;
//! let body = response.into_body().collect().await?.to_bytes();
//! assert!(body.ends_with(b"data: [DONE]\n\n")); // the client sees every byte
//!
//! let report = reports.lock().unwrap()[0];
//! assert_eq!(report.source, UsageSource::Reported);
//! assert_eq!(report.end, BodyEnd::Completed);
//! assert_eq!(report.usage.total_tokens, 11);
//! # Ok(())
//! # }
//! ```
//!
//! # What is read
//!
//! The response's `content-type` picks the scanner ([`UsageScanner`]):
//!
//! - `text/event-stream`: OpenAI chat chunks (the final `choices: []` chunk
//!   with `usage`, sent when the request set `stream_options.include_usage`;
//!   servers that repeat a cumulative usage in every chunk end with the last
//!   one), Anthropic `message_start` (the prompt side) and `message_delta`
//!   (the output side), and the OpenAI Responses API's `response.completed`.
//!   `data: [DONE]`, `event: error` and `{"error": …}` events are never usage.
//! - `application/json` (and `*/*+json`): the `usage` object of a
//!   non-streamed answer, under OpenAI's or Anthropic's names (see
//!   [`Usage`]).
//! - anything else: nothing; the report is an estimate.
//!
//! # Why scan bytes instead of parsing events
//!
//! The observer sits on every response of the gateway, and a stream of a
//! thousand chunks holds its usage in one of them. So each SSE event, as
//! the crate's one SSE framer (which finds the line breaks) hands it over,
//! is looked at with SIMD searches only (memchr's, for the two keys): a
//! `"usage"` key whose value is an object marks the few
//! events that are parsed, and a `"delta"` key marks the text to count for
//! the estimate. The parse is `serde_json`'s, into derived structs (a usage
//! object comes once or twice per response), but for one fix: a JSON body's
//! usage object cut by a frame boundary inside a number of a member it does
//! not know (`"cost": 0.`…) is waited for, where serde calls it invalid and
//! the usage would be lost. Frames are passed on untouched and not
//! buffered; the one copy is of an event split across two frames, kept (by
//! the framer) until its end, and an event longer than 1 MiB is skipped
//! rather than kept. Events split across frames at any byte (inside `\r\n`,
//! inside the `"usage"` key, inside a number) give the same report, and the
//! `data:` lines of one event are joined with `\n` as a client joins them
//! (a usage object spread over several lines is read). Events named as
//! content (`content_block_delta`, `*.delta`, `ping`) and the `"usage":null`
//! that ends every chunk of an OpenAI stream skip the `"usage"` search.
//!
//! What is counted as generated text: the string values of `content`,
//! `text`, `thinking`, `partial_json`, `arguments`, `refusal`,
//! `reasoning_content` and `reasoning` under a `"delta"` (chat chunks,
//! Anthropic deltas), and a `"delta"` that is itself a string (OpenAI
//! Responses); in a JSON body, the same keys anywhere. A JSON escape counts
//! as one character.
//!
//! # Why JSON bodies are not buffered either
//!
//! A JSON answer's usage is known only once its `usage` object has passed,
//! and that object usually comes last. Instead of collecting the body up to
//! a limit and parsing it at the end (a copy and a full parse of every
//! answer), each `"usage"` key is found with `memmem` as the frames pass and
//! the object after it is parsed in place; only an object split across two
//! frames is copied (at most 64 KiB). The last such object wins: OpenAI,
//! Anthropic and the OpenAI-compatible servers put the top-level `usage`
//! after the content, so a `usage` key nested in the content comes before it.
//! For the estimate, until a usage object has passed, the body is kept up
//! to 1 MiB (the first frame by reference, later ones copied) and its text
//! counted at the end if no usage came; a larger body without usage (an
//! embeddings batch, say) is estimated from the prompt alone.
//!
//! # Why estimate, and why never over a reported zero
//!
//! A stream that is cut, or an upstream that does not report usage, still
//! spent tokens: the estimate is the request's prompt estimate
//! ([`UsageOptions::prompt_tokens_estimate`]) plus one token per four
//! characters of generated text (rounded up), marked
//! [`UsageSource::Estimated`]. When Anthropic's `message_start` was seen but
//! its `message_delta` was not, the reported prompt side is kept and the
//! completion is the larger of the reported and the estimated count. A
//! reported usage always wins, zeros included: a provider that says a cached
//! answer cost nothing is believed. An error response (status ≥ 400) without
//! usage reports all zeros.
//!
//! # Why exactly once, and on drop
//!
//! Layers reserve tokens and money before the call and settle after it; a
//! report that never comes leaks a reservation, one that comes twice settles
//! twice. The callback fires from the body: at its end ([`BodyEnd::Completed`]),
//! on its error ([`BodyEnd::Failed`]), or from its `Drop` when the client goes
//! away ([`BodyEnd::Dropped`]), whichever comes first, and never again.
//!
//! # Several layers, one scan
//!
//! [`observe`] puts a [`UsageTap`] in the response extensions. When the
//! response it is given already has one (an inner tollgate layer observes
//! it), the callback is subscribed to that tap and the body passes through
//! without a second scan (and without a look at its headers); that inner
//! observer's options then decide the estimate. The tap costs one
//! allocation, which also holds the first callback; each further
//! subscriber costs one more. The exception is [`UsageOptions::strip_usage_chunk`] over an
//! observer that does not strip: the chunk must still be cut, so the body is
//! observed again.
//!
//! The stream layer ([`StreamErrorTrailerLayer`](crate::stream::StreamErrorTrailerLayer))
//! frames every event of a stream anyway. When [`observe`] finds a stream
//! it watches, it hands the scanner's per-event reader to that body instead
//! of framing the stream a second time: on a server, each event is framed
//! once.
//!
//! # Asking for usage the client did not ask for
//!
//! [`request_usage`] rewrites a streamed chat request to set
//! `stream_options.include_usage`; observe its response with
//! [`UsageOptions::strip_usage_chunk`] and the client still sees exactly the
//! stream it asked for, while the gateway counts the real usage.

mod body;
mod json;
mod keys;
mod parse;
mod report;
mod request;
mod scan;
mod sse;
mod tap;

use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http::header::CONTENT_LENGTH;

pub use self::body::UsageBody;
pub use self::report::{BodyEnd, Usage, UsageOptions, UsageReport, UsageSource};
pub use self::request::request_usage;
pub use self::scan::UsageScanner;
pub use self::tap::UsageTap;

pub(crate) use self::body::GuestSlot;
use self::body::Observer;
use self::scan::Kind;
use self::tap::Shared;
use crate::sse::{SseGuest, SseHost};

/// Observes the usage of `response`'s body.
///
/// `on_usage` fires exactly once, with the final report, when the body ends,
/// fails, or is dropped (a Drop guard), also for error responses (status
/// ≥ 400 with no usage reported → all-zero usage, `Estimated`). A body that
/// is already at its end (`is_end_stream`) is reported at once. If an inner
/// tollgate layer already observes this body (a [`UsageTap`] in the response
/// extensions), the callback is subscribed to that tap and the body passes
/// through without a second scan. When the body frames its SSE events
/// anyway (the stream layer's body), it reads them for this observer: the
/// stream is framed once. The same holds the other way round: observed
/// below a [`StreamErrorTrailerLayer`](crate::stream::StreamErrorTrailerLayer)
/// (a gateway that observes the upstream's answer innermost), the observer
/// waits until its body's first poll for the stream layer to take over its
/// reading, and reads the body itself if no such layer did.
///
/// With [`UsageOptions::strip_usage_chunk`] on an SSE response, the
/// `content-length` header (if any) is removed, since the body shrinks.
#[inline]
pub fn observe<B, F>(
    response: Response<B>,
    options: UsageOptions,
    on_usage: F,
) -> Response<UsageBody<B>>
where
    B: http_body::Body<Data = Bytes>,
    F: FnOnce(&UsageReport) + Send + 'static,
{
    let (mut parts, body) = response.into_parts();
    if let Some(tap) = parts.extensions.get::<UsageTap>() {
        // An inner observer's scan serves this one too, unless this one must
        // cut the usage chunk and that one does not.
        let strip = || options.strip_usage_chunk && Kind::of(&parts.headers) == Kind::Sse;
        if tap.shared.strips() || !strip() {
            tap.subscribe(on_usage);
            return Response::from_parts(parts, UsageBody::new(body, None));
        }
    }
    let scanner = UsageScanner::for_headers(&parts.headers);
    let is_sse = scanner.is_sse();
    let strip = options.strip_usage_chunk && is_sse;
    if strip {
        parts.headers.remove(CONTENT_LENGTH);
    }
    // The callback lives in the tap's own allocation, not in a box.
    let shared = Arc::new(Shared::new(on_usage, strip));
    parts.extensions.insert(UsageTap {
        shared: shared.clone(),
    });
    let mut observer = Box::new(Observer::new(
        scanner,
        strip,
        shared,
        parts.status,
        options.prompt_tokens_estimate,
    ));
    if body.is_end_stream() {
        observer.complete_now();
    } else if is_sse {
        return hand_over(parts, body, observer);
    }
    Response::from_parts(parts, UsageBody::new(body, Some(observer)))
}

/// A stream: if the body frames its events anyway (the stream layer's,
/// which put an [`SseHost`] in the extensions), it reads them for
/// `observer`, and the observed body only passes frames through. Else the
/// observer waits as a guest ([`SseGuest`]) for a stream layer further out
/// to adopt it when it sees the response, and reads the body itself if
/// none did by its first poll. Either way the stream is framed once. Out of
/// line: the path of every other response stays small.
#[inline(never)]
fn hand_over<B>(
    mut parts: http::response::Parts,
    body: B,
    observer: Box<Observer>,
) -> Response<UsageBody<B>> {
    let offered = match parts.extensions.get::<SseHost>() {
        Some(host) => host.offer(observer),
        None => {
            let strip = observer.strips();
            let slot = GuestSlot::new(observer);
            parts.extensions.insert(SseGuest(slot.clone()));
            return Response::from_parts(parts, UsageBody::guest(body, slot, strip));
        }
    };
    Response::from_parts(parts, UsageBody::new(body, offered.err()))
}
