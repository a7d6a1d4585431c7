//! `sluice inject-webhook`: the mutating admission webhook that injects the sidecar into pods
//! as the API server creates them.
//!
//! Owns: the AdmissionReview round trip ([`review`]: request JSON in, response JSON out, pure
//! and golden-tested) and a small HTTPS server for it ([`run`]).
//!
//! Endpoints:
//! * `POST /inject`: inject pods that ask with `sluice.dev/inject: "true"` (label or
//!   annotation); everything else is allowed unchanged. For an `objectSelector` webhook.
//! * `POST /inject/namespace`: inject every pod that does not opt out. For a webhook whose
//!   `namespaceSelector` picks namespaces labelled `sluice-injection: enabled`.
//! * `GET /healthz`, `GET /ready`: 200, for the webhook Deployment's probes.
//!
//! Answers: an injected pod gets `allowed: true` with a base64 JSON Patch; a pod that is not
//! asked for, opted out, `hostNetwork` or already injected gets `allowed: true` and no patch
//! (so a re-invoked webhook changes nothing); a pod whose `sluice.dev/*` annotations are
//! invalid is refused (`allowed: false`, code 400, the field and the problem), because a pod
//! that asked for the proxy must not start without it. A request that is not an AdmissionReview
//! is an HTTP 400 with an OpenAI-shaped JSON error.
//!
//! Why threads and blocking sockets, not monoio: the webhook is not on the data path (the API
//! server calls it once per pod creation), and rustls' `StreamOwned` over a std socket with
//! read/write timeouts is the simplest thing that cannot stall. Robustness: at most
//! [`WEBHOOK_CONNECTIONS_MAX`] connections (more are closed at once), a head bounded by
//! [`WEBHOOK_HEAD_BYTES_MAX`], a body by [`WEBHOOK_BODY_BYTES_MAX`], each request must arrive
//! within [`WEBHOOK_REQUEST_TIMEOUT_MS`], idle keep-alive connections close after
//! [`WEBHOOK_IDLE_TIMEOUT_MS`], and the mutation runs under `catch_unwind` so even a bug answers
//! 500 instead of killing the connection thread silently.
//!
//! Certificates: read from `--cert`/`--key` (PEM) and re-read when either file changes
//! (checked on a handshake, at most every `--cert-check-interval-ms`,
//! [`CERT_CHECK_INTERVAL_MS_DEFAULT`]), so a cert-manager
//! rotation needs no restart. A bad new pair is logged and the old one kept.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::{json, Value};

use super::{inject_pod, patch, Options, Outcome, Policy};
use crate::error::{Classify, Side};

/// Concurrent connections; more are closed at once.
pub const WEBHOOK_CONNECTIONS_MAX: usize = 64;
/// Largest request head, in bytes.
pub const WEBHOOK_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Header fields accepted in one head.
pub const WEBHOOK_HEADERS_COUNT_MAX: usize = 64;
/// Largest AdmissionReview body, in bytes (the API server's own object limit is 3 MiB; a
/// review carries the object once for CREATE).
pub const WEBHOOK_BODY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Time a request (head and body) has to arrive once its first byte did, and to be written.
pub const WEBHOOK_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Time an idle keep-alive connection is kept (also bounds the TLS handshake).
pub const WEBHOOK_IDLE_TIMEOUT_MS: u64 = 30_000;
/// Requests served on one connection before it is closed.
pub const WEBHOOK_REQUESTS_PER_CONNECTION_MAX: usize = 1_000;
/// Default of how often a handshake may look at the certificate files for a rotation
/// (`--cert-check-interval-ms`).
pub const CERT_CHECK_INTERVAL_MS_DEFAULT: u64 = 10_000;

/// Errors of the webhook: its start-up (ours/the operator's) and bad requests (the caller's).
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{path}: {problem}")]
    Tls { path: String, problem: String },
    #[error("cannot bind {addr}: {err}")]
    Bind {
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error("not an AdmissionReview: {0}")]
    BadReview(String),
}

impl Classify for WebhookError {
    fn side(&self) -> Side {
        match self {
            WebhookError::BadReview(_) => Side::Downstream,
            _ => Side::Internal,
        }
    }
    fn status(&self) -> u16 {
        match self {
            WebhookError::BadReview(_) => 400,
            _ => 500,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            WebhookError::Tls { .. } => "tls_config",
            WebhookError::Bind { .. } => "bind_failed",
            WebhookError::BadReview(_) => "bad_admission_review",
        }
    }
}

