//! The apply context: what one command's application may touch, and the one place that decides
//! its revision. Every domain writes through an [`Apply`], so that one command may change
//! several domains (a session's end deletes its keys, locks and instances) in one revision.
//!
//! Invariants:
//! - All the writes of one command carry the same revision, `base + 1`; the store revision
//!   moves to it only if the command wrote something ([`Apply::write_revision`] was called).
//! - Every change to replicated data is described by an [`Event`], in the order it was made,
//!   so that watchers and waiters can be fed from applied revisions alone.

use std::collections::BTreeMap;

use latch_proto::internal::{KeyValue, LockSpace};

use super::history::{self, Space};
use super::tables::Tables;
use super::{locks, FsmError};
use crate::storage::schema::HISTORY;

/// What a change did to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change of one applied command, as its history row records it (`space`: a key, or a
/// session's, lock's, election's or registry instance's state). For a put, `kv` is the key as
/// written; for a delete, `kv` holds the key and the revision of the deletion (its value is
/// empty). `prev_kv` is what the key held before, when the command asked for it (`prev_kv`) and
/// its answer carried it; otherwise `None` (a watch that needs previous values will read them
/// from history). Any other space's change carries its row as `kv.value` (empty once gone) and
/// no `prev_kv`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub space: Space,
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// A change to a key.
    pub(crate) fn of_key(kind: EventKind, kv: KeyValue, prev_kv: Option<KeyValue>) -> Event {
        Event { space: Space::Kv, kind, kv, prev_kv }
    }
}

/// What a command did to a session's lease, for the members' lease clocks (`core::leases`):
/// the state holds each session's lease as a duration, and every member counts it down on its
/// own clock from when it applied the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// Created with a lease of its whole TTL.
    Started { id: String, ttl_ms: u64 },
    /// A checkpoint renewed it: `remaining_ms` left from the leader's clock reading
    /// `leader_ms`, its `checkpoints`-th renewal.
    Renewed { id: String, ttl_ms: u64, remaining_ms: u64, checkpoints: u64, leader_ms: u64 },
    /// A checkpoint's leader clock reading (one per checkpoint, before its renewals).
    Clock { leader_ms: u64 },
    /// Closed or expired: it and everything it owned are gone.
    Ended { id: String },
}

/// What a command did to locks and elections, for the member's waiters, observers and
/// lock-delay timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockChange {
    /// The request applied under `request_id` left the queue: granted, cancelled, or its
    /// session ended. Its waiter reads which from the state.
    Settled { request_id: String },
    /// The holders of lock `key` changed, or its leader's value.
    Changed { key: Vec<u8> },
    /// Lock `key` entered a lock-delay at `since_revision`, for `delay_ms`.
    DelayStarted { key: Vec<u8>, since_revision: i64, delay_ms: u64 },
    /// Its delay that began at `since_revision` ended.
    DelayEnded { key: Vec<u8>, since_revision: i64 },
}

/// What a command did to a registry instance, for the leader's timers
/// (`core::instance_timers`): the timer its row calls for now, `None` when it needs none or is
/// gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceChange {
    /// Its registry key, `service/id`.
    pub key: Vec<u8>,
    pub timer: Option<InstanceTimer>,
}

/// A registry instance's timer, counted by every member from when it applied the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceTimer {
    /// A passing TTL check of the registration at `registered_revision`: critical unless a
    /// heartbeat comes within `ttl_ms` (its `beats`-th heartbeat was the last).
    Heartbeat { ttl_ms: u64, beats: u64, registered_revision: i64 },
    /// A critical instance: removed `after_ms` after it turned critical at `since_revision`.
    Reap { since_revision: i64, after_ms: u64 },
}

/// Everything one command's application produced besides its writes.
pub(crate) struct Finished {
    pub(crate) revision: i64,
    pub(crate) events: Vec<Event>,
    pub(crate) sessions: Vec<SessionChange>,
    pub(crate) locks: Vec<LockChange>,
    pub(crate) instances: Vec<InstanceChange>,
    /// History rows written.
    pub(crate) recorded: u32,
    /// Their bytes (`history::row_bytes`).
    pub(crate) recorded_bytes: u64,
}

/// The most bytes of lock rows an [`Apply`] keeps for their history rows; past it, a row is read
/// back from its table at the command's end (a session's end may rewrite thousands of rows of
/// up to a MiB each).
const KEPT_ROW_BYTES: usize = 1 << 20;

