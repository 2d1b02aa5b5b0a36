//! Bounded memory (issue 6 §3, DESIGN.md §6): what a member holds for its clients and peers is
//! bounded in bytes, each bound has a flag, and past it the member refuses with an error that
//! names the flag, writes nothing, and keeps serving.

use std::time::Duration;

use latch_client::proto::response_op::Response;
use latch_client::{Op, PutRequest, RangeRequest, Txn};
use latch_proto::internal::peer_client::PeerClient;
use latch_proto::internal::PeerFrame;

use crate::harness::{eventually, sample, Cluster, STARTUP};

fn put(key: &str, value_bytes: usize) -> PutRequest {
    PutRequest { key: key.into(), value: vec![b'v'; value_bytes], ..Default::default() }
}

/// Keys under `prefix` in member `id`'s own state.
async fn local_keys(c: &Cluster, id: u64, prefix: &str) -> Vec<String> {
    let (_, kvs) = c.local_kvs(id).await.unwrap();
    kvs.into_iter().map(|(k, _)| k).filter(|k| k.starts_with(prefix)).collect()
}

/// ListLocks answers a page within --max-response-bytes, says `more`, and reads on after a
/// name; the Rust client reads every page. Before, it cut the list at 1,000 locks without a
/// word, and one of large queues could pass what a client decodes.
#[tokio::test]
async fn a_lock_list_over_max_response_bytes_comes_in_pages_the_client_reads_whole() {
    use latch_client::proto::lock_client::LockClient;
    use latch_client::proto::ListLocksRequest;
    use latch_client::{LockOptions, SessionOptions, Wait};

    let c = Cluster::start(1, &["--max-response-bytes", "10000"]).await;
    c.leader().await;
    let client = c.client().await;
    let session = client.session(SessionOptions::new(Duration::from_secs(60))).await.expect("a session");
    let names: Vec<String> = (0..40).map(|i| format!("paged/{i:02}/{}", "n".repeat(200))).collect();
    for name in &names {
        client
            .acquire(session.id(), name, LockOptions::exclusive().wait(Wait::No))
            .await
            .expect("acquire")
            .expect("a free lock is granted at once");
    }
    client.acquire(session.id(), "other", LockOptions::exclusive().wait(Wait::No)).await.expect("acquire");

    let mut raw = LockClient::connect(format!("http://{}", c.member(1).client_addr)).await.expect("connect");
    let list =
        |start_after: &str| ListLocksRequest { prefix: "paged/".into(), start_after: start_after.into() };
    let first = raw.list_locks(list("")).await.expect("a page").into_inner();
    assert!(
        first.more && !first.locks.is_empty() && first.locks.len() < 40,
        "40 locks of 200-byte names under a 10 kB bound come as a page saying more, got {} (more {})",
        first.locks.len(),
        first.more
    );
    let last = first.locks.last().expect("a page holds one lock at least").name.clone();
    let next = raw.list_locks(list(&last)).await.expect("the next page").into_inner();
    assert!(next.locks.first().is_some_and(|l| l.name > last), "the next page starts after {last:?}");

    let all: Vec<String> =
        client.list_locks("paged/").await.expect("list").into_iter().map(|l| l.name).collect();
    assert_eq!(all, names, "the client reads every page, in name order, only names under the prefix");
}

