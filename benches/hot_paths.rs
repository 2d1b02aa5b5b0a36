//! Criterion benchmarks of the hot paths a regression would hide in: applying a batch of puts
//! to the state machine, and a member's batches of lock acquires and releases, a Range over
//! 100,000 keys (on an in-memory redb backend: Latch's and
//! redb's CPU, not the disk), appending to the raft log (a real file in a temp dir, fdatasync
//! included), and a check point's hash of a state of 1,000,000 keys (a real state file, redb's
//! cache at its default size).
//!
//! `cargo bench --bench hot_paths`

use std::cell::Cell;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use latch::fsm;
use latch::storage::{self, LogStore, PreparedSnapshot, SnapshotSource};
use latch_proto::internal::{
    command::Body, lock_result::Status, outcome::Result as Outcome_, Acquire, Command, CreateSession, Put,
    Range, Release,
};
use prost::Message as _;
use raft::eraftpb::Entry;
use redb::backends::InMemoryBackend;
use redb::Database;
use redb::ReadableDatabase as _;

const BATCH: u64 = 256;

fn store() -> Arc<Database> {
    storage::open_with_backend(
        InMemoryBackend::new(),
        storage::Identity { cluster_id: 1, member_id: 1 },
        latch::config::STATE_CACHE_BYTES,
    )
    .expect("an in-memory store opens")
    .0
}

fn put_command(i: u64) -> Vec<u8> {
    Command {
        version: fsm::COMMAND_VERSION,
        request_id: format!("req-{i:016}"),
        body: Some(Body::Put(Put {
            key: format!("bench/{i:010}").into_bytes(),
            value: vec![b'v'; 256],
            ..Default::default()
        })),
    }
    .encode_to_vec()
}

