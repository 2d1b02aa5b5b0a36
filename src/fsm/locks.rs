//! The locks domain: Chubby's advisory locks with sequencers, lock-delay and a fair queue; the
//! machinery of elections too (`elections` adds their values). A lock is held by sessions;
//! grants happen on apply, so every member computes the same holders and generations.
//!
//! Invariants:
//! - Per lock: either one exclusive holder, or any number of shared holders, or none. A session
//!   appears at most once in a lock (holding or waiting).
//! - The queue is FIFO: only its head is ever granted, and only when compatible with the holders
//!   (exclusive: no holders; shared: no exclusive holder) and no lock-delay is in force. A new
//!   request is granted at once only when nobody waits, so a shared request never overtakes a
//!   waiting exclusive one.
//! - Every grant takes the next value of one counter (`lock_meta`), so a lock's generations
//!   strictly increase for the life of the cluster, whatever became of the lock's row.
//! - `session_locks` names exactly the locks each session holds or awaits.
//! - A session's end removes it from every lock in the revision that ends it; when it ended by
//!   expiry, each lock it held enters its lock-delay (no grant until the leader's
//!   `EndLockDelay` for that delay applies); a normal release hands the lock on at once.
//! - A row exists only while the lock has a holder, a waiter or a delay.

use super::tables::Tables;
use latch_proto::internal::{
    lock_result::Status, outcome, Acquire, CancelWait, EndLockDelay, LockHolder, LockMode, LockResult,
    LockRow, LockSpace, LockWaiter, Release, Sequencer,
};
use prost::Message;
use redb::{ReadTransaction, ReadableTable};

use super::apply::{Apply, LockChange};
use super::{open_read, sessions, Applied, Domain, FsmError, TableDef};
use crate::storage::schema::{LOCKS, LOCK_META, LOCK_META_GENERATION, SESSION_LOCKS};

/// Most bytes of a lock or election name.
pub const MAX_LOCK_NAME_BYTES: usize = 1024;
pub use latch_proto::MAX_LOCK_DELAY_MS;
/// The most bytes one lock's row (its holders and waiters, with their values) holds: what an
/// acquire or campaign carries as `max_row_bytes`. Every change of a lock rewrites its row and
/// records it in the history, and DescribeLock answers it whole: about 10,000 shared holders,
/// or 250 candidates with 4 KiB values.
pub const MAX_ROW_BYTES: u32 = 1024 * 1024;
/// What an entry of a row takes beyond its session, request id and value, at most (its mode,
/// revision, generation and lock-delay, and their framing).
const ENTRY_MARGIN_BYTES: usize = 64;

/// A row's size as `max_row_bytes` counts it: each entry's session, request id and value, and
/// [`ENTRY_MARGIN_BYTES`]. Not its encoding's length, which a later build adding a field would
/// change: two builds replaying the same entries must refuse the same acquires.
pub(super) fn row_bytes(row: &LockRow) -> usize {
    let holders = row.holders.iter().map(|h| entry_bytes(&h.session, &h.request_id, &h.value));
    holders.chain(row.waiters.iter().map(|w| entry_bytes(&w.session, &w.request_id, &w.value))).sum()
}

fn entry_bytes(session: &str, request_id: &str, value: &[u8]) -> usize {
    session.len() + request_id.len() + value.len() + ENTRY_MARGIN_BYTES
}

pub(crate) struct LocksDomain;

impl Domain for LocksDomain {
    fn name(&self) -> &'static str {
        "locks"
    }

    fn tables(&self) -> &'static [TableDef] {
        &[LOCKS, SESSION_LOCKS, LOCK_META]
    }

    fn check_row(&self, table: &str, key: &[u8], value: &[u8], _at: &Applied) -> Result<(), FsmError> {
        let corrupt = |why: &str| FsmError::Corrupt(format!("table {table}, key {:?}: {why}", show(key)));
        match table {
            "locks" => {
                split_lock_key(key).ok_or_else(|| corrupt("not a lock space byte and a name"))?;
                decode_row(key, value)?;
            }
            "session_locks" => {
                let at = key.iter().position(|b| *b == 0).ok_or_else(|| corrupt("no 0 byte"))?;
                if sessions::check_id(&key[..at]).is_err()
                    || split_lock_key(&key[at + 1..]).is_none()
                    || !value.is_empty()
                {
                    return Err(corrupt("not a session id, a 0 byte and a lock key, with no value"));
                }
            }
            _ => {
                if key != LOCK_META_GENERATION.as_bytes() || value.len() != 8 {
                    return Err(corrupt("not the 8-byte generation counter"));
                }
            }
        }
        Ok(())
    }
}

/// Whether `name` can name a lock: 1 to [`MAX_LOCK_NAME_BYTES`] bytes without a 0 byte.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_LOCK_NAME_BYTES || name.contains('\0') {
        return Err(format!(
            "a lock or election name must be 1 to {MAX_LOCK_NAME_BYTES} bytes without a 0 byte"
        ));
    }
    Ok(())
}

/// The `locks` key of a name in a space: the space's byte (`L` or `E`), then the name.
pub fn lock_key(space: LockSpace, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(match space {
        LockSpace::Locks => b'L',
        LockSpace::Elections => b'E',
    });
    k.extend_from_slice(name.as_bytes());
    k
}

/// A `locks` key as (space, name).
pub fn split_lock_key(key: &[u8]) -> Option<(LockSpace, &str)> {
    let space = match key.first()? {
        b'L' => LockSpace::Locks,
        b'E' => LockSpace::Elections,
        _ => return None,
    };
    let name = std::str::from_utf8(&key[1..]).ok()?;
    check_name(name).ok()?;
    Some((space, name))
}

