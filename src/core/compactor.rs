//! Auto-compaction of the history (`--history-retention`, `--history-retention-bytes`): the
//! leader proposes `Compact` so that about the retention is kept, in steps, through the log
//! like any command (every member compacts at the same revision; `fsm::history` removes the
//! rows in bounded steps).
//!
//! Invariants:
//! - Never more than the retention is forgotten: by count, the target is the applied revision
//!   minus the count; by time, it is a revision this member applied at least the retention
//!   ago on its own clock — a revision is applied no earlier than it was written, so no revision
//!   younger than the retention is ever compacted, whichever member leads.
//! - By bytes, compaction starts only once the history stored is over the bound, and the
//!   target is the oldest revision after which this member saw at most the bound recorded: the
//!   history keeps all of the bound but a tenth and one apply batch. A member that started (or
//!   installed a snapshot) recently has not seen the older revisions recorded; it compacts them
//!   all (keeping what it saw) once it has seen nine tenths of the bound recorded, or at once
//!   when the history, its compacted rows purged, is over twice the bound: right after such a
//!   member starts leading, the history may hold up to about three times the bound.
//! - Where both bounds apply, the one that compacts more wins.
//! - Proposals come in steps (a tenth of the retention) so that compaction costs a few log
//!   entries, not one per write; a leader proposes anew after a change of leadership (a lost
//!   proposal is then made again; a stale one is refused by the fsm, harmlessly).
//! - What it holds is bounded: about ten samples of each kind.

use std::collections::VecDeque;
use std::time::Duration;

use crate::fsm::HistorySize;

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
            // Through the flags' duration parser: its bound keeps milliseconds from wrapping.
            Err(_) => match crate::config::parse_duration(s) {
                Ok(d) if d.is_zero() => Ok(Retention::All),
                Ok(d) => Ok(Retention::Duration(d)),
                Err(why) => Err(format!(
                    "{s:?} is neither a number of revisions (e.g. 100000) nor a duration (e.g. 1h): {why}"
                )),
            },
        }
    }
}

/// The default of `--history-retention-bytes`: 1 GiB.
pub const HISTORY_RETENTION_BYTES: u64 = 1024 * 1024 * 1024;

#[derive(Debug)]
pub struct Compactor {
    retention: Retention,
    /// The most bytes of history to keep (`None`: no byte bound).
    max_bytes: Option<u64>,
    /// (when this member applied it, revision), oldest first, about a tenth of the retention
    /// apart (time retention only).
    samples: VecDeque<(u64, i64)>,
    /// (bytes of history this member saw recorded until it applied it, revision), oldest
    /// first, about a tenth of `max_bytes` apart; only those after which at most `max_bytes`
    /// were recorded (byte bound only).
    byte_samples: VecDeque<(u64, i64)>,
    /// The first byte sample of this member's life: it knows nothing of what came before.
    first_byte_sample: Option<(u64, i64)>,
    /// Bytes of history this member saw recorded since it started.
    recorded: u64,
    /// Bytes of history stored, as of the last applied batch.
    stored: u64,
    /// Whether compacted rows were left to purge after it (then `stored` overstates the history).
    purging: bool,
    /// The last target proposed in this leadership (0: none yet).
    proposed: i64,
}

impl Compactor {
    /// `max_bytes` 0 means no byte bound.
    pub fn new(retention: Retention, max_bytes: u64) -> Compactor {
        Compactor {
            retention,
            max_bytes: (max_bytes > 0).then_some(max_bytes),
            samples: VecDeque::new(),
            byte_samples: VecDeque::new(),
            first_byte_sample: None,
            recorded: 0,
            stored: 0,
            purging: false,
            proposed: 0,
        }
    }

