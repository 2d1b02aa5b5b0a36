//! Snapshot files: a member's whole replicated state at one applied index, in a file an
//! operator keeps (`latch snapshot save`, streamed by the Maintenance service,
//! `api::maintenance`), checks (`latch snapshot status`) and restores a new cluster from
//! (`latch snapshot restore`) when the old one is lost.
//!
//! A file is the 8 bytes [`MAGIC`], a length-prefixed `SnapshotFileHeader` (the cluster and
//! member it was taken from, when, by which build), then the snapshot stream of
//! [`fsm::snapshot`] (its header, every table's rows in key order, an end with their count and
//! checksum), which is also what members send each other.
//!
//! Invariants:
//! - A restore writes a data dir whole or not at all: it builds it beside the target under a
//!   temporary name of its own, makes it durable, and renames it into place last (over the
//!   target, if that is an empty directory); a restore that fails leaves nothing behind (one
//!   cut short by a crash leaves its temporary directory, never used).
//! - A restored cluster never has the id of the cluster its file was taken from, so the lost
//!   cluster's sequencers, and clients pinned to it, are refused by the new one.
//! - A restored state is applied at index 1 of term 1 with the file's revision, and the
//!   member's raft log starts after it (see [`fsm::snapshot::restore_as_new_cluster`]): every
//!   first member of the new cluster must be restored from the same file, so that they start
//!   from the same state; a member added later gets the state from the leader, as a snapshot.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use latch_proto::internal::SnapshotFileHeader;
use prost::Message;

use crate::config::Config;
use crate::fsm::{self, snapshot::Summary, FsmError};
use crate::storage::files::parent_of;
use crate::storage::{self, Identity, StorageError};

/// The first bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"LATCHSNP";

/// The most a file header may take: far above what one holds.
const MAX_HEADER_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot read snapshot file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a Latch snapshot file (it does not begin with \"LATCHSNP\"; `latch snapshot save` writes them)")]
    NotASnapshot { path: PathBuf },
    #[error("snapshot file {path} is damaged or cut short: {why}")]
    Damaged { path: PathBuf, why: String },
    #[error(
        "--data-dir {path} is not empty: a restore makes a new member's data dir; give a missing or \
         empty one (a member's old data dir is left alone)"
    )]
    DataDirInUse { path: PathBuf },
    #[error(
        "the restored cluster would have the id {cluster_id:016x} of the cluster the file was taken \
         from: give it another --initial-cluster-token, so that the old cluster's sequencers and \
         clients are refused by the new one"
    )]
    SameCluster { cluster_id: u64 },
    #[error("cannot {what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("restoring into {path}: {source}")]
    Restore { path: PathBuf, source: FsmError },
}

/// What a snapshot file holds, as [`check`] found it.
#[derive(Debug, Clone, PartialEq)]
pub struct FileInfo {
    pub header: SnapshotFileHeader,
    pub size_bytes: u64,
    pub summary: Summary,
}

/// The bytes a snapshot file begins with: [`MAGIC`] and its header.
pub fn file_start(header: &SnapshotFileHeader) -> Vec<u8> {
    let len = header.encoded_len();
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    header.encode(&mut out).unwrap_or_default();
    out
}

/// Reads a file's start ([`file_start`]), leaving `input` at its snapshot stream.
pub fn read_start(input: &mut dyn Read, path: &Path) -> Result<SnapshotFileHeader, BackupError> {
    let damaged = |why: String| BackupError::Damaged { path: path.to_path_buf(), why };
    let mut magic = [0u8; 8];
    let mut got = 0;
    while got < magic.len() {
        match input.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => return Err(BackupError::Read { path: path.to_path_buf(), source }),
        }
    }
    if &magic[..got] != MAGIC.as_slice() {
        return Err(BackupError::NotASnapshot { path: path.to_path_buf() });
    }
    let mut len = [0u8; 4];
    input.read_exact(&mut len).map_err(|e| damaged(format!("its header's length: {e}")))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_HEADER_BYTES {
        return Err(damaged(format!("a header of {len} bytes, over the limit of {MAX_HEADER_BYTES}")));
    }
    let mut bytes = vec![0u8; len];
    input.read_exact(&mut bytes).map_err(|e| damaged(format!("its header: {e}")))?;
    SnapshotFileHeader::decode(bytes.as_slice()).map_err(|e| damaged(format!("its header: {e}")))
}

fn open(path: &Path) -> Result<(BufReader<File>, u64), BackupError> {
    let read = |source| BackupError::Read { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(read)?;
    let size = file.metadata().map_err(read)?.len();
    Ok((BufReader::with_capacity(1 << 20, file), size))
}

fn damaged(path: &Path, e: FsmError) -> BackupError {
    let why = match e {
        FsmError::Corrupt(why) => why.strip_prefix("snapshot: ").map(str::to_string).unwrap_or(why),
        e => e.to_string(),
    };
    BackupError::Damaged { path: path.to_path_buf(), why }
}

/// Reads the whole file at `path` and checks it as a restore would (every frame, every row,
/// the count and the checksum), writing nothing.
pub fn check(path: &Path) -> Result<FileInfo, BackupError> {
    let (mut input, size_bytes) = open(path)?;
    let (header, summary) = check_from(&mut input, path)?;
    Ok(FileInfo { header, size_bytes, summary })
}

/// [`check`] of a file read from `input` (`path` names it in errors).
pub fn check_from(input: &mut dyn Read, path: &Path) -> Result<(SnapshotFileHeader, Summary), BackupError> {
    let header = read_start(input, path)?;
    let summary = fsm::snapshot::check(input).map_err(|e| damaged(path, e))?;
    Ok((header, summary))
}

/// What [`restore`] made.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    pub header: SnapshotFileHeader,
    pub summary: Summary,
    /// The new cluster's id.
    pub cluster_id: u64,
}

