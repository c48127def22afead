//! `tollgate_streams_active` and `tollgate_stream_errors_total`: a body
//! wrapper just outside the stream trailer layer, where every stream ends
//! either as its API ends it or with exactly one terminal error event.
//!
//! The wrapper keeps a reference to the last frame it passed on (a
//! reference count, not a copy); when the stream ends it reads that frame's
//! events once for an error event and counts its reason. A stream dropped
//! before its end (the client hung up) counts as `client_closed`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::{Metrics, labels};

/// Why a stream did not end as its API ends it.
const REASONS: [&str; 6] = [
    "upstream_failed",
    "truncated",
    "idle_timeout",
    "shutdown",
    "upstream_error",
    "client_closed",
];
const CLIENT_CLOSED: usize = 5;

/// Watches the streams of the responses it is given.
#[derive(Clone)]
pub struct StreamMeter(Arc<Handles>);

struct Handles {
    active: Gauge,
    errors: [Counter; 6],
}

impl StreamMeter {
    pub(super) fn new(metrics: &Metrics) -> StreamMeter {
        let f = &metrics.inner;
        StreamMeter(Arc::new(Handles {
            active: f.streams_active.clone(),
            errors: REASONS.map(|reason| {
                f.stream_errors
                    .get_or_create(&labels([("reason", reason)]))
                    .clone()
            }),
        }))
    }

    /// `response`, its body watched when it is a stream (`200
    /// text/event-stream`).
    pub fn watch<B>(&self, response: http::Response<B>) -> http::Response<MeteredBody<B>> {
        let stream = response.status() == StatusCode::OK
            && response
                .headers()
                .get(CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let watch = stream.then(|| {
            self.0.active.inc();
            Watch {
                handles: self.0.clone(),
                last: Bytes::new(),
                ended: false,
            }
        });
        response.map(|body| MeteredBody { body, watch })
    }
}

/// One stream being watched; counted out when dropped.
struct Watch {
    handles: Arc<Handles>,
    last: Bytes,
    ended: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.handles.active.dec();
        let reason = if self.ended {
            terminal_error(&self.last)
        } else {
            Some(CLIENT_CLOSED)
        };
        if let Some(reason) = reason {
            self.handles.errors[reason].inc();
        }
    }
}

pin_project! {
    /// A response body, watched when it is a stream.
    pub struct MeteredBody<B> {
        #[pin]
        body: B,
        watch: Option<Watch>,
    }
}

impl<B: Body<Data = Bytes>> Body for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.body.as_mut().poll_frame(cx));
        if let Some(watch) = this.watch.as_mut() {
            match &frame {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref().filter(|d| !d.is_empty()) {
                        watch.last = data.clone();
                    }
                    // The server stops polling a body that says it is at
                    // its end: this was its last frame.
                    if this.body.is_end_stream() {
                        watch.ended = true;
                        *this.watch = None;
                    }
                }
                Some(Err(_)) => {
                    watch.ended = true;
                    watch.last =
                        Bytes::from_static(b"data: {\"error\":{\"code\":\"bad_gateway\"}}\n\n");
                    *this.watch = None;
                }
                None => {
                    watch.ended = true;
                    *this.watch = None;
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The reason of the error event in `frame`, the last one a stream sent,
/// if it holds one.
fn terminal_error(frame: &[u8]) -> Option<usize> {
    // Cheap test first: most streams end with `[DONE]` or their last event.
    memchr::memmem::find(frame, b"error")?;
    let text = std::str::from_utf8(frame).ok()?;
    let headers = HeaderMap::new();
    let error = text.split("\n\n").find_map(|event| {
        let mut name = None;
        let mut data = None;
        for line in event.lines() {
            if let Some(n) = line.strip_prefix("event:") {
                name = Some(n.trim());
            } else if let Some(d) = line.strip_prefix("data:") {
                data = Some(d.trim());
            }
        }
        tollgate::envelope::parse_event(name, data?.as_bytes(), &headers, StatusCode::BAD_GATEWAY)
    })?;
    Some(match error.code() {
        Some("bad_gateway") => 0,
        Some("stream_truncated") => 1,
        Some("timeout") => 2,
        Some("shutting_down") => 3,
        _ => 4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_events_are_classified() {
        let chat = b"data: {\"error\":{\"message\":\"cut\",\"type\":\"server_error\",\"param\":null,\"code\":\"stream_truncated\"}}\n\n";
        assert_eq!(terminal_error(chat), Some(1));
        let anthropic = b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        assert_eq!(terminal_error(anthropic), Some(4));
        assert_eq!(terminal_error(b"data: [DONE]\n\n"), None);
        assert_eq!(
            terminal_error(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
            None
        );
    }
}
