//! Registry timers (DESIGN.md §2 rules 2–3): a TTL check's overdue heartbeat, and the removal
//! of an instance critical for its `deregister_after_ms`. The replicated state holds only
//! durations and what they count from (heartbeat counts, revisions); every member counts them
//! on its own clock from when it applied the change, and only the leader acts, by proposing
//! `MarkCritical` or `Reap`.
//!
//! Invariants:
//! - A member counts a timer from when it applied the change that started it (or, for one it
//!   found in a state it loaded without having applied that change, from when it loaded it). Every member applies a heartbeat after
//!   its client sent it, so whichever member leads, no instance turns critical before its TTL
//!   has passed since its last heartbeat was sent, and none is removed before it was critical
//!   for its `deregister_after_ms` (counted from the critical turn's commit). (Not "since it was
//!   acknowledged": a follower acknowledges what it applied, maybe after the leader did.)
//! - A verdict names what it was counted from (the heartbeat count, the critical-since
//!   revision): the state machine ignores one that a newer change overtook in the log. One not
//!   applied within `retry_ms` (lost with a leader) is proposed again.
//! - Memory: one entry per TTL-checked or critical instance (and one in the by-due index); the
//!   leader's turn looks only at the timers that are due.

use std::collections::{BTreeMap, BTreeSet};

use latch_proto::internal::{command::Body, MarkCritical, Reap};

use crate::fsm::registry::split_key;
use crate::fsm::{InstanceChange, InstanceTimer};

/// Most verdicts proposed in one turn (as `leases` bounds its expiries): a fleet whose
/// heartbeats stop together, or a new leader finding every timer overdue, must not put a
/// hundred thousand proposals in one Ready.
const MAX_VERDICTS_PER_TURN: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Armed {
    timer: InstanceTimer,
    ends_at: u64,
    /// When it is next looked at: `ends_at`, or once its verdict was proposed, when it may be
    /// proposed again.
    due_at: u64,
}

#[derive(Debug, Default)]
pub struct InstanceTimers {
    timers: BTreeMap<Vec<u8>, Armed>,
    /// Every armed timer by `(due_at, key)`: the leader's turn looks at the due ones only.
    by_due: BTreeSet<(u64, Vec<u8>)>,
}

fn length(t: &InstanceTimer) -> u64 {
    match t {
        InstanceTimer::Heartbeat { ttl_ms, .. } => *ttl_ms,
        InstanceTimer::Reap { after_ms, .. } => *after_ms,
    }
}

impl InstanceTimers {
    /// Replaces the timers with those of a state just loaded. One this member was already
    /// counting (it applied the very change that started it: the same heartbeat of the same
    /// registration, the same critical turn) goes on from where it started; the others count
    /// in full from `now`. A snapshot installed over a member's state thus delays only the
    /// verdicts of changes the member had not applied itself.
    pub fn reload(&mut self, timers: Vec<(Vec<u8>, InstanceTimer)>, now: u64) {
        let counted = std::mem::take(&mut self.timers);
        self.by_due.clear();
        for (key, timer) in timers {
            let armed = match counted.get(&key) {
                Some(a) if a.timer == timer => *a,
                _ => {
                    let ends_at = now.saturating_add(length(&timer));
                    Armed { timer, ends_at, due_at: ends_at }
                }
            };
            self.arm(key, armed);
        }
    }

    /// The clock's first reading: timers loaded before it count from there.
    pub fn clock_started(&mut self, at: u64) {
        let timers = std::mem::take(&mut self.timers);
        self.by_due.clear();
        for (key, mut a) in timers {
            a.ends_at = a.ends_at.saturating_add(at);
            a.due_at = a.ends_at;
            self.arm(key, a);
        }
    }

    /// An instance change this member applied at `now`. A timer the change leaves as it was
    /// keeps counting from where it started.
    pub fn changed(&mut self, change: &InstanceChange, now: u64) {
        match change.timer {
            None => self.disarm(&change.key),
            Some(timer) => {
                if self.timers.get(&change.key).is_some_and(|a| a.timer == timer) {
                    return;
                }
                self.disarm(&change.key);
                let ends_at = now.saturating_add(length(&timer));
                self.arm(change.key.clone(), Armed { timer, ends_at, due_at: ends_at });
            }
        }
    }

