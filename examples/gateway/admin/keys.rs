//! `/admin/keys`: mint, list, read, change, rotate, revoke and delete keys.
//!
//! A change is a whole record: read from the store, changed, put back (the
//! key store's contract: the last write wins when two admins change one key
//! at the same instant). Counters, spend and balances are the ledger's and
//! never change here.

use std::time::{Duration, SystemTime};

use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tollgate::ApiError;
use tollgate::auth::{InvalidKeyEntry, KeyEntry, KeyRecord, PutMode};
use tollgate::budget::BudgetScope;

use super::{
    AdminState, ListQuery, admin_of, answer, body_of, entry_of, json_response, merged, object_of,
    page_json, record_json, record_of, rfc3339,
};

/// Fields a body may not set: secrets are generated, ids are for ever.
const GENERATED: &[&str] = &["secret", "secret_sha256"];

/// The longest grace a rotation gives the old secret.
const MAX_GRACE: Duration = Duration::from_secs(30 * 86_400);

/// `POST /admin/keys`: a new key from a `[[keys]]` entry's fields; its
/// secret is generated and shown in this answer only.
pub async fn create(State(state): State<AdminState>, req: Request) -> Response {
    let admin = admin_of(&req);
    let body = match body_of(req).await {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    match create_key(&state, body).await {
        Ok((secret, record)) => {
            tracing::info!(target: "tollgate::audit", admin, action = "key.create", key = %record.id);
            let mut answer = match record_json(&state, &record).await {
                Ok(Value::Object(answer)) => answer,
                Ok(_) => Map::new(),
                Err(error) => return error.into_response(),
            };
            answer.insert("secret".into(), Value::String(secret.expose().to_owned()));
            json_response(StatusCode::CREATED, Value::Object(answer))
        }
        Err(error) => error.into_response(),
    }
}

async fn create_key(
    state: &AdminState,
    body: Bytes,
) -> Result<(tollgate::auth::Secret, KeyRecord), ApiError> {
    let mut fields = object_of(&body)?;
    refuse_generated(&fields)?;
    let generated = match fields.get("id") {
        None => KeyRecord::generate(),
        Some(Value::String(id)) => KeyRecord::generate_with_id(id.clone()),
        Some(_) => {
            return Err(ApiError::invalid_request()
                .with_param("id")
                .with_message("`id` must be a string."));
        }
    };
    let (secret, minted) = generated.map_err(|error| {
        tracing::error!(%error, "no key minted");
        ApiError::internal().with_message("The key could not be generated.")
    })?;
    fields.insert("id".into(), Value::String(minted.id.clone()));
    fields.insert(
        "secret_sha256".into(),
        Value::String(minted.secret_hash.to_hex()),
    );
    let record = record_from(fields)?;
    state.0.keys.put(record.clone(), PutMode::Create).await?;
    Ok((secret, record))
}

/// `GET /admin/keys?limit=&after=`: a page of keys in id order.
pub async fn list(State(state): State<AdminState>, Query(query): Query<ListQuery>) -> Response {
    let answer_of = async {
        let limit = query.limit()?;
        let page = state.0.keys.list(query.after.as_deref(), limit + 1).await?;
        let mut data = Vec::with_capacity(page.len());
        for record in &page {
            data.push((record.id.clone(), record_json(&state, record).await?));
        }
        Ok::<_, ApiError>(page_json(data, limit))
    };
    answer(StatusCode::OK, answer_of.await)
}

/// `GET /admin/keys/{id}`.
pub async fn show(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    let answer_of = async {
        let record = record_of(&state, &id).await?;
        record_json(&state, &record).await
    };
    answer(StatusCode::OK, answer_of.await)
}

/// `PATCH /admin/keys/{id}`: any `[[keys]]` field but `id` and the
/// secrets; a field set to `null` goes back to its default.
pub async fn patch(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let admin = admin_of(&req);
    let answer_of = async {
        let body = body_of(req).await?;
        let patch = object_of(&body)?;
        refuse_generated(&patch)?;
        if patch.contains_key("id") {
            return Err(ApiError::invalid_request()
                .with_param("id")
                .with_message("A key's id cannot be changed."));
        }
        let record = record_of(&state, &id).await?;
        let changed = patched(&record, patch)?;
        let fields = changed_fields(&record, &changed);
        state.0.keys.put(changed.clone(), PutMode::Upsert).await?;
        tracing::info!(target: "tollgate::audit", admin, action = "key.update", key = %id, fields = %fields.join(","));
        record_json(&state, &changed).await
    };
    answer(StatusCode::OK, answer_of.await)
}

/// Body of `POST /admin/keys/{id}/rotate`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    grace_secs: u64,
}

