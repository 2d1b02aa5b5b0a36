//! The search for one key: Wing & Gong's algorithm with Lowe's memoization, over the operations
//! [`super::KeyHistory`] prepared (values interned, indeterminate gets left out).
//!
//! What is here: [`search`] and what it is made of — the configuration and its undo stack
//! ([`Search`]), the set of placed operations ([`Placed`]), the memo ([`Explored`]) and the
//! linked lists of call and return entries ([`Entries`]). It knows the model only through
//! [`Step::apply`]; it imports nothing but its parent.

use std::collections::HashMap;

use super::{SearchOp, State, Step, ABSENT};

/// How the search of one key ended.
pub(super) enum Outcome {
    Linearizable,
    /// `longest`: positions in the key's ops of the deepest stack reached, bottom first; `state`:
    /// the register after them.
    Violation {
        longest: Vec<usize>,
        state: State,
    },
    /// The step budget ran out.
    Exhausted,
}

/// Wing & Gong's search with Lowe's memoization over one key's operations; also returns the
/// steps taken (one per entry examined), at most `budget`.
///
/// Among the operations that may go next, completed ones are tried first and indeterminate ones
/// only after them (the *lazy* pass): an indeterminate operation is then placed only where
/// nothing else fits, and the memo's subsumption (see [`Explored`]) cuts every configuration
/// that differs from one already tried only by having placed more indeterminate operations.
/// Measured on 2,000-operation histories with an anomaly at the end, this order and the twins
/// below took 4 to 24 times fewer steps to reject than an eager search with an exact memo.
///
/// Indeterminate operations with the same call are interchangeable, except that one invoked
/// earlier may go anywhere a later one may: of such *twins*, the search only ever places the
/// earliest unplaced one (see [`Search::twin_before`]). A linearization that places a later twin
/// first can swap the two and stay one.
pub(super) fn search(ops: &[SearchOp], budget: u64) -> (Outcome, u64) {
    let mut search = Search::new(ops);
    let mut steps = 0;
    let mut entry = search.entries.first();
    // The pass the scan is in: `None`, the first, along the completed list; `Some(bound)`, the
    // lazy one, along the indeterminate calls invoked at or before `bound` — the time of the first
    // return left in the completed list (`u64::MAX` if none), so the ones all of whose real-time
    // predecessors are placed.
    let mut lazy: Option<u64> = None;
    loop {
        if search.unplaced == 0 {
            return (Outcome::Linearizable, steps);
        }
        if steps == budget {
            return (Outcome::Exhausted, steps);
        }
        steps += 1;
        let may_go = match lazy {
            None => match search.entries.at(entry) {
                Entry::Call => true,
                // A return (its op can no longer be placed after the ones left before it) or the
                // end of the list: every completed op that may go next has been tried.
                Entry::Return { time } => {
                    (entry, lazy) = (search.entries.first_indeterminate(), Some(time));
                    continue;
                }
                Entry::End => {
                    (entry, lazy) = (search.entries.first_indeterminate(), Some(u64::MAX));
                    continue;
                }
            },
            Some(bound) => search.entries.invoked_by(entry, bound),
        };
        if !may_go {
            // Every op that may go next has been tried: take back the last choice and resume
            // the pass that made it, after it.
            let Some((call, pass)) = search.undo() else {
                let Search { longest, longest_state, .. } = search;
                return (Outcome::Violation { longest, state: longest_state }, steps);
            };
            (entry, lazy) = (search.entries.next(call), pass);
        } else if search.place(entry, lazy) {
            (entry, lazy) = (search.entries.first(), None);
        } else {
            entry = search.entries.next(entry);
        }
    }
}

/// The search's configuration and memory.
///
/// Invariants: the lifted entries are exactly those of the ops on `stack`; `placed` marks exactly
/// those ops; `state` is the register after them, in stack order; `unplaced` counts the completed
/// ops not on `stack`.
struct Search<'a> {
    ops: &'a [SearchOp],
    entries: Entries,
    stack: Vec<Frame>,
    placed: Placed,
    state: State,
    unplaced: usize,
    explored: Explored,
    /// For each indeterminate op, its twin invoked just before it (ties: earlier in `ops`), if
    /// any: the same call, so it may be placed only once that twin is. Placed twins are thus
    /// always the earliest of their calls, which keeps configurations that differ only in which
    /// twin took effect from being explored one by one.
    twin_before: Vec<Option<usize>>,
    /// The ops of the deepest stack so far, bottom first, and the register after them: what a
    /// violation shows.
    longest: Vec<usize>,
    longest_state: State,
}

