//! The one description of a failure: [`ApiError`] and its class, [`ErrorKind`].
//!
//! Every tollgate layer that rejects a request builds an [`ApiError`]; the
//! [`envelope`](crate::envelope) module is the only place that turns one into
//! bytes (and bytes from an upstream back into one).
//!
//! ```
//! use std::time::Duration;
//! use tollgate::{ApiError, ErrorKind, RetryClass};
//!
//! let err = ApiError::rate_limited()
//!     .with_message("Rate limit exceeded: 60 requests per minute")
//!     .with_retry_after(Duration::from_millis(1500));
//!
//! assert_eq!(err.kind(), ErrorKind::RateLimited);
//! assert_eq!(err.status(), http::StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(err.error_type(), "rate_limit_error");
//! assert_eq!(err.code(), Some("rate_limit_exceeded"));
//! assert_eq!(err.retry_class(), RetryClass::AfterDelay);
//! ```

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use http::StatusCode;

mod kind;

pub use self::kind::ErrorKind;
pub(crate) use self::kind::{Spend, UPSTREAM_AUTH_FAILED, UPSTREAM_QUOTA_EXHAUSTED};

/// Whether, and when, repeating a request that failed this way can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryClass {
    /// Retrying cannot help (bad request, bad key, no money).
    Never,
    /// Retrying helps once the server's delay has passed (rate limits).
    AfterDelay,
    /// The failure is likely transient; retry with backoff.
    Transient,
}

/// Where a failure was decided: by this gateway, or by the upstream provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Origin {
    /// The gateway itself refused or failed the request.
    #[default]
    Gateway,
    /// The upstream provider returned the error.
    Upstream,
}

/// A failure, described once for every wire format.
///
/// Build one from a kind (defaults fill status, type, code and message), then
/// refine it with the `with_*` setters. Render it with
/// [`ErrorFormat`](crate::envelope::ErrorFormat) or
/// [`ApiError::into_http_response`].
///
/// The message is shown to API clients: never put a secret, a stack trace or
/// an internal `Debug` dump in it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiError {
    // Boxed so `Result<T, ApiError>` stays small on the success path.
    inner: Box<Inner>,
}

#[derive(Clone, PartialEq, Eq)]
struct Inner {
    kind: ErrorKind,
    status: StatusCode,
    // `None`: the kind's default message. Kept apart from an explicit
    // message (even one with the same text) so a format with default texts
    // of its own (HAI's `detail`) uses them only when nobody chose one.
    message: Option<Cow<'static, str>>,
    error_type: Cow<'static, str>,
    param: Option<Cow<'static, str>>,
    code: Option<Cow<'static, str>>,
    origin: Origin,
    provider: Option<Cow<'static, str>>,
    retry_after: Option<Duration>,
    should_retry: Option<bool>,
    request_id: Option<Cow<'static, str>>,
}

