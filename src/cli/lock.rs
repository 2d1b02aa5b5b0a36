//! `latch lock NAME [--shared] [--ttl 10s] [--wait 30s] -- CMD [ARGS]`: runs CMD while holding
//! the lock, and `latch lock describe NAME`.
//!
//! The child sees `LATCH_LOCK_SEQUENCER` (the sequencer's string form) and `LATCH_FENCING_TOKEN`
//! (its generation, a decimal integer) in its environment. Exit status: CMD's own (128 + the
//! signal if a signal ended it); 1 when the lock was not acquired in time; [`LOST`] when the
//! session was lost while CMD ran — CMD and what it started (its process group) were then sent
//! SIGTERM, and SIGKILL after `--grace`, since a holder must not go on believing it holds the
//! lock. SIGINT and SIGTERM sent to `latch lock` are passed on to that group.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use latch_client::proto::{LockInfo, LockMode};
use latch_client::{LockOptions, Session, SessionOptions, SessionState, Wait};
use serde_json::json;

use super::{print_bytes, print_json, ClientArgs, Output, UsageError};

/// The exit status of `latch lock` when the session (and so the lock) was lost while CMD ran.
pub const LOST: u8 = 3;

/// `latch lock`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LockCommand {
    #[command(subcommand)]
    pub op: Option<LockOp>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum LockOp {
    /// Show lock NAME's holders, waiters and lock-delay.
    Describe { name: String },
    /// List the locks whose names begin with PREFIX.
    List {
        #[arg(default_value = "")]
        prefix: String,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The lock's name.
    #[arg(required = true)]
    pub name: Option<String>,
    /// The command to run while holding the lock, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
    /// Take the lock shared (any number of shared holders at once) instead of exclusive.
    #[arg(long)]
    pub shared: bool,
    /// The TTL of the session that holds the lock.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub ttl: Duration,
    /// Wait at most this long for the lock (0s: try once); as long as it takes when not given.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,
    /// Lock-delay should the session expire while holding (0 … 60s); the server's 5s if not given.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lock_delay: Option<Duration>,
    /// How long CMD has between SIGTERM and SIGKILL once the lock is lost.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub grace: Duration,
}

pub async fn run(command: LockCommand, client: &ClientArgs) -> anyhow::Result<ExitCode> {
    let output = client.output;
    let client = client.connect().await?;
    match command.op {
        Some(LockOp::Describe { name }) => {
            let lock = client.describe_lock(&name).await?;
            match output {
                Output::Json => print_json(&lock.as_ref().map_or(json!({"name": name}), info_json))?,
                Output::Text => {
                    print_bytes(lock.map_or(format!("{name}: free\n"), |l| info_text(&l)).as_bytes())?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(LockOp::List { prefix }) => {
            let locks = client.list_locks(&prefix).await?;
            match output {
                Output::Json => {
                    print_json(&json!({"locks": locks.iter().map(info_json).collect::<Vec<_>>()}))?
                }
                Output::Text => print_bytes(locks.iter().map(info_text).collect::<String>().as_bytes())?,
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let args = command.run;
            let name = args.name.clone().ok_or_else(|| UsageError("a lock NAME is required".into()))?;
            let Some((program, program_args)) = args.command.split_first() else {
                return Err(UsageError("the command to run goes after `--`".into()).into());
            };
            let session =
                client.session(SessionOptions::new(args.ttl).name(format!("latch lock {name}"))).await?;
            let options = LockOptions {
                mode: if args.shared { LockMode::Shared } else { LockMode::Exclusive },
                wait: match args.wait {
                    None => Wait::Forever,
                    Some(d) if d.is_zero() => Wait::No,
                    Some(d) => Wait::For(d),
                },
                lock_delay: args.lock_delay,
            };
            let guard = tokio::select! {
                guard = session.lock(&name, options) => guard?,
                _ = tokio::signal::ctrl_c() => None,
            };
            let Some(guard) = guard else {
                eprintln!("latch lock: {name:?} was not acquired in time");
                session.close().await?;
                return Ok(ExitCode::from(1));
            };
            let mut child = tokio::process::Command::new(program)
                .args(program_args)
                .env("LATCH_LOCK_SEQUENCER", guard.token())
                .env("LATCH_FENCING_TOKEN", guard.generation().to_string())
                // A group of its own, so that whatever CMD starts is signalled with it.
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| anyhow::anyhow!("cannot run {program:?}: {e}"))?;
            let group = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32));
            let signal = |s: rustix::process::Signal| {
                if let Some(group) = group {
                    let _ = rustix::process::kill_process_group(group, s);
                }
            };
            let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
            let mut terminations = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let code = loop {
                tokio::select! {
                    status = child.wait() => break exit_code(status?),
                    // Not in the terminal's foreground group any more: pass interruptions on.
                    _ = interrupts.recv() => signal(rustix::process::Signal::INT),
                    _ = terminations.recv() => signal(rustix::process::Signal::TERM),
                    () = lost(&session) => {
                        eprintln!(
                            "latch lock: the session holding {name:?} was lost while {program:?} ran; \
                             sending it SIGTERM (SIGKILL after {})",
                            humantime::format_duration(args.grace)
                        );
                        signal(rustix::process::Signal::TERM);
                        if tokio::time::timeout(args.grace, child.wait()).await.is_err() {
                            signal(rustix::process::Signal::KILL);
                            child.wait().await?;
                        }
                        return Ok(ExitCode::from(LOST));
                    }
                }
            };
            // The lock goes with the session; releasing first makes the hand-over immediate.
            guard.release().await?;
            session.close().await?;
            Ok(ExitCode::from(code))
        }
    }
}

/// Resolves once the session can no longer be sure it lives: its lease ran out while keepalives
/// failed, or the cluster ended it.
async fn lost(session: &Session) {
    let mut state = session.watch();
    loop {
        let now = *state.borrow_and_update();
        match now {
            SessionState::Expired => return,
            SessionState::Safe => {
                if state.changed().await.is_err() {
                    return;
                }
            }
            SessionState::Jeopardy => {
                tokio::select! {
                    changed = state.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(session.lease_left()) => {
                        if session.lease_left().is_zero() && session.state() != SessionState::Safe {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// A child's exit status as ours: its code, or 128 + the signal that ended it.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

fn mode_name(mode: i32) -> &'static str {
    if mode == LockMode::Shared as i32 {
        "shared"
    } else {
        "exclusive"
    }
}

fn info_text(l: &LockInfo) -> String {
    let mut text = format!("{}\n", l.name);
    for h in &l.holders {
        text.push_str(&format!(
            "  held by {} ({}, generation {}, since revision {}, lock-delay {} ms)\n",
            h.session_id,
            mode_name(h.mode),
            h.generation,
            h.held_since_revision,
            h.lock_delay_ms
        ));
    }
    for (i, w) in l.waiters.iter().enumerate() {
        text.push_str(&format!(
            "  waiter {}: {} ({}, since revision {})\n",
            i + 1,
            w.session_id,
            mode_name(w.mode),
            w.queued_revision
        ));
    }
    if l.delayed {
        text.push_str(&format!(
            "  lock-delay of {} ms since revision {}: no grant until it ends\n",
            l.delay_ms, l.delay_since_revision
        ));
    }
    text
}

fn info_json(l: &LockInfo) -> serde_json::Value {
    json!({
        "name": l.name,
        "holders": l.holders.iter().map(|h| json!({
            "session": h.session_id,
            "mode": mode_name(h.mode),
            "generation": h.generation,
            "held_since_revision": h.held_since_revision,
            "lock_delay_ms": h.lock_delay_ms,
        })).collect::<Vec<_>>(),
        "waiters": l.waiters.iter().map(|w| json!({
            "session": w.session_id,
            "mode": mode_name(w.mode),
            "queued_revision": w.queued_revision,
        })).collect::<Vec<_>>(),
        "delayed": l.delayed,
        "delay_since_revision": l.delay_since_revision,
        "delay_ms": l.delay_ms,
    })
}
