//! Lock-delay timers (DESIGN.md §1 Locks, §2 rules 2–3). When a holder's session expires, its
//! lock enters a lock-delay in the replicated state; only the leader ends it, by proposing
//! `EndLockDelay` once the delay has passed on its clock. Every member keeps the timers, so a
//! member promoted to leader ends them without a gap.
//!
//! Invariants:
//! - A member counts a delay from when it applied the revision that began it (or, for a delay
//!   it found in a state it loaded — at start, or from a snapshot — from when it loaded it,
//!   unless it had applied that revision itself before the snapshot).
//!   Every member applies that revision after it was committed, so no member's count ends
//!   before the delay has passed since the commit: whichever member leads, no grant comes
//!   early. A delay is at most `MAX_LOCK_DELAY_MS` longer than it had to be, on a member that
//!   loaded it.
//! - An `EndLockDelay` names the revision its delay began at, so it never ends a later delay of
//!   the same lock. One not applied within `retry_ms` (lost with a leader) is proposed again.
//! - Memory: one entry per lock in a delay.

use std::collections::BTreeMap;

use latch_proto::internal::{command::Body, EndLockDelay};

use crate::fsm::locks::split_lock_key;
use crate::fsm::LockChange;

/// Most delay ends proposed in one turn (as `leases` bounds its expiries): a thousand delays
/// that end together must not swell one Ready past what the pending budget sees.
const MAX_ENDS_PER_TURN: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Delay {
    since_revision: i64,
    ends_at: u64,
    /// When this member, as leader, last proposed its end.
    proposed_at: Option<u64>,
}

#[derive(Debug, Default)]
pub struct LockDelays {
    delays: BTreeMap<Vec<u8>, Delay>,
}

impl LockDelays {
    /// Replaces the timers with the delays of a state just loaded: (lock key, since revision,
    /// delay). A delay this member was already counting (the same lock, begun at the same
    /// revision: it applied that revision itself) keeps its count; any other is counted in full
    /// from `now`.
    pub fn reload(&mut self, delays: Vec<(Vec<u8>, i64, u64)>, now: u64) {
        let counted = std::mem::take(&mut self.delays);
        self.delays = delays
            .into_iter()
            .map(|(key, since_revision, ms)| {
                let delay = match counted.get(&key) {
                    Some(d) if d.since_revision == since_revision => *d,
                    _ => Delay { since_revision, ends_at: now.saturating_add(ms), proposed_at: None },
                };
                (key, delay)
            })
            .collect();
    }

    /// The clock's first reading: delays loaded before it count from there.
    pub fn clock_started(&mut self, at: u64) {
        for d in self.delays.values_mut() {
            d.ends_at = d.ends_at.saturating_add(at);
        }
    }

    /// A lock change this member applied at `now`.
    pub fn changed(&mut self, change: &LockChange, now: u64) {
        match change {
            LockChange::DelayStarted { key, since_revision, delay_ms } => {
                let d = Delay {
                    since_revision: *since_revision,
                    ends_at: now.saturating_add(*delay_ms),
                    proposed_at: None,
                };
                self.delays.insert(key.clone(), d);
            }
            LockChange::DelayEnded { key, since_revision } => {
                if self.delays.get(key).is_some_and(|d| d.since_revision == *since_revision) {
                    self.delays.remove(key);
                }
            }
            LockChange::Settled { .. } | LockChange::Changed { .. } => {}
        }
    }

    /// As leader: the ends of the delays that have passed, except those proposed within
    /// `retry_ms`; at most [`MAX_ENDS_PER_TURN`].
    pub fn due(&mut self, now: u64, retry_ms: u64) -> Vec<Body> {
        let mut out = Vec::new();
        for (key, d) in self.delays.iter_mut() {
            if out.len() == MAX_ENDS_PER_TURN {
                break; // the rest in the next turns
            }
            let recently = d.proposed_at.is_some_and(|at| now.saturating_sub(at) < retry_ms);
            if d.ends_at > now || recently {
                continue;
            }
            let Some((space, name)) = split_lock_key(key) else { continue };
            d.proposed_at = Some(now);
            out.push(Body::EndLockDelay(EndLockDelay {
                space: space as i32,
                name: name.to_string(),
                since_revision: d.since_revision,
            }));
        }
        out
    }

    /// Forgets when ends were proposed (leadership moved: a new leader proposes its own).
    pub fn demoted(&mut self) {
        for d in self.delays.values_mut() {
            d.proposed_at = None;
        }
    }

