//! Crashes and restarts: SIGKILL of the leader or of every member under load, a follower
//! catching up by snapshot, and a data dir that belongs to another cluster (DESIGN.md §1, §6).

use std::collections::{BTreeMap, HashSet};
use std::io::Read as _;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use latch_client::{prefix_end, Client, KeyValue, PutRequest, RangeRequest, RangeResponse};
use tokio::time::Instant;

use crate::harness::{eventually, free_port, http_get, latch_bin, sample, Cluster, STARTUP};

#[tokio::test]
async fn every_acknowledged_write_survives_sigkill_of_every_member_mid_load() {
    // Twice: recovering from a state that was itself recovered must work as well.
    const ROUNDS: usize = 2;
    let mut c = Cluster::start(3, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let mut acks: Vec<Ack> = Vec::new();
    for round in 1..=ROUNDS {
        let load = Load::start(&client, &format!("load/{round}/"));
        load.wait_for_acks(200).await;
        for id in c.ids() {
            c.kill(id);
        }
        load.stop_soon();
        for id in c.ids() {
            c.restart(id).await;
        }
        // Writes in flight at the kill are retried by the client (same request id) and may be
        // acknowledged by the restarted cluster: those count too.
        acks.extend(load.finish().await);
        c.leader().await;
        check_every_ack_is_stored(
            &c,
            &acks,
            &format!("after {round} SIGKILL(s) of every member and restart(s)"),
        )
        .await;
    }
}

#[tokio::test]
async fn every_acknowledged_write_survives_sigkill_of_the_leader_mid_load() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let load = Load::start(&c.client().await, "load/");
    load.wait_for_acks(100).await;
    c.kill(leader);
    // Writes resume under the new leader, with no help from the test.
    load.wait_for_acks(load.acked() + 100).await;
    load.stop_soon();
    let acks = load.finish().await;
    c.leader().await;
    check_every_ack_is_stored(&c, &acks, &format!("after SIGKILL of leader {leader} under load")).await;
}

/// A write the cluster acknowledged: key, value, and the revision it answered.
type Ack = (String, String, i64);

/// 8 concurrent writers of unique keys under a prefix, recording what the cluster acknowledged.
struct Load {
    prefix: String,
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    const WRITERS: usize = 8;

