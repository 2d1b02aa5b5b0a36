//! The member's recent revisions, read once from the history and encoded once, shared by every
//! watch stream: the live part of serving watches (DESIGN.md §3, watch).
//!
//! The member's apply thread, right after each commit, reads the changes of the revisions the
//! window has not read yet from the history (under twice [`FEED_STEP_BYTES`] of rows), encodes
//! each change as a `latch.v1.Event` (with and without its previous kv), and appends a [`Batch`]
//! per revision to a bounded window; a feeder task reads whatever the apply thread left, in
//! steps of about [`READ_STEP_BYTES`] (see [`Feeder`]). Streams copy `Arc`s out of the window
//! under a short lock; nothing they do can hold the apply thread or the feeder.
//!
//! Invariants:
//! - The window covers revisions `first..=last`: every revision in it that has changes has its
//!   batch there, in order, with all its changes. `last` only grows; `first` grows as old
//!   batches are dropped (past [`WINDOW_BYTES`] or its most revisions, `--watch-window-revisions`) or when a compaction
//!   removed revisions the feeder had not read (then the window restarts above the compact
//!   revision: no revision is ever skipped silently).
//! - What the window holds is bounded in bytes, whatever the writes and the watchers do; so is
//!   what the feeder holds while reading: a revision of more than [`OVERSIZED_REVISION_BYTES`]
//!   of rows is a marker batch, never read whole (streams read it in steps, see `watch.rs`).
//! - Each batch is charged what it holds, not only its encoded events: its structs, the key's
//!   and each buffer's allocation (`Batch::holds`). So the bound and `latch_watch_window_bytes`
//!   describe the memory held for tiny events as for large ones.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use latch_proto::v1;
use prost::bytes::Bytes;
use prost::Message as _;
use redb::ReadableDatabase as _;
use tokio::sync::watch;

use latch_proto::internal::{InstanceRow, LockRow, SessionRow};

use crate::api::election::leadership;
use crate::api::kv::convert::key_value;
use crate::api::lock::lock_info;
use crate::fsm::elections;
use crate::fsm::history::{self, Change, Part, Space};
use crate::fsm::{self, FsmError};
use crate::metrics::Metrics;
use crate::node::apply::WatchFeed;
use crate::node::NodeHandle;

/// Most bytes the window holds: its batches' events and the memory around them
/// (`Batch::holds`).
pub const WINDOW_BYTES: usize = 64 * 1024 * 1024;
/// How long the feeder waits before it tries a failed read again; it doubles each time up to
/// [`RETRY_MOST`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MOST: Duration = Duration::from_secs(10);
/// Bytes of history read in one step (by the feeder task, or a stream catching up).
pub const READ_STEP_BYTES: usize = 1024 * 1024;
/// Bytes of history the apply thread reads into the window after a commit: it stops at the
/// first revision boundary past this (so it reads under twice this), and a revision of more than
/// this it leaves whole to the feeder task, with everything after it until the task has read it.
/// So a commit's feed costs the thread that applies every write a bounded decoding and encoding,
/// whatever one revision holds.
pub const FEED_STEP_BYTES: usize = 256 * 1024;
/// A revision whose history rows are more than this is not held whole, in the window or by a
/// stream: each watch reads it a step at a time and sends it in fragments.
pub const OVERSIZED_REVISION_BYTES: usize = 8 * 1024 * 1024;
/// A revision whose events would hold more than this in memory (`Batch::holds`) is oversized
/// too, whatever its rows' bytes: many tiny events cost several times their rows (a delete of
/// 230,000 short keys, under 8 MiB of rows, would hold about 70 MB). So one revision never
/// holds more than a quarter of the window, and appending it never empties the window (which
/// would cut every live watch off as slow).
pub const OVERSIZED_REVISION_HELD: usize = WINDOW_BYTES / 4;

/// What one heap allocation costs beyond the bytes asked for, as the window counts it: the
/// allocator's bookkeeping and its rounding up to a size class. glibc's malloc adds an 8-byte
/// header and rounds to 16 bytes (32 at least); mimalloc (the binary's allocator) keeps no
/// header but rounds a size up to its class (8-byte steps up to 64 bytes, then classes up to a
/// quarter apart). For the small allocations where it matters, 16 bytes is about what either
/// costs: an estimate, not an exact count.
const ALLOCATION_OVERHEAD: usize = 16;

/// What a `Bytes` made from a `Vec` holds besides its buffer once it is cloned (as `with_prev`
/// clones `plain`, and as every stream that sends it does): a shared block of a pointer, a
/// capacity and a reference count, allocated apart.
const BYTES_SHARED_BLOCK: usize = 3 * std::mem::size_of::<usize>() + ALLOCATION_OVERHEAD;

