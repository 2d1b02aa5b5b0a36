//! `latch lock NAME [--shared] [--ttl 10s] [--wait 30s] -- CMD [ARGS]`: runs CMD while holding
//! the lock; `latch lock describe NAME`, `latch lock list [PREFIX]`, and `latch lock check
//! SEQUENCER` (does it still hold its lock? for a script that fences a resource).
//!
//! The child sees `LATCH_LOCK_SEQUENCER` (the sequencer's string form) and `LATCH_FENCING_TOKEN`
//! (its generation, a decimal integer) in its environment. Exit status: CMD's own (128 + the
//! signal if a signal ended it); 1 when the lock was not acquired in time; 126 when CMD cannot
//! be run, 127 when it is not found (as `env` and `timeout` say); 128 + the signal when SIGINT,
//! SIGTERM or SIGHUP came while waiting for the lock; [`LOST`] when the
//! session was lost while CMD ran — CMD and what it started (its process group) were then sent
//! SIGTERM, and SIGKILL `--grace` later: a holder must not go on believing it holds the lock.
//! SIGTERM comes when keepalives have failed until the lease ran out, or earlier when `--grace`
//! is longer than the lock-delay, so that SIGKILL always lands before the cluster can grant the
//! lock to anyone else. A hold someone else ended — its session closed, or released through its
//! sequencer ([`hold_ended`]) — is followed by no lock-delay (the next waiter holds the lock at
//! once), so CMD then gets SIGKILL at once.
//!
//! CMD runs in a process group of its own, as GNU `timeout` runs its command: SIGINT, SIGTERM,
//! SIGHUP and SIGQUIT sent to `latch lock` are passed on to it; Ctrl-Z stops both (and on
//! resumption CMD goes on only if the session is still surely alive, else it is killed and the
//! status is 3). If `latch lock` itself dies (SIGKILL, say), CMD's group gets SIGKILL
//! (`latch lock-exec`, the group's leader, hears of it from the kernel: [`supervise`]): nothing
//! would be left to stop CMD before its session expires and the lock goes to another. Limits:
//! what left the group (`setsid`, a daemon) is not covered by that, nor what changed user or
//! runs a set-user-ID program (`sudo`, `su`: no permission to kill it); and CMD is not in the
//! terminal's foreground group, so a CMD that reads the terminal is stopped by SIGTTIN (said on
//! stderr; give it its input another way). `describe`, `list` and `check` name subcommands, not
//! locks: `latch lock check -- CMD` is a usage error.

use futures::FutureExt as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use latch_client::proto::{LockInfo, LockMode};
use latch_client::{LockOptions, Session, SessionState, Wait};
use serde_json::json;

use super::{interrupted, killed_by, print_bytes, print_json, ClientArgs, Output, UsageError};

/// The exit status of `latch lock` when the session (and so the lock) was lost while CMD ran.
pub const LOST: u8 = 3;

/// How long `latch lock` waits for CMD's group to be gone after it sent it SIGKILL, before it
/// hands the lock on all the same (a process stuck in the kernel, a zombie nobody reaps).
const GROUP_GONE_WITHIN: Duration = Duration::from_secs(2);

/// `latch lock`.
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    disable_help_subcommand = true,
    after_help = "CMD sees LATCH_LOCK_SEQUENCER (the sequencer's string form) and LATCH_FENCING_TOKEN \
                  (its generation) in its environment, and LATCH_ENDPOINTS for its own `latch` commands.\n\
                  Exit status: CMD's own (128 + the signal that ended it); 1 if the lock was not acquired \
                  in time; 3 if the session was lost while CMD ran (CMD then got SIGTERM, and SIGKILL after \
                  --grace), or someone else released the lock or closed its session (CMD then got SIGKILL \
                  at once); 126 if CMD cannot be run, 127 if it is not found; 128 + the signal if SIGINT, \
                  SIGTERM or SIGHUP came while waiting; 2 usage error.\n\
                  If `latch lock` itself is killed, CMD and what it started get SIGKILL (unless they left its \
                  process group or changed user: setsid, sudo, su, …).\n\
                  `describe`, `list` and `check` are subcommands: not usable as a lock NAME."
)]
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
    /// Whether SEQUENCER (a holder's LATCH_LOCK_SEQUENCER) still holds its lock: exit 0 if it
    /// does, 1 saying why not (released, its session ended, a later generation holds it, …).
    Check { sequencer: String },
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
    #[arg(long, allow_hyphen_values = true, value_parser = crate::config::parse_duration, default_value = "10s")]
    pub ttl: Duration,
    /// Wait at most this long for the lock (0s: try once); as long as it takes when not given.
    #[arg(long, allow_hyphen_values = true, value_parser = crate::config::parse_duration)]
    pub wait: Option<Duration>,
    /// Lock-delay should the session expire while holding (0 … 60s); 5s if not given.
    #[arg(long, allow_hyphen_values = true, value_parser = crate::config::parse_duration)]
    pub lock_delay: Option<Duration>,
    /// How long CMD has between SIGTERM and SIGKILL once the lock is lost (never past the
    /// lock-delay's end, when another holder may be granted the lock).
    #[arg(long, allow_hyphen_values = true, value_parser = crate::config::parse_duration, default_value = "2s")]
    pub grace: Duration,
}

