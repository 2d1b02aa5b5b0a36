//! Limits and bad input (DESIGN.md §6): each limit has a default and a flag, a request over it
//! is RESOURCE_EXHAUSTED naming the flag, bad input is INVALID_ARGUMENT, and neither writes
//! anything.

use latch_client::{Client, Code, Error, Op, RangeRequest, Txn};

use crate::harness::Cluster;

/// The store revision and number of keys, as a linearizable read sees them.
async fn store_state(client: &Client) -> (i64, i64) {
    let all = RangeRequest { key: vec![0], range_end: vec![0], count_only: true, ..Default::default() };
    let r = client.range(all).await.unwrap();
    (r.header.unwrap().revision, r.count)
}

/// Asserts that `result` failed with `code` and a message containing each of `needles`.
fn assert_rejected<T: std::fmt::Debug>(what: &str, result: Result<T, Error>, code: Code, needles: &[&str]) {
    let e = match result {
        Ok(v) => panic!("{what} should be rejected with {code:?}, but succeeded: {v:?}"),
        Err(e) => e,
    };
    assert_eq!(e.code(), code, "{what}: wrong code; error: {e}");
    for needle in needles {
        assert!(e.to_string().contains(needle), "{what}: the error should mention {needle:?}; got: {e}");
    }
}

#[tokio::test]
async fn an_oversized_key_or_value_is_resource_exhausted_naming_the_flag_and_writes_nothing() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    client.put("seed", "so the store is not empty").await.unwrap();
    let before = store_state(&client).await;

    let key = vec![b'k'; 4097];
    let result = client.put(key, "v").await;
    if let Err(e) = &result {
        let settled = e.status().and_then(|s| s.metadata().get(latch_proto::SETTLED_METADATA));
        assert!(settled.is_none(), "refused before proposing, on the member's own limit: not settled: {e}");
    }
    assert_rejected("a 4097-byte key", result, Code::ResourceExhausted, &["--max-key-bytes", "4096"]);
    let value = vec![b'v'; 1024 * 1024 + 1];
    let result = client.put("big-value", value).await;
    assert_rejected(
        "a 1 MiB + 1 byte value",
        result,
        Code::ResourceExhausted,
        &["--max-value-bytes", "1048576"],
    );

    assert_eq!(client.get("big-value").await.unwrap(), None, "a rejected put must not write its key");
    assert_eq!(
        store_state(&client).await,
        before,
        "rejected puts must leave the store (revision, number of keys) unchanged"
    );

    // The limits are inclusive: exactly 4 KiB of key and 1 MiB of value are fine.
    client.put(vec![b'k'; 4096], "v").await.expect("a 4096-byte key is within the limit");
    client.put("max-value", vec![b'v'; 1024 * 1024]).await.expect("a 1 MiB value is within the limit");
    let kv = client.get("max-value").await.unwrap().expect("the 1 MiB value just written");
    assert_eq!(kv.value.len(), 1024 * 1024);
}

#[tokio::test]
async fn a_txn_of_129_operations_is_resource_exhausted_naming_max_txn_ops() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let before = store_state(&client).await;
    let txn = |n: usize| Txn::new().and_then((0..n).map(|i| Op::put(format!("txn/{i:03}"), "v")));

    let result = client.txn(txn(129)).await;
    assert_rejected("a txn of 129 ops", result, Code::ResourceExhausted, &["--max-txn-ops", "128"]);
    assert_eq!(store_state(&client).await, before, "a rejected txn must write nothing");

    let ok = client.txn(txn(128)).await.expect("a txn of 128 ops is within the limit");
    assert!(ok.succeeded);
    assert_eq!(ok.header.unwrap().revision, before.0 + 1, "a txn is one revision");
    assert_eq!(client.get_prefix("txn/").await.unwrap().len(), 128);
}

#[tokio::test]
async fn a_custom_max_key_bytes_flag_is_honoured() {
    let c = Cluster::start(1, &["--max-key-bytes", "16"]).await;
    c.leader().await;
    let client = c.client().await;
    client.put("k".repeat(16), "v").await.expect("a 16-byte key is within --max-key-bytes 16");
    let before = store_state(&client).await;
    let result = client.put("k".repeat(17), "v").await;
    assert_rejected(
        "a 17-byte key under --max-key-bytes 16",
        result,
        Code::ResourceExhausted,
        &["over the limit of 16", "--max-key-bytes"],
    );
    assert_eq!(store_state(&client).await, before, "the rejected put must write nothing");
}

#[tokio::test]
async fn an_empty_key_is_invalid_argument_naming_the_key() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let before = store_state(&client).await;
    assert_rejected("a put of the empty key", client.put("", "v").await, Code::InvalidArgument, &["key"]);
    assert_rejected("a get of the empty key", client.get("").await, Code::InvalidArgument, &["key"]);
    assert_rejected("a delete of the empty key", client.delete("").await, Code::InvalidArgument, &["key"]);
    assert_rejected(
        "a txn putting the empty key",
        client.txn(Txn::new().and_then([Op::put("", "v")])).await,
        Code::InvalidArgument,
        &["key"],
    );
    assert_eq!(store_state(&client).await, before, "rejected requests must write nothing");
}

