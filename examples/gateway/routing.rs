//! Which upstream serves each model, and the client stack towards it.
//!
//! A deployment sends each model to its own provider: a local Ollama, an
//! OpenAI account, Anthropic, a vLLM pool. [`Routes`] is built once per
//! config from `upstream` (the default upstream, named `default`),
//! `[[upstreams]]` and `[[models]]`: every model gets its upstream, the
//! name to send upstream (`upstream_model`), and a client stack
//!
//! ```text
//! whole-request timeout → RetryLayer (its own per-attempt timeout) → attempt meter → hyper-util Client (TCP_NODELAY; rustls for https)
//! ```
//!
//! Every model of one upstream shares that upstream's connection pool and
//! retry budget; a model may only change the per-attempt timeout. The model
//! check (`model_check.rs`) finds the request's route; [`RoutingLayer`]
//! runs in front of the rate limit: it refuses a model whose upstream does
//! not speak the endpoint's API, and sets the
//! [`tollgate::rate_limit::Upstream`] extension that per-upstream limits
//! count by.
//!
//! # Why a client stack per model and not per upstream?
//!
//! Models on one upstream differ in how long an attempt may take (a
//! reasoning model thinks for minutes before its first byte; a small chat
//! model answers in one second, and an attempt hanging for 30 s is dead).
//! The per-attempt timeout is part of the retry policy, so each model gets
//! its own `RetryLayer` over the upstream's shared client and budget: a
//! clone of a pool handle and an `Arc`, not a second pool.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::HeaderValue;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pin_project_lite::pin_project;
use tollgate::body::{ResponseBody, reject};
use tollgate::rate_limit::{Limit, RateLimitLayer, RateLimitStore};
use tollgate::retry::{ExponentialBackoff, RetryBudget, RetryLayer, RetryPolicy};
use tollgate::{ApiError, BoxError, RequestMeta};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

use crate::config::{Config, DEFAULT_UPSTREAM, RetryConfig, UpstreamKind, without_credentials};
use crate::metrics::{AttemptLayer, Metrics, UpstreamMetrics};
use crate::proxy::Api;
use crate::record::{Endpoint, RequestRecord};

mod tls;

use self::tls::{Connector, TlsSetup};

/// The key sent to the built-in mock when the config gives none.
const MOCK_KEY: &str = "sk-tollgate-mock";

/// The client stack towards an upstream.
pub type UpstreamClient =
    BoxCloneSyncService<http::Request<Full<Bytes>>, http::Response<Body>, BoxError>;

/// One upstream: where it is, what it speaks, and the gateway's key there.
pub struct Target {
    /// Its name: `default` or an `[[upstreams]]` name.
    pub name: Arc<str>,
    /// Its URL without credentials, or `mock`, for logs.
    pub label: Arc<str>,
    /// `http://host:port/v1`, without a trailing slash.
    pub base_url: String,
    /// The URL of each API there (in [`Api::ALL`]'s order), parsed once:
    /// a request clones one instead of formatting and parsing it again.
    uris: [http::Uri; Api::ALL.len()],
    /// The API it speaks.
    pub kind: UpstreamKind,
    /// The built-in mock, which speaks both.
    pub mock: bool,
    /// The gateway's key there as each kind of API sends it (OpenAI's
    /// `Bearer`, Anthropic's bare key), made once and marked sensitive:
    /// never logged by hyper.
    credentials: Option<Credentials>,
    /// What per-upstream rate limits count by.
    pub extension: tollgate::rate_limit::Upstream,
    /// Its series.
    pub metrics: UpstreamMetrics,
}

impl Target {
    /// Whether the upstream serves `api`.
    pub fn serves(&self, api: Api) -> bool {
        self.mock || api.kind() == self.kind
    }

    /// The gateway's credentials for a call of `api`: `x-api-key` for
    /// Anthropic's Messages API, `Authorization: Bearer` for OpenAI's.
    pub fn credentials(&self, api: Api) -> Option<(http::HeaderName, HeaderValue)> {
        let credentials = self.credentials.as_ref()?;
        Some(match api.kind() {
            UpstreamKind::Anthropic => (
                http::HeaderName::from_static("x-api-key"),
                credentials.anthropic.clone(),
            ),
            UpstreamKind::OpenAi => (http::header::AUTHORIZATION, credentials.openai.clone()),
        })
    }

    /// The upstream's URL for `api`.
    pub fn uri(&self, api: Api) -> http::Uri {
        self.uris[api.index()].clone()
    }
}

