//! A node's configuration: the `latch server` flags, the same names in `--config latch.toml`,
//! and the defaults (DESIGN.md §5, §6). A flag given on the command line wins over the file.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

/// Default ports (DESIGN.md §5).
pub const DEFAULT_CLIENT_ADDR: &str = "127.0.0.1:7379";
pub const DEFAULT_PEER_ADDR: &str = "127.0.0.1:7380";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:7381";
pub const DEFAULT_DNS_ADDR: &str = "127.0.0.1:8600";
pub const DEFAULT_DNS_DOMAIN: &str = "latch.";
/// redb's cache of the state file. redb 4 keeps written pages in it as well as read ones, so
/// it fills to this size as the state grows (1 GiB, redb's own default, made a member with a
/// million keys hold 1.3 GB; docs/performance.md, "Memory").
pub const STATE_CACHE_BYTES: usize = 256 * 1024 * 1024;
/// `--state-check-interval`'s default.
pub const STATE_CHECK_INTERVAL: Duration = Duration::from_millis(crate::core::STATE_CHECK_INTERVAL_MS);
const MIN_STATE_CACHE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("--{flag}: {problem}")]
    Invalid { flag: &'static str, problem: String },
}

/// How log lines are written on stderr (`--log-format`, `log-format` in the config file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// One line of text per event, for people.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `message`, the event's fields,
    /// `target`), for log shippers.
    Json,
}

/// What a member does when a quorum of the others agree on a state that is not its own
/// (`--state-check-action`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateCheckAction {
    /// Stop, mark the data dir, and refuse to start on it again.
    #[default]
    Stop,
    /// Log an error and count it (`latch_state_check_points_total{verdict="diverged"}`), and
    /// go on serving.
    Alert,
}

/// `latch server` flags. Every field is optional here so that the config file can supply it.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServerArgs {
    /// One node, data in ./latch-data, default ports: for trying Latch out.
    #[arg(long)]
    #[serde(default)]
    pub dev: bool,
    /// This member's id (a positive integer, listed in --initial-cluster unless the member was
    /// added to the running cluster: `latch cluster add`).
    #[arg(long)]
    pub id: Option<u64>,
    /// Directory of this member's data (created if missing); ./latch-data with --dev.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address for clients (gRPC), host:port [default: 127.0.0.1:7379].
    #[arg(long)]
    pub client_addr: Option<String>,
    /// The address clients reach this member at, host:port: how the other members name it
    /// to clients (the leader a follower's answers name, `latch cluster status`) [default:
    /// --client-addr as bound]. Needed when --client-addr is a wildcard (0.0.0.0) or behind
    /// NAT, as etcd's --advertise-client-urls.
    #[arg(long)]
    pub advertise_client_addr: Option<String>,
    /// Address for the other members (raft messages, snapshots), host:port [default: this
    /// member's address in --initial-cluster, else 127.0.0.1:7380].
    #[arg(long)]
    pub peer_addr: Option<String>,
    /// Address for HTTP (/metrics, /health, /ready), host:port [default: 127.0.0.1:7381].
    #[arg(long)]
    pub http_addr: Option<String>,
    /// Address of the DNS port, UDP and TCP, host:port [default: 127.0.0.1:8600].
    #[arg(long)]
    pub dns_addr: Option<String>,
    /// The domain the DNS port answers for [default: latch.].
    #[arg(long)]
    pub dns_domain: Option<String>,
    /// TTL of the DNS port's answers (humantime; at least 1s) [default: 5s].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub dns_ttl: Option<Duration>,
    /// How long resolvers may keep a negative DNS answer (the SOA minimum) [default: 5s].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub dns_negative_ttl: Option<Duration>,
    /// Answer DNS queries SERVFAIL once this member has been out of touch with a leader this
    /// long, rather than answer stale data [default: 5s].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub dns_max_stale: Option<Duration>,
    /// Peer addresses of the first members: 1=host:port,2=host:port,3=host:port.
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// A name of the cluster's own, folded into its id with --initial-cluster: two clusters
    /// bootstrapped with the same --initial-cluster (two development instances on their default
    /// addresses) then have different ids, which their clients and peers check, as etcd's
    /// --initial-cluster-token. Every member gives the same one, from the cluster's first start
    /// on (1 … 64 printable ASCII characters) [default: none].
    #[arg(long)]
    pub initial_cluster_token: Option<String>,
    /// Peer addresses of the cluster's members now, where --initial-cluster's may no longer
    /// answer (`latch cluster add` prints them for a new member): 4=host:port,5=host:port. Not
    /// folded into the cluster id; the member dials and asks them beside --initial-cluster's,
    /// and an address the cluster records (its state, a peer's answer) replaces one given here
    /// [default: none].
    #[arg(long)]
    pub peers: Option<String>,
    /// Snapshot the state machine and compact the log after this many applied entries [default: 10000].
    #[arg(long)]
    pub snapshot_entries: Option<u64>,
    /// Interval of a raft tick (humantime, 1ms … 10s) [default: 50ms]; elections time out after 10–20 ticks.
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub tick_interval: Option<Duration>,
    /// Largest key, in bytes [default: 4096].
    #[arg(long)]
    pub max_key_bytes: Option<usize>,
    /// Largest value, in bytes [default: 1048576].
    #[arg(long)]
    pub max_value_bytes: Option<usize>,
    /// Largest request, in bytes [default: 1572864].
    #[arg(long)]
    pub max_request_bytes: Option<usize>,
    /// Most operations in one transaction (compares, then and else ops each count) [default: 128].
    #[arg(long)]
    pub max_txn_ops: Option<usize>,
    /// Most bytes of keys and values in one answer (a range, or all ranges of a txn); a range
    /// over it returns a page with `more` set [default: 4194304].
    #[arg(long)]
    pub max_response_bytes: Option<usize>,
    /// Most bytes of client requests this member holds at once (queued, proposed or waiting to
    /// be read); past it requests are refused as overloaded [default: 67108864].
    #[arg(long)]
    pub max_pending_bytes: Option<usize>,
    /// Most reads at a past revision (`RangeRequest.revision`) this member serves at once, each
    /// off the async runtime; one that finds none free for a second is refused
    /// RESOURCE_EXHAUSTED [default: 4].
    #[arg(long)]
    pub max_past_reads: Option<usize>,
    /// Most Watch streams this member serves at once; past it a new stream is refused
    /// RESOURCE_EXHAUSTED [default: 20000].
    #[arg(long)]
    pub max_watch_streams: Option<usize>,
    /// Most watches this member serves at once, over every stream (each holds its key and
    /// range end); past it a create is refused RESOURCE_EXHAUSTED [default: 1000000].
    #[arg(long)]
    pub max_watches: Option<usize>,
    /// Most snapshots (watches with `on_compacted = SNAPSHOT` whose start was compacted) this
    /// member sends at once, each holding a read transaction; past it the watch is refused
    /// [default: 8].
    #[arg(long)]
    pub max_watch_snapshots: Option<usize>,
    /// How long a client may take to read a whole snapshot; one not read by then is canceled
    /// (the watch resumes with a new one) (humantime) [default: 60s].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub watch_snapshot_deadline: Option<Duration>,
    /// Most bytes of watch responses this member holds queued for its clients, over every
    /// stream (each stream holds at most 4 MiB), and the steps of history that streams
    /// catching up hold while they send them; a stream whose next response finds no room
    /// within a second is ended RESOURCE_EXHAUSTED, and clients resume its watches
    /// [default: 1073741824].
    #[arg(long)]
    pub max_watch_queued_bytes: Option<usize>,
    /// How long a watch stream waits for its client to make room in its queue; a client that
    /// reads nothing for longer has its stream ended UNAVAILABLE and what was queued for it
    /// dropped, and clients resume its watches (humantime) [default: 30s].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub watch_stall_deadline: Option<Duration>,
    /// Most calls one client connection carries at once (HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS,
    /// as etcd's flag of the same name): a client past it waits for one of its calls to end
    /// before the next starts — its session keepalives too, so a client holding that many
    /// long calls (waits, watches, observes) keeps its sessions on another connection
    /// [default: 10000].
    #[arg(long)]
    pub max_concurrent_streams: Option<usize>,
    /// Most sessions the cluster holds: past it (as this member counts the live sessions)
    /// CreateSession is refused RESOURCE_EXHAUSTED [default: 250000].
    #[arg(long)]
    pub max_sessions: Option<usize>,
    /// Most requests one lock's or election's queue holds: an acquire or campaign that would
    /// wait behind that many is refused RESOURCE_EXHAUSTED, and nothing is written
    /// [default: 1000].
    #[arg(long)]
    pub max_lock_waiters: Option<usize>,
    /// Most locks and elections one session holds or awaits at once: an acquire or campaign
    /// past it is refused RESOURCE_EXHAUSTED, and nothing is written. It bounds what a
    /// session's end releases in one entry [default: 10000].
    #[arg(long)]
    pub max_locks_per_session: Option<usize>,
    /// Shortest session TTL a client may ask for (humantime) [default: 1s].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub session_ttl_min: Option<Duration>,
    /// Longest session TTL a client may ask for (humantime) [default: 1h].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub session_ttl_max: Option<Duration>,
    /// Most bytes of raft messages from peers queued for this member's raft thread; past it
    /// they are dropped (raft resends). At least --max-peer-message-bytes [default: 134217728].
    #[arg(long)]
    pub max_peer_queue_bytes: Option<usize>,
    /// Largest raft message accepted from a peer (snapshots are streamed apart) [default: 67108864].
    #[arg(long)]
    pub max_peer_message_bytes: Option<usize>,
    /// Bytes of the newest raft log entries kept in memory; older ones are read from disk
    /// [default: 67108864].
    #[arg(long)]
    pub log_cache_bytes: Option<usize>,
    /// Most bytes of proposals the leader holds uncommitted; past it proposals are refused as
    /// overloaded [default: 67108864].
    #[arg(long)]
    pub max_uncommitted_bytes: Option<u64>,
    /// How long a watch that asked for progress notifications may go without a response before
    /// it gets one (humantime) [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub watch_progress_interval: Option<Duration>,
    /// How often the leader marks a check point in the log, at which every member hashes its
    /// state and compares it with its peers': a member that a quorum of the others disagree
    /// with stops, and does not start again on its data dir (humantime; 0: only at the check
    /// point each new leader marks; otherwise at least 1s) [default: 5m].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub state_check_interval: Option<Duration>,
    /// What a member does when a quorum of the other members agree on a state that is not its
    /// own: stop (and refuse to start on its data dir again), or only log an error and count
    /// it [default: stop].
    #[arg(long, value_enum)]
    pub state_check_action: Option<StateCheckAction>,
    /// Bytes of the state file's pages kept in memory (redb's cache of the pages it read or
    /// wrote); the rest are read from the file, through the operating system's page cache
    /// [default: 268435456; at least 1048576].
    #[arg(long)]
    pub state_cache_bytes: Option<usize>,
    /// Most revisions the shared window of recent revisions holds for watches [default:
    /// 100000]. Hidden: a small window lets tests make a watch fall behind (SLOW).
    #[arg(long, hide = true)]
    pub watch_window_revisions: Option<usize>,
    /// How much history to keep for watches and past reads: a number of revisions (`100000`)
    /// or a duration (`1h`); older revisions are compacted by the leader. `0` keeps all that
    /// `--history-retention-bytes` allows (set that to 0 too to keep everything) [default: 100000].
    #[arg(long, value_parser = Retention::parse)]
    #[serde(default, deserialize_with = "retention_opt")]
    pub history_retention: Option<Retention>,
    /// The most bytes of history to keep (its rows' keys and values); past it the leader
    /// compacts the oldest revisions, whatever `--history-retention` allows. `0` sets no byte
    /// bound [default: 1073741824].
    #[arg(long)]
    pub history_retention_bytes: Option<u64>,
    /// Serve the test-only `Faults` service on the peer port, through which anyone who can
    /// reach that port can cut this member off from its peers (docs/architecture.md). Hidden
    /// from --help: for the integration tests, never for production.
    #[arg(long, hide = true)]
    #[serde(default)]
    pub fault_injection: bool,
    /// The config file's `log-format`. On the command line it is the root's global
    /// `--log-format` (`latch --log-format json server …` or `latch server … --log-format json`),
    /// which every command takes; logging is set up before the configuration is resolved
    /// (see `Cli::log_format`).
    #[arg(skip)]
    #[serde(default)]
    pub log_format: Option<LogFormat>,
    /// Read every flag above from this TOML file (same names); flags given here win.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

