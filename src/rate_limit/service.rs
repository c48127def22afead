use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::body::ResponseBody;
use super::future::{ResponseFuture, State};
use super::layer::Config;
use super::permit::{KeyId, LimitSet, Settler, StoreSettler};
use super::scope::{ScopeSource, tightest};
use super::{
    Acquire, ExtractLimitKey, Limit, Measure, PrincipalKey, RateLimitKey, RateLimitStore, Receipt,
    ScopeCharge, Unkeyed, Upstream,
};
use crate::request::{FromBytes, ReadMeta, Unreadable, unreadable_error};
use crate::small::Small;
use crate::store::memory::MemoryRateLimitStore;
use crate::usage::UsageOptions;
use crate::{ApiError, BoxError, Principal, RequestMeta};

mod verdict;

pub(crate) use self::verdict::{
    Decision, PendingHeaders, admit, decide, judge, rejection, uncharged,
};

/// What every clone of a [`RateLimit`] service shares.
pub(crate) struct Shared<St, K> {
    pub(crate) config: Config,
    pub(crate) store: St,
    pub(crate) extractor: K,
    pub(crate) settler: Arc<dyn Settler>,
}

/// Limits requests and tokens per key; built by
/// [`RateLimitLayer`](super::RateLimitLayer).
pub struct RateLimit<S, St = MemoryRateLimitStore, K = PrincipalKey> {
    inner: S,
    shared: Arc<Shared<St, K>>,
}

impl<S, St, K> RateLimit<S, St, K> {
    pub(crate) fn from_parts(inner: S, shared: Arc<Shared<St, K>>) -> Self {
        RateLimit { inner, shared }
    }

    crate::macros::define_inner_service_accessors!();
}

crate::macros::impl_clone!(RateLimit<S: Clone, St, K> { inner, shared });

impl<S: fmt::Debug, St: fmt::Debug, K> fmt::Debug for RateLimit<S, St, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("limits", &self.shared.config.limits)
            .field("store", &self.shared.store)
            .field("extractor", &std::any::type_name::<K>())
            .finish_non_exhaustive()
    }
}

impl<S, St, K, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, St, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    S::Error: 'static,
    St: RateLimitStore,
    K: ExtractLimitKey<ReqBody>,
    ReqBody: Body<Data = Bytes> + FromBytes + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, St, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The readied service goes with the request; its clone stays.
        let service = crate::macros::take_ready(&mut self.inner);
        let state = begin(&self.shared, req, service, false);
        ResponseFuture::new(self.shared.clone(), state)
    }
}

/// What an admission charges, kept until the store answers and, by the
/// permit, until the settlement.
pub(crate) struct Plan {
    pub(crate) key: KeyId,
    pub(crate) model: Option<String>,
    /// Whether the key's own limits are per model.
    pub(crate) per_model: bool,
    /// The key's own limits and concurrency cap, if it has any.
    pub(crate) key_scope: Option<(LimitSet, Option<u32>)>,
    /// The other scopes: per model, model-wide, upstream-wide, named.
    pub(crate) more: Vec<ScopeSource>,
    pub(crate) reserved_tokens: u64,
    /// The request's prompt estimate: what a call abandoned upstream
    /// counts under [`ChargePolicy::Produced`](crate::budget::ChargePolicy::Produced).
    pub(crate) prompt_tokens: u64,
    /// The reservation is a fixed one (an unreadable body): kept unless the
    /// upstream reports usage.
    pub(crate) fixed: bool,
    pub(crate) usage: UsageOptions,
    /// The store's receipt of the admission, for the settlement.
    pub(crate) receipt: Receipt,
    /// Whether a scope caps requests in flight: a slot to free at the end.
    pub(crate) releases: bool,
    /// Whether a limit counts tokens: a reservation to correct at the end.
    pub(crate) counts_tokens: bool,
}

impl Plan {
    /// Every scope: its key, limits and concurrency cap.
    pub(crate) fn scopes(&self) -> impl Iterator<Item = (RateLimitKey<'_>, &[Limit], Option<u32>)> {
        let id = self.key.as_str();
        let model = self.model.as_deref();
        let key_model = if self.per_model { model } else { None };
        self.key_scope
            .iter()
            .map(move |(limits, max)| {
                (
                    RateLimitKey::new(id).with_model(key_model),
                    limits.as_slice(),
                    *max,
                )
            })
            .chain(self.more.iter().map(move |s| s.resolve(id, model)))
    }

    /// How many scopes [`scopes`](Self::scopes) yields.
    pub(crate) fn scope_count(&self) -> usize {
        usize::from(self.key_scope.is_some()) + self.more.len()
    }

    pub(crate) fn limit_count(&self) -> usize {
        self.scopes().map(|(_, l, _)| l.len()).sum()
    }

