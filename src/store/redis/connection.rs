//! [`RedisConnection`]: one multiplexed connection per gateway instance,
//! every call bounded in time, reconnected in the background.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Script,
    Value,
};

use super::RedisConfig;
#[cfg(feature = "redis-tls")]
use super::config::uses_tls;
use super::scripts::SOURCES;
use super::settlements::SettleQueue;
use crate::store::StoreError;

/// A connection on which a call times out when nothing at all has been
/// answered for this long is presumed dead (a network path that silently
/// drops packets never reports an error) and replaced. A Redis that is only
/// slow still answers some calls, and keeps its connection.
const STALLED: Duration = Duration::from_secs(1);

/// The error of a call made while disconnected: it never left this process.
const NOT_CONNECTED: &str = "not connected to Redis";

/// A handle on Redis shared by the stores of one gateway instance: cheap to
/// clone, every clone uses the same connection.
///
/// ```no_run
/// use tollgate::store::redis::{RedisConfig, RedisConnection};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let redis = RedisConnection::connect(RedisConfig::from_url("redis://127.0.0.1:6379/0")?).await?;
/// println!("Redis answers in {:?}", redis.ping().await?);
/// # Ok(())
/// # }
/// ```
///
/// # Behaviour
///
/// - Every call is bounded by the configured
///   [`call_timeout`](RedisConfig::call_timeout), whatever Redis does; then
///   it fails with [`StoreError::Timeout`].
/// - When the connection breaks (Redis restarted, killed, failed over) it is
///   replaced in the background, retrying with a backoff capped at
///   [`reconnect_max_delay`](RedisConfig::reconnect_max_delay). Until then,
///   calls fail at once with [`StoreError::Unavailable`]: an outage costs the
///   layers' failure policies no latency.
/// - A connection on which calls time out and nothing has been answered
///   for a second is replaced too: a network path that silently drops
///   packets never reports an error.
///
/// Timeouts and backoff run on tokio's clock: a runtime with paused time
/// (`tokio::time::pause`) would fire them while Redis is still answering,
/// so test against a real Redis on a running clock.
#[derive(Clone)]
pub struct RedisConnection {
    shared: Arc<Shared>,
}

struct Shared {
    client: redis::Client,
    config: RedisConfig,
    link: Mutex<Link>,
    /// When anything was last answered, in ms since `started`.
    last_answer_ms: AtomicU64,
    started: Instant,
    settlements: SettleQueue,
}

/// A connection to one Redis, or to a Redis Cluster (which routes each
/// command by the hash slot of its keys and follows the cluster's moves).
#[derive(Clone)]
pub(crate) enum AnyConnection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for AnyConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            AnyConnection::Single(c) => c.req_packed_command(cmd),
            AnyConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            AnyConnection::Single(c) => c.req_packed_commands(cmd, offset, count),
            AnyConnection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AnyConnection::Single(c) => c.get_db(),
            AnyConnection::Cluster(c) => c.get_db(),
        }
    }
}

struct Link {
    conn: Option<AnyConnection>,
    /// Bumped with every new connection, so a failure seen on an old one
    /// does not drop a newer one.
    generation: u64,
    reconnecting: bool,
    down_since: Option<Instant>,
}

impl RedisConnection {
    /// Connects to Redis, failing if the first connection cannot be made
    /// within the connection timeout (a misconfigured URL shows at start-up).
    pub async fn connect(config: RedisConfig) -> Result<Self, StoreError> {
        let this = RedisConnection::connect_lazy(config)?;
        let conn = this.shared.open().await?;
        this.shared.connected(conn);
        Ok(this)
    }

