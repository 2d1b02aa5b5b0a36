//! Checkers for what clients saw of Latch: given a recorded history, is it something the
//! guarantees of DESIGN.md §1 allow?
//!
//! What is here:
//!
//! - [`linearizability`]: per-key linearizability of a KV history against a register model
//!   (put, get, delete, compare-and-swap), by Wing & Gong's search with Lowe's memoization, one key
//!   at a time. Operations whose outcome the client never learnt (timeouts, lost connections) are
//!   *indeterminate* and may have taken effect or not. [`linearizability::check`] is the entry
//!   point; the search itself is its private submodule `linearizability/search.rs`.
//! - [`watch`]: etcd's six watch guarantees (ordered, unique, atomic, reliable, resumable,
//!   bookmarkable) over what watchers recorded, against the known history and each other.
//!
//! What it may import: std only, and nothing of Latch. The deterministic simulator (`tests/sim`)
//! and the integration tests on real processes (`tests/it`) both record their client histories in
//! these types and hand them here, so the checker judges the two the same way and can be tested
//! on hand-made histories alone.

pub mod linearizability;
pub mod watch;
