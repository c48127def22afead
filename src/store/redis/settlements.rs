//! Settlements in batches: one writer per connection sends every
//! settlement (a rate limit's correction, a budget's charge or release)
//! that queued while its previous batch was in flight as one script call
//! (why: "Settlements: batched, exactly once" in the [module docs](super)).
//!
//! # Exactly once
//!
//! A batch is named by a marker key that the script writes, with the
//! batch's replies, in the same atomic run that applies it. A batch whose
//! answer did not arrive is sent again, unchanged, with the reconnection's
//! backoff for up to [`settlement_retry`](super::RedisConfig::settlement_retry):
//! if it was applied, Redis answers the stored replies and applies nothing
//! twice. The next batch deletes the marker (the writer sends it only once
//! this one is answered); a marker nobody deletes expires after the retry
//! window.
//!
//! # Bounded
//!
//! At most [`QUEUE`] settlements wait (past that, one fails at once, as one
//! whose retries ran out does); a batch holds at most [`BATCH`], so one
//! script run stays short. On a Redis Cluster each settlement is sent alone
//! (its keys seldom share a slot with another's), with the same marker and
//! retries; `flush` has nothing to wait for there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::RedisConnection;
use super::connection::short;
use super::scripts::SETTLE_BATCH;
use crate::store::{StoreError, lock};

/// Settlements waiting for the writer, at most.
pub(crate) const QUEUE: usize = 16_384;

/// Settlements in one script call, at most.
pub(crate) const BATCH: usize = 128;

/// What a settlement does, as the batch script names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SettleKind {
    /// `rate_limit_settle.lua`: token corrections, slots freed.
    RateLimit,
    /// `ledger_settle.lua`: a reservation's cost charged, its hold released.
    Charge,
    /// `ledger_release.lua`: a reservation's hold released.
    Release,
}

impl SettleKind {
    fn code(self) -> &'static str {
        match self {
            SettleKind::RateLimit => "r",
            SettleKind::Charge => "s",
            SettleKind::Release => "l",
        }
    }
}

/// One settlement: its script's keys and arguments.
#[derive(Debug)]
pub(crate) struct SettleCall {
    pub(crate) kind: SettleKind,
    pub(crate) keys: Vec<String>,
    pub(crate) args: Vec<String>,
}

type Answer = oneshot::Sender<Result<Value, StoreError>>;

enum Job {
    Settle {
        call: SettleCall,
        answer: Answer,
        /// Keeps the connection (and so the writer) alive while queued.
        redis: RedisConnection,
    },
    /// Answered once everything queued before it has been answered.
    Flush(oneshot::Sender<()>),
}

/// A connection's settlement queue and the names of its batches.
pub(crate) struct SettleQueue {
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    /// Unique per process, so markers of several instances never meet.
    writer: u64,
    next_batch: AtomicU64,
}

impl SettleQueue {
    pub(crate) fn new() -> Self {
        SettleQueue {
            sender: Mutex::new(None),
            writer: crate::rng::os_seed(),
            next_batch: AtomicU64::new(0),
        }
    }

    /// The name of a new batch's marker, in the hash slot of `first_key`
    /// (a key of its first settlement) so that a cluster accepts it.
    fn marker(&self, first_key: &str) -> String {
        let n = self.next_batch.fetch_add(1, Ordering::Relaxed);
        format!("{first_key}#settled:{:016x}:{n:x}", self.writer)
    }

    /// The writer's queue, starting the writer on the current runtime if
    /// none runs (first use, or its runtime has gone).
    fn sender(&self) -> Result<mpsc::Sender<Job>, StoreError> {
        let mut sender = lock(&self.sender);
        if let Some(tx) = sender.as_ref().filter(|tx| !tx.is_closed()) {
            return Ok(tx.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreError::Unavailable("no tokio runtime to settle on Redis with".into())
        })?;
        let (tx, rx) = mpsc::channel(QUEUE);
        runtime.spawn(write(rx));
        *sender = Some(tx.clone());
        Ok(tx)
    }

