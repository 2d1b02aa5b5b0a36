//! A hand-driven cluster for scenarios that need one exact interleaving: the same sans-I/O
//! [`Core`] and simulated disks as the seeded runs, but the test decides, message by message,
//! what is delivered, dropped or held back, and when each member ticks, crashes or restarts.
//!
//! What it models: a round ([`Scripted::round`]) ticks every member that is up, gives each a turn
//! as the production driver does (`flush_reads`, then `handle_ready`, and its applier applies
//! what the turn handed out, at once), and then passes every message sent in that round through
//! the test's [`Route`] filter: delivered at once (in the
//! order sent), dropped, or held for the test to deliver later ([`Scripted::deliver_held`]).
//! A message to a member that is down is lost. A crash loses the member's unsynced writes.
//!
//! Invariants: nothing here draws randomness except the seeded election timeouts, and every
//! map is ordered, so a scenario runs the same way every time.

use std::collections::BTreeMap;
use std::sync::Arc;

use latch::core::{self, Action, Applier, Core, MemoryInbox, RequestError, Role, Timing, Waiter};
use latch::storage::Stores;
use latch_proto::internal::{Command, Outcome};
use raft::eraftpb::{Message, MessageType};

use crate::disk::{SimDir, SimDisk};

/// What the test's filter decides for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Deliver,
    Drop,
    Hold,
}

/// What a member answered a waiter.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Applied(Result<Outcome, RequestError>),
    ReadReady,
    ReadFailed(RequestError),
    /// A change of membership's answer: the index of its entry.
    Changed(Result<u64, RequestError>),
}

struct Member {
    log_dir: SimDir,
    state_disk: SimDisk,
    core: Option<Core>,
    applier: Option<Applier>,
    /// The snapshot inbox of the running process.
    inbox: Arc<MemoryInbox>,
}

pub struct Scripted {
    /// Members whose last turn failed (an injected fsync failure, say).
    failed: std::collections::BTreeSet<u64>,
    /// Members stopped by a message, and why.
    stopped: BTreeMap<u64, String>,
    /// Members whose data dir was restored from a copy or lost: the only ones that may stop
    /// for having forgotten entries they acknowledged (any other would be a false alarm).
    lost_data: std::collections::BTreeSet<u64>,
    members: Vec<Member>,
    /// How many members the cluster started with (`--initial-cluster`'s): members 1 to this.
    /// Later ones were added ([`Scripted::new_member`]).
    initial: u64,
    held: Vec<Message>,
    answers: BTreeMap<Waiter, (u64, Answer)>,
    next_waiter: Waiter,
    seed: u64,
    /// The members' `snapshot_entries` from their next start (the default when `None`).
    snapshot_entries: Option<u64>,
    /// The newest command version each member's build applies from its next start
    /// (`fsm::Bounds::newest_version`; this build's when not set).
    builds: BTreeMap<u64, u32>,
    logger: slog::Logger,
    /// Every check point every member hashed, in the order they did: (member, index, hash).
    pub points: Points,
}

pub type Points = Arc<std::sync::Mutex<Vec<(u64, u64, u64)>>>;

/// A member's hasher: hashes each check point's state at once, into [`Scripted::points`].
struct Recording {
    member: u64,
    points: Points,
}

impl latch::core::applier::PointHasher for Recording {
    fn hash(&self, index: u64, state: redb::ReadTransaction) {
        let hash = latch::fsm::checked_state_hash(&state).expect("the state hashes");
        self.points.lock().expect("the points are not poisoned").push((self.member, index, hash));
    }
}

pub const CLUSTER_ID: u64 = 0x5c71_97ed;

fn timing() -> Timing {
    Timing { election_tick: 10, heartbeat_tick: 2, ..Timing::default() }
}

impl Scripted {
    /// `n` members, all started.
    pub fn new(n: u64, seed: u64) -> Scripted {
        Scripted::started(n, seed, None)
    }

    /// `n` members whose logs are compacted every `snapshot_entries` entries, all started.
    pub fn with_snapshot_entries(n: u64, seed: u64, snapshot_entries: u64) -> Scripted {
        Scripted::started(n, seed, Some(snapshot_entries))
    }

