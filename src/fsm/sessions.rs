//! The sessions domain: Chubby's sessions (etcd's leases) as replicated state. What is
//! replicated is each session's TTL and the lease it had left at its last checkpoint; the
//! clock that counts leases down is each member's own (`core::leases`), because time is not
//! deterministic and the log carries no timestamps.
//!
//! Invariants:
//! - `sessions` holds exactly the live sessions: created and neither closed nor expired. A row's
//!   `remaining_ms <= ttl_ms`, `ttl_ms >= 1`, `created_revision <= ` the store revision.
//! - `session_keys` names exactly the keys of `kv` bound to a session (`StoredValue.session`),
//!   each under its session, and a session's `keys` is how many it names. A key is bound to at
//!   most one session, and only to a live one.
//! - A session's end (close, or an expiry that applies) deletes it and every key bound to it,
//!   in one revision, with one delete event per key.
//! - An expiry applies only if no checkpoint renewed the session since the leader decided it
//!   (its `checkpoints` count is the one the expiry names); otherwise it is a no-op, so that a
//!   renewal racing an expiry through the log is never lost.
//! - Checkpoints and expiries apply only in an entry of the term of the leader that proposed
//!   them (a proposal handed on to the next leader is a no-op): a checkpoint's clock reading
//!   and an expiry's verdict are that leader's alone.
//! - Creating a session and checkpointing leases write rows but raise no revision: nothing a
//!   reader of keys can see changes. Closing or expiring raises one.

use super::tables::Tables;
use latch_proto::internal::{
    outcome, CheckpointSessions, CloseSession, CreateSession, ExpireSession, NotFound, SessionResult,
    SessionRow,
};
use prost::Message;
use redb::{ReadTransaction, ReadableTable};

use super::apply::{Apply, SessionChange};
use super::history::Space;
use super::{kv, locks, open_read, registry, Applied, Domain, FsmError, TableDef};
use crate::storage::schema::{SESSIONS, SESSION_KEYS};

/// Most bytes of a session id.
pub const MAX_SESSION_ID_BYTES: usize = 64;
/// Most bytes of a session's name.
pub const MAX_SESSION_NAME_BYTES: usize = 256;

pub(crate) struct SessionsDomain;

impl Domain for SessionsDomain {
    fn name(&self) -> &'static str {
        "sessions"
    }

    fn tables(&self) -> &'static [TableDef] {
        &[SESSIONS, SESSION_KEYS]
    }

    fn check_row(&self, table: &str, key: &[u8], value: &[u8], at: &Applied) -> Result<(), FsmError> {
        let corrupt = |why: String| FsmError::Corrupt(format!("table {table}, key {:?}: {why}", show(key)));
        match table {
            "sessions" => {
                let row = decode_row(key, value)?;
                if check_id(key).is_err() || row.created_revision > at.revision {
                    return Err(corrupt(format!(
                        "impossible session: created at revision {}, store at {}",
                        row.created_revision, at.revision
                    )));
                }
            }
            _ => {
                if split_key(key).is_none() || !value.is_empty() {
                    return Err(corrupt("not a session id, a 0 byte and a key, with no value".into()));
                }
            }
        }
        Ok(())
    }
}

/// Whether `id` can name a session: 1 to [`MAX_SESSION_ID_BYTES`] bytes of UTF-8 without a 0
/// byte (the separator of `session_keys`).
pub fn check_id(id: &[u8]) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_SESSION_ID_BYTES || id.contains(&0) || std::str::from_utf8(id).is_err()
    {
        return Err(format!(
            "session id must be 1 to {MAX_SESSION_ID_BYTES} bytes of UTF-8 without a 0 byte"
        ));
    }
    Ok(())
}

