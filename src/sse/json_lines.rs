//! The framer's second syntax: a stream of bare JSON objects, one after
//! another (newline-delimited, or pretty-printed as HAI's guide shows its
//! stream), each object one event.
//!
//! An event is the object's bytes, `{` to its matching `}`; what lies
//! between objects (line ends, spaces) is released as it comes, so only an
//! unfinished object is ever held back. Objects are found by tracking
//! nesting outside strings (with their escapes) across frames: no JSON is
//! parsed here.

use bytes::Bytes;

use super::framer::{Dispatch, Framer, without_null_usage};
use super::release::Fed;
use super::{DATA, Event, OnEvent, PARTIAL, PREFIX};

/// Where the scan is in the object structure when a frame ends.
#[derive(Debug, Default)]
pub(super) struct JsonLines {
    /// Open `{` and `[` of the object in progress (0: between objects).
    depth: u32,
    in_string: bool,
    escape: bool,
    /// The object in progress went over the limit: its bytes are released
    /// as they come, and only its first [`PREFIX`] bytes kept.
    overflow: Option<Vec<u8>>,
    /// The last byte released: a terminal event after anything but a line
    /// end needs one first.
    last: u8,
}

impl JsonLines {
    pub(super) fn new() -> JsonLines {
        JsonLines {
            last: b'\n',
            ..JsonLines::default()
        }
    }

    pub(super) fn overflowing(&self) -> bool {
        self.overflow.is_some()
    }

    pub(super) fn ends_line(&self) -> bool {
        self.last == b'\n'
    }