    /// As leader: the verdicts of the timers that ran out, except those proposed within
    /// `retry_ms`; at most [`MAX_VERDICTS_PER_TURN`]. Looks at the due timers only.
    pub fn due(&mut self, now: u64, retry_ms: u64) -> Vec<Body> {
        let mut out = Vec::new();
        while let Some((due_at, key)) = self.by_due.first().cloned() {
            if due_at > now || out.len() == MAX_VERDICTS_PER_TURN {
                break; // the rest in the next turns
            }
            self.by_due.remove(&(due_at, key.clone()));
            let Some(a) = self.timers.get_mut(&key) else { continue };
            a.due_at = now.saturating_add(retry_ms.max(1));
            self.by_due.insert((a.due_at, key.clone()));
            let Some((service, id)) = split_key(&key) else { continue };
            let (service, id) = (service.to_string(), id.to_string());
            out.push(match a.timer {
                InstanceTimer::Heartbeat { beats, registered_revision, .. } => {
                    Body::MarkCritical(MarkCritical { service, id, beats, registered_revision })
                }
                InstanceTimer::Reap { since_revision, .. } => {
                    Body::Reap(Reap { service, id, critical_since: since_revision })
                }
            });
        }
        out
    }

    /// Forgets when verdicts were proposed (leadership moved: a new leader proposes its own).
    pub fn demoted(&mut self) {
        self.by_due.clear();
        for (key, a) in self.timers.iter_mut() {
            a.due_at = a.ends_at;
            self.by_due.insert((a.due_at, key.clone()));
        }
    }

    pub fn len(&self) -> usize {
        self.timers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }

    fn arm(&mut self, key: Vec<u8>, a: Armed) {
        self.by_due.insert((a.due_at, key.clone()));
        self.timers.insert(key, a);
    }

