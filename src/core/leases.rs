//! Session leases on this member's clock (DESIGN.md §1 Sessions, §2 rule 3; docs/sessions.md).
//!
//! The replicated state says, for each session, its TTL and the lease it had left at its last
//! checkpoint. Every member counts that down on its own monotonic clock from the moment it
//! learned it: the leader from when it appended the entry, any other member from when it
//! applied it — never earlier than the entry committed. Only the leader acts on leases:
//! it answers keepalives, proposes checkpoints of renewed leases, and proposes expiries.
//!
//! Invariants (the lease rule):
//! - A keepalive is answered with a grant no longer than what a committed checkpoint (or the
//!   creation) already guarantees: `deadline - now`, where `deadline` comes from the log. Every
//!   member's deadline for that entry is at least as late (it learned it no earlier), so no
//!   later leader expires the session before any grant ran out (counted from when the client
//!   sent the keepalive, which is before it arrived). A keepalive that finds less than half the
//!   TTL left puts the session in the next checkpoint and is answered once it is applied.
//! - A leader acts only once it has applied every entry of earlier terms (`ready_from`):
//!   an expiry or checkpoint an earlier leader proposed is seen before it answers or expires.
//! - The leader expires a session only when its deadline has passed and no checkpoint of it is
//!   in flight; the expiry names the session's checkpoint count, so a checkpoint that commits
//!   first wins (see `fsm::sessions`).
//! - Nothing extends a lease but a keepalive: a new leader inherits the deadlines the log gave
//!   it. Once keepalives stop, the last checkpoint's lease runs out on every member within
//!   the time it took that member to learn of it; a leader change adds no more.
//! - Memory: one entry per live session; the waiting keepalives, in-flight checkpoints and
//!   expiries are bounded by the sessions and time out with the request timeout.

use std::collections::{BTreeMap, BTreeSet};

use latch_proto::internal::{command::Body, CheckpointSessions, ExpireSession, SessionLease};

use super::{RequestError, Waiter};
use crate::fsm::SessionChange;

/// Most leases one checkpoint entry carries (≈ 50 bytes each); the rest go in the next one.
pub const MAX_LEASES_PER_CHECKPOINT: usize = 4096;
/// Most expiries proposed in one turn.
const MAX_EXPIRIES_PER_TURN: usize = 1024;

/// What a keepalive is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub ttl_ms: u64,
    /// The session is not expired before this many milliseconds from when the keepalive was
    /// sent.
    pub granted_ms: u64,
}

#[derive(Debug, Clone)]
struct Lease {
    ttl_ms: u64,
    /// When it runs out on this member's clock.
    deadline_ms: u64,
    /// Its checkpoint count in the replicated state.
    checkpoints: u64,
    /// Leader only: when the last keepalive arrived, if one did in this term.
    renewed_at: Option<u64>,
}

/// The leases of every live session, as this member counts them.
#[derive(Debug, Default)]
pub struct Leases {
    sessions: BTreeMap<String, Lease>,
    /// (deadline, id) of every session: the leader's expiry scan.
    by_deadline: BTreeSet<(u64, String)>,
    /// Leader only: sessions to put in the next checkpoint.
    to_checkpoint: BTreeSet<String>,
    /// Leader only: sessions in a proposed checkpoint not applied yet, since when.
    checkpointing: BTreeMap<String, u64>,
    /// Leader only: sessions whose proposed expiry is not applied yet, since when.
    expiring: BTreeMap<String, u64>,
    /// Keepalives waiting for their session's checkpoint: (waiter, arrived at).
    waiting: BTreeMap<String, Vec<(Waiter, u64)>>,
}

