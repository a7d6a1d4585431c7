//! CLI entry point for `sluice-loadtest`: parses flags with clap and dispatches to the
//! subcommands. Exit status: 0 on success, 1 on a runtime error (message on stderr), 2 on bad
//! flags (clap).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use sluice_loadtest::{compare, mock, report, run, scenario, sys};

#[derive(Parser, Debug)]
#[command(
    name = "sluice-loadtest",
    version,
    about = "Mock model server, load generator and comparison tool for sluice"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve a mock OpenAI / Anthropic / TGI upstream.
    Mock(MockArgs),
    /// Generate load against one target and report latency percentiles.
    Run(RunArgs),
    /// Run one scenario against several targets, interleaved, and report overheads.
    Compare(CompareArgs),
    /// Regenerate docs/benchmarks.md from compare JSON reports.
    Report(ReportArgs),
}

#[derive(clap::Args, Debug)]
struct ReportArgs {
    /// Directory with compare JSON reports (and their SVG charts).
    #[arg(long, default_value = "loadtest/results")]
    results: PathBuf,
    /// Markdown file to write.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
struct CompareArgs {
    /// Scenario file.
    #[arg(long)]
    scenario: PathBuf,
    /// Compare config (YAML: mock, load_cpus, baseline, targets with start commands).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Extra target NAME=URL (repeatable; added after the config's targets).
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Start command for a target NAME=CMD (run with `sh -c`).
    #[arg(long = "start")]
    starts: Vec<String>,
    /// Pid file for a target NAME=FILE (the start command daemonizes, or measure a running process).
    #[arg(long = "pid-file")]
    pid_files: Vec<String>,
    /// CPUs for a started target NAME=LIST (taskset -c).
    #[arg(long = "cpus")]
    cpus: Vec<String>,
    /// Start the mock upstream on this address before the targets (e.g. 127.0.0.1:19090).
    #[arg(long)]
    start_mock: Option<String>,
    /// CPUs for the mock started with --start-mock.
    #[arg(long)]
    mock_cpus: Option<String>,
    /// Pin the load generator to these CPUs.
    #[arg(long)]
    load_cpus: Option<String>,
    /// Target overheads are computed against (default: `direct`, else the first target).
    #[arg(long)]
    baseline: Option<String>,
    /// Rounds per target (overrides the scenario).
    #[arg(long)]
    rounds: Option<u32>,
    /// Measured time per round (overrides the scenario).
    #[arg(long)]
    duration: Option<String>,
    /// Warm-up per round (overrides the scenario).
    #[arg(long)]
    warmup: Option<String>,
    /// JSON report path; the SVG chart is written next to it.
    #[arg(long, default_value = "loadtest/results/compare.json")]
    out: PathBuf,
}

#[derive(clap::Args, Debug, Clone)]
struct LoadArgs {
    /// Scenario file (requests and load shape); flags below override its load section.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Request path when no scenario is given.
    #[arg(long, default_value = "/v1/chat/completions")]
    path: String,
    /// Request method when no scenario is given.
    #[arg(long, default_value = "POST")]
    method: String,
    /// Request body when no scenario is given.
    #[arg(long)]
    body: Option<String>,
    /// Request body file when no scenario is given.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Extra request header `name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Open loop: constant arrival rate in requests per second.
    #[arg(long, conflicts_with = "concurrency")]
    rate: Option<f64>,
    /// Closed loop: requests in flight (max throughput).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Open loop: connections to spread the rate over (default: rate/1000, at least 16).
    #[arg(long)]
    connections: Option<usize>,
    /// Measured time (10s, 500ms, 2m).
    #[arg(long)]
    duration: Option<String>,
    /// Warm-up time before measuring.
    #[arg(long)]
    warmup: Option<String>,
    /// Per-request timeout.
    #[arg(long)]
    timeout: Option<String>,
    /// Load-generator threads.
    #[arg(long)]
    workers: Option<usize>,
    /// Pin the load generator to these CPUs (e.g. `0` or `0-1`).
    #[arg(long)]
    cpus: Option<String>,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Target base URL (http://, or https:// verified against $SLUICE_LOADTEST_CA_FILE; $SLUICE_LOADTEST_TLS_SERVER_NAME overrides the SNI).
    #[arg(long)]
    target: String,
    /// Name shown in the report.
    #[arg(long, default_value = "target")]
    name: String,
    #[command(flatten)]
    load: LoadArgs,
    /// Write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct MockArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:19090")]
    listen: SocketAddr,
    /// Worker threads (one monoio runtime each).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Default delay before the first token, in milliseconds.
    #[arg(long, default_value_t = 0)]
    ttft_ms: u64,
    /// Default delay between tokens, in milliseconds.
    #[arg(long, default_value_t = 0)]
    itl_ms: u64,
    /// Default number of completion tokens.
    #[arg(long, default_value_t = 16)]
    tokens: u32,
    /// Default size of the generated assistant text, in bytes (spread over the tokens).
    #[arg(long)]
    response_bytes: Option<usize>,
    /// PEM certificate chain; with --tls-key the mock serves HTTPS.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Keep the last N requests for GET /__mock/requests.
    #[arg(long, default_value_t = 0)]
    record: usize,
}

fn main() {
    let cli = Cli::parse();
    let res: anyhow::Result<()> = match cli.cmd {
        Cmd::Mock(a) => {
            sys::raise_nofile_limit();
            mock::run(mock::MockConfig {
                listen: a.listen,
                workers: a.workers,
                ttft_ms: a.ttft_ms,
                itl_ms: a.itl_ms,
                tokens: a.tokens.min(mock::dialect::MAX_TOKENS),
                response_bytes: a.response_bytes,
                tls_cert: a.tls_cert,
                tls_key: a.tls_key,
                record: a.record,
            })
            .map_err(Into::into)
        }
        Cmd::Run(a) => cmd_run(a),
        Cmd::Compare(a) => cmd_compare(a),
        Cmd::Report(a) => cmd_report(a),
    };
    if let Err(e) = res {
        eprintln!("sluice-loadtest: {e:#}");
        std::process::exit(1);
    }
}

/// Builds a run configuration from a scenario and/or flags.
fn build_config(
    name: &str,
    url: &str,
    l: &LoadArgs,
) -> anyhow::Result<(run::RunConfig, Option<scenario::Scenario>)> {
    let (mut requests, mut mode, mut duration, mut warmup, mut timeout, mut workers, sc) =
        if let Some(p) = &l.scenario {
            let sc = scenario::load(p)?;
            let base = p.parent().unwrap_or(std::path::Path::new("."));
            let reqs = sc.request_specs(base, &p.display().to_string())?;
            let (d, w, t) = sc.durations();
            (reqs, sc.mode(), d, w, t, sc.load.workers, Some(sc))
        } else {
            let body = match (&l.body, &l.body_file) {
                (Some(b), _) => b.clone().into_bytes(),
                (None, Some(f)) => {
                    std::fs::read(f).with_context(|| format!("reading {}", f.display()))?
                }
                (None, None) => {
                    br#"{"model":"mock-model","messages":[{"role":"user","content":"Say hello."}]}"#
                        .to_vec()
                }
            };
            let req = run::RequestSpec {
                method: l.method.to_ascii_uppercase(),
                path: l.path.clone(),
                headers: Vec::new(),
                body,
                weight: 1,
            };
            (
                vec![req],
                run::Mode::Closed { concurrency: 50 },
                std::time::Duration::from_secs(10),
                std::time::Duration::from_secs(2),
                std::time::Duration::from_secs(30),
                1,
                None,
            )
        };
    for h in &l.headers {
        let Some((k, v)) = h.split_once(':') else {
            bail!("--header {h:?}: expected `name: value`");
        };
        for r in &mut requests {
            r.headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if let Some(r) = l.rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("--rate must be > 0");
        }
        mode = run::Mode::Open { rate_per_s: r };
    }
    if let Some(c) = l.concurrency {
        if c == 0 {
            bail!("--concurrency must be > 0");
        }
        mode = run::Mode::Closed { concurrency: c };
    }
    let dur = |s: &Option<String>,
               flag: &str,
               cur: std::time::Duration|
     -> anyhow::Result<std::time::Duration> {
        match s {
            Some(v) => {
                scenario::parse_duration(v).with_context(|| format!("{flag}: bad duration {v:?}"))
            }
            None => Ok(cur),
        }
    };
    duration = dur(&l.duration, "--duration", duration)?;
    warmup = dur(&l.warmup, "--warmup", warmup)?;
    timeout = dur(&l.timeout, "--timeout", timeout)?;
    if let Some(w) = l.workers {
        workers = w.max(1);
    }
    let connections = l
        .connections
        .or(sc.as_ref().and_then(|s| s.load.connections))
        .unwrap_or(match mode {
            run::Mode::Open { rate_per_s } => ((rate_per_s / 1000.0) as usize).max(16),
            run::Mode::Closed { concurrency } => concurrency,
        });
    Ok((
        run::RunConfig {
            name: name.to_string(),
            url: url.to_string(),
            requests,
            mode,
            connections,
            duration,
            warmup,
            timeout,
            workers,
        },
        sc,
    ))
}

fn pin(cpus: &Option<String>) -> anyhow::Result<()> {
    if let Some(c) = cpus {
        let list = sys::parse_cpu_list(c).with_context(|| format!("--cpus: bad CPU list {c:?}"))?;
        sys::pin_current_thread(&list).with_context(|| format!("pinning to CPUs {c}"))?;
    }
    Ok(())
}

fn cmd_run(a: RunArgs) -> anyhow::Result<()> {
    sys::raise_nofile_limit();
    pin(&a.load.cpus)?;
    let (cfg, _) = build_config(&a.name, &a.target, &a.load)?;
    let stats = run::execute(&cfg)?;
    let res = run::summarize(&cfg, &stats, cfg.duration.as_secs_f64());
    print!("{}", run::table(std::slice::from_ref(&res)));
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&res)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if !res.sustained {
        eprintln!(
            "sluice-loadtest: {}",
            res.note.as_deref().unwrap_or("could not sustain the rate")
        );
        std::process::exit(3);
    }
    Ok(())
}

fn cmd_compare(a: CompareArgs) -> anyhow::Result<()> {
    let (mut config, config_dir) = match &a.config {
        Some(p) => {
            let c = compare::load_config(p)?;
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            (
                c,
                std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()),
            )
        }
        None => (compare::CompareConfig::default(), std::env::current_dir()?),
    };
    // Validates NAME=URL syntax; order is taken from the flags below.
    compare::parse_named("--target", &a.targets)?;
    let starts = compare::parse_named("--start", &a.starts)?;
    let pids = compare::parse_named("--pid-file", &a.pid_files)?;
    let cpus = compare::parse_named("--cpus", &a.cpus)?;
    for (name, url) in &a
        .targets
        .iter()
        .filter_map(|t| t.split_once('='))
        .collect::<Vec<_>>()
    {
        config.targets.push(compare::TargetDef {
            name: name.to_string(),
            url: url.to_string(),
            ..Default::default()
        });
    }
    for (flag, map) in [
        ("--start", &starts),
        ("--pid-file", &pids),
        ("--cpus", &cpus),
    ] {
        for (name, v) in map {
            let Some(t) = config.targets.iter_mut().find(|t| &t.name == name) else {
                bail!("{flag} {name}=...: no target named {name}");
            };
            match flag {
                "--start" => t.start = Some(v.clone()),
                "--pid-file" => t.pid_file = Some(PathBuf::from(v)),
                _ => t.cpus = Some(v.clone()),
            }
        }
    }
    if let Some(l) = &a.start_mock {
        config.mock = Some(compare::MockStart {
            listen: l.clone(),
            cpus: a.mock_cpus.clone(),
            args: Vec::new(),
        });
    } else if let (Some(m), Some(c)) = (config.mock.as_mut(), &a.mock_cpus) {
        m.cpus = Some(c.clone());
    }
    if a.load_cpus.is_some() {
        config.load_cpus = a.load_cpus.clone();
    }
    if a.baseline.is_some() {
        config.baseline = a.baseline.clone();
    }
    let dur = |s: &Option<String>, flag: &str| -> anyhow::Result<Option<std::time::Duration>> {
        s.as_ref()
            .map(|v| {
                scenario::parse_duration(v).with_context(|| format!("{flag}: bad duration {v:?}"))
            })
            .transpose()
    };
    let opts = compare::CompareOpts {
        scenario_path: a.scenario.clone(),
        config,
        config_dir,
        rounds: a.rounds,
        duration: dur(&a.duration, "--duration")?,
        warmup: dur(&a.warmup, "--warmup")?,
        out: a.out.clone(),
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = compare::compare(&opts)?;
    print!("{}", compare::summary(&report));
    println!(
        "wrote {} and {}",
        a.out.display(),
        a.out.with_extension("svg").display()
    );
    let unsustained: Vec<String> = report
        .targets
        .iter()
        .filter_map(|t| {
            t.result
                .as_ref()
                .and_then(|r| r.note.clone())
                .map(|n| format!("{}: {n}", t.name))
        })
        .collect();
    if !unsustained.is_empty() {
        eprintln!("sluice-loadtest: {}", unsustained.join("; "));
        std::process::exit(3);
    }
    Ok(())
}

fn cmd_report(a: ReportArgs) -> anyhow::Result<()> {
    let reports = report::load_reports(&a.results)?;
    let md_dir = a
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(md_dir).with_context(|| format!("creating {}", md_dir.display()))?;
    let text = report::render(&reports, md_dir, &a.results);
    std::fs::write(&a.out, text).with_context(|| format!("writing {}", a.out.display()))?;
    println!("wrote {} ({} scenarios)", a.out.display(), reports.len());
    Ok(())
}