pub async fn run(command: LockCommand, client: &ClientArgs) -> anyhow::Result<ExitCode> {
    let output = client.output;
    if command.op.is_none() {
        refuse_bad_run_args(&command.run)?;
    }
    // CMD's own `latch` commands (`latch lock check "$LATCH_LOCK_SEQUENCER"`) ask these members.
    let endpoints = client.endpoints.join(",");
    let client = client.connect().await?;
    match command.op {
        Some(LockOp::Describe { name }) => {
            super::refuse_bad_lock_name("the lock's", &name)?;
            let lock = client.describe_lock(&name).await?;
            match output {
                Output::Json => print_json(&info_json(
                    // A free lock: no holders, no waiters, no delay.
                    &lock.clone().unwrap_or(LockInfo { name: name.clone(), ..Default::default() }),
                ))?,
                Output::Text => print_bytes(
                    lock.map_or(format!("{}: free\n", super::shown(&name)), |l| info_text(&l)).as_bytes(),
                )?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(LockOp::Check { sequencer }) => {
            let seq = latch_client::sequencer::parse(&sequencer)
                .map_err(|e| UsageError(format!("SEQUENCER {sequencer:?}: {e}")))?;
            let answer = client.check_sequencer(&sequencer).await?;
            let revision = answer.header.as_ref().map_or(0, |h| h.revision);
            match output {
                Output::Json => print_json(&json!({
                    "valid": answer.valid,
                    "reason": answer.reason,
                    "name": seq.name,
                    "generation": seq.generation,
                    "revision": revision,
                }))?,
                Output::Text if answer.valid => print_bytes(
                    format!(
                        "valid: holds {:?} (generation {}) at revision {revision}\n",
                        seq.name, seq.generation
                    )
                    .as_bytes(),
                )?,
                Output::Text => print_bytes(format!("invalid: {}\n", answer.reason).as_bytes())?,
            }
            Ok(ExitCode::from(if answer.valid { 0 } else { 1 }))
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
            let mut stop = interrupted()?;
            let session = super::command_session(&client, args.ttl, "latch lock", &name).await?;
            let options = LockOptions {
                mode: if args.shared { LockMode::Shared } else { LockMode::Exclusive },
                wait: match args.wait {
                    None => Wait::Forever,
                    Some(d) if d.is_zero() => Wait::No,
                    Some(d) => Wait::For(d),
                },
                lock_delay: args.lock_delay,
            };
            let notice =
                async { format!("latch lock: waiting for {name:?}{}", lock_state(&client, &name).await) };
            let waited = stop.wait_saying(session.lock(&name, options), notice).await;
            let guard = match waited {
                Ok(Ok(guard)) => guard,
                Ok(Err(e)) if e.code() == tonic::Code::NotFound => {
                    // The wait went with the session: nothing ran, nothing is held.
                    eprintln!(
                        "latch lock: the session waiting for {name:?} ended before the lock was granted \
                         (it expired, no keepalive reaching the cluster for its TTL of {}, or someone \
                         closed it); {program:?} did not run",
                        humantime::format_duration(args.ttl)
                    );
                    return Ok(ExitCode::from(1));
                }
                Ok(Err(e)) => {
                    // What the failed acquire may have left queued goes with the session,
                    // now rather than at its expiry (this process is about to exit).
                    let _ = session.close().await;
                    return Err(e.into());
                }
                Err(signal) => {
                    eprintln!("latch lock: interrupted (signal {signal}) while waiting for {name:?}");
                    // Closing the session withdraws the wait (or, failing that, its expiry does).
                    let left = "the session expires by itself (its TTL after its last keepalive); its \
                                wait may be granted meanwhile, and the lock is then held until then and \
                                its lock-delay after";
                    if let Ok(Err(e)) = stop.unless_again("latch lock", left, session.close()).await {
                        eprintln!("latch lock: closing the session failed ({e}); {left}");
                    }
                    return Ok(killed_by(signal));
                }
            };
            let Some(guard) = guard else {
                session.close().await?;
                // Why, as far as the lock says within a second: a free lock in its lock-delay is
                // no mystery.
                let why = lock_state(&client, &name).await;
                eprintln!("latch lock: {name:?} was not acquired in time{why}");
                return Ok(ExitCode::from(1));
            };
            // A grant that came after the lease may have run out is no lock to run CMD under.
            if lost(&session, Duration::ZERO).now_or_never().is_some() {
                eprintln!("latch lock: {name:?} was granted after the session may have ended; not running {program:?}");
                let _ = session.close().await;
                return Ok(ExitCode::from(1));
            }
            // Registered before CMD starts, so no signal meant for it gets its default action.
            let mut signals = Signals::new()?;
            // Through `latch lock-exec`, which runs CMD in its group and kills the group should
            // we die: this very binary, even if its file was replaced (an upgrade) while we
            // waited for the lock. Without /proc (a bare chroot), CMD runs directly, and is not
            // killed should we die.
            const SELF: &str = "/proc/self/exe";
            let mut spawned = if std::path::Path::new(SELF).exists() {
                let mut through = tokio::process::Command::new(SELF);
                let parent = rustix::process::getpid().as_raw_nonzero().to_string();
                through.args(["lock-exec", "--parent", &parent, "--"]).arg(program).args(program_args);
                through
            } else {
                eprintln!("latch lock: no {SELF}: {program:?} will not be killed if latch lock dies");
                let mut direct = tokio::process::Command::new(program);
                direct.args(program_args);
                direct
            };
            spawned
                .env("LATCH_LOCK_SEQUENCER", guard.token())
                .env("LATCH_FENCING_TOKEN", guard.generation().to_string())
                // The members the lock is held in, for CMD's own `latch` commands (no cluster id:
                // a CMD's `--endpoints` of another cluster would then be refused by it).
                .env("LATCH_ENDPOINTS", &endpoints)
                // A group of its own, so that whatever CMD starts is signalled with it.
                .process_group(0)
                .kill_on_drop(true);
            let spawned = spawned.spawn();
            let mut child = match spawned {
                Ok(child) => child,
                Err(e) => {
                    // Hand the lock on at once rather than after the session's expiry.
                    let _ = guard.release().await;
                    let _ = session.close().await;
                    return Ok(cannot_run(program, &e));
                }
            };
            let group = Group(child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)));
            // Once the lease may have run out, nobody is granted the lock before the lock-delay
            // has passed too: CMD is sent SIGTERM so that SIGKILL, `--grace` later, lands by then
            // — and at the latest when the lease runs out.
            let lock_delay =
                args.lock_delay.unwrap_or(Duration::from_millis(latch_client::DEFAULT_LOCK_DELAY_MS));
            let term_before = args.grace.saturating_sub(lock_delay);
            let mut stopped_self = false;
            let sequencer = guard.sequencer().clone();
            let released = hold_ended(&client, &sequencer);
            tokio::pin!(released);
            let code = loop {
                tokio::select! {
                    biased;
                    status = child.wait() => {
                        let status = status?;
                        // `latch lock-exec` ends with CMD's status: killed itself (a stray
                        // signal), it may leave CMD running, which must not outlive the hold.
                        if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
                            group.send(Signal::KILL);
                            // Gone before the lock is handed on (a process in the middle of a
                            // system call ends when it returns), as far as a bounded wait goes.
                            let gone_by = tokio::time::Instant::now() + GROUP_GONE_WITHIN;
                            while group.alive() && tokio::time::Instant::now() < gone_by {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            let left = if group.alive() { "; some of it was still there 2s later" } else { "" };
                            say(format_args!(
                                "latch lock: latch lock-exec, which ran {program:?}, died of signal {signal}; \
                                 sent SIGKILL to {program:?} and what it started{left}"
                            ));
                        }
                        break exit_code(status);
                    }
                    // CMD is not in the terminal's foreground group: pass what it sends on.
                    Some(signal) = signals.next() => match signal {
                        Signal::STOP => {
                            // Ctrl-Z: CMD stops with us, and the shell gets the terminal back.
                            group.send(Signal::STOP);
                            stopped_self = true;
                            let _ = rustix::process::kill_process(rustix::process::getpid(), Signal::STOP);
                        }
                        Signal::CONT if stopped_self => {
                            stopped_self = false;
                            // Resumed: CMD may go on only if the lock is still surely ours.
                            let ours = match session.state() {
                                SessionState::Safe => !session.lease_left().is_zero(),
                                SessionState::Jeopardy => session.lease_left() > term_before,
                                SessionState::Expired => false,
                            };
                            // Nor released while stopped (a check that fails says nothing).
                            let ours = ours
                                && !matches!(client.check_sequencer(&sequencer.token).await, Ok(a) if !a.valid);
                            if ours {
                                group.send(Signal::CONT);
                            } else {
                                // The signal first: a blocked or closed stderr must not hold it up.
                                group.send(Signal::KILL);
                                say(format_args!(
                                    "latch lock: resumed after the session holding {name:?} may have ended; \
                                     killed {program:?}"
                                ));
                                child.wait().await?;
                                return Ok(ExitCode::from(LOST));
                            }
                        }
                        other => {
                            group.send(other);
                            // A stopped CMD would keep the signal pending, and the lock held, until
                            // resumed: GNU `timeout` sends SIGCONT after it alike.
                            if !stopped_self && other != Signal::CONT {
                                group.send(Signal::CONT);
                            }
                        }
                    },
                    ended = &mut released => {
                        // The next waiter may hold the lock already: a close or a release lets
                        // it go with no lock-delay between (an expiry with one, but the two are
                        // not told apart here).
                        group.send(Signal::KILL);
                        say(format_args!(
                            "latch lock: {} while {program:?} ran; killed it",
                            match ended {
                                HoldEnded::SessionEnded => format!("the session holding {name:?} ended (closed by someone, or expired)"),
                                HoldEnded::Released => format!("{name:?} was released by someone else, through its sequencer"),
                            }
                        ));
                        child.wait().await?;
                        let _ = session.close().await;
                        return Ok(ExitCode::from(LOST));
                    }
                    () = lost(&session, term_before) => {
                        let now = tokio::time::Instant::now();
                        // Expired: the cluster said the session ended (closed, say), or nothing
                        // answered for the grace past the lease. A close lets the lock go with no
                        // lock-delay between: it may be the next holder's already.
                        let ended = session.state() == SessionState::Expired;
                        let kill_at = if ended {
                            now
                        } else {
                            (now + args.grace).min(session.lease_end() + lock_delay).max(now)
                        };
                        // The signals first: a blocked or closed stderr must not hold them up.
                        group.send(Signal::TERM);
                        group.send(Signal::CONT);
                        say(format_args!(
                            "latch lock: the session holding {name:?} is lost while {program:?} runs; \
                             sent it SIGTERM (SIGKILL after {})",
                            // To the millisecond: "2s 457ms", not "2s 457ms 754us 422ns".
                            humantime::format_duration(Duration::from_millis((kill_at - now).as_millis() as u64))
                        ));
                        // Until the deadline or until nothing of the group is left; then SIGKILL
                        // for whatever is (CMD may be gone while what it started is not). A
                        // terminating signal meanwhile is passed on, and a second one is SIGKILL
                        // at once (a user at a terminal pressing Ctrl-C again).
                        let (mut kill_at, mut heard) = (kill_at, false);
                        while tokio::time::Instant::now() < kill_at && group.alive() {
                            tokio::select! {
                                _ = tokio::time::timeout_at(kill_at, child.wait()) => {}
                                Some(signal) = signals.next() => match signal {
                                    Signal::STOP | Signal::CONT => {}
                                    // A terminal's hangup comes twice (the kernel's, the shell's).
                                    Signal::HUP if heard => {}
                                    _ if heard => kill_at = tokio::time::Instant::now(),
                                    other => {
                                        group.send(other);
                                        group.send(Signal::CONT);
                                        heard = true;
                                    }
                                },
                            }
                            if group.alive() && tokio::time::Instant::now() < kill_at {
                                tokio::time::sleep(Duration::from_millis(20).min(kill_at - tokio::time::Instant::now())).await;
                            }
                        }
                        group.send(Signal::KILL);
                        child.wait().await?;
                        return Ok(ExitCode::from(LOST));
                    }
                }
            };
            // The lock goes with the session; releasing first makes the hand-over immediate. The
            // command has run: its status is the answer, whatever becomes of these two.
            if let Err(e) = guard.release().await {
                tracing::warn!(error = %e, "releasing the lock failed; closing the session releases it");
            }
            if let Err(e) = session.close().await {
                tracing::warn!(error = %e, "closing the session failed; it expires by itself");
            }
            Ok(ExitCode::from(code))
        }
    }
}

