//! The state a fixed sequence of commands leaves, pinned: every member must reach the same
//! state from the same log whatever build applies it (the members compare their states at
//! check points, `core::state_check`, and stop one that differs). A change to what a command
//! writes — a row's encoding, a text the apply code stores such as a registry check's output,
//! what the request memory counts — fails this test; it is made under a new
//! [`COMMAND_VERSION`](super::COMMAND_VERSION), the old rule kept for entries of older
//! versions, and only then are the constants below updated.

use latch_proto::internal::command::Body;
use latch_proto::internal::{
    check, outcome, Acquire, Check, CheckpointSessions, CloseSession, Compact, Deregister, EndLockDelay,
    ExpireSession, Health, Heartbeat, Instance, LockMode, LockSpace, MarkCritical, MemberStarted, Outcome,
    Proclaim, Reap, Register, Release, Sequencer, SessionLease, SetHealth,
};
use redb::{ReadableTable, ReadableTableMetadata as _};

use super::testing::{apply_in_batches, create_session, del, put, Store};
use super::{checked_state_hash, open_read, requests};
use crate::storage::schema::{HISTORY, REQUESTS, REQUESTS_META, REQUESTS_META_BYTES};

/// [`checked_state_hash`] after [`script`].
const CHECKED_HASH: u64 = 2_718_551_571_201_375_298;
/// The request memory's byte total after [`script`].
const MEMORY_BYTES: u64 = 970;
/// The request ids the memory holds after [`script`] (the oldest forgotten).
const REMEMBERED: &[&str] = &[
    "beat",
    "campaign",
    "close",
    "compact",
    "dereg",
    "proclaim",
    "put-c",
    "refused-again",
    "reg-1",
    "reg-2",
];

fn acquire(space: LockSpace, name: &str, session: &str, mode: LockMode, wait: bool) -> Body {
    Body::Acquire(Acquire {
        space: space as i32,
        name: name.into(),
        session: session.into(),
        mode: mode as i32,
        wait,
        lock_delay_ms: 5_000,
        value: b"v".to_vec(),
        max_waiters: 0,
        max_session_locks: 0,
        max_row_bytes: 0,
    })
}

fn sequencer(o: &Outcome) -> Sequencer {
    match &o.result {
        Some(outcome::Result::Lock(l)) => l.sequencer.clone().expect("a granted lock has a sequencer"),
        other => panic!("a lock outcome, not {other:?}"),
    }
}

fn instance(id: &str) -> Instance {
    Instance {
        service: "web".into(),
        id: id.into(),
        address: "10.0.0.1".into(),
        port: 80,
        tags: vec!["a".into()],
        meta: [("k".to_string(), "v".to_string())].into(),
        weight: 1,
    }
}

fn check(kind: check::Kind, ttl_ms: u64) -> Check {
    Check {
        kind: kind as i32,
        ttl_ms,
        url: "http://10.0.0.1/health".into(),
        tcp_address: String::new(),
        interval_ms: 1_000,
        timeout_ms: 500,
        deregister_after_ms: 60_000,
    }
}

fn registered_revision(o: &Outcome) -> i64 {
    match &o.result {
        Some(outcome::Result::Registry(r)) => r.instance.as_ref().expect("an instance").registered_revision,
        other => panic!("a registry outcome, not {other:?}"),
    }
}

