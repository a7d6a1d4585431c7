//! Telemetry: per-request records, batched off the hot path into Prometheus metrics and the
//! access log.
//!
//! Owns: the [`RequestRecord`] a worker fills for each exchange, the worker-local
//! [`LocalTelemetry`] buffer, and the telemetry thread that turns batches into metrics
//! (through the `metrics` facade and `metrics-exporter-prometheus`) and JSON access-log lines.
//!
//! Why this shape: a worker's request path must not take a lock, format a string or touch a
//! shared cache line per request. So a worker only pushes a fixed-size record into a `Vec` it
//! owns (`RefCell`, no atomics). Every `telemetry.flush_interval_ms` the worker's tick hands the
//! whole `Vec` to the telemetry thread over a bounded channel (`try_send`: one lock-free
//! operation per batch, never blocking). If the queue is full the batch is dropped and counted
//! in `sluice_telemetry_dropped_records_total`; a slow exporter never slows a request.
//!
//! Invariants:
//! * Records hold indices into the snapshot of their `generation`, never strings, unless the
//!   access log is on (then a boxed [`AccessFields`]).
//! * The telemetry thread is the only writer of the Prometheus registry for request metrics.
//! * No prompt text and no header values other than the request id reach the access log.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use crate::snapshot::Snapshot;

/// Records a worker keeps before it flushes early (between ticks).
pub const LOCAL_RECORDS_MAX: usize = 1024;

/// How an exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The response was forwarded completely.
    Complete,
    /// sluice answered itself (an error or a refusal).
    LocalReply,
    /// The client went away before the response was complete.
    DownstreamAbort,
    /// The upstream failed or cut the response short.
    UpstreamAbort,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::LocalReply => "local_reply",
            Outcome::DownstreamAbort => "downstream_abort",
            Outcome::UpstreamAbort => "upstream_abort",
        }
    }
}

/// Index value meaning "none" in a record.
pub const NONE_IDX: u16 = u16::MAX;

/// One request/response exchange. Fixed size; filled by the worker, read by the telemetry
/// thread.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub generation: u64,
    pub worker: u16,
    pub listener: u16,
    pub route: u16,
    pub upstream: u16,
    pub status: u16,
    pub outcome: Outcome,
    /// `code()` of the error that ended the exchange, if any.
    pub error_code: &'static str,
    pub error_side: &'static str,
    /// Request head received → response complete.
    pub duration_us: u64,
    /// Request head received → first response byte from the upstream (0 = none).
    pub upstream_first_byte_us: u64,
    /// Time sluice itself spent: before the request reached the upstream socket and between
    /// the upstream's response head and the client's.
    pub overhead_us: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub access: Option<Box<AccessFields>>,
    /// Model-call facts, when the route inspects model traffic.
    pub gen_ai: Option<Box<crate::filter::GenAiRecord>>,
    /// Retries, failover and model rewrite (see `route`, `resilience`).
    pub routing: RoutingRecord,
}

/// What routing did to one exchange. `upstream` of the record is the upstream that answered.
#[derive(Debug, Clone)]
pub struct RoutingRecord {
    /// The upstream the request started on, when a failover moved it (else `NONE_IDX`).
    pub failover_from: u16,
    pub retries: u8,
    pub failovers: u8,
    /// The model the upstream was sent, when sluice rewrote it (alias or failover model).
    pub upstream_model: Option<Arc<str>>,
}

impl Default for RoutingRecord {
    fn default() -> Self {
        RoutingRecord {
            failover_from: NONE_IDX,
            retries: 0,
            failovers: 0,
            upstream_model: None,
        }
    }
}

/// Strings only collected when the access log is on.
#[derive(Debug, Clone)]
pub struct AccessFields {
    pub method: String,
    pub path: String,
    pub request_id: String,
    pub peer: String,
    pub unix_ms: u64,
    /// SPIFFE ID of the verified client certificate (mTLS listeners).
    pub peer_identity: Option<Arc<str>>,
}

/// Per-worker gauges, sent as absolute values with each batch.
#[derive(Debug, Clone, Default)]
pub struct WorkerGauges {
    /// Active downstream connections by listener name.
    pub downstream_active: Vec<(Arc<str>, u64)>,
    /// (upstream name, idle pooled connections, active upstream connections)
    pub upstream_pool: Vec<(Arc<str>, u64, u64)>,
    /// Transparent listeners' connection counters (absolute, per worker).
    pub transparent: Option<Box<crate::transparent::Stats>>,
}

