//! `sluice-loadtest report`: regenerates `docs/benchmarks.md` from `compare` JSON reports.
//!
//! Owns: the Markdown layout (machine, date, commit, exact commands, core layout, one table per
//! scenario with overhead versus the baseline and throughput ratio versus Envoy, CPU and RSS,
//! chart links). Invariants: the document is a pure function of the JSON files (re-running
//! gives the same text); scenarios appear in a fixed order, unknown ones after it by name;
//! skipped targets (e.g. sluice before its binary exists) are listed with their reason rather
//! than omitted; unsustained open-loop rates are flagged in the table.

use std::path::{Component, Path, PathBuf};

use thiserror::Error;

use crate::compare::{paired_overhead, CompareReport, PairedOverhead, TargetReport};
use crate::run::fmt_us;

/// Report errors.
#[derive(Debug, Error)]
pub enum ReportError {
    #[error("{path}: {msg}")]
    Io { path: String, msg: String },
    #[error("no compare reports (*.json) in {0}")]
    Empty(String),
}

/// Scenario order in the document.
pub const ORDER: [&str; 7] = [
    "chat-small",
    "chat-sse",
    "pii-4k",
    "pii-4k-rate-1000",
    "pii-32k",
    "error-mix",
    "long-streams",
];

/// Loads every compare report in `dir`.
pub fn load_reports(dir: &Path) -> Result<Vec<CompareReport>, ReportError> {
    let io = |e: std::io::Error| ReportError::Io {
        path: dir.display().to_string(),
        msg: e.to_string(),
    };
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    entries.sort();
    for p in entries {
        let bytes = std::fs::read(&p).map_err(|e| ReportError::Io {
            path: p.display().to_string(),
            msg: e.to_string(),
        })?;
        match serde_json::from_slice::<CompareReport>(&bytes) {
            Ok(r) => out.push(r),
            Err(e) => eprintln!(
                "report: skipping {}: not a compare report ({e})",
                p.display()
            ),
        }
    }
    if out.is_empty() {
        return Err(ReportError::Empty(dir.display().to_string()));
    }
    out.sort_by_key(|r| {
        (
            ORDER
                .iter()
                .position(|o| *o == r.scenario)
                .unwrap_or(ORDER.len()),
            r.scenario.clone(),
        )
    });
    Ok(out)
}

/// Path of `to` relative to directory `from` (both made absolute against the cwd).
pub fn relative(from_dir: &Path, to: &Path) -> PathBuf {
    let abs = |p: &Path| {
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        };
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                Component::CurDir => {}
                other => out.push(other),
            }
        }
        out
    };
    let (f, t) = (abs(from_dir), abs(to));
    let fc: Vec<_> = f.components().collect();
    let tc: Vec<_> = t.components().collect();
    let common = fc.iter().zip(&tc).take_while(|(a, b)| a == b).count();
    let mut r = PathBuf::new();
    for _ in common..fc.len() {
        r.push("..");
    }
    for c in &tc[common..] {
        r.push(c);
    }
    r
}

fn mib(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

fn signed_us(v: i64) -> String {
    let s = fmt_us(v.unsigned_abs());
    if v < 0 {
        format!("-{s}")
    } else {
        format!("+{s}")
    }
}

fn row(t: &TargetReport, envoy: Option<&TargetReport>) -> String {
    let Some(r) = &t.result else {
        return format!(
            "| {} | {} | | | | | | | | | |\n",
            t.name,
            t.skipped.as_deref().unwrap_or("no result")
        );
    };
    let l = &r.latency_us;
    let over = t.overhead_us.as_ref().map_or("-".into(), |o| {
        format!(
            "{} / {} / {}",
            signed_us(o.p50),
            signed_us(o.p99),
            signed_us(o.p999)
        )
    });
    let vs_envoy = envoy
        .and_then(|e| e.result.as_ref())
        .filter(|e| e.rps > 0.0)
        .map_or("-".into(), |e| format!("{:.2}x", r.rps / e.rps));
    let mut rps = format!("{:.0}", r.rps);
    if !r.sustained {
        rps.push_str(" (not sustained)");
    }
    let errs = if r.errors.total() > 0 {
        format!("{}", r.errors.total())
    } else {
        "0".into()
    };
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        t.name,
        rps,
        fmt_us(l.p50),
        fmt_us(l.p90),
        fmt_us(l.p99),
        fmt_us(l.p999),
        over,
        vs_envoy,
        t.cpu_us_per_req.map_or("-".into(), |c| format!(
            "{c:.1} us/req ({:.2} cores)",
            t.cpu_cores.unwrap_or(0.0)
        )),
        mib(t.peak_rss_bytes),
        errs
    )
}

