//! A stream's queue of responses on their way to its client, bounded by count and by bytes, and
//! the member's budget of bytes queued over every stream.
//!
//! The stream's task sends into an [`Outbox`]; tonic takes from the [`Outflow`] as HTTP/2 flow
//! control lets it. Invariants:
//! - A client that does not read holds at most [`OUTBOX`] responses and [`OUTBOX_BYTES`] of
//!   them in its queue (or one larger response alone), whatever its watches select: the task
//!   waits for room, and only its own stream waits.
//! - Every stream's queue together holds at most the member's [`QueueBudget`]
//!   (`--max-watch-queued-bytes`): a response takes its bytes from its stream's budget and from
//!   the member's, and holds both until tonic takes it, or until its queue is dropped or cut.
//! - A send waits at most its stall deadline (`--watch-stall-deadline`) for room in its own
//!   queue, then at most [`MEMBER_WAIT`] for the member's budget; past either it fails
//!   ([`Unsent::Stalled`], [`Unsent::MemberFull`]) and the stream is to be [`Outbox::cut`]:
//!   what its queue holds is dropped then, not when the client reads or its connection closes.
//! - What a stream's task holds outside its queue while it sends it (a step of history read
//!   and encoded, [`Outbox::take_ahead`]) holds the member's budget too, taken ahead before the
//!   task waits on its client; the responses it sends take their bytes from what was taken
//!   ahead, so nothing is counted twice, and the rest goes back when the step is sent
//!   ([`Outbox::release_ahead`]) or the queue is cut or dropped.
//! - The gauge of the [`QueueBudget`] counts exactly the bytes of budget held.
//! - A send never outlives the client: it ends [`Unsent::Gone`] as soon as the `Outflow` is
//!   dropped.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use latch_proto::wire;
use prometheus_client::metrics::gauge::Gauge;
use prost::Message as _;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// Most responses queued for one stream.
pub const OUTBOX: usize = 64;
/// Most bytes of responses queued for one stream.
pub const OUTBOX_BYTES: usize = 4 * 1024 * 1024;
/// How long a response that has room in its stream's queue waits for the member's budget.
pub const MEMBER_WAIT: Duration = Duration::from_secs(1);
/// How often a stream waiting to take bytes ahead (for a step of history) tries again.
pub const AHEAD_RETRY: Duration = Duration::from_millis(10);

/// What a stream sends its client: a response, or the status that ends the stream.
pub type Item = Result<wire::WatchResponse, Status>;

/// Why a send did not queue its response.
#[derive(Debug, PartialEq, Eq)]
pub enum Unsent {
    /// The client went away.
    Gone,
    /// The stream's own queue had no room for the stall deadline: its client reads nothing.
    Stalled,
    /// The member's budget of queued bytes had no room within [`MEMBER_WAIT`].
    MemberFull,
}

/// The member's budget of bytes queued for watch clients (`--max-watch-queued-bytes`), shared
/// by every stream's [`Outbox`], and the gauge that counts what is taken of it
/// (`latch_watch_queued_bytes`).
///
/// A semaphore, one permit a byte, rather than `node::budget::Budget`: a response waits a
/// moment for bytes ([`MEMBER_WAIT`], first come first served) where a request is refused at
/// once.
#[derive(Clone)]
pub struct QueueBudget {
    bytes: Arc<Semaphore>,
    /// The budget's size: no one response takes more (a larger one waits for all of it).
    limit: usize,
    gauge: Gauge,
}

impl QueueBudget {
    pub fn new(limit: usize, gauge: Gauge) -> QueueBudget {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        QueueBudget { bytes: Arc::new(Semaphore::new(limit)), limit, gauge }
    }
}

/// A queued response and the bytes of the budgets it holds.
struct Queued {
    item: Item,
    _held: Held,
}

/// Bytes of the member's budget taken ahead for what a stream's task holds outside its queue,
/// given back (and uncounted) when dropped.
struct Ahead {
    member: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.gauge.dec_by(self.member.num_permits() as i64);
    }
}

