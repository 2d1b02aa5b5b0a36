//! Fencing (DESIGN.md §1 Locks: a sequencer "can be used as a guard in a transaction", so that
//! a paused ex-holder cannot corrupt anything) in the simulator. Lockers send, now and then, a
//! write guarded by a sequencer they were granted (`locks::guarded_write`: a txn whose one
//! compare is the sequencer's validity, EQUAL, and whose success puts the lock's fence key =
//! the generation). Some come from a locker whose session ended while it still believes it
//! holds — its keeper stopped (a dead or paused client) or heard that the session is gone — and
//! some carry a sequencer whose release the locker saw acknowledged (a stale token): the Jepsen
//! scenario. An election's holder sends, half the time, a Proclaim of a value instead (the
//! election's own guarded write: only the leader's sequencer changes the value).
//!
//! Each guarded write is applied by a member in a transaction of its own (the apply thread may
//! end its batches anywhere: `Applier::apply_some`; where they end changes no state), so that the
//! state it is applied to is read just before it. At every member's first application of each
//! (not an answer from the request memory):
//! - It succeeded exactly when, in that state, its sequencer's generation held the lock with the
//!   sequencer's session and mode: no write by a grant that ended, no refusal of one that holds.
//!   A proclaim that succeeded left its value as the election's, held by its generation.
//! - It applied the same way everywhere: one revision and one outcome per request id.
//! - Per lock, the generations written by exclusive holders' writes (and proclaims) that
//!   succeeded never decrease in revision order: what a resource that keeps the highest token it
//!   saw accepts.
//! - A write sent after its session's end was applied (at any member), or after its sequencer's
//!   release was acknowledged, never succeeds: what the client could know when it sent it.
//!
//! At the end: every member's fence keys hold the generation of the last guarded txn that
//! succeeded.

use std::collections::BTreeMap;

use latch::core::{Applier, Core, CoreError, Progress};
use latch::fsm::{self, locks::lock_key, AppliedCommand};
use latch_proto::internal::{
    command::Body, lock_result::Status, outcome, Command, LockHolder, LockMode, LockSpace, Range, Sequencer,
};
use prost::Message as _;
use raft::eraftpb::{Entry, EntryType};
use redb::Database;
use redb::ReadableDatabase as _;

use crate::invariants::{out_of_order, Ctx};
use crate::locks::fence_key;

/// A guarded write as its locker sent it.
#[derive(Debug, Clone)]
struct Guarded {
    locker: usize,
    sequencer: Sequencer,
    /// The value it proclaims, if it is a Proclaim (else a guarded txn).
    proclaimed: Option<Vec<u8>>,
    sent_us: u64,
    /// Why it must be refused, as known when it was sent: its session's end was applied, or its
    /// release was acknowledged, before then.
    stale: Option<String>,
}

/// What a member's state held just before it applied a guarded write.
#[derive(Debug)]
struct Before {
    revision: i64,
    holders: Vec<LockHolder>,
    session_live: bool,
    /// Whether the request memory held the write already (its application is then an answer
    /// from the memory, not a first one).
    remembered: bool,
    /// For a proclaim: the election's leader (generation, value), if any.
    election: Option<(u64, Vec<u8>)>,
}

/// A guarded write's first application: where, at which revision, and whether it succeeded.
#[derive(Debug, Clone, Copy)]
struct FirstApplication {
    node: u64,
    revision: i64,
    succeeded: bool,
}

/// The fencing invariants (see the module doc).
#[derive(Debug, Default)]
pub struct FenceChecker {
    /// Guarded writes sent, by request id.
    sent: BTreeMap<String, Guarded>,
    /// Their first applications, by request id.
    applied: BTreeMap<String, FirstApplication>,
    /// Per fence key of an exclusive hold: revision → generation of each guarded txn that
    /// succeeded (what the key holds at the end).
    writes: BTreeMap<Vec<u8>, BTreeMap<i64, u64>>,
    /// Likewise, with the proclaims that succeeded too (their order).
    ordered: BTreeMap<Vec<u8>, BTreeMap<i64, u64>>,
    /// Guarded writes that succeeded; refused because their session had ended; refused while
    /// their session lived (the grant was released).
    pub succeeded: u64,
    pub refused_session_ended: u64,
    pub refused_released: u64,
    /// Of them, proclaims that succeeded, and that were refused.
    pub proclaims_succeeded: u64,
    pub proclaims_refused: u64,
}

