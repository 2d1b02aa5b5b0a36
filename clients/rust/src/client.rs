//! The connection side of the client: endpoints, channels, and the retry loop every call goes
//! through.
//!
//! Retry contract: a call is resent only when resending cannot apply it twice. Reads have no
//! effect; every write carries a request id, chosen before the first attempt and kept across
//! attempts, and the server applies an id at most once. Errors that say the request itself is
//! wrong (`INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED`, `FAILED_PRECONDITION`, …) are never retried.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use latch_proto::v1::ResponseHeader;
use latch_proto::{
    format_cluster_id, parse_cluster_id, APPLIED_REVISION_METADATA, CLUSTER_ID_METADATA, SETTLED_METADATA,
    UNSETTLED_METADATA,
};
use tokio::time::Instant;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::interceptor::{InterceptedService, Interceptor};
use tonic::transport::Endpoint;
use tonic::{Code, Status};

use crate::Error;

pub use latch_proto::LEADER_ADDR_METADATA;

/// How long a TCP connection to an endpoint may take before the endpoint counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a connection is pinged, and how long an unanswered ping may take before the
/// connection counts as broken (its calls fail UNAVAILABLE and are retried elsewhere).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// What the failure of an attempt its endpoint did not answer in time says, before the time.
const NO_ANSWER: &str = "no answer within";

