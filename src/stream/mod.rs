//! Streams that fail say so, in the client's own protocol.
//!
//! When an upstream dies in the middle of a streamed completion, a gateway
//! that just forwards bytes leaves its clients with a cut connection, a
//! half-written event, or (worse) a clean end that looks like a complete
//! answer. [`StreamErrorTrailerLayer`] watches every `text/event-stream`
//! response and guarantees it ends one of two ways: with the upstream's own
//! end marker, or with exactly one terminal error event the client's SDK
//! raises as an error (`openai.APIError`, Anthropic's `event: error`). The
//! body then ends cleanly: no transport error reaches the client.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use futures_util::stream;
//! use http::{Request, Response, StatusCode};
//! use http_body::Frame;
//! use http_body_util::{BodyExt, Full, StreamBody};
//! use tollgate::stream::StreamErrorTrailerLayer;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let mut service = ServiceBuilder::new()
//!     .layer(StreamErrorTrailerLayer::new())
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         // An upstream that sends one chunk, then loses its connection.
//!         let frames = stream::iter([
//!             Ok(Frame::data(Bytes::from("data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n"))),
//!             Err(std::io::Error::other("connection reset")),
//!         ]);
//!         let response = Response::builder()
//!             .header("content-type", "text/event-stream")
//!             .body(StreamBody::new(frames))
//!             .unwrap();
//!         Ok::<_, Infallible>(response)
//!     }));
//!
//! let request = Request::post("/v1/chat/completions").body(Full::default())?;
//! let response = service.ready().await?.call(request).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//!
//! // The body does not fail: it ends with an error event the OpenAI SDKs raise.
//! let body = response.into_body().collect().await?.to_bytes();
//! let text = std::str::from_utf8(&body)?;
//! assert!(text.starts_with("data: {\"choices\""));
//! assert!(text.ends_with(
//!     "data: {\"error\":{\"message\":\"The upstream stream failed before it completed.\",\
//!      \"type\":\"server_error\",\"param\":null,\"code\":\"bad_gateway\"}}\n\n"
//! ));
//! # Ok(())
//! # }
//! ```
//!
//! # What the layer does
//!
//! - **Before the stream starts** it holds the response head until the first
//!   content-bearing event
//!   ([`hold_first_event`](StreamErrorTrailerLayer::hold_first_event),
//!   bounded by [`first_event_timeout`](StreamErrorTrailerLayer::first_event_timeout)
//!   and [`max_first_event_bytes`](StreamErrorTrailerLayer::max_first_event_bytes)).
//!   The events that open a stream are held with the head, not taken for
//!   content: the Responses API's `response.created`, `response.in_progress`
//!   and `response.queued`, Anthropic's `message_start` and `ping`, a chat
//!   chunk whose choices carry only a role and empty content (or no choices,
//!   as Azure's first chunk), a HAI chunk with empty content. If the stream
//!   fails before its content (an error event, HAI's finishing chunk with an
//!   error code, `response.failed`, a failing or ending body), the client
//!   gets a normal error response instead of a 200 stream, in its dialect's
//!   envelope (Anthropic's, HAI's `error_code_detail`, else OpenAI's): the
//!   event parsed by [`envelope::parse`](crate::envelope::parse), its status
//!   from the error's numeric status, `code` or `type` (the kind's status),
//!   the [`ApiError`](crate::ApiError) in the response extensions.
//! - **During the stream** it forwards the inner `Bytes` frames as they are
//!   and holds back only an event that is not complete yet. When the inner
//!   body fails (→ 502 `bad_gateway`), ends without its protocol's end
//!   marker (→ 502 `stream_truncated`), or sends no event for the
//!   [`idle_timeout`](StreamErrorTrailerLayer::idle_timeout) (→ 504 `timeout`), the
//!   partial event is dropped and one terminal error event is appended in
//!   the request's [`StreamFormat`].
//! - **A body that fails with an [`ApiError`](crate::ApiError)** (the body's
//!   error itself, or anywhere in its `source()` chain, as
//!   `axum::body::Body` wraps it) ends with that error's event instead of
//!   `bad_gateway`, or is answered with that error before the stream starts.
//!   That is how a server ends a stream from outside: a gateway that is
//!   shutting down makes its bodies fail with a 503 once the grace is over.
//! - End markers are `data: [DONE]` (chat completions), `message_stop`
//!   (Anthropic), `response.completed`, `response.failed` or
//!   `response.incomplete` (Responses), HAI's finishing chunk (one whose
//!   `delta.meta_data.finish_reason` is set, an error code or not), and any
//!   error event the upstream sent itself. Any of them ends the watch,
//!   whatever the format: the rest is passed through and nothing is
//!   appended. A marker cut short by the end of the body counts only when
//!   its data is whole (`[DONE]`, or JSON that parses).
//! - Streams of bare JSON objects (`application/x-ndjson`,
//!   `application/ndjson`, `application/jsonl`, `application/x-jsonlines`),
//!   as HAI sends them besides SSE, are watched the same way: each object is
//!   an event (newline-delimited or pretty-printed), and the terminal error
//!   is a JSON line.
//! - Optional [`keep_alive`](StreamErrorTrailerLayer::keep_alive) comments fill
//!   idle gaps for proxies that cut quiet connections.
//! - gRPC responses (`application/grpc`): a failed inner body becomes
//!   `grpc-status`/`grpc-message` trailers (UNAVAILABLE), as does a body that
//!   ends without a status.
//! - Every other response passes through untouched and unwrapped, and so
//!   does SSE with a non-2xx status, SSE with a `content-encoding` (its bytes
//!   are not events until decoded: put the layer inside any decompression),
//!   and the answer to a `HEAD` request.
//!
//! The layer needs a Tokio runtime with time enabled (its timers are
//! `tokio::time`, so `tokio::time::pause()` drives them in tests). Its error
//! type is the inner service's: it sits in `axum::Router::layer` as is, and
//! in front of an HTTP client on the way to an upstream.
//!
//! # Why hold the head until the first content?
//!
//! An upstream that refuses a streamed request often does so *inside* the
//! stream: a 200 whose first events are an error (rate limits, context
//! length, content filters at some providers, an overloaded model). Passed
//! on, the client sees a successful request that fails while it reads, and
//! its retry logic, which keys on the status (429, 529), never runs. And the
//! error rarely comes first: Responses streams open with `response.created`,
//! Anthropic's with `message_start`, OpenAI's with an empty role chunk, all
//! sent before the model has produced anything, so the error comes after
//! them. Holding those with the head costs nothing on a healthy stream,
//! whose first content comes at once, and turns those failures into the
//! status the client expects. Upstream comments (`: PROCESSING`) do not end
//! the wait, since they are not the answer. The hold is bounded in time
//! (`first_event_timeout`, 10 s) and in bytes (`max_first_event_bytes`, 64 KiB,
//! the events and comments held so far): a stream that does not get to its
//! content within them starts anyway, so nothing is held without bound. An
//! event the layer does not know is content: it never holds a stream it
//! does not understand.
//!
//! # Why these terminal events?
//!
//! Each is the error its dialect documents, so the client's own code reads
//! it: OpenAI's `{"error":…}` chunk, which the SDKs raise as `APIError`;
//! Anthropic's `event: error`; the Responses API's `error` event
//! (`{"type":"error","code","message","param","sequence_number"}`, the
//! sequence number the stream's next) then `response.failed`; HAI's
//! finishing chunk in the shape of its stream's chunks (its `message_id` and
//! `thread_id`, `created_at`, and `delta.meta_data` with `type`,
//! `finish_reason` and `detail`). [`StreamFormat`] has the table, and
//! `docs/formats.md` the wire of each.
//!
//! # Why hold back an incomplete event?
//!
//! SSE clients dispatch an event at the blank line that ends it. If the
//! upstream dies inside an event and the gateway has already forwarded its
//! first half, any error event appended would be glued to that half, and the
//! client would fail on invalid JSON instead of raising the error. So the
//! layer forwards whole events only, keeping the unfinished tail of a frame
//! until its end arrives. A frame that ends on an event boundary, the usual
//! case, is forwarded as the same `Bytes`, without a copy; only an event split
//! across frames is joined. Events over
//! [`max_event_bytes`](StreamErrorTrailerLayer::max_event_bytes) are forwarded
//! as they come, to bound the memory an upstream can make the gateway hold.
//!
//! # Why no `[DONE]` after the error?
//!
//! `data: [DONE]` means "the answer is complete" to many clients, including
//! hand-written ones that stop reading at it and never look for an error
//! before it. A failed stream must not claim completion, so by default the
//! error event is the last thing sent;
//! [`done_after_error`](StreamErrorTrailerLayer::done_after_error) adds it for
//! clients that wait for it to close.
//!
//! # Why an idle timeout?
//!
//! An upstream that stops sending without closing holds a client, a
//! connection and (through the rate-limit and budget layers) a reservation
//! until some far-away timeout fires, and the client then gets a bare
//! connection error. A stream that has been silent for a minute is not coming
//! back; ending it with a timeout event lets the client retry now, and frees
//! what it held. It is checked on a coarse tick, so it costs nothing per
//! event.
//!
//! # Why keep-alive comments?
//!
//! Load balancers and proxies close connections that carry no bytes for a
//! while (often 60 s), which kills the streams of models that think before
//! they write. A comment line is ignored by every SSE client and keeps those
//! connections open. They are off by default because most deployments do not
//! need them, and are sent only between whole events.
//!
//! # Usage accounting
//!
//! The terminal events carry no usage, and the usage observer ignores error
//! events, so a usage observer outside this layer counts the partial stream:
//! the usage the upstream reported, or an estimate from the content it saw.
//!
//! # Why the layer reads events for others
//!
//! This layer frames every event of a stream anyway, with the crate's one
//! SSE framer. A usage observer outside it
//! ([`usage::observe`](crate::usage::observe), which the rate-limit and
//! budget layers use) hands its per-event reader to this layer's body
//! instead of framing the stream a second time, so a gateway frames each
//! event once. An observer inside it (a gateway that observes the
//! upstream's answer innermost) is taken over the same way: its reader waits
//! in the response extensions until this layer adopts it, and its body then
//! passes frames through. Either way the reader is told how the upstream's
//! body ended (completed, failed, or cut by this layer), as if it had read
//! the body itself. And the first event, once read to hold the head, is left in
//! the response extensions: a retry layer outside (on the client side)
//! classifies the stream with it instead of peeking again, and this layer,
//! when a retry layer inside it has already read the first event, uses that
//! reading instead of holding the head again (unless it was an opening
//! event: then the head is held until the content, the stream read again
//! from the start that layer replays). A usage observer's reader handed
//! over after the head was held reads the events held first (Anthropic's
//! `message_start` has the input tokens).

pub mod body;
mod failure;
mod first_event;
pub mod future;
mod grpc;
mod layer;
mod marker;
mod seen;
mod service;
mod terminal;
mod tick;
mod watch;

pub use self::layer::StreamErrorTrailerLayer;
pub use self::service::StreamErrorTrailer;
pub use self::terminal::{StreamFormat, UnknownStreamFormat};
