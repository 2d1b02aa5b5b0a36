//! Heartbeaters and the registry invariants (DESIGN.md §1 Sessions, §3 registry;
//! `fsm::registry`, `core::instance_timers`) in the simulator. A heartbeater is a client that
//! registers one instance (`svc/hb-N`) with a TTL check — bound to a keeper's session in some
//! runs — and heartbeats it every third of its TTL or so, through any member (followers
//! forward), as a service's agent does. A call that fails or times out is tried again at
//! another member: a registration under the same request id, a heartbeat as a new one. When
//! its instance is gone (reaped while the heartbeater was cut off) it registers it again; when
//! its session is gone it stops for good. In some runs it stops at a drawn time (a dead
//! client), and it stops with its keeper (one process).
//!
//! The members' applied commands are read as the first member applies each log index (every
//! member applies the same command there, and the first is the earliest: every bound below is
//! a lower bound on time, so checking the first application checks them all). Per instance,
//! that gives the log's story of it: registrations and heartbeats applied (with when each was
//! first *sent*), critical turns (with when first applied), removals.
//!
//! What is checked:
//! - Never critical early: a command that turns an instance CRITICAL is applied no earlier
//!   than its TTL after the latest *sending* of any registration or heartbeat of it applied
//!   before it in the log (acknowledged or not: an applied heartbeat restarts every member's
//!   count, and each member applied it after it was sent). A retried request counts from its
//!   first sending. This is stricter than counting from acknowledged heartbeats only.
//! - Never reaped early: a removal that is neither a session's end nor the client's own
//!   (a reap) removes an instance that is critical, no earlier than its `deregister_after_ms`
//!   after the first member applied its turn to critical.
//! - A session's instances never outlive it: the end of a session removes, in the same
//!   command, every instance bound to it; a session's end removes no other instance; and in
//!   every member's applied state (read after each step that changed it), every instance
//!   bound to a session has that session live, and `registry::count_of` counts exactly the
//!   instances bound to each session.
//! - Registrations and heartbeats leave their instance passing.
//! - Kept passing (leader-change runs only, on a network that delays but loses nothing): the
//!   instance of a heartbeater that never stops (nor its keeper) never turns critical.
//! - Never late (leader-change runs only, on a network that delays but loses nothing): once a
//!   heartbeater stopped, its instance turns critical (or is removed) within its TTL plus a
//!   bound (two of the longest election timeouts, the longest cut-off of a member, and the
//!   message round trips of an election and two commits) of the first application of its
//!   last heartbeat. (It failed 3 seeds in 500 while a member that installed a snapshot counted
//!   every TTL in full from the install, even a heartbeat it had applied itself:
//!   `InstanceTimers::reload` now keeps those counts.)
//!
//! Measurements use the virtual clock; members' clocks read whole milliseconds, so a member
//! may act 1 ms early by the virtual clock (as `locks.rs` allows too).

use std::collections::{BTreeMap, BTreeSet};

use latch::core::Core;
use latch::fsm::{self, registry, AppliedCommand, InstanceTimer, SessionChange};
use latch_proto::internal::{
    check, command::Body, outcome, Check, Health, Heartbeat, Instance, InstanceRow, Outcome, Register,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use redb::ReadableDatabase as _;

use crate::invariants::Ctx;
use crate::sessions::Keeper;

/// The service every heartbeater's instance belongs to.
pub const SERVICE: &str = "svc";

/// What a seed decides about one heartbeater.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The keeper whose session its instance is bound to, if any.
    pub keeper: Option<usize>,
    pub ttl_ms: u64,
    pub deregister_after_ms: u64,
    /// Time between heartbeats.
    pub interval_us: u64,
    /// How long it waits for an answer.
    pub timeout_us: u64,
    /// When it stops (a dead client), if it does.
    pub stop_at_us: Option<u64>,
}

