//! Key hashes: computed once per request, compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::KeyHash;

/// A string that is not a SHA-256 in hexadecimal. The message never repeats
/// the input: it may be a secret pasted into the wrong field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a SHA-256 as 64 hexadecimal digits (optionally prefixed `sha256:`)")]
pub struct InvalidKeyHash;

impl KeyHash {
    /// The SHA-256 of `secret`: what a store keeps instead of the secret.
    ///
    /// ```
    /// use tollgate::auth::KeyHash;
    /// let hash = KeyHash::of("sk-test");
    /// assert_eq!(hash, KeyHash::from_hex(&hash.to_hex()).unwrap());
    /// ```
    pub fn of(secret: impl AsRef<[u8]>) -> KeyHash {
        KeyHash(Sha256::digest(secret.as_ref()).into())
    }

    /// Parses 64 hexadecimal digits (either case), optionally prefixed with
    /// `sha256:`, as key files and configuration give them.
    pub fn from_hex(hex: &str) -> Result<KeyHash, InvalidKeyHash> {
        let hex = hex.trim();
        let hex = hex.strip_prefix("sha256:").unwrap_or(hex).as_bytes();
        if hex.len() != 64 {
            return Err(InvalidKeyHash);
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Ok(KeyHash(out))
    }

    /// The hash as 64 lowercase hexadecimal digits.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(DIGITS[usize::from(b >> 4)]));
            s.push(char::from(DIGITS[usize::from(b & 0xf)]));
        }
        s
    }

    /// Whether `self` and `other` are equal, in time that does not depend on
    /// where they differ. (`==` may stop at the first differing byte.)
    pub fn verify(&self, other: &KeyHash) -> bool {
        self.ct_eq(other).into()
    }
}

impl ConstantTimeEq for KeyHash {
    fn ct_eq(&self, other: &KeyHash) -> subtle::Choice {
        // Four 64-bit words rather than 32 bytes (each compared behind an
        // optimisation barrier): the same constant time, an eighth of the
        // work.
        let word =
            |h: &[u8; 32], i: usize| u64::from_le_bytes(std::array::from_fn(|j| h[i * 8 + j]));
        (0..4).fold(subtle::Choice::from(1), |equal, i| {
            equal & word(&self.0, i).ct_eq(&word(&other.0, i))
        })
    }
}

fn nibble(c: u8) -> Result<u8, InvalidKeyHash> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(InvalidKeyHash),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // SHA-256("abc") from FIPS 180-2.
        assert_eq!(
            KeyHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let h = KeyHash::of("x");
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Ok(h));
        assert_eq!(
            KeyHash::from_hex(&format!("sha256:{}", h.to_hex().to_uppercase())),
            Ok(h)
        );
        assert_eq!(KeyHash::from_hex("abc"), Err(InvalidKeyHash));
        assert_eq!(KeyHash::from_hex(&"g".repeat(64)), Err(InvalidKeyHash));
        assert_eq!(KeyHash::from_hex(&"é".repeat(32)), Err(InvalidKeyHash));
        assert!(h.verify(&h) && !h.verify(&KeyHash::of("y")));
    }

    #[test]
    fn a_difference_in_any_byte_fails_verification() {
        let h = KeyHash::of("x");
        for i in 0..32 {
            for bit in [0x01, 0x80] {
                let mut other = h;
                other.0[i] ^= bit;
                assert!(!h.verify(&other) && !other.verify(&h), "byte {i}");
            }
        }
    }
}
