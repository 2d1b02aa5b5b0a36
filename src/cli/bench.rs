//! `latch bench WORKLOAD`: the built-in load generator ([`crate::bench`]) on the command line.
//!
//! Prints one report: text, or with `--output json` one JSON document (see
//! [`crate::bench::report`]). A progress bar is drawn on stderr only when it is a terminal.
//! Exit codes: 0 the run completed (its failed operations are in the report); 1 the target did
//! not serve, its setup failed, or not one operation succeeded; 2 usage error.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand, ValueEnum};

use super::{print_bytes, print_json, ClientArgs, Output, UsageError};
use crate::bench::{self, get::Get, mixed::Mixed, put::Put, txn_cas::TxnCas, Consistency, KeySpace};
use crate::bench::{Progress, Settings, Stop, System, TargetSpec};
use crate::config::{DEFAULT_DNS_ADDR, DEFAULT_DNS_DOMAIN};

/// Where `--target` points when neither it nor `--endpoints` names a member.
const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7379";
/// How long a run lasts when neither `--ops` nor `--duration` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Most underlying clients when `--connections` is not given.
const DEFAULT_MAX_CONNECTIONS: usize = 16;

/// `latch bench`.
#[derive(Debug, Args)]
pub struct BenchCommand {
    /// What to load, how hard, for how long.
    #[command(flatten)]
    pub options: BenchOptions,
    /// The workload.
    #[command(subcommand)]
    pub workload: WorkloadArgs,
}

/// The workloads. Each is one module of [`crate::bench`].
#[derive(Debug, Subcommand)]
pub enum WorkloadArgs {
    /// Put random keys of the key space.
    Put,
    /// Get random keys, after writing the whole key space once (not timed).
    Get(GetArgs),
    /// Read-modify-write: read a key's mod revision, then put it only if unchanged.
    ///
    /// Both calls are timed as one operation. A compare that fails (another client wrote the
    /// key in between) counts as a "conflict" outcome, not an error.
    TxnCas,
    /// Gets (a --read-ratio of them) and puts of random keys, after writing the key space once.
    Mixed(MixedArgs),
    /// Keep --sessions sessions (etcd: leases) alive over --connections streams; times every
    /// keepalive, and counts sessions lost although kept alive (must be 0).
    SessionKeepalive(SessionKeepaliveArgs),
    /// Acquire + release an exclusive lock, again and again: a random one of --names names, or
    /// with --uncontended each client its own. Each client has its own session (etcd: lease;
    /// ZooKeeper: session, Curator's lock recipe), opened before the clock starts.
    ///
    /// One operation is the pair, timed from the acquire's request to the release's answer,
    /// the wait for the lock included.
    Lock(LockArgs),
    /// One writer puts keys bench/watch/0, 1, … one at a time while --watchers watches on the
    /// prefix bench/watch/ (spread over --connections connections) receive every change.
    ///
    /// Each event is timed from the instant its put's answer reached the writer to the instant
    /// it reached the watcher (clamped at 0: a watcher may be told before the writer); the rate
    /// is events received per second. Counts missed events (must be 0). Every watch is open
    /// before the clock starts; --clients does not apply.
    WatchLatency(WatchLatencyArgs),
    /// UDP lookups of one name (--service S: S.service.latch.) against one DNS port, Latch's
    /// (--dns-addr) or any server's, from --clients clients, each its own socket with one query
    /// in flight.
    ///
    /// Counts queries/s, latency, lost queries (no answer within --query-timeout), answers by
    /// response code, answer records (so an empty answer shows) and truncated answers. Latch
    /// only: etcd and ZooKeeper have no DNS port (--target does not apply; --connections is the
    /// clients).
    Dns(DnsArgs),
    /// Register --instances instances of --service (--registrars at a time; not timed, but
    /// measured), then time List of the service from --clients clients; with --rss-pid, the
    /// member's resident memory before and after. Latch only.
    ///
    /// Every call goes to the first member of --target (registrations follow the leader it
    /// names, should it not be the leader).
    Registry(RegistryArgs),
}

