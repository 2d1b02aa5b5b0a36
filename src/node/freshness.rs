//! Whether this member is in touch with a leader: one ReadIndex at a time, every so often,
//! shared by everything on the member that must not serve a cut-off member's state as current
//! for long: DNS answers (`--dns-max-stale`), watch streams, waiting acquires and election
//! observers.
//!
//! A member cut off from the leader applies nothing new, and nothing on it says so: it would
//! answer its old state and stream nothing, silently. Each of those once ran a ReadIndex of its
//! own every 2 s; with 10,000 watch streams that was 5,000 ReadIndex rounds a
//! second for the cluster, to learn one fact about the member. Now the member learns it once
//! and each asks [`Freshness::cut_off`], a load of an atomic.
//!
//! Invariants:
//! - `confirmed` only grows, and is when a ReadIndex was *asked* that then succeeded: the
//!   member's state was as new as the leader's commit at that instant, so `stale_for` (DNS)
//!   never understates how far behind it may be.
//! - `answered` only grows, and is when a check last succeeded. A member in touch is never
//!   silent for longer than the period plus [`CHECK_TIMEOUT`] (3 s), so [`CUT_OFF_AFTER`] cuts
//!   off only a member whose checks fail or go unanswered: a slow check is not a failed one.
//!   Nor is an election: a member is cut off only after two of the longest elections its
//!   `--tick-interval` allows, when that is longer ([`Freshness::new`]).
//! - One check is awaited at a time: one a period while they succeed, one every
//!   [`RETRY_EVERY`] while they fail, so a member back in touch says so within that.
//! - What waits for a cut-off ([`Freshness::until_cut_off`]) is told by the keeper the moment
//!   the member is cut off, through one `watch` channel: a waiter holds a registration in it,
//!   not a timer of its own, and the channel says `true` only while [`Freshness::cut_off`]
//!   would say so (or for the instant between a check answering and the keeper clearing it). A check
//!   given up after [`CHECK_TIMEOUT`] stays with the raft thread until its request timeout
//!   (`request_timeout_ticks`, 10 s at the default tick), so a member cut off holds a handful
//!   of them (about five), each a few bytes. The check is never refused for the client
//!   requests the member holds (`NodeHandle::read_index_for_freshness`): those fill up
//!   exactly when it is cut off.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::core::RequestError;

/// How long one check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The period of checks while they succeed, at most (DNS may ask for less: a quarter of its
/// `--dns-max-stale`).
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// The period of checks while they fail.
pub const RETRY_EVERY: Duration = Duration::from_millis(100);
/// How long a member may go without a check answering before watch streams, waiting acquires
/// and election observers on it end (their clients go on through another member): longer than
/// a member in touch is ever silent (a period and a whole [`CHECK_TIMEOUT`]), so that only a
/// member whose checks fail for about two timeouts is cut off. The least: a slow tick makes it
/// longer ([`Freshness::new`]).
pub const CUT_OFF_AFTER: Duration = Duration::from_secs(5);

pub struct Freshness {
    member: u64,
    /// [`CUT_OFF_AFTER`], or two of the member's longest elections if that is longer.
    cut_off_after: Duration,
    base: Instant,
    /// Milliseconds since `base` (+1; 0: never) when the last ReadIndex that succeeded was asked.
    confirmed: AtomicU64,
    /// Likewise, when the last check succeeded.
    answered: AtomicU64,
    /// Why the last check failed, until one succeeds.
    failure: Mutex<Option<String>>,
    /// Whether the member is cut off, as the keeper last announced it.
    cut: watch::Sender<bool>,
}

