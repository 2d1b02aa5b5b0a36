//! Sessions: the calls of the Session service, and [`Session`], which keeps one alive in a
//! background task and says how sure it can be that the session still lives (Chubby's states).
//!
//! How sure: every keepalive the leader acknowledges grants a lease, counted from when the
//! keepalive was sent; the cluster does not expire the session before it runs out. The client
//! keeps that lease on its own clock ([`Session::lease_left`]), and:
//! - [`SessionState::Safe`]: the last keepalive was acknowledged, or the lease has more than a
//!   third of the TTL left.
//! - [`SessionState::Jeopardy`]: keepalives are failing and less than a third of the TTL is
//!   left. Once [`Session::lease_left`] is zero, the cluster may have expired the session:
//!   whoever acts on what the session owns (a lock) must stop. The task keeps trying for the
//!   grace period ([`SessionOptions::grace`]) past the lease; an answer within it makes it
//!   `Safe` again (the cluster kept the session: it was unreachable too, say).
//! - [`SessionState::Expired`]: the cluster said the session is gone, or the grace period
//!   passed without an answer, or it was closed or dropped. Final.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use latch_proto::v1::session_client::SessionClient;
use latch_proto::v1::{
    CloseSessionRequest, CreateSessionRequest, GetSessionRequest, KeepAliveRequest, KeepAliveResponse,
    ListSessionsRequest, SessionInfo,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::lock::Turns;
use crate::{Client, Error};

/// How sure the client can be that its session lives (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Safe,
    Jeopardy,
    Expired,
}

/// How a [`Session`] is made.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// The session's TTL: within the server's bounds (1 s … 1 h by default).
    pub ttl: Duration,
    /// A name for people, shown by `latch session list`.
    pub name: String,
    /// How long past the lease the task keeps trying before it gives the session up as
    /// `Expired`. Default: the TTL.
    pub grace: Option<Duration>,
}

impl SessionOptions {
    pub fn new(ttl: Duration) -> SessionOptions {
        SessionOptions { ttl, name: String::new(), grace: None }
    }

    pub fn name(mut self, name: impl Into<String>) -> SessionOptions {
        self.name = name.into();
        self
    }

    pub fn grace(mut self, grace: Duration) -> SessionOptions {
        self.grace = Some(grace);
        self
    }
}

/// A session kept alive by a background task until it is closed, dropped or expires.
///
/// Dropping it stops the keepalives and closes the session on the cluster, best effort (in a
/// task of its own, when a tokio runtime is there to run it); [`close`](Session::close) closes
/// it and says whether that worked.
#[derive(Debug)]
pub struct Session {
    id: String,
    ttl: Duration,
    client: Client,
    shared: Arc<Shared>,
    state: watch::Receiver<SessionState>,
    /// The state's publisher, shared with the keepalive task: dropping or closing the session
    /// publishes `Expired` through it, which the task never moves from ([`publish`]).
    publisher: Arc<watch::Sender<SessionState>>,
    task: Option<JoinHandle<()>>,
    /// Its lock guards, one per name at a time (see the `lock` module).
    turns: Arc<Turns>,
}

#[derive(Debug)]
struct Shared {
    /// When the last granted lease runs out.
    lease_end: Mutex<Instant>,
}

impl Shared {
    fn lease_end(&self) -> Instant {
        *self.lease_end.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_lease_end(&self, end: Instant) {
        *self.lease_end.lock().unwrap_or_else(PoisonError::into_inner) = end;
    }
}

impl Client {
    /// Creates a session and keeps it alive in the background (see [`Session`]).
    pub async fn session(&self, options: SessionOptions) -> Result<Session, Error> {
        let sent = Instant::now();
        let created = self.create_session(options.ttl, &options.name).await?;
        // A TTL a member could not grant (negative, or past any lease) is no lease at all.
        let ttl = Duration::from_millis(u64::try_from(created.1).unwrap_or(0).min(MAX_TTL_MS));
        let shared = Arc::new(Shared { lease_end: Mutex::new(sent + ttl) });
        let (tx, state) = watch::channel(SessionState::Safe);
        let publisher = Arc::new(tx);
        let grace = options.grace.unwrap_or(ttl);
        let task = tokio::spawn(keep_alive_loop(
            self.clone(),
            created.0.clone(),
            (sent, ttl),
            grace,
            shared.clone(),
            publisher.clone(),
        ));
        Ok(Session {
            id: created.0,
            ttl,
            client: self.clone(),
            shared,
            state,
            publisher,
            task: Some(task),
            turns: Arc::default(),
        })
    }

