//! `sluice-loadtest run`: the load generator.
//!
//! Owns: the run configuration, worker threads (one monoio runtime each, connections split
//! evenly), the warm-up/measure window, and turning raw [`stats::Stats`] into a
//! [`RunResult`] (JSON) and a human table. Invariants: a request belongs to the measure window
//! iff its intended start lies in it; open loop never measures quietly below the target rate
//! (`sustained = false` plus a "could not sustain" note); requests in flight at the end of the
//! window are waited for (bounded by `timeout`), so long streams are measured whole.
//! Trade-off: HTTP/1.1 only, one request in flight per connection (no pipelining), plain TCP.

pub mod client;
pub mod scheduler;
pub mod stats;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use client::{Conn, SseTrack};
use scheduler::Scheduler;
use stats::{record_us, ErrorKind, Percentiles, Stats};

/// Pause after a failed connect before the same connection slot retries.
const CONNECT_RETRY_MS: u64 = 10;
/// Open loop: sleep only when the next slot is at least this far away (timer granularity).
const MIN_SLEEP_US: u64 = 200;
/// Time allowed for the pre-flight check that a target answers.
pub const PREFLIGHT_TIMEOUT_MS: u64 = 3000;

/// Errors that stop a run before it measures anything.
#[derive(Debug, Error)]
pub enum RunError {
    #[error("target {name}: bad URL {url:?}: {why}")]
    BadUrl {
        name: String,
        url: String,
        why: &'static str,
    },
    #[error("target {name} ({url}): TLS setup: {why}")]
    TlsSetup {
        name: String,
        url: String,
        why: String,
    },
    #[error("target {name} ({url}) does not answer: {why}")]
    Unreachable {
        name: String,
        url: String,
        why: String,
    },
    #[error("cannot start load worker: {0}")]
    Runtime(std::io::Error),
    #[error("no requests configured")]
    NoRequests,
}

/// One request template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSpec {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub weight: u32,
}

/// Closed loop (fixed concurrency, max throughput) or open loop (fixed arrival rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Closed { concurrency: usize },
    Open { rate_per_s: f64 },
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub name: String,
    pub url: String,
    pub requests: Vec<RequestSpec>,
    pub mode: Mode,
    /// Open loop: number of connections (closed loop uses `concurrency`).
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub timeout: Duration,
    pub workers: usize,
}

/// Environment variable naming a PEM CA bundle that `https://` targets are verified against
/// (only that bundle is trusted: targets are test proxies with test CAs).
pub const TLS_CA_FILE_ENV: &str = "SLUICE_LOADTEST_CA_FILE";
/// Environment variable overriding the TLS server name (SNI and verification) of `https://`
/// targets, for a target addressed by IP that serves a certificate for a name (interception).
pub const TLS_SERVER_NAME_ENV: &str = "SLUICE_LOADTEST_TLS_SERVER_NAME";

