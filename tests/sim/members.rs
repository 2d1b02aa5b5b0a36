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
pub(crate) fn learners_on(s: &mut Scripted, id: u64) -> Vec<u64> {
    let txn = s.core(id).state_db().begin_read().expect("a read transaction begins");
    latch::core::membership::recorded_learners(&txn).expect("the configuration reads")
}

/// What the peers of `me` that are up would answer it (`Peer.Status`).
pub(crate) fn answers_for(s: &mut Scripted, me: u64, up: &[u64]) -> BTreeMap<u64, Answer> {
    up.iter()
        .filter(|p| **p != me)
        .map(|p| {
            let learners = learners_on(s, *p);
            let lists_me = admission::lists(&recorded_on(s, *p), &learners, me);
            let removed = s.core(*p).configuration().removed.contains(&me);
            (
                *p,
                Answer {
                    lists_me,
                    learner: learners.contains(&me),
                    admitting: false,
                    removed,
                    restored_from: fsm::RestoredFrom::default(),
                },
            )
        })
        .collect()
}

pub(crate) fn value_on(s: &mut Scripted, id: u64, key: &str) -> Option<Vec<u8>> {
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
    for r in 0..300 {
        if r % 20 == 0 || r < 10 {
            let sw = s.core(w).status();
            let so = s.core(o).status();
            eprintln!(
                "round {r}: W role {:?} term {} leader {} conf {:?}/{:?} commit {} | O role {:?} term {} leader {} conf {:?}/{:?}",
                sw.role, sw.term, sw.leader, s.core(w).conf_state().voters, s.core(w).conf_state().learners, sw.commit_index,
                so.role, so.term, so.leader, s.core(o).conf_state().voters, s.core(o).conf_state().learners
            );
        }
        s.round(&mut all);
    }
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
    s.until("the member stops", 100, &mut all, &mut |s| s.why_stopped(f).is_some());
    let why = s.why_stopped(f).unwrap_or_default();
    assert!(
        why.contains(&format!("raft log ends at index {last}"))
            && why.contains(&format!("member {l}, knows it acknowledged entries up to index"))
            && why.contains("forgot entries it acknowledged"),
        "it says what it has, who knows better and what that means: {why}"
    );
}

pub(crate) fn s_put(key: &str, value: &str) -> Command {
    Command {
        version: fsm::COMMAND_VERSION,
        request_id: String::new(),
        body: Some(Body::Put(Put { key: key.into(), value: value.into(), ..Default::default() })),
    }
}

/// Member `from`'s vote request to `to` for the next term, as a leader's handover asks: a
/// member's lease of its leader does not hide the answer.
fn forced_vote_request(s: &mut Scripted, from: u64, to: u64) -> Message {
    let candidate = s.core(from).status();
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgRequestVote);
    (m.from, m.to, m.term) = (from, to, candidate.term + 1);
    m.index = s.core(from).log().last_index_now();
    m.log_term = candidate.term;
    m.context = raft::CAMPAIGN_TRANSFER.to_vec().into();
    m
}

/// Whether `member` votes in member `id`'s raft configuration.
pub(crate) fn votes_on(s: &mut Scripted, id: u64, member: u64) -> bool {
    s.core(id).conf_state().voters.contains(&member)
}

/// The repair for a lost data dir: the running members make the member a learner; their states
/// then no longer list it, so it is admitted on an empty data dir; it catches up from a
/// snapshot, and only then does the leader make it a voter again — after which its vote counts
/// toward commits. While it is down it stays a learner, however long.
#[test]
fn a_member_that_lost_its_data_is_replaced_as_a_learner_and_votes_again_once_caught_up() {
    let (mut s, l, w, o) = cluster_with_writes(61, Some(20));
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
    let refused = s.replace(l, w);
    s.round(&mut all);
    assert!(
        matches!(s.answer(refused), Some(Reply::Changed(Err(latch::core::RequestError::Membership(_))))),
        "a member the leader heard from lately is refused as running: {:?}",
        s.answer(refused)
    );
    for _ in 0..30 {
        s.round(&mut all);
    }

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

/// A 3-member cluster with compaction every 20 entries, every start recorded, 40 writes in;
/// returns it with (leader, member to replace, other).
pub(crate) fn cluster_with_writes(seed: u64, snapshot_entries: Option<u64>) -> (Scripted, u64, u64, u64) {
    let mut s = match snapshot_entries {
        Some(n) => Scripted::with_snapshot_entries(3, seed, n),
        None => Scripted::new(3, seed),
    };
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
        let put = s.propose(l, Command { request_id: format!("r{i}"), ..s_put(&format!("before-{i}"), "1") });
        s.until("a write before answered", 100, &mut all, &mut |s| s.answer(put).is_some());
    }
    (s, l, w, o)
}

