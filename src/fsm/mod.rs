//! The replicated state machine: pure and deterministic. Every member applies the same committed
//! raft entries in the same order and reaches the same state; no clock, no randomness, no I/O
//! besides the redb write transaction it is handed (DESIGN.md §2 rule 3 and 4).
//!
//! This file is the dispatcher: it decodes a log entry's `Command`, answers retries of a request
//! id it still remembers, hands the command to its domain (one file per domain: [`kv`] today;
//! sessions and locks later), records the outcome for that request id and advances the applied
//! index. It also owns what spans all domains: position ([`applied`]), [`snapshot`],
//! [`restore`] and [`state_hash`].
//!
//! Invariants:
//! - `fsm_meta` (applied index, term, store revision) is written in the same transaction as the
//!   state it describes; the applied index strictly increases ([`FsmError::OutOfOrder`]).
//! - The store revision never decreases; a command raises it by at most one.
//! - A command that is undecodable or invalid is rejected deterministically: every member
//!   answers the same `Outcome { rejected }` and writes nothing but the applied index (and, when
//!   it carried a request id, the remembered outcome).
//! - Idempotency window: the outcome of a command with a non-empty request id is remembered
//!   while the applied index is at most [`REQUEST_MEMORY_ENTRIES`] entries past the entry that
//!   applied it (`index - applied_at <= REQUEST_MEMORY_ENTRIES`). Within that window a retry
//!   changes nothing and gets the first outcome (with the first outcome's revision); after it the
//!   id is forgotten and a retry is applied again. Pruning forgets the oldest ids on each apply
//!   (amortised O(1): each id is inserted once and removed once).
//! - Stored data that cannot be what this code wrote is reported as [`FsmError::Corrupt`],
//!   naming the table and key; nothing here panics on stored data.

mod kv;

use latch_proto::internal::{command::Body, outcome, Command, FsmSnapshot, Outcome, SnapshotRequest};
use prost::Message;
use redb::{
    ReadOnlyTable, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};

use crate::storage::schema::{
    FSM_APPLIED_INDEX, FSM_APPLIED_TERM, FSM_META, FSM_REVISION, KV, REQUESTS, REQUESTS_BY_INDEX,
};

/// How many raft entries a request id's outcome is remembered for (see the module doc).
pub const REQUEST_MEMORY_ENTRIES: u64 = 1_000_000;
/// The `Command.version` this build applies; a command of another version is rejected.
pub const COMMAND_VERSION: u32 = 1;
/// The `FsmSnapshot.version` this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

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
}

/// Creates every fsm table so read transactions can open them; idempotent.
pub fn init(txn: &WriteTransaction) -> Result<(), FsmError> {
    txn.open_table(FSM_META)?;
    txn.open_table(KV)?;
    txn.open_table(REQUESTS)?;
    txn.open_table(REQUESTS_BY_INDEX)?;
    Ok(())
}

/// Position of the state machine (0/0/0 for a fresh store; revision starts at 0, the first write
/// makes it 1).
pub fn applied(txn: &ReadTransaction) -> Result<Applied, FsmError> {
    match open_read(txn, FSM_META)? {
        Some(meta) => read_meta(&meta),
        None => Ok(Applied::default()),
    }
}

/// Applies one committed raft entry's data at (index, term). Empty `data` (raft's leader no-op,
/// or any entry the caller has nothing to apply for) only advances the applied index/term.
/// Returns `Some((request_id, outcome))` for a Command (the id is empty when the command had
/// none or could not be decoded). A Command that fails to decode, or is invalid, yields
/// `Outcome { rejected }` deterministically and writes nothing but the applied index (and its
/// remembered outcome, if it had an id). If the request id was already applied and is still
/// remembered, returns the stored first Outcome and changes no state besides applied index/term.
pub fn apply_entry(
    txn: &WriteTransaction,
    index: u64,
    term: u64,
    data: &[u8],
) -> Result<Option<(String, Outcome)>, FsmError> {
    let mut pos = read_meta(&txn.open_table(FSM_META)?)?;
    if index <= pos.index {
        return Err(FsmError::OutOfOrder { applied: pos.index, index });
    }
    forget_requests(txn, index)?;
    let result =
        if data.is_empty() { None } else { Some(apply_command(txn, index, &mut pos.revision, data)?) };
    pos.index = index;
    pos.term = term;
    write_meta(txn, pos)?;
    Ok(result)
}

