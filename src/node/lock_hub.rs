//! Where lock waiters and election observers learn of applied lock changes. The driver feeds it
//! every `Action::LocksChanged` of this member (after the state holding them is committed) and
//! every `Action::Restored`; a waiter or observer then reads what it needs from the applied
//! state. It carries no state of its own that could disagree with the replicated one.
//!
//! Invariants:
//! - A wake-up is never lost: a waiter registers before its request is proposed, and a
//!   `Notify` keeps a wake-up that comes before the waiter waits. Several waiters may wait on
//!   one request (a resent request joins the wait of its first sending): each has its own
//!   registration, all are woken, and each removes only its own.
//! - The apply path never waits here: notifying is a map lookup under a short lock.
//! - Memory: one entry per waiting request and per observed lock, removed when the last
//!   interested party goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

use crate::fsm::LockChange;

#[derive(Default)]
pub struct LockHub {
    waiters: Mutex<HashMap<String, Vec<Arc<Notify>>>>,
    observers: Mutex<HashMap<Vec<u8>, watch::Sender<u64>>>,
}

/// A request's registration: woken when the request may have settled. Unregisters on drop.
pub struct Settlement {
    hub: Arc<LockHub>,
    request_id: String,
    notify: Arc<Notify>,
}

impl Settlement {
    /// Waits for the next wake-up (or returns at once for one that came before).
    pub async fn woken(&self) {
        self.notify.notified().await
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        if let Ok(mut w) = self.hub.waiters.lock() {
            if let Some(list) = w.get_mut(&self.request_id) {
                list.retain(|n| !Arc::ptr_eq(n, &self.notify));
                if list.is_empty() {
                    w.remove(&self.request_id);
                }
            }
        }
    }
}

impl LockHub {
    /// Registers the request `request_id` (before it is proposed).
    pub fn settlement(self: &Arc<Self>, request_id: &str) -> Settlement {
        let notify = Arc::new(Notify::new());
        if let Ok(mut w) = self.waiters.lock() {
            w.entry(request_id.to_string()).or_default().push(notify.clone());
        }
        Settlement { hub: self.clone(), request_id: request_id.to_string(), notify }
    }

    /// A receiver that changes whenever lock `key`'s holders or value may have changed.
    pub fn observe(&self, key: &[u8]) -> watch::Receiver<u64> {
        let mut o = match self.observers.lock() {
            Ok(o) => o,
            Err(poisoned) => poisoned.into_inner(),
        };
        o.retain(|_, tx| tx.receiver_count() > 0);
        o.entry(key.to_vec()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Changes this member applied.
    pub fn changed(&self, changes: &[LockChange]) {
        for change in changes {
            match change {
                LockChange::Settled { request_id } => {
                    if let Ok(w) = self.waiters.lock() {
                        for n in w.get(request_id).into_iter().flatten() {
                            n.notify_one();
                        }
                    }
                }
                LockChange::Changed { key }
                | LockChange::DelayStarted { key, .. }
                | LockChange::DelayEnded { key, .. } => {
                    if let Ok(mut o) = self.observers.lock() {
                        if let Some(tx) = o.get(key) {
                            if tx.receiver_count() == 0 {
                                o.remove(key);
                            } else {
                                tx.send_modify(|n| *n += 1);
                            }
                        }
                    }
                }
            }
        }
    }

    /// A snapshot replaced the state: everyone looks again.
    pub fn restored(&self) {
        if let Ok(w) = self.waiters.lock() {
            for n in w.values().flatten() {
                n.notify_one();
            }
        }
        if let Ok(o) = self.observers.lock() {
            for tx in o.values() {
                tx.send_modify(|n| *n += 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_up_before_the_wait_is_kept_and_a_dropped_registration_is_forgotten() {
        let hub = Arc::new(LockHub::default());
        let s = hub.settlement("r1");
        hub.changed(&[LockChange::Settled { request_id: "r1".into() }]);
        tokio::time::timeout(std::time::Duration::from_secs(5), s.woken())
            .await
            .expect("the wake-up that came first is kept");
        drop(s);
        assert!(
            hub.waiters.lock().expect("not poisoned").is_empty(),
            "the registration is gone with its waiter"
        );
    }

    #[tokio::test]
    async fn two_waiters_on_one_request_are_both_woken_and_each_leaves_alone() {
        let hub = Arc::new(LockHub::default());
        let first = hub.settlement("r1");
        let second = hub.settlement("r1");
        drop(second);
        hub.changed(&[LockChange::Settled { request_id: "r1".into() }]);
        tokio::time::timeout(std::time::Duration::from_secs(5), first.woken())
            .await
            .expect("the first waiter is still registered and woken after the second left");
        let third = hub.settlement("r1");
        hub.changed(&[LockChange::Settled { request_id: "r1".into() }]);
        tokio::time::timeout(std::time::Duration::from_secs(5), third.woken()).await.expect("woken");
        tokio::time::timeout(std::time::Duration::from_secs(5), first.woken()).await.expect("woken too");
    }

    #[tokio::test]
    async fn observers_of_a_lock_see_its_changes_and_a_restore() {
        let hub = LockHub::default();
        let mut rx = hub.observe(b"Ln");
        hub.changed(&[LockChange::Changed { key: b"Lother".to_vec() }]);
        assert!(!rx.has_changed().expect("open"), "another lock's change is not seen");
        hub.changed(&[LockChange::Changed { key: b"Ln".to_vec() }]);
        assert!(rx.has_changed().expect("open"));
        rx.borrow_and_update();
        hub.restored();
        assert!(rx.has_changed().expect("open"), "a restore wakes every observer");
    }
}