    /// Creates a session with this TTL; returns its id and the TTL granted (milliseconds). It
    /// lives only as long as something keeps it alive ([`keep_alive`](Client::keep_alive)).
    pub async fn create_session(&self, ttl: Duration, name: &str) -> Result<(String, i64), Error> {
        let request = CreateSessionRequest {
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            name: name.to_string(),
            request_id: uuid::Uuid::now_v7().to_string(),
        };
        let r = self
            .write("CreateSession", |channel| {
                let request = request.clone();
                async move { SessionClient::new(channel).create(request).await }
            })
            .await?;
        Ok((r.id, r.ttl_ms))
    }

    /// One keepalive of session `id` that waits on no member for long: when none answered
    /// within `hedge_after`, a second one goes out beside it, starting at the next member and
    /// giving each member it tries at most `hedge_after` (a follower's hint may name the very
    /// member that stopped answering). The first grant counts; if neither grants, a NOT_FOUND
    /// (the session may be gone) before any other failure. A member that stopped answering
    /// (frozen, cut off) then costs a keepalive about `hedge_after`, not the request timeout,
    /// while a link slower than `hedge_after` still renews through the first. When the second
    /// is granted first, the first runs on in the background on its own member only (until
    /// that member answers or the request timeout; one such attempt per client at a time,
    /// others are dropped): a member that was only slow answers it and is taken for the leader
    /// again, instead of being passed over for a while (10 s) as if it had stopped answering.
    /// It never moves on to another member, so a caller that stops calling this has its session
    /// renewed by nothing of it after one request timeout.
    pub async fn keep_alive_hedged(
        &self,
        id: &str,
        hedge_after: Duration,
    ) -> Result<KeepAliveResponse, Error> {
        self.keep_alive_hedged_until(id, hedge_after, std::future::pending()).await
    }

    /// [`keep_alive_hedged`](Client::keep_alive_hedged), whose first attempt, left to run on
    /// in the background, ends at the latest when `ended` does (a [`Session`]'s end: a
    /// session closed or dropped is renewed by nothing of it afterwards).
    async fn keep_alive_hedged_until(
        &self,
        id: &str,
        hedge_after: Duration,
        ended: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<KeepAliveResponse, Error> {
        use futures::future::{select, Either};
        let (start, start_addr) = self.write_start_at();
        // Set once the second is granted: the first, left in the background, stays where it is.
        let granted = Arc::new(AtomicBool::new(false));
        let mut first = {
            let (client, id, timeout) = (self.clone(), id.to_owned(), self.options().request_timeout);
            let granted = granted.clone();
            Box::pin(async move { client.keep_alive_within(&id, start, timeout, Some(&granted)).await })
        };
        tokio::select! {
            answer = &mut first => return answer,
            () = tokio::time::sleep(hedge_after) => {}
        }
        // After the member the first went to, whatever other calls learnt meanwhile: hedges of
        // several sessions at once all leave the member that stopped answering.
        let next = self.after_unanswered(start, &start_addr);
        let second = Box::pin(self.keep_alive_within(id, next, hedge_after, None));
        // The second is polled first: once its grant is seen, the first is not polled again
        // before `granted` is set (in that very poll it could otherwise move on).
        let (failed, other) = match select(second, first).await {
            Either::Right((Ok(ack), _)) => return Ok(ack),
            Either::Left((Ok(ack), first)) => {
                granted.store(true, Ordering::Release);
                // Its answer, whatever it is, only tells the client about its member.
                if let Some(probe) = self.probe() {
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = first => {}
                            () = ended => {}
                        }
                        drop(probe);
                    });
                }
                return Ok(ack);
            }
            Either::Right((Err(e), second)) => (e, Either::Left(second)),
            Either::Left((Err(e), first)) => (e, Either::Right(first)),
        };
        let last = match other {
            Either::Left(second) => second.await,
            Either::Right(first) => first.await,
        };
        match last {
            Ok(ack) => Ok(ack),
            Err(e) if failed.code() == Code::NotFound && e.code() != Code::NotFound => Err(failed),
            Err(e) => Err(e),
        }
    }

    /// One keepalive of session `id`, sent to the leader (found through the members).
    pub async fn keep_alive(&self, id: &str) -> Result<KeepAliveResponse, Error> {
        self.keep_alive_within(id, self.write_start(), self.options().request_timeout, None).await
    }

    /// One keepalive starting at endpoint `from`, each member it tries given at most `cap` (and
    /// the request timeout); once `stay` (when given) is set, it tries no other member after
    /// the one it is on (it ends with that member's failure).
    async fn keep_alive_within(
        &self,
        id: &str,
        from: usize,
        cap: Duration,
        stay: Option<&AtomicBool>,
    ) -> Result<KeepAliveResponse, Error> {
        self.write_capped("KeepAlive", from, cap, stay, |channel| {
            let request = KeepAliveRequest { id: id.to_string() };
            async move {
                let opened = SessionClient::new(channel)
                    .keep_alive(futures::stream::once(async move { request }))
                    .await?;
                // Its metadata names the leader when a follower answered.
                let metadata = opened.metadata().clone();
                let mut stream = opened.into_inner();
                match stream.message().await? {
                    Some(answer) => Ok(tonic::Response::from_parts(metadata, answer, Default::default())),
                    None => Err(Status::unavailable("the keepalive stream ended without an answer")),
                }
            }
        })
        .await
    }

    /// Closes session `id`, deleting what it owns; returns how many keys went with it.
    pub async fn close_session(&self, id: &str) -> Result<i64, Error> {
        let request =
            CloseSessionRequest { id: id.to_string(), request_id: uuid::Uuid::now_v7().to_string() };
        let r = self
            .write("CloseSession", |channel| {
                let request = request.clone();
                async move { SessionClient::new(channel).close(request).await }
            })
            .await?;
        Ok(r.keys_deleted)
    }

    /// Session `id` as the answering member sees it; NOT_FOUND once it ended.
    pub async fn session_info(&self, id: &str) -> Result<SessionInfo, Error> {
        let request = GetSessionRequest { id: id.to_string() };
        let r = self
            .call("GetSession", |channel| {
                let request = request.clone();
                async move { SessionClient::new(channel).get(request).await }
            })
            .await?;
        r.session.ok_or_else(|| Error::from(Status::internal("the answer carries no session")))
    }

    /// Every live session, in id order, read a page at a time (each page one member's answer
    /// at its own revision: a session created or ended while they are read may be missed or
    /// shown, as with any paged read).
    pub async fn sessions(&self) -> Result<Vec<SessionInfo>, Error> {
        let page = |start_after: String| async move {
            let request = ListSessionsRequest { start_after, limit: 0 };
            let r = self
                .call("ListSessions", |channel| {
                    let request = request.clone();
                    // A page is as large as the member's --max-response-bytes allows.
                    async move {
                        SessionClient::new(channel).max_decoding_message_size(usize::MAX).list(request).await
                    }
                })
                .await?;
            Ok((r.sessions, r.more))
        };
        crate::client::every_page(page, |s: &SessionInfo| s.id.clone()).await
    }
}

