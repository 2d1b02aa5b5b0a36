//! The sans-I/O node core: raft-rs `RawNode` over the write-ahead [`LogStore`], the proposal
//! table keyed by request id, batched ReadIndex requests, and the Ready loop; and beside it the
//! [`Applier`], which applies committed entries to the state machine in a file of its own. Both
//! take events and return what the driver must do; they own no thread, socket, timer or clock
//! (time is the number of `tick` calls). The node driver runs the core on the raft thread and
//! the applier on an apply thread; the simulator drives the same two as events of its own.
//!
//! Disk I/O happens through the log's `storage::files::Dir` and the state's redb database,
//! whose backends are chosen by whoever opened them: files in production, in-memory
//! fault-injecting backends in the simulator.
//!
//! Invariants:
//! - One log flush per Ready holds the log append, the hard state and the log's compaction; it
//!   is synced (one fdatasync) before any persisted message leaves when it holds entries, a
//!   term or vote, a compaction or a snapshot. A Ready that only moves the commit index is
//!   written but not synced (the commit index is volatile in Raft, as etcd's `MustSync` has
//!   it), so a single write costs one fdatasync per member, not two. Committed entries are
//!   handed to the applier ([`Action::Apply`]) after the flush.
//! - The applier reports what it applied ([`Core::on_applied`]); replies, read grants and
//!   events leave only then, once the state they report is committed.
//! - Log compaction never passes the applier's durable applied index: whatever a crash takes
//!   from the state is still in the log to be replayed.
//! - After a restart nothing is served from the state until a ReadIndex round of the new life
//!   confirmed an index and the state reached it: a crash may take both the state's latest
//!   (lazy) commits and the log's latest (unsynced) commit index, so neither says how far the
//!   previous life had applied — but the leader's confirmed commit index covers it (a member's
//!   first life, on an empty data dir, has nothing to catch up with). Revisions
//!   never go backwards on a member; a restarted member cut off from the leader serves no
//!   serializable read until it hears from one (as a ZooKeeper server that lost its quorum).
//! - A snapshot is installed in the state (durably) before the log records it.
//! - A proposal is matched to its waiters by request id, never by position, on whichever node
//!   it was proposed; re-proposing it is safe because the fsm applies an id at most once. It is
//!   re-proposed only when the leader (or its term) changes, or the link to the leader comes
//!   back after the transport reported it unreachable (messages to it were lost): not on a
//!   timer, which would only grow the log when the cluster is slow. A proposal forwarded to a
//!   live leader that drops it (its uncommitted log is full, its peer queue is full) waits
//!   until its request times out.
//! - A waiter is answered only by the application of the very command it proposed (same request
//!   id and same command hash); another command under a pending id is refused at once.
//! - A read is granted only once this node has applied up to an index that a quorum confirmed
//!   as the leader's commit index after the read arrived (ReadIndex). A ReadIndex context names
//!   this member and this life of it (a random nonce drawn at start) and is never reused, and a
//!   confirmation is accepted only for a context this life asked and is still waiting on: a
//!   late answer to a previous life, or to a retried request, confirms nothing.
//! - Every waiting request (proposal, unconfirmed or confirmed read) fails after
//!   `request_timeout_ticks`.
//! - Ids of commands this member proposes itself are unique across members and lives (member
//!   id, nonce, counter).
//! - Raft applies a change of membership as its committed entry is handed to the applier, and
//!   the state records the configuration reached with that entry's index; a member starts with
//!   the configuration its state records (`membership`).

pub mod applier;
pub mod coalesce;
pub mod compactor;
pub mod instance_timers;
pub mod leases;
pub mod lock_delays;
pub mod membership;
pub mod snapshots;
pub mod state_check;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use prost::Message as _;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Message, MessageType};
use raft::{ProgressState, RawNode, StateRole};
use redb::{Database, ReadableDatabase as _};

use crate::fsm::{self, Applied, Event, LockChange};
use crate::storage::{Identity, LogStore, StorageError, Stores};
pub use applier::{Applier, Progress};
use compactor::Compactor;
pub use compactor::{Retention, HISTORY_RETENTION_BYTES};
use instance_timers::InstanceTimers;
use latch_proto::internal::{command::Body, outcome, Command, Compact, MemberStarted, Outcome};
pub use leases::Grant;
use leases::Leases;
use lock_delays::LockDelays;
pub use snapshots::{Inbox, MemoryInbox, SnapshotError, Snapshots};

/// Most bytes of entries raft puts in one append message (one entry may exceed it).
pub const MAX_MESSAGE_BYTES: u64 = 1024 * 1024;

/// Most bytes of committed entries one Ready hands to the applier.
pub const MAX_COMMITTED_BYTES_PER_READY: u64 = 4 * 1024 * 1024;

/// Most raft log entries one Ready's transaction deletes when compacting.
pub const COMPACTION_STEP: u64 = 1024;

/// How many times `snapshot_entries` a leader keeps, at most, below its compaction target for
/// followers catching up (see [`Core::followers_floor`]): with the default 10,000, a snapshot's
/// transfer and install may take as long as 100,000 writes.
pub const CATCH_UP_SNAPSHOTS: u64 = 10;

/// How long after a follower's last message a leader still keeps log entries for it to catch
/// up from, in milliseconds of its clock.
pub const CATCH_UP_SILENCE_MS: u64 = 30_000;

/// How long after a snapshot was delivered to a follower a leader keeps the log from its index
/// while the follower is silent (installing it), in milliseconds of its clock: a follower that
/// died meanwhile holds nothing after that.
pub const INSTALL_SILENCE_MS: u64 = 300_000;

/// Whether a raft message is a snapshot: whoever carries it reports its delivery to raft with
/// [`Core::report_snapshot`] (the transport sends it over a call of its own).
pub fn is_snapshot(msg: &Message) -> bool {
    msg.get_msg_type() == MessageType::MsgSnapshot
}

/// Identifies a waiting request in the driver; opaque to the core.
pub type Waiter = u64;

/// The waiter of the core's own proposals (lease checkpoints, expiries): nobody waits on them.
pub const OWN_WAITER: Waiter = Waiter::MAX;

/// How long a keepalive waits for the checkpoint that renews its lease before it fails, in
/// milliseconds of the leader's clock.
pub const LEASE_WAIT_TIMEOUT_MS: u64 = 3_000;

/// How often a leader appends a check point by default: the members compare their states at
/// least this often.
pub const STATE_CHECK_INTERVAL_MS: u64 = 5 * 60 * 1000;

/// Ticks and thresholds, in ticks.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// A proposal or read not answered after this many ticks fails with `TimedOut`.
    pub request_timeout_ticks: u64,
    /// A ReadIndex not answered after this many ticks is asked again under a new context.
    pub read_retry_ticks: u64,
    /// Milliseconds of a tick, as the driver runs them: the lease clock's readings go into the
    /// log at least every election timeout (see `leases`).
    pub tick_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            election_tick: 10,
            heartbeat_tick: 1,
            request_timeout_ticks: 200,
            read_retry_ticks: 10,
            tick_ms: 50,
        }
    }
}

/// How a core is set up.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: u64,
    /// The initial membership (used when the store is fresh).
    pub voters: Vec<u64>,
    pub timing: Timing,
    /// Applied entries between two log compactions (see [`Core::handle_ready`]).
    pub snapshot_entries: u64,
    pub bounds: fsm::Bounds,
    /// Bytes of raft log entries kept in memory (the newest; older ones are read from disk).
    pub log_cache_bytes: usize,
    /// Size of the raft log's segment files.
    pub log_segment_bytes: u64,
    /// Bytes of proposals the leader holds uncommitted before it refuses more; at least
    /// [`MAX_MESSAGE_BYTES`] (raft-rs requires it).
    pub max_uncommitted_bytes: u64,
    /// How much history the leader keeps when it compacts by itself.
    pub history_retention: Retention,
    /// The most bytes of history it keeps (0: no byte bound).
    pub history_retention_bytes: u64,
    /// Drawn at random by the caller for every start of the member (the simulator draws it
    /// from its seed): it makes read contexts and own request ids unique across lives.
    pub nonce: u64,
    /// A leader appends a check point (`state_check`) to the log at least this often, on its
    /// own clock (0: only the one each new leader appends).
    pub state_check_interval_ms: u64,
}

impl Config {
    /// Defaults for member `id` of `voters`, with this life's `nonce`.
    pub fn new(id: u64, voters: &[u64], nonce: u64) -> Config {
        Config {
            id,
            voters: voters.to_vec(),
            timing: Timing::default(),
            snapshot_entries: 10_000,
            bounds: fsm::Bounds::default(),
            log_cache_bytes: 64 * 1024 * 1024,
            log_segment_bytes: crate::storage::log::SEGMENT_BYTES,
            max_uncommitted_bytes: 64 * 1024 * 1024,
            history_retention: Retention::DEFAULT,
            history_retention_bytes: HISTORY_RETENTION_BYTES,
            nonce,
            state_check_interval_ms: STATE_CHECK_INTERVAL_MS,
        }
    }
}

/// What the caller of a write that stays proposed can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The caller named the write's request id: a retry under it applies the write at most once.
    SameId,
    /// The member named it, so the caller cannot: a retry is another write.
    NoId,
}

/// Why a request could not be served. None of these is fatal to the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("no leader is known to member {member} (an election may be under way); retry")]
    NoLeader { member: u64 },
    /// Not answered in time; a proposal (`proposed`) stays in the log if it got there, and may
    /// still commit.
    #[error(
        "not answered within {ticks} ticks (no quorum reachable?){}; retry with the same request id",
        if *.proposed { "; the write stays proposed and may still take effect" } else { "" }
    )]
    TimedOut { ticks: u64, proposed: bool },
    /// The member stops; a write it took (`proposed`) may be in the log, and commit under the
    /// next leader.
    #[error(
        "member is shutting down{}",
        if *.proposed { "; the write may already be in the log and still take effect" } else { "" }
    )]
    ShuttingDown { proposed: bool },
    /// The caller's deadline came before the answer (`node::deadline`); a write stays proposed.
    #[error(
        "member {member} could not {what} within {waited_ms} ms, before its caller's deadline: {why}{}",
        match write {
            None => "",
            Some(Retry::SameId) => "; the write stays proposed and may still take effect: a retry under \
                the same request id applies it at most once (while the cluster still remembers the \
                id, among the newest ids and answers its request memory holds)",
            Some(Retry::NoId) => "; the write stays proposed and may still take effect: it carried no \
                request id, so a retry may apply it twice",
        }
    )]
    Unanswered { member: u64, what: &'static str, waited_ms: u64, why: String, write: Option<Retry> },
    /// Only the leader can serve this (a keepalive); `leader` is 0 when none is known.
    #[error("member {member} is not the leader (the leader is member {leader}; 0: none known); send it to the leader")]
    NotLeader { member: u64, leader: u64 },
    #[error("session {session} not found: it expired, was closed, or never existed")]
    SessionNotFound { session: String },
    /// Another command under the same request id is waiting to be applied on this member.
    #[error(
        "request id {request_id:?} is in flight with a different request; a retry must resend the \
         same request, a new request needs a new id"
    )]
    RequestInFlight { request_id: String },
    /// A bound on what the member holds for its clients was reached; retrying later (or on
    /// another member) may succeed.
    #[error("member {member} is overloaded: {what} would exceed {limit} bytes ({flag}); retry later")]
    Overloaded { member: u64, what: &'static str, limit: u64, flag: &'static str },
    /// No leader confirmed the member's state for a while (see `node::freshness`): what it
    /// serves may be stale, and stay so.
    #[error(
        "no leader confirmed member {member}'s state for {silent_ms} ms ({why}): it may be cut off \
         from the cluster; retry on another member"
    )]
    CutOff { member: u64, silent_ms: u64, why: String },
    /// A kind of command newer than the cluster version as this member applied it
    /// (`fsm::first_version`). `settled` when this member leads and has applied an entry of its
    /// own term and every raise committed since, so that every raise committed is applied here
    /// (`Core::knows_the_cluster_version`): the refusal is final. Otherwise the member may be
    /// behind a raise (a follower lagging, a member just restarted whose state is behind its
    /// log, a leader new in its term) and the request, perhaps applied already under its id, is
    /// to be asked again — of the leader, which answers a retry of an applied one with its
    /// first outcome.
    #[error(
        "the cluster runs command version {cluster} as member {member} knows it, and this request \
         needs version {needed}: {advice}",
        advice = if *.settled {
            "every member must run a build of it or later first, and the leader then raises the \
             cluster version (docs/architecture.md, \"Upgrades\")"
        } else {
            "this member may not have applied the cluster's latest raise yet; retry (on the leader)"
        }
    )]
    ClusterVersion { member: u64, cluster: u32, needed: u32, settled: bool },
    /// A change of membership the cluster cannot make now (`membership`).
    #[error(transparent)]
    Membership(#[from] membership::Refused),
}

