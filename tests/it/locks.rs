//! Locks and elections on real processes (lock.proto, election.proto; `fsm::locks`): a holder
//! that is paused (SIGSTOP) loses its lock only after its TTL and lock-delay, and its sequencer
//! is fenced after that; a leader's death keeps holders, queues and generations; an election's
//! observer sees the next leader once the killed leader's session and lock-delay have run out;
//! `latch lock` runs its commands one at a time and ends its command when the session is lost;
//! and the API refuses bad requests by name.
//!
//! The `latch lock` / `latch elect` processes of these tests run in process groups of their own
//! ([`LatchProcess`]), so that a test can pause or kill them and leaves none of them, nor what
//! they ran, behind.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use futures::StreamExt;
use latch_client::{
    Client, Code, Compare, ElectionInfo, LockInfo, LockMode, LockOptions, Op, Sequencer, SessionOptions, Txn,
    Wait,
};
use rustix::process::{Pid, Signal};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::harness::{eventually, latch_bin, sample, Cluster, STARTUP};

/// How often the tests that watch a lock change look again.
const POLL: Duration = Duration::from_millis(20);

/// Every member's client address, as `--endpoints` takes them.
fn endpoints(c: &Cluster) -> String {
    c.ids().iter().map(|id| c.member(*id).client_addr.clone()).collect::<Vec<_>>().join(",")
}

/// The processes that have not ended (zombies excluded) of process group `pgid` and of the
/// groups led by its leader's children (`latch lock` runs its command in a group of its own):
/// (pid, name).
fn group_alive(pgid: i32) -> Vec<(i32, String)> {
    let all: Vec<(i32, String, String, i32, i32)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter_map(|pid| {
            proc_stat(pid).map(|(name, state, parent, group)| (pid, name, state, parent, group))
        })
        .collect();
    let mut groups = vec![pgid];
    groups.extend(all.iter().filter(|p| p.3 == pgid && p.4 == p.0).map(|p| p.0));
    all.into_iter().filter(|p| groups.contains(&p.4) && p.2 != "Z").map(|p| (p.0, p.1)).collect()
}

/// Process `pid`'s name, state, parent and process group, from /proc; `None` once it is gone.
fn proc_stat(pid: i32) -> Option<(String, String, i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let mut fields = stat[close + 1..].split_whitespace();
    let state = fields.next()?.to_string();
    let parent = fields.next()?.parse().ok()?;
    let group = fields.next()?.parse().ok()?;
    Some((stat[open + 1..close].to_string(), state, parent, group))
}

/// Whether process `pid` still runs (a zombie has ended).
fn running(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(_, state, _, _)| state != "Z")
}

/// A `latch` command run as a child process, leader of a process group of its own, with its
/// stdout and stderr in files. Dropping it SIGKILLs the whole group (the command and whatever
/// it ran), stopped or not.
struct LatchProcess {
    what: String,
    child: tokio::process::Child,
    pid: Pid,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl LatchProcess {
    fn spawn(dir: &Path, tag: &str, args: &[&str]) -> LatchProcess {
        let stdout = dir.join(format!("{tag}.stdout"));
        let stderr = dir.join(format!("{tag}.stderr"));
        let mut cmd = tokio::process::Command::new(latch_bin());
        cmd.args(args)
            .env_remove("LATCH_ENDPOINTS")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .process_group(0)
            .kill_on_drop(true);
        let what = format!("latch {}", args.join(" "));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
        let pid = Pid::from_raw(child.id().unwrap() as i32).unwrap();
        LatchProcess { what, child, pid, stdout, stderr }
    }

    fn pid(&self) -> i32 {
        self.pid.as_raw_nonzero().get()
    }

    fn signal(&self, signal: Signal) {
        rustix::process::kill_process(self.pid, signal)
            .unwrap_or_else(|e| panic!("sending {signal:?} to `{}`: {e}", self.what));
    }

    /// Its exit status; panics, with what it printed, if it still runs after `timeout`.
    async fn exit_within(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "expected `{}` to exit within {timeout:?}; it still runs. {}",
                self.what,
                self.output()
            ),
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// What it printed, for assert messages.
    fn output(&self) -> String {
        let stdout = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        format!("Its stdout: {stdout:?}; its stderr: {:?}", self.stderr())
    }

    /// The processes of its group still running: itself, and what it ran.
    fn group_alive(&self) -> Vec<(i32, String)> {
        group_alive(self.pid())
    }
}

impl Drop for LatchProcess {
    fn drop(&mut self) {
        // Only processes still alive: an ended one's id could be another's by now.
        for (pid, _) in self.group_alive() {
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
    }
}

/// Lock `name` as `describe_lock` answers it; `Err` says why not (for [`eventually`]).
async fn describe(client: &Client, name: &str) -> Result<LockInfo, String> {
    match client.describe_lock(name).await {
        Ok(Some(info)) => Ok(info),
        Ok(None) => Err(format!("{name:?} is free")),
        Err(e) => Err(format!("describe_lock({name:?}): {e}")),
    }
}

fn holder_sessions(info: &LockInfo) -> Vec<&str> {
    info.holders.iter().map(|h| h.session_id.as_str()).collect()
}

fn waiter_sessions(info: &LockInfo) -> Vec<&str> {
    info.waiters.iter().map(|w| w.session_id.as_str()).collect()
}

/// Waits until lock `name` is held by `holders` and awaited by `waiters` (in queue order).
async fn until_lock_is(client: &Client, name: &str, holders: &[&str], waiters: &[&str]) -> LockInfo {
    let what = format!("{name:?} held by {holders:?} and awaited by {waiters:?}");
    eventually(&what, STARTUP, || async {
        let info = describe(client, name).await?;
        if holder_sessions(&info) == holders && waiter_sessions(&info) == waiters {
            Ok(info)
        } else {
            Err(format!("{info:?}"))
        }
    })
    .await
}

/// Asks for exclusive lock `name` for `session` in a task of its own, waiting as long as it
/// takes; the task answers the grant and when it came.
fn acquire_in_background(
    client: &Client,
    session: &str,
    name: &str,
    options: LockOptions,
) -> JoinHandle<(Option<Sequencer>, Instant)> {
    let (client, session, name) = (client.clone(), session.to_string(), name.to_string());
    tokio::spawn(async move {
        let granted = client
            .acquire(&session, &name, options)
            .await
            .unwrap_or_else(|e| panic!("acquire {name:?} for session {session}: {e}"));
        (granted, Instant::now())
    })
}

/// The grant a background acquire got, within `timeout`.
async fn granted_within(
    task: JoinHandle<(Option<Sequencer>, Instant)>,
    who: &str,
    timeout: Duration,
) -> Sequencer {
    let (granted, _) = tokio::time::timeout(timeout, task)
        .await
        .unwrap_or_else(|_| panic!("expected {who} to be granted the lock within {timeout:?}"))
        .unwrap();
    granted.unwrap_or_else(|| panic!("{who} waits as long as it takes, so it is granted, not refused"))
}

#[tokio::test]
async fn two_clients_contend_and_a_paused_holder_is_fenced_after_ttl_plus_lock_delay() {
    const NAME: &str = "jobs/nightly";
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let client = c.client().await;
    // The leader's count of a lease is the one expiries follow; another member counts the same
    // lease at least as long (by how late it applied the leader's last checkpoint, core::leases),
    // so its figure is no lower bound of when the lock may be handed on.
    let leader_client = c.client_of(leader).await;
    let dir = tempfile::tempdir().unwrap();
    let lock_delay = Duration::from_secs(1);
    let file = dir.path().join("sequencer");
    let script = format!("echo \"$LATCH_LOCK_SEQUENCER\" > '{}'; exec sleep 60", file.display());
    let eps = endpoints(&c);
    let args =
        ["--endpoints", &eps, "lock", NAME, "--ttl", "1s", "--lock-delay", "1s", "--", "sh", "-c", &script];
    let mut holder = LatchProcess::spawn(dir.path(), "holder", &args);
    let old = eventually("the holder's command to write down its sequencer", STARTUP, || async {
        match std::fs::read_to_string(&file) {
            Ok(text) if text.ends_with('\n') => latch_client::sequencer::parse(text.trim())
                .map_err(|e| format!("LATCH_LOCK_SEQUENCER {text:?}: {e}")),
            Ok(text) => Err(format!("the file holds {text:?} so far")),
            Err(e) => Err(format!("{e}; {}", holder.output())),
        }
    })
    .await;
    let info = describe(&client, NAME).await.unwrap();
    assert_eq!(holder_sessions(&info), [old.session_id.as_str()], "the holder's session holds {NAME:?}");
    assert_eq!(info.holders[0].lock_delay_ms, 1_000, "with the lock-delay it asked for");

    let contender =
        client.session(SessionOptions::new(Duration::from_secs(10)).name("contender")).await.unwrap();
    let options = LockOptions::exclusive().lock_delay(lock_delay);
    let waiting = acquire_in_background(&client, contender.id(), NAME, options);
    until_lock_is(&client, NAME, &[&old.session_id], &[contender.id()]).await;

    holder.signal(Signal::STOP);
    let stopped = Instant::now();
    // The lease the paused holder still has, as the leader counts it: nobody may be granted the
    // lock before it and then the lock-delay have passed.
    let lease_left = leader_client
        .session_info(&old.session_id)
        .await
        .expect("the leader still knows the paused holder's session, the moment it was paused")
        .remaining_ms;
    let earliest = Duration::from_millis(u64::try_from(lease_left).unwrap_or(0)) + lock_delay;
    // Watch the hand-over: the holder's session expires, the lock sits out its lock-delay with
    // nobody holding it, then the contender gets it.
    let mut delayed = None;
    while !waiting.is_finished() {
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "expected the contender to get {NAME:?} within 20 s of the holder's pause; it is {:?}",
            client.describe_lock(NAME).await
        );
        if let Ok(Some(info)) = client.describe_lock(NAME).await {
            if info.delayed && info.holders.is_empty() && delayed.is_none() {
                delayed = Some(info);
            }
        }
        tokio::time::sleep(POLL).await;
    }
    let (granted, at) = waiting.await.unwrap();
    let new = granted.expect("the contender waits as long as it takes, so it is granted");
    let waited = at - stopped;
    eprintln!("the contender got {NAME:?} {waited:?} after the holder was paused");
    assert!(
        waited >= earliest,
        "the contender got the lock {waited:?} after the holder's pause, whose session still had \
         {lease_left} ms of lease then: before that lease and the lock-delay ({lock_delay:?}) had passed"
    );
    assert_eq!(new.session_id, contender.id(), "the contender holds the lock now");
    assert!(
        new.generation > old.generation,
        "the new grant's generation {} should be above the paused holder's {}",
        new.generation,
        old.generation
    );
    let delayed = delayed.expect(
        "between the holder's expiry and the next grant, the lock should be seen in its lock-delay, held by nobody",
    );
    assert_eq!(delayed.delay_ms, 1_000, "the delay is the one the expired holder asked for");
    assert_eq!(
        waiter_sessions(&delayed),
        [contender.id()],
        "the contender waited out the delay in the queue"
    );

