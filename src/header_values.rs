//! Several response header values in one allocation.
//!
//! A `HeaderValue` made from a number or a `String` costs an allocation
//! each (its `Bytes`), and the rate-limit and budget headers, and request
//! ids, change on every response. [`Packed`] writes a layer's values side
//! by side into one small buffer, copies that into a per-thread chunk
//! ([`shared_bytes`]) and hands out each value as a slice of it: no
//! allocation per response, and reference counts instead of copies.

use std::cell::RefCell;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;

/// Room for the values of one response: a layer writes at most a few
/// numbers, durations and timestamps (20 bytes or so each).
const CAPACITY: usize = 120;

/// A buffer of header values written one after another.
pub(crate) struct Packed {
    buf: [u8; CAPACITY],
    len: usize,
}

/// Where one value went: into the buffer, or, when it did not fit, into a
/// value of its own.
pub(crate) enum Slot {
    In(Range<usize>),
    Own(Option<HeaderValue>),
}

impl Packed {
    pub(crate) fn new() -> Packed {
        Packed {
            buf: [0; CAPACITY],
            len: 0,
        }
    }

    /// Appends `bytes` as one value.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Slot {
        let start = self.len;
        match self.buf.get_mut(start..start + bytes.len()) {
            Some(room) => {
                room.copy_from_slice(bytes);
                self.len += bytes.len();
                Slot::In(start..self.len)
            }
            None => Slot::Own(HeaderValue::from_bytes(bytes).ok()),
        }
    }

    /// Appends the decimal digits of `n` as one value.
    pub(crate) fn push_u64(&mut self, n: u64) -> Slot {
        let mut digits = [0u8; 20];
        let len = write_u64(&mut digits, n);
        self.push(&digits[digits.len() - len..])
    }

    /// The buffer as `Bytes`, for [`Packed::value`]: cut from the
    /// thread's chunk.
    pub(crate) fn freeze(self) -> Bytes {
        if self.len == 0 {
            return Bytes::new();
        }
        shared_bytes(&self.buf[..self.len])
    }

    /// The value in `slot`, sharing `bytes`.
    pub(crate) fn value(bytes: &Bytes, slot: Slot) -> Option<HeaderValue> {
        match slot {
            Slot::In(range) => HeaderValue::from_maybe_shared(bytes.slice(range)).ok(),
            Slot::Own(value) => value,
        }
    }
}

/// `text` as `Bytes` cut from a per-thread chunk that many values share:
/// no allocation per response (one per 4 KiB of values), and cloning a
/// value (a request id in the request and the response) is a
/// reference-count increment. A chunk is freed once every value cut from
/// it is dropped.
pub(crate) fn shared_bytes(text: &[u8]) -> Bytes {
    const CHUNK: usize = 4096;
    thread_local! {
        static CHUNK_BUF: RefCell<BytesMut> = RefCell::new(BytesMut::new());
    }
    CHUNK_BUF.with_borrow_mut(|buf| {
        if buf.capacity() - buf.len() < text.len() {
            *buf = BytesMut::with_capacity(CHUNK.max(text.len()));
        }
        buf.extend_from_slice(text);
        buf.split().freeze()
    })
}

/// Writes the digits of `n` at the end of `out`; returns how many. `itoa`
/// writes them (two digits a step, from a table): a response's numbers are
/// up to 20 digits (token counts, money in micro-units).
pub(crate) fn write_u64(out: &mut [u8; 20], n: u64) -> usize {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n).as_bytes();
    let at = out.len() - digits.len();
    out[at..].copy_from_slice(digits);
    digits.len()
}

/// Whether every byte of `bytes` is visible ASCII (`!` to `~`: no space,
/// tab or control byte), as `u8::is_ascii_graphic` says, without a branch
/// per byte (a fold, not `all`): request ids and API keys are checked on
/// every request.
pub(crate) fn is_visible_ascii(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(0x21) < 0x5e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_ascii_is_graphic_ascii() {
        for b in 0..=u8::MAX {
            assert_eq!(is_visible_ascii(&[b]), b.is_ascii_graphic(), "{b}");
        }
        assert!(is_visible_ascii(b"") && is_visible_ascii(b"sk-0123_ABC~!"));
        assert!(!is_visible_ascii(b"sk 1") && !is_visible_ascii("sk-é".as_bytes()));
    }

    #[test]
    fn values_share_one_buffer_and_overflow_gets_its_own() {
        let mut packed = Packed::new();
        for n in [0, 7, 10, 99, 12345, u64::MAX] {
            let mut digits = [0u8; 20];
            let len = write_u64(&mut digits, n);
            assert_eq!(&digits[20 - len..], n.to_string().as_bytes());
        }
        let a = packed.push_u64(0);
        let b = packed.push_u64(u64::MAX);
        let c = packed.push(b"1h2m3.004s");
        let long = [b'9'; CAPACITY];
        let d = packed.push(&long);
        let e = packed.push(b"12ms");
        let bytes = packed.freeze();
        assert_eq!(Packed::value(&bytes, a).unwrap(), "0");
        assert_eq!(
            Packed::value(&bytes, b).unwrap(),
            u64::MAX.to_string().as_str()
        );
        assert_eq!(Packed::value(&bytes, c).unwrap(), "1h2m3.004s");
        assert_eq!(Packed::value(&bytes, d).unwrap().len(), CAPACITY);
        assert_eq!(Packed::value(&bytes, e).unwrap(), "12ms");
        // A byte no header value may hold is refused, not panicked on.
        let mut packed = Packed::new();
        let bad = packed.push(b"a\nb");
        assert!(Packed::value(&packed.freeze(), bad).is_none());
    }
}