/// `ids_checked` (commands of version 3 on): refuse an existing id asked for with another name
/// or TTL.
pub(crate) fn create(
    ap: &mut Apply,
    req: CreateSession,
    ids_checked: bool,
) -> Result<outcome::Result, FsmError> {
    if let Err(why) = check_id(req.id.as_bytes()) {
        return Ok(outcome::Result::Rejected(format!("create_session: {why}")));
    }
    if req.ttl_ms == 0 || req.name.len() > MAX_SESSION_NAME_BYTES {
        return Ok(outcome::Result::Rejected(format!(
            "create_session: ttl must be positive and the name at most {MAX_SESSION_NAME_BYTES} bytes"
        )));
    }
    let mut sessions = ap.tables.open(SESSIONS)?;
    if let Some(row) = get_in(&*sessions, &req.id)? {
        // Ids are drawn at random or derived from the request id: an existing one is a retry
        // whose first answer was forgotten, and gets the session, unchanged; unless it asks for
        // another session (a client reusing a request id).
        if ids_checked && (row.name != req.name || row.ttl_ms != req.ttl_ms) {
            return Ok(outcome::Result::Rejected(format!(
                "create_session: session {} was created for the same request id with another name or \
                 ttl; a new request needs a new id",
                req.id
            )));
        }
        return Ok(outcome::Result::Session(SessionResult {
            id: req.id,
            ttl_ms: row.ttl_ms,
            ..Default::default()
        }));
    }
    let row = SessionRow {
        name: req.name,
        ttl_ms: req.ttl_ms,
        remaining_ms: req.ttl_ms,
        checkpoints: 0,
        created_revision: ap.write_revision()?,
        keys: 0,
        checkpoint_term: 0,
        leader_ms: 0,
    };
    sessions.insert(req.id.as_bytes(), row.encode_to_vec().as_slice())?;
    drop(sessions);
    ap.state_changed(Space::Sessions, req.id.as_bytes(), Some(row.encode_to_vec()))?;
    ap.session_changed(SessionChange::Started { id: req.id.clone(), ttl_ms: req.ttl_ms });
    Ok(outcome::Result::Session(SessionResult {
        id: req.id,
        ttl_ms: req.ttl_ms,
        ended: false,
        keys_deleted: 0,
    }))
}

pub(crate) fn close(ap: &mut Apply, req: CloseSession) -> Result<outcome::Result, FsmError> {
    match get(ap.tables, &req.id)? {
        None => Ok(not_found(req.id)),
        Some(row) => end(ap, req.id, row, false),
    }
}

/// Ends a session the leader of `term` found out of lease, unless a checkpoint renewed it since
/// or the expiry reached the log in another leader's term (see the module doc).
pub(crate) fn expire(ap: &mut Apply, req: ExpireSession, term: u64) -> Result<outcome::Result, FsmError> {
    if req.term != term {
        return Ok(outcome::Result::Session(SessionResult { id: req.id, ..Default::default() }));
    }
    match get(ap.tables, &req.id)? {
        None => Ok(not_found(req.id)),
        // Renewed since the leader decided: the renewal wins.
        Some(row) if row.checkpoints != req.checkpoints => Ok(outcome::Result::Session(SessionResult {
            id: req.id,
            ttl_ms: row.ttl_ms,
            ended: false,
            keys_deleted: 0,
        })),
        Some(row) => end(ap, req.id, row, true),
    }
}

/// Records the leases the leader of `term` measured. A session that ended meanwhile is skipped;
/// a lease longer than the TTL is cut to it. A checkpoint that reached the log in another
/// leader's term is a no-op: its clock reading is not that leader's.
pub(crate) fn checkpoint(
    ap: &mut Apply,
    req: CheckpointSessions,
    term: u64,
) -> Result<outcome::Result, FsmError> {
    if req.term != term {
        return Ok(outcome::Result::Session(SessionResult::default()));
    }
    let mut sessions = ap.tables.open(SESSIONS)?;
    ap.session_changed(SessionChange::Clock { leader_ms: req.leader_ms });
    for lease in req.leases {
        let Some(mut row) = get_in(&*sessions, &lease.id)? else { continue };
        let remaining_ms = lease.remaining_ms.min(row.ttl_ms);
        // Within one term the readings are of one clock: a checkpoint read earlier but applied
        // later (handed to raft again) never moves the lease back.
        let earlier = row.checkpoint_term == term
            && req.leader_ms.saturating_add(remaining_ms) < row.leader_ms.saturating_add(row.remaining_ms);
        if !earlier {
            row.remaining_ms = remaining_ms;
            row.checkpoint_term = term;
            row.leader_ms = req.leader_ms;
        }
        row.checkpoints += 1;
        sessions.insert(lease.id.as_bytes(), row.encode_to_vec().as_slice())?;
        ap.session_changed(SessionChange::Renewed {
            id: lease.id,
            ttl_ms: row.ttl_ms,
            remaining_ms: row.remaining_ms,
            checkpoints: row.checkpoints,
            leader_ms: row.leader_ms,
        });
    }
    Ok(outcome::Result::Session(SessionResult::default()))
}

