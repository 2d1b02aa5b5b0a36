//! The member's metrics: one [`Metrics`] (a prometheus-client registry and its typed families),
//! created by `server::run` and handed to the node driver, the peer transport and the gRPC
//! layer; `/metrics` on the HTTP port encodes it (OpenMetrics text).
//!
//! What is here: the families ([`RaftMetrics`], [`PeerMetrics`], [`GrpcMetrics`]) and the tower
//! layer that times every gRPC call ([`grpc::GrpcMetricsLayer`]). It imports nothing of Latch:
//! the driver and the transport fill the families in.
//!
//! Cost on the hot path: every label value is a `&'static str` or an integer, so recording
//! allocates nothing; the per-method families of the gRPC layer are resolved once, at start.

pub mod grpc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

pub use grpc::GrpcMetricsLayer;

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric of a member, under the prefix `latch_`.
pub struct Metrics {
    registry: Registry,
    pub raft: RaftMetrics,
    pub peer: PeerMetrics,
    pub grpc: GrpcMetrics,
    pub watch: WatchMetrics,
    pub dns: DnsMetrics,
    pub disk: DiskMetrics,
    pub state_check: StateCheckMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// "agreed", "split" (members disagree, no quorum: nobody judged), "unsure" (a quorum only
    /// counting unconfirmed copies: nobody judged), "let_go" (too few peers had the point),
    /// "diverged" (this member: it stops).
    pub verdict: &'static str,
}

/// This member's comparisons of its state with its peers' (`server::state_check`).
pub struct StateCheckMetrics {
    pub points: Family<VerdictLabels, Counter>,
    /// The last check point at which a peer had the same state hash.
    pub agreed_index: Gauge,
}

impl StateCheckMetrics {
    /// One check point judged.
    pub fn judged(&self, verdict: &'static str) {
        self.points.get_or_create(&VerdictLabels { verdict }).inc();
    }
}

/// What a member's data takes on its disk, and what its file system has left: measured when
/// scraped ([`DiskMetrics::measure`]), so that a disk filling up is seen before a write fails
/// on it (a member stops at its first failed log write: fail-stop, nothing half-written).
pub struct DiskMetrics {
    state_file: Gauge,
    raft_log_files: Gauge,
    free: Gauge,
    /// A measurement runs: another returns at once.
    measuring: std::sync::atomic::AtomicBool,
}

