//! Who is calling: API keys and virtual keys, stored hashed.
//!
//! ```
//! use tollgate::auth::{KeyHash, KeyRecord, Principal};
//! let principal = Principal::new(KeyRecord::new("alice", KeyHash([0; 32])));
//! assert_eq!(principal.key_id(), "alice");
//! ```

mod record;

pub use self::record::{KeyHash, KeyRecord, Principal};
