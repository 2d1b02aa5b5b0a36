//! Linearizability of a KV history, key by key, against a register model.
//!
//! What is here: the history types ([`Operation`], [`Call`], [`Return`]), the verdict types
//! ([`Report`], [`Verdict`], [`Violation`], [`Malformed`]) and [`check`], which decides whether the
//! operations of each key can be put in one total order that (a) respects real time — an
//! operation that completed before another was invoked comes first — and (b) makes every return
//! value the one a single register would have given. The search itself, below the model, is in
//! `linearizability/search.rs`.
//!
//! The model: each key is a register holding `Option<Vec<u8>>` (`None`: the key is absent, which
//! is also its initial state). `Put` sets it; `Get` returns it; `Delete` clears it and says whether
//! there was something to clear; `Cas { expected, new }` sets `new` iff the key exists with value
//! `expected` (a missing key never compares equal, as in etcd) and says whether it did.
//!
//! Indeterminate operations (no completion: the client timed out or lost its connection) are
//! treated as Knossos and Porcupine treat `:info` operations: they may take effect at any point
//! after their invocation, with whatever return, or never. An indeterminate `Get` changes nothing
//! and constrains nothing, so it is left out of the search.
//!
//! How: linearizability is local (Herlihy & Wing): a history of independent registers is
//! linearizable iff the history of each register is. Each key is searched alone by Wing & Gong's
//! algorithm with Lowe's memoization:
//!
//! - every completed operation has a call entry at its invocation time and a return entry at its
//!   completion time; the entries form a doubly linked list sorted by time, calls before returns
//!   at equal times (operations that touch the same instant are concurrent);
//! - scanning the list from its head, any call met before the first return is an operation all of
//!   whose real-time predecessors are already linearized, so it may go next: if the model accepts
//!   its return from the current state, it is *lifted* out of the list (call and return) and
//!   pushed on a stack, and the scan restarts from the head; meeting a return means that
//!   operation can no longer be placed, so the last choice is undone (popped, *unlifted*) and the
//!   scan goes on after it;
//! - a configuration (set of linearized operations, register state) reached once is never
//!   explored again: the rest of the search depends on nothing else (Lowe's memo);
//! - the key is linearizable once every completed operation is lifted, and is not once the stack
//!   is empty and nothing can go first.
//!
//! Indeterminate operations have no return entry; their calls form a second list, tried only
//! after every completed operation that may go next (a *lazy* pass), and those invoked after the
//! first return left are not yet possible. Whatever is left over at the end never took effect.
//! Each open indeterminate operation can double the configurations; two refinements curb that: a configuration is
//! skipped when an explored one placed the same completed operations, reached the same state and
//! placed a subset of its indeterminate ones (it can do all the skipped one can); and of
//! indeterminate operations with the same call, only the earliest invoked unplaced one is tried.
//!
//! The search is still exponential in the worst case (many concurrent or indeterminate operations
//! on one key); it stops after a step budget per key ([`DEFAULT_STEP_BUDGET`]) and reports
//! [`Verdict::Inconclusive`] rather than hang. Memory grows with the configurations explored:
//! about 150 bytes plus one bit per operation of the key for each.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use search::{search, Outcome};

mod search;

/// What a client asked of one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Call {
    /// Sets the value, creating the key if it is absent.
    Put { value: Vec<u8> },
    /// Reads the value.
    Get,
    /// Removes the key.
    Delete,
    /// Sets `new` iff the key exists and holds `expected`; a missing key never compares equal.
    Cas { expected: Vec<u8>, new: Vec<u8> },
}

/// What the client was told; its variant must be the one of its [`Call`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Return {
    /// A put succeeded.
    Put,
    /// The value read; `None` when the key was absent.
    Get(Option<Vec<u8>>),
    /// `deleted` is whether the key existed (and so was removed).
    Delete { deleted: bool },
    /// `succeeded` is whether the key held `expected` and now holds `new`.
    Cas { succeeded: bool },
}

/// One operation of a client on one key, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Operation {
    /// Who issued it; only for the explanation of a violation (the check does not assume a client
    /// runs one operation at a time).
    pub client: u64,
    pub key: Vec<u8>,
    pub call: Call,
    /// When the client sent it, in any unit shared by the whole history (e.g. µs).
    pub invoked: u64,
    /// When the client learnt the outcome (same unit, `>= invoked`) and the outcome; `None` when
    /// it never did (timeout, lost connection): the operation is indeterminate.
    pub completed: Option<(u64, Return)>,
}

/// Search steps per key before [`check`] gives up on that key and reports
/// [`Verdict::Inconclusive`]. A few seconds of a debug build; histories from a test run
/// (a few concurrent clients) need far fewer.
pub const DEFAULT_STEP_BUDGET: u64 = 10_000_000;

/// What [`check`] found, with counts for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Distinct keys in the history.
    pub keys: usize,
    /// Operations in the history, indeterminate ones included.
    pub operations: usize,
    /// Operations without a completion (indeterminate gets among them, which are ignored).
    pub indeterminate: usize,
    /// Search steps spent over all keys: how hard the history was to check.
    pub steps: u64,
    pub verdict: Verdict,
}

impl Report {
    /// Whether every key was found linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.verdict == Verdict::Linearizable
    }
}