impl FenceChecker {
    /// Locker `locker` sent, at `ctx.time_us`, the write guarded by `sequencer` under
    /// `request_id` (a proclaim of `proclaimed`, or a guarded txn); `released_at`: when it saw
    /// the sequencer's release acknowledged, and `session_ended_at`: when a member first applied
    /// the end of its session, if they happened.
    #[allow(clippy::too_many_arguments)]
    pub fn sent(
        &mut self,
        ctx: Ctx,
        locker: usize,
        request_id: &str,
        sequencer: &Sequencer,
        proclaimed: Option<&[u8]>,
        released_at: Option<u64>,
        session_ended_at: Option<u64>,
    ) {
        let at = |t: u64| format!("t={:.3}s", t as f64 / 1e6);
        let stale = match (released_at, session_ended_at) {
            (Some(t), _) => Some(format!("its release was acknowledged at {}", at(t))),
            (None, Some(t)) => Some(format!("the end of its session was applied at {}", at(t))),
            (None, None) => None,
        };
        let guarded = Guarded {
            locker,
            sequencer: sequencer.clone(),
            proclaimed: proclaimed.map(<[u8]>::to_vec),
            sent_us: ctx.time_us,
            stale,
        };
        self.sent.insert(request_id.to_string(), guarded);
    }

    /// Applies `entries` at member `node` through `applier` as the apply thread does, except that
    /// each guarded write is applied in a transaction of its own, and checked against the state
    /// `db` holds just before it; the progress of each transaction, in order — and, if one
    /// failed (an injected fsync failure), the error, with the progress of those before it
    /// (applied, and visible to readers).
    pub fn apply(
        &mut self,
        ctx: Ctx,
        node: u64,
        applier: &mut Applier,
        db: &Database,
        entries: Vec<Entry>,
    ) -> (Vec<Progress>, Result<(), CoreError>) {
        let mut progress = Vec::new();
        let result = self.apply_into(ctx, node, applier, db, entries, &mut progress);
        (progress, result)
    }

    fn apply_into(
        &mut self,
        ctx: Ctx,
        node: u64,
        applier: &mut Applier,
        db: &Database,
        entries: Vec<Entry>,
        progress: &mut Vec<Progress>,
    ) -> Result<(), CoreError> {
        let mut batch = Vec::new();
        for e in entries {
            let Some(request_id) = self.guarded_id(&e) else {
                batch.push(e);
                continue;
            };
            if !batch.is_empty() {
                progress.push(applier.apply(std::mem::take(&mut batch), &mut ())?);
            }
            let before = self.state_before(ctx, node, db, &request_id);
            let p = applier.apply(vec![e], &mut ())?;
            // None: a snapshot covered the entry, so it was not applied here.
            if let Some(c) = p.commands.first() {
                if let Some(succeeded) = self.applied(ctx, node, &request_id, &before, c) {
                    self.election_after(ctx, node, &request_id, db, c, (succeeded, &before));
                }
            }
            progress.push(p);
        }
        if !batch.is_empty() {
            progress.push(applier.apply(batch, &mut ())?);
        }
        Ok(())
    }