/// Serves a read (linearizable or serializable is decided by the caller) from the current state.
pub fn range(
    txn: &ReadTransaction,
    req: &latch_proto::v1::RangeRequest,
) -> Result<latch_proto::v1::RangeResponse, FsmError> {
    let revision = applied(txn)?.revision;
    kv::read_range(txn, revision, req)
}

/// Whole fsm state, protobuf-encoded `FsmSnapshot`, at its applied index.
pub fn snapshot(txn: &ReadTransaction) -> Result<Vec<u8>, FsmError> {
    let pos = applied(txn)?;
    let snap = FsmSnapshot {
        version: SNAPSHOT_VERSION,
        applied_index: pos.index,
        applied_term: pos.term,
        revision: revision_to_u64(pos.revision)?,
        kv: kv::snapshot_rows(txn)?,
        requests: remembered_requests(txn)?,
    };
    Ok(snap.encode_to_vec())
}

/// Replaces the whole fsm state (all fsm tables cleared first) with a snapshot; returns its
/// position. The snapshot is checked completely before anything is written: a snapshot of
/// another version, undecodable, or holding impossible rows is `FsmError::Corrupt`.
pub fn restore(txn: &WriteTransaction, data: &[u8]) -> Result<Applied, FsmError> {
    let snap = FsmSnapshot::decode(data)
        .map_err(|e| FsmError::Corrupt(format!("snapshot: undecodable FsmSnapshot: {e}")))?;
    if snap.version != SNAPSHOT_VERSION {
        return Err(FsmError::Corrupt(format!(
            "snapshot: version {} is not supported (this build reads version {SNAPSHOT_VERSION})",
            snap.version
        )));
    }
    let revision = i64::try_from(snap.revision)
        .map_err(|_| FsmError::Corrupt(format!("snapshot: revision {} exceeds i64", snap.revision)))?;
    let pos = Applied { index: snap.applied_index, term: snap.applied_term, revision };
    kv::check_rows(&snap.kv, revision)?;
    check_requests(&snap.requests, pos.index)?;

    // Every fsm table; a new domain adds its tables here and in `init`.
    txn.delete_table(FSM_META)?;
    txn.delete_table(KV)?;
    txn.delete_table(REQUESTS)?;
    txn.delete_table(REQUESTS_BY_INDEX)?;
    init(txn)?;
    kv::restore_rows(txn, snap.kv)?;
    {
        let mut requests = txn.open_table(REQUESTS)?;
        let mut by_index = txn.open_table(REQUESTS_BY_INDEX)?;
        for r in &snap.requests {
            let mut record = r.index.to_be_bytes().to_vec();
            record.extend_from_slice(&r.outcome);
            requests.insert(r.request_id.as_str(), record.as_slice())?;
            by_index.insert(r.index, r.request_id.as_str())?;
        }
    }
    write_meta(txn, pos)?;
    Ok(pos)
}

/// Deterministic hash (FNV-1a, 64 bit) of the kv rows, the store revision and the remembered
/// requests; equal states give equal hashes. The applied index and term are not part of it.
pub fn state_hash(txn: &ReadTransaction) -> Result<u64, FsmError> {
    let mut h = Fnv::new();
    h.write(b"revision");
    h.write_u64(revision_to_u64(applied(txn)?.revision)?);
    h.write(b"kv");
    kv::hash_rows(txn, &mut h)?;
    h.write(b"requests");
    for r in remembered_requests(txn)? {
        h.write_u64(r.index);
        h.write_bytes(r.request_id.as_bytes());
        h.write_bytes(&r.outcome);
    }
    Ok(h.finish())
}

