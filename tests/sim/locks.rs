//! Lockers and the lock invariants (DESIGN.md §1 Locks) in the simulator. A locker is a client
//! that uses a keeper's session: it acquires locks and elections (waiting or not, shared or
//! exclusive, with a drawn lock-delay), releases what it holds, gives up waits, and learns of
//! grants by reading a member's applied state, as the API's waiting half does. While it holds a
//! lock it sends, now and then, a write guarded by the grant's sequencer (`guarded_write`; see
//! `fencing.rs`) — for an election, half the time a Proclaim of a value instead — and now and
//! then one guarded by a sequencer whose release it saw acknowledged (a stale token). When its
//! keeper stops (a dead or paused client) or hears that its session is gone, it asks for nothing
//! more and releases nothing, holding what it holds: its session's
//! expiry releases that abnormally, and the lock-delay follows (or, for a keeper that closes its
//! session on the way out, the close releases it normally). It goes on as a paused client
//! that woke up and does not know: it sends writes guarded by what it believes it holds until
//! each is refused. In a quarter of the chaos runs a crowd of three more lockers, each with a
//! session of its own, contends for one lock with shared requests half the time, so that queues
//! of several sessions and mixed modes form (a grant of only the first of several compatible
//! waiters, or a cancelled head that lets nobody in, fails "the queue moves" within 300 seeds).
//! Now and then a locker puts a key bound to its session (ephemeral), half the time a sequential
//! one under a prefix of its own ([`BOUND_PREFIX`]), or deletes the sequential key with the
//! lowest counter of those it was answered and has not deleted (as a queue's consumer takes the
//! head), so that a counter used again would show.
//! A call that fails (an error, or no answer in time) is sent again half the time, up to three
//! times, as the client library sends it: the same command under the same request id, to a
//! member drawn anew (the first copy may have applied, or still be on its way) — a withdrawal
//! under the id of an acquire not sent yet too, as a client whose Withdraw failed sends it
//! again. Calls of a locker whose keeper stopped, and calls while the run settles, are not sent
//! again.
//!
//! Checked as lockers learn of grants: every sequencer a grant hands a locker (an acquire's or a
//! cancel's answer, or its request found holding in a member's state) names the lock it asked
//! for, in its space, and the locker's own session; an acquire's names the mode it asked for.
//!
//! What is checked, after every step, in every member's applied state:
//! - Per lock: one exclusive holder, or only shared holders; every holder and waiter belongs to
//!   a live session; while a lock-delay is in force no holder was granted at or after it began.
//! - Per lock: the queue is in arrival order, and its head waits only for a reason: a lock-delay
//!   in force, or holders it cannot join (the queue moves: grants happen as changes apply).
//! - A generation names one grant forever (the same lock, session and revision wherever and
//!   whenever it is seen), and per lock, generations increase with the revisions of their
//!   grants: strictly increasing for the life of the cluster.
//! - An acquire whose withdrawal was applied first, under its own request id (Lock.Withdraw of
//!   an acquire still on its way), never holds or waits — half the time with the acquire sent
//!   at once through another member, racing it.
//! - No queue holds more than the bound every acquire of the run carries (drawn per seed: none,
//!   or 1 to 3, as a member's `--max-lock-waiters` would set it): past it an acquire is
//!   refused, QUEUE_FULL.
//! - Every key bound to a session belongs to a live session, each session counts exactly the
//!   keys bound to it, and the `session_keys` index names exactly those (session, key) pairs:
//!   a session's end deletes its keys with it.
//!
//! And from the answers lockers get: a sequential put writes a new key each time, under its
//! prefix, whose counter grows with the revision it was written at.
//!
//! And from the members' applied commands: a lock-delay begins only with an abnormal release —
//! in a command a member proposed itself (an expiry) that ended a session, never in a client's
//! release, cancel or close; and no lock-delay ends before its length has passed since the first
//! member applied its beginning (so no grant comes during it). A locker's command changes the
//! state at one log index at most, however many copies of it were sent (by the locker, or
//! proposed again by a member), and a copy applied at another index is answered exactly what
//! the first was (from the request memory; its `data_omitted` mark aside).
//!
//! And, without the state machine's own delay bookkeeping: when a member's state shows a hold
//! gone with its session, the revision that ended the session is read from the history; unless
//! that end was its client's close (a normal release: the next request is granted at once, as
//! "the queue moves" checks), no grant of that lock at or after that revision may have been
//! applied anywhere before the hold's lock-delay passed since any member first applied the
//! session's end. An expiry applied as a normal release would fail here.

use std::collections::{BTreeMap, BTreeSet};

use latch::core::{Action, Core, Progress};
use latch::fsm::{self, history::Space, locks::lock_key, AppliedCommand, LockChange, SessionChange};
use latch_proto::internal::{
    command::Body, compare, lock_result::Status, op, outcome, Acquire, CancelWait, Compare, DeleteRange,
    LockHolder, LockMode, LockRow, LockSpace, Op, Outcome, Proclaim, Put, Release, Sequencer, Txn,
};
use prost::Message as _;
use rand::rngs::SmallRng;
use rand::Rng;
use redb::ReadableDatabase as _;

use crate::invariants::{out_of_order, Ctx};
use crate::sessions::is_close;

/// The locks lockers contend for: (space, name).
const NAMES: [(LockSpace, &str); 3] =
    [(LockSpace::Locks, "a"), (LockSpace::Locks, "b"), (LockSpace::Elections, "e")];

/// The lock a crowd of lockers contends for (one of [`NAMES`]).
const CROWD_LOCK: (LockSpace, &str) = NAMES[0];

/// How often a locker that holds something sends a write guarded by one of its grants, of the
/// calls it draws; and one guarded by a sequencer whose release it saw acknowledged.
const GUARDED_WRITE_P: f64 = 0.35;
const STALE_WRITE_P: f64 = 0.15;
/// How many acknowledged releases a locker keeps, to send a stale token of.
const RELEASED_KEPT: usize = 3;
/// How often a locker puts a key bound to its session, of the calls it draws.
const BOUND_PUT_P: f64 = 0.1;
/// Where lockers' session-bound keys live: `bound/<locker>/k<n>`, and sequential ones under
/// `bound/<locker>/s/`. Nothing else in a run writes there.
pub const BOUND_PREFIX: &str = "bound/";

