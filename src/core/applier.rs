//! The state side of a member: applies committed entries to the state machine, in its own redb
//! file, beside the raft thread (DESIGN.md §2 rule 4, §8). Sans-I/O like the rest of the core:
//! no thread, no clock; the node driver runs it on a thread of its own, the simulator as events
//! of their own.
//!
//! Invariants:
//! - Entries are applied in index order, each at most once: an entry at or below the applied
//!   index (covered by an installed snapshot) is skipped.
//! - Every batch is one redb transaction holding the state it changed and `applied_index`;
//!   commits are made durable lazily (`Durability::None`), every [`Applier::sync_every`]
//!   entries or when the driver asks ([`Applier::sync`]); a durable commit makes every
//!   earlier one durable with it. What a crash loses of the state is replayed from the raft
//!   log, which holds every committed entry above the durable applied index (compaction never
//!   passes it: [`Progress::durable_index`] tells the raft side how far it may go).
//! - An outcome or an event leaves only once the transaction holding it is committed (readers
//!   see it), never before.
//! - A snapshot is installed in a durable transaction of its own, before the raft log records
//!   it, so that a crash between the two leaves a state ahead of the log, which the log then
//!   catches up with (`LogStore::reconcile`), and never a log ahead of its state.

use std::sync::Arc;

use raft::eraftpb::{Entry, EntryType};
use redb::{Database, Durability, ReadableDatabase as _};

use super::snapshots::Snapshots;
use super::{redb_err, CoreError, ReadyObserver};
use crate::fsm::{self, Applied, AppliedCommand};

/// Entries applied between two durable commits, unless the driver syncs earlier.
pub const SYNC_EVERY_ENTRIES: u64 = 5_000;

/// What a batch (or a sync) did, for the raft side.
#[derive(Debug, Default)]
pub struct Progress {
    /// Position after the batch (committed, maybe not yet durable).
    pub applied: Applied,
    /// The applied index as of the last durable commit.
    pub durable_index: u64,
    /// The commands of the batch, in order, with their outcomes and events.
    pub commands: Vec<AppliedCommand>,
    /// The history's size after the batch (`None` when it applied nothing).
    pub history: Option<fsm::HistorySize>,
    /// About how many bytes the commands' answers and events hold
    /// ([`fsm::AppliedCommand::held_bytes`]).
    pub held_bytes: usize,
}

pub struct Applier {
    db: Arc<Database>,
    snapshots: Arc<Snapshots>,
    bounds: fsm::Bounds,
    applied: Applied,
    durable_index: u64,
    sync_every: u64,
}

impl Applier {
    /// The applier of the state in `db` (already initialised by the core), at its durable
    /// position.
    pub fn new(
        db: Arc<Database>,
        snapshots: Arc<Snapshots>,
        bounds: fsm::Bounds,
    ) -> Result<Applier, CoreError> {
        let applied = fsm::applied(&db.begin_read().map_err(redb_err)?)?;
        Ok(Applier {
            db,
            snapshots,
            bounds,
            applied,
            durable_index: applied.index,
            sync_every: SYNC_EVERY_ENTRIES,
        })
    }

    /// Makes a commit durable at least every `n` applied entries.
    pub fn sync_every(mut self, n: u64) -> Applier {
        self.sync_every = n.max(1);
        self
    }

    pub fn applied(&self) -> Applied {
        self.applied
    }

    pub fn durable_index(&self) -> u64 {
        self.durable_index
    }

    /// Whether some applied state is not durable yet.
    pub fn dirty(&self) -> bool {
        self.durable_index < self.applied.index
    }

    /// Applies committed entries (in index order) in one transaction.
    pub fn apply(
        &mut self,
        entries: Vec<Entry>,
        observer: &mut dyn ReadyObserver,
    ) -> Result<Progress, CoreError> {
        Ok(self.apply_some(entries, usize::MAX, observer)?.0)
    }

    /// Applies committed entries (in index order) in one transaction, from the first, until
    /// all are applied or the commands' answers and events the progress holds pass `max_held`
    /// bytes ([`fsm::AppliedCommand::held_bytes`]); returns the entries left for another
    /// transaction. Every member applies every command, and each txn's ranges or delete's
    /// previous values may hold up to `--max-response-bytes`: without the cut, a batch of
    /// thousands held gigabytes until its commit. Where batches end changes no state.
    pub fn apply_some(
        &mut self,
        entries: Vec<Entry>,
        max_held: usize,
        observer: &mut dyn ReadyObserver,
    ) -> Result<(Progress, Vec<Entry>), CoreError> {
        let mut txn = self.db.begin_write().map_err(redb_err)?;
        observer.apply_started();
        let mut commands = Vec::new();
        let mut applied = 0;
        let mut held = 0;
        let mut batch = fsm::Batch::begin(&txn, self.bounds)?;
        let mut entries = entries.into_iter();
        for e in entries.by_ref() {
            if e.index <= self.applied.index {
                continue; // covered by an installed snapshot
            }
            let data: &[u8] = match e.get_entry_type() {
                EntryType::EntryNormal => &e.data,
                // Membership is static (--initial-cluster); a conf change only advances the index.
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => &[],
            };
            applied += 1;
            if let Some(c) = batch.apply_entry(e.index, e.term, data)? {
                held += c.held_bytes();
                commands.push(c);
                if held > max_held {
                    break;
                }
            }
        }
        let rest: Vec<Entry> = entries.collect();
        let history = batch.history();
        let position = batch.finish()?;
        let durable = position.index >= self.durable_index + self.sync_every;
        txn.set_durability(if durable { Durability::Immediate } else { Durability::None })
            .map_err(redb_err)?;
        observer.apply_finished(applied);
        observer.commit_started();
        txn.commit().map_err(redb_err)?;
        observer.commit_finished(0);
        self.applied = position;
        if durable {
            self.durable_index = self.applied.index;
        }
        let progress = Progress {
            applied: self.applied,
            durable_index: self.durable_index,
            commands,
            history,
            held_bytes: held,
        };
        Ok((progress, rest))
    }

