//! Scenarios: one exact interleaving each, on the [`crate::scripted`] cluster, for faults that
//! seeded runs reach only by luck. Each test names the behaviour it pins down.

use latch::fsm;
use latch_proto::internal::{command::Body, outcome, Command, Put, Range};
use raft::eraftpb::{Message, MessageType};
use redb::ReadableDatabase as _;

use latch::core::RequestError;

use crate::scripted::{all, Answer, Route, Scripted};

pub(crate) fn put(id: &str, key: &str, value: &str) -> Command {
    Command {
        version: fsm::COMMAND_VERSION,
        request_id: id.into(),
        body: Some(Body::Put(Put { key: key.into(), value: value.into(), ..Default::default() })),
    }
}

/// A route that loses `lagging`'s appends and their answers (so it falls behind; heartbeats
/// still pass) and holds every snapshot for the test to deliver.
pub(crate) fn appends_lost_snapshots_held(lagging: u64) -> impl FnMut(&Message) -> Route {
    move |m: &Message| {
        let appends = matches!(m.get_msg_type(), MessageType::MsgAppend | MessageType::MsgAppendResponse);
        if appends && (m.to == lagging || m.from == lagging) {
            Route::Drop
        } else if latch::core::is_snapshot(m) {
            Route::Hold
        } else {
            Route::Deliver
        }
    }
}

/// The value of `key` in member `id`'s applied state.
pub(crate) fn value_on(s: &mut Scripted, id: u64, key: &str) -> Option<Vec<u8>> {
    let txn = s.core(id).state_db().begin_read().expect("a read transaction begins");
    let req = Range { key: key.into(), ..Default::default() };
    fsm::range(&txn, &req, 1 << 20).expect("range succeeds").1.kvs.pop().map(|kv| kv.value)
}

/// A ReadIndex answer addressed to a member's previous life must not confirm a read it asks
/// after restarting: the answer's index predates writes acknowledged since, so serving the new
/// read at it would return a stale value (issue 6, §1).
#[test]
fn a_read_index_answer_from_before_a_restart_never_confirms_a_new_read() {
    let mut s = Scripted::new(3, 7);
    s.until("a leader", 200, &mut all, &mut |s| s.leader().is_some());
    let leader = s.leader().expect("a leader");
    let follower = if leader == 1 { 2 } else { 1 };

    // k = v1, applied everywhere.
    let w = s.propose(leader, put("put-1", "k", "v1"));
    s.until("k = v1 applied on the follower", 100, &mut all, &mut |s| {
        s.answer(w).is_some() && value_on(s, follower, "k").as_deref() == Some(b"v1")
    });

    // The follower asks a read; the leader's answer is held back on the wire.
    let first_read = s.read(follower);
    let mut hold_answers = |m: &Message| {
        if m.get_msg_type() == MessageType::MsgReadIndexResp && m.to == follower {
            Route::Hold
        } else {
            Route::Deliver
        }
    };
    s.until("the leader's ReadIndex answer on the wire", 50, &mut hold_answers, &mut |s| {
        s.held(MessageType::MsgReadIndexResp, follower) == 1
    });
    assert_eq!(s.answer(first_read), None, "the held answer has not reached the follower");

    // The follower crashes; k = v2 is acknowledged by the other two meanwhile.
    s.crash(follower);
    let w = s.propose(leader, put("put-2", "k", "v2"));
    s.until("k = v2 acknowledged", 100, &mut all, &mut |s| s.answer(w).is_some());
    assert!(
        matches!(s.answer(w), Some(Answer::Applied(Ok(_)))),
        "k = v2 should be acknowledged by a majority, got {:?}",
        s.answer(w)
    );

    // It restarts and hears the leader's heartbeats, but no appends (so v2 does not reach it)
    // and its own ReadIndex requests do not reach the leader.
    s.start(follower);
    let mut cut = |m: &Message| match (m.get_msg_type(), m.to == follower, m.from == follower) {
        (MessageType::MsgAppend, true, _) | (MessageType::MsgReadIndex, _, true) => Route::Drop,
        _ => Route::Deliver,
    };
    s.until("the restarted follower to know the leader", 100, &mut cut, &mut |s| {
        s.core(follower).status().leader == leader
    });
    s.round(&mut cut);
    let second_read = s.read(follower);
    s.round(&mut cut);

    // The answer from its previous life arrives now.
    s.deliver_held(MessageType::MsgReadIndexResp, follower);
    if let Some(Answer::ReadReady) = s.answer(second_read) {
        let seen = value_on(&mut s, follower, "k");
        panic!(
            "a read asked after k = v2 was acknowledged was confirmed by a ReadIndex answer to the \
             follower's previous life, and would serve k = {:?} (expected it to wait for a fresh \
             confirmation and serve v2)",
            seen.map(|v| String::from_utf8_lossy(&v).into_owned())
        );
    }

    // Healed, the read is confirmed afresh and sees v2.
    s.until("the second read to be served", 200, &mut all, &mut |s| s.answer(second_read).is_some());
    assert_eq!(s.answer(second_read), Some(&Answer::ReadReady));
    assert_eq!(value_on(&mut s, follower, "k").as_deref(), Some(b"v2".as_slice()));
}

