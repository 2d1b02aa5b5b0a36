//! `latch bench` against a real member: it runs exactly the operations asked for, reports them
//! as JSON, and leaves its keys behind; bad flags are usage errors. Behaviour only: a benchmark's
//! numbers are never asserted (DESIGN.md §7).

use std::process::Output;
use std::time::Duration;

use latch_client::{prefix_range, RangeRequest};
use serde_json::Value;

use crate::harness::{latch_bin, Cluster};

/// Runs `latch bench ARGS` (with `--target` set to member 1 when a cluster is given) and
/// returns what it printed and its exit code.
async fn bench(c: Option<&Cluster>, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(latch_bin());
    cmd.arg("bench").args(args);
    if let Some(c) = c {
        cmd.args(["--target", &format!("latch://{}", c.member(1).client_addr), "--timeout", "10s"]);
    }
    cmd.env_remove("RUST_LOG").env_remove("LATCH_ENDPOINTS").kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("`latch bench {}` did not finish within 60s", args.join(" ")))
        .unwrap()
}

/// The one JSON document `latch bench … --output json` printed, after checking it exited 0.
fn report(out: &Output, what: &str) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "`{what}` should succeed; stderr: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("`{what}` should print one JSON document ({e}); got: {}", String::from_utf8_lossy(&out.stdout))
    })
}

/// The keys under `bench/` and their values, in key order.
async fn bench_keys(c: &Cluster) -> Vec<(Vec<u8>, Vec<u8>)> {
    let (key, range_end) = prefix_range(b"bench/");
    let response =
        c.client().await.range(RangeRequest { key, range_end, ..Default::default() }).await.unwrap();
    response.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect()
}

#[tokio::test]
async fn bench_put_runs_exactly_the_ops_asked_and_leaves_its_keys() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let args = ["put", "--ops", "200", "--clients", "4", "--keyspace", "1000", "--output", "json"];
    let r = report(&bench(Some(&c), &args).await, "latch bench put");
    assert_eq!(r["workload"], "put");
    assert_eq!(r["system"], "latch");
    assert_eq!((r["clients"].as_u64(), r["connections"].as_u64()), (Some(4), Some(4)));
    assert_eq!(r["ops"], 200, "every one of the 200 puts should succeed: {r}");
    assert_eq!(r["outcomes"]["put"], 200, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "no errors expected: {r}");
    for field in ["elapsed_s", "throughput"] {
        assert!(r[field].as_f64().is_some_and(|x| x > 0.0), "{field} should be a positive number: {r}");
    }
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(r["latency_ms"][p].as_f64().is_some_and(|x| x > 0.0), "latency {p} should be positive: {r}");
    }
    // 200 puts of random keys among 1000: some keys may repeat, none is outside the key space.
    let keys = bench_keys(&c).await;
    assert!(
        !keys.is_empty() && keys.len() <= 200,
        "between 1 and 200 bench keys expected, got {}",
        keys.len()
    );
    for (key, value) in &keys {
        assert_eq!(key.len(), 32, "every key is --key-size bytes: {:?}", String::from_utf8_lossy(key));
        let index: u64 = std::str::from_utf8(&key[6..]).unwrap().parse().unwrap();
        assert!(index < 1000, "key index {index} outside --keyspace 1000");
        assert_eq!(value.len(), 256, "every value is --value-size bytes");
    }
}

#[tokio::test]
async fn bench_get_loads_the_whole_keyspace_then_finds_every_key() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let args = ["get", "--ops", "100", "--clients", "2", "--keyspace", "250", "--output", "json"];
    let r = report(&bench(Some(&c), &args).await, "latch bench get");
    assert_eq!(r["parameters"]["consistency"], "linearizable");
    assert_eq!(r["outcomes"], serde_json::json!({"found": 100}), "every read should find its key: {r}");
    assert_eq!(bench_keys(&c).await.len(), 250, "the whole key space is written before the reads");

    let args =
        ["mixed", "--read-ratio", "1", "--consistency", "serializable", "--ops", "50", "--output", "json"];
    let r = report(&bench(Some(&c), &args).await, "latch bench mixed");
    assert_eq!(r["outcomes"], serde_json::json!({"get": 50}), "--read-ratio 1 reads only: {r}");
}