/// `latch bench dns`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("question").args(["service", "name"]).required(true)))]
pub struct DnsArgs {
    /// The DNS port to query: a member's --dns-addr, or any DNS server's host:port.
    #[arg(long, value_name = "H:P", default_value = DEFAULT_DNS_ADDR, env = "LATCH_DNS_ADDR")]
    pub dns_addr: String,
    /// Ask for SERVICE.service.DOMAIN.
    #[arg(long, value_name = "SERVICE")]
    pub service: Option<String>,
    /// Ask for this name instead (fully qualified; the trailing dot is implied).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The domain of --service (the member's --dns-domain).
    #[arg(long, value_name = "DOMAIN", default_value = DEFAULT_DNS_DOMAIN)]
    pub domain: String,
    /// The record type asked: A, AAAA, SRV, TXT, …
    #[arg(long = "type", value_name = "TYPE", default_value = "A")]
    pub record_type: String,
    /// A query unanswered this long is lost (humantime); the client asks the next one.
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "1s")]
    pub query_timeout: Duration,
}

impl DnsArgs {
    /// What `bench::dns` is asked; or a message naming the flag at fault.
    pub fn bench(&self) -> Result<bench::dns::DnsBench, String> {
        let name = match (&self.service, &self.name) {
            (Some(service), _) => bench::dns::DnsBench::service_name(service, &self.domain)?,
            (None, Some(name)) => bench::dns::DnsBench::name(name)?,
            (None, None) => return Err("--service or --name is needed".into()),
        };
        let record_type = self
            .record_type
            .to_ascii_uppercase()
            .parse()
            .map_err(|e| format!("--type {:?} is not a record type: {e}", self.record_type))?;
        Ok(bench::dns::DnsBench {
            server: self.dns_addr.trim().to_string(),
            name,
            record_type,
            query_timeout: self.query_timeout,
        })
    }
}

/// `latch bench registry`.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// The service registered and listed.
    #[arg(long, value_name = "SERVICE", default_value = "bench-registry")]
    pub service: String,
    /// Instances registered before the clock starts (not timed; measured).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub instances: usize,
    /// Registrations in flight at once (over --connections channels).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub registrars: usize,
    /// The service has its --instances registered already (by an earlier run): only List.
    #[arg(long)]
    pub registered: bool,
    /// How each List is served.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
    /// The member's process id (on this machine): report its resident memory (VmRSS) before
    /// registering, after, and after the Lists.
    #[arg(long, value_name = "PID")]
    pub rss_pid: Option<u32>,
}

/// `latch bench watch-latency`.
#[derive(Debug, Args)]
pub struct WatchLatencyArgs {
    /// Watches on the prefix, --watches-per-stream to a stream, the streams spread
    /// round-robin over --connections connections [default connections: the smaller of the
    /// streams and 16].
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub watchers: usize,
    /// Watches on one stream (Latch: a watch group, which takes shared responses; etcd: that
    /// many creates on one Watch stream); 1: each watch a stream of its own.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub watches_per_stream: usize,
    /// The writer talks to the N-th member of --target only (1: the first) [default: every
    /// member given, in order: a Latch client keeps to the first that answers, etcd-client
    /// balances its requests over them all].
    #[arg(long, value_name = "N")]
    pub writer_member: Option<usize>,
}

impl WatchLatencyArgs {
    pub fn bench(&self) -> bench::watches::WatchLatency {
        bench::watches::WatchLatency {
            watchers: self.watchers,
            per_stream: self.watches_per_stream,
            writer_member: self.writer_member,
        }
    }
}

/// `latch bench lock`.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// Lock names the clients pick from, uniformly at random for each pair; 1: every client
    /// contends for the same lock.
    #[arg(long, value_name = "N", default_value_t = 100, conflicts_with = "uncontended")]
    pub names: u64,
    /// Each client its own lock name (client i takes name i), so no acquire waits for another
    /// client.
    #[arg(long)]
    pub uncontended: bool,
    /// TTL of every client's session (etcd: lease; ZooKeeper: session timeout) (humantime).
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "10s")]
    pub ttl: Duration,
}

