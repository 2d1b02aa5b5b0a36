//! By when the caller of the request a task serves must have its answer: the client port sets
//! it for each call that carries a gRPC deadline (`api::deadline`), and the node's waits
//! ([`super::NodeHandle`]) end there with why they did not end sooner.
//!
//! Without it a request the cluster cannot serve — no quorum, an election that does not end —
//! waits for the core's own request timeout (`request_timeout_ticks`, 10 s at the default
//! tick), longer than a client's usual deadline (5 s): the client gave up first and could only
//! say that no member answered, while the member it asked knew why. Now the member answers
//! first, and says what it knows.
//!
//! Invariants:
//! - Only the wait ends early. What was handed to the core stays there: a write stays proposed
//!   (and may still commit, answered from the request memory to a retry under its id), a read
//!   waits for its ReadIndex and is dropped unserved.
//! - Only the task serving the request sees its deadline (a task-local): what that task spawns,
//!   streams it opens and the member's own work (the freshness check) wait as before.

use std::future::Future;

use tokio::task::futures::TaskLocalFuture;
use tokio::time::Instant;

tokio::task_local! {
    static ANSWER_BY: Option<Instant>;
}

/// `serve`, its node waits ending by `by` (none: they wait for the core's answer).
pub fn answering_by<F: Future>(by: Option<Instant>, serve: F) -> TaskLocalFuture<Option<Instant>, F> {
    ANSWER_BY.scope(by, serve)
}

/// By when the request this task serves must be answered, if its caller said.
pub fn answer_by() -> Option<Instant> {
    ANSWER_BY.try_with(|by| *by).ok().flatten()
}
