//! The tables one batch of commands writes, each opened once (`fsm::Batch`).
//!
//! Opening a redb table walks the transaction's table tree, and closing it stages the table's
//! root for the commit: with every function opening what it touched, that was about a quarter
//! of a lock command's apply (`cargo bench --bench hot_paths -- lock`, docs/performance.md). A
//! batch's [`Tables`] opens each table at its first use and closes them all at the batch's end.
//!
//! Invariants:
//! - While a [`Tables`] lives, nothing opens one of [`BATCH_TABLES`] on its transaction
//!   directly: redb refuses a table that is open already. Debug builds (the tests, the
//!   simulator) open them all as the batch begins, so that a direct open fails every time, not
//!   only in a batch where an earlier entry happened to use the table.
//! - A table is lent to one caller at a time, as an open redb table was: a caller that asks for
//!   a table it (or its caller) holds gets redb's own `TableAlreadyOpen` error, naming where it
//!   is held, not a panic. A direct open of a batch table that slipped in gets redb's error
//!   naming [`open_for_the_batch`] in this file: the batch holds the table.

use std::cell::{Cell, OnceCell, RefCell, RefMut};
use std::panic::Location;

use redb::{Table, TableError, TableHandle as _, WriteTransaction};

use super::{FsmError, TableDef};
use crate::storage::schema::{
    ADDED_MEMBERS, CLUSTER_VERSION, HISTORY, HISTORY_META, KV, LOCKS, LOCK_META, MEMBERS, REGISTRY,
    SEQUENCES, SESSIONS, SESSION_INSTANCES, SESSION_KEYS, SESSION_LOCKS,
};

/// A table of the replicated state, as every domain keeps them: bytes to bytes.
pub(crate) type StateTable<'t> = Table<'t, &'static [u8], &'static [u8]>;

/// The tables a command may write: every domain's but the request memory's
/// (`requests::Memory` keeps those open for the batch itself).
const BATCH_TABLES: [TableDef; 14] = [
    KV,
    SEQUENCES,
    SESSIONS,
    SESSION_KEYS,
    LOCKS,
    SESSION_LOCKS,
    LOCK_META,
    REGISTRY,
    SESSION_INSTANCES,
    MEMBERS,
    ADDED_MEMBERS,
    CLUSTER_VERSION,
    HISTORY,
    HISTORY_META,
];

/// One batch's write transaction and the tables opened in it so far.
pub struct Tables<'t> {
    txn: &'t WriteTransaction,
    open: [OnceCell<Lent<'t>>; BATCH_TABLES.len()],
}

/// An open table, and where it was last lent (where it is held, while it is).
struct Lent<'t> {
    table: RefCell<StateTable<'t>>,
    to: Cell<&'static Location<'static>>,
}

impl<'t> Tables<'t> {
    pub(crate) fn new(txn: &'t WriteTransaction) -> Result<Tables<'t>, FsmError> {
        let tables = Tables { txn, open: std::array::from_fn(|_| OnceCell::new()) };
        if cfg!(debug_assertions) {
            for def in BATCH_TABLES {
                tables.open(def)?;
            }
        }
        Ok(tables)
    }

    /// The transaction, for the tables of other shapes (`fsm_meta`, `conf_state`) and the
    /// request memory's.
    pub(crate) fn txn(&self) -> &'t WriteTransaction {
        self.txn
    }

    /// Table `def`, opened at its first use in the batch.
    #[track_caller]
    pub(crate) fn open(&self, def: TableDef) -> Result<RefMut<'_, StateTable<'t>>, FsmError> {
        let caller = Location::caller();
        let Some(i) = BATCH_TABLES.iter().position(|d| d.name() == def.name()) else {
            // A bug, not stored data (a test holds the list to the domains' tables).
            return Err(FsmError::Corrupt(format!("table {} is not among a batch's tables", def.name())));
        };
        let cell = &self.open[i];
        let lent = match cell.get() {
            Some(lent) => lent,
            None => {
                let table = open_for_the_batch(self.txn, def)?;
                cell.get_or_init(|| Lent { table: RefCell::new(table), to: Cell::new(caller) })
            }
        };
        let table = lent.table.try_borrow_mut().map_err(|_| {
            FsmError::Table(TableError::TableAlreadyOpen(def.name().to_string(), lent.to.get()))
        })?;
        lent.to.set(caller);
        Ok(table)
    }
}

