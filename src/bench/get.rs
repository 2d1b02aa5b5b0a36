//! `get`: each operation reads a random key of the key space, linearizable or serializable.
//! Before the clock starts, the whole key space is written once ([`keys::load`]), so every read
//! finds its key. Outcomes: `found`, `missing` (a key deleted meanwhile).

use serde_json::{json, Map, Value};

use super::{keys, Connection, Consistency, OpContext, OpError, Outcome, Setup, Workload};

/// The `get` workload.
#[derive(Debug, Clone, Copy)]
pub struct Get {
    /// How every read is served.
    pub consistency: Consistency,
}

impl Workload for Get {
    fn name(&self) -> &'static str {
        "get"
    }

    fn parameters(&self) -> Map<String, Value> {
        Map::from_iter([("consistency".to_string(), json!(self.consistency.name()))])
    }

    async fn prepare(&self, setup: &Setup<'_>) -> Result<(), OpError> {
        keys::load(setup.connections, setup.keys, setup.value, setup.progress).await
    }

    async fn op(&self, connection: &mut Connection, context: &mut OpContext) -> Result<Outcome, OpError> {
        let key = context.random_key();
        match connection.get(key, self.consistency).await? {
            Some(_) => Ok("found"),
            None => Ok("missing"),
        }
    }
}
