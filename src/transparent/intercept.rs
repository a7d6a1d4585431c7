//! TLS interception on a transparent listener: the hosts listed in
//! `transparent.intercept_hosts` are decrypted, served as HTTP (routes, filters, inspection,
//! metrics), and re-encrypted to their original destination.
//!
//! Owns:
//! * [`Intercept`]: a listener's compiled interception settings, built once per snapshot on
//!   the control thread (precommit) and shared read-only (`Arc`) by the workers: the host
//!   patterns and the rustls `ClientConfig` that verifies the real upstreams (system roots,
//!   plus `intercept_upstream_ca_file` if set, which is watched for rotation);
//! * [`TlsOrigin`]: what an intercepted connection carries into the exchange (inside
//!   `ConnDst`) so that the original-destination upstream re-originates TLS with the
//!   client's SNI and full chain and host-name verification;
//! * [`serve`]: the hand-over at the sniffer's `HOOK(tls-interception)`: the handshake with a
//!   leaf minted for the SNI (`tls::server::accept_intercepted`, replaying the sniffed
//!   ClientHello bytes), then the ordinary HTTP connection loop.
//!
//! Invariants:
//! * Only a server name that matches a pattern *and* is a valid DNS name is intercepted;
//!   everything else (no SNI, IP literals, other hosts) keeps the raw pass-through, so the
//!   client verifies the real server as without sluice.
//! * An intercepted connection keeps the `Intercept` it was accepted with (an `Arc` in its
//!   `ConnDst`): a reload that drops interception never turns it into plain TCP to port 443.
//! * The upstream side is never weakened: the real certificate must chain to the trusted
//!   roots and name the client's SNI, or the exchange fails with `502 upstream_tls_failed`.
//! * A failed client handshake is counted (`sluice_tls_handshake_failures_total{reason}` and
//!   `sluice_transparent_errors_total{code="tls_intercept_failed"}`) and logged at debug
//!   with the reason only; the connection is closed.
//!
//! Why here and not in `tls`: deciding *which* connections to decrypt, and where the
//! decrypted stream goes, is transparent-mode routing; `tls` provides the handshake and the
//! certificates, `proxy` the exchange.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use monoio::net::TcpStream;
use rustls::pki_types::ServerName;

use super::{ConnDst, TransparentConfig, TransparentError};
use crate::tls::server::ServerTls;
use crate::worker::{ConnGuard, Worker};

/// Initial capacity of the read buffer of a decrypted connection.
const DECRYPTED_READ_BYTES_INITIAL: usize = 16 * 1024;

/// A transparent listener's interception settings, compiled.
pub struct Intercept {
    hosts: Vec<String>,
    connector: monoio_rustls::TlsConnector,
    /// Hash of the settings (patterns, CA file path and contents): part of the identity of
    /// the original-destination upstreams (and their pooled connections) built with it.
    pub fingerprint: u64,
}

impl std::fmt::Debug for Intercept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intercept")
            .field("hosts", &self.hosts)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Intercept {
    /// Whether connections for server name `sni` are intercepted.
    pub fn matches(&self, sni: &str) -> bool {
        self.hosts.iter().any(|p| super::sni_matches(p, sni))
    }

    /// The connector re-originating TLS to intercepted hosts (shared `ClientConfig`).
    pub fn connector(&self) -> &monoio_rustls::TlsConnector {
        &self.connector
    }
}

/// Where and how an intercepted connection's requests are re-encrypted.
#[derive(Clone)]
pub struct TlsOrigin {
    /// The client's SNI: sent upstream, and the name the upstream certificate must carry.
    pub sni: Arc<str>,
    pub server_name: ServerName<'static>,
    pub intercept: Arc<Intercept>,
}

impl std::fmt::Debug for TlsOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOrigin").field("sni", &self.sni).finish()
    }
}

impl PartialEq for TlsOrigin {
    fn eq(&self, o: &Self) -> bool {
        self.sni == o.sni && Arc::ptr_eq(&self.intercept, &o.intercept)
    }
}
impl Eq for TlsOrigin {}

