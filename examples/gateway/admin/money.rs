//! Money at run time: prepaid top-ups, budget resets, spend reports.

use std::collections::HashMap;

use axum::extract::{Query, Request, State};
use axum::response::Response;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tollgate::ApiError;
use tollgate::budget::{
    BudgetMode, BudgetScope, BudgetSpec, Money, SpendGroup, SpendQuery, SpendRow,
};

use super::{AdminState, admin_of, answer, budget_json, budgets_of, object_of};

/// The longest `Idempotency-Key` taken.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// `POST /admin/keys/{id}/balance` (and `/admin/teams/{id}/balance`, …)
/// `{"add_usd": "25.00"}`: adds to the prepaid balance of `scope`, a key or
/// a tenant. The amount must be within the config's `min_top_up_usd` and
/// `max_top_up_usd`. With an `Idempotency-Key` header, a retried top-up
/// (same key, within 24 hours) adds nothing and answers the balance with
/// `"replayed": true`.
pub async fn top_up(state: AdminState, scope: BudgetScope, req: Request) -> Response {
    let admin = admin_of(&req);
    let answer_of = async {
        let idempotency_key = idempotency_key(req.headers())?;
        let body = axum::body::to_bytes(req.into_body(), 64 << 10)
            .await
            .map_err(|_| ApiError::payload_too_large().with_message("The body is over 64 KiB."))?;
        let fields = object_of(&body)?;
        let amount = amount_of(fields.get("add_usd"))?;
        let (min, max) = (state.0.min_top_up, state.0.max_top_up);
        if amount < min || amount > max {
            return Err(ApiError::invalid_request()
                .with_param("add_usd")
                .with_message(format!(
                    "A top-up must be from {min} to {max}; got {amount}."
                )));
        }
        let budgets = budgets_of(&state, &scope).await?;
        let Some(balance) = own_budget(&budgets, &scope, BudgetMode::Balance) else {
            return Err(ApiError::invalid_request()
                .with_param("add_usd")
                .with_message(format!(
                    "{} has no prepaid balance (set `balance_usd` on it first).",
                    named(&scope)
                )));
        };
        let outcome = state
            .0
            .ledger
            .top_up(balance, amount, idempotency_key.as_deref())
            .await?;
        tracing::info!(
            target: "tollgate::audit",
            admin,
            action = "balance.top_up",
            scope = %scope.id(),
            add_usd = %amount.to_decimal(),
            replayed = outcome.replayed,
            idempotency_key = idempotency_key.as_deref().unwrap_or("-"),
        );
        Ok(json!({
            "id": scope.name(),
            "balance_usd": outcome.status.remaining().to_decimal(),
            "replayed": outcome.replayed,
        }))
    };
    answer(StatusCode::OK, answer_of.await)
}

/// `POST /admin/keys/{id}/budget/reset` (and `/admin/teams/{id}/…`): the
/// budget of `scope` starts its current period again from zero spend
/// (requests in flight keep their holds).
pub async fn reset_budget(state: AdminState, scope: BudgetScope, req: Request) -> Response {
    let admin = admin_of(&req);
    let answer_of = async {
        let budgets = budgets_of(&state, &scope).await?;
        let Some(budget) = own_budget(&budgets, &scope, BudgetMode::Budget) else {
            return Err(ApiError::invalid_request().with_message(format!(
                "{} has no budget to reset (a prepaid balance is topped up instead).",
                named(&scope)
            )));
        };
        let status = state.0.ledger.reset(budget).await?;
        tracing::info!(target: "tollgate::audit", admin, action = "budget.reset", scope = %scope.id());
        Ok(budget_json(budget, &status))
    };
    answer(StatusCode::OK, answer_of.await)
}