impl ServerArgs {
    /// `log-format` as the `--config` file sets it; `None` if there is no file, it does not set
    /// it, or it cannot be read ([`Config::from_args`] reports that).
    pub fn log_format_in_config_file(&self) -> Option<LogFormat> {
        let text = std::fs::read_to_string(self.config.as_ref()?).ok()?;
        toml::from_str::<ServerArgs>(&text).ok()?.log_format
    }
}

/// A duration as flags and the config file give it ("500ms", "10s", "1m30s"), with an error
/// that says what one looks like.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim().starts_with('-') {
        return Err("a duration cannot be negative: write one such as 500ms, 10s, 1m or 1h30m".into());
    }
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("not a duration ({e}): write one such as 500ms, 10s, 1m or 1h30m"))?;
    // Past this, an instant that far ahead would overflow the clock (a panic, not an error).
    if d > MAX_DURATION {
        return Err(format!("at most {}", humantime::format_duration(MAX_DURATION)));
    }
    Ok(d)
}

/// The shortest `--tick-interval`: the core counts time in milliseconds.
const MIN_TICK: Duration = Duration::from_millis(1);
/// The longest `--tick-interval`: with elections 10 to 20 ticks long, a cluster that lost its
/// leader would stay without one for minutes.
const MAX_TICK: Duration = Duration::from_secs(10);

/// The longest duration a flag or the config file may give: ten years, more than any timeout,
/// TTL or retention means.
pub const MAX_DURATION: Duration = Duration::from_secs(315_576_000); // 10 × 365.25 days

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| super::parse_duration(&s).map_err(serde::de::Error::custom)).transpose()
    }
}

pub use crate::core::Retention;

