//! Simulated clients and their history.
//!
//! What it models: each client runs one operation at a time, of three families:
//! - Write-once keys, for durability: a put writes a key no one else writes (`k/{client}/{n}`)
//!   with a random value; a read asks one such key linearizably. Every acknowledged put must be
//!   on every member at the end.
//! - Shared keys (`s/0` … `s/{n}`), for linearizability: every client puts (overwriting),
//!   gets, deletes and compare-and-swaps (a txn: if the value is X, put Y) the same few keys.
//!   Each operation is recorded with its invocation and completion time for the
//!   Wing–Gong–Lowe checker (`latch-check`), which judges the whole history at the end.
//! - Serializable gets of a shared key, answered from one member's own state at once: checked
//!   for never going backwards on that member.
//!
//! A write carries a request id drawn from the seed (uuid shaped); it is sent to a random member
//! and, if no answer comes within the client's timeout, or the answer is an error, or the
//! member crashes, sent again *with the same request id* to another member, until it is
//! answered: an operation's interval spans from its first send to the answer that completes it.
//! Now and then a write-once put is sent to two members at once (a hedged request).
//!
//! Invariants: the history records, for each write-once key, the one value ever written to it,
//! for each acknowledged put its revision, and what completed reads saw; every operation
//! records what had completed before it was issued ([`Before`]), which is what
//! [`crate::invariants::check_read`] and [`crate::invariants::check_put_reply`] hold its answer
//! to. All choices come from the simulator's seeded rng.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::SmallRng;
use rand::Rng;

use latch_check::linearizability::{Call, Operation};

use crate::invariants::{Ack, Before};

/// A uuid-shaped request id drawn from the seeded rng.
pub fn request_id(rng: &mut SmallRng) -> String {
    let a: u128 = rng.gen();
    let h = format!("{a:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[derive(Debug, Clone)]
pub enum OpKind {
    Put {
        key: String,
        value: Vec<u8>,
        request_id: String,
        before: Before,
    },
    Read {
        key: String,
        before: Before,
    },
    /// An operation on a shared key: `history.shared[index]` records it.
    Shared {
        index: usize,
        call: Call,
        request_id: String,
    },
    SerialRead {
        key: String,
    },
}

#[derive(Debug, Clone)]
pub struct Op {
    /// Unique per client; replies name the op they answer.
    pub seq: u64,
    pub kind: OpKind,
    /// Sends so far; a timeout only counts for the latest one.
    pub attempt: u64,
    /// The member the latest attempt went to.
    pub node: u64,
}

#[derive(Debug, Default)]
pub struct Client {
    pub id: usize,
    pub next_key: u64,
    pub next_seq: u64,
    pub op: Option<Op>,
}

/// What every client saw, for the checks.
#[derive(Debug, Default)]
pub struct History {
    /// The one value ever written to each key (written or not yet).
    pub written: BTreeMap<String, Vec<u8>>,
    pub acked: BTreeMap<String, Ack>,
    /// The highest revision of any completed operation (put revision, read header revision).
    pub max_revision: i64,
    /// Keys a completed read found.
    pub observed: BTreeSet<String>,
    pub puts_issued: u64,
    pub reads_done: u64,
    pub retries: u64,
    /// Every operation on a shared key, for the linearizability checker.
    pub shared: Vec<Operation>,
    /// Every value ever written to a shared key, so a CAS can expect a plausible one.
    pub shared_values: Vec<Vec<u8>>,
    pub serial_reads: u64,
}

/// How many shared keys a run uses.
pub const SHARED_KEYS: u64 = 3;

impl History {
    /// What had completed by now, as it concerns `key`.
    pub fn before(&self, key: &str) -> Before {
        Before {
            max_revision: self.max_revision,
            acked: self.acked.get(key).cloned(),
            observed: self.observed.contains(key),
        }
    }
}

impl Client {
    pub fn new(id: usize) -> Client {
        Client { id, ..Default::default() }
    }

    /// Starts a new op at `now`: half the time one on a shared key; otherwise mostly puts of
    /// fresh keys, sometimes a read of a key written (or being written) by anyone, or of a key no
    /// one writes.
    pub fn start(&mut self, rng: &mut SmallRng, history: &mut History, now: u64) -> &Op {
        self.next_seq += 1;
        let kind = if rng.gen_bool(0.5) {
            self.shared_op(rng, history, now)
        } else if rng.gen_bool(0.75) || history.written.is_empty() {
            self.next_key += 1;
            let key = format!("k/{}/{}", self.id, self.next_key);
            let value = format!("v{:08x}", rng.gen::<u32>()).into_bytes();
            history.written.insert(key.clone(), value.clone());
            history.puts_issued += 1;
            let before = history.before(&key);
            OpKind::Put { key, value, request_id: request_id(rng), before }
        } else {
            let key = if rng.gen_bool(0.1) {
                format!("k/none/{}", rng.gen_range(0..1000))
            } else {
                let n = rng.gen_range(0..history.written.len());
                history.written.keys().nth(n).cloned().unwrap_or_default()
            };
            let before = history.before(&key);
            OpKind::Read { key, before }
        };
        self.op = Some(Op { seq: self.next_seq, kind, attempt: 0, node: 0 });
        self.op.as_ref().expect("just set")
    }

    fn shared_op(&mut self, rng: &mut SmallRng, history: &mut History, now: u64) -> OpKind {
        let key = format!("s/{}", rng.gen_range(0..SHARED_KEYS));
        if rng.gen_bool(0.1) {
            return OpKind::SerialRead { key };
        }
        let fresh = |rng: &mut SmallRng| format!("c{}-{:08x}", self.id, rng.gen::<u32>()).into_bytes();
        let call = match rng.gen_range(0..10) {
            0..=2 => Call::Put { value: fresh(rng) },
            3..=5 => Call::Get,
            6 => Call::Delete,
            _ => {
                let expected = match history.shared_values.len() {
                    0 => fresh(rng),
                    n => history.shared_values[rng.gen_range(n.saturating_sub(4)..n)].clone(),
                };
                Call::Cas { expected, new: fresh(rng) }
            }
        };
        match &call {
            Call::Put { value } | Call::Cas { new: value, .. } => history.shared_values.push(value.clone()),
            Call::Get | Call::Delete => {}
        }
        let index = history.shared.len();
        history.shared.push(Operation {
            client: self.id as u64,
            key: key.into_bytes(),
            call: call.clone(),
            invoked: now,
            completed: None,
        });
        OpKind::Shared { index, call, request_id: request_id(rng) }
    }
}