/// Election.List cuts its pages by the bytes it answers, not by the bytes it stores: each leader's
/// sequencer repeats the election's name, so a page cut by the stored rows was about twice the
/// bound for long names.
#[tokio::test]
async fn an_election_list_page_answers_within_max_response_bytes_though_sequencers_repeat_names() {
    use latch_client::proto::election_client::ElectionClient;
    use latch_client::proto::ListElectionsRequest;
    use latch_client::SessionOptions;
    use prost::Message;

    let bound = 10_000;
    let c = Cluster::start(1, &["--max-response-bytes", &bound.to_string()]).await;
    c.leader().await;
    let client = c.client().await;
    let session = client.session(SessionOptions::new(Duration::from_secs(60))).await.expect("a session");
    let names: Vec<String> = (0..60).map(|i| format!("paged/{i:02}/{}", "n".repeat(200))).collect();
    for name in &names {
        client.election(name).campaign(session.id(), "v").await.expect("the only candidate leads");
    }

    let mut raw =
        ElectionClient::connect(format!("http://{}", c.member(1).client_addr)).await.expect("connect");
    let (mut start_after, mut pages) = (String::new(), 0);
    loop {
        let page = raw
            .list(ListElectionsRequest { prefix: "paged/".into(), start_after: start_after.clone() })
            .await
            .expect("a page")
            .into_inner();
        pages += 1;
        assert!(
            page.encoded_len() <= bound,
            "a page answers at most --max-response-bytes ({bound}), got {} bytes in {} elections",
            page.encoded_len(),
            page.elections.len()
        );
        match page.elections.last() {
            Some(last) if page.more => start_after = last.name.clone(),
            _ => break,
        }
    }
    assert!(pages > 2, "60 elections of 200-byte names under a 10 kB bound take several pages, got {pages}");
    let all: Vec<String> =
        client.list_elections("paged/").await.expect("list").into_iter().map(|e| e.name).collect();
    assert_eq!(all, names, "the client reads every page, in name order");
}

#[tokio::test]
async fn a_range_over_max_response_bytes_returns_a_page_with_more_and_the_whole_count() {
    let c = Cluster::start(1, &["--max-response-bytes", "10000"]).await;
    c.leader().await;
    let client = c.client().await;
    for i in 0..20 {
        client.put(format!("page/{i:02}"), vec![b'x'; 1000]).await.unwrap();
    }
    let (key, range_end) = latch_client::prefix_range(b"page/");
    let all = RangeRequest { key, range_end, ..Default::default() };
    let page = client.range(all.clone()).await.unwrap();
    assert!(
        !page.kvs.is_empty() && page.kvs.len() < 20,
        "a 20 kB range under a 10 kB bound should come back as a page, got {} kvs",
        page.kvs.len()
    );
    let bytes: usize = page.kvs.iter().map(|kv| kv.key.len() + kv.value.len()).sum();
    assert!(bytes <= 10_000, "the page holds {bytes} bytes of keys and values, over the 10000 bound");
    assert!(page.more, "a page cut by --max-response-bytes says `more`");
    assert_eq!(page.count, 20, "`count` is the whole count");

    // The ranges of one txn share the bound.
    let txn = client.txn(Txn::new().and_then((0..3).map(|_| Op::get_prefix("page/")))).await.unwrap();
    let kvs: usize = txn
        .responses
        .iter()
        .map(|r| match &r.response {
            Some(Response::Range(r)) => r.kvs.len(),
            _ => 0,
        })
        .sum();
    assert!(kvs < 20, "three ranges of one txn share the 10 kB bound, got {kvs} kvs in all");

    // Paging on from the last key reads the rest.
    let mut seen = page.kvs.len();
    let mut next = page.kvs.last().map(|kv| [kv.key.clone(), vec![0]].concat()).unwrap();
    loop {
        let r = client.range(RangeRequest { key: next.clone(), ..all.clone() }).await.unwrap();
        seen += r.kvs.len();
        match (r.more, r.kvs.last()) {
            (true, Some(kv)) => next = [kv.key.clone(), vec![0]].concat(),
            _ => break,
        }
    }
    assert_eq!(seen, 20, "paging from the last key of each page reads every key once");

    // The client's whole reads page on by themselves (at one revision: the next test).
    let keys = |kvs: &[latch_client::KeyValue]| kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>();
    let expected: Vec<Vec<u8>> = (0..20).map(|i| format!("page/{i:02}").into_bytes()).collect();
    assert_eq!(keys(&client.get_prefix("page/").await.unwrap()), expected, "get_prefix reads every page");
    let limited = client.range_all(RangeRequest { limit: 15, ..all.clone() }).await.unwrap();
    assert_eq!(
        (keys(&limited.kvs), limited.more, limited.count),
        (expected[..15].to_vec(), true, 20),
        "a limit past the first page: that many kvs, and more past them"
    );
    let whole = client.range_all(all.clone()).await.unwrap();
    assert_eq!((whole.kvs.len(), whole.more), (20, false), "no limit: every kv, and no more");

    // So does `latch kv get --prefix` (it cut the answer at the first page without a word).
    let out = std::process::Command::new(crate::harness::latch_bin())
        .args(["kv", "get", "page/", "--prefix", "--keys-only", "--endpoints", &c.member(1).client_addr])
        .env_remove("LATCH_ENDPOINTS")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "latch kv get: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(printed.lines().count(), 20, "the command prints every key: {printed}");
}

