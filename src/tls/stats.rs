//! TLS counters: handshake failures by reason, certificate reloads, minted certificates.
//!
//! Owns: process-wide atomics written where the event happens (a worker's handshake, the
//! reload thread, a mint) and published as Prometheus counters by the telemetry thread on its
//! upkeep tick ([`publish`]). Why atomics and not `metrics::counter!` at the event: a worker
//! must not touch the metrics registry (hashing, locks); a relaxed `fetch_add` on a failure
//! path costs nothing that matters, and the set of labels is closed.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why an accepted TLS handshake failed (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client closed or reset before the handshake completed.
    Eof,
    /// No handshake within the listener's `tls.handshake_timeout_ms`.
    Timeout,
    /// A client certificate was required and none was sent.
    NoClientCert,
    /// The client certificate did not verify against `client_ca_file` (or expired...).
    BadClientCert,
    /// Interception: the client sent no SNI, so there is no name to mint a certificate for.
    NoSni,
    /// The client speaks no protocol version, cipher suite or ALPN protocol we offer.
    Incompatible,
    /// Not TLS, or a TLS protocol error (bad record, bad message, alert from the client).
    Protocol,
    /// A socket error while handshaking.
    Io,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 8] = [
        HandshakeFailure::Eof,
        HandshakeFailure::Timeout,
        HandshakeFailure::NoClientCert,
        HandshakeFailure::BadClientCert,
        HandshakeFailure::NoSni,
        HandshakeFailure::Incompatible,
        HandshakeFailure::Protocol,
        HandshakeFailure::Io,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Eof => "eof",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::NoClientCert => "no_client_cert",
            HandshakeFailure::BadClientCert => "bad_client_cert",
            HandshakeFailure::NoSni => "no_sni",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Io => "io",
        }
    }

    /// Classify a rustls error raised while accepting.
    pub fn of_rustls(e: &rustls::Error) -> Self {
        use rustls::Error as E;
        match e {
            E::NoCertificatesPresented => HandshakeFailure::NoClientCert,
            E::InvalidCertificate(_) | E::InvalidCertRevocationList(_) => {
                HandshakeFailure::BadClientCert
            }
            E::PeerIncompatible(_) | E::NoApplicationProtocol => HandshakeFailure::Incompatible,
            // What rustls reports when the resolver has no certificate: for the minting
            // resolver, only when the ClientHello carried no SNI.
            E::General(m) if m.contains("no server certificate") => HandshakeFailure::NoSni,
            _ => HandshakeFailure::Protocol,
        }
    }
}

static FAILURES: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
static HANDSHAKES: AtomicU64 = AtomicU64::new(0);
static RELOADS_OK: AtomicU64 = AtomicU64::new(0);
static RELOADS_FAILED: AtomicU64 = AtomicU64::new(0);
static MINTED: AtomicU64 = AtomicU64::new(0);

pub fn handshake_ok() {
    HANDSHAKES.fetch_add(1, Ordering::Relaxed);
}

pub fn handshake_failed(r: HandshakeFailure) {
    let i = HandshakeFailure::ALL
        .iter()
        .position(|x| *x == r)
        .unwrap_or(0);
    FAILURES[i].fetch_add(1, Ordering::Relaxed);
}

pub fn reloaded(ok: bool) {
    if ok {
        RELOADS_OK.fetch_add(1, Ordering::Relaxed);
    } else {
        RELOADS_FAILED.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn minted() {
    MINTED.fetch_add(1, Ordering::Relaxed);
}

pub fn minted_total() -> u64 {
    MINTED.load(Ordering::Relaxed)
}

/// Metric names (documented in docs/metrics.md).
pub const HANDSHAKES_TOTAL: &str = "sluice_tls_handshakes_total";
pub const HANDSHAKE_FAILURES_TOTAL: &str = "sluice_tls_handshake_failures_total";
pub const CERT_RELOADS_TOTAL: &str = "sluice_tls_cert_reloads_total";
pub const MINTED_CERTS_TOTAL: &str = "sluice_tls_minted_certs_total";

/// Publish the counters (telemetry thread).
pub fn publish() {
    metrics::counter!(HANDSHAKES_TOTAL).absolute(HANDSHAKES.load(Ordering::Relaxed));
    for (i, r) in HandshakeFailure::ALL.iter().enumerate() {
        let v = FAILURES[i].load(Ordering::Relaxed);
        if v > 0 {
            metrics::counter!(HANDSHAKE_FAILURES_TOTAL, "reason" => r.as_str()).absolute(v);
        }
    }
    metrics::counter!(CERT_RELOADS_TOTAL, "result" => "ok")
        .absolute(RELOADS_OK.load(Ordering::Relaxed));
    metrics::counter!(CERT_RELOADS_TOTAL, "result" => "error")
        .absolute(RELOADS_FAILED.load(Ordering::Relaxed));
    metrics::counter!(MINTED_CERTS_TOTAL).absolute(MINTED.load(Ordering::Relaxed));
}
