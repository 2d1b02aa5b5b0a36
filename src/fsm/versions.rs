//! The versions domain: which command version the cluster runs. Every command carries the
//! version of the rules it is applied by (`Command.version`), and a build applies every version
//! up to its own ([`super::COMMAND_VERSION`]), stopping at a later one. So members of two builds
//! can run side by side only while every command is of a version the older build applies: each
//! member proposes at the *cluster version* this domain holds, not at its build's, and the
//! leader raises it only once every member of its configuration said it runs a build of the new
//! version (`server::upgrade`, etcd's cluster version). The command that raises it is itself of
//! the version it raises to, so a member of an older build that slipped in meanwhile stops at
//! that entry instead of applying anything by rules it does not know.
//!
//! Invariants:
//! - The cluster version never decreases: a raise to a version at or below it changes nothing.
//! - It is never above the command version of the entry that raised it, and so never above
//!   the build of any member that applied that entry.
//! - Until the first raise the table is empty and the cluster runs [`UNRAISED`]: a state of a
//!   build before the domain hashes and snapshots as it did then (`fsm::ADDED_LATER`).
//! - Raising writes no revision: it is not a change any reader or watcher sees.

use super::tables::Tables;
use latch_proto::internal::{outcome, ClusterVersionResult};
use redb::{ReadTransaction, ReadableTable};

use super::{open_read, Applied, Domain, FsmError, TableDef};
use crate::storage::schema::{CLUSTER_VERSION, CLUSTER_VERSION_KEY};

/// The cluster version of a state no raise has reached: builds of version 10, the last before
/// the cluster version, proposed at their own version, and a build of a later one proposes at
/// it until every member runs a later build.
pub const UNRAISED: u32 = 10;

/// The first command version of the builds that raise the cluster version: a raise is of the
/// version it raises to, so none is of a version below it.
pub const FIRST_RAISE: u32 = 11;

pub(crate) struct VersionsDomain;

impl Domain for VersionsDomain {
    fn name(&self) -> &'static str {
        "versions"
    }

    fn tables(&self) -> &'static [TableDef] {
        &[CLUSTER_VERSION]
    }

    fn check_row(&self, table: &str, key: &[u8], value: &[u8], _at: &Applied) -> Result<(), FsmError> {
        if key != CLUSTER_VERSION_KEY {
            return Err(FsmError::Corrupt(format!(
                "table {table}: key {key:?} is not {CLUSTER_VERSION_KEY:?}"
            )));
        }
        match be_u32(value) {
            Some(v) if v >= FIRST_RAISE => Ok(()),
            _ => Err(FsmError::Corrupt(format!(
                "table {table}: the cluster version {value:?} is not a version of {FIRST_RAISE} or later, 4 bytes"
            ))),
        }
    }
}

/// Raises the cluster version to `version`, the raising command's own (at least
/// [`FIRST_RAISE`]: `fsm::first_version` rejects an earlier one), unless it is there already;
/// answers the version after.
pub(crate) fn raise(tables: &Tables, version: u32) -> Result<outcome::Result, FsmError> {
    let mut table = tables.open(CLUSTER_VERSION)?;
    let current = match table.get(CLUSTER_VERSION_KEY)? {
        Some(v) => stored(v.value())?,
        None => UNRAISED,
    };
    if version > current {
        table.insert(CLUSTER_VERSION_KEY, version.to_be_bytes().as_slice())?;
    }
    Ok(outcome::Result::ClusterVersion(ClusterVersionResult { version: version.max(current) }))
}

/// The cluster version the state holds.
pub fn cluster_version(txn: &ReadTransaction) -> Result<u32, FsmError> {
    let Some(table) = open_read(txn, CLUSTER_VERSION)? else { return Ok(UNRAISED) };
    match table.get(CLUSTER_VERSION_KEY)? {
        Some(v) => stored(v.value()),
        None => Ok(UNRAISED),
    }
}

fn stored(value: &[u8]) -> Result<u32, FsmError> {
    be_u32(value).ok_or_else(|| {
        FsmError::Corrupt(format!("table cluster_version: the version {value:?} is not 4 bytes"))
    })
}