use rustix::process::Signal;

/// What `latch lock NAME -- CMD` is given that the server would refuse, refused before a
/// session is made for it (a usage error naming the flag).
fn refuse_bad_run_args(args: &RunArgs) -> Result<(), UsageError> {
    if let Some(name) = &args.name {
        super::refuse_bad_lock_name("the lock's", name)?;
        super::refuse_subcommand_as_name("lock", "a lock", &["describe", "list", "check"], name)?;
    }
    let most = Duration::from_millis(latch_client::MAX_LOCK_DELAY_MS);
    if args.lock_delay.is_some_and(|d| d > most) {
        return Err(UsageError(format!(
            "--lock-delay: at most {} (a lock is unusable that long after its holder's session expires)",
            humantime::format_duration(most)
        )));
    }
    Ok(())
}

/// `latch lock-exec --parent PID -- CMD [ARGS]` (hidden): what `latch lock` starts in CMD's
/// place, the leader of CMD's process group ([`supervise`]).
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The `latch lock` process that holds the lock.
    #[arg(long)]
    pub parent: i32,
    /// CMD and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Runs CMD in this process's group (the one `latch lock` made for it) and ends with CMD's
/// status (128 + the signal, when one ended it): 127 when CMD is not found, 126 when it cannot
/// be run otherwise, as `env` and `timeout` say; 137 when `latch lock` died already.
///
/// Should `latch lock` (`--parent`) die — SIGKILL, say — the kernel tells this process
/// (`PR_SET_PDEATHSIG`), which kills its whole group: CMD and whatever CMD started (a shell's
/// children among them), so that nothing goes on holding a lock whose session nobody keeps
/// alive. The signals `latch lock` passes on to the group reach CMD and end nothing here, so
/// this process outlives CMD by nothing. A CMD stopped by the terminal (SIGTTIN, SIGTTOU: the
/// group is not the terminal's foreground one) is named once on stderr rather than left to
/// hang unexplained.
pub async fn supervise(args: ExecArgs) -> anyhow::Result<ExitCode> {
    use rustix::process::{getppid, kill_current_process_group, waitid, Pid, WaitId, WaitIdOptions};
    use tokio::signal::unix::{signal, SignalKind};
    let Some((program, program_args)) = args.command.split_first() else {
        return Err(UsageError("the command to run goes after `--`".into()).into());
    };
    // Taken before the kernel is asked for it, so that it never ends this process unheard;
    // like the ones passed on, which are CMD's to act on.
    let mut parent_died = signal(SignalKind::user_defined2())?;
    let mut changed = signal(SignalKind::child())?;
    let mut passed_on = Vec::new();
    // The terminal's SIGTTIN (CMD read it) goes to the whole group: it would stop this process
    // too, which could then say nothing of it. Not SIGTTOU: under `stty tostop` this process's
    // own notice would draw it, again and again (it says nothing then: `may_tell`).
    let read_terminal = SignalKind::from_raw(Signal::TTIN.as_raw());
    for kind in [SignalKind::interrupt(), SignalKind::terminate(), SignalKind::hangup(), SignalKind::quit()]
        .into_iter()
        .chain([read_terminal])
    {
        passed_on.push(signal(kind)?);
    }
    rustix::process::set_parent_process_death_signal(Some(Signal::USR2))?;
    let orphaned = || Pid::as_raw(getppid()) != args.parent;
    if orphaned() {
        // Died between the fork and the request: the kernel will not signal for it.
        return Ok(ExitCode::from(128 + Signal::KILL.as_raw() as u8));
    }
    let mut child = match tokio::process::Command::new(program).args(program_args).spawn() {
        Ok(child) => child,
        Err(e) => return Ok(cannot_run(program, &e)),
    };
    let pid = child.id().and_then(|id| Pid::from_raw(id as i32));
    let mut told = false;
    loop {
        let passed = futures::future::select_all(passed_on.iter_mut().map(|s| Box::pin(s.recv())));
        tokio::select! {
            status = child.wait() => return Ok(ExitCode::from(exit_code(status?))),
            _ = parent_died.recv() => {
                // The signal also comes when the thread that started us ends: only a parent
                // gone (this process handed to another) counts.
                if orphaned() {
                    let _ = kill_current_process_group(Signal::KILL);
                }
            }
            _ = changed.recv(), if !told => {
                // NOWAIT: the stop stays to be seen; `child.wait` above waits for the exit.
                let options = WaitIdOptions::STOPPED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
                let stopped_by = pid.and_then(|pid| waitid(WaitId::Pid(pid), options).ok().flatten());
                let by = stopped_by.and_then(|s| s.stopping_signal());
                if by == Some(Signal::TTIN.as_raw()) && may_tell() {
                    told = true;
                    say(format_args!(
                        "latch lock: {program:?} is stopped on reading the terminal: under latch lock it runs in a \
                         process group of its own, not the terminal's foreground one; give it its input another \
                         way (Ctrl-C ends it and hands the lock on)"
                    ));
                }
            }
            _ = passed => {}
        }
    }
}

