//! Cheap hashing for the memory stores' hot paths.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

/// Maps keyed by a `u64` that is already a hash (or a sequential id): one
/// multiply instead of hashing again.
pub(super) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

#[derive(Default)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Hashes what the memory stores are keyed by (budget scopes, secret
/// hashes): a multiply-fold over 8-byte words, seeded per store, whose every
/// output bit depends on every input bit. Much cheaper than SipHash on the
/// hot path; scopes are ids the operator issues, not text a client chooses,
/// and a collision only puts two entries in one bucket.
///
/// Secret hashes are SHA-256 outputs, uniformly random when they come from
/// secrets, but a config may give `secret_sha256` values directly, and
/// those need not be random (sequential test values, or values chosen to
/// collide): folded without mixing, they would share their low bits, and a
/// map would probe in a line, making a million keys take minutes to load.
#[derive(Clone, Copy)]
pub(super) struct SeededHashing {
    seed: u64,
}

impl SeededHashing {
    pub(super) fn new() -> SeededHashing {
        SeededHashing {
            seed: RandomState::new().hash_one(0x5eed_u64) | 1,
        }
    }
}

impl BuildHasher for SeededHashing {
    type Hasher = SeededHasher;

    fn build_hasher(&self) -> SeededHasher {
        SeededHasher(self.seed)
    }
}

pub(super) struct SeededHasher(u64);

impl SeededHasher {
    fn mix(&mut self, word: u64) {
        let m = u128::from(self.0 ^ word) * 0x9e37_79b9_7f4a_7c15_u128;
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

impl Hasher for SeededHasher {
    fn finish(&self) -> u64 {
        let m = u128::from(self.0) * 0xa076_1d64_78bd_642f_u128;
        (m as u64) ^ ((m >> 64) as u64)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.mix(u64::from_le_bytes(word.try_into().unwrap_or_default()));
        }
        let rest = words.remainder();
        let mut tail = [0u8; 8];
        tail[..rest.len()].copy_from_slice(rest);
        self.mix(u64::from_le_bytes(tail) ^ ((rest.len() as u64) << 59));
    }

    fn write_u8(&mut self, n: u8) {
        self.mix(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    fn write_isize(&mut self, n: isize) {
        self.mix(n as u64);
    }
}

/// The hashes of a request's budgets: inline for the usual one to four.
pub(super) type Small = crate::small::Small<u64, 4>;