    /// The request id of a guarded write a locker sent, if `e` is one.
    fn guarded_id(&self, e: &Entry) -> Option<String> {
        if self.sent.is_empty() || e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
            return None;
        }
        let cmd = Command::decode(&e.data[..]).ok()?;
        (matches!(cmd.body, Some(Body::Txn(_) | Body::Proclaim(_)))
            && self.sent.contains_key(&cmd.request_id))
        .then_some(cmd.request_id)
    }

    fn state_before(&self, ctx: Ctx, node: u64, db: &Database, request_id: &str) -> Before {
        let seq = &self.sent[request_id].sequencer;
        let space = LockSpace::try_from(seq.space).unwrap_or(LockSpace::Locks);
        let read = || -> Result<Before, String> {
            let txn = db.begin_read().map_err(|e| e.to_string())?;
            let revision = fsm::applied(&txn).map_err(|e| e.to_string())?.revision;
            let row = fsm::locks::read(&txn, &lock_key(space, &seq.name)).map_err(|e| e.to_string())?;
            let session = fsm::sessions::read(&txn, &seq.session).map_err(|e| e.to_string())?;
            let remembered = fsm::remembered(&txn, request_id).map_err(|e| e.to_string())?;
            let election = match self.sent[request_id].proclaimed {
                Some(_) => election(&txn, &seq.name)?,
                None => None,
            };
            Ok(Before {
                revision,
                holders: row.map(|r| r.holders).unwrap_or_default(),
                session_live: session.is_some(),
                remembered,
                election,
            })
        };
        read().unwrap_or_else(|e| ctx.fail(Some(node), "fencing: state readable", e))
    }

    /// Member `node` applied guarded write `request_id` as `c`, on the state `before`; whether
    /// it succeeded, when this was its first application there (not an answer from the
    /// request memory).
    fn applied(
        &mut self,
        ctx: Ctx,
        node: u64,
        request_id: &str,
        before: &Before,
        c: &AppliedCommand,
    ) -> Option<bool> {
        let g = &self.sent[request_id];
        let seq = &g.sequencer;
        let what = || {
            format!(
                "guarded write {request_id} of locker {} (generation {} of {:?} {:?}, {:?}, session {}; sent at \
                 t={:.3}s)",
                g.locker,
                seq.generation,
                LockSpace::try_from(seq.space).unwrap_or(LockSpace::Locks),
                seq.name,
                LockMode::try_from(seq.mode).unwrap_or(LockMode::Exclusive),
                seq.session,
                g.sent_us as f64 / 1e6
            )
        };
        let succeeded = match (&c.outcome.result, &g.proclaimed) {
            (Some(outcome::Result::Txn(t)), None) => t.succeeded,
            (Some(outcome::Result::Lock(r)), Some(_)) if r.status == Status::Done as i32 => true,
            (Some(outcome::Result::Lock(r)), Some(_)) if r.status == Status::NotHeld as i32 => false,
            (other, proclaimed) => ctx.fail(
                Some(node),
                "fencing: a guarded write is applied as what it is",
                format!(
                    "{} was answered {other:?}, expected {}",
                    what(),
                    if proclaimed.is_some() { "a proclaim's DONE or NOT_HELD" } else { "a txn result" }
                ),
            ),
        };
        let revision = c.outcome.revision;
        let first = !before.remembered;
        let recorded = self.applied.get(request_id).copied();
        if let Some(a) = recorded.filter(|a| (a.revision, a.succeeded) != (revision, succeeded)) {
            ctx.fail(
                Some(node),
                "fencing: a guarded write applies once, the same way on every member",
                format!(
                    "{} {} at revision {revision} here ({}), but {} at revision {} on node {}",
                    what(),
                    verb(succeeded),
                    if first { "applied" } else { "answered from the request memory" },
                    verb(a.succeeded),
                    a.revision,
                    a.node
                ),
            );
        }
        if !first {
            // Answered from the request memory: the outcome of its first application.
            return None;
        }
        if revision != before.revision + i64::from(succeeded) {
            ctx.fail(
                Some(node),
                "fencing: a guarded write raises one revision when it succeeds, none when refused",
                format!(
                    "{} {} at revision {revision}, on a state at revision {}",
                    what(),
                    verb(succeeded),
                    before.revision
                ),
            );
        }
        let holding = before.holders.iter().any(|h| holds(h, seq));
        if succeeded != holding {
            let holders: Vec<String> = before
                .holders
                .iter()
                .map(|h| {
                    let mode = LockMode::try_from(h.mode).unwrap_or(LockMode::Exclusive);
                    format!("generation {} ({mode:?}, session {})", h.generation, h.session)
                })
                .collect();
            let (invariant, expected) = if succeeded {
                ("fencing: a guarded write succeeds only while its sequencer holds the lock", "refused")
            } else {
                ("fencing: a guarded write of a holder is not refused", "to succeed")
            };
            ctx.fail(
                Some(node),
                invariant,
                format!(
                    "{} {} at revision {revision}, expected {expected}: the state it was applied to (revision {}) \
                     had holders {holders:?}, and its session {}",
                    what(),
                    verb(succeeded),
                    before.revision,
                    if before.session_live { "lived" } else { "had ended" }
                ),
            );
        }
        if succeeded {
            if let Some(why) = &g.stale {
                ctx.fail(
                    Some(node),
                    "fencing: a write guarded by a grant known to have ended never succeeds",
                    format!("{} succeeded at revision {revision}, yet it was sent after {why}", what()),
                );
            }
        }
        if recorded.is_some() {
            return Some(succeeded);
        }
        self.applied.insert(request_id.to_string(), FirstApplication { node, revision, succeeded });
        match (succeeded, before.session_live) {
            (true, _) => self.succeeded += 1,
            (false, false) => self.refused_session_ended += 1,
            (false, true) => self.refused_released += 1,
        }
        if g.proclaimed.is_some() {
            *(if succeeded { &mut self.proclaims_succeeded } else { &mut self.proclaims_refused }) += 1;
        }
        if succeeded && seq.mode == LockMode::Exclusive as i32 {
            self.written(ctx, node, request_id, revision, seq.generation);
        }
        Some(succeeded)
    }

    /// After member `node` first applied guarded write `request_id` as `c` (`succeeded` or not,
    /// on the state `before`): if a proclaim, the election's leader in `db` is then the
    /// proclaim's generation with its value when it succeeded, and as it was before when refused.
    fn election_after(
        &self,
        ctx: Ctx,
        node: u64,
        request_id: &str,
        db: &Database,
        c: &AppliedCommand,
        (succeeded, before): (bool, &Before),
    ) {
        let g = &self.sent[request_id];
        let Some(value) = &g.proclaimed else { return };
        let found = db
            .begin_read()
            .map_err(|e| e.to_string())
            .and_then(|txn| election(&txn, &g.sequencer.name))
            .unwrap_or_else(|e| ctx.fail(Some(node), "fencing: state readable", e));
        let (invariant, expected) = if succeeded {
            (
                "fencing: a proclaim that succeeded sets its election's value",
                Some((g.sequencer.generation, value.clone())),
            )
        } else {
            ("fencing: a refused proclaim changes nothing", before.election.clone())
        };
        if found != expected {
            let show = |e: &Option<(u64, Vec<u8>)>| {
                e.as_ref().map(|(g, v)| (*g, String::from_utf8_lossy(v).into_owned()))
            };
            ctx.fail(
                Some(node),
                invariant,
                format!(
                    "proclaim {request_id} of generation {} of election {:?} {} at revision {}: the election's \
                     (generation, value) is then {:?}, expected {:?}",
                    g.sequencer.generation,
                    g.sequencer.name,
                    verb(succeeded),
                    c.outcome.revision,
                    show(&found),
                    show(&expected)
                ),
            );
        }
    }

    /// An exclusive holder's guarded write (or proclaim) succeeded with `generation` at
    /// `revision`: in revision order with the other writes under its lock, generations never
    /// decrease.
    fn written(&mut self, ctx: Ctx, node: u64, request_id: &str, revision: i64, generation: u64) {
        let g = &self.sent[request_id];
        let key = fence_key(&g.sequencer);
        if g.proclaimed.is_none() {
            self.writes.entry(key.clone()).or_default().insert(revision, generation);
        }
        let writes = self.ordered.entry(key.clone()).or_default();
        if let Some((before, after)) = out_of_order(writes, revision, generation) {
            ctx.fail(
                Some(node),
                "fencing: the generation a lock's guarded writes put never decreases",
                format!(
                    "{} got generation {generation} at revision {revision} (request {request_id}); the writes around \
                     it (revision, generation) are {before:?} and {after:?}",
                    String::from_utf8_lossy(&key)
                ),
            );
        }
        writes.insert(revision, generation);
    }

    /// At the end: every member's fence keys hold the generation of the last guarded txn that
    /// succeeded.
    pub fn check_final(&self, ctx: Ctx, up: &[(u64, &Core)]) {
        for (key, writes) in &self.writes {
            let Some((&revision, &generation)) = writes.last_key_value() else { continue };
            for &(id, core) in up {
                let req = Range { key: key.clone(), ..Default::default() };
                let found = core
                    .state_db()
                    .begin_read()
                    .map_err(|e| e.to_string())
                    .and_then(|txn| fsm::range(&txn, &req, 1 << 20).map_err(|e| e.to_string()))
                    .unwrap_or_else(|e| ctx.fail(Some(id), "fencing: state readable", e));
                let kv = found.1.kvs.into_iter().next();
                let held =
                    kv.as_ref().map(|kv| (kv.mod_revision, String::from_utf8_lossy(&kv.value).into_owned()));
                if held != Some((revision, generation.to_string())) {
                    ctx.fail(
                        Some(id),
                        "fencing: the fence key holds the last guarded write that succeeded",
                        format!(
                            "{} holds (mod revision, value) {held:?}, expected ({revision}, {generation:?})",
                            String::from_utf8_lossy(key)
                        ),
                    );
                }
            }
        }
    }

    /// Guarded writes sent.
    pub fn sent_count(&self) -> u64 {
        self.sent.len() as u64
    }
}

