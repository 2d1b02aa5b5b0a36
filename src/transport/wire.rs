//! The members' message wire: raft messages over plain TCP on the peer port, framed by length,
//! one connection per member and direction.
//!
//! Why not the gRPC stream: each raft message on it crossed four tokio tasks (the sender task,
//! h2's client connection task, h2's server connection task, the call's handler task) and two
//! HTTP/2 framings before the receiving member's raft thread had it; a 2-core machine running
//! three members spent a third of its CPU in tokio workers, a good part of it on those hops
//! (docs/performance.md, "Peer messages over plain TCP"). etcd's members speak a streaming
//! HTTP/1 protocol of their own and ZooKeeper's a framed TCP one for the same reason. Here the
//! raft thread writes a message straight into the socket when nothing is queued before it (a
//! non-blocking `send`), a sender thread per peer writes whatever could not go at once, and a
//! receiver thread per connection reads frames and hands them to the raft thread: no task and
//! no HTTP/2 in between. Snapshots, `Peer.Status` and the fault injector stay gRPC services on
//! the same port, and so does the old message stream, so a member of an earlier version can
//! still talk to this one; the port tells the two apart by the first bytes of a connection
//! ([`MAGIC`] or HTTP/2's preface, see `sniff`).
//!
//! The protocol: the dialing member sends a hello — [`MAGIC`], then the cluster id and its own
//! member id, each a little-endian `u64`. The receiving member answers [`MAGIC`] and one byte,
//! [`ACCEPTED`], or [`REFUSED`] followed by a frame holding the reason in UTF-8 ([`REMOVED`]
//! instead when its configuration no longer has the dialing member, which then stops). Then the
//! dialing member sends frames — a little-endian `u32` length and that many bytes of one raft
//! message (raft-rs's protobuf encoding) — and nothing else comes back, except, before the
//! receiving member closes the connection for a broken frame, one frame with the reason. A
//! member of an earlier version answers the hello with HTTP/2 (its peer port speaks nothing
//! else): the dialing member then sends to it over the gRPC stream, as that version does, and
//! tries the wire again every minute (the peer may have been upgraded since).
//!
//! Invariants:
//! - A member's messages to a peer reach it over one connection at a time, whole, in the order
//!   its raft thread handed them over, each at most once; a connection that fails is reset
//!   (what its socket still held is discarded) and drops what was queued for it (raft resends
//!   what matters), and the peer is reported unreachable (`Event::Unreachable`). A member
//!   serves one connection per peer: a peer's new connection closes its older one.
//! - The raft thread never waits on a peer: it writes only what the socket takes at once and
//!   queues the rest; a peer's queue holds at most [`QUEUE_BYTES`] besides what the sender
//!   thread is writing (past it, messages are dropped and counted as a failed send).
//! - A receiving member checks, before it hands a message to raft, what the gRPC stream checks:
//!   the cluster id, that the sender is a peer, the message's size against
//!   `--max-peer-message-bytes` (before reading it; its buffer grows as its bytes arrive), that
//!   it decodes, and that it is no snapshot (those come with their stream over their own call);
//!   and drops messages of a blocked peer or before admission ([`Shared::cut_off`]) without a
//!   word.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::Message;
use rustix::net::SendFlags;

use super::{message_type_name, Shared, DROPPED};
use crate::config::Peer;
use crate::node::{Event, NodeHandle, Outbox};

/// The first bytes of a connection on the wire; HTTP/2's preface starts with `PRI * HT`.
pub const MAGIC: [u8; 8] = *b"LATCHRM1";
/// The receiving member's answer to a hello it takes.
pub const ACCEPTED: u8 = 0;
/// Its answer to one it refuses, followed by a frame with the reason.
pub const REFUSED: u8 = 1;
/// Its answer to a member its configuration no longer has (removed from the cluster), followed
/// by a frame with the reason: the dialing member stops (`Event::RemovedBy`).
pub const REMOVED: u8 = 2;
/// Most bytes queued for one peer; past it, messages are dropped (raft resends).
pub const QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// How long dialing a peer, or its answer to the hello, may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one write to a peer may block before the connection is given up: a peer that
/// stopped reading (its process paused, its host gone) is then reported unreachable.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a member waits before dialing a peer again after a failure; doubled after each
/// failure in a row, up to [`REDIAL_AFTER_MAX`].
const REDIAL_AFTER: Duration = Duration::from_millis(50);
const REDIAL_AFTER_MAX: Duration = Duration::from_secs(1);
/// How often a member that sends to a peer over the gRPC stream (a member of an earlier
/// version) tries the wire again: the peer may have been upgraded since.
const RETRY_WIRE_AFTER: Duration = Duration::from_secs(60);
/// How long a connection on the wire may go with what was sent unacknowledged
/// (`TCP_USER_TIMEOUT`), or silent and unanswered to keepalive probes, before the kernel ends
/// it: a peer whose host or network vanished is noticed within about this long, as the gRPC
/// stream's pings noticed it, instead of at TCP's retransmission limit, minutes later.
const SILENT_FOR: Duration = Duration::from_secs(10);
/// Most wire connections a member serves at once (a few per peer are ever needed); past it,
/// new ones are closed at once.
pub const MAX_SERVED: usize = 64;
/// A receiver keeps a buffer this large or smaller between messages; a larger one, grown for
/// a large message, is given back.
const KEEP_BUFFER: usize = 1024 * 1024;

