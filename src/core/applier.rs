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
//!   entries or when the driver asks ([`Applier::sync`], [`Applier::sync_behind`]); a durable
//!   commit makes every earlier one durable with it. What a crash loses of the state is
//!   replayed from the raft log, which holds every committed entry above the durable applied
//!   index (compaction never passes it: [`Progress::durable_index`] tells the raft side how far
//!   it may go).
//! - A durable commit returns before its fsync has run ([`crate::storage::sync_behind`]): the
//!   durable applied index moves to it only once [`Syncs::completed`] says the fsync has,
//!   never at the commit.
//! - An outcome or an event leaves only once the transaction holding it is committed (readers
//!   see it), never before.
//! - A snapshot is installed in a durable transaction of its own, before the raft log records
//!   it, so that a crash between the two leaves a state ahead of the log, which the log then
//!   catches up with (`LogStore::reconcile`), and never a log ahead of its state.

use std::sync::Arc;

use raft::eraftpb::{Entry, EntryType};
use redb::{Database, Durability, ReadableDatabase as _};

use super::snapshots::Snapshots;
use super::{fsync_err, redb_err, CoreError, ReadyObserver};
use crate::fsm::{self, Applied, AppliedCommand};
use crate::storage::Syncs;

/// What [`Applier::apply_some`]'s transactions did so far.
struct Applying {
    commands: Vec<AppliedCommand>,
    held: usize,
    history: Option<fsm::HistorySize>,
}

/// What is done with the state at a check point (`state_check`): the node hashes it on a thread
/// of its own, the simulator at once.
pub trait PointHasher: Send + Sync {
    /// `state` is the state right after the check point at `index` applied.
    fn hash(&self, index: u64, state: redb::ReadTransaction);

    /// The state was replaced by a snapshot at `index`: what its peers count of its hashes
    /// changes (`state_check::copied`).
    fn installed(&self, _index: u64) {}
}

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
    syncs: Arc<Syncs>,
    snapshots: Arc<Snapshots>,
    bounds: fsm::Bounds,
    applied: Applied,
    /// The applied index as of the last durable commit whose fsync has completed.
    durable_index: u64,
    /// The applied index as of the last durable commit, its fsync completed or not
    /// (`durable_index <= committed_durable <= applied.index`).
    committed_durable: u64,
    /// The last durable commit whose fsync may not have completed: its fsync's generation
    /// ([`Syncs::requested`]) and the applied index it makes durable.
    behind: Option<(u64, u64)>,
    sync_every: u64,
    /// Hashes the state at every check point; none: check points are applied like any entry.
    hasher: Option<Arc<dyn PointHasher>>,
}

impl Applier {
    /// The applier of the state in `db` (already initialised by the core), at its durable
    /// position.
    pub fn new(
        db: Arc<Database>,
        syncs: Arc<Syncs>,
        snapshots: Arc<Snapshots>,
        bounds: fsm::Bounds,
    ) -> Result<Applier, CoreError> {
        let applied = fsm::applied(&db.begin_read().map_err(redb_err)?)?;
        Ok(Applier {
            db,
            syncs,
            snapshots,
            bounds,
            applied,
            durable_index: applied.index,
            committed_durable: applied.index,
            behind: None,
            sync_every: SYNC_EVERY_ENTRIES,
            hasher: None,
        })
    }

    /// Makes a commit durable at least every `n` applied entries.
    pub fn sync_every(mut self, n: u64) -> Applier {
        self.sync_every = n.max(1);
        self
    }

    /// Has `hasher` hash the state at every check point.
    pub fn hashing_points(mut self, hasher: Arc<dyn PointHasher>) -> Applier {
        self.hasher = Some(hasher);
        self
    }

    pub fn applied(&self) -> Applied {
        self.applied
    }

    pub fn durable_index(&self) -> u64 {
        self.durable_index
    }

    /// Whether some applied state is not durable yet (not committed durably, or its fsync not
    /// known to have completed).
    pub fn dirty(&self) -> bool {
        self.durable_index < self.applied.index
    }

    /// The applied index as of the last durable commit, its fsync completed or not.
    pub fn durably_committed(&self) -> u64 {
        self.committed_durable
    }

