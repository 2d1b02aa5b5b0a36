//! The Maintenance service: `Snapshot` streams the member's whole replicated state as a snapshot
//! file ([`crate::backup`]), taken from one read transaction on a blocking thread and sent as
//! the client takes it: a bounded channel keeps a few chunks in memory however large the state.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use latch_proto::internal::SnapshotFileHeader;
use latch_proto::v1::maintenance_server::{Maintenance, MaintenanceServer};
use latch_proto::v1::{SnapshotRequest, SnapshotResponse};
use redb::ReadableDatabase as _;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{ApiError, Context};
use crate::{backup, fsm};

/// Snapshot streams one member serves at once: each holds a read transaction of its state open
/// (the pages written meanwhile are not reused until it ends, so the state file grows).
pub const MAX_SNAPSHOT_STREAMS: usize = 2;

/// Parts of a snapshot (each a chunk of about `fsm::snapshot::CHUNK_BYTES`) queued between the
/// thread that reads the state and a client slower than it.
const QUEUED_PARTS: usize = 4;

pub struct MaintenanceService {
    ctx: Context,
    streams: Arc<Semaphore>,
}

impl MaintenanceService {
    pub fn server(ctx: Context) -> MaintenanceServer<MaintenanceService> {
        MaintenanceServer::new(MaintenanceService {
            ctx,
            streams: Arc::new(Semaphore::new(MAX_SNAPSHOT_STREAMS)),
        })
    }
}

type Parts = ReceiverStream<Result<SnapshotResponse, Status>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    type SnapshotStream = Parts;

    async fn snapshot(&self, request: Request<SnapshotRequest>) -> Result<Response<Parts>, Status> {
        let ctx = &self.ctx;
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            ctx.to_status(ApiError::OverLimit(format!(
                "this member already streams {MAX_SNAPSHOT_STREAMS} snapshots, the most it serves at \
                 once: try again once one ends, or ask another member"
            )))
        })?;
        if !request.into_inner().serializable {
            // Every write acknowledged before the call is in the state read below.
            ctx.node.read_index().await.map_err(|e| ctx.to_status(e.into()))?;
        }
        let txn = ctx.node.db().begin_read().map_err(|e| ctx.to_status(e.into()))?;
        let revision = fsm::applied(&txn).map_err(|e| ctx.to_status(e.into()))?.revision;
        let header = ctx.header(revision);
        let taken_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let start = backup::file_start(&SnapshotFileHeader {
            cluster_id: ctx.node.cluster_id,
            member_id: ctx.node.member_id,
            taken_unix_ms,
            build: env!("CARGO_PKG_VERSION").to_string(),
        });
        let (tx, rx) = mpsc::channel(QUEUED_PARTS);
        let failed = ctx.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let send = |blob: Vec<u8>| {
                // A client gone stops the stream: the error only ends the walk.
                tx.blocking_send(Ok(SnapshotResponse { header: Some(header), blob })).map_err(|_| ())
            };
            if send(start).is_err() {
                return;
            }
            if let Err(e) = fsm::snapshot::write(&txn, &mut |frame| send(frame)) {
                tracing::error!(member = failed.node.member_id, error = %e, "a snapshot stream failed");
                let _ = tx.blocking_send(Err(failed.to_status(e.into())));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
