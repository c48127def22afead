//! The admin API: keys, balances, budgets and spend managed at run time,
//! and a reload, under `/admin/` on the gateway's own listener.
//!
//! An operator must be able to mint a key for a new customer, revoke one
//! that leaked, top up a prepaid balance and ask who spent what, without
//! editing a file and restarting. Every change goes to the stores, so with
//! `store = "redis://…"` it holds on every instance at once (a revoked key
//! is refused everywhere within a second), and with `sqlite:` it survives a
//! restart.
//!
//! | route | answer |
//! |---|---|
//! | `POST /admin/keys` | 201 `{"id","secret",…record}`: the only time the secret is shown |
//! | `GET /admin/keys?limit=&after=` | a page of records |
//! | `GET /admin/keys/{id}` | the record and its budgets |
//! | `PATCH /admin/keys/{id}` | the record, changed; counters kept |
//! | `POST /admin/keys/{id}/rotate` | a new secret; the old one works `grace_secs` more |
//! | `POST /admin/keys/{id}/revoke` | the record, revoked |
//! | `DELETE /admin/keys/{id}` | `{"id","deleted":true}` |
//! | `POST /admin/keys/{id}/balance` | a top-up, once per `Idempotency-Key` |
//! | `POST /admin/keys/{id}/budget/reset` | the budget, its spend at zero |
//! | `POST /admin/users`, `/admin/teams`, `/admin/orgs` | 201, the tenant (`[[teams]]` fields; `id` required) |
//! | `GET /admin/teams?limit=&after=`, `GET /admin/teams/{id}` | a page of tenants, one tenant with its budgets |
//! | `PATCH /admin/teams/{id}` | the tenant, changed; counters and spend kept |
//! | `POST /admin/teams/{id}/revoke` | the tenant, disabled: its keys get 403 `account_disabled` |
//! | `DELETE /admin/teams/{id}` | `{"id","deleted":true}` |
//! | `POST /admin/teams/{id}/balance`, `…/budget/reset` | as for keys |
//! | `GET /admin/spend?group_by=key\|model\|day\|user\|team\|org&…` | spend, tokens and requests |
//! | `POST /admin/reload` | the config file read again |
//!
//! Bodies are JSON, money is a decimal string (`"10.00"`), times are
//! RFC 3339 in UTC, and errors are in the configured envelope. Every change
//! writes one audit line (`target: "tollgate::audit"`) naming the admin
//! key's id (`admin:` and the first 12 hex digits of its SHA-256), the
//! action and what it changed (`key`, or `scope`: `team:research`), never a
//! secret.
//!
//! # Who may call it
//!
//! `Authorization: Bearer <admin key>`, one of `admin_keys` (or whose
//! SHA-256 is in `admin_key_sha256s`), compared by hash in constant time.
//! With no admin key configured, every `/admin/*` path answers 404, as if
//! the API did not exist: nothing to probe. A tenant's valid key gets 403
//! `permission_denied` (it is a key, just not one for this); anything else
//! gets 401.

mod keys;
mod money;
mod tenants;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::StatusCode;
use http::header::AUTHORIZATION;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use tollgate::ApiError;
use tollgate::auth::{KeyHash, KeyRecord, KeyStore, TenantAdmin, TenantKind};
use tollgate::budget::{BudgetMode, BudgetScope, BudgetSpec, BudgetStatus, Ledger, Money};
use tollgate::rate_limit::{Algorithm, Limit, Measure};

use crate::config::Config;
use crate::gateway::{ReloadError, Reloads};
use crate::metrics::Metrics;
use crate::stores::Stores;

/// What the admin handlers share: the stores, the admin keys and the
/// top-up bounds of the config the app was built from.
#[derive(Clone)]
pub struct AdminState(Arc<Inner>);

struct Inner {
    admins: Vec<KeyHash>,
    keys: Arc<dyn TenantAdmin>,
    ledger: Arc<dyn Ledger>,
    min_top_up: Money,
    max_top_up: Money,
    reloads: Reloads,
    /// What `GET /metrics` renders on the main listener.
    metrics: Metrics,
}

