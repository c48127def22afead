//! gRPC streaming responses: a failure becomes `grpc-status` trailers.
//!
//! A gRPC client reads a call's outcome from the trailers. When the upstream
//! body fails (or ends without trailers), the client would see a reset stream
//! or a missing status; instead it gets `grpc-status: 14` (UNAVAILABLE, from
//! the 502 the error maps to) and a `grpc-message`, and can retry.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::failure::Failure;
use crate::envelope::{GRPC_STATUS, grpc_trailers};
use crate::{ApiError, BoxError, Origin};

pin_project! {
    /// The body of a gRPC response: the inner frames, then status trailers
    /// if the inner body fails or ends without any.
    pub(crate) struct GrpcBody<B> {
        #[pin]
        body: B,
        // Trailers (or a trailers-only head) already carry a status.
        has_status: bool,
        done: bool,
    }
}

impl<B> GrpcBody<B> {
    pub(crate) fn new(body: B, head_has_status: bool) -> Self {
        GrpcBody {
            body,
            has_status: head_has_status,
            done: false,
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl<B> Body for GrpcBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match ready!(this.body.poll_frame(cx)) {
            Some(Ok(frame)) => {
                if frame
                    .trailers_ref()
                    .is_some_and(|t| t.contains_key(GRPC_STATUS))
                {
                    *this.has_status = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                *this.done = true;
                let error: BoxError = error.into();
                tracing::warn!(error = %error, "upstream gRPC stream failed; ending it with grpc-status trailers");
                let error = Failure::BodyError.error();
                Poll::Ready(Some(Ok(Frame::trailers(grpc_trailers(&error)))))
            }
            None => {
                *this.done = true;
                if *this.has_status {
                    return Poll::Ready(None);
                }
                let error = ApiError::bad_gateway()
                    .with_code("stream_truncated")
                    .with_message("The upstream stream ended without a gRPC status.")
                    .with_origin(Origin::Upstream);
                Poll::Ready(Some(Ok(Frame::trailers(grpc_trailers(&error)))))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        // Trailers add no data bytes, so the inner hint holds.
        self.body.size_hint()
    }
}
