//! The raft log, hard state and configuration, kept in a write-ahead log: a directory of
//! segment files ([`super::files`]) that are only appended to, at most one fdatasync per flush.
//! The newest entries are cached in memory, bounded in bytes.
//!
//! raft-rs reads its log through `raft::Storage` (`&self`, synchronous, many small calls). Every
//! change is applied to the in-memory view at once and buffered as records; [`LogStore::flush`]
//! appends the records to the active segment and syncs it, and the caller lets nothing that
//! depends on a change leave the node (messages, applies) before that. Only a new commit index
//! alone is written without a sync ([`LogStore::set_hard_state`]). A failed flush is fatal, so
//! the in-memory view never outlives a state the disk did not reach.
//!
//! Segment format: files `<seq, 16 hex digits>.wal`, preallocated to [`SEGMENT_BYTES`] (so that
//! a write within them does not change the file's size); each a sequence of records
//! `[payload length: u32 LE][kind: u8][CRC-32 of length and kind: u32 LE][CRC-32 of the previous
//! record's CRC and the payload: u32 LE][payload]`, ended by zeros (a record head of zeros: no
//! record has kind 0). The payload CRCs chain from a seed made of the segment's number, so a
//! record is valid only after the records that were written before it: bytes left over from an
//! earlier write never pass. The first record of a segment is its header (identity, the raft
//! state when it was started, the size it was preallocated to); then entries (an entry at an
//! index already in the log replaces it and everything after it), hard states, compactions
//! (entries up to an index are no longer needed) and installed snapshots (every entry before is
//! gone). Replaying the segments in order rebuilds the log exactly. Two records are evidence
//! for telling damage from a crash, not state: the first write after a sync starts with a
//! *synced* record (how far the segment was durable when it was written; it checks itself, so
//! that it can be found past a bad record), and a full segment, once the next one is durable,
//! ends with a *continued* record naming it.
//!
//! Invariants:
//! - The log holds exactly the indexes `compacted.index + 1 ..= last`, without gaps; `cache`
//!   holds `cache_from ..= last` of them; `places` says where each one's record is.
//! - An entry leaves the cache only after the flush that wrote it (see [`LogStore::committed`]),
//!   so an entry read back from a file is always one that was written there.
//! - A segment is deleted only when every entry written in it is compacted, the record saying
//!   so is durable in a later segment, and every segment before it goes too (never the active
//!   one): segments go from the front only. So what stays is a suffix of what was written, and
//!   replays as it did: its first entry follows one at or below the compaction point (replay
//!   never meets a gap), and an entry in it that a later one replaced is replaced there too — a
//!   record that replaces entries always comes after them. (Deleting by each segment's own bound
//!   alone could keep a segment of replaced entries while deleting the later one that replaced
//!   them, and bring them back.)
//! - Terms never decrease along the log; a replay that finds one that does refuses to load.
//! - A torn tail — a crash in the middle of a write that was never synced, which a disk may
//!   leave with any of its sectors written or not — is told from corruption as etcd tells it: a
//!   bad record in the last segment that runs past the file's end or holds a sector of zeros
//!   was torn, and it and everything after it are zeroed, with a warning; any other bad record
//!   (a bit flipped in data that was synced), or one in an earlier segment, is corruption:
//!   loading fails naming the file and offset. After the last valid record, whatever is not
//!   zero (left over from an unsynced write) is zeroed too, so it can never be read later.
//!   Etcd's rule alone would take damage to synced data for a tear and zero acknowledged
//!   records, so loading also refuses (damage, not a crash: no crash can leave these) a bad
//!   record, or an end of the data, that a synced record after it says was synced; a segment
//!   shorter than its header says it was preallocated to (the allocation is synced before the
//!   header is written); a newest segment that the one before says the log continues in
//!   while it holds no header, or is not there (a closing record is written only once the
//!   next segment's header is durable; only the newest is checked so, since removed segments
//!   a crash brings back may come back in any order). A closing record torn by a crash (past
//!   the allocation, zeros after it) is taken as never written.
//! - A synced record claims only what is true: at most the offset the last successful sync of
//!   its segment covered, which a crash can never take back. A load writes what follows the
//!   last claim again and syncs it before anything claims it (a killed process's writes may be
//!   only in the page cache; a failed sync's may be marked clean there and not be on the disk).
//!   So a torn write, which lies past the last sync, is never claimed.
//! - Memory is bounded: entries older than the cache are read back from their file; `places`
//!   and `terms` cost a few bytes per entry and per term.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use latch_proto::internal::{WalCompact, WalHeader, WalSnapshot};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};

use super::files::{Dir, File};
use super::schema::FORMAT_VERSION;
use super::{StorageError, RESTORE};

/// A segment is preallocated to this many bytes, and closed, a new one started, once full.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Where the log of a member restored from a backup starts after ([`LogStore::create_after`]):
/// index 1 of term 1, the position its state is applied at (`fsm::snapshot::RESTORED_AT`).
pub const RESTORED_AFTER: (u64, u64) = (1, 1);

const KIND_HEADER: u8 = 1;
const KIND_ENTRY: u8 = 2;
const KIND_HARD_STATE: u8 = 3;
const KIND_COMPACT: u8 = 4;
const KIND_SNAPSHOT: u8 = 5;
const KIND_SYNCED: u8 = 6;
const KIND_CONTINUED: u8 = 7;
/// A synced record's payload: how far the segment was durable, the record's own offset, and a
/// CRC of both and the segment's number (it is valid alone, wherever it is found).
const SYNCED_PAYLOAD: usize = 20;
/// Bytes before a record's payload: length, kind, the head's CRC, the payload's CRC.
const RECORD_HEAD: usize = 13;
/// The unit a disk writes whole (or not at all), for telling a torn write from corruption.
const SECTOR: usize = 512;
/// Largest record a reader accepts (an entry holds at most one request).
const MAX_RECORD: usize = 1 << 30;

/// Position of the last entry no longer in the log (compacted or covered by a snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    pub index: u64,
    pub term: u64,
}

/// Whose log this is: every segment header says, and loading checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
}

/// A snapshot of the applied state, ready to be streamed to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedSnapshot {
    pub index: u64,
    pub term: u64,
    /// Raft's configuration as of `index`, as the state recorded it (encoded); `None`: the
    /// state records none (no change was ever applied), so it is the log's.
    pub conf_state: Option<Vec<u8>>,
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

/// Where an entry's record is, and the CRC it chains from.
#[derive(Debug, Clone, Copy)]
struct Place {
    segment: u64,
    offset: u64,
    prev: u32,
}

struct Segment {
    name: String,
    file: Box<dyn File>,
    /// The highest entry index written in it, replaced since or not (0: none).
    last_index: u64,
}

pub struct LogStore {
    dir: Box<dyn Dir>,
    identity: Identity,
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
    /// Where the record of each entry `compacted.index + 1 ..= last` is.
    places: VecDeque<Place>,
    segments: BTreeMap<u64, Segment>,
    /// The segment appended to.
    active: u64,
    /// Its length, counting `pending`.
    active_len: u64,
    /// The CRC of its last record, counting `pending`: the next record chains from it.
    chain: u32,
    /// Records not flushed yet.
    pending: Vec<u8>,
    /// How far the active segment is durable: the end of the last write a sync covered.
    synced_len: u64,
    /// How far the last synced record written to it claimed: a write begins with a new one
    /// when a sync has covered more since.
    claimed: u64,
    /// Whether the records written since the last sync include one that must be durable before
    /// anything depending on it leaves the member: an entry, a vote or term, a compaction or an
    /// installed snapshot. A commit index alone need not be (see [`LogStore::set_commit`]).
    must_sync: bool,
    /// Segments to delete once the compaction that freed them is durable.
    doomed: Vec<u64>,
    /// The size segments are preallocated to and closed at ([`SEGMENT_BYTES`]; tests use
    /// small ones).
    segment_bytes: u64,
    /// It held no raft state when it was loaded: no entry, compaction, term, vote or commit
    /// (no segment, or only segments a start that persisted nothing left behind). Set once,
    /// by `load`.
    fresh: bool,
}