/// First pause between two attempts; doubled after each failed attempt up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(20);
/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Timeouts of a [`Client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// How long one attempt, at one endpoint, may take before it is abandoned (as
    /// `DEADLINE_EXCEEDED`) and the call moves to the next endpoint. Default 5 s.
    pub request_timeout: Duration,
    /// How long a call keeps retrying, across endpoints, before it returns the last error.
    /// A call never takes longer than the larger of this and `request_timeout`. Default 10 s.
    pub retry_budget: Duration,
    /// Whether writes go first to the leader the members name (as Chubby's clients talk to
    /// the master), rather than to the endpoint reads use, which would forward them. Saves
    /// the forward: a write answered by a follower costs the cluster a sixth more CPU, and on
    /// a real network a round trip more. Reads and streams stay spread over the endpoints.
    /// Default true; false keeps every call on the endpoints given (to test one member).
    pub writes_to_leader: bool,
    /// The cluster this client must talk to (its id, as `latch cluster status` shows it), named
    /// on every request from the first: a member of any other cluster refuses them all, so an
    /// endpoint list whose first answer would come from the wrong cluster never serves a
    /// call. Default `None`: the cluster is the one the first answer names.
    pub cluster_id: Option<u64>,
    /// How long an attempt may go unanswered before the call is also sent to the next
    /// endpoint, the first answer serving it (at most half the request timeout; `None`: never).
    /// A member frozen with its sockets open (stopped, a stuck VM, a host that drops its
    /// packets after the connect) is otherwise left only once the request timeout or the
    /// connection's ping gives up on it, so one such member first in a list shared by every
    /// script would fail them all while the others could serve. Calls that may wait on the
    /// server (a lock's grant, a campaign) and keepalives (which hedge by the lease) are not
    /// sent twice. Default 1 s.
    pub hedge_after: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(5),
            retry_budget: Duration::from_secs(10),
            writes_to_leader: true,
            cluster_id: None,
            hedge_after: Some(Duration::from_secs(1)),
        }
    }
}

/// A handle on a Latch cluster. Cheap to clone: clones share the connections.
///
/// Connections are opened lazily, on the first call that needs them, so
/// [`connect`](Client::connect) succeeds even while the cluster is down. Any member can serve
/// any call (followers forward writes to the leader); when one does not answer, the call moves
/// on to the next endpoint, or to the leader a member names. Every answer of a follower names
/// the leader, and writes go there once one is known ([`ClientOptions::writes_to_leader`]).
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: ClientOptions,
    targets: Mutex<Targets>,
    /// The highest revision of this client's acknowledged writes (keepalives aside): a
    /// serializable read answered below it is asked again (see `Client::range`).
    written: AtomicI64,
    /// The cluster this client talks to (shared with `Targets`, whose channels name it).
    cluster: Arc<Cluster>,
    /// Whether a hedged keepalive's first attempt runs on in the background (see
    /// `Client::probe`): one at a time, so a leader frozen for long, hedged around by every
    /// session's keepalives, holds at most one of them.
    probing: AtomicBool,
    /// How many of this client's calls have a hedge under way ([`MAX_HEDGES`] at most).
    hedging: AtomicUsize,
}

/// Most calls of one client with a hedge under way at once: a cluster slower than
/// `hedge_after` for every call would otherwise be sent every call twice, more load where
/// there is too much already (gRPC pairs its hedging with retry throttling for the same
/// reason). A member frozen first in the list is left by the first hedge that wins anyway.
const MAX_HEDGES: usize = 8;

/// A call's hedge slot ([`MAX_HEDGES`]), given back when dropped.
struct HedgeSlot<'a>(&'a AtomicUsize);

impl Drop for HedgeSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A background attempt's turn ([`Client::probe`]); ends it when dropped, however the attempt
/// ended.
pub(crate) struct Probe(Client);

impl Drop for Probe {
    fn drop(&mut self) {
        self.0.inner.probing.store(false, Ordering::Release);
    }
}

/// A member's connection, each request on it naming the client's cluster once known, and
/// the attempt's timeout when it has one ([`Stamp`]).
pub(crate) type Channel = InterceptedService<tonic::transport::Channel, Stamp>;

/// The cluster this client talks to: the one [`ClientOptions::cluster_id`] names, else the one
/// its first answer named (`latch-cluster-id`), for the client's life. Every request after names it, and a member of another cluster
/// refuses it (UNAVAILABLE, nothing done), so a stale leader hint never makes a write land in
/// another cluster; the client moves on from such a member. Requests sent before the first
/// answer name no cluster: with an endpoint list that mixes two clusters, one of them may be
/// served by the other cluster, and is then failed ([`Cluster::stray`]), not acknowledged.
#[derive(Debug, Default)]
struct Cluster(OnceLock<(u64, AsciiMetadataValue)>);

impl Cluster {
    /// The cluster `id`, known from the start.
    fn pinned(id: u64) -> Result<Cluster, Error> {
        let value = format_cluster_id(id)
            .parse()
            .map_err(|e| Error::InvalidEndpoint(format!("cluster id {id:#x} is no metadata value: {e}")))?;
        Ok(Cluster(OnceLock::from((id, value))))
    }

    fn id(&self) -> Option<u64> {
        self.0.get().map(|(id, _)| *id)
    }

    /// Whether an answer that named cluster `named` came from another cluster than this one.
    fn foreign(&self, named: Option<u64>) -> bool {
        named.is_some_and(|id| self.id().is_some_and(|ours| id != ours))
    }

    /// The error for a successful answer from `addr` that named cluster `named`, when that is
    /// not this client's: a request sent before the client knew its cluster (so naming none)
    /// reached a member of another one, which served it. It may have taken effect there, and
    /// its answer is not this cluster's, so it is not returned as one: INTERNAL, which no
    /// caller takes for its own cluster's verdict (a lock acquire is withdrawn). Only a client
    /// not told its cluster ([`ClientOptions::cluster_id`]) whose endpoints mix two clusters
    /// meets it. A call sent to a second member while the first has not answered yet (a hedge,
    /// `hedge_after`) may so take effect in both clusters, the other's effect unseen.
    fn stray(&self, named: Option<u64>, addr: &str) -> Option<Status> {
        let (named, ours) = (named?, self.id()?);
        self.foreign(Some(named)).then(|| {
            Status::internal(format!(
                "{addr}: answered by a member of cluster {}, not of cluster {} that this client talks to \
                 (its endpoints name members of two clusters; give it --cluster-id); the request may \
                 have taken effect there",
                format_cluster_id(named),
                format_cluster_id(ours)
            ))
        })
    }

    /// The cluster an answer names, learnt if none is known yet.
    fn learn(&self, metadata: &MetadataMap) -> Option<u64> {
        let named =
            metadata.get(CLUSTER_ID_METADATA).and_then(|v| v.to_str().ok()).and_then(parse_cluster_id)?;
        if self.0.get().is_none() {
            if let Ok(value) = format_cluster_id(named).parse() {
                let _ = self.0.set((named, value));
            }
        }
        Some(named)
    }
}

/// Puts on each request the cluster the client talks to, once known, and the timeout of the
/// attempt, if it has one and the request does not name its own: the member then answers
/// before it, with why, a request it cannot serve in time (no quorum, no leader), where the
/// client would otherwise only learn that it did not answer.
#[derive(Debug, Clone)]
pub(crate) struct Stamp {
    cluster: Arc<Cluster>,
    timeout: Option<Duration>,
}

impl Interceptor for Stamp {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some((_, value)) = self.cluster.0.get() {
            request.metadata_mut().insert(CLUSTER_ID_METADATA, value.clone());
        }
        if let Some(timeout) = self.timeout.filter(|_| !request.metadata().contains_key("grpc-timeout")) {
            request.set_timeout(timeout);
        }
        Ok(request)
    }
}

/// The endpoints known to the client: the ones it was given, plus leaders that members named.
#[derive(Debug)]
pub(crate) struct Targets {
    /// Never shrinks nor reorders, so an index taken under the lock stays valid after it; a
    /// learnt entry is replaced by a newer hint once [`MAX_HINTED_TARGETS`] were learnt, and
    /// what a call still holding its index then says is charged to nobody
    /// ([`Targets::holds`]).
    list: Vec<Target>,
    /// Where the next call starts: the endpoint that last answered, or the one after the last
    /// that failed.
    preferred: usize,
    /// Where the next write starts, when known: the member that last answered a write without
    /// naming another leader, or the leader a member last named.
    pub(crate) leader: Option<usize>,
    /// When each endpoint that has failed a call since it last answered one failed it: for
    /// [`DISTRUSTED_FOR`] after, no other member's hint makes it the leader. At most one entry
    /// per endpoint of `list`.
    pub(crate) failed: HashMap<usize, Instant>,
    /// The cluster the endpoints' requests name.
    cluster: Arc<Cluster>,
    /// How many of `list`'s first entries were given (the rest were learnt from hints).
    given: usize,
    /// The learnt entry (counted from `given`) a hint replaces next once
    /// [`MAX_HINTED_TARGETS`] were learnt: the oldest, as each replacement moves it on.
    next_replaced: usize,
    /// The last failure an attempt of any call met, with its endpoint: what a caller that
    /// waited in vain (a stream that never opened) can say of why.
    last_failure: Option<String>,
}

/// Most endpoints a client learns from leader hints, besides those it was given: past it, a
/// hint naming an unknown address takes the place of the oldest learnt one that is neither the
/// leader nor where calls start, so members that name ever new addresses (a cluster whose
/// members move) cannot grow the list, and its channels, without bound, and a long-lived client
/// still follows its leader.
const MAX_HINTED_TARGETS: usize = 16;

/// How long an endpoint that failed a call is not taken for the leader on another member's
/// word: a client that cannot reach the leader its peers reach (a partition of its own, a wrong
/// `--advertise-client-addr`) sends its writes through a member it reaches, forwarded, instead
/// of back to the leader on every write, paying a timeout each time.
const DISTRUSTED_FOR: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Target {
    /// `host:port`, without a scheme: compared with the leader hints servers send.
    addr: String,
    channel: tonic::transport::Channel,
    /// A connection of its own for long-lived streams (watches, observations), opened when the
    /// first one is: a stream its caller does not read holds HTTP/2 window of its connection,
    /// which must never starve the calls on `channel` (keepalives of sessions among them).
    streams: tonic::transport::Channel,
    /// What each request names (see [`Stamp`]).
    cluster: Arc<Cluster>,
}

/// The HTTP/2 connection window of the streams' connection: the protocol's largest (2^31 − 1).
const STREAMS_CONNECTION_WINDOW: u32 = (1 << 31) - 1;

/// Which of a member's connections a call goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    Calls,
    Streams,
}

/// Where a call starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The preferred endpoint (reads and streams).
    Preferred,
    /// The leader, when known (writes).
    Leader,
    /// A write starting at this endpoint (a hedged keepalive's attempts, each started where
    /// its caller chose).
    From(usize),
}

/// How long a call's attempts may take, and whether it may move on after a failure.
#[derive(Debug, Clone, Copy)]
struct Patience<'a> {
    /// What each attempt may take beyond the request timeout; `None`: as long as it takes.
    wait: Option<Duration>,
    /// The most each attempt may take, whatever `wait` says.
    cap: Option<Duration>,
    /// Once set, a failure ends the call: it tries no other member.
    stay: Option<&'a AtomicBool>,
    /// A write (with a request id): a refusal that settles nothing waits for the attempt still
    /// under way, and says when the write may still take effect.
    write: bool,
}

impl Patience<'_> {
    /// Each attempt within the request timeout, and on to the next member after a failure.
    const RETRY: Patience<'static> =
        Patience { wait: Some(Duration::ZERO), cap: None, stay: None, write: false };
}

impl Client {
    /// A client of the cluster reachable at these endpoints (`"host:port"`, or
    /// `"http://host:port"`), with the default [`ClientOptions`]. Opens no connection yet.
    ///
    /// Must be called within a tokio runtime.
    pub async fn connect(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Result<Client, Error> {
        Client::connect_with(endpoints, ClientOptions::default()).await
    }

    /// Like [`connect`](Client::connect), with these options.
    pub async fn connect_with(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
        options: ClientOptions,
    ) -> Result<Client, Error> {
        let mut list: Vec<Target> = Vec::new();
        let cluster = Arc::new(match options.cluster_id {
            Some(id) => Cluster::pinned(id)?,
            None => Cluster::default(),
        });
        for endpoint in endpoints {
            let target = Target::parse(&endpoint.into(), &cluster).map_err(Error::InvalidEndpoint)?;
            if !list.iter().any(|t| t.addr == target.addr) {
                list.push(target);
            }
        }
        if list.is_empty() {
            return Err(Error::InvalidEndpoint("no endpoints given".into()));
        }
        Ok(Client {
            inner: Arc::new(Inner {
                options,
                targets: Mutex::new(Targets {
                    given: list.len(),
                    next_replaced: 0,
                    list,
                    preferred: 0,
                    leader: None,
                    failed: HashMap::new(),
                    cluster: cluster.clone(),
                    last_failure: None,
                }),
                written: AtomicI64::new(0),
                cluster,
                probing: AtomicBool::new(false),
                hedging: AtomicUsize::new(0),
            }),
        })
    }

    /// The options this client was built with.
    pub fn options(&self) -> ClientOptions {
        self.inner.options
    }

    /// The endpoints known to this client (`host:port`): the ones given to
    /// [`connect`](Client::connect), then the leader addresses members have named since (the
    /// 16 most recent, each new one in the place of the oldest not in use).
    pub fn endpoints(&self) -> Vec<String> {
        self.targets().list.iter().map(|t| t.addr.clone()).collect()
    }

    /// The last failure any call of this client met (`"CODE: endpoint: message"`), retried or
    /// not; `None` if none failed yet. For a caller that waited in vain for something the client
    /// keeps retrying (a watch or an observation that never opened) to say why.
    pub fn last_failure(&self) -> Option<String> {
        self.targets().last_failure.clone()
    }

    /// The turn to run an attempt on in the background only to learn whether its member
    /// answers, if no other such attempt of this client runs.
    pub(crate) fn probe(&self) -> Option<Probe> {
        let free =
            self.inner.probing.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok();
        free.then(|| Probe(self.clone()))
    }

    /// One of the [`MAX_HEDGES`] slots for a call's hedge, if one is free.
    fn hedge_slot(&self) -> Option<HedgeSlot<'_>> {
        let hedging = &self.inner.hedging;
        let taken =
            hedging.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_HEDGES).then_some(n + 1));
        taken.is_ok().then_some(HedgeSlot(hedging))
    }

    /// Records the revision of an applied write of this client.
    fn wrote(&self, revision: i64) {
        self.inner.written.fetch_max(revision, Ordering::Relaxed);
    }

    /// The highest revision of this client's acknowledged writes (0 before the first).
    pub(crate) fn written(&self) -> i64 {
        self.inner.written.load(Ordering::Relaxed)
    }

    /// Whether a read answered with `header` is serializable and below the highest revision
    /// of this client's acknowledged writes: then it is asked again linearizably
    /// (`Client::range`, `list_page`), so that the client reads its own writes.
    pub(crate) fn behind_own_writes(&self, serializable: bool, header: Option<&ResponseHeader>) -> bool {
        let (at, written) = (header.map_or(0, |h| h.revision), self.written());
        let behind = serializable && at < written;
        if behind {
            tracing::debug!(at, written, "a serializable read behind this client's write, read again");
        }
        behind
    }

    /// How long one attempt may take ([`ClientOptions::request_timeout`]).
    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.options.request_timeout
    }

    pub(crate) fn targets(&self) -> MutexGuard<'_, Targets> {
        // The lock guards no invariant a panic could break half-way: a poisoned list is usable.
        self.inner.targets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `attempt` against one endpoint after another until one answers, an error that must
    /// not be retried comes back, or the retry budget is spent. The caller guarantees that
    /// sending the request more than once is safe (a read, or a write with a request id).
    pub(crate) async fn call<T, F, Fut>(&self, method: &'static str, attempt: F) -> Result<T, Error>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_limited(Lane::Calls, Route::Preferred, method, Patience::RETRY, attempt).await
    }

    /// Like [`call`](Client::call), for a write: sent first to the leader, when known. Its
    /// revision is the floor of this client's serializable reads
    /// ([`Client::behind_own_writes`]).
    pub(crate) async fn write<T, F, Fut>(&self, method: &'static str, attempt: F) -> Result<T, Error>
    where
        T: Written,
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let answer = self.write_waiting(method, Some(Duration::ZERO), attempt).await;
        // A write one of whose attempts went unanswered may have been applied, or be yet: the
        // error says so (the classic ambiguity of a timed-out write, etcd's too), whatever the
        // last attempt met. (A member that could not commit it in time says so itself.) Not
        // for a waiting write: an acquire or campaign left unsettled is withdrawn.
        answer.map_err(|e| match e {
            Error::Status(status)
                if status.code() == Code::DeadlineExceeded
                    || status.metadata().contains_key(UNSETTLED_METADATA) =>
            {
                Error::from(unsettled_write(*status))
            }
            other => other,
        })
    }

    /// Like [`write`](Client::write), starting at endpoint `from` ([`Client::write_start`]),
    /// with each attempt given at most `cap` (and the request timeout) before the next member
    /// is tried: for a call that must be answered within a deadline of its own (a keepalive,
    /// within the lease) even when a member stops answering. Once `stay` (when given) is set,
    /// the next failure ends the call instead (a hedged keepalive's first attempt, once its
    /// hedge was granted).
    pub(crate) async fn write_capped<T, F, Fut>(
        &self,
        method: &'static str,
        from: usize,
        cap: Duration,
        stay: Option<&AtomicBool>,
        attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let patience = Patience { cap: Some(cap), stay, ..Patience::RETRY };
        self.call_limited(Lane::Calls, Route::From(from), method, patience, attempt).await
    }

    /// The endpoint a write starts at now: the leader, when known (and writes go there), else
    /// the preferred one.
    pub(crate) fn write_start(&self) -> usize {
        self.write_start_at().0
    }

    /// [`write_start`](Client::write_start) and the address there.
    pub(crate) fn write_start_at(&self) -> (usize, String) {
        let targets = self.targets();
        let index = match targets.leader {
            Some(leader) if self.inner.options.writes_to_leader => leader,
            _ => targets.preferred,
        };
        (index, targets.list[index].addr.clone())
    }

    /// The endpoint after `index`, which stopped answering a call to `addr` and is distrusted
    /// as the leader for a while, unless another address took its place meanwhile (where a
    /// hedged keepalive's second attempt starts, whatever other calls did meanwhile).
    pub(crate) fn after_unanswered(&self, index: usize, addr: &str) -> usize {
        let mut targets = self.targets();
        if targets.holds(index, addr) {
            targets.failed.insert(index, Instant::now());
        }
        (index + 1) % targets.list.len()
    }

    /// Like [`call`](Client::call), opening a long-lived stream: on the members' stream
    /// connections ([`Lane::Streams`]).
    pub(crate) async fn open_stream<T, F, Fut>(&self, method: &'static str, attempt: F) -> Result<T, Error>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_limited(Lane::Streams, Route::Preferred, method, Patience::RETRY, attempt).await
    }

    /// Like [`write`](Client::write), for a write that may wait on the server (a lock's
    /// grant): each attempt may take `wait` beyond the request timeout, or as long as it takes
    /// (`None`).
    pub(crate) async fn write_waiting<T, F, Fut>(
        &self,
        method: &'static str,
        wait: Option<Duration>,
        attempt: F,
    ) -> Result<T, Error>
    where
        T: Written,
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let patience = Patience { wait, write: true, ..Patience::RETRY };
        let answer = self.call_limited(Lane::Calls, Route::Leader, method, patience, attempt).await;
        // A write applied although its call failed (its answer's data not kept) is a floor too.
        let revision = match &answer {
            Ok(answer) => answer.header().map(|h| h.revision),
            Err(e) => e.applied_revision(),
        };
        self.wrote(revision.unwrap_or(0));
        answer
    }

    async fn call_limited<T, F, Fut>(
        &self,
        lane: Lane,
        route: Route,
        method: &'static str,
        patience: Patience<'_>,
        mut attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        // (attempt timeout, deadline of the whole call); none for a call that may wait forever.
        let Patience { wait, cap, stay, write } = patience;
        let started = Instant::now();
        let limits = wait.map(|wait| {
            let options = self.inner.options;
            let (per_attempt, budget) = (options.request_timeout + wait, options.retry_budget + wait);
            let per_attempt = cap.map_or(per_attempt, |cap| per_attempt.min(cap));
            (per_attempt, started + budget.max(per_attempt))
        });
        // A call that waits on nothing of the server's, and hedges nothing itself, goes to the
        // next endpoint too once its attempt went unanswered this long (`hedge_after`).
        let hedge = match (wait, cap, stay, self.inner.options.hedge_after, limits) {
            (Some(wait), None, None, Some(after), Some((per_attempt, _))) if wait.is_zero() => {
                Some(after.min(per_attempt / 2))
            }
            _ => None,
        };
        let mut backoff = INITIAL_BACKOFF;
        let route = match route {
            Route::Leader if !self.inner.options.writes_to_leader => Route::Preferred,
            route => route,
        };
        let (index, target) = {
            let targets = self.targets();
            let first = match (route, targets.leader) {
                (Route::From(index), _) => index,
                (Route::Leader, Some(leader)) => leader,
                _ => targets.preferred,
            };
            let index = first % targets.list.len();
            (index, targets.list[index].clone())
        };
        // One attempt at one endpoint, within what is left of the call's limits; it ends with
        // the endpoint it went to.
        let mut launch = |index: usize, target: Target| {
            let timeout = limits.map(|(per_attempt, deadline)| {
                per_attempt.min(deadline.saturating_duration_since(Instant::now()))
            });
            let call = attempt(target.on(lane, timeout));
            async move {
                let answer = match timeout {
                    Some(timeout) => {
                        let unanswered = || {
                            Status::deadline_exceeded(format!("{}: {NO_ANSWER} {timeout:.1?}", target.addr))
                        };
                        match tokio::time::timeout(timeout, call).await {
                            // tonic's own timer for the `grpc-timeout` sent (`Stamp`) is this one.
                            Ok(Err(status)) if timed_out(&status) => Err(unanswered()),
                            Ok(answer) => answer,
                            Err(_) => Err(unanswered()),
                        }
                    }
                    None => call.await,
                };
                (index, target, answer)
            }
        };
        // The attempts under way: one, or two once the first went unanswered for `hedge`. The
        // call ends with the first answer; a failure waits for the other attempt, if any.
        let mut running = FuturesUnordered::new();
        // The endpoints of the attempts under way (index and address) and when each was sent,
        // in launch order.
        let mut under_way = vec![(index, target.addr.clone(), Instant::now())];
        running.push(launch(index, target));
        // What each endpoint tried last said, to name them all when the call gives up.
        let mut failures = Vec::<Tried>::new();
        // The endpoints a member of another cluster answered at, in this call.
        let mut foreign_at = BTreeSet::<String>::new();
        // Whether a write may take effect yet, whatever the last attempt met (set below; never
        // for a call that is no write).
        let mut unsettled = false;
        // A write's answer that it was applied before, its data not kept, held back while the
        // other attempt may still bring the whole answer.
        let mut applied_before: Option<Status> = None;
        // A write's refusal that settles nothing (made before proposing, on the member's own
        // limits, or no member's), held back while the other attempt may still take effect, or
        // has: that one's answer decides.
        let mut refused: Option<Status> = None;
        // Held from this call's hedge on, until the call ends.
        let mut _hedge_slot: Option<HedgeSlot> = None;
        let (mut last, mut hedge_at) = (index, hedge.map(|after| Instant::now() + after));
        loop {
            let hedge_due = tokio::time::sleep_until(hedge_at.unwrap_or_else(Instant::now));
            let (index, target, answer) = tokio::select! {
                Some(ended) = running.next() => ended,
                () = hedge_due, if hedge_at.is_some() => {
                    hedge_at = None;
                    let (next, target) = {
                        let targets = self.targets();
                        let next = (last + 1) % targets.list.len();
                        (next, targets.list[next].clone())
                    };
                    let slot = (next != last).then(|| self.hedge_slot()).flatten();
                    if slot.is_some() {
                        _hedge_slot = slot;
                        tracing::debug!(
                            method,
                            unanswered = %self.targets().list[last].addr,
                            endpoint = %target.addr,
                            "no answer yet; sending the call to the next endpoint too"
                        );
                        under_way.push((next, target.addr.clone(), Instant::now()));
                        running.push(launch(next, target));
                        last = next;
                    }
                    continue;
                }
            };
            under_way.retain(|(at, addr, _)| !(*at == index && *addr == target.addr));
            let status = match answer {
                Ok(response) => {
                    let cluster = &self.inner.cluster;
                    if let Some(stray) = cluster.stray(cluster.learn(response.metadata()), &target.addr) {
                        return Err(Error::from(stray));
                    }
                    let named = response.metadata().get(LEADER_ADDR_METADATA).and_then(|v| v.to_str().ok());
                    // An attempt still under way that went unanswered for `hedge` at least is
                    // not taken for the leader on a member's word for a while, as a hedged
                    // keepalive's first is not, lest every write wait for it again. A hedge
                    // sent moments ago is not (a monitor's every `cluster status` is hedged
                    // while a member is down: its member's probe takes longer).
                    let unanswered = |sent: &Instant| hedge.is_some_and(|hedge| sent.elapsed() >= hedge);
                    for (slow, addr, _) in under_way.iter().filter(|(_, _, sent)| unanswered(sent)) {
                        self.after_unanswered(*slow, addr);
                    }
                    self.answered(index, &target.addr, route, named);
                    return Ok(response.into_inner());
                }
                Err(status) => status,
            };
            let cluster = &self.inner.cluster;
            let named = cluster.learn(status.metadata());
            // A member of another cluster refused the call: it is no member of ours, whatever
            // it says of its own leader; the call goes on to the next endpoint.
            let foreign = cluster.foreign(named);
            // Named our cluster: the member itself answered (the connection is fine).
            let answered = named.is_some() && !foreign;
            // What the endpoint's latest answer named (an address may change hands mid-call).
            if foreign {
                foreign_at.insert(target.addr.clone());
            } else if answered {
                foreign_at.remove(&target.addr);
            }
            // A member's own word that the write stays proposed, or an attempt that may have
            // reached a member and went unanswered (a timeout, a connection lost after the
            // request went out): a write may still take effect. (Another cluster's member's
            // refusal did nothing, and reached no member of this one.) Of a write only: a read
            // or a keepalive is never said to take effect later.
            unsettled |= write
                && (status.metadata().contains_key(UNSETTLED_METADATA)
                    || (!answered && !foreign && !never_sent(&status)));
            let failure = Error::from(with_context(status.clone(), &target.addr)).to_string();
            let before = failures.iter().position(|t| t.addr == target.addr).map(|at| failures.remove(at));
            let answer = if answered {
                Some(with_context(status.clone(), &target.addr))
            } else {
                before.and_then(|t| t.answer)
            };
            failures.push(Tried { addr: target.addr.clone(), last: failure.clone(), answer });
            self.targets().last_failure = Some(failure);
            // Once set, the call tries no other member: it ends with the failure it met.
            let staying = || stay.is_some_and(|stay| stay.load(Ordering::Acquire));
            if !running.is_empty() && status.metadata().get(APPLIED_REVISION_METADATA).is_some() {
                // The write took effect once; the attempt under way may bring its whole answer.
                applied_before = Some(with_context(status, &target.addr));
                continue;
            }
            if (!is_retryable(&status) && !foreign) || staying() {
                // A member's refusal of the write as applied is the request id's outcome, which
                // every attempt meets; any other leaves the attempts under way, or an earlier
                // one unanswered, free to take effect.
                // (An answer that the write was applied before settles it too, marked or not.)
                let settled = !write
                    || status.metadata().contains_key(SETTLED_METADATA)
                    || status.metadata().contains_key(APPLIED_REVISION_METADATA);
                if !settled && !running.is_empty() && !staying() {
                    refused.get_or_insert_with(|| with_context(status, &target.addr));
                    continue;
                }
                // That the write took effect, when the other attempt said so, comes first.
                let failure = match applied_before.take() {
                    Some(applied) => applied,
                    None if settled => with_context(status, &target.addr),
                    None => {
                        let refusal = refused.take().unwrap_or_else(|| with_context(status, &target.addr));
                        may_still_take_effect(refusal, unsettled)
                    }
                };
                return Err(Error::from(failure));
            }
            let hint = leader_hint(&status).filter(|_| !foreign);
            if !running.is_empty() {
                // The other attempt may still be answered; this endpoint is passed over as a
                // failed one would be.
                self.next_target(index, &target.addr, route, hint.as_deref(), answered);
                continue;
            }
            if let Some(applied) = applied_before.take() {
                return Err(Error::from(applied));
            }
            if let Some(held) = refused.take() {
                return Err(Error::from(may_still_take_effect(held, unsettled)));
            }
            // Every endpoint known is another cluster's member: retrying cannot reach this one.
            if foreign && self.targets().list.iter().all(|t| foreign_at.contains(&t.addr)) {
                let ours = cluster.id().map(format_cluster_id).unwrap_or_default();
                let message = format!(
                    "every endpoint this client knows ({}) answered as a member of another cluster than \
                     {ours}, the one it talks to, and did nothing: check --endpoints (and --cluster-id) \
                     ({})",
                    foreign_at.iter().cloned().collect::<Vec<_>>().join(", "),
                    with_context(status.clone(), &target.addr).message()
                );
                let failure = Status::with_metadata(status.code(), message, status.metadata().clone());
                // An earlier attempt went unanswered: it may have reached this cluster's member.
                return Err(Error::from(may_still_take_effect(failure, unsettled)));
            }
            if let Some((_, deadline)) = limits.filter(|(_, deadline)| Instant::now() + backoff >= *deadline)
            {
                let budget = deadline.saturating_duration_since(started);
                let failure = gave_up(status, &target.addr, &failures, budget);
                return Err(Error::from(may_still_take_effect(failure, unsettled)));
            }
            tracing::debug!(
                method,
                endpoint = %target.addr,
                code = ?status.code(),
                message = status.message(),
                leader_hint = hint.as_deref(),
                "retrying on another endpoint"
            );
            let failure = with_context(status, &target.addr);
            let (next, target) = self.next_target(index, &target.addr, route, hint.as_deref(), answered);
            tokio::time::sleep(backoff).await;
            if staying() {
                return Err(Error::from(failure));
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            running.push(launch(next, target));
            (last, hedge_at) = (next, hedge.map(|after| Instant::now() + after));
        }
    }

    /// Prefers the next endpoint from now on (a stream on the preferred one broke).
    pub(crate) fn move_on(&self) {
        let mut targets = self.targets();
        targets.preferred = (targets.preferred + 1) % targets.list.len();
    }

    /// Whether calls of `route` are writes as far as routing goes: they leave reads where they
    /// are and move where writes start.
    fn routes_writes(&self, route: Route) -> bool {
        match route {
            Route::Preferred => false,
            Route::Leader => true,
            Route::From(_) => self.inner.options.writes_to_leader,
        }
    }

    /// Records who answered: a read's endpoint becomes the preferred one; a write's, the leader
    /// unless it named another. A leader named by any answer is where writes go next, unless it
    /// failed a call within [`DISTRUSTED_FOR`]. `addr` is the endpoint that answered: if
    /// another took its place at `index` meanwhile, only the named leader is recorded.
    fn answered(&self, index: usize, addr: &str, route: Route, named: Option<&str>) {
        let mut targets = self.targets();
        if targets.holds(index, addr) {
            targets.failed.remove(&index);
            if self.routes_writes(route) {
                targets.leader = Some(index);
            } else {
                targets.preferred = index;
            }
        }
        let named = named.filter(|_| self.inner.options.writes_to_leader).and_then(|a| targets.trusted(a));
        if named.is_some() {
            targets.leader = named;
        }
    }

    /// The endpoint to try after `failed`: the named leader if there is a usable hint (added to
    /// the list if new), else the next endpoint in the list. A write's failed endpoint is no
    /// longer taken for the leader. One that did not answer (`answered`: it sent its own
    /// failure, naming our cluster) is distrusted as the leader for a while. `addr` is the
    /// endpoint that failed: if another took its place at `failed` meanwhile, that one is
    /// neither distrusted nor dropped as the leader for it.
    fn next_target(
        &self,
        failed: usize,
        addr: &str,
        route: Route,
        hint: Option<&str>,
        answered: bool,
    ) -> (usize, Target) {
        let mut targets = self.targets();
        let replaced = !targets.holds(failed, addr);
        // A member that answered, or named the leader, is there; one that did not may not be.
        if !answered && hint.is_none() && !replaced {
            targets.failed.insert(failed, Instant::now());
        }
        let hinted = hint.and_then(|addr| targets.trusted(addr));
        let index = hinted.unwrap_or((failed + 1) % targets.list.len());
        if self.routes_writes(route) {
            // A write's failure leaves reads where they are (a member behind the one they
            // were on could answer below what they saw). A leader another call learnt
            // meanwhile stays.
            if hinted.is_some() || (targets.leader == Some(failed) && !replaced) {
                targets.leader = hinted;
            }
        } else {
            targets.preferred = index;
        }
        (index, targets.list[index].clone())
    }
}

impl Targets {
    /// Whether `addr` is still at `index`: a hint may have put another endpoint in the place of
    /// a learnt one while a call was on it, and what that call says is then charged to nobody.
    fn holds(&self, index: usize, addr: &str) -> bool {
        self.list[index].addr == addr
    }

    /// [`Targets::index_of`] the leader a member named, unless that endpoint failed a call
    /// within [`DISTRUSTED_FOR`] and has not answered one since.
    fn trusted(&mut self, addr: &str) -> Option<usize> {
        let index = self.index_of(addr)?;
        match self.failed.get(&index) {
            Some(at) if at.elapsed() < DISTRUSTED_FOR => {
                tracing::debug!(
                    hint = addr,
                    "ignoring a leader hint naming an endpoint that failed a call just now"
                );
                None
            }
            _ => Some(index),
        }
    }

    /// The index of the endpoint at `addr`, a leader a member named: added to the list if new;
    /// `None` if unusable.
    fn index_of(&mut self, addr: &str) -> Option<usize> {
        // Every answer of a follower names the leader: a known address is found without
        // building the channels of a new endpoint.
        let given = addr.trim();
        let plain = given.strip_prefix("http://").unwrap_or(given);
        let plain = plain.strip_suffix('/').unwrap_or(plain);
        if is_wildcard(plain) {
            tracing::debug!(hint = addr, "ignoring a leader hint naming a wildcard address (no host)");
            return None;
        }
        if let Some(i) = self.list.iter().position(|t| t.addr == plain) {
            return Some(i);
        }
        let target = Target::parse(addr, &self.cluster)
            .map_err(|problem| tracing::debug!(hint = addr, problem, "ignoring an unusable leader hint"))
            .ok()?;
        if let Some(i) = self.list.iter().position(|t| t.addr == target.addr) {
            return Some(i);
        }
        if self.list.len() - self.given < MAX_HINTED_TARGETS {
            self.list.push(target);
            return Some(self.list.len() - 1);
        }
        // Full: the oldest learnt entry in use by neither writes nor calls gives way.
        let index = (0..MAX_HINTED_TARGETS)
            .map(|k| self.given + (self.next_replaced + k) % MAX_HINTED_TARGETS)
            .find(|&i| self.leader != Some(i) && self.preferred != i)?;
        tracing::debug!(hint = addr, replaced = %self.list[index].addr, "a leader hint replaces the oldest learnt endpoint");
        self.next_replaced = (index - self.given + 1) % MAX_HINTED_TARGETS;
        self.failed.remove(&index);
        self.list[index] = target;
        Some(index)
    }
}

/// Whether `addr` is a wildcard address (`0.0.0.0`, `[::]`): a member listening on every
/// interface names it, but no client can connect to it.
fn is_wildcard(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().to_canonical().is_unspecified())
}

impl Target {
    /// Parses `host:port` or `http://host:port` and makes a lazy channel for it; or says why
    /// the endpoint is unusable.
    fn parse(endpoint: &str, cluster: &Arc<Cluster>) -> Result<Target, String> {
        let given = endpoint.trim();
        let bad = |why: &str| format!("{given:?}: {why}");
        if given.is_empty() {
            return Err(bad("empty; expected host:port"));
        }
        let addr = match given.split_once("://") {
            None => given,
            Some(("http", rest)) => rest,
            Some(("https", _)) => return Err(bad("TLS is not supported yet; use host:port")),
            Some((scheme, _)) => return Err(bad(&format!("unsupported scheme {scheme:?}; use host:port"))),
        };
        let addr = addr.strip_suffix('/').unwrap_or(addr);
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| bad(&e.to_string()))?;
        let uri = endpoint.uri();
        let has_host = uri.host().is_some_and(|h| !h.is_empty());
        if !has_host || uri.port_u16().is_none() || uri.path() != "/" || uri.query().is_some() {
            return Err(bad("expected host:port"));
        }
        // HTTP/2 pings find a member that stopped answering (frozen, or cut off at the network)
        // even while a call waits on it for a long time (a lock, a campaign, an observation).
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT);
        // Each lazy channel is a connection of its own. On the streams' one, the connection's
        // window is the largest HTTP/2 allows: each stream is held to its own window (2 MiB),
        // so one its caller does not read never holds up another's.
        let channel = endpoint.connect_lazy();
        let streams = endpoint.initial_connection_window_size(STREAMS_CONNECTION_WINDOW).connect_lazy();
        Ok(Target { addr: addr.to_string(), channel, streams, cluster: cluster.clone() })
    }

    /// The channel of `lane`, for an attempt that may take `timeout`: a call tells the member
    /// (`grpc-timeout`); a stream, which lives on once opened, does not.
    fn on(&self, lane: Lane, timeout: Option<Duration>) -> Channel {
        let (channel, timeout) = match lane {
            Lane::Calls => (&self.channel, timeout),
            Lane::Streams => (&self.streams, None),
        };
        InterceptedService::new(channel.clone(), Stamp { cluster: self.cluster.clone(), timeout })
    }
}