/// A whole read pages on from each page's last key, which may be as long as a key may be (the
/// key after it would be one byte longer), and past a kv that fills a page alone; every page is
/// read at one revision.
#[tokio::test]
async fn a_whole_read_pages_past_keys_of_the_longest_length_and_a_kv_that_fills_a_page_alone() {
    let c = Cluster::start(1, &["--max-response-bytes", "3000", "--max-key-bytes", "32"]).await;
    c.leader().await;
    let client = c.client().await;
    let key = |i: usize| format!("long/{i:02}/{}", "k".repeat(24));
    assert_eq!(key(0).len(), 32, "keys of the longest length the members take");
    for i in 0..10 {
        let size = if i == 4 { 4000 } else { 900 };
        client.put(key(i), vec![b'a'; size]).await.unwrap();
    }
    let (start, end) = latch_client::prefix_range(b"long/");
    let all = RangeRequest { key: start, range_end: end, ..Default::default() };
    let keys = |kvs: &[latch_client::KeyValue]| {
        kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect::<Vec<_>>()
    };
    let expected: Vec<String> = (0..10).map(key).collect();
    let whole = client.range_all(all.clone()).await.expect("every page is asked within --max-key-bytes");
    assert_eq!(keys(&whole.kvs), expected, "every key once, in order, the one of 4,000 bytes among them");
    let limited = client.range_all(RangeRequest { limit: 6, ..all.clone() }).await.unwrap();
    assert_eq!((keys(&limited.kvs), limited.more), (expected[..6].to_vec(), true));
    // A range may start one byte past the longest key (the key after it), not two.
    let from = |len: usize| RangeRequest { key: vec![b'l'; len], range_end: vec![0], ..Default::default() };
    client.range(from(33)).await.expect("the key after a key of 32 bytes starts a range");
    let over = client.range(from(34)).await.expect_err("34 bytes");
    assert!(over.over_limit() && over.to_string().contains("--max-key-bytes"), "named: {over}");

    // At a past revision, every page reads that revision.
    let at = whole.header.as_ref().map_or(0, |h| h.revision);
    for i in 0..10 {
        client.put(key(i), b"later".to_vec()).await.unwrap();
    }
    let past = client.range_all(RangeRequest { revision: at, ..all.clone() }).await.unwrap();
    assert!(
        past.kvs.len() == 10 && past.kvs.iter().all(|kv| kv.value != b"later"),
        "every page at revision {at}, none newer"
    );
}

#[tokio::test]
async fn requests_past_max_pending_bytes_are_refused_as_overloaded_and_write_nothing() {
    let flags = ["--max-request-bytes", "65536", "--max-pending-bytes", "100000"];
    let mut c = Cluster::start(3, &flags).await;
    let leader = c.leader().await;
    // Without a quorum nothing is answered: requests wait on the survivor, holding their bytes.
    let others: Vec<u64> = c.ids().into_iter().filter(|id| *id != leader).collect();
    for id in &others {
        c.kill(*id);
    }
    let mut waiting = c.kv_of_only(leader).await;
    let first = tokio::spawn(async move { waiting.put(put("pending/first", 60_000)).await });
    eventually("the first request's bytes to be held", STARTUP, || async {
        let m = c.metrics_of(leader).await?;
        match sample(&m, "latch_pending_requests_bytes") {
            Some(v) if v >= 60_000.0 => Ok(()),
            v => Err(format!("latch_pending_requests_bytes = {v:?}")),
        }
    })
    .await;
    let refused = c.kv_of_only(leader).await.put(put("pending/second", 60_000)).await;
    let status = refused.expect_err("a request past --max-pending-bytes must be refused");
    assert_eq!(status.code(), tonic::Code::Unavailable, "overload is UNAVAILABLE (retry later): {status:?}");
    assert!(
        status.message().contains("--max-pending-bytes"),
        "the error names the flag: {}",
        status.message()
    );
    assert_eq!(
        status.metadata().get("grpc-retry-pushback-ms").and_then(|v| v.to_str().ok()),
        Some("100"),
        "an overloaded member tells the client when to retry"
    );

    for id in &others {
        c.restart(*id).await;
    }
    c.leader().await;
    let _ = first.await;
    let client = c.client().await;
    client.put("after/overload", "ok").await.expect("the member serves again once a quorum is back");
    for id in c.ids() {
        let keys = local_keys(&c, id, "pending/second").await;
        assert!(keys.is_empty(), "the refused request must write nothing, member {id} holds {keys:?}");
    }
}