impl LockArgs {
    /// What `bench::locks` is asked.
    pub fn bench(&self) -> bench::locks::LockBench {
        let names = match self.uncontended {
            true => bench::locks::Names::PerClient,
            false => bench::locks::Names::Random(self.names),
        };
        bench::locks::LockBench { names, ttl: self.ttl }
    }
}

/// `latch bench session-keepalive`.
#[derive(Debug, Args)]
pub struct SessionKeepaliveArgs {
    /// Sessions created before the clock starts and kept alive during the run.
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    pub sessions: usize,
    /// Their TTL (humantime).
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "10s")]
    pub ttl: Duration,
}

/// `latch bench get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// How reads are served: linearizable (confirmed by the leader) or serializable (the
    /// member's own copy).
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
}

/// `latch bench mixed`.
#[derive(Debug, Args)]
pub struct MixedArgs {
    /// Fraction of operations that are reads, in [0, 1]; the rest are puts.
    #[arg(long, value_name = "R", default_value_t = 0.5)]
    pub read_ratio: f64,
    /// How reads are served.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
}

/// `--consistency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    /// Reflects every write acknowledged before the read began.
    Linearizable,
    /// The answering member's own copy: faster, possibly stale.
    Serializable,
}

impl From<ConsistencyArg> for Consistency {
    fn from(arg: ConsistencyArg) -> Self {
        match arg {
            ConsistencyArg::Linearizable => Consistency::Linearizable,
            ConsistencyArg::Serializable => Consistency::Serializable,
        }
    }
}

/// Flags of every workload. Global: accepted before or after the workload's name.
///
/// The client flags of the root apply too: `--output` (the report's format) and `--timeout`
/// (how long one operation may take, retries on other members included, before it fails);
/// `--endpoints` is the default Latch target (it and `--target` exclude each other, see
/// [`crate::cli::Cli::try_parse_args`]).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Benchmark options")]
pub struct BenchOptions {
    /// The cluster to load: latch://H:P,H:P, etcd://H:P,H:P or zk://H:P,H:P (etcd needs a
    /// build with `--features etcd`, zk one with `--features zk`). Default: latch:// and
    /// --endpoints (so $LATCH_ENDPOINTS, else 127.0.0.1:7379).
    #[arg(long, global = true, value_name = "URL")]
    pub target: Option<String>,
    /// Concurrent clients, each with one operation in flight at a time.
    #[arg(long, global = true, value_name = "N", default_value_t = 16)]
    pub clients: usize,
    /// Underlying client connections, shared round-robin by the clients; between 1 and
    /// --clients [default: the smaller of --clients and 16].
    #[arg(long, global = true, value_name = "C")]
    pub connections: Option<usize>,
    /// Stop after this many operations, across all clients.
    #[arg(long, global = true, value_name = "N", conflicts_with = "duration")]
    pub ops: Option<u64>,
    /// Stop after this long (humantime: "30s", "2m") [default: 10s unless --ops is given].
    #[arg(long, global = true, value_parser = crate::config::parse_duration)]
    pub duration: Option<Duration>,
    /// Bytes of every key: "bench/" and a zero-padded index.
    #[arg(long, global = true, value_name = "BYTES", default_value_t = 32)]
    pub key_size: usize,
    /// Bytes of every written value.
    #[arg(long, global = true, value_name = "BYTES", default_value_t = 256)]
    pub value_size: usize,
    /// How many distinct keys the operations pick from, uniformly.
    #[arg(long, global = true, value_name = "N", default_value_t = 100_000)]
    pub keyspace: u64,
    /// Threads of the load generator. One (the default) runs every client on one thread, which
    /// costs the least CPU per operation (no wake-ups across threads; measured in
    /// docs/performance.md) and leaves the most to the servers on a shared machine; more only
    /// when one thread cannot keep up.
    #[arg(long, global = true, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,
}

