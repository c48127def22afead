//! The one SSE framer: where each event of a `text/event-stream` ends, and
//! what it says (its name, its data, a few flags).
//!
//! Three layers look inside streams: the stream layer watches for end
//! markers and holds back an unfinished event, the usage observer reads
//! usage chunks and counts the generated text, and the retry layer reads the
//! first event to see whether it is an error. They all frame with
//! [`Framer`], which reads the stream in the frames it arrives in (split at
//! any byte) and calls back once per event, and they share their work:
//!
//! - On the server, the stream layer's body frames every event anyway, so it
//!   hosts the usage observer's per-event callback ([`SseHost`] in the
//!   response extensions): a usage observer outside it hands over its
//!   callback instead of framing the stream a second time.
//! - The first event with data, once read (by the stream layer holding the
//!   head, or by the retry layer peeking), is left in the response
//!   extensions as a [`FirstEvent`]; the next layer that would read it finds
//!   it there instead.
//!
//! The framing follows the WHATWG SSE parser: lines end with `\n`, `\r\n`
//! or `\r` in any mix (a `\r\n` split across frames is one line end); a
//! blank line ends an event; `event:` names it, `data:` lines are joined
//! with `\n`, lines starting with `:` are comments. Every event with at
//! least one line is dispatched (a comment-only `: keep-alive` too, flagged
//! [`COMMENT`]); clients dispatch only those with data ([`DATA`]).
//!
//! A framer made with [`Framer::json_lines`] reads the other syntax LLM
//! streams come in, bare JSON objects one after another (HAI's, as
//! `application/x-ndjson`): each object is an event with data and no name
//! (see `json_lines.rs`), so every reader of events reads both alike.
//!
//! # Why one hold-back buffer
//!
//! An event split across frames has to be whole before it can be read (its
//! usage object, its marker), and the stream layer must not forward half an
//! event either (an error event appended to it would be glued to the half).
//! So the framer keeps the unfinished event's bytes (the first frame as the
//! `Bytes` it came in, no copy), and both needs are served by that one
//! buffer: when the event ends, it is read from the joined bytes and those
//! same bytes are what the stream layer forwards. An event larger than the
//! framer's limit is not held: its bytes are released as they come and it
//! is dispatched with only the first bytes of its name and data ([`PARTIAL`]).

mod fields;
mod framer;
mod host;
mod json_lines;
mod release;
#[cfg(test)]
mod tests;

use bytes::Bytes;

pub(crate) use self::framer::{Dispatch, Framer, null_usage_at};
pub(crate) use self::host::{EventSink, SseGuest, SseHost};
pub(crate) use self::release::Fed;

/// The event has a `data` field, so clients dispatch it.
pub(crate) const DATA: u8 = 1;
/// The event has a comment line (`: keep-alive`).
pub(crate) const COMMENT: u8 = 2;
/// The event's data is `[DONE]`.
pub(crate) const DONE: u8 = 4;
/// The event was larger than the framer's limit: its name and data are only
/// their first [`PREFIX`] bytes.
pub(crate) const PARTIAL: u8 = 8;
/// The stream ended before the event's blank line.
pub(crate) const UNFINISHED: u8 = 16;

/// The media type of a message, without its parameters (`text/event-stream`
/// of `text/event-stream; charset=utf-8`), to compare case-insensitively.
pub(crate) fn media_type(headers: &http::HeaderMap) -> Option<&[u8]> {
    let content_type = headers.get(http::header::CONTENT_TYPE)?.as_bytes();
    // `memchr`: a few vector steps, where a byte loop costs four
    // instructions a byte (this runs on every response).
    let essence = match memchr::memchr(b';', content_type) {
        Some(end) => &content_type[..end],
        None => content_type,
    };
    Some(essence.trim_ascii())
}

/// Whether `headers` say the body is an SSE stream.
pub(crate) fn is_event_stream(headers: &http::HeaderMap) -> bool {
    media_type(headers).is_some_and(|t| t.eq_ignore_ascii_case(b"text/event-stream"))
}

