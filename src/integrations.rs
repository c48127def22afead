//! Optional integrations: `axum` (`IntoResponse`) and `tonic` (`Status`).

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for crate::ApiError {
    /// Renders the error in the OpenAI format, with the `ApiError` in the
    /// response extensions for an outer `ErrorEnvelopeLayer`.
    fn into_response(self) -> axum_core::response::Response {
        crate::ApiError::into_http_response(self).map(axum_core::body::Body::new)
    }
}

#[cfg(feature = "tonic")]
impl From<crate::ApiError> for tonic::Status {
    /// The gRPC code from the error's HTTP status (see
    /// [`grpc_status`](crate::envelope::grpc_status)) and its message.
    fn from(error: crate::ApiError) -> Self {
        let code = tonic::Code::from_i32(i32::from(crate::envelope::grpc_status(&error)));
        tonic::Status::new(code, error.message().to_owned())
    }
}

#[cfg(all(test, feature = "axum"))]
mod axum_tests {
    use axum_core::response::IntoResponse;

    #[test]
    fn renders_openai() {
        let r = IntoResponse::into_response(crate::ApiError::budget_exceeded());
        assert_eq!(r.status(), http::StatusCode::PAYMENT_REQUIRED);
        assert!(r.extensions().get::<crate::ApiError>().is_some());
    }
}

#[cfg(all(test, feature = "tonic"))]
mod tonic_tests {
    #[test]
    fn maps_codes() {
        let s: tonic::Status = crate::ApiError::authentication().into();
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        let s: tonic::Status = crate::ApiError::rate_limited().into();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
    }
}