/// One frame: the length, then the bytes.
pub fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + bytes.len());
    append_frame(&mut out, bytes);
    out
}

/// Appends `bytes` as one frame to `out`.
fn append_frame(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The hello a member dialing a peer sends first.
pub fn hello(cluster_id: u64, from: u64) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&cluster_id.to_le_bytes());
    out.extend_from_slice(&from.to_le_bytes());
    out
}

/// Keepalive probes after half of [`SILENT_FOR`] of silence, and [`SILENT_FOR`] as the
/// longest time sent bytes may go unacknowledged.
fn end_when_silent(socket: &TcpStream) -> io::Result<()> {
    use rustix::net::sockopt;
    sockopt::set_socket_keepalive(socket, true)?;
    sockopt::set_tcp_keepidle(socket, SILENT_FOR / 2)?;
    sockopt::set_tcp_keepintvl(socket, SILENT_FOR / 2)?;
    sockopt::set_tcp_keepcnt(socket, 1)?;
    sockopt::set_tcp_user_timeout(socket, SILENT_FOR.as_millis() as u32)?;
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the raft thread and a peer's sender thread share.
struct Link {
    peer: u64,
    /// Where the sender thread dials.
    addr: String,
    state: Mutex<LinkState>,
    wake: Condvar,
    /// The peer answered the hello with HTTP/2: a member of an earlier version, sent to over
    /// the gRPC stream until a later try of the wire is answered ([`RETRY_WIRE_AFTER`]).
    speaks_grpc: AtomicBool,
}

impl Link {
    fn new(peer: u64, addr: &str) -> Link {
        let addr = addr.to_string();
        Link { peer, addr, state: Mutex::default(), wake: Condvar::new(), speaks_grpc: Default::default() }
    }
}

#[derive(Default)]
struct LinkState {
    /// The open connection, once dialed.
    socket: Option<Arc<TcpStream>>,
    /// Bytes the socket did not take yet, in order.
    queued: Vec<u8>,
    /// The sender thread is writing bytes taken from `queued`: nothing may be written before
    /// them.
    writing: bool,
    stopped: bool,
}

impl Link {
    /// Writes `bytes` (whole frames) behind everything handed over before: into the socket at
    /// once if nothing waits and it takes them, else onto the queue for the sender thread.
    fn offer(&self, bytes: Vec<u8>) -> Result<(), ()> {
        let mut s = lock(&self.state);
        if s.stopped {
            return Ok(());
        }
        let mut rest = &bytes[..];
        if let (Some(socket), false, true) = (&s.socket, s.writing, s.queued.is_empty()) {
            // A failure here is the sender thread's to find and report, at its own write.
            if let Ok(n) = rustix::net::send(&**socket, rest, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
                rest = &rest[n..];
            }
            if rest.is_empty() {
                return Ok(());
            }
        }
        if s.queued.len() + rest.len() > QUEUE_BYTES && rest.len() == bytes.len() {
            return Err(());
        }
        s.queued.extend_from_slice(rest);
        drop(s);
        self.wake.notify_one();
        Ok(())
    }

    fn stop(&self) {
        let mut s = lock(&self.state);
        s.stopped = true;
        if let Some(socket) = s.socket.take() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        drop(s);
        self.wake.notify_one();
    }

    /// Forgets the connection and what was queued for it, and resets the connection: closed
    /// with a zero linger, what its socket still holds (perhaps part of a frame) is discarded
    /// and never reaches the peer, so nothing of it can arrive after what goes over the next
    /// connection. The caller holds no other handle of the socket (the close happens when the
    /// last one goes).
    fn forget(&self) {
        let mut s = lock(&self.state);
        if let Some(socket) = s.socket.take() {
            let _ = rustix::net::sockopt::set_socket_linger(&*socket, Some(Duration::ZERO));
        }
        s.queued = Vec::new();
        s.writing = false;
    }
}

/// Sends raft messages to the peers over the wire; snapshots, and every message to a peer that
/// speaks only gRPC, through `grpc` (the snapshot call and the gRPC stream).
pub struct WireSenders {
    links: HashMap<u64, Arc<Link>>,
    /// [`super::Links::moves`] when the links' addresses were last compared with the
    /// transport's.
    moves_seen: u64,
    grpc: super::PeerSenders,
    member_id: u64,
    node: NodeHandle,
    shared: Shared,
}

impl WireSenders {
    /// Starts a sender thread per peer the transport knows ([`super::Links`]), and one for a
    /// peer learned later at its first message; snapshots go through the gRPC senders started
    /// on `rt`.
    pub fn start(
        rt: &tokio::runtime::Handle,
        me: u64,
        node: NodeHandle,
        shared: Shared,
    ) -> io::Result<WireSenders> {
        let grpc = super::PeerSenders::start(rt, me, node.clone(), shared.clone());
        let moves_seen = shared.links.moves();
        let mut senders =
            WireSenders { links: HashMap::new(), moves_seen, grpc, member_id: me, node, shared };
        for p in senders.shared.links.peers() {
            if let Err(e) = senders.spawn(&p) {
                senders.links.values().for_each(|l| l.stop());
                return Err(e);
            }
        }
        Ok(senders)
    }

    /// Starts the sender thread of peer `p`.
    fn spawn(&mut self, p: &Peer) -> io::Result<Arc<Link>> {
        let (me, node, shared) = (self.member_id, self.node.clone(), self.shared.clone());
        let link = Arc::new(Link::new(p.id, &p.peer_addr));
        let (addr, l) = (p.peer_addr.clone(), link.clone());
        let (peer, cluster_id) = (p.id, node.cluster_id);
        let told = node.clone();
        let at = p.peer_addr.clone();
        let lost = move || shared.lost(peer, &at, &node);
        let removed = move || {
            told.send(Event::RemovedBy(peer));
        };
        std::thread::Builder::new().name(format!("latch-peer-{}", p.id)).spawn(move || {
            let reports = Reports { lost: &lost, removed: &removed };
            send_loop(me, cluster_id, &addr, &l, reports, RETRY_WIRE_AFTER)
        })?;
        self.links.insert(p.id, link.clone());
        Ok(link)
    }

    /// Stops the sender threads of peers whose address the transport replaced since; the next
    /// message starts one at the new address.
    fn follow_moves(&mut self) {
        if !self.shared.links.moved_since(&mut self.moves_seen) {
            return;
        }
        let links = &self.shared.links;
        self.links.retain(|id, link| {
            let stays = links.address(*id).is_some_and(|addr| addr == link.addr);
            if !stays {
                link.stop();
            }
            stays
        });
    }

    /// Peer `to`'s link, started now if the transport learned of the peer since.
    fn link(&mut self, to: u64) -> Option<Arc<Link>> {
        if let Some(link) = self.links.get(&to) {
            return Some(link.clone());
        }
        let peer = Peer { id: to, peer_addr: self.shared.links.address(to)? };
        match self.spawn(&peer) {
            Ok(link) => Some(link),
            Err(e) => {
                DROPPED.note(self.member_id, &format!("cannot start the sender thread of peer {to}: {e}"));
                None
            }
        }
    }
}

impl Outbox for WireSenders {
    fn send(&mut self, msgs: Vec<Message>) {
        self.follow_moves();
        let mut batches: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut over_grpc = Vec::new();
        for m in msgs {
            let Some(link) = self.link(m.to) else {
                super::drop_message(&self.node, m.to, &m);
                continue;
            };
            if crate::core::is_snapshot(&m) || link.speaks_grpc.load(Ordering::Acquire) {
                over_grpc.push(m);
                continue;
            }
            if self.shared.cut_off(m.to) {
                // Dropped without a word, as by a partition.
                continue;
            }
            let Some(bytes) = super::encoded(&m, &self.shared.metrics.peer) else { continue };
            append_frame(batches.entry(m.to).or_default(), &bytes);
        }
        if !over_grpc.is_empty() {
            self.grpc.send(over_grpc);
        }
        for (peer, bytes) in batches {
            if let Some(link) = self.links.get(&peer) {
                if link.offer(bytes).is_err() {
                    self.shared.metrics.peer.dropped(peer);
                    DROPPED.note(
                        self.member_id,
                        &format!("messages to peer {peer} dropped: over {QUEUE_BYTES} bytes queued for it"),
                    );
                }
            }
        }
    }
}

impl Drop for WireSenders {
    fn drop(&mut self) {
        for link in self.links.values() {
            link.stop();
        }
    }
}

/// What a peer's sender thread reports: the peer `lost` (a failed dial or write), or this
/// member `removed` (the peer's configuration no longer has it).
struct Reports<'a> {
    lost: &'a dyn Fn(),
    removed: &'a dyn Fn(),
}

