//! Response bodies shared by the layers: the inner service's body, or a
//! rejection rendered by tollgate.
//!
//! Every layer that can short-circuit answers with [`ResponseBody`], an enum
//! of its inner body and a `Full<Bytes>`: no boxing, and no `B: Default`
//! bound. A layer that wraps the inner body (the rate limit's usage
//! observer, the retry layer's peeked bytes, the stream layer's watcher)
//! puts its own body in the `Inner` arm, so the rejection arm is written
//! once, here.
//!
//! [`DetachLayer`] ([`detach`]) keeps reading a response body after its
//! client went away, so that the layers inside settle on its whole answer.
//!
//! ```
//! use bytes::Bytes;
//! use http_body::Body;
//! use http_body_util::{BodyExt, Empty};
//! use tollgate::body::ResponseBody;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let rejected: ResponseBody<Empty<Bytes>> = ResponseBody::full(Bytes::from_static(b"no"));
//! assert_eq!(rejected.size_hint().exact(), Some(2));
//! let bytes = rejected.collect().await.unwrap().to_bytes();
//! assert_eq!(&bytes[..], b"no");
//! # }
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

pub(crate) mod collect;
pub mod detach;

pub use self::detach::{Detach, DetachFuture, DetachLayer, DetachedBody, DetachedCalls};

pin_project! {
    /// The inner service's body, or a rejection's `Full<Bytes>`.
    ///
    /// Each variant's `body` field is the body it stands for.
    #[project = ResponseBodyProj]
    #[allow(missing_docs)]
    pub enum ResponseBody<B> {
        /// The inner service answered.
        Inner {
            #[pin]
            body: B,
        },
        /// A tollgate layer answered (a rejection or a re-rendered error).
        Full {
            #[pin]
            body: Full<Bytes>,
        },
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        ResponseBody::Inner { body }
    }

    /// A complete body of `bytes`.
    pub fn full(bytes: Bytes) -> Self {
        ResponseBody::Full {
            body: Full::new(bytes),
        }
    }

    /// Converts a rendered `Full<Bytes>`.
    pub fn from_full(body: Full<Bytes>) -> Self {
        ResponseBody::Full { body }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    // Inline: every layer's body is one of these around the next, and each
    // frame of a response goes through them all.
    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            ResponseBodyProj::Inner { body } => body.poll_frame(cx),
            ResponseBodyProj::Full { body } => body.poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Inner { body } => body.is_end_stream(),
            ResponseBody::Full { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Inner { body } => body.size_hint(),
            ResponseBody::Full { body } => body.size_hint(),
        }
    }
}

/// The inner body's own `Debug` (the layers' inner bodies say what they
/// are: `ResponseBody::Passthrough`, `UsageBody`, …), or
/// `ResponseBody::Full`: a rejection's bytes are not printed.
impl<B: std::fmt::Debug> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseBody::Inner { body } => body.fmt(f),
            ResponseBody::Full { .. } => f.write_str("ResponseBody::Full"),
        }
    }
}

/// Renders `error` in the OpenAI format as a response with a [`ResponseBody`].
/// Every layer rejects through this, so each is useful alone and an outer
/// `ErrorEnvelopeLayer` finds the `ApiError` in the response extensions.
pub fn reject<B>(error: crate::ApiError) -> http::Response<ResponseBody<B>> {
    error.into_http_response().map(ResponseBody::from_full)
}

/// Whether a body's bytes are not its content: a `content-encoding` other
/// than `identity` (or one unreadable), which no layer can read or append to.
pub(crate) fn is_encoded(headers: &http::HeaderMap) -> bool {
    let identity = |v: &str| v.trim().eq_ignore_ascii_case("identity");
    let encodings = headers.get_all(http::header::CONTENT_ENCODING);
    encodings.iter().any(|v| !v.to_str().is_ok_and(identity))
}
