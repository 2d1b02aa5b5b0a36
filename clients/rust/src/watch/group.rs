//! Many watches on one stream: [`Client::watch_group`]. Each watch of a group keeps every
//! promise of [`Client::watch`] (every revision once, in order, with no gap, resumed by itself
//! on another member); what they share is the stream, and with it the member's work: watches
//! that select the same changes the same way and have delivered as far get each revision's
//! events in one response naming them all (`shared_responses`), which the group hands to each.
//!
//! As with [`Client::watch`], the group runs inside its caller's [`WatchGroup::next`]: a
//! response is read only when the caller asks for the next update and none is waiting, so a
//! caller that stops reading holds the member's flow control, not memory here. The updates of
//! one response wait in the group until they are asked for: at most one per watch it names,
//! holding its events once (shared), each watch's copy made as its update is handed over.
//!
//! The stream moves to another member only for what concerns it whole (it broke, or its member
//! could not confirm its state with a leader). A watch canceled SLOW is created again on the
//! same stream at once; one whose resume the member refused over a limit of its own (its
//! snapshots at once, its watches per stream) after [`PARKED_FOR`], and after
//! [`REFUSALS_BEFORE_MOVING`] refusals in a row on another member, with the rest of the group;
//! an error ends its watch alone.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use latch_proto::v1::watch_client::WatchClient;
use latch_proto::v1::watch_request::Request as Ask;
use latch_proto::v1::{WatchCancelRequest, WatchRequest, WatchResponse};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{
    open_failed, stream_failed, Delivery, Position, Reopen, Step, WatchOptions, WatchUpdate, INITIAL_BACKOFF,
};
use crate::{Client, Error};

/// A watch's id in its group: also its id on the group's stream.
pub type WatchId = i64;

/// How long a watch whose resume a member refused over its limits waits before it is created
/// again on the group's stream.
pub(crate) const PARKED_FOR: Duration = Duration::from_secs(1);
/// Refusals in a row of one watch's resume after which the group moves to another member.
pub(crate) const REFUSALS_BEFORE_MOVING: u32 = 3;
/// Most bytes of key and range end a watch may have: a create past what a member decodes would
/// end the whole stream, not the one watch (`Client::watch` refuses it alone).
const MAX_SELECTION_BYTES: usize = 1024 * 1024;

/// Watches on one stream; see the module doc. Add watches with [`WatchGroup::add`], read what
/// any of them delivers with [`WatchGroup::next`].
pub struct WatchGroup {
    client: Client,
    /// The group's watches that have not ended, by id.
    watches: BTreeMap<WatchId, Position>,
    /// The id the next watch added gets (never one a watch of the group had).
    next_id: WatchId,
    stream: Option<Open>,
    /// The stream was left for another member: the next opens there, after the backoff.
    moving: bool,
    /// Watches waiting to be created again on the stream, and from when.
    parked: Vec<(WatchId, Instant)>,
    /// Watches whose resume the stream's member refused, and how many times in a row.
    refused: BTreeMap<WatchId, u32>,
    /// Updates read and not asked for yet, in the order they were read.
    ready: VecDeque<(WatchId, Result<Delivery, Error>)>,
    backoff: Duration,
}

/// The group's open stream.
struct Open {
    responses: tonic::Streaming<WatchResponse>,
    /// The request side: creates, and cancels of watches removed.
    asks: mpsc::UnboundedSender<WatchRequest>,
}

impl Client {
    /// A group of watches on one stream: see [`WatchGroup`]. A process that watches the same
    /// prefix many times over (a watcher per worker, say) lets the member send each revision
    /// once for all of them.
    pub fn watch_group(&self) -> WatchGroup {
        WatchGroup {
            client: self.clone(),
            watches: BTreeMap::new(),
            next_id: 1,
            stream: None,
            moving: false,
            parked: Vec::new(),
            refused: BTreeMap::new(),
            ready: VecDeque::new(),
            backoff: INITIAL_BACKOFF,
        }
    }
}