/// A key's two header values (the mock speaks both APIs).
struct Credentials {
    openai: HeaderValue,
    anthropic: HeaderValue,
}

impl Credentials {
    fn new(key: &str) -> Result<Credentials, String> {
        let value = |text: &str| {
            let mut value = HeaderValue::from_str(text)
                .map_err(|_| "an upstream key holds a character a header cannot".to_owned())?;
            value.set_sensitive(true);
            Ok::<_, String>(value)
        };
        Ok(Credentials {
            openai: value(&format!("Bearer {key}"))?,
            anthropic: value(key)?,
        })
    }
}

/// Where one model's requests go.
pub struct Route {
    /// The model's name in the config (what clients send).
    pub model: Arc<str>,
    /// Its upstream.
    pub target: Arc<Target>,
    /// The name to send upstream, when it differs.
    pub upstream_model: Option<Arc<str>>,
    /// The client stack.
    pub client: UpstreamClient,
    /// Attempts the retry policy allows in all.
    pub max_attempts: u32,
    /// Prompt and completion tokens the model takes at most.
    pub context_window: Option<u64>,
}

/// Every model's route.
pub struct Routes {
    models: HashMap<String, Arc<Route>>,
}

impl Routes {
    /// Builds every upstream and every model's client stack. `mock_url` is
    /// the base URL of the built-in mock, for upstreams whose URL is `mock`.
    /// Fails on an upstream that cannot be used (its key variable is not
    /// set, its `ca_file` holds no certificate, an `https://` URL on a
    /// machine without CA certificates).
    pub fn build(config: &Config, mock_url: &str, metrics: &Metrics) -> Result<Routes, String> {
        let mut upstreams: HashMap<&str, Upstream> = HashMap::new();
        let mut tls = TlsSetup::default();
        let default_key = config
            .upstream_api_key
            .as_ref()
            .map(|key| Arc::from(key.expose().as_str()));
        let connector = tls
            .connector(&config.upstream, config.upstream_ca_file.as_deref())
            .map_err(|e| format!("upstream: {e}"))?;
        upstreams.insert(
            DEFAULT_UPSTREAM,
            Upstream::new(
                DEFAULT_UPSTREAM,
                &config.upstream,
                UpstreamKind::OpenAi,
                connector,
                default_key,
                Duration::from_secs(config.request_timeout_secs),
                config.retry.clone(),
                mock_url,
                metrics,
            )
            .map_err(|e| format!("upstream: {e}"))?,
        );
        for (i, entry) in config.upstreams.iter().enumerate() {
            let key = match (&entry.api_key, &entry.api_key_env) {
                (Some(key), _) => Some(Arc::from(key.expose().as_str())),
                (None, Some(var)) => match std::env::var(var) {
                    Ok(key) if !key.is_empty() => Some(Arc::from(key)),
                    _ => {
                        return Err(format!(
                            "upstreams[{i}].api_key_env: the environment variable {var} is not set"
                        ));
                    }
                },
                (None, None) => None,
            };
            let timeout = entry.timeout_secs.unwrap_or(config.request_timeout_secs);
            let connector = tls
                .connector(&entry.url, entry.ca_file.as_deref())
                .map_err(|e| format!("upstreams[{i}]: {e}"))?;
            let upstream = Upstream::new(
                &entry.name,
                &entry.url,
                entry.kind,
                connector,
                key,
                Duration::from_secs(timeout),
                entry.retry.clone().unwrap_or_else(|| config.retry.clone()),
                mock_url,
                metrics,
            )
            .map_err(|e| format!("upstreams[{i}]: {e}"))?;
            upstreams.insert(&entry.name, upstream);
        }
        let mut models = HashMap::new();
        for model in &config.models {
            let name = model.upstream.as_deref().unwrap_or(DEFAULT_UPSTREAM);
            let Some(upstream) = upstreams.get(name) else {
                return Err(format!(
                    "models.{}.upstream: no upstream named {name:?}",
                    model.name
                ));
            };
            let attempt_timeout = model
                .attempt_timeout_secs
                .unwrap_or(upstream.retry.attempt_timeout_secs);
            let route = Route {
                model: Arc::from(model.name.as_str()),
                target: upstream.target.clone(),
                upstream_model: model.upstream_model.as_deref().map(Arc::from),
                client: upstream.client(Duration::from_secs(attempt_timeout))?,
                max_attempts: upstream.retry.max_attempts,
                context_window: model.context_window,
            };
            models.insert(model.name.clone(), Arc::new(route));
        }
        Ok(Routes { models })
    }

