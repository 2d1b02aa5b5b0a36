//! The safety properties the simulator checks, one function each, over the members that are up
//! (their `Core`, raft log and redb state) and the clients' history.
//!
//! Checked as members send: [`Checker::vote_sent`]: a member grants its vote in a term to one
//! candidate, over the whole run, crashes and restarts included (the vote is fsynced before it
//! leaves; a member that forgot it could elect two leaders in one term).
//!
//! Checked after every step ([`Checker::after_step`]):
//! - [`Checker::one_leader_per_term`]: over the whole run, at most one member is leader in a term.
//! - [`Checker::never_backwards`]: a member's term and durable applied index never decrease,
//!   across crashes and restarts included (they are fsynced before anything depends on them);
//!   its applied index and store revision never decrease within one life (a crash may take the
//!   state's latest, not yet durable, commits: the log replays them — what users see is checked
//!   by [`Checker::serializable_read`]).
//! - [`Checker::committed_entries_agree`]: an entry at or below a member's commit index is
//!   committed: every member holds the same entry (term, type and data) at such an index once
//!   its own commit index reaches it.
//! - [`Checker::leader_has_committed_entries`]: a member that becomes leader of term L holds every
//!   entry known to be committed in a term below L (leader completeness: a leader of an older
//!   term — a candidate that slept through later elections, say — may lack it).
//! - [`Checker::log_well_formed`]: terms never decrease along a member's log, and every entry
//!   of it reads back (from memory or from its segment file) at its index with its term.
//! - [`Checker::log_matching`]: for any two members, within a window below the highest index both
//!   logs hold: if both hold the same term at an index, they hold the same entries at every
//!   lower index of the window.
//! - [`Checker::equal_state_at_equal_index`]: two members (or one member at two times) at the
//!   same applied index have the same `fsm::state_hash` (recorded at checkpoint indexes,
//!   compared whenever a member reaches one); a member's in-memory applied position is the one
//!   stored in redb.
//!
//! Checked as client events happen (keys are written once, so linearizability per key reduces to
//! real-time order): [`check_put_reply`] (every successful reply to one request id carries the
//! same revision, above every revision completed before the put was issued), [`check_read`] (a
//! read reflects every operation completed before it was issued: no older revision, no missing
//! write that was acknowledged or already read, no value nobody wrote). At the end:
//! [`check_final`] (every acknowledged write is on every member with its value and revision,
//! every key was applied once, all members converge), [`check_members_recorded`] (every
//! member's start is recorded in every member's state, which `server::admission` relies on).
//!
//! A violation panics with the seed, the step, the member and what was expected, and the
//! command that replays it.

use std::collections::{BTreeMap, BTreeSet};

use latch::core::{Core, Role};
use latch::fsm;
use latch::fsm::Event;
use latch_proto::internal::{KeyValue, Range};
use raft::eraftpb::{Entry, Message, MessageType};
use raft::{GetEntriesContext, Storage};
use redb::ReadableDatabase as _;

/// A state hash is recorded at every this-many-th applied index in a chaos run (see
/// [`Checker::equal_state_at_equal_index`]).
pub const HASH_EVERY: u64 = 4;
/// The same in a leader-change run. Those runs last 8 times as long with a busy log, and the
/// whole state (about 2,000 remembered requests by its end) is hashed at each checkpoint on
/// each member: at every 4th index, hashing took half their time. A divergence stays until
/// overwritten, and the final convergence check compares every member's whole state.
pub const HASH_EVERY_LEADER_CHANGES: u64 = 16;
/// How far below the highest common index [`Checker::log_matching`] looks.
const LOG_WINDOW: u64 = 12;

/// FNV-1a, 64 bit: digests of entries and the trace.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn u64(&mut self, n: u64) {
        self.write(&n.to_le_bytes());
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.write(b);
    }
}

/// Where a check runs, for failure messages.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub seed: u64,
    pub step: u64,
    pub time_us: u64,
}

impl Ctx {
    /// Fails the run: names the seed, step, member and what was expected, and how to replay.
    #[track_caller]
    pub fn fail(&self, node: Option<u64>, invariant: &str, what: String) -> ! {
        let who = match node {
            Some(n) => format!("node {n}"),
            None => "cluster".to_string(),
        };
        panic!(
            "\nsimulation invariant violated: {invariant}\n  seed {seed}, step {step}, t={t:.3}s, {who}: {what}\n  \
             replay: LATCH_SIM_SEED={seed} cargo test --test sim -- --nocapture\n",
            seed = self.seed,
            step = self.step,
            t = self.time_us as f64 / 1e6,
        )
    }
}

