//! The members' check points (`core::state_check`) in the simulator: every member's applier
//! hashes its state at each check point it applies, at once ([`Inline`]), and after every step
//! [`PointChecker::after_step`] checks that every member's hash at an index equals the one first
//! recorded there (by any member, in any life: a replay after a crash hashes the same state
//! again) and that judging the member against the others' hashes finds nothing wrong — a sound
//! cluster never stops a member for divergence, whatever crashes, snapshots and partitions did
//! to it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use latch::core::applier::PointHasher;
use latch::core::state_check::{judge, Verdict};

use crate::invariants::Ctx;

/// Hashes recorded and not checked yet: (member, index, hash).
type Recorded = Arc<Mutex<Vec<(u64, u64, u64)>>>;

/// A member's hasher: hashes at once, on the simulator's thread.
struct Inline {
    member: u64,
    recorded: Recorded,
}

impl PointHasher for Inline {
    fn hash(&self, index: u64, state: redb::ReadTransaction) {
        let hash =
            latch::fsm::checked_state_hash(&state).unwrap_or_else(|e| panic!("cannot hash the state: {e}"));
        if let Ok(mut r) = self.recorded.lock() {
            r.push((self.member, index, hash));
        }
    }
}

#[derive(Default)]
pub struct PointChecker {
    recorded: Recorded,
    /// Every check point's hash per member.
    points: BTreeMap<u64, BTreeMap<u64, u64>>,
    /// Check points at which two members' hashes were compared.
    pub compared: u64,
}

impl PointChecker {
    /// The hasher member `member`'s applier is given.
    pub fn hasher(&self, member: u64) -> Arc<dyn PointHasher> {
        Arc::new(Inline { member, recorded: self.recorded.clone() })
    }

    /// Checks the hashes recorded since the last step, in a cluster of `voters`.
    pub fn after_step(&mut self, ctx: Ctx, voters: usize) {
        let recorded = self.recorded.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default();
        for (member, index, hash) in recorded {
            let at = self.points.entry(index).or_default();
            if let Some((other, theirs)) = at.iter().find(|(_, h)| **h != hash) {
                ctx.fail(
                    Some(member),
                    "equal state at a check point",
                    format!("at check point {index} its state hashes to {hash:016x}, member {other}'s to {theirs:016x}"),
                );
            }
            let first_here = at.keys().all(|m| *m == member);
            at.insert(member, hash);
            let peers: Vec<(u64, u64)> =
                at.iter().filter(|(m, _)| **m != member).map(|(m, h)| (*m, *h)).collect();
            match judge(index, hash, &peers, voters) {
                Verdict::Agreed | Verdict::Undecided => {}
                verdict => ctx.fail(
                    Some(member),
                    "a sound member is never judged diverged",
                    format!("at check point {index}: {verdict:?}"),
                ),
            }
            if !first_here {
                self.compared += 1;
            }
        }
    }
}