/// Bytes of a stream's budget and of the member's (those taken for it, and those it took of
/// what was taken ahead, which uncount themselves), given back (and uncounted) when dropped.
struct Held {
    _own: OwnedSemaphorePermit,
    member: Option<OwnedSemaphorePermit>,
    _ahead: Option<Ahead>,
    gauge: Gauge,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.dec_by(self.member.as_ref().map_or(0, |m| m.num_permits()) as i64);
    }
}

/// The receiving end of a stream's queue, shared by its [`Outflow`] (which takes from it) and
/// its [`Outbox`] (which may cut it: drop what it holds and end it with a status).
struct Taker {
    /// `None` once the queue is cut or the `Outflow` dropped: what it held is dropped with it.
    rx: Option<mpsc::Receiver<Queued>>,
    /// The status that ends a cut stream, until the `Outflow` hands it over.
    last: Option<Status>,
    /// The `Outflow`'s task while it waits for a response, woken by a cut.
    waker: Option<Waker>,
}

/// The lock of a [`Taker`]. Nothing panics while holding it, so a poisoned one is still sound.
fn lock(taker: &Mutex<Taker>) -> MutexGuard<'_, Taker> {
    taker.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The lock of what was taken ahead. Nothing panics while holding it.
fn lock_ahead(ahead: &Mutex<Option<Ahead>>) -> MutexGuard<'_, Option<Ahead>> {
    ahead.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The sending side.
pub struct Outbox {
    tx: mpsc::Sender<Queued>,
    /// The stream's own budget of bytes ([`OUTBOX_BYTES`]).
    bytes: Arc<Semaphore>,
    member: QueueBudget,
    /// Most bytes one response takes of either budget (a larger one waits for all of it).
    most: usize,
    /// How long a send may wait for room in this queue (`--watch-stall-deadline`).
    stall_deadline: Duration,
    taker: Arc<Mutex<Taker>>,
    /// What [`Outbox::take_ahead`] took of the member's budget and no send took from it yet.
    /// Locked only between awaits.
    ahead: Mutex<Option<Ahead>>,
}

impl Outbox {
    /// A queue drawing on the member's `budget`, whose sends wait at most `stall_deadline` for
    /// room in it.
    pub fn new(budget: &QueueBudget, stall_deadline: Duration) -> (Outbox, Outflow) {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let taker = Arc::new(Mutex::new(Taker { rx: Some(rx), last: None, waker: None }));
        let outbox = Outbox {
            tx,
            bytes: Arc::new(Semaphore::new(OUTBOX_BYTES)),
            member: budget.clone(),
            most: OUTBOX_BYTES.min(budget.limit),
            stall_deadline,
            taker: taker.clone(),
            ahead: Mutex::new(None),
        };
        (outbox, Outflow { taker })
    }