/// A lock's or election's row as a command left it, for its history row.
enum Written {
    /// As written; `None`: removed.
    Kept(Option<Vec<u8>>),
    /// In its table, past what is kept.
    Stored,
}

/// The application of one command: its batch's tables and its revision.
pub struct Apply<'a, 't> {
    pub(crate) tables: &'a Tables<'t>,
    /// Bound on the bytes of read results (range ops) in the command's answer.
    pub(crate) max_response_bytes: usize,
    /// The store revision before the command.
    base: i64,
    wrote: bool,
    /// Changes written to the history so far (the next one's index in its revision).
    recorded: u32,
    /// Their bytes.
    recorded_bytes: u64,
    /// Lock and election rows written, as they end up, recorded in the history once each.
    locks_written: BTreeMap<Vec<u8>, Written>,
    /// The bytes of the rows `locks_written` keeps: at most [`KEPT_ROW_BYTES`].
    kept_bytes: usize,
    /// Whether `events` are kept (`Bounds::events`).
    keep_events: bool,
    events: Vec<Event>,
    sessions: Vec<SessionChange>,
    locks: Vec<LockChange>,
    instances: Vec<InstanceChange>,
}

impl<'a, 't> Apply<'a, 't> {
    pub(crate) fn new(
        tables: &'a Tables<'t>,
        base: i64,
        max_response_bytes: usize,
        keep_events: bool,
    ) -> Self {
        Apply {
            tables,
            max_response_bytes,
            base,
            wrote: false,
            recorded: 0,
            recorded_bytes: 0,
            locks_written: BTreeMap::new(),
            kept_bytes: 0,
            keep_events,
            events: Vec::new(),
            sessions: Vec::new(),
            locks: Vec::new(),
            instances: Vec::new(),
        }
    }

    /// The revision the command's writes carry; calling it marks the command as writing.
    pub(crate) fn write_revision(&mut self) -> Result<i64, FsmError> {
        let next = self
            .base
            .checked_add(1)
            .ok_or_else(|| FsmError::Corrupt(format!("fsm_meta: revision {} cannot grow", self.base)))?;
        self.wrote = true;
        Ok(next)
    }

    /// The store revision as of the writes so far.
    pub(crate) fn revision(&self) -> i64 {
        if self.wrote {
            self.base + 1
        } else {
            self.base
        }
    }

    /// Notes a change to a key at the write revision: `prev` is what the key held before
    /// (for the history, whatever `event.prev_kv` carries for the answer).
    pub(crate) fn emit(&mut self, event: Event, prev: Option<&KeyValue>) -> Result<(), FsmError> {
        let delete = event.kind == EventKind::Delete;
        self.record(event.space, delete, &event.kv, prev)?;
        if self.keep_events {
            self.events.push(event);
        }
        Ok(())
    }

    /// Records in the history that a session (its id), a lock or election (its name) or a
    /// registry instance (its key) changed at the write revision: its row after it, or `None`
    /// when it is gone; and keeps it as an event when events are kept.
    pub(crate) fn state_changed(
        &mut self,
        space: Space,
        key: &[u8],
        row: Option<Vec<u8>>,
    ) -> Result<(), FsmError> {
        let delete = row.is_none();
        let kv = KeyValue {
            key: key.to_vec(),
            mod_revision: self.write_revision()?,
            value: row.unwrap_or_default(),
            ..Default::default()
        };
        self.record(space, delete, &kv, None)?;
        if self.keep_events {
            let kind = if delete { EventKind::Delete } else { EventKind::Put };
            self.events.push(Event { space, kind, kv, prev_kv: None });
        }
        Ok(())
    }

    /// A lock's or election's row was written as `row` (`None`: removed); it is recorded by
    /// [`Apply::record_locks`].
    pub(crate) fn lock_written(&mut self, key: &[u8], row: Option<Vec<u8>>) {
        // The key's earlier row of this command is replaced: it counts no more.
        if let Some(Written::Kept(Some(before))) = self.locks_written.get(key) {
            self.kept_bytes -= before.len();
        }
        let written = match row {
            Some(bytes) if self.kept_bytes + bytes.len() > KEPT_ROW_BYTES => Written::Stored,
            row => {
                self.kept_bytes += row.as_ref().map_or(0, Vec::len);
                Written::Kept(row)
            }
        };
        self.locks_written.insert(key.to_vec(), written);
    }