/// One simulated lock client.
#[derive(Debug, Clone)]
pub struct Locker {
    pub index: usize,
    /// The keeper whose session it uses.
    pub keeper: usize,
    pub attempt: u64,
    pub in_flight: Option<LockCall>,
    /// The command and request id of the call in flight, to send again if it fails; and how
    /// often it was sent again.
    pub sent: Option<(Body, String)>,
    pub resent: u32,
    /// Grants it was told of (some may have ended since: a release then finds nothing, a
    /// guarded write is refused).
    pub held: Vec<Sequencer>,
    /// Grants whose release was acknowledged, and when (virtual µs): stale tokens, each sent once
    /// in a guarded write that must be refused.
    released: Vec<(Sequencer, u64)>,
    /// Requests it queued, by (space, name, request id), until it learns how they ended.
    pub waiting: Vec<(LockSpace, String, String)>,
    /// An id whose withdrawal was applied before any acquire under it (Lock.Withdraw of an
    /// acquire still on its way): its acquire is sent next, and must never queue.
    spent: Option<(LockSpace, String, String)>,
    /// An acquire sent along with the withdrawal drawn last, under the same id, to race it.
    race: Option<(Body, String)>,
    next_id: u64,
    /// The `max_waiters` its acquires carry (0: none).
    queue_bound: u32,
    /// Acquires refused because the queue held `queue_bound` requests.
    pub queues_full: u64,
    /// One of a crowd: its acquires are all of [`CROWD_LOCK`], shared half the time (a
    /// withdrawal it races may name any lock).
    crowd: bool,
    /// Its sequential puts answered: revision → the counter of the key written; and the keys
    /// of those it has not deleted, by counter.
    sequential: BTreeMap<i64, u64>,
    sequential_kept: BTreeMap<u64, Vec<u8>>,
    /// Deletes of its sequential keys answered as having deleted one.
    pub sequential_deletes: u64,
    /// Bound puts answered as written, and sequential ones among them.
    pub bound_puts: u64,
    pub sequential_puts: u64,
}

/// What a locker asked.
#[derive(Debug, Clone)]
pub enum LockCall {
    Acquire {
        request_id: String,
        space: LockSpace,
        name: String,
        mode: LockMode,
    },
    Release,
    Cancel {
        request_id: String,
        space: LockSpace,
        name: String,
    },
    /// A write guarded by `sequencer` ([`guarded_write`]), or a proclaim of `proclaimed` by an
    /// election's sequencer; `released_at`: when the locker saw the sequencer's release
    /// acknowledged, if it did (a stale token).
    Guarded {
        request_id: String,
        sequencer: Sequencer,
        proclaimed: Option<Vec<u8>>,
        released_at: Option<u64>,
    },
    /// The delete of its sequential key with counter `counter`.
    DeleteSequential {
        counter: u64,
    },
    /// A put of a key bound to the locker's session; `sequential`: under its sequential prefix.
    Bound {
        sequential: bool,
    },
    /// A withdrawal proposed under the id of an acquire not sent yet.
    Spend {
        space: LockSpace,
        name: String,
        request_id: String,
    },
}

impl Locker {
    pub fn new(index: usize, keeper: usize, queue_bound: u32, crowd: bool) -> Locker {
        Locker {
            index,
            keeper,
            attempt: 0,
            in_flight: None,
            sent: None,
            resent: 0,
            held: Vec::new(),
            released: Vec::new(),
            waiting: Vec::new(),
            spent: None,
            race: None,
            next_id: 0,
            queue_bound,
            queues_full: 0,
            crowd,
            sequential: BTreeMap::new(),
            sequential_kept: BTreeMap::new(),
            sequential_deletes: 0,
            bound_puts: 0,
            sequential_puts: 0,
        }
    }

