//! Locks and elections under faults, judged as Jepsen judged etcd's ("etcd 3.4.3", 2020: a lock
//! that fences nothing is no lock). Workers, each with a session it keeps alive itself, take two
//! locks (or lead two elections) in turn and, holding one, write a fenced Txn (`sequencer_valid`, then a put naming the writer's
//! generation); now and then a holder "pauses" — stops its keepalives and sleeps past its TTL and
//! lock-delay — and writes only afterwards, as a process stopped by GC or the scheduler would.
//! Meanwhile the leader is cut off in a minority, the partition heals, the leader is SIGKILLed and
//! restarted, and the next leader is frozen (SIGSTOP) for longer than an election.
//!
//! Afterwards the cluster's own history is read back from revision 1 — every lock's state at
//! every revision it changed (a LOCKS watch) and every fenced write that took effect (a watch on
//! the written keys) — and judged:
//! - at every revision, a lock has at most one (exclusive) holder, and each new holder's
//!   generation is larger than every earlier one's;
//! - every fenced write that took effect did so while its own generation held the lock: the
//!   lock's state just before the write's revision shows that holder;
//! - every grant a worker was answered is in the history, and no generation of a name went to
//!   two sessions;
//! - every fenced write answered as done is in the history, at the answered revision;
//! - some paused holder's write was refused: the faults and pauses exercised the fence.
//!
//! The faults follow the load's progress (so many grants, then the next fault), so every phase
//! sees traffic whatever the machine's speed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use latch_client::{
    Client, Code, Compare, Error, Leadership, LockInfo, LockOptions, Op, Sequencer, Txn, Wait, WatchOptions,
    WatchTarget, WatchUpdate,
};
use prost::Message;
use rustix::process::Signal;

use crate::harness::{eventually, Cluster, Rng, STARTUP};

const WORKERS: u64 = 4;
const NAMES: u64 = 2;
const TTL: Duration = Duration::from_secs(2);
const LOCK_DELAY: Duration = Duration::from_millis(200);
/// How long a paused holder sleeps before its write: past its TTL and lock-delay, by a margin.
const PAUSE: Duration = Duration::from_millis(3_200);
/// One hold in this many pauses.
const PAUSE_ONE_IN: u64 = 6;
const FENCED: &str = "fenced/";

/// What the workers take: a lock, or an election's leadership (an exclusive lock in a space of
/// its own, with a campaign that waits as long as it takes).
#[derive(Debug, Clone, Copy)]
enum Kind {
    Lock,
    Election,
}

impl Kind {
    /// The names the workers take start with it.
    fn prefix(self) -> &'static str {
        match self {
            Kind::Lock => "safety/",
            Kind::Election => "leading/",
        }
    }

    fn target(self) -> WatchTarget {
        match self {
            Kind::Lock => WatchTarget::Locks,
            Kind::Election => WatchTarget::Elections,
        }
    }

    /// The holders (generation, session) a history event's value shows.
    fn holders(self, value: &[u8]) -> Vec<(u64, String)> {
        match self {
            Kind::Lock => {
                let info = LockInfo::decode(value).expect("a lock event's value is a LockInfo");
                info.holders.into_iter().map(|h| (h.generation, h.session_id)).collect()
            }
            Kind::Election => {
                let l = Leadership::decode(value).expect("an election event's value is a Leadership");
                l.sequencer.into_iter().map(|s| (s.generation, s.session_id)).collect()
            }
        }
    }

    /// Takes `name` for `session`, waiting about a second: its sequencer, `None` when not
    /// granted in time.
    async fn take(self, client: &Client, session: &str, name: &str) -> Result<Option<Sequencer>, Error> {
        match self {
            Kind::Lock => {
                let options =
                    LockOptions::exclusive().wait(Wait::For(Duration::from_secs(1))).lock_delay(LOCK_DELAY);
                client.acquire(session, name, options).await
            }
            Kind::Election => {
                let election = client.election(name).lock_delay(LOCK_DELAY);
                match tokio::time::timeout(Duration::from_secs(1), election.campaign(session, "v")).await {
                    Ok(leadership) => leadership.map(|l| l.sequencer),
                    // Dropped: the client withdraws the candidacy.
                    Err(_) => Ok(None),
                }
            }
        }
    }

    /// Gives `token`'s hold of `name` back.
    async fn give_back(self, client: &Client, name: &str, token: &Sequencer) -> Result<(), Error> {
        match self {
            Kind::Lock => client.release(&token.token).await,
            Kind::Election => {
                let leadership =
                    Leadership { name: name.to_string(), value: Vec::new(), sequencer: Some(token.clone()) };
                client.election(name).resign(&leadership).await
            }
        }
    }
}

/// A grant a worker was answered.
#[derive(Debug, Clone)]
struct Grant {
    name: String,
    session: String,
    generation: u64,
}

/// A fenced write a worker sent, and its answer: `None` when none came (it may have applied).
#[derive(Debug, Clone)]
struct Write {
    name: String,
    value: String,
    paused: bool,
    answer: Option<(bool, i64)>,
}