/// Whether this process (in the background of its terminal, when it has one) may write to
/// stderr without drawing SIGTTOU: not when stderr is a terminal set to stop background writers
/// (`stty tostop`) whose foreground group is another.
fn may_tell() -> bool {
    let stderr = std::io::stderr();
    if !rustix::termios::isatty(&stderr) {
        return true;
    }
    let foreground = rustix::termios::tcgetpgrp(&stderr).is_ok_and(|g| g == rustix::process::getpgrp());
    let stops_writers = rustix::termios::tcgetattr(&stderr)
        .map_or(true, |t| t.local_modes.contains(rustix::termios::LocalModes::TOSTOP));
    foreground || !stops_writers
}

/// Says why CMD could not be run, and the status for it: 127 when it is not found, 126
/// otherwise, as `env`, `timeout` and shells say it.
fn cannot_run(program: &str, e: &std::io::Error) -> ExitCode {
    eprintln!("latch lock: cannot run {program:?}: {e}");
    ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 })
}

/// CMD's process group.
struct Group(Option<rustix::process::Pid>);

impl Group {
    fn send(&self, signal: Signal) {
        if let Some(group) = self.0 {
            let _ = rustix::process::kill_process_group(group, signal);
        }
    }

    /// Whether any process of the group is left (a zombie CMD not reaped yet counts).
    fn alive(&self) -> bool {
        self.0.is_some_and(|group| rustix::process::test_kill_process_group(group).is_ok())
    }
}

