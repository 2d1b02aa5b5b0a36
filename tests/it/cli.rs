//! The `latch` command line against a running member (DESIGN.md §5): output, exit codes
//! (0 success, 1 operation failed), and the JSON shape of `cluster status`.

use std::process::Output;
use std::time::Duration;

use crate::harness::{eventually, latch_bin, Cluster};

/// Runs `latch ARGS --endpoints <member 1>` and returns what it printed and its exit code.
async fn latch(c: &Cluster, args: &[&str]) -> Output {
    let endpoints = ["--endpoints", &c.member(1).client_addr, "--timeout", "10s"];
    latch_exactly(&[args, &endpoints[..]].concat()).await
}

/// Runs `latch ARGS`, with none of `RUST_LOG`, `LATCH_ENDPOINTS` and `LATCH_CLUSTER_ID` set.
async fn latch_exactly(args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(latch_bin());
    cmd.args(args);
    cmd.env_remove("RUST_LOG")
        .env_remove("LATCH_ENDPOINTS")
        .env_remove("LATCH_CLUSTER_ID")
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("`latch {}` did not finish within 30s", args.join(" ")))
        .unwrap()
}

/// `args` as the `&str`s [`latch_exactly`] takes.
fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn cli_kv_put_then_get_round_trips_a_value() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let put = latch(&c, &["kv", "put", "greeting", "hello world"]).await;
    assert_eq!(put.status.code(), Some(0), "`latch kv put` should succeed; stderr: {}", stderr(&put));
    assert_eq!(stdout(&put), "OK\n");
    let get = latch(&c, &["kv", "get", "greeting"]).await;
    assert_eq!(get.status.code(), Some(0), "`latch kv get` should succeed; stderr: {}", stderr(&get));
    assert_eq!(stdout(&get), "hello world\n", "`latch kv get` prints the value alone");
    // The CLI wrote through the same API as the library.
    let kv = c.client().await.get("greeting").await.unwrap().expect("the key the CLI wrote");
    assert_eq!(kv.value, b"hello world");
    let keys = latch(&c, &["kv", "get", "greet", "--prefix", "--keys-only", "--output", "json"]).await;
    let keys: serde_json::Value = serde_json::from_str(stdout(&keys).trim()).unwrap();
    assert_eq!(keys["kvs"][0]["key"], "greeting");
    assert!(
        keys["kvs"][0].get("value").is_none(),
        "keys only: no value field to mistake for an empty value: {keys}"
    );
}

/// `kv put` and `kv del` under `--if-…` conditions write only when every one holds, in one
/// transaction; otherwise nothing is written and the command exits 1 saying which failed. A
/// write fenced by a lock's sequencer is made while the lock is held and refused once it was
/// released.
#[tokio::test]
async fn cli_kv_writes_under_conditions_are_made_only_when_they_hold_and_fenced_by_a_lock() {
    use latch_client::{LockOptions, SessionOptions, Wait};
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let created = latch(&c, &["kv", "put", "cas", "1", "--if-version", "0"]).await;
    assert_eq!(created.status.code(), Some(0), "created, as absent: {}", stderr(&created));
    let again = latch(&c, &["kv", "put", "cas", "2", "--if-version", "0"]).await;
    assert_eq!(again.status.code(), Some(1), "not absent any more");
    assert_eq!(stderr(&again), "not written: --if-version 0: \"cas\"'s version is 1\n");
    let swapped = latch(&c, &["kv", "put", "cas", "3", "--if-version", "1"]).await;
    assert_eq!(swapped.status.code(), Some(0), "at version 1: {}", stderr(&swapped));
    let value =
        |kv: Option<latch_client::KeyValue>| kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
    assert_eq!(
        value(client.get("cas").await.unwrap()).as_deref(),
        Some("3"),
        "the refused put wrote nothing"
    );

    let session = client.session(SessionOptions::new(Duration::from_secs(60))).await.expect("a session");
    let held = client
        .acquire(session.id(), "fence", LockOptions::exclusive().wait(Wait::No))
        .await
        .expect("acquire")
        .expect("a free lock is granted at once");
    let fenced = latch(&c, &["kv", "put", "fenced", "held", "--if-sequencer", &held.token]).await;
    assert_eq!(fenced.status.code(), Some(0), "while the lock is held: {}", stderr(&fenced));
    client.release(&held.token).await.expect("release");
    let stale = latch(&c, &["kv", "put", "fenced", "stale", "--if-sequencer", &held.token]).await;
    assert_eq!(stale.status.code(), Some(1), "the lock was released");
    assert!(
        stderr(&stale).starts_with("not written: --if-sequencer: ")
            && stderr(&stale).contains("does not hold"),
        "the member's reason: {}",
        stderr(&stale)
    );
    let deleted =
        latch(&c, &["kv", "del", "fenced", "--if-sequencer", &held.token, "--output", "json"]).await;
    let doc: serde_json::Value = serde_json::from_str(stdout(&deleted).trim()).unwrap();
    assert_eq!(
        (deleted.status.code(), &doc["written"], &doc["kv"]["value"]),
        (Some(1), &serde_json::json!(false), &serde_json::json!("held"))
    );
    assert_eq!(
        value(client.get("fenced").await.unwrap()).as_deref(),
        Some("held"),
        "a stale holder wrote nothing"
    );

    let prefix = latch(&c, &["kv", "del", "cas", "--prefix", "--if-mod-rev", "3"]).await;
    assert_eq!(
        prefix.status.code(),
        Some(2),
        "a condition on KEY does not fit a prefix: {}",
        stderr(&prefix)
    );
}

#[tokio::test]
async fn cli_kv_get_of_a_missing_key_exits_1_saying_key_not_found() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let get = latch(&c, &["kv", "get", "missing"]).await;
    assert_eq!(
        get.status.code(),
        Some(1),
        "a missing key is a failed lookup (exit 1); stderr: {}",
        stderr(&get)
    );
    assert!(
        stderr(&get).contains("key not found"),
        "stderr should say \"key not found\"; got: {}",
        stderr(&get)
    );
    assert_eq!(stdout(&get), "", "nothing is printed on stdout for a missing key");
}

#[tokio::test]
async fn cli_kv_put_of_an_oversized_key_exits_1_naming_the_limit() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let key = "k".repeat(4097);
    let put = latch(&c, &["kv", "put", &key, "v"]).await;
    let err = stderr(&put);
    assert_eq!(put.status.code(), Some(1), "a put over a limit fails (exit 1); stderr: {err}");
    for needle in ["RESOURCE_EXHAUSTED", "4096", "--max-key-bytes"] {
        assert!(err.contains(needle), "stderr should mention {needle:?}; got: {err}");
    }
}

#[tokio::test]
async fn cli_cluster_status_json_is_one_document_with_leader_term_and_members() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let out = latch(&c, &["cluster", "status", "--output", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "`latch cluster status` should succeed; stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "--output json prints one document on one line; got: {text}");
    let doc: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("stdout should be one JSON document ({e}): {text}"));
    assert_eq!(doc["leader"].as_u64(), Some(1), "leader should be member 1's id: {doc}");
    assert!(doc["term"].as_u64().is_some_and(|t| t >= 1), "term should be a number >= 1: {doc}");
    let members = doc["members"].as_array().unwrap_or_else(|| panic!("members should be an array: {doc}"));
    assert_eq!(members.len(), 1, "one member: {doc}");
    let m = &members[0];
    assert_eq!(m["id"].as_u64(), Some(1), "{doc}");
    assert_eq!(m["peer_addr"].as_str(), Some(c.member(1).peer_addr.as_str()), "{doc}");
    assert_eq!(m["client_addr"].as_str(), Some(c.member(1).client_addr.as_str()), "{doc}");
    assert_eq!(m["role"].as_str(), Some("leader"), "{doc}");
    assert_eq!(
        m["command_version"].as_u64(),
        Some(u64::from(latch::fsm::COMMAND_VERSION)),
        "command_version should be the build's: {doc}"
    );
    assert!(
        m["cluster_version"]
            .as_u64()
            .is_some_and(|v| (10..=u64::from(latch::fsm::COMMAND_VERSION)).contains(&v)),
        "cluster_version should be at most the build's, raised from 10 once every member runs it: {doc}"
    );
    assert!(
        m["applied_index"].as_u64().is_some_and(|i| i >= 1),
        "applied_index should be a number >= 1: {doc}"
    );
}

