//! Latch: a Chubby-style lock and coordination service over a Raft-replicated KV core.
//!
//! The layers, top to bottom; each may import only the ones below it (DESIGN.md §2):
//!
//! - [`cli`]: the `latch` command line (server, kv, cluster, bench). Binary-only concerns.
//! - [`bench`](mod@bench): `latch bench`, the load generator: workloads against a Latch or an etcd
//!   cluster or a ZooKeeper ensemble through their client libraries; imports none of the layers
//!   below.
//! - [`server`]: wires a node together: binds nothing itself, takes listeners and a shutdown
//!   future (`run(config, listeners, shutdown)`).
//! - [`api`]: thin gRPC handlers: validate → propose or read → map the error → fill the header.
//! - [`http`]: the HTTP port: `/metrics`, `/health`, `/ready`.
//! - [`dns`]: the DNS port: names of services, members, election leaders and static records,
//!   answered from the member's applied state.
//! - [`health`]: the leader's active health checks (HTTP, TCP) of registry instances, proposed
//!   through the log only when a result changes.
//! - [`transport`]: the peer service and the per-peer senders (raft messages as opaque bytes),
//!   with the test-only fault injector that drops the messages of blocked peers.
//! - [`backup`]: snapshot files of the replicated state: the file an operator keeps, checked
//!   and restored into a new cluster's data dir (the Maintenance service streams one).
//! - [`node`]: the driver: one thread owns the [`core`], feeds it time, requests and peer
//!   messages, and carries out what it asks.
//! - [`core`]: sans-I/O: raft-rs `RawNode`, the proposal table keyed by request id, ReadIndex
//!   batches, ticks. Takes events, returns actions; no tokio, no sockets, no clock.
//! - [`fsm`]: the replicated state machine, pure and deterministic: `apply(index, Command)`.
//! - [`storage`]: redb: the schema, the raft log (`raft::Storage`), opening and checking a
//!   data file.
//! - [`config`]: flags, config file, limits.
//! - [`metrics`]: the one registry of Prometheus metrics, filled by the driver, the transport
//!   and a tower layer on the client gRPC server; it imports nothing of Latch.

pub mod api;
pub mod backup;
pub mod bench;
pub mod cli;
pub mod config;
pub mod core;
pub mod dns;
pub mod fsm;
pub mod health;
pub mod http;
pub mod metrics;
pub mod node;
pub mod server;
pub mod storage;
pub mod transport;
