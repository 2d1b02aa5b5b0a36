//! Storage: a member's data dir holds the raft log and hard state in a write-ahead log of
//! segment files (`raft/`, [`log`], which implements `raft::Storage` over the [`files`]
//! abstraction), written by the raft thread and fsynced with every append; and the state
//! machine's tables in one redb file (`state.redb`, written by `fsm` on the apply thread, made
//! durable lazily), whose schema lives in [`schema`].
//!
//! Imports nothing above it. Where the raft log needs the layers above (a snapshot of the
//! applied state for raft-rs), it declares the narrow trait it needs: [`SnapshotSource`].
//!
//! A data file records which cluster and member wrote it; opening it as anything else fails
//! with a message naming the file, so a misconfigured node never joins the wrong cluster.

pub mod files;
pub mod log;
pub mod schema;
pub mod sync_behind;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableTable, StorageBackend, TableHandle};

pub use log::{Identity, LogStore, PreparedSnapshot, SnapshotSource};
pub use sync_behind::{SyncBehind, Syncs};

/// The raft log's directory inside `--data-dir`.
pub const LOG_DIR: &str = "raft";
/// The state machine's file inside `--data-dir`.
pub const STATE_FILE: &str = "state.redb";

/// A member's two stores.
pub struct Stores {
    /// The raft log and hard state.
    pub log: Box<dyn files::Dir>,
    /// The state machine.
    pub state: Arc<Database>,
    /// Where the state file's fsyncs stand: a durable commit is durable once its fsync, run
    /// behind the committing thread, has completed ([`sync_behind`]).
    pub state_syncs: Arc<Syncs>,
}

/// What a failure to open the state file says of the file: an I/O error (a read-only file
/// system, a failing disk) says nothing of its contents, which must not be called corrupt (an
/// operator told so may delete it).
fn open_failure(source: &redb::DatabaseError) -> &'static str {
    match source {
        // A file cut short reads as one too: that says something of the contents.
        redb::DatabaseError::Storage(redb::StorageError::Io(e))
            if e.kind() != std::io::ErrorKind::UnexpectedEof =>
        {
            " (an I/O error: the file may be intact)"
        }
        _ => " (corrupt, or not a Latch data file)",
    }
}

/// What a member refused for damage to its data dir is told to do: a copy taken since it last
/// ran holds everything it acknowledged; an older one does not, and is refused once its leader
/// sees that (`core::CoreError::ForgotEntries`); there is no member replace yet.
pub const RESTORE: &str = "restore its whole data dir from a copy taken since it last ran (an \
     older copy has forgotten entries it acknowledged, and is refused), or run the cluster \
     without it";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create data dir {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open data file {path}{}: {source}", open_failure(source))]
    Open { path: PathBuf, source: Box<redb::DatabaseError> },
    /// The state file is locked by another process: it, and the whole data dir (whose raft
    /// log is touched only once the state file is open), belong to a member that runs.
    #[error("data file {path} is in use by another process: is a latch server already running on this --data-dir?")]
    InUse { path: PathBuf },
    #[error(
        "data file {path} belongs to cluster {found:016x}, not {expected:016x}: this member was \
         started with another --initial-cluster or --initial-cluster-token (or --dev) than its data \
         dir was created with; start it with the flags it was created with (a typo here loses no \
         data), or give a member of another cluster a data dir of its own"
    )]
    WrongCluster { path: PathBuf, found: u64, expected: u64 },
    #[error("data file {path} belongs to member {found}, not {expected}: use this member's own --data-dir")]
    WrongMember { path: PathBuf, found: u64, expected: u64 },
    #[error("data file {path} has format {found}; this build reads format {expected}")]
    Format { path: PathBuf, found: u64, expected: u64 },
    #[error("data file is corrupt: {0}")]
    Corrupt(String),
    #[error("storage: {0}")]
    Redb(Box<redb::Error>),
    #[error("raft log: {0}")]
    Log(String),
}

impl StorageError {
    /// Wraps any redb error type.
    pub fn redb(e: impl Into<redb::Error>) -> StorageError {
        StorageError::Redb(Box::new(e.into()))
    }
}

