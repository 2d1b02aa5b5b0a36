//! Test-only fault injection in the peer transport: a set of blocked peers whose raft messages
//! this member drops, in both directions, as a network partition would; and the
//! `latch.internal.v1.Faults` gRPC service that changes the set at run time.
//!
//! The transport consults [`Faults`] on every raft message it is about to send to a peer and on
//! every one it receives from a peer; a dropped message is neither sent nor counted in the peer
//! metrics, and the sender reports nothing to raft (a partition gives no error either). Snapshots
//! to a blocked peer are reported failed, as a call that never completes would eventually be.
//! `Peer.Status` is not affected, so `latch cluster status` still sees every member.
//!
//! The service is added to the peer port only when the member runs with `--fault-injection`
//! (docs/architecture.md); otherwise the set stays empty for the life of the process.

use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError, RwLock};

use tonic::{Request, Response, Status};

use latch_proto::internal::faults_server::{Faults as FaultsRpc, FaultsServer};
use latch_proto::internal::{FaultState, HealRequest, PartitionRequest};

/// The peers this member is cut off from. Cheap to clone: clones share the set.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    blocked: Arc<RwLock<BTreeSet<u64>>>,
}

impl Faults {
    /// Whether raft messages to and from `peer` are dropped.
    pub fn blocks(&self, peer: u64) -> bool {
        // The set is valid whatever a panicking holder of the lock was doing.
        self.blocked.read().unwrap_or_else(PoisonError::into_inner).contains(&peer)
    }

    /// Blocks these peers (in addition to those already blocked); returns every blocked peer.
    pub fn partition(&self, peers: &[u64]) -> Vec<u64> {
        let mut blocked = self.blocked.write().unwrap_or_else(PoisonError::into_inner);
        blocked.extend(peers);
        blocked.iter().copied().collect()
    }

    /// Unblocks every peer.
    pub fn heal(&self) {
        self.blocked.write().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

/// The `Faults` service of one member.
pub struct FaultsService {
    faults: Faults,
    me: u64,
    /// This member's peers, as its transport knows them.
    links: Arc<super::Links>,
}

impl FaultsService {
    pub fn server(faults: Faults, me: u64, links: Arc<super::Links>) -> FaultsServer<FaultsService> {
        FaultsServer::new(FaultsService { faults, me, links })
    }
}

#[tonic::async_trait]
impl FaultsRpc for FaultsService {
    async fn partition(&self, req: Request<PartitionRequest>) -> Result<Response<FaultState>, Status> {
        let peers = req.into_inner().peers;
        let known: Vec<u64> = self.links.peers().iter().map(|p| p.id).collect();
        if let Some(bad) = peers.iter().find(|p| !known.contains(p)) {
            return Err(Status::invalid_argument(format!(
                "peers: {bad} is not a peer of member {} (its peers: {known:?})",
                self.me
            )));
        }
        let blocked = self.faults.partition(&peers);
        tracing::warn!(?peers, ?blocked, "fault injection: dropping raft messages to and from peers");
        Ok(Response::new(FaultState { blocked }))
    }

    async fn heal(&self, _: Request<HealRequest>) -> Result<Response<FaultState>, Status> {
        self.faults.heal();
        tracing::warn!("fault injection: healed, no peer blocked");
        Ok(Response::new(FaultState { blocked: vec![] }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_add_up_and_heal_clears_them_all() {
        let faults = Faults::default();
        assert!(!faults.blocks(2), "nothing is blocked at first");
        assert_eq!(faults.partition(&[3]), vec![3]);
        assert_eq!(faults.clone().partition(&[2, 3]), vec![2, 3], "clones share the set");
        assert!(faults.blocks(2) && faults.blocks(3) && !faults.blocks(4));
        faults.heal();
        assert!(!faults.blocks(2) && !faults.blocks(3), "heal unblocks every peer");
    }

    #[tokio::test]
    async fn only_peers_of_the_member_can_be_blocked_and_an_added_one_once_learned() {
        let peers = ["1=h:1", "2=h:2", "3=h:3"].map(|p| {
            let (id, addr) = p.split_once('=').expect("id=addr");
            crate::config::Peer { id: id.parse().expect("an id"), peer_addr: addr.to_string() }
        });
        let links = Arc::new(super::super::Links::new(1, &peers));
        let service = FaultsService { faults: Faults::default(), me: 1, links };
        for bad in [1, 4] {
            let e = service
                .partition(Request::new(PartitionRequest { peers: vec![2, bad] }))
                .await
                .expect_err("not a peer");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
            assert!(e.message().starts_with("peers:"), "the message names the field: {e}");
        }
        assert!(!service.faults.blocks(2), "a refused request blocks nothing");
        let state = service.partition(Request::new(PartitionRequest { peers: vec![3, 2] })).await;
        assert_eq!(state.expect("peers of member 1").into_inner().blocked, vec![2, 3]);
        service.links.learn(4, "h:4", crate::transport::Source::Recorded);
        let state = service.partition(Request::new(PartitionRequest { peers: vec![4] })).await;
        assert_eq!(state.expect("an added peer").into_inner().blocked, vec![2, 3, 4]);
    }
}
