//! TLS through the example gateway (a process): `https://` upstreams and
//! `rediss://` stores, against servers on loopback whose certificates a
//! private CA made here (rcgen) signs.
//!
//! - The mock upstream behind tokio-rustls is reached through the default
//!   upstream (`upstream_ca_file`, by IP address) and an `[[upstreams]]`
//!   entry (`ca_file`, by name), streamed and not, over HTTP/1.1 by ALPN.
//! - A certificate the gateway does not trust (another CA's `ca_file`, or
//!   the system's roots) is a 502 envelope that says no more than "could
//!   not reach the upstream", and a log line that names the certificate.
//! - A machine without CA certificates stops the start with what to do.
//! - `rediss://` (feature `redis-tls`): Debian's `redis-server` serves TLS
//!   on a second port; the gateway keeps its keys and spend there, trusting
//!   `store_ca_file`, and refuses to start against an untrusted one.

#[path = "support/gateway.rs"]
mod gateway_support;
#[path = "support/http.rs"]
mod http_support;
#[path = "../examples/support/mock/mod.rs"]
mod mock;
#[cfg(feature = "redis-tls")]
#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_support::GatewayCommand;
use http::StatusCode;
use http_support::{call, post};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};

const UPSTREAM_KEY: &str = "sk-upstream-tls-0123";
const PRICES: &str = "input_usd_per_million = 1.0\noutput_usd_per_million = 1.0";

/// A private CA and a server certificate it signed for `127.0.0.1` and
/// `localhost`, as PEM files in a temporary directory.
struct Pki {
    _dir: tempfile::TempDir,
    /// The CA's certificate: what `ca_file` names.
    ca: PathBuf,
    /// The server's certificate.
    cert: PathBuf,
    /// The server's key.
    key: PathBuf,
}

impl Pki {
    fn new(ca_name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server_cert = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        Pki {
            ca: write("ca.pem", ca_cert.pem()),
            cert: write("server.pem", server_cert.pem()),
            key: write("server.key", server_key.serialize_pem()),
            _dir: dir,
        }
    }

    /// A rustls server configuration with this certificate, offering h2
    /// and HTTP/1.1 (the server's preference: h2).
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let certs = CertificateDer::pem_file_iter(&self.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&self.key).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// The mock upstream behind TLS on loopback: its address, and the ALPN
/// protocol each accepted connection negotiated (`None`: none) or the
/// handshake's error.
async fn serve_https(pki: &Pki, mock: mock::Mock) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config());
    let handshakes: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = handshakes.clone();
    let router = mock.router();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let (acceptor, seen, router) = (acceptor.clone(), seen.clone(), router.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(stream).await {
                    Ok(tls) => tls,
                    Err(error) => {
                        seen.lock().unwrap().push(format!("error: {error}"));
                        return;
                    }
                };
                let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                seen.lock().unwrap().push(match alpn {
                    Some(protocol) => String::from_utf8_lossy(&protocol).into_owned(),
                    None => "none".into(),
                });
                let service = hyper_util::service::TowerToHyperService::new(router);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    (addr, handshakes)
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream,
        "messages": [{"role": "user", "content": "hello over TLS"}]})
}

