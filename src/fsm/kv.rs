//! The key-value domain: etcd v3 semantics (put, delete_range, txn, range) over the `kv` table.
//!
//! Invariants:
//! - The `kv` table holds exactly the live keys, in byte order; a row's value is a
//!   `StoredValue` with `1 <= create_revision <= mod_revision`, `version >= 1`. A deletion
//!   removes the row, so a re-created key starts at version 1 again.
//! - One command, one revision: a put, a delete_range that deleted something, or a txn whose
//!   chosen branch wrote anything raises the store revision by exactly one (see
//!   [`super::apply::Apply`]), and every key it wrote carries that revision. A command that
//!   writes nothing leaves the revision unchanged.
//! - Every write emits one event per key changed: a put with the key as written, a delete with
//!   the key and the revision of its deletion; the history (`fsm::history`) gets each with the
//!   key's previous value. An event held in memory carries the previous value only when the
//!   command asked for it (`prev_kv`) and the answer carries it, so that what apply holds is
//!   bounded by the request and the response bound, however many keys a delete removes (the
//!   deleted values go to the history one at a time).
//! - Validation happens before any write, so a rejected command writes nothing.
//! - Key selection: `range_end` empty → the single key; `range_end` = "\0" → every key >= `key`;
//!   otherwise `[key, range_end)` (empty when `range_end <= key`).
//! - Read results are bounded: the kvs of one answer (all the range ops and `prev_kvs` of a txn
//!   together) add up to at most `max_response_bytes` (encoded), except that a range, or a
//!   delete asked for `prev_kv`, always returns at least its first kv; a range cut short says
//!   `more`, a delete's `deleted` is the whole count. `count` is always the whole count.
//! - Deterministic: no clock, no randomness; everything iterates in key order.

use std::cmp::Ordering;
use std::ops::{Bound, RangeBounds};

use latch_proto::internal::{
    compare, op, op_result, outcome, Compare, DeleteRange, DeleteResult, KeyValue, OpResult, Put, PutResult,
    Range, RangeResult, Sequencer, StoredValue, Txn, TxnResult,
};
use prost::Message;
use redb::{ReadTransaction, ReadableTable, Table};

use super::apply::{Apply, Event, EventKind};
use super::{history, locks, open_read, sessions, Applied, Domain, FsmError, TableDef};
use crate::storage::schema::{HISTORY, KV, SEQUENCES};

/// Digits of a sequential key's counter (ZooKeeper pads to 10; 20 holds any u64).
pub const SEQUENCE_DIGITS: usize = 20;

/// The kv domain's part in the seam: its table and what a row must satisfy.
pub(crate) struct KvDomain;

impl Domain for KvDomain {
    fn name(&self) -> &'static str {
        "kv"
    }

    fn tables(&self) -> &'static [TableDef] {
        &[KV, SEQUENCES]
    }

    fn check_row(&self, table: &str, key: &[u8], value: &[u8], at: &Applied) -> Result<(), FsmError> {
        if table == "sequences" {
            if key.is_empty() || value.len() != 8 {
                return Err(FsmError::Corrupt(format!(
                    "table sequences, key {:?}: expected a prefix and an 8-byte counter",
                    show(key)
                )));
            }
            return Ok(());
        }
        if key.is_empty() {
            return Err(FsmError::Corrupt("table kv: a row with an empty key".into()));
        }
        let stored = decode_stored("table kv", key, value)?;
        if stored.mod_revision > at.revision {
            return Err(FsmError::Corrupt(format!(
                "table kv, key {:?}: mod_revision {} is newer than the store revision {}",
                show(key),
                stored.mod_revision,
                at.revision
            )));
        }
        Ok(())
    }
}

/// Applies a put.
pub(crate) fn put(ap: &mut Apply, req: Put) -> Result<outcome::Result, FsmError> {
    if let Err(why) = check_put("put", &req) {
        return Ok(outcome::Result::Rejected(why));
    }
    if let Some(missing) = missing_session(ap, [&req])? {
        return Ok(missing);
    }
    let mut table = ap.tables.open(KV)?;
    Ok(outcome::Result::Put(write_put(ap, &mut table, req)?))
}

/// A put's checks besides its session's existence.
fn check_put(what: &str, req: &Put) -> Result<(), String> {
    check_key(what, &req.key)?;
    if !req.session.is_empty() {
        sessions::check_id(req.session.as_bytes()).map_err(|why| format!("{what}: {why}"))?;
    }
    Ok(())
}

/// The not-found outcome of the first put naming a session that does not exist, if any.
fn missing_session<'a>(
    ap: &Apply,
    puts: impl IntoIterator<Item = &'a Put>,
) -> Result<Option<outcome::Result>, FsmError> {
    for p in puts {
        if !p.session.is_empty() && !sessions::exists(ap.tables, &p.session)? {
            return Ok(Some(sessions::not_found(p.session.clone())));
        }
    }
    Ok(None)
}

/// Deletes keys a session owned as it ends (their `session_keys` rows are the caller's), with
/// one delete event each, at the revision the caller took.
pub(crate) fn delete_owned(ap: &mut Apply, keys: &[Vec<u8>]) -> Result<(), FsmError> {
    let revision = ap.revision();
    let mut table = ap.tables.open(KV)?;
    for key in keys {
        let prev = match table.remove(key.as_slice())? {
            Some(old) => key_value(key, decode_stored("table kv", key, old.value())?),
            None => {
                return Err(FsmError::Corrupt(format!(
                    "table session_keys names key {:?}, missing from table kv",
                    show(key)
                )))
            }
        };
        let kv = KeyValue { key: key.clone(), mod_revision: revision, ..Default::default() };
        ap.emit(Event::of_key(EventKind::Delete, kv, None), Some(&prev))?;
    }
    Ok(())
}

/// Applies a delete_range; the revision is raised only if something was deleted.
pub(crate) fn delete_range(ap: &mut Apply, req: DeleteRange) -> Result<outcome::Result, FsmError> {
    if let Err(why) = check_key("delete_range", &req.key) {
        return Ok(outcome::Result::Rejected(why));
    }
    let mut table = ap.tables.open(KV)?;
    let mut budget = ap.max_response_bytes;
    Ok(outcome::Result::DeleteRange(write_delete(ap, &mut table, &req, &mut budget)?))
}