    /// A handle that connects on first use, in the background: a gateway
    /// can start while Redis is down, its layers applying their failure
    /// policies until Redis is reachable.
    pub fn connect_lazy(config: RedisConfig) -> Result<Self, StoreError> {
        let client = client(&config).map_err(unavailable)?;
        Ok(RedisConnection {
            shared: Arc::new(Shared {
                client,
                config,
                link: Mutex::new(Link {
                    conn: None,
                    generation: 0,
                    reconnecting: false,
                    down_since: Some(Instant::now()),
                }),
                last_answer_ms: AtomicU64::new(0),
                started: Instant::now(),
                settlements: SettleQueue::new(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.shared.config
    }

    /// Whether a connection is established now (it may still break before
    /// the next call).
    pub fn is_connected(&self) -> bool {
        self.shared.lock().conn.is_some()
    }

    /// Whether this is a connection to a Redis Cluster
    /// ([`RedisConfig::cluster`]).
    pub fn is_cluster(&self) -> bool {
        self.shared.config.is_cluster()
    }

    /// Round-trip time of a `PING`, for health checks.
    pub async fn ping(&self) -> Result<Duration, StoreError> {
        let started = Instant::now();
        self.call_any(|mut conn| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(drop)
        })
        .await?;
        Ok(started.elapsed())
    }

    /// `prefix + name`: the key or channel `name` in this gateway's namespace.
    pub(crate) fn key(&self, name: &str) -> String {
        [&self.shared.config.key_prefix, name].concat()
    }

    /// Runs `script` (`EVALSHA`, loading it once after a Redis restart) with
    /// the call timeout and failure handling of [`call`](Self::call).
    pub(crate) fn eval<T>(
        &self,
        script: &'static Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + use<T>
    where
        T: redis::FromRedisValue + Send + 'static,
    {
        self.eval_shared(script, Arc::new((keys, args)))
    }

    pub(crate) fn eval_shared<T>(
        &self,
        script: &'static Script,
        call: Arc<(Vec<String>, Vec<String>)>,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + use<T>
    where
        T: redis::FromRedisValue + Send + 'static,
    {
        self.call_any(move |mut conn| async move {
            let (keys, args) = &*call;
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(key);
            }
            for arg in args {
                invocation.arg(arg);
            }
            invocation.invoke_async(&mut conn).await
        })
    }

    /// The queue of [`settle`](Self::settle) and [`flush`](Self::flush)
    /// (in `settlements.rs`).
    pub(super) fn settlements(&self) -> &SettleQueue {
        &self.shared.settlements
    }

    /// [`call_any`](Self::call_any) on a single Redis: on a cluster, where
    /// only scripts run ([`eval`](Self::eval)), it fails.
    pub(crate) fn call<T, F, Fut>(
        &self,
        op: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + use<T, F, Fut>
    where
        F: FnOnce(MultiplexedConnection) -> Fut + Send + 'static,
        Fut: Future<Output = RedisResult<T>> + Send,
        T: Send + 'static,
    {
        self.call_any(move |conn| async move {
            match conn {
                AnyConnection::Single(conn) => op(conn).await,
                AnyConnection::Cluster(_) => Err(RedisError::from((
                    ErrorKind::Client,
                    "this operation does not run on Redis Cluster",
                ))),
            }
        })
    }

    /// Runs `op` on the connection, single or cluster, bounded by the call
    /// timeout. Fails at once while disconnected (and starts reconnecting if
    /// nothing is).
    pub(crate) fn call_any<T, F, Fut>(
        &self,
        op: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + use<T, F, Fut>
    where
        F: FnOnce(AnyConnection) -> Fut + Send + 'static,
        Fut: Future<Output = RedisResult<T>> + Send,
        T: Send + 'static,
    {
        let shared = self.shared.clone();
        async move {
            let (conn, generation) = shared.current()?;
            match tokio::time::timeout(shared.config.call_timeout, op(conn)).await {
                Ok(Ok(value)) => {
                    shared.answered();
                    Ok(value)
                }
                Ok(Err(error)) if !error.is_timeout() => Err(shared.failed(generation, &error)),
                // The driver's timeout, or ours.
                _ => {
                    shared.timed_out(generation);
                    Err(StoreError::Timeout)
                }
            }
        }
    }

    /// The client, for connections of another kind (pub/sub).
    pub(crate) fn client(&self) -> &redis::Client {
        &self.shared.client
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Link> {
        crate::store::lock(&self.link)
    }

    async fn open(&self) -> Result<AnyConnection, StoreError> {
        if self.config.is_cluster() {
            return self.open_cluster().await;
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            // `call` bounds every call, NOSCRIPT retry included.
            .set_response_timeout(None);
        let attempt = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        let mut conn = self.connecting(attempt).await?.map_err(unavailable)?;
        // Load every script now, in one round trip, so that a restarted
        // Redis is not hit by a burst of `NOSCRIPT` retries. If this fails,
        // `EVALSHA` still loads each script on first use.
        let mut pipe = redis::pipe();
        for source in SOURCES {
            pipe.cmd("SCRIPT").arg("LOAD").arg(*source).ignore();
        }
        let load = pipe.query_async::<()>(&mut conn);
        if let Err(error) = self.connecting(load).await? {
            tracing::debug!(%error, "redis: SCRIPT LOAD failed");
        }
        Ok(AnyConnection::Single(conn))
    }

    /// A cluster connection: it finds the slots' owners from any of the
    /// configured nodes, keeps a connection per node and follows `MOVED`
    /// and `ASK` redirections itself.
    async fn open_cluster(&self) -> Result<AnyConnection, StoreError> {
        let builder = redis::cluster::ClusterClient::builder(self.config.cluster_nodes.clone())
            .connection_timeout(self.config.connect_timeout)
            .response_timeout(self.config.call_timeout);
        #[cfg(feature = "redis-tls")]
        let builder = match &self.config.tls_ca_pem {
            Some(pem) => builder.certs(certificates(pem)),
            None => builder,
        };
        let client = builder.build().map_err(unavailable)?;
        let attempt = client.get_async_connection();
        let mut conn = self.connecting(attempt).await?.map_err(unavailable)?;
        // `SCRIPT LOAD` goes to every primary; `EVALSHA` loads a script on
        // a node that lacks it anyway.
        for source in SOURCES {
            let mut command = redis::cmd("SCRIPT");
            command.arg("LOAD").arg(*source);
            let load = command.query_async::<String>(&mut conn);
            if let Err(error) = self.connecting(load).await? {
                tracing::debug!(%error, "redis: SCRIPT LOAD failed");
            }
        }
        Ok(AnyConnection::Cluster(conn))
    }

    /// `step` of opening a connection, bounded by the connect timeout.
    async fn connecting<T>(
        &self,
        step: impl Future<Output = RedisResult<T>>,
    ) -> Result<RedisResult<T>, StoreError> {
        tokio::time::timeout(self.config.connect_timeout, step)
            .await
            .map_err(|_| StoreError::Timeout)
    }

    /// Makes `conn` the connection; how long there was none.
    fn connected(&self, conn: AnyConnection) -> Option<Duration> {
        let mut link = self.lock();
        link.conn = Some(conn);
        link.generation += 1;
        let down = link.down_since.take().map(|t| t.elapsed());
        drop(link);
        self.answered();
        down
    }

    fn current(self: &Arc<Self>) -> Result<(AnyConnection, u64), StoreError> {
        let mut link = self.lock();
        if let Some(conn) = &link.conn {
            return Ok((conn.clone(), link.generation));
        }
        let reconnect = self.start_reconnecting(&mut link);
        drop(link);
        reconnect.spawn();
        Err(StoreError::Unavailable(NOT_CONNECTED.into()))
    }

    fn failed(self: &Arc<Self>, generation: u64, error: &RedisError) -> StoreError {
        // Only an error reply proves the connection works; anything else
        // (I/O, a dead driver task, an unreadable stream) replaces it.
        let answered = matches!(
            error.kind(),
            ErrorKind::Server(_) | ErrorKind::Extension | ErrorKind::UnexpectedReturnType
        );
        if answered {
            self.answered();
        }
        // A primary demoted by a failover: a new connection finds the new one.
        let broken = !answered || error.code() == Some("READONLY");
        if broken {
            self.drop_connection(generation, "connection lost");
        }
        if error.kind() == ErrorKind::UnexpectedReturnType {
            return StoreError::Corrupt(describe(error));
        }
        StoreError::Unavailable(describe(error))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn answered(&self) {
        let now = self.now_ms();
        if self.last_answer_ms.load(Ordering::Relaxed) != now {
            self.last_answer_ms.store(now, Ordering::Relaxed);
        }
    }

    fn timed_out(self: &Arc<Self>, generation: u64) {
        let silent = self
            .now_ms()
            .saturating_sub(self.last_answer_ms.load(Ordering::Relaxed));
        if silent >= STALLED.as_millis() as u64 {
            self.drop_connection(generation, "calls time out and nothing answers");
        }
    }

    fn drop_connection(self: &Arc<Self>, generation: u64, why: &str) {
        let mut link = self.lock();
        if link.generation != generation || link.conn.is_none() {
            return;
        }
        link.conn = None;
        link.down_since = Some(Instant::now());
        let reconnect = self.start_reconnecting(&mut link);
        drop(link);
        tracing::warn!(addr = %self.config.info.addr(), reason = why, "redis connection down; reconnecting");
        reconnect.spawn();
    }

    /// Claims the reconnection if nobody runs one; spawn the result once
    /// `link` is unlocked (a runtime shutting down drops the task at once,
    /// and its guard locks `link`).
    fn start_reconnecting(self: &Arc<Self>, link: &mut Link) -> Reconnect {
        if link.reconnecting {
            return Reconnect(None);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Reconnect(None);
        };
        link.reconnecting = true;
        Reconnect(Some((runtime, Reconnecting(Arc::downgrade(self)))))
    }
}

/// A reconnection to start, if any.
struct Reconnect(Option<(tokio::runtime::Handle, Reconnecting)>);

impl Reconnect {
    fn spawn(self) {
        if let Some((runtime, guard)) = self.0 {
            runtime.spawn(reconnect(guard));
        }
    }
}

/// Marks the reconnection over however its task ends (connected, the
/// store dropped, or the runtime shut down), so a later call can start one.
struct Reconnecting(Weak<Shared>);

impl Drop for Reconnecting {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared.lock().reconnecting = false;
        }
    }
}

async fn reconnect(guard: Reconnecting) {
    let mut delay = Duration::ZERO;
    loop {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let Some(shared) = guard.0.upgrade() else {
            return;
        };
        let config = &shared.config;
        delay = config.next_reconnect_delay(delay);
        match shared.open().await {
            Ok(conn) => {
                let down = shared.connected(conn);
                tracing::info!(addr = %config.info.addr(), down_for = ?down, "redis connection up");
                return;
            }
            Err(error) => {
                tracing::debug!(%error, addr = %config.info.addr(), "redis reconnection failed");
            }
        }
    }
}

/// The client of one Redis `config` names: over TLS with its CA
/// certificates, if it has them.
fn client(config: &RedisConfig) -> RedisResult<redis::Client> {
    #[cfg(feature = "redis-tls")]
    {
        if uses_tls(&config.info) || config.cluster_nodes.iter().any(uses_tls) {
            install_crypto_provider();
        }
        if let Some(pem) = &config.tls_ca_pem {
            return redis::Client::build_with_tls(config.info.clone(), certificates(pem));
        }
    }
    redis::Client::open(config.info.clone())
}

#[cfg(feature = "redis-tls")]
fn certificates(pem: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    }
}

/// The redis crate builds its TLS configuration with rustls's process-wide
/// crypto provider, which rustls picks by itself only when exactly one
/// provider feature is on in the whole program: an application that also
/// pulls in rustls's ring provider would have the first TLS connection
/// panic. So, unless the application installed a provider (which is then
/// used), aws-lc-rs (`redis-tls`'s) is installed here.
#[cfg(feature = "redis-tls")]
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // An error means another thread installed one first: that one serves.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

fn unavailable(error: RedisError) -> StoreError {
    StoreError::Unavailable(describe(&error))
}

/// A Redis error as a short message: never the URL or credentials.
fn describe(error: &RedisError) -> String {
    short(format!("redis: {error}"))
}

/// `message` cut to at most 200 bytes.
pub(super) fn short(mut message: String) -> String {
    if message.len() > 200 {
        let mut end = 200;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection")
            .field("config", &self.shared.config)
            .field("connected", &self.is_connected())
            .finish()
    }
}
