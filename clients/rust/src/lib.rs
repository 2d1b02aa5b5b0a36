//! The Rust client of Latch, a coordination service with a Raft-replicated key-value core.
//!
//! ```no_run
//! use latch_client::{Client, Compare, CompareResult, Op, Txn};
//!
//! # async fn example() -> Result<(), latch_client::Error> {
//! let client = Client::connect(["127.0.0.1:7379", "127.0.0.1:7479"]).await?;
//! client.put("greeting", "hello").await?;
//! let kv = client.get("greeting").await?.expect("just written");
//! // Compare-and-swap: only if nobody wrote "greeting" since we read it.
//! let txn = Txn::new()
//!     .when([Compare::version("greeting", CompareResult::Equal, kv.version)])
//!     .and_then([Op::put("greeting", "hello again")]);
//! assert!(client.txn(txn).await?.succeeded);
//! # Ok(()) }
//! ```
//!
//! What is here:
//! - [`Client`]: connects lazily to any members of the cluster and sends each call to one of
//!   them, moving on to another (or to the leader a member names) when one is down. Writes go
//!   to the leader once a member has named it (every answer of a follower does), reads stay on
//!   the endpoints given ([`ClientOptions::writes_to_leader`]). Writes carry a request id that
//!   stays the same across retries, so a write is applied at most once.
//! - [`Txn`], [`Compare`], [`Op`]: short ways to write a transaction; [`prefix_range`] and
//!   [`prefix_end`] for ranges.
//! - [`Session`]: a session kept alive in the background, with Chubby's states
//!   ([`SessionState`]): what ephemeral keys (`PutRequest::session`) hang on.
//! - Locks ([`Session::lock`], [`LockGuard`], [`Client::acquire`]) with fencing sequencers
//!   ([`Client::check_sequencer`], [`Compare::sequencer`]), and [`Election`]s.
//! - The service registry: [`Client::register`] ([`RegisterOptions`], [`Check`]),
//!   [`Client::list`], [`Client::resolve`]; [`ServiceCache`], one service's instances kept up
//!   to date by a watch; [`Registration`], an instance bound to a session of its own and
//!   registered again whenever that session ends.
//! - Backups: [`Client::snapshot`] streams a member's whole state as a snapshot file.
//! - [`Error`]: every failure, with the gRPC code and the server's message.
//! - [`proto`]: the wire types (`latch.v1`), for requests the typed methods do not cover.
//!
//! This crate depends on the API's proto crate alone, never on the server.

mod client;
mod election;
mod error;
mod kv;
mod lock;
mod maintenance;
mod registry;
mod session;
#[cfg(test)]
mod tests;
mod txn;
mod watch;

pub use client::{Client, ClientOptions, LEADER_ADDR_METADATA};
pub use election::Election;
pub use error::Error;
/// A sequencer's string form: `format` and `parse` (see [`proto::Sequencer`]).
pub use latch_proto::sequencer;
pub use latch_proto::{DEFAULT_LOCK_DELAY_MS, MAX_LOCK_DELAY_MS};
pub use lock::{LockGuard, LockOptions, Wait};
pub use maintenance::SnapshotStream;
pub use registry::{
    Check, InstanceList, ListOptions, RegisterOptions, Registration, RegistrationState, ServiceCache,
    ServiceSnapshot,
};
pub use session::{Session, SessionOptions, SessionState};
pub use txn::{prefix_end, prefix_range, Compare, CompareResult, Op, Txn};
pub use watch::{WatchGroup, WatchId, WatchOptions, WatchTarget, WatchUpdate};

/// The wire types of Latch's gRPC API, package `latch.v1`.
pub use latch_proto::v1 as proto;

pub use latch_proto::v1::{
    AddMemberResponse, Candidate, CheckSequencerResponse, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, ElectionInfo, Event, Health, HealthCheck, InstanceInfo, KeyValue, Leadership,
    LockInfo, LockMode, Member, PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader,
    Sequencer, ServiceInstance, ServiceSummary, StatusResponse, TxnRequest, TxnResponse,
};
/// gRPC status codes, as returned by [`Error::code`].
pub use tonic::Code;