/// What an entry costs the cache: its payload and a fixed overhead.
fn entry_bytes(e: &Entry) -> usize {
    e.data.len() + e.context.len() + 64
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

/// The CRC the first record of segment `seq` chains from.
fn chain_seed(seq: u64) -> u32 {
    crc32fast::hash(&seq.to_le_bytes())
}

fn payload_crc(prev: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&prev.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Encodes a record chained after `prev`; returns its CRC (the next record's `prev`).
fn encode_record(kind: u8, payload: &[u8], prev: u32, out: &mut Vec<u8>) -> u32 {
    let len = (payload.len() as u32).to_le_bytes();
    let mut head = crc32fast::Hasher::new();
    head.update(&len);
    head.update(&[kind]);
    let crc = payload_crc(prev, payload);
    out.extend_from_slice(&len);
    out.push(kind);
    out.extend_from_slice(&head.finalize().to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    crc
}

fn synced_check(seq: u64, offset: u64, through: u64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&offset.to_le_bytes());
    h.update(&through.to_le_bytes());
    h.finalize()
}

/// The payload of a synced record at `offset` of segment `seq`: the segment was durable up to
/// `through` when it was written.
fn synced_payload(seq: u64, offset: u64, through: u64) -> Vec<u8> {
    let mut payload = Vec::with_capacity(SYNCED_PAYLOAD);
    payload.extend_from_slice(&through.to_le_bytes());
    payload.extend_from_slice(&offset.to_le_bytes());
    payload.extend_from_slice(&synced_check(seq, offset, through).to_le_bytes());
    payload
}

/// How far a synced record's payload, found at `offset` of segment `seq`, says the segment was
/// durable; `None` if it does not check (not a synced record, or not written there).
fn synced_through(seq: u64, offset: usize, payload: &[u8]) -> Option<u64> {
    let through = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let at = u64::from_le_bytes(payload.get(8..16)?.try_into().ok()?);
    let check = u32::from_le_bytes(payload.get(16..SYNCED_PAYLOAD)?.try_into().ok()?);
    (at == offset as u64 && through <= at && check == synced_check(seq, at, through)).then_some(through)
}

/// The first synced record after a bad record at `bad` that says the segment was durable past
/// it — evidence that the bad record was synced, so damaged since, not torn by a crash: the
/// record's offset and its claim. Found by its own checks, not the chain the bad record broke.
fn synced_past(seq: u64, bytes: &[u8], bad: usize) -> Option<(usize, u64)> {
    let len = (SYNCED_PAYLOAD as u32).to_le_bytes();
    // Nothing is found in the zeros at the end (a segment is preallocated with them).
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |last| last + 1);
    let mut at = bad + 1;
    while at + RECORD_HEAD + SYNCED_PAYLOAD <= end {
        let b = &bytes[at..at + RECORD_HEAD + SYNCED_PAYLOAD];
        if b[4] == KIND_SYNCED && b[..4] == len && crc32fast::hash(&b[..5]).to_le_bytes() == b[5..9] {
            match synced_through(seq, at, &b[RECORD_HEAD..]) {
                Some(through) if through > bad as u64 => return Some((at, through)),
                _ => {}
            }
        }
        at += 1;
    }
    None
}

/// A record read back: its kind, payload and CRC.
type Record<'a> = (u8, &'a [u8], u32);

/// Why bytes are not a valid record.
#[derive(Debug, Clone, Copy)]
struct BadRecord {
    /// Whether its head checks (so its length can be trusted).
    head_ok: bool,
    len: usize,
    why: &'static str,
}

/// One record, chained after `prev`, read back; `Ok(None)` at the end of the data (zeros).
fn decode_record(bytes: &[u8], prev: u32) -> Result<Option<Record<'_>>, BadRecord> {
    let bad = |head_ok, len, why| Err(BadRecord { head_ok, len, why });
    if bytes.len() < RECORD_HEAD {
        return if bytes.iter().all(|b| *b == 0) {
            Ok(None)
        } else {
            bad(false, 0, "a record head cut short")
        };
    }
    if bytes[..RECORD_HEAD].iter().all(|b| *b == 0) {
        return Ok(None);
    }
    let field = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let (len, kind, head_crc, crc) = (field(0) as usize, bytes[4], field(5), field(9));
    if crc32fast::hash(&bytes[..5]) != head_crc {
        return bad(false, 0, "a record head whose checksum does not match");
    }
    if len > MAX_RECORD {
        return bad(false, 0, "a record longer than any written");
    }
    if bytes.len() < RECORD_HEAD + len {
        return bad(true, len, "a record cut short");
    }
    let payload = &bytes[RECORD_HEAD..RECORD_HEAD + len];
    if payload_crc(prev, payload) != crc {
        return bad(true, len, "a record whose checksum does not match");
    }
    Ok(Some((kind, payload, crc)))
}

/// Whether a bad record at `offset` of the last segment was torn by a crash (see the module
/// doc): it runs past the end of the file, or a sector of it is all zeros.
fn torn(bytes: &[u8], offset: usize, bad: BadRecord) -> bool {
    let end = if bad.head_ok { offset + RECORD_HEAD + bad.len } else { offset + RECORD_HEAD };
    if end > bytes.len() {
        return true;
    }
    let mut sector = offset / SECTOR * SECTOR;
    while sector < end {
        let (from, to) = (sector.max(offset), (sector + SECTOR).min(end));
        if from < to && bytes[from..to].iter().all(|b| *b == 0) {
            return true;
        }
        sector += SECTOR;
    }
    false
}

