//! A key's tenants, found after the key: [`resolve`].
//!
//! The key names its user and team; the team's record names its org. Each
//! is one [`KeyStore::tenant`] lookup, answered at once by a store in
//! memory or from a cache, so the common request decides in `call`, with
//! no future to box. A key that names no tenant costs nothing here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::{KeyStore, Principal, TenantRecord, Tenants};
use crate::budget::BudgetScope;
use crate::store::{StoreError, StoreFuture};
use crate::{ApiError, ErrorKind};

/// The principal with its tenants, once a remote store has answered.
pub(crate) type Resolving = Pin<Box<dyn Future<Output = Result<Principal, ApiError>> + Send>>;

/// The principal with its tenants now, or later.
pub(crate) enum Resolution {
    Now(Result<Principal, ApiError>),
    Later(Resolving),
}

type Found = Option<Arc<TenantRecord>>;

/// Finds `principal`'s tenants in `store`: its user, its team, and its
/// team's org (or the org the key names, for a key without a team record),
/// and refuses a key whose tenant is disabled.
pub(crate) fn resolve<K>(store: &Arc<K>, principal: Principal) -> Resolution
where
    K: KeyStore + ?Sized + 'static,
{
    let record = principal.record();
    if record.user.is_none() && record.team.is_none() && record.org.is_none() {
        return Resolution::Now(Ok(principal));
    }
    let lookup = |scope: Option<BudgetScope>| match scope {
        None => Ok(Ok(None)),
        Some(scope) => now_or_later(store.tenant(&scope)),
    };
    let user = lookup(record.user.clone().map(BudgetScope::User));
    let team = lookup(record.team.clone().map(BudgetScope::Team));
    if let (Ok(user), Ok(team)) = (&user, &team) {
        let (user, team) = match (user, team) {
            (Ok(user), Ok(team)) => (user.clone(), team.clone()),
            (Err(error), _) | (_, Err(error)) => {
                return Resolution::Now(Err(ApiError::from(error.clone())));
            }
        };
        let org = match lookup(org_of(&principal, team.as_deref())) {
            Ok(Ok(org)) => return Resolution::Now(finish(principal, user, team, org)),
            Ok(Err(error)) => return Resolution::Now(Err(error.into())),
            Err(pending) => pending,
        };
        return Resolution::Later(Box::pin(async move {
            let org = org.await?;
            finish(principal, user, team, org)
        }));
    }
    let store = store.clone();
    Resolution::Later(Box::pin(async move {
        let user = match user {
            Ok(found) => found?,
            Err(pending) => pending.await?,
        };
        let team = match team {
            Ok(found) => found?,
            Err(pending) => pending.await?,
        };
        let org = match org_of(&principal, team.as_deref()) {
            Some(scope) => store.tenant(&scope).await?,
            None => None,
        };
        finish(principal, user, team, org)
    }))
}

/// The answer of a store future that has one, or the future.
fn now_or_later<T>(mut future: StoreFuture<T>) -> Result<Result<T, StoreError>, StoreFuture<T>> {
    match future.take_ready() {
        Some(result) => Ok(result),
        None => Err(future),
    }
}

/// The org to look up: the team's, or the key's own for a key without a
/// team record.
fn org_of(principal: &Principal, team: Option<&TenantRecord>) -> Option<BudgetScope> {
    team.and_then(|t| t.org.clone())
        .or_else(|| principal.record().org.clone())
        .map(BudgetScope::Org)
}

fn finish(
    principal: Principal,
    user: Found,
    team: Found,
    org: Found,
) -> Result<Principal, ApiError> {
    let tenants = Tenants { user, team, org };
    if let Some(disabled) = tenants.disabled() {
        tracing::debug!(
            key_id = %principal.key_id(),
            tenant = %disabled.scope().id(),
            code = "account_disabled",
            "API key refused: its tenant is disabled"
        );
        return Err(ApiError::new(
            ErrorKind::PermissionDenied,
            format!(
                "The {} this API key belongs to is disabled.",
                disabled.kind.name()
            ),
        )
        .with_code("account_disabled"));
    }
    Ok(principal.with_tenants(tenants))
}