fn toml_path(path: &Path) -> String {
    path.display().to_string().replace('\\', "\\\\")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_reached_through_their_ca_file() {
    let pki = Pki::new("tollgate test CA");
    let upstream = mock::Mock::new(vec![]).require_key(UPSTREAM_KEY);
    let (addr, handshakes) = serve_https(&pki, upstream.clone()).await;
    let ca = toml_path(&pki.ca);
    let port = addr.port();
    let config = format!(
        r#"
upstream = "https://127.0.0.1:{port}/v1"
upstream_api_key = "{UPSTREAM_KEY}"
upstream_ca_file = "{ca}"

[[upstreams]]
name = "private"
url = "https://localhost:{port}/v1"
ca_file = "{ca}"
api_key = "{UPSTREAM_KEY}"

[[models]]
name = "by-ip"
{PRICES}

[[models]]
name = "by-name"
upstream = "private"
{PRICES}

[[keys]]
id = "ok"
secret = "sk-test-ok"
"#
    );
    let gateway = GatewayCommand::new().config(&config).start();
    let client = http_support::client();
    let url = gateway.url("/v1/chat/completions");

    let answer = call(
        &client,
        post(&url, Some("sk-test-ok"), &chat("by-ip", false), &[]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        answer.json()["object"],
        "chat.completion",
        "{}",
        answer.text()
    );
    assert!(answer.json()["usage"]["total_tokens"].as_u64().unwrap() > 0);

    let answer = call(
        &client,
        post(&url, Some("sk-test-ok"), &chat("by-name", true), &[]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let text = answer.text();
    assert!(
        text.contains("chat.completion.chunk") && text.trim_end().ends_with("data: [DONE]"),
        "{text}"
    );

    assert_eq!(upstream.calls().route("/v1/chat/completions"), 2);
    // Every handshake succeeded without h2, although the server prefers
    // it: the gateway offers no ALPN protocol, so HTTP/1.1 it is.
    let handshakes = handshakes.lock().unwrap().clone();
    assert!(!handshakes.is_empty());
    assert!(handshakes.iter().all(|h| h == "none"), "{handshakes:?}");
    // The access log names each upstream by its URL.
    let line = gateway.wait_for_log(Duration::from_secs(10), |l| {
        l["message"] == "request" && l["model"] == "by-name"
    });
    assert_eq!(line["upstream_name"], "private", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert!(
        !gateway.stderr().contains(UPSTREAM_KEY),
        "the upstream key leaked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_the_gateway_does_not_trust_is_a_502() {
    let pki = Pki::new("tollgate test CA");
    let other = Pki::new("another CA");
    let upstream = mock::Mock::new(vec![]).require_key(UPSTREAM_KEY);
    let (addr, handshakes) = serve_https(&pki, upstream.clone()).await;
    let other_ca = toml_path(&other.ca);
    let port = addr.port();
    // "other-ca" trusts another CA; "system" trusts the system's roots,
    // which do not know this test's CA either.
    let config = format!(
        r#"
[retry]
max_attempts = 2
initial_backoff_ms = 10

[[upstreams]]
name = "other-ca"
url = "https://127.0.0.1:{port}/v1"
ca_file = "{other_ca}"
api_key = "{UPSTREAM_KEY}"

[[upstreams]]
name = "system"
url = "https://localhost:{port}/v1"
api_key = "{UPSTREAM_KEY}"

[[models]]
name = "other-ca"
upstream = "other-ca"
{PRICES}

[[models]]
name = "system"
upstream = "system"
{PRICES}

[[keys]]
id = "ok"
secret = "sk-test-ok"
"#
    );
    let gateway = GatewayCommand::new().config(&config).start();
    let client = http_support::client();
    let url = gateway.url("/v1/chat/completions");

    for model in ["other-ca", "system"] {
        for stream in [false, true] {
            let answer = call(
                &client,
                post(&url, Some("sk-test-ok"), &chat(model, stream), &[]),
            )
            .await;
            assert_eq!(
                answer.status,
                StatusCode::BAD_GATEWAY,
                "{model}: {}",
                answer.text()
            );
            let body = answer.json();
            assert_eq!(
                body["error"]["message"], "Could not reach the upstream service.",
                "{model}: {body}"
            );
            // Nothing of the gateway's internals reaches the client.
            let text = answer.text().to_lowercase();
            for internal in [
                "certificate",
                "rustls",
                "unknownissuer",
                "client error",
                "127.0.0.1",
            ] {
                assert!(!text.contains(internal), "{model}: {internal:?} in {text}");
            }
        }
    }
    // Nothing reached the mock; each attempt was a refused handshake.
    assert_eq!(upstream.calls().total, 0);
    let handshakes = handshakes.lock().unwrap().clone();
    assert!(
        !handshakes.is_empty() && handshakes.iter().all(|h| h.starts_with("error")),
        "{handshakes:?}"
    );
    // The operator's log says why: the certificate.
    let line = gateway.wait_for_log(Duration::from_secs(10), |l| {
        l["message"] == "upstream request failed" && l["upstream"] == "other-ca"
    });
    let error = line["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("certificate") && error.contains("UnknownIssuer"),
        "{line}"
    );
    // The gateway is still serving.
    let health = call(&client, http_support::get(&gateway.url("/health"), &[])).await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.text());
}

#[test]
fn a_machine_without_ca_certificates_cannot_start_an_https_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let finished = GatewayCommand::new()
        .config("upstream = \"https://127.0.0.1:9/v1\"\n")
        // rustls-native-certs reads these instead of the OS's store.
        .env("SSL_CERT_FILE", &empty)
        .env("SSL_CERT_DIR", dir.path())
        .run(Duration::from_secs(30));
    // A config that cannot serve: exit 2, as an unset api_key_env.
    assert_eq!(finished.code(), Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("no CA certificate found")
            && finished.stderr.contains("ca-certificates"),
        "{}",
        finished.stderr
    );

    // A ca_file that is not PEM stops it too, naming the file.
    let finished = GatewayCommand::new()
        .config(&format!(
            "upstream = \"https://127.0.0.1:9/v1\"\nupstream_ca_file = \"{}\"\n",
            toml_path(&empty)
        ))
        .run(Duration::from_secs(30));
    assert_eq!(finished.code(), Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("empty.pem") && finished.stderr.contains("no PEM CERTIFICATE"),
        "{}",
        finished.stderr
    );
}

/// A `redis-server` with TLS on a second port (its plain port is how the
/// support code sees it ready); the `rediss://` URL of the TLS port.
#[cfg(feature = "redis-tls")]
fn redis_with_tls(pki: &Pki) -> (redis_support::RedisServer, String) {
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let redis = redis_support::RedisServer::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &pki.cert.to_string_lossy(),
        "--tls-key-file",
        &pki.key.to_string_lossy(),
        // The gateway shows no client certificate.
        "--tls-auth-clients",
        "no",
    ]);
    (redis, format!("rediss://127.0.0.1:{tls_port}/0"))
}

#[cfg(feature = "redis-tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rediss_store_keeps_keys_and_spend_over_tls() {
    let pki = Pki::new("tollgate test CA");
    let (redis, url) = redis_with_tls(&pki);
    let ca = toml_path(&pki.ca);
    let config = format!(
        r#"
store = "{url}"
store_ca_file = "{ca}"

[[models]]
name = "gpt-4o-mini"
{PRICES}

[[keys]]
id = "ok"
secret = "sk-test-ok"
budget_usd = 5.0
"#
    );
    let gateway = GatewayCommand::new().config(&config).start();
    let client = http_support::client();
    let answer = call(
        &client,
        post(
            &gateway.url("/v1/chat/completions"),
            Some("sk-test-ok"),
            &chat("gpt-4o-mini", false),
            &[],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let health = call(&client, http_support::get(&gateway.url("/health"), &[])).await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.text());
    assert_eq!(health.json()["store"], "redis", "{}", health.text());

    // What the gateway wrote over TLS is in Redis (read on its plain port):
    // the key's record, and the spend of the request.
    let plain = redis::Client::open(redis.url()).unwrap();
    let mut conn = plain.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("tollgate:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.len() >= 2, "{keys:?}");
    assert!(
        !keys.iter().any(|k| k.contains("sk-test-ok")),
        "a secret in a key name: {keys:?}"
    );
}

#[cfg(feature = "redis-tls")]
#[test]
fn a_rediss_store_with_an_untrusted_certificate_stops_the_start() {
    let pki = Pki::new("tollgate test CA");
    let other = Pki::new("another CA");
    let (_redis, url) = redis_with_tls(&pki);
    // The system's roots, and another CA: neither knows the server's.
    for trust in [
        String::new(),
        format!("store_ca_file = \"{}\"\n", toml_path(&other.ca)),
    ] {
        let finished = GatewayCommand::new()
            .config(&format!("store = \"{url}\"\n{trust}"))
            .run(Duration::from_secs(30));
        assert_eq!(finished.code(), Some(1), "{trust}: {}", finished.stderr);
        assert!(
            finished.stderr.contains("rediss://127.0.0.1")
                && finished.stderr.to_lowercase().contains("certificate"),
            "{trust}: {}",
            finished.stderr
        );
    }
    // store_ca_file is for a rediss:// store only.
    let finished = GatewayCommand::new()
        .config(&format!(
            "store = \"memory\"\nstore_ca_file = \"{}\"\n",
            toml_path(&pki.ca)
        ))
        .run(Duration::from_secs(30));
    assert_eq!(finished.code(), Some(1), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("store_ca_file"),
        "{}",
        finished.stderr
    );
}