    fn started(&self) -> Option<mpsc::Sender<Job>> {
        lock(&self.sender)
            .as_ref()
            .filter(|tx| !tx.is_closed())
            .cloned()
    }
}

impl RedisConnection {
    /// Queues a settlement for this connection's writer and answers with
    /// its script's reply once its batch is applied. Queued at once:
    /// dropping the future does not cancel it. On a cluster, a call of its
    /// own, made when the future runs.
    pub(crate) fn settle(
        &self,
        call: SettleCall,
    ) -> impl Future<Output = Result<Value, StoreError>> + Send + use<> {
        enum Submitted {
            Queued(oneshot::Receiver<Result<Value, StoreError>>),
            Alone(RedisConnection, SettleCall),
            Failed(StoreError),
        }
        let stopped = || StoreError::Unavailable("the settlement writer stopped".into());
        let submitted = if self.is_cluster() {
            Submitted::Alone(self.clone(), call)
        } else {
            let (answer, answered) = oneshot::channel();
            let job = Job::Settle {
                call,
                answer,
                redis: self.clone(),
            };
            match self.settlements().sender() {
                Ok(tx) => match tx.try_send(job) {
                    Ok(()) => Submitted::Queued(answered),
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        Submitted::Failed(StoreError::Unavailable(format!(
                            "{QUEUE} settlements already wait for Redis"
                        )))
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => Submitted::Failed(stopped()),
                },
                Err(error) => Submitted::Failed(error),
            }
        };
        async move {
            match submitted {
                Submitted::Queued(answered) => answered.await.unwrap_or_else(|_| Err(stopped())),
                Submitted::Alone(redis, call) => {
                    let mut replies = Batch::new(&redis, vec![call], None).apply(&redis).await?;
                    replies.pop().unwrap_or_else(|| Err(corrupt(0, 1)))
                }
                Submitted::Failed(error) => Err(error),
            }
        }
    }

    /// Waits until every settlement queued before this call (the rate
    /// limits' corrections, the budgets' charges and releases of the
    /// requests that ended) has been applied, or has failed after its
    /// retries ([`settlement_retry`](super::RedisConfig::settlement_retry)).
    /// Call it at a graceful shutdown, after the last request ended, so
    /// nothing on its way to Redis is lost with the process.
    pub async fn flush(&self) {
        let Some(tx) = self.settlements().started() else {
            return;
        };
        let (done, flushed) = oneshot::channel();
        if tx.send(Job::Flush(done)).await.is_ok() {
            // An error: the writer is gone, and with it anything to wait for.
            let _ = flushed.await;
        }
    }
}

