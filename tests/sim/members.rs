//! Members that lose their data (`fsm::members`, `server::admission`), on the scripted cluster:
//! every member's start is recorded in the replicated state; a member restarted on an empty data
//! dir is refused by the verdict of its peers' states; and what letting it in would cost.

use std::collections::BTreeMap;

use latch::fsm;
use latch::server::admission::{self, Answer, Verdict};
use latch_proto::internal::{command::Body, Command, Put, Range};
use raft::eraftpb::{Message, MessageType};
use redb::ReadableDatabase as _;

use crate::scripted::{all, Answer as Reply, Route, Scripted};

/// The members whose start member `id`'s applied state records.
fn recorded_on(s: &mut Scripted, id: u64) -> Vec<u64> {
    let txn = s.core(id).state_db().begin_read().expect("a read transaction begins");
    fsm::members::recorded(&txn).expect("the records read")
}

/// The learners member `id`'s applied state records.
fn learners_on(s: &mut Scripted, id: u64) -> Vec<u64> {
    let txn = s.core(id).state_db().begin_read().expect("a read transaction begins");
    latch::core::membership::recorded_learners(&txn).expect("the configuration reads")
}

/// What the peers of `me` that are up would answer it (`Peer.Status`).
fn answers_for(s: &mut Scripted, me: u64, up: &[u64]) -> BTreeMap<u64, Answer> {
    up.iter()
        .filter(|p| **p != me)
        .map(|p| {
            let learners = learners_on(s, *p);
            let lists_me = admission::lists(&recorded_on(s, *p), &learners, me);
            (*p, Answer { lists_me, learner: learners.contains(&me), admitting: false })
        })
        .collect()
}

fn value_on(s: &mut Scripted, id: u64, key: &str) -> Option<Vec<u8>> {
    let txn = s.core(id).state_db().begin_read().expect("a read transaction begins");
    let req = Range { key: key.into(), ..Default::default() };
    fsm::range(&txn, &req, 1 << 20).expect("range succeeds").1.kvs.pop().map(|kv| kv.value)
}

/// A 3-member cluster with a leader, every member's start recorded on every member.
fn recorded_cluster(seed: u64) -> Scripted {
    let mut s = Scripted::new(3, seed);
    s.until("a leader", 200, &mut all, &mut |s| s.leader().is_some());
    s.until("every start recorded on every member", 200, &mut all, &mut |s| {
        (1..=3).all(|id| s.core(id).start_recorded() && recorded_on(s, id) == vec![1, 2, 3])
    });
    s
}

/// The index of the entry that first recorded `member`, on member `id`.
fn record_index(s: &mut Scripted, id: u64, member: u64) -> u64 {
    let txn = s.core(id).state_db().begin_read().expect("a read transaction begins");
    let table = txn.open_table(latch::storage::schema::MEMBERS).expect("the members table");
    let row = table.get(member.to_be_bytes().as_slice()).expect("readable").expect("recorded");
    u64::from_be_bytes(row.value().try_into().expect("8 bytes"))
}

#[test]
fn every_member_records_its_start_and_the_first_record_outlives_restarts() {
    let mut s = recorded_cluster(41);
    let leader = s.leader().expect("a leader");
    let follower = if leader == 1 { 2 } else { 1 };
    let first = record_index(&mut s, leader, follower);
    for _ in 0..2 {
        s.crash(follower);
        s.start(follower);
        assert!(!s.core(follower).log_was_fresh(), "its log survived the restart");
        s.until("the restarted member sees its record", 100, &mut all, &mut |s| {
            s.core(follower).start_recorded()
        });
    }
    for _ in 0..50 {
        s.round(&mut all);
    }
    for id in 1..=3 {
        assert_eq!(recorded_on(&mut s, id), vec![1, 2, 3], "member {id}'s records");
        assert_eq!(record_index(&mut s, id, follower), first, "member {id} keeps the first record");
    }
}

#[test]
fn a_member_restarted_on_an_empty_data_dir_is_refused_by_a_peer_that_records_it() {
    let mut s = recorded_cluster(43);
    let leader = s.leader().expect("a leader");
    let wiped = if leader == 3 { 2 } else { 3 };
    s.crash(wiped);
    s.wipe(wiped);
    s.start(wiped);
    assert!(s.core(wiped).log_was_fresh(), "its log is empty");
    assert!(!s.core(wiped).start_recorded(), "its state is empty");
    let up = [1, 2, 3];
    let verdict = admission::verdict(3, &answers_for(&mut s, wiped, &up));
    assert!(
        matches!(verdict, Verdict::Refuse { .. }),
        "expected the peers to refuse member {wiped}, got {verdict:?}"
    );

    // A whole cluster's first start: nobody records anybody, and every member is admitted.
    let mut fresh = Scripted::new(3, 47);
    for me in 1..=3 {
        assert_eq!(admission::verdict(3, &answers_for(&mut fresh, me, &up)), Verdict::Admit, "member {me}");
    }
}

