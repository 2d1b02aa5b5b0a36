//! The Lock service: Acquire, Release, Withdraw, CheckSequencer, DescribeLock, ListLocks (see
//! `fsm::locks` for the replicated rules, `core::lock_delays` for the lock-delay's timer). The
//! waiting half of Acquire lives here and is shared with Election.Campaign: a queued request
//! waits on this member for its grant (`node::LockHub`), and gives up its place in the queue
//! when its time is up or its caller goes away.

use std::time::Duration;

use latch_proto::internal::{
    self as log, command::Body, lock_result::Status as LockStatus, outcome, Acquire, CancelWait, LockSpace,
    Release,
};
use latch_proto::v1::lock_server::{Lock, LockServer};
use latch_proto::v1::*;
use latch_proto::DEFAULT_LOCK_DELAY_MS;
use redb::ReadableDatabase as _;
use tonic::{Request, Response, Status};

use super::kv::{check_request_id, MAX_REQUEST_ID_BYTES};
use super::{ApiError, Context};
use crate::core::RequestError;
use crate::fsm::locks::{self, RequestState, MAX_LOCK_DELAY_MS};
use crate::fsm::sessions;

/// Most locks (or elections) one page of ListLocks (Election.List) answers; its bytes are
/// bounded by --max-response-bytes.
const MAX_LIST: usize = 1_000;

/// The row of lock (or election) `name` in `space`, read linearizably, and the header of the
/// revision it was read at: what DescribeLock and Election.Describe answer.
pub(super) async fn described(
    ctx: &Context,
    space: LockSpace,
    name: &str,
) -> Result<(ResponseHeader, Option<log::LockRow>), ApiError> {
    locks::check_name(name).map_err(|problem| ApiError::InvalidArgument { field: "name", problem })?;
    ctx.node.read_index().await?;
    let txn = ctx.node.db().begin_read()?;
    let row = locks::read(&txn, &locks::lock_key(space, name))?;
    Ok((ctx.header(crate::fsm::applied(&txn)?.revision), row))
}

/// One page of the rows of `space` whose names start with `prefix`, after `start_after`, read
/// linearizably, each as `answer` renders it (at most [`MAX_LIST`], and within
/// --max-response-bytes as answered: an answer may repeat a name the row stores once, in each
/// sequencer), whether more follow, and the header of the revision it was read at: what
/// ListLocks and Election.List answer. A page holds one entry at least, whatever its size.
pub(super) async fn listed<T: prost::Message>(
    ctx: &Context,
    space: LockSpace,
    prefix: &str,
    start_after: &str,
    answer: impl Fn(String, log::LockRow) -> T,
) -> Result<(ResponseHeader, Vec<T>, bool), ApiError> {
    ctx.node.read_index().await?;
    let txn = ctx.node.db().begin_read()?;
    let max = ctx.limits.max_response_bytes;
    // The stored rows' bytes bound what is read; the answered entries' bytes cut the page.
    let (rows, mut more) = locks::list(&txn, space, prefix, start_after, MAX_LIST, max)?;
    let header = ctx.header(crate::fsm::applied(&txn)?.revision);
    // Each field's tag and length take at most 6 bytes; `more` 2.
    let (mut page, mut bytes) = (Vec::with_capacity(rows.len()), prost::Message::encoded_len(&header) + 8);
    for (name, row) in rows {
        let entry = answer(name, row);
        bytes = bytes.saturating_add(entry.encoded_len() + 6);
        if bytes > max && !page.is_empty() {
            more = true;
            break;
        }
        page.push(entry);
    }
    Ok((header, page, more))
}

pub struct LockService {
    ctx: Context,
}

impl LockService {
    pub fn server(ctx: Context) -> LockServer<LockService> {
        LockServer::new(LockService { ctx })
    }
}

/// How long an acquire may wait for its grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    No,
    For(Duration),
    Forever,
}

/// What an acquire asks for.
pub(crate) struct Want {
    pub space: LockSpace,
    pub name: String,
    pub session: String,
    pub mode: log::LockMode,
    pub wait: Wait,
    pub lock_delay_ms: Option<u64>,
    pub value: Vec<u8>,
    pub request_id: String,
}

