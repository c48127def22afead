//! [`RedisKeyStore`]: API keys in Redis, managed at run time from any
//! instance, cached locally, changed everywhere within a second.

mod admin;
mod cache;
mod legacy;
mod listen;
mod tenants;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use self::cache::{CACHE_SHARDS, Cache};
use super::scripts::KEY_LIST;
use super::{FailurePolicy, RedisConnection};
use crate::auth::{KeyHash, KeyRecord, KeyStore, TenantRecord};
use crate::budget::BudgetScope;
use crate::store::codec::decode;
use crate::store::memory::DuplicateSecret;
use crate::store::{StoreError, StoreFuture};

/// Key records in Redis, found by the SHA-256 of any secret they hold, with
/// a local cache in every gateway instance and changes (a new key, a
/// rotation, a revocation, a deletion) that reach every instance's cache
/// within a second.
///
/// An operator running several gateway instances wants to mint, rotate and
/// revoke keys through an admin API on any of them, and have every instance
/// obey at once: a revoked key that keeps working on two pods out of three
/// is not revoked. This store is the [`KeyAdmin`](crate::auth::KeyAdmin)
/// (create, read, list, change, delete) and the [`KeyStore`] (the lookup of
/// every request) that they share.
///
/// ```no_run
/// use tollgate::auth::{AuthLayer, KeyAdmin, KeyHash, KeyRecord, PutMode};
/// use tollgate::store::redis::{RedisConfig, RedisConnection, RedisKeyStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let redis = RedisConnection::connect(RedisConfig::from_url("redis://127.0.0.1:6379/0")?).await?;
/// let keys = RedisKeyStore::new(redis);
/// // Once at start-up: records an earlier version wrote move to the current
/// // layout (nothing to do, one `SCAN`, when there are none).
/// keys.migrate_legacy_layout().await?;
///
/// // An admin endpoint on any instance:
/// keys.put(KeyRecord::new("alice", KeyHash::of("sk-alice")), PutMode::Create).await?;
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
/// Every key the store writes starts with the connection's
/// [`key_prefix`](super::RedisConfig::key_prefix) and the hash tag `{keys}`:
///
/// | key | type | holds |
/// |---|---|---|
/// | `<prefix>{keys}:secret:<sha256 hex>` | hash | `id`, `rec` (the record as JSON) |
/// | `<prefix>{keys}:id:<id>` | hash | `rec`, `hashes` (every secret hash it holds) |
/// | `<prefix>{keys}:ids` | sorted set | every id, for paged listing in id order |
///
/// The record is written under its current secret's hash and under each
/// retired one (at most [`RetiredSecret::MAX_KEPT`](crate::auth::RetiredSecret::MAX_KEPT)),
/// so a lookup by any secret the key answers to is one `HGET`, and the auth
/// layer decides whether a retired secret is still within its grace. The
/// secret itself is never stored or sent; the JSON is the crate's versioned
/// record format, secrets as hashes only.
///
/// [`put`](crate::auth::KeyAdmin::put) and
/// [`delete`](crate::auth::KeyAdmin::delete) are each one Lua script, so
/// each is atomic: it checks the conflicts (an id that exists under
/// [`PutMode::Create`](crate::auth::PutMode::Create), a secret of another
/// key), writes every index, drops the secrets the record no longer holds,
/// and publishes every hash it touched on `<prefix>keys:invalidate`, in one
/// step that no other instance can observe half done.
/// [`list`](crate::auth::KeyAdmin::list) is one script too (`ZRANGEBYLEX`
/// on the id index, then the records). [`revoke`](Self::revoke) and
/// [`set_disabled`](Self::set_disabled) read the record and write it back
/// only if nobody changed it in between, retrying otherwise, so a
/// concurrent rotation is never undone by a revocation (nor the reverse).
///
/// Users, teams and orgs ([`TenantAdmin`](crate::auth::TenantAdmin)) live
/// under the same hash tag, `<prefix>{keys}:tenant:<kind>:<id>` (hash:
/// `rec`) with an index per kind, `<prefix>{keys}:tenants:<kind>`; a put or
/// a delete is one script that publishes `t:<kind>:<id>` on the same
/// channel, and [`KeyStore::tenant`] is answered from a cache of their own
/// as lookups are.
///
/// # Redis Cluster
///
/// Every key of the store shares the hash tag `{keys}`, so all of them live
/// in one hash slot, on one node of a cluster. A script declares the keys
/// it knows before it runs (the record's id, the id index, each secret it
/// writes) and reaches the others (the secrets a replaced record held, the
/// records of a page) through names in the same slot, which Redis Cluster
/// allows. This is fine for keys, though it would not be for counters:
/// keys are few (thousands, not millions), written rarely (by an admin, not
/// by requests), and read through every instance's local cache, so the one
/// node holding them sees a read per cache miss and nothing per cached
/// request. Keep braces out of the key prefix: `{keys}` must stay the first
/// hash tag of the names.
///
/// # The cache, and how changes reach every instance
///
/// A lookup is answered from the instance's cache when it can be (no
/// allocation, no await), otherwise by one `HGET`, whose answer is cached
/// — unknown hashes too, for [`negative_ttl`](RedisKeyStoreBuilder::negative_ttl),
/// so a flood of invalid keys does not become a flood of Redis reads.
///
/// Each instance subscribes to the invalidation channel. A change published
/// by any instance drops every hash it touched (the new secret, the
/// retired ones, those that stopped working) from every subscriber's cache,
/// and the next lookup reads the new record from Redis: in practice a
/// change takes effect everywhere within milliseconds (the tests check
/// < 1 s).
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
/// # Upgrading from the previous layout
///
/// Versions before this one kept records in a layout that could not find
/// a record by a retired secret, and that the store no longer reads: move
/// them with [`migrate_legacy_layout`](Self::migrate_legacy_layout), once
/// at start-up (its docs say what it moves, and when to call it).
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
///
/// Admin operations always fail with the [`StoreError`] when Redis cannot
/// answer: nothing is changed on one instance only.
#[derive(Clone)]
pub struct RedisKeyStore {
    inner: Arc<Inner>,
}

