//! The node driver: one OS thread owns the [`Core`], feeds it ticks from the monotonic clock,
//! client requests and peer messages from one channel, and carries out its actions: messages
//! to the transport, replies to the waiting RPCs.
//!
//! Group commit: while the thread is inside a Ready (one fsync), new requests queue in the
//! channel; the next turn drains them all into raft before asking for the next Ready, so they
//! share one write transaction.
//!
//! Other tasks reach the node through a [`NodeHandle`]: `propose`, `read_index`, and a shared
//! [`Status`] snapshot refreshed every turn (term, leader, role, applied index).
//!
//! Bounded memory: a client request takes bytes from the member's pending budget
//! (`--max-pending-bytes`) before it is queued, and gives them back only when it is answered
//! (applied, failed or timed out), so the queue and the core's waiting requests together stay
//! within it; past it a request is refused as overloaded. Raft messages from peers take bytes
//! from the peer-queue budget (`--max-peer-queue-bytes`) until the core has stepped them; past
//! it they are dropped, which raft tolerates (it resends).
//!
//! Each turn also refreshes the raft [`RaftMetrics`] from the status, and times the Ready's
//! commit and apply through the core's [`ReadyObserver`] hook.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::eraftpb::Message;
use redb::Database;
use tokio::sync::oneshot;

pub mod apply;
pub mod budget;
pub mod deadline;
pub mod freshness;
pub mod hash_points;
pub mod inbox;
pub mod lock_hub;

use crate::core::membership::Configuration;
use crate::core::{
    Action, Applier, Core, CoreError, Grant, Progress, ReadyObserver, RequestError, Retry, Snapshots, Status,
    Waiter,
};
use crate::metrics::{Metrics, RaftMetrics};
use budget::{Budget, Permit};
pub use freshness::Freshness;
use latch_proto::internal::{Command, Outcome};
pub use lock_hub::LockHub;

/// What a waiting read costs the pending budget: its reply channel and its place in the core.
pub const READ_BYTES: usize = 256;
/// What a proposal costs besides its encoded command.
pub const PROPOSAL_OVERHEAD_BYTES: usize = 256;

/// Most events taken from the channel in one turn, so that ticks keep their pace under load.
const MAX_EVENTS_PER_TURN: usize = 4096;

/// What other tasks ask of the node. Client requests and peer messages carry the permit of
/// the bytes they hold.
pub enum Event {
    Propose {
        cmd: Command,
        reply: oneshot::Sender<Result<Outcome, RequestError>>,
        permit: Permit,
    },
    Read {
        reply: oneshot::Sender<Result<(), RequestError>>,
        permit: Permit,
    },
    /// A serializable read waiting for the state to catch up after a restart.
    ReadCaughtUp {
        reply: oneshot::Sender<Result<(), RequestError>>,
        permit: Permit,
    },
    KeepAlive {
        session: String,
        reply: oneshot::Sender<Result<Grant, RequestError>>,
        permit: Permit,
    },
    /// The leases left of these sessions, as this member counts them.
    Leases {
        sessions: Vec<String>,
        reply: oneshot::Sender<Vec<Option<u64>>>,
    },
    /// This empty data dir is not the member's first life (`core::Core::lived_before`);
    /// `done` is told once the status shows it.
    LivedBefore {
        done: oneshot::Sender<()>,
    },
    /// Make a voter a learner, to start again on an empty data dir (`core::membership`).
    Replace {
        member: u64,
        reply: oneshot::Sender<Result<u64, RequestError>>,
    },
    /// Add a member to the cluster, as a learner at its peer address (`core::membership`).
    Add {
        member: u64,
        peer_addr: String,
        reply: oneshot::Sender<Result<u64, RequestError>>,
    },
    /// Remove a member from the cluster for good (`core::membership`).
    Remove {
        member: u64,
        reply: oneshot::Sender<Result<u64, RequestError>>,
    },
    /// A peer's configuration no longer has this member (it refused its raft messages, or its
    /// status says so): it was removed.
    RemovedBy(u64),
    Peer(Box<Message>, Permit),
    /// The apply thread's progress.
    Applied(Progress),
    /// The apply thread failed: the member stops.
    ApplyFailed(CoreError),
    Unreachable(u64),
    SnapshotSent {
        peer: u64,
        ok: bool,
    },
    Stop,
}

/// Where the driver hands outgoing raft messages; implemented by the peer transport.
/// `send` must not block: it runs on the driver thread.
pub trait Outbox: Send + 'static {
    fn send(&mut self, msgs: Vec<Message>);
}

/// What a request waits for, in a member's words when it is not served in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waited {
    /// A write, and what its caller can do if it stays unanswered.
    Write(Retry),
    Read,
    KeepAlive,
}

impl Waited {
    fn what(self) -> &'static str {
        match self {
            Waited::Write(_) => "commit the write",
            Waited::Read => "confirm with a leader that its state is current",
            Waited::KeepAlive => "renew the session's lease",
        }
    }
}

