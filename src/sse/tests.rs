//! The framer against a plain reading of the WHATWG rules, under every split.

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

/// An event as the tests compare them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    name: Option<Vec<u8>>,
    data: Vec<u8>,
    flags: u8,
}

impl Seen {
    fn of(event: &Event<'_>) -> Seen {
        Seen {
            name: event.name.map(<[u8]>::to_vec),
            data: event.data.to_vec(),
            flags: event.flags,
        }
    }
}

/// The events of a whole stream, read the simple way: split into lines,
/// then fields, one event per blank line. Returns them and the offset past
/// the last one.
fn oracle(stream: &[u8]) -> (Vec<Seen>, usize) {
    let mut events = Vec::new();
    let mut lines: Vec<&[u8]> = Vec::new();
    let (mut pos, mut complete) = (0, 0);
    while pos < stream.len() {
        let Some(i) = stream[pos..].iter().position(|&b| b == b'\n' || b == b'\r') else {
            break;
        };
        let line = &stream[pos..pos + i];
        pos += i + 1;
        if stream[pos - 1] == b'\r' && stream.get(pos) == Some(&b'\n') {
            pos += 1;
        }
        if !line.is_empty() {
            lines.push(line);
            continue;
        }
        complete = pos;
        if lines.is_empty() {
            continue;
        }
        let mut seen = Seen {
            name: None,
            data: Vec::new(),
            flags: 0,
        };
        let mut data: Vec<&[u8]> = Vec::new();
        for line in lines.drain(..) {
            if line[0] == b':' {
                seen.flags |= COMMENT;
                continue;
            }
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &line[line.len()..]),
            };
            match field {
                b"data" => data.push(value),
                b"event" => seen.name = Some(value.to_vec()),
                _ => {}
            }
        }
        if !data.is_empty() {
            seen.flags |= DATA;
            seen.data = data.join(&b'\n');
            if seen.data == b"[DONE]" {
                seen.flags |= DONE;
            }
        }
        events.push(seen);
    }
    (events, complete)
}

/// Runs `pieces` through a framer with `limit`; returns the events, the
/// released bytes, and the offset released after each piece.
fn run(pieces: &[&[u8]], limit: usize) -> (Vec<Seen>, Vec<u8>, Vec<usize>) {
    let mut framer = Framer::new(limit);
    let mut events = Vec::new();
    let mut released = Vec::new();
    let mut marks = Vec::new();
    for piece in pieces {
        let frame = Bytes::copy_from_slice(piece);
        let fed = framer.feed(&frame, &mut |e: &Event<'_>| {
            events.push(Seen::of(e));
            Dispatch::Keep
        });
        assert!(!fed.paused);
        for piece in fed.release(frame).pieces() {
            released.extend_from_slice(&piece);
        }
        marks.push(released.len());
    }
    (events, released, marks)
}

fn streams() -> Vec<Vec<u8>> {
    let events = [
        "data: {\"a\":1}",
        ": keep-alive",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\"}",
        "data: first line\ndata:second\ndata\ndata:  two spaces",
        "id: 7\nretry: 10",
        "event: error\ndata: {\"error\":{}}",
        "data: [DONE]",
    ];
    let mut all = Vec::new();
    for eol in ["\n", "\r\n", "\r"] {
        let mut stream = String::new();
        for event in events {
            stream.push_str(&event.replace('\n', eol));
            stream.push_str(eol);
            stream.push_str(eol);
        }
        all.push(stream.into_bytes());
    }
    // Mixed line ends, extra blank lines, and an unfinished event.
    all.push(b"data: a\r\ndata: b\n\r\n\n\revent: x\rdata: c\r\n\r: c\n\ndata: unfin".to_vec());
    all
}

#[test]
fn every_split_point_and_byte_at_a_time_give_the_oracle_events() {
    for stream in streams() {
        let (expected, complete) = oracle(&stream);
        let (whole, released, _) = run(&[&stream], 1 << 20);
        assert_eq!(whole, expected);
        assert_eq!(released, &stream[..complete]);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let (events, released, _) = run(&bytes, 1 << 20);
        assert_eq!(events, expected);
        assert_eq!(released, &stream[..complete]);
        for split in 0..=stream.len() {
            let (a, b) = stream.split_at(split);
            let (events, released, marks) = run(&[a, b], 1 << 20);
            assert_eq!(events, expected, "split at {split}");
            assert_eq!(released, &stream[..complete], "split at {split}");
            // What is released after the first piece ends at an event.
            let (_, first_complete) = oracle(a);
            assert_eq!(marks[0], first_complete, "split at {split}");
        }
    }
}

#[test]
fn a_split_crlf_is_one_line_end() {
    // `\r` ends a frame, its `\n` opens the next: one line end, one blank line.
    let (events, released, marks) = run(&[b"data: a\r", b"\n\r", b"\ndata: b\n\n"], 64);
    assert_eq!(events.len(), 2);
    assert_eq!(released, b"data: a\r\n\r\ndata: b\n\n");
    // The blank line's `\r` releases the event; its `\n` follows it.
    assert_eq!(marks, vec![0, 10, 20]);
}