/// Answer one AdmissionReview (the request body) with the response AdmissionReview.
pub fn review(body: &[u8], opts: &Options, policy: Policy) -> Result<Value, WebhookError> {
    let req: Value = serde_json::from_slice(body)
        .map_err(|e| WebhookError::BadReview(format!("invalid JSON: {e}")))?;
    let api_version = match req.get("apiVersion").and_then(Value::as_str) {
        Some(v @ ("admission.k8s.io/v1" | "admission.k8s.io/v1beta1")) => v.to_string(),
        Some(v) => {
            return Err(WebhookError::BadReview(format!(
                "apiVersion `{v}` is not admission.k8s.io/v1"
            )))
        }
        None => return Err(WebhookError::BadReview("no apiVersion".into())),
    };
    if req.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
        return Err(WebhookError::BadReview(
            "kind is not AdmissionReview".into(),
        ));
    }
    let request = req
        .get("request")
        .filter(|r| r.is_object())
        .ok_or_else(|| WebhookError::BadReview("no request".into()))?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .ok_or_else(|| WebhookError::BadReview("request.uid missing".into()))?
        .to_string();
    let answer = |response: Value| json!({"apiVersion": api_version, "kind": "AdmissionReview", "response": response});
    let allow = || json!({"uid": uid, "allowed": true});

    let kind = request.pointer("/kind/kind").and_then(Value::as_str);
    let operation = request.get("operation").and_then(Value::as_str);
    let sub = request.get("subResource").and_then(Value::as_str);
    if kind != Some("Pod") || operation != Some("CREATE") || sub.is_some_and(|s| !s.is_empty()) {
        return Ok(answer(allow()));
    }
    let Some(pod) = request.get("object").filter(|o| o.is_object()) else {
        return Err(WebhookError::BadReview(
            "request.object is not a pod".into(),
        ));
    };
    let ns = request
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = pod
        .pointer("/metadata/name")
        .or_else(|| pod.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut new_pod = pod.clone();
    match inject_pod(&mut new_pod, opts, policy, "pod") {
        Ok(Outcome::Injected) => {
            let ops = patch::diff(pod, &new_pod);
            let patch_json = serde_json::to_vec(&ops).unwrap_or_default();
            tracing::info!(namespace = ns, pod = name, uid, ops = ops.len(), "injected");
            Ok(answer(json!({
                "uid": uid,
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(patch_json),
            })))
        }
        Ok(Outcome::Skipped(why)) => {
            tracing::debug!(namespace = ns, pod = name, uid, reason = %why, "not injected");
            Ok(answer(allow()))
        }
        Err(e) => {
            tracing::warn!(namespace = ns, pod = name, uid, error = %e, "injection refused");
            Ok(answer(json!({
                "uid": uid,
                "allowed": false,
                "status": {
                    "code": e.status(),
                    "reason": "BadRequest",
                    "message": format!("sluice injection: {e}"),
                },
            })))
        }
    }
}

/// The webhook's settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub bind: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How often a handshake may look at the certificate files for a rotation.
    pub cert_check_interval_ms: u64,
    pub opts: Options,
}