    fn start(client: &Client, prefix: &str) -> Load {
        let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..Self::WRITERS {
            let (client, acks, stop, prefix) =
                (client.clone(), acks.clone(), stop.clone(), prefix.to_string());
            writers.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("{prefix}{w}/{i:06}");
                    let value = format!("writer {w}, write {i}");
                    // Failures are expected while members are down: only acks are promises.
                    if let Ok(r) = client.put(key.as_str(), value.as_str()).await {
                        acks.lock().unwrap().push((key, value, r.header.unwrap().revision));
                    }
                    i += 1;
                }
            }));
        }
        Load { prefix: prefix.to_string(), acks, stop, writers }
    }

    fn acked(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    async fn wait_for_acks(&self, n: usize) {
        let what = format!("{n} acknowledged writes under {:?}", self.prefix);
        eventually(&what, Duration::from_secs(60), || async {
            let acked = self.acked();
            if acked >= n {
                Ok(())
            } else {
                Err(format!("{acked} acks"))
            }
        })
        .await;
    }

    /// Tells the writers to stop after their current write.
    fn stop_soon(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for the writers to stop (their current write may retry for the client's retry
    /// budget) and returns every ack.
    async fn finish(self) -> Vec<Ack> {
        self.stop_soon();
        let deadline = Instant::now() + Duration::from_secs(30);
        for w in self.writers {
            tokio::time::timeout_at(deadline, w)
                .await
                .expect("writers should stop within their retry budget once told to")
                .unwrap();
        }
        let acks = self.acks.lock().unwrap().clone();
        acks
    }
}

/// Every ack is stored with its value, as the only write of its key at the acked revision;
/// and a new write gets a revision above every acked one. `when` says what happened before.
async fn check_every_ack_is_stored(c: &Cluster, acks: &[Ack], when: &str) {
    let revisions: HashSet<i64> = acks.iter().map(|a| a.2).collect();
    assert_eq!(revisions.len(), acks.len(), "{when}: every acknowledged put should have its own revision");
    let stored: BTreeMap<Vec<u8>, KeyValue> = c
        .client()
        .await
        .get_prefix("load/")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| (kv.key.clone(), kv))
        .collect();
    let mut lost = Vec::new();
    for (key, value, revision) in acks {
        match stored.get(key.as_bytes()) {
            Some(kv) if kv.value == value.as_bytes() && kv.mod_revision == *revision && kv.version == 1 => {}
            Some(kv) => lost.push(format!(
                "{key}: acked {value:?} at revision {revision}, found {:?} at revision {} version {}",
                String::from_utf8_lossy(&kv.value),
                kv.mod_revision,
                kv.version
            )),
            None => lost.push(format!("{key}: acked at revision {revision}, missing")),
        }
    }
    assert!(
        lost.is_empty(),
        "{when}, {} of {} acknowledged writes were lost or changed; first ones:\n{}",
        lost.len(),
        acks.len(),
        lost.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
    let max_acked = acks.iter().map(|a| a.2).max().unwrap();
    let next = c.client().await.put("after/load", "x").await.unwrap();
    let next = next.header.unwrap().revision;
    assert!(
        next > max_acked,
        "{when}: revisions must not go backwards: a new put got {next}, but revision {max_acked} was \
         acknowledged before"
    );
}

#[tokio::test]
async fn a_follower_that_missed_many_snapshots_worth_of_writes_catches_up_by_snapshot() {
    // More than the leader keeps for a follower it heard from lately (`core::CATCH_UP_SNAPSHOTS`
    // × 20 entries past its compaction target).
    const KEYS: usize = 300;
    let mut c = Cluster::start(3, &["--snapshot-entries", "20"]).await;
    let leader = c.leader().await;
    let follower = c.ids().into_iter().find(|id| *id != leader).unwrap();
    c.kill(follower);
    let survivors = c.live_ids();
    let client = c.client_of_many(&survivors).await;
    let mut first_revision = 0;
    for i in 0..KEYS {
        let put = PutRequest {
            key: format!("snap/{i:03}").into_bytes(),
            value: format!("value {i}").into_bytes(),
            request_id: format!("snap-{i}"),
            ..Default::default()
        };
        let r = client.put_request(put).await.unwrap();
        if i == 0 {
            first_revision = r.header.unwrap().revision;
        }
    }
    c.restart(follower).await;
    let leader = c.leader().await;
    let what = format!("restarted member {follower}'s applied index to reach leader {leader}'s");
    eventually(&what, Duration::from_secs(30), || async {
        let l = c.self_status(leader).await?.applied_index;
        let f = c.self_status(follower).await?.applied_index;
        if f >= l {
            Ok(())
        } else {
            Err(format!("leader applied {l}, member {follower} applied {f}"))
        }
    })
    .await;
    let me = c.self_status(follower).await.unwrap();
    assert!(
        me.snapshots_installed >= 1,
        "member {follower} missed {KEYS} writes with --snapshot-entries 20 (more than the 10 × 20 kept \
         for it), so the leader's log was compacted past it and it should have caught up by installing \
         a snapshot; status: {me:?}"
    );
    let read = serializable_range(&c, follower, "snap/").await;
    assert_eq!(read.header.unwrap().member_id, follower, "the serializable read should be served locally");
    let got: Vec<(String, String)> = read
        .kvs
        .iter()
        .map(|kv| (String::from_utf8_lossy(&kv.key).into(), String::from_utf8_lossy(&kv.value).into()))
        .collect();
    let expected: Vec<(String, String)> =
        (0..KEYS).map(|i| (format!("snap/{i:03}"), format!("value {i}"))).collect();
    assert_eq!(
        got, expected,
        "member {follower}'s own state should hold every key written while it was down"
    );

    // The snapshot carried the request ids too: a retry through this member of a write it only
    // knows from the snapshot is answered with the first outcome and not applied again (were
    // it applied here only, this member's state would diverge from the others').
    let retry = PutRequest {
        key: b"snap/000".to_vec(),
        value: b"value 0".to_vec(),
        request_id: "snap-0".into(),
        ..Default::default()
    };
    let member = c.client_of(follower).await;
    let r = member.put_request(retry).await.unwrap();
    assert_eq!(r.header.unwrap().revision, first_revision, "a retry should get the first outcome");
    // After the snapshot the member takes part as before: its writes are at once visible to a
    // linearizable read on it.
    member.put("after-snapshot", "ok").await.unwrap();
    let kv = member.get("after-snapshot").await.unwrap();
    assert_eq!(kv.map(|kv| kv.value), Some(b"ok".to_vec()), "member {follower} after installing a snapshot");

    // Every member ends with the same state at the same revision.
    let states = eventually("every member to hold the same keys at the same revision", STARTUP, || async {
        let mut states = Vec::new();
        for id in c.ids() {
            let r = serializable_range(&c, id, "").await;
            let kvs: Vec<_> = r
                .kvs
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.clone(), kv.mod_revision, kv.version))
                .collect();
            states.push((id, r.header.unwrap().revision, kvs));
        }
        if states.iter().all(|s| s.1 == states[0].1 && s.2 == states[0].2) {
            Ok(states)
        } else {
            Err(format!(
                "(member, revision, keys): {:?}",
                states.iter().map(|s| (s.0, s.1, s.2.len())).collect::<Vec<_>>()
            ))
        }
    })
    .await;
    let snap0 = states[0].2.iter().find(|kv| kv.0 == b"snap/000").unwrap();
    assert_eq!((snap0.1.as_slice(), snap0.3), (&b"value 0"[..], 1), "the retry must not be applied anywhere");
}

/// Every key starting with `prefix` (the empty prefix: every key), read from member `id`'s own
/// applied state.
async fn serializable_range(c: &Cluster, id: u64, prefix: &str) -> RangeResponse {
    let (key, range_end) = if prefix.is_empty() {
        (vec![0], vec![0])
    } else {
        (prefix.as_bytes().to_vec(), prefix_end(prefix.as_bytes()))
    };
    let request = RangeRequest { key, range_end, serializable: true, ..Default::default() };
    c.client_of(id).await.range(request).await.unwrap()
}

