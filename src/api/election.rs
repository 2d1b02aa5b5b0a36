//! The Election service: Campaign, Proclaim, Leader, Observe, Resign, Withdraw, Describe, List —
//! an election is an exclusive lock in its own space (`fsm::elections`), so campaigning is
//! acquiring with no time limit (`api::lock::acquire`), resigning is releasing, withdrawing a
//! campaign is withdrawing an acquire (`api::lock::withdraw`), and describing one is reading its
//! lock's row (its candidates are the lock's waiters).

use std::pin::Pin;

use futures::Stream;
use latch_proto::internal::{
    command::Body, lock_result::Status as LockStatus, LockMode, LockRow, LockSpace, Proclaim,
};
use latch_proto::v1::election_server::{Election, ElectionServer};
use latch_proto::v1::*;
use redb::ReadableDatabase as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::kv::check_request_id;
use super::lock::{
    acquire, described, listed, lock_result, public_sequencer, release, sequencer_of, withdraw, Wait, Want,
};
use super::{ApiError, Context};
use crate::fsm::elections::{self, Leader};
use crate::fsm::locks;

/// Most bytes of a published value. Every candidate's value lives in the election's one row,
/// which each change rewrites: kept small, as what is published is an address or a name.
pub const MAX_VALUE_BYTES: usize = 4 * 1024;

pub struct ElectionService {
    ctx: Context,
}

impl ElectionService {
    pub fn server(ctx: Context) -> ElectionServer<ElectionService> {
        ElectionServer::new(ElectionService { ctx })
    }
}

fn check_value(value: &[u8]) -> Result<(), ApiError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::InvalidArgument {
            field: "value",
            problem: format!("is {} bytes, at most {MAX_VALUE_BYTES} allowed", value.len()),
        });
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), ApiError> {
    locks::check_name(name).map_err(|problem| ApiError::InvalidArgument { field: "name", problem })
}

pub(super) fn leadership(l: Leader, cluster_id: u64) -> Leadership {
    Leadership {
        name: l.sequencer.name.clone(),
        value: l.value,
        sequencer: Some(public_sequencer(&l.sequencer, cluster_id)),
    }
}

/// The leadership a campaign was granted under `seq`, with the leader's value as of now (a
/// proclaim may have changed it since the grant), or `asked` if it no longer leads.
fn granted_leadership(
    ctx: &Context,
    name: String,
    seq: latch_proto::internal::Sequencer,
    asked: Vec<u8>,
) -> Result<Leadership, ApiError> {
    let txn = ctx.node.db().begin_read()?;
    let value = match elections::leader(&txn, &name)? {
        Some(l) if l.sequencer == seq => l.value,
        _ => asked,
    };
    Ok(Leadership { name, value, sequencer: Some(public_sequencer(&seq, ctx.node.cluster_id)) })
}