/// `ids_checked` (commands of version 3 on): refuse a request id another session's hold or
/// wait carries.
pub(crate) fn acquire(
    ap: &mut Apply,
    req: Acquire,
    request_id: &str,
    ids_checked: bool,
) -> Result<outcome::Result, FsmError> {
    let (space, mode) = match (LockSpace::try_from(req.space), LockMode::try_from(req.mode)) {
        (Ok(s), Ok(m)) => (s, m),
        _ => return Ok(rejected("acquire: unknown lock space or mode")),
    };
    if let Err(why) = check_name(&req.name) {
        return Ok(rejected(&format!("acquire: {why}")));
    }
    if req.lock_delay_ms > MAX_LOCK_DELAY_MS {
        return Ok(rejected(&format!("acquire: lock_delay must be 0 … {MAX_LOCK_DELAY_MS} ms")));
    }
    if req.wait && request_id.is_empty() {
        return Ok(rejected("acquire: a waiting request needs a request id"));
    }
    if space == LockSpace::Elections && mode != LockMode::Exclusive {
        return Ok(rejected("acquire: an election is held exclusively"));
    }
    if !sessions::exists(ap.tables, &req.session)? {
        return Ok(sessions::not_found(req.session));
    }
    let key = lock_key(space, &req.name);
    let mut row = read_row(ap.tables, &key)?.unwrap_or_default();
    let same_mode = |m: i32| m == mode as i32;
    if let Some(h) = row.holders.iter().find(|h| h.session == req.session) {
        let status = if same_mode(h.mode) { Status::Already } else { Status::OtherMode };
        return Ok(result(status, Some(sequencer(space, &req.name, h)), 0));
    }
    if let Some(w) = row.waiters.iter().find(|w| w.session == req.session) {
        if !same_mode(w.mode) {
            return Ok(result(Status::OtherMode, None, 0));
        }
        let request_id = w.request_id.clone();
        return Ok(outcome::Result::Lock(LockResult {
            status: Status::Already as i32,
            request_id,
            ..Default::default()
        }));
    }
    // A request id names one request of one session: one that another session's hold or wait
    // carries is a client's reuse, not a retry (its answer would be that request's).
    let ids = row.holders.iter().map(|h| &h.request_id).chain(row.waiters.iter().map(|w| &w.request_id));
    if ids_checked && !request_id.is_empty() && ids.into_iter().any(|id| id == request_id) {
        return Ok(rejected(&format!(
            "acquire: request id {request_id:?} is another session's request on this lock; a new request \
             needs a new id"
        )));
    }
    let grantable = row.waiters.is_empty() && row.delay_revision == 0 && compatible(&row.holders, mode);
    if !grantable && !req.wait {
        return Ok(result(Status::Busy, None, 0));
    }
    if !grantable && req.max_waiters > 0 && row.waiters.len() >= req.max_waiters as usize {
        return Ok(result(Status::QueueFull, None, row.waiters.len() as u64));
    }
    if req.max_row_bytes > 0 {
        let now = row_bytes(&row);
        if now + entry_bytes(&req.session, request_id, &req.value) > req.max_row_bytes as usize {
            return Ok(result(Status::RowFull, None, now as u64));
        }
    }
    // The session's index, held for the count and the insert.
    let mut owned_index = ap.tables.open(SESSION_LOCKS)?;
    if req.max_session_locks > 0 {
        let owned = count_owned(&*owned_index, &req.session, req.max_session_locks)?;
        if owned >= u64::from(req.max_session_locks) {
            return Ok(result(Status::SessionFull, None, owned));
        }
    }
    let revision = ap.write_revision()?;
    let status = if grantable {
        let holder = LockHolder {
            session: req.session.clone(),
            mode: mode as i32,
            generation: next_generation(ap.tables)?,
            revision,
            request_id: request_id.to_string(),
            lock_delay_ms: req.lock_delay_ms,
            value: req.value,
        };
        let seq = sequencer(space, &req.name, &holder);
        row.holders.push(holder);
        ap.lock_changed(LockChange::Changed { key: key.clone() });
        result(Status::Granted, Some(seq), 0)
    } else {
        row.waiters.push(LockWaiter {
            session: req.session.clone(),
            mode: mode as i32,
            revision,
            request_id: request_id.to_string(),
            lock_delay_ms: req.lock_delay_ms,
            value: req.value,
        });
        result(Status::Queued, None, row.waiters.len() as u64 - 1)
    };
    owned_index.insert(index_key(&req.session, &key).as_slice(), [].as_slice())?;
    drop(owned_index);
    write_row(ap, &key, &row)?;
    Ok(status)
}

pub(crate) fn release(ap: &mut Apply, req: Release) -> Result<outcome::Result, FsmError> {
    let Some(seq) = req.sequencer else { return Ok(rejected("release: the sequencer is missing")) };
    let Ok(space) = LockSpace::try_from(seq.space) else {
        return Ok(rejected("release: unknown lock space"));
    };
    let key = lock_key(space, &seq.name);
    let Some(mut row) = read_row(ap.tables, &key)? else { return Ok(result(Status::NotHeld, None, 0)) };
    let Some(at) = row.holders.iter().position(|h| holds(h, &seq)) else {
        return Ok(result(Status::NotHeld, None, 0));
    };
    let revision = ap.write_revision()?;
    let holder = row.holders.remove(at);
    ap.tables.open(SESSION_LOCKS)?.remove(index_key(&holder.session, &key).as_slice())?;
    ap.lock_changed(LockChange::Changed { key: key.clone() });
    grant_waiters(ap, &key, &mut row, revision)?;
    write_row(ap, &key, &row)?;
    Ok(result(Status::Done, Some(seq), 0))
}

/// Gives up a request: see `CancelWait` in log.proto.
pub(crate) fn cancel_wait(ap: &mut Apply, req: CancelWait) -> Result<outcome::Result, FsmError> {
    let Ok(space) = LockSpace::try_from(req.space) else { return Ok(rejected("cancel: unknown lock space")) };
    let key = lock_key(space, &req.name);
    let Some(mut row) = read_row(ap.tables, &key)? else { return Ok(result(Status::NotHeld, None, 0)) };
    if let Some(at) = row.waiters.iter().position(|w| w.request_id == req.request_id) {
        let revision = ap.write_revision()?;
        let waiter = row.waiters.remove(at);
        ap.tables.open(SESSION_LOCKS)?.remove(index_key(&waiter.session, &key).as_slice())?;
        ap.lock_changed(LockChange::Settled { request_id: waiter.request_id });
        // The head leaving may let the requests behind it in.
        grant_waiters(ap, &key, &mut row, revision)?;
        write_row(ap, &key, &row)?;
        return Ok(result(Status::Done, None, 0));
    }
    let Some(holder) = row.holders.iter().find(|h| h.request_id == req.request_id) else {
        return Ok(result(Status::NotHeld, None, 0));
    };
    let seq = sequencer(space, &req.name, holder);
    if req.release_granted {
        release(ap, Release { sequencer: Some(seq) })
    } else {
        Ok(result(Status::Granted, Some(seq), 0))
    }
}

/// Ends the lock-delay that began at `since_revision`, and grants what the queue allows.
pub(crate) fn end_delay(ap: &mut Apply, req: EndLockDelay) -> Result<outcome::Result, FsmError> {
    let Ok(space) = LockSpace::try_from(req.space) else {
        return Ok(rejected("end delay: unknown lock space"));
    };
    let key = lock_key(space, &req.name);
    let Some(mut row) = read_row(ap.tables, &key)? else { return Ok(result(Status::NotHeld, None, 0)) };
    if row.delay_revision == 0 || row.delay_revision != req.since_revision {
        return Ok(result(Status::NotHeld, None, 0));
    }
    let revision = ap.write_revision()?;
    row.delay_revision = 0;
    row.delay_ms = 0;
    ap.lock_changed(LockChange::DelayEnded { key: key.clone(), since_revision: req.since_revision });
    grant_waiters(ap, &key, &mut row, revision)?;
    write_row(ap, &key, &row)?;
    Ok(result(Status::Done, None, 0))
}

