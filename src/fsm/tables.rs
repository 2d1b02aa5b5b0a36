//! The tables one batch of commands writes, each opened once (`fsm::Batch`).
//!
//! Opening a redb table walks the transaction's table tree, and closing it stages the table's
//! root for the commit: with every function opening what it touched, that was about a quarter
//! of a lock command's apply (`cargo bench --bench hot_paths -- lock`, docs/performance.md). A
//! batch's [`Tables`] opens each table at its first use and closes them all at the batch's end.
//!
//! Invariants:
//! - While a [`Tables`] lives, nothing opens one of [`BATCH_TABLES`] on its transaction
//!   directly: redb refuses a table that is open already.
//! - A table is lent to one caller at a time, as an open redb table was: a caller that asks for
//!   a table it (or its caller) holds gets redb's own `TableAlreadyOpen` error, not a panic.

use std::cell::{OnceCell, RefCell, RefMut};

use redb::{Table, TableDefinition, TableError, TableHandle as _, WriteTransaction};

use super::FsmError;
use crate::storage::schema::{
    ADDED_MEMBERS, CLUSTER_VERSION, HISTORY, HISTORY_META, KV, LOCKS, LOCK_META, MEMBERS, REGISTRY,
    SEQUENCES, SESSIONS, SESSION_INSTANCES, SESSION_KEYS, SESSION_LOCKS,
};

/// A table of the replicated state, as every domain keeps them: bytes to bytes.
pub(crate) type StateTable<'t> = Table<'t, &'static [u8], &'static [u8]>;

/// The tables a command may write, but the request memory's (`requests::Memory` keeps those
/// open for the batch itself).
const BATCH_TABLES: [TableDefinition<'static, &'static [u8], &'static [u8]>; 14] = [
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
    open: [OnceCell<RefCell<StateTable<'t>>>; BATCH_TABLES.len()],
}

impl<'t> Tables<'t> {
    pub(crate) fn new(txn: &'t WriteTransaction) -> Tables<'t> {
        Tables { txn, open: std::array::from_fn(|_| OnceCell::new()) }
    }

    /// The transaction, for the tables of other shapes (`fsm_meta`, `conf_state`) and the
    /// request memory's.
    pub(crate) fn txn(&self) -> &'t WriteTransaction {
        self.txn
    }

    /// Table `def`, opened at its first use in the batch.
    #[track_caller]
    pub(crate) fn open(
        &self,
        def: TableDefinition<'static, &'static [u8], &'static [u8]>,
    ) -> Result<RefMut<'_, StateTable<'t>>, FsmError> {
        let Some(i) = BATCH_TABLES.iter().position(|d| d.name() == def.name()) else {
            return Err(FsmError::Corrupt(format!("table {} is not among a batch's tables", def.name())));
        };
        let cell = &self.open[i];
        let table = match cell.get() {
            Some(table) => table,
            None => {
                let table = self.txn.open_table(def)?;
                cell.get_or_init(|| RefCell::new(table))
            }
        };
        table.try_borrow_mut().map_err(|_| {
            FsmError::Table(TableError::TableAlreadyOpen(
                def.name().to_string(),
                std::panic::Location::caller(),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase as _, ReadableTable as _};

    use super::*;
    use crate::storage::schema::REQUESTS;

    fn db() -> redb::Database {
        redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("an in-memory database opens")
    }

    #[test]
    fn a_table_written_through_one_handle_reads_back_through_the_next() {
        let db = db();
        let txn = db.begin_write().expect("write txn");
        let tables = Tables::new(&txn);
        tables.open(LOCKS).expect("opens").insert(b"a".as_slice(), b"1".as_slice()).expect("inserts");
        let read = tables
            .open(LOCKS)
            .expect("opens again")
            .get(b"a".as_slice())
            .expect("reads")
            .map(|v| v.value().to_vec());
        assert_eq!(read, Some(b"1".to_vec()), "a batch sees its own writes to a table it keeps open");
        drop(tables);
        txn.commit().expect("the batch's tables are closed when it ends, so the commit goes through");
        let read = db
            .begin_read()
            .expect("read txn")
            .open_table(LOCKS)
            .expect("opens")
            .get(b"a".as_slice())
            .expect("reads")
            .map(|v| v.value().to_vec());
        assert_eq!(read, Some(b"1".to_vec()), "what the batch wrote is committed");
    }

    #[test]
    fn a_table_lent_out_twice_at_once_is_refused_as_redb_refuses_it() {
        let db = db();
        let txn = db.begin_write().expect("write txn");
        let tables = Tables::new(&txn);
        let held = tables.open(SESSIONS).expect("opens");
        let again = tables.open(SESSIONS);
        assert!(
            matches!(again, Err(FsmError::Table(TableError::TableAlreadyOpen(ref name, _))) if name == "sessions"),
            "a table held by one caller is refused to another, naming it; got {:?}",
            again.map(|_| ())
        );
        drop(held);
        assert!(tables.open(SESSIONS).is_ok(), "once given back, the table is lent again");
        assert!(tables.open(LOCKS).is_ok(), "another table is lent beside it");
    }

    #[test]
    fn a_table_outside_the_batch_tables_is_refused_by_name() {
        let db = db();
        let txn = db.begin_write().expect("write txn");
        let tables = Tables::new(&txn);
        let err = tables.open(REQUESTS).map(|_| ()).expect_err("the request memory opens its own tables");
        assert!(err.to_string().contains("requests"), "the error names the table: {err}");
    }
}
