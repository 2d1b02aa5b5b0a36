//! Watches: [`Client::watch`] streams the changes of a key, a prefix or a range, revision by
//! revision, and resumes by itself — on another member when one fails, after a leader change,
//! when the member cut it off as too slow, or when a member ended its stream for the memory
//! its clients' queues hold — from the revision after the last one it delivered, so that the
//! caller sees every revision once, in order, with no gap.
//!
//! One machine does the resuming: [`WatchGroup`] (many watches on one stream); a single watch
//! is a group of one. [`Position`] is where each watch is, and what a response makes of it.

mod group;

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use latch_proto::v1::watch_create_request::OnCompacted;
pub use latch_proto::v1::watch_create_request::Target as WatchTarget;
use latch_proto::v1::watch_request::Request as Ask;
use latch_proto::v1::watch_response::CancelReason;
use latch_proto::v1::{Event, KeyValue, WatchCreateRequest, WatchRequest, WatchResponse};
use tonic::metadata::MetadataValue;
use tonic::Status;

#[cfg(test)]
pub(crate) use group::PARKED_FOR;
pub use group::{WatchGroup, WatchId};

use crate::{prefix_range, Client, Error};

/// What to watch and how. Build it with [`WatchOptions::key`], [`prefix`](WatchOptions::prefix)
/// or [`range`](WatchOptions::range), then the builder methods.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    key: Vec<u8>,
    range_end: Vec<u8>,
    start_revision: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    snapshot_on_compacted: bool,
    target: WatchTarget,
}

impl WatchOptions {
    /// One key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        WatchOptions { key: key.into(), ..Default::default() }
    }

    /// Every key starting with `prefix` (the empty prefix: every key).
    pub fn prefix(prefix: impl AsRef<[u8]>) -> Self {
        let (key, range_end) = prefix_range(prefix.as_ref());
        WatchOptions { key, range_end, ..Default::default() }
    }

    /// The keys in `[key, range_end)`.
    pub fn range(key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>) -> Self {
        WatchOptions { key: key.into(), range_end: range_end.into(), ..Default::default() }
    }

    /// Start with the events of `revision` (by default: the revisions after the member's
    /// current one).
    pub fn from_revision(mut self, revision: i64) -> Self {
        self.start_revision = revision;
        self
    }

    /// The revision the watch starts at ([`WatchOptions::from_revision`]; 0: from now).
    pub fn start_revision(&self) -> i64 {
        self.start_revision
    }

    /// Each event carries the key's previous kv.
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    pub fn no_put(mut self) -> Self {
        self.no_put = true;
        self
    }

    pub fn no_delete(mut self) -> Self {
        self.no_delete = true;
        self
    }

    /// Watch sessions, locks or elections instead of keys: the key, prefix or range then
    /// selects session ids or names, and each event's value is the encoded state (see
    /// `WatchCreateRequest.target` in watch.proto).
    pub fn target(mut self, target: WatchTarget) -> Self {
        self.target = target;
        self
    }

    /// Ask for [`WatchUpdate::Progress`] when nothing happened for the member's progress
    /// interval.
    pub fn progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }

    /// When the next revision is compacted (at the start, or on a resume), receive the range's
    /// state ([`WatchUpdate::Snapshot`]) and go on from there, instead of ending with an
    /// OUT_OF_RANGE error.
    pub fn snapshot_on_compacted(mut self) -> Self {
        self.snapshot_on_compacted = true;
        self
    }

    /// The create of this watch as `watch_id` on a stream, from `start_revision`. It takes
    /// responses shared with the stream's other watches (`also_watch_ids`): every watch is one
    /// of a [`WatchGroup`], a group of one for [`Client::watch`].
    fn create(&self, start_revision: i64, watch_id: i64) -> WatchRequest {
        let on_compacted =
            if self.snapshot_on_compacted { OnCompacted::Snapshot } else { OnCompacted::Error };
        WatchRequest {
            request: Some(Ask::Create(WatchCreateRequest {
                key: self.key.clone(),
                range_end: self.range_end.clone(),
                start_revision,
                prev_kv: self.prev_kv,
                no_put: self.no_put,
                no_delete: self.no_delete,
                progress_notify: self.progress_notify,
                watch_id,
                on_compacted: on_compacted as i32,
                target: self.target as i32,
                shared_responses: true,
            })),
        }
    }
}

