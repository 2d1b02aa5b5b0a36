//! The peer transport: raft messages between members, and the gRPC peer service
//! (`latch.internal.v1.Peer`) on the same port.
//!
//! A member sends its raft messages over the wire ([`wire`]: framed messages over plain TCP,
//! written by the raft thread or a sender thread per peer) and its snapshots over the peer
//! service's `Snapshot` call. The service's `Stream` call — the message stream members of
//! earlier versions send on — is still served, so such a member can talk to this one; what
//! follows describes it and the snapshot call. On it, each member kept one sender task per
//! peer, holding one client stream open and writing the messages the driver handed it, in
//! order ([`PeerSenders`], which now carries only snapshots, and raft messages when the wire's
//! threads could not start). Messages are raft-rs protobuf bytes, cut into chunks of at most
//! [`CHUNK`] bytes. A peer that cannot be reached is reported `Unreachable`
//! and its queued messages are dropped: raft retransmits what matters. Whether a peer is
//! reachable ([`Links`]: lost when a call to it fails, back when a message from it arrives) is
//! logged when it changes.
//!
//! Snapshots go over a call of their own: the raft message first (its `data` names the
//! sender's prepared snapshot), then the snapshot stream itself, read from the sender's redb
//! read transaction on a blocking thread and written by the receiver into its inbox as it
//! arrives (see `core::snapshots`); the receiver then hands raft the message naming the staged
//! stream. The call's completion is what the sender reports to raft (`SnapshotSent`).
//!
//! Bounds: a raft message from a peer is at most `--max-peer-message-bytes` (a stream that
//! sends more is cut with an error naming the flag); a message the node's peer queue has no
//! room for is dropped and counted. Neither side holds more than a chunk of a snapshot.
//!
//! Every message sent or received is counted in [`PeerMetrics`], by peer and message type,
//! with its encoded size.
//!
//! Both directions consult [`Admission`] — a member started on an empty data dir takes no
//! part until its peers confirm it has not lived before (`server::admission`) — and
//! [`Faults`], the test-only fault injector ([`faults`]): a message to or from a blocked peer,
//! or of a member not admitted yet, is dropped before it is counted, sent or delivered.

// The peer service's helpers fail with the `tonic::Status` its handlers return; boxing it only
// to unbox it one call later would buy nothing.
#![allow(clippy::result_large_err)]

pub mod faults;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use redb::ReadableDatabase as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::api::RateLimitedLog;
use crate::config::Peer;
use crate::core::SnapshotError;
use crate::metrics::{Metrics, PeerMetrics};
use crate::node::{Event, NodeHandle, Outbox};
pub use faults::{Faults, FaultsService};
use latch_proto::internal::peer_client::PeerClient;
use latch_proto::internal::peer_server::{Peer as PeerRpc, PeerServer};
use latch_proto::internal::{
    AddedMember, MemberStatus, MemberStatusRequest, PeerAck, PeerFrame, StateHashPoint,
};
use wire::Refusal;
pub use wire::WireSenders;

/// Largest chunk of one frame.
pub const CHUNK: usize = 1024 * 1024;
/// Largest gRPC message the peer service accepts (a chunk plus framing).
pub const MAX_FRAME: usize = CHUNK + 64 * 1024;

/// The name of a raft message type, as the metrics label it.
pub fn message_type_name(t: MessageType) -> &'static str {
    match t {
        MessageType::MsgHup => "MsgHup",
        MessageType::MsgBeat => "MsgBeat",
        MessageType::MsgPropose => "MsgPropose",
        MessageType::MsgAppend => "MsgAppend",
        MessageType::MsgAppendResponse => "MsgAppendResponse",
        MessageType::MsgRequestVote => "MsgRequestVote",
        MessageType::MsgRequestVoteResponse => "MsgRequestVoteResponse",
        MessageType::MsgSnapshot => "MsgSnapshot",
        MessageType::MsgHeartbeat => "MsgHeartbeat",
        MessageType::MsgHeartbeatResponse => "MsgHeartbeatResponse",
        MessageType::MsgUnreachable => "MsgUnreachable",
        MessageType::MsgSnapStatus => "MsgSnapStatus",
        MessageType::MsgCheckQuorum => "MsgCheckQuorum",
        MessageType::MsgTransferLeader => "MsgTransferLeader",
        MessageType::MsgTimeoutNow => "MsgTimeoutNow",
        MessageType::MsgReadIndex => "MsgReadIndex",
        MessageType::MsgReadIndexResp => "MsgReadIndexResp",
        MessageType::MsgRequestPreVote => "MsgRequestPreVote",
        MessageType::MsgRequestPreVoteResponse => "MsgRequestPreVoteResponse",
    }
}

/// A raft message's bytes, counted as sent to its peer; `None` (logged) if it cannot be encoded.
fn encoded(msg: &Message, metrics: &PeerMetrics) -> Option<Vec<u8>> {
    match msg.write_to_bytes() {
        Ok(bytes) => {
            metrics.sent(msg.to, message_type_name(msg.get_msg_type()), bytes.len());
            Some(bytes)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a raft message");
            None
        }
    }
}

