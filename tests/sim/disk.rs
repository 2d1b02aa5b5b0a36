//! A simulated disk under redb: a fault-injecting [`redb::StorageBackend`] that models a
//! volatile page cache over a durable medium.
//!
//! What it models:
//! - `write` and `set_len` change the bytes *as written* (what the running process reads back);
//!   they reach the bytes *as last synced* only through `sync_data`, in the order they were
//!   issued. `sync_data(eventual = true)` is a write barrier whose writes become durable at
//!   some later point: on a crash they are kept or lost as a whole, as the simulator's seeded
//!   coin decides.
//! - A crash ([`SimDisk::crash`]) detaches the running process from the disk: every operation it
//!   still attempts fails (a killed process runs no shutdown code: redb's `Drop` must not reach
//!   the disk), and the next process ([`SimDisk::open`]) starts from the synced bytes alone.
//! - An injected fsync failure ([`SimDisk::fail_next_sync`]): the next `sync_data` returns an
//!   I/O error and makes nothing durable; the process is expected to die of it.
//!
//! Invariants: the durable bytes only ever change by applying, in issue order, exactly the
//! writes issued before a successful sync (or an eventual barrier); nothing a detached process
//! does reaches them. Everything is deterministic: no clock, no randomness of its own.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// One change not yet durable.
#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

fn apply(bytes: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write { offset, data } => {
            let start = *offset as usize;
            let end = start + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[start..end].copy_from_slice(data);
        }
        Pending::SetLen(len) => bytes.resize(*len as usize, 0),
    }
}

/// The bytes of one process's view of the disk.
#[derive(Debug, Default)]
struct Process {
    /// The bytes as written by this process (what it reads back).
    written: Vec<u8>,
    /// Changes since the last sync, in issue order.
    pending: Vec<Pending>,
    /// Changes behind an eventual barrier: durable "at some point", or lost by a crash.
    eventual: Vec<Pending>,
    /// A crashed process: nothing it does reaches the durable bytes any more.
    detached: bool,
}

#[derive(Debug, Default)]
struct Medium {
    /// The bytes as last synced: all that survives a crash.
    synced: Vec<u8>,
    fail_next_sync: bool,
    failed_syncs: u64,
}

/// The disk of one simulated node; it outlives the node's processes.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    medium: Arc<Mutex<Medium>>,
    current: Option<Arc<Mutex<Process>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// A backend for a new process, starting from the synced bytes. The previous process, if
    /// any, must have crashed first.
    pub fn open(&mut self) -> SimBackend {
        assert!(self.current.is_none(), "a disk is opened by one process at a time");
        let written = lock(&self.medium).synced.clone();
        let process = Arc::new(Mutex::new(Process { written, ..Default::default() }));
        self.current = Some(process.clone());
        SimBackend { medium: self.medium.clone(), process }
    }

    /// The process dies: its unsynced writes are lost. Writes behind an eventual barrier become
    /// durable if `keep_eventual`. Whatever the dead process still does goes nowhere.
    pub fn crash(&mut self, keep_eventual: bool) {
        let Some(process) = self.current.take() else { return };
        let mut p = lock(&process);
        p.detached = true;
        if keep_eventual && !p.eventual.is_empty() {
            let mut m = lock(&self.medium);
            for op in &p.eventual {
                apply(&mut m.synced, op);
            }
        }
        p.eventual.clear();
        p.pending.clear();
        p.written = Vec::new();
    }

    /// The next `sync_data` of the running process fails with an I/O error.
    pub fn fail_next_sync(&self) {
        lock(&self.medium).fail_next_sync = true;
    }

    /// Whether an injected sync failure was consumed since the last call (and clears it).
    pub fn take_failed_sync(&self) -> bool {
        let mut m = lock(&self.medium);
        let failed = m.failed_syncs > 0;
        m.failed_syncs = 0;
        failed
    }

    /// Drops an injected failure not consumed yet.
    pub fn disarm(&self) {
        lock(&self.medium).fail_next_sync = false;
    }
}

/// The backend handed to redb by one process.
#[derive(Debug)]
pub struct SimBackend {
    medium: Arc<Mutex<Medium>>,
    process: Arc<Mutex<Process>>,
}

/// What a crashed process gets for anything it still tries: it is gone.
fn dead() -> io::Error {
    io::Error::other("the process crashed: its disk is gone")
}

fn out_of_range(offset: u64, len: usize, size: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("read of {len} bytes at {offset} past the end ({size} bytes)"),
    )
}

impl redb::StorageBackend for SimBackend {
    fn len(&self) -> Result<u64, io::Error> {
        let p = lock(&self.process);
        if p.detached {
            return Err(dead());
        }
        Ok(p.written.len() as u64)
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, io::Error> {
        let p = lock(&self.process);
        if p.detached {
            return Err(dead());
        }
        let start = usize::try_from(offset).map_err(|_| out_of_range(offset, len, p.written.len()))?;
        match start.checked_add(len) {
            Some(end) if end <= p.written.len() => Ok(p.written[start..end].to_vec()),
            _ => Err(out_of_range(offset, len, p.written.len())),
        }
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut p = lock(&self.process);
        if p.detached {
            return Err(dead());
        }
        let op = Pending::SetLen(len);
        apply(&mut p.written, &op);
        p.pending.push(op);
        Ok(())
    }

    fn sync_data(&self, eventual: bool) -> Result<(), io::Error> {
        let mut p = lock(&self.process);
        if p.detached {
            return Err(dead());
        }
        let mut m = lock(&self.medium);
        if m.fail_next_sync {
            m.fail_next_sync = false;
            m.failed_syncs += 1;
            // What failed to sync is in doubt; the process is expected to die of this error.
            p.pending.clear();
            return Err(io::Error::other("injected fsync failure"));
        }
        let pending = std::mem::take(&mut p.pending);
        if eventual {
            p.eventual.extend(pending);
        } else {
            // A full sync makes everything before it durable, earlier eventual barriers first.
            for op in p.eventual.drain(..).chain(pending) {
                apply(&mut m.synced, &op);
            }
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut p = lock(&self.process);
        if p.detached {
            return Err(dead());
        }
        let op = Pending::Write { offset, data: data.to_vec() };
        apply(&mut p.written, &op);
        p.pending.push(op);
        Ok(())
    }
}
