//! The response future of [`StreamErrorTrailer`](super::StreamErrorTrailer).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::Response;
use http::header::CONTENT_LENGTH;
use http_body::Body;
use pin_project_lite::pin_project;

use super::StreamFormat;
use super::body::{ResponseBody, Watched};
use super::first_event::{Opening, opening};
use super::grpc::GrpcBody;
use super::layer::Settings;
use super::watch::SseBody;
use crate::envelope::{ErrorFormat, GRPC_STATUS};
use crate::sse::{FirstEvent, SseGuest, SseHost, media_type};
use crate::{ApiError, BoxError};

pin_project! {
    /// Resolves to the inner response with its body watched; for an SSE
    /// response, once its first content-bearing event has arrived (or an
    /// error response if the stream failed before it).
    pub struct ResponseFuture<F, B> {
        #[pin]
        future: F,
        state: State<B>,
    }
}

enum State<B> {
    Calling(Settings),
    Holding {
        parts: http::response::Parts,
        body: Box<SseBody<B>>,
        format: StreamFormat,
    },
    Done,
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn new(future: F, settings: Settings) -> Self {
        ResponseFuture {
            future,
            state: State::Calling(settings),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Sse,
    /// Bare JSON objects, newline-delimited (HAI's other stream syntax).
    JsonLines,
    Grpc,
    Other,
}

/// The media types of streams of bare JSON objects.
const JSON_LINES: [&[u8]; 4] = [
    b"application/x-ndjson",
    b"application/ndjson",
    b"application/jsonl",
    b"application/x-jsonlines",
];

/// Which body this response gets. SSE (and bare JSON lines) is watched
/// only for a 2xx answer to a request with a body (not `HEAD`) whose bytes
/// are the events themselves (no `content-encoding`): a compressed stream
/// cannot be framed or appended to, so it passes through.
fn wire(parts: &http::response::Parts, watch_sse: bool) -> Wire {
    let Some(essence) = media_type(&parts.headers) else {
        return Wire::Other;
    };
    // From the media type read above: a second lookup of the header costs
    // as much as the rest of this choice.
    let sse = essence.eq_ignore_ascii_case(b"text/event-stream");
    if sse || JSON_LINES.iter().any(|t| essence.eq_ignore_ascii_case(t)) {
        let encoded = crate::body::is_encoded(&parts.headers);
        match (watch_sse && parts.status.is_success() && !encoded, sse) {
            (true, true) => Wire::Sse,
            (true, false) => Wire::JsonLines,
            (false, _) => Wire::Other,
        }
    } else if essence.len() >= 16
        // Its 13th byte first: most answers are `application/json`.
        && essence[12].eq_ignore_ascii_case(&b'g')
        && essence[..16].eq_ignore_ascii_case(b"application/grpc")
    {
        Wire::Grpc
    } else {
        Wire::Other
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state {
                State::Calling(settings) => {
                    let settings = *settings;
                    let response = ready!(this.future.as_mut().poll(cx))?;
                    let (parts, body) = response.into_parts();
                    match wire(&parts, settings.watch_sse) {
                        Wire::Other => {
                            *this.state = State::Done;
                            let body = ResponseBody::inner(Watched::passthrough(body));
                            return Poll::Ready(Ok(Response::from_parts(parts, body)));
                        }
                        Wire::Grpc => {
                            *this.state = State::Done;
                            let has_status = parts.headers.contains_key(GRPC_STATUS);
                            let body = Watched::grpc(GrpcBody::new(body, has_status));
                            let body = ResponseBody::inner(body);
                            return Poll::Ready(Ok(Response::from_parts(parts, body)));
                        }
                        wire @ (Wire::Sse | Wire::JsonLines) => {
                            match watch(parts, body, settings, wire == Wire::JsonLines) {
                                Ok(response) => {
                                    *this.state = State::Done;
                                    return Poll::Ready(Ok(response));
                                }
                                Err(holding) => *this.state = holding,
                            }
                        }
                    }
                }
                State::Holding { parts, body, .. } => {
                    let first = ready!(body.poll_first_event(cx, &parts.headers));
                    let held = std::mem::replace(this.state, State::Done);
                    return Poll::Ready(Ok(release(held, first)));
                }
                State::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

/// Starts watching an SSE response: the response to return now, or the
/// state that holds its head until the first event. Out of line: the other
/// responses' path stays small.
#[inline(never)]
fn watch<B>(
    mut parts: http::response::Parts,
    body: B,
    settings: Settings,
    bare: bool,
) -> Result<Response<ResponseBody<B>>, State<B>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    // Events may be dropped or added: the length changes.
    parts.headers.remove(CONTENT_LENGTH);
    // A layer inside (the retry layer) read the first event already: use
    // its reading, and hold only if it was an opening event (the stream is
    // framed again from its start, which that layer's body replays).
    let read = parts
        .extensions
        .get::<FirstEvent>()
        .map(|first| opening(&first.event(), &parts.headers));
    if let Some(Opening::Fails(error)) = &read {
        return Ok(reject(settings.format, error));
    }
    let hold =
        settings.config.hold_first_event && !matches!(read, Some(Opening::Content | Opening::Ends));
    // A usage observer further out reads the events this body frames
    // anyway, instead of framing them again; one further in (waiting as a
    // guest) is adopted the same way.
    let limit = settings.config.max_event_bytes;
    let guest = parts
        .extensions
        .remove::<SseGuest>()
        .and_then(|guest| guest.0.adopt(limit));
    let host = SseHost::with(limit, guest);
    parts.extensions.insert(host.clone());
    let body = SseBody::new(body, settings, hold, host, bare);
    if !hold {
        let body = ResponseBody::inner(Watched::sse(body));
        return Ok(Response::from_parts(parts, body));
    }
    Err(State::Holding {
        parts,
        body,
        format: settings.format,
    })
}

/// The head was held until the first event: the stream, or the error to
/// answer instead. Out of line, as [`watch`].
#[inline(never)]
fn release<B>(held: State<B>, first: Result<(), ApiError>) -> Response<ResponseBody<B>> {
    let State::Holding {
        mut parts,
        body,
        format,
    } = held
    else {
        // Only called with the held state.
        return reject(StreamFormat::default(), &ApiError::internal());
    };
    match first {
        Ok(()) => {
            // For the layers further out (a retry layer classifying the
            // stream) not to read it again.
            if let Some(first) = body.first_event() {
                parts.extensions.insert(first.clone());
            }
            Response::from_parts(parts, ResponseBody::inner(Watched::sse(body)))
        }
        Err(error) => reject(format, &error),
    }
}

/// An error answered instead of a stream, in the envelope of the stream's
/// dialect: Anthropic's for Anthropic clients, HAI's `error_code_detail` for
/// finish-reason-metadata streams, OpenAI's otherwise; the `ApiError` rides
/// in the extensions so an outer `ErrorEnvelopeLayer` can re-render it.
fn reject<B>(format: StreamFormat, error: &ApiError) -> Response<ResponseBody<B>> {
    let format = match format {
        StreamFormat::AnthropicMessages => ErrorFormat::Anthropic,
        StreamFormat::FinishReasonMetadata => ErrorFormat::ErrorCodeDetail,
        StreamFormat::ChatCompletions | StreamFormat::Responses => ErrorFormat::OpenAi,
    };
    format.render(error).map(ResponseBody::from_full)
}
