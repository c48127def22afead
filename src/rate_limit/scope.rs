//! The scopes a request counts against, besides its key: per model (the
//! key's own per-model values, or a model's capacity for every key), per
//! upstream, and any scope a key record names.

use std::fmt;
use std::sync::Arc;

use super::{Limit, RateLimitKey};
use crate::Principal;
use crate::auth::glob_matches;

/// Limits for the models matching `model` (an exact name or a `*` glob):
/// on a key record, that key's own values per model
/// ([`KeyRecord::model_limits`](crate::auth::KeyRecord::model_limits));
/// on the layer, a model's capacity shared by every key
/// ([`RateLimitLayer::model_limit`](super::RateLimitLayer::model_limit)).
/// Each model a glob matches has a count of its own.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ModelLimits {
    /// An exact model name or a `*` glob.
    pub model: String,
    /// The limits.
    pub limits: Vec<Limit>,
    /// Requests in flight allowed.
    pub max_concurrent: Option<u32>,
}

impl ModelLimits {
    /// Limits for the models matching `model`.
    pub fn new(model: impl Into<String>, limits: impl IntoIterator<Item = Limit>) -> Self {
        ModelLimits {
            model: model.into(),
            limits: limits.into_iter().collect(),
            max_concurrent: None,
        }
    }

    /// Caps requests in flight.
    pub fn with_max_concurrent(mut self, max: u32) -> Self {
        self.max_concurrent = Some(max);
        self
    }
}

/// Limits of a scope shared by several keys that a key record names: its
/// user, team or organisation (`scope = "team"`, `id = "acme"`). Every key
/// naming the same scope and id shares one count. The layer needs no code
/// for a new kind of scope: the name is data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ScopeLimits {
    /// The kind of scope, e.g. `user`, `team`, `org`.
    pub scope: String,
    /// Which one.
    pub id: String,
    /// The limits.
    pub limits: Vec<Limit>,
    /// Requests in flight allowed.
    pub max_concurrent: Option<u32>,
}

impl ScopeLimits {
    /// Limits of the scope `scope` named `id`.
    pub fn new(
        scope: impl Into<String>,
        id: impl Into<String>,
        limits: impl IntoIterator<Item = Limit>,
    ) -> Self {
        ScopeLimits {
            scope: scope.into(),
            id: id.into(),
            limits: limits.into_iter().collect(),
            max_concurrent: None,
        }
    }
}

/// The upstream a request will be sent to, for upstream-wide limits
/// ([`RateLimitLayer::upstream_limit`](super::RateLimitLayer::upstream_limit)).
/// The router in front of the layer inserts it into the request's
/// extensions once it has chosen the upstream; without it, the layer maps
/// the request's model with
/// [`RateLimitLayer::upstream_for`](super::RateLimitLayer::upstream_for).
///
/// ```
/// use tollgate::rate_limit::Upstream;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(Upstream::new("openai-eu"));
/// assert_eq!(req.extensions().get::<Upstream>().map(Upstream::name), Some("openai-eu"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Upstream(Arc<str>);

impl Upstream {
    /// The upstream `name`.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Upstream(name.into())
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Upstream").field(&&*self.0).finish()
    }
}

/// Upstream-wide limits of the layer.
#[derive(Debug, Clone, Default)]
pub(crate) struct UpstreamLimits {
    pub(crate) name: String,
    pub(crate) limits: Vec<Limit>,
    pub(crate) max_concurrent: Option<u32>,
}

/// The layer's scopes shared by every key: models, upstreams, and which
/// upstream serves which model.
#[derive(Debug, Clone, Default)]
pub(crate) struct SharedScopes {
    pub(crate) models: Vec<ModelLimits>,
    pub(crate) upstreams: Vec<UpstreamLimits>,
    pub(crate) routes: Vec<(String, Upstream)>,
}

impl SharedScopes {
    pub(crate) fn model_entry(&mut self, model: String) -> &mut ModelLimits {
        let at = match self.models.iter().position(|m| m.model == model) {
            Some(at) => at,
            None => {
                self.models.push(ModelLimits::new(model, []));
                self.models.len() - 1
            }
        };
        &mut self.models[at]
    }