    /// This member applied up to `revision` at `now_ms`; `history` is the history's size after
    /// it, when the batch said (`None` for progress that applied nothing).
    pub fn applied(&mut self, revision: i64, now_ms: u64, history: Option<HistorySize>) {
        if let Some(h) = history {
            self.recorded = self.recorded.saturating_add(h.recorded);
            self.stored = h.stored;
            self.purging = h.purging;
        }
        if let Some(max) = self.max_bytes {
            let every = (max / 10).max(1);
            if self.byte_samples.back().is_none_or(|(seen, _)| self.recorded >= seen.saturating_add(every)) {
                self.byte_samples.push_back((self.recorded, revision));
                self.first_byte_sample.get_or_insert((self.recorded, revision));
            }
            // A revision after which more than the bound was recorded is no target any more.
            while self.byte_samples.len() > 1
                && self.byte_samples.front().is_some_and(|(seen, _)| self.recorded - seen > max)
            {
                self.byte_samples.pop_front();
            }
        }
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
        let by_retention = match self.retention {
            Retention::All => None,
            Retention::Revisions(n) => {
                let step = (n / 10).max(1) as i64;
                let target = revision - n as i64;
                (target >= self.proposed + step).then_some(target)
            }
            Retention::Duration(d) => now_ms.checked_sub(d.as_millis() as u64).and_then(|horizon| {
                let (at, target) = *self.samples.front()?;
                (at <= horizon).then_some(target)
            }),
        };
        // Never `revision` itself, whichever bound asks (a member idle for the whole retention
        // has it as its oldest sample; a batch that alone recorded more than the byte bound
        // leaves only its own revision as a sample): a read or a watch from the revision a
        // client was just answered is not refused as compacted.
        let target = by_retention
            .max(self.by_bytes())
            .map(|t| t.min(revision - 1))
            .filter(|t| *t >= 1 && *t > self.proposed)?;
        self.proposed = target;
        Some(target)
    }

    /// The target the byte bound asks for, if any.
    fn by_bytes(&self) -> Option<i64> {
        let max = self.max_bytes?;
        if self.stored <= max {
            return None;
        }
        let (seen, target) = *self.byte_samples.front()?;
        // The oldest revision this member knows what was recorded after: if it is where the
        // member started, what came before is unknown, so it waits to have seen most of the
        // bound (or for the history to be far over it).
        let blind = self.first_byte_sample == Some((seen, target));
        let far_over = !self.purging && self.stored > max.saturating_mul(2);
        if blind && self.recorded - seen < max / 10 * 9 && !far_over {
            return None;
        }
        (self.recorded - seen <= max).then_some(target)
    }

    /// A snapshot replaced the state: what this member saw recorded says nothing of it.
    pub fn restored(&mut self) {
        self.byte_samples.clear();
        self.first_byte_sample = None;
        // Unknown until the next batch says: nothing is far over the bound meanwhile.
        self.stored = 0;
        self.purging = true;
    }

    /// Bytes of history stored, as of the last applied batch this member reported.
    pub fn stored(&self) -> u64 {
        self.stored
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
        let mut c = Compactor::new(Retention::Revisions(100), 0);
        assert_eq!(c.due(0, 100), None, "nothing beyond the retention yet");
        assert_eq!(c.due(0, 109), None, "less than a step beyond it");
        assert_eq!(c.due(0, 110), Some(10), "a step beyond: compact to keep the newest 100");
        assert_eq!(c.due(0, 115), None, "the next step is not due yet");
        assert_eq!(c.due(0, 120), Some(20));
        c.demoted();
        assert_eq!(c.due(0, 121), Some(21), "a new leadership proposes at once (a lost step is made again)");
        assert_eq!(Compactor::new(Retention::All, 0).due(0, 1_000_000), None, "`0` keeps everything");
    }

    /// Applies one batch recording `bytes` at the next revision, with `stored` after it.
    fn write(c: &mut Compactor, revision: &mut i64, stored: &mut u64, bytes: u64) {
        *revision += 1;
        *stored += bytes;
        c.applied(*revision, 0, Some(HistorySize { stored: *stored, recorded: bytes, purging: false }));
    }