/// How a walk over a segment's records ended.
enum SegmentEnd {
    /// Zeros from this offset: the end of the data.
    Clean(usize),
    /// A record torn by a crash at this offset.
    Torn(usize, &'static str),
    /// A bad record at this offset that no crash explains, and why.
    Corrupt(usize, String),
}

/// Walks the valid records of segment `seq`, handing each to `visit` with its offset; says how
/// the walk ended. Whether a bad record counts as torn is for the caller (last segment only).
/// Sees each valid record of a walk: its offset, kind, payload and the CRC it chains from.
type Visit<'a> = dyn FnMut(usize, u8, &[u8], u32) -> Result<(), StorageError> + 'a;

fn walk(seq: u64, bytes: &[u8], visit: &mut Visit) -> Result<SegmentEnd, StorageError> {
    let mut offset = 0;
    let mut prev = chain_seed(seq);
    while offset < bytes.len() {
        match decode_record(&bytes[offset..], prev) {
            Ok(None) => return Ok(SegmentEnd::Clean(offset)),
            Ok(Some((kind, payload, crc))) => {
                visit(offset, kind, payload, prev)?;
                prev = crc;
                offset += RECORD_HEAD + payload.len();
            }
            Err(bad) if torn(bytes, offset, bad) => {
                return Ok(match synced_past(seq, bytes, offset) {
                    None => SegmentEnd::Torn(offset, bad.why),
                    Some((at, through)) => SegmentEnd::Corrupt(
                        offset,
                        format!(
                            "{} (damaged after it was written, not torn by a crash: the record \
                             at offset {at} says the segment was synced through offset {through})",
                            bad.why
                        ),
                    ),
                })
            }
            Err(bad) => return Ok(SegmentEnd::Corrupt(offset, bad.why.to_string())),
        }
    }
    Ok(SegmentEnd::Clean(offset))
}

/// A segment before the last that ends in a torn record at or past its allocation, with nothing
/// after it: its closing record, written after the next segment was durable, torn by a crash
/// before its sync.
fn closing_torn(end: SegmentEnd, last_segment: bool, allocated: u64, bytes: &[u8]) -> SegmentEnd {
    match end {
        SegmentEnd::Torn(o, _)
            if !last_segment
                && allocated > 0
                && o as u64 >= allocated
                && bytes[(o + RECORD_HEAD + 8).min(bytes.len())..].iter().all(|b| *b == 0) =>
        {
            SegmentEnd::Clean(o)
        }
        end => end,
    }
}

/// What a member whose log was damaged after it was written is told.
const DAMAGED: &str = "the member does not start on a damaged log (it could have forgotten \
     entries it acknowledged)";

fn io(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Log(format!("{what}: {e}"))
}

fn corrupt(e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(e.to_string())
}

fn pb_bytes(msg: &impl protobuf::Message) -> Result<Vec<u8>, StorageError> {
    msg.write_to_bytes().map_err(|e| corrupt(format!("cannot encode a raft message: {e}")))
}

impl LogStore {
    /// Loads the log from `dir` (creating its first segment when it is empty), caching up to
    /// `cache_limit` bytes of its newest entries, with segments of `segment_bytes`. A fresh log
    /// gets `voters` as its configuration.
    pub fn load(
        dir: Box<dyn Dir>,
        identity: Identity,
        voters: &[u64],
        snapshots: Arc<dyn SnapshotSource>,
        cache_limit: usize,
        segment_bytes: u64,
    ) -> Result<LogStore, StorageError> {
        let mut seqs: Vec<u64> = Vec::new();
        for name in dir.list().map_err(|e| io(&format!("cannot list {}", dir.describe("")), e))? {
            if let Some(seq) = name.strip_suffix(".wal").and_then(|h| u64::from_str_radix(h, 16).ok()) {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut store = LogStore {
            dir,
            identity,
            snapshots,
            hard_state: HardState::default(),
            conf_state: ConfState { voters: voters.to_vec(), ..Default::default() },
            compacted: Compacted::default(),
            last: 0,
            cache: VecDeque::new(),
            cache_from: 1,
            cache_bytes: 0,
            cache_limit,
            terms: vec![(0, 0)],
            places: VecDeque::new(),
            segments: BTreeMap::new(),
            active: 0,
            active_len: 0,
            chain: 0,
            pending: Vec::new(),
            synced_len: 0,
            claimed: 0,
            must_sync: false,
            doomed: Vec::new(),
            segment_bytes,
            fresh: false,
        };
        // Entries of a segment may follow a gap that a compaction recorded further on (the
        // segment before was deleted once that record was durable): the first pass finds how far
        // compaction went, and the second skips what it covers. The first pass also finds
        // damage, before the second repairs a torn tail.
        let n = seqs.len();
        let mut floor = Compacted::default();
        // Whether the segment before the last present one names it: closed once it was durable.
        let (mut prev_continued, mut closed_before_last) = (None, false);
        for (i, seq) in seqs.iter().enumerate() {
            let (continued_in, data_end);
            (floor, continued_in, data_end) = store.survey(*seq, i + 1 == n, floor)?;
            closed_before_last = prev_continued == Some(*seq);
            if i + 1 == n && data_end == 0 && closed_before_last {
                return Err(corrupt(format!(
                    "{}: holds no header, though the segment before says the log continues in it; {DAMAGED}: {RESTORE}",
                    store.dir.describe(&segment_name(*seq))
                )));
            }
            prev_continued = continued_in;
            match continued_in {
                // Only the newest can be missing without a gap replay sees; earlier ones may be
                // removed segments a crash brought back out of order.
                Some(next) if i + 1 == n => {
                    return Err(corrupt(format!(
                        "{}: {} is missing: {} ends saying the log continues in it (lost or \
                         deleted after it was written, not by a crash: a segment is closed only once \
                         the next one is durable); {DAMAGED}: {RESTORE}",
                        store.dir.describe(""),
                        segment_name(next),
                        segment_name(*seq),
                    )))
                }
                _ => {}
            }
        }
        let mut before_last = None;
        for (i, seq) in seqs.iter().enumerate() {
            store.replay(*seq, i + 1 == n, floor)?;
            if i + 2 == n {
                before_last = Some((store.active, store.active_len, store.chain));
            }
        }
        // A crash in a rollover may have left the full segment unclosed (or its closing record
        // torn): closed now, so that losing the newest segment later is seen.
        if let Some((full, end, chain)) = before_last.filter(|_| !closed_before_last) {
            if full + 1 == store.active {
                store.close_segment(full, end, chain)?;
            }
        }
        store.compact_to(floor);
        // Replay may hold replaced entries for a while (a later record replaces them); what it
        // ends with must be a log raft could have written.
        if let Some(w) = store.terms.windows(2).find(|w| w[1].1 < w[0].1) {
            let ((from, term), (index, lower)) = (w[0], w[1]);
            return Err(corrupt(format!(
                "{}: entry {index} has term {lower}, below the term {term} of the entries from {from} \
                 before it: entries a new leader replaced came back",
                store.dir.describe("")
            )));
        }
        // Judged by what the log holds, not by whether a segment exists: a start that wrote
        // nothing (refused, or stopped before raft persisted anything) leaves an empty segment,
        // and the next start must see the same empty log.
        store.fresh = store.last == 0
            && store.compacted == Compacted::default()
            && store.hard_state == HardState::default();
        if store.segments.is_empty() {
            store.start_segment(1)?;
        }
        // A segment a killed process created may not be in the directory for good yet.
        store.dir.sync().map_err(|e| io(&format!("cannot sync {}", store.dir.describe("")), e))?;
        store.evict();
        Ok(store)
    }

    /// The furthest compaction a segment records (in headers, compactions and snapshots), or
    /// `floor` if it is further, and the segment it says the log continues in; reads only, and
    /// refuses a segment damaged after it was written (see the module's invariants).
    fn survey(
        &self,
        seq: u64,
        last_segment: bool,
        floor: Compacted,
    ) -> Result<(Compacted, Option<u64>, usize), StorageError> {
        let name = segment_name(seq);
        let path = self.dir.describe(&name);
        let (_, bytes) = self.read_segment(&name)?;
        let mut floor = floor;
        let (mut allocated, mut continued_in) = (0, None);
        let end = walk(seq, &bytes, &mut |offset, kind, payload, _| {
            let bad = |e: &dyn std::fmt::Display| {
                corrupt(format!("{path}: undecodable record at offset {offset}: {e}"))
            };
            let c = match kind {
                KIND_HEADER => {
                    let h = WalHeader::decode(payload).map_err(|e| bad(&e))?;
                    allocated = h.allocated;
                    Compacted { index: h.compacted_index, term: h.compacted_term }
                }
                KIND_CONTINUED => {
                    let next = payload
                        .try_into()
                        .map(u64::from_le_bytes)
                        .map_err(|_| bad(&"not a segment number"))?;
                    continued_in = Some(next);
                    Compacted::default()
                }
                KIND_COMPACT => {
                    let c = WalCompact::decode(payload).map_err(|e| bad(&e))?;
                    Compacted { index: c.index, term: c.term }
                }
                KIND_SNAPSHOT => {
                    let s = WalSnapshot::decode(payload).map_err(|e| bad(&e))?;
                    Compacted { index: s.index, term: s.term }
                }
                _ => Compacted::default(),
            };
            if c.index > floor.index {
                floor = c;
            }
            Ok(())
        })?;
        if (bytes.len() as u64) < allocated {
            return Err(corrupt(format!(
                "{path}: {} bytes long, though it was preallocated to {allocated} before its first \
                 record was written: cut short after it was written, not by a crash; {DAMAGED}: {RESTORE}",
                bytes.len()
            )));
        }
        let end = closing_torn(end, last_segment, allocated, &bytes);
        let bad = match end {
            SegmentEnd::Clean(o) => synced_past(seq, &bytes, o).map(|(at, through)| {
                (o, format!("the data ends, though the record at offset {at} says the segment was synced through offset {through}"))
            }),
            // The second pass repairs it.
            SegmentEnd::Torn(..) if last_segment => None,
            // Only the last segment can end in a write not synced yet.
            SegmentEnd::Torn(offset, why) => Some((offset, why.to_string())),
            SegmentEnd::Corrupt(offset, ref why) => Some((offset, why.clone())),
        };
        let data_end = match end {
            SegmentEnd::Clean(o) | SegmentEnd::Torn(o, _) | SegmentEnd::Corrupt(o, _) => o,
        };
        match bad {
            Some((offset, why)) => {
                Err(corrupt(format!("{path}: at offset {offset}, {why}; {DAMAGED}: {RESTORE}")))
            }
            None => Ok((floor, continued_in, data_end)),
        }
    }

    fn read_segment(&self, name: &str) -> Result<(Box<dyn File>, Vec<u8>), StorageError> {
        let path = self.dir.describe(name);
        let file = self.dir.open(name).map_err(|e| io(&format!("cannot open {path}"), e))?;
        let len = file.len().map_err(|e| io(&format!("cannot read {path}"), e))?;
        let mut bytes = vec![0u8; len as usize];
        file.read_at(0, &mut bytes).map_err(|e| io(&format!("cannot read {path}"), e))?;
        Ok((file, bytes))
    }

    /// Replays one segment into the in-memory view; entries at or below `floor` (compacted,
    /// per [`LogStore::survey`]) are skipped. The last segment's torn tail, and whatever
    /// follows its data, is zeroed.
    fn replay(&mut self, seq: u64, last_segment: bool, floor: Compacted) -> Result<(), StorageError> {
        let name = segment_name(seq);
        let path = self.dir.describe(&name);
        let (mut file, bytes) = self.read_segment(&name)?;
        let mut last_index = 0;
        let mut chain = chain_seed(seq);
        let (mut allocated, mut claimed) = (0, 0);
        let end = walk(seq, &bytes, &mut |offset, kind, payload, prev| {
            chain = payload_crc(prev, payload);
            match kind {
                KIND_HEADER => allocated = WalHeader::decode(payload).map(|h| h.allocated).unwrap_or(0),
                KIND_SYNCED => claimed = synced_through(seq, offset, payload).unwrap_or(claimed),
                _ => {}
            }
            self.replay_record(&path, seq, offset, kind, payload, prev, floor, &mut last_index)
        })?;
        let end = closing_torn(end, last_segment, allocated, &bytes);
        let data_end = match end {
            SegmentEnd::Clean(end) => end,
            SegmentEnd::Torn(offset, why) if last_segment => {
                tracing::warn!(file = %path, offset, "raft log: {why} at the end of its data (a write a crash tore): dropped");
                offset
            }
            // The survey refused these.
            SegmentEnd::Torn(offset, _) | SegmentEnd::Corrupt(offset, _) => {
                return Err(corrupt(format!("{path}: a bad record at offset {offset}")))
            }
        };
        if last_segment {
            // What a killed process wrote may still be only in the page cache: durable before a
            // synced record claims it. Written again, from where the last claim ends: pages whose
            // write-back failed (the process died of the failed sync) may be clean in the page
            // cache and not on the disk, and a sync alone would not write them. Then zeros over
            // whatever follows the data, the file's size kept: nothing unsynced survives.
            let from = (claimed as usize).min(data_end);
            let leftover = bytes[data_end..].iter().rposition(|b| *b != 0).map_or(0, |last| last + 1);
            let mut again = bytes[from..data_end].to_vec();
            again.resize(data_end - from + leftover, 0);
            file.write_at(from as u64, &again).map_err(|e| io(&format!("cannot write {path}"), e))?;
            file.sync().map_err(|e| io(&format!("cannot sync {path}"), e))?;
            self.synced_len = data_end as u64;
            self.claimed = 0;
        }
        if data_end == 0 && !last_segment {
            return Err(corrupt(format!("{path}: an empty segment before the last one")));
        }
        if data_end == 0 {
            // The last segment, whose header the crash cut off (the survey refused it if the one
            // before was closed, so its header was durable): start it again (`load` closes the
            // one before, as the rollover would have).
            drop(file);
            self.dir.remove(&name).map_err(|e| io(&format!("cannot remove {path}"), e))?;
            return self.start_segment(seq);
        }
        self.active = seq;
        self.active_len = data_end as u64;
        self.chain = chain;
        self.segments.insert(seq, Segment { name, file, last_index });
        Ok(())
    }

    /// One valid record of a segment being replayed.
    #[allow(clippy::too_many_arguments)]
    fn replay_record(
        &mut self,
        path: &str,
        seq: u64,
        offset: usize,
        kind: u8,
        payload: &[u8],
        prev: u32,
        floor: Compacted,
        last_index: &mut u64,
    ) -> Result<(), StorageError> {
        let bad = |e: &dyn std::fmt::Display| {
            corrupt(format!("{path}: undecodable record at offset {offset}: {e}"))
        };
        if offset == 0 && kind != KIND_HEADER {
            return Err(corrupt(format!("{path}: does not start with a segment header")));
        }
        match kind {
            KIND_HEADER => {
                let h = WalHeader::decode(payload).map_err(|e| bad(&e))?;
                self.check_identity(path, &h)?;
                self.hard_state = HardState::parse_from_bytes(&h.hard_state).map_err(|e| bad(&e))?;
                self.conf_state = ConfState::parse_from_bytes(&h.conf_state).map_err(|e| bad(&e))?;
                self.compact_to(Compacted { index: h.compacted_index, term: h.compacted_term });
            }
            KIND_ENTRY => {
                let e = Entry::parse_from_bytes(payload).map_err(|e| bad(&e))?;
                *last_index = (*last_index).max(e.index);
                if e.index <= floor.index {
                    // Compacted. It also truncates: entries after it, above the floor, are gone.
                    if self.last > floor.index {
                        self.reset_to(floor);
                    }
                    return Ok(());
                }
                if self.last < floor.index {
                    // The entries between were in a deleted segment: compacted.
                    self.reset_to(floor);
                }
                if e.index <= self.compacted.index {
                    return Ok(());
                }
                if e.index > self.last + 1 {
                    return Err(corrupt(format!(
                        "{path}: entry {} at offset {offset} follows entry {}: a gap in the log",
                        e.index, self.last
                    )));
                }
                if e.index <= self.last {
                    self.truncate_from(e.index);
                }
                self.places.push_back(Place { segment: seq, offset: offset as u64, prev });
                self.push(e);
                // Bounded while loading too: what leaves the cache is read back from its file.
                self.evict();
            }
            KIND_HARD_STATE => {
                self.hard_state = HardState::parse_from_bytes(payload).map_err(|e| bad(&e))?;
            }
            KIND_COMPACT => {
                let c = WalCompact::decode(payload).map_err(|e| bad(&e))?;
                self.compact_to(Compacted { index: c.index, term: c.term });
            }
            KIND_SNAPSHOT => {
                let s = WalSnapshot::decode(payload).map_err(|e| bad(&e))?;
                self.conf_state = ConfState::parse_from_bytes(&s.conf_state).map_err(|e| bad(&e))?;
                self.reset_to(Compacted { index: s.index, term: s.term });
            }
            // Evidence for the survey; no state.
            KIND_SYNCED | KIND_CONTINUED => {}
            other => {
                return Err(corrupt(format!("{path}: a record of unknown kind {other} at offset {offset}")))
            }
        }
        Ok(())
    }

    fn check_identity(&self, path: &str, h: &WalHeader) -> Result<(), StorageError> {
        let path = std::path::PathBuf::from(path);
        if h.format != FORMAT_VERSION {
            return Err(StorageError::Format { path, found: h.format, expected: FORMAT_VERSION });
        }
        if h.cluster_id != self.identity.cluster_id {
            return Err(StorageError::WrongCluster {
                path,
                found: h.cluster_id,
                expected: self.identity.cluster_id,
            });
        }
        if h.member_id != self.identity.member_id {
            return Err(StorageError::WrongMember {
                path,
                found: h.member_id,
                expected: self.identity.member_id,
            });
        }
        Ok(())
    }

    /// Starts segment `seq`, with a header holding the state so far, synced with its directory
    /// entry.
    fn start_segment(&mut self, seq: u64) -> Result<(), StorageError> {
        let name = segment_name(seq);
        let path = self.dir.describe(&name);
        let header = WalHeader {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            format: FORMAT_VERSION,
            compacted_index: self.compacted.index,
            compacted_term: self.compacted.term,
            hard_state: pb_bytes(&self.hard_state)?,
            conf_state: pb_bytes(&self.conf_state)?,
            allocated: self.segment_bytes,
        };
        let mut bytes = Vec::new();
        let chain = encode_record(KIND_HEADER, &header.encode_to_vec(), chain_seed(seq), &mut bytes);
        let mut file = self.dir.create(&name).map_err(|e| io(&format!("cannot create {path}"), e))?;
        file.allocate(self.segment_bytes).map_err(|e| io(&format!("cannot allocate {path}"), e))?;
        // The size is durable before the header says it: a segment found shorter was cut since.
        file.sync().map_err(|e| io(&format!("cannot sync {path}"), e))?;
        file.write_at(0, &bytes).map_err(|e| io(&format!("cannot write {path}"), e))?;
        file.sync().map_err(|e| io(&format!("cannot sync {path}"), e))?;
        self.dir.sync().map_err(|e| io(&format!("cannot sync {}", self.dir.describe("")), e))?;
        self.segments.insert(seq, Segment { name, file, last_index: 0 });
        self.active = seq;
        self.active_len = bytes.len() as u64;
        self.chain = chain;
        self.synced_len = self.active_len;
        self.claimed = 0;
        Ok(())
    }

    /// Ends the full segment `seq` (its data ending at `end`, its last record's CRC `chain`)
    /// saying that the log continues in the next one, which must be durable already.
    fn close_segment(&mut self, seq: u64, end: u64, chain: u32) -> Result<(), StorageError> {
        let segment = self.segments.get_mut(&seq).ok_or_else(|| corrupt("no raft log segment to close"))?;
        let path = self.dir.describe(&segment.name);
        let mut bytes = Vec::new();
        encode_record(KIND_CONTINUED, &(seq + 1).to_le_bytes(), chain, &mut bytes);
        segment.file.write_at(end, &bytes).map_err(|e| io(&format!("cannot write {path}"), e))?;
        segment.file.sync().map_err(|e| io(&format!("cannot sync {path}"), e))
    }

    /// Makes the empty log in `dir` start after [`RESTORED_AFTER`], as if a snapshot there had
    /// been installed with `voters` as the configuration, durably: the log of a member restored
    /// from a backup (`backup`), whose state is at that position. A member that joins later with
    /// an empty log is then sent a snapshot of the state, not the log from its first entry
    /// (which would be applied to an empty state). Fails on a log that is not empty.
    pub fn create_after(dir: Box<dyn Dir>, identity: Identity, voters: &[u64]) -> Result<(), StorageError> {
        let (index, term) = RESTORED_AFTER;
        struct NoSnapshots;
        impl SnapshotSource for NoSnapshots {
            fn prepare(&self, _: u64) -> Result<Option<PreparedSnapshot>, String> {
                Ok(None)
            }
        }
        let mut store = LogStore::load(dir, identity, voters, Arc::new(NoSnapshots), 0, SEGMENT_BYTES)?;
        if !store.is_fresh() {
            return Err(corrupt(format!("{} is not empty", store.dir.describe(""))));
        }
        let mut meta = SnapshotMetadata { index, term, ..Default::default() };
        meta.set_conf_state(store.conf_state.clone());
        store.install_snapshot(&meta)?;
        store.flush()?;
        Ok(())
    }

    /// Writes the configuration of a fresh log (so it survives a restart): it is in the first
    /// segment's header already.
    pub fn persist_initial(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Brings the log in line with the state machine, durable at `(index, term)`, when a member
    /// restarts. A log that ends before it — a snapshot was installed in the state, and the
    /// crash came before the log recorded it — is moved past it, as an installed snapshot would
    /// move it. A log that starts after it, or that holds another term at its index, cannot be
    /// what that state was applied from: an error names both.
    pub fn reconcile(&mut self, index: u64, term: u64) -> Result<(), StorageError> {
        if self.fresh && index > 0 {
            return Err(StorageError::Corrupt(format!(
                "the raft log ({}) is missing or empty, but the state machine is at index {index}: \
                 the log was lost (a member does not rejoin under its id with an empty log: it would \
                 have forgotten its vote and the entries it acknowledged, and a write the cluster \
                 acknowledged could be lost): {RESTORE}",
                self.dir.describe("")
            )));
        }
        let installed = |log: &LogStore| {
            // Only a snapshot install puts the state past the commit index the log recorded.
            index > log.last || (index > log.hard_state.commit && log.entry_term(index) != Some(term))
        };
        if installed(self) {
            let mut meta = SnapshotMetadata { index, term, ..Default::default() };
            meta.set_conf_state(self.conf_state.clone());
            self.install_snapshot(&meta)?;
            self.flush()?;
            return Ok(());
        }
        if index < self.compacted.index {
            return Err(StorageError::Corrupt(format!(
                "the state machine is at index {index}, but the raft log starts at {}: the log \
                 no longer holds the entries the state lacks",
                self.compacted.index + 1
            )));
        }
        if index > 0 && self.entry_term(index) != Some(term) {
            return Err(StorageError::Corrupt(format!(
                "the state machine applied index {index} in term {term}, but the raft log holds \
                 term {:?} there",
                self.entry_term(index)
            )));
        }
        if index > self.hard_state.commit {
            // A snapshot matching the log was installed; the commit index it implies had not
            // reached the log.
            self.set_commit(index)?;
            self.flush()?;
        }
        Ok(())
    }

    /// Takes `conf_state` as raft's configuration from now on: the one the state recorded as of
    /// its applied index (`fsm::conf_state`), at a start, before raft reads
    /// [`raft::Storage::initial_state`].
    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    /// Whether it held no raft state when it was loaded: the member's first life, or a later
    /// one whose log was lost (see `server::admission`).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Whether it is as [`LogStore::create_after`] left it at a restore from a backup — starting
    /// after index 1 of term 1, no entry, no vote, no later term: nothing happened in it since,
    /// so, like an empty log, it is a first life or a later one whose data was lost and restored
    /// again (see `server::admission`).
    pub fn is_as_restored(&self) -> bool {
        let (index, term) = RESTORED_AFTER;
        !self.fresh
            && self.compacted == Compacted { index, term }
            && self.last == index
            && self.hard_state.term == term
            && self.hard_state.vote == 0
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

    /// Whether records wait to be flushed.
    pub fn dirty(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Bytes of entries held in memory.
    pub fn cached_bytes(&self) -> usize {
        self.cache_bytes
    }

    /// The names of the segment files, oldest first (for checks and tests).
    pub fn segment_names(&self) -> Vec<String> {
        self.segments.values().map(|s| s.name.clone()).collect()
    }

    /// Appends the records written since the last flush to the active segment and, when one of
    /// them must be durable (see `must_sync`), syncs it (one fdatasync); then deletes the
    /// segments a durable compaction freed, and starts a new segment when the active one is
    /// full (syncing the old one first: a later segment's synced records never follow an
    /// earlier one's unsynced ones). Returns whether it synced.
    pub fn flush(&mut self) -> Result<bool, StorageError> {
        if self.pending.is_empty() {
            return Ok(false);
        }
        let pending = std::mem::take(&mut self.pending);
        let at = self.active_len - pending.len() as u64;
        let full = self.active_len >= self.segment_bytes;
        let sync = std::mem::take(&mut self.must_sync) || full;
        let segment =
            self.segments.get_mut(&self.active).ok_or_else(|| corrupt("no active raft log segment"))?;
        let path = self.dir.describe(&segment.name);
        segment.file.write_at(at, &pending).map_err(|e| io(&format!("cannot write {path}"), e))?;
        if sync {
            segment.file.sync().map_err(|e| io(&format!("cannot sync {path}"), e))?;
            self.synced_len = self.active_len;
        }
        if sync && !self.doomed.is_empty() {
            for seq in std::mem::take(&mut self.doomed) {
                if let Some(s) = self.segments.remove(&seq) {
                    self.dir
                        .remove(&s.name)
                        .map_err(|e| io(&format!("cannot remove {}", self.dir.describe(&s.name)), e))?;
                }
            }
            self.dir.sync().map_err(|e| io(&format!("cannot sync {}", self.dir.describe("")), e))?;
        }
        if full {
            let (closed, end, chain) = (self.active, self.active_len, self.chain);
            self.start_segment(closed + 1)?;
            self.close_segment(closed, end, chain)?;
        }
        Ok(sync)
    }

    /// The flush holding the latest changes is done: entries it wrote may now leave the cache
    /// (oldest first, while it is over its limit).
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

    /// Buffers a record that must be durable before the next flush returns; returns where it
    /// goes and the CRC it chains from.
    fn write(&mut self, kind: u8, payload: &[u8]) -> (u64, u32) {
        self.must_sync = true;
        self.write_lazy(kind, payload)
    }

    /// Buffers a record that may stay unsynced (written with the next flush, made durable by
    /// the next sync): a crash of the machine may lose it.
    fn write_lazy(&mut self, kind: u8, payload: &[u8]) -> (u64, u32) {
        if self.pending.is_empty() && self.synced_len > self.claimed {
            // The first record of a write after a sync says how far that sync went.
            let (offset, prev) = (self.active_len, self.chain);
            let synced = synced_payload(self.active, offset, self.synced_len);
            self.chain = encode_record(KIND_SYNCED, &synced, prev, &mut self.pending);
            self.active_len += self.pending.len() as u64;
            self.claimed = self.synced_len;
        }
        let (offset, prev) = (self.active_len, self.chain);
        let before = self.pending.len();
        self.chain = encode_record(kind, payload, prev, &mut self.pending);
        self.active_len += (self.pending.len() - before) as u64;
        (offset, prev)
    }

    /// Appends `new` (consecutive entries), replacing any existing entries from `new[0].index` on.
    pub fn append(&mut self, new: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = new.first() else { return Ok(()) };
        if first.index <= self.compacted.index || first.index > self.last + 1 {
            return Err(StorageError::Corrupt(format!(
                "append at index {} outside the log ({}..={})",
                first.index,
                self.compacted.index + 1,
                self.last + 1
            )));
        }
        if first.index <= self.last {
            self.truncate_from(first.index);
        }
        for e in new {
            let bytes = pb_bytes(e)?;
            let (offset, prev) = self.write(KIND_ENTRY, &bytes);
            self.places.push_back(Place { segment: self.active, offset, prev });
            if let Some(s) = self.segments.get_mut(&self.active) {
                s.last_index = s.last_index.max(e.index);
            }
            self.push(e.clone());
        }
        Ok(())
    }

    /// Forgets the entries from `index` on (in memory).
    fn truncate_from(&mut self, index: u64) {
        if index < self.cache_from {
            // Entries below `index` are unchanged (and written): they may be read from files.
            self.cache.clear();
            self.cache_bytes = 0;
            self.cache_from = index;
        } else {
            let keep = (index - self.cache_from) as usize;
            for e in self.cache.drain(keep..) {
                self.cache_bytes -= entry_bytes(&e);
            }
        }
        self.places.truncate((index - self.compacted.index - 1) as usize);
        self.last = index - 1;
        while self.terms.len() > 1 && self.terms.last().is_some_and(|&(from, _)| from >= index) {
            self.terms.pop();
        }
    }

    /// Records raft's hard state. A change of term or vote is synced with the next flush (a
    /// member must never vote twice in a term); a change of the commit index alone is not:
    /// the commit index is volatile in Raft (it is relearned from the leader), entries are
    /// applied as soon as it is written, and a crash of the machine may take it back. What that
    /// would let a restarted member serve is covered in `core` (reads wait for a ReadIndex).
    pub fn set_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError> {
        let bytes = pb_bytes(hs)?;
        if hs.term != self.hard_state.term || hs.vote != self.hard_state.vote {
            self.write(KIND_HARD_STATE, &bytes);
        } else {
            self.write_lazy(KIND_HARD_STATE, &bytes);
        }
        self.hard_state = hs.clone();
        Ok(())
    }

    /// Records a new commit index (unsynced, as [`LogStore::set_hard_state`] says).
    pub fn set_commit(&mut self, commit: u64) -> Result<(), StorageError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    /// Drops the whole log in favour of an installed snapshot at `meta`.
    pub fn install_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), StorageError> {
        self.conf_state = meta.get_conf_state().clone();
        let record =
            WalSnapshot { index: meta.index, term: meta.term, conf_state: pb_bytes(&self.conf_state)? };
        self.write(KIND_SNAPSHOT, &record.encode_to_vec());
        self.reset_to(Compacted { index: meta.index, term: meta.term });
        // Every segment but the active one holds only entries the snapshot covers.
        self.doomed.extend(self.segments.keys().copied().filter(|s| *s != self.active));
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        self.set_hard_state(&hs)
    }

    /// Empties the log: everything up to `c` is gone.
    fn reset_to(&mut self, c: Compacted) {
        self.cache.clear();
        self.cache_bytes = 0;
        self.places.clear();
        self.compacted = c;
        self.last = c.index;
        self.cache_from = c.index + 1;
        self.terms = vec![(c.index, c.term)];
        self.hard_state.commit = self.hard_state.commit.max(c.index);
    }

    /// Removes the entries up to and including `to` (which must be durably applied).
    pub fn compact(&mut self, to: u64) -> Result<(), StorageError> {
        if to <= self.compacted.index || to > self.last {
            return Ok(());
        }
        let term = self.entry_term(to).unwrap_or(self.compacted.term);
        let record = WalCompact { index: to, term };
        self.write(KIND_COMPACT, &record.encode_to_vec());
        self.compact_to(Compacted { index: to, term });
        // Whole segments of compacted entries go once this record is durable, from the front
        // only (the module's invariants).
        let front = self.segments.iter().take_while(|(seq, s)| **seq != self.active && s.last_index <= to);
        let doomed: Vec<u64> = front.map(|(seq, _)| *seq).filter(|seq| !self.doomed.contains(seq)).collect();
        self.doomed.extend(doomed);
        Ok(())
    }

    /// Forgets the entries up to `c.index` (in memory).
    fn compact_to(&mut self, c: Compacted) {
        if c.index <= self.compacted.index {
            return;
        }
        if c.index >= self.last {
            self.reset_to(c);
            return;
        }
        while self.cache.front().is_some_and(|e| e.index <= c.index) {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= entry_bytes(&e);
            }
        }
        let drop = (c.index - self.compacted.index) as usize;
        self.places.drain(..drop.min(self.places.len()));
        self.cache_from = self.cache_from.max(c.index + 1);
        self.compacted = c;
        // The run holding `c.index` now starts there.
        let keep = self.terms.partition_point(|&(from, _)| from <= c.index);
        self.terms.drain(..keep.saturating_sub(1));
        if let Some(run) = self.terms.first_mut() {
            *run = (c.index, c.term);
        }
    }

    fn entry_term(&self, index: u64) -> Option<u64> {
        if index < self.compacted.index || index > self.last {
            return None;
        }
        let run = self.terms.partition_point(|&(from, _)| from <= index);
        self.terms.get(run.checked_sub(1)?).map(|&(_, t)| t)
    }

    /// Reads entry `index` (below the cache) back from its segment.
    fn read_stored(&self, index: u64) -> raft::Result<Entry> {
        let place = self
            .places
            .get((index - self.compacted.index - 1) as usize)
            .ok_or_else(|| other(format!("raft log: no record of entry {index}")))?;
        let segment = self.segments.get(&place.segment).ok_or_else(|| {
            other(format!("raft log: entry {index} is in segment {}, which is gone", place.segment))
        })?;
        let mut head = [0u8; RECORD_HEAD];
        segment.file.read_at(place.offset, &mut head).map_err(other)?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > MAX_RECORD {
            return Err(other(format!("raft log: entry {index}: a record of {len} bytes")));
        }
        let mut bytes = vec![0u8; RECORD_HEAD + len];
        segment.file.read_at(place.offset, &mut bytes).map_err(other)?;
        let (kind, payload, _) = match decode_record(&bytes, place.prev) {
            Ok(Some(r)) => r,
            Ok(None) => return Err(other(format!("raft log: entry {index}: zeros where its record was"))),
            Err(bad) => return Err(other(format!("raft log: entry {index}: {}", bad.why))),
        };
        let e = if kind == KIND_ENTRY {
            Entry::parse_from_bytes(payload).map_err(other)?
        } else {
            Entry::default()
        };
        if kind != KIND_ENTRY || e.index != index {
            return Err(other(format!("raft log: the record of entry {index} holds another record")));
        }
        Ok(e)
    }
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
        let mut size = 0u64;
        for index in low..high.min(self.cache_from) {
            let e = self.read_stored(index)?;
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max {
                return Ok(out);
            }
            out.push(e);
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
        // The configuration as of the snapshot's own index: the log's is as of its start.
        let conf_state = match prepared.conf_state {
            Some(bytes) => ConfState::parse_from_bytes(&bytes).map_err(other)?,
            None => self.conf_state.clone(),
        };
        meta.set_conf_state(conf_state);
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::files::FsDir;
    use raft::Storage as _;

    const ME: Identity = Identity { cluster_id: 7, member_id: 1 };

    struct NoSnapshots;

    impl SnapshotSource for NoSnapshots {
        fn prepare(&self, _: u64) -> Result<Option<PreparedSnapshot>, String> {
            Ok(None)
        }
    }

    fn open(dir: &std::path::Path, segment_bytes: u64) -> Result<LogStore, StorageError> {
        let files = FsDir::open(dir).expect("the dir opens");
        LogStore::load(Box::new(files), ME, &[1, 2, 3], Arc::new(NoSnapshots), 1, segment_bytes)
    }

    fn entry(index: u64, term: u64) -> Entry {
        let data = format!("entry {index} {}", "x".repeat(300)).into_bytes();
        Entry { index, term, data: data.into(), ..Default::default() }
    }

    fn append(log: &mut LogStore, from: u64, to: u64, term: u64) {
        let es: Vec<_> = (from..=to).map(|i| entry(i, term)).collect();
        log.append(&es).expect("append");
        log.flush().expect("flush");
        log.committed();
    }

    /// Every entry the log holds, read back through `raft::Storage`.
    fn all(log: &LogStore) -> Vec<(u64, u64)> {
        let (first, last) = (log.first_index().expect("first"), log.last_index().expect("last"));
        if last < first {
            return Vec::new();
        }
        let es = log.entries(first, last + 1, None, GetEntriesContext::empty(false)).expect("entries");
        es.iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn a_log_reloads_exactly_what_was_flushed_including_replaced_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = open(dir.path(), 1024).expect("fresh log");
            append(&mut log, 1, 10, 1);
            append(&mut log, 6, 8, 2); // a new leader replaces 6..=10
            let hs = HardState { term: 2, vote: 3, commit: 7, ..Default::default() };
            log.set_hard_state(&hs).expect("hard state");
            log.flush().expect("flush");
            assert!(log.segment_names().len() > 1, "1 KiB segments: the log spans several");
        }
        let log = open(dir.path(), 1024).expect("reloads");
        let want: Vec<_> = (1..=5).map(|i| (i, 1)).chain((6..=8).map(|i| (i, 2))).collect();
        assert_eq!(all(&log), want, "entries 9 and 10 of term 1 are gone, 6..=8 are term 2");
        assert_eq!((log.hard_state().term, log.hard_state().vote, log.hard_state().commit), (2, 3, 7));
    }

    /// A start that persisted nothing (a member refused by its peers, or stopped while asking
    /// them) leaves an empty segment behind; the next start must still see an empty log, or a
    /// member that lost its data would be let in on its second try.
    #[test]
    fn a_log_is_fresh_until_it_holds_raft_state_whatever_segments_exist() {
        let dir = tempfile::tempdir().expect("tempdir");
        for start in 1..=2 {
            let log = open(dir.path(), 1 << 20).expect("loads");
            assert!(log.is_fresh(), "start {start}: nothing persisted yet");
            assert!(!log.segment_names().is_empty(), "start {start}: the first segment exists");
        }
        {
            let mut log = open(dir.path(), 1 << 20).expect("loads");
            // A term learned from a peer, no vote, no entry: persisted, so it is not forgotten.
            log.set_hard_state(&HardState { term: 1, ..Default::default() }).expect("hard state");
            log.flush().expect("flush");
        }
        assert!(!open(dir.path(), 1 << 20).expect("loads").is_fresh(), "a persisted term");
        let dir = tempfile::tempdir().expect("tempdir");
        append(&mut open(dir.path(), 1 << 20).expect("loads"), 1, 1, 1);
        assert!(!open(dir.path(), 1 << 20).expect("loads").is_fresh(), "an entry");
    }

    #[test]
    fn a_flush_syncs_entries_votes_and_compactions_but_not_a_commit_index_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = open(dir.path(), 1 << 20).expect("fresh log");
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]).expect("append");
        assert!(log.flush().expect("flush"), "a flush holding entries syncs");
        log.set_commit(2).expect("commit");
        assert!(!log.flush().expect("flush"), "a flush holding only a commit index does not sync");
        let hs = HardState { term: 2, vote: 1, commit: 3, ..Default::default() };
        log.set_hard_state(&hs).expect("hard state");
        assert!(log.flush().expect("flush"), "a flush holding a new term and vote syncs");
        log.compact(2).expect("compact");
        assert!(log.flush().expect("flush"), "a flush holding a compaction syncs");
        log.set_commit(3).expect("commit");
        log.flush().expect("flush");
        drop(log);
        // A process crash keeps the page cache: the unsynced commit index is read back.
        let log = open(dir.path(), 1 << 20).expect("reloads");
        assert_eq!(log.hard_state().commit, 3);
    }