pub enum TelemetryMsg {
    /// A new snapshot was committed: names for records of its generation.
    Snapshot(Arc<Snapshot>),
    Batch {
        worker: usize,
        records: Vec<RequestRecord>,
        gauges: Option<WorkerGauges>,
    },
    /// Flush and stop (at exit).
    Shutdown,
}

/// What the workers share to reach the telemetry thread.
#[derive(Clone)]
pub struct TelemetryTx {
    tx: SyncSender<TelemetryMsg>,
    dropped: Arc<AtomicU64>,
}

impl TelemetryTx {
    /// Never blocks. A full queue drops the batch and counts its records.
    pub fn try_send(&self, msg: TelemetryMsg) {
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(TelemetryMsg::Batch { records, .. })) => {
                self.dropped
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }

    /// Blocking send, for the control thread (snapshots must not be dropped).
    pub fn send_blocking(&self, msg: TelemetryMsg) {
        let _ = self.tx.send(msg);
    }
}

/// Worker-local buffer of records. Lives in the worker's `Rc`; never shared.
pub struct LocalTelemetry {
    pub records: Vec<RequestRecord>,
    pub access_log: bool,
}

impl LocalTelemetry {
    pub fn new(access_log: bool) -> Self {
        LocalTelemetry {
            records: Vec::with_capacity(LOCAL_RECORDS_MAX),
            access_log,
        }
    }

    pub fn push(&mut self, r: RequestRecord) {
        self.records.push(r);
    }

    pub fn take(&mut self) -> Vec<RequestRecord> {
        std::mem::replace(&mut self.records, Vec::with_capacity(LOCAL_RECORDS_MAX))
    }
}

/// Start the telemetry thread. Returns the sender and the thread handle.
/// How often the telemetry thread folds recorded histogram samples into their buckets
/// (`metrics-exporter-prometheus` keeps raw samples until upkeep runs; without it memory grows
/// with the request rate until the next scrape).
pub const UPKEEP_INTERVAL_MS: u64 = 1_000;

pub fn start(
    queue_batches_max: usize,
    access_log: Option<Box<dyn Write + Send>>,
    otel: Option<crate::otel::OtelTx>,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
) -> (TelemetryTx, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(queue_batches_max);
    let dropped = Arc::new(AtomicU64::new(0));
    let d2 = dropped.clone();
    let h = std::thread::Builder::new()
        .name("sluice-telemetry".into())
        .spawn(move || {
            crate::background::lower_priority();
            run(rx, d2, access_log, otel, prometheus)
        })
        .expect("spawn telemetry thread");
    (TelemetryTx { tx, dropped }, h)
}

/// Metric names (documented in docs/metrics.md).
pub mod names {
    pub const REQUESTS_TOTAL: &str = "sluice_requests_total";
    pub const REQUEST_DURATION: &str = "sluice_request_duration_seconds";
    pub const UPSTREAM_FIRST_BYTE: &str = "sluice_upstream_first_byte_seconds";
    pub const OVERHEAD: &str = "sluice_overhead_seconds";
    pub const ERRORS_TOTAL: &str = "sluice_errors_total";
    pub const STREAMS_ABORTED_TOTAL: &str = "sluice_streams_aborted_total";
    pub const BYTES_TOTAL: &str = "sluice_bytes_total";
    pub const DOWNSTREAM_ACTIVE: &str = "sluice_downstream_connections_active";
    pub const POOL_IDLE: &str = "sluice_upstream_pool_idle_connections";
    pub const UPSTREAM_ACTIVE: &str = "sluice_upstream_connections_active";
    pub const TELEMETRY_DROPPED: &str = "sluice_telemetry_dropped_records_total";
    pub const IO_DRIVER: &str = "sluice_io_driver_info";
    pub const WORKERS: &str = "sluice_workers";
    pub const CONFIG_RELOADS: &str = "sluice_config_reloads_total";
    pub const CONFIG_GENERATION: &str = "sluice_config_generation";
    pub const DRAINING: &str = "sluice_draining";
    pub const BUILD_INFO: &str = "sluice_build_info";
    // OpenTelemetry GenAI semantic conventions, Prometheus-named.
    pub const GEN_AI_TOKEN_USAGE: &str = "gen_ai_client_token_usage";
    pub const GEN_AI_OPERATION_DURATION: &str = "gen_ai_client_operation_duration_seconds";
    pub const GEN_AI_TTFT: &str = "gen_ai_server_time_to_first_token_seconds";
    pub const GEN_AI_TPOT: &str = "gen_ai_server_time_per_output_token_seconds";
    pub const GEN_AI_TOKENS_TOTAL: &str = "sluice_gen_ai_tokens_total";
    /// Millionths of a US dollar: `metrics` counters are integers, and a float gauge would
    /// misstate the type. Divide by 1e6 in queries.
    pub const GEN_AI_COST_TOTAL: &str = "sluice_gen_ai_cost_microusd_total";
    pub const GEN_AI_REQUESTS_TOTAL: &str = "sluice_gen_ai_requests_total";
    pub const GEN_AI_UNINSPECTED_TOTAL: &str = "sluice_gen_ai_uninspected_total";
    pub const GEN_AI_MALFORMED_EVENTS_TOTAL: &str = "sluice_gen_ai_malformed_events_total";
    pub const PII_DETECTIONS_TOTAL: &str = "sluice_pii_detections_total";
    // Routing and resilience.
    pub const RETRIES_TOTAL: &str = "sluice_retries_total";
    pub const FAILOVERS_TOTAL: &str = "sluice_failovers_total";
    pub const BREAKER_STATE: &str = "sluice_upstream_breaker_state";
    pub const BREAKER_OPENED_TOTAL: &str = "sluice_upstream_breaker_opened_total";
    pub const COOLDOWN_SECONDS: &str = "sluice_upstream_cooldown_seconds";
    pub const COOLDOWNS_TOTAL: &str = "sluice_upstream_cooldowns_total";
    pub const REJECTED_TOTAL: &str = "sluice_upstream_rejected_total";
    pub const THROTTLE_PROBABILITY: &str = "sluice_upstream_throttle_probability";
}

