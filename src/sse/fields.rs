//! The fields of one event (`event:`, `data:`, comments), read as spans of
//! the bytes the event is in; and the start of an event too large to hold.

use super::{COMMENT, DATA, DONE, Event, PARTIAL, PREFIX};

/// The next `\n` or `\r` in `hay`: where a line ends.
///
/// SSE lines are short and found one at a time, so the fixed cost of a
/// search counts: `memchr2` picks its implementation and sets up its
/// vectors on every call. On x86-64 memchr's AVX2 searcher, built once, is
/// called directly; elsewhere (and without AVX2) `memchr2` does it.
#[inline(always)]
pub(super) fn line_end(hay: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        use memchr::arch::x86_64::avx2::memchr::Two;
        static TWO: std::sync::LazyLock<Option<Two>> =
            std::sync::LazyLock::new(|| Two::new(b'\n', b'\r'));
        if let Some(two) = &*TWO {
            return two.find(hay);
        }
    }
    memchr::memchr2(b'\n', b'\r', hay)
}

/// The `data` field of the event being read.
#[derive(Debug, Clone, Copy)]
pub(super) enum DataField {
    None,
    /// One `data:` line: its value's span.
    One(usize, usize),
    /// Several: joined in the framer's scratch buffer.
    Joined,
}

/// The fields of the event being read, as spans of the bytes it is in.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fields {
    pub(super) start: usize,
    pub(super) lines: bool,
    pub(super) name: Option<(usize, usize)>,
    pub(super) data: DataField,
    pub(super) flags: u8,
}

impl Fields {
    pub(super) fn new(start: usize) -> Fields {
        Fields {
            start,
            lines: false,
            name: None,
            data: DataField::None,
            flags: 0,
        }
    }

    /// The line `buf[start..end]` (not empty, without its line end).
    #[inline(always)]
    pub(super) fn line(&mut self, buf: &[u8], start: usize, end: usize, scratch: &mut Vec<u8>) {
        self.lines = true;
        let line = &buf[start..end];
        match line[0] {
            b':' => self.flags |= COMMENT,
            b'd' => {
                if let Some(at) = value_start(line, b"data") {
                    self.data(buf, start + at, end, scratch);
                }
            }
            b'e' => {
                if let Some(at) = value_start(line, b"event") {
                    self.name = Some((start + at, end));
                }
            }
            _ => {}
        }
    }

    #[inline(always)]
    fn data(&mut self, buf: &[u8], start: usize, end: usize, scratch: &mut Vec<u8>) {
        self.flags |= DATA;
        match self.data {
            DataField::None => self.data = DataField::One(start, end),
            DataField::One(a, b) => {
                scratch.clear();
                scratch.extend_from_slice(&buf[a..b]);
                scratch.push(b'\n');
                scratch.extend_from_slice(&buf[start..end]);
                self.data = DataField::Joined;
            }
            DataField::Joined => {
                scratch.push(b'\n');
                scratch.extend_from_slice(&buf[start..end]);
            }
        }
    }
}

/// Where the value of field `name` starts on `line`: past `name:` and one
/// optional space, or at the end of a line that is only `name`. `None` when
/// the line is another field (`dataset: …`).
/// (Fixed-size arrays: compared as integers, not with `memcmp`.)
#[inline(always)]
pub(super) fn value_start<const N: usize>(line: &[u8], name: &[u8; N]) -> Option<usize> {
    let (head, rest) = line.split_first_chunk::<N>()?;
    if head != name {
        return None;
    }
    match rest.first() {
        None => Some(N),
        Some(b':') => Some(N + 1 + usize::from(rest.get(1) == Some(&b' '))),
        Some(_) => None,
    }
}

/// Whether `data` is `[DONE]`.
#[inline(always)]
pub(super) fn is_done(data: &[u8]) -> bool {
    data.len() == 6 && data.first_chunk::<6>() == Some(b"[DONE]")
}

/// The fields of the one event in `buf` (its lines may end with any line
/// end; the last one may have none).
pub(super) fn parse_lines(buf: &[u8], scratch: &mut Vec<u8>) -> Fields {
    let mut fields = Fields::new(0);
    let mut pos = 0;
    while pos < buf.len() {
        if matches!(buf[pos], b'\n' | b'\r') {
            pos += 1;
            continue;
        }
        let end = line_end(&buf[pos..]).map_or(buf.len(), |i| pos + i);
        fields.line(buf, pos, end, scratch);
        pos = end;
    }
    fields
}

/// The start of an event larger than the limit: its bytes are released as
/// they come, only the first bytes of its name and data are kept, read line
/// by line as they pass.
#[derive(Debug, Default)]
pub(super) struct Overflow {
    name: Option<Vec<u8>>,
    data: Vec<u8>,
    flags: u8,
    /// The start of the line in progress.
    line: Vec<u8>,
}

/// Bytes kept of a line of an event over the limit: a field name and
/// [`PREFIX`] bytes of its value.
const LINE_START: usize = PREFIX + 8;

impl Overflow {
    /// Reads the next bytes of the event (its blank line included).
    pub(super) fn read(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let end = line_end(bytes);
            let part = &bytes[..end.unwrap_or(bytes.len())];
            let room = LINE_START.saturating_sub(self.line.len());
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            let Some(end) = end else {
                return;
            };
            self.end_line();
            bytes = &bytes[end + 1..];
        }
    }

    /// The line in progress is complete: reads its field.
    fn end_line(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.line);
        let mut fields = Fields::new(0);
        fields.line(&line, 0, line.len(), &mut Vec::new());
        let had_data = self.flags & DATA != 0;
        self.flags |= fields.flags;
        let cut = |s: &[u8]| s[..s.len().min(PREFIX)].to_vec();
        if let Some((a, b)) = fields.name {
            self.name = Some(cut(&line[a..b]));
        }
        if let DataField::One(a, b) = fields.data {
            if had_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(&line[a..b]);
            self.data.truncate(PREFIX);
        }
        self.line = line;
        self.line.clear();
    }

    pub(super) fn event(&mut self, flags: u8) -> Event<'_> {
        self.end_line();
        let done = if is_done(&self.data) { DONE } else { 0 };
        Event {
            name: self.name.as_deref(),
            data: &self.data,
            flags: self.flags | PARTIAL | done | flags,
            source: None,
            len: 0,
        }
    }
}