/// A cheap, cloneable way to talk to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    events: mpsc::Sender<Event>,
    /// Bytes of client requests held (`--max-pending-bytes`).
    pending: Arc<Budget>,
    /// Bytes of peer messages queued (`--max-peer-queue-bytes`).
    peer_queue: Arc<Budget>,
    snapshots: Arc<Snapshots>,
    status: Arc<Mutex<Status>>,
    /// Whether the driver thread runs and turns (for `/health`).
    pulse: Arc<Pulse>,
    db: Arc<Database>,
    locks: Arc<LockHub>,
    /// The newest revision whose changes this member applied and committed (for DNS, and
    /// [`NodeHandle::applied_revision`]; watches are fed by the apply thread, `apply::WatchFeed`).
    revisions: Arc<tokio::sync::watch::Sender<i64>>,
    /// What the apply thread feeds each commit's changes to (the watch window), once set.
    feed: apply::Feed,
    /// Who votes and who learns, as this member last applied it.
    configuration: Arc<tokio::sync::watch::Sender<Configuration>>,
    pub member_id: u64,
    pub cluster_id: u64,
}

impl NodeHandle {
    /// Proposes a command and waits until it is applied on this node; `retry` says what its
    /// caller can do if it stays unanswered (whether it named the command's request id).
    pub async fn propose(&self, cmd: Command, retry: Retry) -> Result<Outcome, RequestError> {
        let permit = self.take_pending(prost::Message::encoded_len(&cmd) + PROPOSAL_OVERHEAD_BYTES)?;
        let (reply, rx) = oneshot::channel();
        self.events
            .send(Event::Propose { cmd, reply, permit })
            .map_err(|_| RequestError::ShuttingDown { proposed: false })?;
        // Taken by the core, the command may be in the log whatever stops the member now.
        self.answer(rx, Waited::Write(retry)).await.map_err(|e| match e {
            RequestError::ShuttingDown { .. } => RequestError::ShuttingDown { proposed: true },
            e => e,
        })
    }

    /// Waits until a linearizable read may be served from this node's applied state.
    pub async fn read_index(&self) -> Result<(), RequestError> {
        self.read_index_holding(0).await
    }

    /// [`NodeHandle::read_index`] for a request that holds `bytes` of the member's memory while
    /// it waits (a txn that writes nothing): counted against `--max-pending-bytes` as a write
    /// of that size is.
    pub async fn read_index_holding(&self, bytes: usize) -> Result<(), RequestError> {
        let permit = self.take_pending(READ_BYTES.saturating_add(bytes))?;
        self.read_index_with(permit).await
    }

    /// [`NodeHandle::read_index`] for the member's freshness check (`node::freshness`), one at
    /// a time: never refused for the client requests the member holds, which fill up exactly
    /// when it is cut off.
    pub async fn read_index_for_freshness(&self) -> Result<(), RequestError> {
        self.read_index_with(self.pending.take_beyond(READ_BYTES)).await
    }

    async fn read_index_with(&self, permit: Permit) -> Result<(), RequestError> {
        let (reply, rx) = oneshot::channel();
        self.events
            .send(Event::Read { reply, permit })
            .map_err(|_| RequestError::ShuttingDown { proposed: false })?;
        self.answer(rx, Waited::Read).await
    }

    /// Waits until a serializable read may be served from this node's applied state: at once,
    /// unless the member restarted and its state has not caught up with its log yet.
    pub async fn read_serializable(&self) -> Result<(), RequestError> {
        if self.status().caught_up {
            return Ok(());
        }
        let permit = self.take_pending(READ_BYTES)?;
        let (reply, rx) = oneshot::channel();
        self.events
            .send(Event::ReadCaughtUp { reply, permit })
            .map_err(|_| RequestError::ShuttingDown { proposed: false })?;
        self.answer(rx, Waited::Read).await
    }

    /// Keeps a session alive: answered by the leader only (see `core::leases`).
    pub async fn keep_alive(&self, session: String) -> Result<Grant, RequestError> {
        let permit = self.take_pending(session.len() + READ_BYTES)?;
        let (reply, rx) = oneshot::channel();
        self.events
            .send(Event::KeepAlive { session, reply, permit })
            .map_err(|_| RequestError::ShuttingDown { proposed: false })?;
        self.answer(rx, Waited::KeepAlive).await
    }

