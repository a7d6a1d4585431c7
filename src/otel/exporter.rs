//! The `sluice-otel` exporter thread and its minimal OTLP/HTTP client.
//!
//! Owns: batching spans from the queue, encoding them (`super::proto`), POSTing them over one
//! HTTP/1.1 keep-alive connection (plain `std::net::TcpStream`), counting outcomes, rate-limited
//! failure logging, and the bounded flush at shutdown.
//!
//! Invariants:
//! * Every socket operation runs under a deadline of `export_timeout_ms` per request, so one
//!   export never takes longer than that (name resolution excepted: it uses the system resolver;
//!   IP-literal endpoints never block there).
//! * A failed batch is dropped and counted, never queued again. The one retry is an immediate
//!   resend when a *reused* keep-alive connection turns out to be closed by the peer (the usual
//!   idle-timeout race); a collector that did process the first attempt may then see the batch
//!   twice, which tracing backends tolerate.
//! * After any error the connection is discarded; the next export reconnects.
//! * Configured header values are written to the socket and nowhere else.
//! * [`OtelHandle::shutdown`] returns within `2 × export_timeout_ms + 1 s`: an in-flight export
//!   plus the flush; past that the thread is detached (it is stuck in name resolution at worst).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::proto::{self, Origin};
use super::{
    names, AttrValue, Endpoint, ExportError, Msg, OtelConfig, OtelTx, SpanRecord, Stats,
    EXPORT_BODY_MAX_BYTES, SCOPE_NAME, SCOPE_VERSION, WARN_INTERVAL_SECS,
};
use crate::error::Classify;

/// Largest response head (status line and headers) read from the collector.
const RESPONSE_HEAD_MAX_BYTES: usize = 16 * 1024;
/// Largest response body read (and discarded) to keep the connection reusable; a larger one
/// closes the connection instead.
const RESPONSE_BODY_MAX_BYTES: usize = 64 * 1024;
/// Response headers parsed at most.
const RESPONSE_HEADERS_MAX: usize = 64;
/// The encode buffer is shrunk back to this after an unusually large batch.
const ENCODE_BUF_KEEP_BYTES: usize = 1 << 20;
/// Grace added to the shutdown wait on top of the export and flush deadlines.
const SHUTDOWN_GRACE_MS: u64 = 1000;

/// Owner's handle on the exporter thread.
pub struct OtelHandle {
    stop: Arc<AtomicBool>,
    wake: SyncSender<Msg>,
    done: Option<Receiver<()>>,
    thread: Option<JoinHandle<()>>,
    wait_max: Duration,
}

impl OtelHandle {
    /// Flush what is queued (bounded by `export_timeout_ms`) and stop the thread. Returns within
    /// `2 × export_timeout_ms + 1 s` even when the collector hangs.
    pub fn shutdown(mut self) {
        self.signal_stop();
        let (Some(done), Some(thread)) = (self.done.take(), self.thread.take()) else {
            return;
        };
        match done.recv_timeout(self.wait_max) {
            // Finished (or panicked, which drops the sender): join cannot block now.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if thread.join().is_err() {
                    tracing::error!("otel exporter thread panicked");
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    wait_ms = self.wait_max.as_millis() as u64,
                    "otel exporter did not stop in time; detaching it"
                );
            }
        }
    }

    fn signal_stop(&self) {
        self.stop.store(true, Ordering::Release);
        // Best effort: if the queue is full the exporter is busy and sees the flag next loop.
        let _ = self.wake.try_send(Msg::Wake);
    }
}

impl Drop for OtelHandle {
    /// Dropping without `shutdown` stops the thread without waiting for it.
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.signal_stop();
        }
    }
}

