//! The model check: a model the config does not serve is refused before any
//! limit is counted or any money held.
//!
//! | request | answer |
//! |---|---|
//! | `POST` without `model` | 400 `invalid_request_error`, `param: "model"` |
//! | `POST` of a model not in `[[models]]` | 400 `invalid_model` |
//! | prompt estimate + `max_tokens` over the model's `context_window` | 400 `context_length_exceeded`, `param: "messages"` |
//!
//! It reads the body's facts ([`RequestMeta`]) when the auth layer has not
//! (a key without a model list), finds the model's [`Route`] once (the
//! routing layer inside takes it from there), and records the caller and
//! the model in the request's [`RequestRecord`] for the access log.
//!
//! # Why a tower layer with a named future
//!
//! As `from_fn` middleware it cost every request a boxed future, a boxed
//! `Next` and a boxed clone of the service inside. Here the check is a
//! plain function of the request, and the future only waits for the body
//! when it must be read (boxed then: the library's reading future has no
//! name outside it).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tollgate::body::{ResponseBody, reject};
use tollgate::request::FromBytes;
use tollgate::{ApiError, BoxError, Principal, RequestMeta};
use tower::{Layer, Service};

use crate::record::RequestRecord;
use crate::routing::Routes;

/// The model check (see the module docs), on the routes of one config.
#[derive(Clone)]
pub struct ModelCheckLayer(Arc<Routes>);

impl ModelCheckLayer {
    /// Checks models against `routes` (every model of the config).
    pub fn new(routes: Arc<Routes>) -> ModelCheckLayer {
        ModelCheckLayer(routes)
    }
}

impl<S> Layer<S> for ModelCheckLayer {
    type Service = ModelCheck<S>;

    fn layer(&self, inner: S) -> ModelCheck<S> {
        ModelCheck {
            inner,
            routes: self.0.clone(),
        }
    }
}

/// The service of [`ModelCheckLayer`].
#[derive(Clone)]
pub struct ModelCheck<S> {
    inner: S,
    routes: Arc<Routes>,
}

/// The library's body read, boxed: its future has no public name.
type Reading<B> = Pin<Box<dyn Future<Output = Result<Request<B>, ApiError>> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ModelCheck<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ReqBody: Body<Data = Bytes> + FromBytes + Send + 'static,
    ReqBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ModelCheckFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if req.extensions().get::<RequestMeta>().is_some() {
            return ModelCheckFuture::checked(check(&self.routes, req), &mut self.inner);
        }
        // The readied service goes with the future; a clone stays here.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ModelCheckFuture {
            state: State::Read {
                read: Box::pin(RequestMeta::read(req, RequestMeta::DEFAULT_MAX_BODY_BYTES)),
                inner: Some(inner),
                routes: self.routes.clone(),
            },
        }
    }
}

/// Records the caller and the model, and refuses a model the config does
/// not serve (see the module docs).
fn check<B>(routes: &Routes, req: Request<B>) -> Result<Request<B>, ApiError> {
    let Some(meta) = req.extensions().get::<RequestMeta>() else {
        return Ok(req);
    };
    let named = meta.model.as_deref();
    let route = named.and_then(|name| routes.get(name));
    if let Some(record) = req.extensions().get::<Arc<RequestRecord>>() {
        record.found(req.extensions().get::<Principal>(), named, route);
    }
    if req.method() != Method::POST {
        return Ok(req);
    }
    let Some(name) = named else {
        return Err(ApiError::invalid_request()
            .with_message("You must provide a model parameter.")
            .with_param("model"));
    };
    let Some(route) = route else {
        return Err(
            ApiError::invalid_model().with_message(format!("Invalid model '{name}' specified"))
        );
    };
    if let Some(window) = route.context_window {
        let completion = meta.max_tokens.unwrap_or(0);
        let requested = meta.prompt_tokens_estimate.saturating_add(completion);
        if requested > window {
            return Err(ApiError::context_length_exceeded()
                .with_param("messages")
                .with_message(format!(
                    "This model's maximum context length is {window} tokens. However, you requested {requested} tokens ({} in the messages, {completion} in the completion). Please reduce the length of the messages or completion.",
                    meta.prompt_tokens_estimate
                )));
        }
    }
    Ok(req)
}

pin_project! {
    /// The future of [`ModelCheck`].
    pub struct ModelCheckFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        // Reading the body's facts.
        Read {
            read: Reading<B>,
            inner: Option<S>,
            routes: Arc<Routes>,
        },
        // Checked: the service inside answers.
        Call {
            #[pin]
            future: S::Future,
        },
        // Refused (or the body could not be read).
        Refused {
            error: Option<ApiError>,
        },
    }
}

impl<S: Service<Request<B>>, B> ModelCheckFuture<S, B> {
    fn checked(checked: Result<Request<B>, ApiError>, inner: &mut S) -> Self {
        let state = match checked {
            Ok(req) => State::Call {
                future: inner.call(req),
            },
            Err(error) => State::Refused { error: Some(error) },
        };
        ModelCheckFuture { state }
    }
}

impl<S, B, ResBody> Future for ModelCheckFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                StateProj::Read {
                    read,
                    inner,
                    routes,
                } => {
                    let read = ready!(read.as_mut().poll(cx));
                    match (read.and_then(|req| check(routes, req)), inner.take()) {
                        (Ok(req), Some(mut inner)) => State::Call {
                            future: inner.call(req),
                        },
                        (Err(error), _) => State::Refused { error: Some(error) },
                        (Ok(_), None) => State::Refused {
                            error: Some(ApiError::internal()),
                        },
                    }
                }
                StateProj::Call { future } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
                StateProj::Refused { error } => {
                    let error = error.take().unwrap_or_else(ApiError::internal);
                    return Poll::Ready(Ok(reject(error)));
                }
            };
            state.set(next);
        }
    }
}
