//! `put`: each operation sets a random key of the key space to a `--value-size` value.
//! Outcome: `put`.

use super::{Connection, OpContext, OpError, Outcome, Workload};

/// The `put` workload.
#[derive(Debug, Clone, Copy, Default)]
pub struct Put;

impl Workload for Put {
    fn name(&self) -> &'static str {
        "put"
    }

    async fn op(&self, connection: &mut Connection, context: &mut OpContext) -> Result<Outcome, OpError> {
        let key = context.random_key();
        connection.put(key, context.value()).await?;
        Ok("put")
    }
}