/// The answer for the whole history.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Every key's operations have an order that respects real time and the register model.
    Linearizable,
    /// The first key (in byte order) found to have no such order, whether or not keys before it
    /// were inconclusive. Keys after it were not checked.
    NotLinearizable(Box<Violation>),
    /// The step budget ran out on these keys (in byte order) before an answer; every other key is
    /// linearizable.
    Inconclusive { keys: Vec<Vec<u8>>, steps_per_key: u64 },
    /// The history cannot be checked: it records something no client could have seen.
    Malformed(Box<Malformed>),
}

/// A key whose operations no order explains, with what a human needs to see why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: Vec<u8>,
    /// Every operation on the key (ignored indeterminate gets included), each with its index in
    /// the checked history, by invocation time then completion time.
    pub operations: Vec<(usize, Operation)>,
    /// The longest sequence of the key's operations the search could linearize, as indices into
    /// the checked history, in linearization order. What comes next in real time cannot be
    /// appended to it — usually the anomaly is among the operations just after it.
    pub longest_linearizable: Vec<usize>,
    /// The register after `longest_linearizable`.
    pub state_after_longest: Option<Vec<u8>>,
}

/// An operation the checker refuses, so that a bug of the recorder is not taken for one of Latch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// Its index in the checked history.
    pub index: usize,
    pub operation: Operation,
    pub reason: MalformedReason,
}

/// Why an operation is [`Malformed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MalformedReason {
    /// The return is of another kind than the call (e.g. a get answered as a cas).
    ReturnDoesNotMatchCall,
    /// The completion time is before the invocation time.
    CompletedBeforeInvoked,
}

/// Checks `history` with the [`DEFAULT_STEP_BUDGET`] per key.
pub fn check(history: &[Operation]) -> Report {
    check_with_budget(history, DEFAULT_STEP_BUDGET)
}

/// Checks `history`, giving each key at most `steps_per_key` search steps.
///
/// Keys are checked in byte order; the first violation ends the check. A malformed operation
/// anywhere ends it before any search. Deterministic: the same history gets the same report.
pub fn check_with_budget(history: &[Operation], steps_per_key: u64) -> Report {
    let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        by_key.entry(&op.key).or_default().push(index);
    }
    let mut report = Report {
        keys: by_key.len(),
        operations: history.len(),
        indeterminate: history.iter().filter(|op| op.completed.is_none()).count(),
        steps: 0,
        verdict: Verdict::Linearizable,
    };
    if let Some(malformed) = find_malformed(history) {
        report.verdict = Verdict::Malformed(Box::new(malformed));
        return report;
    }
    let mut inconclusive = Vec::new();
    for (key, indices) in by_key {
        let register = KeyHistory::new(history, &indices);
        let (outcome, steps) = search(&register.ops, steps_per_key);
        report.steps += steps;
        match outcome {
            Outcome::Linearizable => {}
            Outcome::Exhausted => inconclusive.push(key.to_vec()),
            Outcome::Violation { longest, state } => {
                let violation = register.violation(history, key, &indices, &longest, state);
                report.verdict = Verdict::NotLinearizable(Box::new(violation));
                return report;
            }
        }
    }
    if !inconclusive.is_empty() {
        report.verdict = Verdict::Inconclusive { keys: inconclusive, steps_per_key };
    }
    report
}

/// The first operation the checker cannot take as recorded, if any.
fn find_malformed(history: &[Operation]) -> Option<Malformed> {
    history.iter().enumerate().find_map(|(index, op)| {
        let (completed, ret) = op.completed.as_ref()?;
        let matches = matches!(
            (&op.call, ret),
            (Call::Put { .. }, Return::Put)
                | (Call::Get, Return::Get(_))
                | (Call::Delete, Return::Delete { .. })
                | (Call::Cas { .. }, Return::Cas { .. })
        );
        let reason = if !matches {
            MalformedReason::ReturnDoesNotMatchCall
        } else if *completed < op.invoked {
            MalformedReason::CompletedBeforeInvoked
        } else {
            return None;
        };
        Some(Malformed { index, operation: op.clone(), reason })
    })
}

// ---------------------------------------------------------------------------------------------
// The model, over interned values.

/// A register state: [`ABSENT`], or the id of a value interned by [`KeyHistory`]. Comparing ids
/// compares values: one key's values are interned once each.
type State = u32;

/// The key does not exist (the initial state).
const ABSENT: State = 0;

/// One operation of one key as the model sees it: its call and, when known, its return, with
/// values replaced by their ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Step {
    Put {
        value: State,
    },
    /// Completed gets only: an indeterminate get is not searched.
    Get {
        seen: State,
    },
    Delete {
        deleted: Option<bool>,
    },
    Cas {
        expected: State,
        new: State,
        succeeded: Option<bool>,
    },
}

impl Step {
    /// The register after this operation takes effect on `state`, or `None` if its recorded return
    /// is not what the register would give from `state`. A `None` return (indeterminate) accepts
    /// any outcome, so every state has a successor for it.
    fn apply(self, state: State) -> Option<State> {
        match self {
            Step::Put { value } => Some(value),
            Step::Get { seen } => (seen == state).then_some(state),
            Step::Delete { deleted } => match deleted {
                Some(deleted) if deleted != (state != ABSENT) => None,
                _ => Some(ABSENT),
            },
            Step::Cas { expected, new, succeeded } => {
                // `expected` is a value id, never ABSENT: a missing key never compares equal.
                let swaps = state == expected;
                match succeeded {
                    Some(succeeded) if succeeded != swaps => None,
                    _ => Some(if swaps { new } else { state }),
                }
            }
        }
    }
}