fn retention_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Retention>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Number(n)) => Retention::parse(&n.to_string()).map(Some).map_err(serde::de::Error::custom),
        Some(Raw::Text(t)) => Retention::parse(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

/// Bounds on what one request may carry and what a member holds for its clients (DESIGN.md
/// §6). A request over a limit is rejected before it is proposed, so nothing is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub max_response_bytes: usize,
    pub max_pending_bytes: usize,
    /// Reads at a past revision served at once (`--max-past-reads`).
    pub max_past_reads: usize,
    /// Watch streams served at once (`--max-watch-streams`).
    pub max_watch_streams: usize,
    /// Watches served at once over every stream (`--max-watches`).
    pub max_watches: usize,
    /// Snapshots of watches sent at once (`--max-watch-snapshots`), and the time a client has
    /// to read one (`--watch-snapshot-deadline`).
    pub max_watch_snapshots: usize,
    pub watch_snapshot_deadline: Duration,
    /// Bytes of watch responses queued for clients over every stream
    /// (`--max-watch-queued-bytes`), and how long one stream waits for its client to make room
    /// in its queue (`--watch-stall-deadline`).
    pub max_watch_queued_bytes: usize,
    pub watch_stall_deadline: Duration,
    /// Calls one client connection carries at once (`--max-concurrent-streams`).
    pub max_concurrent_streams: usize,
    /// Live sessions past which CreateSession is refused (`--max-sessions`).
    pub max_sessions: usize,
    /// Requests one lock's queue holds at most (`--max-lock-waiters`); the proposing member's
    /// value travels in each acquire, so every member applies the same bound.
    pub max_lock_waiters: usize,
    /// Locks and elections one session holds or awaits at most (`--max-locks-per-session`),
    /// carried in each acquire like `max_lock_waiters`.
    pub max_locks_per_session: usize,
    /// Bounds of a session's TTL.
    pub session_ttl_min: Duration,
    pub session_ttl_max: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 4 * 1024,
            max_value_bytes: 1024 * 1024,
            max_request_bytes: 3 * 512 * 1024,
            max_txn_ops: 128,
            max_response_bytes: 4 * 1024 * 1024,
            max_pending_bytes: 64 * 1024 * 1024,
            max_past_reads: 4,
            max_watch_streams: 20_000,
            max_watches: 1_000_000,
            max_watch_snapshots: 8,
            watch_snapshot_deadline: Duration::from_secs(60),
            max_watch_queued_bytes: 1024 * 1024 * 1024,
            watch_stall_deadline: Duration::from_secs(30),
            max_concurrent_streams: 10_000,
            max_sessions: 250_000,
            max_lock_waiters: 1_000,
            max_locks_per_session: 10_000,
            session_ttl_min: Duration::from_secs(1),
            session_ttl_max: Duration::from_secs(3600),
        }
    }
}

/// Bounds on what a member holds for its peers and its raft log (DESIGN.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    pub max_peer_queue_bytes: usize,
    pub max_peer_message_bytes: usize,
    pub log_cache_bytes: usize,
    pub max_uncommitted_bytes: u64,
}

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            max_peer_queue_bytes: 128 * 1024 * 1024,
            max_peer_message_bytes: 64 * 1024 * 1024,
            log_cache_bytes: 64 * 1024 * 1024,
            max_uncommitted_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A member of the initial cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: u64,
    pub peer_addr: String,
}

/// A node's resolved configuration.
/// The DNS port's answers (`--dns-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    pub domain: String,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub max_stale: Duration,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            domain: DEFAULT_DNS_DOMAIN.into(),
            ttl: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(5),
            max_stale: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub id: u64,
    pub data_dir: PathBuf,
    pub client_addr: String,
    /// What the member names its client address to others (`--advertise-client-addr`); the
    /// address bound when `None`.
    pub advertise_client_addr: Option<String>,
    pub peer_addr: String,
    /// Serves /metrics, /health and /ready.
    pub http_addr: String,
    /// The DNS port, UDP and TCP.
    pub dns_addr: String,
    pub dns: Dns,
    /// The members the cluster started with, sorted by id: this one included, unless it was
    /// added at run time ([`Config::joins`]).
    pub initial_cluster: Vec<Peer>,
    /// `--initial-cluster-token`: folded into the cluster id when given.
    pub initial_cluster_token: Option<String>,
    /// `--peers`: members that run now, known to the transport and asked at start beside
    /// `initial_cluster` (never this member, nor a first member at another address).
    pub peers: Vec<Peer>,
    pub snapshot_entries: u64,
    pub tick_interval: Duration,
    pub limits: Limits,
    pub peer_limits: PeerLimits,
    /// Idle time after which a watch asking for it gets a progress response.
    pub watch_progress_interval: Duration,
    /// How often the leader marks a check point (`--state-check-interval`; zero: never).
    pub state_check_interval: Duration,
    /// `--state-check-action`.
    pub state_check_action: StateCheckAction,
    /// Most revisions of the shared window of recent revisions (`--watch-window-revisions`).
    pub watch_window_revisions: usize,
    /// Bytes of redb's cache of the state file (`--state-cache-bytes`).
    pub state_cache_bytes: usize,
    pub history_retention: Retention,
    /// `--history-retention-bytes` (0: no byte bound).
    pub history_retention_bytes: u64,
    /// Serve the test-only `Faults` service on the peer port (`--fault-injection`).
    pub fault_injection: bool,
}

impl Config {
    /// A single-node configuration for tests and `--dev`: ports still to be chosen by the caller;
    /// the HTTP port is any free one.
    pub fn single(data_dir: PathBuf, client_addr: String, peer_addr: String) -> Config {
        Config {
            id: 1,
            data_dir,
            initial_cluster: vec![Peer { id: 1, peer_addr: peer_addr.clone() }],
            initial_cluster_token: None,
            peers: Vec::new(),
            client_addr,
            advertise_client_addr: None,
            peer_addr,
            http_addr: "127.0.0.1:0".into(),
            dns_addr: "127.0.0.1:0".into(),
            dns: Dns::default(),
            snapshot_entries: 10_000,
            tick_interval: Duration::from_millis(50),
            limits: Limits::default(),
            peer_limits: PeerLimits::default(),
            watch_progress_interval: Duration::from_secs(10),
            state_check_interval: STATE_CHECK_INTERVAL,
            state_check_action: StateCheckAction::Stop,
            watch_window_revisions: 100_000,
            state_cache_bytes: STATE_CACHE_BYTES,
            history_retention: Retention::DEFAULT,
            history_retention_bytes: crate::core::HISTORY_RETENTION_BYTES,
            fault_injection: false,
        }
    }