    /// The leases left of `sessions` in milliseconds as this member counts them (`None`: not
    /// live here).
    pub async fn leases(&self, sessions: Vec<String>) -> Result<Vec<Option<u64>>, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.events
            .send(Event::Leases { sessions, reply })
            .map_err(|_| RequestError::ShuttingDown { proposed: false })?;
        rx.await.map_err(|_| RequestError::ShuttingDown { proposed: false })
    }

    /// Tells the core that its empty data dir is not the member's first life
    /// (`core::Core::lived_before`), and waits until the status it publishes shows it (a
    /// serializable read looks at that status first); before the member serves anything.
    pub async fn lived_before(&self) -> Result<(), RequestError> {
        let (done, shown) = oneshot::channel();
        self.events
            .send(Event::LivedBefore { done })
            .map_err(|_| RequestError::ShuttingDown { proposed: false })?;
        shown.await.map_err(|_| RequestError::ShuttingDown { proposed: false })
    }

    /// As leader, makes voter `member` a learner (`core::Core::replace`): the index of the
    /// change's entry, once this member's state holds it (0: it was a learner already).
    pub async fn replace(&self, member: u64) -> Result<u64, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.events
            .send(Event::Replace { member, reply })
            .map_err(|_| RequestError::ShuttingDown { proposed: false })?;
        rx.await.map_err(|_| RequestError::ShuttingDown { proposed: false })?
    }

    /// As leader, adds `member` at `peer_addr` as a learner (`core::Core::add`): the index of
    /// the change's entry, once this member's state holds it (0: it was that learner already).
    pub async fn add(&self, member: u64, peer_addr: String) -> Result<u64, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.events
            .send(Event::Add { member, peer_addr, reply })
            .map_err(|_| RequestError::ShuttingDown { proposed: false })?;
        rx.await.map_err(|_| RequestError::ShuttingDown { proposed: false })?
    }

    /// As leader, removes `member` from the cluster (`core::Core::remove`): the index of the
    /// change's entry, once this member's state holds it.
    pub async fn remove(&self, member: u64) -> Result<u64, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.events
            .send(Event::Remove { member, reply })
            .map_err(|_| RequestError::ShuttingDown { proposed: false })?;
        rx.await.map_err(|_| RequestError::ShuttingDown { proposed: false })?
    }

    /// Who votes and who learns, as this member last applied it.
    pub fn configuration(&self) -> Configuration {
        self.configuration.borrow().clone()
    }

    /// The configuration as this member applies it, change by change.
    pub fn watch_configuration(&self) -> tokio::sync::watch::Receiver<Configuration> {
        self.configuration.subscribe()
    }

    /// Whether this member's applied configuration has `member`, one the cluster had, neither
    /// voting nor learning: removed.
    pub fn has_removed(&self, member: u64) -> bool {
        self.configuration.borrow().removed.contains(&member)
    }

    /// The core's answer to a request, or, when the request's caller set a deadline
    /// ([`deadline`]) and it comes first, why the request is still unanswered.
    async fn answer<T>(
        &self,
        rx: oneshot::Receiver<Result<T, RequestError>>,
        waited: Waited,
    ) -> Result<T, RequestError> {
        let Some(by) = deadline::answer_by() else {
            return rx.await.map_err(|_| RequestError::ShuttingDown { proposed: false })?;
        };
        let since = tokio::time::Instant::now();
        let committed_then = self.status().commit_index;
        match tokio::time::timeout_at(by, rx).await {
            Ok(answer) => answer.map_err(|_| RequestError::ShuttingDown { proposed: false })?,
            Err(_) => Err(RequestError::Unanswered {
                member: self.member_id,
                what: waited.what(),
                waited_ms: since.elapsed().as_millis() as u64,
                why: self.why_unanswered(waited, committed_then),
                write: match waited {
                    Waited::Write(retry) => Some(retry),
                    Waited::Read | Waited::KeepAlive => None,
                },
            }),
        }
    }

    /// What this member knows of why a request of its has waited: whom it takes for the leader,
    /// and whether its own apply is behind (a request waits for that too: a lagging member is
    /// not its leader's fault). Behind means it has not applied, in all the time the request
    /// waited, the entries it knew committed when the request came (`committed_then`): entries
    /// committed a moment before the deadline are on their way to the apply thread, and say
    /// nothing of it, however many a busy cluster commits; an apply stalled on a quiet one is
    /// still caught.
    fn why_unanswered(&self, waited: Waited, committed_then: u64) -> String {
        let status = self.status();
        let lag = match status.applied.index < committed_then {
            false => String::new(),
            true => format!(
                "; it has applied index {}, short of the {committed_then} it knew committed when the \
                 request came ({} it knows committed now: its state machine is slow, or catching up)",
                status.applied.index, status.commit_index
            ),
        };
        format!("{}{lag}", self.whom_it_waited_on(waited, status))
    }

    fn whom_it_waited_on(&self, waited: Waited, status: Status) -> String {
        // A raft thread silent for longer than it is while it waits for work is why, whatever
        // its status, which is as of its last turn, says of a leader.
        let silent = self.pulse.silent(self.pulse.base.elapsed());
        if !self.is_running() || silent > self.pulse.slow_after {
            return Pulse::stuck(silent);
        }
        let Status { id, leader, term, role, .. } = status;
        if leader == 0 {
            return format!(
                "it knows no leader (it is a {} in term {term}): an election is under way, or no \
                 quorum of members is reachable",
                role.as_str()
            );
        }
        let what = match waited {
            Waited::Write(_) => "committed it",
            Waited::Read | Waited::KeepAlive => "confirmed its leadership",
        };
        if leader == id {
            format!("it leads in term {term}, but no quorum of members has {what} (the others are down or cut off?)")
        } else {
            format!(
                "its leader, member {leader} (term {term}), has not {what}: the leader may be cut off \
                 from a quorum, or this member from the leader"
            )
        }
    }

    fn take_pending(&self, bytes: usize) -> Result<Permit, RequestError> {
        self.pending.try_take(bytes).ok_or(RequestError::Overloaded {
            member: self.member_id,
            what: "the client requests it holds",
            limit: self.pending.limit() as u64,
            flag: "--max-pending-bytes",
        })
    }

    /// Hands the node a raft message from a peer, if the peer queue has room for its `bytes`;
    /// `false` when it was dropped (raft resends) or the node is gone.
    pub fn deliver(&self, msg: Message, bytes: usize) -> bool {
        match self.peer_queue.try_take(bytes) {
            Some(permit) => self.events.send(Event::Peer(Box::new(msg), permit)).is_ok(),
            None => false,
        }
    }

    /// Hands the node a transport report (unreachable peer, finished snapshot).
    pub fn send(&self, ev: Event) -> bool {
        self.events.send(ev).is_ok()
    }

    /// The member's snapshots (outgoing ones to stream, the inbox for incoming ones).
    pub fn snapshots(&self) -> &Arc<Snapshots> {
        &self.snapshots
    }

    /// Bytes of client requests held now.
    pub fn pending_bytes(&self) -> usize {
        self.pending.used()
    }

    pub fn status(&self) -> Status {
        match self.status.lock() {
            Ok(s) => *s,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    pub fn db(&self) -> &Arc<Database> {
        &self.db
    }

    /// Where lock waiters and election observers learn of this member's applied changes.
    pub fn locks(&self) -> &Arc<LockHub> {
        &self.locks
    }

    /// The newest revision with changes this member applied (its state holds them), as
    /// announced by the apply thread when it committed them.
    pub fn applied_revision(&self) -> i64 {
        *self.revisions.borrow()
    }

    /// The newest revision with changes this member applied (its state holds them), moving
    /// forward as it applies more: where DNS learns there is something new to read.
    pub fn revisions(&self) -> tokio::sync::watch::Receiver<i64> {
        self.revisions.subscribe()
    }

    /// Has the apply thread hand `feed` each revision it commits, before announcing it; the
    /// first feed set stays (a member has one watch window).
    pub fn feed_watches(&self, feed: Arc<dyn apply::WatchFeed>) {
        let _ = self.feed.set(feed);
    }

    /// Whether the driver thread still runs (it ends on `Stop` or a fatal error; it may be
    /// stuck: [`NodeHandle::liveness`]).
    pub fn is_running(&self) -> bool {
        self.pulse.running.load(Ordering::Acquire)
    }

    /// `Ok` while the driver thread runs and turns; else why not (`/health`, `/ready`).
    pub fn liveness(&self) -> Result<(), String> {
        self.pulse.check(self.pulse.base.elapsed())
    }
}

/// The byte budgets of a node (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    pub max_pending_bytes: usize,
    pub max_peer_queue_bytes: usize,
}