/// Applies a txn: all compares, then the success or failure ops in order, in one revision.
pub(crate) fn txn(ap: &mut Apply, req: Txn) -> Result<outcome::Result, FsmError> {
    if let Err(why) = check_txn(&req) {
        return Ok(outcome::Result::Rejected(why));
    }
    let succeeded = all_hold(&*ap.tables.open(KV)?, &req.compare, |seq| locks::check_in(ap.tables, seq))?;
    let ops = if succeeded { req.success } else { req.failure };
    let puts = ops.iter().filter_map(|o| match &o.op {
        Some(op::Op::Put(p)) => Some(p),
        _ => None,
    });
    if let Some(missing) = missing_session(ap, puts)? {
        return Ok(missing);
    }
    let mut table = ap.tables.open(KV)?;
    let mut budget = ap.max_response_bytes;
    let mut results = Vec::with_capacity(ops.len());
    for o in ops {
        let result = match o.op {
            Some(op::Op::Range(r)) => op_result::Result::Range(range_in(&*table, &r, &mut budget)?),
            Some(op::Op::Put(p)) => op_result::Result::Put(write_put(ap, &mut table, p)?),
            Some(op::Op::DeleteRange(d)) => {
                op_result::Result::DeleteRange(write_delete(ap, &mut table, &d, &mut budget)?)
            }
            None => continue, // rejected by check_txn before anything ran
        };
        results.push(OpResult { result: Some(result) });
    }
    Ok(outcome::Result::Txn(TxnResult { succeeded, results }))
}

/// Whether a txn writes nothing whichever branch runs: only compares and ranges.
pub fn writes_nothing(req: &Txn) -> bool {
    req.success.iter().chain(&req.failure).all(|o| matches!(o.op, Some(op::Op::Range(_))))
}

/// Answers a txn that writes nothing ([`writes_nothing`]) from a read transaction: what its
/// apply would answer at the state `txn` reads, without a log entry. A txn that is not valid
/// is refused, as its apply refuses it.
pub(crate) fn read_txn(
    txn: &ReadTransaction,
    req: &Txn,
    max_response_bytes: usize,
) -> Result<outcome::Result, FsmError> {
    if let Err(why) = check_txn(req) {
        return Ok(outcome::Result::Rejected(why));
    }
    debug_assert!(writes_nothing(req), "read_txn serves txns that write nothing");
    // `fsm::init` made every table: a missing one is not an empty one.
    let Some(table) = open_read(txn, KV)? else {
        return Err(FsmError::Corrupt("table kv is missing".into()));
    };
    let succeeded = all_hold(&table, &req.compare, |seq| Ok(locks::check(txn, seq)?.is_ok()))?;
    let ops = if succeeded { &req.success } else { &req.failure };
    let mut budget = max_response_bytes;
    let mut results = Vec::with_capacity(ops.len());
    for o in ops {
        if let Some(op::Op::Range(r)) = &o.op {
            results
                .push(OpResult { result: Some(op_result::Result::Range(range_in(&table, r, &mut budget)?)) });
        }
    }
    Ok(outcome::Result::Txn(TxnResult { succeeded, results }))
}

/// Serves a range from a read transaction, within `max_response_bytes`.
pub(crate) fn read_range(
    txn: &ReadTransaction,
    req: &Range,
    max_response_bytes: usize,
) -> Result<RangeResult, FsmError> {
    let mut budget = max_response_bytes;
    let Some(table) = open_read(txn, KV)? else { return Ok(RangeResult::default()) };
    if req.revision == 0 {
        return range_in(&table, req, &mut budget);
    }
    match open_read(txn, HISTORY)? {
        Some(history) => range_at(&table, &history, req, &mut budget),
        None => range_in(&table, req, &mut budget),
    }
}

/// One page of the current keys `key`/`range_end` select, from `from` (inclusive; `key` when
/// empty): at most `limit` kvs and about `max_bytes`, and whether more follow. Unlike a range
/// it neither counts nor reads past the page.
pub(crate) fn read_page(
    txn: &ReadTransaction,
    key: &[u8],
    range_end: &[u8],
    from: &[u8],
    limit: usize,
    max_bytes: usize,
) -> Result<(Vec<KeyValue>, bool), FsmError> {
    let mut kvs = Vec::new();
    let Some(table) = open_read(txn, KV)? else { return Ok((kvs, false)) };
    let Some((start, end)) = selection(key, range_end) else { return Ok((kvs, false)) };
    let start = if from.is_empty() { start } else { Bound::Included(from) };
    let mut bytes = 0;
    for row in table.range::<&[u8]>((start, end))? {
        let (k, v) = row?;
        if kvs.len() >= limit.max(1) || bytes >= max_bytes {
            return Ok((kvs, true));
        }
        let kv = key_value(k.value(), decode_stored("table kv", k.value(), v.value())?);
        bytes += kv.encoded_len();
        kvs.push(kv);
    }
    Ok((kvs, false))
}

/// A key for error messages: printable ASCII as is, other bytes escaped.
fn show(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

pub(crate) type Selection<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// The keys `key` and `range_end` select, or `None` when they select nothing.
pub(crate) fn selection<'a>(key: &'a [u8], range_end: &'a [u8]) -> Option<Selection<'a>> {
    if range_end.is_empty() {
        Some((Bound::Included(key), Bound::Included(key)))
    } else if range_end == b"\0" {
        Some((Bound::Included(key), Bound::Unbounded))
    } else if range_end <= key {
        None
    } else {
        Some((Bound::Included(key), Bound::Excluded(range_end)))
    }
}

/// Whether `key` and `range_end` select `k` (the module's selection rule).
pub fn selects(key: &[u8], range_end: &[u8], k: &[u8]) -> bool {
    selection(key, range_end).is_some_and(|selected| RangeBounds::<[u8]>::contains(&selected, k))
}

/// Decodes a stored row, checking what every row must satisfy.
fn decode_stored(table: &str, key: &[u8], bytes: &[u8]) -> Result<StoredValue, FsmError> {
    let corrupt = |why: String| FsmError::Corrupt(format!("{table}, key {:?}: {why}", show(key)));
    let v = StoredValue::decode(bytes).map_err(|e| corrupt(format!("undecodable StoredValue: {e}")))?;
    check_stored(&v).map_err(corrupt)?;
    Ok(v)
}

/// What every stored row satisfies.
fn check_stored(v: &StoredValue) -> Result<(), String> {
    if v.create_revision < 1 || v.mod_revision < v.create_revision || v.version < 1 {
        return Err(format!(
            "impossible row: create_revision {}, mod_revision {}, version {}",
            v.create_revision, v.mod_revision, v.version
        ));
    }
    Ok(())
}

/// A `kv` row as a range returns it: with `keys_only`, its value is not even decoded.
fn row_kv(key: &[u8], bytes: &[u8], keys_only: bool) -> Result<KeyValue, FsmError> {
    if !keys_only {
        return Ok(key_value(key, decode_stored("table kv", key, bytes)?));
    }
    let corrupt = |why: String| FsmError::Corrupt(format!("table kv, key {:?}: {why}", show(key)));
    let v = StoredNoValue::decode(bytes).map_err(|e| corrupt(format!("undecodable StoredValue: {e}")))?;
    let stored = StoredValue {
        value: Vec::new(),
        create_revision: v.create_revision,
        mod_revision: v.mod_revision,
        version: v.version,
        session: v.session,
    };
    check_stored(&stored).map_err(corrupt)?;
    Ok(key_value(key, stored))
}

/// A `StoredValue` without its value (same tags as log.proto's).
#[derive(Clone, PartialEq, prost::Message)]
struct StoredNoValue {
    #[prost(int64, tag = "2")]
    create_revision: i64,
    #[prost(int64, tag = "3")]
    mod_revision: i64,
    #[prost(int64, tag = "4")]
    version: i64,
    #[prost(string, tag = "5")]
    session: String,
}

fn key_value(key: &[u8], v: StoredValue) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        value: v.value,
        create_revision: v.create_revision,
        mod_revision: v.mod_revision,
        version: v.version,
        session: v.session,
    }
}

