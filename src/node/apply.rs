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

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
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

/// Runs until the queue closes (the raft thread ended) or the raft thread is gone.
pub fn run(mut applier: Applier, jobs: Receiver<Job>, events: mpsc::Sender<Event>, metrics: &RaftMetrics) {
    let mut last_sync = Instant::now();
    let mut next: Option<Job> = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match jobs.recv_timeout(SYNC_INTERVAL) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    // Idle: make what was applied durable.
                    if !report(applier.sync(), &events) {
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
                if last_sync.elapsed() >= SYNC_INTERVAL {
                    if !report(applier.sync(), &events) {
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
