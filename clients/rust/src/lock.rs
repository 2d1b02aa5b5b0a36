//! Locks: the calls of the Lock service, and [`LockGuard`], a held lock that is released when
//! dropped. A grant's [`Sequencer`] is the fencing token: hand its string form
//! ([`LockGuard::token`]) to whatever the holder writes to, and have that check it
//! ([`Client::check_sequencer`], or a fenced transaction: [`Compare::sequencer`](crate::Compare))
//! or compare generations, so that a paused ex-holder cannot write after its session ended.
//!
//! A lock is held by a session: it is released when the session ends, and a holder must stop
//! acting on it once its [`Session`] is no longer `Safe`.
//!
//! A session holds a lock once, however many of its guards ask for it: the server answers a
//! session that holds already with the same hold (re-entrant), and one release ends it. So a
//! [`Session`] hands out one [`LockGuard`] per name at a time — a second [`Session::lock`] of
//! the name waits until the first guard is gone *and its release was answered* — or dropping
//! one guard would release what another (or the next turn of a loop) believes it holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use latch_proto::v1::lock_client::LockClient;
use latch_proto::v1::{
    AcquireRequest, CheckSequencerRequest, CheckSequencerResponse, DescribeLockRequest, ListLocksRequest,
    LockInfo, LockMode, ReleaseRequest, Sequencer,
};

use crate::{Client, Error, Session};

/// How long an acquire waits for the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Try once: granted now or not at all.
    No,
    /// Wait up to this long.
    For(Duration),
    Forever,
}

/// How a lock is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockOptions {
    pub mode: LockMode,
    pub wait: Wait,
    /// Lock-delay should this session expire while holding (0 … 60 s); the server's default
    /// (5 s) when `None`.
    pub lock_delay: Option<Duration>,
}

impl LockOptions {
    /// Exclusive, waiting as long as it takes, with the default lock-delay.
    pub fn exclusive() -> LockOptions {
        LockOptions { mode: LockMode::Exclusive, wait: Wait::Forever, lock_delay: None }
    }

    /// Shared, waiting as long as it takes, with the default lock-delay.
    pub fn shared() -> LockOptions {
        LockOptions { mode: LockMode::Shared, ..LockOptions::exclusive() }
    }

    pub fn wait(mut self, wait: Wait) -> LockOptions {
        self.wait = wait;
        self
    }

    pub fn lock_delay(mut self, delay: Duration) -> LockOptions {
        self.lock_delay = Some(delay);
        self
    }
}

impl Client {
    /// Asks for lock `name` for `session`; `None` when it was not granted in the time allowed.
    /// Re-entrant per session: a session that holds the lock gets its sequencer again. Dropping
    /// the future withdraws a request still waiting; a grant that came just as it was dropped
    /// stays the session's until released or the session ends (acquire again to get it back).
    pub async fn acquire(
        &self,
        session: &str,
        name: &str,
        options: LockOptions,
    ) -> Result<Option<Sequencer>, Error> {
        let (wait_ms, wait_forever, wait) = match options.wait {
            Wait::No => (0, false, Some(Duration::ZERO)),
            Wait::For(d) => (u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1), false, Some(d)),
            Wait::Forever => (0, true, None),
        };
        let request = AcquireRequest {
            name: name.to_string(),
            session_id: session.to_string(),
            mode: options.mode as i32,
            wait_ms,
            wait_forever,
            lock_delay_ms: options.lock_delay.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            request_id: uuid::Uuid::now_v7().to_string(),
        };
        // A resent request waits only what is left of the time allowed.
        let until = wait.map(|d| tokio::time::Instant::now() + d);
        let r = self
            .call_waiting("Acquire", wait, |channel| {
                let mut request = request.clone();
                if let (Some(until), false) = (until, request.wait_ms == 0) {
                    let left = until.saturating_duration_since(tokio::time::Instant::now());
                    request.wait_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1);
                }
                async move { LockClient::new(channel).acquire(request).await }
            })
            .await?;
        Ok(r.sequencer.filter(|_| r.acquired))
    }

    /// Releases the hold a sequencer names; FAILED_PRECONDITION when it holds no more.
    pub async fn release(&self, sequencer: &str) -> Result<(), Error> {
        let request =
            ReleaseRequest { sequencer: sequencer.to_string(), request_id: uuid::Uuid::now_v7().to_string() };
        self.call("Release", |channel| {
            let request = request.clone();
            async move { LockClient::new(channel).release(request).await }
        })
        .await?;
        Ok(())
    }

    /// Whether a sequencer (string form) still holds its lock: `valid`, or the `reason` not.
    pub async fn check_sequencer(&self, sequencer: &str) -> Result<CheckSequencerResponse, Error> {
        let request = CheckSequencerRequest { sequencer: sequencer.to_string() };
        self.call("CheckSequencer", |channel| {
            let request = request.clone();
            async move { LockClient::new(channel).check_sequencer(request).await }
        })
        .await
    }

    /// Lock `name`'s holders, waiters and lock-delay; `None` when nobody holds or awaits it.
    pub async fn describe_lock(&self, name: &str) -> Result<Option<LockInfo>, Error> {
        let request = DescribeLockRequest { name: name.to_string() };
        let r = self
            .call("DescribeLock", |channel| {
                let request = request.clone();
                async move { LockClient::new(channel).describe_lock(request).await }
            })
            .await?;
        Ok(r.lock)
    }

    /// The locks whose names begin with `prefix`, in name order.
    pub async fn list_locks(&self, prefix: &str) -> Result<Vec<LockInfo>, Error> {
        let request = ListLocksRequest { prefix: prefix.to_string() };
        let r = self
            .call("ListLocks", |channel| {
                let request = request.clone();
                async move { LockClient::new(channel).list_locks(request).await }
            })
            .await?;
        Ok(r.locks)
    }
}