    /// Resolves flags over the config file over the defaults.
    pub fn from_args(flags: ServerArgs) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                toml::from_str::<ServerArgs>(&text)
                    .map_err(|source| ConfigError::Parse { path: path.clone(), source })?
            }
            None => ServerArgs::default(),
        };
        let dev = flags.dev || file.dev;
        let pick = |f: Option<String>, g: Option<String>| f.or(g);
        let id = flags.id.or(file.id).or(dev.then_some(1)).ok_or(ConfigError::Invalid {
            flag: "id",
            problem: "required (or use --dev for a single local node)".into(),
        })?;
        if id == 0 {
            return Err(ConfigError::Invalid { flag: "id", problem: "must be a positive integer".into() });
        }
        let client_addr =
            pick(flags.client_addr, file.client_addr).unwrap_or_else(|| DEFAULT_CLIENT_ADDR.into());
        let advertise_client_addr = pick(flags.advertise_client_addr, file.advertise_client_addr);
        if let Some(addr) = &advertise_client_addr {
            check_advertised(addr)
                .map_err(|problem| ConfigError::Invalid { flag: "advertise-client-addr", problem })?;
        }
        let given_peer_addr = pick(flags.peer_addr, file.peer_addr);
        let peer_addr = given_peer_addr.clone().unwrap_or_else(|| DEFAULT_PEER_ADDR.into());
        let http_addr = pick(flags.http_addr, file.http_addr).unwrap_or_else(|| DEFAULT_HTTP_ADDR.into());
        let data_dir =
            flags.data_dir.or(file.data_dir).or_else(|| dev.then(|| PathBuf::from("latch-data"))).ok_or(
                ConfigError::Invalid { flag: "data-dir", problem: "required (or use --dev)".into() },
            )?;
        let initial_cluster = match pick(flags.initial_cluster, file.initial_cluster) {
            Some(spec) => parse_members(&spec, "initial-cluster")?,
            None if dev || id == 1 => vec![Peer { id, peer_addr: peer_addr.clone() }],
            None => {
                return Err(ConfigError::Invalid {
                    flag: "initial-cluster",
                    problem: "required: the peer addresses of the first members, e.g. 1=127.0.0.1:7380"
                        .into(),
                })
            }
        };
        let initial_cluster_token = pick(flags.initial_cluster_token, file.initial_cluster_token);
        if let Some(token) = &initial_cluster_token {
            check_token(token)
                .map_err(|problem| ConfigError::Invalid { flag: "initial-cluster-token", problem })?;
        }
        // Unless given, the peer port listens where the cluster says this member is (etcd
        // defaults to localhost, and a member on another host then listens where no peer looks).
        // A member not among the first ones joins a running cluster that added it
        // (`latch cluster add`): it says where it listens.
        let peer_addr = match (initial_cluster.iter().find(|p| p.id == id), given_peer_addr) {
            (Some(me), None) => me.peer_addr.clone(),
            (_, Some(_)) => peer_addr,
            (None, None) => {
                return Err(ConfigError::Invalid {
                    flag: "initial-cluster",
                    problem: format!(
                        "does not list this member's id {id}: a member added to a running cluster \
                         (`latch cluster add {id} HOST:PORT`) is started with the cluster's \
                         --initial-cluster and --peer-addr, where it listens for its peers (and \
                         --peers, as the command prints)"
                    ),
                })
            }
        };
        let peers = match pick(flags.peers, file.peers) {
            Some(spec) => check_peers(parse_members(&spec, "peers")?, (id, &peer_addr), &initial_cluster)
                .map_err(|problem| ConfigError::Invalid { flag: "peers", problem })?,
            None => Vec::new(),
        };
        let defaults = Limits::default();
        let limits = Limits {
            max_key_bytes: flags.max_key_bytes.or(file.max_key_bytes).unwrap_or(defaults.max_key_bytes),
            max_value_bytes: flags
                .max_value_bytes
                .or(file.max_value_bytes)
                .unwrap_or(defaults.max_value_bytes),
            max_request_bytes: flags
                .max_request_bytes
                .or(file.max_request_bytes)
                .unwrap_or(defaults.max_request_bytes),
            max_txn_ops: flags.max_txn_ops.or(file.max_txn_ops).unwrap_or(defaults.max_txn_ops),
            max_response_bytes: flags
                .max_response_bytes
                .or(file.max_response_bytes)
                .unwrap_or(defaults.max_response_bytes),
            max_pending_bytes: flags
                .max_pending_bytes
                .or(file.max_pending_bytes)
                .unwrap_or(defaults.max_pending_bytes),
            max_past_reads: flags.max_past_reads.or(file.max_past_reads).unwrap_or(defaults.max_past_reads),
            max_watch_streams: flags
                .max_watch_streams
                .or(file.max_watch_streams)
                .unwrap_or(defaults.max_watch_streams),
            max_watches: flags.max_watches.or(file.max_watches).unwrap_or(defaults.max_watches),
            max_watch_snapshots: flags
                .max_watch_snapshots
                .or(file.max_watch_snapshots)
                .unwrap_or(defaults.max_watch_snapshots),
            watch_snapshot_deadline: flags
                .watch_snapshot_deadline
                .or(file.watch_snapshot_deadline)
                .unwrap_or(defaults.watch_snapshot_deadline),
            max_watch_queued_bytes: flags
                .max_watch_queued_bytes
                .or(file.max_watch_queued_bytes)
                .unwrap_or(defaults.max_watch_queued_bytes),
            watch_stall_deadline: flags
                .watch_stall_deadline
                .or(file.watch_stall_deadline)
                .unwrap_or(defaults.watch_stall_deadline),
            max_concurrent_streams: flags
                .max_concurrent_streams
                .or(file.max_concurrent_streams)
                .unwrap_or(defaults.max_concurrent_streams),
            max_sessions: flags.max_sessions.or(file.max_sessions).unwrap_or(defaults.max_sessions),
            max_lock_waiters: flags
                .max_lock_waiters
                .or(file.max_lock_waiters)
                .unwrap_or(defaults.max_lock_waiters),
            max_locks_per_session: flags
                .max_locks_per_session
                .or(file.max_locks_per_session)
                .unwrap_or(defaults.max_locks_per_session),
            session_ttl_min: flags
                .session_ttl_min
                .or(file.session_ttl_min)
                .unwrap_or(defaults.session_ttl_min),
            session_ttl_max: flags
                .session_ttl_max
                .or(file.session_ttl_max)
                .unwrap_or(defaults.session_ttl_max),
        };
        if limits.session_ttl_min.is_zero() || limits.session_ttl_min > limits.session_ttl_max {
            return Err(ConfigError::Invalid {
                flag: "session-ttl-min",
                problem: format!(
                    "must be positive and at most --session-ttl-max ({})",
                    humantime::format_duration(limits.session_ttl_max)
                ),
            });
        }
        for (flag, n) in [
            ("max-past-reads", limits.max_past_reads),
            ("max-watch-streams", limits.max_watch_streams),
            ("max-watches", limits.max_watches),
            ("max-watch-snapshots", limits.max_watch_snapshots),
            ("max-concurrent-streams", limits.max_concurrent_streams),
            ("max-sessions", limits.max_sessions),
            ("max-lock-waiters", limits.max_lock_waiters),
            ("max-locks-per-session", limits.max_locks_per_session),
        ] {
            // A semaphore holds at most usize::MAX >> 3 permits; a u32 is plenty for any of these.
            if n == 0 || n > u32::MAX as usize {
                return Err(ConfigError::Invalid {
                    flag,
                    problem: format!("{n} is outside 1 … {}", u32::MAX),
                });
            }
        }
        for (flag, d) in [
            ("watch-snapshot-deadline", limits.watch_snapshot_deadline),
            ("watch-stall-deadline", limits.watch_stall_deadline),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Invalid { flag, problem: "must be positive".into() });
            }
        }
        for (flag, n) in [
            ("max-key-bytes", limits.max_key_bytes),
            ("max-value-bytes", limits.max_value_bytes),
            ("max-request-bytes", limits.max_request_bytes),
            ("max-txn-ops", limits.max_txn_ops),
            ("max-response-bytes", limits.max_response_bytes),
        ] {
            // 0 would start a member that refuses every write (or every answer).
            if n == 0 {
                return Err(ConfigError::Invalid { flag, problem: "must be at least 1".into() });
            }
        }
        if limits.max_watch_queued_bytes == 0 {
            return Err(ConfigError::Invalid {
                flag: "max-watch-queued-bytes",
                problem: "must be positive".into(),
            });
        }
        let peer_defaults = PeerLimits::default();
        let peer_limits = PeerLimits {
            max_peer_queue_bytes: flags
                .max_peer_queue_bytes
                .or(file.max_peer_queue_bytes)
                .unwrap_or(peer_defaults.max_peer_queue_bytes),
            max_peer_message_bytes: flags
                .max_peer_message_bytes
                .or(file.max_peer_message_bytes)
                .unwrap_or(peer_defaults.max_peer_message_bytes),
            log_cache_bytes: flags
                .log_cache_bytes
                .or(file.log_cache_bytes)
                .unwrap_or(peer_defaults.log_cache_bytes),
            max_uncommitted_bytes: flags
                .max_uncommitted_bytes
                .or(file.max_uncommitted_bytes)
                .unwrap_or(peer_defaults.max_uncommitted_bytes),
        };
        // A peer must be able to send any entry a client may propose (a request, plus framing).
        let entry_max = limits.max_request_bytes.saturating_mul(2).saturating_add(1024 * 1024);
        if peer_limits.max_peer_message_bytes < entry_max {
            return Err(ConfigError::Invalid {
                flag: "max-peer-message-bytes",
                problem: format!(
                    "{} is below {entry_max}, what a raft message carrying one request of \
                     --max-request-bytes {} may take",
                    peer_limits.max_peer_message_bytes, limits.max_request_bytes
                ),
            });
        }
        // A message the queue could never hold would be dropped on every resend.
        if peer_limits.max_peer_queue_bytes < peer_limits.max_peer_message_bytes {
            return Err(ConfigError::Invalid {
                flag: "max-peer-queue-bytes",
                problem: format!(
                    "{} is below --max-peer-message-bytes ({}): a raft message that large could never \
                     be queued, and a peer sending it would be dropped on every resend",
                    peer_limits.max_peer_queue_bytes, peer_limits.max_peer_message_bytes
                ),
            });
        }
        let uncommitted_min = (2 * limits.max_request_bytes as u64).max(crate::core::MAX_MESSAGE_BYTES);
        if peer_limits.max_uncommitted_bytes < uncommitted_min {
            return Err(ConfigError::Invalid {
                flag: "max-uncommitted-bytes",
                problem: format!(
                    "{} is below {uncommitted_min}: at least twice --max-request-bytes ({}) and at \
                     least 1 MiB (one raft append message)",
                    peer_limits.max_uncommitted_bytes, limits.max_request_bytes
                ),
            });
        }
        if limits.max_pending_bytes < limits.max_request_bytes {
            return Err(ConfigError::Invalid {
                flag: "max-pending-bytes",
                problem: format!(
                    "{} is below --max-request-bytes ({}): the member could not hold one request",
                    limits.max_pending_bytes, limits.max_request_bytes
                ),
            });
        }
        let snapshot_entries = flags.snapshot_entries.or(file.snapshot_entries).unwrap_or(10_000);
        if snapshot_entries == 0 {
            return Err(ConfigError::Invalid {
                flag: "snapshot-entries",
                problem: "must be at least 1".into(),
            });
        }
        let tick_interval = flags.tick_interval.or(file.tick_interval).unwrap_or(Duration::from_millis(50));
        if !(MIN_TICK..=MAX_TICK).contains(&tick_interval) {
            return Err(ConfigError::Invalid {
                flag: "tick-interval",
                problem: format!(
                    "{} is outside {} … {} (elections take 10 to 20 ticks)",
                    humantime::format_duration(tick_interval),
                    humantime::format_duration(MIN_TICK),
                    humantime::format_duration(MAX_TICK)
                ),
            });
        }
        let watch_progress_interval =
            flags.watch_progress_interval.or(file.watch_progress_interval).unwrap_or(Duration::from_secs(10));
        if watch_progress_interval.is_zero() {
            return Err(ConfigError::Invalid {
                flag: "watch-progress-interval",
                problem: "must be positive".into(),
            });
        }
        let state_check_interval =
            flags.state_check_interval.or(file.state_check_interval).unwrap_or(STATE_CHECK_INTERVAL);
        if !state_check_interval.is_zero() && state_check_interval < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                flag: "state-check-interval",
                problem: format!(
                    "{} is shorter than 1s (each check point hashes every member's whole state); 0 turns \
                     the periodic ones off",
                    humantime::format_duration(state_check_interval)
                ),
            });
        }
        let watch_window_revisions =
            flags.watch_window_revisions.or(file.watch_window_revisions).unwrap_or(100_000).max(1);
        let state_cache_bytes =
            flags.state_cache_bytes.or(file.state_cache_bytes).unwrap_or(STATE_CACHE_BYTES);
        if state_cache_bytes < MIN_STATE_CACHE_BYTES {
            return Err(ConfigError::Invalid {
                flag: "state-cache-bytes",
                problem: format!(
                    "{state_cache_bytes} is below {MIN_STATE_CACHE_BYTES} (1 MiB): a cache that small would \
                     read most pages from the file again"
                ),
            });
        }
        let history_retention =
            flags.history_retention.or(file.history_retention).unwrap_or(Retention::DEFAULT);
        let history_retention_bytes = flags
            .history_retention_bytes
            .or(file.history_retention_bytes)
            .unwrap_or(crate::core::HISTORY_RETENTION_BYTES);
        let dns_addr = pick(flags.dns_addr, file.dns_addr).unwrap_or_else(|| DEFAULT_DNS_ADDR.into());
        let dns_defaults = Dns::default();
        let dns = Dns {
            domain: pick(flags.dns_domain, file.dns_domain).unwrap_or(dns_defaults.domain),
            ttl: flags.dns_ttl.or(file.dns_ttl).unwrap_or(dns_defaults.ttl),
            negative_ttl: flags
                .dns_negative_ttl
                .or(file.dns_negative_ttl)
                .unwrap_or(dns_defaults.negative_ttl),
            max_stale: flags.dns_max_stale.or(file.dns_max_stale).unwrap_or(dns_defaults.max_stale),
        };
        crate::dns::zone::Zone::new(&dns.domain, 1, 1)
            .map_err(|problem| ConfigError::Invalid { flag: "dns-domain", problem })?;
        for (flag, d) in
            [("dns-ttl", dns.ttl), ("dns-negative-ttl", dns.negative_ttl), ("dns-max-stale", dns.max_stale)]
        {
            if d < Duration::from_secs(1) || d > Duration::from_secs(24 * 3600) {
                return Err(ConfigError::Invalid {
                    flag,
                    problem: format!("{} is outside 1s … 24h", humantime::format_duration(d)),
                });
            }
        }
        Ok(Config {
            id,
            data_dir,
            client_addr,
            advertise_client_addr,
            peer_addr,
            http_addr,
            dns_addr,
            dns,
            initial_cluster,
            initial_cluster_token,
            peers,
            snapshot_entries,
            tick_interval,
            limits,
            peer_limits,
            watch_progress_interval,
            state_check_interval,
            state_check_action: flags.state_check_action.or(file.state_check_action).unwrap_or_default(),
            watch_window_revisions,
            state_cache_bytes,
            history_retention,
            history_retention_bytes,
            fault_injection: flags.fault_injection || file.fault_injection,
        })
    }

    /// Whether this member was added to the running cluster (`latch cluster add`) rather than
    /// one of the members it started with.
    pub fn joins(&self) -> bool {
        !self.initial_cluster.iter().any(|p| p.id == self.id)
    }

    /// The members to ask and to dial before this member's state names the cluster's members:
    /// `--initial-cluster`'s, and `--peers`.
    pub fn contacts(&self) -> Vec<Peer> {
        let mut all = self.initial_cluster.clone();
        for p in &self.peers {
            if !all.iter().any(|q| q.id == p.id) {
                all.push(p.clone());
            }
        }
        all
    }

    /// The cluster's identity, derived from the initial membership (and the token, when given)
    /// so that every member computes the same value and a data dir of another cluster is
    /// recognised. Without a token it is what it was before tokens existed, so data dirs made
    /// then keep their cluster.
    pub fn cluster_id(&self) -> u64 {
        let mut spec = String::new();
        for p in &self.initial_cluster {
            spec.push_str(&format!("{}={},", p.id, p.peer_addr));
        }
        if let Some(token) = &self.initial_cluster_token {
            spec.push_str(&format!("token={token}"));
        }
        fnv1a(spec.as_bytes())
    }
}