/// Ends a session: deletes it and every key bound to it, and takes it out of every lock it
/// holds or awaits, in one revision. `expired`: its locks enter their lock-delay.
fn end(ap: &mut Apply, id: String, row: SessionRow, expired: bool) -> Result<outcome::Result, FsmError> {
    let keys = owned_keys(ap.tables, &id)?;
    if keys.len() as u64 != row.keys {
        return Err(FsmError::Corrupt(format!(
            "table sessions, key {id:?}: counts {} keys, table session_keys names {}",
            row.keys,
            keys.len()
        )));
    }
    ap.write_revision()?;
    {
        let mut index = ap.tables.open(SESSION_KEYS)?;
        for key in &keys {
            index.remove(index_key(&id, key).as_slice())?;
        }
    }
    kv::delete_owned(ap, &keys)?;
    locks::session_ended(ap, &id, expired)?;
    registry::session_ended(ap, &id)?;
    ap.tables.open(SESSIONS)?.remove(id.as_bytes())?;
    ap.state_changed(Space::Sessions, id.as_bytes(), None)?;
    ap.session_changed(SessionChange::Ended { id: id.clone() });
    Ok(outcome::Result::Session(SessionResult {
        id,
        ttl_ms: row.ttl_ms,
        ended: true,
        keys_deleted: keys.len() as u64,
    }))
}

/// Moves `key` from session `old` to session `new` ("" = none), keeping `session_keys` and
/// the counts exact. The caller has checked that `new` exists.
pub(crate) fn rebind(tables: &Tables, key: &[u8], old: &str, new: &str) -> Result<(), FsmError> {
    if old == new {
        return Ok(());
    }
    let mut sessions = tables.open(SESSIONS)?;
    let mut index = tables.open(SESSION_KEYS)?;
    for (id, added) in [(old, false), (new, true)] {
        if id.is_empty() {
            continue;
        }
        let Some(mut row) = get_in(&*sessions, id)? else {
            return Err(FsmError::Corrupt(format!(
                "table kv, key {:?}: bound to session {id:?}, which does not exist",
                show(key)
            )));
        };
        if added {
            index.insert(index_key(id, key).as_slice(), [].as_slice())?;
            row.keys += 1;
        } else {
            index.remove(index_key(id, key).as_slice())?;
            row.keys = row.keys.saturating_sub(1);
        }
        sessions.insert(id.as_bytes(), row.encode_to_vec().as_slice())?;
    }
    Ok(())
}

/// Whether session `id` exists, in a write transaction.
pub(crate) fn exists(tables: &Tables, id: &str) -> Result<bool, FsmError> {
    Ok(tables.open(SESSIONS)?.get(id.as_bytes())?.is_some())
}

pub(crate) fn not_found(id: String) -> outcome::Result {
    outcome::Result::NotFound(NotFound { kind: "session".into(), name: id })
}

/// One session, as stored.
pub fn read(txn: &ReadTransaction, id: &str) -> Result<Option<SessionRow>, FsmError> {
    match open_read(txn, SESSIONS)? {
        Some(table) => get_in(&table, id),
        None => Ok(None),
    }
}

