//! `latch server`: resolves the flags and the config file into a [`Config`] and runs a member
//! until SIGINT or SIGTERM.

use std::process::ExitCode;

use clap::Args;

use super::UsageError;
use crate::config::{Config, ServerArgs};

/// `latch server`: every flag is also settable in `--config latch.toml` (same names).
#[derive(Debug, Args)]
pub struct ServerCommand {
    /// The member's flags.
    #[command(flatten)]
    pub args: ServerArgs,
}

/// Runs a member until it is signalled to stop.
pub async fn run(command: ServerCommand) -> anyhow::Result<ExitCode> {
    // A configuration that does not resolve is bad input (exit 2), like a bad flag.
    let config = Config::from_args(command.args).map_err(|e| UsageError(e.to_string()))?;
    crate::server::run_until_signal(config).await?;
    Ok(ExitCode::SUCCESS)
}