impl BenchOptions {
    /// The settings these flags and the client flags ask for; or a message naming the flag at
    /// fault.
    pub fn settings(&self, client: &ClientArgs) -> Result<Settings, String> {
        let endpoints: Vec<&str> =
            client.endpoints.iter().map(|e| e.trim()).filter(|e| !e.is_empty()).collect();
        let target = match &self.target {
            Some(target) => target.clone(),
            None if endpoints.is_empty() => format!("latch://{DEFAULT_ENDPOINTS}"),
            None => format!("latch://{}", endpoints.join(",")),
        };
        let settings = Settings {
            target: TargetSpec::parse(&target).map_err(|why| format!("--target: {why}"))?,
            clients: self.clients,
            connections: self.connections.unwrap_or(self.clients.min(DEFAULT_MAX_CONNECTIONS)),
            stop: match (self.ops, self.duration) {
                (Some(ops), _) => Stop::Ops(ops),
                (None, Some(duration)) => Stop::Duration(duration),
                (None, None) => Stop::Duration(DEFAULT_DURATION),
            },
            keys: KeySpace::new(self.keyspace, self.key_size)?,
            value_size: self.value_size,
            timeout: client.timeout,
        };
        settings.validate().map_err(|e| e.to_string())?;
        Ok(settings)
    }
}