/// A peer's sender thread: dials it when there is something to send, then writes what the raft
/// thread queued, until the member stops. `lost` reports a failed dial or write (the peer is
/// unreachable; what was queued is dropped). A peer that answers in HTTP/2 is sent to over the
/// gRPC stream (`speaks_grpc`) and the wire tried again every `retry_wire_after`
/// ([`RETRY_WIRE_AFTER`]).
fn send_loop(
    me: u64,
    cluster_id: u64,
    addr: &str,
    link: &Link,
    reports: Reports,
    retry_wire_after: Duration,
) {
    let mut refusal = String::new();
    let mut redial_after = REDIAL_AFTER;
    let failed = |redial_after: &mut Duration| {
        if !lock(&link.state).stopped {
            (reports.lost)();
            std::thread::sleep(*redial_after);
            *redial_after = (*redial_after * 2).min(REDIAL_AFTER_MAX);
        }
    };
    loop {
        let mut s = lock(&link.state);
        if link.speaks_grpc.load(Ordering::Acquire) {
            s = link.wake.wait_timeout(s, retry_wire_after).unwrap_or_else(PoisonError::into_inner).0;
            // Anything queued meanwhile was handed over before the switch; raft resends it.
            s.queued = Vec::new();
        } else {
            while s.queued.is_empty() && !s.stopped {
                s = link.wake.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
        }
        if s.stopped {
            return;
        }
        let Some(socket) = s.socket.clone() else {
            drop(s);
            match dial(addr, cluster_id, me) {
                Ok(socket) => {
                    refusal.clear();
                    redial_after = REDIAL_AFTER;
                    let mut s = lock(&link.state);
                    if s.stopped {
                        let _ = socket.shutdown(Shutdown::Both);
                        return;
                    }
                    s.socket = Some(Arc::new(socket));
                    drop(s);
                    if link.speaks_grpc.swap(false, Ordering::AcqRel) {
                        tracing::info!(member = me, peer = link.peer, "the peer speaks the message wire now");
                    }
                }
                Err(Dial::SpeaksGrpc) => {
                    if !link.speaks_grpc.swap(true, Ordering::AcqRel) {
                        tracing::info!(
                            member = me,
                            peer = link.peer,
                            "the peer answers in HTTP/2 (an earlier version): sending to it over the gRPC stream"
                        );
                    }
                    link.forget();
                }
                Err(Dial::Removed(why)) => {
                    tracing::error!(member = me, peer = link.peer, reason = %why, "peer says this member was removed");
                    (reports.removed)();
                    link.forget();
                    failed(&mut redial_after);
                }
                Err(e) if link.speaks_grpc.load(Ordering::Acquire) => {
                    // Still an earlier version, or unreachable; the gRPC stream reports that.
                    tracing::debug!(member = me, peer = link.peer, error = %e, "trying the wire again failed");
                }
                Err(e) => {
                    let why = e.to_string();
                    if matches!(e, Dial::Refused(_)) && why != refusal {
                        tracing::warn!(member = me, peer = link.peer, reason = %why, "peer refused this member");
                    } else {
                        tracing::debug!(member = me, peer = link.peer, error = %why, "cannot reach peer");
                    }
                    refusal = why;
                    link.forget();
                    failed(&mut redial_after);
                }
            }
            continue;
        };
        let bytes = std::mem::take(&mut s.queued);
        s.writing = true;
        drop(s);
        match send_all(&socket, &bytes) {
            Ok(()) => lock(&link.state).writing = false,
            Err(e) => {
                // `writing` stays set until the connection is reset: part of a frame may be in
                // the socket, and nothing may follow it there.
                let reason = closing_reason(&socket);
                drop(socket);
                link.forget();
                match reason {
                    Some(why) => {
                        tracing::warn!(member = me, peer = link.peer, reason = %why, "peer closed the connection")
                    }
                    None => {
                        tracing::debug!(member = me, peer = link.peer, error = %e, "peer connection ended")
                    }
                }
                failed(&mut redial_after);
            }
        }
    }
}

/// Why dialing a peer failed.
#[derive(Debug, thiserror::Error)]
enum Dial {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The peer refused the hello, for this reason.
    #[error("{0}")]
    Refused(String),
    /// The peer answered in HTTP/2: a member of an earlier version.
    #[error("the peer does not speak the message wire")]
    SpeaksGrpc,
    /// The peer's configuration no longer has this member: it was removed.
    #[error("{0}")]
    Removed(String),
}

/// Dials a peer and says hello.
fn dial(addr: &str, cluster_id: u64, me: u64) -> Result<TcpStream, Dial> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr} resolves to no address"));
    for a in addr.to_socket_addrs()? {
        let socket = match TcpStream::connect_timeout(&a, DIAL_TIMEOUT) {
            Ok(socket) => socket,
            Err(e) => {
                last = e;
                continue;
            }
        };
        socket.set_nodelay(true)?;
        end_when_silent(&socket)?;
        socket.set_read_timeout(Some(DIAL_TIMEOUT))?;
        socket.set_write_timeout(Some(WRITE_TIMEOUT))?;
        send_all(&socket, &hello(cluster_id, me))?;
        let mut answer = [0u8; 9];
        (&socket).read_exact(&mut answer)?;
        if answer[..8] != MAGIC {
            // HTTP/2's server speaks first with a SETTINGS frame: a 9-byte header of type 4 on
            // stream 0. Anything else is no member of any version.
            if answer[3] == 0x04 && answer[5..9] == [0, 0, 0, 0] {
                return Err(Dial::SpeaksGrpc);
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the peer answered neither the wire nor HTTP/2",
            )
            .into());
        }
        if answer[8] != ACCEPTED {
            let reason = read_frame(&mut &socket, 4096).unwrap_or_else(|_| b"no reason given".to_vec());
            let reason = String::from_utf8_lossy(&reason).into_owned();
            return Err(match answer[8] {
                REMOVED => Dial::Removed(reason),
                _ => Dial::Refused(reason),
            });
        }
        return Ok(socket);
    }
    Err(last.into())
}

