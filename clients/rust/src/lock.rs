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
    LockInfo, LockMode, ReleaseRequest, Sequencer, WithdrawRequest,
};

use crate::client::every_page;
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
    /// Re-entrant per session: a session that holds the lock gets its sequencer again. (So a
    /// release of that hold by another caller of the session, at the moment this call is
    /// answered with it, makes even a wait of [`Wait::Forever`] answer `None`: the member
    /// cannot tell it from a resend whose grant was released since. `Session::lock`'s one
    /// guard per name keeps this from happening.) Dropping
    /// the future, or an error after the request may have been queued (a member cut off, the
    /// retry budget spent), withdraws the request in the background; a grant that came just
    /// before stays the session's until released or the session ends (acquire again to get it
    /// back).
    pub async fn acquire(
        &self,
        session: &str,
        name: &str,
        options: LockOptions,
    ) -> Result<Option<Sequencer>, Error> {
        self.acquire_in(session, name, options, None).await.map(|(sequencer, _)| sequencer)
    }

    /// [`acquire`](Client::acquire) in a session's `turn` at the name, given back with the
    /// answer. Should the call be given up unsettled, the turn stays with its withdrawal, which
    /// then releases a grant that came first (nobody holds a guard of it), and only then lets
    /// the session's next lock of the name go.
    pub(crate) async fn acquire_in(
        &self,
        session: &str,
        name: &str,
        options: LockOptions,
        turn: Option<Turn>,
    ) -> Result<(Option<Sequencer>, Option<Turn>), Error> {
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
        let mut unsettled = Unsettled::new(self, Queue::Lock, name, &request.request_id);
        unsettled.turn = turn;
        let r = self
            .write_waiting("Acquire", wait, |channel| {
                let mut request = request.clone();
                if let (Some(until), false) = (until, request.wait_ms == 0) {
                    let left = until.saturating_duration_since(tokio::time::Instant::now());
                    request.wait_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1);
                }
                async move { LockClient::new(channel).acquire(request).await }
            })
            .await;
        if let Some(Granted::Lock(seq)) = unsettled.settle_on(&r).await {
            return Ok((Some(seq), unsettled.turn.take()));
        }
        // An error leaves the turn with the withdrawal, if one is still to be made.
        let r = r?;
        Ok((r.sequencer.filter(|_| r.acquired), unsettled.turn.take()))
    }

    /// Gives up the acquire sent under `request_id` (Lock.Withdraw): its place in the queue, or
    /// its chance to be queued; `Some` when it had been granted first (the session keeps it).
    pub(crate) async fn withdraw(&self, name: &str, request_id: &str) -> Result<Option<Sequencer>, Error> {
        let request = WithdrawRequest { name: name.to_string(), request_id: request_id.to_string() };
        let r = self
            .write("Withdraw", |channel| {
                let request = request.clone();
                async move { LockClient::new(channel).withdraw(request).await }
            })
            .await?;
        Ok(r.sequencer.filter(|_| r.held))
    }

    /// Releases the hold a sequencer names; FAILED_PRECONDITION when it holds no more.
    pub async fn release(&self, sequencer: &str) -> Result<(), Error> {
        let request =
            ReleaseRequest { sequencer: sequencer.to_string(), request_id: uuid::Uuid::now_v7().to_string() };
        self.write("Release", |channel| {
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
                // A row of many holders and waiters may be over tonic's 4 MiB default.
                async move {
                    LockClient::new(channel)
                        .max_decoding_message_size(usize::MAX)
                        .describe_lock(request)
                        .await
                }
            })
            .await?;
        Ok(r.lock)
    }

    /// The locks whose names begin with `prefix`, in name order: every page of them (each page
    /// read at its own revision, as a paged list in etcd).
    pub async fn list_locks(&self, prefix: &str) -> Result<Vec<LockInfo>, Error> {
        let page = |start_after: String| async move {
            let request = ListLocksRequest { prefix: prefix.to_string(), start_after };
            let r = self
                .call("ListLocks", |channel| {
                    let request = request.clone();
                    // A page is as large as the member's --max-response-bytes allows.
                    async move {
                        LockClient::new(channel)
                            .max_decoding_message_size(usize::MAX)
                            .list_locks(request)
                            .await
                    }
                })
                .await?;
            Ok((r.locks, r.more))
        };
        every_page(page, |l: &LockInfo| l.name.clone()).await
    }
}

