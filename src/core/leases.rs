//! Session leases on this member's clock (DESIGN.md §1 Sessions, §2 rule 3; docs/sessions.md).
//!
//! The replicated state says, for each session, its TTL and the lease it had left at its last
//! checkpoint, which the leader measured on its own clock and wrote with that clock's reading
//! (`CheckpointSessions.leader_ms`). Only the leader acts on leases: it answers keepalives,
//! proposes checkpoints and expiries. Every member counts leases on its own monotonic clock.
//!
//! Whose clock: a lease from a checkpoint runs out at `leader_ms + remaining` on the leader's
//! clock. Another member converts that reading with an estimate of how far its clock is
//! ahead of that leader's: the least `applied at − leader_ms` over the checkpoints of that
//! term it applied. Each sample is at least the true offset (a checkpoint is applied after it
//! was proposed), so the estimate never makes a lease end early, and one checkpoint applied
//! promptly makes it tight — the leader proposes one at least every election timeout while
//! sessions live, so a member that lagged behind (cut off, or catching up) is tight again as
//! soon as it hears a recent one. A session's creation counts from when the leader appended it,
//! or from when another member applied it.
//!
//! Invariants (the lease rule):
//! - A keepalive is granted no more than what the log already guarantees: `deadline − now`
//!   from the last applied checkpoint (or the creation). Every member's deadline for the same
//!   entry is at least as late, so no later leader expires the session before a grant ran out
//!   (counted from when the client sent the keepalive, which is before it arrived). A
//!   keepalive that finds less than half the TTL left puts the session in the next checkpoint
//!   and is answered once it is applied.
//! - A leader acts only once it has applied every entry of earlier terms (`Core` tells it:
//!   [`Leases::promoted`]); its first act re-bases every lease in a checkpoint of its own term,
//!   so that the newest basis of every lease is a recent reading of a live leader's clock. Until
//!   a lease is based on its own reading, a keepalive of it waits for that checkpoint: its view
//!   of another leader's reading may be looser than the next leader's, and a grant from it
//!   could outlast what the next leader honours.
//! - The leader expires a session only when its deadline has passed and no checkpoint of it is
//!   in flight; the expiry names the session's checkpoint count, so a checkpoint that commits
//!   first wins (see `fsm::sessions`).
//! - Nothing extends a lease but a keepalive: leader changes carry deadlines over, off by the
//!   offset estimate's error at most (the delay of the freshest checkpoint's application).
//! - Nothing moves a lease back either: a checkpoint applied after one with a later deadline
//!   (it was read earlier, and handed to raft again) leaves the later deadline.
//! - Memory: one entry per live session, one offset per term seen since the start (terms change
//!   only on elections); waiting keepalives, in-flight checkpoints and expiries are bounded by
//!   the sessions and time out.

use std::collections::{BTreeMap, BTreeSet};

use latch_proto::internal::{command::Body, CheckpointSessions, ExpireSession, SessionLease};

use super::{RequestError, Waiter};
use crate::fsm::SessionChange;

/// Most leases one checkpoint entry carries (≈ 50 bytes each); the rest go in the next one.
pub const MAX_LEASES_PER_CHECKPOINT: usize = 4096;
/// Most expiries proposed in one turn.
const MAX_EXPIRIES_PER_TURN: usize = 1024;
/// Offsets kept for this many terms at most (the oldest are forgotten: a lease whose basis
/// is that old has been re-based by every leader since).
const MAX_TERMS: usize = 64;

/// A session's lease as the state stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: String,
    pub ttl_ms: u64,
    /// Left at the reading `leader_ms` of the clock of the leader of `term` (0: never
    /// checkpointed; left since its creation).
    pub remaining_ms: u64,
    pub checkpoints: u64,
    pub term: u64,
    pub leader_ms: u64,
}

/// What a keepalive is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub ttl_ms: u64,
    /// The session is not expired before this many milliseconds from when the keepalive was
    /// sent.
    pub granted_ms: u64,
}

/// Where a lease's count starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Basis {
    /// A reading of this member's clock.
    Local(u64),
    /// A reading of the clock of the leader of `term`.
    Leader { term: u64, leader_ms: u64 },
    /// A reading of the clock of the leader of `term`, loaded from the state at `at` on this
    /// member's clock (a start, a snapshot): counted from the reading once this member knows
    /// that leader's offset, and never later than from `at`.
    Loaded { term: u64, leader_ms: u64, at: u64 },
}

