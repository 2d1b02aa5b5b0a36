//! Locks: the calls of the Lock service, and [`LockGuard`], a held lock that is released when
//! dropped. A grant's [`Sequencer`] is the fencing token: hand its string form
//! ([`LockGuard::token`]) to whatever the holder writes to, and have that check it
//! ([`Client::check_sequencer`], or a fenced transaction: [`Compare::sequencer`](crate::Compare))
//! or compare generations, so that a paused ex-holder cannot write after its session ended.
//!
//! A lock is held by a session: it is released when the session ends, and a holder must stop
//! acting on it once its [`Session`] is no longer `Safe`.

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
    pub async fn lock(&self, name: &str, options: LockOptions) -> Result<Option<LockGuard>, Error> {
        let client = self.client().clone();
        let sequencer = client.acquire(self.id(), name, options).await?;
        Ok(sequencer.map(|sequencer| LockGuard { client, sequencer, held: true }))
    }
}

/// A held lock: released by [`release`](LockGuard::release), or in the background when dropped.
#[derive(Debug)]
pub struct LockGuard {
    client: Client,
    sequencer: Sequencer,
    held: bool,
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
        self.client.release(&self.sequencer.token).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (client, token) = (self.client.clone(), self.sequencer.token.clone());
            runtime.spawn(async move {
                if let Err(e) = client.release(&token).await {
                    tracing::debug!(sequencer = %token, error = %e, "releasing a dropped lock failed");
                }
            });
        }
    }
}
