//! The replicated state machine: pure and deterministic. Every member applies the same committed
//! raft entries in the same order and reaches the same state; no clock, no randomness, no I/O
//! besides the redb transaction it is handed (DESIGN.md §2 rules 3 and 4).
//!
//! The seam every domain plugs into:
//! - A domain (one file each: `kv`, `requests`; sessions, locks, elections and the registry
//!   to come) keeps all it has in its own tables, every one `&[u8] → &[u8]`, and declares them
//!   through `Domain` together with what a row must satisfy. Creating the tables ([`init`]),
//!   the snapshot stream ([`snapshot`]), restoring one and the state hash ([`state_hash`]) then
//!   cover it with no further code: adding a domain is its file, its entry in `DOMAINS`, and
//!   the arms of its commands in `apply_command`.
//! - A command is applied through an `Apply` context that owns the revision: one command may
//!   change several domains in one revision, and every change leaves as an [`Event`].
//!
//! May import: the storage schema and the internal (log) messages of latch-proto. Never the
//! public API, tokio, tonic or raft.
//!
//! Invariants:
//! - `fsm_meta` (applied index, term, store revision) is written in the same transaction as the
//!   state it describes; the applied index strictly increases ([`FsmError::OutOfOrder`]).
//! - The store revision never decreases; a command raises it by at most one.
//! - A command that is undecodable, of another version, or invalid is rejected
//!   deterministically: every member answers the same `rejected` outcome and writes nothing but
//!   the applied index (and, when it carried a request id, the remembered outcome).
//! - A request id is applied at most once while it is remembered (see `requests`).
//! - Stored data that cannot be what this code wrote is reported as [`FsmError::Corrupt`],
//!   naming the table and key; nothing here panics on stored data.

mod apply;
pub mod elections;
pub mod history;
mod kv;
pub use kv::writes_nothing;
pub use requests::{answer_of, first_outcome, omit_data};
pub mod locks;
pub mod members;
pub mod registry;
mod requests;
#[cfg(test)]
mod same_state;
pub mod sessions;
pub mod snapshot;
mod tables;
pub mod versions;

use latch_proto::internal::{
    command::Body, outcome, Command, CompactResult, Compacted, KeyValue, Outcome, Range, RangeResult,
};
use prost::Message;
use redb::{
    ReadOnlyTable, ReadTransaction, ReadableTable, ReadableTableMetadata as _, TableDefinition, TableHandle,
    WriteTransaction,
};

pub use apply::{Event, EventKind, InstanceChange, InstanceTimer, LockChange, SessionChange};
pub(crate) use kv::selection;
pub use kv::{selects, SEQUENCE_DIGITS};
pub use tables::Tables;

/// One page of the current keys a selection holds (see `kv::read_page`).
pub fn read_page(
    txn: &ReadTransaction,
    key: &[u8],
    range_end: &[u8],
    from: &[u8],
    limit: usize,
    max_bytes: usize,
) -> Result<(Vec<KeyValue>, bool), FsmError> {
    kv::read_page(txn, key, range_end, from, limit, max_bytes)
}
pub use requests::{remembered, REQUEST_MEMORY_BYTES};

use crate::storage::schema::{
    CONF_STATE, CONF_STATE_CURRENT, FSM_APPLIED_INDEX, FSM_APPLIED_TERM, FSM_HISTORY_BYTES,
    FSM_HISTORY_BYTES_INDEX, FSM_INSTALLED_AT, FSM_META, FSM_RESTORED_FROM, FSM_RESTORED_SKIP, FSM_REVISION,
    HISTORY,
};
use std::sync::atomic::{AtomicBool, Ordering};

use apply::Apply;

/// The `Command.version` this build proposes. It applies [`OLDEST_COMMAND_VERSION`] too, by
/// that version's rules, so that a member replaying a log an older build wrote reaches the
/// state that build reached; any other version is rejected. Version 3: an acquire under the
/// request id of another session's hold or wait, and a session create for an existing session
/// asking another name or TTL, are refused (version 2 applied them). Version 4: the request
/// memory keeps only the health of what the registry's periodic commands answer
/// (`requests`' module doc). Version 5: an acquire may carry `max_row_bytes` (an older build
/// would apply it without the bound). Version 6: the request memory leaves out the keys of puts
/// that are not sequential (`requests`' module doc), and a critical instance registered again
/// with the same check is critical since that registration (`registry::register`). Version 7:
/// `MemberStarted` (`members`), which an older build would reject as a command without a body.
/// Version 8: a proclaim may carry `max_row_bytes` (an older build would apply it without the
/// bound). Version 9: what a remembered request counts against the memory's bound leaves its
/// refusal's text out (`requests`' module doc). Version 10: no command changed, but raft's
/// changes of membership are applied (a member's replacement, `core::membership`), which a
/// build of 9 applies as no-ops — and members that disagree on who votes could elect two
/// leaders — so builds of 9 and 10 must not run side by side. Version 11: `RaiseClusterVersion`
/// (`versions`); from it on a member proposes at the cluster version, not at this, so builds of
/// 11 and later run side by side until every member runs the later one. A version older than
/// [`OLDEST_COMMAND_VERSION`] is rejected (every build since version 2 rejects it alike); a
/// newer one stops the member ([`FsmError::NewerVersion`]).
///
/// What a command writes to the state, texts included, is fixed by its version: every member
/// must reach the same state from the same log whatever build applies it, and the members
/// compare their states (`core::state_check`). So a change to it is made under a new version,
/// and `fsm::same_state` pins the state a fixed sequence of commands leaves. The rules no
/// command's version keys — the history's purge pace, what a change of membership records, the
/// request memory's bound — must from 11 on be keyed on the cluster version read in the
/// applying batch instead (docs/architecture.md, "Upgrades").
pub const COMMAND_VERSION: u32 = 11;
/// The oldest `Command.version` this build applies.
pub const OLDEST_COMMAND_VERSION: u32 = 2;

/// The first command version with a body of this kind. A member proposes at the cluster
/// version (`versions`), so a kind newer than it is refused before it is proposed
/// (`Core::propose`), and a command of an earlier version with it is rejected alike by every
/// build: an older one decodes the kind it does not know as no body at all and rejects that.
/// Every kind is named, so that a new one cannot be added without saying from which version.
pub fn first_version(body: &Body) -> u32 {
    match body {
        Body::Put(_)
        | Body::DeleteRange(_)
        | Body::Txn(_)
        | Body::CreateSession(_)
        | Body::CloseSession(_)
        | Body::ExpireSession(_)
        | Body::CheckpointSessions(_)
        | Body::Acquire(_)
        | Body::Release(_)
        | Body::CancelWait(_)
        | Body::EndLockDelay(_)
        | Body::Proclaim(_)
        | Body::Compact(_)
        | Body::Register(_)
        | Body::Deregister(_)
        | Body::Heartbeat(_)
        | Body::MarkCritical(_)
        | Body::SetHealth(_)
        | Body::Reap(_) => OLDEST_COMMAND_VERSION,
        Body::MemberStarted(_) => MEMBERS_RECORDED_FROM,
        Body::RaiseClusterVersion(_) => versions::FIRST_RAISE,
    }
}

/// The first version with `MemberStarted` (see [`COMMAND_VERSION`]).
pub(crate) const MEMBERS_RECORDED_FROM: u32 = 7;
/// The first version whose acquires and session creates check request ids (see above).
const IDS_CHECKED_FROM: u32 = 3;
/// The first version whose registry heartbeats, verdicts, reaps and deregistrations are
/// remembered by their health alone (see above).
const HEALTH_ONLY_FROM: u32 = 4;
/// The first version whose remembered outcomes leave out the keys of puts that are not
/// sequential (see above).
const OWN_KEYS_LEFT_OUT_FROM: u32 = 6;
/// The first version whose registrations start a critical instance's deregister period anew.
const FRESH_PERIOD_FROM: u32 = 6;
/// The first version whose remembered requests count their refusal's text out (see above).
const REFUSAL_TEXT_UNCOUNTED_FROM: u32 = 9;

/// The domains the members compare at check points: every one but the request memory (see
/// [`checked_state_hash`]), in [`DOMAINS`]' order.
const CHECKED_DOMAINS: [&dyn Domain; 7] = [
    &kv::KvDomain,
    &sessions::SessionsDomain,
    &locks::LocksDomain,
    &registry::RegistryDomain,
    &history::HistoryDomain,
    &members::MembersDomain,
    &versions::VersionsDomain,
];

/// Every domain, in the order their tables appear in a snapshot.
const DOMAINS: [&dyn Domain; 8] = [
    &kv::KvDomain,
    &requests::RequestsDomain,
    &sessions::SessionsDomain,
    &locks::LocksDomain,
    &registry::RegistryDomain,
    &history::HistoryDomain,
    &members::MembersDomain,
    &versions::VersionsDomain,
];

/// A domain table: every one is keyed and valued by bytes, so that snapshot, restore and the
/// state hash handle them alike.
pub(crate) type TableDef = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// A part of the replicated state. What it keeps lives in [`Domain::tables`]; how commands
/// change it is its apply functions, called from `apply_command` through an `Apply`.
pub(crate) trait Domain: Sync {
    /// A short stable name, for messages.
    fn name(&self) -> &'static str;
    /// Its tables. Their names are part of the snapshot format.
    fn tables(&self) -> &'static [TableDef];
    /// Checks one row of a snapshot being restored at `at`, before it is written; an error
    /// fails the whole restore.
    fn check_row(&self, table: &str, key: &[u8], value: &[u8], at: &Applied) -> Result<(), FsmError>;
}

