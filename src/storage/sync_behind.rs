//! The state file's fsyncs, run behind the thread that commits: a [`redb::StorageBackend`]
//! ([`SyncBehind`]) around the real one whose `sync_data` returns at once and leaves the fsync
//! to a thread of its own, and the handle ([`Syncs`]) through which the applier learns when a
//! durable commit really is durable.
//!
//! Why: a durable redb commit is its page writes, its header, then one fsync; the fsync is most
//! of its time (0.6–1.0 ms of about 1.1 on this project's machine), and every batch of committed
//! entries that reaches the apply thread meanwhile waited it out (docs/performance.md, "The state
//! file's fsync behind the apply thread"). Nothing on the apply thread needs the fsync done when
//! the commit returns: the raft log holds every applied entry until the state is durable past it
//! ([`crate::core::Progress::durable_index`]), and the applier advances that index only once
//! [`Syncs::completed`] says so.
//!
//! Invariant (what makes it safe): the disk sees exactly the sequence of writes and fsyncs that a
//! synchronous `sync_data` would have given it. A `write`, `set_len` or `sync_data` — anything
//! that changes the file — first waits until the fsync asked for before it has completed, so
//! nothing redb writes after a durable commit (pages the commit freed and a later one reuses, the
//! next header) can reach the disk before that commit's fsync. Reads do not wait (they see the
//! page cache), except a read that must first evict pages redb's write buffer holds, which writes
//! them — only once the state outgrows half of redb's cache. What a crash leaves is therefore
//! always what it could have left with the fsync inline: a torn commit at worst, which redb's
//! recovery falls back from, and never a durable index the file does not hold. A failed (or
//! panicked) fsync is kept: every later change, [`Syncs::wait`] and [`Syncs::check`] return it,
//! so the member stops (a failed fsync may have dropped pages).
//!
//! Two ways to run the fsyncs: on a thread of the backend's own ([`SyncBehind::on_a_thread`], the
//! server), or, deterministic for the simulator, by whoever needs one done next — the next change,
//! or [`Syncs::wait`] ([`SyncBehind::when_needed`]); a crash between a commit and that point loses
//! the commit's unsynced writes, as a crash during a real fsync may.

use std::fmt;
use std::io;
use std::ops::Bound;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use redb::{BackendError, StorageBackend};

/// Where the fsyncs of a [`SyncBehind`] stand; shared by the backend, its thread, and the applier.
pub struct Syncs {
    inner: Box<dyn StorageBackend>,
    state: Mutex<State>,
    /// Signalled when an fsync is asked for, when one completes or fails, and on close.
    changed: Condvar,
    threaded: bool,
    /// Told how long each completed fsync took (the metrics), once set.
    observer: OnceLock<Box<dyn Fn(Duration) + Send + Sync>>,
}

#[derive(Default)]
struct State {
    /// Fsyncs asked for so far (the generation of the latest).
    requested: u64,
    /// Every fsync up to this generation has completed.
    completed: u64,
    /// A failed fsync, returned by everything after it.
    failed: Option<(io::ErrorKind, String)>,
    closed: bool,
}

impl State {
    fn failure(&self) -> Option<io::Error> {
        self.failed.as_ref().map(|(kind, message)| io::Error::new(*kind, message.clone()))
    }

