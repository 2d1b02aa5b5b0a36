//! `latch session create | keepalive | list | close`: sessions by hand.
//!
//! `create` prints the new session's id; the session then lives only as long as something keeps
//! it alive — `latch session keepalive ID` does, until interrupted (SIGINT, SIGTERM or SIGHUP)
//! or its output's reader is gone, and then closes it; it exits [`super::lock::LOST`] when the
//! cluster no longer has the session.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use latch_client::proto::SessionInfo;
use serde_json::json;

use super::{
    interrupted, print_bytes, print_json, stream_bytes, stream_json, ClientArgs, Output, StdoutClosed,
};

/// `latch session`.
#[derive(Debug, Args)]
pub struct SessionCommand {
    #[command(subcommand)]
    pub op: SessionOp,
}

#[derive(Debug, Subcommand)]
pub enum SessionOp {
    /// Create a session and print its id.
    Create(CreateArgs),
    /// Keep session ID alive until interrupted, then close it (exit 3 if the session is gone).
    Keepalive(IdArgs),
    /// List the live sessions.
    List,
    /// Close session ID, deleting what it owns.
    Close(IdArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Its TTL (humantime: 10s, 1m): within the server's --session-ttl-min … --session-ttl-max.
    #[arg(long, allow_hyphen_values = true, value_parser = crate::config::parse_duration, default_value = "10s")]
    pub ttl: Duration,
    /// A name for people.
    #[arg(long, default_value = "")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// The session's id.
    pub id: String,
}

pub async fn run(command: SessionCommand, client: &ClientArgs) -> anyhow::Result<ExitCode> {
    let output = client.output;
    let client = client.connect().await?;
    match command.op {
        SessionOp::Create(args) => {
            let (id, ttl_ms) = client.create_session(args.ttl, &args.name).await?;
            match output {
                Output::Json => print_json(&json!({"id": id, "ttl_ms": ttl_ms}))?,
                Output::Text => print_bytes(format!("{id}\n").as_bytes())?,
            }
        }
        SessionOp::Keepalive(IdArgs { id }) => {
            // Gone only when a linearizable read agrees: a deposed leader that has not heard of
            // the session answers a keepalive NOT_FOUND too.
            let gone = |e: &latch_client::Error| e.code() == tonic::Code::NotFound;
            let confirmed_gone = |e: latch_client::Error| {
                eprintln!("latch session keepalive: session {id} is gone (expired, or closed): {e}");
                Ok(ExitCode::from(super::lock::LOST))
            };
            // Listening for signals from the start: one during the first keepalive closes the
            // session too.
            let mut stop = interrupted()?;
            'kept: {
                let sent = tokio::time::Instant::now();
                // The TTL is not known yet: the first keepalive is hedged after a second.
                let first = tokio::select! {
                    _ = stop.next() => break 'kept,
                    first = client.keep_alive_hedged(&id, Duration::from_secs(1)) => first,
                };
                let first = match first {
                    Ok(first) => first,
                    Err(e) if gone(&e) && client.session_info(&id).await.is_err_and(|r| gone(&r)) => {
                        return confirmed_gone(e)
                    }
                    Err(e) => return Err(e.into()),
                };
                if !print_grant(output, &first)? {
                    break 'kept;
                }
                let ttl = Duration::from_millis(u64::try_from(first.ttl_ms).unwrap_or(0));
                let retry = (ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
                let mut lease_end =
                    sent + Duration::from_millis(u64::try_from(first.granted_ms).unwrap_or(0));
                let mut next = tokio::time::Instant::now() + (ttl / 3).max(retry);
                loop {
                    tokio::select! {
                        _ = stop.next() => break 'kept,
                        _ = tokio::time::sleep_until(next) => {
                            let sent = tokio::time::Instant::now();
                            // A member that stopped answering costs a sixth of the TTL, not the lease.
                            let ack = match client.keep_alive_hedged(&id, (ttl / 6).max(Duration::from_millis(100))).await {
                                Ok(ack) => ack,
                                Err(e) if gone(&e) && client.session_info(&id).await.is_err_and(|r| gone(&r)) => {
                                    return confirmed_gone(e)
                                }
                                // Another failure is tried again while the lease granted last lasts.
                                Err(e) if tokio::time::Instant::now() + retry < lease_end => {
                                    eprintln!("latch session keepalive: {e}; trying again");
                                    next = tokio::time::Instant::now() + retry;
                                    continue;
                                }
                                Err(e) => {
                                    eprintln!("latch session keepalive: no keepalive answered within the lease: {e}");
                                    return Ok(ExitCode::from(super::lock::LOST));
                                }
                            };
                            lease_end = sent + Duration::from_millis(u64::try_from(ack.granted_ms).unwrap_or(0));
                            if !print_grant(output, &ack)? {
                                break 'kept;
                            }
                            next = tokio::time::Instant::now() + (ttl / 3).max(retry);
                        }
                    }
                }
            }
            let left = "the session expires by itself (its TTL after the last keepalive)";
            let deleted =
                match stop.unless_again("latch session keepalive", left, client.close_session(&id)).await {
                    Ok(deleted) => deleted?,
                    Err(signal) => return Ok(super::killed_by(signal)),
                };
            match output {
                Output::Json => print_json(&json!({"id": id, "closed": true, "keys_deleted": deleted}))?,
                Output::Text => print_bytes(format!("closed {id} ({deleted} keys deleted)\n").as_bytes())?,
            }
        }
        SessionOp::List => {
            let sessions = client.sessions().await?;
            match output {
                Output::Json => {
                    print_json(&json!({"sessions": sessions.iter().map(info_json).collect::<Vec<_>>()}))?
                }
                Output::Text => {
                    let mut text = String::new();
                    for s in &sessions {
                        text.push_str(&format!(
                            "{}  name={:?} ttl={}ms left={}ms keys={} locks={}\n",
                            s.id, s.name, s.ttl_ms, s.remaining_ms, s.keys, s.locks
                        ));
                    }
                    print_bytes(text.as_bytes())?;
                }
            }
        }
        SessionOp::Close(IdArgs { id }) => {
            let deleted = client.close_session(&id).await?;
            match output {
                Output::Json => print_json(&json!({"id": id, "keys_deleted": deleted}))?,
                Output::Text => print_bytes(format!("closed {id} ({deleted} keys deleted)\n").as_bytes())?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints one grant of `latch session keepalive`; false once stdout is closed (the reader
/// left: the session is closed, as at a signal).
fn print_grant(output: Output, ack: &latch_client::proto::KeepAliveResponse) -> anyhow::Result<bool> {
    let printed = match output {
        Output::Json => {
            stream_json(&json!({"id": ack.id, "ttl_ms": ack.ttl_ms, "granted_ms": ack.granted_ms}))
        }
        Output::Text => stream_bytes(format!("kept alive: {} ms granted\n", ack.granted_ms).as_bytes()),
    };
    match printed {
        Err(e) if e.is::<StdoutClosed>() => Ok(false),
        other => other.map(|()| true),
    }
}

fn info_json(s: &SessionInfo) -> serde_json::Value {
    json!({
        "id": s.id,
        "name": s.name,
        "ttl_ms": s.ttl_ms,
        "remaining_ms": s.remaining_ms,
        "created_revision": s.created_revision,
        "keys": s.keys,
        "locks": s.locks,
        "instances": s.instances,
    })
}
