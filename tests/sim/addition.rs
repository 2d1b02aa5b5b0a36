//! Members added to a running cluster (`core::membership::check_add`), on the scripted cluster:
//! a new member, started knowing only the first members, joins as a learner, catches up from a
//! snapshot or from the log (replaying its own addition), votes once it has, and counts toward
//! commits; every member records where it listens, for good; an id the cluster had is never
//! added again; an added member can be removed like any other.

use latch::core::membership::Refused;
use latch::core::{RequestError, Role};
use latch::server::admission::{self, Verdict};
use latch_proto::internal::Command;
use raft::eraftpb::{Message, MessageType};

use crate::members::{answers_for, cluster_with_writes, learners_on, s_put, value_on, votes_on};
use crate::scripted::{all, Answer as Reply, Route, Scripted};

const ADDR: &str = "10.0.0.4:7380";

/// The index of an addition answered as applied, or a panic naming what was answered instead.
fn added_at(s: &mut Scripted, leader: u64, member: u64, addr: &str) -> u64 {
    let change = s.add(leader, member, addr);
    s.until("the addition answered", 100, &mut all, &mut |s| s.answer(change).is_some());
    match s.answer(change) {
        Some(Reply::Changed(Ok(index))) if *index > 0 => *index,
        other => panic!("expected member {member}'s addition applied, got {other:?}"),
    }
}

fn hold_snapshots(m: &Message) -> Route {
    if latch::core::is_snapshot(m) {
        Route::Hold
    } else {
        Route::Deliver
    }
}

/// Member 4 is added to a cluster whose log was compacted: every member records where it
/// listens; started on an empty data dir knowing only the first three, its peers admit it (they
/// have it a learner), it catches up from a snapshot, the leader makes it a voter, and from
/// then on its acknowledgement counts: with one of the first three down, the other two and the
/// new member commit.
#[test]
fn an_added_member_catches_up_from_a_snapshot_votes_and_counts_toward_commits() {
    let (mut s, l, w, o) = cluster_with_writes(131, Some(20));
    let index = added_at(&mut s, l, 4, ADDR);
    for id in [l, w, o] {
        s.until("every member applies the addition", 50, &mut all, &mut |s| {
            s.core(id).status().applied.index >= index
        });
        let c = s.core(id).configuration();
        assert_eq!(c.learners, vec![4], "member {id}: the new member learns");
        assert_eq!(c.added.get(&4).map(String::as_str), Some(ADDR), "member {id}: where it listens");
        assert!(c.removed.is_empty(), "member {id}: nobody is removed: {:?}", c.removed);
    }
    assert_eq!(
        admission::joining_verdict(3, 3, &answers_for(&mut s, 4, &[l, w, o])),
        Verdict::Admit,
        "its peers have it a learner"
    );

    assert_eq!(s.new_member(), 4);
    s.core(4).lived_before();
    s.until("a snapshot for the new member", 100, &mut hold_snapshots, &mut |s| {
        s.held(MessageType::MsgSnapshot, 4) > 0
    });
    s.deliver_held_snapshot(4);
    assert_eq!(value_on(&mut s, 4, "before-39").as_deref(), Some(&b"1"[..]), "the snapshot's state");
    s.until("the new member votes on every member", 500, &mut all, &mut |s| {
        (1..=4).all(|id| votes_on(s, id, 4) && learners_on(s, id).is_empty())
    });
    assert_eq!(
        s.core(4).configuration().added.get(&4).map(String::as_str),
        Some(ADDR),
        "the new member's own state records it, from the snapshot"
    );

    s.crash(w);
    let put = s.propose(l, Command { request_id: "with-4".into(), ..s_put("with-4", "1") });
    s.until("a write committed by three of four", 200, &mut all, &mut |s| s.answer(put).is_some());
    assert!(matches!(s.answer(put), Some(Reply::Applied(Ok(_)))), "committed: {:?}", s.answer(put));
    s.until("the new member applies it", 50, &mut all, &mut |s| value_on(s, 4, "with-4").is_some());
}