macro_rules! constructors {
    ($($(#[$doc:meta])* $name:ident => $kind:ident;)*) => {
        $(
            $(#[$doc])*
            pub fn $name() -> ApiError {
                ApiError::from_kind(ErrorKind::$kind)
            }
        )*
    };
}

impl ApiError {
    /// An error of `kind` with the kind's defaults and `message`.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError::from_kind(kind).with_message(message)
    }

    /// An error of `kind` with the kind's defaults, default message included.
    pub fn from_kind(kind: ErrorKind) -> ApiError {
        ApiError {
            inner: Box::new(Inner {
                kind,
                status: kind.status(),
                message: None,
                error_type: Cow::Borrowed(kind.error_type()),
                param: kind.default_param().map(Cow::Borrowed),
                code: Some(Cow::Borrowed(kind.default_code())),
                origin: Origin::Gateway,
                provider: None,
                retry_after: None,
                should_retry: None,
                request_id: None,
            }),
        }
    }

    constructors! {
        /// 400 `invalid_request_error` / `invalid_request`.
        invalid_request => InvalidRequest;
        /// 400 `invalid_request_error` / `invalid_model`, param `model`.
        invalid_model => InvalidModel;
        /// 400 `invalid_request_error` / `context_length_exceeded`.
        context_length_exceeded => ContextLengthExceeded;
        /// 400 `invalid_request_error` / `content_filter`.
        content_filter => ContentFilter;
        /// 401 `invalid_request_error` / `invalid_api_key`.
        authentication => Authentication;
        /// 402 `budget_exceeded_error` / `budget_exceeded`.
        budget_exceeded => BudgetExceeded;
        /// 403 `permission_error` / `permission_denied`.
        permission_denied => PermissionDenied;
        /// 403 `insufficient_quota` / `insufficient_balance`.
        insufficient_balance => InsufficientBalance;
        /// 404 `not_found_error` / `not_found`.
        not_found => NotFound;
        /// 409 `conflict_error` / `conflict`.
        conflict => Conflict;
        /// 413 `invalid_request_error` / `payload_too_large`.
        payload_too_large => PayloadTooLarge;
        /// 422 `invalid_request_error` / `unprocessable_entity`.
        unprocessable => Unprocessable;
        /// 429 `rate_limit_error` / `rate_limit_exceeded`.
        rate_limited => RateLimited;
        /// 429 `insufficient_quota` / `insufficient_quota` (never retryable).
        quota_exhausted => QuotaExhausted;
        /// 500 `server_error` / `internal_error`.
        internal => Internal;
        /// 502 `server_error` / `bad_gateway`.
        bad_gateway => BadGateway;
        /// 503 `server_error` / `service_unavailable`.
        unavailable => Unavailable;
        /// 504 `timeout_error` / `timeout`.
        timeout => Timeout;
        /// 529 `overloaded_error` / `overloaded`.
        overloaded => Overloaded;
        /// 502 `api_connection_error` / `api_connection_error`.
        connection => Connection;
    }

    /// 502 `server_error` / `upstream_auth_failed`, origin `Upstream`, never
    /// retried: the gateway's own upstream credentials were refused (an
    /// upstream 401 or 403). The tenant's key is fine, so the tenant must not
    /// get a 401 that its SDK raises as `AuthenticationError`. The message
    /// never repeats the upstream's (it may quote the gateway's key).
    pub fn upstream_auth_failed() -> ApiError {
        ApiError::new(
            ErrorKind::BadGateway,
            "The gateway could not authenticate with its upstream provider.",
        )
        .with_code(UPSTREAM_AUTH_FAILED)
        .with_origin(Origin::Upstream)
    }

    /// 503 `server_error` / `upstream_quota_exhausted`, origin `Upstream`,
    /// never retried: the gateway's own account at the upstream is out of
    /// quota or balance (an upstream 402, a 403 balance or a quota 429). Not
    /// a 429 `insufficient_quota`, which would tell the tenant its own quota
    /// is used up.
    pub fn upstream_quota_exhausted() -> ApiError {
        ApiError::new(
            ErrorKind::Unavailable,
            "The gateway's quota at its upstream provider is exhausted.",
        )
        .with_code(UPSTREAM_QUOTA_EXHAUSTED)
        .with_origin(Origin::Upstream)
    }

    /// Replaces the human-readable message.
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.inner.message = Some(message.into());
        self
    }

    /// Overrides the HTTP status (the kind's default otherwise).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.inner.status = status;
        self
    }

    /// Overrides the OpenAI `type` (the kind's default otherwise).
    pub fn with_type(mut self, error_type: impl Into<Cow<'static, str>>) -> Self {
        self.inner.error_type = error_type.into();
        self
    }

    /// Names the request field at fault (`"model"`, `"max_tokens"`).
    pub fn with_param(mut self, param: impl Into<Cow<'static, str>>) -> Self {
        self.inner.param = Some(param.into());
        self
    }

    /// Removes the `param` (rendered as `null`).
    pub fn without_param(mut self) -> Self {
        self.inner.param = None;
        self
    }

    /// Sets the machine-readable code (`invalid_api_key`, `budget_exceeded`, …).
    pub fn with_code(mut self, code: impl Into<Cow<'static, str>>) -> Self {
        self.inner.code = Some(code.into());
        self
    }

    /// Removes the `code` (rendered as `null`).
    pub fn without_code(mut self) -> Self {
        self.inner.code = None;
        self
    }

    /// Sets where the error was decided.
    pub fn with_origin(mut self, origin: Origin) -> Self {
        self.inner.origin = origin;
        self
    }

    /// Marks the error as the upstream provider's, naming it (`"OpenAI"`).
    pub fn with_provider(mut self, provider: impl Into<Cow<'static, str>>) -> Self {
        self.inner.origin = Origin::Upstream;
        self.inner.provider = Some(provider.into());
        self
    }

    /// When a retry may succeed (rendered as `Retry-After` and `retry-after-ms`
    /// when [`should_retry`](Self::should_retry) holds).
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.inner.retry_after = Some(delay);
        self
    }

    /// Removes the delay: the client is not to wait and retry (an upstream's
    /// `retry-after` on a failure the gateway already retried to its limit).
    pub fn without_retry_after(mut self) -> Self {
        self.inner.retry_after = None;
        self
    }

    /// Overrides the retry decision derived from the kind (`x-should-retry`).
    pub fn with_should_retry(mut self, should_retry: bool) -> Self {
        self.inner.should_retry = Some(should_retry);
        self
    }

    /// Attaches the request id the error belongs to.
    pub fn with_request_id(mut self, id: impl Into<Cow<'static, str>>) -> Self {
        self.inner.request_id = Some(id.into());
        self
    }

    /// The class of the error.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.inner.status
    }

    /// The human-readable message: the one set, or the kind's default.
    pub fn message(&self) -> &str {
        self.inner
            .message
            .as_deref()
            .unwrap_or_else(|| self.inner.kind.default_message())
    }

    /// The message set with [`with_message`](Self::with_message) (also by
    /// [`parse`](crate::envelope::parse)); `None` when the kind's default
    /// applies. A format with default texts of its own (HAI's `detail`)
    /// uses them only then.
    pub fn explicit_message(&self) -> Option<&str> {
        self.inner.message.as_deref()
    }

    /// The OpenAI `error.type`.
    pub fn error_type(&self) -> &str {
        &self.inner.error_type
    }

    /// The request field at fault.
    pub fn param(&self) -> Option<&str> {
        self.inner.param.as_deref()
    }

    /// The machine-readable code.
    pub fn code(&self) -> Option<&str> {
        self.inner.code.as_deref()
    }

    /// Where the error was decided.
    pub fn origin(&self) -> Origin {
        self.inner.origin
    }

    /// The upstream provider's name, when known.
    pub fn provider(&self) -> Option<&str> {
        self.inner.provider.as_deref()
    }

    /// When a retry may succeed.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// The request id, when attached.
    pub fn request_id(&self) -> Option<&str> {
        self.inner.request_id.as_deref()
    }

    /// Whether a retry can help: the kind's class, or [`RetryClass::Never`]
    /// when the code or type names a budget or an exhausted quota or balance
    /// (`budget_exceeded`, `budget_exceeded_error`, `insufficient_quota`,
    /// `billing_error`, …) or the gateway's own upstream credentials
    /// (`upstream_auth_failed`), whatever the status says.
    pub fn retry_class(&self) -> RetryClass {
        let code = self.inner.code.as_deref();
        if code == Some(UPSTREAM_AUTH_FAILED)
            || Spend::named(code, Some(&self.inner.error_type)).is_some()
        {
            return RetryClass::Never;
        }
        self.inner.kind.retry_class()
    }

    /// The value of `x-should-retry`: an explicit override, or whether the
    /// retry class is anything but [`RetryClass::Never`].
    pub fn should_retry(&self) -> bool {
        self.inner
            .should_retry
            .unwrap_or(self.retry_class() != RetryClass::Never)
    }

    /// The explicit `x-should-retry` override, if any.
    pub fn should_retry_override(&self) -> Option<bool> {
        self.inner.should_retry
    }
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ApiError");
        d.field("kind", &self.inner.kind)
            .field("status", &self.inner.status.as_u16())
            .field("type", &self.inner.error_type)
            .field("code", &self.inner.code)
            .field("message", &self.message());
        if let Some(param) = &self.inner.param {
            d.field("param", param);
        }
        if self.inner.origin != Origin::Gateway {
            d.field("origin", &self.inner.origin);
        }
        if let Some(delay) = self.inner.retry_after {
            d.field("retry_after", &delay);
        }
        d.finish()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            self.inner.status.as_u16(),
            self.inner.error_type
        )?;
        if let Some(code) = &self.inner.code {
            write!(f, " ({code})")?;
        }
        write!(f, ": {}", self.message())
    }
}