/// An operation placed by the search: its call entry, the register before it took effect, and
/// the pass that placed it (`None`: the first; `Some(bound)`: the lazy one with that bound).
struct Frame {
    call: usize,
    before: State,
    pass: Option<u64>,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [SearchOp]) -> Self {
        let entries = Entries::new(ops);
        let placed = Placed::new(ops);
        let mut explored = Explored::default();
        // The initial configuration is explored: one that placed only indeterminate ops and
        // left the key absent is subsumed by it.
        explored.insert(placed.hash(ABSENT), &placed.completed, &placed.indeterminate, ABSENT);
        let mut indeterminate: Vec<usize> =
            (0..ops.len()).filter(|&op| ops[op].completed.is_none()).collect();
        indeterminate.sort_by_key(|&op| (ops[op].invoked, op));
        let mut latest: HashMap<Step, usize> = HashMap::new();
        let mut twin_before = vec![None; ops.len()];
        for op in indeterminate {
            twin_before[op] = latest.insert(ops[op].step, op);
        }
        Search {
            ops,
            entries,
            twin_before,
            stack: Vec::new(),
            placed,
            state: ABSENT,
            unplaced: ops.iter().filter(|op| op.completed.is_some()).count(),
            explored,
            longest: Vec::new(),
            longest_state: ABSENT,
        }
    }

    /// Places the op of the call entry `call` next, if the register accepts its return and the
    /// configuration this leads to is not subsumed by one explored already. Returns whether it
    /// did.
    fn place(&mut self, call: usize, pass: Option<u64>) -> bool {
        let op = self.entries.op(call);
        if self.twin_before[op].is_some_and(|twin| !self.placed.contains(twin)) {
            return false;
        }
        let Some(next) = self.ops[op].step.apply(self.state) else {
            return false;
        };
        self.placed.flip(op);
        let (hash, placed) = (self.placed.hash(next), &self.placed);
        if !self.explored.insert(hash, &placed.completed, &placed.indeterminate, next) {
            self.placed.flip(op);
            return false;
        }
        self.stack.push(Frame { call, before: self.state, pass });
        self.state = next;
        self.unplaced -= usize::from(self.ops[op].completed.is_some());
        self.entries.lift(call);
        if self.stack.len() > self.longest.len() {
            self.longest = self.stack.iter().map(|frame| self.entries.op(frame.call)).collect();
            self.longest_state = self.state;
        }
        true
    }

    /// Takes back the last placed op; returns its call entry and the pass that placed it, or
    /// `None` if nothing is placed.
    fn undo(&mut self) -> Option<(usize, Option<u64>)> {
        let Frame { call, before, pass } = self.stack.pop()?;
        let op = self.entries.op(call);
        self.placed.flip(op);
        self.state = before;
        self.unplaced += usize::from(self.ops[op].completed.is_some());
        self.entries.unlift(call);
        Some((call, pass))
    }
}

/// The set of placed ops, as two bitsets: completed ops and indeterminate ones, each numbered
/// in its own kind. `completed_hash` is the xor of the `zobrist` values of the placed completed
/// ops, kept as ops are flipped so that hashing a configuration costs O(1).
struct Placed {
    completed: Vec<u64>,
    indeterminate: Vec<u64>,
    /// For each op, its bit number among the ops of its kind.
    bit: Vec<usize>,
    is_completed: Vec<bool>,
    /// One random-looking value per completed op.
    zobrist: Vec<u64>,
    completed_hash: u64,
}