/// A new member whose leader's log was never compacted replays it from the first entry, with
/// the first members' configuration: it applies the changes before its own addition (here a
/// first member's removal) without taking itself for removed, restarts before and after its
/// addition was applied, and votes.
#[test]
fn an_added_member_replays_the_log_from_the_start_and_restarts_on_what_it_applied() {
    let (mut s, l, w, _o) = cluster_with_writes(137, None);
    let change = s.remove(l, w);
    s.until("the removed member stops", 200, &mut all, &mut |s| s.why_stopped(w).is_some());
    assert!(matches!(s.answer(change), Some(Reply::Changed(Ok(i))) if *i > 0), "{:?}", s.answer(change));
    added_at(&mut s, l, 4, ADDR);
    assert_eq!(s.new_member(), 4);
    assert_eq!(
        s.core(4).status().role,
        Role::Learner,
        "before it applied its own addition it votes in no configuration it knows"
    );
    s.core(4).lived_before();
    s.round(&mut all);
    s.crash(4);
    s.start(4);
    s.core(4).lived_before();
    s.until("the new member votes on the members left", 500, &mut all, &mut |s| {
        (1..=4).filter(|id| *id != w).all(|id| votes_on(s, id, 4))
    });
    assert_eq!(s.core(4).status().snapshots_installed, 0, "no snapshot: the log replayed");
    s.crash(4);
    s.start(4);
    let put = s.propose(l, Command { request_id: "after".into(), ..s_put("after", "1") });
    s.until("a write answered", 200, &mut all, &mut |s| s.answer(put).is_some());
    s.until("the restarted member applies it", 100, &mut all, &mut |s| value_on(s, 4, "after").is_some());
}

/// What an addition is refused for: an id that is a member's or was one (ids are never used
/// twice), another member's address, a second learner while one catches up. Asked again with
/// the same address, it is done.
#[test]
fn an_addition_is_refused_for_an_id_or_address_the_cluster_has_or_had() {
    let (mut s, l, w, _o) = cluster_with_writes(139, None);
    let refused = |s: &mut Scripted, member: u64, addr: &str| {
        let change = s.add(l, member, addr);
        s.round(&mut all);
        match s.answer(change) {
            Some(Reply::Changed(Err(RequestError::Membership(r)))) => r.clone(),
            other => panic!("expected the addition of member {member} at {addr} refused, got {other:?}"),
        }
    };
    assert!(matches!(refused(&mut s, w, ADDR), Refused::AlreadyAMember { role: "a voter", .. }));
    added_at(&mut s, l, 4, ADDR);
    let again = s.add(l, 4, ADDR);
    s.round(&mut all);
    assert_eq!(s.answer(again), Some(&Reply::Changed(Ok(0))), "asked again: nothing to change");
    assert!(matches!(refused(&mut s, 4, "10.0.0.9:7380"), Refused::AlreadyAMember { role: "a learner", .. }));
    assert_eq!(refused(&mut s, 5, "10.0.0.5:7380"), Refused::Busy { learner: 4 });

    let change = s.remove(l, 4);
    s.until("the removal answered", 100, &mut all, &mut |s| s.answer(change).is_some());
    assert!(matches!(s.answer(change), Some(Reply::Changed(Ok(i))) if *i > 0), "{:?}", s.answer(change));
    assert_eq!(refused(&mut s, 4, ADDR), Refused::WasRemoved { member: 4 });
    let c = s.core(l).configuration();
    assert_eq!((c.removed, c.added.len()), (vec![4], 1), "removed, and still known");
    added_at(&mut s, l, 5, ADDR);
}

