//! The apply thread: runs the [`Applier`] beside the raft thread, so that applying committed
//! entries and committing the state never hold up the log's appends and fsyncs.
//!
//! The raft thread hands it jobs in order over a bounded channel ([`APPLY_QUEUE`] batches: when
//! the state falls behind, the raft thread waits, and client requests back up into the pending
//! budget). Consecutive batches are applied in one transaction, cut where the answers and events
//! it holds pass [`MAX_HELD_BYTES`]. Progress goes back to the raft thread as an
//! [`Event::Applied`]; a failure, as [`Event::ApplyFailed`], stops the member. What progress
//! holds on its way is counted ([`InFlight`]): past [`MAX_IN_FLIGHT_BYTES`] (the raft thread is
//! behind, installing a snapshot or stalled on its log) the answers' data is left out, as a
//! retry's answer from the request memory leaves it out, rather than held.
//!
//! Durability: every state commit is lazy except one every sync interval ([`SyncPace`]: at
//! least [`SYNC_INTERVAL_MIN`], and ten times what durable commits take) or every
//! `applier::SYNC_EVERY_ENTRIES` entries, or when the thread goes idle with something not
//! durable: the log holds everything the state may lose. A durable commit's fsync runs behind
//! the thread (`storage::sync_behind`): the thread goes on applying, and the durable index the
//! raft side may compact the log to moves once the fsync has completed.
//!
//! Watches hear of each committed batch from this thread, before its progress reaches the raft
//! thread and the writers' answers leave: the thread reads the batch's changes into the watch
//! window itself ([`WatchFeed`], a bounded step), then announces the revision ([`Announce`],
//! for DNS). A watcher's event starts on its way while the answer does, as etcd's do, instead of
//! a task's wake-up (or two) behind it. What the window reads is the committed state (a lazy
//! commit is visible to readers), so hearing early never shows watchers anything a reader could
//! not see.
//!
//! A durable commit writes the pages the lazy commits since the last one left in redb's write
//! buffer (redb 4 keeps them there, up to half its cache, past which they reach the file
//! unsynced), frees the pages they replaced, writes the header and asks for the fsync; every
//! batch that arrives meanwhile waits for that much. A page changed many times between two
//! durable commits is written once, so fewer of them cost less CPU: with the fsync behind,
//! every 100 ms gave more lock pairs for less CPU, and shorter lock and watch tails, than every
//! 10 ms (whose put tail was about 1–2 ms shorter), which was the best pace while the thread
//! waited for the fsync too (docs/performance.md, "The
//! state file's fsync behind the apply thread"). (Under redb 2, whose lazy commits wrote their
//! pages to the file, a thread fsynced the file ahead of each durable commit; under redb 4 it
//! found nothing to sync, and measured no faster, so it is gone: docs/performance.md, "redb
//! 4".)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::eraftpb::Entry;

use super::{Event, Pulse};
use crate::core::{Applier, CoreError, Progress, ReadyObserver};
use crate::fsm::Applied;
use crate::metrics::RaftMetrics;

/// Batches the raft thread may queue ahead of the apply thread (each at most
/// `core::MAX_COMMITTED_BYTES_PER_READY`).
pub const APPLY_QUEUE: usize = 16;
/// Shortest time between two durable state commits while the apply thread is busy.
pub const SYNC_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// Longest interval, whatever the disk. A durable commit starts at the first batch after the
/// interval, so applied state may stay not durable for up to about two intervals (or
/// `applier::SYNC_EVERY_ENTRIES` entries): what the log replays after a crash.
pub const SYNC_INTERVAL_MAX: Duration = Duration::from_secs(1);
/// The interval is at least this many times what the apply thread spends in a durable commit
/// (smoothed; its fsync runs behind), so that it spends at most about a tenth of its time in
/// them.
const SYNC_SHARE: u32 = 10;

/// How often the apply thread makes the state durable: as often as [`SYNC_INTERVAL_MIN`], and no
/// more often than keeps the durable commits to a [`SYNC_SHARE`]th of its time. On a disk whose
/// fsyncs outlast the interval, at the pace of the fsyncs: no timed durable commit starts while
/// the last one's fsync runs (`Applier::sync_behind`; the one every
/// `applier::SYNC_EVERY_ENTRIES` entries, and a lazy commit that grows the file, still wait).
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncPace {
    /// What durable commits take, smoothed: an exponential moving average (weight 1/4).
    took: Duration,
}

