//! Leader election, replication and linearizable reads across members, failover, and
//! idempotent retries (DESIGN.md §1).

use std::time::Duration;

use latch_client::{Client, ClientOptions, PutRequest, RangeRequest};
use latch_proto::{format_cluster_id, CLUSTER_ID_METADATA};

use crate::harness::{eventually, Cluster, STARTUP};

#[tokio::test]
async fn three_members_elect_one_leader_they_all_agree_on() {
    let c = Cluster::start(3, &[]).await;
    c.leader().await;
    // One observation of every member that agrees on leader and term; within it, exactly one
    // member may call itself leader (two in one term would break election safety).
    let views = eventually("all 3 members to report the same leader and term", STARTUP, || async {
        let mut views = Vec::new();
        for id in c.ids() {
            views.push((id, c.status_of(id).await?));
        }
        let (l, t) = (views[0].1.leader, views[0].1.term);
        if l != 0 && views.iter().all(|(_, s)| s.leader == l && s.term == t) {
            Ok(views)
        } else {
            Err(format!("{:?}", views.iter().map(|(id, s)| (id, s.leader, s.term)).collect::<Vec<_>>()))
        }
    })
    .await;
    let roles: Vec<(u64, String)> = views
        .iter()
        .map(|(id, s)| (*id, s.members.iter().find(|m| m.id == *id).unwrap().role.clone()))
        .collect();
    let leaders: Vec<u64> = roles.iter().filter(|(_, r)| r == "leader").map(|(id, _)| *id).collect();
    assert_eq!(leaders.len(), 1, "exactly one member should say it is leader; roles: {roles:?}");
    assert_eq!(
        views[0].1.leader, leaders[0],
        "the agreed leader should be the one saying so; roles: {roles:?}"
    );
    assert!(views[0].1.term >= 1, "a leader is elected in a term >= 1, got {}", views[0].1.term);
    assert!(
        roles.iter().all(|(id, r)| *id == leaders[0] || r == "follower"),
        "every other member should be a follower; roles: {roles:?}"
    );
    // Each member lists the whole cluster with the addresses it was started with.
    for (id, s) in &views {
        let mut listed: Vec<(u64, &str, &str)> =
            s.members.iter().map(|m| (m.id, m.peer_addr.as_str(), m.client_addr.as_str())).collect();
        listed.sort();
        let expected: Vec<(u64, &str, &str)> = c
            .ids()
            .into_iter()
            .map(|i| (i, c.member(i).peer_addr.as_str(), c.member(i).client_addr.as_str()))
            .collect();
        assert_eq!(listed, expected, "member {id} should list every member with its addresses");
    }
}

#[tokio::test]
async fn writes_through_any_member_are_seen_at_once_by_linearizable_reads_on_another() {
    let c = Cluster::start(3, &[]).await;
    c.leader().await;
    let mut last_revision = 0;
    for (writer, reader) in [(1, 2), (2, 3), (3, 1)] {
        let key = format!("through/{writer}");
        let value = format!("written via member {writer}");
        let put = c.client_of(writer).await.put(key.as_str(), value.as_str()).await.unwrap_or_else(|e| {
            panic!("a put through member {writer} should succeed (followers forward writes): {e}")
        });
        let put_rev = put.header.unwrap().revision;
        assert!(put_rev > last_revision, "revisions should grow: {put_rev} after {last_revision}");
        last_revision = put_rev;
        // No polling: a linearizable read anywhere must see an acknowledged write.
        let read = c
            .client_of(reader)
            .await
            .range(RangeRequest { key: key.clone().into_bytes(), ..Default::default() })
            .await
            .unwrap();
        let header = read.header.unwrap();
        assert_eq!(header.member_id, reader, "the read should be served by member {reader}");
        let kv = read.kvs.first().unwrap_or_else(|| {
            panic!("member {reader} should see {key:?} written via member {writer} at revision {put_rev}")
        });
        assert_eq!(kv.value, value.as_bytes(), "value of {key:?} read on member {reader}");
        assert_eq!(kv.mod_revision, put_rev, "mod_revision of {key:?} should be the put's revision");
        assert!(header.revision >= put_rev, "a read after a write is served at revision >= {put_rev}");
    }
}