/// Applies one non-empty entry: decode, dedup, dispatch, remember.
fn apply_command(
    txn: &WriteTransaction,
    index: u64,
    revision: &mut i64,
    data: &[u8],
) -> Result<(String, Outcome), FsmError> {
    let cmd = match Command::decode(data) {
        Ok(cmd) => cmd,
        Err(e) => {
            let why = format!("command: undecodable Command: {e}");
            return Ok((String::new(), Outcome { result: Some(outcome::Result::Rejected(why)) }));
        }
    };
    if !cmd.request_id.is_empty() {
        if let Some(first) = remembered(txn, &cmd.request_id)? {
            return Ok((cmd.request_id, first));
        }
    }
    let result = if cmd.version != COMMAND_VERSION {
        outcome::Result::Rejected(format!(
            "command: version {} is not supported (this build applies version {COMMAND_VERSION})",
            cmd.version
        ))
    } else {
        match cmd.body {
            None => outcome::Result::Rejected(
                "command: body is missing (expected put, delete_range or txn)".to_string(),
            ),
            Some(Body::Put(req)) => kv::put(txn, revision, req)?,
            Some(Body::DeleteRange(req)) => kv::delete_range(txn, revision, req)?,
            Some(Body::Txn(req)) => kv::txn(txn, revision, req)?,
        }
    };
    let outcome = Outcome { result: Some(result) };
    if !cmd.request_id.is_empty() {
        remember(txn, index, &cmd.request_id, &outcome)?;
    }
    Ok((cmd.request_id, outcome))
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

fn write_meta(txn: &WriteTransaction, pos: Applied) -> Result<(), FsmError> {
    let mut meta = txn.open_table(FSM_META)?;
    meta.insert(FSM_APPLIED_INDEX, pos.index)?;
    meta.insert(FSM_APPLIED_TERM, pos.term)?;
    meta.insert(FSM_REVISION, revision_to_u64(pos.revision)?)?;
    Ok(())
}

fn revision_to_u64(revision: i64) -> Result<u64, FsmError> {
    u64::try_from(revision)
        .map_err(|_| FsmError::Corrupt(format!("table fsm_meta, key {FSM_REVISION}: {revision} is negative")))
}

/// Splits a `requests` row into the index that applied it and the encoded outcome.
fn split_record<'a>(id: &str, record: &'a [u8]) -> Result<(u64, &'a [u8]), FsmError> {
    match record.split_first_chunk::<8>() {
        Some((index, outcome)) => Ok((u64::from_be_bytes(*index), outcome)),
        None => Err(FsmError::Corrupt(format!(
            "table requests, key {id:?}: {} bytes, shorter than its 8-byte index",
            record.len()
        ))),
    }
}

fn decode_outcome(table: &str, id: &str, bytes: &[u8]) -> Result<Outcome, FsmError> {
    Outcome::decode(bytes)
        .map_err(|e| FsmError::Corrupt(format!("{table}, key {id:?}: undecodable Outcome: {e}")))
}

/// The first outcome of `id`, if it is still remembered.
fn remembered(txn: &WriteTransaction, id: &str) -> Result<Option<Outcome>, FsmError> {
    let requests = txn.open_table(REQUESTS)?;
    let Some(row) = requests.get(id)? else { return Ok(None) };
    let (_, bytes) = split_record(id, row.value())?;
    decode_outcome("table requests", id, bytes).map(Some)
}

fn remember(txn: &WriteTransaction, index: u64, id: &str, outcome: &Outcome) -> Result<(), FsmError> {
    let mut record = index.to_be_bytes().to_vec();
    outcome
        .encode(&mut record)
        .map_err(|e| FsmError::Corrupt(format!("table requests, key {id:?}: cannot encode Outcome: {e}")))?;
    txn.open_table(REQUESTS)?.insert(id, record.as_slice())?;
    txn.open_table(REQUESTS_BY_INDEX)?.insert(index, id)?;
    Ok(())
}

