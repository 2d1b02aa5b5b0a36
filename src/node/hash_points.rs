//! Hashes the state at each check point (`core::state_check`) on a thread of its own, so that
//! the apply thread never waits for a pass over the whole state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::core::applier::PointHasher;
use crate::core::state_check::StateHashes;

/// One hash at a time: a check point that comes while the last one's hash still runs is
/// skipped (a member whose state takes longer to hash than points take to come checks fewer
/// of them; its peers check theirs all the same). The read transaction it hashes keeps the
/// pages it reads from being reused meanwhile, so the state file may grow by what is written
/// during one hash. Dropped (the applier with it, at shutdown), it stops a hash that runs,
/// which lets go of the state file within [`crate::fsm::checked_state_hash_unless`]'s next
/// few thousand rows.
#[derive(Debug)]
pub struct ThreadHasher {
    hashes: Arc<StateHashes>,
    busy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl ThreadHasher {
    /// Records the hashes it makes in `hashes`.
    pub fn new(hashes: Arc<StateHashes>) -> ThreadHasher {
        ThreadHasher {
            hashes,
            busy: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Drop for ThreadHasher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl PointHasher for ThreadHasher {
    fn hash(&self, index: u64, state: redb::ReadTransaction) {
        if self.busy.swap(true, Ordering::AcqRel) {
            tracing::debug!(index, "state check point skipped: the last one's hash still runs");
            return;
        }
        let (hashes, busy, stop) = (self.hashes.clone(), self.busy.clone(), self.stop.clone());
        let spawned = std::thread::Builder::new().name("latch-state-hash".into()).spawn(move || {
            match crate::fsm::checked_state_hash_unless(&state, &stop) {
                Ok(Some(hash)) => hashes.record(index, hash),
                Ok(None) => tracing::debug!(index, "state check point's hash stopped: the member shuts down"),
                Err(e) => tracing::warn!(index, error = %e, "cannot hash the state at a check point"),
            }
            drop(state);
            busy.store(false, Ordering::Release);
        });
        if let Err(e) = spawned {
            self.busy.store(false, Ordering::Release);
            tracing::warn!(index, error = %e, "cannot start a thread to hash the state at a check point");
        }
    }

    fn installed(&self, index: u64) {
        self.hashes.installed(index);
    }
}
