//! `latch watch KEY [--prefix] [--rev N]`: prints every change, one line per event (or one
//! JSON document per line with `--output json`), until interrupted. The watch resumes by
//! itself when a member fails, so it never skips or repeats a revision; but it must start
//! within `--timeout`, so that a wrong or dead endpoint is an error, not a silent wait.

use std::process::ExitCode;

use clap::Args;
use futures::StreamExt;
use latch_client::{proto, proto::event::EventType, Event, WatchOptions, WatchTarget, WatchUpdate};
use serde_json::json;

use super::kv::{key_range, kv_json};
use super::{interrupted, stream_bytes, stream_json, unanswered, ClientArgs, Output};

/// `latch watch`.
#[derive(Debug, Args)]
#[command(after_help = "Text output: one line per event, `PUT|DELETE REVISION KEY VALUE` (bytes that \
                        are not printable escaped). Exit status: 0 on SIGINT (Ctrl-C), SIGTERM or SIGHUP, or once \
                        its output's reader is gone; 1 if the watch could not \
                        go on (a compacted revision: see --snapshot) or did not start within --timeout. Once started, \
                        it resumes on another member by itself when one fails.")]
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
    #[arg(long, conflicts_with = "target")]
    pub snapshot: bool,
    /// Watch sessions (KEY: a session id), locks or elections (KEY: a name), or registry
    /// instances (KEY: `service/id`; `web/ --prefix` for a service) instead of keys. Each event
    /// then prints the state after it: a session's name and TTL, a lock's holders and waiters,
    /// an election's leader and value, an instance's address and health.
    #[arg(long, value_enum)]
    pub target: Option<Target>,
}

/// What `--target` watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Sessions,
    Locks,
    Elections,
    Registry,
}

pub async fn run(command: WatchCommand, client: &ClientArgs) -> anyhow::Result<ExitCode> {
    let output = client.output;
    let (key, range_end) = key_range(&command.key, command.prefix)?;
    let timeout = client.timeout;
    let client = client.connect().await?;
    let mut options = WatchOptions::range(key, range_end).from_revision(command.rev);
    if command.prev_kv {
        options = options.prev_kv();
    }
    if command.snapshot {
        options = options.snapshot_on_compacted();
    }
    let target = command.target;
    if let Some(t) = target {
        options = options.target(match t {
            Target::Sessions => WatchTarget::Sessions,
            Target::Locks => WatchTarget::Locks,
            Target::Elections => WatchTarget::Elections,
            Target::Registry => WatchTarget::Registry,
        });
    }
    let updates = client.watch(options);
    tokio::pin!(updates);
    let mut stop = interrupted()?;
    let mut start_by = Some(tokio::time::Instant::now() + timeout);
    // Made once: progress notices print nothing, and would restart its wait every turn.
    let reader_gone = super::stdout_gone();
    tokio::pin!(reader_gone);
    loop {
        let update = tokio::select! {
            u = updates.next() => u,
            _ = stop.next() => return Ok(ExitCode::SUCCESS),
            () = &mut reader_gone => return Ok(ExitCode::SUCCESS),
            late = unanswered(start_by, timeout, "started the watch", &client) => return Err(late),
        };
        start_by = None;
        match update {
            Some(Ok(update)) => print_update(output, target, &update)?,
            Some(Err(e)) => return Err(e.into()),
            None => return Ok(ExitCode::from(1)),
        }
    }
}

fn print_update(output: Output, target: Option<Target>, update: &WatchUpdate) -> anyhow::Result<()> {
    if let (Some(target), WatchUpdate::Events { revision, events }) = (target, update) {
        for e in events {
            let kv = e.kv.clone().unwrap_or_default();
            let name = String::from_utf8_lossy(&kv.key).into_owned();
            let state = if e.r#type == EventType::Delete as i32 {
                serde_json::Value::Null
            } else {
                state(target, &kv.value)?
            };
            match output {
                Output::Json => stream_json(
                    &json!({ "type": kind(e), "revision": revision, "name": name, "state": state }),
                )?,
                Output::Text => stream_bytes(
                    format!(
                        "{} {revision} {} {}\n",
                        kind(e),
                        name.escape_default(),
                        if state.is_null() { String::new() } else { state.to_string() }
                    )
                    .as_bytes(),
                )?,
            }
        }
        return Ok(());
    }
    match (output, update) {
        (_, WatchUpdate::Started { .. } | WatchUpdate::Progress { .. }) => Ok(()),
        (Output::Json, WatchUpdate::Events { revision, events }) => {
            for e in events {
                stream_json(&json!({
                    "type": kind(e),
                    "revision": revision,
                    "kv": e.kv.as_ref().map(kv_json),
                    "prev_kv": e.prev_kv.as_ref().map(kv_json),
                }))?;
            }
            Ok(())
        }
        (Output::Json, WatchUpdate::Snapshot { revision, kvs }) => stream_json(
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
            stream_bytes(&text)
        }
        (Output::Text, WatchUpdate::Snapshot { revision, kvs }) => {
            let mut text = Vec::new();
            for kv in kvs {
                line(&mut text, "SNAPSHOT", *revision, &kv.key, &kv.value);
            }
            stream_bytes(&text)
        }
    }
}

/// A session's, lock's, election's or instance's state as an event carries it, as JSON.
fn state(target: Target, value: &[u8]) -> anyhow::Result<serde_json::Value> {
    use prost::Message as _;
    Ok(match target {
        Target::Sessions => {
            let s = proto::SessionInfo::decode(value)?;
            json!({ "name": s.name, "ttl_ms": s.ttl_ms, "created_revision": s.created_revision })
        }
        Target::Locks => {
            let l = proto::LockInfo::decode(value)?;
            json!({
                "holders": l.holders.iter().map(|h| json!({ "session": h.session_id, "generation": h.generation })).collect::<Vec<_>>(),
                "waiters": l.waiters.iter().map(|w| w.session_id.clone()).collect::<Vec<_>>(),
                "delayed": l.delayed,
            })
        }
        Target::Elections => {
            let l = proto::Leadership::decode(value)?;
            json!({
                "value": String::from_utf8_lossy(&l.value),
                "session": l.sequencer.as_ref().map(|s| s.session_id.clone()),
                "generation": l.sequencer.as_ref().map(|s| s.generation),
            })
        }
        Target::Registry => {
            let info = proto::InstanceInfo::decode(value)?;
            let i = info.instance.unwrap_or_default();
            let health = proto::Health::try_from(info.health).map_or("unknown", |h| match h {
                proto::Health::Passing => "passing",
                proto::Health::Critical => "critical",
            });
            json!({
                "address": i.address,
                "port": i.port,
                "tags": i.tags,
                "health": health,
                "output": info.output,
                "session": info.session,
            })
        }
    })
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
