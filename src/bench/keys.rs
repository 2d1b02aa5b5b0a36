//! The key space of a run: `--keyspace` keys of exactly `--key-size` bytes, `bench/` and a
//! zero-padded index (`bench/000…0042`), so that keys sort in index order and are easy to find
//! and delete afterwards (`latch kv del bench/ --prefix`). And [`load`]: writing every key once,
//! before the clock starts, for the workloads that read.

use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;

use super::{Connection, OpError, Progress};

/// What every benchmark key starts with.
pub const PREFIX: &str = "bench/";

/// Most puts in one loading transaction: under the default `--max-txn-ops` of Latch and of
/// etcd (128 both). ZooKeeper has no such limit on a `multi`.
const LOAD_BATCH_OPS: usize = 100;
/// Most bytes of keys and values in one loading transaction: well under the default request
/// limits (Latch 1.5 MiB, etcd 1.5 MiB, ZooKeeper's `jute.maxbuffer` 1 MiB).
const LOAD_BATCH_BYTES: usize = 512 * 1024;

/// `size` keys of `key_size` bytes each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpace {
    size: u64,
    key_size: usize,
}

impl KeySpace {
    /// The key space of `size` keys of `key_size` bytes; or why there is none: every index must
    /// fit in the key after [`PREFIX`].
    pub fn new(size: u64, key_size: usize) -> Result<KeySpace, String> {
        if size == 0 {
            return Err("--keyspace must be at least 1".into());
        }
        let digits = digits(size - 1);
        let needed = PREFIX.len() + digits;
        if key_size < needed {
            return Err(format!(
                "--key-size {key_size} is too small for --keyspace {size}: a key is {PREFIX:?} and \
                 {digits} digits, at least {needed} bytes"
            ));
        }
        Ok(KeySpace { size, key_size })
    }

    /// How many keys there are.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How long every key is, in bytes.
    pub fn key_size(&self) -> usize {
        self.key_size
    }

    /// The `index`-th key (`index < size`).
    pub fn key(&self, index: u64) -> Vec<u8> {
        let width = self.key_size - PREFIX.len();
        format!("{PREFIX}{index:0width$}").into_bytes()
    }

    /// A key drawn uniformly at random.
    pub fn random_key(&self, rng: &mut impl Rng) -> Vec<u8> {
        self.key(rng.gen_range(0..self.size))
    }
}

/// Decimal digits of `n`.
fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// How many puts go in one loading transaction (for ZooKeeper also: creates in one `multi`)
/// for keys of `key_size` and values of `value_size` bytes: at least one, at most
/// [`LOAD_BATCH_OPS`], about [`LOAD_BATCH_BYTES`].
pub(super) fn load_batch(key_size: usize, value_size: usize) -> u64 {
    // Each put also carries a few bytes of framing.
    let per_put = key_size + value_size + 16;
    (LOAD_BATCH_BYTES / per_put).clamp(1, LOAD_BATCH_OPS) as u64
}

/// Writes every key of `keys` with `value`, in transactions of many puts, one transaction in
/// flight per connection. Fails with the first failed transaction.
pub async fn load(
    connections: &[Connection],
    keys: &KeySpace,
    value: &[u8],
    progress: &Progress,
) -> Result<(), OpError> {
    let batch = load_batch(keys.key_size(), value.len());
    let next = AtomicU64::new(0);
    progress.loading(keys.size());
    let loaders = connections.iter().map(|connection| {
        let mut connection = connection.clone();
        let next = &next;
        async move {
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= keys.size() {
                    return Ok(());
                }
                let last = (first + batch).min(keys.size());
                let pairs = (first..last).map(|i| (keys.key(i), value.to_vec())).collect();
                connection.put_all(pairs).await?;
                progress.loaded(last - first);
            }
        }
    });
    futures::future::try_join_all(loaders).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn keys_are_the_prefix_and_a_zero_padded_index_of_exactly_key_size_bytes() {
        let keys = KeySpace::new(100_000, 16).expect("valid");
        assert_eq!(keys.key(0), b"bench/0000000000");
        assert_eq!(keys.key(42), b"bench/0000000042");
        assert_eq!(keys.key(99_999), b"bench/0000099999");
        let default = KeySpace::new(100_000, 32).expect("valid");
        assert!((0..100_000).step_by(997).all(|i| default.key(i).len() == 32));
    }

    #[test]
    fn keys_sort_in_index_order() {
        let keys = KeySpace::new(1000, 12).expect("valid");
        assert!(keys.key(9) < keys.key(10) && keys.key(99) < keys.key(100));
    }

    #[test]
    fn the_key_size_must_hold_the_prefix_and_every_index() {
        assert!(KeySpace::new(10, 7).is_ok(), "bench/ and one digit");
        assert!(KeySpace::new(11, 7).is_err(), "index 10 needs two digits");
        assert!(KeySpace::new(100_000, 11).is_ok());
        let e = KeySpace::new(100_000, 8).expect_err("too small");
        assert!(e.contains("--key-size 8") && e.contains("at least 11 bytes"), "{e}");
        assert!(KeySpace::new(0, 32).expect_err("empty").contains("--keyspace"));
    }

    #[test]
    fn random_keys_stay_in_the_key_space() {
        let keys = KeySpace::new(3, 7).expect("valid");
        let mut rng = SmallRng::seed_from_u64(7);
        let mut seen: Vec<Vec<u8>> = (0..100).map(|_| keys.random_key(&mut rng)).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen, vec![b"bench/0".to_vec(), b"bench/1".to_vec(), b"bench/2".to_vec()]);
    }

    #[test]
    fn loading_batches_fit_the_txn_and_request_limits() {
        assert_eq!(load_batch(32, 256), 100);
        assert_eq!(load_batch(32, 64 * 1024), 7);
        assert_eq!(load_batch(32, 1024 * 1024), 1, "a value over the batch size still goes alone");
        assert_eq!(digits(0), 1);
        assert_eq!(digits(9), 1);
        assert_eq!(digits(10), 2);
        assert_eq!(digits(u64::MAX), 20);
    }
}