impl Session {
    /// Asks for lock `name` for this session (see [`Client::acquire`]); the guard releases it
    /// when dropped. `None` when not granted in the time allowed.
    ///
    /// The session holds a lock once (see the module doc): while a guard of this session holds
    /// `name`, this waits for it to be gone and its release answered — so a task that holds a
    /// guard and locks the same name again waits for itself. With [`Wait::No`] it returns
    /// `None` at once while a guard holds the name, waiting only for a dropped guard's release
    /// on its way. A release whose answer never came (it failed, or its future was dropped) is
    /// sent again, and answered, before the name is asked for anew: that takes what the call
    /// takes (up to the client's retry budget), whatever `options.wait`. Otherwise the time
    /// waiting here counts against `options.wait`.
    ///
    /// Dropping the future (a `timeout` or `select!` around it) withdraws the request in the
    /// background; a grant that came first is released there, not kept. The session's next
    /// lock of the name waits for that withdrawal (seconds at most while the cluster answers;
    /// about two minutes of retries when it does not), as for a release on its way.
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
        if let Some(token) = turn.unreleased() {
            // It may still be on its way: should it land after this acquire re-entered the same
            // hold, it would end it. So it goes first, answered.
            release_in_turn(&client, &token, &turn).await?;
        }
        let (sequencer, turn) = client.acquire_in(self.id(), name, options, Some(turn)).await?;
        Ok(sequencer.map(|sequencer| LockGuard { client, sequencer, held: true, turn }))
    }
}

/// Whether an acquire that failed with `e` left nothing to withdraw: it was refused as asked
/// (a bad request, no such session, a mode the session does not hold it in, an id used before,
/// a queue or request over a limit the member marked as its own), whatever attempt answered it,
/// and no other attempt may still take effect ([`Error::unsettled`]: one went unanswered, and
/// the refusal was made before proposing). Any other failure may have come after an attempt was
/// queued.
fn settles(e: &Error) -> bool {
    use tonic::Code::*;
    let refused = matches!(
        e.code(),
        InvalidArgument | NotFound | FailedPrecondition | Unimplemented | PermissionDenied | Unauthenticated
    ) || e.over_limit();
    refused && !e.unsettled()
}

/// Attempts at withdrawing an acquire given up, each with the client's own retries over the
/// members, before the session's end is left to do it.
const WITHDRAW_ATTEMPTS: u32 = 8;
/// The wait before the first attempt's retry; it doubles each time (about a minute in all).
const WITHDRAW_BACKOFF: Duration = Duration::from_millis(250);

/// The queue an unsettled request waits in.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Queue {
    /// A lock's (Acquire; Lock.Withdraw).
    Lock,
    /// An election's candidates (Campaign; Election.Withdraw).
    Election,
}

/// A request for a lock or a leadership whose outcome is unknown: while `client` is set,
/// dropping it withdraws the request in the background (Lock.Withdraw, Election.Withdraw),
/// retried for about a minute. It is set from the first attempt until an answer settles the call
/// — so a request that failed after it may have been queued (a member cut off, a connection
/// lost, the retry budget spent), or whose future was dropped between attempts, leaves no wait
/// behind to be granted to a session whose caller was told it did not get the lock. (A future
/// dropped during an attempt is withdrawn by the member too, as it sees the call go.) A grant
/// that came first is released when the request was a [`Session::lock`]'s, whose turn at the
/// name the withdrawal holds until then; otherwise it is kept, as the member's own withdrawal
/// keeps it (docs/locks.md, "Giving up"): the session's next request of the name gets it back.
pub(crate) struct Unsettled {
    client: Option<Client>,
    queue: Queue,
    name: String,
    request_id: String,
    /// The session's turn at the name ([`Session::lock`]), kept until the request is settled.
    turn: Option<Turn>,
}

