//! `latch elect NAME VALUE`: campaigns, prints when elected, and leads until interrupted
//! (SIGINT, SIGTERM or SIGHUP: then resigns and closes its session); exits
//! [`super::lock::LOST`] if the session is lost meanwhile.
//! `latch elect NAME --observe`: prints every leader, one line (or JSON document) each; the
//! first (the leader now, or "no leader") must come within `--timeout`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use latch_client::{Leadership, SessionOptions};
use serde_json::json;

use super::{interrupted, killed_by, stream_bytes, stream_json, unanswered, ClientArgs, Output, UsageError};

/// `latch elect`.
#[derive(Debug, Args)]
#[command(after_help = "Exit status: 0 after resigning on SIGINT (Ctrl-C), SIGTERM or SIGHUP; 128 + \
                        the signal if one came while campaigning (the campaign is withdrawn); 1 if the \
                        campaign failed; 3 if the session was lost while leading; 2 usage error.")]
pub struct ElectCommand {
    /// The election's name.
    pub name: String,
    /// The value to publish while leading (an address, say).
    #[arg(required_unless_present = "observe", conflicts_with = "observe")]
    pub value: Option<String>,
    /// Print each leader instead of campaigning.
    #[arg(long)]
    pub observe: bool,
    /// The TTL of the campaigning session.
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "10s")]
    pub ttl: Duration,
}

pub async fn run(command: ElectCommand, client: &ClientArgs) -> anyhow::Result<ExitCode> {
    if command.name.is_empty() {
        return Err(UsageError("the election's NAME must not be empty".into()).into());
    }
    let (output, timeout) = (client.output, client.timeout);
    let client = client.connect().await?;
    let election = client.election(command.name.clone());
    let stop = interrupted()?;
    tokio::pin!(stop);
    if command.observe {
        let leaders = election.observe_or_fail();
        tokio::pin!(leaders);
        let mut first_by = Some(tokio::time::Instant::now() + timeout);
        let said = format!("said who leads {:?}", command.name);
        loop {
            tokio::select! {
                leader = leaders.next() => match leader {
                    Some(Ok(leader)) => {
                        first_by = None;
                        print_leader(output, &command.name, leader.as_ref())?;
                    }
                    Some(Err(refused)) => return Err(refused.into()),
                    None => return Ok(ExitCode::from(1)),
                },
                _ = &mut stop => return Ok(ExitCode::SUCCESS),
                late = unanswered(first_by, timeout, &said, &client) => return Err(late),
            }
        }
    }
    let value = command.value.ok_or_else(|| UsageError("a VALUE to publish is required".into()))?;
    let session = client
        .session(SessionOptions::new(command.ttl).name(format!("latch elect {}", command.name)))
        .await?;
    let leadership = tokio::select! {
        l = election.campaign(session.id(), value.into_bytes()) => match l {
            Ok(l) => l,
            Err(e) => {
                // A candidacy the failed campaign may have left queued goes with the session,
                // now rather than at its expiry (this process is about to exit).
                let _ = session.close().await;
                return Err(e.into());
            }
        },
        signal = &mut stop => {
            // Closing the session withdraws the campaign (or, failing that, its expiry does).
            if let Err(e) = session.close().await {
                eprintln!("latch elect: closing the session failed ({e}); it expires by itself");
            }
            return Ok(killed_by(signal));
        }
    };
    if let Err(e) = print_leader(output, &command.name, Some(&leadership)) {
        // Nobody reads what it does: it leads no longer.
        election.resign(&leadership).await?;
        session.close().await?;
        return Err(e);
    }
    tokio::select! {
        _ = &mut stop => {
            election.resign(&leadership).await?;
            session.close().await?;
            Ok(ExitCode::SUCCESS)
        }
        // Once the lease may have run out, it may no longer lead.
        () = super::lock::lost(&session, Duration::ZERO) => {
            eprintln!("latch elect: the session was lost: no longer the leader of {:?}", command.name);
            Ok(ExitCode::from(super::lock::LOST))
        }
    }
}

fn print_leader(output: Output, name: &str, leader: Option<&Leadership>) -> anyhow::Result<()> {
    let seq = leader.and_then(|l| l.sequencer.as_ref());
    match output {
        Output::Json => stream_json(&json!({
            "election": name,
            "leader": leader.map(|l| json!({
                "value": String::from_utf8_lossy(&l.value),
                "session": seq.map(|s| s.session_id.clone()),
                "generation": seq.map(|s| s.generation),
                "sequencer": seq.map(|s| s.token.clone()),
            })),
        })),
        Output::Text => stream_bytes(
            match (leader, seq) {
                (Some(l), Some(s)) => format!(
                    "leader of {name}: {} (session {}, generation {})\n",
                    String::from_utf8_lossy(&l.value),
                    s.session_id,
                    s.generation
                ),
                _ => format!("{name}: no leader\n"),
            }
            .as_bytes(),
        ),
    }
}
