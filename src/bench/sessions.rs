//! `session-keepalive`: `--sessions` sessions (etcd: leases) created before the clock starts,
//! then kept alive for the run over `--connections` keepalive streams, each stream answering in
//! order. Every keepalive is timed from its send to its answer. Outcome: `kept`.
//!
//! Pacing, as each system's own client does it: Latch renews when half the TTL is left of the
//! last grant (see `latch_client::Session`); etcd's clients every third of the TTL. The first
//! keepalives are spread over the first half TTL.
//!
//! Besides the report's latencies: `sessions_lost` (a keepalive answered NOT_FOUND, or an etcd
//! lease answered with TTL 0: the session expired although it was kept alive — must be 0) and
//! `late_keepalives` (sent after the lease the client held ran out: the load generator fell
//! behind, and a lost session would be its fault).
//!
//! Latch keepalives go to the leader (found through `cluster status`; a stream that ends
//! UNAVAILABLE is opened again there); etcd's go to any member (followers forward them). etcd's
//! LeaseKeepAlive messages are declared here (two fields of etcd's `rpc.proto`), since the etcd
//! client keeps one stream per lease and its stubs are private.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use latch_proto::v1::session_client::SessionClient;
use latch_proto::v1::KeepAliveRequest;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Connection, Error, OpError, Progress, Report, Settings, Stop, System, Tally};

/// Sessions created at once while preparing.
const CREATES_IN_FLIGHT: usize = 256;

/// What `session-keepalive` is asked.
#[derive(Debug, Clone, Copy)]
pub struct KeepAlive {
    pub sessions: usize,
    pub ttl: Duration,
}

/// One session of the run, as its stream keeps it.
#[derive(Debug, Clone)]
struct Kept {
    /// The Latch session id, or the etcd lease id in decimal.
    id: String,
    /// When the lease the client holds runs out.
    lease_end: Instant,
    lost: bool,
}

