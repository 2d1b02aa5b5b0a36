//! The `latch` command line (DESIGN.md §5): `latch server` runs a member; `latch kv`,
//! `session`, `lock`, `elect`, `watch`, `svc` and `cluster` are clients, built on
//! `latch-client` like any other program; `latch bench` is the load generator
//! ([`crate::bench`]).
//!
//! Exit codes: 0 success; 1 the operation failed (the server's message is printed, with its
//! gRPC code); 2 usage error (clap's own, or bad input caught here before anything is sent);
//! 3 (`lock`, `elect`) the session holding the lock or the leadership was lost; 128 + the
//! signal when SIGINT, SIGTERM or SIGHUP ended a command before it finished (`elect`, `session
//! keepalive` and `watch` end so on purpose: 0). A closed standard output (`latch watch … |
//! head -1`) ends a command quietly with 0 at its next write, as `head` expects.
//!
//! The client flags ([`ClientArgs`]: `--endpoints`, `--output`, `--timeout`, `--cluster-id`) and `--log-format`
//! belong to the root and are global: accepted before or after any subcommand
//! (`latch --endpoints A,B kv get k` and `latch kv get k --endpoints A,B`). Every client command
//! takes the root's [`ClientArgs`]; `latch bench` takes `--output` and `--timeout` as they are,
//! and `--endpoints` as its default `--target`, and refuses `--cluster-id`. `latch server` takes none of them: one given on
//! its command line is a usage error naming the flag ([`Cli::try_parse_args`]), and they are
//! hidden from `latch server --help`.
//!
//! May import: [`crate::config`] and [`crate::server`] (for `latch server`), [`crate::bench`]
//! (for `latch bench`), `latch-client`.
//! `anyhow` is allowed here, as in `main.rs`, and nowhere else in the crate.

pub mod bench;
pub mod cluster;
pub mod dns;
pub mod elect;
pub mod kv;
pub mod lock;
pub mod server;
pub mod session;
pub mod snapshot;
pub mod svc;
pub mod watch;

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use latch_client::{Client, ClientOptions};

pub use crate::config::LogFormat;

/// The client flags, by clap id (the field names of [`ClientArgs`]; their long names have `-`
/// for `_`).
const CLIENT_FLAGS: [&str; 4] = ["endpoints", "output", "timeout", "cluster_id"];

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
    /// Log lines on stderr as text (for people) or json (one object per line, for log shippers)
    ///
    /// Default: text. `latch server` also reads `log-format` from its --config file.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Where and how the client commands talk to the cluster.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The subcommands of `latch`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a Latch member (`latch server --dev` for one local node).
    Server(Box<server::ServerCommand>),
    /// Read and write keys.
    Kv(kv::KvCommand),
    /// Inspect the cluster; replace a member that lost its data, add a member, remove one.
    Cluster(cluster::ClusterCommand),
    /// Create, keep alive, list and close sessions.
    Session(session::SessionCommand),
    /// Run a command while holding a lock (`latch lock NAME -- CMD`); describe and list locks.
    Lock(lock::LockCommand),
    /// Campaign in an election and lead until interrupted, or observe its leaders.
    Elect(elect::ElectCommand),
    /// Print every change of a key or a prefix, from now or from a past revision.
    Watch(watch::WatchCommand),
    /// Register, list and deregister service instances (the service registry).
    Svc(svc::SvcCommand),
    /// What a member's DNS port answers.
    Dns(dns::DnsCommand),
    /// Save a member's whole state in a file (a backup), check a file, restore a new cluster from one.
    Snapshot(snapshot::SnapshotCommand),
    /// Load a Latch, an etcd or a ZooKeeper cluster and measure throughput and latency.
    Bench(bench::BenchCommand),
    /// What `latch lock` runs CMD through (it dies with `latch lock`).
    #[command(hide = true)]
    LockExec(lock::ExecArgs),
}

impl Cli {
    /// The `latch` command as it is parsed: the derived definition, where `latch server` holds
    /// hidden copies of the client flags instead of the global ones, so that its help does not
    /// list them. A copy has the global flag's id and value parser: its value reaches the
    /// root's matches like the global's would, and [`Cli::try_parse_args`] refuses it.
    pub fn definition() -> clap::Command {
        let latch = Cli::command();
        let copies: Vec<clap::Arg> = latch
            .get_arguments()
            .filter(|a| CLIENT_FLAGS.contains(&a.get_id().as_str()))
            .map(|a| a.clone().global(false).hide(true))
            .collect();
        latch.mut_subcommand("server", |server| server.args(copies))
    }