    /// The route of `model` (a name from the config).
    pub fn get(&self, model: &str) -> Option<&Arc<Route>> {
        self.models.get(model)
    }
}

/// Whether any upstream of `config` is the built-in mock.
pub fn needs_mock(config: &Config) -> bool {
    config.upstream == "mock" || config.upstreams.iter().any(|u| u.url == "mock")
}

/// `layer` with the model-wide (`[[models]]`) and upstream-wide
/// (`[[upstreams]]`) limits of `config` added.
pub fn shared_limits<St: RateLimitStore, K>(
    config: &Config,
    mut layer: RateLimitLayer<St, K>,
) -> RateLimitLayer<St, K> {
    for model in &config.models {
        if let Some(n) = model.requests_per_minute {
            layer = layer.model_limit(&model.name, Limit::requests_per_minute(n));
        }
        if let Some(n) = model.tokens_per_minute {
            layer = layer.model_limit(&model.name, Limit::tokens_per_minute(n));
        }
        if let Some(n) = model.max_concurrent {
            layer = layer.model_max_concurrent(&model.name, n);
        }
    }
    for upstream in &config.upstreams {
        if let Some(n) = upstream.requests_per_minute {
            layer = layer.upstream_limit(&upstream.name, Limit::requests_per_minute(n));
        }
        if let Some(n) = upstream.tokens_per_minute {
            layer = layer.upstream_limit(&upstream.name, Limit::tokens_per_minute(n));
        }
        if let Some(n) = upstream.max_concurrent {
            layer = layer.upstream_max_concurrent(&upstream.name, n);
        }
    }
    layer
}

/// An upstream while the routes are built: its target, its pool, its
/// retry settings and budget.
struct Upstream {
    target: Arc<Target>,
    http: Client<Connector, Full<Bytes>>,
    timeout: Duration,
    retry: RetryConfig,
    budget: RetryBudget,
}

impl Upstream {
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: &str,
        url: &str,
        kind: UpstreamKind,
        connector: Connector,
        key: Option<Arc<str>>,
        timeout: Duration,
        retry: RetryConfig,
        mock_url: &str,
        metrics: &Metrics,
    ) -> Result<Upstream, String> {
        let mock = url == "mock";
        let base_url = if mock { mock_url } else { url }
            .trim_end_matches('/')
            .to_owned();
        // The mock, like Anthropic, wants some key on /v1/messages.
        let key = key.or_else(|| mock.then(|| Arc::from(MOCK_KEY)));
        let credentials = key.as_deref().map(Credentials::new).transpose()?;
        let uris = Api::ALL.map(|api| format!("{base_url}{}", api.upstream_path()).parse());
        let uris = match uris {
            [Ok(a), Ok(b), Ok(c), Ok(d), Ok(e)] => [a, b, c, d, e],
            _ => {
                return Err(format!(
                    "{name}: `{}` is not a URL",
                    without_credentials(url)
                ));
            }
        };
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Upstream {
            target: Arc::new(Target {
                name: Arc::from(name),
                label: Arc::from(if mock {
                    "mock".to_owned()
                } else {
                    without_credentials(url.trim_end_matches('/'))
                }),
                base_url,
                uris,
                kind,
                mock,
                credentials,
                extension: tollgate::rate_limit::Upstream::new(name),
                metrics: metrics.upstream(name),
            }),
            http,
            timeout,
            retry,
            budget: RetryBudget::default(),
        })
    }

    /// A client stack with `attempt_timeout` over this upstream's pool and
    /// retry budget.
    fn client(&self, attempt_timeout: Duration) -> Result<UpstreamClient, String> {
        let retry = &self.retry;
        let backoff = ExponentialBackoff::new(
            Duration::from_millis(retry.initial_backoff_ms),
            Duration::from_millis(retry.max_backoff_ms),
        )
        .map_err(|e| format!("retry: {e}"))?;
        let policy = RetryPolicy::new()
            .max_attempts(retry.max_attempts)
            .backoff(backoff)
            .attempt_timeout(attempt_timeout)
            .deadline(self.timeout)
            .max_server_delay(Duration::from_secs(retry.max_retry_after_secs));
        let stack = ServiceBuilder::new()
            .timeout(self.timeout)
            .layer(RetryLayer::new().policy(policy).budget(self.budget.clone()))
            .layer(AttemptLayer::new(self.target.metrics.clone()))
            .service(self.http.clone())
            .map_response(|response| response.map(Body::new))
            .map_err(|error| BoxError::from(Failure(error)));
        Ok(BoxCloneSyncService::new(stack))
    }
}