/// A failure the node cannot continue after: its disk or its state is in doubt.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("state machine: {0}")]
    Fsm(#[from] fsm::FsmError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("installing a snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("the apply thread stopped")]
    ApplyStopped,
    #[error("the apply thread panicked (its message is in the log above)")]
    ApplyPanicked,
    #[error("the node thread panicked (its message is in the log above)")]
    Panicked,
    #[error(
        "member {member}'s raft log ends at index {last}, but its leader, member {leader}, knows it \
         acknowledged entries up to index {acknowledged} at least: this member forgot entries it \
         acknowledged (its data dir was restored from an older copy or lost, or its disk lost \
         writes it had synced), and may have forgotten votes it cast. It stops rather than take part \
         on a log the cluster counted on; bring back the data dir it ran on before, or replace the \
         member (`latch cluster replace {member}` against the running members, then start it on an \
         empty data dir)"
    )]
    ForgotEntries { member: u64, leader: u64, acknowledged: u64, last: u64 },
    #[error(
        "member {member}'s state says the cluster runs command version {cluster}, and this build \
         applies versions up to {build}: it would stop at the next command. Start it with a build \
         of version {cluster} or later; going back to an earlier build once the cluster version was \
         raised is not supported (docs/architecture.md, \"Upgrades\")"
    )]
    ClusterAhead { member: u64, cluster: u32, build: u32 },
    #[error(
        "member {member} was removed from the cluster ({how}): it takes no part under its id \
         again, and the cluster goes on without it. Stop running it; its data dir may be kept for \
         what it holds, or deleted"
    )]
    Removed {
        member: u64,
        how: String,
        /// Whether its data dir is marked so that it never starts again: not when it stopped as
        /// the leader that committed its own removal, which the others may not have heard of yet
        /// (started again, it tells them).
        mark: bool,
    },
}

fn redb_err(e: impl Into<redb::Error>) -> CoreError {
    CoreError::Storage(StorageError::redb(e))
}

/// The state file's failed fsync.
fn fsync_err(e: std::io::Error) -> CoreError {
    CoreError::Storage(crate::storage::fsync_failed(e))
}

/// Installs the snapshot staged under a token at `(index, term)`, with raft's configuration
/// (encoded), in the state, durably: the applier's [`Applier::install`], on whatever thread it
/// runs.
pub type Install<'a> = dyn FnMut(&[u8], u64, u64, &[u8]) -> Result<Applied, CoreError> + 'a;

/// What the driver must do after a call into the core.
#[derive(Debug)]
pub enum Action {
    /// Committed entries, in index order, for the applier; its [`Progress`] goes back to
    /// [`Core::on_applied`].
    Apply {
        entries: Vec<Entry>,
    },
    /// A proposal's outcome (or why it failed).
    Reply {
        waiter: Waiter,
        result: Result<Outcome, RequestError>,
    },
    /// The read may now be served from the local applied state (linearizably).
    ReadReady {
        waiter: Waiter,
    },
    ReadFailed {
        waiter: Waiter,
        error: RequestError,
    },
    /// A command changed the state: its revision and its changes, in order, as its history
    /// rows record them (keys', and sessions', locks', elections' and registry instances'
    /// states; none unless the applier keeps events, `fsm::Bounds::events`). Emitted once per
    /// revision, in revision order, after the state holding them is committed.
    Applied {
        revision: i64,
        events: Vec<Event>,
    },
    /// A snapshot replaced the whole state at `revision`: revisions up to it have no events here
    /// (whoever follows events must read the state afresh). Emitted after it is committed.
    Restored {
        index: u64,
        revision: i64,
    },
    /// Commands changed locks or elections: their changes, in order, after the state holding
    /// them is committed (for waiters and observers; a `Restored` covers the ones it skipped).
    LocksChanged {
        changes: Vec<LockChange>,
    },
    /// A keepalive's answer.
    KeptAlive {
        waiter: Waiter,
        result: Result<Grant, RequestError>,
    },
    /// A change of membership's answer: the index of its entry, once the state holds it (0:
    /// nothing needed changing).
    Changed {
        waiter: Waiter,
        result: Result<u64, RequestError>,
    },
    /// Raft's configuration changed (a committed change applied, or a snapshot installed): who
    /// votes and who learns now, who was removed, and where the added members are.
    Membership(membership::Configuration),
}

/// The core's view of itself, for response headers and `cluster status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    pub id: u64,
    pub term: u64,
    pub leader: u64,
    pub role: Role,
    pub commit_index: u64,
    /// What the applier last reported applied (committed in the state, maybe not durable).
    pub applied: Applied,
    /// The applied index as of the state's last durable commit.
    pub durable_index: u64,
    /// Whether serializable reads may be served from the state at once: a ReadIndex round of
    /// this life confirmed an index and the state has reached it. Until then a serializable
    /// read waits for one, as a linearizable read does (see the module's invariants).
    pub caught_up: bool,
    /// Snapshots installed from a leader since this core was created.
    pub snapshots_installed: u64,
    /// The last log index removed by compaction (or covered by a snapshot).
    pub compacted_index: u64,
    /// Bytes of raft log entries held in memory.
    pub log_cached_bytes: u64,
    /// Reads confirmed by the leader, waiting for this member to apply up to their index.
    pub reads_awaiting_apply: u64,
    /// Proposals handed to this core and not yet answered (applied, failed or timed out).
    pub proposals_pending: u64,
    /// Live sessions, as this member's leases count them.
    pub sessions: u64,
    /// The cluster version as of the applied state (`fsm::versions`).
    pub cluster_version: u32,
    /// The newest command version this member's build applies (`fsm::COMMAND_VERSION`, less in
    /// the simulator's older builds).
    pub build_version: u32,
}

/// Told when a write transaction commits and when committed entries are applied, so that the
/// driver can time them (the core has no clock). Every method defaults to nothing; `()`
/// observes nothing. Calls come in pairs, `*_started` then `*_finished`, on the thread that
/// called [`Core::handle_ready`] (the log's commits) or [`Applier::apply`] (the state's).
pub trait ReadyObserver {
    /// A write transaction is about to commit.
    fn commit_started(&mut self) {}
    /// It committed; `entries_persisted` raft log entries were appended in it.
    fn commit_finished(&mut self, _entries_persisted: usize) {}
    /// A batch of committed entries is about to be applied to the state machine.
    fn apply_started(&mut self) {}
    /// The batch is applied, inside the not yet committed transaction.
    fn apply_finished(&mut self, _entries_applied: usize) {}
}

impl ReadyObserver for () {}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    #[default]
    Follower,
    Candidate,
    PreCandidate,
    Leader,
    /// Follows without a vote: a replaced member catching up (`membership`).
    Learner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre-candidate",
            Role::Leader => "leader",
            Role::Learner => "learner",
        }
    }
}

struct PendingProposal {
    data: Vec<u8>,
    /// [`fsm::command_hash`] of `data`: only this command's application answers its waiters.
    hash: u64,
    waiters: Vec<Waiter>,
    /// Tick at which it arrived.
    arrived_at: u64,
}

struct ReadBatch {
    waiters: Vec<Waiter>,
    asked_at: u64,
    arrived_at: u64,
}

/// A read confirmed at some index, waiting for this member to apply it.
struct ConfirmedRead {
    waiter: Waiter,
    arrived_at: u64,
}

/// The raft state last seen, to notice elections and leader changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Seen {
    leader: u64,
    term: u64,
    role: Role,
}

pub struct Core {
    raw: RawNode<LogStore>,
    /// The state machine's store (read here: reads, snapshots; written by the applier).
    state_db: Arc<Database>,
    snapshots: Arc<Snapshots>,
    timing: Timing,
    snapshot_entries: u64,
    max_uncommitted_bytes: u64,
    nonce: u64,
    /// Logical time: the number of ticks so far.
    now: u64,
    /// What the applier last reported.
    applied: Applied,
    durable_index: u64,
    /// The last index handed to the applier.
    handed_out: u64,
    /// The index of the last committed entry handed out that may raise the cluster version
    /// ([`may_raise`]): until it is applied, this member's cluster version may be behind the
    /// cluster's (`Core::knows_the_cluster_version`).
    raise_handed_out: u64,
    /// The index the first ReadIndex round of this life confirmed; see [`Status::caught_up`].
    read_floor: Option<u64>,
    /// Ordered maps (here and below): the core iterates them, and hash order would make a
    /// run depend on the process's random hash seed instead of its inputs alone.
    proposals: BTreeMap<String, PendingProposal>,
    /// Reads that arrived since the last ReadIndex was asked.
    new_reads: Vec<Waiter>,
    new_reads_since: u64,
    /// Asked ReadIndex batches by the counter of their context (see [`Core::read_context`]).
    asked_reads: BTreeMap<u64, ReadBatch>,
    /// Confirmed reads waiting for `applied >= index`, by index.
    confirmed_reads: BTreeMap<u64, Vec<ConfirmedRead>>,
    next_read_ctx: u64,
    next_own_id: u64,
    seen: Seen,
    /// The transport reported the leader unreachable since the last message from it: proposals
    /// forwarded to it may be lost.
    leader_link_lost: bool,
    snapshots_installed: u64,
    /// When each peer's last message arrived, on `clock_ms` (see [`Core::followers_floor`]).
    heard_from: BTreeMap<u64, u64>,
    /// The same, in ticks (see `membership::check_replace`).
    heard_at_tick: BTreeMap<u64, u64>,
    /// The tick at which this member last became leader.
    led_since_tick: u64,
    /// Vote requests are dropped until the state applied something: this empty data dir is a
    /// replaced member's, which may have voted in its earlier life (`Core::lived_before`).
    withhold_votes: bool,
    /// The index a first life's state starts at: 0, or that of a state restored from a backup
    /// (`storage::log::RESTORED_AFTER`) whose log nothing happened in since. A state at it has
    /// applied nothing in this life.
    first_applied: u64,
    /// The index of the last snapshot delivered to each peer, and when (on `clock_ms`): it may
    /// be installing it, silent, for longer than [`CATCH_UP_SILENCE_MS`].
    snapshots_delivered: BTreeMap<u64, (u64, u64)>,
    /// The cluster version as of the applied state (`fsm::versions`), and the newest command
    /// version this member's build applies (`fsm::Bounds::newest_version`): it proposes at the
    /// lower of the two, so that every member, whatever its build, applies what it proposes.
    cluster_version: u32,
    build_version: u32,
    actions: Vec<Action>,
    /// When set, raft's randomized election timeouts are drawn from it (see
    /// [`Core::seed_election_timeouts`]) instead of raft-rs's thread rng.
    election_rng: Option<rand::rngs::SmallRng>,
    /// This member's monotonic clock, in milliseconds since the core was made (the driver
    /// sets it): what session leases are counted on.
    clock_ms: u64,
    /// Whether the driver has set the clock yet.
    clock_set: bool,
    leases: Leases,
    /// As leader: (term, index) from which it may act on leases — once it applied that far,
    /// it has seen every entry of earlier terms.
    lease_ready_from: Option<(u64, u64)>,
    /// Keepalives that arrived before the leader could act on leases: (waiter, session, when).
    early_keepalives: Vec<(Waiter, String, u64)>,
    /// As leader: when it appended its entries, (first index, last index, clock), for the
    /// entries not applied yet (see `leases`).
    append_times: VecDeque<(u64, u64, u64)>,
    /// Request ids of this leader's lease checkpoints and expiries not applied yet: dropped,
    /// not handed on, when it stops leading (they would be no-ops in another term).
    lease_proposals: std::collections::BTreeSet<String>,
    lock_delays: LockDelays,
    instance_timers: InstanceTimers,
    compactor: Compactor,
    /// The last revision announced by `Action::Applied` or `Action::Restored`.
    announced_revision: i64,
    /// This member's start as the cluster records it (`fsm::members`): recorded in the state,
    /// or not yet (and when it was last proposed).
    start: StartRecord,
    state_check_interval_ms: u64,
    /// When (the core's clock) this member, as leader, last appended a check point.
    last_check_point_ms: Option<u64>,
    /// Each learner's first index it must acknowledge before it is made a voter: the entry that
    /// made it a learner, or the commit index when this member, leading, first saw it one
    /// (`membership::ready_learner`).
    learners_since: BTreeMap<u64, u64>,
    /// Changes of membership proposed for a waiter, not answered yet.
    changes: Vec<PendingChange>,
    /// The index of the change that removed this member: it stops once it applied it.
    removed_at: Option<u64>,
    /// The members the cluster ever had, as far as this member applied: the initial ones
    /// (`--initial-cluster`) and the added ones. One in neither raft's voters nor its learners
    /// was removed.
    known: membership::Known,
    /// The additions (`membership::addition`) this member's log holds past the changes it applied,
    /// by index: appended, perhaps not committed yet. A member that lost its data and asks its
    /// peers counts them as members (`server::admission`): a peer may hold an addition that a
    /// quorum committed before it applied it.
    logged_additions: BTreeMap<u64, (u64, String)>,
}