/// Position of the state machine: the last applied raft entry and the store revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    pub index: u64,
    pub term: u64,
    pub revision: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum FsmError {
    #[error("state machine storage: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("state machine table: {0}")]
    Table(#[from] redb::TableError),
    /// Raft handed an entry at or below the applied index: a bug in the caller.
    #[error("entry {index} applied out of order: the state machine is already at index {applied}")]
    OutOfOrder { applied: u64, index: u64 },
    /// Stored data (or a snapshot) that this code cannot have written.
    #[error("corrupt state machine data: {0}")]
    Corrupt(String),
    /// A read asked for a revision the history cannot serve: the reader's error, not the
    /// member's.
    #[error(transparent)]
    Revision(#[from] history::RevisionError),
    /// A read that would hold more than a bound allows: the reader's error, not the member's.
    #[error("{0}")]
    OverLimit(String),
    /// A committed entry a later build wrote, of a version this build cannot apply. Rejecting
    /// it would leave this member's state behind its peers' (they apply it) for good, so the
    /// member stops instead, before it applies anything of the entry's transaction (entries
    /// before a check point in the same batch may be committed, lazily: the log replays them);
    /// a later build started on the same data dir applies it.
    #[error(
        "entry {index} is a command of version {version}, written by a later build: this build \
         applies versions {OLDEST_COMMAND_VERSION} to {newest}; start this member with the \
         build its peers run (docs/architecture.md, \"Upgrades\")"
    )]
    NewerVersion { index: u64, version: u32, newest: u32 },
}

/// What applying one command produced.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedCommand {
    /// The log index and term of the entry.
    pub index: u64,
    pub term: u64,
    /// Empty when the command had none or could not be decoded.
    pub request_id: String,
    /// FNV-1a of the whole encoded command ([`command_hash`]): a waiter is answered only for the
    /// command it proposed, not another one under the same id.
    pub command_hash: u64,
    pub outcome: Outcome,
    /// The changes it made, in order; all at `outcome.revision`. Empty when it wrote nothing.
    pub events: Vec<Event>,
    /// What it did to sessions' leases, in order.
    pub sessions: Vec<SessionChange>,
    /// What it did to locks and elections, in order.
    pub locks: Vec<LockChange>,
    /// What it did to registry instances' timers, in order.
    pub instances: Vec<InstanceChange>,
}

impl AppliedCommand {
    /// About how many bytes it holds: its answer (a txn's ranges, a delete's previous values)
    /// and its events, which grow with the data a command selects; the rest is small.
    pub fn held_bytes(&self) -> usize {
        use prost::Message as _;
        let event = |e: &Event| e.kv.encoded_len() + e.prev_kv.as_ref().map_or(0, |p| p.encoded_len());
        self.outcome.encoded_len() + self.events.iter().map(event).sum::<usize>()
    }
}

/// Creates every fsm table so read transactions can open them, and counts the history's bytes
/// if they are not counted as of the applied position (a data dir of an earlier build: one scan
/// as the member opens, not on the apply thread), returning the count it made; idempotent.
pub fn init(txn: &WriteTransaction) -> Result<Option<u64>, FsmError> {
    for domain in DOMAINS {
        for def in domain.tables() {
            txn.open_table(*def)?;
        }
    }
    txn.open_table(CONF_STATE)?;
    let meta = txn.open_table(FSM_META)?;
    if counted_history_bytes(&meta)?.is_none() {
        let pos = read_meta(&meta)?;
        drop(meta);
        let bytes = history::count_bytes(&txn.open_table(HISTORY)?)?;
        write_meta(txn, pos, bytes)?;
        return Ok(Some(bytes));
    }
    Ok(None)
}

/// Empties every fsm table (before a restore).
fn clear(txn: &WriteTransaction) -> Result<(), FsmError> {
    txn.delete_table(FSM_META)?;
    txn.delete_table(CONF_STATE)?;
    for domain in DOMAINS {
        for def in domain.tables() {
            txn.delete_table(*def)?;
        }
    }
    init(txn).map(|_| ())
}

/// Position of the state machine (0/0/0 for a fresh store; revision starts at 0, the first write
/// makes it 1).
pub fn applied(txn: &ReadTransaction) -> Result<Applied, FsmError> {
    match open_read(txn, FSM_META)? {
        Some(meta) => read_meta(&meta),
        None => Ok(Applied::default()),
    }
}

/// The index of the snapshot the state was last installed from ([`snapshot::restore`]); 0 for
/// a state that was never replaced by one.
pub fn installed_at(txn: &ReadTransaction) -> Result<u64, FsmError> {
    let Some(meta) = open_read(txn, FSM_META)? else { return Ok(0) };
    Ok(meta.get(FSM_INSTALLED_AT)?.map_or(0, |v| v.value()))
}

/// The backup a state descends from: the snapshot file a new cluster's first state was restored
/// from ([`snapshot::restore_as_new_cluster`]) and the generations that restore skipped. Every
/// member of a restored cluster holds the same: each first member restores it, and a raft
/// snapshot carries it to a member sent the state ([`snapshot::restore`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoredFrom {
    /// The file's checksum (`latch snapshot status` shows it); 0: the cluster was not restored.
    pub checksum: u64,
    pub skip_generations: u64,
}

impl RestoredFrom {
    pub fn is_restored(&self) -> bool {
        self.checksum != 0
    }
}

impl std::fmt::Display for RestoredFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.checksum, self.skip_generations) {
            (0, _) => write!(f, "no snapshot file"),
            (checksum, 0) => write!(f, "the snapshot file with checksum {checksum:016x}"),
            (checksum, skip) => {
                write!(f, "the snapshot file with checksum {checksum:016x}, skipping {skip} generations")
            }
        }
    }
}

/// What the state descends from ([`RestoredFrom`]); all zero for a cluster never restored.
pub fn restored_from(txn: &ReadTransaction) -> Result<RestoredFrom, FsmError> {
    let Some(meta) = open_read(txn, FSM_META)? else { return Ok(RestoredFrom::default()) };
    Ok(RestoredFrom {
        checksum: meta.get(FSM_RESTORED_FROM)?.map_or(0, |v| v.value()),
        skip_generations: meta.get(FSM_RESTORED_SKIP)?.map_or(0, |v| v.value()),
    })
}

/// Records what the state descends from, in the transaction that restores it (nothing for a
/// cluster never restored).
fn set_restored_from(txn: &WriteTransaction, from: RestoredFrom) -> Result<(), FsmError> {
    if from.is_restored() {
        let mut meta = txn.open_table(FSM_META)?;
        meta.insert(FSM_RESTORED_FROM, from.checksum)?;
        meta.insert(FSM_RESTORED_SKIP, from.skip_generations)?;
    }
    Ok(())
}

/// Raft's configuration as of the applied index, as `core` encoded it (see
/// [`CONF_STATE`]); `None` until a change was applied (the configuration is then the one the
/// member started with).
pub fn conf_state(txn: &ReadTransaction) -> Result<Option<Vec<u8>>, FsmError> {
    let Some(table) = open_read(txn, CONF_STATE)? else { return Ok(None) };
    Ok(table.get(CONF_STATE_CURRENT)?.map(|v| v.value().to_vec()))
}

/// Records raft's configuration in the transaction that applies the entry (or restores the
/// snapshot) it is as of.
pub fn set_conf_state(txn: &WriteTransaction, conf_state: &[u8]) -> Result<(), FsmError> {
    txn.open_table(CONF_STATE)?.insert(CONF_STATE_CURRENT, conf_state)?;
    Ok(())
}

/// The bounds an apply works within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Bytes of read results (range ops) in one answer (see `kv`). It shapes answers only, never
    /// the state, so members may differ in it.
    pub max_response_bytes: usize,
    /// Bytes of remembered requests (see `requests`). It shapes the state: every member must
    /// use the same value, [`REQUEST_MEMORY_BYTES`] (tests use small ones).
    pub request_memory_bytes: u64,
    /// Whether applied commands carry their changes as [`Event`]s: the simulator's checks read
    /// them; a member's watches read the history, so a member does not build them (a delete of
    /// a million keys would hold a million events). Shapes nothing stored.
    pub events: bool,
    /// The newest command version this member applies: [`COMMAND_VERSION`]. The simulator runs
    /// members as builds of an earlier version with less (a rolling upgrade); a later version
    /// stops the member ([`FsmError::NewerVersion`]).
    pub newest_version: u32,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_response_bytes: 4 * 1024 * 1024,
            request_memory_bytes: REQUEST_MEMORY_BYTES,
            events: true,
            newest_version: COMMAND_VERSION,
        }
    }
}

/// Committed entries applied in one transaction, in index order. The applied position is read
/// when the batch begins and written once, by [`Batch::finish`]; every table a command writes
/// is opened once, at its first use, and stays open to the batch's end ([`Tables`]; the request
/// memory's three in `requests::Memory`). What a batch wrote is what the
/// same entries applied one [`apply_entry`] at a time would have written: members cut batches
/// where their own timing falls, so nothing may depend on where. A batch that fails is
/// abandoned with its transaction.
///
/// Until [`Batch::finish`], `fsm_meta` and `requests_meta` in the transaction are as they were
/// before the batch: nothing applying a command may read them there (the revision comes from
/// the `Apply` context, the request memory from the batch's).
#[must_use = "a batch's position and request memory are written by Batch::finish"]
pub struct Batch<'t> {
    /// The tables its commands write, each opened once.
    tables: Tables<'t>,
    bounds: Bounds,
    /// The position after the entries applied so far.
    pos: Applied,
    applied_any: bool,
    memory: Option<requests::Memory<'t>>,
    /// The history's bytes after the entries applied so far, and what they recorded.
    history: HistorySize,
}

