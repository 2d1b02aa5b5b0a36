//! Scenarios: one exact interleaving each, on the [`crate::scripted`] cluster, for faults that
//! seeded runs reach only by luck. Each test names the behaviour it pins down.

use latch::fsm;
use latch_proto::internal::{command::Body, Command, Put, Range};
use raft::eraftpb::{Message, MessageType};

use crate::scripted::{all, Answer, Route, Scripted};

fn put(id: &str, key: &str, value: &str) -> Command {
    Command {
        version: fsm::COMMAND_VERSION,
        request_id: id.into(),
        body: Some(Body::Put(Put { key: key.into(), value: value.into(), ..Default::default() })),
    }
}

/// The value of `key` in member `id`'s applied state.
fn value_on(s: &mut Scripted, id: u64, key: &str) -> Option<Vec<u8>> {
    let txn = s.core(id).db().begin_read().expect("a read transaction begins");
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