/// Forgets the request ids applied more than [`REQUEST_MEMORY_ENTRIES`] entries before `index`.
fn forget_requests(txn: &WriteTransaction, index: u64) -> Result<(), FsmError> {
    let Some(oldest_kept) = index.checked_sub(REQUEST_MEMORY_ENTRIES) else { return Ok(()) };
    let mut by_index = txn.open_table(REQUESTS_BY_INDEX)?;
    let mut requests = txn.open_table(REQUESTS)?;
    loop {
        let (at, id) = match by_index.first()? {
            Some((at, id)) if at.value() < oldest_kept => (at.value(), id.value().to_string()),
            _ => return Ok(()),
        };
        by_index.remove(at)?;
        let recorded_at = match requests.get(id.as_str())? {
            Some(row) => Some(split_record(&id, row.value())?.0),
            None => None,
        };
        if recorded_at != Some(at) {
            return Err(FsmError::Corrupt(format!(
                "table requests_by_index, key {at}: names request {id:?}, which table requests \
                 records at {recorded_at:?}"
            )));
        }
        requests.remove(id.as_str())?;
    }
}

/// The remembered requests in the order they were applied, checked against each other.
fn remembered_requests(txn: &ReadTransaction) -> Result<Vec<SnapshotRequest>, FsmError> {
    let (Some(by_index), Some(requests)) = (open_read(txn, REQUESTS_BY_INDEX)?, open_read(txn, REQUESTS)?)
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for row in by_index.iter()? {
        let (at, id) = row?;
        let (at, id) = (at.value(), id.value());
        let Some(record) = requests.get(id)? else {
            return Err(FsmError::Corrupt(format!(
                "table requests_by_index, key {at}: names request {id:?}, missing from table requests"
            )));
        };
        let (recorded_at, outcome) = split_record(id, record.value())?;
        if recorded_at != at {
            return Err(FsmError::Corrupt(format!(
                "table requests_by_index, key {at}: names request {id:?}, which table requests \
                 records at {recorded_at}"
            )));
        }
        out.push(SnapshotRequest { request_id: id.to_string(), index: at, outcome: outcome.to_vec() });
    }
    if out.len() as u64 != requests.len()? {
        return Err(FsmError::Corrupt(format!(
            "table requests: {} rows, but table requests_by_index indexes {}",
            requests.len()?,
            out.len()
        )));
    }
    Ok(out)
}

