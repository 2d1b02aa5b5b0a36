//! Auto-compaction of the history (`--history-retention`): the leader proposes `Compact` so
//! that about the retention is kept, in steps, through the log like any command (every member
//! compacts at the same revision; `fsm::history` removes the rows in bounded steps).
//!
//! Invariants:
//! - Never more than the retention is forgotten: by count, the target is the applied revision
//!   minus the count; by time, it is a revision this member applied at least the retention
//!   ago on its own clock — a revision is applied no earlier than it was written, so no revision
//!   younger than the retention is ever compacted, whichever member leads.
//! - Proposals come in steps (a tenth of the retention) so that compaction costs a few log
//!   entries, not one per write; a leader proposes anew after a change of leadership (a lost
//!   proposal is then made again; a stale one is refused by the fsm, harmlessly).
//! - What it holds is bounded: about ten clock samples.

use std::collections::VecDeque;
use std::time::Duration;

/// How much history a cluster keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Everything: nothing is compacted but by an explicit `Compact`.
    All,
    /// The newest this many revisions.
    Revisions(u64),
    /// The revisions of about this long.
    Duration(Duration),
}

impl Retention {
    pub const DEFAULT: Retention = Retention::Revisions(100_000);

    /// `0` (all), a number of revisions, or a humantime duration.
    pub fn parse(s: &str) -> Result<Retention, String> {
        match s.trim().parse::<u64>() {
            Ok(0) => Ok(Retention::All),
            Ok(n) if n > i64::MAX as u64 => Err(format!("{n} revisions is more than a revision can count")),
            Ok(n) => Ok(Retention::Revisions(n)),
            Err(_) => match humantime::parse_duration(s.trim()) {
                Ok(d) if d.is_zero() => Ok(Retention::All),
                Ok(d) => Ok(Retention::Duration(d)),
                Err(_) => Err(format!(
                    "{s:?} is neither a number of revisions (e.g. 100000) nor a duration (e.g. 1h)"
                )),
            },
        }
    }
}

#[derive(Debug)]
pub struct Compactor {
    retention: Retention,
    /// (when this member applied it, revision), oldest first, about a tenth of the retention
    /// apart (time retention only).
    samples: VecDeque<(u64, i64)>,
    /// The last target proposed in this leadership (0: none yet).
    proposed: i64,
}

impl Compactor {
    pub fn new(retention: Retention) -> Compactor {
        Compactor { retention, samples: VecDeque::new(), proposed: 0 }
    }

    /// This member applied up to `revision` at `now_ms`.
    pub fn applied(&mut self, revision: i64, now_ms: u64) {
        let Retention::Duration(d) = self.retention else { return };
        let every = (d.as_millis() as u64 / 10).max(1);
        if self.samples.back().is_none_or(|(at, _)| now_ms >= at + every) {
            self.samples.push_back((now_ms, revision));
        }
        // Keep the newest sample old enough, and what is younger.
        let horizon = now_ms.saturating_sub(d.as_millis() as u64);
        while self.samples.get(1).is_some_and(|(at, _)| *at <= horizon) {
            self.samples.pop_front();
        }
    }

    /// As leader at `now_ms`, with `revision` applied: the revision to compact to, if a step
    /// is due.
    pub fn due(&mut self, now_ms: u64, revision: i64) -> Option<i64> {
        let target = match self.retention {
            Retention::All => return None,
            Retention::Revisions(n) => {
                let step = (n / 10).max(1) as i64;
                let target = revision - n as i64;
                (target >= self.proposed + step).then_some(target)?
            }
            Retention::Duration(d) => {
                let horizon = now_ms.checked_sub(d.as_millis() as u64)?;
                let (at, target) = *self.samples.front()?;
                (at <= horizon && target > self.proposed).then_some(target)?
            }
        };
        if target < 1 {
            return None;
        }
        self.proposed = target;
        Some(target)
    }

    /// The leadership changed: a new one proposes from scratch.
    pub fn demoted(&mut self) {
        self.proposed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_count_it_keeps_the_retention_and_proposes_in_tenths() {
        let mut c = Compactor::new(Retention::Revisions(100));
        assert_eq!(c.due(0, 100), None, "nothing beyond the retention yet");
        assert_eq!(c.due(0, 109), None, "less than a step beyond it");
        assert_eq!(c.due(0, 110), Some(10), "a step beyond: compact to keep the newest 100");
        assert_eq!(c.due(0, 115), None, "the next step is not due yet");
        assert_eq!(c.due(0, 120), Some(20));
        c.demoted();
        assert_eq!(c.due(0, 121), Some(21), "a new leadership proposes at once (a lost step is made again)");
        assert_eq!(Compactor::new(Retention::All).due(0, 1_000_000), None, "`0` keeps everything");
    }

    #[test]
    fn by_time_it_compacts_only_what_this_member_applied_the_retention_ago() {
        let mut c = Compactor::new(Retention::Duration(Duration::from_secs(10)));
        for s in 0..=30u64 {
            c.applied(s as i64 * 100, s * 1000);
        }
        // At 30 s: the newest revision applied at or before 20 s is 2000.
        assert_eq!(c.due(30_000, 3000), Some(2000));
        assert_eq!(c.due(30_500, 3000), None, "nothing newer is old enough yet");
        assert!(c.samples.len() <= 12, "samples stay bounded: {}", c.samples.len());
        let mut fresh = Compactor::new(Retention::Duration(Duration::from_secs(10)));
        fresh.applied(5000, 1_000_000);
        assert_eq!(
            fresh.due(1_005_000, 5000),
            None,
            "a member that started applying 5 s ago compacts nothing, whatever the revisions' age"
        );
        assert_eq!(fresh.due(1_010_000, 5000), Some(5000));
    }
}