/// Query of `GET /admin/spend`.
#[derive(Debug, Deserialize)]
pub struct SpendParams {
    group_by: Option<String>,
    key: Option<String>,
    user: Option<String>,
    team: Option<String>,
    org: Option<String>,
    model: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// `GET /admin/spend?group_by=key|model|day|user|team|org&key=&model=&from=&to=`:
/// cost, tokens and requests from the ledger's aggregates (kept in the same
/// step as each settlement). `from` and `to` are UTC dates (`2026-12-06`),
/// inclusive. One of `key`, `user`, `team` or `org` keeps only that scope's
/// spend (e.g. `?group_by=model&team=research`: the team's spend per model);
/// `group_by=key` with a `user`, `team` or `org` filter answers each of its
/// member keys' spend. Grouping by another tenant kind than the filter's
/// (`group_by=user&team=…`) is a 400: spend is kept per scope.
pub async fn spend(State(state): State<AdminState>, Query(params): Query<SpendParams>) -> Response {
    let answer_of = async {
        let group = params.group_by.as_deref().unwrap_or("key");
        let group_by = match group {
            "key" => SpendGroup::Key,
            "model" => SpendGroup::Model,
            "day" => SpendGroup::Day,
            "user" => SpendGroup::User,
            "team" => SpendGroup::Team,
            "org" => SpendGroup::Org,
            _ => {
                return Err(ApiError::invalid_request()
                    .with_param("group_by")
                    .with_message("`group_by` must be key, model, day, user, team or org."));
            }
        };
        let day = |value: &Option<String>, param: &'static str| match value.as_deref() {
            None => Ok(None),
            Some(date) => SpendQuery::day(date).map(Some).ok_or_else(|| {
                ApiError::invalid_request()
                    .with_param(param)
                    .with_message(format!("`{param}` must be a UTC date like 2026-12-06."))
            }),
        };
        let mut query =
            SpendQuery::new(group_by).days(day(&params.from, "from")?, day(&params.to, "to")?);
        let scopes = [
            params.key.clone().map(BudgetScope::Key),
            params.user.clone().map(BudgetScope::User),
            params.team.clone().map(BudgetScope::Team),
            params.org.clone().map(BudgetScope::Org),
        ];
        let mut scopes = scopes.into_iter().flatten();
        if let Some(scope) = scopes.next() {
            if let Some(other) = scopes.next() {
                return Err(ApiError::invalid_request()
                    .with_param(other.kind_name())
                    .with_message(
                        "Filter by one of `key`, `user`, `team` or `org`, not several.",
                    ));
            }
            let by_scope = match group_by {
                SpendGroup::Key => Some("key"),
                SpendGroup::User => Some("user"),
                SpendGroup::Team => Some("team"),
                SpendGroup::Org => Some("org"),
                SpendGroup::Model | SpendGroup::Day => None,
            };
            match (by_scope, &scope) {
                // Each of a tenant's keys: its members today.
                (
                    Some("key"),
                    BudgetScope::User(_) | BudgetScope::Team(_) | BudgetScope::Org(_),
                ) => {
                    if let Some(model) = params.model.clone() {
                        query = query.model(model);
                    }
                    let rows = member_key_spend(&state, &scope, query).await?;
                    return Ok(spend_json(group, &rows));
                }
                (Some(kind), scope) if kind != scope.kind_name() => {
                    return Err(ApiError::invalid_request()
                        .with_param("group_by")
                        .with_message(format!(
                            "Spend is kept per scope: with a `{}` filter, group by key, model, \
                             day or {}.",
                            scope.kind_name(),
                            scope.kind_name()
                        )));
                }
                _ => {}
            }
            query = query.scope(scope);
        }
        if let Some(model) = params.model.clone() {
            query = query.model(model);
        }
        let rows = state.0.ledger.spend(&query).await?;
        Ok(spend_json(group, &rows))
    };
    answer(StatusCode::OK, answer_of.await)
}