    /// Parses the process's arguments; on a usage error prints it and exits with 2.
    pub fn parse_args() -> Cli {
        Cli::try_parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parses `args` (the first is the program's name), and refuses what clap cannot express:
    /// a client flag given to `latch server` on the command line (`$LATCH_ENDPOINTS` is not an
    /// error there), and `latch bench` with both `--endpoints` and `--target`.
    pub fn try_parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut latch = Cli::definition();
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        // In `latch lock NAME -- CMD`, what follows `--` is CMD: clap's tip to pass an
        // unexpected argument after `--` would run it as a command.
        // The command is the first argument naming one (a flag's value or a key spelled like one
        // comes after it, in `latch kv get lock -x`).
        let commands: Vec<&str> = latch.get_subcommands().map(|c| c.get_name()).collect();
        let command = args.iter().skip(1).take_while(|a| *a != "--").find_map(|a| {
            let a = a.to_str()?;
            commands.contains(&a).then_some(a)
        });
        let runs_a_command = command == Some("lock");
        let matches = match latch.try_get_matches_from_mut(args.clone()) {
            Ok(matches) => matches,
            Err(mut e) => {
                if let Some(missing) = value_left_out(&latch, &args) {
                    return Err(latch.error(clap::error::ErrorKind::InvalidValue, missing));
                }
                if runs_a_command && e.kind() == clap::error::ErrorKind::UnknownArgument {
                    e.remove(clap::error::ContextKind::Suggested);
                }
                return Err(e);
            }
        };
        let cli = Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut latch))?;
        // Global flags' values (and their sources) are copied to the root wherever they were given.
        let given = |flag: &str| matches.value_source(flag) == Some(ValueSource::CommandLine);
        let refusal = match &cli.command {
            Command::Server(_) => CLIENT_FLAGS.into_iter().find(|f| given(f)).map(|flag| {
                let message = format!(
                    "--{} is a flag of the client commands (kv, session, lock, elect, watch, svc, cluster, bench); `latch server` \
                     does not take it",
                    flag.replace('_', "-")
                );
                ("server", message)
            }),
            Command::Bench(bench) if bench.options.target.is_some() && given("endpoints") => Some((
                "bench",
                "--endpoints and --target both name the cluster to load; give one \
                 (--target latch://H:P,H:P, etcd://H:P,H:P or zk://H:P,H:P)"
                    .to_string(),
            )),
            Command::Bench(_) if given("cluster_id") => Some((
                "bench",
                "--cluster-id pins the client commands to a cluster; `latch bench` does not take it".to_string(),
            )),
            _ => None,
        };
        match refusal {
            Some((name, message)) => Err(subcommand_error(latch, name, ErrorKind::ArgumentConflict, message)),
            None => Ok(cli),
        }
    }

    /// The log filter used when `RUST_LOG` is not set: a server logs what it does, a client
    /// command only what went wrong.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            // hickory-server logs every DNS query at info: a line per datagram anyone may send
            // would fill the disk (the queries are counted in latch_dns_queries_total).
            Command::Server(_) => "info,hickory_server=warn,hickory_proto=warn,hickory_net=warn",
            Command::Kv(_)
            | Command::Cluster(_)
            | Command::Session(_)
            | Command::Lock(_)
            | Command::Elect(_)
            | Command::Watch(_)
            | Command::Svc(_)
            | Command::Dns(_)
            | Command::Snapshot(_)
            | Command::Bench(_)
            | Command::LockExec(_) => "warn",
        }
    }

    /// The threads the command's runtime runs on: `None` for as many as cores (a server), or
    /// the bench's `--threads` (one thread runs a current-thread runtime).
    pub fn runtime_threads(&self) -> Option<usize> {
        match &self.command {
            Command::Bench(bench) => Some(usize::from(bench.options.threads)),
            // A client command does one call at a time: one thread does it with the least work.
            Command::Kv(_)
            | Command::Cluster(_)
            | Command::Session(_)
            | Command::Lock(_)
            | Command::Elect(_)
            | Command::Watch(_)
            | Command::Svc(_)
            | Command::Dns(_)
            | Command::Snapshot(_)
            | Command::LockExec(_) => Some(1),
            Command::Server(_) => None,
        }
    }

    /// How to write log lines: `--log-format`, else (for `latch server`) the config file's
    /// `log-format`, else text. A config file that cannot be read counts as not setting it
    /// here; `latch server` reports the problem once it resolves its configuration.
    pub fn log_format(&self) -> LogFormat {
        let from_file = || match &self.command {
            Command::Server(server) => server.args.log_format_in_config_file(),
            _ => None,
        };
        self.log_format.or_else(from_file).unwrap_or_default()
    }
}