/// What a watch delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchUpdate {
    /// The watch is open. `revision` is never past what a member reached: for a watch from now,
    /// the revision of the member it opened on (or the client's own last write if that is
    /// higher); for a watch from a revision R, R − 1, or the member's revision if that is
    /// lower. A watch from now delivers the revisions after it; a watch from a revision
    /// asked for ([`WatchOptions::from_revision`]) delivers from that revision, which may be
    /// well above `revision` when its member is behind (just restarted, or cut off).
    Started { revision: i64 },
    /// Every event of revision `revision` the watch selects, in order.
    Events { revision: i64, events: Vec<Event> },
    /// Every event at or below `revision` has been delivered. `revision` is one a member
    /// reached (a watch that starts in the future hears of the member's revision until the
    /// cluster gets there), and a later progress never names less.
    Progress { revision: i64 },
    /// The watched range held exactly `kvs` at `revision` (its history before was compacted):
    /// replace what you had; events after `revision` follow.
    Snapshot { revision: i64, kvs: Vec<KeyValue> },
}

/// Why a watch stream should be opened again, and from where.
enum Reopen {
    /// The stream broke (the member failed, shut down, or ended it over its limits), or the
    /// member could not confirm its state with a leader: try another member.
    Elsewhere,
    /// The member cut the watch off as slow: it is fine, reopen anywhere.
    Again,
    /// The member refused this watch's resume over one of its limits (its snapshots at once),
    /// or cut it off as slow again with nothing delivered since: create it again after a while
    /// (a single watch: on another member).
    Later,
}

/// A revision's events as read so far: each response's events, shared by every watch the
/// response named (a watch group's shared response is decoded once, not once per watch).
type Chunks = Vec<Arc<Vec<Event>>>;

/// An update read and not yet handed to the caller: a revision's events stay shared until then,
/// and are copied (or, when no other watch holds them any more, moved) as they are handed over.
enum Delivery {
    Update(WatchUpdate),
    Events { revision: i64, chunks: Chunks },
}

impl Delivery {
    fn into_update(self) -> WatchUpdate {
        match self {
            Delivery::Update(update) => update,
            Delivery::Events { revision, chunks } => {
                let mut events = Vec::with_capacity(chunks.iter().map(|c| c.len()).sum());
                for chunk in chunks {
                    match Arc::try_unwrap(chunk) {
                        Ok(own) => events.extend(own),
                        Err(shared) => events.extend(shared.iter().cloned()),
                    }
                }
                WatchUpdate::Events { revision, events }
            }
        }
    }
}

/// What reading a stream came to: an update for the caller, a reopening, or the watch's end
/// (with the error to hand the caller).
enum Step {
    Update(Delivery),
    /// Nothing for the caller yet (a fragment, a repeat): read on.
    Skip,
    Reopen(Reopen),
    End(Error),
}

