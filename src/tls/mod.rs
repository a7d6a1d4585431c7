//! TLS beyond upstream origination: termination on listeners, mTLS with SPIFFE identities,
//! certificate rotation, interception certificates, and the `sluice ca` tool.
//!
//! Module map:
//! * [`server`]: a listener's TLS (`ServerTls`): server config from files or an interception
//!   CA, the accept path (a handshake driven here so that sniffed bytes can be replayed and
//!   the peer's identity read), and `serve_tls` / `accept_intercepted`.
//! * [`client`]: what upstream origination adds for a mesh: a client certificate that
//!   rotates, and peer verification by SPIFFE ID.
//! * [`mint`]: leaf certificates per SNI for interception, cached per core.
//! * [`reload`]: the `sluice-tls-watch` thread that rebuilds TLS state when files change.
//! * [`spiffe`]: SPIFFE IDs: parse, read from a certificate, match against allow lists.
//! * [`ca`]: `sluice ca init` / `sluice ca issue`.
//! * [`bundle`]: `sluice ca bundle`: system roots + interception CA for the application.
//! * [`replay`]: the socket wrapper that replays bytes read before the handshake.
//! * [`stats`]: handshake, reload and mint counters.
//!
//! Why a module of its own and not in `proxy`: everything here is about certificates and
//! identities, built on the control thread (precommit, like `snapshot`) and only *used* by the
//! data plane at one point (accept). The exchange sees TLS only as another `Io` variant and a
//! peer identity string.
//!
//! Invariants: one crypto provider (ring) everywhere; all files are read off the workers (at
//! snapshot build or on the watch thread); a failed rebuild never replaces working state.

pub mod bundle;
pub mod ca;
pub mod client;
pub mod mint;
pub mod reload;
pub mod replay;
pub mod server;
pub mod spiffe;
pub mod stats;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

use crate::config::Loc;
use crate::error::{Classify, Side};

/// Default time a client has to complete a TLS handshake on a listener.
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// The crypto provider every TLS config uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    static P: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Read a PEM certificate chain (leaf first) and its private key, and check they match.
pub fn load_certified_key(cert_file: &str, key_file: &str) -> Result<CertifiedKey, String> {
    let certs = load_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{key_file}: no private key found")
        }
        e => format!("{key_file}: {e}"),
    })?;
    CertifiedKey::from_der(certs, key, &provider())
        .map_err(|e| format!("{cert_file} / {key_file}: {e}"))
}

/// Read every certificate of a PEM file; an empty file is an error.
pub fn load_certs(file: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| format!("{file}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{file}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{file}: no certificates found"));
    }
    Ok(certs)
}

/// A root store of the CA certificates in `file`.
pub fn load_roots(file: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(file)? {
        roots.add(c).map_err(|e| format!("{file}: {e}"))?;
    }
    Ok(roots)
}

/// A listener's `tls:` block. Two modes: certificate files (`cert_file` + `key_file`), or
/// interception (`intercept_ca_cert_file` + `intercept_ca_key_file`: a leaf per SNI).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    /// PEM certificate chain, leaf first. Re-read when it changes.
    #[serde(default)]
    pub cert_file: Option<Loc<String>>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Re-read when it changes.
    #[serde(default)]
    pub key_file: Option<Loc<String>>,
    /// PEM CA bundle that client certificates must chain to (mTLS). Re-read when it changes.
    #[serde(default)]
    pub client_ca_file: Option<Loc<String>>,
    /// With `client_ca_file`: refuse clients without a certificate (default true). When
    /// false, a client without one is served with no peer identity.
    #[serde(default)]
    pub require_client_cert: Option<bool>,
    /// ALPN protocols offered, in order of preference.
    #[serde(default = "alpn_default")]
    pub alpn: Vec<String>,
    /// Interception: the CA that signs a leaf per SNI.
    #[serde(default)]
    pub intercept_ca_cert_file: Option<Loc<String>>,
    #[serde(default)]
    pub intercept_ca_key_file: Option<Loc<String>>,
    #[serde(default = "handshake_timeout_ms_default")]
    pub handshake_timeout_ms: u64,
}

fn alpn_default() -> Vec<String> {
    vec!["http/1.1".to_string()]
}
fn handshake_timeout_ms_default() -> u64 {
    HANDSHAKE_TIMEOUT_MS_DEFAULT
}

impl TlsServerConfig {
    pub fn is_intercept(&self) -> bool {
        self.intercept_ca_cert_file.is_some()
    }