impl SyncPace {
    /// Time allowed between two durable commits.
    pub fn interval(&self) -> Duration {
        (self.took * SYNC_SHARE).clamp(SYNC_INTERVAL_MIN, SYNC_INTERVAL_MAX)
    }

    /// Records what one durable commit took.
    pub fn record(&mut self, took: Duration) {
        self.took = (self.took * 3 + took) / 4;
    }
}
/// Most entries applied in one transaction.
const MAX_ENTRIES_PER_BATCH: usize = 4096;

/// Most bytes of answers and events one transaction's progress holds (past the command that
/// crosses it): they wait in memory until the raft thread took the progress.
const MAX_HELD_BYTES: usize = 64 * 1024 * 1024;
/// Most bytes of answers and events on their way to the raft thread before the apply thread
/// leaves the answers' data out (see the module doc).
const MAX_IN_FLIGHT_BYTES: usize = 256 * 1024 * 1024;

/// The bytes of answers and events the apply thread sent and the raft thread has not taken
/// yet: the apply thread adds a progress's `held_bytes` as it sends it, the raft thread takes
/// them off as it takes it.
pub type InFlight = Arc<AtomicUsize>;

/// What the raft thread asks of the apply thread.
pub enum Job {
    Apply(Vec<Entry>),
    /// Install the snapshot staged under `token`, durably; the answer goes to `reply`.
    Install {
        token: Vec<u8>,
        index: u64,
        term: u64,
        /// Raft's configuration as of the snapshot, encoded.
        conf_state: Vec<u8>,
        reply: mpsc::Sender<Result<Applied, CoreError>>,
    },
}

/// A bounded queue of jobs.
pub fn queue() -> (SyncSender<Job>, Receiver<Job>) {
    mpsc::sync_channel(APPLY_QUEUE)
}

/// Times state commits and applies for the metrics.
struct StateTimer<'a> {
    metrics: &'a RaftMetrics,
    started: Option<Instant>,
    apply_started: Option<Instant>,
}

impl ReadyObserver for StateTimer<'_> {
    fn commit_started(&mut self) {
        self.started = Some(Instant::now());
    }

    fn commit_finished(&mut self, _entries: usize) {
        if let Some(t) = self.started.take() {
            self.metrics.state_commit_seconds.observe(t.elapsed().as_secs_f64());
        }
    }

    fn apply_started(&mut self) {
        self.apply_started = Some(Instant::now());
    }

    fn apply_finished(&mut self, entries_applied: usize) {
        if let Some(t) = self.apply_started.take() {
            self.metrics.apply_seconds.observe(t.elapsed().as_secs_f64());
        }
        self.metrics.apply_batch_entries.observe(entries_applied as f64);
        self.metrics.proposals_applied.inc_by(entries_applied as u64);
    }
}

/// Where the member's applied revision is announced (DNS follows it).
pub type Announce = Arc<tokio::sync::watch::Sender<i64>>;

/// What keeps the member's watch window (`api::watch::recent`), fed by the apply thread right
/// after each commit, before the revision is announced and the writers answered: the batch's
/// events then start on their way without waiting for a task to wake, and no task wakes per
/// revision. Every write waits for it, so it must be bounded (one step of a few hundred KiB)
/// and never wait for a watcher, a stream or the task it hands whatever it leaves undone to (a
/// failed read, a large revision, a backlog).
pub trait WatchFeed: Send + Sync {
    /// The state the apply thread just committed holds `revision`.
    fn committed(&self, revision: i64);
    /// The apply thread installed a snapshot at `revision`; the raft thread waits for the
    /// answer, so this only hands the reading on.
    fn installed(&self, revision: i64);
}

/// The watch feed, once the server has one (set after the node starts: the feed reads
/// through the node's handle).
pub type Feed = Arc<std::sync::OnceLock<Arc<dyn WatchFeed>>>;

/// Runs until the queue closes (the raft thread ended) or the raft thread is gone. A panic
/// (a bug: nothing a client, a peer or the disk sends is unwrapped) is reported as a failure
/// that stops the member, rather than leaving a raft thread that goes on committing entries
/// nobody applies or answers.
pub(super) fn run(
    applier: Applier,
    jobs: Receiver<Job>,
    (events, announce, feed, in_flight): (mpsc::Sender<Event>, Announce, Feed, InFlight),
    pulse: &Pulse,
    metrics: &RaftMetrics,
) {
    let failed = events.clone();
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        apply_until_stopped(applier, jobs, (events, announce, feed, in_flight), pulse, metrics)
    }));
    if ran.is_err() {
        let _ = failed.send(Event::ApplyFailed(CoreError::ApplyPanicked));
    }
}

