//! Every redb table of a member's state file, in one place, and the data format version (also
//! written in every raft log segment's header). A table's key and value types are its
//! contract: changing one is a data format change and needs a new table name.

use redb::TableDefinition;

/// Identity of the data file: which cluster and member wrote it, and its format version.
/// Written once when the node first starts; checked at every start after.
pub const NODE_META: TableDefinition<&str, u64> = TableDefinition::new("node_meta");
pub const NODE_CLUSTER_ID: &str = "cluster_id";
pub const NODE_MEMBER_ID: &str = "member_id";
pub const NODE_FORMAT: &str = "format";
/// The data format this build writes and reads. Format 1 (the first build) kept the raft log
/// and the state in one redb file, with `latch.v1` messages in the log; a format-1 data dir
/// has no raft log directory and is refused by name (its `latch.redb` is not opened). Format 2
/// kept no history (and a session's creation took no revision): its state could not answer
/// reads at past revisions or watches truthfully, so it is refused too (the log segments' and
/// the state's format both say which).
pub const FORMAT_VERSION: u64 = 3;

/// The state machine's position: written in the same transaction as the state it describes,
/// so that after a crash the log is replayed from exactly the entry after `applied_index`.
pub const FSM_META: TableDefinition<&str, u64> = TableDefinition::new("fsm_meta");
pub const FSM_APPLIED_INDEX: &str = "applied_index";
pub const FSM_APPLIED_TERM: &str = "applied_term";
/// The store's global revision (stored as u64, exposed as i64 like etcd's).
pub const FSM_REVISION: &str = "revision";
/// Bytes of the history rows stored (keys and values, compacted rows not yet purged
/// included), for `--history-retention-bytes`. A member's own bookkeeping, kept with the
/// position: a function of the history table, so not part of snapshots or the state hash.
pub const FSM_HISTORY_BYTES: &str = "history_bytes";
/// The applied index the count above was written at. A count at another index (a restored
/// state, or one a build that did not keep the count applied to) is counted again by a scan.
pub const FSM_HISTORY_BYTES_INDEX: &str = "history_bytes_index";
/// The index of the snapshot the state was last restored from (absent: never). A member's own
/// bookkeeping, not part of snapshots or the state hash: peers judging their states at check
/// points count a state copied from another member's as no witness of its own
/// (`core::state_check::copied`).
pub const FSM_INSTALLED_AT: &str = "installed_at";
/// The backup the state descends from (`fsm::RestoredFrom`): the checksum of the snapshot file
/// the cluster's first state was restored from (`latch snapshot restore`; absent: never), and
/// the generations that restore skipped. Not part of the state hash; carried in a snapshot's
/// header, so that every member of a restored cluster holds it, however it got the state: a
/// first member starting beside one that descends from another backup (or from none) is
/// refused (`server::admission`).
pub const FSM_RESTORED_FROM: &str = "restored_from";
pub const FSM_RESTORED_SKIP: &str = "restored_skip_generations";

/// Raft's configuration (which members vote, which only learn) as of the applied index:
/// `current` → a raft `ConfState`, protobuf-encoded by `core`. Written in the same transaction
/// as the entry that changed it (or the snapshot that carried it), so that a member restarts
/// with the configuration of the state it restarts from; absent until the first change (the
/// configuration is then `--initial-cluster`'s). Not part of snapshots' rows or the state hash:
/// a snapshot carries it in its raft metadata.
pub const CONF_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("conf_state");
pub const CONF_STATE_CURRENT: &str = "current";

// The state machine's domain tables are all `&[u8] → &[u8]` (see `fsm::Domain`), so that the
// snapshot stream, restore and the state hash handle every domain alike. Their names are part
// of the snapshot format.

/// The current key-value state: key → `latch.internal.v1.StoredValue`.
pub const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

/// Remembered requests: request id → `latch.internal.v1.Remembered`.
pub const REQUESTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("requests");
/// The same request ids by the index that applied them (8 bytes, big endian), so that the oldest
/// can be forgotten.
pub const REQUESTS_BY_INDEX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("requests_by_index");
/// Bookkeeping of the request memory: `bytes` → the bytes its rows count
/// (`fsm::requests::counted_bytes`, at least what they hold; 8 bytes, big endian).
pub const REQUESTS_META: TableDefinition<&[u8], &[u8]> = TableDefinition::new("requests_meta");
pub const REQUESTS_META_BYTES: &str = "bytes";

/// Sequential keys: prefix → the prefix's next counter (8 bytes, big endian).
pub const SEQUENCES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sequences");

/// Sessions: session id → `latch.internal.v1.SessionRow`.
pub const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
/// The ephemeral keys of each session: session id, a 0 byte, the key → empty.
pub const SESSION_KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("session_keys");

/// Locks and elections: the space's byte (`L` lock, `E` election), then the name →
/// `latch.internal.v1.LockRow`.
pub const LOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("locks");
/// The locks each session holds or awaits: session id, a 0 byte, the lock's key → empty.
pub const SESSION_LOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("session_locks");
/// The lock generation counter: `generation` → the last generation granted (8 bytes, big endian).
pub const LOCK_META: TableDefinition<&[u8], &[u8]> = TableDefinition::new("lock_meta");
pub const LOCK_META_GENERATION: &str = "generation";

/// The service registry: `service/id` → `latch.internal.v1.InstanceRow`.
pub const REGISTRY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("registry");
/// The instances each session owns: session id, a 0 byte, `service/id` → empty.
pub const SESSION_INSTANCES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("session_instances");

/// The members whose start the cluster recorded: member id (8 bytes, big endian) → the log
/// index of the entry that first recorded it (8 bytes, big endian). See `fsm::members`.
pub const MEMBERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("members");

/// The members added at run time: member id (8 bytes, big endian) → the log index of the change
/// that added it (8 bytes, big endian) followed by its peer address (UTF-8). A row stays once the
/// member is removed: an id is never added twice. See `fsm::members`.
pub const ADDED_MEMBERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("added_members");

/// The cluster version: `version` → the command version every member proposes at (4 bytes,
/// big endian), absent until first raised (the cluster then runs [`crate::fsm::versions::UNRAISED`]).
/// See `fsm::versions`.
pub const CLUSTER_VERSION: TableDefinition<&[u8], &[u8]> = TableDefinition::new("cluster_version");
pub const CLUSTER_VERSION_KEY: &[u8] = b"version";

/// The history of the key-value state: revision (8 bytes, big endian) and the change's index
/// in it (4 bytes, big endian) → `latch.internal.v1.HistoryEvent` (see `fsm::history`).
pub const HISTORY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("history");
/// `compact` → the compact revision (8 bytes, big endian).
pub const HISTORY_META: TableDefinition<&[u8], &[u8]> = TableDefinition::new("history_meta");
pub const HISTORY_META_COMPACT: &str = "compact";
