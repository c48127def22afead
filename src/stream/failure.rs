//! Why a watched stream failed, and the error its terminal event carries.

use std::time::Duration;

use crate::{ApiError, BoxError, Origin};

/// Why a stream failed.
#[derive(Debug, Clone, Copy)]
pub(super) enum Failure {
    BodyError,
    Truncated,
    Idle(Duration),
}

impl Failure {
    pub(super) fn error(self) -> ApiError {
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

pub(super) fn log_failure<E: Into<BoxError>>(error: E) {
    let error: BoxError = error.into();
    tracing::warn!(error = %error, "upstream stream failed; ending it with an error event");
}
