//! OpenTelemetry trace export: spans from the proxy to an OTLP/HTTP (protobuf) collector.
//!
//! Owns: [`OtelConfig`] and its validation, the span record producers fill ([`SpanRecord`]),
//! the bounded span queue ([`OtelTx`]), the exporter thread `sluice-otel` ([`start`],
//! [`OtelHandle`]), W3C `traceparent` helpers ([`parse_traceparent`], [`format_traceparent`])
//! and the OTLP protobuf encoding (`proto`).
//!
//! Data flow: a producer (the telemetry thread) builds a [`SpanRecord`] and calls
//! [`OtelTx::try_send`]. The exporter thread collects spans into a batch of at most
//! `batch_spans_max`, or whatever arrived within `export_interval_ms`, encodes one
//! `ExportTraceServiceRequest` and POSTs it over HTTP/1.1 keep-alive to `endpoint`.
//!
//! Invariants:
//! * A producer is never blocked: `try_send` is one non-blocking channel operation. When the
//!   queue is full (or the exporter is gone) the span is dropped and counted in
//!   `sluice_otel_spans_dropped_total{reason}` and [`OtelTx::dropped`].
//! * Bounded memory: at most `queue_spans_max` spans wait in the queue, plus one batch of at most
//!   `batch_spans_max` being exported, plus its encoded body (capped at
//!   [`EXPORT_BODY_MAX_BYTES`]). A span costs `size_of::<SpanRecord>()` plus its strings.
//!   Spans travel boxed: the std bounded channel preallocates every slot, so the queue's fixed
//!   cost is `queue_spans_max` pointers rather than `queue_spans_max` whole records.
//! * Never retries forever: a batch that fails to export is dropped (counted in
//!   `sluice_otel_export_failures_total` and as dropped spans); the only retry is one immediate
//!   resend when a reused keep-alive connection turns out to be closed by the peer.
//! * Every network operation has a timeout (`export_timeout_ms`), so [`OtelHandle::shutdown`] is
//!   bounded.
//! * Values of `headers` (they may hold credentials) are never logged, not even in validation
//!   errors; only header names are.
//! * Failures are logged at most once per [`WARN_INTERVAL_SECS`] (with a count of the suppressed
//!   ones), so a dead collector cannot flood the log.
//!
//! Trade-offs:
//! * A dedicated OS thread with blocking std sockets, not a task on a monoio worker: export is
//!   rare, latency-insensitive work, and a slow collector must never stall a core that serves
//!   requests. One thread for the whole process keeps a single connection to the collector.
//! * Hand-written protobuf (see `proto`): five message types do not justify `prost`/`protoc`
//!   in the build; correctness is checked against the official decoder in `tests/otel_export.rs`.
//! * Plain `http://` only: TLS to the collector is not supported yet (run a local collector or
//!   a sidecar that terminates TLS).

mod exporter;
pub mod proto;
mod traceparent;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;

use crate::error::{Classify, Side};

pub use exporter::{start, OtelHandle};
pub use traceparent::{
    format_traceparent, new_span_id, new_trace_id, parse_traceparent, to_hex, TraceParent,
    TRACEPARENT_LEN_BYTES,
};

/// Default capacity of the span queue between producers and the exporter thread.
pub const QUEUE_SPANS_MAX_DEFAULT: usize = 8192;
/// Default largest number of spans in one export request.
pub const BATCH_SPANS_MAX_DEFAULT: usize = 512;
/// Default longest time a span waits before its (partial) batch is exported.
pub const EXPORT_INTERVAL_MS_DEFAULT: u64 = 1000;
/// Default timeout of one export (connect, write, response), and of the flush at shutdown.
pub const EXPORT_TIMEOUT_MS_DEFAULT: u64 = 5000;
/// Default collector endpoint (an OpenTelemetry Collector's OTLP/HTTP receiver).
pub const ENDPOINT_DEFAULT: &str = "http://127.0.0.1:4318/v1/traces";
/// Default `service.name` resource attribute.
pub const SERVICE_NAME_DEFAULT: &str = "sluice";