    /// Scans `hay` inside an object; returns the offset just past the `}`
    /// that closes it, if it is in `hay`.
    fn close(&mut self, hay: &[u8]) -> Option<usize> {
        for (i, &b) in hay.iter().enumerate() {
            if self.in_string {
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        }
        None
    }

    fn keep_prefix(prefix: &mut Vec<u8>, bytes: &[u8]) {
        let room = PREFIX.saturating_sub(prefix.len());
        prefix.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

impl Framer {
    /// [`feed`](Framer::feed) for a stream of bare JSON objects.
    pub(super) fn feed_json<F: OnEvent>(&mut self, frame: &Bytes, on_event: &mut F) -> Fed {
        let mut fed = Fed::default();
        let len = frame.len();
        if len == 0 {
            return fed;
        }
        let Some(mut json) = self.json.take() else {
            return fed;
        };
        let buf: &[u8] = frame;
        let mut pos = 0;
        // Where the object in progress starts in this frame; `None` while
        // it is one that began in an earlier frame.
        let mut start = None;
        let mut paused = false;
        while pos < len {
            if json.depth == 0 {
                let Some(i) = memchr::memchr(b'{', &buf[pos..]) else {
                    pos = len;
                    break;
                };
                pos += i;
                start = Some(pos);
                json.depth = 1;
                pos += 1;
                continue;
            }
            let Some(i) = json.close(&buf[pos..]) else {
                pos = len;
                break;
            };
            let end = pos + i;
            fed.events += 1;
            let dispatch = match (start, json.overflow.take()) {
                (Some(at), _) => {
                    let event = Event {
                        name: None,
                        data: &buf[at..end],
                        flags: DATA,
                        source: Some(frame),
                        len: end - at,
                    };
                    let dispatch = on_event.on_event(&event);
                    match dispatch {
                        Dispatch::Cut => fed.cut(at..end),
                        Dispatch::CutNullUsage => fed.cut_null_usage(at..end, buf),
                        Dispatch::Keep | Dispatch::Pause => {}
                    }
                    dispatch
                }
                (None, Some(mut prefix)) => {
                    // Its bytes went out as they came; a cut cannot take
                    // them back.
                    JsonLines::keep_prefix(&mut prefix, &buf[..end]);
                    let event = Event {
                        name: None,
                        data: &prefix,
                        flags: DATA | PARTIAL,
                        source: None,
                        len: 0,
                    };
                    on_event.on_event(&event)
                }
                (None, None) => {
                    self.held.push(frame.slice(..end));
                    let joined = self.held.take();
                    let event = Event {
                        name: None,
                        data: &joined,
                        flags: DATA,
                        source: Some(&joined),
                        len: joined.len(),
                    };
                    let dispatch = on_event.on_event(&event);
                    let joined = match dispatch {
                        Dispatch::Cut => {
                            fed.cuts.get_or_insert_default().earlier = true;
                            joined
                        }
                        Dispatch::CutNullUsage => without_null_usage(&joined),
                        Dispatch::Keep | Dispatch::Pause => joined,
                    };
                    fed.earlier = Some(joined);
                    fed.from = end;
                    dispatch
                }
            };
            start = None;
            pos = end;
            if dispatch == Dispatch::Pause {
                paused = true;
                break;
            }
        }
        fed.paused = paused;
        fed.to = if paused { pos } else { len };
        if !paused && json.depth > 0 {
            match start {
                // An object begun in this frame: held, or released as it
                // comes once it is over the limit.
                Some(at) if len - at > self.limit => {
                    let mut prefix = Vec::new();
                    JsonLines::keep_prefix(&mut prefix, &buf[at..]);
                    json.overflow = Some(prefix);
                }
                Some(at) => {
                    self.held.push(frame.slice(at..));
                    fed.to = at;
                }
                None => match json.overflow.as_mut() {
                    Some(prefix) => JsonLines::keep_prefix(prefix, buf),
                    None if self.held.len() + len > self.limit => {
                        let held = self.held.take();
                        let mut prefix = Vec::new();
                        JsonLines::keep_prefix(&mut prefix, &held);
                        JsonLines::keep_prefix(&mut prefix, buf);
                        json.overflow = Some(prefix);
                        fed.earlier = Some(held);
                    }
                    None => {
                        self.held.push(frame.clone());
                        fed.to = 0;
                    }
                },
            }
        }
        if fed.to > fed.from {
            json.last = buf[fed.to - 1];
        }
        self.json = Some(json);
        fed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces`; returns each event's data, the released bytes, and
    /// what is held at the end.
    fn run(pieces: &[&[u8]], limit: usize) -> (Vec<Vec<u8>>, Vec<u8>, usize) {
        let mut framer = Framer::json_lines(limit);
        let mut events = Vec::new();
        let mut released = Vec::new();
        for piece in pieces {
            let frame = Bytes::copy_from_slice(piece);
            let fed = framer.feed(&frame, &mut |e: &Event<'_>| {
                assert!(e.has_data() && e.name.is_none());
                events.push(e.data.to_vec());
                Dispatch::Keep
            });
            for piece in fed.release(frame).pieces() {
                released.extend_from_slice(&piece);
            }
        }
        (events, released, framer.held_len())
    }

    const STREAM: &str =
        "{\"a\":\"}{\\\"\",\"b\":[{\"c\":1}]}\n{\n  \"d\": \"\\\\\"\n}\n\n{\"e\":2}";

    #[test]
    fn objects_are_events_whatever_their_strings_hold() {
        let (events, released, held) = run(&[STREAM.as_bytes()], 1 << 10);
        assert_eq!(
            events,
            [
                &b"{\"a\":\"}{\\\"\",\"b\":[{\"c\":1}]}"[..],
                b"{\n  \"d\": \"\\\\\"\n}",
                b"{\"e\":2}",
            ]
        );
        assert_eq!((released.len(), held), (STREAM.len(), 0));
        // An unfinished object is held; what is between objects is not.
        let cut = &STREAM.as_bytes()[..STREAM.len() - 3];
        let (events, released, held) = run(&[cut], 1 << 10);
        assert_eq!(events.len(), 2);
        assert_eq!(released, &STREAM.as_bytes()[..STREAM.len() - 7]);
        assert_eq!(held, 4);
    }

    #[test]
    fn every_split_and_every_byte_agree() {
        let whole = run(&[STREAM.as_bytes()], 1 << 10);
        for split in 0..=STREAM.len() {
            let (a, b) = STREAM.as_bytes().split_at(split);
            assert_eq!(run(&[a, b], 1 << 10), whole, "split at {split}");
        }
        let bytes: Vec<&[u8]> = STREAM.as_bytes().chunks(1).collect();
        assert_eq!(run(&bytes, 1 << 10), whole);
    }

    #[test]
    fn an_object_over_the_limit_is_released_as_it_comes() {
        let big = format!("{{\"message_id\":\"m\",\"x\":\"{}\"}}\n", "y".repeat(300));
        // (An object whole in one frame is an event whatever its size: only
        // what is held is bounded.)
        for chunk in [1, 7, 64] {
            let pieces: Vec<&[u8]> = big.as_bytes().chunks(chunk).collect();
            let mut framer = Framer::json_lines(32);
            let mut partial = Vec::new();
            let mut released = 0;
            for piece in &pieces {
                let frame = Bytes::copy_from_slice(piece);
                let fed = framer.feed(&frame, &mut |e: &Event<'_>| {
                    assert!(e.is_partial());
                    partial.push(e.data.to_vec());
                    Dispatch::Keep
                });
                released += fed.release(frame).pieces().map(|p| p.len()).sum::<usize>();
                assert!(framer.held_len() <= 32, "chunk {chunk}");
            }
            assert_eq!(released, big.len(), "chunk {chunk}");
            assert_eq!(partial.len(), 1);
            assert!(partial[0].starts_with(b"{\"message_id\":\"m\""));
            assert_eq!(partial[0].len(), PREFIX);
        }
    }
}
