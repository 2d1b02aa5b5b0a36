//! Marks: files a member leaves in its data dir when it stops for a reason a restart cannot cure,
//! so that it refuses to start on that data dir until a person has looked (and removed the
//! file). Each holds why, as the member said it when it stopped.
//!
//! Invariant: a mark is whole or absent (written to a temporary file, synced, renamed, the
//! directory synced), so a refusal always says why.

use std::io::Write as _;
use std::path::Path;

/// Its state differed from the one a quorum of the other members share (`state_check`).
pub const DIVERGED: &str = "STATE_DIVERGED";
/// Its raft log is shorter than what its leader knows it acknowledged
/// (`core::CoreError::ForgotEntries`).
pub const FORGOT_ENTRIES: &str = "FORGOT_ENTRIES";
/// It was removed from the cluster (`core::CoreError::Removed`).
pub const REMOVED: &str = "REMOVED";
/// Every mark a start looks for.
pub const ALL: [&str; 3] = [DIVERGED, FORGOT_ENTRIES, REMOVED];
/// Not a refusal, written the same way: this data dir was started empty after the member's
/// replacement (`server::admission`, `core::Core::lived_before`), so that a restart before its
/// state applied anything still withholds votes and serializable reads.
pub const LIVED_BEFORE: &str = "LIVED_BEFORE";
/// Not a refusal, written the same way: the index of the snapshot install the state checker
/// saw every member agree with since (`state_check::StateHashes::confirm`).
pub const COPY_CONFIRMED: &str = "STATE_COPY_CONFIRMED";

/// Writes mark `name` (saying `why`) into `data_dir`, durably and whole.
pub fn write(data_dir: &Path, name: &str, why: &str) -> std::io::Result<()> {
    let temporary = data_dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(why.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&temporary, data_dir.join(name))?;
    crate::storage::files::sync_dir(data_dir)
}

/// Why mark `name` is in `data_dir`, if it is.
pub fn read(data_dir: &Path, name: &str) -> Option<String> {
    let path = data_dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(why) => Some(why.trim_end().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(format!("{} is there but cannot be read ({e})", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_written_reads_back_whole_and_an_absent_one_reads_as_none() {
        let dir = tempfile::tempdir().expect("a temporary dir");
        assert_eq!(read(dir.path(), DIVERGED), None, "no mark yet");
        write(dir.path(), DIVERGED, "why it stopped").expect("written");
        assert_eq!(read(dir.path(), DIVERGED).as_deref(), Some("why it stopped"));
        assert!(!dir.path().join(format!("{DIVERGED}.tmp")).exists(), "no temporary file is left");
        assert_eq!(read(dir.path(), FORGOT_ENTRIES), None, "marks are apart");
    }
}