    /// Draws the next call for a locker whose session is `session`: a command body and its
    /// request id.
    pub fn next_call(&mut self, rng: &mut SmallRng, session: &str) -> (Body, String, LockCall) {
        self.next_id += 1;
        let request_id = format!("locker-{}-{}", self.index, self.next_id);
        if let Some((space, name, id)) = self.spent.take() {
            // The acquire whose withdrawal came first: refused as a conflict, never queued.
            let body = spent_acquire(space, &name, session, self.queue_bound);
            return (
                body,
                id.clone(),
                LockCall::Acquire { request_id: id, space, name, mode: LockMode::Exclusive },
            );
        }
        if rng.gen_bool(0.05) {
            let (space, name) = NAMES[rng.gen_range(0..NAMES.len())];
            let body = Body::CancelWait(CancelWait {
                space: space as i32,
                name: name.to_string(),
                request_id: request_id.clone(),
                release_granted: false,
            });
            if rng.gen_bool(0.5) {
                // The acquire is on its way at once, through another member: the log orders
                // the two, and only one may take effect.
                self.race = Some((spent_acquire(space, name, session, self.queue_bound), request_id.clone()));
                self.waiting.push((space, name.to_string(), request_id.clone()));
            }
            let call = LockCall::Spend { space, name: name.to_string(), request_id: request_id.clone() };
            return (body, request_id, call);
        }
        if !self.held.is_empty() && rng.gen_bool(GUARDED_WRITE_P) {
            let seq = self.held[rng.gen_range(0..self.held.len())].clone();
            return guarded_call(rng, seq, None, request_id);
        }
        if !self.released.is_empty() && rng.gen_bool(STALE_WRITE_P) {
            let (seq, at) = self.released.swap_remove(rng.gen_range(0..self.released.len()));
            return guarded_call(rng, seq, Some(at), request_id);
        }
        if !self.held.is_empty() && rng.gen_bool(0.4) {
            let seq = self.held.swap_remove(rng.gen_range(0..self.held.len()));
            return (Body::Release(Release { sequencer: Some(seq) }), request_id, LockCall::Release);
        }
        if rng.gen_bool(BOUND_PUT_P) {
            if let Some((&counter, key)) =
                self.sequential_kept.first_key_value().filter(|_| rng.gen_bool(0.3))
            {
                let body = Body::DeleteRange(DeleteRange {
                    key: key.clone(),
                    range_end: Vec::new(),
                    prev_kv: false,
                });
                return (body, request_id, LockCall::DeleteSequential { counter });
            }
            let sequential = rng.gen_bool(0.5);
            let key = if sequential {
                format!("{BOUND_PREFIX}{}/s/", self.index)
            } else {
                format!("{BOUND_PREFIX}{}/k{}", self.index, rng.gen_range(0..3))
            };
            let body = Body::Put(Put {
                key: key.into_bytes(),
                value: request_id.clone().into_bytes(),
                prev_kv: false,
                session: session.to_string(),
                sequential,
            });
            return (body, request_id, LockCall::Bound { sequential });
        }
        if !self.waiting.is_empty() && rng.gen_bool(0.2) {
            let (space, name, id) = self.waiting[rng.gen_range(0..self.waiting.len())].clone();
            let body = Body::CancelWait(CancelWait {
                space: space as i32,
                name: name.clone(),
                request_id: id.clone(),
                release_granted: rng.gen_bool(0.5),
            });
            return (body, request_id, LockCall::Cancel { request_id: id, space, name });
        }
        let (space, name) = if self.crowd { CROWD_LOCK } else { NAMES[rng.gen_range(0..NAMES.len())] };
        let shared = space == LockSpace::Locks && rng.gen_bool(if self.crowd { 0.5 } else { 0.3 });
        let mode = if shared { LockMode::Shared } else { LockMode::Exclusive };
        let wait = rng.gen_bool(0.7);
        let body = Body::Acquire(Acquire {
            space: space as i32,
            name: name.to_string(),
            session: session.to_string(),
            mode: mode as i32,
            wait,
            lock_delay_ms: if rng.gen_bool(0.3) { 0 } else { rng.gen_range(50..400) },
            value: format!("locker-{}", self.index).into_bytes(),
            max_waiters: self.queue_bound,
            max_session_locks: 0,
            max_row_bytes: 0,
        });
        if wait {
            self.waiting.push((space, name.to_string(), request_id.clone()));
        }
        (body, request_id.clone(), LockCall::Acquire { request_id, space, name: name.to_string(), mode })
    }

    /// The next call of a locker whose session has ended, or whose keeper stopped (a paused
    /// client that woke up): a write guarded by a grant it believes it holds; `None` once it
    /// believes it holds nothing (each such write that is refused tells it so).
    pub fn next_call_after_its_session(&mut self, rng: &mut SmallRng) -> Option<(Body, String, LockCall)> {
        if self.held.is_empty() {
            return None;
        }
        self.next_id += 1;
        let request_id = format!("locker-{}-{}", self.index, self.next_id);
        let seq = self.held[rng.gen_range(0..self.held.len())].clone();
        Some(guarded_call(rng, seq, None, request_id))
    }

    /// The acquire to send along with the withdrawal just drawn, if it races one: its body and
    /// request id (its answer is not awaited; the locker learns of it by looking).
    pub fn take_race(&mut self) -> Option<(Body, String)> {
        self.race.take()
    }

    /// The outcome of `call`, made for `session`; the id it spent, if it was a withdrawal
    /// applied before its acquire. Fails the run if a grant's sequencer is not the locker's.
    pub fn answered(
        &mut self,
        ctx: Ctx,
        session: &str,
        call: &LockCall,
        outcome: &Outcome,
    ) -> Option<String> {
        if let LockCall::Guarded { sequencer, .. } = call {
            let refused = match &outcome.result {
                Some(outcome::Result::Txn(t)) => !t.succeeded,
                Some(outcome::Result::Lock(r)) => r.status == Status::NotHeld as i32,
                _ => false,
            };
            if refused {
                // The grant has ended, so the locker no longer believes it holds it.
                self.held.retain(|s| s != sequencer);
            }
            return None;
        }
        if let LockCall::DeleteSequential { counter } = call {
            if let Some(outcome::Result::DeleteRange(d)) = &outcome.result {
                // Gone (or gone before, with its session): the next one is deleted next.
                self.sequential_kept.remove(counter);
                self.sequential_deletes += u64::from(d.deleted == 1);
            }
            return None;
        }
        if let LockCall::Bound { sequential } = call {
            if let Some(outcome::Result::Put(p)) = &outcome.result {
                self.bound_puts += 1;
                if *sequential {
                    self.sequential_put(ctx, outcome.revision, &p.key);
                }
            }
            return None;
        }
        let Some(outcome::Result::Lock(r)) = &outcome.result else { return None };
        if let LockCall::Spend { space, name, request_id } = call {
            self.spent = Some((*space, name.clone(), request_id.clone()));
            return Some(request_id.clone());
        }
        if r.status == Status::QueueFull as i32 {
            self.queues_full += 1;
        }
        let granted = (r.status == Status::Granted as i32 || r.status == Status::Already as i32)
            .then(|| r.sequencer.clone())
            .flatten();
        match call {
            LockCall::Acquire { request_id, space, name, mode } => {
                if let Some(seq) = &granted {
                    self.check_sequencer(
                        ctx,
                        session,
                        (*space, name, Some(*mode)),
                        seq,
                        "an acquire's answer",
                    );
                }
                if granted.is_some() || r.status != Status::Queued as i32 {
                    self.waiting.retain(|(_, _, id)| id != request_id);
                }
            }
            LockCall::Cancel { request_id, space, name } => {
                if let Some(seq) = &granted {
                    self.check_sequencer(ctx, session, (*space, name, None), seq, "a cancel's answer");
                }
                if granted.is_some() || r.status != Status::Queued as i32 {
                    self.waiting.retain(|(_, _, id)| id != request_id);
                }
            }
            LockCall::Release
            | LockCall::Spend { .. }
            | LockCall::Guarded { .. }
            | LockCall::Bound { .. }
            | LockCall::DeleteSequential { .. } => {}
        }
        if let (true, Some(seq)) = (r.status == Status::Done as i32, &r.sequencer) {
            // A release (or a cancel that released its grant) took effect: a stale token now.
            self.held.retain(|s| s != seq);
            if self.released.len() == RELEASED_KEPT {
                self.released.remove(0);
            }
            self.released.push((seq.clone(), ctx.time_us));
        }
        if let Some(seq) = granted {
            if !self.held.contains(&seq) {
                self.held.push(seq);
            }
        }
        None
    }

