//! CLI entry point for `sluice-loadtest`: parses flags with clap and dispatches to the
//! subcommands. Exit status: 0 on success, 1 on a runtime error (message on stderr), 2 on bad
//! flags (clap).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use sluice_loadtest::mock;

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
        Cmd::Mock(a) => mock::run(mock::MockConfig {
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
        .map_err(Into::into),
    };
    if let Err(e) = res {
        eprintln!("sluice-loadtest: {e:#}");
        std::process::exit(1);
    }
}