/// `--advertise-client-addr`: a member bound to an address clients cannot use (a wildcard, NAT)
/// is named by the one it advertises, by itself and by the other members' status (which asks
/// it over the peer port, as `server::learn_members` does for the leader hint; the hint itself
/// is checked with bound addresses in the test below). The advertised name need not resolve
/// here: nothing connects to it.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_is_named_to_clients_by_the_client_address_it_advertises() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let other = c.ids().into_iter().find(|id| *id != leader).expect("a follower among 3 members");
    let advertised = format!("member-{other}.latch.test:7379");
    c.kill(other);
    c.restart_with(other, &["--advertise-client-addr", &advertised]).await;
    let named_by = |status: &latch_client::StatusResponse| {
        status.members.iter().find(|m| m.id == other).map(|m| m.client_addr.clone())
    };
    for asked in [other, leader] {
        eventually(&format!("member {asked} to name member {other} by {advertised}"), STARTUP, || async {
            let status = c.status_of(asked).await?;
            match named_by(&status) {
                Some(addr) if addr == advertised => Ok(()),
                named => Err(format!("member {asked} names member {other} by {named:?}")),
            }
        })
        .await;
    }
    let bound = c.member(other).client_addr.clone();
    let kv = c.client_of(other).await.get("anything").await;
    assert!(kv.is_ok(), "member {other} still serves clients at its bound address {bound}: {kv:?}");
}

/// Two clusters side by side. A member refuses a request that names another cluster, naming
/// both, and changes nothing; every answer names the member's own cluster. A client whose
/// endpoints reach a member of the other cluster once its own member is gone (as a stale leader
/// hint would send it there) gets refusals, and the other cluster holds none of its writes.
#[tokio::test]
async fn a_member_of_another_cluster_refuses_a_clients_requests_and_changes_nothing() {
    let mut ours = Cluster::start(1, &[]).await;
    let theirs = Cluster::start(1, &[]).await;
    ours.leader().await;
    theirs.leader().await;
    let (our_id, their_id) = (format_cluster_id(ours.cluster_id()), format_cluster_id(theirs.cluster_id()));
    assert_ne!(our_id, their_id, "two clusters of different peer addresses have different ids");
    let put = |key: &str, cluster: &str| {
        let mut request = tonic::Request::new(PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        });
        request.metadata_mut().insert(CLUSTER_ID_METADATA, cluster.parse().expect("ascii"));
        request
    };
    let mut kv = theirs.kv_of_only(1).await;

    let refused = kv.put(put("refused", &our_id)).await.expect_err("a request naming another cluster");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    for id in [&our_id, &their_id] {
        assert!(refused.message().contains(id.as_str()), "the refusal names cluster {id}: {refused:?}");
    }
    let named = refused.metadata().get(CLUSTER_ID_METADATA).and_then(|v| v.to_str().ok());
    assert_eq!(named, Some(their_id.as_str()), "a refusal names the member's own cluster");
    let malformed = kv.put(put("malformed", "cluster-7")).await.expect_err("a malformed cluster id");
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument, "{malformed:?}");
    assert!(malformed.message().contains(CLUSTER_ID_METADATA), "names the metadata: {malformed:?}");
    let served = kv.put(put("served", &their_id)).await.expect("a request naming the member's own cluster");
    let named = served.metadata().get(CLUSTER_ID_METADATA).and_then(|v| v.to_str().ok());
    assert_eq!(named, Some(their_id.as_str()), "an answer names the member's own cluster");

    let options = ClientOptions { retry_budget: Duration::from_secs(1), ..ClientOptions::default() };
    let endpoints = [ours.member(1).client_addr.clone(), theirs.member(1).client_addr.clone()];
    let client = Client::connect_with(endpoints, options).await.unwrap();
    client.put("mine", "1").await.expect("the client's own cluster acknowledges its first put");
    ours.kill(1);
    let lost = client.put("mine", "2").await.expect_err("no member of the client's cluster is left");
    let (_, keys) = theirs.local_kvs(1).await.expect("the other cluster's state");
    let keys: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["served"],
        "the other cluster holds none of the client's writes (the put failed: {lost})"
    );
}

