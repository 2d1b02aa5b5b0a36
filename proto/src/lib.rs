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
        pub mod wire {
            pub mod v1 {
                tonic::include_proto!("latch.wire.v1");
            }
        }
    }
    /// The server side of `latch.v1.Watch` (built by hand in build.rs), answering with
    /// [`wire::WatchResponse`](super::wire::WatchResponse).
    pub mod watch_wire {
        include!(concat!(env!("OUT_DIR"), "/latch.v1.Watch.rs"));
    }
}

pub mod sequencer;

pub use generated::latch::internal::v1 as internal;
pub use generated::latch::v1;

/// The members' form of what they send: `latch.v1` messages whose repeated parts are already
/// encoded, so that one encoding is shared by every stream it goes to. Identical on the wire to
/// their `latch.v1` namesakes, which clients decode.
pub mod wire {
    pub use super::generated::latch::wire::v1::WatchResponse;
    pub use super::generated::watch_wire::watch_server;
}

/// The encoded `FileDescriptorSet` of every .proto file of this crate (`latch.v1` and
/// `latch.internal.v1`), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("latch_descriptor");

/// The lock-delay of a grant whose request names none (`AcquireRequest.lock_delay_ms`,
/// `CampaignRequest.lock_delay_ms`): part of the wire contract of `latch.v1`. Chubby's default
/// is a minute; 5 s here, as etcd users expect a lock to move on quickly.
pub const DEFAULT_LOCK_DELAY_MS: u64 = 5_000;

/// The longest lock-delay an acquire or a campaign may ask for; a longer one is refused
/// (INVALID_ARGUMENT).
pub const MAX_LOCK_DELAY_MS: u64 = 60_000;

/// gRPC metadata key under which a member answering OUT_OF_RANGE for a compacted revision
/// names the compact revision. Part of the wire contract of `latch.v1`.
pub const COMPACT_REVISION_METADATA: &str = "latch-compact-revision";

/// gRPC metadata key under which a member answering UNAVAILABLE names the leader's client
/// address (`host:port`), when it knows one. Part of the wire contract of `latch.v1`.
pub const LEADER_ADDR_METADATA: &str = "latch-leader-addr";

/// gRPC metadata keys of a write answered FAILED_PRECONDITION although it was applied: a retry
/// whose first attempt's answer was lost, when that answer carried data the member does not keep
/// (previous values, a txn's ranges). They name the revision it was applied at and, for a txn,
/// whether its compares held (`true`/`false`). Part of the wire contract of `latch.v1`.
pub const APPLIED_REVISION_METADATA: &str = "latch-applied-revision";
pub const TXN_SUCCEEDED_METADATA: &str = "latch-txn-succeeded";

/// gRPC metadata key (`true`) of a write's failure after which it may still take effect: a
/// member answered before its caller's deadline that it could not commit it in time, and it
/// stays proposed. The clients set it too on a call one of whose attempts may have reached a
/// member and went unanswered. Part of the wire contract of `latch.v1`.
pub const UNSETTLED_METADATA: &str = "latch-unsettled";

/// gRPC metadata key (`true`) of a member's refusal of a write that is the request's outcome:
/// the member applied the write's command and the state refused it (no such session, a lock
/// queue full), and that outcome is remembered under the request id, so every attempt of the
/// request, at any member, gets the same answer (while the id is remembered). A refusal without
/// it settles nothing: one a member made alone before proposing (over its own limits, which
/// members may set differently) or one that is no member's (a proxy, the transport) leaves
/// another attempt of the write free to take effect. Part of the wire contract of `latch.v1`.
pub const SETTLED_METADATA: &str = "latch-settled";

/// gRPC metadata key under which every answer of a member names its cluster (the cluster id,
/// 16 lowercase hex digits), and under which a client names the cluster it talks to. A member
/// refuses a request naming another cluster (UNAVAILABLE, nothing done: for that client the
/// member is not there, and it moves on to another endpoint): a client sent
/// to an address a member of another cluster now holds (a stale leader hint, a misconfigured
/// endpoint list) changes nothing there, once it names its cluster (from its first answer on,
/// or from the start when told it). Part of the wire contract of `latch.v1`.
pub const CLUSTER_ID_METADATA: &str = "latch-cluster-id";

