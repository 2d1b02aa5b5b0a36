//! The snapshot stream: the whole replicated state at one applied index, written from a redb
//! read transaction chunk by chunk and restored from any reader chunk by chunk, so that neither
//! side ever holds the whole state in memory.
//!
//! Format: a sequence of frames, each a 4-byte big-endian length and an encoded
//! `SnapshotChunk`: one `header` (format version, applied index and term, revision, and the
//! backup the state descends from, [`super::RestoredFrom`]), then the
//! rows of every domain table (in the order of `DOMAINS`, each table in key order, cut
//! into `rows` chunks of about [`CHUNK_BYTES`]), then one `end` with the number of rows and a
//! checksum over them.
//!
//! Invariants:
//! - A snapshot is the state of one read transaction: one applied index, nothing torn.
//! - [`restore`] writes only inside the caller's write transaction and fails (so the caller
//!   aborts it) on anything a writer could not have produced: a wrong version or position, an
//!   unknown table, keys out of order, a row its domain rejects, a missing or wrong end, bytes
//!   after the end. Nothing half-restored is ever committed. [`verify`] fails on the same,
//!   writing nothing.
//! - [`restore_as_new_cluster`] (a backup restored, `latch snapshot restore`) keeps every row
//!   but those that name entries of the lost cluster's log (the request memory, the members'
//!   records), gives every session a whole TTL from the new cluster's start, and takes the state
//!   as applied at [`RESTORED_AT`] with the snapshot's revision: the new cluster's log starts
//!   after it, and its revisions go on from the snapshot's.

use std::collections::BTreeSet;
use std::io::Read;

use latch_proto::internal::{
    snapshot_chunk, SnapshotChunk, SnapshotEnd, SnapshotHeader, SnapshotRow, SnapshotRows,
};
use prost::Message;
use redb::{ReadTransaction, ReadableTable, TableHandle, WriteTransaction};

use super::{
    applied, history, open_read, restored_from, set_restored_from, write_meta, Applied, Fnv, FsmError,
    RestoredFrom, TableDef, DOMAINS,
};
use crate::storage::schema::{FSM_INSTALLED_AT, FSM_META, HISTORY};

/// The snapshot format this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 2;
/// About how many bytes of rows one chunk carries (a chunk always holds at least one row).
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Largest frame a reader accepts: far above any chunk a writer makes (one chunk of rows, or
/// one row of the largest value a member can be configured to accept).
pub const MAX_FRAME_BYTES: usize = 1 << 30;

/// Writes the state of `txn` as frames, handing each to `out` (which may stop the stream by
/// returning an error). Returns the position written.
pub fn write<E>(
    txn: &ReadTransaction,
    out: &mut dyn FnMut(Vec<u8>) -> Result<(), E>,
) -> Result<Result<Applied, E>, FsmError> {
    let pos = applied(txn)?;
    let from = restored_from(txn)?;
    let header = SnapshotHeader {
        version: SNAPSHOT_VERSION,
        applied_index: pos.index,
        applied_term: pos.term,
        revision: pos.revision,
        restored_from: from.checksum,
        restored_skip_generations: from.skip_generations,
    };
    if let Err(e) = out(frame(snapshot_chunk::Chunk::Header(header))) {
        return Ok(Err(e));
    }
    let mut sum = Fnv::new();
    let mut rows = 0u64;
    for domain in DOMAINS {
        for def in domain.tables() {
            let Some(table) = open_read(txn, *def)? else { continue };
            let mut chunk = SnapshotRows { table: def.name().to_string(), rows: Vec::new() };
            let mut size = 0;
            for row in table.iter()? {
                let (k, v) = row?;
                let row = SnapshotRow { key: k.value().to_vec(), value: v.value().to_vec() };
                add_row(&mut sum, def.name(), &row);
                rows += 1;
                size += row.key.len() + row.value.len();
                chunk.rows.push(row);
                if size >= CHUNK_BYTES {
                    let full = std::mem::take(&mut chunk.rows);
                    let rows_chunk = SnapshotRows { table: chunk.table.clone(), rows: full };
                    if let Err(e) = out(frame(snapshot_chunk::Chunk::Rows(rows_chunk))) {
                        return Ok(Err(e));
                    }
                    size = 0;
                }
            }
            if !chunk.rows.is_empty() {
                if let Err(e) = out(frame(snapshot_chunk::Chunk::Rows(chunk))) {
                    return Ok(Err(e));
                }
            }
        }
    }
    let end = SnapshotEnd { rows, checksum: sum.finish() };
    Ok(out(frame(snapshot_chunk::Chunk::End(end))).map(|()| pos))
}

/// The position a state restored as a new cluster's is applied at ([`restore_as_new_cluster`]):
/// index 1 of term 1, where the new members' logs start, compacted (`storage::LogStore::
/// create_after`). Not 0: a member that joins the new cluster on an empty data dir is sent a
/// snapshot of the state only once the log it would otherwise replay from index 1 is compacted.
pub const RESTORED_AT: (u64, u64) = crate::storage::log::RESTORED_AFTER;

/// The most generations a restore may skip: far more than a cluster grants in years, and
/// fencing tokens stay below 2^53, which any JSON reader takes whole.
pub const MAX_SKIP_GENERATIONS: u64 = 1 << 40;

/// What a whole snapshot holds, as [`check`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// The position it is the state at.
    pub applied: Applied,
    /// Its rows, in every table.
    pub rows: u64,
    /// The end's checksum over them.
    pub checksum: u64,
}