impl Unsettled {
    pub(crate) fn new(client: &Client, queue: Queue, name: &str, request_id: &str) -> Unsettled {
        Unsettled {
            client: Some(client.clone()),
            queue,
            name: name.to_string(),
            request_id: request_id.to_string(),
            turn: None,
        }
    }

    /// Disarms unless `result` leaves the request's fate unknown. When it does, one withdrawal
    /// is tried (within the request timeout) before the caller hears of the error — so that
    /// asking again at once does not join the wait being withdrawn, and lose its place when
    /// the withdrawal lands — and, failing that, retried in the background as the guard drops.
    /// A grant that withdrawal finds is returned: the caller gets it instead of the error.
    pub(crate) async fn settle_on<T>(&mut self, result: &Result<T, Error>) -> Option<Granted> {
        if result.as_ref().map_or_else(settles, |_| true) {
            self.client = None;
            return None;
        }
        let client = self.client.clone()?;
        let once = withdraw_once(&client, self.queue, &self.name, &self.request_id);
        let Ok(answer) = tokio::time::timeout(client.request_timeout(), once).await else { return None };
        if let Ok(Some(granted)) = answer {
            self.client = None;
            return Some(granted);
        }
        if withdrawn(self.queue, &self.name, answer) {
            self.client = None;
        }
        None
    }
}

/// A grant a withdrawal found, come before it.
pub(crate) enum Granted {
    Lock(Sequencer),
    Election(latch_proto::v1::Leadership),
}

impl Granted {
    fn generation(&self) -> u64 {
        match self {
            Granted::Lock(s) => s.generation,
            Granted::Election(l) => l.sequencer.as_ref().map_or(0, |s| s.generation),
        }
    }
}

/// One withdrawal of `request_id` (with the client's retries over the members): the grant
/// that came first, if one did.
async fn withdraw_once(
    client: &Client,
    queue: Queue,
    name: &str,
    request_id: &str,
) -> Result<Option<Granted>, Error> {
    match queue {
        Queue::Lock => client.withdraw(name, request_id).await.map(|s| s.map(Granted::Lock)),
        Queue::Election => {
            client.withdraw_candidacy(name, request_id).await.map(|l| l.map(Granted::Election))
        }
    }
}

