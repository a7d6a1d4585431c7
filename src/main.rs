//! The `sluice` command line: `run`, `check`, `iptables`, `ca`, `inject`, `inject-webhook`,
//! `--version`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A thread-per-core sidecar proxy for model traffic"
)]
struct Cli {
    /// Log format: `json` (one object per line) or `text`.
    #[arg(long, global = true, default_value = "json", env = "SLUICE_LOG_FORMAT")]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file; print `file:line: field: problem` for each error.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Add the sluice sidecar to Kubernetes manifests, like `istioctl kube-inject`.
    Inject {
        /// Manifests (multi-document YAML); `-` reads stdin.
        #[arg(long = "filename", short = 'f')]
        file: PathBuf,
        /// Where to write the result (stdout when absent).
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[command(flatten)]
        opts: sluice::inject::OptionsArgs,
    },
    /// Serve the mutating admission webhook that injects the sidecar (HTTPS).
    InjectWebhook {
        /// Serving certificate chain (PEM); re-read when it changes.
        #[arg(long)]
        cert: PathBuf,
        /// Private key of the certificate (PEM).
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = "0.0.0.0:9443")]
        bind: std::net::SocketAddr,
        /// How often (at most) a TLS handshake checks the certificate files for a rotation.
        #[arg(long, default_value_t = sluice::inject::webhook::CERT_CHECK_INTERVAL_MS_DEFAULT)]
        cert_check_interval_ms: u64,
        #[command(flatten)]
        opts: sluice::inject::OptionsArgs,
    },
    /// Exit once the sidecar answers `/healthz/ready` with 200 (classic sidecar `postStart`).
    WaitReady {
        #[arg(long, default_value = "127.0.0.1:15021")]
        addr: std::net::SocketAddr,
        #[arg(long, default_value_t = sluice::inject::READY_WAIT_TIMEOUT_MS_DEFAULT)]
        timeout_ms: u64,
    },
    /// Keep the sidecar serving for a while before it gets SIGTERM (classic sidecar `preStop`).
    DrainDelay {
        #[arg(long)]
        ms: u64,
    },
    /// Install the NAT rules that redirect a pod's traffic through sluice (init container;
    /// needs NET_ADMIN). Idempotent; see docs/transparent.md.
    Iptables(sluice::iptables::Args),
    /// A development CA for mTLS and interception: `ca init`, `ca issue`; and `ca bundle`,
    /// the trust bundle an application needs when its HTTPS calls are intercepted.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Create a CA: DIR/ca.pem and DIR/ca-key.pem (never overwrites a key).
    Init {
        #[arg(long)]
        out: PathBuf,
        /// SPIFFE trust domain the CA issues identities in.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        #[arg(long, default_value_t = sluice::tls::ca::CA_DAYS_DEFAULT)]
        days: u32,
    },
    /// Issue a workload certificate with a SPIFFE ID: DIR/cert.pem, DIR/key.pem, DIR/ca.pem.
    Issue {
        /// Directory holding ca.pem and ca-key.pem.
        #[arg(long)]
        ca: PathBuf,
        /// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>
        #[arg(long)]
        spiffe: String,
        /// DNS name to add as a SAN (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = sluice::tls::ca::WORKLOAD_DAYS_DEFAULT)]
        days: u32,
    },
    /// Write a trust bundle for the application: the system roots plus the interception CA
    /// (what SSL_CERT_FILE / REQUESTS_CA_BUNDLE must name when sluice intercepts TLS).
    Bundle {
        /// The interception CA certificate (PEM; never the key).
        #[arg(long)]
        ca_cert: PathBuf,
        /// The bundle to write (mode 0644, atomically).
        #[arg(long)]
        out: PathBuf,
        /// A missing --ca-cert is not an error: the bundle is then the system roots alone.
        #[arg(long)]
        optional: bool,
    },
}

