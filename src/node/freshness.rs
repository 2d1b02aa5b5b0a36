//! Whether this member is in touch with a leader: one ReadIndex at a time, every so often,
//! shared by everything on the member that must not serve a cut-off member's state as current
//! for long: DNS answers (`--dns-max-stale`), watch streams, waiting acquires and election
//! observers.
//!
//! A member cut off from the leader applies nothing new, and nothing on it says so: it would
//! answer its old state and stream nothing, silently. Each of those once ran a ReadIndex of its
//! own every [`CHECK_EVERY`]; with 10,000 watch streams that was 5,000 ReadIndex rounds a
//! second for the cluster, to learn one fact about the member. Now the member learns it once
//! and each asks [`Freshness::cut_off`], a load of two atomics.
//!
//! Invariants:
//! - `confirmed` only grows, and is when a ReadIndex was *asked* that then succeeded: the
//!   member's state was as new as the leader's commit at that instant, so `stale_for` never
//!   understates how far behind it may be.
//! - `refused` (a check refused as overloaded: the member is busy, not cut off) only grows; it
//!   spares streams and waits, never DNS (an overloaded member confirmed nothing).
//! - One check is in flight at a time: one a period while they succeed, one every
//!   [`RETRY_EVERY`] while they fail, so a member back in touch says so within that.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::core::RequestError;

/// How long one check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The period of checks while they succeed, at most (DNS may ask for less: a quarter of its
/// `--dns-max-stale`).
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// The period of checks while they fail.
pub const RETRY_EVERY: Duration = Duration::from_millis(100);
/// How long a member may go without a confirmation before streams and waits on it end (their
/// clients go on through another member): two failed checks of [`CHECK_TIMEOUT`] in a row. One
/// is forgiven, an election under way.
pub const CUT_OFF_AFTER: Duration = Duration::from_secs(4);

pub struct Freshness {
    member: u64,
    base: Instant,
    /// Milliseconds since `base` (+1; 0: never) when the last ReadIndex that succeeded was asked.
    confirmed: AtomicU64,
    /// Likewise, for the last check refused as overloaded.
    refused: AtomicU64,
    /// Why the last check failed, while they fail.
    failure: Mutex<Option<String>>,
}

impl Freshness {
    pub fn new(member: u64) -> Freshness {
        Freshness {
            member,
            base: Instant::now(),
            confirmed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failure: Mutex::new(None),
        }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }

    fn since(&self, at: u64) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(at))
    }

    /// How far behind the leader the state may be: since the last confirmation was asked;
    /// `None` before the first.
    pub fn stale_for(&self) -> Option<Duration> {
        match self.confirmed.load(Ordering::Relaxed) {
            0 => None,
            at => Some(self.since(at)),
        }
    }

    /// `Some(error)` when nothing confirmed (or refused as overloaded) the member's state for
    /// longer than `after` — counted from when checking started, for a member that never
    /// confirmed — saying for how long and why: the caller ends what it serves with it.
    pub fn cut_off(&self, after: Duration) -> Option<RequestError> {
        let heard = self.confirmed.load(Ordering::Relaxed).max(self.refused.load(Ordering::Relaxed)).max(1);
        let silent = self.since(heard);
        if silent <= after {
            return None;
        }
        let why = self.failure.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Some(RequestError::CutOff {
            member: self.member,
            silent_ms: silent.as_millis() as u64,
            why: why.unwrap_or_else(|| "no check has answered".into()),
        })
    }

    /// Checks with `confirm` (a ReadIndex) every `every` while it succeeds, every
    /// [`RETRY_EVERY`] while it fails; runs until dropped.
    pub async fn keep<F, Fut>(&self, every: Duration, mut confirm: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), RequestError>>,
    {
        loop {
            let asked = self.now_ms();
            let failure = match tokio::time::timeout(CHECK_TIMEOUT, confirm()).await {
                Ok(Ok(())) => {
                    self.confirmed.fetch_max(asked, Ordering::Relaxed);
                    None
                }
                Ok(Err(RequestError::Overloaded { .. })) => {
                    self.refused.fetch_max(asked, Ordering::Relaxed);
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no leader confirmed this member's state within {CHECK_TIMEOUT:?}")),
            };
            let failed = failure.is_some();
            *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = failure;
            tokio::time::sleep(if failed { RETRY_EVERY } else { every }).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_member_is_cut_off_only_after_going_unconfirmed_longer_than_the_limit_and_says_why() {
        let fresh = Arc::new(Freshness::new(7));
        let answering = Arc::new(AtomicBool::new(true));
        let keeper = {
            let (fresh, answering) = (fresh.clone(), answering.clone());
            tokio::spawn(async move {
                fresh
                    .keep(Duration::from_secs(1), || {
                        let up = answering.load(Ordering::Relaxed);
                        async move {
                            if up {
                                Ok(())
                            } else {
                                Err(RequestError::NoLeader { member: 7 })
                            }
                        }
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(fresh.stale_for().is_some_and(|s| s < Duration::from_millis(20)), "confirmed at once");
        assert!(fresh.cut_off(CUT_OFF_AFTER).is_none());

        answering.store(false, Ordering::Relaxed);
        // Confirmed last when checking began (the next check, at 1 s, fails).
        tokio::time::sleep(Duration::from_millis(3_900)).await;
        assert!(fresh.cut_off(CUT_OFF_AFTER).is_none(), "3.9 s without a confirmation is not yet cut off");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(RequestError::CutOff { member, silent_ms, why }) = fresh.cut_off(CUT_OFF_AFTER) else {
            panic!("cut off after 4.1 s without a confirmation");
        };
        assert_eq!(member, 7);
        assert!((4_001..=4_200).contains(&silent_ms), "silent since the last confirmation: {silent_ms} ms");
        assert!(why.contains("no leader is known"), "the last check's failure: {why}");
        assert!(fresh.stale_for().is_some_and(|s| s > Duration::from_secs(4)), "DNS sees it stale too");

        answering.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(fresh.cut_off(CUT_OFF_AFTER).is_none(), "in touch again within a retry period");
        keeper.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_overloaded_check_keeps_streams_but_confirms_nothing_to_dns() {
        let fresh = Arc::new(Freshness::new(1));
        let keeper = {
            let fresh = fresh.clone();
            tokio::spawn(async move {
                fresh
                    .keep(Duration::from_secs(1), || async {
                        Err(RequestError::Overloaded { member: 1, what: "reads", limit: 1, flag: "--flag" })
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(fresh.cut_off(CUT_OFF_AFTER).is_none(), "overloaded is not cut off");
        assert_eq!(fresh.stale_for(), None, "nothing was confirmed");
        keeper.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_that_never_confirmed_is_cut_off_counting_from_when_checks_began() {
        let fresh = Arc::new(Freshness::new(2));
        let keeper = {
            let fresh = fresh.clone();
            tokio::spawn(async move {
                fresh.keep(Duration::from_secs(1), std::future::pending::<Result<(), RequestError>>).await
            })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(fresh.cut_off(CUT_OFF_AFTER).is_none(), "3 s after it began");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cut = fresh.cut_off(CUT_OFF_AFTER).map(|e| e.to_string()).unwrap_or_default();
        assert!(cut.contains("within 2s"), "the check timed out: {cut}");
        keeper.abort();
    }
}