/// Bucket bounds for token-count histograms (the OTel GenAI recommendation: powers of 4).
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// Caps the number of distinct values a label takes: the first `max` values seen are kept,
/// later ones become `other`. Prometheus cardinality stays bounded whatever callers send.
#[derive(Default)]
pub struct LabelCap {
    seen: std::collections::HashSet<Arc<str>>,
}

impl LabelCap {
    pub fn label(&mut self, v: &str, max: usize) -> Arc<str> {
        if let Some(x) = self.seen.get(v) {
            return x.clone();
        }
        if self.seen.len() >= max {
            return Arc::from("other");
        }
        let a: Arc<str> = Arc::from(v);
        self.seen.insert(a.clone());
        a
    }
}

/// Bucket bounds for latency histograms, in seconds. Fine at the low end because sluice's
/// own overhead is measured in microseconds; long at the high end because streams last minutes.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

fn run(
    rx: Receiver<TelemetryMsg>,
    dropped: Arc<AtomicU64>,
    mut access_log: Option<Box<dyn Write + Send>>,
    otel: Option<crate::otel::OtelTx>,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
) {
    let mut last_upkeep = std::time::Instant::now();
    let mut snapshots: HashMap<u64, Arc<Snapshot>> = HashMap::new();
    let mut gauges: HashMap<usize, WorkerGauges> = HashMap::new();
    let mut handles = Handles::default();
    let mut gen_ai = GenAiMetrics::default();
    let mut last_dropped = 0u64;
    let mut line = Vec::with_capacity(512);
    loop {
        let msg = match rx.recv_timeout(std::time::Duration::from_millis(UPKEEP_INTERVAL_MS)) {
            Ok(m) => Some(m),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if last_upkeep.elapsed() >= std::time::Duration::from_millis(UPKEEP_INTERVAL_MS) {
            last_upkeep = std::time::Instant::now();
            prometheus.run_upkeep();
            crate::tls::stats::publish();
        }
        let Some(msg) = msg else { continue };
        match msg {
            TelemetryMsg::Snapshot(s) => {
                // Keep a bounded history: records of old generations may still be in flight.
                let g = s.generation;
                snapshots.insert(g, s);
                snapshots.retain(|k, _| *k + 16 > g);
                handles.forget_before(g.saturating_sub(16));
            }
            TelemetryMsg::Batch {
                worker,
                records,
                gauges: g,
            } => {
                gen_ai.audit.begin();
                for r in &records {
                    let Some(s) = snapshots.get(&r.generation) else {
                        continue;
                    };
                    handles.apply(s, r);
                    if let Some(g) = &r.gen_ai {
                        gen_ai.apply(s, r, g);
                        if let (Some(tx), Some(t)) = (&otel, &g.trace) {
                            if t.sampled && !g.provider.is_empty() {
                                tx.try_send(span_of(s, r, g, t));
                            }
                        }
                    }
                    if let (Some(out), Some(a)) = (access_log.as_mut(), r.access.as_ref()) {
                        line.clear();
                        write_access_line(&mut line, s, r, a);
                        let _ = out.write_all(&line);
                    }
                }
                gen_ai.audit.flush();
                if let Some(out) = access_log.as_mut() {
                    let _ = out.flush();
                }
                if let Some(g) = g {
                    gauges.insert(worker, g);
                    publish_gauges(&gauges);
                    if let Some(s) = snapshots.values().max_by_key(|s| s.generation) {
                        publish_resilience(s);
                    }
                }
            }
            TelemetryMsg::Shutdown => break,
        }
        let d = dropped.load(Ordering::Relaxed);
        if d != last_dropped {
            metrics::counter!(names::TELEMETRY_DROPPED).increment(d - last_dropped);
            last_dropped = d;
        }
    }
    if let Some(out) = access_log.as_mut() {
        let _ = out.flush();
    }
}

struct Names<'a> {
    listener: &'a str,
    route: &'a str,
    upstream: &'a str,
}