    pub fn len(&self) -> usize {
        self.delays.len()
    }

    pub fn is_empty(&self) -> bool {
        self.delays.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::locks::lock_key;
    use latch_proto::internal::LockSpace;

    fn started(key: &[u8], since: i64, ms: u64) -> LockChange {
        LockChange::DelayStarted { key: key.to_vec(), since_revision: since, delay_ms: ms }
    }

    fn ends(bodies: &[Body]) -> Vec<(String, i64)> {
        bodies
            .iter()
            .map(|b| match b {
                Body::EndLockDelay(e) => (e.name.clone(), e.since_revision),
                b => panic!("expected an end of a lock-delay, got {b:?}"),
            })
            .collect()
    }

    #[test]
    fn a_delay_ends_once_it_has_passed_since_this_member_applied_it_and_again_if_lost() {
        let key = lock_key(LockSpace::Locks, "n");
        let mut d = LockDelays::default();
        d.changed(&started(&key, 7, 5_000), 1_000);
        assert!(d.due(5_999, 1_000).is_empty(), "not before 5 s after it was applied");
        assert_eq!(ends(&d.due(6_000, 1_000)), [("n".to_string(), 7)]);
        assert!(d.due(6_500, 1_000).is_empty(), "not proposed twice within the retry time");
        assert_eq!(ends(&d.due(7_000, 1_000)), [("n".to_string(), 7)], "a lost end is proposed again");
        d.changed(&LockChange::DelayEnded { key: key.clone(), since_revision: 7 }, 7_100);
        assert!(d.is_empty() && d.due(10_000, 1_000).is_empty(), "an ended delay is forgotten");
    }

    #[test]
    fn at_most_a_bounded_number_of_delay_ends_are_proposed_in_one_turn_and_the_rest_in_the_next() {
        let mut d = LockDelays::default();
        let n = super::MAX_ENDS_PER_TURN + 10;
        for i in 0..n {
            d.changed(&started(&lock_key(LockSpace::Locks, &format!("n{i}")), 7, 1_000), 0);
        }
        assert_eq!(d.due(1_000, 500).len(), super::MAX_ENDS_PER_TURN, "the first turn is bounded");
        assert_eq!(d.due(1_001, 500).len(), 10, "the next turn proposes the rest");
    }

    #[test]
    fn a_delay_found_in_a_loaded_state_counts_in_full_from_loading_or_from_the_first_clock_reading() {
        let key = lock_key(LockSpace::Elections, "e");
        let mut d = LockDelays::default();
        d.reload(vec![(key.clone(), 3, 2_000)], 0);
        d.clock_started(50_000);
        assert!(d.due(51_999, 1_000).is_empty(), "counted from the clock's first reading");
        assert_eq!(ends(&d.due(52_000, 1_000)), [("e".to_string(), 3)]);
        d.reload(vec![(key, 4, 2_000)], 60_000);
        assert!(d.due(61_000, 0).is_empty() && d.len() == 1, "a reload counts from itself");
    }

    #[test]
    fn a_snapshot_loaded_over_a_delay_this_member_counted_keeps_its_count_and_starts_only_the_new_ones() {
        let kept = lock_key(LockSpace::Locks, "kept");
        let again = lock_key(LockSpace::Locks, "again");
        let new = lock_key(LockSpace::Locks, "new");
        let mut d = LockDelays::default();
        d.changed(&started(&kept, 7, 5_000), 1_000);
        d.changed(&started(&again, 8, 5_000), 1_000);
        d.changed(&started(&lock_key(LockSpace::Locks, "gone"), 9, 5_000), 1_000);
        // The snapshot holds `kept` as it was, `again` in a later delay (begun at 20), `new`
        // that this member never applied, and no longer `gone`.
        d.reload(vec![(kept.clone(), 7, 5_000), (again.clone(), 20, 5_000), (new.clone(), 21, 5_000)], 4_000);
        assert_eq!(d.len(), 3, "the loaded state's delays, and only them");
        assert_eq!(
            ends(&d.due(6_000, 1_000)),
            [("kept".to_string(), 7)],
            "the delay counted since 1 s ends at 6 s, not 5 s after the install"
        );
        assert!(
            d.due(8_999, 60_000).is_empty(),
            "a delay begun at another revision, or learned from the snapshot, counts from the install"
        );
        let mut at_9 = ends(&d.due(9_000, 60_000));
        at_9.sort();
        assert_eq!(at_9, [("again".to_string(), 20), ("new".to_string(), 21)]);
    }
}