/// A usage error reported as subcommand `name`'s (its usage line), or the root's if it has none.
fn subcommand_error(
    mut latch: clap::Command,
    name: &str,
    kind: ErrorKind,
    message: impl fmt::Display,
) -> clap::Error {
    // Building names each subcommand for its usage line ("latch kv", not "kv").
    latch.build();
    // `name` may name a subcommand's own ("snapshot restore").
    for part in name.split(' ') {
        match latch.find_subcommand(part).cloned() {
            Some(sub) => latch = sub,
            None => break,
        }
    }
    latch.error(kind, message)
}

/// Flags shared by every client command, on the root and global: accepted before or after the
/// subcommand (`latch --output json kv get k` and `latch kv get k --output json`).
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
    /// Output format: text for people, json (one document; one per line for `watch`, `elect
    /// --observe` and `session keepalive`) for programs.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Give up after this long, retries on other members included (humantime: "500ms", "10s").
    #[arg(long, global = true, allow_hyphen_values = true, value_parser = crate::config::parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// The cluster to talk to, as `latch cluster status` shows it (16 hex digits): every
    /// request names it, and a member of another cluster refuses to serve it. By default the
    /// cluster is the one the first member to answer belongs to.
    #[arg(long, global = true, env = "LATCH_CLUSTER_ID", value_parser = parse_cluster_id_arg, value_name = "HEX")]
    pub cluster_id: Option<u64>,
}

/// A `--cluster-id`: exactly 16 hex digits, as answers name the cluster.
fn parse_cluster_id_arg(text: &str) -> Result<u64, String> {
    latch_proto::parse_cluster_id(text).ok_or_else(|| {
        format!("{text:?} is not a cluster id: expected 16 hex digits, as `latch cluster status` shows it")
    })
}

impl ClientArgs {
    /// A client of `--endpoints` whose every call ends within `--timeout`.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        if self.timeout.is_zero() {
            return Err(UsageError("--timeout must be more than 0".into()).into());
        }
        let options = ClientOptions {
            request_timeout: self.timeout,
            retry_budget: self.timeout,
            cluster_id: self.cluster_id,
            ..ClientOptions::default()
        };
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

/// Refuses `name`, given to `latch COMMAND` as the NAME of `what` it runs under, when it is one
/// of COMMAND's `subcommands`: a flag before the subcommand (`latch elect --output json
/// describe db`) leaves clap reading the subcommand as NAME.
fn refuse_subcommand_as_name(
    command: &str,
    what: &str,
    subcommands: &[&str],
    name: &str,
) -> Result<(), UsageError> {
    if !subcommands.contains(&name) {
        return Ok(());
    }
    Err(UsageError(format!(
        "{name:?} is a subcommand, not {what} NAME; put flags after it: `latch {command} {name} … --output json`"
    )))
}

/// Refuses, as a usage error, a NAME of `what` (`"the lock's"`, `"the election's"`) that no
/// member takes: empty, over [`MAX_LOCK_NAME_BYTES`](crate::fsm::locks::MAX_LOCK_NAME_BYTES), or
/// holding a 0 byte.
fn refuse_bad_lock_name(what: &str, name: &str) -> Result<(), UsageError> {
    use crate::fsm::locks::MAX_LOCK_NAME_BYTES;
    let problem = if name.is_empty() {
        "must not be empty".to_string()
    } else if name.len() > MAX_LOCK_NAME_BYTES {
        format!("is {} bytes, at most {MAX_LOCK_NAME_BYTES} allowed", name.len())
    } else if name.contains('\0') {
        "must not hold a 0 byte".to_string()
    } else {
        return Ok(());
    };
    Err(UsageError(format!("{what} NAME {problem}")))
}

