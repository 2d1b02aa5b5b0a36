//! Snapshots of a watch's range (`on_compacted = SNAPSHOT`, docs/watches.md): the pages the
//! stream sends, and the member's slots for snapshots in progress.
//!
//! A snapshot in progress holds a read transaction (the state at its revision) until its last
//! page is queued for the client, so the member bounds them: at most `--max-watch-snapshots` at
//! once (a [`SnapshotSlot`] each), each for at most `--watch-snapshot-deadline`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::MAX_RESPONSE_BYTES;
use crate::fsm;
use crate::fsm::history::Space;

/// How long a snapshot whose turn came waits for a slot before its watch is canceled.
pub(super) const SLOT_WAIT: Duration = Duration::from_secs(1);

/// Kvs of one snapshot response.
const SNAPSHOT_PAGE: usize = 1000;

/// A snapshot's permit (`--max-watch-snapshots`), counted while held.
pub(super) struct SnapshotSlot {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
    /// When it was taken: the snapshot's deadline counts from here, so a slot is never held
    /// longer than `--watch-snapshot-deadline` (plus one page), however long the stream took
    /// to start sending (a full queue, other watches first).
    pub(super) taken: tokio::time::Instant,
}

impl SnapshotSlot {
    /// A slot free now or within `within`, if one is.
    pub(super) async fn wait(
        snapshots: &Arc<Semaphore>,
        gauge: &Gauge,
        within: Duration,
    ) -> Option<SnapshotSlot> {
        let permit = tokio::time::timeout(within, snapshots.clone().acquire_owned()).await.ok()?.ok()?;
        gauge.inc();
        Some(SnapshotSlot { _permit: permit, gauge: gauge.clone(), taken: tokio::time::Instant::now() })
    }
}

impl Drop for SnapshotSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// One page of a snapshot of what a watch selects, as its events carry it: keys as they are,
/// registry instances as an encoded `InstanceInfo` under `service/id` (`mod_revision` their
/// last change, `create_revision` their registration).
pub(super) fn snapshot_page(
    txn: &redb::ReadTransaction,
    space: Space,
    key: &[u8],
    range_end: &[u8],
    from: &[u8],
) -> Result<(Vec<latch_proto::v1::KeyValue>, bool), fsm::FsmError> {
    if space == Space::Registry {
        let (rows, more) =
            fsm::registry::read_page(txn, key, range_end, from, SNAPSHOT_PAGE, MAX_RESPONSE_BYTES)?;
        let kvs = rows
            .into_iter()
            .map(|row| {
                let i = row.instance.as_ref();
                let k = fsm::registry::instance_key(
                    i.map_or("", |i| i.service.as_str()),
                    i.map_or("", |i| i.id.as_str()),
                );
                latch_proto::v1::KeyValue {
                    key: k,
                    create_revision: row.registered_revision,
                    mod_revision: row.mod_revision,
                    version: 1,
                    session: row.session.clone(),
                    value: prost::Message::encode_to_vec(&crate::api::registry::instance_info(row)),
                }
            })
            .collect();
        return Ok((kvs, more));
    }
    let (kvs, more) = fsm::read_page(txn, key, range_end, from, SNAPSHOT_PAGE, MAX_RESPONSE_BYTES)?;
    Ok((kvs.into_iter().map(crate::api::kv::convert::key_value).collect(), more))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn snapshot_slots_are_bounded_counted_while_held_and_waited_for_a_while() {
        let (slots, gauge) = (Arc::new(Semaphore::new(2)), Gauge::default());
        let now = Duration::ZERO;
        let first = SnapshotSlot::wait(&slots, &gauge, now).await.expect("a slot is free");
        let second = SnapshotSlot::wait(&slots, &gauge, now).await.expect("a second slot is free");
        assert!(
            SnapshotSlot::wait(&slots, &gauge, SLOT_WAIT).await.is_none(),
            "a third is not, within the wait"
        );
        assert_eq!(gauge.get(), 2, "two snapshots in progress");
        let third = SnapshotSlot::wait(&slots, &gauge, SLOT_WAIT);
        tokio::pin!(third);
        assert!(futures::poll!(&mut third).is_pending(), "a third waits");
        drop(first);
        let _third = third.await.expect("a slot given back within the wait serves it");
        drop(second);
        assert_eq!(gauge.get(), 1, "only the third is in progress");
    }
}
