//! A cluster of real `latch server` processes on 127.0.0.1, for the tests of this binary.
//!
//! Each member gets ports chosen up front (bound on port 0, read, released) so that
//! `--initial-cluster` can name every peer before any member starts, a data dir in the
//! cluster's temp dir, and a log file there (`member-N.log`, stdout and stderr, appended across
//! restarts). Dropping the [`Cluster`] SIGKILLs every member; if the test is failing it also
//! prints the tail of each log and keeps the temp dir for a look.
//!
//! Members started with `--fault-injection` can be partitioned from each other
//! ([`Cluster::partition`], [`Cluster::isolate`], [`Cluster::heal_all`]) through the test-only
//! `Faults` service on their peer ports. Also here: a plain HTTP GET for the metrics port
//! ([`http_get`], [`sample`]).

use std::collections::HashSet;
use std::fs::File;
use std::future::Future;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use latch_client::{prefix_range, Client, ClientOptions, RangeRequest, StatusResponse};
use latch_proto::internal::faults_client::FaultsClient;
use latch_proto::internal::{HealRequest, PartitionRequest};
use latch_proto::v1::kv_client::KvClient;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::transport::Channel;

/// The raft tick of test clusters unless a test passes its own `--tick-interval`: elections
/// time out after 10–20 ticks, so a lost leader is replaced within about half a second.
pub const TICK: &str = "20ms";
/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(20);
/// Time for a member to come up and serve, and for a cluster to agree on a leader. Generous:
/// debug builds on a shared 2-core box.
pub const STARTUP: Duration = Duration::from_secs(20);
/// Lines of each member's log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// The path of the `latch` binary cargo built for these tests.
pub fn latch_bin() -> &'static str {
    env!("CARGO_BIN_EXE_latch")
}

/// A tiny xorshift: a load generator's choices from its own seed, the same on every run.
pub struct Rng(pub u64);

impl Rng {
    /// The next number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Polls `check` every few milliseconds until it returns `Ok`, and returns that value; panics
/// after `timeout` naming `what` was expected and the last value `check` observed (its `Err`).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("expected {what} within {timeout:?}; last observed: {last}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// A free port on 127.0.0.1, never one this process handed out before (the kernel may hand a
/// released port to the next bind of port 0).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if given.insert(port) {
            return port;
        }
    }
}

/// One member of a test cluster.
pub struct Member {
    pub id: u64,
    pub client_addr: String,
    pub peer_addr: String,
    /// Metrics, health and readiness (`--http-addr`); every member needs its own, or test
    /// clusters running in parallel would all want the default port.
    pub http_addr: String,
    /// The DNS port (`--dns-addr`, UDP and TCP), its own for the same reason.
    pub dns_addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    /// For [`Cluster::status_of`]: answers or fails within a few seconds, no retries.
    status_client: Client,
}

impl Member {
    /// Member `id` on free ports of 127.0.0.1, its data dir and log in `dir`; not started.
    async fn on_free_ports(id: u64, dir: &std::path::Path) -> Member {
        let client_addr = format!("127.0.0.1:{}", free_port());
        let peer_addr = format!("127.0.0.1:{}", free_port());
        let http_addr = format!("127.0.0.1:{}", free_port());
        let dns_addr = format!("127.0.0.1:{}", free_port());
        let status_client = Client::connect_with(
            [client_addr.clone()],
            ClientOptions {
                request_timeout: Duration::from_secs(3),
                retry_budget: Duration::ZERO,
                writes_to_leader: false,
                ..ClientOptions::default()
            },
        )
        .await
        .unwrap();
        Member {
            id,
            client_addr,
            peer_addr,
            http_addr,
            dns_addr,
            data_dir: dir.join(format!("member-{id}")),
            log: dir.join(format!("member-{id}.log")),
            child: None,
            status_client,
        }
    }
}

/// A cluster of `latch server` processes, one per member: ids 1..=n, and those added since
/// ([`Cluster::new_member`]).
pub struct Cluster {
    dir: TempDir,
    members: Vec<Member>,
    initial_cluster: String,
    flags: Vec<String>,
}

