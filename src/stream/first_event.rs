//! The first event of a stream, when it is an error: the error response to
//! answer instead of a 200 stream.

use http::{HeaderMap, StatusCode};

use super::marker::{self, ERROR};
use crate::sse::FirstEvent;
use crate::{ApiError, Origin};

/// If the first event is an error, the error to answer with instead of a
/// stream. An event is an error when its name is `error` or its JSON has a
/// truthy `error` key (the test the OpenAI SDKs apply).
pub(crate) fn first_event_error(first: &FirstEvent, headers: &HeaderMap) -> Option<ApiError> {
    let event = first.event();
    let flags = marker::classify(&event);
    // A healthy first event has no `error` key: without the bytes `"error"`,
    // or a `\u` escape that could spell them, its data need not be parsed.
    if flags & ERROR == 0
        && event.name != Some(b"error")
        && memchr::memmem::find(event.data, b"\"error\"").is_none()
        && memchr::memmem::find(event.data, b"\\u").is_none()
    {
        return None;
    }
    let name = first.name();
    let name = if flags & ERROR != 0 {
        Some("error")
    } else {
        name.as_deref()
    };
    // An upstream's broken stream is a bad gateway unless the event says more.
    crate::envelope::parse_event(name, event.data, headers, StatusCode::BAD_GATEWAY)
        .map(|error| error.with_origin(Origin::Upstream))
}