impl Freshness {
    /// The check of `member`, whose longest election (raft's randomized election timeout at
    /// its most, `2 × election_tick` ticks) is `longest_election`: while the cluster elects a
    /// leader every check fails, and an election, even one that takes two rounds, is not being
    /// cut off.
    pub fn new(member: u64, longest_election: Duration) -> Freshness {
        Freshness {
            member,
            cut_off_after: CUT_OFF_AFTER.max(longest_election.saturating_mul(2)),
            base: Instant::now(),
            confirmed: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            failure: Mutex::new(None),
            cut: watch::Sender::new(false),
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

    /// `Some(error)` when no check answered for longer than [`CUT_OFF_AFTER`] (or two
    /// elections, see [`Freshness::new`]) — counted from
    /// when the member began checking, for one that never confirmed — saying for how long and
    /// why: the caller ends what it serves with it.
    pub fn cut_off(&self) -> Option<RequestError> {
        let silent = self.since(self.answered.load(Ordering::Relaxed).max(1));
        if silent <= self.cut_off_after {
            return None;
        }
        let why = self.failure.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Some(RequestError::CutOff {
            member: self.member,
            silent_ms: silent.as_millis() as u64,
            why: why.unwrap_or_else(|| "a check is in flight, unanswered".into()),
        })
    }

    /// Resolves, with what [`Freshness::cut_off`] says, as soon as the keeper
    /// ([`Freshness::keep`]) announces the member cut off — at once if it is now. For what
    /// serves a member's state for long (a waiting acquire, an election's observer): pin it
    /// once and select on it across their wake-ups. Costs a registration in a channel, no timer.
    pub async fn until_cut_off(&self) -> RequestError {
        let mut cut = self.cut.subscribe();
        loop {
            if cut.wait_for(|&cut| cut).await.is_err() {
                // The sender is part of `self`, which this borrow keeps alive.
                std::future::pending::<()>().await;
            }
            if let Some(cut_off) = self.cut_off() {
                return cut_off;
            }
            // A check answered since the announcement: wait for the next one.
            let _ = cut.changed().await;
        }
    }

    /// Checks with `confirm` (a ReadIndex) every `every` while it succeeds, every
    /// [`RETRY_EVERY`] while it fails, and announces the cut-off to
    /// [`Freshness::until_cut_off`] the moment it begins; runs until dropped.
    pub async fn keep<F, Fut>(&self, every: Duration, confirm: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), RequestError>>,
    {
        tokio::join!(self.check(every, confirm), self.announce_cut_offs());
    }

    /// Sleeps until the instant the member would be cut off if no check answers before it;
    /// then, if none did, announces it, and waits for a check to answer.
    async fn announce_cut_offs(&self) {
        let mut cut = self.cut.subscribe();
        loop {
            let answered = self.answered.load(Ordering::Relaxed).max(1);
            // `now_ms` counts from 1: past this instant, `cut_off` finds the silence longer
            // than the limit (a check answering meanwhile moves the instant on).
            let cut_at = self.base + Duration::from_millis(answered + 1) + self.cut_off_after;
            tokio::time::sleep_until(cut_at).await;
            if self.cut_off().is_some() {
                self.cut.send_replace(true);
                if cut.wait_for(|&cut| !cut).await.is_err() {
                    return;
                }
            }
        }
    }

    async fn check<F, Fut>(&self, every: Duration, mut confirm: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), RequestError>>,
    {
        loop {
            let asked = self.now_ms();
            let failure = match tokio::time::timeout(CHECK_TIMEOUT, confirm()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no leader confirmed this member's state within {CHECK_TIMEOUT:?}")),
            };
            let failed = failure.is_some();
            match failure {
                None => {
                    // The reason goes first: a cut-off that reads the timestamps before these
                    // stores and the reason after gives at worst no reason, never an old one.
                    *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = None;
                    self.confirmed.fetch_max(asked, Ordering::Relaxed);
                    self.answered.fetch_max(self.now_ms(), Ordering::Relaxed);
                    self.cut.send_if_modified(|cut| std::mem::replace(cut, false));
                }
                Some(why) => *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(why),
            }
            tokio::time::sleep(if failed { RETRY_EVERY } else { every }).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn keeper<F, Fut>(fresh: &Arc<Freshness>, confirm: F) -> tokio::task::JoinHandle<()>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), RequestError>> + Send,
    {
        let fresh = fresh.clone();
        tokio::spawn(async move { fresh.keep(CHECK_EVERY, confirm).await })
    }

    /// A keeper of `fresh` whose checks answer while `answering` says so, and fail (no leader
    /// known to `member`) while not.
    fn switchable_keeper(
        fresh: &Arc<Freshness>,
        member: u64,
        answering: &Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<()> {
        let up = answering.clone();
        keeper(fresh, move || {
            let up = up.load(Ordering::Relaxed);
            async move {
                if up {
                    Ok(())
                } else {
                    Err(RequestError::NoLeader { member })
                }
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_is_cut_off_only_after_no_check_answered_longer_than_the_limit_and_says_why() {
        let fresh = Arc::new(Freshness::new(7, Duration::from_secs(1)));
        let answering = Arc::new(AtomicBool::new(true));
        let keeper = switchable_keeper(&fresh, 7, &answering);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(fresh.stale_for().is_some_and(|s| s < Duration::from_millis(20)), "confirmed at once");
        assert!(fresh.cut_off().is_none());

        // Answered last when checking began (the next check, at 1 s, fails).
        answering.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(4_890)).await;
        assert!(fresh.cut_off().is_none(), "4.9 s without an answer is not yet cut off");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(RequestError::CutOff { member, silent_ms, why }) = fresh.cut_off() else {
            panic!("cut off after 5.1 s without an answer");
        };
        assert_eq!(member, 7);
        assert!((5_001..=5_200).contains(&silent_ms), "silent since the last answer: {silent_ms} ms");
        assert!(why.contains("no leader is known"), "the last check's failure: {why}");
        assert!(fresh.stale_for().is_some_and(|s| s > Duration::from_secs(5)), "DNS sees it stale too");

        answering.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(fresh.cut_off().is_none(), "in touch again within a retry period");
        keeper.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_hears_of_the_cut_off_the_moment_it_begins() {
        let fresh = Arc::new(Freshness::new(3, Duration::from_secs(1)));
        // Never answered: cut off 5 s after checking began.
        let keeper = keeper(&fresh, || async { Err(RequestError::NoLeader { member: 3 }) });
        let started = Instant::now();
        let waiter = fresh.clone();
        let cut_off = tokio::spawn(async move { waiter.until_cut_off().await });
        tokio::time::sleep(Duration::from_millis(4_990)).await;
        assert!(!cut_off.is_finished(), "4.99 s without an answer is not yet cut off");
        let Ok(Ok(RequestError::CutOff { member, .. })) =
            tokio::time::timeout(Duration::from_secs(60), cut_off).await
        else {
            panic!("the waiter ends with the cut-off, within a minute");
        };
        assert_eq!(member, 3);
        let heard = started.elapsed();
        assert!(
            heard > CUT_OFF_AFTER && heard <= CUT_OFF_AFTER + Duration::from_millis(5),
            "heard as the cut-off began (5 s), not at a look of its own: {heard:?}"
        );
        keeper.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_on_a_cut_off_member_hears_at_once_and_one_back_in_touch_waits_for_the_next_cut_off() {
        let fresh = Arc::new(Freshness::new(4, Duration::from_secs(1)));
        let answering = Arc::new(AtomicBool::new(false));
        let keeper = switchable_keeper(&fresh, 4, &answering);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let asked = Instant::now();
        assert!(
            matches!(
                tokio::time::timeout(Duration::from_secs(60), fresh.until_cut_off()).await,
                Ok(RequestError::CutOff { member: 4, .. })
            ),
            "a member cut off for 1 s tells a new waiter"
        );
        assert_eq!(asked.elapsed(), Duration::ZERO, "at once");

        answering.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let waiter = fresh.clone();
        let cut_off = tokio::spawn(async move { waiter.until_cut_off().await });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!cut_off.is_finished(), "in touch again: a new waiter waits");

        // The next check (at most a second away) fails: cut off 5 s after the last answer.
        answering.store(false, Ordering::Relaxed);
        let stopped = Instant::now();
        assert!(
            matches!(
                tokio::time::timeout(Duration::from_secs(60), cut_off).await,
                Ok(Ok(RequestError::CutOff { member: 4, .. }))
            ),
            "cut off again, within a minute"
        );
        let heard = stopped.elapsed();
        assert!(
            heard > Duration::from_secs(4) && heard <= CUT_OFF_AFTER + Duration::from_millis(5),
            "5 s after the last answer, which came at most 1 s before the checks failed: {heard:?}"
        );
        keeper.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_whose_checks_are_slow_but_answer_is_never_cut_off() {
        let fresh = Arc::new(Freshness::new(1, Duration::from_secs(1)));
        let keeper = keeper(&fresh, || async {
            tokio::time::sleep(CHECK_TIMEOUT - Duration::from_millis(50)).await;
            Ok(())
        });
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(fresh.cut_off().map(|e| e.to_string()), None, "answered every 2.95 s");
        }
        assert!(fresh.stale_for().is_some_and(|s| s <= Duration::from_millis(2_950 + 1_950)));
        keeper.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_that_never_confirmed_is_cut_off_counting_from_when_checks_began() {
        let fresh = Arc::new(Freshness::new(2, Duration::from_secs(1)));
        let keeper = keeper(&fresh, std::future::pending::<Result<(), RequestError>>);
        tokio::time::sleep(Duration::from_millis(4_900)).await;
        assert!(fresh.cut_off().is_none(), "4.9 s after it began");
        assert_eq!(fresh.stale_for(), None, "nothing confirmed: DNS answers SERVFAIL");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cut = fresh.cut_off().map(|e| e.to_string()).unwrap_or_default();
        assert!(cut.contains("within 2s"), "the check timed out: {cut}");
        keeper.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_with_a_slow_tick_is_not_cut_off_while_two_of_its_elections_may_last() {
        // --tick-interval 500ms: an election may take up to 20 ticks, 10 s.
        let fresh = Arc::new(Freshness::new(3, Duration::from_secs(10)));
        let keeper = keeper(&fresh, || async { Err(RequestError::NoLeader { member: 3 }) });
        tokio::time::sleep(Duration::from_millis(19_900)).await;
        assert!(fresh.cut_off().is_none(), "19.9 s without a leader: two elections may take 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(fresh.cut_off().is_some(), "cut off after 20.1 s without a leader");
        keeper.abort();
    }
}