/// Counts the stream tasks share.
#[derive(Default)]
struct Counts {
    lost: AtomicU64,
    late: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Runs the benchmark; see the module doc.
pub async fn run(
    ka: KeepAlive,
    settings: &Settings,
    progress: Progress,
    interrupt: impl Future<Output = ()> + Send + 'static,
) -> Result<Report, Error> {
    settings.validate()?;
    if ka.sessions == 0 {
        return Err(Error::Settings("--sessions must be at least 1".into()));
    }
    if settings.target.system == System::Zk {
        return Err(Error::Settings("session-keepalive runs against latch:// or etcd:// targets".into()));
    }
    let connections =
        super::target::connect(&settings.target, settings.connections, settings.timeout).await?;
    let endpoints = stream_endpoints(&connections[0], settings).await?;
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clock = Arc::new(Clock { started: OnceLock::new(), duration: settings.stop });
    // The streams run from the start: a session is kept alive from its creation, however long
    // creating all of them takes; the clock starts once all exist.
    let mut tasks = Vec::new();
    let mut adders = Vec::new();
    for s in 0..settings.connections {
        let (add, adds) = mpsc::unbounded_channel();
        adders.push(add);
        let endpoint = endpoints[s % endpoints.len()].clone();
        let (system, counts, stop, clock) =
            (settings.target.system, counts.clone(), stop.clone(), clock.clone());
        tasks.push(tokio::spawn(stream_task(system, endpoint, adds, ka.ttl, clock, counts, stop)));
    }
    progress.sessions(ka.sessions as u64);
    create(&connections, ka, &progress, &adders)
        .await
        .map_err(|error| Error::Prepare { workload: "session-keepalive", error })?;
    drop(adders);
    let started = Instant::now();
    let _ = clock.started.set(started);
    let interrupter = tokio::spawn({
        let stop = stop.clone();
        async move {
            interrupt.await;
            stop.store(true, Ordering::Relaxed);
        }
    });
    progress.timing(settings.stop);
    let ticker = tokio::spawn({
        let (counts, progress, stop_at) = (counts.clone(), progress.clone(), settings.stop);
        async move {
            loop {
                tokio::time::sleep(super::progress::REFRESH).await;
                let (ok, failed) = (counts.ok.load(Ordering::Relaxed), counts.failed.load(Ordering::Relaxed));
                progress.update(stop_at, ok, failed, started.elapsed());
            }
        }
    });
    let mut tally = Tally::new();
    let mut panicked = None;
    for task in tasks {
        match task.await {
            Ok(t) => tally.merge(t),
            Err(e) => panicked = Some(e.to_string()),
        }
    }
    let elapsed = started.elapsed();
    ticker.abort();
    interrupter.abort();
    progress.finish();
    if let Some(why) = panicked {
        return Err(Error::Task(why));
    }
    let mut parameters = serde_json::Map::new();
    parameters.insert("sessions".into(), ka.sessions.into());
    parameters.insert("ttl_ms".into(), (ka.ttl.as_millis() as u64).into());
    parameters.insert("sessions_lost".into(), counts.lost.load(Ordering::Relaxed).into());
    parameters.insert("late_keepalives".into(), counts.late.load(Ordering::Relaxed).into());
    Ok(Report::new("session-keepalive", parameters, settings, tally, elapsed))
}

/// Creates the sessions (etcd: grants the leases), `CREATES_IN_FLIGHT` at a time, handing each
/// to a stream as soon as it exists.
async fn create(
    connections: &[Connection],
    ka: KeepAlive,
    progress: &Progress,
    adders: &[mpsc::UnboundedSender<(String, Instant)>],
) -> Result<(), OpError> {
    let mut created = futures::stream::iter(0..ka.sessions)
        .map(|i| {
            let connection = connections[i % connections.len()].clone();
            async move {
                match connection {
                    Connection::Latch(client) => Ok::<String, OpError>(
                        client.create_session(ka.ttl, "bench").await.map_err(OpError::from)?.0,
                    ),
                    #[cfg(feature = "etcd")]
                    Connection::Etcd(client) => {
                        let ttl = ka.ttl.as_secs().max(1) as i64;
                        let granted = client.lease_client().grant(ttl, None).await.map_err(OpError::from)?;
                        Ok(granted.id().to_string())
                    }
                    #[cfg(feature = "zk")]
                    Connection::Zk(_) => Err(OpError {
                        kind: "CLIENT",
                        message: "ZooKeeper sessions are not benchmarked here".into(),
                    }),
                }
            }
        })
        .buffer_unordered(CREATES_IN_FLIGHT);
    let mut n = 0;
    while let Some(id) = created.next().await {
        let _ = adders[n % adders.len()].send((id?, Instant::now()));
        n += 1;
        progress.loaded(1);
    }
    Ok(())
}

/// Where the keepalive streams go: the Latch leader; every etcd endpoint given.
async fn stream_endpoints(connection: &Connection, settings: &Settings) -> Result<Vec<String>, Error> {
    match connection {
        Connection::Latch(client) => {
            let status = client.cluster_status().await.map_err(|e| Error::Unreachable {
                target: settings.target.to_string(),
                error: OpError::from(e),
            })?;
            let leader = status.members.iter().find(|m| m.id == status.leader && !m.client_addr.is_empty());
            Ok(vec![leader.map_or_else(|| settings.target.endpoints[0].clone(), |m| m.client_addr.clone())])
        }
        #[allow(unreachable_patterns)]
        _ => Ok(settings.target.endpoints.clone()),
    }
}

/// When the timed phase started, and how long it lasts.
struct Clock {
    started: OnceLock<Instant>,
    duration: Stop,
}

impl Clock {
    fn deadline(&self) -> Option<Instant> {
        let started = *self.started.get()?;
        Some(match self.duration {
            Stop::Duration(d) => started + d,
            Stop::Ops(_) => started + Duration::from_secs(3600),
        })
    }

    fn ops_budget(&self) -> u64 {
        match self.duration {
            Stop::Ops(n) => n,
            Stop::Duration(_) => u64::MAX,
        }
    }

