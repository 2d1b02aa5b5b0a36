//! Linearizability on real processes (issue 6 §2): clients put, get (a third of the gets as a
//! txn that writes nothing, which is served as a read), delete and compare-and-swap the same
//! few keys through every member while the leader is cut off in a minority, the
//! partition heals and a member is SIGKILLed and restarted; the recorded history goes through
//! the Wing–Gong–Lowe checker of `latch-check`. An operation whose answer never came (a timeout,
//! a lost connection) is recorded as indeterminate: it may have taken effect or not.
//!
//! The faults follow the load's progress (so many operations answered, then the next fault), so
//! every phase sees traffic whatever the machine's speed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use latch_check::linearizability::{check, Call, Operation, Return};
use latch_client::{Client, Compare, CompareResult, Op, Txn};
use tokio::time::Instant;

use crate::harness::{eventually, Cluster, Rng, STARTUP};

const KEYS: u64 = 3;
const WORKERS: u64 = 4;

struct Recorder {
    started: Instant,
    history: Mutex<Vec<Operation>>,
    answered: AtomicU64,
    stop: AtomicBool,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Waits until `n` more operations have been answered.
    async fn progress(&self, n: u64, what: &str) {
        let target = self.answered.load(Ordering::Acquire) + n;
        eventually(what, STARTUP, || async {
            let done = self.answered.load(Ordering::Acquire);
            if done >= target {
                Ok(())
            } else {
                Err(format!("{done} of {target} operations answered"))
            }
        })
        .await;
    }
}

async fn worker(id: u64, client: Client, rec: Arc<Recorder>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (id + 1));
    let mut written = 0u64;
    while !rec.stop.load(Ordering::Acquire) {
        let key = format!("lin/{}", rng.below(KEYS));
        let mut fresh = || {
            written += 1;
            format!("w{id}-{written}").into_bytes()
        };
        let call = match rng.below(10) {
            0..=2 => Call::Put { value: fresh() },
            3..=5 => Call::Get,
            6 => Call::Delete,
            _ => {
                // Expect a value some worker wrote recently, so that some swaps succeed.
                let (other, back) = (rng.below(WORKERS), rng.below(3));
                let expected = |written: u64| format!("w{other}-{}", written.saturating_sub(back).max(1));
                let new = fresh();
                Call::Cas { expected: expected(written).into_bytes(), new }
            }
        };
        // Some gets go as a txn that writes nothing: a read served after a ReadIndex too, with
        // a compare that decides which branch reads.
        let in_txn = matches!(call, Call::Get) && rng.below(3) == 0;
        let invoked = rec.now();
        let result = match &call {
            Call::Get if in_txn => {
                let txn = Txn::new()
                    .when([Compare::value(key.clone(), CompareResult::Equal, b"w0-1".to_vec())])
                    .and_then([Op::get(key.clone())])
                    .or_else([Op::get(key.clone())]);
                client.txn(txn).await.map(|r| Return::Get(value_of(&r)))
            }
            Call::Put { value } => client.put(key.clone(), value.clone()).await.map(|_| Return::Put),
            Call::Get => client.get(key.clone()).await.map(|kv| Return::Get(kv.map(|kv| kv.value))),
            Call::Delete => client.delete(key.clone()).await.map(|n| Return::Delete { deleted: n > 0 }),
            Call::Cas { expected, new } => {
                let txn = Txn::new()
                    .when([Compare::value(key.clone(), CompareResult::Equal, expected.clone())])
                    .and_then([Op::put(key.clone(), new.clone())]);
                client.txn(txn).await.map(|r| Return::Cas { succeeded: r.succeeded })
            }
        };
        let completed = result.ok().map(|ret| (rec.now(), ret));
        if completed.is_some() {
            rec.answered.fetch_add(1, Ordering::AcqRel);
        }
        let op = Operation { client: id, key: key.into_bytes(), call, invoked, completed };
        rec.history.lock().unwrap().push(op);
    }
}

/// The value a one-get txn read (either branch).
fn value_of(r: &latch_client::TxnResponse) -> Option<Vec<u8>> {
    r.responses.iter().find_map(|op| match &op.response {
        Some(latch_client::proto::response_op::Response::Range(range)) => {
            range.kvs.first().map(|kv| kv.value.clone())
        }
        _ => None,
    })
}

#[tokio::test]
async fn puts_gets_deletes_and_swaps_through_partitions_and_kills_are_linearizable() {
    let mut c = Cluster::start(3, &["--fault-injection"]).await;
    c.leader().await;
    let rec = Arc::new(Recorder {
        started: Instant::now(),
        history: Mutex::new(Vec::new()),
        answered: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let mut workers = Vec::new();
    for (id, client) in (0..WORKERS).zip(c.impatient_clients(WORKERS).await) {
        workers.push(tokio::spawn(worker(id, client, rec.clone())));
    }

    rec.progress(100, "100 operations before any fault").await;
    let leader = c.leader().await;
    c.isolate(leader).await;
    rec.progress(100, "100 operations with the old leader cut off").await;
    c.heal_all().await;
    rec.progress(100, "100 operations after healing").await;
    let victim = c.leader().await;
    c.kill(victim);
    rec.progress(100, "100 operations with a member killed").await;
    c.restart(victim).await;
    rec.progress(100, "100 operations after the restart").await;

    rec.stop.store(true, Ordering::Release);
    for w in workers {
        w.await.unwrap();
    }
    let history = rec.history.lock().unwrap().clone();
    let report = check(&history);
    eprintln!("{report}");
    assert!(
        report.is_linearizable(),
        "the history of {} operations should be linearizable:\n{report}",
        history.len()
    );
    assert!(report.operations >= 500, "at least 500 operations should have been judged: {report}");
}
