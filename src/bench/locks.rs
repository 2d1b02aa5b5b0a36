//! `lock`: each client loops acquire + release of one exclusive lock: a name picked uniformly
//! at random among `--names` names for each pair (`--names 1`: every client contends for one
//! lock), or with `--uncontended` its own name, client i always name i, so that no acquire ever
//! waits for another client. One operation is the pair, timed from just before the acquire is
//! sent to the release's answer, the wait for the lock included; outcome `pair`. Throughput is
//! pairs per second.
//!
//! Each system's own lock, taken as its users take it:
//! - Latch: one session per client (`Client::session`, which keeps it alive in the background);
//!   `Client::acquire(session, name, LockOptions::exclusive())`, which waits as long as the lock
//!   is held, then `Client::release(sequencer)`.
//! - etcd: one lease per client, kept alive over a stream of its own every third of the TTL (as
//!   etcd's clients do); the Lock service (v3lock): `Lock(name, lease)` answers a key once the
//!   lease holds the lock, `Unlock(key)` deletes that key.
//! - ZooKeeper: one session per client, the i-th pinned to the i-th server given (modulo their
//!   number), as in [`super::zk`]; Curator's lock recipe (`InterProcessMutex`): create an
//!   EPHEMERAL_SEQUENTIAL child `lock-` of `/locks/NAME`; the lowest sequence number holds; any
//!   other watches the next-lower child and waits for its deletion, then lists the children
//!   again. Like Curator, the watch is set by `getData` (a child already gone answers NONODE
//!   and leaves no watch behind, where an exists watch would stay set on the path). Release
//!   deletes the client's own child. The parents `/locks/NAME` are created before the clock;
//!   Curator's "protection" prefix of the child's name (to find it again after a connection
//!   loss) is left out.
//!
//! Lock names are `bench-lock-000042` (ZooKeeper: `/locks/bench-lock-000042`; etcd's lock key is
//! the name, `/` and the lease in hex). Latch and etcd clients share `--connections` gRPC
//! clients round-robin; a ZooKeeper session is a connection, so there are `--clients` of them.
//! Every client's session (lease) is created before the clock starts, with `--ttl` (ZooKeeper:
//! the session timeout asked for), and ended after it stops; neither is measured. The clock is
//! the one of [`super::run`]: pairs start until `--ops` were started or `--duration` passed, the
//! ones in flight then finish and count, and throughput is the successful pairs over the wall
//! time to the end of the last one.
//!
//! The report's key space is the names (its key size a name's length, its value size 0); its
//! parameters: `names`, `uncontended`, `ttl_ms`, `sessions_restarted` (see below) and
//! `sessions_not_closed` (sessions that could not be ended after the clock stopped: they expire
//! after their TTL).
//!
//! A pair fails when a call answers an error or the acquire (its wait included) or the release
//! takes longer than `--timeout`; it is counted by kind and not timed. The client may then
//! still hold or await its lock on the server, and a lock left behind would stall every client
//! that picks its name: so it ends its session (etcd: revokes its lease), which releases all it
//! holds and withdraws its waits, and opens a new one, untimed, before its next pair
//! (`sessions_restarted`). Failures to end or open a session count as errors too.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

use super::{Connection, Consistency, Error, OpError, Progress, Report, Settings, Shared, System, Tally};

/// Sessions (leases) opened at once before the clock starts, and ended at once after it stops.
const OPENS_IN_FLIGHT: usize = 64;
/// Pause after a session could not be opened during the run, before the next try.
const REOPEN_PAUSE: Duration = Duration::from_millis(100);
/// The workload's name.
const NAME: &str = "lock";
/// How a lock name starts; the index follows, zero-padded to 6 digits.
pub const NAME_PREFIX: &str = "bench-lock-";
/// The parent of every lock's znode directory (ZooKeeper).
#[cfg_attr(not(feature = "zk"), allow(dead_code))]
const ZK_LOCKS: &str = "/locks";
/// How a lock's sequential children start (ZooKeeper), as Curator names them.
#[cfg_attr(not(feature = "zk"), allow(dead_code))]
const ZK_CHILD: &str = "lock-";