/// A follower's refusal of a request naming another cluster names no leader: its cluster's
/// leader is nothing to that client, which would only be refused there too.
#[tokio::test]
async fn a_followers_refusal_of_another_clusters_request_names_no_leader() {
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let follower = c.ids().into_iter().find(|id| *id != leader).expect("a follower among 3 members");
    let other = format_cluster_id(c.cluster_id() ^ 1);
    let request = |cluster: Option<&str>| {
        let mut request = tonic::Request::new(RangeRequest {
            key: b"k".to_vec(),
            serializable: true,
            ..Default::default()
        });
        if let Some(cluster) = cluster {
            request.metadata_mut().insert(CLUSTER_ID_METADATA, cluster.parse().expect("ascii"));
        }
        request
    };
    let mut kv = c.kv_of_only(follower).await;
    // Members learn each other's client addresses after the election.
    eventually("the follower's answers to name the leader", STARTUP, || {
        let mut kv = kv.clone();
        async move {
            let answer = kv.range(request(None)).await.map_err(|e| e.to_string())?;
            match answer.metadata().get(latch_client::LEADER_ADDR_METADATA) {
                Some(_) => Ok(()),
                None => Err("no leader named yet".to_string()),
            }
        }
    })
    .await;
    let refused = kv.range(request(Some(&other))).await.expect_err("a request naming another cluster");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.metadata().get(latch_client::LEADER_ADDR_METADATA).is_none(),
        "the refusal names no leader of the follower's cluster: {refused:?}"
    );
}

/// A failure sent inside a stream (a keepalive's, in the trailers) names the member's cluster
/// as a failed call does: the client can tell that the member itself answered.
#[tokio::test]
async fn a_failure_sent_inside_a_keepalive_stream_names_the_members_cluster() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let ours = format_cluster_id(c.cluster_id());
    let url = format!("http://{}", c.member(1).client_addr);
    let mut sessions = latch_client::proto::session_client::SessionClient::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to member 1: {e}"));
    let request = latch_client::proto::KeepAliveRequest { id: "no-such-session".into() };
    let opened = sessions
        .keep_alive(futures::stream::once(async move { request }))
        .await
        .expect("the keepalive stream opens");
    let mut stream = opened.into_inner();
    let failed =
        stream.message().await.expect_err("a keepalive of an unknown session fails inside the stream");
    assert_eq!(failed.code(), tonic::Code::NotFound, "{failed:?}");
    let named = failed.metadata().get(CLUSTER_ID_METADATA).and_then(|v| v.to_str().ok());
    assert_eq!(named, Some(ours.as_str()), "the stream's failure names the member's cluster: {failed:?}");
}

