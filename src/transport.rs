//! The peer transport: raft messages between members over gRPC (`latch.internal.v1.Peer`).
//!
//! Each member keeps one sender task per peer, holding one client stream open and writing the
//! messages the driver hands it, in order. Messages are raft-rs protobuf bytes, cut into
//! chunks of at most [`CHUNK`] bytes. Snapshots go over a call of their own, whose completion is
//! what the sender reports to raft (`SnapshotSent`). A peer that cannot be reached is reported
//! `Unreachable` and its queued messages are dropped: raft retransmits what matters.
//!
//! Every message sent or received is counted in [`PeerMetrics`], by peer and message type,
//! with its encoded size.
//!
//! Both directions consult [`Faults`], the test-only fault injector ([`faults`]): a message to
//! or from a blocked peer is dropped before it is counted, sent or delivered.

pub mod faults;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::config::Peer;
use crate::metrics::{Metrics, PeerMetrics};
use crate::node::{Event, NodeHandle, Outbox};
pub use faults::{Faults, FaultsService};
use latch_proto::internal::peer_client::PeerClient;
use latch_proto::internal::peer_server::{Peer as PeerRpc, PeerServer};
use latch_proto::internal::{MemberStatus, MemberStatusRequest, PeerAck, PeerFrame};

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

/// Reassembles frames into raft messages, checking each frame's cluster; drops the messages of
/// blocked peers.
async fn receive(
    cluster_id: u64,
    mut stream: Streaming<PeerFrame>,
    metrics: &PeerMetrics,
    faults: &Faults,
    mut deliver: impl FnMut(Message) -> bool,
) -> Result<(), Status> {
    let mut buf = Vec::new();
    while let Some(frame) = stream.next().await {
        let frame = frame?;
        if frame.cluster_id != cluster_id {
            return Err(Status::failed_precondition(format!(
                "peer {} belongs to cluster {:016x}, this member to {cluster_id:016x}",
                frame.from, frame.cluster_id
            )));
        }
        buf.extend_from_slice(&frame.chunk);
        if frame.last && faults.blocks(frame.from) {
            buf.clear();
        } else if frame.last {
            let msg = Message::parse_from_bytes(&buf).map_err(|e| {
                Status::invalid_argument(format!("undecodable raft message from peer {}: {e}", frame.from))
            })?;
            metrics.received(frame.from, message_type_name(msg.get_msg_type()), buf.len());
            buf.clear();
            if !deliver(msg) {
                return Err(Status::unavailable("member is shutting down"));
            }
        }
    }
    Ok(())
}

/// The peer service: receives raft messages and answers status queries.
pub struct PeerService {
    node: NodeHandle,
    client_addr: String,
    peer_addr: String,
    metrics: Arc<Metrics>,
    faults: Faults,
}

impl PeerService {
    pub fn new(
        node: NodeHandle,
        client_addr: String,
        peer_addr: String,
        metrics: Arc<Metrics>,
        faults: Faults,
    ) -> PeerServer<PeerService> {
        PeerServer::new(PeerService { node, client_addr, peer_addr, metrics, faults })
            .max_decoding_message_size(MAX_FRAME)
            .max_encoding_message_size(MAX_FRAME)
    }
}

#[tonic::async_trait]
impl PeerRpc for PeerService {
    async fn stream(&self, req: Request<Streaming<PeerFrame>>) -> Result<Response<PeerAck>, Status> {
        let node = self.node.clone();
        receive(node.cluster_id, req.into_inner(), &self.metrics.peer, &self.faults, |m| {
            node.send(Event::Peer(Box::new(m)))
        })
        .await?;
        Ok(Response::new(PeerAck {}))
    }

    async fn snapshot(&self, req: Request<Streaming<PeerFrame>>) -> Result<Response<PeerAck>, Status> {
        self.stream(req).await
    }

    async fn status(&self, _: Request<MemberStatusRequest>) -> Result<Response<MemberStatus>, Status> {
        let s = self.node.status();
        Ok(Response::new(MemberStatus {
            id: s.id,
            client_addr: self.client_addr.clone(),
            peer_addr: self.peer_addr.clone(),
            role: s.role.as_str().to_string(),
            applied_index: s.applied.index,
            commit_index: s.commit_index,
            term: s.term,
            leader: s.leader,
            cluster_id: self.node.cluster_id,
            snapshots_installed: s.snapshots_installed,
        }))
    }
}

