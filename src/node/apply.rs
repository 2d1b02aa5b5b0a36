//! The apply thread: runs the [`Applier`] beside the raft thread, so that applying committed
//! entries and committing the state never hold up the log's appends and fsyncs.
//!
//! The raft thread hands it jobs in order over a bounded channel ([`APPLY_QUEUE`] batches: when
//! the state falls behind, the raft thread waits, and client requests back up into the pending
//! budget). Consecutive batches are applied in one transaction. Progress goes back to the raft
//! thread as an [`Event::Applied`]; a failure, as [`Event::ApplyFailed`], stops the member.
//!
//! Durability: every state commit is lazy except one every [`SYNC_INTERVAL`] (or every
//! `applier::SYNC_EVERY_ENTRIES` entries, or when the thread goes idle with something not
//! durable): the log holds everything the state may lose.
//!
//! A lazy commit still writes its pages to the file, so a durable commit fsyncs everything
//! written since the last one — about 7 ms at 1,000 puts/s, during which the apply thread,
//! and every reply, would wait. A [`Preflush`] thread fsyncs the file first, beside the apply
//! thread; the durable commit that follows finds little left to write. (An fsync at any moment
//! is safe: redb's commit protocol never depends on what reached the disk when.)

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use raft::eraftpb::Entry;

use super::Event;
use crate::core::{Applier, CoreError, ReadyObserver};
use crate::fsm::Applied;
use crate::metrics::RaftMetrics;

/// Batches the raft thread may queue ahead of the apply thread (each at most
/// `core::MAX_COMMITTED_BYTES_PER_READY`).
pub const APPLY_QUEUE: usize = 16;
/// Longest time applied state stays not durable while the apply thread is busy.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Most entries applied in one transaction.
const MAX_ENTRIES_PER_BATCH: usize = 4096;

/// What the raft thread asks of the apply thread.
pub enum Job {
    Apply(Vec<Entry>),
    /// Install the snapshot staged under `token`, durably; the answer goes to `reply`.
    Install {
        token: Vec<u8>,
        index: u64,
        term: u64,
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

/// The state's file, opened a second time, to be fsynced from a thread of its own ahead of the
/// apply thread's durable commits (see the module's doc).
pub struct Preflush {
    file: std::fs::File,
}

impl Preflush {
    pub fn open(state_file: &Path) -> std::io::Result<Preflush> {
        Ok(Preflush { file: std::fs::File::open(state_file)? })
    }

    /// Fsyncs the file each time it is asked, then raises `flushed`; ends when the asking side
    /// is gone.
    fn serve(self, asked: Receiver<()>, flushed: &AtomicBool) {
        while asked.recv().is_ok() {
            if let Err(e) = self.file.sync_data() {
                // The durable commit that follows syncs again, and fails the member if the disk
                // does.
                tracing::warn!(error = %e, "pre-flushing the state file failed");
            }
            flushed.store(true, Ordering::Release);
        }
    }
}

/// When the apply thread's durable commit may run: at once without a [`Preflush`] thread; with
/// one, once it has fsynced the file since it was asked (or took longer than a sync interval).
struct SyncGate<'a> {
    ask: Option<SyncSender<()>>,
    flushed: &'a AtomicBool,
    asked_at: Option<Instant>,
}

impl SyncGate<'_> {
    fn ready(&mut self) -> bool {
        let Some(ask) = &self.ask else { return true };
        match self.asked_at {
            None => match ask.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {
                    self.asked_at = Some(Instant::now());
                    false
                }
                Err(TrySendError::Disconnected(())) => {
                    self.ask = None;
                    true
                }
            },
            Some(at) => {
                if self.flushed.swap(false, Ordering::Acquire) || at.elapsed() >= SYNC_INTERVAL {
                    self.asked_at = None;
                    true
                } else {
                    false
                }
            }
        }
    }
}

/// Runs until the queue closes (the raft thread ended) or the raft thread is gone; with a
/// [`Preflush`], on a thread of its own beside it.
pub fn run(
    applier: Applier,
    jobs: Receiver<Job>,
    events: mpsc::Sender<Event>,
    metrics: &RaftMetrics,
    preflush: Option<Preflush>,
) {
    let flushed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let mut gate = SyncGate { ask: None, flushed: &flushed, asked_at: None };
        if let Some(p) = preflush {
            let (ask, asked) = mpsc::sync_channel(1);
            let name = std::thread::current().name().map_or("latch-flush".into(), |n| format!("{n}-flush"));
            let flushed = &flushed;
            match std::thread::Builder::new().name(name).spawn_scoped(scope, move || p.serve(asked, flushed))
            {
                Ok(_) => gate.ask = Some(ask),
                Err(e) => {
                    tracing::warn!(error = %e, "no pre-flush thread: durable state commits sync inline")
                }
            }
        }
        apply_loop(applier, jobs, events, metrics, &mut gate);
        // Dropping the gate (its sender) ends the pre-flush thread; the scope joins it.
    });
}

fn apply_loop(
    mut applier: Applier,
    jobs: Receiver<Job>,
    events: mpsc::Sender<Event>,
    metrics: &RaftMetrics,
    gate: &mut SyncGate,
) {
    let mut last_sync = Instant::now();
    let mut next: Option<Job> = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match jobs.recv_timeout(SYNC_INTERVAL) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    // Idle: make what was applied durable.
                    if !report(timed_sync(&mut applier, metrics), &events) {
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
            },
        };
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
                let mut timer = StateTimer { metrics, started: None, apply_started: None };
                if !report(applier.apply(entries, &mut timer).map(Some), &events) {
                    return;
                }
                if last_sync.elapsed() >= SYNC_INTERVAL && gate.ready() {
                    if !report(timed_sync(&mut applier, metrics), &events) {
                        return;
                    }
                    last_sync = Instant::now();
                }
            }
            Job::Install { token, index, term, reply } => {
                let _ = reply.send(applier.install(&token, index, term));
                last_sync = Instant::now();
            }
        }
    }
}

/// A durable commit of what was applied, timed when it had something to do.
fn timed_sync(
    applier: &mut Applier,
    metrics: &RaftMetrics,
) -> Result<Option<crate::core::Progress>, CoreError> {
    let started = Instant::now();
    let result = applier.sync();
    if let Ok(Some(_)) = result {
        metrics.state_sync_seconds.observe(started.elapsed().as_secs_f64());
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

    #[test]
    fn a_durable_commit_waits_for_the_pre_flush_it_asked_for() {
        let flushed = AtomicBool::new(false);
        let mut inline = SyncGate { ask: None, flushed: &flushed, asked_at: None };
        assert!(inline.ready(), "without a pre-flush thread the durable commit runs at once");

        let (ask, asked) = mpsc::sync_channel(1);
        let mut gate = SyncGate { ask: Some(ask), flushed: &flushed, asked_at: None };
        assert!(!gate.ready(), "the first call asks for a pre-flush and waits for it");
        assert!(asked.try_recv().is_ok(), "the pre-flush thread was asked");
        assert!(!gate.ready(), "not ready until the pre-flush is done");
        assert!(asked.try_recv().is_err(), "asked only once while waiting");
        flushed.store(true, Ordering::Release);
        assert!(gate.ready(), "ready once the file was fsynced");
        assert!(!gate.ready(), "the next durable commit asks for a new pre-flush");
        assert!(asked.try_recv().is_ok());

        drop(asked);
        let mut orphan = SyncGate { ask: gate.ask.take(), flushed: &flushed, asked_at: None };
        assert!(orphan.ready(), "a pre-flush thread that is gone never holds the commit back");
    }
}
