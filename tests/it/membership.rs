//! Growing a running cluster (`latch cluster add`): a new member started with the cluster's
//! `--initial-cluster` and its own `--peer-addr` on an empty data dir joins as a learner,
//! catches up, votes, and counts toward commits; a bad addition is refused saying why.

use std::time::Duration;

use crate::harness::{eventually, latch_bin, Cluster};

/// `latch cluster …` against `endpoints`: (succeeded, stdout, stderr).
async fn cluster_cli(endpoints: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(latch_bin())
        .arg("cluster")
        .args(args)
        .args(["--endpoints", endpoints, "--timeout", "20s"])
        .env_remove("LATCH_ENDPOINTS")
        .output()
        .await
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// A fourth member added with `latch cluster add` and started as the command says joins: every
/// member's status lists it a follower (it votes), it holds what was written before it joined,
/// and with one of the first three killed, the three left — the new one among them — still
/// commit. Adding a member that is one, or at an address that is not HOST:PORT, is refused.
#[tokio::test]
async fn a_member_added_with_latch_cluster_add_catches_up_votes_and_counts_toward_commits() {
    let mut c = Cluster::start(3, &[]).await;
    let client = c.client().await;
    client.put("before", "v").await.unwrap();
    let endpoints: Vec<String> = c.ids().iter().map(|id| c.member(*id).client_addr.clone()).collect();
    let endpoints = endpoints.join(",");
    let new = c.new_member().await;
    let addr = c.member(new).peer_addr.clone();

    let (ok, _, said) = cluster_cli(&endpoints, &["add", "2", &addr]).await;
    assert!(!ok && said.contains("member 2 is a member already"), "a member is not added again: {said}");
    let taken = c.member(2).peer_addr.clone();
    let (ok, _, said) = cluster_cli(&endpoints, &["add", &new.to_string(), &taken]).await;
    assert!(!ok && said.contains("is member 2's"), "another member's address: {said}");
    let alias = taken.replace("127.0.0.1", "localhost");
    let (ok, _, said) = cluster_cli(&endpoints, &["add", &new.to_string(), &alias]).await;
    assert!(!ok && said.contains("is member 2's"), "an alias of another member's address: {said}");
    let (ok, _, said) = cluster_cli(&endpoints, &["add", &new.to_string(), "no-port"]).await;
    assert!(!ok && said.contains("peer_addr") && said.contains("HOST:PORT"), "a bad address: {said}");

    let (ok, said, err) = cluster_cli(&endpoints, &["add", &new.to_string(), &addr]).await;
    let start =
        format!("latch server --id {new} --peer-addr {addr} --initial-cluster {}", c.initial_cluster());
    assert!(ok && said.contains(&start), "the addition says how to start the member: {said:?} {err:?}");

    c.restart(new).await;
    follower_everywhere(&c, new, &c.ids()).await;
    let (_, kvs) = c.local_kvs(new).await.unwrap();
    assert!(kvs.contains(&("before".to_string(), "v".to_string())), "it caught up: {kvs:?}");

    let leader = c.leader().await;
    let first = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    c.kill(first);
    client.put("after", "v").await.unwrap();
    eventually("the new member applies the write", Duration::from_secs(10), || async {
        let (_, kvs) = c.local_kvs(new).await?;
        kvs.contains(&("after".to_string(), "v".to_string())).then_some(()).ok_or(format!("{kvs:?}"))
    })
    .await;
}

/// Once every first member is gone — a cluster started with members 1 and 2 grows by 3 and 4,
/// and 1 and 2 are removed and stop — `latch cluster add` names the members that run in
/// `--peers`, by the host names their additions recorded (not the addresses their ports bound:
/// review-s63 M1), and a member started with it (its `--initial-cluster` names only members that are
/// gone) finds the cluster: it is admitted, votes, and counts toward commits.
#[tokio::test]
async fn a_member_added_after_every_first_member_is_gone_finds_the_cluster_through_peers() {
    let (mut c, new, said) = grown_past_the_first_members().await;
    let peers =
        format!("3={},4={}", by_host_name(&c.member(3).peer_addr), by_host_name(&c.member(4).peer_addr));
    assert!(
        said.contains(&format!("--initial-cluster {} --peers {peers} ", c.initial_cluster())),
        "the addition names the members that run in --peers: {said:?}"
    );

    // Started with the --peers the command printed.
    let printed = said.split(" --peers ").nth(1).and_then(|rest| rest.split_whitespace().next());
    c.restart_with(new, &["--peers", printed.unwrap_or_default()]).await;
    follower_everywhere(&c, new, &[3, 4]).await;
    let (_, kvs) = c.local_kvs(new).await.unwrap();
    assert!(kvs.contains(&("before".to_string(), "v".to_string())), "it caught up: {kvs:?}");
    let leader = c.leader_among(&[3, 4, new]).await;
    c.kill(leader);
    let left = [3, 4, new].into_iter().filter(|id| *id != leader).map(|id| c.member(id).client_addr.clone());
    let client = latch_client::Client::connect(left).await.unwrap();
    client.put("after", "v").await.expect("the two members left, the new one among them, commit");
}

/// A wrong address in `--peers` yields to the one the cluster records: the new member, told
/// that member 4 listens where nothing does, is admitted once member 3's answer names 4's
/// recorded address (and 4 answers there), and its messages go there — with member 3 killed,
/// 4 and the new member commit, which takes the new member's acknowledgements reaching 4.
#[tokio::test]
async fn a_wrong_address_in_peers_yields_to_the_one_the_cluster_records() {
    let (mut c, new, _) = grown_past_the_first_members().await;
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let wrong = nowhere.local_addr().unwrap().to_string();
    drop(nowhere);
    let peers = format!("3={},4={wrong}", c.member(3).peer_addr);
    c.restart_with(new, &["--peers", &peers]).await;
    follower_everywhere(&c, new, &[3, 4]).await;
    c.kill(3);
    let left = [4, new].into_iter().map(|id| c.member(id).client_addr.clone());
    let client = latch_client::Client::connect(left).await.unwrap();
    client.put("after", "v").await.expect("member 4 and the new member commit");
}

/// The address `addr` (`127.0.0.1:PORT`) by host name, as an operator may add a member.
fn by_host_name(addr: &str) -> String {
    addr.replace("127.0.0.1", "localhost")
}

/// A cluster started with members 1 and 2, grown by 3 and 4 (added by host name, listening on
/// 127.0.0.1), with 1 and 2 removed and stopped; a new member added with `latch cluster add`
/// against 3 and 4, not started. Returns the cluster, the new member's id and what the command
/// printed.
async fn grown_past_the_first_members() -> (Cluster, u64, String) {
    let mut c = Cluster::start(2, &[]).await;
    let client = c.client().await;
    client.put("before", "v").await.unwrap();
    for _ in 0..2 {
        let new = c.new_member().await;
        client.add_member(new, &by_host_name(&c.member(new).peer_addr)).await.unwrap();
        c.restart(new).await;
        follower_everywhere(&c, new, &c.ids()).await;
    }
    for first in [1, 2] {
        client.remove_member(first).await.unwrap();
        let exit = c.exit_of(first, Duration::from_secs(30)).await;
        assert!(exit.is_some(), "removed, member {first} stops by itself");
    }
    let endpoints: Vec<String> = [3, 4].iter().map(|id| c.member(*id).client_addr.clone()).collect();
    let new = c.new_member().await;
    let addr = c.member(new).peer_addr.clone();
    let (ok, said, err) = cluster_cli(&endpoints.join(","), &["add", &new.to_string(), &addr]).await;
    assert!(ok, "the addition succeeds: {said:?} {err:?}");
    (c, new, said)
}

/// Waits until each of `members` lists `new` a follower (it votes).
async fn follower_everywhere(c: &Cluster, new: u64, members: &[u64]) {
    for &id in members {
        eventually(
            &format!("member {id} lists member {new} a follower"),
            Duration::from_secs(30),
            || async {
                let status = c.status_of(id).await?;
                let role = status.members.iter().find(|m| m.id == new).map(|m| m.role.clone());
                match role.as_deref() {
                    Some("follower") => Ok(()),
                    _ => Err(format!("{role:?}")),
                }
            },
        )
        .await;
    }
}
