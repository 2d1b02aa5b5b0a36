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
//! Each system's own watch, taken as its users take it, one watch per watcher on a stream of
//! its own:
//! - Latch: `Client::watch(WatchOptions::prefix("bench/watch/"))`, a stream of
//!   `WatchUpdate::Events { revision, events }` (the client resumes it by itself, on another
//!   member if needed, without a gap).
//! - etcd: `Client::watch("bench/watch/", WatchOptions::new().with_prefix())`, one Watch stream
//!   per watcher; an event's revision is its kv's mod revision (etcd may pack several
//!   revisions into one response).
//!
//! The watchers are spread round-robin over `--connections` clients (gRPC channels, so HTTP/2
//! connections; the i-th with the endpoints rotated by i, so the watchers spread over the
//! members); the writer has a client of its own, with the endpoints in the order given. Every
//! watch is open and confirmed before the clock starts (Latch: `WatchUpdate::Started`; etcd: the
//! created response), so setting them up is not measured; `--clients` does not apply.
//!
//! The clock is the one of [`super::run`]: puts start until `--ops` were started or `--duration`
//! passed. Then the run waits, at most [`DRAIN_LIMIT`], for every watcher to receive the
//! revision of the last put answered (`drain_ms`: how long that took), and stops the watches.
//! A failed put (an error, or no answer within `--timeout`) is counted by kind and not timed;
//! a watch that ends (etcd: canceled; either: its stream fails for good) is counted by kind
//! too, and its watcher receives no more.
//!
//! The report's parameters: `watchers`; `puts` (answered); `put_p50_ms`, `put_p99_ms` (the
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

use super::{Connection, Consistency, Error, OpError, Progress, Report, Settings, Shared, System, Tally};

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
}

