//! One simulated run: N members of the real sans-I/O [`Core`] over simulated disks
//! ([`crate::disk`]), a simulated network ([`crate::network`]), simulated clients
//! ([`crate::clients`]) and a virtual clock, all driven from one seed.
//!
//! What it models:
//! - Time is virtual (microseconds). Events (message deliveries, ticks, client requests and
//!   replies, transport reports, faults) sit in one queue ordered by (time, insertion number).
//!   A *step* takes every event due within a short quantum, then gives each member that got
//!   one a *turn* exactly as the production driver does (`src/node`): `flush_reads`, then one
//!   `handle_ready` whose messages go to the network and whose actions answer the clients.
//!   Members tick at their own interval (a per-member drift plus jitter, so ticks are not in
//!   lockstep).
//! - Faults, for a chaos phase: crashes (unsynced disk writes lost, the `Core` and its
//!   `Database` dropped, waiting clients cut off) and restarts from the disk, sometimes after
//!   long enough that the member must catch up by snapshot, and sometimes of the whole cluster;
//!   partitions (one member, the leader, two groups, or one direction of one link) that heal;
//!   pauses (a stopped process: nothing is handled, ticks are skipped); fsync failures (the
//!   member dies of the error); a follower's data dir lost, after which the member is either
//!   replaced under its id or swapped for a new member — removed, and a member under a new id
//!   added and started, as an etcd operator replaces a host (`core::membership`); and a
//!   running follower swapped so, which stops once it learns of its removal. Then a settle phase: faults stop, everything heals and
//!   restarts, clients finish what they started, and the cluster must converge.
//!
//! Invariants: everything derives from the seed through one `SmallRng`, consumed in event
//! order; nothing iterates a hash map or reads a clock, so a seed replays exactly (the trace
//! hash says so). The checks of [`crate::invariants`] run after every step; a violation or an
//! unexpected error from the core fails the run with the seed and the replay command.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;

use std::sync::Arc;

use latch::core::RequestError;
use latch::core::{self, Action, Applier, Core, MemoryInbox, Role, Timing, Waiter};
use latch::fsm;
use latch::fsm::versions;
use latch::fsm::SessionChange;
use latch::server::{admission, upgrade};
use latch::storage::{Identity, Stores};
use latch_proto::internal::{
    command::Body, outcome, CloseSession, Command, CreateSession, KeyValue, Put, RaiseClusterVersion, Range,
};
use raft::eraftpb::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use redb::ReadableDatabase as _;

use latch_check::linearizability::{Call, Return};
use latch_proto::internal::{compare, op, op_result, Compare, DeleteRange, Op as TxnOp, Outcome, Txn};

use crate::clients::{Client, History, Op, OpKind};
use crate::disk::{SimDir, SimDisk};
use crate::fencing::FenceChecker;
use crate::invariants::{self, Ack, Before, Checker, Ctx, Fnv, HASH_EVERY, HASH_EVERY_LEADER_CHANGES};
use crate::locks::{LockCall, LockChecker, Locker};
use crate::network::{Delivery, NetConfig, Network};
use crate::registry::{Heartbeater, Next, RegistryChecker};
use crate::sessions::{is_close, Keeper, LeaseChecker};
use crate::state_checks::PointChecker;
use crate::watches::WatchChecker;

pub const CLUSTER_ID: u64 = 0x1a7c_5eed;
/// Nominal tick interval (production's default is of this order).
const TICK_US: u64 = 10_000;
/// Events this close together are handled in one step, as a driver drains its queue.
const QUANTUM_US: u64 = 1_000;
/// Most steps a seed may take: this many, plus [`MAX_STEPS_PER_CHAOS_SECOND`] per virtual
/// second of chaos (a seed usually takes 300–600 per second): a bound on its CPU time.
const MAX_STEPS: u64 = 20_000;
const MAX_STEPS_PER_CHAOS_SECOND: u64 = 2_000;
/// How long the cluster gets to converge once faults stop.
const SETTLE_BUDGET_US: u64 = 40_000_000;
/// How often a member asks each peer for its `Peer.Status` (`server::learn_members`), which
/// tells a removed member that never applied its removal — a learner sends nothing to be refused.
const STATUS_POLL_US: u64 = 5_000_000;
/// How often a leader whose cluster version is below its build's asks its members' builds
/// (`server::upgrade::RAISE_EVERY`, scaled as the simulator's timing is).
const RAISE_POLL_US: u64 = 500_000;
/// How long a leader-change run cuts the leader off (µs, drawn in this range).
const LEADER_CUT_OFF_US: (u64, u64) = (200_000, 350_000);

/// The raft timing of every member (in ticks).
fn timing() -> Timing {
    Timing {
        election_tick: 10,
        heartbeat_tick: 2,
        request_timeout_ticks: 150,
        read_retry_ticks: 10,
        tick_ms: TICK_US / 1_000,
    }
}

/// What a run's faults are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Crashes, partitions, pauses and fsync failures at random.
    Chaos,
    /// Nothing but the leader cut off from the others every half session TTL (healed before
    /// the next), so that leadership changes all the time; the lease rule's upper bound is
    /// checked too.
    LeaderChanges,
}

/// How many lockers a crowd has (see [`Params::crowd_from`]).
const CROWD: usize = 3;
/// Most times a locker sends one failed call again (see `Sim::locker_resends`).
const MAX_RESENDS: u32 = 3;

/// What a seed decides about its run.
#[derive(Debug, Clone)]
pub struct Params {
    pub mode: Mode,
    /// redb's cache of each member's state: the default, or (half the runs, drawn apart) one so
    /// small that the pages lazy commits write spill from its buffer to the file unsynced, as a
    /// member's do once its state outgrows `--state-cache-bytes`.
    pub state_cache_bytes: usize,
    /// Session keepers, their sessions' TTL, and when each stops (a dead client, or one that
    /// closes its session, see `closing`), if it does.
    pub keepers: Vec<Option<u64>>,
    /// Per keeper: whether it closes its session when it stops, rather than let it expire
    /// (drawn apart from the rest).
    pub closing: Vec<bool>,
    pub session_ttl_ms: u64,
    /// Lock clients, each with the keeper whose session it uses, and their think time.
    pub lockers: Vec<usize>,
    /// Lockers from this index on are a crowd: each with a keeper of its own that never stops,
    /// all on one lock, half their requests shared (drawn apart, in a quarter of the chaos runs),
    /// so that queues of several sessions form, mixing modes.
    pub crowd_from: usize,
    pub locker_think_us: (u64, u64),
    /// Heartbeaters and their instances' checks (drawn apart from the rest, see `registry::draw`).
    pub heartbeaters: Vec<crate::registry::Spec>,
    pub nodes: u64,
    pub snapshot_entries: u64,
    pub net: NetConfig,
    pub clients: usize,
    pub think_us: (u64, u64),
    pub client_timeout_us: u64,
    pub chaos_us: u64,
    /// Mean time between fault decisions.
    pub chaos_every_us: u64,
    /// How much history the leader keeps (drawn apart from the rest, see `Params::draw`).
    pub history_retention: core::Retention,
    /// The queue bound every acquire carries (`max_waiters`; 0: none), drawn apart too.
    pub lock_queue_bound: u32,
    /// The most bytes of history the leader keeps (0: no byte bound), drawn apart too.
    pub history_retention_bytes: u64,
    /// Whether the first members run a build of the version before the cluster version
    /// ([`versions::UNRAISED`]), and the chaos upgrades them one at a time (a rolling upgrade),
    /// rather than all run this one's (drawn apart too).
    pub rolling: bool,
}

impl Params {
    pub fn draw(seed: u64, rng: &mut SmallRng, chaos_us: u64, mode: Mode) -> Params {
        let (session_ttl_ms, keepers): (u64, Vec<Option<u64>>) = match mode {
            Mode::Chaos => {
                let ttl = rng.gen_range(300..1_500);
                let n = rng.gen_range(0..=3);
                let keepers = (0..n)
                    .map(|_| rng.gen_bool(0.5).then(|| rng.gen_range(chaos_us / 5..chaos_us)))
                    .collect();
                (ttl, keepers)
            }
            Mode::LeaderChanges => {
                // 20 election timeouts: a lease in hand (half the TTL at the least) outlasts an
                // election that takes a few rounds, as production's 10 s TTLs and 0.5–1 s
                // elections do.
                let ttl = 2_000;
                let n = rng.gen_range(3..=5);
                // Some stop between the 2nd and the 15th TTL; the others never do.
                let keepers = (0..n)
                    .map(|i| (i % 2 == 0).then(|| rng.gen_range(2 * ttl * 1_000..15 * ttl * 1_000)))
                    .collect();
                (ttl, keepers)
            }
        };
        // Leader-change runs are long: fewer, slower lockers keep them as cheap as they were.
        let (most, locker_think_us) = match mode {
            Mode::Chaos => (4, (20_000, 150_000)),
            Mode::LeaderChanges => (2, (200_000, 600_000)),
        };
        let lockers = if keepers.is_empty() {
            Vec::new()
        } else {
            let n = rng.gen_range(1..=most);
            (0..n).map(|i| i % keepers.len()).collect()
        };
        let heartbeaters = crate::registry::draw(seed, mode == Mode::LeaderChanges, keepers.len(), chaos_us);
        // Its own generator: the draws above and below are what they were before it existed.
        // A third of the keepers that stop close their sessions; the rest die.
        let mut closing: Vec<bool> = {
            let mut own = SmallRng::seed_from_u64(seed ^ 0x636c_6f73_6573);
            keepers.iter().map(|stop| stop.is_some() && own.gen_bool(1.0 / 3.0)).collect()
        };
        let crowd_from = lockers.len();
        let (mut keepers, mut lockers) = (keepers, lockers);
        if mode == Mode::Chaos && SmallRng::seed_from_u64(seed ^ 0x0063_726f_7764).gen_bool(0.25) {
            for _ in 0..CROWD {
                keepers.push(None);
                closing.push(false);
                lockers.push(keepers.len() - 1);
            }
        }
        let small_cache = SmallRng::seed_from_u64(seed ^ 0x0063_6163_6865).gen_bool(0.5);
        Params {
            mode,
            state_cache_bytes: if small_cache { 64 * 1024 } else { latch::config::STATE_CACHE_BYTES },
            heartbeaters,
            keepers,
            closing,
            session_ttl_ms,
            lockers,
            crowd_from,
            locker_think_us,
            nodes: if seed % 2 == 0 { 3 } else { 5 },
            snapshot_entries: if rng.gen_bool(0.6) { rng.gen_range(10..=40) } else { 10_000 },
            net: NetConfig::draw(rng),
            // Leader-change runs are about sessions: one client keeps the log busy.
            clients: if mode == Mode::LeaderChanges { 1 } else { rng.gen_range(3..=5) },
            think_us: (1_000, rng.gen_range(10_000..40_000)),
            client_timeout_us: rng.gen_range(300_000..800_000),
            chaos_us,
            chaos_every_us: rng.gen_range(150_000..400_000),
            history_retention: {
                // Its own generator: the draws above are what they were before it existed.
                let mut own = SmallRng::seed_from_u64(seed ^ 0x0068_6973_746f_7279);
                core::Retention::Revisions(own.gen_range(20..150))
            },
            lock_queue_bound: {
                let mut own = SmallRng::seed_from_u64(seed ^ 0x0071_7565_7565);
                [0, 1, 1, 2, 3][own.gen_range(0..5)]
            },
            history_retention_bytes: {
                let mut own = SmallRng::seed_from_u64(seed ^ 0x0062_7974_6573);
                if own.gen_bool(0.5) {
                    own.gen_range(500..8_000)
                } else {
                    0
                }
            },
            rolling: mode == Mode::Chaos && SmallRng::seed_from_u64(seed ^ 0x726f_6c6c).gen_bool(0.5),
        }
    }
}