/// Runs `latch bench …`.
pub async fn run(command: BenchCommand, client: &ClientArgs) -> anyhow::Result<ExitCode> {
    let mut options = command.options.clone();
    if let WorkloadArgs::WatchLatency(args) = &command.workload {
        // The streams are the clients that --connections are shared by (too few of them is
        // refused by the workload, naming --watchers).
        options.clients = args.bench().streams().max(options.connections.unwrap_or(1));
    }
    if let WorkloadArgs::Dns(_) = &command.workload {
        // Each client is a socket of its own.
        options.connections = Some(options.clients);
    }
    let settings = options.settings(client).map_err(UsageError)?;
    let is_dns = matches!(command.workload, WorkloadArgs::Dns(_));
    if is_dns && settings.target.system != System::Latch {
        return Err(UsageError(format!(
            "{} has no DNS port: `latch bench dns` asks a DNS port (a Latch member's, or any \
             server's) named by --dns-addr, not --target",
            settings.target.system.name()
        ))
        .into());
    }
    let progress = Progress::new(std::io::stderr().is_terminal());
    // Ctrl-C during the timed phase ends the run early, with a report of what was done.
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let result = match command.workload {
        WorkloadArgs::Put => bench::run(Put, &settings, progress, interrupt).await,
        WorkloadArgs::Get(args) => {
            bench::run(Get { consistency: args.consistency.into() }, &settings, progress, interrupt).await
        }
        WorkloadArgs::TxnCas => bench::run(TxnCas, &settings, progress, interrupt).await,
        WorkloadArgs::Mixed(args) => {
            let mixed = Mixed::new(args.read_ratio, args.consistency.into()).map_err(UsageError)?;
            bench::run(mixed, &settings, progress, interrupt).await
        }
        WorkloadArgs::SessionKeepalive(args) => {
            let ka = bench::sessions::KeepAlive { sessions: args.sessions, ttl: args.ttl };
            bench::sessions::run(ka, &settings, progress, interrupt).await
        }
        WorkloadArgs::Lock(args) => bench::locks::run(args.bench(), &settings, progress, interrupt).await,
        WorkloadArgs::WatchLatency(args) => {
            bench::watches::run(args.bench(), &settings, progress, interrupt).await
        }
        WorkloadArgs::Dns(args) => {
            let dns = args.bench().map_err(UsageError)?;
            bench::dns::run(dns, &settings, progress, interrupt).await
        }
        WorkloadArgs::Registry(args) => {
            let registry = bench::registry::RegistryBench {
                service: args.service,
                instances: args.instances,
                registrars: args.registrars,
                registered: args.registered,
                consistency: args.consistency.into(),
                rss_pid: args.rss_pid,
            };
            bench::registry::run(registry, &settings, progress, interrupt).await
        }
    };
    let report = match result {
        Ok(report) => report,
        Err(e) if e.is_usage() => return Err(UsageError(e.to_string()).into()),
        Err(e) => return Err(e.into()),
    };
    match client.output {
        Output::Json if is_dns => print_json(&bench::dns::to_json(&report))?,
        Output::Json => print_json(&report.to_json())?,
        Output::Text if is_dns => print_bytes(bench::dns::to_text(&report).as_bytes())?,
        Output::Text => print_bytes(report.to_text().as_bytes())?,
    }
    if report.ops == 0 && report.failed() > 0 {
        eprintln!("Error: every operation failed");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};

    fn parse_cli(args: &[&str]) -> Result<(BenchCommand, ClientArgs), clap::Error> {
        let cli = Cli::try_parse_args(["latch", "bench"].into_iter().chain(args.iter().copied()))?;
        match cli.command {
            Command::Bench(bench) => Ok((bench, cli.client)),
            other => panic!("bench command expected, got {other:?}"),
        }
    }

    fn parse(args: &[&str]) -> Result<BenchCommand, clap::Error> {
        parse_cli(args).map(|(bench, _)| bench)
    }

    /// The settings of `latch bench ARGS`, with `--endpoints` at its default (the test does not
    /// depend on `$LATCH_ENDPOINTS`).
    fn settings(args: &[&str]) -> Result<Settings, String> {
        let (bench, mut client) = parse_cli(args).expect("valid command line");
        if !args.contains(&"--endpoints") {
            client.endpoints = vec![DEFAULT_ENDPOINTS.to_string()];
        }
        bench.options.settings(&client)
    }

    #[test]
    fn defaults_are_sixteen_clients_for_ten_seconds_against_the_local_member() {
        let s = settings(&["put"]).expect("valid");
        assert_eq!(s.target.to_string(), "latch://127.0.0.1:7379");
        assert_eq!((s.clients, s.connections), (16, 16));
        assert_eq!(s.stop, Stop::Duration(Duration::from_secs(10)));
        assert_eq!((s.keys.key_size(), s.keys.size(), s.value_size), (32, 100_000, 256));
    }

    #[test]
    fn the_default_target_is_latch_and_the_client_endpoints() {
        for args in [&["--endpoints", "a:1,b:2", "put"][..], &["put", "--endpoints", "a:1,b:2"][..]] {
            assert_eq!(settings(args).expect("valid").target.to_string(), "latch://a:1,b:2");
        }
        let given = settings(&["put", "--target", "etcd://c:3"]).expect("valid");
        assert_eq!(given.target.to_string(), "etcd://c:3");
    }

    #[test]
    fn endpoints_and_target_exclude_each_other() {
        let e = parse(&["put", "--endpoints", "a:1", "--target", "latch://b:2"]).expect_err("both");
        assert_eq!(e.exit_code(), 2);
        let text = e.to_string();
        assert!(text.contains("--endpoints") && text.contains("--target"), "{text}");
    }

    #[test]
    fn a_cluster_id_is_refused_naming_the_flag_rather_than_ignored() {
        let e = parse(&["put", "--cluster-id", "00000000000000ab"]).expect_err("not a bench flag");
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--cluster-id"), "{e}");
    }

    #[test]
    fn output_and_timeout_are_the_client_flags_before_or_after_the_workload() {
        for args in [
            &["--output", "json", "--timeout", "2s", "put"][..],
            &["put", "--output", "json", "--timeout", "2s"][..],
        ] {
            let (_, client) = parse_cli(args).expect("valid");
            assert_eq!(client.output, Output::Json);
            assert_eq!(settings(args).expect("valid").timeout, Duration::from_secs(2));
        }
    }

    #[test]
    fn connections_default_to_the_clients_up_to_sixteen() {
        assert_eq!(settings(&["put", "--clients", "4"]).expect("valid").connections, 4);
        assert_eq!(settings(&["put", "--clients", "256"]).expect("valid").connections, 16);
        let e = settings(&["put", "--clients", "4", "--connections", "8"]).expect_err("more than clients");
        assert!(e.contains("--connections"), "{e}");
    }

    #[test]
    fn flags_go_before_or_after_the_workload() {
        for args in
            [&["--ops", "200", "--clients", "4", "put"][..], &["put", "--ops", "200", "--clients", "4"][..]]
        {
            let s = settings(args).expect("valid");
            assert_eq!((s.stop, s.clients), (Stop::Ops(200), 4));
        }
    }

    #[test]
    fn ops_and_duration_exclude_each_other() {
        let e = parse(&["put", "--ops", "10", "--duration", "1s"]).expect_err("both");
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            settings(&["put", "--duration", "1m"]).expect("valid").stop,
            Stop::Duration(Duration::from_secs(60))
        );
        assert!(settings(&["put", "--ops", "0"]).expect_err("no ops").contains("--ops"));
    }

    #[test]
    fn the_load_generator_runs_on_one_thread_unless_told_otherwise() {
        assert_eq!(parse(&["put"]).expect("valid").options.threads, 1);
        assert_eq!(parse(&["put", "--threads", "4"]).expect("valid").options.threads, 4);
        assert_eq!(parse(&["put", "--threads", "0"]).expect_err("no threads").exit_code(), 2);
    }

    #[test]
    fn workload_flags_are_parsed() {
        let get = parse(&["get", "--consistency", "serializable"]).expect("valid");
        assert!(matches!(
            get.workload,
            WorkloadArgs::Get(GetArgs { consistency: ConsistencyArg::Serializable })
        ));
        let mixed = parse(&["mixed", "--read-ratio", "0.9"]).expect("valid");
        let WorkloadArgs::Mixed(args) = mixed.workload else { panic!("mixed expected") };
        assert_eq!((args.read_ratio, args.consistency), (0.9, ConsistencyArg::Linearizable));
        assert!(matches!(parse(&["txn-cas"]).expect("valid").workload, WorkloadArgs::TxnCas));
        assert_eq!(parse(&["get", "--consistency", "eventual"]).expect_err("bad").exit_code(), 2);
        assert_eq!(parse(&["scan"]).expect_err("no such workload").exit_code(), 2);
    }

    #[test]
    fn lock_takes_random_names_or_one_per_client() {
        use bench::locks::Names;
        let default = parse(&["lock"]).expect("valid");
        let WorkloadArgs::Lock(args) = default.workload else { panic!("lock expected") };
        assert_eq!(args.bench().names, Names::Random(100));
        assert_eq!(args.bench().ttl, Duration::from_secs(10));
        let one = parse(&["lock", "--names", "1", "--ttl", "3s"]).expect("valid");
        let WorkloadArgs::Lock(args) = one.workload else { panic!("lock expected") };
        assert_eq!((args.bench().names, args.bench().ttl), (Names::Random(1), Duration::from_secs(3)));
        let own = parse(&["lock", "--uncontended", "--clients", "16"]).expect("valid");
        let WorkloadArgs::Lock(args) = own.workload else { panic!("lock expected") };
        assert_eq!(args.bench().names, Names::PerClient);
        let both = parse(&["lock", "--uncontended", "--names", "5"]).expect_err("both");
        assert_eq!(both.exit_code(), 2);
    }

    #[test]
    fn watch_latency_shares_the_connections_among_its_watchers() {
        let parsed = parse(&["watch-latency", "--watchers", "10000", "--connections", "64"]).expect("valid");
        let WorkloadArgs::WatchLatency(args) = parsed.workload else { panic!("watch-latency expected") };
        assert_eq!(args.watchers, 10_000);
        let default = parse(&["watch-latency"]).expect("valid");
        let WorkloadArgs::WatchLatency(args) = default.workload else { panic!("watch-latency expected") };
        assert_eq!((args.watchers, args.writer_member), (100, None));
        let pinned = parse(&["watch-latency", "--writer-member", "2"]).expect("valid");
        let WorkloadArgs::WatchLatency(args) = pinned.workload else { panic!("watch-latency expected") };
        assert_eq!(args.writer_member, Some(2));
    }

    #[test]
    fn dns_asks_a_service_or_a_name_at_a_dns_port() {
        let parsed = parse(&["dns", "--service", "web", "--clients", "64"]).expect("valid");
        assert_eq!(parsed.options.clients, 64);
        let WorkloadArgs::Dns(args) = parsed.workload else { panic!("dns expected") };
        assert_eq!(args.dns_addr, DEFAULT_DNS_ADDR);
        let dns = args.bench().expect("valid");
        assert_eq!(dns.name.to_ascii(), "web.service.latch.");
        assert_eq!((dns.record_type.to_string().as_str(), dns.query_timeout), ("A", Duration::from_secs(1)));
        let parsed = parse(&[
            "dns",
            "--name",
            "leader.db.election.latch",
            "--type",
            "txt",
            "--dns-addr",
            "127.0.0.1:5353",
        ])
        .expect("valid");
        let WorkloadArgs::Dns(args) = parsed.workload else { panic!("dns expected") };
        let dns = args.bench().expect("valid");
        assert_eq!(
            (dns.server.as_str(), dns.name.to_ascii()),
            ("127.0.0.1:5353", "leader.db.election.latch.".into())
        );
        assert_eq!(dns.record_type.to_string(), "TXT");
        assert_eq!(parse(&["dns"]).expect_err("no question").exit_code(), 2);
        assert_eq!(parse(&["dns", "--service", "a", "--name", "b"]).expect_err("both").exit_code(), 2);
        let parsed = parse(&["dns", "--service", "web", "--type", "NOPE"]).expect("parses");
        let WorkloadArgs::Dns(args) = parsed.workload else { panic!("dns expected") };
        assert!(args.bench().expect_err("bad type").contains("--type"));
    }

    #[tokio::test]
    async fn dns_refuses_an_etcd_target_before_asking_anything() {
        let (bench, client) = parse_cli(&["dns", "--service", "web", "--target", "etcd://127.0.0.1:2379"])
            .expect("valid command line");
        let e = run(bench, &client).await.expect_err("etcd has no DNS port");
        assert!(e.downcast_ref::<UsageError>().is_some(), "{e}");
        assert!(e.to_string().contains("etcd has no DNS port"), "{e}");
    }

    #[test]
    fn registry_registers_ten_thousand_instances_by_default() {
        let parsed = parse(&["registry", "--rss-pid", "42", "--consistency", "serializable"]).expect("valid");
        let WorkloadArgs::Registry(args) = parsed.workload else { panic!("registry expected") };
        assert_eq!(
            (args.instances, args.service.as_str(), args.rss_pid),
            (10_000, "bench-registry", Some(42))
        );
        assert_eq!(args.consistency, ConsistencyArg::Serializable);
        assert_eq!((args.registrars, args.registered), (64, false));
        let again = parse(&["registry", "--registered", "--registrars", "8"]).expect("valid");
        let WorkloadArgs::Registry(args) = again.workload else { panic!("registry expected") };
        assert_eq!((args.registrars, args.registered), (8, true));
    }

    #[test]
    fn bad_targets_and_key_sizes_are_usage_errors_naming_the_flag() {
        let e = settings(&["put", "--target", "consul://h:1"]).expect_err("unknown system");
        assert!(e.starts_with("--target:"), "{e}");
        let e = settings(&["put", "--key-size", "8"]).expect_err("too small for 100000 keys");
        assert!(e.contains("--key-size"), "{e}");
        assert!(settings(&["put", "--key-size", "8", "--keyspace", "100"]).is_ok());
    }
}
