//! The key-value domain: etcd v3 semantics (put, delete_range, txn, range) over the `kv` table.
//!
//! Invariants:
//! - The `kv` table holds exactly the live keys, in byte order; a row's value is a
//!   `latch.v1.KeyValue` with an empty key field and `1 <= create_revision <= mod_revision`,
//!   `version >= 1`. A deletion removes the row, so a re-created key starts at version 1 again.
//! - One command, one revision: a put, a delete_range that deleted something, or a txn whose
//!   chosen branch wrote anything raises the store revision by exactly one, and every key it
//!   wrote carries that revision. A command that writes nothing leaves the revision unchanged.
//! - Validation happens before any write, so a rejected command writes nothing.
//! - Key selection: `range_end` empty → the single key; `range_end` = "\0" → every key >= `key`;
//!   otherwise `[key, range_end)` (empty when `range_end <= key`).
//! - Deterministic: no clock, no randomness; everything iterates in key order.

use std::cmp::Ordering;
use std::ops::Bound;

use latch_proto::internal::{outcome, SnapshotRow};
use latch_proto::v1::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, DeleteRangeResponse, KeyValue, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use prost::Message;
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, Table, WriteTransaction};

use super::{open_read, Fnv, FsmError};
use crate::storage::schema::KV;

/// Applies a put; `revision` is the store revision, raised if the put was applied.
pub(crate) fn put(
    txn: &WriteTransaction,
    revision: &mut i64,
    req: PutRequest,
) -> Result<outcome::Result, FsmError> {
    if let Err(why) = check_key("put", &req.key) {
        return Ok(outcome::Result::Rejected(why));
    }
    let mut w = Writer::open(txn, *revision)?;
    let resp = w.put(req)?;
    *revision = w.revision();
    Ok(outcome::Result::Put(resp))
}

/// Applies a delete_range; the revision is raised only if something was deleted.
pub(crate) fn delete_range(
    txn: &WriteTransaction,
    revision: &mut i64,
    req: DeleteRangeRequest,
) -> Result<outcome::Result, FsmError> {
    if let Err(why) = check_key("delete_range", &req.key) {
        return Ok(outcome::Result::Rejected(why));
    }
    let mut w = Writer::open(txn, *revision)?;
    let resp = w.delete_range(&req)?;
    *revision = w.revision();
    Ok(outcome::Result::DeleteRange(resp))
}

/// Applies a txn: all compares, then the success or failure ops in order, in one revision.
pub(crate) fn txn(
    txn: &WriteTransaction,
    revision: &mut i64,
    req: TxnRequest,
) -> Result<outcome::Result, FsmError> {
    if let Err(why) = check_txn(&req) {
        return Ok(outcome::Result::Rejected(why));
    }
    let mut w = Writer::open(txn, *revision)?;
    let resp = w.txn(req)?;
    *revision = w.revision();
    Ok(outcome::Result::Txn(resp))
}

/// Serves a range from a read transaction at the store revision `revision`.
pub(crate) fn read_range(
    txn: &ReadTransaction,
    revision: i64,
    req: &RangeRequest,
) -> Result<RangeResponse, FsmError> {
    match open_read(txn, KV)? {
        Some(table) => range_in(&table, revision, req),
        None => Ok(RangeResponse { header: header(revision), ..Default::default() }),
    }
}

/// The rows of the kv table, in key order, as stored.
pub(crate) fn snapshot_rows(txn: &ReadTransaction) -> Result<Vec<SnapshotRow>, FsmError> {
    let Some(table) = open_read(txn, KV)? else { return Ok(Vec::new()) };
    let mut rows = Vec::with_capacity(usize::try_from(table.len()?).unwrap_or(0));
    for row in table.iter()? {
        let (k, v) = row?;
        rows.push(SnapshotRow { key: k.value().to_vec(), value: v.value().to_vec() });
    }
    Ok(rows)
}

