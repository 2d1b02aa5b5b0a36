//! Snapshots of a watch's range (`on_compacted = SNAPSHOT`, docs/watches.md): the pages the
//! stream sends, and the member's slots for snapshots in progress.
//!
//! A snapshot in progress holds a read transaction (the state at its revision) until its last
//! page is queued for the client, so the member bounds them: at most `--max-watch-snapshots` at
//! once (a [`SnapshotSlot`] each), each for at most `--watch-snapshot-deadline`.

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::MAX_RESPONSE_BYTES;
use crate::fsm;
use crate::fsm::history::Space;

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
    /// A free slot, if any.
    pub(super) fn take(snapshots: &Arc<Semaphore>, gauge: &Gauge) -> Option<SnapshotSlot> {
        let permit = snapshots.clone().try_acquire_owned().ok()?;
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

    #[test]
    fn snapshot_slots_are_bounded_and_counted_while_held() {
        let (slots, gauge) = (Arc::new(Semaphore::new(2)), Gauge::default());
        let first = SnapshotSlot::take(&slots, &gauge).expect("a slot is free");
        let second = SnapshotSlot::take(&slots, &gauge).expect("a second slot is free");
        assert!(SnapshotSlot::take(&slots, &gauge).is_none(), "a third is not");
        assert_eq!(gauge.get(), 2, "two snapshots in progress");
        drop(first);
        let _third = SnapshotSlot::take(&slots, &gauge).expect("a slot given back is free again");
        drop(second);
        assert_eq!(gauge.get(), 1);
    }
}