/// An upstream call's failure, shown with its causes: hyper-util's own
/// text is `client error (Connect)` whether the port was closed, the name
/// did not resolve or the certificate was not trusted, and the log line
/// must say which. `source()` is the failure itself, so the retry and
/// proxy code that look along the chain find what they look for.
#[derive(Debug)]
struct Failure(BoxError);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            let text = error.to_string();
            // Wrappers often repeat their source's text.
            if !last.contains(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
            cause = error.source();
        }
        Ok(())
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// The routing layer, in front of the rate limit: refuses (400) a model
/// whose upstream does not speak the endpoint's API, and sets the
/// [`tollgate::rate_limit::Upstream`] extension that per-upstream limits
/// count by (only when the config has such limits). The route itself was
/// found by the model check (in the request's [`RequestRecord`]); requests
/// without one (no model, or one not in the config, which the model check
/// answers) pass on.
///
/// A tower layer whose future is the inner one's (or a rejection): as
/// `from_fn` middleware it cost a boxed future, a boxed `Next` and a boxed
/// service clone per request.
#[derive(Clone, Copy)]
pub struct RoutingLayer {
    /// Whether any `[[upstreams]]` entry has limits of its own.
    upstream_limits: bool,
}

impl RoutingLayer {
    /// Routing for `config`.
    pub fn new(config: &Config) -> RoutingLayer {
        RoutingLayer {
            upstream_limits: config.upstreams.iter().any(|u| {
                u.requests_per_minute.is_some()
                    || u.tokens_per_minute.is_some()
                    || u.max_concurrent.is_some()
            }),
        }
    }
}

impl<S> tower::Layer<S> for RoutingLayer {
    type Service = Routing<S>;

    fn layer(&self, inner: S) -> Routing<S> {
        Routing {
            inner,
            upstream_limits: self.upstream_limits,
        }
    }
}

/// The service of [`RoutingLayer`].
#[derive(Clone)]
pub struct Routing<S> {
    inner: S,
    upstream_limits: bool,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Routing<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = RoutingFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let record = req.extensions().get::<Arc<RequestRecord>>();
        let api = match record.and_then(|r| r.endpoint()) {
            Some(Endpoint::Api(api)) => api,
            _ => {
                return RoutingFuture::Call {
                    future: self.inner.call(req),
                };
            }
        };
        let Some(route) = record.and_then(|r| r.route()) else {
            return RoutingFuture::Call {
                future: self.inner.call(req),
            };
        };
        if !route.target.serves(api) {
            return RoutingFuture::Refused {
                error: Some(wrong_api(route)),
            };
        }
        let upstream = self.upstream_limits.then(|| route.target.extension.clone());
        if api == Api::Embeddings {
            // Embeddings generate nothing: reserve (tokens, money) for the
            // input alone, not for a completion the model cannot write.
            if let Some(meta) = req.extensions_mut().get_mut::<RequestMeta>() {
                meta.max_tokens = Some(0);
            }
        }
        if let Some(upstream) = upstream {
            req.extensions_mut().insert(upstream);
        }
        RoutingFuture::Call {
            future: self.inner.call(req),
        }
    }
}

/// 400 for `route`'s model called through an API its upstream does not speak.
fn wrong_api(route: &Route) -> ApiError {
    ApiError::invalid_request()
        .with_param("model")
        .with_message(format!(
            "The model '{}' is served by an {} upstream; call it through {}.",
            route.model,
            route.target.kind.as_str(),
            match route.target.kind {
                UpstreamKind::Anthropic => "/v1/messages",
                UpstreamKind::OpenAi => "the OpenAI endpoints (/v1/chat/completions, …)",
            }
        ))
}

pin_project! {
    /// The future of [`Routing`]: the inner service's, or a refusal.
    #[project = RoutingFutureProj]
    pub enum RoutingFuture<F> {
        /// Routed (or nothing to route): the service inside answers.
        Call { #[pin] future: F },
        /// Refused.
        Refused { error: Option<ApiError> },
    }
}

impl<F, B, E> Future for RoutingFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RoutingFutureProj::Call { future } => future
                .poll(cx)
                .map_ok(|response| response.map(ResponseBody::inner)),
            RoutingFutureProj::Refused { error } => {
                let error = error.take().unwrap_or_else(ApiError::internal);
                Poll::Ready(Ok(reject(error)))
            }
        }
    }
}