/// Election `name`'s leader as (generation, value), if it has one.
fn election(txn: &redb::ReadTransaction, name: &str) -> Result<Option<(u64, Vec<u8>)>, String> {
    let leader = fsm::elections::leader(txn, name).map_err(|e| e.to_string())?;
    Ok(leader.map(|l| (l.sequencer.generation, l.value)))
}

/// Whether `holder` is the grant `seq` names (its generation, session and mode).
fn holds(holder: &LockHolder, seq: &Sequencer) -> bool {
    holder.generation == seq.generation && holder.session == seq.session && holder.mode == seq.mode
}

fn verb(succeeded: bool) -> &'static str {
    if succeeded {
        "succeeded"
    } else {
        "was refused"
    }
}

/// The checker itself, on hand-made applications: it accepts what fencing allows and fails what
/// it forbids.
mod checker {
    use super::*;
    use latch_proto::internal::{LockResult, Outcome, TxnResult};

    const SESSION: &str = "session-0";

    fn ctx(ms: u64) -> Ctx {
        Ctx { seed: 0, step: 0, time_us: ms * 1_000 }
    }

    fn seq(generation: u64) -> Sequencer {
        Sequencer {
            space: LockSpace::Locks as i32,
            name: "a".into(),
            mode: LockMode::Exclusive as i32,
            generation,
            session: SESSION.into(),
        }
    }