/// A read whose ReadIndex was confirmed at an index this member cannot reach (its appends are
/// lost) fails after the request timeout, like any other waiting request, instead of waiting
/// for ever (issue 6, §1).
#[test]
fn a_read_confirmed_at_an_index_the_member_cannot_reach_times_out() {
    let mut s = Scripted::new(3, 11);
    s.until("a leader", 200, &mut all, &mut |s| s.leader().is_some());
    let leader = s.leader().expect("a leader");
    let follower = if leader == 1 { 2 } else { 1 };
    let mut starve = |m: &Message| {
        if m.get_msg_type() == MessageType::MsgAppend && m.to == follower {
            Route::Drop
        } else {
            Route::Deliver
        }
    };
    let w = s.propose(leader, put("put-1", "k", "v1"));
    s.until("k = v1 acknowledged without the follower", 100, &mut starve, &mut |s| s.answer(w).is_some());
    let read = s.read(follower);
    s.until("the read confirmed at an index the follower has not applied", 50, &mut starve, &mut |s| {
        s.core(follower).status().reads_awaiting_apply == 1
    });
    assert_eq!(s.answer(read), None, "the follower cannot serve the read: it has not applied k = v1");
    let timeout = latch::core::Timing::default().request_timeout_ticks as usize;
    s.until("the read to be answered", timeout + 10, &mut starve, &mut |s| s.answer(read).is_some());
    assert!(
        matches!(s.answer(read), Some(Answer::ReadFailed(RequestError::TimedOut { .. }))),
        "a read confirmed at an index the member never applies should time out, got {:?}",
        s.answer(read)
    );
}

/// A write the leader proposed and could not commit in time (its followers unreachable) is
/// answered as timed out *and still proposed*: the entry is in its log and may yet commit, so
/// the member's answer says the write may still take effect (`latch-unsettled`). (A read that
/// times out is `proposed: false`: the test above.)
#[test]
fn a_proposal_that_times_out_is_answered_as_still_proposed() {
    let mut all = |_: &Message| Route::Deliver;
    let mut s = Scripted::new(3, 12);
    s.until("a leader", 200, &mut all, &mut |s| s.leader().is_some());
    let leader = s.leader().expect("a leader");
    let mut cut_off =
        |m: &Message| if m.from == leader || m.to == leader { Route::Drop } else { Route::Deliver };
    let w = s.propose(leader, put("put-late", "k", "v"));
    let timeout = latch::core::Timing::default().request_timeout_ticks as usize;
    s.until("the write to be answered", timeout + 10, &mut cut_off, &mut |s| s.answer(w).is_some());
    assert!(
        matches!(s.answer(w), Some(Answer::Applied(Err(RequestError::TimedOut { proposed: true, .. })))),
        "a proposal not committed in time should time out as still proposed, got {:?}",
        s.answer(w)
    );
}

