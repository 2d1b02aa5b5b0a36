//! The Cluster service: `Status` — the leader and term as this member sees them, and each
//! member's own account of itself (role, applied index), asked over the peer transport — and
//! `ReplaceMember`, which makes a member that lost its data a learner, `AddMember`, which adds a
//! new member as a learner, and `RemoveMember`, which takes a member out of the cluster for good
//! (`core::membership`).

use std::time::Duration;

use latch_proto::v1::cluster_server::{Cluster, ClusterServer};
use latch_proto::v1::{
    AddMemberRequest, AddMemberResponse, Member, RemoveMemberRequest, RemoveMemberResponse,
    ReplaceMemberRequest, ReplaceMemberResponse, StatusRequest, StatusResponse,
};
use redb::ReadableDatabase as _;
use tonic::{Request, Response, Status};

use super::{ApiError, Context};
use crate::config::Peer;
use crate::node::deadline;
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

/// How long one probe of other members may wait: [`MEMBER_PROBE`], and within the caller's
/// deadline when it sent one (`left` of it), a `share`-th of what is left, so that a member
/// that does not answer costs the call only part of its time and the answer comes in time.
/// Whole milliseconds: an unanswered probe's error names it.
fn member_probe(left: Option<Duration>, share: u32) -> Duration {
    left.map_or(MEMBER_PROBE, |left| {
        MEMBER_PROBE.min(Duration::from_millis(left.as_millis() as u64 / u64::from(share.max(1))))
    })
}

/// The least an addition's probe waits, whatever is left of the caller's deadline: a member
/// slower than that to answer is taken for a silent one, and the address check skips it. A
/// probe that outlasts the deadline leaves the change unproposed (`ClusterService::changed`).
const ADD_PROBE_AT_LEAST: Duration = Duration::from_millis(250);

/// How long one of an addition's probes may wait: its `share` of the caller's time, at least
/// [`ADD_PROBE_AT_LEAST`].
fn add_probe(share: u32) -> Duration {
    member_probe(deadline_left(), share).max(ADD_PROBE_AT_LEAST)
}

