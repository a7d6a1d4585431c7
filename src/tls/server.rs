//! A listener's TLS: the server configuration (from certificate files, or minting per SNI for
//! interception), its rotation, and the accept path.
//!
//! Owns: [`ServerTls`] (one per TLS listener per snapshot; `Arc`-shared read-only by the
//! workers) and the handshake on accepted connections.
//!
//! Why the handshake is driven here instead of `monoio_rustls::TlsAcceptor::accept`: the
//! acceptor hides the rustls session, and we need it (the verified client certificate is the
//! caller's identity; the SNI names the intercepted host), and the acceptor cannot replay
//! bytes a sniffer already read. So the handshake runs on a plain `ServerConnection` over a
//! [`Replay`] socket, and the finished session is wrapped in monoio-rustls' stream for the
//! exchange (the stream reads what rustls already buffered before touching the socket).
//!
//! Invariants:
//! * Each handshake loads the current `Arc<ServerConfig>` once (an `ArcSwap` load): a rotation
//!   affects new handshakes only; open connections keep their session.
//! * The whole handshake is bounded by `tls.handshake_timeout_ms`; a failed handshake is
//!   counted by reason and closes the connection (rustls' alert is sent when it has one).
//! * The peer identity is read only from a certificate rustls verified against
//!   `client_ca_file`.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::{ServerConfig, ServerConnection};

use super::mint::{Minter, LEAF_TTL_SECS_DEFAULT};
use super::replay::Replay;
use super::stats::{self, HandshakeFailure};
use super::{reload, TlsError, TlsServerConfig};
use crate::proxy::io::Io;
use crate::worker::{ConnGuard, Worker};

/// Bytes read from the socket per handshake read.
pub const HANDSHAKE_READ_BYTES: usize = 16 * 1024;

