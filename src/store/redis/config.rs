//! [`RedisConfig`]: where Redis is, how long to wait for it, and the
//! namespace of the gateway's keys.

use std::fmt;
use std::time::Duration;

use redis::IntoConnectionInfo;

/// How to reach Redis: a URL, a key prefix and the timeouts.
///
/// ```
/// use std::time::Duration;
/// use tollgate::store::redis::RedisConfig;
///
/// let config = RedisConfig::from_url("redis://127.0.0.1:6379/0")?
///     .key_prefix("gw-eu:")
///     .connect_timeout(Duration::from_secs(1))
///     .call_timeout(Duration::from_millis(250));
/// assert_eq!(config.get_key_prefix(), "gw-eu:");
/// # Ok::<_, tollgate::store::redis::RedisConfigError>(())
/// ```
///
/// # Defaults, and why
///
/// - **`call_timeout` 250 ms.** Every call to Redis is bounded by it: a
///   healthy Redis answers a script in well under a millisecond, so 250 ms is
///   far above its worst case and still small next to an LLM call. When it
///   runs out the call fails with [`StoreError::Timeout`](crate::store::StoreError::Timeout)
///   and the layer applies its failure policy; nothing waits longer.
/// - **`connect_timeout` 1 s** for each connection attempt.
/// - **Reconnection** every 50 ms at first, doubling up to
///   `reconnect_max_delay` (1 s): a restarted Redis is back in use at most
///   about a second after it accepts connections. While disconnected, calls
///   fail at once instead of waiting for their timeout.
/// - **`settlement_retry` 30 s**: settlements Redis did not answer
///   (unreachable, timed out) are sent again for that long, and applied
///   once.
/// - **`key_prefix` `"tollgate:"`**: every key the stores write starts with
///   it, so several gateways (or environments) can share one Redis without
///   sharing limits. It is also the pub/sub channel's namespace.
#[derive(Clone)]
pub struct RedisConfig {
    pub(crate) info: redis::ConnectionInfo,
    /// The nodes of a Redis Cluster to start from; empty for one Redis.
    pub(crate) cluster_nodes: Vec<redis::ConnectionInfo>,
    pub(crate) key_prefix: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) call_timeout: Duration,
    pub(crate) reconnect_min_delay: Duration,
    pub(crate) reconnect_max_delay: Duration,
    pub(crate) settlement_retry: Duration,
    /// PEM CA certificates a `rediss://` server must chain to, instead of
    /// the system's roots.
    #[cfg(feature = "redis-tls")]
    pub(crate) tls_ca_pem: Option<std::sync::Arc<[u8]>>,
}

/// A Redis configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedisConfigError {
    /// The URL does not parse. The message never repeats the URL: it may
    /// hold a password.
    #[error(
        "invalid Redis URL: expected redis://[user:password@]host[:port][/db] (or rediss://, redis+unix://)"
    )]
    InvalidUrl,
    /// A `rediss://` URL in a build without the `redis-tls` feature.
    #[error("rediss:// (TLS) needs tollgate's `redis-tls` feature")]
    TlsUnsupported,
    /// CA certificates for a URL that is not `rediss://`.
    #[error("CA certificates are for a rediss:// (TLS) URL")]
    NotTls,
    /// CA certificates that are not PEM, or hold no certificate.
    #[error("invalid CA certificates: {0}")]
    InvalidCaCertificates(String),
}

