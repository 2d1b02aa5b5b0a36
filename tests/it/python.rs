//! The Python client (clients/python) against real members: its own test suite, run by
//! `python3` with grpcio — a gRPC implementation nobody here wrote (DESIGN.md §7, layer 4) — and
//! a watch of its examples that must resume, without a gap or a repeat, on another member when
//! its own is killed. Needs `python3` with clients/python/requirements-dev.txt installed
//! (`.ci/run` installs them).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

use crate::harness::{free_port, Cluster};

/// How long the suite may take on a loaded 2-core machine (it takes about 2 s alone).
const SUITE_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a watch may take to print an event (a resume elsewhere included).
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

fn python_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/python")
}

fn python3() -> Command {
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONDONTWRITEBYTECODE", "1").env("PYTHONUNBUFFERED", "1").kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_clients_suite_passes_through_a_dead_endpoint_and_a_follower() {
    // Answers bounded small, for the suite's paged reads.
    let c = Cluster::start(3, &["--max-response-bytes", "16384"]).await;
    let leader = c.leader().await;
    let followers: Vec<u64> = c.ids().into_iter().filter(|id| *id != leader).collect();
    // A port nobody listens on first, then a follower: calls fail over, writes are forwarded,
    // keepalives follow the leader the follower names.
    let endpoints = [format!("127.0.0.1:{}", free_port()), c.member(followers[0]).client_addr.clone()]
        .into_iter()
        .chain(std::iter::once(c.member(leader).client_addr.clone()))
        .chain(followers[1..].iter().map(|id| c.member(*id).client_addr.clone()))
        .collect::<Vec<_>>()
        .join(",");
    let mut suite = python3();
    suite
        .args(["-m", "unittest", "-v", "test_client"])
        .current_dir(python_dir().join("tests"))
        .env("LATCH_ENDPOINTS", &endpoints)
        // For the suite's check of a saved snapshot file.
        .env("LATCH_BIN", crate::harness::latch_bin());
    let out = tokio::time::timeout(SUITE_TIMEOUT, suite.output())
        .await
        .unwrap_or_else(|_| panic!("the Python suite did not finish within {SUITE_TIMEOUT:?}"))
        .unwrap_or_else(|e| {
            panic!("running python3 (clients/python/requirements-dev.txt; .ci/run installs them): {e}")
        });
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the Python client's suite failed against {endpoints}:\n{report}");
    assert!(
        !report.contains("skipped"),
        "every test of the Python suite must run (LATCH_ENDPOINTS was set):\n{report}"
    );
    assert!(report.contains("\nOK"), "unittest reports OK:\n{report}");
}

/// Puts `key` (its own name as the value); the put's revision.
async fn put(client: &latch_client::Client, key: &str) -> i64 {
    let answer = client.put(key, key).await.unwrap_or_else(|e| panic!("put {key}: {e}"));
    answer.header.expect("a put's answer has a header").revision
}

/// The next line a Python program printed.
async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(EVENT_TIMEOUT, lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("the Python program printed nothing within {EVENT_TIMEOUT:?}"))
        .expect("reading the Python program's output")
        .expect("the Python program ended before its last line")
}

