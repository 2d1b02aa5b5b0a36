//! The elections domain: an election is an exclusive lock in its own space (`locks`), whose
//! candidates queue in order and whose holder — the leader — publishes a value. Campaign is an
//! acquire that waits, resign a release; what is an election's own is the value.
//!
//! Invariants (beyond those of `locks`):
//! - At most one leader per election: its lock's one exclusive holder.
//! - Only the leader's sequencer changes the value; a proclaim raises one revision.

use latch_proto::internal::{
    lock_result::Status, outcome, LockHolder, LockRow, LockSpace, Proclaim, Sequencer,
};
use redb::ReadTransaction;

use super::apply::{Apply, LockChange};
use super::locks::{self, lock_key};
use super::FsmError;

/// An election's leader: its sequencer and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Leader {
    pub sequencer: Sequencer,
    pub value: Vec<u8>,
    /// The revision it was elected at.
    pub revision: i64,
}

pub(crate) fn proclaim(ap: &mut Apply, req: Proclaim) -> Result<outcome::Result, FsmError> {
    let Some(seq) = req.sequencer else {
        return Ok(outcome::Result::Rejected("proclaim: no sequencer".into()));
    };
    if seq.space != LockSpace::Elections as i32 {
        return Ok(outcome::Result::Rejected("proclaim: the sequencer is not an election's".into()));
    }
    let key = lock_key(LockSpace::Elections, &seq.name);
    let Some(mut row) = locks::read_row(ap.tables, &key)? else {
        return Ok(locks::result(Status::NotHeld, None, 0));
    };
    let Some(at) = row.holders.iter().position(|h| leads(h, &seq)) else {
        return Ok(locks::result(Status::NotHeld, None, 0));
    };
    // The same bound as a campaign's: the row is rewritten and recorded whole at each change. A
    // value that does not grow passes, whatever the row holds.
    let old_len = row.holders[at].value.len();
    if req.max_row_bytes > 0 && req.value.len() > old_len {
        let now = locks::row_bytes(&row);
        if now - old_len + req.value.len() > req.max_row_bytes as usize {
            return Ok(locks::result(Status::RowFull, None, now as u64));
        }
    }
    let holder = &mut row.holders[at];
    ap.write_revision()?;
    holder.value = req.value;
    locks::write_row(ap, &key, &row)?;
    ap.lock_changed(LockChange::Changed { key });
    Ok(locks::result(Status::Done, Some(seq), 0))
}

fn leads(h: &LockHolder, seq: &Sequencer) -> bool {
    h.generation == seq.generation && h.session == seq.session
}

/// The leader of election `name`, if any.
pub fn leader(txn: &ReadTransaction, name: &str) -> Result<Option<Leader>, FsmError> {
    Ok(locks::read(txn, &lock_key(LockSpace::Elections, name))?.and_then(|row| leader_of(name, &row)))
}