/// `latch cluster status` names the cluster, and `--cluster-id` pins every command to it: a
/// member refuses a command pinned to another cluster and does nothing, and a malformed id is a
/// usage error naming the flag.
#[tokio::test]
async fn cli_cluster_id_pins_commands_to_the_cluster_status_names() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let member = c.member(1).client_addr.as_str();
    let status = latch(&c, &["cluster", "status", "--output", "json"]).await;
    let doc: serde_json::Value = serde_json::from_str(&stdout(&status))
        .unwrap_or_else(|e| panic!("stdout should be one JSON document ({e}): {}", stdout(&status)));
    let ours = doc["cluster_id"].as_str().unwrap_or_else(|| panic!("cluster_id should be a string: {doc}"));
    let parsed = latch_proto::parse_cluster_id(ours)
        .unwrap_or_else(|| panic!("cluster_id should be 16 hex digits, as --cluster-id takes it: {doc}"));
    let text = latch(&c, &["cluster", "status"]).await;
    assert!(
        stdout(&text).lines().next().is_some_and(|l| l.ends_with(&format!("cluster: {ours}"))),
        "{}",
        stdout(&text)
    );

    let pinned =
        latch_exactly(&["--endpoints", member, "--cluster-id", ours, "kv", "put", "pinned", "ours"]).await;
    assert_eq!(
        pinned.status.code(),
        Some(0),
        "a put pinned to the member's own cluster succeeds; stderr: {}",
        stderr(&pinned)
    );

    let other = latch_proto::format_cluster_id(parsed ^ 1);
    let args = [
        "--endpoints",
        member,
        "--timeout",
        "1s",
        "--cluster-id",
        other.as_str(),
        "kv",
        "put",
        "pinned",
        "theirs",
    ];
    let refused = latch_exactly(&args).await;
    assert_ne!(
        refused.status.code(),
        Some(0),
        "a put pinned to another cluster must fail; stdout: {}",
        stdout(&refused)
    );
    assert!(
        stderr(&refused).contains(&format!("not to cluster {other}")),
        "the error says the member is not of the cluster the command names: {}",
        stderr(&refused)
    );
    let get = latch(&c, &["kv", "get", "pinned"]).await;
    assert_eq!(stdout(&get), "ours\n", "the refused put changed nothing; stderr: {}", stderr(&get));

    let bad = latch_exactly(&["--endpoints", member, "--cluster-id", "0x12", "kv", "get", "pinned"]).await;
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a malformed --cluster-id is a usage error; stderr: {}",
        stderr(&bad)
    );
    assert!(
        stderr(&bad).contains("--cluster-id") && stderr(&bad).contains("16 hex digits"),
        "the error names the flag and what it takes: {}",
        stderr(&bad)
    );
}

#[tokio::test]
async fn cli_client_flags_work_before_the_subcommand_and_the_server_refuses_them() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let member = c.member(1).client_addr.as_str();
    let put = latch_exactly(&["--endpoints", member, "--timeout", "10s", "kv", "put", "early", "bird"]).await;
    assert_eq!(
        put.status.code(),
        Some(0),
        "`latch --endpoints … kv put` should succeed; stderr: {}",
        stderr(&put)
    );
    let get = latch_exactly(&["--endpoints", member, "--output", "json", "kv", "get", "early"]).await;
    assert_eq!(
        get.status.code(),
        Some(0),
        "`latch --endpoints … kv get` should succeed; stderr: {}",
        stderr(&get)
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout(&get)).unwrap_or_else(|e| {
        panic!("--output json before the subcommand should print JSON ({e}): {}", stdout(&get))
    });
    assert_eq!(doc["kvs"][0]["value"].as_str(), Some("bird"), "{doc}");
    let status = latch_exactly(&["--output", "json", "--endpoints", member, "cluster", "status"]).await;
    assert_eq!(
        status.status.code(),
        Some(0),
        "`latch … cluster status` should succeed; stderr: {}",
        stderr(&status)
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout(&status))
        .unwrap_or_else(|e| panic!("cluster status should print JSON ({e}): {}", stdout(&status)));
    assert_eq!(doc["leader"].as_u64(), Some(1), "{doc}");

    // A client flag given to the server, before or after `server`, is a usage error naming it.
    for args in
        [&["--endpoints", member, "server", "--dev"][..], &["server", "--dev", "--output", "json"][..]]
    {
        let refused = latch_exactly(args).await;
        let flag = args.iter().find(|a| ["--endpoints", "--output"].contains(a)).unwrap();
        assert_eq!(
            refused.status.code(),
            Some(2),
            "`latch {}` is a usage error; stderr: {}",
            args.join(" "),
            stderr(&refused)
        );
        assert!(stderr(&refused).contains(flag), "stderr should name {flag}; got: {}", stderr(&refused));
    }
}

#[tokio::test]
async fn cli_sessions_create_bind_list_and_close_in_json() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let created =
        latch(&c, &["session", "create", "--ttl", "30s", "--name", "worker", "--output", "json"]).await;
    assert_eq!(created.status.code(), Some(0), "session create; stderr: {}", stderr(&created));
    let created: serde_json::Value = serde_json::from_str(&stdout(&created)).expect("one JSON document");
    let id = created["id"].as_str().expect("the session id").to_string();
    assert_eq!(created["ttl_ms"], 30_000);

    let put = latch(&c, &["kv", "put", "held", "v", "--session", &id]).await;
    assert_eq!(put.status.code(), Some(0), "kv put --session; stderr: {}", stderr(&put));
    let seq = latch(&c, &["kv", "put", "jobs/", "x", "--sequential"]).await;
    assert_eq!(stdout(&seq), "jobs/00000000000000000000\n", "a sequential put prints the key it created");

    let list = latch(&c, &["session", "list", "--output", "json"]).await;
    let list: serde_json::Value = serde_json::from_str(&stdout(&list)).expect("one JSON document");
    let s = &list["sessions"][0];
    assert_eq!(
        (s["id"].as_str(), s["name"].as_str(), s["keys"].as_i64()),
        (Some(id.as_str()), Some("worker"), Some(1))
    );
    let left = s["remaining_ms"].as_i64().expect("remaining_ms");
    assert!(left > 0 && left <= 30_000, "the lease left is within the TTL: {left}");

    let closed = latch(&c, &["session", "close", &id, "--output", "json"]).await;
    assert_eq!(closed.status.code(), Some(0), "session close; stderr: {}", stderr(&closed));
    let closed: serde_json::Value = serde_json::from_str(&stdout(&closed)).expect("one JSON document");
    assert_eq!(closed["keys_deleted"], 1, "closing deletes the bound key");
    let again = latch(&c, &["session", "close", &id]).await;
    assert_eq!(again.status.code(), Some(1), "closing it again fails");
    assert!(
        stderr(&again).contains("NOT_FOUND") && stderr(&again).contains(&id),
        "names the session: {}",
        stderr(&again)
    );
    let bad = latch(&c, &["session", "create", "--ttl", "2h"]).await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("1s … 1h"), "names the bounds: {}", stderr(&bad));
}

#[tokio::test]
async fn cli_lock_runs_its_command_holding_the_lock_that_describe_then_shows_and_exits_with_its_status() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let addr = c.member(1).client_addr.clone();
    // The command describes its own lock, then exits 7.
    let describe =
        format!("'{}' lock describe jobs/nightly --output json --endpoints {addr}; exit 7", latch_bin());
    // The client flags go before `--`: what follows is the command's.
    let run = latch_exactly(&[
        "--endpoints",
        &addr,
        "lock",
        "jobs/nightly",
        "--ttl",
        "5s",
        "--",
        "sh",
        "-c",
        &describe,
    ])
    .await;
    assert_eq!(
        run.status.code(),
        Some(7),
        "`latch lock` exits with its command's status; stderr: {}",
        stderr(&run)
    );
    let described: serde_json::Value = serde_json::from_str(stdout(&run).trim()).unwrap_or_else(|e| {
        panic!("`lock describe --output json` prints one JSON document ({e}): {}", stdout(&run))
    });
    assert_eq!(described["name"], "jobs/nightly");
    let holders = described["holders"].as_array().expect("a holders list");
    assert_eq!(holders.len(), 1, "the lock is held while its command runs: {described}");
    assert_eq!(holders[0]["mode"], "exclusive");
    assert_eq!(holders[0]["lock_delay_ms"], 5_000, "the default lock-delay");
    // Released with the command's end: free, and a try-once takes it at once.
    let after = latch(&c, &["lock", "describe", "jobs/nightly"]).await;
    assert_eq!(stdout(&after), "jobs/nightly: free\n", "stderr: {}", stderr(&after));
    let once =
        latch_exactly(&["--endpoints", &addr, "lock", "jobs/nightly", "--wait", "0s", "--", "true"]).await;
    assert_eq!(once.status.code(), Some(0), "a free lock is taken by a try-once; stderr: {}", stderr(&once));
    let usage = latch(&c, &["lock", "jobs/nightly"]).await;
    assert_eq!(usage.status.code(), Some(2), "a lock without a command is a usage error: {}", stderr(&usage));

    // `lock check`: a script fences with its sequencer while it holds, and is told once it no
    // longer does.
    // No --endpoints: `latch lock` hands its own to the command (LATCH_ENDPOINTS).
    let check =
        format!("'{}' lock check \"$LATCH_LOCK_SEQUENCER\" && echo \"$LATCH_LOCK_SEQUENCER\"", latch_bin());
    let held = latch_exactly(&["--endpoints", &addr, "lock", "jobs/nightly", "--", "sh", "-c", &check]).await;
    assert_eq!(held.status.code(), Some(0), "valid while held; stderr: {}", stderr(&held));
    let (said, sequencer) =
        stdout(&held).trim().split_once('\n').map(|(a, b)| (a.to_string(), b.to_string())).unwrap();
    assert!(said.starts_with("valid: holds \"jobs/nightly\""), "{said}");
    let after = latch(&c, &["lock", "check", &sequencer]).await;
    assert_eq!(after.status.code(), Some(1), "invalid once released: {}", stdout(&after));
    assert!(stdout(&after).starts_with("invalid: "), "says why: {}", stdout(&after));
    // Whether or not anyone reads why: a closed output does not turn "invalid" into success.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let unread = tokio::process::Command::new(latch_bin())
        .args(["lock", "check", &sequencer, "--endpoints", &addr])
        .env_remove("RUST_LOG")
        .stdout(writer)
        .status()
        .await
        .unwrap();
    assert_eq!(unread.code(), Some(1), "invalid, with nobody reading stdout");
    let garbage = latch(&c, &["lock", "check", "latch1:nope"]).await;
    assert_eq!(garbage.status.code(), Some(2), "not a sequencer: a usage error: {}", stderr(&garbage));
    assert!(stderr(&garbage).contains("cluster id is not 16 hex digits"), "{}", stderr(&garbage));
}

