use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::scope::SharedScopes;
use super::service::{RateLimit, Shared};
use super::{HeaderStyle, Limit, PrincipalKey, RateLimitStore, Unkeyed};
use crate::RequestMeta;
use crate::budget::{ChargePolicy, Pricing};
use crate::clock::{SharedClock, TokioClock};
use crate::request::Unreadable;
use crate::store::memory::MemoryRateLimitStore;

pub use crate::store::FailurePolicy;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) limits: Arc<[Limit]>,
    pub(crate) max_concurrent: Option<u32>,
    /// Model-wide and upstream-wide limits, shared by every key.
    pub(crate) shared: Arc<SharedScopes>,
    pub(crate) default_max_tokens: u64,
    /// Each model's output limit, for requests that set no cap.
    pub(crate) output_limits: Option<Arc<Pricing>>,
    pub(crate) per_model: bool,
    pub(crate) header_style: HeaderStyle,
    pub(crate) shadow: bool,
    pub(crate) failure_policy: FailurePolicy,
    pub(crate) unkeyed: Unkeyed,
    pub(crate) max_request_body_bytes: usize,
    pub(crate) concurrency_retry_after: Duration,
    pub(crate) clock: SharedClock,
    pub(crate) charge_policy: ChargePolicy,
    pub(crate) unreadable: Unreadable,
}

impl Config {
    /// The output cap of a request for `model` that sets none: the model's
    /// `max_output_tokens` from the prices, else the default.
    pub(crate) fn max_tokens_for(&self, model: Option<&str>) -> u64 {
        match (&self.output_limits, model) {
            (Some(pricing), Some(model)) => pricing
                .get(model)
                .map_or(self.default_max_tokens, |price| price.max_output_tokens),
            _ => self.default_max_tokens,
        }
    }
}

/// Limits requests and tokens per window, per key, and requests in flight.
///
/// See the [module docs](crate::rate_limit) for what it does, why, and an
/// example. Every service the layer builds (and every clone of those) shares
/// the layer's store, so limits hold however many clones axum or hyper make.
///
/// `St` is the [`RateLimitStore`] ([`MemoryRateLimitStore`] by default), `K`
/// the [`ExtractLimitKey`](super::ExtractLimitKey) ([`PrincipalKey`] by default).
#[derive(Clone)]
pub struct RateLimitLayer<St = MemoryRateLimitStore, K = PrincipalKey> {
    config: Config,
    store: St,
    extractor: K,
}

impl Default for RateLimitLayer {
    fn default() -> Self {
        RateLimitLayer::new()
    }
}

impl RateLimitLayer {
    /// The default for [`default_max_tokens`](RateLimitLayer::default_max_tokens).
    pub const DEFAULT_MAX_TOKENS: u64 = 4096;

    /// A layer with a new [`MemoryRateLimitStore`], keyed by `Principal`,
    /// with no default limits: only keys whose record sets limits are
    /// limited until [`limit`](RateLimitLayer::limit) adds defaults.
    pub fn new() -> Self {
        RateLimitLayer {
            config: Config {
                limits: Arc::from([]),
                max_concurrent: None,
                shared: Arc::new(SharedScopes::default()),
                default_max_tokens: Self::DEFAULT_MAX_TOKENS,
                output_limits: None,
                per_model: false,
                header_style: HeaderStyle::default(),
                shadow: false,
                failure_policy: FailurePolicy::FailOpen,
                unkeyed: Unkeyed::default(),
                max_request_body_bytes: RequestMeta::DEFAULT_MAX_BODY_BYTES,
                concurrency_retry_after: Duration::from_secs(1),
                clock: Arc::new(TokioClock::new()),
                charge_policy: ChargePolicy::default(),
                unreadable: Unreadable::default(),
            },
            store: MemoryRateLimitStore::new(),
            extractor: PrincipalKey,
        }
    }
}

impl<St, K> RateLimitLayer<St, K> {
    /// Adds a default limit: it applies to keys whose record sets no rate
    /// limits of its own, and to unkeyed requests under a shared key.
    pub fn limit(mut self, limit: Limit) -> Self {
        let mut limits = self.config.limits.to_vec();
        limits.push(limit);
        self.config.limits = limits.into();
        self
    }

    /// Replaces the default limits.
    pub fn limits(mut self, limits: impl IntoIterator<Item = Limit>) -> Self {
        self.config.limits = limits.into_iter().collect();
        self
    }

