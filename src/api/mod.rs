//! The public gRPC services (`latch.v1`): thin handlers — validate → propose or read → map the
//! error → fill the header. [`ApiError`] and its one mapping to `tonic::Status` live here.

pub mod cluster;
pub mod deadline;
pub mod election;
pub mod kv;
pub mod lock;
pub mod maintenance;
pub mod registry;
pub mod routing;
pub mod session;
pub mod watch;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use crate::config::Limits;
use crate::core::{RequestError, Retry};
use crate::fsm::history::RevisionError;
use crate::fsm::FsmError;
use crate::node::{Freshness, NodeHandle};
use latch_proto::internal::{command::Body, outcome, Command};
use latch_proto::v1::ResponseHeader;
use tonic::metadata::MetadataValue;
use tonic::{Response, Status};

pub use latch_proto::LEADER_ADDR_METADATA;

pub use latch_proto::{
    APPLIED_REVISION_METADATA, COMPACT_REVISION_METADATA, SETTLED_METADATA, TXN_SUCCEEDED_METADATA,
    UNSETTLED_METADATA,
};

tokio::task_local! {
    /// Whether the request being answered (within [`Context::answer`]) had a command applied
    /// by [`Context::write`]: its outcome is then remembered under its request id, and a
    /// refusal made from it is marked [`SETTLED_METADATA`].
    static APPLIED: Cell<bool>;
}

/// gRPC's metadata key for how long a client should wait before retrying (gRFC A6).
pub const RETRY_PUSHBACK_METADATA: &str = "grpc-retry-pushback-ms";
/// What an overloaded member asks clients to wait before retrying, in milliseconds.
const RETRY_PUSHBACK_MS: u32 = 100;

/// Requests refused for a limit are logged at most once a second, with how many were not.
static REFUSALS: RateLimitedLog = RateLimitedLog::new();