/// Serve until the process is killed. Returns only on a start-up error.
pub fn run(cfg: WebhookConfig) -> Result<(), WebhookError> {
    let resolver = Arc::new(ReloadingCert::load(
        &cfg.cert,
        &cfg.key,
        Duration::from_millis(cfg.cert_check_interval_ms),
    )?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Tls {
            path: cfg.cert.display().to_string(),
            problem: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = Arc::new(sc);
    let listener = TcpListener::bind(cfg.bind).map_err(|err| WebhookError::Bind {
        addr: cfg.bind,
        err,
    })?;
    let addr = listener.local_addr().unwrap_or(cfg.bind);
    tracing::info!(%addr, "sluice inject-webhook listening");
    // Tests and scripts read this line to learn the port (`--bind 127.0.0.1:0`).
    println!("inject-webhook listening on {addr}");
    let _ = std::io::stdout().flush();
    let opts = Arc::new(cfg.opts);
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if active.fetch_add(1, Ordering::AcqRel) >= WEBHOOK_CONNECTIONS_MAX {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("inject-webhook: connection limit reached; closing a connection");
            drop(conn);
            continue;
        }
        let (tls, opts, active2) = (tls.clone(), opts.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("sluice-webhook-conn".into())
            .spawn(move || {
                if let Err(e) = serve_connection(conn, tls, &opts) {
                    tracing::debug!(error = %e, "inject-webhook connection ended");
                }
                active2.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("inject-webhook: cannot spawn a connection thread");
        }
    }
    Ok(())
}

type Tls = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

fn serve_connection(
    conn: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    opts: &Options,
) -> std::io::Result<()> {
    let idle = Duration::from_millis(WEBHOOK_IDLE_TIMEOUT_MS);
    conn.set_read_timeout(Some(idle))?;
    conn.set_write_timeout(Some(Duration::from_millis(WEBHOOK_REQUEST_TIMEOUT_MS)))?;
    let _ = conn.set_nodelay(true);
    let sc = rustls::ServerConnection::new(tls).map_err(std::io::Error::other)?;
    let mut s: Tls = rustls::StreamOwned::new(sc, conn);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    for _ in 0..WEBHOOK_REQUESTS_PER_CONNECTION_MAX {
        let req = match read_request(&mut s, &mut buf)? {
            ReadOutcome::Request(r) => r,
            ReadOutcome::Closed => return Ok(()),
            ReadOutcome::Refuse(status, msg) => {
                let body = error_body(status, msg);
                write_response(&mut s, status, "application/json", &body, body.len(), true)?;
                return Ok(());
            }
        };
        let (status, ctype, mut body) = route(&req, opts);
        let len = body.len();
        if req.method == "HEAD" {
            body.clear();
        }
        write_response(&mut s, status, ctype, &body, len, req.close)?;
        if req.close {
            return Ok(());
        }
    }
    Ok(())
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
    close: bool,
}

enum ReadOutcome {
    Request(Request),
    Closed,
    Refuse(u16, &'static str),
}

/// Read one request from `s`. `buf` carries bytes read past the previous request.
fn read_request(s: &mut Tls, buf: &mut Vec<u8>) -> std::io::Result<ReadOutcome> {
    let mut chunk = [0u8; 8192];
    let mut started: Option<Instant> = (!buf.is_empty()).then(Instant::now);
    if started.is_none() {
        // Between requests the idle timeout applies (a previous request shortened it).
        s.sock
            .set_read_timeout(Some(Duration::from_millis(WEBHOOK_IDLE_TIMEOUT_MS)))?;
    }
    let head_len;
    let (method, path, content_length, close);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; WEBHOOK_HEADERS_COUNT_MAX];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                head_len = n;
                method = req.method.unwrap_or("").to_string();
                path = req
                    .path
                    .unwrap_or("")
                    .split('?')
                    .next()
                    .unwrap_or("")
                    .to_string();
                let mut cl: Option<usize> = None;
                let mut conn_close = req.version == Some(0);
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        let v = std::str::from_utf8(h.value).ok().map(str::trim);
                        match v.and_then(|v| v.parse::<usize>().ok()) {
                            Some(n) if cl.is_none_or(|c| c == n) => cl = Some(n),
                            _ => return Ok(ReadOutcome::Refuse(400, "invalid Content-Length")),
                        }
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Ok(ReadOutcome::Refuse(
                            411,
                            "send the body with a Content-Length",
                        ));
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                        if v.split(',').any(|t| t.trim() == "close") {
                            conn_close = true;
                        }
                    }
                }
                content_length = cl.unwrap_or(0);
                close = conn_close;
                break;
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() >= WEBHOOK_HEAD_BYTES_MAX {
                    return Ok(ReadOutcome::Refuse(431, "request head too large"));
                }
            }
            Err(_) => return Ok(ReadOutcome::Refuse(400, "malformed HTTP request")),
        }
        if !read_some(s, buf, &mut chunk, &mut started)? {
            return if buf.is_empty() {
                Ok(ReadOutcome::Closed)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
    }
    if content_length > WEBHOOK_BODY_BYTES_MAX {
        return Ok(ReadOutcome::Refuse(413, "request body too large"));
    }
    let total = head_len + content_length;
    while buf.len() < total {
        if !read_some(s, buf, &mut chunk, &mut started)? {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    let body = buf[head_len..total].to_vec();
    buf.drain(..total);
    Ok(ReadOutcome::Request(Request {
        method,
        path,
        body,
        close,
    }))
}

/// One read into `buf`; `false` at end of stream. Enforces the per-request deadline from the
/// first byte on (before it, the idle timeout set on the socket applies).
fn read_some(
    s: &mut Tls,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
    started: &mut Option<Instant>,
) -> std::io::Result<bool> {
    if let Some(t0) = started {
        let left = Duration::from_millis(WEBHOOK_REQUEST_TIMEOUT_MS).saturating_sub(t0.elapsed());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        s.sock.set_read_timeout(Some(left))?;
    }
    let n = match s.read(chunk) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && buf.is_empty() => 0,
        Err(e) => return Err(e),
    };
    if n == 0 {
        return Ok(false);
    }
    if started.is_none() {
        *started = Some(Instant::now());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(true)
}

const JSON: &str = "application/json";

fn route(req: &Request, opts: &Options) -> (u16, &'static str, Vec<u8>) {
    let policy = match req.path.as_str() {
        "/healthz" | "/ready" => {
            return if req.method == "GET" || req.method == "HEAD" {
                (200, "text/plain", b"ok\n".to_vec())
            } else {
                (405, JSON, error_body(405, "method not allowed"))
            };
        }
        "/inject" => Policy::Explicit,
        "/inject/namespace" => Policy::Default,
        _ => return (404, JSON, error_body(404, "not found")),
    };
    if req.method != "POST" {
        return (405, JSON, error_body(405, "method not allowed"));
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        review(&req.body, opts, policy)
    }));
    match result {
        Ok(Ok(v)) => (200, JSON, serde_json::to_vec(&v).unwrap_or_default()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "inject-webhook: bad request");
            (e.status(), JSON, error_body(e.status(), &e.to_string()))
        }
        Err(_) => {
            tracing::error!("inject-webhook: internal error (panic) answering a review");
            (500, JSON, error_body(500, "internal error"))
        }
    }
}