/// The running driver thread.
pub struct Node {
    handle: NodeHandle,
    thread: std::thread::JoinHandle<Result<(), CoreError>>,
}

impl Node {
    /// Starts the driver thread. `outbox` is built by `make_outbox` from the node's handle, so
    /// that the transport can report back (unreachable peers, finished snapshots). The driver
    /// keeps `metrics.raft` up to date.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        core: Core,
        applier: Applier,
        cluster_id: u64,
        tick: Duration,
        budgets: Budgets,
        metrics: Arc<Metrics>,
        make_outbox: impl FnOnce(NodeHandle) -> Box<dyn Outbox>,
    ) -> std::io::Result<Node> {
        let (tx, rx) = mpsc::channel();
        let handle = NodeHandle {
            events: tx,
            pending: Budget::new(budgets.max_pending_bytes),
            peer_queue: Budget::new(budgets.max_peer_queue_bytes),
            snapshots: core.snapshots().clone(),
            status: Arc::new(Mutex::new(core.status())),
            pulse: Arc::new(Pulse::new(tick)),
            db: core.state_db().clone(),
            locks: Arc::new(LockHub::default()),
            revisions: Arc::new(tokio::sync::watch::Sender::new(core.status().applied.revision)),
            feed: apply::Feed::default(),
            configuration: Arc::new(tokio::sync::watch::Sender::new(core.configuration())),
            member_id: core.id(),
            cluster_id,
        };
        let outbox = make_outbox(handle.clone());
        let status = handle.status.clone();
        let budgets = [handle.pending.clone(), handle.peer_queue.clone()];
        let (pulse, apply_pulse) = (handle.pulse.clone(), handle.pulse.clone());
        let in_flight = apply::InFlight::default();
        let hubs =
            (handle.locks.clone(), handle.revisions.clone(), handle.configuration.clone(), in_flight.clone());
        let (jobs, queued) = apply::queue();
        let (events, apply_metrics) = (handle.events.clone(), metrics.clone());
        let (announce, feed) = (handle.revisions.clone(), handle.feed.clone());
        let applying =
            std::thread::Builder::new().name(format!("latch-apply-{}", core.id())).spawn(move || {
                apply::run(
                    applier,
                    queued,
                    (events, announce, feed, in_flight),
                    &apply_pulse,
                    &apply_metrics.raft,
                )
            })?;
        let thread =
            std::thread::Builder::new().name(format!("latch-node-{}", core.id())).spawn(move || {
                let _running = RunningFlag(pulse.clone());
                let result = drive(core, rx, outbox, jobs, (status, &pulse), tick, &metrics, budgets, hubs);
                // The queue is closed (`jobs` dropped): the apply thread finishes what it has.
                let _ = applying.join();
                result
            })?;
        Ok(Node { handle, thread })
    }

    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops the driver, failing whatever still waits, and returns how it ended.
    pub fn stop(self) -> Result<(), CoreError> {
        let _ = self.handle.events.send(Event::Stop);
        match self.thread.join() {
            Ok(r) => r,
            Err(_) => Err(CoreError::Panicked),
        }
    }

    /// Whether the driver thread has ended (by `Stop` or a fatal error).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// Whether the driver thread runs, and when the member last made progress: a turn of the
