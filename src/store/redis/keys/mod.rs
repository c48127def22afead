//! [`RedisKeyStore`]: API keys in Redis, cached locally, revoked everywhere
//! within a bounded time.

mod cache;

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_core::Stream;
use tokio::sync::watch;

use self::cache::Cache;
use super::scripts::{KEY_FLAG, KEY_PUT, KEY_REMOVE};
use super::{FailurePolicy, RedisConnection};
use crate::auth::{KeyHash, KeyRecord, KeyStore};
use crate::store::codec::{decode, encode};
use crate::store::memory::DuplicateSecret;
use crate::store::{StoreError, StoreFuture};

/// Key records in Redis, by the SHA-256 of their secret, with a local cache
/// in every gateway instance and revocation that reaches every instance's
/// cache within a bounded time.
///
/// ```no_run
/// use tollgate::auth::{AuthLayer, KeyHash, KeyRecord};
/// use tollgate::store::redis::{RedisConfig, RedisConnection, RedisKeyStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let redis = RedisConnection::connect(RedisConfig::from_url("redis://127.0.0.1:6379/0")?).await?;
/// let keys = RedisKeyStore::new(redis);
///
/// // An admin endpoint on any instance:
/// keys.insert(KeyRecord::new("alice", KeyHash::of("sk-alice"))).await?;
/// // ... and later, on any instance; every instance refuses the key within ~1 s:
/// keys.revoke("alice").await?;
///
/// let auth = AuthLayer::new(keys.clone());
/// # let _ = auth;
/// # Ok(())
/// # }
/// ```
///
/// # Where records live
///
/// A record is a Redis hash `<prefix>key:<sha256 hex>` (the record as JSON,
/// and its `revoked` and `disabled` flags as fields of their own, so a
/// revocation is one `HSET`), with an index `<prefix>keyid:<id>` → hash for
/// the admin operations. The secret itself is never stored or sent.
/// [`insert`](Self::insert), [`revoke`](Self::revoke),
/// [`set_disabled`](Self::set_disabled) and [`remove`](Self::remove) are each
/// one Lua script that changes the record and publishes its hash on
/// `<prefix>keys:invalidate` in the same atomic step.
///
/// # The cache, and how revocation reaches every instance
///
/// A lookup is answered from the instance's cache when it can be (no
/// allocation, no await), otherwise by one `HMGET`, whose answer is cached
/// — unknown hashes too, for [`negative_ttl`](RedisKeyStoreBuilder::negative_ttl),
/// so a flood of invalid keys does not become a flood of Redis reads.
///
/// Each instance subscribes to the invalidation channel. A change published
/// by any instance drops the record from every subscriber's cache, and the
/// next lookup reads the new record from Redis: in practice revocation takes
/// effect everywhere within milliseconds (the tests check < 1 s).
///
/// The bound holds when things fail, because the cache is only trusted while
/// the subscription is known to be live:
///
/// - while the subscription is down (Redis restarting, the network cut) the
///   cache is bypassed, and when it comes back up the cache is cleared, as
///   changes may have been missed in between;
/// - the subscription is checked with a `PING` every second (answer within
///   the call timeout): a connection that silently stopped delivering is
///   found within about 1.25 s;
/// - a lookup that raced with an invalidation does not cache what it read;
/// - as a last resort every entry expires after
///   [`cache_ttl`](RedisKeyStoreBuilder::cache_ttl) (default 60 s), which
///   also bounds how long a change made to Redis *without* publishing
///   (by hand, with `redis-cli`) takes to be seen.
///
/// # When Redis fails
///
/// [`FailurePolicy::FailClosed`] (the default): a lookup that needs Redis
/// and cannot reach it fails with a [`StoreError`], which
/// [`AuthLayer`](crate::auth::AuthLayer) answers with 503
/// `store_unavailable` and `x-should-retry: true`. Nobody is let in unchecked.
///
/// [`FailurePolicy::FailOpen`]: keys this instance has already seen keep
/// working from the cache, even past their TTL, while Redis is unreachable;
/// unknown keys still get 503. The price: a key revoked just before (or
/// during) the outage may keep working on instances that cached it, until
/// Redis is back.
#[derive(Clone)]
pub struct RedisKeyStore {
    inner: Arc<Inner>,
}