/// How large the history is, for `--history-retention-bytes` (see `history::row_bytes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistorySize {
    /// The bytes of the rows stored, compacted ones not yet purged included.
    pub stored: u64,
    /// The bytes of the rows a batch recorded.
    pub recorded: u64,
    /// Whether compacted rows are left to purge (then `stored` is more than what is kept).
    pub purging: bool,
}

impl<'t> Batch<'t> {
    pub fn begin(txn: &'t WriteTransaction, bounds: Bounds) -> Result<Batch<'t>, FsmError> {
        let meta = txn.open_table(FSM_META)?;
        let pos = read_meta(&meta)?;
        let stored = match counted_history_bytes(&meta)? {
            Some(bytes) => bytes,
            // A restored state, or one a build that did not count applied to: counted again.
            None => history::count_bytes(&txn.open_table(HISTORY)?)?,
        };
        let history = HistorySize { stored, recorded: 0, purging: false };
        Ok(Batch { tables: Tables::new(txn)?, bounds, pos, applied_any: false, memory: None, history })
    }

    /// The tables the batch keeps open: whatever else writes one of them in its transaction
    /// while it lasts goes through them (a change of membership's record, `members::add`).
    pub fn tables(&self) -> &Tables<'t> {
        &self.tables
    }

    /// The history's size after the entries applied so far (`None` before the first).
    pub fn history(&self) -> Option<HistorySize> {
        self.applied_any.then_some(self.history)
    }

    /// Applies one committed raft entry's data at (index, term). Empty `data` (raft's leader
    /// no-op, or any entry the caller has nothing to apply for) only advances the applied index
    /// and term.
    pub fn apply_entry(
        &mut self,
        index: u64,
        term: u64,
        data: &[u8],
    ) -> Result<Option<AppliedCommand>, FsmError> {
        if index <= self.pos.index {
            return Err(FsmError::OutOfOrder { applied: self.pos.index, index });
        }
        let (result, recorded) = if data.is_empty() {
            (None, Recorded::default())
        } else {
            let (applied, recorded) = apply_command(
                &self.tables,
                &mut self.memory,
                index,
                term,
                &mut self.pos.revision,
                data,
                &self.bounds,
            )?;
            (Some(applied), recorded)
        };
        // At least as many rows go as the entry added: a compaction's backlog never grows.
        let purged = history::purge_step(
            &self.tables,
            history::PURGE_STEP + recorded.rows as usize,
            recorded.bytes.saturating_mul(2),
        )?;
        self.history.recorded = self.history.recorded.saturating_add(recorded.bytes);
        self.history.stored = self.history.stored.saturating_add(recorded.bytes).saturating_sub(purged.bytes);
        self.history.purging = purged.backlog;
        self.pos.index = index;
        self.pos.term = term;
        self.applied_any = true;
        Ok(result)
    }

    /// Writes what the batch keeps until its end; the position after it.
    pub fn finish(self) -> Result<Applied, FsmError> {
        if let Some(memory) = self.memory {
            memory.close()?;
        }
        let txn = self.tables.txn();
        drop(self.tables);
        if self.applied_any {
            write_meta(txn, self.pos, self.history.stored)?;
        }
        Ok(self.pos)
    }
}

/// What one command wrote to the history.
#[derive(Debug, Clone, Copy, Default)]
struct Recorded {
    rows: u32,
    bytes: u64,
}

/// Applies one committed raft entry's data at (index, term), as a batch of one ([`Batch`]).
pub fn apply_entry(
    txn: &WriteTransaction,
    index: u64,
    term: u64,
    data: &[u8],
    bounds: &Bounds,
) -> Result<Option<AppliedCommand>, FsmError> {
    let mut batch = Batch::begin(txn, *bounds)?;
    let result = batch.apply_entry(index, term, data)?;
    batch.finish()?;
    Ok(result)
}

/// Serves a range from the current state (or, with `req.revision`, as it was then): the store
/// revision and the result.
pub fn range(
    txn: &ReadTransaction,
    req: &Range,
    max_response_bytes: usize,
) -> Result<(i64, RangeResult), FsmError> {
    let revision = applied(txn)?.revision;
    if req.revision != 0 {
        history::check_revision(req.revision, revision, history::compact_revision_read(txn)?)?;
    }
    Ok((revision, kv::read_range(txn, req, max_response_bytes)?))
}

/// Answers a txn that writes nothing (`kv::writes_nothing`) at the state `txn` reads, and that
/// state's revision: a read, not a log entry.
pub fn read_txn(
    txn: &ReadTransaction,
    req: &latch_proto::internal::Txn,
    max_response_bytes: usize,
) -> Result<(i64, outcome::Result), FsmError> {
    Ok((applied(txn)?.revision, kv::read_txn(txn, req, max_response_bytes)?))
}

/// Deterministic hash of the store revision and every row of every domain table; equal states
/// give equal hashes. The applied index and term are not part of it. The members compare it at
/// check points (`core::state_check`, whose `STATE_HASH_VERSION` names this digest: change one,
/// change the other), and the simulator after its steps; it uses [`StateDigest`], which reads
/// eight bytes at a time, rather than the byte-wise [`Fnv`]: the simulator hashes every
/// member's whole state thousands of times per run.
pub fn state_hash(txn: &ReadTransaction) -> Result<u64, FsmError> {
    hash_domains(txn, &DOMAINS, &AtomicBool::new(false)).map(|h| h.unwrap_or_default())
}

/// The hash members compare at check points (`core::state_check`): [`state_hash`] of every
/// domain but the request memory, whose rows are answers already given (with their error
/// texts, which builds word differently): a member that applied some entries under another
/// build must not be taken for a diverged one for the wording of an answer.
pub fn checked_state_hash(txn: &ReadTransaction) -> Result<u64, FsmError> {
    checked_state_hash_unless(txn, &AtomicBool::new(false)).map(|h| h.unwrap_or_default())
}

/// [`checked_state_hash`], given up (`None`) once `stop` is set: a pass over a large state
/// takes seconds, and a member shutting down does not wait for it.
pub fn checked_state_hash_unless(txn: &ReadTransaction, stop: &AtomicBool) -> Result<Option<u64>, FsmError> {
    hash_domains(txn, &CHECKED_DOMAINS, stop)
}

/// Tables a state hashes only once they hold a row: a state without any hashes as it did in
/// the builds before the table, so that members on either build compare check points alike.
const ADDED_LATER: [&str; 2] = ["added_members", "cluster_version"];

/// The rows between two looks at a hash's `stop`.
const ROWS_PER_STOP_CHECK: u32 = 4096;

fn hash_domains(
    txn: &ReadTransaction,
    domains: &[&dyn Domain],
    stop: &AtomicBool,
) -> Result<Option<u64>, FsmError> {
    let mut h = StateDigest::new();
    h.write_bytes(b"revision");
    h.write_u64(applied(txn)?.revision as u64);
    let mut rows = 0u32;
    for domain in domains {
        for def in domain.tables() {
            let table = open_read(txn, *def)?;
            if ADDED_LATER.contains(&def.name()) && table.as_ref().map_or(Ok(true), |t| t.is_empty())? {
                continue;
            }
            h.write_bytes(def.name().as_bytes());
            let Some(table) = table else { continue };
            for row in table.iter()? {
                let (k, v) = row?;
                h.write_bytes(k.value());
                h.write_bytes(v.value());
                rows = rows.wrapping_add(1);
                if rows % ROWS_PER_STOP_CHECK == 0 && stop.load(Ordering::Relaxed) {
                    return Ok(None);
                }
            }
        }
    }
    Ok(Some(h.finish()))
}

/// [`state_hash`]'s digest: each 64-bit word (the last one zero-padded; every byte string
/// length-prefixed) is xored in, then the state is multiplied by an odd constant and rotated.
/// Both steps are bijections, so two inputs that differ in one word always hash apart.
struct StateDigest(u64);

impl StateDigest {
    fn new() -> Self {
        StateDigest(0xcbf2_9ce4_8422_2325)
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }

    fn write_bytes(&mut self, bytes: &[u8]) {
        self.write_u64(bytes.len() as u64);
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            self.write_u64(u64::from_le_bytes(w));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Applies one non-empty entry: decode, answer a remembered request id, dispatch, remember.
/// Also says how many history rows it wrote.
fn apply_command<'t>(
    tables: &Tables<'t>,
    memory: &mut Option<requests::Memory<'t>>,
    index: u64,
    term: u64,
    revision: &mut i64,
    data: &[u8],
    bounds: &Bounds,
) -> Result<(AppliedCommand, Recorded), FsmError> {
    let cmd = match Command::decode(data) {
        Ok(cmd) => cmd,
        Err(e) => {
            let command_hash = command_hash(data);
            let why = outcome::Result::Rejected(format!("command: undecodable Command: {e}"));
            let outcome = Outcome { revision: *revision, data_omitted: false, result: Some(why) };
            let applied = AppliedCommand {
                index,
                term,
                request_id: String::new(),
                command_hash,
                outcome,
                events: Vec::new(),
                sessions: Vec::new(),
                locks: Vec::new(),
                instances: Vec::new(),
            };
            return Ok((applied, Recorded::default()));
        }
    };
    if cmd.version > bounds.newest_version.min(COMMAND_VERSION) {
        let newest = bounds.newest_version.min(COMMAND_VERSION);
        return Err(FsmError::NewerVersion { index, version: cmd.version, newest });
    }
    let command_hash = request_hash(&cmd, data);
    let mut memory = match (cmd.request_id.is_empty(), memory) {
        (true, _) => None,
        (false, Some(memory)) => Some(memory),
        (false, memory) => Some(memory.insert(requests::Memory::open(tables.txn())?)),
    };
    if let Some(memory) = &memory {
        if let requests::Seen::Answered(outcome) =
            memory.lookup(&cmd.request_id, command_hash, cmd.body.as_ref())?
        {
            let applied = AppliedCommand {
                index,
                term,
                request_id: cmd.request_id,
                command_hash,
                outcome,
                events: Vec::new(),
                sessions: Vec::new(),
                locks: Vec::new(),
                instances: Vec::new(),
            };
            return Ok((applied, Recorded::default()));
        }
    }
    let mut ap = Apply::new(tables, *revision, bounds.max_response_bytes, bounds.events);
    // What the request memory leaves out of the outcome, by the command's version (a version
    // this build does not apply is rejected: its outcome has nothing either rule touches).
    let left_out = memory.is_some().then(|| requests::LeftOut {
        all_but_health: cmd.version >= HEALTH_ONLY_FROM
            && matches!(
                cmd.body,
                Some(
                    Body::Heartbeat(_)
                        | Body::MarkCritical(_)
                        | Body::SetHealth(_)
                        | Body::Reap(_)
                        | Body::Deregister(_)
                )
            ),
        own_keys: (cmd.version >= OWN_KEYS_LEFT_OUT_FROM).then(|| requests::OwnKeys::of(cmd.body.as_ref())),
        refusal_text_uncounted: cmd.version >= REFUSAL_TEXT_UNCOUNTED_FROM,
    });
    let first = cmd.body.as_ref().map_or(OLDEST_COMMAND_VERSION, first_version);
    let result = if !(OLDEST_COMMAND_VERSION..=COMMAND_VERSION).contains(&cmd.version) {
        outcome::Result::Rejected(format!(
            "command: version {} is not supported (this build applies versions \
             {OLDEST_COMMAND_VERSION} to {COMMAND_VERSION})",
            cmd.version
        ))
    } else if cmd.version < first {
        outcome::Result::Rejected(format!(
            "command: a command of version {} with a kind first proposed at version {first}",
            cmd.version
        ))
    } else {
        let ids_checked = cmd.version >= IDS_CHECKED_FROM;
        match cmd.body {
            None => outcome::Result::Rejected("command: body is missing".to_string()),
            Some(Body::Put(req)) => kv::put(&mut ap, req)?,
            Some(Body::DeleteRange(req)) => kv::delete_range(&mut ap, req)?,
            Some(Body::Txn(req)) => kv::txn(&mut ap, req)?,
            Some(Body::CreateSession(req)) => sessions::create(&mut ap, req, ids_checked)?,
            Some(Body::CloseSession(req)) => sessions::close(&mut ap, req)?,
            Some(Body::ExpireSession(req)) => sessions::expire(&mut ap, req, term)?,
            Some(Body::CheckpointSessions(req)) => sessions::checkpoint(&mut ap, req, term)?,
            Some(Body::Acquire(req)) => locks::acquire(&mut ap, req, &cmd.request_id, ids_checked)?,
            Some(Body::Release(req)) => locks::release(&mut ap, req)?,
            Some(Body::CancelWait(req)) => locks::cancel_wait(&mut ap, req)?,
            Some(Body::EndLockDelay(req)) => locks::end_delay(&mut ap, req)?,
            Some(Body::Proclaim(req)) => elections::proclaim(&mut ap, req)?,
            Some(Body::Register(req)) => registry::register(&mut ap, req, cmd.version >= FRESH_PERIOD_FROM)?,
            Some(Body::Deregister(req)) => registry::deregister(&mut ap, req)?,
            Some(Body::Heartbeat(req)) => registry::heartbeat(&mut ap, req)?,
            Some(Body::MarkCritical(req)) => registry::mark_critical(&mut ap, req)?,
            Some(Body::SetHealth(req)) => registry::set_health(&mut ap, req, term)?,
            Some(Body::Reap(req)) => registry::reap(&mut ap, req)?,
            Some(Body::MemberStarted(req)) => members::started(&mut ap, req, index)?,
            Some(Body::RaiseClusterVersion(_)) => versions::raise(tables, cmd.version)?,
            Some(Body::Compact(req)) => match history::compact(tables, req.revision, ap.revision())? {
                Ok(compact_revision) => outcome::Result::Compact(CompactResult { compact_revision }),
                Err(history::RevisionError::Compacted { compact_revision, .. }) => {
                    outcome::Result::Compacted(Compacted { compact_revision })
                }
                Err(e) => outcome::Result::Rejected(format!("compact: {e}")),
            },
        }
    };
    ap.record_locks()?;
    let done = ap.finish();
    *revision = done.revision;
    let outcome = Outcome { revision: done.revision, data_omitted: false, result: Some(result) };
    if let (Some(memory), Some(left_out)) = (&mut memory, &left_out) {
        memory.remember(
            index,
            &cmd.request_id,
            command_hash,
            &outcome,
            left_out,
            bounds.request_memory_bytes,
        )?;
    }
    let applied = AppliedCommand {
        index,
        term,
        request_id: cmd.request_id,
        command_hash,
        outcome,
        events: done.events,
        sessions: done.sessions,
        locks: done.locks,
        instances: done.instances,
    };
    Ok((applied, Recorded { rows: done.recorded, bytes: done.recorded_bytes }))
}

/// Opens a table for reading; a table that was never created reads as absent.
pub(crate) fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<'_, K, V>,
) -> Result<Option<ReadOnlyTable<K, V>>, FsmError> {
    match txn.open_table(def) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn read_meta<T: ReadableTable<&'static str, u64>>(meta: &T) -> Result<Applied, FsmError> {
    let get = |key: &str| -> Result<u64, FsmError> { Ok(meta.get(key)?.map(|v| v.value()).unwrap_or(0)) };
    let raw = get(FSM_REVISION)?;
    let revision = i64::try_from(raw)
        .map_err(|_| FsmError::Corrupt(format!("table fsm_meta, key {FSM_REVISION}: {raw} exceeds i64")))?;
    Ok(Applied { index: get(FSM_APPLIED_INDEX)?, term: get(FSM_APPLIED_TERM)?, revision })
}

/// The history's bytes as `fsm_meta` counts them, if the count is as of its applied index.
fn counted_history_bytes<T: ReadableTable<&'static str, u64>>(meta: &T) -> Result<Option<u64>, FsmError> {
    let at = meta.get(FSM_HISTORY_BYTES_INDEX)?.map(|v| v.value());
    let applied = meta.get(FSM_APPLIED_INDEX)?.map(|v| v.value()).unwrap_or(0);
    if at != Some(applied) {
        return Ok(None);
    }
    Ok(meta.get(FSM_HISTORY_BYTES)?.map(|v| v.value()))
}

/// Writes the position, and the history's bytes as of it (see `FSM_HISTORY_BYTES`).
fn write_meta(txn: &WriteTransaction, pos: Applied, history_bytes: u64) -> Result<(), FsmError> {
    let revision = u64::try_from(pos.revision).map_err(|_| {
        FsmError::Corrupt(format!("table fsm_meta, key {FSM_REVISION}: {} is negative", pos.revision))
    })?;
    let mut meta = txn.open_table(FSM_META)?;
    meta.insert(FSM_APPLIED_INDEX, pos.index)?;
    meta.insert(FSM_APPLIED_TERM, pos.term)?;
    meta.insert(FSM_REVISION, revision)?;
    meta.insert(FSM_HISTORY_BYTES, history_bytes)?;
    meta.insert(FSM_HISTORY_BYTES_INDEX, pos.index)?;
    Ok(())
}

/// The hash by which a request id's command is told from another one under the same id:
/// [`command_hash`] of the command less what the proposing member adds of its own (an acquire's
/// `max_waiters`, `max_session_locks` and `max_row_bytes`, its `--max-lock-waiters`,
/// `--max-locks-per-session` and row bound; a proclaim's `max_row_bytes`), so that a retry sent
/// through a member with other limits is the same request, not a conflict.
pub fn request_hash(cmd: &Command, encoded: &[u8]) -> u64 {
    use latch_proto::internal::command::Body;
    let bounded = match &cmd.body {
        Some(Body::Acquire(a)) => a.max_waiters != 0 || a.max_session_locks != 0 || a.max_row_bytes != 0,
        Some(Body::Proclaim(p)) => p.max_row_bytes != 0,
        _ => false,
    };
    if !bounded {
        return versionless_hash(encoded);
    }
    let mut bare = cmd.clone();
    match &mut bare.body {
        Some(Body::Acquire(a)) => {
            a.max_waiters = 0;
            a.max_session_locks = 0;
            a.max_row_bytes = 0;
        }
        Some(Body::Proclaim(p)) => p.max_row_bytes = 0,
        _ => {}
    }
    versionless_hash(&bare.encode_to_vec())
}

/// The hash of an encoded command as if it were of [`OLDEST_COMMAND_VERSION`], whatever version
/// this build applies it as: a request sent again across an upgrade that raised the version (a
/// client retrying through the restart) is the same request. `version` is field 1, a one-byte
/// varint for every version applied, so it encodes first (`08 v`); the oldest hashes as the
/// builds that wrote it hashed it.
fn versionless_hash(encoded: &[u8]) -> u64 {
    match encoded {
        [0x08, v, rest @ ..] if (OLDEST_COMMAND_VERSION..=COMMAND_VERSION).contains(&u32::from(*v)) => {
            let mut h = Fnv::new();
            h.write(&[0x08, OLDEST_COMMAND_VERSION as u8]);
            h.write(rest);
            h.finish()
        }
        _ => command_hash(encoded),
    }
}

/// FNV-1a of an encoded command (the hash of one that does not decode).
pub fn command_hash(encoded: &[u8]) -> u64 {
    let mut h = Fnv::new();
    h.write(encoded);
    h.finish()
}

