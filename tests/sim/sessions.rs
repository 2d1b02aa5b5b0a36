//! Session keepers and the lease rule (DESIGN.md §1 Sessions; docs/sessions.md) in the
//! simulator. A keeper creates a session, keeps it alive as the Rust client does (every third
//! of its TTL, at the leader a member names), and in some runs stops at a drawn time: as a
//! client that died (its session expires), or as one that closes its session on the way out
//! (`CloseSession`, retried until answered; an expiry may still come first).
//!
//! What is checked:
//! - Never early: no member applies the end of a session before every lease granted to it has
//!   run out (a grant counts from when its keepalive was sent; a creation from when it was first
//!   sent), and no grant reaches past an end already applied — unless its client closed it.
//! - Never late (runs that ask for it, on a network that delays but loses nothing):
//!   once a keeper stops, its session ends within its TTL plus two of the longest election
//!   timeouts, plus the message round trips of one election and two commits, of its last
//!   keepalive; a keeper that never stops never loses its session.

use std::collections::BTreeMap;

use crate::invariants::Ctx;

/// One simulated client that owns a session.
#[derive(Debug, Clone)]
pub struct Keeper {
    /// The session's id, chosen before the first create attempt (a retry proposes the same).
    pub session: String,
    pub request_id: String,
    pub ttl_ms: u64,
    /// When the first create attempt was sent (the creation's lease counts from it).
    pub create_sent_us: Option<u64>,
    pub created: bool,
    /// The member it believes leads.
    pub target: u64,
    /// Attempt number of the call in flight, if any.
    pub attempt: u64,
    pub in_flight: bool,
    /// When it stops keeping alive (a dead client, or one that closes its session: `closes`),
    /// if it does.
    pub stop_at_us: Option<u64>,
    /// Whether, once stopped, it closes its session (a client shutting down) instead of
    /// leaving it to expire.
    pub closes: bool,
    /// Its close was answered (the session closed, or already gone).
    pub closed: bool,
    /// When it sent its last keepalive.
    pub last_sent_us: u64,
    /// The cluster said the session is gone.
    pub gone: bool,
}

impl Keeper {
    pub fn new(index: usize, ttl_ms: u64, stop_at_us: Option<u64>, closes: bool, target: u64) -> Keeper {
        Keeper {
            session: format!("session-{index}"),
            request_id: format!("create-session-{index}"),
            ttl_ms,
            create_sent_us: None,
            created: false,
            target,
            attempt: 0,
            in_flight: false,
            stop_at_us,
            closes,
            closed: false,
            last_sent_us: 0,
            gone: false,
        }
    }

    pub fn stopped(&self, now: u64) -> bool {
        self.stop_at_us.is_some_and(|t| now >= t)
    }

    /// The request id of its close: a command carrying it ends the session the normal way.
    pub fn close_request_id(session: &str) -> String {
        format!("{CLOSE_PREFIX}{session}")
    }
}

/// How the request ids of keepers' closes begin.
const CLOSE_PREFIX: &str = "close-";

/// Whether a command under `request_id` is a keeper's close of its session.
pub fn is_close(request_id: &str) -> bool {
    request_id.starts_with(CLOSE_PREFIX)
}

/// The leases granted and the ends applied, per session.
#[derive(Debug, Default)]
pub struct LeaseChecker {
    /// Latest end of any lease granted (virtual µs), per session.
    promised: BTreeMap<String, u64>,
    /// When a member first applied the session's end.
    ended: BTreeMap<String, u64>,
    /// Sessions their clients closed (a close may come while a lease runs), each with the
    /// members that applied its close: none of them may grant it a lease afterwards (one that
    /// has not applied it yet may). A close is told after the grants of its own apply batch
    /// (`Sim::sessions_ended`).
    closed_on: BTreeMap<String, std::collections::BTreeSet<u64>>,
    pub grants: u64,
    pub expiries: u64,
}

impl LeaseChecker {
    /// A lease granted to `session` that the client counts until `until`.
    pub fn granted(&mut self, ctx: Ctx, node: u64, session: &str, until: u64) {
        self.grants += 1;
        if self.closed_on.get(session).is_some_and(|on| on.contains(&node)) {
            ctx.fail(
                Some(node),
                "sessions: a closed session is granted nothing",
                format!(
                    "{session} was granted a lease to t={:.3}s after its close applied here",
                    until as f64 / 1e6
                ),
            );
        }
        if let Some(&ended) = self.ended.get(session).filter(|_| !self.closed_on.contains_key(session)) {
            if until > ended {
                ctx.fail(
                    Some(node),
                    "sessions: never expired early",
                    format!(
                        "{session} was granted a lease to t={:.3}s, but its end was applied at t={:.3}s",
                        until as f64 / 1e6,
                        ended as f64 / 1e6
                    ),
                );
            }
        }
        let p = self.promised.entry(session.to_string()).or_insert(0);
        *p = (*p).max(until);
    }

    /// A member applied the end of `session` at `now`: its client's close (`closed`), or an
    /// expiry.
    pub fn ended(&mut self, ctx: Ctx, node: u64, session: &str, closed: bool, now: u64) {
        if closed {
            self.closed_on.entry(session.to_string()).or_default().insert(node);
        }
        let promised = self.promised.get(session).copied().unwrap_or(0);
        if now < promised && !self.closed_on.contains_key(session) {
            ctx.fail(
                Some(node),
                "sessions: never expired early",
                format!(
                    "the end of {session} was applied at t={:.3}s, before the lease granted to t={:.3}s ran out",
                    now as f64 / 1e6,
                    promised as f64 / 1e6
                ),
            );
        }
        if !self.ended.contains_key(session) {
            self.expiries += u64::from(!closed);
            self.ended.insert(session.to_string(), now);
        }
    }

    /// Sessions their clients closed.
    pub fn closes(&self) -> u64 {
        self.closed_on.len() as u64
    }

    pub fn ended_at(&self, session: &str) -> Option<u64> {
        self.ended.get(session).copied()
    }

    /// The never-late checks at `now`: a stopped keeper's session ends within `bound_us(last)`
    /// of its last keepalive, sent at `last`; a keeper that never stops keeps its session.
    pub fn check_bounds(&self, ctx: Ctx, keepers: &[Keeper], bound_us: impl Fn(u64) -> u64) {
        for k in keepers.iter().filter(|k| k.created) {
            let ended = self.ended_at(&k.session);
            match k.stop_at_us {
                Some(stop) if ctx.time_us >= stop => {
                    let last = k.last_sent_us.max(k.create_sent_us.unwrap_or(0));
                    let bound_us = bound_us(last);
                    if ended.is_none() && ctx.time_us > last + bound_us {
                        ctx.fail(
                            None,
                            "sessions: expired within TTL + 2 election timeouts",
                            format!(
                                "{} ({} ms TTL) was last kept alive at t={:.3}s and still lives at t={:.3}s \
                                 (bound {} ms)",
                                k.session,
                                k.ttl_ms,
                                last as f64 / 1e6,
                                ctx.time_us as f64 / 1e6,
                                bound_us / 1_000
                            ),
                        );
                    }
                }
                _ => {
                    if let Some(at) = ended {
                        ctx.fail(
                            None,
                            "sessions: a session kept alive lives",
                            format!(
                                "{} is kept alive, yet its end was applied at t={:.3}s",
                                k.session,
                                at as f64 / 1e6
                            ),
                        );
                    }
                }
            }
        }
    }
}