/// Commands a member proposes itself (expiries, later) carry request ids that no other member
/// and no other life of the same member makes, so they are never mistaken for one another's
/// retries (issue 6, §4).
#[test]
fn commands_a_member_proposes_itself_carry_ids_unique_across_members_and_lives() {
    let mut s = Scripted::new(3, 13);
    s.until("a leader", 200, &mut all, &mut |s| s.leader().is_some());
    let mut ids = Vec::new();
    let mut waiters = Vec::new();
    for id in 1..=3 {
        for _ in 0..2 {
            let w = s.next_waiter();
            let body = Body::Put(Put {
                key: format!("own/{id}").into(),
                value: b"x".to_vec(),
                ..Default::default()
            });
            ids.push(s.core(id).propose_own(w, body));
            waiters.push(w);
        }
    }
    s.until("the own commands applied", 300, &mut all, &mut |s| {
        waiters.iter().all(|w| matches!(s.answer(*w), Some(Answer::Applied(Ok(_)))))
    });
    s.crash(2);
    s.start(2);
    s.until("a leader after the restart", 200, &mut all, &mut |s| s.leader().is_some());
    let w = s.next_waiter();
    ids.push(s.core(2).propose_own(w, Body::Put(Put { key: b"own/2".to_vec(), ..Default::default() })));
    let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "own request ids should all differ, across lives too: {ids:?}");
    // The restarted member may lead before its state caught up with its log: read once every
    // member applied what was committed before the restart.
    let committed = (1..=3).map(|i| s.core(i).status().commit_index).max().unwrap_or(0);
    s.until("every member applied what was committed", 300, &mut all, &mut |s| {
        (1..=3).all(|i| s.core(i).status().applied.index >= committed)
    });
    for member in 1..=3 {
        let version = {
            let txn = s.core(member).state_db().begin_read().expect("a read transaction begins");
            let req = Range { key: b"own/1".to_vec(), ..Default::default() };
            fsm::range(&txn, &req, 1 << 20).expect("range succeeds").1.kvs.pop().map(|kv| kv.version)
        };
        assert_eq!(
            version,
            Some(2),
            "member {member}: both own puts of member 1 were applied, neither taken for a retry"
        );
    }
}

/// A request id reused for another command is never answered with the first command's outcome:
/// on the same member it is refused at once, on another member its own entry is applied as a
/// conflict and that is its answer (issue 6, §3).
#[test]
fn a_request_id_reused_for_another_command_never_gets_the_first_ones_outcome() {
    let mut s = Scripted::new(3, 17);
    s.until("a leader", 200, &mut all, &mut |s| s.leader().is_some());
    let leader = s.leader().expect("a leader");
    let (a, b) = if leader == 1 { (2, 3) } else { (1, if leader == 2 { 3 } else { 2 }) };
    let first = s.propose(a, put("same-id", "k", "first"));
    let same_member = s.propose(a, put("same-id", "k", "second"));
    s.round(&mut all);
    assert!(
        matches!(s.answer(same_member), Some(Answer::Applied(Err(RequestError::RequestInFlight { .. })))),
        "another command under a pending id is refused at once, got {:?}",
        s.answer(same_member)
    );
    let other_member = s.propose(b, put("same-id", "k", "third"));
    s.until("both proposals answered", 200, &mut all, &mut |s| {
        s.answer(first).is_some() && s.answer(other_member).is_some()
    });
    let outcome = |w| match s.answer(w) {
        Some(Answer::Applied(Ok(o))) => o.result.clone(),
        other => panic!("expected an applied outcome, got {other:?}"),
    };
    assert!(matches!(outcome(first), Some(outcome::Result::Put(_))), "the first command is applied");
    assert!(
        matches!(outcome(other_member), Some(outcome::Result::Conflict(_))),
        "the other member's command is answered as a conflict, got {:?}",
        outcome(other_member)
    );
    assert_eq!(value_on(&mut s, leader, "k").as_deref(), Some(b"first".as_slice()));
}