/// Which lock names the clients take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Names {
    /// A random one of this many names for every pair.
    Random(u64),
    /// Client i always takes name i: no two clients share a name.
    PerClient,
}

/// What `lock` is asked.
#[derive(Debug, Clone, Copy)]
pub struct LockBench {
    pub names: Names,
    /// TTL of every client's session (etcd: lease; ZooKeeper: session timeout).
    pub ttl: Duration,
}

impl LockBench {
    /// How many distinct names the run uses with `clients` clients.
    fn name_count(&self, clients: usize) -> u64 {
        match self.names {
            Names::Random(n) => n,
            Names::PerClient => clients as u64,
        }
    }

    /// Checks what the types cannot; the message names the flag at fault.
    pub fn validate(&self) -> Result<(), Error> {
        if self.names == Names::Random(0) {
            return Err(Error::Settings("--names must be at least 1".into()));
        }
        if self.ttl < Duration::from_secs(1) {
            return Err(Error::Settings("--ttl must be at least 1s".into()));
        }
        Ok(())
    }

    fn parameters(&self, clients: usize, counts: &Counts) -> Map<String, Value> {
        Map::from_iter([
            ("names".to_string(), json!(self.name_count(clients))),
            ("uncontended".to_string(), json!(self.names == Names::PerClient)),
            ("ttl_ms".to_string(), json!(self.ttl.as_millis() as u64)),
            ("sessions_restarted".to_string(), json!(counts.restarted.load(Ordering::Relaxed))),
            ("sessions_not_closed".to_string(), json!(counts.not_closed.load(Ordering::Relaxed))),
        ])
    }
}

/// Lock `index`'s name.
pub fn lock_name(index: u64) -> String {
    format!("{NAME_PREFIX}{index:06}")
}

/// Counts the client tasks share, besides the ones of [`Shared`].
#[derive(Default)]
struct Counts {
    restarted: AtomicU64,
    not_closed: AtomicU64,
}

/// Runs the benchmark; see the module doc.
pub async fn run(
    bench: LockBench,
    settings: &Settings,
    progress: Progress,
    interrupt: impl Future<Output = ()> + Send + 'static,
) -> Result<Report, Error> {
    settings.validate()?;
    bench.validate()?;
    let names = bench.name_count(settings.clients);
    let vias = connect(settings).await?;
    let prepare = |error| Error::Prepare { workload: NAME, error };

    progress.sessions(settings.clients as u64);
    let owners: Vec<Owner> = super::open_all(vias.len(), OPENS_IN_FLIGHT, &progress, |i| {
        vias[i].open(bench.ttl, settings.timeout)
    })
    .await
    .map_err(prepare)?;
    #[cfg(feature = "zk")]
    if let Some(Owner::Zk(client)) = owners.first() {
        create_lock_parents(client, names, settings.timeout).await.map_err(prepare)?;
    }

    let counts = Arc::new(Counts::default());
    let (shared, clock) = super::start_clock(settings.stop, &progress, interrupt);

    let seed: u64 = rand::random();
    let tasks: Vec<_> = vias
        .into_iter()
        .zip(owners)
        .enumerate()
        .map(|(i, (via, owner))| {
            let lane = Lane {
                via,
                owner: Some(owner),
                pick: match bench.names {
                    Names::Random(n) => Pick::Random(n, SmallRng::seed_from_u64(seed.wrapping_add(i as u64))),
                    Names::PerClient => Pick::Own(i as u64),
                },
            };
            let (shared, counts) = (shared.clone(), counts.clone());
            tokio::spawn(client_task(lane, bench.ttl, settings.timeout, shared, counts))
        })
        .collect();
    let mut tally = Tally::new();
    let mut panicked = None;
    let mut left = Vec::new();
    for task in tasks {
        match task.await {
            Ok((task_tally, owner)) => {
                tally.merge(task_tally);
                left.extend(owner);
            }
            Err(e) => panicked = Some(e.to_string()),
        }
    }
    let elapsed = clock.stop(&shared);
    // Not measured: every session ends, so that the servers forget it now.
    let not_closed = futures::stream::iter(left)
        .map(|owner| owner.close(settings.timeout))
        .buffer_unordered(OPENS_IN_FLIGHT)
        .filter(|closed| std::future::ready(closed.is_err()))
        .count()
        .await;
    counts.not_closed.fetch_add(not_closed as u64, Ordering::Relaxed);
    progress.finish();
    if let Some(why) = panicked {
        return Err(Error::Task(why));
    }
    let mut reported = settings.clone();
    if settings.target.system == System::Zk {
        // One ZooKeeper session per client.
        reported.connections = settings.clients;
    }
    let parameters = bench.parameters(settings.clients, &counts);
    let mut report = Report::new(NAME, parameters, &reported, tally, elapsed);
    // A lock has a name and no value; the key space is the names.
    report.key_size = lock_name(names.saturating_sub(1)).len();
    report.value_size = 0;
    report.keyspace = names;
    Ok(report)
}

