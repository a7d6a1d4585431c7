//! `sluice-loadtest compare`: one scenario against several targets, interleaved round by round.
//!
//! Owns: the compare config (targets with optional start commands, pid files, CPU pinning,
//! readiness), starting and stopping the processes it launched, per-target CPU and memory
//! accounting from `/proc`, merging rounds, overhead versus the baseline, and writing the JSON
//! report plus an SVG chart next to it. Invariants: rounds run target after target
//! (direct, sluice, envoy, direct, ...) so machine drift hits all alike; only processes started
//! here are ever signalled, and they are stopped on every exit path (a drop guard); a target
//! whose `requires` paths are missing is *skipped with a note*, never silently dropped; a port
//! that is already busy before a start command runs is an error (it would measure a stale
//! process). Trade-off: CPU and RSS are sampled from `/proc` (utime+stime deltas, VmRSS every
//! [`RSS_SAMPLE_MS`], VmHWM), so short runs have tick (10 ms) resolution.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::run::stats::Stats;
use crate::run::{self, RunConfig, RunResult};
use crate::scenario::{self, Scenario};
use crate::{svg, sys};

/// How often RSS is sampled during a measure window.
pub const RSS_SAMPLE_MS: u64 = 100;
/// Default time a started target gets to accept connections.
pub const READY_TIMEOUT_MS: u64 = 15_000;
/// Time a stopped process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE_MS: u64 = 3_000;

/// Compare errors; each names the target or file involved.
#[derive(Debug, Error)]
pub enum CompareError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: field `{path}`: {msg}")]
    Parse {
        file: String,
        line: usize,
        column: usize,
        path: String,
        msg: String,
    },
    #[error("target {name}: {msg}")]
    Target { name: String, msg: String },
    #[error("{0}")]
    Other(String),
    #[error(transparent)]
    Scenario(#[from] scenario::ScenarioError),
    #[error(transparent)]
    Run(#[from] run::RunError),
}

/// A compare config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareConfig {
    /// Start the mock upstream before the targets.
    #[serde(default)]
    pub mock: Option<MockStart>,
    /// CPUs for the load generator.
    #[serde(default)]
    pub load_cpus: Option<String>,
    /// Target that overheads are computed against (default `direct`, else the first).
    #[serde(default)]
    pub baseline: Option<String>,
    #[serde(default)]
    pub targets: Vec<TargetDef>,
}

/// How to start the mock upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockStart {
    #[serde(default = "default_mock_listen")]
    pub listen: String,
    #[serde(default)]
    pub cpus: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
}

fn default_mock_listen() -> String {
    "127.0.0.1:19090".into()
}

/// One target.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetDef {
    pub name: String,
    pub url: String,
    /// Shell command that starts the target (run with `sh -c`; env: PEERS, OUT, PIDFILE).
    #[serde(default)]
    pub start: Option<String>,
    /// The start command daemonizes and writes its pid here (e.g. Envoy via setsid, nginx).
    /// Without `start`: measure an already running process.
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
    /// Working directory for `start` (default: the config file's directory).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// CPUs to pin the started process to (`taskset -c`).
    #[serde(default)]
    pub cpus: Option<String>,
    /// Extra readiness check: GET this URL until it answers 200.
    #[serde(default)]
    pub ready_url: Option<String>,
    /// Skip the target (with a note) when any of these paths is missing.
    #[serde(default)]
    pub requires: Vec<PathBuf>,
}

/// Expands `${VAR}` and `${VAR:-default}` (defaults may nest) from the environment.
pub fn expand_env(s: &str) -> String {
    expand_with(s, &|k| std::env::var(k).ok())
}

