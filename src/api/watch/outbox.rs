//! A stream's queue of responses on their way to its client, bounded by count and by bytes.
//!
//! The stream's task sends into an [`Outbox`]; tonic takes from the [`Outflow`] as HTTP/2 flow
//! control lets it. Invariants:
//! - A client that does not read holds at most [`OUTBOX`] responses and [`OUTBOX_BYTES`] of
//!   them in its queue (or one larger response alone), whatever its watches select: the task
//!   waits for room, and only its own stream waits.
//! - A response's bytes are given back when tonic takes it, or when the queue is dropped with
//!   it; the gauge handed to [`Outbox::new`] counts exactly the bytes held.
//! - A send never outlives the client: it ends [`Gone`] as soon as the `Outflow` is dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use latch_proto::wire;
use prometheus_client::metrics::gauge::Gauge;
use prost::Message as _;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// Most responses queued for one stream.
pub const OUTBOX: usize = 64;
/// Most bytes of responses queued for one stream.
pub const OUTBOX_BYTES: usize = 4 * 1024 * 1024;

/// What a stream sends its client: a response, or the status that ends the stream.
pub type Item = Result<wire::WatchResponse, Status>;

/// The client went away.
#[derive(Debug, PartialEq, Eq)]
pub struct Gone;

/// A queued response and the bytes of the budget it holds.
struct Queued {
    item: Item,
    _held: Held,
}

/// Bytes of a stream's budget, given back (and uncounted) when dropped.
struct Held {
    _permit: OwnedSemaphorePermit,
    bytes: i64,
    gauge: Gauge,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.dec_by(self.bytes);
    }
}

/// The sending side.
pub struct Outbox {
    tx: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    /// Bytes queued on every stream of the member (`latch_watch_queued_bytes`).
    gauge: Gauge,
}

impl Outbox {
    /// A queue whose held bytes `gauge` counts (shared by every stream of the member).
    pub fn new(gauge: Gauge) -> (Outbox, Outflow) {
        let (tx, rx) = mpsc::channel(OUTBOX);
        (Outbox { tx, bytes: Arc::new(Semaphore::new(OUTBOX_BYTES)), gauge }, Outflow { rx })
    }

    /// Queues `item` once there is room for it, in count and in bytes.
    pub async fn send(&self, item: Item) -> Result<(), Gone> {
        let size = match &item {
            Ok(r) => r.encoded_len(),
            Err(status) => status.message().len(),
        };
        // A response over the whole budget waits for an empty queue, then goes alone.
        let size = size.clamp(1, OUTBOX_BYTES);
        let permit = tokio::select! {
            permit = self.bytes.clone().acquire_many_owned(size as u32) => permit.map_err(|_| Gone)?,
            () = self.tx.closed() => return Err(Gone),
        };
        self.gauge.inc_by(size as i64);
        let held = Held { _permit: permit, bytes: size as i64, gauge: self.gauge.clone() };
        self.tx.send(Queued { item, _held: held }).await.map_err(|_| Gone)
    }

    /// Resolves when the client went away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// The receiving side: the body of the gRPC response.
pub struct Outflow {
    rx: mpsc::Receiver<Queued>,
}

impl tokio_stream::Stream for Outflow {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        // The queued response's bytes go back as it is handed over.
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(queued)) => Poll::Ready(Some(queued.item)),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prost::bytes::Bytes;
    use tokio_stream::StreamExt as _;

    use super::*;

    fn response(id: i64, bytes: usize) -> wire::WatchResponse {
        wire::WatchResponse {
            watch_id: id,
            events: vec![Bytes::from(vec![0u8; bytes])],
            ..Default::default()
        }
    }

    /// Whether sending `response` completes before an hour of (paused) time has passed.
    async fn fits(outbox: &Outbox, response: wire::WatchResponse) -> bool {
        tokio::time::timeout(Duration::from_secs(3600), outbox.send(Ok(response))).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_does_not_read_holds_at_most_the_outbox_bytes() {
        let gauge = Gauge::default();
        let (outbox, mut outflow) = Outbox::new(gauge.clone());
        let mib = 1024 * 1024;
        for id in 1..=3 {
            assert!(fits(&outbox, response(id, mib)).await, "response {id} of 1 MiB fits in 4 MiB");
        }
        assert!(!fits(&outbox, response(4, mib)).await, "a fourth MiB does not: the sender waits");
        let held = gauge.get();
        assert!((3 * mib as i64..4 * mib as i64).contains(&held), "the gauge counts 3 MiB held: {held}");
        let first = outflow.next().await.expect("a response is queued").expect("not an error");
        assert_eq!(first.watch_id, 1, "responses leave in order");
        assert!(fits(&outbox, response(4, mib)).await, "the response taken gave its bytes back");
        assert!(!fits(&outbox, response(5, 8 * mib)).await, "one over the budget waits for an empty queue");
        for id in 2..=4 {
            assert_eq!(outflow.next().await.expect("queued").expect("not an error").watch_id, id);
        }
        assert!(fits(&outbox, response(5, 8 * mib)).await, "… then goes alone");
        drop(outflow);
        assert_eq!(gauge.get(), 0, "a dropped queue gives back everything it held");
        assert_eq!(outbox.send(Ok(response(6, 1))).await, Err(Gone), "a send after the client went is Gone");
    }

    #[tokio::test(start_paused = true)]
    async fn small_responses_are_bounded_by_count() {
        let (outbox, _outflow) = Outbox::new(Gauge::default());
        for id in 0..OUTBOX as i64 {
            assert!(fits(&outbox, response(id, 10)).await, "response {id} fits");
        }
        assert!(!fits(&outbox, response(-1, 10)).await, "one past {OUTBOX} waits");
    }
}