/// Writes all of `bytes`, blocking (up to the socket's write timeout for each step); a peer
/// that closed the connection is an error, never a signal.
fn send_all(socket: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match rustix::net::send(socket, bytes, SendFlags::NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The reason a peer sent before closing the connection, if it sent one.
fn closing_reason(socket: &TcpStream) -> Option<String> {
    socket.set_read_timeout(Some(Duration::from_millis(10))).ok()?;
    let reason = read_frame(&mut &*socket, 4096).ok()?;
    Some(String::from_utf8_lossy(&reason).into_owned())
}

/// Reads one frame of at most `max` bytes.
pub fn read_frame(r: &mut impl Read, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes, over {max}"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// Why a connection on the wire was closed (sent to the dialing member before closing), or a
/// call of the gRPC message stream ended: the peer checks, worded once for both.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("peer {from} belongs to cluster {theirs:016x}, this member to {ours:016x}")]
    Cluster { from: u64, theirs: u64, ours: u64 },
    #[error(
        "member {0} is not a peer of this member (neither --initial-cluster's, --peers', nor added \
         to the cluster as far as this member knows)"
    )]
    Stranger(u64),
    #[error("a raft message from peer {from} is over {max} bytes (--max-peer-message-bytes)")]
    TooLarge { from: u64, max: usize },
    #[error("undecodable raft message from peer {from}: {why}")]
    Undecodable { from: u64, why: String },
    #[error("a raft message from member {sender} on peer {from}'s connection")]
    WrongSender { from: u64, sender: u64 },
    #[error("a snapshot from peer {0} outside a snapshot call")]
    Snapshot(u64),
    #[error(
        "peer {from} sent member {me} a raft message for member {to}: it dials member {to} at this \
         member's address (a wrong address given to `latch cluster add`?)"
    )]
    WrongRecipient { from: u64, to: u64, me: u64 },
    #[error("member {from} was removed from the cluster: member {by}'s configuration no longer has it")]
    Removed { from: u64, by: u64 },
}