fn expand_with(s: &str, get: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let body = &rest[i + 2..];
        // Find the matching close brace, allowing nested `${...}` in the default.
        let mut depth = 1;
        let mut end = None;
        let bytes = body.as_bytes();
        let mut j = 0;
        while j < bytes.len() {
            if bytes[j] == b'$' && bytes.get(j + 1) == Some(&b'{') {
                depth += 1;
                j += 2;
                continue;
            }
            if bytes[j] == b'}' {
                depth -= 1;
                if depth == 0 {
                    end = Some(j);
                    break;
                }
            }
            j += 1;
        }
        let Some(end) = end else {
            out.push_str(&rest[i..]);
            return out;
        };
        let inner = &body[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match get(name).filter(|v| !v.is_empty()) {
            Some(v) => out.push_str(&v),
            None => out.push_str(&expand_with(default.unwrap_or(""), get)),
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    out
}

impl CompareConfig {
    /// Expands environment references in addresses and paths (not in `start`: `sh` does that).
    pub fn expand(&mut self) {
        if let Some(m) = self.mock.as_mut() {
            m.listen = expand_env(&m.listen);
            m.args = m.args.iter().map(|a| expand_env(a)).collect();
        }
        for t in &mut self.targets {
            t.url = expand_env(&t.url);
            t.ready_url = t.ready_url.as_deref().map(expand_env);
            t.pid_file = t
                .pid_file
                .as_ref()
                .map(|p| PathBuf::from(expand_env(&p.to_string_lossy())));
            t.requires = t
                .requires
                .iter()
                .map(|p| PathBuf::from(expand_env(&p.to_string_lossy())))
                .collect();
        }
    }
}

/// Loads a compare config file.
pub fn load_config(path: &Path) -> Result<CompareConfig, CompareError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CompareError::Read {
        file: file.clone(),
        source,
    })?;
    let de = serde_yaml_ng::Deserializer::from_str(&text);
    let mut cfg: CompareConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let (line, column) = inner.location().map_or((0, 0), |l| (l.line(), l.column()));
        CompareError::Parse {
            file,
            line,
            column,
            path,
            msg: inner.to_string(),
        }
    })?;
    cfg.expand();
    Ok(cfg)
}

/// Everything `compare` needs beyond the config file.
#[derive(Debug, Clone)]
pub struct CompareOpts {
    pub scenario_path: PathBuf,
    pub config: CompareConfig,
    /// Directory relative paths in the config resolve against.
    pub config_dir: PathBuf,
    pub rounds: Option<u32>,
    pub duration: Option<Duration>,
    pub warmup: Option<Duration>,
    pub out: PathBuf,
    pub command_line: String,
}

/// Overhead of a target over the baseline, microseconds (negative = faster).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Overhead {
    pub p50: i64,
    pub p90: i64,
    pub p99: i64,
    pub p999: i64,
}

/// Per-target section of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetReport {
    pub name: String,
    pub url: String,
    pub skipped: Option<String>,
    pub result: Option<RunResult>,
    pub pid: Option<u32>,
    pub cpus: Option<String>,
    /// CPU seconds (user+system) of the target's process tree during the measure windows.
    pub cpu_s: Option<f64>,
    pub cpu_us_per_req: Option<f64>,
    /// Average cores busy during the measure windows.
    pub cpu_cores: Option<f64>,
    pub idle_rss_bytes: Option<u64>,
    pub rss_during_max_bytes: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
    /// (RSS during load - idle RSS) / concurrency, for long-stream scenarios.
    pub mem_per_stream_bytes: Option<f64>,
    pub overhead_us: Option<Overhead>,
    pub rps_ratio_vs_baseline: Option<f64>,
    /// Latency percentiles of each round on its own, in round order.
    #[serde(default)]
    pub rounds: Vec<RoundPoint>,
    /// The overhead measured round by round against the baseline's run in the same round
    /// (see [`paired_overhead`]); `None` for the baseline or with fewer than 2 rounds.
    #[serde(default)]
    pub paired_overhead_us: Option<PairedOverhead>,
}

/// One round of one target.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct RoundPoint {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub rps: f64,
}

/// Per-round (paired) overhead: for each round, the target's percentile minus the baseline's
/// in that round; the median and range of those differences.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PairedOverhead {
    pub rounds: u32,
    pub p50_median: i64,
    pub p50_min: i64,
    pub p50_max: i64,
    pub p99_median: i64,
    pub p99_min: i64,
    pub p99_max: i64,
}