impl Session {
    /// Asks for lock `name` for this session (see [`Client::acquire`]); the guard releases it
    /// when dropped. `None` when not granted in the time allowed.
    ///
    /// While a guard of this session holds `name` (or the release of a dropped one is still on
    /// its way), this waits for it to be gone first: see the module doc. The time waiting here
    /// counts against `options.wait`.
    pub async fn lock(&self, name: &str, options: LockOptions) -> Result<Option<LockGuard>, Error> {
        let (turn, options) = match options.wait {
            Wait::Forever => (Turn::take(self.turns(), name).await, options),
            Wait::No => match Turn::take_unless_held(self.turns(), name).await {
                Some(turn) => (turn, options),
                None => return Ok(None),
            },
            Wait::For(d) => {
                let start = tokio::time::Instant::now();
                match tokio::time::timeout(d, Turn::take(self.turns(), name)).await {
                    Ok(turn) => (turn, options.wait(Wait::For(d.saturating_sub(start.elapsed())))),
                    Err(_) => return Ok(None),
                }
            }
        };
        let client = self.client().clone();
        let sequencer = client.acquire(self.id(), name, options).await?;
        Ok(sequencer.map(|sequencer| LockGuard { client, sequencer, held: true, turn: Some(turn) }))
    }
}

/// A session's guards, one per lock name at a time: for each name taken or waited for, a
/// local mutex, how many [`Turn`]s hold or await it (the entry goes when that is 0, so the map
/// holds only names in use), and whether the turn holding it is only releasing.
#[derive(Debug, Default)]
pub(crate) struct Turns(Mutex<HashMap<String, Name>>);

#[derive(Debug, Default)]
struct Name {
    mutex: Arc<tokio::sync::Mutex<()>>,
    users: usize,
    /// The holding turn's guard is gone; its release is on its way.
    releasing: bool,
}