/// Opens (creating if missing) the log directory and the state file in `dir`; the state file is
/// checked to belong to this cluster and member here, the log's segments when they are loaded.
/// redb keeps up to `cache_bytes` of the state file's pages in memory.
pub fn open(dir: &Path, identity: Identity, cache_bytes: usize) -> Result<Stores, StorageError> {
    std::fs::create_dir_all(dir)
        .map_err(|source| StorageError::CreateDir { path: dir.to_path_buf(), source })?;
    let old = dir.join("latch.redb");
    if old.exists() {
        // Format 1 kept everything in this file; starting beside it would start empty.
        return Err(StorageError::Format { path: old, found: 1, expected: schema::FORMAT_VERSION });
    }
    let log_dir = dir.join(LOG_DIR);
    let log =
        files::FsDir::open(&log_dir).map_err(|source| StorageError::CreateDir { path: log_dir, source })?;
    let (state, state_syncs) = open_file(dir, STATE_FILE, identity, cache_bytes)?;
    Ok(Stores { log: Box::new(log), state, state_syncs })
}

fn open_file(
    dir: &Path,
    name: &str,
    identity: Identity,
    cache_bytes: usize,
) -> Result<(Arc<Database>, Arc<Syncs>), StorageError> {
    // redb asserts on some damage (a page whose type is not what its tree says, met by the
    // repair or the identity check): a panic there is reported as damage to the file, naming
    // it, rather than as a crash of the server.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        open_file_unguarded(dir, name, identity, cache_bytes)
    }));
    opened.unwrap_or_else(|_| {
        Err(StorageError::Corrupt(format!(
            "{}: redb failed on it (a panic, printed above): the file is damaged; {RESTORE}",
            dir.join(name).display()
        )))
    })
}

fn open_file_unguarded(
    dir: &Path,
    name: &str,
    identity: Identity,
    cache_bytes: usize,
) -> Result<(Arc<Database>, Arc<Syncs>), StorageError> {
    let path = dir.join(name);
    let fresh = !path.exists();
    // redb's `Builder::create`, with the fsyncs behind the committing thread.
    let create = || -> Result<(Database, Arc<Syncs>), redb::DatabaseError> {
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let (backend, syncs) = SyncBehind::on_a_thread(redb::backends::FileBackend::new(file)?)?;
        Ok((Database::builder().set_cache_size(cache_bytes).create_with_backend(backend)?, syncs))
    };
    let opened = match create() {
        Err(redb::DatabaseError::UpgradeRequired(REDB2_FORMAT)) => {
            upgrade_format(&path, identity, cache_bytes)?;
            create()
        }
        opened => opened,
    };
    let (db, syncs) = opened.map_err(|source| match source {
        redb::DatabaseError::DatabaseAlreadyOpen => StorageError::InUse { path: path.clone() },
        source => StorageError::Open { path: path.clone(), source: Box::new(source) },
    })?;
    if fresh {
        // The new file's directory entry must be durable before anything in the file counts,
        // and after what redb wrote to create it (its fsync runs behind).
        syncs.wait_all().map_err(fsync_failed)?;
        files::sync_dir(dir).map_err(|source| StorageError::CreateDir { path: dir.to_path_buf(), source })?;
    }
    check_identity(&db, &syncs, &path, identity)?;
    Ok((Arc::new(db), syncs))
}

/// The file format redb 2 writes (its `FILE_FORMAT_VERSION2`): what state files made by builds
/// before the move to redb 4 hold.
const REDB2_FORMAT: u8 = 2;

