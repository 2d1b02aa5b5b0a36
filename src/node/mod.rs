//! The node driver: one OS thread owns the [`Core`], feeds it ticks from the monotonic clock,
//! client requests and peer messages from one channel, and carries out its actions: messages
//! to the transport, replies to the waiting RPCs.
//!
//! Group commit: while the thread is inside a Ready (one fsync), new requests queue in the
//! channel; the next turn drains them all into raft before asking for the next Ready, so they
//! share one write transaction.
//!
//! Other tasks reach the node through a [`NodeHandle`]: `propose`, `read_index`, and a shared
//! [`Status`] snapshot refreshed every turn (term, leader, role, applied index).

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::eraftpb::Message;
use redb::Database;
use tokio::sync::oneshot;

use crate::core::{Action, Core, CoreError, RequestError, Status, Waiter};
use latch_proto::internal::{Command, Outcome};

/// Most events taken from the channel in one turn, so that ticks keep their pace under load.
const MAX_EVENTS_PER_TURN: usize = 4096;

/// What other tasks ask of the node.
pub enum Event {
    Propose { cmd: Command, reply: oneshot::Sender<Result<Outcome, RequestError>> },
    Read { reply: oneshot::Sender<Result<(), RequestError>> },
    Peer(Box<Message>),
    Unreachable(u64),
    SnapshotSent { peer: u64, ok: bool },
    Stop,
}

/// Where the driver hands outgoing raft messages; implemented by the peer transport.
/// `send` must not block: it runs on the driver thread.
pub trait Outbox: Send + 'static {
    fn send(&mut self, msgs: Vec<Message>);
}

/// A cheap, cloneable way to talk to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    events: mpsc::Sender<Event>,
    status: Arc<Mutex<Status>>,
    db: Arc<Database>,
    pub member_id: u64,
    pub cluster_id: u64,
}

impl NodeHandle {
    /// Proposes a command and waits until it is applied on this node.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.events.send(Event::Propose { cmd, reply }).map_err(|_| RequestError::ShuttingDown)?;
        rx.await.map_err(|_| RequestError::ShuttingDown)?
    }

    /// Waits until a linearizable read may be served from this node's applied state.
    pub async fn read_index(&self) -> Result<(), RequestError> {
        let (reply, rx) = oneshot::channel();
        self.events.send(Event::Read { reply }).map_err(|_| RequestError::ShuttingDown)?;
        rx.await.map_err(|_| RequestError::ShuttingDown)?
    }

    /// Hands the node an event (peer messages, transport reports).
    pub fn send(&self, ev: Event) -> bool {
        self.events.send(ev).is_ok()
    }

    pub fn status(&self) -> Status {
        match self.status.lock() {
            Ok(s) => *s,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    pub fn db(&self) -> &Arc<Database> {
        &self.db
    }
}

/// The running driver thread.
pub struct Node {
    handle: NodeHandle,
    thread: std::thread::JoinHandle<Result<(), CoreError>>,
}

impl Node {
    /// Starts the driver thread. `outbox` is built by `make_outbox` from the node's handle, so
    /// that the transport can report back (unreachable peers, finished snapshots).
    pub fn start(
        core: Core,
        cluster_id: u64,
        tick: Duration,
        make_outbox: impl FnOnce(NodeHandle) -> Box<dyn Outbox>,
    ) -> std::io::Result<Node> {
        let (tx, rx) = mpsc::channel();
        let handle = NodeHandle {
            events: tx,
            status: Arc::new(Mutex::new(core.status())),
            db: core.db().clone(),
            member_id: core.id(),
            cluster_id,
        };
        let outbox = make_outbox(handle.clone());
        let status = handle.status.clone();
        let thread = std::thread::Builder::new()
            .name(format!("latch-node-{}", core.id()))
            .spawn(move || drive(core, rx, outbox, status, tick))?;
        Ok(Node { handle, thread })
    }

    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops the driver, failing whatever still waits, and returns how it ended.
    pub fn stop(self) -> Result<(), CoreError> {
        let _ = self.handle.events.send(Event::Stop);
        match self.thread.join() {
            Ok(r) => r,
            Err(_) => Err(CoreError::Panicked),
        }
    }

    /// Whether the driver thread has ended (by `Stop` or a fatal error).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

#[derive(Default)]
struct Waiters {
    next: Waiter,
    proposals: HashMap<Waiter, oneshot::Sender<Result<Outcome, RequestError>>>,
    reads: HashMap<Waiter, oneshot::Sender<Result<(), RequestError>>>,
}

impl Waiters {
    fn carry_out(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Reply { waiter, result } => {
                    if let Some(tx) = self.proposals.remove(&waiter) {
                        let _ = tx.send(result);
                    }
                }
                Action::ReadReady { waiter } => {
                    if let Some(tx) = self.reads.remove(&waiter) {
                        let _ = tx.send(Ok(()));
                    }
                }
                Action::ReadFailed { waiter, error } => {
                    if let Some(tx) = self.reads.remove(&waiter) {
                        let _ = tx.send(Err(error));
                    }
                }
            }
        }
    }
}

