//! Cheap hashing for the ledger's hot path.

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

/// Hashes budget scopes: a multiply-fold over 8-byte words, seeded per
/// ledger. Much cheaper than SipHash on the hot path; scopes are key, team
/// and org ids the operator issues, not text a client chooses, and a
/// collision only puts two accounts in one bucket.
#[derive(Clone, Copy)]
pub(super) struct ScopeHashing {
    seed: u64,
}

impl ScopeHashing {
    pub(super) fn new() -> ScopeHashing {
        ScopeHashing {
            seed: RandomState::new().hash_one(0x5eed_u64) | 1,
        }
    }
}

impl BuildHasher for ScopeHashing {
    type Hasher = ScopeHasher;

    fn build_hasher(&self) -> ScopeHasher {
        ScopeHasher(self.seed)
    }
}

pub(super) struct ScopeHasher(u64);

impl ScopeHasher {
    fn mix(&mut self, word: u64) {
        let m = u128::from(self.0 ^ word) * 0x9e37_79b9_7f4a_7c15_u128;
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

impl Hasher for ScopeHasher {
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