    fn holder(generation: u64) -> LockHolder {
        LockHolder {
            session: SESSION.into(),
            mode: LockMode::Exclusive as i32,
            generation,
            ..Default::default()
        }
    }

    /// The state at `revision`, held by `holders`, its session live or not.
    fn state(revision: i64, holders: &[u64], session_live: bool) -> Before {
        Before {
            revision,
            holders: holders.iter().map(|&g| holder(g)).collect(),
            session_live,
            remembered: false,
            election: None,
        }
    }

    /// The first application of `request_id` on `before`: at the next revision if it succeeded.
    fn txn(request_id: &str, before: &Before, succeeded: bool) -> AppliedCommand {
        AppliedCommand {
            index: before.revision as u64 + 1,
            term: 1,
            request_id: request_id.into(),
            command_hash: 0,
            outcome: Outcome {
                revision: before.revision + i64::from(succeeded),
                result: Some(outcome::Result::Txn(TxnResult { succeeded, results: Vec::new() })),
                ..Default::default()
            },
            events: Vec::new(),
            sessions: Vec::new(),
            locks: Vec::new(),
            instances: Vec::new(),
        }
    }

    /// Sends guarded write `request_id` of generation `generation` at `ms`, then applies it on
    /// member 1 on `before`.
    fn write(
        c: &mut FenceChecker,
        ms: u64,
        request_id: &str,
        generation: u64,
        before: Before,
        succeeded: bool,
    ) {
        c.sent(ctx(ms), 0, request_id, &seq(generation), None, None, None);
        c.applied(ctx(ms + 1), 1, request_id, &before, &txn(request_id, &before, succeeded));
    }

    #[test]
    fn a_holders_write_succeeds_and_ended_grants_writes_are_refused() {
        let mut c = FenceChecker::default();
        write(&mut c, 0, "w1", 1, state(10, &[1], true), true);
        write(&mut c, 10, "w2", 1, state(12, &[2], true), false);
        write(&mut c, 20, "w3", 2, state(14, &[2], true), true);
        write(&mut c, 30, "w4", 2, state(16, &[], false), false);
        // Another member applies w3 the same way; a retry of it is answered from the memory.
        c.applied(ctx(40), 2, "w3", &state(14, &[2], true), &txn("w3", &state(14, &[2], true), true));
        let remembered = Before { remembered: true, ..state(20, &[], false) };
        c.applied(ctx(50), 1, "w3", &remembered, &txn("w3", &state(14, &[2], true), true));
        let counts = (c.succeeded, c.refused_released, c.refused_session_ended);
        assert_eq!(
            counts,
            (2, 1, 1),
            "(succeeded, refused after a release, refused after the session's end)"
        );
    }

