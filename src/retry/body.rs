//! The response body of [`Retry`](super::Retry), and the reading of a
//! stream's first event behind a peek.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::sse::{Dispatch, Event, FirstEvent, Framer};

/// The body of a response that went through [`Retry`](super::Retry): the
/// inner body with the bytes the layer peeked put back ([`Peeked`]), or a
/// rejection rendered by the layer.
pub type ResponseBody<B> = crate::body::ResponseBody<Peeked<B>>;

pin_project! {
    /// The inner service's response body, with the bytes the layer read to
    /// classify it (an error body's start, an event stream's first event) put
    /// back in front.
    ///
    /// Nothing the inner body yields is lost or reordered: peeked data comes
    /// first, then the rest of the inner body, its trailers, or its error.
    pub struct Peeked<B>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<B, B::Error>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B, E> {
        Inner { #[pin] body: B },
        Peeked { head: Bytes, tail: Tail<E>, body: Pin<Box<B>> },
    }
}

/// What follows the peeked bytes.
pub(crate) enum Tail<E> {
    /// The rest of the inner body.
    Body,
    /// The inner body ended with trailers while being peeked.
    Trailers(HeaderMap),
    /// The inner body failed while being peeked.
    Error(E),
    /// The inner body ended while being peeked.
    End,
}

/// The inner body, not peeked.
pub(crate) fn inner<B: Body>(body: B) -> ResponseBody<B> {
    ResponseBody::inner(Peeked {
        kind: Kind::Inner { body },
    })
}

/// The inner body, with `head` put back in front and `tail` after it.
pub(crate) fn peeked<B: Body>(
    head: Bytes,
    tail: Tail<B::Error>,
    body: Pin<Box<B>>,
) -> ResponseBody<B> {
    ResponseBody::inner(Peeked {
        kind: Kind::Peeked { head, tail, body },
    })
}

impl<B> Body for Peeked<B>
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
            KindProj::Peeked { head, tail, body } => {
                if !head.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(std::mem::take(head)))));
                }
                if let Tail::Body = tail {
                    return body.as_mut().poll_frame(cx);
                }
                match std::mem::replace(tail, Tail::End) {
                    Tail::Trailers(trailers) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                    Tail::Error(error) => Poll::Ready(Some(Err(error))),
                    Tail::Body | Tail::End => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Peeked { head, tail, body } => {
                head.is_empty()
                    && match tail {
                        Tail::Body => body.is_end_stream(),
                        Tail::End => true,
                        Tail::Trailers(_) | Tail::Error(_) => false,
                    }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Peeked { head, tail, body } => {
                let head = head.len() as u64;
                match tail {
                    Tail::Body => {
                        let rest = body.size_hint();
                        let mut hint = SizeHint::new();
                        if let Some(upper) = rest.upper() {
                            hint.set_upper(upper.saturating_add(head));
                        }
                        hint.set_lower(rest.lower().saturating_add(head));
                        hint
                    }
                    _ => SizeHint::with_exact(head),
                }
            }
        }
    }
}

impl<B: Body> fmt::Debug for Peeked<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { .. } => f.write_str("ResponseBody::Inner"),
            Kind::Peeked { head, .. } => f
                .debug_struct("ResponseBody::Peeked")
                .field("peeked_bytes", &head.len())
                .finish_non_exhaustive(),
        }
    }
}

/// Reads a stream's frames, as the peek gets them, until its first event
/// with data.
#[derive(Debug)]
pub(crate) struct FirstEventReader {
    framer: Framer,
    first: Option<FirstEvent>,
}

impl FirstEventReader {
    /// A reader that holds back at most `limit` bytes of an event.
    pub(crate) fn new(limit: usize) -> Self {
        FirstEventReader {
            framer: Framer::new(limit),
            first: None,
        }
    }

    /// Reads the next frame; `true` once the first event with data is read.
    pub(crate) fn feed(&mut self, frame: &Bytes) -> bool {
        if self.first.is_none() {
            let first = &mut self.first;
            self.framer.feed(frame, &mut |event: &Event<'_>| {
                if !event.has_data() {
                    return Dispatch::Keep;
                }
                *first = Some(FirstEvent::new(event));
                Dispatch::Pause
            });
        }
        self.first.is_some()
    }

    pub(crate) fn first(&self) -> Option<&FirstEvent> {
        self.first.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use proptest::prelude::*;

    fn first_event(chunks: &[&[u8]]) -> Option<(String, Vec<u8>)> {
        let mut reader = FirstEventReader::new(1 << 16);
        for chunk in chunks {
            if reader.feed(&Bytes::copy_from_slice(chunk)) {
                break;
            }
        }
        reader
            .first()
            .map(|first| (first.name_or_message().into_owned(), first.data().to_vec()))
    }

    #[test]
    fn finds_the_first_event() {
        let e = first_event(&[b"data: {\"a\":1}\n\ndata: 2\n\n"]).unwrap();
        assert_eq!(e, ("message".into(), b"{\"a\":1}".to_vec()));
        let e =
            first_event(&[b": keep-alive\n\nevent: error\r\ndata: x\r\ndata: y\r\n\r\n"]).unwrap();
        assert_eq!(e, ("error".into(), b"x\ny".to_vec()));
        // Split anywhere, including between \r and \n.
        let e = first_event(&[b"event: e\r", b"\ndata:z\r", b"\n", b"\r\n"]).unwrap();
        assert_eq!(e, ("e".into(), b"z".to_vec()));
        // A block without data is not an event, and resets the type.
        let e = first_event(&[b"event: ping\n\n", b"data: 1\n\n"]).unwrap();
        assert_eq!(e.0, "message");
        assert_eq!(first_event(&[b"data: incomplete\n"]), None);
        assert_eq!(first_event(&[b": only comments\n\n"]), None);
    }

    proptest! {
        #[test]
        fn chunking_does_not_matter(split in 0usize..60, text in "(data: [a-z]{0,5}\r?\n|: c\n|event: [a-z]{1,3}\n|\r?\n){1,8}") {
            let bytes = text.as_bytes();
            let split = split.min(bytes.len());
            let whole = first_event(&[bytes]);
            let parts = first_event(&[&bytes[..split], &bytes[split..]]);
            prop_assert_eq!(whole, parts);
        }
    }

    #[tokio::test]
    async fn peeked_body_puts_the_bytes_back() {
        let body: ResponseBody<Full<Bytes>> = peeked(
            Bytes::from_static(b"head "),
            Tail::Body,
            Box::pin(Full::new(Bytes::from_static(b"rest"))),
        );
        assert_eq!(body.size_hint().exact(), Some(9));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"head rest");

        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let body: ResponseBody<Full<Bytes>> = peeked(
            Bytes::from_static(b"all"),
            Tail::Trailers(trailers),
            Box::pin(Full::new(Bytes::new())),
        );
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(&collected.to_bytes()[..], b"all");
    }
}
