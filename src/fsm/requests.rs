//! Request memory: the outcome of every command that carried a request id, so that a retry of
//! the id is applied at most once and answered with the first outcome (DESIGN.md §1).
//!
//! Invariants:
//! - A remembered row holds the applying index, a hash of the whole command, and the outcome
//!   with its data stripped (previous values, range results): what is kept per id is small.
//!   A retry of the same command is answered from it: the outcome itself when nothing was
//!   stripped, else the stripped outcome marked `data_omitted` (its data is not kept, never
//!   invented). The same id with a different command is answered `RequestConflict` and changes
//!   nothing.
//! - What is remembered depends on the command and the state only, never on a member's response
//!   bound (`--max-response-bytes` may differ between members): range results are dropped whole,
//!   and previous values are present exactly when asked for and existing. Of the registry's
//!   periodic commands (heartbeats, health verdicts, reaps, and deregistrations), from command
//!   version 4, only the instance's health is kept: all their answer says (a heartbeat's), where
//!   the whole instance, its metadata included, let heartbeats of large instances flush the
//!   memory within seconds. From version 6, the key of a put that is not sequential (the
//!   command's own, which every retry carries) is left out and put back from the retry's
//!   command when it is answered: puts of long keys, 128 to a txn, flushed the memory as fast.
//! - The table is bounded in bytes: when the remembered rows add up to more than the bound
//!   ([`REQUEST_MEMORY_BYTES`], the same on every member), the oldest (by applying index) are forgotten, each at most once,
//!   in the apply that crossed the bound. The window this gives in time is documented in
//!   docs/architecture.md. A retry after its id was forgotten is applied again.
//! - What a row counts against the bound depends on the command and the state only, never on
//!   how a build words a refusal: from command version 9 a row records what it counts
//!   ([`counted_bytes`]), a refusal's text counted as a fixed allowance and kept no longer than
//!   it, so that two builds of one command version that word an error differently forget the
//!   same ids (a retry of an id one member forgot and another remembers would be applied on one
//!   and not the other), and the memory holds no more than it counts. Rows of older versions
//!   count their whole length, a refusal's text in the wording of the build that applies them:
//!   the refusals a command of version 2 to 8 can get are worded as they were at version 9's
//!   start, and stay so.
//! - `requests_by_index` names exactly the rows of `requests`, each under the index its row
//!   records; `requests_meta/bytes` is the sum of [`counted_bytes`] over them.

use latch_proto::internal::command::Body;
use latch_proto::internal::{
    op, op_result, outcome, InstanceRow, Op, Outcome, RangeResult, Remembered, RequestConflict,
};
use prost::Message;
use redb::{ReadableTable, Table, WriteTransaction};

use super::{Applied, Domain, FsmError, TableDef};
use crate::storage::schema::{REQUESTS, REQUESTS_BY_INDEX, REQUESTS_META, REQUESTS_META_BYTES};

/// Most bytes of remembered requests (ids, rows and index entries, as [`counted_bytes`] counts
/// them: at least what they take) on every member.
pub const REQUEST_MEMORY_BYTES: u64 = 32 * 1024 * 1024;

pub(crate) struct RequestsDomain;

impl Domain for RequestsDomain {
    fn name(&self) -> &'static str {
        "requests"
    }

    fn tables(&self) -> &'static [TableDef] {
        &[REQUESTS, REQUESTS_BY_INDEX, REQUESTS_META]
    }

    fn check_row(&self, table: &str, key: &[u8], value: &[u8], at: &Applied) -> Result<(), FsmError> {
        let corrupt = |why: String| FsmError::Corrupt(format!("table {table}: {why}"));
        match table {
            "requests" => {
                let r = decode(key, value)?;
                if r.index > at.index {
                    return Err(corrupt(format!(
                        "request {:?} applied at {}, after {}",
                        show(key),
                        r.index,
                        at.index
                    )));
                }
            }
            "requests_by_index" => {
                let index =
                    be_u64(key).ok_or_else(|| corrupt(format!("key of {} bytes, expected 8", key.len())))?;
                if index > at.index || value.is_empty() {
                    return Err(corrupt(format!("index {index} names request {:?}", show(value))));
                }
            }
            _ => {
                if key != REQUESTS_META_BYTES.as_bytes() || be_u64(value).is_none() {
                    return Err(corrupt(format!("unexpected row {:?}", show(key))));
                }
            }
        }
        Ok(())
    }
}

