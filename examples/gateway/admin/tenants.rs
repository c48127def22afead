//! `/admin/users`, `/admin/teams` and `/admin/orgs`: tenants made, listed,
//! read, changed, disabled and deleted at run time, with the verbs of
//! `/admin/keys` where they apply (a tenant has no secret to rotate; its
//! `revoke` disables it, which refuses every key of it with 403
//! `account_disabled` until a `PATCH {"disabled": false}`).
//!
//! A body takes the fields of a `[[teams]]` entry (`id` required: a
//! tenant's id is a name keys refer to, never generated). A team's `org`
//! must name an org that exists, as in the config file. As for keys, a
//! change is a whole record read, changed and put back; spend and balances
//! are the ledger's and never change here.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use http::StatusCode;
use serde_json::{Map, Value, json};
use tollgate::ApiError;
use tollgate::auth::{PutMode, TenantEntry, TenantKind, TenantRecord};

use super::{
    AdminState, ListQuery, admin_of, answer, body_of, budgets_json, entry_of, limit_json, merged,
    money, object_of, page_json,
};
use crate::config::{one_kind_of_money, table_of};

/// The routes of tenants of `kind` (`/admin/teams`, …).
pub fn routes(kind: TenantKind) -> Router<AdminState> {
    let base = format!("/admin/{}", table_of(kind));
    Router::new()
        .route(
            &base,
            post(move |state: State<AdminState>, req: Request| create(state.0, kind, req)).get(
                move |state: State<AdminState>, query: Query<ListQuery>| {
                    list(state.0, kind, query.0)
                },
            ),
        )
        .route(
            &format!("{base}/{{id}}"),
            get(move |state: State<AdminState>, Path(id): Path<String>| show(state.0, kind, id))
                .patch(
                    move |state: State<AdminState>, Path(id): Path<String>, req: Request| {
                        patch(state.0, kind, id, req)
                    },
                )
                .delete(
                    move |state: State<AdminState>, Path(id): Path<String>, req: Request| {
                        delete(state.0, kind, id, req)
                    },
                ),
        )
        .route(
            &format!("{base}/{{id}}/revoke"),
            post(
                move |state: State<AdminState>, Path(id): Path<String>, req: Request| {
                    revoke(state.0, kind, id, req)
                },
            ),
        )
        .route(
            &format!("{base}/{{id}}/balance"),
            post(
                move |state: State<AdminState>, Path(id): Path<String>, req: Request| {
                    money::top_up(state.0, kind.scope(id), req)
                },
            ),
        )
        .route(
            &format!("{base}/{{id}}/budget/reset"),
            post(
                move |state: State<AdminState>, Path(id): Path<String>, req: Request| {
                    money::reset_budget(state.0, kind.scope(id), req)
                },
            ),
        )
}

/// One audit line for a change to a tenant.
fn audit(admin: &str, kind: TenantKind, action: &str, id: &str) {
    tracing::info!(
        target: "tollgate::audit",
        admin,
        action = %format_args!("{kind}.{action}"),
        scope = %kind.scope(id).id(),
    );
}

/// `POST /admin/teams`: a new tenant; 409 when the id exists.
async fn create(state: AdminState, kind: TenantKind, req: Request) -> Response {
    let admin = admin_of(&req);
    let result = async {
        let fields = object_of(&body_of(req).await?)?;
        if !matches!(fields.get("id"), Some(Value::String(_))) {
            return Err(ApiError::invalid_request()
                .with_param("id")
                .with_message(format!(
                    "A {kind} needs an `id` (a string), which keys name."
                )));
        }
        let record = record_from(&state, kind, fields).await?;
        state
            .0
            .keys
            .put_tenant(record.clone(), PutMode::Create)
            .await?;
        audit(&admin, kind, "create", &record.id);
        tenant_json(&state, &record).await
    };
    answer(StatusCode::CREATED, result.await)
}

/// `GET /admin/teams?limit=&after=`: a page of tenants in id order.
async fn list(state: AdminState, kind: TenantKind, query: ListQuery) -> Response {
    let result = async {
        let limit = query.limit()?;
        let page = state
            .0
            .keys
            .list_tenants(kind, query.after.as_deref(), limit + 1)
            .await?;
        let mut data = Vec::with_capacity(page.len());
        for record in &page {
            data.push((record.id.clone(), tenant_json(&state, record).await?));
        }
        Ok(page_json(data, limit))
    };
    answer(StatusCode::OK, result.await)
}

/// `GET /admin/teams/{id}`: the tenant, its budgets and what remains.
async fn show(state: AdminState, kind: TenantKind, id: String) -> Response {
    let result = async {
        let record = record_of(&state, kind, &id).await?;
        tenant_json(&state, &record).await
    };
    answer(StatusCode::OK, result.await)
}

