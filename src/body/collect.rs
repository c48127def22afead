//! The one place bodies are read into memory: [`Buffered`] bytes, and the
//! bounded [`Collect`] future that fills them from a body.
//!
//! Three layers keep body bytes: request facts read the request body once
//! (bounded), the retry layer keeps a request body to replay it, and the
//! SSE framer holds back an event that is not complete yet. All of them keep
//! a body's first frame as the `Bytes` it came in (most bodies are one
//! frame: `Full`, small hyper bodies) and start a buffer, copying, only
//! when a second one comes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::Body;
use pin_project_lite::pin_project;

/// Bytes received and kept: one frame as it is, more joined.
#[derive(Debug, Default)]
pub(crate) enum Buffered {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Buffered {
    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes so far.
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Buffered::Empty => &[],
            Buffered::One(bytes) => bytes,
            Buffered::Many(buf) => buf,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        *self = match std::mem::take(self) {
            Buffered::Empty => Buffered::One(data),
            Buffered::One(first) => {
                let mut buf = BytesMut::with_capacity(first.len() + data.len());
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&data);
                Buffered::Many(buf)
            }
            Buffered::Many(mut buf) => {
                buf.extend_from_slice(&data);
                Buffered::Many(buf)
            }
        };
    }

    /// Everything kept, leaving the buffer empty.
    #[inline]
    pub(crate) fn take(&mut self) -> Bytes {
        match std::mem::take(self) {
            Buffered::Empty => Bytes::new(),
            Buffered::One(bytes) => bytes,
            Buffered::Many(buf) => buf.freeze(),
        }
    }

    /// Everything kept, which stays kept (a joined buffer is frozen first,
    /// so the copy is shared, not made again).
    pub(crate) fn share(&mut self) -> Bytes {
        let bytes = self.take();
        if !bytes.is_empty() {
            *self = Buffered::One(bytes.clone());
        }
        bytes
    }
}

/// How collecting a body ended.
#[derive(Debug)]
pub(crate) enum Collected<E> {
    /// The whole body's data (its trailers are not kept).
    Complete(Bytes),
    /// The body has more than the limit: what was read is dropped.
    TooLarge,
    /// The body failed.
    Failed(E),
}

pin_project! {
    /// Reads a body's data frames into memory, up to `limit` bytes.
    pub(crate) struct Collect<B> {
        #[pin]
        body: B,
        buffered: Buffered,
        limit: usize,
    }
}

impl<B> Collect<B> {
    pub(crate) fn new(body: B, limit: usize) -> Self {
        Collect {
            body,
            buffered: Buffered::Empty,
            limit,
        }
    }
}

impl<B> Future for Collect<B>
where
    B: Body<Data = Bytes>,
{
    type Output = Collected<B::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match ready!(this.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if this.buffered.len().saturating_add(data.len()) > *this.limit {
                            *this.buffered = Buffered::Empty;
                            return Poll::Ready(Collected::TooLarge);
                        }
                        this.buffered.push(data);
                    }
                    if this.body.is_end_stream() {
                        break;
                    }
                }
                Some(Err(error)) => return Poll::Ready(Collected::Failed(error)),
                None => break,
            }
        }
        Poll::Ready(Collected::Complete(this.buffered.take()))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures_util::stream;
    use http_body::Frame;
    use http_body_util::{Full, StreamBody};

    use super::*;

    #[test]
    fn one_frame_is_kept_without_a_copy() {
        let mut buf = Buffered::default();
        let one = Bytes::from_static(b"abc");
        buf.push(one.clone());
        assert_eq!(buf.len(), 3);
        assert_eq!(buf.take().as_ptr(), one.as_ptr());
        buf.push(Bytes::from_static(b"ab"));
        buf.push(Bytes::new());
        buf.push(Bytes::from_static(b"cd"));
        assert_eq!(buf.as_slice(), b"abcd");
        let shared = buf.share();
        assert_eq!(buf.take().as_ptr(), shared.as_ptr());
        assert!(buf.is_empty());
    }

    fn frames(
        parts: &[&'static str],
    ) -> StreamBody<impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
        let frames: Vec<_> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(stream::iter(frames))
    }

    #[tokio::test]
    async fn collects_up_to_the_limit() {
        let body = Full::new(Bytes::from_static(b"whole"));
        assert!(matches!(Collect::new(body, 5).await, Collected::Complete(b) if b == "whole"));
        let joined = Collect::new(frames(&["ab", "cd"]), 4).await;
        assert!(matches!(joined, Collected::Complete(b) if b == "abcd"));
        let over = Collect::new(frames(&["ab", "cd", "e"]), 4).await;
        assert!(matches!(over, Collected::TooLarge));
        let failing = StreamBody::new(stream::iter([
            Ok(Frame::data(Bytes::from_static(b"a"))),
            Err("cut"),
        ]));
        assert!(matches!(
            Collect::new(failing, 4).await,
            Collected::Failed("cut")
        ));
    }
}