/// The paired overhead of `t` over `base`, round by round.
///
/// Why: the overhead of the merged histograms lets one noisy round (another VM's burst on the
/// host) dominate a small difference. Rounds run back to back (target after target), so a
/// target's round and the baseline's round of the same index share the machine's state; the
/// median of the per-round differences is robust to the rounds a burst hit, and the range
/// shows how far the rounds disagree. Both figures are reported; neither replaces the other.
pub fn paired_overhead(t: &[RoundPoint], base: &[RoundPoint]) -> Option<PairedOverhead> {
    let n = t.len().min(base.len());
    if n < 2 {
        return None;
    }
    let stat = |f: fn(&RoundPoint) -> u64| {
        let mut d: Vec<i64> = (0..n)
            .map(|i| f(&t[i]) as i64 - f(&base[i]) as i64)
            .collect();
        d.sort_unstable();
        // Median of an even count: the mean of the middle two, rounded towards zero.
        let med = if n % 2 == 1 {
            d[n / 2]
        } else {
            (d[n / 2 - 1] + d[n / 2]) / 2
        };
        (med, d[0], d[n - 1])
    };
    let (p50_median, p50_min, p50_max) = stat(|r| r.p50);
    let (p99_median, p99_min, p99_max) = stat(|r| r.p99);
    Some(PairedOverhead {
        rounds: n as u32,
        p50_median,
        p50_min,
        p50_max,
        p99_median,
        p99_min,
        p99_max,
    })
}

/// Machine facts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub nproc: usize,
    pub kernel: String,
    /// Load averages (1/5/15 min) when the compare started: other work on the machine.
    #[serde(default)]
    pub loadavg_at_start: Option<String>,
}

/// The whole compare report (one scenario).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareReport {
    pub scenario: String,
    pub scenario_file: String,
    pub description: String,
    pub command: String,
    pub date_utc: String,
    pub git_commit: String,
    pub machine: Machine,
    pub layout: String,
    pub rounds: u32,
    pub mode: String,
    pub baseline: String,
    pub targets: Vec<TargetReport>,
    pub chart: Option<String>,
}

struct Proc {
    name: String,
    pid: u32,
    child: Option<Child>,
}

/// Stops every process started here when dropped.
#[derive(Default)]
struct Guard {
    procs: Vec<Proc>,
}

impl Guard {
    /// Names a started process that is no longer running (killed or crashed mid-run).
    fn check_alive(&mut self) -> Result<(), CompareError> {
        for p in &mut self.procs {
            let dead = match p.child.as_mut() {
                Some(c) => !matches!(c.try_wait(), Ok(None)),
                None => !sys::alive(p.pid),
            };
            if dead {
                return Err(CompareError::Target {
                    name: p.name.clone(),
                    msg: format!(
                        "process {} exited during the run (crashed or killed by someone else); results discarded",
                        p.pid
                    ),
                });
            }
        }
        Ok(())
    }