/// Removes a session that is ending (in the revision that ends it) from every lock it holds or
/// awaits. `expired`: its holds end abnormally, and their locks enter their lock-delay.
pub(crate) fn session_ended(ap: &mut Apply, session: &str, expired: bool) -> Result<u64, FsmError> {
    let keys = owned(ap.tables, session)?;
    if keys.is_empty() {
        return Ok(0);
    }
    let revision = ap.write_revision()?;
    for key in &keys {
        let Some(mut row) = read_row(ap.tables, key)? else {
            return Err(FsmError::Corrupt(format!(
                "table session_locks: session {session:?} names lock {:?}, which does not exist",
                show(key)
            )));
        };
        let mut delay = None;
        for h in row.holders.iter().filter(|h| h.session == session) {
            ap.lock_changed(LockChange::Changed { key: key.clone() });
            if expired && h.lock_delay_ms > 0 {
                delay = Some(h.lock_delay_ms);
            }
        }
        row.holders.retain(|h| h.session != session);
        for w in row.waiters.iter().filter(|w| w.session == session) {
            ap.lock_changed(LockChange::Settled { request_id: w.request_id.clone() });
        }
        row.waiters.retain(|w| w.session != session);
        if let Some(ms) = delay {
            // A delay already in force is replaced by one at least as long from now.
            row.delay_ms = if row.delay_revision != 0 { row.delay_ms.max(ms) } else { ms };
            row.delay_revision = revision;
            ap.lock_changed(LockChange::DelayStarted {
                key: key.clone(),
                since_revision: revision,
                delay_ms: row.delay_ms,
            });
        }
        grant_waiters(ap, key, &mut row, revision)?;
        write_row(ap, key, &row)?;
        ap.tables.open(SESSION_LOCKS)?.remove(index_key(session, key).as_slice())?;
    }
    Ok(keys.len() as u64)
}

/// Grants the head of the queue for as long as it is compatible with the holders and no delay
/// is in force.
fn grant_waiters(ap: &mut Apply, key: &[u8], row: &mut LockRow, revision: i64) -> Result<(), FsmError> {
    while row.delay_revision == 0 {
        let Some(head) = row.waiters.first() else { break };
        let mode = LockMode::try_from(head.mode).unwrap_or(LockMode::Exclusive);
        if !compatible(&row.holders, mode) {
            break;
        }
        let w = row.waiters.remove(0);
        row.holders.push(LockHolder {
            session: w.session,
            mode: w.mode,
            generation: next_generation(ap.tables)?,
            revision,
            request_id: w.request_id.clone(),
            lock_delay_ms: w.lock_delay_ms,
            value: w.value,
        });
        ap.lock_changed(LockChange::Settled { request_id: w.request_id });
        ap.lock_changed(LockChange::Changed { key: key.to_vec() });
    }
    Ok(())
}

/// Whether a request in `mode` can join `holders`.
fn compatible(holders: &[LockHolder], mode: LockMode) -> bool {
    match mode {
        LockMode::Exclusive => holders.is_empty(),
        LockMode::Shared => holders.iter().all(|h| h.mode == LockMode::Shared as i32),
    }
}

/// Whether `holder` is the grant `seq` names.
fn holds(holder: &LockHolder, seq: &Sequencer) -> bool {
    holder.generation == seq.generation && holder.session == seq.session && holder.mode == seq.mode
}

/// The sequencer of a holder.
pub fn sequencer(space: LockSpace, name: &str, holder: &LockHolder) -> Sequencer {
    Sequencer {
        space: space as i32,
        name: name.to_string(),
        mode: holder.mode,
        generation: holder.generation,
        session: holder.session.clone(),
    }
}

/// Whether `seq` still holds its lock; if not, why.
pub fn check(txn: &ReadTransaction, seq: &Sequencer) -> Result<Result<(), String>, FsmError> {
    let space = LockSpace::try_from(seq.space).unwrap_or(LockSpace::Locks);
    let key = lock_key(space, &seq.name);
    let row = match open_read(txn, LOCKS)? {
        Some(t) => get_row(&t, &key)?,
        None => None,
    };
    Ok(verdict(row.as_ref(), seq))
}

/// Whether `seq` still holds its lock, in a write transaction (a fenced txn's compare).
pub(crate) fn check_in(tables: &Tables, seq: &Sequencer) -> Result<bool, FsmError> {
    let space = LockSpace::try_from(seq.space).unwrap_or(LockSpace::Locks);
    Ok(verdict(read_row(tables, &lock_key(space, &seq.name))?.as_ref(), seq).is_ok())
}

fn verdict(row: Option<&LockRow>, seq: &Sequencer) -> Result<(), String> {
    if row.is_some_and(|r| r.holders.iter().any(|h| holds(h, seq))) {
        return Ok(());
    }
    // Who holds it now (several, when shared), to tell the stale sequencer from the new one.
    let now: Vec<String> =
        row.map(|r| r.holders.iter().map(|h| h.generation.to_string()).collect()).unwrap_or_default();
    let now = match now.as_slice() {
        [] => String::new(),
        [one] => format!("; generation {one} holds it now"),
        many => format!("; generations {} hold it now", many.join(", ")),
    };
    Err(format!(
        "generation {} of session {:?} does not hold {:?}: it was released, its session ended, or it was \
         never granted{now}",
        seq.generation, seq.session, seq.name
    ))
}

/// Where the request applied under `request_id` stands in lock `key`.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestState {
    Held(Sequencer),
    Waiting,
    /// Neither holding nor waiting: cancelled, released, or its session ended.
    Gone,
}

pub fn request_state(txn: &ReadTransaction, key: &[u8], request_id: &str) -> Result<RequestState, FsmError> {
    let Some((space, name)) = split_lock_key(key) else { return Ok(RequestState::Gone) };
    let Some(row) = read(txn, key)? else { return Ok(RequestState::Gone) };
    if let Some(h) = row.holders.iter().find(|h| h.request_id == request_id) {
        return Ok(RequestState::Held(sequencer(space, name, h)));
    }
    if row.waiters.iter().any(|w| w.request_id == request_id) {
        return Ok(RequestState::Waiting);
    }
    Ok(RequestState::Gone)
}

/// One lock's row, if it has holders, waiters or a delay.
pub fn read(txn: &ReadTransaction, key: &[u8]) -> Result<Option<LockRow>, FsmError> {
    match open_read(txn, LOCKS)? {
        Some(t) => get_row(&t, key),
        None => Ok(None),
    }
}

/// The locks of `space` whose names begin with `prefix`, in name order, at most `limit`.
pub fn list(
    txn: &ReadTransaction,
    space: LockSpace,
    prefix: &str,
    start_after: &str,
    limit: usize,
    max_bytes: usize,
) -> Result<(Vec<(String, LockRow)>, bool), FsmError> {
    let Some(table) = open_read(txn, LOCKS)? else { return Ok((Vec::new(), false)) };
    let within = lock_key(space, prefix);
    let after = lock_key(space, start_after);
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let rows = if start_after.is_empty() || after < within {
        table.range::<&[u8]>(within.as_slice()..)?
    } else {
        table.range::<&[u8]>((std::ops::Bound::Excluded(after.as_slice()), std::ops::Bound::Unbounded))?
    };
    for row in rows {
        let (k, v) = row?;
        if !k.value().starts_with(&within) {
            break;
        }
        bytes = bytes.saturating_add(k.value().len() + v.value().len());
        if out.len() >= limit || (bytes > max_bytes && !out.is_empty()) {
            return Ok((out, true));
        }
        let name = split_lock_key(k.value())
            .map(|(_, n)| n.to_string())
            .ok_or_else(|| FsmError::Corrupt(format!("table locks: bad key {:?}", show(k.value()))))?;
        out.push((name, decode_row(k.value(), v.value())?));
    }
    Ok((out, false))
}