impl std::error::Error for ApiError {}

impl From<ErrorKind> for ApiError {
    fn from(kind: ErrorKind) -> Self {
        ApiError::from_kind(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_table() {
        for kind in ErrorKind::ALL {
            let e = ApiError::from_kind(kind);
            assert_eq!(e.status(), kind.status());
            assert_eq!(e.error_type(), kind.error_type());
            assert_eq!(e.code(), Some(kind.default_code()));
            assert_eq!(ErrorKind::from_code(kind.default_code()), Some(kind));
        }
        assert_eq!(ApiError::invalid_model().param(), Some("model"));
        assert_eq!(ApiError::overloaded().status().as_u16(), 529);
    }

    #[test]
    fn quota_codes_are_never_retried() {
        let e = ApiError::rate_limited().with_code("insufficient_quota");
        assert_eq!(e.retry_class(), RetryClass::Never);
        assert!(!e.should_retry());
        assert!(ApiError::rate_limited().should_retry());
        assert!(
            !ApiError::unavailable()
                .with_should_retry(false)
                .should_retry()
        );
    }

    #[test]
    fn budgets_and_quotas_are_never_retried_in_any_spelling() {
        for (code, error_type) in [
            (Some("budget_exceeded"), "rate_limit_error"),
            (Some("insufficient_quota"), "rate_limit_error"),
            (Some("rate_limit_exceeded"), "budget_exceeded_error"),
            (Some("rate_limit_exceeded"), "budget_exceeded"),
            (None, "insufficient_quota"),
            (None, "billing_error"),
        ] {
            let mut e = ApiError::rate_limited().with_type(error_type);
            e = match code {
                Some(c) => e.with_code(c),
                None => e.without_code(),
            };
            assert_eq!(e.retry_class(), RetryClass::Never, "{code:?} {error_type}");
        }
    }

    #[test]
    fn upstream_faults_blame_the_gateway() {
        let auth = ApiError::upstream_auth_failed();
        assert_eq!(auth.status().as_u16(), 502);
        assert_eq!(auth.code(), Some("upstream_auth_failed"));
        assert_eq!(auth.origin(), Origin::Upstream);
        assert!(!auth.should_retry());
        let quota = ApiError::upstream_quota_exhausted();
        assert_eq!(quota.status().as_u16(), 503);
        assert_eq!(quota.code(), Some("upstream_quota_exhausted"));
        assert!(!quota.should_retry());
        assert_eq!(
            ErrorKind::from_code("upstream_quota_exhausted"),
            Some(ErrorKind::Unavailable)
        );
    }

    #[test]
    fn a_default_message_is_not_an_explicit_one() {
        let e = ApiError::timeout();
        assert_eq!(e.message(), ErrorKind::Timeout.default_message());
        assert_eq!(e.explicit_message(), None);
        let e = e.with_message(ErrorKind::Timeout.default_message());
        assert_eq!(
            e.explicit_message(),
            Some(ErrorKind::Timeout.default_message())
        );
    }

    #[test]
    fn display_is_one_line() {
        let e = ApiError::budget_exceeded().with_message("Budget exceeded: $50.00 limit reached");
        assert_eq!(
            e.to_string(),
            "402 budget_exceeded_error (budget_exceeded): Budget exceeded: $50.00 limit reached"
        );
    }
}