    // The paused holder is fenced: its sequencer is no longer valid.
    let verdict = client.check_sequencer(&old.token).await.unwrap();
    assert!(!verdict.valid, "the paused holder's sequencer should be invalid once its session expired");
    assert!(!verdict.reason.is_empty(), "an invalid sequencer comes with a reason");
    eprintln!("CheckSequencer on the paused holder's sequencer: {:?}", verdict.reason);
    assert!(client.check_sequencer(&new.token).await.unwrap().valid, "the new holder's sequencer is valid");

    // Woken up, the ex-holder finds its session gone: it ends its command and exits 3.
    holder.signal(Signal::CONT);
    let status = holder.exit_within(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(3), "a `latch lock` whose session was lost exits 3. {}", holder.output());
    assert_eq!(holder.group_alive(), [], "the ex-holder's command should be ended with it");

    // Nor does its sequencer pass a fenced txn (Compare::sequencer leaves the compare's key
    // empty: kv.proto says a sequencer compare ignores it).
    let stale = Txn::new()
        .when([Compare::sequencer(old.token.clone())])
        .and_then([Op::put("jobs/nightly/output", "from the paused holder")]);
    let stale = client.txn(stale).await.unwrap_or_else(|e| {
        panic!("a txn fenced by the paused holder's sequencer should be answered (not succeeded), not refused: {e}")
    });
    assert!(!stale.succeeded, "a txn fenced by the paused holder's sequencer should fail");
    assert!(client.get("jobs/nightly/output").await.unwrap().is_none(), "… and its put must not happen");
    let fresh = Txn::new()
        .when([Compare::sequencer(new.token.clone())])
        .and_then([Op::put("jobs/nightly/output", "from the new holder")]);
    let fresh = client.txn(fresh).await.unwrap_or_else(|e| {
        panic!("a txn fenced by the holder's sequencer should be answered (succeeded), not refused: {e}")
    });
    assert!(fresh.succeeded, "a txn fenced by the holder's sequencer succeeds");
    let kv = client.get("jobs/nightly/output").await.unwrap().expect("the new holder's put happened");
    assert_eq!(kv.value, b"from the new holder");
    contender.close().await.unwrap();
}

#[tokio::test]
async fn killing_the_leader_keeps_holders_queue_and_generations() {
    const NAME: &str = "shards/7";
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    // The leader first: the waits are on the member that dies, and move to another.
    let mut order = vec![leader];
    order.extend(c.ids().into_iter().filter(|id| *id != leader));
    let client = c.client_of_many(&order).await;
    let ttl = Duration::from_secs(10);
    let a = client.session(SessionOptions::new(ttl).name("a")).await.unwrap();
    let b = client.session(SessionOptions::new(ttl).name("b")).await.unwrap();
    let cs = client.session(SessionOptions::new(ttl).name("c")).await.unwrap();
    let held = client
        .acquire(a.id(), NAME, LockOptions::exclusive().wait(Wait::No))
        .await
        .unwrap()
        .expect("a free lock is granted at once");
    let waiting_b = acquire_in_background(&client, b.id(), NAME, LockOptions::exclusive());
    until_lock_is(&client, NAME, &[a.id()], &[b.id()]).await;
    let waiting_c = acquire_in_background(&client, cs.id(), NAME, LockOptions::exclusive());
    let before = until_lock_is(&client, NAME, &[a.id()], &[b.id(), cs.id()]).await;
    assert_eq!(before.holders[0].generation, held.generation, "describe_lock shows A's grant");

    c.kill(leader);
    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader, "a new leader is elected");
    let after =
        eventually("describe_lock to answer under the new leader", STARTUP, || describe(&client, NAME)).await;
    assert_eq!(after, before, "the new leader should keep A's hold (same generation) and the queue [B, C]");
    // Once the waits have moved to live members (the client backs off at most 500 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = describe(&client, NAME).await.unwrap();
    assert_eq!(
        later, before,
        "the waits moving to another member must neither queue them again nor reorder them"
    );
    assert!(!waiting_b.is_finished() && !waiting_c.is_finished(), "B and C still wait behind A");

    client.release(&held.token).await.unwrap();
    let b_seq = granted_within(waiting_b, "B, at the head of the queue,", Duration::from_secs(10)).await;
    assert_eq!(b_seq.session_id, b.id());
    assert!(
        b_seq.generation > held.generation,
        "B's generation {} should be above A's {}",
        b_seq.generation,
        held.generation
    );
    until_lock_is(&client, NAME, &[b.id()], &[cs.id()]).await;
    assert!(!waiting_c.is_finished(), "C still waits while B holds");
    client.release(&b_seq.token).await.unwrap();
    let c_seq = granted_within(waiting_c, "C, next in the queue,", Duration::from_secs(10)).await;
    assert_eq!(c_seq.session_id, cs.id());
    assert!(
        c_seq.generation > b_seq.generation,
        "C's generation {} should be above B's {}",
        c_seq.generation,
        b_seq.generation
    );
}