impl Client {
    /// Watches what `options` selects. The stream ends with an error only when the watch cannot
    /// go on: a refused request (INVALID_ARGUMENT), a member's limit refusing it
    /// (RESOURCE_EXHAUSTED: a stream refused as it opens, past the member's watch streams, or
    /// a create past its snapshots at once), or a compacted revision without
    /// [`WatchOptions::snapshot_on_compacted`] (OUT_OF_RANGE; see [`Error::compact_revision`]).
    /// (Those limits end the watch only when the caller's own first create meets them; a
    /// resume that meets them waits and tries again, on another member if there is one.)
    /// A stream the member ends once it was serving it — RESOURCE_EXHAUSTED for the bytes it
    /// holds queued for its clients, UNAVAILABLE when this caller read nothing for the member's
    /// stall deadline — is resumed, on another member if there is one. Dropping the stream ends
    /// the watch. (It is a [`WatchGroup`] of one: the same resuming, on a stream of its own.)
    ///
    /// The watch opens when the stream is first polled: a watch from now starts at the
    /// revision its [`WatchUpdate::Started`] names, so wait for that before writing what it
    /// must see. That is never below this client's own last acknowledged write (its writes go
    /// to the leader, the watch to a member that may be behind it): what came up to that write
    /// is not delivered.
    ///
    /// The watch runs inside the returned stream's polling (no task of its own, no queue in
    /// between): a response is read from the member only when the caller asks for the next
    /// update, so a caller that stops reading holds the member's flow control, not memory here
    /// (and the member's queue for at most its `--watch-stall-deadline`: then the member drops
    /// it and ends the stream, and the watch resumes once the caller reads again).
    pub fn watch(
        &self,
        options: WatchOptions,
    ) -> impl Stream<Item = Result<WatchUpdate, Error>> + Send + Unpin + 'static {
        // A group of one: the same resume machine as many watches on one stream.
        let mut group = self.watch_group();
        group.add(options);
        // Fused: polled again after its end, it says `None` again (the group has no watch left).
        Box::pin(
            futures::stream::unfold(group, |mut group| async move {
                let (_, update) = group.next().await?;
                Some((update, group))
            })
            .fuse(),
        )
    }
}

const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
/// SLOW cancels in a row at the same revision, nothing delivered between them, after which a
/// watch ends with the member's reason: it asks for what the member cannot get to it in time
/// (a snapshot its client does not read within `--watch-snapshot-deadline`), and asking again
/// would only repeat that, silently.
const SLOW_WITHOUT_PROGRESS: u32 = 3;

/// Where one watch is: what it delivered, and what it read of a revision not delivered yet.
/// What a stream says of it moves it on ([`Position::take`]); a stream opened again carries it
/// on from `next`.
struct Position {
    options: WatchOptions,
    /// The first revision not delivered yet (0: from now, until a member says which): where a
    /// resume starts.
    next: i64,
    /// The highest revision at or below which every event is known delivered: the last
    /// revision delivered, or one a member vouched for (its progress, or the revision a stream
    /// started after), or the floor of a watch from now (nothing up to it is owed). Only grows,
    /// and never passes what a member reached (unlike `next − 1`, which for a watch that starts
    /// in the future is a revision no member reached yet; the floor is the client's own write).
    vouched: i64,
    /// `Started` was delivered (a resumed stream says it again; the caller heard it once).
    started: bool,
    /// For a watch from now: the highest revision of the client's own acknowledged writes when
    /// it was added. "Now" is never below it: a member behind the leader the writes went to
    /// starts the watch lower, and the events up to the floor, which came before the writes'
    /// answers, are not delivered.
    floor: i64,
    /// The `next` the last SLOW cancel left, and how many in a row left it there.
    slow_at: (i64, u32),
    /// Fragments of a revision (or of a snapshot) read so far.
    events: Chunks,
    kvs: Vec<KeyValue>,
}

/// What a stream that failed (`status`) comes to for the watches it carried.
fn stream_failed(status: Status) -> Step {
    match status.code() {
        // A stream ended over a member's limit once it was served (the bytes queued for its
        // clients) says the member is loaded, not that the watch is wrong: another member, or
        // this one a moment later, serves it.
        tonic::Code::ResourceExhausted => Step::Reopen(Reopen::Elsewhere),
        code if gives_up(code) => Step::End(Error::from(status)),
        _ => Step::Reopen(Reopen::Elsewhere),
    }
}

impl Position {
    /// `written`: the revision of the client's last acknowledged write (the floor of a watch
    /// from now).
    fn new(options: WatchOptions, written: i64) -> Position {
        Position {
            // The first revision not delivered yet (0: from now, until the member says which).
            next: options.start_revision,
            vouched: 0,
            floor: if options.start_revision == 0 { written } else { 0 },
            options,
            started: false,
            slow_at: (0, 0),
            events: Vec::new(),
            kvs: Vec::new(),
        }
    }