/// One change, encoded for the wire.
#[derive(Debug)]
pub struct Encoded {
    pub space: Space,
    pub key: Vec<u8>,
    pub delete: bool,
    /// A `latch.v1.Event` without `prev_kv`, and with it.
    pub plain: Bytes,
    pub with_prev: Bytes,
}

impl Encoded {
    /// `with_prev` is `plain` (no previous kv), not a buffer of its own.
    fn shares_plain(&self) -> bool {
        self.with_prev.as_ptr() == self.plain.as_ptr()
    }

    /// Its encoded bytes, as sent (`with_prev` counted when it is a buffer of its own).
    fn bytes(&self) -> usize {
        self.key.len() + self.plain.len() + if self.shares_plain() { 0 } else { self.with_prev.len() }
    }

    /// The memory it holds outside its own struct: the key's allocation and each buffer's, with
    /// what every allocation costs ([`ALLOCATION_OVERHEAD`], [`BYTES_SHARED_BLOCK`]).
    fn held_outside(&self) -> usize {
        let buffer = |b: &Bytes| b.len() + ALLOCATION_OVERHEAD + BYTES_SHARED_BLOCK;
        let key = if self.key.capacity() == 0 { 0 } else { self.key.capacity() + ALLOCATION_OVERHEAD };
        key + buffer(&self.plain) + if self.shares_plain() { 0 } else { buffer(&self.with_prev) }
    }
}

/// The changes of one revision, or (`oversized`) none: the revision's rows are more than
/// [`OVERSIZED_REVISION_BYTES`], or its events would hold more than
/// [`OVERSIZED_REVISION_HELD`], and each watch reads them from the history a step at a time.
#[derive(Debug)]
pub struct Batch {
    pub revision: i64,
    pub events: Vec<Encoded>,
    pub oversized: bool,
    /// Bytes of its encoded events: what a stream's turn counts.
    bytes: usize,
    /// The memory it holds, as the window charges it: `bytes` and everything around them (see
    /// `Batch::holds`). Set once it is whole; it never changes after.
    held: usize,
}

impl Batch {
    /// The batches of `changes` (in revision order), one per revision; sequencers name
    /// `cluster_id`.
    pub fn of(changes: Vec<Change>, cluster_id: u64) -> Result<Vec<Batch>, FsmError> {
        Batch::encode_parts(changes.into_iter().map(Part::Change).collect(), cluster_id)
    }

    /// The memory it holds, as the window charges it (and a stream catching up takes ahead).
    pub fn held(&self) -> usize {
        self.held
    }

    /// No events of `revision` (what ends the fragments of an oversized one).
    pub fn empty(revision: i64) -> Batch {
        Batch { revision, events: Vec::new(), oversized: false, bytes: 0, held: 0 }.whole()
    }

    /// The batches of `parts` (in revision order): one per revision, a marker for an oversized
    /// one — by its rows' bytes, or by what its events would hold ([`OVERSIZED_REVISION_HELD`]).
    pub fn of_parts(parts: Vec<Part>, cluster_id: u64) -> Result<Vec<Batch>, FsmError> {
        let batches = Batch::encode_parts(parts, cluster_id)?;
        Ok(batches
            .into_iter()
            .map(|b| if b.held > OVERSIZED_REVISION_HELD { Batch::marker(b.revision) } else { b })
            .collect())
    }

    /// The marker of an oversized revision: no events, read from the history by each watch.
    fn marker(revision: i64) -> Batch {
        Batch { revision, events: Vec::new(), oversized: true, bytes: 0, held: 0 }
    }

    fn encode_parts(parts: Vec<Part>, cluster_id: u64) -> Result<Vec<Batch>, FsmError> {
        let mut out: Vec<Batch> = Vec::new();
        for p in parts {
            let c = match p {
                Part::Change(c) => c,
                Part::Oversized { revision } => {
                    out.push(Batch::marker(revision));
                    continue;
                }
            };
            let e = encode(c, cluster_id)?;
            let bytes = e.1.bytes();
            match out.last_mut() {
                Some(b) if b.revision == e.0 => {
                    b.bytes += bytes;
                    b.events.push(e.1);
                }
                _ => out.push(Batch { revision: e.0, bytes, events: vec![e.1], oversized: false, held: 0 }),
            }
        }
        Ok(out.into_iter().map(Batch::whole).collect())
    }

    /// The batch with its events all in: `held` counted.
    fn whole(mut self) -> Batch {
        self.held = self.holds();
        self
    }