/// The signals `latch lock` passes on to CMD's group (SIGTSTP arrives as [`Signal::STOP`]).
struct Signals(Vec<(Signal, tokio::signal::unix::Signal)>);

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let kinds = [
            (Signal::INT, SignalKind::interrupt()),
            (Signal::TERM, SignalKind::terminate()),
            (Signal::HUP, SignalKind::hangup()),
            (Signal::QUIT, SignalKind::quit()),
            (Signal::STOP, SignalKind::from_raw(Signal::TSTP.as_raw())),
            (Signal::CONT, SignalKind::from_raw(Signal::CONT.as_raw())),
        ];
        let mut out = Vec::new();
        for (ours, kind) in kinds {
            out.push((ours, signal(kind)?));
        }
        Ok(Signals(out))
    }

    /// The next signal received.
    async fn next(&mut self) -> Option<Signal> {
        let waits = self.0.iter_mut().map(|(s, stream)| {
            let s = *s;
            Box::pin(async move { stream.recv().await.map(|()| s) })
        });
        futures::future::select_all(waits).await.0
    }
}

/// Why lock `name` is not granted now, as " (…)", as far as its description says within a
/// second; empty otherwise.
async fn lock_state(client: &latch_client::Client, name: &str) -> String {
    match tokio::time::timeout(Duration::from_secs(1), client.describe_lock(name)).await {
        Ok(Ok(Some(lock))) => why_held(&lock).map(|s| format!(" ({s})")).unwrap_or_default(),
        _ => String::new(),
    }
}