/// Acquires a lock (or an election's leadership) as asked, waiting on this member for the
/// grant. Answers the grant, or `None` when it was not granted in time.
///
/// Retries are safe: a session that already holds the lock gets its hold back (etcd's locks
/// are re-entrant per lease alike), and one that already waits joins that wait, so a request
/// resent after a lost answer neither queues twice nor misses its grant. Only an RPC that
/// queued a request (or was answered "queued" for its id) withdraws it (`Abandon`, when its
/// caller goes away or its time is up), under [`abandoned_marker`]: a joiner leaves it to its
/// owner, and if the owner withdrew it meanwhile, the joiner asks again — unless the client
/// gave this request up ([`withdraw`]): then it answers "not granted". A request (its own, or
/// one it joined) found gone any other way was granted and released since (only a holder of
/// the sequencer releases it: the client saw the grant through another RPC), and is answered
/// "not granted": asking again would hand the session a lock its client does not know of. So
/// is a call answered with a hold released since. A joined wait that its own client withdrew
/// is asked for again: that request was not this call's.
pub(crate) async fn acquire(
    ctx: &Context,
    want: Want,
) -> Result<(ResponseHeader, Option<log::Sequencer>), ApiError> {
    locks::check_name(&want.name).map_err(|problem| ApiError::InvalidArgument { field: "name", problem })?;
    sessions::check_id(want.session.as_bytes())
        .map_err(|problem| ApiError::InvalidArgument { field: "session_id", problem })?;
    let lock_delay_ms = want.lock_delay_ms.unwrap_or(DEFAULT_LOCK_DELAY_MS);
    if lock_delay_ms > MAX_LOCK_DELAY_MS {
        return Err(ApiError::InvalidArgument {
            field: "lock_delay_ms",
            problem: format!("{lock_delay_ms} ms is more than the {MAX_LOCK_DELAY_MS} ms allowed"),
        });
    }
    check_request_id(&want.request_id)?;
    let deadline = match want.wait {
        Wait::For(d) => Some(tokio::time::Instant::now() + d),
        Wait::No | Wait::Forever => None,
    };
    let key = locks::lock_key(want.space, &want.name);
    let mut request_id =
        if want.request_id.is_empty() { uuid::Uuid::now_v7().to_string() } else { want.request_id.clone() };
    // The id the client knows: a withdrawal names it, whatever ids this call asks again under.
    let given_up = withdrawn_marker(&request_id);
    let mut asked_again = false;
    loop {
        // Registered before the proposal: a grant applied before we wait is not missed.
        let mut settlement = ctx.node.locks().settlement(&request_id);
        let body = Body::Acquire(Acquire {
            space: want.space as i32,
            name: want.name.clone(),
            session: want.session.clone(),
            mode: want.mode as i32,
            wait: want.wait != Wait::No,
            lock_delay_ms,
            value: want.value.clone(),
            max_waiters: u32::try_from(ctx.limits.max_lock_waiters).unwrap_or(u32::MAX),
            max_session_locks: u32::try_from(ctx.limits.max_locks_per_session).unwrap_or(u32::MAX),
            max_row_bytes: locks::MAX_ROW_BYTES,
        });
        // From here until it is answered, a request whose caller goes away (or whose proposal
        // fails, and may yet apply) gives up its place.
        let mut abandon = Abandon::new(ctx, want.space, &want.name, &request_id);
        // Asked again under an id of its own, or under one made for a request that came without
        // any, the answer is not the client's request's (another attempt is another command).
        let written = match asked_again || want.request_id.is_empty() {
            false => ctx.write(&request_id, body).await,
            true => ctx.write_aside(&request_id, body).await,
        };
        let (header, r) = match written {
            Ok(answer) => answer,
            Err(e) => {
                // Unless a resend's request of that id waits here already (its owner may have
                // left it): then this call withdraws it, as any call that owns it would.
                if never_queued(&e) && !matches!(pending(ctx, &key, &request_id), Pending::Waiting) {
                    abandon.disarm();
                }
                return Err(e);
            }
        };
        let r = lock_result(r, "acquire")?;
        let mut waiting_on = request_id.clone();
        if r.status != LockStatus::Queued as i32 {
            // Answered, or queued under another request (whose owner withdraws it, not us).
            abandon.disarm();
        }
        match (LockStatus::try_from(r.status), r.sequencer) {
            (Ok(LockStatus::Queued), _) => {}
            (Ok(LockStatus::Already), None) => {
                // This session waits already, under that request: join it.
                if want.wait == Wait::No {
                    return Ok((header, None));
                }
                settlement = ctx.node.locks().settlement(&r.request_id);
                waiting_on = r.request_id;
            }
            (Ok(LockStatus::Granted | LockStatus::Already), Some(seq)) => {
                // A resent request is answered from memory: make sure the grant still holds.
                let txn = ctx.node.db().begin_read()?;
                if locks::check(&txn, &seq)?.is_ok() {
                    return Ok((header, Some(seq)));
                }
                if sessions::read(&txn, &want.session)?.is_none() {
                    return Err(ApiError::NotFound { kind: "session".into(), name: want.session });
                }
                if crate::fsm::remembered(&txn, &given_up)? {
                    return Ok((header, None)); // its client gave it up (Lock.Withdraw)
                }
                // Its grant, or the session's hold it was answered with, released since by a
                // holder of the sequencer: the client had it, through this request's answer to
                // another RPC (a resend, or a call this member still served after the client
                // moved on), and let it go. Asking again would give the session a hold no one
                // knows of; a release racing a fresh request of the same session (which the
                // clients' one guard per name keeps from happening) costs a "not acquired".
                return Ok((header, None));
            }
            (Ok(LockStatus::Busy), _) => return Ok((header, None)),
            (Ok(LockStatus::QueueFull), _) => {
                let what = if want.space == LockSpace::Elections { "election" } else { "lock" };
                return Err(ApiError::OverLimit(format!(
                    "{what} {:?} has {} requests waiting, the most --max-lock-waiters allows: \
                     nothing was queued; try again later",
                    want.name, r.ahead
                )));
            }
            (Ok(LockStatus::RowFull), _) => {
                let (what, who) = if want.space == LockSpace::Elections {
                    ("election", "candidates")
                } else {
                    ("lock", "holders and waiters")
                };
                return Err(ApiError::OverLimit(format!(
                    "{what} {:?}: its {who} take {} bytes, and this request would take it past the {} \
                     one {what} holds: nothing was queued; try again later{}",
                    want.name,
                    r.ahead,
                    locks::MAX_ROW_BYTES,
                    if want.value.is_empty() { "" } else { ", or campaign with a smaller value" }
                )));
            }
            (Ok(LockStatus::SessionFull), _) => {
                return Err(ApiError::OverLimit(format!(
                    "session {} holds or awaits {} locks and elections, the most --max-locks-per-session \
                     allows: nothing was queued; release one first, or use another session",
                    want.session, r.ahead
                )));
            }
            (Ok(LockStatus::OtherMode), held) => {
                let what = if held.is_some() { "holds" } else { "awaits" };
                return Err(ApiError::FailedPrecondition(format!(
                    "session {} {what} {:?} in the other mode; release it first (a lock is not upgraded or \
                     downgraded in place)",
                    want.session, want.name
                )));
            }
            _ => return Err(ApiError::Internal(format!("acquire answered status {}", r.status))),
        }
        // A member cut off from the leader learns of no grant, and must say so (the client then
        // asks another member) rather than wait on: it looks at the member's freshness check.
        let cut_off = ctx.freshness.until_cut_off();
        tokio::pin!(cut_off);
        loop {
            let txn = ctx.node.db().begin_read()?;
            let revision = crate::fsm::applied(&txn)?.revision;
            match locks::request_state(&txn, &key, &waiting_on)? {
                RequestState::Held(seq) => {
                    abandon.disarm();
                    return Ok((ctx.header(revision), Some(seq)));
                }
                // A call that asked again under an id of its own is the client's no more once
                // the client gave up its request: it leaves the queue as if its time were up.
                RequestState::Waiting if asked_again && crate::fsm::remembered(&txn, &given_up)? => {
                    drop(txn);
                    if !abandon.armed() {
                        // A joined wait: its owner decides when it ends.
                        return Ok((ctx.header(revision), None));
                    }
                    return give_up(ctx, &want, &waiting_on, &mut abandon).await;
                }
                RequestState::Waiting => {}
                RequestState::Gone => {
                    abandon.disarm();
                    if sessions::read(&txn, &want.session)?.is_none() {
                        return Err(ApiError::NotFound { kind: "session".into(), name: want.session });
                    }
                    if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
                        return Ok((ctx.header(revision), None));
                    }
                    if crate::fsm::remembered(&txn, &given_up)? {
                        // Its client gave it up (Lock.Withdraw): nobody waits for an answer.
                        return Ok((ctx.header(revision), None));
                    }
                    // Withdrawn by another RPC of the request, or (a wait this call joined, of
                    // another request) by that request's client: ask again. Anything else is a
                    // grant released since (see above), or a withdrawal so long ago that the
                    // request memory forgot it: not granted to this call.
                    let joined = waiting_on != request_id;
                    let withdrawn = withdrawn_by_an_rpc(&txn, &waiting_on)?
                        || (joined && crate::fsm::remembered(&txn, &withdrawn_marker(&waiting_on))?);
                    if !withdrawn {
                        return Ok((ctx.header(revision), None));
                    }
                    break;
                }
            }
            drop(txn);
            let timed_out = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(timed_out);
            // Nothing wakes a call that asked again when its client gives the request up: it
            // looks at the marker now and then.
            let look_again = async {
                if asked_again {
                    tokio::time::sleep(LOOK_FOR_GIVE_UP).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                _ = settlement.woken() => continue,
                _ = look_again => continue,
                cut_off = &mut cut_off => {
                    // The client resends to another member, which joins this wait: it is not
                    // withdrawn from here (the session's end bounds it).
                    abandon.disarm();
                    return Err(cut_off.into());
                }
                _ = &mut timed_out => {}
            }
            if !abandon.armed() {
                // A joined wait: its owner decides when it ends.
                return Ok((ctx.header(revision), None));
            }
            return give_up(ctx, &want, &waiting_on, &mut abandon).await;
        }
        request_id = uuid::Uuid::now_v7().to_string();
        asked_again = true;
    }
}

