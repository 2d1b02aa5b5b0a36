//! The Session service: Create, KeepAlive, Close, Get, List (see `core::leases` for the lease
//! rule, `fsm::sessions` for what is replicated).
//!
//! Keepalives are answered by the leader alone: another member ends the stream UNAVAILABLE
//! with the leader's address, and the client moves there. (Forwarding them over the peer
//! transport would add a hop to every keepalive to save one redirect per leader change.)

use std::pin::Pin;
use std::time::Duration;

use futures::stream::{FuturesOrdered, Stream, StreamExt};
use latch_proto::internal::{outcome, CloseSession, CreateSession, SessionRow};
use latch_proto::v1::session_server::{Session, SessionServer};
use latch_proto::v1::*;
use redb::ReadableDatabase as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::kv::check_request_id;
use super::{ApiError, Context};
use crate::fsm::sessions::{self, MAX_SESSION_NAME_BYTES};

/// What a `SessionInfo` costs in an answer beyond its id and name: six integers of at most 10
/// bytes and eight field tags and lengths.
const SESSION_INFO_OVERHEAD_BYTES: usize = 80;

/// Keepalives of one stream in flight at once (answered in order).
const KEEPALIVES_IN_FLIGHT: usize = 256;

/// Namespace of the session ids derived from a request id (UUIDv5), so that a retried Create
/// proposes the very same command.
const SESSION_ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6c61_7463_6873_6573_7369_6f6e_6964_7631);

pub struct SessionService {
    ctx: Context,
}

impl SessionService {
    pub fn server(ctx: Context) -> SessionServer<SessionService> {
        SessionServer::new(SessionService { ctx })
    }

    /// Refuses a new session past `--max-sessions` (as this member counts the live ones); a
    /// create resent under a request id already applied is answered from memory as before.
    fn check_room(&self, request_id: &str) -> Result<(), ApiError> {
        let live = self.ctx.node.status().sessions;
        if live < self.ctx.limits.max_sessions as u64 {
            return Ok(());
        }
        if !request_id.is_empty() && crate::fsm::remembered(&self.ctx.node.db().begin_read()?, request_id)? {
            return Ok(());
        }
        Err(ApiError::OverLimit(format!(
            "the cluster holds {live} sessions, the most --max-sessions allows: close the sessions no \
             longer needed, or let them expire"
        )))
    }

    fn check_ttl(&self, ttl_ms: i64) -> Result<u64, ApiError> {
        let (min, max) = (self.ctx.limits.session_ttl_min, self.ctx.limits.session_ttl_max);
        let ttl = u64::try_from(ttl_ms).ok().map(Duration::from_millis);
        match ttl {
            Some(t) if t >= min && t <= max => Ok(ttl_ms as u64),
            _ => Err(ApiError::InvalidArgument {
                field: "ttl_ms",
                problem: format!(
                    "{ttl_ms} ms is outside the allowed {} … {} (--session-ttl-min, --session-ttl-max)",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            }),
        }
    }

    /// What the answering member knows of sessions `rows`, with their leases as it counts them.
    async fn infos(&self, rows: Vec<(String, SessionRow)>) -> Result<Vec<SessionInfo>, ApiError> {
        let ids = rows.iter().map(|(id, _)| id.clone()).collect();
        let leases = self.ctx.node.leases(ids).await?;
        let txn = self.ctx.node.db().begin_read()?;
        let locks = rows
            .iter()
            .map(|(id, _)| crate::fsm::locks::count_of(&txn, id))
            .collect::<Result<Vec<_>, _>>()?;
        let instances = rows
            .iter()
            .map(|(id, _)| crate::fsm::registry::count_of(&txn, id))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .zip(leases)
            .zip(locks)
            .zip(instances)
            .map(|((((id, row), left), locks), instances)| SessionInfo {
                id,
                name: row.name,
                ttl_ms: row.ttl_ms as i64,
                remaining_ms: left.unwrap_or(0) as i64,
                created_revision: row.created_revision,
                keys: row.keys as i64,
                locks: locks as i64,
                instances: instances as i64,
            })
            .collect())
    }
}