    /// A sequential put of this locker was answered as written at `revision`, key `key`: under
    /// its prefix, a counter no other revision wrote, growing with the revisions (a copy of the
    /// put answered from the request memory names the same revision and key).
    fn sequential_put(&mut self, ctx: Ctx, revision: i64, key: &[u8]) {
        let prefix = format!("{BOUND_PREFIX}{}/s/", self.index);
        let counter = key
            .strip_prefix(prefix.as_bytes())
            .filter(|digits| digits.len() == fsm::SEQUENCE_DIGITS)
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| digits.parse::<u64>().ok())
            .unwrap_or_else(|| {
                ctx.fail(
                    None,
                    "kv: a sequential put writes its prefix and a counter",
                    format!(
                        "locker {}'s sequential put under {prefix:?} wrote {:?}",
                        self.index,
                        String::from_utf8_lossy(key)
                    ),
                )
            });
        let elsewhere = self.sequential.iter().find(|&(&r, &c)| (r == revision) != (c == counter));
        let misordered = out_of_order(&self.sequential, revision, counter);
        if elsewhere.is_some() || misordered.is_some() {
            ctx.fail(
                None,
                "kv: a sequential put writes a new key, its counter growing with the revision",
                format!(
                    "locker {}'s sequential put wrote {:?} at revision {revision}; earlier answers (revision, \
                     counter): {:?}",
                    self.index,
                    String::from_utf8_lossy(key),
                    self.sequential
                ),
            );
        }
        if self.sequential.insert(revision, counter).is_none() {
            self.sequential_kept.insert(counter, key.to_vec());
            self.sequential_puts += 1;
        }
    }

    /// A grant handed to this locker (told by `how`), for `session`, of the lock it asked for
    /// (`name` in `space`, in `mode` when it asked for one) names that lock, that session and
    /// that mode.
    fn check_sequencer(
        &self,
        ctx: Ctx,
        session: &str,
        (space, name, mode): (LockSpace, &str, Option<LockMode>),
        seq: &Sequencer,
        how: &str,
    ) {
        let mode_differs = mode.is_some_and(|m| seq.mode != m as i32);
        if seq.session != session || seq.name != name || seq.space != space as i32 || mode_differs {
            ctx.fail(
                None,
                "locks: a grant's sequencer names the locker's session and the lock",
                format!(
                    "locker {} (session {session}) asked for {space:?} {name:?}{}, but {how} handed it {seq:?}",
                    self.index,
                    mode.map(|m| format!(" ({m:?})")).unwrap_or_default()
                ),
            );
        }
    }

    /// Learns from a member's applied state how its queued requests, made for `session`, stand.
    pub fn look(&mut self, ctx: Ctx, session: &str, core: &Core) {
        let Ok(txn) = core.state_db().begin_read() else { return };
        let mut still = Vec::new();
        for (space, name, id) in std::mem::take(&mut self.waiting) {
            match fsm::locks::request_state(&txn, &lock_key(space, &name), &id) {
                Ok(fsm::locks::RequestState::Held(seq)) => {
                    let asked = (space, name.as_str(), None);
                    self.check_sequencer(ctx, session, asked, &seq, "its request's hold in the state");
                    if !self.held.contains(&seq) {
                        self.held.push(seq);
                    }
                }
                // Settled without a grant — or not applied at this member yet: either way it is
                // forgotten (a grant it missed is its session's until the session ends).
                Ok(fsm::locks::RequestState::Gone) => {}
                Ok(fsm::locks::RequestState::Waiting) | Err(_) => still.push((space, name, id)),
            }
        }
        self.waiting = still;
    }
}

/// In a member's applied state: every key under [`BOUND_PREFIX`] is bound to a live session,
/// every session counts exactly the keys bound to it, and the `session_keys` index names
/// exactly those pairs. Only lockers bind keys in a run, and only there: a simulated client
/// that binds keys elsewhere must widen this.
fn check_bound_keys(ctx: Ctx, id: u64, txn: &redb::ReadTransaction) {
    let fail = |e: String| -> ! { ctx.fail(Some(id), "sessions: state readable", e) };
    let range = latch_proto::internal::Range {
        key: BOUND_PREFIX.as_bytes().to_vec(),
        range_end: b"bound0".to_vec(), // the prefix's end: '/' + 1
        ..Default::default()
    };
    let (_, found) = fsm::range(txn, &range, usize::MAX).unwrap_or_else(|e| fail(e.to_string()));
    let sessions = fsm::sessions::all(txn).unwrap_or_else(|e| fail(e.to_string()));
    let pairs: BTreeSet<(&str, &[u8])> = found
        .kvs
        .iter()
        .filter(|kv| !kv.session.is_empty())
        .map(|kv| (kv.session.as_str(), &kv.key[..]))
        .collect();
    let index = fsm::sessions::bound_keys(txn).unwrap_or_else(|e| fail(e.to_string()));
    let indexed: BTreeSet<(&str, &[u8])> = index.iter().map(|(s, k)| (s.as_str(), &k[..])).collect();
    if indexed != pairs {
        let show = |set: &BTreeSet<(&str, &[u8])>| -> Vec<String> {
            set.iter().map(|(s, k)| format!("{s}: {}", String::from_utf8_lossy(k))).collect()
        };
        ctx.fail(
            Some(id),
            "sessions: the index of bound keys names exactly the keys bound to each session",
            format!(
                "the index holds {:?}; the keys bound under {BOUND_PREFIX:?} are {:?}",
                show(&indexed),
                show(&pairs)
            ),
        );
    }
    let mut bound: BTreeMap<&str, u64> = BTreeMap::new();
    for (session, _) in &pairs {
        *bound.entry(session).or_default() += 1;
    }
    for (session, keys) in &bound {
        if !sessions.iter().any(|(s, _)| s == session) {
            ctx.fail(
                Some(id),
                "sessions: a session's end deletes the keys bound to it",
                format!(
                    "{keys} key(s) under {BOUND_PREFIX:?} are bound to session {session}, which is not live"
                ),
            );
        }
    }
    for (session, row) in &sessions {
        let keys = bound.get(session.as_str()).copied().unwrap_or(0);
        if row.keys != keys {
            ctx.fail(
                Some(id),
                "sessions: a session counts the keys bound to it",
                format!("session {session} counts {} bound key(s), but {keys} are bound to it", row.keys),
            );
        }
    }
}

