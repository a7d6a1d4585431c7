//! Unit tests of `sluice::otel`: configuration, endpoint parsing, the queue's drop accounting.
//! (Protobuf and traceparent tests live beside their code; the wire-level check against the
//! official decoder is `tests/otel_export.rs`.)

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

use super::*;

/// Records counter increments by `name{label=value,...}`.
#[derive(Default)]
struct CountingRecorder {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

struct Cell(Arc<AtomicU64>);
impl CounterFn for Cell {
    fn increment(&self, v: u64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    fn absolute(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
}

impl CountingRecorder {
    fn get(&self, key: &str) -> u64 {
        let map = self.counters.lock().expect("lock");
        map.get(key).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

impl Recorder for CountingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let cell = self
            .counters
            .lock()
            .expect("lock")
            .entry(name)
            .or_default()
            .clone();
        Counter::from_arc(Arc::new(Cell(cell)))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn span(i: u64) -> SpanRecord {
    SpanRecord {
        trace_id: new_trace_id(),
        span_id: new_span_id(),
        parent_span_id: None,
        name: format!("chat m{i}"),
        kind_client: false,
        start_unix_ns: i,
        end_unix_ns: i + 1,
        error: None,
        attributes: vec![("gen_ai.request.model", AttrValue::Str("m".into()))],
    }
}

#[test]
fn queue_full_drops_are_counted_and_never_block() {
    let rec = CountingRecorder::default();
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    let otel = OtelTx {
        tx,
        stats: Arc::new(Stats::default()),
    };
    metrics::with_local_recorder(&rec, || {
        for i in 0..10 {
            otel.clone().try_send(span(i));
        }
    });
    assert_eq!(otel.dropped(), 6);
    assert_eq!(otel.stats().dropped_queue_full, 6);
    assert_eq!(
        rec.get("sluice_otel_spans_dropped_total{reason=queue_full}"),
        6
    );
    // Exporter gone: counted as closed.
    drop(rx);
    metrics::with_local_recorder(&rec, || otel.try_send(span(99)));
    assert_eq!(otel.stats().dropped_closed, 1);
    assert_eq!(otel.dropped(), 7);
    assert_eq!(rec.get("sluice_otel_spans_dropped_total{reason=closed}"), 1);
}

#[test]
fn invalid_config_start_drops_everything_without_a_thread() {
    let cfg = OtelConfig {
        endpoint: "https://collector:4318/v1/traces".into(),
        ..OtelConfig::default()
    };
    let (tx, handle) = start(&cfg);
    tx.try_send(span(1));
    assert_eq!(tx.dropped(), 1);
    handle.shutdown();
}

#[test]
fn defaults_are_the_named_constants() {
    let c: OtelConfig = serde_json::from_str("{}").expect("empty config");
    assert!(!c.enabled);
    assert_eq!(c.endpoint, "http://127.0.0.1:4318/v1/traces");
    assert_eq!(c.service_name, "sluice");
    assert_eq!(c.queue_spans_max, QUEUE_SPANS_MAX_DEFAULT);
    assert_eq!(c.batch_spans_max, BATCH_SPANS_MAX_DEFAULT);
    assert_eq!(c.export_interval_ms, EXPORT_INTERVAL_MS_DEFAULT);
    assert_eq!(c.export_timeout_ms, EXPORT_TIMEOUT_MS_DEFAULT);
    assert!(c.headers.is_empty());
    c.validate().expect("defaults are valid");
    OtelConfig::default().validate().expect("Default is valid");
    let unknown = serde_json::from_str::<OtelConfig>(r#"{"endpoitn":"x"}"#);
    assert!(unknown.is_err(), "unknown fields are refused");
}

#[test]
fn validation_rejects_bad_values_and_never_echoes_header_values() {
    let bad: Vec<(OtelConfig, &str)> = vec![
        (
            OtelConfig {
                endpoint: "https://c:4318/v1/traces".into(),
                ..Default::default()
            },
            "https is not yet supported",
        ),
        (
            OtelConfig {
                endpoint: "c:4318/v1/traces".into(),
                ..Default::default()
            },
            "endpoint",
        ),
        (
            OtelConfig {
                queue_spans_max: 0,
                ..Default::default()
            },
            "queue_spans_max",
        ),
        (
            OtelConfig {
                batch_spans_max: 0,
                ..Default::default()
            },
            "batch_spans_max",
        ),
        (
            OtelConfig {
                queue_spans_max: 10,
                batch_spans_max: 11,
                ..Default::default()
            },
            "batch_spans_max",
        ),
        (
            OtelConfig {
                export_interval_ms: 0,
                ..Default::default()
            },
            "export_interval_ms",
        ),
        (
            OtelConfig {
                export_timeout_ms: 0,
                ..Default::default()
            },
            "export_timeout_ms",
        ),
        (
            OtelConfig {
                service_name: " ".into(),
                ..Default::default()
            },
            "service_name",
        ),
    ];
    for (cfg, want) in bad {
        let e = cfg.validate().expect_err(want);
        assert!(e.contains(want), "{e:?} should mention {want:?}");
    }
    let secret = "Bearer top-secret\r\nx-evil: 1";
    let mut cfg = OtelConfig::default();
    cfg.headers.insert("authorization".into(), secret.into());
    let e = cfg.validate().expect_err("CRLF in a header value");
    assert!(
        e.contains("authorization") && !e.contains("top-secret"),
        "{e}"
    );
    let mut cfg = OtelConfig::default();
    cfg.headers.insert("bad name".into(), "v".into());
    assert!(cfg.validate().is_err());
    let mut cfg = OtelConfig::default();
    cfg.headers.insert("Content-Length".into(), "1".into());
    assert!(cfg.validate().is_err());
    let mut cfg = OtelConfig::default();
    cfg.headers
        .insert("authorization".into(), "Bearer ok".into());
    cfg.validate().expect("a normal auth header");
}

#[test]
fn endpoint_parsing() {
    let ep = Endpoint::parse("http://otel-collector:4318/v1/traces").expect("valid");
    assert_eq!(
        (
            ep.host.as_str(),
            ep.port,
            ep.authority.as_str(),
            ep.path.as_str()
        ),
        ("otel-collector", 4318, "otel-collector:4318", "/v1/traces")
    );
    let ep = Endpoint::parse("http://[::1]:4318/v1/traces?x=1").expect("ipv6");
    assert_eq!((ep.host.as_str(), ep.port), ("::1", 4318));
    assert_eq!(ep.authority, "[::1]:4318");
    assert_eq!(ep.path, "/v1/traces?x=1");
    for bad in [
        "",
        "http://",
        "http://host/v1/traces",
        "http://host:4318",
        "http://host:0/v1/traces",
        "http://host:99999/v1/traces",
        "http://host:port/v1/traces",
        "http://:4318/v1/traces",
        "http://user:pw@host:4318/v1/traces",
        "http://host:4318/v1 traces",
        "http://[::1/v1/traces",
        "http://::1:4318/v1/traces",
        "ftp://host:21/x",
    ] {
        assert!(Endpoint::parse(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn export_errors_are_classified() {
    let e = ExportError::Status(503);
    assert_eq!(e.side(), Side::Upstream);
    assert_eq!(e.code(), "otel_status");
    let e = ExportError::TooLarge {
        spans: 1,
        bytes: 2,
        limit: 1,
    };
    assert_eq!(e.side(), Side::Internal);
    assert_eq!(e.status(), 500);
    assert_eq!(ExportError::Timeout { timeout_ms: 5 }.status(), 504);
}

#[test]
fn producer_handle_is_send_sync_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<OtelTx>();
    fn check_send<T: Send + 'static>() {}
    check_send::<OtelHandle>();
    check_send::<SpanRecord>();
}