/// What identifies an entry: equal digests ⇔ equal entries (up to hash collisions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryDigest {
    pub term: u64,
    pub hash: u64,
}

/// The entries of a map just below and just above a key.
pub type Neighbours<K, V> = (Option<(K, V)>, Option<(K, V)>);

/// The neighbours of `(key, value)` in `map` when putting it there would break the order of the
/// values along the keys (they never decrease); `None` when it keeps the order.
pub fn out_of_order<K: Ord + Copy, V: Ord + Copy>(
    map: &BTreeMap<K, V>,
    key: K,
    value: V,
) -> Option<Neighbours<K, V>> {
    use std::ops::Bound::{Excluded, Unbounded};
    let before = map.range(..key).next_back().map(|(k, v)| (*k, *v));
    let after = map.range((Excluded(key), Unbounded)).next().map(|(k, v)| (*k, *v));
    (before.is_some_and(|(_, v)| v > value) || after.is_some_and(|(_, v)| v < value))
        .then_some((before, after))
}

pub fn digest(e: &Entry) -> EntryDigest {
    let mut h = Fnv::default();
    h.u64(e.get_entry_type() as u64);
    h.u64(e.term);
    h.bytes(&e.data[..]);
    h.bytes(&e.context[..]);
    EntryDigest { term: e.term, hash: h.0 }
}

/// The entries `lo..=hi` a member's log holds (empty if it holds none of them).
fn entries(core: &Core, lo: u64, hi: u64) -> Vec<Entry> {
    let log = core.log();
    let first = log.first_index().unwrap_or(u64::MAX);
    let last = log.last_index().unwrap_or(0);
    let (lo, hi) = (lo.max(first), hi.min(last));
    if lo > hi {
        return Vec::new();
    }
    log.entries(lo, hi + 1, None, GetEntriesContext::empty(false)).unwrap_or_default()
}

/// A member's log shape, to skip re-checking pairs whose logs did not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct LogShape {
    first: u64,
    last: u64,
    last_term: u64,
}

fn shape(core: &Core) -> LogShape {
    let log = core.log();
    let first = log.first_index().unwrap_or(0);
    let last = log.last_index().unwrap_or(0);
    LogShape { first, last, last_term: log.term(last).unwrap_or(0) }
}

/// What was last seen of a member (kept across its crashes).
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    term: u64,
    applied_index: u64,
    revision: i64,
    /// Entries up to here were compared with `committed`.
    committed_checked: u64,
    /// Applied index at which the state hash was last taken (None: not since the restart).
    hashed_at: Option<u64>,
    /// Snapshots installed (per the core) when the state hash was last taken.
    snapshots: u64,
    /// Term in which it was last seen as leader.
    leader_in: Option<u64>,
    /// Revision of the last applied events seen.
    event_revision: i64,
    /// Revision of the last serializable read served.
    serial_revision: i64,
    /// The durable applied index last seen.
    durable_index: u64,
    /// The highest applied index seen while the member was caught up (serving serializable
    /// reads), in any life: a caught-up member is never behind it.
    caught_up_index: u64,
}

#[derive(Debug)]
pub struct Checker {
    leaders: BTreeMap<u64, u64>,
    /// (member, term) → the candidate it granted its vote in that term.
    votes: BTreeMap<(u64, u64), u64>,
    seen: BTreeMap<u64, Seen>,
    /// Every entry known committed (at or below some member's applied index), by index: its
    /// digest, the member it was first seen committed on, and the lowest term of a member seen
    /// holding it committed (at least the term it was committed in).
    committed: BTreeMap<u64, (EntryDigest, u64, u64)>,
    /// State hash by applied index, with the member it was first seen on.
    hashes: BTreeMap<u64, (u64, u64)>,
    shapes: BTreeMap<(u64, u64), (LogShape, LogShape)>,
    own_shapes: BTreeMap<u64, LogShape>,
    /// Number of state hashes compared, for the report.
    pub hash_checks: u64,
    /// Record a state hash at every this-many-th applied index.
    hash_every: u64,
}

