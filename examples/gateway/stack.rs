//! How one app's service is composed: the endpoints behind every tollgate
//! layer, as one tower stack built once per config, and the rest (health,
//! admin, metrics) beside it in an axum `Router`.
//!
//! ```text
//! by path ─┬─ /v1/chat/completions, /v1/completions, /v1/embeddings,
//!          │  /v1/responses, /v1/messages, /v1/models[/{id}], /v1/key:
//!          │    ErrorEnvelope → access log → body timeout (408) → Auth → model check
//!          │    → endpoints ─┬─ POST of an API: stream meter → Detach → routing
//!          │                 │    → Admission (rate limit + budget) → StreamErrorTrailer
//!          │                 │    → shutdown cut → proxy::forward
//!          │                 ├─ GET /v1/models, /v1/models/{id}: from the config
//!          │                 └─ GET /v1/key: the key's limits and budgets
//!          └─ anything else: axum Router (/health, /admin/*, /metrics, 404),
//!               each route behind ErrorEnvelope → access log → body timeout
//! ```
//!
//! Outermost first. The envelope renders every error in the client's
//! format (Anthropic's on `/v1/messages`); the access log sees the final
//! status; the stream meter sits outside the detach layer, which hides a
//! client's leaving from the layers inside, so a stream whose client left
//! is counted as such; the trailer layer ends every stream either as its
//! API ends it or with one terminal error event, including the one the
//! shutdown cuts. Towards the upstream each model has its own client stack
//! (`routing.rs`).
//!
//! # Why one tower stack and not axum routes with layers
//!
//! An axum `Router` boxes each route, and `Router::layer` boxes again at
//! each level: every request paid a boxed service clone, a boxed future and
//! a re-boxed response body per level, and `from_fn` middleware a boxed
//! future, a boxed `Next` and a boxed service clone each (the gateway's
//! profile in `PERFORMANCE.md`). Here the layers are applied once, to one
//! service that picks the endpoint by path ([`Endpoints`]); each layer's
//! future is a named type inside the next, so a request's whole future is
//! one value, boxed once where the app is served ([`AppService`]), and its
//! response body is boxed once there too. Which endpoint a request is for
//! is decided once, from its path ([`Endpoint::of`]), and travels in its
//! [`RequestRecord`](crate::record::RequestRecord).
//!
//! One more box, on purpose, inside `DetachLayer`: the call below it. That
//! layer spawns it as a tokio task, and a task's future is moved into the
//! task; unboxed, the call's future (every layer below, ~13 KB) made those
//! moves 45 % of the gateway's instructions. A layer that spawns boxes what
//! it spawns.
//!
//! The routes beside it are few, rarely called, and need axum's path
//! parameters and extractors: they stay a `Router`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use http::header::ALLOW;
use http_body_util::Either;
use pin_project_lite::pin_project;
use tollgate::admission::AdmissionLayer;
use tollgate::auth::AuthLayer;
use tollgate::body::DetachLayer;
use tollgate::budget::{BudgetLayer, Ledger, Pricing};
use tollgate::rate_limit::{HeaderStyle, PrincipalKey, RateLimitLayer, RateLimitStore};
use tollgate::stream::StreamErrorTrailerLayer;
use tollgate::{ApiError, ErrorEnvelopeLayer, ErrorFormat, Principal};
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::access_log::{AccessLog, AccessLogLayer};
use crate::admin::{self, AdminState};
use crate::app::{health, key_info};
use crate::body_timeout::AnswerBodyTimeoutLayer;
use crate::config::Config;
use crate::gateway::Reloads;
use crate::metrics::{Counted, Metrics};
use crate::model_check::ModelCheckLayer;
use crate::proxy::{self, models::ModelList};
use crate::record::{Endpoint, RequestRecord};
use crate::routing::{self, Routes, RoutingLayer};
use crate::shutdown::Shutdown;
use crate::stores::Stores;

/// The future of one request on an [`AppService`].
pub type AppFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// One app's whole service, its type erased once: calling it clones the
/// stack inside (reference counts, no allocation) and boxes the request's
/// whole future, once.
#[derive(Clone)]
pub struct AppService(Arc<dyn Fn(Request) -> AppFuture + Send + Sync>);

impl AppService {
    /// Serves `service` (always ready, as every layer here is).
    pub fn new<S>(service: S) -> AppService
    where
        S: Service<Request, Response = Response, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        AppService(Arc::new(move |req| Box::pin(service.clone().oneshot(req))))
    }

    /// The answer to `req`.
    pub fn call(&self, req: Request) -> AppFuture {
        (self.0)(req)
    }
}