/// FNV-1a, 64 bit: a stable hash (unlike `DefaultHasher`, guaranteed the same across builds).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Parses `1=host:port,2=host:port`, the value of `flag`.
pub fn parse_members(spec: &str, flag: &'static str) -> Result<Vec<Peer>, ConfigError> {
    let bad = |problem: String| ConfigError::Invalid { flag, problem };
    let mut peers = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| bad(format!("{part:?} is not ID=HOST:PORT")))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| bad(format!("{id:?} in {part:?} is not a member id (a positive integer)")))?;
        if id == 0 {
            return Err(bad("member id 0 is reserved; ids start at 1".into()));
        }
        let addr = addr.trim();
        check_host_port(addr).map_err(|why| bad(format!("{addr:?} in {part:?} is not HOST:PORT: {why}")))?;
        if peers.iter().any(|p: &Peer| p.id == id) {
            return Err(bad(format!("member id {id} is listed twice")));
        }
        if let Some(other) = peers.iter().find(|p: &&Peer| p.peer_addr == addr) {
            return Err(bad(format!("members {} and {id} share the address {addr}", other.id)));
        }
        peers.push(Peer { id, peer_addr: addr.to_string() });
    }
    if peers.is_empty() {
        return Err(bad("lists no members".into()));
    }
    peers.sort_by_key(|p| p.id);
    Ok(peers)
}