    /// Queues `item` once there is room for it, in count and in bytes, in this queue (waiting
    /// at most the stall deadline) and in the member's budget (at most [`MEMBER_WAIT`]).
    pub async fn send(&self, item: Item) -> Result<(), Unsent> {
        let size = match &item {
            Ok(r) => held(r),
            Err(status) => status.message().len(),
        };
        // A response over a budget waits for all of it, then goes alone. `most` is at most
        // OUTBOX_BYTES, so it fits a u32.
        let size = size.clamp(1, self.most);
        let permits = size as u32;
        // Room at once, the usual case (a client that reads): no timer, no wait registered.
        let at_once = self.tx.try_reserve().ok().and_then(|slot| {
            let bytes = self.bytes.clone().try_acquire_many_owned(permits).ok()?;
            Some((slot, bytes))
        });
        let (slot, own) = match at_once {
            Some(room) => room,
            None => {
                let own = async {
                    let slot = self.tx.reserve().await.map_err(|_| Unsent::Gone)?;
                    let bytes =
                        self.bytes.clone().acquire_many_owned(permits).await.map_err(|_| Unsent::Gone)?;
                    Ok::<_, Unsent>((slot, bytes))
                };
                tokio::select! {
                    room = tokio::time::timeout(self.stall_deadline, own) => room.map_err(|_| Unsent::Stalled)??,
                    () = self.tx.closed() => return Err(Unsent::Gone),
                }
            }
        };
        // What was taken ahead is counted already (and given back uncounted if this fails);
        // the rest is taken from the member's budget and counted now.
        let ahead = self.take_from_ahead(size);
        let rest = size - ahead.as_ref().map_or(0, |a| a.member.num_permits());
        let member = match rest {
            0 => None,
            rest => {
                // At most `size`, which fits a u32.
                let rest = rest as u32;
                let member = match self.member.bytes.clone().try_acquire_many_owned(rest) {
                    Ok(member) => member,
                    Err(_) => tokio::select! {
                        room = tokio::time::timeout(MEMBER_WAIT, self.member.bytes.clone().acquire_many_owned(rest)) => {
                            // The member's semaphore is never closed.
                            room.map_err(|_| Unsent::MemberFull)?.map_err(|_| Unsent::Gone)?
                        }
                        () = self.tx.closed() => return Err(Unsent::Gone),
                    },
                };
                Some(member)
            }
        };
        let gauge = self.member.gauge.clone();
        gauge.inc_by(rest as i64);
        let held = Held { _own: own, member, _ahead: ahead, gauge };
        slot.send(Queued { item, _held: held });
        Ok(())
    }

    /// Whether the queue has room now for `responses` responses of `bytes` in all (as much as
    /// it ever has, for more).
    pub fn has_room(&self, responses: usize, bytes: usize) -> bool {
        self.tx.capacity() >= responses.clamp(1, OUTBOX)
            && self.bytes.available_permits() >= bytes.clamp(1, self.most)
    }

    /// Waits until the queue has room for `responses` responses of `bytes` in all, at most the
    /// stall deadline (then [`Unsent::Stalled`]), and takes none of it: for a task that let go
    /// of what it held rather than hold it while its client makes room.
    pub async fn wait_room(&self, responses: usize, bytes: usize) -> Result<(), Unsent> {
        // `most` is at most OUTBOX_BYTES, so it fits a u32.
        let (responses, bytes) = (responses.clamp(1, OUTBOX), bytes.clamp(1, self.most) as u32);
        let room = async {
            let slots = self.tx.reserve_many(responses).await.map_err(|_| Unsent::Gone)?;
            let own = self.bytes.acquire_many(bytes).await.map_err(|_| Unsent::Gone)?;
            drop((slots, own));
            Ok::<_, Unsent>(())
        };
        tokio::select! {
            room = tokio::time::timeout(self.stall_deadline, room) => room.map_err(|_| Unsent::Stalled)?,
            () = self.tx.closed() => Err(Unsent::Gone),
        }
    }

    /// Up to `size` bytes of what was taken ahead, still counted.
    fn take_from_ahead(&self, size: usize) -> Option<Ahead> {
        let mut ahead = lock_ahead(&self.ahead);
        let left = ahead.as_ref()?.member.num_permits();
        if left <= size {
            return ahead.take();
        }
        let member = ahead.as_mut()?.member.split(size)?;
        Some(Ahead { member, gauge: self.member.gauge.clone() })
    }

    /// Takes from the member's budget, now or not at all, what is missing for `bytes` to be
    /// taken ahead: for what the stream's task is about to hold outside its queue while it
    /// sends it. Its sends take their bytes from these first. `false`: the budget has no room
    /// now; the task should drop what it holds, [`Outbox::wait_ahead`], and read it again.
    /// More than the whole budget takes all of it.
    pub fn take_ahead(&self, bytes: usize) -> bool {
        let Some(missing) = self.missing_ahead(bytes) else { return true };
        match self.member.bytes.clone().try_acquire_many_owned(missing) {
            Ok(permit) => {
                self.add_ahead(permit);
                true
            }
            Err(_) => false,
        }
    }

