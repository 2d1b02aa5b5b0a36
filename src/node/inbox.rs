//! Incoming snapshots staged as files in `<data dir>/snapshots/`, written as they arrive from
//! the peer transport and read back by the core when raft installs them: a snapshot of any
//! size costs a few buffers of memory, not its size.
//!
//! Invariants: a staged file is named by its token (`incoming-<from>-<index>-<term>-<n>.snap`)
//! and belongs to this life of the member: whatever a previous life left there is removed when
//! the inbox opens (an installed snapshot is in redb; a half-received one is useless).

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::core::Inbox;

pub struct FileInbox {
    dir: PathBuf,
    next: AtomicU64,
}

impl FileInbox {
    /// Opens (creating, and emptying) `dir`.
    pub fn open(dir: &Path) -> io::Result<FileInbox> {
        fs::create_dir_all(dir)?;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "snap") {
                fs::remove_file(&path)?;
            }
        }
        Ok(FileInbox { dir: dir.to_path_buf(), next: AtomicU64::new(1) })
    }

    fn path(&self, token: &[u8]) -> io::Result<PathBuf> {
        let name = std::str::from_utf8(token).map_err(|_| bad_token())?;
        if name.contains('/') || !name.starts_with("incoming-") || !name.ends_with(".snap") {
            return Err(bad_token());
        }
        Ok(self.dir.join(name))
    }
}

fn bad_token() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "not a staged snapshot's token")
}

impl Inbox for FileInbox {
    fn create(&self, from: u64, index: u64, term: u64) -> io::Result<(Box<dyn Write + Send>, Vec<u8>)> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = format!("incoming-{from}-{index}-{term}-{n}.snap");
        let file = File::create(self.dir.join(&name))?;
        Ok((Box::new(BufWriter::with_capacity(256 * 1024, file)), name.into_bytes()))
    }

    fn open(&self, token: &[u8]) -> io::Result<Box<dyn Read>> {
        Ok(Box::new(File::open(self.path(token)?)?))
    }

    fn remove(&self, token: &[u8]) {
        if let Ok(path) = self.path(token) {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_snapshot_reads_back_and_leftovers_of_a_previous_life_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inbox = FileInbox::open(dir.path()).expect("opens");
        let (mut w, token) = inbox.create(2, 10, 3).expect("creates");
        w.write_all(b"stream bytes").expect("writes");
        w.flush().expect("flushes");
        drop(w);
        let mut back = Vec::new();
        inbox.open(&token).expect("opens the staged file").read_to_end(&mut back).expect("reads");
        assert_eq!(back, b"stream bytes");
        assert!(inbox.open(b"../../etc/passwd").is_err(), "a token cannot name a file outside the inbox");
        let again = FileInbox::open(dir.path()).expect("reopens");
        assert!(again.open(&token).is_err(), "a new life starts with an empty inbox");
    }
}