/// `--peers` as given, without this member (`me`, listening at `my_addr`: a list another
/// member's start line printed names it, at the address the cluster knows, which may be a host
/// name where `--peer-addr` binds an IP or a wildcard), if no other member in it is at this
/// member's address, at another address than `initial` says (a first member's address is the
/// one folded into the cluster id), or at a first member's address under another id.
fn check_peers(peers: Vec<Peer>, (me, my_addr): (u64, &str), initial: &[Peer]) -> Result<Vec<Peer>, String> {
    let mut others = Vec::new();
    for p in peers {
        check_peer_addr(&p.peer_addr)?;
        if p.id == me {
            continue;
        }
        if p.peer_addr == my_addr {
            return Err(format!("says member {} listens at {my_addr}, this member's --peer-addr", p.id));
        }
        if let Some(first) = initial.iter().find(|f| f.id == p.id && f.peer_addr != p.peer_addr) {
            return Err(format!(
                "says member {} listens at {}, where --initial-cluster says {}: a first member keeps its \
                 address (replace it under a new id: `latch cluster add`)",
                p.id, p.peer_addr, first.peer_addr
            ));
        }
        if let Some(first) = initial.iter().find(|f| f.id != p.id && f.peer_addr == p.peer_addr) {
            return Err(format!(
                "says member {} listens at {}, member {}'s address in --initial-cluster",
                p.id, p.peer_addr, first.id
            ));
        }
        others.push(p);
    }
    Ok(others)
}

/// Whether `addr` is one `HOST:PORT` (an IPv6 host in brackets): a list pasted with spaces
/// instead of commas must not pass for one odd address, which would make a one-member cluster.
fn check_host_port(addr: &str) -> Result<(), String> {
    if let Some(c) = addr.chars().find(|c| c.is_whitespace() || matches!(c, '=' | ',' | '/')) {
        return Err(format!("it holds {c:?}"));
    }
    let (host, port) = addr.rsplit_once(':').ok_or("no :PORT")?;
    let one_host = match host.strip_prefix('[') {
        // A link-local address may name its interface by number ([fe80::1%2]), as a socket
        // address binds it.
        Some(_) => addr.parse::<std::net::SocketAddrV6>().is_ok(),
        None => !host.is_empty() && !host.contains([':', '[', ']']),
    };
    if !one_host {
        return Err(format!("{host:?} is not a host (an IPv6 address goes in brackets: [::1]:7380)"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{port:?} is not a port (1 … 65535)")),
    }
}

/// Whether `addr` is an address peers can dial: one HOST:PORT, no wildcard (a member added at
/// run time is dialed where `latch cluster add` says).
pub fn check_peer_addr(addr: &str) -> Result<(), String> {
    // A DNS name (253) and a port: it is replicated into every member's state for good.
    if addr.len() > 253 + 6 {
        return Err(format!("{} bytes is longer than any HOST:PORT (at most 259)", addr.len()));
    }
    check_host_port(addr).map_err(|why| format!("{addr:?} is not HOST:PORT: {why}"))?;
    if is_wildcard(addr) {
        return Err(format!("{addr:?} names no host its peers could dial (a wildcard address)"));
    }
    Ok(())
}

/// Whether `token` is 1 … 64 printable ASCII characters without spaces (so its length in
/// bytes is its length in characters).
fn check_token(token: &str) -> Result<(), String> {
    if let Some(c) = token.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!("{token:?} holds {c:?}; give printable ASCII characters without spaces"));
    }
    if token.is_empty() || token.len() > 64 {
        return Err(format!("{} characters; give 1 … 64", token.len()));
    }
    Ok(())
}

/// Whether `addr` is a `HOST:PORT` a client can connect to: one host (not a wildcard address,
/// which names no host to go to) and a port.
fn check_advertised(addr: &str) -> Result<(), String> {
    check_host_port(addr).map_err(|problem| format!("{addr:?}: {problem}; expected host:port"))?;
    if is_wildcard(addr) {
        return Err(format!(
            "{addr:?} is a wildcard address, which clients cannot connect to; give this member's own host"
        ));
    }
    Ok(())
}