/// A call writing under the guard of `seq` (see [`guarded_write`]); for an election's, half the
/// time a proclaim of a value naming the request instead.
fn guarded_call(
    rng: &mut SmallRng,
    seq: Sequencer,
    released_at: Option<u64>,
    request_id: String,
) -> (Body, String, LockCall) {
    let (body, proclaimed) = if seq.space == LockSpace::Elections as i32 && rng.gen_bool(0.5) {
        let value = format!("proclaimed by {request_id}").into_bytes();
        let proclaim = Proclaim { sequencer: Some(seq.clone()), value: value.clone(), max_row_bytes: 0 };
        (Body::Proclaim(proclaim), Some(value))
    } else {
        (guarded_write(&seq), None)
    };
    (body, request_id.clone(), LockCall::Guarded { request_id, sequencer: seq, proclaimed, released_at })
}

/// A write guarded by `seq`, as a fenced resource takes it: a txn whose one compare holds while
/// the sequencer holds its lock (a sequencer compare, EQUAL), and whose success puts the lock's
/// [`fence_key`] = the generation, in decimal; nothing on failure.
pub fn guarded_write(seq: &Sequencer) -> Body {
    Body::Txn(Txn {
        compare: vec![Compare {
            result: compare::Result::Equal as i32,
            key: Vec::new(),
            target: Some(compare::Target::Sequencer(seq.clone())),
        }],
        success: vec![Op {
            op: Some(op::Op::Put(Put {
                key: fence_key(seq),
                value: seq.generation.to_string().into_bytes(),
                ..Default::default()
            })),
        }],
        failure: Vec::new(),
    })
}

/// The key a guarded write of `seq` puts: `f/<space>/<name>` for an exclusive hold. Shared
/// holders hold together, so their generations need not write in order: theirs put
/// `f/<space>/<name>/shared`.
pub fn fence_key(seq: &Sequencer) -> Vec<u8> {
    let space = match LockSpace::try_from(seq.space) {
        Ok(LockSpace::Elections) => "elections",
        _ => "locks",
    };
    let shared = if seq.mode == LockMode::Shared as i32 { "/shared" } else { "" };
    format!("f/{space}/{}{shared}", seq.name).into_bytes()
}

/// The acquire sent under an id a withdrawal may have spent (always the same command, so that
/// the racing copy and the one sent after are one request).
fn spent_acquire(space: LockSpace, name: &str, session: &str, queue_bound: u32) -> Body {
    Body::Acquire(Acquire {
        space: space as i32,
        name: name.to_string(),
        session: session.to_string(),
        mode: LockMode::Exclusive as i32,
        wait: true,
        lock_delay_ms: 0,
        value: Vec::new(),
        max_waiters: queue_bound,
        max_session_locks: 0,
        max_row_bytes: 0,
    })
}

/// The holders of each lock (by its key) in one member's state.
type Holds = BTreeMap<Vec<u8>, Vec<LockHolder>>;

/// What a member's history says of the revisions after one: the revision that ended each
/// session, and each lock's rows (by its key; `None` once gone) by the revision that wrote them.
/// Empty when the history of those revisions is compacted (or the state went back).
struct Window {
    session_ends: BTreeMap<Vec<u8>, i64>,
    lock_rows: BTreeMap<Vec<u8>, BTreeMap<i64, Option<LockRow>>>,
}

impl Window {
    fn read(txn: &redb::ReadTransaction, since: i64) -> Result<Window, fsm::FsmError> {
        let mut w = Window { session_ends: BTreeMap::new(), lock_rows: BTreeMap::new() };
        if fsm::history::compact_revision_read(txn)? > since {
            return Ok(w);
        }
        let (changes, _) = fsm::history::changes(txn, since + 1, i64::MAX, usize::MAX)?;
        for c in changes {
            let space = match c.space {
                Space::Sessions if c.delete => {
                    w.session_ends.insert(c.kv.key, c.revision);
                    continue;
                }
                Space::Locks => LockSpace::Locks,
                Space::Elections => LockSpace::Elections,
                _ => continue,
            };
            let name = String::from_utf8_lossy(&c.kv.key);
            let row = match c.delete {
                true => None,
                false => Some(LockRow::decode(c.kv.value.as_slice()).map_err(|e| {
                    fsm::FsmError::Corrupt(format!("history: lock {name:?} at revision {}: {e}", c.revision))
                })?),
            };
            w.lock_rows.entry(lock_key(space, &name)).or_default().insert(c.revision, row);
        }
        Ok(w)
    }
}

