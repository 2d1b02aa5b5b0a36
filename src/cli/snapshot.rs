//! `latch snapshot save FILE`: a member's whole state in a file (a backup); `latch snapshot
//! status FILE`: what a file holds, checked whole; `latch snapshot restore FILE`: a new
//! cluster's member made from one, with the flags it will run with (see [`crate::backup`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use latch_proto::format_cluster_id;
use serde_json::json;

use super::{print_bytes, print_json, ClientArgs, Output, UsageError};
use crate::backup::{self, FileInfo};
use crate::config::{Config, ServerArgs};
use crate::storage::files;

/// `latch snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotCommand {
    /// The operation.
    #[command(subcommand)]
    pub op: SnapshotOp,
}

impl SnapshotCommand {
    /// The command whose usage line a usage error shows.
    pub fn usage_name(&self) -> &'static str {
        match self.op {
            SnapshotOp::Restore(_) => "snapshot restore",
            SnapshotOp::Save { .. } | SnapshotOp::Status { .. } => "snapshot",
        }
    }
}

/// The snapshot operations.
#[derive(Debug, Subcommand)]
pub enum SnapshotOp {
    /// Save a member's whole state in FILE (a backup).
    ///
    /// The state of a member of --endpoints (the first that answers): every key, session, lock, election and registered instance, with the history. The
    /// member first catches up with the leader, so the file holds every write acknowledged
    /// before the command began. Written to FILE.part, checked whole, then renamed to FILE.
    Save {
        /// Where to write it (replaced, once the new one is whole and checked).
        file: PathBuf,
        /// Take the member's state as it stands, without first catching up with the leader (a
        /// member cut off from the others can be backed up so).
        #[arg(long)]
        serializable: bool,
    },
    /// Check a snapshot file whole, as a restore would, and say what it holds.
    Status {
        /// The file.
        file: PathBuf,
    },
    /// Make a member of a new cluster from a snapshot file.
    ///
    /// Give the flags (or --config) the member will run with, then start it with `latch server` and the same flags. Restore every
    /// first member of the new cluster from the same file, with the same --skip-generations,
    /// before starting any; a member added or replaced later starts empty instead. The new cluster needs an id other than the
    /// old one's (another --initial-cluster-token, or other members), so that the old cluster's
    /// sequencers and clients are refused by it. Its revisions go on from the file's; its
    /// sessions have their whole TTL from each member's start, and live on only if kept alive.
    Restore(Box<RestoreArgs>),
}

/// `latch snapshot restore FILE` and the member's flags.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The snapshot file.
    pub file: PathBuf,
    /// Raise the lock generation counter by N: the new cluster's fencing tokens are then above
    /// every one the lost cluster granted after the file was taken, if it granted fewer than N
    /// since (a resource that saw a larger token would refuse the new holders until theirs pass
    /// it). Give every member the same N.
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(..=crate::fsm::snapshot::MAX_SKIP_GENERATIONS))]
    pub skip_generations: u64,
    /// The flags of `latch server` the member will run with; --data-dir must be missing or empty.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Runs `latch snapshot …`.