/// Every lock-delay in force: (lock key, since revision, delay), for the leader's timers.
pub fn delays(txn: &ReadTransaction) -> Result<Vec<(Vec<u8>, i64, u64)>, FsmError> {
    let Some(table) = open_read(txn, LOCKS)? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        let r = decode_row(k.value(), v.value())?;
        if r.delay_revision != 0 {
            out.push((k.value().to_vec(), r.delay_revision, r.delay_ms));
        }
    }
    Ok(out)
}

/// How many locks session `id` holds or awaits.
pub fn count_of(txn: &ReadTransaction, id: &str) -> Result<u64, FsmError> {
    let Some(index) = open_read(txn, SESSION_LOCKS)? else { return Ok(0) };
    count_owned(&index, id, u32::MAX)
}

/// How many locks session `id` holds or awaits, counted up to `most`: a session under the bound
/// costs the walk of what it owns, one at it `most` steps.
fn count_owned(
    index: &impl ReadableTable<&'static [u8], &'static [u8]>,
    id: &str,
    most: u32,
) -> Result<u64, FsmError> {
    let (start, end) = session_span(id);
    Ok(index.range::<&[u8]>(start.as_slice()..end.as_slice())?.take(most as usize).count() as u64)
}

/// The lock keys session `id` holds or awaits, in key order.
fn owned(tables: &Tables, id: &str) -> Result<Vec<Vec<u8>>, FsmError> {
    let index = tables.open(SESSION_LOCKS)?;
    let (start, end) = session_span(id);
    let mut keys = Vec::new();
    for row in index.range::<&[u8]>(start.as_slice()..end.as_slice())? {
        keys.push(row?.0.value()[start.len()..].to_vec());
    }
    Ok(keys)
}

fn session_span(id: &str) -> (Vec<u8>, Vec<u8>) {
    let start = index_key(id, b"");
    let mut end = id.as_bytes().to_vec();
    end.push(1);
    (start, end)
}