/// The next JSON line the watch printed.
async fn next_event(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line = next_line(lines).await;
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line: {line:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_watch_resumes_on_another_member_when_its_member_is_killed() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let watched = c.ids().into_iter().find(|id| *id != leader).expect("a follower");
    let others: Vec<u64> = c.ids().into_iter().filter(|id| *id != watched).collect();
    let client = c.client_of_many(&others).await;
    let start = put(&client, "w/0").await;

    // The watch's first endpoint is the member that will be killed.
    let endpoints = std::iter::once(watched)
        .chain(others.iter().copied())
        .map(|id| c.member(id).client_addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    let mut watch = python3();
    watch
        .arg(python_dir().join("examples/watch.py"))
        .args(["w/", "--rev", &start.to_string(), "--until-end", "--endpoints", &endpoints])
        .stdout(Stdio::piped());
    let mut watch = watch.spawn().expect("python3 (.ci/run installs the client's requirements)");
    let mut lines = BufReader::new(watch.stdout.take().expect("piped")).lines();

    let mut written = vec![(start, "w/0".to_string())];
    for i in 1..10 {
        let key = format!("w/{i}");
        written.push((put(&client, &key).await, key));
    }
    let mut seen = Vec::new();
    while seen.len() < 10 {
        seen.push(next_event(&mut lines).await);
    }
    c.kill(watched);
    for i in 10..20 {
        let key = format!("w/{i}");
        written.push((put(&client, &key).await, key));
    }
    written.push((put(&client, "w/END").await, "w/END".to_string()));
    while seen.len() < written.len() {
        seen.push(next_event(&mut lines).await);
    }
    let seen: Vec<(i64, String)> = seen
        .iter()
        .map(|e| (e["revision"].as_i64().expect("a revision"), e["key"].as_str().expect("a key").to_string()))
        .collect();
    assert_eq!(seen, written, "every put once, in order, across the kill of the watch's member");
    let status =
        tokio::time::timeout(EVENT_TIMEOUT, watch.wait()).await.expect("the watch exits after w/END");
    assert!(status.expect("waited").success(), "the watch exits 0");
}

/// Keeps a session of `ttl_s` seconds alive over $LATCH_ENDPOINTS; prints its id, then, on each
/// line read, its state; closes it at end of input.
const SESSION_KEEPER: &str = r#"
import os, sys
sys.path.insert(0, os.path.join(os.environ["LATCH_PYTHON_DIR"], "src"))
import latch
with latch.Client() as client, client.session(ttl=float(sys.argv[1])) as session:
    print(session.id, flush=True)
    for _ in sys.stdin:
        print(session.state.value, flush=True)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_python_session_outlives_the_leaders_sigkill_by_twice_its_ttl() {
    const TTL: Duration = Duration::from_secs(2);
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let others: Vec<u64> = c.ids().into_iter().filter(|id| *id != leader).collect();
    // The leader first: the keeper's keepalives go there until it dies.
    let endpoints = std::iter::once(leader)
        .chain(others.iter().copied())
        .map(|id| c.member(id).client_addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    let mut keeper = python3();
    keeper
        .args(["-c", SESSION_KEEPER, &TTL.as_secs_f64().to_string()])
        .env("LATCH_ENDPOINTS", &endpoints)
        .env("LATCH_PYTHON_DIR", python_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut keeper = keeper.spawn().expect("python3 (.ci/run installs the client's requirements)");
    let mut ask = keeper.stdin.take().expect("piped");
    let mut lines = BufReader::new(keeper.stdout.take().expect("piped")).lines();
    let id = next_line(&mut lines).await;

    c.kill(leader);
    let new_leader = c.leader_among(&others).await;
    // What is tested is time passing: twice the TTL after the new leader took over, the session
    // must still be there, kept alive through the member the old leader's failure left.
    tokio::time::sleep(2 * TTL).await;
    let client = c.client_of(new_leader).await;
    let info = client.session_info(&id).await.unwrap_or_else(|e| panic!("session {id} after the kill: {e}"));
    assert_eq!(info.id, id);
    // JEOPARDY may show for a moment while a renewal waits for its commit; SAFE must come back,
    // and EXPIRED must never show.
    let mut states = Vec::new();
    for _ in 0..5 {
        tokio::io::AsyncWriteExt::write_all(&mut ask, b"state?\n").await.expect("asking the keeper");
        states.push(next_line(&mut lines).await);
        if states.last().is_some_and(|s| s == "safe") {
            break;
        }
        tokio::time::sleep(TTL / 4).await;
    }
    assert!(
        states.last().is_some_and(|s| s == "safe") && !states.iter().any(|s| s == "expired"),
        "the keeper's session is SAFE again, its keepalives answered by the new leader: {states:?}"
    );
    drop(ask);
    let status =
        tokio::time::timeout(EVENT_TIMEOUT, keeper.wait()).await.expect("the keeper exits at end of input");
    assert!(status.expect("waited").success(), "the keeper closes its session and exits 0");
}
