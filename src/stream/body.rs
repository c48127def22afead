//! The response body of [`StreamErrorTrailer`](super::StreamErrorTrailer):
//! the inner body untouched, a watched SSE stream, a gRPC stream with status
//! trailers, or an error answered before the stream started.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::grpc::GrpcBody;
use super::watch::SseBody;
use crate::BoxError;

/// The body of a response that went through
/// [`StreamErrorTrailer`](super::StreamErrorTrailer): the inner body as the
/// layer passes it on ([`Watched`]), or an error answered instead of a
/// stream.
pub type ResponseBody<B> = crate::body::ResponseBody<Watched<B>>;

pin_project! {
    /// The inner body as [`StreamErrorTrailer`](super::StreamErrorTrailer)
    /// passes it on: untouched, watched (SSE), or with gRPC status trailers.
    ///
    /// Never fails for an SSE stream: an upstream failure becomes a terminal
    /// error event and a clean end. Other bodies fail as the inner one does.
    pub struct Watched<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Passthrough { #[pin] body: B },
        Sse { body: Box<SseBody<B>> },
        Grpc { #[pin] body: GrpcBody<B> },
    }
}

impl<B> Watched<B> {
    pub(crate) fn passthrough(body: B) -> Self {
        Watched {
            kind: Kind::Passthrough { body },
        }
    }

    pub(crate) fn sse(body: Box<SseBody<B>>) -> Self {
        Watched {
            kind: Kind::Sse { body },
        }
    }

    pub(crate) fn grpc(body: GrpcBody<B>) -> Self {
        Watched {
            kind: Kind::Grpc { body },
        }
    }
}

impl<B> Body for Watched<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Passthrough { body } => body.poll_frame(cx),
            KindProj::Sse { body } => body.poll_frame(cx),
            KindProj::Grpc { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Passthrough { body } => body.is_end_stream(),
            Kind::Sse { body } => body.is_end_stream(),
            Kind::Grpc { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Passthrough { body } => body.size_hint(),
            // Partial events may be dropped and an error event added.
            Kind::Sse { .. } => SizeHint::default(),
            Kind::Grpc { body } => body.size_hint(),
        }
    }
}

impl<B> fmt::Debug for Watched<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match &self.kind {
            Kind::Passthrough { .. } => "ResponseBody::Passthrough",
            Kind::Sse { .. } => "ResponseBody::Sse",
            Kind::Grpc { .. } => "ResponseBody::Grpc",
        })
    }
}