pub async fn run(command: SnapshotCommand, client_args: &ClientArgs) -> anyhow::Result<ExitCode> {
    match command.op {
        SnapshotOp::Save { file, serializable } => save(&file, serializable, client_args).await,
        SnapshotOp::Status { file } => {
            let info = tokio::task::spawn_blocking(move || backup::check(&file).map(|info| (file, info)))
                .await
                .context("checking the file")?;
            let (file, info) = info?;
            match client_args.output {
                Output::Json => print_json(&info_json(&file, &info))?,
                Output::Text => print_bytes(info_text(&file, &info).as_bytes())?,
            }
            Ok(ExitCode::SUCCESS)
        }
        SnapshotOp::Restore(args) => {
            let RestoreArgs { file, skip_generations, server } = *args;
            // A configuration that does not resolve is bad input (exit 2), as for `latch server`.
            let config = Config::from_args(server).map_err(|e| UsageError(e.to_string()))?;
            let (file, config, restored) = tokio::task::spawn_blocking(move || {
                backup::restore(&file, &config, skip_generations).map(|restored| (file, config, restored))
            })
            .await
            .context("restoring")?
            .map_err(|e| match e {
                // Flags that cannot make this restore are bad input (exit 2).
                backup::BackupError::Invalid(why) => anyhow::Error::new(UsageError(why)),
                e => anyhow::Error::new(e),
            })?;
            let s = restored.summary;
            match client_args.output {
                Output::Json => print_json(&json!({
                    "file": file,
                    "data_dir": config.data_dir,
                    "member_id": config.id,
                    "cluster_id": format_cluster_id(restored.cluster_id),
                    "from_cluster_id": format_cluster_id(restored.header.cluster_id),
                    "revision": s.applied.revision,
                    "rows": s.rows,
                }))?,
                Output::Text => print_bytes(
                    format!(
                        "restored {} (revision {}, {} rows) into {} as member {} of cluster {}: start it \
                         with `latch server` and the flags given here, every other first member restored \
                         from the same file alike\n",
                        file.display(),
                        s.applied.revision,
                        s.rows,
                        config.data_dir.display(),
                        config.id,
                        format_cluster_id(restored.cluster_id)
                    )
                    .as_bytes(),
                )?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Streams a snapshot into `file`.part, checks it whole, and renames it to `file`, durably.
/// Whatever fails after `file`.part was created removes it: `file`, if there was one, is left
/// as it was (an interrupt leaves `file`.part, which the next save replaces).
async fn save(file: &Path, serializable: bool, client_args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let mut part_name = file.as_os_str().to_owned();
    part_name.push(".part");
    let part = PathBuf::from(part_name);
    // Created before the member is asked: a path that cannot be written costs it nothing.
    let out = std::fs::File::create(&part).with_context(|| format!("cannot create {}", part.display()))?;
    let saved = save_into(out, &part, file, serializable, client_args).await;
    if saved.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    let info = saved?;
    match client_args.output {
        Output::Json => print_json(&info_json(file, &info))?,
        Output::Text => print_bytes(format!("saved {}", info_text(file, &info)).as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// [`save`]'s work once `part` is created (`out`).
async fn save_into(
    out: std::fs::File,
    part: &Path,
    file: &Path,
    serializable: bool,
    client_args: &ClientArgs,
) -> anyhow::Result<FileInfo> {
    let client = client_args.connect().await?;
    let mut stream = client.snapshot(serializable).await?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    while let Some(blob) = stream.next_part().await.context("the snapshot stream broke")? {
        out.write_all(&blob).with_context(|| format!("cannot write {}", part.display()))?;
    }
    let out = out.into_inner().map_err(|e| e.into_error()).context("cannot write the file")?;
    out.sync_all().with_context(|| format!("cannot sync {}", part.display()))?;
    drop(out);
    let checking = part.to_path_buf();
    let info = tokio::task::spawn_blocking(move || backup::check(&checking))
        .await
        .context("checking the file")??;
    std::fs::rename(part, file)
        .with_context(|| format!("cannot rename {} to {}", part.display(), file.display()))?;
    let dir = files::parent_of(file);
    files::sync_dir(dir).with_context(|| format!("cannot sync {}", dir.display()))?;
    Ok(info)
}

fn taken_at(info: &FileInfo) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(info.header.taken_unix_ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

fn info_text(file: &Path, info: &FileInfo) -> String {
    let (h, s) = (&info.header, &info.summary);
    format!(
        "{}: cluster {}, member {}, taken {} by latch {}\n  revision {} at raft index {} (term {}); {} rows, \
         checksum {:016x}; {} bytes\n",
        file.display(),
        format_cluster_id(h.cluster_id),
        h.member_id,
        taken_at(info),
        h.build,
        s.applied.revision,
        s.applied.index,
        s.applied.term,
        s.rows,
        s.checksum,
        info.size_bytes
    )
}

fn info_json(file: &Path, info: &FileInfo) -> serde_json::Value {
    let (h, s) = (&info.header, &info.summary);
    json!({
        "file": file,
        "cluster_id": format_cluster_id(h.cluster_id),
        "member_id": h.member_id,
        "taken": taken_at(info),
        "build": h.build,
        "revision": s.applied.revision,
        "raft_index": s.applied.index,
        "raft_term": s.applied.term,
        "rows": s.rows,
        "checksum": format!("{:016x}", s.checksum),
        "bytes": info.size_bytes,
    })
}