impl Cluster {
    /// Starts `n` members with `extra_flags` added to each command line (`--tick-interval`
    /// defaults to [`TICK`]) and waits until each one serves client requests. Does not wait
    /// for a leader: see [`Cluster::leader`].
    pub async fn start(n: u64, extra_flags: &[&str]) -> Cluster {
        let mut cluster = Cluster::prepare(n, extra_flags).await;
        cluster.start_all().await;
        cluster
    }

    /// Members 1..=n on free ports, with `extra_flags` as for [`Cluster::start`], not started:
    /// a test may make their data dirs first (`latch snapshot restore` with
    /// [`Cluster::member_command`]), then [`Cluster::start_all`].
    pub async fn prepare(n: u64, extra_flags: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new().prefix("latch-it-").tempdir().unwrap();
        let mut members = Vec::new();
        for id in 1..=n {
            members.push(Member::on_free_ports(id, dir.path()).await);
        }
        let initial_cluster =
            members.iter().map(|m| format!("{}={}", m.id, m.peer_addr)).collect::<Vec<_>>().join(",");
        let mut flags: Vec<String> = extra_flags.iter().map(|f| f.to_string()).collect();
        if !flags.iter().any(|f| f == "--tick-interval") {
            flags.extend(["--tick-interval".to_string(), TICK.to_string()]);
        }
        Cluster { dir, members, initial_cluster, flags }
    }

    /// Starts every member not running and waits until each serves client requests.
    pub async fn start_all(&mut self) {
        let stopped: Vec<u64> = self.members.iter().filter(|m| m.child.is_none()).map(|m| m.id).collect();
        for id in &stopped {
            self.spawn(*id);
        }
        for id in stopped {
            self.wait_serving(id).await;
        }
    }

