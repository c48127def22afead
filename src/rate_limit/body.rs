//! The response body of [`RateLimit`](super::RateLimit).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

use crate::usage::UsageBody;

pin_project! {
    /// The inner service's body, or a rejection rendered by the layer.
    ///
    /// When the request holds a token reservation or a concurrency slot,
    /// the inner body is observed ([`UsageBody`]): when it ends, fails or is
    /// dropped, the reservation is settled to the tokens the response used
    /// and the slot is freed. Streams included: a slot is held until the
    /// last event, or until the client hangs up.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner {
            #[pin]
            body: B,
        },
        Observed {
            #[pin]
            body: UsageBody<B>,
        },
        Full {
            #[pin]
            body: Full<Bytes>,
        },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        ResponseBody {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn observed(body: UsageBody<B>) -> Self {
        ResponseBody {
            kind: Kind::Observed { body },
        }
    }

    pub(crate) fn full(body: Full<Bytes>) -> Self {
        ResponseBody {
            kind: Kind::Full { body },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Observed { body } => body.poll_frame(cx),
            KindProj::Full { body } => match body.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Observed { body } => body.is_end_stream(),
            Kind::Full { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Observed { body } => body.size_hint(),
            Kind::Full { body } => body.size_hint(),
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { .. } => f.write_str("ResponseBody::Inner"),
            Kind::Observed { .. } => f.write_str("ResponseBody::Observed"),
            Kind::Full { .. } => f.write_str("ResponseBody::Full"),
        }
    }
}