impl Session {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The client the session was made with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn turns(&self) -> &Arc<Turns> {
        &self.turns
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn state(&self) -> SessionState {
        *self.state.borrow()
    }

    /// A receiver of every change of [`state`](Session::state).
    pub fn watch(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }

    /// When the lease the cluster last granted runs out, on this client's clock.
    pub fn lease_end(&self) -> Instant {
        self.shared.lease_end()
    }

    /// What is left of the lease the cluster last granted, on this client's clock.
    pub fn lease_left(&self) -> Duration {
        self.shared.lease_end().saturating_duration_since(Instant::now())
    }

    /// Resolves once the session is `Expired` (or closed).
    pub async fn done(&self) {
        let mut state = self.state.clone();
        let _ = state.wait_for(|s| *s == SessionState::Expired).await;
    }

    /// Stops the keepalives and closes the session on the cluster. Its state is `Expired`
    /// from here on (whatever the close answers): nothing it owned may be acted on.
    pub async fn close(mut self) -> Result<i64, Error> {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        publish(&self.publisher, SessionState::Expired);
        self.client.close_session(&self.id).await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else { return };
        task.abort();
        // Whoever watches the state (a receiver from `watch`) learns the session is over.
        publish(&self.publisher, SessionState::Expired);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (client, id) = (self.client.clone(), self.id.clone());
            runtime.spawn(async move {
                if let Err(e) = client.close_session(&id).await {
                    tracing::debug!(session = %id, error = %e, "closing a dropped session failed");
                }
            });
        }
    }
}

/// The longest TTL the client takes a member's word for (a day, past any member's
/// `--session-ttl-max`): a larger answer is not a lease it could keep.
const MAX_TTL_MS: u64 = 24 * 3600 * 1000;

/// Moves the published state to `to`, unless it is `Expired` already: that state is final,
/// so a keepalive task still running after its session was dropped cannot move it back.
fn publish(state: &watch::Sender<SessionState>, to: SessionState) {
    state.send_if_modified(|s| *s != SessionState::Expired && std::mem::replace(s, to) != to);
}

