use std::borrow::Cow;
use std::fmt;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::extract::{self, Extractor};
use super::service::Auth;
use crate::RequestMeta;
use crate::clock::{Clock, SharedClock, TokioClock};

/// How keys are found and checked; shared by every clone of the service.
#[derive(Clone)]
pub(crate) struct Policy {
    pub(crate) extractors: Vec<Extractor>,
    pub(crate) missing_message: String,
    /// Whether an extractor reads the whole head ([`extract::needs_parts`]),
    /// set with `extractors`.
    pub(crate) needs_parts: bool,
    pub(crate) prefix: Option<Cow<'static, str>>,
    pub(crate) key_length: RangeInclusive<usize>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) expiry_warning: Duration,
    pub(crate) max_request_body_bytes: usize,
    pub(crate) clock: SharedClock,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("extractors", &self.extractors)
            .field("prefix", &self.prefix)
            .field("key_length", &self.key_length)
            .field("max_lifetime", &self.max_lifetime)
            .field("expiry_warning", &self.expiry_warning)
            .field("max_request_body_bytes", &self.max_request_body_bytes)
            .finish_non_exhaustive()
    }
}

/// Authenticates every request with an API key from `K`, a
/// [`KeyStore`](super::KeyStore), and inserts the caller's
/// [`Principal`](super::Principal) into the request's extensions.
///
/// See the [module docs](crate::auth) for the outcomes and an example.
///
/// | setting | default |
/// |---|---|
/// | [`extractors`](AuthLayer::extractors) | `Authorization: Bearer`, `x-api-key`, `api-key`, `x-bf-vk` |
/// | [`require_prefix`](AuthLayer::require_prefix) | none |
/// | [`key_length`](AuthLayer::key_length) | 1 to 1024 bytes |
/// | [`max_key_lifetime`](AuthLayer::max_key_lifetime) | none (only `expires_at`) |
/// | [`expiry_warning`](AuthLayer::expiry_warning) | 7 days |
/// | [`max_request_body_bytes`](AuthLayer::max_request_body_bytes) | 16 MiB ([`RequestMeta::DEFAULT_MAX_BODY_BYTES`]) |
/// | [`clock`](AuthLayer::clock) | [`TokioClock`] |
pub struct AuthLayer<K> {
    store: Arc<K>,
    policy: Arc<Policy>,
}

impl<K> AuthLayer<K> {
    /// The longest key accepted by default, in bytes.
    pub const DEFAULT_MAX_KEY_LENGTH: usize = 1024;

    /// The default warning window for `x-api-key-expires-in`: 7 days.
    pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

    /// Authenticates against `store` with the defaults above.
    pub fn new(store: K) -> Self {
        let extractors = Extractor::defaults();
        AuthLayer {
            store: Arc::new(store),
            policy: Arc::new(Policy {
                missing_message: extract::missing_message(&extractors),
                needs_parts: extract::needs_parts(&extractors),
                extractors,
                prefix: None,
                key_length: 1..=Self::DEFAULT_MAX_KEY_LENGTH,
                max_lifetime: None,
                expiry_warning: Self::DEFAULT_EXPIRY_WARNING,
                max_request_body_bytes: RequestMeta::DEFAULT_MAX_BODY_BYTES,
                clock: Arc::new(TokioClock::new()),
            }),
        }
    }

    fn policy_mut(&mut self) -> &mut Policy {
        Arc::make_mut(&mut self.policy)
    }

    /// Where to look for the key, in order; the first key found is used.
    /// The 401 `missing_api_key` message lists these places.
    ///
    /// With no extractors every request is refused as `missing_api_key`.
    pub fn extractors(mut self, extractors: impl IntoIterator<Item = Extractor>) -> Self {
        let policy = self.policy_mut();
        policy.extractors = extractors.into_iter().collect();
        policy.missing_message = extract::missing_message(&policy.extractors);
        policy.needs_parts = extract::needs_parts(&policy.extractors);
        self
    }

    /// Refuses keys that do not start with `prefix` (e.g. `sk-`) with 401
    /// `invalid_api_key`, before hashing or looking them up.
    pub fn require_prefix(mut self, prefix: impl Into<Cow<'static, str>>) -> Self {
        self.policy_mut().prefix = Some(prefix.into());
        self
    }

    /// Refuses keys whose length in bytes is outside `range` with 401
    /// `invalid_api_key`, before hashing or looking them up.
    pub fn key_length(mut self, range: RangeInclusive<usize>) -> Self {
        self.policy_mut().key_length = range;
        self
    }

    /// Refuses keys older than `lifetime` (counted from their `created_at`)
    /// with 401 `expired_api_key`, whatever their `expires_at` says.
    pub fn max_key_lifetime(mut self, lifetime: Duration) -> Self {
        self.policy_mut().max_lifetime = Some(lifetime);
        self
    }

    /// Adds `x-api-key-expires-in: <seconds>` to responses when the key
    /// expires within `window`. `Duration::ZERO` turns the header off.
    pub fn expiry_warning(mut self, window: Duration) -> Self {
        self.policy_mut().expiry_warning = window;
        self
    }

    /// How much of a request body is read to find its `model` when the key
    /// has a model allow-list. Larger bodies get 413 `payload_too_large`.
    pub fn max_request_body_bytes(mut self, bytes: usize) -> Self {
        self.policy_mut().max_request_body_bytes = bytes;
        self
    }

    /// The clock expiry is judged by (tests pause tokio's clock instead).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.policy_mut().clock = Arc::new(clock);
        self
    }

    /// The key store.
    pub fn store(&self) -> &K {
        &self.store
    }
}

crate::macros::impl_clone!(AuthLayer<K> { store, policy });

impl<K> fmt::Debug for AuthLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer")
            .field("store", &std::any::type_name::<K>())
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S, K> Layer<S> for AuthLayer<K> {
    type Service = Auth<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth::from_parts(inner, self.store.clone(), self.policy.clone())
    }
}
