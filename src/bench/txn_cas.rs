//! `txn-cas`: each operation is a read-modify-write of a random key: a linearizable read of
//! its mod revision, then a transaction that puts a new value only if the mod revision is
//! still the one read (0 for a missing key). The latency covers both calls. Outcomes:
//! `committed`, and `conflict` when another client wrote the key in between — a normal outcome
//! under contention (a small `--keyspace` makes it common), not an error.

use super::{Connection, Consistency, OpContext, OpError, Outcome, Workload};

/// The `txn-cas` workload.
#[derive(Debug, Clone, Copy, Default)]
pub struct TxnCas;

impl Workload for TxnCas {
    fn name(&self) -> &'static str {
        "txn-cas"
    }

    async fn op(&self, connection: &mut Connection, context: &mut OpContext) -> Result<Outcome, OpError> {
        let key = context.random_key();
        let mod_revision = connection.get(key.clone(), Consistency::Linearizable).await?.unwrap_or(0);
        if connection.compare_and_put(key, mod_revision, context.value()).await? {
            Ok("committed")
        } else {
            Ok("conflict")
        }
    }
}