/// Draws the heartbeaters of a run from their own generator (the rest of the run's draws are
/// as without them). Every heartbeat is a log entry, and entries are what a run's time goes
/// on: a run has few heartbeaters, beating about every third of their TTL.
/// - Chaos runs: 0 to 3 (mostly 1 or 2), TTLs of 0.4–1.5 s, half of them bound to a keeper's
///   session, half of them stopping during the chaos.
/// - Leader-change runs: one, with the sessions' TTL of 2 s, stopping between the 2nd and the
///   6th TTL in five runs of six (the never-late bound), never in the others (kept passing).
pub fn draw(seed: u64, leader_changes: bool, keepers: usize, chaos_us: u64) -> Vec<Spec> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x7265_6769_7374_7279);
    let n = if leader_changes { 1 } else { [0, 1, 1, 1, 2, 2, 3][rng.gen_range(0..7)] };
    (0..n)
        .map(|_| {
            let keeper = (keepers > 0 && rng.gen_bool(0.5)).then(|| rng.gen_range(0..keepers));
            let ttl_ms = if leader_changes { 2_000 } else { rng.gen_range(400..1_500) };
            let deregister_after_ms = rng.gen_range(registry::MIN_DEREGISTER_AFTER_MS..3 * ttl_ms.max(1_000));
            let stop_at_us = if leader_changes {
                (rng.gen_range(0..6) != 0).then(|| rng.gen_range(2 * ttl_ms * 1_000..6 * ttl_ms * 1_000))
            } else {
                rng.gen_bool(0.5).then(|| rng.gen_range(chaos_us / 5..chaos_us.max(2)))
            };
            Spec {
                keeper,
                ttl_ms,
                deregister_after_ms,
                interval_us: ttl_ms * rng.gen_range(300..if leader_changes { 450 } else { 400 }),
                timeout_us: rng.gen_range(80_000..250_000),
                stop_at_us,
            }
        })
        .collect()
}

/// A heartbeater's call in flight.
#[derive(Debug, Clone)]
pub struct Call {
    pub request_id: String,
    pub register: bool,
    /// When this attempt was sent.
    pub sent_us: u64,
}

/// What a heartbeater makes of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Registered or heartbeat: the next heartbeat in an interval from the call's sending.
    Beat,
    /// Its instance is gone: register it again.
    Register,
    /// Its session is gone: it stops for good.
    Gone,
}

/// One simulated heartbeating client.
#[derive(Debug, Clone)]
pub struct Heartbeater {
    pub index: usize,
    pub spec: Spec,
    /// It believes its instance is registered.
    pub registered: bool,
    /// Its session ended: it stopped for good.
    pub gone: bool,
    pub attempt: u64,
    pub in_flight: Option<Call>,
    /// A registration not answered yet keeps its request id across attempts.
    register_id: Option<String>,
    next_id: u64,
}

impl Heartbeater {
    pub fn new(index: usize, spec: Spec) -> Heartbeater {
        Heartbeater {
            index,
            spec,
            registered: false,
            gone: false,
            attempt: 0,
            in_flight: None,
            register_id: None,
            next_id: 0,
        }
    }

    pub fn id(&self) -> String {
        format!("hb-{}", self.index)
    }

    pub fn key(&self) -> Vec<u8> {
        registry::instance_key(SERVICE, &self.id())
    }

    /// Whether it has stopped at `now`: at its own drawn time, or with its keeper (one process).
    pub fn stopped(&self, now: u64, keepers: &[Keeper]) -> bool {
        self.spec.stop_at_us.is_some_and(|t| now >= t)
            || self.spec.keeper.is_some_and(|k| keepers[k].stopped(now) || keepers[k].gone)
    }

    /// Whether it stops at some time (by itself or with its keeper).
    pub fn ever_stops(&self, keepers: &[Keeper]) -> bool {
        self.spec.stop_at_us.is_some() || self.spec.keeper.is_some_and(|k| keepers[k].stop_at_us.is_some())
    }