fn names_for<'a>(s: &'a Snapshot, r: &RequestRecord) -> Names<'a> {
    let l = s.listeners.get(r.listener as usize);
    Names {
        listener: l.map(|l| &*l.name).unwrap_or("unknown"),
        route: match (l, r.route) {
            (_, NONE_IDX) => "none",
            (Some(l), i) => l
                .routes
                .get(i as usize)
                .map(|x| &*x.name)
                .unwrap_or("unknown"),
            (None, _) => "unknown",
        },
        upstream: if r.upstream == NONE_IDX {
            "none"
        } else if usize::from(r.upstream) == crate::transparent::ORIGINAL_DST_IDX {
            crate::transparent::ORIGINAL_DESTINATION
        } else {
            s.upstreams
                .get(r.upstream as usize)
                .map(|u| &*u.name)
                .unwrap_or("unknown")
        },
    }
}

fn status_label(status: u16) -> &'static str {
    // Static strings: no formatting per request on the telemetry thread either.
    const S: [&str; 6] = ["0", "1xx", "2xx", "3xx", "4xx", "5xx"];
    match status {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        408 => "408",
        413 => "413",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s => S.get((s / 100) as usize).copied().unwrap_or("other"),
    }
}

/// Metric handles resolved once per (generation, indices) key: the telemetry thread does a
/// hash lookup and an atomic add per record, not a label formatting and registry lookup.
#[derive(Default)]
struct Handles {
    requests: HashMap<(u64, u16, u16, u16, u16), metrics::Counter>,
    duration: HashMap<(u64, u16, u16), metrics::Histogram>,
    first_byte: HashMap<(u64, u16), metrics::Histogram>,
    overhead: HashMap<(u64, u16), metrics::Histogram>,
    bytes: HashMap<(u64, u16), (metrics::Counter, metrics::Counter)>,
}

impl Handles {
    fn forget_before(&mut self, generation: u64) {
        self.requests.retain(|k, _| k.0 >= generation);
        self.duration.retain(|k, _| k.0 >= generation);
        self.first_byte.retain(|k, _| k.0 >= generation);
        self.overhead.retain(|k, _| k.0 >= generation);
        self.bytes.retain(|k, _| k.0 >= generation);
    }