/// Start the exporter thread `sluice-otel`.
///
/// With an invalid configuration (see [`OtelConfig::validate`]) or when the thread cannot be
/// spawned, the error is logged and the returned [`OtelTx`] drops (and counts) every span.
pub fn start(cfg: &OtelConfig) -> (OtelTx, OtelHandle) {
    let queue = cfg.queue_spans_max.clamp(1, super::QUEUE_SPANS_MAX_LIMIT);
    let (tx, rx) = mpsc::sync_channel::<Msg>(queue);
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = mpsc::sync_channel::<()>(1);
    let timeout = Duration::from_millis(cfg.export_timeout_ms.max(1));
    let mut handle = OtelHandle {
        stop: stop.clone(),
        wake: tx.clone(),
        done: None,
        thread: None,
        wait_max: timeout * 2 + Duration::from_millis(SHUTDOWN_GRACE_MS),
    };
    let otel_tx = OtelTx {
        tx,
        stats: stats.clone(),
    };
    let endpoint = match cfg.validate().and_then(|()| Endpoint::parse(&cfg.endpoint)) {
        Ok(ep) => ep,
        Err(e) => {
            tracing::error!(error = %e, "otel: invalid configuration; spans will be dropped");
            return (otel_tx, handle);
        }
    };
    let exporter = Exporter {
        rx,
        stop,
        stats,
        queue_max: queue,
        batch_max: cfg.batch_spans_max,
        interval: Duration::from_millis(cfg.export_interval_ms.max(1)),
        timeout,
        origin: Origin {
            resource: vec![("service.name", AttrValue::Str(cfg.service_name.clone()))],
            scope_name: SCOPE_NAME,
            scope_version: SCOPE_VERSION,
        },
        client: Client::new(endpoint, &cfg.headers),
        body: Vec::new(),
        warn: WarnLimiter::default(),
    };
    match std::thread::Builder::new()
        .name("sluice-otel".into())
        .spawn(move || {
            crate::background::lower_priority();
            exporter.run();
            let _ = done_tx.send(());
        }) {
        Ok(t) => {
            handle.thread = Some(t);
            handle.done = Some(done_rx);
        }
        Err(e) => {
            tracing::error!(error = %e, "otel: cannot spawn the exporter thread; spans will be dropped");
        }
    }
    (otel_tx, handle)
}

struct Exporter {
    rx: Receiver<Msg>,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    queue_max: usize,
    batch_max: usize,
    interval: Duration,
    timeout: Duration,
    origin: Origin,
    client: Client,
    body: Vec<u8>,
    warn: WarnLimiter,
}