fn init_logging(format: &str) {
    sluice::audit::set_text_format(format == "text");
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "text" {
        b.init();
    } else {
        b.json().flatten_event(true).with_current_span(false).init();
    }
}

/// mimalloc's `arena_eager_commit` option (`mi_option_e` value 4 in mimalloc 2.x; the sys crate
/// has no constant for it).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Runs before `main` (and before any thread exists), from `.init_array`.
///
/// Why: with eager arena commit, mimalloc commits its first arena at once, and with transparent
/// huge pages the kernel backs it with 2 MiB pages on first touch: an idle sidecar showed 21 MB
/// RSS instead of 9.5 MB. Lazy commit costs nothing measurable on the request path (arenas are
/// committed once, as they fill). `MIMALLOC_ARENA_EAGER_COMMIT` in the environment still wins.
extern "C" fn lazy_arena_commit() {
    if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
        // SAFETY: sets a process-wide allocator option before any allocation-heavy work;
        // mimalloc documents options as settable at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
    }
}

#[used]
#[link_section = ".init_array"]
static LAZY_ARENA_COMMIT: extern "C" fn() = lazy_arena_commit;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Iptables(a) => sluice::iptables::main(a),
        Cmd::Ca { cmd } => {
            let res = match cmd {
                CaCmd::Init {
                    out,
                    trust_domain,
                    days,
                } => sluice::tls::ca::cmd_init(&out, &trust_domain, days),
                CaCmd::Issue {
                    ca,
                    spiffe,
                    dns,
                    out,
                    days,
                } => sluice::tls::ca::cmd_issue(&ca, &spiffe, &dns, &out, days),
                CaCmd::Bundle {
                    ca_cert,
                    out,
                    optional,
                } => sluice::tls::bundle::cmd_bundle(&ca_cert, &out, optional).map(|b| {
                    println!(
                        "{} system roots, {} interception CA certificate(s)",
                        b.system_roots, b.intercept_certs
                    );
                    vec![b.path]
                }),
            };
            match res {
                Ok(files) => {
                    for f in files {
                        println!("wrote {}", f.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluice ca: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Check { config } => match sluice::config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listeners, {} upstreams)",
                    config.display(),
                    c.listeners.len(),
                    c.upstreams.len()
                );
                ExitCode::SUCCESS
            }
            Err(errs) => {
                for e in &errs.0 {
                    eprintln!("{e}");
                }
                ExitCode::from(2)
            }
        },
        Cmd::Inject { file, output, opts } => {
            let opts = match opts.into_options() {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("sluice inject: {e}");
                    return ExitCode::from(2);
                }
            };
            match sluice::inject::manifest::run_cli(&file, output.as_deref(), &opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sluice inject: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::InjectWebhook {
            cert,
            key,
            bind,
            cert_check_interval_ms,
            opts,
        } => {
            init_logging(&cli.log_format);
            let opts = match opts.into_options() {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("sluice inject-webhook: {e}");
                    return ExitCode::from(2);
                }
            };
            let cfg = sluice::inject::webhook::WebhookConfig {
                bind,
                cert,
                key,
                cert_check_interval_ms,
                opts,
            };
            match sluice::inject::webhook::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "inject-webhook failed to start");
                    eprintln!("sluice inject-webhook: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::WaitReady { addr, timeout_ms } => {
            if sluice::inject::wait::wait_ready(addr, timeout_ms) {
                ExitCode::SUCCESS
            } else {
                eprintln!("sluice wait-ready: {addr} not ready after {timeout_ms} ms");
                ExitCode::from(1)
            }
        }
        Cmd::DrainDelay { ms } => {
            sluice::inject::wait::drain_delay(ms);
            ExitCode::SUCCESS
        }
        Cmd::Run { config } => {
            init_logging(&cli.log_format);
            match sluice::server::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let e = anyhow::Error::from(e);
                    tracing::error!(error = %e, "sluice failed to start");
                    eprintln!("sluice: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
