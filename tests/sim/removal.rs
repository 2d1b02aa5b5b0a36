//! Members removed from the cluster for good (`core::membership::check_remove`), on the scripted
//! cluster: a removed member stops once it applies its removal and does not start again on its
//! data dir; the members left commit without it; its messages reach no member that applied the
//! removal; the leader hands over before it is removed; and a learner whose replacement never
//! came back is given up.

use latch::core::membership::Refused;
use latch::core::RequestError;
use latch::server::admission::{self, Verdict};
use latch_proto::internal::Command;
use raft::eraftpb::{Message, MessageType};

use crate::members::{answers_for, cluster_with_writes, learners_on, lose_data_and_replace, s_put, value_on};
use crate::scripted::{all, Answer as Reply, Scripted};

fn voters_on(s: &mut Scripted, id: u64) -> Vec<u64> {
    let mut voters = s.core(id).conf_state().voters;
    voters.sort_unstable();
    voters
}

fn sorted(mut ids: Vec<u64>) -> Vec<u64> {
    ids.sort_unstable();
    ids
}

/// The index of a removal answered as applied, or a panic naming what was answered instead.
fn removed_at(s: &mut Scripted, leader: u64, member: u64) -> u64 {
    let change = s.remove(leader, member);
    s.until("the removal answered", 100, &mut all, &mut |s| s.answer(change).is_some());
    match s.answer(change) {
        Some(Reply::Changed(Ok(index))) if *index > 0 => *index,
        other => panic!("expected member {member}'s removal applied, got {other:?}"),
    }
}

/// A running follower is removed: it applies its removal and stops, refuses to start again on
/// its data dir, and the two members left commit without it. Asked again, the removal is done.
#[test]
fn a_removed_follower_stops_and_the_members_left_commit_without_it() {
    let (mut s, l, w, o) = cluster_with_writes(107, Some(20));
    let index = removed_at(&mut s, l, w);
    s.until("the removed member stops", 100, &mut all, &mut |s| s.why_stopped(w).is_some());
    let why = s.why_stopped(w).unwrap_or_default().to_string();
    assert!(
        why.contains(&format!("member {w} was removed from the cluster"))
            && why.contains(&format!("it applied the change that removed it, at raft log index {index}")),
        "it says it was removed, and by which entry: {why}"
    );
    for id in [l, o] {
        assert_eq!(voters_on(&mut s, id), sorted(vec![l, o]), "member {id}: the voters left");
    }
    let after = s.propose(l, Command { request_id: "after".into(), ..s_put("after", "1") });
    s.until("a write committed by the two left", 100, &mut all, &mut |s| s.answer(after).is_some());
    assert!(matches!(s.answer(after), Some(Reply::Applied(Ok(_)))), "committed: {:?}", s.answer(after));
    s.until("the other member applies it", 50, &mut all, &mut |s| value_on(s, o, "after").is_some());

    let again = s.remove(l, w);
    s.round(&mut all);
    assert_eq!(s.answer(again), Some(&Reply::Changed(Ok(0))), "removed already: nothing to change");
    let never = s.remove(l, 9);
    s.round(&mut all);
    assert!(
        matches!(
            s.answer(never),
            Some(Reply::Changed(Err(RequestError::Membership(Refused::NotAMember { .. }))))
        ),
        "a member the cluster never had: {:?}",
        s.answer(never)
    );

    let restart = s.try_start(w);
    assert!(
        restart.as_ref().is_err_and(|e| e.contains(&format!("member {w} was removed from the cluster"))),
        "the removed member does not start again on its data dir: {restart:?}"
    );
}

/// A removed member that never heard of its removal still campaigns. The members that applied
/// it drop its messages: not even a forced vote request's term reaches them (the transport also
/// tells it, and it stops — `transport::wire`).
#[test]
fn a_removed_member_that_never_heard_of_it_is_not_answered_by_the_members_left() {
    let (mut s, l, w, o) = cluster_with_writes(109, Some(20));
    let mut nothing_for_w = |m: &Message| {
        if m.to == w {
            crate::scripted::Route::Drop
        } else {
            crate::scripted::Route::Deliver
        }
    };
    let change = s.remove(l, w);
    s.until("the removal answered", 100, &mut nothing_for_w, &mut |s| s.answer(change).is_some());
    s.until("the other member applied it", 100, &mut nothing_for_w, &mut |s| voters_on(s, o).len() == 2);
    assert!(s.why_stopped(w).is_none(), "member {w} never heard of its removal");
    let term = s.core(o).status().term;
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgRequestVote);
    (m.from, m.to, m.term) = (w, o, term + 1);
    (m.index, m.log_term) = (s.core(w).log().last_index_now(), term);
    m.context = raft::CAMPAIGN_TRANSFER.to_vec().into();
    s.step(o, m);
    assert_eq!(s.core(o).status().term, term, "member {o} took the removed member's term");
    assert_eq!(s.held(MessageType::MsgRequestVoteResponse, w), 0, "member {o} answered the removed member");
    for _ in 0..100 {
        s.round(&mut all);
    }
    for id in [l, o] {
        let status = s.core(id).status();
        assert_eq!(
            (status.leader, status.term),
            (l, term),
            "member {id}: the removed member's campaigns disturbed it"
        );
    }
}

