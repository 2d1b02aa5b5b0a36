//! `latch watch KEY [--prefix] [--rev N]`: prints every change, one line per event (or one
//! JSON document per line with `--output json`), until interrupted. The watch resumes by
//! itself when a member fails, so it never skips or repeats a revision.

use std::process::ExitCode;

use clap::Args;
use futures::StreamExt;
use latch_client::{proto::event::EventType, Event, WatchOptions, WatchUpdate};
use serde_json::json;

use super::kv::{key_range, kv_json};
use super::{print_bytes, print_json, ClientArgs, Output};

/// `latch watch`.
#[derive(Debug, Args)]
#[command(after_help = "Text output: one line per event, `PUT|DELETE REVISION KEY VALUE` (bytes that \
                        are not printable escaped). Exit status: 0 on Ctrl-C; 1 if the watch could not \
                        go on (a compacted revision: see --snapshot).")]
pub struct WatchCommand {
    /// The key; with --prefix, the prefix (empty = every key).
    pub key: String,
    /// Every key starting with KEY.
    #[arg(long)]
    pub prefix: bool,
    /// Start with the changes of revision N (0 = the ones after now).
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    pub rev: i64,
    /// Also print each key's previous value.
    #[arg(long)]
    pub prev_kv: bool,
    /// When the start revision is compacted, print the keys' state at a revision (lines
    /// `SNAPSHOT REVISION KEY VALUE`) and go on from there, instead of failing.
    #[arg(long)]
    pub snapshot: bool,
}

pub async fn run(command: WatchCommand, client: &ClientArgs) -> anyhow::Result<ExitCode> {
    let output = client.output;
    let (key, range_end) = key_range(&command.key, command.prefix)?;
    let client = client.connect().await?;
    let mut options = WatchOptions::range(key, range_end).from_revision(command.rev);
    if command.prev_kv {
        options = options.prev_kv();
    }
    if command.snapshot {
        options = options.snapshot_on_compacted();
    }
    let updates = client.watch(options);
    tokio::pin!(updates);
    loop {
        let update = tokio::select! {
            u = updates.next() => u,
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        match update {
            Some(Ok(update)) => print_update(output, &update)?,
            Some(Err(e)) => return Err(e.into()),
            None => return Ok(ExitCode::from(1)),
        }
    }
}

fn print_update(output: Output, update: &WatchUpdate) -> anyhow::Result<()> {
    match (output, update) {
        (_, WatchUpdate::Started { .. } | WatchUpdate::Progress { .. }) => Ok(()),
        (Output::Json, WatchUpdate::Events { revision, events }) => {
            for e in events {
                print_json(&json!({
                    "type": kind(e),
                    "revision": revision,
                    "kv": e.kv.as_ref().map(kv_json),
                    "prev_kv": e.prev_kv.as_ref().map(kv_json),
                }))?;
            }
            Ok(())
        }
        (Output::Json, WatchUpdate::Snapshot { revision, kvs }) => print_json(
            &json!({ "type": "SNAPSHOT", "revision": revision, "kvs": kvs.iter().map(kv_json).collect::<Vec<_>>() }),
        ),
        (Output::Text, WatchUpdate::Events { revision, events }) => {
            let mut text = Vec::new();
            for e in events {
                let kv = e.kv.clone().unwrap_or_default();
                line(&mut text, kind(e), *revision, &kv.key, &kv.value);
                if let Some(prev) = &e.prev_kv {
                    line(&mut text, "PREV", prev.mod_revision, &prev.key, &prev.value);
                }
            }
            print_bytes(&text)
        }
        (Output::Text, WatchUpdate::Snapshot { revision, kvs }) => {
            let mut text = Vec::new();
            for kv in kvs {
                line(&mut text, "SNAPSHOT", *revision, &kv.key, &kv.value);
            }
            print_bytes(&text)
        }
    }
}

fn kind(e: &Event) -> &'static str {
    if e.r#type == EventType::Delete as i32 {
        "DELETE"
    } else {
        "PUT"
    }
}

fn line(out: &mut Vec<u8>, kind: &str, revision: i64, key: &[u8], value: &[u8]) {
    out.extend_from_slice(
        format!("{kind} {revision} {} {}\n", key.escape_ascii(), value.escape_ascii()).as_bytes(),
    );
}