/// Member `w` loses its data dir, stays down for an election timeout (the leader refuses to
/// replace a member it heard from lately), and is replaced through leader `l`.
pub(crate) fn lose_data_and_replace(s: &mut Scripted, l: u64, w: u64) {
    s.crash(w);
    s.wipe(w);
    for _ in 0..30 {
        s.round(&mut all);
    }
    let change = s.replace(l, w);
    s.until("the replacement answered", 100, &mut all, &mut |s| s.answer(change).is_some());
    assert!(
        matches!(s.answer(change), Some(Reply::Changed(Ok(i))) if *i > 0),
        "the replacement was applied: {:?}",
        s.answer(change)
    );
}

/// A member still running is not replaced: its old life would acknowledge the next append past
/// its demotion and be made a voter again at once, and the operator, told to start it on an
/// empty data dir, would then be refused (or, in a narrow window, admitted as a voter with an
/// empty log). Once stopped for an election timeout it is replaced, stays a learner while down,
/// and is admitted on an empty data dir (review-s60 #1).
#[test]
fn a_member_that_runs_is_not_replaced_until_it_stops() {
    let (mut s, l, w, o) = cluster_with_writes(71, Some(20));
    let change = s.replace(l, w);
    s.round(&mut all);
    match s.answer(change) {
        Some(Reply::Changed(Err(latch::core::RequestError::Membership(
            latch::core::membership::Refused::Running { member },
        )))) if *member == w => {}
        other => panic!("expected member {w}, running, refused as such; got {other:?}"),
    }
    lose_data_and_replace(&mut s, l, w);
    for _ in 0..30 {
        s.round(&mut all);
    }
    for id in [l, o] {
        assert!(!votes_on(&mut s, id, w), "member {id}: member {w}, down, stays a learner");
    }
    s.start(w);
    let verdict = admission::verdict(3, &answers_for(&mut s, w, &[l, o]));
    assert_eq!(verdict, Verdict::Admit, "the replaced member is admitted on an empty data dir");
}

/// A member elected with its own demotion in its log commits it as leader, hands leadership to
/// a voter, and stays a learner: it does not promote itself, nor is it promoted back by its own
/// acknowledgements (review-s60 #1, through a leader change).
#[test]
fn a_leader_demoted_by_the_change_it_commits_hands_over_and_does_not_promote_itself() {
    let (mut s, l, w, o) = cluster_with_writes(73, Some(20));
    // The demotion reaches W only, and L never hears that W has it: it is not committed.
    let mut only_w_gets_it = |m: &Message| {
        let t = m.get_msg_type();
        if (t == MessageType::MsgAppend && m.to == o) || (t == MessageType::MsgAppendResponse && m.from == w)
        {
            Route::Drop
        } else {
            Route::Deliver
        }
    };
    // W's answers are lost for a while (W still hears L, so it does not campaign): L no longer
    // hears from it, as from a member that is down.
    let mut w_silent = |m: &Message| if m.from == w { Route::Drop } else { Route::Deliver };
    for _ in 0..40 {
        s.round(&mut w_silent);
    }
    let change = s.replace(l, w);
    for _ in 0..5 {
        s.round(&mut only_w_gets_it);
    }
    let last_l = s.core(l).log().last_index_now();
    assert!(s.core(w).log().last_index_now() >= last_l, "W holds the demotion");
    assert!(s.answer(change).is_none(), "not committed yet");
    s.crash(l);
    s.until("W leads", 300, &mut all, &mut |s| s.core(w).status().role == latch::core::Role::Leader);
    s.start(l);
    s.until("the demotion applied on W and O", 300, &mut all, &mut |s| {
        !votes_on(s, w, w) && !votes_on(s, o, w)
    });
    // A client write reaches the demoted leader meanwhile.
    let _write = s.propose(w, Command { request_id: "during".into(), ..s_put("during", "1") });
    // It hands over (raft-rs leaves a demoted leader leading; `change_membership` asks for one
    // transfer, which the target refuses while it has the demotion to apply, and resets the
    // leader's own progress with the demoted member's), and does not make itself a voter again.
    s.until("W, demoted, hands leadership to a voter", 300, &mut all, &mut |s| {
        if s.core(w).status().role == latch::core::Role::Leader {
            assert!(!votes_on(s, w, w), "W, demoted while leading, made itself a voter again");
        }
        s.leader().is_some_and(|id| id != w)
    });
}