#[tokio::test]
async fn election_observer_sees_the_new_leader_after_the_leaders_process_is_killed() {
    const NAME: &str = "db-primary";
    let c = Cluster::start(3, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let dir = tempfile::tempdir().unwrap();
    let eps = endpoints(&c);
    let ttl = Duration::from_secs(1);
    let default_lock_delay = Duration::from_secs(5);
    let election = client.election(NAME);
    let mut first = LatchProcess::spawn(
        dir.path(),
        "first",
        &["--endpoints", &eps, "elect", NAME, "first", "--ttl", "1s"],
    );
    let first_leads = eventually("the first `latch elect` to lead", STARTUP, || async {
        match election.leader().await {
            Ok(Some(l)) if l.value == b"first" => Ok(l),
            other => Err(format!("{other:?}; {}", first.output())),
        }
    })
    .await;
    let first_session = first_leads.sequencer.as_ref().unwrap().session_id.clone();
    let second = LatchProcess::spawn(
        dir.path(),
        "second",
        &["--endpoints", &eps, "elect", NAME, "second", "--ttl", "1s"],
    );
    // The second campaigns once its session awaits the election's lock.
    eventually("the second `latch elect` to campaign", STARTUP, || async {
        let sessions = client.sessions().await.map_err(|e| e.to_string())?;
        let candidates: Vec<_> = sessions.iter().filter(|s| s.id != first_session && s.locks == 1).collect();
        if candidates.len() == 1 {
            Ok(())
        } else {
            Err(format!("sessions: {sessions:?}; {}", second.output()))
        }
    })
    .await;

    let leaders = election.observe();
    tokio::pin!(leaders);
    let seen = tokio::time::timeout(Duration::from_secs(10), leaders.next()).await;
    let seen = seen.expect("the observer reports the current leader at once").unwrap();
    assert_eq!(
        seen.as_ref().map(|l| l.value.as_slice()),
        Some(&b"first"[..]),
        "the observer sees the first lead"
    );

    first.signal(Signal::KILL);
    let killed = Instant::now();
    // The bound: the session's lease (at most its TTL), the lock-delay, and a second for
    // the expiry, the delay's end and the observer's notice to travel.
    let bound = ttl + default_lock_delay + Duration::from_secs(1);
    let mut seen_after = Vec::new();
    let second_leads = loop {
        let left = bound.saturating_sub(killed.elapsed());
        let next = tokio::time::timeout(left, leaders.next()).await.unwrap_or_else(|_| {
            panic!(
                "expected the observer to see \"second\" lead within {bound:?} (TTL + lock-delay + 1 s) of \
                 the first's death; it saw {seen_after:?}"
            )
        });
        let leader = next.expect("the observer's stream does not end");
        seen_after.push(leader.as_ref().map(|l| String::from_utf8_lossy(&l.value).into_owned()));
        if let Some(l) = leader.filter(|l| l.value == b"second") {
            break l;
        }
    };
    let took = killed.elapsed();
    eprintln!("the observer saw the second lead {took:?} after the first was killed; it saw {seen_after:?}");
    assert!(
        took >= default_lock_delay,
        "the second led {took:?} after the first's death: before the lock-delay ({default_lock_delay:?}) could pass"
    );
    assert!(
        seen_after[..seen_after.len() - 1].iter().all(Option::is_none),
        "between the two leaders the observer may see nobody lead, nothing else: {seen_after:?}"
    );
    let (old, new) = (first_leads.sequencer.unwrap(), second_leads.sequencer.unwrap());
    assert!(
        new.generation > old.generation,
        "the second's generation {} above the first's {}",
        new.generation,
        old.generation
    );
    let status = first.exit_within(Duration::from_secs(5)).await;
    assert!(status.code().is_none(), "the first `latch elect` was killed, {status}");
    drop(second);
}

#[tokio::test]
async fn latch_lock_commands_run_one_at_a_time_with_increasing_fencing_tokens() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!(
        "echo \"start $LATCH_FENCING_TOKEN\" >> '{0}'; sleep 1; echo \"end $LATCH_FENCING_TOKEN\" >> '{0}'",
        log.display()
    );
    let eps = endpoints(&c);
    let args = ["--endpoints", &eps, "lock", "deploy", "--", "sh", "-c", &script];
    let mut one = LatchProcess::spawn(dir.path(), "one", &args);
    let mut two = LatchProcess::spawn(dir.path(), "two", &args);
    for p in [&mut one, &mut two] {
        let status = p.exit_within(Duration::from_secs(30)).await;
        assert_eq!(status.code(), Some(0), "`latch lock` exits with its command's status, 0. {}", p.output());
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<(&str, u64)> = text
        .lines()
        .map(|l| {
            let (what, token) = l.split_once(' ').unwrap_or_else(|| panic!("a line {l:?} in {text:?}"));
            (what, token.parse().unwrap_or_else(|_| panic!("LATCH_FENCING_TOKEN {token:?} is not a number")))
        })
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l.0).collect();
    assert_eq!(kinds, ["start", "end", "start", "end"], "the commands must not overlap: {text:?}");
    assert_eq!(lines[0].1, lines[1].1, "the first command's start and end: {text:?}");
    assert_eq!(lines[2].1, lines[3].1, "the second command's start and end: {text:?}");
    assert!(lines[2].1 > lines[0].1, "the second command's fencing token is the larger: {text:?}");
    let client = c.client().await;
    assert_eq!(client.describe_lock("deploy").await.unwrap(), None, "both released the lock");
}

/// `latch lock batch --ttl 1s --grace 1s -- sh -c SCRIPT` against `c`, once SCRIPT's `sleep`
/// runs: the process and the sleep's pid.
async fn holding_batch(c: &Cluster, dir: &Path, script: &str) -> (LatchProcess, i32) {
    let eps = endpoints(c);
    let args =
        ["--endpoints", &eps, "lock", "batch", "--ttl", "1s", "--grace", "1s", "--", "sh", "-c", script];
    let holder = LatchProcess::spawn(dir, "holder", &args);
    let sleep = eventually("the locked command's sleep to run", STARTUP, || async {
        let group = holder.group_alive();
        match group.iter().find(|(_, name)| name == "sleep") {
            Some((pid, _)) => Ok(*pid),
            None => Err(format!("its process group: {group:?}; {}", holder.output())),
        }
    })
    .await;
    (holder, sleep)
}

/// Kills the one-member cluster under `holder`, whose session is then lost: it must exit 3
/// with nothing it ran left. Returns how long after the kill it exited.
async fn lose_the_session(c: &mut Cluster, holder: &mut LatchProcess, sleep: i32) -> Duration {
    c.kill(1);
    let killed = Instant::now();
    let status = holder.exit_within(Duration::from_secs(10)).await;
    let took = killed.elapsed();
    eprintln!("`latch lock` exited {status} {took:?} after the cluster was killed");
    assert_eq!(status.code(), Some(3), "a `latch lock` whose session was lost exits 3. {}", holder.output());
    // SIGKILL was sent before `latch lock` exited; the kernel ends the process when it next
    // runs, a moment later on a loaded machine.
    eventually(
        "the command's sleep to be ended once the session is lost",
        Duration::from_secs(2),
        || async {
            if running(sleep) {
                Err(format!("pid {sleep} still runs"))
            } else {
                Ok(())
            }
        },
    )
    .await;
    assert_eq!(holder.group_alive(), [], "nothing `latch lock` ran is left");
    took
}

#[tokio::test]
async fn a_session_lost_while_the_command_runs_gets_it_terminated_and_exit_status_3() {
    let mut c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let dir = tempfile::tempdir().unwrap();
    // sleep is the shell's child: what the command starts is ended with it.
    let (mut holder, sleep) = holding_batch(&c, dir.path(), "sleep 60; true").await;
    let info = describe(&client, "batch").await.unwrap();
    assert_eq!(info.holders.len(), 1, "the lock is held while its command runs: {info:?}");
    lose_the_session(&mut c, &mut holder, sleep).await;
    assert!(holder.stderr().contains("lost"), "`latch lock` says the session was lost. {}", holder.output());
}

#[tokio::test]
async fn a_command_that_ignores_sigterm_is_killed_once_its_grace_period_is_over() {
    let mut c = Cluster::start(1, &[]).await;
    c.leader().await;
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_secs(1);
    // sleep inherits the shell's ignoring of SIGTERM.
    let (mut holder, sleep) = holding_batch(&c, dir.path(), "trap '' TERM; exec sleep 60").await;
    let took = lose_the_session(&mut c, &mut holder, sleep).await;
    assert!(
        took >= grace,
        "`latch lock` was done {took:?} after the cluster's death: its command should have had the \
         grace period ({grace:?}) between SIGTERM and SIGKILL"
    );
}

#[tokio::test]
async fn what_the_command_started_is_killed_after_the_grace_even_when_the_command_itself_ended() {
    let mut c = Cluster::start(1, &[]).await;
    c.leader().await;
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_secs(1);
    // The shell dies of SIGTERM at once; the sleep it started ignores SIGTERM.
    let (mut holder, sleep) = holding_batch(&c, dir.path(), "(trap '' TERM; exec sleep 60) & wait").await;
    let took = lose_the_session(&mut c, &mut holder, sleep).await;
    assert!(took >= grace, "the group had the grace period ({grace:?}) before SIGKILL; took {took:?}");
}

#[tokio::test]
async fn bad_lock_requests_are_refused_by_name() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let session = client.session(SessionOptions::new(Duration::from_secs(10))).await.unwrap();
    for wait in [Wait::No, Wait::Forever] {
        let attempt = client.acquire("ghost-session", "l", LockOptions::exclusive().wait(wait));
        let err = tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .unwrap_or_else(|_| panic!("an acquire ({wait:?}) for an unknown session should fail, not wait"))
            .expect_err("unknown session");
        assert_eq!(err.code(), Code::NotFound, "{err}");
        assert!(err.to_string().contains("ghost-session"), "names the session: {err}");
    }
    let err = client.acquire(session.id(), "", LockOptions::exclusive()).await.expect_err("empty name");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.to_string().contains("name"), "names the field: {err}");
    let too_long = LockOptions::exclusive().lock_delay(Duration::from_millis(60_001));
    let err = client.acquire(session.id(), "l", too_long).await.expect_err("lock-delay over 60 s");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.to_string().contains("lock_delay"), "names the field: {err}");
    assert_eq!(client.describe_lock("l").await.unwrap(), None, "refused requests leave nothing behind");

    // A sequencer of another cluster: this one's with another cluster id.
    let held = client.acquire(session.id(), "l", LockOptions::exclusive()).await.unwrap().expect("granted");
    let (prefix, rest) = held.token.split_once(':').unwrap();
    let (cluster, rest) = rest.split_once(':').unwrap();
    let other = format!("{:016x}", u64::from_str_radix(cluster, 16).unwrap() ^ 0xffff);
    let foreign = format!("{prefix}:{other}:{rest}");
    let err = client.check_sequencer(&foreign).await.expect_err("another cluster's sequencer");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.to_string().contains(&other), "names the other cluster: {err}");
    let err = client.release(&foreign).await.expect_err("another cluster's sequencer");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let fenced = Txn::new().when([Compare::sequencer(foreign)]).and_then([Op::put("k", "v")]);
    let err = client.txn(fenced).await.expect_err("a txn fenced by another cluster's sequencer");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.to_string().contains(&other),
        "names the other cluster (not the compare's unused key): {err}"
    );
    assert!(client.check_sequencer(&held.token).await.unwrap().valid, "this cluster's own is still valid");
    let err = client.check_sequencer("not a sequencer").await.expect_err("not a sequencer");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
}

