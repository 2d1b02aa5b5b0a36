//! Network partitions between real members, made by the test-only fault injector of the peer
//! transport (`--fault-injection`; [`Cluster::partition`], [`Cluster::isolate`],
//! [`Cluster::heal_all`]): what a cut-off member may and may not answer, who leads meanwhile,
//! and that every member converges once healed (DESIGN.md §1, §7).

use std::future::Future;
use std::time::Duration;

use latch_client::{Client, ClientOptions, PutRequest, RangeRequest, RangeResponse};
use latch_proto::internal::{HealRequest, PartitionRequest};

use crate::harness::{eventually, sample, Cluster, STARTUP};

/// How long a request to a cut-off member is given before it counts as not answered: far above
/// what a write or a read takes in a healthy cluster (milliseconds), and below the member's own
/// request timeout (200 ticks), so that it is the test that stops waiting.
const NO_ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// What one member alone answered within [`NO_ANSWER_WITHIN`]: its response, or the error or
/// silence it answered with, described.
async fn answer<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(NO_ANSWER_WITHIN, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err(format!("no answer within {NO_ANSWER_WITHIN:?}")),
    }
}

/// A linearizable get of `key`.
fn get(key: &str) -> RangeRequest {
    RangeRequest { key: key.as_bytes().to_vec(), ..Default::default() }
}

fn put(key: &str, value: &str, request_id: &str) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        request_id: request_id.into(),
        ..Default::default()
    }
}

/// The values a range returned, as text.
fn values(r: &RangeResponse) -> Vec<String> {
    r.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()).collect()
}

/// The value of `key` in a member's local state as [`Cluster::local_kvs`] returns it.
fn value_in<'a>(kvs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kvs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Waits until every member has applied the same index and holds the same keys and values at
/// the same revision (each read from its own state); returns that state.
async fn converged(c: &Cluster, when: &str) -> Vec<(String, String)> {
    let what = format!("every member to reach the same applied index and state {when}");
    eventually(&what, STARTUP, || async {
        let mut views = Vec::new();
        for id in c.ids() {
            let applied = c.self_status(id).await?.applied_index;
            let (revision, kvs) = c.local_kvs(id).await?;
            views.push((id, applied, revision, kvs));
        }
        let first = &views[0];
        if views.iter().all(|v| (v.1, v.2, &v.3) == (first.1, first.2, &first.3)) {
            Ok(first.3.clone())
        } else {
            Err(format!(
                "(member, applied index, revision, keys): {:?}",
                views.iter().map(|v| (v.0, v.1, v.2, v.3.len())).collect::<Vec<_>>()
            ))
        }
    })
    .await
}

#[tokio::test]
async fn an_isolated_leader_acknowledges_nothing_and_a_majority_elects_a_new_one() {
    let c = Cluster::start(3, &["--fault-injection"]).await;
    let old = c.leader().await;
    let old_term = c.status_of(old).await.unwrap().term;
    let majority: Vec<u64> = c.ids().into_iter().filter(|id| *id != old).collect();
    c.client().await.put("k", "old").await.unwrap();

    c.isolate(old).await;
    // Sent to the old leader alone, while the others elect: it may append the entry to its log
    // (it still believes it leads, until check-quorum deposes it) but can never commit it.
    let mut old_kv = c.kv_of_only(old).await;
    let isolated_put = tokio::spawn(async move {
        answer(old_kv.put(put("during/isolation", "never acknowledged", "isolated-put"))).await
    });

    let new = c.leader_among(&majority).await;
    assert_ne!(new, old, "the isolated member {old} cannot be the majority's leader");
    let new_term = c.status_of(new).await.unwrap().term;
    assert!(new_term > old_term, "the new leader's term {new_term} should be above the old {old_term}");
    c.client_of_many(&majority)
        .await
        .put("k", "new")
        .await
        .unwrap_or_else(|e| panic!("the majority {majority:?} should accept writes under leader {new}: {e}"));

    // The old leader still holds the old value...
    let (_, old_state) = c.local_kvs(old).await.unwrap();
    assert_eq!(value_in(&old_state, "k"), Some("old"), "member {old} was cut off before the new write");
    // ...and must not serve it, nor anything else, to a linearizable read.
    let read = answer(c.kv_of_only(old).await.range(get("k"))).await;
    assert!(
        read.is_err(),
        "a linearizable get on the isolated old leader {old} must fail or wait, never return data \
         (\"old\" would be stale); it returned {:?}",
        read.as_ref().map(values)
    );
    let put_answer = isolated_put.await.unwrap();
    assert!(
        put_answer.is_err(),
        "a put sent to the isolated old leader {old} alone must not be acknowledged; it was, at \
         revision {:?}",
        put_answer.map(|r| r.header.map(|h| h.revision))
    );

    c.heal_all().await;
    let leader = c.leader().await;
    let state = converged(&c, "after healing the partition").await;
    assert_eq!(
        value_in(&state, "k"),
        Some("new"),
        "the write the majority acknowledged must be everywhere after healing (leader {leader})"
    );
    // The write sent to the isolated leader was never acknowledged: it may be lost (truncated from
    // the old leader's log) or committed later (the old member proposes it again once it knows
    // the new leader); `converged` checked that either way every member agrees.
    if let Some(v) = value_in(&state, "during/isolation") {
        assert_eq!(v, "never acknowledged", "a write is applied with its own value or not at all");
    }
    let rejoined = c.self_status(old).await.unwrap();
    assert!(rejoined.term >= new_term, "member {old} should have moved to the new term: {rejoined:?}");
}

