//! The Watch service: one bidirectional stream per client carrying many watches, served by
//! this member from its applied state (DESIGN.md §1 Watches, §3 watch; docs/watches.md).
//!
//! Each stream is one task. A watch is a selection, its filters, and `next`: the first revision
//! it has not delivered. The task brings every watch up to the member's newest revision: from
//! the shared window of recent revisions (`recent`, read and encoded once for every stream)
//! when `next` is in it, else from the history in the state (a watch that starts in the past,
//! catching up in bounded steps). Responses go out through a queue bounded in count and bytes
//! (`outbox`); when the client does not read, the task waits there, and nothing else does.
//!
//! What a member holds for watches is bounded: streams (`--max-watch-streams`), watches per
//! stream ([`MAX_WATCHES_PER_STREAM`]) and over every stream (`--max-watches`), each stream's
//! queue ([`outbox::OUTBOX_BYTES`]) and every stream's queue together
//! (`--max-watch-queued-bytes`), and snapshots in progress, each holding a read transaction
//! (`--max-watch-snapshots`, each for at most
//! `--watch-snapshot-deadline`). A create over a limit is refused alone (`created` and
//! `canceled`, RESOURCE_EXHAUSTED), a stream over the limit RESOURCE_EXHAUSTED.
//!
//! A stream whose client reads nothing holds its queue for at most `--watch-stall-deadline`;
//! one whose next response finds no room in the member's queued bytes within
//! [`outbox::MEMBER_WAIT`] no longer than that. Either is then cut: what was queued for it is
//! dropped at once and the stream ends, UNAVAILABLE (stalled) or RESOURCE_EXHAUSTED (the
//! member's queued bytes), telling the client to resume its watches from the revision after
//! the last it received (the Rust client does, on another member if there is one).
//!
//! Invariants (the guarantees of proto/latch/v1/watch.proto):
//! - A watch's `next` only grows, and only past revisions whose events it sent (or that had
//!   none it selects): events go out in revision order, each once, with no gap.
//! - The events one watch selects of one revision go out in one response, or in consecutive
//!   fragments of it marked `fragment` but the last.
//! - A progress response says `next − 1` (of the watch, or the least of the stream's): never
//!   ahead of what was delivered; and like a `created` response's, never ahead of the member's
//!   applied revision (a watch that starts in the future); for one watch, never behind a
//!   revision it was sent (a stream-wide one says the least of the stream's watches).
//! - A stream with watches on a member that no leader confirmed for
//!   `freshness::CUT_OFF_AFTER` (a member cut off: it would stream nothing new, silently) ends
//!   UNAVAILABLE, so clients resume elsewhere; the member's one check (`node::freshness`)
//!   serves every stream. A
//!   watch from now waits at most `freshness::CHECK_TIMEOUT` for its own ReadIndex; failing, that create
//!   alone is refused (UNAVAILABLE), the stream and its other watches go on.
//! - A watch served from the window that fell below it (its client read too slowly while the
//!   window moved on) is canceled SLOW at `next − 1`; one whose `next` was compacted is
//!   canceled COMPACTED, or with `on_compacted = SNAPSHOT` gets the range's state at the
//!   member's revision R and goes on from R + 1.

mod gate;
mod outbox;
mod recent;
mod snapshot;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use latch_proto::v1::watch_request::Request as Ask;
use latch_proto::v1::watch_response::CancelReason;
use latch_proto::v1::{watch_create_request, ResponseHeader, WatchCreateRequest, WatchRequest};
use latch_proto::wire;
use latch_proto::wire::watch_server::{Watch as WatchApi, WatchServer};
use prost::bytes::Bytes;
use redb::ReadableDatabase as _;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status, Streaming};

use futures::{FutureExt as _, StreamExt as _};
use gate::Gated;
use outbox::{Outbox, Outflow, QueueBudget, Unsent};
pub use recent::Recent;
use recent::{Batch, Encoded, OVERSIZED_REVISION_BYTES, READ_STEP_BYTES};
use snapshot::{snapshot_page, SnapshotSlot};

use super::{ApiError, Context};
use crate::fsm;
use crate::fsm::history::{self, Part, Space};
use crate::metrics::Metrics;

/// Most bytes of events in one response; a revision's events past it are split in fragments.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Most watches on one stream.
pub const MAX_WATCHES_PER_STREAM: usize = 10_000;
/// Revisions, and bytes of encoded events, one watch takes from the window before the others
/// get their turn.
const BATCHES_PER_TURN: usize = 1024;
const BYTES_PER_TURN: usize = 1024 * 1024;
/// Most requests handled in a row, when they arrived together, before the next turn; and
/// longest such a run goes on (a create from now may wait for a ReadIndex).
const REQUESTS_PER_TURN: usize = 1024;
const REQUESTS_TURN_TIME: Duration = Duration::from_millis(10);
/// How long a create from now waits for a leader to confirm the member's revision.
const CREATE_FRESHNESS: Duration = crate::node::freshness::CHECK_TIMEOUT;

pub struct WatchService {
    ctx: Context,
    recent: Arc<Recent>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
    progress_every: Duration,
    /// One permit per stream the member may serve (`--max-watch-streams`).
    streams: Arc<Semaphore>,
    /// One permit per watch the member may serve over every stream (`--max-watches`).
    places: Arc<Semaphore>,
    /// One permit per snapshot the member may send at once (`--max-watch-snapshots`).
    snapshots: Arc<Semaphore>,
    /// Bytes queued for clients over every stream (`--max-watch-queued-bytes`).
    queued: QueueBudget,
    /// One permit per step of history being read at once (see [`Stream::off_runtime`]).
    history_reads: Arc<Semaphore>,
}

impl WatchService {
    /// The service on `recent`; its streams end when `stop` fires.
    pub fn server(
        ctx: Context,
        recent: Arc<Recent>,
        metrics: Arc<Metrics>,
        stop: watch::Receiver<bool>,
        progress_every: Duration,
    ) -> WatchServer<WatchService> {
        let max = ctx.limits.max_request_bytes;
        let permits = |n: usize| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)));
        let (streams, snapshots) =
            (permits(ctx.limits.max_watch_streams), permits(ctx.limits.max_watch_snapshots));
        let places = permits(ctx.limits.max_watches);
        let queued = QueueBudget::new(ctx.limits.max_watch_queued_bytes, metrics.watch.queued_bytes.clone());
        WatchServer::new(WatchService {
            ctx,
            recent,
            metrics,
            stop,
            progress_every,
            streams,
            places,
            snapshots,
            queued,
            history_reads: permits(std::thread::available_parallelism().map_or(2, |n| n.get())),
        })
        .max_decoding_message_size(max)
        .max_encoding_message_size(usize::MAX)
    }
}