/// The whole application of `config` (see the module docs). Every stateful
/// layer is built on the shared `stores`, so counters and spend outlive it.
pub fn build(
    config: &Arc<Config>,
    stores: &Stores,
    metrics: &Metrics,
    mock_url: &str,
    shutdown: &Shutdown,
    reloads: Reloads,
) -> Result<AppService, Box<dyn std::error::Error + Send + Sync>> {
    let pricing = crate::app::pricing(&config.models)?;
    let error_format: ErrorFormat = config.error_format.parse()?;
    let header_style: HeaderStyle = config.rate_limit_headers.parse()?;
    let routes = Arc::new(Routes::build(config, mock_url, metrics)?);
    let envelope = ErrorEnvelopeLayer::new()
        .format_fn(move |uri, headers| proxy::error_format(uri, headers, error_format))
        .catch_panic(true);
    let access_log = AccessLogLayer::new(Arc::new(AccessLog {
        pricing: pricing.clone(),
        metrics: Arc::new(metrics.requests(config)),
    }));

    let streams = metrics.streams();
    let cut = shutdown.clone();
    let proxied = ServiceBuilder::new()
        .map_response(move |response| streams.watch(response))
        // A client that leaves does not end the call: every layer inside
        // settles on the upstream's whole answer.
        .layer(
            DetachLayer::new()
                .drain_timeout(Duration::from_secs(config.drain_timeout_secs))
                .calls(shutdown.detached().clone()),
        )
        .layer(RoutingLayer::new(config))
        .layer(admission(config, stores, metrics, header_style, pricing))
        .layer(
            StreamErrorTrailerLayer::new()
                .idle_timeout(Duration::from_secs(config.stream_idle_timeout_secs)),
        )
        // Inside the trailer layer, so a stream cut at shutdown ends with
        // its terminal error event.
        .map_response(move |response: Response| cut.watch_stream(response))
        .service_fn(|req: Request| {
            let api = match req.extensions().get::<Arc<RequestRecord>>() {
                Some(record) => record.endpoint(),
                None => Endpoint::of(req.uri().path()),
            };
            async move {
                Ok::<_, Infallible>(match api {
                    Some(Endpoint::Api(api)) => proxy::forward(req, api).await,
                    _ => ApiError::internal().into_response(),
                })
            }
        });
    let endpoints = ServiceBuilder::new()
        .layer(envelope.clone())
        .layer(access_log.clone())
        .layer(AnswerBodyTimeoutLayer)
        .layer(AuthLayer::new(Counted::keys(stores.keys.clone(), metrics)))
        .layer(ModelCheckLayer::new(routes))
        .service(Endpoints {
            proxied,
            models: Arc::new(ModelList::new(
                config.models.iter().map(|m| m.name.as_str()),
            )),
            ledger: stores.ledger.clone(),
        });

    let beside = Router::new()
        .route("/health", get(health))
        .with_state(stores.clone())
        .merge(admin::routes(AdminState::new(
            config, stores, metrics, reloads,
        )))
        .fallback(|| async { ApiError::not_found().with_message("Unknown path.") })
        .layer(
            ServiceBuilder::new()
                .layer(envelope)
                .layer(access_log)
                .layer(AnswerBodyTimeoutLayer),
        )
        // Turns every handler into a route once, here: a `Router<()>`
        // called as a service without it turns each matched handler, with
        // every layer above, into a route again on every request.
        .with_state(());
    Ok(AppService::new(ByPath { endpoints, beside }))
}

/// The rate limit and the budget on the gateway's stores, counted.
type Admission =
    AdmissionLayer<Counted<Arc<dyn RateLimitStore>>, PrincipalKey, Counted<Arc<dyn Ledger>>>;

/// The rate limit and the budget, admitting each request together: one
/// store call (on Redis, one script for both instead of two in a row; in
/// memory and SQLite the two stores asked in turn, which costs nothing
/// more). The same answers as `RateLimitLayer` outside `BudgetLayer`, but
/// a request the budgets deny is not counted by the limits, on every store.
fn admission(
    config: &Config,
    stores: &Stores,
    metrics: &Metrics,
    header_style: HeaderStyle,
    pricing: Pricing,
) -> Admission {
    let rate_limit = routing::shared_limits(
        config,
        RateLimitLayer::new()
            .headers(header_style)
            .store(Counted::rate_limits(stores.rate_limits.clone(), metrics)),
    );
    let budget = BudgetLayer::with_ledger(pricing, Counted::ledger(stores.ledger.clone(), metrics))
        .policy(config.reserve_policy());
    let layer = AdmissionLayer::new(rate_limit, budget);
    match stores.admission() {
        Some(store) => layer.store(Counted::admission(store, metrics)),
        None => layer,
    }
}

/// The top of the app: the endpoints' stack for their paths, the router
/// beside it for the rest.
#[derive(Clone)]
struct ByPath<E> {
    endpoints: E,
    beside: Router,
}

