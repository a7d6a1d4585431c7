//! Integration tests of `sluice::otel` over real sockets.
//!
//! Owns: proof that the hand-written OTLP protobuf encoding decodes exactly with the official
//! protobuf classes (`tests/e2e/otlp_receiver.py`, pip package `opentelemetry-proto`), and that
//! the exporter's failure paths (collector down, collector hanging, collector erroring, idle
//! keep-alive connections closed by the peer) drop and count spans, never hang, and shut down
//! within the documented bound.
//!
//! The receiver tests skip with a message when `python3` or `opentelemetry-proto` is missing,
//! unless `SLUICE_REQUIRE_OTLP_RECEIVER=1` (then they fail). Everything binds 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice::otel::{self, AttrValue, OtelConfig, SpanRecord};

const WAIT_MAX: Duration = Duration::from_secs(15);

struct Receiver {
    child: Child,
    addr: String,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Start the Python receiver, or `None` (after saying why) when it cannot run here.
fn receiver(extra: &[&str]) -> Option<Receiver> {
    let probe = Command::new(python())
        .args([
            "-c",
            "import opentelemetry.proto.collector.trace.v1.trace_service_pb2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(probe, Ok(s) if s.success()) {
        let msg = "SKIP: the OTLP receiver needs python3 with the pip package \
                   `opentelemetry-proto` (pip install opentelemetry-proto)";
        if std::env::var("SLUICE_REQUIRE_OTLP_RECEIVER").as_deref() == Ok("1") {
            panic!("{msg}");
        }
        eprintln!("{msg}");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("spans.jsonl");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/otlp_receiver.py");
    let mut child = Command::new(python())
        .arg(script)
        .arg("0")
        .arg(&out)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn receiver");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("receiver banner");
    let addr = line
        .trim()
        .strip_prefix("otlp receiver listening on ")
        .unwrap_or_else(|| panic!("unexpected banner {line:?}"))
        .to_owned();
    Some(Receiver {
        child,
        addr,
        out,
        _dir: dir,
    })
}

fn read_spans(path: &Path, want: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        if lines.len() >= want || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cfg(endpoint: String) -> OtelConfig {
    OtelConfig {
        enabled: true,
        endpoint,
        service_name: "sluice-test".into(),
        queue_spans_max: 64,
        batch_spans_max: 3,
        export_interval_ms: 50,
        export_timeout_ms: 1000,
        ..OtelConfig::default()
    }
}

fn spans() -> Vec<SpanRecord> {
    let trace = otel::new_trace_id();
    let root = otel::new_span_id();
    let base = 1_764_000_000_123_456_789u64;
    let mut out = vec![
        SpanRecord {
            trace_id: trace,
            span_id: root,
            parent_span_id: None,
            name: "chat gpt-4o-mini".into(),
            kind_client: false,
            start_unix_ns: base,
            end_unix_ns: base + 1_500_000_000,
            error: None,
            attributes: vec![
                ("gen_ai.operation.name", AttrValue::Str("chat".into())),
                ("gen_ai.provider.name", AttrValue::Str("openai".into())),
                ("gen_ai.request.model", AttrValue::Str("gpt-4o-mini".into())),
                (
                    "gen_ai.response.model",
                    AttrValue::Str("gpt-4o-mini-2024-07-18".into()),
                ),
                ("gen_ai.usage.input_tokens", AttrValue::Int(1234)),
                ("gen_ai.usage.output_tokens", AttrValue::Int(0)),
                ("gen_ai.request.max_tokens", AttrValue::Int(i64::MAX)),
                ("gen_ai.request.stream", AttrValue::Bool(true)),
                ("server.address", AttrValue::Str("api.openai.com".into())),
                ("server.port", AttrValue::Int(443)),
                ("http.response.status_code", AttrValue::Int(200)),
                ("sluice.caller", AttrValue::Str("team-ä/日本".into())),
                ("sluice.empty", AttrValue::Str(String::new())),
                ("sluice.negative", AttrValue::Int(-42)),
                ("sluice.min", AttrValue::Int(i64::MIN)),
                ("sluice.ratio", AttrValue::F64(0.125)),
                ("sluice.zero", AttrValue::F64(-0.0)),
                ("sluice.false", AttrValue::Bool(false)),
            ],
        },
        SpanRecord {
            trace_id: trace,
            span_id: otel::new_span_id(),
            parent_span_id: Some(root),
            name: "chat llama-3".into(),
            kind_client: true,
            start_unix_ns: base + 1,
            end_unix_ns: u64::MAX,
            error: Some("upstream_timeout: no response in 30 s".into()),
            attributes: vec![
                ("error.type", AttrValue::Str("upstream_timeout".into())),
                ("http.response.status_code", AttrValue::Int(504)),
            ],
        },
        SpanRecord {
            trace_id: otel::new_trace_id(),
            span_id: otel::new_span_id(),
            parent_span_id: None,
            name: String::new(),
            kind_client: true,
            start_unix_ns: 0,
            end_unix_ns: 0,
            error: Some(String::new()),
            attributes: vec![],
        },
    ];
    // A long string attribute (multi-byte length prefixes) on a fourth span.
    out.push(SpanRecord {
        name: "embeddings text-embedding-3-small".into(),
        span_id: otel::new_span_id(),
        attributes: vec![("sluice.long", AttrValue::Str("x".repeat(70_000)))],
        error: None,
        ..out[0].clone()
    });
    out
}

fn json_attr(v: &AttrValue) -> Value {
    match v {
        AttrValue::Str(s) => Value::from(s.as_str()),
        AttrValue::Int(i) => Value::from(*i),
        AttrValue::F64(f) => Value::from(*f),
        AttrValue::Bool(b) => Value::from(*b),
    }
}

#[test]
fn receiver_decodes_every_field_exactly() {
    let Some(rx) = receiver(&[]) else { return };
    let mut c = cfg(format!("http://{}/v1/traces", rx.addr));
    c.headers
        .insert("authorization".into(), "Bearer test-token".into());
    let (tx, handle) = otel::start(&c);
    let sent = spans();
    for s in &sent {
        tx.try_send(s.clone());
    }
    // Batch of 3 goes out at once; the fourth within export_interval_ms.
    let got = read_spans(&rx.out, sent.len());
    assert_eq!(got.len(), sent.len(), "spans received: {got:?}");
    let t0 = Instant::now();
    handle.shutdown();
    assert!(t0.elapsed() < Duration::from_secs(3));
    let stats = tx.stats();
    assert_eq!(stats.exported, sent.len() as u64, "{stats:?}");
    assert_eq!(tx.dropped(), 0, "{stats:?}");

    for s in &sent {
        let id = otel::to_hex(&s.span_id);
        let g = got
            .iter()
            .find(|g| g["span_id"] == id.as_str())
            .unwrap_or_else(|| panic!("span {id} not received"));
        assert!(g.get("decode_error").is_none());
        assert_eq!(g["trace_id"], otel::to_hex(&s.trace_id).as_str());
        match &s.parent_span_id {
            Some(p) => assert_eq!(g["parent_span_id"], otel::to_hex(p).as_str()),
            None => assert!(g["parent_span_id"].is_null()),
        }
        assert_eq!(g["name"], s.name.as_str());
        assert_eq!(g["kind"], if s.kind_client { 3 } else { 2 });
        assert_eq!(g["start_time_unix_nano"], s.start_unix_ns);
        assert_eq!(g["end_time_unix_nano"], s.end_unix_ns);
        let want: serde_json::Map<String, Value> = s
            .attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json_attr(v)))
            .collect();
        assert_eq!(g["attributes"], Value::Object(want), "attributes of {id}");
        match &s.error {
            Some(msg) => {
                assert_eq!(g["status"]["code"], 2, "STATUS_CODE_ERROR");
                assert_eq!(g["status"]["message"], msg.as_str());
            }
            None => {
                assert_eq!(g["has_status"], false);
                assert_eq!(g["status"]["code"], 0);
            }
        }
        assert_eq!(g["resource"]["service.name"], "sluice-test");
        assert_eq!(g["scope"]["name"], "sluice");
        assert_eq!(g["scope"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(g["http_authorization"], "Bearer test-token");
    }
    // -0.0 survives bit-exactly (JSON keeps the sign).
    let root = got
        .iter()
        .find(|g| g["span_id"] == otel::to_hex(&sent[0].span_id).as_str())
        .expect("root");
    assert!(root["attributes"]["sluice.zero"]
        .as_f64()
        .is_some_and(|f| f == 0.0 && f.is_sign_negative()));
}

#[test]
fn shutdown_flushes_what_is_queued() {
    let Some(rx) = receiver(&[]) else { return };
    let mut c = cfg(format!("http://{}/v1/traces", rx.addr));
    c.batch_spans_max = 64;
    c.export_interval_ms = 60_000; // only shutdown can send these
    let (tx, handle) = otel::start(&c);
    for s in spans().into_iter().take(3) {
        tx.try_send(s);
    }
    let t0 = Instant::now();
    handle.shutdown();
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(read_spans(&rx.out, 3).len(), 3);
    assert_eq!(tx.stats().exported, 3);
    // After shutdown producers are refused without blocking, and counted.
    tx.try_send(spans().remove(0));
    assert_eq!(tx.stats().dropped_closed, 1);
}

#[test]
fn collector_error_status_drops_and_counts_the_batch() {
    let Some(rx) = receiver(&["--status", "503"]) else {
        return;
    };
    let (tx, handle) = otel::start(&cfg(format!("http://{}/v1/traces", rx.addr)));
    for s in spans().into_iter().take(3) {
        tx.try_send(s);
    }
    wait_until(|| tx.stats().dropped_export == 3);
    handle.shutdown();
    let st = tx.stats();
    assert_eq!(
        (st.exported, st.export_failures, st.dropped_export),
        (0, 1, 3)
    );
}

fn wait_until(mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !f() {
        assert!(Instant::now() < deadline, "condition not reached in time");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

#[test]
fn receiver_down_drops_counts_and_does_not_hang() {
    let mut c = cfg(format!("http://127.0.0.1:{}/v1/traces", closed_port()));
    c.export_timeout_ms = 500;
    let (tx, handle) = otel::start(&c);
    for s in spans().into_iter().take(3).cycle().take(10) {
        tx.try_send(s);
    }
    wait_until(|| tx.stats().dropped_export == 10);
    assert_eq!(tx.dropped(), 10);
    assert!(tx.stats().export_failures >= 4, "{:?}", tx.stats());
    let t0 = Instant::now();
    handle.shutdown();
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn hanging_collector_bounds_export_and_shutdown() {
    // Accepts and reads, never answers.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    let mut c = cfg(format!("http://127.0.0.1:{port}/v1/traces"));
    c.export_timeout_ms = 300;
    c.batch_spans_max = 1;
    let (tx, handle) = otel::start(&c);
    for s in spans().into_iter().take(3) {
        tx.try_send(s);
    }
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    handle.shutdown();
    let took = t0.elapsed();
    // Documented bound: 2 × export_timeout_ms + 1 s.
    assert!(took < Duration::from_millis(1600), "shutdown took {took:?}");
    let st = tx.stats();
    assert_eq!(st.exported, 0);
    assert_eq!(st.dropped_export, 3, "{st:?}");
}

/// A minimal HTTP/1.1 server: answers 200 to each request; when `close_after_each`, closes the
/// connection after answering without saying so (the idle keep-alive race).
fn fake_collector(close_after_each: bool) -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let conns = Arc::new(AtomicUsize::new(0));
    let reqs = Arc::new(AtomicUsize::new(0));
    let (c2, r2) = (conns.clone(), reqs.clone());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            c2.fetch_add(1, Ordering::SeqCst);
            let r3 = r2.clone();
            std::thread::spawn(move || serve(s, &r3, close_after_each));
        }
    });
    (port, conns, reqs)
}

fn serve(mut s: TcpStream, reqs: &AtomicUsize, close_after_each: bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // Read one request: head, then content-length bytes.
        let (head_end, cl) = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                let cl = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .expect("content-length");
                break (i + 4, cl);
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_end + cl {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + cl);
        reqs.fetch_add(1, Ordering::SeqCst);
        if s.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        )
        .is_err()
        {
            return;
        }
        if close_after_each {
            return;
        }
    }
}

#[test]
fn keep_alive_reuses_one_connection() {
    let (port, conns, reqs) = fake_collector(false);
    let mut c = cfg(format!("http://127.0.0.1:{port}/v1/traces"));
    c.batch_spans_max = 1;
    let (tx, handle) = otel::start(&c);
    for s in spans().into_iter().take(3) {
        tx.try_send(s);
    }
    wait_until(|| tx.stats().exported == 3);
    handle.shutdown();
    assert_eq!(reqs.load(Ordering::SeqCst), 3);
    assert_eq!(conns.load(Ordering::SeqCst), 1, "one keep-alive connection");
}

#[test]
fn peer_closed_idle_connection_is_reopened_without_losing_the_batch() {
    let (port, conns, reqs) = fake_collector(true);
    let (tx, handle) = otel::start(&cfg(format!("http://127.0.0.1:{port}/v1/traces")));
    for round in 1..=3u64 {
        tx.try_send(spans().remove(0));
        wait_until(|| tx.stats().exported == round);
        // Let the server's close arrive before the next export reuses the connection.
        std::thread::sleep(Duration::from_millis(100));
    }
    handle.shutdown();
    let st = tx.stats();
    assert_eq!((st.exported, st.export_failures, tx.dropped()), (3, 0, 0));
    assert_eq!(reqs.load(Ordering::SeqCst), 3);
    assert_eq!(conns.load(Ordering::SeqCst), 3);
}

// ---- Grafana dashboard ---------------------------------------------------------------------

/// The only metric series the dashboard may query (what the proxy exports).
const DASHBOARD_METRICS: &[&str] = &[
    "gen_ai_client_token_usage_sum",
    "gen_ai_client_token_usage_count",
    "gen_ai_client_token_usage_bucket",
    "sluice_gen_ai_tokens_total",
    "sluice_gen_ai_cost_microusd_total",
    "gen_ai_server_time_to_first_token_seconds_bucket",
    "gen_ai_server_time_per_output_token_seconds_bucket",
    "sluice_requests_total",
    "sluice_overhead_seconds_bucket",
    "sluice_streams_aborted_total",
];

/// PromQL words that are not metric names.
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "rate",
    "irate",
    "increase",
    "histogram_quantile",
    "clamp_min",
    "topk",
    "label_values",
];