/// What a run did, for the log and the replay check.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub seed: u64,
    pub nodes: u64,
    pub snapshot_entries: u64,
    pub steps: u64,
    pub virtual_us: u64,
    pub trace_hash: u64,
    pub puts: u64,
    pub acked: usize,
    pub reads: u64,
    pub retries: u64,
    pub crashes: u64,
    pub io_deaths: u64,
    pub partitions: u64,
    pub pauses: u64,
    pub snapshots: u64,
    pub messages: u64,
    pub max_term: u64,
    pub final_revision: i64,
    pub hash_checks: u64,
    /// Check points at which two members' state hashes were compared (`state_checks`).
    pub check_points: u64,
    /// Members whose data dir was lost, replaced (`core::membership`) and started again empty.
    pub replacements: u64,
    /// Members whose data dir was lost, removed, and swapped for a member added under a new id.
    pub swaps: u64,
    /// Running members removed and swapped so; of them, those that stopped on applying their
    /// removal, those told by a peer that no longer has them (the wire's `REMOVED`), and those
    /// that read it in a peer's `Peer.Status`.
    pub retirements: u64,
    /// Members added with none removed (the cluster grows), and running members removed with
    /// none added (it shrinks).
    pub grows: u64,
    pub shrinks: u64,
    /// Members restarted on a later build (a rolling upgrade), and the cluster version the
    /// members agree on at the end.
    pub upgrades: u64,
    pub cluster_version: u32,
    pub stopped_applying_removal: u64,
    pub stopped_told_by_peer: u64,
    pub stopped_by_status: u64,
    /// Operations on shared keys judged by the linearizability checker.
    pub shared_ops: u64,
    pub serial_reads: u64,
    /// Session leases granted, sessions expired, and sessions their clients closed.
    pub grants: u64,
    pub expiries: u64,
    pub closes: u64,
    /// Lock grants seen in the members' states, and lock-delays ended.
    pub lock_grants: u64,
    pub lock_delays_ended: u64,
    /// Holds seen ended by their session's expiry, those whose end could not be placed (or told
    /// from a close), and expiries after which the lock was granted again (checked against
    /// their delays).
    pub lock_expired_holds: u64,
    pub lock_expiries_unplaced: u64,
    pub lock_grants_after_expiry: u64,
    /// Holds seen ended by their session's close.
    pub lock_closed_holds: u64,
    /// The most sessions seen queued on one lock at once.
    pub lock_longest_queue: u64,
    /// Acquires whose withdrawal was applied first (each then sent, and refused).
    pub lock_ids_spent: u64,
    /// Acquires refused because the lock's queue was at its bound.
    pub lock_queues_full: u64,
    /// Lockers' calls sent again after a failure, and copies of a command applied after it
    /// took effect (each member's count), answered from the request memory.
    pub lock_resends: u64,
    pub lock_withdrawals_resent: u64,
    pub lock_copies_remembered: u64,
    /// Writes guarded by a sequencer: sent, succeeded, refused because their session had ended,
    /// refused while it lived (the grant was released).
    pub guarded_sent: u64,
    pub guarded_succeeded: u64,
    pub guarded_refused_session_ended: u64,
    pub guarded_refused_released: u64,
    /// Of them, proclaims (by an election's sequencer) that succeeded, and that were refused.
    pub proclaims_succeeded: u64,
    pub proclaims_refused: u64,
    /// Lockers' puts of keys bound to their sessions answered as written, and sequential ones
    /// among them.
    pub bound_puts: u64,
    pub sequential_puts: u64,
    /// Deletes of lockers' sequential keys that deleted one.
    pub sequential_deletes: u64,
    /// Registry: heartbeats and registrations applied, turns to critical, reaps, and instances
    /// removed with their session.
    pub heartbeats: u64,
    pub criticals: u64,
    pub reaps: u64,
    pub session_removals: u64,
    /// Revisions watchers delivered, their moves to another member, and watches ended by a
    /// compaction.
    pub watch_revisions: u64,
    /// Changes of sessions, locks, elections and registry instances among what watchers
    /// delivered.
    pub watch_typed: u64,
    pub watch_moves: u64,
    pub watch_compacted: u64,
    pub compact_revision: i64,
    /// The byte bound of the history, and the bytes after the compact revision at the end (on
    /// the first member up).
    pub history_bound: u64,
    pub history_retained: u64,
    /// Whether the byte bound compacted further than the count would have.
    pub byte_compacted: bool,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} ({} nodes, snapshot every {}): {} steps, {:.1}s virtual, {} msgs; puts {} acked {} reads {} \
             retries {}; shared-key ops {} (linearizable), serializable reads {}; crashes {} (fsync deaths {}, data dirs lost and replaced {}, swapped for new members {}; running members swapped {}, members added {}, running members removed {}, upgraded {}), cluster version {}, \
             partitions {}, pauses {}, snapshots {}; max term {}, revision {}, {} hash checks, {} check points; lease grants {}, \
             expiries {}, closes {}; lock grants {}, lock-delays ended {}, holds expired {} (unplaced {}, granted again after {}), closed {}, longest queue {}, acquires withdrawn first {}, queues full {}, calls sent again {} (withdrawals {}, copies answered from memory {}); guarded \
             writes {} (succeeded {}, refused after their session ended {}, refused after a release {}; proclaims succeeded {}, refused {}); bound puts {} (sequential {}, sequential deletes {}); heartbeats {}, \
             critical {}, reaped {}, removed with their session {}; watched revisions {} (typed changes {}, moves {}, compacted {}), compact revision {}; history bytes {} of bound {} (byte-compacted {}); trace {:016x}",
            self.seed,
            self.nodes,
            self.snapshot_entries,
            self.steps,
            self.virtual_us as f64 / 1e6,
            self.messages,
            self.puts,
            self.acked,
            self.reads,
            self.retries,
            self.shared_ops,
            self.serial_reads,
            self.crashes,
            self.io_deaths,
            self.replacements,
            self.swaps,
            self.retirements,
            self.grows,
            self.shrinks,
            self.upgrades,
            self.cluster_version,
            self.partitions,
            self.pauses,
            self.snapshots,
            self.max_term,
            self.final_revision,
            self.hash_checks,
            self.check_points,
            self.grants,
            self.expiries,
            self.closes,
            self.lock_grants,
            self.lock_delays_ended,
            self.lock_expired_holds,
            self.lock_expiries_unplaced,
            self.lock_grants_after_expiry,
            self.lock_closed_holds,
            self.lock_longest_queue,
            self.lock_ids_spent,
            self.lock_queues_full,
            self.lock_resends,
            self.lock_withdrawals_resent,
            self.lock_copies_remembered,
            self.guarded_sent,
            self.guarded_succeeded,
            self.guarded_refused_session_ended,
            self.guarded_refused_released,
            self.proclaims_succeeded,
            self.proclaims_refused,
            self.bound_puts,
            self.sequential_puts,
            self.sequential_deletes,
            self.heartbeats,
            self.criticals,
            self.reaps,
            self.session_removals,
            self.watch_revisions,
            self.watch_typed,
            self.watch_moves,
            self.watch_compacted,
            self.compact_revision,
            self.history_retained,
            self.history_bound,
            self.byte_compacted,
            self.trace_hash
        )
    }
}

#[derive(Debug, Clone)]
enum Payload {
    Put { key: String, value: Vec<u8>, request_id: String, before: Before },
    Read { key: String, before: Before },
    Shared { index: usize, call: Call, request_id: String },
    SerialRead { key: String },
}

/// What a member answered a client, or why the attempt failed.
type ClientResult = Result<Answer, String>;

#[derive(Debug)]
enum Answer {
    /// A write-once put's revision.
    Put(i64),
    /// A linearizable read (write-once keys) or a serializable one (shared keys): the revision
    /// it was served at and what it found.
    Read(i64, Option<KeyValue>),
    /// An operation on a shared key, as the linearizability checker models it.
    Shared(Return),
}

#[derive(Debug, Clone, Copy)]
enum Notice {
    Unreachable(u64),
    Snapshot(u64, bool),
}

#[derive(Debug)]
enum Ev {
    Tick {
        node: u64,
        inc: u64,
    },
    Deliver {
        d: Box<Delivery>,
        from_inc: u64,
    },
    Notice {
        node: u64,
        inc: u64,
        what: Notice,
    },
    ClientRequest {
        node: u64,
        client: usize,
        seq: u64,
        attempt: u64,
        payload: Payload,
    },
    ClientReply {
        client: usize,
        seq: u64,
        attempt: u64,
        node: u64,
        payload: Payload,
        result: ClientResult,
    },
    ClientTimeout {
        client: usize,
        seq: u64,
        attempt: u64,
    },
    ClientWake {
        client: usize,
    },
    KeeperWake {
        keeper: usize,
    },
    KeeperRequest {
        node: u64,
        keeper: usize,
        attempt: u64,
        call: KeeperCall,
    },
    KeeperReply {
        keeper: usize,
        attempt: u64,
        result: KeeperResult,
    },
    KeeperTimeout {
        keeper: usize,
        attempt: u64,
    },
    LockerWake {
        locker: usize,
    },
    LockerRequest {
        node: u64,
        locker: usize,
        attempt: u64,
        body: Box<Body>,
        request_id: String,
    },
    LockerReply {
        locker: usize,
        attempt: u64,
        result: Result<Outcome, String>,
    },
    LockerTimeout {
        locker: usize,
        attempt: u64,
    },
    HeartbeaterWake {
        heartbeater: usize,
    },
    HeartbeaterRequest {
        node: u64,
        heartbeater: usize,
        attempt: u64,
        body: Box<Body>,
        request_id: String,
    },
    HeartbeaterReply {
        heartbeater: usize,
        attempt: u64,
        result: Result<Outcome, String>,
    },
    HeartbeaterTimeout {
        heartbeater: usize,
        attempt: u64,
    },
    LeaderChange,
    Chaos,
    Restart {
        node: u64,
    },
    Heal,
    /// The leader is asked to replace the member whose data dir was lost (`core::membership`).
    Replace {
        node: u64,
    },
    /// The replaced member starts on its empty data dir once its peers admit it.
    StartReplaced {
        node: u64,
    },
    /// The leader is asked the next change of a swap: the removal of the member whose data dir
    /// was lost (or that runs), then the addition of its successor; or one of them alone.
    Swap,
    /// The added member starts on its empty data dir once its peers have it a learner.
    StartAdded {
        node: u64,
    },
    /// The member's apply thread takes what was handed to it.
    ApplyTurn {
        node: u64,
        inc: u64,
    },
}

impl Ev {
    /// The member an event happens on, if it must wait while that member is paused.
    fn on_node(&self) -> Option<u64> {
        match self {
            Ev::Tick { node, .. }
            | Ev::Notice { node, .. }
            | Ev::ClientRequest { node, .. }
            | Ev::KeeperRequest { node, .. }
            | Ev::LockerRequest { node, .. }
            | Ev::HeartbeaterRequest { node, .. }
            | Ev::ApplyTurn { node, .. } => Some(*node),
            Ev::Deliver { d, .. } => Some(d.to),
            _ => None,
        }
    }
}

/// A keeper's call to a member.
#[derive(Debug, Clone, Copy)]
enum KeeperCall {
    Create,
    KeepAlive {
        sent_us: u64,
    },
    /// Its session's close, once it stopped.
    Close,
}

#[derive(Debug, Clone)]
enum KeeperResult {
    Created,
    Closed,
    Granted { sent_us: u64, granted_ms: u64 },
    NotLeader(u64),
    Gone,
    Failed(String),
}

struct SimNode {
    id: u64,
    /// When this life of the process started, and where its monotonic clock then read (drawn
    /// per life: clocks of different members and lives start anywhere).
    started_at: u64,
    clock_origin_ms: u64,
    /// The raft log's directory and the state machine's disk.
    log_dir: SimDir,
    state_disk: SimDisk,
    core: Option<Core>,
    /// The state side, applying what the core hands it, as the apply thread does.
    applier: Option<Applier>,
    /// Committed entries handed out and not applied yet.
    to_apply: Vec<raft::eraftpb::Entry>,
    /// Whether an apply turn is scheduled.
    apply_scheduled: bool,
    /// Incarnation: bumped by each crash, so events meant for a dead process are dropped.
    inc: u64,
    tick_us: u64,
    paused_until: u64,
    /// When it last asked its peers for their `Peer.Status`.
    polled_at: u64,
    /// The newest command version its build applies (`fsm::Bounds::newest_version`): a later
    /// command stops it, which the simulator takes for a failure.
    build: u32,
}

/// A change of the cluster's members under way: a member on its way out (its data dir lost,
/// or running) and the member added in its place; or one of them alone, as the cluster grows or
/// shrinks.
#[derive(Debug, Clone, Copy)]
struct Swap {
    old: Option<u64>,
    new: Option<u64>,
    /// The leader applied the old member's removal (or there is none); the addition is next.
    removed: bool,
}

impl SimNode {
    /// A member that never ran: empty disks, down.
    fn new(id: u64, tick_us: u64, build: u32) -> SimNode {
        SimNode {
            id,
            started_at: 0,
            clock_origin_ms: 0,
            log_dir: SimDir::new(),
            state_disk: SimDisk::new(),
            core: None,
            applier: None,
            to_apply: Vec::new(),
            apply_scheduled: false,
            inc: 0,
            tick_us,
            paused_until: 0,
            polled_at: 0,
            build,
        }
    }
}

struct WaitInfo {
    node: u64,
    client: usize,
    seq: u64,
    attempt: u64,
    payload: Payload,
}

pub struct Sim {
    seed: u64,
    params: Params,
    rng: SmallRng,
    /// Draws for lockers' resends, apart from `rng`: a run where no call failed draws as it did
    /// before resends existed.
    resend_rng: SmallRng,
    /// Lockers' calls sent again.
    resends: u64,
    /// Of them, withdrawals under the id of an acquire not sent yet.
    withdrawals_resent: u64,
    now: u64,
    step: u64,
    next_seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    nodes: Vec<SimNode>,
    net: Network,
    clients: Vec<Client>,
    history: History,
    waiters: BTreeMap<Waiter, WaitInfo>,
    next_waiter: Waiter,
    checker: Checker,
    keepers: Vec<Keeper>,
    leases: LeaseChecker,
    /// Keepers' calls waiting for a member: (keeper, attempt, member, call).
    keeper_waiters: BTreeMap<Waiter, (usize, u64, u64, KeeperCall)>,
    lockers: Vec<Locker>,
    /// Lockers' calls waiting for a member: (locker, attempt, member).
    locker_waiters: BTreeMap<Waiter, (usize, u64, u64)>,
    lock_checker: LockChecker,
    fences: FenceChecker,
    heartbeaters: Vec<Heartbeater>,
    /// Heartbeaters' calls waiting for a member: (heartbeater, attempt, member).
    heartbeater_waiters: BTreeMap<Waiter, (usize, u64, u64)>,
    registry: RegistryChecker,
    watch_checker: WatchChecker,
    point_checker: PointChecker,
    trace: Fnv,
    /// When each term's leader was first seen leading, in order (the last term seen is the
    /// last one's): the never-late bound allows each leader change its re-basing's slack.
    leaders_seen: Vec<(u64, u64)>,
    touched: BTreeSet<u64>,
    /// The member whose data dir was lost, until it is replaced and started again (one at a
    /// time): nothing else starts it.
    replacing: Option<u64>,
    /// Members whose data dir was lost at some point of the run.
    lost_data: BTreeSet<u64>,
    /// Replacements asked of a leader: waiter → (replaced member, leader asked).
    replace_waiters: BTreeMap<Waiter, (u64, u64)>,
    /// Whether a lost data dir is swapped for a new member rather than replaced (its own
    /// generator: a run that swaps nothing draws as it did before swaps existed).
    swap_rng: SmallRng,
    /// The swap under way (one change at a time, and none beside a replacement).
    swap: Option<Swap>,
    /// Changes of a swap asked of a leader: waiter → leader asked.
    swap_waiters: BTreeMap<Waiter, u64>,
    /// Members removed (or on their way out): their process never starts again, and once it
    /// stopped no client or fault picks them.
    gone: BTreeSet<u64>,
    /// Members added at run time: their empty state is not the cluster's first.
    joined: BTreeSet<u64>,
    settling: bool,
    /// When a leader last asked its members' builds ([`RAISE_POLL_US`]).
    raised_at: u64,
    logger: slog::Logger,
    verbose: bool,
    report: Report,
}

/// Runs one seed to the end: chaos, settle, final checks. Panics on any violation.
pub fn run(seed: u64, chaos_us: u64, verbose: bool) -> Report {
    run_mode(seed, chaos_us, verbose, Mode::Chaos)
}

/// Runs one seed in `mode` for `us` of faults, then settles and checks.
pub fn run_mode(seed: u64, chaos_us: u64, verbose: bool, mode: Mode) -> Report {
    let mut sim = Sim::new(seed, chaos_us, verbose, mode);
    sim.boot();
    while sim.now < sim.params.chaos_us {
        if !sim.step() {
            break;
        }
    }
    sim.settle();
    sim.finish()
}