/// Whether the address a client port was bound to is a wildcard (0.0.0.0, [::]): one a member
/// cannot name itself to clients by.
pub fn is_wildcard(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().to_canonical().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advertised_client_address_is_one_host_and_port_and_no_wildcard() {
        let with = |addr: &str| {
            Config::from_args(ServerArgs {
                dev: true,
                advertise_client_addr: Some(addr.into()),
                ..Default::default()
            })
        };
        let good = with("member-1.example:7379").expect("a host name and a port");
        assert_eq!(good.advertise_client_addr.as_deref(), Some("member-1.example:7379"));
        assert!(with("[fd00::1]:7379").is_ok(), "an IPv6 address in brackets");
        for (bad, why) in [
            ("0.0.0.0:7379", "wildcard"),
            ("[::]:7379", "wildcard"),
            ("[::ffff:0.0.0.0]:7379", "wildcard"),
            ("member-1.example", "no :PORT"),
            ("member-1.example:0", "not a port"),
            ("a:1,b:2", "holds ','"),
        ] {
            match with(bad) {
                Err(ConfigError::Invalid { flag: "advertise-client-addr", problem }) => {
                    assert!(
                        problem.contains(why),
                        "{bad}: expected the problem to say {why:?}, got {problem:?}"
                    )
                }
                other => panic!("{bad}: expected --advertise-client-addr refused ({why}), got {other:?}"),
            }
        }
        let dev = Config::from_args(ServerArgs { dev: true, ..Default::default() }).expect("--dev");
        assert_eq!(dev.advertise_client_addr, None, "the bound address unless given");
        assert!(is_wildcard("0.0.0.0:7379") && is_wildcard("[::]:7379"));
        assert!(!is_wildcard("127.0.0.1:7379") && !is_wildcard("member-1.example:7379"));
    }

    #[test]
    fn a_cluster_token_changes_the_cluster_id_and_none_leaves_it_as_before() {
        let with = |token: Option<&str>| {
            Config::from_args(ServerArgs {
                dev: true,
                initial_cluster_token: token.map(str::to_string),
                ..Default::default()
            })
        };
        let plain = with(None).expect("no token");
        let spec = format!("1={},", plain.peer_addr);
        assert_eq!(plain.cluster_id(), fnv1a(spec.as_bytes()), "without a token, the id of before tokens");
        let (a, b) = (with(Some("staging-7")).expect("a token"), with(Some("staging-8")).expect("a token"));
        assert_ne!(a.cluster_id(), plain.cluster_id(), "a token changes the id");
        assert_ne!(a.cluster_id(), b.cluster_id(), "two tokens, two ids");
        assert_eq!(
            a.cluster_id(),
            with(Some("staging-7")).expect("a token").cluster_id(),
            "the same token, the same id"
        );
        let (too_long, wide) = ("a".repeat(65), "é".repeat(33));
        for (bad, why) in [
            ("", "give 1 … 64"),
            ("two words", "' '"),
            ("é", "'é'"),
            (too_long.as_str(), "65 characters"),
            (wide.as_str(), "'é'"),
        ] {
            match with(Some(bad)) {
                Err(ConfigError::Invalid { flag: "initial-cluster-token", problem }) => {
                    assert!(problem.contains(why), "{bad:?}: expected {why:?} in {problem:?}")
                }
                other => panic!("{bad:?}: expected --initial-cluster-token refused, got {other:?}"),
            }
        }
        let long = "x".repeat(65);
        assert!(with(Some(&long)).is_err(), "65 characters are too many");
    }

    #[test]
    fn a_peer_address_to_add_is_one_host_and_port_no_wildcard_and_not_too_long() {
        assert_eq!(check_peer_addr("node-4.example:7380"), Ok(()));
        assert!(check_peer_addr("0.0.0.0:7380").is_err_and(|e| e.contains("wildcard")));
        assert!(check_peer_addr("node-4").is_err_and(|e| e.contains("HOST:PORT")));
        let long = format!("{}:7380", "a".repeat(300));
        assert!(check_peer_addr(&long).is_err_and(|e| e.contains("at most 259")));
    }

    #[test]
    fn initial_cluster_parses_and_sorts_members() {
        let peers = parse_members("3=h:3,1=h:1, 2=h:2", "initial-cluster").expect("valid spec");
        assert_eq!(peers.iter().map(|p| p.id).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn initial_cluster_rejects_duplicates_and_garbage_naming_the_problem() {
        let e = parse_members("1=h:1,1=h:2", "initial-cluster").expect_err("duplicate id");
        assert!(e.to_string().contains("listed twice"), "{e}");
        let e = parse_members("x=h:1", "initial-cluster").expect_err("bad id");
        assert!(e.to_string().contains("not a member id"), "{e}");
        for (spec, says) in [
            // A list pasted with spaces, not commas: one odd address, a one-member cluster.
            ("1=127.0.0.1:7380 2=127.0.0.1:7480 3=127.0.0.1:7580", "holds ' '"),
            ("1=h:1:2", "is not a host"),
            ("1=h:0", "is not a port"),
            ("1=h:70000", "is not a port"),
            ("1=h", "no :PORT"),
            ("1=[::1:7380", "is not a host"),
            ("1=[fe80::1%eth0]:7380", "is not a host"),
            ("1=h:1,2=h:1", "share the address h:1"),
        ] {
            let e = parse_members(spec, "initial-cluster").expect_err(spec).to_string();
            assert!(e.contains(says) && e.contains("initial-cluster"), "{spec}: expected {says:?} in {e}");
        }
        let v6 = parse_members("1=[::1]:7380,2=node-2.example:7380,3=[fe80::1%2]:7380", "initial-cluster")
            .expect("IPv6, with a numbered zone too, and host names");
        assert_eq!(v6[0].peer_addr, "[::1]:7380");
    }

    #[test]
    fn peers_name_members_that_run_now_beside_the_first_ones_and_not_the_cluster_id() {
        let args = |peers: &str| ServerArgs {
            id: Some(5),
            data_dir: Some("/tmp/x".into()),
            initial_cluster: Some("1=h:1,2=h:2".into()),
            peer_addr: Some("h:5".into()),
            peers: Some(peers.into()),
            ..Default::default()
        };
        let config = Config::from_args(args("4=h:4, 3=h:3,2=h:2")).expect("valid --peers");
        let ids = |peers: &[Peer]| peers.iter().map(|p| p.id).collect::<Vec<_>>();
        assert_eq!(ids(&config.peers), [2, 3, 4], "sorted by id");
        assert_eq!(ids(&config.contacts()), [1, 2, 3, 4], "the first members, then the others, once each");
        let without = Config::from_args(ServerArgs { peers: None, ..args("") }).expect("valid");
        assert_eq!(config.cluster_id(), without.cluster_id(), "--peers is not folded into the cluster id");

        let line =
            Config::from_args(args("5=h:5,4=h:4")).expect("its own entry, at its address, is left out");
        assert_eq!(ids(&line.peers), [4], "a start line printed for another member names this one");

        let refused = |peers: &str| Config::from_args(args(peers)).expect_err(peers).to_string();
        let named = Config::from_args(args("5=node-5.example:5,4=h:4")).expect("named where it binds an IP");
        assert_eq!(ids(&named.peers), [4], "its own entry is left out, whatever address it names");
        let mine = refused("4=h:5");
        assert!(mine.contains("member 4 listens at h:5, this member's --peer-addr"), "{mine}");
        let first = refused("4=h:1");
        assert!(first.contains("member 1's address in --initial-cluster"), "{first}");
        let moved = refused("2=elsewhere:2");
        assert!(moved.contains("member 2 listens at elsewhere:2") && moved.contains("h:2"), "{moved}");
        let bad = refused("4=h");
        assert!(bad.contains("--peers") && bad.contains("HOST:PORT"), "{bad}");
        let wildcard = refused("4=0.0.0.0:4");
        assert!(wildcard.contains("wildcard"), "{wildcard}");
    }

    #[test]
    fn the_peer_port_listens_at_this_members_initial_cluster_address_unless_given() {
        let spec = "1=127.0.0.1:17380,2=127.0.0.1:17480".to_string();
        let args = |peer_addr: Option<&str>| ServerArgs {
            id: Some(2),
            data_dir: Some("/tmp/x".into()),
            initial_cluster: Some(spec.clone()),
            peer_addr: peer_addr.map(str::to_string),
            ..Default::default()
        };
        assert_eq!(Config::from_args(args(None)).expect("valid").peer_addr, "127.0.0.1:17480");
        assert_eq!(Config::from_args(args(Some("0.0.0.0:17480"))).expect("valid").peer_addr, "0.0.0.0:17480");
    }

    #[test]
    fn the_state_cache_is_a_quarter_gibibyte_unless_given_and_at_least_a_mebibyte() {
        let args =
            |bytes: Option<usize>| ServerArgs { dev: true, state_cache_bytes: bytes, ..Default::default() };
        assert_eq!(Config::from_args(args(None)).expect("valid").state_cache_bytes, 256 * 1024 * 1024);
        assert_eq!(Config::from_args(args(Some(1 << 20))).expect("valid").state_cache_bytes, 1 << 20);
        let e = Config::from_args(args(Some(4096))).expect_err("too small").to_string();
        assert!(e.contains("state-cache-bytes") && e.contains("below 1048576"), "{e}");
    }

    #[test]
    fn a_tick_interval_outside_a_millisecond_to_ten_seconds_is_refused() {
        let args = |tick: Duration| ServerArgs { dev: true, tick_interval: Some(tick), ..Default::default() };
        for tick in [Duration::ZERO, Duration::from_micros(1), Duration::from_secs(11)] {
            let e = Config::from_args(args(tick)).expect_err("out of bounds").to_string();
            assert!(e.contains("tick-interval") && e.contains("outside 1ms … 10s"), "{tick:?}: {e}");
        }
        Config::from_args(args(Duration::from_millis(20))).expect("20ms is a tick");
    }

    #[test]
    fn flags_win_over_the_config_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("latch.toml");
        std::fs::write(
            &path,
            "id = 2\ndata-dir = \"/tmp/x\"\ninitial-cluster = \"1=h:1,2=h:2\"\nsnapshot-entries = 7\n",
        )
        .expect("write config");
        let flags = ServerArgs { config: Some(path), snapshot_entries: Some(9), ..Default::default() };
        let c = Config::from_args(flags).expect("valid config");
        assert_eq!((c.id, c.snapshot_entries), (2, 9));
    }

    #[test]
    fn history_retention_is_a_count_a_duration_or_zero_in_flags_and_file() {
        assert_eq!(Retention::parse("5000"), Ok(Retention::Revisions(5000)));
        assert_eq!(Retention::parse("1h"), Ok(Retention::Duration(Duration::from_secs(3600))));
        assert_eq!(Retention::parse("0"), Ok(Retention::All));
        let bad = Retention::parse("lots").expect_err("neither");
        assert!(bad.contains("neither a number of revisions"), "{bad}");
        // A duration past the flags' bound: its milliseconds wrapped to a retention of 1 ms.
        let huge = Retention::parse("18446744073709551s 617ms").expect_err("past ten years");
        assert!(huge.contains("at most"), "{huge}");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("latch.toml");
        for (text, want) in [
            ("history-retention = 20", Retention::Revisions(20)),
            ("history-retention = \"2m\"", Retention::Duration(Duration::from_secs(120))),
        ] {
            std::fs::write(
                &path,
                format!("id = 1\ndata-dir = \"/tmp/x\"\n{text}\nwatch-progress-interval = \"3s\"\n"),
            )
            .expect("write config");
            let c = Config::from_args(ServerArgs { config: Some(path.clone()), ..Default::default() })
                .expect(text);
            assert_eq!(
                (c.history_retention, c.watch_progress_interval),
                (want, Duration::from_secs(3)),
                "{text}"
            );
        }
        let dev = Config::from_args(ServerArgs { dev: true, ..Default::default() }).expect("--dev");
        assert_eq!(dev.history_retention, Retention::DEFAULT);
        assert_eq!(
            dev.history_retention_bytes,
            crate::core::HISTORY_RETENTION_BYTES,
            "a 1 GiB byte bound by default"
        );
        std::fs::write(&path, "id = 1\ndata-dir = \"/tmp/x\"\nhistory-retention-bytes = 65536\n")
            .expect("write config");
        let c = Config::from_args(ServerArgs { config: Some(path.clone()), ..Default::default() })
            .expect("bytes");
        assert_eq!(c.history_retention_bytes, 65_536, "the byte bound from the file");
        let flags = ServerArgs { config: Some(path), history_retention_bytes: Some(0), ..Default::default() };
        let c = Config::from_args(flags).expect("bytes");
        assert_eq!(c.history_retention_bytes, 0, "the flag wins; 0 sets no byte bound");
    }

    #[test]
    fn fault_injection_is_off_unless_the_flag_or_the_file_turns_it_on() {
        let dev = Config::from_args(ServerArgs { dev: true, ..Default::default() }).expect("--dev");
        assert!(!dev.fault_injection);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("latch.toml");
        std::fs::write(&path, "dev = true\nfault-injection = true\nlog-format = \"json\"\n").expect("write");
        let args = ServerArgs { config: Some(path), ..Default::default() };
        assert_eq!(args.log_format_in_config_file(), Some(LogFormat::Json));
        assert!(Config::from_args(args).expect("valid").fault_injection);
    }

    #[test]
    fn http_addr_defaults_to_7381_and_is_settable_in_the_file() {
        let dev = Config::from_args(ServerArgs { dev: true, ..Default::default() }).expect("--dev");
        assert_eq!(dev.http_addr, DEFAULT_HTTP_ADDR);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("latch.toml");
        std::fs::write(&path, "dev = true\nhttp-addr = \"127.0.0.1:9000\"\n").expect("write config");
        let c = Config::from_args(ServerArgs { config: Some(path), ..Default::default() }).expect("valid");
        assert_eq!(c.http_addr, "127.0.0.1:9000");
    }

    #[test]
    fn bounds_that_could_not_hold_one_request_are_refused_naming_the_flag() {
        let cases: [(ServerArgs, &str); 20] = [
            (ServerArgs { max_key_bytes: Some(0), ..Default::default() }, "--max-key-bytes"),
            (ServerArgs { max_value_bytes: Some(0), ..Default::default() }, "--max-value-bytes"),
            (ServerArgs { max_request_bytes: Some(0), ..Default::default() }, "--max-request-bytes"),
            (ServerArgs { max_txn_ops: Some(0), ..Default::default() }, "--max-txn-ops"),
            (ServerArgs { max_response_bytes: Some(0), ..Default::default() }, "--max-response-bytes"),
            (
                ServerArgs { max_peer_message_bytes: Some(1000), ..Default::default() },
                "--max-peer-message-bytes",
            ),
            (
                ServerArgs { max_peer_queue_bytes: Some(32 * 1024 * 1024), ..Default::default() },
                "--max-peer-queue-bytes",
            ),
            (
                ServerArgs { max_uncommitted_bytes: Some(1000), ..Default::default() },
                "--max-uncommitted-bytes",
            ),
            (ServerArgs { max_pending_bytes: Some(1000), ..Default::default() }, "--max-pending-bytes"),
            (ServerArgs { max_past_reads: Some(0), ..Default::default() }, "--max-past-reads"),
            (ServerArgs { max_watch_streams: Some(0), ..Default::default() }, "--max-watch-streams"),
            (ServerArgs { max_watches: Some(0), ..Default::default() }, "--max-watches"),
            (ServerArgs { max_watch_snapshots: Some(0), ..Default::default() }, "--max-watch-snapshots"),
            (ServerArgs { max_sessions: Some(0), ..Default::default() }, "--max-sessions"),
            (
                ServerArgs { max_concurrent_streams: Some(0), ..Default::default() },
                "--max-concurrent-streams",
            ),
            (ServerArgs { max_lock_waiters: Some(0), ..Default::default() }, "--max-lock-waiters"),
            (ServerArgs { max_locks_per_session: Some(0), ..Default::default() }, "--max-locks-per-session"),
            (
                ServerArgs { watch_snapshot_deadline: Some(Duration::ZERO), ..Default::default() },
                "--watch-snapshot-deadline",
            ),
            (
                ServerArgs { watch_stall_deadline: Some(Duration::ZERO), ..Default::default() },
                "--watch-stall-deadline",
            ),
            (
                ServerArgs { max_watch_queued_bytes: Some(0), ..Default::default() },
                "--max-watch-queued-bytes",
            ),
        ];
        for (flags, flag) in cases {
            let e = Config::from_args(ServerArgs { dev: true, ..flags }).expect_err(flag);
            assert!(e.to_string().starts_with(flag), "the error should name {flag}: {e}");
        }
        let ok =
            Config::from_args(ServerArgs { dev: true, ..Default::default() }).expect("the defaults hold");
        assert_eq!(ok.limits.max_response_bytes, 4 * 1024 * 1024);
        assert_eq!(
            (ok.limits.max_past_reads, ok.limits.max_watch_streams, ok.limits.max_watch_snapshots),
            (4, 20_000, 8)
        );
        assert_eq!(
            (ok.limits.max_concurrent_streams, ok.limits.max_sessions, ok.limits.max_lock_waiters),
            (10_000, 250_000, 1_000)
        );
        assert_eq!(ok.limits.max_locks_per_session, 10_000);
        assert_eq!(ok.peer_limits, PeerLimits::default());
        assert_eq!(
            (ok.limits.max_watch_queued_bytes, ok.limits.watch_stall_deadline),
            (1 << 30, Duration::from_secs(30))
        );
    }

    #[test]
    fn watch_queue_limits_are_read_from_the_config_file_and_flags_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("latch.toml");
        std::fs::write(
            &path,
            "dev = true\nmax-watch-queued-bytes = 5000000\nwatch-stall-deadline = \"7s\"\n",
        )
        .expect("write config");
        let c = Config::from_args(ServerArgs { config: Some(path.clone()), ..Default::default() })
            .expect("valid config");
        assert_eq!(
            (c.limits.max_watch_queued_bytes, c.limits.watch_stall_deadline),
            (5_000_000, Duration::from_secs(7)),
            "both keys of the file are read"
        );
        let flags = ServerArgs {
            config: Some(path),
            watch_stall_deadline: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        let c = Config::from_args(flags).expect("valid config");
        assert_eq!(c.limits.watch_stall_deadline, Duration::from_secs(2), "the flag wins over the file");
    }
}
