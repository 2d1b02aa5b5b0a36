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
    let Some(mut row) = locks::read_row(ap.txn, &key)? else {
        return Ok(locks::result(Status::NotHeld, None, 0));
    };
    let Some(holder) = row.holders.iter_mut().find(|h| leads(h, &seq)) else {
        return Ok(locks::result(Status::NotHeld, None, 0));
    };
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
        s.apply("", Body::Proclaim(Proclaim { sequencer: Some(seq.clone()), value: b"10.0.0.9".to_vec() }));
        assert_eq!(
            current(&s),
            Some(("a".into(), b"10.0.0.9".to_vec())),
            "the leader's proclaim is published"
        );
        s.apply("", Body::CloseSession(CloseSession { id: "a".into() }));
        assert_eq!(current(&s), Some(("b".into(), b"10.0.0.2".to_vec())), "the next candidate leads");
        let rev = s.applied().revision;
        let stale = s.apply("", Body::Proclaim(Proclaim { sequencer: Some(seq), value: b"x".to_vec() }));
        assert!(
            matches!(stale.result, Some(outcome::Result::Lock(ref r)) if r.status == Status::NotHeld as i32),
            "an ex-leader's proclaim is refused: {stale:?}"
        );
        assert_eq!(s.applied().revision, rev, "… and writes nothing");
        // A lock of the same name is another thing.
        assert_eq!(s.read(|t| locks::read(t, &lock_key(LockSpace::Locks, "e"))).expect("reads"), None);
    }
}
