//! `latch bench`: the built-in load generator. `--clients` tasks share `--connections`
//! clients of a Latch cluster, an etcd cluster or a ZooKeeper ensemble and run one workload
//! until `--ops` operations were started or `--duration` has passed; the result is a
//! [`Report`]: throughput, latency percentiles, and outcomes and errors counted by kind.
//!
//! What is here:
//! - [`Workload`]: what one operation is, and what to set up before the clock starts. One file
//!   per workload: [`put`], [`get`], [`txn_cas`], [`mixed`]. A new domain (locks, sessions,
//!   watches, DNS) adds its workload as one more file here and one subcommand in
//!   `cli/bench.rs`.
//! - Workloads with state of their own per client run a loop of their own into the same
//!   [`Report`] and [`Progress`]: [`sessions`] (sessions kept alive), [`locks`] (acquire +
//!   release of a lock, each client with its own session; it shares [`run`]'s stop rule),
//!   [`watches`] (one writer's puts, timed from each put's answer to each watcher's event),
//!   [`dns`] (UDP lookups of one name against a DNS port, Latch's or any server's) and
//!   [`registry`] (a large service registered, then `List` of it).
//! - [`target`]: the systems under test behind one [`Connection`] type: Latch through
//!   `latch-client`, etcd through `etcd-client` (cargo feature `etcd`), ZooKeeper through
//!   `zookeeper-client` (cargo feature `zk`), so all three meet the same load generator.
//! - [`zk`]: how the keys and operations map onto ZooKeeper's znodes, and its sessions.
//! - [`keys`]: the key space (fixed-size keys `bench/00…0042`) and loading it before reads.
//! - [`report`]: what a run measured, and how it prints (text, JSON).
//! - [`progress`]: the progress bar, drawn on stderr when it is a terminal.
//!
//! May import: `latch-client`, `etcd-client` and `zookeeper-client` (and, for [`dns`] and
//! [`registry`], hickory's DNS message codec and latch-proto's public gRPC client); never the
//! server's layers: a benchmark sees the cluster exactly as any client does.
//!
//! Measuring: an operation is timed from just before its first request to its answer, into an
//! HDR histogram (microseconds, 3 significant digits, up to 60 s). Failed operations are
//! counted by kind, not timed. There is no warm-up phase, but every connection answers one
//! linearizable read before the clock starts, so connection setup is not measured, and a
//! target that does not serve fails the run at once. Nor is the end measured: ZooKeeper
//! sessions are closed after the clock stops. Throughput is the successful operations
//! divided by the wall time from the start to the end of the last operation; with `--duration`
//! the operations still in flight at the deadline finish and count.

pub mod dns;
pub mod get;
pub mod keys;
pub mod locks;
pub mod mixed;
pub mod progress;
pub mod put;
pub mod registry;
pub mod report;
pub mod sessions;
pub mod target;
pub mod txn_cas;
pub mod watches;
pub mod zk;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use rand::rngs::SmallRng;
use rand::SeedableRng;

pub use keys::KeySpace;
pub use progress::Progress;
pub use report::{Report, Tally};
pub use target::{Connection, Consistency, OpError, System, TargetSpec};

/// What came of one successful operation, counted in the report per name: `"put"`,
/// `"found"` / `"missing"`, `"committed"` / `"conflict"`, …
pub type Outcome = &'static str;

/// One kind of load. Implementations are small: [`op`](Workload::op) does one operation
/// through the [`Connection`] it is given; the runner times it, counts it and decides when to
/// stop.
pub trait Workload: Send + Sync + 'static {
    /// The name `latch bench` knows it by, e.g. `"txn-cas"`.
    fn name(&self) -> &'static str;

    /// The workload's own settings, shown in the report (e.g. `{"consistency": "linearizable"}`).
    fn parameters(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }

    /// Runs once before the clock starts, e.g. to write the keys a read workload reads.
    fn prepare(&self, setup: &Setup<'_>) -> impl Future<Output = Result<(), OpError>> + Send {
        let _ = setup;
        async { Ok(()) }
    }

    /// One timed operation. An `Err` is a failed operation, counted by its kind; an answer
    /// that is part of the workload's normal life (a compare that did not hold, a missing key)
    /// is an `Ok` outcome.
    fn op(
        &self,
        connection: &mut Connection,
        context: &mut OpContext,
    ) -> impl Future<Output = Result<Outcome, OpError>> + Send;
}

