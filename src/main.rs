//! The `latch` binary: parses the arguments, sets up logging, and runs the command
//! ([`latch::cli`]). Usage errors exit with 2 (clap), failed operations with 1.

use std::process::ExitCode;

use clap::Parser;
use latch::cli::Cli;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // RUST_LOG wins; without it a server logs at info and a client command only warns.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(cli.default_log_filter()));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    latch::cli::run(cli).await
}
