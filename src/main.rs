//! The `sluice` command line: `run`, `check`, `--version`.

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
}

fn init_logging(format: &str) {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
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