/// Parsed `http://host:port/prefix` or `https://host:port/prefix`.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host_header: String,
    pub prefix: String,
    /// `https://`: the connector and the server name to verify.
    pub tls: Option<(
        monoio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("host_header", &self.host_header)
            .field("prefix", &self.prefix)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

fn tls_connector(
    host: &str,
) -> Result<
    (
        monoio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    ),
    String,
> {
    use rustls_pki_types::pem::PemObject;
    let ca = std::env::var(TLS_CA_FILE_ENV)
        .map_err(|_| format!("https:// targets need {TLS_CA_FILE_ENV}=<PEM CA bundle>"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in
        rustls_pki_types::CertificateDer::pem_file_iter(&ca).map_err(|e| format!("{ca}: {e}"))?
    {
        roots
            .add(c.map_err(|e| format!("{ca}: {e}"))?)
            .map_err(|e| format!("{ca}: {e}"))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = std::env::var(TLS_SERVER_NAME_ENV).unwrap_or_else(|_| host.to_string());
    let name = rustls_pki_types::ServerName::try_from(name.clone())
        .map_err(|_| format!("`{name}` is not a TLS server name"))?;
    Ok((
        monoio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)),
        name,
    ))
}

/// Parses and resolves a target URL (`http://`, or `https://` verified against
/// `SLUICE_LOADTEST_CA_FILE`).
pub fn parse_target(name: &str, url: &str) -> Result<Target, RunError> {
    let bad = |why| RunError::BadUrl {
        name: name.into(),
        url: url.into(),
        why,
    };
    let (rest, https) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (r, false),
        (_, Some(r)) => (r, true),
        _ => return Err(bad("only http:// and https:// URLs are supported")),
    };
    let (hostport, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if hostport.is_empty() {
        return Err(bad("missing host"));
    }
    let with_port = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_string()
    } else if https {
        format!("{hostport}:443")
    } else {
        format!("{hostport}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|_| bad("cannot resolve host"))?
        .next()
        .ok_or_else(|| bad("cannot resolve host"))?;
    let tls = if https {
        let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Some(tls_connector(host).map_err(|why| RunError::TlsSetup {
            name: name.into(),
            url: url.into(),
            why,
        })?)
    } else {
        None
    };
    Ok(Target {
        addr,
        host_header: hostport.to_string(),
        prefix: prefix.to_string(),
        tls,
    })
}

/// Checks that the target accepts a TCP connection; the error names the target.
pub fn preflight(name: &str, url: &str) -> Result<Target, RunError> {
    let t = parse_target(name, url)?;
    std::net::TcpStream::connect_timeout(&t.addr, Duration::from_millis(PREFLIGHT_TIMEOUT_MS))
        .map_err(|e| RunError::Unreachable {
            name: name.into(),
            url: url.into(),
            why: e.to_string(),
        })?;
    Ok(t)
}

/// Encodes a request template for a target.
pub fn encode(spec: &RequestSpec, t: &Target) -> Vec<u8> {
    let mut s = format!(
        "{} {}{} HTTP/1.1\r\nhost: {}\r\n",
        spec.method, t.prefix, spec.path, t.host_header
    );
    let mut has_ct = false;
    for (k, v) in &spec.headers {
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("host") {
            continue;
        }
        has_ct |= k.eq_ignore_ascii_case("content-type");
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    if !spec.body.is_empty() || !matches!(spec.method.as_str(), "GET" | "HEAD" | "DELETE") {
        if !has_ct && !spec.body.is_empty() {
            s.push_str("content-type: application/json\r\n");
        }
        s.push_str(&format!("content-length: {}\r\n", spec.body.len()));
    }
    s.push_str("\r\n");
    let mut v = s.into_bytes();
    v.extend_from_slice(&spec.body);
    v
}

/// Summary of one run (or of several merged rounds) against one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub target: String,
    pub url: String,
    pub mode: String,
    pub target_rate: Option<f64>,
    pub concurrency: usize,
    pub connections: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Requests sent in the measure window (any outcome).
    pub requests: u64,
    pub ok: u64,
    /// `requests / duration_s`.
    pub rps: f64,
    pub latency_us: Percentiles,
    pub ttft_us: Option<Percentiles>,
    pub itl_us: Option<Percentiles>,
    pub tokens: u64,
    pub tokens_per_s: f64,
    pub stream_tokens_per_s_mean: Option<f64>,
    pub errors: stats::ErrorCounts,
    pub status_codes: BTreeMap<String, u64>,
    pub bytes_in: u64,
    pub missed: u64,
    pub sustained: bool,
    pub note: Option<String>,
}

/// Turns merged stats into a result. `duration_s` is the total measured time.
pub fn summarize(cfg: &RunConfig, st: &Stats, duration_s: f64) -> RunResult {
    let requests = st.ok + st.errors.total();
    let rps = if duration_s > 0.0 {
        requests as f64 / duration_s
    } else {
        0.0
    };
    let (mode, target_rate, concurrency) = match cfg.mode {
        Mode::Closed { concurrency } => ("closed".to_string(), None, concurrency),
        Mode::Open { rate_per_s } => ("open".to_string(), Some(rate_per_s), cfg.connections),
    };
    let sustained = target_rate.is_none_or(|r| scheduler::sustained(rps, r));
    let note = match target_rate {
        Some(r) if !sustained => Some(format!(
            "could not sustain {r:.0} req/s (achieved {rps:.0})"
        )),
        _ => None,
    };
    RunResult {
        target: cfg.name.clone(),
        url: cfg.url.clone(),
        mode,
        target_rate,
        concurrency,
        connections: match cfg.mode {
            Mode::Closed { concurrency } => concurrency,
            Mode::Open { .. } => cfg.connections,
        },
        duration_s,
        warmup_s: cfg.warmup.as_secs_f64(),
        requests,
        ok: st.ok,
        rps,
        latency_us: Percentiles::of(&st.latency),
        ttft_us: (!st.ttft.is_empty()).then(|| Percentiles::of(&st.ttft)),
        itl_us: (!st.itl.is_empty()).then(|| Percentiles::of(&st.itl)),
        tokens: st.tokens,
        tokens_per_s: if duration_s > 0.0 {
            st.tokens as f64 / duration_s
        } else {
            0.0
        },
        stream_tokens_per_s_mean: (st.streams > 0).then(|| st.stream_rate_sum / st.streams as f64),
        errors: st.errors.clone(),
        status_codes: st
            .status_codes
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        bytes_in: st.bytes_in,
        missed: st.missed,
        sustained,
        note,
    }
}

struct Shared {
    cfg: RunConfig,
    target: Target,
    encoded: Vec<Vec<u8>>,
    /// Request index sequence expanded from weights.
    order: Vec<usize>,
}

/// Runs the load once and returns the raw merged stats.
pub fn execute(cfg: &RunConfig) -> Result<Stats, RunError> {
    if cfg.requests.is_empty() {
        return Err(RunError::NoRequests);
    }
    let target = preflight(&cfg.name, &cfg.url)?;
    let encoded: Vec<Vec<u8>> = cfg.requests.iter().map(|r| encode(r, &target)).collect();
    // Interleave weighted kinds rather than running each kind in a block.
    let order = interleave(&cfg.requests);
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        target,
        encoded,
        order,
    });
    let workers = cfg.workers.max(1);
    let start = Instant::now() + Duration::from_millis(20);
    let mut handles = Vec::new();
    for w in 0..workers {
        let sh = shared.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("load-{w}"))
                .spawn(move || worker(w, workers, sh, start))
                .map_err(RunError::Runtime)?,
        );
    }
    let mut total = Stats::default();
    for h in handles {
        match h.join() {
            Ok(Ok(s)) => total.merge(&s),
            Ok(Err(e)) => return Err(RunError::Runtime(e)),
            Err(_) => {
                return Err(RunError::Runtime(std::io::Error::other(
                    "load worker panicked",
                )))
            }
        }
    }
    Ok(total)
}

