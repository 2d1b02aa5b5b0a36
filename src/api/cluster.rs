//! The Cluster service: `Status` — the leader and term as this member sees them, and each
//! member's own account of itself (role, applied index), asked over the peer transport.

use std::time::Duration;

use latch_proto::v1::cluster_server::{Cluster, ClusterServer};
use latch_proto::v1::{Member, StatusRequest, StatusResponse};
use redb::ReadableDatabase as _;
use tonic::{Request, Response, Status};

use super::Context;
use crate::transport::member_status;

pub struct ClusterService {
    ctx: Context,
}

impl ClusterService {
    pub fn server(ctx: Context) -> ClusterServer<ClusterService> {
        ClusterServer::new(ClusterService { ctx })
    }
}

/// The most a status waits for another member's own.
const MEMBER_PROBE: Duration = Duration::from_millis(1500);

/// The deadline a gRPC caller sent (`grpc-timeout`: digits and a unit, H, M, S, m, u or n), if any.
fn caller_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        // Each other member is asked for at most 1.5 s, and within the caller's deadline when it
        // sent one: two fifths of it, so that a member that does not answer is shown
        // unreachable in an answer that comes in time (a `--timeout 1s` otherwise failed on it).
        let probe = caller_timeout(request.metadata()).map_or(MEMBER_PROBE, |t| MEMBER_PROBE.min(t * 2 / 5));
        let me = self.ctx.node.status();
        let asks = self.ctx.members.iter().map(|p| async move {
            if p.id == me.id {
                return Member {
                    id: me.id,
                    peer_addr: self.ctx.peer_addr.clone(),
                    client_addr: self.ctx.client_addr.clone(),
                    role: me.role.as_str().to_string(),
                    applied_index: me.applied.index,
                    commit_index: me.commit_index,
                    term: me.term,
                    error: String::new(),
                    snapshots_installed: me.snapshots_installed,
                    command_version: crate::fsm::COMMAND_VERSION,
                };
            }
            match member_status(&p.peer_addr, probe).await {
                Ok(s) => Member {
                    id: p.id,
                    peer_addr: p.peer_addr.clone(),
                    client_addr: s.client_addr,
                    role: s.role,
                    applied_index: s.applied_index,
                    commit_index: s.commit_index,
                    term: s.term,
                    error: String::new(),
                    snapshots_installed: s.snapshots_installed,
                    command_version: s.command_version,
                },
                Err(error) => Member {
                    id: p.id,
                    peer_addr: p.peer_addr.clone(),
                    role: "unreachable".into(),
                    error,
                    ..Default::default()
                },
            }
        });
        let members = futures::future::join_all(asks).await;
        let revision = self
            .ctx
            .node
            .db()
            .begin_read()
            .ok()
            .and_then(|t| crate::fsm::applied(&t).ok())
            .map_or(0, |a| a.revision);
        Ok(Response::new(StatusResponse {
            header: Some(self.ctx.header(revision)),
            leader: me.leader,
            term: me.term,
            members,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_grpc_timeout_is_read_in_each_unit_and_nonsense_is_none() {
        let timeout = |value: &str| {
            let mut m = tonic::metadata::MetadataMap::new();
            m.insert("grpc-timeout", value.parse().expect("ascii"));
            caller_timeout(&m)
        };
        assert_eq!(timeout("1000m"), Some(Duration::from_secs(1)));
        assert_eq!(timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(timeout("7n"), Some(Duration::from_nanos(7)));
        for nonsense in ["", "m", "10x", "-1S", "1.5S"] {
            assert_eq!(timeout(nonsense), None, "{nonsense:?}");
        }
        assert_eq!(caller_timeout(&tonic::metadata::MetadataMap::new()), None);
    }
}
