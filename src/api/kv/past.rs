//! Reads at a past revision (`RangeRequest.revision`): a scan of every history row after the
//! revision asked (docs/watches.md, "Limits and costs"), so each runs on tokio's blocking pool,
//! never on the async runtime, and at most `--max-past-reads` of them at once on this member.
//!
//! Invariants:
//! - A read holds its slot from before it opens its read transaction until the scan has
//!   ended, whether or not its caller still waits: the slots bound the work, not the callers.
//! - A read that finds no slot free within [`PAST_READ_WAIT`] is refused RESOURCE_EXHAUSTED
//!   naming the flag; it never queues for longer.

use std::sync::Arc;
use std::time::Duration;

use latch_proto::internal::{Range, RangeResult};
use redb::ReadableDatabase as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::ApiError;

/// How long a read at a past revision waits for a slot before it is refused.
pub(super) const PAST_READ_WAIT: Duration = Duration::from_secs(1);

/// The member's slots for reads at a past revision.
pub(super) struct PastReads {
    slots: Arc<Semaphore>,
    /// `--max-past-reads`, for the refusal.
    limit: usize,
}

impl PastReads {
    pub(super) fn new(limit: usize) -> PastReads {
        PastReads { slots: Arc::new(Semaphore::new(limit.min(Semaphore::MAX_PERMITS))), limit }
    }

    /// A slot, or the refusal once none came free within [`PAST_READ_WAIT`].
    async fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        admit(&self.slots, || {
            ApiError::OverLimit(format!(
                "reads at a past revision: this member serves {} at once (--max-past-reads) and none \
                 ended within {PAST_READ_WAIT:?}; retry later, or read the current revision",
                self.limit
            ))
        })
        .await
    }

    /// `req` (its `revision` set) read from `db` on the blocking pool, in a slot: the store
    /// revision and the result, as [`crate::fsm::range`] answers.
    pub(super) async fn range(
        &self,
        db: Arc<redb::Database>,
        req: Range,
        max_response_bytes: usize,
    ) -> Result<(i64, RangeResult), ApiError> {
        let slot = self.admit().await?;
        let read = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let txn = db.begin_read()?;
            Ok::<_, ApiError>(crate::fsm::range(&txn, &req, max_response_bytes)?)
        });
        read.await.map_err(|e| ApiError::Internal(format!("a read at a past revision failed: {e}")))?
    }
}

/// A slot of `slots`, or `refusal()` once none came free within [`PAST_READ_WAIT`]: a read
/// never queues for longer.
pub(super) async fn admit(
    slots: &Arc<Semaphore>,
    refusal: impl FnOnce() -> ApiError,
) -> Result<OwnedSemaphorePermit, ApiError> {
    match tokio::time::timeout(PAST_READ_WAIT, slots.clone().acquire_owned()).await {
        Ok(Ok(slot)) => Ok(slot),
        // The semaphores are never closed.
        Ok(Err(_)) => Err(ApiError::Internal("the slots of reads are closed".into())),
        Err(_) => Err(refusal()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_past_read_waits_a_moment_for_a_slot_then_is_refused_naming_the_limit() {
        let reads = Arc::new(PastReads::new(2));
        let first = reads.admit().await.expect("a slot is free");
        let _second = reads.admit().await.expect("a second slot is free");
        let asked = tokio::time::Instant::now();
        let err = reads.admit().await.expect_err("both slots are taken");
        assert_eq!(asked.elapsed(), PAST_READ_WAIT, "the refusal comes after the wait, not before");
        match err {
            ApiError::OverLimit(m) => assert!(m.contains("2 at once (--max-past-reads)"), "{m}"),
            other => panic!("expected OverLimit naming --max-past-reads, got {other:?}"),
        }
        let waiting = tokio::spawn({
            let reads = reads.clone();
            async move { reads.admit().await.map(drop) }
        });
        tokio::time::sleep(PAST_READ_WAIT / 2).await;
        drop(first);
        waiting.await.expect("joins").expect("a slot freed within the wait is taken");
    }

    #[tokio::test]
    async fn a_past_read_runs_off_the_runtime_and_gives_its_slot_back() {
        let mut store = crate::fsm::testing::Store::new();
        for i in 0..5 {
            store.apply("", crate::fsm::testing::put("k", &format!("v{i}")));
        }
        let db = Arc::new(store.db);
        let reads = PastReads::new(1);
        for revision in 1..=5 {
            let req = Range { key: b"k".to_vec(), revision, ..Default::default() };
            let (head, result) = reads.range(db.clone(), req, usize::MAX).await.expect("reads");
            assert_eq!(head, 5);
            assert_eq!(result.kvs[0].value, format!("v{}", revision - 1).into_bytes(), "k at {revision}");
        }
        assert_eq!(reads.slots.available_permits(), 1, "every read gave its slot back");
    }
}