    /// Moves the durable index to the last durable commit if its fsync has completed; the
    /// fsync's error if it failed (the member must stop: it may have dropped pages).
    fn settle(&mut self) -> Result<(), CoreError> {
        // Checked whatever is outstanding: a file that grows in a lazy commit asks for an
        // fsync of its own, which `behind` does not track.
        self.syncs.check().map_err(fsync_err)?;
        if let Some((generation, index)) = self.behind {
            if self.syncs.completed() >= generation {
                self.durable_index = self.durable_index.max(index);
                self.behind = None;
            }
        }
        Ok(())
    }

    /// Commits `txn`; durably if `durable`, then recording what its fsync will make durable.
    fn commit(
        &mut self,
        mut txn: redb::WriteTransaction,
        durable: bool,
        index: u64,
    ) -> Result<(), CoreError> {
        txn.set_durability(if durable { Durability::Immediate } else { Durability::None })
            .map_err(redb_err)?;
        txn.commit().map_err(redb_err)?;
        if durable {
            // The commit's writes waited for the last one's fsync: what it made durable counts
            // before this one takes its place (a newer generation stands for both).
            self.settle()?;
            self.behind = Some((self.syncs.requested(), index));
            self.committed_durable = index;
        }
        Ok(())
    }

    /// The progress of a sync: nothing applied, the durable index as it stands.
    fn sync_progress(&self) -> Progress {
        Progress {
            applied: self.applied,
            durable_index: self.durable_index,
            commands: Vec::new(),
            history: None,
            held_bytes: 0,
        }
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
        let mut entries = entries.into_iter().peekable();
        let mut done = Applying { commands: Vec::new(), held: 0, history: None };
        // A check point ends a transaction; the entries after it go on in the next.
        while let Some(point) = self.apply_one_transaction(&mut entries, max_held, &mut done, observer)? {
            // A point left unhashed only leaves the peers' comparison without this member.
            match (&self.hasher, self.db.begin_read()) {
                (Some(hasher), Ok(state)) => hasher.hash(point, state),
                (Some(_), Err(e)) => {
                    tracing::warn!(index = point, error = %e, "cannot read the state to hash it")
                }
                (None, _) => {}
            }
            if done.held > max_held || entries.peek().is_none() {
                break;
            }
        }
        let progress = Progress {
            applied: self.applied,
            durable_index: self.durable_index,
            commands: done.commands,
            history: done.history,
            held_bytes: done.held,
        };
        Ok((progress, entries.collect()))
    }

