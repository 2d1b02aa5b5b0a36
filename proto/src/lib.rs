//! Latch's wire formats. `v1` is the public gRPC API (package `latch.v1`): clients depend on
//! this crate alone. `internal` is what never leaves the cluster: the replicated log's
//! `Command`, the stored `Outcome` of a request id, and the peer transport.

/// Generated code, nested as the proto packages are so that cross-package references resolve.
#[allow(clippy::all, missing_docs)]
mod generated {
    pub mod latch {
        pub mod v1 {
            tonic::include_proto!("latch.v1");
        }
        pub mod internal {
            pub mod v1 {
                tonic::include_proto!("latch.internal.v1");
            }
        }
    }
}

pub mod sequencer;

pub use generated::latch::internal::v1 as internal;
pub use generated::latch::v1;

/// The encoded `FileDescriptorSet` of every .proto file of this crate (`latch.v1` and
/// `latch.internal.v1`), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("latch_descriptor");

/// The lock-delay of a grant whose request names none (`AcquireRequest.lock_delay_ms`,
/// `CampaignRequest.lock_delay_ms`): part of the wire contract of `latch.v1`. Chubby's default
/// is a minute; 5 s here, as etcd users expect a lock to move on quickly.
pub const DEFAULT_LOCK_DELAY_MS: u64 = 5_000;

/// gRPC metadata key under which a member answering UNAVAILABLE names the leader's client
/// address (`host:port`), when it knows one. Part of the wire contract of `latch.v1`.
pub const LEADER_ADDR_METADATA: &str = "latch-leader-addr";