    /// Whether a keepalive sent at `sent` is timed (the clock had started).
    fn timed(&self, sent: Instant) -> bool {
        self.started.get().is_some_and(|s| sent >= *s)
    }
}

/// Keeps the sessions `adds` hands it alive over one stream until the timed phase ends (or
/// `stop`), reopening the stream when it breaks.
async fn stream_task(
    system: System,
    mut endpoint: String,
    mut adds: mpsc::UnboundedReceiver<(String, Instant)>,
    ttl: Duration,
    clock: Arc<Clock>,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::new();
    let mut sessions: Vec<Kept> = Vec::new();
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    let mut adding = true;
    // When a session's next keepalive is due after an answer (or its creation).
    let after = |granted: Duration| match system {
        System::Latch => granted.saturating_sub(ttl / 2).max(granted / 4),
        _ => ttl / 3,
    };
    let over = |counts: &Counts| {
        stop.load(Ordering::Relaxed)
            || clock.deadline().is_some_and(|d| Instant::now() >= d)
            || counts.ok.load(Ordering::Relaxed) >= clock.ops_budget()
    };
    while !over(&counts) {
        let (tx, mut answers) = match open(system, &endpoint).await {
            Ok(pair) => pair,
            Err(e) => {
                tally.record_error(e);
                counts.failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut in_flight: VecDeque<(usize, Instant)> = VecDeque::new();
        while !over(&counts) {
            let horizon = Instant::now() + Duration::from_millis(50);
            let next_due = due.peek().map_or(horizon, |Reverse((at, _))| *at).min(horizon);
            tokio::select! {
                add = adds.recv(), if adding => match add {
                    Some((id, created)) => {
                        sessions.push(Kept { id, lease_end: created + ttl, lost: false });
                        due.push(Reverse((created + after(ttl), sessions.len() - 1)));
                    }
                    None => adding = false,
                },
                _ = tokio::time::sleep_until(next_due.into()) => {
                    while let Some(Reverse((at, i))) = due.peek().copied() {
                        if at > Instant::now() {
                            break;
                        }
                        due.pop();
                        let sent = Instant::now();
                        if sent > sessions[i].lease_end {
                            counts.late.fetch_add(1, Ordering::Relaxed);
                        }
                        if tx.send(sessions[i].id.clone()).await.is_err() {
                            due.push(Reverse((sent, i)));
                            break;
                        }
                        in_flight.push_back((i, sent));
                    }
                }
                answer = answers.recv() => {
                    let Some((i, sent)) = in_flight.pop_front() else { break };
                    match answer {
                        Some(Ok(granted)) if granted > Duration::ZERO => {
                            if clock.timed(sent) {
                                tally.record(sent.elapsed(), "kept");
                                counts.ok.fetch_add(1, Ordering::Relaxed);
                            }
                            sessions[i].lease_end = sent + granted;
                            due.push(Reverse((sent + after(granted), i)));
                        }
                        Some(Ok(_)) | Some(Err(Answer::Gone(_))) => {
                            if !sessions[i].lost {
                                sessions[i].lost = true;
                                counts.lost.fetch_add(1, Ordering::Relaxed);
                            }
                            let why = match answer {
                                Some(Err(Answer::Gone(why))) => why,
                                _ => "granted no lease".to_string(),
                            };
                            let message = format!("session {}: {why}", sessions[i].id);
                            tally.record_error(OpError { kind: "NOT_FOUND", message });
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                            // A Latch stream ends after NOT_FOUND: open it again.
                            if system == System::Latch {
                                break;
                            }
                        }
                        Some(Err(Answer::Failed(e, leader))) => {
                            tally.record_error(e);
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                            due.push(Reverse((Instant::now(), i)));
                            if let Some(l) = leader {
                                endpoint = l;
                            }
                            break;
                        }
                        None => {
                            due.push(Reverse((Instant::now(), i)));
                            break;
                        }
                    }
                }
            }
        }
        // Whatever was in flight on a broken stream is sent again on the next one.
        for (i, _) in in_flight {
            if !sessions[i].lost {
                due.push(Reverse((Instant::now(), i)));
            }
        }
    }
    tally
}

/// How a keepalive failed.
enum Answer {
    /// The session (lease) is gone.
    Gone(String),
    /// Any other failure, with the leader a member named, if it did.
    Failed(OpError, Option<String>),
}

type Answers = mpsc::Receiver<Option<Result<Duration, Answer>>>;

/// Opens a keepalive stream at `endpoint`: a sender of session ids, and the answers in order
/// (the lease granted), `None` when the stream ended. The call is made in a task of its own,
/// so that the first keepalive can be sent before the server answers the call (etcd's server
/// sends nothing, headers included, before its first answer).
async fn open(system: System, endpoint: &str) -> Result<(mpsc::Sender<String>, AnswersRx), OpError> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .map_err(|e| OpError { kind: "CLIENT", message: e.to_string() })?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| OpError { kind: "UNAVAILABLE", message: format!("{endpoint}: {e}") })?;
    let (tx, rx) = mpsc::channel::<String>(1024);
    let (answer_tx, answer_rx) = mpsc::channel(1024);
    match system {
        System::Latch => {
            tokio::spawn(async move {
                let requests = ReceiverStream::new(rx).map(|id| KeepAliveRequest { id });
                let call = SessionClient::new(channel).keep_alive(requests).await;
                let mut stream = match call {
                    Ok(response) => response.into_inner(),
                    Err(status) => {
                        let _ = answer_tx.send(Some(Err(failure(status)))).await;
                        return;
                    }
                };
                loop {
                    let answer = match stream.message().await {
                        Ok(Some(r)) => Some(Ok(Duration::from_millis(r.granted_ms.max(0) as u64))),
                        Ok(None) => None,
                        Err(status) => Some(Err(failure(status))),
                    };
                    let end = !matches!(answer, Some(Ok(_)));
                    if answer_tx.send(answer).await.is_err() || end {
                        return;
                    }
                }
            });
        }
        _ => etcd::open(channel, rx, answer_tx),
    }
    Ok((tx, AnswersRx(answer_rx)))
}

/// What a failed call says: the session is gone (NOT_FOUND), or another failure with the
/// leader a member named.
fn failure(status: tonic::Status) -> Answer {
    let leader = status
        .metadata()
        .get(latch_client::LEADER_ADDR_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let gone = status.code() == tonic::Code::NotFound;
    let e = OpError::from(latch_client::Error::from(status));
    if gone {
        Answer::Gone(e.message)
    } else {
        Answer::Failed(e, leader)
    }
}

/// The answers of one stream.
struct AnswersRx(Answers);

impl AnswersRx {
    async fn recv(&mut self) -> Option<Result<Duration, Answer>> {
        self.0.recv().await.flatten()
    }
}

/// etcd's `Lease.LeaseKeepAlive`, through tonic's generic client.
mod etcd {
    use super::*;

    /// `etcdserverpb.LeaseKeepAliveRequest` (etcd's api/etcdserverpb/rpc.proto).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LeaseKeepAliveRequest {
        #[prost(int64, tag = "1")]
        pub id: i64,
    }

    /// `etcdserverpb.LeaseKeepAliveResponse`: the header (tag 1) is skipped.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LeaseKeepAliveResponse {
        #[prost(int64, tag = "2")]
        pub id: i64,
        /// The lease's new TTL in seconds; 0 or less when it is gone.
        #[prost(int64, tag = "3")]
        pub ttl: i64,
    }