impl WatchGroup {
    /// Adds the watch `options` selects, and says its id. It opens with the group's stream
    /// (at the next [`WatchGroup::next`], or at once if the stream is open); its updates,
    /// starting with [`WatchUpdate::Started`], come through [`WatchGroup::next`].
    /// A watch whose key and range end pass 1 MiB ends at once, with INVALID_ARGUMENT.
    pub fn add(&mut self, options: WatchOptions) -> WatchId {
        let id = self.next_id;
        self.next_id += 1;
        let selection = options.key.len() + options.range_end.len();
        if selection > MAX_SELECTION_BYTES {
            let problem = format!(
                "key and range_end: {selection} bytes, over the {MAX_SELECTION_BYTES} a watch may have"
            );
            self.ready.push_back((id, Err(Error::from(tonic::Status::invalid_argument(problem)))));
            return id;
        }
        let watch = Position::new(options, self.client.written());
        if let Some(open) = &self.stream {
            // A stream that went away is found so when next read; the watch opens on the next.
            let _ = open.asks.send(watch.create(id));
        }
        self.watches.insert(id, watch);
        id
    }

    /// Ends watch `id`: nothing more of it comes (updates of it already read are dropped).
    /// Whether it was a watch of the group that had not ended, or had updates waiting.
    pub fn remove(&mut self, id: WatchId) -> bool {
        let waiting = self.ready.len();
        self.ready.retain(|(of, _)| *of != id);
        self.parked.retain(|(of, _)| *of != id);
        self.refused.remove(&id);
        if self.watches.remove(&id).is_none() {
            return self.ready.len() < waiting;
        }
        if let Some(open) = &self.stream {
            let cancel = WatchCancelRequest { watch_id: id };
            let _ = open.asks.send(WatchRequest { request: Some(Ask::Cancel(cancel)) });
        }
        true
    }

    /// How many watches of the group have not ended.
    pub fn len(&self) -> usize {
        self.watches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }

    /// The next update of one of the group's watches, with its id. An error ends that watch
    /// alone, for the reasons [`Client::watch`] gives; the others go on. `None` once no watch
    /// is left (add one to go on).
    pub async fn next(&mut self) -> Option<(WatchId, Result<WatchUpdate, Error>)> {
        loop {
            if let Some((id, delivery)) = self.ready.pop_front() {
                return Some((id, delivery.map(Delivery::into_update)));
            }
            if self.watches.is_empty() {
                // A stream with no watch left is closed (the member forgets it too).
                self.stream = None;
                return None;
            }
            let step = match self.stream.as_mut() {
                Some(open) => {
                    let due = self.parked.iter().map(|(_, at)| *at).min();
                    let far = Instant::now() + Duration::from_secs(3600);
                    tokio::select! {
                        response = open.responses.message() => match response {
                            Ok(Some(r)) => {
                                self.take(r);
                                continue;
                            }
                            Ok(None) => Step::Reopen(Reopen::Elsewhere),
                            Err(status) => stream_failed(status),
                        },
                        () = tokio::time::sleep_until(due.unwrap_or(far)), if due.is_some() => {
                            self.unpark();
                            continue;
                        }
                    }
                }
                None => {
                    if self.moving {
                        self.client.move_on();
                        tokio::time::sleep(self.backoff).await;
                        self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
                        // Only now: a caller that drops `next` during the sleep waits it again.
                        self.moving = false;
                    }
                    match self.open().await {
                        Ok(open) => {
                            self.stream = Some(open);
                            continue;
                        }
                        Err(step) => step,
                    }
                }
            };
            // The stream as a whole failed, or could not be opened.
            match step {
                Step::End(e) => {
                    self.stream = None;
                    self.parked.clear();
                    self.refused.clear();
                    for (id, _) in std::mem::take(&mut self.watches) {
                        self.ready.push_back((id, Err(copy_of(&e))));
                    }
                }
                _ => self.leave(),
            }
        }
    }

