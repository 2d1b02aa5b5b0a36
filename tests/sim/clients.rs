//! Simulated clients and their history.
//!
//! What it models: each client runs one operation at a time. A put writes a key no one else
//! writes (`k/{client}/{n}`) with a random value and a request id drawn from the seed (uuid
//! shaped); it is sent to a random member that is up and, if no answer comes within the
//! client's timeout, or the answer is an error, or the member crashes, sent again *with the same
//! request id* to another member. Now and then a put is sent to two members at once (a hedged
//! request). A read asks one key linearizably (ReadIndex, then the local state of the member
//! that granted it) and is retried the same way.
//!
//! Invariants: the history records, for each key, the one value ever written to it, for each
//! acknowledged put its revision, and what completed reads saw; every operation records what had
//! completed before it was issued ([`Before`]), which is what [`crate::invariants::check_read`]
//! and [`crate::invariants::check_put_reply`] hold its answer to. All choices come from the
//! simulator's seeded rng.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::SmallRng;
use rand::Rng;

use crate::invariants::{Ack, Before};

/// A uuid-shaped request id drawn from the seeded rng.
pub fn request_id(rng: &mut SmallRng) -> String {
    let a: u128 = rng.gen();
    let h = format!("{a:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[derive(Debug, Clone)]
pub enum OpKind {
    Put { key: String, value: Vec<u8>, request_id: String, before: Before },
    Read { key: String, before: Before },
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
}

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

    /// Starts a new op: mostly puts of fresh keys, sometimes a read of a key written (or being
    /// written) by anyone, or of a key no one writes.
    pub fn start(&mut self, rng: &mut SmallRng, history: &mut History) -> &Op {
        self.next_seq += 1;
        let kind = if rng.gen_bool(0.75) || history.written.is_empty() {
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
}
