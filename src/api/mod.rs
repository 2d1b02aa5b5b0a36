//! The public gRPC services (`latch.v1`): thin handlers — validate → propose or read → map the
//! error → fill the header. [`ApiError`] and its one mapping to `tonic::Status` live here.

pub mod cluster;
pub mod kv;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::config::{Limits, Peer};
use crate::core::RequestError;
use crate::fsm::FsmError;
use crate::node::NodeHandle;
use latch_proto::v1::ResponseHeader;
use tonic::Status;

pub use latch_proto::LEADER_ADDR_METADATA;

/// The gRPC path of every method of the public services, in the order of the protos: the
/// values of the gRPC metrics' `method` label (a test checks the list against the protos).
pub const METHODS: &[&str] = &[
    "/latch.v1.KV/Range",
    "/latch.v1.KV/Put",
    "/latch.v1.KV/DeleteRange",
    "/latch.v1.KV/Txn",
    "/latch.v1.Cluster/Status",
];

/// What every service needs.
#[derive(Clone)]
pub struct Context {
    pub node: NodeHandle,
    pub limits: Limits,
    pub members: Vec<Peer>,
    pub client_addr: String,
    pub peer_addr: String,
    /// Client addresses of the members, as they reported them (see `server::learn_members`).
    pub client_addrs: Arc<RwLock<BTreeMap<u64, String>>>,
}

impl Context {
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

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {problem}")]
    InvalidArgument { field: &'static str, problem: String },
    #[error("{0}")]
    OverLimit(String),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("request rejected by the state machine: {0}")]
    Rejected(String),
    #[error("{0}")]
    Internal(String),
}

impl From<FsmError> for ApiError {
    fn from(e: FsmError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<redb::TransactionError> for ApiError {
    fn from(e: redb::TransactionError) -> Self {
        ApiError::Internal(format!("storage: {e}"))
    }
}

impl Context {
    /// The one mapping of errors to gRPC statuses (DESIGN.md §2 rule 6). UNAVAILABLE carries
    /// the leader's client address in `latch-leader-addr` when this member knows it.
    pub fn to_status(&self, e: ApiError) -> Status {
        let msg = e.to_string();
        match e {
            ApiError::InvalidArgument { .. } | ApiError::Rejected(_) => Status::invalid_argument(msg),
            ApiError::OverLimit(_) => Status::resource_exhausted(msg),
            ApiError::Request(RequestError::NoLeader { .. })
            | ApiError::Request(RequestError::ShuttingDown)
            | ApiError::Request(RequestError::TimedOut { .. }) => {
                let mut status = Status::unavailable(msg);
                let leader = self.node.status().leader;
                let addr = self.client_addrs.read().ok().and_then(|m| m.get(&leader).cloned());
                if let Some(value) =
                    addr.filter(|_| leader != self.node.member_id).and_then(|a| a.parse().ok())
                {
                    status.metadata_mut().insert(LEADER_ADDR_METADATA, value);
                }
                status
            }
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