/// Why the refusal matters: the wiped member's forgotten acknowledgement was part of a commit.
/// Members L (leader), W and O; O misses the appends; L and W acknowledge k = v (committed, the
/// client is answered); L crashes; W restarts on an empty data dir; O, whose log lacks k, is
/// elected with W's vote — and k = v is gone. Admission would have refused W: O records it.
#[test]
fn letting_a_wiped_member_take_part_loses_a_committed_write_that_admission_would_have_kept() {
    let mut s = recorded_cluster(53);
    let l = s.leader().expect("a leader");
    let (w, o) = match l {
        1 => (2, 3),
        2 => (1, 3),
        _ => (1, 2),
    };
    let mut o_misses_appends = |m: &Message| {
        let append = matches!(m.get_msg_type(), MessageType::MsgAppend | MessageType::MsgAppendResponse);
        if append && (m.to == o || m.from == o) {
            Route::Drop
        } else {
            Route::Deliver
        }
    };
    let put = Command {
        version: fsm::COMMAND_VERSION,
        request_id: "acknowledged".into(),
        body: Some(Body::Put(Put { key: "k".into(), value: "v".into(), ..Default::default() })),
    };
    let waiter = s.propose(l, put);
    s.until("k = v answered", 100, &mut o_misses_appends, &mut |s| s.answer(waiter).is_some());
    assert!(
        matches!(s.answer(waiter), Some(Reply::Applied(Ok(_)))),
        "k = v is committed: {:?}",
        s.answer(waiter)
    );
    assert_eq!(value_on(&mut s, o, "k"), None, "O never received k = v");

    s.crash(l);
    s.crash(w);
    s.wipe(w);
    s.start(w);
    let verdict = admission::verdict(3, &answers_for(&mut s, w, &[o]));
    assert_eq!(verdict, Verdict::Refuse { peer: o }, "O alone records W's start: W is refused");

    // Let in anyway, W votes O in; O's first commit as leader settles that k = v is lost.
    s.until("O leads", 300, &mut all, &mut |s| s.core(o).status().role == latch::core::Role::Leader);
    let after = s.propose(o, Command { request_id: "after".into(), ..s_put("k2", "x") });
    s.until("a write committed by O and W", 100, &mut all, &mut |s| s.answer(after).is_some());
    assert_eq!(
        value_on(&mut s, o, "k"),
        None,
        "without admission the acknowledged k = v is lost (if this fails, the scenario no longer \
         shows the anomaly admission guards against)"
    );
}

/// A member restarted on an older copy of its data dir has forgotten entries it acknowledged
/// (and perhaps votes it cast). The leader's next heartbeat commits up to what the member
/// acknowledged, past the end of its log, where raft-rs would panic (explore-disk F10): the
/// member stops instead, naming what it has and what it acknowledged.
#[test]
fn a_member_restarted_on_an_older_copy_of_its_data_dir_stops_at_the_leaders_heartbeat() {
    let mut s = recorded_cluster(59);
    let l = s.leader().expect("a leader");
    let f = if l == 1 { 2 } else { 1 };
    s.crash(f);
    let backup = s.copy_data(f);
    s.start(f);
    for i in 0..5 {
        let w = s.propose(l, Command { request_id: format!("w{i}"), ..s_put(&format!("k{i}"), "v") });
        s.until("the write answered", 100, &mut all, &mut |s| s.answer(w).is_some());
    }
    let acknowledged = s.core(l).log().last_index_now();
    s.until("the member has every entry", 100, &mut all, &mut |s| {
        s.core(f).log().last_index_now() >= acknowledged
    });
    s.crash(f);
    s.restore_data(f, backup);
    s.start(f);
    let last = s.core(f).log().last_index_now();
    assert!(last < acknowledged, "the copy is older: its log ends at {last}, before {acknowledged}");
    s.until("the member stops", 100, &mut all, &mut |s| s.stopped_on_a_message(f).is_some());
    let why = s.stopped_on_a_message(f).unwrap_or_default();
    assert!(
        why.contains(&format!("raft log ends at index {last}"))
            && why.contains(&format!("member {l}, knows it acknowledged entries up to index"))
            && why.contains("forgot entries it acknowledged"),
        "it says what it has, who knows better and what that means: {why}"
    );
}

fn s_put(key: &str, value: &str) -> Command {
    Command {
        version: fsm::COMMAND_VERSION,
        request_id: String::new(),
        body: Some(Body::Put(Put { key: key.into(), value: value.into(), ..Default::default() })),
    }
}