/// How a client picks the name of its next pair.
enum Pick {
    Random(u64, SmallRng),
    Own(u64),
}

impl Pick {
    fn next(&mut self) -> u64 {
        match self {
            Pick::Random(n, rng) => rng.gen_range(0..*n),
            Pick::Own(i) => *i,
        }
    }
}

/// One client: how it reaches the system, and the session its locks belong to (`None` after
/// a failure, until a new one is open).
struct Lane {
    via: Via,
    owner: Option<Owner>,
    pick: Pick,
}

/// One client's pairs until the run ends; hands back its session, to be ended.
async fn client_task(
    mut lane: Lane,
    ttl: Duration,
    timeout: Duration,
    shared: Arc<Shared>,
    counts: Arc<Counts>,
) -> (Tally, Option<Owner>) {
    let mut tally = Tally::new();
    let fail = |tally: &mut Tally, error: OpError| {
        tally.record_error(error);
        shared.failed.fetch_add(1, Ordering::Relaxed);
    };
    while shared.claim() {
        let owner = match &mut lane.owner {
            Some(owner) => owner,
            None => match lane.via.open(ttl, timeout).await {
                Ok(owner) => lane.owner.insert(owner),
                Err(e) => {
                    fail(&mut tally, e);
                    tokio::time::sleep(REOPEN_PAUSE).await;
                    continue;
                }
            },
        };
        let name = lane.pick.next();
        let started = Instant::now();
        match pair(&mut lane.via, owner, name, timeout).await {
            Ok(()) => {
                tally.record(started.elapsed(), "pair");
                shared.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                fail(&mut tally, e);
                // Whatever the session may still hold or await goes with it.
                counts.restarted.fetch_add(1, Ordering::Relaxed);
                if let Some(owner) = lane.owner.take() {
                    if let Err(e) = owner.close(timeout).await {
                        fail(&mut tally, e);
                    }
                }
            }
        }
    }
    (tally, lane.owner)
}

