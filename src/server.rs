//! Process orchestration: start-up, the control thread (signals, config watch, DNS), reloads
//! and drain.
//!
//! Owns: the order in which things start and stop, and the *commit* of a reload.
//!
//! Start-up: load and validate the config; build the first snapshot; refuse ports that another
//! process holds (monoio turns SO_REUSEPORT on by default, which would otherwise silently
//! split traffic with that process); start the telemetry thread, one worker per core, the
//! admin server; report ready when every worker has bound.
//!
//! Reload (SIGHUP or a change of the file's bytes, which covers a Kubernetes ConfigMap's
//! `..data` symlink swap because the file is re-read through the link): load and validate,
//! probe-bind new listener addresses, build the snapshot (precommit). Only if all of that
//! succeeds, publish it (commit): one `ArcSwap::store` and a generation bump. Workers pick it
//! up on their next request; exchanges in flight keep the snapshot they started with. An
//! invalid file changes nothing, is logged with file:line:field, and counted.
//!
//! Drain (SIGTERM/SIGINT): `/ready` turns 503, workers close listeners and idle connections,
//! in-flight exchanges finish up to `drain_timeout_ms`, then the process exits 0.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::admin::{self, Admin};
use crate::config::{self, ConfigErrors};
use crate::snapshot::Snapshot;
use crate::telemetry::{self, names, TelemetryMsg};
use crate::worker::{self, Shared};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Snapshot(String),
    #[error("{what} {addr}: address already in use by another process")]
    PortBusy { what: String, addr: SocketAddr },
    #[error("{what} {addr}: cannot bind: {err}")]
    Bind {
        what: String,
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("access log {path}: {err}")]
    AccessLog { path: String, err: std::io::Error },
    #[error("{0}")]
    Worker(String),
}

impl crate::error::Classify for StartError {
    fn side(&self) -> crate::error::Side {
        crate::error::Side::Internal
    }
    fn status(&self) -> u16 {
        500
    }
    fn code(&self) -> &'static str {
        match self {
            StartError::Config(_) => "config_invalid",
            StartError::Snapshot(_) => "config_invalid",
            StartError::PortBusy { .. } => "port_busy",
            StartError::Bind { .. } => "bind_failed",
            StartError::Metrics(_) => "metrics_failed",
            StartError::AccessLog { .. } => "access_log_failed",
            StartError::Worker(_) => "worker_failed",
        }
    }
}

/// Bind the optional health (Istio 15021) and Prometheus (15090) listeners of `admin`.
fn bind_extra_admin(
    admin: &config::AdminConfig,
) -> Result<Vec<(admin::Role, &'static str, TcpListener)>, StartError> {
    let mut out = Vec::new();
    for (role, what, thread, bind) in [
        (
            admin::Role::Health,
            "admin.health_bind",
            "sluice-health",
            &admin.health_bind,
        ),
        (
            admin::Role::Prometheus,
            "admin.prometheus_bind",
            "sluice-prom",
            &admin.prometheus_bind,
        ),
    ] {
        let Some(bind) = bind else { continue };
        let addr: SocketAddr = bind
            .value
            .parse()
            .map_err(|_| StartError::Snapshot(what.into()))?;
        let l = TcpListener::bind(addr).map_err(|err| {
            if err.kind() == std::io::ErrorKind::AddrInUse {
                StartError::PortBusy {
                    what: what.into(),
                    addr,
                }
            } else {
                StartError::Bind {
                    what: what.into(),
                    addr,
                    err,
                }
            }
        })?;
        out.push((role, thread, l));
    }
    Ok(out)
}

/// Bind `addr` without SO_REUSEPORT, to find out whether another process holds it.
fn probe_port(what: &str, addr: SocketAddr) -> Result<(), StartError> {
    match TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(StartError::PortBusy {
            what: what.to_string(),
            addr,
        }),
        Err(err) => Err(StartError::Bind {
            what: what.to_string(),
            addr,
            err,
        }),
    }
}

