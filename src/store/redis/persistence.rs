//! [`Persistence`]: whether Redis keeps what the stores write when Redis
//! itself restarts, asked once at start-up.
//!
//! The Redis stores hold money: every budget's spend, every prepaid
//! balance, every key made through an admin API. A Redis running with
//! neither the append-only file (AOF) nor RDB snapshots loses all of it
//! when it restarts: balances refill, spend resets to zero, keys vanish.
//! That is a fine cache and a bad ledger, and it is what many Redis
//! installations and container images run by default. A gateway asks at
//! start-up and warns the operator:
//!
//! ```no_run
//! use tollgate::store::redis::{Persistence, RedisConfig, RedisConnection};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let redis = RedisConnection::connect(RedisConfig::from_url("redis://127.0.0.1:6379/0")?).await?;
//! let persistence = Persistence::check(&redis).await?;
//! if let Some(warning) = persistence.warning() {
//!     tracing::warn!("{warning}");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Why a check, and not a refusal to start
//!
//! Whether losing the state on a Redis restart is acceptable is the
//! operator's call (a demo, a Redis with replicas and failover, a managed
//! service that persists below what `CONFIG` shows), so the gateway warns
//! and starts. For the ledger, prefer AOF (`appendonly yes`, with the
//! default `appendfsync everysec`: at most a second of settlements lost)
//! over RDB snapshots alone, which lose everything since the last snapshot.
//!
//! # Why "unknown" is an answer, not an error
//!
//! Managed Redis services (ElastiCache, Memorystore, Azure Cache, many
//! others) rename or forbid `CONFIG`, and ACLs may deny it: the check then
//! says it does not know ([`Persistence::is_on`] is `None`), with its own
//! warning, instead of stopping a gateway that is otherwise fine. Only a
//! Redis that cannot be reached at all is an error.
//!
//! On a Redis Cluster each node has its own configuration and the check
//! asks the one node the connection sends it to.

use std::collections::HashMap;

use redis::aio::ConnectionLike;
use redis::{ErrorKind, RedisResult};

use super::RedisConnection;
use crate::store::StoreError;

/// What Redis says about its persistence: each kind on, off, or not known
/// (`None`: Redis refused to say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Persistence {
    /// The append-only file (`appendonly yes`): every write logged.
    pub aof: Option<bool>,
    /// RDB snapshots (a non-empty `save`): the data written to disk now
    /// and then.
    pub rdb: Option<bool>,
}

impl Persistence {
    /// Asks Redis (`CONFIG GET appendonly`, `CONFIG GET save`) whether it
    /// persists its data. A Redis that refuses `CONFIG` answers with the
    /// kinds it refused as unknown; a Redis that cannot be reached is a
    /// [`StoreError`].
    pub async fn check(redis: &RedisConnection) -> Result<Persistence, StoreError> {
        let (appendonly, save) = redis
            .call_any(|mut conn| async move {
                let appendonly = config_get(&mut conn, "appendonly").await?;
                let save = config_get(&mut conn, "save").await?;
                Ok((appendonly, save))
            })
            .await?;
        Ok(Persistence {
            aof: appendonly.map(|v| v.trim().eq_ignore_ascii_case("yes")),
            rdb: save.map(|v| !v.trim().is_empty()),
        })
    }

    /// Whether Redis keeps its data across a restart: `Some(true)` when
    /// either kind is on, `Some(false)` when both are off, `None` when that
    /// is not known.
    pub fn is_on(&self) -> Option<bool> {
        match (self.aof, self.rdb) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        }
    }

    /// What to tell the operator, when persistence is off or unknown.
    pub fn warning(&self) -> Option<&'static str> {
        match self.is_on() {
            Some(true) => None,
            Some(false) => Some(
                "Redis has neither AOF nor RDB persistence on: a Redis restart loses every \
                 budget's spend, every prepaid balance and every key made at run time \
                 (money dies with Redis). Turn on `appendonly yes`.",
            ),
            None => Some(
                "Redis would not say whether it persists its data (CONFIG refused): make sure \
                 it keeps its data across restarts, or budgets, balances and keys made at run \
                 time die with it.",
            ),
        }
    }
}

/// The value of the configuration parameter `name`; `None` when Redis
/// refuses `CONFIG` or does not know the parameter.
async fn config_get<C: ConnectionLike + Send>(
    conn: &mut C,
    name: &str,
) -> RedisResult<Option<String>> {
    let reply = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async::<HashMap<String, String>>(conn)
        .await;
    match reply {
        Ok(mut values) => Ok(values.remove(name)),
        // An error reply: the command is renamed away, denied by an ACL,
        // or refused by a managed service. Redis answered; it just will
        // not say.
        Err(error) if matches!(error.kind(), ErrorKind::Server(_) | ErrorKind::Extension) => {
            tracing::debug!(%error, parameter = name, "redis refused CONFIG GET");
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_kind_is_enough_and_unknown_is_not_off() {
        let p = |aof, rdb| Persistence { aof, rdb };
        assert_eq!(p(Some(true), Some(false)).is_on(), Some(true));
        assert_eq!(p(None, Some(true)).is_on(), Some(true));
        assert_eq!(p(Some(false), Some(false)).is_on(), Some(false));
        assert_eq!(p(Some(false), None).is_on(), None);
        assert_eq!(p(None, None).is_on(), None);
        assert!(p(Some(true), None).warning().is_none());
        assert!(
            p(Some(false), Some(false))
                .warning()
                .is_some_and(|w| w.contains("money dies with Redis"))
        );
        assert!(
            p(None, None)
                .warning()
                .is_some_and(|w| w.contains("CONFIG refused"))
        );
    }
}