#[tokio::test]
async fn proposals_past_max_uncommitted_bytes_are_refused_by_the_leader_naming_the_flag() {
    // A slow tick keeps the leader in office for a second after it loses its quorum.
    let flags = ["--tick-interval", "100ms", "--max-uncommitted-bytes", "3145728"];
    let mut c = Cluster::start(3, &flags).await;
    let leader = c.leader().await;
    let others: Vec<u64> = c.ids().into_iter().filter(|id| *id != leader).collect();
    for id in &others {
        c.kill(*id);
    }
    let mut calls = Vec::new();
    for i in 0..4 {
        let mut kv = c.kv_of_only(leader).await;
        calls.push(tokio::spawn(async move { kv.put(put(&format!("uncommitted/{i}"), 1_000_000)).await }));
        // One at a time, so that which one overflows the log is certain.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fourth = calls.pop().unwrap();
    let status = fourth.await.unwrap().expect_err("a fourth 1 MB proposal overflows a 3 MiB uncommitted log");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("--max-uncommitted-bytes"),
        "the error names the flag: {}",
        status.message()
    );
    for id in &others {
        c.restart(*id).await;
    }
    c.leader().await;
    c.client().await.put("after/uncommitted", "ok").await.expect("the cluster serves again");
    for id in c.ids() {
        let keys = local_keys(&c, id, "uncommitted/3").await;
        assert!(keys.is_empty(), "the refused proposal must write nothing, member {id} holds {keys:?}");
    }
}

#[tokio::test]
async fn a_raft_message_over_max_peer_message_bytes_is_refused_naming_the_flag() {
    let c = Cluster::start(3, &["--max-peer-message-bytes", "4194304"]).await;
    c.leader().await;
    let cluster_id = c.cluster_id();
    let peer = &c.member(1).peer_addr;
    let mut client = PeerClient::connect(format!("http://{peer}")).await.unwrap();
    // Five 1 MiB chunks of one message that never ends.
    let frames = (0..5).map(move |_| PeerFrame { from: 2, cluster_id, chunk: vec![0; 1 << 20], last: false });
    let status =
        client.stream(tokio_stream::iter(frames)).await.expect_err("a 5 MiB message over a 4 MiB bound");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--max-peer-message-bytes"),
        "the error names the flag: {}",
        status.message()
    );
    c.client().await.put("still", "serving").await.expect("the member serves on");
}