/// An added member that is removed stops once it applies its removal and does not start again
/// on its data dir, as a first member would; a member never added is refused admission.
#[test]
fn an_added_member_removed_stops_and_a_member_never_added_is_not_admitted() {
    // Applies made durable at once (as the removal's mark would be): what a restart sees.
    let (mut s, l, w, o) = cluster_with_writes(149, Some(20));
    assert_eq!(
        admission::joining_verdict(3, 3, &answers_for(&mut s, 4, &[l, w, o])),
        Verdict::NotAdded,
        "no peer has member 4"
    );
    added_at(&mut s, l, 4, ADDR);
    assert_eq!(s.new_member(), 4);
    s.until("a snapshot for the new member", 100, &mut hold_snapshots, &mut |s| {
        s.held(MessageType::MsgSnapshot, 4) > 0
    });
    s.deliver_held_snapshot(4);
    s.until("the new member votes on every member", 500, &mut all, &mut |s| {
        (1..=4).all(|id| votes_on(s, id, 4))
    });
    let change = s.remove(l, 4);
    s.until("the removed member stops", 200, &mut all, &mut |s| s.why_stopped(4).is_some());
    assert!(matches!(s.answer(change), Some(Reply::Changed(Ok(i))) if *i > 0), "{:?}", s.answer(change));
    let restart = s.try_start(4);
    assert!(
        restart.as_ref().is_err_and(|e| e.contains("member 4 was removed from the cluster")),
        "the removed member does not start again on its data dir: {restart:?}"
    );
    for id in [l, w, o] {
        assert_eq!(s.core(id).configuration().removed, vec![4], "member {id}");
    }
}

/// A member whose log holds an addition it has not applied names it (`Configuration::logged`,
/// what `Peer.Status` reports as `added_in_log`, which a member that lost its data counts as a
/// member), from its log again after a restart; once it applies the addition, the addition is
/// an applied one instead.
#[test]
fn an_addition_held_in_a_log_but_not_applied_is_named_until_it_applies() {
    let (mut s, l, w, o) = cluster_with_writes(137, None);
    let change = s.add(l, 4, ADDR);
    // The leader's appends reach `w` alone, and nobody's acknowledgement comes back: nothing
    // commits.
    let mut uncommitted = |m: &Message| match m.get_msg_type() {
        MessageType::MsgAppend if m.to == o => Route::Drop,
        MessageType::MsgAppendResponse => Route::Drop,
        _ => Route::Deliver,
    };
    s.until("the addition in the follower's log", 100, &mut uncommitted, &mut |s| {
        s.core(w).configuration().logged.contains_key(&4)
    });
    assert!(s.answer(change).is_none(), "the addition is not committed: {:?}", s.answer(change));
    let c = s.core(w).configuration();
    assert_eq!(c.logged.get(&4).map(String::as_str), Some(ADDR), "the log's addition and its address");
    assert!(!c.added.contains_key(&4) && c.learners.is_empty(), "not applied yet: {c:?}");
    assert_eq!(c.named_added().into_keys().collect::<Vec<_>>(), [4], "named as a member to count");
    assert!(s.core(o).configuration().logged.is_empty(), "member {o} never received it");

    s.crash(w);
    s.start(w);
    assert_eq!(
        s.core(w).configuration().logged.get(&4).map(String::as_str),
        Some(ADDR),
        "read back from the log at start"
    );

    s.until("the addition answered", 200, &mut all, &mut |s| s.answer(change).is_some());
    s.until("every member applies it", 200, &mut all, &mut |s| {
        [l, w, o].into_iter().all(|id| s.core(id).configuration().added.contains_key(&4))
    });
    for id in [l, w, o] {
        let c = s.core(id).configuration();
        assert!(c.logged.is_empty(), "member {id}: the applied addition is no longer only logged: {c:?}");
        assert_eq!(c.named_added().into_keys().collect::<Vec<_>>(), [4], "member {id}");
    }
}

