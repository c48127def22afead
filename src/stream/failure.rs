//! Why a watched stream failed, and the error its terminal event carries.

use std::time::Duration;

use crate::{ApiError, BoxError, Origin};

/// Why a stream failed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Failure {
    BodyError,
    Truncated,
    Idle(Duration),
}

impl Failure {
    pub(crate) fn error(self) -> ApiError {
        let error = match self {
            Failure::BodyError => ApiError::bad_gateway()
                .with_message("The upstream stream failed before it completed."),
            Failure::Truncated => ApiError::bad_gateway()
                .with_code("stream_truncated")
                .with_message("The upstream stream ended before it completed."),
            Failure::Idle(after) => ApiError::timeout()
                .with_message(format!("The upstream sent no event for {}.", human(after))),
        };
        error.with_origin(Origin::Upstream)
    }
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// The error that ends a stream whose inner body failed with `error`: the
/// [`ApiError`] the body failed with (itself or anywhere in its `source()`
/// chain), which is how a server ends a stream from outside (a gateway
/// shutting down), else `502 bad_gateway`.
pub(super) fn body_failure<E: Into<BoxError>>(error: E) -> ApiError {
    let error: BoxError = error.into();
    let first: &(dyn std::error::Error + 'static) = &*error;
    let mut chain = std::iter::successors(Some(first), |e| e.source());
    if let Some(api_error) = chain.find_map(|e| e.downcast_ref::<ApiError>()) {
        tracing::debug!(error = %api_error, "stream ended by its body with an error");
        return api_error.clone();
    }
    tracing::warn!(error = %error, "upstream stream failed; ending it with an error event");
    Failure::BodyError.error()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body error whose `source()` is the `ApiError`, as
    /// `axum::body::Body` wraps the error of the body it boxes.
    #[derive(Debug)]
    struct Wrapped(ApiError);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_body_failing_with_an_api_error_ends_with_it() {
        let unavailable = ApiError::unavailable().with_code("shutting_down");
        assert_eq!(
            body_failure(Wrapped(unavailable.clone())).code(),
            Some("shutting_down")
        );
        assert_eq!(body_failure(unavailable).code(), Some("shutting_down"));
        let other = body_failure(std::io::Error::other("reset"));
        assert_eq!(other.status(), http::StatusCode::BAD_GATEWAY);
    }
}