#[tokio::test]
async fn a_member_restarted_on_a_data_dir_of_another_cluster_refuses_to_start() {
    let mut c = Cluster::start(1, &[]).await;
    c.leader().await;
    c.client().await.put("mine", "kept").await.unwrap();
    c.kill(1);

    // Same id, same data dir, but another --initial-cluster: another cluster.
    let other = format!("1={},2=127.0.0.1:{}", c.member(1).peer_addr, free_port());
    let (status, stderr) = refused_start(&c, &other).await;
    assert!(!status.success(), "refusing to start should exit non-zero, got {status}; stderr: {stderr}");
    let data_file = c.member(1).data_dir.join(latch::storage::STATE_FILE);
    assert!(
        stderr.contains(&data_file.display().to_string()),
        "stderr should name the data file {}; got: {stderr}",
        data_file.display()
    );
    assert!(
        stderr.contains("belongs to cluster"),
        "stderr should say the file belongs to another cluster; got: {stderr}"
    );

    // The refusal changed nothing: with its own configuration the member starts and has its data.
    c.restart(1).await;
    c.leader().await;
    let kv = c.client().await.get("mine").await.unwrap();
    assert_eq!(
        kv.map(|kv| kv.value),
        Some(b"kept".to_vec()),
        "the data written before should still be there"
    );
}

#[tokio::test]
async fn a_second_server_on_a_running_members_data_dir_refuses_to_start_saying_it_is_in_use() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    c.client().await.put("mine", "kept").await.unwrap();
    let m = c.member(1);
    let port = || format!("127.0.0.1:{}", free_port());
    let mut second = std::process::Command::new(latch_bin());
    second
        .args(["server", "--id", "1", "--data-dir"])
        .arg(&m.data_dir)
        .args([
            "--client-addr",
            &port(),
            "--peer-addr",
            &port(),
            "--http-addr",
            &port(),
            "--dns-addr",
            &port(),
        ])
        .args(["--initial-cluster", &format!("1={}", m.peer_addr)])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    let (status, stderr) = exits_by_itself(second).await;
    assert!(
        !status.success(),
        "a second server on the same data dir must not run: {status}; stderr: {stderr}"
    );
    assert!(
        stderr
            .contains("is in use by another process: is a latch server already running on this --data-dir?"),
        "stderr should say the data dir is in use, not that it is corrupt; got: {stderr}"
    );
    let kv = c.client().await.get("mine").await.unwrap();
    assert_eq!(kv.map(|kv| kv.value), Some(b"kept".to_vec()), "the running member goes on, its data intact");
}

/// Starts member 1 with `initial_cluster` and waits for it to exit on its own, returning how it
/// exited and what it printed on stderr. Fails the test if it keeps running.
async fn refused_start(c: &Cluster, initial_cluster: &str) -> (std::process::ExitStatus, String) {
    exits_by_itself(c.server_command(1, initial_cluster)).await
}

/// Runs `cmd` (a server that must refuse to start) until it exits on its own, returning how it
/// exited and what it printed on stderr. Fails the test if it keeps running.
async fn exits_by_itself(mut cmd: std::process::Command) -> (std::process::ExitStatus, String) {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    exited(cmd.spawn().unwrap(), "the server should refuse to start").await
}

/// Waits for `child` (its stderr piped) to exit on its own, returning how it exited and what it
/// printed on stderr. Fails the test, saying `expected`, if it keeps running.
async fn exited(mut child: std::process::Child, expected: &str) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + STARTUP;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{expected}, but it kept running for {STARTUP:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status, stderr)
}