    /// Makes everything applied durable (one empty durable commit makes every earlier commit
    /// durable); `None` when it already was.
    pub fn sync(&mut self) -> Result<Option<Progress>, CoreError> {
        if !self.dirty() {
            return Ok(None);
        }
        let mut txn = self.db.begin_write().map_err(redb_err)?;
        txn.set_durability(Durability::Immediate).map_err(redb_err)?;
        txn.commit().map_err(redb_err)?;
        self.durable_index = self.applied.index;
        Ok(Some(Progress {
            applied: self.applied,
            durable_index: self.durable_index,
            commands: Vec::new(),
            history: None,
            held_bytes: 0,
        }))
    }

    /// Replaces the state with the snapshot staged under `token` at `(index, term)`, durably.
    pub fn install(&mut self, token: &[u8], index: u64, term: u64) -> Result<Applied, CoreError> {
        let mut txn = self.db.begin_write().map_err(redb_err)?;
        txn.set_durability(Durability::Immediate).map_err(redb_err)?;
        let applied = self.snapshots.install(&txn, token, index, term)?;
        txn.commit().map_err(redb_err)?;
        self.applied = applied;
        self.durable_index = applied.index;
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use latch_proto::internal::{command::Body, op, Op, Range};
    use prost::Message as _;

    use super::*;
    use crate::core::snapshots::MemoryInbox;
    use crate::fsm::testing::{command, op_put, put, txn, Store};

    fn applier() -> (Arc<Database>, Applier) {
        let db = Arc::new(Store::new().db);
        let snapshots = Arc::new(Snapshots::new(db.clone(), Arc::new(MemoryInbox::default())));
        let applier = Applier::new(db.clone(), snapshots, fsm::Bounds::default()).expect("an applier");
        (db, applier)
    }

    fn entries(bodies: Vec<Body>) -> Vec<Entry> {
        let entry = |(i, body)| {
            let data = command(&format!("r{i}"), body).encode_to_vec();
            Entry { index: i as u64 + 1, term: 1, data: data.into(), ..Default::default() }
        };
        bodies.into_iter().enumerate().map(entry).collect()
    }

    /// Ten 1 KiB keys, then txns that each write a key and read all ten (about 10 KiB held).
    fn workload() -> Vec<Entry> {
        let mut bodies: Vec<_> = (0..10).map(|i| put(&format!("k{i}"), &"v".repeat(1024))).collect();
        for i in 0..6 {
            let all = Op {
                op: Some(op::Op::Range(Range {
                    key: b"k".to_vec(),
                    range_end: b"l".to_vec(),
                    ..Default::default()
                })),
            };
            bodies.push(txn(Vec::new(), vec![op_put(&format!("w{i}"), "x"), all], Vec::new()));
        }
        entries(bodies)
    }

    /// A batch ends once the answers and events it holds pass the bound, after the command
    /// that crossed it; the rest applies in the next transactions to the same state, with the
    /// same outcomes, as one transaction would.
    #[test]
    fn a_batch_ends_where_the_answers_it_holds_pass_the_bound_and_the_rest_applies_alike() {
        let (whole_db, mut whole) = applier();
        let one = whole.apply(workload(), &mut ()).expect("applies");
        assert_eq!(one.commands.len(), 16);

        let (db, mut cut) = applier();
        let mut rest = workload();
        let mut batches = Vec::new();
        while !rest.is_empty() {
            let (progress, left) = cut.apply_some(rest, 25 * 1024, &mut ()).expect("applies");
            batches.push(progress);
            rest = left;
        }
        let sizes: Vec<usize> = batches.iter().map(|p| p.commands.len()).collect();
        assert_eq!(
            sizes,
            [12, 3, 1],
            "the ten puts (their events hold their values) and two txns, then three txns, then the last"
        );
        assert_eq!(cut.applied(), whole.applied(), "the same position");
        let outcomes = |p: &[Progress]| -> Vec<_> {
            p.iter().flat_map(|p| p.commands.iter().map(|c| c.outcome.clone())).collect()
        };
        assert_eq!(outcomes(&batches), outcomes(std::slice::from_ref(&one)), "the same outcomes");
        let hash = |db: &Database| fsm::state_hash(&db.begin_read().expect("reads")).expect("hashes");
        assert_eq!(hash(&db), hash(&whole_db), "the same state");
    }
}