/// Commands of every kind, refusals among them, through a request memory small enough to
/// forget its oldest ids.
fn script(s: &mut Store) {
    s.bounds.request_memory_bytes = 1_000;
    s.apply("put-a", put("a", "1"));
    s.apply("put-b", put("b", "2"));
    s.apply("del-b", del("b", b""));
    let refused = s.apply("refused", put("", "no key"));
    assert!(
        matches!(refused.result, Some(outcome::Result::Rejected(_))),
        "an empty key is refused: {refused:?}"
    );
    s.apply("sess-1", create_session("s1"));
    s.apply("sess-2", create_session("s2"));
    let held = s.apply("lock-1", acquire(LockSpace::Locks, "L", "s1", LockMode::Exclusive, false));
    s.apply("lock-2", acquire(LockSpace::Locks, "L", "s2", LockMode::Shared, true));
    s.apply("unlock-1", Body::Release(Release { sequencer: Some(sequencer(&held)) }));
    let leader = s.apply("campaign", acquire(LockSpace::Elections, "E", "s1", LockMode::Exclusive, false));
    s.apply(
        "proclaim",
        Body::Proclaim(Proclaim {
            sequencer: Some(sequencer(&leader)),
            value: b"w".to_vec(),
            max_row_bytes: 0,
        }),
    );
    let compact_to = s.applied().revision - 3;
    s.apply("compact", Body::Compact(Compact { revision: compact_to }));
    let ttl = Register {
        instance: Some(instance("1")),
        session: String::new(),
        check: Some(check(check::Kind::Ttl, 1_000)),
    };
    let first = s.apply("reg-1", Body::Register(ttl));
    let beat = Heartbeat { service: "web".into(), id: "1".into(), output: "fine".into() };
    s.apply("beat", Body::Heartbeat(beat));
    let missed = MarkCritical {
        service: "web".into(),
        id: "1".into(),
        beats: 1,
        registered_revision: registered_revision(&first),
    };
    let marked = s.apply("", Body::MarkCritical(missed));
    let health = match &marked.result {
        Some(outcome::Result::Registry(r)) => r.instance.as_ref().map(|i| i.health),
        other => panic!("a registry outcome, not {other:?}"),
    };
    assert_eq!(health, Some(Health::Critical as i32), "the missed heartbeat turns it critical");
    let http = Register {
        instance: Some(instance("2")),
        session: "s2".into(),
        check: Some(check(check::Kind::Http, 0)),
    };
    let second = s.apply("reg-2", Body::Register(http));
    let verdict = SetHealth {
        service: "web".into(),
        id: "2".into(),
        registered_revision: registered_revision(&second),
        health: Health::Critical as i32,
        output: "HTTP 503".into(),
        term: 1,
    };
    let critical = s.apply("", Body::SetHealth(verdict));
    let since = match &critical.result {
        Some(outcome::Result::Registry(r)) => r.instance.as_ref().map_or(0, |i| i.critical_since),
        other => panic!("a registry outcome, not {other:?}"),
    };
    s.apply("", Body::Reap(Reap { service: "web".into(), id: "2".into(), critical_since: since }));
    s.apply("", Body::MemberStarted(MemberStarted { member: 1 }));
    let leases = vec![
        SessionLease { id: "s1".into(), remaining_ms: 7_000 },
        SessionLease { id: "s2".into(), remaining_ms: 3_000 },
    ];
    s.apply("", Body::CheckpointSessions(CheckpointSessions { leases, leader_ms: 12_000, term: 1 }));
    let expired =
        s.apply("", Body::ExpireSession(ExpireSession { id: "s2".into(), checkpoints: 1, term: 1 }));
    assert!(
        matches!(&expired.result, Some(outcome::Result::Session(r)) if r.ended),
        "s2 expires, its shared hold of L released abnormally: {expired:?}"
    );
    s.apply(
        "",
        Body::EndLockDelay(EndLockDelay {
            space: LockSpace::Locks as i32,
            name: "L".into(),
            since_revision: expired.revision,
        }),
    );
    s.apply("dereg", Body::Deregister(Deregister { service: "web".into(), id: "1".into() }));
    s.apply("close", Body::CloseSession(CloseSession { id: "s1".into() }));
    s.apply("put-c", put("c", "3"));
    s.apply("refused-again", put("", "no key"));
}