    fn started(n: u64, seed: u64, snapshot_entries: Option<u64>) -> Scripted {
        let mut s = Scripted {
            failed: Default::default(),
            stopped: BTreeMap::new(),
            lost_data: Default::default(),
            members: (0..n)
                .map(|_| Member {
                    log_dir: SimDir::new(),
                    state_disk: SimDisk::new(),
                    core: None,
                    applier: None,
                    inbox: Arc::default(),
                })
                .collect(),
            initial: n,
            held: Vec::new(),
            answers: BTreeMap::new(),
            next_waiter: 0,
            seed,
            snapshot_entries,
            builds: BTreeMap::new(),
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            points: Arc::default(),
        };
        for id in 1..=n {
            s.start(id);
        }
        s
    }

    fn ids(&self) -> Vec<u64> {
        (1..=self.members.len() as u64).collect()
    }

    /// A new member under the next id, on an empty data dir, started: it knows only the
    /// members the cluster started with, as a member started with their `--initial-cluster`.
    pub fn new_member(&mut self) -> u64 {
        self.members.push(Member {
            log_dir: SimDir::new(),
            state_disk: SimDisk::new(),
            core: None,
            applier: None,
            inbox: Arc::default(),
        });
        let id = self.members.len() as u64;
        self.start(id);
        id
    }

    fn member(&mut self, id: u64) -> &mut Member {
        &mut self.members[(id - 1) as usize]
    }

    /// The core of a member that is up.
    pub fn core(&mut self, id: u64) -> &mut Core {
        self.member(id).core.as_mut().unwrap_or_else(|| panic!("member {id} is down"))
    }

    /// Starts member `id` from what its disk holds.
    pub fn start(&mut self, id: u64) {
        self.try_start(id).unwrap_or_else(|e| panic!("member {id} cannot start: {e}"));
    }

    /// Starts member `id` from what its disk holds, or says why it cannot.
    pub fn try_start(&mut self, id: u64) -> Result<(), String> {
        let voters: Vec<u64> = (1..=self.initial).collect();
        self.seed += 1;
        let (seed, logger, snapshot_entries) = (self.seed, self.logger.clone(), self.snapshot_entries);
        let newest_version = self.builds.get(&id).copied().unwrap_or(latch::fsm::COMMAND_VERSION);
        let recording = Arc::new(Recording { member: id, points: self.points.clone() });
        self.failed.remove(&id);
        // A new life: why the last one stopped no longer says anything of it.
        self.stopped.remove(&id);
        let m = self.member(id);
        assert!(m.core.is_none(), "member {id} is already up");
        let (state, state_syncs) = latch::storage::open_with_backend(
            m.state_disk.open(),
            latch::storage::Identity { cluster_id: CLUSTER_ID, member_id: id },
            latch::config::STATE_CACHE_BYTES,
        )
        .map_err(|e| e.to_string())?;
        let stores = Stores { log: Box::new(m.log_dir.open()), state, state_syncs };
        let defaults = core::Config::new(id, &voters, seed);
        let config = core::Config {
            timing: timing(),
            bounds: latch::fsm::Bounds { newest_version, ..defaults.bounds },
            log_segment_bytes: 64 * 1024,
            snapshot_entries: snapshot_entries.unwrap_or(defaults.snapshot_entries),
            ..defaults
        };
        m.inbox = Arc::new(MemoryInbox::default());
        let identity = latch::storage::Identity { cluster_id: CLUSTER_ID, member_id: id };
        let (mut core, applier) =
            Core::new(config, identity, stores, m.inbox.clone(), &logger).map_err(|e| e.to_string())?;
        core.seed_election_timeouts(seed);
        m.core = Some(core);
        // A log compacted that often needs a state made durable as often (it is never compacted
        // past the durable applied index): every apply is, its fsync waited for (`turn`).
        let applier = applier.hashing_points(recording);
        m.applier = Some(if snapshot_entries.is_some() { applier.sync_every(1) } else { applier });
        Ok(())
    }

    /// Member `id` runs a build that applies command versions up to `version` from its next
    /// start (a build of an earlier version, as far as the versions it applies go).
    pub fn set_build(&mut self, id: u64, version: u32) {
        self.builds.insert(id, version);
    }

    /// The next fsync of member `id`'s raft log fails.
    pub fn fail_next_log_sync(&mut self, id: u64) {
        self.member(id).log_dir.fail_next_sync();
    }