/// Renders the Markdown document. `md_dir` is where it will live (for chart links);
/// `results_dir` is where the JSON and SVG files are.
fn find<'a>(
    reports: &'a [CompareReport],
    scenario: &str,
    target: &str,
) -> Option<&'a TargetReport> {
    reports
        .iter()
        .find(|r| r.scenario == scenario)?
        .targets
        .iter()
        .find(|t| t.name == target && t.result.is_some())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "n/a".into(),
    }
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

/// `target` of the report of `scenario` that also ran `marker` (several compare configs run the
/// same scenario: the policy, transparent and TLS comparisons each carry their own baseline).
fn find_with<'a>(
    reports: &'a [CompareReport],
    scenario: &str,
    marker: &str,
    target: &str,
) -> Option<&'a TargetReport> {
    reports
        .iter()
        .filter(|r| r.scenario == scenario)
        .find(|r| {
            r.targets
                .iter()
                .any(|t| t.name == marker && t.result.is_some())
        })?
        .targets
        .iter()
        .find(|t| t.name == target && t.result.is_some())
}

/// Per-round (paired) difference `a − b` in the report of `scenario` that ran `marker`.
fn paired_in(
    reports: &[CompareReport],
    scenario: &str,
    marker: &str,
    a: &str,
    b: &str,
) -> Option<PairedOverhead> {
    let ta = find_with(reports, scenario, marker, a)?;
    let tb = find_with(reports, scenario, marker, b)?;
    paired_overhead(&ta.rounds, &tb.rounds)
}

/// Which percentile of a [`PairedOverhead`].
#[derive(Clone, Copy)]
enum Pct {
    P50,
    P99,
}

fn paired_parts(p: &PairedOverhead, pct: Pct) -> (i64, i64, i64) {
    match pct {
        Pct::P50 => (p.p50_median, p.p50_min, p.p50_max),
        Pct::P99 => (p.p99_median, p.p99_min, p.p99_max),
    }
}

/// Rounds from which a goal on a latency difference is judged by the median of the per-round
/// differences (robust to the rounds a host burst hit) rather than by the merged histograms.
pub const PAIRED_ROUNDS_MIN: u32 = 3;

/// A latency difference `a − b` between two targets of one compare run, at one percentile:
/// from the merged histograms and, per round, the median and range of the paired differences.
struct Delta {
    merged: Option<i64>,
    paired: Option<PairedOverhead>,
    pct: Pct,
}

impl Delta {
    /// `a − b` in the report of `scenario` that ran `marker` (which picks the compare config
    /// when several ran the same scenario).
    fn of(
        reports: &[CompareReport],
        scenario: &str,
        marker: &str,
        a: &str,
        b: &str,
        pct: Pct,
    ) -> Delta {
        let at = |t: &str| {
            find_with(reports, scenario, marker, t)
                .and_then(|x| x.result.as_ref())
                .map(|r| match pct {
                    Pct::P50 => r.latency_us.p50 as i64,
                    Pct::P99 => r.latency_us.p99 as i64,
                })
        };
        Delta {
            merged: at(a).zip(at(b)).map(|(x, y)| x - y),
            paired: paired_in(reports, scenario, marker, a, b)
                .filter(|p| p.rounds >= PAIRED_ROUNDS_MIN),
            pct,
        }
    }

    fn measured(&self) -> bool {
        self.merged.is_some()
    }