/// Serves one connection whose first bytes were [`MAGIC`], on the calling thread, until it
/// ends, the member stops, or the peer breaks the protocol (the reason is sent back and logged).
/// `hello_taken` is told which peer the connection is from once its hello is taken; no message
/// is handed to raft once `live` is false (a newer connection of the peer, or the member
/// stopping, closed this one: what the socket or the reader still hold is dropped).
pub fn serve(
    socket: TcpStream,
    node: &NodeHandle,
    shared: &Shared,
    max_message: usize,
    hello_taken: &dyn Fn(u64),
    live: &AtomicBool,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, &socket);
    let mut hello = [0u8; 24];
    if end_when_silent(&socket).is_err() || socket.set_read_timeout(Some(DIAL_TIMEOUT)).is_err() {
        return;
    }
    if reader.read_exact(&mut hello).is_err() || hello[..8] != MAGIC {
        return;
    }
    let _ = socket.set_read_timeout(None);
    let cluster = u64::from_le_bytes(hello[8..16].try_into().unwrap_or_default());
    let from = u64::from_le_bytes(hello[16..24].try_into().unwrap_or_default());
    let refused = if cluster != node.cluster_id {
        Some(Refusal::Cluster { from, theirs: cluster, ours: node.cluster_id })
    } else {
        shared.links.refusal_of(from, node.member_id, node.has_removed(from))
    };
    if let Some(why) = refused {
        let mut answer = MAGIC.to_vec();
        answer.push(if matches!(why, Refusal::Removed { .. }) { REMOVED } else { REFUSED });
        answer.extend(frame(why.to_string().as_bytes()));
        let _ = (&socket).write_all(&answer);
        tracing::warn!(member = node.member_id, peer = from, reason = %why, "refused a peer connection");
        return;
    }
    let mut answer = MAGIC.to_vec();
    answer.push(ACCEPTED);
    if (&socket).write_all(&answer).is_err() {
        return;
    }
    hello_taken(from);
    if let Err(why) = receive(&mut reader, from, node, shared, max_message, live) {
        let _ = (&socket).write_all(&frame(why.to_string().as_bytes()));
        tracing::warn!(member = node.member_id, peer = from, reason = %why, "closed a peer connection");
    }
    let _ = socket.shutdown(Shutdown::Both);
}