/// The leader of election `name` whose row is `row`, if any.
pub fn leader_of(name: &str, row: &LockRow) -> Option<Leader> {
    row.holders.first().map(|h| Leader {
        sequencer: locks::sequencer(LockSpace::Elections, name, h),
        value: h.value.clone(),
        revision: h.revision,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use latch_proto::internal::command::Body;
    use latch_proto::internal::{Acquire, CloseSession, CreateSession, LockMode};

    fn campaign(s: &mut Store, id: &str, session: &str, value: &str) {
        s.apply(
            "",
            Body::CreateSession(CreateSession { id: session.into(), name: String::new(), ttl_ms: 10_000 }),
        );
        s.apply(
            id,
            Body::Acquire(Acquire {
                space: LockSpace::Elections as i32,
                name: "e".into(),
                session: session.into(),
                mode: LockMode::Exclusive as i32,
                wait: true,
                lock_delay_ms: 0,
                value: value.into(),
                max_waiters: 0,
                max_session_locks: 0,
                max_row_bytes: 0,
            }),
        );
    }

    fn proclaim(seq: &Sequencer, value: &[u8], max_row_bytes: u32) -> Proclaim {
        Proclaim { sequencer: Some(seq.clone()), value: value.to_vec(), max_row_bytes }
    }

    fn current(s: &Store) -> Option<(String, Vec<u8>)> {
        s.read(|t| leader(t, "e")).expect("reads").map(|l| (l.sequencer.session, l.value))
    }

    #[test]
    fn the_first_candidate_leads_proclaims_and_hands_over_to_the_next_when_it_goes() {
        let mut s = Store::new();
        campaign(&mut s, "r1", "a", "10.0.0.1");
        campaign(&mut s, "r2", "b", "10.0.0.2");
        assert_eq!(current(&s), Some(("a".into(), b"10.0.0.1".to_vec())), "the first candidate leads");
        let seq = s.read(|t| leader(t, "e")).expect("reads").expect("a leads").sequencer;
        s.apply("", Body::Proclaim(proclaim(&seq, b"10.0.0.9", 0)));
        assert_eq!(
            current(&s),
            Some(("a".into(), b"10.0.0.9".to_vec())),
            "the leader's proclaim is published"
        );
        s.apply("", Body::CloseSession(CloseSession { id: "a".into() }));
        assert_eq!(current(&s), Some(("b".into(), b"10.0.0.2".to_vec())), "the next candidate leads");
        let rev = s.applied().revision;
        let stale = s.apply("", Body::Proclaim(proclaim(&seq, b"x", 0)));
        assert!(
            matches!(stale.result, Some(outcome::Result::Lock(ref r)) if r.status == Status::NotHeld as i32),
            "an ex-leader's proclaim is refused: {stale:?}"
        );
        assert_eq!(s.applied().revision, rev, "… and writes nothing");
        // A lock of the same name is another thing.
        assert_eq!(s.read(|t| locks::read(t, &lock_key(LockSpace::Locks, "e"))).expect("reads"), None);
    }

    /// A proclaim carries the row's bound as a campaign does: a value that would take the
    /// election's row past it is refused, naming the row's bytes, and nothing is written; a value
    /// that does not grow is taken whatever the row holds.
    #[test]
    fn a_proclaim_that_would_take_the_election_row_past_its_bound_is_refused_and_writes_nothing() {
        let mut s = Store::new();
        campaign(&mut s, "r1", "a", "v");
        campaign(&mut s, "r2", "b", &"w".repeat(200));
        let seq = s.read(|t| leader(t, "e")).expect("reads").expect("a leads").sequencer;
        let bytes = |s: &Store| {
            s.read(|t| locks::read(t, &lock_key(LockSpace::Elections, "e")))
                .expect("reads")
                .map(|r| locks::row_bytes(&r) as u64)
        };
        let before = (s.applied().revision, bytes(&s), current(&s));
        let bound = before.1.expect("a row") as u32 + 100;
        let refused = s.apply("", Body::Proclaim(proclaim(&seq, &[b'x'; 102], bound)));
        assert!(
            matches!(refused.result, Some(outcome::Result::Lock(ref r))
                if r.status == Status::RowFull as i32 && Some(r.ahead) == before.1),
            "a value 101 bytes longer than the leader's, 100 under the bound, is refused naming the row's \
             bytes: {refused:?}"
        );
        assert_eq!(
            (s.applied().revision, bytes(&s), current(&s)),
            before,
            "a refused proclaim writes nothing"
        );
        let taken = s.apply("", Body::Proclaim(proclaim(&seq, &[b'x'; 101], bound)));
        assert!(
            matches!(taken.result, Some(outcome::Result::Lock(ref r)) if r.status == Status::Done as i32),
            "a value that takes the row to its bound exactly is taken: {taken:?}"
        );
        let shrunk = s.apply("", Body::Proclaim(proclaim(&seq, b"y", 1)));
        assert!(
            matches!(shrunk.result, Some(outcome::Result::Lock(ref r)) if r.status == Status::Done as i32),
            "a value that does not grow is taken although the row is past a bound of 1 byte: {shrunk:?}"
        );
        assert_eq!(current(&s), Some(("a".into(), b"y".to_vec())));
    }

    /// A proclaim retried under its request id through a member with another row bound is the
    /// same request, answered as it was first applied.
    #[test]
    fn a_proclaim_retried_through_a_member_with_another_bound_is_the_same_request() {
        let mut s = Store::new();
        campaign(&mut s, "r1", "a", "v");
        let seq = s.read(|t| leader(t, "e")).expect("reads").expect("a leads").sequencer;
        let first = s.apply("p1", Body::Proclaim(proclaim(&seq, b"v2", 1 << 20)));
        let revision = s.applied().revision;
        let retried = s.apply("p1", Body::Proclaim(proclaim(&seq, b"v2", 1 << 10)));
        assert_eq!(retried, first, "the retry is answered as the first was applied");
        assert_eq!(s.applied().revision, revision, "and writes nothing");
    }
}