    /// The merged difference, then the per-round median and range when there are enough rounds.
    fn text(&self) -> String {
        let us = |v: i64| format!("{v:+} us");
        let mut s = self.merged.map(us).unwrap_or("n/a".into());
        if let Some(p) = &self.paired {
            let (m, lo, hi) = paired_parts(p, self.pct);
            s.push_str(&format!(
                " (per round: median {}, range {} .. {}, {} rounds)",
                us(m),
                us(lo),
                us(hi),
                p.rounds
            ));
        }
        s
    }

    /// The verdict on `ok`, applied to the per-round median when there are enough rounds,
    /// else to the merged difference.
    fn verdict(&self, ok: impl Fn(i64) -> bool) -> &'static str {
        let v = match &self.paired {
            Some(p) => Some(paired_parts(p, self.pct).0),
            None => self.merged,
        };
        verdict(v.map(ok))
    }
}

/// The figures the project's goals are stated in, computed from the same runs as the tables
/// below (ratios from one invocation each, so machine drift hits every target alike).
fn goals(reports: &[CompareReport]) -> String {
    let rps = |sc: &str, t: &str| {
        find(reports, sc, t)
            .and_then(|x| x.result.as_ref())
            .map(|r| r.rps)
    };
    let ttft = |sc: &str, t: &str| {
        find(reports, sc, t)
            .and_then(|x| x.result.as_ref())
            .and_then(|r| r.ttft_us.clone())
    };
    let mut s = String::from("## Goals\n\n| figure | how | sluice | envoy (same run) | goal | verdict |\n|---|---|---|---|---|---|\n");
    // Throughput.
    let (sr, er, dr) = (
        rps("chat-small", "sluice"),
        rps("chat-small", "envoy"),
        rps("chat-small", "direct"),
    );
    s.push_str(&format!(
        "| throughput, small chat JSON | chat-small, closed loop, 1 worker each | {} req/s ({} of direct) | {} req/s | ≥ 1.5x envoy | {} ({} envoy) |\n",
        sr.map(|x| format!("{x:.0}")).unwrap_or("n/a".into()),
        ratio(sr, dr),
        er.map(|x| format!("{x:.0}")).unwrap_or("n/a".into()),
        verdict(sr.zip(er).map(|(a, b)| a >= 1.5 * b)),
        ratio(sr, er)
    ));
    // Overhead at a fixed rate (compare.yaml's run: the one with envoy).
    let us = |v: Option<i64>| v.map(|v| format!("{v:+} us")).unwrap_or("n/a".into());
    let rate = |t: &str, pct| Delta::of(reports, "chat-rate-2000", "envoy", t, "direct", pct);
    s.push_str(&format!(
        "| added latency p50 | chat-rate-2000, 2,000 req/s open loop | {} | {} | (context) | - |\n",
        us(rate("sluice", Pct::P50).merged),
        us(rate("envoy", Pct::P50).merged)
    ));
    let envoy99 = us(rate("envoy", Pct::P99).merged);
    for (t, what) in [
        ("sluice", String::new()),
        ("sluice-busypoll", ", `busy_poll_us: 200`".to_string()),
    ] {
        let d = rate(t, Pct::P99);
        if !d.measured() {
            continue;
        }
        s.push_str(&format!(
            "| added latency p99{what} | chat-rate-2000, 2,000 req/s open loop | {} (p50 {}) | {envoy99} | ≤ 100 us | {} |\n",
            d.text(),
            us(rate(t, Pct::P50).merged),
            d.verdict(|v| v <= 100)
        ));
    }
    // Where the tail comes from: sluice per io_uring task-run mode and background priority
    // against nginx and a byte relay that parses nothing (socat), all over the same direct, in
    // one run across two cores (compare-tail.yaml, marked by `socat`) and one on one core
    // (compare-tail-onecore.yaml, marked by `socat-1core`).
    let tails = [
        (
            "socat",
            "compare-tail.yaml",
            "sluice",
            "sluice (default ring)",
            true,
        ),
        (
            "socat",
            "compare-tail.yaml",
            "sluice-coop",
            "sluice, `io_uring_task_run: coop`",
            true,
        ),
        (
            "socat",
            "compare-tail.yaml",
            "sluice-defer",
            "sluice, `io_uring_task_run: defer`",
            true,
        ),
        (
            "socat",
            "compare-tail.yaml",
            "sluice-nice0",
            "sluice, `background_thread_nice: 0` (background threads at the worker's priority)",
            true,
        ),
        (
            "socat",
            "compare-tail.yaml",
            "nginx",
            "nginx (C HTTP proxy), same run",
            false,
        ),
        (
            "socat",
            "compare-tail.yaml",
            "socat",
            "socat (byte relay, parses nothing: the floor of two extra hops), same run",
            false,
        ),
        (
            "socat-1core",
            "compare-tail-onecore.yaml",
            "sluice-1core",
            "sluice, everything on one core",
            true,
        ),
        (
            "socat-1core",
            "compare-tail-onecore.yaml",
            "nginx-1core",
            "nginx, everything on one core",
            false,
        ),
        (
            "socat-1core",
            "compare-tail-onecore.yaml",
            "socat-1core",
            "socat, everything on one core",
            false,
        ),
    ];
    for (marker, cfg, t, label, goal) in tails {
        let d = Delta::of(reports, "chat-rate-2000", marker, t, "direct", Pct::P99);
        if !d.measured() {
            continue;
        }
        let p50 = Delta::of(reports, "chat-rate-2000", marker, t, "direct", Pct::P50);
        s.push_str(&format!(
            "| added latency p99, {label} | chat-rate-2000 with {cfg} | {} (p50 {}) | - | {} | {} |\n",
            d.text(),
            us(p50.merged),
            if goal { "≤ 100 us" } else { "(context)" },
            if goal { d.verdict(|v| v <= 100) } else { "-" },
        ));
    }
    // TTFT overhead.
    let td = ttft("chat-sse", "direct");
    let tover = |t: &str| {
        ttft("chat-sse", t)
            .zip(td.clone())
            .map(|(a, b)| a.p99 as i64 - b.p99 as i64)
    };
    s.push_str(&format!(
        "| time-to-first-token overhead p99 | chat-sse, 64 tokens, 50 streams | {} | {} | ≤ 50 us | {} |\n",
        us(tover("sluice")),
        us(tover("envoy")),
        verdict(tover("sluice").map(|v| v <= 50))
    ));
    // Memory per stream.
    let mps = |t: &str| find(reports, "long-streams", t).and_then(|x| x.mem_per_stream_bytes);
    let kib = |v: Option<f64>| {
        v.map(|v| format!("{:.1} KiB", v / 1024.0))
            .unwrap_or("n/a".into())
    };
    s.push_str(&format!(
        "| memory per open stream | long-streams, 1,000 concurrent streams | {} | {} | ≤ 16 KiB | {} |\n",
        kib(mps("sluice")),
        kib(mps("envoy")),
        verdict(mps("sluice").map(|v| v <= 16.0 * 1024.0))
    ));
    // Filters against envoy-lua.
    let (fr, lr) = (
        rps("pii-32k", "sluice-filters"),
        rps("pii-32k", "envoy-lua"),
    );
    s.push_str(&format!(
        "| redaction + token extraction throughput | pii-32k, sluice-filters vs envoy-lua | {} req/s | {} req/s (envoy-lua) | ≥ 3x envoy-lua | {} ({}) |\n",
        fr.map(|x| format!("{x:.0}")).unwrap_or("n/a".into()),
        lr.map(|x| format!("{x:.0}")).unwrap_or("n/a".into()),
        verdict(fr.zip(lr).map(|(a, b)| a >= 3.0 * b)),
        ratio(fr, lr)
    ));
    // Cost of inspection + redaction at a fixed rate, each against sluice's pass-through.
    let io = Delta::of(
        reports,
        "inspect-rate-2000",
        "sluice-inspect",
        "sluice-inspect",
        "sluice",
        Pct::P50,
    );
    s.push_str(&format!(
        "| inspection alone, small chat | inspect-rate-2000, sluice-inspect minus sluice, p50 | {} | - | ≤ 10 us | {} |\n",
        io.text(),
        io.verdict(|v| v <= 10)
    ));
    let fo = Delta::of(
        reports,
        "chat-rate-2000",
        "envoy",
        "sluice-filters",
        "sluice",
        Pct::P50,
    );
    s.push_str(&format!(
        "| inspection + PII redaction, small chat | chat-rate-2000, sluice-filters minus sluice, p50 | {} | - | (context) | - |\n",
        us(fo.merged)
    ));
    // Redaction of a 4 KiB prompt with a few entities: with inspection, and alone (issue #5's
    // "redaction on").
    for (t, what) in [
        ("sluice-filters", "PII redaction + inspection"),
        ("sluice-pii", "PII redaction alone"),
    ] {
        let d = Delta::of(reports, "pii-4k-rate-1000", t, t, "sluice", Pct::P50);
        if !d.measured() {
            continue;
        }
        s.push_str(&format!(
            "| {what}, 4 KiB prompt | pii-4k-rate-1000, {t} minus sluice, p50 | {} | - | ≤ 20 us | {} |\n",
            d.text(),
            d.verdict(|v| v <= 20)
        ));
    }
    let (fr4, lr4) = (rps("pii-4k", "sluice-filters"), rps("pii-4k", "envoy-lua"));
    s.push_str(&format!(
        "| redaction throughput, 4 KiB prompt | pii-4k, sluice-filters vs envoy-lua | {} req/s | {} req/s (envoy-lua) | ≥ 3x envoy-lua | {} ({}) |\n",
        fr4.map(|x| format!("{x:.0}")).unwrap_or("n/a".into()),
        lr4.map(|x| format!("{x:.0}")).unwrap_or("n/a".into()),
        verdict(fr4.zip(lr4).map(|(a, b)| a >= 3.0 * b)),
        ratio(fr4, lr4)
    ));
    // Issue #6: routing + auth + local rate limits against pass-through, same run.
    let p50_of = |sc: &str, m: &str, t: &str| {
        find_with(reports, sc, m, t)
            .and_then(|x| x.result.as_ref())
            .map(|r| r.latency_us.p50 as i64)
    };
    let rps_of = |sc: &str, m: &str, t: &str| {
        find_with(reports, sc, m, t)
            .and_then(|x| x.result.as_ref())
            .map(|r| r.rps)
    };
    let pol =
        |a: &str, b: &str| Delta::of(reports, "chat-rate-2000", "sluice-policy", a, b, Pct::P50);
    let d = pol("sluice-policy", "sluice");
    s.push_str(&format!(
        "| routing + auth + local rate limits | chat-rate-2000 with compare-policy.yaml, sluice-policy minus sluice, p50 | {} | - | ≤ 5 us | {} |\n",
        d.text(),
        d.verdict(|v| v <= 5)
    ));
    // The same pass-through twice in the same run: the noise floor of the row above.
    let d = pol("sluice-again", "sluice");
    if d.measured() {
        s.push_str(&format!(
            "| control: pass-through against itself | chat-rate-2000 with compare-policy.yaml, sluice-again minus sluice, p50 | {} | - | (noise floor) | - |\n",
            d.text(),
        ));
    }
    // Issue #6: global (Redis-leased) limits against the same limits in local mode.
    let d = pol("sluice-policy-global", "sluice-policy");
    s.push_str(&format!(
        "| global rate limits (Redis leases) | chat-rate-2000 with compare-policy.yaml, sluice-policy-global minus sluice-policy, p50 | {} | - | no Redis round trip in the median: < 50 us (a loopback round trip is ~130 us here) | {} |\n",
        d.text(),
        d.verdict(|v| v < 50)
    ));
    // Issue #7: transparent mode against explicit mode (both over direct), same run.
    let t_over = p50_of("chat-small", "sluice-transparent", "sluice-transparent")
        .zip(p50_of("chat-small", "sluice-transparent", "direct"))
        .map(|(a, b)| a - b);
    let e_over = p50_of("chat-small", "sluice-transparent", "sluice")
        .zip(p50_of("chat-small", "sluice-transparent", "direct"))
        .map(|(a, b)| a - b);
    s.push_str(&format!(
        "| transparent vs explicit overhead | chat-small in two namespaces (transparent-bench.sh), p50 over direct | {} transparent, {} explicit | - | ≤ 1.1x explicit | {} |\n",
        us(t_over),
        us(e_over),
        verdict(t_over.zip(e_over).map(|(t, e)| t as f64 <= 1.1 * e.max(1) as f64))
    ));
    // Issue #7: TLS interception against Envoy terminating and re-originating TLS.
    let (ti, te) = (
        rps_of("chat-small", "sluice-intercept", "sluice-intercept"),
        rps_of("chat-small", "sluice-intercept", "envoy-tls"),
    );
    s.push_str(&format!(
        "| TLS interception throughput, keep-alive both sides | chat-small with compare-tls.yaml | {} req/s | {} req/s (envoy-tls) | ≥ envoy-tls | {} ({}) |\n\n",
        ti.map(|x| format!("{x:.0}")).unwrap_or("n/a".into()),
        te.map(|x| format!("{x:.0}")).unwrap_or("n/a".into()),
        verdict(ti.zip(te).map(|(a, b)| a >= b)),
        ratio(ti, te)
    ));
    s.push_str("Figures are from this machine's 2 shared cores: compare ratios, not absolute times. A negative overhead, or two deltas of a few microseconds that disagree between scenarios, is below this machine's run-to-run noise (about ±10 us at p50, more at p99): read such a \"met\" as \"not measurably worse than direct\". Where a compare ran at least 3 rounds, a latency-difference row also gives the median and range of the per-round differences (each round of a target paired with the reference's round of the same index, run back to back), and the verdict is taken from that median: one round hit by a host burst moves the merged histograms but not the median, and the range shows how far the rounds disagree. Idle RSS and the criterion micro-benchmarks are in `docs/microbenchmarks.md`.\n\n");
    s
}