    fn apply(&mut self, s: &Snapshot, r: &RequestRecord) {
        let g = r.generation;
        let n = names_for(s, r);
        self.requests
            .entry((g, r.listener, r.route, r.upstream, r.status))
            .or_insert_with(|| {
                metrics::counter!(names::REQUESTS_TOTAL,
                    "listener" => n.listener.to_string(),
                    "route" => n.route.to_string(),
                    "upstream" => n.upstream.to_string(),
                    "status" => status_label(r.status))
            })
            .increment(1);
        self.duration
            .entry((g, r.listener, r.route))
            .or_insert_with(|| {
                metrics::histogram!(names::REQUEST_DURATION,
                    "listener" => n.listener.to_string(),
                    "route" => n.route.to_string())
            })
            .record(r.duration_us as f64 / 1e6);
        if r.upstream_first_byte_us > 0 {
            self.first_byte
                .entry((g, r.upstream))
                .or_insert_with(|| {
                    metrics::histogram!(names::UPSTREAM_FIRST_BYTE, "upstream" => n.upstream.to_string())
                })
                .record(r.upstream_first_byte_us as f64 / 1e6);
        }
        if r.outcome != Outcome::LocalReply {
            self.overhead
                .entry((g, r.listener))
                .or_insert_with(
                    || metrics::histogram!(names::OVERHEAD, "listener" => n.listener.to_string()),
                )
                .record(r.overhead_us as f64 / 1e6);
        }
        let (bin, bout) = self.bytes.entry((g, r.listener)).or_insert_with(|| {
            (
                metrics::counter!(names::BYTES_TOTAL, "listener" => n.listener.to_string(), "direction" => "in"),
                metrics::counter!(names::BYTES_TOTAL, "listener" => n.listener.to_string(), "direction" => "out"),
            )
        });
        bin.increment(r.bytes_in);
        bout.increment(r.bytes_out);
        if !r.error_code.is_empty() {
            metrics::counter!(names::ERRORS_TOTAL, "side" => r.error_side, "code" => r.error_code)
                .increment(1);
        }
        if r.routing.retries > 0 {
            metrics::counter!(names::RETRIES_TOTAL,
                "route" => n.route.to_string(), "upstream" => n.upstream.to_string())
            .increment(r.routing.retries as u64);
        }
        if r.routing.failover_from != NONE_IDX {
            let from = s
                .upstreams
                .get(r.routing.failover_from as usize)
                .map(|u| u.name.to_string())
                .unwrap_or_else(|| "unknown".into());
            metrics::counter!(names::FAILOVERS_TOTAL,
                "route" => n.route.to_string(), "from" => from, "to" => n.upstream.to_string())
            .increment(1);
        }
        match r.outcome {
            Outcome::DownstreamAbort => {
                metrics::counter!(names::STREAMS_ABORTED_TOTAL, "side" => "downstream").increment(1)
            }
            Outcome::UpstreamAbort => {
                metrics::counter!(names::STREAMS_ABORTED_TOTAL, "side" => "upstream").increment(1)
            }
            _ => {}
        }
    }
}

fn publish_gauges(all: &HashMap<usize, WorkerGauges>) {
    let mut down: HashMap<&str, u64> = HashMap::new();
    let mut pool: HashMap<&str, (u64, u64)> = HashMap::new();
    for g in all.values() {
        for (l, n) in &g.downstream_active {
            *down.entry(l).or_default() += n;
        }
        for (u, idle, active) in &g.upstream_pool {
            let e = pool.entry(u).or_default();
            e.0 += idle;
            e.1 += active;
        }
    }
    for (l, n) in down {
        metrics::gauge!(names::DOWNSTREAM_ACTIVE, "listener" => l.to_string()).set(n as f64);
    }
    for (u, (idle, active)) in pool {
        metrics::gauge!(names::POOL_IDLE, "upstream" => u.to_string()).set(idle as f64);
        metrics::gauge!(names::UPSTREAM_ACTIVE, "upstream" => u.to_string()).set(active as f64);
    }
    if all.values().any(|g| g.transparent.is_some()) {
        crate::transparent::publish(all.values().filter_map(|g| g.transparent.as_deref()));
    }
}

/// Breaker state, cool-downs, local rejections and throttle probability, read from the
/// shared atomics of the current snapshot's upstreams (they are the source of truth; workers
/// send nothing for them).
fn publish_resilience(s: &Snapshot) {
    let now = crate::resilience::now_ms();
    for u in &s.upstreams {
        let name = u.name.to_string();
        for ep in &u.endpoints {
            let (state, cool_ms) = ep.health.state(now);
            let e = ep.authority.clone();
            metrics::gauge!(names::BREAKER_STATE, "upstream" => name.clone(), "endpoint" => e.clone())
                .set(state as u8 as f64);
            metrics::gauge!(names::COOLDOWN_SECONDS, "upstream" => name.clone(), "endpoint" => e.clone())
                .set(cool_ms as f64 / 1000.0);
            metrics::counter!(names::BREAKER_OPENED_TOTAL, "upstream" => name.clone(), "endpoint" => e.clone())
                .absolute(ep.health.opened_total.load(Ordering::Relaxed));
            metrics::counter!(names::COOLDOWNS_TOTAL, "upstream" => name.clone(), "endpoint" => e)
                .absolute(ep.health.cooldowns_total.load(Ordering::Relaxed));
        }
        for (reason, n) in u.policy.stats.read() {
            metrics::counter!(names::REJECTED_TOTAL, "upstream" => name.clone(), "reason" => reason)
                .absolute(n);
        }
        if let Some((t, _)) = &u.policy.throttle {
            metrics::gauge!(names::THROTTLE_PROBABILITY, "upstream" => name.clone())
                .set(t.probability(now));
        }
    }
}

