//! The response body of [`Retry`](super::Retry), and the buffers behind
//! replayable requests and peeked responses.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

pin_project! {
    /// The inner service's response body, with the bytes the layer read to
    /// classify it (an error body's start, an event stream's first event) put
    /// back in front; or a rejection rendered by the layer.
    ///
    /// Nothing the inner body yields is lost or reordered: peeked data comes
    /// first, then the rest of the inner body, its trailers, or its error.
    pub struct ResponseBody<B>
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
        Rejected { body: Full<Bytes> },
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

impl<B: Body> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        ResponseBody {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn peeked(head: Bytes, tail: Tail<B::Error>, body: Pin<Box<B>>) -> Self {
        ResponseBody {
            kind: Kind::Peeked { head, tail, body },
        }
    }

    pub(crate) fn rejected(bytes: Full<Bytes>) -> Self {
        ResponseBody {
            kind: Kind::Rejected { body: bytes },
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
            KindProj::Rejected { body } => match Pin::new(body).poll_frame(cx) {
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
            Kind::Peeked { head, tail, body } => {
                head.is_empty()
                    && match tail {
                        Tail::Body => body.is_end_stream(),
                        Tail::End => true,
                        Tail::Trailers(_) | Tail::Error(_) => false,
                    }
            }
            Kind::Rejected { body } => body.is_end_stream(),
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
            Kind::Rejected { body } => body.size_hint(),
        }
    }
}

impl<B: Body> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { .. } => f.write_str("ResponseBody::Inner"),
            Kind::Peeked { head, .. } => f
                .debug_struct("ResponseBody::Peeked")
                .field("peeked_bytes", &head.len())
                .finish_non_exhaustive(),
            Kind::Rejected { .. } => f.write_str("ResponseBody::Rejected"),
        }
    }
}

/// A request body being read into memory: one chunk is kept as it is, more
/// are joined.
#[derive(Debug, Default)]
pub(crate) enum BodyBuf {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl BodyBuf {
    pub(crate) fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        *self = match std::mem::take(self) {
            BodyBuf::Empty => BodyBuf::One(data),
            BodyBuf::One(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + data.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
                BodyBuf::Many(joined)
            }
            BodyBuf::Many(mut joined) => {
                joined.extend_from_slice(&data);
                BodyBuf::Many(joined)
            }
        };
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        match self {
            BodyBuf::Empty => 0,
            BodyBuf::One(b) => b.len(),
            BodyBuf::Many(b) => b.len(),
        }
    }

    pub(crate) fn take(&mut self) -> Bytes {
        match std::mem::take(self) {
            BodyBuf::Empty => Bytes::new(),
            BodyBuf::One(b) => b,
            BodyBuf::Many(b) => b.freeze(),
        }
    }
}

/// Finds the first event of a `text/event-stream`, fed the stream's bytes
/// as they arrive (each call sees the whole buffer so far; only new bytes
/// are scanned). Follows the WHATWG framing: `\n`, `\r\n` or `\r` line ends,
/// comments skipped, blocks without `data` not dispatched.
#[derive(Debug, Default)]
pub(crate) struct SseScanner {
    pos: usize,
    line_start: usize,
    skip_lf: bool,
    event: String,
    data: Vec<u8>,
    has_data: bool,
    done: bool,
}

impl SseScanner {
    /// Scans the new part of `buf`; `true` once the first event is complete.
    pub(crate) fn feed(&mut self, buf: &[u8]) -> bool {
        while !self.done && self.pos < buf.len() {
            if std::mem::take(&mut self.skip_lf) && buf[self.pos] == b'\n' {
                self.pos += 1;
                self.line_start = self.pos;
                continue;
            }
            let Some(offset) = memchr::memchr2(b'\n', b'\r', &buf[self.pos..]) else {
                self.pos = buf.len();
                break;
            };
            let end = self.pos + offset;
            self.skip_lf = buf[end] == b'\r';
            let line = &buf[self.line_start..end];
            self.pos = end + 1;
            self.line_start = self.pos;
            if line.is_empty() {
                if self.has_data {
                    self.done = true;
                } else {
                    self.event.clear();
                }
            } else {
                self.field(line);
            }
        }
        self.done
    }

    fn field(&mut self, line: &[u8]) {
        if line.first() == Some(&b':') {
            return;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
            _ => {}
        }
    }

    /// The first event's type and data, once [`feed`](Self::feed) returned `true`.
    pub(crate) fn event(&self) -> Option<(&str, &[u8])> {
        if !self.done {
            return None;
        }
        let name = if self.event.is_empty() {
            "message"
        } else {
            &self.event
        };
        Some((name, &self.data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use proptest::prelude::*;

    fn first_event(chunks: &[&[u8]]) -> Option<(String, Vec<u8>)> {
        let mut buf = Vec::new();
        let mut scanner = SseScanner::default();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            if scanner.feed(&buf) {
                break;
            }
        }
        scanner
            .event()
            .map(|(name, data)| (name.to_owned(), data.to_vec()))
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
        let body: ResponseBody<Full<Bytes>> = ResponseBody::peeked(
            Bytes::from_static(b"head "),
            Tail::Body,
            Box::pin(Full::new(Bytes::from_static(b"rest"))),
        );
        assert_eq!(body.size_hint().exact(), Some(9));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"head rest");

        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let body: ResponseBody<Full<Bytes>> = ResponseBody::peeked(
            Bytes::from_static(b"all"),
            Tail::Trailers(trailers),
            Box::pin(Full::new(Bytes::new())),
        );
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(&collected.to_bytes()[..], b"all");
    }

    #[test]
    fn body_buf_joins_only_when_needed() {
        let mut buf = BodyBuf::default();
        let one = Bytes::from_static(b"abc");
        buf.push(one.clone());
        assert_eq!(buf.len(), 3);
        let taken = buf.take();
        assert_eq!(taken.as_ptr(), one.as_ptr());
        buf.push(Bytes::from_static(b"ab"));
        buf.push(Bytes::new());
        buf.push(Bytes::from_static(b"cd"));
        assert_eq!(&buf.take()[..], b"abcd");
    }
}