/// driver, a job of the apply thread taken or done, a second of a snapshot's install waited
/// for. A running driver turns at least once a tick, and a turn's work — its log's fsync among
/// it — takes far less than [`STALLED_AFTER`]; what it may wait for longer (the apply thread,
/// with the apply queue full or a snapshot to install) beats for it. A member without a beat
/// for longer is stuck (a disk that hangs in a write or fsync, frozen by `fsfreeze` or
/// failing), and, its status and answers being as of its last turn, not healthy, however its
/// threads that answer look.
struct Pulse {
    base: Instant,
    /// Milliseconds since `base` at the start of the driver's last turn.
    turned_ms: AtomicU64,
    running: AtomicBool,
    /// [`STALLED_AFTER`], or three ticks if that is longer.
    stalled_after: Duration,
    /// A second, or two ticks if that is longer: a running driver turns at least once a tick.
    slow_after: Duration,
}

/// How long a driver may go without turning before the member is unhealthy, at least.
const STALLED_AFTER: Duration = Duration::from_secs(5);

impl Pulse {
    fn new(tick: Duration) -> Pulse {
        Pulse {
            base: Instant::now(),
            turned_ms: AtomicU64::new(0),
            running: AtomicBool::new(true),
            stalled_after: STALLED_AFTER.max(tick.saturating_mul(3)),
            slow_after: Duration::from_secs(1).max(tick.saturating_mul(2)),
        }
    }

    fn beat(&self) {
        self.turned_ms.store(self.base.elapsed().as_millis() as u64, Ordering::Release);
    }

    /// Whether the driver runs and has turned recently, `now` after `base`.
    fn check(&self, now: Duration) -> Result<(), String> {
        if !self.running.load(Ordering::Acquire) {
            return Err("the node has stopped".into());
        }
        let silent = self.silent(now);
        if silent > self.stalled_after {
            return Err(Pulse::stuck(silent));
        }
        Ok(())
    }

    /// How long before `now` the member last made progress.
    fn silent(&self, now: Duration) -> Duration {
        now.saturating_sub(Duration::from_millis(self.turned_ms.load(Ordering::Acquire)))
    }

    fn stuck(silent: Duration) -> String {
        format!(
            "the raft thread has not turned for {} (stuck, perhaps in a disk write or fsync that does \
             not return)",
            humantime::format_duration(Duration::from_millis(silent.as_millis() as u64))
        )
    }
}

/// Marks the driver stopped when the driver thread ends, however it ends.
struct RunningFlag(Arc<Pulse>);

impl Drop for RunningFlag {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

/// Times the Ready's commit and apply for the metrics (the core has no clock).
struct ReadyTimer<'a> {
    metrics: &'a RaftMetrics,
    commit_started: Option<Instant>,
}

impl ReadyObserver for ReadyTimer<'_> {
    fn commit_started(&mut self) {
        self.commit_started = Some(Instant::now());
    }

    fn commit_finished(&mut self, entries_persisted: usize) {
        if let Some(t) = self.commit_started.take() {
            self.metrics.ready_commit_seconds.observe(t.elapsed().as_secs_f64());
        }
        self.metrics.ready_entries.observe(entries_persisted as f64);
    }
}

/// Refreshes the gauges from this turn's status and counts what changed since the last one.
fn record_status(m: &RaftMetrics, before: &Status, now: &Status) {
    m.compacted_index.set(i64::try_from(now.compacted_index).unwrap_or(i64::MAX));
    m.log_cached_bytes.set(i64::try_from(now.log_cached_bytes).unwrap_or(i64::MAX));
    m.reads_awaiting_apply.set(i64::try_from(now.reads_awaiting_apply).unwrap_or(i64::MAX));
    m.sessions.set(i64::try_from(now.sessions).unwrap_or(i64::MAX));
    m.durable_index.set(i64::try_from(now.durable_index).unwrap_or(i64::MAX));
    let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    m.term.set(gauge(now.term));
    m.is_leader.set(i64::from(now.role == crate::core::Role::Leader));
    m.has_leader.set(i64::from(now.leader != 0));
    if now.leader != 0 && now.leader != before.leader {
        m.leader_changes.inc();
    }
    m.commit_index.set(gauge(now.commit_index));
    m.applied_index.set(gauge(now.applied.index));
    m.apply_lag.set(gauge(now.commit_index.saturating_sub(now.applied.index)));
    m.cluster_version.set(i64::from(now.cluster_version));
    m.proposals_pending.set(gauge(now.proposals_pending));
    m.proposals_committed.inc_by(now.commit_index.saturating_sub(before.commit_index));
    m.snapshots_installed.inc_by(now.snapshots_installed.saturating_sub(before.snapshots_installed));
}

