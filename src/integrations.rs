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
    /// [`grpc_status`](crate::envelope::grpc_status)), its message, and as
    /// metadata what the HTTP envelope sends as headers: `x-should-retry`,
    /// `retry-after` and `retry-after-ms` (when the client should wait and
    /// retry), and `x-request-id`.
    fn from(error: crate::ApiError) -> Self {
        use crate::envelope::{GRPC_MESSAGE, GRPC_STATUS};
        let code = tonic::Code::from_i32(i32::from(crate::envelope::grpc_status(&error)));
        // The one place that decides these headers writes them; gRPC's own
        // (content-type, grpc-status, grpc-message) are tonic's to send.
        let mut headers = http::HeaderMap::new();
        crate::ErrorFormat::Grpc.write_headers(&error, &mut headers);
        for name in [http::header::CONTENT_TYPE, GRPC_STATUS, GRPC_MESSAGE] {
            headers.remove(name);
        }
        tonic::Status::with_metadata(
            code,
            error.message().to_owned(),
            tonic::metadata::MetadataMap::from_headers(headers),
        )
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

    #[test]
    fn keeps_retry_after_and_the_request_id_as_metadata() {
        let error = crate::ApiError::rate_limited()
            .with_retry_after(std::time::Duration::from_millis(1500))
            .with_request_id("req_42");
        let s = tonic::Status::from(error);
        let m = s.metadata();
        assert_eq!(m.get("retry-after").unwrap(), "2");
        assert_eq!(m.get("retry-after-ms").unwrap(), "1500");
        assert_eq!(m.get("x-request-id").unwrap(), "req_42");
        assert_eq!(m.get("x-should-retry").unwrap(), "true");
        assert!(m.get("grpc-status").is_none() && m.get("content-type").is_none());
        // A final error carries no delay.
        let s = tonic::Status::from(
            crate::ApiError::quota_exhausted().with_retry_after(std::time::Duration::from_secs(9)),
        );
        assert!(s.metadata().get("retry-after").is_none());
        assert_eq!(s.metadata().get("x-should-retry").unwrap(), "false");
        // What tonic sends reads back as the same error.
        let s = tonic::Status::from(
            crate::ApiError::unavailable()
                .with_message("busy")
                .with_retry_after(std::time::Duration::from_secs(3))
                .with_request_id("req_7"),
        );
        let mut headers = http::HeaderMap::new();
        s.add_header(&mut headers).unwrap();
        let parsed = crate::envelope::parse(http::StatusCode::OK, &headers, b"");
        assert_eq!(parsed.kind(), crate::ErrorKind::Unavailable);
        assert_eq!(parsed.message(), "busy");
        assert_eq!(
            parsed.retry_after(),
            Some(std::time::Duration::from_secs(3))
        );
        assert_eq!(parsed.request_id(), Some("req_7"));
    }
}