/// Why lock `lock` is not granted now: a lock-delay in force, or its holders (and how many
/// wait).
fn why_held(lock: &latch_client::LockInfo) -> Option<String> {
    if lock.delayed {
        return Some(format!(
            "its lock-delay of {} ms is in force: the last holder's session expired at revision {}, \
             and nobody is granted it until the delay ends",
            lock.delay_ms, lock.delay_since_revision
        ));
    }
    let first = lock.holders.first()?;
    let more = match lock.holders.len() {
        1 => String::new(),
        n => format!(" and {} more", n - 1),
    };
    let waiting = match lock.waiters.len() {
        0 => String::new(),
        n => format!("; {n} waiting"),
    };
    Some(format!("held by session {}{more}{waiting}", first.session_id))
}

/// Writes `message` on stderr, if it can: never panics (a closed stderr) where `eprintln!` would.
fn say(message: std::fmt::Arguments) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// Resolves once the session can no longer be sure to live `margin` more: keepalives are
/// failing and no more than `margin` of the lease is left, or the cluster ended it — or, in
/// any state, once the lease ran out (the state is the keepalive task's word; the lease's end
/// on this clock is what the cluster promised).
pub(super) async fn lost(session: &Session, margin: Duration) {
    let mut state = session.watch();
    loop {
        let now = *state.borrow_and_update();
        match now {
            SessionState::Expired => return,
            SessionState::Safe => {
                let left = session.lease_left();
                if left.is_zero() {
                    return;
                }
                tokio::select! {
                    changed = state.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(left) => {}
                }
            }
            SessionState::Jeopardy => {
                let until = session.lease_left().saturating_sub(margin);
                if until.is_zero() {
                    return;
                }
                tokio::select! {
                    changed = state.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(until) => {}
                }
            }
        }
    }
}

