//! Snapshots on their way out of and into this member, streamed so that no one ever holds a
//! whole state in memory, and nothing is encoded on the raft thread.
//!
//! Out: when raft-rs asks the log for a snapshot ([`SnapshotSource::prepare`], on the raft
//! thread), a redb read transaction is begun — cheap, and it pins one applied state — and kept
//! under a token that travels in the raft message's `data`. Whoever carries the message (the
//! peer transport, the simulator) then [`Snapshots::stream`]s the state from that transaction,
//! off the raft thread, and [`Snapshots::finish`]es it.
//!
//! In: the carrier writes the stream it receives into the [`Inbox`] and hands raft the message
//! with the inbox's token in place of the sender's. When raft installs the snapshot, the core
//! restores the state from the inbox, then removes it.
//!
//! Invariants:
//! - A prepared snapshot is the state of one read transaction, at the `(index, term)` its
//!   metadata names; at most [`MAX_PREPARED`] are kept (the oldest is dropped first, and a
//!   stream of a dropped one fails, which raft treats as a failed snapshot and retries).
//! - The core installs only what the inbox holds under the token raft hands back, and the
//!   restore checks the stream's own position and checksum (see `fsm::snapshot`).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use redb::{Database, ReadTransaction, ReadableDatabase as _};

use crate::fsm::{self, FsmError};
use crate::storage::{PreparedSnapshot, SnapshotSource};

/// Most prepared outgoing snapshots kept at once.
pub const MAX_PREPARED: usize = 4;

/// Where incoming snapshot streams are staged until raft installs them.
pub trait Inbox: Send + Sync {
    /// Stages a new incoming stream; returns where to write it and the token naming it.
    fn create(&self, from: u64, index: u64, term: u64) -> io::Result<(Box<dyn Write + Send>, Vec<u8>)>;
    /// Reads a staged stream back.
    fn open(&self, token: &[u8]) -> io::Result<Box<dyn Read>>;
    /// Forgets a staged stream (installed, or abandoned).
    fn remove(&self, token: &[u8]);
}

struct Prepared {
    txn: Arc<ReadTransaction>,
    index: u64,
    term: u64,
}

/// A member's snapshots, out and in. Shared by the raft log (which prepares them), the core
/// (which installs them) and the carrier of raft messages (which streams them).
pub struct Snapshots {
    db: Arc<Database>,
    inbox: Arc<dyn Inbox>,
    prepared: Mutex<(u64, BTreeMap<u64, Prepared>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {0} is no longer prepared (a newer one replaced it); raft will ask again")]
    Gone(u64),
    #[error("snapshot token is malformed")]
    BadToken,
    #[error(transparent)]
    Fsm(#[from] FsmError),
    #[error("snapshot I/O: {0}")]
    Io(#[from] io::Error),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Snapshots {
    pub fn new(db: Arc<Database>, inbox: Arc<dyn Inbox>) -> Snapshots {
        Snapshots { db, inbox, prepared: Mutex::new((0, BTreeMap::new())) }
    }

    pub fn inbox(&self) -> &Arc<dyn Inbox> {
        &self.inbox
    }

    /// Streams a prepared snapshot as frames (see `fsm::snapshot`) to `out`; an error from
    /// `out` stops the stream and is returned. Runs on the caller's thread: keep it off the
    /// raft thread.
    pub fn stream<E: From<SnapshotError>>(
        &self,
        token: &[u8],
        out: &mut dyn FnMut(Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let id = token_id(token)?;
        // Taken out of the lock: streaming may wait on a slow peer, and the raft thread
        // prepares snapshots under this lock. The snapshot stays prepared (raft may resend it).
        let (txn, index, term) = {
            let guard = lock(&self.prepared);
            let p = guard.1.get(&id).ok_or(SnapshotError::Gone(id))?;
            (p.txn.clone(), p.index, p.term)
        };
        let written = fsm::snapshot::write(&txn, out).map_err(SnapshotError::from)??;
        if (written.index, written.term) != (index, term) {
            return Err(SnapshotError::Fsm(FsmError::Corrupt(format!(
                "prepared snapshot {id} was at index {index} term {term}, streamed {} {}",
                written.index, written.term
            )))
            .into());
        }
        Ok(())
    }

    /// The carrier is done with a prepared snapshot (sent, or given up).
    pub fn finish(&self, token: &[u8]) {
        if let Ok(id) = token_id(token) {
            lock(&self.prepared).1.remove(&id);
        }
    }

    /// Restores the staged snapshot `token` into `txn`, which must be at `(index, term)` with
    /// raft's configuration `conf_state` (encoded).
    pub(crate) fn install(
        &self,
        txn: &redb::WriteTransaction,
        token: &[u8],
        index: u64,
        term: u64,
        conf_state: &[u8],
    ) -> Result<fsm::Applied, SnapshotError> {
        let mut input = io::BufReader::with_capacity(256 * 1024, self.inbox.open(token)?);
        Ok(fsm::snapshot::restore(txn, &mut input, index, term, conf_state)?)
    }
}

impl SnapshotSource for Snapshots {
    fn prepare(&self, request_index: u64) -> Result<Option<PreparedSnapshot>, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let pos = fsm::applied(&txn).map_err(|e| e.to_string())?;
        let conf_state = fsm::conf_state(&txn).map_err(|e| e.to_string())?;
        if pos.index < request_index {
            return Ok(None);
        }
        let mut guard = lock(&self.prepared);
        let (next, prepared) = &mut *guard;
        *next += 1;
        let id = *next;
        prepared.insert(id, Prepared { txn: Arc::new(txn), index: pos.index, term: pos.term });
        while prepared.len() > MAX_PREPARED {
            prepared.pop_first();
        }
        Ok(Some(PreparedSnapshot {
            index: pos.index,
            term: pos.term,
            conf_state,
            token: id.to_be_bytes().to_vec(),
        }))
    }
}

fn token_id(token: &[u8]) -> Result<u64, SnapshotError> {
    Ok(u64::from_be_bytes(<[u8; 8]>::try_from(token).map_err(|_| SnapshotError::BadToken)?))
}

/// A stream staged in memory.
type Staged = Arc<Mutex<Vec<u8>>>;

/// An inbox in memory: for tests and the simulator.
#[derive(Default)]
pub struct MemoryInbox {
    /// The last id handed out, and the staged streams by id.
    staged: Mutex<(u64, BTreeMap<u64, Staged>)>,
}

struct MemoryWriter(Arc<Mutex<Vec<u8>>>);

impl Write for MemoryWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl MemoryInbox {
    /// How many streams are staged.
    pub fn staged(&self) -> usize {
        lock(&self.staged).1.len()
    }
}

impl Inbox for MemoryInbox {
    fn create(&self, _from: u64, _index: u64, _term: u64) -> io::Result<(Box<dyn Write + Send>, Vec<u8>)> {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut guard = lock(&self.staged);
        guard.0 += 1;
        let id = guard.0;
        guard.1.insert(id, buf.clone());
        Ok((Box::new(MemoryWriter(buf)), id.to_be_bytes().to_vec()))
    }

    fn open(&self, token: &[u8]) -> io::Result<Box<dyn Read>> {
        let id = token_id(token).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let guard = lock(&self.staged);
        let buf = guard
            .1
            .get(&id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such staged snapshot"))?;
        let bytes = lock(buf).clone();
        Ok(Box::new(io::Cursor::new(bytes)))
    }

    fn remove(&self, token: &[u8]) {
        if let Ok(id) = token_id(token) {
            lock(&self.staged).1.remove(&id);
        }
    }
}