    /// Its create as `watch_id` on a stream, from its next revision (see [`WatchOptions`]'s).
    fn create(&self, watch_id: i64) -> WatchRequest {
        self.options.create(self.next, watch_id)
    }

    /// Drops the fragments read of a revision: a stream opened again sends them again.
    fn forget_fragments(&mut self) {
        self.events.clear();
        self.kvs.clear();
    }

    /// What one response of this watch comes to, its events (`r.events` is not read) shared
    /// with the other watches it names.
    fn take_shared(&mut self, r: WatchResponse, events: Arc<Vec<Event>>) -> Step {
        let revision = r.header.as_ref().map_or(0, |h| h.revision);
        let update = if r.canceled {
            return match CancelReason::try_from(r.cancel_reason) {
                Ok(CancelReason::Slow) => {
                    self.next = self.next.max(revision + 1);
                    let (at, times) = &mut self.slow_at;
                    *times = if *at == self.next { *times + 1 } else { 1 };
                    *at = self.next;
                    match *times {
                        1 => Step::Reopen(Reopen::Again),
                        n if n < SLOW_WITHOUT_PROGRESS => Step::Reopen(Reopen::Later),
                        n => Step::End(Error::from(Status::resource_exhausted(format!(
                            "{} (canceled so {n} times in a row at revision {}, nothing delivered between)",
                            r.cancel_message, self.next
                        )))),
                    }
                }
                Ok(CancelReason::Compacted) => {
                    let mut status = Status::out_of_range(r.cancel_message);
                    status.metadata_mut().insert(
                        latch_proto::COMPACT_REVISION_METADATA,
                        MetadataValue::from(r.compact_revision),
                    );
                    Step::End(Error::from(status))
                }
                // The member could not confirm "now" with a leader: another member may.
                Ok(CancelReason::Unavailable) => Step::Reopen(Reopen::Elsewhere),
                // Over a member's limit (its snapshots at once): the caller's own create is
                // refused; a resume of a watch already serving waits and tries again.
                Ok(CancelReason::ResourceExhausted) if self.started => Step::Reopen(Reopen::Later),
                Ok(CancelReason::ResourceExhausted) => {
                    // A member's own limit, marked as its refusals are (`Error::over_limit`).
                    let mut status = Status::resource_exhausted(r.cancel_message);
                    if let Ok(mark) = "true".parse() {
                        status.metadata_mut().insert(latch_proto::OVER_LIMIT_METADATA, mark);
                    }
                    Step::End(Error::from(status))
                }
                _ => Step::End(Error::from(Status::invalid_argument(r.cancel_message))),
            };
        } else if r.created {
            if self.next == 0 {
                self.next = revision.max(self.floor) + 1;
            }
            // The member vouches for the revision it starts after (never past its own); the
            // floor, for the revisions up to the client's own write, which are not delivered.
            self.vouched = self.vouched.max(revision).max(self.floor);
            // A resumed stream says `Started` again; the caller heard it the first time.
            if std::mem::replace(&mut self.started, true) {
                return Step::Skip;
            }
            WatchUpdate::Started { revision: revision.max(self.floor) }
        } else if r.progress {
            self.next = self.next.max(revision + 1);
            // A member still catching up vouches for less than was delivered already: the
            // caller's progress never goes back.
            self.vouched = self.vouched.max(revision);
            WatchUpdate::Progress { revision: self.vouched }
        } else if r.snapshot {
            self.kvs.extend(r.snapshot_kvs);
            if r.fragment {
                return Step::Skip;
            }
            self.next = revision + 1;
            self.vouched = self.vouched.max(revision);
            WatchUpdate::Snapshot { revision, kvs: std::mem::take(&mut self.kvs) }
        } else {
            if revision < self.next {
                // Already delivered (a member never sends one again; this guards the promise).
                return Step::Skip;
            }
            if !events.is_empty() {
                self.events.push(events);
            }
            if r.fragment {
                return Step::Skip;
            }
            self.next = revision + 1;
            self.vouched = self.vouched.max(revision);
            return Step::Update(Delivery::Events { revision, chunks: std::mem::take(&mut self.events) });
        };
        Step::Update(Delivery::Update(update))
    }
}