/// A cluster (`cluster_with_writes(seed, snapshot_entries)`) whose leader `l` proposed the
/// addition of member 4 and holds it in its log alone (its followers never received it), then
/// was cut off while the two others elected a new leader. Returns the cluster, its members
/// (`l` first), the addition's proposal and the new leader.
fn an_addition_only_the_cut_off_leaders_log_holds(
    seed: u64,
    snapshot_entries: Option<u64>,
) -> (Scripted, [u64; 3], latch::core::Waiter, u64) {
    let (mut s, l, w, o) = cluster_with_writes(seed, snapshot_entries);
    let change = s.add(l, 4, ADDR);
    let mut unsent = |m: &Message| match m.get_msg_type() {
        MessageType::MsgAppend if m.from == l => Route::Drop,
        _ => Route::Deliver,
    };
    s.until("the addition in the leader's log", 50, &mut unsent, &mut |s| {
        s.core(l).configuration().logged.contains_key(&4)
    });
    assert!(s.core(w).configuration().logged.is_empty(), "its followers never received it");

    let mut isolated = |m: &Message| if m.from == l || m.to == l { Route::Drop } else { Route::Deliver };
    let leads = |s: &mut Scripted, id: u64| s.core(id).status().role == Role::Leader;
    s.until("a new leader", 500, &mut isolated, &mut |s| leads(s, w) || leads(s, o));
    let new_leader = if leads(&mut s, w) { w } else { o };
    (s, [l, w, o], change, new_leader)
}

/// An addition only the old leader's log holds goes too when the new leader's log was compacted
/// past it, and a snapshot replaces the old leader's whole log (review-s64 L5).
#[test]
fn an_addition_a_snapshot_replaced_is_no_longer_named() {
    let (mut s, [l, ..], change, new_leader) = an_addition_only_the_cut_off_leaders_log_holds(141, Some(20));
    let mut isolated = |m: &Message| if m.from == l || m.to == l { Route::Drop } else { Route::Deliver };
    // Past what the new leader keeps for a follower it heard from lately: ten times the
    // snapshot interval (`CATCH_UP_SNAPSHOTS`).
    for i in 0..250 {
        let put = s.propose(
            new_leader,
            Command { request_id: format!("over-{i}"), ..s_put(&format!("over-{i}"), "1") },
        );
        s.until("a write of the new leader committed", 200, &mut isolated, &mut |s| s.answer(put).is_some());
    }

    let mut hold_snapshots =
        |m: &Message| if latch::core::is_snapshot(m) { Route::Hold } else { Route::Deliver };
    s.until("a snapshot for the old leader", 500, &mut hold_snapshots, &mut |s| {
        s.held(MessageType::MsgSnapshot, l) > 0
    });
    s.deliver_held_snapshot(l);
    s.until("the old leader catches up", 1000, &mut all, &mut |s| value_on(s, l, "over-249").is_some());
    assert!(
        s.core(l).status().snapshots_installed > 0,
        "from a snapshot: the new leader's log was compacted past where the old one's parted"
    );
    let c = s.core(l).configuration();
    assert!(c.logged.is_empty(), "the addition the snapshot replaced is not named: {c:?}");
    assert!(!c.added.contains_key(&4) && c.learners.is_empty(), "nor applied: {c:?}");
    assert!(!matches!(s.answer(change), Some(Reply::Changed(Ok(_)))), "not taken: {:?}", s.answer(change));
}

/// An addition only the old leader's log holds goes when a new leader's entries replace that
/// part of its log: it is no longer named (`Configuration::logged`), and was never applied.
#[test]
fn an_addition_a_new_leader_overwrote_is_no_longer_named() {
    let (mut s, [l, w, o], change, new_leader) = an_addition_only_the_cut_off_leaders_log_holds(139, None);
    let mut isolated = |m: &Message| if m.from == l || m.to == l { Route::Drop } else { Route::Deliver };
    let put = s.propose(new_leader, Command { request_id: "over".into(), ..s_put("over", "1") });
    s.until("a write of the new leader committed", 200, &mut isolated, &mut |s| s.answer(put).is_some());

    s.until("the old leader's log follows the new one", 500, &mut all, &mut |s| {
        value_on(s, l, "over").is_some()
    });
    let c = s.core(l).configuration();
    assert!(c.logged.is_empty(), "the overwritten addition is not named: {c:?}");
    assert!(!c.added.contains_key(&4) && c.learners.is_empty(), "nor applied: {c:?}");
    assert!(
        !matches!(s.answer(change), Some(Reply::Changed(Ok(_)))),
        "the addition was not taken: {:?}",
        s.answer(change)
    );
    for id in [w, o] {
        assert!(s.core(id).configuration().logged.is_empty(), "member {id}");
    }
}