/// FNV-1a, 64 bit, fed incrementally: stable across builds and platforms.
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub(crate) fn write_u64(&mut self, n: u64) {
        self.write(&n.to_le_bytes());
    }

    /// Writes a length-prefixed byte string, so that concatenations cannot collide.
    pub(crate) fn write_bytes(&mut self, bytes: &[u8]) {
        self.write_u64(bytes.len() as u64);
        self.write(bytes);
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

/// Helpers for the fsm tests of every domain: an in-memory store fed entries one by one.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use latch_proto::internal::{
        compare, op, op_result, Compare, DeleteRange, DeleteResult, KeyValue, Op, OpResult, Put, PutResult,
        Txn, TxnResult,
    };
    use latch_proto::internal::{Acquire, CreateSession, LockMode, LockSpace};
    use redb::ReadableDatabase as _;

    /// Restores a snapshot stream into `store` at (index, term).
    pub(crate) fn restore_into(
        store: &mut Store,
        stream: &[u8],
        index: u64,
        term: u64,
    ) -> Result<Applied, FsmError> {
        let txn = store.db.begin_write().expect("a write transaction begins");
        let pos = snapshot::restore(&txn, &mut &stream[..], index, term, &[])?;
        txn.commit().expect("restore commits");
        store.index = pos.index;
        Ok(pos)
    }

    pub(crate) struct Store {
        pub(crate) db: redb::Database,
        /// Index of the last entry applied.
        pub(crate) index: u64,
        pub(crate) bounds: Bounds,
        /// The data of every entry applied, in order.
        pub(crate) log: Vec<Vec<u8>>,
    }

    impl Store {
        pub(crate) fn new() -> Store {
            let db = redb::Database::builder()
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .expect("an in-memory database opens");
            let txn = db.begin_write().expect("a write transaction begins");
            init(&txn).expect("init creates the fsm tables");
            txn.commit().expect("init commits");
            Store { db, index: 0, bounds: Bounds::default(), log: Vec::new() }
        }

        /// Applies `data` as the next entry and commits.
        pub(crate) fn apply_data(&mut self, data: &[u8]) -> Option<AppliedCommand> {
            self.try_apply_data(data).expect("apply_entry succeeds")
        }

        pub(crate) fn try_apply_data(&mut self, data: &[u8]) -> Result<Option<AppliedCommand>, FsmError> {
            self.index += 1;
            self.log.push(data.to_vec());
            let txn = self.db.begin_write().expect("a write transaction begins");
            let out = apply_entry(&txn, self.index, 1, data, &self.bounds)?;
            txn.commit().expect("the apply commits");
            Ok(out)
        }

        /// Applies a command with `body` and returns what it produced.
        pub(crate) fn apply_full(&mut self, id: &str, body: Body) -> AppliedCommand {
            let data = command(id, body).encode_to_vec();
            let applied = self.apply_data(&data).expect("a command entry yields an outcome");
            assert_eq!(applied.request_id, id, "apply_entry returns the command's request id");
            applied
        }

        /// Applies a command with `body` and returns its outcome.
        pub(crate) fn apply(&mut self, id: &str, body: Body) -> Outcome {
            self.apply_full(id, body).outcome
        }

        pub(crate) fn read<T>(
            &self,
            f: impl FnOnce(&ReadTransaction) -> Result<T, FsmError>,
        ) -> Result<T, FsmError> {
            f(&self.db.begin_read().expect("a read transaction begins"))
        }

        pub(crate) fn range(&self, req: Range) -> RangeResult {
            self.read(|t| range(t, &req, self.bounds.max_response_bytes)).expect("range succeeds").1
        }

        pub(crate) fn get(&self, key: &str) -> Option<KeyValue> {
            self.range(Range { key: key.into(), ..Default::default() }).kvs.pop()
        }

        pub(crate) fn applied(&self) -> Applied {
            self.read(applied).expect("applied succeeds")
        }

        pub(crate) fn hash(&self) -> u64 {
            self.read(state_hash).expect("state_hash succeeds")
        }

        /// The encoded snapshot stream of the current state.
        pub(crate) fn snapshot(&self) -> Vec<u8> {
            let mut out = Vec::new();
            self.read(|t| {
                snapshot::write::<()>(t, &mut |frame| {
                    out.extend_from_slice(&frame);
                    Ok(())
                })
            })
            .expect("a snapshot is written")
            .expect("the sink takes every frame");
            out
        }
    }

    /// Applies `entries` (at indexes 1, 2, …) in consecutive batches, a new one starting at
    /// each of `cuts`, each batch committed: every entry's answer, the last batch's position,
    /// and the store.
    pub(crate) fn apply_in_batches(
        entries: &[Vec<u8>],
        cuts: &[usize],
        bounds: Bounds,
    ) -> (Vec<Option<AppliedCommand>>, Applied, Store) {
        let store = Store::new();
        let (mut answers, mut position) = (Vec::new(), Applied::default());
        let mut starts: Vec<usize> = std::iter::once(0).chain(cuts.iter().copied()).collect();
        starts.push(entries.len());
        for pair in starts.windows(2) {
            let txn = store.db.begin_write().expect("a write transaction begins");
            let mut batch = Batch::begin(&txn, bounds).expect("a batch begins");
            for (i, entry) in entries.iter().enumerate().take(pair[1]).skip(pair[0]) {
                answers.push(batch.apply_entry(i as u64 + 1, 1, entry).expect("the entry applies"));
            }
            position = batch.finish().expect("the batch finishes");
            txn.commit().expect("the batch commits");
        }
        (answers, position, store)
    }

    pub(crate) fn command(id: &str, body: Body) -> Command {
        Command { version: COMMAND_VERSION, request_id: id.into(), body: Some(body) }
    }

    pub(crate) fn put_req(key: &str, value: &str) -> Put {
        Put { key: key.into(), value: value.into(), ..Default::default() }
    }

    pub(crate) fn put(key: &str, value: &str) -> Body {
        Body::Put(put_req(key, value))
    }

    /// Creates session `id` with a TTL of 10 s.
    pub(crate) fn create_session(id: &str) -> Body {
        Body::CreateSession(CreateSession { id: id.into(), name: String::new(), ttl_ms: 10_000 })
    }

    /// Acquires lock `name` for `session` in `mode`, waiting if `wait`, with a lock-delay of 5 s.
    pub(crate) fn acquire_req(name: &str, session: &str, mode: LockMode, wait: bool) -> Body {
        Body::Acquire(Acquire {
            space: LockSpace::Locks as i32,
            name: name.into(),
            session: session.into(),
            mode: mode as i32,
            wait,
            lock_delay_ms: 5_000,
            value: Vec::new(),
            max_waiters: 0,
            max_session_locks: 0,
            max_row_bytes: 0,
        })
    }

    pub(crate) fn del_req(key: &str, range_end: &[u8]) -> DeleteRange {
        DeleteRange { key: key.into(), range_end: range_end.to_vec(), ..Default::default() }
    }

    pub(crate) fn del(key: &str, range_end: &[u8]) -> Body {
        Body::DeleteRange(del_req(key, range_end))
    }

    pub(crate) fn txn(compare: Vec<Compare>, success: Vec<Op>, failure: Vec<Op>) -> Body {
        Body::Txn(Txn { compare, success, failure })
    }

    pub(crate) fn cmp(key: &str, result: compare::Result, target: compare::Target) -> Compare {
        Compare { result: result as i32, key: key.into(), target: Some(target) }
    }

    pub(crate) fn op_put(key: &str, value: &str) -> Op {
        Op { op: Some(op::Op::Put(put_req(key, value))) }
    }

    pub(crate) fn op_del(key: &str, range_end: &[u8]) -> Op {
        Op { op: Some(op::Op::DeleteRange(del_req(key, range_end))) }
    }

    pub(crate) fn op_get(key: &str) -> Op {
        Op { op: Some(op::Op::Range(Range { key: key.into(), ..Default::default() })) }
    }

    pub(crate) fn as_put(o: Outcome) -> PutResult {
        match o.result {
            Some(outcome::Result::Put(r)) => r,
            other => panic!("expected a put outcome, got {other:?}"),
        }
    }

    pub(crate) fn as_del(o: Outcome) -> DeleteResult {
        match o.result {
            Some(outcome::Result::DeleteRange(r)) => r,
            other => panic!("expected a delete_range outcome, got {other:?}"),
        }
    }

    pub(crate) fn as_txn(o: Outcome) -> TxnResult {
        match o.result {
            Some(outcome::Result::Txn(r)) => r,
            other => panic!("expected a txn outcome, got {other:?}"),
        }
    }

    pub(crate) fn as_rejected(o: Outcome) -> String {
        match o.result {
            Some(outcome::Result::Rejected(why)) => why,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    pub(crate) fn as_range(r: &OpResult) -> &RangeResult {
        match &r.result {
            Some(op_result::Result::Range(r)) => r,
            other => panic!("expected a range result, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use latch_proto::internal::{Op, Put, SnapshotChunk};
    use redb::ReadableDatabase as _;

    #[test]
    fn fresh_store_is_at_zero() {
        let s = Store::new();
        assert_eq!(s.applied(), Applied::default(), "a fresh store is at index 0, term 0, revision 0");
        let db = redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("an in-memory database opens");
        let read = db.begin_read().expect("a read transaction begins");
        assert_eq!(applied(&read).expect("applied works before init"), Applied::default());
        let (_, r) = range(&read, &Range::default(), 1024).expect("range works before init");
        assert!(r.kvs.is_empty());
    }

    #[test]
    fn every_domain_table_has_its_own_name() {
        let mut names = std::collections::BTreeSet::new();
        for domain in DOMAINS {
            for def in domain.tables() {
                assert!(names.insert(def.name()), "table {} is declared twice", def.name());
            }
        }
        assert!(!names.contains(FSM_META.name()), "fsm_meta is not a domain table");
    }

    /// Entries of every kind the request memory and the position see: request ids, retries of
    /// them (the same command, and another under the same id), commands without ids, empty
    /// entries, sessions, a lock held and waited for, and a session's close handing it on.
    fn mixed_entries() -> Vec<Vec<u8>> {
        use latch_proto::internal::{CloseSession, LockMode};
        let (session, acquire) =
            (create_session, |session: &str| acquire_req("the-lock", session, LockMode::Exclusive, true));
        let mut entries: Vec<Vec<u8>> = Vec::new();
        entries.push(command("s1", session("s1")).encode_to_vec());
        entries.push(command("", session("s2")).encode_to_vec());
        for i in 0..10 {
            let id = format!("req-{i:02}");
            let key = format!("k{i}");
            entries.push(command(&id, put(&key, "v")).encode_to_vec());
            entries.push(command(&id, put(&key, "v")).encode_to_vec());
            entries.push(command(&id, put(&key, "other")).encode_to_vec());
            entries.push(command("", put("plain", &key)).encode_to_vec());
            entries.push(Vec::new());
            if i == 3 {
                entries.push(command("lock-1", acquire("s1")).encode_to_vec());
                entries.push(command("lock-2", acquire("s2")).encode_to_vec());
                entries.push(command("lock-2", acquire("s2")).encode_to_vec());
            }
            if i == 6 {
                entries.push(
                    command("close-1", Body::CloseSession(CloseSession { id: "s1".into() })).encode_to_vec(),
                );
            }
        }
        entries.push(command("req-00", put("k0", "v")).encode_to_vec());
        entries
    }

    #[test]
    fn batches_write_what_their_entries_applied_one_at_a_time_write_wherever_they_are_cut() {
        // Members cut batches where their own timing falls: nothing may depend on where. The
        // memory's bound is small enough that a batch forgets rows it wrote itself.
        let bounds = Bounds { request_memory_bytes: 300, ..Bounds::default() };
        let entries = mixed_entries();
        let mut one_by_one = Store::new();
        one_by_one.bounds = bounds;
        let expected: Vec<_> = entries.iter().map(|e| one_by_one.apply_data(e)).collect();
        for cut in 0..=entries.len() {
            let (got, position, store) = apply_in_batches(&entries, &[cut], bounds);
            assert_eq!(got, expected, "batches cut at {cut} answer each entry as applying it alone does");
            assert_eq!(
                position,
                one_by_one.applied(),
                "cut at {cut}: the last batch's position is the state's"
            );
            assert_eq!(
                store.applied(),
                one_by_one.applied(),
                "cut at {cut}: the applied position is written"
            );
            assert_eq!(
                store.hash(),
                one_by_one.hash(),
                "cut at {cut}: the same state, request memory included"
            );
        }
        let (_, _, whole) = apply_in_batches(&entries, &[], bounds);
        let still_remembered = whole.read(|t| remembered(t, "req-01")).expect("a lookup");
        assert!(!still_remembered, "the memory's bound made the one batch forget rows it wrote");
        let row = whole
            .read(|t| locks::read(t, &locks::lock_key(latch_proto::internal::LockSpace::Locks, "the-lock")))
            .expect("the lock reads")
            .expect("the lock is held");
        let holders: Vec<_> = row.holders.iter().map(|h| h.session.as_str()).collect();
        assert_eq!(holders, ["s2"], "the close handed the lock to the waiter");
    }

    #[test]
    fn empty_entry_only_advances_applied_index_and_term() {
        let mut s = Store::new();
        s.apply("", put("a", "1"));
        let before = s.hash();
        assert_eq!(s.apply_data(&[]), None, "an empty entry yields no outcome");
        assert_eq!(s.applied(), Applied { index: 2, term: 1, revision: 1 });
        assert_eq!(s.hash(), before, "an empty entry changes no state");
    }

    #[test]
    fn entry_at_or_below_applied_index_is_out_of_order() {
        let mut s = Store::new();
        s.apply_data(&[]);
        let txn = s.db.begin_write().expect("a write transaction begins");
        let err =
            apply_entry(&txn, 1, 1, &[], &Bounds::default()).expect_err("re-applying index 1 must fail");
        assert!(matches!(err, FsmError::OutOfOrder { applied: 1, index: 1 }), "got {err}");
    }

    #[test]
    fn undecodable_command_is_rejected_and_writes_nothing() {
        let mut s = Store::new();
        let applied = s.apply_data(&[0xff, 0xff, 0xff]).expect("an outcome for garbage");
        assert_eq!(applied.request_id, "", "no request id can be read from garbage");
        assert!(as_rejected(applied.outcome).contains("undecodable"), "the rejection says why");
        assert_eq!(s.applied(), Applied { index: 1, term: 1, revision: 0 });
    }

    #[test]
    fn command_of_an_older_version_or_without_body_is_rejected() {
        let mut s = Store::new();
        let cmd = Command { version: 1, request_id: "v1".into(), body: Some(put("a", "1")) };
        let applied = s.apply_data(&cmd.encode_to_vec()).expect("an outcome");
        assert!(as_rejected(applied.outcome).contains("version 1"), "the rejection names the version");
        let cmd = Command { version: COMMAND_VERSION, request_id: "nobody".into(), body: None };
        let applied = s.apply_data(&cmd.encode_to_vec()).expect("an outcome");
        assert!(as_rejected(applied.outcome).contains("body"), "the rejection names the missing body");
        assert_eq!(s.applied().revision, 0, "rejected commands write nothing");
        assert_eq!(s.get("a"), None, "rejected commands write nothing");
    }

    #[test]
    fn a_command_of_a_later_version_stops_the_member_instead_of_being_rejected() {
        let mut s = Store::new();
        s.apply("", put("a", "1"));
        let cmd =
            Command { version: COMMAND_VERSION + 1, request_id: "next".into(), body: Some(put("a", "2")) };
        let index = s.applied().index + 1;
        match s.try_apply_data(&cmd.encode_to_vec()) {
            Err(FsmError::NewerVersion { index: at, version, newest }) => {
                assert_eq!(
                    (at, version, newest),
                    (index, COMMAND_VERSION + 1, COMMAND_VERSION),
                    "the error names the entry, its version and the newest this build applies"
                );
            }
            other => panic!(
                "a later version must stop the member (peers apply it: rejecting it diverges), got {other:?}"
            ),
        }
        let error = FsmError::NewerVersion { index, version: COMMAND_VERSION + 1, newest: COMMAND_VERSION }
            .to_string();
        let named = format!("versions {OLDEST_COMMAND_VERSION} to {COMMAND_VERSION}");
        assert!(error.contains(&named), "the error names the versions this build applies: {error}");
        assert_eq!(s.get("a").map(|kv| kv.value), Some(b"1".to_vec()), "nothing of the entry is written");
    }

    #[test]
    fn a_request_resent_across_the_version_upgrades_hashes_as_the_same_request() {
        let of = |version| {
            let cmd = Command { version, request_id: "r".into(), body: Some(put("k", "v")) };
            request_hash(&cmd, &cmd.encode_to_vec())
        };
        assert_eq!(of(3), of(2), "only the version differs: the same request");
        assert_eq!(of(4), of(2), "only the version differs: the same request");
        assert_eq!(of(5), of(2), "only the version differs: the same request");
        assert_eq!(of(6), of(2), "only the version differs: the same request");
        assert_eq!(of(7), of(2), "only the version differs: the same request");
        assert_eq!(of(8), of(2), "only the version differs: the same request");
        assert_eq!(of(9), of(2), "only the version differs: the same request");
        assert_ne!(of(COMMAND_VERSION + 1), of(2), "a version this build does not know is another request");
        let v2 = Command { version: 2, request_id: "r".into(), body: Some(put("k", "v")) }.encode_to_vec();
        assert_eq!(of(2), command_hash(&v2), "a version-2 command hashes as older builds hashed it");
    }

    #[test]
    fn retry_of_a_request_id_applies_once_and_returns_the_first_outcome() {
        let mut s = Store::new();
        let first = s.apply("req-1", put("a", "1"));
        s.apply("", put("b", "2"));
        let hash = s.hash();
        let again = s.apply_full("req-1", put("a", "1"));
        assert_eq!(again.outcome, first, "the retry returns the first outcome, revision included");
        assert_eq!(again.outcome.revision, 1);
        assert!(again.events.is_empty(), "a retry changes nothing, so it has no events");
        assert_eq!(s.hash(), hash, "the retry changes no state");
        assert_eq!(s.applied(), Applied { index: 3, term: 1, revision: 2 }, "the index advances");
    }

    /// From command version 6 the memory leaves out the keys of puts that are not sequential
    /// (the command's own, which a retry carries) and puts them back when it answers a retry:
    /// a put of a 4 KiB key is remembered in about a hundred bytes, not four thousand. A
    /// sequential put's key, the one it generated, is kept; a version-5 command is remembered
    /// whole, as the build that wrote it remembered it.
    #[test]
    fn a_retry_gets_its_own_put_keys_back_though_the_memory_left_them_out() {
        let mut s = Store::new();
        let long = "k".repeat(4096);
        let remembered = |s: &Store, id: &str| {
            s.read(|t| {
                let requests = open_read(t, crate::storage::schema::REQUESTS)?.expect("requests exists");
                Ok(requests.get(id.as_bytes())?.map(|v| v.value().len()))
            })
            .expect("reads")
            .expect("remembered")
        };

        let first = s.apply("long", put(&long, "v"));
        assert_eq!(as_put(first.clone()).key, long.as_bytes(), "the first answer names the key");
        assert!(remembered(&s, "long") < 200, "remembered in {} bytes", remembered(&s, "long"));
        assert_eq!(
            s.apply("long", put(&long, "v")),
            first,
            "the retry is answered as the first, key included"
        );

        let sequential = Op {
            op: Some(latch_proto::internal::op::Op::Put(Put { sequential: true, ..put_req("job/", "x") })),
        };
        let body = txn(Vec::new(), vec![op_put(&long, "w"), sequential.clone()], vec![sequential]);
        let first = s.apply("txn", body.clone());
        let keys = |o: Outcome| -> Vec<Vec<u8>> {
            as_txn(o)
                .results
                .into_iter()
                .filter_map(|r| match r.result {
                    Some(latch_proto::internal::op_result::Result::Put(p)) => Some(p.key),
                    _ => None,
                })
                .collect()
        };
        let generated = format!("job/{:020}", 0).into_bytes();
        assert_eq!(keys(first.clone()), [long.as_bytes().to_vec(), generated.clone()]);
        assert!(remembered(&s, "txn") < 200, "remembered in {} bytes", remembered(&s, "txn"));
        let retried = s.apply("txn", body);
        assert_eq!(retried, first, "the retry is answered as the first, both keys included");

        // A txn whose failure branch ran: its results answer that branch's ops.
        let never = cmp(
            "nobody",
            latch_proto::internal::compare::Result::Equal,
            latch_proto::internal::compare::Target::Version(7),
        );
        let other = "o".repeat(4096);
        let body =
            txn(vec![never], vec![op_put(&long, "never")], vec![op_put("short", "f"), op_put(&other, "f")]);
        let first = s.apply("failed", body.clone());
        assert_eq!(keys(first.clone()), [b"short".to_vec(), other.as_bytes().to_vec()]);
        assert!(remembered(&s, "failed") < 200, "remembered in {} bytes", remembered(&s, "failed"));
        assert_eq!(s.apply("failed", body), first, "the failure branch's keys are put back");
        // Answered from the memory outside an apply (a proposal a snapshot covered), with the
        // proposal's command: its keys are put back too.
        let data = command("long", put(&long, "v")).encode_to_vec();
        let hash = request_hash(&Command::decode(data.as_slice()).expect("decodes"), &data);
        let answer = s.read(|t| answer_of(t, "long", hash, &data)).expect("reads").expect("remembered");
        assert_eq!(as_put(answer).key, long.as_bytes(), "the proposal's key is put back");
        // Another command under the id is a conflict, with no keys to put back.
        assert!(
            matches!(s.apply("failed", put("x", "y")).result, Some(outcome::Result::Conflict(_))),
            "a conflict"
        );

        let v5 = Command { version: 5, request_id: "v5".into(), body: Some(put(&long, "v")) };
        s.apply_data(&v5.encode_to_vec());
        assert!(remembered(&s, "v5") > 4096, "a version-5 put is remembered whole");
        let retried = s.apply_data(&v5.encode_to_vec()).expect("answered").outcome;
        assert_eq!(as_put(retried).key, long.as_bytes(), "and answered whole");
    }

    /// A member applies without building events (its watches read the history): the same
    /// state, history included, as with them.
    #[test]
    fn applied_without_events_the_state_and_its_history_are_the_same() {
        let (mut with, mut without) = (Store::new(), Store::new());
        without.bounds.events = false;
        for s in [&mut with, &mut without] {
            s.apply("", put("a", "1"));
            s.apply("", put("b", "2"));
            s.apply("", create_session("s"));
            s.apply("r1", acquire_req("l", "s", latch_proto::internal::LockMode::Exclusive, true));
        }
        let deleted = without.apply_full("", del("a", b"z"));
        assert!(deleted.events.is_empty(), "no events built: {:?}", deleted.events);
        assert_eq!(with.apply_full("", del("a", b"z")).events.len(), 2, "two events built");
        let closed = without
            .apply_full("", Body::CloseSession(latch_proto::internal::CloseSession { id: "s".into() }));
        assert!(closed.events.is_empty(), "no events of sessions or locks built: {:?}", closed.events);
        let closed =
            with.apply_full("", Body::CloseSession(latch_proto::internal::CloseSession { id: "s".into() }));
        assert_eq!(closed.events.len(), 2, "the lock's and the session's end: {:?}", closed.events);
        assert_eq!(without.hash(), with.hash(), "the same state and history");
    }

    #[test]
    fn a_request_id_reused_for_another_command_is_a_conflict_and_writes_nothing() {
        let mut s = Store::new();
        s.apply("req-1", put("a", "1"));
        let hash = s.hash();
        let other = s.apply("req-1", put("a", "changed"));
        match other.result {
            Some(outcome::Result::Conflict(c)) => assert_eq!(c.first_applied_at, 1),
            r => panic!("expected a request conflict naming index 1, got {r:?}"),
        }
        assert_eq!(s.hash(), hash, "a conflicting command changes nothing");
        assert_eq!(s.get("a").map(|kv| kv.value), Some(b"1".to_vec()));
    }

    #[test]
    fn a_retry_whose_first_answer_carried_data_is_told_its_data_is_omitted_never_given_other_data() {
        let mut s = Store::new();
        s.apply("", put("a", "old"));
        let body = Body::Put(Put { prev_kv: true, ..put_req("a", "new") });
        let first = s.apply("with-prev", body.clone());
        assert!(!first.data_omitted, "the first answer is whole");
        assert_eq!(as_put(first).prev_kv.map(|kv| kv.value), Some(b"old".to_vec()), "… with its data");
        let retry = s.apply("with-prev", body);
        assert!(retry.data_omitted, "a retry is told the data is not kept");
        assert_eq!(retry.revision, 2, "… and the revision it was applied at");
        assert_eq!(as_put(retry).prev_kv, None, "… and never given a value");
        assert_eq!(s.get("a").map(|kv| kv.version), Some(2), "applied once");

        let cas = txn(
            vec![cmp(
                "a",
                latch_proto::internal::compare::Result::Equal,
                latch_proto::internal::compare::Target::Value(b"new".to_vec()),
            )],
            vec![op_put("b", "1"), op_get("a")],
            vec![],
        );
        let first = as_txn(s.apply("cas", cas.clone()));
        assert!(first.succeeded);
        let retry = s.apply("cas", cas);
        assert!(retry.data_omitted, "a txn with a range has data to omit");
        assert!(as_txn(retry).succeeded, "a retried txn still says whether its compares held");
    }

    #[test]
    fn what_is_remembered_does_not_depend_on_a_members_response_bound() {
        let mut wide = Store::new();
        let mut narrow = Store::new();
        narrow.bounds.max_response_bytes = 10;
        for s in [&mut wide, &mut narrow] {
            s.bounds.request_memory_bytes = 600;
            for i in 0..30 {
                s.apply("", put(&format!("k{i:02}"), "some value"));
            }
        }
        for i in 0..40 {
            let body = txn(
                vec![],
                vec![
                    op_get("k"),
                    Op {
                        op: Some(latch_proto::internal::op::Op::Range(Range {
                            key: b"k".to_vec(),
                            range_end: b"l".to_vec(),
                            ..Default::default()
                        })),
                    },
                    op_put("z", &i.to_string()),
                ],
                vec![],
            );
            let (a, b) =
                (wide.apply(&format!("t{i:03}"), body.clone()), narrow.apply(&format!("t{i:03}"), body));
            assert_eq!(a.revision, b.revision);
            assert_eq!(
                wide.hash(),
                narrow.hash(),
                "after txn {i}, members with other response bounds differ"
            );
        }
    }

    #[test]
    fn the_request_memory_forgets_the_oldest_ids_beyond_its_byte_bound() {
        let mut s = Store::new();
        s.bounds.request_memory_bytes = 2_000;
        for i in 0..60 {
            s.apply(&format!("req-{i:04}"), put("a", &i.to_string()));
        }
        let (rows, total) = s
            .read(|t| {
                let requests = open_read(t, crate::storage::schema::REQUESTS)?.expect("requests exists");
                let meta = open_read(t, crate::storage::schema::REQUESTS_META)?.expect("meta exists");
                let mut sum = 0;
                let mut ids = Vec::new();
                for row in requests.iter()? {
                    let (k, v) = row?;
                    sum += requests::counted_bytes(k.value(), v.value())?;
                    ids.push(String::from_utf8_lossy(k.value()).into_owned());
                }
                let stored = meta
                    .get(crate::storage::schema::REQUESTS_META_BYTES.as_bytes())?
                    .map(|v| u64::from_be_bytes(v.value().try_into().expect("8 bytes")));
                assert_eq!(stored, Some(sum), "requests_meta/bytes is the sum of the rows");
                Ok((ids, sum))
            })
            .expect("the request tables read");
        assert!(total <= 2_000, "the memory holds {total} bytes, over its bound of 2000");
        assert!(rows.len() < 60 && rows.len() > 5, "some ids are remembered, the oldest forgotten: {rows:?}");
        assert_eq!(rows.last().map(String::as_str), Some("req-0059"), "the newest is remembered");
        // A forgotten id is applied again; a remembered one is not.
        let before = s.applied().revision;
        s.apply("req-0000", put("a", "0"));
        assert_eq!(s.applied().revision, before + 1, "a forgotten id is applied again");
        let still = s.apply("req-0059", put("a", "59"));
        assert!(matches!(still.result, Some(outcome::Result::Put(_))), "a remembered id is answered");
        assert_eq!(s.applied().revision, before + 1, "… and not applied again");
    }

    /// From command version 9 a refusal's text counts as a fixed allowance against the memory's
    /// bound (two builds that word it differently forget the same ids), and a row holds no more
    /// than it counts; a row of an older version counts its whole length, as the build that
    /// wrote it counted; the total is their sum.
    #[test]
    fn a_refusals_text_counts_by_its_length_only_in_rows_before_version_9() {
        let mut s = Store::new();
        let refused = |version, id: &str, body| Command { version, request_id: id.into(), body };
        s.apply_data(&refused(8, "o8", Some(put("", "x"))).encode_to_vec());
        s.apply_data(&refused(COMMAND_VERSION, "n1", Some(put("", "x"))).encode_to_vec());
        s.apply_data(&refused(COMMAND_VERSION, "n2", None).encode_to_vec());
        let rows = s
            .read(|t| {
                let requests = open_read(t, crate::storage::schema::REQUESTS)?.expect("requests exists");
                let meta = open_read(t, crate::storage::schema::REQUESTS_META)?.expect("meta exists");
                let mut rows = std::collections::BTreeMap::new();
                for row in requests.iter()? {
                    let (k, v) = row?;
                    let text = match latch_proto::internal::Remembered::decode(v.value())
                        .expect("a row decodes")
                        .outcome
                    {
                        Some(Outcome { result: Some(outcome::Result::Rejected(text)), .. }) => text,
                        other => panic!("a remembered refusal, not {other:?}"),
                    };
                    let held = (2 * k.value().len() + 8 + v.value().len()) as u64;
                    let id = String::from_utf8_lossy(k.value()).into_owned();
                    rows.insert(id, (requests::counted_bytes(k.value(), v.value())?, held, text));
                }
                let total = meta
                    .get(crate::storage::schema::REQUESTS_META_BYTES.as_bytes())?
                    .map(|v| v.value().to_vec());
                let sum: u64 = rows.values().map(|r| r.0).sum();
                assert_eq!(
                    total,
                    Some(sum.to_be_bytes().to_vec()),
                    "requests_meta/bytes is the sum of what the rows count"
                );
                Ok(rows)
            })
            .expect("the request tables read");
        let (old_counted, old_held, _) = &rows["o8"];
        assert_eq!(old_counted, old_held, "a version-8 row counts its whole length, text included");
        let ((one, one_held, one_text), (two, two_held, two_text)) = (&rows["n1"], &rows["n2"]);
        assert_ne!(
            one_text.len(),
            two_text.len(),
            "two refusals of different lengths: {one_text:?}, {two_text:?}"
        );
        assert_eq!(one, two, "version-{COMMAND_VERSION} rows count the same whatever their refusal says");
        assert!(one >= one_held && two >= two_held, "a row holds no more than it counts: {rows:?}");
    }

    #[test]
    fn the_members_compare_every_domain_but_the_request_memory_in_snapshot_order() {
        let names = |domains: &[&dyn Domain]| domains.iter().map(|d| d.name()).collect::<Vec<_>>();
        let mut expected = names(&DOMAINS);
        expected.retain(|name| *name != requests::RequestsDomain.name());
        assert_eq!(names(&CHECKED_DOMAINS), expected, "CHECKED_DOMAINS is DOMAINS less the request memory");
    }

    #[test]
    fn a_check_points_hash_gives_up_once_told_to_stop() {
        let mut s = Store::new();
        let txn = s.db.begin_write().expect("a write transaction begins");
        for i in 0..5_000u64 {
            let cmd = command(&format!("r{i}"), put(&format!("k{i:05}"), "v")).encode_to_vec();
            apply_entry(&txn, i + 1, 1, &cmd, &s.bounds).expect("applies");
        }
        txn.commit().expect("commits");
        s.index = 5_000;
        let unless =
            |stop: bool| s.read(|t| checked_state_hash_unless(t, &AtomicBool::new(stop))).expect("hashes");
        assert_eq!(
            unless(false),
            Some(s.read(checked_state_hash).expect("hashes")),
            "not stopped: the whole hash"
        );
        assert_eq!(unless(true), None, "stopped: no hash of part of the state");
    }

    #[test]
    fn snapshot_then_restore_gives_the_same_state() {
        let mut s = Store::new();
        s.apply("p1", put("a", "1"));
        s.apply("", put("b", "2"));
        s.apply("d1", del("a", b""));
        s.apply("p2", put("c", "3"));
        let stream = s.snapshot();

        let mut other = Store::new();
        other.apply("", put("stale", "x"));
        other.apply("gone", put("a", "x"));
        let pos = restore_into(&mut other, &stream, 4, 1).expect("restore succeeds");

        assert_eq!(pos, s.applied(), "restore returns the snapshot's position");
        assert_eq!(other.applied(), s.applied());
        assert_eq!(other.hash(), s.hash(), "equal state gives an equal hash");
        assert_eq!(other.get("stale"), None, "restore clears the old state");
        // The remembered ids came along: a retry on the restored store is answered, not applied.
        let retry = other.apply("p2", put("c", "3"));
        assert_eq!(retry.revision, 4);
        assert_eq!(other.applied().revision, 4);
        assert_ne!(other.hash(), Store::new().hash(), "different states hash differently");
    }

    #[test]
    fn a_snapshot_of_many_rows_comes_in_bounded_chunks() {
        let mut s = Store::new();
        let value = "v".repeat(10_000);
        for i in 0..100 {
            s.apply("", put(&format!("k{i:03}"), &value));
        }
        let stream = s.snapshot();
        let mut input = &stream[..];
        let mut chunks = 0;
        while !input.is_empty() {
            let len = u32::from_be_bytes(input[..4].try_into().expect("4 bytes")) as usize;
            assert!(
                len < 2 * snapshot::CHUNK_BYTES,
                "a chunk of {len} bytes, expected about {}",
                snapshot::CHUNK_BYTES
            );
            SnapshotChunk::decode(&input[4..4 + len]).expect("each frame is a chunk");
            input = &input[4 + len..];
            chunks += 1;
        }
        assert!(chunks >= 5, "1 MB of rows should take several chunks, took {chunks}");
        let mut other = Store::new();
        restore_into(&mut other, &stream, 100, 1).expect("restore succeeds");
        assert_eq!(other.hash(), s.hash());
    }

    #[test]
    fn restore_and_verify_reject_garbage_truncation_tampering_and_another_position() {
        let mut s = Store::new();
        s.apply("id", put("a", "1"));
        s.apply("", put("b", "zzzz"));
        let stream = s.snapshot();
        let hash = Store::new().hash();
        let cases: Vec<(&str, Vec<u8>, u64, &str)> = vec![
            ("garbage", vec![0, 0, 0, 3, 0xff, 0x01, 0x02], 2, "undecodable"),
            ("truncated", stream[..stream.len() - 3].to_vec(), 2, "truncated"),
            ("no end", stream[..stream.len() - 20].to_vec(), 2, "snapshot"),
            ("another position", stream.clone(), 3, "index 2"),
            ("trailing bytes", [stream.clone(), vec![0]].concat(), 2, "after the end"),
            (
                "tampered",
                {
                    let mut t = stream.clone();
                    let at = t.windows(4).position(|w| w == b"zzzz").expect("b's value is in the stream");
                    t[at] = b'y';
                    t
                },
                2,
                "checksum",
            ),
        ];
        snapshot::verify(&mut &stream[..], 2, 1).expect("a whole snapshot checks");
        for (what, bytes, index, says) in cases {
            let checked = snapshot::verify(&mut &bytes[..], index, 1).expect_err(what);
            assert!(
                matches!(&checked, FsmError::Corrupt(m) if m.contains(says)),
                "{what}: verify: expected {says:?} in {checked}"
            );
            let mut other = Store::new();
            let err = restore_into(&mut other, &bytes, index, 1).expect_err(what);
            assert!(
                matches!(&err, FsmError::Corrupt(m) if m.contains(says)),
                "{what}: expected {says:?} in {err}"
            );
            assert_eq!(other.hash(), hash, "{what}: a failed restore leaves nothing behind");
        }
    }

    #[test]
    fn corrupt_rows_give_corrupt_errors_naming_table_and_key() {
        let mut s = Store::new();
        s.apply("id", put("a", "1"));
        {
            let txn = s.db.begin_write().expect("a write transaction begins");
            txn.open_table(crate::storage::schema::KV)
                .expect("kv opens")
                .insert(b"bad".as_slice(), [0xffu8, 0xff].as_slice())
                .expect("insert");
            txn.open_table(crate::storage::schema::REQUESTS)
                .expect("requests opens")
                .insert(b"id".as_slice(), [0xffu8, 2].as_slice())
                .expect("insert");
            txn.commit().expect("commit");
        }
        let all = Range { key: vec![0], range_end: vec![0], ..Default::default() };
        let err = s.read(|t| range(t, &all, 1 << 20)).expect_err("reading a corrupt row fails");
        assert!(
            matches!(&err, FsmError::Corrupt(m) if m.contains("table kv") && m.contains("bad")),
            "got {err}"
        );
        let err = s
            .try_apply_data(&command("", put("bad", "x")).encode_to_vec())
            .expect_err("overwriting a corrupt row fails");
        assert!(matches!(&err, FsmError::Corrupt(m) if m.contains("bad")), "got {err}");
        let err = s
            .try_apply_data(&command("id", put("a", "x")).encode_to_vec())
            .expect_err("a retry of a corrupt request record fails");
        assert!(
            matches!(&err, FsmError::Corrupt(m) if m.contains("table requests") && m.contains("id")),
            "got {err}"
        );
        let stream = s.snapshot();
        let err = restore_into(&mut Store::new(), &stream, 1, 1).expect_err("restoring corrupt rows fails");
        assert!(matches!(err, FsmError::Corrupt(_)), "got {err}");
    }
}
