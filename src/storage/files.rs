//! The files the raft log is kept in, behind two narrow traits so that the simulator can put a
//! crash-losing disk under the very same log code: a [`Dir`] of named [`File`]s that are
//! preallocated (zeros), written at increasing offsets, read at an offset and synced.
//!
//! Contract (what the log relies on, and what a simulated disk must model):
//! - Bytes written to a file are durable only once [`File::sync`] returned; a crash may keep any
//!   prefix of what was written since, the rest reading as what was there before (zeros, in
//!   preallocated space) — never later bytes without the earlier ones.
//! - A file created, or removed, is so durably only once [`Dir::sync`] returned.
//! - Preallocated space reads as zeros.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Makes the entries of directory `dir` (files created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// The directory `path` is in (`.` for a bare name), whose entry for it [`sync_dir`] makes
/// durable.
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A directory of log files.
pub trait Dir: Send {
    /// The names of the files in it.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Opens an existing file, to read and append to.
    fn open(&self, name: &str) -> io::Result<Box<dyn File>>;
    /// Creates a new, empty file (failing if it exists).
    fn create(&self, name: &str) -> io::Result<Box<dyn File>>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes creations and removals durable.
    fn sync(&self) -> io::Result<()>;
    /// Where it is, for messages.
    fn describe(&self, name: &str) -> String;
}

/// A file of a [`Dir`].
pub trait File: Send + Sync {
    /// Its length in bytes (preallocated space included).
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `offset` (growing the file if needed).
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Grows the file to at least `len` bytes of zeros, allocated now: writing within them later
    /// does not change the file's size (on ext4 the first write to a fallocated block still
    /// marks it written, a small metadata change; measured, it still halves an fdatasync).
    fn allocate(&mut self, len: u64) -> io::Result<()>;
    /// Makes what was written durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
}

/// A directory on the real file system.
pub struct FsDir {
    path: PathBuf,
}

impl FsDir {
    /// Opens (creating if missing) the directory at `path`.
    pub fn open(path: &Path) -> io::Result<FsDir> {
        fs::create_dir_all(path)?;
        Ok(FsDir { path: path.to_path_buf() })
    }
}

struct FsFile {
    file: fs::File,
    len: u64,
}

impl Dir for FsDir {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.path)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn File>> {
        let file = fs::OpenOptions::new().read(true).write(true).open(self.path.join(name))?;
        let len = file.metadata()?.len();
        Ok(Box::new(FsFile { file, len }))
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn File>> {
        let file =
            fs::OpenOptions::new().read(true).write(true).create_new(true).open(self.path.join(name))?;
        Ok(Box::new(FsFile { file, len: 0 }))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.path.join(name))
    }

    fn sync(&self) -> io::Result<()> {
        sync_dir(&self.path)
    }

    fn describe(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }
}

impl File for FsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        self.len = self.len.max(offset + data.len() as u64);
        Ok(())
    }

    fn allocate(&mut self, len: u64) -> io::Result<()> {
        if len <= self.len {
            return Ok(());
        }
        if rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), 0, len).is_err() {
            // A file system without fallocate: zeros, written.
            let zeros = vec![0u8; 1 << 20];
            let mut at = self.len;
            while at < len {
                let n = (len - at).min(zeros.len() as u64) as usize;
                self.file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
        }
        self.len = len;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.sync_data()
    }
}
