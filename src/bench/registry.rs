//! `registry`: a large service registry (issue 11). Before the clock starts, `--instances` N
//! instances of one service are registered through the Registry gRPC service, `--registrars`
//! of them at a time over `--connections` channels; this is measured too (registrations/s and
//! p50/p99, in the report's parameters) but is not the timed phase (`--registered` skips it,
//! for a service an earlier run registered). Then `--clients` clients call `List` of the
//! service, one call in flight each, until `--ops` calls were started or `--duration` passed:
//! those calls are the report's operations and latency.
//!
//! Instance `i` (0-based) is id `i00000`-style (`i` and the zero-padded index), address
//! `10.x.y.z` (the index + 1 in the low 24 bits), port 8080, no tag, no check (so it is
//! passing while registered: every instance is answered by List and by DNS). Registering is an
//! upsert: a second run over the same service replaces the instances, it does not add to them.
//!
//! Where the calls go: every call goes to the first member of `--target`, the member measured;
//! should it not be the leader, the registrations follow the leader it names (the
//! `latch-leader-addr` metadata of its refusal) and the Lists stay with it (`--consistency
//! serializable` answers them from its own state). A List answer is counted by outcome:
//! `complete` (all N instances, not cut), `cut` (the member's response size bound cut it,
//! `more`), `short` (fewer instances than registered and not cut).
//!
//! With `--rss-pid PID` (the member's process, on this machine) the report carries its resident
//! memory (`VmRSS` of /proc/PID/status) before registering, after registering and after the
//! Lists (`rss_kib_before`, `rss_kib_registered`, `rss_kib_after`).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use latch_proto::v1::registry_client::RegistryClient;
use latch_proto::v1::{ListRequest, ListResponse, RegisterRequest, ServiceInstance};
use serde_json::{json, Map, Value};
use tonic::transport::{Channel, Endpoint};

use super::{Consistency, Error, OpError, Outcome, Progress, Report, Settings, Shared, System, Tally};

/// The workload's name.
pub const NAME: &str = "registry";
/// The port every instance is registered with.
pub const PORT: u32 = 8080;
/// Tries of one registration before the run fails.
const REGISTER_TRIES: usize = 3;
/// Most instances: the addresses are 10.0.0.0/8 and the index + 1 in its 24 bits, neither
/// 10.0.0.0 nor 10.255.255.255.
pub const MAX_INSTANCES: usize = (1 << 24) - 2;

/// What `registry` is asked.
#[derive(Debug, Clone)]
pub struct RegistryBench {
    /// The service registered and listed.
    pub service: String,
    /// Instances registered before the clock starts.
    pub instances: usize,
    /// Registrations in flight at once.
    pub registrars: usize,
    /// The instances are registered already: only List.
    pub registered: bool,
    /// How each List is served.
    pub consistency: Consistency,
    /// The member's process id, for its resident memory.
    pub rss_pid: Option<u32>,
}

impl RegistryBench {
    /// Checks what the types cannot; the message names the flag at fault.
    pub fn validate(&self, settings: &Settings) -> Result<(), Error> {
        if settings.target.system != System::Latch {
            return Err(Error::Settings(format!(
                "registry runs against latch:// targets: {} has no service registry",
                settings.target.system.name()
            )));
        }
        if self.instances == 0 || self.instances > MAX_INSTANCES {
            return Err(Error::Settings(format!("--instances must be between 1 and {MAX_INSTANCES}")));
        }
        if self.registrars == 0 {
            return Err(Error::Settings("--registrars must be at least 1".into()));
        }
        let label_ok = !self.service.is_empty()
            && self.service.len() <= 63
            && self.service.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.service.starts_with('-')
            && !self.service.ends_with('-');
        if !label_ok {
            return Err(Error::Settings(format!(
                "--service {:?} is not a DNS label: 1 to 63 of a-z, 0-9 and '-'",
                self.service
            )));
        }
        Ok(())
    }
}

/// Instance `index` of `service`.
pub fn instance(service: &str, index: usize) -> ServiceInstance {
    let n = index as u32 + 1;
    ServiceInstance {
        service: service.to_string(),
        id: format!("i{index:05}"),
        address: format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff),
        port: PORT,
        ..Default::default()
    }
}

/// What one List answer is counted as.
pub fn list_outcome(response: &ListResponse, expected: usize) -> Outcome {
    if response.more {
        "cut"
    } else if response.instances.len() < expected {
        "short"
    } else {
        "complete"
    }
}

/// The resident memory of process `pid`, in KiB, from its `VmRSS` line.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    vm_rss_kib(&status)
}

/// The `VmRSS:  12345 kB` line of a /proc/PID/status text, in KiB.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn channel(address: &str, timeout: Duration) -> Result<Channel, OpError> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| OpError { kind: "INVALID_ENDPOINT", message: e.to_string() })?
        .timeout(timeout)
        .connect_timeout(timeout);
    endpoint.connect().await.map_err(|e| OpError { kind: "UNAVAILABLE", message: e.to_string() })
}