#[tonic::async_trait]
impl WatchApi for WatchService {
    type WatchStream = Outflow;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let Ok(slot) = self.streams.clone().try_acquire_owned() else {
            return Err(self.ctx.to_status(ApiError::OverLimit(format!(
                "this member serves {} watch streams, its most (--max-watch-streams): watch through \
                 another member, or put more watches on one stream",
                self.ctx.limits.max_watch_streams
            ))));
        };
        let (out, outflow) = Outbox::new(&self.queued, self.ctx.limits.watch_stall_deadline);
        self.metrics.watch.streams.inc();
        let stream = Stream {
            ctx: self.ctx.clone(),
            recent: self.recent.clone(),
            metrics: self.metrics.clone(),
            out,
            watches: BTreeMap::new(),
            selections: HashMap::new(),
            next_auto_id: 1,
            read_floor: 0,
            progress_every: self.progress_every,
            turn_header: ResponseHeader::default(),
            snapshots: self.snapshots.clone(),
            slot_wait_spent: false,
            places: self.places.clone(),
            history_reads: self.history_reads.clone(),
            _slot: slot,
        };
        tokio::spawn(stream.run(req.into_inner(), self.stop.clone()));
        Ok(Response::new(outflow))
    }
}

/// One watch of a stream.
struct Watch {
    id: i64,
    /// Shared with every watch of the stream that selects the same ([`Stream::selections`]).
    selection: Arc<Selection>,
    prev_kv: bool,
    progress_notify: bool,
    snapshot_on_compacted: bool,
    /// Its client takes responses shared with other watches of the stream
    /// (`shared_responses`): see [`Stream::turns`].
    shared: bool,
    /// The first revision not delivered yet.
    next: i64,
    /// Served from the window at least once: falling below it now is being slow.
    live: bool,
    /// The compact revision when it was created: a start at or below it is served from the
    /// history (which refuses it, or sends a snapshot), even while the window still holds it.
    compact_at_start: i64,
    /// When it last got a response (for idle progress).
    last_sent: Instant,
    /// Revision `next` is oversized (`recent::OVERSIZED_REVISION_BYTES` of rows, or
    /// `recent::OVERSIZED_REVISION_HELD` held) and is being read from the history a step at a
    /// time: where the next step starts.
    within: Option<Within>,
    /// Its place under `--max-watches`, given back as it is forgotten or its stream ends.
    _place: OwnedSemaphorePermit,
}

/// What the watches of one [`Group`] share: the selection (by its place: the stream keeps one
/// of each), `prev_kv`, the next revision and, if it is oversized, the place inside it.
type Alike = (*const Selection, bool, i64, Option<Within>);

/// Where a watch is inside an oversized revision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
struct Within {
    /// The index of the revision's next history row.
    row: u32,
    /// Some of the revision's events went out already (as fragments).
    sent: bool,
}

/// The changes a watch takes.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Selection {
    /// Keys, or sessions', locks' or elections' states.
    space: Space,
    key: Vec<u8>,
    range_end: Vec<u8>,
    no_put: bool,
    no_delete: bool,
}

impl Selection {
    /// Whether it takes a change of `key` in `space` (a delete, or a put).
    fn takes(&self, space: Space, delete: bool, key: &[u8]) -> bool {
        if space != self.space {
            return false;
        }
        let filtered = if delete { self.no_delete } else { self.no_put };
        !filtered && fsm::selects(&self.key, &self.range_end, key)
    }
}

impl Watch {
    fn selects(&self, e: &Encoded) -> bool {
        self.selection.takes(e.space, e.delete, &e.key)
    }
}

/// What a stream's turn does for a watch (see [`Stream::turns`]).
enum Turn {
    /// A step of an oversized revision, from the history, for one watch or for a group at the
    /// same place in it.
    Oversized(Group),
    /// A step of catch-up from the history for a watch whose start was compacted when it was
    /// created (it is refused, or sent a snapshot).
    History(i64),
    /// Revisions from the window, for one watch or for a group that takes the same responses.
    Window(Group),
}

/// Watches of a stream served together: `id`, and `also` (in id order), which get the very
/// same responses from it (see [`Stream::turns`]).
struct Group {
    id: i64,
    also: Vec<i64>,
}

impl Group {
    fn one(id: i64) -> Group {
        Group { id, also: Vec::new() }
    }

    fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        std::iter::once(self.id).chain(self.also.iter().copied())
    }

    /// The group of `ids` (in id order), if any.
    fn of(ids: Vec<i64>) -> Option<Group> {
        let mut ids = ids.into_iter();
        ids.next().map(|id| Group { id, also: ids.collect() })
    }
}

/// What [`Stream::send_batch`] did.
enum Batched {
    /// Nothing: the watch selects none of the batch's events.
    Nothing,
    /// Queued the batch's responses.
    Sent,
    /// Nothing: the stream's queue has no room now for its `responses` responses of `bytes`.
    NoRoom { responses: usize, bytes: usize },
}

/// How far [`Stream::send_batches`] went.
enum Sent {
    /// Through the last batch.
    All,
    /// To an oversized revision's marker, which the watch reads from the history next.
    ToOversized,
    /// To `revision`, whose batch found no room in the stream's queue for its `responses`
    /// responses of `bytes`.
    ToFull { revision: i64, responses: usize, bytes: usize },
}

