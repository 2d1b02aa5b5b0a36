//! The history of the key-value state (MVCC): every change of every revision, kept until
//! compacted, for watches (catch-up and resume) and for reads at a past revision.
//!
//! Invariants:
//! - Every event an [`Apply`](super::apply::Apply) emits is written here in the same
//!   transaction, as row `(revision, n)` (n counts the command's events from 0) holding the
//!   key as written and what it held before (`prev_kv`, absent when it did not exist), however
//!   the command was asked to answer. So the rows of one revision are exactly its changes, in
//!   order, and every member holds the same rows (the table is replicated state: in snapshots
//!   and in the state hash).
//! - `compact` (in `history_meta`) never decreases and never exceeds the store revision; it
//!   moves only by a `Compact` command. Revisions at or below it are gone for every reader at
//!   once, whatever rows are still stored: a read or a watch from there is refused
//!   ([`RevisionError::Compacted`]), never answered from partial history.
//! - The rows at or below `compact` are removed in steps with each applied entry
//!   ([`purge_step`]: [`PURGE_STEP`] rows plus as many as the entry wrote, so that the backlog
//!   shrinks in rows however many the writes add, and more, up to [`PURGE_EXTRA_ROWS`], until
//!   twice the bytes the entry wrote are freed): a compaction of any size never stalls the
//!   writes behind it.
//!   Deterministic (it depends on the state alone), so members stay identical.
//! - Sessions, locks and elections record their changes here too, in spaces of their own
//!   (`Space`): a session's creation and end, a lock's or election's row after each revision
//!   that changed it (once per revision, its final state), so that they are watched like keys.
//! - A read at revision R is the current state with every change after R undone: the first
//!   change after R to a key carries what the key held at R. Its cost grows with the history
//!   after R (documented in docs/watches.md).

use std::collections::BTreeMap;
use std::ops::Bound;

use super::tables::Tables;
use latch_proto::internal::{history_event, HistoryEvent, KeyValue};
use prost::Message;
use redb::{ReadTransaction, ReadableTable, Table, TableHandle};

use super::{open_read, Applied, Domain, FsmError, TableDef};
use crate::storage::schema::{FSM_META, HISTORY, HISTORY_META, HISTORY_META_COMPACT};

/// History rows removed with each applied entry, beyond as many as the entry wrote.
pub const PURGE_STEP: usize = 64;
/// Rows an entry may remove beyond that to free twice the bytes it wrote (see [`purge_step`]).
pub const PURGE_EXTRA_ROWS: usize = 16 * PURGE_STEP;

/// A revision a read or a watch cannot be served at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RevisionError {
    #[error(
        "revision {asked} is compacted: the history starts after revision {compact_revision} \
         (the compact revision)"
    )]
    Compacted { asked: i64, compact_revision: i64 },
    #[error("revision {asked} is in the future: the store is at revision {current}")]
    Future { asked: i64, current: i64 },
}

/// The history domain's part in the seam.
pub(crate) struct HistoryDomain;

impl Domain for HistoryDomain {
    fn name(&self) -> &'static str {
        "history"
    }

    fn tables(&self) -> &'static [TableDef] {
        &[HISTORY, HISTORY_META]
    }

    fn check_row(&self, table: &str, key: &[u8], value: &[u8], at: &Applied) -> Result<(), FsmError> {
        if table == HISTORY_META.name() {
            let revision = decode_u64(table, key, value)?;
            if key != HISTORY_META_COMPACT.as_bytes() || revision > at.revision as u64 {
                return Err(FsmError::Corrupt(format!(
                    "table {table}: row {:?} = {revision} is not a compact revision at or below {}",
                    key.escape_ascii().to_string(),
                    at.revision
                )));
            }
            return Ok(());
        }
        let (revision, _) = split_key(key)?;
        if revision < 1 || revision > at.revision {
            return Err(FsmError::Corrupt(format!(
                "table history: a row of revision {revision}, outside 1..={}",
                at.revision
            )));
        }
        decode_event(key, value).map(|_| ())
    }
}

/// What a change is to: a key, or a session's, lock's or election's state.
pub use history_event::Space;

/// One change as the history keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub revision: i64,
    pub space: Space,
    pub delete: bool,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

/// Writes the `n`-th change of `revision`; the bytes of the row (see [`row_bytes`]).
pub(crate) fn record(
    table: &mut Table<&'static [u8], &'static [u8]>,
    revision: i64,
    n: u32,
    space: Space,
    delete: bool,
    kv: &KeyValue,
    prev_kv: Option<&KeyValue>,
) -> Result<u64, FsmError> {
    let kind = if delete { history_event::Kind::Delete } else { history_event::Kind::Put };
    let row = HistoryEvent {
        kind: kind as i32,
        kv: Some(kv.clone()),
        prev_kv: prev_kv.cloned(),
        space: space as i32,
    };
    let value = row.encode_to_vec();
    table.insert(row_key(revision, n).as_slice(), value.as_slice())?;
    Ok(row_bytes(value.len()))
}