/// What the memory says of a request id about to be applied.
pub(crate) enum Seen {
    /// Not remembered: apply it.
    New,
    /// Answer this and change nothing.
    Answered(Outcome),
}

/// What a retry of request `id`, the encoded `command` of hash `command_hash`, is answered
/// from the memory `txn` reads (as [`Memory::lookup`] answers it at apply); `None` when the
/// memory does not remember the id.
pub fn answer_of(
    txn: &redb::ReadTransaction,
    id: &str,
    command_hash: u64,
    command: &[u8],
) -> Result<Option<Outcome>, FsmError> {
    let body = latch_proto::internal::Command::decode(command).ok().and_then(|c| c.body);
    Ok(read(txn, id)?.map(|r| answer(r, command_hash, body.as_ref())))
}

/// What the memory `txn` reads remembers of request `id`, if anything.
fn read(txn: &redb::ReadTransaction, id: &str) -> Result<Option<Remembered>, FsmError> {
    let Some(requests) = super::open_read(txn, REQUESTS)? else { return Ok(None) };
    let Some(row) = requests.get(id.as_bytes())? else { return Ok(None) };
    Ok(Some(decode(id.as_bytes(), row.value())?))
}

/// The answer to a request of `command_hash` (with `body`) under the id `r` remembers: its
/// first outcome (its data omitted if it was stripped, its own keys put back), or a conflict if
/// it is another command.
fn answer(r: Remembered, command_hash: u64, body: Option<&Body>) -> Outcome {
    let mut first = r.outcome.unwrap_or_default();
    if r.command_hash != command_hash {
        let result = outcome::Result::Conflict(RequestConflict { first_applied_at: r.index });
        return Outcome { revision: first.revision, data_omitted: false, result: Some(result) };
    }
    restore_own_keys(&mut first, body);
    Outcome { data_omitted: r.stripped, ..first }
}

/// What a remembered outcome leaves out besides its data, by its command's version (see the
/// module doc).
#[derive(Debug, Default)]
pub(crate) struct LeftOut {
    /// A registry outcome's instance but its health.
    pub(crate) all_but_health: bool,
    /// These keys of puts.
    pub(crate) own_keys: Option<OwnKeys>,
    /// A refusal's text, from what the row counts against the bound (it is still kept).
    pub(crate) refusal_text_uncounted: bool,
}

/// Which results of a command's outcome answer a put of a key the command names itself (not
/// sequential): from command version 6 the memory leaves their keys out.
#[derive(Debug, Default)]
pub(crate) struct OwnKeys {
    put: bool,
    success: Vec<bool>,
    failure: Vec<bool>,
}

impl OwnKeys {
    pub(crate) fn of(body: Option<&Body>) -> OwnKeys {
        let own =
            |ops: &[Op]| ops.iter().map(|o| matches!(&o.op, Some(op::Op::Put(p)) if !p.sequential)).collect();
        match body {
            Some(Body::Put(p)) => OwnKeys { put: !p.sequential, ..OwnKeys::default() },
            Some(Body::Txn(t)) => OwnKeys { put: false, success: own(&t.success), failure: own(&t.failure) },
            _ => OwnKeys::default(),
        }
    }