/// The lock invariants (see the module doc).
#[derive(Debug, Default)]
pub struct LockChecker {
    /// generation → (lock key, session, revision of the grant).
    grants: BTreeMap<u64, (Vec<u8>, String, i64)>,
    /// Per lock: generation → revision of its grant.
    order: BTreeMap<Vec<u8>, BTreeMap<u64, i64>>,
    /// (lock key, revision it began at) → (when a member first applied it, its length in ms).
    delays: BTreeMap<(Vec<u8>, i64), (u64, u64)>,
    /// The applied index each member was last checked at.
    checked: BTreeMap<u64, u64>,
    /// Request ids whose withdrawal was applied before any acquire under them.
    spent: BTreeSet<String>,
    /// The bound every acquire of the run carries (0: none).
    queue_bound: u32,
    pub delays_ended: u64,
    /// Per member: the holds of each lock at its last check, and its applied revision then.
    holds: BTreeMap<u64, (i64, Holds)>,
    /// Per lock: the holds its sessions' expiries ended, (revision of the end, lock-delay ms).
    expired: BTreeMap<Vec<u8>, BTreeSet<(i64, u64)>>,
    /// When some member first applied each revision: (revision, µs), both increasing.
    reached: BTreeMap<i64, u64>,
    pub expired_holds: u64,
    /// Holds gone with their sessions whose end could not be placed (the history of the window
    /// compacted, or the member's state went back): not checked.
    pub expiries_unplaced: u64,
    /// Expiries (lock key, revision of the end) after which the lock was granted again, each
    /// grant checked against the expiry's lock-delay.
    pub regranted: BTreeSet<(Vec<u8>, i64)>,
    /// Sessions their clients closed, and the revision of the close (as some member reported
    /// applying it).
    closed: BTreeMap<String, i64>,
    /// Sessions whose client sent a close: an end of theirs not known as the close may still be
    /// it (applied by a member that died before reporting it, and kept by its disk).
    closes_sent: BTreeSet<String>,
    /// The most sessions seen queued on one lock at once.
    pub longest_queue: usize,
    /// Holds (lock key, generation) seen gone with their session's close (no lock-delay follows).
    pub closed_holds: BTreeSet<(Vec<u8>, u64)>,
    /// Lockers' commands that changed something, by (request id, command hash): the log index
    /// where they did, and their answer.
    took_effect: BTreeMap<(String, u64), (u64, Outcome)>,
    /// Copies of such a command applied at another index, without effect (each member's).
    pub copies_remembered: u64,
}

impl LockChecker {
    pub fn with_queue_bound(queue_bound: u32) -> LockChecker {
        LockChecker { queue_bound, ..LockChecker::default() }
    }

    /// Lock changes member `node` applied at `ctx.time_us`.
    pub fn changed(&mut self, ctx: Ctx, node: u64, changes: &[LockChange]) {
        for change in changes {
            match change {
                LockChange::DelayStarted { key, since_revision, delay_ms } => {
                    self.delays.entry((key.clone(), *since_revision)).or_insert((ctx.time_us, *delay_ms));
                }
                LockChange::DelayEnded { key, since_revision } => {
                    self.delays_ended += 1;
                    let Some(&(began, ms)) = self.delays.get(&(key.clone(), *since_revision)) else {
                        continue;
                    };
                    // Members' clocks read whole milliseconds: one may read 1 ms more than has passed.
                    if ctx.time_us + 1_000 < began + ms * 1_000 {
                        ctx.fail(
                            Some(node),
                            "locks: no grant during a lock-delay",
                            format!(
                                "the lock-delay of {} ms of {:?} that began at revision {since_revision} (first \
                                 applied at t={:.3}s) ended at t={:.3}s",
                                ms,
                                key.escape_ascii().to_string(),
                                began as f64 / 1e6,
                                ctx.time_us as f64 / 1e6
                            ),
                        );
                    }
                }
                LockChange::Settled { .. } | LockChange::Changed { .. } => {}
            }
        }
    }

    /// Commands member `node` applied: a lock-delay begins only in a member's own command (an
    /// expiry) that ended a session; closes are remembered (their holds end with no delay); a
    /// locker's command, sent again under its request id after a failure, changes something at
    /// one log index at most, and a copy applied at another index is answered what the first
    /// was (from the request memory; the runs never fill it, past which an id is forgotten and
    /// applied again by design).
    pub fn commands(&mut self, ctx: Ctx, node: u64, commands: &[AppliedCommand]) {
        for a in commands {
            if a.request_id.starts_with("locker-") {
                self.took_effect_once(ctx, node, a);
            }
            let ended = a.sessions.iter().any(|c| matches!(c, SessionChange::Ended { .. }));
            if is_close(&a.request_id) {
                for c in &a.sessions {
                    if let SessionChange::Ended { id } = c {
                        self.closed.insert(id.clone(), a.outcome.revision);
                    }
                }
            }
            let own = a.request_id.starts_with("member-");
            for change in &a.locks {
                if let LockChange::DelayStarted { key, since_revision, .. } = change {
                    if !(own && ended) {
                        ctx.fail(
                            Some(node),
                            "locks: a lock-delay follows only an abnormal release",
                            format!(
                                "{:?} entered a lock-delay at revision {since_revision} in command {:?}, which \
                                 ended no session by expiry (sessions: {:?})",
                                key.escape_ascii().to_string(),
                                a.request_id,
                                a.sessions
                            ),
                        );
                    }
                }
            }
        }
    }

    /// A locker's command `a`, applied at member `node`: it changes the state at one log index
    /// at most, and a copy applied at another index is answered what the first was.
    fn took_effect_once(&mut self, ctx: Ctx, node: u64, a: &AppliedCommand) {
        let id = (a.request_id.clone(), a.command_hash);
        if a.events.is_empty() && a.locks.is_empty() {
            let Some((first, answer)) = self.took_effect.get(&id).filter(|(first, _)| *first != a.index)
            else {
                return;
            };
            self.copies_remembered += 1;
            let copy = Outcome { data_omitted: answer.data_omitted, ..a.outcome.clone() };
            if copy != *answer {
                ctx.fail(
                    Some(node),
                    "locks: a request takes effect once",
                    format!(
                        "command {:?}, applied at log index {first} and answered {answer:?}, was answered {:?} \
                         when applied again at {}",
                        a.request_id, a.outcome, a.index
                    ),
                );
            }
            return;
        }
        let first = self.took_effect.entry(id).or_insert_with(|| (a.index, a.outcome.clone())).0;
        if first != a.index {
            ctx.fail(
                Some(node),
                "locks: a request takes effect once",
                format!(
                    "command {:?} changed the state at log index {first} and again at {} (locks {:?}, {} events)",
                    a.request_id,
                    a.index,
                    a.locks,
                    a.events.len()
                ),
            );
        }
    }