#[tokio::test]
async fn a_follower_behind_a_tiny_log_cache_catches_up_from_the_log_on_disk() {
    // A one-byte cache: every entry older than the transaction being written is read from disk.
    let mut c = Cluster::start(3, &["--log-cache-bytes", "1"]).await;
    let leader = c.leader().await;
    let follower = c.ids().into_iter().find(|id| *id != leader).unwrap();
    c.kill(follower);
    let client = c.client().await;
    for i in 0..200 {
        client.put(format!("cache/{i:03}"), format!("value {i}")).await.unwrap();
    }
    let metrics = c.metrics_of(leader).await.unwrap();
    let cached = sample(&metrics, "latch_raft_log_cached_bytes").unwrap_or(f64::MAX);
    assert!(cached <= 64.0 * 1024.0, "the leader holds {cached} bytes of log in memory with a 1-byte cache");
    c.restart(follower).await;
    let keys = eventually("the follower to hold every key", STARTUP, || async {
        let keys = local_keys(&c, follower, "cache/").await;
        if keys.len() == 200 {
            Ok(keys)
        } else {
            Err(format!("{} of 200 keys", keys.len()))
        }
    })
    .await;
    assert_eq!(keys.len(), 200);
    let me = c.self_status(follower).await.unwrap();
    assert_eq!(
        me.snapshots_installed, 0,
        "the follower caught up from the log (read from disk), not a snapshot"
    );
}

#[tokio::test]
async fn the_peer_port_refuses_strangers_snapshots_outside_a_snapshot_call_and_snapshots_that_do_not_check() {
    use protobuf::Message as _;
    let c = Cluster::start(3, &[]).await;
    c.leader().await;
    let cluster_id = c.cluster_id();
    let mut client = PeerClient::connect(format!("http://{}", c.member(1).peer_addr)).await.unwrap();

    let stranger = PeerFrame { from: 9, cluster_id, chunk: vec![], last: true };
    let status = client.stream(tokio_stream::iter([stranger])).await.expect_err("member 9 is no peer");
    assert!(status.message().contains("not a peer"), "the error says why: {}", status.message());

    let mut msg = raft::eraftpb::Message::default();
    msg.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
    (msg.from, msg.to) = (2, 1);
    msg.mut_snapshot().data = b"a token of member 2's".to_vec().into();
    let bytes = msg.write_to_bytes().unwrap();
    let snapshot = PeerFrame { from: 2, cluster_id, chunk: bytes, last: true };
    let status = client.stream(tokio_stream::iter([snapshot])).await.expect_err("no stream, no snapshot");
    assert!(status.message().contains("snapshot call"), "the error says why: {}", status.message());

    // A snapshot call whose stream does not check is refused before raft takes it: a snapshot
    // raft took and the state machine cannot restore would stop the member at every start.
    let mut msg = raft::eraftpb::Message::default();
    msg.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
    (msg.from, msg.to, msg.term) = (2, 1, 1);
    msg.mut_snapshot().mut_metadata().index = 1_000;
    msg.mut_snapshot().mut_metadata().term = 1;
    let message = PeerFrame { from: 2, cluster_id, chunk: msg.write_to_bytes().unwrap(), last: true };
    let garbage = PeerFrame { from: 2, cluster_id, chunk: vec![0, 0, 0, 3, 0xff, 0x01, 0x02], last: true };
    let status =
        client.snapshot(tokio_stream::iter([message, garbage])).await.expect_err("a garbled snapshot");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("does not check") && status.message().contains("undecodable"),
        "the error says why: {}",
        status.message()
    );
    c.client().await.put("still", "serving").await.expect("the member serves on");
    let me = c.self_status(1).await.unwrap();
    assert_eq!(me.snapshots_installed, 0, "the garbled snapshot was not installed");
}

/// Says hello on member `addr`'s peer wire as member `from` of cluster `cluster_id`; returns its
/// answer and the connection.
fn wire_hello(addr: &str, cluster_id: u64, from: u64) -> (u8, std::net::TcpStream) {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(addr).expect("the peer port takes connections");
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    socket.write_all(&latch::transport::wire::hello(cluster_id, from)).unwrap();
    let mut answer = [0u8; 9];
    socket.read_exact(&mut answer).expect("an answer to the hello");
    assert_eq!(answer[..8], latch::transport::wire::MAGIC, "the answer starts with the wire's magic");
    (answer[8], socket)
}

/// The reason a member gives before it closes a wire connection.
fn wire_reason(socket: &mut std::net::TcpStream) -> String {
    let reason =
        latch::transport::wire::read_frame(socket, 4096).expect("a reason before the connection closes");
    String::from_utf8(reason).expect("a reason in UTF-8")
}