impl Checker {
    pub fn new(hash_every: u64) -> Checker {
        Checker {
            leaders: BTreeMap::new(),
            votes: BTreeMap::new(),
            seen: BTreeMap::new(),
            committed: BTreeMap::new(),
            hashes: BTreeMap::new(),
            shapes: BTreeMap::new(),
            own_shapes: BTreeMap::new(),
            hash_checks: 0,
            hash_every,
        }
    }

    /// Runs every per-step check over the members that are up, in id order.
    pub fn after_step(&mut self, ctx: Ctx, up: &[(u64, &Core)]) {
        self.one_leader_per_term(ctx, up);
        self.never_backwards(ctx, up);
        self.committed_entries_agree(ctx, up);
        self.leader_has_committed_entries(ctx, up);
        self.log_well_formed(ctx, up);
        self.log_matching(ctx, up);
        self.equal_state_at_equal_index(ctx, up);
    }

    /// A message member `from` sends: a granted vote is its only one in its term.
    pub fn vote_sent(&mut self, ctx: Ctx, from: u64, msg: &Message) {
        if msg.get_msg_type() != MessageType::MsgRequestVoteResponse || msg.reject {
            return;
        }
        let first = *self.votes.entry((from, msg.term)).or_insert(msg.to);
        if first != msg.to {
            ctx.fail(
                Some(from),
                "one vote per member per term",
                format!(
                    "granted its vote in term {} to node {}, after granting it to node {first}",
                    msg.term, msg.to
                ),
            );
        }
    }

    /// Election safety: at most one leader per term, over the whole run.
    pub fn one_leader_per_term(&mut self, ctx: Ctx, up: &[(u64, &Core)]) {
        for &(id, core) in up {
            let s = core.status();
            if s.role != Role::Leader {
                continue;
            }
            let first = *self.leaders.entry(s.term).or_insert(id);
            if first != id {
                ctx.fail(
                    Some(id),
                    "one leader per term",
                    format!("is leader in term {}, but node {first} was leader in that term too", s.term),
                );
            }
        }
    }

    /// Term, applied index and revision never go backwards on a member, crashes included; the
    /// in-memory applied position equals the stored one.
    pub fn never_backwards(&mut self, ctx: Ctx, up: &[(u64, &Core)]) {
        for &(id, core) in up {
            let s = core.status();
            let seen = self.seen.entry(id).or_default();
            if s.term < seen.term {
                ctx.fail(
                    Some(id),
                    "term never decreases",
                    format!("term {} after term {}", s.term, seen.term),
                );
            }
            if s.applied.index < seen.applied_index {
                ctx.fail(
                    Some(id),
                    "applied index never decreases within a life",
                    format!("applied index {} after {}", s.applied.index, seen.applied_index),
                );
            }
            if s.applied.revision < seen.revision {
                ctx.fail(
                    Some(id),
                    "revision never decreases within a life",
                    format!("revision {} after {}", s.applied.revision, seen.revision),
                );
            }
            if s.caught_up {
                if s.applied.index < seen.caught_up_index {
                    ctx.fail(
                        Some(id),
                        "a caught-up member is never behind what it served before",
                        format!(
                            "caught up at applied index {}, after serving up to {} (in this or an earlier life)",
                            s.applied.index, seen.caught_up_index
                        ),
                    );
                }
                seen.caught_up_index = s.applied.index;
            }
            if s.durable_index < seen.durable_index {
                ctx.fail(
                    Some(id),
                    "durable applied index never decreases",
                    format!(
                        "durable applied index {} after {} (lost across a crash?)",
                        s.durable_index, seen.durable_index
                    ),
                );
            }
            if s.compacted_index > s.durable_index {
                ctx.fail(
                    Some(id),
                    "compaction never passes the durable applied index",
                    format!(
                        "log compacted to {} but the state is durable only to {}",
                        s.compacted_index, s.durable_index
                    ),
                );
            }
            seen.term = s.term;
            seen.applied_index = s.applied.index;
            seen.revision = s.applied.revision;
            seen.durable_index = s.durable_index;
        }
    }