    /// Semantic checks: (line, field below `tls`, problem). `line` is the closest known one.
    pub fn validate(&self, line: u64) -> Vec<(u64, String, String)> {
        let mut errs = Vec::new();
        let mut e = |l: u64, f: &str, p: String| errs.push((l, f.to_string(), p));
        let files = self.cert_file.is_some() || self.key_file.is_some();
        match (
            files,
            self.intercept_ca_cert_file.is_some() || self.intercept_ca_key_file.is_some(),
        ) {
            (true, true) => e(
                line,
                "",
                "set either cert_file/key_file or intercept_ca_cert_file/intercept_ca_key_file, not both".into(),
            ),
            (false, false) => e(
                line,
                "",
                "set cert_file and key_file (termination) or intercept_ca_cert_file and intercept_ca_key_file (interception)".into(),
            ),
            _ => {}
        }
        for (a, b, an, bn) in [
            (&self.cert_file, &self.key_file, "cert_file", "key_file"),
            (
                &self.intercept_ca_cert_file,
                &self.intercept_ca_key_file,
                "intercept_ca_cert_file",
                "intercept_ca_key_file",
            ),
        ] {
            match (a, b) {
                (Some(x), None) => e(x.line, bn, format!("required with {an}")),
                (None, Some(x)) => e(x.line, an, format!("required with {bn}")),
                _ => {}
            }
        }
        for (f, n) in [
            (&self.cert_file, "cert_file"),
            (&self.key_file, "key_file"),
            (&self.client_ca_file, "client_ca_file"),
            (&self.intercept_ca_cert_file, "intercept_ca_cert_file"),
            (&self.intercept_ca_key_file, "intercept_ca_key_file"),
        ] {
            if let Some(f) = f {
                if let Err(err) = std::fs::metadata(&f.value) {
                    e(f.line, n, format!("`{}`: {err}", f.value));
                }
            }
        }
        if self.require_client_cert.is_some() && self.client_ca_file.is_none() {
            e(
                line,
                "require_client_cert",
                "needs client_ca_file (the CA client certificates must chain to)".into(),
            );
        }
        if self.alpn.is_empty() || self.alpn.iter().any(|p| p.is_empty() || p.len() > 255) {
            e(
                line,
                "alpn",
                "list one or more protocol names of 1..=255 bytes".into(),
            );
        }
        if self.alpn.iter().any(|p| p != "http/1.1" && p != "http/1.0") {
            e(
                line,
                "alpn",
                "sluice speaks HTTP/1.x only: offer http/1.1 (and http/1.0)".into(),
            );
        }
        if self.handshake_timeout_ms == 0 {
            e(line, "handshake_timeout_ms", "must be > 0".into());
        }
        // Everything is in place: load it, so `sluice check` catches an unreadable PEM or a
        // key that does not belong to its certificate before `sluice run` does.
        if errs.is_empty() {
            if let Err(p) = server::build_server_config(self) {
                errs.push((line, String::new(), p));
            }
        }
        errs
    }
}

/// Errors of the TLS accept boundary.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS handshake failed ({reason}): {1}", reason = .0.as_str())]
    Handshake(stats::HandshakeFailure, String),
    #[error("no TLS handshake within {0} ms")]
    Timeout(u64),
    #[error("this listener does not intercept TLS (no intercept_ca_cert_file)")]
    NotIntercepting,
}

impl TlsError {
    pub fn reason(&self) -> stats::HandshakeFailure {
        match self {
            TlsError::Handshake(r, _) => *r,
            TlsError::Timeout(_) => stats::HandshakeFailure::Timeout,
            TlsError::NotIntercepting => stats::HandshakeFailure::NoSni,
        }
    }
}

impl Classify for TlsError {
    fn side(&self) -> Side {
        match self {
            TlsError::NotIntercepting => Side::Internal,
            _ => Side::Downstream,
        }
    }
    fn status(&self) -> u16 {
        match self {
            TlsError::Timeout(_) => 408,
            TlsError::NotIntercepting => 500,
            _ => 400,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            TlsError::Handshake(..) => "tls_handshake_failed",
            TlsError::Timeout(_) => "tls_handshake_timeout",
            TlsError::NotIntercepting => "tls_not_intercepting",
        }
    }
}

#[cfg(test)]
mod tests {
    const BASE: &str = r#"
listeners:
  - name: in
    bind: 127.0.0.1:15006
    tls:
      cert_file: /nonexistent/cert.pem
      key_file: /nonexistent/key.pem
      alpn: [h2]
      require_client_cert: false
    routes:
      - upstream: u
        allow_identities: ["spiffe://td/ns/a/*", "spiffe://td/ns/b/sa/c", "nope"]
upstreams:
  u:
    endpoints: ["127.0.0.1:1"]
    tls:
      enabled: true
      client_key_file: /nonexistent/k.pem
      peer_identities: ["spiffe://Bad/x"]
"#;

    #[test]
    fn config_errors_have_file_line_and_field() {
        let e = crate::config::parse("t.yaml", BASE).unwrap_err();
        let s = e.to_string();
        for want in [
            "t.yaml:6: listeners[0].tls.cert_file: `/nonexistent/cert.pem`",
            "t.yaml:7: listeners[0].tls.key_file: `/nonexistent/key.pem`",
            "t.yaml:4: listeners[0].tls.require_client_cert: needs client_ca_file",
            "t.yaml:4: listeners[0].tls.alpn: sluice speaks HTTP/1.x only",
            "t.yaml:12: listeners[0].routes[0].allow_identities: needs a listener with tls.client_ca_file",
            "t.yaml:12: listeners[0].routes[0].allow_identities[2]: `nope` does not start with spiffe://",
            "t.yaml:18: upstreams.u.tls.client_cert_file: required with client_key_file",
            "upstreams.u.tls.peer_identities[0]: `spiffe://Bad/x`: the trust domain",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        assert!(
            !s.contains("allow_identities[0]") && !s.contains("allow_identities[1]"),
            "{s}"
        );
    }

    #[test]
    fn tls_fields_are_strict() {
        let bad = BASE.replace("alpn: [h2]", "alpn: [h2]\n      certfile: x");
        let e = crate::config::parse("t.yaml", &bad)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.yaml:9: listeners[0].tls"), "{e}");
        assert!(e.contains("certfile"), "{e}");
    }
}