/// A session's turn at one lock name: from [`Session::lock`] until the guard is gone and its
/// release was answered (or failed).
#[derive(Debug)]
struct Turn {
    turns: Arc<Turns>,
    name: String,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Turn {
    /// Waits for the name, however long its current guard lives.
    async fn take(turns: &Arc<Turns>, name: &str) -> Turn {
        let (mut turn, mutex) = Turn::join(turns, name);
        turn.held = Some(mutex.lock_owned().await);
        turn.set_releasing(false);
        turn
    }

    /// The name if no guard of the session holds it — waiting, if need be, only for a
    /// release on its way (a dropped guard's), never for a guard still held.
    async fn take_unless_held(turns: &Arc<Turns>, name: &str) -> Option<Turn> {
        let (mut turn, mutex) = Turn::join(turns, name);
        let releasing = {
            let map = turns.0.lock().unwrap_or_else(PoisonError::into_inner);
            match mutex.clone().try_lock_owned() {
                Ok(held) => {
                    turn.held = Some(held);
                    false
                }
                Err(_) => map.get(name).is_some_and(|n| n.releasing),
            }
        };
        if turn.held.is_none() {
            if !releasing {
                return None;
            }
            turn.held = Some(mutex.lock_owned().await);
        }
        turn.set_releasing(false);
        Some(turn)
    }

    /// Counts one more turn at the name; the turn's drop counts it off.
    fn join(turns: &Arc<Turns>, name: &str) -> (Turn, Arc<tokio::sync::Mutex<()>>) {
        let mut map = turns.0.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = map.entry(name.to_string()).or_default();
        entry.users += 1;
        let mutex = entry.mutex.clone();
        (Turn { turns: turns.clone(), name: name.to_string(), held: None }, mutex)
    }

    /// Says that this turn's guard is gone and only its release is left (or, `false`, that a
    /// new turn holds the name).
    fn set_releasing(&self, releasing: bool) {
        let mut map = self.turns.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = map.get_mut(&self.name) {
            entry.releasing = releasing;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut map = self.turns.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Let the next waiter in before the entry may go: it holds its own count.
        self.held = None;
        if let Some(entry) = map.get_mut(&self.name) {
            entry.users -= 1;
            if entry.users == 0 {
                map.remove(&self.name);
            }
        }
    }
}

/// A held lock: released by [`release`](LockGuard::release), or in the background when dropped.
/// The session's next [`Session::lock`] of the name waits until that release was answered.
#[derive(Debug)]
pub struct LockGuard {
    client: Client,
    sequencer: Sequencer,
    held: bool,
    /// The session's turn at the name, until the release was answered.
    turn: Option<Turn>,
}

impl LockGuard {
    pub fn sequencer(&self) -> &Sequencer {
        &self.sequencer
    }

    /// The sequencer's string form, to hand to the systems the holder writes to.
    pub fn token(&self) -> &str {
        &self.sequencer.token
    }

    /// The fencing token: strictly increasing per lock name.
    pub fn generation(&self) -> u64 {
        self.sequencer.generation
    }

    pub async fn release(mut self) -> Result<(), Error> {
        self.held = false;
        if let Some(turn) = &self.turn {
            turn.set_releasing(true);
        }
        self.client.release(&self.sequencer.token).await
        // The turn ends here, with the guard, once the release was answered.
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (client, token) = (self.client.clone(), self.sequencer.token.clone());
            // The session's turn at the name goes with the release: its next lock of the name is
            // sent only once this one was answered.
            let turn = self.turn.take();
            if let Some(turn) = &turn {
                turn.set_releasing(true);
            }
            runtime.spawn(async move {
                if let Err(e) = client.release(&token).await {
                    tracing::debug!(sequencer = %token, error = %e, "releasing a dropped lock failed");
                }
                drop(turn);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in_use(turns: &Arc<Turns>) -> Vec<String> {
        let map = turns.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<String> = map.keys().cloned().collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_name_has_one_turn_at_a_time_and_is_forgotten_when_nobody_holds_or_awaits_it() {
        let turns = Arc::new(Turns::default());
        let first = Turn::take_unless_held(&turns, "a").await.expect("a free name is taken at once");
        assert!(
            Turn::take_unless_held(&turns, "a").await.is_none(),
            "a name a guard holds is not taken a second time"
        );
        let other = Turn::take_unless_held(&turns, "b").await.expect("another name is free");

        let waiting = Turn::take(&turns, "a");
        tokio::pin!(waiting);
        assert!(futures::poll!(&mut waiting).is_pending(), "a second turn at a held name waits");
        drop(first);
        let second = waiting.await;
        assert_eq!(names_in_use(&turns), ["a", "b"], "names held stay known");

        drop((second, other));
        assert!(names_in_use(&turns).is_empty(), "a name nobody holds or awaits is forgotten");

        // A wait given up (its future dropped) leaves nothing behind either.
        let held = Turn::take_unless_held(&turns, "c").await.expect("free");
        let mut given_up = Box::pin(Turn::take(&turns, "c"));
        assert!(futures::poll!(&mut given_up).is_pending(), "waits behind the holder");
        drop(given_up);
        drop(held);
        assert!(names_in_use(&turns).is_empty(), "a dropped wait is no longer counted");

        // A turn whose guard is gone and whose release is on its way: the next try waits for it.
        let releasing = Turn::take_unless_held(&turns, "d").await.expect("free");
        releasing.set_releasing(true);
        let mut next = Box::pin(Turn::take_unless_held(&turns, "d"));
        assert!(futures::poll!(&mut next).is_pending(), "a try waits for a release on its way");
        drop(releasing);
        assert!(next.await.is_some(), "and takes the name once the release was answered");
        assert!(names_in_use(&turns).is_empty(), "nothing left once every turn is gone");
    }
}