fn open_access_log(path: &str) -> Result<Box<dyn Write + Send>, StartError> {
    match path {
        "stdout" => Ok(Box::new(std::io::BufWriter::new(std::io::stdout()))),
        "stderr" => Ok(Box::new(std::io::BufWriter::new(std::io::stderr()))),
        p => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map(|f| Box::new(std::io::BufWriter::new(f)) as Box<dyn Write + Send>)
            .map_err(|err| StartError::AccessLog {
                path: p.to_string(),
                err,
            }),
    }
}

struct Control {
    path: PathBuf,
    shared: Arc<Shared>,
    /// Serializes reloads (SIGHUP and the watcher may race); never touched by workers.
    reload_lock: Mutex<()>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

impl Control {
    fn reload(&self, reason: &str) {
        let _g = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let cfg = match config::load(&self.path) {
            Ok(c) => c,
            Err(errs) => {
                for e in &errs.0 {
                    tracing::error!(reason, error = %e, "config reload rejected; keeping the running configuration");
                }
                self.failed();
                return;
            }
        };
        let old = self.shared.current.load_full();
        if cfg.workers.resolve() != old.config.workers.resolve() {
            tracing::warn!("`workers` changed: takes effect on restart only");
        }
        if cfg.background_thread_nice != old.config.background_thread_nice {
            tracing::warn!("`background_thread_nice` changed: takes effect on restart only");
        }
        if cfg.io_uring_task_run != old.config.io_uring_task_run {
            tracing::warn!("`io_uring_task_run` changed: takes effect on restart only");
        }
        if cfg.admin.bind.value != old.config.admin.bind.value {
            tracing::warn!("`admin.bind` changed: takes effect on restart only");
        }
        if cfg.admin.health_bind.as_ref().map(|b| &b.value)
            != old.config.admin.health_bind.as_ref().map(|b| &b.value)
            || cfg.admin.prometheus_bind.as_ref().map(|b| &b.value)
                != old.config.admin.prometheus_bind.as_ref().map(|b| &b.value)
        {
            tracing::warn!(
                "`admin.health_bind`/`admin.prometheus_bind` changed: takes effect on restart only"
            );
        }
        // Precommit: a new listener address must be free before anyone is told about it.
        for l in &cfg.listeners {
            let Ok(addr) = l.bind.value.parse::<SocketAddr>() else {
                continue;
            };
            if old.listeners.iter().any(|o| o.addr == addr) {
                continue;
            }
            if let Err(e) = probe_port(&format!("listener {}", l.name.value), addr) {
                tracing::error!(reason, error = %e, "config reload rejected");
                self.failed();
                return;
            }
        }
        let generation = old.generation + 1;
        if cfg
            .listeners
            .iter()
            .flat_map(|l| l.routes.iter().map(move |r| (l, r)))
            .any(|(l, r)| r.inspect.is_some() || crate::ratelimit::implies_inspection(l, r))
        {
            // Idempotent (the tables are built once per process), and off the workers.
            let _ = std::thread::Builder::new()
                .name("sluice-bpe-warmup".into())
                .spawn(|| {
                    crate::background::lower_priority();
                    crate::inspect::estimate::warm_up()
                });
        }
        let snap = match Snapshot::build(cfg, generation, Some(&old)) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!(reason, error = %e, "config reload rejected");
                self.failed();
                return;
            }
        };
        // Commit. Telemetry learns the names of the new generation before any record of it.
        self.shared
            .telemetry
            .send_blocking(TelemetryMsg::Snapshot(snap.clone()));
        self.shared.current.store(snap);
        self.shared.generation.store(generation, Ordering::Release);
        self.reloads_ok.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(names::CONFIG_RELOADS, "result" => "ok").increment(1);
        metrics::gauge!(names::CONFIG_GENERATION).set(generation as f64);
        tracing::info!(reason, generation, "configuration reloaded");
    }

    fn failed(&self) {
        self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(names::CONFIG_RELOADS, "result" => "error").increment(1);
    }

    fn drain(&self, signal: &str) {
        if !self.shared.draining.swap(true, Ordering::AcqRel) {
            metrics::gauge!(names::DRAINING).set(1.0);
            tracing::info!(
                signal,
                "draining: refusing new connections, finishing in-flight requests"
            );
        }
    }
}