    /// The directory the members' data dirs and logs are in (a test's other files may go there).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn member(&self, id: u64) -> &Member {
        self.members.iter().find(|m| m.id == id).unwrap_or_else(|| panic!("no member {id}"))
    }

    fn member_mut(&mut self, id: u64) -> &mut Member {
        self.members.iter_mut().find(|m| m.id == id).unwrap_or_else(|| panic!("no member {id}"))
    }

    /// Every member's id.
    pub fn ids(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.id).collect()
    }

    /// The ids of the members whose process was started and not killed.
    pub fn live_ids(&self) -> Vec<u64> {
        self.members.iter().filter(|m| m.child.is_some()).map(|m| m.id).collect()
    }

    /// The cluster id the members derive from their `--initial-cluster` (what a peer names in
    /// its messages).
    pub fn cluster_id(&self) -> u64 {
        let spec: String = self.initial_cluster.split(',').map(|p| format!("{p},")).collect();
        latch::config::fnv1a(spec.as_bytes())
    }

    /// A new member under the next id, on free ports, not started: `latch cluster add` it,
    /// then [`Cluster::restart`] starts it with the cluster's `--initial-cluster` and its own
    /// `--peer-addr`, as an operator would.
    pub async fn new_member(&mut self) -> u64 {
        let id = self.members.iter().map(|m| m.id).max().unwrap_or(0) + 1;
        let member = Member::on_free_ports(id, self.dir.path()).await;
        self.members.push(member);
        id
    }

    /// The `--initial-cluster` every member runs with.
    pub fn initial_cluster(&self) -> &str {
        &self.initial_cluster
    }

    /// The command line that (re)starts member `id` as configured: `latch server --id …`.
    /// Tests may change it (e.g. add a flag) and run it themselves.
    pub fn server_command(&self, id: u64, initial_cluster: &str) -> Command {
        self.member_command(id, &["server"], initial_cluster)
    }

    /// `latch COMMAND… --id …` with every flag member `id` runs with (`latch snapshot restore
    /// FILE` takes them too).
    pub fn member_command(&self, id: u64, command: &[&str], initial_cluster: &str) -> Command {
        let m = self.member(id);
        let mut cmd = Command::new(latch_bin());
        cmd.args(command)
            .arg("--id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--client-addr")
            .arg(&m.client_addr)
            .arg("--peer-addr")
            .arg(&m.peer_addr)
            .arg("--http-addr")
            .arg(&m.http_addr)
            .arg("--dns-addr")
            .arg(&m.dns_addr)
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .args(&self.flags)
            // Plain text in the log files.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    /// Starts member `id`'s process, its output appended to its log.
    fn spawn(&mut self, id: u64) {
        self.spawn_with(id, &[]);
    }

    /// [`Cluster::spawn`] with `extra_flags` on this start's command line.
    fn spawn_with(&mut self, id: u64, extra_flags: &[&str]) {
        let mut cmd = self.server_command(id, &self.initial_cluster.clone());
        cmd.args(extra_flags);
        let m = self.member_mut(id);
        assert!(m.child.is_none(), "member {id} is already running");
        let mut log = File::options().create(true).append(true).open(&m.log).unwrap();
        writeln!(log, "==== harness: starting member {id}: {cmd:?}").unwrap();
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        m.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("cannot start member {id}: {e}")));
    }

    /// Waits until member `id` answers a cluster status call; fails at once if its process
    /// exits meanwhile, with the tail of its log.
    async fn wait_serving(&mut self, id: u64) {
        let deadline = Instant::now() + STARTUP;
        loop {
            let exited = self.member_mut(id).child.as_mut().and_then(|c| c.try_wait().unwrap());
            if let Some(status) = exited {
                self.member_mut(id).child = None;
                panic!("member {id} exited ({status}) while starting (its log is printed below)");
            }
            let last = match self.status_of(id).await {
                Ok(_) => return,
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "expected member {id} to serve client requests within {STARTUP:?}; last error: {last}"
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILLs member `id` (no chance to flush or say goodbye) and reaps it.
    pub fn kill(&mut self, id: u64) {
        let m = self.member_mut(id);
        let mut child = m.child.take().unwrap_or_else(|| panic!("member {id} is not running"));
        // std's Child::kill sends SIGKILL.
        child.kill().unwrap();
        child.wait().unwrap();
        let mut log = File::options().append(true).open(&m.log).unwrap();
        writeln!(log, "==== harness: member {id} killed (SIGKILL)").unwrap();
    }

    /// Sends `signal` to member `id`'s process (SIGSTOP freezes it: its sockets stay open but
    /// nothing answers; SIGCONT resumes it).
    pub fn signal(&self, id: u64, signal: rustix::process::Signal) {
        let m = self.member(id);
        let pid = m.child.as_ref().and_then(|c| rustix::process::Pid::from_raw(c.id() as i32));
        let pid = pid.unwrap_or_else(|| panic!("member {id} is not running"));
        rustix::process::kill_process(pid, signal).unwrap_or_else(|e| panic!("signal to member {id}: {e}"));
    }

    /// The names of member `id`'s threads (`/proc/PID/task/*/comm`).
    pub fn thread_names(&self, id: u64) -> Vec<String> {
        let m = self.member(id);
        let pid = m.child.as_ref().map(|c| c.id()).unwrap_or_else(|| panic!("member {id} is not running"));
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap_or_else(|e| panic!("member {id}'s threads: {e}"));
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_string())
            .collect()
    }

    /// Stops member `id` as an operator would (SIGTERM: it leaves its state durable) and reaps
    /// it.
    pub async fn stop(&mut self, id: u64) {
        self.signal(id, rustix::process::Signal::TERM);
        let status = self.exit_of(id, STARTUP).await;
        assert!(status.is_some(), "member {id} should stop on SIGTERM within {STARTUP:?}");
    }

    /// Waits up to `timeout` for member `id`'s process to exit by itself; reaps it and returns
    /// how it exited, or `None` if it still runs.
    pub async fn exit_of(&mut self, id: u64, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.member_mut(id);
            let child = m.child.as_mut().unwrap_or_else(|| panic!("member {id} is not running"));
            if let Some(status) = child.try_wait().unwrap() {
                m.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts member `id` again on its data dir without waiting for it (it may stop by itself
    /// soon: see [`Cluster::exit_of`]).
    pub fn start_again(&mut self, id: u64) {
        self.spawn(id);
    }

    /// Starts member `id` again on its data dir and waits until it serves.
    pub async fn restart(&mut self, id: u64) {
        self.restart_with(id, &[]).await;
    }

    /// [`Cluster::restart`] with `extra_flags` on this start's command line only.
    pub async fn restart_with(&mut self, id: u64, extra_flags: &[&str]) {
        self.spawn_with(id, extra_flags);
        self.wait_serving(id).await;
    }

    /// A client over every member's endpoint (killed ones included).
    pub async fn client(&self) -> Client {
        Client::connect(self.members.iter().map(|m| m.client_addr.clone())).await.unwrap()
    }

    /// `n` clients over every member's endpoint, each with its own connections, that give an
    /// attempt 500 ms and a call 2 s: the load a fault test keeps up while members fail.
    pub async fn impatient_clients(&self, n: u64) -> Vec<Client> {
        let endpoints: Vec<String> = self.members.iter().map(|m| m.client_addr.clone()).collect();
        let options = ClientOptions {
            request_timeout: Duration::from_millis(500),
            retry_budget: Duration::from_secs(2),
            ..ClientOptions::default()
        };
        let mut clients = Vec::new();
        for _ in 0..n {
            clients.push(Client::connect_with(endpoints.clone(), options).await.unwrap());
        }
        clients
    }

    /// A client over these members' endpoints only.
    pub async fn client_of_many(&self, ids: &[u64]) -> Client {
        Client::connect(ids.iter().map(|id| self.member(*id).client_addr.clone())).await.unwrap()
    }

    /// A client that talks to member `id` alone (unless it answers UNAVAILABLE naming the
    /// leader): its writes are not sent to the leader it names.
    pub async fn client_of(&self, id: u64) -> Client {
        let options = ClientOptions { writes_to_leader: false, ..ClientOptions::default() };
        Client::connect_with([self.member(id).client_addr.clone()], options).await.unwrap()
    }

    /// The cluster as member `id` sees it, or why it did not answer within a few seconds.
    pub async fn status_of(&self, id: u64) -> Result<StatusResponse, String> {
        self.member(id).status_client.cluster_status().await.map_err(|e| format!("member {id}: {e}"))
    }

    /// Member `id`'s account of itself (role, applied index, …), from its own status answer.
    pub async fn self_status(&self, id: u64) -> Result<latch_client::Member, String> {
        let status = self.status_of(id).await?;
        status
            .members
            .into_iter()
            .find(|m| m.id == id)
            .ok_or_else(|| format!("member {id} does not list itself in its status"))
    }

    /// Waits until every live member names the same leader in the same term, and that leader
    /// is live and says it is the leader; returns its id.
    pub async fn leader(&self) -> u64 {
        self.leader_among(&self.live_ids()).await
    }

    /// Waits until members `ids` name the same leader in the same term, and that leader is one
    /// of them and says it is the leader; returns its id. The other members are not asked.
    pub async fn leader_among(&self, ids: &[u64]) -> u64 {
        let live = ids.to_vec();
        let what = format!("members {live:?} to agree on one leader among them");
        eventually(&what, STARTUP, || {
            let live = live.clone();
            async move {
                let mut views = Vec::new();
                for id in &live {
                    let s = self.status_of(*id).await?;
                    let role =
                        s.members.iter().find(|m| m.id == *id).map(|m| m.role.clone()).unwrap_or_default();
                    views.push((*id, s.leader, s.term, role));
                }
                let (_, leader, term, _) = views[0].clone();
                let agreed = leader != 0 && views.iter().all(|v| v.1 == leader && v.2 == term);
                let leader_says_so = views.iter().any(|v| v.0 == leader && v.3 == "leader");
                if agreed && leader_says_so {
                    Ok(leader)
                } else {
                    Err(format!("(member, leader, term, own role): {views:?}"))
                }
            }
        })
        .await
    }

    /// A raw gRPC KV client of member `id` alone: unlike [`Client`] it neither retries nor
    /// follows leader hints, so what it gets is member `id`'s own answer.
    pub async fn kv_of_only(&self, id: u64) -> KvClient<Channel> {
        let addr = format!("http://{}", self.member(id).client_addr);
        KvClient::connect(addr).await.unwrap_or_else(|e| panic!("cannot connect to member {id}: {e}"))
    }

    /// Every key and value in member `id`'s own applied state (a serializable read), with the
    /// revision it was read at.
    pub async fn local_kvs(&self, id: u64) -> Result<(i64, Vec<(String, String)>), String> {
        let (key, range_end) = prefix_range(b"");
        let request = RangeRequest { key, range_end, serializable: true, ..Default::default() };
        let client = &self.member(id).status_client;
        let r = client.range(request).await.map_err(|e| format!("member {id}: {e}"))?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let revision = r.header.map_or(0, |h| h.revision);
        Ok((revision, r.kvs.iter().map(|kv| (text(&kv.key), text(&kv.value))).collect()))
    }

    /// Cuts the links between `member` and each of `peers`, in both directions and at both
    /// ends: each drops the other's raft messages until [`Cluster::heal_all`]. The members must
    /// run with `--fault-injection`.
    pub async fn partition(&self, member: u64, peers: &[u64]) {
        self.block(member, peers).await;
        for peer in peers {
            self.block(*peer, &[member]).await;
        }
    }

    /// Cuts `member` off from every other member (see [`Cluster::partition`]).
    pub async fn isolate(&self, member: u64) {
        let others: Vec<u64> = self.ids().into_iter().filter(|id| *id != member).collect();
        self.partition(member, &others).await;
    }

    /// Unblocks every link on every live member.
    pub async fn heal_all(&self) {
        for id in self.live_ids() {
            let state = self.faults_of(id).await.heal(HealRequest {}).await;
            let state = state.unwrap_or_else(|e| panic!("Faults.Heal on member {id} failed: {e}"));
            assert!(state.into_inner().blocked.is_empty(), "member {id} should block no peer once healed");
        }
    }

    /// Member `id` drops raft messages to and from `peers`.
    async fn block(&self, id: u64, peers: &[u64]) {
        let request = PartitionRequest { peers: peers.to_vec() };
        let state = self.faults_of(id).await.partition(request).await.unwrap_or_else(|e| {
            panic!("Faults.Partition({peers:?}) on member {id} failed (started with --fault-injection?): {e}")
        });
        let blocked = state.into_inner().blocked;
        assert!(
            peers.iter().all(|p| blocked.contains(p)),
            "member {id} should block {peers:?}, blocks {blocked:?}"
        );
    }

    /// A client of the `Faults` service on member `id`'s peer port.
    pub async fn faults_of(&self, id: u64) -> FaultsClient<Channel> {
        let addr = format!("http://{}", self.member(id).peer_addr);
        FaultsClient::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("cannot reach member {id}'s peer port: {e}"))
    }

    /// Member `id`'s metrics (OpenMetrics text from its HTTP port).
    pub async fn metrics_of(&self, id: u64) -> Result<String, String> {
        let answer = http_get(&self.member(id).http_addr, "/metrics").await?;
        match answer.status {
            200 => Ok(answer.body),
            status => Err(format!("member {id}'s /metrics answered {status}: {}", answer.body)),
        }
    }

    /// The last `n` lines of member `id`'s log.
    pub fn log_tail(&self, id: u64, n: usize) -> String {
        let text = std::fs::read_to_string(&self.member(id).log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for id in self.ids() {
                eprintln!(
                    "---- member {id}: last {LOG_TAIL_LINES} lines of {}",
                    self.member(id).log.display()
                );
                eprintln!("{}", self.log_tail(id, LOG_TAIL_LINES));
            }
            self.dir.disable_cleanup(true);
            eprintln!("---- kept the cluster's data dirs and logs in {}", self.dir.path().display());
        }
    }
}

/// An HTTP answer: status code, headers (lower-cased names), body.
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close`: a plain client of a few lines, so the
/// test depends on no HTTP library. The server sends a Content-Length body, never chunks.
pub async fn http_get(addr: &str, path: &str) -> Result<HttpAnswer, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8(raw).map_err(|e| format!("not UTF-8: {e}"))?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no header end in {text:?}"))?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpAnswer { status, headers, body: body.to_string() })
}

/// The value of the sample `series` (name and labels exactly as printed) in metrics text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}