impl WatchLatency {
    /// Checks what the types cannot; the message names the flag at fault.
    pub fn validate(&self, settings: &Settings) -> Result<(), Error> {
        if self.watchers == 0 {
            return Err(Error::Settings("--watchers must be at least 1".into()));
        }
        if settings.connections == 0 || settings.connections > self.watchers {
            return Err(Error::Settings(format!(
                "--connections must be between 1 and --watchers ({}), got {}",
                self.watchers, settings.connections
            )));
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
    let mut writer = super::target::connect(&settings.target, 1, settings.timeout)
        .await?
        .pop()
        .ok_or_else(|| Error::Task("no connection for the writer".into()))?;
    let unreachable = |error| Error::Unreachable { target: settings.target.to_string(), error };
    for connection in connections.iter().chain([&writer]) {
        connection.clone().get(PREFIX.into(), Consistency::Linearizable).await.map_err(unreachable)?;
    }
    let prepare = |error| Error::Prepare { workload: NAME, error };

    progress.watches(bench.watchers as u64);
    let timeout = settings.timeout;
    let feeds: Vec<Feed> = super::open_all(bench.watchers, OPENS_IN_FLIGHT, &progress, |i| {
        Feed::open(connections[i % connections.len()].clone(), timeout)
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
    let watchers: Vec<_> = feeds
        .into_iter()
        .enumerate()
        .map(|(i, feed)| tokio::spawn(watcher_task(feed, i, board.clone(), stopped.clone())))
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
    let mut seen = Vec::with_capacity(watchers.len());
    let mut panicked = None;
    for task in watchers {
        match task.await {
            Ok(s) => seen.push(s),
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

/// One watcher: receives until its watch ends or the run stops it; times every event whose
/// put was answered already.
async fn watcher_task(
    mut feed: Feed,
    index: usize,
    board: Arc<Board>,
    mut stop: watch::Receiver<bool>,
) -> Seen {
    let mut seen = Seen::default();
    let mut latencies = Vec::new();
    // One wait for the stop, across all the events (not one registered anew for each).
    let mut stopping = std::pin::pin!(async move {
        let _ = stop.wait_for(|stop| *stop).await;
    });
    loop {
        let said = tokio::select! {
            biased;
            () = &mut stopping => break,
            said = feed.next() => said,
        };
        let revisions = match said {
            Said::Events(revisions) => revisions,
            Said::Nothing => continue,
            Said::Ended(error) => {
                seen.ended = Some(error);
                board.newest[index].store(i64::MAX, Ordering::Relaxed);
                break;
            }
        };
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

/// One watcher's watch.
enum Feed {
    /// A Latch watch (its client resumes it by itself).
    Latch(BoxStream<'static, Result<WatchUpdate, latch_client::Error>>),
    /// An etcd watch: the request side, kept so that the stream stays open, and the responses
    /// (boxed: far larger than a Latch stream).
    #[cfg(feature = "etcd")]
    Etcd { _watcher: etcd_client::Watcher, stream: Box<etcd_client::WatchStream> },
}

/// What a watch said next.
enum Said {
    /// The revisions of one response's events, one per event.
    Events(Vec<i64>),
    /// Nothing to count (progress).
    Nothing,
    /// The watch ended: no more events come.
    Ended(OpError),
}

impl Feed {
    /// Opens a watch on [`PREFIX`] from now on, and waits until the system says it started.
    async fn open(connection: Connection, timeout: Duration) -> Result<Feed, OpError> {
        match connection {
            Connection::Latch(client) => {
                let mut stream = client.watch(latch_client::WatchOptions::prefix(PREFIX)).boxed();
                match within(timeout, async { Ok::<_, OpError>(stream.next().await) }).await? {
                    Some(Ok(WatchUpdate::Started { .. })) => Ok(Feed::Latch(stream)),
                    Some(Ok(other)) => Err(OpError {
                        kind: "CLIENT",
                        message: format!("a watch's first update is not Started but {other:?}"),
                    }),
                    Some(Err(e)) => Err(e.into()),
                    None => Err(OpError {
                        kind: "UNAVAILABLE",
                        message: "the watch ended before it started".into(),
                    }),
                }
            }
            #[cfg(feature = "etcd")]
            Connection::Etcd(mut client) => {
                // Returns once etcd answered the create request.
                let options = etcd_client::WatchOptions::new().with_prefix();
                let (watcher, stream) = within(timeout, async {
                    client.watch(PREFIX, Some(options)).await.map_err(OpError::from)
                })
                .await?;
                Ok(Feed::Etcd { _watcher: watcher, stream: Box::new(stream) })
            }
            #[cfg(feature = "zk")]
            Connection::Zk(_) => Err(zk_refused()),
        }
    }

    async fn next(&mut self) -> Said {
        let ended = || OpError { kind: "UNAVAILABLE", message: "the watch stream ended".into() };
        match self {
            Feed::Latch(stream) => match stream.next().await {
                Some(Ok(WatchUpdate::Events { revision, events })) => {
                    Said::Events(vec![revision; events.len()])
                }
                Some(Ok(_)) => Said::Nothing,
                Some(Err(e)) => Said::Ended(e.into()),
                None => Said::Ended(ended()),
            },
            #[cfg(feature = "etcd")]
            Feed::Etcd { stream, .. } => match stream.message().await {
                Ok(Some(r)) if r.canceled() => Said::Ended(OpError {
                    kind: "CANCELLED",
                    message: format!(
                        "etcd canceled the watch: {:?}, compact revision {}",
                        r.cancel_reason(),
                        r.compact_revision()
                    ),
                }),
                Ok(Some(r)) => {
                    let header = r.header().map_or(0, |h| h.revision());
                    Said::Events(
                        r.events().iter().map(|e| e.kv().map_or(header, |kv| kv.mod_revision())).collect(),
                    )
                }
                Ok(None) => Said::Ended(ended()),
                Err(e) => Said::Ended(e.into()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{KeySpace, Stop, TargetSpec};

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
    fn no_watchers_or_more_connections_than_watchers_are_refused_naming_the_flag() {
        let e = WatchLatency { watchers: 0 }.validate(&settings(1)).expect_err("no watchers");
        assert!(e.to_string().contains("--watchers") && e.is_usage(), "{e}");
        let e = WatchLatency { watchers: 4 }.validate(&settings(8)).expect_err("too many connections");
        assert!(e.to_string().contains("--connections"), "{e}");
        assert!(WatchLatency { watchers: 10_000 }.validate(&settings(16)).is_ok());
        let zk = Settings { target: TargetSpec::parse("zk://h:1").expect("valid"), ..settings(1) };
        assert!(WatchLatency { watchers: 1 }.validate(&zk).is_err());
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