struct Inner {
    redis: RedisConnection,
    names: Names,
    policy: FailurePolicy,
    cache: Cache<KeyHash, KeyRecord>,
    /// Tenants read, with the key cache's TTLs and bound.
    tenants: Cache<BudgetScope, TenantRecord>,
    /// Whether the subscription is live, and so the cache trustworthy.
    listening: AtomicBool,
    /// Bumped by every invalidation: a lookup caches what it read only if
    /// nothing was invalidated while it read.
    epoch: AtomicU64,
    listener_started: AtomicBool,
    /// Dropped with the store, which ends the listener.
    shutdown: watch::Sender<()>,
}

/// The store's Redis names, made once (see "Where records live").
struct Names {
    /// `<prefix>{keys}:secret:`, followed by a hash in hex.
    secret: String,
    /// `<prefix>{keys}:id:`, followed by an id.
    id: String,
    /// `<prefix>{keys}:ids`.
    ids: String,
    /// `<prefix>keys:invalidate`.
    channel: String,
}

impl Names {
    fn new(redis: &RedisConnection) -> Self {
        Names {
            secret: redis.key("{keys}:secret:"),
            id: redis.key("{keys}:id:"),
            ids: redis.key("{keys}:ids"),
            channel: redis.key("keys:invalidate"),
        }
    }

    fn secret(&self, hash: &KeyHash) -> String {
        [&self.secret, &*hash.to_hex()].concat()
    }

    fn id(&self, id: &str) -> String {
        [&self.id, id].concat()
    }
}