/// Opens `def` for a batch's [`Tables`]. Not `#[track_caller]`, unlike redb's `open_table`:
/// redb records this line as where the table is held, so a direct open of it while the batch
/// lives is refused naming the batch, not whichever caller first asked for the table (long
/// returned by then).
fn open_for_the_batch<'t>(txn: &'t WriteTransaction, def: TableDef) -> Result<StateTable<'t>, TableError> {
    txn.open_table(def)
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase as _, ReadableTable};

    use super::*;
    use crate::storage::schema::REQUESTS;

    fn db() -> redb::Database {
        redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("an in-memory database opens")
    }

    /// What key `a` holds in `table`.
    fn value_of(table: &impl ReadableTable<&'static [u8], &'static [u8]>) -> Option<Vec<u8>> {
        table.get(b"a".as_slice()).expect("reads").map(|v| v.value().to_vec())
    }

    #[test]
    fn a_table_written_through_one_handle_reads_back_through_the_next() {
        let db = db();
        let txn = db.begin_write().expect("write txn");
        let tables = Tables::new(&txn).expect("the batch's tables open");
        tables.open(LOCKS).expect("opens").insert(b"a".as_slice(), b"1".as_slice()).expect("inserts");
        let read = value_of(&*tables.open(LOCKS).expect("opens again"));
        assert_eq!(read, Some(b"1".to_vec()), "a batch sees its own writes to a table it keeps open");
        drop(tables);
        txn.commit().expect("the batch's tables are closed when it ends, so the commit goes through");
        let read = value_of(&db.begin_read().expect("read txn").open_table(LOCKS).expect("opens"));
        assert_eq!(read, Some(b"1".to_vec()), "what the batch wrote is committed");
    }

    #[test]
    fn a_table_lent_out_twice_at_once_is_refused_as_redb_refuses_it() {
        let db = db();
        let txn = db.begin_write().expect("write txn");
        let tables = Tables::new(&txn).expect("the batch's tables open");
        let held = tables.open(SESSIONS).expect("opens");
        let held_at = line!() - 1;
        let again = tables.open(SESSIONS);
        assert!(
            matches!(again, Err(FsmError::Table(TableError::TableAlreadyOpen(ref name, at)))
                if name == "sessions" && at.file().ends_with("tables.rs") && at.line() == held_at),
            "a table held by one caller is refused to another, naming it and where it is held (line {held_at}); got {:?}",
            again.map(|_| ())
        );
        drop(held);
        assert!(tables.open(SESSIONS).is_ok(), "once given back, the table is lent again");
        assert!(tables.open(LOCKS).is_ok(), "another table is lent beside it");
    }

    #[test]
    fn the_batch_tables_are_every_domain_table_but_the_request_memorys() {
        use crate::fsm::Domain as _;
        let memory: Vec<&str> =
            crate::fsm::requests::RequestsDomain.tables().iter().map(|t| t.name()).collect();
        let mut domains: Vec<&str> = crate::fsm::DOMAINS
            .iter()
            .flat_map(|d| d.tables().iter().map(|t| t.name()))
            .filter(|name| !memory.contains(name))
            .collect();
        let mut batch: Vec<&str> = BATCH_TABLES.iter().map(|t| t.name()).collect();
        domains.sort_unstable();
        batch.sort_unstable();
        assert_eq!(batch, domains, "a domain's new table is written through the batch's tables");
    }

    #[test]
    fn a_direct_open_of_a_table_the_batch_holds_is_refused_naming_the_batch() {
        let db = db();
        let txn = db.begin_write().expect("write txn");
        let tables = Tables::new(&txn).expect("the batch's tables open");
        drop(tables.open(LOCKS).expect("opens"));
        let direct = txn.open_table(LOCKS).map(|_| ());
        assert!(
            matches!(direct, Err(TableError::TableAlreadyOpen(ref name, at))
                if name == "locks" && at.file().ends_with("tables.rs")
                    && at.line() > line_of_open_for_the_batch()
                    && at.line() <= line_of_open_for_the_batch() + 2),
            "a table the batch holds is refused to a direct open, naming `open_for_the_batch` (line {}) \
             as where it is held, in release and debug builds alike; got {direct:?}",
            line_of_open_for_the_batch()
        );
        drop(tables);
    }

    /// The line of `fn open_for_the_batch` in this file.
    fn line_of_open_for_the_batch() -> u32 {
        let source = include_str!("tables.rs");
        let at = source
            .lines()
            .position(|l| l.starts_with("fn open_for_the_batch"))
            .expect("the helper is in this file");
        u32::try_from(at + 1).expect("a line number")
    }

    #[cfg(debug_assertions)]
    #[test]
    fn in_a_debug_build_a_direct_open_of_a_batch_table_fails_as_soon_as_the_batch_begins() {
        let db = db();
        let txn = db.begin_write().expect("write txn");
        let tables = Tables::new(&txn).expect("the batch's tables open");
        for def in BATCH_TABLES {
            assert!(
                matches!(txn.open_table(def), Err(TableError::TableAlreadyOpen(..))),
                "table {} is open from the batch's start, so going around the batch fails every time",
                def.name()
            );
        }
        drop(tables);
    }

    #[test]
    fn a_table_outside_the_batch_tables_is_refused_by_name() {
        let db = db();
        let txn = db.begin_write().expect("write txn");
        let tables = Tables::new(&txn).expect("the batch's tables open");
        let err = tables.open(REQUESTS).map(|_| ()).expect_err("the request memory opens its own tables");
        assert!(err.to_string().contains("requests"), "the error names the table: {err}");
    }
}