/// The leader's snapshot of its applied state now, streamed and staged in member `to`'s inbox as
/// its transport would, and the raft message that carries it (in the leader's term, for the
/// three members' configuration).
fn staged_snapshot(s: &mut Scripted, leader: u64, to: u64) -> Message {
    use latch::storage::SnapshotSource;
    let snapshots = s.core(leader).snapshots().clone();
    let prepared = snapshots.prepare(0).expect("prepare works").expect("a snapshot of the applied state");
    let mut stream = Vec::new();
    snapshots
        .stream(&prepared.token, &mut |frame: Vec<u8>| -> Result<(), latch::core::SnapshotError> {
            stream.extend(frame);
            Ok(())
        })
        .expect("the snapshot streams");
    snapshots.finish(&prepared.token);
    let (mut staging, token) =
        latch::core::Inbox::create(&**s.inbox(to), leader, prepared.index, prepared.term).expect("staged");
    std::io::Write::write_all(&mut staging, &stream).expect("written");
    let mut msg = Message::default();
    msg.set_msg_type(MessageType::MsgSnapshot);
    (msg.from, msg.to, msg.term) = (leader, to, s.core(leader).status().term);
    let snap = msg.mut_snapshot();
    snap.data = token.into();
    snap.mut_metadata().index = prepared.index;
    snap.mut_metadata().term = prepared.term;
    snap.mut_metadata()
        .set_conf_state(raft::eraftpb::ConfState { voters: vec![1, 2, 3], ..Default::default() });
    msg
}

/// A snapshot raft has no use for (the member is already past it) leaves nothing staged in the
/// member's inbox: staged streams do not pile up on disk (issue 6, §3).
#[test]
fn a_snapshot_the_member_does_not_need_leaves_nothing_staged() {
    let mut s = Scripted::new(3, 19);
    s.until("a leader", 200, &mut all, &mut |s| s.leader().is_some());
    let leader = s.leader().expect("a leader");
    let follower = if leader == 1 { 2 } else { 1 };
    let w = s.propose(leader, put("p", "k", "v"));
    s.until("k applied everywhere", 100, &mut all, &mut |s| {
        s.answer(w).is_some() && value_on(s, follower, "k").is_some()
    });
    let msg = staged_snapshot(&mut s, leader, follower);
    assert_eq!(s.inbox(follower).staged(), 1);
    s.step(follower, msg);
    assert_eq!(s.inbox(follower).staged(), 0, "a snapshot raft ignores is removed from the inbox");
}

/// A member in its first life (its log holds no raft state yet) whose first message is a
/// snapshot at the leader's term, dying of a failed log fsync at either point of the install —
/// before the state is replaced, or after it and before the log records the snapshot — starts
/// again and catches up. The Ready's term reaches the log before the state is replaced; without
/// that, the second death left a state past an empty log, which reads as a lost log and is
/// refused at every start ("the raft log ... is missing or empty").
#[test]
fn a_first_life_member_dying_while_it_installs_a_snapshot_starts_again() {
    for ok_syncs in [0, 1] {
        // Member 3 is down from the first moment (nothing of it on disk) while 1 and 2 elect a
        // leader and commit a write; then it starts for the first time.
        let mut s = Scripted::new(3, 37);
        let fresh = 3;
        s.crash(fresh);
        s.wipe(fresh);
        s.until("a leader", 200, &mut all, &mut |s| s.leader().is_some());
        let leader = s.leader().expect("a leader");
        let w = s.propose(leader, put("p", "k", "v"));
        s.until("k applied", 100, &mut all, &mut |s| s.answer(w).is_some());
        s.start(fresh);
        assert!(s.core(fresh).log().is_fresh(), "member {fresh} starts with a log that holds no raft state");
        let msg = staged_snapshot(&mut s, leader, fresh);

        assert_eq!(
            s.core(fresh).log().hard_state(),
            &raft::eraftpb::HardState::default(),
            "the snapshot's message is the first member {fresh} hears: no term or vote yet"
        );
        s.fail_log_sync_after(fresh, ok_syncs);
        s.step(fresh, msg);
        assert!(s.failed(fresh), "{ok_syncs} log syncs after the snapshot arrived, the next one failed");
        s.crash(fresh);
        s.try_start(fresh).unwrap_or_else(|e| {
            panic!("member {fresh}, dead after {ok_syncs} log syncs of its snapshot's install, starts again: {e}")
        });
        s.until("the member caught up", 200, &mut all, &mut |s| value_on(s, fresh, "k").is_some());
        assert_eq!(value_on(&mut s, fresh, "k"), Some(b"v".to_vec()), "after {ok_syncs} syncs");
    }
}