/// Upgrades, in place, a state file redb 2 wrote to the file format this build's redb reads,
/// with redb 2's own upgrade (every table and row kept; durable before it returns). Why the
/// move: redb 2 could leave a file it cannot open after a machine's crash during a durable
/// commit that grew the file (docs/architecture.md). A file of another cluster or member is
/// refused before anything in it changes.
fn upgrade_format(path: &Path, identity: Identity, cache_bytes: usize) -> Result<(), StorageError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        StorageError::Corrupt(format!("{}: {what} to upgrade its file format: {e}", path.display()))
    };
    // redb 2 asserts on some files a machine's crash tore (the reason for the move): a panic
    // there is reported as what it is, not as a crash of the server.
    let upgraded = std::panic::catch_unwind(|| -> Result<(), StorageError> {
        let mut old = redb2::Builder::new().set_cache_size(cache_bytes).open(path).map_err(|e| match e {
            redb2::DatabaseError::DatabaseAlreadyOpen => StorageError::InUse { path: path.to_path_buf() },
            e => failed("cannot open it", &e),
        })?;
        let txn = old.begin_read().map_err(|e| failed("cannot read it", &e))?;
        let meta: redb2::TableDefinition<&str, u64> = redb2::TableDefinition::new(schema::NODE_META.name());
        let found = match txn.open_table(meta) {
            Ok(meta) => {
                let get = |k: &str| -> Result<Option<u64>, StorageError> {
                    Ok(meta.get(k).map_err(|e| failed("cannot read it", &e))?.map(|v| v.value()))
                };
                [get(schema::NODE_CLUSTER_ID)?, get(schema::NODE_MEMBER_ID)?, get(schema::NODE_FORMAT)?]
            }
            Err(redb2::TableError::TableDoesNotExist(_)) => [None; 3],
            Err(e) => return Err(failed("cannot read it", &e)),
        };
        drop(txn);
        judge_identity(path, found, identity)?;
        old.upgrade().map_err(|e| failed("redb could not upgrade it", &e))?;
        Ok(())
    });
    upgraded.unwrap_or_else(|_| {
        Err(failed(
            &format!("redb 2 failed on it (a crash may have torn it; {RESTORE})"),
            &"a panic, printed above",
        ))
    })?;
    tracing::info!(file = %path.display(), "state file upgraded to redb's current file format");
    Ok(())
}

/// Opens the state store on any redb backend (the simulator's fault-injecting one), with a
/// cache of `cache_bytes`. Its fsyncs run behind the commits that ask for them, each when
/// something next needs it done ([`SyncBehind::when_needed`]: deterministic, no thread).
pub fn open_with_backend(
    backend: impl StorageBackend,
    identity: Identity,
    cache_bytes: usize,
) -> Result<(Arc<Database>, Arc<Syncs>), StorageError> {
    let path = PathBuf::from("<backend>");
    let (backend, syncs) = SyncBehind::when_needed(backend);
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .create_with_backend(backend)
        .map_err(|source| StorageError::Open { path: path.clone(), source: Box::new(source) })?;
    check_identity(&db, &syncs, &path, identity)?;
    Ok((Arc::new(db), syncs))
}

/// Checks that the state file belongs to this cluster and member (recording both in a new one),
/// durably before it returns.
fn check_identity(db: &Database, syncs: &Syncs, path: &Path, identity: Identity) -> Result<(), StorageError> {
    use schema::*;
    let txn = db.begin_write().map_err(StorageError::redb)?;
    {
        let mut meta = txn.open_table(NODE_META).map_err(StorageError::redb)?;
        let get = |t: &redb::Table<&str, u64>, k: &str| -> Result<Option<u64>, StorageError> {
            Ok(t.get(k).map_err(StorageError::redb)?.map(|v| v.value()))
        };
        let found = [get(&meta, NODE_CLUSTER_ID)?, get(&meta, NODE_MEMBER_ID)?, get(&meta, NODE_FORMAT)?];
        if judge_identity(path, found, identity)? == Owner::Unset {
            meta.insert(NODE_CLUSTER_ID, identity.cluster_id).map_err(StorageError::redb)?;
            meta.insert(NODE_MEMBER_ID, identity.member_id).map_err(StorageError::redb)?;
            meta.insert(NODE_FORMAT, FORMAT_VERSION).map_err(StorageError::redb)?;
        }
    }
    txn.commit().map_err(StorageError::redb)?;
    syncs.wait_all().map_err(fsync_failed)
}

/// A failed fsync of the state file, as the storage error it is.
pub fn fsync_failed(e: std::io::Error) -> StorageError {
    StorageError::redb(redb::StorageError::from(e))
}

/// What a file's `node_meta` says of whom it belongs to.
#[derive(Debug, PartialEq, Eq)]
enum Owner {
    /// Nothing yet: a new file.
    Unset,
    /// This cluster's and member's, in this format.
    Ours,
}

