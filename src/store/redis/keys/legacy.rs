//! Moving key records from the layout of earlier versions to the current
//! one (see "Upgrading from the previous layout" on [`RedisKeyStore`]).

use super::RedisKeyStore;
use super::admin::{Mode, Written, unexpected, write};
use crate::auth::{KeyHash, PutMode};
use crate::store::StoreError;
use crate::store::codec::decode;

/// Index keys read per `SCAN` step.
const SCAN_COUNT: usize = 500;

impl RedisKeyStore {
    /// Moves the key records an earlier version wrote (a hash
    /// `<prefix>key:<sha256 hex>` with the fields `id`, `rec`, `revoked`,
    /// `disabled`, and an index `<prefix>keyid:<id>`) to the current layout,
    /// deletes the old keys, and returns how many records it moved.
    ///
    /// Call it once at start-up, before serving, after the last instance of
    /// the earlier version has stopped writing keys (a change that instance
    /// makes after the move is lost). It is idempotent, and one `SCAN` when
    /// there is nothing to move; an interrupted run is completed by the next.
    /// Each record is written as [`PutMode::Create`]:
    /// a key that already exists in the current layout (made since by a
    /// current instance) wins, and its old copy is deleted. A record whose
    /// secret another current key holds, or that cannot be read, is left
    /// where it is, with a warning, for an operator to look at.
    ///
    /// A Redis Cluster has nothing to move: earlier versions did not run on
    /// one.
    pub async fn migrate_legacy_layout(&self) -> Result<usize, StoreError> {
        let redis = &self.inner.redis;
        if redis.is_cluster() {
            return Ok(0);
        }
        let pattern = format!("{}*", glob_escape(&redis.key("keyid:")));
        let mut cursor = 0u64;
        let mut moved = 0;
        loop {
            let pattern = pattern.clone();
            let (next, indexes): (u64, Vec<String>) = redis
                .call(move |mut conn| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(SCAN_COUNT)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            for index in indexes {
                if self.migrate_one(index).await? {
                    moved += 1;
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if moved > 0 {
            tracing::info!(moved, "key records moved to the current Redis layout");
        }
        Ok(moved)
    }

    /// Moves the record of the old index key `index`; whether it did.
    async fn migrate_one(&self, index: String) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let redis = &inner.redis;
        let (hex, fields): (Option<String>, Vec<Option<String>>) = {
            let index = index.clone();
            let prefix = redis.key("key:");
            redis
                .call(move |mut conn| async move {
                    let hex: Option<String> =
                        redis::cmd("GET").arg(&index).query_async(&mut conn).await?;
                    let Some(hex) = hex else {
                        return Ok((None, Vec::new()));
                    };
                    let fields = redis::cmd("HMGET")
                        .arg(format!("{prefix}{hex}"))
                        .arg(&["rec", "revoked", "disabled"])
                        .query_async(&mut conn)
                        .await?;
                    Ok((Some(hex), fields))
                })
                .await?
        };
        let Some(hex) = hex else {
            // Deleted since the scan.
            return Ok(false);
        };
        let record_key = redis.key(&format!("key:{hex}"));
        let record = match (KeyHash::from_hex(&hex), fields.as_slice()) {
            (Ok(hash), [Some(rec), revoked, disabled]) => decode(rec, Some(hash)).map(|mut r| {
                // The flags were fields of their own, changed without
                // rewriting the JSON: they are what counts.
                r.revoked = revoked.as_deref() == Some("1");
                r.disabled = disabled.as_deref() == Some("1");
                r
            }),
            (Ok(_), [None, ..]) => {
                // An index left without its record: nothing to move.
                self.drop_legacy(vec![index]).await?;
                return Ok(false);
            }
            _ => Err(StoreError::Corrupt("legacy key index".into())),
        };
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                tracing::warn!(%error, key = %index, "legacy key record unreadable; left in place");
                return Ok(false);
            }
        };
        let moved = match write(inner, &record, Mode::Put(PutMode::Create)).await? {
            Written::Stored { .. } => true,
            Written::IdExists => false,
            Written::SecretTaken { owner } => {
                tracing::warn!(
                    key_id = %record.id,
                    other = %owner,
                    "legacy key record has the secret of a current key; left in place"
                );
                return Ok(false);
            }
            Written::Changed => return Err(unexpected()),
        };
        self.drop_legacy(vec![index, record_key]).await?;
        Ok(moved)
    }

    async fn drop_legacy(&self, keys: Vec<String>) -> Result<(), StoreError> {
        self.inner
            .redis
            .call(move |mut conn| async move {
                redis::cmd("DEL")
                    .arg(keys)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await
            .map(drop)
    }
}

/// `text` matching itself in a `SCAN MATCH` pattern.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_themselves() {
        assert_eq!(glob_escape("tollgate:keyid:"), "tollgate:keyid:");
        assert_eq!(glob_escape("a*b?[c]\\:"), "a\\*b\\?\\[c\\]\\\\:");
    }
}
