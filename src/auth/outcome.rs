//! The decision for one request, as a pure function of the policy, what the
//! store found and the time: refuse (with which `ApiError`) or admit (as
//! which `Principal`, with which expiry warning).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

use super::extract::{self, Found, Head};
use super::layer::Policy;
use super::{KeyHash, KeyRecord, LookupResult, Principal};
use crate::budget::service::truncated as quoted;
use crate::{ApiError, ErrorKind, RequestMeta};

/// The key presented with a request, hashed; or why there is none to look up.
pub(crate) fn presented_hash(policy: &Policy, head: Head<'_>) -> Result<KeyHash, ApiError> {
    let key = match extract::find(&policy.extractors, head) {
        Found::Key(key) => key,
        Found::Malformed(reason) => {
            tracing::debug!(code = "invalid_api_key", reason, "API key refused");
            return Err(invalid_key().with_message(reason));
        }
        Found::Missing => {
            tracing::debug!(code = "missing_api_key", "API key refused");
            return Err(ApiError::authentication()
                .with_code("missing_api_key")
                .with_message(policy.missing_message.clone()));
        }
    };
    let length_ok = policy.key_length.contains(&key.len());
    let prefix_ok = policy
        .prefix
        .as_deref()
        .is_none_or(|prefix| key.starts_with(prefix.as_bytes()));
    if !length_ok || !prefix_ok {
        // The shape check saves a hash and a store round trip for junk; the
        // message stays the same as for an unknown key so it reveals nothing
        // about which keys exist.
        tracing::debug!(
            code = "invalid_api_key",
            length_ok,
            prefix_ok,
            "API key refused before lookup"
        );
        return Err(invalid_key());
    }
    Ok(KeyHash::of(&key))
}

/// A key the store knows and the policy lets through.
pub(crate) struct Admitted {
    pub(crate) principal: Principal,
    /// `x-api-key-expires-in`, when the key is within the warning window.
    pub(crate) expires_in: Option<HeaderValue>,
}

/// Checks what the store found for `hash` against the policy, now.
pub(crate) fn admit(
    policy: &Policy,
    found: LookupResult,
    hash: &KeyHash,
) -> Result<Admitted, ApiError> {
    let record = match found {
        Ok(Some(record)) => record,
        Ok(None) => {
            tracing::debug!(code = "invalid_api_key", "API key refused: unknown key");
            return Err(invalid_key());
        }
        Err(error) => return Err(error.into()),
    };
    // Read only when a date is to be compared: most keys have none.
    let now = || UNIX_EPOCH + policy.clock.now_unix();
    // The end of a retired secret's grace, when the presented secret is one.
    let mut grace_end = None;
    if !record.secret_hash.verify(hash) {
        match record.retired.iter().find(|r| r.hash.verify(hash)) {
            Some(retired) if retired.until > now() => grace_end = Some(retired.until),
            Some(_) => return Err(refuse(&record, rotated_key())),
            None => {
                tracing::debug!(code = "invalid_api_key", "API key refused: hash mismatch");
                return Err(invalid_key());
            }
        }
    }
    if record.revoked {
        let revoked = unauthorized("revoked_api_key", "The API key has been revoked.");
        return Err(refuse(&record, revoked));
    }
    let expiry = match (effective_expiry(&record, policy.max_lifetime), grace_end) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut expires_in = None;
    if let Some(expiry) = expiry {
        match expiry.duration_since(now()) {
            Ok(left) if !left.is_zero() => {
                if left <= policy.expiry_warning || grace_end.is_some() {
                    expires_in = Some(HeaderValue::from(left.as_secs()));
                }
            }
            _ if grace_end == Some(expiry) => return Err(refuse(&record, rotated_key())),
            _ => {
                let message = "The API key has expired. Ask for a new key.";
                return Err(refuse(&record, unauthorized("expired_api_key", message)));
            }
        }
    }
    if record.disabled {
        return Err(refuse(&record, account_disabled()));
    }
    tracing::trace!(key_id = %record.id, "API key accepted");
    Ok(Admitted {
        principal: Principal::new(record),
        expires_in,
    })
}

/// The model check, with the request's facts already read.
pub(crate) fn check_model(
    principal: &Principal,
    meta: Option<&RequestMeta>,
) -> Result<(), ApiError> {
    let Some(model) = meta.and_then(|meta| meta.model.as_deref()) else {
        // No model (`GET /v1/models`, a file upload): nothing to restrict.
        return Ok(());
    };
    if principal.allows_model(model) {
        return Ok(());
    }
    tracing::debug!(
        key_id = %principal.key_id(),
        code = "model_not_allowed",
        model = %quoted(model),
        "API key refused"
    );
    Err(ApiError::permission_denied()
        .with_code("model_not_allowed")
        .with_param("model")
        .with_message(format!(
            "This API key is not allowed to use the model `{}`.",
            quoted(model)
        )))
}

/// Whether the model check needs the request body read first.
pub(crate) fn needs_meta(principal: &Principal, parts_have_meta: bool) -> bool {
    !principal.allowed_models().is_empty() && !parts_have_meta
}

/// The earlier of `expires_at` and `created_at + max_lifetime`.
fn effective_expiry(record: &KeyRecord, max_lifetime: Option<Duration>) -> Option<SystemTime> {
    let by_lifetime = max_lifetime.and_then(|life| record.created_at.checked_add(life));
    match (record.expires_at, by_lifetime) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn refuse(record: &Arc<KeyRecord>, error: ApiError) -> ApiError {
    tracing::debug!(key_id = %record.id, code = error.code(), "API key refused");
    error
}

/// A 401 `code` with `message`.
fn unauthorized(code: &'static str, message: &'static str) -> ApiError {
    ApiError::authentication()
        .with_code(code)
        .with_message(message)
}

fn invalid_key() -> ApiError {
    unauthorized("invalid_api_key", "Incorrect API key provided.")
}

fn rotated_key() -> ApiError {
    let message = "The API key has been rotated and its grace period has ended. Use the new key.";
    unauthorized("revoked_api_key", message)
}

fn account_disabled() -> ApiError {
    ApiError::new(
        ErrorKind::PermissionDenied,
        "The account this API key belongs to is disabled.",
    )
    .with_code("account_disabled")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earlier_end_wins() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        let record = KeyRecord::new("k", KeyHash::of("s")).with_created_at(at(1000));
        assert_eq!(effective_expiry(&record, None), None);
        let day = Some(Duration::from_secs(86_400));
        assert_eq!(effective_expiry(&record, day), Some(at(87_400)));
        let record = record.with_expires_at(at(5000));
        assert_eq!(effective_expiry(&record, None), Some(at(5000)));
        assert_eq!(effective_expiry(&record, day), Some(at(5000)));
        assert_eq!(
            effective_expiry(&record, Some(Duration::from_secs(10))),
            Some(at(1010))
        );
        // A lifetime too long to represent is no limit, not a panic.
        assert_eq!(
            effective_expiry(&record, Some(Duration::MAX)),
            Some(at(5000))
        );
    }

    #[test]
    fn long_model_names_are_cut_on_a_char_boundary() {
        let long = "é".repeat(300);
        assert_eq!(quoted(&long).chars().count(), 128);
        assert_eq!(quoted("gpt-4o"), "gpt-4o");
    }
}