    /// The next call, sent at `now` for the instance bound to `session` ("" for none): a
    /// registration (under the id of one not answered yet) or a new heartbeat.
    pub fn next_call(&mut self, now: u64, session: &str) -> (Body, Call) {
        let register = !self.registered;
        let request_id = match (&self.register_id, register) {
            (Some(id), true) => id.clone(),
            _ => {
                self.next_id += 1;
                let id = format!("heartbeater-{}-{}", self.index, self.next_id);
                if register {
                    self.register_id = Some(id.clone());
                }
                id
            }
        };
        let body = if register {
            Body::Register(Register {
                instance: Some(Instance {
                    service: SERVICE.into(),
                    id: self.id(),
                    address: format!("10.0.0.{}", self.index + 1),
                    port: 8_000,
                    // Several tags and meta entries: what a member stores of them must be the
                    // same bytes on every member (the state hash compares them; a map encoded
                    // in a member's iteration order once broke that, 9a47521).
                    tags: vec!["blue".into(), "canary".into()],
                    meta: (0..4).map(|k| (format!("key-{k}"), format!("{}-{k}", self.index))).collect(),
                    ..Default::default()
                }),
                session: session.to_string(),
                check: Some(Check {
                    kind: check::Kind::Ttl as i32,
                    ttl_ms: self.spec.ttl_ms,
                    deregister_after_ms: self.spec.deregister_after_ms,
                    ..Default::default()
                }),
            })
        } else {
            Body::Heartbeat(Heartbeat {
                service: SERVICE.into(),
                id: self.id(),
                output: heartbeat_output(self.next_id),
            })
        };
        self.attempt += 1;
        let call = Call { request_id, register, sent_us: now };
        self.in_flight = Some(call.clone());
        (body, call)
    }

    /// The outcome of `call`; an outcome no heartbeat or registration may get is an error.
    pub fn answered(&mut self, call: &Call, outcome: &Outcome) -> Result<Next, String> {
        match &outcome.result {
            Some(outcome::Result::Registry(r)) if r.instance.is_some() => {
                if call.register {
                    self.register_id = None;
                }
                self.registered = true;
                Ok(Next::Beat)
            }
            Some(outcome::Result::NotFound(nf)) if nf.kind == "instance" && !call.register => {
                self.registered = false;
                Ok(Next::Register)
            }
            Some(outcome::Result::NotFound(nf)) if nf.kind == "session" && call.register => {
                self.gone = true;
                Ok(Next::Gone)
            }
            other => Err(format!("{call:?} was answered with {other:?}")),
        }
    }
}

/// What a heartbeat says: mostly the same (a heartbeat that changes nothing a reader sees
/// writes no revision), now and then something new (one that does).
fn heartbeat_output(n: u64) -> String {
    if n % 8 == 0 {
        format!("ok, beat {n}")
    } else {
        "ok".to_string()
    }
}

/// One change of an instance in the log, at its index.
#[derive(Debug, Clone)]
enum Story {
    /// A registration or heartbeat applied: first sent at `sent_us`, first applied at
    /// `applied_us`; the instance's session after it.
    Beat { sent_us: u64, applied_us: u64, session: String },
    /// Turned critical at `revision`, first applied at `applied_us`.
    Critical { revision: i64, applied_us: u64, deregister_after_ms: u64 },
    /// Removed (by a reap, a session's end or its client).
    Removed,
}

/// The registry invariants (see the module doc).
#[derive(Debug, Default)]
pub struct RegistryChecker {
    /// Heartbeaters' requests: id → (instance key, first sending, whether a registration).
    requests: BTreeMap<String, (Vec<u8>, u64, bool)>,
    /// Per instance key: log index → what happened to it there.
    story: BTreeMap<Vec<u8>, BTreeMap<u64, Story>>,
    /// The highest log index a member applied: past it, an application is the first.
    max_index: u64,
    /// Members whose registry or sessions may have changed since their last check.
    dirty: BTreeSet<u64>,
    /// Sessions instances were ever bound to.
    sessions: BTreeSet<String>,
    /// Per instance key, the first turn to critical or removal: (log index, what).
    troubles: BTreeMap<Vec<u8>, (u64, &'static str)>,
    pub beats: u64,
    pub criticals: u64,
    pub reaps: u64,
    pub session_removals: u64,
}

impl RegistryChecker {
    pub fn new() -> RegistryChecker {
        RegistryChecker::default()
    }

    /// A heartbeater sent `request_id` (a registration or a heartbeat of instance `key`) at
    /// `now`; a retry keeps the first sending.
    pub fn sent(&mut self, request_id: &str, key: Vec<u8>, register: bool, now: u64) {
        self.requests.entry(request_id.to_string()).or_insert((key, now, register));
    }