/// Every (session, key) pair of the `session_keys` index, in order: the keys bound to each
/// session, as the session's end will delete them.
pub fn bound_keys(txn: &ReadTransaction) -> Result<Vec<(String, Vec<u8>)>, FsmError> {
    let Some(index) = open_read(txn, SESSION_KEYS)? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for row in index.iter()? {
        let (k, _) = row?;
        let Some((id, key)) = split_key(k.value()) else {
            return Err(FsmError::Corrupt(format!(
                "table session_keys, key {:?}: not a session id and a key",
                show(k.value())
            )));
        };
        out.push((String::from_utf8_lossy(id).into_owned(), key.to_vec()));
    }
    Ok(out)
}

/// Gives every session a whole TTL counted from each member's next start (a restore as a new
/// cluster, `fsm::snapshot::restore_as_new_cluster`): its last checkpoint's term and leader
/// clock reading are another cluster's, whose terms and clocks the new one's would be read
/// against.
pub(crate) fn restart_leases(txn: &redb::WriteTransaction) -> Result<(), FsmError> {
    let mut table = txn.open_table(SESSIONS)?;
    let mut rows = Vec::new();
    for row in table.iter()? {
        let (id, bytes) = row?;
        rows.push((id.value().to_vec(), decode_row(id.value(), bytes.value())?));
    }
    for (id, row) in rows {
        let row = SessionRow { remaining_ms: row.ttl_ms, checkpoint_term: 0, leader_ms: 0, ..row };
        table.insert(id.as_slice(), row.encode_to_vec().as_slice())?;
    }
    Ok(())
}

/// Every session, in id order.
pub fn all(txn: &ReadTransaction) -> Result<Vec<(String, SessionRow)>, FsmError> {
    Ok(page(txn, "", usize::MAX, |_, _| true)?.0)
}

/// The sessions whose ids sort after `start_after`, in id order: at most `max`, and no more
/// once `fits` (given the id and row of the next one) says no, though always one; and whether
/// more follow.
pub fn page(
    txn: &ReadTransaction,
    start_after: &str,
    max: usize,
    mut fits: impl FnMut(&str, &SessionRow) -> bool,
) -> Result<(Vec<(String, SessionRow)>, bool), FsmError> {
    let Some(table) = open_read(txn, SESSIONS)? else { return Ok((Vec::new(), false)) };
    let mut out = Vec::new();
    let after = (std::ops::Bound::Excluded(start_after.as_bytes()), std::ops::Bound::Unbounded);
    for row in table.range::<&[u8]>(after)? {
        let (k, v) = row?;
        let id = String::from_utf8(k.value().to_vec()).map_err(|_| {
            FsmError::Corrupt(format!("table sessions, key {:?}: not UTF-8", show(k.value())))
        })?;
        let row = decode_row(k.value(), v.value())?;
        if out.len() >= max || (!out.is_empty() && !fits(&id, &row)) {
            return Ok((out, true));
        }
        out.push((id, row));
    }
    Ok((out, false))
}

fn get(tables: &Tables, id: &str) -> Result<Option<SessionRow>, FsmError> {
    get_in(&*tables.open(SESSIONS)?, id)
}

fn get_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    id: &str,
) -> Result<Option<SessionRow>, FsmError> {
    match table.get(id.as_bytes())? {
        Some(v) => Ok(Some(decode_row(id.as_bytes(), v.value())?)),
        None => Ok(None),
    }
}

/// The keys bound to session `id`, in key order.
fn owned_keys(tables: &Tables, id: &str) -> Result<Vec<Vec<u8>>, FsmError> {
    let index = tables.open(SESSION_KEYS)?;
    let start = index_key(id, b"");
    let mut end = id.as_bytes().to_vec();
    end.push(1);
    let mut keys = Vec::new();
    for row in index.range::<&[u8]>(start.as_slice()..end.as_slice())? {
        let (k, _) = row?;
        keys.push(k.value()[start.len()..].to_vec());
    }
    Ok(keys)
}

fn index_key(id: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 1 + key.len());
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

