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
use latch::core::state_check::{copied, judge, Point, Verdict, Vote};
use latch::fsm;
use raft::eraftpb::{Message, MessageType};
use redb::{ReadableDatabase as _, ReadableTable as _};

use crate::invariants::Ctx;
use crate::scenarios::{appends_lost_snapshots_held, put, value_on};
use crate::scripted::{all, Route, Scripted};

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
            // Every member is sound here: a copy is as good a witness as any.
            let peers: Vec<Vote> = at
                .iter()
                .filter(|(m, _)| **m != member)
                .map(|(m, h)| Vote { member: *m, hash: *h, copied: false })
                .collect();
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

/// A byte of `key`'s row changes in member `id`'s state file (its raft log is untouched).
fn damage(s: &mut Scripted, id: u64, key: &str, from: &[u8], to: &[u8]) {
    let db = s.core(id).state_db().clone();
    let txn = db.begin_write().expect("begins");
    {
        let mut kv = txn.open_table(latch::storage::schema::KV).expect("kv");
        let mut value = kv.get(key.as_bytes()).expect("reads").expect("the key is there").value().to_vec();
        let at = value.windows(from.len()).position(|w| w == from).expect("the value is in the row");
        value[at..at + to.len()].copy_from_slice(to);
        kv.insert(key.as_bytes(), value.as_slice()).expect("writes");
    }
    txn.commit().expect("commits");
}

/// review-s58 #1: a damaged leader's snapshot, installed by a follower that fell behind, puts
/// the damage on two members of three; the follower's state is a copy that never agreed with
/// the sound member's since, so it is no witness, and the sound member is not judged.
#[test]
fn a_member_that_installed_a_damaged_leaders_snapshot_does_not_outvote_the_sound_one() {
    const SNAPSHOT_ENTRIES: u64 = 8;
    let mut s = Scripted::with_snapshot_entries(3, 41, SNAPSHOT_ENTRIES);
    s.until("a leader", 200, &mut all, &mut |s| s.leader().is_some());
    let damaged = s.leader().expect("a leader");
    let lagging = if damaged == 1 { 2 } else { 1 };
    let sound = 6 - damaged - lagging;
    let w = s.propose(damaged, put("p-k", "k", "sound"));
    s.until("k applied everywhere", 200, &mut all, &mut |s| {
        s.answer(w).is_some()
            && (1..=3).all(|id| value_on(s, id, "k").as_deref() == Some(b"sound".as_slice()))
    });
    // The leader's state file takes a changed byte (nothing raft sees).
    damage(&mut s, damaged, "k", b"sound", b"SOUND");
    assert_eq!(value_on(&mut s, damaged, "k").as_deref(), Some(b"SOUND".as_slice()));

    // One follower falls behind the leader's log.
    let mut cut_off = appends_lost_snapshots_held(lagging);
    let waiters: Vec<_> =
        (0..120).map(|i| s.propose(damaged, put(&format!("p{i}"), &format!("x{i}"), "v"))).collect();
    s.until("the puts acknowledged", 400, &mut cut_off, &mut |s| {
        waiters.iter().all(|w| s.answer(*w).is_some())
    });
    for _ in 0..10 {
        s.round(&mut cut_off);
    }
    assert!(s.core(damaged).log().compacted().index > 0, "the leader compacted its log");
    // Back in touch, it is sent a snapshot of the leader's (damaged) state.
    let mut hold_snapshots =
        |m: &Message| if latch::core::is_snapshot(m) { Route::Hold } else { Route::Deliver };
    s.until("a snapshot sent", 400, &mut hold_snapshots, &mut |s| {
        s.held(MessageType::MsgSnapshot, lagging) > 0
    });
    let installed = s.deliver_held_snapshot(lagging);
    assert_eq!(value_on(&mut s, lagging, "k").as_deref(), Some(b"SOUND".as_slice()), "it has the damage now");

    // The leader's next periodic check point.
    s.core(damaged).set_clock(2 * latch::core::STATE_CHECK_INTERVAL_MS);
    let after = |s: &Scripted, m: u64| {
        s.points.lock().unwrap().iter().filter(|(who, i, _)| *who == m && *i > installed).map(|p| p.1).max()
    };
    s.until("every member hashed a point after the snapshot", 400, &mut all, &mut |s| {
        (1..=3).all(|m| after(s, m).is_some())
    });
    let points = s.points.lock().unwrap().clone();
    let index = (1..=3).map(|m| after(&s, m).unwrap()).min().unwrap();
    let kept = |m: u64| -> Vec<Point> {
        points.iter().filter(|(w, _, _)| *w == m).map(|&(_, index, hash)| Point { index, hash }).collect()
    };
    let hash_of = |m: u64| kept(m).iter().rev().find(|p| p.index == index).map(|p| p.hash).unwrap();
    let installed_at = |s: &mut Scripted, m: u64| {
        fsm::installed_at(&s.core(m).state_db().begin_read().expect("reads")).expect("reads its meta")
    };
    assert_eq!(installed_at(&mut s, lagging), installed, "the member records the snapshot it installed");
    assert_eq!(installed_at(&mut s, sound), 0, "the sound member installed none");
    let vote = |s: &mut Scripted, m: u64, judge_: u64| Vote {
        member: m,
        hash: hash_of(m),
        copied: copied(index, installed_at(s, m), &kept(m), &kept(judge_)),
    };
    let peers = [vote(&mut s, damaged, sound), vote(&mut s, lagging, sound)];
    assert_eq!(
        value_on(&mut s, sound, "k").as_deref(),
        Some(b"sound".as_slice()),
        "this member is the sound one"
    );
    let counted_as_witnesses: Vec<Vote> = peers.iter().map(|v| Vote { copied: false, ..*v }).collect();
    assert!(
        matches!(judge(index, hash_of(sound), &counted_as_witnesses, 3), Verdict::Diverged { .. }),
        "counting the copy as a witness, the sound member {sound} would be judged diverged at {index}"
    );
    assert_eq!(
        judge(index, hash_of(sound), &peers, 3),
        Verdict::Unsure {
            index,
            mine: hash_of(sound),
            theirs: hash_of(damaged),
            members: { let mut m = vec![damaged, lagging]; m.sort_unstable(); m },
            copies: vec![lagging],
        },
        "the sound member {sound} is outvoted only by member {lagging}'s copy of the damaged state: nobody is judged"
    );
}