/// A branch of a txn writes each key once (etcd's rule), a sequencer compare is EQUAL or
/// NOT_EQUAL, and a range's limit is not negative; each breach is refused naming it, and
/// nothing is written.
#[tokio::test]
async fn a_txn_writing_a_key_twice_or_asking_what_cannot_be_answered_is_refused_and_writes_nothing() {
    use latch_client::{LockOptions, Wait};
    use latch_proto::v1::{compare, request_op, Compare as RawCompare, PutRequest, RequestOp, TxnRequest};
    use std::time::Duration;

    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    client.put("queue/a", "1").await.unwrap();
    let before = store_state(&client).await;
    let sequential = |prefix: &str| {
        Op::from(PutRequest {
            key: prefix.into(),
            value: b"v".to_vec(),
            sequential: true,
            ..Default::default()
        })
    };
    let refused: [(&str, Txn, &[&str]); 6] = [
        (
            "two puts of one key",
            Txn::new().and_then([Op::put("k", "1"), Op::put("k", "2")]),
            &["success", "\"k\"", "twice"],
        ),
        (
            "a delete of a prefix, then a put under it",
            Txn::new().or_else([Op::delete_prefix("queue/"), Op::put("queue/b", "2")]),
            &["failure", "queue/b", "twice"],
        ),
        (
            "a put, then a delete of that key",
            Txn::new().and_then([Op::put("k", "1"), Op::delete("k")]),
            &["twice"],
        ),
        (
            "a sequential put and a delete of its prefix",
            Txn::new().and_then([sequential("queue/"), Op::delete_prefix("queue/")]),
            &["sequential put", "queue/", "delete_range"],
        ),
        (
            "a put of a key a sequential put beside it may write",
            Txn::new().and_then([sequential("queue/"), Op::put("queue/00000000000000000007", "x")]),
            &["queue/00000000000000000007", "sequential put of prefix", "queue/"],
        ),
        (
            "a range with a negative limit",
            Txn::new().and_then([Op::from(RangeRequest {
                key: b"queue/a".to_vec(),
                limit: -1,
                ..Default::default()
            })]),
            &["range.limit", "-1", "negative"],
        ),
    ];
    for (what, txn, needles) in refused {
        assert_rejected(what, client.txn(txn).await, Code::InvalidArgument, needles);
    }
    // What stays allowed: deletes that overlap, and puts beside a delete that selects other keys.
    let allowed = Txn::new().and_then([
        Op::delete_prefix("queue/"),
        Op::delete("queue/a"),
        Op::put("queuf", "x"),
        sequential("jobs/"),
        Op::put("jobs/2024-cfg", "not 20 digits: no key of the sequence"),
    ]);
    client.txn(allowed).await.expect("overlapping deletes and puts outside them are one txn");
    let after_allowed = store_state(&client).await;

    // A sequencer compare with GREATER (the typed client cannot build one: a raw request).
    let session = client.create_session(Duration::from_secs(60), "fenced").await.unwrap().0;
    let held = client
        .acquire(&session, "fence", LockOptions::exclusive().wait(Wait::No))
        .await
        .unwrap()
        .expect("a free lock is granted at once");
    let at = store_state(&client).await;
    let mut raw = c.kv_of_only(1).await;
    let greater = TxnRequest {
        compare: vec![RawCompare {
            result: compare::CompareResult::Greater as i32,
            target: Some(compare::Target::Sequencer(held.token.clone())),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::Put(PutRequest {
                key: b"fenced".to_vec(),
                value: b"w".to_vec(),
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let e = raw.txn(greater).await.expect_err("a GREATER sequencer compare must be refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "a GREATER sequencer compare: {e:?}");
    for needle in ["compare.result", "GREATER", "sequencer"] {
        assert!(e.message().contains(needle), "the error should mention {needle:?}; got: {}", e.message());
    }
    assert_eq!(store_state(&client).await, at, "the refused fenced txn must write nothing");
    assert_eq!(after_allowed.0, before.0 + 1, "the allowed txn is one revision");
}

/// `--max-concurrent-streams 2` (etcd's flag of the same name): one client connection carries
/// two calls at once; a third waits until one of them ends, then goes through.
#[tokio::test]
async fn a_connection_carries_at_most_max_concurrent_streams_calls_at_once() {
    use latch_client::{LockOptions, Wait};
    use std::time::Duration;

    let c = Cluster::start(1, &["--max-concurrent-streams", "2"]).await;
    c.leader().await;
    let client = c.client().await;
    let ttl = Duration::from_secs(60);
    let mut sessions = Vec::new();
    for who in ["holder", "first", "second"] {
        sessions.push(client.create_session(ttl, who).await.unwrap().0);
    }
    client
        .acquire(&sessions[0], "busy", LockOptions::exclusive().wait(Wait::No))
        .await
        .unwrap()
        .expect("a free lock is granted at once");
    // Two acquires that wait as long as the lock is held: two streams of the connection in use.
    let waits: Vec<_> = sessions[1..]
        .iter()
        .map(|s| {
            let (client, s) = (client.clone(), s.clone());
            tokio::spawn(async move { client.acquire(&s, "busy", LockOptions::exclusive()).await })
        })
        .collect();
    // Seen through another connection: this one has no stream to spare.
    let other = c.client().await;
    crate::harness::eventually("both acquires to wait", crate::harness::STARTUP, || async {
        match other.describe_lock("busy").await {
            Ok(Some(info)) if info.waiters.len() == 2 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let third = tokio::spawn({
        let client = client.clone();
        async move { client.get("anything").await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!third.is_finished(), "a third call went through while two streams were in use");
    waits[0].abort();
    let got = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("the third call goes through once a stream is free");
    assert_eq!(got.expect("the task").expect("the get"), None);
}