/// A log line that repeats at most once a second; the lines left out are counted in the next.
pub struct RateLimitedLog {
    /// Milliseconds since the process started, of the last line written (0: none yet).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedLog {
    pub const fn new() -> RateLimitedLog {
        RateLimitedLog { last_ms: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// Logs that a request was refused for a limit, unless one was logged within the second.
    pub fn note(&self, member: u64, why: &str) {
        static START: OnceLock<Instant> = OnceLock::new();
        let now = START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        if (last != 0 && now - last < 1000)
            || self.last_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let also = self.suppressed.swap(0, Ordering::Relaxed);
        tracing::info!(member, refused_since_last_line = also, "request refused: {why}");
    }
}

impl Default for RateLimitedLog {
    fn default() -> Self {
        RateLimitedLog::new()
    }
}

/// The gRPC path of every method of the public services, in the order of the protos: the
/// values of the gRPC metrics' `method` label (a test checks the list against the protos).
pub const METHODS: &[&str] = &[
    "/latch.v1.KV/Range",
    "/latch.v1.KV/Put",
    "/latch.v1.KV/DeleteRange",
    "/latch.v1.KV/Txn",
    "/latch.v1.KV/Compact",
    "/latch.v1.Watch/Watch",
    "/latch.v1.Cluster/Status",
    "/latch.v1.Cluster/ReplaceMember",
    "/latch.v1.Cluster/RemoveMember",
    "/latch.v1.Cluster/AddMember",
    "/latch.v1.Session/Create",
    "/latch.v1.Session/KeepAlive",
    "/latch.v1.Session/Close",
    "/latch.v1.Session/Get",
    "/latch.v1.Session/List",
    "/latch.v1.Lock/Acquire",
    "/latch.v1.Lock/Release",
    "/latch.v1.Lock/Withdraw",
    "/latch.v1.Lock/CheckSequencer",
    "/latch.v1.Lock/DescribeLock",
    "/latch.v1.Lock/ListLocks",
    "/latch.v1.Election/Campaign",
    "/latch.v1.Election/Proclaim",
    "/latch.v1.Election/Leader",
    "/latch.v1.Election/Observe",
    "/latch.v1.Election/Resign",
    "/latch.v1.Election/Withdraw",
    "/latch.v1.Election/Describe",
    "/latch.v1.Election/List",
    "/latch.v1.Registry/Register",
    "/latch.v1.Registry/Deregister",
    "/latch.v1.Registry/Heartbeat",
    "/latch.v1.Registry/List",
    "/latch.v1.Registry/Services",
    "/latch.v1.Maintenance/Snapshot",
];

/// What every service needs.
#[derive(Clone)]
pub struct Context {
    pub node: NodeHandle,
    pub limits: Limits,
    /// This member's peers and where they listen, as its transport knows them.
    pub links: Arc<crate::transport::Links>,
    /// `--initial-cluster` and `--initial-cluster-token` as given: what a member added at run
    /// time is started with.
    pub initial_cluster: (String, Option<String>),
    /// The members `--initial-cluster` names, sorted by id.
    pub first_members: Vec<crate::config::Peer>,
    /// This member's client address as advertised (`--advertise-client-addr`, else as bound).
    pub client_addr: String,
    pub peer_addr: String,
    /// Where this member's DNS port listens, as bound.
    pub dns_addr: String,
    /// Client addresses of the members, as they reported them (see `server::learn_members`);
    /// never a wildcard one.
    pub client_addrs: Arc<RwLock<BTreeMap<u64, String>>>,
    /// Whether the member is in touch with a leader (one check for all who ask).
    pub freshness: Arc<Freshness>,
}

impl Context {
    /// Proposes a write and returns the header of its revision and its result. One without a
    /// request id gets a UUIDv7 (time-ordered: the fsm's table of remembered ids then grows at
    /// one end instead of at random pages).
    pub async fn write(
        &self,
        request_id: &str,
        body: Body,
    ) -> Result<(ResponseHeader, outcome::Result), ApiError> {
        let (request_id, retry) = match request_id {
            "" => (uuid::Uuid::now_v7().to_string(), Retry::NoId),
            named => (named.to_string(), Retry::SameId),
        };
        // Proposed at the cluster's version, which the core sets (`Core::propose`).
        let cmd = Command { version: 0, request_id: request_id.clone(), body: Some(body) };
        let _ = APPLIED.try_with(|applied| applied.set(false));
        let out = self.node.propose(cmd, retry).await?;
        // Applied under the client's own request id: what is answered from here on is its
        // remembered outcome. (An attempt without one is a command of its own.)
        let _ = APPLIED.try_with(|applied| applied.set(retry == Retry::SameId));
        let header = self.header(out.revision);
        if out.data_omitted {
            let succeeded = match &out.result {
                Some(outcome::Result::Txn(t)) => Some(t.succeeded),
                _ => None,
            };
            return Err(ApiError::AlreadyApplied { request_id, revision: out.revision, succeeded });
        }
        match out.result {
            Some(outcome::Result::Rejected(why)) => Err(ApiError::Rejected(why)),
            Some(outcome::Result::Conflict(c)) => {
                Err(ApiError::RequestConflict { request_id, first_applied_at: c.first_applied_at })
            }
            Some(outcome::Result::NotFound(n)) => Err(ApiError::NotFound { kind: n.kind, name: n.name }),
            Some(outcome::Result::Compacted(c)) => Err(ApiError::Revision(RevisionError::Compacted {
                asked: 0,
                compact_revision: c.compact_revision,
            })),
            Some(r) => Ok((header, r)),
            None => Err(ApiError::Internal("the state machine returned an empty outcome".into())),
        }
    }

    /// Like [`write`](Context::write), under an id of the member's own making (a marker, an
    /// acquire asked again): its outcome is not the client's request's, and a refusal after it
    /// settles nothing.
    pub async fn write_aside(
        &self,
        request_id: &str,
        body: Body,
    ) -> Result<(ResponseHeader, outcome::Result), ApiError> {
        let written = self.write(request_id, body).await;
        let _ = APPLIED.try_with(|applied| applied.set(false));
        written
    }

    /// Runs a handler's work and answers with what it returned: a refusal as its status, marked
    /// [`SETTLED_METADATA`] when made after a command of the request was applied (a refusal
    /// that retrying cannot mend, and so every attempt of the request meets).
    pub async fn answer<T>(
        &self,
        run: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<Response<T>, Status> {
        let (result, applied) = APPLIED
            .scope(Cell::new(false), async {
                let result = run.await;
                (result, APPLIED.with(Cell::get))
            })
            .await;
        result.map(Response::new).map_err(|e| {
            let mut status = self.to_status(e);
            if applied && settles(status.code()) {
                status.metadata_mut().insert(SETTLED_METADATA, MetadataValue::from_static("true"));
            }
            status
        })
    }

    /// The header of a response served at `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.node.cluster_id,
            member_id: self.node.member_id,
            revision,
            raft_term: self.node.status().term,
        }
    }
}

/// Whether a refusal with this code is the state's answer, which asking again meets alike (not
/// a member that cannot serve now, nor the call's own deadline).
fn settles(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(code, InvalidArgument | NotFound | FailedPrecondition | ResourceExhausted | OutOfRange)
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {problem}")]
    InvalidArgument { field: &'static str, problem: String },
    #[error("{0}")]
    OverLimit(String),
    /// The request cannot apply to the state as it is (a lock already held, a sequencer that
    /// no longer holds).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("request rejected by the state machine: {0}")]
    Rejected(String),
    /// The request names something that does not exist.
    #[error("{kind} {name} not found{}", if .kind == "session" { ": it expired, was closed, or never existed" } else { "" })]
    NotFound { kind: String, name: String },
    #[error(
        "request id {request_id:?} was first used for a different request (applied at log index \
         {first_applied_at}); a retry must resend the same request, a new request needs a new id"
    )]
    RequestConflict { request_id: String, first_applied_at: u64 },
    #[error(
        "request id {request_id:?} was applied, at revision {revision}{}; the data its answer \
         carried (a previous value or range results) is not kept — an earlier attempt's answer, or \
         one this member fell too far behind to carry: read it again",
        match .succeeded { Some(true) => " (its compares held)", Some(false) => " (its compares failed)", None => "" }
    )]
    AlreadyApplied { request_id: String, revision: i64, succeeded: Option<bool> },
    /// A revision the history cannot serve (compacted, or in the future).
    #[error(transparent)]
    Revision(RevisionError),
    /// Not now, for a reason that passes: ask again (this member or another).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

