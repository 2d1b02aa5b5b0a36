//! The raft log, hard state and conf state, kept in redb and mirrored in memory.
//!
//! raft-rs reads its log through `raft::Storage` (`&self`, synchronous, many small calls), so
//! reads are served from the in-memory mirror; every change is written into the caller's redb
//! write transaction *and* applied to the mirror at once. The caller commits that transaction
//! before anything that depends on it leaves the node (messages, replies); a failed commit is
//! fatal, so the mirror never outlives a state the disk did not reach.
//!
//! Invariants: `entries` holds exactly the indexes `compacted.index + 1 ..= last_index()`, in
//! order, without gaps; the `RAFT_LOG` table holds the same indexes.

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

pub struct LogStore {
    /// The data file, for building snapshots of the applied state on demand.
    db: Arc<Database>,
    hard_state: HardState,
    conf_state: ConfState,
    compacted: Compacted,
    entries: Vec<Entry>,
}

impl LogStore {
    /// Loads the log from the data file. A fresh file gets `voters` as its configuration.
    pub fn load(db: Arc<Database>, voters: &[u64]) -> Result<LogStore, StorageError> {
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
        let log = txn.open_table(RAFT_LOG).map_err(StorageError::redb)?;
        let mut entries = Vec::new();
        for row in log.range(compacted.index + 1..).map_err(StorageError::redb)? {
            let (k, v) = row.map_err(StorageError::redb)?;
            let index = k.value();
            let entry = Entry::parse_from_bytes(v.value())
                .map_err(|e| StorageError::Corrupt(format!("table raft_log, index {index}: {e}")))?;
            let expected = compacted.index + 1 + entries.len() as u64;
            if entry.index != index || index != expected {
                return Err(StorageError::Corrupt(format!(
                    "table raft_log: found entry {} under index {index}, expected {expected} (a gap or a misplaced entry)",
                    entry.index
                )));
            }
            entries.push(entry);
        }
        Ok(LogStore { db, hard_state, conf_state, compacted, entries })
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
        self.compacted.index + self.entries.len() as u64
    }

    /// Appends `new` (consecutive entries), replacing any existing entries from `new[0].index` on.
    pub fn append(&mut self, txn: &WriteTransaction, new: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = new.first() else { return Ok(()) };
        if first.index <= self.compacted.index || first.index > self.last_index_now() + 1 {
            return Err(StorageError::Corrupt(format!(
                "append at index {} outside the log ({}..={})",
                first.index,
                self.compacted.index + 1,
                self.last_index_now() + 1
            )));
        }
        let mut log = txn.open_table(RAFT_LOG).map_err(StorageError::redb)?;
        let keep = (first.index - self.compacted.index - 1) as usize;
        if keep < self.entries.len() {
            log.retain_in(first.index.., |_, _| false).map_err(StorageError::redb)?;
            self.entries.truncate(keep);
        }
        for e in new {
            let bytes = e
                .write_to_bytes()
                .map_err(|err| StorageError::Corrupt(format!("cannot encode entry {}: {err}", e.index)))?;
            log.insert(e.index, bytes.as_slice()).map_err(StorageError::redb)?;
        }
        self.entries.extend_from_slice(new);
        Ok(())
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
        self.entries.clear();
        self.compacted = Compacted { index: meta.index, term: meta.term };
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
        if to <= self.compacted.index || to > self.last_index_now() {
            return Ok(());
        }
        let term = self.entry_term(to).unwrap_or(self.compacted.term);
        let mut log = txn.open_table(RAFT_LOG).map_err(StorageError::redb)?;
        log.retain_in(..=to, |_, _| false).map_err(StorageError::redb)?;
        drop(log);
        let n = (to - self.compacted.index) as usize;
        self.entries.drain(..n);
        self.compacted = Compacted { index: to, term };
        let mut state = txn.open_table(RAFT_STATE).map_err(StorageError::redb)?;
        put_compacted(&mut state, self.compacted)
    }

    fn entry_term(&self, index: u64) -> Option<u64> {
        if index == self.compacted.index {
            return Some(self.compacted.term);
        }
        let offset = index.checked_sub(self.compacted.index + 1)? as usize;
        self.entries.get(offset).map(|e| e.term)
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
        if high > self.last_index_now() + 1 || low > high {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let from = (low - self.compacted.index - 1) as usize;
        let to = (high - self.compacted.index - 1) as usize;
        let mut out = self.entries[from..to].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
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
        Ok(self.last_index_now())
    }

    /// A snapshot of the applied state as it is now; its index is the applied index, which is
    /// never below the compaction point, so it always covers what the log no longer has.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let txn = self.db.begin_read().map_err(other)?;
        let applied = crate::fsm::applied(&txn).map_err(other)?;
        if applied.index < request_index {
            return Err(raft::Error::Store(RaftStorageError::SnapshotTemporarilyUnavailable));
        }
        let data = crate::fsm::snapshot(&txn).map_err(other)?;
        let mut snap = Snapshot { data: data.into(), ..Default::default() };
        let meta = snap.mut_metadata();
        meta.index = applied.index;
        meta.term = applied.term;
        meta.set_conf_state(self.conf_state.clone());
        Ok(snap)
    }
}