    /// Records each lock and election row written by the command, as it ends up.
    pub(crate) fn record_locks(&mut self) -> Result<(), FsmError> {
        self.kept_bytes = 0;
        for (key, written) in std::mem::take(&mut self.locks_written) {
            let row = match written {
                Written::Kept(row) => row,
                Written::Stored => locks::read_row_bytes(self.tables, &key)?,
            };
            let (space, name) = match locks::split_lock_key(&key) {
                Some((LockSpace::Elections, name)) => (Space::Elections, name.as_bytes().to_vec()),
                Some((_, name)) => (Space::Locks, name.as_bytes().to_vec()),
                None => {
                    return Err(FsmError::Corrupt(format!(
                        "table locks: a key {:?} of no space",
                        key.escape_ascii().to_string()
                    )))
                }
            };
            self.state_changed(space, &name, row)?;
        }
        Ok(())
    }

    fn record(
        &mut self,
        space: Space,
        delete: bool,
        kv: &KeyValue,
        prev: Option<&KeyValue>,
    ) -> Result<(), FsmError> {
        let n = self.recorded;
        self.recorded = n
            .checked_add(1)
            .ok_or_else(|| FsmError::Corrupt("a command with more than 2^32 changes".into()))?;
        let bytes =
            history::record(&mut *self.tables.open(HISTORY)?, kv.mod_revision, n, space, delete, kv, prev)?;
        self.recorded_bytes = self.recorded_bytes.saturating_add(bytes);
        Ok(())
    }

    pub(crate) fn session_changed(&mut self, change: SessionChange) {
        self.sessions.push(change);
    }

    /// Notes a change to a lock; repeats of the last one are left out.
    pub(crate) fn lock_changed(&mut self, change: LockChange) {
        if self.locks.last() != Some(&change) {
            self.locks.push(change);
        }
    }

    pub(crate) fn instance_changed(&mut self, change: InstanceChange) {
        self.instances.push(change);
    }

    pub(crate) fn finish(self) -> Finished {
        Finished {
            revision: self.revision(),
            events: self.events,
            sessions: self.sessions,
            locks: self.locks,
            instances: self.instances,
            recorded: self.recorded,
            recorded_bytes: self.recorded_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::testing::Store;

    fn kept<'a>(ap: &'a Apply) -> Vec<(&'a [u8], Option<usize>)> {
        ap.locks_written
            .iter()
            .map(|(k, w)| match w {
                Written::Kept(row) => (k.as_slice(), Some(row.as_ref().map_or(0, Vec::len))),
                Written::Stored => (k.as_slice(), None),
            })
            .collect()
    }

    #[test]
    fn an_apply_keeps_each_locks_last_row_counted_once_and_never_past_its_bound() {
        let store = Store::new();
        let txn = store.db.begin_write().expect("a write transaction begins");
        let tables = Tables::new(&txn).expect("the batch's tables open");
        let mut ap = Apply::new(&tables, 0, 0, false);
        let row = |kib: usize| Some(vec![b'r'; kib * 1024]);
        ap.lock_written(b"a", row(400));
        ap.lock_written(b"b", row(400));
        ap.lock_written(b"c", row(400));
        assert_eq!(kept(&ap), [(&b"a"[..], Some(400 * 1024)), (b"b", Some(400 * 1024)), (b"c", None)]);
        assert_eq!(ap.kept_bytes, 800 * 1024, "the third row, past the MiB, is read back instead");
        ap.lock_written(b"a", None);
        assert_eq!(ap.kept_bytes, 400 * 1024, "a row rewritten counts its last version only");
        ap.lock_written(b"c", row(400));
        assert_eq!(kept(&ap)[2], (&b"c"[..], Some(400 * 1024)), "a row read back is kept once it fits");
        ap.lock_written(b"b", row(600));
        assert_eq!(
            ap.kept_bytes,
            1000 * 1024,
            "a rewritten row that fits in place of its last version is kept"
        );
        ap.lock_written(b"b", row(700));
        assert_eq!(kept(&ap)[1], (&b"b"[..], None), "one that does not is read back");
        assert_eq!(ap.kept_bytes, 400 * 1024, "and its earlier version counts no more");
        assert!(ap.kept_bytes <= KEPT_ROW_BYTES);
    }
}