fn get<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    key: &[u8],
) -> Result<Option<KeyValue>, FsmError> {
    match table.get(key)? {
        Some(row) => Ok(Some(key_value(key, decode_stored("table kv", key, row.value())?))),
        None => Ok(None),
    }
}

/// The kvs of a range, its count, and `more` when `limit` or the byte budget cut it short.
/// The budget is shared by every range of one answer and shrinks by what this one returns.
fn range_in<T>(table: &T, req: &Range, budget: &mut usize) -> Result<RangeResult, FsmError>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
{
    let mut out = Collector::new(req, budget);
    let Some(selected) = selection(&req.key, &req.range_end) else { return Ok(out.result) };
    for row in table.range::<&[u8]>(selected)? {
        let (k, v) = row?;
        if out.wants_next() {
            out.push(row_kv(k.value(), v.value(), req.keys_only)?);
        }
    }
    Ok(out.result)
}

/// A range as it was at `req.revision` (checked against the compact and store revisions by
/// the caller): the current rows with the changes after it undone (see `history`).
fn range_at<T, H>(table: &T, history: &H, req: &Range, budget: &mut usize) -> Result<RangeResult, FsmError>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
    H: ReadableTable<&'static [u8], &'static [u8]>,
{
    let mut out = Collector::new(req, budget);
    let Some(selected) = selection(&req.key, &req.range_end) else { return Ok(out.result) };
    let then = history::changed_since(
        history,
        req.revision,
        |k| RangeBounds::<[u8]>::contains(&selected, k),
        history::PAST_READ_KEY_BYTES,
    )?;
    // What a changed key held then, if it existed: counted, and decoded only as far as wanted
    // (whether it existed, for a key past the limit or a count; no value, for keys_only).
    let take_past = |out: &mut Collector, at: &[u8; 12]| -> Result<(), FsmError> {
        let detail = match (out.would_take_next(), req.keys_only) {
            (false, _) => history::Detail::Exists,
            (true, true) => history::Detail::NoValue,
            (true, false) => history::Detail::Full,
        };
        if let Some(kv) = history::held_before(history, at, detail)? {
            if out.wants_next() {
                out.push(kv);
            }
        }
        Ok(())
    };
    let mut past = then.iter().peekable();
    for row in table.range::<&[u8]>(selected)? {
        let (k, v) = row?;
        while let Some((_, at)) = past.next_if(|(key, _)| key.as_slice() < k.value()) {
            take_past(&mut out, at)?;
        }
        if let Some((_, at)) = past.next_if(|(key, _)| key.as_slice() == k.value()) {
            take_past(&mut out, at)?; // changed since: what it held then, if anything
            continue;
        }
        if out.wants_next() {
            out.push(row_kv(k.value(), v.value(), req.keys_only)?);
        }
    }
    for (_, at) in past {
        take_past(&mut out, at)?;
    }
    Ok(out.result)
}

/// Gathers a range's answer in key order: counts every key, keeps what `limit` and the byte
/// budget allow, and says `more` when they cut it short.
struct Collector<'b> {
    result: RangeResult,
    limit: usize,
    count_only: bool,
    keys_only: bool,
    budget: &'b mut usize,
}

impl<'b> Collector<'b> {
    fn new(req: &Range, budget: &'b mut usize) -> Self {
        Collector {
            result: RangeResult::default(),
            limit: usize::try_from(req.limit).ok().filter(|l| *l > 0).unwrap_or(usize::MAX),
            count_only: req.count_only,
            keys_only: req.keys_only,
            budget,
        }
    }

    /// Whether [`Collector::wants_next`] would want the next key's kv, counting nothing.
    fn would_take_next(&self) -> bool {
        !self.count_only && !self.result.more && self.result.kvs.len() < self.limit
    }

    /// Counts the next key; whether its kv is wanted (else it need not be decoded).
    fn wants_next(&mut self) -> bool {
        self.result.count += 1;
        if self.count_only || self.result.more {
            return false;
        }
        if self.result.kvs.len() >= self.limit {
            self.result.more = true;
            return false;
        }
        true
    }

    fn push(&mut self, mut kv: KeyValue) {
        if self.keys_only {
            kv.value = Vec::new();
        }
        let size = kv.encoded_len();
        if size > *self.budget && !self.result.kvs.is_empty() {
            self.result.more = true;
            return;
        }
        *self.budget = self.budget.saturating_sub(size);
        self.result.kvs.push(kv);
    }
}

fn check_key(what: &str, key: &[u8]) -> Result<(), String> {
    if key.is_empty() {
        Err(format!("{what}: key must not be empty"))
    } else {
        Ok(())
    }
}

fn check_txn(req: &Txn) -> Result<(), String> {
    for (i, c) in req.compare.iter().enumerate() {
        if !matches!(c.target, Some(compare::Target::Sequencer(_))) {
            check_key(&format!("txn: compare[{i}]"), &c.key)?;
        }
        if c.target.is_none() {
            return Err(format!(
                "txn: compare[{i}]: target is missing (expected value, version, create_revision, mod_revision, session or sequencer)"
            ));
        }
        if compare::Result::try_from(c.result).is_err() {
            return Err(format!("txn: compare[{i}]: result {} is not a compare result", c.result));
        }
    }
    for (branch, ops) in [("success", &req.success), ("failure", &req.failure)] {
        for (i, o) in ops.iter().enumerate() {
            match &o.op {
                None => {
                    return Err(format!(
                        "txn: {branch}[{i}]: op is missing (expected range, put or delete_range)"
                    ))
                }
                Some(op::Op::Range(r)) => {
                    check_key(&format!("txn: {branch}[{i}]: range"), &r.key)?;
                    if r.revision != 0 {
                        return Err(format!(
                            "txn: {branch}[{i}]: range: a read at a past revision ({}) is not served inside a transaction; use Range",
                            r.revision
                        ));
                    }
                }
                Some(op::Op::Put(p)) => check_put(&format!("txn: {branch}[{i}]: put"), p)?,
                Some(op::Op::DeleteRange(d)) => {
                    check_key(&format!("txn: {branch}[{i}]: delete_range"), &d.key)?
                }
            }
        }
    }
    Ok(())
}

