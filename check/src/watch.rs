//! etcd's six watch guarantees, checked over what watchers recorded (DESIGN.md §1 Watches):
//!
//! - **ordered**: a watch delivers revisions in increasing order;
//! - **unique**: never the same revision twice;
//! - **atomic**: a delivered revision carries every change of that revision the watch selects,
//!   exactly as it happened (compared with the known history, and between watches);
//! - **reliable**: between its start and the last revision it vouched for (delivered, or named
//!   by a progress response), a watch misses no revision with a change it selects;
//! - **resumable**: two watches agree on every revision both cover, so a watch started at r + 1
//!   delivers exactly what another delivered after r;
//! - **bookmarkable**: a progress response's revision P is never ahead of the events: every
//!   known change it selects at or below P was delivered before it, and nothing at or below P
//!   comes after;
//! - **monotonic**: nor is P behind them: never below a revision the watch delivered, or one an
//!   earlier progress response named (a client that keeps the last revision it saw as its
//!   bookmark never moves it back).
//!
//! The known history may be partial (a client learns the revision of its acknowledged writes,
//! not of the ones whose answer it lost); every watch is then also a witness for the others.

use std::collections::BTreeMap;
use std::ops::Bound;

/// One change to one key, as of its revision.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    pub key: Vec<u8>,
    /// Empty for a delete.
    pub value: Vec<u8>,
    pub delete: bool,
}

/// What a watch received, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The changes of one revision (fragments already joined).
    Events { revision: i64, changes: Vec<Change> },
    /// A progress response: every change at or below `revision` has been delivered.
    Progress { revision: i64 },
}

/// One watch's record.
#[derive(Debug, Clone)]
pub struct Watch {
    pub name: String,
    /// The keys it selects: those starting with `prefix`.
    pub prefix: Vec<u8>,
    /// The first revision it may deliver.
    pub start: i64,
    pub seen: Vec<Seen>,
}

impl Watch {
    fn selects(&self, c: &Change) -> bool {
        c.key.starts_with(&self.prefix)
    }

    /// The last revision the watch vouched for: all its changes up to it were delivered.
    fn vouched(&self) -> i64 {
        self.seen
            .iter()
            .map(|s| match s {
                Seen::Events { revision, .. } | Seen::Progress { revision } => *revision,
            })
            .max()
            .unwrap_or(self.start - 1)
    }
}

/// Checks every watch against `known` (revision → all its changes, for the revisions known)
/// and against each other; the first violation, named and explained.
pub fn check(known: &BTreeMap<i64, Vec<Change>>, watches: &[Watch]) -> Result<(), String> {
    for w in watches {
        check_one(known, w)?;
    }
    // Every watch witnesses the revisions it delivered: two watches must agree on each
    // revision they both cover, and neither may miss one the other shows.
    for (i, a) in watches.iter().enumerate() {
        for b in &watches[i + 1..] {
            agree(a, b)?;
            agree(b, a)?;
        }
    }
    Ok(())
}

fn check_one(known: &BTreeMap<i64, Vec<Change>>, w: &Watch) -> Result<(), String> {
    let mut last_event = w.start - 1;
    let mut last_progress = i64::MIN;
    // The highest revision delivered or named by a progress response so far.
    let mut vouched = i64::MIN;
    let mut delivered: BTreeMap<i64, usize> = BTreeMap::new();
    for (at, s) in w.seen.iter().enumerate() {
        match s {
            Seen::Events { revision, changes } => {
                if *revision <= last_event {
                    return Err(format!(
                        "{}: ordered/unique: revision {revision} delivered after revision {last_event} (response {at})",
                        w.name
                    ));
                }
                if *revision <= last_progress {
                    return Err(format!(
                        "{}: bookmarkable: revision {revision} delivered after a progress response at {last_progress}",
                        w.name
                    ));
                }
                if changes.is_empty() || changes.iter().any(|c| !w.selects(c)) {
                    return Err(format!(
                        "{}: revision {revision} delivered with changes it does not select (or none): {changes:?}",
                        w.name
                    ));
                }
                if let Some(all) = known.get(revision) {
                    let want: Vec<&Change> = all.iter().filter(|c| w.selects(c)).collect();
                    let got: Vec<&Change> = changes.iter().collect();
                    if want != got {
                        return Err(format!(
                            "{}: atomic: revision {revision} delivered {got:?}, but it changed {want:?}",
                            w.name
                        ));
                    }
                }
                last_event = *revision;
                vouched = vouched.max(*revision);
                delivered.insert(*revision, at);
            }
            Seen::Progress { revision } => {
                if *revision < vouched {
                    return Err(format!(
                        "{}: monotonic: progress at {revision} (response {at}) after revision {vouched} was delivered or named",
                        w.name
                    ));
                }
                vouched = *revision;
                // Every known selected change at or below it must have come first.
                for (r, all) in span(known, w.start, *revision) {
                    if all.iter().any(|c| w.selects(c)) && !delivered.contains_key(r) {
                        return Err(format!(
                            "{}: bookmarkable: progress at {revision} (response {at}) before revision {r}, which changed keys it selects",
                            w.name
                        ));
                    }
                }
                last_progress = last_progress.max(*revision);
            }
        }
    }
    let vouched = w.vouched();
    for (r, all) in span(known, w.start, vouched) {
        if all.iter().any(|c| w.selects(c)) && !delivered.contains_key(r) {
            return Err(format!(
                "{}: reliable: revision {r} changed keys it selects, but it was not delivered (the watch covers {}..={vouched})",
                w.name, w.start
            ));
        }
    }
    Ok(())
}