/// The peer wire checks what the gRPC stream checks (the test above and the next one), and says
/// why it refuses: a stranger, another cluster, a message over --max-peer-message-bytes, one
/// that does not decode, one from another member than the connection's, a snapshot outside its
/// call. The member serves on.
#[tokio::test]
async fn the_peer_wire_refuses_strangers_other_clusters_and_broken_messages_naming_why() {
    use latch::transport::wire::{frame, ACCEPTED, REFUSED};
    use protobuf::Message as _;
    use std::io::Write;
    let c = Cluster::start(3, &["--max-peer-message-bytes", "4194304"]).await;
    c.leader().await;
    let cluster_id = c.cluster_id();
    let addr = c.member(1).peer_addr.clone();
    let raft_message = |from: u64, kind: raft::eraftpb::MessageType| {
        let mut msg = raft::eraftpb::Message::default();
        msg.set_msg_type(kind);
        (msg.from, msg.to) = (from, 1);
        if kind == raft::eraftpb::MessageType::MsgSnapshot {
            msg.mut_snapshot().data = b"a token of member 2's".to_vec().into();
        }
        msg.write_to_bytes().unwrap()
    };
    tokio::task::spawn_blocking(move || {
        let refused = |cluster: u64, from: u64| {
            let (answer, mut socket) = wire_hello(&addr, cluster, from);
            assert_eq!(answer, REFUSED, "the hello of member {from} of cluster {cluster:016x} is refused");
            wire_reason(&mut socket)
        };
        let why = refused(cluster_id, 9);
        assert!(why.contains("not a peer"), "the reason names a stranger: {why}");
        let why = refused(cluster_id ^ 1, 2);
        assert!(why.contains("belongs to cluster"), "the reason names the other cluster: {why}");

        let closed_after = |bytes: &[u8]| {
            let (answer, mut socket) = wire_hello(&addr, cluster_id, 2);
            assert_eq!(answer, ACCEPTED, "member 2 of this cluster is taken");
            socket.write_all(bytes).unwrap();
            wire_reason(&mut socket)
        };
        // A message announced at 5 MiB, over the 4 MiB bound: refused before it is read.
        let why = closed_after(&(5u32 << 20).to_le_bytes());
        assert!(why.contains("--max-peer-message-bytes"), "the reason names the flag: {why}");
        let why = closed_after(&frame(&[0x08]));
        assert!(why.contains("undecodable"), "the reason says it does not decode: {why}");
        let why = closed_after(&frame(&raft_message(3, raft::eraftpb::MessageType::MsgHeartbeat)));
        assert!(why.contains("peer 2's connection"), "the reason names the sender: {why}");
        let why = closed_after(&frame(&raft_message(2, raft::eraftpb::MessageType::MsgSnapshot)));
        assert!(why.contains("snapshot call"), "the reason says where snapshots go: {why}");
    })
    .await
    .expect("the wire checks ran");
    c.client().await.put("still", "serving").await.expect("the member serves on");
}

/// A member serves one wire connection per peer: a peer's newer connection closes its older one
/// (which the peer gave up on), so nothing left in the older one reaches raft after the newer
/// one's messages.
#[tokio::test]
async fn a_peers_newer_wire_connection_closes_its_older_one() {
    use latch::transport::wire::ACCEPTED;
    use std::io::Read;
    let c = Cluster::start(3, &[]).await;
    c.leader().await;
    let cluster_id = c.cluster_id();
    let addr = c.member(1).peer_addr.clone();
    tokio::task::spawn_blocking(move || {
        let (answer, mut older) = wire_hello(&addr, cluster_id, 2);
        assert_eq!(answer, ACCEPTED, "the first connection is taken");
        let (answer, _newer) = wire_hello(&addr, cluster_id, 2);
        assert_eq!(answer, ACCEPTED, "the second connection is taken");
        let mut rest = Vec::new();
        let read = older.read_to_end(&mut rest);
        assert!(
            !matches!(&read, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "the older connection is closed by the member, not left open: {read:?}"
        );
    })
    .await
    .expect("the connections were checked");
    c.client().await.put("still", "serving").await.expect("the member serves on");
}