#[test]
fn a_frame_of_whole_events_is_released_as_it_came() {
    let frame = Bytes::from_static(b"data: {\"a\":1}\n\n");
    let mut framer = Framer::new(64);
    let fed = framer.feed(&frame, &mut |_: &Event<'_>| Dispatch::Keep);
    let pieces: Vec<Bytes> = fed.release(frame.clone()).pieces().collect();
    assert_eq!(pieces.len(), 1);
    assert_eq!(pieces[0].as_ptr(), frame.as_ptr());
    // A one-line data field is a slice of the frame, not a copy.
    let mut framer = Framer::new(64);
    let mut data = None;
    framer.feed(&frame, &mut |e: &Event<'_>| {
        data = Some(e.data_bytes());
        Dispatch::Keep
    });
    assert_eq!(data.unwrap().as_ptr(), frame[6..].as_ptr());
}

#[test]
fn an_event_over_the_limit_is_released_as_it_comes() {
    let big = format!(
        "event: response.completed\ndata: {{\"type\":\"response.completed\",\"x\":\"{}\"}}",
        "x".repeat(300)
    );
    let stream = format!("data: 1\n\n{big}\n\ndata: 2\n\n");
    let (expected, _) = oracle(stream.as_bytes());
    for split in 0..=stream.len() {
        let (a, b) = stream.as_bytes().split_at(split);
        let rest: Vec<&[u8]> = b.chunks(40).collect();
        let pieces: Vec<&[u8]> = std::iter::once(a).chain(rest).collect();
        let (events, released, _) = run(&pieces, 100);
        assert_eq!(released, stream.as_bytes(), "split at {split}");
        assert_eq!(events.len(), 3, "split at {split}");
        assert_eq!(events[0], expected[0]);
        assert_eq!(events[2], expected[2]);
        let big = &events[1];
        if big.flags & PARTIAL != 0 {
            // Held no more: only the starts of its name and data are kept.
            assert_eq!(big.name.as_deref(), Some(&b"response.completed"[..]));
            assert_eq!(big.data, &expected[1].data[..PREFIX]);
        } else {
            // It arrived whole in one frame: read whole.
            assert_eq!(big, &expected[1]);
        }
    }
    // Held back, it would have been: the framer never holds more than its limit.
    let mut framer = Framer::new(100);
    for chunk in stream.as_bytes().chunks(7) {
        framer.feed(&Bytes::copy_from_slice(chunk), &mut |_: &Event<'_>| {
            Dispatch::Keep
        });
        assert!(framer.held_len() <= 100);
    }
}

#[test]
fn cut_events_are_left_out() {
    for eol in ["\n", "\r\n", "\r"] {
        let stream =
            "data: keep\n\ndata: {\"choices\":[]}\n\ndata: keep too\n\n".replace('\n', eol);
        let expected = "data: keep\n\ndata: keep too\n\n".replace('\n', eol);
        let stream = stream.as_bytes();
        for split in 0..=stream.len() {
            let mut framer = Framer::new(64);
            let mut out = Vec::new();
            for piece in [&stream[..split], &stream[split..]] {
                let frame = Bytes::copy_from_slice(piece);
                let fed = framer.feed(&frame, &mut |e: &Event<'_>| {
                    if e.data.starts_with(b"{") {
                        Dispatch::Cut
                    } else {
                        Dispatch::Keep
                    }
                });
                for piece in fed.release(frame).pieces() {
                    out.extend_from_slice(&piece);
                }
            }
            assert_eq!(out, expected.as_bytes(), "{eol:?} split at {split}");
        }
    }
}

#[test]
fn a_paused_frame_is_fed_again_later() {
    let frame = Bytes::from_static(b": c\n\ndata: 1\n\ndata: 2\n\npart");
    let mut framer = Framer::new(64);
    let mut seen = Vec::new();
    let fed = framer.feed(&frame, &mut |e: &Event<'_>| {
        seen.push(Seen::of(e));
        if e.has_data() {
            Dispatch::Pause
        } else {
            Dispatch::Keep
        }
    });
    assert!(fed.paused);
    let to = fed.released_to();
    assert_eq!(&frame[..to], b": c\n\ndata: 1\n\n");
    let rest = frame.slice(to..);
    let fed = framer.feed(&rest, &mut |e: &Event<'_>| {
        seen.push(Seen::of(e));
        Dispatch::Keep
    });
    assert_eq!(&fed.release(rest).into_one().unwrap()[..], b"data: 2\n\n");
    assert_eq!(seen, oracle(&frame).0);
    assert_eq!(framer.held_len(), 4);
}

