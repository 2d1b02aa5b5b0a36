//! Byte budgets: what a member holds on behalf of others is bounded, and a request past the
//! bound is refused at the door rather than queued without end.
//!
//! Invariant: a [`Permit`] holds its bytes from [`Budget::try_take`] until it is dropped, and
//! whoever holds the thing it pays for (a queued event, a waiting request) holds the permit, so
//! `used` is at most `limit` plus nothing: a take that would pass the limit fails. The one
//! exception, [`Budget::take_beyond`], is for the member's own freshness checks (one awaited at
//! a time, and the few it gave up on until their request timeout; see `node::freshness`):
//! `used` passes `limit` by at most their bytes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

/// Bytes taken from a budget, given back when dropped.
#[derive(Debug)]
pub struct Permit {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget { used: AtomicUsize::new(0), limit })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes taken and not given back.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Takes `bytes`, or `None` if that would pass the limit.
    pub fn try_take(self: &Arc<Budget>, bytes: usize) -> Option<Permit> {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            let next = used.checked_add(bytes).filter(|n| *n <= self.limit)?;
            match self.used.compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(Permit { budget: self.clone(), bytes }),
                Err(now) => used = now,
            }
        }
    }
}

impl Budget {
    /// Takes `bytes` even past the limit: only for what the member must ask whatever its
    /// clients hold (its one freshness check, `node::freshness`; a member cut off from the
    /// leader fills the budget with requests nobody answers, and its check must still ask).
    pub fn take_beyond(self: &Arc<Budget>, bytes: usize) -> Permit {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        Permit { budget: self.clone(), bytes }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_refuses_what_would_pass_its_limit_and_takes_back_dropped_permits() {
        let b = Budget::new(100);
        let a = b.try_take(60).expect("60 of 100 fits");
        assert!(b.try_take(41).is_none(), "60 + 41 would pass 100");
        let c = b.try_take(40).expect("60 + 40 fits exactly");
        assert_eq!(b.used(), 100);
        drop(a);
        assert_eq!(b.used(), 40, "a dropped permit gives its bytes back");
        assert!(b.try_take(60).is_some());
        drop(c);
        assert!(b.try_take(101).is_none(), "more than the limit never fits");
    }
}