/// Opens the session a command holds `name` with (a lock, a candidacy), named `"{command}
/// {name}"` cut on a character boundary to the longest session name a member takes (a lock's
/// name may be four times as long). A TTL the members refuse is a usage error naming `--ttl`.
async fn command_session(
    client: &Client,
    ttl: Duration,
    command: &str,
    name: &str,
) -> anyhow::Result<latch_client::Session> {
    use crate::fsm::sessions::MAX_SESSION_NAME_BYTES;
    let mut session_name = format!("{command} {name}");
    if session_name.len() > MAX_SESSION_NAME_BYTES {
        let mut end = MAX_SESSION_NAME_BYTES - '…'.len_utf8();
        while !session_name.is_char_boundary(end) {
            end -= 1;
        }
        session_name.truncate(end);
        session_name.push('…');
    }
    let options = latch_client::SessionOptions::new(ttl).name(session_name);
    client.session(options).await.map_err(|e| match e.status() {
        Some(status) if status.code() == tonic::Code::InvalidArgument => {
            match status.message().strip_prefix("ttl_ms: ") {
                Some(problem) => {
                    UsageError(format!("--ttl {}: {problem}", humantime::format_duration(ttl))).into()
                }
                None => anyhow::Error::new(e),
            }
        }
        _ => anyhow::Error::new(e),
    })
}

/// Runs the parsed command; prints any failure on stderr and returns the exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let client = &cli.client;
    let (name, result) = match cli.command {
        Command::Server(command) => ("server", server::run(*command).await),
        Command::Kv(command) => ("kv", kv::run(command, client).await),
        Command::Cluster(command) => ("cluster", cluster::run(command, client).await),
        Command::Session(command) => ("session", session::run(command, client).await),
        Command::Lock(command) => ("lock", lock::run(command, client).await),
        Command::Elect(command) => ("elect", elect::run(command, client).await),
        Command::Watch(command) => ("watch", watch::run(command, client).await),
        Command::Svc(command) => ("svc", svc::run(command, client).await),
        Command::Dns(command) => ("dns", dns::run(command, client).await),
        Command::Snapshot(command) => (command.usage_name(), snapshot::run(command, client).await),
        Command::Bench(command) => ("bench", bench::run(command, client).await),
        Command::LockExec(args) => ("lock-exec", lock::supervise(args).await),
    };
    match result {
        Ok(code) => code,
        Err(error) if error.is::<StdoutClosed>() => ExitCode::SUCCESS,
        Err(error) => {
            match error.downcast_ref::<UsageError>() {
                Some(usage) => {
                    // The subcommand's own usage line, e.g. "Usage: latch kv [OPTIONS] <COMMAND>".
                    let error = subcommand_error(Cli::definition(), name, ErrorKind::ValueValidation, usage);
                    // Printing to stderr can only fail if stderr is gone; the exit code still says it.
                    let _ = error.print();
                    ExitCode::from(2)
                }
                None => {
                    // With its causes: "connecting to the DNS port X: Connection refused".
                    eprintln!("Error: {}", with_causes(&error));
                    let wrong_port = error
                        .downcast_ref::<latch_client::Error>()
                        .is_some_and(|e| e.code() == latch_client::Code::Unimplemented);
                    if wrong_port {
                        // What an HTTP or peer port (or another gRPC server) answers a Latch call.
                        eprintln!("(is --endpoints a member's client port? its HTTP and peer ports answer other calls)");
                    }
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Standard output was closed by its reader (`latch watch … | head -1`): a command that runs
/// until stopped ends, with status 0 (see the module's doc), giving back what it holds first
/// (a leadership resigned, a session closed). A one-shot command's status stands.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes a one-shot command's output to stdout in one piece. A closed pipe (`latch kv get … |
/// head -0`) is not an error: the command's own status stands (`lock check` says invalid
/// with 1 whether or not anyone reads why).
fn print_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    match stream_bytes(bytes) {
        Err(e) if e.is::<StdoutClosed>() => Ok(()),
        other => other,
    }
}

/// Writes the output of a command that runs until stopped (a watch, an observer, a keepalive
/// loop, a registration that stays) in one piece; [`StdoutClosed`] once its reader is gone,
/// which ends the command.
fn stream_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        other => Ok(other?),
    }
}

/// A lock's or an election's name (or an election's value) as a line of text shows it: as it is,
/// unless it is empty or holds a character Rust's string escaping would escape — a control
/// character or a line separator (which could make a line of its own, say a holder that is not
/// there), a quote or a backslash (which could make a name look escaped that is not): then
/// escaped and quoted, as Rust writes a string. So a shown name reads back one way only.
fn shown(name: &str) -> std::borrow::Cow<'_, str> {
    let quoted = format!("{name:?}");
    if name.is_empty() || quoted.get(1..quoted.len() - 1) != Some(name) {
        quoted.into()
    } else {
        name.into()
    }
}