/// One timed pair: acquire lock `name` for `owner`, then release it.
async fn pair(via: &mut Via, owner: &Owner, name: u64, timeout: Duration) -> Result<(), OpError> {
    let lock = lock_name(name);
    match (via, owner) {
        (Via::Latch(client), Owner::Latch(session)) => {
            let options = latch_client::LockOptions::exclusive();
            let sequencer =
                within(timeout, client.acquire(session.id(), &lock, options)).await?.ok_or_else(|| {
                    OpError {
                        kind: "CLIENT",
                        message: format!("{lock}: an acquire that waits forever was refused"),
                    }
                })?;
            within(timeout, client.release(&sequencer.token)).await
        }
        #[cfg(feature = "etcd")]
        (Via::Etcd(client), Owner::Etcd(lease)) => {
            let options = etcd_client::LockOptions::new().with_lease(lease.id);
            let key = within(timeout, client.lock(lock, Some(options))).await?.key().to_vec();
            within(timeout, client.unlock(key)).await.map(drop)
        }
        #[cfg(feature = "zk")]
        (Via::Zk(_), Owner::Zk(client)) => {
            let child = within(timeout, zk_acquire(client, &lock)).await?;
            within(timeout, client.delete(&child, None)).await
        }
        #[allow(unreachable_patterns)]
        _ => Err(OpError { kind: "CLIENT", message: "a session of another system than the client's".into() }),
    }
}

/// `operation`, failed with `DEADLINE_EXCEEDED` if it takes longer than `timeout`.
async fn within<T, E: Into<OpError>>(
    timeout: Duration,
    operation: impl Future<Output = Result<T, E>>,
) -> Result<T, OpError> {
    match tokio::time::timeout(timeout, operation).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(OpError {
            kind: "DEADLINE_EXCEEDED",
            message: format!("no answer within {}", humantime::format_duration(timeout)),
        }),
    }
}

/// How one client reaches the system.
enum Via {
    /// A Latch client, shared with other clients (`--connections`).
    Latch(latch_client::Client),
    /// An etcd client, shared with other clients (`--connections`); boxed, as in
    /// [`Connection`].
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd_client::Client>),
    /// The ZooKeeper server (`host:port`) its sessions are pinned to.
    #[cfg(feature = "zk")]
    Zk(String),
}

/// What one client's locks belong to.
enum Owner {
    /// A Latch session, kept alive by the client library.
    Latch(latch_client::Session),
    /// An etcd lease, kept alive by a task of its own (boxed: it holds an etcd client).
    #[cfg(feature = "etcd")]
    Etcd(Box<EtcdLease>),
    /// A ZooKeeper session (the client library keeps it alive).
    #[cfg(feature = "zk")]
    Zk(zookeeper_client::Client),
}

/// One [`Via`] per client: the Latch and etcd clients of `--connections` connections, each
/// answering one linearizable read first, shared round-robin; ZooKeeper servers round-robin.
async fn connect(settings: &Settings) -> Result<Vec<Via>, Error> {
    let clients = settings.clients;
    if settings.target.system == System::Zk {
        #[cfg(feature = "zk")]
        {
            let endpoints = &settings.target.endpoints;
            return Ok((0..clients).map(|i| Via::Zk(endpoints[i % endpoints.len()].clone())).collect());
        }
        #[cfg(not(feature = "zk"))]
        return Err(Error::ZkNotBuilt);
    }
    let connections =
        super::target::connect(&settings.target, settings.connections, settings.timeout).await?;
    let probe = settings.keys.key(0);
    for connection in &connections {
        if let Err(error) = connection.clone().get(probe.clone(), Consistency::Linearizable).await {
            return Err(Error::Unreachable { target: settings.target.to_string(), error });
        }
    }
    let mut vias = Vec::with_capacity(clients);
    for i in 0..clients {
        vias.push(match &connections[i % connections.len()] {
            Connection::Latch(client) => Via::Latch(client.clone()),
            #[cfg(feature = "etcd")]
            Connection::Etcd(client) => Via::Etcd(client.clone()),
            #[cfg(feature = "zk")]
            Connection::Zk(_) => return Err(Error::Task("a ZooKeeper session for a gRPC target".into())),
        });
    }
    Ok(vias)
}