/// Replaces the whole state with the snapshot read from `input`, which must be at
/// `(index, term)` with raft's configuration `conf_state` (from its metadata), and records that
/// it was installed there ([`super::installed_at`]) and the backup it descends from (its
/// header's [`RestoredFrom`]); returns its position. See the module doc for what fails it.
pub fn restore(
    txn: &WriteTransaction,
    input: &mut dyn Read,
    index: u64,
    term: u64,
    conf_state: &[u8],
) -> Result<Applied, FsmError> {
    // Cleared first: on any failure the caller aborts the transaction, the clear with it.
    super::clear(txn)?;
    super::set_conf_state(txn, conf_state)?;
    let walked = walk(input, Some((index, term)), &mut |def, rows| insert(txn, def, rows))?;
    let pos = walked.summary.applied;
    write_meta(txn, pos, walked.history_bytes)?;
    txn.open_table(FSM_META)?.insert(FSM_INSTALLED_AT, pos.index)?;
    set_restored_from(txn, walked.restored_from)?;
    Ok(pos)
}

/// Replaces the whole state with the snapshot read from `input`, whatever position it is at,
/// as the state of a new cluster whose log starts after [`RESTORED_AT`]: applied there, with the
/// snapshot's revision (so the first write of the new cluster is the revision after it). Rows
/// that name entries of the old cluster's log are left out: the request memory (the index each
/// id applied at; a client of the old cluster retrying is refused by the new one's cluster id
/// anyway) and the members' records (the new cluster's members record themselves as they
/// start). Every session's lease is a whole TTL from the new cluster's start: its last
/// checkpoint's term and leader clock reading are the old cluster's. Raft's configuration is
/// the one the new members start with (none recorded). The lock
/// generation counter is raised by `skip_generations`, so that the new cluster's fencing
/// tokens are above any the lost cluster granted in its last `skip_generations` grants after
/// the snapshot. Fails as [`restore`] does, on anything a writer could not have produced.
pub fn restore_as_new_cluster(
    txn: &WriteTransaction,
    input: &mut dyn Read,
    skip_generations: u64,
) -> Result<Summary, FsmError> {
    if skip_generations > MAX_SKIP_GENERATIONS {
        return Err(FsmError::OverLimit(format!(
            "{skip_generations} generations to skip is over the most, {MAX_SKIP_GENERATIONS}"
        )));
    }
    super::clear(txn)?;
    let left_out: Vec<&str> =
        [&super::requests::RequestsDomain as &dyn super::Domain, &super::members::MembersDomain]
            .iter()
            .flat_map(|d| d.tables().iter().map(|t| t.name()))
            .collect();
    let walked = walk(input, None, &mut |def, rows| match left_out.contains(&def.name()) {
        true => Ok(()),
        false => insert(txn, def, rows),
    })?;
    let (index, term) = RESTORED_AT;
    let applied = Applied { index, term, revision: walked.summary.applied.revision };
    write_meta(txn, applied, walked.history_bytes)?;
    // What the file's own state descended from is the lost cluster's: the new one descends
    // from this file, restored this way.
    let from = RestoredFrom { checksum: walked.summary.checksum.max(1), skip_generations };
    set_restored_from(txn, from)?;
    super::sessions::restart_leases(txn)?;
    if skip_generations > 0 {
        super::locks::skip_generations(txn, skip_generations)?;
    }
    Ok(Summary { applied, ..walked.summary })
}