impl DiskMetrics {
    /// Measures `data_dir`: its state file, its raft log's segment files (preallocated, so
    /// counted whole), and the space left to unprivileged writers on its file system. What
    /// cannot be read keeps its last value. One at a time: while one runs (on a disk that does
    /// not answer, it may never end), another returns at once.
    pub fn measure(&self, data_dir: &std::path::Path) {
        use crate::storage::{LOG_DIR, STATE_FILE};
        use std::sync::atomic::Ordering;
        if self.measuring.swap(true, Ordering::AcqRel) {
            return;
        }
        let gauge = |g: &Gauge, bytes: u64| g.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        if let Ok(state) = std::fs::metadata(data_dir.join(STATE_FILE)) {
            gauge(&self.state_file, state.len());
        }
        if let Ok(files) = std::fs::read_dir(data_dir.join(LOG_DIR)) {
            let segments = files.flatten().filter(|f| f.file_name().to_string_lossy().ends_with(".wal"));
            gauge(&self.raft_log_files, segments.filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum());
        }
        if let Ok(fs) = rustix::fs::statvfs(data_dir) {
            gauge(&self.free, fs.f_bavail.saturating_mul(fs.f_frsize));
        }
        self.measuring.store(false, Ordering::Release);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: &'static str,
}

/// Queries answered on this member's DNS port (`dns`).
pub struct DnsMetrics {
    answered: Family<CodeLabels, Counter>,
}

impl DnsMetrics {
    /// A query answered with response code `code` (NOERROR, NXDOMAIN, SERVFAIL, …).
    pub fn answered(&self, code: &'static str) {
        self.answered.get_or_create(&CodeLabels { code }).inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Watches served by this member (`api::watch`).
pub struct WatchMetrics {
    /// Open watch streams.
    pub streams: Gauge,
    /// Watches on them.
    pub watches: Gauge,
    /// Events sent to watches (one per event per watch).
    pub events_sent: Counter,
    /// Watches ended by the member or the client, by reason.
    canceled: Family<ReasonLabels, Counter>,
    /// Revisions in the shared window of recent revisions, and the bytes it holds (encoded
    /// events and the memory around them, `api::watch::recent`).
    pub window_revisions: Gauge,
    pub window_bytes: Gauge,
    /// Bytes of responses queued for clients, over every stream (each bounded, and all of them
    /// by `--max-watch-queued-bytes`).
    pub queued_bytes: Gauge,
    /// Streams the member ended at once, dropping what was queued for them, by reason.
    streams_cut: Family<ReasonLabels, Counter>,
    /// Snapshots in progress (`--max-watch-snapshots`), each holding a read transaction.
    pub snapshots: Gauge,
}

impl WatchMetrics {
    /// A watch ended for `reason` (client, compacted, slow, invalid).
    pub fn canceled(&self, reason: &'static str) {
        self.canceled.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// A stream was ended at once for `reason`: `stalled` (its client read nothing for
    /// `--watch-stall-deadline`) or `queued_bytes` (`--max-watch-queued-bytes` had no room).
    pub fn cut(&self, reason: &'static str) {
        self.streams_cut.get_or_create(&ReasonLabels { reason }).inc();
    }
}

/// Raft and the apply path, as the node driver sees them each turn.
pub struct RaftMetrics {
    pub term: Gauge,
    pub is_leader: Gauge,
    pub has_leader: Gauge,
    pub leader_changes: Counter,
    pub commit_index: Gauge,
    pub applied_index: Gauge,
    /// `commit_index - applied_index`.
    pub apply_lag: Gauge,
    /// The cluster version as of the applied state (`fsm::versions`).
    pub cluster_version: Gauge,
    pub proposals_pending: Gauge,
    pub proposals_committed: Counter,
    pub proposals_applied: Counter,
    pub proposals_failed: Counter,
    pub snapshots_installed: Counter,
    /// One observation per Ready that wrote: the redb commit, i.e. its fdatasync.
    pub ready_commit_seconds: Histogram,
    /// Log entries appended by each Ready that wrote: how much group commit batched.
    pub ready_entries: Histogram,
    /// One observation per batch of committed entries applied to the state machine (on the
    /// apply thread, before its commit).
    pub apply_seconds: Histogram,
    /// Entries in each applied batch.
    pub apply_batch_entries: Histogram,
    /// One observation per state commit (lazy or durable) that applied entries, on the apply
    /// thread.
    pub state_commit_seconds: Histogram,
    /// One observation per durable commit the apply thread makes on its own (on its timer, or
    /// when it goes idle), applying nothing: the pages of the lazily committed state written,
    /// the fsync asked for (it runs behind, on the state file's own thread).
    pub state_sync_seconds: Histogram,
    /// One observation per fsync of the state file that completed (on its own thread, behind
    /// the apply thread's durable commits).
    pub state_fsync_seconds: Histogram,
    /// The applied index as of the state's last durable commit whose fsync has completed.
    pub durable_index: Gauge,
    /// The last log index removed by compaction.
    pub compacted_index: Gauge,
    /// Bytes of raft log entries held in memory (`--log-cache-bytes`).
    pub log_cached_bytes: Gauge,
    /// Bytes of history rows stored (`--history-retention-bytes`).
    pub history_bytes: Gauge,
    /// Bytes of answers the apply thread sent the raft thread that it has not taken yet.
    pub apply_in_flight_bytes: Gauge,
    /// Reads confirmed by the leader, waiting for this member to apply up to their index.
    pub reads_awaiting_apply: Gauge,
    /// Live sessions, as this member's leases count them.
    pub sessions: Gauge,
    /// Bytes of client requests this member holds (`--max-pending-bytes`).
    pub pending_bytes: Gauge,
    /// Bytes of peer messages queued for the raft thread (`--max-peer-queue-bytes`).
    pub peer_queue_bytes: Gauge,
}

/// The labels of a peer message: which peer, which raft message type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerMessageLabels {
    pub peer: u64,
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: u64,
}

/// Raft messages between members, counted by the peer transport.
pub struct PeerMetrics {
    sent_messages: Family<PeerMessageLabels, Counter>,
    sent_bytes: Family<PeerMessageLabels, Counter>,
    received_messages: Family<PeerMessageLabels, Counter>,
    received_bytes: Family<PeerMessageLabels, Counter>,
    unreachable: Family<PeerLabels, Counter>,
    dropped: Family<PeerLabels, Counter>,
}

impl PeerMetrics {
    /// A message of `bytes` (encoded) handed to the stream to `peer`.
    pub fn sent(&self, peer: u64, r#type: &'static str, bytes: usize) {
        let labels = PeerMessageLabels { peer, r#type };
        self.sent_messages.get_or_create(&labels).inc();
        self.sent_bytes.get_or_create(&labels).inc_by(bytes as u64);
    }

    /// A message of `bytes` (encoded) received from `peer` and handed to the node.
    pub fn received(&self, peer: u64, r#type: &'static str, bytes: usize) {
        let labels = PeerMessageLabels { peer, r#type };
        self.received_messages.get_or_create(&labels).inc();
        self.received_bytes.get_or_create(&labels).inc_by(bytes as u64);
    }

    /// The stream to `peer` ended: its queued messages were dropped and raft was told.
    pub fn unreachable(&self, peer: u64) {
        self.unreachable.get_or_create(&PeerLabels { peer }).inc();
    }

    /// A message from `peer` was dropped: the node's peer queue was full.
    pub fn dropped(&self, peer: u64) {
        self.dropped.get_or_create(&PeerLabels { peer }).inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// gRPC calls on the client port, by method (the gRPC path) and status code.
pub struct GrpcMetrics {
    requests: Family<GrpcLabels, Counter>,
    duration: HistogramFamily<MethodLabels>,
}

/// Buckets for the Ready's commit and for apply: 25 µs (an fdatasync on a fast disk is ≈ 50 µs)
/// doubling to ≈ 1.6 s.
fn disk_buckets() -> Histogram {
    Histogram::new(exponential_buckets(25e-6, 2.0, 17))
}

/// Buckets for gRPC calls: 100 µs doubling to ≈ 13 s (a request times out after 10 s).
fn call_buckets() -> Histogram {
    Histogram::new(exponential_buckets(100e-6, 2.0, 18))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("latch");
        let raft = RaftMetrics {
            term: Gauge::default(),
            is_leader: Gauge::default(),
            has_leader: Gauge::default(),
            leader_changes: Counter::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            apply_lag: Gauge::default(),
            cluster_version: Gauge::default(),
            proposals_pending: Gauge::default(),
            proposals_committed: Counter::default(),
            proposals_applied: Counter::default(),
            proposals_failed: Counter::default(),
            snapshots_installed: Counter::default(),
            ready_commit_seconds: disk_buckets(),
            ready_entries: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            apply_seconds: disk_buckets(),
            apply_batch_entries: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            state_commit_seconds: disk_buckets(),
            state_sync_seconds: disk_buckets(),
            state_fsync_seconds: disk_buckets(),
            durable_index: Gauge::default(),
            compacted_index: Gauge::default(),
            log_cached_bytes: Gauge::default(),
            history_bytes: Gauge::default(),
            apply_in_flight_bytes: Gauge::default(),
            reads_awaiting_apply: Gauge::default(),
            sessions: Gauge::default(),
            pending_bytes: Gauge::default(),
            peer_queue_bytes: Gauge::default(),
        };
        let r = &mut registry;
        r.register("raft_term", "The raft term this member is in", raft.term.clone());
        r.register("raft_is_leader", "1 if this member is the leader, else 0", raft.is_leader.clone());
        r.register("raft_has_leader", "1 if this member knows a leader, else 0", raft.has_leader.clone());
        r.register(
            "raft_leader_changes",
            "Times this member saw a new leader (a change of the leader it knows to another one) since it started",
            raft.leader_changes.clone(),
        );
        r.register("raft_commit_index", "The highest log index known committed", raft.commit_index.clone());
        r.register(
            "raft_applied_index",
            "The highest log index applied to the state machine",
            raft.applied_index.clone(),
        );
        r.register(
            "cluster_version",
            "The command version every member proposes at, as of this member's applied state: the lowest build among the members once the leader raised it (docs/architecture.md, \"Upgrades\")",
            raft.cluster_version.clone(),
        );
        r.register(
            "raft_apply_lag_entries",
            "Committed log entries not yet applied (commit index - applied index)",
            raft.apply_lag.clone(),
        );
        r.register(
            "proposals_pending",
            "Proposals made on this member and not yet answered",
            raft.proposals_pending.clone(),
        );
        r.register(
            "proposals_committed",
            "Log entries this member learned committed since it started",
            raft.proposals_committed.clone(),
        );
        r.register(
            "proposals_applied",
            "Log entries this member applied to its state machine since it started",
            raft.proposals_applied.clone(),
        );
        r.register(
            "proposals_failed",
            "Proposals made on this member that were answered with an error (no leader, timed out, shutting down)",
            raft.proposals_failed.clone(),
        );
        r.register(
            "raft_snapshots_installed",
            "Snapshots installed from a leader since this member started",
            raft.snapshots_installed.clone(),
        );
        r.register_with_unit(
            "raft_ready_commit_duration",
            "Duration of each Ready's commit of the raft log (its fdatasync)",
            Unit::Seconds,
            raft.ready_commit_seconds.clone(),
        );
        r.register(
            "raft_ready_entries",
            "Raft log entries appended by each Ready's commit (the group commit batch)",
            raft.ready_entries.clone(),
        );
        r.register_with_unit(
            "raft_apply_duration",
            "Duration of applying one batch of committed entries to the state machine (apply thread, before its commit)",
            Unit::Seconds,
            raft.apply_seconds.clone(),
        );
        r.register(
            "raft_apply_batch_entries",
            "Committed entries applied in each state transaction",
            raft.apply_batch_entries.clone(),
        );
        r.register_with_unit(
            "state_commit_duration",
            "Duration of each commit of the state machine (apply thread; most are lazy, one in a while fsyncs)",
            Unit::Seconds,
            raft.state_commit_seconds.clone(),
        );
        r.register_with_unit(
            "state_sync_duration",
            "Duration of each durable commit of the state made on the apply thread's timer or when it goes idle (it writes the pages lazy commits left in redb's write buffer and asks for one fsync, which runs behind on the state file's own thread)",
            Unit::Seconds,
            raft.state_sync_seconds.clone(),
        );
        r.register_with_unit(
            "state_fsync_duration",
            "Duration of each fsync of the state file that completed (on the state file's own thread, behind the durable commits of the apply thread; the log is compacted only past a state whose fsync completed)",
            Unit::Seconds,
            raft.state_fsync_seconds.clone(),
        );
        r.register(
            "raft_durable_applied_index",
            "The applied index as of the state's last durable commit whose fsync has completed (the log is never compacted past it)",
            raft.durable_index.clone(),
        );

        r.register(
            "raft_compacted_index",
            "The last log index removed by compaction",
            raft.compacted_index.clone(),
        );
        r.register_with_unit(
            "history",
            "Keys and values of the history rows stored (bounded by --history-retention-bytes; compacted rows count until they are removed)",
            Unit::Bytes,
            raft.history_bytes.clone(),
        );
        r.register_with_unit(
            "apply_in_flight",
            "Answers the apply thread sent the raft thread that it has not taken yet (past 256 MiB, answers leave without their data)",
            Unit::Bytes,
            raft.apply_in_flight_bytes.clone(),
        );
        r.register_with_unit(
            "raft_log_cached",
            "Raft log entries held in memory (bounded by --log-cache-bytes; older ones are read from disk)",
            Unit::Bytes,
            raft.log_cached_bytes.clone(),
        );
        r.register("sessions", "Live sessions, as this member's leases count them", raft.sessions.clone());
        r.register(
            "reads_awaiting_apply",
            "Linearizable reads confirmed by the leader, waiting for this member to apply up to their index",
            raft.reads_awaiting_apply.clone(),
        );
        r.register_with_unit(
            "pending_requests",
            "Client requests this member holds: queued, proposed or waiting to read (bounded by --max-pending-bytes)",
            Unit::Bytes,
            raft.pending_bytes.clone(),
        );
        r.register_with_unit(
            "peer_queue",
            "Raft messages from peers queued for the raft thread (bounded by --max-peer-queue-bytes)",
            Unit::Bytes,
            raft.peer_queue_bytes.clone(),
        );

        let peer = PeerMetrics {
            sent_messages: Family::default(),
            sent_bytes: Family::default(),
            received_messages: Family::default(),
            received_bytes: Family::default(),
            unreachable: Family::default(),
            dropped: Family::default(),
        };
        r.register(
            "peer_dropped_messages",
            "Raft messages from a peer dropped because this member's peer queue was full (--max-peer-queue-bytes)",
            peer.dropped.clone(),
        );
        r.register(
            "peer_sent_messages",
            "Raft messages handed to the stream to a peer, by peer and message type",
            peer.sent_messages.clone(),
        );
        r.register_with_unit(
            "peer_sent",
            "Encoded size of the raft messages sent to a peer, by peer and message type",
            Unit::Bytes,
            peer.sent_bytes.clone(),
        );
        r.register(
            "peer_received_messages",
            "Raft messages received from a peer, by peer and message type",
            peer.received_messages.clone(),
        );
        r.register_with_unit(
            "peer_received",
            "Encoded size of the raft messages received from a peer, by peer and message type",
            Unit::Bytes,
            peer.received_bytes.clone(),
        );
        r.register(
            "peer_unreachable",
            "Times the message stream to a peer failed (raft was told the peer is unreachable)",
            peer.unreachable.clone(),
        );

        let grpc = GrpcMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(call_buckets as fn() -> Histogram),
        };
        r.register(
            "grpc_requests",
            "gRPC calls served on the client port, by method (gRPC path) and status code",
            grpc.requests.clone(),
        );
        r.register_with_unit(
            "grpc_request_duration",
            "Duration of gRPC calls on the client port, by method, until the status was sent",
            Unit::Seconds,
            grpc.duration.clone(),
        );
        let watch = WatchMetrics {
            streams: Gauge::default(),
            watches: Gauge::default(),
            events_sent: Counter::default(),
            canceled: Family::default(),
            window_revisions: Gauge::default(),
            window_bytes: Gauge::default(),
            queued_bytes: Gauge::default(),
            streams_cut: Family::default(),
            snapshots: Gauge::default(),
        };
        r.register("watch_streams", "Open Watch streams on this member", watch.streams.clone());
        r.register("watches", "Watches on this member's open streams", watch.watches.clone());
        r.register(
            "watch_events_sent",
            "Events sent to watches (an event sent to n watches counts n)",
            watch.events_sent.clone(),
        );
        r.register(
            "watch_canceled",
            "Watches ended by a cancel, by reason (client, compacted, slow, invalid, unavailable, resource_exhausted)",
            watch.canceled.clone(),
        );
        r.register(
            "watch_window_revisions",
            "Revisions with changes held in the shared window of recent revisions",
            watch.window_revisions.clone(),
        );
        r.register_with_unit(
            "watch_window",
            "Bytes held by the shared window of recent revisions: encoded events and the memory around them (structs, keys, allocations), at most 64 MiB",
            Unit::Bytes,
            watch.window_bytes.clone(),
        );
        r.register_with_unit(
            "watch_queued",
            "Bytes of watch responses queued for their clients, over every stream (at most 4 MiB each, and --max-watch-queued-bytes in all)",
            Unit::Bytes,
            watch.queued_bytes.clone(),
        );
        r.register(
            "watch_streams_cut",
            "Watch streams ended at once by the member, what was queued for them dropped, by reason (stalled: the client read nothing for --watch-stall-deadline; queued_bytes: no room in --max-watch-queued-bytes)",
            watch.streams_cut.clone(),
        );
        r.register(
            "watch_snapshots",
            "Snapshots of compacted watches being sent, each holding a read transaction (bounded by --max-watch-snapshots)",
            watch.snapshots.clone(),
        );
        let dns = DnsMetrics { answered: Family::default() };
        r.register(
            "dns_queries",
            "DNS queries answered by this member, by response code",
            dns.answered.clone(),
        );
        let disk = DiskMetrics {
            state_file: Gauge::default(),
            raft_log_files: Gauge::default(),
            free: Gauge::default(),
            measuring: Default::default(),
        };
        r.register_with_unit(
            "state_file",
            "Size of the state file (state.redb), as scraped",
            Unit::Bytes,
            disk.state_file.clone(),
        );
        r.register_with_unit(
            "raft_log_files",
            "Size of the raft log's segment files (preallocated 64 MiB each), as scraped",
            Unit::Bytes,
            disk.raft_log_files.clone(),
        );
        r.register_with_unit(
            "data_dir_free",
            "Space left on the data dir's file system for unprivileged writers, as scraped (a member stops at its first failed write: alert well before 0)",
            Unit::Bytes,
            disk.free.clone(),
        );
        let state_check = StateCheckMetrics { points: Family::default(), agreed_index: Gauge::default() };
        r.register(
            "state_check_points",
            "Check points at which this member compared its state hash with its peers', by verdict (alert on split)",
            state_check.points.clone(),
        );
        r.register(
            "state_check_agreed_index",
            "The last check point's log index at which a peer's state hash equalled this member's",
            state_check.agreed_index.clone(),
        );
        Metrics { registry, raft, peer, grpc, watch, dns, disk, state_check }
    }

    /// The OpenMetrics text of every metric (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_metrics_carry_the_latch_prefix_units_and_labels() {
        let m = Metrics::new();
        m.raft.term.set(7);
        m.raft.ready_commit_seconds.observe(0.0001);
        m.peer.sent(2, "MsgAppend", 100);
        let text = m.encode();
        assert!(text.contains("latch_raft_term 7\n"), "term gauge missing:\n{text}");
        assert!(
            text.contains("latch_raft_ready_commit_duration_seconds_count 1\n"),
            "commit histogram missing:\n{text}"
        );
        assert!(
            text.contains("latch_peer_sent_bytes_total{peer=\"2\",type=\"MsgAppend\"} 100\n"),
            "peer bytes missing:\n{text}"
        );
        assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF:\n{text}");
    }
}