    /// Hands response `r` to each watch it is for: its events decoded once, shared by them all.
    fn take(&mut self, mut r: WatchResponse) {
        let also = std::mem::take(&mut r.also_watch_ids);
        let events = Arc::new(std::mem::take(&mut r.events));
        // A create the member took ends a watch's run of refusals (a resumed watch's `created`
        // is no update for the caller).
        let accepted = r.created && !r.canceled;
        let mut leave = false;
        // In the order named; the last one takes the rest of the response itself (a shared
        // response is one of events: a header and flags left to copy).
        let ids: Vec<WatchId> = [r.watch_id].into_iter().chain(also).collect();
        for (i, &id) in ids.iter().enumerate() {
            let Some(watch) = self.watches.get_mut(&id) else {
                // A watch removed (its cancel's answer, or what came before it), or a
                // stream-wide response.
                continue;
            };
            if accepted {
                self.refused.remove(&id);
            }
            let response = if i + 1 < ids.len() { r.clone() } else { std::mem::take(&mut r) };
            match watch.take_shared(response, events.clone()) {
                Step::Update(delivery) => {
                    self.backoff = INITIAL_BACKOFF;
                    self.refused.remove(&id);
                    self.ready.push_back((id, Ok(delivery)));
                }
                Step::Skip => {}
                Step::End(e) => {
                    self.watches.remove(&id);
                    self.refused.remove(&id);
                    self.ready.push_back((id, Err(e)));
                }
                Step::Reopen(Reopen::Again) => {
                    // Canceled SLOW: the member forgot it; created again at once, same id.
                    watch.forget_fragments();
                    let create = watch.create(id);
                    if let Some(open) = &self.stream {
                        let _ = open.asks.send(create);
                    }
                }
                Step::Reopen(Reopen::Later) => {
                    watch.forget_fragments();
                    let refusals = self.refused.entry(id).or_default();
                    *refusals += 1;
                    if *refusals >= REFUSALS_BEFORE_MOVING {
                        // This member keeps refusing it: another may not.
                        leave = true;
                    } else {
                        self.parked.push((id, Instant::now() + PARKED_FOR));
                    }
                }
                Step::Reopen(Reopen::Elsewhere) => leave = true,
            }
        }
        if leave {
            self.leave();
        }
    }

    /// Creates the parked watches that waited long enough again, on the stream.
    fn unpark(&mut self) {
        let now = Instant::now();
        let Some(open) = &self.stream else { return };
        self.parked.retain(|&(id, at)| {
            if at > now {
                return true;
            }
            if let Some(w) = self.watches.get(&id) {
                let _ = open.asks.send(w.create(id));
            }
            false
        });
    }

    /// Leaves the stream: the next read opens one on the next member, after the backoff, each
    /// watch (parked ones too) from its next revision.
    fn leave(&mut self) {
        self.stream = None;
        self.moving = true;
        self.parked.clear();
        self.refused.clear();
        for watch in self.watches.values_mut() {
            watch.forget_fragments();
        }
    }

    /// Opens a stream carrying every watch of the group, each from its next revision.
    async fn open(&mut self) -> Result<Open, Step> {
        let creates: Vec<WatchRequest> = self.watches.iter().map(|(&id, w)| w.create(id)).collect();
        let resuming = self.watches.values().any(|w| w.started);
        let opened = self
            .client
            .open_stream("Watch", |channel| {
                // Each attempt gets a request side of its own, the creates first, which goes
                // with its stream: the group sends on the request side of the stream that
                // answered (of two, when the open was hedged).
                let (sender, receiver) = mpsc::unbounded_channel();
                for create in &creates {
                    let _ = sender.send(create.clone());
                }
                let requests = UnboundedReceiverStream::new(receiver);
                async move {
                    let opened =
                        WatchClient::new(channel).max_decoding_message_size(usize::MAX).watch(requests).await;
                    opened.map(|response| response.map(|responses| (responses, sender)))
                }
            })
            .await;
        match opened {
            Ok((responses, asks)) => Ok(Open { responses, asks }),
            Err(e) => Err(open_failed(e, resuming)),
        }
    }
}

/// The same failure for another watch (a transport error becomes a status of its code and
/// message).
fn copy_of(e: &Error) -> Error {
    match e.status() {
        Some(status) => Error::from(status.clone()),
        None => Error::from(tonic::Status::new(e.code(), e.to_string())),
    }
}