/// Keeps session `id` (created at `created`, when its create was sent, with `ttl`) alive
/// whenever half its TTL is left, retrying sooner when a keepalive fails, and moves the state
/// as the module doc says.
async fn keep_alive_loop(
    client: Client,
    id: String,
    (created, ttl): (Instant, Duration),
    grace: Duration,
    shared: Arc<Shared>,
    state: Arc<watch::Sender<SessionState>>,
) {
    let retry = (ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
    // After a sixth of the TTL without an answer, the next member is asked too: a member that
    // stopped answering (frozen, cut off) costs a keepalive that much, not the whole lease.
    let hedge_after = (ttl / 6).max(Duration::from_millis(100));
    // The lease counts from when the create was sent, and so does the first keepalive.
    let mut next = created + ttl / 2;
    let jeopardy = |state: &watch::Sender<SessionState>| publish(state, SessionState::Jeopardy);
    loop {
        tokio::time::sleep_until(next).await;
        let sent = Instant::now();
        let attempt = keep_alive_once(&client, &id, hedge_after, &state);
        tokio::pin!(attempt);
        // Waits for the answer — the keepalive's, and the read that settles a NOT_FOUND —
        // while the lease may run low (Jeopardy) or, with the grace period, out (Expired):
        // nothing the cluster takes long to answer can hold the state at Safe past the lease.
        let answer = loop {
            let lease_end = shared.lease_end();
            let low = lease_end.checked_sub(ttl / 3).unwrap_or(lease_end);
            tokio::select! {
                answer = &mut attempt => break Some(answer),
                _ = tokio::time::sleep_until(low), if *state.borrow() == SessionState::Safe => jeopardy(&state),
                _ = tokio::time::sleep_until(lease_end + grace) => break None,
            }
        };
        match answer {
            Some(KeepAlive::Granted(ack)) => {
                let granted =
                    Duration::from_millis(u64::try_from(ack.granted_ms).unwrap_or(0).min(MAX_TTL_MS));
                shared.set_lease_end(sent + granted);
                publish(&state, SessionState::Safe);
                // When half the TTL is left of the grant: the leader then renews the lease in
                // the log and grants it whole again, so about half the TTL always stays in hand
                // to ride out a leader change. Never sooner than a retry (a grant of nothing).
                next = (sent + granted.saturating_sub(ttl / 2).max(granted / 4)).max(Instant::now() + retry);
            }
            Some(KeepAlive::Gone) => {
                tracing::debug!(session = %id, "the cluster says the session is gone");
                break;
            }
            None => {
                tracing::debug!(session = %id, "no keepalive answered within the lease and the grace period");
                break;
            }
            Some(KeepAlive::Failed(e)) => {
                let now = Instant::now();
                if now >= shared.lease_end() + grace {
                    tracing::debug!(session = %id, error = %e, "keepalives failed past the lease and the grace period");
                    break;
                }
                if shared.lease_end().saturating_duration_since(now) < ttl / 3 {
                    jeopardy(&state);
                }
                next = now + retry;
            }
        }
    }
    publish(&state, SessionState::Expired);
}

/// What one keepalive came to.
enum KeepAlive {
    Granted(KeepAliveResponse),
    /// A linearizable read says the session no longer exists.
    Gone,
    /// No grant: retry (the failure, or a NOT_FOUND a read did not confirm).
    Failed(Error),
}

/// One keepalive of the session whose state `state` publishes: nothing of it runs on past the
/// session's end.
async fn keep_alive_once(
    client: &Client,
    id: &str,
    hedge_after: Duration,
    state: &watch::Sender<SessionState>,
) -> KeepAlive {
    let mut states = state.subscribe();
    let ended = async move {
        let _ = states.wait_for(|s| *s == SessionState::Expired).await;
    };
    match client.keep_alive_hedged_until(id, hedge_after, ended).await {
        Ok(ack) => KeepAlive::Granted(ack),
        // A deposed leader that has not heard of the session yet says so too: only a
        // linearizable read settles it.
        Err(e) if e.code() == Code::NotFound => match client.session_info(id).await {
            Err(read) if read.code() == Code::NotFound => KeepAlive::Gone,
            _ => KeepAlive::Failed(e),
        },
        Err(e) => KeepAlive::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use futures::Stream;
    use latch_proto::v1::session_server::{Session as SessionApi, SessionServer};
    use latch_proto::v1::{
        CloseSessionResponse, CreateSessionResponse, GetSessionResponse, ListSessionsResponse,
    };
    use tonic::transport::server::TcpIncoming;
    use tonic::{Request, Response, Streaming};

    use super::*;

    type Acks = Pin<Box<dyn Stream<Item = Result<KeepAliveResponse, Status>> + Send>>;

    /// How a scripted member answers keepalives.
    enum Keepalives {
        /// NOT_FOUND, as a deposed leader that never heard of the session does; and it never
        /// answers the read that would settle it.
        NotFound,
        /// Never: a member SIGSTOPped, or cut off.
        Frozen,
        /// A grant of the whole TTL, after this long.
        After(Duration),
        /// Until `until`, UNAVAILABLE naming `leader` as the leader (a follower that has not
        /// noticed its leader stopped); a grant after.
        Hinting { leader: String, until: Instant },
        /// Until `until` (set by the test), UNAVAILABLE naming no leader (an election under
        /// way); a grant after.
        NoLeader { until: Arc<Mutex<Instant>> },
    }

    /// A member that creates sessions with a 1 s TTL and answers keepalives as told (the
    /// second field counts the keepalive calls it was sent, the third those it holds
    /// unanswered now).
    struct Member(Keepalives, Arc<std::sync::atomic::AtomicUsize>, Arc<std::sync::atomic::AtomicUsize>);

    fn member(keepalives: Keepalives) -> Member {
        Member(keepalives, Arc::default(), Arc::default())
    }

    /// Counts a call held in `n` while it lives (the server drops a call its client cancelled).
    struct Held(Arc<std::sync::atomic::AtomicUsize>);

    impl Held {
        fn new(n: &Arc<std::sync::atomic::AtomicUsize>) -> Held {
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Held(n.clone())
        }
    }

    impl Drop for Held {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// How many keepalive calls the member counting into `n` was sent.
    fn asked(n: &Arc<std::sync::atomic::AtomicUsize>) -> usize {
        n.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the attempt `client` left running in the background (a hedged keepalive's first)
    /// ended within 8 s: its turn to probe is free again.
    async fn background_ended(client: &Client) -> bool {
        let free = async {
            while client.probe().is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(8), free).await.is_ok()
    }

    /// Waits up to 2 s for the member counting its held calls into `held` to hold `n`; the
    /// number it holds at the end.
    async fn holds(held: &Arc<std::sync::atomic::AtomicUsize>, n: usize) -> usize {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while asked(held) != n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        asked(held)
    }

    #[tonic::async_trait]
    impl SessionApi for Member {
        type KeepAliveStream = Acks;

        async fn create(
            &self,
            _: Request<CreateSessionRequest>,
        ) -> Result<Response<CreateSessionResponse>, Status> {
            Ok(Response::new(CreateSessionResponse { header: None, id: "s1".into(), ttl_ms: 1000 }))
        }

        async fn keep_alive(
            &self,
            _: Request<Streaming<KeepAliveRequest>>,
        ) -> Result<Response<Acks>, Status> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _held = Held::new(&self.2);
            match self.0 {
                Keepalives::NotFound => return Err(Status::not_found("session s1 not found")),
                Keepalives::Frozen => std::future::pending::<()>().await,
                Keepalives::After(delay) => tokio::time::sleep(delay).await,
                Keepalives::Hinting { ref leader, until } if Instant::now() < until => {
                    let mut status = Status::unavailable("not the leader");
                    let hint = leader.parse().map_err(|_| Status::internal("the hint is ascii"))?;
                    status.metadata_mut().insert(crate::LEADER_ADDR_METADATA, hint);
                    return Err(status);
                }
                Keepalives::Hinting { .. } => {}
                Keepalives::NoLeader { ref until }
                    if Instant::now() < *until.lock().unwrap_or_else(PoisonError::into_inner) =>
                {
                    return Err(Status::unavailable("no leader"));
                }
                Keepalives::NoLeader { .. } => {}
            }
            let ack =
                KeepAliveResponse { id: "s1".into(), ttl_ms: 1000, granted_ms: 1000, ..Default::default() };
            Ok(Response::new(Box::pin(futures::stream::iter([Ok(ack)]))))
        }

        async fn close(
            &self,
            _: Request<CloseSessionRequest>,
        ) -> Result<Response<CloseSessionResponse>, Status> {
            Ok(Response::new(CloseSessionResponse::default()))
        }

        async fn get(&self, _: Request<GetSessionRequest>) -> Result<Response<GetSessionResponse>, Status> {
            match self.0 {
                Keepalives::NotFound => std::future::pending().await,
                _ => Err(Status::unimplemented("get")),
            }
        }

        async fn list(
            &self,
            _: Request<ListSessionsRequest>,
        ) -> Result<Response<ListSessionsResponse>, Status> {
            Err(Status::unimplemented("list"))
        }
    }

    async fn serve(member: impl SessionApi) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("bound address").to_string();
        let incoming = TcpIncoming::from_listener(listener, true, None).expect("incoming");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(SessionServer::new(member))
                .serve_with_incoming(incoming),
        );
        addr
    }

    /// Creates a session of a 1 s TTL (and a 200 ms grace) through `endpoints`, the first
    /// preferred, and checks that it lives through three TTLs; returns it, and its first lease's
    /// end.
    async fn lives_through_three_ttls(endpoints: [String; 2]) -> (Session, Instant) {
        let client = Client::connect(endpoints).await.expect("valid endpoints");
        let session = client
            .session(SessionOptions::new(Duration::from_secs(1)).grace(Duration::from_millis(200)))
            .await
            .expect("the first member creates the session");
        let first_lease_end = session.lease_end();
        let ended = tokio::time::timeout(Duration::from_secs(3), session.done()).await;
        assert!(ended.is_err(), "the session lives through three TTLs (state: {:?})", session.state());
        (session, first_lease_end)
    }

    /// The member a session's keepalives go to stops answering: within a sixth of the TTL the
    /// next keepalive goes to another member too, not after the request timeout (5 s, five
    /// leases of 1 s), and the session lives on.
    #[tokio::test]
    async fn a_keepalive_to_a_member_that_stopped_answering_moves_on_within_the_lease() {
        let frozen = serve(member(Keepalives::Frozen)).await;
        let healthy = serve(member(Keepalives::After(Duration::ZERO))).await;
        let (session, first_lease_end) = lives_through_three_ttls([frozen, healthy]).await;
        assert!(session.lease_end() > first_lease_end + Duration::from_secs(1), "its lease was renewed");
    }

    /// The leader stops answering, and the other member, for a while yet, sends keepalives back
    /// to it (its hint): the keepalive sent beside the stuck one gives the frozen member only a
    /// sixth of the TTL each time, and is granted once the other member knows better.
    #[tokio::test]
    async fn a_hedged_keepalive_sent_back_to_the_frozen_leader_by_a_hint_moves_on_again() {
        let frozen = serve(member(Keepalives::Frozen)).await;
        let until = Instant::now() + Duration::from_millis(700);
        let follower = serve(member(Keepalives::Hinting { leader: frozen.clone(), until })).await;
        lives_through_three_ttls([frozen, follower]).await;
    }

    /// The member that keepalives went to, the first endpoint (which created the session, so the
    /// client takes it for the leader), stops answering: the hedge goes to the next member, not
    /// back to it (which would cost another sixth of the TTL, the renewal landing in Jeopardy).
    #[tokio::test]
    async fn a_hedged_keepalive_starts_at_the_member_after_a_leader_that_stopped_answering() {
        let frozen = member(Keepalives::Frozen);
        let live = member(Keepalives::After(Duration::ZERO));
        let (at_frozen, at_live) = (frozen.1.clone(), live.1.clone());
        let endpoints = [serve(frozen).await, serve(live).await];
        let client = Client::connect(endpoints).await.expect("valid endpoints");
        let (id, _) = client.create_session(Duration::from_secs(1), "").await.expect("a session");

        let hedged = client.keep_alive_hedged(&id, Duration::from_millis(200));
        let ack = tokio::time::timeout(Duration::from_secs(4), hedged)
            .await
            .expect("the hedge renews within the first attempt's timeout")
            .expect("the live member grants");

        assert_eq!(ack.granted_ms, 1000);
        assert_eq!(
            asked(&at_frozen),
            1,
            "the member that stopped answering gets the first keepalive only; the hedge starts after it"
        );
        assert_eq!(asked(&at_live), 1, "the hedge goes to the next member");
    }

    /// Three sessions' keepalives hedge at once: every hedge starts after the member the first
    /// attempts went to, none of them back at it (moving a shared "next member" once per hedge
    /// sent the third hedge to the member that stopped answering).
    #[tokio::test]
    async fn hedges_of_several_sessions_at_once_all_start_after_the_member_that_stopped_answering() {
        let frozen = member(Keepalives::Frozen);
        let (b, c) = (member(Keepalives::After(Duration::ZERO)), member(Keepalives::After(Duration::ZERO)));
        let (at_frozen, at_b, at_c) = (frozen.1.clone(), b.1.clone(), c.1.clone());
        let endpoints = [serve(frozen).await, serve(b).await, serve(c).await];
        let client = Client::connect(endpoints).await.expect("valid endpoints");
        let (id, _) = client.create_session(Duration::from_secs(1), "").await.expect("a session");

        let hedged = futures::future::join_all(
            (0..3).map(|_| client.keep_alive_hedged(&id, Duration::from_millis(200))),
        );
        let acks = tokio::time::timeout(Duration::from_secs(4), hedged)
            .await
            .expect("the hedges renew within the first attempts' timeout");
        assert!(acks.iter().all(Result::is_ok), "every hedge is granted: {acks:?}");
        assert_eq!(
            asked(&at_frozen),
            3,
            "the member that stopped answering gets the three first attempts only"
        );
        assert_eq!((asked(&at_b), asked(&at_c)), (3, 0), "every hedge goes to the member after it");
    }

    /// The leader only answers slowly (after 300 ms, the hedge going out after 100 ms): the hedge
    /// to the next member wins, and the first attempt, left to finish, makes the leader the
    /// member writes start at again, instead of it being passed over for 10 s as if it had
    /// stopped answering.
    #[tokio::test]
    async fn a_leader_that_was_only_slow_is_where_writes_start_again_once_it_answers() {
        let slow = member(Keepalives::After(Duration::from_millis(300)));
        let quick = member(Keepalives::After(Duration::ZERO));
        let at_slow = slow.1.clone();
        let endpoints = [serve(slow).await, serve(quick).await];
        let client = Client::connect(endpoints).await.expect("valid endpoints");
        let (id, _) = client.create_session(Duration::from_secs(10), "").await.expect("a session");
        assert_eq!(client.write_start(), 0, "the member that created the session is taken for the leader");

        client.keep_alive_hedged(&id, Duration::from_millis(100)).await.expect("the hedge is granted");
        assert_eq!(client.write_start(), 1, "the hedge's member answered first");
        let back = tokio::time::timeout(Duration::from_secs(2), async {
            while client.write_start() != 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            back.is_ok(),
            "writes should start at the slow leader again once its keepalive is answered (300 ms), \
             not only after it is no longer distrusted (10 s); the slow member was asked {} times",
            asked(&at_slow)
        );
    }

    /// Three sessions' keepalives hedge around a frozen leader at once: only one of their first
    /// attempts runs on in the background (a frozen leader hedged around by every session of a
    /// client holds one call of it, not one per keepalive for the request timeout).
    #[tokio::test]
    async fn hedges_around_a_frozen_leader_leave_one_first_attempt_running_per_client() {
        let frozen = member(Keepalives::Frozen);
        let live = member(Keepalives::After(Duration::ZERO));
        let held = frozen.2.clone();
        let endpoints = [serve(frozen).await, serve(live).await];
        let client = Client::connect(endpoints).await.expect("valid endpoints");
        let (id, _) = client.create_session(Duration::from_secs(1), "").await.expect("a session");

        let hedged = futures::future::join_all(
            (0..3).map(|_| client.keep_alive_hedged(&id, Duration::from_millis(200))),
        );
        let acks = tokio::time::timeout(Duration::from_secs(4), hedged).await.expect("the hedges renew");
        assert!(acks.iter().all(Result::is_ok), "every hedge is granted: {acks:?}");
        assert_eq!(
            holds(&held, 1).await,
            1,
            "the frozen member should hold one first attempt (the one left to run on)"
        );
    }

    /// A session's keepalive hedged around a frozen leader leaves its first attempt running on;
    /// closing the session ends it at once (it could otherwise renew the closed session on a
    /// leader that wakes, for as long as the request timeout, 5 s).
    #[tokio::test]
    async fn a_closed_sessions_keepalive_left_running_in_the_background_ends_with_it() {
        let frozen = member(Keepalives::Frozen);
        let live = member(Keepalives::After(Duration::ZERO));
        let held = frozen.2.clone();
        let endpoints = [serve(frozen).await, serve(live).await];
        let client = Client::connect(endpoints).await.expect("valid endpoints");
        let session = client.session(SessionOptions::new(Duration::from_secs(1))).await.expect("a session");
        let first_lease_end = session.lease_end();
        let renewed = tokio::time::timeout(Duration::from_secs(2), async {
            while session.lease_end() == first_lease_end {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        assert!(renewed.await.is_ok(), "the hedge around the frozen leader should renew the session");
        assert_eq!(holds(&held, 1).await, 1, "the frozen leader should hold the session's first attempt");
        session.close().await.expect("the live member closes the session");
        assert_eq!(holds(&held, 0).await, 0, "the closed session's first attempt should end with it");
    }

    /// A keepalive hedged around a frozen leader, called directly (no [`Session`] ends it): the
    /// first attempt, left to run on, gives up on the frozen member at the request timeout and
    /// does not renew the session on another (its caller may have stopped keeping it alive).
    #[tokio::test]
    async fn a_keepalive_left_running_in_the_background_does_not_move_on_to_another_member() {
        let frozen = member(Keepalives::Frozen);
        let live = member(Keepalives::After(Duration::ZERO));
        let at_live = live.1.clone();
        let endpoints = [serve(frozen).await, serve(live).await];
        let frozen_addr = endpoints[0].clone();
        let options =
            crate::ClientOptions { request_timeout: Duration::from_millis(500), ..Default::default() };
        let client = Client::connect_with(endpoints, options).await.expect("valid endpoints");
        let (id, _) = client.create_session(Duration::from_secs(1), "").await.expect("a session");

        client.keep_alive_hedged(&id, Duration::from_millis(100)).await.expect("the hedge is granted");
        assert_eq!(asked(&at_live), 1, "the hedge renewed on the live member");
        assert!(
            background_ended(&client).await,
            "the first attempt should end at the request timeout (500 ms)"
        );
        assert_eq!(
            asked(&at_live),
            1,
            "the first attempt, once its hedge was granted, should not retry on the live member"
        );
        let failure = client.last_failure().unwrap_or_default();
        assert!(
            failure.contains(&frozen_addr) && failure.contains("no answer within"),
            "the client's last failure is the frozen member's timeout, nothing made up: {failure}"
        );
    }

    /// A receiver of a session's state learns that the session is over when the session is
    /// dropped: it held Safe forever before.
    #[tokio::test]
    async fn a_dropped_session_publishes_expired_to_whoever_watches_its_state() {
        let addr = serve(member(Keepalives::After(Duration::ZERO))).await;
        let client = Client::connect([addr]).await.expect("valid endpoint");
        let session = client.session(SessionOptions::new(Duration::from_secs(10))).await.expect("created");
        let mut states = session.watch();
        assert_eq!(*states.borrow(), SessionState::Safe);
        drop(session);
        let seen = tokio::time::timeout(Duration::from_secs(1), async {
            states.wait_for(|s| *s == SessionState::Expired).await.map(|s| *s)
        })
        .await;
        assert!(matches!(seen, Ok(Ok(SessionState::Expired))), "Expired once dropped, got {seen:?}");
        assert_eq!(*states.borrow(), SessionState::Expired, "and it stays so");
    }

    /// Both members answer "no leader" for 375 ms, the hedge going out after 100 ms: the hedge is
    /// granted while the first attempt sleeps its backoff between two members, and the first,
    /// once awake, goes to neither again (it would renew the session after its caller was
    /// answered).
    #[tokio::test]
    async fn a_first_attempt_asleep_when_its_hedge_is_granted_does_not_move_on() {
        let until = Arc::new(Mutex::new(Instant::now()));
        let a = member(Keepalives::NoLeader { until: until.clone() });
        let b = member(Keepalives::NoLeader { until: until.clone() });
        let (at_a, at_b) = (a.1.clone(), b.1.clone());
        let endpoints = [serve(a).await, serve(b).await];
        let client = Client::connect(endpoints).await.expect("valid endpoints");
        let (id, _) = client.create_session(Duration::from_secs(1), "").await.expect("a session");
        *until.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now() + Duration::from_millis(375);
        client.keep_alive_hedged(&id, Duration::from_millis(100)).await.expect("the hedge is granted");
        let at_grant = (asked(&at_a), asked(&at_b));
        assert!(at_grant.0 + at_grant.1 > 3, "both attempts met \"no leader\" and backed off: {at_grant:?}");
        assert!(background_ended(&client).await, "the first attempt should end");
        assert_eq!(
            (asked(&at_a), asked(&at_b)),
            at_grant,
            "the first attempt, asleep when its hedge was granted, should send no keepalive after"
        );
    }

    /// Every member answers keepalives, slower than the sixth of the TTL after which another is
    /// asked too (300 ms, TTL 1 s): the first answer still counts, and the session lives on.
    #[tokio::test]
    async fn keepalives_slower_than_the_hedge_still_keep_the_session() {
        let slow = Duration::from_millis(300);
        let a = serve(member(Keepalives::After(slow))).await;
        let b = serve(member(Keepalives::After(slow))).await;
        lives_through_three_ttls([a, b]).await;
    }

    #[tokio::test]
    async fn a_keepalive_stuck_settling_not_found_still_moves_the_state_as_the_lease_runs_out() {
        let addr = serve(member(Keepalives::NotFound)).await;
        let client = Client::connect([addr]).await.expect("valid endpoint");
        let session = client
            .session(SessionOptions::new(Duration::from_secs(1)).grace(Duration::from_millis(200)))
            .await
            .expect("the member creates the session");
        let lease_end = session.lease_end();
        let mut states = session.watch();

        // The read that would settle the NOT_FOUND never comes back (the client would wait its
        // whole retry budget, 10 s): the lease must still be watched meanwhile.
        let jeopardy = tokio::time::timeout_at(
            lease_end,
            // The borrow it returns is dropped at once: it holds the state's lock.
            async { states.wait_for(|s| *s == SessionState::Jeopardy).await.map(|_| ()) },
        )
        .await;
        assert!(
            jeopardy.is_ok(),
            "Jeopardy before the lease ran out (a third of the TTL before it), not Safe until the read ends"
        );
        let expired = tokio::time::timeout_at(lease_end + Duration::from_secs(2), session.done()).await;
        assert!(
            expired.is_ok(),
            "Expired once the lease and the 200 ms grace are over, whatever the stuck read (state: {:?})",
            session.state()
        );
    }
}