/// Cutting only the link between the leader L and one follower F (both directions; F↔O and
/// O↔L stay up) does not disrupt the cluster, thanks to raft-rs's pre-vote and check-quorum:
///
/// - F stops hearing from L and, after an election timeout, asks for pre-votes at term T+1. L
///   never receives them; O, which hears from L every heartbeat, ignores them (its leader lease
///   has not expired: it neither grants nor answers). So F never becomes a candidate and never
///   raises its term, and L leads in term T throughout, with O as its quorum.
/// - F, meanwhile, knows no leader: it acknowledges no write and serves no linearizable read
///   (both wait, then fail) — never a stale one — while its serializable reads show its old
///   state. Writes through L or O succeed, and a client that lists O besides F moves on to it.
/// - Once healed, F hears L's heartbeats in the term it never left, follows L again and catches up.
///
/// This cluster is more fragile than a healthy one: F, having no leader, would grant O's
/// pre-vote, so a leader stalled for an election timeout would lose its place to O. The test
/// runs with the default 50 ms tick (elections after 0.5–1 s) rather than the harness's short
/// one, so that a loaded machine does not pass for a behaviour of Raft.
#[tokio::test]
async fn a_follower_cut_off_from_the_leader_alone_cannot_depose_it_and_catches_up_once_healed() {
    let c = Cluster::start(3, &["--fault-injection", "--tick-interval", "50ms"]).await;
    let l = c.leader().await;
    let term = c.status_of(l).await.unwrap().term;
    let others: Vec<u64> = c.ids().into_iter().filter(|id| *id != l).collect();
    let (f, o) = (others[0], others[1]);
    c.client().await.put("k", "v1").await.unwrap();
    eventually(&format!("member {f} to apply k = v1"), STARTUP, || async {
        let (_, kvs) = c.local_kvs(f).await?;
        match value_in(&kvs, "k") {
            Some("v1") => Ok(()),
            other => Err(format!("k = {other:?}")),
        }
    })
    .await;
    let pre_votes_from_f =
        format!(r#"latch_peer_received_messages_total{{peer="{f}",type="MsgRequestPreVote"}}"#);
    let answers_to_f =
        format!(r#"latch_peer_sent_messages_total{{peer="{f}",type="MsgRequestPreVoteResponse"}}"#);
    let o_metrics = c.metrics_of(o).await.unwrap();
    let pre_votes_before = sample(&o_metrics, &pre_votes_from_f).unwrap_or(0.0);
    let answers_before = sample(&o_metrics, &answers_to_f).unwrap_or(0.0);

    c.partition(l, &[f]).await;
    let what =
        format!("member {f}, cut off from leader {l}, to forget its leader and ask {o} for pre-votes twice");
    let o_metrics = eventually(&what, STARTUP, || async {
        let text = c.metrics_of(o).await?;
        let asked = sample(&text, &pre_votes_from_f).unwrap_or(0.0) - pre_votes_before;
        if asked >= 2.0 {
            Ok(text)
        } else {
            Err(format!("{asked} pre-vote requests from {f} received by {o}"))
        }
    })
    .await;
    assert_eq!(
        sample(&o_metrics, &answers_to_f).unwrap_or(0.0),
        answers_before,
        "member {o} hears from leader {l}, so it should ignore {f}'s pre-votes, not answer them"
    );

    // Writes through the leader and the other follower go on.
    c.client_of(l).await.put("k", "v2").await.unwrap_or_else(|e| panic!("a put through leader {l}: {e}"));
    c.client_of(o).await.put("via/o", "x").await.unwrap_or_else(|e| panic!("a put through {o}: {e}"));
    // F, knowing no leader, acknowledges no write of its own...
    let on_f = answer(c.kv_of_only(f).await.put(put("via/f", "y", "put-via-f"))).await;
    assert!(on_f.is_err(), "member {f} knows no leader and should not acknowledge a write; it did: {on_f:?}");
    // ...but a client that also knows O moves on to it.
    let options = ClientOptions {
        request_timeout: Duration::from_secs(1),
        retry_budget: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let f_then_o = [c.member(f).client_addr.clone(), c.member(o).client_addr.clone()];
    Client::connect_with(f_then_o, options)
        .await
        .unwrap()
        .put("via/f-then-o", "z")
        .await
        .unwrap_or_else(|e| panic!("a client of members {f} then {o} should succeed through {o}: {e}"));
    // F's own state is behind: a serializable read there is stale, as it may be...
    let (_, f_state) = c.local_kvs(f).await.unwrap();
    assert_eq!(value_in(&f_state, "k"), Some("v1"), "member {f} cannot have learned of v2");
    // ...but a linearizable read there must not return it.
    let read = answer(c.kv_of_only(f).await.range(get("k"))).await;
    assert!(
        read.is_err(),
        "member {f} knows no leader and should serve no linearizable read (v1 would be stale); it \
         returned {:?}",
        read.as_ref().map(values)
    );

    // Leadership never moved, and F never raised its term.
    for id in [l, o] {
        let s = c.status_of(id).await.unwrap();
        assert_eq!(
            (s.leader, s.term),
            (l, term),
            "member {id} should still follow leader {l} in term {term}"
        );
    }
    let cut_off = c.self_status(f).await.unwrap();
    assert_eq!(cut_off.term, term, "member {f}'s pre-votes must not raise its term: {cut_off:?}");
    assert_eq!(
        cut_off.role, "pre-candidate",
        "member {f} should keep asking for pre-votes, never becoming a candidate: {cut_off:?}"
    );
    assert_eq!(c.status_of(f).await.unwrap().leader, 0, "member {f} should know no leader while cut off");

    c.heal_all().await;
    assert_eq!(c.leader().await, l, "member {l} should still lead once healed");
    let state = converged(&c, &format!("once member {f} is reconnected to leader {l}")).await;
    assert_eq!(value_in(&state, "k"), Some("v2"), "member {f} should have caught up with v2");
    for (key, value) in [("via/o", "x"), ("via/f-then-o", "z")] {
        assert_eq!(
            value_in(&state, key),
            Some(value),
            "the acknowledged write of {key:?} should be everywhere"
        );
    }
    let s = c.status_of(l).await.unwrap();
    assert_eq!(s.term, term, "the term should not have changed: no election happened");
}

#[tokio::test]
async fn without_fault_injection_the_faults_service_is_not_served() {
    let c = Cluster::start(2, &[]).await;
    c.leader().await;
    let mut faults = c.faults_of(1).await;
    let partition = faults.partition(PartitionRequest { peers: vec![2] }).await;
    assert_eq!(
        partition.expect_err("no Faults service without --fault-injection").code(),
        tonic::Code::Unimplemented
    );
    let heal = faults.heal(HealRequest {}).await;
    assert_eq!(
        heal.expect_err("no Faults service without --fault-injection").code(),
        tonic::Code::Unimplemented
    );
    // The peer port still serves the members' own traffic.
    c.client_of(2).await.put("still", "replicated").await.unwrap();
}