    /// Default in-flight requests per key, for keys whose record sets none
    /// (default: unlimited). A slot is held from admission until the response
    /// body ends or is dropped, so a long stream holds it to the end.
    pub fn max_concurrent(mut self, max: u32) -> Self {
        self.config.max_concurrent = Some(max);
        self
    }

    /// Adds a limit on `model` for every key together: the upstream's own
    /// capacity for it (its requests and tokens per minute). `model` is an
    /// exact name or a `*` glob; each model it matches has its own count,
    /// and the first entry that matches a request's model applies.
    ///
    /// ```
    /// use tollgate::rate_limit::{Limit, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::new()
    ///     .limit(Limit::requests_per_minute(60))
    ///     .model_limit("gpt-4o-mini", Limit::requests_per_minute(10_000))
    ///     .model_limit("gpt-4o-mini", Limit::tokens_per_minute(2_000_000))
    ///     .model_max_concurrent("gpt-4o-mini", 256);
    /// # let _ = layer;
    /// ```
    pub fn model_limit(mut self, model: impl Into<String>, limit: Limit) -> Self {
        self.shared_mut()
            .model_entry(model.into())
            .limits
            .push(limit);
        self
    }

    /// Caps requests in flight to `model` for every key together.
    pub fn model_max_concurrent(mut self, model: impl Into<String>, max: u32) -> Self {
        self.shared_mut().model_entry(model.into()).max_concurrent = Some(max);
        self
    }

    /// Adds a limit on the upstream `name` for every key and model together.
    /// A request's upstream is the [`Upstream`](super::Upstream) in its
    /// extensions (set by the router in front), or else the one
    /// [`upstream_for`](RateLimitLayer::upstream_for) maps its model to.
    pub fn upstream_limit(mut self, name: impl Into<String>, limit: Limit) -> Self {
        self.shared_mut()
            .upstream_entry(name.into())
            .limits
            .push(limit);
        self
    }

    /// Caps requests in flight to the upstream `name`.
    pub fn upstream_max_concurrent(mut self, name: impl Into<String>, max: u32) -> Self {
        self.shared_mut().upstream_entry(name.into()).max_concurrent = Some(max);
        self
    }

    /// Requests for `model` (an exact name or a `*` glob; the first match
    /// applies) go to the upstream `name`, for requests that carry no
    /// [`Upstream`](super::Upstream) extension.
    pub fn upstream_for(mut self, model: impl Into<String>, name: impl Into<String>) -> Self {
        self.shared_mut()
            .routes
            .push((model.into(), super::Upstream::new(name.into())));
        self
    }

    fn shared_mut(&mut self) -> &mut SharedScopes {
        Arc::make_mut(&mut self.config.shared)
    }

    /// The completion tokens to reserve for a request that sets no
    /// `max_tokens` (default 4096). A request reserves its prompt estimate
    /// plus this at admission; the difference is refunded (or charged) when
    /// the response reports its usage.
    pub fn default_max_tokens(mut self, tokens: u64) -> Self {
        self.config.default_max_tokens = tokens;
        self
    }

    /// The output limits of the models in `pricing`
    /// ([`ModelPrice::max_output_tokens`](crate::budget::ModelPrice::max_output_tokens)):
    /// a request that sets no output cap reserves its model's, as
    /// `BudgetLayer` does with the same prices; models without a price
    /// reserve [`default_max_tokens`](Self::default_max_tokens).
    pub fn output_limits(mut self, pricing: Pricing) -> Self {
        self.config.output_limits = Some(Arc::new(pricing));
        self
    }

    /// What a call that failed or was cut after the upstream accepted it
    /// counts against token limits (default [`ChargePolicy::Produced`]:
    /// the prompt estimate plus the output seen), as for budgets: see
    /// [`ChargePolicy`].
    pub fn charge_policy(mut self, policy: ChargePolicy) -> Self {
        self.config.charge_policy = policy;
        self
    }

    /// What to do with a request whose facts cannot be read (a multipart
    /// upload, a body that is not JSON) when a token limit or a per-model
    /// scope needs them: refuse it (the default: 415 or 400), or admit it
    /// reserving a fixed number of `tokens`. See [`Unreadable`].
    pub fn unreadable(mut self, unreadable: Unreadable) -> Self {
        self.config.unreadable = unreadable;
        self
    }

