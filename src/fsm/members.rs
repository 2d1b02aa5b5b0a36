//! The members domain: which members of the cluster have lived. Raft's safety rests on a member
//! never forgetting what it acknowledged or whom it voted for; a member restarted on an empty
//! data dir has forgotten both, and a committed write that only it and a since-crashed leader
//! held could be lost if it took part again. So each member, once in each life until it is
//! recorded, proposes `MemberStarted`; a member starting on an empty data dir asks its peers
//! and is refused if one of them has its record (`server::admission`).
//!
//! It also records the members added at run time, with their peer addresses
//! ([`add`], from the change that added each: `core::membership::addition`).
//!
//! Invariants:
//! - A member's row, once written, is never changed or removed: it holds the index of the entry
//!   that first recorded the member (later records of it are answered with that index).
//! - An added member's row, once written, is never changed or removed, so the members a cluster
//!   ever had are known to every member that applied their additions.
//! - Recording writes no revision: it is not a change any reader or watcher sees.

use latch_proto::internal::{outcome, MemberStarted, MemberStartedResult};
use std::collections::BTreeMap;

use super::tables::Tables;
use redb::{ReadTransaction, ReadableTable, TableHandle};

use super::apply::Apply;
use super::{open_read, Applied, Domain, FsmError, TableDef};
use crate::storage::schema::{ADDED_MEMBERS, MEMBERS};

pub(crate) struct MembersDomain;

impl Domain for MembersDomain {
    fn name(&self) -> &'static str {
        "members"
    }

    fn tables(&self) -> &'static [TableDef] {
        &[MEMBERS, ADDED_MEMBERS]
    }

    fn check_row(&self, table: &str, key: &[u8], value: &[u8], at: &Applied) -> Result<(), FsmError> {
        let corrupt = |why: String| FsmError::Corrupt(format!("table {table}, key {key:?}: {why}"));
        let id = be_u64(key).filter(|id| *id != 0).ok_or_else(|| corrupt("not a member id".into()))?;
        if table == ADDED_MEMBERS.name() {
            return match addition(value) {
                Some((index, _)) if index > 0 && index <= at.index => Ok(()),
                _ => Err(corrupt(format!(
                    "member {id}'s addition is not an index between 1 and the snapshot's {} and an address",
                    at.index
                ))),
            };
        }
        match be_u64(value) {
            Some(index) if index > 0 && index <= at.index => Ok(()),
            _ => Err(corrupt(format!(
                "member {id}'s record is not an index between 1 and the snapshot's {}",
                at.index
            ))),
        }
    }
}

/// Records that `req.member` has started, at entry `index`, unless it is recorded already.
pub(crate) fn started(ap: &mut Apply, req: MemberStarted, index: u64) -> Result<outcome::Result, FsmError> {
    if req.member == 0 {
        return Ok(outcome::Result::Rejected("member started: member 0 is not a member id".to_string()));
    }
    let mut table = ap.tables.open(MEMBERS)?;
    let key = req.member.to_be_bytes();
    let existing = table.get(key.as_slice())?.map(|v| be_u64(v.value()));
    let recorded = match existing {
        Some(index) => index.ok_or_else(|| {
            FsmError::Corrupt(format!("table members: member {}'s record is not 8 bytes", req.member))
        })?,
        None => {
            table.insert(key.as_slice(), index.to_be_bytes().as_slice())?;
            index
        }
    };
    Ok(outcome::Result::MemberStarted(MemberStartedResult { recorded_index: recorded }))
}

/// The members whose start the state records, in increasing order of id.
pub fn recorded(txn: &ReadTransaction) -> Result<Vec<u64>, FsmError> {
    let Some(table) = open_read(txn, MEMBERS)? else { return Ok(Vec::new()) };
    let mut ids = Vec::new();
    for row in table.iter()? {
        let (k, _) = row?;
        ids.push(
            be_u64(k.value())
                .ok_or_else(|| FsmError::Corrupt("table members: a key is not a member id".to_string()))?,
        );
    }
    Ok(ids)
}

/// Whether the state records `member`'s start.
pub fn is_recorded(txn: &ReadTransaction, member: u64) -> Result<bool, FsmError> {
    let Some(table) = open_read(txn, MEMBERS)? else { return Ok(false) };
    Ok(table.get(member.to_be_bytes().as_slice())?.is_some())
}

/// Records that the change at `index` added `member` at peer address `addr`, unless an earlier
/// one did (an id is never added twice: `core::membership::check_add`).
pub fn add(tables: &Tables, member: u64, addr: &str, index: u64) -> Result<(), FsmError> {
    let mut table = tables.open(ADDED_MEMBERS)?;
    let key = member.to_be_bytes();
    if table.get(key.as_slice())?.is_none() {
        let row = [index.to_be_bytes().as_slice(), addr.as_bytes()].concat();
        table.insert(key.as_slice(), row.as_slice())?;
    }
    Ok(())
}

/// The members added at run time (removed ones too) and their peer addresses.
pub fn added(txn: &ReadTransaction) -> Result<BTreeMap<u64, String>, FsmError> {
    let Some(table) = open_read(txn, ADDED_MEMBERS)? else { return Ok(BTreeMap::new()) };
    let mut added = BTreeMap::new();
    for row in table.iter()? {
        let (k, v) = row?;
        let corrupt = || {
            FsmError::Corrupt(format!("table added_members: row {:?} is not a member's addition", k.value()))
        };
        let id = be_u64(k.value()).ok_or_else(corrupt)?;
        let (_, addr) = addition(v.value()).ok_or_else(corrupt)?;
        added.insert(id, addr);
    }
    Ok(added)
}

