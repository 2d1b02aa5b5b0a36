//! The snapshot stream: the whole replicated state at one applied index, written from a redb
//! read transaction chunk by chunk and restored from any reader chunk by chunk, so that neither
//! side ever holds the whole state in memory.
//!
//! Format: a sequence of frames, each a 4-byte big-endian length and an encoded
//! `SnapshotChunk`: one `header` (format version, applied index and term, revision), then the
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

use std::collections::BTreeSet;
use std::io::Read;

use latch_proto::internal::{
    snapshot_chunk, SnapshotChunk, SnapshotEnd, SnapshotHeader, SnapshotRow, SnapshotRows,
};
use prost::Message;
use redb::{ReadTransaction, ReadableTable, TableHandle, WriteTransaction};

use super::{applied, history, open_read, write_meta, Applied, Fnv, FsmError, TableDef, DOMAINS};
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
    let header = SnapshotHeader {
        version: SNAPSHOT_VERSION,
        applied_index: pos.index,
        applied_term: pos.term,
        revision: pos.revision,
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

/// Replaces the whole state with the snapshot read from `input`, which must be at
/// `(index, term)` with raft's configuration `conf_state` (from its metadata), and records that
/// it was installed there ([`super::installed_at`]); returns its position. See the module doc for what fails it.
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
    let (pos, history_bytes) = walk(input, index, term, &mut |def, rows| {
        let mut table = txn.open_table(def)?;
        for row in rows {
            table.insert(row.key.as_slice(), row.value.as_slice())?;
        }
        Ok(())
    })?;
    write_meta(txn, pos, history_bytes)?;
    txn.open_table(FSM_META)?.insert(FSM_INSTALLED_AT, pos.index)?;
    Ok(pos)
}

/// Checks the snapshot read from `input` as [`restore`] does, writing nothing: a member checks
/// a snapshot it received before raft takes it, since raft cannot be made to forget one it
/// took, and one that fails to restore would stop the member at every start.
pub fn verify(input: &mut dyn Read, index: u64, term: u64) -> Result<Applied, FsmError> {
    walk(input, index, term, &mut |_, _| Ok(())).map(|(pos, _)| pos)
}

/// What [`walk`] hands each chunk of checked rows to.
type RowsOf<'a> = dyn FnMut(TableDef, &[SnapshotRow]) -> Result<(), FsmError> + 'a;

/// Reads a snapshot stream, checking every frame, and hands each chunk of checked rows to
/// `rows_of` with its table; returns the snapshot's position and its history's byte count.
fn walk(
    input: &mut dyn Read,
    index: u64,
    term: u64,
    rows_of: &mut RowsOf,
) -> Result<(Applied, u64), FsmError> {
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
    Ok((pos, history_bytes))
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
