//! Which events end a stream: the end markers of each protocol, and errors.
//!
//! The events themselves come from the crate's one SSE framer
//! ([`crate::sse`]); this module only reads their name and the first bytes
//! of their data, which is all a marker needs (and all the framer keeps of
//! an event over its limit).

use crate::json::Cursor;
use crate::sse::Event;

/// `event: error`, data that opens with `{"error"` (not null) or
/// `{"type":"error"`, or HAI's finishing chunk whose `finish_reason` is an
/// error code.
pub(crate) const ERROR: u8 = 1;
/// The event ends the stream: `data: [DONE]`, `message_stop`,
/// `response.completed|failed|incomplete`, HAI's finishing chunk (one whose
/// `delta.meta_data.finish_reason` is set), or an error.
pub(crate) const TERMINAL: u8 = 2;

/// The marker flags of `event`.
#[inline]
pub(crate) fn classify(event: &Event<'_>) -> u8 {
    let named = event.name.map_or(0, classify_name);
    if event.has_data() {
        named | classify_data(event.data)
    } else {
        named
    }
}

/// Whether `event` ends the stream.
#[inline]
pub(crate) fn ends_stream(event: &Event<'_>) -> bool {
    classify(event) & TERMINAL != 0
}

/// Whether `event`, cut short by the end of the stream (no blank line),
/// still ends it: a marker whose data is whole (`[DONE]`, or JSON that
/// parses), not one whose name came and whose data was cut.
pub(crate) fn ends_stream_unfinished(event: &Event<'_>) -> bool {
    ends_stream(event)
        && (event.is_done() || serde_json::from_slice::<serde::de::IgnoredAny>(event.data).is_ok())
}

#[inline]
fn classify_data(value: &[u8]) -> u8 {
    let object = match value {
        [b'[', ..] => {
            return if value.starts_with(b"[DONE]") {
                TERMINAL
            } else {
                0
            };
        }
        // The hot path: a chunk whose first key starts with none of `e`
        // (`error`), `t` (`type`) and `m` (HAI's `message_id`), like every
        // `{"id":…` chat chunk.
        [b'{', b'"', first, ..] if !matches!(first, b'e' | b't' | b'm') => return 0,
        [b'{', object @ ..] => object,
        _ => return 0,
    };
    match first_member(object) {
        Some((b"error", value)) if !value.starts_with(b"null") => ERROR | TERMINAL,
        Some((b"type", value)) => match json_string(value) {
            Some(name) => classify_name(name),
            None => 0,
        },
        // HAI's chunk shape (003-hai-errors.txt) opens with `message_id`.
        Some((b"message_id", _)) => hai_finish(object),
        _ => 0,
    }
}

/// A HAI chunk's verdict: its `meta_data` is `null` in every chunk but the
/// last, which carries the stream's `finish_reason`: an error code of HAI's
/// table (or any `…_error`) for a failed stream, else a normal end.
fn hai_finish(chunk: &[u8]) -> u8 {
    let Some(at) = memchr::memmem::find(chunk, b"\"meta_data\"") else {
        return 0;
    };
    let Some(meta) = member_value(&chunk[at + 11..]) else {
        return 0;
    };
    if !meta.starts_with(b"{") {
        return 0;
    }
    let Some(at) = memchr::memmem::find(meta, b"\"finish_reason\"") else {
        return 0;
    };
    match member_value(&meta[at + 15..]).and_then(json_string) {
        Some(reason) if is_hai_error(reason) => ERROR | TERMINAL,
        Some(_) => TERMINAL,
        None => 0,
    }
}

/// Whether a HAI `finish_reason` says the stream failed: one of the codes
/// of HAI's error table, or another `…_error`.
pub(crate) fn is_hai_error(reason: &[u8]) -> bool {
    reason.ends_with(b"_error")
        || crate::envelope::HAI_TABLE
            .iter()
            .any(|row| row.code.as_bytes() == reason)
}

/// What follows a key's closing quote: its value, past the colon.
fn member_value(after_key: &[u8]) -> Option<&[u8]> {
    let mut value = Cursor::new(after_key);
    value.eat(b':')?;
    Some(value.rest())
}

fn classify_name(name: &[u8]) -> u8 {
    match name {
        b"error" => ERROR | TERMINAL,
        b"message_stop" | b"response.completed" | b"response.failed" | b"response.incomplete" => {
            TERMINAL
        }
        _ => 0,
    }
}