    #[test]
    fn by_bytes_it_compacts_once_over_the_bound_and_keeps_nine_tenths_to_all_of_it() {
        let mut c = Compactor::new(Retention::All, 1000);
        let (mut revision, mut stored) = (0i64, 0u64);
        for _ in 0..10 {
            write(&mut c, &mut revision, &mut stored, 100);
        }
        assert_eq!(c.due(0, revision), None, "1000 bytes stored: at the bound, not over it");
        write(&mut c, &mut revision, &mut stored, 100);
        // 1100 stored; after revision 1 (100 recorded), 1000 were recorded.
        assert_eq!(c.due(0, revision), Some(1), "over the bound: keep the newest 1000 bytes");
        assert_eq!(c.due(0, revision), None, "proposed once");
        stored -= 100; // the compaction purged revision 1
        write(&mut c, &mut revision, &mut stored, 50);
        assert_eq!(c.due(0, revision), Some(2), "over again: the next step keeps the newest 950 bytes");
        stored -= 100;
        for _ in 0..3 {
            write(&mut c, &mut revision, &mut stored, 50);
        }
        let target = c.due(0, revision).expect("over again, a step later");
        assert_eq!(target, 3, "after revision 3, 1000 bytes were recorded");
        assert!(c.samples.is_empty() && c.byte_samples.len() <= 12, "samples stay bounded");

        let mut both = Compactor::new(Retention::Revisions(5), 1000);
        let (mut revision, mut stored) = (0i64, 0u64);
        for _ in 0..8 {
            write(&mut both, &mut revision, &mut stored, 250);
        }
        assert_eq!(both.due(0, revision), Some(4), "2000 stored: bytes ask for revision 4, the count only 3");
        let mut huge = Compactor::new(Retention::All, 1000);
        let (mut revision, mut stored) = (0i64, 0u64);
        for _ in 0..3 {
            write(&mut huge, &mut revision, &mut stored, 5000);
        }
        assert_eq!(huge.due(0, revision), Some(2), "a batch over the bound alone: all but its own revision");
        let mut none = Compactor::new(Retention::All, 0);
        let (mut revision, mut stored) = (0i64, 0u64);
        write(&mut none, &mut revision, &mut stored, u64::MAX / 2);
        assert_eq!(none.due(0, revision), None, "0 sets no byte bound");
    }

    #[test]
    fn by_bytes_a_member_that_just_started_waits_to_see_most_of_the_bound_unless_far_over_it() {
        let mut c = Compactor::new(Retention::All, 1000);
        // It starts at revision 100 with 1090 bytes stored before it, and sees 10 more each.
        let (mut revision, mut stored) = (100i64, 1090u64);
        write(&mut c, &mut revision, &mut stored, 10);
        assert_eq!(
            c.due(0, revision),
            None,
            "over the bound, but it knows nothing of what was recorded before"
        );
        for _ in 0..89 {
            write(&mut c, &mut revision, &mut stored, 10);
        }
        assert_eq!(c.due(0, revision), None, "890 seen after its first revision: not yet nine tenths");
        write(&mut c, &mut revision, &mut stored, 10);
        assert_eq!(c.due(0, revision), Some(101), "900 seen: compact all before them");

        let mut far = Compactor::new(Retention::All, 1000);
        let (mut revision, mut stored) = (100i64, 1995u64);
        far.applied(101, 0, Some(HistorySize { stored: 2005, recorded: 10, purging: true }));
        assert_eq!(far.due(0, 101), None, "over twice the bound, but compacted rows count until purged");
        revision += 1;
        stored += 10;
        write(&mut far, &mut revision, &mut stored, 10);
        assert_eq!(far.due(0, revision), Some(101), "over twice the bound, nothing left to purge: at once");

        // A snapshot installed is the same: what came before it was not seen.
        let mut c = Compactor::new(Retention::All, 1000);
        let (mut revision, mut stored) = (0i64, 0u64);
        for _ in 0..5 {
            write(&mut c, &mut revision, &mut stored, 100);
        }
        c.restored();
        let (mut revision, mut stored) = (500i64, 1500u64);
        write(&mut c, &mut revision, &mut stored, 10);
        assert_eq!(c.due(0, revision), None, "after a snapshot, it waits as a member that just started");
    }

    #[test]
    fn by_time_it_compacts_only_what_this_member_applied_the_retention_ago() {
        let mut c = Compactor::new(Retention::Duration(Duration::from_secs(10)), 0);
        for s in 0..=30u64 {
            c.applied(s as i64 * 100, s * 1000, None);
        }
        // At 30 s: the newest revision applied at or before 20 s is 2000.
        assert_eq!(c.due(30_000, 3000), Some(2000));
        assert_eq!(c.due(30_500, 3000), None, "nothing newer is old enough yet");
        assert!(c.samples.len() <= 12, "samples stay bounded: {}", c.samples.len());
        let mut fresh = Compactor::new(Retention::Duration(Duration::from_secs(10)), 0);
        fresh.applied(5000, 1_000_000, None);
        assert_eq!(
            fresh.due(1_005_000, 5000),
            None,
            "a member that started applying 5 s ago compacts nothing, whatever the revisions' age"
        );
        assert_eq!(fresh.due(1_010_000, 5000), Some(4999), "never the revision applied last");
        assert_eq!(fresh.due(1_020_000, 5000), None, "idle on: nothing more to compact");
    }
}