/// What Describe and List answer of election `name`, whose row is `row`.
fn election_info(name: String, row: LockRow, cluster_id: u64) -> ElectionInfo {
    let leader = elections::leader_of(&name, &row);
    ElectionInfo {
        elected_revision: leader.as_ref().map_or(0, |l| l.revision),
        leader_lock_delay_ms: row.holders.first().map_or(0, |h| h.lock_delay_ms),
        leader: leader.map(|l| leadership(l, cluster_id)),
        candidates: row
            .waiters
            .into_iter()
            .map(|w| Candidate { session_id: w.session, value: w.value, queued_revision: w.revision })
            .collect(),
        delayed: row.delay_revision != 0,
        delay_since_revision: row.delay_revision,
        delay_ms: row.delay_ms,
        name,
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(&self, req: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            check_value(&req.value)?;
            let want = Want {
                space: LockSpace::Elections,
                name: req.name.clone(),
                session: req.session_id,
                mode: LockMode::Exclusive,
                wait: Wait::Forever,
                lock_delay_ms: req.lock_delay_ms,
                value: req.value.clone(),
                request_id: req.request_id,
            };
            let (header, seq) = acquire(&self.ctx, want).await?;
            let Some(seq) = seq else {
                return Err(ApiError::FailedPrecondition(format!(
                    "the campaign for {:?} was withdrawn before it won",
                    req.name
                )));
            };
            let leader = granted_leadership(&self.ctx, req.name, seq, req.value)?;
            Ok(CampaignResponse { header: Some(header), leader: Some(leader) })
        };
        self.ctx.answer(run).await
    }

    async fn proclaim(&self, req: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            check_value(&req.value)?;
            check_request_id(&req.request_id)?;
            let seq = sequencer_of(&req.sequencer, self.ctx.node.cluster_id, "sequencer")?;
            if seq.space != LockSpace::Elections as i32 {
                return Err(ApiError::InvalidArgument {
                    field: "sequencer",
                    problem: "is a lock's, not an election's leadership".into(),
                });
            }
            let name = seq.name.clone();
            let body = Body::Proclaim(Proclaim {
                sequencer: Some(seq),
                value: req.value,
                max_row_bytes: locks::MAX_ROW_BYTES,
            });
            let (header, r) = self.ctx.write(&req.request_id, body).await?;
            let r = lock_result(r, "proclaim")?;
            match LockStatus::try_from(r.status) {
                Ok(LockStatus::Done) => Ok(ProclaimResponse { header: Some(header) }),
                Ok(LockStatus::RowFull) => Err(ApiError::OverLimit(format!(
                    "election {name:?}: its candidates take {} bytes, and this value would take it past \
                     the {} one election holds: the value was not changed; proclaim a smaller one",
                    r.ahead,
                    locks::MAX_ROW_BYTES
                ))),
                _ => Err(ApiError::FailedPrecondition(format!(
                    "the sequencer does not lead {name:?}: it resigned, or its session ended"
                ))),
            }
        };
        self.ctx.answer(run).await
    }

    async fn leader(&self, req: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            check_name(&req.name)?;
            self.ctx.node.read_index().await?;
            let txn = self.ctx.node.db().begin_read()?;
            let Some(l) = elections::leader(&txn, &req.name)? else {
                return Err(ApiError::NotFound { kind: "leader of election".into(), name: req.name });
            };
            Ok(LeaderResponse {
                header: Some(self.ctx.header(crate::fsm::applied(&txn)?.revision)),
                leader: Some(leadership(l, self.ctx.node.cluster_id)),
            })
        };
        self.ctx.answer(run).await
    }

    type ObserveStream = ObserveStream;

    async fn observe(&self, req: Request<ObserveRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        let req = req.into_inner();
        check_name(&req.name).map_err(|e| self.ctx.to_status(e))?;
        // Subscribed before the first read, so that no change falls between the two.
        let mut changes = self.ctx.node.locks().observe(&locks::lock_key(LockSpace::Elections, &req.name));
        self.ctx.node.read_index().await.map_err(|e| self.ctx.to_status(e.into()))?;
        let (tx, rx) = mpsc::channel(16);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            // (generation, value) of the last leader sent; `Some(None)`: "nobody" was sent.
            let mut last: Option<Option<(u64, Vec<u8>)>> = None;
            // A member cut off from the leader would stream a stale leader forever: it says so
            // instead, and the client observes through another member.
            let cut_off = ctx.freshness.until_cut_off();
            tokio::pin!(cut_off);
            loop {
                changes.borrow_and_update();
                let now = ctx.node.db().begin_read().map_err(ApiError::from).and_then(|txn| {
                    Ok((elections::leader(&txn, &req.name)?, crate::fsm::applied(&txn)?.revision))
                });
                let (leader, revision) = match now {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = tx.send(Err(ctx.to_status(e))).await;
                        return;
                    }
                };
                let seen = leader.as_ref().map(|l| (l.sequencer.generation, l.value.clone()));
                if last.as_ref() != Some(&seen) {
                    last = Some(seen);
                    let answer = LeaderResponse {
                        header: Some(ctx.header(revision)),
                        leader: leader.map(|l| leadership(l, ctx.node.cluster_id)),
                    };
                    if tx.send(Ok(answer)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                    cut_off = &mut cut_off => {
                        let _ = tx.send(Err(ctx.to_status(cut_off.into()))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn withdraw(
        &self,
        req: Request<WithdrawCandidacyRequest>,
    ) -> Result<Response<WithdrawCandidacyResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            let (header, seq) = withdraw(&self.ctx, LockSpace::Elections, &req.name, &req.request_id).await?;
            let leader =
                seq.map(|seq| granted_leadership(&self.ctx, req.name, seq, Vec::new())).transpose()?;
            Ok(WithdrawCandidacyResponse { header: Some(header), leader })
        };
        self.ctx.answer(run).await
    }

    async fn describe(
        &self,
        req: Request<DescribeElectionRequest>,
    ) -> Result<Response<DescribeElectionResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            let (header, row) = described(&self.ctx, LockSpace::Elections, &req.name).await?;
            let election = row.map(|r| election_info(req.name, r, self.ctx.node.cluster_id));
            Ok(DescribeElectionResponse { header: Some(header), election })
        };
        self.ctx.answer(run).await
    }

    async fn list(
        &self,
        req: Request<ListElectionsRequest>,
    ) -> Result<Response<ListElectionsResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            let cluster_id = self.ctx.node.cluster_id;
            let (header, elections, more) =
                listed(&self.ctx, LockSpace::Elections, &req.prefix, &req.start_after, |name, row| {
                    election_info(name, row, cluster_id)
                })
                .await?;
            Ok(ListElectionsResponse { header: Some(header), elections, more })
        };
        self.ctx.answer(run).await
    }

    async fn resign(&self, req: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            let header = release(&self.ctx, &req.sequencer, &req.request_id, true).await?;
            Ok(ResignResponse { header: Some(header) })
        };
        self.ctx.answer(run).await
    }
}