#[derive(Debug, Clone)]
struct Lease {
    ttl_ms: u64,
    basis: Basis,
    /// Left at `basis`.
    remaining_ms: u64,
    /// Its checkpoint count in the replicated state.
    checkpoints: u64,
    /// Leader only: when the last keepalive arrived, if one did in this term.
    renewed_at: Option<u64>,
    /// Leader only: the basis is this leader's own reading (its checkpoint, or a creation it
    /// appended), so every other member's deadline is at least as late. Until it is, a
    /// keepalive waits for the re-basing checkpoint: this member's view of another leader's
    /// reading may be looser than the next leader's.
    exact: bool,
}

/// The leases of every live session, as this member counts them.
#[derive(Debug, Default)]
pub struct Leases {
    sessions: BTreeMap<String, Lease>,
    /// How far this member's clock is ahead of the leader of each term (at most; see the
    /// module doc). Signed: clocks start anywhere.
    offsets: BTreeMap<u64, i64>,
    /// The term this member leads in, if it does.
    leading: Option<u64>,
    /// Leader only (after [`Leases::promoted`]): (deadline, id) of every session.
    by_deadline: BTreeSet<(u64, String)>,
    /// Leader only: sessions to put in the next checkpoint.
    to_checkpoint: BTreeSet<String>,
    /// Leader only: sessions in a proposed checkpoint not applied yet, since when.
    checkpointing: BTreeMap<String, u64>,
    /// Leader only: sessions whose proposed expiry is not applied yet, since when.
    expiring: BTreeMap<String, u64>,
    /// Leader only: when it last proposed a checkpoint.
    last_checkpoint: u64,
    /// Keepalives waiting for their session's checkpoint: (waiter, arrived at).
    waiting: BTreeMap<String, Vec<(Waiter, u64)>>,
}

type Replies = Vec<(Waiter, Result<Grant, RequestError>)>;

impl Leases {
    /// Forgets every lease and loads `sessions` as read from the state at `now`: at start, and
    /// after a snapshot replaced the state. Waiting keepalives are answered not found.
    pub fn reload(&mut self, sessions: impl IntoIterator<Item = Stored>, now: u64) -> Replies {
        let replies = self.fail_waiting(|id| RequestError::SessionNotFound { session: id.to_string() });
        let leading = self.leading;
        *self = Leases { offsets: std::mem::take(&mut self.offsets), ..Leases::default() };
        for st in sessions {
            let basis = match st.term {
                0 => Basis::Local(now),
                term => Basis::Loaded { term, leader_ms: st.leader_ms, at: now },
            };
            let lease = Lease {
                ttl_ms: st.ttl_ms,
                basis,
                remaining_ms: st.remaining_ms,
                checkpoints: st.checkpoints,
                renewed_at: None,
                exact: false,
            };
            self.sessions.insert(st.id, lease);
        }
        if let Some(term) = leading {
            self.promoted(term, now);
        }
        replies
    }