/// Whether a withdrawal's `answer` ends the matter (a grant that came first is kept, and said).
fn withdrawn(queue: Queue, name: &str, answer: Result<Option<Granted>, Error>) -> bool {
    match answer {
        Ok(None) => true,
        Ok(Some(granted)) => {
            let generation = granted.generation();
            tracing::warn!(
                ?queue,
                name,
                generation,
                "a request given up had been granted first: its session holds it until it releases it or ends"
            );
            true
        }
        // Refused as asked: asking again would be refused alike.
        Err(e)
            if matches!(
                e.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::Unimplemented
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unauthenticated
            ) =>
        {
            tracing::debug!(?queue, name, error = %e, "a request given up cannot be withdrawn");
            true
        }
        Err(e) => {
            tracing::debug!(?queue, name, error = %e, "withdrawing a request given up: retrying");
            false
        }
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (queue, name, request_id) =
            (self.queue, std::mem::take(&mut self.name), std::mem::take(&mut self.request_id));
        let turn = self.turn.take();
        if let Some(turn) = &turn {
            // A `Wait::No` lock of the name waits for the withdrawal, as for a release on its
            // way, rather than taking it for a guard's.
            turn.set_releasing();
        }
        runtime.spawn(async move {
            let mut backoff = WITHDRAW_BACKOFF;
            for _ in 0..WITHDRAW_ATTEMPTS {
                let answer = withdraw_once(&client, queue, &name, &request_id).await;
                if let (Some(turn), Ok(Some(Granted::Lock(seq)))) = (&turn, &answer) {
                    // Granted first, to a caller who is gone: no guard holds it. Released in
                    // the turn, so the session's next lock of the name waits for the answer.
                    match release_in_turn(&client, &seq.token, turn).await {
                        Ok(()) => tracing::debug!(name, "a lock given up had been granted first: released"),
                        Err(e) => tracing::warn!(
                            name,
                            error = %e,
                            "releasing a lock given up, granted first, failed; the session's next lock of the name sends it again"
                        ),
                    }
                    return;
                }
                if withdrawn(queue, &name, answer) {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            tracing::warn!(
                ?queue,
                name,
                "a request given up could not be withdrawn; its session's end will withdraw it"
            );
        });
    }
}

/// Releases `token` in `turn`: noted as unanswered before it is sent, and no longer once the
/// cluster answered it (released, or FAILED_PRECONDITION: it held no more).
async fn release_in_turn(client: &Client, token: &str, turn: &Turn) -> Result<(), Error> {
    turn.note_unreleased(token);
    match client.release(token).await {
        Ok(()) => {
            turn.settled(token);
            Ok(())
        }
        Err(e) if e.code() == tonic::Code::FailedPrecondition => {
            turn.settled(token);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// A session's guards, one per lock name at a time (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct Turns(Mutex<TurnsInner>);

#[derive(Debug, Default)]
struct TurnsInner {
    /// Each name taken or waited for; an entry goes when no turn holds or awaits it.
    names: HashMap<String, Name>,
    /// For a name, the sequencer of a release sent but never answered. Kept when the name's
    /// entry goes: at most one per name the session locked.
    unreleased: HashMap<String, String>,
}

#[derive(Debug, Default)]
struct Name {
    mutex: Arc<tokio::sync::Mutex<()>>,
    /// Turns that hold or await the name.
    users: usize,
    /// The holding turn's guard is gone; its release is on its way.
    releasing: bool,
    /// Told when a holding turn ends.
    ended: Arc<tokio::sync::Notify>,
}

/// A session's turn at one lock name: from [`Session::lock`] until the guard is gone and its
/// release was answered (or failed).
#[derive(Debug)]
pub(crate) struct Turn {
    turns: Arc<Turns>,
    name: String,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Turns {
    fn inner(&self) -> std::sync::MutexGuard<'_, TurnsInner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Turn {
    /// Waits for the name, however long its current guard lives.
    async fn take(turns: &Arc<Turns>, name: &str) -> Turn {
        let (mut turn, mutex) = Turn::join(turns, name);
        turn.held = Some(mutex.lock_owned().await);
        turn
    }

    /// The name if no guard of the session holds it — waiting, if need be, only for a
    /// release on its way (a dropped guard's), never for a guard still held.
    async fn take_unless_held(turns: &Arc<Turns>, name: &str) -> Option<Turn> {
        let (mut turn, mutex) = Turn::join(turns, name);
        loop {
            let ended = {
                let inner = turns.inner();
                if let Ok(held) = mutex.clone().try_lock_owned() {
                    turn.held = Some(held);
                    return Some(turn);
                }
                match inner.names.get(name) {
                    Some(n) if n.releasing => n.ended.clone(),
                    _ => return None, // a guard holds it
                }
            };
            // The holding turn ends under the lock just released: told, whenever that is.
            let told = ended.notified();
            tokio::pin!(told);
            told.as_mut().enable();
            let still = turns.inner().names.get(name).is_some_and(|n| n.releasing);
            if still {
                told.await;
            }
        }
    }

    /// Counts one more turn at the name; the turn's drop counts it off.
    fn join(turns: &Arc<Turns>, name: &str) -> (Turn, Arc<tokio::sync::Mutex<()>>) {
        let mut inner = turns.inner();
        let entry = inner.names.entry(name.to_string()).or_default();
        entry.users += 1;
        let mutex = entry.mutex.clone();
        (Turn { turns: turns.clone(), name: name.to_string(), held: None }, mutex)
    }

    /// This (holding) turn's guard is gone and only its release is left.
    fn set_releasing(&self) {
        if let Some(entry) = self.turns.inner().names.get_mut(&self.name) {
            entry.releasing = true;
        }
    }

    fn note_unreleased(&self, token: &str) {
        self.turns.inner().unreleased.insert(self.name.clone(), token.to_string());
    }

    fn settled(&self, token: &str) {
        let mut inner = self.turns.inner();
        if inner.unreleased.get(&self.name).is_some_and(|t| t == token) {
            inner.unreleased.remove(&self.name);
        }
    }

    fn unreleased(&self) -> Option<String> {
        self.turns.inner().unreleased.get(&self.name).cloned()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut inner = self.turns.inner();
        let Some(entry) = inner.names.get_mut(&self.name) else { return };
        if self.held.take().is_some() {
            // The holding turn ends: the next waiter gets the name, a try looks again.
            entry.releasing = false;
            entry.ended.notify_waiters();
        }
        entry.users -= 1;
        if entry.users == 0 {
            inner.names.remove(&self.name);
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
        let Some(turn) = self.turn.take() else { return self.client.release(&self.sequencer.token).await };
        turn.set_releasing();
        release_in_turn(&self.client, &self.sequencer.token, &turn).await
        // The turn ends here, once the release was answered (or failed: then the session's
        // next lock of the name sends it again first).
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let Some(turn) = self.turn.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (client, token) = (self.client.clone(), self.sequencer.token.clone());
        // The session's turn at the name goes with the release: its next lock of the name is
        // sent only once this one was answered.
        turn.set_releasing();
        runtime.spawn(async move {
            if let Err(e) = release_in_turn(&client, &token, &turn).await {
                tracing::debug!(sequencer = %token, error = %e, "releasing a dropped lock failed");
            }
            drop(turn);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latch_proto::v1::lock_server::{Lock, LockServer};
    use latch_proto::v1::{
        AcquireRequest, AcquireResponse, CheckSequencerRequest, CheckSequencerResponse, DescribeLockRequest,
        DescribeLockResponse, ListLocksRequest, ListLocksResponse, ReleaseRequest, ReleaseResponse,
        WithdrawRequest, WithdrawResponse,
    };
    use tonic::{Request, Response, Status};

    /// An acquire refused as asked leaves nothing to withdraw, unless another of its attempts
    /// may still take effect (went unanswered beside a refusal made before proposing).
    #[test]
    fn a_refused_acquire_is_withdrawn_only_when_another_attempt_may_still_take_effect() {
        let refused = |code, unsettled: bool| {
            let mut status = Status::new(code, "refused");
            if unsettled {
                status.metadata_mut().insert(latch_proto::UNSETTLED_METADATA, "true".parse().expect("ascii"));
            }
            Error::from(status)
        };
        assert!(settles(&refused(tonic::Code::NotFound, false)), "no such session: nothing queued");
        assert!(!settles(&refused(tonic::Code::NotFound, true)), "an attempt unanswered may be queued");
        assert!(!settles(&refused(tonic::Code::Unavailable, false)), "no member said it was refused");
    }

    /// A member where an acquire never answers, its withdrawal finds it granted (it came
    /// first), and releases are recorded.
    #[derive(Clone, Default)]
    struct GrantedFirst {
        released: Arc<Mutex<Vec<String>>>,
    }

    #[tonic::async_trait]
    impl Lock for GrantedFirst {
        async fn acquire(&self, _: Request<AcquireRequest>) -> Result<Response<AcquireResponse>, Status> {
            futures::future::pending().await
        }

        async fn release(
            &self,
            request: Request<ReleaseRequest>,
        ) -> Result<Response<ReleaseResponse>, Status> {
            self.released.lock().expect("test lock").push(request.into_inner().sequencer);
            Ok(Response::new(ReleaseResponse::default()))
        }

        async fn withdraw(&self, _: Request<WithdrawRequest>) -> Result<Response<WithdrawResponse>, Status> {
            let sequencer =
                Sequencer { name: "l".into(), generation: 7, token: "tok-7".into(), ..Default::default() };
            Ok(Response::new(WithdrawResponse {
                held: true,
                sequencer: Some(sequencer),
                ..Default::default()
            }))
        }

        async fn check_sequencer(
            &self,
            _: Request<CheckSequencerRequest>,
        ) -> Result<Response<CheckSequencerResponse>, Status> {
            Err(Status::unimplemented("not scripted"))
        }

        async fn describe_lock(
            &self,
            _: Request<DescribeLockRequest>,
        ) -> Result<Response<DescribeLockResponse>, Status> {
            Err(Status::unimplemented("not scripted"))
        }

        async fn list_locks(
            &self,
            _: Request<ListLocksRequest>,
        ) -> Result<Response<ListLocksResponse>, Status> {
            Err(Status::unimplemented("not scripted"))
        }
    }

    #[tokio::test]
    async fn a_session_locks_grant_found_by_the_withdrawal_of_a_dropped_call_is_released_before_its_next_turn(
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("bound address").to_string();
        let member = GrantedFirst::default();
        let incoming =
            tonic::transport::server::TcpIncoming::from_listener(listener, true, None).expect("incoming");
        let service = LockServer::new(member.clone());
        tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
        let client = Client::connect([addr.as_str()]).await.expect("valid endpoint");
        let turns = Arc::new(Turns::default());

        let turn = Turn::take(&turns, "l").await;
        let call = client.acquire_in("s", "l", LockOptions::exclusive(), Some(turn));
        let given_up = tokio::time::timeout(Duration::from_millis(200), call).await;
        assert!(given_up.is_err(), "the caller gave up on an acquire that never answered");
        // The next turn at the name comes only once the withdrawal released the grant it found;
        // even a `Wait::No` lock waits for it (no guard holds the name), rather than give up.
        let next = tokio::time::timeout(Duration::from_secs(10), Turn::take_unless_held(&turns, "l")).await;
        assert!(next.expect("the withdrawal hands the turn on").is_some(), "the name was free of guards");
        assert_eq!(
            *member.released.lock().expect("test lock"),
            ["tok-7"],
            "the grant nobody holds a guard of was released, before the next turn"
        );
    }

    fn names_in_use(turns: &Arc<Turns>) -> Vec<String> {
        let mut names: Vec<String> = turns.inner().names.keys().cloned().collect();
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
        releasing.set_releasing();
        let mut next = Box::pin(Turn::take_unless_held(&turns, "d"));
        assert!(futures::poll!(&mut next).is_pending(), "a try waits for a release on its way");
        drop(releasing);
        assert!(next.await.is_some(), "and takes the name once the release was answered");
        assert!(names_in_use(&turns).is_empty(), "nothing left once every turn is gone");

        // A try waiting for a release never waits for a guard that takes the name first.
        let releasing = Turn::take_unless_held(&turns, "e").await.expect("free");
        releasing.set_releasing();
        let mut forever = Box::pin(Turn::take(&turns, "e"));
        assert!(futures::poll!(&mut forever).is_pending(), "queued behind the releasing turn");
        let mut attempt = Box::pin(Turn::take_unless_held(&turns, "e"));
        assert!(futures::poll!(&mut attempt).is_pending(), "the try waits for the release");
        drop(releasing);
        let holder = forever.await;
        assert!(
            attempt.await.is_none(),
            "once a guard holds the name, the try says None instead of waiting for it"
        );
        drop(holder);
        assert!(names_in_use(&turns).is_empty(), "nothing left once every turn is gone");
    }

    #[test]
    fn a_release_never_answered_is_remembered_for_the_name_until_one_is() {
        let turns = Arc::new(Turns::default());
        let (turn, _) = Turn::join(&turns, "a");
        turn.note_unreleased("seq-1");
        drop(turn);
        assert!(names_in_use(&turns).is_empty(), "the name's entry goes with its last turn");
        let (turn, _) = Turn::join(&turns, "a");
        assert_eq!(turn.unreleased().as_deref(), Some("seq-1"), "the unanswered release outlives the entry");
        turn.settled("seq-0");
        assert_eq!(turn.unreleased().as_deref(), Some("seq-1"), "another sequencer's answer settles nothing");
        turn.settled("seq-1");
        assert_eq!(turn.unreleased(), None, "answered: forgotten");
    }
}