#[tokio::test]
async fn cli_watch_prints_each_change_reads_the_past_and_refuses_a_compacted_start() {
    use tokio::io::AsyncBufReadExt;
    let c = Cluster::start(1, &[]).await;
    for args in [["kv", "put", "p/a", "1"], ["kv", "put", "p/b", "2"], ["kv", "put", "p/a", "3"]] {
        assert!(latch(&c, &args).await.status.success());
    }
    assert!(latch(&c, &["kv", "del", "p/b"]).await.status.success());
    let then = latch(&c, &["kv", "get", "p/a", "--rev", "1"]).await;
    assert_eq!(stdout(&then), "1\n", "p/a as it was at revision 1: {}", stderr(&then));

    // From revision 1: the history, one line per event, then whatever comes next.
    let mut watch = tokio::process::Command::new(latch_bin());
    watch.args(["watch", "p/", "--prefix", "--rev", "1", "--endpoints", &c.member(1).client_addr]);
    let mut watch = watch.stdout(std::process::Stdio::piped()).kill_on_drop(true).spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for i in 0..5 {
        if i == 4 {
            assert!(latch(&c, &["kv", "put", "p/c", "new value"]).await.status.success());
        }
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
        seen.push(line.expect("a line within 10 s").unwrap().expect("a line"));
    }
    assert_eq!(seen, ["PUT 1 p/a 1", "PUT 2 p/b 2", "PUT 3 p/a 3", "DELETE 4 p/b ", "PUT 5 p/c new value"]);
    watch.kill().await.unwrap();

    let compacted = latch(&c, &["kv", "compact", "3"]).await;
    assert_eq!(stdout(&compacted), "compacted up to revision 3\n", "{}", stderr(&compacted));
    let refused = latch(&c, &["watch", "p/", "--prefix", "--rev", "2"]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("OUT_OF_RANGE: revision 2 is compacted"),
        "a compacted start is refused naming it: {}",
        stderr(&refused)
    );
}

#[tokio::test]
async fn cli_svc_register_list_json_and_deregister_and_bad_input_named() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let args = ["svc", "register", "web", "--id", "web-1", "--address", "10.0.0.1", "--port", "8080"];
    let registered = latch(&c, &[&args[..], &["--tag", "v1", "--meta", "zone=a"]].concat()).await;
    assert_eq!(registered.status.code(), Some(0), "svc register; stderr: {}", stderr(&registered));
    assert_eq!(stdout(&registered), "registered web/web-1 at 10.0.0.1:8080 (passing)\n");

    let list = latch(&c, &["svc", "list", "web"]).await;
    assert_eq!(list.status.code(), Some(0), "svc list; stderr: {}", stderr(&list));
    assert_eq!(
        stdout(&list),
        "web web-1 10.0.0.1:8080 passing v1\n",
        "one line: service id address:port health tags"
    );
    let json = latch(&c, &["svc", "list", "web", "--output", "json"]).await;
    let text = stdout(&json);
    assert_eq!(text.lines().count(), 1, "one JSON document on one line: {text}");
    let doc: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("svc list --output json prints JSON ({e}): {text}"));
    let i = &doc["instances"][0];
    assert_eq!(
        (i["service"].as_str(), i["id"].as_str(), i["port"].as_u64(), i["health"].as_str()),
        (Some("web"), Some("web-1"), Some(8080), Some("passing")),
        "{doc}"
    );
    assert_eq!(
        (i["meta"]["zone"].as_str(), i["check"]["kind"].as_str()),
        (Some("a"), Some("session")),
        "{doc}"
    );
    assert!(doc["revision"].as_i64().is_some_and(|r| r >= 1), "{doc}");
    let services = latch(&c, &["svc", "services"]).await;
    assert_eq!(stdout(&services), "web instances=1 passing=1 tags=v1\n", "stderr: {}", stderr(&services));

    let gone = latch(&c, &["svc", "deregister", "web", "web-1"]).await;
    assert_eq!(gone.status.code(), Some(0), "svc deregister; stderr: {}", stderr(&gone));
    assert_eq!(stdout(&gone), "deregistered web/web-1\n");
    let list = latch(&c, &["svc", "list", "web", "--all"]).await;
    assert_eq!(stdout(&list), "", "nothing left; stderr: {}", stderr(&list));
    let again = latch(&c, &["svc", "deregister", "web", "web-1"]).await;
    assert_eq!(again.status.code(), Some(1), "deregistering a missing instance fails");
    assert!(stderr(&again).contains("NOT_FOUND"), "stderr: {}", stderr(&again));

    let bad =
        latch(&c, &["svc", "register", "Web", "--id", "x", "--address", "10.0.0.1", "--port", "80"]).await;
    assert_eq!(bad.status.code(), Some(1), "the server refuses a bad service name; stderr: {}", stderr(&bad));
    assert!(
        stderr(&bad).contains("INVALID_ARGUMENT") && stderr(&bad).contains("service"),
        "stderr should name the service field: {}",
        stderr(&bad)
    );
    let usage = latch(&c, &[&args[..], &["--meta", "novalue"]].concat()).await;
    assert_eq!(usage.status.code(), Some(2), "a malformed --meta is a usage error: {}", stderr(&usage));
    assert!(stderr(&usage).contains("KEY=VALUE"), "stderr: {}", stderr(&usage));
    let probe = ["--http", "http://127.0.0.1:1/", "--check-timeout", "0s"];
    let zero = latch(&c, &[&args[..], &probe[..]].concat()).await;
    assert_eq!(
        zero.status.code(),
        Some(2),
        "a probe that may take no time is a usage error: {}",
        stderr(&zero)
    );
    assert!(stderr(&zero).contains("--check-timeout must be more than 0"), "stderr: {}", stderr(&zero));
    let list = latch(&c, &["svc", "list", "--all"]).await;
    assert_eq!(stdout(&list), "", "nothing was registered by the refused commands");
}

