//! The raft log, hard state and conf state, kept in redb, with the newest entries cached in
//! memory.
//!
//! raft-rs reads its log through `raft::Storage` (`&self`, synchronous, many small calls). Every
//! change is written into the caller's redb write transaction *and* applied to the in-memory
//! view at once; the caller commits that transaction before anything that depends on it leaves
//! the node (messages, replies), and a failed commit is fatal, so the in-memory view never
//! outlives a state the disk did not reach.
//!
//! Memory is bounded in bytes: the newest entries, up to `cache_bytes` (at least the entries of
//! the transaction in progress), are kept in memory; older ones are read back from redb when
//! raft asks for them (a lagging follower). Terms are kept for the whole log as runs
//! (`first index of a run → term`), a few bytes per term change, so `term()` never reads disk.
//!
//! Invariants:
//! - The log holds exactly the indexes `compacted.index + 1 ..= last`, without gaps, in the
//!   `RAFT_LOG` table; `cache` holds `cache_from ..= last` of them, equal to the table's.
//! - An entry leaves the cache only after the transaction that wrote it committed (see
//!   [`LogStore::committed`]), and entries below `cache_from` are never changed by a write in
//!   progress (a truncating append moves `cache_from` down to its first index), so reading
//!   them from a redb read transaction sees exactly the log.

use std::collections::VecDeque;
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};
use redb::{Database, ReadableTable, WriteTransaction};

use super::schema::*;
use super::StorageError;

/// Position of the last entry no longer in the log (compacted or covered by a snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    pub index: u64,
    pub term: u64,
}

/// A snapshot of the applied state, ready to be streamed to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedSnapshot {
    pub index: u64,
    pub term: u64,
    /// Opaque to raft and storage: names the prepared snapshot to whoever streams it.
    pub token: Vec<u8>,
}

/// What the raft log needs from the layers above to give raft-rs a snapshot: the applied state
/// at some index, prepared for streaming (never encoded here, on the raft thread).
pub trait SnapshotSource: Send + Sync {
    /// A snapshot of the applied state, which must be at `request_index` or later; `Ok(None)`
    /// when it is not applied that far yet.
    fn prepare(&self, request_index: u64) -> Result<Option<PreparedSnapshot>, String>;
}

pub struct LogStore {
    db: Arc<Database>,
    snapshots: Arc<dyn SnapshotSource>,
    hard_state: HardState,
    conf_state: ConfState,
    compacted: Compacted,
    last: u64,
    /// The entries `cache_from ..= last`.
    cache: VecDeque<Entry>,
    cache_from: u64,
    cache_bytes: usize,
    /// Entries are evicted from the cache, oldest first, while it holds more than this.
    cache_limit: usize,
    /// The term of every index of the log: runs of `(first index, term)`, in index order; the
    /// first run starts at `compacted.index` (whose term is `compacted.term`).
    terms: Vec<(u64, u64)>,
}

/// What an entry costs the cache: its payload and a fixed overhead.
fn entry_bytes(e: &Entry) -> usize {
    e.data.len() + e.context.len() + 64
}

impl LogStore {
    /// Loads the log from the data file, caching up to `cache_limit` bytes of its newest
    /// entries. A fresh file gets `voters` as its configuration.
    pub fn load(
        db: Arc<Database>,
        voters: &[u64],
        snapshots: Arc<dyn SnapshotSource>,
        cache_limit: usize,
    ) -> Result<LogStore, StorageError> {
        let txn = db.begin_read().map_err(StorageError::redb)?;
        let state = txn.open_table(RAFT_STATE).map_err(StorageError::redb)?;
        let decode = |key: &str| -> Result<Option<Vec<u8>>, StorageError> {
            Ok(state.get(key).map_err(StorageError::redb)?.map(|v| v.value().to_vec()))
        };
        let hard_state = match decode(RAFT_HARD_STATE)? {
            Some(b) => HardState::parse_from_bytes(&b)
                .map_err(|e| StorageError::Corrupt(format!("table raft_state, key hard_state: {e}")))?,
            None => HardState::default(),
        };
        let conf_state = match decode(RAFT_CONF_STATE)? {
            Some(b) => ConfState::parse_from_bytes(&b)
                .map_err(|e| StorageError::Corrupt(format!("table raft_state, key conf_state: {e}")))?,
            None => ConfState { voters: voters.to_vec(), ..Default::default() },
        };
        let compacted = match decode(RAFT_COMPACTED)? {
            Some(b) if b.len() == 16 => {
                let (i, t) = b.split_at(8);
                Compacted { index: be_u64(i), term: be_u64(t) }
            }
            Some(b) => {
                return Err(StorageError::Corrupt(format!(
                    "table raft_state, key compacted: {} bytes, expected 16",
                    b.len()
                )))
            }
            None => Compacted::default(),
        };
        let mut store = LogStore {
            db: db.clone(),
            snapshots,
            hard_state,
            conf_state,
            compacted,
            last: compacted.index,
            cache: VecDeque::new(),
            cache_from: compacted.index + 1,
            cache_bytes: 0,
            cache_limit,
            terms: vec![(compacted.index, compacted.term)],
        };
        let log = txn.open_table(RAFT_LOG).map_err(StorageError::redb)?;
        for row in log.range(compacted.index + 1..).map_err(StorageError::redb)? {
            let (k, v) = row.map_err(StorageError::redb)?;
            let index = k.value();
            let entry = Entry::parse_from_bytes(v.value())
                .map_err(|e| StorageError::Corrupt(format!("table raft_log, index {index}: {e}")))?;
            let expected = store.last + 1;
            if entry.index != index || index != expected {
                return Err(StorageError::Corrupt(format!(
                    "table raft_log: found entry {} under index {index}, expected {expected} (a gap or a misplaced entry)",
                    entry.index
                )));
            }
            store.push(entry);
            store.evict();
        }
        Ok(store)
    }