impl Via {
    /// Opens a session (etcd: grants a lease and starts keeping it alive).
    async fn open(&self, ttl: Duration, timeout: Duration) -> Result<Owner, OpError> {
        match self {
            Via::Latch(client) => {
                let options = latch_client::SessionOptions::new(ttl).name("bench-lock");
                Ok(Owner::Latch(within(timeout, client.session(options)).await?))
            }
            #[cfg(feature = "etcd")]
            Via::Etcd(client) => {
                let mut leases = client.lease_client();
                let granted = within(timeout, leases.grant(ttl.as_secs().max(1) as i64, None)).await?;
                let id = granted.id();
                let keeper = tokio::spawn(keep_lease(leases, id, ttl));
                Ok(Owner::Etcd(Box::new(EtcdLease { id, client: (**client).clone(), keeper })))
            }
            #[cfg(feature = "zk")]
            Via::Zk(endpoint) => {
                let connecting = zookeeper_client::Client::connector()
                    .with_fail_eagerly()
                    .with_session_timeout(ttl)
                    .connect(endpoint);
                Ok(Owner::Zk(within(timeout, connecting).await?))
            }
        }
    }
}

impl Owner {
    /// Ends the session (etcd: revokes the lease), releasing every lock it holds. Waits at most
    /// `timeout`; a session not ended expires after its TTL.
    async fn close(self, timeout: Duration) -> Result<(), OpError> {
        match self {
            Owner::Latch(session) => within(timeout, session.close()).await.map(drop),
            #[cfg(feature = "etcd")]
            Owner::Etcd(lease) => {
                lease.keeper.abort();
                let mut leases = lease.client.lease_client();
                within(timeout, leases.revoke(lease.id)).await.map(drop)
            }
            #[cfg(feature = "zk")]
            Owner::Zk(client) => {
                let mut state = client.state_watcher();
                drop(client);
                let closing = async {
                    while !state.changed().await.is_terminated() {}
                    Ok::<(), OpError>(())
                };
                within(timeout, closing).await
            }
        }
    }
}

/// An etcd lease and the task keeping it alive.
#[cfg(feature = "etcd")]
struct EtcdLease {
    id: i64,
    client: etcd_client::Client,
    keeper: tokio::task::JoinHandle<()>,
}

/// Keeps lease `id` alive every third of `ttl` over a stream of its own, opening it again when
/// it breaks; returns when etcd says the lease is gone (the client's next Lock then fails, and
/// the client starts over with a new lease).
#[cfg(feature = "etcd")]
async fn keep_lease(mut leases: etcd_client::LeaseClient, id: i64, ttl: Duration) {
    loop {
        match leases.keep_alive(id).await {
            Ok((mut keeper, mut answers)) => loop {
                tokio::time::sleep(ttl / 3).await;
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match answers.message().await {
                    Ok(Some(answer)) if answer.ttl() > 0 => {}
                    Ok(Some(_)) => return,
                    Ok(None) | Err(_) => break,
                }
            },
            // Said when etcd answers the first keepalive with no TTL left.
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => return,
            Err(_) => {}
        }
        tokio::time::sleep(REOPEN_PAUSE).await;
    }
}

/// Creates `/locks` and the directory of every lock name, `/locks/bench-lock-…`, where they do
/// not exist; all sent before the first answer is awaited.
#[cfg(feature = "zk")]
async fn create_lock_parents(
    client: &zookeeper_client::Client,
    names: u64,
    timeout: Duration,
) -> Result<(), OpError> {
    let mut paths = vec![ZK_LOCKS.to_string()];
    paths.extend((0..names).map(|i| format!("{ZK_LOCKS}/{}", lock_name(i))));
    super::zk::create_missing(client, &paths, &[], timeout).await
}