impl AdminState {
    /// The admin API of `config` on `stores`.
    pub fn new(
        config: &Config,
        stores: &Stores,
        metrics: &Metrics,
        reloads: Reloads,
    ) -> AdminState {
        let admins = config
            .admin_keys
            .iter()
            .map(|key| KeyHash::of(key.expose()))
            .chain(
                config
                    .admin_key_sha256s
                    .iter()
                    .filter_map(|hex| KeyHash::from_hex(hex).ok()),
            )
            .collect();
        AdminState(Arc::new(Inner {
            admins,
            keys: stores.keys.clone(),
            ledger: stores.ledger.clone(),
            min_top_up: config.min_top_up_usd.0,
            max_top_up: config.max_top_up_usd.0,
            reloads,
            metrics: metrics.clone(),
        }))
    }
}

/// The admin routes, or none (every `/admin/*` then falls through to the
/// app's 404) when no admin key is configured.
pub fn routes(state: AdminState) -> Router {
    if state.0.admins.is_empty() {
        return Router::new();
    }
    Router::new()
        .route("/admin/keys", post(keys::create).get(keys::list))
        .route(
            "/admin/keys/{id}",
            get(keys::show).patch(keys::patch).delete(keys::delete),
        )
        .route("/admin/keys/{id}/rotate", post(keys::rotate))
        .route("/admin/keys/{id}/revoke", post(keys::revoke))
        .route(
            "/admin/keys/{id}/balance",
            post(
                |state: State<AdminState>, Path(id): Path<String>, req: Request| {
                    money::top_up(state.0, BudgetScope::Key(id), req)
                },
            ),
        )
        .route(
            "/admin/keys/{id}/budget/reset",
            post(
                |state: State<AdminState>, Path(id): Path<String>, req: Request| {
                    money::reset_budget(state.0, BudgetScope::Key(id), req)
                },
            ),
        )
        .merge(tenants::routes(TenantKind::User))
        .merge(tenants::routes(TenantKind::Team))
        .merge(tenants::routes(TenantKind::Org))
        .route("/admin/spend", get(money::spend))
        .route("/admin/reload", post(reload))
        // On the main listener, `/metrics` is for admins only; on
        // `metrics_listen` it is open (see `metrics/endpoint.rs`).
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found().with_message("Unknown admin path.") })
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// Who made a change, for the audit log: `admin:<12 hex digits>`.
#[derive(Debug, Clone)]
pub struct AdminId(pub String);

/// Admits admin keys; 403 for a tenant's key, 401 for anything else.
async fn authorize(State(state): State<AdminState>, mut req: Request, next: Next) -> Response {
    let Some(presented) = bearer(req.headers()) else {
        return ApiError::authentication()
            .with_code("missing_api_key")
            .with_message("The admin API needs an admin key: `Authorization: Bearer <admin key>`.")
            .into_response();
    };
    let hash = KeyHash::of(presented);
    // Every admin hash is compared, so the time taken does not tell which
    // (or whether one) matched.
    let admin = state.0.admins.iter().fold(None, |found, admin| {
        found.or(admin.verify(&hash).then_some(*admin))
    });
    if let Some(admin) = admin {
        let id = format!("admin:{}", &admin.to_hex()[..12]);
        req.extensions_mut().insert(AdminId(id));
        return next.run(req).await;
    }
    match state.0.keys.lookup(&hash).await {
        Ok(Some(_)) => ApiError::permission_denied()
            .with_message("This key may call the API, not administer the gateway.")
            .into_response(),
        Ok(None) => ApiError::authentication()
            .with_message("Invalid admin key.")
            .into_response(),
        Err(error) => ApiError::from(error).into_response(),
    }
}

/// The key of `Authorization: Bearer <key>` (scheme case-insensitive).
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, key) = value.split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

/// `GET /metrics` on the main listener, for admin keys.
async fn metrics(State(state): State<AdminState>) -> Response {
    crate::metrics::exposition(&state.0.metrics)
}