/// A `session_keys` key as (session id, key).
fn split_key(k: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = k.iter().position(|b| *b == 0)?;
    let (id, key) = (&k[..at], &k[at + 1..]);
    (check_id(id).is_ok() && !key.is_empty()).then_some((id, key))
}

fn decode_row(id: &[u8], bytes: &[u8]) -> Result<SessionRow, FsmError> {
    let row = SessionRow::decode(bytes).map_err(|e| {
        FsmError::Corrupt(format!("table sessions, key {:?}: undecodable row: {e}", show(id)))
    })?;
    if row.ttl_ms == 0 || row.remaining_ms > row.ttl_ms {
        return Err(FsmError::Corrupt(format!(
            "table sessions, key {:?}: impossible lease: {} ms left of a TTL of {} ms",
            show(id),
            row.remaining_ms,
            row.ttl_ms
        )));
    }
    Ok(row)
}

fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

#[cfg(test)]
mod tests {
    use super::super::history::Space;
    use super::super::testing::*;
    use super::super::EventKind;
    use super::*;
    use latch_proto::internal::command::Body;
    use latch_proto::internal::{compare, Put, SessionLease};

    fn create(s: &mut Store, id: &str, ttl_ms: u64) -> Outcome {
        s.apply("", Body::CreateSession(CreateSession { id: id.into(), name: format!("{id}'s"), ttl_ms }))
    }

    fn bound_put(key: &str, session: &str) -> Body {
        Body::Put(Put { session: session.into(), ..put_req(key, "v") })
    }

    fn row(s: &Store, id: &str) -> Option<SessionRow> {
        s.read(|t| read(t, id)).expect("the sessions table reads")
    }

    fn session_of(s: &Store, key: &str) -> Option<String> {
        s.get(key).map(|kv| kv.session)
    }

    fn as_session(o: Outcome) -> SessionResult {
        match o.result {
            Some(outcome::Result::Session(r)) => r,
            other => panic!("expected a session outcome, got {other:?}"),
        }
    }

    fn as_not_found(o: Outcome) -> NotFound {
        match o.result {
            Some(outcome::Result::NotFound(n)) => n,
            other => panic!("expected not found, got {other:?}"),
        }
    }

    use latch_proto::internal::Outcome;

    #[test]
    fn a_create_for_an_existing_id_is_a_retry_only_if_it_asks_for_the_same_session() {
        let mut s = Store::new();
        create(&mut s, "s1", 10_000);
        let retry = create(&mut s, "s1", 10_000);
        assert!(
            matches!(&retry.result, Some(outcome::Result::Session(r)) if r.id == "s1"),
            "the same request again gets the session: {retry:?}"
        );
        let before = row(&s, "s1");
        let other = s.apply(
            "",
            Body::CreateSession(CreateSession { id: "s1".into(), name: "x".into(), ttl_ms: 10_000 }),
        );
        assert!(
            matches!(&other.result, Some(outcome::Result::Rejected(why)) if why.contains("same request id")),
            "another name: a reused request id, refused: {other:?}"
        );
        let longer = create(&mut s, "s1", 20_000);
        assert!(matches!(longer.result, Some(outcome::Result::Rejected(_))), "another ttl too: {longer:?}");
        assert_eq!(row(&s, "s1"), before, "the session is as it was");
        // A command of version 2 (an older build's log, replayed) by that version's rules.
        let body = Body::CreateSession(CreateSession { id: "s1".into(), name: "y".into(), ttl_ms: 1 });
        let old = latch_proto::internal::Command { version: 2, request_id: String::new(), body: Some(body) };
        let applied = s.apply_data(&prost::Message::encode_to_vec(&old)).expect("an outcome");
        assert!(
            matches!(&applied.outcome.result, Some(outcome::Result::Session(r)) if r.id == "s1"),
            "version 2 answers the session, as it did: {applied:?}"
        );
    }