/// How often a command that runs until stopped looks whether its output's reader is gone.
const STDOUT_CHECK_EVERY: Duration = Duration::from_millis(500);

/// Resolves once stdout is a pipe whose reader is gone (`latch elect e --observe | head -1`
/// after `head` exits): a command that runs until stopped then ends even when it has nothing
/// to print (a stable leader, a quiet key), as it would at its next line. Never resolves for a
/// terminal or a file.
async fn stdout_gone() {
    use rustix::event::{poll, PollFd, PollFlags};
    let stdout = std::io::stdout();
    loop {
        tokio::time::sleep(STDOUT_CHECK_EVERY).await;
        // No events asked for: only the error a pipe's writer sees once its reader is gone.
        let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
        if poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })).is_ok()
            && fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP)
        {
            return;
        }
    }
}

/// Listens for SIGINT, SIGTERM and SIGHUP from now on — before a command takes anything to
/// give back, so that a failure to listen leaves nothing behind: what a command that runs until
/// stopped (a watch, a leadership, a keepalive loop, a wait for a lock) ends on, after giving
/// back what it holds. (systemd, Kubernetes and `timeout` stop a process with SIGTERM, a
/// terminal with SIGINT or SIGHUP.)
fn interrupted() -> std::io::Result<Interrupts> {
    use tokio::signal::unix::{signal, SignalKind};
    let kinds = [SignalKind::interrupt(), SignalKind::terminate(), SignalKind::hangup()];
    let mut streams = Vec::new();
    for kind in kinds {
        streams.push((kind.as_raw_value(), signal(kind)?));
    }
    Ok(Interrupts(streams))
}

/// SIGINT, SIGTERM and SIGHUP, each with its number, listened for since [`interrupted`].
struct Interrupts(Vec<(i32, tokio::signal::unix::Signal)>);

/// How long a command that waits on the cluster (`latch lock`, `latch elect`) waits before it
/// says so.
const WAIT_NOTICE_AFTER: Duration = Duration::from_secs(1);

impl Interrupts {
    /// `wait`'s outcome, or the number of a signal that came first. After
    /// [`WAIT_NOTICE_AFTER`], the line `notice` makes (it may ask the cluster, within a second)
    /// is printed on stderr, once, so that a wait is not mistaken for a hang.
    async fn wait_saying<T>(
        &mut self,
        wait: impl std::future::Future<Output = T>,
        notice: impl std::future::Future<Output = String>,
    ) -> Result<T, i32> {
        let notice = async {
            tokio::time::sleep(WAIT_NOTICE_AFTER).await;
            notice.await
        };
        tokio::pin!(wait, notice);
        let mut noticed = false;
        loop {
            tokio::select! {
                done = &mut wait => return Ok(done),
                signal = self.next() => return Err(signal),
                line = &mut notice, if !noticed => {
                    noticed = true;
                    // Not `eprintln!`: a closed stderr must not end the wait with its session open.
                    let _ = writeln!(std::io::stderr(), "{line}");
                }
            }
        }
    }

    /// The number of the next one.
    async fn next(&mut self) -> i32 {
        let waits = self.0.iter_mut().map(|(number, stream)| {
            let number = *number;
            Box::pin(async move {
                stream.recv().await;
                number
            })
        });
        futures::future::select_all(waits).await.0
    }

    /// Gives back what a command holds (`giving_back`: a session's close, say) unless SIGINT or
    /// SIGTERM comes first — a second Ctrl-C is not for waiting on a member that does not
    /// answer: then says so on stderr as `command`, with what is `left` to happen by itself,
    /// and answers that signal's number. SIGHUP does not cut it short: a terminal's hangup
    /// comes twice (from the kernel and from the shell).
    async fn unless_again<T>(
        &mut self,
        command: &str,
        left: &str,
        giving_back: impl std::future::Future<Output = T>,
    ) -> Result<T, i32> {
        tokio::pin!(giving_back);
        loop {
            tokio::select! {
                done = &mut giving_back => return Ok(done),
                signal = self.next() => {
                    if signal == rustix::process::Signal::HUP.as_raw() {
                        continue;
                    }
                    eprintln!("{command}: signal {signal} while giving back what it holds: not waiting; {left}");
                    return Err(signal);
                }
            }
        }
    }
}

