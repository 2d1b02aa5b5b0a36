//! The raft log on the simulator's crash-losing disk, crashed inside a rollover (between the
//! full segment's closing record and its sync, which the cluster runs never crash in): it must
//! load again, the torn closing record taken for what it is.

use std::sync::Arc;

use latch::storage::{Identity, LogStore, PreparedSnapshot, SnapshotSource, StorageError};
use raft::eraftpb::Entry;
use rand::SeedableRng;

use crate::disk::SimDir;

struct NoSnapshots;

impl SnapshotSource for NoSnapshots {
    fn prepare(&self, _: u64) -> Result<Option<PreparedSnapshot>, String> {
        Ok(None)
    }
}

fn load(dir: &SimDir, seg: u64) -> Result<LogStore, StorageError> {
    let me = Identity { cluster_id: 7, member_id: 1 };
    LogStore::load(Box::new(dir.open()), me, &[1], Arc::new(NoSnapshots), 1 << 20, seg)
}

#[test]
fn a_crash_while_closing_a_full_segment_loads_again() {
    let mut refused = Vec::new();
    let mut runs = 0;
    for size in 250usize..762 {
        let seg = 2048;
        for seed in 0..8u64 {
            let dir = SimDir::new();
            let mut log = load(&dir, seg).expect("fresh");
            let mut i = 1;
            loop {
                // A full flush syncs: the segment, the new one's allocation, its header, the
                // directory, then the closed one (its closing record): the 5th fails.
                dir.fail_sync_after(4);
                let e = Entry { index: i, term: 1, data: vec![b'x'; size].into(), ..Default::default() };
                log.append(&[e]).expect("append");
                match log.flush() {
                    Ok(_) => {
                        dir.disarm();
                        log.committed();
                        i += 1;
                    }
                    Err(_) => break,
                }
                assert!(i < 1000, "no rollover");
            }
            drop(log);
            assert!(dir.take_failed_sync());
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            dir.crash(Some(&mut rng));
            runs += 1;
            if let Err(e) = load(&dir, seg) {
                refused.push(format!("entries of {size} bytes, segments of {seg}, crash seed {seed}: {e}"));
            }
        }
    }
    assert!(refused.is_empty(), "{} of {runs} crashes refused, e.g. {}", refused.len(), refused[0]);
}