/// A change of membership this member proposed as leader, for a waiter.
struct PendingChange {
    waiter: Waiter,
    /// Where its entry was appended, in which term.
    index: u64,
    term: u64,
    /// Tick at which it arrived.
    arrived_at: u64,
    /// Raft applied its very entry (the entry at `index` is of `term`).
    taken: bool,
}

/// Where the cluster's record of this member's start stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StartRecord {
    /// In the applied state: nothing left to do in this life.
    Recorded,
    /// Not yet; the request id of the last proposal of it and the tick it was made at.
    Unrecorded(Option<(String, u64)>),
}

impl Core {
    /// Loads a member from its stores, and its applier. Incoming snapshots are staged in
    /// `inbox`. `logger` is raft-rs's slog logger.
    pub fn new(
        config: Config,
        identity: Identity,
        stores: Stores,
        inbox: Arc<dyn Inbox>,
        logger: &slog::Logger,
    ) -> Result<(Core, Applier), CoreError> {
        let Stores { log: log_dir, state: state_db, state_syncs } = stores;
        // A state past this build's version is refused before anything is written.
        let cluster_version = fsm::versions::cluster_version(&state_db.begin_read().map_err(redb_err)?)?;
        let build_version = config.bounds.newest_version.min(fsm::COMMAND_VERSION);
        if cluster_version > build_version {
            return Err(CoreError::ClusterAhead {
                member: config.id,
                cluster: cluster_version,
                build: build_version,
            });
        }
        {
            let txn = state_db.begin_write().map_err(redb_err)?;
            if let Some(bytes) = fsm::init(&txn)?.filter(|b| *b > 0) {
                tracing::info!(
                    member = config.id,
                    bytes,
                    "history bytes counted (a state of an earlier build)"
                );
            }
            txn.commit().map_err(redb_err)?;
            state_syncs.wait_all().map_err(fsync_err)?;
        }
        let snapshots = Arc::new(Snapshots::new(state_db.clone(), inbox));
        // The state as durable: what a crash left of it.
        let applied = fsm::applied(&state_db.begin_read().map_err(redb_err)?)?;
        let mut store = LogStore::load(
            log_dir,
            identity,
            &config.voters,
            snapshots.clone(),
            config.log_cache_bytes,
            config.log_segment_bytes,
        )?;
        // Raft's configuration as of the applied index, if a change was ever applied: the
        // log's is as of its start, and raft applies the changes after the applied index again.
        let recorded = membership::recorded(&state_db.begin_read().map_err(redb_err)?);
        let known = membership::Known {
            initial: config.voters.clone(),
            added: fsm::members::added(&state_db.begin_read().map_err(redb_err)?)?,
        };
        if let Some(conf) = recorded.map_err(|e| CoreError::Fsm(fsm::FsmError::Corrupt(e)))? {
            if known.removed(&conf, config.id) {
                let how = format!(
                    "its state records the configuration it applied last, voters {:?} and learners {:?}, \
                     without it",
                    conf.voters, conf.learners
                );
                return Err(CoreError::Removed { member: config.id, how, mark: true });
            }
            store.set_conf_state(conf);
        }
        store.reconcile(applied.index, applied.term)?;
        // A first life has no earlier one to catch up with.
        let read_floor = store.is_fresh().then_some(0);
        let start = match fsm::members::is_recorded(&state_db.begin_read().map_err(redb_err)?, config.id)? {
            true => StartRecord::Recorded,
            false => StartRecord::Unrecorded(None),
        };
        let timing = config.timing;
        let cfg = raft::Config {
            id: config.id,
            election_tick: timing.election_tick,
            heartbeat_tick: timing.heartbeat_tick,
            applied: applied.index,
            max_size_per_msg: MAX_MESSAGE_BYTES,
            max_inflight_msgs: 256,
            max_uncommitted_size: config.max_uncommitted_bytes,
            // Bounds what one Ready hands to apply (and its events); the rest comes next Ready.
            max_committed_size_per_ready: MAX_COMMITTED_BYTES_PER_READY,
            check_quorum: true,
            pre_vote: true,
            read_only_option: raft::ReadOnlyOption::Safe,
            ..Default::default()
        };
        cfg.validate()?;
        let store_as_restored = store.is_as_restored();
        let raw = RawNode::new(&cfg, store, logger)?;
        let logged_additions = logged_additions(&raw, applied.index)?;
        let applier = Applier::new(state_db.clone(), state_syncs, snapshots.clone(), config.bounds)?;
        let mut leases = Leases::default();
        leases.reload(stored_leases(&state_db)?, 0);
        let mut lock_delays = LockDelays::default();
        lock_delays.reload(stored_lock_delays(&state_db)?, 0);
        let mut instance_timers = InstanceTimers::default();
        instance_timers.reload(stored_instance_timers(&state_db)?, 0);
        let core = Core {
            raw,
            state_db,
            snapshots,
            timing,
            snapshot_entries: config.snapshot_entries.max(1),
            max_uncommitted_bytes: cfg.max_uncommitted_size,
            nonce: config.nonce,
            now: 0,
            applied,
            durable_index: applied.index,
            handed_out: applied.index,
            raise_handed_out: 0,
            read_floor,
            proposals: BTreeMap::new(),
            new_reads: Vec::new(),
            new_reads_since: 0,
            asked_reads: BTreeMap::new(),
            confirmed_reads: BTreeMap::new(),
            next_read_ctx: 1,
            next_own_id: 1,
            seen: Seen::default(),
            leader_link_lost: false,
            snapshots_installed: 0,
            heard_from: BTreeMap::new(),
            heard_at_tick: BTreeMap::new(),
            led_since_tick: 0,
            withhold_votes: false,
            first_applied: match store_as_restored {
                true => crate::storage::log::RESTORED_AFTER.0,
                false => 0,
            },
            removed_at: None,
            known,
            logged_additions,
            snapshots_delivered: BTreeMap::new(),
            cluster_version,
            build_version,
            actions: Vec::new(),
            election_rng: None,
            clock_ms: 0,
            clock_set: false,
            leases,
            lease_ready_from: None,
            early_keepalives: Vec::new(),
            append_times: VecDeque::new(),
            lease_proposals: Default::default(),
            lock_delays,
            instance_timers,
            compactor: Compactor::new(config.history_retention, config.history_retention_bytes),
            announced_revision: applied.revision,
            start,
            state_check_interval_ms: config.state_check_interval_ms,
            last_check_point_ms: None,
            learners_since: BTreeMap::new(),
            changes: Vec::new(),
        };
        Ok((core, applier))
    }

    /// Draws raft's randomized election timeouts from `seed` from now on, so that a run is
    /// reproducible (the simulator). raft-rs draws them from `rand::thread_rng()` whenever it
    /// resets its election clock; this redraws one from the seeded rng after every call into
    /// raft that left the clock at zero, before the value can be used by the next tick.
    pub fn seed_election_timeouts(&mut self, seed: u64) {
        use rand::SeedableRng;
        self.election_rng = Some(rand::rngs::SmallRng::seed_from_u64(seed));
        self.redraw_election_timeout(true);
    }

    fn redraw_election_timeout(&mut self, always: bool) {
        use rand::Rng;
        let Some(rng) = self.election_rng.as_mut() else { return };
        let raft = &mut self.raw.raft;
        if always || raft.election_elapsed == 0 {
            let min = raft.election_timeout();
            raft.set_randomized_election_timeout(rng.gen_range(min..2 * min));
        }
    }

    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    /// The state machine's store, for reads.
    pub fn state_db(&self) -> &Arc<Database> {
        &self.state_db
    }

    /// The index of the snapshot the state was last installed from; 0 for none
    /// ([`fsm::installed_at`]).
    pub fn installed_at(&self) -> Result<u64, CoreError> {
        Ok(fsm::installed_at(&self.state_db.begin_read().map_err(redb_err)?)?)
    }

    /// The backup the state descends from ([`fsm::restored_from`]).
    pub fn restored_from(&self) -> Result<fsm::RestoredFrom, CoreError> {
        Ok(fsm::restored_from(&self.state_db.begin_read().map_err(redb_err)?)?)
    }

    /// This member's snapshots: the carrier of raft messages streams outgoing ones from here
    /// and stages incoming ones in its inbox.
    pub fn snapshots(&self) -> &Arc<Snapshots> {
        &self.snapshots
    }

    /// The raft log as stored (read-only), for checks such as log matching in the simulator.
    pub fn log(&self) -> &LogStore {
        self.raw.store()
    }

    /// Bytes of history stored, as of the last batch applied (`--history-retention-bytes`).
    pub fn history_bytes(&self) -> u64 {
        self.compactor.stored()
    }

    /// Raft's configuration: who votes, who only learns.
    pub fn conf_state(&self) -> ConfState {
        self.raw.raft.prs().conf().to_conf_state()
    }