/// `POST /admin/reload`: the config file read again and swapped in.
async fn reload(State(state): State<AdminState>, req: Request) -> Response {
    let admin = admin_of(&req);
    match state.0.reloads.reload().await {
        Ok(reloaded) => {
            tracing::info!(target: "tollgate::audit", admin, action = "config.reload");
            json_response(
                StatusCode::OK,
                json!({
                    "reloaded": true,
                    "keys": reloaded.keys,
                    "users": reloaded.users,
                    "teams": reloaded.teams,
                    "orgs": reloaded.orgs,
                    "restart_required": reloaded.restart_required,
                }),
            )
        }
        Err(ReloadError::Config(message)) => ApiError::invalid_request()
            .with_code("invalid_config")
            .with_message(format!("The config was not reloaded: {message}"))
            .into_response(),
        Err(ReloadError::Store(error)) => ApiError::from(error).into_response(),
        Err(ReloadError::ShuttingDown) => ApiError::unavailable()
            .with_code("shutting_down")
            .with_message("The gateway is shutting down; the config was not reloaded.")
            .into_response(),
        Err(ReloadError::Io(error)) => {
            tracing::error!(%error, "reload failed");
            ApiError::internal()
                .with_message("The config was not reloaded: the upstream could not start.")
                .into_response()
        }
    }
}

/// The admin id the middleware put on `req`.
fn admin_of(req: &Request) -> String {
    req.extensions()
        .get::<AdminId>()
        .map_or_else(|| "admin:?".to_owned(), |a| a.0.clone())
}

/// A JSON answer.
fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// The answer of a handler: a JSON body with `status`, or an error.
pub(super) fn answer(status: StatusCode, result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(body) => json_response(status, body),
        Err(error) => error.into_response(),
    }
}

/// The JSON object of a request body (empty when there is none); 400 for
/// anything else.
fn object_of(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::invalid_request().with_message("The body must be a JSON object.")),
        Err(error) => Err(ApiError::invalid_request()
            .with_message(format!("The body is not valid JSON: {error}"))),
    }
}

/// 404 for a key that does not exist.
fn no_such_key(id: &str) -> ApiError {
    ApiError::not_found().with_message(format!("No key with id '{id}'."))
}

/// The record of key `id`, or the error to answer.
async fn record_of(state: &AdminState, id: &str) -> Result<Arc<KeyRecord>, ApiError> {
    match state.0.keys.get(id).await {
        Ok(Some(record)) => Ok(record),
        Ok(None) => Err(no_such_key(id)),
        Err(error) => Err(error.into()),
    }
}

/// `2026-12-06T10:00:00Z`, to the second.
pub fn rfc3339(at: SystemTime) -> Option<String> {
    let secs = at.duration_since(UNIX_EPOCH).ok()?.as_secs();
    jiff::Timestamp::from_second(i64::try_from(secs).ok()?)
        .ok()
        .map(|t| t.to_string())
}

/// One budget and its state, as the admin API and `GET /v1/key` show it.
pub fn budget_json(spec: &BudgetSpec, status: &BudgetStatus) -> Value {
    json!({
        "id": spec.id(),
        "mode": match spec.mode {
            BudgetMode::Budget => "budget",
            BudgetMode::Balance => "balance",
        },
        "limit_usd": status.limit.to_decimal(),
        "spent_usd": status.spent.to_decimal(),
        "reserved_usd": status.reserved.to_decimal(),
        "remaining_usd": status.remaining().to_decimal(),
        "resets_at": status.period.end.map(|end| rfc3339(UNIX_EPOCH + end)),
    })
}

/// `budgets`, each with its state read from the ledger.
pub async fn budgets_json(
    ledger: &dyn Ledger,
    budgets: &[BudgetSpec],
) -> Result<Vec<Value>, ApiError> {
    let mut shown = Vec::with_capacity(budgets.len());
    for spec in budgets {
        let status = ledger.read(spec).await?;
        shown.push(budget_json(spec, &status));
    }
    Ok(shown)
}

/// One rate limit.
pub fn limit_json(limit: &Limit) -> Value {
    json!({
        "limit": limit.to_string(),
        "measure": match limit.measure {
            Measure::Requests => "requests",
            Measure::Tokens => "tokens",
        },
        "amount": limit.amount,
        "window_secs": limit.window.as_secs_f64(),
        "algorithm": match limit.algorithm {
            Algorithm::Sliding => "sliding",
            Algorithm::Gcra => "gcra",
            Algorithm::Fixed => "fixed",
        },
    })
}