/// A replaced member's new life serves no serializable read from its empty state before a
/// ReadIndex round of this life: its old life served the cluster's revisions, and a node's
/// revisions never go backwards across restarts (DESIGN §1; review-s60 #2). Its peers' answers
/// say it was replaced, and the server tells the core (`Core::lived_before`).
#[test]
fn a_replaced_member_serves_no_serializable_read_before_it_caught_up() {
    let (mut s, l, w, o) = cluster_with_writes(79, Some(20));
    let served_before = s.core(w).status().applied.revision;
    assert!(served_before > 0);
    lose_data_and_replace(&mut s, l, w);
    for _ in 0..10 {
        s.round(&mut all);
    }
    s.start(w);
    let answers = answers_for(&mut s, w, &[l, o]);
    assert_eq!(admission::verdict(3, &answers), Verdict::Admit);
    assert!(answers.values().any(|a| a.learner), "its peers have it a learner: it ran before");
    // As the server does when admitted by peers that have it a learner.
    s.core(w).lived_before();
    let mut hold_snapshots =
        |m: &Message| if latch::core::is_snapshot(m) { Route::Hold } else { Route::Deliver };
    let read = s.read_serializable(w);
    for _ in 0..20 {
        s.round(&mut hold_snapshots);
    }
    let revision = s.core(w).status().applied.revision;
    assert_ne!(
        s.answer(read),
        Some(&Reply::ReadReady),
        "member {w} would serve a serializable read at revision {revision} (its old life served {served_before})"
    );
}

/// Every member restarts while the replaced member is still a learner, on states whose applies
/// were not all synced (the demotion is applied again from the log on some of them): each
/// starts with the configuration its state records, and the learner stays one (review-s60 #7).
#[test]
fn a_learner_stays_a_learner_across_restarts_of_every_member() {
    let (mut s, l, w, o) = cluster_with_writes(83, None);
    lose_data_and_replace(&mut s, l, w);
    for round in 0..3 {
        for id in [l, o] {
            s.crash(id);
            s.start(id);
        }
        s.until("a leader after the restarts", 300, &mut all, &mut |s| s.leader().is_some());
        for _ in 0..20 {
            s.round(&mut all);
        }
        for id in [l, o] {
            assert!(!votes_on(&mut s, id, w), "round {round}: member {id} counts W's vote again");
            assert_eq!(s.core(id).conf_state().learners, vec![w], "round {round}: member {id}");
        }
    }
}

/// A replaced member can also catch up from the log (not compacted): it replays its own
/// demotion, is a learner in its own configuration, and is then promoted (review-s60 #7).
#[test]
fn a_replaced_member_catches_up_from_an_uncompacted_log() {
    let (mut s, l, w, o) = cluster_with_writes(89, None);
    lose_data_and_replace(&mut s, l, w);
    for _ in 0..10 {
        s.round(&mut all);
    }
    s.start(w);
    assert_eq!(admission::verdict(3, &answers_for(&mut s, w, &[l, o])), Verdict::Admit);
    s.until("the replaced member votes again on every member", 500, &mut all, &mut |s| {
        (1..=3).all(|id| votes_on(s, id, w) && learners_on(s, id).is_empty())
    });
    assert_eq!(s.core(w).status().snapshots_installed, 0, "from the log");
    assert_eq!(value_on(&mut s, w, "before-0"), Some(b"1".to_vec()), "it caught up");
}

