//! The Maintenance service: `Snapshot` streams the member's whole replicated state as a snapshot
//! file ([`crate::backup`]), taken from one read transaction on a blocking thread and sent as
//! the client takes it: a bounded channel keeps a few chunks in memory however large the state.
//!
//! Invariant: a stream never holds its read transaction (which keeps the state file from
//! reusing the pages written meanwhile) past [`STALL`] without the client taking a part, past
//! [`MAX_STREAM_LIFE`], nor past the member's stop: it ends with UNAVAILABLE then.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use latch_proto::internal::SnapshotFileHeader;
use latch_proto::v1::maintenance_server::{Maintenance, MaintenanceServer};
use latch_proto::v1::{SnapshotRequest, SnapshotResponse};
use redb::ReadableDatabase as _;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch, Semaphore};
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

/// The longest a stream waits for its client to take a part before it ends: a client that
/// holds a stream open without reading it (a process stuck writing to a hung disk) must not
/// hold the read transaction for good.
pub const STALL: Duration = Duration::from_secs(60);

/// The longest a stream lasts: a client that takes a part just before each [`STALL`] would
/// otherwise hold the read transaction for as long as it likes. An hour streams a state of
/// tens of gigabytes at a few megabytes a second.
pub const MAX_STREAM_LIFE: Duration = Duration::from_secs(3600);

pub struct MaintenanceService {
    ctx: Context,
    streams: Arc<Semaphore>,
    /// Turns true when the member stops.
    stop: watch::Receiver<bool>,
}

impl MaintenanceService {
    pub fn server(ctx: Context, stop: watch::Receiver<bool>) -> MaintenanceServer<MaintenanceService> {
        let streams = Arc::new(Semaphore::new(MAX_SNAPSHOT_STREAMS));
        MaintenanceServer::new(MaintenanceService { ctx, streams, stop })
    }
}

/// Why a part was not sent.
enum Unsent {
    /// The client is gone: nobody to tell.
    Gone,
    /// The client is there, but the stream must end (told why).
    Ended(String),
}

/// Sends `part` on `tx` from a blocking thread: waits at most [`STALL`] for room, and not past
/// the member's stop or `ends_by`.
fn send_part(
    runtime: &Handle,
    tx: &mpsc::Sender<Result<SnapshotResponse, Status>>,
    (stop, ends_by): (&mut watch::Receiver<bool>, Instant),
    part: SnapshotResponse,
) -> Result<(), Unsent> {
    if Instant::now() >= ends_by {
        return Err(Unsent::Ended(format!(
            "the snapshot stream lasted {}, the most one may: take it again, reading faster",
            humantime::format_duration(MAX_STREAM_LIFE)
        )));
    }
    runtime.block_on(send_within_stall(tx, stop, part))
}

/// Queues `part` on `tx` as soon as there is room, within [`STALL`] and before the member's stop.
async fn send_within_stall(
    tx: &mpsc::Sender<Result<SnapshotResponse, Status>>,
    stop: &mut watch::Receiver<bool>,
    part: SnapshotResponse,
) -> Result<(), Unsent> {
    tokio::select! {
        sent = tokio::time::timeout(STALL, tx.send(Ok(part))) => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Unsent::Gone),
            Err(_) => Err(Unsent::Ended(format!(
                "the client took no part of the snapshot for {}: the stream ends (it kept the \
                 member's state file from reusing pages)",
                humantime::format_duration(STALL)
            ))),
        },
        _ = stop.wait_for(|stopped| *stopped) => {
            Err(Unsent::Ended("the member is stopping: take the snapshot from another member".into()))
        }
    }
}

type Parts = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

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
        // Why the stream ended early, told after the parts queued before it: not through the
        // channel, which a client that stopped reading keeps full.
        let outcome: Arc<Mutex<Option<Status>>> = Arc::default();
        let ending = outcome.clone();
        let failed = ctx.clone();
        let (runtime, mut stop) = (Handle::current(), self.stop.clone());
        let ends_by = Instant::now() + MAX_STREAM_LIFE;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut send = |blob: Vec<u8>| {
                send_part(
                    &runtime,
                    &tx,
                    (&mut stop, ends_by),
                    SnapshotResponse { header: Some(header), blob, last: false },
                )
            };
            let sent = match send(start) {
                Ok(()) => fsm::snapshot::write(&txn, &mut send),
                Err(unsent) => Ok(Err(unsent)),
            };
            // The file is whole: said in a part of its own.
            let sent = match sent {
                Ok(Ok(_)) => Ok(send_part(
                    &runtime,
                    &tx,
                    (&mut stop, ends_by),
                    SnapshotResponse { header: Some(header), blob: Vec::new(), last: true },
                )),
                other => other.map(|r| r.map(|_| ())),
            };
            drop(txn);
            let member = failed.node.member_id;
            let ended = match sent {
                Ok(Ok(_)) | Ok(Err(Unsent::Gone)) => return,
                Ok(Err(Unsent::Ended(why))) => {
                    tracing::warn!(member, "a snapshot stream ended: {why}");
                    failed.to_status(ApiError::Unavailable(why))
                }
                Err(e) => {
                    tracing::error!(member, error = %e, "a snapshot stream failed");
                    failed.to_status(e.into())
                }
            };
            if let Ok(mut slot) = ending.lock() {
                *slot = Some(ended);
            }
            // `tx` is dropped only now: the stream's end finds the outcome set.
            drop(tx);
        });
        let told = futures::stream::once(async move { outcome.lock().ok().and_then(|mut s| s.take()) })
            .filter_map(|ended| async move { ended.map(Err) });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).chain(told))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The runtime's clock, which the paused test advances (not the system's).
    use tokio::time::Instant;

    fn ended(sent: Result<(), Unsent>) -> String {
        match sent {
            Err(Unsent::Ended(why)) => why,
            Err(Unsent::Gone) => panic!("the client is there: the stream should end with why, not as gone"),
            Ok(()) => panic!("no room was made: the part should not have been queued"),
        }
    }

    /// A client that takes no part keeps the member's read transaction open: the stream ends
    /// after [`STALL`] without room, or at once when the member stops, saying which.
    #[tokio::test(start_paused = true)]
    async fn a_stream_whose_client_takes_no_part_ends_after_the_stall_or_at_the_members_stop() {
        let (tx, _rx) = mpsc::channel(1);
        tx.try_send(Ok(SnapshotResponse::default())).expect("room for one part");
        let (stopping, mut stop) = watch::channel(false);

        let started = Instant::now();
        let why = ended(send_within_stall(&tx, &mut stop, SnapshotResponse::default()).await);
        assert_eq!(started.elapsed(), STALL, "the stream should wait for room for exactly the stall");
        assert!(
            why.contains("took no part of the snapshot for 1m"),
            "it should say the client stalled: {why}"
        );

        stopping.send(true).expect("the receiver is held");
        let started = Instant::now();
        let why = ended(send_within_stall(&tx, &mut stop, SnapshotResponse::default()).await);
        assert_eq!(started.elapsed(), Duration::ZERO, "a stopping member should not wait for room");
        assert!(why.contains("the member is stopping"), "it should say the member stops: {why}");
    }

    /// A client gone (its stream dropped) is nobody to tell.
    #[tokio::test]
    async fn a_part_for_a_client_gone_is_dropped_quietly() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let (_stopping, mut stop) = watch::channel(false);
        let sent = send_within_stall(&tx, &mut stop, SnapshotResponse::default()).await;
        assert!(matches!(sent, Err(Unsent::Gone)), "a client gone should be told nothing");
    }
}