/// The known revisions `from..=to` (none when `to < from`).
fn span(
    known: &BTreeMap<i64, Vec<Change>>,
    from: i64,
    to: i64,
) -> impl Iterator<Item = (&i64, &Vec<Change>)> {
    let end = if to >= from { Bound::Included(to) } else { Bound::Excluded(from) };
    known.range((Bound::Included(from), end))
}

/// What `b` delivered within the span `a` covers must be exactly what `a` delivered there (for
/// the keys both select).
fn agree(a: &Watch, b: &Watch) -> Result<(), String> {
    let (from, to) = (a.start.max(b.start), a.vouched().min(b.vouched()));
    let events = |w: &Watch, other: &Watch| -> BTreeMap<i64, Vec<Change>> {
        w.seen
            .iter()
            .filter_map(|s| match s {
                Seen::Events { revision, changes } if (from..=to).contains(revision) => {
                    let both: Vec<Change> = changes.iter().filter(|c| other.selects(c)).cloned().collect();
                    (!both.is_empty()).then_some((*revision, both))
                }
                _ => None,
            })
            .collect()
    };
    let (in_a, in_b) = (events(a, b), events(b, a));
    for (r, changes) in &in_b {
        match in_a.get(r) {
            None => {
                return Err(format!(
                    "reliable/resumable: {} delivered revision {r} ({changes:?}) but {} did not, though it covers {from}..={to}",
                    b.name, a.name
                ))
            }
            Some(c) if c != changes => {
                return Err(format!(
                    "atomic: {} and {} disagree on revision {r}: {c:?} vs {changes:?}",
                    a.name, b.name
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Change {
        Change { key: key.into(), value: value.into(), delete: false }
    }

    fn ev(revision: i64, changes: Vec<Change>) -> Seen {
        Seen::Events { revision, changes }
    }

    fn watch(name: &str, start: i64, seen: Vec<Seen>) -> Watch {
        Watch { name: name.into(), prefix: b"p/".to_vec(), start, seen }
    }

    fn known() -> BTreeMap<i64, Vec<Change>> {
        BTreeMap::from([
            (1, vec![put("p/a", "1"), put("p/b", "1")]),
            (2, vec![put("q/x", "1")]),
            (3, vec![put("p/a", "2")]),
            (4, vec![Change { key: b"p/b".to_vec(), value: Vec::new(), delete: true }]),
        ])
    }

    fn full(start: i64) -> Vec<Seen> {
        known()
            .into_iter()
            .filter(|(r, _)| *r >= start)
            .filter_map(|(r, cs)| {
                let p: Vec<Change> = cs.into_iter().filter(|c| c.key.starts_with(b"p/")).collect();
                (!p.is_empty()).then_some(ev(r, p))
            })
            .collect()
    }

    #[test]
    fn complete_agreeing_watches_pass() {
        let mut a = full(1);
        a.push(Seen::Progress { revision: 4 });
        let resumed = watch("resumed", 2, full(2));
        check(&known(), &[watch("a", 1, a), resumed]).expect("a faithful record passes");
    }

    #[test]
    fn each_guarantee_broken_is_named() {
        let k = known();
        let first = || full(1).remove(0).changes();
        type Known = BTreeMap<i64, Vec<Change>>;
        let cases: Vec<(&str, Known, Vec<Watch>)> = vec![
            ("ordered", k.clone(), vec![watch("w", 1, vec![ev(3, vec![put("p/a", "2")]), ev(1, first())])]),
            (
                "ordered/unique",
                k.clone(),
                vec![watch("w", 1, vec![ev(3, vec![put("p/a", "2")]), ev(3, vec![put("p/a", "2")])])],
            ),
            ("atomic", k.clone(), vec![watch("w", 1, vec![ev(1, vec![put("p/a", "1")])])]),
            (
                "reliable",
                k.clone(),
                vec![watch("w", 1, vec![ev(1, first()), ev(4, full(4).remove(0).changes())])],
            ),
            (
                "bookmarkable",
                k.clone(),
                vec![watch("w", 1, vec![ev(1, first()), Seen::Progress { revision: 3 }])],
            ),
            (
                "monotonic",
                k.clone(),
                vec![watch(
                    "w",
                    1,
                    vec![ev(1, first()), Seen::Progress { revision: 2 }, Seen::Progress { revision: 1 }],
                )],
            ),
            (
                "monotonic",
                k.clone(),
                vec![watch("w", 3, vec![ev(3, vec![put("p/a", "2")]), Seen::Progress { revision: 2 }])],
            ),
            (
                "reliable/resumable",
                BTreeMap::from([(1, first())]),
                vec![
                    watch("a", 1, vec![ev(1, first()), Seen::Progress { revision: 5 }]),
                    watch("b", 1, vec![ev(1, first()), ev(5, vec![put("p/z", "9")])]),
                ],
            ),
            (
                "disagree",
                BTreeMap::new(),
                vec![
                    watch("a", 1, vec![ev(5, vec![put("p/z", "9")])]),
                    watch("b", 1, vec![ev(5, vec![put("p/z", "8")])]),
                ],
            ),
        ];
        for (guarantee, known, watches) in cases {
            let err = check(&known, &watches).expect_err(guarantee);
            assert!(err.contains(guarantee), "expected a violation of {guarantee}, got: {err}");
        }
    }

    impl Seen {
        fn changes(self) -> Vec<Change> {
            match self {
                Seen::Events { changes, .. } => changes,
                Seen::Progress { .. } => Vec::new(),
            }
        }
    }
}