    /// Keeps `e` as the failure every later change and wait returns.
    fn fail(&mut self, e: &io::Error) {
        self.failed = Some((e.kind(), format!("the state file's fsync failed: {e}")));
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every change of the counters is a single assignment: a lock poisoned by a panic elsewhere
    // under it (in the inner backend) still holds consistent ones.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Syncs {
    /// The generation of the latest fsync asked for: a durable commit that just returned is
    /// durable once [`Syncs::completed`] reaches it.
    pub fn requested(&self) -> u64 {
        lock(&self.state).requested
    }

    /// Every fsync up to this generation has completed.
    pub fn completed(&self) -> u64 {
        lock(&self.state).completed
    }

    /// The error of a failed fsync, if one failed: nothing asked for after it will complete.
    pub fn check(&self) -> io::Result<()> {
        lock(&self.state).failure().map_or(Ok(()), Err)
    }

    /// Waits until the fsync of `generation` (and every one before it) has completed, running it
    /// here if nothing else does; its error if it failed.
    pub fn wait(&self, generation: u64) -> io::Result<()> {
        let mut state = lock(&self.state);
        loop {
            if let Some(e) = state.failure() {
                return Err(e);
            }
            if state.completed >= generation {
                return Ok(());
            }
            if !self.threaded {
                return self.sync_now(state).map(drop);
            }
            state = self.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Waits for every fsync asked for so far ([`Syncs::wait`] of the latest).
    pub fn wait_all(&self) -> io::Result<()> {
        self.wait(self.requested())
    }

    /// Tells `observer` how long each fsync that completes from now on took. Set once: a
    /// second observer is refused (`false`). It runs on whichever thread ran the fsync, in
    /// `when_needed` mode under this handle's lock: it must not call back into it.
    pub fn observe(&self, observer: impl Fn(Duration) + Send + Sync + 'static) -> bool {
        self.observer.set(Box::new(observer)).is_ok()
    }

    /// The inner backend's fsync, timed for the observer when it succeeds. A panic in it is
    /// its failure: whoever waits for it must hear that it will not complete, and the next
    /// change must not take it for done. A panic in the observer is not the fsync's and is
    /// dropped.
    fn fsync(&self) -> io::Result<()> {
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.inner.sync_data()))
            .unwrap_or_else(|_| Err(io::Error::other("it panicked")));
        if let (Ok(()), Some(observe)) = (&result, self.observer.get()) {
            let took = started.elapsed();
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| observe(took)));
        }
        result
    }

    /// Waits until no fsync is outstanding, before the file changes again.
    fn settled(&self) -> io::Result<MutexGuard<'_, State>> {
        let mut state = lock(&self.state);
        loop {
            if let Some(e) = state.failure() {
                return Err(e);
            }
            if state.completed == state.requested {
                return Ok(state);
            }
            if !self.threaded {
                return self.sync_now(state);
            }
            state = self.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Runs the outstanding fsync on this thread, holding the lock (nothing can change the file
    /// meanwhile).
    fn sync_now<'a>(&'a self, mut state: MutexGuard<'a, State>) -> io::Result<MutexGuard<'a, State>> {
        match self.fsync() {
            Ok(()) => {
                state.completed = state.requested;
                Ok(state)
            }
            Err(e) => {
                state.fail(&e);
                Err(e)
            }
        }
    }

    /// The thread of [`SyncBehind::on_a_thread`]: runs each fsync asked for, until closed.
    fn run(&self) {
        let mut state = lock(&self.state);
        loop {
            if state.failed.is_some() || (state.closed && state.completed == state.requested) {
                return;
            }
            if state.completed == state.requested {
                state = self.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            }
            let target = state.requested;
            // Unlocked during the fsync: readers may go on; anything that would change the
            // file waits in `settled` for `completed` to reach `target`.
            drop(state);
            let result = self.fsync();
            state = lock(&self.state);
            match result {
                Ok(()) => state.completed = target,
                Err(e) => state.fail(&e),
            }
            self.changed.notify_all();
        }
    }
}

/// A [`StorageBackend`] whose `sync_data` asks for an fsync and returns; see the module.
pub struct SyncBehind(Arc<Syncs>);

impl SyncBehind {
    /// Runs the fsyncs on a thread of its own (`latch-state-sync`), which ends when redb closes
    /// the backend.
    pub fn on_a_thread(inner: impl StorageBackend) -> io::Result<(SyncBehind, Arc<Syncs>)> {
        let syncs = Self::syncs(Box::new(inner), true);
        let runner = syncs.clone();
        std::thread::Builder::new().name("latch-state-sync".into()).spawn(move || runner.run())?;
        Ok((SyncBehind(syncs.clone()), syncs))
    }

    /// Runs each fsync when something needs it done: the next change of the file, or
    /// [`Syncs::wait`]. Deterministic (no thread): the simulator's.
    pub fn when_needed(inner: impl StorageBackend) -> (SyncBehind, Arc<Syncs>) {
        let syncs = Self::syncs(Box::new(inner), false);
        (SyncBehind(syncs.clone()), syncs)
    }

    fn syncs(inner: Box<dyn StorageBackend>, threaded: bool) -> Arc<Syncs> {
        Arc::new(Syncs {
            inner,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            threaded,
            observer: OnceLock::new(),
        })
    }
}

impl fmt::Debug for SyncBehind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.0.state);
        f.debug_struct("SyncBehind")
            .field("inner", &self.0.inner)
            .field("requested", &state.requested)
            .field("completed", &state.completed)
            .finish()
    }
}

