//! Cheap hashing for the memory stores' hot paths.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

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
/// hashes): foldhash, seeded per store. Much cheaper than SipHash on the
/// hot path; scopes are ids the operator issues, not text a client chooses,
/// and a collision only puts two entries in one bucket.
///
/// Secret hashes are SHA-256 outputs, uniformly random when they come from
/// secrets, but a config may give `secret_sha256` values directly, and
/// those need not be random (sequential test values, or values chosen to
/// collide): used as they are, they would share their low bits, and a map
/// would probe in a line, making a million keys take minutes to load.
pub(super) type SeededHashing = foldhash::fast::RandomState;

/// The hashes of a request's budgets: inline for the usual one to four.
pub(super) type Small = crate::small::Small<u64, 4>;