    pub fn status(&self) -> Status {
        let r = &self.raw.raft;
        Status {
            id: r.id,
            term: r.term,
            leader: r.leader_id,
            role: match r.state {
                // A member that does not vote: a learner, or one added that has not applied its
                // own addition yet (it replays the changes before it).
                StateRole::Follower if !r.prs().conf().voters().contains(r.id) => Role::Learner,
                StateRole::Follower => Role::Follower,
                StateRole::Candidate => Role::Candidate,
                StateRole::PreCandidate => Role::PreCandidate,
                StateRole::Leader => Role::Leader,
            },
            commit_index: r.raft_log.committed,
            applied: self.applied,
            durable_index: self.durable_index,
            caught_up: self.read_floor.is_some_and(|floor| self.applied.index >= floor),
            snapshots_installed: self.snapshots_installed,
            proposals_pending: self.proposals.len() as u64,
            compacted_index: self.raw.store().compacted().index,
            log_cached_bytes: self.raw.store().cached_bytes() as u64,
            reads_awaiting_apply: self.confirmed_reads.values().map(|r| r.len() as u64).sum(),
            sessions: self.leases.len() as u64,
            cluster_version: self.cluster_version,
            build_version: self.build_version,
        }
    }

    /// Sets this member's clock (milliseconds, monotonic: a value behind the clock is ignored).
    /// The first reading is where the clock starts: leases loaded before it count from there.
    pub fn set_clock(&mut self, now_ms: u64) {
        if !self.clock_set {
            self.clock_set = true;
            self.leases.clock_started(now_ms);
            self.lock_delays.clock_started(now_ms);
            self.instance_timers.clock_started(now_ms);
        }
        self.clock_ms = self.clock_ms.max(now_ms);
    }

    /// The lease left of session `id` as this member counts it, if the session is live here.
    pub fn lease_remaining(&self, id: &str) -> Option<u64> {
        self.leases.remaining(id, self.clock_ms)
    }

    /// A keepalive of session `id`; answered by `Action::KeptAlive` for `waiter` (see
    /// [`leases`]): by the leader only, at once or once a checkpoint renewed the lease.
    pub fn keep_alive(&mut self, waiter: Waiter, id: String) {
        let r = &self.raw.raft;
        if r.state != StateRole::Leader {
            let error = RequestError::NotLeader { member: r.id, leader: r.leader_id };
            self.actions.push(Action::KeptAlive { waiter, result: Err(error) });
            return;
        }
        if !self.leases_ready() {
            self.early_keepalives.push((waiter, id, self.clock_ms));
            return;
        }
        if let Some(result) = self.leases.keep_alive(waiter, &id, self.clock_ms) {
            self.actions.push(Action::KeptAlive { waiter, result });
        }
    }

    /// Whether this member leads and its leases are promoted (see [`Core::tend_leases`]).
    fn leases_ready(&self) -> bool {
        self.raw.raft.state == StateRole::Leader && self.leases.leading() == Some(self.raw.raft.term)
    }

    /// Whether the member's log held nothing when it was loaded: its first life, or a later
    /// one on a data dir that lost the log. Such a member must ask its peers before it takes
    /// part (`server::admission`).
    pub fn log_was_fresh(&self) -> bool {
        self.raw.store().is_fresh()
    }

    /// Whether the raft log is as a restore from a backup left it, nothing done in it since
    /// (`storage::LogStore::is_as_restored`): like an empty one, a first life, or a later one
    /// restored again after its data was lost.
    pub fn log_as_restored(&self) -> bool {
        self.raw.store().is_as_restored()
    }

    /// This member's empty data dir is not its first life: it was replaced after losing its
    /// data (its peers had it a learner, `membership`). Its empty state is then far behind what
    /// its earlier life served, so no serializable read is served before a ReadIndex round of
    /// this life confirmed an index and the state reached it, as after any restart.
    /// Until it applied something (a snapshot, or entries from the leader, whose term is past
    /// any its earlier life voted in), it grants no vote either: it may have voted in its earlier
    /// life, and a candidate that has not applied its replacement still counts its vote.
    pub fn lived_before(&mut self) {
        if self.applied.index <= self.first_applied {
            self.read_floor = None;
            self.withhold_votes = true;
        }
    }

    /// Whether the applied state records this member's start (`fsm::members`).
    pub fn start_recorded(&self) -> bool {
        self.start == StartRecord::Recorded
    }

    /// Notes whether the applied state records this member's start, after a record of some
    /// member applied or a snapshot was installed (a record replayed from the log, or this
    /// life's own, or one in the snapshot). A state that cannot be read now is asked again at
    /// the next record.
    fn check_start_recorded(&mut self) {
        if self.start == StartRecord::Recorded {
            return;
        }
        let recorded = self.state_db.begin_read().ok().map(|t| fsm::members::is_recorded(&t, self.id()));
        if let Some(Ok(true)) = recorded {
            self.start = StartRecord::Recorded;
        }
    }

    /// Proposes the record of this member's start once a leader is known, until it applies:
    /// again once a proposal is gone (timed out: it may have been lost with a leader; or refused
    /// by an overloaded leader), a request timeout after the last.
    fn record_start(&mut self) {
        let StartRecord::Unrecorded(last) = &self.start else { return };
        let wait = last.as_ref().is_some_and(|(id, at)| {
            self.proposals.contains_key(id) || self.now - at < self.timing.request_timeout_ticks
        });
        if wait || self.raw.raft.leader_id == raft::INVALID_ID {
            return;
        }
        let member = self.id();
        let id = self.propose_own(OWN_WAITER, Body::MemberStarted(MemberStarted { member }));
        self.start = StartRecord::Unrecorded(Some((id, self.now)));
    }

    /// The leader's lease work for this turn. Once it has applied every entry of earlier terms
    /// its leases are promoted; then keepalives that waited for that are answered, and its
    /// checkpoints and expiries proposed under its own ids.
    fn tend_leases(&mut self) {
        let r = &self.raw.raft;
        let applied_earlier_terms =
            self.lease_ready_from.is_some_and(|(term, index)| term == r.term && self.applied.index >= index);
        if r.state != StateRole::Leader || !applied_earlier_terms {
            return;
        }
        if self.leases.leading() != Some(r.term) {
            let term = r.term;
            self.leases.promoted(term, self.clock_ms);
        }
        for (waiter, id, _) in std::mem::take(&mut self.early_keepalives) {
            if let Some(result) = self.leases.keep_alive(waiter, &id, self.clock_ms) {
                self.actions.push(Action::KeptAlive { waiter, result });
            }
        }
        let clock_every = self.timing.election_tick as u64 * self.timing.tick_ms;
        let proposals = &self.proposals;
        self.lease_proposals.retain(|id| proposals.contains_key(id));
        for body in self.leases.tend(self.clock_ms, clock_every) {
            let id = self.propose_own(OWN_WAITER, body);
            self.lease_proposals.insert(id);
        }
        for body in self.lock_delays.due(self.clock_ms, 2 * clock_every) {
            self.propose_own(OWN_WAITER, body);
        }
        for body in self.instance_timers.due(self.clock_ms, 2 * clock_every) {
            self.propose_own(OWN_WAITER, body);
        }
        if let Some(revision) = self.compactor.due(self.clock_ms, self.applied.revision) {
            self.propose_own(OWN_WAITER, Body::Compact(Compact { revision }));
        }
    }

    fn kept_alive(&mut self, replies: Vec<(Waiter, Result<Grant, RequestError>)>) {
        self.actions.extend(replies.into_iter().map(|(waiter, result)| Action::KeptAlive { waiter, result }));
    }

    /// When this member learned of entry `index`: when it appended it as leader, else now.
    fn learned_at(&self, index: u64) -> u64 {
        // Ordered and disjoint: the first batch ending at or after `index` holds it, if any does.
        let at = self.append_times.partition_point(|(_, last, _)| *last < index);
        match self.append_times.get(at) {
            Some((first, _, appended)) if *first <= index => *appended,
            _ => self.clock_ms,
        }
    }