/// The first answer of a command that runs until stopped (a watch, an observer) must come by
/// `by` (`--timeout` after it began), so that a dead or wrong endpoint is an error, not a
/// silent wait: resolves then with the error saying no member of `--endpoints` `did` it, and
/// the last failure `client` met meanwhile (no member reachable, say); never once the answer
/// came (`by` is `None`).
async fn unanswered(
    by: Option<tokio::time::Instant>,
    timeout: Duration,
    did: &str,
    client: &latch_client::Client,
) -> anyhow::Error {
    match by {
        Some(by) => tokio::time::sleep_until(by).await,
        None => std::future::pending().await,
    }
    let within = humantime::format_duration(timeout);
    match client.last_failure() {
        Some(last) => anyhow::anyhow!(
            "no member of --endpoints {did} within {within} (--timeout); the last failure: {last}"
        ),
        None => anyhow::anyhow!("no member of --endpoints {did} within {within} (--timeout)"),
    }
}

/// The exit code of a command ended by signal `number` before it finished: 128 + it.
fn killed_by(number: i32) -> ExitCode {
    ExitCode::from(u8::try_from(128 + number).unwrap_or(1))
}

/// One JSON document on one line.
fn json_line(document: &serde_json::Value) -> anyhow::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(document)?;
    line.push(b'\n');
    Ok(line)
}

/// Prints one JSON document on one line, as [`print_bytes`] does.
fn print_json(document: &serde_json::Value) -> anyhow::Result<()> {
    print_bytes(&json_line(document)?)
}

/// Prints one JSON document on one line, as [`stream_bytes`] does.
fn stream_json(document: &serde_json::Value) -> anyhow::Result<()> {
    stream_bytes(&json_line(document)?)
}

/// A flag whose value may begin with '-' (a duration, so that a negative one is refused as
/// such) takes whatever follows it, a flag or `--` too: with its value left out (`--grace --
/// CMD`, `--timeout --endpoints X`), clap then errs on what comes after, not on it. Says which
/// flag of the command given (its own, its parents', the global ones) lacks its value, if one
/// does; asked once clap has failed.
fn value_left_out(latch: &clap::Command, args: &[OsString]) -> Option<String> {
    let mut hyphen_valued = Vec::new();
    let mut add = |cmd: &clap::Command| {
        for arg in cmd.get_arguments().filter(|a| a.is_allow_hyphen_values_set()) {
            if let Some(long) = arg.get_long() {
                let value = arg.get_value_names().and_then(|n| n.first()).map(|n| n.to_string());
                let value = value.unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
                hyphen_valued.push((format!("--{long}"), format!("--{long} <{value}>")));
            }
        }
    };
    add(latch);
    let mut command = latch;
    for token in args.iter().skip(1).map_while(|a| a.to_str()).take_while(|a| *a != "--") {
        if let Some(sub) = command.find_subcommand(token) {
            add(sub);
            command = sub;
        }
    }
    let mut wants_value: Option<&str> = None;
    for token in args.iter().skip(1) {
        let token = token.to_str().unwrap_or("");
        if let Some(flag) = wants_value.take() {
            if token.starts_with("--") {
                return Some(format!(
                    "a value is required for '{flag}' but none was supplied ('{token}' follows it)"
                ));
            }
            continue;
        }
        if token == "--" {
            break;
        }
        wants_value = hyphen_valued.iter().find(|(long, _)| long == token).map(|(_, shown)| shown.as_str());
    }
    wants_value.map(|flag| format!("a value is required for '{flag}' but none was supplied"))
}