    /// The fsync of member `id`'s raft log after the next `ok` fails.
    pub fn fail_log_sync_after(&mut self, id: u64, ok: u32) {
        self.member(id).log_dir.fail_sync_after(ok);
    }

    /// Whether a turn of member `id` failed since it started.
    pub fn failed(&self, id: u64) -> bool {
        self.failed.contains(&id)
    }

    /// Member `id`'s process dies: its unsynced writes are lost, its waiters never hear back.
    pub fn crash(&mut self, id: u64) {
        let m = self.member(id);
        // Nothing unsynced survives: a scripted crash is exact.
        m.log_dir.crash(None);
        m.state_disk.crash(None);
        m.applier = None;
        if let Some(core) = m.core.take() {
            if let Ok(txn) = core.state_db().begin_write() {
                let _ = txn.commit();
            }
        }
    }

    /// A copy of member `id`'s data dir (a backup, taken while it is down).
    pub fn copy_data(&mut self, id: u64) -> (SimDir, SimDisk) {
        let m = self.member(id);
        assert!(m.core.is_none(), "member {id} is up: crash it first");
        (m.log_dir.copy(), m.state_disk.copy())
    }

    /// Member `id`'s data dir is replaced by `copy` (a backup restored): its next start is on it.
    pub fn restore_data(&mut self, id: u64, (log_dir, state_disk): (SimDir, SimDisk)) {
        let m = self.member(id);
        assert!(m.core.is_none(), "member {id} is up: crash it first");
        (m.log_dir, m.state_disk) = (log_dir, state_disk);
        self.lost_data.insert(id);
    }

    /// Why member `id` stopped, if it did: on a message that shows it forgot entries it
    /// acknowledged, or on applying its own removal.
    pub fn why_stopped(&self, id: u64) -> Option<&str> {
        self.stopped.get(&id).map(String::as_str)
    }

    /// Member `id`'s data dir is lost (a replaced disk): its next start is on empty disks.
    pub fn wipe(&mut self, id: u64) {
        let m = self.member(id);
        assert!(m.core.is_none(), "member {id} is up: crash it first");
        m.log_dir = SimDir::new();
        m.state_disk = SimDisk::new();
        self.lost_data.insert(id);
    }

    /// A fresh waiter, for a request the test hands a core itself.
    pub fn next_waiter(&mut self) -> Waiter {
        self.next_waiter += 1;
        self.next_waiter
    }

    /// Asks member `id` for a serializable read; its answer is `Answer::ReadReady` once the
    /// member may serve one (at once, unless it restarted and has not caught up yet).
    pub fn read_serializable(&mut self, id: u64) -> Waiter {
        let w = self.next_waiter();
        self.core(id).read_caught_up(w);
        w
    }

    /// The snapshot inbox of member `id`'s running process.
    pub fn inbox(&self, id: u64) -> &Arc<MemoryInbox> {
        &self.members[(id - 1) as usize].inbox
    }

    /// Steps a message into member `id` and gives it a turn.
    pub fn step(&mut self, id: u64, msg: Message) {
        self.deliver(msg);
        let mut sent = Vec::new();
        self.turn(id, &mut sent);
        self.held.extend(sent);
    }

    /// Proposes `cmd` on member `id`; its answer is kept under the returned waiter.
    pub fn propose(&mut self, id: u64, cmd: Command) -> Waiter {
        self.next_waiter += 1;
        let w = self.next_waiter;
        self.core(id).propose(w, cmd);
        w
    }

    /// Asks member `id`, leading, to remove `member` from the cluster (`core::membership`).
    pub fn remove(&mut self, id: u64, member: u64) -> Waiter {
        let w = self.next_waiter();
        self.core(id).remove(w, member);
        w
    }

    /// Asks member `id`, leading, to add `member` at peer address `addr` (`core::membership`).
    pub fn add(&mut self, id: u64, member: u64, addr: &str) -> Waiter {
        let w = self.next_waiter();
        self.core(id).add(w, member, addr);
        w
    }

    /// Asks member `id`, leading, to make voter `member` a learner (`core::membership`).
    pub fn replace(&mut self, id: u64, member: u64) -> Waiter {
        let w = self.next_waiter();
        self.core(id).replace(w, member);
        w
    }