/// The answer of `GET /admin/spend`: one object per row.
fn spend_json(group: &str, rows: &[SpendRow]) -> Value {
    let data: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({
                "group": row.group,
                "cost_usd": row.totals.cost.to_decimal(),
                "prompt_tokens": row.totals.prompt_tokens,
                "completion_tokens": row.totals.completion_tokens,
                "cached_tokens": row.totals.cached_tokens,
                "requests": row.totals.requests,
            })
        })
        .collect();
    json!({"object": "list", "group_by": group, "data": data})
}

/// Keys read per page while looking for a tenant's members.
const MEMBER_PAGE: usize = 1_000;

/// The spend of each key that is a member of `tenant` today (its `user`,
/// `team` or `org` names it), one row per key that spent, in id order. The
/// ledger keeps spend per scope, not per key within a team, so the members
/// come from the key store; a key that left the team is not counted, one
/// that joined brings its earlier spend.
async fn member_key_spend(
    state: &AdminState,
    tenant: &BudgetScope,
    query: SpendQuery,
) -> Result<Vec<SpendRow>, ApiError> {
    let mut rows = Vec::new();
    let mut after: Option<String> = None;
    // A key's org is its team's, or its own for a key without a team
    // record, as the auth layer finds it: each team read once.
    let mut team_orgs: HashMap<String, Option<String>> = HashMap::new();
    loop {
        let page = state.0.keys.list(after.as_deref(), MEMBER_PAGE).await?;
        for record in &page {
            let member = match tenant {
                BudgetScope::User(id) => record.user.as_deref() == Some(id.as_str()),
                BudgetScope::Team(id) => record.team.as_deref() == Some(id.as_str()),
                BudgetScope::Org(id) => {
                    let team_org = match &record.team {
                        None => None,
                        Some(team) => match team_orgs.get(team) {
                            Some(org) => org.clone(),
                            None => {
                                let scope = BudgetScope::Team(team.clone());
                                let org = state.0.keys.get_tenant(&scope).await?;
                                let org = org.and_then(|t| t.org.clone());
                                team_orgs.insert(team.clone(), org.clone());
                                org
                            }
                        },
                    };
                    team_org.or_else(|| record.org.clone()).as_deref() == Some(id.as_str())
                }
                BudgetScope::Key(_) => false,
            };
            if member {
                let one = query.clone().scope(BudgetScope::Key(record.id.clone()));
                rows.extend(state.0.ledger.spend(&one).await?);
            }
        }
        match page.last() {
            Some(last) if page.len() == MEMBER_PAGE => after = Some(last.id.clone()),
            _ => return Ok(rows),
        }
    }
}

/// The budget (or balance) of `scope` itself among `budgets`.
fn own_budget<'a>(
    budgets: &'a [BudgetSpec],
    scope: &BudgetScope,
    mode: BudgetMode,
) -> Option<&'a BudgetSpec> {
    budgets.iter().find(|b| b.mode == mode && b.scope == *scope)
}

/// `Key 'alice'`, `Team 'research'`: a scope in a message.
fn named(scope: &BudgetScope) -> String {
    let kind = scope.kind_name();
    let mut chars = kind.chars();
    let capital: String = chars
        .next()
        .map(|c| c.to_ascii_uppercase())
        .into_iter()
        .chain(chars)
        .collect();
    format!("{capital} '{}'", scope.name())
}

/// `add_usd` as money: a decimal string (`"25.00"`) or a number.
fn amount_of(value: Option<&Value>) -> Result<Money, ApiError> {
    let bad = || {
        ApiError::invalid_request()
            .with_param("add_usd")
            .with_message("`add_usd` must be a dollar amount like \"25.00\".")
    };
    match value {
        Some(Value::String(text)) => text.parse().map_err(|_| bad()),
        Some(Value::Number(number)) => number.to_string().parse().map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// The `Idempotency-Key` header: visible ASCII, at most 255 bytes.
fn idempotency_key(headers: &http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.trim().is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY => {
            Ok(Some(key.trim().to_owned()))
        }
        _ => Err(ApiError::invalid_request()
            .with_message("`Idempotency-Key` must be 1 to 255 visible ASCII characters.")),
    }
}