#[test]
fn finish_dispatches_the_unfinished_event() {
    for (stream, data) in [
        (&b"data: {\"usage\":1}"[..], &b"{\"usage\":1}"[..]),
        (b"data: [DO", b"[DO"),
        (b"data: a\r\ndata: b\r", b"a\nb"),
    ] {
        for split in 0..=stream.len() {
            let mut framer = Framer::new(64);
            let mut seen = Vec::new();
            let mut on = |e: &Event<'_>| {
                seen.push(Seen::of(e));
                Dispatch::Keep
            };
            for piece in [&stream[..split], &stream[split..]] {
                framer.feed(&Bytes::copy_from_slice(piece), &mut on);
            }
            let rest = framer.finish(&mut on);
            assert_eq!(rest.as_deref(), Some(stream));
            assert_eq!(seen.len(), 1);
            assert_eq!(seen[0].data, data);
            assert_eq!(seen[0].flags & UNFINISHED, UNFINISHED);
        }
    }
    let mut framer = Framer::new(64);
    framer.feed(&Bytes::from_static(b"data: x"), &mut |_: &Event<'_>| {
        Dispatch::Keep
    });
    assert_eq!(framer.finish(&mut |_: &Event<'_>| Dispatch::Cut), None);
    assert_eq!(
        framer.finish(&mut |_: &Event<'_>| panic!("nothing is left")),
        None
    );
}

#[test]
fn first_event_keeps_what_the_next_layer_reads() {
    let frame = Bytes::from_static(b"event: error\ndata: {\"error\":\ndata: 1}\n\n");
    let mut framer = Framer::new(64);
    let mut first = None;
    framer.feed(&frame, &mut |e: &Event<'_>| {
        first = Some(FirstEvent::new(e));
        Dispatch::Keep
    });
    let first = first.unwrap();
    assert_eq!(first.name_or_message(), "error");
    assert_eq!(first.data(), b"{\"error\":\n1}");
    assert_eq!(first.len(), frame.len());
    let again = first.event();
    assert!(again.has_data());
    assert_eq!(again.data, first.data());
}

fn event_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z {}\":,\\[\\]]{0,30}".prop_map(|s| format!("data: {s}")),
        "[a-z]{0,8}".prop_map(|s| format!("event: {s}\ndata: {{}}")),
        Just(": keep-alive".to_owned()),
        Just("data: a\ndata: b".to_owned()),
        Just("data:[DONE]".to_owned()),
        Just("id: 1".to_owned()),
        "[a-z]{100,160}".prop_map(|s| format!("event: x\ndata: {s}\ndata: {s}")),
    ]
}

proptest! {
    /// Random streams with random line ends, cut in random places, with a
    /// limit that some events go over.
    #[test]
    fn random_streams_and_splits(
        events in proptest::collection::vec(event_strategy(), 0..8),
        eols in proptest::collection::vec(prop_oneof![Just("\n"), Just("\r\n"), Just("\r")], 1..4),
        cuts in proptest::collection::vec(0usize..400, 0..10),
        limit in prop_oneof![Just(1usize << 20), 8usize..40],
    ) {
        let mut stream = String::new();
        for (i, event) in events.iter().enumerate() {
            let eol = eols[i % eols.len()];
            stream.push_str(&event.replace('\n', eol));
            stream.push_str(eol);
            stream.push_str(eol);
        }
        let bytes = stream.as_bytes();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut last = 0;
        for cut in cuts.into_iter().chain([bytes.len()]) {
            pieces.push(&bytes[last..cut]);
            last = cut;
        }
        let (expected, complete) = oracle(bytes);
        let (seen, released, _) = run(&pieces, limit);
        prop_assert_eq!(&released[..], &bytes[..complete]);
        prop_assert_eq!(seen.len(), expected.len());
        for (seen, expected) in seen.iter().zip(&expected) {
            if seen.flags & PARTIAL == 0 {
                prop_assert_eq!(seen, expected);
            } else {
                // Only the starts of its name and data are kept.
                let cut = |s: &[u8]| s[..s.len().min(PREFIX)].to_vec();
                prop_assert_eq!(&seen.name, &expected.name.as_deref().map(cut));
                prop_assert_eq!(&seen.data, &cut(&expected.data));
                prop_assert_eq!(seen.flags, expected.flags | PARTIAL);
            }
        }
    }

    /// Arbitrary bytes never panic the framer.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), split in 0usize..300, limit in 1usize..64) {
        let split = split.min(bytes.len());
        let mut framer = Framer::new(limit);
        for piece in [&bytes[..split], &bytes[split..]] {
            let frame = Bytes::copy_from_slice(piece);
            let fed = framer.feed(&frame, &mut |_: &Event<'_>| Dispatch::Cut);
            let _ = fed.release(frame).into_one();
        }
        let _ = framer.finish(&mut |_: &Event<'_>| Dispatch::Keep);
    }
}

#[test]
fn line_ends_are_found_as_memchr2_finds_them() {
    for len in 0..100 {
        for at in 0..=len {
            for b in [b'\n', b'\r'] {
                let mut hay = vec![b'x'; len];
                if at < len {
                    hay[at] = b;
                }
                let expected = memchr::memchr2(b'\n', b'\r', &hay);
                assert_eq!(super::fields::line_end(&hay), expected, "{len} {at}");
            }
        }
    }
}