    /// Asks member `id` for a linearizable read.
    pub fn read(&mut self, id: u64) -> Waiter {
        self.next_waiter += 1;
        let w = self.next_waiter;
        self.core(id).read_index(w);
        w
    }

    /// The answer to a waiter, if it came.
    pub fn answer(&self, w: Waiter) -> Option<&Answer> {
        self.answers.get(&w).map(|(_, a)| a)
    }

    /// The leader every up member agrees on, if any.
    pub fn leader(&self) -> Option<u64> {
        let up: Vec<_> = self.members.iter().filter_map(|m| m.core.as_ref()).map(|c| c.status()).collect();
        let leader = up.iter().find(|s| s.role == Role::Leader)?;
        up.iter().all(|s| s.leader == leader.id && s.term == leader.term).then_some(leader.id)
    }

    /// One round: every member ticks and takes a turn; the messages sent go through `route`.
    pub fn round(&mut self, route: &mut dyn FnMut(&Message) -> Route) {
        let mut sent = Vec::new();
        for id in self.ids() {
            let Some(core) = self.member(id).core.as_mut() else { continue };
            core.tick();
            core.flush_reads();
            self.turn(id, &mut sent);
        }
        for msg in sent {
            match route(&msg) {
                Route::Deliver => self.deliver(msg),
                Route::Drop => {}
                Route::Hold => self.held.push(msg),
            }
        }
    }

    /// Rounds until `done` holds; panics after `max` rounds naming `what`.
    pub fn until(
        &mut self,
        what: &str,
        max: usize,
        route: &mut dyn FnMut(&Message) -> Route,
        done: &mut dyn FnMut(&mut Scripted) -> bool,
    ) {
        for _ in 0..max {
            if done(self) {
                return;
            }
            self.round(route);
        }
        assert!(done(self), "expected {what} within {max} rounds");
    }

    /// Messages held so far of type `t` to member `to`.
    pub fn held(&self, t: MessageType, to: u64) -> usize {
        self.held.iter().filter(|m| m.get_msg_type() == t && m.to == to).count()
    }