/// The first key of a JSON object (after its `{`) and its value, past the
/// colon. An escaped key is no key a marker looks for.
fn first_member(object: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut member = Cursor::new(object);
    let key = member.key(false)?;
    Some((key, member.rest()))
}

/// The content of a JSON string without escapes at the start of `s` (every
/// name a marker compares is plain ASCII, so an escaped one is none of them).
fn json_string(s: &[u8]) -> Option<&[u8]> {
    let mut string = Cursor::new(s);
    string.literal(b"\"")?;
    let read = string.string()?;
    (!read.escaped).then_some(read.raw)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::sse::{Dispatch, Framer, UNFINISHED};

    /// Runs `stream` through a framer in the given pieces; returns the
    /// absolute event boundaries (where released bytes end), the event
    /// count and whether a terminal event was seen.
    fn run(pieces: &[&[u8]]) -> (Vec<usize>, u32, bool) {
        let mut framer = Framer::new(1 << 20);
        let mut released = 0;
        let mut bounds = Vec::new();
        let mut events = 0;
        let mut terminal = false;
        for piece in pieces {
            let frame = Bytes::copy_from_slice(piece);
            let fed = framer.feed(&frame, &mut |e: &Event<'_>| {
                terminal |= ends_stream(e);
                Dispatch::Keep
            });
            events += fed.events;
            let len: usize = fed.release(frame).pieces().map(|p| p.len()).sum();
            if len > 0 {
                released += len;
                bounds.push(released);
            }
        }
        (bounds, events, terminal)
    }

    #[test]
    fn markers_of_each_protocol() {
        for (stream, terminal) in [
            (&b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n"[..], true),
            (b"data:[DONE]\n\n", true),
            (b"data: {\"choices\":[]}\n\n", false),
            (
                b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
                true,
            ),
            (b"data: {\"type\": \"message_stop\"}\n\n", true),
            (b"event: message_stop_soon\ndata: {}\n\n", false),
            (
                b"event: response.completed\r\ndata: {\"type\":\"response.completed\"}\r\n\r\n",
                true,
            ),
            (b"data: {\"type\":\"response.failed\"}\r\r", true),
            (b"data: {\"error\":{\"message\":\"x\"}}\n\n", true),
            (b"data: {\"error\":null}\n\n", false),
            (b"event: error\ndata: {}\n\n", true),
            // Content that merely mentions a marker is not one.
            (
                b"data: {\"choices\":[{\"delta\":{\"content\":\"data: [DONE]\"}}]}\n\n",
                false,
            ),
            (b": data: [DONE]\n\n", false),
            // A marker without the blank line has not been dispatched.
            (b"data: [DONE]\n", false),
        ] {
            assert_eq!(
                run(&[stream]).2,
                terminal,
                "{:?}",
                String::from_utf8_lossy(stream)
            );
        }
    }

    #[test]
    fn boundaries_for_every_line_ending() {
        assert_eq!(run(&[b"data: a\n\ndata: b\n\n"]).0, vec![18]);
        assert_eq!(run(&[b"data: a\r\n\r\n"]), (vec![11], 1, false));
        assert_eq!(run(&[b"data: a\r\r"]), (vec![9], 1, false));
        assert_eq!(run(&[b"data: a\r", b"\r", b"\n"]), (vec![9, 10], 1, false));
        assert_eq!(run(&[b"data: a\r\n", b"\r", b"\n"]).0, vec![10, 11]);
        // The `\n` after a `\r` blank line seen in a later frame is no event.
        assert_eq!(run(&[b"data: a\r\r", b"\ndata: b\n\n"]).1, 2);
        // Extra blank lines are boundaries but not events.
        assert_eq!(run(&[b"\n\n\n"]), (vec![3], 0, false));
        assert_eq!(run(&[b": ping\n\n"]), (vec![8], 1, false));
    }

    #[test]
    fn finish_sees_an_unterminated_marker() {
        let finish = |pieces: &[&'static [u8]]| {
            let mut framer = Framer::new(1 << 20);
            let mut terminal = false;
            let mut on = |e: &Event<'_>| {
                assert_eq!(e.flags & UNFINISHED, UNFINISHED);
                terminal |= ends_stream(e);
                Dispatch::Keep
            };
            for piece in pieces {
                framer.feed(&Bytes::from_static(piece), &mut on);
            }
            framer.finish(&mut on);
            terminal
        };
        assert!(finish(&[b"data: [DO", b"NE]"]));
        assert!(!finish(&[b"data: {\"choices\""]));
    }

    #[test]
    fn long_lines_are_bounded() {
        let mut line = b"event: ".to_vec();
        line.extend(std::iter::repeat_n(b'x', 500));
        line.extend_from_slice(b"\ndata: {}\n\n");
        let (a, b) = line.split_at(10);
        assert_eq!(run(&[a, b]), (vec![line.len()], 1, false));
        // In small frames, the framer holds no more than its limit.
        let mut framer = Framer::new(64);
        let mut events = 0;
        for piece in line.chunks(10) {
            framer.feed(&Bytes::copy_from_slice(piece), &mut |e: &Event<'_>| {
                events += 1;
                assert!(e.is_partial() && !ends_stream(e));
                Dispatch::Keep
            });
            assert!(framer.held_len() <= 64);
        }
        assert_eq!(events, 1);
    }

    #[test]
    fn an_event_over_the_limit_still_ends_the_stream() {
        let big = format!(
            "event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":\"{}\"}}\n\n",
            "x".repeat(1000)
        );
        for (chunk, limit) in [(50, 100), (1, 4), (7, 16)] {
            let mut framer = Framer::new(limit);
            let mut terminal = false;
            for chunk in big.as_bytes().chunks(chunk) {
                framer.feed(&Bytes::copy_from_slice(chunk), &mut |e: &Event<'_>| {
                    assert!(e.is_partial());
                    terminal |= ends_stream(e);
                    Dispatch::Keep
                });
            }
            assert!(terminal, "{chunk} {limit}");
        }
    }

    fn event_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            "[a-z \\[\\]{}\":,]{0,40}".prop_map(|s| format!("data: {s}")),
            Just("data: {\"choices\":[{\"delta\":{\"content\":\"[DONE]\"}}]}".to_owned()),
            Just(": keep-alive".to_owned()),
            Just("event: content_block_delta\ndata: {\"type\":\"content_block_delta\"}".to_owned()),
        ]
        .prop_map(String::into_bytes)
    }

    fn terminal_strategy() -> impl Strategy<Value = Option<Vec<u8>>> {
        prop_oneof![
            Just(None),
            Just(Some(b"data: [DONE]".to_vec())),
            Just(Some(
                b"event: message_stop\ndata: {\"type\":\"message_stop\"}".to_vec()
            )),
            Just(Some(
                b"event: response.completed\ndata: {\"type\":\"response.completed\"}".to_vec()
            )),
            Just(Some(b"data: {\"error\":{\"message\":\"boom\"}}".to_vec())),
        ]
    }

    fn join(events: &[Vec<u8>], eol: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for e in events {
            let text = String::from_utf8_lossy(e).replace('\n', eol);
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(eol.as_bytes());
            out.extend_from_slice(eol.as_bytes());
        }
        out
    }

    proptest! {
        /// Every split point of a stream, and byte-at-a-time delivery, give
        /// the same boundaries, event count and terminal verdict as the
        /// unsplit stream.
        #[test]
        fn every_split_point_agrees(
            mut events in proptest::collection::vec(event_strategy(), 0..6),
            terminal in terminal_strategy(),
            eol in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
        ) {
            let expected_terminal = terminal.is_some();
            events.extend(terminal);
            let stream = join(&events, eol);
            let (whole_bounds, whole_events, whole_terminal) = run(&[&stream]);
            prop_assert_eq!(whole_terminal, expected_terminal);
            prop_assert_eq!(whole_events as usize, events.len());
            prop_assert_eq!(whole_bounds.last().copied(), (!stream.is_empty()).then_some(stream.len()));
            for split in 0..=stream.len() {
                let (a, b) = stream.split_at(split);
                let (bounds, n, terminal) = run(&[a, b]);
                prop_assert_eq!(n, whole_events);
                prop_assert_eq!(terminal, whole_terminal, "split at {}", split);
                prop_assert_eq!(bounds.last().copied(), whole_bounds.last().copied(), "split at {}", split);
            }
            let pieces: Vec<&[u8]> = stream.chunks(1).collect();
            let (_, n, t) = run(&pieces);
            prop_assert_eq!(n as usize, events.len());
            prop_assert_eq!(t, expected_terminal);
        }
    }
}