fn status_error(status: tonic::Status) -> OpError {
    let kind = match status.code() {
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Internal => "INTERNAL",
        _ => "OTHER",
    };
    OpError { kind, message: status.message().to_string() }
}

/// The leader a refusal names, if any.
fn leader_hint(status: &tonic::Status) -> Option<String> {
    let value = status.metadata().get(latch_proto::LEADER_ADDR_METADATA)?;
    value.to_str().ok().filter(|v| !v.is_empty()).map(str::to_string)
}

async fn register(
    client: &mut RegistryClient<Channel>,
    service: &str,
    index: usize,
) -> Result<(), tonic::Status> {
    let request = RegisterRequest { instance: Some(instance(service, index)), ..Default::default() };
    client.register(request).await.map(|_| ())
}

/// Registers every instance, `bench.registrars` at a time; returns their latencies and how long
/// it took. The first one alone, so that a member that is not the leader can name it.
async fn register_all(
    bench: &RegistryBench,
    settings: &Settings,
    progress: &Progress,
) -> Result<(Tally, Duration), OpError> {
    let member = &settings.target.endpoints[0];
    let mut first = RegistryClient::new(channel(member, settings.timeout).await?);
    let mut at = member.clone();
    if let Err(status) = register(&mut first, &bench.service, 0).await {
        match leader_hint(&status) {
            Some(leader) if leader != *member => at = leader,
            _ => return Err(status_error(status)),
        }
    }
    let mut clients = Vec::with_capacity(settings.connections);
    for _ in 0..settings.connections.min(bench.registrars) {
        clients.push(RegistryClient::new(channel(&at, settings.timeout).await?));
    }
    progress.loading(bench.instances as u64);
    let started = Instant::now();
    let results: Vec<Result<Duration, OpError>> = futures::stream::iter(0..bench.instances)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            let service = bench.service.as_str();
            async move {
                let mut last = None;
                for _ in 0..REGISTER_TRIES {
                    let t = Instant::now();
                    match register(&mut client, service, i).await {
                        Ok(()) => return Ok(t.elapsed()),
                        Err(status) => last = Some(status_error(status)),
                    }
                }
                Err(last.unwrap_or(OpError { kind: "OTHER", message: "not tried".into() }))
            }
        })
        .buffer_unordered(bench.registrars)
        .inspect(|_| progress.loaded(1))
        .collect()
        .await;
    let took = started.elapsed();
    let mut tally = Tally::new();
    for result in results {
        tally.record(result?, "registered");
    }
    Ok((tally, took))
}

/// Runs the benchmark; see the module doc.
pub async fn run(
    bench: RegistryBench,
    settings: &Settings,
    progress: Progress,
    interrupt: impl Future<Output = ()> + Send + 'static,
) -> Result<Report, Error> {
    settings.validate()?;
    bench.validate(settings)?;
    let rss = |pid: Option<u32>| pid.and_then(rss_kib);
    let rss_before = rss(bench.rss_pid);
    let (registered, register_time) = if bench.registered {
        (Tally::new(), Duration::ZERO)
    } else {
        register_all(&bench, settings, &progress)
            .await
            .map_err(|error| Error::Prepare { workload: NAME, error })?
    };
    let rss_registered = rss(bench.rss_pid);

    let member = &settings.target.endpoints[0];
    let mut clients = Vec::with_capacity(settings.connections);
    for _ in 0..settings.connections {
        let channel = channel(member, settings.timeout)
            .await
            .map_err(|error| Error::Unreachable { target: settings.target.to_string(), error })?;
        clients.push(RegistryClient::new(channel));
    }
    let request = ListRequest {
        service: bench.service.clone(),
        serializable: bench.consistency == Consistency::Serializable,
        ..Default::default()
    };
    // One List before the clock, for the size of an answer.
    let first = clients[0]
        .clone()
        .list(request.clone())
        .await
        .map_err(|status| Error::Prepare { workload: NAME, error: status_error(status) })?
        .into_inner();

    let (shared, clock) = super::start_clock(settings.stop, &progress, interrupt);
    let tasks: Vec<_> = (0..settings.clients)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            tokio::spawn(list_task(client, request.clone(), bench.instances, shared.clone()))
        })
        .collect();
    let mut tally = Tally::new();
    let mut panicked = None;
    for task in tasks {
        match task.await {
            Ok(task_tally) => tally.merge(task_tally),
            Err(e) => panicked = Some(e.to_string()),
        }
    }
    let elapsed = clock.stop(&shared);
    progress.finish();
    if let Some(why) = panicked {
        return Err(Error::Task(why));
    }
    let rss_after = rss(bench.rss_pid);

    let latency = registered.latency();
    let mut p = Map::new();
    p.insert("service".into(), json!(bench.service));
    p.insert("instances".into(), json!(bench.instances));
    p.insert("consistency".into(), json!(consistency_name(bench.consistency)));
    p.insert("registered".into(), json!(registered.succeeded()));
    p.insert("registrars".into(), json!(bench.registrars));
    p.insert("register_s".into(), json!(round3(register_time.as_secs_f64())));
    let per_s = registered.succeeded() as f64 / register_time.as_secs_f64().max(1e-9);
    p.insert("registers_per_s".into(), json!(per_s.round()));
    p.insert("register_p50_ms".into(), json!(latency.p50 as f64 / 1000.0));
    p.insert("register_p99_ms".into(), json!(latency.p99 as f64 / 1000.0));
    p.insert("list_instances".into(), json!(first.instances.len()));
    p.insert("list_more".into(), json!(first.more));
    p.insert("list_bytes".into(), json!(prost::Message::encoded_len(&first)));
    let kib = |v: Option<u64>| v.map_or(Value::Null, |v| json!(v));
    p.insert("rss_pid".into(), bench.rss_pid.map_or(Value::Null, |pid| json!(pid)));
    p.insert("rss_kib_before".into(), kib(rss_before));
    p.insert("rss_kib_registered".into(), kib(rss_registered));
    p.insert("rss_kib_after".into(), kib(rss_after));
    let mut report = Report::new(NAME, p, settings, tally, elapsed);
    // The key space is the service's instances; an instance has no value.
    report.key_size = bench.service.len();
    report.value_size = 0;
    report.keyspace = bench.instances as u64;
    Ok(report)
}