fn apply_batch_of_puts(c: &mut Criterion) {
    let mut g = c.benchmark_group("fsm");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("apply 256 puts in one transaction", |b| {
        let db = store();
        // Shared by the setup and the measured closure, hence a Cell.
        let index = Cell::new(0u64);
        b.iter_batched(
            || (0..BATCH).map(|i| put_command(index.get() + i)).collect::<Vec<_>>(),
            |cmds| {
                let txn = db.begin_write().expect("write txn");
                for data in &cmds {
                    index.set(index.get() + 1);
                    fsm::apply_entry(&txn, index.get(), 1, data, &fsm::Bounds::default()).expect("apply");
                }
                txn.commit().expect("commit");
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// What a member's apply thread does for 16 lock clients, each looping acquire + release of
/// a lock of its own (`latch bench lock --clients 16 --uncontended`): the 16 acquires, then
/// the 16 releases, in batches of 8 entries (about what such a run's batches hold), each
/// batch a transaction committed without fsync, as a member's are between its durable ones.
/// The request memory is at its bound, as a member's is once it has run a while: each entry
/// remembered forgets the oldest. The bound is small so that the setup reaches it quickly (the
/// memory's tables are shallower than at the members' 32 MiB, so a little cheaper to change).
fn apply_lock_pairs(c: &mut Criterion) {
    const CLIENTS: u64 = 16;
    const PER_BATCH: usize = 8;
    let db = store();
    let bounds = fsm::Bounds { events: false, request_memory_bytes: 256 * 1024, ..fsm::Bounds::default() };
    let index = Cell::new(0u64);
    let command = |i: u64, body: Body| {
        Command { version: fsm::COMMAND_VERSION, request_id: format!("req-{i:016}"), body: Some(body) }
            .encode_to_vec()
    };
    let apply = |cmds: &[Vec<u8>]| -> Vec<fsm::AppliedCommand> {
        let mut applied = Vec::new();
        for chunk in cmds.chunks(PER_BATCH) {
            let mut txn = db.begin_write().expect("write txn");
            txn.set_durability(redb::Durability::None).expect("durability");
            let mut batch = fsm::Batch::begin(&txn, bounds).expect("batch");
            for data in chunk {
                index.set(index.get() + 1);
                applied.extend(batch.apply_entry(index.get(), 1, data).expect("apply"));
            }
            batch.finish().expect("finish");
            txn.commit().expect("commit");
        }
        applied
    };
    let sessions: Vec<Vec<u8>> = (0..CLIENTS)
        .map(|s| {
            command(
                s,
                Body::CreateSession(CreateSession {
                    id: format!("session-{s:02}"),
                    name: String::new(),
                    ttl_ms: 10_000,
                }),
            )
        })
        .collect();
    apply(&sessions);
    let pairs = || {
        let first = index.get();
        let acquires: Vec<Vec<u8>> = (0..CLIENTS)
            .map(|s| {
                command(
                    first + s,
                    Body::Acquire(Acquire {
                        name: format!("bench-lock-{s:02}"),
                        session: format!("session-{s:02}"),
                        wait: true,
                        lock_delay_ms: 5_000,
                        max_waiters: 10_000,
                        max_session_locks: 10_000,
                        max_row_bytes: latch::fsm::locks::MAX_ROW_BYTES,
                        ..Default::default()
                    }),
                )
            })
            .collect();
        let releases: Vec<Vec<u8>> = apply(&acquires)
            .into_iter()
            .enumerate()
            .map(|(s, a)| match a.outcome.result {
                Some(Outcome_::Lock(granted)) if granted.status == Status::Granted as i32 => command(
                    first + CLIENTS + s as u64,
                    Body::Release(Release { sequencer: granted.sequencer }),
                ),
                other => panic!("an uncontended acquire is granted, got {other:?}"),
            })
            .collect();
        for r in apply(&releases) {
            assert!(
                matches!(r.outcome.result, Some(Outcome_::Lock(ref done)) if done.status == Status::Done as i32),
                "a holder's release is done, got {:?}",
                r.outcome
            );
        }
    };
    for _ in 0..100 {
        pairs();
    }
    let first_acquire = format!("req-{CLIENTS:016}");
    let remembered = fsm::remembered(&db.begin_read().expect("read txn"), &first_acquire).expect("a lookup");
    assert!(!remembered, "the request memory is at its bound: it forgot the first acquire");
    let mut g = c.benchmark_group("fsm");
    g.throughput(Throughput::Elements(CLIENTS));
    g.bench_function("apply 16 lock acquire + release pairs", |b| b.iter(pairs));
    g.finish();
}

fn range_over_100k_keys(c: &mut Criterion) {
    let db = store();
    let txn = db.begin_write().expect("write txn");
    for i in 0..100_000u64 {
        fsm::apply_entry(&txn, i + 1, 1, &put_command(i), &fsm::Bounds::default()).expect("apply");
    }
    txn.commit().expect("commit");
    let all = Range { key: b"bench/".to_vec(), range_end: b"bench0".to_vec(), ..Default::default() };
    let mut g = c.benchmark_group("fsm");
    g.throughput(Throughput::Elements(100_000));
    g.sample_size(10);
    g.bench_function("range over 100,000 keys", |b| {
        b.iter(|| {
            let (_, r) = fsm::range(&db.begin_read().expect("read txn"), &all, usize::MAX).expect("range");
            assert_eq!(r.count, 100_000);
        })
    });
    let count = Range { count_only: true, ..all.clone() };
    g.bench_function("count over 100,000 keys", |b| {
        b.iter(|| fsm::range(&db.begin_read().expect("read txn"), &count, usize::MAX).expect("range"))
    });
    g.finish();
}

/// The raft log benchmark never asks for a snapshot.
struct NoSnapshots;

impl SnapshotSource for NoSnapshots {
    fn prepare(&self, _request_index: u64) -> Result<Option<PreparedSnapshot>, String> {
        Ok(None)
    }
}

fn append_to_raft_log(c: &mut Criterion) {
    let mut g = c.benchmark_group("raft log");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("append 256 entries and flush", |b| {
        let dir = tempfile::tempdir().expect("a temp dir");
        let files = latch::storage::files::FsDir::open(dir.path()).expect("the log dir opens");
        let identity = latch::storage::Identity { cluster_id: 1, member_id: 1 };
        let mut log =
            LogStore::load(Box::new(files), identity, &[1], Arc::new(NoSnapshots), 64 << 20, 64 << 20)
                .expect("log loads");
        let next = Cell::new(1u64);
        b.iter_batched(
            || {
                let first = next.get();
                (0..BATCH)
                    .map(|i| Entry {
                        index: first + i,
                        term: 1,
                        data: put_command(first + i).into(),
                        ..Default::default()
                    })
                    .collect::<Vec<_>>()
            },
            |entries| {
                log.append(&entries).expect("append");
                log.flush().expect("flush");
                log.committed();
                next.set(next.get() + BATCH);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// What every member spends at each check point (`core::state_check`) on a state of a million
/// 100-byte values: their history rows too, and the request memory at its bound (not hashed).
fn hash_the_state_of_a_million_keys(c: &mut Criterion) {
    const KEYS: u64 = 1_000_000;
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("state.redb"))
        .expect("the state file opens");
    let (db, _) = storage::open_with_backend(
        redb::backends::FileBackend::new(file).expect("a file backend"),
        storage::Identity { cluster_id: 1, member_id: 1 },
        latch::config::STATE_CACHE_BYTES,
    )
    .expect("the state opens");
    for first in (0..KEYS).step_by(10_000) {
        let txn = db.begin_write().expect("write txn");
        for i in first..first + 10_000 {
            let cmd = Command {
                version: fsm::COMMAND_VERSION,
                request_id: format!("req-{i:016}"),
                body: Some(Body::Put(Put {
                    key: format!("bench/{i:010}").into_bytes(),
                    value: vec![b'v'; 100],
                    ..Default::default()
                })),
            };
            fsm::apply_entry(&txn, i + 1, 1, &cmd.encode_to_vec(), &fsm::Bounds::default()).expect("apply");
        }
        txn.commit().expect("commit");
    }
    let mut g = c.benchmark_group("state check");
    g.throughput(Throughput::Elements(KEYS));
    g.sample_size(10);
    g.bench_function("hash a state of 1,000,000 keys", |b| {
        b.iter(|| fsm::checked_state_hash(&db.begin_read().expect("read txn")).expect("hash"))
    });
    g.finish();
}

criterion_group!(
    benches,
    apply_batch_of_puts,
    apply_lock_pairs,
    range_over_100k_keys,
    append_to_raft_log,
    hash_the_state_of_a_million_keys
);
criterion_main!(benches);