    /// Writes the configuration of a fresh store (so it survives a restart) if none is stored.
    pub fn persist_initial(&self, txn: &WriteTransaction) -> Result<(), StorageError> {
        let mut state = txn.open_table(RAFT_STATE).map_err(StorageError::redb)?;
        if state.get(RAFT_CONF_STATE).map_err(StorageError::redb)?.is_none() {
            put_pb(&mut state, RAFT_CONF_STATE, &self.conf_state)?;
        }
        Ok(())
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn compacted(&self) -> Compacted {
        self.compacted
    }

    pub fn last_index_now(&self) -> u64 {
        self.last
    }

    /// Bytes of entries held in memory.
    pub fn cached_bytes(&self) -> usize {
        self.cache_bytes
    }

    /// The transaction holding the latest changes committed: entries it wrote may now leave
    /// the cache (oldest first, while it is over its limit).
    pub fn committed(&mut self) {
        self.evict();
    }

    fn evict(&mut self) {
        while self.cache_bytes > self.cache_limit {
            let Some(e) = self.cache.pop_front() else { break };
            self.cache_bytes -= entry_bytes(&e);
            self.cache_from = e.index + 1;
        }
    }

    fn push(&mut self, e: Entry) {
        if self.terms.last().is_none_or(|&(_, t)| t != e.term) {
            self.terms.push((e.index, e.term));
        }
        self.last = e.index;
        self.cache_bytes += entry_bytes(&e);
        self.cache.push_back(e);
    }

    /// Appends `new` (consecutive entries), replacing any existing entries from `new[0].index` on.
    pub fn append(&mut self, txn: &WriteTransaction, new: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = new.first() else { return Ok(()) };
        if first.index <= self.compacted.index || first.index > self.last + 1 {
            return Err(StorageError::Corrupt(format!(
                "append at index {} outside the log ({}..={})",
                first.index,
                self.compacted.index + 1,
                self.last + 1
            )));
        }
        let mut log = txn.open_table(RAFT_LOG).map_err(StorageError::redb)?;
        if first.index <= self.last {
            log.retain_in(first.index.., |_, _| false).map_err(StorageError::redb)?;
            self.truncate_from(first.index);
        }
        for e in new {
            let bytes = e
                .write_to_bytes()
                .map_err(|err| StorageError::Corrupt(format!("cannot encode entry {}: {err}", e.index)))?;
            log.insert(e.index, bytes.as_slice()).map_err(StorageError::redb)?;
            self.push(e.clone());
        }
        Ok(())
    }

    /// Forgets the entries from `index` on (in memory).
    fn truncate_from(&mut self, index: u64) {
        if index < self.cache_from {
            // Entries below `index` are unchanged (and committed): they may be read from redb.
            self.cache.clear();
            self.cache_bytes = 0;
            self.cache_from = index;
        } else {
            let keep = (index - self.cache_from) as usize;
            for e in self.cache.drain(keep..) {
                self.cache_bytes -= entry_bytes(&e);
            }
        }
        self.last = index - 1;
        while self.terms.len() > 1 && self.terms.last().is_some_and(|&(from, _)| from >= index) {
            self.terms.pop();
        }
    }

    pub fn set_hard_state(&mut self, txn: &WriteTransaction, hs: &HardState) -> Result<(), StorageError> {
        let mut state = txn.open_table(RAFT_STATE).map_err(StorageError::redb)?;
        put_pb(&mut state, RAFT_HARD_STATE, hs)?;
        self.hard_state = hs.clone();
        Ok(())
    }

    pub fn set_commit(&mut self, txn: &WriteTransaction, commit: u64) -> Result<(), StorageError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(txn, &hs)
    }

    /// Drops the whole log in favour of an installed snapshot at `meta`.
    pub fn install_snapshot(
        &mut self,
        txn: &WriteTransaction,
        meta: &SnapshotMetadata,
    ) -> Result<(), StorageError> {
        let mut log = txn.open_table(RAFT_LOG).map_err(StorageError::redb)?;
        log.retain(|_, _| false).map_err(StorageError::redb)?;
        drop(log);
        self.cache.clear();
        self.cache_bytes = 0;
        self.compacted = Compacted { index: meta.index, term: meta.term };
        self.last = meta.index;
        self.cache_from = meta.index + 1;
        self.terms = vec![(meta.index, meta.term)];
        self.conf_state = meta.get_conf_state().clone();
        let mut state = txn.open_table(RAFT_STATE).map_err(StorageError::redb)?;
        put_pb(&mut state, RAFT_CONF_STATE, &self.conf_state)?;
        put_compacted(&mut state, self.compacted)?;
        drop(state);
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        self.set_hard_state(txn, &hs)
    }