    /// Advances logical time by one tick: raft's election and heartbeat clocks, request
    /// timeouts, ReadIndex retries.
    pub fn tick(&mut self) {
        self.now += 1;
        self.raw.tick();
        self.redraw_election_timeout(false);
        let now = self.now;
        let t = self.timing;
        let member = self.id();
        let timed_out = RequestError::TimedOut { ticks: t.request_timeout_ticks, proposed: false };
        let proposal_timed_out = RequestError::TimedOut { ticks: t.request_timeout_ticks, proposed: true };
        let old = |arrived_at: u64| now - arrived_at >= t.request_timeout_ticks;
        // Proposals: fail the ones too old.
        let expired: Vec<String> =
            self.proposals.iter().filter(|(_, p)| old(p.arrived_at)).map(|(id, _)| id.clone()).collect();
        for id in expired {
            if let Some(p) = self.proposals.remove(&id) {
                for w in p.waiters {
                    self.actions.push(Action::Reply { waiter: w, result: Err(proposal_timed_out.clone()) });
                }
            }
        }
        let (expired, pending): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.changes).into_iter().partition(|c| old(c.arrived_at));
        self.changes = pending;
        for c in expired {
            self.actions.push(Action::Changed { waiter: c.waiter, result: Err(proposal_timed_out.clone()) });
        }
        // Reads asked: time out, or ask again under a new context (raft-rs drops a ReadIndex a
        // new leader cannot serve yet, and a lost message loses it too).
        let ctxs: Vec<u64> = self.asked_reads.keys().copied().collect();
        for ctx in ctxs {
            let Some(b) = self.asked_reads.get(&ctx) else { continue };
            if old(b.arrived_at) {
                if let Some(b) = self.asked_reads.remove(&ctx) {
                    for w in b.waiters {
                        self.actions.push(Action::ReadFailed { waiter: w, error: timed_out.clone() });
                    }
                }
            } else if now - b.asked_at >= t.read_retry_ticks {
                if let Some(mut b) = self.asked_reads.remove(&ctx) {
                    b.asked_at = now;
                    self.ask_read_index(b);
                }
            }
        }
        // Reads confirmed but not applied yet (this member is behind): time out like the rest.
        for reads in self.confirmed_reads.values_mut() {
            let (expired, waiting): (Vec<_>, Vec<_>) =
                std::mem::take(reads).into_iter().partition(|r| old(r.arrived_at));
            *reads = waiting;
            for r in expired {
                self.actions.push(Action::ReadFailed { waiter: r.waiter, error: timed_out.clone() });
            }
        }
        self.confirmed_reads.retain(|_, reads| !reads.is_empty());
        // A lost lease proposal is retried within two election timeouts (the rule's slack); a
        // waiting keepalive fails after a few seconds, as a client's request would.
        let proposal_timeout = 2 * self.timing.election_tick as u64 * self.timing.tick_ms;
        let replies =
            self.leases.time_out(self.clock_ms, proposal_timeout, LEASE_WAIT_TIMEOUT_MS, &timed_out);
        self.kept_alive(replies);
        let clock = self.clock_ms;
        let (late, early): (Vec<_>, Vec<_>) = std::mem::take(&mut self.early_keepalives)
            .into_iter()
            .partition(|(_, _, at)| clock.saturating_sub(*at) >= LEASE_WAIT_TIMEOUT_MS);
        self.early_keepalives = early;
        for (waiter, _, _) in late {
            self.actions.push(Action::KeptAlive { waiter, result: Err(timed_out.clone()) });
        }
        if !self.new_reads.is_empty() && old(self.new_reads_since) {
            for w in std::mem::take(&mut self.new_reads) {
                self.actions.push(Action::ReadFailed { waiter: w, error: RequestError::NoLeader { member } });
            }
        }
        self.append_check_point_when_due();
        self.promote_caught_up_learner();
    }

    /// As leader, appends a check point (an empty entry: `state_check`) once
    /// `state_check_interval_ms` has passed since the last one it appended, or since it became
    /// leader (raft appends one then).
    fn append_check_point_when_due(&mut self) {
        let interval = self.state_check_interval_ms;
        if self.raw.raft.state != StateRole::Leader || interval == 0 {
            self.last_check_point_ms = None;
            return;
        }
        let clock = self.clock_ms;
        let last = *self.last_check_point_ms.get_or_insert(clock);
        if clock.saturating_sub(last) >= interval {
            self.last_check_point_ms = Some(clock);
            // Refused only while a leadership transfer is on or the uncommitted bound is full:
            // the next tick tries again after another interval.
            if let Err(e) = self.raw.propose(Vec::new(), Vec::new()) {
                tracing::debug!(member = self.id(), error = %e, "check point not appended");
            }
        }
    }

    /// A raft message from a peer.
    ///
    /// A snapshot message must carry the token of a stream staged in this member's inbox (its
    /// carrier puts it there): whatever raft does not keep of it — a stale or needless snapshot,
    /// or one a newer snapshot replaces before it is installed — is removed from the inbox.
    pub fn step(&mut self, msg: Message) -> Result<(), CoreError> {
        // A leader's heartbeat commits up to what this member acknowledged (raft-rs sends
        // `min(matched, committed)`); past the end of its log, raft-rs would panic.
        let last = self.raw.raft.raft_log.last_index();
        if msg.get_msg_type() == MessageType::MsgHeartbeat
            && msg.term >= self.raw.raft.term
            && msg.commit > last
        {
            let (member, leader, acknowledged) = (self.id(), msg.from, msg.commit);
            return Err(CoreError::ForgotEntries { member, leader, acknowledged, last });
        }
        // A member removed from the configuration takes no part: not even its votes' terms (it
        // may not have heard of its removal, and campaigns). Until it stops, its peers drop its
        // messages, and their transports tell it (`transport`). Removed: one of the members the
        // cluster had that raft's configuration no longer has. One this member does not know
        // yet was added in a change it has still to apply, and is not dropped.
        if self.known.has(msg.from) && self.raw.raft.prs().get(msg.from).is_none() {
            if is_snapshot(&msg) {
                self.snapshots.inbox().remove(&msg.get_snapshot().data);
            }
            return Ok(());
        }
        if self.withhold_votes {
            let asks_vote =
                matches!(msg.get_msg_type(), MessageType::MsgRequestVote | MessageType::MsgRequestPreVote);
            match self.applied.index > self.first_applied {
                true => self.withhold_votes = false,
                false if asks_vote => return Ok(()),
                false => {}
            }
        }
        let staged = is_snapshot(&msg).then(|| msg.get_snapshot().data.to_vec());
        let from_leader = msg.from == self.raw.raft.leader_id && msg.term == self.raw.raft.term;
        let pending_before = self.pending_snapshot();
        let from = msg.from;
        let result = self.raw.step(msg);
        if from != self.id() && self.raw.raft.prs().get(from).is_some() {
            self.heard_from.insert(from, self.clock_ms);
            self.heard_at_tick.insert(from, self.now);
        }
        self.redraw_election_timeout(false);
        let pending = self.pending_snapshot();
        for token in [staged, pending_before].into_iter().flatten() {
            if pending.as_ref() != Some(&token) {
                self.snapshots.inbox().remove(&token);
            }
        }
        if from_leader && std::mem::take(&mut self.leader_link_lost) {
            self.propose_again();
        }
        match result {
            // Only a failure of this member's own storage is fatal. Anything else is about the
            // message and is dropped with it: one from an unknown or removed peer, a stale one,
            // or a proposal a peer forwarded here when this member no longer knows a leader
            // (raft-rs's `ProposalDropped`; its proposer proposes it again).
            Err(e @ (raft::Error::Store(_) | raft::Error::Io(_))) => Err(e.into()),
            Ok(()) | Err(_) => Ok(()),
        }
    }

    /// The token of the snapshot raft holds to install, if any.
    fn pending_snapshot(&self) -> Option<Vec<u8>> {
        self.raw.raft.raft_log.unstable.snapshot.as_ref().map(|s| s.data.to_vec())
    }

    /// The transport lost messages to `peer`. When it is the leader, proposals forwarded to it
    /// may have been among them: they are handed to raft again once a message from the leader
    /// shows the link is back (see [`Core::step`]).
    pub fn report_unreachable(&mut self, peer: u64) {
        self.raw.report_unreachable(peer);
        self.redraw_election_timeout(false);
        if peer == self.raw.raft.leader_id && self.raw.raft.state != StateRole::Leader {
            self.leader_link_lost = true;
        }
    }

    pub fn report_snapshot(&mut self, peer: u64, ok: bool) {
        if ok {
            if let Some(pr) = self.raw.raft.prs().get(peer).filter(|pr| pr.state == ProgressState::Snapshot) {
                self.snapshots_delivered.insert(peer, (pr.pending_snapshot, self.clock_ms));
            }
        }
        let status = if ok { raft::SnapshotStatus::Finish } else { raft::SnapshotStatus::Failure };
        self.raw.report_snapshot(peer, status);
        self.redraw_election_timeout(false);
    }

    /// Proposes a command; its outcome comes back as `Action::Reply` for `waiter` once applied
    /// here. The same command under a request id already pending joins that proposal; another
    /// command under it is refused at once (`RequestError::RequestInFlight`). A command without
    /// a request id gets one of this member's own.
    ///
    /// The command is proposed at [`Core::proposing_version`], whatever version it came with
    /// (the request hash leaves the version out): a raise of the cluster version alone keeps
    /// its own, the version it raises to.
    pub fn propose(&mut self, waiter: Waiter, mut cmd: Command) {
        if cmd.request_id.is_empty() {
            cmd.request_id = self.own_request_id();
        }
        if !matches!(cmd.body, Some(Body::RaiseClusterVersion(_))) {
            cmd.version = self.proposing_version();
        }
        if let Some(first) = cmd.body.as_ref().map(fsm::first_version).filter(|first| *first > cmd.version) {
            let error = RequestError::ClusterVersion {
                member: self.id(),
                cluster: self.cluster_version,
                needed: first,
                settled: self.knows_the_cluster_version(),
            };
            self.actions.push(Action::Reply { waiter, result: Err(error) });
            return;
        }
        let id = cmd.request_id.clone();
        let data = cmd.encode_to_vec();
        let hash = fsm::request_hash(&cmd, &data);
        if let Some(p) = self.proposals.get_mut(&id) {
            if p.hash == hash {
                p.waiters.push(waiter);
            } else {
                let error = RequestError::RequestInFlight { request_id: id };
                self.actions.push(Action::Reply { waiter, result: Err(error) });
            }
            return;
        }
        let pending = PendingProposal { data, hash, waiters: vec![waiter], arrived_at: self.now };
        self.proposals.insert(id.clone(), pending);
        self.propose_pending(&id, true);
    }

    /// Proposes a command of this member's own (an expiry, say) under a fresh unique request id,
    /// which it returns; its outcome comes back for `waiter` like any other.
    pub fn propose_own(&mut self, waiter: Waiter, body: Body) -> String {
        let request_id = self.own_request_id();
        let cmd =
            Command { version: self.proposing_version(), request_id: request_id.clone(), body: Some(body) };
        self.propose(waiter, cmd);
        request_id
    }

    /// The version this member proposes its commands at: the cluster version, or its own build's
    /// if that is older (a cluster raised past a member's build has that member stop at the
    /// raise, so it never gets here).
    pub fn proposing_version(&self) -> u32 {
        self.cluster_version.min(self.build_version)
    }

    /// Whether the cluster version this member applied is as recent as any request it may be
    /// asked again about: it leads; it has applied an entry of its own term — its first, the
    /// empty one, comes after every entry of earlier leaders, so every raise they committed is
    /// applied here; and it has applied every raise committed since (one a follower applied
    /// first lets it forward commands of the version raised to, which this member's log may
    /// already hold). A leader under steady load applies entries of its term all the time, so
    /// this holds but for the first moments of a term and of a raise.
    fn knows_the_cluster_version(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
            && self.applied.term == self.raw.raft.term
            && self.applied.index >= self.raise_handed_out
    }

    /// A request id no other member, and no other life of this one, ever makes.
    fn own_request_id(&mut self) -> String {
        let n = self.next_own_id;
        self.next_own_id += 1;
        format!("member-{}-{:016x}-{n}", self.id(), self.nonce)
    }

    /// Hands a pending proposal to raft. Dropped when no leader is known: it stays pending and
    /// is handed to raft again when a leader appears. Dropped by this member as leader: its log
    /// holds too much uncommitted — a `first` proposal is then refused (it is in no log); one
    /// proposed before stays pending, since an earlier copy of it may still commit.
    fn propose_pending(&mut self, id: &str, first: bool) {
        let Some(p) = self.proposals.get(id) else { return };
        if let Err(raft::Error::ProposalDropped) = self.raw.propose(vec![], p.data.clone()) {
            if first && self.raw.raft.state == StateRole::Leader {
                let error = RequestError::Overloaded {
                    member: self.id(),
                    what: "the leader's uncommitted log",
                    limit: self.max_uncommitted_bytes,
                    flag: "--max-uncommitted-bytes",
                };
                if let Some(p) = self.proposals.remove(id) {
                    for w in p.waiters {
                        self.actions.push(Action::Reply { waiter: w, result: Err(error.clone()) });
                    }
                }
            }
        }
    }

    /// Asks for a linearizable read; `Action::ReadReady` tells when it may be served.
    /// Reads arriving together share one ReadIndex round (see [`Core::flush_reads`]).
    pub fn read_index(&mut self, waiter: Waiter) {
        if self.new_reads.is_empty() {
            self.new_reads_since = self.now;
        }
        self.new_reads.push(waiter);
    }

    /// Waits until the state has caught up (see [`Status::caught_up`]): with the index a
    /// ReadIndex round of this life confirmed, or, before any, through one of its own.
    /// `Action::ReadReady` tells when. A serializable read asks this before it is served, until
    /// the member has caught up.
    pub fn read_caught_up(&mut self, waiter: Waiter) {
        match self.read_floor {
            Some(floor) => {
                let read = ConfirmedRead { waiter, arrived_at: self.now };
                self.confirmed_reads.entry(floor).or_default().push(read);
                self.grant_reads();
            }
            None => self.read_index(waiter),
        }
    }

    /// Asks one ReadIndex for every read that arrived since the last call.
    pub fn flush_reads(&mut self) {
        if self.new_reads.is_empty() || self.raw.raft.leader_id == raft::INVALID_ID {
            return;
        }
        let batch = ReadBatch {
            waiters: std::mem::take(&mut self.new_reads),
            asked_at: self.now,
            arrived_at: self.new_reads_since,
        };
        self.ask_read_index(batch);
    }

    fn ask_read_index(&mut self, batch: ReadBatch) {
        let counter = self.next_read_ctx;
        self.next_read_ctx += 1;
        self.raw.read_index(self.read_context(counter));
        self.asked_reads.insert(counter, batch);
    }

    /// A ReadIndex context: member id, this life's nonce, counter (8 bytes each, big endian).
    fn read_context(&self, counter: u64) -> Vec<u8> {
        let mut ctx = Vec::with_capacity(24);
        ctx.extend_from_slice(&self.id().to_be_bytes());
        ctx.extend_from_slice(&self.nonce.to_be_bytes());
        ctx.extend_from_slice(&counter.to_be_bytes());
        ctx
    }

    /// Fails every waiting request; the driver calls it when stopping.
    pub fn shut_down(&mut self) -> Vec<Action> {
        for (_, p) in std::mem::take(&mut self.proposals) {
            for w in p.waiters {
                self.actions.push(Action::Reply {
                    waiter: w,
                    result: Err(RequestError::ShuttingDown { proposed: true }),
                });
            }
        }
        let reads = std::mem::take(&mut self.new_reads)
            .into_iter()
            .chain(std::mem::take(&mut self.asked_reads).into_values().flat_map(|b| b.waiters))
            .chain(std::mem::take(&mut self.confirmed_reads).into_values().flatten().map(|r| r.waiter));
        let failed: Vec<Action> = reads
            .map(|w| Action::ReadFailed { waiter: w, error: RequestError::ShuttingDown { proposed: false } })
            .collect();
        self.actions.extend(failed);
        let keepalives = self.leases.demoted(self.id(), 0);
        let early = std::mem::take(&mut self.early_keepalives).into_iter().map(|(w, _, _)| w);
        for waiter in keepalives.into_iter().map(|(w, _)| w).chain(early) {
            self.actions.push(Action::KeptAlive {
                waiter,
                result: Err(RequestError::ShuttingDown { proposed: false }),
            });
        }
        for c in std::mem::take(&mut self.changes) {
            self.actions.push(Action::Changed {
                waiter: c.waiter,
                result: Err(RequestError::ShuttingDown { proposed: false }),
            });
        }
        std::mem::take(&mut self.actions)
    }

    /// Processes raft's Ready, if any, in raft-rs's documented order. `send` is called with
    /// messages as soon as they may leave: the leader's appends before its own fsync (raft
    /// thesis §10.2.1), everything else after the commit, each batch coalesced (`coalesce`:
    /// one append per follower, one answer per leader). `observer` is told when the commit
    /// starts and finishes. `install` restores a snapshot in the state, durably (the applier's
    /// [`Applier::install`], on whatever thread it runs), before the log records it. Returns the
    /// actions for the driver.
    pub fn handle_ready(
        &mut self,
        send: &mut dyn FnMut(Vec<Message>),
        observer: &mut dyn ReadyObserver,
        install: &mut Install,
    ) -> Result<Vec<Action>, CoreError> {
        if let Some(index) = self.removed_at.filter(|at| *at <= self.applied.index) {
            let how = format!("it applied the change that removed it, at raft log index {index}");
            return Err(CoreError::Removed { member: self.id(), how, mark: true });
        }
        self.observe_raft();
        self.tend_leases();
        self.record_start();
        if !self.raw.has_ready() {
            return Ok(std::mem::take(&mut self.actions));
        }
        // Every batch leaves coalesced, whichever point of the Ready sends it.
        let send = &mut |msgs| send(coalesce::coalesce(msgs));
        let mut ready = self.raw.ready();
        if !ready.messages().is_empty() {
            send(ready.take_messages());
        }
        let mut to_apply = Vec::new();

        let mut installed = None;
        if !ready.snapshot().is_empty() {
            self.persist_term_and_vote(ready.hs(), observer)?;
            let snap = ready.snapshot().clone();
            let meta = snap.get_metadata();
            // Every entry handed to the applier before is older than the snapshot: the applier
            // takes them in order, then the snapshot replaces what they made.
            let conf = membership::encode(meta.get_conf_state()).map_err(raft::Error::from)?;
            self.applied = install(&snap.data, meta.index, meta.term, &conf)?;
            self.durable_index = self.applied.index;
            self.handed_out = self.handed_out.max(meta.index);
            self.raw.mut_store().install_snapshot(meta)?;
            self.snapshots_installed += 1;
            let conf = meta.get_conf_state();
            self.known.added = fsm::members::added(&self.state_db.begin_read().map_err(redb_err)?)?;
            self.cluster_version =
                fsm::versions::cluster_version(&self.state_db.begin_read().map_err(redb_err)?)?;
            if self.cluster_version > self.build_version {
                // Installed, and refused again at the next start, before anything is proposed.
                let (cluster, build) = (self.cluster_version, self.build_version);
                return Err(CoreError::ClusterAhead { member: self.id(), cluster, build });
            }
            if self.known.removed(conf, self.id()) {
                self.removed_at = Some(meta.index);
            }
            // The snapshot replaced the whole log; this Ready's entries come after it.
            self.logged_additions.clear();
            let configuration = self.configuration_of(conf);
            self.actions.push(Action::Membership(configuration));
            let replies = self.leases.reload(stored_leases(&self.state_db)?, self.clock_ms);
            self.kept_alive(replies);
            self.lock_delays.reload(stored_lock_delays(&self.state_db)?, self.clock_ms);
            self.instance_timers.reload(stored_instance_timers(&self.state_db)?, self.clock_ms);
            installed = Some((snap, self.applied.revision));
        }
        self.hand_out(ready.take_committed_entries(), &mut to_apply)?;
        let entries_persisted = ready.entries().len();
        if !ready.entries().is_empty() {
            if self.raw.raft.state == StateRole::Leader {
                let (first, last) = (ready.entries()[0].index, ready.entries()[entries_persisted - 1].index);
                self.append_times.push_back((first, last, self.clock_ms));
            }
            self.raw.mut_store().append(ready.entries())?;
            self.log_additions(ready.entries());
        }
        if let Some(hs) = ready.hs() {
            self.raw.mut_store().set_hard_state(hs)?;
        }
        let persisted = ready.take_persisted_messages();
        for rs in ready.take_read_states() {
            self.read_confirmed(&rs.request_ctx, rs.index);
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        self.hand_out(light.take_committed_entries(), &mut to_apply)?;
        self.maybe_compact()?;
        if self.raw.store().dirty() {
            observer.commit_started();
            self.raw.mut_store().flush()?;
            observer.commit_finished(entries_persisted);
            self.raw.mut_store().committed();
        }
        if let Some((snap, revision)) = installed {
            self.snapshots.inbox().remove(&snap.data);
            let index = snap.get_metadata().index;
            tracing::info!(
                member = self.id(),
                term = self.raw.raft.term,
                index,
                revision,
                "snapshot installed"
            );
            self.announced_revision = self.announced_revision.max(revision);
            self.compactor.restored();
            self.check_start_recorded();
            self.actions.push(Action::Restored { index, revision });
            self.answer_from_memory()?;
        }

        if !persisted.is_empty() {
            send(persisted);
        }
        if !light.messages().is_empty() {
            send(light.take_messages());
        }
        // Handed out only now: the commit index that covers them is on disk.
        if !to_apply.is_empty() {
            self.actions.push(Action::Apply { entries: to_apply });
        }
        self.grant_reads();
        Ok(std::mem::take(&mut self.actions))
    }

    /// Makes the term and vote of a Ready that carries a snapshot durable in the log before the
    /// snapshot replaces the state (its commit index is recorded with the snapshot, after). A
    /// member dying between the install and the log's flush then finds a log that holds raft
    /// state, and records the snapshot there at its next start (`LogStore::reconcile`). Without
    /// this, a member in its first life whose first term came with the snapshot (its log held
    /// nothing yet) would find a state past an empty log — what a lost log looks like — and be
    /// refused at every start.
    fn persist_term_and_vote(
        &mut self,
        hs: Option<&HardState>,
        observer: &mut dyn ReadyObserver,
    ) -> Result<(), CoreError> {
        let store = self.raw.mut_store();
        let Some(hs) =
            hs.filter(|hs| hs.term != store.hard_state().term || hs.vote != store.hard_state().vote)
        else {
            return Ok(());
        };
        let mut early = hs.clone();
        early.commit = store.hard_state().commit;
        store.set_hard_state(&early)?;
        observer.commit_started();
        store.flush()?;
        observer.commit_finished(0);
        Ok(())
    }

    /// Adds the committed entries not handed to the applier yet (an installed snapshot covers
    /// the older ones). Raft applies a change of membership here, and the entry reaches the
    /// applier with the configuration it led to in its `context`, for the state to record.
    fn hand_out(&mut self, entries: Vec<Entry>, out: &mut Vec<Entry>) -> Result<(), CoreError> {
        for mut e in entries {
            if e.index > self.handed_out {
                self.handed_out = e.index;
                if may_raise(&e.data) {
                    self.raise_handed_out = e.index;
                }
                if e.get_entry_type() != EntryType::EntryNormal {
                    let conf = self.change_membership(&e)?;
                    e.context = membership::encode(&conf).map_err(raft::Error::from)?.into();
                }
                out.push(e);
            }
        }
        Ok(())
    }

    /// Applies the change of membership of committed entry `e` to raft, returning the
    /// configuration reached. A change raft refuses (none this build proposes) leaves it as it
    /// was, on every member alike.
    fn change_membership(&mut self, e: &Entry) -> Result<ConfState, CoreError> {
        let (member, index) = (self.id(), e.index);
        let mut lost = Vec::new();
        for c in self.changes.iter_mut().filter(|c| c.index == index) {
            match c.term == e.term {
                true => c.taken = true,
                false => lost.push(c.waiter),
            }
        }
        self.changes.retain(|c| !lost.contains(&c.waiter));
        for waiter in lost {
            let result = Err(membership::Refused::Lost { index }.into());
            self.actions.push(Action::Changed { waiter, result });
        }
        let voters_before = self.conf_state().voters;
        let cc = membership::change_of(e);
        let applied = match &cc {
            Ok(cc) => self.raw.apply_conf_change(cc),
            Err(undecodable) => Err(raft::Error::ConfChangeError(undecodable.to_string())),
        };
        let conf = match applied {
            Ok(conf) => conf,
            Err(error) => {
                tracing::error!(member, index, %error, "a change of membership was refused; the members stay as they were");
                self.conf_state()
            }
        };
        // The applier records the addition alike (`fsm::members::add`), from the same entry.
        if let Some((added, addr)) = cc.ok().and_then(|cc| membership::addition_taken(&cc, &conf)) {
            self.known.added.entry(added).or_insert(addr);
        }
        for learner in &conf.learners {
            self.learners_since.entry(*learner).or_insert(index);
        }
        // A replaced member forgot what its old life acknowledged: as leader, forget it too.
        let demoted: Vec<u64> =
            conf.learners.iter().copied().filter(|id| voters_before.contains(id) && *id != member).collect();
        if self.raw.raft.state == StateRole::Leader {
            for id in demoted {
                self.forget_progress(id);
            }
        }
        self.learners_since.retain(|id, _| conf.learners.contains(id));
        tracing::info!(member, index, voters = ?conf.voters, learners = ?conf.learners, "membership changed");
        if self.known.removed(&conf, member) {
            // A leader that commits its own removal (elected with it in its log) stops at once:
            // raft-rs keeps it leading with no progress of its own, and its next append or
            // acknowledgement would panic there. The others may not have heard of the commit
            // yet (with two voters, the one left still needs this member's vote until it has):
            // no mark, so that a start on its data dir can still tell them — elected again, it
            // commits and stops again, until they know.
            if self.raw.raft.state == StateRole::Leader {
                let how = format!(
                    "it led, and committed the change that removed it, at raft log index {index}; \
                     its data dir is not marked, in case the members left have not heard of the \
                     commit yet"
                );
                return Err(CoreError::Removed { member, how, mark: false });
            }
            self.removed_at = Some(index);
        }
        self.logged_additions = self.logged_additions.split_off(&(index + 1));
        self.actions.push(Action::Membership(self.configuration_of(&conf)));
        self.hand_over_if_demoted();
        Ok(conf)
    }

    /// Raft-rs leaves a leader demoted by a change it committed leading (a member elected
    /// with the replacement of itself in its log — its old life was not stopped): as long as it
    /// leads without a vote, it hands over to the running voter furthest along, again whenever
    /// no handover is under way (raft-rs abandons one after an election timeout, and a target
    /// with a change still to apply refuses it).
    fn hand_over_if_demoted(&mut self) {
        let r = &self.raw.raft;
        if r.state != StateRole::Leader
            || r.prs().conf().voters().contains(r.id)
            || r.lead_transferee.is_some()
        {
            return;
        }
        if let Some(next) = self.successor() {
            self.raw.transfer_leader(next);
        }
    }

    /// As leader, makes voter `member` a learner, so that it may start again on an empty data
    /// dir (`membership`). `waiter` is answered ([`Action::Changed`]) with the index of the
    /// change's entry once the state holds it, or 0 when the member is a learner already; a
    /// change of leader before its commit may lose it, and the waiter is told.
    pub fn replace(&mut self, waiter: Waiter, member: u64) {
        let proposed = self.propose_replacement(member);
        self.await_change(waiter, proposed);
    }

    /// `waiter` waits for the change proposed at the index `proposed` names: answered at once
    /// when nothing was proposed (0) or the proposal was refused, else once the state holds it.
    fn await_change(&mut self, waiter: Waiter, proposed: Result<u64, RequestError>) {
        match proposed {
            Ok(0) => self.actions.push(Action::Changed { waiter, result: Ok(0) }),
            Ok(index) => {
                let term = self.raw.raft.term;
                self.changes.push(PendingChange { waiter, index, term, arrived_at: self.now, taken: false });
            }
            Err(e) => self.actions.push(Action::Changed { waiter, result: Err(e) }),
        }
    }

    /// As leader, removes `member` (a voter or a learner) from the cluster for good
    /// (`membership::check_remove`). `waiter` is answered as by [`Core::replace`]. Asked to
    /// remove itself, the leader hands leadership to the running voter furthest along and
    /// refuses, retryably: the next leader removes it.
    pub fn remove(&mut self, waiter: Waiter, member: u64) {
        let proposed = self.propose_removal(member);
        self.await_change(waiter, proposed);
    }

    fn propose_removal(&mut self, member: u64) -> Result<u64, RequestError> {
        let me = self.id();
        let running = self.running_members()?;
        let conf = self.conf_state();
        let pending = self.raw.raft.has_pending_conf();
        let successor = self.successor().filter(|id| running.contains(id));
        let checked =
            membership::check_remove(me, (&conf, &self.known), member, pending, &running, successor);
        if let (Err(membership::Refused::HandingOver { to, .. }), None) =
            (&checked, self.raw.raft.lead_transferee)
        {
            self.raw.transfer_leader(*to);
        }
        match checked? {
            true => self.propose_change(membership::removal(member)),
            false => Ok(0),
        }
    }

    /// As leader, the members that run: this one, and the peers heard from within two election
    /// timeouts — refused while it has not led that long, as it may not have heard from every
    /// member that runs yet.
    fn running_members(&self) -> Result<Vec<u64>, RequestError> {
        let me = self.id();
        if self.raw.raft.state != StateRole::Leader {
            return Err(RequestError::NotLeader { member: me, leader: self.raw.raft.leader_id });
        }
        let (now, window) = (self.now, 2 * self.timing.election_tick as u64);
        if now.saturating_sub(self.led_since_tick) < window {
            return Err(membership::Refused::JustElected { leader: me }.into());
        }
        let conf = self.conf_state();
        Ok((conf.voters.iter().chain(&conf.learners).copied())
            .filter(|id| *id == me || self.heard_at_tick.get(id).is_some_and(|at| now - at <= window))
            .collect())
    }

    /// As leader, the voter other than itself furthest along that answered lately: whom it
    /// hands leadership to.
    fn successor(&self) -> Option<u64> {
        let r = &self.raw.raft;
        (r.prs().iter())
            .filter(|(id, pr)| **id != r.id && r.prs().conf().voters().contains(**id) && pr.recent_active)
            .max_by_key(|(_, pr)| pr.matched)
            .map(|(id, _)| *id)
    }

    /// As leader, adds `member` as a learner at peer address `addr` (`membership::check_add`);
    /// it votes once it has caught up (`promote_caught_up_learner`). `waiter` is answered as by
    /// [`Core::replace`].
    pub fn add(&mut self, waiter: Waiter, member: u64, addr: &str) {
        let proposed = self.propose_addition(member, addr);
        self.await_change(waiter, proposed);
    }

    fn propose_addition(&mut self, member: u64, addr: &str) -> Result<u64, RequestError> {
        let me = self.id();
        if self.raw.raft.state != StateRole::Leader {
            return Err(RequestError::NotLeader { member: me, leader: self.raw.raft.leader_id });
        }
        let (conf, pending) = (self.conf_state(), self.raw.raft.has_pending_conf());
        match membership::check_add((&conf, &self.known), member, addr, pending)? {
            true => self.propose_change(membership::addition(member, addr)),
            false => {
                // Asked again: a learner that is down may have lost what it acknowledged (its
                // next start on an empty data dir), so the leader forgets it, as a replacement
                // asked again does; one that runs keeps its progress (a snapshot on its way to
                // it is not sent again).
                let down = self.running_members().is_ok_and(|running| !running.contains(&member));
                if down && !pending {
                    self.forget_progress(member);
                }
                Ok(0)
            }
        }
    }

    /// The configuration as this member applied it, with the members removed and added.
    pub fn configuration(&self) -> membership::Configuration {
        self.configuration_of(&self.conf_state())
    }

    /// Configuration `conf` (one this member reached), with the members removed and added, and
    /// the additions its log holds past the changes applied.
    fn configuration_of(&self, conf: &ConfState) -> membership::Configuration {
        membership::Configuration {
            logged: self.logged_additions.values().cloned().collect(),
            ..membership::Configuration::of(conf, &self.known)
        }
    }

    /// Keeps track of the additions among `entries`, just appended (replacing the log from the
    /// first of them on), and publishes the configuration when they changed.
    fn log_additions(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first().map(|e| e.index) else { return };
        let replaced = self.logged_additions.split_off(&first);
        let appended: BTreeMap<u64, (u64, String)> = entries
            .iter()
            .filter(|e| e.get_entry_type() == EntryType::EntryConfChangeV2)
            .filter_map(|e| {
                membership::change_of(e).ok().and_then(|cc| membership::added_by(&cc)).map(|a| (e.index, a))
            })
            .collect();
        if replaced.is_empty() && appended.is_empty() {
            return;
        }
        self.logged_additions.extend(appended);
        let configuration = self.configuration();
        self.actions.push(Action::Membership(configuration));
    }

    fn propose_replacement(&mut self, member: u64) -> Result<u64, RequestError> {
        let me = self.id();
        let running = self.running_members()?;
        let conf = self.conf_state();
        let pending = self.raw.raft.has_pending_conf();
        if !membership::check_replace(me, &conf, member, pending, &running)? {
            // A learner already, down: its new life may have lost its data again before it
            // caught up. Forget what it acknowledged, as its demotion did.
            self.forget_progress(member);
            return Ok(0);
        }
        self.propose_change(membership::demotion(member))
    }

    /// As leader, forgets what member `id` acknowledged: its next life is probed from scratch
    /// (and sent a snapshot) rather than told of a commit past the end of its empty log, which it
    /// would take for lost data and stop on.
    fn forget_progress(&mut self, id: u64) {
        let last = self.raw.raft.raft_log.last_index();
        if let Some(pr) = self.raw.raft.mut_prs().get_mut(id) {
            pr.matched = 0;
            pr.become_probe();
            pr.next_idx = last + 1;
        }
    }

    fn propose_change(&mut self, cc: raft::eraftpb::ConfChangeV2) -> Result<u64, RequestError> {
        let before = self.raw.raft.raft_log.last_index();
        let dropped = |why: String| RequestError::from(membership::Refused::Dropped { why });
        self.raw.propose_conf_change(Vec::new(), cc).map_err(|e| dropped(e.to_string()))?;
        let index = self.raw.raft.raft_log.last_index();
        let taken = index > before
            && self.raw.raft.raft_log.term(index).ok() == Some(self.raw.raft.term)
            && self.raw.raft.pending_conf_index == index;
        match taken {
            true => Ok(index),
            false => Err(dropped("it was appended as an empty entry".to_string())),
        }
    }

    /// As leader, makes a learner that caught up a voter again (`membership::ready_learner`).
    fn promote_caught_up_learner(&mut self) {
        self.hand_over_if_demoted();
        let r = &self.raw.raft;
        if r.state != StateRole::Leader || r.has_pending_conf() || !r.prs().conf().voters().contains(r.id) {
            return;
        }
        let committed = r.raft_log.committed;
        let learners: Vec<membership::Learner> = (r.prs().conf().learners().iter())
            .filter_map(|id| {
                let pr = r.prs().get(*id)?;
                Some(membership::Learner { id: *id, matched: pr.matched, recent_active: pr.recent_active })
            })
            .collect();
        for l in &learners {
            self.learners_since.entry(l.id).or_insert(committed);
        }
        if let Some(learner) = membership::ready_learner(&learners, &self.learners_since, committed) {
            let (member, term) = (self.id(), self.raw.raft.term);
            match self.propose_change(membership::promotion(learner)) {
                Ok(index) => {
                    tracing::info!(member, term, index, learner, "a learner caught up: made a voter")
                }
                Err(error) => {
                    tracing::warn!(member, term, learner, %error, "a learner caught up, but making it a voter failed")
                }
            }
        }
    }

    /// The applier applied (and maybe made durable) entries: their waiters are answered, their
    /// events leave, reads waiting for them are granted, and raft learns how far it got.
    ///
    /// Progress older than what the core knows applied was overtaken by a snapshot installed
    /// behind it (the applier took the batch first, the raft thread heard of the install
    /// first): its waiters are still answered, but its events are dropped — the snapshot,
    /// announced by `Action::Restored`, covers them, and events never go backwards.
    pub fn on_applied(&mut self, progress: Progress) -> Vec<Action> {
        let overtaken = progress.applied.index < self.applied.index;
        if !overtaken {
            self.applied = progress.applied;
            self.compactor.applied(self.applied.revision, self.clock_ms, progress.history);
        }
        let applied = self.applied.index;
        let (held, pending): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.changes).into_iter().partition(|c| c.index <= applied);
        self.changes = pending;
        for c in held {
            let result = match c.taken {
                true => Ok(c.index),
                // A snapshot covered the index: whatever is there came from another leader.
                false => Err(membership::Refused::Lost { index: c.index }.into()),
            };
            self.actions.push(Action::Changed { waiter: c.waiter, result });
        }
        if !overtaken {
            for a in progress.commands.iter().filter(|a| !a.sessions.is_empty()) {
                let learned_at = self.learned_at(a.index);
                for change in a.sessions.iter().cloned() {
                    let replies = self.leases.changed(change, a.term, learned_at, self.clock_ms);
                    self.kept_alive(replies);
                }
            }
        }
        while self.append_times.front().is_some_and(|(_, last, _)| *last <= self.applied.index) {
            self.append_times.pop_front();
        }
        self.durable_index = self.durable_index.max(progress.durable_index);
        if progress
            .commands
            .iter()
            .any(|a| matches!(a.outcome.result, Some(outcome::Result::MemberStarted(_))))
        {
            self.check_start_recorded();
        }
        if !overtaken {
            for a in &progress.commands {
                if let Some(outcome::Result::ClusterVersion(v)) = &a.outcome.result {
                    self.cluster_version = self.cluster_version.max(v.version);
                }
            }
        }
        for a in progress.commands {
            // Only the command a waiter proposed answers it: another one applied under the same
            // id (proposed elsewhere) leaves it waiting for its own (answered as a conflict).
            if self.proposals.get(&a.request_id).is_some_and(|p| p.hash == a.command_hash) {
                if let Some(p) = self.proposals.remove(&a.request_id) {
                    for w in p.waiters {
                        self.actions.push(Action::Reply { waiter: w, result: Ok(a.outcome.clone()) });
                    }
                }
            }
            if !overtaken {
                for change in &a.instances {
                    self.instance_timers.changed(change, self.clock_ms);
                }
            }
            if !a.locks.is_empty() && !overtaken {
                for change in &a.locks {
                    self.lock_delays.changed(change, self.clock_ms);
                }
                self.actions.push(Action::LocksChanged { changes: a.locks });
            }
            if a.outcome.revision > self.announced_revision && !overtaken {
                self.announced_revision = a.outcome.revision;
                self.actions.push(Action::Applied { revision: a.outcome.revision, events: a.events });
            }
        }
        if self.applied.index > self.raw.raft.raft_log.applied {
            self.raw.advance_apply_to(self.applied.index);
        }
        self.grant_reads();
        std::mem::take(&mut self.actions)
    }

    /// Keeps the log to about `snapshot_entries` past the applied index, leaving a tail of a
    /// quarter of that so a briefly lagging follower catches up from the log, not a snapshot.
    /// One Ready removes at most [`COMPACTION_STEP`] entries: deleting thousands at once stalls
    /// that Ready's commit (measured: p99 put latency 264 ms instead of 47 ms at 256 clients).
    /// Never past the state's durable applied index: a crash may take the rest of the state,
    /// which the log then replays. On a leader, never past what a follower catching up needs
    /// ([`Core::followers_floor`]). Returns whether it wrote.
    fn maybe_compact(&mut self) -> Result<bool, CoreError> {
        let tail = self.snapshot_entries / 4;
        let compacted = self.raw.store().compacted().index;
        let applied = self.applied.index.min(self.durable_index);
        if applied >= compacted.saturating_add(self.snapshot_entries).saturating_add(tail) {
            let target = self.followers_floor(applied - tail);
            if target <= compacted {
                return Ok(false);
            }
            let to = target.min(compacted + COMPACTION_STEP);
            self.raw.mut_store().compact(to)?;
            if compacted + COMPACTION_STEP >= target || compacted == 0 {
                tracing::info!(
                    member = self.id(),
                    term = self.raw.raft.term,
                    index = self.applied.index,
                    compacted_to = target,
                    "log compacted"
                );
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Where a leader may compact to, short of `target`: not past what a follower goes on
    /// from — the snapshot it is being sent, or was sent in the last [`INSTALL_SILENCE_MS`] and
    /// has not reached yet (installing it, it may be silent for long), else, if it was heard
    /// from in the last [`CATCH_UP_SILENCE_MS`], the index before the next one it is probed
    /// with, or what it has. Compacted past a snapshot in transfer or being installed, the follower could not go on
    /// from its index, and would be sent another, and another, for as long as a transfer
    /// outlasts the writes between two compactions; compacted past a follower that answers,
    /// it would need a snapshot where the log would do. A follower keeps at most
    /// [`CATCH_UP_SNAPSHOTS`] × `snapshot_entries` below `target` (a transfer and install that
    /// outlast that many writes start over), and one silent past those windows nothing:
    /// neither makes the log grow without bound.
    fn followers_floor(&self, target: u64) -> u64 {
        if self.raw.raft.state != StateRole::Leader {
            return target;
        }
        let lowest = target.saturating_sub(CATCH_UP_SNAPSHOTS.saturating_mul(self.snapshot_entries));
        let mut floor = target;
        for (&id, pr) in self.raw.raft.prs().iter() {
            if id == self.id() {
                continue;
            }
            let installing = self.snapshots_delivered.get(&id).is_some_and(|&(index, at)| {
                pr.matched < index && self.clock_ms.saturating_sub(at) <= INSTALL_SILENCE_MS
            });
            let heard = self
                .heard_from
                .get(&id)
                .is_some_and(|&at| self.clock_ms.saturating_sub(at) <= CATCH_UP_SILENCE_MS);
            let needs = match pr.state {
                ProgressState::Snapshot => pr.pending_snapshot,
                ProgressState::Probe if installing || heard => pr.next_idx.saturating_sub(1),
                ProgressState::Replicate if heard => pr.matched,
                ProgressState::Probe | ProgressState::Replicate => continue,
            };
            floor = floor.min(needs.max(lowest));
        }
        floor
    }

    /// A ReadIndex confirmation: accepted only for a context of this member's current life that
    /// is still waiting (see the module's invariants).
    fn read_confirmed(&mut self, ctx: &[u8], index: u64) {
        if ctx.len() != 24 || ctx[..16] != self.read_context(0)[..16] {
            return;
        }
        let Ok(counter) = <[u8; 8]>::try_from(&ctx[16..]).map(u64::from_be_bytes) else { return };
        if let Some(b) = self.asked_reads.remove(&counter) {
            // The first one of this life is enough: it covers all that earlier lives applied.
            self.read_floor.get_or_insert(index);
            let confirmed =
                b.waiters.into_iter().map(|waiter| ConfirmedRead { waiter, arrived_at: b.arrived_at });
            self.confirmed_reads.entry(index).or_default().extend(confirmed);
        }
    }

    fn grant_reads(&mut self) {
        while let Some(entry) = self.confirmed_reads.first_entry() {
            if *entry.key() > self.applied.index {
                break;
            }
            for r in entry.remove() {
                self.actions.push(Action::ReadReady { waiter: r.waiter });
            }
        }
    }

    /// Answers each pending proposal whose request id the state's request memory remembers, as
    /// its apply would have (after a snapshot install: a proposal whose entry the snapshot
    /// covers is never handed to the applier, so no apply answers it). The others wait for
    /// their entries as before.
    fn answer_from_memory(&mut self) -> Result<(), CoreError> {
        let txn = self.state_db.begin_read().map_err(redb_err)?;
        let ids: Vec<String> = self.proposals.keys().cloned().collect();
        for id in ids {
            let Some(p) = self.proposals.get(&id) else { continue };
            let Some(outcome) = fsm::answer_of(&txn, &id, p.hash, &p.data)? else { continue };
            if let Some(p) = self.proposals.remove(&id) {
                for w in p.waiters {
                    self.actions.push(Action::Reply { waiter: w, result: Ok(outcome.clone()) });
                }
            }
        }
        Ok(())
    }

    /// Hands raft every pending proposal again, under the same request ids.
    fn propose_again(&mut self) {
        let ids: Vec<String> = self.proposals.keys().cloned().collect();
        for id in ids {
            self.propose_pending(&id, false);
        }
    }

    /// Notices elections and leader changes: logs them, and on a new leader (or a new term of
    /// the same one) hands it every pending proposal and ReadIndex again — one forwarded to a
    /// deposed leader may be lost.
    fn observe_raft(&mut self) {
        let r = &self.raw.raft;
        let now = Seen { leader: r.leader_id, term: r.term, role: self.status().role };
        let before = std::mem::replace(&mut self.seen, now);
        if now == before {
            return;
        }
        let (member, term, index) = (self.id(), now.term, self.raw.raft.raft_log.last_index());
        match now.role {
            Role::PreCandidate | Role::Candidate if now.role != before.role => {
                tracing::info!(member, term, index, role = now.role.as_str(), "election started")
            }
            Role::Leader if before.role != Role::Leader => {
                tracing::info!(member, term, index, "elected leader")
            }
            Role::Follower | Role::Learner if now.leader != before.leader || now.term != before.term => {
                if now.leader != raft::INVALID_ID {
                    tracing::info!(member, term, index, leader = now.leader, "following a new leader");
                } else if before.leader != raft::INVALID_ID {
                    tracing::info!(member, term, index, was = before.leader, "leader lost");
                }
            }
            _ => {}
        }
        if (now.role == Role::Leader) != (before.role == Role::Leader) || now.term != before.term {
            let replies = self.leases.demoted(member, now.leader);
            self.kept_alive(replies);
            self.lock_delays.demoted();
            self.instance_timers.demoted();
            self.compactor.demoted();
            self.append_times.clear();
            for id in std::mem::take(&mut self.lease_proposals) {
                self.proposals.remove(&id);
            }
            self.lease_ready_from = (now.role == Role::Leader).then_some((now.term, index));
            self.led_since_tick = self.now;
            let early = std::mem::take(&mut self.early_keepalives);
            for (waiter, _, _) in early {
                let error = RequestError::NotLeader { member, leader: now.leader };
                self.actions.push(Action::KeptAlive { waiter, result: Err(error) });
            }
        }
        if now.leader != raft::INVALID_ID && (now.leader != before.leader || now.term != before.term) {
            self.propose_again();
            let pending: Vec<u64> = self.asked_reads.keys().copied().collect();
            for ctx in pending {
                if let Some(b) = self.asked_reads.remove(&ctx) {
                    self.ask_read_index(b);
                }
            }
        }
    }
}

/// Whether raft entry data `data` may be a raise of the cluster version: a command's kind is
/// its last field, and a raise's is an empty message, so its encoding ends in that field's key
/// and a zero length. Another command may end in the same three bytes (counted as a raise:
/// this member then waits for its apply a moment longer before a refusal is final); a raise
/// never fails to.
fn may_raise(data: &[u8]) -> bool {
    static RAISE_ENDS_IN: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        Command {
            version: 0,
            request_id: String::new(),
            body: Some(Body::RaiseClusterVersion(Default::default())),
        }
        .encode_to_vec()
    });
    data.ends_with(&RAISE_ENDS_IN)
}

