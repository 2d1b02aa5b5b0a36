//! A simulated disk under redb: a fault-injecting [`redb::StorageBackend`] that models a
//! volatile page cache over a durable medium.
//!
//! What it models:
//! - `write` and `set_len` change the bytes *as written* (what the running process reads back);
//!   they reach the durable bytes through `sync_data`, in the order they were issued, or in
//!   part through the crash that ends the process (below).
//! - A crash ([`SimDisk::crash`]) detaches the running process from the disk: every operation it
//!   still attempts fails (a killed process runs no shutdown code: redb's `Drop` must not reach
//!   the disk), and the next process ([`SimDisk::open`]) starts from the synced bytes, plus
//!   whatever the crash wrote back of the rest: none, all, or each 512-byte sector by a coin
//!   (a write-back cut short by a machine's crash, in no order) — the writes of a failed sync
//!   included, so a durable commit can be torn.
//! - An injected fsync failure ([`SimDisk::fail_next_sync`]): the next `sync_data` returns an
//!   I/O error and makes nothing durable by itself; the process is expected to die of it.
//!
//! Invariants: while a process runs, the durable bytes only ever change by applying, in issue
//! order, exactly the writes issued before a successful sync; nothing a detached process does
//! reaches them. Everything is deterministic: no clock, no randomness of its own.

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
    /// A crashed process: nothing it does reaches the durable bytes any more.
    detached: bool,
}

#[derive(Debug, Default)]
struct Medium {
    /// The durable bytes: all that survives a crash (which may write some of the unsynced ones
    /// back here first).
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