/// Curator's acquire (see the module doc): returns the path of the client's child once it is
/// the lowest of `/locks/NAME`.
#[cfg(feature = "zk")]
async fn zk_acquire(client: &zookeeper_client::Client, lock: &str) -> Result<String, OpError> {
    use zookeeper_client::{Acls, CreateMode, Error as ZkError};
    let dir = format!("{ZK_LOCKS}/{lock}");
    let prefix = format!("{dir}/{ZK_CHILD}");
    let ephemeral = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    let (_, sequence) = client.create(&prefix, &[], &ephemeral).await?;
    let mine = sequence.into_i64();
    loop {
        let children = client.list_children(&dir).await?;
        let lower = match next_lower(&children, mine) {
            Some(None) => return Ok(format!("{prefix}{sequence}")),
            Some(Some(lower)) => format!("{dir}/{lower}"),
            None => {
                return Err(OpError {
                    kind: "NONODE",
                    message: format!("{prefix}{sequence} is gone before it held the lock"),
                })
            }
        };
        match client.get_and_watch_data(&lower).await {
            Ok((_, _, watcher)) => {
                watcher.changed().await;
            }
            Err(ZkError::NoNode) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Among a lock's children (`lock-` and a sequence number; others are ignored), the one just
/// below sequence `mine`: `Some(None)` when `mine` is the lowest, `None` when `mine` is not
/// among them.
#[cfg_attr(not(feature = "zk"), allow(dead_code))]
fn next_lower(children: &[String], mine: i64) -> Option<Option<&str>> {
    let sequence = |child: &str| child.strip_prefix(ZK_CHILD)?.parse::<i64>().ok();
    let mut found = false;
    let mut lower: Option<(i64, &str)> = None;
    for child in children {
        match sequence(child) {
            Some(s) if s == mine => found = true,
            Some(s) if s < mine && lower.is_none_or(|(l, _)| s > l) => lower = Some((s, child)),
            _ => {}
        }
    }
    found.then_some(lower.map(|(_, child)| child))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_zero_padded_and_distinct() {
        assert_eq!(lock_name(42), "bench-lock-000042");
        assert_eq!(lock_name(0).len(), lock_name(999_999).len());
        assert_eq!(lock_name(1_000_000), "bench-lock-1000000");
    }

    #[test]
    fn uncontended_runs_give_every_client_its_own_name() {
        let bench = LockBench { names: Names::PerClient, ttl: Duration::from_secs(10) };
        assert_eq!(bench.name_count(256), 256);
        let mut picks: Vec<u64> = (0..4).map(|i| Pick::Own(i).next()).collect();
        picks.dedup();
        assert_eq!(picks, vec![0, 1, 2, 3]);
    }

    #[test]
    fn random_picks_stay_within_the_names() {
        let mut pick = Pick::Random(3, SmallRng::seed_from_u64(7));
        let picks: Vec<u64> = (0..300).map(|_| pick.next()).collect();
        assert!(picks.iter().all(|&n| n < 3));
        for n in 0..3 {
            assert!(picks.contains(&n), "name {n} never picked");
        }
        assert!((0..100).all(|_| Pick::Random(1, SmallRng::seed_from_u64(1)).next() == 0));
    }

    #[test]
    fn no_names_and_short_ttls_are_refused_naming_the_flag() {
        let ttl = Duration::from_secs(10);
        let e = LockBench { names: Names::Random(0), ttl }.validate().expect_err("no names");
        assert!(e.to_string().contains("--names") && e.is_usage(), "{e}");
        let e = LockBench { names: Names::Random(1), ttl: Duration::from_millis(500) }
            .validate()
            .expect_err("ttl");
        assert!(e.to_string().contains("--ttl"), "{e}");
        assert!(LockBench { names: Names::PerClient, ttl }.validate().is_ok());
    }

    #[test]
    fn the_child_to_watch_is_the_one_just_below() {
        let children: Vec<String> =
            ["lock-0000000007", "lock-0000000003", "lock-0000000005", "other", "lock-x"]
                .map(String::from)
                .into();
        assert_eq!(next_lower(&children, 3), Some(None), "the lowest holds");
        assert_eq!(next_lower(&children, 5), Some(Some("lock-0000000003")));
        assert_eq!(next_lower(&children, 7), Some(Some("lock-0000000005")));
        assert_eq!(next_lower(&children, 4), None, "not among the children");
    }
}
