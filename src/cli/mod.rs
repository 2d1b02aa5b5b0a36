//! The `latch` command line (DESIGN.md §5): `latch server` runs a member; `latch kv` and
//! `latch cluster` are clients, built on `latch-client` like any other program; `latch bench`
//! is the load generator ([`crate::bench`]).
//!
//! Exit codes: 0 success; 1 the operation failed (the server's message is printed, with its
//! gRPC code); 2 usage error (clap's own, or bad input caught here before anything is sent).
//!
//! May import: [`crate::config`] and [`crate::server`] (for `latch server`), [`crate::bench`]
//! (for `latch bench`), `latch-client`.
//! `anyhow` is allowed here, as in `main.rs`, and nowhere else in the crate.

pub mod bench;
pub mod cluster;
pub mod kv;
pub mod server;

use std::fmt;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use latch_client::{Client, ClientOptions};

/// The `latch` command.
#[derive(Debug, Parser)]
#[command(
    name = "latch",
    version,
    about = "Latch: a coordination service with a Raft-replicated key-value core.",
    propagate_version = true
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `latch`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a Latch member (`latch server --dev` for one local node).
    Server(Box<server::ServerCommand>),
    /// Read and write keys.
    Kv(kv::KvCommand),
    /// Inspect the cluster.
    Cluster(cluster::ClusterCommand),
    /// Load a Latch or an etcd cluster and measure throughput and latency.
    Bench(bench::BenchCommand),
}

impl Cli {
    /// The log filter used when `RUST_LOG` is not set: a server logs what it does, a client
    /// command only what went wrong.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Server(_) => "info",
            Command::Kv(_) | Command::Cluster(_) | Command::Bench(_) => "warn",
        }
    }
}

/// Flags shared by every client command. Global: accepted before or after the subcommand
/// (`latch kv --output json get k` and `latch kv get k --output json`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Client options")]
pub struct ClientArgs {
    /// Client addresses of members to talk to, comma-separated; any member serves any request.
    #[arg(
        long,
        global = true,
        env = "LATCH_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7379",
        value_name = "H:P,H:P"
    )]
    pub endpoints: Vec<String>,
    /// Output format: text for people, json (one document) for programs.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Give up after this long, retries on other members included (humantime: "500ms", "10s").
    #[arg(long, global = true, value_parser = humantime::parse_duration, default_value = "5s")]
    pub timeout: Duration,
}

impl ClientArgs {
    /// A client of `--endpoints` whose every call ends within `--timeout`.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        if self.timeout.is_zero() {
            return Err(UsageError("--timeout must be more than 0".into()).into());
        }
        let options = ClientOptions { request_timeout: self.timeout, retry_budget: self.timeout };
        let endpoints = self.endpoints.iter().map(|e| e.trim()).filter(|e| !e.is_empty());
        Client::connect_with(endpoints, options).await.map_err(|e| match e {
            latch_client::Error::InvalidEndpoint(why) => UsageError(format!("--endpoints: {why}")).into(),
            other => anyhow::Error::new(other),
        })
    }
}

/// How a client command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Plain text, for people.
    Text,
    /// One JSON document, for programs.
    Json,
}

/// Bad input found after clap's parsing: reported like clap's own errors, with exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Runs the parsed command; prints any failure on stderr and returns the exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let (name, result) = match cli.command {
        Command::Server(command) => ("server", server::run(*command).await),
        Command::Kv(command) => ("kv", kv::run(command).await),
        Command::Cluster(command) => ("cluster", cluster::run(command).await),
        Command::Bench(command) => ("bench", bench::run(command).await),
    };
    match result {
        Ok(code) => code,
        Err(error) => match error.downcast_ref::<UsageError>() {
            Some(usage) => {
                let mut latch = Cli::command();
                latch.build();
                // The subcommand's own usage line, e.g. "Usage: latch kv <COMMAND>".
                let mut command = latch.find_subcommand(name).cloned().unwrap_or(latch);
                let error = command.error(clap::error::ErrorKind::ValueValidation, usage);
                // Printing to stderr can only fail if stderr is gone; the exit code still says it.
                let _ = error.print();
                ExitCode::from(2)
            }
            None => {
                eprintln!("Error: {error}");
                ExitCode::from(1)
            }
        },
    }
}

/// Writes a command's output to stdout in one piece. A closed pipe (`latch kv get … | head`)
/// is not an error of the command.
fn print_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Prints one JSON document on one line.
fn print_json(document: &serde_json::Value) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(document)?;
    line.push(b'\n');
    print_bytes(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("latch").chain(args.iter().copied()))
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn client_flags_are_accepted_before_and_after_the_subcommand() {
        for args in [
            &["kv", "--endpoints", "a:1,b:2", "--output", "json", "get", "k"][..],
            &["kv", "get", "k", "--endpoints", "a:1,b:2", "--output", "json"][..],
        ] {
            let cli = parse(args).expect("valid command line");
            let Command::Kv(kv) = cli.command else { panic!("kv command expected") };
            assert_eq!(kv.client.endpoints, vec!["a:1", "b:2"]);
            assert_eq!(kv.client.output, Output::Json);
        }
    }

    #[test]
    fn timeout_is_a_humantime_duration() {
        let cli = parse(&["cluster", "status", "--timeout", "1m"]).expect("valid command line");
        let Command::Cluster(cluster) = cli.command else { panic!("cluster command expected") };
        assert_eq!(cluster.client.timeout, Duration::from_secs(60));
        let e = parse(&["cluster", "status", "--timeout", "soon"]).expect_err("not a duration");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn servers_log_info_and_clients_only_warnings() {
        assert_eq!(parse(&["server", "--dev"]).expect("valid").default_log_filter(), "info");
        assert_eq!(parse(&["kv", "get", "k"]).expect("valid").default_log_filter(), "warn");
    }
}