    /// The member's clock starts at `at`: leases loaded before it, counted from 0, count from
    /// `at` instead.
    pub fn clock_started(&mut self, at: u64) {
        for lease in self.sessions.values_mut() {
            match &mut lease.basis {
                Basis::Local(t) | Basis::Loaded { at: t, .. } => *t += at,
                Basis::Leader { .. } => {}
            }
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The lease left of session `id` at `now`, if it is live here.
    pub fn remaining(&self, id: &str, now: u64) -> Option<u64> {
        self.sessions.get(id).map(|l| self.deadline(l).saturating_sub(now))
    }

    /// When `lease` runs out on this member's clock.
    fn deadline(&self, lease: &Lease) -> u64 {
        let start = match lease.basis {
            Basis::Local(at) => at,
            Basis::Leader { term, .. } | Basis::Loaded { term, .. } if self.leading == Some(term) => {
                self.leader_ms(lease)
            }
            Basis::Leader { term, leader_ms } => {
                // Every applied checkpoint of a term left a sample first; a forgotten term
                // counts from its reading as if the clocks agreed at the latest sample known.
                let offset = self.offsets.get(&term).copied().unwrap_or_else(|| self.latest_offset());
                (leader_ms as i64).saturating_add(offset).max(0) as u64
            }
            Basis::Loaded { term, leader_ms, at } => match self.offsets.get(&term) {
                Some(offset) => at.min((leader_ms as i64).saturating_add(*offset).max(0) as u64),
                None => at,
            },
        };
        start.saturating_add(lease.remaining_ms)
    }

    fn leader_ms(&self, lease: &Lease) -> u64 {
        match lease.basis {
            Basis::Leader { leader_ms, .. } | Basis::Loaded { leader_ms, .. } => leader_ms,
            Basis::Local(at) => at,
        }
    }

    /// The offset of the newest term known, the safest guess for a forgotten one: the
    /// largest is taken, so that no lease ends earlier than with the true one.
    fn latest_offset(&self) -> i64 {
        self.offsets.values().copied().max().unwrap_or(0)
    }

    /// Applies what a command of `term` did to sessions; `learned_at` is when this member
    /// learned the entry (see the module doc), `now` its clock. Returns the answers of
    /// keepalives that waited for it.
    pub fn changed(&mut self, change: SessionChange, term: u64, learned_at: u64, now: u64) -> Replies {
        match change {
            SessionChange::Clock { leader_ms } => {
                if self.leading != Some(term) {
                    let sample = (now as i64).saturating_sub(leader_ms as i64);
                    let offset = self.offsets.entry(term).or_insert(sample);
                    *offset = (*offset).min(sample);
                    while self.offsets.len() > MAX_TERMS {
                        self.offsets.pop_first();
                    }
                }
                Vec::new()
            }
            SessionChange::Started { id, ttl_ms } => {
                let lease = Lease {
                    ttl_ms,
                    basis: Basis::Local(learned_at),
                    remaining_ms: ttl_ms,
                    checkpoints: 0,
                    renewed_at: None,
                    // Applied while leading: this leader appended it (promotion waits for every
                    // entry of earlier terms), and counts it from its append.
                    exact: self.leading.is_some(),
                };
                self.set(id, lease);
                Vec::new()
            }
            SessionChange::Renewed { id, ttl_ms, remaining_ms, checkpoints, leader_ms } => {
                self.checkpointing.remove(&id);
                // An expiry in flight names an older count: it will be a no-op.
                self.expiring.remove(&id);
                let renewed_at = self.sessions.get(&id).and_then(|l| l.renewed_at);
                let mut lease = Lease {
                    ttl_ms,
                    basis: Basis::Leader { term, leader_ms },
                    remaining_ms,
                    checkpoints,
                    renewed_at,
                    exact: self.leading == Some(term),
                };
                // A checkpoint read earlier can be applied after one read later (a proposal
                // handed to raft again): a lease never moves back; the grants the later
                // reading gave stand.
                if let Some(old) = self.sessions.get(&id) {
                    if self.deadline(old) > self.deadline(&lease) {
                        lease = Lease { checkpoints, ..old.clone() };
                    }
                }
                let deadline = self.deadline(&lease);
                let grant = Grant { ttl_ms, granted_ms: deadline.saturating_sub(now) };
                // A keepalive that arrived while another checkpoint was in flight is not in it:
                // it waits for one of its own.
                let uncovered = lease.renewed_at.is_some_and(|at| at + ttl_ms > deadline);
                self.set(id.clone(), lease);
                if uncovered && self.leading.is_some() && self.waiting.contains_key(&id) {
                    self.to_checkpoint.insert(id);
                    return Vec::new();
                }
                self.waiting
                    .remove(&id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(w, _)| (w, Ok(grant)))
                    .collect()
            }
            SessionChange::Ended { id } => {
                if let Some(l) = self.sessions.remove(&id) {
                    let deadline = self.deadline(&l);
                    self.by_deadline.remove(&(deadline, id.clone()));
                }
                self.to_checkpoint.remove(&id);
                self.checkpointing.remove(&id);
                self.expiring.remove(&id);
                let gone = RequestError::SessionNotFound { session: id.clone() };
                self.waiting
                    .remove(&id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(w, _)| (w, Err(gone.clone())))
                    .collect()
            }
        }
    }

    /// This member leads in `term` and has applied every entry of earlier terms: from now on
    /// it answers keepalives and tends leases, and every lease is re-based in its next
    /// checkpoint.
    pub fn promoted(&mut self, term: u64, now: u64) {
        self.leading = Some(term);
        for lease in self.sessions.values_mut() {
            lease.exact = false;
        }
        self.by_deadline = self.sessions.iter().map(|(id, l)| (self.deadline(l), id.clone())).collect();
        self.to_checkpoint = self.sessions.keys().cloned().collect();
        self.last_checkpoint = now;
    }

    /// This member no longer leads (or leads in a new term, not yet promoted): what only a
    /// leader keeps is dropped, and waiting keepalives are answered `NotLeader`.
    pub fn demoted(&mut self, member: u64, leader: u64) -> Replies {
        if let Some(term) = self.leading.take() {
            // Its own readings become another leader's: its clock is exactly its own.
            self.offsets.insert(term, 0);
        }
        self.by_deadline.clear();
        self.to_checkpoint.clear();
        self.checkpointing.clear();
        self.expiring.clear();
        for lease in self.sessions.values_mut() {
            lease.renewed_at = None;
        }
        self.fail_waiting(|_| RequestError::NotLeader { member, leader })
    }

    /// A keepalive on the promoted leader at `now`: answered at once, or `None` when it waits
    /// for a checkpoint.
    pub fn keep_alive(&mut self, waiter: Waiter, id: &str, now: u64) -> Option<Result<Grant, RequestError>> {
        let gone = || RequestError::SessionNotFound { session: id.to_string() };
        let Some(lease) = self.sessions.get(id) else { return Some(Err(gone())) };
        let deadline = self.deadline(lease);
        if deadline <= now {
            // Its lease ran out: no grant can be given from the log any more.
            return Some(Err(gone()));
        }
        let (ttl_ms, exact) = (lease.ttl_ms, lease.exact);
        if let Some(lease) = self.sessions.get_mut(id) {
            lease.renewed_at = Some(now);
        }
        let left = deadline - now;
        if exact && left >= ttl_ms / 2 {
            return Some(Ok(Grant { ttl_ms, granted_ms: left }));
        }
        if !self.checkpointing.contains_key(id) {
            self.to_checkpoint.insert(id.to_string());
        }
        self.waiting.entry(id.to_string()).or_default().push((waiter, now));
        None
    }

    /// The promoted leader's work at `now`: the commands to propose — a checkpoint of the
    /// leases to renew or re-base (or of none, to give members a reading of its clock at least
    /// every `clock_every_ms` while sessions live), and expiries of the leases that ran out.
    pub fn tend(&mut self, now: u64, clock_every_ms: u64) -> Vec<Body> {
        let Some(term) = self.leading else { return Vec::new() };
        let mut out = Vec::new();
        let mut leases = Vec::new();
        // Leases a keepalive waits on first: after a promotion every lease is queued, and a
        // backlog of thousands must not hold a live client's renewal past its deadline.
        let awaited: Vec<String> = self
            .waiting
            .keys()
            .filter(|id| self.to_checkpoint.contains(*id))
            .take(MAX_LEASES_PER_CHECKPOINT)
            .cloned()
            .collect();
        let mut awaited = awaited.into_iter();
        while leases.len() < MAX_LEASES_PER_CHECKPOINT {
            let next = match awaited.next() {
                Some(id) => self.to_checkpoint.take(&id),
                None => self.to_checkpoint.pop_first(),
            };
            let Some(id) = next else { break };
            let Some(lease) = self.sessions.get(&id) else { continue };
            // From the last keepalive, or what the log already gives, whichever is later. The
            // entry is proposed now: every member counts it from now or later.
            let end = lease.renewed_at.map_or(0, |at| at + lease.ttl_ms).max(self.deadline(lease));
            self.checkpointing.insert(id.clone(), now);
            leases.push(SessionLease { id, remaining_ms: end.saturating_sub(now) });
        }
        let clock_due =
            !self.sessions.is_empty() && now.saturating_sub(self.last_checkpoint) >= clock_every_ms;
        if !leases.is_empty() || clock_due {
            self.last_checkpoint = now;
            out.push(Body::CheckpointSessions(CheckpointSessions { leases, leader_ms: now, term }));
        }
        let due: Vec<(String, u64)> = self
            .by_deadline
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .filter(|(_, id)| !self.checkpointing.contains_key(id) && !self.expiring.contains_key(id))
            // Nor one a keepalive renewed in time, queued for its checkpoint (a backlog).
            .filter(|(_, id)| !(self.to_checkpoint.contains(id) && self.waiting.contains_key(id)))
            .take(MAX_EXPIRIES_PER_TURN)
            .filter_map(|(_, id)| self.sessions.get(id).map(|l| (id.clone(), l.checkpoints)))
            .collect();
        for (id, checkpoints) in due {
            self.expiring.insert(id.clone(), now);
            out.push(Body::ExpireSession(ExpireSession { id, checkpoints, term }));
        }
        out
    }

    /// The term this member leads in, once promoted.
    pub fn leading(&self) -> Option<u64> {
        self.leading
    }

    /// Forgets checkpoints and expiries proposed `proposal_timeout_ms` ago or more (lost: they
    /// are proposed again), and keepalives waiting `wait_timeout_ms` or more. Returns the
    /// keepalives that timed out, answered `timed_out`.
    pub fn time_out(
        &mut self,
        now: u64,
        proposal_timeout_ms: u64,
        wait_timeout_ms: u64,
        timed_out: &RequestError,
    ) -> Replies {
        let lost = |since: &u64| now.saturating_sub(*since) >= proposal_timeout_ms;
        let (lost_checkpoints, in_flight): (BTreeMap<_, _>, BTreeMap<_, _>) =
            std::mem::take(&mut self.checkpointing).into_iter().partition(|(_, since)| lost(since));
        self.checkpointing = in_flight;
        if self.leading.is_some() {
            // A lost checkpoint (a renewal, or the re-basing one) is proposed again.
            self.to_checkpoint
                .extend(lost_checkpoints.into_keys().filter(|id| self.sessions.contains_key(id)));
        }
        self.expiring.retain(|_, since| !lost(since));
        let old = |since: &u64| now.saturating_sub(*since) >= wait_timeout_ms;
        let mut replies = Vec::new();
        for (id, waits) in self.waiting.iter_mut() {
            let (expired, kept): (Vec<_>, Vec<_>) =
                std::mem::take(waits).into_iter().partition(|(_, t)| old(t));
            *waits = kept;
            if !expired.is_empty() && !self.checkpointing.contains_key(id) && self.leading.is_some() {
                self.to_checkpoint.insert(id.clone());
            }
            replies.extend(expired.into_iter().map(|(w, _)| (w, Err(timed_out.clone()))));
        }
        self.waiting.retain(|_, w| !w.is_empty());
        replies
    }

    fn fail_waiting(&mut self, error: impl Fn(&str) -> RequestError) -> Replies {
        let mut replies = Vec::new();
        for (id, waits) in std::mem::take(&mut self.waiting) {
            let e = error(&id);
            replies.extend(waits.into_iter().map(|(w, _)| (w, Err(e.clone()))));
        }
        replies
    }

    fn set(&mut self, id: String, lease: Lease) {
        if self.leading.is_some() {
            if let Some(old) = self.sessions.get(&id) {
                let deadline = self.deadline(old);
                self.by_deadline.remove(&(deadline, id.clone()));
            }
            self.by_deadline.insert((self.deadline(&lease), id.clone()));
        }
        self.sessions.insert(id, lease);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERM: u64 = 3;
    const CLOCK: u64 = 100;

    fn started(l: &mut Leases, id: &str, ttl_ms: u64, at: u64) {
        l.changed(SessionChange::Started { id: id.into(), ttl_ms }, TERM, at, at);
    }

    fn leader() -> Leases {
        let mut l = Leases::default();
        l.promoted(TERM, 0);
        l
    }

    fn checkpoint_of(bodies: &[Body]) -> Vec<(String, u64)> {
        bodies
            .iter()
            .filter_map(|b| match b {
                Body::CheckpointSessions(c) => Some(c.leases.iter().map(|l| (l.id.clone(), l.remaining_ms))),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn expiries_of(bodies: &[Body]) -> Vec<(String, u64)> {
        bodies
            .iter()
            .filter_map(|b| match b {
                Body::ExpireSession(e) => Some((e.id.clone(), e.checkpoints)),
                _ => None,
            })
            .collect()
    }

    fn renewed(id: &str, remaining_ms: u64, checkpoints: u64, leader_ms: u64) -> SessionChange {
        SessionChange::Renewed { id: id.into(), ttl_ms: 10_000, remaining_ms, checkpoints, leader_ms }
    }

    #[test]
    fn a_keepalive_is_granted_at_once_what_the_log_guarantees_while_half_the_ttl_is_left() {
        let mut l = leader();
        started(&mut l, "s", 10_000, 1_000);
        let grant = l.keep_alive(1, "s", 4_000).expect("answered at once").expect("granted");
        assert_eq!(grant, Grant { ttl_ms: 10_000, granted_ms: 7_000 }, "the lease left, never more");
        assert!(
            checkpoint_of(&l.tend(4_000, u64::MAX)).is_empty(),
            "nothing to renew while half the TTL is left"
        );
    }

    #[test]
    fn a_keepalive_with_less_than_half_left_waits_for_a_checkpoint_counted_from_it() {
        let mut l = leader();
        started(&mut l, "s", 10_000, 0);
        assert_eq!(l.keep_alive(7, "s", 6_000), None, "4 s of 10 left: it waits for a checkpoint");
        let proposed = l.tend(6_100, u64::MAX);
        assert_eq!(
            checkpoint_of(&proposed),
            vec![("s".to_string(), 9_900)],
            "TTL counted from the keepalive"
        );
        assert!(l.tend(6_200, u64::MAX).is_empty(), "a session in flight is not checkpointed twice");
        l.changed(SessionChange::Clock { leader_ms: 6_100 }, TERM, 6_100, 6_300);
        let replies = l.changed(renewed("s", 9_900, 1, 6_100), TERM, 6_300, 6_300);
        assert_eq!(
            replies,
            vec![(7, Ok(Grant { ttl_ms: 10_000, granted_ms: 9_700 }))],
            "counted on its own clock"
        );
        assert_eq!(l.remaining("s", 6_300), Some(9_700));
    }

    #[test]
    fn the_leader_expires_a_lease_that_ran_out_naming_its_checkpoint_count_once() {
        let mut l = leader();
        started(&mut l, "a", 1_000, 0);
        started(&mut l, "b", 5_000, 0);
        assert!(expiries_of(&l.tend(999, u64::MAX)).is_empty(), "not before the deadline");
        assert_eq!(expiries_of(&l.tend(1_000, u64::MAX)), vec![("a".to_string(), 0)]);
        assert!(
            expiries_of(&l.tend(1_050, u64::MAX)).is_empty(),
            "an expiry in flight is not proposed again"
        );
        assert_eq!(
            l.keep_alive(3, "a", 1_060),
            Some(Err(RequestError::SessionNotFound { session: "a".into() })),
            "a lease that ran out is not renewed"
        );
        l.time_out(3_000, 2_000, 2_000, &RequestError::TimedOut { ticks: 1, proposed: false });
        assert_eq!(
            expiries_of(&l.tend(3_000, u64::MAX)),
            vec![("a".to_string(), 0)],
            "a lost expiry is proposed again"
        );
        l.changed(SessionChange::Ended { id: "a".into() }, TERM, 3_100, 3_100);
        assert_eq!(l.remaining("a", 3_100), None);
    }

    #[test]
    fn a_keepalive_that_arrived_during_another_checkpoint_waits_for_its_own() {
        let mut l = leader();
        started(&mut l, "s", 10_000, 0);
        l.promoted(TERM, 7_000); // re-bases "s": 3 s left, in flight
        assert_eq!(checkpoint_of(&l.tend(7_000, u64::MAX)), vec![("s".to_string(), 3_000)]);
        assert_eq!(l.keep_alive(9, "s", 7_100), None, "2.9 s of 10 left: it waits");
        l.changed(SessionChange::Clock { leader_ms: 7_000 }, TERM, 7_000, 7_200);
        let replies = l.changed(renewed("s", 3_000, 1, 7_000), TERM, 7_200, 7_200);
        assert!(replies.is_empty(), "the re-basing checkpoint does not hold the keepalive's renewal");
        assert_eq!(
            checkpoint_of(&l.tend(7_200, u64::MAX)),
            vec![("s".to_string(), 9_900)],
            "its own one does"
        );
        let replies = l.changed(renewed("s", 9_900, 2, 7_200), TERM, 7_300, 7_300);
        assert_eq!(replies, vec![(9, Ok(Grant { ttl_ms: 10_000, granted_ms: 9_800 }))]);
    }

    #[test]
    fn after_a_promotion_the_leases_keepalives_wait_on_are_checkpointed_before_the_backlog() {
        let mut l = Leases::default();
        let n = MAX_LEASES_PER_CHECKPOINT + 10;
        for i in 0..n {
            started(&mut l, &format!("s{i:05}"), 10_000, 0);
        }
        l.promoted(TERM, 8_000);
        let last = format!("s{:05}", n - 1);
        assert_eq!(l.keep_alive(1, &last, 8_100), None, "it waits for its re-basing checkpoint");
        let first = checkpoint_of(&l.tend(8_100, u64::MAX));
        assert_eq!(first.len(), MAX_LEASES_PER_CHECKPOINT, "one checkpoint holds the most it may");
        assert_eq!(first[0].0, last, "the lease a keepalive waits on goes first, whatever its id");
        assert!(
            expiries_of(&l.tend(10_500, u64::MAX)).iter().all(|(id, _)| *id != last),
            "in flight, it is not expired"
        );

        // More keepalives wait than one checkpoint holds, and the first tend comes after
        // their deadlines: the one left queued is renewed later, never expired meanwhile.
        let mut backlog = Leases::default();
        let ids: Vec<String> = (0..=MAX_LEASES_PER_CHECKPOINT).map(|i| format!("s{i:05}")).collect();
        for id in &ids {
            started(&mut backlog, id, 1_000, 0);
        }
        backlog.promoted(TERM, 500);
        for (waiter, id) in ids.iter().enumerate() {
            assert_eq!(backlog.keep_alive(waiter as u64, id, 600), None, "{id} waits, queued");
        }
        let proposed = backlog.tend(1_200, u64::MAX);
        assert_eq!(checkpoint_of(&proposed).len(), MAX_LEASES_PER_CHECKPOINT);
        assert!(
            expiries_of(&proposed).is_empty(),
            "a lease a keepalive renewed in time is not expired while queued for its checkpoint"
        );
        let left = checkpoint_of(&backlog.tend(1_250, u64::MAX));
        assert_eq!(left, vec![(ids[MAX_LEASES_PER_CHECKPOINT].clone(), 350)], "renewed from its keepalive");
    }

    #[test]
    fn no_expiry_while_a_checkpoint_of_the_session_is_in_flight() {
        let mut l = leader();
        started(&mut l, "s", 1_000, 0);
        assert_eq!(l.keep_alive(1, "s", 900), None);
        assert_eq!(checkpoint_of(&l.tend(900, u64::MAX)).len(), 1);
        assert!(expiries_of(&l.tend(1_200, u64::MAX)).is_empty(), "its renewal may still commit");
    }

    #[test]
    fn a_new_leader_carries_deadlines_over_and_re_bases_every_lease_in_its_first_checkpoint() {
        let mut l = leader();
        started(&mut l, "s", 10_000, 0);
        assert_eq!(l.keep_alive(1, "s", 8_000), None);
        let replies = l.demoted(1, 2);
        assert_eq!(replies, vec![(1, Err(RequestError::NotLeader { member: 1, leader: 2 }))]);
        assert!(l.tend(9_000, CLOCK).is_empty(), "a follower tends nothing");
        l.promoted(TERM + 2, 9_000);
        let first = l.tend(9_000, CLOCK);
        assert_eq!(checkpoint_of(&first), vec![("s".to_string(), 1_000)], "re-based: what is left, no more");
        assert_eq!(
            expiries_of(&l.tend(10_000, CLOCK)),
            Vec::<(String, u64)>::new(),
            "its checkpoint is in flight"
        );
        l.changed(SessionChange::Clock { leader_ms: 9_000 }, TERM + 2, 9_000, 9_010);
        l.changed(renewed("s", 1_000, 1, 9_000), TERM + 2, 9_010, 9_010);
        assert_eq!(
            expiries_of(&l.tend(10_000, CLOCK)),
            vec![("s".to_string(), 1)],
            "the carried-over deadline"
        );
    }

    #[test]
    fn a_follower_counts_a_leaders_reading_with_the_least_offset_it_saw() {
        let mut f = Leases::default();
        // The leader's clock reads 5 000 when this member's reads 1 000 (offset −4 000); the
        // first checkpoint arrives 300 ms late, the next one 10 ms late.
        f.changed(SessionChange::Clock { leader_ms: 5_000 }, 7, 0, 1_300);
        f.changed(renewed("s", 8_000, 1, 5_000), 7, 0, 1_300);
        assert_eq!(f.remaining("s", 1_300), Some(8_000), "counted from the late arrival: never early");
        f.changed(SessionChange::Clock { leader_ms: 6_000 }, 7, 0, 2_010);
        assert_eq!(
            f.remaining("s", 2_010),
            Some(7_000),
            "tightened by the prompt sample: 13 000 − 3 990 here"
        );
        assert_eq!(f.remaining("s", 9_010), Some(0), "ends at the leader's 13 000, 9 010 here");
    }

    #[test]
    fn a_checkpoint_read_earlier_but_applied_later_never_moves_a_lease_back() {
        let mut f = Leases::default();
        f.changed(SessionChange::Clock { leader_ms: 9_690 }, 21, 0, 9_696);
        f.changed(renewed("s", 999, 38, 9_690), 21, 0, 9_696);
        let before = f.remaining("s", 9_800);
        f.changed(SessionChange::Clock { leader_ms: 9_518 }, 21, 0, 9_836);
        f.changed(renewed("s", 1_000, 39, 9_518), 21, 0, 9_836);
        assert_eq!(f.remaining("s", 9_800), before, "the deadline of checkpoint 38 stands");
    }

    #[test]
    fn a_loaded_lease_counts_from_its_leaders_reading_once_the_offset_is_known_never_later_than_from_loading()
    {
        let mut f = Leases::default();
        let stored = Stored {
            id: "s".into(),
            ttl_ms: 1_500,
            remaining_ms: 1_259,
            checkpoints: 32,
            term: 18,
            leader_ms: 12_868,
        };
        f.reload([stored], 13_080);
        assert_eq!(f.remaining("s", 13_080), Some(1_259), "no offset known yet: counted from the load");
        f.changed(SessionChange::Clock { leader_ms: 13_072 }, 18, 0, 13_083);
        assert_eq!(
            f.remaining("s", 13_083),
            Some(1_055),
            "then from the leader's reading: 12 868 + 11 + 1 259"
        );
    }

    #[test]
    fn a_new_leader_grants_only_from_its_own_reading_never_from_a_looser_view_of_an_older_one() {
        // B restarted at 105 000: its view of A's checkpoint (100 000 + 10 000) counts from
        // 105 000. Promoted, it must not grant from that view: C, which applied the checkpoint
        // promptly, would end the session at 110 000.
        let mut b = Leases::default();
        let stored = Stored {
            id: "s".into(),
            ttl_ms: 10_000,
            remaining_ms: 10_000,
            checkpoints: 1,
            term: 5,
            leader_ms: 100_000,
        };
        b.reload([stored], 105_000);
        b.promoted(6, 105_000);
        assert_eq!(b.keep_alive(1, "s", 105_500), None, "it waits for the re-basing checkpoint");
        let rebase = b.tend(105_500, u64::MAX);
        assert_eq!(checkpoint_of(&rebase), vec![("s".to_string(), 10_000)], "renewed from the keepalive");
        b.changed(SessionChange::Clock { leader_ms: 105_500 }, 6, 0, 105_510);
        let replies = b.changed(
            SessionChange::Renewed {
                id: "s".into(),
                ttl_ms: 10_000,
                remaining_ms: 10_000,
                checkpoints: 2,
                leader_ms: 105_500,
            },
            6,
            0,
            105_510,
        );
        assert_eq!(
            replies,
            vec![(1, Ok(Grant { ttl_ms: 10_000, granted_ms: 9_990 }))],
            "granted once committed"
        );
        assert!(b.keep_alive(2, "s", 106_000).is_some(), "then from its own reading, at once");
    }

    #[test]
    fn a_lost_re_basing_checkpoint_is_proposed_again() {
        let mut l = leader();
        started(&mut l, "s", 10_000, 0);
        l.promoted(TERM + 1, 1_000);
        assert_eq!(checkpoint_of(&l.tend(1_000, u64::MAX)).len(), 1);
        l.time_out(1_500, 400, 3_000, &RequestError::TimedOut { ticks: 1, proposed: false });
        assert_eq!(checkpoint_of(&l.tend(1_500, u64::MAX)), vec![("s".to_string(), 8_500)], "proposed again");
    }

    #[test]
    fn leases_loaded_before_the_clock_started_count_from_its_first_reading() {
        let mut l = Leases::default();
        let stored = Stored {
            id: "s".into(),
            ttl_ms: 10_000,
            remaining_ms: 4_000,
            checkpoints: 3,
            term: 0,
            leader_ms: 0,
        };
        l.reload([stored], 0);
        l.clock_started(750_000);
        assert_eq!(l.remaining("s", 750_000), Some(4_000), "not run out at a clock that starts high");
    }

    #[test]
    fn reload_counts_the_stored_leases_from_now() {
        let mut l = Leases::default();
        let stored = Stored {
            id: "s".into(),
            ttl_ms: 10_000,
            remaining_ms: 4_000,
            checkpoints: 3,
            term: 0,
            leader_ms: 0,
        };
        l.reload([stored], 500);
        assert_eq!(l.remaining("s", 500), Some(4_000));
        l.promoted(TERM, 500);
        assert_eq!(
            expiries_of(&l.tend(4_500, u64::MAX)),
            Vec::<(String, u64)>::new(),
            "the re-basing checkpoint is in flight"
        );
    }
}
