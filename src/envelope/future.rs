//! The response future of [`ErrorEnvelope`](super::ErrorEnvelope).

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderValue, Response};
use http_body::Body;
use pin_project_lite::pin_project;

use super::ErrorFormat;
use super::render::X_REQUEST_ID;
use crate::BoxError;
use crate::body::ResponseBody;
use crate::error::ApiError;
use crate::retry::RetryInfo;

pin_project! {
    /// Resolves to the inner response, or to its failure rendered as an envelope.
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
        format: ErrorFormat,
        request_id: HeaderValue,
        max_error_body_bytes: usize,
        catch_panic: bool,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Calling { #[pin] future: F },
        Reading {
            parts: Option<http::response::Parts>,
            #[pin]
            body: B,
            buf: BytesMut,
        },
        Failed { error: Option<ApiError> },
    }
}

pub(crate) fn panic_error(panic: Box<dyn Any + Send>) -> ApiError {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %detail, "inner service panicked");
    ApiError::internal()
}

/// An inner service's error as an `ApiError`: known tower errors map to
/// their kind; anything else is logged and becomes a generic 500.
///
/// The known errors are looked for along the `source()` chain too, so one
/// wrapped by another layer (a buffer's `ServiceError`, an application's own
/// error type) is still recognised.
pub(crate) fn error_from_inner(error: BoxError) -> ApiError {
    let error = match error.downcast::<ApiError>() {
        Ok(api) => return *api,
        Err(error) => error,
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
    while let Some(e) = cause {
        if let Some(api) = e.downcast_ref::<ApiError>() {
            return api.clone();
        }
        if e.is::<tower::timeout::error::Elapsed>() {
            return ApiError::timeout();
        }
        if e.is::<tower::load_shed::error::Overloaded>() {
            return ApiError::unavailable();
        }
        cause = e.source();
    }
    tracing::error!(error = %Chain(&*error), "inner service failed");
    ApiError::internal()
}

/// Displays an error and its sources, `outer: inner: root`, for the log.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn calling(
        future: F,
        format: ErrorFormat,
        request_id: HeaderValue,
        max_error_body_bytes: usize,
        catch_panic: bool,
    ) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            format,
            request_id,
            max_error_body_bytes,
            catch_panic,
        }
    }

    pub(crate) fn new(
        future: Result<F, ApiError>,
        format: ErrorFormat,
        request_id: HeaderValue,
        max_error_body_bytes: usize,
        catch_panic: bool,
    ) -> Self {
        let state = match future {
            Ok(future) => State::Calling { future },
            Err(error) => State::Failed { error: Some(error) },
        };
        ResponseFuture {
            state,
            format,
            request_id,
            max_error_body_bytes,
            catch_panic,
        }
    }
}

fn render<B>(
    format: ErrorFormat,
    error: ApiError,
    request_id: &HeaderValue,
    parts: Option<http::response::Parts>,
) -> Response<ResponseBody<B>> {
    // A failure the retry layer already retried to its limit must not be
    // retried again by the client: that is how retries stack.
    let error = match parts.as_ref().and_then(|p| p.extensions.get::<RetryInfo>()) {
        Some(info) => info.advise(error),
        None => error,
    };
    // The envelope is this gateway's answer: its body and headers name the
    // request's id, not an id an upstream put in its own error.
    let error = match request_id.to_str() {
        Ok(id) => error.with_request_id(id.to_owned()),
        Err(_) => error,
    };
    let mut response = Response::new(ResponseBody::full(format.render_body(&error)));
    if let Some(parts) = parts {
        // Keep the inner response's own headers (rate-limit headers, …),
        // but not what described its old body: a re-rendered body is
        // neither compressed nor chunked, nor as long as the old one.
        *response.headers_mut() = parts.headers;
        for name in [
            CONTENT_LENGTH,
            CONTENT_TYPE,
            CONTENT_ENCODING,
            TRANSFER_ENCODING,
        ] {
            response.headers_mut().remove(name);
        }
        *response.extensions_mut() = parts.extensions;
    }
    *response.status_mut() = format.http_status(&error);
    format.write_headers(&error, response.headers_mut());
    response
        .headers_mut()
        .insert(X_REQUEST_ID, request_id.clone());
    response.extensions_mut().insert(error);
    response
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Every failure ends here, as the error and the inner response's
        // parts when there was one.
        let (error, parts) = loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let polled = if *this.catch_panic {
                        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                            Ok(polled) => polled,
                            Err(panic) => break (panic_error(panic), None),
                        }
                    } else {
                        future.poll(cx)
                    };
                    let mut response = match ready!(polled) {
                        Ok(response) => response,
                        Err(error) => break (error_from_inner(error.into()), None),
                    };
                    if response.status().as_u16() < 400 {
                        // One lookup; an id the inner service set wins.
                        response
                            .headers_mut()
                            .entry(X_REQUEST_ID)
                            .or_insert_with(|| this.request_id.clone());
                        return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                    }
                    let (mut parts, body) = response.into_parts();
                    if let Some(error) = parts.extensions.remove::<ApiError>() {
                        break (error, Some(parts));
                    }
                    this.state.set(State::Reading {
                        parts: Some(parts),
                        body,
                        buf: BytesMut::new(),
                    });
                }
                StateProj::Reading { parts, body, buf } => {
                    let done = match ready!(body.poll_frame(cx)) {
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                let room = this.max_error_body_bytes.saturating_sub(buf.len());
                                buf.extend_from_slice(&data[..data.len().min(room)]);
                                buf.len() >= *this.max_error_body_bytes
                            } else {
                                false
                            }
                        }
                        // A failing error body still tells us the status.
                        Some(Err(_)) | None => true,
                    };
                    if done {
                        break match parts.take() {
                            Some(parts) => {
                                (super::parse(parts.status, &parts.headers, buf), Some(parts))
                            }
                            None => (ApiError::internal(), None),
                        };
                    }
                }
                StateProj::Failed { error } => {
                    break (error.take().unwrap_or_else(ApiError::internal), None);
                }
            }
        };
        Poll::Ready(Ok(render(*this.format, error, this.request_id, parts)))
    }
}
