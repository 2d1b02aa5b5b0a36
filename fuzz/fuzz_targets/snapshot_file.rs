//! A snapshot file (`latch snapshot status` and `restore`, `latch::backup`): any bytes, checked
//! whole, then restored as a new cluster's state into an in-memory database. Nothing may panic,
//! and what the check refuses the restore refuses too.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use redb::backends::InMemoryBackend;

fuzz_target!(|data: &[u8]| {
    let checked = latch::backup::check_from(&mut &data[..], Path::new("fuzzed"));
    let Ok(db) = redb::Database::builder().create_with_backend(InMemoryBackend::new()) else { return };
    let Ok(txn) = db.begin_write() else { return };
    if latch::fsm::init(&txn).is_err() {
        return;
    }
    let mut input = data;
    let restored = latch::backup::read_start(&mut input, Path::new("fuzzed"))
        .ok()
        .and_then(|_| latch::fsm::snapshot::restore_as_new_cluster(&txn, &mut input, 1).ok());
    assert!(checked.is_ok() || restored.is_none(), "a file the check refuses restored");
});