impl Sim {
    fn new(seed: u64, chaos_us: u64, verbose: bool, mode: Mode) -> Sim {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x6c61_7463_6873_696d);
        let params = Params::draw(seed, &mut rng, chaos_us, mode);
        let queue_bound = params.lock_queue_bound;
        let keepers = params
            .keepers
            .iter()
            .enumerate()
            .map(|(i, stop)| {
                let closes = params.closing[i];
                Keeper::new(i, params.session_ttl_ms, *stop, closes, rng.gen_range(1..=params.nodes))
            })
            .collect();
        let lockers = params
            .lockers
            .iter()
            .enumerate()
            .map(|(i, &keeper)| Locker::new(i, keeper, params.lock_queue_bound, i >= params.crowd_from))
            .collect();
        let heartbeaters = params
            .heartbeaters
            .iter()
            .enumerate()
            .map(|(i, spec)| Heartbeater::new(i, spec.clone()))
            .collect();
        let first_build = if params.rolling { versions::UNRAISED } else { fsm::COMMAND_VERSION };
        let nodes = (1..=params.nodes)
            .map(|id| SimNode::new(id, TICK_US * rng.gen_range(970..=1030) / 1000, first_build))
            .collect();
        let clients = (0..params.clients).map(Client::new).collect();
        let watch_checker = WatchChecker::draw(seed, params.nodes, params.chaos_us);
        let mut net = Network::new(params.net);
        if mode == Mode::LeaderChanges {
            // Delays but no loss: no bound holds while an election's own messages can be lost
            // (a lost vote costs another election timeout).
            net.set_calm(true);
        }
        Sim {
            seed,
            report: Report {
                seed,
                nodes: params.nodes,
                snapshot_entries: params.snapshot_entries,
                ..Default::default()
            },
            params,
            rng,
            resend_rng: SmallRng::seed_from_u64(seed ^ 0x7265_7365_6e64),
            resends: 0,
            withdrawals_resent: 0,
            now: 0,
            step: 0,
            next_seq: 0,
            queue: BTreeMap::new(),
            nodes,
            net,
            clients,
            history: History::default(),
            waiters: BTreeMap::new(),
            next_waiter: 0,
            checker: Checker::new(match mode {
                Mode::Chaos => HASH_EVERY,
                Mode::LeaderChanges => HASH_EVERY_LEADER_CHANGES,
            }),
            keepers,
            leases: LeaseChecker::default(),
            keeper_waiters: BTreeMap::new(),
            lockers,
            locker_waiters: BTreeMap::new(),
            lock_checker: LockChecker::with_queue_bound(queue_bound),
            fences: FenceChecker::default(),
            heartbeaters,
            heartbeater_waiters: BTreeMap::new(),
            registry: RegistryChecker::new(),
            watch_checker,
            point_checker: PointChecker::default(),
            trace: Fnv::default(),
            leaders_seen: Vec::new(),
            touched: BTreeSet::new(),
            replacing: None,
            lost_data: BTreeSet::new(),
            replace_waiters: BTreeMap::new(),
            swap_rng: SmallRng::seed_from_u64(seed ^ 0x0073_7761_7073),
            swap: None,
            swap_waiters: BTreeMap::new(),
            gone: BTreeSet::new(),
            joined: BTreeSet::new(),
            settling: false,
            raised_at: 0,
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            verbose,
        }
    }

    fn ctx(&self) -> Ctx {
        Ctx { seed: self.seed, step: self.step, time_us: self.now }
    }

    fn at(&mut self, delay_us: u64, ev: Ev) {
        self.next_seq += 1;
        self.queue.insert((self.now + delay_us, self.next_seq), ev);
    }

    fn node(&mut self, id: u64) -> &mut SimNode {
        &mut self.nodes[(id - 1) as usize]
    }

    fn is_up(&self, id: u64) -> bool {
        self.nodes[(id - 1) as usize].core.is_some()
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.verbose {
            eprintln!("[seed {} t={:.3}s step {}] {}", self.seed, self.now as f64 / 1e6, self.step, what());
        }
    }

    fn boot(&mut self) {
        for id in 1..=self.params.nodes {
            self.start_node(id);
        }
        for c in 0..self.clients.len() {
            let d = self.rng.gen_range(50_000..300_000);
            self.at(d, Ev::ClientWake { client: c });
        }
        for k in 0..self.keepers.len() {
            let d = self.rng.gen_range(50_000..300_000);
            self.at(d, Ev::KeeperWake { keeper: k });
        }
        for l in 0..self.lockers.len() {
            let d = self.rng.gen_range(100_000..400_000);
            self.at(d, Ev::LockerWake { locker: l });
        }
        for h in 0..self.heartbeaters.len() {
            let d = self.rng.gen_range(50_000..300_000);
            self.at(d, Ev::HeartbeaterWake { heartbeater: h });
        }
        match self.params.mode {
            Mode::Chaos => {
                let d = self.chaos_delay();
                self.at(d, Ev::Chaos);
            }
            Mode::LeaderChanges => {
                let half = self.params.session_ttl_ms * 500;
                self.at(half, Ev::LeaderChange);
            }
        }
    }

    /// Sets member `id`'s clock from the virtual time (milliseconds since its process started).
    fn set_clock(&mut self, id: u64) {
        let now = self.now;
        let n = &mut self.nodes[(id - 1) as usize];
        let (started, origin) = (n.started_at, n.clock_origin_ms);
        if let Some(core) = n.core.as_mut() {
            core.set_clock(origin + (now - started) / 1_000);
        }
    }

    /// Opens the member's disk in a new process and loads its core.
    fn start_node(&mut self, id: u64) {
        let not_admitted = self.swap.is_some_and(|s| s.new == Some(id));
        if self.is_up(id) || self.replacing == Some(id) || self.gone.contains(&id) || not_admitted {
            return;
        }
        let ctx = self.ctx();
        let voters: Vec<u64> = (1..=self.params.nodes).collect();
        let (snapshot_entries, logger) = (self.params.snapshot_entries, self.logger.clone());
        let (history_retention, history_retention_bytes) =
            (self.params.history_retention, self.params.history_retention_bytes);
        let seed: u64 = self.rng.gen();
        let nonce: u64 = self.rng.gen();
        let tick_offset = self.rng.gen_range(0..TICK_US);
        let sync_every = self.rng.gen_range(1..=64);
        let segment_bytes = self.rng.gen_range(2_000..20_000);
        let clock_origin_ms = self.rng.gen_range(0..1_000_000);
        let cache_bytes = self.params.state_cache_bytes;
        let identity = Identity { cluster_id: CLUSTER_ID, member_id: id };
        let hasher = self.point_checker.hasher(id);
        let node = self.node(id);
        let build = node.build;
        let open = |disk: &mut SimDisk, what: &str| {
            latch::storage::open_with_backend(disk.open(), identity, cache_bytes).unwrap_or_else(|e| {
                ctx.fail(Some(id), "restart from disk", format!("cannot open the {what} store: {e}"))
            })
        };
        let (state, state_syncs) = open(&mut node.state_disk, "state");
        let stores = Stores { log: Box::new(node.log_dir.open()), state, state_syncs };
        let defaults = core::Config::new(id, &voters, nonce);
        let config = core::Config {
            timing: timing(),
            snapshot_entries,
            // Small segments: rotation and deletion happen in every run.
            log_segment_bytes: segment_bytes,
            // A small history: the leader compacts in every run (watchers that fall behind end).
            history_retention,
            history_retention_bytes,
            // Check points often enough that every run compares states at several.
            state_check_interval_ms: 1_000,
            bounds: fsm::Bounds { newest_version: build, ..defaults.bounds },
            ..defaults
        };
        let (mut core, applier) =
            Core::new(config, identity, stores, Arc::new(MemoryInbox::default()), &logger).unwrap_or_else(
                |e| ctx.fail(Some(id), "restart from disk", format!("cannot load the core: {e}")),
            );
        core.seed_election_timeouts(seed);
        // As the server does when it is admitted on an empty log by peers that have it a learner
        // (it was replaced or added; admission waits for their answers): its empty state is no
        // first life's.
        if core.log_was_fresh() && (self.lost_data.contains(&id) || self.joined.contains(&id)) {
            core.lived_before();
        }
        let node = self.node(id);
        node.core = Some(core);
        // Durable state commits every few entries, so that crashes find every mix of durable and
        // lost state.
        node.applier = Some(applier.sync_every(sync_every).hashing_points(hasher));
        node.to_apply.clear();
        node.apply_scheduled = false;
        node.paused_until = 0;
        node.started_at = ctx.time_us;
        node.polled_at = ctx.time_us;
        node.clock_origin_ms = clock_origin_ms;
        let inc = node.inc;
        self.at(tick_offset, Ev::Tick { node: id, inc });
        self.checker.restarted(id);
        self.registry.touched(id);
        self.touched.insert(id);
        self.log(|| format!("node {id} started (incarnation {inc})"));
    }

    /// The member's process dies: unsynced writes are lost or written back in part (see
    /// `disk.rs`), waiting clients are cut off.
    fn crash(&mut self, id: u64, why: &str) {
        if !self.is_up(id) {
            return;
        }
        // What the state's disk writes back of what was not synced: nothing, everything, or
        // each sector by a coin.
        let write_back = [0.0, 0.5, 1.0][self.rng.gen_range(0..3)];
        let n = &mut self.nodes[(id - 1) as usize];
        n.log_dir.disarm();
        n.log_dir.crash(Some(&mut self.rng));
        n.state_disk.disarm();
        n.state_disk.crash(Some((write_back, &mut self.rng)));
        let node = self.node(id);
        node.applier = None;
        node.to_apply.clear();
        if let Some(core) = node.core.take() {
            // A killed process runs no shutdown code. redb's `Drop` would write its allocator
            // state (slow); one failed I/O first makes it skip that, as after any I/O error.
            if let Ok(txn) = core.state_db().begin_write() {
                let _ = txn.commit();
            }
            drop(core); // and its Database: whatever it still does goes nowhere
        }
        node.inc += 1;
        node.paused_until = 0;
        self.report.crashes += 1;
        self.keeper_waiters.retain(|_, (_, _, node, _)| *node != id);
        self.locker_waiters.retain(|_, (_, _, node)| *node != id);
        self.heartbeater_waiters.retain(|_, (_, _, node)| *node != id);
        let asked: Vec<Waiter> =
            self.replace_waiters.iter().filter(|(_, (_, leader))| *leader == id).map(|(w, _)| *w).collect();
        for waiter in asked {
            if let Some((member, _)) = self.replace_waiters.remove(&waiter) {
                self.at(100_000, Ev::Replace { node: member });
            }
        }
        let before = self.swap_waiters.len();
        self.swap_waiters.retain(|_, leader| *leader != id);
        if self.swap_waiters.len() < before {
            self.at(100_000, Ev::Swap);
        }
        let lost: Vec<Waiter> = self.waiters.iter().filter(|(_, w)| w.node == id).map(|(k, _)| *k).collect();
        for waiter in lost {
            if let Some(w) = self.waiters.remove(&waiter) {
                let d = self.rng.gen_range(1_000..20_000);
                let result = Err("connection lost".into());
                let ev = Ev::ClientReply {
                    client: w.client,
                    seq: w.seq,
                    attempt: w.attempt,
                    node: id,
                    payload: w.payload,
                    result,
                };
                self.at(d, ev);
            }
        }
        self.log(|| format!("node {id} crashed: {why}"));
    }

    fn chaos_delay(&mut self) -> u64 {
        let mean = self.params.chaos_every_us;
        self.rng.gen_range(mean / 4..=mean * 7 / 4)
    }

    /// One step: the events of one quantum, the turns of the members they touched, the checks.
    fn step(&mut self) -> bool {
        let budget = MAX_STEPS + MAX_STEPS_PER_CHAOS_SECOND * self.params.chaos_us / 1_000_000;
        if self.step >= budget {
            self.ctx().fail(None, "step budget", format!("{budget} steps taken without finishing the run"));
        }
        let Some((&(t, _), _)) = self.queue.first_key_value() else { return false };
        let horizon = t + QUANTUM_US;
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 >= horizon {
                break;
            }
            let ((time, _), ev) = entry.remove_entry();
            self.now = time;
            self.handle(ev);
        }
        let touched: Vec<u64> = std::mem::take(&mut self.touched).into_iter().collect();
        for id in touched {
            self.turn(id);
        }
        self.step += 1;
        self.check();
        true
    }

    fn check(&mut self) {
        let ctx = self.ctx();
        let up: Vec<(u64, &Core)> =
            self.nodes.iter().filter_map(|n| n.core.as_ref().map(|c| (n.id, c))).collect();
        self.checker.after_step(ctx, &up);
        self.lock_checker.after_step(ctx, &up);
        self.registry.after_step(ctx, &up);
        self.watch_checker.after_step(ctx, &up);
        self.point_checker.after_step(ctx, self.configuration_size() as usize);
        if self.params.mode == Mode::LeaderChanges {
            for (_, c) in &up {
                let s = c.status();
                let newer = self.leaders_seen.last().is_none_or(|(_, term)| s.term > *term);
                if s.role == latch::core::Role::Leader && newer {
                    self.leaders_seen.push((self.now, s.term));
                }
            }
            // TTL + 2 × the longest election timeout raft-rs draws (20 ticks), and the message
            // round trips of an election that may fall between the deadline and the expiry
            // (pre-vote, vote) and of two commits (the new leader's first entry, the expiry);
            // and a round trip for each leader change since the last keepalive: each new
            // leader re-bases the lease on its own clock, off by the delay of its freshest
            // sample of the last leader's (an entry's way from proposal to application). An
            // election that elects nobody (two candidates split the votes: a term without a
            // leader) costs another election timeout and its two round trips, as
            // docs/sessions.md says.
            let round_trip = 2 * self.params.net.delay_us.1;
            let fixed = self.params.session_ttl_ms * 1_000 + 2 * 20 * TICK_US + 4 * round_trip;
            let top_term = up.iter().map(|(_, c)| c.status().term).max().unwrap_or(0);
            let leaders = &self.leaders_seen;
            // (leader changes, terms that elected nobody) since `since_us`.
            let elections = |since_us: u64| {
                let changes = leaders.iter().filter(|(at, _)| *at > since_us).count() as u64;
                let term_then = leaders.iter().rev().find(|(at, _)| *at <= since_us).map_or(0, |(_, t)| *t);
                (changes, top_term.saturating_sub(term_then).saturating_sub(changes))
            };
            let leaderless_us = 20 * TICK_US + 2 * round_trip;
            let bound = |last_us: u64| {
                let (changes, leaderless) = elections(last_us);
                fixed + changes * round_trip + leaderless * leaderless_us
            };
            self.leases.check_bounds(ctx, &self.keepers, bound);
            // A heartbeat's TTL counts from its application: the same past the TTL, counted from
            // its first application, plus the longest a cut-off leader takes to apply it; and,
            // as for sessions, an election timeout and two round trips per term that elected
            // nobody (no member turns an instance critical without a leader).
            let extra = 2 * 20 * TICK_US + LEADER_CUT_OFF_US.1 + 4 * round_trip;
            let extra = |applied_us: u64| extra + elections(applied_us).1 * leaderless_us;
            self.registry.check_bounds(ctx, &self.heartbeaters, &self.keepers, extra);
        }
        let mut h = self.trace;
        h.u64(self.step);
        h.u64(self.now);
        for n in &self.nodes {
            h.u64(n.inc);
            if let Some(c) = &n.core {
                let s = c.status();
                h.u64(s.term);
                h.u64(s.role as u64);
                h.u64(s.leader);
                h.u64(s.commit_index);
                h.u64(s.applied.index);
                h.u64(s.applied.revision as u64);
                self.report.max_term = self.report.max_term.max(s.term);
            }
        }
        self.trace = h;
    }

    fn handle(&mut self, ev: Ev) {
        if let Some(id) = ev.on_node() {
            let until = self.nodes[(id - 1) as usize].paused_until;
            if until > self.now && self.is_up(id) {
                // A stopped process: the event waits (a tick is simply skipped to the next).
                let wait = until - self.now;
                self.at(wait, ev);
                return;
            }
        }
        match ev {
            Ev::Tick { node, inc } => {
                let n = self.node(node);
                if n.inc != inc || n.core.is_none() {
                    return;
                }
                let interval = n.tick_us;
                self.set_clock(node);
                if let Some(core) = self.node(node).core.as_mut() {
                    core.tick();
                }
                self.touched.insert(node);
                let jitter = self.rng.gen_range(0..=200);
                self.at(interval - 100 + jitter, Ev::Tick { node, inc });
                if self.gone.contains(&node) {
                    self.poll_status(node);
                }
                self.raise_cluster_version(node);
            }
            Ev::Deliver { d, from_inc } => self.deliver(*d, from_inc),
            Ev::Notice { node, inc, what } => {
                let n = self.node(node);
                if n.inc != inc {
                    return;
                }
                let Some(core) = n.core.as_mut() else { return };
                match what {
                    Notice::Unreachable(peer) => core.report_unreachable(peer),
                    Notice::Snapshot(peer, ok) => core.report_snapshot(peer, ok),
                }
                self.touched.insert(node);
            }
            Ev::ClientRequest { node, client, seq, attempt, payload } => {
                self.client_request(node, client, seq, attempt, payload)
            }
            Ev::ClientReply { client, seq, attempt, node, payload, result } => {
                self.client_reply(client, seq, attempt, node, payload, result)
            }
            Ev::ClientTimeout { client, seq, attempt } => {
                let current =
                    self.clients[client].op.as_ref().is_some_and(|op| op.seq == seq && op.attempt == attempt);
                if current {
                    self.send_attempt(client);
                }
            }
            Ev::ClientWake { client } => self.client_wake(client),
            Ev::KeeperWake { keeper } => self.keeper_wake(keeper),
            Ev::KeeperRequest { node, keeper, attempt, call } => {
                self.keeper_request(node, keeper, attempt, call)
            }
            Ev::KeeperReply { keeper, attempt, result } => self.keeper_reply(keeper, attempt, result),
            Ev::KeeperTimeout { keeper, attempt } => {
                let k = &mut self.keepers[keeper];
                if k.in_flight && k.attempt == attempt {
                    k.in_flight = false;
                    self.keeper_retry(keeper, None);
                }
            }
            Ev::LockerWake { locker } => self.locker_wake(locker),
            Ev::LockerRequest { node, locker, attempt, body, request_id } => {
                self.locker_request(node, locker, attempt, *body, request_id)
            }
            Ev::LockerReply { locker, attempt, result } => self.locker_reply(locker, attempt, result),
            Ev::HeartbeaterWake { heartbeater } => self.heartbeater_wake(heartbeater),
            Ev::HeartbeaterRequest { node, heartbeater, attempt, body, request_id } => {
                self.heartbeater_request(node, heartbeater, attempt, *body, request_id)
            }
            Ev::HeartbeaterReply { heartbeater, attempt, result } => {
                self.heartbeater_reply(heartbeater, attempt, result)
            }
            Ev::HeartbeaterTimeout { heartbeater, attempt } => {
                let h = &mut self.heartbeaters[heartbeater];
                if h.in_flight.is_some() && h.attempt == attempt {
                    h.in_flight = None;
                    self.log(|| format!("heartbeater {heartbeater} attempt {attempt}: timed out"));
                    let d = self.rng.gen_range(2_000..20_000);
                    self.at(d, Ev::HeartbeaterWake { heartbeater });
                }
            }
            Ev::LockerTimeout { locker, attempt } => {
                let l = &self.lockers[locker];
                if l.in_flight.is_some() && l.attempt == attempt && !self.locker_resends(locker) {
                    self.lockers[locker].in_flight = None;
                    let d = self.rng.gen_range(10_000..50_000);
                    self.at(d, Ev::LockerWake { locker });
                }
            }
            Ev::LeaderChange => self.leader_change(),
            Ev::Chaos => self.chaos(),
            Ev::Restart { node } => self.start_node(node),
            Ev::Replace { node } => self.ask_replacement(node),
            Ev::StartReplaced { node } => self.start_replaced(node),
            Ev::Swap => self.ask_swap(),
            Ev::StartAdded { node } => self.start_added(node),
            Ev::ApplyTurn { node, inc } => {
                if self.node(node).inc == inc {
                    self.apply_turn(node);
                }
            }
            Ev::Heal => {
                if self.net.is_partitioned() {
                    self.log(|| "network healed".to_string());
                }
                self.net.heal();
            }
        }
    }

    fn deliver(&mut self, mut d: Delivery, from_inc: u64) {
        let (from, to) = (d.from, d.to);
        let snapshot = latch::core::is_snapshot(&d.msg);
        if !self.is_up(to) || !self.net.connected(from, to) {
            // The transport notices: the sender hears that the peer is unreachable.
            let delay = self.rng.gen_range(500..5_000);
            self.at(delay, Ev::Notice { node: from, inc: from_inc, what: Notice::Unreachable(to) });
            if snapshot {
                self.at(delay, Ev::Notice { node: from, inc: from_inc, what: Notice::Snapshot(to, false) });
            }
            return;
        }
        if let (true, Some(stream)) = (snapshot, d.stream.take()) {
            // The receiver's transport stages the stream in its inbox; raft gets its token.
            let meta = d.msg.get_snapshot().get_metadata().clone();
            let Some(core) = self.node(to).core.as_ref() else { return };
            let inbox = core.snapshots().inbox().clone();
            let (mut w, token) = inbox
                .create(from, meta.index, meta.term)
                .unwrap_or_else(|e| self.ctx().fail(Some(to), "snapshot inbox", e.to_string()));
            w.write_all(&stream)
                .unwrap_or_else(|e| self.ctx().fail(Some(to), "snapshot inbox", e.to_string()));
            d.msg.mut_snapshot().data = token.into();
        }
        let told = self.node(to).core.as_ref().is_some_and(|c| c.configuration().removed.contains(&from));
        if told && self.gone.contains(&from) && self.nodes[(from - 1) as usize].inc == from_inc {
            // The receiver's transport refuses a member its configuration no longer has (the
            // wire answers its hello `REMOVED`): the removed member stops.
            self.report.stopped_told_by_peer += 1;
            self.crash(from, &format!("stopped: node {to} says it was removed"));
            return;
        }
        let result = match self.node(to).core.as_mut() {
            Some(core) => core.step(d.msg),
            None => return,
        };
        self.touched.insert(to);
        if let Err(e) = result {
            self.died(to, &format!("step: {e}"));
            return;
        }
        if snapshot {
            self.report.snapshots += 1;
            self.log(|| format!("node {to} got a snapshot from node {from}"));
            let delay = self.rng.gen_range(100..2_000);
            self.at(delay, Ev::Notice { node: from, inc: from_inc, what: Notice::Snapshot(to, true) });
        }
    }

    /// A member's turn, as the production driver takes it. A snapshot is installed by the
    /// member's applier at once (the raft thread waits for the apply thread to do it).
    fn turn(&mut self, id: u64) {
        self.set_clock(id);
        let ctx = self.ctx();
        let n = &mut self.nodes[(id - 1) as usize];
        let inc = n.inc;
        let (Some(core), Some(applier)) = (n.core.as_mut(), n.applier.as_mut()) else { return };
        core.flush_reads();
        let mut out: Vec<Message> = Vec::new();
        let to_apply = &mut n.to_apply;
        let mut progress = Vec::new();
        let (db, fences) = (core.state_db().clone(), &mut self.fences);
        // As the apply thread does: whatever was handed out before is applied first, in order.
        let mut install = |token: &[u8], index: u64, term: u64, conf_state: &[u8]| {
            let queued = std::mem::take(to_apply);
            if !queued.is_empty() {
                let (done, applied) = fences.apply(ctx, id, applier, &db, queued);
                progress.extend(done);
                applied?;
            }
            applier.install(token, index, term, conf_state)
        };
        let mut result = core.handle_ready(&mut |msgs| out.extend(msgs), &mut (), &mut install);
        let mut ended = Vec::new();
        if let Ok(actions) = &mut result {
            for p in progress {
                ended.extend(ended_sessions(&p));
                self.registry.applied(ctx, id, &p.commands);
                self.lock_checker.commands(ctx, id, &p.commands);
                actions.extend(core.on_applied(p));
            }
        } else {
            self.lock_checker.applied_before_death(ctx, id, &progress, &[]);
        }
        for msg in out {
            self.send(id, inc, msg);
        }
        match result {
            Ok(actions) => self.carry_out(id, actions),
            Err(e @ latch::core::CoreError::Removed { .. }) if self.gone.contains(&id) => {
                self.report.stopped_applying_removal += 1;
                self.crash(id, &format!("stopped, removed: {e}"));
            }
            Err(e) => self.died(id, &format!("handle_ready: {e}")),
        }
        self.sessions_ended(id, ended);
    }

    /// Sessions member `id` applied the end of, told to the lease checker once the grants of the
    /// same batch were carried out: a batch's grants come from checkpoints before the end in the
    /// log (a checkpoint skips an ended session), which the checker cannot order within it.
    fn sessions_ended(&mut self, id: u64, ended: Vec<(String, bool)>) {
        for (session, closed) in ended {
            self.log(|| format!("node {id} applied the end of {session} (closed: {closed})"));
            self.leases.ended(self.ctx(), id, &session, closed, self.now);
        }
    }

    /// The member's apply turn, as the apply thread takes it: everything handed out so far in
    /// one transaction, then (now and then) a durable commit — waiting for its fsync, as an idle
    /// or stopping apply thread does, or with the fsync left behind, as a busy one does — and
    /// the progress goes to the core.
    fn apply_turn(&mut self, id: u64) {
        let sync = self.rng.gen_bool(0.1).then(|| self.rng.gen_bool(0.5));
        self.set_clock(id);
        let ctx = self.ctx();
        let n = &mut self.nodes[(id - 1) as usize];
        n.apply_scheduled = false;
        let entries = std::mem::take(&mut n.to_apply);
        let (Some(core), Some(applier)) = (n.core.as_mut(), n.applier.as_mut()) else { return };
        let mut result = Ok(Vec::new());
        let mut ended = Vec::new();
        if !entries.is_empty() {
            let (registry, locks) = (&mut self.registry, &mut self.lock_checker);
            let db = core.state_db().clone();
            let (progress, applied) = self.fences.apply(ctx, id, applier, &db, entries);
            result = match applied {
                Ok(()) => {
                    let mut actions = Vec::new();
                    for p in progress {
                        ended.extend(ended_sessions(&p));
                        registry.applied(ctx, id, &p.commands);
                        locks.commands(ctx, id, &p.commands);
                        actions.extend(core.on_applied(p));
                    }
                    Ok(actions)
                }
                Err(e) => {
                    locks.applied_before_death(ctx, id, &progress, &[]);
                    Err(e)
                }
            };
        }
        if let Some(wait) = sync {
            if let Ok(actions) = &mut result {
                match if wait { applier.sync() } else { applier.sync_behind() } {
                    Ok(Some(p)) => {
                        self.registry.applied(ctx, id, &p.commands);
                        self.lock_checker.commands(ctx, id, &p.commands);
                        actions.extend(core.on_applied(p))
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.lock_checker.applied_before_death(ctx, id, &[], actions);
                        result = Err(e);
                    }
                }
            }
        }
        self.touched.insert(id);
        match result {
            Ok(actions) => self.carry_out(id, actions),
            Err(e) => self.died(id, &format!("apply: {e}")),
        }
        self.sessions_ended(id, ended);
    }

    /// The core returned an error: expected only when its fsync was made to fail.
    fn died(&mut self, id: u64, what: &str) {
        let n = self.node(id);
        let (log_failed, state_failed) = (n.log_dir.take_failed_sync(), n.state_disk.take_failed_sync());
        if log_failed || state_failed {
            self.report.io_deaths += 1;
            self.crash(id, &format!("died of an injected fsync failure ({what})"));
            let d = self.rng.gen_range(50_000..1_000_000);
            self.at(d, Ev::Restart { node: id });
        } else {
            self.ctx().fail(
                Some(id),
                "no unexpected core error",
                format!("the core failed without an injected fault: {what}"),
            );
        }
    }

    fn send(&mut self, from: u64, inc: u64, msg: Message) {
        self.report.messages += 1;
        let ctx = self.ctx();
        self.checker.vote_sent(ctx, from, &msg);
        let to = msg.to;
        let snapshot = latch::core::is_snapshot(&msg);
        let mut stream = None;
        if snapshot {
            match self.stream_snapshot(from, &msg) {
                Ok(bytes) => stream = Some(Arc::new(bytes)),
                Err(e) => {
                    self.log(|| format!("node {from}: streaming a snapshot to {to} failed: {e}"));
                    let delay = self.rng.gen_range(1_000..10_000);
                    self.at(delay, Ev::Notice { node: from, inc, what: Notice::Snapshot(to, false) });
                    return;
                }
            }
        }
        let deliveries = self.net.send(&mut self.rng, from, msg, stream);
        if deliveries.is_empty() && snapshot {
            // Lost on the wire: the snapshot stream fails, and the sender hears so.
            let delay = self.rng.gen_range(1_000..10_000);
            self.at(delay, Ev::Notice { node: from, inc, what: Notice::Snapshot(to, false) });
        }
        for (delay, d) in deliveries {
            self.at(delay, Ev::Deliver { d: Box::new(d), from_inc: inc });
        }
    }

    /// The snapshot stream a sender's transport would send with `msg`, read from its prepared
    /// read transaction.
    fn stream_snapshot(&mut self, from: u64, msg: &Message) -> Result<Vec<u8>, String> {
        let Some(core) = self.node(from).core.as_ref() else { return Err("the sender is down".into()) };
        let token = msg.get_snapshot().data.to_vec();
        let mut bytes = Vec::new();
        let snapshots = core.snapshots().clone();
        let result = snapshots.stream(&token, &mut |frame: Vec<u8>| -> Result<(), core::SnapshotError> {
            bytes.extend_from_slice(&frame);
            Ok(())
        });
        snapshots.finish(&token);
        result.map_err(|e| e.to_string())?;
        Ok(bytes)
    }

    fn carry_out(&mut self, id: u64, actions: Vec<Action>) {
        for a in actions {
            let (waiter, result) = match a {
                Action::Reply { waiter, result }
                    if matches!(self.keeper_waiters.get(&waiter), Some((.., KeeperCall::Close))) =>
                {
                    let answer = match result {
                        Ok(o) => match o.result {
                            Some(outcome::Result::Session(_) | outcome::Result::NotFound(_)) => {
                                KeeperResult::Closed
                            }
                            other => self.ctx().fail(Some(id), "close_session outcome", format!("{other:?}")),
                        },
                        Err(RequestError::NotLeader { leader, .. }) => KeeperResult::NotLeader(leader),
                        Err(e) => KeeperResult::Failed(e.to_string()),
                    };
                    self.keeper_answered(id, waiter, answer);
                    continue;
                }
                Action::Reply { waiter, result } if self.keeper_waiters.contains_key(&waiter) => {
                    let answer = match result {
                        Ok(o) => match o.result {
                            Some(outcome::Result::Session(_)) => KeeperResult::Created,
                            // Its first answer was forgotten: the session was created then.
                            Some(outcome::Result::Rejected(why)) if why.contains("exists") => {
                                KeeperResult::Created
                            }
                            other => {
                                self.ctx().fail(Some(id), "create_session outcome", format!("{other:?}"))
                            }
                        },
                        Err(e) => KeeperResult::Failed(e.to_string()),
                    };
                    if let (KeeperResult::Created, Some(&(keeper, ..))) =
                        (&answer, self.keeper_waiters.get(&waiter))
                    {
                        // A creation grants the whole TTL from the first attempt's sending.
                        let k = &self.keepers[keeper];
                        let until = k.create_sent_us.unwrap_or(0) + k.ttl_ms * 1_000;
                        let session = k.session.clone();
                        self.leases.granted(self.ctx(), id, &session, until);
                    }
                    self.keeper_answered(id, waiter, answer);
                    continue;
                }
                Action::Reply { waiter, result } if self.heartbeater_waiters.contains_key(&waiter) => {
                    if let Some((heartbeater, attempt, at)) = self.heartbeater_waiters.remove(&waiter) {
                        if at != id {
                            self.ctx().fail(
                                Some(id),
                                "waiters",
                                format!("heartbeater waiter {waiter} answered by {id}, sent to {at}"),
                            );
                        }
                        let d = self.rng.gen_range(100..2_000);
                        let result = result.map_err(|e| e.to_string());
                        self.at(d, Ev::HeartbeaterReply { heartbeater, attempt, result });
                    }
                    continue;
                }
                Action::Reply { waiter, result } if self.locker_waiters.contains_key(&waiter) => {
                    if let Some((locker, attempt, _)) = self.locker_waiters.remove(&waiter) {
                        let d = self.rng.gen_range(100..2_000);
                        let result = result.map_err(|e| e.to_string());
                        self.at(d, Ev::LockerReply { locker, attempt, result });
                    }
                    continue;
                }
                Action::KeptAlive { waiter, result } => {
                    let Some(&(keeper, _, _, call)) = self.keeper_waiters.get(&waiter) else { continue };
                    let answer = match (result, call) {
                        (Ok(grant), KeeperCall::KeepAlive { sent_us }) => {
                            let session = self.keepers[keeper].session.clone();
                            let until = sent_us + grant.granted_ms * 1_000;
                            self.log(|| {
                                format!(
                                    "node {id} granted {session} {} ms (sent t={:.3}s)",
                                    grant.granted_ms,
                                    sent_us as f64 / 1e6
                                )
                            });
                            self.leases.granted(self.ctx(), id, &session, until);
                            KeeperResult::Granted { sent_us, granted_ms: grant.granted_ms }
                        }
                        (Err(RequestError::NotLeader { leader, .. }), _) => KeeperResult::NotLeader(leader),
                        (Err(RequestError::SessionNotFound { .. }), _) => KeeperResult::Gone,
                        (Err(e), _) => KeeperResult::Failed(e.to_string()),
                        (Ok(_), KeeperCall::Create | KeeperCall::Close) => self.ctx().fail(
                            Some(id),
                            "keepalive",
                            format!("a {call:?} answered as a keepalive"),
                        ),
                    };
                    self.keeper_answered(id, waiter, answer);
                    continue;
                }
                Action::Reply { waiter, result } => {
                    let Some(w) = self.waiters.get(&waiter) else { continue };
                    let r = match result {
                        Ok(o) => Ok(self.answer_of(id, &w.payload, o)),
                        Err(e) => Err(e.to_string()),
                    };
                    (waiter, r)
                }
                Action::ReadReady { waiter } => {
                    let Some(w) = self.waiters.get(&waiter) else { continue };
                    let answer = match &w.payload {
                        Payload::Read { key, .. } => {
                            let key = key.clone();
                            let (revision, kv) = self.serve_read(id, &key);
                            Answer::Read(revision, kv)
                        }
                        Payload::Shared { call: Call::Get, index, .. } => {
                            let key = String::from_utf8_lossy(&self.history.shared[*index].key).into_owned();
                            let (_, kv) = self.serve_read(id, &key);
                            Answer::Shared(Return::Get(kv.map(|kv| kv.value)))
                        }
                        Payload::SerialRead { key } => {
                            let key = key.clone();
                            let (revision, kv) = self.serve_read(id, &key);
                            self.checker.serializable_read(self.ctx(), id, revision);
                            Answer::Read(revision, kv)
                        }
                        other => self.ctx().fail(
                            Some(id),
                            "read grant",
                            format!("waiter {waiter} is not a read: {other:?}"),
                        ),
                    };
                    (waiter, Ok(answer))
                }
                Action::ReadFailed { waiter, error } => (waiter, Err(error.to_string())),
                Action::Applied { revision, events } => {
                    self.checker.applied_events(self.ctx(), id, revision, &events);
                    self.lock_checker.applied(self.ctx(), revision);
                    self.watch_checker.applied(self.ctx(), id, revision, &events);
                    continue;
                }
                Action::Restored { revision, .. } => {
                    self.checker.restored(self.ctx(), id, revision);
                    self.registry.touched(id);
                    continue;
                }
                Action::LocksChanged { changes } => {
                    self.lock_checker.changed(self.ctx(), id, &changes);
                    continue;
                }
                Action::Changed { waiter, result } => {
                    if let Some((member, _)) = self.replace_waiters.remove(&waiter) {
                        self.replaced(member, result);
                    } else if self.swap_waiters.remove(&waiter).is_some() {
                        self.swapped(result);
                    }
                    continue;
                }
                // A removed member that runs stops on the error its next turn returns.
                Action::Membership(_) => continue,
                Action::Apply { entries } => {
                    let d = self.rng.gen_range(100..1_500);
                    let node = self.node(id);
                    node.to_apply.extend(entries);
                    if !node.apply_scheduled {
                        node.apply_scheduled = true;
                        let inc = node.inc;
                        self.at(d, Ev::ApplyTurn { node: id, inc });
                    }
                    continue;
                }
            };
            let Some(w) = self.waiters.remove(&waiter) else { continue };
            if w.node != id {
                self.ctx().fail(
                    Some(id),
                    "waiters",
                    format!("waiter {waiter} answered by node {id}, sent to {}", w.node),
                );
            }
            let d = self.rng.gen_range(100..2_000);
            let ev = Ev::ClientReply {
                client: w.client,
                seq: w.seq,
                attempt: w.attempt,
                node: id,
                payload: w.payload,
                result,
            };
            self.at(d, ev);
        }
    }

    /// What an applied write's outcome tells its client; an outcome that does not fit the
    /// request fails the run.
    fn answer_of(&self, id: u64, payload: &Payload, o: Outcome) -> Answer {
        let bad = |what: String| -> ! { self.ctx().fail(Some(id), "write outcome", what) };
        match (payload, o.result) {
            (Payload::Put { .. }, Some(outcome::Result::Put(_))) => Answer::Put(o.revision),
            (Payload::Shared { call: Call::Put { .. }, .. }, Some(outcome::Result::Put(_))) => {
                Answer::Shared(Return::Put)
            }
            (Payload::Shared { call: Call::Delete, .. }, Some(outcome::Result::DeleteRange(d))) => {
                Answer::Shared(Return::Delete { deleted: d.deleted > 0 })
            }
            (Payload::Shared { call: Call::Cas { .. }, .. }, Some(outcome::Result::Txn(t))) => {
                if t.succeeded
                    && !matches!(
                        t.results.first().and_then(|r| r.result.as_ref()),
                        Some(op_result::Result::Put(_))
                    )
                {
                    bad(format!("a CAS that succeeded without its put: {t:?}"));
                }
                Answer::Shared(Return::Cas { succeeded: t.succeeded })
            }
            (p, r) => bad(format!("{p:?} was answered with {r:?}")),
        }
    }

    /// Serves a granted linearizable read from the member's applied state.
    fn serve_read(&mut self, id: u64, key: &str) -> (i64, Option<KeyValue>) {
        let ctx = self.ctx();
        let Some(core) = self.node(id).core.as_ref() else {
            ctx.fail(Some(id), "read", "served by a dead node".into())
        };
        let req = Range { key: key.as_bytes().to_vec(), ..Default::default() };
        let (revision, resp) = core
            .state_db()
            .begin_read()
            .map_err(|e| e.to_string())
            .and_then(|txn| fsm::range(&txn, &req, 1 << 20).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| ctx.fail(Some(id), "read", format!("range failed: {e}")));
        (revision, resp.kvs.into_iter().next())
    }

    fn client_request(&mut self, node: u64, client: usize, seq: u64, attempt: u64, payload: Payload) {
        if !self.is_up(node) {
            let d = self.rng.gen_range(200..2_000);
            let result = Err("connection refused".into());
            self.at(d, Ev::ClientReply { client, seq, attempt, node, payload, result });
            return;
        }
        self.next_waiter += 1;
        let waiter = self.next_waiter;
        let shared_key = match &payload {
            Payload::Shared { index, .. } => self.history.shared[*index].key.clone(),
            _ => Vec::new(),
        };
        let Some(core) = self.node(node).core.as_mut() else { return };
        let command = |request_id: &str, body: Body| Command {
            version: fsm::COMMAND_VERSION,
            request_id: request_id.to_string(),
            body: Some(body),
        };
        match &payload {
            Payload::Put { key, value, request_id, .. } => {
                let put = Put { key: key.as_bytes().to_vec(), value: value.clone(), ..Default::default() };
                core.propose(waiter, command(request_id, Body::Put(put)));
            }
            Payload::Read { .. } | Payload::Shared { call: Call::Get, .. } => core.read_index(waiter),
            Payload::Shared { call, request_id, .. } => {
                let key = shared_key;
                let body = match call {
                    Call::Put { value } => Body::Put(Put { key, value: value.clone(), ..Default::default() }),
                    Call::Delete => Body::DeleteRange(DeleteRange { key, ..Default::default() }),
                    Call::Cas { expected, new } => Body::Txn(Txn {
                        compare: vec![Compare {
                            result: compare::Result::Equal as i32,
                            key: key.clone(),
                            target: Some(compare::Target::Value(expected.clone())),
                        }],
                        success: vec![TxnOp {
                            op: Some(op::Op::Put(Put { key, value: new.clone(), ..Default::default() })),
                        }],
                        failure: vec![],
                    }),
                    Call::Get => unreachable!("a get is a read"),
                };
                core.propose(waiter, command(request_id, body));
            }
            Payload::SerialRead { .. } if !core.status().caught_up => {
                // A restarted member serves nothing before its state caught up with its log.
                core.read_caught_up(waiter);
            }
            Payload::SerialRead { key } => {
                // Answered at once from this member's own state, as a serializable get is.
                let key = key.clone();
                let (revision, kv) = self.serve_read(node, &key);
                self.checker.serializable_read(self.ctx(), node, revision);
                let d = self.rng.gen_range(100..2_000);
                let result = Ok(Answer::Read(revision, kv));
                self.at(d, Ev::ClientReply { client, seq, attempt, node, payload, result });
                return;
            }
        }
        self.touched.insert(node);
        self.waiters.insert(waiter, WaitInfo { node, client, seq, attempt, payload });
    }

    fn client_reply(
        &mut self,
        client: usize,
        seq: u64,
        attempt: u64,
        node: u64,
        payload: Payload,
        result: ClientResult,
    ) {
        let ctx = self.ctx();
        let current = self.clients[client].op.as_ref().is_some_and(|op| op.seq == seq);
        let latest =
            self.clients[client].op.as_ref().is_some_and(|op| op.seq == seq && op.attempt == attempt);
        let ok = match (&payload, result) {
            (Payload::Put { key, value, request_id, before }, Ok(Answer::Put(revision))) => {
                let first = self.history.acked.get(key);
                invariants::check_put_reply(ctx, node, key, before, first, revision, request_id);
                if first.is_none() {
                    let ack = Ack { value: value.clone(), revision, request_id: request_id.clone() };
                    self.history.acked.insert(key.clone(), ack);
                    self.history.max_revision = self.history.max_revision.max(revision);
                    self.trace.bytes(key.as_bytes());
                    self.trace.u64(revision as u64);
                }
                true
            }
            (Payload::Read { key, before }, Ok(Answer::Read(revision, kv))) => {
                let written = self.history.written.get(key).map(Vec::as_slice);
                invariants::check_read(ctx, node, key, before, written, revision, kv.as_ref());
                self.history.max_revision = self.history.max_revision.max(revision);
                if kv.is_some() {
                    self.history.observed.insert(key.clone());
                }
                self.trace.bytes(key.as_bytes());
                self.trace.u64(revision as u64);
                if current {
                    self.history.reads_done += 1;
                }
                true
            }
            (Payload::Shared { index, .. }, Ok(Answer::Shared(ret))) => {
                // The first answer completes the operation; a late duplicate changes nothing.
                let op = &mut self.history.shared[*index];
                if current && op.completed.is_none() {
                    self.trace.u64(*index as u64);
                    self.trace.u64(self.now);
                    op.completed = Some((self.now, ret));
                }
                true
            }
            (Payload::SerialRead { .. }, Ok(Answer::Read(revision, _))) => {
                self.trace.u64(revision as u64);
                if current {
                    self.history.serial_reads += 1;
                }
                true
            }
            (_, Err(_)) => false,
            (p, Ok(r)) => {
                ctx.fail(Some(node), "client replies", format!("reply {r:?} does not match request {p:?}"))
            }
        };
        if ok && current {
            self.clients[client].op = None;
            let d = self.rng.gen_range(self.params.think_us.0..=self.params.think_us.1);
            self.at(d, Ev::ClientWake { client });
        } else if !ok && latest {
            // An error from the latest attempt: back off, then try another member.
            let d = self.rng.gen_range(5_000..60_000);
            let seq = self.clients[client].op.as_ref().map_or(0, |op| op.seq);
            let attempt = self.clients[client].op.as_ref().map_or(0, |op| op.attempt);
            self.at(d, Ev::ClientTimeout { client, seq, attempt });
        }
    }

    fn client_wake(&mut self, client: usize) {
        if self.clients[client].op.is_some() || self.settling {
            return;
        }
        self.clients[client].start(&mut self.rng, &mut self.history, self.now);
        self.send_attempt(client);
    }

    /// Sends the client's op (again: same request id) to a member other than the last one.
    fn send_attempt(&mut self, client: usize) {
        let members = self.members();
        let Some(op) = self.clients[client].op.as_mut() else { return };
        op.attempt += 1;
        let mut node = members[self.rng.gen_range(0..members.len())];
        if node == op.node {
            node = next_of(&members, node);
        }
        op.node = node;
        let first = op.attempt == 1;
        let (seq, attempt) = (op.seq, op.attempt);
        let payload = payload_of(op);
        if !first {
            self.history.retries += 1;
        }
        let d = self.rng.gen_range(100..2_000);
        self.at(d, Ev::ClientRequest { node, client, seq, attempt, payload: payload.clone() });
        if first && matches!(payload, Payload::Put { .. }) && self.rng.gen_bool(0.05) {
            // A hedged put: the same request id to a second member at once.
            let other = next_of(&members, node);
            let d = self.rng.gen_range(100..2_000);
            self.at(d, Ev::ClientRequest { node: other, client, seq, attempt, payload });
        }
        let timeout = self.params.client_timeout_us;
        self.at(timeout, Ev::ClientTimeout { client, seq, attempt });
    }

    fn keeper_wake(&mut self, keeper: usize) {
        let now = self.now;
        let k = &mut self.keepers[keeper];
        if k.gone || k.closed || k.in_flight || (k.created && k.stopped(now) && !k.closes) {
            return;
        }
        let call = if k.created && k.stopped(now) {
            KeeperCall::Close
        } else if k.created {
            k.last_sent_us = now;
            KeeperCall::KeepAlive { sent_us: now }
        } else {
            k.create_sent_us.get_or_insert(now);
            KeeperCall::Create
        };
        k.attempt += 1;
        k.in_flight = true;
        let (node, attempt) = (k.target, k.attempt);
        self.log(|| format!("keeper {keeper} attempt {attempt}: {call:?} to node {node}"));
        let d = self.rng.gen_range(100..2_000);
        self.at(d, Ev::KeeperRequest { node, keeper, attempt, call });
        self.at(100_000, Ev::KeeperTimeout { keeper, attempt });
    }

    fn keeper_request(&mut self, node: u64, keeper: usize, attempt: u64, call: KeeperCall) {
        if !self.is_up(node) {
            let d = self.rng.gen_range(200..2_000);
            let result = KeeperResult::Failed("connection refused".into());
            self.at(d, Ev::KeeperReply { keeper, attempt, result });
            return;
        }
        self.set_clock(node);
        self.next_waiter += 1;
        let waiter = self.next_waiter;
        let k = &self.keepers[keeper];
        let (session, request_id, ttl_ms) = (k.session.clone(), k.request_id.clone(), k.ttl_ms);
        if matches!(call, KeeperCall::Close) {
            self.lock_checker.close_sent(&session);
        }
        let Some(core) = self.node(node).core.as_mut() else { return };
        match call {
            KeeperCall::Create => {
                let body = Body::CreateSession(CreateSession { id: session, name: String::new(), ttl_ms });
                let cmd = Command { version: fsm::COMMAND_VERSION, request_id, body: Some(body) };
                core.propose(waiter, cmd);
            }
            KeeperCall::KeepAlive { .. } => core.keep_alive(waiter, session),
            KeeperCall::Close => {
                let request_id = Keeper::close_request_id(&session);
                let body = Body::CloseSession(CloseSession { id: session });
                core.propose(waiter, Command { version: fsm::COMMAND_VERSION, request_id, body: Some(body) });
            }
        }
        self.keeper_waiters.insert(waiter, (keeper, attempt, node, call));
        self.touched.insert(node);
    }

    fn keeper_answered(&mut self, node: u64, waiter: Waiter, result: KeeperResult) {
        let Some((keeper, attempt, at, _)) = self.keeper_waiters.remove(&waiter) else { return };
        if at != node {
            self.ctx().fail(
                Some(node),
                "waiters",
                format!("keeper waiter {waiter} answered by {node}, sent to {at}"),
            );
        }
        let d = self.rng.gen_range(100..2_000);
        self.at(d, Ev::KeeperReply { keeper, attempt, result });
    }

    fn keeper_reply(&mut self, keeper: usize, attempt: u64, result: KeeperResult) {
        self.log(|| format!("keeper {keeper} attempt {attempt}: {result:?}"));
        let k = &mut self.keepers[keeper];
        if !k.in_flight || k.attempt != attempt {
            return;
        }
        k.in_flight = false;
        match result {
            KeeperResult::Created => {
                k.created = true;
                let half = k.ttl_ms * 500;
                self.at(half, Ev::KeeperWake { keeper });
            }
            KeeperResult::Granted { sent_us, granted_ms } => {
                // As the Rust client: when half the TTL is left of the grant (see `Session`).
                let ttl_us = k.ttl_ms * 1_000;
                let after = (granted_ms * 1_000).saturating_sub(ttl_us / 2).max(granted_ms * 250);
                let next = (sent_us + after).saturating_sub(self.now);
                self.at(next, Ev::KeeperWake { keeper });
            }
            KeeperResult::NotLeader(leader) => {
                let hint = (leader != 0).then_some(leader);
                self.keeper_retry(keeper, hint);
            }
            KeeperResult::Gone => k.gone = true,
            KeeperResult::Closed => k.closed = true,
            KeeperResult::Failed(why) => {
                self.log(|| format!("keeper {keeper}: {why}"));
                self.keeper_retry(keeper, None);
            }
        }
    }

    /// A locker's turn: learn how its waits stand at a member, then send one call. Once its
    /// keeper has stopped (a dead or paused client) or lost its session, it only sends writes
    /// guarded by what it believes it holds, and stops for good once it believes it holds
    /// nothing.
    fn locker_wake(&mut self, locker: usize) {
        let now = self.now;
        let keeper = &self.keepers[self.lockers[locker].keeper];
        if self.settling {
            return;
        }
        let after_its_session = keeper.gone || (keeper.created && keeper.stopped(now));
        if !keeper.created || self.lockers[locker].in_flight.is_some() {
            let d = self.rng.gen_range(20_000..100_000);
            self.at(d, Ev::LockerWake { locker });
            return;
        }
        let session = keeper.session.clone();
        let node = self.any_member();
        let (body, request_id, call) = if after_its_session {
            match self.lockers[locker].next_call_after_its_session(&mut self.rng) {
                Some(next) => next,
                None => return,
            }
        } else {
            let ctx = self.ctx();
            if let Some(core) = self.nodes[(node - 1) as usize].core.as_ref() {
                self.lockers[locker].look(ctx, &session, core);
            }
            self.lockers[locker].next_call(&mut self.rng, &session)
        };
        if let LockCall::Guarded { request_id, sequencer, proclaimed, released_at } = &call {
            let ended = self.leases.ended_at(&sequencer.session);
            let ctx = self.ctx();
            self.fences.sent(ctx, locker, request_id, sequencer, proclaimed.as_deref(), *released_at, ended);
        }
        let l = &mut self.lockers[locker];
        l.attempt += 1;
        l.sent = Some((body.clone(), request_id.clone()));
        l.resent = 0;
        l.in_flight = Some(call);
        let attempt = l.attempt;
        let race = l.take_race();
        let d = self.rng.gen_range(100..2_000);
        self.at(d, Ev::LockerRequest { node, locker, attempt, body: Box::new(body), request_id });
        if let Some((body, request_id)) = race {
            // Attempt 0: its answer is dropped, as no call awaits it.
            let other = self.any_member();
            let d = self.rng.gen_range(100..2_000);
            self.at(
                d,
                Ev::LockerRequest { node: other, locker, attempt: 0, body: Box::new(body), request_id },
            );
        }
        self.at(300_000, Ev::LockerTimeout { locker, attempt });
    }

    fn locker_request(&mut self, node: u64, locker: usize, attempt: u64, body: Body, request_id: String) {
        match self.client_propose(node, body, request_id) {
            Some(waiter) => {
                self.locker_waiters.insert(waiter, (locker, attempt, node));
            }
            None => {
                let d = self.rng.gen_range(200..2_000);
                self.at(d, Ev::LockerReply { locker, attempt, result: Err("connection refused".into()) });
            }
        }
    }

    /// A client's command proposed at member `node` under a new waiter; `None` when the member
    /// is down (the client's connection is refused).
    fn client_propose(&mut self, node: u64, body: Body, request_id: String) -> Option<Waiter> {
        if !self.is_up(node) {
            return None;
        }
        self.set_clock(node);
        self.next_waiter += 1;
        let waiter = self.next_waiter;
        let cmd = Command { version: fsm::COMMAND_VERSION, request_id, body: Some(body) };
        if let Some(core) = self.node(node).core.as_mut() {
            core.propose(waiter, cmd);
        }
        self.touched.insert(node);
        Some(waiter)
    }

    /// A locker's call failed (an error, or no answer in time). Half the time, up to
    /// [`MAX_RESENDS`] times, it is sent again as the client library sends it: the same command
    /// under the same request id, to a member drawn anew; `true` when it was.
    fn locker_resends(&mut self, locker: usize) -> bool {
        let keeper = &self.keepers[self.lockers[locker].keeper];
        let alive = !keeper.gone && !keeper.stopped(self.now);
        let l = &mut self.lockers[locker];
        // A call already given up (a timeout drew no resend) is not sent again by a late error.
        if l.in_flight.is_none()
            || self.settling
            || !alive
            || l.resent >= MAX_RESENDS
            || !self.resend_rng.gen_bool(0.5)
        {
            return false;
        }
        let Some((body, request_id)) = l.sent.clone() else { return false };
        if matches!(l.in_flight, Some(LockCall::Spend { .. })) {
            self.withdrawals_resent += 1;
        }
        l.resent += 1;
        l.attempt += 1;
        let attempt = l.attempt;
        self.resends += 1;
        let members = self.members();
        let node = members[self.resend_rng.gen_range(0..members.len())];
        self.log(|| format!("locker {locker} attempt {attempt}: {request_id} sent again to node {node}"));
        let d = self.resend_rng.gen_range(100..2_000);
        self.at(d, Ev::LockerRequest { node, locker, attempt, body: Box::new(body), request_id });
        self.at(300_000, Ev::LockerTimeout { locker, attempt });
        true
    }

    fn locker_reply(&mut self, locker: usize, attempt: u64, result: Result<Outcome, String>) {
        if self.lockers[locker].attempt != attempt {
            return;
        }
        if result.is_err() && self.locker_resends(locker) {
            return;
        }
        let ctx = self.ctx();
        let l = &mut self.lockers[locker];
        let Some(call) = l.in_flight.take() else { return };
        let session = &self.keepers[l.keeper].session;
        if let Some(spent) = result.as_ref().ok().and_then(|outcome| l.answered(ctx, session, &call, outcome))
        {
            self.lock_checker.spent(spent);
        }
        // A failed acquire may still apply: its wait stays listed until a look settles it.
        self.log(|| format!("locker {locker} attempt {attempt}: {call:?} -> {result:?}"));
        let (least, most) = self.params.locker_think_us;
        let d = self.rng.gen_range(least..most);
        self.at(d, Ev::LockerWake { locker });
    }

    /// A heartbeater's turn: its next registration or heartbeat, to a member drawn at random
    /// (a follower forwards it). It stops for good once stopped (a dead client, or its keeper
    /// died) or its session is gone; one bound to a session waits for its keeper to create it.
    fn heartbeater_wake(&mut self, heartbeater: usize) {
        let now = self.now;
        let h = &self.heartbeaters[heartbeater];
        if h.gone || h.in_flight.is_some() || h.stopped(now, &self.keepers) {
            return;
        }
        let session = match h.spec.keeper {
            Some(k) if !self.keepers[k].created => {
                let d = self.rng.gen_range(20_000..100_000);
                self.at(d, Ev::HeartbeaterWake { heartbeater });
                return;
            }
            Some(k) => self.keepers[k].session.clone(),
            None => String::new(),
        };
        let h = &mut self.heartbeaters[heartbeater];
        let (body, call) = h.next_call(now, &session);
        let (key, attempt, timeout) = (h.key(), h.attempt, h.spec.timeout_us);
        self.registry.sent(&call.request_id, key, call.register, now);
        let node = self.any_member();
        self.log(|| format!("heartbeater {heartbeater} attempt {attempt}: {call:?} to node {node}"));
        let d = self.rng.gen_range(100..2_000);
        let request_id = call.request_id;
        self.at(d, Ev::HeartbeaterRequest { node, heartbeater, attempt, body: Box::new(body), request_id });
        self.at(timeout, Ev::HeartbeaterTimeout { heartbeater, attempt });
    }

    fn heartbeater_request(
        &mut self,
        node: u64,
        heartbeater: usize,
        attempt: u64,
        body: Body,
        request_id: String,
    ) {
        match self.client_propose(node, body, request_id) {
            Some(waiter) => {
                self.heartbeater_waiters.insert(waiter, (heartbeater, attempt, node));
            }
            None => {
                let d = self.rng.gen_range(200..2_000);
                let result = Err("connection refused".into());
                self.at(d, Ev::HeartbeaterReply { heartbeater, attempt, result });
            }
        }
    }

    fn heartbeater_reply(&mut self, heartbeater: usize, attempt: u64, result: Result<Outcome, String>) {
        let h = &mut self.heartbeaters[heartbeater];
        if h.attempt != attempt {
            return;
        }
        let Some(call) = h.in_flight.take() else { return };
        let next = result.as_ref().ok().map(|outcome| h.answered(&call, outcome));
        self.log(|| format!("heartbeater {heartbeater} attempt {attempt}: {call:?} -> {result:?}"));
        match next {
            Some(Ok(Next::Beat)) => {
                let interval = self.heartbeaters[heartbeater].spec.interval_us;
                let d = (call.sent_us + interval).saturating_sub(self.now);
                self.at(d, Ev::HeartbeaterWake { heartbeater });
            }
            Some(Ok(Next::Register)) => self.at(0, Ev::HeartbeaterWake { heartbeater }),
            Some(Ok(Next::Gone)) => {}
            Some(Err(why)) => self.ctx().fail(None, "registry: heartbeat outcome", why),
            None => {
                // Failed at that member (down, not leader and none known, timed out): again
                // soon, at another member.
                let d = self.rng.gen_range(2_000..20_000);
                self.at(d, Ev::HeartbeaterWake { heartbeater });
            }
        }
    }

    /// Tries again soon: at the named leader, or at another member.
    fn keeper_retry(&mut self, keeper: usize, leader: Option<u64>) {
        let members = self.members();
        let other = members[self.rng.gen_range(0..members.len())];
        let k = &mut self.keepers[keeper];
        k.target = leader.unwrap_or(if other == k.target { next_of(&members, other) } else { other });
        let d = self.rng.gen_range(2_000..20_000);
        self.at(d, Ev::KeeperWake { keeper });
    }

    /// Cuts the leader off from the others, healing before the next change.
    fn leader_change(&mut self) {
        if self.settling || self.now >= self.params.chaos_us {
            return;
        }
        if let Some(leader) = self.leader() {
            let rest: Vec<u64> = self.members().into_iter().filter(|&x| x != leader).collect();
            self.net.heal();
            self.net.split(&[leader], &rest);
            self.report.partitions += 1;
            self.log(|| format!("leader {leader} cut off"));
            let d = self.rng.gen_range(LEADER_CUT_OFF_US.0..LEADER_CUT_OFF_US.1);
            self.at(d, Ev::Heal);
        }
        let half = self.params.session_ttl_ms * 500;
        self.at(half, Ev::LeaderChange);
    }

    /// A follower's data dir is lost (its disk replaced): it dies, comes back empty, and is
    /// replaced through the leader before it may start again (`core::membership`).
    fn lose_data_dir(&mut self) {
        let Some(leader) = self.leader() else { return };
        let followers: Vec<u64> = self.up_members().into_iter().filter(|id| *id != leader).collect();
        let id = followers[self.rng.gen_range(0..followers.len())];
        self.crash(id, "its data dir lost");
        let node = self.node(id);
        node.log_dir = SimDir::new();
        node.state_disk = SimDisk::new();
        self.checker.wiped(id);
        self.lost_data.insert(id);
        if self.swap_rng.gen_bool(0.5) {
            // Its host is given up: the member is removed, and a new one added in its place.
            self.report.swaps += 1;
            self.begin_swap(id);
            return;
        }
        self.replacing = Some(id);
        self.report.replacements += 1;
        let d = self.rng.gen_range(10_000..500_000);
        self.at(d, Ev::Replace { node: id });
    }

    /// A removed member that still runs asks its peers for their `Peer.Status` every
    /// [`STATUS_POLL_US`], as `server::learn_members` does; one that lists it removed stops it.
    fn poll_status(&mut self, id: u64) {
        let i = (id - 1) as usize;
        if self.now < self.nodes[i].polled_at + STATUS_POLL_US {
            return;
        }
        self.nodes[i].polled_at = self.now;
        let told = (self.nodes.iter().filter(|n| n.id != id && !self.gone.contains(&n.id)))
            .filter(|n| self.net.connected(id, n.id) && self.net.connected(n.id, id))
            .find(|n| n.core.as_ref().is_some_and(|c| c.configuration().removed.contains(&id)))
            .map(|n| n.id);
        if let Some(peer) = told {
            self.report.stopped_by_status += 1;
            self.crash(id, &format!("stopped: node {peer}'s status lists it removed"));
        }
    }

    /// A running member of an older build is stopped and started again on this one, as an
    /// operator rolls an upgrade through the cluster one member at a time.
    fn upgrade_one(&mut self) {
        let older: Vec<u64> = (self.up_nodes().into_iter())
            .filter(|id| {
                !self.gone.contains(id) && self.nodes[(id - 1) as usize].build < fsm::COMMAND_VERSION
            })
            .collect();
        if older.is_empty() {
            return;
        }
        let id = older[self.rng.gen_range(0..older.len())];
        self.crash(id, "upgrade");
        self.node(id).build = fsm::COMMAND_VERSION;
        self.report.upgrades += 1;
        let d = self.rng.gen_range(50_000..1_000_000);
        self.at(d, Ev::Restart { node: id });
        self.log(|| format!("node {id} upgraded to a build of version {}", fsm::COMMAND_VERSION));
    }

    /// What the leader's `server::upgrade::raise` does, every [`RAISE_POLL_US`]: asks every
    /// other member of its configuration which build it runs (a member down, or cut off from it
    /// either way, does not answer) and proposes the raise `upgrade::raise_to` finds.
    fn raise_cluster_version(&mut self, id: u64) {
        if self.now < self.raised_at + RAISE_POLL_US {
            return;
        }
        let Some(core) = self.nodes[(id - 1) as usize].core.as_ref() else { return };
        let status = core.status();
        if status.role != Role::Leader || status.cluster_version >= status.build_version {
            return;
        }
        self.raised_at = self.now;
        let others = upgrade::asked(&core.configuration(), id);
        let builds: BTreeMap<u64, u32> = (others.iter())
            .filter_map(|m| self.nodes.get(usize::try_from(*m).ok()?.checked_sub(1)?))
            .filter(|n| n.core.is_some() && self.net.connected(id, n.id) && self.net.connected(n.id, id))
            .map(|n| (n.id, n.build))
            .collect();
        let Some(version) = upgrade::raise_to(status.cluster_version, status.build_version, &others, &builds)
        else {
            return;
        };
        self.next_waiter += 1;
        let waiter = self.next_waiter;
        let cmd = Command {
            version,
            request_id: String::new(),
            body: Some(Body::RaiseClusterVersion(RaiseClusterVersion {})),
        };
        self.set_clock(id);
        if let Some(core) = self.node(id).core.as_mut() {
            core.propose(waiter, cmd);
        }
        self.touched.insert(id);
        self.log(|| format!("node {id} proposes the cluster version {version} (builds {builds:?})"));
    }

    /// Whether the leader, if any, has every member of its configuration a voter.
    fn all_vote(&self) -> bool {
        let leader = self.leader().and_then(|l| self.nodes[(l - 1) as usize].core.as_ref());
        leader.is_some_and(|core| core.configuration().learners.is_empty())
    }

    /// The members of the configuration: every member but those removed (with no change under
    /// way, none of them waits to be admitted).
    fn configuration_size(&self) -> u64 {
        self.nodes.iter().filter(|n| !self.gone.contains(&n.id)).count() as u64
    }

    /// The cluster's members change while they run: the cluster grows by a member added under
    /// a new id (up to two more than it started with), or shrinks by a running follower removed
    /// (down to three), or a running follower is swapped for a new member. A removed member
    /// stops once it applies its removal or a peer refuses it.
    fn retire_follower(&mut self) {
        let Some(leader) = self.leader() else { return };
        let size = self.configuration_size();
        let (fewest, most) = (3, self.params.nodes + 2);
        let (remove, add) = match self.swap_rng.gen_range(0..3) {
            0 if size < most => (false, true),
            1 if size > fewest => (true, false),
            _ => (true, true),
        };
        let old = remove.then(|| {
            let followers: Vec<u64> = self.up_members().into_iter().filter(|id| *id != leader).collect();
            followers[self.swap_rng.gen_range(0..followers.len())]
        });
        match (old, add) {
            (Some(id), true) => {
                self.report.retirements += 1;
                self.log(|| format!("node {id} to be swapped for a new member while it runs"));
            }
            (Some(id), false) => {
                self.report.shrinks += 1;
                self.log(|| format!("node {id} to be removed while it runs: {size} members shrink by one"));
            }
            (None, _) => {
                self.report.grows += 1;
                self.log(|| format!("{size} members grow by one"));
            }
        }
        self.begin_change(old, add);
    }

    /// Starts swapping `old` for a member under the next id: `old` is never started again; the
    /// leader is asked to remove it, then to add the new one.
    fn begin_swap(&mut self, old: u64) {
        self.begin_change(Some(old), true);
    }

    /// Starts a change of the members: `old`, if any, is never started again, and the leader
    /// is asked to remove it; then, if `add`, to add a member under the next id.
    fn begin_change(&mut self, old: Option<u64>, add: bool) {
        if let Some(old) = old {
            self.gone.insert(old);
        }
        let new = add.then(|| {
            let new = self.nodes.len() as u64 + 1;
            let tick_us = TICK_US * self.swap_rng.gen_range(970..=1030) / 1000;
            // A member added runs the build being rolled out.
            self.nodes.push(SimNode::new(new, tick_us, fsm::COMMAND_VERSION));
            new
        });
        self.swap = Some(Swap { old, new, removed: old.is_none() });
        let d = self.swap_rng.gen_range(10_000..500_000);
        self.at(d, Ev::Swap);
    }

    /// Asks the leader, if any, for the swap's next change: the old member's removal, then the
    /// new member's addition.
    fn ask_swap(&mut self) {
        let Some(swap) = self.swap else { return };
        if !self.swap_waiters.is_empty() {
            return;
        }
        // The removal first, if any and not applied yet; then the addition, if any.
        let next = match (swap.removed, swap.old, swap.new) {
            (false, Some(old), _) => Err(old),
            (_, _, Some(new)) => Ok(new),
            _ => return,
        };
        let Some(leader) = self.leader() else {
            self.at(100_000, Ev::Swap);
            return;
        };
        self.next_waiter += 1;
        let waiter = self.next_waiter;
        self.swap_waiters.insert(waiter, leader);
        if let Some(core) = self.node(leader).core.as_mut() {
            match next {
                Err(old) => core.remove(waiter, old),
                Ok(new) => core.add(waiter, new, &sim_peer_addr(new)),
            }
        }
        self.touched.insert(leader);
        let what = match next {
            Err(old) => format!("remove node {old}"),
            Ok(new) => format!("add node {new}"),
        };
        self.log(|| format!("node {leader} asked to {what}"));
    }

    /// The leader answered a change of the swap: the next one is asked, or the new member
    /// starts once its peers admit it; or the same is asked again.
    fn swapped(&mut self, result: Result<u64, latch::core::RequestError>) {
        let Some(swap) = self.swap else { return };
        match result {
            Ok(index) if !swap.removed => {
                self.log(|| format!("node {:?} removed at index {index}", swap.old));
                match swap.new {
                    Some(_) => {
                        self.swap = Some(Swap { removed: true, ..swap });
                        let d = self.swap_rng.gen_range(10_000..300_000);
                        self.at(d, Ev::Swap);
                    }
                    None => self.swap = None,
                }
            }
            Ok(index) => {
                let Some(new) = swap.new else { return };
                self.log(|| format!("node {new} added at index {index}"));
                let d = self.swap_rng.gen_range(10_000..300_000);
                self.at(d, Ev::StartAdded { node: new });
            }
            Err(e) => {
                self.log(|| format!("a change of the swap {swap:?} failed: {e}"));
                self.at(200_000, Ev::Swap);
            }
        }
    }

    /// Starts the added member on its empty data dir once a peer that is up has it a learner,
    /// as `server::admission` would; asks again later otherwise.
    fn start_added(&mut self, member: u64) {
        if self.swap.is_none_or(|s| s.new != Some(member)) {
            return;
        }
        match self.admission_answers(member, true).verdict {
            admission::Verdict::Admit => {
                self.swap = None;
                self.joined.insert(member);
                self.start_node(member);
            }
            verdict => {
                self.log(|| format!("node {member} not admitted yet: {verdict:?}"));
                self.at(100_000, Ev::StartAdded { node: member });
            }
        }
    }

    /// Asks the leader, if any, to make the member that lost its data a learner.
    fn ask_replacement(&mut self, member: u64) {
        if self.replacing != Some(member) {
            return;
        }
        let Some(leader) = self.leader() else {
            self.at(100_000, Ev::Replace { node: member });
            return;
        };
        self.next_waiter += 1;
        let waiter = self.next_waiter;
        self.replace_waiters.insert(waiter, (member, leader));
        if let Some(core) = self.node(leader).core.as_mut() {
            core.replace(waiter, member);
        }
        self.touched.insert(leader);
        self.log(|| format!("node {leader} asked to replace node {member}"));
    }

    /// The leader answered a replacement: the member may start once its peers admit it, or it is
    /// asked again.
    fn replaced(&mut self, member: u64, result: Result<u64, latch::core::RequestError>) {
        match result {
            Ok(index) => {
                self.log(|| format!("node {member} replaced at index {index}"));
                let d = self.rng.gen_range(10_000..300_000);
                self.at(d, Ev::StartReplaced { node: member });
            }
            Err(e) => {
                self.log(|| format!("replacing node {member} failed: {e}"));
                self.at(200_000, Ev::Replace { node: member });
            }
        }
    }

    /// Starts the replaced member on its empty data dir if the peers that are up admit it, as
    /// `server::admission` would; asks again later otherwise.
    fn start_replaced(&mut self, member: u64) {
        if self.replacing != Some(member) || self.is_up(member) {
            return;
        }
        match self.admission_answers(member, false).verdict {
            admission::Verdict::Admit => {
                self.replacing = None;
                self.start_node(member);
            }
            verdict => {
                self.log(|| format!("node {member} not admitted yet: {verdict:?}"));
                self.at(100_000, Ev::StartReplaced { node: member });
            }
        }
    }

    /// What the peers that are up answer `member` starting on an empty data dir (`joins`: one
    /// added at run time), read from their applied states and logs as `server::admission`'s
    /// peers read theirs, counted as it counts them (`admission::Tally`, one round).
    fn admission_answers(&self, member: u64, joins: bool) -> admission::Counted {
        let mut replies = BTreeMap::new();
        for peer in self.up_nodes().into_iter().filter(|p| *p != member) {
            let Some(core) = self.nodes[(peer - 1) as usize].core.as_ref() else { continue };
            let c = core.configuration();
            let ctx = self.ctx();
            let txn = core
                .state_db()
                .begin_read()
                .unwrap_or_else(|e| ctx.fail(Some(peer), "admission", e.to_string()));
            let status = latch::transport::membership_status(&txn, c)
                .unwrap_or_else(|e| ctx.fail(Some(peer), "admission", e));
            let reply = admission::reply_of(member, &status);
            replies.insert(peer, reply);
        }
        admission::Tally::new(member, 1..=self.params.nodes, [], joins).count(&replies)
    }

    /// The members clients call and faults hit: every member but those removed and down (one
    /// added and not admitted yet among them, down; one removed that has not stopped yet among
    /// them, as clients that still call it).
    fn members(&self) -> Vec<u64> {
        (self.nodes.iter().filter(|n| !self.gone.contains(&n.id) || n.core.is_some())).map(|n| n.id).collect()
    }

    fn any_member(&mut self) -> u64 {
        let members = self.members();
        members[self.rng.gen_range(0..members.len())]
    }

    /// The members that run, but those removed.
    fn up_members(&self) -> Vec<u64> {
        self.up_nodes().into_iter().filter(|id| !self.gone.contains(id)).collect()
    }

    fn up_nodes(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| n.core.is_some()).map(|n| n.id).collect()
    }

    /// The member that leads in the highest term (a member being removed may: asked to remove
    /// itself, it hands leadership over).
    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter_map(|n| n.core.as_ref().map(|c| (n.id, c.status())))
            .filter(|(_, s)| s.role == Role::Leader)
            .max_by_key(|(_, s)| s.term)
            .map(|(id, _)| id)
    }

    /// Picks and injects one fault, then schedules the next decision.
    fn chaos(&mut self) {
        if self.settling || self.now >= self.params.chaos_us {
            return;
        }
        let up = self.up_nodes();
        let n = self.params.nodes;
        let members = self.members();
        // Every member up and voting: a member's loss or removal leaves a quorum of voters (a
        // replaced member still a learner does not vote; losing a voter's data beside it could
        // leave too few, as it would an operator's cluster).
        let all_up = self.up_members().len() as u64 == self.configuration_size() && self.all_vote();
        let roll: f64 = self.rng.gen();
        if roll < 0.25 && up.len() > 1 {
            let id = up[self.rng.gen_range(0..up.len())];
            self.crash(id, "chaos");
            let down = if self.rng.gen_bool(0.4) {
                self.rng.gen_range(2_000_000..5_000_000)
            } else {
                self.rng.gen_range(50_000..1_500_000)
            };
            self.at(down, Ev::Restart { node: id });
        } else if roll < 0.27 {
            for id in up {
                self.crash(id, "whole-cluster crash");
                let down = self.rng.gen_range(20_000..800_000);
                self.at(down, Ev::Restart { node: id });
            }
        } else if roll < 0.47 && !self.net.is_partitioned() {
            let kind = self.rng.gen_range(0..100);
            let victim = members[self.rng.gen_range(0..members.len())];
            if kind < 35 {
                let rest: Vec<u64> = members.iter().copied().filter(|&x| x != victim).collect();
                self.net.split(&[victim], &rest);
            } else if kind < 55 {
                let leader = self.leader().unwrap_or(victim);
                let rest: Vec<u64> = members.iter().copied().filter(|&x| x != leader).collect();
                self.net.split(&[leader], &rest);
            } else if kind < 80 {
                let mut ids: Vec<u64> = members.clone();
                for i in (1..ids.len()).rev() {
                    let j = self.rng.gen_range(0..=i);
                    ids.swap(i, j);
                }
                let cut = self.rng.gen_range(1..ids.len());
                let (a, b) = ids.split_at(cut);
                self.net.split(a, b);
            } else {
                let other = next_of(&members, victim);
                self.net.block_one_way(victim, other);
            }
            self.report.partitions += 1;
            let desc = self.net.describe();
            self.log(|| format!("partition: {desc}"));
            let d = self.rng.gen_range(200_000..3_000_000);
            self.at(d, Ev::Heal);
        } else if roll < 0.59 && !up.is_empty() {
            let id = up[self.rng.gen_range(0..up.len())];
            let d = self.rng.gen_range(50_000..1_500_000);
            let now = self.now;
            let node = self.node(id);
            node.paused_until = node.paused_until.max(now + d);
            self.report.pauses += 1;
            self.log(|| format!("node {id} paused for {}ms", d / 1000));
        } else if roll < 0.64 && !up.is_empty() {
            let id = up[self.rng.gen_range(0..up.len())];
            let log = self.rng.gen_bool(0.5);
            let node = self.node(id);
            if log {
                node.log_dir.fail_next_sync();
            } else {
                node.state_disk.fail_next_sync();
            }
            self.log(|| format!("node {id}: next fsync of its {} fails", if log { "log" } else { "state" }));
        } else if roll < 0.67 && n >= 3 && self.replacing.is_none() && self.swap.is_none() && all_up {
            self.lose_data_dir();
        } else if roll < 0.71 && n >= 3 && self.replacing.is_none() && self.swap.is_none() && all_up {
            self.retire_follower();
        } else if roll < 0.74 {
            self.upgrade_one();
        }
        let d = self.chaos_delay();
        self.at(d, Ev::Chaos);
    }

    /// Faults stop, everything heals and restarts; clients finish what they started; the
    /// cluster must converge within the budget.
    fn settle(&mut self) {
        self.settling = true;
        self.net.heal();
        self.net.set_calm(true);
        let deadline = self.now + SETTLE_BUDGET_US;
        for id in self.members() {
            let node = self.node(id);
            node.paused_until = 0;
            node.log_dir.disarm();
            node.state_disk.disarm();
            self.start_node(id);
        }
        self.log(|| "settling".to_string());
        loop {
            if self.converged() {
                return;
            }
            if self.now > deadline || !self.step() {
                let pending: Vec<String> = self
                    .clients
                    .iter()
                    .filter_map(|c| c.op.as_ref().map(|op| format!("client {} op {:?}", c.id, op.kind)))
                    .collect();
                let status: Vec<String> = self
                    .nodes
                    .iter()
                    .filter_map(|n| n.core.as_ref().map(|c| format!("{:?}", c.status())))
                    .collect();
                self.ctx().fail(
                    None,
                    "liveness after healing",
                    format!(
                        "no convergence within {}s of healing: pending {pending:?}; members {status:?}",
                        SETTLE_BUDGET_US / 1_000_000
                    ),
                );
            }
        }
    }

    fn converged(&self) -> bool {
        if self.clients.iter().any(|c| c.op.is_some()) {
            return false;
        }
        // A swap is done, and every removed member stopped (a removed member that ran on
        // would still campaign and serve its clients).
        if self.swap.is_some() || self.nodes.iter().any(|n| self.gone.contains(&n.id) && n.core.is_some()) {
            return false;
        }
        let mut statuses = Vec::new();
        for n in self.nodes.iter().filter(|n| !self.gone.contains(&n.id)) {
            match &n.core {
                Some(c) => statuses.push(c.status()),
                None => return false,
            }
        }
        let Some(leader) = statuses.iter().find(|s| s.role == Role::Leader) else { return false };
        // Every member's start is recorded (proposed again after a loss: it may still be on its way).
        let members = || self.nodes.iter().filter(|n| !self.gone.contains(&n.id));
        if !members().all(|n| n.core.as_ref().is_some_and(|c| c.start_recorded())) {
            return false;
        }
        // A replaced or added member votes: it caught up and the leader promoted it.
        if !members().all(|n| n.core.as_ref().is_some_and(|c| c.conf_state().learners.is_empty())) {
            return false;
        }
        // The cluster version is the lowest build among the members: the leader raised it once
        // the last of them ran a later build (`server::upgrade`), and never past one.
        let lowest = members().map(|n| n.build).min().unwrap_or(fsm::COMMAND_VERSION);
        if statuses.iter().any(|s| s.cluster_version != lowest) {
            return false;
        }
        // Nothing any member proposed is still on its way: a compaction the leader proposed as it
        // applied a backlog (a new leader committing its predecessor's entries in one batch) is
        // part of what the cluster settles to, as the history's byte bound assumes.
        statuses.iter().all(|s| {
            s.term == leader.term
                && s.leader == leader.id
                && s.applied.index == leader.commit_index
                && s.commit_index == leader.commit_index
                && s.proposals_pending == 0
        })
    }

    fn finish(mut self) -> Report {
        let ctx = self.ctx();
        // A removed member that runs still (it has not heard of its removal) is no member.
        let up: Vec<(u64, &Core)> = (self.nodes.iter().filter(|n| !self.gone.contains(&n.id)))
            .filter_map(|n| n.core.as_ref().map(|c| (n.id, c)))
            .collect();
        invariants::check_final(ctx, &up, &self.history.acked, &self.history.written);
        invariants::check_members_recorded(ctx, &up, self.nodes.len() as u64, &self.gone);
        self.watch_checker.check_final(ctx);
        self.registry.check_final(ctx, &up);
        self.fences.check_final(ctx, &up);
        let lin = latch_check::linearizability::check(&self.history.shared);
        if !lin.is_linearizable() {
            ctx.fail(None, "linearizability (Wing–Gong–Lowe, per key)", format!("{lin}"));
        }
        let r = &mut self.report;
        r.shared_ops = lin.operations as u64;
        r.serial_reads = self.history.serial_reads;
        r.steps = self.step;
        r.virtual_us = self.now;
        r.trace_hash = self.trace.0;
        r.puts = self.history.puts_issued;
        r.acked = self.history.acked.len();
        r.reads = self.history.reads_done;
        r.retries = self.history.retries;
        r.hash_checks = self.checker.hash_checks;
        r.check_points = self.point_checker.compared;
        r.final_revision = up.first().map_or(0, |(_, c)| c.status().applied.revision);
        r.cluster_version = up.first().map_or(0, |(_, c)| c.status().cluster_version);
        r.grants = self.leases.grants;
        r.expiries = self.leases.expiries;
        r.closes = self.leases.closes();
        r.lock_grants = self.lock_checker.grants();
        r.lock_delays_ended = self.lock_checker.delays_ended;
        r.lock_expired_holds = self.lock_checker.expired_holds;
        r.lock_expiries_unplaced = self.lock_checker.expiries_unplaced;
        r.lock_closed_holds = self.lock_checker.closed_holds.len() as u64;
        r.lock_longest_queue = self.lock_checker.longest_queue as u64;
        r.lock_grants_after_expiry = self.lock_checker.regranted.len() as u64;
        r.lock_ids_spent = self.lock_checker.spent_ids();
        r.lock_queues_full = self.lockers.iter().map(|l| l.queues_full).sum();
        r.bound_puts = self.lockers.iter().map(|l| l.bound_puts).sum();
        r.sequential_puts = self.lockers.iter().map(|l| l.sequential_puts).sum();
        r.sequential_deletes = self.lockers.iter().map(|l| l.sequential_deletes).sum();
        r.lock_resends = self.resends;
        r.lock_withdrawals_resent = self.withdrawals_resent;
        r.lock_copies_remembered = self.lock_checker.copies_remembered;
        r.guarded_sent = self.fences.sent_count();
        r.guarded_succeeded = self.fences.succeeded;
        r.guarded_refused_session_ended = self.fences.refused_session_ended;
        r.guarded_refused_released = self.fences.refused_released;
        r.proclaims_succeeded = self.fences.proclaims_succeeded;
        r.proclaims_refused = self.fences.proclaims_refused;
        r.heartbeats = self.registry.beats;
        r.criticals = self.registry.criticals;
        r.reaps = self.registry.reaps;
        r.session_removals = self.registry.session_removals;
        r.watch_revisions = self.watch_checker.delivered;
        r.watch_typed = self.watch_checker.typed;
        r.watch_moves = self.watch_checker.moves;
        r.watch_compacted = self.watch_checker.compacted;
        r.compact_revision = self.watch_checker.compact_revision;
        r.history_bound = self.params.history_retention_bytes;
        if let Some(m) = invariants::check_history_bytes(ctx, &up, self.params.history_retention_bytes) {
            r.history_retained = m.retained;
            let core::Retention::Revisions(n) = self.params.history_retention else {
                unreachable!("the simulator draws a count retention")
            };
            r.byte_compacted = m.compact_revision > (r.final_revision - n as i64).max(0);
        }
        // The run is over: end every process the cheap way (see `crash`).
        let crashes = self.report.crashes;
        for id in 1..=self.nodes.len() as u64 {
            self.crash(id, "end of run");
        }
        self.report.crashes = crashes;
        self.report
    }
}