    /// Scopes the key's own limits per (key, model): a key's 60 requests per
    /// minute become 60 per minute for each model it calls (default off).
    /// For per-model values of their own, give keys
    /// [`model_limits`](crate::auth::KeyRecord::model_limits) instead. The model comes
    /// from the request body's `model`; requests without one share the key's
    /// unscoped state. The concurrency limit is scoped alike.
    ///
    /// The model is the client's word: put a model allow-list in front
    /// (`AuthLayer`'s allowed models, or a router refusing unknown models),
    /// or a client can multiply its quota by inventing model names.
    pub fn per_model(mut self, enabled: bool) -> Self {
        self.config.per_model = enabled;
        self
    }

    /// Which rate-limit headers to send (default [`HeaderStyle::OpenAi`]).
    pub fn headers(mut self, style: HeaderStyle) -> Self {
        self.config.header_style = style;
        self
    }

    /// Shadow mode (default off): count and send headers as usual, log each
    /// request that would have been refused (`tracing` at `warn`), and
    /// refuse none. For rolling limits out: watch the logs, then enforce.
    /// A request that would have been refused is not counted, just as it
    /// would not have been when enforcing, so the counts (and headers) are
    /// those clients will see once the limits are enforced.
    pub fn shadow(mut self, enabled: bool) -> Self {
        self.config.shadow = enabled;
        self
    }

    /// What to do when the store fails (default [`FailurePolicy::FailOpen`]).
    pub fn on_store_error(mut self, policy: FailurePolicy) -> Self {
        self.config.failure_policy = policy;
        self
    }

    /// What to do with requests that have no key (default: share the key
    /// `"anonymous"`); see [`Unkeyed`].
    pub fn unkeyed(mut self, policy: Unkeyed) -> Self {
        self.config.unkeyed = policy;
        self
    }

    /// The most request body read to find `model` and `max_tokens` when a
    /// token limit or per-model scoping needs them and no outer layer has
    /// (default 16 MiB; larger bodies are refused with 413).
    pub fn max_request_body_bytes(mut self, bytes: usize) -> Self {
        self.config.max_request_body_bytes = bytes;
        self
    }

    /// The `Retry-After` of a request refused for too many in flight
    /// (default 1 s): when a slot frees cannot be known in advance.
    pub fn concurrency_retry_after(mut self, delay: Duration) -> Self {
        self.config.concurrency_retry_after = delay;
        self
    }

    /// The wall clock for timestamp headers (default [`TokioClock`]). The
    /// store keeps its own clock for windows.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.config.clock = clock;
        self
    }

    /// Uses `store` for state, e.g. a [`MemoryRateLimitStore`] with another
    /// clock or cap, or a store shared by several gateway instances.
    pub fn store<St2: RateLimitStore>(self, store: St2) -> RateLimitLayer<St2, K> {
        RateLimitLayer {
            config: self.config,
            store,
            extractor: self.extractor,
        }
    }

    /// Keys requests with `extractor` instead of the `Principal`.
    pub fn limit_key<K2>(self, extractor: K2) -> RateLimitLayer<St, K2> {
        RateLimitLayer {
            config: self.config,
            store: self.store,
            extractor,
        }
    }

    /// The store, e.g. to inspect a [`MemoryRateLimitStore`].
    pub fn store_ref(&self) -> &St {
        &self.store
    }
}

impl<St: RateLimitStore + Clone, K: Clone> RateLimitLayer<St, K> {
    /// What every service this layer makes shares (and
    /// [`AdmissionLayer`](crate::admission::AdmissionLayer) too).
    pub(crate) fn shared(&self) -> Shared<St, K> {
        Shared::new(
            self.config.clone(),
            self.store.clone(),
            self.extractor.clone(),
        )
    }
}

impl<S, St: RateLimitStore + Clone, K: Clone> Layer<S> for RateLimitLayer<St, K> {
    type Service = RateLimit<S, St, K>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::from_parts(inner, Arc::new(self.shared()))
    }
}

impl<St: fmt::Debug, K> fmt::Debug for RateLimitLayer<St, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limits", &self.config.limits)
            .field("max_concurrent", &self.config.max_concurrent)
            .field("shared", &self.config.shared)
            .field("default_max_tokens", &self.config.default_max_tokens)
            .field("output_limits", &self.config.output_limits.is_some())
            .field("charge_policy", &self.config.charge_policy)
            .field("unreadable", &self.config.unreadable)
            .field("per_model", &self.config.per_model)
            .field("headers", &self.config.header_style)
            .field("shadow", &self.config.shadow)
            .field("on_store_error", &self.config.failure_policy)
            .field("unkeyed", &self.config.unkeyed)
            .field("store", &self.store)
            .field("extractor", &std::any::type_name::<K>())
            .finish_non_exhaustive()
    }
}