/// Upper bound accepted for `queue_spans_max` (about 130 MiB of queued spans plus strings).
pub const QUEUE_SPANS_MAX_LIMIT: usize = 1 << 20;
/// Upper bound accepted for `batch_spans_max`.
pub const BATCH_SPANS_MAX_LIMIT: usize = 65_536;
/// Upper bound accepted for `export_interval_ms` and `export_timeout_ms`.
pub const EXPORT_LIMIT_MS: u64 = 600_000;
/// A batch whose encoding exceeds this is dropped instead of sent (collectors reject large
/// bodies; the OpenTelemetry Collector's default limit is 20 MiB).
pub const EXPORT_BODY_MAX_BYTES: usize = 16 << 20;
/// At most one export-failure warning per this many seconds.
pub const WARN_INTERVAL_SECS: u64 = 10;
/// Instrumentation scope name.
pub const SCOPE_NAME: &str = "sluice";
/// Instrumentation scope version.
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Metric names owned by this module.
pub mod names {
    /// Spans that never reached the collector; label `reason`: `queue_full`, `closed`,
    /// `export_failed`, `shutdown`.
    pub const SPANS_DROPPED_TOTAL: &str = "sluice_otel_spans_dropped_total";
    /// Spans accepted by the collector (2xx).
    pub const SPANS_EXPORTED_TOTAL: &str = "sluice_otel_spans_exported_total";
    /// Export requests (batches) that failed; label `code` (see [`super::ExportError`]).
    pub const EXPORT_FAILURES_TOTAL: &str = "sluice_otel_export_failures_total";
}

fn default_endpoint() -> String {
    ENDPOINT_DEFAULT.to_owned()
}
fn default_service_name() -> String {
    SERVICE_NAME_DEFAULT.to_owned()
}
fn default_queue_spans_max() -> usize {
    QUEUE_SPANS_MAX_DEFAULT
}
fn default_batch_spans_max() -> usize {
    BATCH_SPANS_MAX_DEFAULT
}
fn default_export_interval_ms() -> u64 {
    EXPORT_INTERVAL_MS_DEFAULT
}
fn default_export_timeout_ms() -> u64 {
    EXPORT_TIMEOUT_MS_DEFAULT
}

/// Trace export configuration (its place in the sluice config is set by the integration).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OtelConfig {
    /// Export spans at all.
    #[serde(default)]
    pub enabled: bool,
    /// OTLP/HTTP traces endpoint, e.g. `http://127.0.0.1:4318/v1/traces`. Plain `http://`
    /// only: https is not yet supported.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// `service.name` resource attribute.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Spans waiting for export; beyond this new spans are dropped and counted.
    #[serde(default = "default_queue_spans_max")]
    pub queue_spans_max: usize,
    /// Spans per export request.
    #[serde(default = "default_batch_spans_max")]
    pub batch_spans_max: usize,
    /// Longest time a span waits for its batch to fill.
    #[serde(default = "default_export_interval_ms")]
    pub export_interval_ms: u64,
    /// Timeout of one export request (connect + write + response).
    #[serde(default = "default_export_timeout_ms")]
    pub export_timeout_ms: u64,
    /// Extra HTTP headers sent with every export (e.g. an auth token). Values are never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl Default for OtelConfig {
    fn default() -> Self {
        OtelConfig {
            enabled: false,
            endpoint: default_endpoint(),
            service_name: default_service_name(),
            queue_spans_max: QUEUE_SPANS_MAX_DEFAULT,
            batch_spans_max: BATCH_SPANS_MAX_DEFAULT,
            export_interval_ms: EXPORT_INTERVAL_MS_DEFAULT,
            export_timeout_ms: EXPORT_TIMEOUT_MS_DEFAULT,
            headers: BTreeMap::new(),
        }
    }
}

