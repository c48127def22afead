//! The admin side of [`RedisKeyStore`]: the [`KeyAdmin`] operations (each
//! one script, or one read), and the inherent shortcuts built on them.

use std::future::Future;
use std::sync::Arc;

use super::{Inner, KeyWriteError, RedisKeyStore, list, read_json, read_record};
use crate::auth::{KeyAdmin, KeyRecord, PutMode};
use crate::store::codec::{decode, encode};
use crate::store::memory::{DuplicateSecret, key_exists, secret_taken};
use crate::store::redis::scripts::{KEY_DELETE, KEY_PUT};
use crate::store::{StoreError, StoreFuture};

/// How a write treats the record already stored under its id.
#[derive(Clone, Copy)]
pub(super) enum Mode<'a> {
    /// As [`KeyAdmin::put`] in this mode.
    Put(PutMode),
    /// Only if the stored record is still this JSON (`""`: no record).
    Replace(&'a str),
}

/// What the put script did.
pub(super) enum Written {
    /// Stored, replacing the record with this JSON, if any.
    Stored { previous: Option<String> },
    /// [`PutMode::Create`], and the id exists.
    IdExists,
    /// Another key (this id) holds one of the record's secrets.
    SecretTaken { owner: String },
    /// [`Mode::Replace`], and the record is no longer the one expected.
    Changed,
}

/// How often a read-modify-write ([`RedisKeyStore::revoke`]) is tried
/// before it gives up against writers that keep changing the record.
const MODIFY_ATTEMPTS: usize = 16;

/// Runs the put script for `record`.
pub(super) fn write(
    inner: &Arc<Inner>,
    record: &KeyRecord,
    mode: Mode<'_>,
) -> impl Future<Output = Result<Written, StoreError>> + Send + 'static {
    let names = &inner.names;
    let mut keys = vec![names.id(&record.id), names.ids.clone()];
    keys.extend(record.secret_hashes().map(|hash| names.secret(&hash)));
    let hex: Vec<String> = record.secret_hashes().map(|hash| hash.to_hex()).collect();
    let (mode, expected) = match mode {
        Mode::Put(PutMode::Create) => ("c", ""),
        Mode::Put(PutMode::Upsert) => ("u", ""),
        Mode::Replace(expected) => ("x", expected),
    };
    let args = vec![
        mode.to_owned(),
        record.id.clone(),
        encode(record),
        hex.join(" "),
        names.channel.clone(),
        names.secret.clone(),
        expected.to_owned(),
    ];
    let call = inner.redis.eval::<Vec<String>>(&KEY_PUT, keys, args);
    let inner = inner.clone();
    async move {
        let mut reply = call.await?.into_iter();
        let status = reply.next().unwrap_or_default();
        match (status.as_str(), reply.next(), reply.next()) {
            ("ok", Some(previous), Some(touched)) => {
                // The listener hears it too; this makes the next lookup on
                // this instance see the change without waiting for it.
                inner.invalidate_message(&touched);
                Ok(Written::Stored {
                    previous: (!previous.is_empty()).then_some(previous),
                })
            }
            ("exists", None, None) => Ok(Written::IdExists),
            ("taken", Some(owner), None) => Ok(Written::SecretTaken { owner }),
            ("changed", None, None) => Ok(Written::Changed),
            _ => Err(StoreError::Corrupt(
                "the key put script returned an unexpected reply".into(),
            )),
        }
    }
}

/// The put script's answer for a mode other than the one it was given.
pub(super) fn unexpected() -> StoreError {
    StoreError::Corrupt("the key put script answered for another mode".into())
}

impl RedisKeyStore {
    /// Stores `record`, replacing the record with the same id, and tells
    /// every instance. Secrets the replaced record held and `record` does
    /// not stop working (a new secret without a rotation grace); refused if
    /// another key holds one of its secrets. [`KeyAdmin::put`] with
    /// [`PutMode::Upsert`], with the other key's id in the error.
    pub async fn insert(&self, record: KeyRecord) -> Result<(), KeyWriteError> {
        match write(&self.inner, &record, Mode::Put(PutMode::Upsert)).await? {
            Written::Stored { .. } => Ok(()),
            Written::SecretTaken { owner } => Err(DuplicateSecret {
                id: record.id,
                existing: owner,
            }
            .into()),
            Written::IdExists | Written::Changed => Err(unexpected().into()),
        }
    }

