//! Finding the `"delta"` and `"usage"` keys of SSE data lines.
//!
//! Every event of a stream is searched for both keys: the text to count is
//! under `"delta"`, the usage under `"usage"`. These searches are most of
//! the cost of an event, and a chunk is short (about 200 bytes), so the
//! fixed cost of a search matters as much as its speed per byte: `memmem`'s
//! dispatch, and its Rabin-Karp below 22 bytes, cost more than the SIMD
//! scan itself. So the keys are found with memchr's "packed pair" finders
//! directly (AVX2 or SSE2 on x86-64, NEON on aarch64), each keyed on the
//! key's two letters least common in JSON chunks (`d`…`t`, `u`…`g`): a
//! chunk's other keys (`"index"`, `"model"`) are never candidates.
//! Elsewhere, and for haystacks shorter than a vector, plain loops and
//! `memmem` do it.

use std::sync::LazyLock;

use memchr::memmem::Finder;

use super::json::USAGE_KEY;

pub(crate) const DELTA_KEY: &[u8] = b"\"delta\"";

/// The finders of both keys.
pub(crate) struct Keys {
    delta: Exact,
    usage: Exact,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys {
    delta: Exact::new(DELTA_KEY),
    usage: Exact::new(USAGE_KEY),
});

impl Keys {
    pub(crate) fn get() -> &'static Keys {
        &KEYS
    }

    /// The first `"delta"` in `hay`.
    #[inline]
    pub(crate) fn delta(&self, hay: &[u8]) -> Option<usize> {
        self.delta.find(hay, DELTA_KEY)
    }

    /// The first `"usage"` in `hay`.
    #[inline]
    pub(crate) fn usage(&self, hay: &[u8]) -> Option<usize> {
        self.usage.find(hay, USAGE_KEY)
    }
}

/// A searcher for one key: SIMD where it can, a loop for short haystacks.
struct Exact {
    simd: Option<imp::Pair>,
    memmem: Finder<'static>,
}

/// The key's letters at these indices (`d`…`t`, `u`…`g`) make the pair.
const PAIR: (u8, u8) = (1, 4);

impl Exact {
    fn new(key: &[u8]) -> Exact {
        Exact {
            simd: imp::Pair::new(key),
            memmem: Finder::new(key).into_owned(),
        }
    }

    #[inline(always)]
    fn find(&self, hay: &[u8], key: &[u8]) -> Option<usize> {
        match &self.simd {
            Some(pair) if hay.len() >= pair.min_len() => pair.find(hay, key),
            Some(_) => short(hay, key),
            None => self.memmem.find(hay),
        }
    }
}

/// A haystack shorter than a vector (the end of a line, past its delta).
fn short(hay: &[u8], key: &[u8]) -> Option<usize> {
    let (a, b) = (usize::from(PAIR.0), usize::from(PAIR.1));
    hay.windows(key.len())
        .position(|w| w[a] == key[a] && w[b] == key[b] && w == key)
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use memchr::arch::all::packedpair::Pair as Indices;
    use memchr::arch::x86_64::{avx2, sse2};

    use super::PAIR;

    pub(super) enum Pair {
        Avx2(avx2::packedpair::Finder),
        Sse2(sse2::packedpair::Finder),
    }

    impl Pair {
        pub(super) fn new(key: &[u8]) -> Option<Pair> {
            let indices = Indices::with_indices(key, PAIR.0, PAIR.1)?;
            match avx2::packedpair::Finder::with_pair(key, indices) {
                Some(f) => Some(Pair::Avx2(f)),
                None => sse2::packedpair::Finder::with_pair(key, indices).map(Pair::Sse2),
            }
        }

        #[inline(always)]
        pub(super) fn min_len(&self) -> usize {
            match self {
                // The AVX2 finder turns to SSE2 below its own minimum.
                Pair::Avx2(f) => f.min_haystack_len(),
                Pair::Sse2(f) => f.min_haystack_len(),
            }
        }

        /// `hay` is at least `min_len` long.
        #[inline(always)]
        pub(super) fn find(&self, hay: &[u8], key: &[u8]) -> Option<usize> {
            match self {
                Pair::Avx2(f) => f.find(hay, key),
                Pair::Sse2(f) => f.find(hay, key),
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod imp {
    use memchr::arch::aarch64::neon::packedpair::Finder;
    use memchr::arch::all::packedpair::Pair as Indices;

    use super::PAIR;

    pub(super) struct Pair(Finder);

    impl Pair {
        pub(super) fn new(key: &[u8]) -> Option<Pair> {
            let indices = Indices::with_indices(key, PAIR.0, PAIR.1)?;
            Finder::with_pair(key, indices).map(Pair)
        }

        #[inline]
        pub(super) fn min_len(&self) -> usize {
            self.0.min_haystack_len()
        }

        /// `hay` is at least `min_len` long.
        #[inline]
        pub(super) fn find(&self, hay: &[u8], key: &[u8]) -> Option<usize> {
            self.0.find(hay, key)
        }
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod imp {
    /// No packed pair finder here: `memmem` does it all.
    pub(super) enum Pair {}

    impl Pair {
        pub(super) fn new(_: &[u8]) -> Option<Pair> {
            None
        }

        pub(super) fn min_len(&self) -> usize {
            match *self {}
        }

        pub(super) fn find(&self, _: &[u8], _: &[u8]) -> Option<usize> {
            match *self {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_key_at_every_length() {
        let keys = Keys::get();
        for len in 0..100 {
            for at in 0..len {
                for (key, find) in [
                    (DELTA_KEY, Keys::delta as fn(&Keys, &[u8]) -> Option<usize>),
                    (USAGE_KEY, Keys::usage),
                ] {
                    // Near misses around the key: the pair's letters alone.
                    let mut hay = b"\"dxxtx\"uxxgx\"".repeat(len / 13 + 1);
                    hay.truncate(len);
                    let expected = (at + key.len() <= len).then_some(at);
                    if let Some(at) = expected {
                        hay[at..at + key.len()].copy_from_slice(key);
                    }
                    let found = find(keys, &hay);
                    let naive = hay.windows(key.len()).position(|w| w == key);
                    assert_eq!(found, naive, "{len} {at}");
                    assert!(found.is_some() || expected.is_none());
                    let plain = Exact {
                        simd: None,
                        memmem: Finder::new(key).into_owned(),
                    };
                    assert_eq!(plain.find(&hay, key), naive);
                    assert_eq!(short(&hay, key), naive);
                }
            }
        }
    }
}