/// A member whose data dir is lost (a replaced disk, a pod on an `emptyDir`) must not rejoin
/// under its old id: it forgot the entries it acknowledged and the votes it cast, and taking
/// part again could lose committed writes (`server::admission`). Started again on an empty data
/// dir it takes no part, and serves no client, while too few peers answer (it reports itself
/// "admitting"; `/health` answers, `/ready` does not); once a peer that records its start
/// answers, it exits naming its data dir — and again on its next start, beside a live leader
/// (what a refused start left in the data dir changes nothing). The cluster keeps its data.
#[tokio::test]
async fn a_member_restarted_on_an_empty_data_dir_waits_for_its_peers_then_refuses_to_rejoin() {
    let mut c = Cluster::start(3, &[]).await;
    c.leader().await;
    c.client().await.put("k", "v").await.unwrap();
    let peers: BTreeMap<u64, String> =
        c.ids().into_iter().map(|id| (id, c.member(id).peer_addr.clone())).collect();
    let peer_status = |id: u64| {
        let addr = peers[&id].clone();
        async move { latch::transport::member_status(&addr, Duration::from_secs(1)).await }
    };
    eventually("member 1 to record every member's start", STARTUP, || async {
        let s = peer_status(1).await?;
        if s.started_members == [1, 2, 3] {
            Ok(())
        } else {
            Err(format!("it records {:?}", s.started_members))
        }
    })
    .await;
    for id in c.ids() {
        c.kill(id);
    }
    let data_dir = c.member(2).data_dir.clone();
    std::fs::remove_dir_all(&data_dir).unwrap();
    let start_wiped = |c: &Cluster| {
        let mut cmd = c.server_command(2, c.initial_cluster());
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    // Alone, member 2 cannot learn whether it ran before: it waits, taking no part.
    let wiped = start_wiped(&c);
    eventually("the wiped member 2 to report itself admitting", STARTUP, || async {
        let s = peer_status(2).await?;
        if s.role == "admitting" {
            Ok(())
        } else {
            Err(format!("role {:?}", s.role))
        }
    })
    .await;
    assert!(c.status_of(2).await.is_err(), "an admitting member serves no client requests");
    let http = c.member(2).http_addr.clone();
    let health = http_get(&http, "/health").await.expect("the HTTP port answers while admitting");
    let ready = http_get(&http, "/ready").await.expect("the HTTP port answers while admitting");
    assert_eq!(
        (health.status, ready.status),
        (200, 503),
        "alive, not ready: {} / {}",
        health.body,
        ready.body
    );

    // Member 1 is back: it records member 2's start, and member 2 exits.
    c.restart(1).await;
    refused(wiped, &data_dir, "first start").await;

    // Again, with members 1 and 3 up and led: the empty segment the refused start left is no log.
    c.restart(3).await;
    c.leader_among(&[1, 3]).await;
    refused(start_wiped(&c), &data_dir, "second start, beside a leader").await;

    let kv = c.client_of_many(&[1, 3]).await.get("k").await.unwrap();
    assert_eq!(kv.map(|kv| kv.value), Some(b"v".to_vec()), "the cluster keeps its data");
}

/// Waits for the wiped member 2's process to exit on its own, refused by member 1; fails the
/// test if it keeps running or says otherwise.
async fn refused(wiped: std::process::Child, data_dir: &std::path::Path, when: &str) {
    let expected = format!("{when}: the wiped member 2 should exit beside member 1, which records it");
    let (status, stderr) = exited(wiped, &expected).await;
    assert!(!status.success(), "{when}: a wiped member must not start: {status}; stderr: {stderr}");
    assert!(
        stderr.contains("member 1 records that member 2 has run before")
            && stderr.contains(&data_dir.display().to_string()),
        "{when}: stderr should name the peer that records it and the data dir {}; got: {stderr}",
        data_dir.display()
    );
}

/// The repair for a lost data dir, with real processes and the command line: member W is
/// SIGKILLed and its data dir removed; started again, it is refused, naming the repair; `latch
/// cluster replace W` against the running members makes it a learner; started again on an empty
/// data dir it is admitted, catches up from a snapshot and votes again — so that with the third
/// member killed, the leader and W alone commit a write.
#[tokio::test]
async fn a_member_that_lost_its_data_dir_is_replaced_and_votes_again_once_caught_up() {
    let mut c = Cluster::start(3, &["--snapshot-entries", "50"]).await;
    let leader = c.leader().await;
    let (w, other) = match leader {
        1 => (3, 2),
        2 => (3, 1),
        _ => (2, 1),
    };
    let client = c.client().await;
    for i in 0..120 {
        client.put(format!("before/{i:03}"), "v").await.unwrap();
    }
    let leader_peer = c.member(leader).peer_addr.clone();
    let leader_status = || {
        let addr = leader_peer.clone();
        async move { latch::transport::member_status(&addr, Duration::from_secs(1)).await }
    };
    eventually("the leader to record member W's start", STARTUP, || async {
        let s = leader_status().await?;
        s.started_members.contains(&w).then_some(()).ok_or(format!("it records {:?}", s.started_members))
    })
    .await;
    c.kill(w);
    let data_dir = c.member(w).data_dir.clone();
    std::fs::remove_dir_all(&data_dir).unwrap();
    let start_wiped = |c: &Cluster| {
        let mut cmd = c.server_command(w, c.initial_cluster());
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    let (status, stderr) = exited(start_wiped(&c), "the wiped member should be refused").await;
    assert!(!status.success(), "refused: {status}");
    assert!(
        stderr.contains(&format!("latch cluster replace {w}")),
        "the refusal should name the repair; got: {stderr}"
    );

    let endpoints = format!("{},{}", c.member(leader).client_addr, c.member(other).client_addr);
    let replace = |member: u64| {
        let endpoints = endpoints.clone();
        async move {
            tokio::process::Command::new(latch_bin())
                .args([
                    "cluster",
                    "replace",
                    &member.to_string(),
                    "--endpoints",
                    &endpoints,
                    "--timeout",
                    "10s",
                ])
                .env_remove("LATCH_ENDPOINTS")
                .output()
                .await
                .unwrap()
        }
    };
    let running = replace(other).await;
    assert_eq!(running.status.code(), Some(1), "a running member is not replaced");
    assert!(
        String::from_utf8_lossy(&running.stderr).contains(&format!("member {other} is running")),
        "the refusal says why: {:?}",
        String::from_utf8_lossy(&running.stderr)
    );
    // Member W stopped moments ago: refused as running until the leader has not heard from it
    // for an election timeout.
    eventually("`latch cluster replace W` to succeed", STARTUP, || async {
        let replaced = replace(w).await;
        let said = String::from_utf8_lossy(&replaced.stdout).into_owned();
        if replaced.status.success() && said.contains(&format!("member {w} is a learner now")) {
            Ok(())
        } else {
            Err(format!("it said {said:?} and {:?}", String::from_utf8_lossy(&replaced.stderr)))
        }
    })
    .await;
    let s = leader_status().await.unwrap();
    assert_eq!(s.learners, vec![w], "the leader's state records member W a learner");
    let again = replace(leader).await;
    assert_eq!(again.status.code(), Some(1), "the leader cannot be replaced");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains(&format!("member {leader} leads the cluster")),
        "the refusal names why: {:?}",
        String::from_utf8_lossy(&again.stderr)
    );

    c.restart(w).await;
    eventually("member W to vote again", STARTUP * 2, || async {
        let s = leader_status().await?;
        let member = c.status_of(leader).await?.members.into_iter().find(|m| m.id == w);
        let role = member.map(|m| m.role).unwrap_or_default();
        (s.learners.is_empty() && role == "follower")
            .then_some(())
            .ok_or(format!("learners {:?}, member W's role {role:?}", s.learners))
    })
    .await;
    let caught_up = c.self_status(w).await.unwrap();
    assert!(caught_up.snapshots_installed > 0, "member W caught up from a snapshot");

    c.kill(other);
    let pair = c.client_of_many(&[leader, w]).await;
    pair.put("after", "both").await.expect("the leader and the replaced member commit a write");
    let (_, kvs) = c.local_kvs(w).await.unwrap();
    assert!(kvs.contains(&("before/000".to_string(), "v".to_string())), "member W holds what came before");
}

#[tokio::test]
async fn a_member_whose_data_file_is_garbage_refuses_to_start_naming_the_file() {
    let mut c = Cluster::start(1, &[]).await;
    c.leader().await;
    c.client().await.put("k", "v").await.unwrap();
    c.kill(1);

    // The log and the state machine each live in a file of their own; either one garbled stops
    // the member, naming it.
    let segment = format!("{}/0000000000000001.wal", latch::storage::LOG_DIR);
    for name in [segment.as_str(), latch::storage::STATE_FILE] {
        let data_file = c.member(1).data_dir.join(name);
        let saved = std::fs::read(&data_file).unwrap();
        std::fs::write(&data_file, vec![0xA5u8; saved.len().max(4096)]).unwrap();

        let own = format!("1={}", c.member(1).peer_addr);
        let (status, stderr) = refused_start(&c, &own).await;
        assert!(!status.success(), "a corrupt {name} should stop the member, got {status}; stderr: {stderr}");
        assert!(
            stderr.contains(&data_file.display().to_string()),
            "stderr should name the corrupt data file {}; got: {stderr}",
            data_file.display()
        );
        std::fs::write(&data_file, saved).unwrap();
    }
}

/// A peer that answers `Peer.Status` as member `id` of `cluster_id` running a build of command
/// `version` whose state holds cluster version `cluster_version`, and nothing else: a member of
/// another build.
#[derive(Clone)]
struct OtherBuild {
    id: u64,
    cluster_id: u64,
    version: u32,
    cluster_version: u32,
}

#[tonic::async_trait]
impl latch_proto::internal::peer_server::Peer for OtherBuild {
    async fn stream(
        &self,
        _: tonic::Request<tonic::Streaming<latch_proto::internal::PeerFrame>>,
    ) -> Result<tonic::Response<latch_proto::internal::PeerAck>, tonic::Status> {
        Err(tonic::Status::unimplemented("another build"))
    }

    async fn snapshot(
        &self,
        _: tonic::Request<tonic::Streaming<latch_proto::internal::PeerFrame>>,
    ) -> Result<tonic::Response<latch_proto::internal::PeerAck>, tonic::Status> {
        Err(tonic::Status::unimplemented("another build"))
    }

    async fn status(
        &self,
        _: tonic::Request<latch_proto::internal::MemberStatusRequest>,
    ) -> Result<tonic::Response<latch_proto::internal::MemberStatus>, tonic::Status> {
        Ok(tonic::Response::new(latch_proto::internal::MemberStatus {
            id: self.id,
            cluster_id: self.cluster_id,
            command_version: self.version,
            cluster_version: self.cluster_version,
            role: "follower".into(),
            ..Default::default()
        }))
    }
}

/// A stand-in serving, until [`Serving::stop`].
struct Serving {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Serving {
    /// Stops serving and closes the connections members opened to it (each is served by a
    /// task of its own, which aborting the server's task would leave answering), as the
    /// process of another build that stops does.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("the stand-in's task ends").expect("the stand-in stops cleanly");
    }
}

impl OtherBuild {
    /// Serves on `addr` (a stopped member's peer port).
    async fn serve(self, addr: &str) -> Serving {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("the peer port is free");
        let incoming =
            tonic::transport::server::TcpIncoming::from_listener(listener, true, None).expect("incoming");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(latch_proto::internal::peer_server::PeerServer::new(self))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        Serving { stop, task }
    }
}

/// Members of builds of different command versions run side by side while the cluster version
/// is one every one of them applies (docs/architecture.md, "Upgrades"): a member starts beside
/// a later build, but not beside a build that does not roll (10), nor when a peer's state says the
/// cluster runs a version past its own build — it exits naming the peer and both versions. With
/// every member on this build, the leader raises the cluster version to it, and `cluster status`
/// names each member's build and cluster version.
#[tokio::test]
async fn a_member_runs_beside_a_later_build_but_not_past_its_own_version_and_the_cluster_version_follows_the_builds(
) {
    let mut c = Cluster::start(3, &[]).await;
    c.leader().await;
    c.client().await.put("k", "v").await.unwrap();
    let v = latch::fsm::COMMAND_VERSION;
    c.kill(3);
    c.kill(1);
    let peer3 = c.member(3).peer_addr.clone();
    let build =
        |version, cluster_version| OtherBuild { id: 3, cluster_id: c.cluster_id(), version, cluster_version };
    let refusals = [
        (
            build(v + 1, v + 1),
            format!(
                "member 3's state says the cluster runs version {}, and this build applies versions up to {v}",
                v + 1
            ),
        ),
        (build(10, 0), format!("member 3 runs a build of version 10, and this build of version {v} runs beside")),
    ];
    for (other, named) in refusals {
        let other_build = other.clone().serve(&peer3).await;
        let restarted = c
            .server_command(1, c.initial_cluster())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start member 1 again");
        let (status, stderr) = exited(restarted, "member 1 should exit beside member 3's build").await;
        assert!(
            !status.success(),
            "member 1 must not start beside {:?}: {status}; stderr: {stderr}",
            (other.version, other.cluster_version)
        );
        assert!(stderr.contains(&named), "stderr should say why ({named}); got: {stderr}");
        other_build.stop().await;
    }

    // A later build whose cluster version this build applies: member 1 starts beside it.
    let other_build = build(v + 1, v).serve(&peer3).await;
    c.restart(1).await;
    let kv = c.client_of_many(&[1, 2]).await.get("k").await.unwrap();
    assert_eq!(kv.map(|kv| kv.value), Some(b"v".to_vec()), "the cluster keeps its data");
    other_build.stop().await;

    // Member 3 back on this build: every member runs it, and the cluster runs its version.
    c.restart(3).await;
    eventually("every member names this build and its cluster version", STARTUP, || async {
        let status = c.status_of(2).await?;
        let versions: Vec<(u64, u32, u32)> =
            status.members.iter().map(|m| (m.id, m.command_version, m.cluster_version)).collect();
        match versions == [(1, v, v), (2, v, v), (3, v, v)] {
            true => Ok(()),
            false => Err(format!("(member, build, cluster version): {versions:?}")),
        }
    })
    .await;
}

/// A member whose state file took a changed byte while it was down (damage raft cannot see: it
/// replicates the log, not the state) serves it only until the next check point: there its
/// state hashes apart from its peers', which agree with each other, so it stops, saying which
/// index and which members, marks its data dir and refuses to start on it again; its peers
/// judge themselves sound and go on serving.
#[tokio::test]
async fn a_member_whose_state_file_changed_stops_at_the_next_check_point_and_stays_stopped() {
    use redb::ReadableTable as _;
    let mut c = Cluster::start(3, &["--state-check-interval", "1s"]).await;
    let leader = c.leader().await;
    let victim = c.ids().into_iter().find(|id| *id != leader).unwrap();
    let client = c.client().await;
    client.put("ledger", "balance=100").await.unwrap();
    eventually("the victim applied the write", STARTUP, || async {
        match serializable_range(&c, victim, "ledger").await.kvs.first() {
            Some(kv) if kv.value == b"balance=100" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    c.stop(victim).await;

    // One byte of the value, changed in the victim's state file.
    let state_file = c.member(victim).data_dir.join(latch::storage::STATE_FILE);
    {
        let db = redb::Database::open(&state_file).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut kv = txn.open_table(latch::storage::schema::KV).unwrap();
            let rows: Vec<(Vec<u8>, Vec<u8>)> = kv
                .iter()
                .unwrap()
                .map(|r| r.unwrap())
                .map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
                .collect();
            let (key, mut value) = rows
                .into_iter()
                .find(|(_, v)| v.windows(11).any(|w| w == b"balance=100"))
                .expect("the state file holds the write (a stopped member leaves its state durable)");
            let at = value.windows(11).position(|w| w == b"balance=100").unwrap();
            value[at + 8] = b'9';
            kv.insert(key.as_slice(), value.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }

    c.start_again(victim);
    let status = c.exit_of(victim, Duration::from_secs(30)).await;
    let log = c.log_tail(victim, 30);
    let status =
        status.unwrap_or_else(|| panic!("the changed member should stop within 30 s; its log:\n{log}"));
    assert!(!status.success(), "it stops with a failure, got {status}");
    let others: Vec<u64> = c.ids().into_iter().filter(|id| *id != victim).collect();
    assert!(
        log.contains(&format!("member {victim}'s state differs from the one member(s) {others:?} share"))
            && log.contains("it stops, and does not start again while"),
        "it says its state differs from members {others:?}'; its log:\n{log}"
    );
    let mark = c.member(victim).data_dir.join(latch::server::state_check::MARK);
    assert!(mark.exists(), "it marks its data dir ({})", mark.display());

    // Started again, it refuses, naming the mark.
    let (status, stderr) = exits_by_itself(c.server_command(victim, c.initial_cluster())).await;
    assert!(!status.success(), "a marked member does not start, got {status}; stderr: {stderr}");
    assert!(
        stderr.contains(&mark.display().to_string())
            && stderr.contains("state differs from the one member(s)"),
        "its refusal names the mark and says why; got: {stderr}"
    );

    // The sound members judged themselves sound, say so, and serve.
    for id in others {
        assert!(c.live_ids().contains(&id), "member {id} still runs");
        let metrics = c.metrics_of(id).await.unwrap();
        let agreed = sample(&metrics, "latch_state_check_points_total{verdict=\"agreed\"}");
        assert!(agreed.is_some_and(|n| n >= 1.0), "member {id} counts agreed check points: {agreed:?}");
        let kv = serializable_range(&c, id, "ledger").await;
        assert_eq!(kv.kvs.first().map(|kv| kv.value.clone()), Some(b"balance=100".to_vec()));
    }
    client.put("ledger", "balance=90").await.unwrap();

    // The mark removed, it starts as it is; with --state-check-action alert it only says so.
    std::fs::remove_file(&mark).unwrap();
    c.restart_with(victim, &["--state-check-action", "alert"]).await;
    eventually("the member counts a diverged check point", Duration::from_secs(30), || async {
        let metrics = c.metrics_of(victim).await?;
        match sample(&metrics, "latch_state_check_points_total{verdict=\"diverged\"}") {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(c.exit_of(victim, Duration::ZERO).await.is_none(), "it goes on running");
    assert!(!mark.exists(), "and marks nothing");
}

/// Copies directory `from` (files and subdirectories) to `to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A member started on an older copy of its own data dir has forgotten entries it acknowledged
/// (and perhaps votes it cast). At its leader's first heartbeat it stops, saying so, and marks its
/// data dir: started again it refuses at once, before it could vote from its older log. The
/// cluster serves on.
#[tokio::test]
async fn a_member_started_on_an_older_copy_of_its_data_dir_stops_marks_it_and_stays_stopped() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let member = c.ids().into_iter().find(|id| *id != leader).unwrap();
    let client = c.client().await;
    client.put("before", "copy").await.unwrap();
    c.stop(member).await;
    let data_dir = c.member(member).data_dir.clone();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&data_dir, copy.path());
    c.restart(member).await;
    for i in 0..50 {
        client.put(format!("after-{i}"), "v").await.unwrap();
    }
    eventually("the member applied every write", STARTUP, || async {
        match serializable_range(&c, member, "after-49").await.kvs.first() {
            Some(_) => Ok(()),
            None => Err("not yet".to_string()),
        }
    })
    .await;
    c.stop(member).await;

    std::fs::remove_dir_all(&data_dir).unwrap();
    copy_dir(copy.path(), &data_dir);
    c.start_again(member);
    let status = c.exit_of(member, Duration::from_secs(30)).await;
    let log = c.log_tail(member, 20);
    let status = status.unwrap_or_else(|| panic!("the member on an older copy should stop; its log:\n{log}"));
    assert!(!status.success(), "it stops with a failure, got {status}");
    assert!(log.contains("forgot entries it acknowledged"), "it says why; its log:\n{log}");
    let mark = data_dir.join(latch::server::marks::FORGOT_ENTRIES);
    assert!(mark.exists(), "it marks its data dir ({})", mark.display());

    let (status, stderr) = exits_by_itself(c.server_command(member, c.initial_cluster())).await;
    assert!(!status.success(), "a marked member does not start, got {status}; stderr: {stderr}");
    assert!(
        stderr.contains(&mark.display().to_string()) && stderr.contains("forgot entries it acknowledged"),
        "its refusal names the mark and says why; got: {stderr}"
    );
    client.put("after-the-member-stopped", "v").await.unwrap();
}

/// `latch cluster remove` of the leader, running: the leader hands leadership over, the client
/// asks again, and the next leader removes it. The removed member's process stops by itself,
/// saying why, and leaves a REMOVED mark that refuses its next start; the two members left
/// commit writes and are all `latch cluster status` lists.
#[tokio::test]
async fn the_leader_removed_while_running_stops_and_does_not_start_again() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let client = c.client().await;
    client.put("before", "v").await.unwrap();
    // Each other member sends to the leader on a sender thread of its own, until the removal.
    let sender = format!("latch-peer-{leader}");
    for id in c.ids().into_iter().filter(|id| *id != leader) {
        let names = c.thread_names(id);
        assert!(names.contains(&sender), "member {id} has a sender to the leader {leader}: {names:?}");
    }
    let endpoints: Vec<String> = c.ids().iter().map(|id| c.member(*id).client_addr.clone()).collect();
    let removed = tokio::process::Command::new(latch_bin())
        .args([
            "cluster",
            "remove",
            &leader.to_string(),
            "--endpoints",
            &endpoints.join(","),
            "--timeout",
            "20s",
        ])
        .env_remove("LATCH_ENDPOINTS")
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&removed.stdout);
    assert!(
        removed.status.success() && said.contains(&format!("member {leader} is removed")),
        "the removal succeeds once leadership moved: {said:?} {:?}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let exit = c.exit_of(leader, STARTUP).await;
    assert!(exit.is_some_and(|s| !s.success()), "the removed member stops by itself: {exit:?}");
    let log = std::fs::read_to_string(&c.member(leader).log).unwrap_or_default();
    assert!(
        log.contains(&format!("member {leader} was removed from the cluster")),
        "it says why it stopped: {}",
        c.log_tail(leader, 20)
    );
    let mark = c.member(leader).data_dir.join("REMOVED");
    assert!(mark.exists(), "it leaves a REMOVED mark in its data dir");

    client.put("after", "v").await.unwrap();
    let left: Vec<u64> = c.ids().into_iter().filter(|id| *id != leader).collect();
    let status = c.status_of(left[0]).await.unwrap();
    let mut listed: Vec<u64> = status.members.iter().map(|m| m.id).collect();
    listed.sort_unstable();
    assert_eq!(listed, left, "the status lists the members left");
    // The members left forget it: its sender threads stop (one idle thread per member ever
    // removed, otherwise, until a restart).
    for id in &left {
        eventually(&format!("member {id}'s sender to removed member {leader} stopped"), STARTUP, || {
            let names = c.thread_names(*id);
            let still = names.contains(&sender);
            async move {
                if still {
                    Err(format!("{names:?}"))
                } else {
                    Ok(())
                }
            }
        })
        .await;
    }

    let mut again = c.server_command(leader, c.initial_cluster());
    again.stdout(Stdio::null()).stderr(Stdio::piped());
    let (status, stderr) = exited(again.spawn().unwrap(), "the removed member should not start again").await;
    assert!(!status.success(), "refused: {status}");
    assert!(stderr.contains("was removed from the cluster"), "the refusal says why: {stderr}");
}

/// A member removed while cut off from the others never applies its removal: the others stop
/// sending to it. Once the partition heals, their transports refuse its messages and its
/// connections, saying it was removed (or their status told it first), and it stops with a
/// REMOVED mark.
#[tokio::test]
async fn a_member_removed_while_cut_off_is_told_by_its_peers_and_stops() {
    let mut c = Cluster::start(3, &["--fault-injection"]).await;
    let leader = c.leader().await;
    let w = if leader == 3 { 2 } else { 3 };
    c.client().await.put("before", "v").await.unwrap();
    c.isolate(w).await;
    let others: Vec<u64> = c.ids().into_iter().filter(|id| *id != w).collect();
    let endpoints: Vec<String> = others.iter().map(|id| c.member(*id).client_addr.clone()).collect();
    let removed = tokio::process::Command::new(latch_bin())
        .args(["cluster", "remove", &w.to_string(), "--endpoints", &endpoints.join(","), "--timeout", "20s"])
        .env_remove("LATCH_ENDPOINTS")
        .output()
        .await
        .unwrap();
    assert!(
        removed.status.success(),
        "the removal succeeds: {:?} {:?}",
        String::from_utf8_lossy(&removed.stdout),
        String::from_utf8_lossy(&removed.stderr)
    );
    c.heal_all().await;
    let exit = c.exit_of(w, STARTUP).await;
    assert!(exit.is_some_and(|s| !s.success()), "told by its peers, it stops: {exit:?}");
    let log = std::fs::read_to_string(&c.member(w).log).unwrap_or_default();
    assert!(log.contains("'s configuration no longer has it"), "it says who told it: {}", c.log_tail(w, 20));
    assert!(c.member(w).data_dir.join("REMOVED").exists(), "it leaves a REMOVED mark");
    let client = c.client_of_many(&others).await;
    client.put("after", "v").await.unwrap();
}

/// A member removed while its raft messages are cut off, and still cut off, learns of its
/// removal from its peers' status (which every member asks its peers for every few seconds):
/// it stops without a single raft message getting through (a removed learner sends none).
#[tokio::test]
async fn a_member_removed_while_its_messages_are_cut_off_learns_it_from_its_peers_status() {
    let mut c = Cluster::start(3, &["--fault-injection"]).await;
    let leader = c.leader().await;
    let w = if leader == 3 { 2 } else { 3 };
    c.isolate(w).await;
    let others: Vec<u64> = c.ids().into_iter().filter(|id| *id != w).collect();
    let client = c.client_of_many(&others).await;
    client.remove_member(w).await.unwrap();
    let exit = c.exit_of(w, STARTUP).await;
    assert!(exit.is_some_and(|s| !s.success()), "told by its peers' status, it stops: {exit:?}");
    assert!(c.member(w).data_dir.join("REMOVED").exists(), "it leaves a REMOVED mark");
    let status = c.status_of(others[0]).await.unwrap();
    assert_eq!(status.members.len(), 2, "the members left: {:?}", status.members);
}