#[tokio::test]
async fn shared_holders_share_while_an_exclusive_request_waits_and_a_hold_is_released_once() {
    const NAME: &str = "config";
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    assert_eq!(
        client.describe_lock(NAME).await.unwrap(),
        None,
        "a lock nobody asked for is described as None"
    );
    let ttl = Duration::from_secs(10);
    let [r1, r2, w, r3] = [
        client.session(SessionOptions::new(ttl).name("reader 1")).await.unwrap(),
        client.session(SessionOptions::new(ttl).name("reader 2")).await.unwrap(),
        client.session(SessionOptions::new(ttl).name("writer")).await.unwrap(),
        client.session(SessionOptions::new(ttl).name("reader 3")).await.unwrap(),
    ];
    let once = |mode| LockOptions { mode, wait: Wait::No, lock_delay: None };
    let s1 = client.acquire(r1.id(), NAME, once(LockMode::Shared)).await.unwrap().expect("a free lock");
    let s2 =
        client.acquire(r2.id(), NAME, once(LockMode::Shared)).await.unwrap().expect("shared holders share");
    assert!(s2.generation > s1.generation, "each grant has its own generation");
    let busy = client.acquire(w.id(), NAME, once(LockMode::Exclusive)).await.unwrap();
    assert_eq!(busy, None, "trying once for an exclusive hold of a shared-held lock gets None");
    until_lock_is(&client, NAME, &[r1.id(), r2.id()], &[]).await;
    let writer = acquire_in_background(&client, w.id(), NAME, LockOptions::exclusive());
    let info = until_lock_is(&client, NAME, &[r1.id(), r2.id()], &[w.id()]).await;
    assert!(info.holders.iter().all(|h| h.mode == LockMode::Shared as i32), "both hold shared: {info:?}");
    let late = client.acquire(r3.id(), NAME, once(LockMode::Shared)).await.unwrap();
    assert_eq!(late, None, "a shared request does not overtake the waiting exclusive one");

    client.release(&s1.token).await.unwrap();
    let err = client.release(&s1.token).await.expect_err("released twice");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(!writer.is_finished(), "the writer waits while a reader still holds");
    client.release(&s2.token).await.unwrap();
    let ws = granted_within(writer, "the writer, once the readers released,", Duration::from_secs(10)).await;
    assert_eq!((ws.session_id.as_str(), ws.mode), (w.id(), LockMode::Exclusive as i32));
    assert!(ws.generation > s2.generation, "the writer's generation is the largest yet");
    let busy = client.acquire(r3.id(), NAME, once(LockMode::Shared)).await.unwrap();
    assert_eq!(busy, None, "a shared request is refused while the writer holds");
    client.release(&ws.token).await.unwrap();
    assert_eq!(client.describe_lock(NAME).await.unwrap(), None, "a released lock is free again");
}