impl StorageBackend for SyncBehind {
    fn len(&self) -> Result<u64, io::Error> {
        self.0.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.0.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let _settled = self.0.settled()?;
        self.0.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut state = self.0.settled()?;
        state.requested += 1;
        self.0.changed.notify_all();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let _settled = self.0.settled()?;
        self.0.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        // The last fsync asked for completes before the file is let go of.
        let settled = match self.0.settled() {
            Ok(mut state) => {
                state.closed = true;
                Ok(())
            }
            Err(e) => {
                lock(&self.0.state).closed = true;
                Err(e)
            }
        };
        self.0.changed.notify_all();
        let closed = self.0.inner.close();
        settled.and(closed)
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use redb::backends::InMemoryBackend;

    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Op {
        Write,
        SetLen,
        SyncStarted,
        Synced,
        Close,
    }

    /// An in-memory backend that records what reaches it; its fsyncs can be made to fail, to
    /// panic, or to wait for a go-ahead (`gate`).
    #[derive(Debug, Default)]
    struct Recorder {
        bytes: InMemoryBackend,
        ops: Arc<Mutex<Vec<Op>>>,
        fail_syncs: bool,
        panic_syncs: bool,
        gate: Option<Mutex<mpsc::Receiver<()>>>,
    }

    impl Recorder {
        fn record(&self, op: Op) {
            self.ops.lock().expect("the record").push(op);
        }
    }

    impl StorageBackend for Recorder {
        fn len(&self) -> Result<u64, io::Error> {
            self.bytes.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
            self.bytes.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), io::Error> {
            self.record(Op::SetLen);
            self.bytes.set_len(len)
        }
        fn sync_data(&self) -> Result<(), io::Error> {
            self.record(Op::SyncStarted);
            if let Some(gate) = &self.gate {
                let _ = gate.lock().expect("the gate").recv();
            }
            if self.fail_syncs {
                return Err(io::Error::other("the disk is gone"));
            }
            assert!(!self.panic_syncs, "the disk driver panicked");
            self.record(Op::Synced);
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
            self.record(Op::Write);
            let end = offset + data.len() as u64;
            if self.bytes.len()? < end {
                self.bytes.set_len(end)?;
            }
            self.bytes.write(offset, data)
        }
        fn close(&self) -> Result<(), io::Error> {
            self.record(Op::Close);
            Ok(())
        }
    }

    /// `recorder` behind a [`SyncBehind`], its fsyncs on a thread or run when needed.
    fn open(recorder: Recorder, threaded: bool) -> (SyncBehind, Arc<Syncs>) {
        match threaded {
            true => SyncBehind::on_a_thread(recorder).expect("the thread starts"),
            false => SyncBehind::when_needed(recorder),
        }
    }

    fn ops(of: &Arc<Mutex<Vec<Op>>>) -> Vec<Op> {
        of.lock().expect("the record").clone()
    }

    #[test]
    fn an_fsync_asked_for_runs_before_the_next_change_of_the_file_and_not_before() {
        let recorder = Recorder::default();
        let record = recorder.ops.clone();
        let (backend, syncs) = SyncBehind::when_needed(recorder);
        backend.write(0, b"page").expect("writes");
        backend.sync_data().expect("asks for an fsync");
        assert_eq!(ops(&record), [Op::Write], "sync_data returns without running the fsync");
        assert_eq!((syncs.requested(), syncs.completed()), (1, 0));
        let mut read = [0; 4];
        backend.read(0, &mut read).expect("reads");
        assert_eq!((&read, ops(&record).len()), (b"page", 1), "a read sees the write and runs no fsync");

        backend.set_len(8192).expect("grows");
        assert_eq!(
            ops(&record),
            [Op::Write, Op::SyncStarted, Op::Synced, Op::SetLen],
            "the fsync, then the change"
        );
        assert_eq!(syncs.completed(), 1);
        backend.sync_data().expect("asks for an fsync");
        backend.sync_data().expect("asks for another");
        assert_eq!(ops(&record).len(), 6, "the second request ran the first fsync");
        syncs.wait(syncs.requested()).expect("the fsync runs");
        assert_eq!(syncs.completed(), 3);
        backend.write(0, b"next").expect("writes");
        assert_eq!(
            ops(&record)[6..],
            [Op::SyncStarted, Op::Synced, Op::Write],
            "the wait ran the last fsync; nothing outstanding, the write goes straight through"
        );
    }

    #[test]
    fn a_change_waits_for_the_fsync_running_on_the_thread() {
        let (go, gate) = mpsc::channel();
        let recorder = Recorder { gate: Some(Mutex::new(gate)), ..Recorder::default() };
        let record = recorder.ops.clone();
        let (backend, syncs) = SyncBehind::on_a_thread(recorder).expect("the thread starts");
        backend.write(0, b"page").expect("writes");
        backend.sync_data().expect("asks for an fsync");
        let backend = Arc::new(backend);
        let writer = {
            let backend = backend.clone();
            std::thread::spawn(move || backend.write(0, b"next"))
        };
        // The fsync holds until told to go on. The pause only gives a write that did not wait
        // for it the time to land first (and fail the order asserted below); a correct one
        // passes whatever the timing.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!ops(&record).contains(&Op::Synced));
        go.send(()).expect("the fsync goes on");
        writer.join().expect("the writer").expect("writes");
        assert_eq!(
            ops(&record),
            [Op::Write, Op::SyncStarted, Op::Synced, Op::Write],
            "the second write after the fsync"
        );
        assert_eq!(syncs.completed(), 1);

        backend.sync_data().expect("asks for an fsync");
        go.send(()).expect("the fsync goes on");
        backend.close().expect("closes");
        assert_eq!(
            ops(&record)[4..],
            [Op::SyncStarted, Op::Synced, Op::Close],
            "close waits for the last fsync"
        );
    }

    /// A failed fsync, or one that panicked (caught, on the thread or in whoever ran it), in
    /// both modes: never completes, and is the answer of every later change and wait.
    #[test]
    fn a_failed_or_panicking_fsync_is_the_answer_of_every_later_change_and_wait() {
        let cases = [
            ("when needed", false, false),
            ("on a thread", true, false),
            ("when needed", false, true),
            ("on a thread", true, true),
        ];
        for (mode, threaded, panics) in cases {
            let recorder = Recorder { fail_syncs: !panics, panic_syncs: panics, ..Recorder::default() };
            let record = recorder.ops.clone();
            let (backend, syncs) = open(recorder, threaded);
            let why = if panics { "panicked" } else { "the disk is gone" };
            backend.write(0, b"page").expect("writes");
            backend.sync_data().expect("asks for an fsync");
            let failed = syncs.wait(1).expect_err("the fsync failed");
            assert!(failed.to_string().contains(why), "{mode}, {why}: {failed}");
            assert_eq!(syncs.completed(), 0, "{mode}, {why}: a failed fsync never completes");
            assert!(syncs.check().is_err(), "{mode}, {why}: check reports it too");
            for (what, result) in [
                ("write", backend.write(0, b"next")),
                ("set_len", backend.set_len(0)),
                ("sync_data", backend.sync_data()),
            ] {
                let e = result.expect_err(what);
                assert!(e.to_string().contains(why), "{mode}, {why}, {what}: {e}");
            }
            assert_eq!(
                ops(&record),
                [Op::Write, Op::SyncStarted],
                "{mode}, {why}: nothing reached the file after the failure"
            );
        }
    }

    #[test]
    fn each_fsync_that_completes_is_timed_for_the_observer_and_a_failed_one_is_not() {
        for (mode, threaded, fail) in
            [("on a thread", true, false), ("when needed", false, false), ("failing", true, true)]
        {
            let recorder = Recorder { fail_syncs: fail, ..Recorder::default() };
            let (backend, syncs) = open(recorder, threaded);
            let timed = Arc::new(Mutex::new(0));
            let counter = timed.clone();
            assert!(syncs.observe(move |_| *counter.lock().expect("the count") += 1), "{mode}: observed");
            assert!(!syncs.observe(|_| {}), "{mode}: a second observer is refused");
            for generation in 1..=2 {
                let _ = backend.sync_data();
                let _ = syncs.wait(generation);
            }
            let want = if fail { 0 } else { 2 };
            assert_eq!(*timed.lock().expect("the count"), want, "{mode}: fsyncs timed");
        }
    }
}
