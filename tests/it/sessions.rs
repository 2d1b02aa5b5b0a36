//! Sessions on real processes (DESIGN.md §1 Sessions; docs/sessions.md): kept alive they live,
//! left alone they expire within their TTL plus two election timeouts taking their ephemeral
//! keys in one revision, a leader's death expires none of them, and the Rust client's states
//! follow the cluster's reachability.

use std::time::Duration;

use latch_client::{Client, Code, PutRequest, RangeRequest, SessionOptions, SessionState};
use tokio::time::Instant;

use crate::harness::{eventually, Cluster, STARTUP, TICK};

/// Raft's election timeout in these clusters at its longest: raft-rs draws it from
/// [10, 20) ticks.
fn longest_election_timeout() -> Duration {
    humantime::parse_duration(TICK).unwrap() * 20
}

async fn ephemeral_put(client: &Client, key: &str, session: &str) {
    client
        .put_request(PutRequest {
            key: key.into(),
            value: b"held".to_vec(),
            session: session.to_string(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("put {key} bound to session {session}: {e}"));
}

async fn revision(client: &Client) -> i64 {
    let r = client.range(RangeRequest { key: b"x".to_vec(), ..Default::default() }).await.unwrap();
    r.header.map_or(0, |h| h.revision)
}

#[tokio::test]
async fn a_session_kept_alive_outlives_three_times_its_ttl() {
    let c = Cluster::start(3, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let session = client.session(SessionOptions::new(Duration::from_secs(1))).await.unwrap();
    ephemeral_put(&client, "kept/a", session.id()).await;
    let until = Instant::now() + 3 * session.ttl();
    while Instant::now() < until {
        assert_ne!(session.state(), SessionState::Expired, "a session kept alive must not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(session.state(), SessionState::Safe, "kept alive all along");
    let info = client.session_info(session.id()).await.expect("the cluster still has the session");
    assert_eq!(info.keys, 1, "it still owns its key");
    assert!(client.get("kept/a").await.unwrap().is_some(), "its ephemeral key is still there");
    let deleted = session.close().await.unwrap();
    assert_eq!(deleted, 1, "closing it deletes its key");
    assert!(client.get("kept/a").await.unwrap().is_none());
}

#[tokio::test]
async fn when_keepalives_stop_the_session_expires_within_its_ttl_plus_two_election_timeouts_in_one_revision()
{
    let c = Cluster::start(3, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let ttl = Duration::from_secs(1);
    let (id, _) = client.create_session(ttl, "left alone").await.unwrap();
    for k in ["e/1", "e/2", "e/3"] {
        ephemeral_put(&client, k, &id).await;
    }
    let sent = Instant::now();
    let ack = client.keep_alive(&id).await.unwrap();
    let granted = Duration::from_millis(ack.granted_ms as u64);
    let before = revision(&client).await;
    // Watch it go: never before the grant ran out, and by the bound at the latest.
    let bound = ttl + 2 * longest_election_timeout();
    let gone_at = eventually("the session to expire", STARTUP, || {
        let client = client.clone();
        let id = id.clone();
        async move {
            match client.session_info(&id).await {
                Ok(_) => Err("still live".to_string()),
                Err(e) if e.code() == Code::NotFound => Ok(Instant::now()),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await;
    let lived = gone_at - sent;
    assert!(lived >= granted, "expired after {lived:?}, before the {granted:?} the keepalive granted");
    // The poll sees it some milliseconds late; allow one poll round and a request on top.
    assert!(
        lived <= bound + Duration::from_millis(300),
        "expired {lived:?} after the last keepalive; the bound is TTL + 2 election timeouts = {bound:?}"
    );
    for k in ["e/1", "e/2", "e/3"] {
        assert!(client.get(k).await.unwrap().is_none(), "{k} went with its session");
    }
    assert_eq!(revision(&client).await, before + 1, "the session's end deleted its 3 keys in one revision");
}

#[tokio::test]
async fn killing_the_leader_expires_none_of_the_sessions_kept_alive() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let client = c.client().await;
    let mut sessions = Vec::new();
    for i in 0..5 {
        let s =
            client.session(SessionOptions::new(Duration::from_secs(2)).name(format!("s{i}"))).await.unwrap();
        ephemeral_put(&client, &format!("owned/{i}"), s.id()).await;
        sessions.push(s);
    }
    c.kill(leader);
    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader);
    // Two TTLs under the new leader: every session must be kept alive through it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for s in &sessions {
        assert_eq!(s.state(), SessionState::Safe, "session {} after the leader's death", s.id());
        client.session_info(s.id()).await.unwrap_or_else(|e| panic!("session {} expired: {e}", s.id()));
    }
    let owned = client.get_prefix("owned/").await.unwrap();
    assert_eq!(owned.len(), 5, "every ephemeral key is still there");
}

#[tokio::test]
async fn the_client_is_in_jeopardy_then_expired_while_the_cluster_is_unreachable() {
    let mut c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let options = SessionOptions::new(Duration::from_secs(1)).grace(Duration::from_secs(1));
    let session = client.session(options).await.unwrap();
    let mut states = session.watch();
    c.kill(1);
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        let mut seen = Vec::new();
        while seen.last() != Some(&SessionState::Expired) {
            states.changed().await.expect("the session task reports until it ends");
            seen.push(*states.borrow_and_update());
        }
        seen
    })
    .await
    .expect("the session should be given up within its lease and grace period");
    assert_eq!(seen, vec![SessionState::Jeopardy, SessionState::Expired], "states while unreachable");
    assert_eq!(session.lease_left(), Duration::ZERO, "an expired session has no lease left");
}

#[tokio::test]
async fn the_client_is_safe_again_when_the_cluster_returns_within_the_grace_period() {
    let mut c = Cluster::start(3, &[]).await;
    c.leader().await;
    let client = c.client().await;
    // The restarted members count each stored lease from their start: the TTL must cover a
    // restart of all three, an election and the client's next keepalive (2 s did not, on a
    // 2-core machine running debug builds).
    let options = SessionOptions::new(Duration::from_secs(6)).grace(Duration::from_secs(60));
    let session = client.session(options).await.unwrap();
    ephemeral_put(&client, "survivor", session.id()).await;
    let mut states = session.watch();
    for id in c.ids() {
        c.kill(id);
    }
    tokio::time::timeout(Duration::from_secs(10), states.wait_for(|s| *s == SessionState::Jeopardy))
        .await
        .expect("jeopardy while every member is down")
        .unwrap();
    for id in c.ids() {
        c.restart(id).await;
    }
    // Restarted members count every stored lease again from their start: the session lives.
    tokio::time::timeout(STARTUP, states.wait_for(|s| *s == SessionState::Safe))
        .await
        .expect("safe again once the cluster answers within the grace period")
        .unwrap();
    assert!(client.get("survivor").await.unwrap().is_some(), "its ephemeral key survived");
}

#[tokio::test]
async fn bad_session_requests_are_refused_by_name() {
    let c = Cluster::start(1, &["--session-ttl-max", "1m"]).await;
    c.leader().await;
    let client = c.client().await;
    let err = client.create_session(Duration::from_secs(120), "").await.expect_err("over the bound");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.to_string().contains("1s … 1m"), "names the bounds: {err}");
    let err = client.keep_alive("no-such-session").await.expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.to_string().contains("no-such-session"), "names the session: {err}");
    let put = PutRequest { key: b"k".to_vec(), session: "ghost".into(), ..Default::default() };
    let err = client.put_request(put).await.expect_err("unknown session");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.to_string().contains("ghost"), "names the session: {err}");
    let err = client.close_session("ghost").await.expect_err("unknown session");
    assert_eq!(err.code(), Code::NotFound);
    assert!(client.get("k").await.unwrap().is_none(), "nothing was written");
}

#[tokio::test]
async fn sequential_puts_through_the_api_name_the_keys_they_created() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let mut created = Vec::new();
    for _ in 0..3 {
        let put = PutRequest {
            key: b"jobs/".to_vec(),
            value: b"x".to_vec(),
            sequential: true,
            ..Default::default()
        };
        created.push(String::from_utf8(client.put_request(put).await.unwrap().key).unwrap());
    }
    assert_eq!(
        created,
        vec!["jobs/00000000000000000000", "jobs/00000000000000000001", "jobs/00000000000000000002"]
    );
}

/// `--max-sessions 2`: a third session is refused RESOURCE_EXHAUSTED naming the flag, and none
/// is created; once one of the two ends, a new one is.
#[tokio::test]
async fn a_session_past_max_sessions_is_refused_naming_the_flag_until_one_ends() {
    let c = Cluster::start(1, &["--max-sessions", "2"]).await;
    c.leader().await;
    let client = c.client().await;
    let ttl = Duration::from_secs(10);
    let (a, _) = client.create_session(ttl, "a").await.unwrap();
    client.create_session(ttl, "b").await.unwrap();
    let e = client.create_session(ttl, "c").await.expect_err("a third session is past --max-sessions 2");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    for needle in ["--max-sessions", "2 sessions"] {
        assert!(e.to_string().contains(needle), "the refusal should mention {needle:?}: {e}");
    }
    assert_eq!(client.sessions().await.unwrap().len(), 2, "the refused create made no session");

    client.close_session(&a).await.unwrap();
    // The member counts the close as it applies it, a moment after the answer may leave.
    eventually("a session to be created once one of two ended", STARTUP, || async {
        client.create_session(ttl, "c").await.map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(client.sessions().await.unwrap().len(), 2);
}

/// Session.List answers a page: at most `limit` sessions (or what `--max-response-bytes`
/// holds) after `start_after`, with `more` while others follow; the client reads every page.
#[tokio::test]
async fn sessions_are_listed_a_page_at_a_time_and_the_client_reads_every_page() {
    use latch_proto::v1::session_client::SessionClient;
    use latch_proto::v1::ListSessionsRequest;

    // 700 bytes hold about four sessions with their names.
    let c = Cluster::start(1, &["--max-response-bytes", "700"]).await;
    c.leader().await;
    let client = c.client().await;
    let ttl = Duration::from_secs(60);
    let name = "n".repeat(64);
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(client.create_session(ttl, &name).await.unwrap().0);
    }
    ids.sort();
    let mut raw = SessionClient::connect(format!("http://{}", c.member(1).client_addr)).await.unwrap();
    let list = |start_after: &str, limit: i64| ListSessionsRequest { start_after: start_after.into(), limit };

    let page = raw.list(list("", 3)).await.unwrap().into_inner();
    let first: Vec<String> = page.sessions.into_iter().map(|s| s.id).collect();
    assert_eq!(first, ids[..3], "limit 3: the first three, in id order");
    assert!(page.more, "seven more follow");

    let mut seen = Vec::new();
    let mut start_after = String::new();
    loop {
        let page = raw.list(list(&start_after, 0)).await.unwrap().into_inner();
        assert!(
            !page.sessions.is_empty() && page.sessions.len() < ids.len(),
            "a page holds at least one session and, at 700 bytes, not all ten: {}",
            page.sessions.len()
        );
        seen.extend(page.sessions.iter().map(|s| s.id.clone()));
        if !page.more {
            break;
        }
        start_after = seen.last().cloned().unwrap_or_default();
    }
    assert_eq!(seen, ids, "the pages together list every session once, in id order");
    let all: Vec<String> = client.sessions().await.unwrap().into_iter().map(|s| s.id).collect();
    assert_eq!(all, ids, "the client's sessions() reads every page");
    let e = raw.list(list("", -1)).await.expect_err("a negative limit");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("limit"), "{e:?}");
}
