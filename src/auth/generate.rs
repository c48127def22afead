//! Minting keys: a random secret from the OS, shown once, stored hashed.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

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
        let id = getrandom::u64().map_err(GenerateError)?;
        KeyRecord::generate_with_id(format!("key_{id:016x}"))
    }

    /// Like [`KeyRecord::generate`], with the record's id chosen by the caller.
    pub fn generate_with_id(id: impl Into<String>) -> Result<(Secret, KeyRecord), GenerateError> {
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).map_err(GenerateError)?;
        // Unpadded base64url (RFC 4648 §5): letters, digits, `-` and `_`, so
        // the key survives headers, URLs and shell quoting unchanged. Encoded
        // into a buffer of ours, overwritten with the random bytes below.
        let mut encoded = [0u8; 43];
        // 32 bytes are exactly 43 characters: the sizes are constants, not
        // input, so this cannot fail (and must not mint a short key if it
        // ever did).
        let len = URL_SAFE_NO_PAD
            .encode_slice(random, &mut encoded)
            .expect("32 bytes encode to 43 base64url characters");
        let mut secret = String::with_capacity(46);
        secret.push_str(KeyRecord::SECRET_PREFIX);
        secret.extend(encoded[..len].iter().map(|&b| char::from(b)));
        random.fill(0);
        encoded.fill(0);
        std::hint::black_box((&random, &encoded));
        let secret = Secret(secret);
        let record = KeyRecord::new(id, secret.hash());
        Ok((secret, record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(URL_SAFE_NO_PAD.decode(&a.expose()[3..]).unwrap().len(), 32);
        assert!(!format!("{a:?}").contains(a.expose()));
        assert!(!format!("{ra:?}").contains(a.expose()));
    }
}