    /// State machine safety: entries at or below a commit index are the same everywhere.
    pub fn committed_entries_agree(&mut self, ctx: Ctx, up: &[(u64, &Core)]) {
        for &(id, core) in up {
            let s = core.status();
            // Entries up to the commit index are committed; the log may not hold all of them yet.
            let upto = s.commit_index.max(s.applied.index).min(shape(core).last);
            let seen = self.seen.entry(id).or_default();
            let from = seen.committed_checked + 1;
            if upto < from {
                continue;
            }
            for e in entries(core, from, upto) {
                let d = digest(&e);
                match self.committed.get_mut(&e.index) {
                    Some(&mut (known, on, _)) if known != d => ctx.fail(
                        Some(id),
                        "committed entries agree",
                        format!(
                            "committed entry {} is {:?}, but node {on} committed {:?} there",
                            e.index, d, known
                        ),
                    ),
                    Some((_, _, term)) => *term = (*term).min(s.term),
                    None => {
                        self.committed.insert(e.index, (d, id, s.term));
                    }
                }
            }
            seen.committed_checked = upto;
        }
    }

    /// Leader completeness: a new leader's log holds every entry known to be committed.
    pub fn leader_has_committed_entries(&mut self, ctx: Ctx, up: &[(u64, &Core)]) {
        for &(id, core) in up {
            let s = core.status();
            let seen = self.seen.entry(id).or_default();
            if s.role != Role::Leader || seen.leader_in == Some(s.term) {
                continue;
            }
            seen.leader_in = Some(s.term);
            // Only entries committed in a lower term must be in this leader's log.
            let owed = self.committed.iter().filter(|(_, &(_, _, term))| term < s.term).map(|(&i, _)| i);
            let Some(max_committed) = owed.max() else { continue };
            let sh = shape(core);
            if sh.last < max_committed {
                ctx.fail(
                    Some(id),
                    "leader completeness",
                    format!(
                        "became leader of term {} with log ending at {}, but entry {max_committed} is committed",
                        s.term, sh.last
                    ),
                );
            }
            for e in entries(core, sh.first, max_committed) {
                if let Some(&(known, on, term)) = self.committed.get(&e.index) {
                    if term < s.term && known != digest(&e) {
                        ctx.fail(
                            Some(id),
                            "leader completeness",
                            format!(
                                "leader of term {} holds {:?} at {}, but node {on} applied {:?}",
                                s.term,
                                digest(&e),
                                e.index,
                                known
                            ),
                        );
                    }
                }
            }
        }
    }

    /// A member's log is well formed: terms never decrease along it, and the stored log (the
    /// `raft_log` table) holds exactly the indexes its in-memory mirror holds. Checked when the
    /// log's shape changes: the top window, or the whole log after a restart.
    pub fn log_well_formed(&mut self, ctx: Ctx, up: &[(u64, &Core)]) {
        for &(id, core) in up {
            let sh = shape(core);
            let previous = self.own_shapes.insert(id, sh);
            if previous == Some(sh) {
                continue;
            }
            let log = core.log();
            let lo = if previous.is_none() {
                sh.first - 1
            } else {
                (sh.first - 1).max(sh.last.saturating_sub(LOG_WINDOW))
            };
            let mut prev_term = 0;
            for idx in lo..=sh.last {
                let Ok(t) = log.term(idx) else {
                    ctx.fail(
                        Some(id),
                        "log well formed",
                        format!("no term at index {idx}, inside its log {}..={}", sh.first, sh.last),
                    )
                };
                if t < prev_term {
                    ctx.fail(
                        Some(id),
                        "log well formed",
                        format!(
                            "term {t} at index {idx} follows term {prev_term} (log {}..={})",
                            sh.first, sh.last
                        ),
                    );
                }
                prev_term = t;
            }
            // Every entry of the window reads back (from memory, or from its segment file),
            // at its index, with the term the log says.
            let from = lo.max(sh.first);
            if from <= sh.last {
                let read = log.entries(from, sh.last + 1, None, GetEntriesContext::empty(false));
                let read = read.unwrap_or_else(|e| {
                    ctx.fail(Some(id), "stored log is the log", format!("entries {from}..={}: {e}", sh.last))
                });
                for (i, e) in read.iter().enumerate() {
                    let idx = from + i as u64;
                    if e.index != idx || log.term(idx).ok() != Some(e.term) {
                        ctx.fail(
                            Some(id),
                            "stored log is the log",
                            format!("entry {idx} reads back as index {} term {}", e.index, e.term),
                        );
                    }
                }
                if read.len() as u64 != sh.last + 1 - from {
                    ctx.fail(
                        Some(id),
                        "stored log is the log",
                        format!("{} of entries {from}..={} read back", read.len(), sh.last),
                    );
                }
            }
        }
    }