fn error_body(status: u16, msg: &str) -> Vec<u8> {
    let code = match status {
        400 => "bad_request",
        404 => "not_found",
        405 => "method_not_allowed",
        411 => "length_required",
        413 => "body_too_large",
        431 => "head_too_large",
        _ => "internal_error",
    };
    let mut out = Vec::new();
    crate::error::write_openai_error(&mut out, status, code, msg);
    out
}

fn write_response(
    s: &mut Tls,
    status: u16,
    ctype: &str,
    body: &[u8],
    content_length: usize,
    close: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {ctype}\r\ncontent-length: {content_length}\r\n{}\r\n",
        crate::http1::canonical_reason(status),
        if close { "connection: close\r\n" } else { "" },
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()?;
    if close {
        s.conn.send_close_notify();
        let _ = s.flush();
    }
    Ok(())
}

/// The serving certificate, re-read from its files when they change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
    state: Mutex<CertState>,
}

#[derive(Debug)]
struct CertState {
    checked: Instant,
    stamp: Option<[FileStamp; 2]>,
    current: Arc<CertifiedKey>,
}

type FileStamp = (SystemTime, u64, u64);

fn stamp(p: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

impl ReloadingCert {
    /// Load the pair; an error names the file and the problem.
    pub fn load(cert: &Path, key: &Path, interval: Duration) -> Result<Self, WebhookError> {
        let stamps = stamp(cert).zip(stamp(key)).map(|(a, b)| [a, b]);
        let current = Arc::new(load_pair(cert, key)?);
        Ok(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            interval,
            state: Mutex::new(CertState {
                checked: Instant::now(),
                stamp: stamps,
                current,
            }),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.checked.elapsed() >= self.interval {
            st.checked = Instant::now();
            let now = stamp(&self.cert).zip(stamp(&self.key)).map(|(a, b)| [a, b]);
            if now.is_some() && now != st.stamp {
                match load_pair(&self.cert, &self.key) {
                    Ok(ck) => {
                        st.current = Arc::new(ck);
                        st.stamp = now;
                        tracing::info!(cert = %self.cert.display(), "inject-webhook: certificate reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "inject-webhook: new certificate rejected; keeping the old one");
                    }
                }
            }
        }
        st.current.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, WebhookError> {
    let err = |p: &Path, problem: String| WebhookError::Tls {
        path: p.display().to_string(),
        problem,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(err(cert, "no certificate in the file".into()));
    }
    let k = PrivateKeyDer::from_pem_file(key).map_err(|e| err(key, e.to_string()))?;
    CertifiedKey::from_der(certs, k, &rustls::crypto::ring::default_provider()).map_err(|e| {
        err(
            key,
            format!("does not match the certificate or is unusable: {e}"),
        )
    })
}