/// Why a stream's task ends.
enum End {
    /// The client went away.
    Gone,
    /// The member failed to serve it: the status goes to the client, after what is queued.
    Failed(Status),
    /// The stream was cut for holding the member's memory (`reason`, as counted): what is
    /// queued is dropped and the status goes to the client at once.
    Cut(&'static str, Status),
}

struct Stream {
    ctx: Context,
    recent: Arc<Recent>,
    metrics: Arc<Metrics>,
    out: Outbox,
    watches: BTreeMap<i64, Watch>,
    /// One of each selection the stream's watches have, which watches that select the same
    /// share: grouping them then compares places, not keys (a selection's keys are hashed at
    /// its first watch's create and its last one's end, where every turn hashed them again).
    /// It holds exactly the selections of the stream's watches, each with how many have it.
    selections: HashMap<Arc<Selection>, usize>,
    /// Where the member's choice of the next id starts (a create with `watch_id = 0`). It only
    /// grows, past each id the member gave: an id it picks is never one a watch of this stream
    /// had from it before (short of `i64::MAX`), as in etcd.
    next_auto_id: i64,
    /// The highest revision of the state this stream has read (a create's "now", a catch-up
    /// or a snapshot): applied and committed, so vouched for like the announced revision.
    read_floor: i64,
    progress_every: Duration,
    /// This turn's response header (its revision set per response).
    turn_header: ResponseHeader,
    /// The member's snapshot slots.
    snapshots: Arc<Semaphore>,
    /// Whether a snapshot of this turn waited out `SLOT_WAIT` for a slot: the turn's other
    /// snapshots then wait no more (a group resumed in snapshot mode would otherwise hold the
    /// stream, its cancels and its live watches, a second per watch).
    slot_wait_spent: bool,
    /// The member's reads of history steps at once.
    history_reads: Arc<Semaphore>,
    /// This stream's place under `--max-watch-streams`, given back when the task ends.
    _slot: OwnedSemaphorePermit,
    /// The member's places for watches (`--max-watches`): each watch holds one.
    places: Arc<Semaphore>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.metrics.watch.streams.dec();
        self.metrics.watch.watches.dec_by(self.watches.len() as i64);
    }
}

impl Stream {
    async fn run(mut self, requests: Streaming<WatchRequest>, stop: watch::Receiver<bool>) {
        let mut moved = self.recent.subscribe();
        // Every source but the window's is gated: woken for a revision (every stream is, on
        // every revision), the task looks at each of them with an atomic swap, not a poll.
        let mut requests = Gated::new(requests);
        let mut stopping = Gated::new(Box::pin(async move {
            let mut stop = stop;
            let _ = stop.wait_for(|s| *s).await;
        }));
        let mut gone = Gated::new(Box::pin(self.out.on_close()));
        let tick_every = (self.progress_every / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = Gated::new(tokio_stream::wrappers::IntervalStream::new(tick));
        let mut asking = true;
        loop {
            moved.borrow_and_update();
            let behind = match self.deliver().await {
                Ok(behind) => behind,
                Err(end) => return self.end(end).await,
            };
            let step = tokio::select! {
                biased;
                _ = &mut stopping => Err(End::Failed(Status::unavailable("the member is shutting down: resume the watches on another member"))),
                _ = &mut gone => Err(End::Gone),
                msg = requests.next(), if asking => match msg {
                    Some(Ok(req)) => self.handle_arrived(req, &mut requests, &mut asking).await,
                    // The client sends no more requests; its watches go on.
                    None => { asking = false; Ok(()) }
                    // A request that does not decode (too large, say) is answered with why; a
                    // client that went away does not read it.
                    Some(Err(status)) => Err(End::Failed(status)),
                },
                changed = moved.changed() => if changed.is_err() { Err(End::Gone) } else { Ok(()) },
                _ = ticks.next() => self.on_tick().await,
                // Last: a stream with catching up to do still ticks and reads requests.
                _ = std::future::ready(()), if behind => Ok(()),
            };
            if let Err(end) = step {
                return self.end(end).await;
            }
        }
    }

    /// Handles `first` and the requests that arrived with it (up to [`REQUESTS_PER_TURN`], and
    /// no more once [`REQUESTS_TURN_TIME`] went by: the stream's watches wait meanwhile) before
    /// the next turn: watches created together start together, and those that select alike
    /// are one group from their first step, from the history as from the window.
    async fn handle_arrived(
        &mut self,
        first: WatchRequest,
        requests: &mut Gated<Streaming<WatchRequest>>,
        asking: &mut bool,
    ) -> Result<(), End> {
        let started = Instant::now();
        self.handle(first).await?;
        for _ in 1..REQUESTS_PER_TURN {
            if started.elapsed() >= REQUESTS_TURN_TIME {
                break;
            }
            match requests.next().now_or_never() {
                Some(Some(Ok(req))) => self.handle(req).await?,
                Some(Some(Err(status))) => return Err(End::Failed(status)),
                Some(None) => {
                    *asking = false;
                    break;
                }
                None => break,
            }
        }
        Ok(())
    }

    /// A tick: a stream with watches on a member no leader confirmed for
    /// `node::freshness::CUT_OFF_AFTER` ends (its member would stream nothing new, silently; its
    /// client resumes elsewhere); else the idle watches that asked for it get progress.
    async fn on_tick(&mut self) -> Result<(), End> {
        if !self.watches.is_empty() {
            if let Some(cut_off) = self.ctx.freshness.cut_off() {
                return Err(End::Failed(Status::unavailable(format!("{cut_off}: resume the watches there"))));
            }
        }
        self.idle_progress().await
    }

    async fn end(self, end: End) {
        match end {
            End::Gone => {}
            End::Failed(status) => {
                // A client that does not take the status in time is cut with it.
                let reason = match self.out.send(Err(status.clone())).await {
                    Err(Unsent::Stalled) => "stalled",
                    Err(Unsent::MemberFull) => "queued_bytes",
                    Ok(()) | Err(Unsent::Gone) => return,
                };
                self.metrics.watch.cut(reason);
                self.out.cut(status);
            }
            End::Cut(reason, status) => {
                self.metrics.watch.cut(reason);
                self.out.cut(status);
            }
        }
    }

    /// Forgets watch `id`, counting why.
    fn forget(&mut self, id: i64, reason: CancelReason) -> Option<Watch> {
        let w = self.watches.remove(&id)?;
        if let Some(watching) = self.selections.get_mut(&*w.selection) {
            *watching -= 1;
            if *watching == 0 {
                self.selections.remove(&*w.selection);
            }
        }
        self.metrics.watch.watches.dec();
        self.metrics.watch.canceled(reason.as_str_name());
        Some(w)
    }

    fn fail(&self, e: impl Into<ApiError>) -> End {
        End::Failed(self.ctx.to_status(e.into()))
    }

    async fn send(&self, response: wire::WatchResponse) -> Result<(), End> {
        self.out.send(Ok(response)).await.map_err(|unsent| self.unsent(unsent))
    }

    /// How the stream ends when a response could not be queued.
    fn unsent(&self, unsent: Unsent) -> End {
        let limits = &self.ctx.limits;
        match unsent {
            Unsent::Gone => End::Gone,
            Unsent::Stalled => End::Cut(
                "stalled",
                Status::unavailable(format!(
                    "the client took no response for {:?} (--watch-stall-deadline): this member \
                     dropped what it had queued for it; resume the watches from the revision after \
                     the last one received",
                    limits.watch_stall_deadline
                )),
            ),
            Unsent::MemberFull => End::Cut(
                "queued_bytes",
                self.ctx.to_status(ApiError::OverLimit(format!(
                    "this member holds {} bytes of watch responses queued for its clients, its most \
                     (--max-watch-queued-bytes), and had no room for this stream's next within \
                     {:?}: resume the watches from the revision after the last one received, on \
                     another member or later",
                    limits.max_watch_queued_bytes,
                    outbox::MEMBER_WAIT
                ))),
            ),
        }
    }

    fn header(&self, revision: i64) -> ResponseHeader {
        self.ctx.header(revision)
    }

    /// The member's applied revision: no header vouches for more (a watch that starts in the
    /// future says `next − 1` no further than this). The window takes each committed revision
    /// before the apply thread announces it, and the stream's own reads of the state may see
    /// one before it is announced too; a stream may already have sent that revision's events
    /// (or named it in a `created` header): both count as applied, or a progress response just
    /// after them would name a revision below them.
    fn applied(&self) -> i64 {
        self.ctx.node.applied_revision().max(self.recent.span().last).max(self.read_floor)
    }

    /// The header of events at `revision`, from a term read once per turn (not once per
    /// response: a turn may send thousands).
    fn events_header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader { revision, ..self.turn_header }
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), End> {
        match req.request {
            Some(Ask::Create(c)) => self.create(c).await,
            Some(Ask::Cancel(c)) => {
                let (reason, revision, message) = match self.forget(c.watch_id, CancelReason::Client) {
                    Some(w) => (CancelReason::Client, (w.next - 1).min(self.applied()), String::new()),
                    None => (
                        CancelReason::Invalid,
                        self.recent.span().last,
                        format!("watch_id: no watch {} on this stream", c.watch_id),
                    ),
                };
                self.cancel(c.watch_id, reason, revision, message, 0).await
            }
            Some(Ask::Progress(_)) => {
                let least = self.watches.values().map(|w| w.next - 1).min();
                let revision = least.map_or_else(|| self.recent.span().last, |r| r.min(self.applied()));
                self.send(wire::WatchResponse {
                    header: Some(self.header(revision)),
                    watch_id: -1,
                    progress: true,
                    ..Default::default()
                })
                .await
            }
            None => {
                let revision = self.recent.span().last;
                self.cancel(
                    -1,
                    CancelReason::Invalid,
                    revision,
                    "request: none of create, cancel, progress is set".into(),
                    0,
                )
                .await
            }
        }
    }