/// Run the proxy until it has drained. Returns after a clean drain.
pub fn run(path: PathBuf) -> Result<(), StartError> {
    let cfg = config::load(&path)?;
    // Before any background thread starts (restart-only, like io_uring_task_run).
    crate::background::set_nice(cfg.background_thread_nice);

    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_string()),
            telemetry::LATENCY_BUCKETS_SECONDS,
        )
        .map_err(|e| StartError::Metrics(e.to_string()))?
        .set_buckets_for_metric(
            Matcher::Full(names::GEN_AI_TOKEN_USAGE.to_string()),
            telemetry::TOKEN_BUCKETS,
        )
        .map_err(|e| StartError::Metrics(e.to_string()))?
        .build_recorder();
    let prometheus = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| StartError::Metrics(e.to_string()))?;

    let access_log = if cfg.access_log.enabled {
        Some(open_access_log(&cfg.access_log.path)?)
    } else {
        // Opened lazily on the telemetry thread would need a reload path; keep it simple:
        // turning the access log on later writes to stdout.
        Some(open_access_log("stdout")?)
    };
    let otel = cfg.otel.enabled.then(|| crate::otel::start(&cfg.otel));
    let (otel_tx, otel_handle) = match otel {
        Some((tx, h)) => (Some(tx), Some(h)),
        None => (None, None),
    };
    let (ttx, telemetry_thread) = telemetry::start(
        cfg.telemetry.queue_batches_max,
        access_log,
        otel_tx,
        prometheus.clone(),
    );

    let workers = cfg.workers.resolve();
    let admin_cfg = cfg.admin.clone();
    let admin_addr: SocketAddr = cfg
        .admin
        .bind
        .value
        .parse()
        .map_err(|_| StartError::Snapshot("admin.bind".into()))?;
    let listener_addrs: Vec<(String, SocketAddr)> = cfg
        .listeners
        .iter()
        .filter_map(|l| Some((l.name.value.clone(), l.bind.value.parse().ok()?)))
        .collect();
    let inspects = cfg
        .listeners
        .iter()
        .flat_map(|l| l.routes.iter().map(move |r| (l, r)))
        .any(|(l, r)| r.inspect.is_some() || crate::ratelimit::implies_inspection(l, r));
    let snap = Arc::new(Snapshot::build(cfg, 1, None).map_err(StartError::Snapshot)?);
    if inspects {
        // The BPE tables for token estimation take about a second to build. Build them now on
        // a helper thread, so no worker ever stalls on the first estimate.
        let _ = std::thread::Builder::new()
            .name("sluice-bpe-warmup".into())
            .spawn(|| {
                crate::background::lower_priority();
                crate::inspect::estimate::warm_up()
            });
    }

    for (name, addr) in &listener_addrs {
        probe_port(&format!("listener {name}"), *addr)?;
    }
    // The admin socket is plain std (no SO_REUSEPORT): a busy admin port fails here.
    let admin_listener = TcpListener::bind(admin_addr).map_err(|err| {
        if err.kind() == std::io::ErrorKind::AddrInUse {
            StartError::PortBusy {
                what: "admin".into(),
                addr: admin_addr,
            }
        } else {
            StartError::Bind {
                what: "admin".into(),
                addr: admin_addr,
                err,
            }
        }
    })?;
    let extra_admin = bind_extra_admin(&admin_cfg)?;

    let uring = monoio::utils::detect_uring();
    let driver = if uring { "io_uring" } else { "epoll" };
    tracing::info!(
        driver,
        workers,
        version = env!("CARGO_PKG_VERSION"),
        "starting sluice"
    );
    metrics::gauge!(names::IO_DRIVER, "driver" => driver).set(1.0);
    metrics::gauge!(names::WORKERS).set(workers as f64);
    metrics::gauge!(names::CONFIG_GENERATION).set(1.0);
    metrics::gauge!(names::DRAINING).set(0.0);
    metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);

    ttx.send_blocking(TelemetryMsg::Snapshot(snap.clone()));
    let shared = Arc::new(Shared {
        current: ArcSwap::new(snap),
        generation: AtomicU64::new(1),
        draining: AtomicBool::new(false),
        workers_ready: AtomicUsize::new(0),
        workers,
        telemetry: ttx.clone(),
    });

    // Pin to the CPUs this process may use (taskset, a Kubernetes cpuset), not to 0..n: a
    // sidecar limited to CPU 3 must not pin its worker to CPU 0.
    let cores = allowed_cpus();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut handles = Vec::with_capacity(workers);
    for id in 0..workers {
        let shared = shared.clone();
        let ready_tx = ready_tx.clone();
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        let h = std::thread::Builder::new()
            .name(format!("sluice-worker-{id}"))
            .spawn(move || worker::run_worker(id, core, shared, ready_tx))
            .map_err(|e| StartError::Worker(e.to_string()))?;
        handles.push(h);
    }
    drop(ready_tx);
    for _ in 0..workers {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shared.draining.store(true, Ordering::Release);
                return Err(StartError::Worker(e));
            }
            Err(_) => return Err(StartError::Worker("a worker exited during start-up".into())),
        }
    }

    let admin = Arc::new(Admin {
        shared: shared.clone(),
        prometheus,
    });
    for (role, name, listener) in extra_admin {
        let admin = admin.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                crate::background::lower_priority();
                admin::serve_role(listener, admin, role)
            })
            .map_err(|e| StartError::Worker(e.to_string()))?;
    }
    std::thread::Builder::new()
        .name("sluice-admin".into())
        .spawn(move || {
            crate::background::lower_priority();
            admin::serve(admin_listener, admin)
        })
        .map_err(|e| StartError::Worker(e.to_string()))?;

    let control = Arc::new(Control {
        path: path.clone(),
        shared: shared.clone(),
        reload_lock: Mutex::new(()),
        reloads_ok: AtomicU64::new(0),
        reloads_failed: AtomicU64::new(0),
    });
    start_signal_thread(control.clone())?;
    start_watch_thread(control.clone());
    tracing::info!(admin = %admin_addr, listeners = ?listener_addrs, "ready");

    for h in handles {
        let _ = h.join();
    }
    tracing::info!(
        reloads_ok = control.reloads_ok.load(Ordering::Relaxed),
        reloads_failed = control.reloads_failed.load(Ordering::Relaxed),
        "drained; exiting"
    );
    ttx.send_blocking(TelemetryMsg::Shutdown);
    let _ = telemetry_thread.join();
    if let Some(h) = otel_handle {
        // Bounded: flushes queued spans, then stops (see otel::OtelHandle::shutdown).
        h.shutdown();
    }
    Ok(())
}