    #[test]
    fn compaction_deletes_whole_segments_and_reload_skips_the_gap_they_leave() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = open(dir.path(), 2048).expect("fresh log");
            for from in (1..=60).step_by(5) {
                append(&mut log, from, from + 4, 1);
            }
            let before = log.segment_names().len();
            log.compact(45).expect("compact");
            log.flush().expect("flush");
            assert!(
                log.segment_names().len() < before,
                "segments holding only compacted entries are deleted"
            );
            append(&mut log, 61, 62, 1);
        }
        let log = open(dir.path(), 2048).expect("reloads despite the deleted segments");
        let got = all(&log);
        assert_eq!(got.first(), Some(&(46, 1)), "the log starts after the compaction");
        assert_eq!(got.last(), Some(&(62, 1)));
        assert_eq!(got.len(), 17, "no gap");
        assert_eq!(log.term(45).expect("the compaction point keeps its term"), 1);
    }

    #[test]
    fn a_torn_tail_is_dropped_and_corruption_before_it_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = open(dir.path(), 1 << 20).expect("fresh log");
            append(&mut log, 1, 5, 1);
        }
        let segment = dir.path().join(segment_name(1));
        let good = std::fs::read(&segment).expect("segment");
        let end = good.iter().rposition(|b| *b != 0).expect("data") + 1;

        // A crash lost the last sector of the last record (a sector is written whole or not): it
        // is dropped, the rest reloads, appends go on.
        let mut last_record = 0;
        let mut at = 0;
        while at < end {
            last_record = at;
            at += RECORD_HEAD + u32::from_le_bytes(good[at..at + 4].try_into().expect("4 bytes")) as usize;
        }
        let mut torn = good.clone();
        torn[((end - 1) / SECTOR * SECTOR).max(last_record)..end].fill(0);
        std::fs::write(&segment, &torn).expect("write");
        {
            let mut log = open(dir.path(), 1 << 20).expect("a torn tail is not corruption");
            assert_eq!(all(&log).last(), Some(&(4, 1)), "the cut entry 5 is dropped");
            append(&mut log, 5, 6, 2);
        }
        let log = open(dir.path(), 1 << 20).expect("reloads after the repair");
        assert_eq!(all(&log).last(), Some(&(6, 2)));
        drop(log);

        // A flipped byte inside the data, with records after it: corruption, named.
        let mut flipped = good;
        flipped[80] ^= 0xff;
        std::fs::write(&segment, &flipped).expect("write");
        let err = open(dir.path(), 1 << 20).err().expect("a bad record with data after it is corruption");
        let msg = err.to_string();
        assert!(msg.contains(&segment.display().to_string()) && msg.contains("offset"), "got {msg}");
    }

    #[test]
    fn a_log_of_another_cluster_or_member_is_refused_naming_the_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open(dir.path(), 1 << 20).expect("fresh log"));
        let files = FsDir::open(dir.path()).expect("dir");
        let other = Identity { cluster_id: 8, member_id: 1 };
        let err = LogStore::load(Box::new(files), other, &[1], Arc::new(NoSnapshots), 1, 1 << 20)
            .err()
            .expect("another cluster's log");
        assert!(matches!(err, StorageError::WrongCluster { .. }), "got {err}");
        assert!(err.to_string().contains(&segment_name(1)), "names the segment: {err}");
    }

    #[test]
    fn an_installed_snapshot_replaces_the_log_and_survives_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = open(dir.path(), 2048).expect("fresh log");
            append(&mut log, 1, 30, 1);
            let mut meta = SnapshotMetadata { index: 50, term: 3, ..Default::default() };
            meta.set_conf_state(ConfState { voters: vec![1, 2, 3], ..Default::default() });
            log.install_snapshot(&meta).expect("install");
            log.flush().expect("flush");
            assert_eq!(log.segment_names().len(), 1, "only the active segment remains");
            append(&mut log, 51, 52, 3);
        }
        let log = open(dir.path(), 2048).expect("reloads");
        assert_eq!(all(&log), vec![(51, 3), (52, 3)]);
        assert_eq!(log.compacted(), Compacted { index: 50, term: 3 });
        assert!(log.hard_state().commit >= 50, "the snapshot is committed");
    }

    /// The data of the only segment, and where its records end.
    fn segment_data(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>, usize) {
        let segment = dir.join(segment_name(1));
        let bytes = std::fs::read(&segment).expect("segment");
        let end = bytes.iter().rposition(|b| *b != 0).expect("data") + 1;
        (segment, bytes, end)
    }

    #[test]
    fn a_crash_that_kept_a_later_sector_but_not_an_earlier_one_loses_only_the_unsynced_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = open(dir.path(), 1 << 20).expect("fresh log");
            append(&mut log, 1, 3, 1);
        }
        let (segment, synced, synced_end) = segment_data(dir.path());
        {
            let mut log = open(dir.path(), 1 << 20).expect("reloads");
            append(&mut log, 4, 9, 2);
        }
        // The second write (entries 4..=9) reached the disk but for one sector in its middle.
        let (_, mut torn, _) = segment_data(dir.path());
        let hole = (synced_end / SECTOR + 1) * SECTOR;
        torn[hole..hole + SECTOR].fill(0);
        std::fs::write(&segment, &torn).expect("write");
        {
            let log = open(dir.path(), 1 << 20).expect("a torn write is not corruption");
            let got = all(&log);
            assert!(
                got.len() >= 3 && got[..3] == [(1, 1), (2, 1), (3, 1)],
                "what was synced before stays: {got:?}"
            );
            assert!(
                got.iter().all(|&(i, t)| i <= 3 || t == 2),
                "nothing but the write's own entries: {got:?}"
            );
        }
        // Whatever followed the hole is gone for good: new records of another term written over
        // it never meet the old ones.
        {
            let mut log = open(dir.path(), 1 << 20).expect("reloads");
            let last = log.last_index().expect("last");
            append(&mut log, last + 1, last + 1, 3);
        }
        let log = open(dir.path(), 1 << 20).expect("reloads");
        let terms: Vec<u64> = all(&log).iter().map(|&(_, t)| t).collect();
        assert!(terms.windows(2).all(|w| w[0] <= w[1]), "terms never go down along the log: {terms:?}");
        let _ = synced;
    }

    #[test]
    fn a_flipped_bit_in_a_records_length_is_corruption_not_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = open(dir.path(), 1 << 20).expect("fresh log");
            append(&mut log, 1, 6, 1);
        }
        let (segment, mut bytes, _) = segment_data(dir.path());
        // The header record, then entry 1's: flip a high bit of entry 2's length.
        let mut at = 0;
        for _ in 0..2 {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
            at += RECORD_HEAD + len;
        }
        bytes[at + 2] ^= 0x40;
        std::fs::write(&segment, &bytes).expect("write");
        let err = open(dir.path(), 1 << 20).err().expect("entries 2..=6 were synced: not a torn tail");
        assert!(err.to_string().contains("offset"), "named: {err}");
    }

    /// Etcd's rule alone takes a sector of zeros for a torn write wherever it is in the last
    /// segment, and zeroes every record after it: here, synced and acknowledged ones.
    #[test]
    fn a_zeroed_sector_that_a_later_write_says_was_synced_is_damage_not_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = open(dir.path(), 1 << 20).expect("fresh log");
            append(&mut log, 1, 5, 1);
            append(&mut log, 6, 10, 1);
        }
        let (segment, mut bytes, end) = segment_data(dir.path());
        assert!(end > 3 * SECTOR, "the first write spans sectors 0 and 1: {end} bytes");
        bytes[SECTOR..2 * SECTOR].fill(0);
        std::fs::write(&segment, &bytes).expect("write");
        let err =
            open(dir.path(), 1 << 20).err().expect("entries 2..=5 were synced before 6..=10 were written");
        let msg = err.to_string();
        assert!(
            msg.contains(&segment.display().to_string()) && msg.contains("synced through offset"),
            "names the file and the evidence: {msg}"
        );
        assert_eq!(std::fs::read(&segment).expect("segment"), bytes, "nothing is repaired on a refusal");
    }

    #[test]
    fn a_segment_cut_short_is_refused_even_at_a_record_boundary() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = open(dir.path(), 1 << 20).expect("fresh log");
            append(&mut log, 1, 5, 1);
        }
        let (segment, _, end) = segment_data(dir.path());
        for cut in [end, end - 100] {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&segment)
                .and_then(|f| f.set_len(cut as u64))
                .expect("cut");
            let err = open(dir.path(), 1 << 20).err().expect("a segment shorter than its allocation");
            assert!(err.to_string().contains("preallocated to 1048576"), "cut at {cut}: {err}");
        }
    }

    #[test]
    fn a_lost_newest_segment_is_refused_but_one_a_crash_kept_from_closing_the_last_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = open(dir.path(), 2048).expect("fresh log");
            for from in (1..=12).step_by(3) {
                append(&mut log, from, from + 2, 1);
            }
            assert!(log.segment_names().len() >= 3, "2 KiB segments: {:?}", log.segment_names());
        }
        let names = sorted_names(dir.path());
        let (newest, closed) = (&names[names.len() - 1], dir.path().join(&names[names.len() - 2]));
        let kept = std::fs::read(dir.path().join(newest)).expect("newest");
        std::fs::remove_file(dir.path().join(newest)).expect("remove");
        let err = open(dir.path(), 2048).err().expect("the log went on in the lost segment");
        assert!(err.to_string().contains(&format!("{newest} is missing")), "names it: {err}");

        // A crash after the next segment was started, before the full one was closed: the
        // newest is there and the closing record is not.
        std::fs::write(dir.path().join(newest), &kept).expect("restore");
        unclose(&closed);
        let log = open(dir.path(), 2048).expect("an unclosed full segment is a crash's");
        assert_eq!(all(&log).len(), 12, "every entry is back");
    }

    #[test]
    fn a_replaced_entry_at_or_below_the_compaction_point_still_truncates_what_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = open(dir.path(), 1 << 20).expect("fresh log");
            append(&mut log, 1, 10, 1);
            append(&mut log, 5, 8, 2);
            log.compact(8).expect("compact");
            log.flush().expect("flush");
        }
        let log = open(dir.path(), 1 << 20).expect("reloads");
        assert_eq!(log.last_index().expect("last"), 8, "entries 9 and 10 of term 1 stay gone");
    }

    /// Records hard states (commit `commit`, term 2) until the active segment fills and the
    /// next one starts.
    fn fill_segment(log: &mut LogStore, commit: u64) {
        let segments = log.segment_names().len();
        while log.segment_names().len() == segments {
            let hs = HardState { term: 2, commit, ..Default::default() };
            log.set_hard_state(&hs).expect("hard state");
            log.flush().expect("flush");
        }
    }

    /// A follower's log of entries 1..=20 of term 1 in segments of a few entries, whose 11..=20
    /// a new leader replaced with 11..=12 of term 2, in a segment since filled: a fresh log in
    /// `dir`, ready to compact to its end (12).
    fn replaced_then_filled(dir: &std::path::Path) -> LogStore {
        let mut log = open(dir, 1024).expect("fresh log");
        for from in [1, 6, 11, 16] {
            append(&mut log, from, from + 4, 1);
        }
        append(&mut log, 11, 12, 2);
        fill_segment(&mut log, 12);
        log
    }

    /// Compaction reaches the log's end (12): the segment holding the replaced entries must go
    /// with the one that replaced them, or a reload brings 13..=20 of term 1 back behind 12 of
    /// term 2.
    #[test]
    fn compaction_to_the_end_of_the_log_never_brings_replaced_entries_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = replaced_then_filled(dir.path());
            log.compact(12).expect("compact");
            log.flush().expect("flush");
            assert_eq!(all(&log), Vec::<(u64, u64)>::new(), "everything up to 12 is compacted");
        }
        let log = open(dir.path(), 1024).expect("reloads");
        assert_eq!(log.last_index().expect("last"), 12, "the log ends where it ended: {:?}", all(&log));
        assert_eq!(log.term(12).expect("term"), 2);
    }

    /// As above, but a crash lost the removal of both segments (their unlinks were not yet
    /// durable): reloaded, they are back. Their bounds come from what the log holds, so the
    /// segment of replaced entries still goes with the one that replaced them.
    #[test]
    fn segments_a_crash_kept_from_removal_still_go_with_what_replaced_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kept = tempfile::tempdir().expect("tempdir");
        {
            let mut log = replaced_then_filled(dir.path());
            for f in std::fs::read_dir(dir.path()).expect("lists") {
                let f = f.expect("an entry");
                std::fs::copy(f.path(), kept.path().join(f.file_name())).expect("copies");
            }
            log.compact(12).expect("compact");
            log.flush().expect("flush");
        }
        // The crash: the removed segments are back, and the active one is as it was last written.
        for f in std::fs::read_dir(kept.path()).expect("lists") {
            let f = f.expect("an entry");
            if !dir.path().join(f.file_name()).exists() {
                std::fs::copy(f.path(), dir.path().join(f.file_name())).expect("restores");
            }
        }
        {
            let mut log = open(dir.path(), 1024).expect("reloads with the segments back");
            assert_eq!(log.last_index().expect("last"), 12);
            append(&mut log, 13, 13, 2);
            fill_segment(&mut log, 13);
            log.compact(13).expect("compact");
            log.flush().expect("flush");
        }
        let log = open(dir.path(), 1024).expect("reloads after compacting to its end again");
        assert_eq!(log.last_index().expect("last"), 13, "the log ends where it ended: {:?}", all(&log));
    }

    /// Replaced entries that fill a segment of their own, and start the next one: compaction
    /// below them keeps that segment (the next one's replaced entries follow from it), and the
    /// log reloads whole after each compaction.
    #[test]
    fn a_segment_of_replaced_entries_stays_while_the_next_one_continues_from_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = open(dir.path(), 1024).expect("fresh log");
            append(&mut log, 1, 12, 1);
            append(&mut log, 13, 20, 1);
            let mut es: Vec<Entry> = (21..=25).map(|i| entry(i, 1)).collect();
            es.extend((13..=14).map(|i| entry(i, 2)));
            log.append(&es).expect("append");
            log.flush().expect("flush");
        }
        for to in [5, 12, 13] {
            let mut log = open(dir.path(), 1024).expect("reloads");
            log.compact(to).expect("compact");
            log.flush().expect("flush");
            drop(log);
            let log =
                open(dir.path(), 1024).unwrap_or_else(|e| panic!("reloads after compacting to {to}: {e}"));
            let expect: Vec<(u64, u64)> = (to + 1..=14).map(|i| (i, if i > 12 { 2 } else { 1 })).collect();
            assert_eq!(all(&log), expect, "after compacting to {to}");
        }
    }

    /// Entries whose terms go down cannot be a log raft wrote: loading refuses them, naming the
    /// segment, rather than serve a log that could vote for a stale candidate.
    #[test]
    fn a_log_whose_terms_decrease_is_refused_naming_the_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = open(dir.path(), 1 << 20).expect("fresh log");
            append(&mut log, 1, 3, 2);
            // Not something `append` lets raft-rs do; written here as a damaged log would be.
            let bytes = pb_bytes(&entry(4, 1)).expect("encodes");
            log.write(KIND_ENTRY, &bytes);
            log.flush().expect("flush");
        }
        let err = open(dir.path(), 1 << 20).err().expect("a log with terms 2, 2, 2, 1 is refused");
        let msg = err.to_string();
        assert!(msg.contains("entry 4") && msg.contains("term 1"), "the error names the entry: {msg}");
    }

    #[test]
    fn a_state_that_installed_a_snapshot_the_log_never_recorded_moves_the_log_past_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = open(dir.path(), 1 << 20).expect("fresh log");
        append(&mut log, 1, 10, 1);
        log.set_commit(2).expect("commit");
        log.flush().expect("flush");
        drop(log);
        // The state took a snapshot at (5, 2) — the log holds term 1 there, uncommitted.
        let mut log = open(dir.path(), 1 << 20).expect("reloads");
        log.reconcile(5, 2).expect("the state is ahead of the commit index: an install");
        assert_eq!(log.compacted(), Compacted { index: 5, term: 2 });
        assert_eq!(log.last_index().expect("last"), 5);
        // At or below the commit index the log is right, and a mismatch is corruption.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = open(dir.path(), 1 << 20).expect("fresh log");
        append(&mut log, 1, 10, 1);
        log.set_commit(8).expect("commit");
        log.flush().expect("flush");
        drop(log);
        let mut log = open(dir.path(), 1 << 20).expect("reloads");
        assert!(log.reconcile(5, 2).is_err(), "a committed entry of another term than the state applied");
    }

    #[test]
    fn a_missing_log_beside_a_state_that_applied_entries_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = open(dir.path(), 1 << 20).expect("a fresh (empty) log");
        let err = log.reconcile(7, 1).expect_err("the log was lost");
        assert!(err.to_string().contains("missing"), "says why: {err}");
    }

    /// Record (offset, kind, payload length) heads until a head of zeros; no CRC checks.
    fn records(bytes: &[u8]) -> Vec<(usize, u8, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + RECORD_HEAD <= bytes.len() && bytes[at..at + RECORD_HEAD].iter().any(|b| *b != 0) {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
            out.push((at, bytes[at + 4], len));
            at += RECORD_HEAD + len;
        }
        out
    }

    /// Zeroes the closing record of a full segment, as a crash before it was written leaves it.
    fn unclose(segment: &std::path::Path) {
        let mut bytes = std::fs::read(segment).expect("segment");
        let &(at, kind, len) = records(&bytes).last().expect("records");
        assert_eq!(kind, KIND_CONTINUED, "the full segment was closed");
        bytes[at..at + RECORD_HEAD + len].fill(0);
        std::fs::write(segment, &bytes).expect("write");
    }

    fn sorted_names(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = FsDir::open(dir).expect("dir").list().expect("list");
        names.sort();
        names
    }

    /// A crash in `close_segment` between its write and its sync (or a process killed there,
    /// then the machine before write-back) may keep one sector of the closing record and not
    /// the other: a torn record in a segment that is no longer the last. No damage, yet refused.
    #[test]
    fn a_closing_record_a_crash_tore_is_not_damage() {
        for seg in (1024u64..8192).step_by(7) {
            let dir = tempfile::tempdir().expect("tempdir");
            {
                let mut log = open(dir.path(), seg).expect("fresh log");
                let mut i = 1;
                while log.segment_names().len() < 2 {
                    append(&mut log, i, i, 1);
                    i += 1;
                }
            }
            let s1 = dir.path().join(segment_name(1));
            let bytes = std::fs::read(&s1).expect("segment 1");
            let &(at, kind, len) = records(&bytes).last().expect("records");
            assert_eq!(kind, KIND_CONTINUED, "segment 1 ends with its closing record");
            let end = at + RECORD_HEAD + len;
            let boundary = (at / SECTOR + 1) * SECTOR;
            if boundary >= end {
                continue;
            }
            // The crash kept the sector holding the record's start, not the next one.
            let mut torn = bytes.clone();
            torn[boundary..end].fill(0);
            std::fs::write(&s1, &torn).expect("write");
            if let Err(e) = open(dir.path(), seg) {
                panic!("segment size {seg}: a closing record at {at}..{end} whose second sector a crash lost is no damage: {e}");
            }
            return;
        }
        panic!("no segment size put the closing record across a sector boundary");
    }

    /// Compaction removes segments 1..k (unsynced until the directory sync); a crash may bring
    /// back any of them. Segment 1 back, segment 2 not: segment 1 says the log continues in 2.
    #[test]
    fn removed_segments_a_crash_brought_back_out_of_order_still_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kept = tempfile::tempdir().expect("tempdir");
        {
            let mut log = open(dir.path(), 2048).expect("fresh log");
            for from in (1..=60).step_by(5) {
                append(&mut log, from, from + 4, 1);
            }
            for f in std::fs::read_dir(dir.path()).expect("lists") {
                let f = f.expect("an entry");
                std::fs::copy(f.path(), kept.path().join(f.file_name())).expect("copies");
            }
            log.compact(45).expect("compact");
            log.flush().expect("flush");
        }
        let now = sorted_names(dir.path());
        let removed: Vec<String> =
            sorted_names(kept.path()).into_iter().filter(|n| !now.contains(n)).collect();
        assert!(removed.len() >= 2, "removed {removed:?}");
        std::fs::copy(kept.path().join(&removed[0]), dir.path().join(&removed[0])).expect("back");
        if let Err(e) = open(dir.path(), 2048) {
            panic!("removed {removed:?}, only {} came back, which a crash may do: refused: {e}", removed[0]);
        }
    }

    /// Builds segments of 2 KiB until the newest holds entries; returns how many were appended.
    fn newest_with_entries(dir: &std::path::Path) -> u64 {
        let mut log = open(dir, 2048).expect("fresh log");
        let mut i = 1;
        loop {
            append(&mut log, i, i, 1);
            if log.segment_names().len() >= 2 && log.segments[&log.active].last_index > 0 {
                return i;
            }
            i += 1;
        }
    }

    /// A crash in a rollover before the full segment was closed, the next one's header durable
    /// or not: the load (starting the next one again if need be) closes the full one, so that
    /// losing the newest segment later is seen.
    #[test]
    fn a_full_segment_a_crash_left_unclosed_is_closed_at_the_next_load() {
        for header_lost in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            newest_with_entries(dir.path());
            let names = sorted_names(dir.path());
            let (closed, newest) =
                (dir.path().join(&names[names.len() - 2]), dir.path().join(&names[names.len() - 1]));
            unclose(&closed);
            if header_lost {
                std::fs::write(&newest, vec![0u8; 2048]).expect("write");
            }
            drop(open(dir.path(), 2048).expect("a crash's rollover loads"));
            let bytes = std::fs::read(&closed).expect("closed");
            assert_eq!(
                records(&bytes).last().map(|r| r.1),
                Some(KIND_CONTINUED),
                "header lost: {header_lost}: closed again at load"
            );
            std::fs::remove_file(&newest).expect("remove");
            let err = open(dir.path(), 2048).err().expect("the newest segment is named");
            assert!(err.to_string().contains("is missing"), "header lost: {header_lost}: {err}");
        }
    }

    /// Damage in a segment before the last: a record zeroed (its head reads as the end of the
    /// data) with synced writes after it in the same segment.
    #[test]
    fn a_zeroed_record_in_an_earlier_segment_is_not_taken_for_its_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        newest_with_entries(dir.path());
        let first = dir.path().join(segment_name(1));
        let mut bytes = std::fs::read(&first).expect("first");
        let heads = records(&bytes);
        let claim = heads.iter().rposition(|r| r.1 == KIND_SYNCED).expect("a synced record");
        let &(at, _, len) =
            heads[..claim].iter().rev().find(|r| r.1 == KIND_ENTRY).expect("an entry before it");
        bytes[at..at + RECORD_HEAD + len].fill(0);
        std::fs::write(&first, &bytes).expect("write");
        let err = open(dir.path(), 2048).err().expect("synced entries after the hole");
        assert!(err.to_string().contains("the data ends, though the record at offset"), "{err}");
    }

    /// Damage: the newest segment's first sector lost (zeros), or the file cut below its
    /// header. Its header gives no `allocated`, the walk ends Clean(0) or Torn(0) with nothing
    /// to scan for, the segment before says the log continues in it (it exists): the load
    /// removes it and starts it again, dropping acknowledged entries.
    #[test]
    fn a_newest_segment_whose_header_is_gone_is_refused_once_the_one_before_was_closed() {
        let mut accepted = Vec::new();
        for how in ["first sector zeroed", "cut to 0 bytes", "cut to 10 bytes"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let acked = newest_with_entries(dir.path());
            let newest = dir.path().join(sorted_names(dir.path()).pop().expect("newest"));
            let mut bytes = std::fs::read(&newest).expect("newest");
            match how {
                "first sector zeroed" => bytes[..SECTOR].fill(0),
                "cut to 0 bytes" => bytes.truncate(0),
                _ => bytes.truncate(10),
            }
            std::fs::write(&newest, &bytes).expect("write");
            if let Ok(log) = open(dir.path(), 2048) {
                accepted.push(format!(
                    "{how}: loaded with last index {} though {acked} entries were synced",
                    log.last
                ));
            }
        }
        assert!(
            accepted.is_empty(),
            "a lost header of a segment the one before names is damage: {accepted:#?}"
        );
    }

    /// Damage: a sector of zeros that starts exactly at a record head. The walk sees a head of
    /// zeros, the end of the data (Clean), so `synced_past` never runs; the records after it,
    /// synced, and a synced record claiming past it, are zeroed as leftovers.
    #[test]
    fn a_zeroed_sector_starting_at_a_record_is_not_taken_for_the_end_of_the_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = open(dir.path(), 1 << 20).expect("fresh log");
            append(&mut log, 1, 1, 1);
            // The next write (a synced record, then entry 2) ends at 1024 exactly.
            let want = 1024 - log.active_len as usize - (RECORD_HEAD + SYNCED_PAYLOAD) - RECORD_HEAD;
            let e2 = (0..want)
                .map(|d| Entry { index: 2, term: 1, data: vec![b'y'; d].into(), ..Default::default() })
                .find(|e| pb_bytes(e).expect("encodes").len() == want)
                .expect("a size that fits");
            log.append(&[e2]).expect("append");
            log.flush().expect("flush");
            log.committed();
            assert_eq!(log.active_len, 1024);
            append(&mut log, 3, 5, 1); // at 1024: a synced record claiming 1024, then 3..=5
            append(&mut log, 6, 6, 1); // a synced record claiming the end of 3..=5
        }
        let (segment, mut bytes, _) = segment_data(dir.path());
        bytes[1024..1024 + SECTOR].fill(0);
        std::fs::write(&segment, &bytes).expect("write");
        if let Ok(log) = open(dir.path(), 1 << 20) {
            panic!(
                "loaded with last index {} though 6 entries were synced: damage taken for the end",
                log.last
            );
        }
    }
}