impl RedisConfig {
    /// Default [`call_timeout`](Self::call_timeout): 250 ms.
    pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(250);
    /// Default [`connect_timeout`](Self::connect_timeout): 1 s.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    /// Default [`reconnect_max_delay`](Self::reconnect_max_delay): 1 s.
    pub const DEFAULT_RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);
    /// Default [`settlement_retry`](Self::settlement_retry): 30 s.
    pub const DEFAULT_SETTLEMENT_RETRY: Duration = Duration::from_secs(30);
    /// Default [`key_prefix`](Self::key_prefix): `tollgate:`.
    pub const DEFAULT_KEY_PREFIX: &'static str = "tollgate:";

    /// A configuration for the Redis at `url`, such as
    /// `redis://127.0.0.1:6379/0` or `redis://:password@redis.internal:6379`,
    /// with the defaults above.
    ///
    /// A `rediss://` URL connects over TLS (feature `redis-tls`),
    /// verifying the server's certificate against the system's roots, or
    /// against [`tls_ca_pem`](Self::tls_ca_pem).
    pub fn from_url(url: &str) -> Result<Self, RedisConfigError> {
        let info = connection_info(url)?;
        Ok(RedisConfig {
            info,
            cluster_nodes: Vec::new(),
            key_prefix: Self::DEFAULT_KEY_PREFIX.to_owned(),
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            call_timeout: Self::DEFAULT_CALL_TIMEOUT,
            reconnect_min_delay: Duration::from_millis(50),
            reconnect_max_delay: Self::DEFAULT_RECONNECT_MAX_DELAY,
            settlement_retry: Self::DEFAULT_SETTLEMENT_RETRY,
            #[cfg(feature = "redis-tls")]
            tls_ca_pem: None,
        })
    }

    /// A configuration for the Redis Cluster reachable at any of `urls`
    /// (`redis://10.0.0.5:7000`, …; one is enough, more survive one being
    /// down), with the defaults above. The rate-limit store runs on a
    /// cluster ([`RedisRateLimitStore`](super::RedisRateLimitStore) says how
    /// it places its keys); the key store's pub/sub uses the first node.
    ///
    /// ```
    /// use tollgate::store::redis::RedisConfig;
    ///
    /// let config = RedisConfig::cluster(["redis://10.0.0.5:7000", "redis://10.0.0.6:7000"])?;
    /// assert!(config.is_cluster());
    /// # Ok::<_, tollgate::store::redis::RedisConfigError>(())
    /// ```
    pub fn cluster<'a>(urls: impl IntoIterator<Item = &'a str>) -> Result<Self, RedisConfigError> {
        let nodes = urls
            .into_iter()
            .map(connection_info)
            .collect::<Result<Vec<_>, _>>()?;
        let Some(first) = nodes.first() else {
            return Err(RedisConfigError::InvalidUrl);
        };
        let mut config = RedisConfig::from_url("redis://127.0.0.1")?;
        config.info = first.clone();
        config.cluster_nodes = nodes;
        Ok(config)
    }

    /// Whether this configures a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        !self.cluster_nodes.is_empty()
    }

    /// The prefix of every key and channel the stores use (default
    /// `tollgate:`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// How long one connection attempt may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one call may take, from the moment it is made to its answer
    /// (default 250 ms).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// The longest wait between two reconnection attempts (default 1 s).
    pub fn reconnect_max_delay(mut self, delay: Duration) -> Self {
        self.reconnect_max_delay = delay.max(self.reconnect_min_delay);
        self
    }

    /// How long a settlement (a rate limit's token correction and slot
    /// release, a budget's charge or release) that Redis did not answer
    /// (unreachable, timed out, the connection broke mid-flight) keeps being
    /// sent again in the background (default 30 s; zero: never). Without it,
    /// a blip of a second would lose the spend of the requests in flight and
    /// keep their holds and slots until their leases run out. Nothing is
    /// charged twice: Redis records each batch of settlements it applied
    /// (for this long, and until the next batch), and answers a batch sent
    /// again with the replies of its first run.
    pub fn settlement_retry(mut self, patience: Duration) -> Self {
        self.settlement_retry = patience;
        self
    }

    /// Trusts the CA certificates in `pem` (one or more PEM `CERTIFICATE`
    /// blocks: a private CA, a self-signed server) instead of the system's
    /// roots for the `rediss://` server's certificate. Fails when `pem`
    /// holds no certificate, or the URL is not `rediss://`.
    ///
    /// ```no_run
    /// use tollgate::store::redis::RedisConfig;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = std::fs::read("/etc/tollgate/redis-ca.pem")?;
    /// let config = RedisConfig::from_url("rediss://redis.internal:6380/0")?.tls_ca_pem(ca)?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Result<Self, RedisConfigError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;

        if !uses_tls(&self.info) || !self.cluster_nodes.iter().all(uses_tls) {
            return Err(RedisConfigError::NotTls);
        }
        let pem = pem.into();
        let mut count = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            cert.map_err(|e| RedisConfigError::InvalidCaCertificates(e.to_string()))?;
            count += 1;
        }
        if count == 0 {
            return Err(RedisConfigError::InvalidCaCertificates(
                "no PEM CERTIFICATE block".into(),
            ));
        }
        self.tls_ca_pem = Some(pem.into());
        Ok(self)
    }

    /// Whether the connection is TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        uses_tls(&self.info)
    }

    /// The key prefix.
    pub fn get_key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The call timeout.
    pub fn get_call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// The connection timeout.
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
}