/// The state machine is made durable lazily: a crash takes its latest commits, and the member
/// replays them from its raft log — every acknowledged write comes back once, the revision
/// continues where it was, a retried request id is still answered, not applied again (issue 7).
#[test]
fn a_crash_before_the_state_is_durable_replays_every_acknowledged_write_once() {
    let mut s = Scripted::new(3, 23);
    s.until("a leader", 200, &mut all, &mut |s| s.leader().is_some());
    let leader = s.leader().expect("a leader");
    let mut waiters = Vec::new();
    for i in 0..20 {
        waiters.push(s.propose(leader, put(&format!("put-{i}"), &format!("k{i}"), &format!("v{i}"))));
    }
    s.until("20 puts acknowledged", 200, &mut all, &mut |s| waiters.iter().all(|w| s.answer(*w).is_some()));
    let before = s.core(leader).status();
    assert!(
        before.durable_index < before.applied.index,
        "the state is not durable yet (durable {} < applied {}): the crash will take it",
        before.durable_index,
        before.applied.index
    );
    s.crash(leader);
    s.start(leader);
    let restarted = s.core(leader).status();
    assert!(!restarted.caught_up, "after the crash the state is behind its log");
    assert!(restarted.applied.index < before.applied.index, "the crash took the lazy commits");
    let read = s.read_serializable(leader);
    s.until("the restarted member to catch up", 200, &mut all, &mut |s| s.answer(read).is_some());
    assert!(s.core(leader).status().caught_up);
    for i in 0..20 {
        let got = value_on(&mut s, leader, &format!("k{i}"));
        assert_eq!(got, Some(format!("v{i}").into_bytes()), "k{i} is back after the replay");
    }
    let after = s.core(leader).status();
    assert!(after.applied.revision >= before.applied.revision, "the revision continues where it was");
    let retry = s.propose(leader, put("put-5", "k5", "v5"));
    s.until("the retry answered", 200, &mut all, &mut |s| s.answer(retry).is_some());
    let revision_now = s.core(leader).status().applied.revision;
    assert_eq!(revision_now, after.applied.revision, "a retried request id is not applied again");
}

/// A member that restarted serves nothing from its state until the state has caught up with
/// the commit index its log held: a serializable read waits for it, so revisions never go
/// backwards on a member (issue 7).
#[test]
fn a_read_on_a_restarted_member_waits_until_its_state_caught_up() {
    let mut s = Scripted::new(3, 29);
    s.until("a leader", 200, &mut all, &mut |s| s.leader().is_some());
    let leader = s.leader().expect("a leader");
    let follower = if leader == 1 { 2 } else { 1 };
    let w = s.propose(leader, put("p", "k", "v"));
    s.until("k applied on the follower", 200, &mut all, &mut |s| {
        s.answer(w).is_some() && value_on(s, follower, "k").is_some()
    });
    s.crash(follower);
    s.start(follower);
    assert!(!s.core(follower).status().caught_up, "the follower's lazy state was lost");
    let read = s.read_serializable(follower);
    assert_eq!(s.answer(read), None, "no answer before the state caught up");
    s.until("the read to be granted", 50, &mut all, &mut |s| s.answer(read).is_some());
    assert_eq!(s.answer(read), Some(&Answer::ReadReady));
    assert!(s.core(follower).status().caught_up);
    assert_eq!(
        value_on(&mut s, follower, "k").as_deref(),
        Some(b"v".as_slice()),
        "served the caught-up state"
    );
}