type KvTable<'t> = Table<'t, &'static [u8], &'static [u8]>;

/// Writes a put whose session (if any) exists. A sequential put writes the prefix's next key.
fn write_put(ap: &mut Apply, table: &mut KvTable, mut req: Put) -> Result<PutResult, FsmError> {
    if req.sequential {
        req.key = next_in_sequence(ap, table, &req.key)?;
    }
    let prev = get(table, &req.key)?;
    let old_session = prev.as_ref().map_or("", |p| p.session.as_str());
    sessions::rebind(ap.tables, &req.key, old_session, &req.session)?;
    let revision = ap.write_revision()?;
    let (create_revision, version) = match &prev {
        Some(p) => {
            let version = p.version.checked_add(1).ok_or_else(|| {
                FsmError::Corrupt(format!(
                    "table kv, key {:?}: version {} cannot grow",
                    show(&req.key),
                    p.version
                ))
            })?;
            (p.create_revision, version)
        }
        None => (revision, 1),
    };
    let stored = StoredValue {
        value: req.value,
        create_revision,
        mod_revision: revision,
        version,
        session: req.session,
    };
    table.insert(req.key.as_slice(), stored.encode_to_vec().as_slice())?;
    let kv = key_value(&req.key, stored);
    let answer = if req.prev_kv { prev.clone() } else { None };
    ap.emit(Event::of_key(EventKind::Put, kv, answer.clone()), prev.as_ref())?;
    Ok(PutResult { prev_kv: answer, key: req.key })
}

/// The next free key of a sequence: the prefix and its counter, 20 digits; the counter moves
/// past it (and past any key of the sequence written by hand), so it is unique and increasing.
fn next_in_sequence(ap: &Apply, table: &KvTable, prefix: &[u8]) -> Result<Vec<u8>, FsmError> {
    let mut sequences = ap.tables.open(SEQUENCES)?;
    let mut n = match sequences.get(prefix)? {
        Some(v) => <[u8; 8]>::try_from(v.value()).map(u64::from_be_bytes).map_err(|_| {
            FsmError::Corrupt(format!("table sequences, key {:?}: not an 8-byte counter", show(prefix)))
        })?,
        None => 0,
    };
    let key = loop {
        let mut key = prefix.to_vec();
        key.extend_from_slice(format!("{n:0width$}", width = SEQUENCE_DIGITS).as_bytes());
        n = n.checked_add(1).ok_or_else(|| {
            FsmError::Corrupt(format!("table sequences, key {:?}: the counter cannot grow", show(prefix)))
        })?;
        if table.get(key.as_slice())?.is_none() {
            break key;
        }
    };
    sequences.insert(prefix, n.to_be_bytes().as_slice())?;
    Ok(key)
}

/// Deletes the selected keys. Only their keys are held in memory, and their values only when
/// asked (`prev_kv`), within `budget`.
fn write_delete(
    ap: &mut Apply,
    table: &mut KvTable,
    req: &DeleteRange,
    budget: &mut usize,
) -> Result<DeleteResult, FsmError> {
    // (key, the session it is bound to, its previous kv when asked).
    let mut doomed: Vec<(Vec<u8>, String, Option<KeyValue>)> = Vec::new();
    if let Some(selected) = selection(&req.key, &req.range_end) {
        for row in table.range::<&[u8]>(selected)? {
            let (k, v) = row?;
            let stored = decode_stored("table kv", k.value(), v.value())?;
            let session = stored.session.clone();
            let mut prev = None;
            if req.prev_kv {
                let kv = key_value(k.value(), stored);
                let size = kv.encoded_len();
                if size <= *budget || doomed.is_empty() {
                    *budget = budget.saturating_sub(size);
                    prev = Some(kv);
                }
            }
            doomed.push((k.value().to_vec(), session, prev));
        }
    }
    if doomed.is_empty() {
        return Ok(DeleteResult::default());
    }
    let revision = ap.write_revision()?;
    let deleted = i64::try_from(doomed.len()).unwrap_or(i64::MAX);
    let mut prev_kvs = Vec::new();
    for (key, session, answer) in doomed {
        // The value is read back one key at a time, for the history.
        let prev = match table.remove(key.as_slice())? {
            Some(old) => key_value(&key, decode_stored("table kv", &key, old.value())?),
            None => {
                return Err(FsmError::Corrupt(format!(
                    "table kv: key {:?} vanished while deleted",
                    show(&key)
                )))
            }
        };
        sessions::rebind(ap.tables, &key, &session, "")?;
        let kv = KeyValue { key, mod_revision: revision, ..Default::default() };
        ap.emit(Event::of_key(EventKind::Delete, kv, answer.clone()), Some(&prev))?;
        prev_kvs.extend(answer);
    }
    Ok(DeleteResult { deleted, prev_kvs })
}