impl RedisConfig {
    /// The wait before the next reconnection attempt after one of `delay`:
    /// doubled, within the configured bounds.
    pub(crate) fn next_reconnect_delay(&self, delay: Duration) -> Duration {
        (delay * 2)
            .max(self.reconnect_min_delay)
            .min(self.reconnect_max_delay)
    }
}

/// Whether `info` is a `rediss://` address.
pub(crate) fn uses_tls(info: &redis::ConnectionInfo) -> bool {
    matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. })
}

/// `url` parsed, telling a `rediss://` URL that this build cannot serve from
/// a URL that does not parse.
fn connection_info(url: &str) -> Result<redis::ConnectionInfo, RedisConfigError> {
    if !cfg!(feature = "redis-tls") && url.starts_with("rediss://") {
        return Err(RedisConfigError::TlsUnsupported);
    }
    url.into_connection_info()
        .map_err(|_| RedisConfigError::InvalidUrl)
}

impl fmt::Debug for RedisConfig {
    /// Shows where Redis is, never the credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("addr", &self.info.addr().to_string())
            .field("db", &self.info.redis_settings().db())
            .field("tls", &self.is_tls())
            .field("cluster_nodes", &self.cluster_nodes.len())
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("call_timeout", &self.call_timeout)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("settlement_retry", &self.settlement_retry)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_hides_passwords() {
        let config = RedisConfig::from_url("redis://:hunter2@10.0.0.5:6380/3").unwrap();
        let debug = format!("{config:?}");
        assert!(
            debug.contains("10.0.0.5") && debug.contains("6380"),
            "{debug}"
        );
        assert!(!debug.contains("hunter2"), "{debug}");
        assert_eq!(config.get_key_prefix(), "tollgate:");
        assert_eq!(config.get_call_timeout(), Duration::from_millis(250));

        let err = RedisConfig::from_url("http://:hunter2@x").unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        assert!(RedisConfig::from_url("not a url").is_err());
    }

    #[cfg(not(feature = "redis-tls"))]
    #[test]
    fn rediss_names_the_missing_feature() {
        let err = RedisConfig::from_url("rediss://:hunter2@10.0.0.5:6380/0").unwrap_err();
        assert_eq!(err, RedisConfigError::TlsUnsupported);
        assert!(err.to_string().contains("redis-tls"), "{err}");
    }

    #[cfg(feature = "redis-tls")]
    #[test]
    fn tls_ca_certificates_are_checked() {
        let config = RedisConfig::from_url("rediss://:hunter2@10.0.0.5:6380/0").unwrap();
        assert!(config.is_tls());
        let debug = format!("{config:?}");
        assert!(
            debug.contains("tls: true") && !debug.contains("hunter2"),
            "{debug}"
        );

        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let pem = cert.cert.pem();
        assert!(config.clone().tls_ca_pem(pem.clone()).is_ok());
        assert!(matches!(
            config.clone().tls_ca_pem("not PEM"),
            Err(RedisConfigError::InvalidCaCertificates(_))
        ));
        let plain = RedisConfig::from_url("redis://10.0.0.5:6379/0").unwrap();
        assert!(!plain.is_tls());
        assert_eq!(plain.tls_ca_pem(pem).unwrap_err(), RedisConfigError::NotTls);
    }
}
