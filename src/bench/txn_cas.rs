//! `txn-cas`: each operation is a read-modify-write of a random key: a read of its mod
//! revision (linearizable; for ZooKeeper a plain `getData` of the data version, see
//! [`Connection::revision_to_update`]), then a transaction that puts a new value only if the
//! mod revision is still the one read (0 for a missing key; ZooKeeper: `setData` with that
//! version). The latency covers both calls. Outcomes:
//! `committed`, and `conflict` when another client wrote the key in between — a normal outcome
//! under contention (a small `--keyspace` makes it common), not an error.

use super::{Connection, OpContext, OpError, Outcome, Workload};

/// The `txn-cas` workload.
#[derive(Debug, Clone, Copy, Default)]
pub struct TxnCas;

impl Workload for TxnCas {
    fn name(&self) -> &'static str {
        "txn-cas"
    }

    async fn op(&self, connection: &mut Connection, context: &mut OpContext) -> Result<Outcome, OpError> {
        let key = context.random_key();
        let mod_revision = connection.revision_to_update(key.clone()).await?.unwrap_or(0);
        if connection.compare_and_put(key, mod_revision, context.value()).await? {
            Ok("committed")
        } else {
            Ok("conflict")
        }
    }
}