/// What [`Workload::prepare`] works with.
pub struct Setup<'a> {
    /// Every connection of the run, to spread the setup load over.
    pub connections: &'a [Connection],
    /// The keys of the run.
    pub keys: &'a KeySpace,
    /// The value of every write (`--value-size` bytes).
    pub value: &'a [u8],
    /// To show what the setup is doing.
    pub progress: &'a Progress,
}

/// The state of one client task, handed to each of its operations.
pub struct OpContext {
    /// Seeded per task, so tasks do not share a generator.
    pub rng: SmallRng,
    /// The keys of the run.
    pub keys: KeySpace,
    /// The value of every write.
    value: Arc<[u8]>,
}

impl OpContext {
    /// A key of the key space, uniformly at random.
    pub fn random_key(&mut self) -> Vec<u8> {
        self.keys.random_key(&mut self.rng)
    }

    /// The value to write (`--value-size` bytes).
    pub fn value(&self) -> Vec<u8> {
        self.value.to_vec()
    }
}

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this many operations, across all clients (failed ones included, so a run against
    /// a failing target ends too).
    Ops(u64),
    /// When this much time has passed; operations in flight then still finish.
    Duration(Duration),
}

/// Everything a run needs besides its workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The cluster under load.
    pub target: TargetSpec,
    /// Concurrent client tasks, each with one operation in flight at a time.
    pub clients: usize,
    /// Underlying clients (each with its own connections), shared round-robin by the tasks.
    pub connections: usize,
    /// When the run ends.
    pub stop: Stop,
    /// The keys operated on.
    pub keys: KeySpace,
    /// Bytes of every written value.
    pub value_size: usize,
    /// How long one operation may take, the client's retries included, before it fails.
    pub timeout: Duration,
}

impl Settings {
    /// Checks what the types cannot; the message names the flag at fault.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |why: String| Err(Error::Settings(why));
        if self.clients == 0 {
            return bad("--clients must be at least 1".into());
        }
        if self.connections == 0 || self.connections > self.clients {
            return bad(format!(
                "--connections must be between 1 and --clients ({}), got {}",
                self.clients, self.connections
            ));
        }
        match self.stop {
            Stop::Ops(0) => return bad("--ops must be at least 1".into()),
            Stop::Duration(d) if d.is_zero() => return bad("--duration must be more than 0".into()),
            _ => {}
        }
        if self.timeout.is_zero() {
            return bad("--timeout must be more than 0".into());
        }
        Ok(())
    }
}

/// Why a run could not be made. Failed operations are not errors of the run: they are counted
/// in its [`Report`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The settings are out of range or contradict each other; the message names the flag.
    #[error("{0}")]
    Settings(String),
    /// `--target` is not `latch://H:P,…`, `etcd://H:P,…` or `zk://H:P,…`, or an endpoint is not
    /// `host:port`.
    #[error("--target: {0}")]
    Target(String),
    /// `etcd://` asked of a binary built without the `etcd` feature.
    #[error(
        "this latch was built without the `etcd` feature; rebuild with `cargo build --release \
         --features etcd` (needs protoc: apt-get install protobuf-compiler)"
    )]
    EtcdNotBuilt,
    /// `zk://` asked of a binary built without the `zk` feature.
    #[error(
        "this latch was built without the `zk` feature; rebuild with `cargo build --release --features zk`"
    )]
    ZkNotBuilt,
    /// A connection failed its first read, before anything was measured.
    #[error("{target} does not serve: {error}")]
    Unreachable {
        /// The `--target` given.
        target: String,
        /// How the first read failed.
        error: OpError,
    },
    /// The key space's znodes could not be created (ZooKeeper).
    #[error("creating the key space's znodes failed: {0}")]
    CreateKeySpace(OpError),
    /// The workload's setup failed (e.g. loading the key space).
    #[error("preparing the {workload} workload failed: {error}")]
    Prepare {
        /// The workload's name.
        workload: &'static str,
        /// The failed operation.
        error: OpError,
    },
    /// A client task panicked: a bug of the load generator.
    #[error("a client task failed: {0}")]
    Task(String),
}

impl Error {
    /// Whether the command line was at fault (exit code 2) rather than the target (1).
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Settings(_) | Error::Target(_) | Error::EtcdNotBuilt | Error::ZkNotBuilt)
    }
}