/// Whether every compare holds, in order, stopping at the first that does not: against `table`
/// for keys, and `holding` (whether a sequencer still holds its lock) for sequencers.
fn all_hold<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    compares: &[Compare],
    holding: impl Fn(&Sequencer) -> Result<bool, FsmError>,
) -> Result<bool, FsmError> {
    for c in compares {
        let held = match &c.target {
            Some(compare::Target::Sequencer(seq)) => fenced(c, holding(seq)?),
            _ => holds(table, c)?,
        };
        if !held {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A sequencer compare: EQUAL holds while the sequencer holds its lock, NOT_EQUAL once not.
fn fenced(c: &Compare, valid: bool) -> bool {
    match compare::Result::try_from(c.result) {
        Ok(compare::Result::Equal) => valid,
        Ok(compare::Result::NotEqual) => !valid,
        _ => false,
    }
}

fn holds<T: ReadableTable<&'static [u8], &'static [u8]>>(table: &T, c: &Compare) -> Result<bool, FsmError> {
    let kv = get(table, &c.key)?;
    let number = |f: fn(&KeyValue) -> i64| kv.as_ref().map_or(0, f);
    let ord = match &c.target {
        None => return Ok(false),
        Some(compare::Target::Value(v)) => match &kv {
            None => return Ok(false),
            Some(kv) => kv.value.as_slice().cmp(v.as_slice()),
        },
        Some(compare::Target::Version(n)) => number(|kv| kv.version).cmp(n),
        Some(compare::Target::CreateRevision(n)) => number(|kv| kv.create_revision).cmp(n),
        Some(compare::Target::ModRevision(n)) => number(|kv| kv.mod_revision).cmp(n),
        Some(compare::Target::Session(s)) => kv.as_ref().map_or("", |kv| kv.session.as_str()).cmp(s.as_str()),
        Some(compare::Target::Sequencer(_)) => return Ok(false), // see `fenced`
    };
    Ok(match compare::Result::try_from(c.result) {
        Ok(compare::Result::Equal) => ord == Ordering::Equal,
        Ok(compare::Result::Greater) => ord == Ordering::Greater,
        Ok(compare::Result::Less) => ord == Ordering::Less,
        Ok(compare::Result::NotEqual) => ord != Ordering::Equal,
        Err(_) => false,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{Applied, EventKind};
    use super::{history, FsmError, KeyValue, HISTORY};
    use compare::{Result as R, Target as T};
    use latch_proto::internal::command::Body;
    use latch_proto::internal::{compare, Compare, DeleteRange, Op, Put, Range, RangeResult};
    use std::collections::BTreeMap;

    /// A txn that writes nothing is answered from a read transaction exactly as its apply
    /// answers it: compares on values, versions of absent keys and sequencers, ranges, the
    /// failure branch, and a refusal.
    #[test]
    fn a_txn_that_writes_nothing_reads_what_its_apply_answers() {
        let mut s = Store::new();
        s.apply("", put("a", "1"));
        s.apply("", put("b", "2"));
        s.apply("", create_session("s"));
        let granted = s.apply("", acquire_req("l", "s", latch_proto::internal::LockMode::Exclusive, false));
        let Some(latch_proto::internal::outcome::Result::Lock(l)) = granted.result else {
            panic!("a lock outcome")
        };
        let seq = l.sequencer.expect("granted");
        let stale = latch_proto::internal::Sequencer { generation: seq.generation + 1, ..seq.clone() };
        let all = Op {
            op: Some(latch_proto::internal::op::Op::Range(Range {
                key: b"a".to_vec(),
                range_end: b"z".to_vec(),
                ..Default::default()
            })),
        };
        let cases = [
            txn(
                vec![cmp("a", R::Equal, T::Value(b"1".to_vec()))],
                vec![op_get("a"), all.clone()],
                vec![op_get("b")],
            ),
            txn(
                vec![cmp("a", R::Equal, T::Value(b"9".to_vec()))],
                vec![op_get("a")],
                vec![op_get("b"), all.clone()],
            ),
            txn(vec![cmp("absent", R::Equal, T::Version(0))], vec![op_get("absent")], vec![]),
            txn(
                vec![Compare { result: R::Equal as i32, key: Vec::new(), target: Some(T::Sequencer(seq)) }],
                vec![all.clone()],
                vec![],
            ),
            txn(
                vec![Compare { result: R::Equal as i32, key: Vec::new(), target: Some(T::Sequencer(stale)) }],
                vec![all],
                vec![op_get("a")],
            ),
            txn(vec![], vec![Op { op: None }], vec![]),
        ];
        for body in cases {
            let Body::Txn(req) = body.clone() else { unreachable!("txn makes a txn") };
            assert!(super::writes_nothing(&req) || req.success.iter().any(|o| o.op.is_none()));
            let before = s.applied().revision;
            let read = s.read(|t| super::super::read_txn(t, &req, 4 * 1024 * 1024)).expect("reads");
            let applied = s.apply("", body);
            assert_eq!(read.0, before, "read at the current revision");
            assert_eq!(Some(read.1), applied.result, "{req:?}: the read answers what the apply answers");
            assert_eq!(s.applied().revision, before, "and the apply wrote nothing either");
        }
    }

    fn kv_of(s: &Store, key: &str) -> (i64, i64, i64) {
        let kv = s.get(key).unwrap_or_else(|| panic!("expected key {key:?} to exist"));
        (kv.create_revision, kv.mod_revision, kv.version)
    }

    fn keys(resp: &RangeResult) -> Vec<String> {
        resp.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
    }

    fn store_with(keys: &[&str]) -> Store {
        let mut s = Store::new();
        for k in keys {
            s.apply("", put(k, &format!("v-{k}")));
        }
        s
    }

    fn range_req(key: &[u8], range_end: &[u8]) -> Range {
        Range { key: key.to_vec(), range_end: range_end.to_vec(), ..Default::default() }
    }

    #[test]
    fn each_put_raises_the_revision_and_sets_the_key_revisions() {
        let mut s = Store::new();
        assert_eq!(s.apply("", put("a", "1")).revision, 1, "the first write is revision 1");
        assert_eq!(s.apply("", put("b", "1")).revision, 2);
        assert_eq!(kv_of(&s, "a"), (1, 1, 1), "a new key: create = mod = its revision, version 1");
        assert_eq!(s.apply("", put("a", "2")).revision, 3);
        assert_eq!(kv_of(&s, "a"), (1, 3, 2), "an overwrite keeps create, sets mod, bumps version");
        assert_eq!(s.get("a").map(|kv| kv.value), Some(b"2".to_vec()));
        assert_eq!(s.applied().revision, 3);
    }

    #[test]
    fn put_returns_the_previous_kv_only_when_asked() {
        let mut s = store_with(&["a"]);
        assert_eq!(as_put(s.apply("", put("a", "x"))).prev_kv, None, "prev_kv not asked");
        let asked = Body::Put(Put { prev_kv: true, ..put_req("a", "y") });
        let prev = as_put(s.apply("", asked)).prev_kv.expect("prev_kv asked for an existing key");
        assert_eq!((prev.key, prev.value, prev.version), (b"a".to_vec(), b"x".to_vec(), 2));
        let fresh = Body::Put(Put { prev_kv: true, ..put_req("new", "y") });
        assert_eq!(as_put(s.apply("", fresh)).prev_kv, None, "a new key has no previous kv");
    }

    #[test]
    fn delete_raises_the_revision_and_a_recreated_key_starts_over() {
        let mut s = store_with(&["a", "b"]);
        s.apply("", put("a", "again"));
        let o = s.apply("", del("a", b""));
        assert_eq!((as_del(o.clone()).deleted, o.revision), (1, 4), "one key deleted at revision 4");
        assert_eq!(s.get("a"), None);
        s.apply("", put("a", "new"));
        assert_eq!(kv_of(&s, "a"), (5, 5, 1), "a recreated key has a new create_revision and version 1");
    }

    #[test]
    fn delete_of_nothing_keeps_the_revision() {
        let mut s = store_with(&["a"]);
        let o = s.apply("", del("zzz", b""));
        assert_eq!((as_del(o.clone()).deleted, o.revision), (0, 1), "nothing deleted, revision unchanged");
        assert_eq!(s.applied().revision, 1);
    }

    #[test]
    fn delete_range_deletes_the_selection_and_returns_prev_kvs() {
        let mut s = store_with(&["a", "b1", "b2", "c"]);
        let req = DeleteRange { prev_kv: true, ..del_req("b", b"c") };
        let o = s.apply("", Body::DeleteRange(req));
        let d = as_del(o.clone());
        assert_eq!(d.deleted, 2);
        let prev: Vec<_> = d.prev_kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(prev, vec![b"b1".to_vec(), b"b2".to_vec()], "prev_kvs in key order");
        assert_eq!(keys(&s.range(range_req(b"\0", b"\0"))), vec!["a", "c"]);
        assert_eq!(o.revision, 5, "a multi-key delete is one revision");
    }

    #[test]
    fn writes_with_an_empty_key_are_rejected_and_write_nothing() {
        let mut s = store_with(&["a"]);
        assert!(as_rejected(s.apply("", put("", "x"))).contains("put: key"));
        assert!(as_rejected(s.apply("", del("", b"\0"))).contains("delete_range: key"));
        assert_eq!(s.applied(), Applied { index: 3, term: 1, revision: 1 });
    }

    #[test]
    fn range_selects_single_prefix_interval_and_from_key() {
        let s = store_with(&["a", "b", "b/1", "b/2", "c", "d"]);
        assert_eq!(keys(&s.range(range_req(b"b", b""))), vec!["b"], "single key");
        assert_eq!(keys(&s.range(range_req(b"zz", b""))), Vec::<String>::new(), "missing key");
        assert_eq!(keys(&s.range(range_req(b"b/", b"b0"))), vec!["b/1", "b/2"], "prefix b/");
        assert_eq!(keys(&s.range(range_req(b"b", b"d"))), vec!["b", "b/1", "b/2", "c"], "[b, d)");
        assert_eq!(keys(&s.range(range_req(b"c", b"\0"))), vec!["c", "d"], "from key c");
        assert_eq!(keys(&s.range(range_req(b"\0", b"\0"))).len(), 6, "every key");
        assert_eq!(s.range(range_req(b"d", b"a")).count, 0, "range_end before key selects nothing");
    }

    #[test]
    fn range_limit_count_only_and_keys_only() {
        let s = store_with(&["a", "b", "c", "d"]);
        let limited = s.range(Range { limit: 2, ..range_req(b"a", b"\0") });
        assert_eq!((keys(&limited), limited.more, limited.count), (vec!["a".into(), "b".into()], true, 4));
        let exact = s.range(Range { limit: 4, ..range_req(b"a", b"\0") });
        assert!(!exact.more, "a limit equal to the count cuts nothing");
        let counted = s.range(Range { count_only: true, ..range_req(b"b", b"\0") });
        assert_eq!((counted.kvs.len(), counted.count, counted.more), (0, 3, false));
        let bare = s.range(Range { keys_only: true, ..range_req(b"a", b"") });
        assert_eq!(bare.kvs[0].value, Vec::<u8>::new(), "keys_only drops values");
        assert_eq!(bare.kvs[0].version, 1, "keys_only keeps the revisions");
    }

    /// Key `k` ends at value "m", create_revision 1, mod_revision 3, version 2.
    fn compare_store() -> Store {
        let mut s = Store::new();
        s.apply("", put("k", "a"));
        s.apply("", put("other", "x"));
        s.apply("", put("k", "m"));
        s
    }

    fn holds(s: &mut Store, c: Compare) -> bool {
        let r = as_txn(s.apply("", txn(vec![c], vec![], vec![])));
        r.succeeded
    }

    #[test]
    fn compare_targets_and_results() {
        let mut s = compare_store();
        let cases: Vec<(&str, T, T, T)> = vec![
            ("value", T::Value(b"a".to_vec()), T::Value(b"m".to_vec()), T::Value(b"z".to_vec())),
            ("version", T::Version(1), T::Version(2), T::Version(3)),
            ("create_revision", T::CreateRevision(0), T::CreateRevision(1), T::CreateRevision(2)),
            ("mod_revision", T::ModRevision(2), T::ModRevision(3), T::ModRevision(4)),
        ];
        for (name, below, equal, above) in cases {
            for (result, expect) in [
                (R::Equal, [false, true, false]),
                (R::Greater, [true, false, false]),
                (R::Less, [false, false, true]),
                (R::NotEqual, [true, false, true]),
            ] {
                for (target, want) in [below.clone(), equal.clone(), above.clone()].into_iter().zip(expect) {
                    let got = holds(&mut s, cmp("k", result, target.clone()));
                    assert_eq!(got, want, "{name}: actual {result:?} {target:?} should be {want}");
                }
            }
        }
        assert_eq!(s.applied().revision, 3, "compare-only txns write nothing");
    }

    #[test]
    fn compares_on_a_missing_key() {
        let mut s = compare_store();
        assert!(holds(&mut s, cmp("nope", R::Equal, T::Version(0))), "missing key: version 0");
        assert!(holds(&mut s, cmp("nope", R::Equal, T::CreateRevision(0))), "missing key: create 0");
        assert!(holds(&mut s, cmp("nope", R::Equal, T::ModRevision(0))), "missing key: mod 0");
        assert!(holds(&mut s, cmp("nope", R::Less, T::ModRevision(1))), "missing key: mod < 1");
        assert!(
            !holds(&mut s, cmp("nope", R::Equal, T::Value(vec![]))),
            "value compare on a missing key is false"
        );
        assert!(!holds(&mut s, cmp("nope", R::NotEqual, T::Value(b"x".to_vec()))), "even NOT_EQUAL");
    }

    #[test]
    fn txn_runs_success_when_all_compares_hold_else_failure() {
        let mut s = compare_store();
        let holds = cmp("k", R::Equal, T::Version(2));
        let fails = cmp("k", R::Equal, T::Version(9));
        let r = as_txn(s.apply("", txn(vec![holds.clone()], vec![op_put("s", "1")], vec![op_put("f", "1")])));
        assert!(r.succeeded);
        assert!(s.get("s").is_some() && s.get("f").is_none(), "only the success branch ran");
        let r =
            as_txn(s.apply("", txn(vec![holds, fails], vec![op_put("s2", "1")], vec![op_put("f2", "1")])));
        assert!(!r.succeeded, "one failing compare fails the txn");
        assert!(s.get("s2").is_none() && s.get("f2").is_some(), "only the failure branch ran");
    }

    #[test]
    fn txn_writes_share_one_revision_and_later_ops_see_earlier_writes() {
        let mut s = compare_store();
        let ops = vec![
            op_get("n"),
            op_put("n", "1"),
            op_get("n"),
            op_put("n", "2"),
            op_put("p", "x"),
            op_del("k", b""),
        ];
        let o = s.apply("", txn(vec![], ops, vec![]));
        let r = as_txn(o.clone());
        assert_eq!(o.revision, 4, "the whole txn is revision 4");
        assert_eq!(s.applied().revision, 4, "one revision per txn");
        let before = as_range(&r.results[0]);
        assert_eq!(before.count, 0, "a range before any write sees nothing");
        let after = as_range(&r.results[2]);
        assert_eq!(after.kvs[0].value, b"1".to_vec(), "a range sees the txn's earlier put");
        assert_eq!(after.kvs[0].mod_revision, 4, "… written at the txn's revision");
        assert_eq!(kv_of(&s, "n"), (4, 4, 2), "two puts of one key in a txn: version 2, one revision");
        assert_eq!(kv_of(&s, "p"), (4, 4, 1));
        assert_eq!(s.get("k"), None);
        assert_eq!(r.results.len(), 6, "one result per op");
    }

    #[test]
    fn txn_that_writes_nothing_keeps_the_revision() {
        let mut s = compare_store();
        let o = s.apply("", txn(vec![], vec![op_get("k"), op_del("missing", b"")], vec![]));
        assert_eq!((o.revision, s.applied().revision), (3, 3));
    }

    #[test]
    fn invalid_txns_are_rejected_and_write_nothing() {
        let mut s = compare_store();
        let hash = s.hash();
        let missing_op = txn(vec![], vec![op_put("a", "1"), Op { op: None }], vec![]);
        assert!(as_rejected(s.apply("", missing_op)).contains("success[1]: op is missing"));
        let bad_failure = txn(vec![], vec![], vec![op_put("", "1")]);
        assert!(as_rejected(s.apply("", bad_failure)).contains("failure[0]: put: key"));
        let no_target = Compare { result: 0, key: b"k".to_vec(), target: None };
        assert!(as_rejected(s.apply("", txn(vec![no_target], vec![], vec![]))).contains("target"));
        let bad_result = Compare { result: 42, ..cmp("k", R::Equal, T::Version(1)) };
        assert!(as_rejected(s.apply("", txn(vec![bad_result], vec![], vec![]))).contains("42"));
        assert_eq!(s.hash(), hash, "rejected txns change nothing");
        assert_eq!(s.get("a"), None);
    }

    /// A tiny xorshift64: seeded, reproducible, no crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn key(&mut self) -> String {
            let k = ["a", "b", "c", "d", "e", "f"][self.below(6) as usize];
            if self.below(3) == 0 {
                format!("{k}{}", self.below(3))
            } else {
                k.to_string()
            }
        }
    }

    /// The model: key → (value, create, mod, version), plus the store revision.
    #[derive(Default)]
    struct Model {
        kvs: BTreeMap<String, (String, i64, i64, i64)>,
        revision: i64,
    }

    impl Model {
        fn put(&mut self, key: &str, value: &str, rev: i64) {
            let e = self.kvs.entry(key.to_string()).or_insert((String::new(), rev, 0, 0));
            *e = (value.to_string(), e.1, rev, e.3 + 1);
        }

        /// Deletes [key, end) (`end` None → the single key); returns how many.
        fn delete(&mut self, key: &str, end: Option<&str>) -> i64 {
            let doomed: Vec<_> = self
                .kvs
                .keys()
                .filter(|k| match end {
                    None => k.as_str() == key,
                    Some(end) => k.as_str() >= key && k.as_str() < end,
                })
                .cloned()
                .collect();
            for k in &doomed {
                self.kvs.remove(k);
            }
            doomed.len() as i64
        }
    }

    #[test]
    fn random_writes_match_a_btreemap_model() {
        for seed in [1u64, 7, 0x9e37_79b9_7f4a_7c15] {
            let mut rng = Rng(seed);
            let mut s = Store::new();
            let mut m = Model::default();
            for step in 0..300 {
                let key = rng.key();
                let value = format!("v{}", rng.below(4));
                let ctx = format!("seed {seed} step {step}");
                match rng.below(4) {
                    0 | 1 => {
                        s.apply("", put(&key, &value));
                        m.revision += 1;
                        m.put(&key, &value, m.revision);
                    }
                    2 => {
                        let end = rng.key();
                        let single = rng.below(2) == 0;
                        let range_end = if single { Vec::new() } else { end.clone().into_bytes() };
                        let got = as_del(s.apply("", del(&key, &range_end))).deleted;
                        let want = m.delete(&key, (!single).then_some(end.as_str()));
                        m.revision += i64::from(want > 0);
                        assert_eq!(got, want, "{ctx}: deleted count");
                    }
                    _ => {
                        let version = m.kvs.get(&key).map_or(0, |e| e.3);
                        let guess = version + rng.below(2) as i64;
                        let (k2, k3) = (rng.key(), rng.key());
                        // The success branch deletes k3 (maybe nothing) and maybe puts k2.
                        let with_put = rng.below(2) == 0;
                        let mut success = vec![op_del(&k3, b"")];
                        if with_put {
                            success.push(op_put(&k2, &value));
                        }
                        let r = as_txn(s.apply(
                            "",
                            txn(
                                vec![cmp(&key, R::Equal, T::Version(guess))],
                                success,
                                vec![op_put(&k3, "failed")],
                            ),
                        ));
                        assert_eq!(r.succeeded, guess == version, "{ctx}: txn branch");
                        let rev = m.revision + 1;
                        let wrote = if guess == version {
                            let deleted = m.delete(&k3, None);
                            if with_put {
                                m.put(&k2, &value, rev);
                            }
                            with_put || deleted > 0
                        } else {
                            m.put(&k3, "failed", rev);
                            true
                        };
                        if wrote {
                            m.revision = rev;
                        }
                    }
                }
                assert_eq!(s.applied().revision, m.revision, "{ctx}: revision");
                let all = s.range(range_req(b"\0", b"\0"));
                let got: Vec<_> = all
                    .kvs
                    .iter()
                    .map(|kv| {
                        let k = String::from_utf8_lossy(&kv.key).into_owned();
                        let v = String::from_utf8_lossy(&kv.value).into_owned();
                        (k, (v, kv.create_revision, kv.mod_revision, kv.version))
                    })
                    .collect();
                let want: Vec<_> = m.kvs.clone().into_iter().collect();
                assert_eq!(got, want, "{ctx}: the store differs from the model");
            }
        }
    }

    #[test]
    fn every_write_leaves_its_events_and_a_rejected_one_none() {
        let mut s = store_with(&["a", "b1", "b2"]);
        let put_a = s.apply_full("", put("a", "new"));
        assert_eq!(put_a.events.len(), 1, "one put, one event");
        let e = &put_a.events[0];
        assert_eq!(
            (e.kind, e.kv.key.as_slice(), e.kv.value.as_slice()),
            (EventKind::Put, &b"a"[..], &b"new"[..])
        );
        assert_eq!((e.kv.mod_revision, e.kv.version), (4, 2), "the event carries the key as written");
        assert_eq!(e.prev_kv, None, "no previous value unless the put asked for it");
        let asked = s.apply_full("", Body::Put(Put { prev_kv: true, ..put_req("a", "newer") }));
        let prev = asked.events[0].prev_kv.as_ref().map(|kv| kv.value.as_slice());
        assert_eq!(prev, Some(&b"new"[..]), "a put that asked for prev_kv carries it in its event");

        let deleted = s.apply_full("", del("b", b"c"));
        let kinds: Vec<_> =
            deleted.events.iter().map(|e| (e.kind, e.kv.key.clone(), e.kv.mod_revision)).collect();
        assert_eq!(
            kinds,
            vec![(EventKind::Delete, b"b1".to_vec(), 6), (EventKind::Delete, b"b2".to_vec(), 6)],
            "one delete event per key, in key order, at the delete's revision"
        );

        let t = s.apply_full("", txn(vec![], vec![op_put("x", "1"), op_del("a", b""), op_get("x")], vec![]));
        let revs: Vec<_> = t.events.iter().map(|e| e.kv.mod_revision).collect();
        assert_eq!(revs, vec![7, 7], "a txn's events share its one revision");
        assert!(s.apply_full("", put("", "x")).events.is_empty(), "a rejected put has no events");
        assert!(s.apply_full("", del("zzz", b"")).events.is_empty(), "deleting nothing has no events");
    }

    #[test]
    fn a_delete_holds_only_keys_and_returns_previous_values_within_the_response_bound() {
        let mut s = Store::new();
        for i in 0..10 {
            s.apply("", put(&format!("k{i}"), &"x".repeat(1000)));
        }
        s.bounds.max_response_bytes = 3_500;
        let plain = s.apply_full("", del("k0", b""));
        assert_eq!(plain.events[0].prev_kv, None, "a delete not asked for prev_kv carries no value");
        let asked = DeleteRange { prev_kv: true, ..del_req("k", b"l") };
        let d = s.apply_full("", Body::DeleteRange(asked));
        let result = as_del(d.outcome);
        assert_eq!(result.deleted, 9, "`deleted` is the whole count");
        assert_eq!(result.prev_kvs.len(), 3, "as many previous values as 3500 bytes hold");
        let carried = d.events.iter().filter(|e| e.prev_kv.is_some()).count();
        assert_eq!((d.events.len(), carried), (9, 3), "an event per key; values only as answered");
        assert_eq!(s.range(range_req(b"k", b"l")).count, 0, "every selected key is deleted");
    }

    #[test]
    fn a_range_over_the_response_bound_returns_a_page_with_more() {
        let mut s = Store::new();
        for i in 0..10 {
            s.apply("", put(&format!("k{i}"), &"x".repeat(1000)));
        }
        s.bounds.max_response_bytes = 3_500;
        let page = s.range(range_req(b"k", b"l"));
        assert_eq!(page.kvs.len(), 3, "3 kvs of about 1 KB fit in 3500 bytes");
        assert!(page.more, "a page cut by the bound says more");
        assert_eq!(page.count, 10, "count is the whole count");
        s.bounds.max_response_bytes = 10;
        let one = s.range(range_req(b"k", b"l"));
        assert_eq!((one.kvs.len(), one.more), (1, true), "a range always returns its first kv");
        let keys_only = s.range(Range { keys_only: true, ..range_req(b"k", b"l") });
        assert!(keys_only.kvs.len() < 10, "the bound holds for keys-only ranges too");
    }

    #[test]
    fn the_ranges_of_one_txn_share_the_response_bound() {
        let mut s = Store::new();
        for i in 0..10 {
            s.apply("", put(&format!("k{i}"), &"x".repeat(1000)));
        }
        s.bounds.max_response_bytes = 5_000;
        let all = || Op { op: Some(latch_proto::internal::op::Op::Range(range_req(b"k", b"l"))) };
        let r = as_txn(s.apply("", txn(vec![], vec![all(), all(), all()], vec![])));
        let sizes: Vec<_> = r.results.iter().map(|o| (as_range(o).kvs.len(), as_range(o).more)).collect();
        assert_eq!(
            sizes,
            vec![(4, true), (1, true), (1, true)],
            "the first range takes the budget; the rest one kv each"
        );
    }

    /// A read at a past revision decodes only what it returns; what it returns for keys_only,
    /// count_only or a limit is the full read's, projected.
    #[test]
    fn past_reads_for_keys_counts_and_pages_answer_as_the_full_read_does() {
        let mut s = Store::new();
        for step in 0..120 {
            let key = format!("k{}", step % 9);
            let body = match step % 5 {
                3 => del(&key, b""),
                4 => del("k2", b"k4"),
                _ => put(&key, &format!("v{step}")),
            };
            s.apply("", body);
        }
        let head = s.applied().revision;
        for revision in 1..=head {
            let at = |f: fn(&mut Range)| {
                let mut r = Range { revision, ..range_req(b"k", b"l") };
                f(&mut r);
                s.range(r)
            };
            let full = at(|_| {});
            let keys_only = at(|r| r.keys_only = true);
            let stripped: Vec<_> =
                full.kvs.iter().map(|kv| KeyValue { value: Vec::new(), ..kv.clone() }).collect();
            assert_eq!(keys_only.kvs, stripped, "keys_only at revision {revision}: the kvs without values");
            assert_eq!(keys_only.count, full.count);
            let counted = at(|r| r.count_only = true);
            assert_eq!(
                (counted.count, counted.kvs.len()),
                (full.count, 0),
                "count_only at revision {revision}"
            );
            let page = at(|r| r.limit = 2);
            assert_eq!(
                page.kvs,
                full.kvs.iter().take(2).cloned().collect::<Vec<_>>(),
                "limit 2 at {revision}"
            );
            assert_eq!((page.count, page.more), (full.count, full.count > 2), "limit 2 at {revision}");
        }
    }

    #[test]
    fn a_past_read_that_would_hold_too_many_changed_keys_is_refused_as_over_a_limit() {
        let mut s = Store::new();
        for i in 0..100 {
            s.apply("", put(&format!("key-{i:03}"), "v"));
        }
        let changed = |max_bytes: usize| {
            s.read(|t| {
                let history = super::super::open_read(t, HISTORY)?.expect("the history table exists");
                history::changed_since(&history, 1, |_| true, max_bytes).map(|m| m.len())
            })
        };
        assert_eq!(changed(usize::MAX).expect("no bound"), 99, "keys changed after revision 1");
        let err = changed(1000).expect_err("99 keys hold more than 1000 bytes");
        assert!(
            matches!(&err, FsmError::OverLimit(m) if m.contains("more than 1000 bytes")),
            "expected OverLimit naming the bound, got {err}"
        );
    }
}
