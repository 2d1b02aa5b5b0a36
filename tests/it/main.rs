//! Latch's integration tests (DESIGN.md §7, layer 2): real `latch server` processes on
//! 127.0.0.1, each test with its own cluster, ports and temp data dirs, driven through the Rust
//! client and the `latch` command line. Members are killed with SIGKILL and restarted on the same
//! data dir, and partitioned from each other through the test-only fault injector of the peer
//! transport (`--fault-injection`); every wait is a bounded poll for a named condition ([`harness::eventually`]).
//!
//! A failing test prints the tail of each member's log and keeps its temp dir. `RUST_LOG` is
//! passed on to the servers (e.g. `RUST_LOG=debug cargo test --test it`).
#![allow(clippy::unwrap_used)]

mod backup;
mod bench;
mod bounds;
mod cli;
mod dns;
mod faults;
mod harness;
mod limits;
mod linearizability;
mod lock_safety;
mod locks;
mod membership;
mod observability;
mod partitions;
mod python;
mod registry;
mod replication;
mod sessions;
mod watch_limits;
mod watch_revisions;
mod watches;