/// A snapshot reaches the state durably, and the crash comes before the log records it: the
/// member restarts with a state ahead of its (stale, uncommitted) log, and the log is moved past
/// it, as the install would have moved it (issue 7; found in review).
#[test]
fn a_crash_after_a_snapshot_reached_the_state_but_not_the_log_restarts_cleanly() {
    use latch::storage::SnapshotSource;
    let mut s = Scripted::new(3, 31);
    s.until("a leader", 200, &mut all, &mut |s| s.leader().is_some());
    let old = s.leader().expect("a leader");
    let w = s.propose(old, put("p0", "k", "v0"));
    s.until("p0 acknowledged", 100, &mut all, &mut |s| s.answer(w).is_some());
    // The old leader, cut off, appends entries nobody else gets.
    let mut cut = |m: &Message| if m.from == old || m.to == old { Route::Drop } else { Route::Deliver };
    for i in 0..60 {
        s.propose(old, put(&format!("stale-{i}"), &format!("s{i}"), "x"));
    }
    s.round(&mut cut);
    let others: Vec<u64> = (1..=3).filter(|i| *i != old).collect();
    s.until("a new leader among the others", 400, &mut cut, &mut |s| {
        others.iter().any(|i| s.core(*i).status().role == latch::core::Role::Leader)
    });
    let new = others
        .iter()
        .copied()
        .find(|i| s.core(*i).status().role == latch::core::Role::Leader)
        .expect("a new leader");
    let ws: Vec<_> =
        (0..10).map(|i| s.propose(new, put(&format!("new-{i}"), &format!("n{i}"), "y"))).collect();
    s.until("new writes acknowledged", 200, &mut cut, &mut |s| ws.iter().all(|w| s.answer(*w).is_some()));
    // The new leader's snapshot, staged at the old leader, whose stale log reaches past it.
    let snapshots = s.core(new).snapshots().clone();
    let prepared = snapshots.prepare(0).expect("prepare").expect("a snapshot");
    assert!(s.core(old).log().last_index_now() >= prepared.index, "the stale log reaches past the snapshot");
    let mut stream = Vec::new();
    snapshots
        .stream(&prepared.token, &mut |f: Vec<u8>| -> Result<(), latch::core::SnapshotError> {
            stream.extend(f);
            Ok(())
        })
        .expect("streams");
    let (mut staged, token) =
        latch::core::Inbox::create(&**s.inbox(old), new, prepared.index, prepared.term).expect("staged");
    std::io::Write::write_all(&mut staged, &stream).expect("written");
    drop(staged);
    let mut msg = Message::default();
    msg.set_msg_type(MessageType::MsgSnapshot);
    (msg.from, msg.to, msg.term) = (new, old, s.core(new).status().term);
    let snap = msg.mut_snapshot();
    snap.data = token.into();
    snap.mut_metadata().index = prepared.index;
    snap.mut_metadata().term = prepared.term;
    snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    // The log's next fsync fails right after the state took the snapshot; then the crash.
    s.fail_next_log_sync(old);
    s.step(old, msg);
    assert!(s.failed(old), "the log flush after the install failed");
    s.crash(old);
    s.try_start(old).unwrap_or_else(|e| panic!("the member should start again, got: {e}"));
    let read = s.read_serializable(old);
    s.until("the old leader to catch up with the new", 300, &mut all, &mut |s| {
        value_on(s, old, "n9").is_some() && s.answer(read).is_some()
    });
    assert_eq!(value_on(&mut s, old, "s0"), None, "the stale entries it never committed are gone");
}

/// The commit index is written to the log without a sync (one fdatasync per write, not two),
/// so a crash can take it back below what the member applied and served. The restarted member
/// then replays only to the commit index its log kept — but it serves no serializable read
/// until a ReadIndex round of its new life confirmed an index and it reached it: cut off from
/// the leader it serves nothing; once it hears from one, it serves at a revision no older than
/// before the crash (issue 7).
#[test]
fn a_restarted_member_whose_commit_index_was_lost_serves_nothing_older_than_before() {
    let mut s = Scripted::new(3, 37);
    s.until("a leader", 200, &mut all, &mut |s| s.leader().is_some());
    let leader = s.leader().expect("a leader");
    let follower = if leader == 1 { 2 } else { 1 };
    let w = s.propose(leader, put("p1", "k", "v1"));
    s.until("k = v1 applied on the follower", 200, &mut all, &mut |s| {
        s.answer(w).is_some() && value_on(s, follower, "k").is_some()
    });
    let first = s.read_serializable(follower);
    s.until("a serializable read on the follower", 50, &mut all, &mut |s| s.answer(first).is_some());
    let served = s.core(follower).status().applied;
    let written_commit = s.core(follower).log().hard_state().commit;
    assert!(written_commit >= served.index, "the follower wrote commit index {written_commit}");

    s.crash(follower);
    s.start(follower);
    let kept_commit = s.core(follower).log().hard_state().commit;
    assert!(
        kept_commit < served.index,
        "the crash should take the unsynced commit index: the log kept {kept_commit}, the member \
         had applied {} (or this scenario no longer builds the case)",
        served.index
    );

    let mut cut =
        |m: &Message| if m.from == follower || m.to == follower { Route::Drop } else { Route::Deliver };
    let read = s.read_serializable(follower);
    for _ in 0..60 {
        s.round(&mut cut);
        let revision = s.core(follower).status().applied.revision;
        assert_eq!(
            s.answer(read),
            None,
            "a restarted member cut off from the leader served a serializable read at revision \
             {revision} (before the crash it served revision {})",
            served.revision
        );
    }
    s.until("the read to be granted once the leader is heard", 200, &mut all, &mut |s| {
        s.answer(read).is_some()
    });
    let now = s.core(follower).status().applied;
    assert!(
        now.revision >= served.revision,
        "served at revision {} after serving revision {} before the crash",
        now.revision,
        served.revision
    );
    assert_eq!(value_on(&mut s, follower, "k").as_deref(), Some(b"v1".as_slice()));
}