/// One operation in the search: its step and its place in time.
#[derive(Debug, Clone, Copy)]
struct SearchOp {
    step: Step,
    invoked: u64,
    /// `None`: indeterminate, it never has to be linearized.
    completed: Option<u64>,
}

/// One key's operations ready for the search, and what is needed to explain a violation.
struct KeyHistory<'h> {
    /// The searched operations (indeterminate gets left out).
    ops: Vec<SearchOp>,
    /// For each of `ops`, its index in the checked history.
    origin: Vec<usize>,
    /// `values[id - 1]` is the value of state `id`.
    values: Vec<&'h [u8]>,
}

impl<'h> KeyHistory<'h> {
    /// `indices` are the history's operations on one key. The history must not be malformed: a
    /// return of the wrong kind is read as indeterminate here.
    fn new(history: &'h [Operation], indices: &[usize]) -> Self {
        let mut ids: HashMap<&'h [u8], State> = HashMap::new();
        let mut values: Vec<&'h [u8]> = Vec::new();
        let mut intern = |value: &'h [u8]| -> State {
            *ids.entry(value).or_insert_with(|| {
                values.push(value);
                State::try_from(values.len()).expect("fewer than 2^32 distinct values per key")
            })
        };
        let mut ops = Vec::with_capacity(indices.len());
        let mut origin = Vec::with_capacity(indices.len());
        for &index in indices {
            let op = &history[index];
            let ret = op.completed.as_ref().map(|(_, ret)| ret);
            let step = match (&op.call, ret) {
                (Call::Put { value }, _) => Step::Put { value: intern(value) },
                (Call::Get, Some(Return::Get(seen))) => {
                    Step::Get { seen: seen.as_deref().map_or(ABSENT, &mut intern) }
                }
                (Call::Get, _) => continue,
                (Call::Delete, ret) => Step::Delete {
                    deleted: match ret {
                        Some(Return::Delete { deleted }) => Some(*deleted),
                        _ => None,
                    },
                },
                (Call::Cas { expected, new }, ret) => Step::Cas {
                    expected: intern(expected),
                    new: intern(new),
                    succeeded: match ret {
                        Some(Return::Cas { succeeded }) => Some(*succeeded),
                        _ => None,
                    },
                },
            };
            ops.push(SearchOp { step, invoked: op.invoked, completed: op.completed.as_ref().map(|c| c.0) });
            origin.push(index);
        }
        KeyHistory { ops, origin, values }
    }

    fn value(&self, state: State) -> Option<Vec<u8>> {
        (state != ABSENT).then(|| self.values[state as usize - 1].to_vec())
    }

    /// The explanation of a failed search: `longest` are positions in `ops`.
    fn violation(
        &self,
        history: &[Operation],
        key: &[u8],
        indices: &[usize],
        longest: &[usize],
        state: State,
    ) -> Violation {
        let mut operations: Vec<(usize, Operation)> =
            indices.iter().map(|&index| (index, history[index].clone())).collect();
        operations
            .sort_by_key(|(index, op)| (op.invoked, op.completed.as_ref().map_or(u64::MAX, |c| c.0), *index));
        Violation {
            key: key.to_vec(),
            operations,
            longest_linearizable: longest.iter().map(|&position| self.origin[position]).collect(),
            state_after_longest: self.value(state),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Explanations.

/// Shows bytes as a quoted, escaped string, cut after 40 bytes (values may be up to 1 MiB).
struct Bytes<'a>(&'a [u8]);

impl fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 40;
        let shown = &self.0[..self.0.len().min(SHOWN)];
        write!(f, "\"{}\"", shown.escape_ascii())?;
        if self.0.len() > SHOWN {
            write!(f, "…({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::Put { value } => write!(f, "put {}", Bytes(value)),
            Call::Get => write!(f, "get"),
            Call::Delete => write!(f, "delete"),
            Call::Cas { expected, new } => write!(f, "cas {} -> {}", Bytes(expected), Bytes(new)),
        }
    }
}

impl fmt::Display for Return {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Return::Put => write!(f, "ok"),
            Return::Get(Some(value)) => write!(f, "{}", Bytes(value)),
            Return::Get(None) | Return::Delete { deleted: false } => write!(f, "not found"),
            Return::Delete { deleted: true } => write!(f, "deleted"),
            Return::Cas { succeeded: true } => write!(f, "swapped"),
            Return::Cas { succeeded: false } => write!(f, "not swapped"),
        }
    }
}

