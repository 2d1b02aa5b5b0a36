//! Rolling upgrades (`fsm::versions`, `server::upgrade`) on the scripted cluster: members of an
//! older build (applying command versions up to `versions::UNRAISED`) are restarted one at a
//! time on this one; every member proposes at the cluster version, so the older ones apply
//! everything the newer ones propose; the leader's raise waits until every member runs this
//! build and has said so; a member of the older build that meets the raise stops at it.

use std::collections::BTreeMap;

use latch::core::RequestError;
use latch::fsm::{versions, COMMAND_VERSION};
use latch::server::upgrade;
use latch_proto::internal::{command::Body, Command, RaiseClusterVersion};

use crate::members::{s_put, value_on};
use crate::scripted::{all, Answer, Route, Scripted};

/// The raise the leader's `server::upgrade::raise` would propose, the members up answering
/// with their builds.
fn raise_of(s: &mut Scripted, leader: u64, builds: &BTreeMap<u64, u32>) -> Option<u32> {
    let status = s.core(leader).status();
    let others = upgrade::asked(&s.core(leader).configuration(), leader);
    upgrade::raise_to(status.cluster_version, status.build_version, &others, builds)
}

fn raise(s: &mut Scripted, leader: u64, version: u32) -> u64 {
    let body = Some(Body::RaiseClusterVersion(RaiseClusterVersion {}));
    s.propose(leader, Command { version, request_id: String::new(), body })
}

/// Drops every message to or from `member`, as a partition around it.
fn cut_off(member: u64) -> impl FnMut(&raft::eraftpb::Message) -> Route {
    move |m| if m.to == member || m.from == member { Route::Drop } else { Route::Deliver }
}

/// The leader and a follower of it: with the follower cut off, the leader raises the cluster
/// version to this build's.
fn raised_without_a_follower(s: &mut Scripted) -> (u64, u64) {
    let leader = s.leader().expect("a leader");
    let behind = if leader == 3 { 2 } else { 3 };
    let w = raise(s, leader, COMMAND_VERSION);
    s.until("the raise answered", 200, &mut cut_off(behind), &mut |s| s.answer(w).is_some());
    (leader, behind)
}

/// A put through the leader, answered as applied.
fn written(s: &mut Scripted, key: &str) {
    let leader = s.leader().expect("a leader");
    let w = s.propose(leader, s_put(key, "1"));
    s.until("the put answered", 200, &mut all, &mut |s| s.answer(w).is_some());
    assert!(matches!(s.answer(w), Some(Answer::Applied(Ok(_)))), "{key}: {:?}", s.answer(w));
}

#[test]
fn a_rolling_upgrade_proposes_at_the_old_version_until_every_member_runs_the_new_build() {
    // Every apply made durable (no snapshot in this test): a member's state holds what it applied.
    let mut s = Scripted::with_snapshot_entries(3, 191, 100_000);
    let mut builds = BTreeMap::new();
    for id in 1..=3 {
        s.crash(id);
        s.set_build(id, versions::UNRAISED);
        builds.insert(id, versions::UNRAISED);
        s.start(id);
    }
    s.until("a leader", 200, &mut all, &mut |s| s.leader().is_some());
    written(&mut s, "before");
    let leader = s.leader().expect("a leader");
    let early = raise(&mut s, leader, versions::UNRAISED);
    s.until("the early raise answered", 10, &mut all, &mut |s| s.answer(early).is_some());
    assert!(
        matches!(
            s.answer(early),
            Some(Answer::Applied(Err(RequestError::ClusterVersion {
                cluster: 10,
                needed: 11,
                settled: true,
                ..
            })))
        ),
        "a kind of command newer than the cluster version is refused before it is proposed, for good by a \
         leader that applied an entry of its term and every raise committed: {:?}",
        s.answer(early)
    );
    let follower = if leader == 1 { 2 } else { 1 };
    let asked_of_a_follower = raise(&mut s, follower, versions::UNRAISED);
    s.until("the follower's refusal", 10, &mut all, &mut |s| s.answer(asked_of_a_follower).is_some());
    assert!(
        matches!(
            s.answer(asked_of_a_follower),
            Some(Answer::Applied(Err(RequestError::ClusterVersion { settled: false, .. })))
        ),
        "a follower may be behind a raise: its refusal is to be asked again (UNAVAILABLE), since the \
         request may have been applied under its id already: {:?}",
        s.answer(asked_of_a_follower)
    );
    for (n, id) in [2, 3, 1].into_iter().enumerate() {
        s.crash(id);
        s.set_build(id, COMMAND_VERSION);
        builds.insert(id, COMMAND_VERSION);
        s.start(id);
        s.until("a leader", 300, &mut all, &mut |s| s.leader().is_some());
        written(&mut s, &format!("after-{id}"));
        for m in 1..=3 {
            assert_eq!(s.why_stopped(m), None, "member {m} applies everything proposed beside a later build");
            assert_eq!(
                s.core(m).proposing_version(),
                versions::UNRAISED,
                "member {m} proposes at the cluster version while a member runs the older build"
            );
        }
        let leader = s.leader().expect("a leader");
        let expected = (n == 2).then_some(COMMAND_VERSION);
        assert_eq!(raise_of(&mut s, leader, &builds), expected, "raised only once the last member runs it");
    }

    // Member 3 down: it does not answer, so the raise waits, whatever build it ran.
    s.crash(3);
    s.until("a leader of the two", 300, &mut all, &mut |s| s.leader().is_some());
    let leader = s.leader().expect("a leader");
    let answering: BTreeMap<u64, u32> =
        builds.iter().filter(|(id, _)| **id != 3).map(|(i, b)| (*i, *b)).collect();
    assert_eq!(
        raise_of(&mut s, leader, &answering),
        None,
        "a member that does not answer holds the raise back"
    );
    s.start(3);
    s.until("member 3 back", 300, &mut all, &mut |s| {
        s.leader().is_some() && value_on(s, 3, "after-1").is_some()
    });

    let leader = s.leader().expect("a leader");
    let w = raise(&mut s, leader, COMMAND_VERSION);
    s.until("the raise answered", 200, &mut all, &mut |s| s.answer(w).is_some());
    s.until("every member runs the cluster version", 200, &mut all, &mut |s| {
        (1..=3).all(|m| s.core(m).status().cluster_version == COMMAND_VERSION)
    });
    for m in 1..=3 {
        assert_eq!(
            s.core(m).proposing_version(),
            COMMAND_VERSION,
            "member {m} proposes at this build's version"
        );
    }
    written(&mut s, "raised");

    // Taken back to the older build, a member whose state holds the raise does not start.
    s.crash(1);
    s.set_build(1, versions::UNRAISED);
    let refused = s.try_start(1).expect_err("a build the cluster version is past must not start");
    assert!(
        refused.contains("state says the cluster runs command version 11") && refused.contains("up to 10"),
        "it names both versions: {refused}"
    );
}