    /// Waits for what is missing for `bytes` to be taken ahead, at most [`MEMBER_WAIT`] (then
    /// [`Unsent::MemberFull`]), and takes it. It does not queue for the budget, where it would
    /// hold up every smaller send behind it (the semaphore serves its queue in order): it
    /// tries again every [`AHEAD_RETRY`].
    pub async fn wait_ahead(&self, bytes: usize) -> Result<(), Unsent> {
        let until = tokio::time::Instant::now() + MEMBER_WAIT;
        loop {
            if self.take_ahead(bytes) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= until {
                return Err(Unsent::MemberFull);
            }
            tokio::select! {
                () = tokio::time::sleep(AHEAD_RETRY) => {}
                () = self.tx.closed() => return Err(Unsent::Gone),
            }
        }
    }

    /// Gives back what was taken ahead and no send took.
    pub fn release_ahead(&self) {
        let ahead = lock_ahead(&self.ahead).take();
        drop(ahead);
    }

    /// How many bytes of the member's budget `bytes` taken ahead still needs (`None`: none),
    /// `bytes` counted at most the whole budget.
    fn missing_ahead(&self, bytes: usize) -> Option<u32> {
        if bytes == 0 {
            return None;
        }
        let have = lock_ahead(&self.ahead).as_ref().map_or(0, |a| a.member.num_permits());
        // One acquire takes at most u32::MAX permits.
        let want = bytes.clamp(1, self.member.limit.min(u32::MAX as usize));
        (want > have).then(|| u32::try_from(want - have).unwrap_or(u32::MAX))
    }

    fn add_ahead(&self, permit: OwnedSemaphorePermit) {
        self.member.gauge.inc_by(permit.num_permits() as i64);
        let mut ahead = lock_ahead(&self.ahead);
        match ahead.as_mut() {
            Some(a) => a.member.merge(permit),
            None => *ahead = Some(Ahead { member: permit, gauge: self.member.gauge.clone() }),
        }
    }