    #[test]
    fn a_sessions_end_deletes_its_ephemeral_keys_and_only_them_in_one_revision() {
        let mut s = Store::new();
        create(&mut s, "s1", 10_000);
        create(&mut s, "s2", 10_000);
        s.apply("", bound_put("a", "s1"));
        s.apply("", bound_put("b", "s1"));
        s.apply("", bound_put("c", "s2"));
        s.apply("", put("plain", "v"));
        assert_eq!(row(&s, "s1").map(|r| r.keys), Some(2), "s1 owns a and b");
        let index = |s: &Store| s.read(bound_keys).expect("the index reads");
        let pair = |id: &str, key: &str| (id.to_string(), key.as_bytes().to_vec());
        assert_eq!(
            index(&s),
            vec![pair("s1", "a"), pair("s1", "b"), pair("s2", "c")],
            "the index names them"
        );
        let before = s.applied().revision;
        let closed = s.apply_full("", Body::CloseSession(CloseSession { id: "s1".into() }));
        assert_eq!(closed.outcome.revision, before + 1, "the end of a session is one revision");
        let r = as_session(closed.outcome);
        assert!(r.ended && r.keys_deleted == 2, "closed with its 2 keys: {r:?}");
        let deleted: Vec<_> =
            closed.events.iter().map(|e| (e.space, e.kind, e.kv.key.clone(), e.kv.mod_revision)).collect();
        assert_eq!(
            deleted,
            vec![
                (Space::Kv, EventKind::Delete, b"a".to_vec(), before + 1),
                (Space::Kv, EventKind::Delete, b"b".to_vec(), before + 1),
                (Space::Sessions, EventKind::Delete, b"s1".to_vec(), before + 1)
            ],
            "one delete event per owned key, then the session's own end, at its end revision"
        );
        assert_eq!(closed.sessions, vec![SessionChange::Ended { id: "s1".into() }]);
        assert_eq!((s.get("a"), s.get("b")), (None, None), "s1's keys are gone");
        assert_eq!(session_of(&s, "c").as_deref(), Some("s2"), "s2's key stays");
        assert!(s.get("plain").is_some(), "a key without a session stays");
        assert_eq!(row(&s, "s1"), None, "the session is gone");
        assert_eq!(index(&s), vec![pair("s2", "c")], "and its keys are out of the index");
        let again = s.apply("", Body::CloseSession(CloseSession { id: "s1".into() }));
        assert_eq!(as_not_found(again).name, "s1", "closing it again names the missing session");
    }

    #[test]
    fn a_put_bound_to_a_missing_session_is_not_found_and_writes_nothing() {
        let mut s = Store::new();
        s.apply("", put("k", "old"));
        let hash = s.hash();
        let missing = as_not_found(s.apply("", bound_put("k", "nobody")));
        assert_eq!((missing.kind.as_str(), missing.name.as_str()), ("session", "nobody"));
        let in_txn = txn(
            vec![],
            vec![
                op_put("x", "1"),
                Op { op: Some(op::Op::Put(Put { session: "ghost".into(), ..put_req("k", "v") })) },
            ],
            vec![],
        );
        assert_eq!(
            as_not_found(s.apply("", in_txn)).name,
            "ghost",
            "a txn's put is checked before anything runs"
        );
        assert_eq!(s.hash(), hash, "nothing was written");
        let bad = s.apply("", bound_put("k", "has\0nul"));
        assert!(as_rejected(bad).contains("session id"), "an impossible id is rejected by name");
    }

    use latch_proto::internal::{op, Op};