#[tokio::test]
async fn bench_txn_cas_counts_lost_compares_as_conflicts_not_errors() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    // Eight clients on two keys: compares are lost, and each is a conflict.
    let args = [
        "txn-cas",
        "--ops",
        "200",
        "--clients",
        "8",
        "--keyspace",
        "2",
        "--key-size",
        "8",
        "--output",
        "json",
    ];
    let r = report(&bench(Some(&c), &args).await, "latch bench txn-cas");
    let outcome = |name: &str| r["outcomes"][name].as_u64().unwrap_or(0);
    assert_eq!(outcome("committed") + outcome("conflict"), 200, "{r}");
    assert!(outcome("committed") >= 1, "some read-modify-writes commit: {r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
}

#[tokio::test]
async fn bench_with_bad_flags_exits_2_naming_the_flag() {
    for (args, needle) in [
        (&["put", "--clients", "4", "--connections", "8"][..], "--connections"),
        (&["put", "--ops", "10", "--duration", "1s"][..], "--duration"),
        (&["mixed", "--read-ratio", "1.5"][..], "--read-ratio"),
        (&["put", "--key-size", "8"][..], "--key-size"),
        (&["put", "--target", "consul://127.0.0.1:8500"][..], "--target"),
    ] {
        let out = bench(None, args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "`latch bench {}` is a usage error; stderr: {stderr}",
            args.join(" ")
        );
        assert!(stderr.contains(needle), "stderr should name {needle}; got: {stderr}");
    }
    if !cfg!(feature = "etcd") {
        let out = bench(None, &["put", "--target", "etcd://127.0.0.1:2379"]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
        assert!(stderr.contains("--features etcd"), "should say how to build with etcd; got: {stderr}");
    }
    if !cfg!(feature = "zk") {
        let out = bench(None, &["put", "--target", "zk://127.0.0.1:2181"]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
        assert!(stderr.contains("--features zk"), "should say how to build with zk; got: {stderr}");
    }
}

#[tokio::test]
async fn bench_against_nothing_fails_before_measuring() {
    let port = crate::harness::free_port();
    let target = format!("latch://127.0.0.1:{port}");
    let out = bench(None, &["put", "--ops", "10", "--target", &target, "--timeout", "1s"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "an unreachable target fails the run; stderr: {stderr}");
    assert!(stderr.contains("does not serve"), "stderr should say the target does not serve; got: {stderr}");
    assert!(out.stdout.is_empty(), "no report for a run that never started");
}

#[tokio::test]
async fn bench_watch_latency_delivers_every_put_to_every_watcher_one_stream_each_or_grouped() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    for per_stream in ["1", "10"] {
        let args = [
            "watch-latency",
            "--watchers",
            "20",
            "--watches-per-stream",
            per_stream,
            "--ops",
            "30",
            "--output",
            "json",
        ];
        let what = format!("latch bench watch-latency --watches-per-stream {per_stream}");
        let r = report(&bench(Some(&c), &args).await, &what);
        let p = &r["parameters"];
        assert_eq!(p["watches_per_stream"], per_stream.parse::<u64>().unwrap(), "{what}: {r}");
        assert_eq!(p["puts"], 30, "{what}: every put answered: {r}");
        assert_eq!(p["missed_events"], 0, "{what}: no watcher misses an answered put: {r}");
        assert_eq!(p["duplicate_events"], 0, "{what}: {r}");
        assert_eq!(r["ops"], 20 * 30, "{what}: every watcher timed every put's event: {r}");
        assert_eq!(r["errors"], serde_json::json!({}), "{what}: no errors expected: {r}");
    }
}