fn consistency_name(c: Consistency) -> &'static str {
    match c {
        Consistency::Linearizable => "linearizable",
        Consistency::Serializable => "serializable",
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One client: one List at a time until the budget is spent.
async fn list_task(
    mut client: RegistryClient<Channel>,
    request: ListRequest,
    expected: usize,
    shared: Arc<Shared>,
) -> Tally {
    let mut tally = Tally::new();
    while shared.claim() {
        let started = Instant::now();
        match client.list(request.clone()).await {
            Ok(response) => {
                tally.record(started.elapsed(), list_outcome(response.get_ref(), expected));
                shared.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            Err(status) => {
                tally.record_error(status_error(status));
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{KeySpace, Stop, TargetSpec};
    use latch_proto::v1::InstanceInfo;

    fn settings(target: &str) -> Settings {
        Settings {
            target: TargetSpec::parse(target).expect("valid target"),
            clients: 4,
            connections: 2,
            stop: Stop::Ops(10),
            keys: KeySpace::new(1, 32).expect("valid key space"),
            value_size: 0,
            timeout: Duration::from_secs(5),
        }
    }

    fn bench(service: &str, instances: usize) -> RegistryBench {
        RegistryBench {
            service: service.into(),
            instances,
            registrars: 64,
            registered: false,
            consistency: Consistency::Linearizable,
            rss_pid: None,
        }
    }

    #[test]
    fn instances_have_distinct_ids_and_addresses() {
        let first = instance("web", 0);
        assert_eq!((first.id.as_str(), first.address.as_str(), first.port), ("i00000", "10.0.0.1", PORT));
        assert_eq!(instance("web", 9_999).address, "10.0.39.16");
        assert_eq!(instance("web", 254).address, "10.0.0.255");
        assert_eq!(instance("web", 255).address, "10.0.1.0");
        let last = instance("web", MAX_INSTANCES - 1);
        assert_eq!(last.address, "10.255.255.254");
        let ids: std::collections::BTreeSet<_> = (0..20_000).map(|i| instance("web", i).id).collect();
        assert_eq!(ids.len(), 20_000);
    }

    #[test]
    fn only_latch_targets_and_valid_services_are_taken() {
        assert!(bench("web", 10).validate(&settings("latch://127.0.0.1:7379")).is_ok());
        let etcd = bench("web", 10).validate(&settings("etcd://127.0.0.1:2379")).expect_err("etcd");
        assert!(etcd.to_string().contains("etcd has no service registry"), "{etcd}");
        for bad in ["", "Web", "-web", "a.b", "web_1"] {
            let e = bench(bad, 10).validate(&settings("latch://h:1")).expect_err(bad);
            assert!(e.to_string().contains("--service"), "{e}");
        }
        assert!(bench("web", 0).validate(&settings("latch://h:1")).is_err());
        let none = RegistryBench { registrars: 0, ..bench("web", 10) };
        assert!(none
            .validate(&settings("latch://h:1"))
            .expect_err("no registrars")
            .to_string()
            .contains("--registrars"));
    }

    #[test]
    fn a_list_is_complete_cut_or_short() {
        let of = |n: usize, more: bool| ListResponse {
            instances: vec![InstanceInfo::default(); n],
            more,
            ..Default::default()
        };
        assert_eq!(list_outcome(&of(10, false), 10), "complete");
        assert_eq!(list_outcome(&of(4, true), 10), "cut");
        assert_eq!(list_outcome(&of(9, false), 10), "short");
    }

    #[test]
    fn resident_memory_is_read_from_the_vmrss_line() {
        let status = "Name:\tlatch\nVmPeak:\t  900 kB\nVmRSS:\t   16560 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(vm_rss_kib(status), Some(16_560));
        assert_eq!(vm_rss_kib("Name:\tlatch\n"), None);
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }
}