/// How often a call that asked again under an id of its own looks whether its client gave the
/// request up.
const LOOK_FOR_GIVE_UP: Duration = Duration::from_secs(1);

/// Leaves the queue (time is up, or the client gave the request up), unless the grant came
/// first: then it is answered. Until the cancel is applied, `abandon` stays armed: a failed
/// cancel is retried in the background.
async fn give_up(
    ctx: &Context,
    want: &Want,
    waiting_on: &str,
    abandon: &mut Abandon,
) -> Result<(ResponseHeader, Option<log::Sequencer>), ApiError> {
    let cancel = CancelWait {
        space: want.space as i32,
        name: want.name.clone(),
        request_id: waiting_on.to_string(),
        release_granted: false,
    };
    let (header, r) = ctx.write_aside(&abandoned_marker(waiting_on), Body::CancelWait(cancel)).await?;
    abandon.disarm();
    let r = lock_result(r, "cancel")?;
    let granted = r.status == LockStatus::Granted as i32;
    Ok((header, if granted { r.sequencer } else { None }))
}

/// Rounds of [`withdraw`] before it gives up: each one ends the call, or found that the acquire
/// was applied or proposed here after it looked (at most once each), or waited for an acquire
/// still being proposed on this member.
const WITHDRAW_ROUNDS: usize = 40;
/// How long [`withdraw`] waits before looking again at an acquire still being proposed here.
const WITHDRAW_LOOK_AGAIN: Duration = Duration::from_millis(50);