fn check_id(id: &str) -> Result<(), ApiError> {
    sessions::check_id(id.as_bytes()).map_err(|problem| ApiError::InvalidArgument { field: "id", problem })
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<KeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Session for SessionService {
    async fn create(
        &self,
        req: Request<CreateSessionRequest>,
    ) -> Result<Response<CreateSessionResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            let ttl_ms = self.check_ttl(req.ttl_ms)?;
            if req.name.len() > MAX_SESSION_NAME_BYTES {
                return Err(ApiError::InvalidArgument {
                    field: "name",
                    problem: format!("is {} bytes, at most {MAX_SESSION_NAME_BYTES} allowed", req.name.len()),
                });
            }
            check_request_id(&req.request_id)?;
            self.check_room(&req.request_id)?;
            let id = if req.request_id.is_empty() {
                uuid::Uuid::new_v4()
            } else {
                uuid::Uuid::new_v5(&SESSION_ID_NAMESPACE, req.request_id.as_bytes())
            };
            let body = latch_proto::internal::command::Body::CreateSession(CreateSession {
                id: id.to_string(),
                name: req.name,
                ttl_ms,
            });
            match self.ctx.write(&req.request_id, body).await? {
                (header, outcome::Result::Session(r)) => {
                    Ok(CreateSessionResponse { header: Some(header), id: r.id, ttl_ms: r.ttl_ms as i64 })
                }
                _ => Err(ApiError::Internal(
                    "the state machine answered a create_session with another outcome".into(),
                )),
            }
        };
        self.ctx.answer(run).await
    }

    type KeepAliveStream = KeepAliveStream;

    async fn keep_alive(
        &self,
        req: Request<Streaming<KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let mut incoming = req.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVES_IN_FLIGHT);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let mut in_flight = FuturesOrdered::new();
            let mut open = true;
            loop {
                tokio::select! {
                    next = incoming.next(), if open && in_flight.len() < KEEPALIVES_IN_FLIGHT => match next {
                        Some(Ok(ka)) => {
                            let ctx = ctx.clone();
                            in_flight.push_back(async move {
                                check_id(&ka.id)?;
                                let grant = ctx.node.keep_alive(ka.id.clone()).await?;
                                Ok::<_, ApiError>(KeepAliveResponse {
                                    header: Some(ctx.header(ctx.node.status().applied.revision)),
                                    id: ka.id,
                                    ttl_ms: grant.ttl_ms as i64,
                                    granted_ms: grant.granted_ms as i64,
                                })
                            });
                        }
                        // The client closed its side (or the stream broke): answer what is in flight.
                        Some(Err(_)) | None => open = false,
                    },
                    Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                        let answer = answer.map_err(|e| ctx.to_status(e));
                        let failed = answer.is_err();
                        if tx.send(answer).await.is_err() || failed {
                            return;
                        }
                    }
                    else => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn close(
        &self,
        req: Request<CloseSessionRequest>,
    ) -> Result<Response<CloseSessionResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            check_id(&req.id)?;
            check_request_id(&req.request_id)?;
            let body = latch_proto::internal::command::Body::CloseSession(CloseSession { id: req.id });
            match self.ctx.write(&req.request_id, body).await? {
                (header, outcome::Result::Session(r)) => {
                    Ok(CloseSessionResponse { header: Some(header), keys_deleted: r.keys_deleted as i64 })
                }
                _ => Err(ApiError::Internal(
                    "the state machine answered a close_session with another outcome".into(),
                )),
            }
        };
        self.ctx.answer(run).await
    }

    async fn get(&self, req: Request<GetSessionRequest>) -> Result<Response<GetSessionResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            check_id(&req.id)?;
            self.ctx.node.read_index().await?;
            let txn = self.ctx.node.db().begin_read()?;
            let revision = crate::fsm::applied(&txn)?.revision;
            let Some(row) = sessions::read(&txn, &req.id)? else {
                return Err(ApiError::NotFound { kind: "session".into(), name: req.id });
            };
            let info = self.infos(vec![(req.id, row)]).await?.pop();
            Ok(GetSessionResponse { header: Some(self.ctx.header(revision)), session: info })
        };
        self.ctx.answer(run).await
    }

    /// A page of sessions: as many as `limit` asks and `--max-response-bytes` holds (at least
    /// one), `more` when others follow.
    async fn list(
        &self,
        req: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            let max = super::page_limit(req.limit)?;
            self.ctx.node.read_index().await?;
            let txn = self.ctx.node.db().begin_read()?;
            let revision = crate::fsm::applied(&txn)?.revision;
            let mut room = self.ctx.limits.max_response_bytes;
            let (rows, more) = sessions::page(&txn, &req.start_after, max, |id, row| {
                let cost = id.len() + row.name.len() + SESSION_INFO_OVERHEAD_BYTES;
                room = room.saturating_sub(cost);
                room > 0
            })?;
            drop(txn);
            let sessions = self.infos(rows).await?;
            Ok(ListSessionsResponse { header: Some(self.ctx.header(revision)), sessions, more })
        };
        self.ctx.answer(run).await
    }
}