/// How often a running `latch lock` (`latch elect`) asks whether its sequencer still holds.
const HOLD_CHECK_EVERY: Duration = Duration::from_secs(1);

/// How a hold ended on the cluster while this process may not have heard of it otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HoldEnded {
    /// Its session is gone (closed by someone, or expired): a watch of the session says so.
    SessionEnded,
    /// Its sequencer holds no more while the session lives: released (resigned) by whoever
    /// had the sequencer, a bearer token.
    Released,
}

/// Resolves once the hold `sequencer` stands for (a lock's, or an election's leadership) has
/// ended on the cluster — its session closed or expired (a SESSIONS watch of the session, which
/// carries an event only when the session is created or ends), or released through the
/// sequencer from elsewhere (a linearizable check of it every [`HOLD_CHECK_EVERY`]). Neither
/// carries the lock's own changes, whose size grows with its holders and waiters. A watch that
/// fails is opened again; a check that fails says nothing.
pub(super) async fn hold_ended(
    client: &latch_client::Client,
    sequencer: &latch_client::proto::Sequencer,
) -> HoldEnded {
    use futures::StreamExt as _;
    use latch_client::proto::event::EventType;
    use latch_client::{WatchOptions, WatchTarget, WatchUpdate};
    let session_ended = async {
        loop {
            let options = WatchOptions::key(sequencer.session_id.as_str()).target(WatchTarget::Sessions);
            let mut changes = client.watch(options);
            while let Some(update) = changes.next().await {
                match update {
                    Ok(WatchUpdate::Events { events, .. })
                        if events.iter().any(|e| e.r#type == EventType::Delete as i32) =>
                    {
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "watching the session failed; watching it again");
                        break;
                    }
                }
            }
            tokio::time::sleep(HOLD_CHECK_EVERY).await;
        }
    };
    let released = async {
        loop {
            tokio::time::sleep(HOLD_CHECK_EVERY).await;
            if matches!(client.check_sequencer(&sequencer.token).await, Ok(answer) if !answer.valid) {
                return;
            }
        }
    };
    tokio::select! {
        () = session_ended => HoldEnded::SessionEnded,
        () = released => HoldEnded::Released,
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
    let mut text = format!("{}\n", super::shown(&l.name));
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