    /// A copy of what the disk holds durably (a backup taken while no process runs).
    pub fn copy(&self) -> SimDisk {
        assert!(self.current.is_none(), "a disk is copied while no process runs");
        let synced = lock(&self.medium).synced.clone();
        SimDisk { medium: Arc::new(Mutex::new(Medium { synced, ..Default::default() })), current: None }
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

    /// The process dies. Of the writes after the last sync, each 512-byte sector reaches the disk
    /// with probability `write_back.0` by the coin `write_back.1` (none: all lost). 0 is a
    /// machine that crashed before writing any of its page cache back, 1 a process killed on a
    /// machine that wrote everything back, anything between a write-back cut short, in no
    /// order. Whatever the dead process still does goes nowhere.
    pub fn crash(&mut self, write_back: Option<(f64, &mut rand::rngs::SmallRng)>) {
        let Some(process) = self.current.take() else { return };
        let mut p = lock(&process);
        p.detached = true;
        if let Some((p_kept, rng)) = write_back {
            use rand::Rng;
            const SECTOR: usize = 512;
            let mut m = lock(&self.medium);
            for op in std::mem::take(&mut p.pending) {
                match op {
                    Pending::Write { offset, data } => {
                        // A write that extends the file changes its length as a whole (metadata),
                        // its sectors one by one; none lands past the length the disk has.
                        let end = offset as usize + data.len();
                        if end > m.synced.len() && rng.gen_bool(p_kept) {
                            m.synced.resize(end, 0);
                        }
                        for (i, sector) in data.chunks(SECTOR).enumerate() {
                            let at = offset as usize + i * SECTOR;
                            if at + sector.len() <= m.synced.len() && rng.gen_bool(p_kept) {
                                m.synced[at..at + sector.len()].copy_from_slice(sector);
                            }
                        }
                    }
                    Pending::SetLen(_) if rng.gen_bool(p_kept) => apply(&mut m.synced, &op),
                    Pending::SetLen(_) => {}
                }
            }
        }
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

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let p = lock(&self.process);
        if p.detached {
            return Err(dead());
        }
        let len = out.len();
        let start = usize::try_from(offset).map_err(|_| out_of_range(offset, len, p.written.len()))?;
        match start.checked_add(len) {
            Some(end) if end <= p.written.len() => {
                out.copy_from_slice(&p.written[start..end]);
                Ok(())
            }
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

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut p = lock(&self.process);
        if p.detached {
            return Err(dead());
        }
        let mut m = lock(&self.medium);
        if m.fail_next_sync {
            m.fail_next_sync = false;
            m.failed_syncs += 1;
            // What failed to sync is in doubt: any of it may be on the disk (on Linux, some
            // writes of a failed fsync can be). The process is expected to die of this error;
            // its crash writes back what it keeps of them, as of any unsynced write — a durable
            // commit torn so (its header on the disk, the file's growth before it not) made
            // redb 2 panic on open; redb 4 recovers (docs/architecture.md).
            return Err(io::Error::other("injected fsync failure"));
        }
        for op in std::mem::take(&mut p.pending) {
            apply(&mut m.synced, &op);
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

/// A simulated directory of files under the raft log (`latch::storage::files::Dir`): each file
/// has the bytes its process wrote and a durable length; a crash keeps the durable bytes and,
/// of the unsynced ones, each 512-byte sector or not (a torn write: a disk writes sectors in
/// any order), makes vanish the files whose creation was not synced with the directory, and
/// brings back those whose removal was not.
#[derive(Clone, Default)]
pub struct SimDir {
    state: Arc<Mutex<DirState>>,
}

#[derive(Default, Clone)]
struct DirState {
    files: std::collections::BTreeMap<String, SimFileState>,
    /// Bumped by each crash: handles of an older process fail.
    process: u64,
    fail_next_sync: bool,
    /// Syncs that still succeed before the armed failure.
    syncs_before_failure: u32,
    failed_syncs: u64,
}

#[derive(Default, Clone)]
struct SimFileState {
    data: Vec<u8>,
    /// Bytes up to here are as synced.
    durable_len: usize,
    /// Bytes written since the last sync end here (writes are sequential).
    written_end: usize,
    /// Its directory entry is durable.
    entry_durable: bool,
    /// Removed by the process, not yet durably.
    removed: bool,
}

struct SimFile {
    state: Arc<Mutex<DirState>>,
    name: String,
    process: u64,
}

impl SimDir {
    pub fn new() -> SimDir {
        SimDir::default()
    }

    /// A copy of the directory as it stands (a backup taken after its process crashed).
    pub fn copy(&self) -> SimDir {
        SimDir { state: Arc::new(Mutex::new(lock(&self.state).clone())) }
    }

    /// A handle for a new process (the previous one must have crashed).
    pub fn open(&self) -> SimDir {
        self.clone()
    }

    /// The process dies: see the type's doc. `rng` decides which unsynced sectors survive;
    /// `None` keeps none of them (an exact crash, for scripted scenarios).
    pub fn crash(&self, mut rng: Option<&mut rand::rngs::SmallRng>) {
        use rand::Rng;
        const SECTOR: usize = 512;
        let mut s = lock(&self.state);
        s.process += 1;
        s.fail_next_sync = false;
        s.syncs_before_failure = 0;
        s.files.retain(|_, f| f.entry_durable);
        for f in s.files.values_mut() {
            f.removed = false;
            let end = f.written_end.max(f.durable_len).min(f.data.len());
            let mut sector = f.durable_len / SECTOR * SECTOR;
            while sector < end {
                let (from, to) = (sector.max(f.durable_len), (sector + SECTOR).min(end));
                let kept = rng.as_mut().is_some_and(|r| r.gen_bool(0.5));
                if !kept {
                    // Never reached the disk: it reads as before (zeros).
                    f.data[from..to].fill(0);
                }
                sector += SECTOR;
            }
            f.durable_len = end;
            f.written_end = end;
        }
    }

    pub fn fail_next_sync(&self) {
        self.fail_sync_after(0);
    }

    /// The sync after the next `ok` fails.
    pub fn fail_sync_after(&self, ok: u32) {
        let mut s = lock(&self.state);
        s.fail_next_sync = true;
        s.syncs_before_failure = ok;
    }

    pub fn take_failed_sync(&self) -> bool {
        let mut s = lock(&self.state);
        let failed = s.failed_syncs > 0;
        s.failed_syncs = 0;
        failed
    }

    pub fn disarm(&self) {
        lock(&self.state).fail_next_sync = false;
    }

    fn fail_sync(s: &mut DirState) -> io::Result<()> {
        if s.fail_next_sync && s.syncs_before_failure > 0 {
            s.syncs_before_failure -= 1;
        } else if s.fail_next_sync {
            s.fail_next_sync = false;
            s.failed_syncs += 1;
            return Err(io::Error::other("injected fsync failure"));
        }
        Ok(())
    }
}

impl latch::storage::files::Dir for SimDir {
    fn list(&self) -> io::Result<Vec<String>> {
        let s = lock(&self.state);
        Ok(s.files.iter().filter(|(_, f)| !f.removed).map(|(n, _)| n.clone()).collect())
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn latch::storage::files::File>> {
        let s = lock(&self.state);
        match s.files.get(name) {
            Some(f) if !f.removed => Ok(Box::new(SimFile {
                state: self.state.clone(),
                name: name.to_string(),
                process: s.process,
            })),
            _ => Err(io::Error::new(io::ErrorKind::NotFound, name.to_string())),
        }
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn latch::storage::files::File>> {
        let mut s = lock(&self.state);
        if s.files.get(name).is_some_and(|f| !f.removed) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, name.to_string()));
        }
        s.files.insert(name.to_string(), SimFileState::default());
        Ok(Box::new(SimFile { state: self.state.clone(), name: name.to_string(), process: s.process }))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut s = lock(&self.state);
        match s.files.get_mut(name) {
            Some(f) if !f.removed => {
                f.removed = true;
                Ok(())
            }
            _ => Err(io::Error::new(io::ErrorKind::NotFound, name.to_string())),
        }
    }

    fn sync(&self) -> io::Result<()> {
        let mut s = lock(&self.state);
        SimDir::fail_sync(&mut s)?;
        s.files.retain(|_, f| !f.removed);
        for f in s.files.values_mut() {
            f.entry_durable = true;
        }
        Ok(())
    }

    fn describe(&self, name: &str) -> String {
        format!("<sim>/raft/{name}")
    }
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut DirState, &str) -> io::Result<T>) -> io::Result<T> {
        let mut s = lock(&self.state);
        if s.process != self.process {
            return Err(dead());
        }
        f(&mut s, &self.name)
    }
}

fn file<'a>(s: &'a mut DirState, name: &str) -> io::Result<&'a mut SimFileState> {
    s.files.get_mut(name).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))
}