fn index_key(session: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(session.len() + 1 + key.len());
    k.extend_from_slice(session.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

fn next_generation(tables: &Tables) -> Result<u64, FsmError> {
    raise_generation(&mut *tables.open(LOCK_META)?, 1)
}

/// Adds `by` to the generation counter, the last generation granted, and returns it.
fn raise_generation(meta: &mut redb::Table<&[u8], &[u8]>, by: u64) -> Result<u64, FsmError> {
    let key = LOCK_META_GENERATION.as_bytes();
    let last = match meta.get(key)? {
        Some(v) => <[u8; 8]>::try_from(v.value())
            .map(u64::from_be_bytes)
            .map_err(|_| FsmError::Corrupt("table lock_meta, key generation: not 8 bytes".into()))?,
        None => 0,
    };
    let next = last.checked_add(by).ok_or_else(|| {
        FsmError::Corrupt("table lock_meta, key generation: the counter cannot grow".into())
    })?;
    meta.insert(key, next.to_be_bytes().as_slice())?;
    Ok(next)
}

/// Raises the generation counter by `by` outside any command (a restore as a new cluster,
/// `fsm::snapshot::restore_as_new_cluster`), so that every later grant's generation is above
/// every one granted before plus `by`; returns the last generation counted as granted.
pub(crate) fn skip_generations(txn: &redb::WriteTransaction, by: u64) -> Result<u64, FsmError> {
    raise_generation(&mut txn.open_table(LOCK_META)?, by)
}

pub(crate) fn read_row(tables: &Tables, key: &[u8]) -> Result<Option<LockRow>, FsmError> {
    get_row(&*tables.open(LOCKS)?, key)
}

/// A lock's row as stored, if there is one.
pub(crate) fn read_row_bytes(tables: &Tables, key: &[u8]) -> Result<Option<Vec<u8>>, FsmError> {
    Ok(tables.open(LOCKS)?.get(key)?.map(|v| v.value().to_vec()))
}

/// Writes a lock's row, or removes it when it holds nothing (and notes it for the history).
pub(crate) fn write_row(ap: &mut Apply, key: &[u8], row: &LockRow) -> Result<(), FsmError> {
    let mut table = ap.tables.open(LOCKS)?;
    let written = if row.holders.is_empty() && row.waiters.is_empty() && row.delay_revision == 0 {
        table.remove(key)?;
        None
    } else {
        let bytes = row.encode_to_vec();
        table.insert(key, bytes.as_slice())?;
        Some(bytes)
    };
    drop(table);
    ap.lock_written(key, written);
    Ok(())
}

fn get_row<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    key: &[u8],
) -> Result<Option<LockRow>, FsmError> {
    match table.get(key)? {
        Some(v) => Ok(Some(decode_row(key, v.value())?)),
        None => Ok(None),
    }
}

fn decode_row(key: &[u8], bytes: &[u8]) -> Result<LockRow, FsmError> {
    let row = LockRow::decode(bytes)
        .map_err(|e| FsmError::Corrupt(format!("table locks, key {:?}: undecodable row: {e}", show(key))))?;
    let exclusive = row.holders.iter().filter(|h| h.mode == LockMode::Exclusive as i32).count();
    if exclusive > 1 || (exclusive == 1 && row.holders.len() > 1) {
        return Err(FsmError::Corrupt(format!(
            "table locks, key {:?}: an exclusive holder beside other holders",
            show(key)
        )));
    }
    Ok(row)
}

pub(crate) fn result(status: Status, sequencer: Option<Sequencer>, ahead: u64) -> outcome::Result {
    outcome::Result::Lock(LockResult { status: status as i32, sequencer, ahead, request_id: String::new() })
}

fn rejected(why: &str) -> outcome::Result {
    outcome::Result::Rejected(why.to_string())
}

fn show(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use latch_proto::internal::command::Body;
    use latch_proto::internal::{CloseSession, ExpireSession};

    fn session(s: &mut Store, id: &str) {
        s.apply("", create_session(id));
    }

    fn lock(s: &mut Store, id: &str, name: &str, session: &str, mode: LockMode) -> LockResult {
        as_lock(s.apply(id, acquire_req(name, session, mode, true)))
    }

    fn as_lock(o: latch_proto::internal::Outcome) -> LockResult {
        match o.result {
            Some(outcome::Result::Lock(r)) => r,
            r => panic!("expected a lock result, got {r:?}"),
        }
    }

    fn status(r: &LockResult) -> Status {
        Status::try_from(r.status).expect("a known status")
    }

    fn row(s: &Store, name: &str) -> Option<LockRow> {
        s.read(|t| read(t, &lock_key(LockSpace::Locks, name))).expect("the row reads")
    }

    fn holders(s: &Store, name: &str) -> Vec<(String, u64)> {
        row(s, name)
            .map_or(Vec::new(), |r| r.holders.into_iter().map(|h| (h.session, h.generation)).collect())
    }

    fn release_body(seq: Sequencer) -> Body {
        Body::Release(Release { sequencer: Some(seq) })
    }

    fn expire(s: &mut Store, id: &str) {
        s.apply("", Body::ExpireSession(ExpireSession { id: id.into(), checkpoints: 0, term: 1 }));
    }

    #[test]
    fn a_request_id_another_sessions_hold_or_wait_carries_is_refused_once_the_memory_forgot_it() {
        let mut s = Store::new();
        s.bounds.request_memory_bytes = 300;
        for id in ["a", "b", "c"] {
            session(&mut s, id);
        }
        let granted = lock(&mut s, "r1", "l", "a", LockMode::Exclusive);
        assert_eq!(status(&granted), Status::Granted);
        assert_eq!(status(&lock(&mut s, "r2", "l", "b", LockMode::Exclusive)), Status::Queued);
        for n in 0..20 {
            s.apply(&format!("filler-{n:02}"), Body::Put(put_req("k", "v")));
        }
        let forgotten = s.read(|t| crate::fsm::remembered(t, "r1")).expect("the memory reads");
        assert!(!forgotten, "the request memory forgot r1 (the test's premise)");
        for reused in ["r1", "r2"] {
            let before = row(&s, "l");
            let out = s.apply(reused, acquire_req("l", "c", LockMode::Exclusive, true));
            assert!(
                matches!(&out.result, Some(outcome::Result::Rejected(why)) if why.contains("another session's request")),
                "{reused} names a's hold or b's wait: refused, never answered with theirs: {out:?}"
            );
            assert_eq!(row(&s, "l"), before, "and nothing written");
        }
        // A command of version 2 (a log an older build wrote, replayed) is applied by that
        // version's rules: queued, as that build did. (Fillers first: the refusals above are
        // remembered under r2 too.)
        for n in 20..40 {
            s.apply(&format!("filler-{n:02}"), Body::Put(put_req("k", "v")));
        }
        let old = latch_proto::internal::Command {
            version: 2,
            request_id: "r2".into(),
            body: Some(acquire_req("l", "c", LockMode::Exclusive, true)),
        };
        let applied = s.apply_data(&prost::Message::encode_to_vec(&old)).expect("an outcome");
        assert_eq!(status(&as_lock(applied.outcome)), Status::Queued, "version 2 applies it as it did");
    }

    /// The events an applier keeps (`Bounds::events`, which the simulator's watch checks take
    /// for the truth) are the history's rows, of every space, in order.
    #[test]
    fn kept_events_are_the_history_rows_of_every_space() {
        use super::super::history::{self, Space};
        let mut s = Store::new();
        let mut events = Vec::new();
        let mut apply = |s: &mut Store, id: &str, body: Body| events.extend(s.apply_full(id, body).events);
        apply(&mut s, "", create_session("a"));
        apply(&mut s, "", create_session("b"));
        apply(&mut s, "", put("k", "v"));
        apply(&mut s, "r1", acquire_req("l", "a", LockMode::Exclusive, true));
        apply(&mut s, "r2", acquire_req("l", "b", LockMode::Exclusive, true));
        let Body::Acquire(campaign) = acquire_req("e", "a", LockMode::Exclusive, true) else {
            panic!("an acquire")
        };
        let campaign = Acquire { space: LockSpace::Elections as i32, value: b"v1".to_vec(), ..campaign };
        apply(&mut s, "r3", Body::Acquire(campaign));
        let leader = s.read(|t| super::super::elections::leader(t, "e")).expect("reads").expect("a leads");
        apply(
            &mut s,
            "",
            Body::Proclaim(latch_proto::internal::Proclaim {
                sequencer: Some(leader.sequencer),
                value: b"v2".to_vec(),
                max_row_bytes: 0,
            }),
        );
        let instance = super::super::registry::instance("web", "1");
        apply(
            &mut s,
            "",
            Body::Register(latch_proto::internal::Register {
                instance: Some(instance),
                session: "a".into(),
                check: None,
            }),
        );
        apply(&mut s, "", Body::CloseSession(CloseSession { id: "a".into() }));
        apply(&mut s, "", Body::CloseSession(CloseSession { id: "b".into() }));
        let rows = s.read(|t| history::changes(t, 1, i64::MAX, usize::MAX)).expect("history reads").0;
        let of_events: Vec<_> = events
            .iter()
            .map(|e| {
                (
                    e.kv.mod_revision,
                    e.space,
                    e.kind == super::super::EventKind::Delete,
                    e.kv.key.clone(),
                    e.kv.value.clone(),
                )
            })
            .collect();
        let of_rows: Vec<_> = rows
            .iter()
            .map(|c| (c.revision, c.space, c.delete, c.kv.key.clone(), c.kv.value.clone()))
            .collect();
        assert_eq!(of_events, of_rows, "one event per history row, alike");
        let spaces: std::collections::BTreeSet<i32> = events.iter().map(|e| e.space as i32).collect();
        assert_eq!(
            spaces,
            [Space::Kv, Space::Sessions, Space::Locks, Space::Elections, Space::Registry]
                .into_iter()
                .map(|s| s as i32)
                .collect(),
            "keys', sessions', locks', elections' and the registry's changes are among them"
        );
    }

    #[test]
    fn every_change_of_a_lock_is_in_the_history_once_per_revision_as_it_ended_up() {
        let mut s = Store::new();
        session(&mut s, "a");
        session(&mut s, "b");
        let granted = lock(&mut s, "r1", "l", "a", LockMode::Exclusive);
        let queued = lock(&mut s, "r2", "l", "b", LockMode::Exclusive);
        let seq = granted.sequencer.expect("a holds");
        s.apply("", release_body(seq));
        let handed = s.applied().revision;
        s.apply("", Body::CloseSession(CloseSession { id: "b".into() }));
        let changes =
            s.read(|t| super::super::history::changes(t, 1, i64::MAX, usize::MAX)).expect("history reads").0;
        let of_l: Vec<(i64, bool, Vec<String>)> = changes
            .iter()
            .filter(|c| c.space == super::super::history::Space::Locks)
            .map(|c| {
                assert_eq!(c.kv.key, b"l", "a lock's change names the lock");
                let holders = if c.delete {
                    Vec::new()
                } else {
                    LockRow::decode(c.kv.value.as_slice())
                        .expect("a LockRow")
                        .holders
                        .into_iter()
                        .map(|h| h.session)
                        .collect()
                };
                (c.revision, c.delete, holders)
            })
            .collect();
        assert_eq!(status(&queued), Status::Queued);
        assert_eq!(
            of_l,
            vec![
                (3, false, vec!["a".to_string()]),
                (4, false, vec!["a".to_string()]),
                (handed, false, vec!["b".to_string()]),
                (handed + 1, true, Vec::new()),
            ],
            "granted to a, b queued, handed to b, gone with b's session"
        );
    }

    /// An acquire carries its member's `--max-lock-waiters`: one that would wait behind that
    /// many is refused and writes nothing, not even a revision; a grant is never refused, and
    /// once the queue is shorter, the next request joins it.
    #[test]
    fn an_acquire_that_would_wait_behind_its_bound_is_refused_and_writes_nothing() {
        let mut s = Store::new();
        for id in ["a", "b", "c", "d"] {
            session(&mut s, id);
        }
        let bounded = |session: &str| match acquire_req("n", session, LockMode::Exclusive, true) {
            Body::Acquire(a) => Body::Acquire(Acquire { max_waiters: 2, ..a }),
            _ => unreachable!("acquire_req makes an acquire"),
        };
        let a = as_lock(s.apply("ra", bounded("a")));
        assert_eq!(status(&a), Status::Granted);
        for (id, session) in [("rb", "b"), ("rc", "c")] {
            assert_eq!(status(&as_lock(s.apply(id, bounded(session)))), Status::Queued);
        }
        let before = (s.applied().revision, row(&s, "n"));
        let d = as_lock(s.apply("rd", bounded("d")));
        assert_eq!(
            (status(&d), d.ahead),
            (Status::QueueFull, 2),
            "a third waiter is refused, naming the two"
        );
        assert_eq!((s.applied().revision, row(&s, "n")), before, "a refused acquire writes nothing");
        let unbounded = as_lock(s.apply("rd2", acquire_req("n", "d", LockMode::Exclusive, true)));
        assert_eq!(status(&unbounded), Status::Queued, "an acquire without a bound (max_waiters 0) queues");

        // The holder leaves: b holds, c and d wait; e fits behind them only with a bound of 3.
        s.apply("", release_body(a.sequencer.expect("a holds")));
        session(&mut s, "e");
        assert_eq!(status(&as_lock(s.apply("re", bounded("e")))), Status::QueueFull);
        let roomier = match bounded("e") {
            Body::Acquire(a) => Body::Acquire(Acquire { max_waiters: 3, ..a }),
            _ => unreachable!(),
        };
        assert_eq!(status(&as_lock(s.apply("re2", roomier))), Status::Queued);
        let waiting: Vec<String> =
            row(&s, "n").expect("held").waiters.into_iter().map(|w| w.session).collect();
        assert_eq!(waiting, ["c", "d", "e"], "the queue kept its order");
    }

    /// An acquire carries its member's `--max-locks-per-session`: a session holding or awaiting
    /// that many is refused and nothing is written; what it holds or awaits already is still
    /// answered (a resend); once it lets one go, it may take another.
    #[test]
    fn a_session_at_its_lock_bound_is_refused_a_new_lock_and_writes_nothing() {
        let mut s = Store::new();
        session(&mut s, "a");
        session(&mut s, "b");
        let bounded = |name: &str, session: &str| match acquire_req(name, session, LockMode::Exclusive, true)
        {
            Body::Acquire(a) => Body::Acquire(Acquire { max_session_locks: 2, ..a }),
            _ => unreachable!("acquire_req makes an acquire"),
        };
        assert_eq!(status(&lock(&mut s, "rb", "w", "b", LockMode::Exclusive)), Status::Granted);
        let held = as_lock(s.apply("r1", bounded("n1", "a")));
        assert_eq!(status(&held), Status::Granted);
        assert_eq!(status(&as_lock(s.apply("r2", bounded("w", "a")))), Status::Queued, "a wait counts too");
        let before = (s.applied().revision, row(&s, "n3"), s.read(|t| count_of(t, "a")).expect("reads"));
        let third = as_lock(s.apply("r3", bounded("n3", "a")));
        assert_eq!(
            (status(&third), third.ahead),
            (Status::SessionFull, 2),
            "a third lock is refused, naming the two"
        );
        assert_eq!(
            (s.applied().revision, row(&s, "n3"), s.read(|t| count_of(t, "a")).expect("reads")),
            before,
            "a refused acquire writes nothing"
        );
        let again = as_lock(s.apply("r1b", bounded("n1", "a")));
        assert_eq!(status(&again), Status::Already, "a lock the session holds is answered at the bound");
        let unbounded = as_lock(s.apply("r3b", acquire_req("n3", "a", LockMode::Exclusive, true)));
        assert_eq!(status(&unbounded), Status::Granted, "an acquire without a bound (0) is taken");

        s.apply("", release_body(unbounded.sequencer.expect("a holds n3")));
        s.apply("", release_body(held.sequencer.expect("a holds n1")));
        assert_eq!(
            status(&as_lock(s.apply("r4", bounded("n4", "a")))),
            Status::Granted,
            "room again after releases"
        );
        assert_eq!(s.read(|t| count_of(t, "a")).expect("reads"), 2);
    }

    /// An acquire carries a bound on its lock's row: one that would take the row past it is
    /// refused, naming the row's bytes, and nothing is written; holders already in it are
    /// answered as before.
    #[test]
    fn a_request_that_would_take_a_lock_row_past_its_bound_is_refused_and_writes_nothing() {
        let mut s = Store::new();
        let bounded = |session: &str| match acquire_req("shared", session, LockMode::Shared, true) {
            Body::Acquire(a) => Body::Acquire(Acquire { max_row_bytes: 600, value: vec![b'v'; 100], ..a }),
            _ => unreachable!("acquire_req makes an acquire"),
        };
        let mut granted = 0;
        let refused = loop {
            let who = format!("s{granted}");
            session(&mut s, &who);
            let answer = as_lock(s.apply(&format!("r{granted}"), bounded(&who)));
            if status(&answer) != Status::Granted {
                break (who, answer);
            }
            granted += 1;
            assert!(granted < 10, "a 600-byte row holds fewer than ten holders of 100-byte values");
        };
        let (who, answer) = refused;
        assert!(granted >= 2, "a few holders fit, {granted} did");
        let bytes = row(&s, "shared").map(|r| super::row_bytes(&r) as u64);
        assert_eq!(
            (status(&answer), Some(answer.ahead)),
            (Status::RowFull, bytes),
            "refused, naming the row's bytes"
        );
        let before = (s.applied().revision, row(&s, "shared"), s.read(|t| count_of(t, &who)).expect("reads"));
        let again = as_lock(s.apply("again", bounded(&who)));
        assert_eq!(status(&again), Status::RowFull);
        assert_eq!(
            (s.applied().revision, row(&s, "shared"), s.read(|t| count_of(t, &who)).expect("reads")),
            before,
            "a refused acquire writes nothing"
        );
        assert_eq!(status(&as_lock(s.apply("r0b", bounded("s0")))), Status::Already, "a holder is answered");
    }

    /// The bound an acquire carries is its member's, not the client's: a retry under the same
    /// request id through a member with another `--max-lock-waiters` is the same request,
    /// answered as it was first applied, not a conflicting use of the id.
    #[test]
    fn an_acquire_retried_through_a_member_with_another_bound_is_the_same_request() {
        let mut s = Store::new();
        session(&mut s, "a");
        session(&mut s, "b");
        assert_eq!(status(&lock(&mut s, "ra", "n", "a", LockMode::Exclusive)), Status::Granted);
        let with = |bound: u32| match acquire_req("n", "b", LockMode::Exclusive, true) {
            Body::Acquire(a) => {
                Body::Acquire(Acquire { max_waiters: bound, max_session_locks: bound + 1, ..a })
            }
            _ => unreachable!("acquire_req makes an acquire"),
        };
        let first = as_lock(s.apply("rb", with(2)));
        assert_eq!(status(&first), Status::Queued);
        let retried = s.apply("rb", with(7));
        assert_eq!(
            retried.result,
            Some(outcome::Result::Lock(first)),
            "the retry is answered as the first was applied"
        );
        assert_eq!(row(&s, "n").expect("held").waiters.len(), 1, "and queues nothing more");
    }

    #[test]
    fn the_queue_is_fifo_and_a_shared_request_behind_a_waiting_exclusive_one_waits() {
        let mut s = Store::new();
        for id in ["a", "b", "c", "d"] {
            session(&mut s, id);
        }
        let a = lock(&mut s, "ra", "n", "a", LockMode::Shared);
        assert_eq!(status(&a), Status::Granted, "a shared request on a free lock is granted");
        let b = lock(&mut s, "rb", "n", "b", LockMode::Exclusive);
        assert_eq!(
            (status(&b), b.ahead),
            (Status::Queued, 0),
            "an exclusive request behind a shared holder waits"
        );
        let c = lock(&mut s, "rc", "n", "c", LockMode::Shared);
        assert_eq!(
            (status(&c), c.ahead),
            (Status::Queued, 1),
            "a shared request behind a waiting exclusive one waits, though the holder is shared"
        );
        let d = lock(&mut s, "rd", "n", "d", LockMode::Shared);
        assert_eq!(status(&d), Status::Queued);
        // a releases: b (the head) is granted alone; c and d still wait.
        let out = s.apply_full("", release_body(a.sequencer.expect("a granted request has a sequencer")));
        assert!(out.locks.contains(&LockChange::Settled { request_id: "rb".into() }), "rb's waiter is told");
        assert_eq!(holders(&s, "n").iter().map(|h| h.0.as_str()).collect::<Vec<_>>(), ["b"]);
        // b releases: c and d are granted together.
        let b_seq = s.read(|t| request_state(t, &lock_key(LockSpace::Locks, "n"), "rb")).expect("reads");
        let RequestState::Held(b_seq) = b_seq else { panic!("rb holds, got {b_seq:?}") };
        s.apply("", release_body(b_seq));
        let h = holders(&s, "n");
        assert_eq!(
            h.iter().map(|h| h.0.as_str()).collect::<Vec<_>>(),
            ["c", "d"],
            "both shared waiters hold"
        );
        assert!(h[0].1 < h[1].1, "each grant has its own generation");
        assert!(row(&s, "n").expect("held").waiters.is_empty());
    }

    #[test]
    fn shared_holders_share_and_exclusive_excludes() {
        let mut s = Store::new();
        for id in ["a", "b", "c"] {
            session(&mut s, id);
        }
        let try_once =
            |s: &mut Store, sess: &str, mode| as_lock(s.apply("", acquire_req("n", sess, mode, false)));
        assert_eq!(status(&try_once(&mut s, "a", LockMode::Shared)), Status::Granted);
        assert_eq!(status(&try_once(&mut s, "b", LockMode::Shared)), Status::Granted, "shared holders share");
        let rev = s.applied().revision;
        assert_eq!(
            status(&try_once(&mut s, "c", LockMode::Exclusive)),
            Status::Busy,
            "exclusive waits for shared"
        );
        assert_eq!(s.applied().revision, rev, "a busy try writes nothing");
        assert_eq!(row(&s, "n").expect("held").waiters.len(), 0, "a try-once request is not queued");
        assert_eq!(
            status(&try_once(&mut s, "a", LockMode::Shared)),
            Status::Already,
            "one session holds once"
        );
    }

    #[test]
    fn generations_strictly_increase_per_name_even_after_the_lock_was_forgotten() {
        let mut s = Store::new();
        session(&mut s, "a");
        let mut last = 0;
        for _ in 0..3 {
            let r = as_lock(s.apply("", acquire_req("n", "a", LockMode::Exclusive, false)));
            let seq = r.sequencer.expect("granted");
            assert!(seq.generation > last, "generation {} after {last}", seq.generation);
            last = seq.generation;
            s.apply("", release_body(seq));
            assert_eq!(row(&s, "n"), None, "a free lock keeps no row");
        }
        let stream = s.snapshot();
        let mut other = Store::new();
        restore_into(&mut other, &stream, s.index, 1).expect("restore succeeds");
        let r = as_lock(other.apply("", acquire_req("n", "a", LockMode::Exclusive, false)));
        assert!(r.sequencer.expect("granted").generation > last, "the counter survives a snapshot");
    }

    #[test]
    fn lock_delay_follows_an_expiry_only_and_ends_with_the_leaders_command() {
        let mut s = Store::new();
        for id in ["a", "b", "c"] {
            session(&mut s, id);
        }
        lock(&mut s, "ra", "n", "a", LockMode::Exclusive);
        lock(&mut s, "rb", "n", "b", LockMode::Exclusive);
        // A close is a normal release: b is granted at once.
        let out = s.apply_full("", Body::CloseSession(CloseSession { id: "a".into() }));
        assert!(out.locks.contains(&LockChange::Settled { request_id: "rb".into() }));
        assert_eq!(holders(&s, "n").iter().map(|h| h.0.as_str()).collect::<Vec<_>>(), ["b"]);
        lock(&mut s, "rc", "n", "c", LockMode::Exclusive);
        // b expires: abnormal; c waits out the delay.
        let out =
            s.apply_full("", Body::ExpireSession(ExpireSession { id: "b".into(), checkpoints: 0, term: 1 }));
        let since = out.outcome.revision;
        assert!(
            out.locks.contains(&LockChange::DelayStarted {
                key: lock_key(LockSpace::Locks, "n"),
                since_revision: since,
                delay_ms: 5_000
            }),
            "the expiry starts the delay: {:?}",
            out.locks
        );
        let r = row(&s, "n").expect("delayed");
        assert!(r.holders.is_empty() && r.waiters.len() == 1, "no grant during the delay");
        // An end naming another delay is a no-op; the right one grants c.
        let end =
            |since| Body::EndLockDelay(EndLockDelay { space: 0, name: "n".into(), since_revision: since });
        assert_eq!(status(&as_lock(s.apply("", end(since - 1)))), Status::NotHeld);
        assert!(holders(&s, "n").is_empty(), "a stale end does not end the delay");
        s.apply("", end(since));
        assert_eq!(holders(&s, "n").iter().map(|h| h.0.as_str()).collect::<Vec<_>>(), ["c"]);
        // A delay of 0 starts no delay.
        session(&mut s, "d");
        let zero = Body::Acquire(Acquire {
            lock_delay_ms: 0,
            ..match acquire_req("m", "d", LockMode::Exclusive, true) {
                Body::Acquire(a) => a,
                _ => unreachable!(),
            }
        });
        s.apply("rd", zero);
        expire(&mut s, "d");
        assert_eq!(row(&s, "m"), None, "no delay after a holder asked for none");
    }

    #[test]
    fn a_sessions_end_releases_its_locks_and_drops_its_waits_in_its_revision() {
        let mut s = Store::new();
        session(&mut s, "a");
        session(&mut s, "b");
        let a1 = lock(&mut s, "r1", "x", "a", LockMode::Exclusive).sequencer.expect("granted");
        lock(&mut s, "r2", "y", "b", LockMode::Exclusive);
        lock(&mut s, "r3", "y", "a", LockMode::Exclusive);
        assert_eq!(s.read(|t| count_of(t, "a")).expect("reads"), 2);
        let before = s.applied().revision;
        let out = s.apply_full("", Body::CloseSession(CloseSession { id: "a".into() }));
        assert_eq!(out.outcome.revision, before + 1, "one revision");
        assert_eq!(row(&s, "x"), None, "x is released");
        assert!(row(&s, "y").expect("b holds y").waiters.is_empty(), "a's wait on y is dropped");
        assert!(out.locks.contains(&LockChange::Settled { request_id: "r3".into() }), "r3's waiter is told");
        assert_eq!(s.read(|t| count_of(t, "a")).expect("reads"), 0);
        let verdict = s.read(|t| check(t, &a1)).expect("reads");
        assert!(verdict.is_err(), "a's sequencer is no longer valid");
    }

    #[test]
    fn cancelling_a_wait_leaves_the_queue_and_a_raced_grant_is_answered_or_released() {
        let mut s = Store::new();
        for id in ["a", "b", "c"] {
            session(&mut s, id);
        }
        let a = lock(&mut s, "ra", "n", "a", LockMode::Exclusive).sequencer.expect("granted");
        lock(&mut s, "rb", "n", "b", LockMode::Exclusive);
        lock(&mut s, "rc", "n", "c", LockMode::Exclusive);
        let cancel = |id: &str, release_granted| {
            Body::CancelWait(CancelWait {
                space: 0,
                name: "n".into(),
                request_id: id.into(),
                release_granted,
            })
        };
        assert_eq!(status(&as_lock(s.apply("", cancel("rb", false)))), Status::Done);
        s.apply("", release_body(a));
        assert_eq!(holders(&s, "n")[0].0, "c", "the cancelled request was skipped");
        let r = as_lock(s.apply("", cancel("rc", false)));
        assert_eq!(status(&r), Status::Granted, "a grant that raced the cancel is answered");
        assert_eq!(status(&as_lock(s.apply("", cancel("rc", true)))), Status::Done);
        assert_eq!(row(&s, "n"), None, "… or released when the requester went away");
    }

    /// A head that stops waiting lets in, in the same revision, the requests behind it that
    /// can join the holders: a waiting exclusive request withdrawn from behind a shared holder
    /// leaves the shared ones queued after it granted at once.
    #[test]
    fn cancelling_the_head_of_the_queue_lets_in_the_requests_behind_it() {
        let mut s = Store::new();
        for id in ["a", "b", "c", "d"] {
            session(&mut s, id);
        }
        lock(&mut s, "ra", "n", "a", LockMode::Shared);
        lock(&mut s, "rb", "n", "b", LockMode::Exclusive);
        lock(&mut s, "rc", "n", "c", LockMode::Shared);
        lock(&mut s, "rd", "n", "d", LockMode::Shared);
        let cancel =
            CancelWait { space: 0, name: "n".into(), request_id: "rb".into(), release_granted: false };
        let out = s.apply_full("", Body::CancelWait(cancel));
        assert_eq!(status(&as_lock(out.outcome.clone())), Status::Done);
        assert_eq!(
            holders(&s, "n").iter().map(|h| h.0.as_str()).collect::<Vec<_>>(),
            ["a", "c", "d"],
            "the shared requests behind the withdrawn head join the shared holder"
        );
        for id in ["rc", "rd"] {
            assert!(
                out.locks.contains(&LockChange::Settled { request_id: id.into() }),
                "{id}'s waiter is told by the cancel's own revision"
            );
        }
        let row = row(&s, "n").expect("held");
        assert!(row.waiters.is_empty());
        let granted: Vec<i64> = row.holders.iter().skip(1).map(|h| h.revision).collect();
        assert_eq!(granted, [out.outcome.revision; 2], "granted in the cancel's revision");
    }

    #[test]
    fn bad_requests_are_refused_and_write_nothing() {
        let mut s = Store::new();
        session(&mut s, "a");
        let rev = s.applied().revision;
        let o = s.apply("x", acquire_req("n", "nobody", LockMode::Exclusive, true));
        assert!(matches!(o.result, Some(outcome::Result::NotFound(_))), "unknown session: {o:?}");
        for (body, says) in [
            (acquire_req("", "a", LockMode::Exclusive, true), "name"),
            (acquire_req("n", "a", LockMode::Exclusive, true), "request id"),
            (
                Body::Acquire(Acquire {
                    lock_delay_ms: 60_001,
                    name: "n".into(),
                    session: "a".into(),
                    ..Default::default()
                }),
                "lock_delay",
            ),
        ] {
            let id = if says == "request id" { String::new() } else { format!("y-{says}") };
            match s.apply(&id, body).result {
                Some(outcome::Result::Rejected(why)) => {
                    assert!(why.contains(says), "{why} should name {says}")
                }
                r => panic!("expected a rejection naming {says}, got {r:?}"),
            }
        }
        assert_eq!(s.applied().revision, rev, "nothing written");
        let stale = Sequencer { name: "n".into(), generation: 7, session: "a".into(), ..Default::default() };
        assert_eq!(status(&as_lock(s.apply("", release_body(stale)))), Status::NotHeld);
    }

    #[test]
    fn a_session_end_records_each_lock_row_as_it_ends_up_past_what_an_apply_keeps_in_memory() {
        // Three rows of 600 KB each: the first is kept for its history row, the others (past
        // the MiB an apply keeps) are read back from the table; all three must read as stored.
        let mut s = Store::new();
        session(&mut s, "big");
        session(&mut s, "small");
        for name in ["a", "b", "c"] {
            let Body::Acquire(mut big) = acquire_req(name, "big", LockMode::Shared, true) else {
                unreachable!()
            };
            big.value = vec![b'v'; 600_000];
            assert_eq!(
                status(&as_lock(s.apply(&format!("big-{name}"), Body::Acquire(big)))),
                Status::Granted
            );
            let waits = lock(&mut s, &format!("small-{name}"), name, "small", LockMode::Exclusive);
            assert_eq!(status(&waits), Status::Queued);
        }
        s.apply("", Body::CloseSession(CloseSession { id: "small".into() }));
        let closed = s.applied().revision;
        let (changes, _) =
            s.read(|t| crate::fsm::history::changes(t, closed, closed, usize::MAX)).expect("reads");
        let recorded: Vec<(Vec<u8>, Vec<u8>)> = changes
            .into_iter()
            .filter(|c| c.space == crate::fsm::history::Space::Locks)
            .map(|c| (c.kv.key, c.kv.value))
            .collect();
        let stored: Vec<(Vec<u8>, Vec<u8>)> = ["a", "b", "c"]
            .iter()
            .map(|name| {
                let row = row(&s, name).expect("the big session still holds it");
                (name.as_bytes().to_vec(), row.encode_to_vec())
            })
            .collect();
        assert_eq!(recorded.len(), 3, "one history row per lock the session's end rewrote");
        assert!(recorded == stored, "each history row is its lock's row as stored after the session's end");
    }
}