/// Spreads weighted request kinds evenly (e.g. weights 2,1 → 0,1,0).
pub fn interleave(reqs: &[RequestSpec]) -> Vec<usize> {
    let total: u32 = reqs.iter().map(|r| r.weight.clamp(1, 1000)).sum();
    let mut credit = vec![0i64; reqs.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (i, r) in reqs.iter().enumerate() {
            credit[i] += i64::from(r.weight.clamp(1, 1000));
        }
        let (best, _) = credit
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
            .unwrap_or((0, &0));
        credit[best] -= i64::from(total);
        out.push(best);
    }
    out
}

fn split(n: usize, parts: usize, i: usize) -> usize {
    n / parts + usize::from(i < n % parts)
}

fn worker(w: usize, workers: usize, sh: Arc<Shared>, start: Instant) -> std::io::Result<Stats> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()?;
    rt.block_on(async move {
        let cfg = &sh.cfg;
        let measure_start = start + cfg.warmup;
        let end = measure_start + cfg.duration;
        let stats = Rc::new(RefCell::new(Stats::default()));
        let counter = Rc::new(Cell::new(w as u64 * 7919));
        let (conns, sched) = match cfg.mode {
            Mode::Closed { concurrency } => (split(concurrency.max(1), workers, w), None),
            Mode::Open { rate_per_s } => {
                let per = rate_per_s / workers as f64;
                (
                    split(cfg.connections.max(1), workers, w),
                    Some(Rc::new(RefCell::new(Scheduler::new(
                        per,
                        w as f64 / workers as f64,
                    )))),
                )
            }
        };
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let sh = sh.clone();
            let stats = stats.clone();
            let counter = counter.clone();
            let sched = sched.clone();
            tasks.push(monoio::spawn(async move {
                conn_loop(&sh, start, measure_start, end, &stats, &counter, sched).await;
            }));
        }
        for t in tasks {
            t.await;
        }
        if let Some(s) = &sched {
            let s = s.borrow();
            let window_ns = (end - start).as_nanos() as u64;
            let warm_ns = (measure_start - start).as_nanos() as u64;
            let expected = s.slots_until(window_ns) - s.slots_until(warm_ns);
            let mut st = stats.borrow_mut();
            let sent = st.ok + st.errors.total();
            st.missed = expected.saturating_sub(sent);
        }
        let st = stats.borrow().clone();
        Ok(st)
    })
}