/// What a history row counts toward `--history-retention-bytes`: its key and its value (not
/// the file's own overhead).
pub fn row_bytes(value_len: usize) -> u64 {
    (ROW_KEY_BYTES + value_len) as u64
}

/// The history's size as a member's state holds it, by a scan (for tests and the simulator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// What `fsm_meta` counts, if it counts at the applied index (`None` before the first batch
    /// of a state that did not count).
    pub counted: Option<u64>,
    /// The bytes of every row stored.
    pub stored: u64,
    /// The bytes of the rows after the compact revision.
    pub retained: u64,
    pub compact_revision: i64,
}

pub fn measure(txn: &ReadTransaction) -> Result<Measured, FsmError> {
    let counted = match open_read(txn, FSM_META)? {
        Some(meta) => super::counted_history_bytes(&meta)?,
        None => None,
    };
    let compact_revision = compact_revision_read(txn)?;
    let (mut stored, mut retained) = (0u64, 0u64);
    if let Some(history) = open_read(txn, HISTORY)? {
        for row in history.iter()? {
            let (key, value) = row?;
            let bytes = row_bytes(value.value().len());
            stored += bytes;
            if split_key(key.value())?.0 > compact_revision {
                retained += bytes;
            }
        }
    }
    Ok(Measured { counted, stored, retained, compact_revision })
}

/// The bytes of every history row stored ([`row_bytes`] summed), by a scan: for a state that
/// does not count them yet.
pub(crate) fn count_bytes<T: ReadableTable<&'static [u8], &'static [u8]>>(
    history: &T,
) -> Result<u64, FsmError> {
    let mut bytes = 0u64;
    for row in history.iter()? {
        let (_, value) = row?;
        bytes = bytes.saturating_add(row_bytes(value.value().len()));
    }
    Ok(bytes)
}

/// The compact revision (0 when nothing was compacted).
pub fn compact_revision<T: ReadableTable<&'static [u8], &'static [u8]>>(meta: &T) -> Result<i64, FsmError> {
    match meta.get(HISTORY_META_COMPACT.as_bytes())? {
        Some(v) => Ok(decode_u64("history_meta", HISTORY_META_COMPACT.as_bytes(), v.value())? as i64),
        None => Ok(0),
    }
}

/// The compact revision as seen by a read transaction.
pub fn compact_revision_read(txn: &ReadTransaction) -> Result<i64, FsmError> {
    match open_read(txn, HISTORY_META)? {
        Some(meta) => compact_revision(&meta),
        None => Ok(0),
    }
}

/// Checks that history can answer for revision `asked` (> 0) with the store at `current`.
pub fn check_revision(asked: i64, current: i64, compact_revision: i64) -> Result<(), RevisionError> {
    if asked > current {
        return Err(RevisionError::Future { asked, current });
    }
    if asked <= compact_revision {
        return Err(RevisionError::Compacted { asked, compact_revision });
    }
    Ok(())
}

/// Applies a `Compact`: forgets revisions up to `revision` (the rows go in later steps).
/// Refused, writing nothing, when `revision` is in the future or already compacted.
pub(crate) fn compact(
    tables: &Tables,
    revision: i64,
    current: i64,
) -> Result<Result<i64, RevisionError>, FsmError> {
    let mut meta = tables.open(HISTORY_META)?;
    let compacted = compact_revision(&*meta)?;
    if revision > current {
        return Ok(Err(RevisionError::Future { asked: revision, current }));
    }
    if revision <= compacted {
        return Ok(Err(RevisionError::Compacted { asked: revision, compact_revision: compacted }));
    }
    meta.insert(HISTORY_META_COMPACT.as_bytes(), (revision as u64).to_be_bytes().as_slice())?;
    Ok(Ok(revision))
}

/// What one [`purge_step`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Purged {
    /// The bytes of the rows removed ([`row_bytes`]).
    pub(crate) bytes: u64,
    /// Whether rows at or below the compact revision are left.
    pub(crate) backlog: bool,
}