/// A page's `limit` as a count: at most that many, any number for 0; negative is refused.
pub(crate) fn page_limit(limit: i64) -> Result<usize, ApiError> {
    match limit {
        0 => Ok(usize::MAX),
        n if n < 0 => Err(ApiError::InvalidArgument { field: "limit", problem: format!("{n} is negative") }),
        n => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
    }
}

impl From<FsmError> for ApiError {
    fn from(e: FsmError) -> Self {
        match e {
            FsmError::Revision(e) => ApiError::Revision(e),
            FsmError::OverLimit(why) => ApiError::OverLimit(why),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<redb::TransactionError> for ApiError {
    fn from(e: redb::TransactionError) -> Self {
        ApiError::Internal(format!("storage: {e}"))
    }
}

impl Context {
    /// The leader's client address, when this member is not the leader and knows it: what its
    /// answers name (`routing`, and UNAVAILABLE ones below).
    pub fn leader_addr(&self) -> Option<http::HeaderValue> {
        let leader = self.node.status().leader;
        if leader == 0 || leader == self.node.member_id {
            return None;
        }
        let addrs = self.client_addrs.read().ok()?;
        http::HeaderValue::from_str(addrs.get(&leader)?).ok()
    }

    /// UNAVAILABLE, naming the leader's client address in `latch-leader-addr` when known.
    fn unavailable(&self, msg: String) -> Status {
        let mut status = Status::unavailable(msg);
        if let Some(addr) = self.leader_addr().and_then(|a| MetadataValue::try_from(a.as_bytes()).ok()) {
            status.metadata_mut().insert(LEADER_ADDR_METADATA, addr);
        }
        status
    }

    /// The one mapping of errors to gRPC statuses (DESIGN.md §2 rule 6). UNAVAILABLE carries
    /// the leader's client address in `latch-leader-addr` when this member knows it.
    pub fn to_status(&self, e: ApiError) -> Status {
        let msg = e.to_string();
        match e {
            ApiError::InvalidArgument { .. } | ApiError::Rejected(_) => Status::invalid_argument(msg),
            ApiError::NotFound { .. } | ApiError::Request(RequestError::SessionNotFound { .. }) => {
                Status::not_found(msg)
            }
            ApiError::RequestConflict { .. }
            | ApiError::FailedPrecondition(_)
            | ApiError::Request(RequestError::RequestInFlight { .. })
            | ApiError::Request(RequestError::ClusterVersion { settled: true, .. }) => {
                Status::failed_precondition(msg)
            }
            // A member that may be behind the cluster's raise: the client asks again (of the
            // leader, which the answer names), and a retry of a request applied meanwhile gets
            // its first outcome.
            ApiError::Request(RequestError::ClusterVersion { settled: false, .. }) => self.unavailable(msg),
            // A change under way or lost with a leader: asking again settles it.
            ApiError::Request(RequestError::Membership(refused)) if refused.passes() => self.unavailable(msg),
            ApiError::Request(RequestError::Membership(_)) => Status::failed_precondition(msg),
            ApiError::AlreadyApplied { revision, succeeded, .. } => {
                let mut status = Status::failed_precondition(msg);
                let m = status.metadata_mut();
                m.insert(APPLIED_REVISION_METADATA, MetadataValue::from(revision));
                if let Some(s) = succeeded {
                    let value = if s { "true" } else { "false" };
                    m.insert(TXN_SUCCEEDED_METADATA, MetadataValue::from_static(value));
                }
                status
            }
            ApiError::OverLimit(_) => {
                REFUSALS.note(self.node.member_id, &msg);
                let mut status = Status::resource_exhausted(msg);
                status
                    .metadata_mut()
                    .insert(latch_proto::OVER_LIMIT_METADATA, MetadataValue::from_static("true"));
                status
            }
            ApiError::Request(RequestError::Overloaded { .. }) => {
                REFUSALS.note(self.node.member_id, &msg);
                let mut status = Status::unavailable(msg);
                // gRPC's own retry hint: clients that honour it wait this long before retrying.
                status.metadata_mut().insert(RETRY_PUSHBACK_METADATA, MetadataValue::from(RETRY_PUSHBACK_MS));
                status
            }
            ApiError::Request(RequestError::Unanswered { write: Some(_), .. })
            | ApiError::Request(RequestError::TimedOut { proposed: true, .. })
            | ApiError::Request(RequestError::ShuttingDown { proposed: true }) => {
                let mut status = self.unavailable(msg);
                status.metadata_mut().insert(UNSETTLED_METADATA, MetadataValue::from_static("true"));
                status
            }
            ApiError::Request(RequestError::NoLeader { .. })
            | ApiError::Request(RequestError::NotLeader { .. })
            | ApiError::Request(RequestError::ShuttingDown { proposed: false })
            | ApiError::Request(RequestError::TimedOut { .. })
            | ApiError::Request(RequestError::Unanswered { .. })
            | ApiError::Request(RequestError::CutOff { .. }) => self.unavailable(msg),
            ApiError::Revision(e) => {
                let mut status = Status::out_of_range(msg);
                if let RevisionError::Compacted { compact_revision, .. } = e {
                    let m = status.metadata_mut();
                    m.insert(COMPACT_REVISION_METADATA, MetadataValue::from(compact_revision));
                }
                status
            }
            ApiError::Unavailable(_) => Status::unavailable(msg),
            ApiError::Internal(_) => Status::internal(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn methods_lists_every_method_of_the_public_services() {
        let set = prost_types::FileDescriptorSet::decode(latch_proto::FILE_DESCRIPTOR_SET)
            .expect("the proto crate's descriptor set decodes");
        let mut paths = Vec::new();
        for file in set.file.iter().filter(|f| f.package() == "latch.v1") {
            for service in &file.service {
                for method in &service.method {
                    paths.push(format!("/latch.v1.{}/{}", service.name(), method.name()));
                }
            }
        }
        paths.sort();
        let mut listed: Vec<String> = METHODS.iter().map(|m| m.to_string()).collect();
        listed.sort();
        assert_eq!(listed, paths, "api::METHODS should list exactly the methods of the latch.v1 services");
    }
}