/// With O down, demoting W (running) would leave {L, O} to commit everything and the cluster
/// would stop until O returned (etcd's `--strict-reconfig-check`; review-s60 #3): the replacement
/// is refused and the cluster keeps its leader. (W running is refused as such first; the check of
/// the running voters left, `Refused::NoQuorum`, is a unit test of `membership`.)
#[test]
fn a_replacement_that_would_stop_the_cluster_is_refused() {
    let (mut s, l, w, o) = cluster_with_writes(97, Some(20));
    s.crash(o);
    let change = s.replace(l, w);
    s.until("the replacement answered", 100, &mut all, &mut |s| s.answer(change).is_some());
    for _ in 0..100 {
        s.round(&mut all);
    }
    let answer = s.answer(change).cloned();
    assert!(
        s.leader().is_some(),
        "with O down, demoting W (running) left voters {:?} and no leader; the replacement was answered {answer:?}",
        s.core(l).conf_state().voters
    );
}

/// A replaced member's new life may have voted in its earlier life, in a term a candidate that
/// has not applied the replacement still campaigns in: until it applied something, it grants no
/// vote and does not even take the request's term (review-s60 #4). Once caught up, it votes.
#[test]
fn a_replaced_members_new_life_grants_no_vote_before_it_applied_something() {
    let (mut s, l, w, o) = cluster_with_writes(103, Some(20));
    lose_data_and_replace(&mut s, l, w);
    s.start(w);
    s.core(w).lived_before();
    let ask_vote = |s: &mut Scripted, from: u64| forced_vote_request(s, from, w);
    let term_before = s.core(w).status().term;
    let request = ask_vote(&mut s, o);
    s.step(w, request);
    assert_eq!(
        s.held(MessageType::MsgRequestVoteResponse, o),
        0,
        "the empty new life answered a vote request"
    );
    assert_eq!(s.core(w).status().term, term_before, "the empty new life took the candidate's term");

    let mut hold_snapshots =
        |m: &Message| if latch::core::is_snapshot(m) { Route::Hold } else { Route::Deliver };
    s.until("a snapshot for the new life", 100, &mut hold_snapshots, &mut |s| {
        s.held(MessageType::MsgSnapshot, w) > 0
    });
    s.deliver_held_snapshot(w);
    assert!(s.core(w).status().applied.index > 0, "the new life applied the snapshot");
    let request = ask_vote(&mut s, o);
    s.step(w, request);
    assert_eq!(s.held(MessageType::MsgRequestVoteResponse, o), 1, "once it applied something, it answers");
}

/// A round in which member `w` gets no appends and no snapshot (each snapshot for it reported
/// failed to its sender, as the transport does), while its answers still reach its peers.
fn round_w_cut_off(s: &mut Scripted, w: u64) {
    let mut route = |m: &Message| match m.get_msg_type() {
        MessageType::MsgAppend if m.to == w => Route::Drop,
        _ if latch::core::is_snapshot(m) && m.to == w => Route::Hold,
        _ => Route::Deliver,
    };
    s.round(&mut route);
    s.fail_held_snapshots(w);
}

/// Member `w` loses its data and is replaced; its second life installs a snapshot far behind
/// the commit index (more than `PROMOTE_WITHIN` entries were committed while the snapshot was on
/// the way), and its acknowledgement of the snapshot reaches the leader `l`; then it gets
/// nothing more. Returns the snapshot's index: what the leader knows the second life holds.
fn second_life_acknowledged_a_snapshot_far_behind(s: &mut Scripted, l: u64, w: u64) -> u64 {
    lose_data_and_replace(s, l, w);
    s.start(w);
    s.core(w).lived_before();
    let mut hold_snapshots =
        |m: &Message| if latch::core::is_snapshot(m) { Route::Hold } else { Route::Deliver };
    s.until("a snapshot for the replaced member", 100, &mut hold_snapshots, &mut |s| {
        s.held(MessageType::MsgSnapshot, w) > 0
    });
    let writes: Vec<_> = (0..latch::core::membership::PROMOTE_WITHIN + 50)
        .map(|i| {
            s.propose(l, Command { request_id: format!("later{i}"), ..s_put(&format!("later-{i}"), "1") })
        })
        .collect();
    s.until("the writes answered", 2_000, &mut hold_snapshots, &mut |s| {
        writes.iter().all(|w| s.answer(*w).is_some())
    });
    let snapshot_index = s.deliver_held_snapshot(w);
    // `deliver_held_snapshot` holds what the member sent: its acknowledgement must reach the
    // leader, or the leader never learns what this life holds (matched stays 0).
    s.deliver_held(MessageType::MsgAppendResponse, l);
    s.fail_held_snapshots(w);
    for _ in 0..20 {
        round_w_cut_off(s, w);
    }
    assert_eq!(s.core(w).status().applied.index, snapshot_index, "the second life installed the snapshot");
    assert!(s.core(l).status().commit_index > snapshot_index + latch::core::membership::PROMOTE_WITHIN);
    assert!(!votes_on(s, l, w), "the second life, far behind, is still a learner");
    snapshot_index
}