/// Builds a [`RedisKeyStore`].
#[derive(Debug)]
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
    /// Another key already has one of this key's secrets.
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
    /// 5 s for unknown keys, at most 100,000 cached entries (see
    /// [`build`](RedisKeyStoreBuilder::build) for when it starts listening).
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

    /// Whether the invalidation subscription is live (and the cache used).
    pub fn is_listening(&self) -> bool {
        self.inner.listening.load(Ordering::Acquire)
    }

    /// Entries in this instance's cache (keys and tenants).
    pub fn cached(&self) -> usize {
        self.inner.cache.len() + self.inner.tenants.len()
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
    /// Keys stored through any `RedisKeyStore` are announced, so they work
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
        let store = RedisKeyStore {
            inner: Arc::new(Inner {
                names: Names::new(&self.redis),
                redis: self.redis,
                policy: self.policy,
                cache: Cache::new(
                    CACHE_SHARDS,
                    self.max_cached,
                    self.cache_ttl,
                    self.negative_ttl,
                ),
                tenants: Cache::new(1, self.max_cached, self.cache_ttl, self.negative_ttl),
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
        self.inner.lookup(
            |inner| &inner.cache,
            hash,
            |inner, hash| read_record(inner, inner.names.secret(hash), |json| decode(json, None)),
        )
    }

    fn tenant(&self, scope: &BudgetScope) -> StoreFuture<Option<Arc<TenantRecord>>> {
        tenants::lookup(&self.inner, scope)
    }
}

/// A page of the records of an index of ids (`index`; the records are
/// `prefix` + id), after `after`, at most `limit`: one script.
fn list<T: Send + 'static>(
    inner: &Inner,
    index: String,
    prefix: String,
    after: Option<&str>,
    limit: usize,
    decode: fn(&str) -> Result<T, StoreError>,
) -> StoreFuture<Vec<Arc<T>>> {
    if limit == 0 {
        return StoreFuture::ready(Ok(Vec::new()));
    }
    let args = vec![
        prefix,
        after.map_or_else(|| "-".to_owned(), |after| format!("({after}")),
        limit.min(i64::MAX as usize).to_string(),
    ];
    let call = inner
        .redis
        .eval::<Vec<String>>(&KEY_LIST, vec![index], args);
    StoreFuture::pending(async move {
        call.await?
            .iter()
            .map(|json| decode(json).map(Arc::new))
            .collect()
    })
}

/// One `HGET` of the `rec` field of `key`, decoded.
fn read_record<T>(
    inner: &Inner,
    key: String,
    decode: fn(&str) -> Result<T, StoreError>,
) -> impl Future<Output = Result<Option<Arc<T>>, StoreError>> + Send + use<T>
where
    T: Send + Sync + 'static,
{
    let json = read_json(inner, key);
    async move {
        json.await?
            .map(|json| decode(&json).map(Arc::new))
            .transpose()
    }
}

/// One `HGET` of the `rec` field of `key`.
fn read_json(
    inner: &Inner,
    key: String,
) -> impl Future<Output = Result<Option<String>, StoreError>> + Send + use<> {
    inner.redis.call_any(move |mut conn| async move {
        redis::cmd("HGET")
            .arg(key)
            .arg("rec")
            .query_async(&mut conn)
            .await
    })
}

impl Inner {
    /// Drops `hash` from the cache (or everything), and makes lookups in
    /// flight not cache what they read.
    fn invalidate(&self, hash: Option<&KeyHash>) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        match hash {
            Some(hash) => self.cache.remove(hash),
            None => {
                self.cache.clear();
                self.tenants.clear();
            }
        }
    }

    /// Drops the tenant `scope` from the cache, and makes lookups in flight
    /// not cache what they read.
    fn invalidate_tenant(&self, scope: &BudgetScope) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.tenants.remove(scope);
    }

    /// Applies an invalidation message: hashes in hex and tenants
    /// (`t:team:research`), space-separated. Anything else (`*`, a message
    /// this version cannot read) drops everything, which is always safe.
    fn invalidate_message(&self, message: &str) {
        enum Changed {
            Key(KeyHash),
            Tenant(BudgetScope),
        }
        let changed: Option<Vec<Changed>> = message
            .split_whitespace()
            .map(|token| match token.strip_prefix(tenants::MESSAGE_PREFIX) {
                Some(scope) => BudgetScope::parse(scope).map(Changed::Tenant),
                None => KeyHash::from_hex(token).ok().map(Changed::Key),
            })
            .collect();
        match changed {
            Some(changed) if !changed.is_empty() => {
                for change in &changed {
                    match change {
                        Changed::Key(hash) => self.invalidate(Some(hash)),
                        Changed::Tenant(scope) => self.invalidate_tenant(scope),
                    }
                }
            }
            _ => self.invalidate(None),
        }
    }

    fn start_listener(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.listener_started.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(listen::listen(
            Arc::downgrade(self),
            self.shutdown.subscribe(),
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection (never made) with `prefix`.
    fn unreachable(prefix: &str) -> RedisConnection {
        let config = super::super::RedisConfig::from_url("redis://127.0.0.1:1/0").unwrap();
        RedisConnection::connect_lazy(config.key_prefix(prefix)).unwrap()
    }

    #[tokio::test]
    async fn invalidation_messages_drop_their_hashes_or_everything() {
        let store = RedisKeyStore::builder(unreachable("tollgate:")).build();
        let inner = &store.inner;
        let [a, b, c] = ["a", "b", "c"].map(KeyHash::of);
        let fill = || {
            for hash in [a, b, c] {
                inner.cache.insert(hash, None);
            }
        };
        fill();
        inner.invalidate_message(&format!("{} {}", a.to_hex(), b.to_hex()));
        assert_eq!(store.cached(), 1);
        assert!(inner.cache.get(&c, true).is_some());
        fill();
        inner.invalidate_message("*");
        assert_eq!(store.cached(), 0);
        fill();
        inner.invalidate_message(&format!("{} nonsense", a.to_hex()));
        assert_eq!(store.cached(), 0);
    }

    #[test]
    fn every_name_carries_the_one_hash_tag() {
        let names = Names::new(&unreachable("gw:"));
        for name in [
            names.secret(&KeyHash::of("s")),
            names.id("a{b}"),
            names.ids.clone(),
        ] {
            assert!(name.starts_with("gw:{keys}:"), "{name}");
        }
    }
}