/// What a [`Framer`] calls with each event: a closure, or (on a hot path,
/// where the call must be inlined) a type of its own.
pub(crate) trait OnEvent {
    fn on_event(&mut self, event: &Event<'_>) -> Dispatch;
}

impl<F: FnMut(&Event<'_>) -> Dispatch> OnEvent for F {
    #[inline(always)]
    fn on_event(&mut self, event: &Event<'_>) -> Dispatch {
        self(event)
    }
}

/// Bytes kept of the name and the data of an event over the limit: enough
/// for every marker and error check.
pub(crate) const PREFIX: usize = 128;

/// One event, as a client sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Event<'a> {
    /// The `event:` field, if any (the last one).
    pub(crate) name: Option<&'a [u8]>,
    /// The `data:` lines joined by `\n` (empty without data).
    pub(crate) data: &'a [u8],
    /// [`DATA`], [`COMMENT`], [`DONE`], [`PARTIAL`], [`UNFINISHED`].
    pub(crate) flags: u8,
    /// The bytes the event was read from, when `data` lies in them.
    source: Option<&'a Bytes>,
    /// The event's length in the stream, blank line included (0 for a
    /// partial or unfinished event).
    len: usize,
}

impl<'a> Event<'a> {
    pub(crate) fn has_data(&self) -> bool {
        self.flags & DATA != 0
    }

    pub(crate) fn is_done(&self) -> bool {
        self.flags & DONE != 0
    }

    pub(crate) fn is_partial(&self) -> bool {
        self.flags & PARTIAL != 0
    }

    /// The data as shared `Bytes`: a slice of the frame it came in when it
    /// is one `data:` line, a copy otherwise.
    pub(crate) fn data_bytes(&self) -> Bytes {
        match self.source {
            Some(source) if within(source, self.data) => source.slice_ref(self.data),
            _ => Bytes::copy_from_slice(self.data),
        }
    }

    fn name_bytes(&self) -> Option<Bytes> {
        let name = self.name?;
        Some(match self.source {
            Some(source) if within(source, name) => source.slice_ref(name),
            _ => Bytes::copy_from_slice(name),
        })
    }
}

/// Whether `part` lies inside `whole` (so `Bytes::slice_ref` may take it).
fn within(whole: &[u8], part: &[u8]) -> bool {
    let (start, end) = (
        whole.as_ptr() as usize,
        whole.as_ptr() as usize + whole.len(),
    );
    let at = part.as_ptr() as usize;
    !part.is_empty() && at >= start && at + part.len() <= end
}

/// The first event with data of an SSE response, left in the response
/// extensions by the layer that read it (the stream layer holding the head,
/// the retry layer peeking), so that the next one does not read it again.
#[derive(Debug, Clone)]
pub(crate) struct FirstEvent {
    name: Option<Bytes>,
    data: Bytes,
    flags: u8,
    /// Its length at the end of the bytes read so far (0 when it cannot be
    /// cut out of them: partial or unfinished).
    len: usize,
}

impl FirstEvent {
    pub(crate) fn new(event: &Event<'_>) -> FirstEvent {
        FirstEvent {
            name: event.name_bytes(),
            data: event.data_bytes(),
            flags: event.flags,
            len: event.len,
        }
    }

    /// The event, to read again.
    pub(crate) fn event(&self) -> Event<'_> {
        Event {
            name: self.name.as_deref(),
            data: &self.data,
            flags: self.flags,
            source: Some(&self.data),
            len: self.len,
        }
    }

    /// The `event:` name as a client reads it (`message` when there is none).
    pub(crate) fn name_or_message(&self) -> std::borrow::Cow<'_, str> {
        match &self.name {
            Some(name) => String::from_utf8_lossy(name),
            None => std::borrow::Cow::Borrowed("message"),
        }
    }

    pub(crate) fn data(&self) -> &[u8] {
        &self.data
    }

    /// The event's length in the stream, if it may be cut out of it.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}