/// What a stream that could not be opened (`e`) comes to for its watches; `resuming`: one of
/// them was served before.
fn open_failed(e: Error, resuming: bool) -> Step {
    match e.code() {
        // A member at its watch streams refuses a resume as it would a first watch; the first
        // is the caller's to hear of, a resume tries elsewhere (with the backoff).
        tonic::Code::ResourceExhausted if resuming => Step::Reopen(Reopen::Elsewhere),
        code if gives_up(code) => Step::End(e),
        _ => Step::Reopen(Reopen::Elsewhere),
    }
}

/// Whether a failure says the watch itself cannot be served (no member would do better): the
/// watch then ends with it rather than retrying forever.
fn gives_up(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::InvalidArgument
            | tonic::Code::OutOfRange
            | tonic::Code::Unimplemented
            | tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
            | tonic::Code::ResourceExhausted
    )
}

#[cfg(test)]
mod tests {
    use latch_proto::v1::ResponseHeader;

    use super::*;

    fn at(revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader { revision, ..Default::default() })
    }

    /// What `position` makes of a created response at `revision`: the revision `Started` names.
    fn started(position: &mut Position, revision: i64) -> i64 {
        let created = WatchResponse { header: at(revision), created: true, ..Default::default() };
        match position.take_shared(created, Arc::new(Vec::new())) {
            Step::Update(Delivery::Update(WatchUpdate::Started { revision })) => revision,
            _ => panic!("a created response is the watch's Started"),
        }
    }

    /// The revision `position` delivers of one event at `revision`, or `None` when it skips it.
    fn delivered(position: &mut Position, revision: i64) -> Option<i64> {
        let response = WatchResponse { header: at(revision), ..Default::default() };
        match position.take_shared(response, Arc::new(vec![Event::default()])) {
            Step::Update(Delivery::Events { revision, .. }) => Some(revision),
            Step::Skip => None,
            _ => panic!("an event response is delivered or skipped"),
        }
    }

    #[test]
    fn a_watch_from_now_on_a_member_behind_the_clients_own_write_delivers_only_what_came_after_it() {
        // The client's last write was acknowledged at 10 (by the leader); the member the watch
        // opens on had applied only 7.
        let mut behind = Position::new(WatchOptions::key("k"), 10);
        assert_eq!(started(&mut behind, 7), 10, "now is never before the client's own write");
        assert_eq!(delivered(&mut behind, 9), None, "revision 9 came before the write at 10: not delivered");
        assert_eq!(delivered(&mut behind, 10), None, "nor the client's own write");
        let progress = WatchResponse { header: at(8), progress: true, ..Default::default() };
        assert!(
            matches!(
                behind.take_shared(progress, Arc::new(Vec::new())),
                Step::Update(Delivery::Update(WatchUpdate::Progress { revision: 10 }))
            ),
            "the member's progress at 8 never takes the watch back before where it started (10)"
        );
        assert_eq!(delivered(&mut behind, 11), Some(11), "what came after it is");

        let mut ahead = Position::new(WatchOptions::key("k"), 10);
        assert_eq!(started(&mut ahead, 20), 20, "a member past the write starts at its own now");
        assert_eq!(delivered(&mut ahead, 21), Some(21));

        let mut from_five = Position::new(WatchOptions::key("k").from_revision(5), 10);
        assert_eq!(started(&mut from_five, 7), 7, "a watch from a revision asked for is not moved");
        assert_eq!(delivered(&mut from_five, 5), Some(5), "it delivers from the revision asked for");
    }
}
