//! `mixed`: each operation is a read with probability `--read-ratio`, else a put, of a random
//! key of the key space. Like `get`, it writes the whole key space once before the clock
//! starts, so reads find their keys. Outcomes: `get`, `put`.

use rand::Rng;
use serde_json::{json, Map, Value};

use super::{keys, Connection, Consistency, OpContext, OpError, Outcome, Setup, Workload};

/// The `mixed` workload.
#[derive(Debug, Clone, Copy)]
pub struct Mixed {
    read_ratio: f64,
    consistency: Consistency,
}

impl Mixed {
    /// Reads with probability `read_ratio` (in [0, 1]), served with `consistency`, else puts.
    pub fn new(read_ratio: f64, consistency: Consistency) -> Result<Mixed, String> {
        if !(0.0..=1.0).contains(&read_ratio) {
            return Err(format!("--read-ratio must be between 0 and 1, got {read_ratio}"));
        }
        Ok(Mixed { read_ratio, consistency })
    }
}

impl Workload for Mixed {
    fn name(&self) -> &'static str {
        "mixed"
    }

    fn parameters(&self) -> Map<String, Value> {
        Map::from_iter([
            ("read_ratio".to_string(), json!(self.read_ratio)),
            ("consistency".to_string(), json!(self.consistency.name())),
        ])
    }

    async fn prepare(&self, setup: &Setup<'_>) -> Result<(), OpError> {
        keys::load(setup.connections, setup.keys, setup.value, setup.progress).await
    }

    async fn op(&self, connection: &mut Connection, context: &mut OpContext) -> Result<Outcome, OpError> {
        let key = context.random_key();
        if context.rng.gen_bool(self.read_ratio) {
            connection.get(key, self.consistency).await?;
            Ok("get")
        } else {
            connection.put(key, context.value()).await?;
            Ok("put")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_ratio_is_a_probability() {
        for ok in [0.0, 0.5, 1.0] {
            assert!(Mixed::new(ok, Consistency::Linearizable).is_ok(), "{ok}");
        }
        for bad in [-0.1, 1.5, f64::NAN] {
            let e = Mixed::new(bad, Consistency::Linearizable).expect_err("out of range");
            assert!(e.contains("--read-ratio"), "{e}");
        }
    }
}