/// Refuses a raft message on peer `from`'s connection (or stream) to member `me` that another
/// member sent, or that is meant for another member: the peer dials that member at `me`'s
/// address.
pub(super) fn check_addressed(msg: &Message, from: u64, me: u64) -> Result<(), Refusal> {
    if msg.from != from {
        return Err(Refusal::WrongSender { from, sender: msg.from });
    }
    if msg.to != me {
        return Err(Refusal::WrongRecipient { from, to: msg.to, me });
    }
    Ok(())
}

/// Hands each message read from `from`'s connection to raft until it ends.
fn receive(
    reader: &mut impl Read,
    from: u64,
    node: &NodeHandle,
    shared: &Shared,
    max_message: usize,
    live: &AtomicBool,
) -> Result<(), Refusal> {
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 4];
        if reader.read_exact(&mut len).is_err() {
            return Ok(());
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > max_message {
            return Err(Refusal::TooLarge { from, max: max_message });
        }
        // Read as it arrives: a length alone does not make the member allocate it.
        buf.clear();
        let read = reader.by_ref().take(len as u64).read_to_end(&mut buf);
        if read.is_err() || buf.len() < len || !node.is_running() {
            return Ok(());
        }
        let parsed = (!shared.cut_off(from)).then(|| Message::parse_from_bytes(&buf));
        if buf.capacity() > KEEP_BUFFER {
            buf = Vec::new();
        }
        let Some(parsed) = parsed else { continue };
        let msg = parsed.map_err(|e| Refusal::Undecodable { from, why: e.to_string() })?;
        check_addressed(&msg, from, node.member_id)?;
        if node.has_removed(from) {
            // Closed with the reason; its next hello is answered [`REMOVED`].
            return Err(Refusal::Removed { from, by: node.member_id });
        }
        if crate::core::is_snapshot(&msg) {
            return Err(Refusal::Snapshot(from));
        }
        if !live.load(Ordering::Acquire) {
            return Ok(());
        }
        shared.metrics.peer.received(from, message_type_name(msg.get_msg_type()), len);
        shared.links.heard(from, node);
        if !super::deliver_or_drop(node, &shared.metrics.peer, msg, len) {
            return Ok(());
        }
    }
}

/// The wire connections a member serves, each on a thread of its own: at most [`MAX_SERVED`],
/// and once its hello is taken, one per peer (a peer's new connection closes its older one,
/// which a peer gave up on). All are closed when the member stops, so that its peers find out
/// at their next write and dial again.
#[derive(Default)]
pub struct Served {
    state: Mutex<ServedState>,
}

#[derive(Default)]
struct ServedState {
    /// Every connection served, by a number of its own (larger for later ones), with whether
    /// its messages still go to raft.
    open: HashMap<u64, (TcpStream, Arc<AtomicBool>)>,
    /// The newest connection each peer's hello came on.
    peers: HashMap<u64, u64>,
    next: u64,
    closed: bool,
}