/// Checks a whole snapshot read from `input` as [`restore`] does, at whatever position its
/// header names, writing nothing (`latch snapshot status`).
pub fn check(input: &mut dyn Read) -> Result<Summary, FsmError> {
    walk(input, None, &mut |_, _| Ok(())).map(|w| w.summary)
}

fn insert(txn: &WriteTransaction, def: TableDef, rows: &[SnapshotRow]) -> Result<(), FsmError> {
    let mut table = txn.open_table(def)?;
    for row in rows {
        table.insert(row.key.as_slice(), row.value.as_slice())?;
    }
    Ok(())
}

/// Checks the snapshot read from `input` as [`restore`] does, writing nothing: a member checks
/// a snapshot it received before raft takes it, since raft cannot be made to forget one it
/// took, and one that fails to restore would stop the member at every start.
pub fn verify(input: &mut dyn Read, index: u64, term: u64) -> Result<Applied, FsmError> {
    walk(input, Some((index, term)), &mut |_, _| Ok(())).map(|w| w.summary.applied)
}

/// What [`walk`] found: the snapshot, and its history's byte count.
struct Walked {
    summary: Summary,
    history_bytes: u64,
    /// What its header says the state descends from.
    restored_from: RestoredFrom,
}

/// What [`walk`] hands each chunk of checked rows to.
type RowsOf<'a> = dyn FnMut(TableDef, &[SnapshotRow]) -> Result<(), FsmError> + 'a;

/// Reads a snapshot stream, checking every frame (and, when `at` names one, that it is at that
/// index and term), and hands each chunk of checked rows to `rows_of` with its table.
fn walk(input: &mut dyn Read, at: Option<(u64, u64)>, rows_of: &mut RowsOf) -> Result<Walked, FsmError> {
    let header = match read_chunk(input)? {
        Some(snapshot_chunk::Chunk::Header(h)) => h,
        other => return Err(corrupt(format!("expected a header first, found {}", describe(&other)))),
    };
    if header.version != SNAPSHOT_VERSION {
        return Err(corrupt(format!(
            "version {} is not supported (this build reads version {SNAPSHOT_VERSION})",
            header.version
        )));
    }
    let (index, term) = at.unwrap_or((header.applied_index, header.applied_term));
    if (header.applied_index, header.applied_term) != (index, term) {
        return Err(corrupt(format!(
            "it holds the state at index {} term {}, but raft installs it as index {index} term {term}",
            header.applied_index, header.applied_term
        )));
    }
    if header.revision < 0 {
        return Err(corrupt(format!("revision {} is negative", header.revision)));
    }
    let pos = Applied { index, term, revision: header.revision };
    let restored_from =
        RestoredFrom { checksum: header.restored_from, skip_generations: header.restored_skip_generations };
    if restored_from.skip_generations > MAX_SKIP_GENERATIONS
        || (!restored_from.is_restored() && restored_from.skip_generations != 0)
    {
        return Err(corrupt(format!("it descends from a restore that cannot be: {restored_from:?}")));
    }
    let mut sum = Fnv::new();
    let mut rows = 0u64;
    let mut history_bytes = 0u64;
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<(String, Vec<u8>)> = None;
    loop {
        match read_chunk(input)? {
            Some(snapshot_chunk::Chunk::Rows(chunk)) => {
                let (domain, def) = find_table(&chunk.table)?;
                if current.as_ref().is_none_or(|(t, _)| *t != chunk.table) {
                    if let Some((t, _)) = current.take() {
                        done.insert(t);
                    }
                    if done.contains(&chunk.table) {
                        return Err(corrupt(format!("table {} appears twice", chunk.table)));
                    }
                    current = Some((chunk.table.clone(), Vec::new()));
                }
                for row in &chunk.rows {
                    if let Some((_, last)) = current.as_mut() {
                        if !last.is_empty() && row.key.as_slice() <= last.as_slice() {
                            return Err(corrupt(format!("table {}: keys out of order", chunk.table)));
                        }
                        last.clone_from(&row.key);
                    }
                    domain
                        .check_row(&chunk.table, &row.key, &row.value, &pos)
                        .map_err(|e| corrupt(format!("domain {}: {e}", domain.name())))?;
                    add_row(&mut sum, &chunk.table, row);
                    rows += 1;
                    if chunk.table == HISTORY.name() {
                        history_bytes = history_bytes.saturating_add(history::row_bytes(row.value.len()));
                    }
                }
                rows_of(def, &chunk.rows)?;
            }
            Some(snapshot_chunk::Chunk::End(end)) => {
                if end.rows != rows || end.checksum != sum.finish() {
                    return Err(corrupt(format!(
                        "the end says {} rows with checksum {:016x}; the stream held {rows} with {:016x}",
                        end.rows,
                        end.checksum,
                        sum.finish()
                    )));
                }
                break;
            }
            other => return Err(corrupt(format!("expected rows or the end, found {}", describe(&other)))),
        }
    }
    let mut trailing = [0u8; 1];
    if input.read(&mut trailing).map_err(|e| corrupt(format!("cannot read: {e}")))? != 0 {
        return Err(corrupt("bytes after the end".into()));
    }
    let summary = Summary { applied: pos, rows, checksum: sum.finish() };
    Ok(Walked { summary, history_bytes, restored_from })
}

