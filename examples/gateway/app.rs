//! The gateway: all six tollgate layers around an OpenAI-compatible proxy.
//!
//! Server stack, outermost first:
//! `ErrorEnvelope → access log → Auth → model check → RateLimit → Budget →
//! StreamErrorTrailer → proxy`, and towards the upstream `timeout → Retry →
//! hyper-util Client`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tollgate::auth::{AuthLayer, KeyEntry};
use tollgate::budget::{BudgetLayer, Ledger, ModelPrice, Pricing, TokenPrice};
use tollgate::rate_limit::{HeaderStyle, RateLimitLayer};
use tollgate::retry::RetryInfo;
use tollgate::store::memory::{MemoryKeyStore, MemoryLedger};
use tollgate::stream::StreamErrorTrailerLayer;
use tollgate::usage::{UsageReport, UsageTap};
use tollgate::{ApiError, ErrorEnvelopeLayer, ErrorFormat, Principal, RequestMeta};
use tower::ServiceBuilder;

use crate::config::{Config, ModelConfig};
use crate::mock;
use crate::upstream::{self, Upstream};

/// Shared state of the handlers.
pub struct Gateway {
    config: Config,
    pricing: Pricing,
    ledger: MemoryLedger,
}

/// A gateway that is serving.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The upstream it forwards to.
    pub upstream: String,
    /// The serving task (abort it to stop the gateway).
    pub task: tokio::task::JoinHandle<()>,
}

/// Builds everything and starts serving on `config.listen`.
pub async fn start(config: Config) -> Result<Running, Box<dyn std::error::Error + Send + Sync>> {
    let upstream_url = match config.upstream_url() {
        Some(url) => url.to_owned(),
        None => {
            let models = config.models.iter().map(|m| m.name.clone()).collect();
            let addr = mock::Mock::new(models)
                .serve(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await?;
            format!("http://{addr}/v1")
        }
    };
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let app = router(config, upstream_url.clone())?;
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "gateway stopped");
        }
    });
    Ok(Running {
        addr,
        upstream: upstream_url,
        task,
    })
}

fn pricing(models: &[ModelConfig]) -> Result<Pricing, String> {
    let mut pricing = Pricing::new();
    for m in models {
        let price = |usd: f64, field: &str| {
            TokenPrice::from_usd_per_million(usd)
                .map_err(|e| format!("models.{}.{field}: {e}", m.name))
        };
        let input = price(m.input_usd_per_million, "input_usd_per_million")?;
        let output = price(m.output_usd_per_million, "output_usd_per_million")?;
        let cached = match m.cached_input_usd_per_million {
            Some(usd) => price(usd, "cached_input_usd_per_million")?,
            None => input,
        };
        pricing.insert(
            m.name.clone(),
            ModelPrice {
                input,
                output,
                cached_input: Some(cached),
                max_output_tokens: m.max_output_tokens,
            },
        );
    }
    Ok(pricing)
}

/// The whole application as an axum `Router`.
pub fn router(
    config: Config,
    upstream_url: String,
) -> Result<Router, Box<dyn std::error::Error + Send + Sync>> {
    let keys = MemoryKeyStore::new();
    for entry in config.keys.iter().cloned() {
        keys.insert(KeyEntry::into_record(entry)?)?;
    }
    let pricing = pricing(&config.models)?;
    let ledger = MemoryLedger::new();
    let error_format: ErrorFormat = config.error_format.parse()?;
    let header_style = match config.rate_limit_headers.as_str() {
        "timestamp" => HeaderStyle::Timestamp,
        "ietf" => HeaderStyle::Ietf,
        "none" => HeaderStyle::None,
        _ => HeaderStyle::OpenAi,
    };
    let upstream = Arc::new(Upstream::new(upstream_url, &config)?);
    let idle = Duration::from_secs(config.stream_idle_timeout_secs);
    let gateway = Arc::new(Gateway {
        config,
        pricing: pricing.clone(),
        ledger: ledger.clone(),
    });

    let chat = Router::new()
        .route("/v1/chat/completions", post(upstream::chat_completions))
        .with_state(upstream)
        .layer(
            ServiceBuilder::new()
                .layer(RateLimitLayer::new().headers(header_style))
                .layer(BudgetLayer::with_ledger(pricing, ledger))
                .layer(StreamErrorTrailerLayer::new().idle_timeout(idle)),
        );
    let authed = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/key", get(key_info))
        .with_state(gateway.clone())
        .merge(chat)
        .layer(
            ServiceBuilder::new()
                .layer(AuthLayer::new(keys))
                .layer(middleware::from_fn_with_state(gateway.clone(), check_model)),
        );
    Ok(Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .merge(authed)
        .fallback(|| async { ApiError::not_found().with_message("Unknown path.") })
        .layer(
            ServiceBuilder::new()
                .layer(
                    ErrorEnvelopeLayer::new()
                        .format(error_format)
                        .catch_panic(true),
                )
                .layer(middleware::from_fn_with_state(gateway, access_log)),
        ))
}