/// The member after `id` in `members`, round the end (the first if `id` is not among them).
fn next_of(members: &[u64], id: u64) -> u64 {
    match members.iter().position(|m| *m == id) {
        Some(i) => members[(i + 1) % members.len()],
        None => members[0],
    }
}

/// The peer address a member added at run time is added with (the simulator's network goes by
/// ids; the address is recorded in every member's state, and must be another's than any member's).
fn sim_peer_addr(member: u64) -> String {
    format!("sim-{member}:7380")
}

fn payload_of(op: &Op) -> Payload {
    match &op.kind {
        OpKind::Put { key, value, request_id, before } => Payload::Put {
            key: key.clone(),
            value: value.clone(),
            request_id: request_id.clone(),
            before: before.clone(),
        },
        OpKind::Read { key, before } => Payload::Read { key: key.clone(), before: before.clone() },
        OpKind::Shared { index, call, request_id } => {
            Payload::Shared { index: *index, call: call.clone(), request_id: request_id.clone() }
        }
        OpKind::SerialRead { key } => Payload::SerialRead { key: key.clone() },
    }
}

/// The sessions whose end a batch applied, each with whether its client closed it.
fn ended_sessions(p: &core::Progress) -> Vec<(String, bool)> {
    p.commands
        .iter()
        .flat_map(|a| a.sessions.iter().map(move |c| (a, c)))
        .filter_map(|(a, c)| match c {
            SessionChange::Ended { id } => Some((id.clone(), is_close(&a.request_id))),
            _ => None,
        })
        .collect()
}