    /// Applies entries in one transaction until they run out, the answers and events held pass
    /// `max_held`, or a check point (`state_check`) is applied, whose index it returns (only
    /// when someone hashes the points).
    fn apply_one_transaction(
        &mut self,
        entries: &mut impl Iterator<Item = Entry>,
        max_held: usize,
        done: &mut Applying,
        observer: &mut dyn ReadyObserver,
    ) -> Result<Option<u64>, CoreError> {
        let txn = self.db.begin_write().map_err(redb_err)?;
        observer.apply_started();
        let mut applied = 0;
        let mut point = None;
        let mut batch = fsm::Batch::begin(&txn, self.bounds)?;
        for e in entries.by_ref() {
            if e.index <= self.applied.index {
                continue; // covered by an installed snapshot
            }
            let data: &[u8] = match e.get_entry_type() {
                EntryType::EntryNormal => &e.data,
                // A change of membership: raft applied it as the core handed it out, and the
                // state records the configuration it reached (in `context`, from the core).
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    fsm::set_conf_state(&txn, &e.context)?;
                    record_addition(batch.tables(), &e)?;
                    &[]
                }
            };
            applied += 1;
            match batch.apply_entry(e.index, e.term, data)? {
                Some(c) => {
                    done.held += c.held_bytes();
                    done.commands.push(c);
                    if done.held > max_held {
                        break;
                    }
                }
                None if data.is_empty()
                    && e.get_entry_type() == EntryType::EntryNormal
                    && self.hasher.is_some() =>
                {
                    point = Some(e.index);
                    break;
                }
                None => {}
            }
        }
        // The bytes recorded add up across the transactions; the rest is as of the last.
        done.history = match (done.history, batch.history()) {
            (Some(before), Some(now)) => {
                Some(fsm::HistorySize { recorded: before.recorded + now.recorded, ..now })
            }
            (before, now) => now.or(before),
        };
        let position = batch.finish()?;
        let durable = position.index >= self.committed_durable + self.sync_every;
        observer.apply_finished(applied);
        observer.commit_started();
        self.commit(txn, durable, position.index)?;
        observer.commit_finished(0);
        self.applied = position;
        self.settle()?;
        Ok(point)
    }

    /// Makes everything applied durable, its fsync completed before it returns (one empty
    /// durable commit makes every earlier commit durable); `None` when it already was.
    pub fn sync(&mut self) -> Result<Option<Progress>, CoreError> {
        if !self.dirty() {
            return Ok(None);
        }
        if self.committed_durable < self.applied.index {
            let txn = self.db.begin_write().map_err(redb_err)?;
            self.commit(txn, true, self.applied.index)?;
        }
        if let Some((generation, _)) = self.behind {
            self.syncs.wait(generation).map_err(fsync_err)?;
        }
        self.settle()?;
        Ok(Some(self.sync_progress()))
    }

    /// Commits everything applied durably without waiting for the fsync, which runs behind
    /// (the durable index moves once it has completed: a later batch's progress, or a later
    /// call, reports it). Does nothing while the fsync of the last durable commit is still
    /// running: a disk slower than the calls sets their pace, and these calls never wait for it
    /// (a commit that writes to the file still does: see `storage::sync_behind`). `None` when the durable index stayed where it was.
    pub fn sync_behind(&mut self) -> Result<Option<Progress>, CoreError> {
        let was = self.durable_index;
        self.settle()?;
        if self.behind.is_none() && self.committed_durable < self.applied.index {
            let txn = self.db.begin_write().map_err(redb_err)?;
            self.commit(txn, true, self.applied.index)?;
            self.settle()?;
        }
        Ok((self.durable_index > was).then(|| self.sync_progress()))
    }

    /// Replaces the state with the snapshot staged under `token` at `(index, term)`, with
    /// raft's configuration `conf_state` (encoded), durably.
    pub fn install(
        &mut self,
        token: &[u8],
        index: u64,
        term: u64,
        conf_state: &[u8],
    ) -> Result<Applied, CoreError> {
        let txn = self.db.begin_write().map_err(redb_err)?;
        let applied = self.snapshots.install(&txn, token, index, term, conf_state)?;
        self.commit(txn, true, applied.index)?;
        self.syncs.wait_all().map_err(fsync_err)?;
        self.applied = applied;
        self.behind = None;
        self.durable_index = applied.index;
        if let Some(hasher) = &self.hasher {
            hasher.installed(applied.index);
        }
        Ok(applied)
    }
}

/// Appliers over a state in memory, for the tests of this module and of the apply thread.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::core::snapshots::MemoryInbox;
    use crate::storage::SyncBehind;

    /// An in-memory backend whose fsyncs fail once `fail` is set.
    #[derive(Debug, Default)]
    pub(crate) struct FailingSyncs {
        bytes: redb::backends::InMemoryBackend,
        pub(crate) fail: Arc<AtomicBool>,
    }

    impl redb::StorageBackend for FailingSyncs {
        fn len(&self) -> Result<u64, std::io::Error> {
            self.bytes.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
            self.bytes.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            self.bytes.set_len(len)
        }
        fn sync_data(&self) -> Result<(), std::io::Error> {
            match self.fail.load(Ordering::SeqCst) {
                true => Err(std::io::Error::other("the disk is gone")),
                false => Ok(()),
            }
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            self.bytes.write(offset, data)
        }
    }

    /// An applier of an initialised state on `backend`, whose fsyncs run when next needed.
    pub(crate) fn applier_on(backend: impl redb::StorageBackend) -> (Arc<Database>, Applier) {
        let (backend, syncs) = SyncBehind::when_needed(backend);
        let db =
            Arc::new(Database::builder().create_with_backend(backend).expect("an in-memory database opens"));
        let txn = db.begin_write().expect("a write transaction begins");
        fsm::init(&txn).expect("init creates the fsm tables");
        txn.commit().expect("init commits");
        syncs.wait_all().expect("init is durable");
        let snapshots = Arc::new(Snapshots::new(db.clone(), Arc::new(MemoryInbox::default())));
        let applier = Applier::new(db.clone(), syncs, snapshots, fsm::Bounds::default()).expect("an applier");
        (db, applier)
    }
}