    /// The memory it holds in the window: its own struct in the `Arc`'s allocation (with the
    /// `Arc`'s two counts) and the window's pointer to it; the events' vector, each slot of its
    /// capacity an `Encoded`; and what each event holds outside its slot.
    fn holds(&self) -> usize {
        let arc = std::mem::size_of::<Batch>() + 2 * std::mem::size_of::<usize>() + ALLOCATION_OVERHEAD;
        let slot = std::mem::size_of::<Arc<Batch>>();
        let events = match self.events.capacity() {
            0 => 0,
            capacity => capacity * std::mem::size_of::<Encoded>() + ALLOCATION_OVERHEAD,
        };
        arc + slot + events + self.events.iter().map(Encoded::held_outside).sum::<usize>()
    }
}

/// A change as a `latch.v1.Event`: a key's as it is; a session's, lock's or election's with its
/// row turned into the public message watch.proto names (`WatchCreateRequest.target`).
fn encode(c: Change, cluster_id: u64) -> Result<(i64, Encoded), FsmError> {
    let revision = c.revision;
    let kind = if c.delete { v1::event::EventType::Delete } else { v1::event::EventType::Put };
    let key = c.kv.key.clone();
    let mut kv = key_value(c.kv);
    if !c.delete {
        kv.value = match c.space {
            Space::Kv => kv.value,
            Space::Sessions => {
                let row = SessionRow::decode(kv.value.as_slice()).map_err(|e| corrupt(revision, &e))?;
                let id = String::from_utf8_lossy(&key).into_owned();
                let info = v1::SessionInfo {
                    id,
                    name: row.name,
                    ttl_ms: row.ttl_ms as i64,
                    created_revision: row.created_revision,
                    ..Default::default()
                };
                info.encode_to_vec()
            }
            Space::Registry => {
                let row = InstanceRow::decode(kv.value.as_slice()).map_err(|e| corrupt(revision, &e))?;
                crate::api::registry::instance_info(row).encode_to_vec()
            }
            Space::Locks | Space::Elections => {
                let row = LockRow::decode(kv.value.as_slice()).map_err(|e| corrupt(revision, &e))?;
                let name = String::from_utf8_lossy(&key).into_owned();
                if c.space == Space::Locks {
                    lock_info(name, row).encode_to_vec()
                } else {
                    let leader = elections::leader_of(&name, &row);
                    leader.map(|l| leadership(l, cluster_id)).unwrap_or_default().encode_to_vec()
                }
            }
        };
    }
    let mut event = v1::Event { r#type: kind as i32, kv: Some(kv), prev_kv: None };
    let plain = Bytes::from(event.encode_to_vec());
    event.prev_kv = c.prev_kv.map(key_value);
    let with_prev = if event.prev_kv.is_some() { Bytes::from(event.encode_to_vec()) } else { plain.clone() };
    Ok((revision, Encoded { space: c.space, key, delete: c.delete, plain, with_prev }))
}

fn corrupt(revision: i64, e: &prost::DecodeError) -> FsmError {
    FsmError::Corrupt(format!("table history, revision {revision}: a state row that does not decode: {e}"))
}

/// Reads what the member applied past the window's end into it, a step at a time: on the apply
/// thread right after each commit ([`WatchFeed`]: the new rows are in redb's cache, and the
/// events leave without a task's wake-up before them), and in the feeder task
/// ([`Recent::follow`]) for whatever that left.
struct Feeder {
    recent: Arc<Recent>,
    db: Arc<redb::Database>,
    /// Sequencers in lock and election events name it.
    cluster_id: u64,
    /// Held through a step's read and append: steps never overlap, so none appends a revision
    /// another one appended. It holds the revision the apply thread last left to the feeder
    /// task as too large for its step (0: none): until the window passes it, the apply thread
    /// reads nothing (what it read would stop there again).
    stepping: std::sync::Mutex<i64>,
    /// The newest revision the apply thread committed and left for the feeder task to read.
    wanted: watch::Sender<i64>,
}

/// Who reads a step, which bounds what it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// The feeder task: about [`READ_STEP_BYTES`], a revision whole up to
    /// [`OVERSIZED_REVISION_BYTES`] (past that, a marker).
    Task,
    /// The apply thread: about [`FEED_STEP_BYTES`], and nothing from a revision past that.
    ApplyThread,
}

impl Feeder {
    /// One step of the feeder task, after any other one.
    fn step(&self) -> Result<bool, FsmError> {
        let mut left = self.stepping.lock().unwrap_or_else(|p| p.into_inner());
        self.read_step(Reader::Task, &mut left)
    }

