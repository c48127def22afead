//! TLS towards `https://` upstreams (api.openai.com, api.anthropic.com, a
//! vLLM pool behind a private CA), on the same connector as plain `http://`.
//!
//! [`TlsSetup`] makes each upstream's [`Connector`]: hyper-rustls around
//! the gateway's `HttpConnector` (which keeps `TCP_NODELAY`), verifying the
//! upstream's certificate against the system's CA certificates, or against
//! the upstream's `ca_file` instead. A system store with no certificate
//! stops start-up (and a reload) with what to do, rather than failing every
//! request later with `UnknownIssuer`.
//!
//! # Why the system's roots, not a bundled list (webpki-roots)
//!
//! The operator's machine or image already keeps a CA bundle up to date
//! (`ca-certificates`, updated with the OS) and is where a corporate egress
//! proxy's CA is installed; a list compiled into the binary is frozen on
//! the day it was built and ignores both. The price: a bare image (`FROM
//! scratch`, distroless without certificates) has none, which start-up says.
//!
//! # Why `ca_file` replaces the roots instead of adding to them
//!
//! An upstream behind a private CA should be reachable with that CA's
//! certificates only: a public CA that issues a certificate for the
//! internal name is not who the operator meant to trust.
//!
//! # Why HTTP/1.1 only (no h2 by ALPN)
//!
//! hyper-util's client sends every request to an h2 origin over one
//! connection and opens no second one when the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` (commonly 100) is reached (hyper
//! issues 2197, 3623): LLM streams last tens of seconds, so request 101
//! would wait for a stream to end. Over HTTP/1.1 the pool opens a
//! connection per concurrent request, which is what a gateway needs; the
//! providers serve both.
//!
//! # Why aws-lc-rs
//!
//! rustls's default provider: it negotiates post-quantum key exchange
//! (X25519MLKEM768) with the providers that offer it; rustls deprecated
//! its ring provider for lacking it. The library's `redis-tls` uses the
//! same.

use std::path::Path;
use std::sync::Arc;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

/// The connector of every upstream: http as is, https through rustls.
pub type Connector = HttpsConnector<HttpConnector>;

/// The TLS configurations of one config's upstreams, while the routes are
/// built: the system's roots are read once, and only when an https
/// upstream without `ca_file` needs them.
#[derive(Default)]
pub struct TlsSetup {
    system: Option<ClientConfig>,
}

impl TlsSetup {
    /// The connector for an upstream at `url`, trusting `ca_file` (PEM)
    /// when given, else the system's roots. An `http://` URL gets one that
    /// never handshakes, so nothing is read for it.
    pub fn connector(&mut self, url: &str, ca_file: Option<&Path>) -> Result<Connector, String> {
        let tls = match ca_file {
            Some(path) => client_config(ca_roots(path)?)?,
            None if url.starts_with("https://") => self.system()?,
            None => client_config(RootCertStore::empty())?,
        };
        // TCP_NODELAY: a request's head and body are two writes, and the
        // second would wait for the upstream's delayed ACK (~40 ms). The
        // TLS layer writes records as hyper writes, so it holds here too.
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        // hyper-rustls sees the https scheme, not the HTTP connector.
        http.enforce_http(false);
        Ok(HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http))
    }

    /// The configuration trusting the system's roots, read on first use.
    fn system(&mut self) -> Result<ClientConfig, String> {
        if let Some(config) = &self.system {
            return Ok(config.clone());
        }
        let config = client_config(system_roots()?)?;
        self.system = Some(config.clone());
        Ok(config)
    }
}

/// A client configuration trusting `roots`, with aws-lc-rs and the safe
/// default protocol versions (TLS 1.3 and 1.2).
fn client_config(roots: RootCertStore) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The system's CA certificates (`SSL_CERT_FILE` and `SSL_CERT_DIR` when
/// set, else the OS's bundle); an error when none load.
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(format!(
            "https upstreams: no CA certificate found in the system's store{why}; install the \
             ca-certificates package, point SSL_CERT_FILE at a PEM bundle, or give the upstream \
             a ca_file"
        ));
    }
    if ignored > 0 || !found.errors.is_empty() {
        tracing::warn!(
            added,
            ignored,
            errors = found.errors.len(),
            "some of the system's CA certificates could not be read"
        );
    }
    Ok(roots)
}

/// The certificates of the PEM file at `path`; an error naming the file
/// when it cannot be read or holds none.
fn ca_roots(path: &Path) -> Result<RootCertStore, String> {
    let at = || format!("ca_file {}", path.display());
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", at()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{}: {e}", at()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a CA certificate rustls can use: {e}", at()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no PEM CERTIFICATE block in it", at()));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = TlsSetup::default()
            .connector("https://x/v1", Some(&missing))
            .err()
            .unwrap();
        assert!(err.contains("missing.pem"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = TlsSetup::default()
            .connector("https://x/v1", Some(&empty))
            .err()
            .unwrap();
        assert!(err.contains("no PEM CERTIFICATE"), "{err}");

        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, cert.cert.pem()).unwrap();
        assert!(
            TlsSetup::default()
                .connector("https://x/v1", Some(&good))
                .is_ok()
        );
    }

    #[test]
    fn plain_http_reads_no_roots() {
        let mut setup = TlsSetup::default();
        assert!(setup.connector("http://127.0.0.1:9/v1", None).is_ok());
        assert!(setup.system.is_none());
    }
}