/// Metric names referenced by a PromQL expression: identifiers outside strings, label matchers
/// (`{..}`), ranges (`[..]`) and `by`/`without` label lists, minus PromQL words.
fn promql_metric_names(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut skip_next_group = false;
    while i < b.len() {
        let c = b[i];
        let close = match c {
            b'{' => Some(b'}'),
            b'[' => Some(b']'),
            b'(' if skip_next_group => Some(b')'),
            _ => None,
        };
        if let Some(close) = close {
            skip_next_group = false;
            let mut in_str = false;
            i += 1;
            while i < b.len() && (in_str || b[i] != close) {
                if b[i] == b'"' {
                    in_str = !in_str;
                }
                i += 1;
            }
            i += 1;
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            if word == "by" || word == "without" {
                skip_next_group = true;
            } else if !PROMQL_WORDS.contains(&word) {
                out.push(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn promql_metric_name_extraction() {
    assert_eq!(
        promql_metric_names(
            r#"histogram_quantile(0.99, sum by (le, caller) (rate(a_bucket{x=~"b{c}|d"}[5m]))) / 2 * c_total"#
        ),
        ["a_bucket", "c_total"]
    );
}

#[test]
fn grafana_dashboard_is_valid_and_uses_only_known_metrics() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/sluice-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("dashboard file");
    let d: Value = serde_json::from_str(&text).expect("dashboard is valid JSON");
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert!(d["title"].is_string() && d["uid"].is_string());

    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("template variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    let mut exprs: Vec<String> = Vec::new();
    for name in ["caller", "model"] {
        let v = var(name);
        assert_eq!(v["type"], "query");
        assert_eq!(v["datasource"]["uid"], "${datasource}");
        let def = v["definition"].as_str().expect("definition");
        // label_values(metric, label): the metric must be known.
        let metric = def
            .strip_prefix("label_values(")
            .and_then(|r| r.split(',').next())
            .expect("label_values(metric, label)");
        assert!(DASHBOARD_METRICS.contains(&metric.trim()), "{def}");
    }

    let panels = d["panels"].as_array().expect("panels");
    let mut ids = std::collections::HashSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id"
        );
        assert!(p["gridPos"]["w"].is_u64() && p["gridPos"]["h"].is_u64());
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("expr").to_owned();
            let names = promql_metric_names(&expr);
            assert!(!names.is_empty(), "no metric in {expr}");
            for n in &names {
                assert!(
                    DASHBOARD_METRICS.contains(&n.as_str()),
                    "panel {} uses unknown metric {n}: {expr}",
                    p["title"]
                );
            }
            exprs.push(expr);
        }
    }
    // Every required view is there.
    let all = exprs.join("\n");
    for needle in [
        "sum by (caller, gen_ai_token_type) (rate(gen_ai_client_token_usage_sum",
        "sum by (gen_ai_request_model, gen_ai_token_type) (rate(gen_ai_client_token_usage_sum",
        "sum by (caller) (rate(sluice_gen_ai_cost_microusd_total",
        "sum by (gen_ai_request_model) (rate(sluice_gen_ai_cost_microusd_total",
        "histogram_quantile(0.5, sum by (le) (rate(gen_ai_server_time_to_first_token_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(gen_ai_server_time_to_first_token_seconds_bucket",
        "histogram_quantile(0.5, sum by (le) (rate(gen_ai_server_time_per_output_token_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, listener) (rate(sluice_overhead_seconds_bucket",
        "sluice_requests_total{status=~\"5..|4..\"}",
        "rate(sluice_streams_aborted_total",
    ] {
        assert!(all.contains(needle), "missing panel query: {needle}");
    }
}

fn random_string(max_chars: usize) -> String {
    const ALPHABET: &[char] = &[
        'a', 'Z', '0', ' ', '"', '\\', '\n', 'é', '日', '🦀', '\u{0}',
    ];
    (0..fastrand::usize(..=max_chars))
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())])
        .collect()
}