    /// Log matching, within a window below the highest index two logs both hold.
    pub fn log_matching(&mut self, ctx: Ctx, up: &[(u64, &Core)]) {
        for (i, &(a, ca)) in up.iter().enumerate() {
            for &(b, cb) in &up[i + 1..] {
                let (sa, sb) = (shape(ca), shape(cb));
                if self.shapes.get(&(a, b)) == Some(&(sa, sb)) {
                    continue;
                }
                self.shapes.insert((a, b), (sa, sb));
                let (la, lb) = (ca.log(), cb.log());
                // `term` also answers at the compaction point (first - 1).
                let lo = (sa.first - 1).max(sb.first - 1);
                let hi = sa.last.min(sb.last);
                if hi < lo {
                    continue;
                }
                let floor = lo.max(hi.saturating_sub(LOG_WINDOW));
                let mut top = None;
                for idx in (floor..=hi).rev() {
                    if la.term(idx).ok() == lb.term(idx).ok() {
                        top = Some(idx);
                        break;
                    }
                }
                let Some(top) = top else { continue };
                let ea = entries(ca, floor, top);
                let eb = entries(cb, floor, top);
                for idx in floor..=top {
                    let (ta, tb) = (la.term(idx).ok(), lb.term(idx).ok());
                    if ta != tb {
                        ctx.fail(
                            Some(a),
                            "log matching",
                            format!(
                                "node {a} and node {b} hold term {top_t:?} at index {top}, but at index {idx} \
                                 node {a} holds term {ta:?} and node {b} term {tb:?}",
                                top_t = la.term(top).ok()
                            ),
                        );
                    }
                }
                for x in &ea {
                    if let Some(y) = eb.iter().find(|y| y.index == x.index) {
                        if digest(x) != digest(y) {
                            ctx.fail(
                                Some(a),
                                "log matching",
                                format!(
                                    "node {a} and node {b} agree on terms up to {top} but differ at index {}: \
                                     {:?} vs {:?}",
                                    x.index,
                                    digest(x),
                                    digest(y)
                                ),
                            );
                        }
                    }
                }
            }
        }
    }

    /// Equal applied index ⇒ equal state hash, across members and across time. Also: the
    /// in-memory applied position is the one stored in redb (read in the same transaction).
    ///
    /// Hashing the whole state is the costliest check, so a member's hash is *recorded* only at
    /// checkpoints (every `hash_every`th index, the first state after a restart or a snapshot
    /// install), and *compared* whenever a member's applied index is one recorded before.
    pub fn equal_state_at_equal_index(&mut self, ctx: Ctx, up: &[(u64, &Core)]) {
        for &(id, core) in up {
            let status = core.status();
            let applied = status.applied.index;
            let seen = self.seen.entry(id).or_default();
            let snapshots = status.snapshots_installed;
            if seen.hashed_at == Some(applied) {
                continue;
            }
            let recorded = self.hashes.get(&applied).copied();
            let checkpoint =
                applied % self.hash_every == 0 || seen.hashed_at.is_none() || seen.snapshots != snapshots;
            if recorded.is_none() && !checkpoint {
                continue;
            }
            seen.hashed_at = Some(applied);
            seen.snapshots = snapshots;
            let (stored, hash) = stored_state(ctx, id, core);
            if stored != status.applied {
                ctx.fail(
                    Some(id),
                    "applied state is durable",
                    format!(
                        "in-memory applied position {:?} differs from the stored {:?}",
                        status.applied, stored
                    ),
                );
            }
            self.hash_checks += 1;
            match recorded {
                Some((h, on)) if h != hash => ctx.fail(
                    Some(id),
                    "equal state at equal applied index",
                    format!(
                        "state hash {hash:016x} at applied index {applied}, but node {on} had {h:016x} there"
                    ),
                ),
                Some(_) => {}
                None => {
                    self.hashes.insert(applied, (hash, id));
                }
            }
        }
    }