/// `POST /admin/keys/{id}/rotate` `{"grace_secs": 3600}`: a new secret; the
/// old one keeps working for the grace, then is refused as revoked.
pub async fn rotate(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let admin = admin_of(&req);
    let answer_of = async {
        let body = body_of(req).await?;
        let fields = object_of(&body)?;
        let rotate: RotateBody = serde_json::from_value(Value::Object(fields)).map_err(|e| {
            ApiError::invalid_request()
                .with_param("grace_secs")
                .with_message(format!("Expected {{\"grace_secs\": <seconds>}}: {e}"))
        })?;
        let grace = Duration::from_secs(rotate.grace_secs);
        if grace > MAX_GRACE {
            return Err(ApiError::invalid_request()
                .with_param("grace_secs")
                .with_message("`grace_secs` must be at most 2592000 (30 days)."));
        }
        let mut record = (*record_of(&state, &id).await?).clone();
        let (secret, minted) = KeyRecord::generate_with_id(id.clone()).map_err(|error| {
            tracing::error!(%error, "no secret minted");
            ApiError::internal().with_message("The secret could not be generated.")
        })?;
        let until = SystemTime::now() + grace;
        record.rotate(minted.secret_hash, until);
        state.0.keys.put(record, PutMode::Upsert).await?;
        tracing::info!(target: "tollgate::audit", admin, action = "key.rotate", key = %id, grace_secs = rotate.grace_secs);
        Ok(json!({
            "id": id,
            "secret": secret.expose(),
            "previous_secret_valid_until": rfc3339(until),
        }))
    };
    answer(StatusCode::OK, answer_of.await)
}

/// `POST /admin/keys/{id}/revoke`: refused with 401 `revoked_api_key` from
/// the next request on (on every instance sharing the store, within 1 s).
pub async fn revoke(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let admin = admin_of(&req);
    let answer_of = async {
        let mut record = (*record_of(&state, &id).await?).clone();
        record.revoked = true;
        state.0.keys.put(record.clone(), PutMode::Upsert).await?;
        tracing::info!(target: "tollgate::audit", admin, action = "key.revoke", key = %id);
        record_json(&state, &record).await
    };
    answer(StatusCode::OK, answer_of.await)
}

/// `DELETE /admin/keys/{id}`: the key and every secret it holds. Its spend
/// stays in the ledger's aggregates.
pub async fn delete(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let admin = admin_of(&req);
    match state.0.keys.delete(&id).await {
        Ok(true) => {
            tracing::info!(target: "tollgate::audit", admin, action = "key.delete", key = %id);
            json_response(StatusCode::OK, json!({"id": id, "deleted": true}))
        }
        Ok(false) => super::no_such_key(&id).into_response(),
        Err(error) => ApiError::from(error).into_response(),
    }
}

/// 400 when `fields` sets a secret.
fn refuse_generated(fields: &Map<String, Value>) -> Result<(), ApiError> {
    match GENERATED.iter().find(|f| fields.contains_key(**f)) {
        Some(field) => Err(ApiError::invalid_request()
            .with_param(*field)
            .with_message(format!(
                "`{field}` cannot be set: the gateway generates secrets and shows each once."
            ))),
        None => Ok(()),
    }
}

/// The record a `[[keys]]` entry's `fields` describe; 400 naming the field
/// for anything invalid.
fn record_from(fields: Map<String, Value>) -> Result<KeyRecord, ApiError> {
    let entry: KeyEntry = entry_of(fields)?;
    let record = entry.into_record().map_err(invalid_entry)?;
    let own = BudgetScope::Key(record.id.clone());
    crate::config::one_kind_of_money(&record.budgets, &own).map_err(|message| {
        ApiError::invalid_request()
            .with_param("balance_usd")
            .with_message(message)
    })?;
    Ok(record)
}

/// 400 naming the field of an entry that does not make a record.
pub(super) fn invalid_entry(error: InvalidKeyEntry) -> ApiError {
    ApiError::invalid_request()
        .with_param(error.field())
        .with_message(error.to_string())
}

/// `record` with `patch`'s fields applied, as a `[[keys]]` entry would set
/// them. What an entry cannot say (retired secrets, the config entry it
/// was granted from, shared scopes' limits and budgets) is kept.
fn patched(record: &KeyRecord, patch: Map<String, Value>) -> Result<KeyRecord, ApiError> {
    let fields = merged(&KeyEntry::from_record(record), patch)?;
    let mut changed = record_from(fields)?;
    let own = BudgetScope::Key(record.id.clone());
    changed.retired = record.retired.clone();
    changed.config_entry = record.config_entry.clone();
    changed.scope_limits = record.scope_limits.clone();
    changed
        .budgets
        .extend(record.budgets.iter().filter(|b| b.scope != own).cloned());
    Ok(changed)
}

/// The names of the fields that differ, for the audit line.
fn changed_fields(old: &KeyRecord, new: &KeyRecord) -> Vec<&'static str> {
    let mut fields = Vec::new();
    let mut differs = |name, changed: bool| {
        if changed {
            fields.push(name);
        }
    };
    differs("name", old.name != new.name);
    differs("expires_at", old.expires_at != new.expires_at);
    differs("created_at", old.created_at != new.created_at);
    differs("revoked", old.revoked != new.revoked);
    differs("disabled", old.disabled != new.disabled);
    differs("models", old.allowed_models != new.allowed_models);
    differs(
        "rate_limits",
        old.rate_limits != new.rate_limits
            || old.model_limits != new.model_limits
            || old.max_concurrent != new.max_concurrent,
    );
    differs("budgets", old.budgets != new.budgets);
    differs("user", old.user != new.user);
    differs("team", old.team != new.team || old.org != new.org);
    differs("metadata", old.metadata != new.metadata);
    fields
}