/// Splits an encoded message into frames.
fn frames(from: u64, cluster_id: u64, bytes: Vec<u8>) -> Vec<PeerFrame> {
    if bytes.is_empty() {
        return vec![PeerFrame { from, cluster_id, chunk: vec![], last: true }];
    }
    let n = bytes.len().div_ceil(CHUNK);
    bytes
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, c)| PeerFrame { from, cluster_id, chunk: c.to_vec(), last: i + 1 == n })
        .collect()
}

/// Raft messages dropped because the node's peer queue was full, logged at most once a second.
static DROPPED: RateLimitedLog = RateLimitedLog::new();

/// Reassembles frames into raft messages, checking each frame's cluster and each message's
/// size, and hands each to `deliver`, dropping those of blocked peers (see [`Faults`]); stops
/// after the first message if `one` (the snapshot call).
async fn receive(
    cluster_id: u64,
    max_message: usize,
    stream: &mut Streaming<PeerFrame>,
    node: &NodeHandle,
    shared: &Shared,
    mut deliver: impl FnMut(Message, usize) -> Result<(), Status>,
    one: bool,
) -> Result<(), Status> {
    let mut buf = Vec::new();
    while let Some(frame) = stream.next().await {
        let frame = frame?;
        check_cluster(cluster_id, &frame)?;
        if let Some(why) = shared.links.refusal_of(frame.from, node.member_id, node.has_removed(frame.from)) {
            return Err(why.into());
        }
        if buf.len() + frame.chunk.len() > max_message {
            return Err(Refusal::TooLarge { from: frame.from, max: max_message }.into());
        }
        buf.extend_from_slice(&frame.chunk);
        if !node.is_running() {
            // Frames a member not admitted drops never reach the node, so the stream would not
            // notice it stopped, and would hold the peer port's graceful close open.
            return Err(Status::unavailable("member is shutting down"));
        }
        if frame.last && shared.cut_off(frame.from) {
            if one {
                return Err(Status::unavailable(format!(
                    "member {} takes no raft messages from peer {} now",
                    node.member_id, frame.from
                )));
            }
            buf.clear();
        } else if frame.last {
            let msg = Message::parse_from_bytes(&buf)
                .map_err(|e| Refusal::Undecodable { from: frame.from, why: e.to_string() })?;
            wire::check_addressed(&msg, frame.from, node.member_id)?;
            shared.metrics.peer.received(frame.from, message_type_name(msg.get_msg_type()), buf.len());
            shared.links.heard(frame.from, node);
            deliver(msg, buf.len())?;
            buf.clear();
            if one {
                return Ok(());
            }
        }
    }
    if one {
        return Err(Status::invalid_argument("the stream ended before its raft message"));
    }
    Ok(())
}

/// Hands a peer's message to the node; one its peer queue has no room for is dropped (raft
/// resends), counted and logged (at most once a second). False once the node is gone.
fn deliver_or_drop(node: &NodeHandle, metrics: &PeerMetrics, msg: Message, bytes: usize) -> bool {
    let (from, t) = (msg.from, msg.get_msg_type());
    if !node.deliver(msg, bytes) {
        if !node.is_running() {
            return false;
        }
        metrics.dropped(from);
        let why = format!("a {} from peer {from} dropped: the peer queue is full", message_type_name(t));
        DROPPED.note(node.member_id, &format!("{why} (--max-peer-queue-bytes)"));
    }
    true
}

/// What the peer service answers for a message or stream the wire would refuse alike.
impl From<Refusal> for Status {
    fn from(why: Refusal) -> Status {
        let message = why.to_string();
        match why {
            Refusal::Cluster { .. } | Refusal::Stranger(_) | Refusal::Removed { .. } => {
                Status::failed_precondition(message)
            }
            Refusal::TooLarge { .. } => Status::resource_exhausted(message),
            Refusal::Undecodable { .. }
            | Refusal::WrongSender { .. }
            | Refusal::WrongRecipient { .. }
            | Refusal::Snapshot(_) => Status::invalid_argument(message),
        }
    }
}

fn check_cluster(cluster_id: u64, frame: &PeerFrame) -> Result<(), Status> {
    if frame.cluster_id != cluster_id {
        return Err(Refusal::Cluster { from: frame.from, theirs: frame.cluster_id, ours: cluster_id }.into());
    }
    Ok(())
}

/// The peer service: receives raft messages and answers status queries.
pub struct PeerService {
    node: NodeHandle,
    client_addr: String,
    peer_addr: String,
    dns_addr: String,
    max_message: usize,
    shared: Shared,
}

impl PeerService {
    pub fn new(
        node: NodeHandle,
        client_addr: String,
        peer_addr: String,
        dns_addr: String,
        max_message: usize,
        shared: Shared,
    ) -> PeerServer<PeerService> {
        PeerServer::new(PeerService { node, client_addr, peer_addr, dns_addr, max_message, shared })
            .max_decoding_message_size(MAX_FRAME)
            .max_encoding_message_size(MAX_FRAME)
    }
}