/// Headers the exporter writes itself; configuring them is an error.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "trailer",
    "keep-alive",
    "proxy-connection",
];

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl OtelConfig {
    /// Check the configuration. Errors name the field (`endpoint: ...`); they never contain a
    /// header value.
    pub fn validate(&self) -> Result<(), String> {
        Endpoint::parse(&self.endpoint).map_err(|e| format!("endpoint: {e}"))?;
        if self.service_name.trim().is_empty() {
            return Err("service_name: must not be empty".into());
        }
        if self.queue_spans_max == 0 || self.queue_spans_max > QUEUE_SPANS_MAX_LIMIT {
            return Err(format!(
                "queue_spans_max: must be between 1 and {QUEUE_SPANS_MAX_LIMIT}"
            ));
        }
        if self.batch_spans_max == 0 || self.batch_spans_max > BATCH_SPANS_MAX_LIMIT {
            return Err(format!(
                "batch_spans_max: must be between 1 and {BATCH_SPANS_MAX_LIMIT}"
            ));
        }
        if self.batch_spans_max > self.queue_spans_max {
            return Err("batch_spans_max: must not exceed queue_spans_max".into());
        }
        for (field, v) in [
            ("export_interval_ms", self.export_interval_ms),
            ("export_timeout_ms", self.export_timeout_ms),
        ] {
            if v == 0 || v > EXPORT_LIMIT_MS {
                return Err(format!("{field}: must be between 1 and {EXPORT_LIMIT_MS}"));
            }
        }
        for (name, value) in &self.headers {
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return Err(format!("headers: {name:?} is not a valid header name"));
            }
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(format!("headers: {name} is set by sluice itself"));
            }
            // Visible ASCII, space and tab only: no CR/LF (header injection), no NUL.
            if !value
                .bytes()
                .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
            {
                return Err(format!(
                    "headers: value of {name} has a forbidden character (control or non-ASCII)"
                ));
            }
        }
        Ok(())
    }
}