/// Removes the oldest rows at or below the compact revision: `rows` of them, and more (up to
/// [`PURGE_EXTRA_ROWS`]) until `bytes` are freed. Called once per applied entry with
/// [`PURGE_STEP`] plus the rows the entry wrote and twice their bytes, so that a compaction's
/// backlog shrinks in rows whatever the writes do, and in bytes too unless an entry writes more
/// than the extra rows hold (old rows a thousandth the size of new ones).
pub(crate) fn purge_step(tables: &Tables, rows: usize, bytes: u64) -> Result<Purged, FsmError> {
    let compacted = compact_revision(&*tables.open(HISTORY_META)?)?;
    if compacted == 0 {
        return Ok(Purged::default());
    }
    let mut table = tables.open(HISTORY)?;
    let end = row_key(compacted.saturating_add(1), 0);
    let most = rows.saturating_add(PURGE_EXTRA_ROWS);
    let mut purged = Purged::default();
    let mut doomed: Vec<Vec<u8>> = Vec::new();
    for row in table.range::<&[u8]>(..end.as_slice())? {
        if doomed.len() >= rows && (purged.bytes >= bytes || doomed.len() >= most) {
            purged.backlog = true;
            break;
        }
        let (key, value) = row?;
        purged.bytes = purged.bytes.saturating_add(row_bytes(value.value().len()));
        doomed.push(key.value().to_vec());
    }
    for key in doomed {
        table.remove(key.as_slice())?;
    }
    Ok(purged)
}

/// The changes of revisions `from..=to`, in order, read from `txn`, and the revision they
/// cover through: `to`, or less when `max_bytes` of rows were read first (it stops at a
/// revision's boundary, never inside one), so that a caller can go on from the revision after.
/// The caller checked `from` against the compact revision in the same transaction.
pub fn changes(
    txn: &ReadTransaction,
    from: i64,
    to: i64,
    max_bytes: usize,
) -> Result<(Vec<Change>, i64), FsmError> {
    let (parts, through) = parts(txn, from, to, max_bytes, usize::MAX)?;
    let changes = parts
        .into_iter()
        .filter_map(|p| match p {
            Part::Change(c) => Some(c),
            Part::Oversized { .. } => None,
        })
        .collect();
    Ok((changes, through))
}

/// What [`parts`] reads: a change, or a revision whose rows are more than the caller holds at
/// once (read it with [`rows_of`], a step at a time).
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Change(Change),
    Oversized { revision: i64 },
}

impl Part {
    pub fn revision(&self) -> i64 {
        match self {
            Part::Change(c) => c.revision,
            Part::Oversized { revision } => *revision,
        }
    }
}

/// As [`changes`], except that a revision whose rows pass `max_revision_bytes` is not held: it
/// is one [`Part::Oversized`] in its place, and the step ends there (through that revision; the
/// rest of its rows are not read). So what one call reads and holds is at most about
/// `max_bytes + max_revision_bytes`, whatever one revision wrote (a delete of a large range, a
/// session's end with many keys).
pub fn parts(
    txn: &ReadTransaction,
    from: i64,
    to: i64,
    max_bytes: usize,
    max_revision_bytes: usize,
) -> Result<(Vec<Part>, i64), FsmError> {
    let mut out: Vec<Part> = Vec::new();
    let Some(table) = open_read(txn, HISTORY)? else { return Ok((out, to)) };
    if from > to {
        return Ok((out, to));
    }
    let (start, end) = (row_key(from, 0), row_key(to.saturating_add(1), 0));
    let mut bytes = 0usize;
    let mut current: Option<Reading> = None;
    for row in table.range::<&[u8]>(start.as_slice()..end.as_slice())? {
        let (k, v) = row?;
        let (revision, _) = split_key(k.value())?;
        let reading = match current.as_mut() {
            Some(r) if r.revision == revision => r,
            _ => {
                // Every revision in `out` is whole: a step may end here.
                if let Some(last) = out.last().map(Part::revision).filter(|_| bytes >= max_bytes) {
                    return Ok((out, last));
                }
                current.insert(Reading { revision, first: out.len(), held: 0 })
            }
        };
        let len = v.value().len();
        reading.held += len;
        if reading.held > max_revision_bytes {
            out.truncate(reading.first);
            out.push(Part::Oversized { revision });
            return Ok((out, revision));
        }
        bytes += len;
        out.push(Part::Change(decode_event(k.value(), v.value())?));
    }
    Ok((out, to))
}

/// The revision [`parts`] is reading: where its parts start in the output, and the bytes of
/// its rows so far.
struct Reading {
    revision: i64,
    first: usize,
    held: usize,
}

/// The changes of revision `revision` from its `n`-th on, about `max_bytes` of them (at least
/// one row when there is one), and the index of the next row of the revision, `None` when these
/// were its last. The caller checked `revision` against the compact revision in the same
/// transaction.
pub fn rows_of(
    txn: &ReadTransaction,
    revision: i64,
    n: u32,
    max_bytes: usize,
) -> Result<(Vec<Change>, Option<u32>), FsmError> {
    let mut out = Vec::new();
    let Some(table) = open_read(txn, HISTORY)? else { return Ok((out, None)) };
    let (start, end) = (row_key(revision, n), row_key(revision.saturating_add(1), 0));
    let mut bytes = 0usize;
    for row in table.range::<&[u8]>(start.as_slice()..end.as_slice())? {
        let (k, v) = row?;
        if bytes >= max_bytes {
            let (_, next) = split_key(k.value())?;
            return Ok((out, Some(next)));
        }
        bytes += v.value().len();
        out.push(decode_event(k.value(), v.value())?);
    }
    Ok((out, None))
}