/// `error` with its causes, each unless the text so far says it already (an error that shows
/// its source in its own message, as many do, is not followed by that source again).
fn with_causes(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1).map(ToString::to_string) {
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_that_shows_its_cause_is_printed_with_the_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("{0}")]
        struct Shows(#[from] std::io::Error);
        let disk_full = std::io::Error::other("raft log: cannot allocate d/1.wal: No space left on device");
        let error = anyhow::Error::from(Shows(disk_full));
        assert_eq!(with_causes(&error), "raft log: cannot allocate d/1.wal: No space left on device");
        let error =
            anyhow::Error::from(std::io::Error::other("Connection refused")).context("connecting to X");
        assert_eq!(with_causes(&error), "connecting to X: Connection refused", "a cause it does not show is");
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_args(std::iter::once("latch").chain(args.iter().copied()))
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
        Cli::definition().debug_assert();
    }

    #[test]
    fn a_usage_error_shows_the_whole_commands_usage_line() {
        let error =
            subcommand_error(Cli::definition(), "lock", ErrorKind::ValueValidation, "the lock's NAME");
        let text = error.render().to_string();
        assert!(text.contains("Usage: latch lock [OPTIONS]"), "the usage line names `latch lock`: {text}");
    }

    #[test]
    fn client_flags_are_accepted_before_and_after_the_subcommand() {
        for args in [
            &["--endpoints", "a:1,b:2", "--output", "json", "--timeout", "7s", "kv", "get", "k"][..],
            &["kv", "--endpoints", "a:1,b:2", "--output", "json", "--timeout", "7s", "get", "k"][..],
            &["kv", "get", "k", "--endpoints", "a:1,b:2", "--output", "json", "--timeout", "7s"][..],
            &["--endpoints", "a:1,b:2", "kv", "get", "--output", "json", "k", "--timeout", "7s"][..],
            &["--endpoints", "a:1,b:2", "--output", "json", "--timeout", "7s", "cluster", "status"][..],
            &["cluster", "status", "--endpoints", "a:1,b:2", "--output", "json", "--timeout", "7s"][..],
        ] {
            let cli = parse(args).unwrap_or_else(|e| panic!("`latch {}` should parse: {e}", args.join(" ")));
            assert!(matches!(cli.command, Command::Kv(_) | Command::Cluster(_)), "{args:?}");
            assert_eq!(cli.client.endpoints, vec!["a:1", "b:2"], "{args:?}");
            assert_eq!(cli.client.output, Output::Json, "{args:?}");
            assert_eq!(cli.client.timeout, Duration::from_secs(7), "{args:?}");
        }
    }

    #[test]
    fn client_flags_given_to_the_server_are_usage_errors_naming_the_flag() {
        for (args, flag) in [
            (&["server", "--dev", "--endpoints", "a:1"][..], "--endpoints"),
            (&["--endpoints", "a:1", "server", "--dev"][..], "--endpoints"),
            (&["--output", "json", "server", "--dev"][..], "--output"),
            (&["server", "--timeout", "1s", "--dev"][..], "--timeout"),
            (&["server", "--dev", "--cluster-id", "00000000000000ab"][..], "--cluster-id"),
        ] {
            let e = parse(args).expect_err("a client flag is not a server flag");
            assert_eq!(e.exit_code(), 2, "{args:?}");
            let text = e.to_string();
            assert!(text.contains(flag) && text.contains("latch server"), "{args:?}: {text}");
        }
    }

    #[test]
    fn the_server_help_does_not_list_the_client_flags() {
        let mut latch = Cli::definition();
        // Building copies the global flags into the subcommands, as parsing does.
        latch.build();
        let server = latch.find_subcommand_mut("server").expect("a server subcommand");
        let help = server.render_long_help().to_string();
        for flag in CLIENT_FLAGS {
            assert!(!help.contains(&format!("--{flag}")), "`latch server --help` lists --{flag}:\n{help}");
        }
        assert!(help.contains("--log-format"), "`latch server --help` should list --log-format:\n{help}");
        let kv = latch.find_subcommand_mut("kv").expect("a kv subcommand").render_long_help().to_string();
        assert!(kv.contains("--endpoints"), "`latch kv --help` should list --endpoints:\n{kv}");
    }

    #[test]
    fn latch_lock_gives_no_tip_to_pass_an_unexpected_argument_after_the_double_dash_which_is_cmds() {
        for args in [&["lock", "describe", "x", "--shared"][..], &["lock", "-dash", "--", "true"][..]] {
            let e = parse(args).expect_err("an unexpected argument");
            assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument, "{args:?}");
            assert!(!e.to_string().contains("as a value, use"), "{args:?}: {e}");
        }
        for args in [&["kv", "get", "k", "-x"][..], &["kv", "get", "lock", "-x"][..]] {
            let e = parse(args).expect_err("an unexpected argument");
            assert!(
                e.to_string().contains("as a value, use '-- -x'"),
                "elsewhere clap's tip stays: {args:?}: {e}"
            );
        }
    }

    #[test]
    fn a_duration_flag_whose_value_was_left_out_is_named_not_what_follows_it() {
        let e = parse(&["lock", "x", "--grace", "--", "true"]).expect_err("no grace given");
        assert!(
            e.to_string().contains(
                "a value is required for '--grace <GRACE>' but none was supplied ('--' follows it)"
            ),
            "{e}"
        );
        let e = parse(&["--timeout", "--endpoints", "h:1", "kv", "get", "k"]).expect_err("no timeout given");
        assert!(
            e.to_string().contains("'--timeout <TIMEOUT>' but none was supplied ('--endpoints' follows it)"),
            "{e}"
        );
        let e = parse(&["lock", "x", "--ttl", "-5s", "--", "true"]).expect_err("a negative ttl");
        assert!(
            e.to_string().contains("a duration cannot be negative"),
            "a negative one is the duration's error: {e}"
        );
        parse(&["lock", "x", "--", "sh", "-c", "latch --timeout --x"]).expect("what follows `--` is CMD's");
        // Another command's flag of the same name is not this command's (review-s56b #4).
        parse(&["kv", "put", "k", "--wait"]).expect("a value that begins with '-' (kv put has no --wait)");
        parse(&["session", "create", "--ttl", "10s"]).expect("a valid command line");
    }

    #[test]
    fn a_shown_name_is_quoted_when_it_could_read_as_another() {
        assert_eq!(shown("jobs/a"), "jobs/a", "a plain name as it is");
        assert_eq!(shown("ünï cödé"), "ünï cödé", "printable Unicode as it is");
        assert_eq!(shown(""), "\"\"");
        assert_eq!(shown("a\nb"), "\"a\\nb\"", "a newline escaped");
        assert_eq!(shown("a\u{2028}b"), "\"a\\u{2028}b\"", "a Unicode line separator escaped");
        // A name that is itself a quoted, escaped string reads apart from the one it mimics.
        assert_eq!(shown("\"a\\nb\""), "\"\\\"a\\\\nb\\\"\"");
        assert_ne!(shown("\"a\\nb\""), shown("a\nb"));
    }

    #[test]
    fn timeout_is_a_humantime_duration() {
        let cli = parse(&["cluster", "status", "--timeout", "1m"]).expect("valid command line");
        assert_eq!(cli.client.timeout, Duration::from_secs(60));
        let e = parse(&["cluster", "status", "--timeout", "soon"]).expect_err("not a duration");
        assert_eq!(e.exit_code(), 2);
        let e = parse(&["cluster", "status", "--timeout", "5"]).expect_err("a number without a unit");
        assert!(
            e.to_string().contains("not a duration (time unit needed")
                && e.to_string().contains("such as 500ms, 10s"),
            "says what is wrong and what a duration looks like: {e}"
        );
        let e = parse(&["cluster", "status", "--timeout", "300000000000y"]).expect_err("past the clock");
        assert!(e.to_string().contains("at most 10years"), "refused, not a panic later: {e}");
    }

    #[test]
    fn log_format_is_text_unless_json_is_asked_before_or_after_the_subcommand() {
        assert_eq!(parse(&["kv", "get", "k"]).expect("valid").log_format(), LogFormat::Text);
        for args in [
            &["--log-format", "json", "server", "--dev"][..],
            &["server", "--dev", "--log-format", "json"][..],
            &["kv", "get", "k", "--log-format", "json"][..],
        ] {
            assert_eq!(parse(args).expect("valid").log_format(), LogFormat::Json, "{args:?}");
        }
        assert_eq!(parse(&["--log-format", "xml", "kv", "get", "k"]).expect_err("bad").exit_code(), 2);
    }

    #[test]
    fn the_server_reads_its_log_format_from_the_config_file_unless_the_flag_says() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("latch.toml");
        std::fs::write(&path, "dev = true\nlog-format = \"json\"\n").expect("write config");
        let config = path.to_str().expect("a UTF-8 temp path");
        let cli = parse(&["server", "--config", config]).expect("valid");
        assert_eq!(cli.log_format(), LogFormat::Json);
        let cli = parse(&["server", "--config", config, "--log-format", "text"]).expect("valid");
        assert_eq!(cli.log_format(), LogFormat::Text);
    }

    #[test]
    fn servers_log_info_and_clients_only_warnings() {
        let server = parse(&["server", "--dev"]).expect("valid").default_log_filter();
        assert!(server.starts_with("info,") && server.contains("hickory_server=warn"), "{server}");
        assert_eq!(parse(&["kv", "get", "k"]).expect("valid").default_log_filter(), "warn");
    }
}