/// The next life of `w`, started on an empty data dir and admitted, catches up and is promoted
/// without stopping on what an earlier life acknowledged.
fn next_life_catches_up(s: &mut Scripted, l: u64, w: u64, o: u64, told: &str) {
    s.start(w);
    assert_eq!(admission::verdict(3, &answers_for(s, w, &[l, o])), Verdict::Admit);
    s.core(w).lived_before();
    let mut hold_snapshots =
        |m: &Message| if latch::core::is_snapshot(m) { Route::Hold } else { Route::Deliver };
    s.until("the next life votes again on every member", 500, &mut hold_snapshots, &mut |s| {
        if let Some(why) = s.why_stopped(w) {
            panic!("{told}, yet the next life stopped: {why}");
        }
        if s.held(MessageType::MsgSnapshot, w) > 0 {
            s.deliver_held_snapshot(w);
        }
        (1..=3).all(|id| votes_on(s, id, w) && learners_on(s, id).is_empty())
    });
    let last = format!("later-{}", latch::core::membership::PROMOTE_WITHIN + 49);
    assert_eq!(value_on(s, w, &last), Some(b"1".to_vec()), "it caught up");
}

/// A replaced member's new life may lose its data dir again after it acknowledged a snapshot
/// but before it was promoted. The leader knows what that life acknowledged; asked to replace
/// the learner again, it forgets it, so the next life is probed from scratch and sent a
/// snapshot, rather than told by the first heartbeat of a commit past the end of its empty log,
/// which it would take for lost data and stop on (review-s60-fixes F1; review-s61 made the
/// leader learn the acknowledgement, as in production).
#[test]
fn a_learner_that_loses_its_data_again_before_its_promotion_is_replaced_again_and_catches_up() {
    let (mut s, l, w, o) = cluster_with_writes(101, Some(20));
    let acknowledged = second_life_acknowledged_a_snapshot_far_behind(&mut s, l, w);
    assert!(acknowledged > 0);
    s.crash(w);
    s.wipe(w);
    for _ in 0..30 {
        s.round(&mut all);
    }
    let again = s.replace(l, w);
    s.round(&mut all);
    assert_eq!(s.answer(again), Some(&Reply::Changed(Ok(0))), "a learner already: nothing to change");
    next_life_catches_up(&mut s, l, w, o, "replaced again after it stopped");
}

/// Asked to replace a learner it heard from within two election timeouts, the
/// leader answers Ok(0) ("was a learner already: start it on an empty data dir") and forgets
/// nothing. The operator who asked while the slow second life still ran, then stopped, wiped and
/// started it, sees the next life stop at the first heartbeat (FORGOT_ENTRIES). The answer must
/// be a refusal (`Running`), or the next life must catch up.
#[test]
fn a_learner_replaced_again_while_it_runs_is_refused_or_its_next_life_catches_up() {
    let (mut s, l, w, o) = cluster_with_writes(107, Some(20));
    second_life_acknowledged_a_snapshot_far_behind(&mut s, l, w);
    let again = s.replace(l, w);
    round_w_cut_off(&mut s, w);
    let answer = s.answer(again).cloned();
    if !matches!(answer, Some(Reply::Changed(Ok(0)))) {
        return; // refused: the operator is told to stop it first
    }
    s.crash(w);
    s.wipe(w);
    next_life_catches_up(&mut s, l, w, o, &format!("answered {answer:?} while it ran"));
}

/// The same moments after the second life stopped (the operator replaces it
/// again at once, as the FORGOT_ENTRIES advice and the docs say).
#[test]
fn a_learner_replaced_again_moments_after_it_stopped_is_refused_or_its_next_life_catches_up() {
    let (mut s, l, w, o) = cluster_with_writes(109, Some(20));
    second_life_acknowledged_a_snapshot_far_behind(&mut s, l, w);
    s.crash(w);
    s.wipe(w);
    let again = s.replace(l, w);
    s.round(&mut all);
    let answer = s.answer(again).cloned();
    if !matches!(answer, Some(Reply::Changed(Ok(0)))) {
        return; // refused as running (retryable): asked again later, it resets
    }
    next_life_catches_up(&mut s, l, w, o, &format!("answered {answer:?} moments after it stopped"));
}