    /// Member `node`'s state was replaced (a restart, a snapshot): checked after this step.
    pub fn touched(&mut self, node: u64) {
        self.dirty.insert(node);
    }

    /// Commands member `node` applied at `ctx.time_us`.
    pub fn applied(&mut self, ctx: Ctx, node: u64, commands: &[AppliedCommand]) {
        for a in commands {
            // What may change which instances a session has: a registration, a removal, a
            // session's end (a heartbeat or a verdict changes only health).
            let rebinds = a.instances.iter().any(|c| c.timer.is_none())
                || a.sessions.iter().any(|c| matches!(c, SessionChange::Ended { .. }))
                || self.requests.get(&a.request_id).is_some_and(|r| r.2);
            if rebinds {
                self.dirty.insert(node);
            }
            if a.index <= self.max_index {
                continue;
            }
            self.max_index = a.index;
            self.first_application(ctx, node, a);
        }
    }

    fn first_application(&mut self, ctx: Ctx, node: u64, a: &AppliedCommand) {
        let now = ctx.time_us;
        let ended: Vec<&str> = a
            .sessions
            .iter()
            .filter_map(|c| match c {
                SessionChange::Ended { id } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        let row = match &a.outcome.result {
            Some(outcome::Result::Registry(r)) => r.instance.as_deref(),
            _ => None,
        };
        // A session's end takes every instance bound to it, in the same command.
        for &session in &ended {
            for (key, story) in &self.story {
                if bound_to(story, a.index) == Some(session)
                    && !a.instances.iter().any(|c| c.key == *key && c.timer.is_none())
                {
                    ctx.fail(
                        Some(node),
                        "registry: a session's end removes its instances in its revision",
                        format!(
                            "the end of {session} at index {} (revision {}) left {} bound to it: changes {:?}",
                            a.index,
                            a.outcome.revision,
                            show(key),
                            a.instances
                        ),
                    );
                }
            }
        }
        if let Some((key, sent_us, _)) = self.requests.get(&a.request_id).cloned() {
            // A heartbeater's registration or heartbeat, applied (a retry answered from the
            // request memory changes nothing, and lists no change).
            if let (Some(row), true) = (row, a.instances.iter().any(|c| c.key == key)) {
                if !registry::is_passing(row) {
                    ctx.fail(
                        Some(node),
                        "registry: a heartbeat or registration leaves its instance passing",
                        format!("{} after {}: {row:?}", show(&key), a.request_id),
                    );
                }
                self.beats += 1;
                let story = Story::Beat { sent_us, applied_us: now, session: row.session.clone() };
                if !row.session.is_empty() {
                    self.sessions.insert(row.session.clone());
                }
                self.story.entry(key).or_default().insert(a.index, story);
                return;
            }
        }
        for change in &a.instances {
            let story = self.story.entry(change.key.clone()).or_default();
            match change.timer {
                Some(InstanceTimer::Reap { since_revision, after_ms })
                    if since_revision == a.outcome.revision =>
                {
                    self.criticals += 1;
                    never_critical_early(ctx, node, a, &change.key, story, row);
                    let s = Story::Critical {
                        revision: since_revision,
                        applied_us: now,
                        deregister_after_ms: after_ms,
                    };
                    story.insert(a.index, s);
                    self.troubles.entry(change.key.clone()).or_insert((a.index, "turned critical"));
                }
                None => {
                    if !ended.is_empty() {
                        self.session_removals += 1;
                        let bound = bound_to(story, a.index);
                        if !bound.is_some_and(|s| ended.contains(&s)) {
                            ctx.fail(
                                Some(node),
                                "registry: a session's end removes only its own instances",
                                format!(
                                    "the end of {ended:?} at index {} removed {}, bound to {bound:?}",
                                    a.index,
                                    show(&change.key)
                                ),
                            );
                        }
                    } else if !self.requests.contains_key(&a.request_id) {
                        self.reaps += 1;
                        never_reaped_early(ctx, node, a, &change.key, story);
                    }
                    story.insert(a.index, Story::Removed);
                    self.troubles.entry(change.key.clone()).or_insert((a.index, "removed"));
                }
                Some(_) => {}
            }
        }
    }

    /// At the end of a run: the state checks of [`RegistryChecker::after_step`] on every member.
    pub fn check_final(&mut self, ctx: Ctx, up: &[(u64, &Core)]) {
        for &(id, _) in up {
            self.dirty.insert(id);
        }
        self.after_step(ctx, up);
    }

    /// Checks the applied state of every member whose registry or sessions may have changed.
    pub fn after_step(&mut self, ctx: Ctx, up: &[(u64, &Core)]) {
        if self.dirty.is_empty() {
            return;
        }
        for &(id, core) in up {
            if !self.dirty.remove(&id) {
                continue;
            }
            let txn = core
                .state_db()
                .begin_read()
                .unwrap_or_else(|e| ctx.fail(Some(id), "registry: state readable", e.to_string()));
            let name = "registry: a session's instances never outlive it";
            let rows = registry::list(&txn, "", |_| true)
                .unwrap_or_else(|e| ctx.fail(Some(id), name, e.to_string()));
            let mut bound: BTreeMap<&str, u64> = BTreeMap::new();
            for row in rows.iter().filter(|r| !r.session.is_empty()) {
                *bound.entry(&row.session).or_default() += 1;
                if !matches!(fsm::sessions::read(&txn, &row.session), Ok(Some(_))) {
                    ctx.fail(
                        Some(id),
                        name,
                        format!(
                            "at applied index {}, {} is bound to session {}, which is not live",
                            core.status().applied.index,
                            show_row(row),
                            row.session
                        ),
                    );
                }
            }
            for session in &self.sessions {
                let counted = registry::count_of(&txn, session)
                    .unwrap_or_else(|e| ctx.fail(Some(id), name, e.to_string()));
                let listed = bound.get(session.as_str()).copied().unwrap_or(0);
                if counted != listed {
                    ctx.fail(
                        Some(id),
                        name,
                        format!(
                            "at applied index {}, count_of({session}) is {counted}, but {listed} instances are bound to it",
                            core.status().applied.index
                        ),
                    );
                }
            }
        }
        self.dirty.clear();
    }

    /// The leader-change runs' checks at `ctx.time_us` (see the module doc): the instance of a
    /// heartbeater that never stops is never critical, and (when asked) once one stopped, its
    /// instance turns critical within `extra_us(applied)` past the TTL, its last heartbeat
    /// first applied at `applied`.
    pub fn check_bounds(
        &self,
        ctx: Ctx,
        heartbeaters: &[Heartbeater],
        keepers: &[Keeper],
        extra_us: impl Fn(u64) -> u64,
    ) {
        for h in heartbeaters.iter().filter(|h| !h.ever_stops(keepers)) {
            if let Some((index, what)) = self.troubles.get(&h.key()) {
                ctx.fail(
                    None,
                    "registry: an instance heartbeat in time stays passing",
                    format!(
                        "{} ({} ms TTL, a heartbeat every {} ms) {what} at index {index}, yet its heartbeater never \
                         stops",
                        show(&h.key()),
                        h.spec.ttl_ms,
                        h.spec.interval_us / 1_000
                    ),
                );
            }
        }
        for h in heartbeaters.iter().filter(|h| h.stopped(ctx.time_us, keepers)) {
            let key = h.key();
            let Some(story) = self.story.get(&key) else { continue };
            // The last registration or heartbeat applied, unless a critical turn or a removal
            // came after it.
            let last = story.values().next_back();
            let Some(&Story::Beat { applied_us, sent_us, .. }) = last else { continue };
            let extra_us = extra_us(applied_us);
            let deadline = applied_us + h.spec.ttl_ms * 1_000 + extra_us;
            if ctx.time_us > deadline {
                ctx.fail(
                    None,
                    "registry: critical within TTL + 2 election timeouts once heartbeats stop",
                    format!(
                        "{}: its last heartbeat (sent t={:.3}s, TTL {} ms) was first applied at t={:.3}s, its \
                         heartbeater stopped, and it still passes at t={:.3}s (bound: {} ms past the TTL)",
                        show(&key),
                        sent_us as f64 / 1e6,
                        h.spec.ttl_ms,
                        applied_us as f64 / 1e6,
                        ctx.time_us as f64 / 1e6,
                        extra_us / 1_000
                    ),
                );
            }
        }
    }
}

/// The session `story`'s instance is bound to just before log index `index`, if it exists.
fn bound_to(story: &BTreeMap<u64, Story>, index: u64) -> Option<&str> {
    story.range(..index).rev().find_map(|(_, s)| match s {
        Story::Beat { session, .. } => Some((!session.is_empty()).then_some(session.as_str())),
        Story::Removed => Some(None),
        Story::Critical { .. } => None,
    })?
}

/// A turn to critical at `a.index`, first applied now: not before the TTL has passed since the
/// latest sending of a registration or heartbeat applied before it.
fn never_critical_early(
    ctx: Ctx,
    node: u64,
    a: &AppliedCommand,
    key: &[u8],
    story: &BTreeMap<u64, Story>,
    row: Option<&InstanceRow>,
) {
    let name = "registry: never critical before its TTL since a heartbeat was sent";
    let Some(row) = row.filter(|r| r.health == Health::Critical as i32) else {
        ctx.fail(
            Some(node),
            name,
            format!("{} turned critical by {:?}: {:?}", show(key), a.request_id, a.outcome),
        )
    };
    let ttl_ms = row.check.as_ref().map_or(0, |c| c.ttl_ms);
    let latest = story
        .range(..a.index)
        .filter_map(|(i, s)| match s {
            Story::Beat { sent_us, .. } => Some((*sent_us, *i)),
            _ => None,
        })
        .max();
    let Some((sent_us, beat_index)) = latest else {
        ctx.fail(
            Some(node),
            name,
            format!("{} turned critical at index {} with no registration applied", show(key), a.index),
        )
    };
    // Members' clocks read whole milliseconds: one may act 1 ms early by the virtual clock.
    if ctx.time_us + 1_000 < sent_us + ttl_ms * 1_000 {
        ctx.fail(
            Some(node),
            name,
            format!(
                "{} ({ttl_ms} ms TTL) turned critical at index {} (revision {}, by {}) at t={:.3}s, but a heartbeat \
                 or registration sent at t={:.3}s was applied before it (index {beat_index}): {} ms early",
                show(key),
                a.index,
                a.outcome.revision,
                a.request_id,
                ctx.time_us as f64 / 1e6,
                sent_us as f64 / 1e6,
                (sent_us + ttl_ms * 1_000 - ctx.time_us) / 1_000
            ),
        );
    }
}

/// A reap at `a.index`, first applied now: of a critical instance, not before its
/// `deregister_after_ms` has passed since the first member applied its turn to critical.
fn never_reaped_early(ctx: Ctx, node: u64, a: &AppliedCommand, key: &[u8], story: &BTreeMap<u64, Story>) {
    let name = "registry: never reaped before deregister_after since it turned critical";
    match story.range(..a.index).next_back() {
        Some((&at, &Story::Critical { revision, applied_us, deregister_after_ms })) => {
            if ctx.time_us + 1_000 < applied_us + deregister_after_ms * 1_000 {
                ctx.fail(
                    Some(node),
                    name,
                    format!(
                        "{} (deregister after {deregister_after_ms} ms) turned critical at index {at} (revision \
                         {revision}) first applied at t={:.3}s, and was reaped at index {} (by {}) at t={:.3}s",
                        show(key),
                        applied_us as f64 / 1e6,
                        a.index,
                        a.request_id,
                        ctx.time_us as f64 / 1e6
                    ),
                );
            }
        }
        other => ctx.fail(
            Some(node),
            name,
            format!(
                "{} was removed at index {} (by {}) while not critical: its last change before was {other:?}",
                show(key),
                a.index,
                a.request_id
            ),
        ),
    }
}

fn show(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

fn show_row(row: &InstanceRow) -> String {
    row.instance.as_ref().map_or_else(|| "?".into(), |i| format!("{}/{}", i.service, i.id))
}

/// A verdict counted for one registration never lands on the next registration of the same
/// instance. The leader proposes `MarkCritical` from its applied state; a deregistration and a
/// new registration already in its log ahead of the verdict (not yet applied by it — not
/// committed yet here; in production the apply thread also lags) reset the heartbeat count to
/// the same 0, so a verdict that named only the count, applied after them, turned the
/// registration made a moment before CRITICAL: critical with no TTL passed since it was sent
/// (never-critical-early, above). Fixed by `MarkCritical` naming the registration it counted
/// (`registered_revision`, as `SetHealth` does); this pins it.
#[test]
fn a_stale_verdict_never_turns_a_new_registration_of_the_instance_critical() {
    use crate::scripted::{all, Answer, Route, Scripted};
    use latch_proto::internal::{Command, Deregister};
    use raft::eraftpb::{Message, MessageType};

    let command = |request_id: &str, body: Body| Command {
        version: fsm::COMMAND_VERSION,
        request_id: request_id.into(),
        body: Some(body),
    };
    let register = |request_id: &str| {
        let body = Body::Register(Register {
            instance: Some(Instance {
                service: SERVICE.into(),
                id: "x".into(),
                address: "10.0.0.1".into(),
                ..Default::default()
            }),
            session: String::new(),
            check: Some(Check {
                kind: check::Kind::Ttl as i32,
                ttl_ms: 1_000,
                deregister_after_ms: 60_000,
                ..Default::default()
            }),
        });
        command(request_id, body)
    };
    let mut s = Scripted::new(3, 23);
    for id in 1..=3 {
        s.core(id).set_clock(10_000);
    }
    s.until("a leader", 200, &mut all, &mut |s| s.leader().is_some());
    let leader = s.leader().expect("a leader");
    let first = s.propose(leader, register("register-1"));
    s.until("the first registration applied", 200, &mut all, &mut |s| s.answer(first).is_some());
    for _ in 0..5 {
        s.round(&mut all);
    }
    // The leader's appends are held: what follows is in its log, neither committed nor applied.
    let mut hold = |m: &Message| {
        if m.get_msg_type() == MessageType::MsgAppend && m.from == leader {
            Route::Hold
        } else {
            Route::Deliver
        }
    };
    let deregister = s.propose(
        leader,
        command("deregister-1", Body::Deregister(Deregister { service: SERVICE.into(), id: "x".into() })),
    );
    let again = s.propose(leader, register("register-2"));
    s.round(&mut hold);
    // The first registration's TTL runs out on the leader's clock: its verdict goes in the log
    // after the new registration.
    s.core(leader).set_clock(11_001);
    s.round(&mut hold);
    for f in (1..=3).filter(|&f| f != leader) {
        s.deliver_held(MessageType::MsgAppend, f);
    }
    s.until("the deregistration and the new registration applied", 200, &mut all, &mut |s| {
        s.answer(deregister).is_some() && s.answer(again).is_some()
    });
    for _ in 0..5 {
        s.round(&mut all);
    }
    assert!(
        matches!(s.answer(again), Some(Answer::Applied(Ok(_)))),
        "registered again: {:?}",
        s.answer(again)
    );
    for id in 1..=3 {
        let txn = s.core(id).state_db().begin_read().expect("a read transaction begins");
        let row = registry::get(&txn, SERVICE, "x").expect("get succeeds").expect("registered again");
        assert!(
            registry::is_passing(&row),
            "member {id}: the registration applied at the leader's clock 11001 (TTL 1000 ms) is already \
             critical, by the verdict counted for the registration before it: {row:?}"
        );
    }
}

/// The checker itself, on hand-made applied commands: it accepts what the rules allow and
/// fails what they forbid.
mod checker {
    use super::*;
    use latch::fsm::InstanceChange;
    use latch_proto::internal::RegistryResult;

    const KEY: &[u8] = b"svc/hb-0";

    fn ctx(ms: u64) -> Ctx {
        Ctx { seed: 0, step: 0, time_us: ms * 1_000 }
    }

    fn row(session: &str, critical_since: i64) -> InstanceRow {
        InstanceRow {
            instance: Some(Instance { service: SERVICE.into(), id: "hb-0".into(), ..Default::default() }),
            session: session.into(),
            check: Some(Check {
                kind: check::Kind::Ttl as i32,
                ttl_ms: 1_000,
                deregister_after_ms: 2_000,
                ..Default::default()
            }),
            health: if critical_since == 0 { Health::Passing } else { Health::Critical } as i32,
            critical_since,
            ..Default::default()
        }
    }

    /// The command at `index` (revision = index): its outcome's row, and its one change of
    /// the instance (`None`: removed).
    fn cmd(
        index: u64,
        request_id: &str,
        row: Option<InstanceRow>,
        timer: Option<InstanceTimer>,
    ) -> AppliedCommand {
        AppliedCommand {
            index,
            term: 1,
            request_id: request_id.into(),
            command_hash: 0,
            outcome: Outcome {
                revision: index as i64,
                result: Some(outcome::Result::Registry(RegistryResult {
                    instance: row.map(Box::new),
                    changed: true,
                })),
                ..Default::default()
            },
            events: Vec::new(),
            sessions: Vec::new(),
            locks: Vec::new(),
            instances: vec![InstanceChange { key: KEY.to_vec(), timer }],
        }
    }

    fn beat(index: u64, request_id: &str, session: &str) -> AppliedCommand {
        cmd(
            index,
            request_id,
            Some(row(session, 0)),
            Some(InstanceTimer::Heartbeat { ttl_ms: 1_000, beats: 0, registered_revision: 0 }),
        )
    }

    fn critical(index: u64) -> AppliedCommand {
        let timer = InstanceTimer::Reap { since_revision: index as i64, after_ms: 2_000 };
        cmd(index, "member-1-0-1", Some(row("", index as i64)), Some(timer))
    }

    /// A registration sent at 0 ms, applied at 5 ms, as index 1.
    fn registered(session: &str) -> RegistryChecker {
        let mut c = RegistryChecker::default();
        c.sent("r1", KEY.to_vec(), true, 0);
        c.applied(ctx(5), 1, &[beat(1, "r1", session)]);
        c
    }

    #[test]
    fn a_critical_turn_a_ttl_after_the_last_heartbeat_was_sent_and_a_reap_after_its_time_pass() {
        let mut c = registered("");
        c.applied(ctx(999), 1, &[critical(2)]);
        c.applied(ctx(2_998), 1, &[cmd(3, "member-1-0-2", None, None)]);
        assert_eq!((c.criticals, c.reaps), (1, 1));
    }

    #[test]
    #[should_panic(expected = "never critical before its TTL since a heartbeat was sent")]
    fn a_critical_turn_counted_from_a_registration_replaced_since_fails() {
        let mut c = registered("");
        c.sent("d1", KEY.to_vec(), false, 600_000);
        c.applied(ctx(601), 1, &[cmd(2, "d1", None, None)]);
        c.sent("r2", KEY.to_vec(), true, 700_000);
        c.applied(ctx(701), 1, &[beat(3, "r2", "")]);
        c.applied(ctx(1_001), 1, &[critical(4)]);
    }

    #[test]
    #[should_panic(expected = "never reaped before deregister_after since it turned critical")]
    fn an_early_reap_fails() {
        let mut c = registered("");
        c.applied(ctx(1_000), 1, &[critical(2)]);
        c.applied(ctx(2_500), 1, &[cmd(3, "member-1-0-2", None, None)]);
    }

    #[test]
    #[should_panic(expected = "never reaped before deregister_after since it turned critical")]
    fn a_reap_of_a_passing_instance_fails() {
        let mut c = registered("");
        c.applied(ctx(5_000), 1, &[cmd(2, "member-1-0-2", None, None)]);
    }

    #[test]
    #[should_panic(expected = "a session's end removes its instances in its revision")]
    fn a_session_end_that_leaves_its_instance_fails() {
        let mut c = registered("s1");
        let mut end = cmd(2, "member-1-0-2", None, None);
        end.outcome.result = None;
        end.instances.clear();
        end.sessions.push(SessionChange::Ended { id: "s1".into() });
        c.applied(ctx(3_000), 1, &[end]);
    }
}