/// Most bytes of keys one read at a past revision holds (the keys changed since it, see
/// [`changed_since`]); a read that would hold more is refused ([`FsmError::OverLimit`]).
pub const PAST_READ_KEY_BYTES: usize = 64 * 1024 * 1024;
/// What [`changed_since`] counts for each key it holds besides the key's bytes: the row key
/// and the map's own overhead, about.
const KEY_OVERHEAD_BYTES: usize = 48;

/// The keys `select` accepts that changed after `revision` (checked by the caller), each with
/// where its first later change is: that change's `prev_kv` ([`held_before`]) is what the key
/// held at `revision`. Keys not in the map hold at `revision` what they hold now. Only keys are
/// decoded and kept in memory, at most `max_bytes` of them (else [`FsmError::OverLimit`]).
pub(crate) fn changed_since<H>(
    history: &H,
    revision: i64,
    select: impl Fn(&[u8]) -> bool,
    max_bytes: usize,
) -> Result<BTreeMap<Vec<u8>, [u8; 12]>, FsmError>
where
    H: ReadableTable<&'static [u8], &'static [u8]>,
{
    let mut then: BTreeMap<Vec<u8>, [u8; 12]> = BTreeMap::new();
    let mut held = 0usize;
    let start = row_key(revision.saturating_add(1), 0);
    for row in history.range::<&[u8]>((Bound::Included(start.as_slice()), Bound::Unbounded))? {
        let (k, v) = row?;
        let at = <[u8; 12]>::try_from(k.value())
            .map_err(|_| FsmError::Corrupt("table history: a key of another length".into()))?;
        let change = RowKey::decode(v.value()).map_err(|e| undecodable(&at, &e))?;
        let Some(key) = change.kv.map(|kv| kv.key) else {
            return Err(FsmError::Corrupt(format!("table history, row {}: no kv", row_name(&at))));
        };
        if change.space == Space::Kv as i32 && select(&key) && !then.contains_key(&key) {
            held += key.len() + KEY_OVERHEAD_BYTES;
            if held > max_bytes {
                return Err(FsmError::OverLimit(format!(
                    "a read at revision {revision} would undo changes to more than {max_bytes} bytes of \
                     keys changed since: read a later revision or a narrower range"
                )));
            }
            then.insert(key, at);
        }
    }
    Ok(then)
}

/// How much of a key's previous kv a read at a past revision needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    /// Whether it existed only (counted, not returned): the kv returned is empty.
    Exists,
    /// Everything but the value (`keys_only`).
    NoValue,
    Full,
}