/// Makes `config`'s data dir, which must be missing or empty, the data dir of a member of a
/// new cluster (the one `config` describes) holding the state in the snapshot file at `path`.
/// The member then starts with the same configuration (`latch server`, the same flags). The
/// lock generation counter is raised by `skip_generations` (see
/// [`fsm::snapshot::restore_as_new_cluster`]).
pub fn restore(path: &Path, config: &Config, skip_generations: u64) -> Result<Restored, BackupError> {
    if skip_generations > fsm::snapshot::MAX_SKIP_GENERATIONS {
        return Err(BackupError::Invalid(format!(
            "--skip-generations {skip_generations} is over the most, {}",
            fsm::snapshot::MAX_SKIP_GENERATIONS
        )));
    }
    if config.joins() {
        return Err(BackupError::Invalid(format!(
            "--initial-cluster does not list member {}: a restore makes the first members of a new \
             cluster (a member added later gets the state from them)",
            config.id
        )));
    }
    let dir = config.data_dir.as_path();
    if !is_missing_or_empty(dir)? {
        return Err(BackupError::DataDirInUse { path: dir.to_path_buf() });
    }
    let (mut input, _) = open(path)?;
    let header = read_start(&mut input, path)?;
    let cluster_id = config.cluster_id();
    if header.cluster_id == cluster_id {
        return Err(BackupError::SameCluster { cluster_id });
    }
    refuse_unreplaceable(dir)?;
    let staging = staging_dir(dir)?;
    std::fs::create_dir(&staging).map_err(|source| BackupError::Io {
        what: match source.kind() {
            std::io::ErrorKind::AlreadyExists => "create (a restore cut short left it: delete it)",
            _ => "create",
        },
        path: staging.clone(),
        source,
    })?;
    let identity = Identity { cluster_id, member_id: config.id };
    let voters: Vec<u64> = config.initial_cluster.iter().map(|p| p.id).collect();
    let cache = config.state_cache_bytes;
    let restored =
        fill(&staging, identity, &voters, cache, &mut input, path, skip_generations).and_then(|summary| {
            // rename(2) replaces an empty directory in one step.
            std::fs::rename(&staging, dir).map_err(|source| BackupError::Io {
                what: "move the restored data dir to",
                path: dir.to_path_buf(),
                source,
            })?;
            Ok(summary)
        });
    let summary = match restored {
        Ok(summary) => summary,
        Err(e) => {
            // Best effort: the staging dir is never used.
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    sync_dir(parent_of(dir))?;
    Ok(Restored { header, summary, cluster_id })
}

/// Creates the state file in `staging` and restores the stream into it, then the raft log
/// starting after it, durably.
fn fill(
    staging: &Path,
    identity: Identity,
    voters: &[u64],
    cache_bytes: usize,
    input: &mut dyn Read,
    path: &Path,
    skip_generations: u64,
) -> Result<Summary, BackupError> {
    let stores = storage::open(staging, identity, cache_bytes)?;
    let txn = stores.state.begin_write().map_err(StorageError::redb)?;
    // On an error the transaction is dropped unfinished: nothing of it is written.
    let summary =
        fsm::snapshot::restore_as_new_cluster(&txn, input, skip_generations).map_err(|e| match e {
            FsmError::Corrupt(_) => damaged(path, e),
            source => BackupError::Restore { path: staging.to_path_buf(), source },
        })?;
    txn.commit().map_err(StorageError::redb)?;
    stores.state_syncs.wait_all().map_err(storage::fsync_failed)?;
    storage::LogStore::create_after(stores.log, identity, voters)?;
    drop(stores.state);
    sync_dir(&staging.join(storage::LOG_DIR))?;
    sync_dir(staging)?;
    Ok(summary)
}

/// Where a restore into `dir` builds it: beside it, so that the last rename stays on one file
/// system.
fn staging_dir(dir: &Path) -> Result<PathBuf, BackupError> {
    let name = dir.file_name().ok_or_else(|| BackupError::Io {
        what: "restore into",
        path: dir.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "it names no directory"),
    })?;
    // Of this process alone: two restores of one member at once never share it.
    let mut staging = std::ffi::OsString::from(".");
    staging.push(name);
    staging.push(format!(".restoring-{}", std::process::id()));
    Ok(parent_of(dir).join(staging))
}

/// Refuses, before anything is written, an existing `dir` that the last rename could not
/// replace: a symbolic link, or a mount point (another file system than its parent's, where the
/// data dir would be built: on the wrong disk, to fail at the end).
fn refuse_unreplaceable(dir: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(link) = std::fs::symlink_metadata(dir) else { return Ok(()) };
    if link.file_type().is_symlink() {
        return Err(BackupError::Invalid(format!(
            "--data-dir {} is a symbolic link: give the directory it names",
            dir.display()
        )));
    }
    let parent = std::fs::metadata(parent_of(dir)).map_err(|source| BackupError::Io {
        what: "read",
        path: parent_of(dir).to_path_buf(),
        source,
    })?;
    if link.dev() != parent.dev() {
        return Err(BackupError::Invalid(format!(
            "--data-dir {} is a mount point (another file system than its parent's): the restore builds \
             the data dir beside it and moves it into place, so give a directory inside it",
            dir.display()
        )));
    }
    Ok(())
}

fn is_missing_or_empty(dir: &Path) -> Result<bool, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(BackupError::Io { what: "read", path: dir.to_path_buf(), source }),
    }
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    storage::files::sync_dir(dir).map_err(|source| BackupError::Io {
        what: "sync",
        path: dir.to_path_buf(),
        source,
    })
}