    fn disarm(&mut self, key: &[u8]) {
        if let Some(a) = self.timers.remove(key) {
            self.by_due.remove(&(a.due_at, key.to_vec()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &str, timer: Option<InstanceTimer>) -> InstanceChange {
        InstanceChange { key: key.as_bytes().to_vec(), timer }
    }

    #[test]
    fn a_missed_heartbeat_is_judged_once_the_ttl_passed_since_this_member_applied_the_last_one() {
        let mut t = InstanceTimers::default();
        t.changed(
            &change(
                "web/1",
                Some(InstanceTimer::Heartbeat { ttl_ms: 1_000, beats: 0, registered_revision: 3 }),
            ),
            100,
        );
        t.changed(
            &change(
                "web/1",
                Some(InstanceTimer::Heartbeat { ttl_ms: 1_000, beats: 1, registered_revision: 3 }),
            ),
            600,
        );
        assert!(t.due(1_599, 500).is_empty(), "a heartbeat restarts the count");
        match t.due(1_600, 500).as_slice() {
            [Body::MarkCritical(m)] => {
                assert_eq!((m.service.as_str(), m.id.as_str(), m.beats), ("web", "1", 1))
            }
            other => panic!("expected one MarkCritical, got {other:?}"),
        }
        assert!(t.due(1_900, 500).is_empty(), "not proposed twice within the retry time");
        assert_eq!(t.due(2_100, 500).len(), 1, "a lost verdict is proposed again");
        t.changed(&change("web/1", None), 2_200);
        assert!(t.is_empty(), "a removed instance needs no timer");
    }

    #[test]
    fn at_most_a_bounded_number_of_verdicts_are_proposed_in_one_turn_and_the_rest_in_the_next() {
        let mut t = InstanceTimers::default();
        let n = super::MAX_VERDICTS_PER_TURN + 10;
        for i in 0..n {
            let timer = Some(InstanceTimer::Heartbeat { ttl_ms: 1_000, beats: 0, registered_revision: 3 });
            t.changed(&change(&format!("web/{i}"), timer), 0);
        }
        assert_eq!(t.due(1_000, 500).len(), super::MAX_VERDICTS_PER_TURN, "the first turn is bounded");
        assert_eq!(t.due(1_001, 500).len(), 10, "the next turn proposes the rest");
    }

    #[test]
    fn a_critical_instance_is_reaped_after_its_deregister_time_and_a_repeat_change_does_not_restart_it() {
        let mut t = InstanceTimers::default();
        let reap = InstanceTimer::Reap { since_revision: 9, after_ms: 5_000 };
        t.changed(&change("db/a", Some(reap)), 1_000);
        t.changed(&change("db/a", Some(reap)), 3_000);
        match t.due(6_000, 500).as_slice() {
            [Body::Reap(r)] => assert_eq!(r.critical_since, 9),
            other => panic!("expected one Reap counted from the first change, got {other:?}"),
        }
    }

    #[test]
    fn timers_of_a_loaded_state_count_in_full_from_loading_or_from_the_first_clock_reading() {
        let mut t = InstanceTimers::default();
        t.reload(
            vec![(
                b"web/1".to_vec(),
                InstanceTimer::Heartbeat { ttl_ms: 2_000, beats: 4, registered_revision: 3 },
            )],
            0,
        );
        t.clock_started(10_000);
        assert!(t.due(11_999, 0).is_empty());
        assert_eq!(t.due(12_000, 0).len(), 1);
        t.reload(vec![], 20_000);
        assert!(t.is_empty());
    }

    /// A snapshot installed over a member's state (seed 356 of the leader-change runs, under
    /// `LATCH_SIM_REGISTRY_NEVER_LATE=1`, turned an instance critical 0.76 s past its TTL while
    /// the new leader counted the heartbeat it had applied itself again from the install).
    #[test]
    fn a_snapshot_loaded_over_a_timer_this_member_counted_keeps_its_count_and_starts_only_the_new_ones() {
        let hb = |beats| InstanceTimer::Heartbeat { ttl_ms: 2_000, beats, registered_revision: 3 };
        let mut t = InstanceTimers::default();
        t.changed(&change("web/1", Some(hb(4))), 1_000);
        t.changed(&change("web/2", Some(hb(1))), 1_000);
        let loaded = vec![(b"web/1".to_vec(), hb(4)), (b"web/2".to_vec(), hb(2)), (b"web/3".to_vec(), hb(0))];
        t.reload(loaded, 2_500);
        let due: Vec<String> = t
            .due(3_000, 10_000)
            .iter()
            .map(|b| match b {
                Body::MarkCritical(m) => format!("{}/{}@{}", m.service, m.id, m.beats),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            due,
            ["web/1@4"],
            "the heartbeat this member applied at 1,000 is judged at 3,000, as before the load"
        );
        assert!(
            t.due(4_499, 10_000).is_empty(),
            "a heartbeat it learned from the snapshot counts from the load"
        );
        assert_eq!(
            t.due(4_500, 10_000).len(),
            2,
            "web/2's newer heartbeat and web/3's registration, from 2,500"
        );
    }

    #[test]
    fn the_by_due_index_follows_every_change_removal_demotion_and_reload() {
        let mut t = InstanceTimers::default();
        let hb = |beats| Some(InstanceTimer::Heartbeat { ttl_ms: 1_000, beats, registered_revision: 1 });
        for n in 0..100 {
            t.changed(&change(&format!("web/i{n}"), hb(0)), n);
        }
        t.changed(&change("web/i5", None), 100);
        t.changed(&change("web/i6", hb(1)), 500);
        assert_eq!(t.by_due.len(), t.timers.len(), "one index entry per timer");
        let due = t.due(1_100, 10_000).len();
        assert_eq!(due, 98, "every timer that ran out but the removed and the re-armed one");
        assert!(t.due(1_200, 10_000).is_empty(), "proposed ones wait for the retry time");
        t.demoted();
        assert_eq!(t.due(1_200, 10_000).len(), 98, "a new leader proposes its own at once");
        assert_eq!(t.due(1_500, 10_000).len(), 1, "the re-armed one, 1 s after its heartbeat");
        t.reload(Vec::new(), 2_000);
        assert!(t.is_empty() && t.by_due.is_empty());
    }
}