#[tonic::async_trait]
impl PeerRpc for PeerService {
    async fn stream(&self, req: Request<Streaming<PeerFrame>>) -> Result<Response<PeerAck>, Status> {
        let node = self.node.clone();
        let mut stream = req.into_inner();
        let metrics = &self.shared.metrics.peer;
        let deliver = |m: Message, bytes: usize| {
            if crate::core::is_snapshot(&m) {
                // A snapshot comes only over its own call, with its stream; one here has none.
                return Err(Refusal::Snapshot(m.from).into());
            }
            if !deliver_or_drop(&node, metrics, m, bytes) {
                return Err(Status::unavailable("member is shutting down"));
            }
            Ok(())
        };
        receive(node.cluster_id, self.max_message, &mut stream, &node, &self.shared, deliver, false).await?;
        Ok(Response::new(PeerAck {}))
    }

    /// A snapshot: its raft message, then its stream, staged in the inbox as it arrives.
    async fn snapshot(&self, req: Request<Streaming<PeerFrame>>) -> Result<Response<PeerAck>, Status> {
        let node = self.node.clone();
        let mut stream = req.into_inner();
        let mut first = None;
        receive(
            node.cluster_id,
            self.max_message,
            &mut stream,
            &node,
            &self.shared,
            |m, _| {
                first = Some(m);
                Ok(())
            },
            true,
        )
        .await?;
        let Some(mut msg) = first else { return Err(Status::invalid_argument("no raft message")) };
        let meta = msg.get_snapshot().get_metadata().clone();
        let (from, member) = (msg.from, node.member_id);
        let inbox = node.snapshots().inbox().clone();
        let (writer, token) = inbox
            .create(from, meta.index, meta.term)
            .map_err(|e| Status::internal(format!("cannot stage a snapshot: {e}")))?;
        let staged = stage(node.cluster_id, &mut stream, writer).await;
        let bytes = match staged {
            Ok(bytes) => bytes,
            Err(e) => {
                inbox.remove(&token);
                tracing::warn!(member, peer = from, index = meta.index, error = %e, "receiving a snapshot failed");
                return Err(e);
            }
        };
        // Checked before raft sees it: raft cannot forget a snapshot it took, and one that
        // fails to restore would stop this member at every start (the leader sends it again).
        let checked = {
            let (inbox, token, index, term) = (inbox.clone(), token.clone(), meta.index, meta.term);
            tokio::task::spawn_blocking(move || -> Result<(), String> {
                let file = inbox.open(&token).map_err(|e| format!("cannot read it back: {e}"))?;
                let mut input = std::io::BufReader::with_capacity(256 * 1024, file);
                crate::fsm::snapshot::verify(&mut input, index, term).map(|_| ()).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(format!("its check did not finish: {e}")))
        };
        if let Err(why) = checked {
            inbox.remove(&token);
            tracing::warn!(member, peer = from, index = meta.index, error = %why, "a received snapshot does not check; refused");
            return Err(Status::invalid_argument(format!("the snapshot does not check: {why}")));
        }
        tracing::info!(member, peer = from, term = msg.term, index = meta.index, bytes, "snapshot received");
        msg.mut_snapshot().data = token.clone().into();
        if !node.deliver(msg, 1024) {
            inbox.remove(&token);
            return Err(Status::unavailable("member is shutting down or its peer queue is full"));
        }
        Ok(Response::new(PeerAck {}))
    }

    async fn status(&self, _: Request<MemberStatusRequest>) -> Result<Response<MemberStatus>, Status> {
        let s = self.node.status();
        let txn = self.node.db().begin_read().map_err(|e| unreadable(e.to_string()))?;
        let membership = membership_status(&txn, self.node.configuration()).map_err(unreadable)?;
        let restored_from = crate::fsm::restored_from(&txn).map_err(|e| unreadable(e.to_string()))?;
        Ok(Response::new(MemberStatus {
            id: s.id,
            client_addr: self.client_addr.clone(),
            peer_addr: self.peer_addr.clone(),
            role: if self.shared.admission.admits() { s.role.as_str() } else { ADMITTING }.to_string(),
            applied_index: s.applied.index,
            commit_index: s.commit_index,
            term: s.term,
            leader: s.leader,
            cluster_id: self.node.cluster_id,
            snapshots_installed: s.snapshots_installed,
            adds_members: true,
            command_version: crate::fsm::COMMAND_VERSION,
            cluster_version: s.cluster_version,
            state_hashes: (self.shared.state_hashes.points().into_iter())
                .map(|p| StateHashPoint { index: p.index, hash: p.hash })
                .collect(),
            state_hash_version: crate::core::state_check::STATE_HASH_VERSION,
            state_installed_at: self.shared.state_hashes.unconfirmed_install(),
            dns_addr: self.dns_addr.clone(),
            restored_from: restored_from.checksum,
            restored_skip_generations: restored_from.skip_generations,
            ..membership
        }))
    }
}

fn unreadable(e: String) -> Status {
    Status::internal(format!("cannot read the members' records: {e}"))
}

/// The membership fields of a `Peer.Status` (`started_members`, `learners`, `removed`, `added`,
/// `added_in_log`, the rest left default): from the state read in `txn` and the `configuration`
/// handed out to it — the learners the state records and those of the changes handed out but not
/// applied yet (committed too), so that a member added or replaced moments ago is named a learner
/// beside its addition, which `added` names from the same changes.
pub fn membership_status(
    txn: &redb::ReadTransaction,
    configuration: crate::core::membership::Configuration,
) -> Result<MemberStatus, String> {
    let started_members = crate::fsm::members::recorded(txn).map_err(|e| e.to_string())?;
    let mut learners = crate::core::membership::recorded_learners(txn)?;
    learners.extend(&configuration.learners);
    learners.sort_unstable();
    learners.dedup();
    let at = |(id, addr): (&u64, &String)| AddedMember { id: *id, peer_addr: addr.clone() };
    Ok(MemberStatus {
        started_members,
        learners,
        added: configuration.added.iter().filter(|(id, _)| configuration.has(**id)).map(at).collect(),
        added_in_log: configuration.logged.iter().map(at).collect(),
        removed: configuration.removed,
        ..MemberStatus::default()
    })
}

/// Writes a snapshot stream's frames into the inbox as they arrive; returns its size.
async fn stage(
    cluster_id: u64,
    stream: &mut Streaming<PeerFrame>,
    mut writer: Box<dyn std::io::Write + Send>,
) -> Result<u64, Status> {
    let io = |e: std::io::Error| Status::internal(format!("cannot stage a snapshot: {e}"));
    let mut bytes = 0u64;
    let mut complete = false;
    while let Some(frame) = stream.next().await {
        let frame = frame?;
        check_cluster(cluster_id, &frame)?;
        bytes += frame.chunk.len() as u64;
        // Written in place: a chunk is at most CHUNK bytes, the writer buffers and the disk
        // absorbs it at once, so the task blocks only briefly.
        writer.write_all(&frame.chunk).map_err(io)?;
        if frame.last {
            complete = true;
            break;
        }
    }
    if !complete {
        return Err(Status::invalid_argument("the snapshot stream ended before its last frame"));
    }
    writer.flush().map_err(io)?;
    Ok(bytes)
}

/// Sends raft messages to the peers: one queue and task per peer, started at its first
/// message (a peer added at run time once [`Links`] knows it).
pub struct PeerSenders {
    /// Each peer's queue, and the address its sender sends to.
    queues: HashMap<u64, (String, mpsc::UnboundedSender<Message>)>,
    /// [`Links::moves`] when the queues' addresses were last compared with the transport's.
    moves_seen: u64,
    rt: tokio::runtime::Handle,
    me: u64,
    node: NodeHandle,
    shared: Shared,
}

impl PeerSenders {
    /// Sends from member `me` on the given runtime.
    pub fn start(rt: &tokio::runtime::Handle, me: u64, node: NodeHandle, shared: Shared) -> PeerSenders {
        PeerSenders {
            queues: HashMap::new(),
            moves_seen: shared.links.moves(),
            rt: rt.clone(),
            me,
            node,
            shared,
        }
    }