fn write_access_line(out: &mut Vec<u8>, s: &Snapshot, r: &RequestRecord, a: &AccessFields) {
    use crate::error::write_json_string as js;
    let n = names_for(s, r);
    out.extend_from_slice(b"{\"ts_ms\":");
    out.extend_from_slice(a.unix_ms.to_string().as_bytes());
    out.extend_from_slice(b",\"request_id\":");
    js(out, &a.request_id);
    out.extend_from_slice(b",\"peer\":");
    js(out, &a.peer);
    if let Some(id) = &a.peer_identity {
        out.extend_from_slice(b",\"peer_identity\":");
        js(out, id);
    }
    out.extend_from_slice(b",\"method\":");
    js(out, &a.method);
    out.extend_from_slice(b",\"path\":");
    js(out, &a.path);
    out.extend_from_slice(b",\"listener\":");
    js(out, n.listener);
    out.extend_from_slice(b",\"route\":");
    js(out, n.route);
    out.extend_from_slice(b",\"upstream\":");
    js(out, n.upstream);
    let _ = write!(
        out,
        ",\"status\":{},\"outcome\":\"{}\",\"duration_us\":{},\"upstream_first_byte_us\":{},\"overhead_us\":{},\"bytes_in\":{},\"bytes_out\":{}",
        r.status,
        r.outcome.as_str(),
        r.duration_us,
        r.upstream_first_byte_us,
        r.overhead_us,
        r.bytes_in,
        r.bytes_out
    );
    if !r.error_code.is_empty() {
        out.extend_from_slice(b",\"error\":");
        js(out, r.error_code);
    }
    if let Some(m) = &r.routing.upstream_model {
        out.extend_from_slice(b",\"upstream_model\":");
        js(out, m);
    }
    if r.routing.retries > 0 {
        let _ = write!(out, ",\"retries\":{}", r.routing.retries);
    }
    if r.routing.failover_from != NONE_IDX {
        if let Some(u) = s.upstreams.get(r.routing.failover_from as usize) {
            out.extend_from_slice(b",\"failover_from\":");
            js(out, &u.name);
        }
    }
    if let Some(g) = &r.gen_ai {
        out.extend_from_slice(b",\"caller\":");
        js(out, &g.caller);
        if !g.provider.is_empty() {
            out.extend_from_slice(b",\"provider\":");
            js(out, g.provider);
        }
        if let Some(m) = &g.request_model {
            out.extend_from_slice(b",\"model\":");
            js(out, m);
        }
        if let Some(m) = &g.response_model {
            out.extend_from_slice(b",\"response_model\":");
            js(out, m);
        }
        let _ = write!(out, ",\"stream\":{}", g.stream);
        if let Some(u) = &g.usage {
            let _ = write!(
                out,
                ",\"input_tokens\":{},\"output_tokens\":{},\"tokens_estimated\":{}",
                u.input_tokens, u.output_tokens, u.estimated
            );
        }
        if let Some(t) = g.ttft_us {
            let _ = write!(out, ",\"ttft_us\":{t}");
        }
        if !g.pii.is_empty() {
            let _ = write!(out, ",\"pii_detections\":{}", g.pii.len());
        }
    }
    out.extend_from_slice(b"}\n");
}

/// (caller, request model, response model, provider, operation), after label capping.
type GenAiKey = (Arc<str>, Arc<str>, Arc<str>, &'static str, &'static str);

/// Metric handles of one GenAI label set, resolved on first use.
#[derive(Default)]
struct GenAiHandles {
    /// By outcome: ok, error, aborted.
    requests: [Option<metrics::Counter>; 3],
    duration: Option<metrics::Histogram>,
    ttft: Option<metrics::Histogram>,
    tpot: Option<metrics::Histogram>,
    /// By token type: input, output.
    usage: [Option<metrics::Histogram>; 2],
    /// By estimated (false, true), then token type: input, output, cached_input, reasoning.
    tokens: [[Option<metrics::Counter>; 4]; 2],
}