/// Feeds the kv rows, in key order, to the state hash.
pub(crate) fn hash_rows(txn: &ReadTransaction, h: &mut Fnv) -> Result<(), FsmError> {
    let Some(table) = open_read(txn, KV)? else { return Ok(()) };
    for row in table.iter()? {
        let (k, v) = row?;
        h.write_bytes(k.value());
        h.write_bytes(v.value());
    }
    Ok(())
}

/// Checks a snapshot's kv rows: strictly increasing non-empty keys, each a sane `KeyValue`
/// no newer than the snapshot's revision.
pub(crate) fn check_rows(rows: &[SnapshotRow], revision: i64) -> Result<(), FsmError> {
    let mut previous: Option<&[u8]> = None;
    for row in rows {
        let key = row.key.as_slice();
        if key.is_empty() || previous.is_some_and(|p| p >= key) {
            return Err(FsmError::Corrupt(format!(
                "snapshot: kv row {:?} is empty or not in increasing key order",
                show(key)
            )));
        }
        let kv = decode_kv("snapshot: kv row", key, &row.value)?;
        if kv.mod_revision > revision {
            return Err(FsmError::Corrupt(format!(
                "snapshot: kv row {:?}: mod_revision {} is newer than the snapshot's revision {revision}",
                show(key),
                kv.mod_revision
            )));
        }
        previous = Some(key);
    }
    Ok(())
}

/// Writes checked snapshot rows into the (empty) kv table.
pub(crate) fn restore_rows(txn: &WriteTransaction, rows: Vec<SnapshotRow>) -> Result<(), FsmError> {
    let mut table = txn.open_table(KV)?;
    for row in rows {
        table.insert(row.key.as_slice(), row.value.as_slice())?;
    }
    Ok(())
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader { revision, ..Default::default() })
}

/// A key for error messages: printable ASCII as is, other bytes escaped.
fn show(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

type Selection<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// The keys `key` and `range_end` select, or `None` when they select nothing.
fn selection<'a>(key: &'a [u8], range_end: &'a [u8]) -> Option<Selection<'a>> {
    if range_end.is_empty() {
        Some((Bound::Included(key), Bound::Included(key)))
    } else if range_end == b"\0" {
        Some((Bound::Included(key), Bound::Unbounded))
    } else if range_end <= key {
        None
    } else {
        Some((Bound::Included(key), Bound::Excluded(range_end)))
    }
}

/// Decodes a stored row, checking what every row must satisfy.
fn decode_kv(table: &str, key: &[u8], bytes: &[u8]) -> Result<KeyValue, FsmError> {
    let corrupt = |why: String| FsmError::Corrupt(format!("{table}, key {:?}: {why}", show(key)));
    let mut kv = KeyValue::decode(bytes).map_err(|e| corrupt(format!("undecodable KeyValue: {e}")))?;
    if kv.create_revision < 1 || kv.mod_revision < kv.create_revision || kv.version < 1 {
        return Err(corrupt(format!(
            "impossible KeyValue: create_revision {}, mod_revision {}, version {}",
            kv.create_revision, kv.mod_revision, kv.version
        )));
    }
    kv.key = key.to_vec();
    Ok(kv)
}

fn range_in<T>(table: &T, revision: i64, req: &RangeRequest) -> Result<RangeResponse, FsmError>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
{
    let mut resp = RangeResponse { header: header(revision), ..Default::default() };
    let Some(selected) = selection(&req.key, &req.range_end) else { return Ok(resp) };
    let limit = usize::try_from(req.limit).ok().filter(|l| *l > 0).unwrap_or(usize::MAX);
    for row in table.range::<&[u8]>(selected)? {
        let (k, v) = row?;
        resp.count += 1;
        if req.count_only {
            continue;
        }
        if resp.kvs.len() >= limit {
            resp.more = true;
            continue;
        }
        let mut kv = decode_kv("table kv", k.value(), v.value())?;
        if req.keys_only {
            kv.value = Vec::new();
        }
        resp.kvs.push(kv);
    }
    Ok(resp)
}

fn check_key(what: &str, key: &[u8]) -> Result<(), String> {
    if key.is_empty() {
        Err(format!("{what}: key must not be empty"))
    } else {
        Ok(())
    }
}

fn check_txn(req: &TxnRequest) -> Result<(), String> {
    for (i, c) in req.compare.iter().enumerate() {
        check_key(&format!("txn: compare[{i}]"), &c.key)?;
        if c.target.is_none() {
            return Err(format!(
                "txn: compare[{i}]: target is missing (expected value, version, create_revision or mod_revision)"
            ));
        }
        if compare::CompareResult::try_from(c.result).is_err() {
            return Err(format!("txn: compare[{i}]: result {} is not a CompareResult", c.result));
        }
    }
    for (branch, ops) in [("success", &req.success), ("failure", &req.failure)] {
        for (i, op) in ops.iter().enumerate() {
            match &op.request {
                None => {
                    return Err(format!(
                        "txn: {branch}[{i}]: request is missing (expected range, put or delete_range)"
                    ))
                }
                Some(request_op::Request::Range(r)) => {
                    check_key(&format!("txn: {branch}[{i}]: range"), &r.key)?
                }
                Some(request_op::Request::Put(p)) => check_key(&format!("txn: {branch}[{i}]: put"), &p.key)?,
                Some(request_op::Request::DeleteRange(d)) => {
                    check_key(&format!("txn: {branch}[{i}]: delete_range"), &d.key)?
                }
            }
        }
    }
    Ok(())
}

/// The writes of one command: they all carry revision `base + 1`.
struct Writer<'t> {
    table: Table<'t, &'static [u8], &'static [u8]>,
    /// Store revision before the command.
    base: i64,
    /// The revision of this command's writes.
    next: i64,
    /// Whether the command wrote anything yet.
    wrote: bool,
}