#[allow(clippy::too_many_arguments)]
async fn conn_loop(
    sh: &Shared,
    start: Instant,
    measure_start: Instant,
    end: Instant,
    stats: &RefCell<Stats>,
    counter: &Cell<u64>,
    sched: Option<Rc<RefCell<Scheduler>>>,
) {
    let cfg = &sh.cfg;
    let mut conn: Option<Conn> = None;
    let mut sse = SseTrack::default();
    let encoded: Vec<Rc<Vec<u8>>> = sh.encoded.iter().map(|e| Rc::new(e.clone())).collect();
    let mut free_at = start;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let intended = match &sched {
            None => now.max(start),
            Some(s) => {
                let off = s.borrow_mut().next_slot_ns();
                let slot = start + Duration::from_nanos(off);
                if slot >= end {
                    break;
                }
                let now = Instant::now();
                if slot > now + Duration::from_micros(MIN_SLEEP_US) {
                    monoio::time::sleep_until(monoio::time::Instant::from_std(slot)).await;
                }
                slot
            }
        };
        if intended < start {
            continue;
        }
        let in_window = intended >= measure_start;
        if conn.is_none() {
            match monoio::time::timeout(
                cfg.timeout,
                Conn::connect(sh.target.addr, sh.target.tls.as_ref()),
            )
            .await
            {
                Ok(Ok(c)) => conn = Some(c),
                _ => {
                    if in_window {
                        stats.borrow_mut().errors.add(ErrorKind::Connect);
                    }
                    monoio::time::sleep(Duration::from_millis(CONNECT_RETRY_MS)).await;
                    free_at = Instant::now();
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let i = counter.get();
        counter.set(i.wrapping_add(1));
        let req = encoded[sh.order[(i % sh.order.len() as u64) as usize]].clone();
        sse.reset();
        let sent = Instant::now();
        let res = monoio::time::timeout(cfg.timeout, c.exchange(req, &mut sse)).await;
        let done = Instant::now();
        // CO correction: queued behind a busy connection → measure from the slot.
        let from = if sched.is_some() && free_at > intended {
            intended
        } else {
            sent
        };
        free_at = done;
        let outcome = match res {
            Err(_) => Err(ErrorKind::Timeout),
            Ok(r) => r,
        };
        if !matches!(outcome, Ok(ref ex) if ex.keep_alive) {
            conn = None;
        }
        if !in_window {
            continue;
        }
        let mut st = stats.borrow_mut();
        match outcome {
            Err(k) => st.errors.add(k),
            Ok(ex) => {
                st.bytes_in += ex.bytes_in;
                if (200..300).contains(&ex.status) {
                    st.ok += 1;
                    record_us(&mut st.latency, (done - from).as_micros() as u64);
                    if ex.streamed {
                        if let Some(first) = sse.first {
                            record_us(
                                &mut st.ttft,
                                first.saturating_duration_since(from).as_micros() as u64,
                            );
                        }
                        for g in &sse.gaps_us {
                            record_us(&mut st.itl, *g);
                        }
                        st.tokens += sse.tokens;
                        let secs = (done - from).as_secs_f64();
                        if secs > 0.0 && sse.tokens > 0 {
                            st.stream_rate_sum += sse.tokens as f64 / secs;
                            st.streams += 1;
                        }
                    }
                } else {
                    st.errors.add(ErrorKind::Status);
                    *st.status_codes.entry(ex.status).or_default() += 1;
                }
            }
        }
    }
}

/// Formats microseconds as `812us`, `1.25ms` or `2.10s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// Human-readable table of results.
pub fn table(results: &[RunResult]) -> String {
    let mut s = format!(
        "{:<12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9} {:>10}\n",
        "target",
        "req/s",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "errors",
        "ttft p50",
        "ttft p99",
        "tokens/s"
    );
    for r in results {
        let l = &r.latency_us;
        let (t50, t99) = r
            .ttft_us
            .as_ref()
            .map_or(("-".into(), "-".into()), |t| (fmt_us(t.p50), fmt_us(t.p99)));
        s.push_str(&format!(
            "{:<12} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9} {:>10.0}\n",
            r.target,
            r.rps,
            fmt_us(l.p50),
            fmt_us(l.p90),
            fmt_us(l.p99),
            fmt_us(l.p999),
            fmt_us(l.max),
            r.errors.total(),
            t50,
            t99,
            r.tokens_per_s
        ));
        if r.errors.total() > 0 {
            let e = &r.errors;
            s.push_str(&format!(
                "{:<12} errors: connect={} timeout={} status={} {:?} reset={} parse={}\n",
                "", e.connect, e.timeout, e.status, r.status_codes, e.reset, e.parse
            ));
        }
        if let Some(n) = &r.note {
            s.push_str(&format!("{:<12} WARNING: {n}\n", ""));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(w: u32) -> RequestSpec {
        RequestSpec {
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            headers: vec![],
            body: b"{}".to_vec(),
            weight: w,
        }
    }

    #[test]
    fn weights_interleave() {
        let o = interleave(&[spec(2), spec(1)]);
        assert_eq!(o.len(), 3);
        assert_eq!(o.iter().filter(|&&i| i == 0).count(), 2);
        assert_ne!(o[0], o[1]);
    }

    #[test]
    fn urls_and_encoding() {
        let t = parse_target("x", "http://127.0.0.1:19090/base/").unwrap();
        assert_eq!(t.prefix, "/base");
        let e = String::from_utf8(encode(&spec(1), &t)).unwrap();
        assert!(
            e.starts_with("POST /base/v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:19090\r\n")
        );
        assert!(e.ends_with("content-length: 2\r\n\r\n{}"));
        assert!(matches!(
            parse_target("x", "ftp://a"),
            Err(RunError::BadUrl { .. })
        ));
        let err = preflight("ghost", "http://127.0.0.1:1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ghost"), "{err}");
    }

    #[test]
    fn unsustained_rate_is_flagged() {
        let cfg = RunConfig {
            name: "t".into(),
            url: "http://127.0.0.1:1".into(),
            requests: vec![spec(1)],
            mode: Mode::Open { rate_per_s: 1000.0 },
            connections: 1,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(1),
            workers: 1,
        };
        let st = Stats {
            ok: 500,
            ..Default::default()
        };
        let r = summarize(&cfg, &st, 1.0);
        assert!(!r.sustained);
        assert_eq!(
            r.note.as_deref(),
            Some("could not sustain 1000 req/s (achieved 500)")
        );
    }
}