    /// A member's core reported the events of one applied revision: revisions of events rise
    /// strictly on a member (a revision is applied once), never pass its applied revision, and
    /// every event of the batch carries the batch's revision.
    pub fn applied_events(&mut self, ctx: Ctx, id: u64, revision: i64, events: &[Event]) {
        let seen = self.seen.entry(id).or_default();
        if revision <= seen.event_revision {
            ctx.fail(
                Some(id),
                "events in revision order",
                format!("events of revision {revision} after events of revision {}", seen.event_revision),
            );
        }
        seen.event_revision = revision;
        if let Some(e) = events.iter().find(|e| e.kv.mod_revision != revision) {
            ctx.fail(
                Some(id),
                "events of one revision",
                format!("an event at mod_revision {} in the batch of revision {revision}", e.kv.mod_revision),
            );
        }
    }

    /// A member installed a snapshot at `revision`: never behind the events it already reported;
    /// the next events come after it.
    pub fn restored(&mut self, ctx: Ctx, id: u64, revision: i64) {
        let seen = self.seen.entry(id).or_default();
        if revision < seen.event_revision {
            ctx.fail(
                Some(id),
                "events in revision order",
                format!("restored at revision {revision} after events of revision {}", seen.event_revision),
            );
        }
        seen.event_revision = revision;
    }

    /// A serializable read on member `id` was served at `revision`: never below one served
    /// there before, across its crashes and restarts too.
    pub fn serializable_read(&mut self, ctx: Ctx, id: u64, revision: i64) {
        let seen = self.seen.entry(id).or_default();
        if revision < seen.serial_revision {
            ctx.fail(
                Some(id),
                "serializable reads never go backwards",
                format!("served at revision {revision} after a read at revision {}", seen.serial_revision),
            );
        }
        seen.serial_revision = revision;
    }

    /// A member restarted: its log is reloaded, so compare its pairs afresh.
    ///
    /// Its log's commit index may be below what it applied in earlier lives (the commit index
    /// is written unsynced); what must hold instead — it serves nothing older than it served
    /// before — is [`Checker::serializable_read`]'s check, which spans lives.
    /// Member `id`'s data dir was lost: its votes, term and durable index are gone with it (it
    /// takes part again only after its replacement made it a learner, `core::membership`; what
    /// that forgetting must not break — one leader per term, committed entries kept — is checked
    /// across its lives as before). What it served is not forgotten: its new life serves nothing
    /// older (`Core::lived_before`).
    pub fn wiped(&mut self, id: u64) {
        self.votes.retain(|(member, _), _| *member != id);
        let served = self.seen.remove(&id).map(|s| (s.caught_up_index, s.serial_revision));
        if let Some((caught_up_index, serial_revision)) = served {
            self.seen.insert(id, Seen { caught_up_index, serial_revision, ..Seen::default() });
        }
        self.restarted(id);
    }

    pub fn restarted(&mut self, id: u64) {
        self.shapes.retain(|&(a, b), _| a != id && b != id);
        self.own_shapes.remove(&id);
        if let Some(s) = self.seen.get_mut(&id) {
            s.hashed_at = None;
            s.leader_in = None;
            // A new life: the state restarts from its durable commit and replays the log,
            // re-emitting the events of what it replays.
            s.applied_index = 0;
            s.revision = 0;
            s.event_revision = 0;
        }
    }
}

/// A member's stored applied position and state hash, read in one transaction.
pub fn stored_state(ctx: Ctx, id: u64, core: &Core) -> (fsm::Applied, u64) {
    core.state_db()
        .begin_read()
        .map_err(|e| e.to_string())
        .and_then(|txn| {
            let applied = fsm::applied(&txn).map_err(|e| e.to_string())?;
            let hash = fsm::state_hash(&txn).map_err(|e| e.to_string())?;
            Ok((applied, hash))
        })
        .unwrap_or_else(|e| {
            ctx.fail(Some(id), "readable state", format!("cannot read the stored state: {e}"))
        })
}

