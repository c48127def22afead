//! [`RedisAdmissionStore`]: a request's rate limits and budgets admitted in
//! one script call.

use std::fmt;

use redis::Value;

use super::ledger::{RedisLedger, reserve_outcome};
use super::rate_limit::{RedisRateLimitStore, admission};
use super::scripts::ADMIT;
use crate::admission::{AdmissionStore, InTurn, JointAdmission, Reserve};
use crate::rate_limit::Acquire;
use crate::store::{StoreError, StoreFuture};

/// The rate limits of a [`RedisRateLimitStore`] and the budgets of a
/// [`RedisLedger`], admitted together: one `EVALSHA` of `admit.lua` checks
/// every limit and every budget and charges both or neither, atomically
/// (Redis runs one script at a time).
///
/// Where one call cannot do it, the two stores are asked in turn
/// ([`InTurn`]): a rate-limit store with a fail-open fallback (whose
/// answer may come from memory), a cluster (the caller's scopes and the
/// shared ones live in different slots), a request with no limits or no
/// budgets.
///
/// ```no_run
/// use tollgate::admission::AdmissionStore;
/// use tollgate::store::redis::{
///     RedisAdmissionStore, RedisConfig, RedisConnection, RedisLedger, RedisRateLimitStore,
/// };
///
/// # async fn main_() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let redis = RedisConnection::connect(RedisConfig::from_url("redis://127.0.0.1:6379")?).await?;
/// let store = RedisAdmissionStore::new(
///     RedisRateLimitStore::new(redis.clone()),
///     RedisLedger::new(redis),
/// );
/// # let _: &dyn AdmissionStore = &store;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisAdmissionStore {
    rate_limits: RedisRateLimitStore,
    ledger: RedisLedger,
    in_turn: InTurn<RedisRateLimitStore, RedisLedger>,
}

impl RedisAdmissionStore {
    /// The limits of `rate_limits` and the budgets of `ledger`, which must
    /// be on the same Redis (the script, sent on the rate-limit store's
    /// connection, touches both stores' keys): build both on one
    /// [`RedisConnection`](super::RedisConnection).
    pub fn new(rate_limits: RedisRateLimitStore, ledger: RedisLedger) -> Self {
        RedisAdmissionStore {
            in_turn: InTurn::new(rate_limits.clone(), ledger.clone()),
            rate_limits,
            ledger,
        }
    }
}

impl fmt::Debug for RedisAdmissionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisAdmissionStore")
            .field("rate_limits", &self.rate_limits)
            .field("ledger", &self.ledger)
            .finish()
    }
}

impl AdmissionStore for RedisAdmissionStore {
    fn admit(
        &self,
        acquire: &Acquire<'_>,
        reserve: Option<&Reserve<'_>>,
    ) -> StoreFuture<JointAdmission> {
        let Some(reserve) = reserve.filter(|_| !acquire.scopes.is_empty()) else {
            return self.in_turn.admit(acquire, reserve);
        };
        let Some((mut keys, acquire_args, n)) = self.rate_limits.joint_args(acquire) else {
            return self.in_turn.admit(acquire, Some(reserve));
        };
        let (reserve_keys, reserve_args, of) =
            match self
                .ledger
                .reserve_args(reserve.budgets, reserve.amount, reserve.policy)
            {
                Ok(call) => call,
                Err(error) => return StoreFuture::ready(Err(error)),
            };
        let mut args = Vec::with_capacity(3 + acquire_args.len() + reserve_args.len());
        args.push(keys.len().to_string());
        args.push(acquire_args.len().to_string());
        args.push(if reserve.when_limited { "1" } else { "0" }.into());
        args.extend(acquire_args);
        args.extend(reserve_args);
        keys.extend(reserve_keys);
        let call = self
            .rate_limits
            .connection()
            .eval::<Vec<Value>>(&ADMIT, keys, args);
        let budgets = reserve.budgets.clone();
        StoreFuture::pending(async move {
            let reply = call.await?;
            let [limits, budget] = reply.as_slice() else {
                return Err(corrupt("a malformed reply"));
            };
            let limits: Vec<i64> =
                redis::from_redis_value(limits.clone()).map_err(|_| corrupt("malformed limits"))?;
            let admission = admission(&limits, n)?;
            let reservation = match budget {
                Value::Int(0) => None,
                Value::Array(reply) => Some(Ok(reserve_outcome(reply, &of, budgets)?)),
                _ => return Err(corrupt("a malformed reservation")),
            };
            Ok(JointAdmission {
                admission,
                reservation,
            })
        })
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("admission script returned {what}"))
}