#[test]
fn a_fixed_sequence_of_commands_leaves_the_state_every_earlier_build_left() {
    let mut s = Store::new();
    script(&mut s);
    let hash = s.read(checked_state_hash).expect("the state hashes");
    let (bytes, remembered) = s
        .read(|t| {
            let meta = open_read(t, REQUESTS_META)?.expect("the request memory's meta exists");
            let bytes = meta
                .get(REQUESTS_META_BYTES.as_bytes())?
                .map(|v| u64::from_be_bytes(v.value().try_into().expect("the byte total is 8 bytes")));
            let rows = open_read(t, REQUESTS)?.expect("the request memory exists");
            let mut ids = Vec::new();
            let mut sum = 0;
            for row in rows.iter()? {
                let (id, row) = row?;
                sum += requests::counted_bytes(id.value(), row.value())?;
                ids.push(String::from_utf8_lossy(id.value()).into_owned());
            }
            assert_eq!(bytes, Some(sum), "the memory's byte total is the sum of what its rows count");
            Ok((sum, ids))
        })
        .expect("the request memory reads");
    let pinned = "this build applies a command differently from the builds before it; make the \
                  change under a new COMMAND_VERSION (the old rule kept for older entries), then \
                  update the constants of fsm::same_state";
    assert_eq!(hash, CHECKED_HASH, "the compared state's hash: {pinned}");
    assert_eq!(bytes, MEMORY_BYTES, "the request memory's byte total: {pinned}");
    assert_eq!(remembered, REMEMBERED, "the ids the request memory holds: {pinned}");
}

#[test]
fn the_pinned_state_is_reached_wherever_the_batches_are_cut() {
    // Members cut batches where their own timing falls, and a batch keeps its tables open from
    // its first entry to its last (`fsm::Tables`): every domain's commands, sharing batches in
    // every way, must leave the state pinned above.
    let mut s = Store::new();
    script(&mut s);
    let entries = s.log.clone();
    let mut cuts: Vec<Vec<usize>> = (0..=entries.len()).map(|cut| vec![cut]).collect();
    cuts.push(Vec::new());
    cuts.push((3..entries.len()).step_by(3).collect());
    cuts.push((2..entries.len()).step_by(5).collect());
    for cut in cuts {
        let (_, _, store) = apply_in_batches(&entries, &cut, s.bounds);
        let hash = store.read(checked_state_hash).expect("the state hashes");
        assert_eq!(hash, CHECKED_HASH, "the script's {} entries cut into batches at {cut:?}", entries.len());
        assert_eq!(store.hash(), s.hash(), "cut at {cut:?}: the same state, the request memory included");
    }
}

/// The history rows left after a compaction of 600 puts' rows, then after each entry that
/// follows it: the compaction's own, an empty one (raft's no-op, or a change of membership),
/// a small put, a put of 4 KiB. The purge's pace shapes the compared state (the history is
/// hashed) and no command version keys it (see [`COMMAND_VERSION`](super::COMMAND_VERSION)):
/// a change to it is made under a new cluster version, the old pace kept below it, and only
/// then are these numbers updated.
const PURGE_LEFT: [usize; 4] = [536, 472, 408, 142];

#[test]
fn the_historys_purge_pace_after_a_compaction_is_every_earlier_builds() {
    let mut s = Store::new();
    for i in 0..600 {
        s.apply("", put(&format!("k{i:03}"), "v"));
    }
    let rows = |s: &Store| {
        s.read(|t| Ok(open_read(t, HISTORY)?.map_or(0, |h| h.len().unwrap_or(0) as usize)))
            .expect("the history reads")
    };
    let head = s.applied().revision;
    s.apply("", Body::Compact(Compact { revision: head }));
    let mut left = vec![rows(&s)];
    s.apply_data(&[]);
    left.push(rows(&s));
    s.apply("", put("small", "1"));
    left.push(rows(&s));
    s.apply("", put("large", &"x".repeat(4096)));
    left.push(rows(&s));
    assert_eq!(left, PURGE_LEFT, "the history rows left after each entry that follows a compaction");
}