/// GenAI metrics: tokens, cost, TTFT, time per output token, PII detections.
#[derive(Default)]
struct GenAiMetrics {
    callers: LabelCap,
    models: LabelCap,
    handles: HashMap<GenAiKey, GenAiHandles>,
    /// Fractions of a micro-dollar not yet counted, per (caller, model, provider).
    cost_carry: HashMap<(Arc<str>, Arc<str>, &'static str), f64>,
    /// `sluice_pii_detections_total` handles by (entity, action, direction, caller label):
    /// resolved once per label set, not per detection (label strings, registry lookup).
    pii_counters: HashMap<PiiKey, metrics::Counter>,
    /// The audit trail, one line per detection, written once per batch.
    audit: crate::audit::AuditWriter,
}

type PiiKey = (Arc<str>, &'static str, &'static str, Arc<str>);

impl GenAiMetrics {
    fn apply(&mut self, s: &Snapshot, r: &RequestRecord, g: &crate::filter::GenAiRecord) {
        let tcfg = &s.config.telemetry;
        let caller = self.callers.label(&g.caller, tcfg.caller_labels_max);
        for a in &g.pii {
            let key = (a.entity.clone(), a.action, a.direction, caller.clone());
            self.pii_counters
                .entry(key)
                .or_insert_with(|| {
                    metrics::counter!(names::PII_DETECTIONS_TOTAL,
                        "entity" => a.entity.to_string(), "action" => a.action,
                        "direction" => a.direction, "caller" => caller.to_string())
                })
                .increment(1);
            // The audit trail: one event per detection, with where it was and what was done,
            // never the value (src/audit.rs says why it is not a tracing event).
            self.audit.push(a, &g.caller, r.status);
        }
        if g.provider.is_empty() {
            return;
        }
        let req_model = self.models.label(
            g.request_model.as_deref().unwrap_or("unknown"),
            tcfg.model_labels_max,
        );
        let resp_model = self.models.label(
            g.response_model
                .as_deref()
                .or(g.request_model.as_deref())
                .unwrap_or("unknown"),
            tcfg.model_labels_max,
        );
        let provider = g.provider;
        let op = g.operation;
        let outcome = if g.aborted {
            2
        } else if r.status >= 400 {
            1
        } else {
            0
        };
        // One hash lookup per record; each metric's handle is resolved (label strings built,
        // registry searched) once per label set, on first use.
        let key = (
            caller.clone(),
            req_model.clone(),
            resp_model.clone(),
            provider,
            op,
        );
        let h = self.handles.entry(key).or_default();
        let (c, rm, sm) = (&caller, &req_model, &resp_model);
        h.requests[outcome]
            .get_or_insert_with(|| {
                metrics::counter!(names::GEN_AI_REQUESTS_TOTAL,
                    "caller" => c.to_string(), "gen_ai_request_model" => rm.to_string(),
                    "gen_ai_provider_name" => provider,
                    "outcome" => ["ok", "error", "aborted"][outcome])
            })
            .increment(1);
        h.duration
            .get_or_insert_with(|| {
                metrics::histogram!(names::GEN_AI_OPERATION_DURATION,
                    "gen_ai_operation_name" => op, "gen_ai_provider_name" => provider,
                    "gen_ai_request_model" => rm.to_string())
            })
            .record(r.duration_us as f64 / 1e6);
        if g.uninspected {
            metrics::counter!(names::GEN_AI_UNINSPECTED_TOTAL, "caller" => caller.to_string())
                .increment(1);
        }
        if g.malformed_events > 0 {
            metrics::counter!(names::GEN_AI_MALFORMED_EVENTS_TOTAL, "gen_ai_provider_name" => provider)
                .increment(g.malformed_events as u64);
        }
        if let Some(t) = g.ttft_us {
            h.ttft
                .get_or_insert_with(|| {
                    metrics::histogram!(names::GEN_AI_TTFT,
                        "gen_ai_request_model" => rm.to_string(), "gen_ai_provider_name" => provider)
                })
                .record(t as f64 / 1e6);
        }
        if let Some(t) = g.tpot_us {
            h.tpot
                .get_or_insert_with(|| {
                    metrics::histogram!(names::GEN_AI_TPOT,
                        "gen_ai_request_model" => rm.to_string(), "gen_ai_provider_name" => provider)
                })
                .record(t as f64 / 1e6);
        }
        let Some(u) = &g.usage else { return };
        const TYPES: [&str; 4] = ["input", "output", "cached_input", "reasoning"];
        for (i, n) in [u.input_tokens, u.output_tokens].into_iter().enumerate() {
            h.usage[i]
                .get_or_insert_with(|| {
                    metrics::histogram!(names::GEN_AI_TOKEN_USAGE,
                        "gen_ai_token_type" => TYPES[i], "gen_ai_operation_name" => op,
                        "gen_ai_provider_name" => provider,
                        "gen_ai_request_model" => rm.to_string(),
                        "gen_ai_response_model" => sm.to_string(),
                        "caller" => c.to_string())
                })
                .record(n as f64);
        }
        let est = usize::from(u.estimated);
        let typed = [
            Some(u.input_tokens),
            Some(u.output_tokens),
            u.cached_input_tokens,
            u.reasoning_tokens,
        ];
        for (i, n) in typed.into_iter().enumerate() {
            let Some(n) = n else { continue };
            h.tokens[est][i]
                .get_or_insert_with(|| {
                    metrics::counter!(names::GEN_AI_TOKENS_TOTAL,
                        "caller" => c.to_string(),
                        "gen_ai_request_model" => rm.to_string(),
                        "gen_ai_response_model" => sm.to_string(),
                        "gen_ai_provider_name" => provider,
                        "gen_ai_token_type" => TYPES[i],
                        "estimated" => ["false", "true"][est])
                })
                .increment(n);
        }
        let model_for_price = g
            .response_model
            .as_deref()
            .or(g.request_model.as_deref())
            .unwrap_or("");
        if let Some(cost) = s.pricing.cost_usd(model_for_price, u) {
            let carry = self
                .cost_carry
                .entry((caller.clone(), req_model.clone(), provider))
                .or_insert(0.0);
            *carry += cost * 1e6;
            let whole = carry.floor();
            *carry -= whole;
            if whole > 0.0 {
                metrics::counter!(names::GEN_AI_COST_TOTAL,
                    "caller" => caller.to_string(),
                    "gen_ai_request_model" => req_model.to_string(),
                    "gen_ai_provider_name" => provider)
                .increment(whole as u64);
            }
        }
    }
}

/// One span per model call, with OpenTelemetry GenAI attributes.
fn span_of(
    s: &Snapshot,
    r: &RequestRecord,
    g: &crate::filter::GenAiRecord,
    t: &crate::filter::TraceCtx,
) -> crate::otel::SpanRecord {
    use crate::otel::AttrValue::{Bool, Int, Str};
    let model = g.request_model.as_deref().unwrap_or("unknown");
    let mut attrs: Vec<(&'static str, crate::otel::AttrValue)> = vec![
        ("gen_ai.operation.name", Str(g.operation.to_string())),
        ("gen_ai.provider.name", Str(g.provider.to_string())),
        ("gen_ai.request.model", Str(model.to_string())),
        ("gen_ai.request.stream", Bool(g.stream)),
        ("http.response.status_code", Int(r.status as i64)),
        ("sluice.caller", Str(g.caller.to_string())),
    ];
    let n = names_for(s, r);
    attrs.push(("sluice.upstream", Str(n.upstream.to_string())));
    attrs.push(("sluice.route", Str(n.route.to_string())));
    if let Some(u) = s.upstreams.get(r.upstream as usize) {
        if let Some(ep) = u.endpoints.first() {
            attrs.push(("server.address", Str(ep.host.clone())));
            attrs.push(("server.port", Int(ep.port as i64)));
        }
    }
    if let Some(m) = &g.response_model {
        attrs.push(("gen_ai.response.model", Str(m.clone())));
    }
    if let Some(m) = g.max_tokens {
        attrs.push(("gen_ai.request.max_tokens", Int(m as i64)));
    }
    if let Some(u) = &g.usage {
        attrs.push(("gen_ai.usage.input_tokens", Int(u.input_tokens as i64)));
        attrs.push(("gen_ai.usage.output_tokens", Int(u.output_tokens as i64)));
        if u.estimated {
            attrs.push(("sluice.usage.estimated", Bool(true)));
        }
    }
    if let Some(ttft) = g.ttft_us {
        attrs.push((
            "sluice.time_to_first_token_ms",
            crate::otel::AttrValue::F64(ttft as f64 / 1e3),
        ));
    }
    let error = if g.aborted {
        attrs.push(("error.type", Str(r.error_code.to_string())));
        Some(format!("stream aborted ({})", r.outcome.as_str()))
    } else if r.status >= 400 {
        attrs.push(("error.type", Str(r.status.to_string())));
        Some(format!("status {}", r.status))
    } else {
        None
    };
    crate::otel::SpanRecord {
        trace_id: t.trace_id,
        span_id: t.span_id,
        parent_span_id: t.parent_span_id,
        name: format!("{} {}", g.operation, model),
        kind_client: true,
        start_unix_ns: g.start_unix_ns,
        end_unix_ns: g.end_unix_ns,
        error,
        attributes: attrs,
    }
}