    #[test]
    fn rebinding_moves_a_key_between_sessions_and_a_plain_put_or_delete_unbinds_it() {
        let mut s = Store::new();
        create(&mut s, "s1", 10_000);
        create(&mut s, "s2", 10_000);
        s.apply("", bound_put("k", "s1"));
        s.apply("", bound_put("k", "s2"));
        assert_eq!(row(&s, "s1").map(|r| r.keys), Some(0), "k moved away from s1");
        assert_eq!(row(&s, "s2").map(|r| r.keys), Some(1), "… to s2");
        s.apply("", put("k", "plain"));
        assert_eq!(session_of(&s, "k").as_deref(), Some(""), "a put without a session unbinds");
        assert_eq!(row(&s, "s2").map(|r| r.keys), Some(0));
        s.apply("", bound_put("d", "s1"));
        s.apply("", del("d", b""));
        assert_eq!(row(&s, "s1").map(|r| r.keys), Some(0), "a deleted key is no longer owned");
        let closed = as_session(s.apply("", Body::CloseSession(CloseSession { id: "s2".into() })));
        assert_eq!(closed.keys_deleted, 0, "s2 owns nothing any more");
        assert_eq!(s.get("k").map(|kv| kv.value), Some(b"plain".to_vec()), "the unbound key outlives s2");
    }

    #[test]
    fn an_expiry_applies_only_if_no_checkpoint_renewed_the_session_since() {
        let mut s = Store::new();
        create(&mut s, "s", 10_000);
        s.apply("", bound_put("k", "s"));
        let cp = |remaining_ms| {
            Body::CheckpointSessions(CheckpointSessions {
                leases: vec![
                    SessionLease { id: "s".into(), remaining_ms },
                    SessionLease { id: "gone".into(), remaining_ms: 5 },
                ],
                leader_ms: 40,
                term: 1,
            })
        };
        let rev = s.applied().revision;
        let renewed = s.apply_full("", cp(7_000));
        assert_eq!(renewed.outcome.revision, rev, "a checkpoint raises no revision");
        assert_eq!(
            renewed.sessions,
            vec![
                SessionChange::Clock { leader_ms: 40 },
                SessionChange::Renewed {
                    id: "s".into(),
                    ttl_ms: 10_000,
                    remaining_ms: 7_000,
                    checkpoints: 1,
                    leader_ms: 40
                }
            ],
            "only existing sessions are renewed"
        );
        s.apply("", cp(99_000));
        assert_eq!(
            row(&s, "s").map(|r| (r.remaining_ms, r.checkpoints)),
            Some((10_000, 2)),
            "cut to the TTL"
        );
        let stale = as_session(
            s.apply("", Body::ExpireSession(ExpireSession { id: "s".into(), checkpoints: 1, term: 1 })),
        );
        assert!(!stale.ended, "an expiry decided before the last checkpoint is a no-op");
        assert!(s.get("k").is_some());
        let expired =
            s.apply_full("", Body::ExpireSession(ExpireSession { id: "s".into(), checkpoints: 2, term: 1 }));
        assert_eq!(expired.outcome.revision, rev + 1);
        assert!(as_session(expired.outcome).ended, "an expiry at the current checkpoint ends it");
        assert_eq!(s.get("k"), None, "with its keys");
    }

    #[test]
    fn a_checkpoint_or_expiry_in_an_entry_of_another_term_is_a_no_op() {
        let mut s = Store::new(); // applies every entry in term 1
        create(&mut s, "s", 10_000);
        let hash = s.hash();
        let cp = CheckpointSessions {
            leases: vec![SessionLease { id: "s".into(), remaining_ms: 5 }],
            leader_ms: 7,
            term: 2,
        };
        let handed_on = s.apply_full("", Body::CheckpointSessions(cp));
        assert!(handed_on.sessions.is_empty(), "another leader's clock reading is not applied");
        let expiry = Body::ExpireSession(ExpireSession { id: "s".into(), checkpoints: 0, term: 2 });
        assert!(!as_session(s.apply("", expiry)).ended, "another leader's verdict is not applied");
        assert_eq!(s.hash(), hash, "neither changed anything");
    }