    /// Stops the senders of peers whose address the transport replaced since (their queues
    /// close, and their sender tasks end); the next message starts one at the new address.
    fn follow_moves(&mut self) {
        if !self.shared.links.moved_since(&mut self.moves_seen) {
            return;
        }
        let links = &self.shared.links;
        self.queues.retain(|id, (addr, _)| links.address(*id).as_ref() == Some(addr));
    }

    /// Peer `to`'s queue, its sender started now if the transport learned of the peer since;
    /// `None` for a peer it does not know.
    fn queue(&mut self, to: u64) -> Option<&mpsc::UnboundedSender<Message>> {
        if !self.queues.contains_key(&to) {
            let peer = Peer { id: to, peer_addr: self.shared.links.address(to)? };
            let (tx, rx) = mpsc::unbounded_channel();
            self.queues.insert(to, (peer.peer_addr.clone(), tx));
            self.rt.spawn(send_loop(self.me, peer, self.node.clone(), self.shared.clone(), rx));
        }
        self.queues.get(&to).map(|(_, q)| q)
    }
}

impl Outbox for PeerSenders {
    fn send(&mut self, msgs: Vec<Message>) {
        self.follow_moves();
        for m in msgs {
            match self.queue(m.to) {
                Some(q) => {
                    let _ = q.send(m);
                }
                None => drop_message(&self.node, m.to, &m),
            }
        }
    }
}

/// The open stream to a peer. Unbounded: raft bounds what is in flight (`max_inflight_msgs`).
type FrameSink = mpsc::UnboundedSender<PeerFrame>;

/// Dials a peer (lazily) and returns its client.
fn dial(addr: &str) -> Result<PeerClient<tonic::transport::Channel>, tonic::transport::Error> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(PeerClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(MAX_FRAME)
        .max_encoding_message_size(MAX_FRAME))
}