impl Leases {
    /// Forgets everything and loads `sessions` (id, ttl, lease left, checkpoint count) as read
    /// from the state, counting from `now`: at start, and after a snapshot replaced the state.
    /// Waiting keepalives are answered `fail` (returned as replies).
    pub fn reload(
        &mut self,
        sessions: impl IntoIterator<Item = (String, u64, u64, u64)>,
        now: u64,
    ) -> Vec<(Waiter, Result<Grant, RequestError>)> {
        let replies = self.fail_waiting(|id| RequestError::SessionNotFound { session: id.to_string() });
        *self = Leases::default();
        for (id, ttl_ms, remaining_ms, checkpoints) in sessions {
            self.set(id, Lease { ttl_ms, deadline_ms: now + remaining_ms, checkpoints, renewed_at: None });
        }
        replies
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The lease left of session `id` at `now`, if it is live here.
    pub fn remaining(&self, id: &str, now: u64) -> Option<u64> {
        self.sessions.get(id).map(|l| l.deadline_ms.saturating_sub(now))
    }

    /// Applies what a command did to sessions, learned at `base` (see the module doc). Returns
    /// the answers of keepalives that waited for it.
    pub fn changed(
        &mut self,
        change: SessionChange,
        base: u64,
        now: u64,
    ) -> Vec<(Waiter, Result<Grant, RequestError>)> {
        match change {
            SessionChange::Started { id, ttl_ms } => {
                self.set(id, Lease { ttl_ms, deadline_ms: base + ttl_ms, checkpoints: 0, renewed_at: None });
                Vec::new()
            }
            SessionChange::Renewed { id, ttl_ms, remaining_ms, checkpoints } => {
                self.checkpointing.remove(&id);
                let renewed_at = self.sessions.get(&id).and_then(|l| l.renewed_at);
                let lease = Lease { ttl_ms, deadline_ms: base + remaining_ms, checkpoints, renewed_at };
                let grant = Grant { ttl_ms, granted_ms: lease.deadline_ms.saturating_sub(now) };
                self.set(id.clone(), lease);
                self.waiting
                    .remove(&id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(w, _)| (w, Ok(grant)))
                    .collect()
            }
            SessionChange::Ended { id } => {
                if let Some(l) = self.sessions.remove(&id) {
                    self.by_deadline.remove(&(l.deadline_ms, id.clone()));
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

    /// A keepalive on the leader (ready to act, see the module doc) at `now`: answered at once,
    /// or `None` when it waits for a checkpoint.
    pub fn keep_alive(&mut self, waiter: Waiter, id: &str, now: u64) -> Option<Result<Grant, RequestError>> {
        let gone = || RequestError::SessionNotFound { session: id.to_string() };
        let Some(lease) = self.sessions.get_mut(id) else { return Some(Err(gone())) };
        if lease.deadline_ms <= now || self.expiring.contains_key(id) {
            // Its lease ran out: no grant can be given from the log any more.
            return Some(Err(gone()));
        }
        lease.renewed_at = Some(now);
        let left = lease.deadline_ms - now;
        if left >= lease.ttl_ms / 2 {
            return Some(Ok(Grant { ttl_ms: lease.ttl_ms, granted_ms: left }));
        }
        if !self.checkpointing.contains_key(id) {
            self.to_checkpoint.insert(id.to_string());
        }
        self.waiting.entry(id.to_string()).or_default().push((waiter, now));
        None
    }

    /// The leader's work at `now`: the commands to propose (a checkpoint of the renewed leases,
    /// expiries of the leases that ran out).
    pub fn tend(&mut self, now: u64) -> Vec<Body> {
        let mut out = Vec::new();
        let mut leases = Vec::new();
        while leases.len() < MAX_LEASES_PER_CHECKPOINT {
            let Some(id) = self.to_checkpoint.pop_first() else { break };
            let Some(lease) = self.sessions.get(&id) else { continue };
            let Some(renewed_at) = lease.renewed_at else { continue };
            // Counted from the keepalive: the entry is appended now, so every member counts it
            // from now or later.
            let remaining_ms = (renewed_at + lease.ttl_ms).saturating_sub(now);
            self.checkpointing.insert(id.clone(), now);
            leases.push(SessionLease { id, remaining_ms });
        }
        if !leases.is_empty() {
            out.push(Body::CheckpointSessions(CheckpointSessions { leases }));
        }
        let due: Vec<(String, u64)> = self
            .by_deadline
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .filter(|(_, id)| !self.checkpointing.contains_key(id) && !self.expiring.contains_key(id))
            .take(MAX_EXPIRIES_PER_TURN)
            .filter_map(|(_, id)| self.sessions.get(id).map(|l| (id.clone(), l.checkpoints)))
            .collect();
        for (id, checkpoints) in due {
            self.expiring.insert(id.clone(), now);
            out.push(Body::ExpireSession(ExpireSession { id, checkpoints }));
        }
        out
    }

    /// Forgets checkpoints, expiries and keepalive waits older than `timeout_ms` (a lost
    /// proposal: they are tried again). Returns the keepalives that timed out, answered
    /// `timed_out`.
    pub fn time_out(
        &mut self,
        now: u64,
        timeout_ms: u64,
        timed_out: &RequestError,
    ) -> Vec<(Waiter, Result<Grant, RequestError>)> {
        let old = |since: &u64| now.saturating_sub(*since) >= timeout_ms;
        self.checkpointing.retain(|_, since| !old(since));
        self.expiring.retain(|_, since| !old(since));
        let mut replies = Vec::new();
        for (id, waits) in self.waiting.iter_mut() {
            let (expired, kept): (Vec<_>, Vec<_>) =
                std::mem::take(waits).into_iter().partition(|(_, t)| old(t));
            *waits = kept;
            if !expired.is_empty() && !self.checkpointing.contains_key(id) {
                self.to_checkpoint.insert(id.clone());
            }
            replies.extend(expired.into_iter().map(|(w, _)| (w, Err(timed_out.clone()))));
        }
        self.waiting.retain(|_, w| !w.is_empty());
        replies
    }

    /// This member stopped being the leader (or became it): what only a leader keeps is
    /// dropped, and waiting keepalives are answered `NotLeader`.
    pub fn leadership_changed(
        &mut self,
        member: u64,
        leader: u64,
    ) -> Vec<(Waiter, Result<Grant, RequestError>)> {
        self.to_checkpoint.clear();
        self.checkpointing.clear();
        self.expiring.clear();
        for lease in self.sessions.values_mut() {
            lease.renewed_at = None;
        }
        self.fail_waiting(|_| RequestError::NotLeader { member, leader })
    }

    fn fail_waiting(
        &mut self,
        error: impl Fn(&str) -> RequestError,
    ) -> Vec<(Waiter, Result<Grant, RequestError>)> {
        let mut replies = Vec::new();
        for (id, waits) in std::mem::take(&mut self.waiting) {
            let e = error(&id);
            replies.extend(waits.into_iter().map(|(w, _)| (w, Err(e.clone()))));
        }
        replies
    }

    fn set(&mut self, id: String, lease: Lease) {
        if let Some(old) = self.sessions.get(&id) {
            self.by_deadline.remove(&(old.deadline_ms, id.clone()));
        }
        self.by_deadline.insert((lease.deadline_ms, id.clone()));
        self.sessions.insert(id, lease);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(l: &mut Leases, id: &str, ttl_ms: u64, at: u64) {
        l.changed(SessionChange::Started { id: id.into(), ttl_ms }, at, at);
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

    #[test]
    fn a_keepalive_is_granted_at_once_what_the_log_guarantees_while_half_the_ttl_is_left() {
        let mut l = Leases::default();
        started(&mut l, "s", 10_000, 1_000);
        let grant = l.keep_alive(1, "s", 4_000).expect("answered at once").expect("granted");
        assert_eq!(grant, Grant { ttl_ms: 10_000, granted_ms: 7_000 }, "the lease left, never more");
        assert!(l.tend(4_000).is_empty(), "nothing to checkpoint while half the TTL is left");
    }

    #[test]
    fn a_keepalive_with_less_than_half_left_waits_for_a_checkpoint_counted_from_it() {
        let mut l = Leases::default();
        started(&mut l, "s", 10_000, 0);
        assert_eq!(l.keep_alive(7, "s", 6_000), None, "4 s of 10 left: it waits for a checkpoint");
        let proposed = l.tend(6_100);
        assert_eq!(
            checkpoint_of(&proposed),
            vec![("s".to_string(), 9_900)],
            "TTL counted from the keepalive"
        );
        assert!(l.tend(6_200).is_empty(), "a session in flight is not checkpointed twice");
        let change =
            SessionChange::Renewed { id: "s".into(), ttl_ms: 10_000, remaining_ms: 9_900, checkpoints: 1 };
        let replies = l.changed(change, 6_100, 6_300);
        assert_eq!(replies, vec![(7, Ok(Grant { ttl_ms: 10_000, granted_ms: 9_700 }))]);
        assert_eq!(l.remaining("s", 6_300), Some(9_700));
    }

    #[test]
    fn the_leader_expires_a_lease_that_ran_out_naming_its_checkpoint_count_once() {
        let mut l = Leases::default();
        started(&mut l, "a", 1_000, 0);
        started(&mut l, "b", 5_000, 0);
        assert!(expiries_of(&l.tend(999)).is_empty(), "not before the deadline");
        assert_eq!(expiries_of(&l.tend(1_000)), vec![("a".to_string(), 0)]);
        assert!(expiries_of(&l.tend(1_050)).is_empty(), "an expiry in flight is not proposed again");
        assert_eq!(
            l.keep_alive(3, "a", 1_060),
            Some(Err(RequestError::SessionNotFound { session: "a".into() })),
            "a lease that ran out is not renewed"
        );
        l.time_out(3_000, 2_000, &RequestError::TimedOut { ticks: 1 });
        assert_eq!(
            expiries_of(&l.tend(3_000)),
            vec![("a".to_string(), 0)],
            "a lost expiry is proposed again"
        );
        l.changed(SessionChange::Ended { id: "a".into() }, 3_100, 3_100);
        assert_eq!(l.remaining("a", 3_100), None);
    }

    #[test]
    fn no_expiry_while_a_checkpoint_of_the_session_is_in_flight() {
        let mut l = Leases::default();
        started(&mut l, "s", 1_000, 0);
        assert_eq!(l.keep_alive(1, "s", 900), None);
        assert_eq!(checkpoint_of(&l.tend(900)).len(), 1);
        assert!(expiries_of(&l.tend(1_200)).is_empty(), "its renewal may still commit");
    }

    #[test]
    fn a_new_leader_inherits_deadlines_and_extends_nothing() {
        let mut l = Leases::default();
        started(&mut l, "s", 10_000, 0);
        assert_eq!(l.keep_alive(1, "s", 8_000), None);
        let replies = l.leadership_changed(1, 2);
        assert_eq!(replies, vec![(1, Err(RequestError::NotLeader { member: 1, leader: 2 }))]);
        assert!(l.tend(9_000).is_empty(), "a keepalive heard as leader before is forgotten");
        assert_eq!(expiries_of(&l.tend(10_000)).len(), 1, "the inherited deadline stands");
    }

    #[test]
    fn reload_counts_the_stored_leases_from_now() {
        let mut l = Leases::default();
        l.reload([("s".to_string(), 10_000, 4_000, 3)], 500);
        assert_eq!(l.remaining("s", 500), Some(4_000));
        assert_eq!(expiries_of(&l.tend(4_500)), vec![("s".to_string(), 3)]);
    }
}