/// Runs a staying `latch svc register web --id ID … EXTRA` (TTL check of 2 s), checks that it
/// keeps the instance passing for two TTLs, sends it `signal`, and checks that it deregistered
/// and exited 0. Answers the instance as it was listed while the command ran.
async fn svc_register_stays_until(
    c: &Cluster,
    id: &str,
    extra: &[&str],
    signal: rustix::process::Signal,
) -> latch_client::InstanceInfo {
    use latch_client::{Health, ListOptions};
    use tokio::io::AsyncBufReadExt;
    let client = c.client().await;
    let mut cmd = tokio::process::Command::new(latch_bin());
    cmd.args(["svc", "register", "web", "--id", id, "--address", "10.0.0.2", "--port", "80"])
        .args(["--check-ttl", "2s", "--endpoints", &c.member(1).client_addr])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("a line once registered, within 20 s")
        .unwrap()
        .expect("a line");
    let printed = format!("registered web/{id} at 10.0.0.2:80 (passing");
    assert!(line.starts_with(&printed), "expected {printed:?}…, got: {line}");
    let find = || async {
        let list = client.list(ListOptions::service("web").include_critical()).await.unwrap();
        list.instances.into_iter().find(|i| i.instance.as_ref().is_some_and(|i| i.id == id))
    };
    let info = find().await.expect("registered");
    // Two TTLs of its check: the command heartbeats it, so it stays passing.
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        let info = find().await.expect("still registered");
        assert_eq!(info.health, Health::Passing as i32, "heartbeated every third of its TTL: {info:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = signal_and_wait(&mut child, signal).await;
    assert_eq!(status.code(), Some(0), "{signal:?} deregisters and exits 0");
    assert!(find().await.is_none(), "deregistered on {signal:?}");
    info
}

#[tokio::test]
async fn cli_svc_register_that_stays_heartbeats_until_sigterm_or_sigint_then_deregisters() {
    use rustix::process::Signal;
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    // --ttl: bound to a session that the command keeps alive, and closes on SIGTERM.
    let bound = svc_register_stays_until(&c, "web-2", &["--ttl", "5s"], Signal::TERM).await;
    assert!(!bound.session.is_empty(), "bound to a session: {bound:?}");
    let err = c.client().await.session_info(&bound.session).await.expect_err("its session is closed");
    assert_eq!(err.code(), latch_client::Code::NotFound);
    // --heartbeat: no session, heartbeats only; SIGINT stops it too.
    let alone = svc_register_stays_until(&c, "web-3", &["--heartbeat"], Signal::INT).await;
    assert_eq!(alone.session, "", "no session: {alone:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_dns_records_prints_the_zone_as_the_port_answers_it_and_names_bad_static_records() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let args =
        ["svc", "register", "web", "--id", "web-1", "--address", "10.0.0.1", "--port", "8080", "--tag", "v1"];
    assert_eq!(latch(&c, &args).await.status.code(), Some(0));
    let put = latch(&c, &["kv", "put", "/dns/www", r#"{"type":"A","address":"10.7.7.7"}"#]).await;
    assert_eq!(put.status.code(), Some(0), "stderr: {}", stderr(&put));
    let bad = latch(&c, &["kv", "put", "/dns/bad", "not json"]).await;
    assert_eq!(bad.status.code(), Some(0));
    let dns = c.member(1).dns_addr.clone();
    let out = eventually("latch dns records lists the zone", Duration::from_secs(15), || {
        let c = &c;
        let dns = dns.clone();
        async move {
            let out = latch(c, &["dns", "records", "--dns-addr", &dns]).await;
            if out.status.code() == Some(0) {
                Ok(out)
            } else {
                Err(stderr(&out))
            }
        }
    })
    .await;
    let text = stdout(&out);
    for line in [
        "web.service.latch. 5 IN A 10.0.0.1",
        "_web._tcp.service.latch. 5 IN SRV 1 1 8080 web-1.web.instance.latch.",
        "v1.web.service.latch. 5 IN A 10.0.0.1",
        "web-1.web.instance.latch. 5 IN A 10.0.0.1",
        "1.node.latch. 5 IN A 127.0.0.1",
        "www.latch. 5 IN A 10.7.7.7",
    ] {
        assert!(text.lines().any(|l| l == line), "the zone has {line:?}: {text}");
    }
    assert!(text.starts_with("latch. 5 IN SOA "), "the SOA first: {text}");
    assert!(!text.contains("bad.latch."), "a static record that does not parse is left out: {text}");
    assert!(stderr(&out).contains("/dns/bad"), "and named on stderr: {}", stderr(&out));
    let json = latch(&c, &["dns", "records", "--dns-addr", &dns, "--output", "json"]).await;
    let doc: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("one JSON document");
    assert!(doc["records"].as_array().is_some_and(|r| r.len() == text.lines().count()), "{doc}");
    // Without --dns-addr: where the member of --endpoints says its DNS port listens.
    let asked = latch(&c, &["dns", "records"]).await;
    assert_eq!(asked.status.code(), Some(0), "stderr: {}", stderr(&asked));
    assert_eq!(stdout(&asked), text, "the zone from the DNS port the member names, not the default one");
    let status = latch(&c, &["cluster", "status", "--output", "json"]).await;
    let status: serde_json::Value = serde_json::from_str(&stdout(&status)).expect("one JSON document");
    assert_eq!(status["members"][0]["dns_addr"], dns, "the status names the member's DNS port: {status}");
    let wrong = latch(&c, &["dns", "records", "--dns-addr", &dns, "--domain", "other."]).await;
    assert_eq!(wrong.status.code(), Some(1), "another domain is refused");
    assert!(stderr(&wrong).contains("Refused"), "{}", stderr(&wrong));
}

#[tokio::test]
async fn cli_lock_refuses_bad_input_before_making_a_session_and_exits_126_or_127_for_a_command_it_cannot_run()
{
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    // The client flags go before `--`: what follows is the command's.
    let addr = c.member(1).client_addr.clone();
    let lock = |rest: &[&str]| -> Vec<String> {
        ["--endpoints", &addr, "lock", "jobs/a"].iter().chain(rest).map(|a| a.to_string()).collect()
    };
    let delay = latch_exactly(&strs(&lock(&["--lock-delay", "61s", "--", "true"]))).await;
    assert_eq!(delay.status.code(), Some(2), "a usage error: {}", stderr(&delay));
    assert!(stderr(&delay).contains("--lock-delay: at most 1m"), "names the flag: {}", stderr(&delay));
    // A negative duration is the duration's error, not clap's tip to put it after `--` (CMD's).
    let negative = latch_exactly(&strs(&lock(&["--ttl", "-5s", "--", "true"]))).await;
    assert_eq!(negative.status.code(), Some(2), "a usage error: {}", stderr(&negative));
    assert!(
        stderr(&negative).contains("'--ttl <TTL>': a duration cannot be negative"),
        "names the flag and the problem: {}",
        stderr(&negative)
    );
    // A duration left out takes the next argument: said so, naming the flag (review-s56 #10: "--"
    // was taken for the grace, and the error was about CMD's `true`).
    let missing = latch_exactly(&strs(&lock(&["--grace", "--", "true"]))).await;
    assert_eq!(missing.status.code(), Some(2), "a usage error: {}", stderr(&missing));
    assert!(
        stderr(&missing)
            .contains("a value is required for '--grace <GRACE>' but none was supplied ('--' follows it)"),
        "names the flag and the missing value: {}",
        stderr(&missing)
    );
    let empty = latch_exactly(&["--endpoints", &addr, "lock", "", "--", "true"]).await;
    assert_eq!(empty.status.code(), Some(2), "a usage error: {}", stderr(&empty));
    assert!(stderr(&empty).contains("NAME must not be empty"), "{}", stderr(&empty));
    let long = "n".repeat(1025);
    let over = latch_exactly(&["--endpoints", &addr, "lock", &long, "--", "true"]).await;
    assert_eq!(over.status.code(), Some(2), "a usage error: {}", stderr(&over));
    assert!(stderr(&over).contains("NAME is 1025 bytes, at most 1024 allowed"), "{}", stderr(&over));
    let described = latch_exactly(&["--endpoints", &addr, "lock", "describe", ""]).await;
    assert_eq!(described.status.code(), Some(2), "describe too: {}", stderr(&described));
    let ttl = latch_exactly(&strs(&lock(&["--ttl", "0s", "--", "true"]))).await;
    assert_eq!(ttl.status.code(), Some(2), "a TTL the members refuse is a usage error: {}", stderr(&ttl));
    assert!(stderr(&ttl).contains("--ttl 0s: 0 ms is outside the allowed 1s … 1h"), "{}", stderr(&ttl));
    assert_eq!(client.sessions().await.unwrap(), [], "refused before any session was made");
    // A name of the longest a lock takes: its session's name ("latch lock NAME") is cut to the
    // longest a session takes, four times shorter.
    let longest = "n".repeat(1024);
    let held = latch_exactly(&["--endpoints", &addr, "lock", &longest, "--", "true"]).await;
    assert_eq!(held.status.code(), Some(0), "a 1,024-byte name is held: {}", stderr(&held));
    // A name with a newline is shown quoted and escaped: it cannot make a line of its own.
    let forged = "evil\n  held by nobody";
    let (owner, _) = client.create_session(Duration::from_secs(30), "owner").await.unwrap();
    client.acquire(&owner, forged, latch_client::LockOptions::exclusive()).await.unwrap();
    let shown = latch_exactly(&["--endpoints", &addr, "lock", "describe", forged]).await;
    let text = stdout(&shown);
    assert_eq!(text.lines().next(), Some(r#""evil\n  held by nobody""#), "{text}");
    assert_eq!(text.lines().count(), 2, "the name and its one holder: {text}");
    client.close_session(&owner).await.unwrap();

    let missing = latch_exactly(&strs(&lock(&["--", "no-such-command-here"]))).await;
    assert_eq!(missing.status.code(), Some(127), "not found, as `env` says: {}", stderr(&missing));
    assert!(stderr(&missing).contains("cannot run \"no-such-command-here\""), "{}", stderr(&missing));
    let dir = tempfile::tempdir().unwrap();
    let not_executable = dir.path().join("script");
    std::fs::write(&not_executable, "#!/bin/sh\ntrue\n").unwrap();
    let denied = latch_exactly(&strs(&lock(&["--", not_executable.to_str().unwrap()]))).await;
    assert_eq!(denied.status.code(), Some(126), "found but not runnable: {}", stderr(&denied));
    assert_eq!(
        client.describe_lock("jobs/a").await.unwrap(),
        None,
        "released when the command could not run"
    );
    assert_eq!(client.sessions().await.unwrap(), [], "and its session closed");

    let free = latch(&c, &["lock", "describe", "jobs/a", "--output", "json"]).await;
    let free: serde_json::Value = serde_json::from_str(stdout(&free).trim()).unwrap();
    assert_eq!(
        free,
        serde_json::json!({"name": "jobs/a", "holders": [], "waiters": [], "delayed": false,
                           "delay_since_revision": 0, "delay_ms": 0}),
        "a free lock has the fields of a held one"
    );
}

/// Whether process `pid` is gone (or a zombie nobody reaped: it runs no more).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// `latch lock` SIGKILLed while its command runs: the command, and what the command started (a
/// shell's child, which the kernel's signal for the dead parent alone would leave running on a
/// lock nobody keeps), die with it.
#[tokio::test]
async fn cli_lock_a_command_and_what_it_started_die_with_latch_lock_when_latch_lock_is_sigkilled() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let dir = tempfile::tempdir().unwrap();
    let (pid_file, child_file) = (dir.path().join("pid"), dir.path().join("child"));
    let script =
        format!("sleep 300 & echo $! > '{}'; echo $$ > '{}'; wait", child_file.display(), pid_file.display());
    let mut lock = tokio::process::Command::new(latch_bin())
        .args(["lock", "jobs/b", "--endpoints", &c.member(1).client_addr, "--", "sh", "-c", &script])
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let read_pid = |file: std::path::PathBuf| async move {
        let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
        text.trim().parse::<i32>().map_err(|e| format!("{text:?}: {e}"))
    };
    let cmd = eventually("the command to start holding the lock", Duration::from_secs(20), || {
        read_pid(pid_file.clone())
    })
    .await;
    let started =
        eventually("the command's child to start", Duration::from_secs(5), || read_pid(child_file.clone()))
            .await;
    assert!(!gone(cmd) && !gone(started), "the command and its child run while `latch lock` does");
    lock.start_kill().unwrap();
    lock.wait().await.unwrap();
    for (pid, what) in [(cmd, "the command"), (started, "the command's child")] {
        eventually(&format!("{what} to die with `latch lock`"), Duration::from_secs(5), || async {
            if gone(pid) {
                Ok(())
            } else {
                Err(format!("{what} (process {pid}) still runs; nothing keeps its session alive"))
            }
        })
        .await;
    }
}

/// `latch lock-exec`, CMD's parent, killed by a stray signal (a `pkill -f` that matched its
/// command line, say): `latch lock` kills CMD's group before it hands the lock on, rather than
/// release the lock while CMD runs on.
#[tokio::test]
async fn cli_lock_kills_its_command_when_the_process_between_them_dies() {
    use rustix::process::{kill_process, Pid, Signal};
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let dir = tempfile::tempdir().unwrap();
    let (lock, cmd, _) = lock_running(&c, "jobs/f", dir.path()).await;
    let stat = std::fs::read_to_string(format!("/proc/{cmd}/stat")).unwrap();
    let between: i32 = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_ne!(between, lock.id().unwrap() as i32, "CMD runs under latch lock-exec, not latch lock itself");
    kill_process(Pid::from_raw(between).unwrap(), Signal::USR1).unwrap();
    let (code, err) = ends(lock, "the SIGUSR1 of latch lock-exec").await;
    assert_eq!(code, Some(128 + 10), "128 + the signal that ended latch lock-exec: {err}");
    eventually("CMD to be killed with its hold", Duration::from_secs(5), || async {
        if gone(cmd) {
            Ok(())
        } else {
            Err(format!("CMD (process {cmd}) runs on after latch lock handed the lock on"))
        }
    })
    .await;
}

/// Starts `latch --endpoints <member 1> ARGS`, its stdout and stderr piped, killed when dropped.
fn spawn_latch(c: &Cluster, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(latch_bin())
        .args(["--endpoints", &c.member(1).client_addr])
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Starts `latch lock NAME -- sh -c …` on member 1, its output piped; its command writes its pid
/// and its sequencer into `dir` and sleeps. Returns the child, the command's pid and sequencer.
async fn lock_running(
    c: &Cluster,
    name: &str,
    dir: &std::path::Path,
) -> (tokio::process::Child, i32, String) {
    let file = name.replace('/', "-");
    let (pid_file, seq_file) = (dir.join(format!("{file}.pid")), dir.join(format!("{file}.seq")));
    let script = format!(
        "echo \"$LATCH_LOCK_SEQUENCER\" > '{}'; echo $$ > '{}'; exec sleep 300",
        seq_file.display(),
        pid_file.display()
    );
    let lock = spawn_latch(c, &["lock", name, "--", "sh", "-c", &script]);
    let (pid, seq) = eventually("the command to start holding the lock", Duration::from_secs(20), || async {
        let text = std::fs::read_to_string(&pid_file).map_err(|e| e.to_string())?;
        let pid = text.trim().parse::<i32>().map_err(|e| format!("{text:?}: {e}"))?;
        Ok::<_, String>((
            pid,
            std::fs::read_to_string(&seq_file).map_err(|e| e.to_string())?.trim().to_string(),
        ))
    })
    .await;
    (lock, pid, seq)
}

/// Waits (at most 10 s) for `latch lock` to exit; its status and stderr.
async fn ends(lock: tokio::process::Child, what: &str) -> (Option<i32>, String) {
    let out = tokio::time::timeout(Duration::from_secs(10), lock.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`latch lock` to end within 10 s of {what}"))
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A hold ended by someone else — released through its sequencer, or its session closed —
/// kills the command at once (the next waiter may hold the lock already: there is no lock-delay
/// after a normal release), status 3; and a signal passed on to a stopped command is followed
/// by SIGCONT, so that it takes effect and the lock is released. Before, the command ran on to
/// its end after a release through the sequencer and `latch lock` exited 0; ran on until the
/// next keepalive, and `--grace` more, after a close; and a stopped command kept the lock until
/// someone resumed it.
#[tokio::test]
async fn cli_lock_kills_its_command_when_someone_else_ends_its_hold_and_a_stopped_one_is_resumed_to_hear_a_signal(
) {
    use rustix::process::{kill_process, Pid, Signal};
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let dir = tempfile::tempdir().unwrap();

    let (lock, cmd, seq) = lock_running(&c, "jobs/released", dir.path()).await;
    client.release(&seq).await.expect("a holder of the sequencer releases the lock");
    let (code, said) = ends(lock, "the release").await;
    assert_eq!(code, Some(3), "the hold was lost: {said}");
    assert!(said.contains("was released by someone else"), "says why: {said}");
    assert!(gone(cmd), "the command was killed");
    assert_eq!(client.sessions().await.unwrap(), [], "and its session closed");

    let (lock, cmd, _) = lock_running(&c, "jobs/closed", dir.path()).await;
    let sessions = client.sessions().await.unwrap();
    assert_eq!(sessions.len(), 1, "latch lock's session alone: {sessions:?}");
    client.close_session(&sessions[0].id).await.unwrap();
    let (code, said) = ends(lock, "its session's close").await;
    assert_eq!(code, Some(3), "the hold was lost: {said}");
    assert!(gone(cmd), "the command was killed");

    let (lock, cmd, _) = lock_running(&c, "jobs/stopped", dir.path()).await;
    let addr = c.member(1).client_addr.clone();
    let busy =
        latch_exactly(&["--endpoints", &addr, "lock", "jobs/stopped", "--wait", "0s", "--", "true"]).await;
    assert_eq!(busy.status.code(), Some(1), "not acquired: {}", stderr(&busy));
    assert!(
        stderr(&busy).contains("was not acquired in time (held by session "),
        "says by whom: {}",
        stderr(&busy)
    );
    // One that waits says so after a second (its notice is asked within the next second, well
    // before the wait's 5 s end), naming the holder and the waiters (itself among them).
    let waited =
        latch_exactly(&["--endpoints", &addr, "lock", "jobs/stopped", "--wait", "5s", "--", "true"]).await;
    assert_eq!(waited.status.code(), Some(1), "not acquired: {}", stderr(&waited));
    let said = stderr(&waited);
    let waiting = said.lines().next().unwrap_or_default();
    // (Itself among the waiters once its wait is queued, which a loaded machine may not have
    // done a second in.)
    assert!(
        waiting.starts_with("latch lock: waiting for \"jobs/stopped\" (held by session ")
            && waiting.ends_with(')'),
        "the wait is told before its end: {said}"
    );
    // A waiter whose session someone closes ends "not acquired", saying so.
    let waiter = spawn_latch(&c, &["lock", "jobs/stopped", "--", "true"]);
    let queued = eventually("the waiter to queue", Duration::from_secs(20), || async {
        match client.describe_lock("jobs/stopped").await {
            Ok(Some(lock)) if lock.waiters.len() == 1 => Ok(lock.waiters[0].session_id.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    client.close_session(&queued).await.unwrap();
    let (code, said) = ends(waiter, "its session's close while it waited").await;
    assert_eq!(code, Some(1), "not acquired: {said}");
    assert!(said.contains("ended before the lock was granted"), "says why: {said}");
    let pid = |p: i32| Pid::from_raw(p).unwrap();
    kill_process(pid(cmd), Signal::STOP).unwrap();
    kill_process(pid(lock.id().unwrap() as i32), Signal::TERM).unwrap();
    let (code, said) = ends(lock, "SIGTERM with its command stopped").await;
    assert_eq!(code, Some(128 + 15), "the command died of the SIGTERM passed on: {said}");
    assert_eq!(client.describe_lock("jobs/stopped").await.unwrap(), None, "and the lock was released");
}

/// A leader resigned by someone else (through its sequencer) says it leads no longer and exits
/// 3, as when its session is lost: before, it went on as if leading beside the next leader, and
/// its SIGINT then failed (exit 1) with its session left open.
#[tokio::test]
async fn cli_elect_a_leader_resigned_by_someone_else_says_so_and_exits_3() {
    use tokio::io::AsyncBufReadExt;
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let mut elect = spawn_latch(&c, &["elect", "svc/primary", "alpha"]);
    let mut lines = tokio::io::BufReader::new(elect.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.unwrap().unwrap();
    assert!(first.is_some_and(|l| l.starts_with("leader of svc/primary: alpha")), "alpha leads");
    // A second candidate says, after a second, that it campaigns, and who leads.
    let mut beta = spawn_latch(&c, &["elect", "svc/primary", "beta"]);
    let mut said = tokio::io::BufReader::new(beta.stderr.take().unwrap()).lines();
    let campaigning = tokio::time::timeout(Duration::from_secs(20), said.next_line()).await.unwrap().unwrap();
    assert!(
        campaigning.as_deref().is_some_and(|l| l.starts_with("latch elect: campaigning in \"svc/primary\" (led by \"alpha\"; ")),
        "the campaign is told while it waits, and who leads: {campaigning:?}"
    );
    let withdrawn = signal_and_wait(&mut beta, rustix::process::Signal::TERM).await;
    assert_eq!(withdrawn.code(), Some(128 + 15), "a campaign interrupted withdraws, closing its session");
    let election = client.election("svc/primary");
    let leadership = election.leader().await.unwrap().expect("alpha leads");
    election.resign(&leadership).await.expect("a holder of the sequencer resigns it");
    let out = tokio::time::timeout(Duration::from_secs(10), elect.wait_with_output())
        .await
        .expect("`latch elect` to end within 10 s of its resignation")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "no longer the leader: {stderr}");
    assert!(stderr.contains("resigned by someone else"), "says why: {stderr}");
    assert!(stderr.contains("no longer the leader of \"svc/primary\""), "{stderr}");
    assert_eq!(client.sessions().await.unwrap(), [], "its session closed");
}

/// Starts `latch --endpoints <member 1> ARGS` ([`spawn_latch`]); sends it `signal` once its
/// first line is printed, and returns that line and its exit code.
async fn signalled_after_first_line(
    c: &Cluster,
    args: &[&str],
    signal: rustix::process::Signal,
) -> (String, i32) {
    use tokio::io::AsyncBufReadExt;
    let mut child = spawn_latch(c, args);
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("`latch {}` printed a line within 20 s", args.join(" ")))
        .unwrap()
        .expect("a line");
    let status = signal_and_wait(&mut child, signal).await;
    (line, status.code().expect("exited, not killed"))
}

/// Sends `child` `signal` and waits (at most 20 s) for it to exit.
async fn signal_and_wait(
    child: &mut tokio::process::Child,
    signal: rustix::process::Signal,
) -> std::process::ExitStatus {
    let pid = rustix::process::Pid::from_raw(child.id().expect("running") as i32).expect("a pid");
    rustix::process::kill_process(pid, signal).unwrap();
    tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits within 20 s of the signal")
        .unwrap()
}

#[tokio::test]
async fn cli_elect_describe_and_list_show_the_leader_and_the_candidates_in_order() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let ttl = Duration::from_secs(60);
    let x = client.session(latch_client::SessionOptions::new(ttl)).await.unwrap();
    let y = client.session(latch_client::SessionOptions::new(ttl)).await.unwrap();
    let election = client.election("db");
    let lx = election.campaign(x.id(), "10.0.0.1").await.unwrap();
    let generation = lx.sequencer.as_ref().map_or(0, |s| s.generation);
    let _y_campaigns = {
        let (election, id) = (election.clone(), y.id().to_string());
        tokio::spawn(async move { election.campaign(&id, "10.0.0.2").await })
    };
    let info = eventually("y to campaign", Duration::from_secs(20), || async {
        match election.describe().await {
            Ok(Some(info)) if info.candidates.len() == 1 => Ok(info),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (elected, queued) = (info.elected_revision, info.candidates[0].queued_revision);

    let text = latch(&c, &["elect", "describe", "db"]).await;
    assert_eq!(
        stdout(&text),
        format!(
            "db\n  leader: 10.0.0.1 (session {}, generation {generation}, since revision {elected}, lock-delay \
             5000 ms)\n  candidate 1: 10.0.0.2 (session {}, since revision {queued})\n",
            x.id(),
            y.id()
        ),
        "stderr: {}",
        stderr(&text)
    );
    let json = latch(&c, &["elect", "describe", "db", "--output", "json"]).await;
    let json: serde_json::Value = serde_json::from_str(stdout(&json).trim())
        .unwrap_or_else(|e| panic!("one JSON document ({e}): {}", stdout(&json)));
    assert_eq!(json["name"], "db");
    assert_eq!(json["leader"]["value"], "10.0.0.1");
    assert_eq!(json["leader"]["session"], x.id());
    assert_eq!(json["leader"]["sequencer"], lx.sequencer.as_ref().map_or("", |s| s.token.as_str()));
    assert_eq!(json["candidates"][0]["session"], y.id());
    assert_eq!(json["candidates"][0]["value"], "10.0.0.2");
    assert_eq!(json["delayed"], false);

    let listed = latch(&c, &["elect", "list"]).await;
    assert_eq!(stdout(&listed), stdout(&text), "the one election, as describe shows it");
    let none = latch(&c, &["elect", "list", "other/", "--output", "json"]).await;
    assert_eq!(stdout(&none).trim(), r#"{"elections":[]}"#, "stderr: {}", stderr(&none));
    let free = latch(&c, &["elect", "describe", "nobody"]).await;
    assert_eq!(stdout(&free), "nobody: no leader, no candidates\n");
    let bad = latch(&c, &["elect", "describe", ""]).await;
    assert_eq!(bad.status.code(), Some(2), "a usage error, as for a campaign: {}", stderr(&bad));
    assert!(stderr(&bad).contains("the election's NAME must not be empty"), "{}", stderr(&bad));
    // A TTL the members refuse names the flag; a name one byte over the longest an election
    // takes is refused before any session is made.
    let campaign = latch(&c, &["elect", &"e".repeat(1024), "v", "--ttl", "0s"]).await;
    assert_eq!(campaign.status.code(), Some(2), "a TTL the members refuse: {}", stderr(&campaign));
    assert!(stderr(&campaign).contains("--ttl 0s: "), "names the flag: {}", stderr(&campaign));
    let over = latch(&c, &["elect", &"e".repeat(1025), "v"]).await;
    assert_eq!(over.status.code(), Some(2), "{}", stderr(&over));
    assert!(stderr(&over).contains("NAME is 1025 bytes, at most 1024 allowed"), "{}", stderr(&over));
    // A flag before the subcommand reads as NAME VALUE: refused, not a campaign in "describe".
    let flag_first = latch(&c, &["elect", "--output", "json", "describe", "db"]).await;
    assert_eq!(flag_first.status.code(), Some(2), "a usage error: {}", stderr(&flag_first));
    assert!(stderr(&flag_first).contains("\"describe\" is a subcommand"), "{}", stderr(&flag_first));
    assert_eq!(
        client.election("describe").describe().await.unwrap(),
        None,
        "nobody campaigned in \"describe\""
    );
}

#[tokio::test]
async fn cli_elect_and_session_keepalive_give_back_what_they_hold_on_sigterm_and_a_waiting_lock_exits_128_plus_it(
) {
    use rustix::process::Signal;
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    // A TTL far longer than the test: only the command's own giving back can free them.
    let (line, code) =
        signalled_after_first_line(&c, &["elect", "db", "10.0.0.1", "--ttl", "1h"], Signal::TERM).await;
    assert!(line.starts_with("leader of db: 10.0.0.1"), "{line}");
    assert_eq!(code, 0, "resigned on SIGTERM");
    assert_eq!(client.election("db").leader().await.unwrap(), None, "nobody leads once it resigned");

    // Kept alive (and printed) every third of its TTL; closed by the command, not expired.
    let session = client.create_session(Duration::from_secs(6), "by hand").await.unwrap().0;
    let (line, code) = signalled_after_first_line(&c, &["session", "keepalive", &session], Signal::HUP).await;
    assert!(line.starts_with("kept alive"), "{line}");
    assert_eq!(code, 0);
    assert_eq!(client.sessions().await.unwrap(), [], "closed on SIGHUP");

    // A waiting `latch lock` withdraws its wait on SIGTERM and says it was interrupted.
    let holder = client.session(latch_client::SessionOptions::new(Duration::from_secs(3600))).await.unwrap();
    let _held = holder.lock("jobs/c", latch_client::LockOptions::exclusive()).await.unwrap().expect("free");
    let waiter = tokio::process::Command::new(latch_bin())
        .args(["lock", "jobs/c", "--endpoints", &c.member(1).client_addr, "--", "true"])
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually("the waiter to queue", Duration::from_secs(20), || async {
        let info = client.describe_lock("jobs/c").await.map_err(|e| e.to_string())?;
        match info {
            Some(info) if info.waiters.len() == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let pid = rustix::process::Pid::from_raw(waiter.id().expect("running") as i32).expect("a pid");
    rustix::process::kill_process(pid, Signal::TERM).unwrap();
    let out =
        tokio::time::timeout(Duration::from_secs(20), waiter.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(128 + 15), "128 + SIGTERM: {}", stderr(&out));
    assert!(
        stderr(&out).contains("interrupted (signal 15) while waiting for \"jobs/c\""),
        "{}",
        stderr(&out)
    );
    let info = client.describe_lock("jobs/c").await.unwrap().expect("still held");
    assert_eq!(info.waiters, [], "the wait is withdrawn with the closed session");
}

/// The first of `lines` (a child's output) that contains `needle`, read for at most 20 s; `None`
/// if the output ended or the time ran out first.
async fn line_containing<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    needle: &str,
) -> Option<String> {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(needle) {
                return Some(line);
            }
        }
        None
    });
    found.await.ok().flatten()
}

/// The session lost (its member stopped: SIGSTOP) while CMD ignores SIGTERM, under a long
/// `--grace`: SIGINT to `latch lock` is passed on to CMD, and a second one kills CMD at once
/// rather than after the grace (explorer F27: both were swallowed until the grace ran out).
#[tokio::test]
async fn cli_lock_passes_a_signal_on_during_the_lost_sessions_grace_and_a_second_kills_at_once() {
    use rustix::process::Signal;
    use tokio::io::AsyncBufReadExt;
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let dir = tempfile::tempdir().unwrap();
    let (pid_file, heard_file) = (dir.path().join("pid"), dir.path().join("heard"));
    let script = format!(
        "trap '' TERM; trap 'echo INT >> \"{}\"' INT; echo $$ > '{}'; while :; do sleep 0.1; done",
        heard_file.display(),
        pid_file.display()
    );
    let mut lock = spawn_latch(
        &c,
        &[
            "lock",
            "jobs/e",
            "--ttl",
            "2s",
            "--grace",
            "60s",
            "--lock-delay",
            "60s",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    eventually("the command to start holding the lock", Duration::from_secs(20), || async {
        std::fs::read_to_string(&pid_file).map_err(|e| e.to_string())
    })
    .await;
    c.signal(1, Signal::STOP);
    let mut lines = tokio::io::BufReader::new(lock.stderr.take().expect("piped")).lines();
    let lost = line_containing(&mut lines, "is lost while").await;
    assert!(lost.as_deref().is_some_and(|l| l.contains("SIGKILL after")), "lost, with a grace: {lost:?}");
    let pid = rustix::process::Pid::from_raw(lock.id().expect("running") as i32).expect("a pid");
    rustix::process::kill_process(pid, Signal::INT).unwrap();
    eventually("the command to hear the SIGINT passed on", Duration::from_secs(10), || async {
        std::fs::read_to_string(&heard_file).map_err(|e| e.to_string())
    })
    .await;
    rustix::process::kill_process(pid, Signal::INT).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(20), lock.wait()).await;
    c.signal(1, Signal::CONT);
    let status = ended.expect("`latch lock` ends at the second signal, not after its 60 s grace").unwrap();
    assert_eq!(status.code(), Some(3), "the session was lost: status 3");
}

/// A waiting `latch lock` interrupted while its member does not answer (SIGSTOP): the session's
/// close waits on the member, and a second signal ends `latch lock` at once, saying what is left
/// to happen by itself, rather than after `--timeout` (explorer F23: a second Ctrl-C was
/// ignored).
#[tokio::test]
async fn cli_lock_interrupted_twice_while_its_member_is_frozen_exits_at_the_second_signal() {
    use rustix::process::Signal;
    use tokio::io::AsyncBufReadExt;
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let holder = client.session(latch_client::SessionOptions::new(Duration::from_secs(3600))).await.unwrap();
    let _held = holder.lock("jobs/d", latch_client::LockOptions::exclusive()).await.unwrap().expect("free");
    let mut waiter = spawn_latch(&c, &["--timeout", "60s", "lock", "jobs/d", "--", "true"]);
    eventually("the waiter to queue", Duration::from_secs(20), || async {
        match client.describe_lock("jobs/d").await.map_err(|e| e.to_string())? {
            Some(info) if info.waiters.len() == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    c.signal(1, Signal::STOP);
    let pid = rustix::process::Pid::from_raw(waiter.id().expect("running") as i32).expect("a pid");
    rustix::process::kill_process(pid, Signal::INT).unwrap();
    // Once the first is heard, the close is under way (it cannot end: the member is stopped).
    let mut lines = tokio::io::BufReader::new(waiter.stderr.take().expect("piped")).lines();
    let heard = line_containing(&mut lines, "interrupted (signal 2) while waiting").await;
    assert!(heard.is_some(), "`latch lock` says it was interrupted while waiting");
    rustix::process::kill_process(pid, Signal::INT).unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(20), async {
        let mut rest = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            rest.push(line);
        }
        (rest, waiter.wait().await.unwrap())
    })
    .await;
    c.signal(1, Signal::CONT);
    let (rest, status) = rest.expect("`latch lock` ends at the second signal, not after its 60 s --timeout");
    assert_eq!(status.code(), Some(128 + 2), "128 + SIGINT: {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("signal 2 while giving back what it holds: not waiting; the session expires")),
        "says the close was not waited for: {rest:?}"
    );
}

#[tokio::test]
async fn cli_watch_and_observe_fail_within_the_timeout_on_a_dead_endpoint_and_a_watch_ends_when_its_reader_does(
) {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    for args in [&["watch", "k"][..], &["elect", "db", "--observe"][..]] {
        let started = std::time::Instant::now();
        let out = latch_exactly(&[args, &["--endpoints", &dead, "--timeout", "1s"][..]].concat()).await;
        assert_eq!(
            out.status.code(),
            Some(1),
            "`latch {}` on a dead endpoint fails: {}",
            args.join(" "),
            stderr(&out)
        );
        assert!(stderr(&out).contains("within 1s (--timeout)"), "names the timeout: {}", stderr(&out));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "at the timeout, not later: {:?}",
            started.elapsed()
        );
    }

    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let mut watch = tokio::process::Command::new(latch_bin())
        .args(["watch", "p/", "--prefix", "--endpoints", &c.member(1).client_addr])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut reader = watch.stdout.take().unwrap();
    let mut first = vec![0; 64];
    let n = loop {
        client.put("p/1", "a").await.unwrap();
        if let Ok(n) = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::io::AsyncReadExt::read(&mut reader, &mut first),
        )
        .await
        {
            break n.unwrap();
        }
    };
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("PUT "), "{:?}", &first[..n]);
    drop(reader);
    client.put("p/2", "b").await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), watch.wait())
        .await
        .expect("the watch ends at its first write after its reader left")
        .unwrap();
    assert_eq!(status.code(), Some(0), "quietly, as `head` expects");
}

/// `latch elect NAME --observe | head -1` ends once `head` has its line, though no other line
/// comes (nobody leads, nobody campaigns): before, the observer waited for a next line to fail
/// on, which a stable election never gives. `latch watch` likewise.
#[tokio::test]
async fn cli_observe_and_watch_end_once_their_reader_is_gone_though_nothing_more_comes() {
    use tokio::io::AsyncBufReadExt;
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    for args in [&["elect", "quiet", "--observe"][..], &["watch", "quiet"][..]] {
        let mut child = spawn_latch(&c, args);
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        // A watch prints nothing before its first event, and misses one before it started.
        let first = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                tokio::select! {
                    line = lines.next_line() => break line.unwrap(),
                    () = tokio::time::sleep(Duration::from_millis(200)), if args[0] == "watch" => {
                        client.put("quiet", "again").await.unwrap();
                    }
                }
            }
        })
        .await
        .unwrap();
        assert!(first.is_some(), "`latch {}` printed its first line", args.join(" "));
        drop(lines);
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap_or_else(|_| panic!("`latch {}` to end within 10 s of its reader's end", args.join(" ")))
            .unwrap();
        assert_eq!(status.code(), Some(0), "`latch {}` ends as on a closed pipe", args.join(" "));
    }
}

/// An observation of a name the members would refuse (over 1 KiB) ends at once, a usage error
/// naming the limit, not after --timeout with "no member said who leads": retrying cannot mend it.
#[tokio::test]
async fn cli_observe_of_a_name_the_members_refuse_fails_at_once_naming_the_limit() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let name = "x".repeat(1025);
    let started = std::time::Instant::now();
    let out = latch(&c, &["elect", &name, "--observe"]).await;
    assert_eq!(out.status.code(), Some(2), "a usage error: {}", stderr(&out));
    assert!(stderr(&out).contains("NAME is 1025 bytes, at most 1024 allowed"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("--timeout"), "not a timeout: {}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(5), "at once, took {:?}", started.elapsed());
}

/// A watch or an observation whose endpoints all refuse connections fails after --timeout
/// saying why: with the last failure the client met, not only that no member answered.
#[tokio::test]
async fn cli_watch_and_observe_against_unreachable_endpoints_fail_naming_the_last_failure() {
    // Port 1 (tcpmux): nothing listens there, and no bind to port 0 is handed it (a dropped
    // listener's port could be handed to another test meanwhile).
    let dead = "127.0.0.1:1".to_string();
    assert!(std::net::TcpStream::connect(&dead).is_err(), "nothing may listen on {dead} for this test");
    for (command, did) in [(["watch", "k"], "started the watch"), (["elect", "e"], "said who leads")] {
        let mut args = command.to_vec();
        if command[0] == "elect" {
            args.push("--observe");
        }
        args.extend(["--endpoints", &dead, "--timeout", "1s"]);
        let out = latch_exactly(&args).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{command:?} fails: {err}");
        for needle in [did, "within 1s (--timeout)", "the last failure", dead.as_str(), "refused"] {
            assert!(err.contains(needle), "{command:?}'s error should mention {needle:?}: {err}");
        }
    }
}

#[tokio::test]
async fn cli_a_call_to_a_members_http_port_exits_1_asking_whether_it_is_the_client_port() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let out = latch_exactly(&["kv", "get", "k", "--endpoints", &c.member(1).http_addr]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is --endpoints a member's client port?"), "{}", stderr(&out));
}

#[tokio::test]
async fn cli_logs_written_to_a_file_or_pipe_carry_no_colour_codes() {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    let out = tokio::process::Command::new(latch_bin())
        .args(["kv", "get", "k", "--endpoints", &dead, "--timeout", "300ms"])
        .env("RUST_LOG", "debug")
        .env_remove("NO_COLOR")
        .env_remove("LATCH_ENDPOINTS")
        .output()
        .await
        .unwrap();
    let logs = stderr(&out);
    assert!(logs.contains("DEBUG"), "debug lines were logged: {logs}");
    assert!(!logs.contains('\u{1b}'), "no ANSI escapes on a pipe: {logs:?}");
}

#[tokio::test]
async fn cli_kv_put_without_a_value_reads_any_bytes_of_any_size_from_standard_input() {
    use tokio::io::AsyncWriteExt;
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    // Not UTF-8, and larger than one argument may be (128 KiB on Linux).
    let value: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).chain([0xff, 0xfe, 0]).collect();
    let mut put = tokio::process::Command::new(latch_bin())
        .args(["kv", "put", "blob", "--endpoints", &c.member(1).client_addr])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = put.stdin.take().unwrap();
    stdin.write_all(&value).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), put.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "OK\n");
    let kv = c.client().await.get("blob").await.unwrap().expect("written");
    assert_eq!(kv.value, value, "the bytes of standard input, exactly");
    // An empty standard input (cron's /dev/null, an unquoted empty variable) writes nothing.
    let empty = latch(&c, &["kv", "put", "blob"]).await;
    assert_eq!(empty.status.code(), Some(2), "a usage error: {}", stderr(&empty));
    assert!(stderr(&empty).contains("standard input is empty"), "{}", stderr(&empty));
    let kv = c.client().await.get("blob").await.unwrap().expect("still there");
    assert_eq!(kv.value, value, "the value stands");
}

/// One member frozen with its sockets open (SIGSTOP: the kernel still accepts its connections),
/// first in `--endpoints`, the other two serving: every command is served by them within a
/// `--timeout` shorter than the connection's ping takes to give up on the frozen one (explorer
/// F29: each command failed after the whole `--timeout`, though two members could serve).
#[tokio::test]
async fn cli_commands_are_served_by_the_others_when_the_first_endpoint_is_a_frozen_member() {
    use tokio::io::AsyncBufReadExt;
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let frozen = (1..=3).find(|id| *id != leader).expect("a follower");
    let mut order = vec![frozen];
    order.extend((1..=3).filter(|id| *id != frozen));
    let endpoints = order.iter().map(|id| c.member(*id).client_addr.clone()).collect::<Vec<_>>().join(",");
    let client = ["--endpoints", endpoints.as_str(), "--timeout", "4s"];
    let run = |args: &[&str]| {
        let all: Vec<String> = client.iter().chain(args).map(|a| a.to_string()).collect();
        async move { latch_exactly(&strs(&all)).await }
    };
    c.signal(frozen, rustix::process::Signal::STOP);

    let put = run(&["kv", "put", "f29", "v"]).await;
    assert!(put.status.success(), "put served by the others: {}", stderr(&put));
    let get = run(&["kv", "get", "f29"]).await;
    assert_eq!(stdout(&get), "v\n", "get served by the others: {}", stderr(&get));
    let lock = run(&["lock", "f29", "--", "sh", "-c", "echo ran $LATCH_FENCING_TOKEN"]).await;
    assert!(
        lock.status.success() && stdout(&lock).starts_with("ran "),
        "latch lock acquired through the others and ran its command: {} {}",
        stdout(&lock),
        stderr(&lock)
    );
    let describe = run(&["lock", "describe", "f29"]).await;
    assert!(describe.status.success(), "lock describe served by the others: {}", stderr(&describe));

    let mut candidate = tokio::process::Command::new(latch_bin());
    candidate.args(client).args(["elect", "f29e", "alpha"]).env_remove("RUST_LOG").kill_on_drop(true);
    let mut candidate = candidate.stdout(std::process::Stdio::null()).spawn().unwrap();
    let mut observer = tokio::process::Command::new(latch_bin());
    observer.args(client).args(["elect", "f29e", "--observe"]).env_remove("RUST_LOG").kill_on_drop(true);
    let mut observer = observer.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(observer.stdout.take().unwrap()).lines();
    let first = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the observer prints a line within 20 s")
            .unwrap()
            .expect("the observer printed a line before it ended");
        if line.contains("alpha") {
            break line;
        }
    };
    assert!(first.contains("alpha"), "the observer sees the candidate lead through the others: {first}");
    observer.kill().await.unwrap();
    candidate.kill().await.unwrap();

    // `cluster status`, the command for a sick member, within a second: the member asked shows
    // the frozen one unreachable within the caller's deadline (it waited 1.5 s for it).
    let healthy_first = order.iter().rev().map(|id| c.member(*id).client_addr.clone()).collect::<Vec<_>>();
    let status =
        latch_exactly(&["--endpoints", &healthy_first.join(","), "--timeout", "1s", "cluster", "status"])
            .await;
    assert!(status.status.success(), "cluster status within --timeout 1s: {}", stderr(&status));
    assert!(stdout(&status).contains("unreachable"), "the frozen member is unreachable: {}", stdout(&status));
    c.signal(frozen, rustix::process::Signal::CONT);
}

/// Two of three members killed: the live one cannot serve, and says why before the client's
/// `--timeout`, which it is told (`grpc-timeout`), instead of waiting out its own 10 s while
/// the client reports only that no member answered (helper-145 F2). A write it could not commit
/// says it may still take effect, and it does once the others are back.
#[tokio::test]
async fn cli_without_a_quorum_the_live_member_says_why_before_the_timeout() {
    let mut c = Cluster::start(3, &[]).await;
    let live = c.leader().await;
    for id in c.ids().into_iter().filter(|id| *id != live) {
        c.kill(id);
    }
    let mut order = vec![live];
    order.extend(c.ids().into_iter().filter(|id| *id != live));
    let endpoints = order.iter().map(|id| c.member(*id).client_addr.clone()).collect::<Vec<_>>().join(",");
    let client = ["--endpoints", endpoints.as_str(), "--timeout", "3s"];
    let run = |args: &[&str]| {
        let all: Vec<String> = client.iter().chain(args).map(|a| a.to_string()).collect();
        async move { latch_exactly(&strs(&all)).await }
    };
    let said_by_live = format!("{}: UNAVAILABLE: member {live} could not", c.member(live).client_addr);
    let said_by_live = said_by_live.replace(": UNAVAILABLE", "");

    let put = run(&["kv", "put", "f2", "v"]).await;
    let (code, err) = (put.status.code(), stderr(&put));
    assert_eq!(code, Some(1), "a put without a quorum fails: {err}");
    assert!(
        err.contains("UNAVAILABLE")
            && err.contains(&said_by_live)
            && err.contains("could not commit the write"),
        "the live member says it could not commit the write: {err}"
    );
    assert!(
        err.contains("no quorum of members is reachable") || err.contains("no quorum of members has"),
        "and why: {err}"
    );
    assert!(
        err.contains("may still take effect")
            && err.contains("the same request id applies it at most once (while the cluster still remembers"),
        "and that the write may still take effect, and how to retry it: {err}"
    );
    assert!(!err.contains("no answer within"), "the live member answered in time: {err}");

    // A put that named no request id cannot be retried under the one the member gave it.
    let mut kv = c.kv_of_only(live).await;
    let mut put = tonic::Request::new(latch_proto::v1::PutRequest {
        key: b"f2-raw".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    });
    put.set_timeout(Duration::from_secs(2));
    let err = kv.put(put).await.expect_err("no quorum").message().to_string();
    assert!(
        err.contains("may still take effect")
            && err.contains("it carried no request id, so a retry may apply it twice"),
        "a put without a request id is told a retry is another write: {err}"
    );

    let get = run(&["kv", "get", "f2"]).await;
    let err = stderr(&get);
    assert_eq!(get.status.code(), Some(1), "a linearizable get without a quorum fails: {err}");
    // It says so at once when it has no leader, or at the deadline while it still takes one
    // to lead: either way, its answer leads the error.
    let live_addr = &c.member(live).client_addr;
    assert!(
        err.starts_with(&format!("Error: UNAVAILABLE: {live_addr}: "))
            && (err.contains("could not confirm with a leader that its state is current")
                || err.contains(&format!("no leader is known to member {live}"))),
        "the live member says it could not confirm its state: {err}"
    );
    assert!(!err.contains("may still take effect"), "a read takes no effect: {err}");

    for id in c.ids().into_iter().filter(|id| *id != live) {
        c.restart(id).await;
    }
    c.leader().await;
    let get = latch_exactly(&["--endpoints", &endpoints, "--timeout", "10s", "kv", "get", "f2"]).await;
    assert_eq!(
        stdout(&get),
        "v\n",
        "the write that stayed proposed took effect once a quorum was back: {}",
        stderr(&get)
    );
}