/// Judges the cluster id, member id and format a file records (`found`, in that order).
fn judge_identity(
    path: &Path,
    found: [Option<u64>; 3],
    Identity { cluster_id, member_id }: Identity,
) -> Result<Owner, StorageError> {
    use schema::FORMAT_VERSION;
    let path = path.to_path_buf();
    match found {
        [None, None, None] => Ok(Owner::Unset),
        [Some(c), Some(m), Some(f)] => {
            if f != FORMAT_VERSION {
                return Err(StorageError::Format { path, found: f, expected: FORMAT_VERSION });
            }
            if c != cluster_id {
                return Err(StorageError::WrongCluster { path, found: c, expected: cluster_id });
            }
            if m != member_id {
                return Err(StorageError::WrongMember { path, found: m, expected: member_id });
            }
            Ok(Owner::Ours)
        }
        _ => Err(StorageError::Corrupt(format!(
            "{}: table node_meta is missing some of cluster_id, member_id, format",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableDatabase as _;

    #[test]
    fn a_state_file_that_cannot_be_read_is_not_called_corrupt() {
        let open =
            |source| StorageError::Open { path: "d/state.redb".into(), source: Box::new(source) }.to_string();
        let io = std::io::Error::from_raw_os_error(30);
        let read_only = open(redb::DatabaseError::Storage(redb::StorageError::Io(io)));
        assert!(read_only.starts_with("cannot open data file d/state.redb (an I/O error"), "{read_only}");
        assert!(!read_only.contains("corrupt"), "{read_only}");
        let damaged = open(redb::DatabaseError::Storage(redb::StorageError::Corrupted("bad page".into())));
        assert!(damaged.contains("(corrupt, or not a Latch data file): "), "{damaged}");
    }

    /// A state file redb 2 wrote (file format 2, as every build before the move to redb 4 left
    /// it) opens: upgraded in place, its identity and rows kept; and it is still checked
    /// against the cluster and member it was made for.
    #[test]
    fn a_state_file_written_by_redb_2_is_upgraded_in_place_and_keeps_its_rows() {
        let dir = tempfile::tempdir().expect("a temporary dir");
        let path = dir.path().join(STATE_FILE);
        {
            let old = redb2::Database::create(&path).expect("redb 2 creates a file");
            let txn = old.begin_write().expect("a redb 2 write");
            {
                let meta: redb2::TableDefinition<&str, u64> = redb2::TableDefinition::new("node_meta");
                let mut meta = txn.open_table(meta).expect("node_meta");
                meta.insert(schema::NODE_CLUSTER_ID, 7).expect("cluster id");
                meta.insert(schema::NODE_MEMBER_ID, 2).expect("member id");
                meta.insert(schema::NODE_FORMAT, schema::FORMAT_VERSION).expect("format");
                let kv: redb2::TableDefinition<&[u8], &[u8]> = redb2::TableDefinition::new("kv");
                txn.open_table(kv)
                    .expect("kv")
                    .insert(b"greeting".as_slice(), b"hello".as_slice())
                    .expect("row");
            }
            txn.commit().expect("redb 2 commits");
        }

        let refused = open(dir.path(), Identity { cluster_id: 8, member_id: 2 }, 1 << 20)
            .err()
            .expect("another cluster's file is refused");
        assert!(matches!(refused, StorageError::WrongCluster { found: 7, .. }), "got {refused}");
        let said = refused.to_string();
        assert!(
            said.contains("--initial-cluster-token")
                && said.contains("start it with the flags it was created with"),
            "a mistyped token is named, and the advice keeps the data dir: {said}"
        );
        drop(redb2::Database::open(&path).expect("a refused file is left as redb 2 wrote it, not upgraded"));
        let stores = open(dir.path(), Identity { cluster_id: 7, member_id: 2 }, 1 << 20)
            .expect("the upgraded file opens");
        let txn = stores.state.begin_read().expect("a read");
        let kv = txn.open_table(schema::KV).expect("the kv table survived");
        let value = kv.get(b"greeting".as_slice()).expect("readable").map(|v| v.value().to_vec());
        assert_eq!(value.as_deref(), Some(b"hello".as_slice()), "the row redb 2 wrote is there");
    }

    /// A file redb 2 grew to tens of MiB over many commits — rows deleted and overwritten, so
    /// with freed pages and a long allocation history — keeps exactly its rows through the
    /// upgrade, and redb 4 goes on writing to it and reopening it. (A file past redb 2's first
    /// 4 GiB region is not made here.)
    #[test]
    fn a_large_state_file_written_by_redb_2_over_many_commits_keeps_exactly_its_rows() {
        const ROWS: u32 = 60_000;
        let dir = tempfile::tempdir().expect("a temporary dir");
        let path = dir.path().join(STATE_FILE);
        let key = |i: u32| format!("k/{i:08}").into_bytes();
        let value = |i: u32, round: u32| vec![(i % 251) as u8 ^ round as u8; 200 + (i % 7) as usize * 50];
        // What the file must hold at the end: key → the round of its last write.
        let mut expected = std::collections::BTreeMap::new();
        {
            let old = redb2::Database::create(&path).expect("redb 2 creates a file");
            let kv: redb2::TableDefinition<&[u8], &[u8]> = redb2::TableDefinition::new(schema::KV.name());
            let meta: redb2::TableDefinition<&str, u64> =
                redb2::TableDefinition::new(schema::NODE_META.name());
            let txn = old.begin_write().expect("a redb 2 write");
            {
                let mut meta = txn.open_table(meta).expect("node_meta");
                meta.insert(schema::NODE_CLUSTER_ID, 7).expect("cluster id");
                meta.insert(schema::NODE_MEMBER_ID, 2).expect("member id");
                meta.insert(schema::NODE_FORMAT, schema::FORMAT_VERSION).expect("format");
            }
            txn.commit().expect("redb 2 commits");
            for round in 0..12u32 {
                let txn = old.begin_write().expect("a redb 2 write");
                {
                    let mut table = txn.open_table(kv).expect("kv");
                    // Each round writes a slice of new rows, overwrites some older ones and
                    // deletes others: pages are freed and reused throughout the file.
                    for i in round * ROWS / 12..(round + 1) * ROWS / 12 {
                        table.insert(key(i).as_slice(), value(i, round).as_slice()).expect("insert");
                        expected.insert(i, round);
                    }
                    for i in (0..round * ROWS / 12).filter(|i| i % 5 == round % 5) {
                        if i % 2 == 0 {
                            table.insert(key(i).as_slice(), value(i, round).as_slice()).expect("overwrite");
                            expected.insert(i, round);
                        } else {
                            table.remove(key(i).as_slice()).expect("remove");
                            expected.remove(&i);
                        }
                    }
                }
                txn.commit().expect("redb 2 commits");
            }
        }
        let grown = std::fs::metadata(&path).expect("the file").len();
        assert!(grown > 16 << 20, "the file redb 2 left should be large (> 16 MiB), is {grown} bytes");

        let check = |db: &Database, expected: &std::collections::BTreeMap<u32, u32>| {
            let txn = db.begin_read().expect("a read");
            let kv = txn.open_table(schema::KV).expect("the kv table survived");
            let mut rows = kv.iter().expect("iterable");
            for (&i, &round) in expected {
                let (k, v) = rows.next().expect("as many rows as written").expect("a readable row");
                assert_eq!(k.value(), key(i).as_slice(), "row keys in order, none lost or added");
                assert_eq!(v.value(), value(i, round).as_slice(), "row {i} holds its last write");
            }
            assert!(rows.next().is_none(), "no row beyond those written");
        };
        let stores = open(dir.path(), Identity { cluster_id: 7, member_id: 2 }, 1 << 20)
            .expect("the upgraded file opens");
        check(&stores.state, &expected);
        // redb 4 goes on writing to the converted file (allocating from what redb 2 freed).
        let txn = stores.state.begin_write().expect("a redb 4 write");
        {
            let mut kv = txn.open_table(schema::KV).expect("kv");
            for i in (0..ROWS).filter(|i| i % 3 == 0) {
                kv.insert(key(i).as_slice(), value(i, 99).as_slice()).expect("insert");
                expected.insert(i, 99);
            }
        }
        txn.commit().expect("redb 4 commits");
        drop(stores);
        let stores =
            open(dir.path(), Identity { cluster_id: 7, member_id: 2 }, 1 << 20).expect("it opens again");
        check(&stores.state, &expected);
    }
}