fn random_span() -> SpanRecord {
    const KEYS: &[&str] = &[
        "gen_ai.request.model",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "server.port",
        "sluice.caller",
        "sluice.ratio",
        "sluice.flag",
        "k",
    ];
    let attributes = KEYS
        .iter()
        .filter(|_| fastrand::bool())
        .map(|&k| {
            let v = match fastrand::u8(..4) {
                0 => AttrValue::Str(random_string(if fastrand::u8(..8) == 0 { 300 } else { 12 })),
                1 => AttrValue::Int(fastrand::i64(..)),
                // Few significant digits: serde_json (without `float_roundtrip`) parses
                // long decimals to a neighbouring double, which would be a false failure.
                2 => AttrValue::F64(f64::from(fastrand::i16(..)) / 8.0),
                _ => AttrValue::Bool(fastrand::bool()),
            };
            (k, v)
        })
        .collect();
    SpanRecord {
        trace_id: otel::new_trace_id(),
        span_id: otel::new_span_id(),
        parent_span_id: fastrand::bool().then(otel::new_span_id),
        name: random_string(40),
        kind_client: fastrand::bool(),
        start_unix_ns: fastrand::u64(..),
        end_unix_ns: fastrand::u64(..),
        error: fastrand::bool().then(|| random_string(30)),
        attributes,
    }
}