fn frame(chunk: snapshot_chunk::Chunk) -> Vec<u8> {
    let msg = SnapshotChunk { chunk: Some(chunk) };
    let len = msg.encoded_len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    msg.encode(&mut out).unwrap_or_default();
    out
}

fn add_row(sum: &mut Fnv, table: &str, row: &SnapshotRow) {
    sum.write_bytes(table.as_bytes());
    sum.write_bytes(&row.key);
    sum.write_bytes(&row.value);
}

fn find_table(name: &str) -> Result<(&'static dyn super::Domain, TableDef), FsmError> {
    for domain in DOMAINS {
        for def in domain.tables() {
            if def.name() == name {
                return Ok((domain, *def));
            }
        }
    }
    Err(corrupt(format!("unknown table {name:?}")))
}

/// The next chunk, or `None` at a clean end of input.
fn read_chunk(input: &mut dyn Read) -> Result<Option<snapshot_chunk::Chunk>, FsmError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match input.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(corrupt("truncated frame length".into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(corrupt(format!("cannot read: {e}"))),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(corrupt(format!("a frame of {len} bytes, over the limit of {MAX_FRAME_BYTES}")));
    }
    // Read as it comes rather than allocated up front: a corrupt length costs what is there.
    let mut bytes = Vec::new();
    input.take(len as u64).read_to_end(&mut bytes).map_err(|e| corrupt(format!("cannot read: {e}")))?;
    if bytes.len() != len {
        return Err(corrupt(format!("truncated frame: {} of {len} bytes", bytes.len())));
    }
    let chunk =
        SnapshotChunk::decode(bytes.as_slice()).map_err(|e| corrupt(format!("undecodable chunk: {e}")))?;
    match chunk.chunk {
        Some(c) => Ok(Some(c)),
        None => Err(corrupt("an empty chunk".into())),
    }
}

fn describe(c: &Option<snapshot_chunk::Chunk>) -> &'static str {
    match c {
        None => "the end of the stream",
        Some(snapshot_chunk::Chunk::Header(_)) => "a header",
        Some(snapshot_chunk::Chunk::Rows(_)) => "rows",
        Some(snapshot_chunk::Chunk::End(_)) => "an end",
    }
}