impl Placed {
    fn new(ops: &[SearchOp]) -> Self {
        let (mut completed, mut indeterminate) = (0usize, 0usize);
        let bit = ops
            .iter()
            .map(|op| {
                let counter = if op.completed.is_some() { &mut completed } else { &mut indeterminate };
                *counter += 1;
                *counter - 1
            })
            .collect();
        Placed {
            completed: vec![0; completed.div_ceil(64)],
            indeterminate: vec![0; indeterminate.div_ceil(64)],
            bit,
            is_completed: ops.iter().map(|op| op.completed.is_some()).collect(),
            zobrist: (0..completed as u64).map(mix).collect(),
            completed_hash: 0,
        }
    }

    fn contains(&self, op: usize) -> bool {
        let (bit, words) =
            (self.bit[op], if self.is_completed[op] { &self.completed } else { &self.indeterminate });
        words[bit / 64] & (1 << (bit % 64)) != 0
    }

    /// Adds `op` to the set if absent, removes it if present.
    fn flip(&mut self, op: usize) {
        let bit = self.bit[op];
        let words = if self.is_completed[op] {
            self.completed_hash ^= self.zobrist[bit];
            &mut self.completed
        } else {
            &mut self.indeterminate
        };
        words[bit / 64] ^= 1 << (bit % 64);
    }

    /// The memo's hash of this set with register `state`: of the completed ops only, as
    /// subsumption compares configurations that differ in their indeterminate ones.
    fn hash(&self, state: State) -> u64 {
        mix(self.completed_hash ^ u64::from(state))
    }
}

/// The SplitMix64 finalizer: a cheap bijective mix of 64 bits, for the configuration hashes.
pub(super) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Lowe's memo, with subsumption: the configurations (placed ops, register state) the search
/// has explored.
///
/// A configuration C is *subsumed* by an explored one E when both have placed the same completed
/// ops and reached the same state, and E's placed indeterminate ops are a subset of C's. Then
/// whatever can follow C can follow E (the extra indeterminate ops are among those E may leave
/// out forever; they constrain no one in real time), so C need not be explored. Why this loses
/// nothing, even when E is still on the stack: suppose the search fails although some explored
/// configuration can reach the end, and take such an A with the shortest way there. The first
/// step of that way was tried from A, and led to a configuration that was either explored or
/// subsumed by an explored one — either way an explored configuration with a shorter way to the
/// end, against the choice of A. (The initial configuration counts as explored.) With no
/// indeterminate ops this is Lowe's memo exactly: equal configurations.
///
/// Keyed by a hash of the completed set and state; a collision costs time, never a wrong answer.
#[derive(Default)]
struct Explored {
    by_hash: HashMap<u64, Vec<Class>>,
}

/// The explored configurations with one set of placed completed ops and one state.
struct Class {
    completed: Box<[u64]>,
    state: State,
    /// Their sets of placed indeterminate ops, none a superset of another.
    indeterminate: Vec<Box<[u64]>>,
}

impl Explored {
    /// Records the configuration; `false` if an explored one subsumes it (equal ones included).
    fn insert(&mut self, hash: u64, completed: &[u64], indeterminate: &[u64], state: State) -> bool {
        let classes = self.by_hash.entry(hash).or_default();
        let Some(class) =
            classes.iter_mut().find(|class| class.state == state && *class.completed == *completed)
        else {
            classes.push(Class {
                completed: completed.into(),
                state,
                indeterminate: vec![indeterminate.into()],
            });
            return true;
        };
        if class.indeterminate.iter().any(|explored| is_subset(explored, indeterminate)) {
            return false;
        }
        class.indeterminate.retain(|explored| !is_subset(indeterminate, explored));
        class.indeterminate.push(indeterminate.into());
        true
    }
}

/// Whether the bitset `small` is a subset of `large` (of the same length).
fn is_subset(small: &[u64], large: &[u64]) -> bool {
    small.iter().zip(large).all(|(s, l)| s & !l == 0)
}

/// The end of a list.
const NIL: usize = usize::MAX;

/// The head sentinel of the completed list in [`Entries::nodes`].
const COMPLETED_HEAD: usize = 0;

/// The head sentinel of the indeterminate list in [`Entries::nodes`].
const INDETERMINATE_HEAD: usize = 1;