#[test]
fn random_spans_round_trip_through_the_official_decoder() {
    let Some(rx) = receiver(&[]) else { return };
    let mut c = cfg(format!("http://{}/v1/traces", rx.addr));
    c.queue_spans_max = 1024;
    c.batch_spans_max = 50;
    let (tx, handle) = otel::start(&c);
    let sent: Vec<SpanRecord> = (0..300).map(|_| random_span()).collect();
    for s in &sent {
        tx.try_send(s.clone());
    }
    handle.shutdown();
    assert_eq!(tx.stats().exported, 300, "{:?}", tx.stats());
    let got = read_spans(&rx.out, 300);
    assert_eq!(got.len(), 300);
    let by_id: std::collections::HashMap<&str, &Value> = got
        .iter()
        .map(|g| (g["span_id"].as_str().expect("span_id"), g))
        .collect();
    for s in &sent {
        let g = by_id[otel::to_hex(&s.span_id).as_str()];
        assert_eq!(g["trace_id"], otel::to_hex(&s.trace_id).as_str());
        assert_eq!(
            g["parent_span_id"],
            s.parent_span_id
                .map_or(Value::Null, |p| Value::from(otel::to_hex(&p)))
        );
        assert_eq!(g["name"], s.name.as_str());
        assert_eq!(g["kind"], if s.kind_client { 3 } else { 2 });
        assert_eq!(g["start_time_unix_nano"], s.start_unix_ns);
        assert_eq!(g["end_time_unix_nano"], s.end_unix_ns);
        let want: serde_json::Map<String, Value> = s
            .attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json_attr(v)))
            .collect();
        assert_eq!(g["attributes"], Value::Object(want));
        assert_eq!(g["has_status"], s.error.is_some());
        if let Some(m) = &s.error {
            assert_eq!(g["status"]["message"], m.as_str());
            assert_eq!(g["status"]["code"], 2);
        }
    }
}