    /// `session`'s client sent its close.
    pub fn close_sent(&mut self, session: &str) {
        self.closes_sent.insert(session.to_string());
    }

    /// A member applied the command that made `revision`, at `ctx.time_us`.
    pub fn applied(&mut self, ctx: Ctx, revision: i64) {
        if self.reached.last_key_value().is_none_or(|(r, _)| *r < revision) {
            self.reached.insert(revision, ctx.time_us);
        }
    }

    /// A member applied these (its progress, or the actions made of it) and then died of an
    /// injected fsync failure before they were carried out: what it applied is visible to
    /// readers, and may outlive the crash, so its revisions count as applied now.
    pub fn applied_before_death(&mut self, ctx: Ctx, node: u64, progress: &[Progress], actions: &[Action]) {
        for p in progress {
            self.commands(ctx, node, &p.commands);
        }
        let commands = progress.iter().flat_map(|p| p.commands.iter().map(|c| c.outcome.revision));
        let announced = actions.iter().filter_map(|a| match a {
            Action::Applied { revision, .. } => Some(*revision),
            _ => None,
        });
        for revision in commands.chain(announced) {
            self.applied(ctx, revision);
        }
    }

    /// When some member first applied `revision` (or a later one).
    fn reached_at(&self, revision: i64) -> Option<u64> {
        self.reached.range(revision..).next().map(|(_, t)| *t)
    }

    /// Checks the applied state of every member that applied something since its last check.
    pub fn after_step(&mut self, ctx: Ctx, up: &[(u64, &Core)]) {
        for &(id, core) in up {
            let applied = core.status().applied.index;
            if self.checked.get(&id) == Some(&applied) {
                continue;
            }
            self.checked.insert(id, applied);
            let txn = match core.state_db().begin_read() {
                Ok(t) => t,
                Err(e) => ctx.fail(Some(id), "locks: state readable", e.to_string()),
            };
            let revision = core.status().applied.revision;
            check_bound_keys(ctx, id, &txn);
            let mut holds: Holds = BTreeMap::new();
            for space in [LockSpace::Locks, LockSpace::Elections] {
                let (rows, _) =
                    fsm::locks::list(&txn, space, "", "", usize::MAX, usize::MAX).unwrap_or_else(|e| {
                        ctx.fail(Some(id), "locks: at most one exclusive holder", e.to_string())
                    });
                for (name, row) in rows {
                    let key = lock_key(space, &name);
                    let exclusive =
                        row.holders.iter().filter(|h| h.mode == LockMode::Exclusive as i32).count();
                    if exclusive > 1 || (exclusive == 1 && row.holders.len() > 1) {
                        ctx.fail(
                            Some(id),
                            "locks: at most one exclusive holder",
                            format!("{name:?} is held by {:?}", row.holders),
                        );
                    }
                    let sessions =
                        row.holders.iter().map(|h| &h.session).chain(row.waiters.iter().map(|w| &w.session));
                    for s in sessions {
                        let live = fsm::sessions::read(&txn, s)
                            .unwrap_or_else(|e| ctx.fail(Some(id), "locks: state readable", e.to_string()));
                        if live.is_none() {
                            ctx.fail(
                                Some(id),
                                "locks: a session's end releases its locks and drops its waits",
                                format!("{name:?} is held or awaited by session {s}, which is not live"),
                            );
                        }
                    }
                    if row.delay_revision != 0 && row.holders.iter().any(|h| h.revision >= row.delay_revision)
                    {
                        ctx.fail(
                            Some(id),
                            "locks: no grant during a lock-delay",
                            format!(
                                "{name:?} is in a lock-delay since revision {}: {:?}",
                                row.delay_revision, row.holders
                            ),
                        );
                    }
                    // Grants happen on apply: once a change applied, the head of the queue is one
                    // that must wait (a lock-delay in force, or holders it cannot join).
                    if let Some(head) = row.waiters.first().filter(|_| row.delay_revision == 0) {
                        let joins = if head.mode == LockMode::Shared as i32 {
                            row.holders.iter().all(|h| h.mode == LockMode::Shared as i32)
                        } else {
                            row.holders.is_empty()
                        };
                        if joins {
                            ctx.fail(
                                Some(id),
                                "locks: the queue moves (a grantable head is granted)",
                                format!(
                                    "{name:?} holds {:?} and no lock-delay, but its head request waits: {head:?}",
                                    row.holders
                                ),
                            );
                        }
                    }
                    let queued: BTreeSet<&String> = row.waiters.iter().map(|w| &w.session).collect();
                    self.longest_queue = self.longest_queue.max(queued.len());
                    if row.waiters.windows(2).any(|w| w[1].revision < w[0].revision) {
                        ctx.fail(
                            Some(id),
                            "locks: the queue is FIFO",
                            format!("{name:?} queues requests out of their arrival order: {:?}", row.waiters),
                        );
                    }
                    if self.queue_bound > 0 && row.waiters.len() > self.queue_bound as usize {
                        ctx.fail(
                            Some(id),
                            "locks: no queue holds more than the bound its acquires carry",
                            format!(
                                "{name:?} queues {} requests, past {}: {:?}",
                                row.waiters.len(),
                                self.queue_bound,
                                row.waiters
                            ),
                        );
                    }
                    let ids = row
                        .holders
                        .iter()
                        .map(|h| &h.request_id)
                        .chain(row.waiters.iter().map(|w| &w.request_id));
                    if let Some(request_id) = ids.into_iter().find(|r| self.spent.contains(*r)) {
                        ctx.fail(
                            Some(id),
                            "locks: an acquire withdrawn before it was applied never queues",
                            format!(
                                "{name:?} holds or queues request {request_id}, whose withdrawal came first"
                            ),
                        );
                    }
                    for h in &row.holders {
                        self.grant(ctx, id, &key, &h.session, h.generation, h.revision);
                    }
                    holds.insert(key, row.holders);
                }
            }
            if let Some((since, held)) = self.holds.remove(&id) {
                self.expiries_since(ctx, id, &txn, since, &held, &holds);
            }
            self.holds.insert(id, (revision, holds));
        }
    }