async fn send_loop(
    me: u64,
    peer: Peer,
    node: NodeHandle,
    shared: Shared,
    mut queue: mpsc::UnboundedReceiver<Message>,
) {
    let metrics = &shared.metrics;
    let cluster_id = node.cluster_id;
    let client = match dial(&peer.peer_addr) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(peer = peer.id, addr = %peer.peer_addr, error = %e, "bad peer address; not sending to it");
            // Each message to it is reported undelivered (a snapshot failed), as to a peer the
            // transport does not know: raft does not wait on a snapshot that never left.
            while let Some(msg) = queue.recv().await {
                drop_message(&node, peer.id, &msg);
            }
            return;
        }
    };
    let mut stream: Option<FrameSink> = None;
    while let Some(msg) = queue.recv().await {
        if shared.cut_off(peer.id) {
            // Dropped without a word, as by a partition; a snapshot's call would fail.
            drop_message(&node, peer.id, &msg);
            continue;
        }
        if crate::core::is_snapshot(&msg) {
            // On a task of its own: messages to this peer keep flowing while it streams.
            let (client, node, shared, peer) = (client.clone(), node.clone(), shared.clone(), peer.id);
            tokio::spawn(async move {
                let (term, index) = (msg.term, msg.get_snapshot().get_metadata().index);
                let sent = send_snapshot(&client, me, cluster_id, &node, &msg, &shared.metrics.peer).await;
                node.snapshots().finish(&msg.get_snapshot().data);
                match &sent {
                    Ok(bytes) => tracing::info!(member = me, peer, term, index, bytes, "snapshot sent"),
                    Err(e) => {
                        tracing::warn!(member = me, peer, term, index, error = %e, "sending a snapshot failed")
                    }
                }
                node.send(Event::SnapshotSent { peer, ok: sent.is_ok() });
            });
            continue;
        }
        let Some(bytes) = encoded(&msg, &metrics.peer) else { continue };
        let open = || open_stream(&client, &peer, node.clone(), shared.clone());
        let sink = match stream.take() {
            Some(s) if !s.is_closed() => s,
            _ => open(),
        };
        stream = Some(sink.clone());
        if !send_frames(&sink, frames(me, cluster_id, bytes)) {
            // The call ended: drop what is queued; raft will retransmit.
            stream = None;
            while let Ok(dropped) = queue.try_recv() {
                drop_message(&node, peer.id, &dropped);
            }
            node.send(Event::Unreachable(peer.id));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Drops a message to `peer` unsent. Raft retransmits entries and heartbeats by itself, but a
/// snapshot must be reported failed: until then raft-rs pauses the peer's progress, and the
/// follower would get no appends and no snapshot until the next leader.
fn drop_message(node: &NodeHandle, peer: u64, msg: &Message) {
    if crate::core::is_snapshot(msg) {
        node.snapshots().finish(&msg.get_snapshot().data);
        node.send(Event::SnapshotSent { peer, ok: false });
    }
}

/// Writes a message's frames to the stream; false if the stream has ended.
fn send_frames(sink: &FrameSink, frames: Vec<PeerFrame>) -> bool {
    for f in frames {
        if sink.send(f).is_err() {
            return false;
        }
    }
    true
}

/// Opens the long-lived message stream to a peer; its end (an error) reports the peer unreachable.
fn open_stream(
    client: &PeerClient<tonic::transport::Channel>,
    peer: &Peer,
    node: NodeHandle,
    shared: Shared,
) -> FrameSink {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut c = client.clone();
    let (id, addr) = (peer.id, peer.peer_addr.clone());
    tokio::spawn(async move {
        if let Err(e) = c.stream(UnboundedReceiverStream::new(rx)).await {
            tracing::debug!(peer = id, error = %e, "peer stream ended");
            shared.lost(id, &addr, &node);
        }
    });
    tx
}

/// What the sending and receiving halves of the transport share.
#[derive(Clone)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    /// Closed while a member started on an empty data dir waits for its peers' word.
    pub admission: Admission,
    /// The test-only fault injector (empty unless `--fault-injection` fills it).
    pub faults: Faults,
    pub links: Arc<Links>,
    /// This member's state hashes at the last check points, which `Peer.Status` reports.
    pub state_hashes: Arc<crate::core::state_check::StateHashes>,
}

impl Shared {
    /// Reports peer `peer` unreachable at `addr` (a sender's connection there failed): logged
    /// once, counted, and told to raft — unless the transport moved the peer elsewhere or
    /// forgot it since, and the sender stopped: its last failure is no news of the peer.
    fn lost(&self, peer: u64, addr: &str, node: &NodeHandle) {
        if self.links.address(peer).as_deref() != Some(addr) {
            return;
        }
        self.links.lost(peer, node);
        self.metrics.peer.unreachable(peer);
        node.send(Event::Unreachable(peer));
    }

    /// Whether raft messages to and from `peer` are dropped now.
    fn cut_off(&self, peer: u64) -> bool {
        !self.admission.admits() || self.faults.blocks(peer)
    }
}

/// The role `Peer.Status` reports while a member's [`Admission`] is closed.
pub const ADMITTING: &str = "admitting";

/// Whether this member takes part in raft: once open, for the rest of the process. Cheap to
/// clone: clones share the gate.
#[derive(Debug, Clone)]
pub struct Admission(Arc<AtomicBool>);

impl Admission {
    /// Open from the start: the only member. A member with peers is admitted once it has checked
    /// their versions and, if its raft log was empty, that it has not lived before
    /// (`server::admission`).
    pub fn open() -> Admission {
        Admission(Arc::new(AtomicBool::new(true)))
    }

    /// Closed until [`Admission::admit`].
    pub fn closed() -> Admission {
        Admission(Arc::new(AtomicBool::new(false)))
    }

    pub fn admits(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    pub fn admit(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// This member's peers: where each listens, and whether it is reachable, as this member's
/// transport last saw it — lost when a call to it fails, back when a message from it arrives.
/// Each change is logged once, with the member's term and index.
///
/// The peers are `--initial-cluster`'s at first; a member added at run time is learned
/// ([`Links::learn`]) from the configuration this member applies, or from a peer's status
/// before that (a member behind on the changes must still hear a leader added after it fell
/// behind). A recorded address never changes (an id is never added twice); one that only
/// `--peers` gave ([`Source::Peers`]) yields to the recorded one, and the senders to that peer
/// start again at it ([`Links::moves`]). A member removed from the cluster is forgotten
/// ([`Links::forget`]) and never learned again: its senders stop, so that a long-lived member
/// keeps no sender for every member it ever knew.
pub struct Links {
    peers: RwLock<Peers>,
    /// How many times a peer's address was replaced or forgotten: the senders look again when
    /// it changes.
    moves: AtomicU64,
}

#[derive(Default)]
struct Peers {
    links: BTreeMap<u64, Arc<PeerLink>>,
    /// The members removed from the cluster: a few bytes each, kept so that no later report
    /// of an address (a peer's status, `--peers`) brings one back.
    removed: BTreeSet<u64>,
}

struct PeerLink {
    addr: String,
    source: Source,
    reachable: AtomicBool,
}

/// Where the transport learned a peer's address, the more authoritative last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// `--peers`: the operator's word, which may be wrong.
    Peers,
    /// `--initial-cluster` (the cluster id is folded from it) or an addition the cluster
    /// committed (this member's state, or a peer's applied one).
    Recorded,
}

impl Links {
    /// `peers` (recorded: `--initial-cluster`'s) but `me`; every peer starts out reachable.
    pub fn new(me: u64, peers: &[Peer]) -> Links {
        let links = Links { peers: RwLock::new(Peers::default()), moves: AtomicU64::new(0) };
        for p in peers.iter().filter(|p| p.id != me) {
            links.learn(p.id, &p.peer_addr, Source::Recorded);
        }
        links
    }

    /// Learns that peer `id` listens at `addr`, told by `source`: kept unless the peer is known
    /// already, from a source as authoritative or more, or was removed; an address from a less
    /// authoritative one is replaced (and counted in [`Links::moves`]) when this one differs.
    /// Returns whether the address is new.
    pub fn learn(&self, id: u64, addr: &str, source: Source) -> bool {
        let mut guard = self.peers.write().unwrap_or_else(|p| p.into_inner());
        if guard.removed.contains(&id) {
            return false;
        }
        let peers = &mut guard.links;
        let moved = match peers.get(&id) {
            None => false,
            Some(known) if known.source >= source || known.addr == addr => {
                if known.source < source {
                    let link =
                        PeerLink { addr: known.addr.clone(), source, reachable: AtomicBool::new(true) };
                    peers.insert(id, Arc::new(link));
                }
                return false;
            }
            Some(known) => {
                tracing::warn!(
                    peer = id,
                    was = %known.addr,
                    now = %addr,
                    "the cluster records another address for this peer than --peers gave: sending there"
                );
                true
            }
        };
        let link = PeerLink { addr: addr.to_string(), source, reachable: AtomicBool::new(true) };
        peers.insert(id, Arc::new(link));
        if moved {
            self.moves.fetch_add(1, Ordering::AcqRel);
        }
        true
    }

    /// Forgets peer `id`, removed from the cluster: its senders stop (counted in
    /// [`Links::moves`]), it is no longer one of this member's peers, and it is never learned
    /// again (an id is never added twice).
    pub fn forget(&self, id: u64) {
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        if peers.removed.insert(id) && peers.links.remove(&id).is_some() {
            self.moves.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// How many times a peer's address was replaced or forgotten; a sender compares it with the count it
    /// last saw ([`Links::moved_since`]), and looks up its peers' addresses again when it moved.
    pub fn moves(&self) -> u64 {
        self.moves.load(Ordering::Acquire)
    }

    /// Whether an address was replaced since `seen` was read from [`Links::moves`]; if so,
    /// `seen` reads it again.
    fn moved_since(&self, seen: &mut u64) -> bool {
        let moves = self.moves();
        std::mem::replace(seen, moves) != moves
    }

    /// This member's peers and their addresses, in increasing order of id.
    pub fn peers(&self) -> Vec<Peer> {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        peers.links.iter().map(|(id, l)| Peer { id: *id, peer_addr: l.addr.clone() }).collect()
    }

    /// Where peer `id` listens, if it is one.
    pub fn address(&self, id: u64) -> Option<String> {
        self.link(id).map(|l| l.addr.clone())
    }

    fn link(&self, id: u64) -> Option<Arc<PeerLink>> {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).links.get(&id).cloned()
    }

    /// Why this member (`me`) refuses a connection or stream from `from` before taking any of
    /// its messages, if it does. A member removed from the cluster — `removed` as this member's
    /// state says, or forgotten here — is told so before a stranger is: forgotten, it is no peer,
    /// yet it must learn why it is refused, for it stops then.
    pub(crate) fn refusal_of(&self, from: u64, me: u64, removed: bool) -> Option<Refusal> {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        if removed || peers.removed.contains(&from) {
            Some(Refusal::Removed { from, by: me })
        } else if !peers.links.contains_key(&from) {
            Some(Refusal::Stranger(from))
        } else {
            None
        }
    }

    /// Whether peer `id` is known and was reachable until `reachable` set it so.
    fn set_reachable(&self, id: u64, reachable: bool) -> bool {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        peers.links.get(&id).is_some_and(|l| l.reachable.swap(reachable, Ordering::AcqRel) != reachable)
    }

    fn lost(&self, peer: u64, node: &NodeHandle) {
        if self.set_reachable(peer, false) {
            let s = node.status();
            tracing::info!(member = s.id, term = s.term, index = s.applied.index, peer, "peer unreachable");
        }
    }

    fn heard(&self, peer: u64, node: &NodeHandle) {
        if self.set_reachable(peer, true) {
            let s = node.status();
            tracing::info!(
                member = s.id,
                term = s.term,
                index = s.applied.index,
                peer,
                "peer reachable again"
            );
        }
    }
}

/// Frames of the snapshot stream in flight to the peer.
const SNAPSHOT_FRAMES_IN_FLIGHT: usize = 8;

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("the call ended: {0}")]
    Call(String),
    #[error("cannot encode the raft message: {0}")]
    Encode(String),
}

/// Sends a snapshot: its message, then its stream, read from the prepared read transaction on
/// a blocking thread; returns the stream's size.
async fn send_snapshot(
    client: &PeerClient<tonic::transport::Channel>,
    me: u64,
    cluster_id: u64,
    node: &NodeHandle,
    msg: &Message,
    metrics: &PeerMetrics,
) -> Result<u64, SendError> {
    let token = msg.get_snapshot().data.to_vec();
    let bytes = msg.write_to_bytes().map_err(|e| SendError::Encode(e.to_string()))?;
    metrics.sent(msg.to, message_type_name(msg.get_msg_type()), bytes.len());
    let (tx, rx) = mpsc::channel::<PeerFrame>(SNAPSHOT_FRAMES_IN_FLIGHT);
    let mut c = client.clone();
    let call = tokio::spawn(async move { c.snapshot(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    let snapshots = node.snapshots().clone();
    let producer = tokio::task::spawn_blocking(move || -> Result<u64, SendError> {
        let closed = || SendError::Call("the receiver is gone".into());
        for f in frames(me, cluster_id, bytes) {
            tx.blocking_send(f).map_err(|_| closed())?;
        }
        let mut sent = 0u64;
        snapshots.stream(&token, &mut |frame: Vec<u8>| -> Result<(), SendError> {
            sent += frame.len() as u64;
            for chunk in frame.chunks(CHUNK) {
                let f = PeerFrame { from: me, cluster_id, chunk: chunk.to_vec(), last: false };
                tx.blocking_send(f).map_err(|_| closed())?;
            }
            Ok(())
        })?;
        tx.blocking_send(PeerFrame { from: me, cluster_id, chunk: Vec::new(), last: true })
            .map_err(|_| closed())?;
        Ok(sent)
    });
    let produced = producer.await.map_err(|e| SendError::Call(e.to_string()))?;
    let answered = call.await.map_err(|e| SendError::Call(e.to_string()))?;
    answered.map_err(|s| SendError::Call(s.message().to_string()))?;
    produced
}

/// Asks a peer for its status (for `cluster status`).
pub async fn member_status(addr: &str, timeout: Duration) -> Result<MemberStatus, String> {
    let mut c = dial(addr).map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, c.status(MemberStatusRequest {})).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(s.message().to_string()),
        Err(_) => Err(format!("no answer within {}", humantime::format_duration(timeout))),
    }
}

/// [`member_status`] of `peer` of cluster `cluster_id`: an answer from another member (a stale
/// address) or another cluster is an error naming who answered.
pub async fn peer_status(
    peer: u64,
    addr: &str,
    cluster_id: u64,
    timeout: Duration,
) -> Result<MemberStatus, String> {
    let s = member_status(addr, timeout).await?;
    if s.id != peer || s.cluster_id != cluster_id {
        return Err(format!(
            "answered as member {} of cluster {:016x}, not of {cluster_id:016x}",
            s.id, s.cluster_id
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded address never changes; one from `--peers` yields to a recorded one that
    /// differs (counted as a move, which the senders follow), and a recorded one that agrees
    /// makes it recorded.
    #[test]
    fn a_peers_address_yields_to_the_recorded_one_and_a_recorded_one_never_changes() {
        let first = [Peer { id: 1, peer_addr: "a:1".into() }, Peer { id: 2, peer_addr: "a:2".into() }];
        let links = Links::new(1, &first);
        assert_eq!(links.address(1), None, "not this member itself");
        assert!(!links.learn(2, "b:2", Source::Peers), "--peers does not move a first member");
        assert!(!links.learn(2, "b:2", Source::Recorded), "nor does a record: ids are never reused");
        assert_eq!((links.address(2).as_deref(), links.moves()), (Some("a:2"), 0));

        assert!(links.learn(3, "wrong:3", Source::Peers), "--peers teaches an unknown member");
        assert!(!links.learn(3, "other:3", Source::Peers), "the first --peers address stays");
        assert!(links.learn(3, "c:3", Source::Recorded), "the recorded address replaces it");
        assert_eq!((links.address(3).as_deref(), links.moves()), (Some("c:3"), 1), "counted as a move");
        assert!(!links.learn(3, "wrong:3", Source::Peers), "and --peers does not move it back");

        assert!(links.learn(4, "d:4", Source::Peers));
        assert!(!links.learn(4, "d:4", Source::Recorded), "a record that agrees moves nothing");
        assert!(!links.learn(4, "e:4", Source::Recorded), "and is recorded from then on");
        assert_eq!((links.address(4).as_deref(), links.moves()), (Some("d:4"), 1));
        assert_eq!(links.peers().iter().map(|p| p.id).collect::<Vec<_>>(), [2, 3, 4]);
    }

    #[test]
    fn a_removed_member_is_forgotten_for_good_and_its_senders_told_to_stop() {
        let first = [Peer { id: 1, peer_addr: "a:1".into() }, Peer { id: 2, peer_addr: "a:2".into() }];
        let links = Links::new(1, &first);
        assert!(links.learn(3, "c:3", Source::Recorded));
        let mut seen = links.moves();
        links.forget(3);
        assert!(links.moved_since(&mut seen), "the senders look again, and stop member 3's");
        assert_eq!(links.address(3), None, "a removed member has no address");
        assert!(links.refusal_of(3, 1, false).is_some(), "nor is it a peer");
        assert_eq!(links.peers().iter().map(|p| p.id).collect::<Vec<_>>(), [2]);
        assert!(!links.learn(3, "c:3", Source::Recorded), "a peer's later report does not bring it back");
        assert!(!links.learn(3, "c:3", Source::Peers), "nor does --peers");
        assert_eq!(links.address(3), None);
        links.forget(3);
        links.forget(9);
        assert!(!links.moved_since(&mut seen), "forgetting again, or a member never known, moves nothing");
        assert!(
            !links.learn(9, "i:9", Source::Recorded),
            "but a member forgotten unknown is not learned later"
        );
    }

    #[test]
    fn a_removed_member_is_refused_as_removed_not_as_a_stranger() {
        let first = [Peer { id: 1, peer_addr: "a:1".into() }, Peer { id: 2, peer_addr: "a:2".into() }];
        let links = Links::new(1, &first);
        assert!(links.learn(3, "c:3", Source::Recorded));
        links.forget(3);
        let refused = |from, removed| links.refusal_of(from, 1, removed).map(|why| why.to_string());
        let removed = |from| {
            Some(format!(
                "member {from} was removed from the cluster: member 1's configuration no longer has it"
            ))
        };
        assert_eq!(
            refused(3, false),
            removed(3),
            "forgotten by the transport: told it was removed, so it stops"
        );
        assert_eq!(refused(3, true), removed(3));
        assert_eq!(
            refused(2, true),
            removed(2),
            "removed in the state before the transport forgot it: told it was removed, not let in"
        );
        assert_eq!(refused(2, false), None, "a peer is let in");
        assert!(
            refused(7, false).is_some_and(|why| why.starts_with("member 7 is not a peer of this member")),
            "a member never known is a stranger: {:?}",
            refused(7, false)
        );
    }
}