/// A model not in the config → 400 `invalid_model`; prompt + `max_tokens`
/// over the model's context window → 400 `context_length_exceeded`, before
/// any upstream call.
async fn check_model(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    let req = match RequestMeta::read(req, RequestMeta::DEFAULT_LIMIT).await {
        Ok(req) => req,
        Err(error) => return error.into_response(),
    };
    let Some(meta) = req.extensions().get::<RequestMeta>() else {
        return next.run(req).await;
    };
    if let Some(slot) = req.extensions().get::<LogSlot>() {
        if let Ok(mut fields) = slot.0.lock() {
            fields.0 = req
                .extensions()
                .get::<Principal>()
                .map(|p| p.key_id().to_owned());
            fields.1 = meta.model.clone();
        }
    }
    if req.method() == http::Method::POST {
        let Some(name) = meta.model.as_deref() else {
            return ApiError::invalid_request()
                .with_message("You must provide a model parameter.")
                .with_param("model")
                .into_response();
        };
        let Some(model) = gw.config.models.iter().find(|m| m.name == name) else {
            return ApiError::invalid_model()
                .with_message(format!("Invalid model '{name}' specified"))
                .into_response();
        };
        if let Some(window) = model.context_window {
            let completion = meta.max_tokens.unwrap_or(0);
            let requested = meta.prompt_tokens_estimate.saturating_add(completion);
            if requested > window {
                return ApiError::context_length_exceeded()
                    .with_param("messages")
                    .with_message(format!(
                        "This model's maximum context length is {window} tokens. However, you requested {requested} tokens ({} in the messages, {completion} in the completion). Please reduce the length of the messages or completion.",
                        meta.prompt_tokens_estimate
                    ))
                    .into_response();
            }
        }
    }
    next.run(req).await
}

/// `GET /v1/models`: the models the calling key may use, OpenAI list shape.
async fn list_models(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let principal = req.extensions().get::<Principal>();
    let data: Vec<Value> = gw
        .config
        .models
        .iter()
        .filter(|m| principal.is_none_or(|p| p.allows_model(&m.name)))
        .map(|m| json!({"id": m.name, "object": "model", "created": 0, "owned_by": "tollgate"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /v1/key`: the calling key's id, expiry, limits and remaining money,
/// without spending a request.
async fn key_info(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let Some(principal) = req.extensions().get::<Principal>().cloned() else {
        return ApiError::authentication().into_response();
    };
    let limits: Vec<Value> = principal
        .rate_limits()
        .iter()
        .map(|l| json!({"limit": l.to_string(), "amount": l.amount, "window_secs": l.window.as_secs_f64()}))
        .collect();
    let mut budgets = Vec::new();
    for spec in principal.budgets() {
        match gw.ledger.read(spec).await {
            Ok(status) => budgets.push(json!({
                "id": spec.id(),
                "mode": format!("{:?}", spec.mode).to_lowercase(),
                "limit_usd": spec.limit.as_usd_f64(),
                "remaining_usd": status.remaining().as_usd_f64(),
                "resets_at": status.period.end.map(rfc3339),
            })),
            Err(error) => return ApiError::from(error).into_response(),
        }
    }
    axum::Json(json!({
        "id": principal.key_id(),
        "name": principal.name(),
        "expires_at": principal.expires_at().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(rfc3339),
        "models": principal.allowed_models(),
        "rate_limits": limits,
        "max_concurrent": principal.max_concurrent(),
        "budgets": budgets,
    }))
    .into_response()
}

/// What the inner part of the stack learns about a request, for its log line.
#[derive(Clone, Default)]
struct LogSlot(Arc<std::sync::Mutex<(Option<String>, Option<String>)>>);

/// One `tracing` line per request: key id, model, status, tokens, cost,
/// attempts, latency. Streams are logged when their body ends.
async fn access_log(State(gw): State<Arc<Gateway>>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let slot = LogSlot::default();
    req.extensions_mut().insert(slot.clone());
    let response = next.run(req).await;
    let (key, model) = slot.0.lock().map(|g| g.clone()).unwrap_or_default();
    let attempts = response
        .extensions()
        .get::<RetryInfo>()
        .map(|r| r.attempts)
        .unwrap_or(0);
    let status = response.status().as_u16();
    let log = move |report: Option<&UsageReport>| {
        let tokens = report.map(|r| r.usage.total_tokens).unwrap_or(0);
        let cost = match (report, model.as_deref().and_then(|m| gw.pricing.get(m))) {
            (Some(r), Some(price)) => price
                .cost_of(
                    r.usage.prompt_tokens,
                    r.usage.cached_tokens.unwrap_or(0),
                    r.usage.completion_tokens,
                )
                .to_string(),
            _ => "$0.00".to_owned(),
        };
        tracing::info!(
            key = key.as_deref().unwrap_or("-"),
            model = model.as_deref().unwrap_or("-"),
            %method,
            path,
            status,
            tokens,
            cost,
            attempts,
            latency_ms = start.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
    };
    match response.extensions().get::<UsageTap>() {
        Some(tap) => tap.subscribe(move |report| log(Some(report))),
        None => log(None),
    }
    response
}

/// `2026-12-06T00:00:00Z` for a time since the Unix epoch.
fn rfc3339(since_epoch: Duration) -> Option<String> {
    let secs = i64::try_from(since_epoch.as_secs()).ok()?;
    jiff::Timestamp::from_second(secs)
        .ok()
        .map(|t| t.to_string())
}