/// `client 2: cas "a" -> "b" => swapped, 10..20` (or `10..?` when indeterminate).
impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {}: {} ", self.client, self.call)?;
        match &self.completed {
            Some((completed, ret)) => write!(f, "=> {ret}, {}..{completed}", self.invoked),
            None => write!(f, "=> ?, {}..? (indeterminate)", self.invoked),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = format!(
            "{} keys, {} operations ({} indeterminate), {} search steps",
            self.keys, self.operations, self.indeterminate, self.steps
        );
        match &self.verdict {
            Verdict::Linearizable => write!(f, "linearizable: {counts}"),
            Verdict::NotLinearizable(violation) => write!(f, "NOT linearizable ({counts}): {violation}"),
            Verdict::Inconclusive { keys, steps_per_key } => {
                write!(f, "inconclusive ({counts}): the budget of {steps_per_key} steps per key ran out on")?;
                for key in keys {
                    write!(f, " {}", Bytes(key))?;
                }
                write!(f, "; every other key is linearizable")
            }
            Verdict::Malformed(malformed) => write!(f, "malformed history ({counts}): {malformed}"),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let indeterminate = self.operations.iter().filter(|(_, op)| op.completed.is_none()).count();
        writeln!(
            f,
            "key {}: no order of its {} operations ({indeterminate} indeterminate) respects real time \
             and a register's answers",
            Bytes(&self.key),
            self.operations.len(),
        )?;
        let place: HashMap<usize, usize> =
            self.longest_linearizable.iter().enumerate().map(|(place, &index)| (index, place + 1)).collect();
        writeln!(
            f,
            "its operations by invocation time ([history index] … place in the longest order found):"
        )?;
        for (index, op) in &self.operations {
            let placed = match (place.get(index), op) {
                (Some(place), _) => format!("#{place}"),
                (None, Operation { call: Call::Get, completed: None, .. }) => "ignored".to_owned(),
                (None, _) => "-".to_owned(),
            };
            writeln!(f, "  [{index}] {op}  {placed}")?;
        }
        let state = match &self.state_after_longest {
            Some(value) => format!("holds {}", Bytes(value)),
            None => "is absent".to_owned(),
        };
        write!(
            f,
            "the longest order the search found places {} of them, after which the key {state}",
            self.longest_linearizable.len(),
        )
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.reason {
            MalformedReason::ReturnDoesNotMatchCall => "its return is of another kind than its call",
            MalformedReason::CompletedBeforeInvoked => "it completed before it was invoked",
        };
        write!(
            f,
            "operation [{}] on key {} ({}): {why}",
            self.index,
            Bytes(&self.operation.key),
            self.operation
        )
    }
}

impl std::error::Error for Violation {}
impl std::error::Error for Malformed {}

#[cfg(test)]
mod tests {
    use super::search::mix;
    use super::*;

    // --- Building histories -------------------------------------------------------------------

    fn put(value: &str) -> Call {
        Call::Put { value: value.into() }
    }

    fn cas(expected: &str, new: &str) -> Call {
        Call::Cas { expected: expected.into(), new: new.into() }
    }

    fn got(value: Option<&str>) -> Return {
        Return::Get(value.map(Into::into))
    }

    /// A completed operation: invoked at `times.0`, completed at `times.1`.
    fn done(client: u64, key: &str, call: Call, times: (u64, u64), ret: Return) -> Operation {
        Operation { client, key: key.into(), call, invoked: times.0, completed: Some((times.1, ret)) }
    }

    /// An indeterminate operation: the client never learnt its outcome.
    fn lost(client: u64, key: &str, call: Call, invoked: u64) -> Operation {
        Operation { client, key: key.into(), call, invoked, completed: None }
    }

    fn assert_linearizable(history: &[Operation], why: &str) -> Report {
        let report = check(history);
        assert!(report.is_linearizable(), "expected linearizable ({why}), got: {report}");
        report
    }

    /// Asserts the check fails on `key` and returns the violation.
    fn assert_violation(history: &[Operation], key: &str, why: &str) -> Violation {
        let report = check(history);
        match report.verdict {
            Verdict::NotLinearizable(violation) => {
                assert_eq!(violation.key, key.as_bytes(), "expected the violation on key {key:?} ({why})");
                *violation
            }
            _ => panic!("expected NOT linearizable on key {key:?} ({why}), got: {report}"),
        }
    }

    // --- Linearizable -------------------------------------------------------------------------

    #[test]
    fn sequential_put_get_delete_cas_is_linearizable() {
        let history = [
            done(1, "k", Call::Get, (0, 1), got(None)),
            done(1, "k", cas("a", "b"), (2, 3), Return::Cas { succeeded: false }),
            done(1, "k", put("a"), (4, 5), Return::Put),
            done(1, "k", Call::Get, (6, 7), got(Some("a"))),
            done(1, "k", cas("a", "b"), (8, 9), Return::Cas { succeeded: true }),
            done(1, "k", cas("a", "c"), (10, 11), Return::Cas { succeeded: false }),
            done(1, "k", Call::Get, (12, 13), got(Some("b"))),
            done(1, "k", Call::Delete, (14, 15), Return::Delete { deleted: true }),
            done(1, "k", Call::Delete, (16, 17), Return::Delete { deleted: false }),
            done(1, "k", Call::Get, (18, 19), got(None)),
        ];
        let report = assert_linearizable(&history, "each return is the register's in that order");
        assert_eq!((report.keys, report.operations, report.indeterminate), (1, 10, 0));
    }

    #[test]
    fn a_get_overlapping_a_put_may_see_the_old_or_the_new_value() {
        for seen in ["old", "new"] {
            let history = [
                done(1, "k", put("old"), (0, 10), Return::Put),
                done(1, "k", put("new"), (20, 40), Return::Put),
                done(2, "k", Call::Get, (25, 30), got(Some(seen))),
            ];
            assert_linearizable(&history, &format!("the get overlaps the put of \"new\" and saw {seen:?}"));
        }
    }