/// A parsed `http://host:port/path` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// Host as written (brackets removed for IPv6 literals).
    pub host: String,
    pub port: u16,
    /// `host:port` as written, for the `Host` header.
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Endpoint {
    pub(crate) fn parse(s: &str) -> Result<Endpoint, String> {
        let rest = if let Some(r) = s.strip_prefix("http://") {
            r
        } else if s.starts_with("https://") {
            return Err("https is not yet supported; use http://host:port/path".into());
        } else {
            return Err("must be http://host:port/path".into());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => return Err("missing path, e.g. http://host:4318/v1/traces".into()),
        };
        if authority.contains('@') {
            return Err("credentials in the URL are not supported; use headers".into());
        }
        if !path.bytes().all(|b| (0x21..0x7f).contains(&b)) || path.contains('#') {
            return Err("path has a forbidden character".into());
        }
        let (host, port) = if let Some(r) = authority.strip_prefix('[') {
            let end = r.find(']').ok_or("unterminated [ipv6] host")?;
            let port = r[end + 1..]
                .strip_prefix(':')
                .ok_or("missing :port after [ipv6] host")?;
            (&r[..end], port)
        } else {
            let (host, port) = authority
                .rsplit_once(':')
                .ok_or("missing :port, e.g. http://host:4318/v1/traces")?;
            if host.contains(':') {
                return Err("an IPv6 host must be in brackets: http://[::1]:4318/path".into());
            }
            (host, port)
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
        {
            return Err("invalid host".into());
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or("invalid port")?;
        Ok(Endpoint {
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// An attribute value (the OTLP `AnyValue` subset sluice uses).
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    F64(f64),
    Bool(bool),
}

/// One finished span, as producers hand it to the exporter.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// `None` for a root span.
    pub parent_span_id: Option<[u8; 8]>,
    /// `"{gen_ai.operation.name} {gen_ai.request.model}"`, e.g. `"chat gpt-4o-mini"`.
    pub name: String,
    /// `SPAN_KIND_CLIENT` when true, else `SPAN_KIND_SERVER`.
    pub kind_client: bool,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// Status `ERROR` with this message when `Some` (otherwise status is left unset).
    pub error: Option<String>,
    pub attributes: Vec<(&'static str, AttrValue)>,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("resolving {authority}: {source}")]
    Resolve {
        authority: String,
        source: std::io::Error,
    },
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("collector timed out after {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error("collector I/O: {0}")]
    Io(std::io::Error),
    #[error("collector answered HTTP {0}")]
    Status(u16),
    #[error("collector sent an invalid response: {0}")]
    BadResponse(&'static str),
    #[error("batch of {spans} spans encodes to {bytes} bytes, over the {limit} byte limit")]
    TooLarge {
        spans: usize,
        bytes: usize,
        limit: usize,
    },
}

impl Classify for ExportError {
    fn side(&self) -> Side {
        match self {
            ExportError::TooLarge { .. } => Side::Internal,
            _ => Side::Upstream,
        }
    }
    fn status(&self) -> u16 {
        match self {
            ExportError::Timeout { .. } => 504,
            ExportError::TooLarge { .. } => 500,
            ExportError::Connect { .. } | ExportError::Resolve { .. } => 503,
            _ => 502,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            ExportError::Resolve { .. } => "otel_resolve",
            ExportError::Connect { .. } => "otel_connect",
            ExportError::Timeout { .. } => "otel_timeout",
            ExportError::Io(_) => "otel_io",
            ExportError::Status(_) => "otel_status",
            ExportError::BadResponse(_) => "otel_bad_response",
            ExportError::TooLarge { .. } => "otel_too_large",
        }
    }
}

/// Counters shared by the producers' handles and the exporter thread.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub dropped_queue_full: AtomicU64,
    pub dropped_closed: AtomicU64,
    pub dropped_export: AtomicU64,
    pub exported: AtomicU64,
    pub export_failures: AtomicU64,
}

/// A snapshot of the exporter's counters (the same numbers as the metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OtelStats {
    /// Spans refused by `try_send` because the queue was full.
    pub dropped_queue_full: u64,
    /// Spans refused by `try_send` because the exporter had stopped.
    pub dropped_closed: u64,
    /// Spans lost in failed exports or left over at the shutdown deadline.
    pub dropped_export: u64,
    /// Spans the collector accepted.
    pub exported: u64,
    /// Export requests that failed.
    pub export_failures: u64,
}

/// What travels on the queue.
pub(crate) enum Msg {
    Span(Box<SpanRecord>),
    /// Wakes the exporter so it notices the stop flag.
    Wake,
}

/// Producer handle: cloneable, `Send`, never blocks.
#[derive(Clone)]
pub struct OtelTx {
    pub(crate) tx: SyncSender<Msg>,
    pub(crate) stats: Arc<Stats>,
}

impl OtelTx {
    /// Queue a finished span. Never blocks: when the queue is full, or the exporter has
    /// stopped, the span is dropped and counted (`sluice_otel_spans_dropped_total`).
    pub fn try_send(&self, span: SpanRecord) {
        match self.tx.try_send(Msg::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                metrics::counter!(names::SPANS_DROPPED_TOTAL, "reason" => "queue_full")
                    .increment(1);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped_closed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(names::SPANS_DROPPED_TOTAL, "reason" => "closed").increment(1);
            }
        }
    }

    /// All spans dropped so far, for any reason (queue full, exporter stopped, failed export,
    /// shutdown deadline).
    pub fn dropped(&self) -> u64 {
        let s = self.stats();
        s.dropped_queue_full + s.dropped_closed + s.dropped_export
    }

    /// The exporter's counters.
    pub fn stats(&self) -> OtelStats {
        self.stats.snapshot()
    }
}

impl Stats {
    pub(crate) fn snapshot(&self) -> OtelStats {
        OtelStats {
            dropped_queue_full: self.dropped_queue_full.load(Ordering::Relaxed),
            dropped_closed: self.dropped_closed.load(Ordering::Relaxed),
            dropped_export: self.dropped_export.load(Ordering::Relaxed),
            exported: self.exported.load(Ordering::Relaxed),
            export_failures: self.export_failures.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests;