#[tokio::test]
async fn an_election_leads_with_the_first_candidate_who_proclaims_then_resigns_to_the_next() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let election = client.election("primary");
    assert!(election.leader().await.unwrap().is_none(), "an election nobody campaigned in has no leader");
    let ttl = Duration::from_secs(10);
    let x = client.session(SessionOptions::new(ttl).name("x")).await.unwrap();
    let y = client.session(SessionOptions::new(ttl).name("y")).await.unwrap();
    let lx = election.campaign(x.id(), "10.0.0.1:5432").await.unwrap();
    let now = election.leader().await.unwrap().expect("x leads");
    assert_eq!(now.value, b"10.0.0.1:5432");
    let x_seq = lx.sequencer.clone().unwrap();
    assert_eq!(now.sequencer.as_ref().map(|s| s.session_id.as_str()), Some(x.id()));
    assert!(x_seq.election, "a leadership's sequencer is an election's");

    election.proclaim(&lx, "10.0.0.1:6432").await.unwrap();
    let now = election.leader().await.unwrap().expect("x still leads");
    assert_eq!(now.value, b"10.0.0.1:6432", "the leader's proclaim changes the published value");
    assert_eq!(now.sequencer.map(|s| s.generation), Some(x_seq.generation), "… not the leadership");

    let candidate = {
        let (election, id) = (election.clone(), y.id().to_string());
        tokio::spawn(async move { election.campaign(&id, "10.0.0.2:5432").await })
    };
    eventually("y to campaign", STARTUP, || async {
        match client.session_info(y.id()).await {
            Ok(info) if info.locks == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(!candidate.is_finished(), "y waits while x leads");
    election.resign(&lx).await.unwrap();
    let ly = tokio::time::timeout(Duration::from_secs(10), candidate)
        .await
        .expect("y leads once x resigned")
        .unwrap()
        .unwrap();
    assert_eq!(ly.value, b"10.0.0.2:5432");
    let y_seq = ly.sequencer.clone().unwrap();
    assert_eq!(y_seq.session_id, y.id());
    assert!(y_seq.generation > x_seq.generation, "the next leader's generation is the larger");
    let now = election.leader().await.unwrap().expect("y leads");
    assert_eq!(now.value, b"10.0.0.2:5432", "leader() shows the next candidate");
    let err = election.proclaim(&lx, "stale").await.expect_err("an ex-leader's proclaim");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert_eq!(election.leader().await.unwrap().expect("y leads").value, b"10.0.0.2:5432");
}

/// Election.Describe and Election.List: the leader with its value and lock-delay, the
/// candidates in the order they lead next with the values they will publish, and the lock-delay
/// that follows a leader whose session expired (nobody leads, the candidates wait), then the next
/// candidate leading.
#[tokio::test]
async fn an_election_is_described_with_its_leader_its_candidates_in_order_and_a_lock_delay() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let election = client.election("db/primary").lock_delay(Duration::from_secs(3));
    assert_eq!(election.describe().await.unwrap(), None, "nobody leads or campaigns yet");
    // x's session is kept alive by nobody: it expires 5 s after its creation (time enough for
    // what follows on a loaded machine).
    let (x, _) = client.create_session(Duration::from_secs(5), "x").await.unwrap();
    let lx = election.campaign(&x, "10.0.0.1").await.unwrap();
    let ttl = Duration::from_secs(30);
    let mut candidates = Vec::new();
    for (name, value) in [("y", "10.0.0.2"), ("z", "10.0.0.3")] {
        let session = client.session(SessionOptions::new(ttl).name(name)).await.unwrap();
        let (election, id) = (election.clone(), session.id().to_string());
        let campaign = tokio::spawn(async move { election.campaign(&id, value).await });
        eventually(&format!("{name} to campaign"), STARTUP, || async {
            match client.session_info(session.id()).await {
                Ok(info) if info.locks == 1 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        candidates.push((session, campaign));
    }
    client.election("other").campaign(candidates[0].0.id(), "elsewhere").await.unwrap();

    let info = election.describe().await.unwrap().expect("x leads, y and z campaign");
    let leader = info.leader.as_ref().expect("a leader");
    assert_eq!(
        (leader.value.as_slice(), leader.sequencer.as_ref()),
        (&b"10.0.0.1"[..], lx.sequencer.as_ref())
    );
    assert!(info.elected_revision > 0, "the revision x was elected at: {info:?}");
    assert_eq!(info.leader_lock_delay_ms, 3_000, "the lock-delay x campaigned with");
    let queued: Vec<(&str, &[u8])> =
        info.candidates.iter().map(|c| (c.session_id.as_str(), c.value.as_slice())).collect();
    assert_eq!(
        queued,
        [(candidates[0].0.id(), &b"10.0.0.2"[..]), (candidates[1].0.id(), &b"10.0.0.3"[..])],
        "y then z, with the values they will publish"
    );
    assert!(info.candidates[0].queued_revision < info.candidates[1].queued_revision);
    assert!(!info.delayed);
    let listed: Vec<String> = client.list_elections("").await.unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(listed, ["db/primary", "other"], "every election, in name order");
    let under: Vec<ElectionInfo> = client.list_elections("db/").await.unwrap();
    assert_eq!(under, std::slice::from_ref(&info), "only those under the prefix, as Describe shows them");

    // x's session expires: nobody leads for the lock-delay, and y and z still wait.
    let delayed = eventually("x's session to expire into a lock-delay", STARTUP, || async {
        match election.describe().await {
            Ok(Some(info)) if info.delayed => Ok(info),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!((delayed.leader.as_ref(), delayed.elected_revision), (None, 0), "{delayed:?}");
    assert_eq!(delayed.delay_ms, 3_000);
    assert!(delayed.delay_since_revision > info.elected_revision);
    assert_eq!(delayed.candidates, info.candidates, "the candidates wait through the lock-delay");

    let (y, y_campaign) = candidates.remove(0);
    let ly = tokio::time::timeout(Duration::from_secs(20), y_campaign)
        .await
        .expect("y leads once the lock-delay ended")
        .unwrap()
        .unwrap();
    let after = election.describe().await.unwrap().expect("y leads");
    assert_eq!(after.leader.as_ref().and_then(|l| l.sequencer.as_ref()), ly.sequencer.as_ref());
    assert_eq!(after.leader.map(|l| l.value), Some(b"10.0.0.2".to_vec()));
    assert_eq!(
        after.candidates.iter().map(|c| c.session_id.as_str()).collect::<Vec<_>>(),
        [candidates[0].0.id()]
    );
    assert!(!after.delayed, "the lock-delay ended");
    assert_eq!(y.id(), ly.sequencer.as_ref().map_or("", |s| s.session_id.as_str()));

    let err = client.election("").describe().await.expect_err("an empty name");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
}

#[tokio::test]
async fn a_second_request_of_a_waiting_session_joins_its_wait_without_ending_it() {
    const NAME: &str = "joined";
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let ttl = Duration::from_secs(10);
    let holder = client.session(SessionOptions::new(ttl).name("holder")).await.unwrap();
    let waiter = client.session(SessionOptions::new(ttl).name("waiter")).await.unwrap();
    let held =
        client.acquire(holder.id(), NAME, LockOptions::exclusive()).await.unwrap().expect("a free lock");
    let first = acquire_in_background(&client, waiter.id(), NAME, LockOptions::exclusive());
    until_lock_is(&client, NAME, &[holder.id()], &[waiter.id()]).await;

    // Trying once while the session waits: answered at once, and the wait goes on.
    let asked = Instant::now();
    let once = client.acquire(waiter.id(), NAME, LockOptions::exclusive().wait(Wait::No)).await.unwrap();
    assert_eq!(once, None, "a try-once request of a session that waits is not granted");
    assert!(asked.elapsed() < Duration::from_secs(2), "… and answered at once, took {:?}", asked.elapsed());
    // A request with a deadline joins the wait, and its deadline does not end the first's.
    let timed = client.acquire(
        waiter.id(),
        NAME,
        LockOptions::exclusive().wait(Wait::For(Duration::from_millis(500))),
    );
    assert_eq!(timed.await.unwrap(), None, "the joined request's time ran out before any grant");
    until_lock_is(&client, NAME, &[holder.id()], &[waiter.id()]).await;
    assert!(!first.is_finished(), "the first request still waits");

    client.release(&held.token).await.unwrap();
    let granted =
        granted_within(first, "the first request, once the holder released,", Duration::from_secs(10)).await;
    assert_eq!(granted.session_id, waiter.id(), "the waiting session holds the lock");
    let again = client.acquire(waiter.id(), NAME, LockOptions::exclusive().wait(Wait::No)).await.unwrap();
    assert_eq!(
        again.map(|s| s.generation),
        Some(granted.generation),
        "a holder asking again gets its own hold back"
    );
}

#[tokio::test]
async fn a_campaign_waiting_on_a_frozen_member_moves_to_another_and_wins() {
    const NAME: &str = "frozen";
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let frozen = c.ids().into_iter().find(|&id| id != leader).expect("a follower");
    let others: Vec<u64> = c.ids().into_iter().filter(|&id| id != frozen).collect();
    let client = c.client_of_many(&others).await;
    // The candidate's client tries the follower that will freeze first.
    let candidate_client = c.client_of_many(&[frozen, others[0], others[1]]).await;
    let ttl = Duration::from_secs(30);
    let holder = client.session(SessionOptions::new(ttl).name("holder")).await.unwrap();
    let candidate = client.session(SessionOptions::new(ttl).name("candidate")).await.unwrap();
    let election = client.election(NAME);
    let first = election.campaign(holder.id(), "first").await.unwrap();
    let campaign = {
        let (election, id) = (candidate_client.election(NAME), candidate.id().to_string());
        tokio::spawn(async move { election.campaign(&id, "second").await })
    };
    eventually("the candidate to wait in the election", STARTUP, || async {
        match client.session_info(candidate.id()).await {
            Ok(s) if s.locks == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    c.signal(frozen, Signal::STOP);
    election.resign(&first).await.unwrap();
    // The grant is applied on the live members; the campaign's call on the frozen one hears
    // nothing, until the connection's pings go unanswered and the client asks elsewhere.
    let won = tokio::time::timeout(Duration::from_secs(30), campaign)
        .await
        .expect("the campaign should move off the frozen member and win within 30 s")
        .unwrap()
        .expect("the campaign wins");
    c.signal(frozen, Signal::CONT);
    assert_eq!(won.value, b"second", "the candidate leads");
    let now = election.leader().await.unwrap().expect("a leader");
    assert_eq!(now.sequencer.map(|s| s.session_id), Some(candidate.id().to_string()));
}

#[tokio::test]
async fn a_guard_dropped_and_asked_for_again_at_once_is_not_released_by_the_drop() {
    // A session holds a lock once (re-entrant), so a drop's release that lands after the next
    // acquire of the same session would end the hold the new guard stands for.
    const NAME: &str = "loop";
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let ttl = Duration::from_secs(10);
    let worker = client.session(SessionOptions::new(ttl).name("worker")).await.unwrap();
    let other = client.session(SessionOptions::new(ttl).name("other")).await.unwrap();
    let once = LockOptions::exclusive().wait(Wait::No);
    let mut last = 0;
    for turn in 0..20 {
        let guard = worker.lock(NAME, once).await.unwrap().expect("the worker's lock is free at each turn");
        assert!(guard.generation() > last, "turn {turn}: a new hold, with a larger generation");
        let dropped = guard.generation();
        drop(guard);
        let again =
            worker.lock(NAME, once).await.unwrap().expect("free again once the drop's release landed");
        assert!(again.generation() > dropped, "turn {turn}: granted anew after the release, not re-entered");
        // Anything the drop sent was answered before the acquire left: the hold stands.
        let check = client.check_sequencer(again.token()).await.unwrap();
        assert!(check.valid, "turn {turn}: the new guard's sequencer holds: {check:?}");
        let taken = client.acquire(other.id(), NAME, once).await.unwrap();
        assert_eq!(taken, None, "turn {turn}: another session cannot take what the worker's guard holds");
        last = again.generation();
        again.release().await.unwrap();
    }

    // Two users of one session: the second guard waits for the first to be gone.
    let worker = std::sync::Arc::new(worker);
    let first = worker.lock(NAME, LockOptions::exclusive()).await.unwrap().expect("free");
    let second = {
        let worker = worker.clone();
        tokio::spawn(async move { worker.lock(NAME, LockOptions::exclusive()).await })
    };
    tokio::task::yield_now().await;
    assert!(!second.is_finished(), "a second guard of the session waits while the first holds");
    drop(first);
    let second = second.await.unwrap().unwrap().expect("granted once the first guard's release landed");
    let check = client.check_sequencer(second.token()).await.unwrap();
    assert!(check.valid, "the second guard's hold stands after the first guard's release: {check:?}");
}

#[tokio::test]
async fn an_acquire_answered_without_queueing_sends_no_withdrawal_after_it() {
    // An acquire applied with an answer other than "queued" (here: its session does not
    // exist) left nothing in a queue: nothing may be proposed after it to withdraw it.
    let c = Cluster::start(1, &[]).await;
    let leader = c.leader().await;
    let client = c.client_of(leader).await;
    client.put("before", "x").await.unwrap();
    let applied = || async { c.self_status(leader).await.unwrap().applied_index };
    let before = applied().await;
    let addr = format!("http://{}", c.member(leader).client_addr);
    let mut locks = latch_proto::v1::lock_client::LockClient::connect(addr).await.unwrap();
    let acquire = latch_proto::v1::AcquireRequest {
        name: "nobody".into(),
        session_id: "0123456789abcdef".into(),
        mode: LockMode::Exclusive as i32,
        wait_forever: true,
        request_id: "no-such-session".into(),
        ..Default::default()
    };
    let refused = locks.acquire(acquire).await.expect_err("an acquire of a session that does not exist");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    assert_eq!(
        refused.metadata().get(latch_proto::SETTLED_METADATA).map(|v| v.to_str().ok()),
        Some(Some("true")),
        "refused as applied: the request id's outcome, which every attempt meets: {refused:?}"
    );
    // A withdrawal would have been proposed as the acquire's answer left, ahead of this put.
    client.put("after", "x").await.unwrap();
    assert_eq!(
        applied().await,
        before + 2,
        "the log holds the acquire and the put, and no withdrawal of the acquire"
    );
    assert_eq!(client.describe_lock("nobody").await.unwrap(), None, "nothing queued");

    // Without a request id each attempt is a command of its own: the refusal settles nothing.
    let anonymous = latch_proto::v1::AcquireRequest {
        name: "nobody".into(),
        session_id: "0123456789abcdef".into(),
        mode: LockMode::Exclusive as i32,
        ..Default::default()
    };
    let refused = locks.acquire(anonymous).await.expect_err("an acquire of a session that does not exist");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    assert!(
        refused.metadata().get(latch_proto::SETTLED_METADATA).is_none(),
        "no request id, no outcome remembered for another attempt: not settled: {refused:?}"
    );
}

#[tokio::test]
async fn a_waiting_acquire_whose_caller_goes_away_leaves_the_queue_and_is_never_granted() {
    const NAME: &str = "gone";
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let ttl = Duration::from_secs(10);
    let holder = client.session(SessionOptions::new(ttl).name("holder")).await.unwrap();
    let leaver = client.session(SessionOptions::new(ttl).name("leaver")).await.unwrap();
    let held = holder.lock(NAME, LockOptions::exclusive()).await.unwrap().expect("free");
    let waiting = acquire_in_background(&client, leaver.id(), NAME, LockOptions::exclusive());
    until_lock_is(&client, NAME, &[holder.id()], &[leaver.id()]).await;

    // The caller goes away: its call is dropped, and the member withdraws what it queued.
    waiting.abort();
    until_lock_is(&client, NAME, &[holder.id()], &[]).await;
    held.release().await.unwrap();
    assert_eq!(
        client.describe_lock(NAME).await.unwrap(),
        None,
        "released with nobody waiting, the lock is free: the gone caller was not granted it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_acquire_and_an_election_observer_on_a_member_cut_off_from_the_leader_end_unavailable_and_the_wait_left_is_withdrawn_by_its_request_id(
) {
    use latch_client::proto::election_client::ElectionClient;
    use latch_client::proto::lock_client::LockClient;
    use latch_client::proto::{AcquireRequest, ObserveRequest, WithdrawRequest};

    let c = Cluster::start(3, &["--fault-injection"]).await;
    let leader = c.leader().await;
    let cut = c.ids().into_iter().find(|id| *id != leader).expect("a follower");
    let others: Vec<u64> = c.ids().into_iter().filter(|id| *id != cut).collect();
    let client = c.client_of_many(&others).await;
    let holder = client.session(SessionOptions::new(Duration::from_secs(30))).await.expect("a session");
    let waiter = client.session(SessionOptions::new(Duration::from_secs(30))).await.expect("a session");
    let held = holder.lock("cut/lock", LockOptions::exclusive()).await.expect("acquire").expect("granted");
    client.election("cut/election").campaign(holder.id(), "h").await.expect("leads");

    // Raw calls to the member that will be cut off: no client retries elsewhere.
    let addr = format!("http://{}", c.member(cut).client_addr);
    let mut locks = LockClient::connect(addr.clone()).await.expect("connect");
    let request = AcquireRequest {
        name: "cut/lock".into(),
        session_id: waiter.id().into(),
        wait_forever: true,
        request_id: "cut-off-acquire".into(),
        ..Default::default()
    };
    let acquire = tokio::spawn(async move { locks.acquire(request).await });
    let mut observe = ElectionClient::connect(addr)
        .await
        .expect("connect")
        .observe(ObserveRequest { name: "cut/election".into() })
        .await
        .expect("observing")
        .into_inner();
    let first = observe.message().await.expect("the current leader").expect("the stream is open");
    assert_eq!(first.leader.expect("a leader").value, b"h", "the observer starts with the leader");
    let queued_at = eventually("the waiter queued behind the holder", STARTUP, || async {
        match client.describe_lock("cut/lock").await {
            Ok(Some(info)) => match info.waiters.iter().find(|w| w.session_id == waiter.id()) {
                Some(w) => Ok(w.queued_revision),
                None => Err(format!("{info:?}")),
            },
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // The cut member must have applied the queueing too, or its acquire would end as a timed-out
    // proposal rather than as a cut-off.
    eventually("the member to be cut off applied the queueing", STARTUP, || async {
        match c.local_kvs(cut).await {
            Ok((revision, _)) if revision >= queued_at => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    c.isolate(cut).await;
    // The member's freshness check fails from here: after its cut-off (5 s) and the next look
    // (every 2 s), both end rather than wait on a state that no longer moves.
    let within = Duration::from_secs(30);
    let acquired = tokio::time::timeout(within, acquire).await.expect("the acquire ends").expect("joined");
    let refused = acquired.expect_err("a cut-off member does not keep the acquire waiting");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("cut off"), "the error says why: {}", refused.message());
    let observed = tokio::time::timeout(within, observe.message()).await.expect("the observation ends");
    let ended = observed.expect_err("a cut-off member ends the observation");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");

    // The cut-off member left the wait queued, for a resend to join. A caller that gives up
    // instead withdraws it by its request id (the clients do), through any member in touch.
    until_lock_is(&client, "cut/lock", &[holder.id()], &[waiter.id()]).await;
    let withdraw = WithdrawRequest { name: "cut/lock".into(), request_id: "cut-off-acquire".into() };
    let in_touch = format!("http://{}", c.member(leader).client_addr);
    let mut locks = LockClient::connect(in_touch).await.expect("connect");
    for round in ["withdrawn", "withdrawn again (a retry is safe)"] {
        let answer =
            locks.withdraw(withdraw.clone()).await.expect("a member in touch withdraws").into_inner();
        assert!(!answer.held && answer.sequencer.is_none(), "{round}: it was never granted: {answer:?}");
        until_lock_is(&client, "cut/lock", &[holder.id()], &[]).await;
    }
    c.heal_all().await;
    held.release().await.expect("released");
    assert_eq!(
        client.describe_lock("cut/lock").await.expect("describe"),
        None,
        "released with nobody waiting, the lock is free: the withdrawn wait was not granted"
    );
}

#[tokio::test]
async fn a_withdrawal_on_a_member_where_the_acquire_is_still_being_proposed_asks_to_be_sent_again() {
    use latch_client::proto::lock_client::LockClient;
    use latch_client::proto::{AcquireRequest, WithdrawRequest};

    // Ticks of 50 ms: the acquire stays in flight for its 200 ticks, 10 s, while each refused
    // withdrawal takes 2 s.
    let c = Cluster::start(3, &["--fault-injection", "--tick-interval", "50ms"]).await;
    let leader = c.leader().await;
    let cut = c.ids().into_iter().find(|id| *id != leader).expect("a follower");
    let client = c.client_of(leader).await;
    let session = client.session(SessionOptions::new(Duration::from_secs(30))).await.expect("a session");
    c.isolate(cut).await;
    let connect = |id: u64| LockClient::connect(format!("http://{}", c.member(id).client_addr));
    let at_cut = connect(cut).await.expect("connect");
    let request = AcquireRequest {
        name: "p/lock".into(),
        session_id: session.id().into(),
        wait_forever: true,
        request_id: "in-flight".into(),
        ..Default::default()
    };
    // Proposed on the cut-off member, where it stays in flight.
    let stuck = tokio::spawn({
        let mut at_cut = at_cut.clone();
        async move { at_cut.acquire(request).await }
    });
    eventually("the acquire in flight on the cut-off member", STARTUP, || async {
        match c.metrics_of(cut).await.map(|m| sample(&m, "latch_proposals_pending")) {
            Ok(Some(n)) if n >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let withdraw = WithdrawRequest { name: "p/lock".into(), request_id: "in-flight".into() };
    let busy = eventually("a withdrawal refused while the acquire is in flight", STARTUP, || {
        let (mut at_cut, withdraw) = (at_cut.clone(), withdraw.clone());
        async move {
            match at_cut.withdraw(withdraw).await {
                Err(e) if e.code() == Code::Unavailable && e.message().contains("still being proposed") => {
                    Ok(e)
                }
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(busy.message().contains("\"in-flight\""), "it names the acquire: {}", busy.message());
    // Sent again through a member in touch, it spends the id: the acquire never queues.
    let answer = connect(leader).await.expect("connect").withdraw(withdraw.clone()).await.expect("withdrawn");
    assert!(!answer.into_inner().held, "nothing was granted");
    c.heal_all().await;
    let _ = tokio::time::timeout(Duration::from_secs(20), stuck).await;
    assert_eq!(client.describe_lock("p/lock").await.expect("describe"), None, "nothing held or queued");
}

/// A raw Lock client of member `id`: no retries, no leader hints followed.
async fn raw_locks(
    c: &Cluster,
    id: u64,
) -> latch_client::proto::lock_client::LockClient<tonic::transport::Channel> {
    let addr = format!("http://{}", c.member(id).client_addr);
    latch_client::proto::lock_client::LockClient::connect(addr).await.expect("connect")
}

/// An acquire of `name` for `session` under `request_id`, waiting as long as it takes.
fn waiting_acquire(name: &str, session: &str, request_id: &str) -> latch_client::proto::AcquireRequest {
    latch_client::proto::AcquireRequest {
        name: name.into(),
        session_id: session.into(),
        wait_forever: true,
        request_id: request_id.into(),
        ..Default::default()
    }
}

/// A call of a request that was granted, and released by the client that saw the grant through
/// another call of it, is answered "not acquired": asking again would give the session a hold
/// its client does not know of, kept until the session ends. Both ways a late call meets such a
/// request: answered "granted" from the request memory, or "queued" (the request's first
/// answer) and then finding it gone.
#[tokio::test]
async fn a_late_call_of_a_request_granted_and_released_since_is_not_granted_again() {
    use latch_client::proto::AcquireRequest;

    let c = Cluster::start(1, &[]).await;
    let leader = c.leader().await;
    let client = c.client().await;
    let session = client.session(SessionOptions::new(Duration::from_secs(30))).await.expect("a session");
    let mut locks = raw_locks(&c, leader).await;
    let acquire = |request_id: &str| waiting_acquire("late/lock", session.id(), request_id);

    // Granted at once, released, then the same request again.
    let granted = locks.acquire(acquire("at-once")).await.expect("acquire").into_inner();
    client.release(&granted.sequencer.expect("a free lock").token).await.expect("released");
    let late = locks.acquire(acquire("at-once")).await.expect("the late call answered").into_inner();
    assert!(!late.acquired, "a late call of a grant released since is not granted: {late:?}");
    assert_eq!(client.describe_lock("late/lock").await.expect("describe"), None, "nothing held or queued");

    // Queued behind another session, granted when it released, released; then the same request.
    let other = client.session(SessionOptions::new(Duration::from_secs(30))).await.expect("a session");
    let held = client.acquire(other.id(), "late/lock", LockOptions::exclusive()).await.expect("acquire");
    let first = tokio::spawn({
        let (mut locks, request) = (locks.clone(), acquire("queued"));
        async move { locks.acquire(request).await }
    });
    until_lock_is(&client, "late/lock", &[other.id()], &[session.id()]).await;
    client.release(&held.expect("free").token).await.expect("released");
    let first = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the queued call is granted once the holder released")
        .expect("joined")
        .expect("answered")
        .into_inner();
    client.release(&first.sequencer.expect("granted").token).await.expect("released");
    let late = tokio::time::timeout(Duration::from_secs(10), locks.acquire(acquire("queued")))
        .await
        .expect("the late call is answered at once")
        .expect("answered")
        .into_inner();
    assert!(!late.acquired, "a late call of a request granted and released since is not granted: {late:?}");
    assert_eq!(client.describe_lock("late/lock").await.expect("describe"), None, "nothing held or queued");

    // A second request of a session that holds the lock is answered with that hold; released
    // since, a resend of the second request is not granted either.
    let first = locks.acquire(acquire("first")).await.expect("acquire").into_inner();
    let second = locks.acquire(acquire("second")).await.expect("acquire").into_inner();
    assert_eq!(second.sequencer, first.sequencer, "the session's hold answers its second request");
    client.release(&first.sequencer.expect("granted").token).await.expect("released");
    let late = locks.acquire(acquire("second")).await.expect("the late call answered").into_inner();
    assert!(!late.acquired, "a resend first answered with a hold released since is not granted: {late:?}");
    assert_eq!(client.describe_lock("late/lock").await.expect("describe"), None, "nothing held or queued");

    // But a call that joined another request's wait, which ended without a grant, asks again:
    // its own request was never answered.
    let held = client.acquire(other.id(), "late/lock", LockOptions::exclusive()).await.expect("acquire");
    let owner = tokio::spawn({
        let (mut locks, request) = (locks.clone(), acquire("owner"));
        async move { locks.acquire(request).await }
    });
    until_lock_is(&client, "late/lock", &[other.id()], &[session.id()]).await;
    let joiner = tokio::spawn({
        let (mut locks, request) = (locks.clone(), acquire("joiner"));
        async move { locks.acquire(request).await }
    });
    // The same request again, waiting a millisecond: once it is answered, "joiner" has been
    // applied (joining "owner"), whichever of the two calls came first.
    let applied = AcquireRequest { wait_forever: false, wait_ms: 1, ..acquire("joiner") };
    let applied = locks.acquire(applied).await.expect("answered").into_inner();
    assert!(!applied.acquired, "the joiner waits: {applied:?}");
    let withdrawn = locks
        .withdraw(latch_client::proto::WithdrawRequest {
            name: "late/lock".into(),
            request_id: "owner".into(),
        })
        .await
        .expect("withdraw")
        .into_inner();
    assert!(!withdrawn.held, "the owner's request was waiting: {withdrawn:?}");
    let owner = tokio::time::timeout(Duration::from_secs(10), owner).await.expect("ends").expect("joined");
    assert!(!owner.expect("answered").into_inner().acquired, "the withdrawn request is not granted");
    until_lock_is(&client, "late/lock", &[other.id()], &[session.id()]).await;
    client.release(&held.expect("free").token).await.expect("released");
    let joiner = tokio::time::timeout(Duration::from_secs(10), joiner)
        .await
        .expect("the joiner is answered once the holder released")
        .expect("joined")
        .expect("answered")
        .into_inner();
    assert!(joiner.acquired, "a call whose joined wait ended asks again, and is granted: {joiner:?}");
}

#[tokio::test]
async fn a_withdrawal_answers_a_grant_that_came_first_and_spends_the_id_of_an_acquire_or_campaign_not_applied_yet(
) {
    use latch_client::proto::election_client::ElectionClient;
    use latch_client::proto::{AcquireRequest, CampaignRequest, WithdrawCandidacyRequest, WithdrawRequest};

    let c = Cluster::start(1, &[]).await;
    let leader = c.leader().await;
    let client = c.client().await;
    let session = client.session(SessionOptions::new(Duration::from_secs(30))).await.expect("a session");
    let mut locks = raw_locks(&c, leader).await;
    let acquire = |request_id: &str| waiting_acquire("w/lock", session.id(), request_id);
    let withdraw =
        |request_id: &str| WithdrawRequest { name: "w/lock".into(), request_id: request_id.into() };

    // Granted before the withdrawal: answered, and kept.
    let granted = locks.acquire(acquire("granted")).await.expect("acquire").into_inner();
    let answer = locks.withdraw(withdraw("granted")).await.expect("withdraw").into_inner();
    assert!(answer.held, "a grant that came first is answered: {answer:?}");
    assert_eq!(answer.sequencer, granted.sequencer, "… with its own sequencer");
    until_lock_is(&client, "w/lock", &[session.id()], &[]).await;
    let token = granted.sequencer.expect("granted").token;
    client.release(&token).await.expect("released");

    // Withdrawn before it was applied (still on its way, say): the acquire, when it comes, is
    // refused and queues nothing.
    let answer = locks.withdraw(withdraw("late")).await.expect("withdraw").into_inner();
    assert!(!answer.held, "nothing was granted: {answer:?}");
    let refused = locks.acquire(acquire("late")).await.expect_err("an acquire whose id was spent");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("\"late\""), "the error names the id: {}", refused.message());
    assert_eq!(client.describe_lock("w/lock").await.expect("describe"), None, "nothing held or queued");

    // Withdrawn while a call still waits for it (a resend the client forgot about, on a member
    // that never saw its connection go): the call ends "not acquired" rather than queueing anew.
    let other = client.session(SessionOptions::new(Duration::from_secs(30))).await.expect("a session");
    let held = client.acquire(other.id(), "w/lock", LockOptions::exclusive()).await.expect("acquire");
    let forgotten = tokio::spawn({
        let mut locks = locks.clone();
        let request = acquire("forgotten");
        async move { locks.acquire(request).await }
    });
    until_lock_is(&client, "w/lock", &[other.id()], &[session.id()]).await;
    let answer = locks.withdraw(withdraw("forgotten")).await.expect("withdraw").into_inner();
    assert!(!answer.held, "nothing was granted: {answer:?}");
    let ended = tokio::time::timeout(Duration::from_secs(10), forgotten)
        .await
        .expect("the call waiting for a withdrawn request ends")
        .expect("joined")
        .expect("answered");
    assert!(!ended.into_inner().acquired, "… not acquired");
    until_lock_is(&client, "w/lock", &[other.id()], &[]).await;

    // Two calls of one request; the second's time runs out first and it withdraws the request,
    // so the first asks again under an id of its own. The client then gives the request up:
    // that call too leaves the queue, though no withdrawal names the id it waits under.
    let first = tokio::spawn({
        let (mut locks, request) = (locks.clone(), acquire("twice"));
        async move { locks.acquire(request).await }
    });
    let queued_at =
        until_lock_is(&client, "w/lock", &[other.id()], &[session.id()]).await.waiters[0].queued_revision;
    // The same request (a wait's length is not part of it), waiting half a second.
    let resend = AcquireRequest { wait_forever: false, wait_ms: 500, ..acquire("twice") };
    let second = locks.clone().acquire(resend).await.expect("the resend answered").into_inner();
    assert!(!second.acquired, "the resend's time ran out: {second:?}");
    eventually("the first call asking again under an id of its own", STARTUP, || async {
        let info = describe(&client, "w/lock").await?;
        match info.waiters.first() {
            Some(w) if w.session_id == session.id() && w.queued_revision > queued_at => Ok(()),
            _ => Err(format!("{info:?}")),
        }
    })
    .await;
    let answer = locks.withdraw(withdraw("twice")).await.expect("withdraw").into_inner();
    assert!(!answer.held, "nothing was granted: {answer:?}");
    let ended = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the call that asked again ends once its client gave the request up")
        .expect("joined")
        .expect("answered");
    assert!(!ended.into_inner().acquired, "… not acquired");
    until_lock_is(&client, "w/lock", &[other.id()], &[]).await;
    client.release(&held.expect("free").token).await.expect("released");

    let bad = locks.withdraw(withdraw("")).await.expect_err("a withdrawal naming no acquire");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("request_id"), "the error names the field: {}", bad.message());

    // An election's campaign alike: a leadership won first is answered with its value; a
    // campaign not applied yet is refused when it comes.
    let mut elections =
        ElectionClient::connect(format!("http://{}", c.member(leader).client_addr)).await.expect("connect");
    let campaign = |request_id: &str| CampaignRequest {
        name: "w/election".into(),
        session_id: session.id().into(),
        value: b"me".to_vec(),
        request_id: request_id.into(),
        ..Default::default()
    };
    let candidacy = |request_id: &str| WithdrawCandidacyRequest {
        name: "w/election".into(),
        request_id: request_id.into(),
    };
    let won = elections.campaign(campaign("won")).await.expect("campaign").into_inner();
    let answer = elections.withdraw(candidacy("won")).await.expect("withdraw").into_inner();
    assert_eq!(answer.leader, won.leader, "a leadership won first is answered, with its value");
    let answer = elections.withdraw(candidacy("late")).await.expect("withdraw").into_inner();
    assert_eq!(answer.leader, None, "nothing was won");
    let refused = elections.campaign(campaign("late")).await.expect_err("a campaign whose id was spent");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
}

/// `--max-lock-waiters 2`: with two requests waiting, a third that would wait is refused
/// RESOURCE_EXHAUSTED naming the flag, and nothing is queued (one that would not wait is still
/// just "not granted"); once the queue is shorter, a new request joins it.
#[tokio::test]
async fn a_request_past_max_lock_waiters_is_refused_naming_the_flag_and_queues_nothing() {
    const NAME: &str = "bounded-queue";
    let c = Cluster::start(1, &["--max-lock-waiters", "2"]).await;
    c.leader().await;
    let client = c.client().await;
    let ttl = Duration::from_secs(10);
    let mut sessions = Vec::new();
    for who in ["a", "b", "c", "d"] {
        sessions.push(client.session(SessionOptions::new(ttl).name(who)).await.unwrap());
    }
    let [a, b, cs, d] = [0, 1, 2, 3].map(|i| sessions[i].id().to_string());
    let held = client
        .acquire(&a, NAME, LockOptions::exclusive().wait(Wait::No))
        .await
        .unwrap()
        .expect("a free lock is granted at once");
    let waiting_b = acquire_in_background(&client, &b, NAME, LockOptions::exclusive());
    until_lock_is(&client, NAME, &[&a], &[&b]).await;
    let _waiting_c = acquire_in_background(&client, &cs, NAME, LockOptions::exclusive());
    let before = until_lock_is(&client, NAME, &[&a], &[&b, &cs]).await;

    let refused = client.acquire(&d, NAME, LockOptions::exclusive()).await;
    let e = refused.expect_err("a third waiter is past --max-lock-waiters 2");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(
        e.over_limit(),
        "the member marks its own refusal (latch-over-limit), so nothing is withdrawn: {e}"
    );
    for needle in ["--max-lock-waiters", "2 requests waiting", NAME] {
        assert!(e.to_string().contains(needle), "the refusal should mention {needle:?}: {e}");
    }
    assert_eq!(describe(&client, NAME).await.unwrap(), before, "the refused request queued nothing");
    let busy = client.acquire(&d, NAME, LockOptions::exclusive().wait(Wait::No)).await;
    assert_eq!(busy.unwrap(), None, "a request that would not wait is answered 'not granted', as before");

    // A's release hands the lock to B: one waiter is left, and D joins behind C.
    client.release(&held.token).await.unwrap();
    granted_within(waiting_b, "B", STARTUP).await;
    let _waiting_d = acquire_in_background(&client, &d, NAME, LockOptions::exclusive());
    until_lock_is(&client, NAME, &[&b], &[&cs, &d]).await;
}

/// `--max-locks-per-session 2`: a session holding two locks is refused a third
/// RESOURCE_EXHAUSTED naming the flag, and nothing is written; asking again for one it holds is
/// answered as before, and once it releases one, it takes another.
#[tokio::test]
async fn a_session_past_max_locks_per_session_is_refused_naming_the_flag_and_writes_nothing() {
    let c = Cluster::start(1, &["--max-locks-per-session", "2"]).await;
    c.leader().await;
    let client = c.client().await;
    let session = client.session(SessionOptions::new(Duration::from_secs(10)).name("many")).await.unwrap();
    let id = session.id().to_string();
    let now = || LockOptions::exclusive().wait(Wait::No);
    let first = client.acquire(&id, "first", now()).await.unwrap().expect("a free lock is granted");
    client.acquire(&id, "second", now()).await.unwrap().expect("a second one too");

    let e = client.acquire(&id, "third", now()).await.expect_err("a third is past --max-locks-per-session 2");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.over_limit(), "the member marks its own refusal: {e}");
    for needle in ["--max-locks-per-session", "holds or awaits 2 locks", id.as_str()] {
        assert!(e.to_string().contains(needle), "the refusal should mention {needle:?}: {e}");
    }
    assert_eq!(
        client.describe_lock("third").await.unwrap(),
        None,
        "nothing was written for the refused lock"
    );
    let again =
        client.acquire(&id, "first", now()).await.unwrap().expect("a held lock is answered at the bound");
    assert_eq!(again.token, first.token, "with the hold's own sequencer");

    client.release(&first.token).await.unwrap();
    client.acquire(&id, "third", now()).await.unwrap().expect("room again after a release");
}

/// An election's candidates live in its one row, bounded to `fsm::locks::MAX_ROW_BYTES` (1 MiB)
/// counted from each entry's session id, request id and value (+ 64 bytes): of one campaign
/// more than the row holds (4 KiB values), exactly one is refused RESOURCE_EXHAUSTED, marked
/// as the member's own refusal and saying what the row takes and its bound, and the queue the
/// others formed is intact: once the leader resigns and all but one waiter withdraw, that one
/// leads.
#[tokio::test]
async fn a_campaign_past_the_rows_byte_bound_is_refused_saying_so_and_the_queue_stays_intact() {
    use latch_client::proto::election_client::ElectionClient;
    use latch_client::proto::{CampaignRequest, ResignRequest, WithdrawCandidacyRequest};

    const NAME: &str = "crowded";
    const ROW: usize = 1024 * 1024;
    const VALUE: usize = 4 * 1024;
    let c = Cluster::start(1, &[]).await;
    let leader = c.leader().await;
    let client = c.client().await;
    let elections =
        ElectionClient::connect(format!("http://{}", c.member(leader).client_addr)).await.expect("connect");
    let id = |i: usize| format!("candidate-{i:04}");
    let ttl = Duration::from_secs(60);
    let mut sessions = vec![client.session(SessionOptions::new(ttl)).await.expect("a session")];
    let entry = sessions[0].id().len() + id(0).len() + VALUE + 64;
    let fits = ROW / entry;
    while sessions.len() < fits + 1 {
        sessions.push(client.session(SessionOptions::new(ttl)).await.expect("a session"));
    }
    assert!(sessions.iter().all(|s| s.id().len() == sessions[0].id().len()), "entries of one size");

    let mut campaigns: Vec<_> = (0..=fits)
        .map(|i| {
            let mut elections = elections.clone();
            let request = CampaignRequest {
                name: NAME.into(),
                session_id: sessions[i].id().into(),
                value: vec![b'v'; VALUE],
                request_id: id(i),
                ..Default::default()
            };
            Some(tokio::spawn(async move { elections.campaign(request).await }))
        })
        .collect();
    // The first applied leads at once; the one applied to a full row is refused at once.
    let mut answered = Vec::new();
    eventually("two campaigns answered", STARTUP, || {
        for (i, c) in campaigns.iter_mut().enumerate() {
            if c.as_ref().is_some_and(|t| t.is_finished()) {
                answered.push((i, c.take().expect("finished")));
            }
        }
        let n = answered.len();
        async move {
            if n >= 2 {
                Ok(())
            } else {
                Err(format!("{n} answered"))
            }
        }
    })
    .await;
    let mut leading = None;
    let mut refused = None;
    for (i, task) in answered {
        match task.await.expect("joins") {
            Ok(answer) => leading = Some((i, answer.into_inner().leader.expect("a leadership"))),
            Err(status) => refused = Some((i, status)),
        }
    }
    let (first, leadership) = leading.expect("one campaign leads");
    let (_, refused) = refused.expect("one campaign is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        refused.metadata().get(latch_proto::OVER_LIMIT_METADATA).map(|v| v.to_str().ok()),
        Some(Some("true")),
        "the member marks its own refusal: {refused:?}"
    );
    assert_eq!(
        refused.metadata().get(latch_proto::SETTLED_METADATA).map(|v| v.to_str().ok()),
        Some(Some("true")),
        "refused as applied (the row was full when it applied): settled: {refused:?}"
    );
    let taken = format!("candidates take {} bytes", fits * entry);
    for needle in [NAME, taken.as_str(), "past the 1048576", "nothing was queued", "smaller value"] {
        assert!(
            refused.message().contains(needle),
            "the refusal should mention {needle:?}: {}",
            refused.message()
        );
    }

    // The others wait in the row: all waiters but the last withdraw, and the leader resigns.
    let waiting: Vec<usize> = (0..=fits).filter(|&i| campaigns[i].is_some()).collect();
    assert_eq!(waiting.len(), fits - 1, "every other campaign waits");
    let mut elections = elections.clone();
    let (&next, others) = waiting.split_last().expect("waiters");
    for &i in others {
        let withdrawn = WithdrawCandidacyRequest { name: NAME.into(), request_id: id(i) };
        let answer = elections.withdraw(withdrawn).await.expect("withdraw").into_inner();
        assert_eq!(answer.leader, None, "candidate {i} was waiting, not leading");
    }
    let token = leadership.sequencer.expect("a sequencer").token;
    elections.resign(ResignRequest { sequencer: token, request_id: String::new() }).await.expect("resign");
    let won = tokio::time::timeout(STARTUP, campaigns[next].take().expect("waiting"))
        .await
        .expect("the last waiter leads once the others left")
        .expect("joins")
        .expect("its campaign answered")
        .into_inner();
    let seq = won.leader.and_then(|l| l.sequencer).expect("a leadership");
    assert_eq!(seq.session_id, sessions[next].id(), "candidate {next} (after {first}) leads");
}