    #[test]
    fn creating_a_session_checks_its_id_ttl_and_name_and_never_replaces_one() {
        let mut s = Store::new();
        let created = s.apply_full(
            "",
            Body::CreateSession(CreateSession { id: "s".into(), name: "n".into(), ttl_ms: 5 }),
        );
        assert_eq!(created.sessions, vec![SessionChange::Started { id: "s".into(), ttl_ms: 5 }]);
        assert_eq!(created.outcome.revision, 1, "a session's creation is a revision (sessions are watched)");
        assert_eq!(row(&s, "s").map(|r| r.created_revision), Some(1), "… the one it records");
        let same = Body::CreateSession(CreateSession { id: "s".into(), name: "n".into(), ttl_ms: 5 });
        let again = as_session(s.apply("", same));
        assert_eq!(
            (again.id.as_str(), again.ttl_ms),
            ("s", 5),
            "an existing id is answered with the session"
        );
        assert!(
            as_rejected(create(&mut s, "s", 10)).contains("same request id"),
            "unless it asks for another"
        );
        assert_eq!(row(&s, "s").map(|r| r.ttl_ms), Some(5), "… and the first session stays");
        assert_eq!(s.applied().revision, 1, "… and the retry writes nothing");
        assert!(as_rejected(create(&mut s, "", 10)).contains("session id"));
        assert!(as_rejected(create(&mut s, "z", 0)).contains("ttl"));
        let long = Body::CreateSession(CreateSession { id: "y".into(), name: "x".repeat(300), ttl_ms: 1 });
        assert!(as_rejected(s.apply("", long)).contains("name"));
    }

    #[test]
    fn sequential_puts_create_unique_increasing_keys_per_prefix() {
        let mut s = Store::new();
        let seq = |prefix: &str| Body::Put(Put { sequential: true, ..put_req(prefix, "v") });
        let key = |o: Outcome| String::from_utf8(as_put(o).key).expect("utf-8");
        assert_eq!(key(s.apply("", seq("q/"))), "q/00000000000000000000");
        assert_eq!(key(s.apply("", seq("q/"))), "q/00000000000000000001");
        assert_eq!(key(s.apply("", seq("r/"))), "r/00000000000000000000", "each prefix counts alone");
        s.apply("", put("q/00000000000000000002", "by hand"));
        assert_eq!(key(s.apply("", seq("q/"))), "q/00000000000000000003", "a key written by hand is skipped");
        s.apply("", del("q/", b"q0"));
        assert_eq!(
            key(s.apply("", seq("q/"))),
            "q/00000000000000000004",
            "deleting the keys never reuses a number"
        );
        assert_eq!(key(s.apply("", put("plain", "v"))), "plain", "a plain put answers its own key");
    }

    #[test]
    fn a_txn_compares_a_keys_session() {
        let mut s = Store::new();
        create(&mut s, "s", 10_000);
        s.apply("", bound_put("k", "s"));
        let holds = |s: &mut Store, key: &str, session: &str| {
            let c = cmp(key, compare::Result::Equal, compare::Target::Session(session.into()));
            as_txn(s.apply("", txn(vec![c], vec![], vec![]))).succeeded
        };
        assert!(holds(&mut s, "k", "s"), "k is bound to s");
        assert!(!holds(&mut s, "k", "other"));
        assert!(holds(&mut s, "missing", ""), "a missing key has no session");
    }

    #[test]
    fn a_snapshot_carries_sessions_bindings_and_sequences() {
        let mut s = Store::new();
        create(&mut s, "s", 10_000);
        s.apply("", bound_put("k", "s"));
        s.apply("", Body::Put(Put { sequential: true, ..put_req("q/", "v") }));
        let stream = s.snapshot();
        let mut other = Store::new();
        let txn = other.db.begin_write().expect("a write transaction begins");
        super::super::snapshot::restore(&txn, &mut &stream[..], s.applied().index, 1, &[])
            .expect("restore succeeds");
        txn.commit().expect("restore commits");
        other.index = s.applied().index;
        assert_eq!(other.hash(), s.hash(), "the restored state is the same");
        let closed = as_session(other.apply("", Body::CloseSession(CloseSession { id: "s".into() })));
        assert_eq!(closed.keys_deleted, 1, "the binding came along");
        let key = as_put(other.apply("", Body::Put(Put { sequential: true, ..put_req("q/", "v") }))).key;
        assert_eq!(key, b"q/00000000000000000001".to_vec(), "the sequence came along");
    }
}