#[tokio::test]
async fn a_client_sends_its_writes_to_the_leader_a_follower_names_and_keeps_its_reads_where_they_were() {
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let follower = c.ids().into_iter().find(|id| *id != leader).expect("a follower among 3 members");
    let given = [c.member(follower).client_addr.clone()];
    // Members learn each other's client addresses over the peer port, after the election: from
    // then on every answer of the follower names the leader.
    let leader_addr = c.member(leader).client_addr.clone();
    eventually("the follower's answers to name the leader", STARTUP, || async {
        let url = format!("http://{}", given[0]);
        let mut kv =
            latch_client::proto::kv_client::KvClient::connect(url).await.map_err(|e| e.to_string())?;
        let read = RangeRequest { key: b"routed".to_vec(), serializable: true, ..Default::default() };
        let answer = kv.range(read).await.map_err(|e| e.to_string())?;
        let named = answer.metadata().get(latch_client::LEADER_ADDR_METADATA).and_then(|v| v.to_str().ok());
        match named {
            Some(addr) if addr == leader_addr => Ok(()),
            other => Err(format!("member {follower} names {other:?}, not leader {leader} at {leader_addr}")),
        }
    })
    .await;
    let answered_by =
        |header: Option<latch_client::proto::ResponseHeader>| header.expect("a header").member_id;

    let client = Client::connect(given.clone()).await.unwrap();
    let first = client.put("routed/0", "via the follower").await.unwrap();
    assert_eq!(
        answered_by(first.header),
        follower,
        "the first write goes to the one endpoint given, follower {follower}, which forwards it"
    );
    for i in 1..=3 {
        let put = client.put(format!("routed/{i}"), "via the leader").await.unwrap();
        assert_eq!(
            answered_by(put.header),
            leader,
            "once follower {follower} named the leader, write {i} should go to leader {leader}"
        );
    }
    assert!(
        client.endpoints().contains(&c.member(leader).client_addr),
        "the leader's address is among the client's endpoints: {:?}",
        client.endpoints()
    );
    let read = client
        .range(RangeRequest { key: b"routed/3".to_vec(), serializable: true, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(answered_by(read.header), follower, "reads stay on the endpoint given, follower {follower}");
    assert_eq!(
        read.kvs.first().map(|kv| kv.value.as_slice()),
        Some(b"via the leader".as_slice()),
        "a serializable read on follower {follower} sees the client's own write acknowledged by the leader"
    );

    let options = ClientOptions { writes_to_leader: false, ..ClientOptions::default() };
    let pinned = Client::connect_with(given, options).await.unwrap();
    for i in 0..3 {
        let put = pinned.put(format!("pinned/{i}"), "via the follower").await.unwrap();
        assert_eq!(
            answered_by(put.header),
            follower,
            "with writes_to_leader off, write {i} should stay on follower {follower}"
        );
    }
}

#[tokio::test]
async fn killing_the_leader_elects_another_among_the_survivors_and_writes_resume() {
    let mut c = Cluster::start(3, &[]).await;
    let old = c.leader().await;
    let old_term = c.status_of(old).await.unwrap().term;
    let before = c.client().await.put("before", "written under the old leader").await.unwrap();
    c.kill(old);
    let new = c.leader().await;
    assert_ne!(new, old, "a killed leader cannot still lead");
    let survivors = c.live_ids();
    let new_term = c.status_of(new).await.unwrap().term;
    assert!(new_term > old_term, "the new leader's term {new_term} should be above the old {old_term}");

    let client = c.client_of_many(&survivors).await;
    let after = client
        .put("after", "written under the new leader")
        .await
        .unwrap_or_else(|e| panic!("a put through the survivors {survivors:?} should succeed: {e}"));
    assert!(
        after.header.unwrap().revision > before.header.unwrap().revision,
        "revisions continue across the failover"
    );
    for id in &survivors {
        let client = c.client_of(*id).await;
        let old_kv = client.get("before").await.unwrap();
        assert_eq!(
            old_kv.map(|kv| kv.value),
            Some(b"written under the old leader".to_vec()),
            "member {id} should still serve the write acknowledged before the failover"
        );
        let new_kv = client.get("after").await.unwrap();
        assert_eq!(
            new_kv.map(|kv| kv.value),
            Some(b"written under the new leader".to_vec()),
            "on member {id}"
        );
    }
}

#[tokio::test]
async fn a_retried_request_id_is_applied_once_and_answered_with_the_first_outcome() {
    let mut c = Cluster::start(3, &[]).await;
    c.leader().await;
    let put = |value: &str| PutRequest {
        key: b"retried".to_vec(),
        value: value.as_bytes().to_vec(),
        request_id: "retry-me-once".into(),
        ..Default::default()
    };
    let first = c.client_of(1).await.put_request(put("v1")).await.unwrap();
    let first_rev = first.header.unwrap().revision;
    // Another write in between, so that "the first outcome" differs from "the current revision".
    let other = c.client_of(1).await.put("other", "x").await.unwrap();
    let store_rev = other.header.unwrap().revision;
    assert!(store_rev > first_rev);

    // The retry arrives at another member, as after a timeout and a fail-over of the client.
    let retry = c.client_of(2).await.put_request(put("v1")).await.unwrap();
    assert_eq!(
        retry.header.unwrap().revision,
        first_rev,
        "the retry should be answered with the first outcome (its revision)"
    );
    let read =
        c.client_of(3).await.range(RangeRequest { key: b"retried".to_vec(), ..Default::default() }).await;
    let read = read.unwrap();
    let kv = read.kvs.first().expect("the key written by the first attempt");
    assert_eq!(kv.value, b"v1", "the retry must not be applied again");
    assert_eq!(kv.version, 1, "the key was written once");
    assert_eq!(kv.mod_revision, first_rev);
    assert_eq!(read.header.unwrap().revision, store_rev, "the retry must not advance the store revision");

    // And after a leader change: the new leader remembers the request id too.
    let old = c.leader().await;
    c.kill(old);
    let new = c.leader().await;
    let retry = c.client_of(new).await.put_request(put("v1")).await.unwrap();
    assert_eq!(
        retry.header.unwrap().revision,
        first_rev,
        "a retry after the leader changed ({old} → {new}) should be answered with the first outcome"
    );
    let kv =
        c.client_of(new).await.get("retried").await.unwrap().expect("the key written by the first attempt");
    assert_eq!((kv.value.as_slice(), kv.version), (&b"v1"[..], 1), "the retry must not be applied again");

    // The same id with another request is refused by name, never answered with the first's data.
    let err = c.client_of(new).await.put_request(put("v2")).await.expect_err("a reused id must be refused");
    let status = match err {
        latch_client::Error::Status(s) => s,
        other => panic!("expected FAILED_PRECONDITION naming the request id, got {other}"),
    };
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "got {status:?}");
    assert!(status.message().contains("retry-me-once"), "the error names the id: {}", status.message());
    let kv = c.client_of(new).await.get("retried").await.unwrap().expect("still there");
    assert_eq!((kv.value.as_slice(), kv.version), (&b"v1"[..], 1), "the refused request wrote nothing");
}