    /// Leaves the own keys out of `o`, the outcome of the command they were taken from.
    fn forget(&self, o: &mut Outcome) {
        match o.result.as_mut() {
            Some(outcome::Result::Put(r)) if self.put => r.key.clear(),
            Some(outcome::Result::Txn(t)) => {
                // A txn's results follow its branch's ops one for one (`kv::txn`).
                let own = if t.succeeded { &self.success } else { &self.failure };
                for (r, own) in t.results.iter_mut().zip(own) {
                    match r.result.as_mut() {
                        Some(op_result::Result::Put(p)) if *own => p.key.clear(),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// Puts back into a remembered outcome the keys [`OwnKeys`] left out, from `body`, the command
/// it answers (a retry: the same command).
fn restore_own_keys(o: &mut Outcome, body: Option<&Body>) {
    let restore = |r: &mut latch_proto::internal::PutResult, p: &latch_proto::internal::Put| {
        if r.key.is_empty() && !p.sequential {
            r.key.clone_from(&p.key);
        }
    };
    match (o.result.as_mut(), body) {
        (Some(outcome::Result::Put(r)), Some(Body::Put(p))) => restore(r, p),
        (Some(outcome::Result::Txn(t)), Some(Body::Txn(req))) => {
            let ops = if t.succeeded { &req.success } else { &req.failure };
            for (r, o) in t.results.iter_mut().zip(ops) {
                if let (Some(op_result::Result::Put(r)), Some(op::Op::Put(p))) = (r.result.as_mut(), &o.op) {
                    restore(r, p);
                }
            }
        }
        _ => {}
    }
}

/// The first outcome of request `id` the memory `txn` reads remembers, whatever its command;
/// `None` when it does not remember the id.
pub fn first_outcome(txn: &redb::ReadTransaction, id: &str) -> Result<Option<Outcome>, FsmError> {
    Ok(read(txn, id)?.map(|r| r.outcome.unwrap_or_default()))
}

/// Whether request `id` is remembered in a read transaction: applied here, and not forgotten.
pub fn remembered(txn: &redb::ReadTransaction, id: &str) -> Result<bool, FsmError> {
    match super::open_read(txn, REQUESTS)? {
        Some(requests) => Ok(requests.get(id.as_bytes())?.is_some()),
        None => Ok(false),
    }
}

/// The request memory as one batch of entries sees it (`fsm::Batch`): its three tables open
/// from the first entry with a request id to the batch's end, its byte total read once and
/// written back by [`Memory::close`]. Opening three tables and rewriting the total for every
/// entry was a sixth of a leader's apply thread in a 16-client lock run (`perf`).
pub(crate) struct Memory<'t> {
    requests: Table<'t, &'static [u8], &'static [u8]>,
    by_index: Table<'t, &'static [u8], &'static [u8]>,
    meta: Table<'t, &'static [u8], &'static [u8]>,
    /// `requests_meta/bytes` as of the entries applied so far.
    total: u64,
    changed: bool,
}

impl<'t> Memory<'t> {
    pub(crate) fn open(txn: &'t WriteTransaction) -> Result<Memory<'t>, FsmError> {
        let meta = txn.open_table(REQUESTS_META)?;
        let total = match meta.get(REQUESTS_META_BYTES.as_bytes())? {
            Some(v) => be_u64(v.value())
                .ok_or_else(|| FsmError::Corrupt("table requests_meta: bytes is not 8 bytes".into()))?,
            None => 0,
        };
        Ok(Memory {
            requests: txn.open_table(REQUESTS)?,
            by_index: txn.open_table(REQUESTS_BY_INDEX)?,
            meta,
            total,
            changed: false,
        })
    }

    /// Looks `id` up; `command_hash` is the hash of the whole encoded command, `body` its body.
    pub(crate) fn lookup(&self, id: &str, command_hash: u64, body: Option<&Body>) -> Result<Seen, FsmError> {
        let Some(row) = self.requests.get(id.as_bytes())? else { return Ok(Seen::New) };
        Ok(Seen::Answered(answer(decode(id.as_bytes(), row.value())?, command_hash, body)))
    }

    /// Remembers the outcome of `id`, applied at `index`, then forgets the oldest rows while
    /// the memory is over its bound.
    pub(crate) fn remember(
        &mut self,
        index: u64,
        id: &str,
        command_hash: u64,
        outcome: &Outcome,
        left_out: &LeftOut,
        bound: u64,
    ) -> Result<(), FsmError> {
        let (mut outcome, stripped) = strip(outcome, left_out.all_but_health);
        if let Some(own) = &left_out.own_keys {
            own.forget(&mut outcome);
        }
        let mut row = Remembered { index, command_hash, outcome: Some(outcome), stripped, counted_bytes: 0 };
        if left_out.refusal_text_uncounted {
            keep_refusal_text_short(&mut row);
            row.counted_bytes = counted_whatever_the_text(id.len(), &row);
        }
        let counted = counted(id.len(), &row, row.encoded_len());
        self.requests.insert(id.as_bytes(), row.encode_to_vec().as_slice())?;
        self.by_index.insert(index.to_be_bytes().as_slice(), id.as_bytes())?;
        self.total += counted;
        self.changed = true;
        while self.total > bound {
            let (at, oldest) = match self.by_index.first()? {
                Some((k, v)) => (k.value().to_vec(), v.value().to_vec()),
                None => break,
            };
            self.by_index.remove(at.as_slice())?;
            let Some(gone) = self.requests.remove(oldest.as_slice())? else {
                return Err(FsmError::Corrupt(format!(
                    "table requests_by_index names request {:?}, missing from table requests",
                    show(&oldest)
                )));
            };
            self.total = self.total.saturating_sub(counted_bytes(&oldest, gone.value())?);
        }
        Ok(())
    }

    /// Writes the byte total back, if an entry changed it, and closes the tables.
    pub(crate) fn close(mut self) -> Result<(), FsmError> {
        if self.changed {
            self.meta.insert(REQUESTS_META_BYTES.as_bytes(), self.total.to_be_bytes().as_slice())?;
        }
        Ok(())
    }
}

/// What the remembered request `id`, stored as `row`, counts against the bound.
pub(crate) fn counted_bytes(id: &[u8], row: &[u8]) -> Result<u64, FsmError> {
    Ok(counted(id.len(), &decode(id, row)?, row.len()))
}

/// What a row of `row_len` encoded bytes counts: what it records, or (rows of command versions
/// before 9) [`row_bytes`] of its encoded length.
fn counted(id_len: usize, row: &Remembered, row_len: usize) -> u64 {
    match row.counted_bytes {
        0 => row_bytes(id_len, row_len),
        recorded => recorded,
    }
}

/// What a request of an `id_len`-byte id and a `row_len`-byte row takes: its id twice (row key
/// and index value), its row, and its 8-byte index key.
fn row_bytes(id_len: usize, row_len: usize) -> u64 {
    (2 * id_len + row_len + 8) as u64
}

/// The most bytes of a refusal's text a row keeps from command version 9, counted as that many
/// whatever its length: what the memory counts depends on no build's wording, and what it
/// holds stays within what it counts.
const REFUSAL_TEXT_KEPT: usize = 256;

/// Cuts a refusal's text to [`REFUSAL_TEXT_KEPT`] bytes (at a character's end).
fn keep_refusal_text_short(row: &mut Remembered) {
    if let Some(Outcome { result: Some(outcome::Result::Rejected(text)), .. }) = row.outcome.as_mut() {
        let mut end = text.len().min(REFUSAL_TEXT_KEPT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// What a row counts from command version 9: [`row_bytes`] of the row with its refusal's text
/// (if any) left out and its own count at its largest, plus the text's allowance — at least
/// what it takes, for any wording.
fn counted_whatever_the_text(id_len: usize, row: &Remembered) -> u64 {
    let mut bare = row.clone();
    bare.counted_bytes = u64::MAX;
    let refusal = match bare.outcome.as_mut() {
        Some(Outcome { result: Some(outcome::Result::Rejected(text)), .. }) => {
            text.clear();
            // The text and its length's two bytes.
            REFUSAL_TEXT_KEPT as u64 + 2
        }
        _ => 0,
    };
    row_bytes(id_len, bare.encoded_len()) + refusal
}

/// `o` without its data (previous values, range results), marked `data_omitted` if it had any
/// or was so marked already (a retry's answer from the memory): as a retry is answered.
pub fn omit_data(o: &Outcome) -> Outcome {
    let (stripped, any) = strip(o, false);
    Outcome { data_omitted: o.data_omitted || any, ..stripped }
}

/// The outcome without previous values and range results (and with `health_only`, a registry
/// outcome's instance reduced to its health), and whether its answer carried data that is not
/// kept (see the module doc: decided by the command and the state alone).
fn strip(o: &Outcome, health_only: bool) -> (Outcome, bool) {
    fn take<T>(v: &mut Vec<T>) -> bool {
        !std::mem::take(v).is_empty()
    }
    let mut o = o.clone();
    let stripped = match o.result.as_mut() {
        Some(outcome::Result::Put(p)) => p.prev_kv.take().is_some(),
        Some(outcome::Result::DeleteRange(d)) => take(&mut d.prev_kvs),
        Some(outcome::Result::Txn(t)) => t.results.iter_mut().fold(false, |stripped, r| {
            let this = match r.result.as_mut() {
                Some(op_result::Result::Put(p)) => p.prev_kv.take().is_some(),
                Some(op_result::Result::DeleteRange(d)) => take(&mut d.prev_kvs),
                Some(op_result::Result::Range(r)) => {
                    *r = RangeResult::default();
                    true
                }
                None => false,
            };
            stripped | this
        }),
        Some(outcome::Result::Registry(r)) if health_only => {
            if let Some(i) = r.instance.as_mut() {
                **i = InstanceRow { health: i.health, ..Default::default() };
            }
            false
        }
        _ => false,
    };
    (o, stripped)
}

fn decode(id: &[u8], bytes: &[u8]) -> Result<Remembered, FsmError> {
    Remembered::decode(bytes)
        .map_err(|e| FsmError::Corrupt(format!("table requests, key {:?}: undecodable row: {e}", show(id))))
}

fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(<[u8; 8]>::try_from(b).ok()?))
}
