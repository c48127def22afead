//! Streams of server-sent events, with the stream faults played on them.
//!
//! Each endpoint lays out its whole stream as a list of [`Event`]s, some
//! marked as content (a text delta); [`respond`] sends them one by one and
//! plays `cut_after`, `error_after` and `stall_after` by counting content
//! events, so `error_after=0` fails a stream after its preamble
//! (`response.created`, `message_start`, an empty role chunk) but before any
//! text: the case where a gateway must still answer with an HTTP error.
//! When N is past the last delta the fault comes right after it, before the
//! events that end the stream.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;

use super::faults::Faults;

/// One SSE event, serialized.
#[derive(Debug, Clone)]
pub struct Event {
    bytes: Bytes,
    content: bool,
}

impl Event {
    /// `data: <json>` (OpenAI chat and completion chunks).
    pub fn data(json: &Value) -> Event {
        Event {
            bytes: Bytes::from(format!("data: {json}\n\n")),
            content: false,
        }
    }

    /// `event: <name>` and `data: <json>` (Responses API, Anthropic).
    pub fn named(name: &str, json: &Value) -> Event {
        Event {
            bytes: Bytes::from(format!("event: {name}\ndata: {json}\n\n")),
            content: false,
        }
    }

    /// `data: [DONE]`, the end of an OpenAI chat or completion stream.
    pub fn done() -> Event {
        Event {
            bytes: Bytes::from_static(b"data: [DONE]\n\n"),
            content: false,
        }
    }

    /// The same event, counted as content by the stream faults.
    pub fn content(mut self) -> Event {
        self.content = true;
        self
    }
}

/// The dialect's failure: the events sent in place of event number `sent`
/// (a count the Responses API needs for its `sequence_number`s).
pub type Failure = Box<dyn FnOnce(usize) -> Vec<Event> + Send>;

/// Where the fault "after `n` content events" happens: before the `n`th
/// content event, or right after the last one when there are fewer.
fn position(events: &[Event], n: usize) -> usize {
    let mut seen = 0;
    let mut after_last = None;
    for (i, event) in events.iter().enumerate() {
        if event.content {
            if seen == n {
                return i;
            }
            seen += 1;
            after_last = Some(i + 1);
        }
    }
    // No content at all: before the stream's last event.
    after_last.unwrap_or(events.len().saturating_sub(1))
}

/// A `200 text/event-stream` response that sends `events`, playing `faults`.
pub fn respond(events: Vec<Event>, faults: &Faults, failure: Failure) -> Response {
    let cut = faults.cut_after.map(|n| position(&events, n));
    let error = faults.error_after.map(|n| position(&events, n));
    let stall = faults.stall_after.map(|n| position(&events, n));
    let stall_for = Duration::from_millis(faults.stall_ms);
    let delay = faults.delay();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut failure = Some(failure);
        for (pos, event) in events.into_iter().enumerate() {
            if cut == Some(pos) {
                // Let what was sent reach the client before the connection dies.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tx
                    .send(Err(std::io::Error::other("mock upstream cut the stream")))
                    .await;
                return;
            }
            if error == Some(pos) {
                if let Some(failure) = failure.take() {
                    for event in failure(pos) {
                        if tx.send(Ok(event.bytes)).await.is_err() {
                            return;
                        }
                    }
                }
                return;
            }
            if stall == Some(pos) {
                tokio::time::sleep(stall_for).await;
            }
            if let Some(delay) = delay.filter(|_| pos > 0) {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Ok(event.bytes)).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn faults_count_content_events() {
        let plain = || Event::data(&json!({}));
        let text = || Event::data(&json!({"t": 1})).content();
        let events = vec![plain(), text(), text(), plain(), Event::done()];
        assert_eq!(position(&events, 0), 1);
        assert_eq!(position(&events, 1), 2);
        assert_eq!(position(&events, 2), 3);
        assert_eq!(position(&events, 9), 3);
        assert_eq!(position(&[plain(), Event::done()], 0), 1);
    }
}