/// A write's answer, whose header names the revision it was applied at.
pub(crate) trait Written {
    fn header(&self) -> Option<&ResponseHeader>;
}

macro_rules! written {
    ($($t:ident),* $(,)?) => {
        $(impl Written for latch_proto::v1::$t {
            fn header(&self) -> Option<&ResponseHeader> {
                self.header.as_ref()
            }
        })*
    };
}

written!(
    PutResponse,
    DeleteRangeResponse,
    TxnResponse,
    CompactionResponse,
    CreateSessionResponse,
    CloseSessionResponse,
    AcquireResponse,
    WithdrawResponse,
    WithdrawCandidacyResponse,
    ReleaseResponse,
    CampaignResponse,
    ProclaimResponse,
    ResignResponse,
    RegisterResponse,
    DeregisterResponse,
    HeartbeatResponse,
    ReplaceMemberResponse,
    RemoveMemberResponse,
    AddMemberResponse,
);

/// Every page of a list paged by name: `page(start_after)` answers a page and whether more
/// follow, `name` names an item; each page is asked with the last name of the one before (and
/// read at its own revision, as a paged list in etcd). A page that does not begin after the
/// name it was asked to start after (a member that does not page) is FAILED_PRECONDITION,
/// not a loop; an empty page ends the list.
pub(crate) async fn every_page<T, Fut>(
    mut page: impl FnMut(String) -> Fut,
    name: impl Fn(&T) -> String,
) -> Result<Vec<T>, Error>
where
    Fut: Future<Output = Result<(Vec<T>, bool), Error>>,
{
    let mut all = Vec::new();
    let mut start_after = String::new();
    loop {
        let (items, more) = page(start_after.clone()).await?;
        if let Some(first) =
            items.first().map(&name).filter(|first| !start_after.is_empty() && *first <= start_after)
        {
            return Err(Error::from(Status::failed_precondition(format!(
                "the member answered a page starting at {first:?}, not after {start_after:?}: it does not \
                 page (a member older than this client?)"
            ))));
        }
        let last = items.last().map(&name);
        all.extend(items);
        match last {
            Some(last) if more => start_after = last,
            _ => return Ok(all),
        }
    }
}

