//! Whom a request counts against: [`ExtractLimitKey`].

use std::borrow::Cow;
use std::fmt;

use http::{HeaderName, Request};

use crate::Principal;

/// Finds the key a request is rate limited under.
///
/// [`PrincipalKey`] (the default) keys on the `Principal` that `AuthLayer`
/// put in the request's extensions; [`HeaderKey`] on a header's value. Any
/// `Fn(&Request<B>) -> Option<String>` is one too, e.g. to key on the client's
/// address:
///
/// ```
/// use std::net::SocketAddr;
/// use bytes::Bytes;
/// use http::Request;
/// use http_body_util::Full;
/// use tollgate::rate_limit::{Limit, RateLimitLayer};
///
/// let layer = RateLimitLayer::new()
///     .limit(Limit::requests_per_minute(60))
///     .limit_key(|req: &Request<Full<Bytes>>| {
///         req.extensions().get::<SocketAddr>().map(|addr| addr.ip().to_string())
///     });
/// # let _ = layer;
/// ```
///
/// Returning `None` marks the request *unkeyed*; the layer's
/// [`Unkeyed`] policy decides what happens to it.
///
/// The key is logged when a request is refused (and in shadow mode): never
/// return a secret as is. [`HeaderKey`] digests credential headers for that
/// reason; a closure should do the same.
pub trait ExtractLimitKey<B>: Send + Sync + 'static {
    /// The key of `req`, or `None` if it has none.
    fn extract<'r>(&self, req: &'r Request<B>) -> Option<Cow<'r, str>>;
}

impl<B, F> ExtractLimitKey<B> for F
where
    F: Fn(&Request<B>) -> Option<String> + Send + Sync + 'static,
{
    fn extract<'r>(&self, req: &'r Request<B>) -> Option<Cow<'r, str>> {
        self(req).map(Cow::Owned)
    }
}

/// Keys on the key id of the request's [`Principal`] (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct PrincipalKey;

impl<B> ExtractLimitKey<B> for PrincipalKey {
    fn extract<'r>(&self, req: &'r Request<B>) -> Option<Cow<'r, str>> {
        req.extensions()
            .get::<Principal>()
            .map(|p| Cow::Borrowed(p.key_id()))
    }
}

/// Keys on the value of a request header (`x-tenant-id`, `x-forwarded-for`
/// set by a trusted proxy, …). A missing, empty or non-text value is unkeyed.
///
/// The value of a credential header (`authorization`,
/// `proxy-authorization`, `x-api-key`, `api-key`, `cookie`) is never used as
/// is: the key is `sha256:` and the first 32 hex digits of its SHA-256, so
/// the secret is neither held by the store nor written to logs. (Behind an
/// `AuthLayer`, prefer the default [`PrincipalKey`].)
#[derive(Debug, Clone)]
pub struct HeaderKey {
    name: HeaderName,
    digest: bool,
}

impl HeaderKey {
    /// Keys on the header `name`.
    pub fn new(name: HeaderName) -> Self {
        let digest = matches!(
            name.as_str(),
            "authorization" | "proxy-authorization" | "x-api-key" | "api-key" | "cookie"
        );
        HeaderKey { name, digest }
    }
}

impl<B> ExtractLimitKey<B> for HeaderKey {
    fn extract<'r>(&self, req: &'r Request<B>) -> Option<Cow<'r, str>> {
        let value = req
            .headers()
            .get(&self.name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())?;
        if !self.digest {
            return Some(Cow::Borrowed(value));
        }
        use sha2::Digest;
        use std::fmt::Write;
        let hash = sha2::Sha256::digest(value.as_bytes());
        let mut key = String::with_capacity(39);
        key.push_str("sha256:");
        for byte in &hash[..16] {
            let _ = write!(key, "{byte:02x}");
        }
        Some(Cow::Owned(key))
    }
}

/// What to do with a request that has no key (no `Principal`, or a custom
/// extractor returning `None`).
///
/// The default is [`Unkeyed::Shared`] under the key `"anonymous"`: with no
/// `AuthLayer` in front, the layer then limits the whole service, the way a
/// global limit would; behind an `AuthLayer` that admits anonymous routes,
/// anonymous callers share one budget instead of having none. Choose
/// [`Unkeyed::Pass`] to let unkeyed requests through unlimited.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unkeyed {
    /// Unkeyed requests pass, unlimited and without rate-limit headers.
    Pass,
    /// Unkeyed requests share this key (with the layer's default limits).
    Shared(Cow<'static, str>),
}

impl Default for Unkeyed {
    fn default() -> Self {
        Unkeyed::Shared(Cow::Borrowed("anonymous"))
    }
}

impl fmt::Debug for Unkeyed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unkeyed::Pass => f.write_str("Pass"),
            Unkeyed::Shared(key) => f.debug_tuple("Shared").field(key).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{KeyHash, KeyRecord};

    #[test]
    fn extractors() {
        let mut req = Request::new(());
        assert!(PrincipalKey.extract(&req).is_none());
        req.extensions_mut()
            .insert(Principal::new(KeyRecord::new("alice", KeyHash([0; 32]))));
        assert_eq!(PrincipalKey.extract(&req).as_deref(), Some("alice"));

        let header = HeaderKey::new(HeaderName::from_static("x-tenant"));
        assert!(header.extract(&req).is_none());
        req.headers_mut().insert("x-tenant", " ".parse().unwrap());
        assert!(header.extract(&req).is_none());
        req.headers_mut()
            .insert("x-tenant", "acme".parse().unwrap());
        assert_eq!(header.extract(&req).as_deref(), Some("acme"));

        let bearer = HeaderKey::new(http::header::AUTHORIZATION);
        req.headers_mut()
            .insert("authorization", "Bearer sk-secret".parse().unwrap());
        let key = bearer.extract(&req).unwrap();
        assert!(key.starts_with("sha256:") && key.len() == 39, "{key}");
        assert!(!key.contains("sk-secret"));

        let closure = |req: &Request<()>| Some(req.uri().path().to_owned());
        assert_eq!(closure.extract(&req).as_deref(), Some("/"));
    }
}