    fn stop_all(&mut self) {
        for p in self.procs.drain(..).rev() {
            stop(p);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn stop(mut p: Proc) {
    let pid = p.pid as libc::pid_t;
    // Never signal a pid that already exited (it could have been reused by someone else).
    let gone = match p.child.as_mut() {
        Some(c) => !matches!(c.try_wait(), Ok(None)),
        None => !sys::alive(p.pid),
    };
    if gone {
        return;
    }
    // SAFETY: signalling a pid we started ourselves.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_millis(STOP_GRACE_MS);
    loop {
        if let Some(c) = p.child.as_mut() {
            if matches!(c.try_wait(), Ok(Some(_))) {
                break;
            }
        } else if !sys::alive(p.pid) {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "compare: {} (pid {}) ignored SIGTERM; sending SIGKILL",
                p.name, p.pid
            );
            // SAFETY: as above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            if let Some(c) = p.child.as_mut() {
                let _ = c.wait();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn port_open(addr: std::net::SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

fn http_get_ok(url: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(t) = run::parse_target("ready", url) else {
        return false;
    };
    let Ok(mut s) = TcpStream::connect_timeout(&t.addr, Duration::from_millis(300)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(1000)));
    let path = if t.prefix.is_empty() { "/" } else { &t.prefix };
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        t.host_header
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    buf[..n].starts_with(b"HTTP/1.1 200") || buf[..n].starts_with(b"HTTP/1.0 200")
}

fn taskset_prefix(cpus: &Option<String>) -> Result<Vec<String>, CompareError> {
    match cpus {
        None => Ok(Vec::new()),
        Some(c) => {
            sys::parse_cpu_list(c)
                .ok_or_else(|| CompareError::Other(format!("bad CPU list {c:?}")))?;
            Ok(vec!["taskset".into(), "-c".into(), c.clone()])
        }
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Starts the mock upstream (this same binary) and waits for its ready line.
fn start_mock(m: &MockStart, guard: &mut Guard) -> Result<(), CompareError> {
    let addr: std::net::SocketAddr = m
        .listen
        .parse()
        .map_err(|_| CompareError::Other(format!("mock.listen: bad address {:?}", m.listen)))?;
    if port_open(addr) {
        return Err(CompareError::Target {
            name: "mock".into(),
            msg: format!("{addr} is already in use; stop the other process first"),
        });
    }
    let exe = std::env::current_exe().map_err(|e| CompareError::Other(e.to_string()))?;
    let mut argv = taskset_prefix(&m.cpus)?;
    argv.push(exe.display().to_string());
    argv.extend(["mock".to_string(), "--listen".into(), m.listen.clone()]);
    argv.extend(m.args.iter().cloned());
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CompareError::Target {
            name: "mock".into(),
            msg: format!("cannot start {argv:?}: {e}"),
        })?;
    let pid = child.id();
    let stdout = child.stdout.take();
    guard.procs.push(Proc {
        name: "mock".into(),
        pid,
        child: Some(child),
    });
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(out) = stdout {
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the mock never blocks on a full pipe.
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
    }
    match rx.recv_timeout(Duration::from_millis(READY_TIMEOUT_MS)) {
        Ok(l) if l.starts_with("mock listening on") => Ok(()),
        Ok(l) => Err(CompareError::Target {
            name: "mock".into(),
            msg: format!("unexpected start-up output {l:?}"),
        }),
        Err(_) => Err(CompareError::Target {
            name: "mock".into(),
            msg: "did not print `mock listening on` in time".into(),
        }),
    }
}

/// Starts one target if it has a start command; returns its pid if known.
fn start_target(
    t: &TargetDef,
    dir: &Path,
    out_dir: &Path,
    guard: &mut Guard,
) -> Result<Option<u32>, CompareError> {
    let err = |msg: String| CompareError::Target {
        name: t.name.clone(),
        msg,
    };
    let target = run::parse_target(&t.name, &t.url)?;
    let pid_file = t.pid_file.as_ref().map(|p| resolve(dir, p));
    let Some(cmd) = &t.start else {
        // Not started here: measure it if a pid file is given.
        return Ok(pid_file.as_deref().and_then(sys::read_pid_file));
    };
    if port_open(target.addr) {
        return Err(err(format!(
            "{} is already in use before starting it; stop the stale process first",
            target.addr
        )));
    }
    let cwd = t
        .cwd
        .as_ref()
        .map_or_else(|| dir.to_path_buf(), |c| resolve(dir, c));
    let log = out_dir.join(format!("{}.log", t.name));
    let log_file =
        std::fs::File::create(&log).map_err(|e| err(format!("log {}: {e}", log.display())))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| err(format!("log {}: {e}", log.display())))?;
    let mut argv = taskset_prefix(&t.cpus)?;
    argv.push("sh".into());
    argv.push("-c".into());
    if let Some(pf) = &pid_file {
        let _ = std::fs::remove_file(pf);
        argv.push(cmd.clone());
    } else {
        argv.push(format!("exec {cmd}"));
    }
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..])
        .current_dir(&cwd)
        .env("PEERS", dir)
        .env("OUT", out_dir)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err);
    if let Some(pf) = &pid_file {
        c.env("PIDFILE", pf);
    }
    let mut child = c
        .spawn()
        .map_err(|e| err(format!("cannot run {cmd:?}: {e}")))?;
    let deadline = Instant::now() + Duration::from_millis(READY_TIMEOUT_MS);
    let pid = if let Some(pf) = &pid_file {
        // The command daemonizes: wait for it to exit, then for the pid file.
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                return Err(err(format!(
                    "start command did not return; log: {}",
                    log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            return Err(err(format!(
                "start command failed ({status}); log: {}",
                log.display()
            )));
        }
        loop {
            if let Some(pid) = sys::read_pid_file(pf) {
                break pid;
            }
            if Instant::now() >= deadline {
                return Err(err(format!(
                    "no pid in {}; log: {}",
                    pf.display(),
                    log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    } else {
        child.id()
    };
    guard.procs.push(Proc {
        name: t.name.clone(),
        pid,
        child: if pid_file.is_some() {
            None
        } else {
            Some(child)
        },
    });
    loop {
        let ready = port_open(target.addr) && t.ready_url.as_deref().is_none_or(http_get_ok);
        if ready {
            break;
        }
        if !sys::alive(pid) {
            return Err(err(format!(
                "exited during start-up; log: {}",
                log.display()
            )));
        }
        if Instant::now() >= deadline {
            return Err(err(format!(
                "did not become ready at {} within {} ms; log: {}",
                t.url,
                READY_TIMEOUT_MS,
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Some(pid))
}

struct Acc {
    def: TargetDef,
    pid: Option<u32>,
    skipped: Option<String>,
    stats: Stats,
    measured_s: f64,
    cpu_s: f64,
    cpu_known: bool,
    idle_rss: Option<u64>,
    rss_max: Option<u64>,
    cfg: Option<RunConfig>,
    rounds: Vec<RoundPoint>,
}

/// Samples CPU at the start of the measure window and max RSS during it.
fn measure_window<T>(
    pid: Option<u32>,
    warmup: Duration,
    f: impl FnOnce() -> T,
) -> (T, Option<f64>, Option<u64>) {
    let Some(pid) = pid else {
        return (f(), None, None);
    };
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let sampler = std::thread::spawn(move || {
        std::thread::sleep(warmup + Duration::from_millis(20));
        let cpu0 = sys::tree_cpu_seconds(pid);
        let mut rss_max: Option<u64> = None;
        while !s2.load(Ordering::Relaxed) {
            if let Some(r) = sys::tree_rss_bytes(pid) {
                rss_max = Some(rss_max.map_or(r, |m| m.max(r)));
            }
            std::thread::sleep(Duration::from_millis(RSS_SAMPLE_MS));
        }
        (cpu0, rss_max)
    });
    let out = f();
    let cpu1 = sys::tree_cpu_seconds(pid);
    stop.store(true, Ordering::Relaxed);
    let (cpu0, rss) = sampler.join().unwrap_or((None, None));
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some((b - a).max(0.0)),
        _ => None,
    };
    (out, cpu, rss)
}

/// Runs the comparison and writes `<out>` (JSON) and `<out stem>.svg`.
pub fn compare(opts: &CompareOpts) -> Result<CompareReport, CompareError> {
    sys::raise_nofile_limit();
    let loadavg_at_start = sys::loadavg();
    let sc_file = opts.scenario_path.display().to_string();
    let sc: Scenario = scenario::load(&opts.scenario_path)?;
    let base = opts.scenario_path.parent().unwrap_or(Path::new("."));
    let requests = sc.request_specs(base, &sc_file)?;
    let (mut duration, mut warmup, timeout) = sc.durations();
    if let Some(d) = opts.duration {
        duration = d;
    }
    if let Some(w) = opts.warmup {
        warmup = w;
    }
    let rounds = opts.rounds.unwrap_or(sc.rounds).max(1);
    let cfg = &opts.config;
    if cfg.targets.is_empty() {
        return Err(CompareError::Other(
            "no targets: use --target NAME=URL or a config with targets".into(),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for t in &cfg.targets {
        if !names.insert(t.name.clone()) {
            return Err(CompareError::Other(format!(
                "target {} given twice",
                t.name
            )));
        }
    }
    let out_dir = opts
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| CompareError::Other(format!("{}: {e}", out_dir.display())))?;
    // Start commands run in the config's directory: give them an absolute $OUT.
    let out_dir = std::fs::canonicalize(&out_dir).unwrap_or(out_dir);
    if let Some(c) = &cfg.load_cpus {
        let list = sys::parse_cpu_list(c)
            .ok_or_else(|| CompareError::Other(format!("load_cpus: bad CPU list {c:?}")))?;
        sys::pin_current_thread(&list)
            .map_err(|e| CompareError::Other(format!("pinning load generator: {e}")))?;
    }

    let mut guard = Guard::default();
    if let Some(m) = &cfg.mock {
        let mut m = m.clone();
        if m.args.is_empty() {
            m.args = sc.mock_args.clone();
        }
        start_mock(&m, &mut guard)?;
    }
    let mut accs: Vec<Acc> = Vec::new();
    for t in &cfg.targets {
        let missing: Vec<String> = t
            .requires
            .iter()
            .filter(|p| !resolve(&opts.config_dir, p).exists())
            .map(|p| p.display().to_string())
            .collect();
        let mut acc = Acc {
            def: t.clone(),
            pid: None,
            skipped: None,
            stats: Stats::default(),
            measured_s: 0.0,
            cpu_s: 0.0,
            cpu_known: false,
            idle_rss: None,
            rss_max: None,
            cfg: None,
            rounds: Vec::new(),
        };
        if !missing.is_empty() {
            let note = format!(
                "skipped: missing {} (relative to {})",
                missing.join(", "),
                opts.config_dir.display()
            );
            eprintln!("compare: target {}: {note}", t.name);
            acc.skipped = Some(note);
            accs.push(acc);
            continue;
        }
        acc.pid = start_target(t, &opts.config_dir, &out_dir, &mut guard)?;
        run::preflight(&t.name, &t.url)?;
        acc.idle_rss = acc.pid.and_then(sys::tree_rss_bytes);
        acc.cfg = Some(RunConfig {
            name: t.name.clone(),
            url: t.url.clone(),
            requests: requests.clone(),
            mode: sc.mode(),
            connections: sc.load.connections.unwrap_or(match sc.mode() {
                run::Mode::Open { rate_per_s } => ((rate_per_s / 1000.0) as usize).max(16),
                run::Mode::Closed { concurrency } => concurrency,
            }),
            duration,
            warmup,
            timeout,
            workers: sc.load.workers,
        });
        accs.push(acc);
    }

    for round in 1..=rounds {
        for acc in accs.iter_mut() {
            let Some(rc) = acc.cfg.clone() else { continue };
            let (res, cpu, rss) = measure_window(acc.pid, warmup, || run::execute(&rc));
            let st = res?;
            guard.check_alive()?;
            let one = run::summarize(&rc, &st, duration.as_secs_f64());
            eprintln!(
                "round {round}/{rounds} {:<10} {:>9.0} req/s  p50 {:>9}  p99 {:>9}  errors {}{}",
                acc.def.name,
                one.rps,
                run::fmt_us(one.latency_us.p50),
                run::fmt_us(one.latency_us.p99),
                one.errors.total(),
                one.note
                    .as_deref()
                    .map(|n| format!("  ({n})"))
                    .unwrap_or_default()
            );
            acc.rounds.push(RoundPoint {
                p50: one.latency_us.p50,
                p90: one.latency_us.p90,
                p99: one.latency_us.p99,
                rps: one.rps,
            });
            acc.stats.merge(&st);
            acc.measured_s += duration.as_secs_f64();
            if let Some(c) = cpu {
                acc.cpu_s += c;
                acc.cpu_known = true;
            }
            if let Some(r) = rss {
                acc.rss_max = Some(acc.rss_max.map_or(r, |m: u64| m.max(r)));
            }
        }
    }

    let baseline = cfg.baseline.clone().unwrap_or_else(|| {
        if cfg.targets.iter().any(|t| t.name == "direct") {
            "direct".into()
        } else {
            cfg.targets[0].name.clone()
        }
    });
    let mut targets: Vec<TargetReport> = Vec::new();
    for acc in &accs {
        let result = acc
            .cfg
            .as_ref()
            .map(|rc| run::summarize(rc, &acc.stats, acc.measured_s));
        let peak = acc.pid.and_then(sys::tree_peak_rss_bytes);
        let requests = result.as_ref().map_or(0, |r| r.requests);
        let concurrency = result.as_ref().map_or(0, |r| r.concurrency);
        targets.push(TargetReport {
            name: acc.def.name.clone(),
            url: acc.def.url.clone(),
            skipped: acc.skipped.clone(),
            pid: acc.pid,
            cpus: acc.def.cpus.clone(),
            cpu_s: acc.cpu_known.then_some(acc.cpu_s),
            cpu_us_per_req: (acc.cpu_known && requests > 0)
                .then(|| acc.cpu_s * 1e6 / requests as f64),
            cpu_cores: (acc.cpu_known && acc.measured_s > 0.0).then(|| acc.cpu_s / acc.measured_s),
            idle_rss_bytes: acc.idle_rss,
            rss_during_max_bytes: acc.rss_max,
            peak_rss_bytes: peak,
            mem_per_stream_bytes: match (acc.rss_max, acc.idle_rss) {
                (Some(d), Some(i)) if sc.per_stream_memory && concurrency > 0 => {
                    Some((d as f64 - i as f64) / concurrency as f64)
                }
                _ => None,
            },
            overhead_us: None,
            rps_ratio_vs_baseline: None,
            rounds: acc.rounds.clone(),
            paired_overhead_us: None,
            result,
        });
    }
    guard.stop_all();
    let base_res = targets
        .iter()
        .find(|t| t.name == baseline)
        .and_then(|t| t.result.clone());
    if let Some(b) = base_res.as_ref().filter(|b| b.latency_us.count > 0) {
        for t in targets.iter_mut() {
            if let Some(r) = t.result.as_ref().filter(|r| r.latency_us.count > 0) {
                let d = |x: u64, y: u64| x as i64 - y as i64;
                t.overhead_us = Some(Overhead {
                    p50: d(r.latency_us.p50, b.latency_us.p50),
                    p90: d(r.latency_us.p90, b.latency_us.p90),
                    p99: d(r.latency_us.p99, b.latency_us.p99),
                    p999: d(r.latency_us.p999, b.latency_us.p999),
                });
                t.rps_ratio_vs_baseline = (b.rps > 0.0).then(|| r.rps / b.rps);
            }
        }
    }
    if let Some(base_rounds) = targets
        .iter()
        .find(|t| t.name == baseline)
        .map(|t| t.rounds.clone())
    {
        for t in targets.iter_mut().filter(|t| t.name != baseline) {
            t.paired_overhead_us = paired_overhead(&t.rounds, &base_rounds);
        }
    }

    let chart_path = opts.out.with_extension("svg");
    let series: Vec<(String, Vec<(f64, u64)>)> = targets
        .iter()
        .filter_map(|t| {
            t.result
                .as_ref()
                .map(|r| (t.name.clone(), r.latency_us.curve.clone()))
        })
        .collect();
    let svg = svg::percentile_chart(&format!("{}: latency by percentile", sc.name), &series);
    std::fs::write(&chart_path, svg)
        .map_err(|e| CompareError::Other(format!("{}: {e}", chart_path.display())))?;

    let mut layout = Vec::new();
    layout.push(format!(
        "load generator on CPUs {}",
        cfg.load_cpus.as_deref().unwrap_or("(unpinned)")
    ));
    if let Some(m) = &cfg.mock {
        layout.push(format!(
            "mock upstream on CPUs {}",
            m.cpus.as_deref().unwrap_or("(unpinned)")
        ));
    }
    for t in &cfg.targets {
        if t.start.is_some() {
            layout.push(format!(
                "{} on CPUs {}",
                t.name,
                t.cpus.as_deref().unwrap_or("(unpinned)")
            ));
        }
    }
    let report = CompareReport {
        scenario: sc.name.clone(),
        scenario_file: sc_file,
        description: sc.description.clone(),
        command: opts.command_line.clone(),
        date_utc: utc_now(),
        git_commit: git_commit(),
        machine: Machine {
            cpu_model: sys::cpu_model(),
            nproc: sys::nproc(),
            kernel: sys::kernel(),
            loadavg_at_start: Some(loadavg_at_start),
        },
        layout: layout.join("; "),
        rounds,
        mode: match sc.mode() {
            run::Mode::Closed { concurrency } => format!("closed loop, concurrency {concurrency}"),
            run::Mode::Open { rate_per_s } => format!("open loop, {rate_per_s:.0} req/s"),
        },
        baseline,
        targets,
        chart: chart_path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned()),
    };
    let json =
        serde_json::to_vec_pretty(&report).map_err(|e| CompareError::Other(e.to_string()))?;
    std::fs::write(&opts.out, json)
        .map_err(|e| CompareError::Other(format!("{}: {e}", opts.out.display())))?;
    Ok(report)
}

/// Human summary: the run table plus overhead and resource lines.
pub fn summary(r: &CompareReport) -> String {
    let results: Vec<RunResult> = r.targets.iter().filter_map(|t| t.result.clone()).collect();
    let mut s = run::table(&results);
    s.push_str(&format!(
        "\noverhead vs {} (latency delta; throughput ratio; CPU; RSS):\n",
        r.baseline
    ));
    for t in &r.targets {
        if let Some(note) = &t.skipped {
            s.push_str(&format!("  {:<10} {note}\n", t.name));
            continue;
        }
        let o = t.overhead_us.as_ref();
        let sd = |v: i64| {
            let sign = if v < 0 { "-" } else { "+" };
            format!("{sign}{}", run::fmt_us(v.unsigned_abs()))
        };
        s.push_str(&format!(
            "  {:<10} p50 {:>9} p90 {:>9} p99 {:>9} p99.9 {:>9}  rps x{:<5.2} cpu {:>8} rss {}\n",
            t.name,
            o.map_or("-".into(), |o| sd(o.p50)),
            o.map_or("-".into(), |o| sd(o.p90)),
            o.map_or("-".into(), |o| sd(o.p99)),
            o.map_or("-".into(), |o| sd(o.p999)),
            t.rps_ratio_vs_baseline.unwrap_or(0.0),
            t.cpu_us_per_req
                .map_or("-".into(), |c| format!("{c:.1}us/req")),
            t.peak_rss_bytes.map_or("-".into(), |b| format!(
                "{:.1}MiB peak",
                b as f64 / 1048576.0
            )),
        ));
        if let Some(p) = &t.paired_overhead_us {
            s.push_str(&format!(
                "  {:<10} per round ({} rounds): p50 median {} [{} .. {}]  p99 median {} [{} .. {}]\n",
                "",
                p.rounds,
                sd(p.p50_median),
                sd(p.p50_min),
                sd(p.p50_max),
                sd(p.p99_median),
                sd(p.p99_min),
                sd(p.p99_max),
            ));
        }
        if let Some(m) = t.mem_per_stream_bytes {
            s.push_str(&format!(
                "  {:<10} memory per stream: {:.1} KiB\n",
                "",
                m / 1024.0
            ));
        }
    }
    s
}

/// `git rev-parse --short HEAD`, or `unknown`.
pub fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Current UTC time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    fmt_utc(secs)
}

/// Formats Unix seconds as UTC (civil-from-days, proleptic Gregorian).
pub fn fmt_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Parses repeated `NAME=VALUE` flags.
pub fn parse_named(flag: &str, items: &[String]) -> Result<BTreeMap<String, String>, CompareError> {
    let mut m = BTreeMap::new();
    for it in items {
        let (k, v) = it
            .split_once('=')
            .ok_or_else(|| CompareError::Other(format!("{flag} {it:?}: expected NAME=VALUE")))?;
        if k.is_empty() {
            return Err(CompareError::Other(format!("{flag} {it:?}: empty name")));
        }
        m.insert(k.to_string(), v.to_string());
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_overhead_is_the_median_of_round_differences() {
        let r = |p50, p99| RoundPoint {
            p50,
            p90: 0,
            p99,
            rps: 1.0,
        };
        let base = [r(100, 200), r(100, 200), r(300, 900), r(100, 200)];
        // Round 3 was hit by a burst on the target only: the median ignores it, the range
        // shows it.
        let t = [r(104, 260), r(106, 250), r(900, 9000), r(103, 240)];
        let p = paired_overhead(&t, &base).expect("paired");
        assert_eq!((p.rounds, p.p50_min, p.p50_max), (4, 3, 600));
        assert_eq!(p.p50_median, (4 + 6) / 2);
        assert_eq!(p.p99_median, (50 + 60) / 2);
        let odd = paired_overhead(&t[..3], &base[..3]).expect("paired");
        assert_eq!(odd.p50_median, 6);
        assert!(paired_overhead(&t[..1], &base[..1]).is_none());
        // Unequal lengths pair the rounds both ran.
        assert_eq!(paired_overhead(&t, &base[..2]).expect("paired").rounds, 2);
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(fmt_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(fmt_utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(fmt_utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn config_unknown_field_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(
            &p,
            "targets:\n  - name: a\n    url: http://127.0.0.1:1\n    startt: x\n",
        )
        .unwrap();
        let e = load_config(&p).unwrap_err().to_string();
        assert!(
            e.contains("c.yaml:4:") && e.contains("startt") && e.contains("targets[0]"),
            "{e}"
        );
    }

    #[test]
    fn env_expansion() {
        let get = |k: &str| (k == "A").then(|| "1".to_string());
        assert_eq!(expand_with("x${A}y", &get), "x1y");
        assert_eq!(expand_with("${B:-2}", &get), "2");
        assert_eq!(expand_with("${B:-${A:-3}}/z", &get), "1/z");
        assert_eq!(expand_with("${B:-${C:-3}}", &get), "3");
        assert_eq!(expand_with("${open", &get), "${open");
    }

    #[test]
    fn named_flags() {
        let m = parse_named("--target", &["a=http://x".into()]).unwrap();
        assert_eq!(m["a"], "http://x");
        assert!(parse_named("--target", &["nope".into()]).is_err());
    }
}