/// The requests waiting for the core, each with the permit of the bytes it holds.
struct Waiters {
    locks: Arc<LockHub>,
    revisions: Arc<tokio::sync::watch::Sender<i64>>,
    configuration: Arc<tokio::sync::watch::Sender<Configuration>>,
    /// What the apply thread's progress holds on its way here (`apply::InFlight`).
    in_flight: apply::InFlight,
    next: Waiter,
    proposals: HashMap<Waiter, (oneshot::Sender<Result<Outcome, RequestError>>, Permit)>,
    reads: HashMap<Waiter, (oneshot::Sender<Result<(), RequestError>>, Permit)>,
    keepalives: HashMap<Waiter, (oneshot::Sender<Result<Grant, RequestError>>, Permit)>,
    changes: HashMap<Waiter, oneshot::Sender<Result<u64, RequestError>>>,
    /// Told once the turn's status is published.
    published: Vec<oneshot::Sender<()>>,
}

impl Waiters {
    /// Carries out the core's actions; entries to apply go to `apply`.
    fn carry_out(
        &mut self,
        actions: Vec<Action>,
        metrics: &RaftMetrics,
        apply: &mut dyn FnMut(Vec<raft::eraftpb::Entry>),
    ) {
        for a in actions {
            match a {
                Action::Apply { entries } => apply(entries),
                Action::Reply { waiter, result } => {
                    if result.is_err() {
                        metrics.proposals_failed.inc();
                    }
                    if let Some((tx, _permit)) = self.proposals.remove(&waiter) {
                        let _ = tx.send(result);
                    }
                }
                Action::ReadReady { waiter } => {
                    if let Some((tx, _permit)) = self.reads.remove(&waiter) {
                        let _ = tx.send(Ok(()));
                    }
                }
                Action::ReadFailed { waiter, error } => {
                    if let Some((tx, _permit)) = self.reads.remove(&waiter) {
                        let _ = tx.send(Err(error));
                    }
                }
                Action::KeptAlive { waiter, result } => {
                    if let Some((tx, _permit)) = self.keepalives.remove(&waiter) {
                        let _ = tx.send(result);
                    }
                }
                Action::Changed { waiter, result } => {
                    if let Some(tx) = self.changes.remove(&waiter) {
                        let _ = tx.send(result);
                    }
                }
                Action::LocksChanged { changes } => self.locks.changed(&changes),
                Action::Membership(configuration) => {
                    self.configuration.send_replace(configuration);
                }
                Action::Restored { revision, .. } => {
                    self.locks.restored();
                    self.revisions.send_if_modified(|r| std::mem::replace(r, revision.max(*r)) != *r);
                }
                // The apply thread already announced it as it committed (this covers a restart's
                // replay and progress overtaken by a snapshot); watches are fed by that thread.
                Action::Applied { revision, .. } => {
                    self.revisions.send_if_modified(|r| std::mem::replace(r, revision.max(*r)) != *r);
                }
            }
        }
    }
}

/// Hands one event to the core; `true` when the event asks the driver to stop.
fn hand(
    ev: Event,
    core: &mut Core,
    waiters: &mut Waiters,
    metrics: &RaftMetrics,
    apply: &mut dyn FnMut(Vec<raft::eraftpb::Entry>),
) -> Result<bool, CoreError> {
    match ev {
        Event::Propose { cmd, reply, permit } => {
            waiters.next += 1;
            waiters.proposals.insert(waiters.next, (reply, permit));
            core.propose(waiters.next, cmd);
        }
        Event::Read { reply, permit } => {
            waiters.next += 1;
            waiters.reads.insert(waiters.next, (reply, permit));
            core.read_index(waiters.next);
        }
        Event::ReadCaughtUp { reply, permit } => {
            waiters.next += 1;
            waiters.reads.insert(waiters.next, (reply, permit));
            core.read_caught_up(waiters.next);
        }
        Event::KeepAlive { session, reply, permit } => {
            waiters.next += 1;
            waiters.keepalives.insert(waiters.next, (reply, permit));
            core.keep_alive(waiters.next, session);
        }
        Event::Leases { sessions, reply } => {
            let _ = reply.send(sessions.iter().map(|id| core.lease_remaining(id)).collect());
        }
        Event::LivedBefore { done } => {
            core.lived_before();
            waiters.published.push(done);
        }
        Event::Replace { member, reply } => {
            waiters.next += 1;
            waiters.changes.insert(waiters.next, reply);
            core.replace(waiters.next, member);
        }
        Event::Add { member, peer_addr, reply } => {
            waiters.next += 1;
            waiters.changes.insert(waiters.next, reply);
            core.add(waiters.next, member, &peer_addr);
        }
        Event::Remove { member, reply } => {
            waiters.next += 1;
            waiters.changes.insert(waiters.next, reply);
            core.remove(waiters.next, member);
        }
        Event::RemovedBy(peer) => {
            let how = format!("member {peer}'s configuration no longer has it");
            return Err(CoreError::Removed { member: core.id(), how, mark: true });
        }
        Event::Applied(progress) => {
            let left = waiters.in_flight.fetch_sub(progress.held_bytes, std::sync::atomic::Ordering::AcqRel);
            metrics
                .apply_in_flight_bytes
                .set(i64::try_from(left.saturating_sub(progress.held_bytes)).unwrap_or(i64::MAX));
            let actions = core.on_applied(progress);
            metrics.history_bytes.set(core.history_bytes() as i64);
            waiters.carry_out(actions, metrics, apply)
        }
        Event::ApplyFailed(e) => return Err(e),
        Event::Peer(msg, _permit) => core.step(*msg)?,
        Event::Unreachable(peer) => core.report_unreachable(peer),
        Event::SnapshotSent { peer, ok } => core.report_snapshot(peer, ok),
        Event::Stop => return Ok(true),
    }
    Ok(false)
}

