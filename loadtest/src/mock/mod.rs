//! `sluice-loadtest mock`: a thread-per-core mock model server (monoio, hand-written HTTP/1.1 on
//! `httparse`, optional rustls 0.23 with the `ring` provider).
//!
//! Owns: listener set-up, worker threads, the TLS acceptor and the shared request recorder.
//! Invariants: one `std` listener is bound once (no `SO_REUSEPORT`, so a busy port fails loudly
//! instead of silently splitting traffic with another process) and cloned into every worker;
//! `mock listening on ADDR` is printed only after every worker can accept. Trade-off: the
//! recorder is a global `Mutex` (touched only with `--record N > 0`), everything else is
//! per-core and lock-free.

pub mod dialect;
pub mod server;

use std::collections::VecDeque;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use thiserror::Error;

/// Accept backlog of the mock's listener (capped by net.core.somaxconn).
pub const LISTEN_BACKLOG: i32 = 4096;

/// Mock start-up errors.
#[derive(Debug, Error)]
pub enum MockError {
    #[error("cannot bind {addr}: {source} (is another process on that port?)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot start worker runtime: {0}")]
    Runtime(std::io::Error),
    #[error("--tls-cert and --tls-key must be given together")]
    TlsPair,
}

/// Mock server configuration (CLI flags).
#[derive(Debug, Clone)]
pub struct MockConfig {
    pub listen: SocketAddr,
    pub workers: usize,
    pub ttft_ms: u64,
    pub itl_ms: u64,
    pub tokens: u32,
    pub response_bytes: Option<usize>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub record: usize,
}

/// One recorded request, as served by `GET /__mock/requests`.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Lower-cased names; repeated headers are joined with `, `.
    pub headers: serde_json::Map<String, serde_json::Value>,
    /// The decoded body, lossily converted to UTF-8.
    pub body: String,
}

/// Bounded ring of the last N requests, shared by all workers.
#[derive(Debug)]
pub struct Recorder {
    cap: usize,
    items: Mutex<VecDeque<RecordedRequest>>,
}

impl Recorder {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            items: Mutex::new(VecDeque::with_capacity(cap.min(1024))),
        }
    }
    pub fn push(&self, r: RecordedRequest) {
        if self.cap == 0 {
            return;
        }
        let mut g = self.items.lock().unwrap_or_else(|p| p.into_inner());
        while g.len() >= self.cap {
            g.pop_front();
        }
        g.push_back(r);
    }
    pub fn snapshot_json(&self) -> Vec<u8> {
        let g = self.items.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::to_vec(&*g).unwrap_or_else(|_| b"[]".to_vec())
    }
    pub fn clear(&self) {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
    pub fn enabled(&self) -> bool {
        self.cap > 0
    }
}

/// A fault injected into every model request at runtime (`POST /__mock/fault`), so a test
/// can start and stop a 429/503 storm without restarting the mock. Atomics: read on every
/// request by every worker, written rarely by the control endpoint.
#[derive(Debug, Default)]
pub struct Fault {
    /// 0 = no fault.
    status: AtomicU16,
    retry_after_s: AtomicU64,
}

impl Fault {
    /// `Some((status, retry_after_s))` while a fault is on.
    pub fn get(&self) -> Option<(u16, u64)> {
        match self.status.load(Ordering::Acquire) {
            0 => None,
            s => Some((s, self.retry_after_s.load(Ordering::Acquire))),
        }
    }

    /// Apply a control body: `{"status": 503, "retry_after_s": 2}`; `{"status": null}` or
    /// `{}` clears. Errors name the problem.
    pub fn set_json(&self, body: &[u8]) -> Result<Option<(u16, u64)>, String> {
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
        let status = match v.get("status") {
            None | Some(serde_json::Value::Null) => 0,
            Some(s) => match s.as_u64() {
                Some(n) if (400..=599).contains(&n) => n as u16,
                _ => return Err("status must be 400..=599 or null".into()),
            },
        };
        let ra = v.get("retry_after_s").and_then(|r| r.as_u64()).unwrap_or(1);
        self.retry_after_s.store(ra.min(86_400), Ordering::Release);
        self.status.store(status, Ordering::Release);
        Ok(self.get())
    }
}

/// State shared (read-only apart from the recorder and the fault) by all workers.
pub struct Shared {
    pub cfg: MockConfig,
    pub recorder: Recorder,
    pub tls: Option<monoio_rustls::TlsAcceptor>,
    pub fault: Fault,
}

fn load_tls(cert: &PathBuf, key: &PathBuf) -> Result<monoio_rustls::TlsAcceptor, MockError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| MockError::Tls(format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| MockError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(MockError::Tls(format!(
            "{}: no certificates found",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| MockError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MockError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| MockError::Tls(e.to_string()))?;
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(monoio_rustls::TlsAcceptor::from(Arc::new(sc)))
}

/// A running mock: its bound address and worker threads.
pub struct MockHandle {
    pub addr: SocketAddr,
    pub threads: Vec<std::thread::JoinHandle<()>>,
}

/// Binds, starts the workers and returns once all of them accept.
pub fn start(cfg: MockConfig) -> Result<MockHandle, MockError> {
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => Some(load_tls(c, k)?),
        (None, None) => None,
        _ => return Err(MockError::TlsPair),
    };
    let listener = TcpListener::bind(cfg.listen).map_err(|source| MockError::Bind {
        addr: cfg.listen,
        source,
    })?;
    // std binds with a backlog of 128: a burst of 1,000 connects would overflow it and wait
    // for SYN retransmits (1 s, 3 s). Re-listening on Linux just raises the backlog.
    // SAFETY: the fd is the listener we own; listen() has no memory-safety preconditions.
    unsafe {
        libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), LISTEN_BACKLOG);
    }
    let addr = listener.local_addr().map_err(|source| MockError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let shared = Arc::new(Shared {
        recorder: Recorder::new(cfg.record),
        tls,
        fault: Fault::default(),
        cfg: cfg.clone(),
    });
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), MockError>>();
    let mut threads = Vec::new();
    for id in 0..cfg.workers.max(1) {
        let l = listener.try_clone().map_err(|source| MockError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let shared = shared.clone();
        let tx = tx.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("mock-{id}"))
                .spawn(move || server::worker(id, l, shared, tx))
                .map_err(MockError::Runtime)?,
        );
    }
    drop(tx);
    drop(listener);
    for _ in 0..cfg.workers.max(1) {
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(MockError::Runtime(std::io::Error::other(
                    "worker exited during start-up",
                )))
            }
        }
    }
    Ok(MockHandle { addr, threads })
}

/// Runs the mock until the process is killed.
pub fn run(cfg: MockConfig) -> Result<(), MockError> {
    let h = start(cfg)?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "mock listening on {}", h.addr);
    let _ = out.flush();
    drop(out);
    for t in h.threads {
        let _ = t.join();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Fault;

    #[test]
    fn fault_control_sets_and_clears() {
        let f = Fault::default();
        assert_eq!(f.get(), None);
        assert_eq!(
            f.set_json(br#"{"status":429,"retry_after_s":2}"#),
            Ok(Some((429, 2)))
        );
        assert_eq!(f.get(), Some((429, 2)));
        assert!(f.set_json(br#"{"status":200}"#).is_err());
        assert!(f.set_json(b"nope").is_err());
        assert_eq!(f.get(), Some((429, 2)));
        assert_eq!(f.set_json(br#"{"status":null}"#), Ok(None));
        assert_eq!(f.get(), None);
    }
}
