//! `watch-latency`: how long a change takes to reach the watches on it. One writer puts keys
//! `bench/watch/0`, `bench/watch/1`, … one at a time (each put waits for its answer), while
//! `--watchers` watches on the prefix `bench/watch/` receive every change.
//!
//! What is measured, per event a watcher receives: its latency, from the instant the put's
//! answer reached the writer to the instant the event reached the watcher, matched by revision
//! (the put answer's header revision, the event's revision). An event that arrives before its
//! put's answer (a watcher on the member that answered the put may well be told first) counts
//! as 0: the latency is clamped at 0, and such events are counted (`events_before_put_return`).
//! The writer and the watchers share the load generator's threads (one by default): an answer
//! that arrives while the thread hands events to watchers is stamped when the writer runs
//! again, later, which shortens the latencies measured from it.
//! Latencies go into the report's HDR histogram (microseconds); the report's `ops` are the
//! events received and timed, its throughput the events delivered per second: all events
//! received by all watchers over the wall time from the first put to the last event received.
//!
//! Each system's own watch, taken as its users take it. By default one watch per watcher on a
//! stream of its own:
//! - Latch: `Client::watch(WatchOptions::prefix("bench/watch/"))`, a stream of
//!   `WatchUpdate::Events { revision, events }` (the client resumes it by itself, on another
//!   member if needed, without a gap).
//! - etcd: `Client::watch("bench/watch/", WatchOptions::new().with_prefix())`, one Watch stream
//!   per watcher; an event's revision is its kv's mod revision (etcd may pack several
//!   revisions into one response).
//!
//! With `--watches-per-stream K`, the watchers share streams, K to a stream (as etcd's own
//! `benchmark watch-latency` does with `--streams` and `--watchers-per-stream`, and etcd's Go
//! client with watches of one context):
//! - Latch: a `Client::watch_group()` with K watches of the prefix: the member sends each
//!   revision once per stream, naming every watch it is for (`shared_responses`), and the
//!   client hands it to each.
//! - etcd: K creates on one Watch stream (etcd-client's `Watcher::watch`): etcd sends each
//!   watch its own response.
//!
//! The streams are spread round-robin over `--connections` clients (gRPC channels, so HTTP/2
//! connections; the i-th with the endpoints rotated by i, so the watchers spread over the
//! members); the writer has a client of its own, with the endpoints in the order given, or
//! with `--writer-member N` the N-th endpoint only (which member leads, and whether the writer
//! talks to it, decides much of what followers' watchers see; docs/benchmarks.md). One
//! task reads each stream. Every watch is open and confirmed before the clock starts (Latch:
//! `WatchUpdate::Started`; etcd: the created response), so setting them up is not measured;
//! `--clients` does not apply.
//!
//! The clock is the one of [`super::run`]: puts start until `--ops` were started or `--duration`
//! passed. Then the run waits, at most [`DRAIN_LIMIT`], for every watcher to receive the
//! revision of the last put answered (`drain_ms`: how long that took), and stops the watches.
//! A failed put (an error, or no answer within `--timeout`) is counted by kind and not timed;
//! a watch that ends (etcd: canceled; either: its stream fails for good) is counted by kind
//! too, and its watcher receives no more.
//!
//! The report's parameters: `watchers`; `watches_per_stream`; `writer_member` (null: every
//! endpoint); `puts` (answered); `put_p50_ms`, `put_p99_ms` (the
//! writer's own put latency); `missed_events` (revisions of answered puts some watcher did not
//! receive, summed over the watchers — must be 0) and `watchers_missing_events`;
//! `duplicate_events` (a revision a watcher received twice — must be 0);
//! `events_before_put_return`; `unanswered_events` (events of puts whose answer the writer never
//! got, e.g. a timeout after the write committed: received, not timed); `watches_ended`;
//! `drain_ms`. The key space is the keys written (its key size the last key's length).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use latch_client::{RangeRequest, WatchUpdate};
use serde_json::{json, Map};
use tokio::sync::watch;

use crate::api::watch::MAX_WATCHES_PER_STREAM;

use super::{
    Connection, Consistency, Error, OpError, Progress, Report, Settings, Shared, System, Tally, TargetSpec,
};