#[derive(Default)]
struct Recorder {
    grants: Mutex<Vec<Grant>>,
    writes: Mutex<Vec<Write>>,
    granted: AtomicU64,
    stop: AtomicBool,
}

impl Recorder {
    /// Waits until `n` more grants have been answered.
    async fn progress(&self, n: u64, what: &str) {
        let target = self.granted.load(Ordering::Acquire) + n;
        eventually(what, STARTUP * 3, || async {
            let done = self.granted.load(Ordering::Acquire);
            if done >= target {
                Ok(())
            } else {
                Err(format!("{done} of {target} grants answered"))
            }
        })
        .await;
    }
}

/// A session its worker keeps alive until told to stop (a pause) or it is gone.
struct Kept {
    id: String,
    stop: Arc<AtomicBool>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Kept {
    async fn open(client: &Client, worker: u64) -> Option<Kept> {
        let (id, _) = client.create_session(TTL, &format!("worker-{worker}")).await.ok()?;
        let stop = Arc::new(AtomicBool::new(false));
        let keeper = {
            let (client, id, stop) = (client.clone(), id.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Acquire) {
                    tokio::time::sleep(TTL / 4).await;
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    if let Err(e) = client.keep_alive(&id).await {
                        if e.code() == Code::NotFound {
                            break;
                        }
                    }
                }
            })
        };
        Some(Kept { id, stop, keeper })
    }

    fn alive(&self) -> bool {
        !self.keeper.is_finished()
    }

    fn pause(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

async fn worker(kind: Kind, id: u64, client: Client, rec: Arc<Recorder>) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ (id + 1));
    let mut session: Option<Kept> = None;
    let mut written = 0u64;
    while !rec.stop.load(Ordering::Acquire) {
        if !session.as_ref().is_some_and(Kept::alive) {
            session = Kept::open(&client, id).await;
            if session.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        let Some(s) = session.as_ref() else { continue };
        let name = format!("{}{}", kind.prefix(), rng.below(NAMES));
        let seq = match kind.take(&client, &s.id, &name).await {
            Ok(Some(seq)) => seq,
            Err(e) if e.code() == Code::NotFound => {
                session = None;
                continue;
            }
            Ok(None) | Err(_) => continue,
        };
        rec.grants.lock().unwrap().push(Grant {
            name: name.clone(),
            session: s.id.clone(),
            generation: seq.generation,
        });
        rec.granted.fetch_add(1, Ordering::AcqRel);
        let paused = rng.below(PAUSE_ONE_IN) == 0;
        if paused {
            s.pause();
            tokio::time::sleep(PAUSE).await;
        }
        written += 1;
        let value = format!("{} {} w{id}-{written}", seq.generation, s.id);
        let txn = Txn::new()
            .when([Compare::sequencer(seq.token.clone())])
            .and_then([Op::put(format!("{FENCED}{name}"), value.clone())]);
        let answer = client.txn(txn).await.ok().map(|r| (r.succeeded, r.header.map_or(0, |h| h.revision)));
        rec.writes.lock().unwrap().push(Write { name: name.clone(), value, paused, answer });
        if paused {
            // Its keepalives stopped: a new session for the next round.
            session = None;
            continue;
        }
        let _ = kind.give_back(&client, &name, &seq).await;
    }
}

/// A watch's events from revision 1 until one of `until`'s key arrives.
async fn history(client: &Client, options: WatchOptions, until: &[u8]) -> Vec<(i64, latch_client::Event)> {
    let mut stream = client.watch(options.from_revision(1));
    let mut events = Vec::new();
    let read = async {
        while let Some(update) = stream.next().await {
            if let WatchUpdate::Events { revision, events: batch } = update.expect("the history is readable")
            {
                for e in batch {
                    let last = e.kv.as_ref().is_some_and(|kv| kv.key == until);
                    events.push((revision, e));
                    if last {
                        return;
                    }
                }
            }
        }
        panic!("the watch ended before the marker {:?}", String::from_utf8_lossy(until));
    };
    tokio::time::timeout(STARTUP, read).await.expect("the whole history read within the startup time");
    events
}

#[tokio::test]
async fn fenced_writes_under_partitions_kills_and_pauses_only_ever_apply_while_their_lock_generation_holds() {
    run(Kind::Lock).await;
}

#[tokio::test]
async fn fenced_writes_under_partitions_kills_and_pauses_only_ever_apply_while_their_leadership_holds() {
    run(Kind::Election).await;
}