    /// Reads one step of what the member applied past the window's end into it, bounded for
    /// `reader`; `true` when there is more. `left`: see `stepping`.
    fn read_step(&self, reader: Reader, left: &mut i64) -> Result<bool, FsmError> {
        let recent = &self.recent;
        let txn = self.db.begin_read().map_err(|e| FsmError::Corrupt(format!("read transaction: {e}")))?;
        let current = fsm::applied(&txn)?.revision;
        let compact = history::compact_revision_read(&txn)?;
        let last = recent.span().last;
        if current <= last {
            return Ok(false);
        }
        let from = if compact > last {
            // Revisions this window never held were compacted before it read them.
            recent.restart_above(compact);
            compact + 1
        } else {
            last + 1
        };
        let (parts, through) = match reader {
            Reader::Task => history::parts(&txn, from, current, READ_STEP_BYTES, OVERSIZED_REVISION_BYTES)?,
            Reader::ApplyThread => {
                let (mut parts, through) =
                    history::parts(&txn, from, current, FEED_STEP_BYTES, FEED_STEP_BYTES)?;
                if let Some(at) = parts.iter().position(|p| matches!(p, Part::Oversized { .. })) {
                    // A revision past the thread's bound, which may be whole for the task: all
                    // of it is the task's (the bound shapes the work, not the window). The
                    // whole revisions before it go in.
                    let revision = parts[at].revision();
                    parts.truncate(at);
                    if !parts.is_empty() {
                        recent.append(Batch::of_parts(parts, self.cluster_id)?, revision - 1);
                    }
                    *left = revision;
                    return Ok(true);
                }
                (parts, through)
            }
        };
        recent.append(Batch::of_parts(parts, self.cluster_id)?, through);
        Ok(through < current)
    }

    /// Has the feeder task read up to `revision`.
    fn want(&self, revision: i64) {
        self.wanted.send_if_modified(|w| std::mem::replace(w, revision.max(*w)) != *w);
    }
}

impl WatchFeed for Feeder {
    /// One step on the apply thread, bounded by [`FEED_STEP_BYTES`], unless the window holds
    /// `revision` already, is failing (the task retries at its pace), or the feeder task is
    /// stepping: the thread never waits for the task. So when `committed` returns, the window
    /// holds the revision, or the task is told to read it: the task is stepping (a backlog is
    /// ahead of this revision anyway; a revision wanted during a step wakes the task again
    /// after it), the window is failing (the task, once a retry succeeds, finds the revision
    /// wanted even if it read before this commit), a read failed (the task reads it again, and
    /// marks the window failed if that fails too), or the step left more (a backlog, or a
    /// revision past the bound).
    fn committed(&self, revision: i64) {
        let mut left = match self.stepping.try_lock() {
            Ok(left) => left,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                self.want(revision);
                return;
            }
        };
        let last = self.recent.span().last;
        if last >= revision {
            return;
        }
        // Behind a revision left to the task, every read would stop there again.
        if last < *left
            || self.recent.failed().is_some()
            || !matches!(self.read_step(Reader::ApplyThread, &mut left), Ok(false))
        {
            self.want(revision);
        }
    }

    /// The task reads it: a snapshot may hold any number of revisions the window restarts
    /// above, and the raft thread waits for the install to be answered.
    fn installed(&self, revision: i64) {
        self.want(revision);
    }
}

/// What the window covers: revisions `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub first: i64,
    pub last: i64,
}

struct Window {
    span: Span,
    batches: VecDeque<Arc<Batch>>,
    /// The sum of its batches' `held`: at most [`WINDOW_BYTES`] once an append is done.
    bytes: usize,
}

/// The shared window and where streams wait for it to move.
pub struct Recent {
    window: RwLock<Window>,
    /// Why the feeder's last read failed, while it has not read since: streams end
    /// UNAVAILABLE (clients move on).
    failed: std::sync::Mutex<Option<String>>,
    span: watch::Sender<Span>,
    /// Most revisions held.
    max_batches: usize,
    metrics: Arc<Metrics>,
}

impl Recent {
    /// An empty window just above `revision`.
    fn new(revision: i64, max_batches: usize, metrics: Arc<Metrics>) -> Recent {
        let span = Span { first: revision + 1, last: revision };
        Recent {
            window: RwLock::new(Window { span, batches: VecDeque::new(), bytes: 0 }),
            failed: std::sync::Mutex::new(None),
            span: watch::Sender::new(span),
            max_batches,
            metrics,
        }
    }

    /// Starts feeding the window of `node`, holding at most `max_batches` revisions: the
    /// member's apply thread feeds it as it commits, the feeder task what that leaves undone;
    /// the task ends when `stop` fires.
    pub fn start(
        node: NodeHandle,
        max_batches: usize,
        metrics: Arc<Metrics>,
        stop: watch::Receiver<bool>,
    ) -> Result<Arc<Recent>, FsmError> {
        let txn = node.db().begin_read().map_err(|e| FsmError::Corrupt(format!("read transaction: {e}")))?;
        let recent = Arc::new(Recent::new(fsm::applied(&txn)?.revision, max_batches, metrics));
        drop(txn);
        let feeder = Arc::new(Feeder {
            recent: recent.clone(),
            db: node.db().clone(),
            cluster_id: node.cluster_id,
            stepping: std::sync::Mutex::new(0),
            wanted: watch::Sender::new(0),
        });
        // Set before the task's first step: what the apply thread commits from here on, it
        // feeds; what it committed before, the first step reads.
        node.feed_watches(feeder.clone());
        let wanted = feeder.wanted.subscribe();
        tokio::spawn(async move { feeder.recent.follow(|_| feeder.step(), wanted, stop).await });
        Ok(recent)
    }