    #[test]
    fn operations_touching_the_same_instant_are_concurrent() {
        let read_old_at = |invoked: u64| {
            [
                done(1, "k", put("old"), (0, 5), Return::Put),
                done(1, "k", put("new"), (6, 10), Return::Put),
                done(2, "k", Call::Get, (invoked, 12), got(Some("old"))),
            ]
        };
        assert_linearizable(&read_old_at(10), "the get was invoked at the put's completion time");
        assert_violation(&read_old_at(11), "k", "the get was invoked after the put of \"new\" completed");
    }

    #[test]
    fn of_two_concurrent_cas_from_the_same_value_exactly_one_may_succeed() {
        let race = |first: bool, second: bool| {
            [
                done(1, "k", put("a"), (0, 5), Return::Put),
                done(1, "k", cas("a", "b"), (10, 20), Return::Cas { succeeded: first }),
                done(2, "k", cas("a", "c"), (12, 18), Return::Cas { succeeded: second }),
                done(3, "k", Call::Get, (30, 31), got(Some(if first { "b" } else { "c" }))),
            ]
        };
        assert_linearizable(&race(true, false), "client 1's cas won");
        assert_linearizable(&race(false, true), "client 2's cas won");
        assert_violation(&race(true, true), "k", "both cas from \"a\" succeeded");
    }

    #[test]
    fn an_indeterminate_put_may_take_effect_later_and_be_read() {
        let history = [
            done(1, "k", put("a"), (0, 5), Return::Put),
            lost(1, "k", put("b"), 10),
            done(2, "k", Call::Get, (20, 21), got(Some("a"))),
            done(2, "k", Call::Get, (30, 31), got(Some("b"))),
            done(2, "k", Call::Get, (40, 41), got(Some("b"))),
        ];
        let report = assert_linearizable(&history, "the lost put took effect between 21 and 30");
        assert_eq!(report.indeterminate, 1, "expected the lost put to be counted as indeterminate");
    }

    #[test]
    fn an_indeterminate_put_may_never_take_effect() {
        let history = [
            done(1, "k", put("a"), (0, 5), Return::Put),
            lost(1, "k", put("b"), 10),
            done(2, "k", Call::Get, (20, 21), got(Some("a"))),
            done(2, "k", Call::Get, (100, 101), got(Some("a"))),
        ];
        assert_linearizable(&history, "the lost put is never seen");
    }

    #[test]
    fn indeterminate_puts_of_the_same_value_may_both_take_effect() {
        let history = [
            lost(1, "k", put("a"), 0),
            lost(2, "k", put("a"), 0),
            done(3, "k", Call::Get, (10, 11), got(Some("a"))),
            done(3, "k", Call::Delete, (20, 21), Return::Delete { deleted: true }),
            done(3, "k", Call::Get, (30, 31), got(None)),
            done(3, "k", Call::Get, (40, 41), got(Some("a"))),
        ];
        assert_linearizable(&history, "one lost put took effect before 10, the other between 31 and 40");
    }

    #[test]
    fn indeterminate_gets_are_ignored() {
        let history = [
            done(1, "k", put("a"), (0, 5), Return::Put),
            lost(2, "k", Call::Get, 1),
            lost(2, "j", Call::Get, 1),
        ];
        let report = assert_linearizable(&history, "an indeterminate get says nothing");
        assert_eq!((report.keys, report.operations, report.indeterminate), (2, 3, 2));
    }

    #[test]
    fn a_delete_then_a_get_finds_nothing() {
        let history = [
            done(1, "k", put("a"), (0, 5), Return::Put),
            done(1, "k", Call::Delete, (10, 15), Return::Delete { deleted: true }),
            done(2, "k", Call::Get, (20, 25), got(None)),
        ];
        assert_linearizable(&history, "the get follows a completed delete");
    }

    #[test]
    fn an_empty_history_is_linearizable() {
        let report = assert_linearizable(&[], "nothing happened");
        assert_eq!((report.keys, report.operations, report.steps), (0, 0, 0));
    }

    // --- Not linearizable ---------------------------------------------------------------------

    /// Every violation fixture also has a key "fine" with a linearizable history, checked first
    /// (byte order): the violation must name the bad key, not the first one.
    fn with_a_fine_key(mut history: Vec<Operation>) -> Vec<Operation> {
        history.push(done(9, "fine", put("x"), (0, 100), Return::Put));
        history.push(done(9, "fine", Call::Get, (200, 300), got(Some("x"))));
        history
    }

    #[test]
    fn a_stale_read_after_a_completed_put_is_a_violation() {
        let history = with_a_fine_key(vec![
            done(1, "k", put("old"), (0, 5), Return::Put),
            done(1, "k", put("new"), (10, 15), Return::Put),
            done(2, "k", Call::Get, (16, 20), got(Some("old"))),
        ]);
        let violation = assert_violation(&history, "k", "the get began after the put of \"new\" completed");
        assert_eq!(
            violation.operations.len(),
            3,
            "expected the violation to list the key's three operations"
        );
    }