fn check_requests(requests: &[SnapshotRequest], applied_index: u64) -> Result<(), FsmError> {
    let mut ids = std::collections::BTreeSet::new();
    let mut previous = 0;
    for r in requests {
        let bad = |why: String| {
            FsmError::Corrupt(format!("snapshot: request {:?} at index {}: {why}", r.request_id, r.index))
        };
        if r.request_id.is_empty() {
            return Err(bad("empty request id".into()));
        }
        if r.index <= previous || r.index > applied_index {
            return Err(bad(format!(
                "index not in increasing order within 1..={applied_index} (previous {previous})"
            )));
        }
        if !ids.insert(r.request_id.as_str()) {
            return Err(bad("request id appears twice".into()));
        }
        decode_outcome("snapshot: request", &r.request_id, &r.outcome)?;
        previous = r.index;
    }
    Ok(())
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
    use latch_proto::v1::{
        compare, request_op, response_op, Compare, DeleteRangeRequest, DeleteRangeResponse, KeyValue,
        PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
    };

    pub(crate) struct Store {
        pub(crate) db: redb::Database,
        /// Index of the last entry applied.
        pub(crate) index: u64,
    }

    impl Store {
        pub(crate) fn new() -> Store {
            let db = redb::Database::builder()
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .expect("an in-memory database opens");
            let txn = db.begin_write().expect("a write transaction begins");
            init(&txn).expect("init creates the fsm tables");
            txn.commit().expect("init commits");
            Store { db, index: 0 }
        }

        /// Applies `data` as the next entry and commits.
        pub(crate) fn apply_data(&mut self, data: &[u8]) -> Option<(String, Outcome)> {
            self.try_apply_data(data).expect("apply_entry succeeds")
        }

        pub(crate) fn try_apply_data(&mut self, data: &[u8]) -> Result<Option<(String, Outcome)>, FsmError> {
            self.index += 1;
            let txn = self.db.begin_write().expect("a write transaction begins");
            let out = apply_entry(&txn, self.index, 1, data)?;
            txn.commit().expect("the apply commits");
            Ok(out)
        }

        /// Applies a version-1 command with `body` and returns its outcome.
        pub(crate) fn apply(&mut self, id: &str, body: Body) -> Outcome {
            let cmd = Command { version: COMMAND_VERSION, request_id: id.into(), body: Some(body) };
            let (got_id, outcome) =
                self.apply_data(&cmd.encode_to_vec()).expect("a command entry yields an outcome");
            assert_eq!(got_id, id, "apply_entry returns the command's request id");
            outcome
        }

        pub(crate) fn read<T>(
            &self,
            f: impl FnOnce(&ReadTransaction) -> Result<T, FsmError>,
        ) -> Result<T, FsmError> {
            f(&self.db.begin_read().expect("a read transaction begins"))
        }

        pub(crate) fn range(&self, req: RangeRequest) -> RangeResponse {
            self.read(|t| range(t, &req)).expect("range succeeds")
        }

        pub(crate) fn get(&self, key: &str) -> Option<KeyValue> {
            self.range(RangeRequest { key: key.into(), ..Default::default() }).kvs.pop()
        }

        pub(crate) fn applied(&self) -> Applied {
            self.read(applied).expect("applied succeeds")
        }

        pub(crate) fn hash(&self) -> u64 {
            self.read(state_hash).expect("state_hash succeeds")
        }
    }

    pub(crate) fn put_req(key: &str, value: &str) -> PutRequest {
        PutRequest { key: key.into(), value: value.into(), ..Default::default() }
    }

    pub(crate) fn put(key: &str, value: &str) -> Body {
        Body::Put(put_req(key, value))
    }

    pub(crate) fn del_req(key: &str, range_end: &[u8]) -> DeleteRangeRequest {
        DeleteRangeRequest { key: key.into(), range_end: range_end.to_vec(), ..Default::default() }
    }

    pub(crate) fn del(key: &str, range_end: &[u8]) -> Body {
        Body::DeleteRange(del_req(key, range_end))
    }

    pub(crate) fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> Body {
        Body::Txn(TxnRequest { compare, success, failure, request_id: String::new() })
    }

    pub(crate) fn cmp(key: &str, result: compare::CompareResult, target: compare::Target) -> Compare {
        Compare { result: result as i32, key: key.into(), target: Some(target) }
    }

    pub(crate) fn op_put(key: &str, value: &str) -> RequestOp {
        RequestOp { request: Some(request_op::Request::Put(put_req(key, value))) }
    }

    pub(crate) fn op_del(key: &str, range_end: &[u8]) -> RequestOp {
        RequestOp { request: Some(request_op::Request::DeleteRange(del_req(key, range_end))) }
    }

    pub(crate) fn op_get(key: &str) -> RequestOp {
        let req = RangeRequest { key: key.into(), ..Default::default() };
        RequestOp { request: Some(request_op::Request::Range(req)) }
    }

    pub(crate) fn as_put(o: Outcome) -> PutResponse {
        match o.result {
            Some(outcome::Result::Put(r)) => r,
            other => panic!("expected a put outcome, got {other:?}"),
        }
    }

    pub(crate) fn as_del(o: Outcome) -> DeleteRangeResponse {
        match o.result {
            Some(outcome::Result::DeleteRange(r)) => r,
            other => panic!("expected a delete_range outcome, got {other:?}"),
        }
    }

    pub(crate) fn as_txn(o: Outcome) -> TxnResponse {
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

    pub(crate) fn as_range(op: &latch_proto::v1::ResponseOp) -> &RangeResponse {
        match &op.response {
            Some(response_op::Response::Range(r)) => r,
            other => panic!("expected a range response op, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn fresh_store_is_at_zero() {
        let s = Store::new();
        assert_eq!(s.applied(), Applied::default(), "a fresh store is at index 0, term 0, revision 0");
        let db = redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("an in-memory database opens");
        let read = db.begin_read().expect("a read transaction begins");
        assert_eq!(applied(&read).expect("applied works before init"), Applied::default());
        assert!(range(&read, &Default::default()).expect("range works before init").kvs.is_empty());
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
        let err = apply_entry(&txn, 1, 1, &[]).expect_err("re-applying index 1 must fail");
        assert!(matches!(err, FsmError::OutOfOrder { applied: 1, index: 1 }), "got {err}");
    }

    #[test]
    fn undecodable_command_is_rejected_and_writes_nothing() {
        let mut s = Store::new();
        let (id, outcome) = s.apply_data(&[0xff, 0xff, 0xff]).expect("an outcome for garbage");
        assert_eq!(id, "", "no request id can be read from garbage");
        assert!(as_rejected(outcome).contains("undecodable"), "the rejection says why");
        assert_eq!(s.applied(), Applied { index: 1, term: 1, revision: 0 });
    }

    #[test]
    fn command_of_another_version_or_without_body_is_rejected() {
        let mut s = Store::new();
        let cmd = Command { version: 2, request_id: "v2".into(), body: Some(put("a", "1")) };
        let (_, outcome) = s.apply_data(&cmd.encode_to_vec()).expect("an outcome");
        assert!(as_rejected(outcome).contains("version 2"), "the rejection names the version");
        let cmd = Command { version: 1, request_id: "nobody".into(), body: None };
        let (_, outcome) = s.apply_data(&cmd.encode_to_vec()).expect("an outcome");
        assert!(as_rejected(outcome).contains("body"), "the rejection names the missing body");
        assert_eq!(s.applied().revision, 0, "rejected commands write nothing");
        assert_eq!(s.get("a"), None, "rejected commands write nothing");
    }

    #[test]
    fn retry_of_a_request_id_applies_once_and_returns_the_first_outcome() {
        let mut s = Store::new();
        let first = s.apply("req-1", put("a", "1"));
        s.apply("", put("b", "2"));
        let hash = s.hash();
        // A retry, even one whose body differs, changes nothing and gets the first outcome.
        let again = s.apply("req-1", put("a", "changed"));
        assert_eq!(again, first, "the retry returns the first outcome, revision included");
        assert_eq!(as_put(again).header.map(|h| h.revision), Some(1));
        assert_eq!(s.hash(), hash, "the retry changes no state");
        assert_eq!(s.applied(), Applied { index: 3, term: 1, revision: 2 }, "the index advances");
        assert_eq!(s.get("a").map(|kv| kv.value), Some(b"1".to_vec()));
    }

    #[test]
    fn request_ids_are_forgotten_after_the_memory_window() {
        let mut s = Store::new();
        s.apply("old", put("a", "1"));
        s.apply("", put("b", "1"));
        // Entry 1 is remembered up to index 1 + REQUEST_MEMORY_ENTRIES.
        s.index = REQUEST_MEMORY_ENTRIES;
        let retry = s.apply("old", put("a", "2"));
        assert_eq!(as_put(retry).header.map(|h| h.revision), Some(1), "still remembered");
        // Entry 2 (`b`, no id) ages out of nothing; `old` at 1 is forgotten from 1 + N + 1 on.
        let again = s.apply("old", put("a", "3"));
        assert_eq!(as_put(again).header.map(|h| h.revision), Some(3), "forgotten: applied again");
        assert_eq!(s.get("a").map(|kv| kv.value), Some(b"3".to_vec()));
        let remembered = s.read(remembered_requests).expect("the requests are consistent");
        let ids: Vec<_> = remembered.iter().map(|r| (r.request_id.as_str(), r.index)).collect();
        assert_eq!(ids, vec![("old", REQUEST_MEMORY_ENTRIES + 2)], "only the new application is remembered");
    }

    #[test]
    fn snapshot_then_restore_gives_the_same_state() {
        let mut s = Store::new();
        s.apply("p1", put("a", "1"));
        s.apply("", put("b", "2"));
        s.apply("d1", del("a", b""));
        s.apply("p2", put("c", "3"));
        let snap = s.read(snapshot).expect("snapshot succeeds");

        let mut other = Store::new();
        other.apply("", put("stale", "x"));
        other.apply("gone", put("a", "x"));
        let txn = other.db.begin_write().expect("a write transaction begins");
        let pos = restore(&txn, &snap).expect("restore succeeds");
        txn.commit().expect("restore commits");
        other.index = pos.index;

        assert_eq!(pos, s.applied(), "restore returns the snapshot's position");
        assert_eq!(other.applied(), s.applied());
        assert_eq!(other.hash(), s.hash(), "equal state gives an equal hash");
        assert_eq!(other.get("stale"), None, "restore clears the old state");
        // The remembered ids came along: a retry on the restored store is answered, not applied.
        let retry = other.apply("p2", put("c", "other"));
        assert_eq!(as_put(retry).header.map(|h| h.revision), Some(4));
        assert_eq!(other.get("c").map(|kv| kv.value), Some(b"3".to_vec()));
        assert_ne!(other.hash(), Store::new().hash(), "different states hash differently");
    }

    #[test]
    fn restore_rejects_garbage_and_other_versions() {
        let s = Store::new();
        let txn = s.db.begin_write().expect("a write transaction begins");
        let err = restore(&txn, &[0xff, 0x01, 0x02]).expect_err("garbage is rejected");
        assert!(matches!(&err, FsmError::Corrupt(m) if m.contains("undecodable")), "got {err}");
        let v2 = FsmSnapshot { version: 2, ..Default::default() }.encode_to_vec();
        let err = restore(&txn, &v2).expect_err("version 2 is rejected");
        assert!(matches!(&err, FsmError::Corrupt(m) if m.contains("version 2")), "got {err}");
        let unsorted = FsmSnapshot {
            version: SNAPSHOT_VERSION,
            revision: 5,
            kv: vec![
                latch_proto::internal::SnapshotRow { key: b"b".to_vec(), value: vec![] },
                latch_proto::internal::SnapshotRow { key: b"a".to_vec(), value: vec![] },
            ],
            ..Default::default()
        };
        let err = restore(&txn, &unsorted.encode_to_vec()).expect_err("bad rows are rejected");
        assert!(matches!(err, FsmError::Corrupt(_)), "got {err}");
    }

    #[test]
    fn corrupt_rows_give_corrupt_errors_naming_table_and_key() {
        let mut s = Store::new();
        s.apply("id", put("a", "1"));
        {
            let txn = s.db.begin_write().expect("a write transaction begins");
            txn.open_table(KV)
                .expect("kv opens")
                .insert(b"bad".as_slice(), [0xffu8, 0xff].as_slice())
                .expect("insert");
            txn.open_table(REQUESTS)
                .expect("requests opens")
                .insert("id", [1u8, 2].as_slice())
                .expect("insert");
            txn.commit().expect("commit");
        }
        let all = latch_proto::v1::RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
        let err = s.read(|t| range(t, &all)).expect_err("reading a corrupt row fails");
        assert!(
            matches!(&err, FsmError::Corrupt(m) if m.contains("table kv") && m.contains("bad")),
            "got {err}"
        );
        let err = s
            .try_apply_data(
                &Command { version: 1, request_id: String::new(), body: Some(put("bad", "x")) }
                    .encode_to_vec(),
            )
            .expect_err("overwriting a corrupt row fails");
        assert!(matches!(&err, FsmError::Corrupt(m) if m.contains("bad")), "got {err}");
        let err = s
            .try_apply_data(
                &Command { version: 1, request_id: "id".into(), body: Some(put("a", "x")) }.encode_to_vec(),
            )
            .expect_err("a retry of a corrupt request record fails");
        assert!(
            matches!(&err, FsmError::Corrupt(m) if m.contains("table requests") && m.contains("id")),
            "got {err}"
        );
        let err = s.read(snapshot).expect_err("a snapshot of a corrupt request record fails");
        assert!(matches!(err, FsmError::Corrupt(_)), "got {err}");
    }
}