/// The CPUs in this process's affinity mask, in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

fn start_signal_thread(control: Arc<Control>) -> Result<(), StartError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM])
        .map_err(|e| StartError::Worker(format!("signals: {e}")))?;
    std::thread::Builder::new()
        .name("sluice-signals".into())
        .spawn(move || {
            crate::background::lower_priority();
            for sig in signals.forever() {
                match sig {
                    SIGHUP => control.reload("SIGHUP"),
                    SIGTERM => control.drain("SIGTERM"),
                    SIGINT => control.drain("SIGINT"),
                    _ => {}
                }
            }
        })
        .map_err(|e| StartError::Worker(e.to_string()))?;
    Ok(())
}

/// Poll the config file's bytes (through symlinks) and refresh DNS on their intervals.
///
/// Why polling instead of inotify: a ConfigMap update replaces a symlink two levels up
/// (`..data`), which inotify on the file itself does not see; reading the bytes every
/// `watch_interval_ms` is one small read per second and always right.
fn start_watch_thread(control: Arc<Control>) {
    let _ = std::thread::Builder::new()
        .name("sluice-watch".into())
        .spawn(move || {
            crate::background::lower_priority();
            let mut last = std::fs::read(&control.path).ok();
            let mut last_dns = Instant::now();
            loop {
                let snap = control.shared.current.load_full();
                let interval = Duration::from_millis(snap.config.watch_interval_ms);
                let dns_every = Duration::from_millis(snap.config.dns_refresh_ms.max(100));
                drop(snap);
                std::thread::sleep(interval);
                if control.shared.draining.load(Ordering::Acquire) {
                    continue;
                }
                let now = std::fs::read(&control.path).ok();
                if now.is_some() && now != last {
                    last = now;
                    control.reload("file changed");
                }
                if last_dns.elapsed() >= dns_every {
                    last_dns = Instant::now();
                    control.shared.current.load_full().refresh_dns();
                }
            }
        });
}