    /// Every scope's limits, in order (for the headers).
    pub(crate) fn all_limits(&self) -> LimitSet {
        match (&self.key_scope, self.more.is_empty()) {
            (Some((limits, _)), true) => limits.clone(),
            _ => LimitSet::Layer(
                self.scopes()
                    .flat_map(|(_, l, _)| l.iter().copied())
                    .collect(),
            ),
        }
    }
}

/// Runs `f` on the scopes of `plan` as [`ScopeCharge`]s (on the stack for
/// up to four scopes and sixteen limits).
pub(crate) fn with_charges<R>(plan: &Plan, f: impl FnOnce(&Acquire<'_>) -> R) -> R {
    let mut costs = Small::<u64, 16>::new(plan.limit_count());
    let mut at = 0;
    for (_, limits, _) in plan.scopes() {
        for limit in limits {
            costs[at] = match limit.measure {
                Measure::Requests => 1,
                Measure::Tokens => plan.reserved_tokens,
            };
            at += 1;
        }
    }
    let empty = ScopeCharge {
        key: RateLimitKey::new(""),
        limits: &[],
        costs: &[],
        max_concurrent: None,
    };
    let mut scopes = Small::<ScopeCharge<'_>, 4>::filled(plan.scope_count(), empty);
    let mut at = 0;
    for (slot, (key, limits, max_concurrent)) in scopes.iter_mut().zip(plan.scopes()) {
        *slot = ScopeCharge {
            key,
            limits,
            costs: &costs[at..at + limits.len()],
            max_concurrent,
        };
        at += limits.len();
    }
    f(&Acquire { scopes: &scopes })
}

impl<St, K> Shared<St, K> {
    pub(crate) fn new(config: Config, store: St, extractor: K) -> Self
    where
        St: RateLimitStore + Clone,
    {
        Shared {
            settler: Arc::new(StoreSettler(store.clone())),
            config,
            store,
            extractor,
        }
    }
}

/// Decides what a request needs: nothing, its `RequestMeta`, or the store.
pub(crate) fn begin<S, St, K, B>(
    shared: &Shared<St, K>,
    req: Request<B>,
    service: S,
    meta_read: bool,
) -> State<S, B>
where
    S: Service<Request<B>>,
    St: RateLimitStore,
    K: ExtractLimitKey<B>,
    B: Body<Data = Bytes> + FromBytes + Send + 'static,
    B::Error: Into<BoxError>,
{
    let plan = match plan(shared, &req, meta_read) {
        Planned::Pass => return State::call(service, req, None),
        Planned::ReadMeta => {
            let max_request_body_bytes = shared.config.max_request_body_bytes;
            return State::meta(ReadMeta::new(req, max_request_body_bytes), service);
        }
        Planned::Reject(error) => return State::reject(error, HeaderMap::new()),
        Planned::Plan(plan) => plan,
    };
    let mut future = with_charges(&plan, |acquire| shared.store.acquire(acquire));
    // An answer known at once (memory) is decided now, and the inner
    // service called, without the `Acquire` state. One that must wait is
    // polled by the response future.
    match future.take_ready() {
        Some(result) => decide(shared, result, req, service, plan),
        None => State::acquire(future, req, service, plan),
    }
}

/// What a request needs before the store is asked.
pub(crate) enum Planned {
    /// Nothing: it is not limited.
    Pass,
    /// Its `RequestMeta`, read from its body (up to the layer's
    /// `max_request_body_bytes`); then plan again.
    ReadMeta,
    /// It is refused (facts it cannot give).
    Reject(ApiError),
    /// An admission by the store.
    Plan(Plan),
}

/// What the store must be asked for `req`: its scopes, limits and costs.
pub(crate) fn plan<St, K, B>(shared: &Shared<St, K>, req: &Request<B>, meta_read: bool) -> Planned
where
    K: ExtractLimitKey<B>,
{
    let config = &shared.config;
    let principal = req.extensions().get::<Principal>();
    let Some((key, max_concurrent, principal)) = (match shared.extractor.extract(req) {
        Some(key) => {
            let max_concurrent = principal
                .and_then(Principal::max_concurrent)
                .or(config.max_concurrent);
            Some((key, max_concurrent, principal))
        }
        None => match &config.unkeyed {
            Unkeyed::Shared(key) => Some((Cow::Borrowed(&**key), config.max_concurrent, None)),
            Unkeyed::Pass => None,
        },
    }) else {
        return Planned::Pass;
    };
    // The key's limits: its record's, or the layer's (looked at, not yet
    // shared: a request that must first be read is planned again).
    let own = match principal {
        Some(p) if !p.rate_limits().is_empty() => p.rate_limits(),
        _ => &config.limits[..],
    };
    let per_model_limits = principal.is_some_and(|p| !p.model_limits().is_empty());
    let named = principal.map_or(&[][..], Principal::scope_limits);
    let needs_model = config.per_model || per_model_limits || !config.shared.is_empty();
    let key_limited = !own.is_empty() || max_concurrent.is_some();
    if !key_limited && !needs_model && named.is_empty() {
        return Planned::Pass;
    }
    let has_tokens = |limits: &[Limit]| limits.iter().any(|l| l.measure == Measure::Tokens);
    let maybe_tokens =
        has_tokens(own) || needs_model || named.iter().any(|s| has_tokens(&s.limits));
    let meta = req.extensions().get::<RequestMeta>();
    if maybe_tokens && meta.is_none() && !meta_read {
        return Planned::ReadMeta;
    }
    // Facts this request needs and cannot give: refused, or a fixed
    // reservation.
    let unreadable = match meta {
        Some(meta) if maybe_tokens && meta.is_unreadable() => match config.unreadable {
            Unreadable::Reject => {
                return Planned::Reject(unreadable_error(meta, req.headers()));
            }
            Unreadable::Reserve { tokens, .. } => Some(tokens),
        },
        _ => None,
    };
    let model = if needs_model {
        meta.and_then(|m| m.model.clone())
    } else {
        None
    };

    // The scopes besides the key's own.
    let mut more = Vec::new();
    // The key's limits (`own`), shared with the plan rather than copied.
    let mut key_scope = key_limited.then(|| {
        let limits = match principal {
            Some(p) if !p.rate_limits().is_empty() => LimitSet::Principal(p.clone()),
            _ => LimitSet::Layer(config.limits.clone()),
        };
        (limits, max_concurrent)
    });
    if let (Some(p), Some(m)) = (principal, model.as_deref()) {
        let found = p
            .model_limits()
            .iter()
            .position(|e| crate::auth::glob_matches(&e.model, m));
        if let Some(i) = found {
            if config.per_model {
                // The key's limits are per model already: one scope, the
                // tighter of any two limits that would share a state.
                let entry = &p.model_limits()[i];
                let merged = tightest(own.iter().chain(&entry.limits).copied());
                let max = match (max_concurrent, entry.max_concurrent) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                key_scope = None;
                more.push(ScopeSource::KeyModelMerged(merged.into(), max));
            } else {
                more.push(ScopeSource::KeyModel(p.clone(), i));
            }
        }
    }
    if let Some(m) = model.as_deref()
        && let Some(i) = config.shared.model(m)
    {
        more.push(ScopeSource::Model(config.shared.clone(), i));
    }
    if !config.shared.is_empty() {
        let extension = req.extensions().get::<Upstream>();
        if let Some((i, upstream)) = config.shared.upstream(extension, model.as_deref()) {
            more.push(ScopeSource::Upstream(config.shared.clone(), i, upstream));
        }
    }
    if let Some(p) = principal {
        more.extend((0..named.len()).map(|i| ScopeSource::Named(p.clone(), i)));
    }
    if key_scope.is_none() && more.is_empty() {
        return Planned::Pass;
    }

    let usage = meta.map(UsageOptions::from_meta).unwrap_or_default();
    // The caller's key id is kept as its `Principal` (a reference count),
    // not copied.
    let key = match key {
        Cow::Borrowed(id) => match principal {
            Some(p) if std::ptr::eq(id, p.key_id()) => KeyId::Principal(p.clone()),
            _ => match &config.unkeyed {
                Unkeyed::Shared(Cow::Borrowed(shared)) if std::ptr::eq(id, *shared) => {
                    KeyId::Static(shared)
                }
                _ => KeyId::Owned(id.into()),
            },
        },
        Cow::Owned(id) => KeyId::Owned(id.into_boxed_str()),
    };
    let mut plan = Plan {
        key,
        model,
        per_model: config.per_model,
        key_scope,
        more,
        reserved_tokens: 0,
        prompt_tokens: meta.map_or(0, |m| m.prompt_tokens_estimate),
        fixed: unreadable.is_some(),
        usage,
        receipt: Receipt::NONE,
        releases: false,
        counts_tokens: false,
    };
    let tokens = plan.scopes().any(|(_, l, _)| has_tokens(l));
    plan.counts_tokens = tokens;
    let releases = plan.scopes().any(|(_, _, max)| max.is_some());
    plan.releases = releases;
    plan.reserved_tokens = match (meta, unreadable) {
        (_, Some(fixed)) if tokens => fixed,
        (Some(meta), None) if tokens && meta.body_len > 0 => {
            let model = meta.model.as_deref();
            meta.reserve_tokens(config.max_tokens_for(model))
        }
        _ => 0,
    };
    Planned::Plan(plan)
}

#[cfg(test)]
mod tests;