/// `PATCH /admin/teams/{id}`: any field but `id`; `null` takes a field back
/// to its default. Counters, spend and balances are kept.
async fn patch(state: AdminState, kind: TenantKind, id: String, req: Request) -> Response {
    let admin = admin_of(&req);
    let result = async {
        let patch = object_of(&body_of(req).await?)?;
        changed(&state, kind, &id, &admin, "update", patch).await
    };
    answer(StatusCode::OK, result.await)
}

/// `POST /admin/teams/{id}/revoke`: `PATCH {"disabled": true}` (its keys
/// get 403 `account_disabled` on every instance within a second).
async fn revoke(state: AdminState, kind: TenantKind, id: String, req: Request) -> Response {
    let admin = admin_of(&req);
    let disable = Map::from_iter([("disabled".to_owned(), Value::Bool(true))]);
    answer(
        StatusCode::OK,
        changed(&state, kind, &id, &admin, "revoke", disable).await,
    )
}

/// The tenant `id` with `patch` applied and stored, audited as `action`.
async fn changed(
    state: &AdminState,
    kind: TenantKind,
    id: &str,
    admin: &str,
    action: &str,
    patch: Map<String, Value>,
) -> Result<Value, ApiError> {
    if patch.contains_key("id") {
        return Err(ApiError::invalid_request()
            .with_param("id")
            .with_message(format!("A {kind}'s id cannot be changed.")));
    }
    let record = record_of(state, kind, id).await?;
    let fields = merged(&TenantEntry::from_record(&record), patch)?;
    let mut changed = record_from(state, kind, fields).await?;
    changed.config_entry = record.config_entry.clone();
    state
        .0
        .keys
        .put_tenant(changed.clone(), PutMode::Upsert)
        .await?;
    audit(admin, kind, action, id);
    tenant_json(state, &changed).await
}

/// `DELETE /admin/teams/{id}`: its keys keep its name as a label and are
/// no longer charged to its budgets; its spend stays in the aggregates.
async fn delete(state: AdminState, kind: TenantKind, id: String, req: Request) -> Response {
    let admin = admin_of(&req);
    let result = async {
        if !state.0.keys.delete_tenant(&kind.scope(id.clone())).await? {
            return Err(no_such(kind, &id));
        }
        audit(&admin, kind, "delete", &id);
        Ok(json!({"id": id, "deleted": true}))
    };
    answer(StatusCode::OK, result.await)
}

fn no_such(kind: TenantKind, id: &str) -> ApiError {
    ApiError::not_found().with_message(format!("No {kind} with id '{id}'."))
}

/// The record of the tenant `id` of `kind`, or the error to answer.
pub(super) async fn record_of(
    state: &AdminState,
    kind: TenantKind,
    id: &str,
) -> Result<Arc<TenantRecord>, ApiError> {
    match state.0.keys.get_tenant(&kind.scope(id)).await {
        Ok(Some(record)) => Ok(record),
        Ok(None) => Err(no_such(kind, id)),
        Err(error) => Err(error.into()),
    }
}

/// The record a `[[teams]]` entry's `fields` describe; 400 naming the
/// field for anything invalid, or for a team's org that does not exist.
async fn record_from(
    state: &AdminState,
    kind: TenantKind,
    fields: Map<String, Value>,
) -> Result<TenantRecord, ApiError> {
    let entry: TenantEntry = entry_of(fields)?;
    let record = entry
        .into_record(kind)
        .map_err(super::keys::invalid_entry)?;
    one_kind_of_money(&record.budgets, &record.scope()).map_err(|message| {
        ApiError::invalid_request()
            .with_param("balance_usd")
            .with_message(message)
    })?;
    if let Some(org) = &record.org
        && state
            .0
            .keys
            .get_tenant(&TenantKind::Org.scope(org.clone()))
            .await?
            .is_none()
    {
        return Err(ApiError::invalid_request()
            .with_param("org")
            .with_message(format!(
                "No org with id '{org}': create it first (POST /admin/orgs)."
            )));
    }
    Ok(record)
}

/// A tenant as the admin API shows it.
async fn tenant_json(state: &AdminState, record: &TenantRecord) -> Result<Value, ApiError> {
    let budgets = budgets_json(&*state.0.ledger, &record.budgets).await?;
    Ok(json!({
        "object": record.kind.name(),
        "id": record.id,
        "name": record.name,
        "disabled": record.disabled,
        "org": record.org,
        "rate_limits": record.rate_limits.iter().map(limit_json).collect::<Vec<_>>(),
        "max_concurrent": record.max_concurrent,
        "metadata": record.metadata,
        "source": if record.config_entry.is_some() { "config" } else { "admin" },
        "budgets": budgets,
    }))
}