impl<E, B> Service<Request> for ByPath<E>
where
    E: Service<Request, Response = http::Response<B>, Error = Infallible>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tollgate::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ByPathFuture<E::Future, <Router as Service<Request>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        ready!(self.endpoints.poll_ready(cx))?;
        Service::<Request>::poll_ready(&mut self.beside, cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if Endpoint::of(req.uri().path()).is_some() {
            ByPathFuture::Endpoints {
                future: self.endpoints.call(req),
            }
        } else {
            ByPathFuture::Beside {
                future: self.beside.call(req),
            }
        }
    }
}

pin_project! {
    /// The future of [`ByPath`].
    #[project = ByPathProj]
    enum ByPathFuture<E, R> {
        Endpoints { #[pin] future: E },
        Beside { #[pin] future: R },
    }
}

impl<E, R, B> Future for ByPathFuture<E, R>
where
    E: Future<Output = Result<http::Response<B>, Infallible>>,
    R: Future<Output = Result<Response, Infallible>>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tollgate::BoxError>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            // The one box of the response body.
            ByPathProj::Endpoints { future } => future.poll(cx).map_ok(|r| r.map(Body::new)),
            ByPathProj::Beside { future } => future.poll(cx),
        }
    }
}

/// The innermost service of the endpoints' stack: picks the endpoint (see
/// the module docs); a method the endpoint does not answer gets 405.
#[derive(Clone)]
struct Endpoints<P> {
    proxied: P,
    models: Arc<ModelList>,
    ledger: Arc<dyn Ledger>,
}

impl<P, B> Service<Request> for Endpoints<P>
where
    P: Service<Request, Response = http::Response<B>, Error = Infallible>,
{
    type Response = http::Response<Either<B, Body>>;
    type Error = Infallible;
    type Future = EndpointFuture<P::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.proxied.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let endpoint = match req.extensions().get::<Arc<RequestRecord>>() {
            Some(record) => record.endpoint(),
            None => Endpoint::of(req.uri().path()),
        };
        let Some(endpoint) = endpoint else {
            return EndpointFuture::answered(ApiError::not_found().with_message("Unknown path."));
        };
        if !endpoint.answers(req.method()) {
            return EndpointFuture::Answered {
                response: Some(method_not_allowed(endpoint)),
            };
        }
        let response = match endpoint {
            Endpoint::Api(_) => {
                return EndpointFuture::Proxied {
                    future: self.proxied.call(req),
                };
            }
            Endpoint::Models => proxy::models::list(&self.models, &req),
            Endpoint::Model => proxy::models::retrieve(&self.models, &req),
            Endpoint::Key => {
                let principal = req.extensions().get::<Principal>().cloned();
                return EndpointFuture::Key {
                    future: Box::pin(key_info(self.ledger.clone(), principal)),
                };
            }
        };
        EndpointFuture::Answered {
            response: Some(response),
        }
    }
}

/// 405 in the client's envelope, naming the methods the endpoint answers,
/// which `allow` lists too (as axum answers).
fn method_not_allowed(endpoint: Endpoint) -> Response {
    let mut response = ApiError::invalid_request()
        .with_status(StatusCode::METHOD_NOT_ALLOWED)
        .with_code("method_not_allowed")
        .with_message(format!(
            "{} answers {} only.",
            endpoint.route(),
            endpoint.allow().replace(',', " and ")
        ))
        .into_response();
    response
        .headers_mut()
        .insert(ALLOW, http::HeaderValue::from_static(endpoint.allow()));
    response
}

pin_project! {
    /// The future of [`Endpoints`].
    #[project = EndpointProj]
    enum EndpointFuture<P> {
        Proxied { #[pin] future: P },
        // `GET /v1/key` reads the ledger; a cold path, boxed.
        Key { future: Pin<Box<dyn Future<Output = Response> + Send>> },
        Answered { response: Option<Response> },
    }
}

impl<P> EndpointFuture<P> {
    fn answered(error: ApiError) -> Self {
        EndpointFuture::Answered {
            response: Some(error.into_response()),
        }
    }
}

impl<P, B> Future for EndpointFuture<P>
where
    P: Future<Output = Result<http::Response<B>, Infallible>>,
{
    type Output = Result<http::Response<Either<B, Body>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match self.project() {
            EndpointProj::Proxied { future } => {
                let response = ready!(future.poll(cx))?;
                return Poll::Ready(Ok(response.map(Either::Left)));
            }
            EndpointProj::Key { future } => ready!(future.as_mut().poll(cx)),
            EndpointProj::Answered { response } => response
                .take()
                .unwrap_or_else(|| ApiError::internal().into_response()),
        };
        Poll::Ready(Ok(response.map(Either::Right)))
    }
}
