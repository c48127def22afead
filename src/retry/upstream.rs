//! The gateway's own upstream account failing: [`UpstreamFault`].

use crate::error::Spend;
use crate::{ApiError, ErrorKind};

/// What an upstream's failure says about the gateway's own account there.
///
/// A gateway calls its upstream with its own credentials. When the upstream
/// refuses them (401, 403) or the gateway's account there is out of money
/// or quota (402, a 403 balance, a 429 `insufficient_quota`), relaying that
/// answer tells the tenant that *their* key is wrong or *their* quota is
/// spent: their SDK raises `AuthenticationError` about a key that is fine.
/// [`UpstreamFault::of`] recognises such a failure in any format, and
/// [`UpstreamFault::error`] is what the tenant should get instead: a 502 or
/// 503 with a gateway code, never retried.
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use tollgate::envelope;
/// use tollgate::retry::UpstreamFault;
///
/// let body = br#"{"error":{"message":"Incorrect API key provided: sk-gw***123.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
/// let upstream = envelope::parse(StatusCode::UNAUTHORIZED, &HeaderMap::new(), body);
/// let fault = UpstreamFault::of(&upstream).unwrap();
/// let answer = fault.error().with_provider("OpenAI");
/// assert_eq!(answer.status().as_u16(), 502);
/// assert_eq!(answer.code(), Some("upstream_auth_failed"));
/// assert!(!answer.message().contains("sk-")); // the gateway's key stays private
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamFault {
    /// The upstream refused the gateway's credentials (401, or a 403 that is
    /// not about money).
    Credentials,
    /// The gateway's account at the upstream is out of budget, quota or
    /// balance.
    Quota,
}

impl UpstreamFault {
    /// The fault an upstream's error (parsed with
    /// [`envelope::parse`](crate::envelope::parse)) reveals, if any.
    pub fn of(error: &ApiError) -> Option<UpstreamFault> {
        if Spend::named(error.code(), Some(error.error_type())).is_some() {
            return Some(UpstreamFault::Quota);
        }
        match error.kind() {
            ErrorKind::BudgetExceeded
            | ErrorKind::InsufficientBalance
            | ErrorKind::QuotaExhausted => Some(UpstreamFault::Quota),
            ErrorKind::Authentication | ErrorKind::PermissionDenied => {
                Some(UpstreamFault::Credentials)
            }
            // A 401 or 403 refuses the gateway's key or account, whatever
            // its body names (OpenAI answers a model the project may not
            // use with a 403 `model_not_found`).
            _ if matches!(error.status().as_u16(), 401 | 403) => Some(UpstreamFault::Credentials),
            _ => None,
        }
    }

    /// The error the tenant gets: [`ApiError::upstream_auth_failed`] (502)
    /// or [`ApiError::upstream_quota_exhausted`] (503).
    pub fn error(self) -> ApiError {
        match self {
            UpstreamFault::Credentials => ApiError::upstream_auth_failed(),
            UpstreamFault::Quota => ApiError::upstream_quota_exhausted(),
        }
    }
}