    /// Ends the stream at once: what its queue holds is dropped (its bytes given back now) and
    /// the client gets `status` next. Sends after it are [`Unsent::Gone`].
    pub fn cut(&self, status: Status) {
        let (dropped, waker) = {
            let mut taker = lock(&self.taker);
            if taker.rx.is_none() {
                // The client went away; there is no one to tell.
                return;
            }
            taker.last = Some(status);
            (taker.rx.take(), taker.waker.take())
        };
        drop(dropped);
        self.release_ahead();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Resolves when the client went away (or the queue was cut); holds none of the outbox.
    pub fn on_close(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let tx = self.tx.clone();
        async move { tx.closed().await }
    }
}

/// The receiving side: the body of the gRPC response.
pub struct Outflow {
    taker: Arc<Mutex<Taker>>,
}

impl tokio_stream::Stream for Outflow {
    type Item = Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let mut taker = lock(&self.taker);
        let Some(rx) = taker.rx.as_mut() else {
            // Cut: the status that ends the stream, then the end.
            return Poll::Ready(taker.last.take().map(Err));
        };
        // The queued response's bytes go back as it is handed over.
        match rx.poll_recv(cx) {
            Poll::Ready(Some(queued)) => Poll::Ready(Some(queued.item)),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if !taker.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    taker.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Outflow {
    fn drop(&mut self) {
        // What is queued goes now, and the sender learns the client is gone.
        let rx = lock(&self.taker).rx.take();
        drop(rx);
    }
}

/// The bytes a queued response is counted for: its encoding, and the list of the other
/// watches a shared response names, held unencoded (8 bytes an id; 1 or 2 on the wire).
pub fn held(r: &wire::WatchResponse) -> usize {
    r.encoded_len() + r.also_watch_ids.len() * std::mem::size_of::<i64>()
}

#[cfg(test)]
mod tests {
    use prost::bytes::Bytes;
    use tokio::time::Instant;
    use tokio_stream::StreamExt as _;

    use super::*;

    const MIB: usize = 1024 * 1024;
    /// A stall deadline no test below reaches, unless it means to.
    const NEVER: Duration = Duration::from_secs(24 * 3600);

    fn response(id: i64, bytes: usize) -> wire::WatchResponse {
        wire::WatchResponse {
            watch_id: id,
            events: vec![Bytes::from(vec![0u8; bytes])],
            ..Default::default()
        }
    }

    /// A member's budget far larger than any test queues.
    fn roomy() -> QueueBudget {
        QueueBudget::new(1 << 40, Gauge::default())
    }

    /// Whether sending `response` is queued before an hour of (paused) time has passed.
    async fn fits(outbox: &Outbox, response: wire::WatchResponse) -> bool {
        matches!(tokio::time::timeout(Duration::from_secs(3600), outbox.send(Ok(response))).await, Ok(Ok(())))
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_does_not_read_holds_at_most_the_outbox_bytes() {
        let budget = roomy();
        let (outbox, mut outflow) = Outbox::new(&budget, NEVER);
        for id in 1..=3 {
            assert!(fits(&outbox, response(id, MIB)).await, "response {id} of 1 MiB fits in 4 MiB");
        }
        assert!(!fits(&outbox, response(4, MIB)).await, "a fourth MiB does not: the sender waits");
        let held = budget.gauge.get();
        assert!((3 * MIB as i64..4 * MIB as i64).contains(&held), "the gauge counts 3 MiB held: {held}");
        let first = outflow.next().await.expect("a response is queued").expect("not an error");
        assert_eq!(first.watch_id, 1, "responses leave in order");
        assert!(fits(&outbox, response(4, MIB)).await, "the response taken gave its bytes back");
        assert!(!fits(&outbox, response(5, 8 * MIB)).await, "one over the budget waits for an empty queue");
        for id in 2..=4 {
            assert_eq!(outflow.next().await.expect("queued").expect("not an error").watch_id, id);
        }
        assert!(fits(&outbox, response(5, 8 * MIB)).await, "… then goes alone");
        drop(outflow);
        assert_eq!(budget.gauge.get(), 0, "a dropped queue gives back everything it held");
        assert_eq!(
            outbox.send(Ok(response(6, 1))).await,
            Err(Unsent::Gone),
            "a send after the client went is Gone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn small_responses_are_bounded_by_count() {
        let (outbox, _outflow) = Outbox::new(&roomy(), NEVER);
        for id in 0..OUTBOX as i64 {
            assert!(fits(&outbox, response(id, 10)).await, "response {id} fits");
        }
        assert!(!fits(&outbox, response(-1, 10)).await, "one past {OUTBOX} waits");
    }

    #[tokio::test(start_paused = true)]
    async fn the_member_budget_bounds_the_bytes_queued_over_every_stream_and_a_send_that_finds_none_fails_after_the_wait(
    ) {
        let budget = QueueBudget::new(3 * MIB, Gauge::default());
        let (a, mut a_flow) = Outbox::new(&budget, NEVER);
        let (b, mut b_flow) = Outbox::new(&budget, NEVER);
        let (c, _c_flow) = Outbox::new(&budget, NEVER);
        let (d, _d_flow) = Outbox::new(&budget, NEVER);
        let almost_a_mib = || response(0, MIB - 64);
        for (name, outbox) in [("a", &a), ("b", &b), ("c", &c)] {
            assert!(fits(outbox, almost_a_mib()).await, "stream {name}'s MiB fits in the member's 3 MiB");
        }
        let queued = budget.gauge.get();
        assert!(
            (3 * MIB as i64 - 256..=3 * MIB as i64).contains(&queued),
            "the gauge counts the 3 MiB: {queued}"
        );

        let asked = Instant::now();
        let unsent = d.send(Ok(almost_a_mib())).await;
        assert_eq!(
            unsent,
            Err(Unsent::MemberFull),
            "stream d's MiB finds no room in the member's 3 MiB, though its own queue is empty"
        );
        assert_eq!(asked.elapsed(), MEMBER_WAIT, "… after waiting {MEMBER_WAIT:?} for it, no longer");
        assert_eq!(budget.gauge.get(), queued, "the failed send holds nothing");

        let (sent, taken) = tokio::join!(d.send(Ok(almost_a_mib())), async {
            tokio::time::sleep(MEMBER_WAIT / 2).await;
            a_flow.next().await
        });
        assert!(matches!(taken, Some(Ok(_))), "stream a's client takes its response: {taken:?}");
        assert_eq!(sent, Ok(()), "the bytes stream a's client took went to d, which was waiting for them");

        b.cut(Status::resource_exhausted("cut"));
        let after_cut = budget.gauge.get();
        assert!(after_cut <= 2 * MIB as i64, "a cut stream gives the member its bytes at once, though its client read nothing: {after_cut} held");
        let last =
            b_flow.next().await.expect("the cut stream's status").expect_err("a status, not a response");
        assert_eq!(last.code(), tonic::Code::ResourceExhausted, "{last:?}");
        assert!(b_flow.next().await.is_none(), "after the status, the cut stream ends");
        assert_eq!(b.send(Ok(response(1, 1))).await, Err(Unsent::Gone), "a cut stream sends nothing more");
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_that_finds_no_room_in_its_queue_within_the_stall_deadline_fails_stalled() {
        let budget = roomy();
        let deadline = Duration::from_secs(30);
        let (outbox, mut outflow) = Outbox::new(&budget, deadline);
        for id in 0..OUTBOX as i64 {
            assert!(fits(&outbox, response(id, 10)).await, "response {id} fits");
        }
        let (sent, taken) = tokio::join!(outbox.send(Ok(response(-1, 10))), async {
            tokio::time::sleep(deadline - Duration::from_secs(1)).await;
            outflow.next().await
        });
        assert!(matches!(taken, Some(Ok(_))), "the client takes one response: {taken:?}");
        assert_eq!(sent, Ok(()), "a send that found room within the deadline is queued");

        let asked = Instant::now();
        match tokio::time::timeout(deadline * 2, outbox.send(Ok(response(-2, 10)))).await {
            Ok(unsent) => {
                assert_eq!(unsent, Err(Unsent::Stalled), "a send with no room for {deadline:?} fails")
            }
            Err(_) => panic!(
                "a send with no room should fail at its {deadline:?} deadline, and waited {:?}",
                deadline * 2
            ),
        }
        assert_eq!(asked.elapsed(), deadline, "… at its deadline, not before");
        assert!(budget.gauge.get() > 0, "the queue still holds its responses until it is cut");

        outbox.cut(Status::unavailable("stalled"));
        assert_eq!(budget.gauge.get(), 0, "a cut queue gives back everything it held");
        let last =
            outflow.next().await.expect("the cut stream's status").expect_err("a status, not a response");
        assert_eq!(last.code(), tonic::Code::Unavailable, "{last:?}");
        assert!(outflow.next().await.is_none(), "after the status, the cut stream ends");
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_taken_ahead_count_once_in_the_members_budget_and_the_sends_take_theirs_from_them() {
        let budget = QueueBudget::new(3 * MIB, Gauge::default());
        let (a, mut a_flow) = Outbox::new(&budget, NEVER);
        let (b, _b_flow) = Outbox::new(&budget, NEVER);
        assert!(a.take_ahead(2 * MIB), "2 MiB of an empty 3 MiB budget are taken ahead at once");
        assert_eq!(budget.gauge.get(), 2 * MIB as i64, "the gauge counts what was taken ahead");
        assert!(fits(&a, response(1, MIB - 64)).await, "a send of almost a MiB is queued");
        let counted = budget.gauge.get();
        assert_eq!(counted, 2 * MIB as i64, "… from what was taken ahead: nothing is counted twice");
        assert!(a.take_ahead(MIB), "taking a MiB ahead again takes nothing more: about 1 MiB is left ahead");
        assert_eq!(budget.gauge.get(), counted, "… and counts nothing more");

        assert!(!b.take_ahead(2 * MIB), "another stream's 2 MiB do not fit beside them, now");
        assert_eq!(b.wait_ahead(2 * MIB).await, Err(Unsent::MemberFull), "… nor within {MEMBER_WAIT:?}");
        assert_eq!(budget.gauge.get(), counted, "a failed take holds nothing");

        a.release_ahead();
        let queued = budget.gauge.get();
        assert!(
            (MIB as i64 - 256..MIB as i64).contains(&queued),
            "what no send took goes back; the queued response keeps its bytes: {queued}"
        );
        assert!(b.take_ahead(2 * MIB), "now the other stream's 2 MiB fit");
        assert!(!a.take_ahead(MIB), "and the first stream's next MiB does not");
        a_flow.next().await.expect("the queued response").expect("not an error");
        assert_eq!(budget.gauge.get(), 2 * MIB as i64, "the response taken gave its bytes back");
        b.cut(Status::unavailable("cut"));
        assert_eq!(budget.gauge.get(), 0, "a cut stream gives back what it took ahead");
        assert!(a.take_ahead(8 * MIB), "more than the whole budget takes all of it, when it is free");
        assert_eq!(budget.gauge.get(), 3 * MIB as i64, "… and counts the whole budget");
        drop(a);
        assert_eq!(budget.gauge.get(), 0, "a dropped queue gives back what it took ahead");
        assert_eq!(budget.bytes.available_permits(), 3 * MIB, "… and the budget has every byte back");

        let (c, mut c_flow) = Outbox::new(&budget, NEVER);
        assert!(c.take_ahead(100), "100 bytes are taken ahead");
        assert!(fits(&c, response(1, 1000)).await, "a larger send is queued");
        let size = response(1, 1000).encoded_len();
        assert_eq!(budget.gauge.get(), size as i64, "… taking the 100 and the rest, counted once");
        assert_eq!(budget.bytes.available_permits(), 3 * MIB - size, "… and holding just its size");
        c.release_ahead();
        c_flow.next().await.expect("the queued response").expect("not an error");
        assert_eq!(budget.gauge.get(), 0, "taken, it gives back both");
        assert_eq!(budget.bytes.available_permits(), 3 * MIB, "… every byte");
        assert!(c.take_ahead(0), "nothing taken ahead needs no room");
        assert_eq!(budget.gauge.get(), 0, "… and takes none");
    }

    #[tokio::test(start_paused = true)]
    async fn room_is_waited_for_without_taking_it_and_at_most_the_stall_deadline() {
        let budget = roomy();
        let deadline = Duration::from_secs(30);
        let (outbox, mut outflow) = Outbox::new(&budget, deadline);
        assert!(outbox.has_room(OUTBOX, OUTBOX_BYTES), "an empty queue has room for all it holds");
        for id in 0..3 {
            assert!(fits(&outbox, response(id, MIB)).await, "response {id} of 1 MiB fits");
        }
        assert!(outbox.has_room(1, MIB - 1024), "almost a MiB is left");
        assert!(!outbox.has_room(1, 2 * MIB), "two are not");
        assert!(!outbox.has_room(OUTBOX, 10), "nor {OUTBOX} responses");
        assert_eq!(outbox.wait_room(1, MIB - 1024).await, Ok(()), "room that is there is not waited for");
        assert!(outbox.has_room(1, MIB - 1024), "… nor taken");

        let waited = Instant::now();
        let (room, taken) = tokio::join!(outbox.wait_room(1, MIB + MIB / 2), async {
            tokio::time::sleep(deadline / 2).await;
            outflow.next().await
        });
        assert!(matches!(taken, Some(Ok(_))), "the client takes a response: {taken:?}");
        assert_eq!(room, Ok(()), "the room it gave is found within the deadline");
        assert_eq!(waited.elapsed(), deadline / 2, "… when the client took it, not before");
        assert!(outbox.has_room(1, MIB + MIB / 2), "… and is left there");
        let asked = Instant::now();
        assert_eq!(outbox.wait_room(1, 3 * MIB).await, Err(Unsent::Stalled), "room never made is not found");
        assert_eq!(asked.elapsed(), deadline, "… after the stall deadline, not before");
        drop(outflow);
        assert_eq!(outbox.wait_room(1, 1).await, Err(Unsent::Gone), "a client gone has no room to wait for");
    }
}