/// The form of a cluster id in [`CLUSTER_ID_METADATA`] and in logs: 16 lowercase hex digits.
pub fn format_cluster_id(id: u64) -> String {
    format!("{id:016x}")
}

/// Reads a [`CLUSTER_ID_METADATA`] value; `None` if it is not 16 hex digits.
pub fn parse_cluster_id(text: &str) -> Option<u64> {
    let hex = text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then(|| u64::from_str_radix(text, 16).ok()).flatten()
}

/// gRPC metadata key (value `true`) of a member's own RESOURCE_EXHAUSTED refusals: the request
/// was over one of its limits and nothing was queued or changed. RESOURCE_EXHAUSTED without it may come
/// from elsewhere (HTTP/2's ENHANCE_YOUR_CALM, a proxy) after the request was acted on. Part of
/// the wire contract of `latch.v1`.
pub const OVER_LIMIT_METADATA: &str = "latch-over-limit";

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::{format_cluster_id, parse_cluster_id, v1, wire};

    #[test]
    fn a_cluster_id_is_exactly_sixteen_hex_digits_and_reads_back_as_formatted() {
        for id in [0, 1, 0x0123_4567_89ab_cdef, u64::MAX] {
            assert_eq!(parse_cluster_id(&format_cluster_id(id)), Some(id), "{id:#x} formatted then parsed");
        }
        assert_eq!(
            parse_cluster_id("0123456789ABCDEF"),
            Some(0x0123_4567_89ab_cdef),
            "upper case is hex too"
        );
        for bad in [
            "",
            "123",
            "0x23456789abcdef",
            "+123456789abcdef",
            "-123456789abcdef",
            "0123456789abcdef0",
            " 123456789abcdef",
            "0123456789abcdeg",
        ] {
            assert_eq!(parse_cluster_id(bad), None, "{bad:?} is not 16 hex digits and must not parse");
        }
    }

    #[test]
    fn a_wire_watch_response_decodes_as_the_typed_one() {
        let kv = |key: &str, rev: i64| v1::KeyValue {
            key: key.into(),
            value: b"v".to_vec(),
            create_revision: 1,
            mod_revision: rev,
            version: rev,
            session: String::new(),
        };
        let events = vec![
            v1::Event {
                r#type: v1::event::EventType::Put as i32,
                kv: Some(kv("a", 7)),
                prev_kv: Some(kv("a", 6)),
            },
            v1::Event { r#type: v1::event::EventType::Delete as i32, kv: Some(kv("b", 7)), prev_kv: None },
        ];
        let header = v1::ResponseHeader { cluster_id: 1, member_id: 2, revision: 7, raft_term: 3 };
        let typed = v1::WatchResponse {
            header: Some(header),
            watch_id: 4,
            created: true,
            canceled: true,
            compact_revision: 5,
            cancel_reason: v1::watch_response::CancelReason::Slow as i32,
            cancel_message: "m".into(),
            progress: true,
            fragment: true,
            snapshot: true,
            events: events.clone(),
            snapshot_kvs: vec![kv("c", 2)],
            also_watch_ids: vec![8, 9],
        };
        let sent = wire::WatchResponse {
            header: Some(header),
            watch_id: 4,
            created: true,
            canceled: true,
            compact_revision: 5,
            cancel_reason: v1::watch_response::CancelReason::Slow as i32,
            cancel_message: "m".into(),
            progress: true,
            fragment: true,
            snapshot: true,
            events: events.iter().map(|e| e.encode_to_vec().into()).collect(),
            snapshot_kvs: vec![kv("c", 2)],
            also_watch_ids: vec![8, 9],
        };
        let bytes = sent.encode_to_vec();
        assert_eq!(
            bytes,
            typed.encode_to_vec(),
            "the wire form should encode byte for byte as the typed one"
        );
        assert_eq!(v1::WatchResponse::decode(bytes.as_slice()).expect("decodes"), typed);
    }
}