struct Inner {
    redis: RedisConnection,
    channel: String,
    policy: FailurePolicy,
    cache: Cache,
    /// Whether the subscription is live, and so the cache trustworthy.
    listening: AtomicBool,
    /// Bumped by every invalidation: a lookup caches what it read only if
    /// nothing was invalidated while it read.
    epoch: AtomicU64,
    listener_started: AtomicBool,
    /// Dropped with the store, which ends the listener.
    shutdown: watch::Sender<()>,
}

/// Builds a [`RedisKeyStore`].
pub struct RedisKeyStoreBuilder {
    redis: RedisConnection,
    policy: FailurePolicy,
    cache_ttl: Duration,
    negative_ttl: Duration,
    max_cached: usize,
}

/// An admin write that could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyWriteError {
    /// Redis could not be reached or answered in time.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another key already has this secret.
    #[error(transparent)]
    DuplicateSecret(#[from] DuplicateSecret),
}

impl RedisKeyStore {
    /// Default [`cache_ttl`](RedisKeyStoreBuilder::cache_ttl): 60 s.
    pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
    /// Default [`negative_ttl`](RedisKeyStoreBuilder::negative_ttl): 5 s.
    pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);
    /// Default [`max_cached`](RedisKeyStoreBuilder::max_cached): 100,000.
    pub const DEFAULT_MAX_CACHED: usize = 100_000;

    /// A store on `redis` with the defaults: fail closed, 60 s cache TTL,
    /// 5 s for unknown keys, at most 100,000 cached entries.
    ///
    /// The invalidation listener starts on the current tokio runtime (or on
    /// the first lookup, if there is none now).
    pub fn new(redis: RedisConnection) -> Self {
        RedisKeyStore::builder(redis).build()
    }

    /// A builder to change the defaults.
    pub fn builder(redis: RedisConnection) -> RedisKeyStoreBuilder {
        RedisKeyStoreBuilder {
            redis,
            policy: FailurePolicy::FailClosed,
            cache_ttl: Self::DEFAULT_CACHE_TTL,
            negative_ttl: Self::DEFAULT_NEGATIVE_TTL,
            max_cached: Self::DEFAULT_MAX_CACHED,
        }
    }

    /// Stores `record` (replacing the record with the same id: a new secret
    /// makes the old one stop working) and tells every instance.
    pub async fn insert(&self, record: KeyRecord) -> Result<(), KeyWriteError> {
        let inner = &self.inner;
        let hex = record.secret_hash.to_hex();
        let keys = vec![
            inner.redis.key(&format!("key:{hex}")),
            inner.redis.key(&format!("keyid:{}", record.id)),
        ];
        let flag = |b: bool| if b { "1" } else { "0" }.to_owned();
        let args = vec![
            hex,
            record.id.clone(),
            encode(&record),
            flag(record.revoked),
            flag(record.disabled),
            inner.channel.clone(),
            inner.redis.key("key:"),
        ];
        let (ok, other): (i64, String) = inner.redis.eval(&KEY_PUT, keys, args).await?;
        if ok == 0 {
            return Err(DuplicateSecret {
                id: record.id,
                existing: other,
            }
            .into());
        }
        inner.invalidate(Some(&record.secret_hash));
        if let Ok(previous) = KeyHash::from_hex(&other) {
            inner.invalidate(Some(&previous));
        }
        Ok(())
    }

    /// Marks key `id` revoked (401 `revoked_api_key` on every instance).
    /// Returns whether the key exists.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        self.set_flag(id, "revoked", true).await
    }

    /// Disables (or re-enables) key `id`'s account (403 `account_disabled`).
    /// Returns whether the key exists.
    pub async fn set_disabled(&self, id: &str, disabled: bool) -> Result<bool, StoreError> {
        self.set_flag(id, "disabled", disabled).await
    }

    async fn set_flag(&self, id: &str, field: &str, value: bool) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let keys = vec![inner.redis.key(&format!("keyid:{id}"))];
        let args = vec![
            field.to_owned(),
            if value { "1" } else { "0" }.to_owned(),
            inner.channel.clone(),
            inner.redis.key("key:"),
        ];
        let hex: String = inner.redis.eval(&KEY_FLAG, keys, args).await?;
        match KeyHash::from_hex(&hex) {
            Ok(hash) => {
                inner.invalidate(Some(&hash));
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    /// Removes key `id` (401 `invalid_api_key` on every instance). Returns
    /// whether the key existed.
    pub async fn remove(&self, id: &str) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let keys = vec![inner.redis.key(&format!("keyid:{id}"))];
        let args = vec![inner.channel.clone(), inner.redis.key("key:")];
        let hex: String = inner.redis.eval(&KEY_REMOVE, keys, args).await?;
        match KeyHash::from_hex(&hex) {
            Ok(hash) => {
                inner.invalidate(Some(&hash));
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    /// The record of key `id`, read from Redis.
    pub async fn get(&self, id: &str) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let key = self.inner.redis.key(&format!("keyid:{id}"));
        let hex: Option<String> =
            self.inner
                .redis
                .call(move |mut conn| async move {
                    redis::cmd("GET").arg(key).query_async(&mut conn).await
                })
                .await?;
        match hex.as_deref().map(KeyHash::from_hex) {
            Some(Ok(hash)) => fetch(&self.inner.redis, hash).await,
            _ => Ok(None),
        }
    }

    /// Whether the invalidation subscription is live (and the cache used).
    pub fn is_listening(&self) -> bool {
        self.inner.listening.load(Ordering::Acquire)
    }

    /// Entries in this instance's cache.
    pub fn cached(&self) -> usize {
        self.inner.cache.len()
    }

    /// Empties this instance's cache.
    pub fn clear_cache(&self) {
        self.inner.invalidate(None);
    }

    /// The connection.
    pub fn connection(&self) -> &RedisConnection {
        &self.inner.redis
    }
}

impl RedisKeyStoreBuilder {
    /// What lookups do when Redis cannot answer (default
    /// [`FailurePolicy::FailClosed`]); see the store's docs.
    pub fn on_unavailable(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How long a cached record is used without asking Redis again, as a
    /// backstop to invalidations (default 60 s).
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// How long an unknown hash is remembered as unknown (default 5 s).
    /// Keys inserted through any `RedisKeyStore` are announced, so they work
    /// at once regardless.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// The most entries cached (default 100,000; 0 disables the cache).
    pub fn max_cached(mut self, max: usize) -> Self {
        self.max_cached = max;
        self
    }

    /// Builds the store and starts its invalidation listener (on the current
    /// tokio runtime, or on the first lookup if there is none now).
    pub fn build(self) -> RedisKeyStore {
        let (shutdown, _) = watch::channel(());
        let channel = self.redis.key("keys:invalidate");
        let store = RedisKeyStore {
            inner: Arc::new(Inner {
                redis: self.redis,
                channel,
                policy: self.policy,
                cache: Cache::new(self.max_cached, self.cache_ttl, self.negative_ttl),
                listening: AtomicBool::new(false),
                epoch: AtomicU64::new(0),
                listener_started: AtomicBool::new(false),
                shutdown,
            }),
        };
        store.inner.start_listener();
        store
    }
}

impl fmt::Debug for RedisKeyStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisKeyStoreBuilder")
            .field("policy", &self.policy)
            .field("cache_ttl", &self.cache_ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("max_cached", &self.max_cached)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RedisKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisKeyStore")
            .field("redis", &self.inner.redis)
            .field("policy", &self.inner.policy)
            .field("listening", &self.is_listening())
            .field("cached", &self.cached())
            .finish()
    }
}

impl KeyStore for RedisKeyStore {
    fn lookup(&self, hash: &KeyHash) -> StoreFuture<Option<Arc<KeyRecord>>> {
        let inner = &self.inner;
        if !inner.listener_started.load(Ordering::Relaxed) {
            inner.start_listener();
        }
        let listening = inner.listening.load(Ordering::Acquire);
        if listening {
            if let Some(record) = inner.cache.get(hash, false) {
                return StoreFuture::ready(Ok(record));
            }
        }
        let epoch = inner.epoch.load(Ordering::Acquire);
        let inner = self.inner.clone();
        let hash = *hash;
        StoreFuture::pending(async move {
            match fetch(&inner.redis, hash).await {
                Ok(record) => {
                    // Cache only what no invalidation raced with, and only
                    // while invalidations are being received.
                    if inner.listening.load(Ordering::Acquire)
                        && inner.epoch.load(Ordering::Acquire) == epoch
                    {
                        inner.cache.insert(hash, record.clone());
                    }
                    Ok(record)
                }
                Err(error) => match inner.policy {
                    FailurePolicy::FailOpen => match inner.cache.get(&hash, true) {
                        Some(record) => {
                            tracing::debug!(%error, "redis key store unavailable; serving the cached record");
                            Ok(record)
                        }
                        None => Err(error),
                    },
                    FailurePolicy::FailClosed => Err(error),
                },
            }
        })
    }
}

/// One `HMGET` of the record whose secret hashes to `hash`.
async fn fetch(
    redis: &RedisConnection,
    hash: KeyHash,
) -> Result<Option<Arc<KeyRecord>>, StoreError> {
    let key = redis.key(&format!("key:{}", hash.to_hex()));
    let fields: Vec<Option<String>> = redis
        .call(move |mut conn| async move {
            redis::cmd("HMGET")
                .arg(key)
                .arg(&["rec", "revoked", "disabled"])
                .query_async(&mut conn)
                .await
        })
        .await?;
    let [rec, revoked, disabled] = fields.as_slice() else {
        return Err(StoreError::Corrupt("HMGET returned the wrong arity".into()));
    };
    let Some(rec) = rec else {
        return Ok(None);
    };
    let mut record = decode(rec, Some(hash))?;
    record.revoked = revoked.as_deref() == Some("1");
    record.disabled = disabled.as_deref() == Some("1");
    Ok(Some(Arc::new(record)))
}

impl Inner {
    /// Drops `hash` from the cache (or everything), and makes lookups in
    /// flight not cache what they read.
    fn invalidate(&self, hash: Option<&KeyHash>) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        match hash {
            Some(hash) => self.cache.remove(hash),
            None => self.cache.clear(),
        }
    }

    fn start_listener(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.listener_started.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(listen(Arc::downgrade(self), self.shutdown.subscribe()));
    }

    fn set_listening(&self, up: bool) {
        if up {
            // Changes may have been missed while down: start from an empty
            // cache.
            self.invalidate(None);
        } else {
            // Lookups in flight must not cache; the entries stay, unused
            // unless the policy is to fail open.
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.listening.store(up, Ordering::Release);
    }
}

/// How often the subscription is checked with a `PING`.
const PING_INTERVAL: Duration = Duration::from_secs(1);

/// Subscribes to the invalidation channel and applies what it hears, until
/// the store is dropped; resubscribes (with backoff) when the subscription
/// breaks.
async fn listen(store: Weak<Inner>, mut shutdown: watch::Receiver<()>) {
    let mut delay = Duration::ZERO;
    loop {
        if !delay.is_zero() {
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
        let Some(inner) = store.upgrade() else {
            return;
        };
        let config = inner.redis.config().clone();
        let client = inner.redis.client().clone();
        let channel = inner.channel.clone();
        drop(inner);
        delay = (delay * 2)
            .max(config.reconnect_min_delay)
            .min(config.reconnect_max_delay);

        let subscribe = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub.split())
        };
        let subscribed = tokio::select! {
            _ = shutdown.changed() => return,
            r = tokio::time::timeout(config.connect_timeout, subscribe) => r,
        };
        let (mut sink, mut stream) = match subscribed {
            Ok(Ok(split)) => split,
            Ok(Err(error)) => {
                tracing::debug!(%error, "redis key invalidation subscription failed");
                continue;
            }
            Err(_) => continue,
        };
        match store.upgrade() {
            Some(inner) => inner.set_listening(true),
            None => return,
        }
        tracing::debug!("redis key invalidation subscription live");

        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                message = next(&mut stream) => {
                    let Some(message) = message else { break };
                    let Some(inner) = store.upgrade() else { return };
                    match KeyHash::from_hex(&String::from_utf8_lossy(message.get_payload_bytes())) {
                        Ok(hash) => inner.invalidate(Some(&hash)),
                        // Anything else (`*`): drop everything.
                        Err(_) => inner.invalidate(None),
                    }
                }
                _ = ping.tick() => {
                    let alive = tokio::time::timeout(
                        config.call_timeout,
                        sink.ping::<redis::Value>(),
                    ).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        match store.upgrade() {
            Some(inner) => inner.set_listening(false),
            None => return,
        }
        tracing::warn!(
            "redis key invalidation subscription lost; bypassing the key cache until it is back"
        );
    }
}

async fn next(stream: &mut redis::aio::PubSubStream) -> Option<redis::Msg> {
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}