/// Whether a failed attempt may be sent again, to another endpoint. Only for requests that are
/// safe to resend, which every call of this client is (see the module doc).
fn is_retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => true,
        // The request itself is wrong, or too big, or its precondition failed: the same request
        // fails the same way everywhere.
        Code::InvalidArgument | Code::ResourceExhausted | Code::FailedPrecondition => false,
        // A status with a source was made by the local transport (a reset connection, a broken
        // stream), not sent by a server: the request may or may not have arrived.
        _ => std::error::Error::source(status).is_some(),
    }
}

/// The leader's client address a server put on an `UNAVAILABLE` answer, if any.
fn leader_hint(status: &Status) -> Option<String> {
    if status.code() != Code::Unavailable {
        return None;
    }
    let addr = status.metadata().get(LEADER_ADDR_METADATA)?.to_str().ok()?.trim();
    (!addr.is_empty()).then(|| addr.to_string())
}

/// What a call's attempts at one endpoint ended with.
struct Tried {
    addr: String,
    /// The last attempt's failure.
    last: String,
    /// The member's own last answer, if it gave one: it outlives a later attempt that went
    /// unanswered (a member without a quorum says so, then one retry with little time left
    /// times out before it can say it again), since it says why and the silence does not.
    answer: Option<Status>,
}