/// One key's operations as two doubly linked lists over a vector: the *completed list*, the call
/// and return entries of the completed operations in time order, and the *indeterminate list*,
/// the call entries of the indeterminate ones (they have no return) in invocation order.
///
/// Invariants: the completed list is sorted by time with calls before returns at equal times, so
/// an op's call precedes its return; an op's call is in its list iff its return is (lifting
/// removes both). Unlifting must undo liftings in the reverse order (the stack's): a removed node keeps
/// its links, which are then exactly the neighbours to relink it between (dancing links).
struct Entries {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    /// Position of the op in the key's ops (meaningless for a head).
    op: usize,
    is_call: bool,
    /// The invocation time of a call, the completion time of a return.
    time: u64,
    prev: usize,
    next: usize,
    /// For a call: its op's return entry, or `NIL` for an indeterminate op.
    ret: usize,
}

/// What an entry of the completed list is.
enum Entry {
    Call,
    Return {
        time: u64,
    },
    /// Past the last entry.
    End,
}

impl Entries {
    fn new(ops: &[SearchOp]) -> Self {
        // (time, is a return, op): sorting puts calls before returns at equal times.
        let mut completed: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
        let mut indeterminate: Vec<(u64, bool, usize)> = Vec::new();
        for (op, timing) in ops.iter().enumerate() {
            match timing.completed {
                Some(time) => completed.extend([(timing.invoked, false, op), (time, true, op)]),
                None => indeterminate.push((timing.invoked, false, op)),
            }
        }
        completed.sort_unstable();
        indeterminate.sort_unstable();
        let head = Node { op: 0, is_call: false, time: 0, prev: NIL, next: NIL, ret: NIL };
        let mut nodes = vec![head, head];
        for (head, events) in [(COMPLETED_HEAD, completed), (INDETERMINATE_HEAD, indeterminate)] {
            let mut prev = head;
            for (time, is_return, op) in events {
                let index = nodes.len();
                nodes[prev].next = index;
                nodes.push(Node { op, is_call: !is_return, time, prev, next: NIL, ret: NIL });
                prev = index;
            }
        }
        // Completion is never before invocation (checked by `find_malformed`), so each call is
        // met before its return.
        let mut call_of = vec![NIL; ops.len()];
        for index in INDETERMINATE_HEAD + 1..nodes.len() {
            let Node { op, is_call, .. } = nodes[index];
            if is_call {
                call_of[op] = index;
            } else {
                nodes[call_of[op]].ret = index;
            }
        }
        Entries { nodes }
    }

    fn first(&self) -> usize {
        self.nodes[COMPLETED_HEAD].next
    }

    fn first_indeterminate(&self) -> usize {
        self.nodes[INDETERMINATE_HEAD].next
    }

    fn next(&self, entry: usize) -> usize {
        self.nodes[entry].next
    }

    fn op(&self, entry: usize) -> usize {
        self.nodes[entry].op
    }

    /// What `entry` (of the completed list, or `NIL`) is.
    fn at(&self, entry: usize) -> Entry {
        match self.nodes.get(entry) {
            None => Entry::End,
            Some(node) if node.is_call => Entry::Call,
            Some(node) => Entry::Return { time: node.time },
        }
    }

    /// Whether `entry` (of the indeterminate list, or `NIL`) is a call invoked at or before `time`.
    fn invoked_by(&self, entry: usize, time: u64) -> bool {
        self.nodes.get(entry).is_some_and(|node| node.time <= time)
    }

    /// Removes a call entry and its return, if any, from their list.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        let ret = self.nodes[call].ret;
        if ret != NIL {
            self.unlink(ret);
        }
    }

    /// Puts back what the last `lift` still in force removed: `call` must be that lift's entry.
    fn unlift(&mut self, call: usize) {
        let ret = self.nodes[call].ret;
        if ret != NIL {
            self.relink(ret);
        }
        self.relink(call);
    }

    fn unlink(&mut self, entry: usize) {
        let Node { prev, next, .. } = self.nodes[entry];
        self.nodes[prev].next = next;
        if next != NIL {
            self.nodes[next].prev = prev;
        }
    }

    fn relink(&mut self, entry: usize) {
        let Node { prev, next, .. } = self.nodes[entry];
        self.nodes[prev].next = entry;
        if next != NIL {
            self.nodes[next].prev = entry;
        }
    }
}