/// The workload's name.
const NAME: &str = "watch-latency";
/// The prefix every key written starts with, and every watch watches.
pub const PREFIX: &str = "bench/watch/";
/// Watches opened at once before the clock starts.
const OPENS_IN_FLIGHT: usize = 256;
/// Most time the watchers get, after the last put was answered, to receive it.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// How often the drain checks whether every watcher has the last revision.
const DRAIN_POLL: Duration = Duration::from_millis(5);
/// Most revisions one run can make (far more than a run of one writer puts).
const MAX_REVISIONS: usize = 1 << 26;
/// The outcome every timed event counts as.
const EVENT: &str = "event";

/// What `watch-latency` is asked.
#[derive(Debug, Clone, Copy)]
pub struct WatchLatency {
    /// Watches on the prefix, each a watcher of its own.
    pub watchers: usize,
    /// Watches on one stream (the last stream may have fewer).
    pub per_stream: usize,
    /// The writer's one endpoint, 1-based among the target's; `None`: all of them, in order.
    pub writer_member: Option<usize>,
}

impl WatchLatency {
    /// What the writer connects to: the target, or its `writer_member`-th endpoint alone.
    fn writer_target(&self, target: &TargetSpec) -> TargetSpec {
        match self.writer_member.and_then(|n| target.endpoints.get(n.checked_sub(1)?)) {
            Some(endpoint) => TargetSpec { system: target.system, endpoints: vec![endpoint.clone()] },
            None => target.clone(),
        }
    }

    /// Streams the watchers take.
    pub fn streams(&self) -> usize {
        self.watchers.div_ceil(self.per_stream.max(1))
    }

    /// Checks what the types cannot; the message names the flag at fault.
    pub fn validate(&self, settings: &Settings) -> Result<(), Error> {
        if self.watchers == 0 {
            return Err(Error::Settings("--watchers must be at least 1".into()));
        }
        if self.per_stream == 0 || self.per_stream > MAX_WATCHES_PER_STREAM.min(self.watchers) {
            return Err(Error::Settings(format!(
                "--watches-per-stream must be between 1 and the smaller of --watchers ({}) and {MAX_WATCHES_PER_STREAM} \
                 (the most a Latch member takes on one stream), got {}",
                self.watchers, self.per_stream
            )));
        }
        if settings.connections == 0 || settings.connections > self.streams() {
            return Err(Error::Settings(format!(
                "--connections must be between 1 and the streams ({}: --watchers / --watches-per-stream), got {}",
                self.streams(),
                settings.connections
            )));
        }
        if let Some(n) = self.writer_member {
            let members = settings.target.endpoints.len();
            if n == 0 || n > members {
                return Err(Error::Settings(format!(
                    "--writer-member must be between 1 and the members --target names ({members}), got {n}"
                )));
            }
        }
        if settings.target.system == System::Zk {
            return Err(Error::Settings("watch-latency runs against latch:// or etcd:// targets".into()));
        }
        Ok(())
    }
}

/// What the watchers and the writer share.
struct Board {
    /// When each answered put's answer reached the writer, by its revision. The instant is
    /// taken with the lock held, so a watcher that finds no entry for its event's revision
    /// received it before the answer (see [`Seen::early`]).
    answered: RwLock<HashMap<i64, Instant>>,
    /// The revision before the first put: every revision the run writes is above it.
    base: i64,
    /// The newest revision each watcher received; `i64::MAX` once its watch ended.
    newest: Vec<AtomicI64>,
    /// Latencies of the events whose put was answered before they arrived, in shards (one per
    /// connection) so that watchers on several threads seldom wait for one another.
    shards: Vec<Mutex<Tally>>,
}

impl Board {
    fn shard(&self, watcher: usize) -> std::sync::MutexGuard<'_, Tally> {
        // A shard's tally is valid after any panic: counts are only ever added.
        self.shards[watcher % self.shards.len()].lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What one watcher received, for the count of missed events after the run.
#[derive(Default)]
struct Seen {
    /// Revisions received, bit `r - base - 1` for revision `r`.
    received: Bits,
    /// Revisions received before their put's answer reached the writer (not timed yet: 0 if the
    /// put was answered, else not timed at all).
    early: Bits,
    duplicates: u64,
    /// When the last event arrived.
    last_arrival: Option<Instant>,
    /// Why its watch ended, if it did.
    ended: Option<OpError>,
}

/// A growable set of small non-negative integers.
#[derive(Default, Clone)]
struct Bits(Vec<u64>);

impl Bits {
    /// Adds `i`; whether it was new.
    fn insert(&mut self, i: usize) -> bool {
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        let new = self.0[word] & bit == 0;
        self.0[word] |= bit;
        new
    }

    fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    /// How many of `self` are not in `other`.
    fn count_missing_from(&self, other: &Bits) -> u64 {
        self.0
            .iter()
            .enumerate()
            .map(|(i, w)| u64::from((w & !other.0.get(i).copied().unwrap_or(0)).count_ones()))
            .sum()
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0
            .iter()
            .enumerate()
            .flat_map(|(i, &w)| (0..64).filter(move |b| w & (1u64 << b) != 0).map(move |b| i * 64 + b))
    }
}

/// Runs the benchmark; see the module doc.
pub async fn run(
    bench: WatchLatency,
    settings: &Settings,
    progress: Progress,
    interrupt: impl Future<Output = ()> + Send + 'static,
) -> Result<Report, Error> {
    let settings = Settings { clients: bench.watchers, ..settings.clone() };
    bench.validate(&settings)?;
    settings.validate()?;
    let connections =
        super::target::connect(&settings.target, settings.connections, settings.timeout).await?;
    // A pinned writer's puts stay on its member: they are what the run is about.
    let to_leader = bench.writer_member.is_none();
    let mut writer =
        super::target::connect_routed(&bench.writer_target(&settings.target), 1, settings.timeout, to_leader)
            .await?
            .pop()
            .ok_or_else(|| Error::Task("no connection for the writer".into()))?;
    let unreachable = |error| Error::Unreachable { target: settings.target.to_string(), error };
    for connection in connections.iter().chain([&writer]) {
        connection.clone().get(PREFIX.into(), Consistency::Linearizable).await.map_err(unreachable)?;
    }
    let prepare = |error| Error::Prepare { workload: NAME, error };

    let (streams, per_stream) = (bench.streams(), bench.per_stream);
    progress.watches(streams as u64);
    let timeout = settings.timeout;
    // Stream `s` carries watchers `s * per_stream` … (fewer on the last).
    let feeds: Vec<Feed> = super::open_all(streams, OPENS_IN_FLIGHT, &progress, |s| {
        let watches = per_stream.min(bench.watchers - s * per_stream);
        Feed::open(connections[s % connections.len()].clone(), timeout, watches, per_stream > 1)
    })
    .await
    .map_err(prepare)?;
    // Every watch is open: the revision now is below every revision the writer will make.
    let base = current_revision(&mut writer).await.map_err(prepare)?;

    let board = Arc::new(Board {
        answered: RwLock::new(HashMap::new()),
        base,
        newest: (0..bench.watchers).map(|_| AtomicI64::new(0)).collect(),
        shards: (0..settings.connections).map(|_| Mutex::new(Tally::new())).collect(),
    });
    let (stop, stopped) = watch::channel(false);
    let readers: Vec<_> = feeds
        .into_iter()
        .enumerate()
        .map(|(s, feed)| tokio::spawn(stream_task(feed, s * per_stream, board.clone(), stopped.clone())))
        .collect();

    let (shared, clock) = super::start_clock(settings.stop, &progress, interrupt);
    let value = vec![b'v'; settings.value_size];
    let written = writer_task(writer, value, timeout, &shared, &board).await;
    clock.stop(&shared);

    // The drain: every watcher should receive the last revision answered.
    let drain_started = Instant::now();
    if let Some(last) = written.last_revision {
        while drain_started.elapsed() < DRAIN_LIMIT
            && board.newest.iter().any(|n| n.load(Ordering::Relaxed) < last)
        {
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
    let drain = drain_started.elapsed();
    let _ = stop.send(true);
    let mut seen = Vec::with_capacity(bench.watchers);
    let mut panicked = None;
    for task in readers {
        match task.await {
            Ok(s) => seen.extend(s),
            Err(e) => panicked = Some(e.to_string()),
        }
    }
    progress.finish();
    if let Some(why) = panicked {
        return Err(Error::Task(why));
    }

    let answered = std::mem::take(&mut *board.answered.write().unwrap_or_else(PoisonError::into_inner));
    let mut tally = Tally::new();
    for shard in &board.shards {
        tally.merge(std::mem::take(&mut *shard.lock().unwrap_or_else(PoisonError::into_inner)));
    }
    let counts = Counts::of(&seen, &answered, base, &mut tally);
    let last_event = seen.iter().filter_map(|s| s.last_arrival).max();
    let elapsed = last_event.map_or(written.ended, |t| t.max(written.ended)) - shared.started;
    let puts = written.tally.succeeded();
    let put_latency = written.tally.latency();
    tally.merge_errors(written.tally);

    let parameters = Map::from_iter([
        ("watchers".to_string(), json!(bench.watchers)),
        ("watches_per_stream".to_string(), json!(bench.per_stream)),
        ("writer_member".to_string(), json!(bench.writer_member)),
        ("puts".to_string(), json!(puts)),
        ("put_p50_ms".to_string(), json!(put_latency.p50 as f64 / 1000.0)),
        ("put_p99_ms".to_string(), json!(put_latency.p99 as f64 / 1000.0)),
        ("missed_events".to_string(), json!(counts.missed)),
        ("watchers_missing_events".to_string(), json!(counts.watchers_missing)),
        ("duplicate_events".to_string(), json!(counts.duplicates)),
        ("events_before_put_return".to_string(), json!(counts.early)),
        ("unanswered_events".to_string(), json!(counts.unanswered)),
        ("watches_ended".to_string(), json!(counts.ended)),
        ("drain_ms".to_string(), json!(drain.as_millis() as u64)),
    ]);
    let mut report = Report::new(NAME, parameters, &settings, tally, elapsed);
    report.key_size = key(written.keys.saturating_sub(1)).len();
    report.keyspace = written.keys;
    Ok(report)
}

/// Key `n` of the run.
pub fn key(n: u64) -> String {
    format!("{PREFIX}{n}")
}

/// What the writer did.
struct Written {
    /// Its puts: latency of the answered ones, errors of the others.
    tally: Tally,
    /// Keys written (puts started).
    keys: u64,
    /// The revision of the last put answered.
    last_revision: Option<i64>,
    /// When its last put ended.
    ended: Instant,
}

/// The writer: one put at a time until the clock says stop; every answer's instant goes on the
/// board under its revision.
async fn writer_task(
    mut writer: Connection,
    value: Vec<u8>,
    timeout: Duration,
    shared: &Shared,
    board: &Board,
) -> Written {
    let mut tally = Tally::new();
    let mut keys = 0;
    let mut last_revision = None;
    while shared.claim() {
        let sent = Instant::now();
        let put = put_revision(&mut writer, key(keys).into_bytes(), value.clone());
        keys += 1;
        match within(timeout, put).await {
            Ok(revision) => {
                let answered = {
                    let mut answered = board.answered.write().unwrap_or_else(PoisonError::into_inner);
                    let now = Instant::now();
                    answered.insert(revision, now);
                    now
                };
                tally.record(answered - sent, "put");
                last_revision = Some(revision);
                shared.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tally.record_error(error);
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Written { tally, keys, last_revision, ended: Instant::now() }
}

/// The watchers of one stream (`first` and the next ones, as many as its feed has): receives
/// until every watch ended or the run stops it; times every event whose put was answered
/// already.
async fn stream_task(
    mut feed: Feed,
    first: usize,
    board: Arc<Board>,
    mut stop: watch::Receiver<bool>,
) -> Vec<Seen> {
    let mut seen: Vec<Seen> = (0..feed.watches()).map(|_| Seen::default()).collect();
    let mut ended = 0;
    let mut latencies = Vec::new();
    // One wait for the stop, across all the events (not one registered anew for each).
    let mut stopping = std::pin::pin!(async move {
        let _ = stop.wait_for(|stop| *stop).await;
    });
    while ended < seen.len() {
        let said = tokio::select! {
            biased;
            () = &mut stopping => break,
            said = feed.next() => said,
        };
        let (watcher, revisions) = match said {
            Said::Events { watcher, revisions } => (watcher, revisions),
            Said::Nothing => continue,
            Said::Ended { watcher, error } => {
                if let Some(seen) = seen.get_mut(watcher).filter(|s| s.ended.is_none()) {
                    seen.ended = Some(error);
                    ended += 1;
                    board.newest[first + watcher].store(i64::MAX, Ordering::Relaxed);
                }
                continue;
            }
            Said::StreamEnded(error) => {
                for (watcher, seen) in seen.iter_mut().enumerate().filter(|(_, s)| s.ended.is_none()) {
                    seen.ended = Some(error.clone());
                    board.newest[first + watcher].store(i64::MAX, Ordering::Relaxed);
                }
                break;
            }
        };
        let Some(seen) = seen.get_mut(watcher) else { continue };
        let index = first + watcher;
        let arrived = Instant::now();
        let base = board.base;
        {
            let answered = board.answered.read().unwrap_or_else(PoisonError::into_inner);
            for &revision in &revisions {
                // Not of the run: a change made before it (or a revision no put could have made).
                let Some(bit) = bit_of(revision, base) else { continue };
                if !seen.received.insert(bit) {
                    seen.duplicates += 1;
                    continue;
                }
                match answered.get(&revision) {
                    Some(&at) => latencies.push(arrived.saturating_duration_since(at)),
                    // Its answer is not on the board yet, so it will be stamped after `arrived`.
                    None => {
                        seen.early.insert(bit);
                    }
                }
            }
        }
        if !latencies.is_empty() {
            let mut shard = board.shard(index);
            for latency in latencies.drain(..) {
                shard.record(latency, EVENT);
            }
        }
        seen.last_arrival = Some(arrived);
        if let Some(&newest) = revisions.iter().max() {
            board.newest[index].fetch_max(newest, Ordering::Relaxed);
        }
    }
    seen
}

/// Revision `revision`'s bit in a watcher's [`Bits`]: `revision - base - 1`; `None` at or below
/// `base`, or beyond any revision a run makes (which only a misbehaving server could send).
fn bit_of(revision: i64, base: i64) -> Option<usize> {
    let bit = usize::try_from(revision.checked_sub(base)?.checked_sub(1)?).ok()?;
    (bit < MAX_REVISIONS).then_some(bit)
}

/// The counts of the report's parameters, from what every watcher received.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    missed: u64,
    watchers_missing: u64,
    duplicates: u64,
    early: u64,
    unanswered: u64,
    ended: u64,
}

impl Counts {
    /// Counts what the watchers received against the puts `answered`; the events that arrived
    /// before their put's answer go into `tally` as 0 (clamped), or count as unanswered.
    fn of(seen: &[Seen], answered: &HashMap<i64, Instant>, base: i64, tally: &mut Tally) -> Counts {
        let mut expected = Bits::default();
        for &revision in answered.keys() {
            if let Some(bit) = bit_of(revision, base) {
                expected.insert(bit);
            }
        }
        let mut counts = Counts::default();
        for s in seen {
            let missed = expected.count_missing_from(&s.received);
            counts.missed += missed;
            counts.watchers_missing += u64::from(missed > 0);
            counts.duplicates += s.duplicates;
            for bit in s.early.iter() {
                counts.early += 1;
                if expected.contains(bit) {
                    tally.record(Duration::ZERO, EVENT);
                } else {
                    counts.unanswered += 1;
                }
            }
            if let Some(error) = &s.ended {
                counts.ended += 1;
                tally.record_error(error.clone());
            }
        }
        counts
    }
}

/// The revision of the cluster now, as a linearizable read answers it.
async fn current_revision(connection: &mut Connection) -> Result<i64, OpError> {
    match connection {
        Connection::Latch(client) => {
            let request = RangeRequest { key: PREFIX.into(), count_only: true, ..Default::default() };
            let response = client.range(request).await?;
            Ok(response.header.map_or(0, |h| h.revision))
        }
        #[cfg(feature = "etcd")]
        Connection::Etcd(client) => {
            let options = etcd_client::GetOptions::new().with_count_only();
            let response = client.get(PREFIX, Some(options)).await?;
            Ok(response.header().map_or(0, |h| h.revision()))
        }
        #[cfg(feature = "zk")]
        Connection::Zk(_) => Err(zk_refused()),
    }
}

/// Puts `key`; the revision of the put, from its answer's header.
async fn put_revision(connection: &mut Connection, key: Vec<u8>, value: Vec<u8>) -> Result<i64, OpError> {
    let revision = match connection {
        Connection::Latch(client) => client.put(key, value).await?.header.map(|h| h.revision),
        #[cfg(feature = "etcd")]
        Connection::Etcd(client) => client.put(key, value, None).await?.header().map(|h| h.revision()),
        #[cfg(feature = "zk")]
        Connection::Zk(_) => return Err(zk_refused()),
    };
    revision.ok_or_else(|| OpError { kind: "CLIENT", message: "a put answered without a header".into() })
}

#[cfg(feature = "zk")]
fn zk_refused() -> OpError {
    OpError { kind: "CLIENT", message: "watch-latency runs against latch:// or etcd:// targets".into() }
}

/// `operation`, failed with `DEADLINE_EXCEEDED` if it takes longer than `timeout`.
async fn within<T>(
    timeout: Duration,
    operation: impl Future<Output = Result<T, OpError>>,
) -> Result<T, OpError> {
    tokio::time::timeout(timeout, operation).await.unwrap_or_else(|_| {
        Err(OpError {
            kind: "DEADLINE_EXCEEDED",
            message: format!("no answer within {}", humantime::format_duration(timeout)),
        })
    })
}

/// The watches of one stream.
enum Feed {
    /// One Latch watch (its client resumes it by itself).
    Latch(BoxStream<'static, Result<WatchUpdate, latch_client::Error>>),
    /// Latch watches of one group, and the watcher of each watch id (boxed: far larger than
    /// one watch's stream).
    LatchGroup { group: Box<latch_client::WatchGroup>, watchers: HashMap<latch_client::WatchId, usize> },
    /// etcd watches of one stream: the request side, kept so that the stream stays open, the
    /// responses (boxed: far larger than a Latch stream), and the watcher of each watch id.
    #[cfg(feature = "etcd")]
    Etcd {
        _watcher: etcd_client::Watcher,
        stream: Box<etcd_client::WatchStream>,
        watchers: HashMap<i64, usize>,
    },
}

/// What a stream said next.
enum Said {
    /// The revisions of one response's events to watcher `watcher` of the stream, one per event.
    Events { watcher: usize, revisions: Vec<i64> },
    /// Nothing to count (progress).
    Nothing,
    /// Watcher `watcher`'s watch ended: no more events come to it.
    Ended { watcher: usize, error: OpError },
    /// The stream ended: no more events come to any of its watchers.
    StreamEnded(OpError),
}

impl Feed {
    /// Opens `watches` watches on [`PREFIX`] from now on, on one stream, and waits until the
    /// system says each started. `grouped`: the run puts several watches on a stream (a Latch
    /// watch group, even for a last stream that takes fewer), else each watch is a stream of
    /// its own (Latch: `Client::watch`).
    async fn open(
        connection: Connection,
        timeout: Duration,
        watches: usize,
        grouped: bool,
    ) -> Result<Feed, OpError> {
        match connection {
            Connection::Latch(client) if !grouped => {
                let mut stream = client.watch(latch_client::WatchOptions::prefix(PREFIX)).boxed();
                match within(timeout, async { Ok::<_, OpError>(stream.next().await) }).await? {
                    Some(Ok(WatchUpdate::Started { .. })) => Ok(Feed::Latch(stream)),
                    Some(Ok(other)) => Err(not_started(&other)),
                    Some(Err(e)) => Err(e.into()),
                    None => Err(ended_unstarted()),
                }
            }
            Connection::Latch(client) => {
                let mut group = client.watch_group();
                let watchers: HashMap<_, _> = (0..watches)
                    .map(|w| (group.add(latch_client::WatchOptions::prefix(PREFIX)), w))
                    .collect();
                // The member creates them one after the other: each within the timeout.
                for _ in 0..watches {
                    match within(timeout, async { Ok::<_, OpError>(group.next().await) }).await? {
                        Some((_, Ok(WatchUpdate::Started { .. }))) => {}
                        Some((_, Ok(other))) => return Err(not_started(&other)),
                        Some((_, Err(e))) => return Err(e.into()),
                        None => return Err(ended_unstarted()),
                    }
                }
                Ok(Feed::LatchGroup { group: Box::new(group), watchers })
            }
            #[cfg(feature = "etcd")]
            Connection::Etcd(mut client) => {
                // Returns once etcd answered the first create request.
                let options = || Some(etcd_client::WatchOptions::new().with_prefix());
                let (mut watcher, mut stream) =
                    within(timeout, async { client.watch(PREFIX, options()).await.map_err(OpError::from) })
                        .await?;
                let mut watchers = HashMap::from([(watcher.watch_id(), 0)]);
                for w in 1..watches {
                    within(timeout, async {
                        watcher.watch(PREFIX, options()).await?;
                        match stream.message().await? {
                            Some(r) if r.created() && !r.canceled() => {
                                watchers.insert(r.watch_id(), w);
                                Ok(())
                            }
                            Some(r) => Err(OpError {
                                kind: "CLIENT",
                                message: format!("etcd answered a create with {r:?}"),
                            }),
                            None => Err(ended_unstarted()),
                        }
                    })
                    .await?;
                }
                Ok(Feed::Etcd { _watcher: watcher, stream: Box::new(stream), watchers })
            }
            #[cfg(feature = "zk")]
            Connection::Zk(_) => Err(zk_refused()),
        }
    }

    /// How many watches the stream carries.
    fn watches(&self) -> usize {
        match self {
            Feed::Latch(_) => 1,
            Feed::LatchGroup { watchers, .. } => watchers.len(),
            #[cfg(feature = "etcd")]
            Feed::Etcd { watchers, .. } => watchers.len(),
        }
    }

    async fn next(&mut self) -> Said {
        let ended = || OpError { kind: "UNAVAILABLE", message: "the watch stream ended".into() };
        let events = |watcher: usize, revision: i64, events: &[latch_client::Event]| Said::Events {
            watcher,
            revisions: vec![revision; events.len()],
        };
        match self {
            Feed::Latch(stream) => match stream.next().await {
                Some(Ok(WatchUpdate::Events { revision, events: e })) => events(0, revision, &e),
                Some(Ok(_)) => Said::Nothing,
                Some(Err(e)) => Said::Ended { watcher: 0, error: e.into() },
                None => Said::StreamEnded(ended()),
            },
            Feed::LatchGroup { group, watchers } => match group.next().await {
                Some((id, update)) => {
                    let Some(&watcher) = watchers.get(&id) else { return Said::Nothing };
                    match update {
                        Ok(WatchUpdate::Events { revision, events: e }) => events(watcher, revision, &e),
                        Ok(_) => Said::Nothing,
                        Err(e) => Said::Ended { watcher, error: e.into() },
                    }
                }
                None => Said::StreamEnded(ended()),
            },
            #[cfg(feature = "etcd")]
            Feed::Etcd { stream, watchers, .. } => match stream.message().await {
                Ok(Some(r)) => {
                    let Some(&watcher) = watchers.get(&r.watch_id()) else { return Said::Nothing };
                    if r.canceled() {
                        return Said::Ended {
                            watcher,
                            error: OpError {
                                kind: "CANCELLED",
                                message: format!(
                                    "etcd canceled the watch: {:?}, compact revision {}",
                                    r.cancel_reason(),
                                    r.compact_revision()
                                ),
                            },
                        };
                    }
                    let header = r.header().map_or(0, |h| h.revision());
                    let revisions =
                        r.events().iter().map(|e| e.kv().map_or(header, |kv| kv.mod_revision())).collect();
                    Said::Events { watcher, revisions }
                }
                Ok(None) => Said::StreamEnded(ended()),
                Err(e) => Said::StreamEnded(e.into()),
            },
        }
    }
}

fn not_started(first: &WatchUpdate) -> OpError {
    OpError { kind: "CLIENT", message: format!("a watch's first update is not Started but {first:?}") }
}

fn ended_unstarted() -> OpError {
    OpError { kind: "UNAVAILABLE", message: "the watch ended before it started".into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{KeySpace, Stop};

    fn settings(connections: usize) -> Settings {
        Settings {
            target: TargetSpec::parse("latch://127.0.0.1:7379").expect("valid target"),
            clients: 16,
            connections,
            stop: Stop::Ops(10),
            keys: KeySpace::new(100, 16).expect("valid key space"),
            value_size: 8,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn no_watchers_or_more_connections_than_streams_are_refused_naming_the_flag() {
        let bench = |watchers, per_stream| WatchLatency { watchers, per_stream, writer_member: None };
        let e = bench(0, 1).validate(&settings(1)).expect_err("no watchers");
        assert!(e.to_string().contains("--watchers") && e.is_usage(), "{e}");
        let e = bench(4, 1).validate(&settings(8)).expect_err("too many connections");
        assert!(e.to_string().contains("--connections"), "{e}");
        assert!(bench(10_000, 1).validate(&settings(16)).is_ok());
        let zk = Settings { target: TargetSpec::parse("zk://h:1").expect("valid"), ..settings(1) };
        assert!(bench(1, 1).validate(&zk).is_err());
    }

    #[test]
    fn the_writer_member_names_one_endpoint_of_the_target() {
        let three =
            Settings { target: TargetSpec::parse("latch://a:1,b:2,c:3").expect("valid"), ..settings(1) };
        let bench = |writer_member| WatchLatency { watchers: 1, per_stream: 1, writer_member };
        assert_eq!(
            bench(None).writer_target(&three.target),
            three.target,
            "no flag: every endpoint, in order"
        );
        let second = bench(Some(2)).writer_target(&three.target);
        assert_eq!(second.endpoints, vec!["b:2".to_string()], "the second endpoint alone");
        assert!(bench(Some(3)).validate(&three).is_ok());
        for n in [0, 4] {
            let e = bench(Some(n)).validate(&three).expect_err("outside the target's members");
            assert!(
                e.to_string().contains("--writer-member") && e.to_string().contains("(3)") && e.is_usage(),
                "{e}"
            );
        }
    }

    #[test]
    fn watches_per_stream_must_fit_the_watchers_and_leave_a_stream_per_connection() {
        let bench = |watchers, per_stream| WatchLatency { watchers, per_stream, writer_member: None };
        assert_eq!(bench(10_000, 625).streams(), 16);
        assert_eq!(bench(1_000, 300).streams(), 4, "the last stream takes the rest (100)");
        assert!(bench(10_000, 625).validate(&settings(16)).is_ok());
        let e = bench(100, 0).validate(&settings(1)).expect_err("no watches per stream");
        assert!(e.to_string().contains("--watches-per-stream"), "{e}");
        let e = bench(100, 101).validate(&settings(1)).expect_err("more per stream than watchers");
        assert!(e.to_string().contains("--watches-per-stream"), "{e}");
        let e = bench(20_000, 20_000).validate(&settings(1)).expect_err("over a member's watches per stream");
        assert!(e.to_string().contains("10000"), "{e}");
        let e = bench(1_000, 100).validate(&settings(16)).expect_err("10 streams on 16 connections");
        assert!(e.to_string().contains("--connections") && e.to_string().contains("streams (10"), "{e}");
    }

    #[test]
    fn bits_count_what_the_other_lacks() {
        let mut expected = Bits::default();
        let mut got = Bits::default();
        for i in [0, 1, 63, 64, 200] {
            assert!(expected.insert(i));
        }
        for i in [0, 64] {
            got.insert(i);
        }
        assert!(!got.insert(0), "0 was there already");
        assert_eq!(expected.count_missing_from(&got), 3);
        assert_eq!(got.count_missing_from(&expected), 0);
        assert_eq!(expected.iter().collect::<Vec<_>>(), vec![0, 1, 63, 64, 200]);
        assert!(expected.contains(200) && !expected.contains(199) && !expected.contains(10_000));
    }

    #[test]
    fn only_revisions_after_the_base_have_a_bit() {
        assert_eq!(bit_of(11, 10), Some(0));
        assert_eq!(bit_of(10, 10), None);
        assert_eq!(bit_of(i64::MIN, 10), None);
        assert_eq!(bit_of(i64::MAX, 10), None);
        assert_eq!(bit_of(i64::MAX, i64::MIN), None);
    }

    #[test]
    fn missed_early_and_unanswered_events_are_counted_per_watcher() {
        let now = Instant::now();
        // The run wrote revisions 11, 12 and 13 (base 10); 14's put was never answered.
        let answered: HashMap<i64, Instant> = [(11, now), (12, now), (13, now)].into();
        let mut complete = Seen::default();
        for bit in [0, 1, 2] {
            complete.received.insert(bit);
        }
        // Received 12 before its answer, and 14, whose answer never came.
        complete.early.insert(1);
        complete.received.insert(3);
        complete.early.insert(3);
        complete.duplicates = 1;
        let mut short = Seen::default();
        short.received.insert(0);
        short.ended = Some(OpError { kind: "UNAVAILABLE", message: "gone".into() });
        let mut tally = Tally::new();
        let counts = Counts::of(&[complete, short], &answered, 10, &mut tally);
        assert_eq!(
            counts,
            Counts { missed: 2, watchers_missing: 1, duplicates: 1, early: 2, unanswered: 1, ended: 1 }
        );
        assert_eq!(tally.succeeded(), 1, "the early event of an answered put is timed, as 0");
    }
}