impl Tried {
    /// What follows `last`: the member's earlier answer, when the last attempt did not end with it.
    fn before(&self) -> String {
        match self.answer.as_ref().map(|a| Error::from(a.clone()).to_string()) {
            Some(answer) if answer != self.last => format!(" (before, it answered {answer})"),
            _ => String::new(),
        }
    }
}

/// The failure a call ends with once its time is spent: the last one (`last`, at `addr`), how
/// long the call could retry, and what each other endpoint it tried said last, so that a
/// cluster without a quorum, or a list of dead endpoints, reads as such.
///
/// A connection never made says less than a member's own answer: when the last attempt was one,
/// the latest answer another endpoint gave leads instead (its code, message and metadata), and
/// the connection's failure is listed with the rest.
fn gave_up(last: Status, addr: &str, failures: &[Tried], budget: Duration) -> Status {
    let answered =
        || failures.iter().rev().filter(|t| t.addr != addr).find_map(|t| Some((t.answer.clone()?, &t.addr)));
    let (last, addr, led) = match answered().filter(|_| never_sent(&last)) {
        Some((answer, by)) => (answer, by.as_str(), true),
        None => (with_context(last, addr), addr, false),
    };
    // Endpoints that said the same (every one of a dead cluster refused the connection) are
    // named together, once.
    let mut said_by: Vec<(String, Vec<&str>)> = Vec::new();
    for t in failures.iter().filter(|t| t.addr != addr) {
        let said = format!("{}{}", t.last.replacen(&format!("{}: ", t.addr), "", 1), t.before());
        match said_by.iter_mut().find(|(s, _)| *s == said) {
            Some((_, addrs)) => addrs.push(&t.addr),
            None => said_by.push((said, vec![&t.addr])),
        }
    }
    let others: Vec<String> =
        said_by.iter().map(|(said, addrs)| format!("{}: {said}", addrs.join(", "))).collect();
    let others = match others.is_empty() {
        true => String::new(),
        false => format!("; also tried {}", others.join("; ")),
    };
    let said = match last.message().contains(addr) {
        true => last.message().to_string(),
        false => format!("{addr}: {}", last.message()),
    };
    let before = failures.iter().find(|t| t.addr == addr && !led).map(Tried::before).unwrap_or_default();
    let message = format!("{said}{before} (retried for {budget:.1?}{others})");
    Status::with_metadata(last.code(), message, last.metadata().clone())
}

