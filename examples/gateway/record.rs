//! What the gateway's own layers learn about one request, in one place:
//! [`RequestRecord`], and which endpoint it is: [`Endpoint`].
//!
//! The access log needs the caller, the model and the upstream of a request
//! whose answer it logs; the endpoint needs the route the routing layer
//! chose; the attempt meter below the retry layer counts into something the
//! endpoint reads back after a transport failure. Each of those as its own
//! entry in the request's `http::Extensions` costs a boxed value per entry
//! (and each clone of the extensions, as the retry layer makes per attempt,
//! copies them all). One `Arc<RequestRecord>`, made by the access log when
//! the request comes in, is one entry; each layer fills in what it learns,
//! once.
//!
//! The library's own entries stay where the library puts them:
//! `RequestMeta` (the body's facts), `Principal` (the caller),
//! `tollgate::rate_limit::Upstream` (what per-upstream limits count by).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use tollgate::Principal;

use crate::proxy::Api;
use crate::routing::Route;

/// The endpoints the gateway serves behind its layers (auth and the rest):
/// the proxied APIs, the model list, and the key's own status. Every other
/// path (`/health`, `/admin/*`, `/metrics`, unknown ones) is served beside
/// them (see `stack.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// A proxied API (`POST`).
    Api(Api),
    /// `GET /v1/models`.
    Models,
    /// `GET /v1/models/{id}`.
    Model,
    /// `GET /v1/key`.
    Key,
}

impl Endpoint {
    /// The endpoint of a request path, if it is one of them.
    pub fn of(path: &str) -> Option<Endpoint> {
        if let Some(api) = Api::of_path(path) {
            return Some(Endpoint::Api(api));
        }
        match path {
            "/v1/models" => Some(Endpoint::Models),
            "/v1/key" => Some(Endpoint::Key),
            _ => path
                .strip_prefix("/v1/models/")
                .filter(|id| !id.is_empty())
                .map(|_| Endpoint::Model),
        }
    }

    /// Its route pattern, for the access log and the metrics.
    pub fn route(self) -> &'static str {
        match self {
            Endpoint::Api(api) => api.route(),
            Endpoint::Models => "/v1/models",
            Endpoint::Model => "/v1/models/{*id}",
            Endpoint::Key => "/v1/key",
        }
    }

    /// Whether it answers `method`: a proxied API `POST`, the others `GET`
    /// (and `HEAD`, as axum's `get` routes do).
    pub fn answers(self, method: &http::Method) -> bool {
        match self {
            Endpoint::Api(_) => method == http::Method::POST,
            _ => method == http::Method::GET || method == http::Method::HEAD,
        }
    }

    /// The methods it answers, for a 405's `allow` header.
    pub fn allow(self) -> &'static str {
        match self {
            Endpoint::Api(_) => "POST",
            _ => "GET,HEAD",
        }
    }
}

/// What the layers learn about one request (see the module docs). Each
/// field is set at most once, by the layer that finds it out; the access
/// log reads them when the answer is done.
#[derive(Default)]
pub struct RequestRecord {
    endpoint: Option<Endpoint>,
    /// The caller, once the model check has seen it (an `Arc` inside).
    key: OnceLock<Principal>,
    /// The model as the client named it: the config's name (shared) for a
    /// served model, a copy only for one that is not.
    model: OnceLock<Arc<str>>,
    /// The route of a served model: its upstream and client stack.
    route: OnceLock<Arc<Route>>,
    /// Attempts sent upstream, counted below the retry layer.
    attempts: AtomicU32,
}

impl RequestRecord {
    /// The record of a request for `endpoint` (`None`: a path served beside
    /// the endpoints).
    pub fn new(endpoint: Option<Endpoint>) -> Arc<RequestRecord> {
        Arc::new(RequestRecord {
            endpoint,
            ..RequestRecord::default()
        })
    }

    /// Its endpoint.
    pub fn endpoint(&self) -> Option<Endpoint> {
        self.endpoint
    }

    /// Records the caller and the model it asked for: `route`, when the
    /// config serves it, else `named` (the client's name, copied).
    pub fn found(&self, key: Option<&Principal>, named: Option<&str>, route: Option<&Arc<Route>>) {
        if let Some(key) = key {
            let _ = self.key.set(key.clone());
        }
        let model = match (route, named) {
            (Some(route), _) => Some(route.model.clone()),
            (None, Some(name)) => Some(Arc::from(name)),
            (None, None) => None,
        };
        if let Some(model) = model {
            let _ = self.model.set(model);
        }
        if let Some(route) = route {
            let _ = self.route.set(route.clone());
        }
    }

    /// The caller.
    pub fn key(&self) -> Option<&Principal> {
        self.key.get()
    }

    /// The model as the client named it.
    pub fn model(&self) -> Option<&str> {
        self.model.get().map(|m| &**m)
    }

    /// The served model's route.
    pub fn route(&self) -> Option<&Arc<Route>> {
        self.route.get()
    }

    /// One more attempt sent upstream.
    pub fn add_attempt(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }

    /// Attempts sent upstream so far.
    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_by_path() {
        assert_eq!(
            Endpoint::of("/v1/chat/completions"),
            Some(Endpoint::Api(Api::Chat))
        );
        assert_eq!(Endpoint::of("/v1/models"), Some(Endpoint::Models));
        assert_eq!(Endpoint::of("/v1/models/a/b"), Some(Endpoint::Model));
        assert_eq!(Endpoint::of("/v1/models/"), None);
        assert_eq!(Endpoint::of("/v1/key"), Some(Endpoint::Key));
        assert_eq!(Endpoint::of("/v1/messages/count_tokens"), None);
        assert_eq!(Endpoint::of("/health"), None);
        assert_eq!(Endpoint::Model.route(), "/v1/models/{*id}");
    }
}
