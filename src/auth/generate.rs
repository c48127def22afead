//! Minting keys: a random secret from the OS, shown once, stored hashed.

use std::fmt;

use super::{KeyHash, KeyRecord};

/// A key's secret, as a client presents it (`sk-…`).
///
/// It exists only between minting and handing it to its owner: stores keep
/// the [`KeyHash`]. Its `Debug` output is redacted, it has no `Display`, and
/// its memory is overwritten when it is dropped (best effort: copies made
/// through [`Secret::expose`] are the caller's).
pub struct Secret(String);

impl Secret {
    /// Wraps a secret obtained elsewhere.
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// The secret itself, to show its owner once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash a store keeps for this secret.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.fill(0);
        // Keeps the writes from being optimised away as dead stores.
        std::hint::black_box(&bytes);
    }
}

/// The operating system's random number generator failed, so no key was minted.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct GenerateError(getrandom::Error);

impl KeyRecord {
    /// The prefix of every minted secret.
    pub const SECRET_PREFIX: &'static str = "sk-";

    /// Mints a key: a secret of [`KeyRecord::SECRET_PREFIX`] and 43 URL-safe
    /// characters (256 bits from the OS random number generator), and its
    /// record with a random id (`key_` and 16 hex digits), created now.
    ///
    /// The secret is returned once; the record holds only its hash.
    ///
    /// ```
    /// use tollgate::auth::{KeyHash, KeyRecord};
    ///
    /// let (secret, record) = KeyRecord::generate()?;
    /// assert!(secret.expose().starts_with("sk-"));
    /// assert_eq!(secret.expose().len(), 46);
    /// assert_eq!(record.secret_hash, KeyHash::of(secret.expose()));
    /// # Ok::<_, tollgate::auth::GenerateError>(())
    /// ```
    pub fn generate() -> Result<(Secret, KeyRecord), GenerateError> {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(GenerateError)?;
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        KeyRecord::generate_with_id(format!("key_{id}"))
    }

    /// Like [`KeyRecord::generate`], with the record's id chosen by the caller.
    pub fn generate_with_id(id: impl Into<String>) -> Result<(Secret, KeyRecord), GenerateError> {
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).map_err(GenerateError)?;
        let mut secret = String::with_capacity(46);
        secret.push_str(KeyRecord::SECRET_PREFIX);
        base64url(&random, &mut secret);
        random.fill(0);
        std::hint::black_box(&random);
        let secret = Secret(secret);
        let record = KeyRecord::new(id, secret.hash());
        Ok((secret, record))
    }
}

/// Unpadded base64url (RFC 4648 §5): letters, digits, `-` and `_`, so the
/// key survives headers, URLs and shell quoting unchanged.
fn base64url(bytes: &[u8], out: &mut String) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let index = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[index as usize]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc_4648_vectors() {
        let cases: [(&[u8], &str); 4] = [
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (&[0xfb, 0xff, 0xbf], "-_-_"),
        ];
        for (input, expected) in cases {
            let mut s = String::new();
            base64url(input, &mut s);
            assert_eq!(s, expected);
        }
    }

    #[test]
    fn secrets_are_distinct_and_redacted() {
        let (a, ra) = KeyRecord::generate().unwrap();
        let (b, rb) = KeyRecord::generate().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_ne!(ra.id, rb.id);
        assert!(ra.id.starts_with("key_") && ra.id.len() == 20);
        assert!(
            a.expose()[3..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert!(!format!("{a:?}").contains(a.expose()));
        assert!(!format!("{ra:?}").contains(a.expose()));
    }
}