/// Whether an error of type `E` caused `status` (made locally, by the transport).
fn caused_by<E: std::error::Error + 'static>(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<E>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Whether `status` is the failure of a connection that was never made: no request went out.
fn never_sent(status: &Status) -> bool {
    caused_by::<tonic::ConnectError>(status)
}

/// Whether `status` is a call's `grpc-timeout` expiring (tonic's CANCELLED "Timeout expired",
/// the client's timer or the server's).
fn timed_out(status: &Status) -> bool {
    caused_by::<tonic::TimeoutExpired>(status)
        || status.code() == Code::Cancelled && status.message() == tonic::TimeoutExpired(()).to_string()
}

/// A status made by the local transport says little ("transport error"); the endpoint and the
/// underlying cause say what happened. Statuses sent by a server are returned as they are.
fn with_context(status: Status, addr: &str) -> Status {
    let mut cause = String::new();
    let mut source = std::error::Error::source(&status);
    if source.is_none() {
        return status;
    }
    while let Some(e) = source {
        let text = e.to_string();
        if !status.message().contains(&text) && !cause.contains(&text) {
            cause.push_str(": ");
            cause.push_str(&text);
        }
        source = e.source();
    }
    Status::new(status.code(), format!("{addr}: {}{cause}", status.message()))
}