pub fn render(reports: &[CompareReport], md_dir: &Path, results_dir: &Path) -> String {
    let first = &reports[0];
    let mut s = String::new();
    s.push_str("# Benchmarks\n\n");
    s.push_str("<!-- Generated by `sluice-loadtest report` (loadtest/report.sh) from the JSON in loadtest/results/. Do not edit by hand. -->\n\n");
    s.push_str("## Machine and method\n\n");
    s.push_str(&format!(
        "- Machine: {}, {} CPUs (nproc), Linux {}\n",
        first.machine.cpu_model, first.machine.nproc, first.machine.kernel
    ));
    s.push_str(&format!("- Date: {}\n", first.date_utc));
    s.push_str(&format!("- Commit: `{}`\n", first.git_commit));
    s.push_str(&format!("- Core layout: {}\n", first.layout));
    s.push_str("- Method: every scenario runs against all targets in interleaved rounds (direct, sluice, envoy, envoy-lua, nginx, direct, ...) so machine drift hits all alike; percentiles come from HdrHistograms merged over the rounds. Open-loop latency is measured from the intended send time (coordinated omission corrected). Overhead = target percentile minus the direct (no proxy) percentile. CPU = user+system time of the proxy process tree during the measure windows (from /proc), RSS = peak VmHWM.\n");
    s.push_str("- Reproduce: `loadtest/report.sh` (builds release, installs Envoy into loadtest/peers/.venv, runs every scenario, regenerates this file). Exact commands per scenario are listed below.\n\n");
    s.push_str(&goals(reports));
    for r in reports {
        s.push_str(&format!("## {}\n\n", r.scenario));
        if !r.description.is_empty() {
            s.push_str(&format!("{}\n\n", r.description));
        }
        s.push_str(&format!(
            "{}; {} round(s) per target, baseline `{}`.\n\n",
            r.mode, r.rounds, r.baseline
        ));
        s.push_str(&format!("Command: `{}`\n\n", r.command));
        if let Some(l) = &r.machine.loadavg_at_start {
            s.push_str(&format!(
                "Load average at start (1/5/15 min, {} CPUs): {l}.\n\n",
                r.machine.nproc
            ));
        }
        if r.git_commit != first.git_commit || r.date_utc != first.date_utc {
            s.push_str(&format!(
                "Run {} at commit `{}`.\n\n",
                r.date_utc, r.git_commit
            ));
        }
        if r.layout != first.layout {
            s.push_str(&format!("Core layout: {}\n\n", r.layout));
        }
        s.push_str("| target | req/s | p50 | p90 | p99 | p99.9 | overhead vs direct (p50 / p99 / p99.9) | req/s vs envoy | proxy CPU | peak RSS | errors |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
        let envoy = r
            .targets
            .iter()
            .find(|t| t.name == "envoy" && t.result.is_some());
        for t in &r.targets {
            s.push_str(&row(t, envoy));
        }
        s.push('\n');
        let streaming: Vec<&TargetReport> = r
            .targets
            .iter()
            .filter(|t| t.result.as_ref().is_some_and(|x| x.ttft_us.is_some()))
            .collect();
        if !streaming.is_empty() {
            s.push_str("| target | TTFT p50 | TTFT p99 | inter-chunk p50 | inter-chunk p99 | tokens/s | mean tokens/s per stream |\n|---|---|---|---|---|---|---|\n");
            for t in streaming {
                let Some(x) = &t.result else { continue };
                let (Some(tt), itl) = (&x.ttft_us, &x.itl_us) else {
                    continue;
                };
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {:.0} | {} |\n",
                    t.name,
                    fmt_us(tt.p50),
                    fmt_us(tt.p99),
                    itl.as_ref().map_or("-".into(), |i| fmt_us(i.p50)),
                    itl.as_ref().map_or("-".into(), |i| fmt_us(i.p99)),
                    x.tokens_per_s,
                    x.stream_tokens_per_s_mean
                        .map_or("-".into(), |v| format!("{v:.0}"))
                ));
            }
            s.push('\n');
        }
        let mem: Vec<&TargetReport> = r
            .targets
            .iter()
            .filter(|t| t.mem_per_stream_bytes.is_some())
            .collect();
        if !mem.is_empty() {
            s.push_str("Memory per stream = (RSS during load − idle RSS) / concurrent streams:\n\n| target | idle RSS | RSS during load | per stream |\n|---|---|---|---|\n");
            for t in mem {
                s.push_str(&format!(
                    "| {} | {} | {} | {:.1} KiB |\n",
                    t.name,
                    mib(t.idle_rss_bytes),
                    mib(t.rss_during_max_bytes),
                    t.mem_per_stream_bytes.unwrap_or(0.0) / 1024.0
                ));
            }
            s.push('\n');
        }
        let errs: Vec<String> = r
            .targets
            .iter()
            .filter_map(|t| {
                let x = t.result.as_ref()?;
                (x.errors.total() > 0).then(|| {
                    format!(
                        "{}: status {:?}, reset {}, timeout {}, connect {}, parse {}",
                        t.name,
                        x.status_codes,
                        x.errors.reset,
                        x.errors.timeout,
                        x.errors.connect,
                        x.errors.parse
                    )
                })
            })
            .collect();
        if !errs.is_empty() {
            s.push_str("Errors by kind: ");
            s.push_str(&errs.join("; "));
            s.push_str("\n\n");
        }
        for t in &r.targets {
            if let Some(n) = &t.skipped {
                s.push_str(&format!("- **{}** {}\n", t.name, n));
            }
            if let Some(n) = t.result.as_ref().and_then(|x| x.note.as_ref()) {
                s.push_str(&format!("- **{}**: {}\n", t.name, n));
            }
        }
        if let Some(c) = &r.chart {
            let rel = relative(md_dir, &results_dir.join(c));
            s.push_str(&format!(
                "\n![{} latency by percentile]({})\n",
                r.scenario,
                rel.display()
            ));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative(Path::new("/a/docs"), Path::new("/a/loadtest/results/x.svg")),
            PathBuf::from("../loadtest/results/x.svg")
        );
        assert_eq!(
            relative(Path::new("/a"), Path::new("/a/b")),
            PathBuf::from("b")
        );
    }
}
