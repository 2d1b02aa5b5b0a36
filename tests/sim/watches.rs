//! Watches in the simulator: watchers follow a member's history (`fsm::history`, as a watch
//! stream catching up does) step by step, move to another member when theirs is down (resuming
//! from the revision after the last they delivered), and end when their next revision was
//! compacted (the leader compacts by a small retention in every run). At the end, what each
//! recorded is checked against etcd's six guarantees (`latch_check::watch`) and against the
//! events every member applied — through crashes, lost unsynced writes, snapshots, partitions.
//! They watch every target: keys, and the typed targets sessions, locks, elections and registry
//! instances record (`history::Space`), each change named by its space and key.
//!
//! Also after every applied revision: every member applied the same changes in it, of every
//! space.

use std::collections::BTreeMap;

use latch::core::Core;
use latch::fsm::{self, history, Event, EventKind};
use latch_check::watch::{check, Change, Seen, Watch};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use redb::ReadableDatabase as _;

use crate::invariants::Ctx;

/// Bytes of history one watcher reads in one step.
const STEP_BYTES: usize = 16 * 1024;

struct Watcher {
    name: String,
    /// The member it reads, and when it starts (virtual µs).
    member: u64,
    starts_at: u64,
    /// Its first revision (once started), and the next one to deliver.
    start: Option<i64>,
    next: i64,
    seen: Vec<Seen>,
    /// Why it ended (its next revision was compacted).
    ended: Option<String>,
    moves: u64,
}

#[derive(Default)]
pub struct WatchChecker {
    /// Every revision's changes, as the first member to apply it reported them.
    truth: BTreeMap<i64, Vec<Change>>,
    watchers: Vec<Watcher>,
    pub delivered: u64,
    /// Changes of sessions, locks, elections and registry instances among what they delivered.
    pub typed: u64,
    pub moves: u64,
    pub compacted: u64,
    /// The highest compact revision a watcher saw on a member.
    pub compact_revision: i64,
}

fn change(e: &Event) -> Change {
    named(e.space, &e.kv.key, &e.kv.value, e.kind == EventKind::Delete)
}

/// A change as the checker sees it: its key named by its space (`KV:a`, `LOCKS:name`, …), so
/// that a key and a lock of one name are different targets; a delete carries no value.
fn named(space: history::Space, key: &[u8], value: &[u8], delete: bool) -> Change {
    let mut named = format!("{}:", space.as_str_name()).into_bytes();
    named.extend_from_slice(key);
    Change { key: named, value: if delete { Vec::new() } else { value.to_vec() }, delete }
}

impl WatchChecker {
    /// Two or three watchers on random members, starting at random times of the chaos phase,
    /// drawn from their own generator (the rest of the run is as without them).
    pub fn draw(seed: u64, nodes: u64, chaos_us: u64) -> WatchChecker {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x7761_7463_6865_7273);
        let watchers = (0..rng.gen_range(2..=3))
            .map(|i| Watcher {
                name: format!("watcher {i}"),
                member: rng.gen_range(1..=nodes),
                starts_at: rng.gen_range(0..chaos_us.max(1) / 2),
                start: None,
                next: 0,
                seen: Vec::new(),
                ended: None,
                moves: 0,
            })
            .collect();
        WatchChecker { watchers, ..Default::default() }
    }

    /// Member `node` applied `events` at `revision`: the same changes as every other member.
    pub fn applied(&mut self, ctx: Ctx, node: u64, revision: i64, events: &[Event]) {
        let changes: Vec<Change> = events.iter().map(change).collect();
        match self.truth.get(&revision) {
            Some(first) if *first != changes => ctx.fail(
                Some(node),
                "every member applies the same changes in a revision",
                format!("revision {revision}: {changes:?}, where another member applied {first:?}"),
            ),
            Some(_) => {}
            None => {
                self.truth.insert(revision, changes);
            }
        }
    }

    /// Each watcher reads what its member applied since it last looked.
    pub fn after_step(&mut self, ctx: Ctx, up: &[(u64, &Core)]) {
        for w in self.watchers.iter_mut().filter(|w| w.ended.is_none() && ctx.time_us >= w.starts_at) {
            let core = match up.iter().find(|(id, _)| *id == w.member) {
                Some((_, core)) => *core,
                None => match up.first() {
                    // Its member is down: resume on another one, from where it was.
                    Some((id, core)) => {
                        w.member = *id;
                        w.moves += 1;
                        *core
                    }
                    None => continue,
                },
            };
            let txn = core
                .state_db()
                .begin_read()
                .unwrap_or_else(|e| ctx.fail(Some(w.member), "watch", format!("a read transaction: {e}")));
            let fail = |e: fsm::FsmError| -> ! {
                ctx.fail(Some(w.member), "watch", format!("reading the history: {e}"))
            };
            let current = fsm::applied(&txn).unwrap_or_else(|e| fail(e)).revision;
            let compact = history::compact_revision_read(&txn).unwrap_or_else(|e| fail(e));
            self.compact_revision = self.compact_revision.max(compact);
            if w.start.is_none() {
                // A watch from now: the revisions after the member's current one.
                w.start = Some(current + 1);
                w.next = current + 1;
            }
            if w.next > current {
                continue;
            }
            if w.next <= compact {
                w.ended = Some(format!("revision {} compacted (compact revision {compact})", w.next));
                self.compacted += 1;
                continue;
            }
            let (changes, through) =
                history::changes(&txn, w.next, current, STEP_BYTES).unwrap_or_else(|e| fail(e));
            let mut by_revision: BTreeMap<i64, Vec<Change>> = BTreeMap::new();
            for c in changes {
                self.typed += u64::from(c.space != history::Space::Kv);
                by_revision.entry(c.revision).or_default().push(named(
                    c.space,
                    &c.kv.key,
                    &c.kv.value,
                    c.delete,
                ));
            }
            for (revision, changes) in by_revision {
                self.delivered += 1;
                w.seen.push(Seen::Events { revision, changes });
            }
            w.next = through + 1;
            // A bookmark now and then: everything up to here was delivered.
            if through % 7 == 0 {
                w.seen.push(Seen::Progress { revision: through });
            }
        }
    }

    /// Checks every watcher's record against the six guarantees and the applied changes.
    pub fn check_final(&mut self, ctx: Ctx) {
        let records: Vec<Watch> = self
            .watchers
            .iter()
            .filter_map(|w| {
                let start = w.start?;
                Some(Watch { name: w.name.clone(), prefix: Vec::new(), start, seen: w.seen.clone() })
            })
            .collect();
        self.moves = self.watchers.iter().map(|w| w.moves).sum();
        if let Err(violation) = check(&self.truth, &records) {
            let ended: Vec<String> = self
                .watchers
                .iter()
                .filter_map(|w| w.ended.as_ref().map(|e| format!("{}: {e}", w.name)))
                .collect();
            ctx.fail(None, "watch guarantees", format!("{violation} (ended: {ended:?})"));
        }
    }
}