/// The additions (`membership::addition`) in `raw`'s log past `applied`, by index: read at start,
/// kept up to date as entries are appended and applied.
fn logged_additions(
    raw: &RawNode<LogStore>,
    applied: u64,
) -> Result<BTreeMap<u64, (u64, String)>, CoreError> {
    // Read a few megabytes at a time: the log past the applied index is short after a
    // restart's reconcile, but need not be.
    const CHUNK_BYTES: u64 = 4 << 20;
    let log = &raw.raft.raft_log;
    let (mut next, last) = (applied + 1, log.last_index());
    let mut additions = BTreeMap::new();
    while next <= last {
        let entries = log.entries(next, CHUNK_BYTES, raft::GetEntriesContext::empty(false))?;
        let Some(end) = entries.last().map(|e| e.index) else { break };
        for e in entries.iter().filter(|e| e.get_entry_type() == EntryType::EntryConfChangeV2) {
            if let Some(added) = membership::change_of(e).ok().and_then(|cc| membership::added_by(&cc)) {
                additions.insert(e.index, added);
            }
        }
        next = end + 1;
    }
    Ok(additions)
}

/// Every lock-delay in force, as stored.
fn stored_lock_delays(db: &Database) -> Result<Vec<(Vec<u8>, i64, u64)>, CoreError> {
    Ok(fsm::locks::delays(&db.begin_read().map_err(redb_err)?)?)
}

