//! Redis-backed stores: exact rate limits, budgets and key revocation
//! shared by every gateway instance (feature `redis`).
//!
//! One gateway process is rarely enough, and per-process state multiplies
//! by the number of replicas: three instances each allowing 100 requests a
//! minute allow 300, a $50 team budget becomes $150, and a key revoked on
//! one pod keeps working on the others. With these stores, N instances share
//! exactly one set of limits, budgets and key states in the Redis that
//! operators already run.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tollgate::auth::AuthLayer;
//! use tollgate::budget::{BudgetLayer, ModelPrice, Pricing};
//! use tollgate::rate_limit::{Limit, RateLimitLayer};
//! use tollgate::store::memory::MemoryRateLimitStore;
//! use tollgate::store::redis::{
//!     RedisConfig, RedisConnection, RedisKeyStore, RedisLedger, RedisRateLimitStore,
//! };
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // One connection per instance, shared by the three stores.
//! let redis = RedisConnection::connect(
//!     RedisConfig::from_url("redis://127.0.0.1:6379/0")?.key_prefix("gateway-eu:"),
//! )
//! .await?;
//! let keys = RedisKeyStore::new(redis.clone());
//! let limits = RedisRateLimitStore::builder(redis.clone())
//!     // Four instances: during a Redis outage, each admits a quarter.
//!     .fail_open_fallback(MemoryRateLimitStore::new(), 0.25)
//!     .build();
//! let ledger = RedisLedger::new(redis);
//! let pricing = Pricing::new().with("gpt-4o-mini", ModelPrice::per_million("0.15", "0.60")?);
//!
//! let mut gateway = ServiceBuilder::new()
//!     .layer(AuthLayer::new(keys))
//!     .layer(RateLimitLayer::new().limit(Limit::requests_per_minute(600)).store(limits))
//!     .layer(BudgetLayer::with_ledger(pricing, ledger))
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
//!     }));
//!
//! let request = Request::post("/v1/chat/completions")
//!     .header("authorization", "Bearer sk-alice")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"gpt-4o-mini","messages":[]}"#)))?;
//! let response = gateway.ready().await?.call(request).await?;
//! println!("{}", response.status());
//! # Ok(())
//! # }
//! ```
//!
//! | store | trait | what it shares |
//! |---|---|---|
//! | [`RedisRateLimitStore`] | [`RateLimitStore`](crate::rate_limit::RateLimitStore) | each scope's limit states (sliding, GCRA, fixed), concurrency slots |
//! | [`RedisLedger`] | [`Ledger`](crate::budget::Ledger) | budget spend, balances, holds of requests in flight |
//! | [`RedisKeyStore`] | [`KeyStore`](crate::auth::KeyStore), [`KeyAdmin`](crate::auth::KeyAdmin) | key records, their rotations and revocations |
//! | [`RedisAdmissionStore`] | [`AdmissionStore`](crate::admission::AdmissionStore) | nothing of its own: a rate-limit store's and a ledger's admission in one script (for [`AdmissionLayer`](crate::admission::AdmissionLayer)) |
//!
//! # Atomic, one round trip, on one clock
//!
//! Every operation that decides something is one `EVALSHA` of a Lua script
//! (the scripts are in `src/store/redis/scripts/`), which Redis runs
//! atomically: a rate-limit admission checks and charges all of a request's
//! limits, a budget reservation holds the amount against all of its budgets,
//! or neither does anything. Concurrent requests on any number of instances
//! therefore see each other exactly: 300 concurrent requests against a
//! limit of 100 admit 100, a `Strict` budget is never overshot. The scripts
//! read time from Redis (`TIME`), so instances whose clocks drift still agree
//! on windows and on when a month ends. State expires on its own
//! (`PEXPIRE`) once it carries nothing, so Redis memory stays bounded by the
//! active keys and budgets.
//!
//! A request with both rate limits and budgets admitted by
//! [`AdmissionLayer`](crate::admission::AdmissionLayer) on a
//! [`RedisAdmissionStore`] makes one script call for both (`admit.lua`:
//! the acquire and the reservation, each checked before either writes),
//! not two in a row.
//!
//! # Settlements: batched, exactly once
//!
//! What a request settles after its response (its rate limits' token
//! corrections and slots, its budgets' charge or release) nobody waits on,
//! so it does not cost a round trip of its own: one writer per
//! [`RedisConnection`] sends every settlement that queued while its
//! previous batch was in flight as one script call. With one request in
//! flight a settlement goes at once; under load, N settlements of every
//! store on the connection cost one round trip and one script run. A
//! settlement is queued when the layer makes it (a dropped future cancels
//! nothing; on a Redis Cluster, whose scripts cannot span slots, each
//! settlement is still a call of its own, made when its future runs), its
//! future still answers with its own result, and
//! [`RedisConnection::flush`] waits for what is queued at a graceful
//! shutdown. A batch whose answer is lost (the connection broke, the call
//! timed out) is sent again, unchanged, and Redis applies it once: the
//! script records each batch it applied, with its replies, in the same
//! atomic run. At most 16,384 settlements wait; past that one fails at
//! once, as one whose retries ran out does.
//!
//! # Connection: redis 1.x, one multiplexed connection
//!
//! The stores use the [`redis`](https://docs.rs/redis) crate's **1.x**
//! release line: its first stable major version, which follows semver (the
//! 0.x line broke its API several times a year) and supports the tokio
//! runtime, scripts (`EVALSHA` with automatic `SCRIPT LOAD`) and pub/sub
//! that these stores need.
//!
//! [`RedisConnection`] holds one [`MultiplexedConnection`](redis::aio::MultiplexedConnection)
//! per instance (or, for a cluster, redis-rs's cluster connection, which
//! keeps one per node and follows the cluster's redirections): every concurrent call is pipelined on one TCP connection,
//! which for short scripts outperforms a pool (no checkout, no per-connection
//! head-of-line waits) and needs no extra dependency. Around it, tollgate
//! adds what a gateway needs rather than the crate's `ConnectionManager`:
//! every call is bounded by [`call_timeout`](RedisConfig::call_timeout);
//! a broken connection is replaced in the background with capped backoff;
//! and while it is down, calls **fail at once** instead of each waiting on
//! the reconnection, so an outage costs the failure policies no latency.
//! [`RedisKeyStore`] adds one pub/sub connection for invalidations.
//!
//! # When Redis fails
//!
//! Redis unreachable, slow, or restarting: every call a request waits on
//! returns within the call timeout (250 ms by default; at once while the
//! connection is known to be down) with a
//! [`StoreError`](crate::store::StoreError), nothing panics, and each layer
//! applies its policy:
//!
//! | layer | default | alternative |
//! |---|---|---|
//! | `RateLimitLayer` | **fail open**: admit ([`FailurePolicy::FailOpen`]) | fail closed; or, in the store, [`fail_open_fallback`](RedisRateLimitStoreBuilder::fail_open_fallback): admit under a local limiter at this instance's share |
//! | `BudgetLayer` | **fail closed**: 503 `store_unavailable`, `x-should-retry: true` | fail open: serve, charge later |
//! | `AuthLayer` | **fail closed** ([`FailurePolicy::FailClosed`]): 503 `store_unavailable` | [`FailurePolicy::FailOpen`]: keys already cached keep working |
//!
//! Why these defaults: a rate limit protects capacity, and letting traffic
//! through for the seconds Redis is away costs little (less still with the
//! fallback, which keeps the limits at per-instance shares). A budget and a
//! key protect money and access: spending money nobody can account for, or
//! admitting a key nobody can check, is worse than asking the client to
//! retry.
//!
//! Recovery is automatic: when Redis answers again (same address), the
//! connection is re-established within about a second
//! ([`reconnect_max_delay`](RedisConfig::reconnect_max_delay)) with every
//! script loaded, the key store resubscribes and starts from an empty cache,
//! and the layers resume on shared state. Settlements of the requests in
//! flight during the outage that were not answered are sent again then,
//! and applied once
//! ([`settlement_retry`](RedisConfig::settlement_retry), 30 s). A Redis
//! restarted without persistence starts with full limits and empty budgets:
//! use Redis persistence or replication if budget spend must survive a Redis
//! crash.
//!
//! # Persistence: money dies with a Redis that keeps nothing
//!
//! Budgets' spend, prepaid balances and keys made through an admin API live
//! in Redis only. Run it with the append-only file on (`appendonly yes`;
//! the default `appendfsync everysec` loses at most a second of writes) and
//! have the gateway call [`Persistence::check`] at start-up: it warns when
//! Redis has neither AOF nor RDB snapshots on, and says when a managed
//! Redis will not tell.
//!
//! # TLS: `rediss://`
//!
//! With the `redis-tls` feature, a `rediss://` URL connects over TLS
//! (rustls, aws-lc-rs), verifying Redis's certificate against the system's
//! CA certificates, or against those given to
//! [`RedisConfig::tls_ca_pem`](RedisConfig) (a private CA, a self-signed
//! Redis). Without the feature, such a URL is refused by
//! [`RedisConfig::from_url`] with [`RedisConfigError::TlsUnsupported`].
//!
//! # Namespacing and deployment
//!
//! Every key and channel starts with [`key_prefix`](RedisConfig::key_prefix)
//! (default `tollgate:`), so several gateways or environments can share a
//! Redis. Run it with `maxmemory-policy noeviction`: an evicting policy may
//! drop budget books or key records to make room (the stores' own keys
//! expire by themselves, so their memory is bounded by what is in use).
//!
//! The stores target a single Redis primary (optionally with replicas and
//! Sentinel-driven failover behind a stable address), or a Redis Cluster
//! ([`RedisConfig::cluster`]), where every script must find all its keys in
//! one hash slot: the rate-limit store places them per caller (its docs say
//! how), the key store keeps all of its keys under one hash tag (see
//! [`RedisKeyStore`], "Redis Cluster"), and the ledger keeps its books in
//! one slot, or one per tenant with a [`LedgerPlacement`] (see
//! [`RedisLedger`], "Redis Cluster"). Tested with Redis 7.0; the scripts
//! use nothing newer than Redis 5.0 (`ZPOPMIN`) and turn on effect
//! replication themselves where it is not the default (before 7.0), as
//! they read `TIME` before writing.

mod admission;
mod config;
mod connection;
mod keys;
mod ledger;
mod persistence;
mod rate_limit;
mod scripts;
mod settlements;

pub use self::admission::RedisAdmissionStore;
pub use self::config::{RedisConfig, RedisConfigError};
pub use self::connection::RedisConnection;
pub use self::keys::{KeyWriteError, RedisKeyStore, RedisKeyStoreBuilder};
pub use self::ledger::{LedgerPlacement, RedisLedger};
pub use self::persistence::Persistence;
pub use self::rate_limit::{RedisRateLimitStore, RedisRateLimitStoreBuilder};

pub use crate::store::FailurePolicy;