    /// Records the expiries that ended holds member `node` had at revision `since` (`held`) and
    /// no longer has (`now`): a hold gone with its session, whose end the history places, and
    /// which the lock still had just before that end (not released first, in the same window).
    fn expiries_since(
        &mut self,
        ctx: Ctx,
        node: u64,
        txn: &redb::ReadTransaction,
        since: i64,
        held: &Holds,
        now: &Holds,
    ) {
        let storage =
            |e: fsm::FsmError| -> ! { ctx.fail(Some(node), "locks: state readable", e.to_string()) };
        let mut window: Option<Window> = None;
        for (key, holders) in held {
            for h in holders {
                let kept = now.get(key).is_some_and(|hs| hs.iter().any(|n| n.generation == h.generation));
                if kept || h.lock_delay_ms == 0 {
                    continue;
                }
                if fsm::sessions::read(txn, &h.session).unwrap_or_else(|e| storage(e)).is_some() {
                    continue;
                }
                let window =
                    window.get_or_insert_with(|| Window::read(txn, since).unwrap_or_else(|e| storage(e)));
                let Some(&end) = window.session_ends.get(h.session.as_bytes()) else {
                    self.expiries_unplaced += 1;
                    continue;
                };
                // The lock's row as of the revision before the session's end: the last change of
                // the window before it, or (none) the row at `since`, which held `h`.
                let rows = window.lock_rows.get(key);
                let before = rows.and_then(|rows| rows.range(..end).next_back());
                let held_then = match before {
                    None => true,
                    Some((_, None)) => false,
                    Some((_, Some(row))) => row.holders.iter().any(|x| x.generation == h.generation),
                };
                if !held_then {
                    continue;
                }
                if self.closed.get(&h.session) == Some(&end) {
                    // A normal release: the lock is free for the next request at once.
                    let at_end = rows.and_then(|rows| rows.get(&end)).and_then(|row| row.as_ref());
                    if let Some(row) = at_end.filter(|row| row.delay_revision == end) {
                        ctx.fail(
                            Some(node),
                            "locks: a close releases normally (no lock-delay)",
                            format!(
                                "{:?} entered a lock-delay at revision {end}, the close of {}: {row:?}",
                                key.escape_ascii().to_string(),
                                h.session
                            ),
                        );
                    }
                    self.closed_holds.insert((key.clone(), h.generation));
                    continue;
                }
                if self.closes_sent.contains(&h.session) {
                    // Its close may have ended it unreported: not told from an expiry.
                    self.expiries_unplaced += 1;
                    continue;
                }
                if self.expired.entry(key.clone()).or_default().insert((end, h.lock_delay_ms)) {
                    self.expired_holds += 1;
                    // Grants after it seen before it was: checked against it now.
                    let granted: Vec<i64> = self
                        .order
                        .get(key)
                        .map(|o| o.values().copied().filter(|r| *r >= end).collect())
                        .unwrap_or_default();
                    for revision in granted {
                        self.check_delays(ctx, node, key, revision);
                    }
                }
            }
        }
    }

    /// A grant of `key` at `revision` came no earlier than the lock-delay of every hold of the
    /// lock that an expiry ended at or before that revision. Checked once per grant and expiry:
    /// when the later of the two is first seen.
    fn check_delays(&mut self, ctx: Ctx, node: u64, key: &[u8], revision: i64) {
        let Some(expired) = self.expired.get(key) else { return };
        let Some(granted_at) = self.reached_at(revision) else { return };
        for &(end, delay_ms) in expired.range(..=(revision, u64::MAX)) {
            let Some(ended_at) = self.reached_at(end) else { continue };
            if !self.regranted.contains(&(key.to_vec(), end)) {
                self.regranted.insert((key.to_vec(), end));
            }
            // Members' clocks read whole milliseconds: one may read 1 ms more than has passed.
            if granted_at + 1_000 < ended_at + delay_ms * 1_000 {
                ctx.fail(
                    Some(node),
                    "locks: no grant during a lock-delay (from session ends)",
                    format!(
                        "{:?} was granted at revision {revision} (first applied at t={:.3}s), but a hold \
                         with a lock-delay of {delay_ms} ms ended with its session's expiry at revision \
                         {end} (first applied at t={:.3}s)",
                        key.escape_ascii().to_string(),
                        granted_at as f64 / 1e6,
                        ended_at as f64 / 1e6
                    ),
                );
            }
        }
    }

    /// A grant seen in a member's state: the same as every sighting of its generation, and in
    /// revision order with the other grants of its lock.
    fn grant(&mut self, ctx: Ctx, node: u64, key: &[u8], session: &str, generation: u64, revision: i64) {
        let this = (key.to_vec(), session.to_string(), revision);
        match self.grants.get(&generation) {
            Some(seen) if *seen != this => ctx.fail(
                Some(node),
                "locks: a generation names one grant",
                format!("generation {generation} is {this:?} here, {seen:?} elsewhere"),
            ),
            Some(_) => return,
            None => {}
        }
        self.grants.insert(generation, this);
        self.check_delays(ctx, node, key, revision);
        let order = self.order.entry(key.to_vec()).or_default();
        if let Some((before, after)) = out_of_order(order, generation, revision) {
            ctx.fail(
                Some(node),
                "locks: generations strictly increase per lock",
                format!(
                    "{:?}: generation {generation} granted at revision {revision}, but generation {before:?} \
                     and {after:?} (generation, revision) around it",
                    key.escape_ascii().to_string()
                ),
            );
        }
        order.insert(generation, revision);
    }

    /// A withdrawal under `request_id` was applied before any acquire under it.
    pub fn spent(&mut self, request_id: String) {
        self.spent.insert(request_id);
    }

    pub fn spent_ids(&self) -> u64 {
        self.spent.len() as u64
    }

    pub fn grants(&self) -> u64 {
        self.grants.len() as u64
    }
}