/// A fixed certificate (termination mode); rotation replaces the whole `ServerConfig`.
#[derive(Debug)]
struct FixedCert(Arc<rustls::sign::CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A listener's TLS state.
pub struct ServerTls {
    listener: String,
    cfg: TlsServerConfig,
    current: ArcSwap<ServerConfig>,
    pub handshake_timeout_ms: u64,
}

impl ServerTls {
    /// Build from the listener's `tls:` block and register for rotation.
    pub fn build(listener: &str, cfg: &TlsServerConfig) -> Result<Arc<ServerTls>, String> {
        let sc = build_server_config(cfg).map_err(|e| format!("listener {listener}: tls: {e}"))?;
        let t = Arc::new(ServerTls {
            listener: listener.to_string(),
            cfg: cfg.clone(),
            current: ArcSwap::from_pointee(sc),
            handshake_timeout_ms: cfg.handshake_timeout_ms,
        });
        let r: Arc<dyn reload::Reloadable> = t.clone();
        reload::watch(&r);
        Ok(t)
    }

    pub fn is_intercept(&self) -> bool {
        self.cfg.is_intercept()
    }

    /// Does this listener verify client certificates?
    pub fn verifies_clients(&self) -> bool {
        self.cfg.client_ca_file.is_some()
    }

    /// The configuration new handshakes use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }
}

impl reload::Reloadable for ServerTls {
    fn describe(&self) -> String {
        format!("listener {}", self.listener)
    }

    fn files(&self) -> Vec<PathBuf> {
        [
            &self.cfg.cert_file,
            &self.cfg.key_file,
            &self.cfg.client_ca_file,
            &self.cfg.intercept_ca_cert_file,
            &self.cfg.intercept_ca_key_file,
        ]
        .into_iter()
        .flatten()
        .map(|f| PathBuf::from(&f.value))
        .collect()
    }

    fn reload(&self) -> Result<(), String> {
        let sc = build_server_config(&self.cfg)?;
        self.current.store(Arc::new(sc));
        Ok(())
    }
}

/// Build a rustls server config from a validated `tls:` block (reads the files).
pub fn build_server_config(c: &TlsServerConfig) -> Result<ServerConfig, String> {
    let provider = super::provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &c.client_ca_file {
        Some(f) => {
            let roots = super::load_roots(&f.value).map_err(|e| format!("client_ca_file: {e}"))?;
            let mut vb = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if c.require_client_cert == Some(false) {
                vb = vb.allow_unauthenticated();
            }
            let v = vb
                .build()
                .map_err(|e| format!("client_ca_file {}: {e}", f.value))?;
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let resolver: Arc<dyn ResolvesServerCert> = match (
        &c.cert_file,
        &c.key_file,
        &c.intercept_ca_cert_file,
        &c.intercept_ca_key_file,
    ) {
        (Some(cert), Some(key), _, _) => Arc::new(FixedCert(Arc::new(super::load_certified_key(
            &cert.value,
            &key.value,
        )?))),
        (_, _, Some(cert), Some(key)) => Arc::new(
            Minter::from_files(
                PathBuf::from(&cert.value),
                PathBuf::from(&key.value),
                LEAF_TTL_SECS_DEFAULT,
            )
            .map_err(|e| format!("intercept CA: {e}"))?,
        ),
        _ => return Err("no certificate source configured".into()),
    };
    let mut sc = builder.with_cert_resolver(resolver);
    sc.alpn_protocols = c.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(sc)
}

/// An accepted, handshaken TLS connection.
pub struct Accepted {
    pub io: Io,
    /// The SNI the client asked for.
    pub sni: Option<String>,
    /// The SPIFFE ID of a verified client certificate.
    pub peer_identity: Option<Arc<str>>,
    pub alpn: Option<Vec<u8>>,
}

/// Handshake on an accepted TCP connection whose first bytes (`already_read`, possibly empty)
/// were already read by a sniffer: they are replayed into the handshake.
pub async fn accept(
    tcp: TcpStream,
    already_read: Vec<u8>,
    tls: &ServerTls,
) -> Result<Accepted, TlsError> {
    let fd = tcp.as_raw_fd();
    let mut io = Replay::new(tcp, already_read);
    let mut conn = ServerConnection::new(tls.config())
        .map_err(|e| TlsError::Handshake(HandshakeFailure::Protocol, e.to_string()))?;
    let timeout = Duration::from_millis(tls.handshake_timeout_ms);
    match crate::proxy::timer::timeout(timeout, handshake(&mut io, &mut conn)).await {
        Err(_) => return Err(TlsError::Timeout(tls.handshake_timeout_ms)),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) => {}
    }
    let sni = conn.server_name().map(str::to_string);
    let peer_identity = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| super::spiffe::spiffe_id_of(c))
        .map(Arc::from);
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let stream = monoio_rustls::ServerTlsStream::new(io, conn);
    Ok(Accepted {
        io: Io::TlsServer(Box::new(stream), fd),
        sni,
        peer_identity,
        alpn,
    })
}

/// The entry point for protocol sniffing on a transparent listener: terminate TLS for a
/// connection whose ClientHello bytes were already read (`already_read_prefix`), with a leaf
/// minted for its SNI. The caller then serves the returned `Io` like any client connection
/// (and re-encrypts to the real upstream through an upstream with `tls.enabled`).
pub async fn accept_intercepted(
    stream: TcpStream,
    already_read_prefix: Vec<u8>,
    tls: &ServerTls,
) -> Result<Accepted, TlsError> {
    if !tls.is_intercept() {
        return Err(TlsError::NotIntercepting);
    }
    accept(stream, already_read_prefix, tls).await
}

/// Drive a server handshake to completion. Bytes read beyond the handshake are put back into
/// `io` for the TLS stream to read.
async fn handshake(io: &mut Replay, conn: &mut ServerConnection) -> Result<(), TlsError> {
    let mut pending: Vec<u8> = Vec::new();
    let mut read_buf: Vec<u8> = Vec::with_capacity(HANDSHAKE_READ_BYTES);
    loop {
        while conn.wants_write() {
            let mut out = Vec::new();
            conn.write_tls(&mut out)
                .map_err(|e| TlsError::Handshake(HandshakeFailure::Io, e.to_string()))?;
            let (r, _) = io.write_all(out).await;
            r.map_err(|e| TlsError::Handshake(HandshakeFailure::Io, e.to_string()))?;
        }
        if !conn.is_handshaking() {
            break;
        }
        if pending.is_empty() {
            read_buf.clear();
            let (r, b) = io.read(read_buf).await;
            read_buf = b;
            match r {
                Ok(0) => {
                    return Err(TlsError::Handshake(
                        HandshakeFailure::Eof,
                        "client closed during the handshake".into(),
                    ))
                }
                Ok(_) => pending.extend_from_slice(&read_buf),
                Err(e) => return Err(TlsError::Handshake(HandshakeFailure::Io, e.to_string())),
            }
        }
        let mut rd: &[u8] = &pending;
        let n = conn
            .read_tls(&mut rd)
            .map_err(|e| TlsError::Handshake(HandshakeFailure::Protocol, e.to_string()))?;
        pending.drain(..n);
        if let Err(e) = conn.process_new_packets() {
            // Send the alert rustls prepared, so the client learns why.
            let mut out = Vec::new();
            if conn.write_tls(&mut out).is_ok() && !out.is_empty() {
                let _ = io.write_all(out).await;
            }
            return Err(TlsError::Handshake(
                HandshakeFailure::of_rustls(&e),
                e.to_string(),
            ));
        }
        if n == 0 && !pending.is_empty() && conn.is_handshaking() {
            return Err(TlsError::Handshake(
                HandshakeFailure::Protocol,
                "TLS buffer full during the handshake".into(),
            ));
        }
    }
    io.unread(pending);
    Ok(())
}

/// Serve one connection accepted on a TLS listener: handshake, then the HTTP exchange loop
/// with the peer's identity attached.
pub async fn serve_tls(
    w: Rc<Worker>,
    listener: Arc<str>,
    tcp: TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
    tls: Arc<ServerTls>,
) {
    let accepted = accept(tcp, Vec::new(), &tls).await;
    drop(tls);
    match accepted {
        Ok(a) => {
            stats::handshake_ok();
            crate::proxy::exchange::serve_io(w, listener, a.io, peer, a.peer_identity, guard).await
        }
        Err(e) => {
            let r = e.reason();
            stats::handshake_failed(r);
            match r {
                HandshakeFailure::NoClientCert | HandshakeFailure::BadClientCert => {
                    tracing::info!(listener = %listener, %peer, reason = r.as_str(), "{e}")
                }
                _ => tracing::debug!(listener = %listener, %peer, reason = r.as_str(), "{e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Loc;
    use std::io::{Read, Write};

    fn intercept_config(dir: &std::path::Path) -> TlsServerConfig {
        super::super::ca::cmd_init(dir, "intercept.test", 1).unwrap();
        let f = |n: &str| Some(Loc::new(dir.join(n).display().to_string()));
        TlsServerConfig {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            require_client_cert: None,
            alpn: vec!["http/1.1".into()],
            intercept_ca_cert_file: f("ca.pem"),
            intercept_ca_key_file: f("ca-key.pem"),
            handshake_timeout_ms: 5_000,
        }
    }

    /// A sniffer read the first bytes of the ClientHello; `accept_intercepted` replays them,
    /// completes the handshake with a leaf minted for the SNI, and the HTTP bytes that follow
    /// arrive intact through the returned `Io`.
    #[test]
    fn intercepted_handshake_replays_sniffed_bytes() {
        let d = tempfile::tempdir().unwrap();
        let tls = ServerTls::build("t", &intercept_config(d.path())).unwrap();
        let ca_der = tls_ca_der(d.path());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca_der).unwrap();
            let cfg = rustls::ClientConfig::builder_with_provider(super::super::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from("api.example.test").unwrap();
            let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
            let sock = std::net::TcpStream::connect(addr).unwrap();
            let mut s = rustls::StreamOwned::new(conn, sock);
            s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
                .unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        });
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let (sni, got) = rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let l = monoio::net::TcpListener::from_std(listener).unwrap();
            let (tcp, _) = l.accept().await.unwrap();
            // Sniff: read a few bytes of the ClientHello, as protocol detection would.
            let mut tcp = tcp;
            let (r, prefix) = tcp.read(Vec::with_capacity(7)).await;
            assert_eq!(r.unwrap(), prefix.len());
            assert_eq!(prefix[0], 0x16, "a TLS handshake record");
            let a = accept_intercepted(tcp, prefix, &tls).await.unwrap();
            let mut io = a.io;
            let mut buf = Vec::new();
            while !buf.ends_with(b"\r\n\r\n") {
                let (r, b) = io.read_append(buf).await;
                buf = b;
                assert!(r.unwrap() > 0);
            }
            let (r, _) = io
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec(),
                )
                .await;
            r.unwrap();
            io.shutdown().await;
            (a.sni, String::from_utf8(buf).unwrap())
        });
        assert_eq!(sni.as_deref(), Some("api.example.test"));
        assert!(got.starts_with("GET /v1/models HTTP/1.1\r\n"), "{got}");
        let answer = client.join().unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("ok"),
            "{answer}"
        );
    }

    fn tls_ca_der(dir: &std::path::Path) -> rustls::pki_types::CertificateDer<'static> {
        super::super::load_certs(&dir.join("ca.pem").display().to_string())
            .unwrap()
            .remove(0)
    }

    #[test]
    fn termination_config_errors_name_the_files() {
        let d = tempfile::tempdir().unwrap();
        super::super::ca::cmd_init(&d.path().join("a"), "td", 1).unwrap();
        super::super::ca::cmd_issue(
            &d.path().join("a"),
            "spiffe://td/ns/x/sa/y",
            &["localhost".into()],
            &d.path().join("w"),
            1,
        )
        .unwrap();
        super::super::ca::cmd_init(&d.path().join("b"), "td", 1).unwrap();
        let p = |s: &str| Some(Loc::new(d.path().join(s).display().to_string()));
        let mut c = intercept_config(&d.path().join("i"));
        c.intercept_ca_cert_file = None;
        c.intercept_ca_key_file = None;
        c.cert_file = p("w/cert.pem");
        c.key_file = p("b/ca-key.pem");
        let e = build_server_config(&c).unwrap_err();
        assert!(
            e.contains("w/cert.pem") && e.contains("b/ca-key.pem"),
            "{e}"
        );
        c.key_file = p("w/key.pem");
        build_server_config(&c).unwrap();
        c.client_ca_file = p("w/key.pem");
        let e = build_server_config(&c).unwrap_err();
        assert!(
            e.contains("client_ca_file") && e.contains("no certificates"),
            "{e}"
        );
    }
}