/// F2's `Refused::JustElected`. A leader elected moments ago (here by a transfer,
/// with W's answers to it delayed) has not heard from W, which runs: without the refusal it
/// would take W for stopped and demote it (and W's next acknowledgement would make it a voter
/// again, review-s60 #1). Fails if `led_since_tick`'s check is removed.
#[test]
fn a_leader_elected_moments_ago_refuses_a_replacement_until_it_heard_from_every_member() {
    let (mut s, l, w, o) = cluster_with_writes(109, Some(20));
    let mut transfer = Message::default();
    transfer.set_msg_type(MessageType::MsgTransferLeader);
    (transfer.from, transfer.to) = (o, l);
    s.step(l, transfer);
    s.deliver_held(MessageType::MsgTimeoutNow, o);
    // O campaigns; L's vote elects it; W's answer (its request is never delivered) is not heard.
    s.deliver_held(MessageType::MsgRequestVote, l);
    s.deliver_held(MessageType::MsgRequestVoteResponse, o);
    // W's messages to O are delayed (dropped) while O takes over.
    let mut w_to_o_lost = |m: &Message| if m.from == w && m.to == o { Route::Drop } else { Route::Deliver };
    s.until("O leads", 100, &mut w_to_o_lost, &mut |s| s.core(o).status().role == latch::core::Role::Leader);
    let early = s.replace(o, w);
    s.until("the replacement answered", 50, &mut w_to_o_lost, &mut |s| s.answer(early).is_some());
    match s.answer(early) {
        Some(Reply::Changed(Err(latch::core::RequestError::Membership(
            latch::core::membership::Refused::JustElected { .. },
        )))) => {}
        other => panic!("a leader elected moments ago replaced member {w}, which runs: {other:?}"),
    }
    for _ in 0..25 {
        s.round(&mut all);
    }
    let later = s.replace(o, w);
    s.round(&mut all);
    assert!(
        matches!(
            s.answer(later),
            Some(Reply::Changed(Err(latch::core::RequestError::Membership(
                latch::core::membership::Refused::Running { .. }
            ))))
        ),
        "two election timeouts on, W is heard and refused as running: {:?}",
        s.answer(later)
    );
    assert!(votes_on(&mut s, o, w));
}

/// A replaced member's new life is admitted, learns the leader's term from a heartbeat (written
/// to its hard state), and restarts before it applied anything: its log is no longer fresh, so
/// its peers are not asked about it; its data dir's LIVED_BEFORE mark still has the server call
/// `lived_before`, and it grants no vote with nothing applied (review-s61 #2).
#[test]
fn a_replaced_life_restarted_before_it_applied_anything_still_grants_no_vote() {
    let (mut s, l, w, o) = cluster_with_writes(113, Some(20));
    lose_data_and_replace(&mut s, l, w);
    s.start(w);
    s.core(w).lived_before();
    let mut hold_snapshots =
        |m: &Message| if latch::core::is_snapshot(m) { Route::Hold } else { Route::Deliver };
    s.until("a snapshot for the new life", 100, &mut hold_snapshots, &mut |s| {
        s.held(MessageType::MsgSnapshot, w) > 0
    });
    assert_eq!(s.core(w).status().applied.index, 0, "nothing applied yet");
    s.crash(w);
    s.start(w);
    assert!(!s.core(w).log_was_fresh(), "its log holds the leader's term: it is asked nothing");
    // As the server does on every start of a data dir with a LIVED_BEFORE mark.
    s.core(w).lived_before();
    let request = forced_vote_request(&mut s, o, w);
    s.step(w, request);
    let granted = s
        .held_messages()
        .iter()
        .any(|m| m.get_msg_type() == MessageType::MsgRequestVoteResponse && m.to == o && !m.reject);
    assert!(
        !granted,
        "the restarted new life (log fresh: {}, applied {}) granted a vote",
        s.core(w).log_was_fresh(),
        s.core(w).status().applied.index
    );
}