fn be_u32(bytes: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(bytes).ok().map(u32::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use latch_proto::internal::{command::Body, Command, Outcome, RaiseClusterVersion};
    use prost::Message;

    use super::super::testing::{put, restore_into, Store};
    use super::super::{checked_state_hash, FsmError, COMMAND_VERSION};
    use super::*;

    fn raise_at(version: u32) -> Vec<u8> {
        let body = Some(Body::RaiseClusterVersion(RaiseClusterVersion {}));
        Command { version, request_id: format!("raise-{version}"), body }.encode_to_vec()
    }

    fn raised_to(o: &Outcome) -> u32 {
        match &o.result {
            Some(outcome::Result::ClusterVersion(r)) => r.version,
            other => panic!("expected a cluster version result, got {other:?}"),
        }
    }

    #[test]
    fn the_cluster_version_starts_unraised_rises_to_the_raising_commands_version_and_writes_no_revision() {
        let mut s = Store::new();
        s.apply("", put("k", "v"));
        assert_eq!(s.read(cluster_version).expect("readable"), UNRAISED, "a state no raise reached");
        let before = s.applied().revision;
        let raised = s.apply_data(&raise_at(FIRST_RAISE)).expect("an outcome").outcome;
        assert_eq!(raised_to(&raised), FIRST_RAISE);
        assert_eq!(s.read(cluster_version).expect("readable"), FIRST_RAISE);
        assert_eq!(raised.revision, before, "a raise is no change a reader or watcher sees");
        let again = s.apply_data(&raise_at(FIRST_RAISE)).expect("an outcome").outcome;
        assert_eq!(raised_to(&again), FIRST_RAISE, "a raise to the version it is at changes nothing");
        let refused = s.apply_data(&raise_at(UNRAISED)).expect("an outcome").outcome;
        assert!(
            matches!(&refused.result, Some(outcome::Result::Rejected(why)) if why.contains("first proposed at version 11")),
            "a raise of a version before raises existed is refused: {refused:?}"
        );
        assert_eq!(s.read(cluster_version).expect("readable"), FIRST_RAISE, "and never lowers it");
    }

    #[test]
    fn a_member_whose_build_applies_less_stops_at_the_raise_writing_nothing_of_it() {
        let mut s = Store::new();
        s.bounds.newest_version = UNRAISED;
        s.apply_data(
            &Command { version: UNRAISED, ..super::super::testing::command("p", put("k", "v")) }
                .encode_to_vec(),
        );
        let index = s.applied().index + 1;
        match s.try_apply_data(&raise_at(FIRST_RAISE)) {
            Err(FsmError::NewerVersion { index: at, version, newest }) => {
                assert_eq!(
                    (at, version, newest),
                    (index, FIRST_RAISE, UNRAISED),
                    "the error names the entry and both versions"
                )
            }
            other => panic!("a build of {UNRAISED} must stop at a raise to {FIRST_RAISE}, got {other:?}"),
        }
        assert_eq!(s.read(cluster_version).expect("readable"), UNRAISED, "nothing of the raise is written");
    }

    #[test]
    fn an_unraised_state_hashes_as_before_the_domain_and_a_raised_one_travels_in_snapshots() {
        let mut unraised = Store::new();
        unraised.apply("a", put("k", "v"));
        let mut raised = Store::new();
        raised.apply("a", put("k", "v"));
        let hash_before = raised.read(checked_state_hash).expect("hashes");
        assert_eq!(hash_before, unraised.read(checked_state_hash).expect("hashes"));
        raised.apply_data(&raise_at(COMMAND_VERSION)).expect("an outcome");
        let hash_after = raised.read(checked_state_hash).expect("hashes");
        assert_ne!(hash_after, hash_before, "the members compare the cluster version at check points");
        let mut restored = Store::new();
        restore_into(&mut restored, &raised.snapshot(), raised.applied().index, 1).expect("restores");
        assert_eq!(restored.read(cluster_version).expect("readable"), COMMAND_VERSION);
        assert_eq!(restored.read(checked_state_hash).expect("hashes"), hash_after);
        let mut plain = Store::new();
        restore_into(&mut plain, &unraised.snapshot(), unraised.applied().index, 1).expect("restores");
        assert_eq!(
            plain.read(cluster_version).expect("readable"),
            UNRAISED,
            "no row travels for an unraised state"
        );
    }
}