#[test]
fn a_member_of_the_older_build_that_meets_the_raise_stops_at_it_writing_nothing_of_it() {
    let mut s = Scripted::new(3, 193);
    s.until("a leader", 200, &mut all, &mut |s| s.leader().is_some());
    written(&mut s, "before");
    s.until("every member has it", 100, &mut all, &mut |s| {
        (1..=3).all(|m| value_on(s, m, "before").is_some())
    });
    // The member behind is cut off, then started again on the older build (its start check did
    // not reach a peer): the raise is decided without it and reaches it afterwards.
    let (_, behind) = raised_without_a_follower(&mut s);
    s.crash(behind);
    s.set_build(behind, versions::UNRAISED);
    s.start(behind);
    s.until("the member behind stops at the raise", 300, &mut all, &mut |s| s.why_stopped(behind).is_some());
    let why = s.why_stopped(behind).expect("stopped").to_string();
    assert!(
        why.contains(&format!("a command of version {COMMAND_VERSION}"))
            && why.contains(&format!("to {}", versions::UNRAISED)),
        "it names the raise's version and the newest its build applies: {why}"
    );
    s.start(behind);
    assert_eq!(
        s.core(behind).status().cluster_version,
        versions::UNRAISED,
        "nothing of the raise's batch was written: it meets the raise again at its next start"
    );
}

/// A member of the older build that catches up from a snapshot holding the raise (its leader
/// compacted the raise's entry away) installs it, finds the cluster past its build, and stops;
/// it does not start again on that build.
#[test]
fn a_member_of_the_older_build_that_installs_a_snapshot_past_its_build_stops_and_stays_stopped() {
    let mut s = Scripted::with_snapshot_entries(3, 197, 5);
    s.until("a leader", 200, &mut all, &mut |s| s.leader().is_some());
    let (leader, behind) = raised_without_a_follower(&mut s);
    // Past what the leader keeps for a follower behind (`core::CATCH_UP_SNAPSHOTS` compactions).
    for i in 0..(latch::core::CATCH_UP_SNAPSHOTS * 5 + 20) {
        let put = s.propose(leader, s_put(&format!("after-{i}"), "1"));
        s.until("the put answered", 200, &mut cut_off(behind), &mut |s| s.answer(put).is_some());
    }
    s.crash(behind);
    s.set_build(behind, versions::UNRAISED);
    s.start(behind);
    let hold_snapshots =
        |m: &raft::eraftpb::Message| if latch::core::is_snapshot(m) { Route::Hold } else { Route::Deliver };
    s.until("a snapshot for the member behind", 300, &mut { hold_snapshots }, &mut |s| {
        s.held(raft::eraftpb::MessageType::MsgSnapshot, behind) > 0
    });
    s.deliver_held_snapshot(behind);
    s.until("the member behind stops", 50, &mut all, &mut |s| s.why_stopped(behind).is_some());
    let why = s.why_stopped(behind).expect("stopped").to_string();
    assert!(
        why.contains(&format!("state says the cluster runs command version {COMMAND_VERSION}")),
        "it names the cluster's version: {why}"
    );
    let again = s.try_start(behind).expect_err("its state is past its build: it must not start");
    assert!(again.contains("up to 10"), "{again}");
}