impl<'t> Writer<'t> {
    fn open(txn: &'t WriteTransaction, base: i64) -> Result<Self, FsmError> {
        let next = base
            .checked_add(1)
            .ok_or_else(|| FsmError::Corrupt(format!("table fsm_meta, key revision: {base} cannot grow")))?;
        Ok(Writer { table: txn.open_table(KV)?, base, next, wrote: false })
    }

    /// The store revision as of the writes so far.
    fn revision(&self) -> i64 {
        if self.wrote {
            self.next
        } else {
            self.base
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, FsmError> {
        match self.table.get(key)? {
            Some(row) => decode_kv("table kv", key, row.value()).map(Some),
            None => Ok(None),
        }
    }

    fn put(&mut self, req: PutRequest) -> Result<PutResponse, FsmError> {
        let prev = self.get(&req.key)?;
        let (create_revision, version) = match &prev {
            Some(p) => {
                let version = p.version.checked_add(1).ok_or_else(|| {
                    FsmError::Corrupt(format!(
                        "table kv, key {:?}: version {} cannot grow",
                        show(&req.key),
                        p.version
                    ))
                })?;
                (p.create_revision, version)
            }
            None => (self.next, 1),
        };
        let stored =
            KeyValue { key: Vec::new(), create_revision, mod_revision: self.next, version, value: req.value };
        self.table.insert(req.key.as_slice(), stored.encode_to_vec().as_slice())?;
        self.wrote = true;
        Ok(PutResponse { header: header(self.next), prev_kv: prev.filter(|_| req.prev_kv) })
    }

    fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, FsmError> {
        let mut doomed = Vec::new();
        let mut prev_kvs = Vec::new();
        if let Some(selected) = selection(&req.key, &req.range_end) {
            for row in self.table.range::<&[u8]>(selected)? {
                let (k, v) = row?;
                if req.prev_kv {
                    prev_kvs.push(decode_kv("table kv", k.value(), v.value())?);
                }
                doomed.push(k.value().to_vec());
            }
        }
        for key in &doomed {
            self.table.remove(key.as_slice())?;
        }
        if !doomed.is_empty() {
            self.wrote = true;
        }
        Ok(DeleteRangeResponse {
            header: header(self.revision()),
            deleted: i64::try_from(doomed.len()).unwrap_or(i64::MAX),
            prev_kvs,
        })
    }

    fn compare(&self, c: &Compare) -> Result<bool, FsmError> {
        let kv = self.get(&c.key)?;
        let number = |f: fn(&KeyValue) -> i64| kv.as_ref().map_or(0, f);
        let ord = match &c.target {
            None => return Ok(false),
            Some(compare::Target::Value(v)) => match &kv {
                None => return Ok(false),
                Some(kv) => kv.value.as_slice().cmp(v.as_slice()),
            },
            Some(compare::Target::Version(n)) => number(|kv| kv.version).cmp(n),
            Some(compare::Target::CreateRevision(n)) => number(|kv| kv.create_revision).cmp(n),
            Some(compare::Target::ModRevision(n)) => number(|kv| kv.mod_revision).cmp(n),
        };
        Ok(match compare::CompareResult::try_from(c.result) {
            Ok(compare::CompareResult::Equal) => ord == Ordering::Equal,
            Ok(compare::CompareResult::Greater) => ord == Ordering::Greater,
            Ok(compare::CompareResult::Less) => ord == Ordering::Less,
            Ok(compare::CompareResult::NotEqual) => ord != Ordering::Equal,
            Err(_) => false,
        })
    }

    fn txn(&mut self, req: TxnRequest) -> Result<TxnResponse, FsmError> {
        let mut succeeded = true;
        for c in &req.compare {
            if !self.compare(c)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { req.success } else { req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match op.request {
                Some(request_op::Request::Range(r)) => {
                    response_op::Response::Range(range_in(&self.table, self.revision(), &r)?)
                }
                Some(request_op::Request::Put(p)) => response_op::Response::Put(self.put(p)?),
                Some(request_op::Request::DeleteRange(d)) => {
                    response_op::Response::DeleteRange(self.delete_range(&d)?)
                }
                None => continue, // rejected by check_txn before anything ran
            };
            responses.push(ResponseOp { response: Some(response) });
        }
        Ok(TxnResponse { header: header(self.revision()), succeeded, responses })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Applied;
    use compare::{CompareResult as R, Target as T};
    use latch_proto::internal::command::Body;
    use latch_proto::v1::{
        compare, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, RequestOp,
        ResponseHeader,
    };
    use std::collections::BTreeMap;

    fn rev(o: Option<ResponseHeader>) -> i64 {
        o.expect("responses carry a header").revision
    }

    fn kv_of(s: &Store, key: &str) -> (i64, i64, i64) {
        let kv = s.get(key).unwrap_or_else(|| panic!("expected key {key:?} to exist"));
        (kv.create_revision, kv.mod_revision, kv.version)
    }

    fn keys(resp: &RangeResponse) -> Vec<String> {
        resp.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
    }

    fn store_with(keys: &[&str]) -> Store {
        let mut s = Store::new();
        for k in keys {
            s.apply("", put(k, &format!("v-{k}")));
        }
        s
    }

    fn range_req(key: &[u8], range_end: &[u8]) -> RangeRequest {
        RangeRequest { key: key.to_vec(), range_end: range_end.to_vec(), ..Default::default() }
    }

    #[test]
    fn each_put_raises_the_revision_and_sets_the_key_revisions() {
        let mut s = Store::new();
        assert_eq!(rev(as_put(s.apply("", put("a", "1"))).header), 1, "the first write is revision 1");
        assert_eq!(rev(as_put(s.apply("", put("b", "1"))).header), 2);
        assert_eq!(kv_of(&s, "a"), (1, 1, 1), "a new key: create = mod = its revision, version 1");
        assert_eq!(rev(as_put(s.apply("", put("a", "2"))).header), 3);
        assert_eq!(kv_of(&s, "a"), (1, 3, 2), "an overwrite keeps create, sets mod, bumps version");
        assert_eq!(s.get("a").map(|kv| kv.value), Some(b"2".to_vec()));
        assert_eq!(s.applied().revision, 3);
    }

    #[test]
    fn put_returns_the_previous_kv_only_when_asked() {
        let mut s = store_with(&["a"]);
        assert_eq!(as_put(s.apply("", put("a", "x"))).prev_kv, None, "prev_kv not asked");
        let asked = Body::Put(PutRequest { prev_kv: true, ..put_req("a", "y") });
        let prev = as_put(s.apply("", asked)).prev_kv.expect("prev_kv asked for an existing key");
        assert_eq!((prev.key, prev.value, prev.version), (b"a".to_vec(), b"x".to_vec(), 2));
        let fresh = Body::Put(PutRequest { prev_kv: true, ..put_req("new", "y") });
        assert_eq!(as_put(s.apply("", fresh)).prev_kv, None, "a new key has no previous kv");
    }

    #[test]
    fn delete_raises_the_revision_and_a_recreated_key_starts_over() {
        let mut s = store_with(&["a", "b"]);
        s.apply("", put("a", "again"));
        let d = as_del(s.apply("", del("a", b"")));
        assert_eq!((d.deleted, rev(d.header)), (1, 4), "one key deleted at revision 4");
        assert_eq!(s.get("a"), None);
        s.apply("", put("a", "new"));
        assert_eq!(kv_of(&s, "a"), (5, 5, 1), "a recreated key has a new create_revision and version 1");
    }

    #[test]
    fn delete_of_nothing_keeps_the_revision() {
        let mut s = store_with(&["a"]);
        let d = as_del(s.apply("", del("zzz", b"")));
        assert_eq!((d.deleted, rev(d.header)), (0, 1), "nothing deleted, revision unchanged");
        assert_eq!(s.applied().revision, 1);
    }

    #[test]
    fn delete_range_deletes_the_selection_and_returns_prev_kvs() {
        let mut s = store_with(&["a", "b1", "b2", "c"]);
        let req = DeleteRangeRequest { prev_kv: true, ..del_req("b", b"c") };
        let d = as_del(s.apply("", Body::DeleteRange(req)));
        assert_eq!(d.deleted, 2);
        let prev: Vec<_> = d.prev_kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(prev, vec![b"b1".to_vec(), b"b2".to_vec()], "prev_kvs in key order");
        assert_eq!(keys(&s.range(range_req(b"\0", b"\0"))), vec!["a", "c"]);
        assert_eq!(rev(d.header), 5, "a multi-key delete is one revision");
    }

    #[test]
    fn writes_with_an_empty_key_are_rejected_and_write_nothing() {
        let mut s = store_with(&["a"]);
        assert!(as_rejected(s.apply("", put("", "x"))).contains("put: key"));
        assert!(as_rejected(s.apply("", del("", b"\0"))).contains("delete_range: key"));
        assert_eq!(s.applied(), Applied { index: 3, term: 1, revision: 1 });
    }

    #[test]
    fn range_selects_single_prefix_interval_and_from_key() {
        let s = store_with(&["a", "b", "b/1", "b/2", "c", "d"]);
        assert_eq!(keys(&s.range(range_req(b"b", b""))), vec!["b"], "single key");
        assert_eq!(keys(&s.range(range_req(b"zz", b""))), Vec::<String>::new(), "missing key");
        assert_eq!(keys(&s.range(range_req(b"b/", b"b0"))), vec!["b/1", "b/2"], "prefix b/");
        assert_eq!(keys(&s.range(range_req(b"b", b"d"))), vec!["b", "b/1", "b/2", "c"], "[b, d)");
        assert_eq!(keys(&s.range(range_req(b"c", b"\0"))), vec!["c", "d"], "from key c");
        assert_eq!(keys(&s.range(range_req(b"\0", b"\0"))).len(), 6, "every key");
        assert_eq!(s.range(range_req(b"d", b"a")).count, 0, "range_end before key selects nothing");
        assert_eq!(rev(s.range(range_req(b"a", b"")).header), 6, "reads carry the store revision");
    }

    #[test]
    fn range_limit_count_only_and_keys_only() {
        let s = store_with(&["a", "b", "c", "d"]);
        let limited = s.range(RangeRequest { limit: 2, ..range_req(b"a", b"\0") });
        assert_eq!((keys(&limited), limited.more, limited.count), (vec!["a".into(), "b".into()], true, 4));
        let exact = s.range(RangeRequest { limit: 4, ..range_req(b"a", b"\0") });
        assert!(!exact.more, "a limit equal to the count cuts nothing");
        let counted = s.range(RangeRequest { count_only: true, ..range_req(b"b", b"\0") });
        assert_eq!((counted.kvs.len(), counted.count, counted.more), (0, 3, false));
        let bare = s.range(RangeRequest { keys_only: true, ..range_req(b"a", b"") });
        assert_eq!(bare.kvs[0].value, Vec::<u8>::new(), "keys_only drops values");
        assert_eq!(bare.kvs[0].version, 1, "keys_only keeps the revisions");
    }

    /// Key `k` ends at value "m", create_revision 1, mod_revision 3, version 2.
    fn compare_store() -> Store {
        let mut s = Store::new();
        s.apply("", put("k", "a"));
        s.apply("", put("other", "x"));
        s.apply("", put("k", "m"));
        s
    }

    fn holds(s: &mut Store, c: Compare) -> bool {
        let r = as_txn(s.apply("", txn(vec![c], vec![], vec![])));
        r.succeeded
    }

    #[test]
    fn compare_targets_and_results() {
        let mut s = compare_store();
        let cases: Vec<(&str, T, T, T)> = vec![
            ("value", T::Value(b"a".to_vec()), T::Value(b"m".to_vec()), T::Value(b"z".to_vec())),
            ("version", T::Version(1), T::Version(2), T::Version(3)),
            ("create_revision", T::CreateRevision(0), T::CreateRevision(1), T::CreateRevision(2)),
            ("mod_revision", T::ModRevision(2), T::ModRevision(3), T::ModRevision(4)),
        ];
        for (name, below, equal, above) in cases {
            for (result, expect) in [
                (R::Equal, [false, true, false]),
                (R::Greater, [true, false, false]),
                (R::Less, [false, false, true]),
                (R::NotEqual, [true, false, true]),
            ] {
                for (target, want) in [below.clone(), equal.clone(), above.clone()].into_iter().zip(expect) {
                    let got = holds(&mut s, cmp("k", result, target.clone()));
                    assert_eq!(got, want, "{name}: actual {result:?} {target:?} should be {want}");
                }
            }
        }
        assert_eq!(s.applied().revision, 3, "compare-only txns write nothing");
    }

    #[test]
    fn compares_on_a_missing_key() {
        let mut s = compare_store();
        assert!(holds(&mut s, cmp("nope", R::Equal, T::Version(0))), "missing key: version 0");
        assert!(holds(&mut s, cmp("nope", R::Equal, T::CreateRevision(0))), "missing key: create 0");
        assert!(holds(&mut s, cmp("nope", R::Equal, T::ModRevision(0))), "missing key: mod 0");
        assert!(holds(&mut s, cmp("nope", R::Less, T::ModRevision(1))), "missing key: mod < 1");
        assert!(
            !holds(&mut s, cmp("nope", R::Equal, T::Value(vec![]))),
            "value compare on a missing key is false"
        );
        assert!(!holds(&mut s, cmp("nope", R::NotEqual, T::Value(b"x".to_vec()))), "even NOT_EQUAL");
    }

    #[test]
    fn txn_runs_success_when_all_compares_hold_else_failure() {
        let mut s = compare_store();
        let holds = cmp("k", R::Equal, T::Version(2));
        let fails = cmp("k", R::Equal, T::Version(9));
        let r = as_txn(s.apply("", txn(vec![holds.clone()], vec![op_put("s", "1")], vec![op_put("f", "1")])));
        assert!(r.succeeded);
        assert!(s.get("s").is_some() && s.get("f").is_none(), "only the success branch ran");
        let r =
            as_txn(s.apply("", txn(vec![holds, fails], vec![op_put("s2", "1")], vec![op_put("f2", "1")])));
        assert!(!r.succeeded, "one failing compare fails the txn");
        assert!(s.get("s2").is_none() && s.get("f2").is_some(), "only the failure branch ran");
    }

    #[test]
    fn txn_writes_share_one_revision_and_later_ops_see_earlier_writes() {
        let mut s = compare_store();
        let ops = vec![
            op_get("n"),
            op_put("n", "1"),
            op_get("n"),
            op_put("n", "2"),
            op_put("p", "x"),
            op_del("k", b""),
        ];
        let r = as_txn(s.apply("", txn(vec![], ops, vec![])));
        assert_eq!(rev(r.header), 4, "the whole txn is revision 4");
        assert_eq!(s.applied().revision, 4, "one revision per txn");
        let before = as_range(&r.responses[0]);
        assert_eq!((before.count, rev(before.header)), (0, 3), "a range before any write sees revision 3");
        let after = as_range(&r.responses[2]);
        assert_eq!(after.kvs[0].value, b"1".to_vec(), "a range sees the txn's earlier put");
        assert_eq!(rev(after.header), 4, "a range after a write sees the txn's revision");
        assert_eq!(kv_of(&s, "n"), (4, 4, 2), "two puts of one key in a txn: version 2, one revision");
        assert_eq!(kv_of(&s, "p"), (4, 4, 1));
        assert_eq!(s.get("k"), None);
        assert_eq!(r.responses.len(), 6, "one response per op");
    }

    #[test]
    fn txn_that_writes_nothing_keeps_the_revision() {
        let mut s = compare_store();
        let r = as_txn(s.apply("", txn(vec![], vec![op_get("k"), op_del("missing", b"")], vec![])));
        assert_eq!((rev(r.header), s.applied().revision), (3, 3));
    }

    #[test]
    fn invalid_txns_are_rejected_and_write_nothing() {
        let mut s = compare_store();
        let hash = s.hash();
        let missing_op = txn(vec![], vec![op_put("a", "1"), RequestOp { request: None }], vec![]);
        assert!(as_rejected(s.apply("", missing_op)).contains("success[1]: request is missing"));
        let bad_failure = txn(vec![], vec![], vec![op_put("", "1")]);
        assert!(as_rejected(s.apply("", bad_failure)).contains("failure[0]: put: key"));
        let no_target = Compare { result: 0, key: b"k".to_vec(), target: None };
        assert!(as_rejected(s.apply("", txn(vec![no_target], vec![], vec![]))).contains("target"));
        let bad_result = Compare { result: 42, ..cmp("k", R::Equal, T::Version(1)) };
        assert!(as_rejected(s.apply("", txn(vec![bad_result], vec![], vec![]))).contains("42"));
        assert_eq!(s.hash(), hash, "rejected txns change nothing");
        assert_eq!(s.get("a"), None);
    }

    /// A tiny xorshift64: seeded, reproducible, no crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn key(&mut self) -> String {
            let k = ["a", "b", "c", "d", "e", "f"][self.below(6) as usize];
            if self.below(3) == 0 {
                format!("{k}{}", self.below(3))
            } else {
                k.to_string()
            }
        }
    }

    /// The model: key → (value, create, mod, version), plus the store revision.
    #[derive(Default)]
    struct Model {
        kvs: BTreeMap<String, (String, i64, i64, i64)>,
        revision: i64,
    }

    impl Model {
        fn put(&mut self, key: &str, value: &str, rev: i64) {
            let e = self.kvs.entry(key.to_string()).or_insert((String::new(), rev, 0, 0));
            *e = (value.to_string(), e.1, rev, e.3 + 1);
        }

        /// Deletes [key, end) (`end` None → the single key); returns how many.
        fn delete(&mut self, key: &str, end: Option<&str>) -> i64 {
            let doomed: Vec<_> = self
                .kvs
                .keys()
                .filter(|k| match end {
                    None => k.as_str() == key,
                    Some(end) => k.as_str() >= key && k.as_str() < end,
                })
                .cloned()
                .collect();
            for k in &doomed {
                self.kvs.remove(k);
            }
            doomed.len() as i64
        }
    }

    #[test]
    fn random_writes_match_a_btreemap_model() {
        for seed in [1u64, 7, 0x9e37_79b9_7f4a_7c15] {
            let mut rng = Rng(seed);
            let mut s = Store::new();
            let mut m = Model::default();
            for step in 0..300 {
                let key = rng.key();
                let value = format!("v{}", rng.below(4));
                let ctx = format!("seed {seed} step {step}");
                match rng.below(4) {
                    0 | 1 => {
                        s.apply("", put(&key, &value));
                        m.revision += 1;
                        m.put(&key, &value, m.revision);
                    }
                    2 => {
                        let end = rng.key();
                        let single = rng.below(2) == 0;
                        let range_end = if single { Vec::new() } else { end.clone().into_bytes() };
                        let got = as_del(s.apply("", del(&key, &range_end))).deleted;
                        let want = m.delete(&key, (!single).then_some(end.as_str()));
                        m.revision += i64::from(want > 0);
                        assert_eq!(got, want, "{ctx}: deleted count");
                    }
                    _ => {
                        let version = m.kvs.get(&key).map_or(0, |e| e.3);
                        let guess = version + rng.below(2) as i64;
                        let (k2, k3) = (rng.key(), rng.key());
                        // The success branch deletes k3 (maybe nothing) and maybe puts k2.
                        let with_put = rng.below(2) == 0;
                        let mut success = vec![op_del(&k3, b"")];
                        if with_put {
                            success.push(op_put(&k2, &value));
                        }
                        let r = as_txn(s.apply(
                            "",
                            txn(
                                vec![cmp(&key, R::Equal, T::Version(guess))],
                                success,
                                vec![op_put(&k3, "failed")],
                            ),
                        ));
                        assert_eq!(r.succeeded, guess == version, "{ctx}: txn branch");
                        let rev = m.revision + 1;
                        let wrote = if guess == version {
                            let deleted = m.delete(&k3, None);
                            if with_put {
                                m.put(&k2, &value, rev);
                            }
                            with_put || deleted > 0
                        } else {
                            m.put(&k3, "failed", rev);
                            true
                        };
                        if wrote {
                            m.revision = rev;
                        }
                    }
                }
                assert_eq!(s.applied().revision, m.revision, "{ctx}: revision");
                let all = s.range(range_req(b"\0", b"\0"));
                let got: Vec<_> = all
                    .kvs
                    .iter()
                    .map(|kv| {
                        let k = String::from_utf8_lossy(&kv.key).into_owned();
                        let v = String::from_utf8_lossy(&kv.value).into_owned();
                        (k, (v, kv.create_revision, kv.mod_revision, kv.version))
                    })
                    .collect();
                let want: Vec<_> = m.kvs.clone().into_iter().collect();
                assert_eq!(got, want, "{ctx}: the store differs from the model");
            }
        }
    }
}