/// Compile a listener's interception settings (control thread: reads the CA files). `None`
/// when it intercepts nothing.
pub fn build(listener: &str, t: &TransparentConfig) -> Result<Option<Arc<Intercept>>, String> {
    if t.intercept_hosts.is_empty() {
        return Ok(None);
    }
    let what = format!("{listener} (transparent interception)");
    let (roots, source) = match &t.intercept_upstream_ca_file {
        Some(f) => {
            let src = crate::tls::client::RootsSource {
                system_roots: true,
                ca_file: f.value.clone(),
            };
            let roots = src.build().map_err(|e| {
                format!("listener {listener}: transparent.intercept_upstream_ca_file: {e}")
            })?;
            (roots, Some(src))
        }
        None => (system_roots(), None),
    };
    let cfg = crate::tls::client::client_config(&what, roots, source, None, &[])?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.intercept_hosts.hash(&mut h);
    if let Some(f) = &t.intercept_upstream_ca_file {
        f.value.hash(&mut h);
        std::fs::read(&f.value).unwrap_or_default().hash(&mut h);
    }
    Ok(Some(Arc::new(Intercept {
        hosts: t.intercept_hosts.iter().map(|h| h.value.clone()).collect(),
        connector: monoio_rustls::TlsConnector::from(Arc::new(cfg)),
        fingerprint: h.finish(),
    })))
}

fn system_roots() -> rustls::RootCertStore {
    let mut r = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = r.add(c);
    }
    if r.is_empty() {
        r.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    r
}

/// A sniffed TLS connection to intercept.
pub struct Decision {
    /// Its original destination, with the [`TlsOrigin`] to re-encrypt with.
    pub dst: ConnDst,
    /// The listener's TLS (interception mode: mints the leaf).
    pub server_tls: Arc<ServerTls>,
}

/// The interception decision for a sniffed TLS connection: `Some` when its server name is
/// configured for interception, the listener can mint certificates, and the original
/// destination is known.
pub fn decide(
    l: &crate::snapshot::ListenerRt,
    dst: Option<&ConnDst>,
    sni: Option<&str>,
) -> Option<Decision> {
    let ic = l.intercept.as_ref()?;
    let tls = l.tls.as_ref().filter(|t| t.is_intercept())?;
    let sni = sni?;
    let d = dst?;
    if !ic.matches(sni) {
        return None;
    }
    let server_name = match ServerName::try_from(sni.to_string()) {
        Ok(n @ ServerName::DnsName(_)) => n,
        _ => return None,
    };
    Some(Decision {
        dst: ConnDst {
            original: d.original,
            target: d.target,
            tls: Some(TlsOrigin {
                sni: Arc::from(sni),
                server_name,
                intercept: ic.clone(),
            }),
        },
        server_tls: tls.clone(),
    })
}

/// Terminate the client's TLS (replaying the sniffed ClientHello bytes) and serve the
/// decrypted connection like any HTTP connection of the listener.
pub async fn serve(
    w: Rc<Worker>,
    listener: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
    prefix: Vec<u8>,
    decision: Decision,
) {
    let Decision { dst, server_tls } = decision;
    let accepted = crate::tls::server::accept_intercepted(stream, prefix, &server_tls).await;
    drop(server_tls);
    match accepted {
        Ok(a) => {
            crate::tls::stats::handshake_ok();
            w.transparent.stats.borrow_mut().intercepted(&listener);
            let sni = dst.tls.as_ref().map(|o| o.sni.clone()).unwrap_or_default();
            tracing::debug!(listener = %listener, %peer, sni = %sni, target = %dst.target, "TLS intercepted");
            crate::proxy::exchange::serve_connection_with(
                w,
                listener,
                a.io,
                peer,
                guard,
                Vec::with_capacity(DECRYPTED_READ_BYTES_INITIAL),
                Some(dst),
                a.peer_identity,
            )
            .await
        }
        Err(e) => {
            let reason = e.reason();
            crate::tls::stats::handshake_failed(reason);
            let sni = dst.tls.as_ref().map(|o| o.sni.clone()).unwrap_or_default();
            tracing::debug!(listener = %listener, %peer, sni = %sni, reason = reason.as_str(), "interception handshake failed");
            super::count_error(&w, &listener, peer, &TransparentError::Intercept(e));
        }
    }
}