/// The writer: takes what queued, sends it as one batch, answers, again.
async fn write(mut rx: mpsc::Receiver<Job>) {
    // The previous batch's marker, deleted by the next batch.
    let mut ack: Option<String> = None;
    while let Some(first) = rx.recv().await {
        let mut calls = Vec::new();
        let mut answers = Vec::new();
        let mut flushes = Vec::new();
        let mut redis = None;
        let mut job = Some(first);
        while let Some(next) = job.take() {
            match next {
                Job::Settle {
                    call,
                    answer,
                    redis: connection,
                } => {
                    calls.push(call);
                    answers.push(answer);
                    redis = Some(connection);
                }
                Job::Flush(done) => flushes.push(done),
            }
            if calls.len() < BATCH {
                job = rx.try_recv().ok();
            }
        }
        if let Some(redis) = redis {
            let batch = Batch::new(&redis, calls, ack.take());
            let replies = match batch.apply(&redis).await {
                Ok(replies) => replies,
                Err(error) => vec![Err(error); answers.len()],
            };
            // Answered or given up on: either way it is never sent again.
            ack = Some(batch.marker);
            for (answer, reply) in answers.into_iter().zip(replies) {
                let _ = answer.send(reply);
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// A batch's script call, the same however often it is sent.
struct Batch {
    marker: String,
    count: usize,
    call: Arc<(Vec<String>, Vec<String>)>,
}

impl Batch {
    fn new(redis: &RedisConnection, calls: Vec<SettleCall>, ack: Option<String>) -> Self {
        let first_key = calls
            .first()
            .and_then(|c| c.keys.first())
            .map_or("", String::as_str);
        let marker = redis.settlements().marker(first_key);
        let config = redis.config();
        let lifetime = config.settlement_retry + 2 * config.call_timeout + Duration::from_secs(1);
        let mut keys = Vec::with_capacity(2 + calls.iter().map(|c| c.keys.len()).sum::<usize>());
        keys.push(marker.clone());
        let mut args =
            Vec::with_capacity(3 + calls.iter().map(|c| 3 + c.args.len()).sum::<usize>());
        args.push(lifetime.as_millis().to_string());
        args.push(calls.len().to_string());
        match ack {
            Some(ack) => {
                keys.push(ack);
                args.push("1".into());
            }
            None => args.push("0".into()),
        }
        let count = calls.len();
        for call in calls {
            args.push(call.kind.code().into());
            args.push(call.keys.len().to_string());
            args.push(call.args.len().to_string());
            keys.extend(call.keys);
            args.extend(call.args);
        }
        Batch {
            marker,
            count,
            call: Arc::new((keys, args)),
        }
    }

    /// Sends the batch until it is answered, or the retry window ends: each
    /// settlement's reply or error.
    async fn apply(
        &self,
        redis: &RedisConnection,
    ) -> Result<Vec<Result<Value, StoreError>>, StoreError> {
        let config = redis.config();
        let deadline = tokio::time::Instant::now() + config.settlement_retry;
        let mut delay = config.reconnect_min_delay;
        let reply = loop {
            match redis
                .eval_shared::<Vec<Value>>(&SETTLE_BATCH, self.call.clone())
                .await
            {
                // Sent again unchanged, it is applied at most once.
                Err(StoreError::Unavailable(_) | StoreError::Timeout)
                    if tokio::time::Instant::now() + delay < deadline =>
                {
                    tokio::time::sleep(delay).await;
                    delay = config.next_reconnect_delay(delay);
                }
                answer => break answer?,
            }
        };
        if reply.len() != self.count {
            return Err(corrupt(reply.len(), self.count));
        }
        Ok(reply.into_iter().map(settled).collect())
    }
}

/// One settlement's part of the batch's reply: `{1, reply}` or `{0, error}`.
fn settled(part: Value) -> Result<Value, StoreError> {
    let pair = match part {
        Value::Array(pair) => <[Value; 2]>::try_from(pair).ok(),
        _ => None,
    };
    let Some([Value::Int(ok), reply]) = pair else {
        return Err(StoreError::Corrupt(
            "a settlement's reply is not a pair".into(),
        ));
    };
    if ok == 1 {
        return Ok(reply);
    }
    let why = match reply {
        Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Value::SimpleString(text) => text,
        _ => "unknown error".into(),
    };
    Err(StoreError::Unavailable(short(format!(
        "redis: settlement failed: {why}"
    ))))
}

fn corrupt(got: usize, expected: usize) -> StoreError {
    StoreError::Corrupt(format!(
        "the settlement script returned {got} replies for {expected} settlements"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_per_settlement() {
        let ok = Value::Array(vec![Value::Int(1), Value::Int(7)]);
        assert_eq!(settled(ok).unwrap(), Value::Int(7));
        let failed = Value::Array(vec![
            Value::Int(0),
            Value::BulkString(b"bad amount".to_vec()),
        ]);
        let error = settled(failed).unwrap_err();
        assert!(error.to_string().contains("bad amount"), "{error}");
        assert!(matches!(
            settled(Value::Int(1)),
            Err(StoreError::Corrupt(_))
        ));
        let three = Value::Array(vec![Value::Int(1), Value::Int(1), Value::Int(1)]);
        assert!(matches!(settled(three), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn batches_have_distinct_markers_in_their_first_keys_slot() {
        let queue = SettleQueue::new();
        let a = queue.marker("tollgate:rl:{1:a}:x");
        let b = queue.marker("tollgate:rl:{1:a}:x");
        assert_ne!(a, b);
        assert!(a.starts_with("tollgate:rl:{1:a}:x#settled:"), "{a}");
    }
}