/// Runs `workload` as `settings` say and reports what was measured. `progress` draws a bar on
/// stderr; when `interrupt` completes during the timed phase (e.g. Ctrl-C), no new operation
/// starts and the run reports what it did so far.
pub async fn run<W: Workload>(
    workload: W,
    settings: &Settings,
    progress: Progress,
    interrupt: impl Future<Output = ()> + Send + 'static,
) -> Result<Report, Error> {
    settings.validate()?;
    let connections = target::connect(&settings.target, settings.connections, settings.timeout).await?;
    let value: Arc<[u8]> = vec![b'v'; settings.value_size].into();

    let probe = settings.keys.key(0);
    for connection in &connections {
        if let Err(error) = connection.clone().get(probe.clone(), Consistency::Linearizable).await {
            return Err(Error::Unreachable { target: settings.target.to_string(), error });
        }
    }
    target::create_key_space(&connections, &settings.keys, &value, &progress)
        .await
        .map_err(Error::CreateKeySpace)?;
    let setup = Setup { connections: &connections, keys: &settings.keys, value: &value, progress: &progress };
    workload.prepare(&setup).await.map_err(|error| Error::Prepare { workload: workload.name(), error })?;

    let workload = Arc::new(workload);
    let (shared, clock) = start_clock(settings.stop, &progress, interrupt);

    let seed: u64 = rand::random();
    let tasks: Vec<_> = (0..settings.clients)
        .map(|i| {
            let context = OpContext {
                rng: SmallRng::seed_from_u64(seed.wrapping_add(i as u64)),
                keys: settings.keys,
                value: value.clone(),
            };
            let connection = connections[i % connections.len()].clone();
            tokio::spawn(client_task(workload.clone(), connection, context, shared.clone()))
        })
        .collect();
    let mut tally = Tally::new();
    let mut panicked = None;
    for task in tasks {
        match task.await {
            Ok(task_tally) => tally.merge(task_tally),
            Err(e) => panicked = Some(e.to_string()),
        }
    }
    let elapsed = clock.stop(&shared);
    target::close(connections, settings.timeout).await;
    progress.finish();
    if let Some(why) = panicked {
        return Err(Error::Task(why));
    }
    Ok(Report::new(workload.name(), workload.parameters(), settings, tally, elapsed))
}