    /// Removes the entries up to and including `to` (which must be applied).
    pub fn compact(&mut self, txn: &WriteTransaction, to: u64) -> Result<(), StorageError> {
        if to <= self.compacted.index || to > self.last {
            return Ok(());
        }
        let term = self.entry_term(to).unwrap_or(self.compacted.term);
        let mut log = txn.open_table(RAFT_LOG).map_err(StorageError::redb)?;
        log.retain_in(..=to, |_, _| false).map_err(StorageError::redb)?;
        drop(log);
        while self.cache.front().is_some_and(|e| e.index <= to) {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= entry_bytes(&e);
            }
        }
        self.cache_from = self.cache_from.max(to + 1);
        self.compacted = Compacted { index: to, term };
        // The run holding `to` now starts there.
        let keep = self.terms.partition_point(|&(from, _)| from <= to);
        self.terms.drain(..keep.saturating_sub(1));
        if let Some(run) = self.terms.first_mut() {
            *run = (to, term);
        }
        let mut state = txn.open_table(RAFT_STATE).map_err(StorageError::redb)?;
        put_compacted(&mut state, self.compacted)
    }

    fn entry_term(&self, index: u64) -> Option<u64> {
        if index < self.compacted.index || index > self.last {
            return None;
        }
        let run = self.terms.partition_point(|&(from, _)| from <= index);
        self.terms.get(run.checked_sub(1)?).map(|&(_, t)| t)
    }

    /// Entries `low..high` from redb (all below `cache_from`, so committed and unchanged), up
    /// to `max` bytes (at least one entry). A missing entry is an error: the log has no gaps.
    fn read_stored(&self, low: u64, high: u64, out: &mut Vec<Entry>, max: u64) -> raft::Result<()> {
        let txn = self.db.begin_read().map_err(other)?;
        let log = txn.open_table(RAFT_LOG).map_err(other)?;
        let mut size = 0u64;
        for row in log.range(low..high).map_err(other)? {
            let (k, v) = row.map_err(other)?;
            let e = Entry::parse_from_bytes(v.value()).map_err(other)?;
            if e.index != k.value() || e.index != low + out.len() as u64 {
                return Err(other(format!("raft_log: entry {} found reading index {}", e.index, k.value())));
            }
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max {
                return Ok(());
            }
            out.push(e);
        }
        if out.len() as u64 != high - low {
            return Err(other(format!(
                "raft_log: entries {low}..{high} missing from index {}",
                low + out.len() as u64
            )));
        }
        Ok(())
    }
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn put_pb(
    table: &mut redb::Table<&str, &[u8]>,
    key: &str,
    msg: &impl protobuf::Message,
) -> Result<(), StorageError> {
    let bytes =
        msg.write_to_bytes().map_err(|e| StorageError::Corrupt(format!("cannot encode {key}: {e}")))?;
    table.insert(key, bytes.as_slice()).map_err(StorageError::redb)?;
    Ok(())
}

fn put_compacted(table: &mut redb::Table<&str, &[u8]>, c: Compacted) -> Result<(), StorageError> {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&c.index.to_be_bytes());
    b[8..].copy_from_slice(&c.term.to_be_bytes());
    table.insert(RAFT_COMPACTED, b.as_slice()).map_err(StorageError::redb)?;
    Ok(())
}

fn other(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(RaftStorageError::Other(e.to_string().into()))
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState { hard_state: self.hard_state.clone(), conf_state: self.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.compacted.index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.last + 1 || low > high {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        if low < self.cache_from {
            self.read_stored(low, high.min(self.cache_from), &mut out, max)?;
            if out.len() as u64 != high.min(self.cache_from) - low {
                return Ok(out); // cut by max_size
            }
        }
        if high > self.cache_from {
            let from = (low.max(self.cache_from) - self.cache_from) as usize;
            let to = (high - self.cache_from) as usize;
            out.extend(self.cache.range(from..to).cloned());
        }
        raft::util::limit_size(&mut out, Some(max));
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.compacted.index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        self.entry_term(idx).ok_or(raft::Error::Store(RaftStorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.compacted.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last)
    }

    /// A snapshot of the applied state, prepared by the [`SnapshotSource`]: its index is the
    /// applied index, never below the compaction point, so it always covers what the log no
    /// longer has.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let prepared = match self.snapshots.prepare(request_index).map_err(other)? {
            Some(p) => p,
            None => return Err(raft::Error::Store(RaftStorageError::SnapshotTemporarilyUnavailable)),
        };
        let mut snap = Snapshot { data: prepared.token.into(), ..Default::default() };
        let meta = snap.mut_metadata();
        meta.index = prepared.index;
        meta.term = prepared.term;
        meta.set_conf_state(self.conf_state.clone());
        Ok(snap)
    }
}
