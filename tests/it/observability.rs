//! What monitoring sees of a member (DESIGN.md §5, HTTP port): `/metrics` in Prometheus text,
//! `/health` and `/ready` over HTTP, the standard gRPC health and reflection services on
//! the client port, and logs as JSON lines (`--log-format json`).

use latch_proto::v1::kv_client::KvClient;
use latch_proto::v1::PutRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

use crate::harness::{eventually, http_get, sample, Cluster, STARTUP};

#[tokio::test]
async fn metrics_show_commit_durations_the_term_and_grpc_calls_by_method_and_code() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    for i in 0..5 {
        client.put(format!("k{i}"), "v").await.unwrap();
    }
    // An empty key is refused: a call with another code than OK.
    let mut raw = KvClient::connect(format!("http://{}", c.member(1).client_addr)).await.unwrap();
    let refused = raw.put(PutRequest { key: vec![], value: b"v".to_vec(), ..Default::default() }).await;
    assert_eq!(refused.expect_err("an empty key is refused").code(), tonic::Code::InvalidArgument);

    let addr = c.member(1).http_addr.clone();
    let answer = http_get(&addr, "/metrics").await.unwrap();
    assert_eq!(answer.status, 200, "/metrics should answer 200; body: {}", answer.body);
    assert!(
        answer.header("content-type").is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "/metrics should be OpenMetrics text; headers: {:?}",
        answer.headers
    );
    let text = answer.body;
    let commits = sample(&text, "latch_raft_ready_commit_duration_seconds_count").unwrap_or(0.0);
    assert!(commits >= 5.0, "every put commits a Ready (count >= 5), got {commits}:\n{text}");
    let fsyncs = sample(&text, "latch_state_fsync_duration_seconds_count").unwrap_or(0.0);
    assert!(
        fsyncs >= 1.0,
        "the state file's fsyncs are timed (the start's commit waits for one), got {fsyncs}:\n{text}"
    );
    let term = sample(&text, "latch_raft_term").unwrap_or(0.0);
    assert!(term >= 1.0, "the leader's term is at least 1, got {term}:\n{text}");
    assert_eq!(sample(&text, "latch_raft_is_leader"), Some(1.0), "a lone member leads:\n{text}");
    let puts = sample(&text, r#"latch_grpc_requests_total{method="/latch.v1.KV/Put",code="OK"}"#);
    assert_eq!(puts, Some(5.0), "5 puts answered OK should be counted:\n{text}");
    let refused =
        sample(&text, r#"latch_grpc_requests_total{method="/latch.v1.KV/Put",code="INVALID_ARGUMENT"}"#);
    assert_eq!(refused, Some(1.0), "the refused put should be counted with its code:\n{text}");
    let timed = sample(&text, r#"latch_grpc_request_duration_seconds_count{method="/latch.v1.KV/Put"}"#);
    assert_eq!(timed, Some(6.0), "every put should be timed:\n{text}");
    let applied = sample(&text, "latch_proposals_applied_total").unwrap_or(0.0);
    assert!(applied >= 5.0, "the puts' entries were applied, got {applied}:\n{text}");
    let state = sample(&text, "latch_state_file_bytes").unwrap_or(0.0);
    assert!(state > 0.0, "the state file's size is measured, got {state}:\n{text}");
    let log = sample(&text, "latch_raft_log_files_bytes").unwrap_or(0.0);
    assert!(log >= 64.0 * 1024.0 * 1024.0, "one preallocated segment at least, got {log}:\n{text}");
    let cluster_version = sample(&text, "latch_cluster_version").unwrap_or(0.0);
    assert!(
        (10.0..=f64::from(latch::fsm::COMMAND_VERSION)).contains(&cluster_version),
        "the cluster version is shown, 10 until a lone member of this build raises it to its own, got \
         {cluster_version}:\n{text}"
    );
    let free = sample(&text, "latch_data_dir_free_bytes").unwrap_or(0.0);
    assert!(free > 0.0, "the space left on the data dir's file system is measured, got {free}:\n{text}");
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
}

#[tokio::test]
async fn ready_is_200_in_a_healthy_cluster_and_503_on_a_member_whose_peers_are_gone() {
    let mut c = Cluster::start(3, &[]).await;
    c.leader().await;
    for id in c.ids() {
        let addr = c.member(id).http_addr.clone();
        eventually(&format!("member {id}'s /ready to answer 200"), STARTUP, || {
            let addr = addr.clone();
            async move {
                let a = http_get(&addr, "/ready").await?;
                if a.status == 200 {
                    Ok(())
                } else {
                    Err(format!("{} {}", a.status, a.body))
                }
            }
        })
        .await;
    }
    // Peer messages flow both ways between members of a healthy cluster.
    let text = http_get(&c.member(1).http_addr, "/metrics").await.unwrap().body;
    assert!(
        text.lines().any(|l| l.starts_with("latch_peer_sent_messages_total{")),
        "member 1 should count the raft messages it sent:\n{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("latch_peer_received_bytes_total{")),
        "member 1 should count the bytes it received:\n{text}"
    );

    c.kill(2);
    c.kill(3);
    let addr = c.member(1).http_addr.clone();
    let body = eventually("member 1's /ready to answer 503 once it knows no leader", STARTUP, || {
        let addr = addr.clone();
        async move {
            let a = http_get(&addr, "/ready").await?;
            if a.status == 503 {
                Ok(a.body)
            } else {
                Err(format!("{} {}", a.status, a.body))
            }
        }
    })
    .await;
    assert!(body.contains("no leader"), "/ready should say why it is not ready; got {body:?}");
    assert_eq!(body.lines().count(), 1, "the reason is one line; got {body:?}");
    let health = http_get(&addr, "/health").await.unwrap();
    assert_eq!(
        (health.status, health.body.as_str()),
        (200, "ok\n"),
        "a member without a leader is still alive"
    );
}

#[tokio::test]
async fn grpc_health_answers_serving_and_reflection_lists_the_public_services() {
    let c = Cluster::start(1, &[]).await;
    let endpoint = format!("http://{}", c.member(1).client_addr);
    let channel = tonic::transport::Channel::from_shared(endpoint).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "latch.v1.KV", "latch.v1.Cluster"] {
        let status = health
            .check(HealthCheckRequest { service: service.into() })
            .await
            .unwrap_or_else(|e| panic!("health check of {service:?} failed: {e}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "health of {service:?} should be SERVING");
    }
    let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await;
    assert_eq!(unknown.expect_err("an unknown service").code(), tonic::Code::NotFound);
    let health_http = http_get(&c.member(1).http_addr, "/health").await.unwrap();
    assert_eq!((health_http.status, health_http.body.as_str()), (200, "ok\n"));

    let mut reflection = ServerReflectionClient::new(channel);
    let ask = |req: MessageRequest| {
        tokio_stream::iter([ServerReflectionRequest { host: String::new(), message_request: Some(req) }])
    };
    let mut answers = reflection
        .server_reflection_info(ask(MessageRequest::ListServices(String::new())))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().and_then(|r| r.message_response)
    else {
        panic!("reflection should answer ListServices with a list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["latch.v1.KV", "latch.v1.Cluster", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "reflection should list {expected}; got {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("latch.internal")),
        "the peer service is not served on the client port; got {names:?}"
    );
    let mut answers = reflection
        .server_reflection_info(ask(MessageRequest::FileContainingSymbol("latch.v1.KV".into())))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().and_then(|r| r.message_response);
    assert!(
        matches!(answer, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "reflection should return the file that defines latch.v1.KV; got {answer:?}"
    );
}

#[tokio::test]
async fn a_member_started_with_log_format_json_writes_one_json_object_per_line() {
    let c = Cluster::start(1, &["--log-format", "json"]).await;
    c.leader().await;
    let log = std::fs::read_to_string(&c.member(1).log).unwrap();
    // The harness's own lines in the log file start with "====".
    let lines: Vec<&str> = log.lines().filter(|l| !l.starts_with("====")).collect();
    assert!(!lines.is_empty(), "a starting member logs at info; its log is empty");
    for line in &lines {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("every log line should be a JSON object ({e}); got: {line}"));
        assert!(event["level"].is_string(), "a log line should have a level: {line}");
        assert!(event["message"].is_string(), "a log line should have a message: {line}");
    }
    assert!(
        lines.iter().any(|l| l.contains(r#""message":"member started""#) && l.contains(r#""level":"INFO""#)),
        "the member's start should be logged at INFO; lines:\n{}",
        lines.join("\n")
    );
}

/// The JSON log lines of member `id` whose message is `message`.
fn log_events(c: &Cluster, id: u64, message: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(&c.member(id).log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

#[tokio::test]
async fn a_members_log_says_which_elections_it_saw_and_which_peers_it_lost() {
    let mut c = Cluster::start(3, &["--log-format", "json"]).await;
    let old = c.leader().await;
    let won = log_events(&c, old, "elected leader");
    assert_eq!(won.len(), 1, "the first leader logs its election once: {won:?}");
    for field in ["member", "term", "index"] {
        assert!(
            won[0].get(field).is_some_and(|v| v.is_u64()),
            "an election line names its {field}: {}",
            won[0]
        );
    }
    c.kill(old);
    let new = c.leader().await;
    let survivor = c.ids().into_iter().find(|id| *id != old && *id != new).unwrap();
    let check = |c: &Cluster| -> Result<(), String> {
        let won = log_events(c, new, "elected leader");
        let term = won.last().and_then(|v| v["term"].as_u64()).ok_or("the new leader logged no election")?;
        if !log_events(c, new, "election started").iter().any(|v| v["term"].as_u64() == Some(term)) {
            return Err(format!("member {new} did not log starting the election of term {term}"));
        }
        let follows = log_events(c, survivor, "following a new leader");
        if !follows.iter().any(|v| v["leader"].as_u64() == Some(new) && v["term"].as_u64() == Some(term)) {
            return Err(format!("member {survivor} did not log following {new} in term {term}: {follows:?}"));
        }
        // The new leader sends to every member, so it is the one to find the old one gone.
        if !log_events(c, new, "peer unreachable").iter().any(|v| v["peer"].as_u64() == Some(old)) {
            return Err(format!("member {new} did not log losing member {old}"));
        }
        Ok(())
    };
    eventually("the survivors' logs to tell the failover", STARTUP, || async { check(&c) }).await;
    c.restart(old).await;
    eventually("the leader to log member {old} back", STARTUP, || async {
        let back = log_events(&c, new, "peer reachable again");
        if back.iter().any(|v| v["peer"].as_u64() == Some(old)) {
            Ok(())
        } else {
            Err(format!("{back:?}"))
        }
    })
    .await;
}