/// A follower being sent a snapshot while writes go on catches up from the log after it: the
/// leader does not compact past the snapshot it is sending, so the follower that installs it
/// goes on from its index rather than being sent another, and another, for as long as a
/// transfer outlasts the writes between two compactions. A write the follower forwarded, which
/// the snapshot covers, is answered at once, not when its request times out.
#[test]
fn a_follower_that_installs_a_snapshot_while_writes_go_on_catches_up_from_the_log() {
    const SNAPSHOT_ENTRIES: u64 = 8;
    let mut s = Scripted::with_snapshot_entries(3, 41, SNAPSHOT_ENTRIES);
    s.until("a leader", 200, &mut all, &mut |s| s.leader().is_some());
    let leader = s.leader().expect("a leader");
    let lagging = if leader == 1 { 2 } else { 1 };
    let put_all = |s: &mut Scripted,
                   keys: std::ops::Range<usize>,
                   route: &mut dyn FnMut(&Message) -> Route| {
        let waiters: Vec<_> = keys
            .map(|i| s.propose(leader, put(&format!("p{i}"), &format!("k{i}"), &format!("v{i}"))))
            .collect();
        s.until("the puts acknowledged", 400, route, &mut |s| waiters.iter().all(|w| s.answer(*w).is_some()));
    };
    // Its appends lost, the follower falls behind what the leader's log keeps (more than
    // `CATCH_UP_SNAPSHOTS` × `SNAPSHOT_ENTRIES` behind). Heartbeats still pass, so it keeps
    // its leader, and so do the proposals it forwards: one of its own commits meanwhile.
    let mut cut_off = appends_lost_snapshots_held(lagging);
    let forwarded = s.propose(lagging, put("forwarded", "f", "from the follower"));
    put_all(&mut s, 0..120, &mut cut_off);
    for _ in 0..10 {
        s.round(&mut cut_off); // heartbeats: Readies that compact
    }
    let compacted = s.core(leader).log().compacted().index;
    assert!(compacted > 0, "the leader compacted its log (to {compacted})");

    // Back in touch, it is sent a snapshot, which takes its time while 20 more writes apply
    // (more than the leader's log keeps past its applied index).
    let mut hold_snapshots =
        |m: &Message| if latch::core::is_snapshot(m) { Route::Hold } else { Route::Deliver };
    s.until("a snapshot sent to the follower", 400, &mut hold_snapshots, &mut |s| {
        s.held(MessageType::MsgSnapshot, lagging) > 0
    });
    put_all(&mut s, 120..140, &mut hold_snapshots);
    assert_eq!(s.answer(forwarded), None, "the follower has not applied its own write yet");
    let index = s.deliver_held_snapshot(lagging);
    assert!(
        s.core(leader).log().compacted().index <= index,
        "the leader kept its log from the snapshot's index {index} on (compacted to {})",
        s.core(leader).log().compacted().index
    );
    s.until("the forwarded write answered", 10, &mut hold_snapshots, &mut |s| s.answer(forwarded).is_some());
    assert!(
        matches!(s.answer(forwarded), Some(Answer::Applied(Ok(_)))),
        "the forwarded write is answered as applied: {:?}",
        s.answer(forwarded)
    );

    // From the snapshot's index it follows the log: no second snapshot, and it has every write.
    s.until("the follower caught up", 400, &mut hold_snapshots, &mut |s| {
        s.held(MessageType::MsgSnapshot, lagging) > 0 || value_on(s, lagging, "k139").is_some()
    });
    assert_eq!(s.held(MessageType::MsgSnapshot, lagging), 0, "one snapshot was enough");
    assert_eq!(value_on(&mut s, lagging, "f"), Some(b"from the follower".to_vec()), "the forwarded write");
    for i in 0..140 {
        assert_eq!(value_on(&mut s, lagging, &format!("k{i}")), Some(format!("v{i}").into_bytes()), "k{i}");
    }
}