async fn run(kind: Kind) {
    let mut c = Cluster::start(3, &["--fault-injection"]).await;
    c.leader().await;
    let rec = Arc::new(Recorder::default());
    let mut workers = Vec::new();
    for (id, client) in (0..WORKERS).zip(c.impatient_clients(WORKERS).await) {
        workers.push(tokio::spawn(worker(kind, id, client, rec.clone())));
    }

    rec.progress(40, "40 grants before any fault").await;
    let leader = c.leader().await;
    c.isolate(leader).await;
    rec.progress(20, "20 grants with the old leader cut off").await;
    c.heal_all().await;
    rec.progress(20, "20 grants after healing").await;
    let victim = c.leader().await;
    c.kill(victim);
    rec.progress(20, "20 grants with the leader killed").await;
    c.restart(victim).await;
    rec.progress(20, "20 grants after the restart").await;
    let frozen = c.leader().await;
    c.signal(frozen, Signal::STOP);
    rec.progress(10, "10 grants with the leader frozen").await;
    c.signal(frozen, Signal::CONT);
    rec.progress(20, "20 grants after the thaw").await;

    rec.stop.store(true, Ordering::Release);
    for w in workers {
        w.await.unwrap();
    }

    // Markers that end each history: a last fenced-prefix put, a last name taken and given back.
    let client = c.client().await;
    let end_lock = format!("{}~end", kind.prefix());
    let end_put = format!("{FENCED}~end");
    let marker = client.session(latch_client::SessionOptions::new(TTL)).await.unwrap();
    let held = kind.take(&client, marker.id(), &end_lock).await.unwrap().expect("free");
    kind.give_back(&client, &end_lock, &held).await.unwrap();
    client.put(end_put.clone(), "end").await.unwrap();

    let lock_events =
        history(&client, WatchOptions::prefix(kind.prefix()).target(kind.target()), end_lock.as_bytes())
            .await;
    let write_events = history(&client, WatchOptions::prefix(FENCED), end_put.as_bytes()).await;
    let grants = rec.grants.lock().unwrap().clone();
    let writes = rec.writes.lock().unwrap().clone();

    // Each name's holders from each revision it changed at, and every generation ever granted,
    // with its session.
    let mut states: HashMap<String, BTreeMap<i64, Vec<(u64, String)>>> = HashMap::new();
    let mut granted: HashMap<(String, u64), String> = HashMap::new();
    let mut newest: HashMap<String, u64> = HashMap::new();
    for (revision, e) in &lock_events {
        let kv = e.kv.as_ref().expect("an event names its lock or election");
        let name = String::from_utf8(kv.key.clone()).expect("a name is UTF-8");
        let holders = if e.r#type == latch_client::proto::event::EventType::Delete as i32 {
            Vec::new()
        } else {
            kind.holders(&kv.value)
        };
        // (A Leadership names one leader at most: for elections, two leaders at once would show
        // in the fenced writes below, not here.)
        assert!(
            holders.len() <= 1,
            "{name} had {} exclusive holders at revision {revision}: {holders:?}",
            holders.len()
        );
        for (generation, holder) in &holders {
            let key = (name.clone(), *generation);
            match granted.get(&key) {
                Some(session) => assert_eq!(
                    session, holder,
                    "generation {generation} of {name} held by two sessions (revision {revision})"
                ),
                None => {
                    let before = newest.get(&name).copied().unwrap_or(0);
                    assert!(
                        *generation > before,
                        "a new holder of {name} at revision {revision} has generation {generation} after {before}"
                    );
                    newest.insert(name.clone(), *generation);
                    granted.insert(key, holder.clone());
                }
            }
        }
        states.entry(name).or_default().insert(*revision, holders);
    }

    for g in &grants {
        assert_eq!(
            granted.get(&(g.name.clone(), g.generation)),
            Some(&g.session),
            "the grant answered to session {} ({} generation {}) is in the cluster's history",
            g.session,
            g.name,
            g.generation
        );
    }

    let mut applied: HashMap<String, i64> = HashMap::new();
    for (revision, e) in
        write_events.iter().filter(|(_, e)| e.kv.as_ref().is_some_and(|kv| kv.key != end_put.as_bytes()))
    {
        let kv = e.kv.as_ref().expect("a put names its key");
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        let name = key.strip_prefix(FENCED).expect("under the fenced prefix").to_string();
        let value = String::from_utf8_lossy(&kv.value).into_owned();
        let mut fields = value.split(' ');
        let generation: u64 = fields.next().and_then(|g| g.parse().ok()).expect("a generation first");
        let session = fields.next().expect("then a session");
        let holder = states
            .get(&name)
            .and_then(|s| s.range(..*revision).next_back())
            .and_then(|(_, holders)| holders.first());
        assert!(
            holder.is_some_and(|(g, s)| *g == generation && s == session),
            "the fenced write {value:?} to {key} applied at revision {revision} while {name} was held by {holder:?}"
        );
        applied.insert(value, *revision);
    }

    for w in &writes {
        if let Some((true, revision)) = w.answer {
            assert_eq!(
                applied.get(&w.value),
                Some(&revision),
                "the fenced write {:?} to {} answered as done at revision {revision} is in the history there",
                w.value,
                w.name
            );
        }
    }
    let refused_paused = writes.iter().filter(|w| w.paused && matches!(w.answer, Some((false, _)))).count();
    eprintln!(
        "{} grants, {} generations in the history, {} fenced writes ({} applied; {} paused, {refused_paused} of them refused)",
        grants.len(),
        granted.len(),
        writes.len(),
        applied.len(),
        writes.iter().filter(|w| w.paused).count()
    );
    assert!(refused_paused >= 1, "at least one paused holder's write should have been refused by its fence");
}