/// An added member's row: the index of its addition and its peer address.
fn addition(value: &[u8]) -> Option<(u64, String)> {
    let (index, addr) = value.split_at_checked(8)?;
    let addr = std::str::from_utf8(addr).ok().filter(|a| !a.is_empty())?;
    Some((be_u64(index)?, addr.to_string()))
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use latch_proto::internal::{command::Body, Outcome};

    use super::super::testing::{put, restore_into, Store};
    use super::*;

    fn start(member: u64) -> Body {
        Body::MemberStarted(MemberStarted { member })
    }

    fn recorded_index(o: &Outcome) -> u64 {
        match &o.result {
            Some(outcome::Result::MemberStarted(r)) => r.recorded_index,
            other => panic!("expected a member-started result, got {other:?}"),
        }
    }

    #[test]
    fn a_members_first_record_stays_and_later_ones_are_answered_with_it() {
        let mut s = Store::new();
        s.apply("", put("k", "v"));
        let first = s.apply("member-2-a-1", start(2));
        assert_eq!(recorded_index(&first), 2, "recorded at the entry that applied it");
        s.apply("member-3-a-1", start(3));
        // A later life's record (or a retry under a new id) changes nothing.
        let again = s.apply("member-2-b-1", start(2));
        assert_eq!(recorded_index(&again), 2, "the first record is kept");
        assert_eq!(s.read(recorded).expect("readable"), vec![2, 3]);
        assert!(s.read(|t| is_recorded(t, 3)).expect("readable"));
        assert!(!s.read(|t| is_recorded(t, 1)).expect("readable"), "member 1 never started");
    }

    #[test]
    fn recording_a_start_writes_no_revision() {
        let mut s = Store::new();
        s.apply("", put("k", "v"));
        let before = s.applied().revision;
        let o = s.apply("member-1-a-1", start(1));
        assert_eq!(o.revision, before, "a record is no change a reader or watcher sees");
        assert_eq!(s.applied().revision, before);
    }

    #[test]
    fn a_start_stamped_below_the_version_that_brought_it_is_refused_writing_nothing() {
        use prost::Message as _;
        let mut s = Store::new();
        s.apply("", put("k", "v"));
        let before = s.applied().revision;
        let cmd = latch_proto::internal::Command {
            version: crate::fsm::MEMBERS_RECORDED_FROM - 1,
            ..super::super::testing::command("member-2-a-1", start(2))
        };
        let o = s.apply_data(&cmd.encode_to_vec()).expect("an outcome").outcome;
        assert!(
            matches!(&o.result, Some(outcome::Result::Rejected(why))
                if why.contains(&format!("first proposed at version {}", crate::fsm::MEMBERS_RECORDED_FROM))),
            "a kind newer than its command's version is rejected by every build alike, naming the version \
             it came with; got {o:?}"
        );
        assert_eq!(s.read(recorded).expect("readable"), Vec::<u64>::new(), "nothing recorded");
        assert_eq!(o.revision, before, "and no revision written");
    }

    #[test]
    fn member_zero_is_refused_and_nothing_is_written() {
        let mut s = Store::new();
        let hash = s.hash();
        let o = s.apply("r", start(0));
        assert!(
            matches!(&o.result, Some(outcome::Result::Rejected(why)) if why.contains("member 0")),
            "expected a rejection naming member 0, got {o:?}"
        );
        assert_eq!(s.read(recorded).expect("readable"), Vec::<u64>::new());
        assert_ne!(s.hash(), hash, "only the request memory changed (the state hash covers it)");
    }

    #[test]
    fn the_records_travel_in_snapshots() {
        let mut s = Store::new();
        s.apply("member-1-a-1", start(1));
        s.apply("member-3-a-1", start(3));
        let stream = s.snapshot();
        let mut other = Store::new();
        restore_into(&mut other, &stream, s.index, 1).expect("the snapshot restores");
        assert_eq!(other.read(recorded).expect("readable"), vec![1, 3]);
        assert_eq!(other.hash(), s.hash(), "the same state");
    }

    #[test]
    fn a_snapshot_row_that_is_no_member_record_fails_the_restore() {
        let at = Applied { index: 5, term: 1, revision: 3 };
        let check = |key: &[u8], value: &[u8]| MembersDomain.check_row("members", key, value, &at);
        assert!(check(&2u64.to_be_bytes(), &5u64.to_be_bytes()).is_ok(), "recorded at the snapshot's index");
        for (key, value, why) in [
            (0u64.to_be_bytes().to_vec(), 1u64.to_be_bytes().to_vec(), "member 0"),
            (vec![2], 1u64.to_be_bytes().to_vec(), "a key of 1 byte"),
            (2u64.to_be_bytes().to_vec(), 6u64.to_be_bytes().to_vec(), "recorded past the snapshot"),
            (2u64.to_be_bytes().to_vec(), 0u64.to_be_bytes().to_vec(), "recorded at index 0"),
            (2u64.to_be_bytes().to_vec(), vec![1, 2], "a value of 2 bytes"),
        ] {
            let e = check(&key, &value).expect_err(why);
            assert!(e.to_string().contains("table members"), "{why}: the error names the table: {e}");
        }
    }
}