/// The request id under which [`withdraw`] records that the acquire `request_id` was given up
/// by its client: an RPC of that request that finds it gone then ends instead of asking again
/// (see [`acquire`]).
fn withdrawn_marker(request_id: &str) -> String {
    // Longer than any id a client may send (`check_request_id`), so no request collides with
    // it; the tildes after "withdrawn" pad it, so the id before them is unambiguous.
    format!("{:~<width$}", format!("{request_id}~withdrawn"), width = MAX_REQUEST_ID_BYTES + 1)
}

/// The request id under which an RPC of the acquire `request_id` withdraws it from its queue
/// (`Abandon`, `give_up`): another RPC of that request that finds it gone asks again only if
/// this withdrawal applied and withdrew it. Distinct from every client id and every
/// [`withdrawn_marker`], as that is.
fn abandoned_marker(request_id: &str) -> String {
    format!("{:~<width$}", format!("{request_id}~abandoned"), width = MAX_REQUEST_ID_BYTES + 1)
}

/// Whether an RPC of the acquire `request_id` withdrew it from its queue: its cancel under
/// [`abandoned_marker`] is remembered, and answered that it withdrew a waiting request.
fn withdrawn_by_an_rpc(txn: &redb::ReadTransaction, request_id: &str) -> Result<bool, ApiError> {
    Ok(match crate::fsm::first_outcome(txn, &abandoned_marker(request_id))? {
        Some(log::Outcome { result: Some(outcome::Result::Lock(r)), .. }) => {
            r.status == LockStatus::Done as i32
        }
        _ => false,
    })
}