/// Starts the timed phase: the counts the client tasks share, the task that stops new
/// operations once `interrupt` completes, and the one that updates the progress bar.
fn start_clock(
    stop: Stop,
    progress: &Progress,
    interrupt: impl Future<Output = ()> + Send + 'static,
) -> (Arc<Shared>, Clock) {
    let shared = Arc::new(Shared {
        stop,
        started: Instant::now(),
        claimed: AtomicU64::new(0),
        interrupted: AtomicBool::new(false),
        succeeded: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let interrupter = tokio::spawn({
        let shared = shared.clone();
        async move {
            interrupt.await;
            shared.interrupted.store(true, Ordering::Relaxed);
        }
    });
    progress.timing(stop);
    let ticker = tokio::spawn({
        let (shared, progress) = (shared.clone(), progress.clone());
        async move {
            loop {
                tokio::time::sleep(progress::REFRESH).await;
                let (ok, failed) = (shared.succeeded(), shared.failed());
                progress.update(shared.stop, ok, failed, shared.started.elapsed());
            }
        }
    });
    (shared, Clock { interrupter, ticker })
}

/// The timed phase's background tasks (see [`start_clock`]).
struct Clock {
    interrupter: tokio::task::JoinHandle<()>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Clock {
    /// Ends the timed phase; returns how long it lasted.
    fn stop(self, shared: &Shared) -> std::time::Duration {
        let elapsed = shared.started.elapsed();
        self.ticker.abort();
        self.interrupter.abort();
        elapsed
    }
}

/// What the client tasks share: the budget of operations, and counts for the progress bar.
struct Shared {
    stop: Stop,
    started: Instant,
    /// Operations started so far, for [`Stop::Ops`].
    claimed: AtomicU64,
    interrupted: AtomicBool,
    succeeded: AtomicU64,
    failed: AtomicU64,
}

impl Shared {
    /// Whether one more operation may start; if so it is counted as started.
    fn claim(&self) -> bool {
        if self.interrupted.load(Ordering::Relaxed) {
            return false;
        }
        match self.stop {
            Stop::Ops(total) => self.claimed.fetch_add(1, Ordering::Relaxed) < total,
            Stop::Duration(duration) => self.started.elapsed() < duration,
        }
    }

    fn succeeded(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed)
    }

    fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// One client: one operation at a time until the budget is spent.
async fn client_task<W: Workload>(
    workload: Arc<W>,
    mut connection: Connection,
    mut context: OpContext,
    shared: Arc<Shared>,
) -> Tally {
    let mut tally = Tally::new();
    while shared.claim() {
        let started = Instant::now();
        match workload.op(&mut connection, &mut context).await {
            Ok(outcome) => {
                tally.record(started.elapsed(), outcome);
                shared.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tally.record_error(error);
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    tally
}

/// Opens `n` things before the clock starts (sessions, watches), at most `in_flight` at once,
/// each counted on `progress` as it opens; in index order. The first failure fails them all,
/// at once.
pub(crate) async fn open_all<T, Fut>(
    n: usize,
    in_flight: usize,
    progress: &Progress,
    open: impl FnMut(usize) -> Fut,
) -> Result<Vec<T>, OpError>
where
    Fut: Future<Output = Result<T, OpError>>,
{
    let mut open = open;
    futures::stream::iter(0..n)
        .map(|i| Ok::<_, OpError>(open(i)))
        .try_buffered(in_flight)
        .inspect_ok(|_| progress.loaded(1))
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            target: TargetSpec::parse("latch://127.0.0.1:7379").expect("valid target"),
            clients: 4,
            connections: 2,
            stop: Stop::Ops(100),
            keys: KeySpace::new(1000, 32).expect("valid key space"),
            value_size: 256,
            timeout: Duration::from_secs(5),
        }
    }

    fn rejection(settings: Settings) -> String {
        match settings.validate() {
            Err(e @ Error::Settings(_)) => e.to_string(),
            other => panic!("expected the settings to be rejected, got {other:?}"),
        }
    }

    #[test]
    fn valid_settings_pass() {
        assert!(settings().validate().is_ok());
        let one = Settings { clients: 1, connections: 1, ..settings() };
        assert!(one.validate().is_ok());
    }

    #[test]
    fn connections_must_be_between_one_and_the_clients() {
        let too_many = rejection(Settings { connections: 5, ..settings() });
        assert!(too_many.contains("--connections") && too_many.contains("got 5"), "{too_many}");
        assert!(rejection(Settings { connections: 0, ..settings() }).contains("--connections"));
        assert!(rejection(Settings { clients: 0, connections: 0, ..settings() }).contains("--clients"));
    }

    #[test]
    fn a_run_must_have_some_ops_or_some_time_and_a_timeout() {
        assert!(rejection(Settings { stop: Stop::Ops(0), ..settings() }).contains("--ops"));
        let no_time = Settings { stop: Stop::Duration(Duration::ZERO), ..settings() };
        assert!(rejection(no_time).contains("--duration"));
        assert!(rejection(Settings { timeout: Duration::ZERO, ..settings() }).contains("--timeout"));
    }

    #[test]
    fn an_ops_budget_admits_exactly_that_many_operations() {
        let shared = Shared {
            stop: Stop::Ops(3),
            started: Instant::now(),
            claimed: AtomicU64::new(0),
            interrupted: AtomicBool::new(false),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        };
        let admitted = (0..10).filter(|_| shared.claim()).count();
        assert_eq!(admitted, 3);
    }

    #[test]
    fn an_interrupted_run_admits_no_more_operations() {
        let shared = Shared {
            stop: Stop::Duration(Duration::from_secs(3600)),
            started: Instant::now(),
            claimed: AtomicU64::new(0),
            interrupted: AtomicBool::new(false),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        };
        assert!(shared.claim());
        shared.interrupted.store(true, Ordering::Relaxed);
        assert!(!shared.claim());
    }

    #[test]
    fn usage_errors_are_told_apart_from_failures_of_the_target() {
        assert!(Error::Settings("x".into()).is_usage());
        assert!(Error::EtcdNotBuilt.is_usage());
        assert!(Error::ZkNotBuilt.is_usage());
        let unreachable = Error::Unreachable {
            target: "latch://h:1".into(),
            error: OpError { kind: "UNAVAILABLE", message: "down".into() },
        };
        assert!(!unreachable.is_usage());
        assert_eq!(unreachable.to_string(), "latch://h:1 does not serve: UNAVAILABLE: down");
    }
}
