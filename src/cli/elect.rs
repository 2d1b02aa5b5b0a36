//! `latch elect NAME VALUE`: campaigns, prints when elected, and leads until interrupted
//! (SIGINT, SIGTERM or SIGHUP: then resigns and closes its session); exits
//! [`super::lock::LOST`] if the session is lost meanwhile.
//! `latch elect NAME --observe`: prints every leader, one line (or JSON document) each; the
//! first (the leader now, or "no leader") must come within `--timeout`.
//! `latch elect describe NAME`: the leader, the candidates in order and the lock-delay;
//! `latch elect list [PREFIX]`: the same of every election whose name begins with PREFIX.
//! `describe` and `list` name subcommands, not elections.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use futures::StreamExt;
use latch_client::ElectionInfo;
use latch_client::Leadership;
use serde_json::json;

use super::{
    interrupted, killed_by, print_bytes, print_json, stdout_gone, stream_bytes, stream_json, unanswered,
    ClientArgs, Output, UsageError,
};

/// `latch elect`.
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    disable_help_subcommand = true,
    after_help = "Exit status: 0 after resigning on SIGINT (Ctrl-C), SIGTERM or SIGHUP; 128 + \
                  the signal if one came while campaigning (the campaign is withdrawn); 1 if the \
                  campaign failed; 3 if the session was lost while leading, or someone else resigned the \
                  leadership or closed its session; 2 usage error.\n\
                  `describe` and `list` are subcommands: not usable as an election NAME."
)]
pub struct ElectCommand {
    #[command(subcommand)]
    pub op: Option<ElectOp>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum ElectOp {
    /// Show election NAME's leader, candidates in order and lock-delay.
    Describe { name: String },
    /// List the elections whose names begin with PREFIX.
    List {
        #[arg(default_value = "")]
        prefix: String,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The election's name.
    #[arg(required = true)]
    pub name: Option<String>,
    /// The value to publish while leading (an address, say).
    #[arg(required_unless_present = "observe", conflicts_with = "observe")]
    pub value: Option<String>,
    /// Print each leader instead of campaigning.
    #[arg(long)]
    pub observe: bool,
    /// The TTL of the campaigning session.
    #[arg(long, allow_hyphen_values = true, value_parser = crate::config::parse_duration, default_value = "10s")]
    pub ttl: Duration,
}

pub async fn run(command: ElectCommand, client: &ClientArgs) -> anyhow::Result<ExitCode> {
    let output = client.output;
    match command.op {
        Some(ElectOp::Describe { name }) => {
            super::refuse_bad_lock_name("the election's", &name)?;
            let election = client.connect().await?.election(name.clone()).describe().await?;
            match output {
                // Nobody leads, campaigns or delays: an empty election.
                Output::Json => print_json(&info_json(
                    &election.unwrap_or(ElectionInfo { name: name.clone(), ..Default::default() }),
                ))?,
                Output::Text => print_bytes(
                    election
                        .map_or(format!("{}: no leader, no candidates\n", super::shown(&name)), |e| {
                            info_text(&e)
                        })
                        .as_bytes(),
                )?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(ElectOp::List { prefix }) => {
            let elections = client.connect().await?.list_elections(&prefix).await?;
            match output {
                Output::Json => {
                    print_json(&json!({"elections": elections.iter().map(info_json).collect::<Vec<_>>()}))?
                }
                Output::Text => print_bytes(elections.iter().map(info_text).collect::<String>().as_bytes())?,
            }
            Ok(ExitCode::SUCCESS)
        }
        None => take_part(command.run, client).await,
    }
}

/// Who leads election `info` and how many wait to, or its lock-delay, as " (…)".
fn campaign_state(info: &latch_client::ElectionInfo) -> String {
    if info.delayed {
        return format!(
            " (its lock-delay of {} ms is in force: the last leader's session expired at revision {})",
            info.delay_ms, info.delay_since_revision
        );
    }
    // The candidates waiting to lead, this one among them.
    let waiting = info.candidates.len();
    match &info.leader {
        Some(leader) => format!(" (led by {:?}; {waiting} waiting)", String::from_utf8_lossy(&leader.value)),
        None => format!(" ({waiting} waiting)"),
    }
}

/// Campaigns and leads, or observes.
async fn take_part(command: RunArgs, client: &ClientArgs) -> anyhow::Result<ExitCode> {
    let name = command.name.clone().unwrap_or_default();
    super::refuse_bad_lock_name("the election's", &name)?;
    // Else a campaign nobody asked for, in an election named "describe".
    super::refuse_subcommand_as_name("elect", "an election", &["describe", "list"], &name)?;
    let (output, timeout) = (client.output, client.timeout);
    let client = client.connect().await?;
    let election = client.election(name.clone());
    let mut stop = interrupted()?;
    if command.observe {
        let leaders = election.observe_or_fail();
        tokio::pin!(leaders);
        let mut first_by = Some(tokio::time::Instant::now() + timeout);
        let said = format!("said who leads {name:?}");
        let reader_gone = stdout_gone();
        tokio::pin!(reader_gone);
        loop {
            tokio::select! {
                leader = leaders.next() => match leader {
                    Some(Ok(leader)) => {
                        first_by = None;
                        print_leader(output, &name, leader.as_ref())?;
                    }
                    Some(Err(refused)) => return Err(refused.into()),
                    None => return Ok(ExitCode::from(1)),
                },
                _ = stop.next() => return Ok(ExitCode::SUCCESS),
                () = &mut reader_gone => return Ok(ExitCode::SUCCESS),
                late = unanswered(first_by, timeout, &said, &client) => return Err(late),
            }
        }
    }
    let value = command.value.ok_or_else(|| UsageError("a VALUE to publish is required".into()))?;
    let session = super::command_session(&client, command.ttl, "latch elect", &name).await?;
    let notice = async {
        let state = match tokio::time::timeout(Duration::from_secs(1), election.describe()).await {
            Ok(Ok(Some(info))) => campaign_state(&info),
            _ => String::new(),
        };
        format!("latch elect: campaigning in {name:?}{state}")
    };
    let campaigned = stop.wait_saying(election.campaign(session.id(), value.into_bytes()), notice).await;
    let leadership = match campaigned {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            // A candidacy the failed campaign may have left queued goes with the session,
            // now rather than at its expiry (this process is about to exit).
            let _ = session.close().await;
            return Err(e.into());
        }
        Err(signal) => {
            // Closing the session withdraws the campaign (or, failing that, its expiry does).
            let left = "the session expires by itself (its TTL after its last keepalive); its campaign \
                        may win meanwhile, and lead until then";
            if let Ok(Err(e)) = stop.unless_again("latch elect", left, session.close()).await {
                eprintln!("latch elect: closing the session failed ({e}); {left}");
            }
            return Ok(killed_by(signal));
        }
    };
    if let Err(e) = print_leader(output, &name, Some(&leadership)) {
        // Nobody reads what it does: it leads no longer.
        election.resign(&leadership).await?;
        session.close().await?;
        return Err(e);
    }
    let sequencer = leadership.sequencer.clone().unwrap_or_default();
    tokio::select! {
        signal = stop.next() => {
            // A leadership resigned or ended meanwhile is given up already: the session goes
            // all the same.
            let give_back = async {
                if let Err(e) = election.resign(&leadership).await {
                    eprintln!("latch elect: resigning failed ({e}); closing the session ends the leadership");
                }
                session.close().await
            };
            let left = "the session expires by itself (its TTL after its last keepalive), and with it \
                        the leadership; its lock-delay follows";
            match stop.unless_again("latch elect", left, give_back).await {
                Ok(closed) => closed.map(|_| ExitCode::SUCCESS).map_err(Into::into),
                Err(_) => Ok(killed_by(signal)),
            }
        }
        // Once the lease may have run out, it may no longer lead.
        () = super::lock::lost(&session, Duration::ZERO) => {
            eprintln!("latch elect: the session was lost: no longer the leader of {name:?}");
            Ok(ExitCode::from(super::lock::LOST))
        }
        // Resigned by another holder of the sequencer, or the session closed by someone else.
        ended = super::lock::hold_ended(&client, &sequencer) => {
            eprintln!(
                "latch elect: {}: no longer the leader of {name:?}",
                match ended {
                    super::lock::HoldEnded::SessionEnded => "the session ended (closed by someone, or expired)",
                    super::lock::HoldEnded::Released => "resigned by someone else, through its sequencer",
                }
            );
            let _ = session.close().await;
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
                    "leader of {}: {} (session {}, generation {})\n",
                    super::shown(name),
                    super::shown(&String::from_utf8_lossy(&l.value)),
                    s.session_id,
                    s.generation
                ),
                _ => format!("{}: no leader\n", super::shown(name)),
            }
            .as_bytes(),
        ),
    }
}

fn info_text(e: &ElectionInfo) -> String {
    let mut text = format!("{}\n", super::shown(&e.name));
    let seq = e.leader.as_ref().and_then(|l| l.sequencer.as_ref());
    if let (Some(l), Some(s)) = (&e.leader, seq) {
        text.push_str(&format!(
            "  leader: {} (session {}, generation {}, since revision {}, lock-delay {} ms)\n",
            super::shown(&String::from_utf8_lossy(&l.value)),
            s.session_id,
            s.generation,
            e.elected_revision,
            e.leader_lock_delay_ms
        ));
    }
    for (i, c) in e.candidates.iter().enumerate() {
        text.push_str(&format!(
            "  candidate {}: {} (session {}, since revision {})\n",
            i + 1,
            super::shown(&String::from_utf8_lossy(&c.value)),
            c.session_id,
            c.queued_revision
        ));
    }
    if e.delayed {
        text.push_str(&format!(
            "  lock-delay of {} ms since revision {}: nobody is elected until it ends\n",
            e.delay_ms, e.delay_since_revision
        ));
    }
    text
}

fn info_json(e: &ElectionInfo) -> serde_json::Value {
    let seq = e.leader.as_ref().and_then(|l| l.sequencer.as_ref());
    json!({
        "name": e.name,
        "leader": e.leader.as_ref().map(|l| json!({
            "value": String::from_utf8_lossy(&l.value),
            "session": seq.map(|s| s.session_id.clone()),
            "generation": seq.map(|s| s.generation),
            "sequencer": seq.map(|s| s.token.clone()),
            "elected_revision": e.elected_revision,
            "lock_delay_ms": e.leader_lock_delay_ms,
        })),
        "candidates": e.candidates.iter().map(|c| json!({
            "value": String::from_utf8_lossy(&c.value),
            "session": c.session_id,
            "queued_revision": c.queued_revision,
        })).collect::<Vec<_>>(),
        "delayed": e.delayed,
        "delay_since_revision": e.delay_since_revision,
        "delay_ms": e.delay_ms,
    })
}
