//! The tenants of a [`RedisKeyStore`]: users, teams and orgs, under the
//! key store's hash tag (where: "Where records live" on the store), cached
//! and invalidated like keys. An instance of an earlier version, which
//! reads only hashes on the invalidation channel, drops its whole cache on
//! a tenant's `t:<kind>:<id>`: safe.

use std::sync::Arc;

use super::{Inner, RedisKeyStore, list, read_record};
use crate::auth::{PutMode, TenantAdmin, TenantKind, TenantRecord};
use crate::budget::BudgetScope;
use crate::store::codec::{decode_tenant, encode_tenant};
use crate::store::redis::scripts::{TENANT_DELETE, TENANT_PUT};
use crate::store::{StoreError, StoreFuture, memory};

/// The prefix of a tenant invalidation message.
pub(super) const MESSAGE_PREFIX: &str = "t:";

/// The invalidation message of a write to the tenant `scope`.
fn message(scope: &BudgetScope) -> String {
    format!("{MESSAGE_PREFIX}{}", scope.id())
}

/// The Redis names of a tenant: its record, its kind's index, the prefix of
/// its kind's records.
fn names(inner: &Inner, kind: TenantKind, id: &str) -> (String, String, String) {
    let prefix = inner
        .redis
        .key(&format!("{{keys}}:tenant:{}:", kind.name()));
    let record = format!("{prefix}{id}");
    let index = inner
        .redis
        .key(&format!("{{keys}}:tenants:{}", kind.name()));
    (record, index, prefix)
}

/// [`KeyStore::tenant`](crate::auth::KeyStore::tenant): from the cache while
/// the subscription is live, else one `HGET`.
pub(super) fn lookup(
    inner: &Arc<Inner>,
    scope: &BudgetScope,
) -> StoreFuture<Option<Arc<TenantRecord>>> {
    let Some((kind, id)) = TenantKind::of(scope) else {
        return StoreFuture::ready(Ok(None));
    };
    inner.lookup(
        |inner| &inner.tenants,
        scope,
        |inner, _| read_record(inner, names(inner, kind, id).0, decode_tenant),
    )
}

impl TenantAdmin for RedisKeyStore {
    fn get_tenant(&self, scope: &BudgetScope) -> StoreFuture<Option<Arc<TenantRecord>>> {
        let Some((kind, id)) = TenantKind::of(scope) else {
            return StoreFuture::ready(Ok(None));
        };
        let key = names(&self.inner, kind, id).0;
        StoreFuture::pending(read_record(&self.inner, key, decode_tenant))
    }

    fn list_tenants(
        &self,
        kind: TenantKind,
        after: Option<&str>,
        limit: usize,
    ) -> StoreFuture<Vec<Arc<TenantRecord>>> {
        let (_, index, prefix) = names(&self.inner, kind, "");
        list(&self.inner, index, prefix, after, limit, decode_tenant)
    }

    fn put_tenant(
        &self,
        record: TenantRecord,
        mode: PutMode,
    ) -> StoreFuture<Option<Arc<TenantRecord>>> {
        if let Err(invalid) = record.check() {
            return StoreFuture::ready(Err(StoreError::Conflict(invalid.to_string())));
        }
        let scope = record.scope();
        let (key, index, _) = names(&self.inner, record.kind, &record.id);
        let args = vec![
            match mode {
                PutMode::Create => "c",
                PutMode::Upsert => "u",
            }
            .to_owned(),
            record.id.clone(),
            encode_tenant(&record),
            self.inner.names.channel.clone(),
            message(&scope),
        ];
        let call = self
            .inner
            .redis
            .eval::<Vec<String>>(&TENANT_PUT, vec![key, index], args);
        let inner = self.inner.clone();
        StoreFuture::pending(async move {
            let mut reply = call.await?.into_iter();
            match (reply.next().as_deref(), reply.next()) {
                (Some("ok"), Some(previous)) => {
                    // The listener hears it too; this makes the next lookup
                    // here see the change at once.
                    inner.invalidate_tenant(&scope);
                    Ok((!previous.is_empty())
                        .then(|| decode_tenant(&previous).ok().map(Arc::new))
                        .flatten())
                }
                (Some("exists"), None) => Err(memory::tenant_exists(&scope)),
                _ => Err(StoreError::Corrupt(
                    "the tenant put script returned an unexpected reply".into(),
                )),
            }
        })
    }

    fn delete_tenant(&self, scope: &BudgetScope) -> StoreFuture<bool> {
        let Some((kind, id)) = TenantKind::of(scope) else {
            return StoreFuture::ready(Ok(false));
        };
        let (key, index, _) = names(&self.inner, kind, id);
        let args = vec![
            id.to_owned(),
            self.inner.names.channel.clone(),
            message(scope),
        ];
        let call = self
            .inner
            .redis
            .eval::<i64>(&TENANT_DELETE, vec![key, index], args);
        let inner = self.inner.clone();
        let scope = scope.clone();
        StoreFuture::pending(async move {
            let existed = call.await? == 1;
            inner.invalidate_tenant(&scope);
            Ok(existed)
        })
    }
}