    #[test]
    fn a_read_after_a_completed_delete_that_sees_the_value_is_a_violation() {
        let history = with_a_fine_key(vec![
            done(1, "k", put("a"), (0, 5), Return::Put),
            done(1, "k", Call::Delete, (10, 15), Return::Delete { deleted: true }),
            done(2, "k", Call::Get, (16, 20), got(Some("a"))),
        ]);
        assert_violation(&history, "k", "the delete was lost");
    }

    #[test]
    fn two_sequential_cas_from_the_same_value_cannot_both_succeed() {
        let history = with_a_fine_key(vec![
            done(1, "k", put("a"), (0, 5), Return::Put),
            done(1, "k", cas("a", "b"), (10, 15), Return::Cas { succeeded: true }),
            done(2, "k", cas("a", "c"), (20, 25), Return::Cas { succeeded: true }),
        ]);
        assert_violation(&history, "k", "the second cas found \"b\", not \"a\"");
    }

    #[test]
    fn a_cas_on_a_missing_key_never_succeeds() {
        let history =
            with_a_fine_key(vec![done(1, "k", cas("", "b"), (10, 15), Return::Cas { succeeded: true })]);
        assert_violation(&history, "k", "a missing key does not compare equal, even to the empty value");
    }

    #[test]
    fn a_read_of_a_value_nobody_wrote_is_a_violation() {
        let history = with_a_fine_key(vec![
            done(1, "k", put("a"), (0, 5), Return::Put),
            done(2, "k", Call::Get, (3, 20), got(Some("z"))),
        ]);
        assert_violation(&history, "k", "no operation writes \"z\"");
    }

    #[test]
    fn a_read_of_nothing_after_a_completed_put_and_no_delete_is_a_violation() {
        let history = with_a_fine_key(vec![
            done(1, "k", put("a"), (0, 5), Return::Put),
            done(2, "k", Call::Get, (6, 20), got(None)),
        ]);
        assert_violation(&history, "k", "the key exists once the put completed");
    }

    #[test]
    fn an_indeterminate_put_cannot_explain_a_read_before_its_invocation() {
        let history = with_a_fine_key(vec![
            done(2, "k", Call::Get, (0, 5), got(Some("b"))),
            lost(1, "k", put("b"), 10),
        ]);
        assert_violation(&history, "k", "the put of \"b\" was sent after the read completed");
    }

    #[test]
    fn an_indeterminate_put_takes_effect_at_most_once() {
        let history = with_a_fine_key(vec![
            done(1, "k", put("a"), (0, 5), Return::Put),
            lost(1, "k", put("b"), 10),
            done(2, "k", Call::Get, (20, 21), got(Some("b"))),
            done(2, "k", Call::Get, (30, 31), got(Some("a"))),
        ]);
        assert_violation(&history, "k", "\"b\" was read, then \"a\" again with no write of \"a\" since");
    }

    #[test]
    fn a_violation_explains_itself_with_the_keys_operations_in_time_order() {
        let history = with_a_fine_key(vec![
            done(2, "k", Call::Get, (16, 20), got(Some("old"))),
            done(1, "k", put("new"), (10, 15), Return::Put),
            done(1, "k", put("old"), (0, 5), Return::Put),
            lost(3, "k", Call::Get, 1),
        ]);
        let report = check(&history);
        let Verdict::NotLinearizable(violation) = &report.verdict else {
            panic!("expected a stale read to be NOT linearizable, got: {report}");
        };
        let order: Vec<usize> = violation.operations.iter().map(|(index, _)| *index).collect();
        assert_eq!(order, [2, 3, 1, 0], "expected the key's operations by invocation time");
        assert_eq!(violation.longest_linearizable, [2, 1], "expected the two puts to be the longest order");
        assert_eq!(violation.state_after_longest.as_deref(), Some(&b"new"[..]));
        let text = report.to_string();
        for expected in [
            "NOT linearizable",
            "key \"k\"",
            "4 operations (1 indeterminate)",
            "[2] client 1: put \"old\" => ok, 0..5  #1",
            "[3] client 3: get => ?, 1..? (indeterminate)  ignored",
            "[1] client 1: put \"new\" => ok, 10..15  #2",
            "[0] client 2: get => \"old\", 16..20  -",
            "after which the key holds \"new\"",
        ] {
            assert!(text.contains(expected), "expected the explanation to contain {expected:?}:\n{text}");
        }
    }

    // --- Malformed histories and the budget ---------------------------------------------------

    #[test]
    fn a_return_of_another_kind_than_its_call_is_reported_as_malformed() {
        let history = [
            done(1, "k", put("a"), (0, 5), Return::Put),
            done(2, "k", Call::Get, (6, 7), Return::Cas { succeeded: true }),
        ];
        let report = check(&history);
        let Verdict::Malformed(malformed) = &report.verdict else {
            panic!("expected a get answered as a cas to be malformed, got: {report}");
        };
        assert_eq!((malformed.index, malformed.reason), (1, MalformedReason::ReturnDoesNotMatchCall));
        assert!(report.to_string().contains("[1]"), "expected the message to name the operation: {report}");
    }

    #[test]
    fn a_completion_before_the_invocation_is_reported_as_malformed() {
        let history = [done(1, "k", put("a"), (10, 5), Return::Put)];
        let report = check(&history);
        let Verdict::Malformed(malformed) = &report.verdict else {
            panic!("expected an operation completing before its invocation to be malformed, got: {report}");
        };
        assert_eq!((malformed.index, malformed.reason), (0, MalformedReason::CompletedBeforeInvoked));
    }