    pub fn open(
        channel: tonic::transport::Channel,
        rx: mpsc::Receiver<String>,
        answers: mpsc::Sender<Option<Result<Duration, Answer>>>,
    ) {
        tokio::spawn(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            if let Err(e) = grpc.ready().await {
                let e = OpError { kind: "UNAVAILABLE", message: e.to_string() };
                let _ = answers.send(Some(Err(Answer::Failed(e, None)))).await;
                return;
            }
            let requests = ReceiverStream::new(rx)
                .map(|id| LeaseKeepAliveRequest { id: id.parse().unwrap_or_default() });
            let path =
                tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.Lease/LeaseKeepAlive");
            let codec = tonic::codec::ProstCodec::<LeaseKeepAliveRequest, LeaseKeepAliveResponse>::default();
            let mut stream = match grpc.streaming(tonic::Request::new(requests), path, codec).await {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    let _ = answers.send(Some(Err(failure(status)))).await;
                    return;
                }
            };
            loop {
                let answer = match stream.message().await {
                    Ok(Some(r)) if r.ttl > 0 => Some(Ok(Duration::from_secs(r.ttl as u64))),
                    Ok(Some(r)) => Some(Err(Answer::Gone(format!("lease {} has TTL {}", r.id, r.ttl)))),
                    Ok(None) => None,
                    Err(status) => Some(Err(failure(status))),
                };
                let end = !matches!(answer, Some(Ok(_)) | Some(Err(Answer::Gone(_))));
                if answers.send(answer).await.is_err() || end {
                    return;
                }
            }
        });
    }
}