/// A member's vote is durable before it leaves: restarted after voting, it never grants its
/// vote in that term to another candidate (two votes in a term can elect two leaders in it).
/// The leader is cut off; of the two others, the first to campaign gets the other's vote, which
/// never arrives; the voter crashes and restarts; then only it and the old leader talk, the
/// voter does not campaign, and the old leader asks for its vote in that same term (a pre-vote
/// first, which the voter must refuse: granted, the vote itself follows).
#[test]
fn a_member_restarted_after_voting_never_votes_for_another_candidate_in_that_term() {
    use std::cell::RefCell;
    use std::collections::{BTreeMap, BTreeSet};
    use std::rc::Rc;

    let mut s = Scripted::new(3, 61);
    s.until("a leader", 200, &mut all, &mut |s| s.leader().is_some());
    let old = s.leader().expect("a leader");
    /// (voter, term) → the candidates it granted its vote.
    type Votes = BTreeMap<(u64, u64), BTreeSet<u64>>;
    let votes: Rc<RefCell<Votes>> = Rc::default();
    let record = {
        let votes = votes.clone();
        move |m: &Message| {
            if m.get_msg_type() == MessageType::MsgRequestVoteResponse && !m.reject {
                votes.borrow_mut().entry((m.from, m.term)).or_default().insert(m.to);
            }
        }
    };
    let mut vote_lost = |m: &Message| {
        record(m);
        let granted = m.get_msg_type() == MessageType::MsgRequestVoteResponse && !m.reject;
        if m.from == old || m.to == old || granted {
            Route::Drop
        } else {
            Route::Deliver
        }
    };
    s.until("a vote granted without the old leader", 1_000, &mut vote_lost, &mut |_| {
        !votes.borrow().is_empty()
    });
    let ((voter, term), candidates) =
        votes.borrow().iter().next().map(|(k, v)| (*k, v.clone())).expect("a vote");
    let candidate = *candidates.iter().next().expect("a candidate");
    s.crash(voter);
    s.start(voter);
    assert_eq!(s.core(voter).status().term, term, "the voter's term survived its crash");

    let (asked, answered) = (Rc::new(std::cell::Cell::new(false)), Rc::new(std::cell::Cell::new(false)));
    let mut old_asks = {
        let (asked, answered) = (asked.clone(), answered.clone());
        move |m: &Message| {
            record(m);
            let asks =
                matches!(m.get_msg_type(), MessageType::MsgRequestPreVote | MessageType::MsgRequestVote);
            if m.from == candidate || m.to == candidate || (asks && m.from == voter) {
                return Route::Drop;
            }
            if asks && m.from == old && m.to == voter && m.term == term {
                asked.set(true);
            }
            let answers = matches!(
                m.get_msg_type(),
                MessageType::MsgRequestPreVoteResponse | MessageType::MsgRequestVoteResponse
            );
            if answers && m.from == voter && m.to == old && asked.get() {
                answered.set(true);
            }
            Route::Deliver
        }
    };
    s.until("the voter to answer the old leader's ask in its term", 1_000, &mut old_asks, &mut |_| {
        answered.get()
    });
    for _ in 0..300 {
        s.round(&mut old_asks);
    }
    for ((v, t), granted) in votes.borrow().iter() {
        assert!(granted.len() == 1, "member {v} granted its vote in term {t} to {granted:?}");
    }
}