/// Every member counts its history's bytes exactly (`fsm_meta`), and with a byte bound the
/// history after the compact revision of a settled cluster (no proposal on its way, so the
/// compaction a leader proposed as it applied a backlog has committed) is within three times it
/// (twice for a leader that just started, and what was recorded before a step was due, with
/// room to spare: the check is against a bound that is never compacted to at all). Returns the
/// first member's measure.
pub fn check_history_bytes(ctx: Ctx, up: &[(u64, &Core)], bound: u64) -> Option<fsm::history::Measured> {
    let mut first = None;
    for &(id, core) in up {
        let m = core
            .state_db()
            .begin_read()
            .map_err(|e| e.to_string())
            .and_then(|txn| fsm::history::measure(&txn).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| {
                ctx.fail(Some(id), "readable state", format!("cannot measure the history: {e}"))
            });
        if m.counted != Some(m.stored) {
            ctx.fail(
                Some(id),
                "history byte count",
                format!("fsm_meta counts {:?} bytes of history, its rows hold {}", m.counted, m.stored),
            );
        }
        first.get_or_insert(m);
    }
    let m = first?;
    if bound > 0 && m.retained > 3 * bound {
        ctx.fail(
            None,
            "history byte bound",
            format!(
                "{} bytes of history after compact revision {}, bound {bound}",
                m.retained, m.compact_revision
            ),
        );
    }
    Some(m)
}

/// Every kv of a member, by key.
pub fn all_kvs(ctx: Ctx, id: u64, core: &Core) -> BTreeMap<Vec<u8>, KeyValue> {
    let req = Range { key: vec![0], range_end: vec![0], ..Default::default() };
    let (_, resp) = core
        .state_db()
        .begin_read()
        .map_err(|e| e.to_string())
        .and_then(|txn| fsm::range(&txn, &req, usize::MAX).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| ctx.fail(Some(id), "readable state", format!("cannot read the kv table: {e}")));
    resp.kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect()
}

/// An acknowledged write.
#[derive(Debug, Clone)]
pub struct Ack {
    pub value: Vec<u8>,
    pub revision: i64,
    pub request_id: String,
}

/// What the clients had seen complete when an operation was issued: the real-time order a
/// linearizable history must respect.
#[derive(Debug, Clone)]
pub struct Before {
    /// The highest revision of any operation completed before this one was issued (a put's
    /// revision, a read's header revision).
    pub max_revision: i64,
    /// The key's write, if acknowledged before this operation was issued.
    pub acked: Option<Ack>,
    /// Whether a read completed before this one was issued found the key.
    pub observed: bool,
}

/// Every successful reply to one request id carries the first outcome's revision, and a put is
/// ordered after every operation that completed before it was issued.
pub fn check_put_reply(
    ctx: Ctx,
    node: u64,
    key: &str,
    before: &Before,
    first: Option<&Ack>,
    revision: i64,
    request_id: &str,
) {
    if let Some(a) = first {
        if a.revision != revision {
            ctx.fail(
                Some(node),
                "request-id idempotency",
                format!(
                    "put {key} (request id {request_id}) acknowledged at revision {} and again at revision {revision}",
                    a.revision
                ),
            );
        }
    }
    if revision <= before.max_revision {
        ctx.fail(
            Some(node),
            "linearizable write",
            format!(
                "put {key} (request id {request_id}) applied at revision {revision}, but revision {} had completed \
                 before it was issued",
                before.max_revision
            ),
        );
    }
}

/// A linearizable read of one key reflects every operation completed before it was issued
/// (never an older revision, never missing a write acknowledged or a value read before), and
/// shows nothing but the value written to that key.
pub fn check_read(
    ctx: Ctx,
    node: u64,
    key: &str,
    before: &Before,
    written_value: Option<&[u8]>,
    header_revision: i64,
    found: Option<&KeyValue>,
) {
    if header_revision < before.max_revision {
        ctx.fail(
            Some(node),
            "linearizable read",
            format!(
                "read of {key} served at revision {header_revision}, but revision {} had completed before it was issued",
                before.max_revision
            ),
        );
    }
    if found.is_none() && before.observed {
        ctx.fail(
            Some(node),
            "linearizable read",
            format!(
                "read of {key} found nothing, but an earlier read (completed before this one began) found it"
            ),
        );
    }
    match (found, &before.acked) {
        (None, Some(a)) => ctx.fail(
            Some(node),
            "linearizable read",
            format!("read of {key} found nothing, but it was acknowledged at revision {} before the read", a.revision),
        ),
        (Some(kv), Some(a)) if kv.value != a.value || kv.mod_revision != a.revision => ctx.fail(
            Some(node),
            "linearizable read",
            format!(
                "read of {key} found mod_revision {} value {:?}, expected the acknowledged revision {} value {:?}",
                kv.mod_revision,
                String::from_utf8_lossy(&kv.value),
                a.revision,
                String::from_utf8_lossy(&a.value)
            ),
        ),
        (Some(kv), _) => {
            if Some(kv.value.as_slice()) != written_value {
                ctx.fail(
                    Some(node),
                    "no phantom writes",
                    format!("read of {key} found value {:?}, which no client wrote", String::from_utf8_lossy(&kv.value)),
                );
            }
            if kv.mod_revision > header_revision {
                ctx.fail(
                    Some(node),
                    "linearizable read",
                    format!("read of {key} at revision {header_revision} shows mod_revision {}", kv.mod_revision),
                );
            }
        }
        (None, None) => {}
    }
}