    #[test]
    fn a_key_that_exceeds_the_step_budget_is_inconclusive_not_a_violation() {
        let history = [
            done(1, "a", put("x"), (0, 5), Return::Put),
            done(1, "b", put("x"), (0, 5), Return::Put),
            done(1, "b", Call::Get, (10, 15), got(Some("x"))),
        ];
        let report = check_with_budget(&history, 1);
        assert_eq!(
            report.verdict,
            Verdict::Inconclusive { keys: vec![b"b".to_vec()], steps_per_key: 1 },
            "expected key \"b\" (two operations) to need more than one step: {report}"
        );
        assert!(check_with_budget(&history, 2).is_linearizable(), "expected two steps to suffice for \"b\"");
    }

    // --- Randomized self-checks ---------------------------------------------------------------

    /// A seeded generator for the randomized tests (SplitMix64).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix(self.0) % n
        }

        fn percent(&mut self, p: u64) -> bool {
            self.below(100) < p
        }

        fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
            of[self.below(of.len() as u64) as usize]
        }
    }

    const KEYS: [&str; 5] = ["k0", "k1", "k2", "k3", "k4"];
    const VALUES: [&str; 3] = ["a", "b", "c"];

    fn random_call(rng: &mut Rng) -> Call {
        match rng.below(100) {
            0..30 => put(rng.pick(&VALUES)),
            30..65 => Call::Get,
            65..75 => Call::Delete,
            _ => cas(rng.pick(&VALUES), rng.pick(&VALUES)),
        }
    }

    /// The reference register, written apart from the checker's model: what `call` returns and
    /// does to `register`.
    fn apply(register: &mut Option<Vec<u8>>, call: &Call) -> Return {
        match call {
            Call::Put { value } => {
                *register = Some(value.clone());
                Return::Put
            }
            Call::Get => Return::Get(register.clone()),
            Call::Delete => Return::Delete { deleted: register.take().is_some() },
            Call::Cas { expected, new } => {
                let succeeded = register.as_ref() == Some(expected);
                if succeeded {
                    *register = Some(new.clone());
                }
                Return::Cas { succeeded }
            }
        }
    }

    /// `count` operations, each completed before the next is invoked, over `keys` keys.
    fn sequential_history(rng: &mut Rng, count: usize, keys: usize) -> Vec<Operation> {
        let mut registers: BTreeMap<&str, Option<Vec<u8>>> = BTreeMap::new();
        let mut now = 0;
        (0..count)
            .map(|_| {
                let key = rng.pick(&KEYS[..keys]);
                let call = random_call(rng);
                let ret = apply(registers.entry(key).or_default(), &call);
                let invoked = now + rng.below(3);
                let completed = invoked + rng.below(3);
                now = completed + 1;
                done(rng.below(3), key, call, (invoked, completed), ret)
            })
            .collect()
    }

    /// `count` operations of `clients` clients over `keys` keys, as an atomic register gives
    /// them: each takes effect at one instant between its invocation and its completion, and the
    /// returns are the register's in the order of those instants. About `lost_percent` of them are
    /// indeterminate: half of those never take effect, the others at any time after invocation
    /// (possibly after the client's next operations).
    fn concurrent_history(
        rng: &mut Rng,
        clients: u64,
        keys: usize,
        count: usize,
        lost_percent: u64,
    ) -> Vec<Operation> {
        let mut free_at = vec![0u64; clients as usize];
        let mut history = Vec::with_capacity(count);
        let mut effects: Vec<(u64, usize)> = Vec::new();
        for index in 0..count {
            let client = rng.below(clients);
            let clock = &mut free_at[client as usize];
            let invoked = *clock + rng.below(3);
            let mut op = lost(client, rng.pick(&KEYS[..keys]), random_call(rng), invoked);
            if rng.percent(lost_percent) {
                if rng.percent(50) {
                    effects.push((invoked + rng.below(40), index));
                }
                *clock = invoked + 5;
            } else {
                let effect = invoked + rng.below(5);
                let completed = effect + rng.below(5);
                effects.push((effect, index));
                // The return is filled in below, once the register is at this op's effect.
                op.completed = Some((completed, Return::Put));
                // The client's next operation may start at this one's completion: concurrent.
                *clock = completed;
            }
            history.push(op);
        }
        effects.sort_unstable();
        let mut registers: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for (_, index) in effects {
            let op = &mut history[index];
            let ret = apply(registers.entry(op.key.clone()).or_default(), &op.call);
            if let Some((_, recorded)) = &mut op.completed {
                *recorded = ret;
            }
        }
        history
    }

    #[test]
    fn random_sequential_histories_are_linearizable() {
        for seed in 0..200 {
            let history = sequential_history(&mut Rng(seed), 40, 2);
            let report = check(&history);
            assert!(report.is_linearizable(), "seed {seed}: expected a sequential history to pass: {report}");
        }
    }

    #[test]
    fn random_histories_of_an_atomic_register_are_linearizable() {
        for seed in 0..200 {
            let history = concurrent_history(&mut Rng(seed), 4, 2, 60, 5);
            let report = check(&history);
            assert!(
                report.is_linearizable(),
                "seed {seed}: expected an atomic register's history to pass: {report}"
            );
        }
    }

    #[test]
    fn an_impossible_return_in_a_random_sequential_history_is_rejected() {
        for seed in 0..200 {
            let mut rng = Rng(seed);
            let mut history = sequential_history(&mut rng, 30, 2);
            // In a sequential history each operation starts from one known state, so any other
            // return than the register's is impossible. Puts have only one return: skip them.
            let candidates: Vec<usize> =
                (0..history.len()).filter(|&i| !matches!(history[i].call, Call::Put { .. })).collect();
            let index = candidates[rng.below(candidates.len() as u64) as usize];
            let Some((_, ret)) = &mut history[index].completed else {
                unreachable!("sequential ops complete")
            };
            *ret = match ret {
                Return::Get(Some(_)) => got(None),
                Return::Get(None) => got(Some("a")),
                Return::Delete { deleted } => Return::Delete { deleted: !*deleted },
                Return::Cas { succeeded } => Return::Cas { succeeded: !*succeeded },
                Return::Put => unreachable!("puts were skipped"),
            };
            let key = String::from_utf8(history[index].key.clone()).expect("generated keys are text");
            assert_violation(
                &history,
                &key,
                &format!("seed {seed}: operation [{index}] was given a wrong return"),
            );
        }
    }

    /// Whether some order of `history` respects real time and the register, found by trying
    /// every order: the reference the checker is held to on small histories. It shares nothing
    /// with the checker but [`apply`]: no split by key, no memo, and indeterminate gets included.
    fn linearizable_by_brute_force(history: &[Operation]) -> bool {
        fn extend(
            history: &[Operation],
            placed: &mut [bool],
            registers: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        ) -> bool {
            let pending = |placed: &[bool], i: usize| !placed[i] && history[i].completed.is_some();
            if !(0..history.len()).any(|i| pending(placed, i)) {
                return true; // what is left is indeterminate: it never took effect
            }
            for next in 0..history.len() {
                let op = &history[next];
                let follows_a_pending_op = (0..history.len()).any(|i| {
                    pending(placed, i)
                        && history[i].completed.as_ref().is_some_and(|(at, _)| *at < op.invoked)
                });
                if placed[next] || follows_a_pending_op {
                    continue;
                }
                let mut after = registers.clone();
                let ret = apply(after.entry(op.key.clone()).or_default(), &op.call);
                if op.completed.as_ref().is_some_and(|(_, recorded)| *recorded != ret) {
                    continue;
                }
                placed[next] = true;
                if extend(history, placed, &after) {
                    return true;
                }
                placed[next] = false;
            }
            false
        }
        extend(history, &mut vec![false; history.len()], &BTreeMap::new())
    }

    #[test]
    fn the_checker_agrees_with_trying_every_order_on_small_random_histories() {
        let (mut accepted, mut rejected) = (0, 0);
        for seed in 0..1500 {
            let mut rng = Rng(seed);
            let mut history = concurrent_history(&mut rng, 3, 2, 7, 20);
            // Some returns replaced by random ones of the right kind: possible or not.
            for op in &mut history {
                let call = op.call.clone();
                if let Some((_, ret)) = op.completed.as_mut().filter(|_| rng.percent(25)) {
                    *ret = match call {
                        Call::Put { .. } => Return::Put,
                        Call::Get => got([None, Some("a"), Some("b")][rng.below(3) as usize]),
                        Call::Delete => Return::Delete { deleted: rng.percent(50) },
                        Call::Cas { .. } => Return::Cas { succeeded: rng.percent(50) },
                    };
                }
            }
            let expected = linearizable_by_brute_force(&history);
            let report = check(&history);
            assert_eq!(
                report.is_linearizable(),
                expected,
                "seed {seed}: expected linearizable = {expected} (by trying every order), got: {report}\n{history:#?}"
            );
            *(if expected { &mut accepted } else { &mut rejected }) += 1;
        }
        assert!(
            accepted > 300 && rejected > 300,
            "expected both verdicts to be well tested: {accepted} accepted, {rejected} rejected"
        );
    }

    #[test]
    fn a_history_of_two_thousand_operations_checks_without_blowing_up() {
        // Five keys, three clients, a few indeterminate operations: the shape of a simulator run.
        let history = concurrent_history(&mut Rng(7), 3, 5, 2000, 1);
        let report = check(&history);
        assert!(report.is_linearizable(), "expected an atomic register's history to pass: {report}");
        assert!(report.indeterminate > 0, "expected the history to have indeterminate operations: {report}");
    }

    #[test]
    fn an_anomaly_at_the_end_of_a_long_history_is_found() {
        // Rejecting means exhausting every order up to the anomaly, past 60 indeterminate ops.
        let mut history = concurrent_history(&mut Rng(8), 3, 5, 2000, 3);
        let last_get = history
            .iter()
            .rposition(|op| matches!(op.completed, Some((_, Return::Get(_)))))
            .expect("a long random history has a completed get");
        if let Some((_, ret)) = &mut history[last_get].completed {
            *ret = got(Some("never written"));
        }
        let key = String::from_utf8(history[last_get].key.clone()).expect("generated keys are text");
        assert_violation(&history, &key, &format!("operation [{last_get}] read a value nobody wrote"));
    }
}