/// Asked to remove itself, the leader hands leadership to a running voter and refuses,
/// retryably; asked again, the new leader removes it, and it stops.
#[test]
fn the_leader_asked_to_remove_itself_hands_over_and_the_next_leader_removes_it() {
    let (mut s, l, _w, _o) = cluster_with_writes(113, Some(20));
    let change = s.remove(l, l);
    s.round(&mut all);
    let to = match s.answer(change) {
        Some(Reply::Changed(Err(RequestError::Membership(r @ Refused::HandingOver { to, .. })))) => {
            assert!(r.passes(), "retryable");
            *to
        }
        other => panic!("expected the leader to hand over first, got {other:?}"),
    };
    s.until("the new leader", 100, &mut all, &mut |s| s.leader() == Some(to));
    for _ in 0..30 {
        // Two election timeouts of leading: it has heard from every member that runs.
        s.round(&mut all);
    }
    removed_at(&mut s, to, l);
    s.until("the old leader stops", 100, &mut all, &mut |s| s.why_stopped(l).is_some());
    assert_eq!(voters_on(&mut s, to).len(), 2);
}

/// A replacement whose member never comes back leaves a learner that blocks the next
/// replacement; removing the learner gives it up. Started again on an empty data dir, the
/// removed member is refused by its peers, which record its start and no longer have it.
#[test]
fn a_learner_whose_replacement_never_came_back_is_removed() {
    let (mut s, l, w, o) = cluster_with_writes(127, Some(20));
    lose_data_and_replace(&mut s, l, w);
    s.until("every member has the learner", 100, &mut all, &mut |s| {
        [l, o].iter().all(|id| learners_on(s, *id) == vec![w])
    });
    removed_at(&mut s, l, w);
    for _ in 0..10 {
        s.round(&mut all);
    }
    for id in [l, o] {
        assert!(learners_on(&mut s, id).is_empty(), "member {id}: the learner is gone");
        assert_eq!(voters_on(&mut s, id), sorted(vec![l, o]));
    }
    s.start(w);
    let verdict = admission::verdict(3, &answers_for(&mut s, w, &[l, o]));
    assert!(matches!(verdict, Verdict::Removed { .. }), "the removed member is refused as such: {verdict:?}");
}

/// The member being removed may be elected with its removal in its log (the leader that
/// proposed it crashed before it committed): it commits its own removal as leader and stops at
/// once — raft-rs would keep it leading with no progress of its own, and panic at its next
/// append — and the members left elect a leader and commit without it, and go on committing
/// once it is started again on its data dir.
#[test]
fn a_leader_that_commits_its_own_removal_stops_and_the_others_go_on() {
    let (mut s, l, w, o) = cluster_with_writes(131, Some(20));
    // The removal reaches W only, and L never hears that W has it: it is not committed.
    let mut only_w_gets_it = |m: &Message| {
        let t = m.get_msg_type();
        if (t == MessageType::MsgAppend && m.to == o) || (t == MessageType::MsgAppendResponse && m.from == w)
        {
            crate::scripted::Route::Drop
        } else {
            crate::scripted::Route::Deliver
        }
    };
    let change = s.remove(l, w);
    for _ in 0..5 {
        s.round(&mut only_w_gets_it);
    }
    assert!(s.answer(change).is_none(), "not committed yet");
    assert!(s.core(w).log().last_index_now() >= s.core(l).log().last_index_now(), "W holds its removal");
    s.crash(l);
    let write = s.propose(w, Command { request_id: "during".into(), ..s_put("during", "1") });
    s.until("W, elected, commits its removal and stops", 300, &mut all, &mut |s| s.why_stopped(w).is_some());
    let why = s.why_stopped(w).unwrap_or_default().to_string();
    assert!(why.contains("it led, and committed the change that removed it"), "{why}");
    let _ = write;
    s.start(l);
    s.until("a leader among the two left", 300, &mut all, &mut |s| {
        [l, o].iter().any(|id| s.core(*id).status().role == latch::core::Role::Leader)
    });
    let leader = if s.core(l).status().role == latch::core::Role::Leader { l } else { o };
    let after = s.propose(leader, Command { request_id: "after".into(), ..s_put("after", "1") });
    s.until("a write committed by the two left", 100, &mut all, &mut |s| s.answer(after).is_some());
    assert!(matches!(s.answer(after), Some(Reply::Applied(Ok(_)))), "committed: {:?}", s.answer(after));
    for id in [l, o] {
        assert_eq!(voters_on(&mut s, id), sorted(vec![l, o]), "member {id}: the voters left");
    }
    // Started again on its data dir (it left no REMOVED mark: the others might not have known
    // of the commit), W holds its removal in its log but not as committed (it stopped before
    // that reached its disk). Its pre-votes change nothing for the two left, which no longer
    // send to it: it never leads, their term stays, and they commit. (A member's transport
    // refuses its messages as a removed member's, and it stops: tests/it's removal tests.)
    s.crash(w);
    s.start(w);
    let term = s.core(leader).status().term;
    let mut w_led = false;
    for _ in 0..300 {
        s.round(&mut all);
        w_led |= s.core(w).status().role == latch::core::Role::Leader;
    }
    assert!(!w_led, "the removed member, started again, never leads");
    assert_eq!(s.core(leader).status().term, term, "nor does it move the term of the two left");
    let later = s.propose(leader, Command { request_id: "later".into(), ..s_put("later", "1") });
    s.until("a write committed beside W's new life", 100, &mut all, &mut |s| s.answer(later).is_some());
    assert!(matches!(s.answer(later), Some(Reply::Applied(Ok(_)))), "committed: {:?}", s.answer(later));
}