    async fn cancel(
        &self,
        watch_id: i64,
        reason: CancelReason,
        revision: i64,
        message: String,
        compact_revision: i64,
    ) -> Result<(), End> {
        self.send(wire::WatchResponse {
            header: Some(self.header(revision)),
            watch_id,
            canceled: true,
            cancel_reason: reason as i32,
            cancel_message: message,
            compact_revision,
            ..Default::default()
        })
        .await
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), End> {
        let id = if c.watch_id == 0 { self.auto_id() } else { c.watch_id };
        if let Err((reason, problem)) = self.check_create(&c, id) {
            return self.refuse(c.watch_id, reason, problem).await;
        }
        let Ok(place) = self.places.clone().try_acquire_owned() else {
            let problem = format!(
                "this member serves {} watches, its most (--max-watches): cancel some, or watch \
                 through another member",
                self.ctx.limits.max_watches
            );
            return self.refuse(c.watch_id, CancelReason::ResourceExhausted, problem).await;
        };
        if c.start_revision == 0 {
            // "Now" is the cluster's now, not a lagging member's: a watch created on a member
            // that restarted far behind would otherwise replay old revisions as new. Waited for
            // briefly (the stream's other watches wait meanwhile); failing, this create alone
            // is refused.
            let confirmed = match tokio::time::timeout(CREATE_FRESHNESS, self.ctx.node.read_index()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no leader confirmed this member's state within {CREATE_FRESHNESS:?}")),
            };
            if let Err(why) = confirmed {
                let problem = format!(
                    "{why}: a watch from now needs the cluster's current revision; create it again, \
                     on another member if this one stays cut off"
                );
                return self.refuse(c.watch_id, CancelReason::Unavailable, problem).await;
            }
        }
        let txn = self.ctx.node.db().begin_read().map_err(|e| self.fail(e))?;
        let current = fsm::applied(&txn).map_err(|e| self.fail(e))?.revision;
        self.read_floor = self.read_floor.max(current);
        let next = if c.start_revision == 0 { current + 1 } else { c.start_revision };
        let compact_at_start = history::compact_revision_read(&txn).map_err(|e| self.fail(e))?;
        drop(txn);
        let snapshot_on_compacted = c.on_compacted == watch_create_request::OnCompacted::Snapshot as i32;
        // A snapshot needed from the start is checked against the member's limit now, so that
        // the create, not the watch later, is refused while every slot is busy. The slot itself
        // is taken when the snapshot's turn comes: held from here, it could outlast
        // --watch-snapshot-deadline behind the stream's other watches.
        if snapshot_on_compacted && next <= compact_at_start && self.snapshots.available_permits() == 0 {
            return self.refuse(c.watch_id, CancelReason::ResourceExhausted, self.no_snapshot_slot()).await;
        }
        let space = match watch_create_request::Target::try_from(c.target) {
            Ok(watch_create_request::Target::Keys) | Err(_) => Space::Kv,
            Ok(watch_create_request::Target::Sessions) => Space::Sessions,
            Ok(watch_create_request::Target::Locks) => Space::Locks,
            Ok(watch_create_request::Target::Elections) => Space::Elections,
            Ok(watch_create_request::Target::Registry) => Space::Registry,
        };
        self.metrics.watch.watches.inc();
        if c.watch_id == 0 {
            self.next_auto_id = id.saturating_add(1);
        }
        let selection = self.selection(Selection {
            space,
            key: c.key,
            range_end: c.range_end,
            no_put: c.no_put,
            no_delete: c.no_delete,
        });
        self.watches.insert(
            id,
            Watch {
                id,
                selection,
                prev_kv: c.prev_kv,
                progress_notify: c.progress_notify,
                snapshot_on_compacted,
                shared: c.shared_responses,
                next,
                live: false,
                compact_at_start,
                last_sent: Instant::now(),
                within: None,
                _place: place,
            },
        );
        // A start in the future is not vouched for beyond the member's revision.
        self.send(wire::WatchResponse {
            header: Some(self.header((next - 1).min(current))),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await
    }

    /// The stream's one copy of `selection`, kept from now on.
    fn selection(&mut self, selection: Selection) -> Arc<Selection> {
        match self.selections.entry(Arc::new(selection)) {
            Entry::Occupied(mut at) => {
                *at.get_mut() += 1;
                at.key().clone()
            }
            Entry::Vacant(at) => {
                let kept = at.key().clone();
                at.insert(1);
                kept
            }
        }
    }

    /// The id for a create with `watch_id = 0`: the first from `next_auto_id` on that no watch
    /// of the stream has (the client may have chosen some); `i64::MAX` in use makes the member
    /// pick none (the create is refused as a duplicate). At most one step per watch on the
    /// stream.
    fn auto_id(&self) -> i64 {
        let mut id = self.next_auto_id;
        while id < i64::MAX && self.watches.contains_key(&id) {
            id += 1;
        }
        id
    }

    /// Refuses a create (`watch_id` as asked) for `reason`: a `created` response that is
    /// `canceled` too. The stream and its other watches go on.
    async fn refuse(&self, watch_id: i64, reason: CancelReason, problem: String) -> Result<(), End> {
        self.metrics.watch.canceled(reason.as_str_name());
        let revision = self.recent.span().last;
        self.send(wire::WatchResponse {
            header: Some(self.header(revision)),
            watch_id,
            created: true,
            canceled: true,
            cancel_reason: reason as i32,
            cancel_message: problem,
            ..Default::default()
        })
        .await
    }

    fn no_snapshot_slot(&self) -> String {
        format!(
            "this member sends {} snapshots at once, its most (--max-watch-snapshots): create the \
             watch again later, or on another member",
            self.ctx.limits.max_watch_snapshots
        )
    }

    /// Whether a create may be served; else why it is refused.
    fn check_create(&self, c: &WatchCreateRequest, id: i64) -> Result<(), (CancelReason, String)> {
        let invalid = |problem: String| (CancelReason::Invalid, problem);
        let limits = &self.ctx.limits;
        if c.key.is_empty() {
            return Err(invalid(
                "key: must not be empty (watch every key with key \"\\0\" and range_end \"\\0\")".into(),
            ));
        }
        for (field, bytes) in [("key", &c.key), ("range_end", &c.range_end)] {
            if bytes.len() > limits.max_key_bytes {
                return Err(invalid(format!(
                    "{field}: is {} bytes, over the limit of {} (--max-key-bytes)",
                    bytes.len(),
                    limits.max_key_bytes
                )));
            }
        }
        if c.start_revision < 0 {
            return Err(invalid(format!("start_revision: {} is negative (0 = from now)", c.start_revision)));
        }
        if c.watch_id < 0 {
            return Err(invalid(format!("watch_id: {} is negative (0 = the member picks one)", c.watch_id)));
        }
        if watch_create_request::OnCompacted::try_from(c.on_compacted).is_err() {
            return Err(invalid(format!("on_compacted: {} is neither ERROR nor SNAPSHOT", c.on_compacted)));
        }
        if watch_create_request::Target::try_from(c.target).is_err() {
            return Err(invalid(format!(
                "target: {} is none of KEYS, SESSIONS, LOCKS, ELECTIONS, REGISTRY",
                c.target
            )));
        }
        let snapshots =
            [watch_create_request::Target::Keys as i32, watch_create_request::Target::Registry as i32];
        if !snapshots.contains(&c.target)
            && c.on_compacted == watch_create_request::OnCompacted::Snapshot as i32
        {
            return Err(invalid("on_compacted: SNAPSHOT is served for keys and the registry only (read sessions, locks and elections through their services)".into()));
        }
        if self.watches.contains_key(&id) {
            return Err(invalid(format!("watch_id: {id} is in use on this stream")));
        }
        if self.watches.len() >= MAX_WATCHES_PER_STREAM {
            return Err((
                CancelReason::ResourceExhausted,
                format!(
                    "this stream has {MAX_WATCHES_PER_STREAM} watches, the most one stream carries: open another stream"
                ),
            ));
        }
        Ok(())
    }

    /// Brings every watch as far as one turn goes; `true` when some watch has more to do.
    async fn deliver(&mut self) -> Result<bool, End> {
        if let Some(why) = self.recent.failed() {
            return Err(End::Failed(Status::unavailable(format!(
                "this member cannot serve watches ({why}): resume them on another member"
            ))));
        }
        let span = self.recent.span();
        self.turn_header = self.ctx.header(0);
        self.slot_wait_spent = false;
        let mut behind = false;
        // Each watch's state changes only as it is served, so the turn's plan holds throughout.
        for turn in self.turns(span.last) {
            behind |= match turn {
                Turn::Oversized(group) => self.serve_oversized(&group).await?,
                Turn::History(id) => self.serve_from_history(&Group::one(id)).await?,
                Turn::Window(group) => self.serve_from_window(&group, span.last).await?,
            };
        }
        Ok(behind)
    }

    /// What this turn serves, in id order: each watch with something to deliver, except that
    /// watches which take shared responses and would be sent the very same ones — the same
    /// selection and `prev_kv`, the same next revision (and the same place in it, if it is
    /// oversized) — are one [`Group`], served once: a revision's events go out in one response
    /// naming them all, and a group behind the window reads each step of the history once.
    fn turns(&self, last: i64) -> Vec<Turn> {
        let mut turns = Vec::new();
        let mut groups: HashMap<Alike, usize> = HashMap::new();
        for (&id, w) in &self.watches {
            let within = w.within;
            if within.is_none() {
                if w.next <= w.compact_at_start {
                    turns.push(Turn::History(id));
                    continue;
                }
                if w.next > last {
                    continue;
                }
            }
            if w.shared {
                match groups.entry((Arc::as_ptr(&w.selection), w.prev_kv, w.next, within)) {
                    Entry::Occupied(at) => {
                        if let Some(Turn::Window(group) | Turn::Oversized(group)) = turns.get_mut(*at.get()) {
                            group.also.push(id);
                        }
                        continue;
                    }
                    Entry::Vacant(at) => {
                        at.insert(turns.len());
                    }
                }
            }
            let group = Group::one(id);
            turns.push(if within.is_some() { Turn::Oversized(group) } else { Turn::Window(group) });
        }
        turns
    }

    /// Runs `f` on each watch of `group` the stream still has.
    fn each_of(&mut self, group: &Group, mut f: impl FnMut(&mut Watch)) {
        for id in group.ids() {
            if let Some(w) = self.watches.get_mut(&id) {
                f(w);
            }
        }
    }

    /// Serves `group` a turn of the window from its next revision (the window's last is
    /// `last`): `true` when it has more to do. A turn whose stream's queue fills lets go of the
    /// window's batches while its client makes room: once the window drops them, a stream
    /// holding them would keep them beside every bound. It then goes on with the rest of the
    /// turn, so that the other watches of the stream cannot take the room it waited for, turn
    /// after turn.
    async fn serve_from_window(&mut self, group: &Group, last: i64) -> Result<bool, End> {
        let Some(mut from) = self.watches.get(&group.id).map(|w| w.next) else { return Ok(false) };
        let mut turn_through = None;
        loop {
            let Some((batches, through)) = self.recent.batches_from(from, BATCHES_PER_TURN, BYTES_PER_TURN)
            else {
                return self.serve_from_history(group).await;
            };
            let turn_end = *turn_through.get_or_insert(through);
            match self.send_batches(group, &batches, true).await? {
                Sent::All => {
                    let mut behind = false;
                    self.each_of(group, |w| {
                        w.next = w.next.max(through + 1);
                        w.live = true;
                        behind |= w.next <= last;
                    });
                    return Ok(behind);
                }
                Sent::ToOversized => return Ok(true),
                Sent::ToFull { revision, responses, bytes } => {
                    drop(batches);
                    self.each_of(group, |w| {
                        if revision > w.next {
                            w.next = revision;
                            w.live = true;
                        }
                    });
                    self.out.wait_room(responses, bytes).await.map_err(|unsent| self.unsent(unsent))?;
                    if revision > turn_end {
                        return Ok(true);
                    }
                    from = revision;
                }
            }
        }
    }

    /// Serves `group`, whose next revision is below the window, from the state's history: one
    /// step of catch-up, or its end (compacted, or slow). `true` when it has more to do.
    async fn serve_from_history(&mut self, group: &Group) -> Result<bool, End> {
        let served = self.catch_up(group).await;
        self.out.release_ahead();
        served
    }

    /// Serves each watch of `ids` still on the stream alone (a step of its oversized revision,
    /// or of its catch-up): how a group's watches end (slow, compacted) or get a snapshot
    /// differs from watch to watch. `true` when one of them has more to do.
    async fn one_by_one(&mut self, ids: Vec<i64>, oversized: bool) -> Result<bool, End> {
        let mut behind = false;
        for id in ids {
            let alone = Group::one(id);
            behind |= if oversized {
                Box::pin(self.oversized_step(&alone)).await?
            } else {
                Box::pin(self.catch_up(&alone)).await?
            };
        }
        Ok(behind)
    }

    /// [`Stream::serve_from_history`], holding what it read and encoded only with as many
    /// bytes of the member's budget taken ahead (see `outbox`): a client that reads nothing
    /// keeps the step it waits on inside `--max-watch-queued-bytes`. A group reads and sends
    /// each step once; its live watches (falling behind the window, they are slow) and a
    /// compacted next revision are served one watch at a time.
    async fn catch_up(&mut self, group: &Group) -> Result<bool, End> {
        if !group.also.is_empty() {
            let (live, rest): (Vec<i64>, Vec<i64>) = group
                .ids()
                .filter(|id| self.watches.contains_key(id))
                .partition(|id| self.watches.get(id).is_some_and(|w| w.live));
            // Some are live (slow now: one at a time), or gone: the others go on together.
            if rest.len() <= group.also.len() {
                let mut behind = self.one_by_one(live, false).await?;
                if let Some(rest) = Group::of(rest) {
                    behind |= Box::pin(self.catch_up(&rest)).await?;
                }
                return Ok(behind);
            }
        }
        let id = group.id;
        let Some(w) = self.watches.get(&id) else { return Ok(false) };
        let (next, live, snapshot) = (w.next, w.live, w.snapshot_on_compacted);
        let permit = self.history_permit().await?;
        let txn = self.ctx.node.db().begin_read().map_err(|e| self.fail(e))?;
        let current = fsm::applied(&txn).map_err(|e| self.fail(e))?.revision;
        self.read_floor = self.read_floor.max(current);
        let compact = history::compact_revision_read(&txn).map_err(|e| self.fail(e))?;
        if next <= compact && !group.also.is_empty() {
            drop((txn, permit));
            return self.one_by_one(group.ids().collect(), false).await;
        }
        if next <= compact {
            // A snapshot is paged out under its own limit (--max-watch-snapshots).
            drop(permit);
            if snapshot {
                // Every slot busy (taken since the create was let in, or compacted while catching
                // up): one that frees within a second serves it, else the watch is canceled.
                // Nothing is held while it waits; the snapshot is of the state once it has one.
                // Once one wait of this turn ran out, the turn's others only take a free slot.
                drop(txn);
                let within = if self.slot_wait_spent { Duration::ZERO } else { snapshot::SLOT_WAIT };
                let slot = SnapshotSlot::wait(&self.snapshots, &self.metrics.watch.snapshots, within);
                let Some(slot) = slot.await else {
                    self.slot_wait_spent = true;
                    self.forget(id, CancelReason::ResourceExhausted);
                    let message = self.no_snapshot_slot();
                    self.cancel(id, CancelReason::ResourceExhausted, next - 1, message, 0).await?;
                    return Ok(false);
                };
                let txn = self.ctx.node.db().begin_read().map_err(|e| self.fail(e))?;
                let current = fsm::applied(&txn).map_err(|e| self.fail(e))?.revision;
                self.read_floor = self.read_floor.max(current);
                let deadline = slot.taken + self.ctx.limits.watch_snapshot_deadline;
                let sent = self.send_snapshot(id, &txn, current, deadline).await?;
                // The read transaction and the slot go as soon as the snapshot is sent, or its
                // time is up.
                drop((txn, slot));
                if !sent {
                    self.forget(id, CancelReason::Slow);
                    let deadline = self.ctx.limits.watch_snapshot_deadline;
                    let message = format!(
                        "the client did not read the snapshot at revision {current} within {deadline:?} \
                         (--watch-snapshot-deadline); resume from revision {next}"
                    );
                    self.cancel(id, CancelReason::Slow, next - 1, message, 0).await?;
                    return Ok(false);
                }
                if let Some(w) = self.watches.get_mut(&id) {
                    w.next = current + 1;
                    w.live = false;
                }
                return Ok(true);
            }
            drop(txn);
            self.forget(id, CancelReason::Compacted);
            let message =
                history::RevisionError::Compacted { asked: next, compact_revision: compact }.to_string();
            self.cancel(id, CancelReason::Compacted, next - 1, message, compact).await?;
            return Ok(false);
        }
        if live {
            // Its cancel may wait for a client that reads slowly: holding neither.
            drop((txn, permit));
            self.forget(id, CancelReason::Slow);
            let message = format!(
                "the watch fell behind the member's recent revisions (its client reads too slowly); resume from revision {next}"
            );
            self.cancel(id, CancelReason::Slow, next - 1, message, 0).await?;
            return Ok(false);
        }
        let selection = self.watches.get(&id).map(|w| w.selection.clone());
        let cluster_id = self.ctx.node.cluster_id;
        let ((batches, through), permit) = self
            .off_runtime(permit, move || {
                let (mut parts, through) =
                    history::parts(&txn, next, current, READ_STEP_BYTES, OVERSIZED_REVISION_BYTES)?;
                drop(txn);
                // The step serves these watches alone: it encodes, and holds, only what they take.
                if let Some(s) = selection {
                    parts.retain(|p| match p {
                        Part::Change(c) => s.takes(c.space, c.delete, &c.kv.key),
                        Part::Oversized { .. } => true,
                    });
                }
                Ok((Batch::of_parts(parts, cluster_id)?, through))
            })
            .await?;
        let held = batches.iter().map(|b| b.held()).sum();
        let Some(batches) = self.hold_step(batches, held, permit).await? else {
            return Box::pin(self.catch_up(group)).await;
        };
        let batches: Vec<Arc<Batch>> = batches.into_iter().map(Arc::new).collect();
        if let Sent::All = self.send_batches(group, &batches, false).await? {
            self.each_of(group, |w| w.next = w.next.max(through + 1));
        }
        Ok(true)
    }

    /// Runs `read`, a step read from the history and encoded (milliseconds of work), on the
    /// blocking pool rather than on a runtime worker that every other stream waits for. As
    /// many run at once as the machine has cores, as when they ran on the workers: what a step
    /// holds before its bytes are taken from the member's budget ([`Stream::hold_step`]) stays
    /// that many steps, however many streams catch up. The permit ([`Stream::history_permit`])
    /// goes with the read, which runs to its end even if the stream goes away meanwhile, and
    /// comes back with what it read, for [`Stream::hold_step`] to let go of once its bytes are
    /// counted.
    async fn off_runtime<T: Send + 'static>(
        &self,
        permit: OwnedSemaphorePermit,
        read: impl FnOnce() -> Result<T, fsm::FsmError> + Send + 'static,
    ) -> Result<(T, OwnedSemaphorePermit), End> {
        let read = move || read().map(|step| (step, permit));
        match tokio::task::spawn_blocking(read).await {
            Ok(read) => read.map_err(|e| self.fail(e)),
            Err(e) => Err(self.fail(ApiError::Internal(format!("a read of the history failed: {e}")))),
        }
    }

    /// A place among the member's history reads, taken before the read transaction is opened
    /// (a transaction waiting for its turn would keep old pages of the file from reuse).
    async fn history_permit(&self) -> Result<OwnedSemaphorePermit, End> {
        match self.history_reads.clone().acquire_owned().await {
            Ok(permit) => Ok(permit),
            Err(_) => Err(self.fail(ApiError::Internal("the member's history reads were closed".into()))),
        }
    }

    /// A step read from the history, kept if the member's budget has room for the `held` bytes
    /// it holds now (taken ahead, see `outbox`). Else `None`: the step is dropped, and room for
    /// it waited for, so that the caller reads it again holding nothing meanwhile.
    /// The step's read `permit` goes once its bytes are counted, or it is dropped: until then
    /// it is what bounds the steps held outside the member's budget.
    async fn hold_step<T>(
        &self,
        step: T,
        held: usize,
        permit: OwnedSemaphorePermit,
    ) -> Result<Option<T>, End> {
        if self.out.take_ahead(held) {
            return Ok(Some(step));
        }
        drop((step, permit));
        self.out.wait_ahead(held).await.map_err(|unsent| self.unsent(unsent))?;
        Ok(None)
    }

    /// Sends `group` the events it selects of `batches` (from the window, or a step of the
    /// history), in order, up to the first oversized one: then the group reads that revision
    /// from the history, a step a turn (its `next` is that revision). With `stop_when_full`,
    /// also up to the first batch its queue has no room for now, rather than wait for room
    /// holding them all.
    async fn send_batches(
        &mut self,
        group: &Group,
        batches: &[Arc<Batch>],
        stop_when_full: bool,
    ) -> Result<Sent, End> {
        for b in batches {
            if b.oversized {
                self.each_of(group, |w| {
                    w.next = b.revision;
                    w.within = Some(Within::default());
                    // It reads from the history now (alone): behind the window afterwards, it
                    // catches up from there rather than being cut off as slow.
                    w.live = false;
                });
                return Ok(Sent::ToOversized);
            }
            if let Batched::NoRoom { responses, bytes } =
                self.send_batch(group, b, true, false, stop_when_full).await?
            {
                return Ok(Sent::ToFull { revision: b.revision, responses, bytes });
            }
        }
        Ok(Sent::All)
    }

    /// One step of `group`'s oversized revision `next` (see [`Within`]; every watch of the
    /// group is at the same place in it): its events from the history, sent as fragments, the
    /// last one unmarked. `true`: more to do.
    async fn serve_oversized(&mut self, group: &Group) -> Result<bool, End> {
        let served = self.oversized_step(group).await;
        self.out.release_ahead();
        served
    }

    /// [`Stream::serve_oversized`], with the step's bytes taken ahead as in [`Stream::catch_up`].
    /// A group reads and sends each step once; compacted under it, its watches end (or start
    /// over) one at a time.
    async fn oversized_step(&mut self, group: &Group) -> Result<bool, End> {
        let id = group.id;
        let Some(w) = self.watches.get(&id) else { return Ok(false) };
        let (next, within) = (w.next, w.within.unwrap_or_default());
        let permit = self.history_permit().await?;
        let txn = self.ctx.node.db().begin_read().map_err(|e| self.fail(e))?;
        let compact = history::compact_revision_read(&txn).map_err(|e| self.fail(e))?;
        if next <= compact && !group.also.is_empty() {
            drop((txn, permit));
            return self.one_by_one(group.ids().collect(), true).await;
        }
        if next <= compact {
            drop((txn, permit));
            if let Some(w) = self.watches.get_mut(&id) {
                w.within = None;
            }
            if !within.sent {
                // Nothing of it went out: as any compacted next revision.
                return Box::pin(self.catch_up(group)).await;
            }
            // Part of it went out: the client drops those fragments when the watch ends and
            // asks again, from the same revision (compacted now: an error, or a snapshot).
            self.forget(id, CancelReason::Slow);
            let message = format!(
                "revision {next} was compacted while it was being sent in fragments; resume from revision {next}"
            );
            self.cancel(id, CancelReason::Slow, next - 1, message, 0).await?;
            return Ok(false);
        }
        let selection = self.watches.get(&id).map(|w| w.selection.clone());
        let cluster_id = self.ctx.node.cluster_id;
        let ((batch, more), permit) = self
            .off_runtime(permit, move || {
                let (mut changes, more) = history::rows_of(&txn, next, within.row, READ_STEP_BYTES)?;
                drop(txn);
                if let Some(s) = selection {
                    changes.retain(|c| s.takes(c.space, c.delete, &c.kv.key));
                }
                // The rows of one revision: one batch (none only if the revision had no rows left).
                let batch = Batch::of(changes, cluster_id)?.pop().unwrap_or_else(|| Batch::empty(next));
                Ok((batch, more))
            })
            .await?;
        let held = batch.held();
        let Some(batch) = self.hold_step(batch, held, permit).await? else {
            return Box::pin(self.oversized_step(group)).await;
        };
        let last = more.is_none();
        let sent = matches!(self.send_batch(group, &batch, last, within.sent, false).await?, Batched::Sent)
            || within.sent;
        self.each_of(group, |w| match more {
            Some(row) => w.within = Some(Within { row, sent }),
            None => {
                w.within = None;
                w.next = next + 1;
            }
        });
        Ok(true)
    }

    /// Sends `group` the events it selects of `batch`: one response, or fragments. `last`:
    /// these are the last of their revision (else every response is a fragment); `sent`:
    /// fragments of the revision went out before, so its end is sent even with no events.
    /// With `only_with_room`, it sends nothing unless its stream's queue has room for every
    /// response of it now.
    async fn send_batch(
        &mut self,
        group: &Group,
        batch: &Batch,
        last: bool,
        sent: bool,
        only_with_room: bool,
    ) -> Result<Batched, End> {
        let Some(w) = self.watches.get(&group.id) else { return Ok(Batched::Nothing) };
        let events: Vec<Bytes> = batch
            .events
            .iter()
            .filter(|e| w.selects(e))
            .map(|e| if w.prev_kv { e.with_prev.clone() } else { e.plain.clone() })
            .collect();
        if events.is_empty() && !(last && sent) {
            return Ok(Batched::Nothing);
        }
        let count = events.len() as u64;
        let header = self.events_header(batch.revision);
        let response = |events: Vec<Bytes>, fragment: bool| wire::WatchResponse {
            header: Some(header),
            watch_id: group.id,
            also_watch_ids: group.also.clone(),
            fragment,
            events,
            ..Default::default()
        };
        let mut responses = Vec::new();
        let mut chunk: Vec<Bytes> = Vec::new();
        let mut size = 0;
        for e in events {
            if !chunk.is_empty() && size + e.len() > MAX_RESPONSE_BYTES {
                responses.push(response(std::mem::take(&mut chunk), true));
                size = 0;
            }
            size += e.len();
            chunk.push(e);
        }
        responses.push(response(chunk, !last));
        if only_with_room {
            let bytes = responses.iter().map(|r| outbox::held(r).max(1)).sum();
            if !self.out.has_room(responses.len(), bytes) {
                return Ok(Batched::NoRoom { responses: responses.len(), bytes });
            }
        }
        self.metrics.watch.events_sent.inc_by(count * (1 + group.also.len() as u64));
        for r in responses {
            self.send(r).await?;
        }
        let now = Instant::now();
        self.each_of(group, |w| w.last_sent = now);
        Ok(Batched::Sent)
    }

    /// Sends watch `id` the state of its range at `revision` (what `txn` reads), in pages:
    /// `false` when its client did not take them all by `deadline` (`--watch-snapshot-deadline`
    /// from when its slot was taken; the read transaction stays open while it takes them; a
    /// client that does not is cut off rather than left holding it).
    async fn send_snapshot(
        &mut self,
        id: i64,
        txn: &redb::ReadTransaction,
        revision: i64,
        deadline: tokio::time::Instant,
    ) -> Result<bool, End> {
        let Some(w) = self.watches.get(&id) else { return Ok(true) };
        let selection = w.selection.clone();
        let Selection { space, ref key, ref range_end, .. } = *selection;
        let header = self.header(revision);
        let mut from: Vec<u8> = Vec::new();
        loop {
            let (kvs, more) = snapshot_page(txn, space, key, range_end, &from).map_err(|e| self.fail(e))?;
            if let Some(last) = kvs.last() {
                from = last.key.clone();
                from.push(0);
            }
            let response = wire::WatchResponse {
                header: Some(header),
                watch_id: id,
                snapshot: true,
                fragment: more,
                snapshot_kvs: kvs,
                ..Default::default()
            };
            match tokio::time::timeout_at(deadline, self.send(response)).await {
                Ok(sent) => sent?,
                Err(_) => return Ok(false),
            }
            if !more {
                break;
            }
        }
        if let Some(w) = self.watches.get_mut(&id) {
            w.last_sent = Instant::now();
        }
        Ok(true)
    }

    /// A progress response to every watch that asked for them and got nothing for a while.
    async fn idle_progress(&mut self) -> Result<(), End> {
        let applied = self.applied();
        let idle: Vec<(i64, i64)> = self
            .watches
            .values()
            // Never between the fragments of a revision (a client assembling them by watch id
            // would take the progress for one).
            .filter(|w| w.progress_notify && w.last_sent.elapsed() >= self.progress_every)
            .filter(|w| !w.within.is_some_and(|within| within.sent))
            .map(|w| (w.id, (w.next - 1).min(applied)))
            .collect();
        for (id, revision) in idle {
            self.send(wire::WatchResponse {
                header: Some(self.header(revision)),
                watch_id: id,
                progress: true,
                ..Default::default()
            })
            .await?;
            if let Some(w) = self.watches.get_mut(&id) {
                w.last_sent = Instant::now();
            }
        }
        Ok(())
    }
}