/// Records the member a change of membership added, with its peer address, once raft took the
/// change (the configuration reached, in the entry's `context`, has it).
fn record_addition(tables: &fsm::Tables, e: &Entry) -> Result<(), CoreError> {
    let Ok(cc) = super::membership::change_of(e) else { return Ok(()) };
    if super::membership::added_by(&cc).is_none() {
        return Ok(());
    }
    let reached = super::membership::decode(&e.context).map_err(raft::Error::from)?;
    if let Some((member, addr)) = super::membership::addition_taken(&cc, &reached) {
        fsm::members::add(tables, member, &addr, e.index)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use latch_proto::internal::{command::Body, op, Op, Range};
    use prost::Message as _;

    use super::*;
    use std::sync::atomic::Ordering;

    use super::testing::{self, FailingSyncs};
    use crate::fsm::testing::{command, op_put, put, txn};

    fn applier() -> (Arc<Database>, Applier) {
        let (db, applier) = testing::applier_on(FailingSyncs::default());
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

    /// A durable commit returns before its fsync has run; the durable index — how far the raft
    /// log may be compacted — moves to it only once the fsync has, never at the commit.
    #[test]
    fn the_durable_index_moves_to_a_durable_commit_only_once_its_fsync_has_run() {
        let (_, applier) = applier();
        let syncs = applier.syncs.clone();
        let mut applier = applier.sync_every(3);
        // Five keys written once, durably: the file has grown to hold them (a file that grows
        // runs the outstanding fsync, and this test wants none run but its own).
        let mut all = entries((0..10).map(|i| put(&format!("k{}", i % 5), "v")).collect());
        let mut first = all.split_off(5);
        let rest = first.split_off(3);
        applier.apply(all, &mut ()).expect("applies");
        assert_eq!(applier.sync().expect("syncs").map(|p| p.durable_index), Some(5));

        let p = applier.apply(first, &mut ()).expect("applies");
        assert_eq!((p.applied.index, applier.durably_committed()), (8, 8), "the third entry commits durably");
        assert_eq!(p.durable_index, 5, "its fsync has not run yet");
        let p = applier.apply(rest, &mut ()).expect("applies");
        assert_eq!(p.durable_index, 5, "a lazy commit runs no fsync");
        assert_eq!(
            applier.sync_behind().expect("syncs").map(|p| p.durable_index),
            None,
            "no second durable commit while the first one's fsync is outstanding"
        );
        assert_eq!(applier.durably_committed(), 8);

        syncs.wait(syncs.requested()).expect("the fsync runs");
        let p = applier.sync_behind().expect("syncs").expect("the durable index moved");
        assert_eq!(p.durable_index, 8, "the durable commit, its fsync done");
        assert_eq!(applier.durably_committed(), 10, "and everything applied is committed durably, behind");
        let p = applier.sync().expect("syncs").expect("the durable index moved");
        assert_eq!(p.durable_index, 10, "sync waits for the fsync");
        assert!(!applier.dirty());
        assert!(applier.sync().expect("syncs").is_none(), "nothing left to make durable");
    }

    /// A durable commit whose fsync (run behind) fails never becomes durable, and the applier's
    /// next call of any kind returns the failure: the member stops rather than go on.
    #[test]
    fn a_failed_fsync_behind_a_durable_commit_is_returned_and_nothing_becomes_durable() {
        let backend = FailingSyncs::default();
        let fail = backend.fail.clone();
        let (_, applier) = testing::applier_on(backend);
        let mut applier = applier.sync_every(1);
        let mut first = entries((0..4).map(|i| put(&format!("k{i}"), "v")).collect());
        let rest = first.split_off(2);
        let p = applier.apply(first, &mut ()).expect("applies");
        assert_eq!((p.applied.index, p.durable_index), (2, 0), "committed durably, its fsync not run yet");

        fail.store(true, Ordering::SeqCst);
        let e = applier.sync().expect_err("the fsync fails");
        assert!(e.to_string().contains("the disk is gone"), "{e}");
        assert_eq!(applier.durable_index(), 0, "a failed fsync makes nothing durable");
        let e = applier.sync_behind().expect_err("still failed");
        assert!(e.to_string().contains("the disk is gone"), "{e}");
        let e = applier.apply(rest, &mut ()).expect_err("no batch applies after a failed fsync");
        assert!(e.to_string().contains("the disk is gone"), "{e}");
        assert_eq!(applier.durable_index(), 0);
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

#[cfg(test)]
mod check_points {
    use std::sync::Mutex;

    use prost::Message as _;

    use super::testing::applier_on;
    use super::*;
    use crate::fsm::testing::{command, put};

    /// Records each check point's state hash.
    #[derive(Default)]
    struct Recording(Mutex<Vec<(u64, u64)>>);

    impl PointHasher for Recording {
        fn hash(&self, index: u64, state: redb::ReadTransaction) {
            let hash = fsm::checked_state_hash(&state).expect("hashes");
            self.0.lock().expect("not poisoned").push((index, hash));
        }
    }

    fn entry(index: u64, data: Vec<u8>) -> Entry {
        Entry { index, term: 1, data: data.into(), ..Default::default() }
    }

    fn put_at(index: u64, key: &str) -> Entry {
        entry(index, command(&format!("r{index}"), put(key, "v")).encode_to_vec())
    }

    /// An empty entry in the middle of a batch is a check point: the state is hashed as it
    /// stands right after it (the puts before it, none after), while the batch goes on applying
    /// in another transaction and answers every command as one transaction would.
    #[test]
    fn a_check_point_is_hashed_at_exactly_its_index_in_the_middle_of_a_batch() {
        let recording = Arc::new(Recording::default());
        let (_, applier) = applier_on(redb::backends::InMemoryBackend::new());
        let mut applier = applier.hashing_points(recording.clone());
        let batch =
            vec![put_at(1, "a"), put_at(2, "b"), entry(3, Vec::new()), put_at(4, "c"), entry(5, Vec::new())];
        let progress = applier.apply(batch, &mut ()).expect("applies");
        assert_eq!(progress.commands.len(), 3, "every command of the batch is answered");
        assert_eq!(progress.applied.index, 5);

        let (expected_db, mut expected) = applier_on(redb::backends::InMemoryBackend::new());
        let hash_now =
            |db: &Database| fsm::checked_state_hash(&db.begin_read().expect("reads")).expect("hashes");
        expected.apply(vec![put_at(1, "a"), put_at(2, "b"), entry(3, Vec::new())], &mut ()).expect("applies");
        let at_3 = hash_now(&expected_db);
        expected.apply(vec![put_at(4, "c"), entry(5, Vec::new())], &mut ()).expect("applies");
        let at_5 = hash_now(&expected_db);
        assert_ne!(at_3, at_5);
        let recorded = recording.0.lock().expect("not poisoned").clone();
        assert_eq!(recorded, [(3, at_3), (5, at_5)], "each point hashed at its own index");
    }

    /// The compactor adds up the history bytes each progress recorded: a batch a check point
    /// cuts in two still reports every byte (review-s58 #5).
    #[test]
    fn a_check_point_loses_none_of_the_history_bytes_recorded_before_it() {
        let batch = || vec![put_at(1, "a"), put_at(2, "b"), entry(3, Vec::new()), put_at(4, "c")];
        let (_, mut plain) = applier_on(redb::backends::InMemoryBackend::new());
        let whole = plain.apply(batch(), &mut ()).expect("applies").history.expect("a size");
        let (_, hashing) = applier_on(redb::backends::InMemoryBackend::new());
        let mut hashing = hashing.hashing_points(Arc::new(Recording::default()));
        let cut = hashing.apply(batch(), &mut ()).expect("applies").history.expect("a size");
        assert_eq!(cut.stored, whole.stored, "the same history is stored");
        assert_eq!(cut.recorded, whole.recorded, "every byte recorded is reported");
    }
}