fn drive(
    mut core: Core,
    rx: mpsc::Receiver<Event>,
    mut outbox: Box<dyn Outbox>,
    status: Arc<Mutex<Status>>,
    tick: Duration,
) -> Result<(), CoreError> {
    let mut waiters = Waiters::default();
    let mut next_tick = Instant::now() + tick;
    let result = loop {
        let mut stop = false;
        let mut taken = 0;
        let wait = next_tick.saturating_duration_since(Instant::now());
        let first = match rx.recv_timeout(wait) {
            Ok(ev) => Some(ev),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break Ok(()),
        };
        let mut step_result = Ok(());
        let handle = |ev: Event, core: &mut Core, waiters: &mut Waiters| match ev {
            Event::Propose { cmd, reply } => {
                waiters.next += 1;
                waiters.proposals.insert(waiters.next, reply);
                core.propose(waiters.next, cmd);
                Ok(false)
            }
            Event::Read { reply } => {
                waiters.next += 1;
                waiters.reads.insert(waiters.next, reply);
                core.read_index(waiters.next);
                Ok(false)
            }
            Event::Peer(msg) => core.step(*msg).map(|_| false),
            Event::Unreachable(peer) => {
                core.report_unreachable(peer);
                Ok(false)
            }
            Event::SnapshotSent { peer, ok } => {
                core.report_snapshot(peer, ok);
                Ok(false)
            }
            Event::Stop => Ok(true),
        };
        if let Some(ev) = first {
            match handle(ev, &mut core, &mut waiters) {
                Ok(s) => stop |= s,
                Err(e) => step_result = Err(e),
            }
            taken += 1;
        }
        while taken < MAX_EVENTS_PER_TURN && !stop && step_result.is_ok() {
            let Ok(ev) = rx.try_recv() else { break };
            match handle(ev, &mut core, &mut waiters) {
                Ok(s) => stop |= s,
                Err(e) => step_result = Err(e),
            }
            taken += 1;
        }
        if let Err(e) = step_result {
            break Err(e);
        }
        if stop {
            break Ok(());
        }
        if Instant::now() >= next_tick {
            core.tick();
            next_tick += tick;
            // After a long stall, don't replay the missed ticks in a burst.
            if next_tick < Instant::now() {
                next_tick = Instant::now() + tick;
            }
        }
        core.flush_reads();
        match core.handle_ready(&mut |msgs| outbox.send(msgs)) {
            Ok(actions) => waiters.carry_out(actions),
            Err(e) => break Err(e),
        }
        if let Ok(mut s) = status.lock() {
            *s = core.status();
        }
    };
    if let Err(e) = &result {
        tracing::error!(error = %e, "node stopped: fatal error");
    }
    waiters.carry_out(core.shut_down());
    result
}