/// Whether `member` votes in member `id`'s raft configuration.
fn votes_on(s: &mut Scripted, id: u64, member: u64) -> bool {
    s.core(id).conf_state().voters.contains(&member)
}

/// The repair for a lost data dir: the running members make the member a learner; their states
/// then no longer list it, so it is admitted on an empty data dir; it catches up from a
/// snapshot, and only then does the leader make it a voter again — after which its vote counts
/// toward commits. While it is down it stays a learner, however long.
#[test]
fn a_member_that_lost_its_data_is_replaced_as_a_learner_and_votes_again_once_caught_up() {
    let mut s = Scripted::with_snapshot_entries(3, 61, 20);
    s.until("a leader", 200, &mut all, &mut |s| s.leader().is_some());
    s.until("every start recorded on every member", 200, &mut all, &mut |s| {
        (1..=3).all(|id| s.core(id).start_recorded() && recorded_on(s, id) == vec![1, 2, 3])
    });
    let l = s.leader().expect("a leader");
    let (w, o) = match l {
        1 => (3, 2),
        2 => (3, 1),
        _ => (2, 1),
    };
    for i in 0..40 {
        let put = s.propose(l, s_put(&format!("before-{i}"), "1"));
        s.until("a write before answered", 100, &mut all, &mut |s| s.answer(put).is_some());
    }

    let refused = s.replace(l, l);
    s.round(&mut all);
    assert!(
        matches!(s.answer(refused), Some(Reply::Changed(Err(latch::core::RequestError::Membership(_))))),
        "the leader cannot replace itself: {:?}",
        s.answer(refused)
    );

    s.crash(w);
    s.wipe(w);
    s.start(w);
    let verdict = admission::verdict(3, &answers_for(&mut s, w, &[l, o]));
    assert!(matches!(verdict, Verdict::Refuse { .. }), "before its replacement it is refused: {verdict:?}");
    s.crash(w);

    let change = s.replace(l, w);
    s.until("the replacement answered", 100, &mut all, &mut |s| s.answer(change).is_some());
    let Some(Reply::Changed(Ok(index))) = s.answer(change).cloned() else {
        panic!("expected the replacement to be applied, got {:?}", s.answer(change))
    };
    assert!(index > 0, "a change was made");
    for _ in 0..100 {
        s.round(&mut all);
    }
    for id in [l, o] {
        assert!(!votes_on(&mut s, id, w), "member {id}: the replaced member, down, does not vote");
        assert_eq!(learners_on(&mut s, id), vec![w], "member {id}'s state records the learner");
    }
    let again = s.replace(l, w);
    s.round(&mut all);
    assert_eq!(s.answer(again), Some(&Reply::Changed(Ok(0))), "asked again: nothing to change");

    s.start(w);
    let verdict = admission::verdict(3, &answers_for(&mut s, w, &[l, o]));
    assert_eq!(verdict, Verdict::Admit, "once replaced, it may start on an empty data dir");
    let mut hold_snapshots =
        |m: &Message| if latch::core::is_snapshot(m) { Route::Hold } else { Route::Deliver };
    s.until("a snapshot for the replaced member", 100, &mut hold_snapshots, &mut |s| {
        s.held(MessageType::MsgSnapshot, w) > 0
    });
    s.deliver_held_snapshot(w);
    s.until("the replaced member votes again on every member", 500, &mut all, &mut |s| {
        (1..=3).all(|id| votes_on(s, id, w) && learners_on(s, id).is_empty())
    });
    assert_eq!(value_on(&mut s, w, "before-0"), Some(b"1".to_vec()), "it caught up");
    assert!(
        s.core(w).status().snapshots_installed > 0,
        "from a snapshot: the log was compacted past its start"
    );

    // Its vote counts: with the third member down, the leader and it commit a write.
    s.crash(o);
    let after = s.propose(l, s_put("after", "2"));
    s.until("a write committed by the leader and the replaced member", 200, &mut all, &mut |s| {
        s.answer(after).is_some()
    });
    assert!(matches!(s.answer(after), Some(Reply::Applied(Ok(_)))), "committed: {:?}", s.answer(after));
    s.until("the replaced member applies it", 50, &mut all, &mut |s| value_on(s, w, "after").is_some());

    // And the configuration outlives a restart of every member.
    s.start(o);
    for id in 1..=3 {
        s.crash(id);
        s.start(id);
    }
    s.until("a leader after the restarts", 300, &mut all, &mut |s| s.leader().is_some());
    for id in 1..=3 {
        assert_eq!(s.core(id).conf_state().voters.len(), 3, "member {id}: every member votes");
    }
}