/// What is left of the caller's deadline, if it sent one.
fn deadline_left() -> Option<Duration> {
    deadline::answer_by().map(|by| by.saturating_duration_since(tokio::time::Instant::now()))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        // Each other member is asked for at most 1.5 s, and within the caller's deadline when it
        // sent one: half of what is left of it, so that a member that does not answer is shown
        // unreachable in an answer that comes in time (a `--timeout 1s` otherwise failed on it).
        let probe = member_probe(deadline_left(), 2);
        let me = self.ctx.node.status();
        // The members of the configuration this member applied (a removed one is no longer
        // listed), each where this member's transport knows it listens.
        let configuration = self.ctx.node.configuration();
        let listed = configuration.members().into_iter().map(|id| crate::config::Peer {
            id,
            peer_addr: match id == me.id {
                true => self.ctx.peer_addr.clone(),
                false => self.ctx.links.address(id).unwrap_or_default(),
            },
        });
        let asks = listed.map(|p| async move {
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
                    cluster_version: me.cluster_version,
                    dns_addr: self.ctx.dns_addr.clone(),
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
                    cluster_version: s.cluster_version,
                    dns_addr: s.dns_addr,
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

    async fn replace_member(
        &self,
        request: Request<ReplaceMemberRequest>,
    ) -> Result<Response<ReplaceMemberResponse>, Status> {
        let member = checked_member(request.into_inner().member).map_err(|e| self.ctx.to_status(e))?;
        let shows = "`latch cluster status` shows the member a learner if it did";
        let index = self.changed(self.ctx.node.replace(member), "replacement", member, shows).await?;
        let header = self.ctx.header(self.ctx.node.status().applied.revision);
        Ok(Response::new(ReplaceMemberResponse { header: Some(header), index }))
    }

    async fn add_member(
        &self,
        request: Request<AddMemberRequest>,
    ) -> Result<Response<AddMemberResponse>, Status> {
        let req = request.into_inner();
        let member = checked_member(req.member).map_err(|e| self.ctx.to_status(e))?;
        let peer_addr = req.peer_addr.trim().to_string();
        crate::config::check_peer_addr(&peer_addr).map_err(|problem| {
            self.ctx.to_status(ApiError::InvalidArgument { field: "peer_addr", problem })
        })?;
        let taken = |owner: u64| {
            let refused =
                crate::core::membership::Refused::AddressTaken { addr: peer_addr.clone(), member: owner };
            self.ctx.to_status(ApiError::Request(refused.into()))
        };
        if let Some(owner) = self.known_owner(&peer_addr, member) {
            return Err(taken(owner));
        }
        self.all_add_members().await?;
        if let Some(owner) = self.answering_owner(&peer_addr, member).await {
            return Err(taken(owner));
        }
        let shows = "`latch cluster status` lists the member a learner if it did";
        let index = self.changed(self.ctx.node.add(member, peer_addr), "addition", member, shows).await?;
        let header = self.ctx.header(self.ctx.node.status().applied.revision);
        let (initial_cluster, token) = self.ctx.initial_cluster.clone();
        Ok(Response::new(AddMemberResponse {
            header: Some(header),
            index,
            initial_cluster,
            initial_cluster_token: token.unwrap_or_default(),
            peers: self.current_peers(member),
        }))
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        let member = checked_member(request.into_inner().member).map_err(|e| self.ctx.to_status(e))?;
        let shows = "`latch cluster status` no longer lists the member if it did";
        let index = self.changed(self.ctx.node.remove(member), "removal", member, shows).await?;
        let header = self.ctx.header(self.ctx.node.status().applied.revision);
        Ok(Response::new(RemoveMemberResponse { header: Some(header), index }))
    }
}

fn checked_member(member: u64) -> Result<u64, ApiError> {
    if member == 0 {
        let problem = "0 is no member id (ids start at 1)".to_string();
        return Err(ApiError::InvalidArgument { field: "member", problem });
    }
    Ok(member)
}

impl ClusterService {
    /// The member other than `member` known to listen at peer address `addr`, if any: one the
    /// transport knows there (the first members, and those added since; the core checks the
    /// added members again as it proposes), or this one. It would be sent the new member's raft
    /// messages.
    fn known_owner(&self, addr: &str, member: u64) -> Option<u64> {
        let me = self.ctx.node.member_id;
        let mine =
            [self.own_peer_addr(), self.ctx.peer_addr.clone()].map(|peer_addr| Peer { id: me, peer_addr });
        (self.ctx.links.peers().into_iter().chain(mine))
            .find(|p| p.peer_addr == addr && p.id != member && !self.ctx.node.has_removed(p.id))
            .map(|p| p.id)
    }

    /// Another member of this cluster than `member` that answers at `addr` (an alias of its
    /// address), if any.
    async fn answering_owner(&self, addr: &str, member: u64) -> Option<u64> {
        // The second of an addition's two probes: half of what the first left.
        let answers = member_status(addr, add_probe(2)).await.ok()?;
        (answers.cluster_id == self.ctx.node.cluster_id && answers.id != member).then_some(answers.id)
    }

    /// Where the cluster knows this member listens for its peers: its `--initial-cluster`
    /// entry, or the address its addition recorded; where its peer port bound otherwise (an IP,
    /// or a wildcard, where the others may know a host name).
    fn own_peer_addr(&self) -> String {
        let me = self.ctx.node.member_id;
        (self.ctx.first_members.iter().find(|p| p.id == me).map(|p| p.peer_addr.clone()))
            .or_else(|| self.ctx.node.configuration().added.get(&me).cloned())
            .unwrap_or_else(|| self.ctx.peer_addr.clone())
    }

    /// The members of the configuration other than `new`, `ID=HOST:PORT,…` by id, where the
    /// transport knows them — empty when they are `--initial-cluster`'s first members, whose
    /// addresses the new member knows already.
    fn current_peers(&self, new: u64) -> String {
        let configuration = self.ctx.node.configuration();
        let members: Vec<u64> = configuration.members().into_iter().filter(|id| *id != new).collect();
        if members.iter().eq(self.ctx.first_members.iter().map(|p| &p.id)) {
            return String::new();
        }
        let me = self.ctx.node.member_id;
        let address =
            |id: u64| if id == me { Some(self.own_peer_addr()) } else { self.ctx.links.address(id) };
        let listed: Vec<String> =
            members.into_iter().filter_map(|id| Some(format!("{id}={}", address(id)?))).collect();
        listed.join(",")
    }

    /// Refuses an addition while a member of the configuration answers from a build that does
    /// not record additions (its state would diverge, and it could not reach the new member):
    /// upgrade the whole cluster first. A member that does not answer is not waited for.
    async fn all_add_members(&self) -> Result<(), Status> {
        let configuration = self.ctx.node.configuration();
        let me = self.ctx.node.member_id;
        // The first of an addition's two probes: a third of the caller's time, so that both
        // leave a third for the change itself.
        let probe = add_probe(3);
        let asks = (configuration.members().into_iter())
            .filter(|id| *id != me)
            .filter_map(|id| Some((id, self.ctx.links.address(id)?)))
            .map(|(id, addr)| async move { (id, member_status(&addr, probe).await) });
        for (id, status) in futures::future::join_all(asks).await {
            if let Some(s) = status.ok().filter(|s| s.id == id && !s.adds_members) {
                return Err(Status::failed_precondition(format!(
                    "member {} runs a build that does not record members added at run time (command \
                     version {}): upgrade every member before adding one",
                    s.id, s.command_version
                )));
            }
        }
        Ok(())
    }

    /// The answer to a change of membership, within the caller's deadline if it set one.
    async fn changed(
        &self,
        answer: impl std::future::Future<Output = Result<u64, crate::core::RequestError>>,
        change: &str,
        member: u64,
        shows: &str,
    ) -> Result<u64, Status> {
        match deadline::answer_by() {
            // Checked before the change is asked for: a caller told "deadline exceeded" after
            // the probes used its time must not see the change take effect anyway.
            Some(by) if by <= tokio::time::Instant::now() => {
                return Err(Status::deadline_exceeded(format!(
                    "member {} used its caller's deadline before proposing the {change} of member \
                     {member}: nothing was proposed; try again with a longer --timeout",
                    self.ctx.node.member_id
                )))
            }
            Some(by) => tokio::time::timeout_at(by, answer).await.map_err(|_| {
                Status::deadline_exceeded(format!(
                    "member {} could not apply the {change} of member {member} before its caller's \
                     deadline; it may still take effect ({shows})",
                    self.ctx.node.member_id
                ))
            })?,
            None => answer.await,
        }
        .map_err(|e| self.ctx.to_status(ApiError::Request(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_of_other_members_takes_its_share_of_the_callers_time_and_never_more_than_its_most() {
        assert_eq!(member_probe(None, 3), MEMBER_PROBE, "no deadline: the most a probe waits");
        assert_eq!(
            member_probe(Some(Duration::from_secs(2)), 3),
            Duration::from_millis(666),
            "a third of a 2 s deadline, in whole milliseconds"
        );
        assert_eq!(
            member_probe(Some(Duration::from_secs(10)), 2),
            MEMBER_PROBE,
            "a long deadline: still at most the most a probe waits"
        );
        assert_eq!(member_probe(Some(Duration::ZERO), 2), Duration::ZERO, "a deadline already past");
    }
}