    #[test]
    #[should_panic(expected = "a guarded write succeeds only while its sequencer holds the lock")]
    fn a_write_that_succeeds_after_its_grant_ended_fails() {
        let mut c = FenceChecker::default();
        write(&mut c, 0, "w1", 1, state(10, &[2], true), true);
    }

    #[test]
    #[should_panic(expected = "a guarded write of a holder is not refused")]
    fn a_holders_write_that_is_refused_fails() {
        let mut c = FenceChecker::default();
        write(&mut c, 0, "w1", 1, state(10, &[1], true), false);
    }

    #[test]
    #[should_panic(expected = "a write guarded by a grant known to have ended never succeeds")]
    fn a_write_sent_after_its_sessions_end_that_succeeds_fails() {
        let mut c = FenceChecker::default();
        c.sent(ctx(100), 0, "w1", &seq(1), None, None, Some(50_000));
        // Even where the state (wrongly) still shows the grant.
        let before = state(10, &[1], true);
        c.applied(ctx(101), 1, "w1", &before, &txn("w1", &before, true));
    }

    #[test]
    #[should_panic(expected = "the generation a lock's guarded writes put never decreases")]
    fn a_lower_generation_written_after_a_higher_one_fails() {
        let mut c = FenceChecker::default();
        write(&mut c, 0, "w1", 2, state(10, &[2], true), true);
        write(&mut c, 10, "w2", 1, state(12, &[1], true), true);
    }

    /// Proclaim `request_id` of generation `generation` sent at `ms` and applied on member 1
    /// on `before`, answered `status`.
    fn proclaim(
        c: &mut FenceChecker,
        ms: u64,
        request_id: &str,
        generation: u64,
        before: Before,
        status: Status,
    ) {
        let mut election = seq(generation);
        election.space = LockSpace::Elections as i32;
        c.sent(ctx(ms), 0, request_id, &election, Some(b"v"), None, None);
        let mut applied = txn(request_id, &before, status == Status::Done);
        let result = LockResult { status: status as i32, ..Default::default() };
        applied.outcome.result = Some(outcome::Result::Lock(result));
        c.applied(ctx(ms + 1), 1, request_id, &before, &applied);
    }

    #[test]
    fn a_leaders_proclaim_succeeds_and_an_ended_leaderships_is_refused() {
        let mut c = FenceChecker::default();
        proclaim(&mut c, 0, "p1", 1, state(10, &[1], true), Status::Done);
        proclaim(&mut c, 10, "p2", 1, state(11, &[2], true), Status::NotHeld);
        assert_eq!((c.proclaims_succeeded, c.proclaims_refused), (1, 1));
    }

    #[test]
    #[should_panic(expected = "a guarded write succeeds only while its sequencer holds the lock")]
    fn a_proclaim_that_succeeds_after_its_leadership_ended_fails() {
        let mut c = FenceChecker::default();
        proclaim(&mut c, 0, "p1", 1, state(10, &[2], true), Status::Done);
    }

    #[test]
    #[should_panic(expected = "a guarded write is applied as what it is")]
    fn a_proclaim_answered_otherwise_than_done_or_not_held_fails() {
        let mut c = FenceChecker::default();
        proclaim(&mut c, 0, "p1", 1, state(10, &[1], true), Status::Granted);
    }

    #[test]
    #[should_panic(expected = "a guarded write raises one revision when it succeeds, none when refused")]
    fn a_refused_write_that_raises_a_revision_fails() {
        let mut c = FenceChecker::default();
        let before = state(10, &[2], true);
        let mut refused = txn("w1", &before, false);
        refused.outcome.revision = 11;
        c.sent(ctx(0), 0, "w1", &seq(1), None, None, None);
        c.applied(ctx(1), 1, "w1", &before, &refused);
    }

    #[test]
    #[should_panic(expected = "a guarded write applies once, the same way on every member")]
    fn a_write_applied_differently_on_two_members_fails() {
        let mut c = FenceChecker::default();
        write(&mut c, 0, "w1", 1, state(10, &[1], true), true);
        c.applied(ctx(20), 2, "w1", &state(10, &[], true), &txn("w1", &state(10, &[], true), false));
    }
}