impl Served {
    /// Serves `socket` ([`serve`]) on a new thread.
    pub fn start(self: &Arc<Self>, socket: TcpStream, node: NodeHandle, shared: Shared, max_message: usize) {
        let live = Arc::new(AtomicBool::new(true));
        let id = {
            let mut s = lock(&self.state);
            if s.closed || s.open.len() >= MAX_SERVED {
                let served = s.open.len();
                drop(s);
                if served >= MAX_SERVED {
                    tracing::warn!(
                        member = node.member_id,
                        "a peer connection closed at once: {MAX_SERVED} are served already"
                    );
                }
                let _ = socket.shutdown(Shutdown::Both);
                return;
            }
            let Ok(copy) = socket.try_clone() else { return };
            let id = s.next;
            s.next += 1;
            s.open.insert(id, (copy, live.clone()));
            id
        };
        let served = self.clone();
        let spawned = std::thread::Builder::new().name("latch-peer-in".into()).spawn(move || {
            serve(socket, &node, &shared, max_message, &|peer| served.taken(peer, id), &live);
            let mut s = lock(&served.state);
            s.open.remove(&id);
            s.peers.retain(|_, conn| *conn != id);
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a thread for a peer connection");
            if let Some((socket, _)) = lock(&self.state).open.remove(&id) {
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
    }

    /// `peer`'s hello came on connection `id`: of it and the peer's other connection, if any,
    /// the older (the one accepted first, which the peer gave up on) is closed.
    fn taken(&self, peer: u64, id: u64) {
        let mut s = lock(&self.state);
        let older = match s.peers.get(&peer).copied() {
            Some(current) if current > id => id,
            Some(current) => {
                s.peers.insert(peer, id);
                current
            }
            None => {
                s.peers.insert(peer, id);
                return;
            }
        };
        if let Some((socket, live)) = s.open.get(&older) {
            live.store(false, Ordering::Release);
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Closes every connection served, and any started after.
    pub fn close_all(&self) {
        let mut s = lock(&self.state);
        s.closed = true;
        for (_, (socket, live)) in s.open.drain() {
            live.store(false, Ordering::Release);
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// A peer that accepts one connection, reads its hello and answers `answer`; hands back the
    /// hello and the socket.
    fn fake_peer(answer: Vec<u8>) -> (String, mpsc::Receiver<([u8; 24], TcpStream)>) {
        fake_peer_answering(vec![answer])
    }

    /// A peer that accepts a connection per answer in turn, reads its hello and answers it.
    fn fake_peer_answering(answers: Vec<Vec<u8>>) -> (String, mpsc::Receiver<([u8; 24], TcpStream)>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a port for the fake peer");
        let addr = listener.local_addr().expect("its address").to_string();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for answer in answers {
                let (mut socket, _) = listener.accept().expect("the link dials");
                let mut hello = [0u8; 24];
                socket.read_exact(&mut hello).expect("a hello");
                socket.write_all(&answer).expect("the answer goes out");
                let _ = tx.send((hello, socket));
            }
        });
        (addr, rx)
    }

    /// What a member of an earlier version's peer port answers to the hello: HTTP/2's SETTINGS
    /// frame (captured from one), whose first byte is the wire's ACCEPTED.
    const SETTINGS: &[u8] = b"\x00\x00\x18\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x10";

    /// The receiving member's answer to a hello: the magic, then `status`.
    fn answer(status: u8) -> Vec<u8> {
        let mut answer = MAGIC.to_vec();
        answer.push(status);
        answer
    }

    /// A link of member 1 of cluster 7 to peer 2 at `addr`, with its sender thread; the receiver
    /// hears of every `lost`.
    fn link_to(addr: String) -> (Arc<Link>, mpsc::Receiver<()>) {
        let link = Arc::new(Link::new(2, &addr));
        let (lost_tx, lost) = mpsc::channel();
        let l = link.clone();
        let lost_to = move || {
            let _ = lost_tx.send(());
        };
        std::thread::spawn(move || {
            let reports = Reports { lost: &lost_to, removed: &|| {} };
            send_loop(1, 7, &addr, &l, reports, Duration::from_millis(20))
        });
        (link, lost)
    }

    /// Frame `i` of the ordering test: 1 KiB, numbered, filled with its own byte.
    fn numbered(i: u32) -> Vec<u8> {
        let mut body = vec![(i % 251) as u8; 1024];
        body[..4].copy_from_slice(&i.to_le_bytes());
        frame(&body)
    }

    #[test]
    fn messages_reach_the_peer_whole_and_in_order_and_handing_them_over_never_waits_for_it() {
        let (addr, accepted) = fake_peer(answer(ACCEPTED));
        let (link, lost) = link_to(addr);
        assert!(link.offer(numbered(0)).is_ok());
        let (hello_sent, socket) =
            accepted.recv_timeout(Duration::from_secs(10)).expect("the link dialed the peer");
        assert_eq!(hello_sent.to_vec(), hello(7, 1), "the hello names the cluster and the member");
        // 32 MiB of numbered frames, far more than the two sockets' buffers hold, handed over
        // first while the peer reads nothing (onto the queue, once the socket is full), then
        // while it reads (into the socket directly whenever nothing waits before them).
        const FRAMES: u32 = 32 * 1024;
        let (offered_tx, offered) = mpsc::channel();
        let offering = link.clone();
        std::thread::spawn(move || {
            for i in 1..FRAMES {
                assert!(offering.offer(numbered(i)).is_ok(), "32 MiB is under the queue's bound");
                if i == FRAMES / 4 {
                    let _ = offered_tx.send(());
                }
            }
        });
        offered
            .recv_timeout(Duration::from_secs(10))
            .expect("handing messages over never waits for the peer to read");
        let mut reader = BufReader::new(&socket);
        for i in 0..FRAMES {
            let body = read_frame(&mut reader, 4096).expect("every frame arrives whole");
            assert_eq!(frame(&body), numbered(i), "frame {i} arrives whole, in the order handed over");
        }
        assert!(lost.try_recv().is_err(), "nothing was lost");
        link.stop();
    }

    #[test]
    fn a_refused_hello_fails_the_dial_with_the_peers_reason() {
        let mut refusal = answer(REFUSED);
        refusal.extend(frame(b"member 1 is not a peer of this member (--initial-cluster)"));
        let (addr, _accepted) = fake_peer(refusal);
        let e = dial(&addr, 7, 1).expect_err("the peer refused");
        assert!(matches!(e, Dial::Refused(_)), "a refusal, not {e:?}");
        assert!(e.to_string().contains("not a peer"), "the peer's reason comes back: {e}");
    }

    #[test]
    fn a_hello_answered_removed_tells_the_member_it_was_removed() {
        let mut removed = answer(REMOVED);
        removed.extend(frame(
            b"member 1 was removed from the cluster: member 2's configuration no longer has it",
        ));
        let (addr, _accepted) = fake_peer(removed.clone());
        let e = dial(&addr, 7, 1).expect_err("the peer refused");
        assert!(matches!(e, Dial::Removed(_)), "told removed, not {e:?}");
        assert!(e.to_string().contains("was removed from the cluster"), "the peer's reason comes back: {e}");

        // The sender thread reports it, as `Event::RemovedBy`.
        let (addr, _accepted) = fake_peer(removed);
        let link = Arc::new(Link::new(2, &addr));
        let (told_tx, told) = mpsc::channel();
        let l = link.clone();
        std::thread::spawn(move || {
            let tell = move || {
                let _ = told_tx.send(());
            };
            let reports = Reports { lost: &|| {}, removed: &tell };
            send_loop(1, 7, &addr, &l, reports, Duration::from_millis(20))
        });
        assert!(link.offer(frame(b"a message")).is_ok());
        told.recv_timeout(Duration::from_secs(5)).expect("the member is told it was removed");
        link.stop();
    }

    #[test]
    fn a_message_for_another_member_or_from_another_member_is_refused_naming_both() {
        let msg = |from, to| Message { from, to, ..Message::default() };
        assert!(check_addressed(&msg(2, 1), 2, 1).is_ok(), "from the connection's peer, to this member");
        let wrong_sender = check_addressed(&msg(3, 1), 2, 1).map_err(|why| why.to_string());
        assert_eq!(wrong_sender, Err("a raft message from member 3 on peer 2's connection".to_string()));
        let wrong_recipient = check_addressed(&msg(2, 4), 2, 1).map_err(|why| why.to_string());
        assert_eq!(
            wrong_recipient,
            Err("peer 2 sent member 1 a raft message for member 4: it dials member 4 at this member's \
                 address (a wrong address given to `latch cluster add`?)"
                .to_string()),
            "the operator is told which member's address is wrong"
        );
    }

    #[test]
    fn a_connection_that_breaks_reports_the_peer_lost() {
        let (addr, accepted) = fake_peer(answer(ACCEPTED));
        let (link, lost) = link_to(addr);
        assert!(link.offer(frame(b"first")).is_ok());
        let (_, socket) = accepted.recv_timeout(Duration::from_secs(10)).expect("the link dialed the peer");
        drop(socket);
        // Writes into the closed connection fail within a few (the first may still be taken).
        let mut reported = false;
        for _ in 0..1000 {
            let _ = link.offer(frame(&[0u8; 64 * 1024]));
            if lost.recv_timeout(Duration::from_millis(10)).is_ok() {
                reported = true;
                break;
            }
        }
        assert!(reported, "a broken connection reports the peer lost");
        link.stop();
    }

    #[test]
    fn a_peer_that_answers_in_http2_is_sent_to_over_grpc_and_the_wire_tried_again_later() {
        let (addr, accepted) = fake_peer_answering(vec![SETTINGS.to_vec(), answer(ACCEPTED)]);
        let (link, lost) = link_to(addr);
        assert!(link.offer(frame(b"first")).is_ok());
        accepted.recv_timeout(Duration::from_secs(10)).expect("the link dialed the peer");
        let speaks_grpc = || link.speaks_grpc.load(Ordering::Acquire);
        for _ in 0..1000 {
            if speaks_grpc() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(speaks_grpc(), "the link turned to gRPC");
        assert!(lost.try_recv().is_err(), "a peer that speaks gRPC is not unreachable");
        // The peer upgraded: the next try (20 ms later here) finds the wire.
        accepted.recv_timeout(Duration::from_secs(10)).expect("the link tried the wire again");
        for _ in 0..1000 {
            if !speaks_grpc() && lock(&link.state).socket.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!speaks_grpc(), "the link is back on the wire");
        assert!(lock(&link.state).socket.is_some(), "over the new connection");
        link.stop();
    }

    #[test]
    fn an_answer_in_neither_the_wire_nor_http2_is_an_error_not_a_switch_to_grpc() {
        let (addr, _accepted) = fake_peer(b"SSH-2.0-x".to_vec());
        let e = dial(&addr, 7, 1).expect_err("no member answers that");
        assert!(matches!(e, Dial::Io(ref io) if io.kind() == io::ErrorKind::InvalidData), "{e:?}");
    }
}