/// After the cluster settled: every acknowledged write is on every member with its value and
/// revision; every write-once key (`k/…`) holds the one value written to it, written once
/// (version 1); all members have the same state.
pub fn check_final(
    ctx: Ctx,
    up: &[(u64, &Core)],
    acked: &BTreeMap<String, Ack>,
    written: &BTreeMap<String, Vec<u8>>,
) {
    let mut first: Option<(u64, u64, u64)> = None;
    for &(id, core) in up {
        let kvs = all_kvs(ctx, id, core);
        for (key, a) in acked {
            match kvs.get(key.as_bytes()) {
                None => ctx.fail(
                    Some(id),
                    "no acknowledged write lost",
                    format!(
                        "{key} (acknowledged at revision {}, request id {}) is missing",
                        a.revision, a.request_id
                    ),
                ),
                Some(kv) if kv.value != a.value || kv.mod_revision != a.revision => ctx.fail(
                    Some(id),
                    "no acknowledged write lost",
                    format!(
                        "{key} holds mod_revision {} value {:?}; acknowledged were revision {} value {:?}",
                        kv.mod_revision,
                        String::from_utf8_lossy(&kv.value),
                        a.revision,
                        String::from_utf8_lossy(&a.value)
                    ),
                ),
                Some(_) => {}
            }
        }
        for (key, kv) in kvs.iter().filter(|(k, _)| k.starts_with(b"k/")) {
            let name = String::from_utf8_lossy(key).to_string();
            if kv.version != 1 {
                ctx.fail(
                    Some(id),
                    "request-id idempotency",
                    format!("{name} has version {} (applied more than once), expected 1", kv.version),
                );
            }
            if written.get(&name).map(Vec::as_slice) != Some(kv.value.as_slice()) {
                ctx.fail(
                    Some(id),
                    "no phantom writes",
                    format!("{name} holds {:?}, which no client wrote", String::from_utf8_lossy(&kv.value)),
                );
            }
        }
        let s = core.status();
        let (_, hash) = stored_state(ctx, id, core);
        match first {
            None => first = Some((id, s.applied.index, hash)),
            Some((on, index, h)) if index != s.applied.index || h != hash => ctx.fail(
                Some(id),
                "convergence",
                format!(
                    "applied index {} state hash {hash:016x}, but node {on} is at applied index {index} hash {h:016x}",
                    s.applied.index
                ),
            ),
            Some(_) => {}
        }
    }
}

/// Every member has run, so every member's state records members 1..=`n` (`fsm::members`): a
/// member whose record were missing could rejoin on an empty data dir unrefused. A member in
/// `removed` may have been removed, or lost its data dir, before its start was recorded (the
/// leader drops a removed member's proposal; admission refuses it as removed either way):
/// whether its start is recorded is not judged.
pub fn check_members_recorded(ctx: Ctx, up: &[(u64, &Core)], n: u64, removed: &BTreeSet<u64>) {
    let all: Vec<u64> = (1..=n).filter(|id| !removed.contains(id)).collect();
    for &(id, core) in up {
        let txn =
            core.state_db().begin_read().unwrap_or_else(|e| ctx.fail(Some(id), "storage", e.to_string()));
        let mut recorded =
            fsm::members::recorded(&txn).unwrap_or_else(|e| ctx.fail(Some(id), "storage", e.to_string()));
        recorded.retain(|member| !removed.contains(member));
        if recorded != all {
            ctx.fail(
                Some(id),
                "every member's start recorded",
                format!("the state records the starts of members {recorded:?}, expected {all:?}"),
            );
        }
    }
}