impl Exporter {
    fn run(mut self) {
        let mut batch: Vec<SpanRecord> = Vec::with_capacity(self.batch_max);
        // When the oldest span of the current batch must be sent by.
        let mut due: Option<Instant> = None;
        loop {
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            let msg = match due {
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(d) => self
                    .rx
                    .recv_timeout(d.saturating_duration_since(Instant::now())),
            };
            match msg {
                Ok(Msg::Span(span)) => {
                    if batch.is_empty() {
                        due = Some(Instant::now() + self.interval);
                    }
                    batch.push(*span);
                    if batch.len() >= self.batch_max {
                        self.export(&mut batch, Instant::now() + self.timeout);
                        due = None;
                    }
                }
                Ok(Msg::Wake) => {}
                Err(RecvTimeoutError::Timeout) => {
                    self.export(&mut batch, Instant::now() + self.timeout);
                    due = None;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.flush(batch);
    }

    /// Export what is queued until the queue is empty or the flush deadline passes; whatever is
    /// left then is dropped and counted.
    fn flush(&mut self, mut batch: Vec<SpanRecord>) {
        let deadline = Instant::now() + self.timeout;
        loop {
            while batch.len() < self.batch_max {
                match self.rx.try_recv() {
                    Ok(Msg::Span(s)) => batch.push(*s),
                    Ok(Msg::Wake) => {}
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            if batch.is_empty() || Instant::now() >= deadline {
                break;
            }
            self.export(&mut batch, deadline);
        }
        let mut left = batch.len() as u64;
        batch.clear();
        // Count what is still queued; bounded so that producers still sending cannot keep the
        // thread here (spans arriving after this are lost with the receiver, uncounted).
        for _ in 0..self.queue_max {
            match self.rx.try_recv() {
                Ok(Msg::Span(_)) => left += 1,
                Ok(Msg::Wake) => {}
                Err(_) => break,
            }
        }
        if left > 0 {
            self.stats.dropped_export.fetch_add(left, Ordering::Relaxed);
            metrics::counter!(names::SPANS_DROPPED_TOTAL, "reason" => "shutdown").increment(left);
            tracing::warn!(
                spans = left,
                "otel: spans dropped at shutdown (flush deadline)"
            );
        }
    }

    /// Export `batch` (then empty it), counting the outcome.
    fn export(&mut self, batch: &mut Vec<SpanRecord>, deadline: Instant) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let result = self.encode_and_send(batch, deadline);
        batch.clear();
        match result {
            Ok(()) => {
                self.stats.exported.fetch_add(n, Ordering::Relaxed);
                metrics::counter!(names::SPANS_EXPORTED_TOTAL).increment(n);
            }
            Err(e) => {
                self.stats.export_failures.fetch_add(1, Ordering::Relaxed);
                self.stats.dropped_export.fetch_add(n, Ordering::Relaxed);
                metrics::counter!(names::EXPORT_FAILURES_TOTAL, "code" => e.code()).increment(1);
                metrics::counter!(names::SPANS_DROPPED_TOTAL, "reason" => "export_failed")
                    .increment(n);
                self.warn.failed(&e, n, &self.client.endpoint.authority);
            }
        }
        if self.body.capacity() > ENCODE_BUF_KEEP_BYTES {
            self.body = Vec::new();
        }
    }

    fn encode_and_send(
        &mut self,
        batch: &[SpanRecord],
        deadline: Instant,
    ) -> Result<(), ExportError> {
        let len = proto::request_len(&self.origin, batch);
        if len > EXPORT_BODY_MAX_BYTES {
            return Err(ExportError::TooLarge {
                spans: batch.len(),
                bytes: len,
                limit: EXPORT_BODY_MAX_BYTES,
            });
        }
        self.body.clear();
        proto::encode_request(&mut self.body, &self.origin, batch);
        self.client.post(&self.body, deadline, self.timeout)
    }
}

/// At most one warning per [`WARN_INTERVAL_SECS`], carrying the number of suppressed ones.
#[derive(Default)]
struct WarnLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    fn failed(&mut self, e: &ExportError, spans: u64, authority: &str) {
        let now = Instant::now();
        if let Some(last) = self.last {
            if now.duration_since(last) < Duration::from_secs(WARN_INTERVAL_SECS) {
                self.suppressed += 1;
                return;
            }
        }
        tracing::warn!(
            collector = authority,
            error = %e,
            code = e.code(),
            spans_dropped = spans,
            failures_suppressed = self.suppressed,
            "otel: export failed; batch dropped"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

// ---- HTTP/1.1 client -----------------------------------------------------------------------

struct Client {
    endpoint: Endpoint,
    /// Request line and fixed headers, up to (not including) `content-length`.
    head_prefix: Vec<u8>,
    conn: Option<TcpStream>,
    resp: Vec<u8>,
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn peer_closed(e: &ExportError) -> bool {
    matches!(e, ExportError::Io(io) if matches!(
        io.kind(),
        std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::UnexpectedEof
    ))
}

impl Client {
    fn new(endpoint: Endpoint, headers: &std::collections::BTreeMap<String, String>) -> Client {
        let mut h = Vec::with_capacity(256);
        h.extend_from_slice(b"POST ");
        h.extend_from_slice(endpoint.path.as_bytes());
        h.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        h.extend_from_slice(endpoint.authority.as_bytes());
        h.extend_from_slice(b"\r\nuser-agent: sluice/");
        h.extend_from_slice(SCOPE_VERSION.as_bytes());
        h.extend_from_slice(b"\r\ncontent-type: application/x-protobuf\r\n");
        for (k, v) in headers {
            h.extend_from_slice(k.as_bytes());
            h.extend_from_slice(b": ");
            h.extend_from_slice(v.trim().as_bytes());
            h.extend_from_slice(b"\r\n");
        }
        Client {
            endpoint,
            head_prefix: h,
            conn: None,
            resp: Vec::with_capacity(1024),
        }
    }

    fn post(
        &mut self,
        body: &[u8],
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), ExportError> {
        let reused = self.conn.is_some();
        let mut r = self.post_once(body, deadline, timeout);
        if r.as_ref().is_err_and(peer_closed) && reused {
            r = self.post_once(body, deadline, timeout);
        }
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    fn remaining(deadline: Instant, timeout: Duration) -> Result<Duration, ExportError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(ExportError::Timeout {
                timeout_ms: timeout.as_millis() as u64,
            })
        } else {
            Ok(left)
        }
    }

    fn connect(&self, deadline: Instant, timeout: Duration) -> Result<TcpStream, ExportError> {
        let authority = &self.endpoint.authority;
        let addrs = (self.endpoint.host.as_str(), self.endpoint.port)
            .to_socket_addrs()
            .map_err(|source| ExportError::Resolve {
                authority: authority.clone(),
                source,
            })?;
        let mut last = None;
        for addr in addrs {
            let left = Self::remaining(deadline, timeout)?;
            match TcpStream::connect_timeout(&addr, left) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) if timed_out(&e) => ExportError::Timeout {
                timeout_ms: timeout.as_millis() as u64,
            },
            Some(source) => ExportError::Connect {
                authority: authority.clone(),
                source,
            },
            None => ExportError::Resolve {
                authority: authority.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            },
        })
    }

    fn post_once(
        &mut self,
        body: &[u8],
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), ExportError> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect(deadline, timeout)?,
        };
        let io = |e: std::io::Error| {
            if timed_out(&e) {
                ExportError::Timeout {
                    timeout_ms: timeout.as_millis() as u64,
                }
            } else {
                ExportError::Io(e)
            }
        };

        // Request: head then body, each write under the remaining deadline.
        let mut head = Vec::with_capacity(self.head_prefix.len() + 40);
        head.extend_from_slice(&self.head_prefix);
        head.extend_from_slice(b"content-length: ");
        head.extend_from_slice(body.len().to_string().as_bytes());
        head.extend_from_slice(b"\r\n\r\n");
        for part in [&head[..], body] {
            let mut buf = part;
            while !buf.is_empty() {
                conn.set_write_timeout(Some(Self::remaining(deadline, timeout)?))
                    .map_err(io)?;
                match conn.write(buf) {
                    Ok(0) => return Err(io(std::io::ErrorKind::WriteZero.into())),
                    Ok(n) => buf = &buf[n..],
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io(e)),
                }
            }
        }

        // Response head.
        self.resp.clear();
        let (status, head_len, content_length, reusable) = loop {
            let mut headers = [httparse::EMPTY_HEADER; RESPONSE_HEADERS_MAX];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&self.resp) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = parsed.code.unwrap_or(0);
                    if (100..200).contains(&status) {
                        // Interim response (e.g. 100 Continue): skip it.
                        self.resp.drain(..n);
                        continue;
                    }
                    let mut content_length = None;
                    let mut reusable = parsed.version == Some(1);
                    for h in parsed.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            content_length = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<usize>().ok());
                            if content_length.is_none() {
                                return Err(ExportError::BadResponse("invalid content-length"));
                            }
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            // Chunked body: not worth decoding; close instead.
                            reusable = false;
                        } else if h.name.eq_ignore_ascii_case("connection")
                            && h.value.eq_ignore_ascii_case(b"close")
                        {
                            reusable = false;
                        }
                    }
                    break (status, n, content_length, reusable);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(ExportError::BadResponse("unparseable response head")),
            }
            if self.resp.len() >= RESPONSE_HEAD_MAX_BYTES {
                return Err(ExportError::BadResponse("response head too large"));
            }
            let n = Self::read_some(&mut conn, &mut self.resp, deadline).map_err(io)?;
            if n == 0 {
                return Err(if self.resp.is_empty() {
                    // Closed before answering: on a reused connection this is the idle race.
                    ExportError::Io(std::io::ErrorKind::UnexpectedEof.into())
                } else {
                    ExportError::BadResponse("connection closed inside the response head")
                });
            }
        };

        // Response body: read and discard to keep the connection, when that is cheap.
        let keep = match content_length {
            Some(cl) if reusable && cl <= RESPONSE_BODY_MAX_BYTES => {
                let mut have = self.resp.len() - head_len;
                while have < cl {
                    let n = Self::read_some(&mut conn, &mut self.resp, deadline).map_err(io)?;
                    if n == 0 {
                        return Err(ExportError::BadResponse(
                            "connection closed inside the body",
                        ));
                    }
                    have += n;
                }
                // Anything past the body would be an unsolicited response: do not reuse.
                have == cl
            }
            _ => false,
        };
        if keep {
            self.conn = Some(conn);
        }
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(ExportError::Status(status))
        }
    }

    /// One read of at most 4 KiB appended to `buf`, under the remaining deadline.
    fn read_some(
        conn: &mut TcpStream,
        buf: &mut Vec<u8>,
        deadline: Instant,
    ) -> std::io::Result<usize> {
        const READ_CHUNK_BYTES: usize = 4096;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        conn.set_read_timeout(Some(left))?;
        let start = buf.len();
        buf.resize(start + READ_CHUNK_BYTES, 0);
        loop {
            match conn.read(&mut buf[start..]) {
                Ok(n) => {
                    buf.truncate(start + n);
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    buf.truncate(start);
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_has_required_headers_and_configured_ones() {
        let ep = Endpoint::parse("http://127.0.0.1:4318/v1/traces").expect("valid");
        let mut headers = std::collections::BTreeMap::new();
        headers.insert("authorization".to_owned(), "Bearer s3cret".to_owned());
        let c = Client::new(ep, &headers);
        let head = String::from_utf8(c.head_prefix.clone()).expect("ascii");
        assert!(head.starts_with("POST /v1/traces HTTP/1.1\r\nhost: 127.0.0.1:4318\r\n"));
        assert!(head.contains("content-type: application/x-protobuf\r\n"));
        assert!(head.ends_with("authorization: Bearer s3cret\r\n"));
    }
}