    /// Marks key `id` revoked (401 `revoked_api_key` on every instance).
    /// Returns whether the key exists.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        self.modify(id, |record| record.revoked = true).await
    }

    /// Disables (or re-enables) key `id`'s account (403 `account_disabled`
    /// on every instance). Returns whether the key exists.
    pub async fn set_disabled(&self, id: &str, disabled: bool) -> Result<bool, StoreError> {
        self.modify(id, |record| record.disabled = disabled).await
    }

    /// Changes key `id`'s record with `change`, writing it back only if
    /// nobody changed it since it was read (retrying otherwise): a flag set
    /// here never undoes a concurrent rotation.
    async fn modify(
        &self,
        id: &str,
        change: impl Fn(&mut KeyRecord) + Send,
    ) -> Result<bool, StoreError> {
        for _ in 0..MODIFY_ATTEMPTS {
            let Some(json) = read_json(&self.inner, self.inner.names.id(id)).await? else {
                return Ok(false);
            };
            let mut record = decode(&json, None)?;
            change(&mut record);
            match write(&self.inner, &record, Mode::Replace(&json)).await? {
                Written::Stored { .. } => return Ok(true),
                Written::Changed => {}
                Written::SecretTaken { .. } => return Err(secret_taken(id)),
                Written::IdExists => return Err(unexpected()),
            }
        }
        Err(StoreError::Conflict(format!(
            "key `{}` kept changing while it was being written; retry",
            id.escape_debug()
        )))
    }
}

impl KeyAdmin for RedisKeyStore {
    fn get(&self, id: &str) -> StoreFuture<Option<Arc<KeyRecord>>> {
        let key = self.inner.names.id(id);
        StoreFuture::pending(read_record(&self.inner, key, |json| decode(json, None)))
    }

    fn list(&self, after: Option<&str>, limit: usize) -> StoreFuture<Vec<Arc<KeyRecord>>> {
        let names = &self.inner.names;
        let (index, prefix) = (names.ids.clone(), names.id.clone());
        list(&self.inner, index, prefix, after, limit, |json| {
            decode(json, None)
        })
    }

    fn put(&self, record: KeyRecord, mode: PutMode) -> StoreFuture<Option<Arc<KeyRecord>>> {
        let call = write(&self.inner, &record, Mode::Put(mode));
        StoreFuture::pending(async move {
            match call.await? {
                Written::Stored { previous } => Ok(previous.and_then(|json| {
                    // The write is done: a replaced record this version
                    // cannot read is reported as none, not as a failure.
                    decode(&json, None)
                        .inspect_err(|error| {
                            tracing::warn!(%error, key_id = %record.id, "replaced key record unreadable");
                        })
                        .ok()
                        .map(Arc::new)
                })),
                Written::IdExists => Err(key_exists(&record.id)),
                Written::SecretTaken { .. } => Err(secret_taken(&record.id)),
                Written::Changed => Err(unexpected()),
            }
        })
    }

    /// Runs the delete script, which drops every secret the key holds.
    fn delete(&self, id: &str) -> StoreFuture<bool> {
        let names = &self.inner.names;
        let keys = vec![names.id(id), names.ids.clone()];
        let args = vec![id.to_owned(), names.channel.clone(), names.secret.clone()];
        let call = self
            .inner
            .redis
            .eval::<Option<String>>(&KEY_DELETE, keys, args);
        let inner = self.inner.clone();
        StoreFuture::pending(async move {
            let hashes = call.await?;
            if let Some(hashes) = &hashes {
                inner.invalidate_message(hashes);
            }
            Ok(hashes.is_some())
        })
    }
}