/// Every registry instance's timer, as its stored row calls for.
fn stored_instance_timers(db: &Database) -> Result<Vec<(Vec<u8>, fsm::InstanceTimer)>, CoreError> {
    Ok(fsm::registry::timers(&db.begin_read().map_err(redb_err)?)?)
}

/// Every session's lease as stored.
fn stored_leases(db: &Database) -> Result<Vec<leases::Stored>, CoreError> {
    let txn = db.begin_read().map_err(redb_err)?;
    let rows = fsm::sessions::all(&txn)?;
    Ok(rows
        .into_iter()
        .map(|(id, r)| leases::Stored {
            id,
            ttl_ms: r.ttl_ms,
            remaining_ms: r.remaining_ms,
            checkpoints: r.checkpoints,
            term: r.checkpoint_term,
            leader_ms: r.leader_ms,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use latch_proto::internal::{Put, RaiseClusterVersion};

    use super::*;

    #[test]
    fn a_raise_is_told_from_its_bytes_and_other_commands_mostly_are_not() {
        let raise = Command {
            version: 12,
            request_id: "member-1-00000000000000ab-7".into(),
            body: Some(Body::RaiseClusterVersion(RaiseClusterVersion {})),
        };
        assert!(may_raise(&raise.encode_to_vec()), "a raise, whatever its version and id");
        let put = Command {
            version: 11,
            request_id: "r".into(),
            body: Some(Body::Put(Put { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() })),
        };
        assert!(!may_raise(&put.encode_to_vec()), "a put");
        assert!(!may_raise(&[]), "raft's no-op, an empty entry");
    }
}