fn apply_until_stopped(
    mut applier: Applier,
    jobs: Receiver<Job>,
    (events, announce, feed, in_flight): (mpsc::Sender<Event>, Announce, Feed, InFlight),
    pulse: &Pulse,
    metrics: &RaftMetrics,
) {
    let mut last_sync = Instant::now();
    let mut pace = SyncPace::default();
    let mut next: Option<Job> = None;
    loop {
        // Waits for work; with nothing to make durable, without a timeout.
        let received = match next.take() {
            Some(job) => Ok(job),
            None if applier.dirty() => jobs.recv_timeout(pace.interval()),
            None => jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let job = match received {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                // Idle: commit what was applied durably, its fsync behind; once everything is,
                // wait for that fsync (long done by the next timeout) to report it durable (or
                // its failure, which stops the member).
                let synced = match applier.durably_committed() < applier.applied().index {
                    true => timed_sync(&mut applier, metrics, &mut pace),
                    false => applier.sync(),
                };
                if !report(synced, &events) {
                    return;
                }
                last_sync = Instant::now();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                // The member stops: leave the state durable, so that the next start need
                // not replay it.
                let _ = report(applier.sync(), &events);
                return;
            }
        };
        // Work taken on: the member makes progress, though its raft thread may wait for this one
        // (a full queue, a snapshot's install).
        pulse.beat();
        match job {
            Job::Apply(mut entries) => {
                // Whatever else is queued joins this transaction, up to a bound.
                while entries.len() < MAX_ENTRIES_PER_BATCH {
                    match jobs.try_recv() {
                        Ok(Job::Apply(more)) => entries.extend(more),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                // In as many transactions as the answers and events they hold take.
                loop {
                    let mut timer = StateTimer { metrics, started: None, apply_started: None };
                    let (applied, rest) = match applier.apply_some(entries, MAX_HELD_BYTES, &mut timer) {
                        Ok((progress, rest)) => (Ok(count_in_flight(progress, &in_flight)), rest),
                        Err(e) => (Err(e), Vec::new()),
                    };
                    if let Ok(progress) = &applied {
                        let revision = progress.applied.revision;
                        if let Some(feed) = feed.get() {
                            feed.committed(revision);
                        }
                        announce.send_if_modified(|r| std::mem::replace(r, revision.max(*r)) != *r);
                    }
                    if !report(applied.map(Some), &events) {
                        return;
                    }
                    pulse.beat();
                    if last_sync.elapsed() >= pace.interval() {
                        let before = applier.durably_committed();
                        if !report(timed_sync(&mut applier, metrics, &mut pace), &events) {
                            return;
                        }
                        // No commit while the last one's fsync runs: the next batch tries again.
                        if applier.durably_committed() > before {
                            last_sync = Instant::now();
                        }
                    }
                    if rest.is_empty() {
                        break;
                    }
                    entries = rest;
                }
            }
            Job::Install { token, index, term, conf_state, reply } => {
                let installed = applier.install(&token, index, term, &conf_state);
                if let (Ok(applied), Some(feed)) = (&installed, feed.get()) {
                    feed.installed(applied.revision);
                }
                let _ = reply.send(installed);
                last_sync = Instant::now();
            }
        }
    }
}

/// Counts `p` in what is on its way to the raft thread; past [`MAX_IN_FLIGHT_BYTES`], its
/// answers' data is left out first (`data_omitted`: a waiter, if any, is told to read again).
fn count_in_flight(mut p: Progress, in_flight: &AtomicUsize) -> Progress {
    if in_flight.load(Ordering::Acquire).saturating_add(p.held_bytes) > MAX_IN_FLIGHT_BYTES {
        for c in &mut p.commands {
            c.outcome = crate::fsm::omit_data(&c.outcome);
            c.events = Vec::new();
        }
        p.held_bytes = p.commands.iter().map(crate::fsm::AppliedCommand::held_bytes).sum();
    }
    in_flight.fetch_add(p.held_bytes, Ordering::AcqRel);
    p
}

/// A durable commit of what was applied, its fsync behind ([`Applier::sync_behind`]), timed
/// (for the metrics and the pace) when it committed.
fn timed_sync(
    applier: &mut Applier,
    metrics: &RaftMetrics,
    pace: &mut SyncPace,
) -> Result<Option<crate::core::Progress>, CoreError> {
    let (started, before) = (Instant::now(), applier.durably_committed());
    let result = applier.sync_behind();
    if result.is_ok() && applier.durably_committed() > before {
        let took = started.elapsed();
        metrics.state_sync_seconds.observe(took.as_secs_f64());
        pace.record(took);
    }
    result
}

/// Hands progress (or a failure) to the raft thread; `false` when the apply thread must stop.
fn report(result: Result<Option<crate::core::Progress>, CoreError>, events: &mpsc::Sender<Event>) -> bool {
    match result {
        Ok(Some(progress)) => events.send(Event::Applied(progress)).is_ok(),
        Ok(None) => true,
        Err(e) => {
            let _ = events.send(Event::ApplyFailed(e));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Progress on its way to the raft thread is counted; past the bound, answers leave
    /// without their data (marked so), and what they hold is counted as they leave.
    #[test]
    fn past_the_in_flight_bound_answers_leave_without_their_data() {
        use latch_proto::internal::{
            op_result, outcome, KeyValue, OpResult, Outcome, PutResult, RangeResult, TxnResult,
        };
        let read = |bytes: usize| {
            let kv = KeyValue { key: b"k".to_vec(), value: vec![b'v'; bytes], ..Default::default() };
            let range = op_result::Result::Range(RangeResult { kvs: vec![kv], count: 1, more: false });
            let result = TxnResult { succeeded: true, results: vec![OpResult { result: Some(range) }] };
            crate::fsm::AppliedCommand {
                index: 1,
                term: 1,
                request_id: "r".into(),
                command_hash: 0,
                outcome: Outcome {
                    revision: 1,
                    data_omitted: false,
                    result: Some(outcome::Result::Txn(result)),
                },
                events: Vec::new(),
                sessions: Vec::new(),
                locks: Vec::new(),
                instances: Vec::new(),
            }
        };
        let progress = |bytes| {
            let commands = vec![read(bytes)];
            Progress { held_bytes: commands[0].held_bytes(), commands, ..Progress::default() }
        };
        let in_flight = AtomicUsize::new(0);
        let kept = count_in_flight(progress(1 << 20), &in_flight);
        assert!(!kept.commands[0].outcome.data_omitted, "under the bound the answer is whole");
        assert_eq!(in_flight.load(Ordering::Acquire), kept.held_bytes, "and counted");
        assert!(kept.held_bytes > 1 << 20);

        in_flight.store(MAX_IN_FLIGHT_BYTES - 1024, Ordering::Release);
        let omitted = count_in_flight(progress(1 << 20), &in_flight);
        let in_flight_after = in_flight.load(Ordering::Acquire);
        let outcome = &omitted.commands[0].outcome;
        assert!(outcome.data_omitted, "past the bound the answer says its data is left out");
        match &outcome.result {
            Some(outcome::Result::Txn(t)) => {
                assert_eq!(t.results[0].result, Some(op_result::Result::Range(RangeResult::default())))
            }
            other => panic!("a txn's answer, not {other:?}"),
        }
        assert!(omitted.held_bytes < 1024, "what is left holds little: {}", omitted.held_bytes);
        // A retry's answer from the request memory (a put whose previous value is not kept) has
        // nothing left to leave out: it stays marked, or its waiter would take the missing
        // previous value for none.
        let mut remembered = read(0);
        remembered.outcome = Outcome {
            revision: 1,
            data_omitted: true,
            result: Some(outcome::Result::Put(PutResult { prev_kv: None, key: b"k".to_vec() })),
        };
        in_flight.store(MAX_IN_FLIGHT_BYTES, Ordering::Release);
        let again = Progress { held_bytes: 1, commands: vec![remembered], ..Progress::default() };
        let again = count_in_flight(again, &in_flight);
        assert!(again.commands[0].outcome.data_omitted, "a data_omitted answer stays marked");
        assert_eq!(in_flight_after, MAX_IN_FLIGHT_BYTES - 1024 + omitted.held_bytes);
    }

    /// An apply thread that goes idle makes what it applied durable by itself — a durable
    /// commit, its fsync behind, then at its next idle turn that fsync waited for — and reports
    /// the durable index the log may be compacted to; if the fsync fails it stops with the
    /// failure instead, however idle the member; if something it calls panics (here the watch
    /// feed, code of ours outside redb), it stops saying so (the raft thread then stops the
    /// member).
    #[test]
    fn an_idle_apply_thread_reports_its_state_durable_or_stops_on_a_failed_fsync_or_a_panic() {
        use prost::Message as _;

        use crate::core::applier::testing::{applier_on, FailingSyncs};
        use crate::fsm::testing::{command, put};
        struct PanickingFeed;
        impl WatchFeed for PanickingFeed {
            fn committed(&self, revision: i64) {
                panic!("the window could not encode revision {revision}");
            }
            fn installed(&self, _: i64) {}
        }
        for failing in ["nothing", "an fsync", "a panic"] {
            let backend = FailingSyncs::default();
            let fail = backend.fail.clone();
            let (_, applier) = applier_on(backend);
            fail.store(failing == "an fsync", Ordering::SeqCst);
            let feed = Feed::default();
            if failing == "a panic" {
                let _ = feed.set(Arc::new(PanickingFeed));
            }
            let (jobs, queue) = queue();
            let (events, heard) = mpsc::channel();
            let thread = std::thread::spawn(move || {
                let announce = Arc::new(tokio::sync::watch::channel(0).0);
                let metrics = crate::metrics::Metrics::new().raft;
                let pulse = super::super::Pulse::new(Duration::from_millis(50));
                run(applier, queue, (events, announce, feed, InFlight::default()), &pulse, &metrics)
            });
            let entries = (1..=3u64)
                .map(|i| Entry {
                    index: i,
                    term: 1,
                    data: command(&format!("r{i}"), put(&format!("k{i}"), "v")).encode_to_vec().into(),
                    ..Default::default()
                })
                .collect();
            jobs.send(Job::Apply(entries)).expect("the apply thread takes jobs");
            let outcome = loop {
                match heard.recv_timeout(Duration::from_secs(10)) {
                    Ok(Event::Applied(p)) if p.durable_index == 3 => break Ok(p.applied.index),
                    Ok(Event::Applied(_)) => continue,
                    Ok(Event::ApplyFailed(e)) => break Err(e.to_string()),
                    Ok(_) => panic!("the apply thread sends only progress and failures"),
                    Err(e) => {
                        panic!("failing={failing}: nothing durable and no failure reported in 10 s: {e}")
                    }
                }
            };
            match failing {
                "nothing" => assert_eq!(outcome, Ok(3), "idle, the applied state becomes durable"),
                "an fsync" => assert!(
                    outcome.as_ref().is_err_and(|e| e.contains("the disk is gone")),
                    "a failed fsync stops the apply thread with it, got {outcome:?}"
                ),
                _ => assert!(
                    outcome.as_ref().is_err_and(|e| e.contains("the apply thread panicked")),
                    "a panic stops the apply thread, reported as one, got {outcome:?}"
                ),
            }
            drop(jobs);
            thread.join().expect("the apply thread ends");
        }
    }

    #[test]
    fn durable_commits_are_paced_to_a_tenth_of_the_apply_threads_time() {
        let mut pace = SyncPace::default();
        assert_eq!(pace.interval(), SYNC_INTERVAL_MIN, "before any durable commit, the shortest interval");
        for _ in 0..20 {
            pace.record(Duration::from_micros(800));
        }
        assert_eq!(pace.interval(), SYNC_INTERVAL_MIN, "commits of 0.8 ms: every 100 ms, not every 8 ms");
        for _ in 0..20 {
            pace.record(Duration::from_millis(20));
        }
        let slow = pace.interval();
        assert!(
            slow > Duration::from_millis(190) && slow <= Duration::from_millis(200),
            "commits of 20 ms (a slow disk): about every 200 ms, got {slow:?}"
        );
        pace.record(Duration::from_millis(2));
        assert!(
            pace.interval() > Duration::from_millis(140),
            "one fast commit does not undo the average: {:?}",
            pace.interval()
        );
        for _ in 0..20 {
            pace.record(Duration::from_secs(1));
        }
        assert_eq!(pace.interval(), SYNC_INTERVAL_MAX, "however slow the disk, at most a second between two");
    }
}