/// Sends raft messages to the peers: one queue and task per peer.
pub struct PeerSenders {
    queues: HashMap<u64, mpsc::UnboundedSender<Message>>,
}

impl PeerSenders {
    /// Starts a sender task per peer (other than `me`) on the given runtime.
    pub fn start(
        rt: &tokio::runtime::Handle,
        me: u64,
        peers: &[Peer],
        node: NodeHandle,
        metrics: Arc<Metrics>,
        faults: Faults,
    ) -> PeerSenders {
        let mut queues = HashMap::new();
        for p in peers.iter().filter(|p| p.id != me) {
            let (tx, rx) = mpsc::unbounded_channel();
            queues.insert(p.id, tx);
            rt.spawn(send_loop(me, p.clone(), node.clone(), metrics.clone(), faults.clone(), rx));
        }
        PeerSenders { queues }
    }
}

impl Outbox for PeerSenders {
    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if let Some(q) = self.queues.get(&m.to) {
                let _ = q.send(m);
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
    metrics: Arc<Metrics>,
    faults: Faults,
    mut queue: mpsc::UnboundedReceiver<Message>,
) {
    let cluster_id = node.cluster_id;
    let client = match dial(&peer.peer_addr) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(peer = peer.id, addr = %peer.peer_addr, error = %e, "bad peer address; not sending to it");
            return;
        }
    };
    let mut stream: Option<FrameSink> = None;
    while let Some(msg) = queue.recv().await {
        if faults.blocks(peer.id) {
            // Dropped without a word, as by a partition; a snapshot's call would fail.
            if crate::core::is_snapshot(&msg) {
                node.send(Event::SnapshotSent { peer: peer.id, ok: false });
            }
            continue;
        }
        if crate::core::is_snapshot(&msg) {
            let ok = send_snapshot(&client, me, cluster_id, &msg, &metrics.peer).await;
            if !ok {
                tracing::warn!(peer = peer.id, "sending a snapshot failed");
            }
            node.send(Event::SnapshotSent { peer: peer.id, ok });
            continue;
        }
        let bytes = match msg.write_to_bytes() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a raft message");
                continue;
            }
        };
        metrics.peer.sent(peer.id, message_type_name(msg.get_msg_type()), bytes.len());
        let open = || open_stream(&client, peer.id, node.clone(), metrics.clone());
        let sink = match stream.take() {
            Some(s) if !s.is_closed() => s,
            _ => open(),
        };
        stream = Some(sink.clone());
        if !send_frames(&sink, frames(me, cluster_id, bytes)) {
            // The call ended: drop what is queued; raft will retransmit.
            stream = None;
            while queue.try_recv().is_ok() {}
            node.send(Event::Unreachable(peer.id));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
    peer: u64,
    node: NodeHandle,
    metrics: Arc<Metrics>,
) -> FrameSink {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut c = client.clone();
    tokio::spawn(async move {
        if let Err(e) = c.stream(UnboundedReceiverStream::new(rx)).await {
            tracing::debug!(peer, error = %e, "peer stream ended");
            metrics.peer.unreachable(peer);
            node.send(Event::Unreachable(peer));
        }
    });
    tx
}

async fn send_snapshot(
    client: &PeerClient<tonic::transport::Channel>,
    me: u64,
    cluster_id: u64,
    msg: &Message,
    metrics: &PeerMetrics,
) -> bool {
    let Ok(bytes) = msg.write_to_bytes() else { return false };
    metrics.sent(msg.to, message_type_name(msg.get_msg_type()), bytes.len());
    let (tx, rx) = mpsc::unbounded_channel();
    if !send_frames(&tx, frames(me, cluster_id, bytes)) {
        return false;
    }
    drop(tx);
    let mut c = client.clone();
    let call = tokio::spawn(async move { c.snapshot(UnboundedReceiverStream::new(rx)).await.is_ok() });
    call.await.unwrap_or(false)
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