/// `failure`, marked [`UNSETTLED_METADATA`] when `unsettled`: an attempt of the write went
/// unanswered, or a member left it proposed, and it was not applied since (as far as the call
/// knows).
fn may_still_take_effect(mut failure: Status, unsettled: bool) -> Status {
    if unsettled && !failure.metadata().contains_key(APPLIED_REVISION_METADATA) {
        failure.metadata_mut().insert(UNSETTLED_METADATA, AsciiMetadataValue::from_static("true"));
    }
    failure
}

/// A write left unsettled, told so once: a member that could not commit it in time says it may
/// still take effect itself.
fn unsettled_write(status: Status) -> Status {
    const MAY_STILL: &str = "may still take effect";
    if status.message().contains(MAY_STILL) {
        return status;
    }
    let message = format!("{}; the write {MAY_STILL}: read before sending it again", status.message());
    Status::with_metadata(status.code(), message, status.metadata().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_are_host_port_with_or_without_http() {
        let client = Client::connect(["127.0.0.1:7379", "http://localhost:7479/", " 10.0.0.1:7579 "])
            .await
            .expect("valid endpoints");
        assert_eq!(client.endpoints(), vec!["127.0.0.1:7379", "localhost:7479", "10.0.0.1:7579"]);
    }

    #[tokio::test]
    async fn duplicate_endpoints_are_kept_once() {
        let client =
            Client::connect(["127.0.0.1:7379", "http://127.0.0.1:7379"]).await.expect("valid endpoints");
        assert_eq!(client.endpoints(), vec!["127.0.0.1:7379"]);
    }

    #[tokio::test]
    async fn bad_endpoints_are_rejected_naming_the_endpoint() {
        for bad in ["", "localhost", "https://h:1", "grpc://h:1", "h:1/path", ":7379", "h:port"] {
            match Client::connect([bad]).await {
                Err(Error::InvalidEndpoint(why)) => {
                    assert!(why.contains(&format!("{:?}", bad.trim())), "{why}")
                }
                other => panic!("{bad:?} should be an invalid endpoint, got {other:?}"),
            }
        }
        let none: [&str; 0] = [];
        assert!(matches!(Client::connect(none).await, Err(Error::InvalidEndpoint(_))));
    }

    #[tokio::test]
    async fn hints_past_the_bound_replace_the_oldest_learnt_endpoint_not_in_use() {
        let client = Client::connect(["127.0.0.1:7379"]).await.expect("valid endpoint");
        let mut targets = client.targets();
        let hint = |port: usize| format!("127.0.0.2:{}", 8000 + port);
        for port in 0..MAX_HINTED_TARGETS {
            assert_eq!(targets.index_of(&hint(port)), Some(1 + port), "hint {port} is learnt");
        }
        assert_eq!(targets.index_of(&hint(0)), Some(1), "a hint already learnt is still followed");
        assert_eq!(targets.index_of("127.0.0.1:7379"), Some(0), "so is one naming a given endpoint");

        // Full: writes start at the second learnt endpoint; the first one learnt gives way,
        // then the third (the second is in use), and the given endpoint never does.
        targets.leader = Some(2);
        let past = MAX_HINTED_TARGETS;
        assert_eq!(targets.index_of(&hint(past)), Some(1), "the oldest learnt endpoint gives way");
        assert_eq!(targets.index_of(&hint(past + 1)), Some(3), "the leader's entry is passed over");
        assert_eq!(targets.list.len(), 1 + MAX_HINTED_TARGETS, "the given endpoint and the bounded hints");
        let known = targets.list.iter().map(|t| t.addr.as_str()).collect::<Vec<_>>();
        assert_eq!(known[..4], ["127.0.0.1:7379", &hint(past), &hint(1), &hint(past + 1)]);
        assert!(!known.contains(&hint(0).as_str()), "the replaced endpoints are gone: {known:?}");
    }

    /// A call in flight on a learnt endpoint that a hint then replaced fails, or is answered:
    /// what it says is not charged to the endpoint that took its place (which would be
    /// distrusted for 10 s and dropped as the leader, or taken for the leader on no word).
    #[tokio::test]
    async fn a_call_in_flight_on_a_replaced_endpoint_says_nothing_of_the_one_that_took_its_place() {
        let client = Client::connect(["127.0.0.1:7379"]).await.expect("valid endpoint");
        let hint = |port: usize| format!("127.0.0.2:{}", 8000 + port);
        let old = {
            let mut targets = client.targets();
            for port in 0..MAX_HINTED_TARGETS {
                targets.index_of(&hint(port));
            }
            targets.leader = Some(2);
            targets.list[1].addr.clone()
        };
        // A write in flight on slot 1 (its old endpoint); then a hint names a new leader, which
        // takes slot 1, the oldest learnt one not in use.
        let new = hint(MAX_HINTED_TARGETS);
        let slot = client.targets().trusted(&new);
        assert_eq!(slot, Some(1), "the new leader takes the oldest learnt slot");
        client.targets().leader = slot;

        client.next_target(1, &old, Route::Leader, None, false);
        let targets = client.targets();
        assert_eq!(targets.leader, Some(1), "the new leader is still where writes go");
        assert!(
            !targets.failed.contains_key(&1),
            "the new leader is not distrusted for the old one's failure"
        );
        drop(targets);
        client.targets().leader = Some(2);
        client.answered(1, &old, Route::Leader, None);
        assert_eq!(
            client.targets().leader,
            Some(2),
            "an answer of the old endpoint makes nothing the leader"
        );
        client.answered(1, &new, Route::Leader, None);
        assert_eq!(client.targets().leader, Some(1), "the new one's own answer does");
    }

    /// A member that answers the first page again (one that does not page) is an error, not a
    /// loop; an empty page ends the list, whatever `more` says.
    #[tokio::test]
    async fn a_paged_list_stops_at_a_page_that_does_not_move_on() {
        let names = |page: &[&str]| page.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let again = every_page(|_| async { Ok((names(&["a", "b"]), true)) }, String::clone).await;
        assert_eq!(again.map_err(|e| e.code()), Err(Code::FailedPrecondition), "the same page twice");
        let ended =
            every_page(
                |after: String| async move {
                    Ok((if after.is_empty() { names(&["a"]) } else { Vec::new() }, true))
                },
                String::clone,
            )
            .await;
        assert_eq!(ended.map_err(|e| e.to_string()), Ok(names(&["a"])), "an empty page ends it");
    }

    #[test]
    fn an_unsettled_write_is_told_it_may_still_take_effect_once() {
        let timed_out = unsettled_write(Status::deadline_exceeded("member 1 took too long"));
        assert_eq!(
            timed_out.message(),
            "member 1 took too long; the write may still take effect: read before sending it again"
        );
        let said = "member 1 could not commit the write within 317 ms: the write stays proposed and may \
                    still take effect";
        let unsettled = unsettled_write(Status::unavailable(said));
        assert_eq!(unsettled.message(), said, "the member said so already: not twice");
    }

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(is_retryable(&Status::unavailable("no leader")));
        assert!(is_retryable(&Status::deadline_exceeded("slow")));
        assert!(!is_retryable(&Status::invalid_argument("key: empty")));
        assert!(!is_retryable(&Status::resource_exhausted("too big")));
        assert!(!is_retryable(&Status::failed_precondition("compacted")));
        assert!(!is_retryable(&Status::internal("bug")), "a server's INTERNAL is not transient");
    }

    #[test]
    fn the_leader_hint_is_read_from_unavailable_answers_only() {
        let mut status = Status::unavailable("not the leader");
        status.metadata_mut().insert(LEADER_ADDR_METADATA, "127.0.0.1:7479".parse().expect("ascii"));
        assert_eq!(leader_hint(&status).as_deref(), Some("127.0.0.1:7479"));
        assert_eq!(leader_hint(&Status::unavailable("no leader")), None);
    }
}