fn corrupt(why: String) -> FsmError {
    FsmError::Corrupt(format!("snapshot: {why}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use latch_proto::internal::command::Body;
    use latch_proto::internal::{
        CheckpointSessions, LockMode, LockSpace, MemberStarted, SessionLease, SessionRow,
    };

    use super::*;
    use crate::fsm::locks;
    use crate::fsm::testing::{acquire_req, create_session, put, Store};

    /// Rows of tables, by table name: each row's key and value.
    type Rows = BTreeMap<String, Vec<(Vec<u8>, Vec<u8>)>>;

    /// Every row of a stream, by table.
    fn rows_by_table(stream: &[u8]) -> Rows {
        let mut tables = Rows::new();
        walk(&mut &stream[..], None, &mut |def, rows| {
            let table = tables.entry(def.name().to_string()).or_default();
            table.extend(rows.iter().map(|r| (r.key.clone(), r.value.clone())));
            Ok(())
        })
        .expect("the stream is whole");
        tables
    }

    /// The tables a restore as a new cluster leaves empty: those naming the old log's entries.
    fn old_log_tables() -> Vec<&'static str> {
        [
            &super::super::requests::RequestsDomain as &dyn super::super::Domain,
            &super::super::members::MembersDomain,
        ]
        .iter()
        .flat_map(|d| d.tables().iter().map(|t| t.name()))
        .collect()
    }

    fn a_lived_in_state() -> Store {
        let mut store = Store::new();
        store.apply("m1", Body::MemberStarted(MemberStarted { member: 1 }));
        store.apply("p1", put("config/a", "1"));
        store.apply("s1", create_session("s1"));
        store.apply("l1", acquire_req("jobs", "s1", LockMode::Exclusive, false));
        // A checkpoint by a leader of term 1 whose clock read a billion milliseconds.
        let leases = vec![SessionLease { id: "s1".into(), remaining_ms: 4_000 }];
        store.apply(
            "",
            Body::CheckpointSessions(CheckpointSessions { leases, leader_ms: 1_000_000_000, term: 1 }),
        );
        store.apply("p2", put("config/b", "2"));
        store
    }

    #[test]
    fn a_state_restored_as_a_new_cluster_keeps_every_row_but_the_old_logs_at_index_1_and_its_revision() {
        let old = a_lived_in_state();
        let stream = old.snapshot();
        let before = rows_by_table(&stream);
        for table in ["requests", "members"] {
            assert!(
                before.get(table).is_some_and(|rows| !rows.is_empty()),
                "the old state should hold rows of {table} for the test to mean anything: {before:?}"
            );
        }

        let mut new = Store::new();
        new.apply("p0", put("stale", "x"));
        let txn = new.db.begin_write().expect("a write transaction begins");
        let summary = restore_as_new_cluster(&txn, &mut &stream[..], 0).expect("a whole snapshot restores");
        txn.commit().expect("the restore commits");

        let revision = old.applied().revision;
        assert_eq!(
            new.applied(),
            Applied { index: 1, term: 1, revision },
            "a restored state should be applied at index 1, term 1, with the snapshot's revision"
        );
        assert_eq!(summary.applied, new.applied(), "the summary should name the position restored");
        let mut expected = before.clone();
        expected.retain(|table, _| !old_log_tables().contains(&table.as_str()));
        let mut after = rows_by_table(&new.snapshot());
        // Sessions: the same, but for a whole TTL counted from the new cluster's start, not
        // from a checkpoint of the old cluster's term and leader clock.
        let sessions = |rows: &Rows| -> Vec<SessionRow> {
            rows["sessions"].iter().map(|(_, v)| SessionRow::decode(v.as_slice()).expect("a row")).collect()
        };
        let old_row = sessions(&before)[0].clone();
        assert_eq!(
            (old_row.checkpoint_term, old_row.leader_ms),
            (1, 1_000_000_000),
            "the old row is checkpointed"
        );
        assert_eq!(
            sessions(&after),
            vec![SessionRow { remaining_ms: old_row.ttl_ms, checkpoint_term: 0, leader_ms: 0, ..old_row }],
            "a restored session should have its whole TTL and no checkpoint of the old cluster's"
        );
        after.remove("sessions");
        expected.remove("sessions");
        assert_eq!(after, expected, "every row but the old log's request memory and members' records should be kept, and nothing else");
        assert!(new.get("stale").is_none(), "the state restored into should have been replaced whole");
        assert_eq!(
            new.get("config/b").map(|kv| kv.mod_revision),
            Some(revision),
            "keys should keep their revisions"
        );

        // The next write goes on from the snapshot's revision.
        new.index = 1;
        new.apply("p3", put("config/c", "3"));
        assert_eq!(
            new.applied().revision,
            revision + 1,
            "the first write after a restore should take the next revision"
        );
    }

    #[test]
    fn a_restore_that_skips_generations_grants_above_them() {
        let old = a_lived_in_state();
        let granted = |store: &Store| {
            let key = locks::lock_key(LockSpace::Locks, "jobs");
            let row = store.read(|t| locks::read(t, &key)).expect("reads");
            row.expect("jobs is held").holders[0].generation
        };
        let held = granted(&old);
        let mut new = Store::new();
        let txn = new.db.begin_write().expect("a write transaction begins");
        restore_as_new_cluster(&txn, &mut &old.snapshot()[..], 1_000).expect("restores");
        txn.commit().expect("the restore commits");
        assert_eq!(granted(&new), held, "the restored holder should keep its generation");
        new.index = 1;
        new.apply("s2", create_session("s2"));
        new.apply("l2", acquire_req("other", "s2", LockMode::Exclusive, false));
        let key = locks::lock_key(LockSpace::Locks, "other");
        let row = new.read(|t| locks::read(t, &key)).expect("reads");
        assert_eq!(
            row.expect("other is held").holders[0].generation,
            held + 1_000 + 1,
            "the first grant after a restore that skips 1,000 generations should be 1,001 above the file's last"
        );
    }

    /// review-s69-3 R1: what a restored state descends from is carried in the raft snapshots
    /// its members send, so that a member sent the state (added later, or behind) holds it too
    /// and its answers refuse first members restored otherwise (`server::admission`).
    #[test]
    fn the_backup_a_state_descends_from_travels_in_its_snapshots() {
        let old = a_lived_in_state();
        let file = old.snapshot();
        let restored = Store::new();
        let txn = restored.db.begin_write().expect("a write transaction begins");
        let summary = restore_as_new_cluster(&txn, &mut &file[..], 1_000).expect("restores");
        txn.commit().expect("the restore commits");
        let from = RestoredFrom { checksum: summary.checksum, skip_generations: 1_000 };
        let of = |store: &Store| store.read(restored_from).expect("reads");
        assert_eq!(of(&old), RestoredFrom::default(), "a state never restored descends from no backup");
        assert_eq!(of(&restored), from, "a restored state records the file and the generations skipped");

        let sent = restored.snapshot();
        let behind = Store::new();
        let txn = behind.db.begin_write().expect("a write transaction begins");
        let (index, term) = RESTORED_AT;
        restore(&txn, &mut &sent[..], index, term, &[]).expect("a raft snapshot restores");
        txn.commit().expect("the restore commits");
        assert_eq!(of(&behind), from, "a member sent the state should hold what it descends from");

        // A backup of the restored cluster, restored again, descends from that backup alone.
        let again = Store::new();
        let txn = again.db.begin_write().expect("a write transaction begins");
        let summary = restore_as_new_cluster(&txn, &mut &sent[..], 0).expect("restores");
        txn.commit().expect("the restore commits");
        assert_eq!(of(&again), RestoredFrom { checksum: summary.checksum, skip_generations: 0 });
    }

    /// A header naming a restore no writer makes (generations skipped without a file, or more
    /// than a restore may skip) is refused.
    #[test]
    fn a_header_naming_a_restore_that_cannot_be_is_refused() {
        let stream = a_lived_in_state().snapshot();
        let header_len = u32::from_be_bytes(stream[..4].try_into().expect("a length")) as usize;
        let rest = &stream[4 + header_len..];
        let Some(snapshot_chunk::Chunk::Header(header)) =
            read_chunk(&mut &stream[..]).expect("a header frame")
        else {
            panic!("a snapshot starts with its header")
        };
        for (checksum, skip) in [(0, 5), (7, MAX_SKIP_GENERATIONS + 1)] {
            let bad = SnapshotHeader { restored_from: checksum, restored_skip_generations: skip, ..header };
            let mut changed = frame(snapshot_chunk::Chunk::Header(bad));
            changed.extend_from_slice(rest);
            let err = check(&mut &changed[..]).expect_err("a restore that cannot be");
            assert!(
                err.to_string().contains("descends from a restore that cannot be"),
                "the error should name the header's restore ({checksum}, {skip}): {err}"
            );
        }
    }

    #[test]
    fn a_whole_snapshot_checks_and_one_cut_or_changed_does_not() {
        let old = a_lived_in_state();
        let stream = old.snapshot();
        let summary = check(&mut &stream[..]).expect("a whole snapshot checks");
        let rows: usize = rows_by_table(&stream).values().map(Vec::len).sum();
        assert_eq!(summary.applied, old.applied(), "the summary should name the snapshot's position");
        assert_eq!(summary.rows, rows as u64, "the summary should count every row");

        let cut = &stream[..stream.len() - 3];
        let err = check(&mut &cut[..]).expect_err("a snapshot cut short should fail the check");
        assert!(err.to_string().contains("truncated"), "the error should say it was cut short: {err}");

        // A byte of a value changed (the last row's last byte sits before the end's frame).
        let mut changed = stream.clone();
        let value_byte =
            changed.windows(1).rposition(|w| w[0] == b'2').expect("config/b's value is in the stream");
        changed[value_byte] = b'9';
        let err = check(&mut &changed[..]).expect_err("a changed snapshot should fail the check");
        assert!(err.to_string().contains("checksum"), "the error should name the checksum: {err}");

        let txn = Store::new().db.begin_write().expect("a write transaction begins");
        assert!(
            restore_as_new_cluster(&txn, &mut &changed[..], 0).is_err(),
            "a changed snapshot should not restore as a new cluster either"
        );
    }
}