/// What the driver tells others of: lock waiters, the applied revision, the configuration; and
/// what the apply thread's progress holds on its way.
type Hubs = (
    Arc<LockHub>,
    Arc<tokio::sync::watch::Sender<i64>>,
    Arc<tokio::sync::watch::Sender<Configuration>>,
    apply::InFlight,
);

#[allow(clippy::too_many_arguments)]
fn drive(
    mut core: Core,
    rx: mpsc::Receiver<Event>,
    mut outbox: Box<dyn Outbox>,
    jobs: mpsc::SyncSender<apply::Job>,
    (status, pulse): (Arc<Mutex<Status>>, &Pulse),
    tick: Duration,
    metrics: &Metrics,
    [pending, peer_queue]: [Arc<Budget>; 2],
    (locks, revisions, configuration, in_flight): Hubs,
) -> Result<(), CoreError> {
    let metrics = &metrics.raft;
    let mut waiters = Waiters {
        locks,
        revisions,
        configuration,
        in_flight,
        next: 0,
        proposals: HashMap::new(),
        reads: HashMap::new(),
        keepalives: HashMap::new(),
        changes: HashMap::new(),
        published: Vec::new(),
    };
    // Blocks when the apply thread is APPLY_QUEUE batches behind: backpressure, not memory.
    let mut apply = |entries| {
        let _ = jobs.send(apply::Job::Apply(entries));
    };
    let mut last_status = core.status();
    record_status(metrics, &last_status, &last_status);
    let mut next_tick = Instant::now() + tick;
    // The core's clock: milliseconds since the driver started (monotonic).
    let started = Instant::now();
    let result = 'driver: loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        let first = match rx.recv_timeout(wait) {
            Ok(ev) => Some(ev),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break Ok(()),
        };
        pulse.beat();
        core.set_clock(started.elapsed().as_millis() as u64);
        // Everything already queued joins this turn (group commit), up to a bound.
        let queued = std::iter::from_fn(|| rx.try_recv().ok());
        for ev in first.into_iter().chain(queued).take(MAX_EVENTS_PER_TURN) {
            // Read per event: a keepalive or creation counted from a reading older than its
            // arrival would over-state a lease by the turn's length.
            core.set_clock(started.elapsed().as_millis() as u64);
            match hand(ev, &mut core, &mut waiters, metrics, &mut apply) {
                Ok(false) => {}
                Ok(true) => break 'driver Ok(()),
                Err(e) => break 'driver Err(e),
            }
        }
        if Instant::now() >= next_tick {
            core.tick();
            next_tick += tick;
            // After a long stall, don't replay the missed ticks in a burst.
            if next_tick < Instant::now() {
                next_tick = Instant::now() + tick;
            }
        }
        core.flush_reads();
        core.set_clock(started.elapsed().as_millis() as u64);
        let mut timer = ReadyTimer { metrics, commit_started: None };
        let mut install = |token: &[u8], index: u64, term: u64, conf_state: &[u8]| {
            // In order behind every batch queued before it; the raft thread waits for it.
            let (reply, answer) = mpsc::channel();
            let job = apply::Job::Install {
                token: token.to_vec(),
                index,
                term,
                conf_state: conf_state.to_vec(),
                reply,
            };
            jobs.send(job).map_err(|_| CoreError::ApplyStopped)?;
            // A large snapshot takes a while to install: the member is busy, not stuck.
            loop {
                match answer.recv_timeout(Duration::from_secs(1)) {
                    Ok(installed) => break installed,
                    Err(RecvTimeoutError::Timeout) => pulse.beat(),
                    Err(RecvTimeoutError::Disconnected) => return Err(CoreError::ApplyStopped),
                }
            }
        };
        match core.handle_ready(&mut |msgs| outbox.send(msgs), &mut timer, &mut install) {
            Ok(actions) => waiters.carry_out(actions, metrics, &mut apply),
            Err(e) => break Err(e),
        }
        let now = core.status();
        record_status(metrics, &last_status, &now);
        metrics.pending_bytes.set(i64::try_from(pending.used()).unwrap_or(i64::MAX));
        metrics.peer_queue_bytes.set(i64::try_from(peer_queue.used()).unwrap_or(i64::MAX));
        last_status = now;
        if let Ok(mut s) = status.lock() {
            *s = now;
        }
        for done in waiters.published.drain(..) {
            let _ = done.send(());
        }
    };
    match &result {
        // An operator's `latch cluster remove`, carried out: nothing failed.
        Err(e @ CoreError::Removed { .. }) => {
            tracing::warn!(reason = %e, "node stopped: removed from the cluster")
        }
        Err(e) => tracing::error!(error = %e, "node stopped: fatal error"),
        Ok(()) => {}
    }
    waiters.carry_out(core.shut_down(), metrics, &mut |_| {});
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::MemoryInbox;

    #[test]
    fn a_driver_that_stopped_turning_is_not_live_and_one_that_stopped_is_not_either() {
        let pulse = Pulse::new(Duration::from_millis(50));
        let at = |ms| Duration::from_millis(ms);
        pulse.turned_ms.store(1_000, Ordering::Release);
        assert_eq!(pulse.check(at(5_900)), Ok(()), "4.9 s without a turn: a slow fsync, not a stuck one");
        let stuck = pulse.check(at(13_345)).expect_err("12.3 s without a turn");
        assert!(stuck.contains("has not turned for 12s 345ms"), "{stuck}");
        pulse.running.store(false, Ordering::Release);
        assert_eq!(pulse.check(at(1_000)), Err("the node has stopped".to_string()));
        assert_eq!(
            Pulse::new(Duration::from_secs(10)).stalled_after,
            Duration::from_secs(30),
            "three slow ticks"
        );
    }

    /// A handle whose node never drains its queue: what it holds stays held.
    fn stalled(pending: usize, peer_queue: usize) -> (NodeHandle, mpsc::Receiver<Event>) {
        let db = Arc::new(
            Database::builder()
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .expect("an in-memory database opens"),
        );
        let (events, rx) = mpsc::channel();
        let handle = NodeHandle {
            events,
            pending: Budget::new(pending),
            peer_queue: Budget::new(peer_queue),
            snapshots: Arc::new(Snapshots::new(db.clone(), Arc::new(MemoryInbox::default()))),
            status: Arc::new(Mutex::new(Status::default())),
            pulse: Arc::new(Pulse::new(Duration::from_millis(50))),
            db,
            locks: Arc::new(LockHub::default()),
            revisions: Arc::new(tokio::sync::watch::Sender::new(0)),
            feed: apply::Feed::default(),
            configuration: Arc::new(tokio::sync::watch::Sender::new(Configuration::default())),
            member_id: 7,
            cluster_id: 1,
        };
        (handle, rx)
    }

    #[test]
    fn a_member_whose_apply_lags_says_so_beside_what_it_knows_of_its_leader() {
        let (node, _rx) = stalled(1 << 20, 1 << 20);
        node.pulse.beat();
        let mut status = Status { id: 7, leader: 2, term: 3, commit_index: 900, ..Default::default() };
        status.applied.index = 900;
        *node.status.lock().expect("status") = status;
        let caught_up = node.why_unanswered(Waited::Read, 900);
        assert!(caught_up.contains("its leader, member 2 (term 3), has not confirmed"), "{caught_up}");
        assert!(!caught_up.contains("applied index"), "nothing is behind: {caught_up}");

        status.applied.index = 700;
        *node.status.lock().expect("status") = status;
        let just_committed = node.why_unanswered(Waited::Read, 650);
        assert!(
            !just_committed.contains("applied index"),
            "200 committed while the request waited, and all it knew committed when it came \
             applied, is no lag: {just_committed}"
        );

        status.applied.index = 40;
        *node.status.lock().expect("status") = status;
        let lagging = node.why_unanswered(Waited::Write(Retry::SameId), 41);
        assert!(
            lagging.contains(
                "it has applied index 40, short of the 41 it knew committed when the request came (900"
            ),
            "a member that did not apply, in all the time a request waited, what it knew committed \
             when the request came says so, one entry short or many: {lagging}"
        );
    }

    #[test]
    fn peer_messages_past_the_peer_queue_bound_are_dropped_until_the_queue_drains() {
        let (node, rx) = stalled(1 << 20, 1000);
        assert!(node.deliver(Message::default(), 400), "400 of 1000 bytes fit");
        assert!(node.deliver(Message::default(), 400), "800 of 1000 bytes fit");
        assert!(!node.deliver(Message::default(), 400), "1200 bytes would not: the message is dropped");
        drop(rx.try_recv().expect("a queued message"));
        assert!(node.deliver(Message::default(), 400), "a message stepped gives its bytes back");
    }

    #[tokio::test(start_paused = true)]
    async fn client_requests_past_the_pending_bound_are_refused_as_overloaded_naming_the_flag() {
        let (node, _rx) = stalled(READ_BYTES + PROPOSAL_OVERHEAD_BYTES, 1 << 20);
        let waiting = node.clone();
        let read = tokio::spawn(async move { waiting.read_index().await });
        tokio::task::yield_now().await;
        assert_eq!(node.pending_bytes(), READ_BYTES, "the waiting read holds its bytes");
        let cmd = Command { version: 2, request_id: "x".repeat(64), body: None };
        let refused = tokio::time::timeout(Duration::from_secs(1), node.propose(cmd, Retry::SameId)).await;
        let err = refused
            .expect("a request past the bound is refused at once, not queued")
            .expect_err("the read holds the bytes this proposal needs");
        match err {
            RequestError::Overloaded { member: 7, flag: "--max-pending-bytes", .. } => {}
            other => panic!("expected Overloaded naming --max-pending-bytes, got {other:?}"),
        }
        assert!(err_names(&node).contains("--max-pending-bytes"));
        read.abort();
    }

    fn err_names(node: &NodeHandle) -> String {
        node.take_pending(usize::MAX).err().map(|e| e.to_string()).unwrap_or_default()
    }
}