/// What the change at `at` (a row of [`changed_since`]) says its key held before it, decoded
/// as far as `detail` asks.
pub(crate) fn held_before<H>(history: &H, at: &[u8; 12], detail: Detail) -> Result<Option<KeyValue>, FsmError>
where
    H: ReadableTable<&'static [u8], &'static [u8]>,
{
    let Some(v) = history.get(at.as_slice())? else {
        return Err(FsmError::Corrupt(format!(
            "table history: row {:?} vanished while read",
            split_key(at)?
        )));
    };
    let corrupt = |e: prost::DecodeError| undecodable(at, &e);
    match detail {
        Detail::Full => Ok(decode_event(at, v.value())?.prev_kv),
        Detail::Exists => {
            Ok(Existed::decode(v.value()).map_err(corrupt)?.prev_kv.map(|_| KeyValue::default()))
        }
        Detail::NoValue => Ok(HeldNoValue::decode(v.value()).map_err(corrupt)?.prev_kv.map(|kv| KeyValue {
            key: kv.key,
            value: Vec::new(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            session: kv.session,
        })),
    }
}

fn undecodable(at: &[u8; 12], e: &prost::DecodeError) -> FsmError {
    FsmError::Corrupt(format!("table history, row {}: undecodable HistoryEvent: {e}", row_name(at)))
}

/// A row key as `(revision, n)`, for error messages.
fn row_name(at: &[u8; 12]) -> String {
    match split_key(at) {
        Ok((revision, n)) => format!("({revision}, {n})"),
        Err(_) => at.escape_ascii().to_string(),
    }
}

// Partial views of a `HistoryEvent` row (same tags as log.proto's): a past read decodes no
// more of a row than it needs, and never a value it will not return.

/// A row's key and space.
#[derive(Clone, PartialEq, prost::Message)]
struct RowKey {
    #[prost(message, optional, tag = "2")]
    kv: Option<KeyOnly>,
    #[prost(int32, tag = "4")]
    space: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct KeyOnly {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
}

/// Whether the row's key existed before it.
#[derive(Clone, PartialEq, prost::Message)]
struct Existed {
    #[prost(message, optional, tag = "3")]
    prev_kv: Option<Nothing>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Nothing {}

/// The previous kv without its value.
#[derive(Clone, PartialEq, prost::Message)]
struct HeldNoValue {
    #[prost(message, optional, tag = "3")]
    prev_kv: Option<KvNoValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct KvNoValue {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(int64, tag = "3")]
    create_revision: i64,
    #[prost(int64, tag = "4")]
    mod_revision: i64,
    #[prost(int64, tag = "5")]
    version: i64,
    #[prost(string, tag = "6")]
    session: String,
}

/// A history row's key: its revision (8 bytes) and its index in the revision (4).
const ROW_KEY_BYTES: usize = 12;

fn row_key(revision: i64, n: u32) -> [u8; ROW_KEY_BYTES] {
    let mut key = [0u8; ROW_KEY_BYTES];
    key[..8].copy_from_slice(&(revision.max(0) as u64).to_be_bytes());
    key[8..].copy_from_slice(&n.to_be_bytes());
    key
}

fn split_key(key: &[u8]) -> Result<(i64, u32), FsmError> {
    let (Ok(rev), Ok(n)) = (
        <[u8; 8]>::try_from(&key[..key.len().min(8)]),
        <[u8; 4]>::try_from(key.get(8..).unwrap_or_default()),
    ) else {
        return Err(FsmError::Corrupt(format!(
            "table history: key {:?} is not a revision and an index (12 bytes)",
            key.escape_ascii().to_string()
        )));
    };
    let revision = i64::try_from(u64::from_be_bytes(rev))
        .map_err(|_| FsmError::Corrupt("table history: a revision beyond i64".into()))?;
    Ok((revision, u32::from_be_bytes(n)))
}

fn decode_event(key: &[u8], value: &[u8]) -> Result<Change, FsmError> {
    let (revision, n) = split_key(key)?;
    let corrupt = |why: &str| FsmError::Corrupt(format!("table history, row ({revision}, {n}): {why}"));
    let e = HistoryEvent::decode(value).map_err(|e| corrupt(&format!("undecodable HistoryEvent: {e}")))?;
    let delete = match history_event::Kind::try_from(e.kind) {
        Ok(history_event::Kind::Put) => false,
        Ok(history_event::Kind::Delete) => true,
        Err(_) => return Err(corrupt(&format!("kind {} is neither put nor delete", e.kind))),
    };
    let space = Space::try_from(e.space).map_err(|_| corrupt(&format!("space {} is unknown", e.space)))?;
    let kv = e.kv.ok_or_else(|| corrupt("no kv"))?;
    if kv.mod_revision != revision {
        return Err(corrupt(&format!("its kv has mod_revision {}", kv.mod_revision)));
    }
    Ok(Change { revision, space, delete, kv, prev_kv: e.prev_kv })
}

fn decode_u64(table: &str, key: &[u8], value: &[u8]) -> Result<u64, FsmError> {
    <[u8; 8]>::try_from(value).map(u64::from_be_bytes).map_err(|_| {
        FsmError::Corrupt(format!(
            "table {table}, key {:?}: not an 8-byte number",
            key.escape_ascii().to_string()
        ))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use latch_proto::internal::command::Body;
    use latch_proto::internal::{outcome, Compact, Range};
    use rand::{Rng, SeedableRng};

    use super::super::testing::*;
    use super::*;

    fn range_at(s: &Store, revision: i64, key: &str, range_end: &[u8]) -> Result<RangeResult, FsmError> {
        let req = Range { key: key.into(), range_end: range_end.to_vec(), revision, ..Default::default() };
        s.read(|t| super::super::range(t, &req, usize::MAX)).map(|(_, r)| r)
    }

    fn all_changes(s: &Store) -> Vec<Change> {
        s.read(|t| changes(t, 1, i64::MAX, usize::MAX)).expect("history reads").0
    }

    fn compact(s: &mut Store, revision: i64) -> Outcome {
        s.apply("", Body::Compact(Compact { revision }))
    }

    use latch_proto::internal::{Outcome, RangeResult};

    /// A revision larger than a reader holds is one marker in `parts`, read whole through
    /// `rows_of` in steps; the revisions around it read as `changes` reads them, and every
    /// step ends at a revision's boundary.
    #[test]
    fn an_oversized_revision_is_a_marker_read_in_steps_and_its_neighbours_as_ever() {
        let mut s = Store::new();
        s.apply("", put("a", "1"));
        let big = "x".repeat(1_000);
        for i in 0..40 {
            s.apply("", put(&format!("big/{i:02}"), &big));
        }
        s.apply("", put("b", "2"));
        let head_before = s.applied().revision;
        s.apply("", del("big/", b"big0"));
        let deleted = s.applied().revision;
        s.apply("", put("c", "3"));
        let head = s.applied().revision;
        assert_eq!(deleted, head_before + 1);

        let whole = s.read(|t| changes(t, 1, head, usize::MAX)).expect("history reads").0;
        let of_deleted: Vec<Change> = whole.iter().filter(|c| c.revision == deleted).cloned().collect();
        assert_eq!(of_deleted.len(), 40, "the delete removed 40 keys in one revision");

        // Each of its rows holds a previous value of 1,000 bytes: 10 KiB passes the bound. The
        // step ends at the marker; the next one goes on after it.
        let (mut got, through) = s.read(|t| parts(t, 1, head, usize::MAX, 10 * 1024)).expect("reads");
        assert_eq!(through, deleted, "the step ends with the oversized revision");
        assert_eq!(got.last(), Some(&Part::Oversized { revision: deleted }));
        let (rest, through) = s.read(|t| parts(t, deleted + 1, head, usize::MAX, 10 * 1024)).expect("reads");
        assert_eq!(through, head);
        got.extend(rest);
        let markers: Vec<i64> = got
            .iter()
            .filter_map(|p| match p {
                Part::Oversized { revision } => Some(*revision),
                Part::Change(_) => None,
            })
            .collect();
        assert_eq!(markers, vec![deleted], "only the delete's revision passes 10 KiB");
        let held: Vec<Change> = got
            .into_iter()
            .filter_map(|p| match p {
                Part::Change(c) => Some(c),
                Part::Oversized { .. } => None,
            })
            .collect();
        let others: Vec<Change> = whole.iter().filter(|c| c.revision != deleted).cloned().collect();
        assert_eq!(held, others, "every other revision reads as changes() reads it");

        // Small steps end at revision boundaries; together they cover everything once.
        let (mut from, mut seen) = (1, Vec::new());
        while from <= head {
            let (step, through) = s.read(|t| parts(t, from, head, 2_000, 10 * 1024)).expect("reads");
            assert!(through >= from, "a step makes progress");
            assert!(step.iter().all(|p| p.revision() <= through), "a step holds nothing past its end");
            seen.extend(step.iter().map(Part::revision));
            from = through + 1;
        }
        seen.dedup();
        assert!(seen.contains(&deleted) && seen.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");

        // The marker's rows, in steps of about 3 KiB: all 40, in order, once.
        let (mut n, mut rows) = (0, Vec::new());
        loop {
            let (step, next) = s.read(|t| rows_of(t, deleted, n, 3 * 1024)).expect("reads");
            assert!(!step.is_empty(), "a step reads at least one row");
            rows.extend(step);
            match next {
                Some(next) => n = next,
                None => break,
            }
        }
        assert_eq!(rows, of_deleted, "the steps of rows_of are the revision's changes");
    }

    /// Random puts, deletes, txns and session ends; after each, the whole state is recorded;
    /// then a read at every past revision must give exactly the state recorded then.
    #[test]
    fn a_read_at_any_past_revision_sees_the_state_of_that_revision() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let mut s = Store::new();
        let mut states: BTreeMap<i64, Vec<KeyValue>> = BTreeMap::new();
        let all = |s: &Store| {
            s.range(Range { key: b"\0".to_vec(), range_end: b"\0".to_vec(), ..Default::default() }).kvs
        };
        states.insert(0, all(&s));
        s.apply(
            "",
            Body::CreateSession(latch_proto::internal::CreateSession {
                id: "s1".into(),
                name: "n".into(),
                ttl_ms: 1000,
            }),
        );
        for step in 0..300 {
            let key = format!("k{}", rng.gen_range(0..12));
            let body = match rng.gen_range(0..10) {
                0..=5 => put(&key, &format!("v{step}")),
                6 => {
                    let mut p = put_req(&key, "eph");
                    p.session = "s1".into();
                    Body::Put(p)
                }
                7 => del(&key, b""),
                8 => del("k1", b"k5"),
                _ => txn(vec![], vec![op_put(&key, "t"), op_del("k9", b"")], vec![]),
            };
            s.apply("", body);
            states.insert(s.applied().revision, all(&s));
        }
        s.apply("", Body::CloseSession(latch_proto::internal::CloseSession { id: "s1".into() }));
        states.insert(s.applied().revision, all(&s));
        let head = s.applied().revision;
        for (revision, want) in &states {
            if *revision == 0 {
                continue;
            }
            let got = range_at(&s, *revision, "\0", b"\0").expect("a kept revision reads");
            assert_eq!(
                &got.kvs, want,
                "the read at revision {revision} (head {head}) should be the state then"
            );
            let one = range_at(&s, *revision, "k3", b"").expect("reads");
            let want_one: Vec<_> = want.iter().filter(|kv| kv.key == b"k3").cloned().collect();
            assert_eq!(one.kvs, want_one, "key k3 at revision {revision}");
            let part = range_at(&s, *revision, "k2", b"k6").expect("reads");
            let want_part: Vec<_> = want
                .iter()
                .filter(|kv| kv.key.as_slice() >= b"k2".as_slice() && kv.key.as_slice() < b"k6".as_slice())
                .cloned()
                .collect();
            assert_eq!(part.kvs, want_part, "range [k2, k6) at revision {revision}");
        }
        // Every revision's changes are in the history, each with the key's previous value.
        let changes = all_changes(&s);
        let mut model: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
        for c in changes.iter().filter(|c| c.space == Space::Kv) {
            assert_eq!(
                c.prev_kv.as_ref(),
                model.get(&c.kv.key),
                "prev_kv of {:?} at revision {}",
                c.kv.key,
                c.revision
            );
            if c.delete {
                model.remove(&c.kv.key);
            } else {
                model.insert(c.kv.key.clone(), c.kv.clone());
            }
        }
        assert_eq!(model.into_values().collect::<Vec<_>>(), all(&s), "replaying the history gives the state");
        // The session's life is in its own space: created at its revision, gone at its close.
        let session: Vec<(i64, bool)> =
            changes.iter().filter(|c| c.space == Space::Sessions).map(|c| (c.revision, c.delete)).collect();
        assert_eq!(
            session,
            vec![(1, false), (head, true)],
            "the session's creation and end, at their revisions"
        );
    }

    #[test]
    fn compaction_refuses_older_reads_at_once_and_removes_rows_in_steps() {
        let mut s = Store::new();
        let keys = PURGE_STEP * 3;
        for i in 0..keys {
            s.apply("", put(&format!("k{i}"), "v"));
        }
        let head = s.applied().revision;
        assert_eq!(head, keys as i64);

        let before = s.applied();
        let future = compact(&mut s, head + 1);
        assert!(as_rejected(future).contains("is in the future"), "compacting past the head is refused");
        assert_eq!(s.read(compact_revision_read).expect("reads"), 0, "a refused compaction writes nothing");
        assert_eq!(s.applied().revision, before.revision);

        let done = compact(&mut s, head - 2);
        assert_eq!(done.result, Some(outcome::Result::Compact(CompactResult { compact_revision: head - 2 })));
        assert_eq!(done.revision, head, "a compaction is not a write: the revision stays");
        let err = range_at(&s, head - 2, "k0", b"").expect_err("a compacted revision is refused");
        assert!(
            matches!(err, FsmError::Revision(RevisionError::Compacted { asked, compact_revision }) if asked == head - 2 && compact_revision == head - 2),
            "{err}"
        );
        range_at(&s, head - 1, "k0", b"").expect("the revision after the compact one reads");
        let err = range_at(&s, head + 1, "k0", b"").expect_err("a future revision is refused");
        assert!(matches!(err, FsmError::Revision(RevisionError::Future { .. })), "{err}");

        // The compaction's own entry removed one step; each later entry removes another.
        let left = |s: &Store| all_changes(s).iter().filter(|c| c.revision <= head - 2).count();
        assert_eq!(left(&s), keys - 2 - PURGE_STEP, "one step of rows went with the compaction's entry");
        s.apply("", put("x", "1"));
        assert_eq!(
            left(&s),
            keys - 2 - 2 * PURGE_STEP - 1,
            "and one with the next entry, plus as many as it wrote"
        );
        let mut writes = 1;
        while left(&s) > 0 {
            s.apply("", put("x", "1"));
            writes += 1;
        }
        assert_eq!(writes, 2, "{keys} rows go in steps of {PURGE_STEP}");
        assert_eq!(
            all_changes(&s).iter().filter(|c| c.revision > head - 2).count(),
            2 + writes,
            "newer rows are kept"
        );

        let again = compact(&mut s, head - 3);
        assert_eq!(again.result, Some(outcome::Result::Compacted(Compacted { compact_revision: head - 2 })));
    }

    #[test]
    fn the_history_and_the_compact_revision_travel_in_snapshots() {
        let mut s = Store::new();
        for i in 0..10 {
            s.apply("", put("k", &format!("{i}")));
        }
        compact(&mut s, 4);
        let stream = s.snapshot();
        let mut t = Store::new();
        let at = s.applied();
        restore_into(&mut t, &stream, at.index, at.term).expect("restores");
        assert_eq!(t.hash(), s.hash(), "the restored state hashes the same, history included");
        assert_eq!(range_at(&t, 6, "k", b"").expect("reads").kvs[0].value, b"5");
        assert!(range_at(&t, 4, "k", b"").is_err(), "the compact revision came along");
    }

    #[test]
    fn the_history_counts_its_bytes_as_rows_are_recorded_and_purged() {
        let mut s = Store::new();
        let measure = |s: &Store| s.read(super::measure).expect("measures");
        for i in 0..PURGE_STEP * 2 {
            s.apply("", put(&format!("k{i}"), &"v".repeat(i)));
        }
        let grown = measure(&s);
        assert!(grown.stored > 0);
        assert_eq!(grown.counted, Some(grown.stored), "the count follows every row recorded");
        assert_eq!(grown.retained, grown.stored, "nothing compacted yet");

        compact(&mut s, PURGE_STEP as i64 + 10);
        let after = measure(&s);
        assert!(after.retained < grown.stored, "the compacted rows no longer count as retained");
        assert!(after.stored < grown.stored, "the compaction's entry purged a step");
        assert_eq!(after.counted, Some(after.stored), "the count follows the rows purged");
        while measure(&s).stored > measure(&s).retained {
            s.apply("", put("x", "1"));
        }
        let purged = measure(&s);
        assert_eq!(purged.counted, Some(purged.stored), "and every later step");

        // A count left at an earlier index (a build that did not keep it applied since) is not
        // trusted: the next batch counts again.
        use crate::storage::schema::{FSM_APPLIED_INDEX, FSM_HISTORY_BYTES, FSM_HISTORY_BYTES_INDEX};
        let txn = s.db.begin_write().expect("begins");
        {
            let mut meta = txn.open_table(FSM_META).expect("opens");
            let index = meta.get(FSM_APPLIED_INDEX).expect("reads").expect("an applied index").value();
            meta.insert(FSM_HISTORY_BYTES, 7).expect("writes");
            meta.insert(FSM_HISTORY_BYTES_INDEX, index - 1).expect("writes");
        }
        txn.commit().expect("commits");
        assert_eq!(measure(&s).counted, None, "a count of another index is not taken");
        s.apply("", put("y", "2"));
        let counted = measure(&s);
        assert_eq!(counted.counted, Some(counted.stored), "counted by a scan, then followed");

        // A restored state is counted as its rows arrive.
        let stream = s.snapshot();
        let mut t = Store::new();
        let at = s.applied();
        restore_into(&mut t, &stream, at.index, at.term).expect("restores");
        let restored = measure(&t);
        assert_eq!(restored.counted, Some(restored.stored), "a restored state counts its rows");
        assert_eq!(restored.stored, counted.stored, "the same rows as the state it came from");
    }

    #[test]
    fn a_large_write_purges_compacted_rows_until_it_freed_twice_its_bytes() {
        let mut s = Store::new();
        for i in 0..300 {
            s.apply("", put(&format!("k{i}"), "v"));
        }
        let head = s.applied().revision;
        compact(&mut s, head);
        let measure = |s: &Store| s.read(super::measure).expect("measures");
        let backlog = measure(&s);
        assert!(backlog.stored > backlog.retained, "the compaction's own entry purged one step only");
        let small_row = backlog.stored / (300 - PURGE_STEP as u64);
        s.apply("", put("big", &"x".repeat(2 * small_row as usize * 300)));
        let after = measure(&s);
        assert_eq!(
            after.stored, after.retained,
            "rows of {small_row} bytes go until twice the new row's bytes are freed: the whole backlog"
        );

        // Past PURGE_EXTRA_ROWS more, the rest waits for the next entries.
        let mut s = Store::new();
        let rows = 3 * PURGE_EXTRA_ROWS;
        for i in 0..rows {
            s.apply("", put(&format!("k{i}"), "v"));
        }
        let head = s.applied().revision;
        compact(&mut s, head);
        let left = |s: &Store| all_changes(s).iter().filter(|c| c.revision <= head).count();
        assert_eq!(left(&s), rows - PURGE_STEP);
        s.apply("", put("big", &"x".repeat(1 << 20)));
        assert_eq!(
            left(&s),
            rows - PURGE_STEP - (PURGE_STEP + 1 + PURGE_EXTRA_ROWS),
            "one entry removes at most its step, its own rows and PURGE_EXTRA_ROWS"
        );
        assert!(measure(&s).stored > measure(&s).retained, "a backlog is left");
    }

    use latch_proto::internal::{CompactResult, Compacted};
}