impl latch::storage::files::File for SimFile {
    fn len(&self) -> io::Result<u64> {
        self.with(|s, n| Ok(file(s, n)?.data.len() as u64))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.with(|s, n| {
            let f = file(s, n)?;
            let start = offset as usize;
            match start.checked_add(buf.len()) {
                Some(end) if end <= f.data.len() => {
                    buf.copy_from_slice(&f.data[start..end]);
                    Ok(())
                }
                _ => Err(out_of_range(offset, buf.len(), f.data.len())),
            }
        })
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.with(|s, n| {
            let f = file(s, n)?;
            let (start, end) = (offset as usize, offset as usize + data.len());
            if f.data.len() < end {
                f.data.resize(end, 0);
            }
            f.data[start..end].copy_from_slice(data);
            f.durable_len = f.durable_len.min(start);
            f.written_end = f.written_end.max(end);
            Ok(())
        })
    }

    fn allocate(&mut self, len: u64) -> io::Result<()> {
        self.with(|s, n| {
            let f = file(s, n)?;
            if f.data.len() < len as usize {
                f.data.resize(len as usize, 0);
            }
            Ok(())
        })
    }

    fn sync(&mut self) -> io::Result<()> {
        self.with(|s, n| {
            SimDir::fail_sync(s)?;
            let f = file(s, n)?;
            f.durable_len = f.written_end.max(f.durable_len);
            Ok(())
        })
    }
}