/// A key record as the admin API shows it: never a secret, its hash, or the
/// hashes of retired secrets.
async fn record_json(state: &AdminState, record: &KeyRecord) -> Result<Value, ApiError> {
    let budgets = budgets_json(&*state.0.ledger, &record.budgets).await?;
    let model_limits: Vec<Value> = record
        .model_limits
        .iter()
        .map(|m| {
            json!({
                "model": m.model,
                "rate_limits": m.limits.iter().map(limit_json).collect::<Vec<_>>(),
                "max_concurrent": m.max_concurrent,
            })
        })
        .collect();
    Ok(json!({
        "object": "key",
        "id": record.id,
        "name": record.name,
        "created_at": rfc3339(record.created_at),
        "expires_at": record.expires_at.and_then(rfc3339),
        "revoked": record.revoked,
        "disabled": record.disabled,
        "models": record.allowed_models,
        "rate_limits": record.rate_limits.iter().map(limit_json).collect::<Vec<_>>(),
        "model_limits": model_limits,
        "max_concurrent": record.max_concurrent,
        "user": record.user,
        "team": record.team,
        "org": record.org,
        "metadata": record.metadata,
        "source": if record.config_entry.is_some() { "config" } else { "admin" },
        "budgets": budgets,
    }))
}

/// Query of the paged lists (`GET /admin/keys`, `/admin/teams`, …).
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<String>,
    after: Option<String>,
}

impl ListQuery {
    /// `limit`: 1 to 1000, 100 when absent; 400 otherwise.
    fn limit(&self) -> Result<usize, ApiError> {
        match self.limit.as_deref().map(str::parse::<usize>) {
            None => Ok(100),
            Some(Ok(limit @ 1..=1000)) => Ok(limit),
            Some(_) => Err(ApiError::invalid_request()
                .with_param("limit")
                .with_message("`limit` must be a whole number from 1 to 1000.")),
        }
    }
}

/// One page of a list: `data` (one more than `limit` asks whether there is
/// more), and the last id to ask the next page `after`.
fn page_json(mut data: Vec<(String, Value)>, limit: usize) -> Value {
    let has_more = data.len() > limit;
    data.truncate(limit);
    let last_id = data.last().map(|(id, _)| id.clone());
    json!({
        "object": "list",
        "data": data.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "has_more": has_more,
        "last_id": last_id,
    })
}

/// The body of `req`, whole (the server bounds its time, this its size).
async fn body_of(req: Request) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .map_err(|_| {
            ApiError::payload_too_large()
                .with_message("The body could not be read, or is over 1 MiB.")
        })
}

/// `current` (an entry's fields as JSON) with `patch` applied: a field set
/// to `null` is removed (back to its default), any other replaced.
fn merged(
    current: &impl serde::Serialize,
    patch: Map<String, Value>,
) -> Result<Map<String, Value>, ApiError> {
    let Ok(Value::Object(mut fields)) = serde_json::to_value(current) else {
        return Err(ApiError::internal().with_message("The record could not be read."));
    };
    for (field, value) in patch {
        if value.is_null() {
            fields.remove(&field);
        } else {
            fields.insert(field, value);
        }
    }
    Ok(fields)
}

/// A config entry (`[[keys]]`, `[[teams]]`, …) from JSON `fields`; 400
/// naming the field for an unknown field or a bad value.
fn entry_of<T: DeserializeOwned>(fields: Map<String, Value>) -> Result<T, ApiError> {
    serde_json::from_value(Value::Object(fields)).map_err(|e| {
        let message = e.to_string();
        let mut error = ApiError::invalid_request().with_message(message.clone());
        if let Some(field) = message.split('`').nth(1) {
            error = error.with_param(field.to_owned());
        }
        error
    })
}

/// The budgets (and balance) of `scope`, a key or a tenant; 404 when it
/// does not exist.
async fn budgets_of(state: &AdminState, scope: &BudgetScope) -> Result<Vec<BudgetSpec>, ApiError> {
    match TenantKind::of(scope) {
        None => Ok(record_of(state, scope.name()).await?.budgets.clone()),
        Some((kind, id)) => Ok(tenants::record_of(state, kind, id).await?.budgets.clone()),
    }
}