    pub(crate) fn upstream_entry(&mut self, name: String) -> &mut UpstreamLimits {
        let at = match self.upstreams.iter().position(|u| u.name == name) {
            Some(at) => at,
            None => {
                self.upstreams.push(UpstreamLimits {
                    name,
                    ..UpstreamLimits::default()
                });
                self.upstreams.len() - 1
            }
        };
        &mut self.upstreams[at]
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.models.is_empty() && self.upstreams.is_empty()
    }

    /// The first model entry matching `model`.
    pub(crate) fn model(&self, model: &str) -> Option<usize> {
        self.models
            .iter()
            .position(|m| glob_matches(&m.model, model))
    }

    /// The upstream-wide entry of a request: its `Upstream` extension, or
    /// the route of its model.
    pub(crate) fn upstream(
        &self,
        extension: Option<&Upstream>,
        model: Option<&str>,
    ) -> Option<(usize, Upstream)> {
        if self.upstreams.is_empty() {
            return None;
        }
        let upstream = match extension {
            Some(u) => u.clone(),
            None => {
                let model = model?;
                self.routes
                    .iter()
                    .find(|(pattern, _)| glob_matches(pattern, model))
                    .map(|(_, u)| u.clone())?
            }
        };
        let at = self
            .upstreams
            .iter()
            .position(|u| u.name == upstream.name())?;
        Some((at, upstream))
    }
}

/// Where one scope of a request gets its key and limits, kept from
/// admission to settlement without copying limits.
#[derive(Clone)]
pub(crate) enum ScopeSource {
    /// The key's per-model limits: `principal.model_limits()[index]`.
    KeyModel(Principal, usize),
    /// The key's own limits merged with its per-model limits (the layer
    /// scopes the key's limits per model too).
    KeyModelMerged(Arc<[Limit]>, Option<u32>),
    /// A model's limits for every key: `shared.models[index]`.
    Model(Arc<SharedScopes>, usize),
    /// An upstream's limits: `shared.upstreams[index]`.
    Upstream(Arc<SharedScopes>, usize, Upstream),
    /// A scope the key record names: `principal.scope_limits()[index]`.
    Named(Principal, usize),
}

impl ScopeSource {
    /// The scope's key (the caller's `id` and the request's `model` where
    /// the scope needs them), its limits and its concurrency cap.
    pub(crate) fn resolve<'a>(
        &'a self,
        id: &'a str,
        model: Option<&'a str>,
    ) -> (RateLimitKey<'a>, &'a [Limit], Option<u32>) {
        match self {
            ScopeSource::KeyModel(p, i) => {
                let entry = &p.model_limits()[*i];
                (
                    RateLimitKey::new(id).with_model(model),
                    &entry.limits,
                    entry.max_concurrent,
                )
            }
            ScopeSource::KeyModelMerged(limits, max) => {
                (RateLimitKey::new(id).with_model(model), limits, *max)
            }
            ScopeSource::Model(shared, i) => {
                let entry = &shared.models[*i];
                (
                    RateLimitKey::scoped(RateLimitKey::MODEL, model.unwrap_or_default()),
                    &entry.limits,
                    entry.max_concurrent,
                )
            }
            ScopeSource::Upstream(shared, i, upstream) => {
                let entry = &shared.upstreams[*i];
                (
                    RateLimitKey::scoped(RateLimitKey::UPSTREAM, upstream.name()),
                    &entry.limits,
                    entry.max_concurrent,
                )
            }
            ScopeSource::Named(p, i) => {
                let entry = &p.scope_limits()[*i];
                (
                    RateLimitKey::scoped(&entry.scope, &entry.id),
                    &entry.limits,
                    entry.max_concurrent,
                )
            }
        }
    }
}

/// `limits` with, of any two sharing measure, window and algorithm (one
/// state), only the tighter.
pub(crate) fn tightest(limits: impl IntoIterator<Item = Limit>) -> Vec<Limit> {
    let mut out: Vec<Limit> = Vec::new();
    for limit in limits {
        match out.iter_mut().find(|l| l.same_state(&limit)) {
            Some(kept) if limit.amount < kept.amount => *kept = limit,
            Some(_) => {}
            None => out.push(limit),
        }
    }
    out
}