    /// The feeder task: `step` until the window holds all the member applied, one bounded step
    /// at a time with a yield between, at its start and each time `wanted` names a revision
    /// past the window's end: what the apply thread left (a failed read, a revision of more
    /// than one step; see `Feeder::committed`).
    ///
    /// A step that fails marks the window failed (every stream ends UNAVAILABLE and its client
    /// resumes on another member) and is tried again after [`RETRY_FIRST`], doubling up to
    /// [`RETRY_MOST`]; the first that succeeds clears the mark, and the window goes on from
    /// where it stopped (a failed step appended nothing). Ends when `stop` fires (or `wanted`
    /// ends, which the feeder that holds its sender never lets happen).
    async fn follow(
        &self,
        mut step: impl FnMut(&Recent) -> Result<bool, FsmError>,
        mut wanted: watch::Receiver<i64>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut retry = RETRY_FIRST;
        let mut failing = false;
        let mut woken = false;
        loop {
            let announced = *wanted.borrow_and_update();
            let fed = woken && !failing && announced <= self.span().last;
            woken = true;
            let failure = if fed {
                None
            } else {
                loop {
                    match step(self) {
                        Ok(true) => tokio::task::yield_now().await,
                        Ok(false) => break None,
                        Err(e) => break Some(format!("reading the history failed: {e}")),
                    }
                }
            };
            let stopped = async {
                let _ = stop.wait_for(|s| *s).await;
            };
            match failure {
                None => {
                    if std::mem::take(&mut failing) {
                        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        tracing::info!("watches: this member serves them again");
                        retry = RETRY_FIRST;
                    }
                    tokio::select! {
                        changed = wanted.changed() => if changed.is_err() { return },
                        _ = stopped => return,
                    }
                }
                Some(why) => {
                    tracing::error!(error = %why, retry_in = ?retry, "watches: this member stops serving them");
                    failing = true;
                    *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                    self.span.send_modify(|_| {});
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = stopped => return,
                    }
                    retry = (retry * 2).min(RETRY_MOST);
                }
            }
        }
    }

    fn restart_above(&self, compact: i64) {
        let mut w = self.window.write().unwrap_or_else(|p| p.into_inner());
        w.batches.clear();
        w.bytes = 0;
        w.span = Span { first: compact + 1, last: compact };
        self.span.send_replace(w.span);
    }

    fn append(&self, batches: Vec<Batch>, through: i64) {
        let mut w = self.window.write().unwrap_or_else(|p| p.into_inner());
        for b in batches {
            w.bytes += b.held;
            w.batches.push_back(Arc::new(b));
        }
        while w.bytes > WINDOW_BYTES || w.batches.len() > self.max_batches {
            let Some(old) = w.batches.pop_front() else { break };
            w.bytes -= old.held;
            w.span.first = old.revision + 1;
        }
        w.span.last = w.span.last.max(through);
        self.metrics.watch.window_revisions.set(w.batches.len() as i64);
        self.metrics.watch.window_bytes.set(w.bytes as i64);
        self.span.send_replace(w.span);
    }

    /// Why the feeder's last read failed, while it is failing.
    pub fn failed(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What the window covers now.
    pub fn span(&self) -> Span {
        self.window.read().unwrap_or_else(|p| p.into_inner()).span
    }

    /// Where a stream waits for the window to move.
    pub fn subscribe(&self) -> watch::Receiver<Span> {
        self.span.subscribe()
    }

    /// The batches of revisions `from..` (at most `max`, and past the first, about `max_bytes`),
    /// and the revision they cover through; `None` when `from` is below the window (its
    /// revisions are no longer here).
    pub fn batches_from(&self, from: i64, max: usize, max_bytes: usize) -> Option<(Vec<Arc<Batch>>, i64)> {
        let w = self.window.read().unwrap_or_else(|p| p.into_inner());
        if from < w.span.first {
            return None;
        }
        let start = w.batches.partition_point(|b| b.revision < from);
        let mut bytes = 0;
        let batches: Vec<Arc<Batch>> = w
            .batches
            .iter()
            .skip(start)
            .take(max)
            .take_while(|b| {
                let fits = bytes == 0 || bytes + b.bytes <= max_bytes;
                bytes += b.bytes;
                fits
            })
            .cloned()
            .collect();
        let through = if start + batches.len() < w.batches.len() {
            batches.last().map_or(w.span.last, |b| b.revision)
        } else {
            w.span.last
        };
        Some((batches, through))
    }
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use latch_proto::internal::KeyValue;

    use super::*;

    /// Revisions appended at once, as a feeder's step would.
    const STEP: i64 = 4096;

    /// A put of a 20-byte key with a 20-byte value at `revision`, as the history gives it.
    fn tiny_put(revision: i64) -> Change {
        let kv = KeyValue {
            key: format!("key/{revision:016}").into_bytes(),
            value: vec![b'v'; 20],
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            ..Default::default()
        };
        Change { revision, space: Space::Kv, delete: false, kv, prev_kv: None }
    }

    /// The feeder whose history read fails: streams are told at once, and the read is tried
    /// again 100 ms later, then 200 ms after that, until one succeeds and serves on.
    #[tokio::test(start_paused = true)]
    async fn a_failed_history_read_ends_streams_and_is_tried_again_until_one_succeeds() {
        let recent = Arc::new(Recent::new(0, 100, Arc::new(Metrics::new())));
        let (applied, revisions) = watch::channel(0i64);
        let (_stop, stop) = watch::channel(false);
        let mut told = recent.subscribe();
        told.borrow_and_update();
        let tries = Arc::new(std::sync::Mutex::new(Vec::new()));
        let feeder = recent.clone();
        let seen = tries.clone();
        tokio::spawn(async move {
            let step = move |r: &Recent| {
                let mut seen = seen.lock().expect("the test's lock");
                seen.push(tokio::time::Instant::now());
                if seen.len() <= 2 {
                    return Err(FsmError::Corrupt("the disk said no".into()));
                }
                let last = r.span().last;
                if last < 1 {
                    r.append(Batch::of(vec![tiny_put(1)], 1)?, 1);
                }
                Ok(false)
            };
            feeder.follow(step, revisions, stop).await
        });
        let started = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let why = recent.failed().expect("after a failed read the window is marked failed");
        assert!(why.contains("the disk said no"), "the mark names the read's error, got {why:?}");
        assert!(
            told.has_changed().expect("the window lives"),
            "streams waiting on the window are woken to end"
        );

        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(tries.lock().expect("lock").len(), 2, "one retry 100 ms after the failure");
        assert!(recent.failed().is_some(), "still failed after a second failed read");

        tokio::time::sleep(Duration::from_millis(200)).await;
        let at: Vec<u128> = tries.lock().expect("lock").iter().map(|t| (*t - started).as_millis()).collect();
        assert_eq!(at, vec![0, 100, 300], "tries at 0, then 100 ms and 200 ms more (doubling)");
        assert_eq!(recent.failed(), None, "a read that succeeds clears the mark");
        assert_eq!(recent.span(), Span { first: 1, last: 1 }, "the window went on from where it stopped");

        // Back to following what is wanted: a new revision is read without waiting.
        applied.send_replace(2);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(tries.lock().expect("lock").len(), 4, "a new applied revision is read at once");
    }

    /// A store and a feeder of an empty window over it, as `Recent::start` builds them.
    fn fed_store() -> (Arc<redb::Database>, Feeder) {
        let db = Arc::new(crate::fsm::testing::Store::new().db);
        let feeder = Feeder {
            recent: Arc::new(Recent::new(0, 100, Arc::new(Metrics::new()))),
            db: db.clone(),
            cluster_id: 1,
            stepping: std::sync::Mutex::new(0),
            wanted: watch::Sender::new(0),
        };
        (db, feeder)
    }

    /// Applies and commits a put as the apply thread does, at log index `index`; its revision.
    fn commit_put(db: &redb::Database, index: u64, key: &str, value: &str) -> i64 {
        use crate::fsm::testing::{command, put};
        let txn = db.begin_write().expect("a write transaction begins");
        let data = command(&format!("r{index}"), put(key, value)).encode_to_vec();
        let applied = fsm::apply_entry(&txn, index, 1, &data, &fsm::Bounds::default()).expect("applies");
        txn.commit().expect("commits");
        applied.expect("a put has an outcome").outcome.revision
    }

    /// What the apply thread does after a commit: the revision is in the window, encoded, when
    /// `committed` returns, with no task running; while the window is failing it is left to
    /// the feeder task's retries, whose step then reads it.
    #[test]
    fn a_committed_revision_is_in_the_window_when_the_apply_thread_returns_from_feeding_it() {
        let (db, feeder) = fed_store();
        let (recent, wanted) = (feeder.recent.clone(), feeder.wanted.subscribe());
        let commit = |index: u64, key: &str| commit_put(&db, index, key, "v");
        let keys = |from: i64| -> Vec<Vec<u8>> {
            let (batches, _) = recent.batches_from(from, 10, usize::MAX).expect("in the window");
            batches.iter().flat_map(|b| b.events.iter().map(|e| e.key.clone())).collect()
        };

        let first = commit(1, "a");
        feeder.committed(first);
        assert_eq!(recent.span(), Span { first: 1, last: first }, "the committed revision is in the window");
        assert_eq!(keys(1), vec![b"a".to_vec()], "with its change encoded");
        assert!(!wanted.has_changed().expect("the feeder lives"), "and the feeder task is not woken");

        *recent.failed.lock().expect("the test's lock") = Some("the disk said no".into());
        let second = commit(2, "b");
        feeder.committed(second);
        assert_eq!(recent.span().last, first, "a failing window is left to the feeder task");
        assert!(
            wanted.has_changed().expect("the feeder lives"),
            "which is told the revision is wanted, so a retry that read before the commit still reads it"
        );
        *recent.failed.lock().expect("the test's lock") = None;
        assert!(!feeder.step().expect("the task's step reads"), "one step reads what is left");
        assert_eq!(recent.span().last, second);
        assert_eq!(keys(1), vec![b"a".to_vec(), b"b".to_vec()], "each revision once, in order");
        feeder.committed(second);
        assert_eq!(keys(1).len(), 2, "a revision the window holds is not read again");
    }

    /// Every write waits for the apply thread's feed, so it reads no revision larger than its
    /// bound, even one the window holds whole: the feeder task reads that one.
    #[test]
    fn the_apply_thread_leaves_a_revision_larger_than_its_step_to_the_feeder_task() {
        let (db, feeder) = fed_store();
        let (recent, wanted) = (feeder.recent.clone(), feeder.wanted.subscribe());
        let value = "v".repeat(FEED_STEP_BYTES + 1);
        let revision = commit_put(&db, 1, "big", &value);

        feeder.committed(revision);
        assert_eq!(recent.span().last, 0, "a revision past FEED_STEP_BYTES is not read on the apply thread");
        assert_eq!(*wanted.borrow(), revision, "the feeder task is told to read it");

        assert!(!feeder.step().expect("the task's step reads"), "the task reads it in one step");
        let (batches, _) = recent.batches_from(1, 10, usize::MAX).expect("in the window");
        assert_eq!(batches.len(), 1, "whole, in one batch (it is far under OVERSIZED_REVISION_BYTES)");
        assert_eq!(batches[0].events.len(), 1);
        assert_eq!(batches[0].events[0].key, b"big".to_vec());
    }

    /// The whole revisions before a large one go in; the large one and everything after it
    /// wait for the task (the apply thread does not even read them: each commit would stop
    /// there again), which then reads the rest, each revision once and in order.
    #[test]
    fn the_apply_thread_feeds_the_revisions_before_a_large_one_and_leaves_the_rest_to_the_task() {
        let (db, feeder) = fed_store();
        let (recent, wanted) = (feeder.recent.clone(), feeder.wanted.subscribe());
        let small = commit_put(&db, 1, "a", "v");
        let big = commit_put(&db, 2, "big", &"v".repeat(FEED_STEP_BYTES + 1));
        let after = commit_put(&db, 3, "c", "v");

        feeder.committed(after);
        assert_eq!(recent.span().last, small, "the revision before the large one is in the window");
        assert_eq!(*wanted.borrow(), after, "the task is told to read the rest");
        assert_eq!(
            *feeder.stepping.lock().expect("the test's lock"),
            big,
            "the large revision is the task's"
        );

        let later = commit_put(&db, 4, "d", "v");
        feeder.committed(later);
        assert_eq!(recent.span().last, small, "nothing is read behind the task's revision");
        assert_eq!(*wanted.borrow(), later);

        assert!(!feeder.step().expect("the task's step reads"), "the task reads the rest in one step");
        let (batches, _) = recent.batches_from(1, 10, usize::MAX).expect("in the window");
        let keys: Vec<&[u8]> =
            batches.iter().flat_map(|b| b.events.iter().map(|e| e.key.as_slice())).collect();
        assert_eq!(keys, vec![&b"a"[..], b"big", b"c", b"d"], "each revision once, in order");

        let last = commit_put(&db, 5, "e", "v");
        feeder.committed(last);
        assert_eq!(recent.span().last, last, "past the large revision, the apply thread feeds again");
    }

    /// The apply thread never waits for the feeder task: while a step holds the window's
    /// reader, a commit only tells the task, which reads it after its step.
    #[test]
    fn a_commit_during_the_feeder_tasks_step_is_left_to_the_task_without_waiting() {
        let (db, feeder) = fed_store();
        let feeder = Arc::new(feeder);
        let (recent, wanted) = (feeder.recent.clone(), feeder.wanted.subscribe());
        let revision = commit_put(&db, 1, "a", "v");
        let stepping = feeder.stepping.lock().expect("the test's lock");
        let (done, returned) = std::sync::mpsc::channel();
        let committing = feeder.clone();
        std::thread::spawn(move || {
            committing.committed(revision);
            let _ = done.send(());
        });
        // Only a failure waits this long: a thread blocked on the task's lock never returns.
        returned
            .recv_timeout(Duration::from_secs(10))
            .expect("committed returns while the task holds its lock, without waiting for it");
        assert_eq!(recent.span().last, 0, "nothing read while the task steps");
        assert_eq!(*wanted.borrow(), revision, "the task is told to read it");
        drop(stepping);
        assert!(!feeder.step().expect("the task's step reads"));
        assert_eq!(recent.span().last, revision, "the task's next step reads it");
    }

    #[test]
    fn the_window_charges_each_tiny_event_its_structs_and_allocations_and_evicts_by_them() {
        let one = Batch::of(vec![tiny_put(1)], 1).expect("a put encodes");
        let event = &one[0].events[0];
        assert_eq!(event.key.len(), 20, "the test's keys are 20 bytes");
        let payload = event.key.len() + event.plain.len();
        let at_least = size_of::<Encoded>() + payload;
        assert!(
            one[0].held >= at_least,
            "a revision of one tiny event is charged {} bytes: expected at least its struct ({}) and \
             its payload ({payload})",
            one[0].held,
            size_of::<Encoded>()
        );

        // Filled with such revisions, the window holds no more of them than fit in its bound at
        // that charge: it drops the oldest before.
        let metrics = Arc::new(Metrics::new());
        let recent = Recent::new(0, usize::MAX, metrics.clone());
        let most = WINDOW_BYTES / at_least;
        let mut last = 0;
        while recent.span().first == 1 && last <= most as i64 {
            let batches =
                Batch::of((last + 1..=last + STEP).map(tiny_put).collect(), 1).expect("puts encode");
            last += STEP;
            recent.append(batches, last);
        }
        let w = recent.window.read().expect("no writer panicked");
        assert!(
            w.span.first > 1,
            "after {last} revisions the window still held the first: at {at_least} bytes or more each, \
             at most {most} fit in {WINDOW_BYTES} bytes"
        );
        assert!(
            w.batches.len() <= most,
            "the window holds {} revisions: expected at most {most}, at {at_least} bytes or more each",
            w.batches.len()
        );
        assert_eq!(w.span.last, last, "the window reaches the last revision appended");
        assert_eq!(
            w.span.first,
            w.batches.front().map_or(last + 1, |b| b.revision),
            "the window covers from its oldest batch on"
        );
        let charged: usize = w.batches.iter().map(|b| b.held).sum();
        assert_eq!(w.bytes, charged, "the window's bytes are what its batches are charged");
        assert!(w.bytes <= WINDOW_BYTES, "the window holds {} bytes, over its bound", w.bytes);
        assert_eq!(
            metrics.watch.window_bytes.get(),
            w.bytes as i64,
            "latch_watch_window_bytes says what the window is charged"
        );
    }

    #[test]
    fn a_revision_of_more_tiny_events_than_a_quarter_of_the_window_holds_is_a_marker_and_keeps_the_window() {
        let metrics = Arc::new(Metrics::new());
        let recent = Recent::new(0, usize::MAX, metrics);
        recent.append(Batch::of_parts(vec![Part::Change(tiny_put(1))], 1).expect("encodes"), 1);
        // One revision (one delete of many short keys, say) of events that would hold more
        // than OVERSIZED_REVISION_HELD, with rows far under OVERSIZED_REVISION_BYTES.
        let held_each = Batch::of(vec![tiny_put(2)], 1).expect("encodes")[0].held;
        let n = OVERSIZED_REVISION_HELD / held_each * 2;
        let big: Vec<Part> = (0..n)
            .map(|i| {
                let mut c = tiny_put(2);
                c.kv.key = format!("k{i}").into_bytes();
                Part::Change(c)
            })
            .collect();
        let batches = Batch::of_parts(big, 1).expect("encodes");
        assert_eq!(batches.len(), 1, "one revision, one batch");
        assert!(
            batches[0].oversized && batches[0].events.is_empty(),
            "a revision of {n} tiny events is a marker, read from the history by each watch"
        );
        recent.append(batches, 2);
        let w = recent.window.read().expect("no writer panicked");
        assert_eq!(
            (w.span.first, w.span.last),
            (1, 2),
            "the window keeps the revision before and holds the marker: no watch falls out of it"
        );
    }
}