    /// Delivers the snapshot held for member `to` as the transports would: streamed from its
    /// sender (at the index it was prepared at), staged in `to`'s inbox, stepped, and reported
    /// to the sender as delivered; then gives `to` a turn. Returns its index.
    pub fn deliver_held_snapshot(&mut self, to: u64) -> u64 {
        let at = self.held.iter().position(|m| core::is_snapshot(m) && m.to == to);
        let mut msg = self.held.remove(at.unwrap_or_else(|| panic!("no snapshot held for member {to}")));
        let from = msg.from;
        let token = msg.get_snapshot().data.to_vec();
        let meta = msg.get_snapshot().get_metadata().clone();
        let snapshots = self.core(from).snapshots().clone();
        let mut stream = Vec::new();
        snapshots
            .stream(&token, &mut |frame: Vec<u8>| -> Result<(), core::SnapshotError> {
                stream.extend(frame);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("member {from}: the snapshot streams: {e}"));
        snapshots.finish(&token);
        let (mut w, staged) = core::Inbox::create(&**self.inbox(to), from, meta.index, meta.term)
            .unwrap_or_else(|e| panic!("member {to}: the snapshot is staged: {e}"));
        std::io::Write::write_all(&mut w, &stream).unwrap_or_else(|e| panic!("member {to}: staged: {e}"));
        drop(w);
        msg.mut_snapshot().data = staged.into();
        self.deliver(msg);
        self.core(from).report_snapshot(to, true);
        let mut sent = Vec::new();
        self.turn(to, &mut sent);
        self.held.extend(sent);
        meta.index
    }

    /// Delivers the held messages of type `t` to member `to`, then gives it a turn.
    pub fn deliver_held(&mut self, t: MessageType, to: u64) {
        let (now, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.held).into_iter().partition(|m| m.get_msg_type() == t && m.to == to);
        self.held = later;
        for msg in now {
            self.deliver(msg);
        }
        let mut sent = Vec::new();
        self.turn(to, &mut sent);
        self.held.extend(sent);
    }

    /// Member `id`'s turn: `handle_ready`, then its applier applies what was handed out.
    fn turn(&mut self, id: u64, sent: &mut Vec<Message>) {
        let durable_applies = self.snapshot_entries.is_some();
        let m = self.member(id);
        let (Some(core), Some(applier)) = (m.core.as_mut(), m.applier.as_mut()) else { return };
        let mut install =
            |token: &[u8], index: u64, term: u64, conf: &[u8]| applier.install(token, index, term, conf);
        let mut actions = match core.handle_ready(&mut |msgs| sent.extend(msgs), &mut (), &mut install) {
            Ok(actions) => actions,
            Err(_) if m.log_dir.take_failed_sync() => {
                // Died of the injected failure: the test crashes it.
                self.failed.insert(id);
                return;
            }
            Err(
                e @ (latch::core::CoreError::Removed { .. } | latch::core::CoreError::ClusterAhead { .. }),
            ) => {
                // It stops, as the node does.
                self.stopped.insert(id, e.to_string());
                self.crash(id);
                return;
            }
            Err(e) => panic!("member {id}: handle_ready failed: {e}"),
        };
        let mut applied = Vec::new();
        for a in std::mem::take(&mut actions) {
            match a {
                Action::Apply { entries } => {
                    let progress = match applier.apply(entries, &mut ()) {
                        Ok(progress) => progress,
                        Err(e @ latch::core::CoreError::Fsm(latch::fsm::FsmError::NewerVersion { .. })) => {
                            // A command its build cannot apply: it stops, as the node does.
                            self.stopped.insert(id, e.to_string());
                            self.crash(id);
                            return;
                        }
                        Err(e) => panic!("member {id}: apply failed: {e}"),
                    };
                    applied.extend(core.on_applied(progress));
                    if durable_applies {
                        // Its fsync waited for, as `sync_every(1)` meant before fsyncs ran behind.
                        let synced =
                            applier.sync().unwrap_or_else(|e| panic!("member {id}: sync failed: {e}"));
                        applied.extend(synced.map(|p| core.on_applied(p)).unwrap_or_default());
                    }
                }
                other => actions.push(other),
            }
        }
        actions.extend(applied);
        self.record(id, actions);
    }

    fn deliver(&mut self, msg: Message) {
        let to = msg.to;
        if to > self.members.len() as u64 {
            return; // added, and not started yet: nobody listens there
        }
        if let Some(core) = self.member(to).core.as_mut() {
            match core.step(msg) {
                Ok(()) => {}
                Err(e @ latch::core::CoreError::ForgotEntries { .. }) => {
                    assert!(
                        self.lost_data.contains(&to),
                        "member {to} stopped for forgetting entries, though its data dir was never \
                         restored or lost: {e}"
                    );
                    self.stopped.insert(to, e.to_string());
                    self.crash(to);
                }
                Err(e) => panic!("member {to}: step failed: {e}"),
            }
        }
    }

    fn record(&mut self, id: u64, actions: Vec<Action>) {
        for a in actions {
            let (w, answer) = match a {
                Action::Reply { waiter, result } => (waiter, Answer::Applied(result)),
                Action::ReadReady { waiter } => (waiter, Answer::ReadReady),
                Action::ReadFailed { waiter, error } => (waiter, Answer::ReadFailed(error)),
                Action::Changed { waiter, result } => (waiter, Answer::Changed(result)),
                Action::Applied { .. }
                | Action::Restored { .. }
                | Action::Apply { .. }
                | Action::KeptAlive { .. }
                | Action::LocksChanged { .. }
                | Action::Membership(_) => continue,
            };
            self.answers.insert(w, (id, answer));
        }
    }
}

/// Delivers every message.
pub fn all(_: &Message) -> Route {
    Route::Deliver
}

impl Scripted {
    /// The messages held so far.
    pub fn held_messages(&self) -> &[Message] {
        &self.held
    }

    /// Drops the snapshots held for member `to`, each reported failed to its sender, as the
    /// transport does with a snapshot it could not send (a snapshot dropped by a
    /// route is never reported, and raft-rs then leaves the sender's progress of `to` in its
    /// Snapshot state for good).
    pub fn fail_held_snapshots(&mut self, to: u64) {
        let (snaps, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.held).into_iter().partition(|m| core::is_snapshot(m) && m.to == to);
        self.held = rest;
        for m in snaps {
            if let Some(c) = self.member(m.from).core.as_mut() {
                c.snapshots().finish(&m.get_snapshot().data);
                c.report_snapshot(to, false);
            }
        }
    }
}