/// Gives up the acquire sent under `request_id` (see `Withdraw` in lock.proto): withdraws it if
/// it waits, answers its grant if it holds, and if it has not been applied here, spends its id
/// with a withdrawal proposed *under that id* — of the two commands, the log applies whichever
/// comes first, and refuses the other as a conflict (`fsm::requests`): an acquire that comes
/// second is never queued, a withdrawal that comes second changes nothing and is looked at
/// again, now with the acquire applied. Once the acquire was applied, the withdrawal goes under
/// [`withdrawn_marker`] (a retry is the same command), which a live RPC of the request (a
/// resend the client forgot, on a member that did not see its connection go) reads as "given
/// up". (The spent id holds as long as the request memory remembers it: `fsm::requests`.)
pub(crate) async fn withdraw(
    ctx: &Context,
    space: LockSpace,
    name: &str,
    request_id: &str,
) -> Result<(ResponseHeader, Option<log::Sequencer>), ApiError> {
    locks::check_name(name).map_err(|problem| ApiError::InvalidArgument { field: "name", problem })?;
    if request_id.is_empty() {
        return Err(ApiError::InvalidArgument {
            field: "request_id",
            problem: "must name the acquire to withdraw".into(),
        });
    }
    check_request_id(request_id)?;
    let key = locks::lock_key(space, name);
    let cancel = CancelWait {
        space: space as i32,
        name: name.to_string(),
        request_id: request_id.to_string(),
        release_granted: false,
    };
    // A grant the withdrawal's own answer carries (it raced it), or none.
    let granted = |r: outcome::Result| -> Result<Option<log::Sequencer>, ApiError> {
        let r = lock_result(r, "withdraw")?;
        Ok(r.sequencer.filter(|_| r.status == LockStatus::Granted as i32))
    };
    for _ in 0..WITHDRAW_ROUNDS {
        // Applied (a request held or queued was, even if the memory forgot its id).
        let applied = {
            let txn = ctx.node.db().begin_read()?;
            !matches!(locks::request_state(&txn, &key, request_id)?, RequestState::Gone)
                || crate::fsm::remembered(&txn, request_id)?
        };
        if applied {
            // Withdrawn now if it waits, its grant answered if it holds, and marked given up
            // either way, so that no RPC of it asks again.
            let (header, r) =
                ctx.write_aside(&withdrawn_marker(request_id), Body::CancelWait(cancel)).await?;
            return Ok((header, granted(r)?));
        }
        match ctx.write(request_id, Body::CancelWait(cancel.clone())).await {
            // Applied first: the id is spent, and nothing waited under it.
            Ok((header, r)) => return Ok((header, granted(r)?)),
            // The acquire was applied first (here now too: the conflict was answered after
            // it), or is being proposed on this member: look again.
            Err(ApiError::RequestConflict { .. }) => {}
            Err(ApiError::Request(RequestError::RequestInFlight { .. })) => {
                tokio::time::sleep(WITHDRAW_LOOK_AGAIN).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Unavailable(format!(
        "the acquire {request_id:?} is still being proposed on this member (for up to its request timeout): \
         withdraw it again"
    )))
}

/// How long a withdrawal is retried in the background before the session's end is left to do it.
const ABANDON_FOR: Duration = Duration::from_secs(120);

/// Gives up a queued request whose caller went away (its future dropped) or whose proposal
/// failed (unless it surely queued nothing: [`never_queued`]): withdraws it whenever this
/// member's state shows it waiting, and looks every second, for at most [`ABANDON_FOR`], until
/// the state shows it applied and not waiting. A request that never reaches the log costs
/// looks, not log entries; one this member applies only after [`ABANDON_FOR`] is left to its
/// session's end. A grant that raced the departure is kept — it is the session's, a resent
/// request gets it back; releasing it could pull a lock from under a resent request that was
/// answered with it.
struct Abandon {
    ctx: Option<Context>,
    space: LockSpace,
    name: String,
    request_id: String,
}

impl Abandon {
    fn new(ctx: &Context, space: LockSpace, name: &str, request_id: &str) -> Abandon {
        Abandon { ctx: Some(ctx.clone()), space, name: name.to_string(), request_id: request_id.to_string() }
    }

    fn disarm(&mut self) {
        self.ctx = None;
    }

    fn armed(&self) -> bool {
        self.ctx.is_some()
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        let Some(ctx) = self.ctx.take() else { return };
        let key = locks::lock_key(self.space, &self.name);
        let cancel = CancelWait {
            space: self.space as i32,
            name: std::mem::take(&mut self.name),
            request_id: std::mem::take(&mut self.request_id),
            release_granted: false,
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            // Withdraws only what waits: a cancel applied before the acquire (still on its way,
            // or never proposed) would withdraw nothing, so until this member's state shows the
            // request waiting, it only looks again. Each withdrawal is a command of its own; a
            // retry of one whose outcome is unknown keeps its id, so it applies once. The first
            // goes under the request's `abandoned_marker`, which other RPCs of it look for.
            let mut id = abandoned_marker(&cancel.request_id);
            let until = tokio::time::Instant::now() + ABANDON_FOR;
            while tokio::time::Instant::now() < until {
                match pending(&ctx, &key, &cancel.request_id) {
                    Pending::Settled => return,
                    Pending::NotYet => {}
                    Pending::Waiting => {
                        match ctx.write(&id, Body::CancelWait(cancel.clone())).await {
                            // Applied here (a write is answered once its member applied
                            // it): the next look finds the request withdrawn, or (should it
                            // wait still) the next withdrawal is a new command, at most one
                            // a second.
                            Ok(_) => id = uuid::Uuid::now_v7().to_string(),
                            Err(ApiError::Request(RequestError::ShuttingDown { .. })) => return,
                            Err(e) => tracing::debug!(error = %e, "giving up a lock request: retrying"),
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            tracing::warn!(
                lock = cancel.name,
                "a lock request whose caller went away could not be withdrawn; its session's end will"
            );
        });
    }
}

/// Where a request being given up stands in this member's state.
enum Pending {
    /// It waits in the queue: withdraw it.
    Waiting,
    /// It was applied here and waits no more (granted and kept, withdrawn, or its session
    /// ended): nothing left to do.
    Settled,
    /// Not applied here (yet, or ever), or the state could not be read: look again later.
    NotYet,
}

fn pending(ctx: &Context, key: &[u8], request_id: &str) -> Pending {
    let Ok(txn) = ctx.node.db().begin_read() else { return Pending::NotYet };
    if matches!(locks::request_state(&txn, key, request_id), Ok(RequestState::Waiting)) {
        return Pending::Waiting;
    }
    // Applied and not waiting: granted, withdrawn, or its session ended. (A session missing
    // here says nothing of a request not applied yet: this member may lag the one that created
    // it.)
    if matches!(crate::fsm::remembered(&txn, request_id), Ok(true)) {
        Pending::Settled
    } else {
        Pending::NotYet
    }
}

/// Whether an acquire that failed so can have left nothing in a queue: it was refused before
/// it was proposed, or it was applied and answered otherwise than queued.
fn never_queued(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::Request(
            RequestError::Overloaded { .. }
                | RequestError::SessionNotFound { .. }
                | RequestError::RequestInFlight { .. }
        ) | ApiError::Rejected(_)
            | ApiError::NotFound { .. }
            | ApiError::RequestConflict { .. }
            | ApiError::InvalidArgument { .. }
            | ApiError::OverLimit(_)
    )
}

pub(crate) fn lock_result(r: outcome::Result, what: &str) -> Result<log::LockResult, ApiError> {
    match r {
        outcome::Result::Lock(r) => Ok(r),
        _ => Err(ApiError::Internal(format!("the state machine answered {what} with another outcome"))),
    }
}

/// Parses a sequencer's string form, which must be of this cluster.
pub(crate) fn sequencer_of(
    token: &str,
    cluster_id: u64,
    field: &'static str,
) -> Result<log::Sequencer, ApiError> {
    let s = latch_proto::sequencer::parse(token)
        .map_err(|e| ApiError::InvalidArgument { field, problem: e.to_string() })?;
    if s.cluster_id != cluster_id {
        return Err(ApiError::InvalidArgument {
            field,
            problem: format!(
                "the sequencer is of cluster {:016x}; this is cluster {cluster_id:016x}",
                s.cluster_id
            ),
        });
    }
    let mode =
        if s.mode == LockMode::Shared as i32 { log::LockMode::Shared } else { log::LockMode::Exclusive };
    Ok(log::Sequencer {
        space: if s.election { LockSpace::Elections } else { LockSpace::Locks } as i32,
        name: s.name,
        mode: mode as i32,
        generation: s.generation,
        session: s.session_id,
    })
}

/// The public form of a sequencer of this cluster, with its string form.
pub(crate) fn public_sequencer(seq: &log::Sequencer, cluster_id: u64) -> Sequencer {
    let mut s = Sequencer {
        name: seq.name.clone(),
        mode: public_mode(seq.mode) as i32,
        generation: seq.generation,
        session_id: seq.session.clone(),
        cluster_id,
        election: seq.space == LockSpace::Elections as i32,
        token: String::new(),
    };
    s.token = latch_proto::sequencer::format(&s);
    s
}

fn public_mode(mode: i32) -> LockMode {
    if mode == log::LockMode::Shared as i32 {
        LockMode::Shared
    } else {
        LockMode::Exclusive
    }
}

/// Releases the hold a sequencer names (a lock's, or an election's leadership).
pub(crate) async fn release(
    ctx: &Context,
    token: &str,
    request_id: &str,
    election: bool,
) -> Result<ResponseHeader, ApiError> {
    check_request_id(request_id)?;
    let seq = sequencer_of(token, ctx.node.cluster_id, "sequencer")?;
    if (seq.space == LockSpace::Elections as i32) != election {
        let want = if election { "an election's leadership" } else { "a lock's" };
        return Err(ApiError::InvalidArgument { field: "sequencer", problem: format!("is not {want}") });
    }
    let name = seq.name.clone();
    let (header, r) = ctx.write(request_id, Body::Release(Release { sequencer: Some(seq) })).await?;
    match LockStatus::try_from(lock_result(r, "release")?.status) {
        Ok(LockStatus::Done) => Ok(header),
        _ => Err(ApiError::FailedPrecondition(format!(
            "the sequencer does not hold {name:?}: it was released, or its session ended"
        ))),
    }
}

pub(super) fn lock_info(name: String, row: log::LockRow) -> LockInfo {
    LockInfo {
        name,
        holders: row
            .holders
            .into_iter()
            .map(|h| LockHolder {
                session_id: h.session,
                mode: public_mode(h.mode) as i32,
                generation: h.generation,
                held_since_revision: h.revision,
                lock_delay_ms: h.lock_delay_ms,
            })
            .collect(),
        waiters: row
            .waiters
            .into_iter()
            .map(|w| LockWaiter {
                session_id: w.session,
                mode: public_mode(w.mode) as i32,
                queued_revision: w.revision,
            })
            .collect(),
        delayed: row.delay_revision != 0,
        delay_since_revision: row.delay_revision,
        delay_ms: row.delay_ms,
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn acquire(&self, req: Request<AcquireRequest>) -> Result<Response<AcquireResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            let wait = match (req.wait_forever, req.wait_ms) {
                (true, _) => Wait::Forever,
                (false, 0) => Wait::No,
                (false, ms) => Wait::For(Duration::from_millis(ms)),
            };
            let mode = if req.mode == LockMode::Shared as i32 {
                log::LockMode::Shared
            } else if req.mode == LockMode::Exclusive as i32 {
                log::LockMode::Exclusive
            } else {
                return Err(ApiError::InvalidArgument {
                    field: "mode",
                    problem: format!("{} is not a lock mode", req.mode),
                });
            };
            let want = Want {
                space: LockSpace::Locks,
                name: req.name,
                session: req.session_id,
                mode,
                wait,
                lock_delay_ms: req.lock_delay_ms,
                value: Vec::new(),
                request_id: req.request_id,
            };
            let (header, seq) = acquire(&self.ctx, want).await?;
            let sequencer = seq.map(|s| public_sequencer(&s, self.ctx.node.cluster_id));
            Ok(AcquireResponse { header: Some(header), acquired: sequencer.is_some(), sequencer })
        };
        self.ctx.answer(run).await
    }

    async fn release(&self, req: Request<ReleaseRequest>) -> Result<Response<ReleaseResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            let header = release(&self.ctx, &req.sequencer, &req.request_id, false).await?;
            Ok(ReleaseResponse { header: Some(header) })
        };
        self.ctx.answer(run).await
    }

    async fn withdraw(&self, req: Request<WithdrawRequest>) -> Result<Response<WithdrawResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            let (header, seq) = withdraw(&self.ctx, LockSpace::Locks, &req.name, &req.request_id).await?;
            let sequencer = seq.map(|s| public_sequencer(&s, self.ctx.node.cluster_id));
            Ok(WithdrawResponse { header: Some(header), held: sequencer.is_some(), sequencer })
        };
        self.ctx.answer(run).await
    }

    async fn check_sequencer(
        &self,
        req: Request<CheckSequencerRequest>,
    ) -> Result<Response<CheckSequencerResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            let seq = sequencer_of(&req.sequencer, self.ctx.node.cluster_id, "sequencer")?;
            self.ctx.node.read_index().await?;
            let txn = self.ctx.node.db().begin_read()?;
            let verdict = locks::check(&txn, &seq)?;
            Ok(CheckSequencerResponse {
                header: Some(self.ctx.header(crate::fsm::applied(&txn)?.revision)),
                valid: verdict.is_ok(),
                reason: verdict.err().unwrap_or_default(),
            })
        };
        self.ctx.answer(run).await
    }

    async fn describe_lock(
        &self,
        req: Request<DescribeLockRequest>,
    ) -> Result<Response<DescribeLockResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            let (header, row) = described(&self.ctx, LockSpace::Locks, &req.name).await?;
            Ok(DescribeLockResponse { header: Some(header), lock: row.map(|r| lock_info(req.name, r)) })
        };
        self.ctx.answer(run).await
    }

    async fn list_locks(
        &self,
        req: Request<ListLocksRequest>,
    ) -> Result<Response<ListLocksResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            let (header, locks, more) =
                listed(&self.ctx, LockSpace::Locks, &req.prefix, &req.start_after, lock_info).await?;
            Ok(ListLocksResponse { header: Some(header), locks, more })
        };
        self.ctx.answer(run).await
    }
}
