//! Short ways to write a transaction: [`Compare`] conditions, [`Op`] operations, and the
//! [`Txn`] that puts them together; and [`prefix_end`], the end of a prefix range.
//!
//! ```
//! use latch_client::{Compare, CompareResult, Op, Txn};
//!
//! // Set "config" to "v2" only if nobody wrote it since we read version 3; otherwise read it.
//! let txn = Txn::new()
//!     .when([Compare::version("config", CompareResult::Equal, 3)])
//!     .and_then([Op::put("config", "v2")])
//!     .or_else([Op::get("config")]);
//! # let _ = txn;
//! ```

use latch_proto::v1::{
    self as proto, compare::Target, request_op::Request, DeleteRangeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};

pub use latch_proto::v1::compare::CompareResult;

/// The end of the range of every key starting with `prefix`, with etcd's semantics: the prefix
/// with its last byte incremented, after dropping trailing `0xff` bytes. An empty or all-`0xff`
/// prefix gives `[0]`, which as a `range_end` means "every key from `key` on".
///
/// ```
/// assert_eq!(latch_client::prefix_end(b"app/"), b"app0".to_vec());
/// assert_eq!(latch_client::prefix_end(b"a\xff"), b"b".to_vec());
/// assert_eq!(latch_client::prefix_end(b""), vec![0]);
/// ```
///
/// See [`prefix_range`] for the whole range, the empty prefix included.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `(key, range_end)` selecting every key that starts with `prefix`. The empty prefix selects
/// every key: `("\0", "\0")`, as etcd's client does, since the empty key is no key.
///
/// ```
/// assert_eq!(latch_client::prefix_range(b"app/"), (b"app/".to_vec(), b"app0".to_vec()));
/// assert_eq!(latch_client::prefix_range(b""), (vec![0], vec![0]));
/// ```
pub fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    (prefix.to_vec(), prefix_end(prefix))
}

/// One condition of a transaction: a property of a key compared with a given value.
///
/// A missing key has version, create revision and mod revision 0, and no value: a value compare
/// against a missing key is false.
#[derive(Debug, Clone, PartialEq)]
pub struct Compare(proto::Compare);

impl Compare {
    fn new(key: impl Into<Vec<u8>>, result: CompareResult, target: Target) -> Compare {
        Compare(proto::Compare { result: result as i32, key: key.into(), target: Some(target) })
    }

    /// The key's value compared with `value` (bytes, lexicographically).
    pub fn value(key: impl Into<Vec<u8>>, result: CompareResult, value: impl Into<Vec<u8>>) -> Compare {
        Compare::new(key, result, Target::Value(value.into()))
    }

    /// The key's version (number of writes since its creation) compared with `version`.
    pub fn version(key: impl Into<Vec<u8>>, result: CompareResult, version: i64) -> Compare {
        Compare::new(key, result, Target::Version(version))
    }

    /// The revision that created the key compared with `revision`.
    pub fn create_revision(key: impl Into<Vec<u8>>, result: CompareResult, revision: i64) -> Compare {
        Compare::new(key, result, Target::CreateRevision(revision))
    }

    /// The revision of the key's last write compared with `revision`.
    pub fn mod_revision(key: impl Into<Vec<u8>>, result: CompareResult, revision: i64) -> Compare {
        Compare::new(key, result, Target::ModRevision(revision))
    }

    /// Holds while the sequencer (string form) still holds its lock: a write fenced by a lock.
    pub fn sequencer(token: impl Into<String>) -> Compare {
        Compare::new(Vec::new(), CompareResult::Equal, Target::Sequencer(token.into()))
    }

    /// Holds when the key does not exist (its version is 0): "create only if absent".
    pub fn missing(key: impl Into<Vec<u8>>) -> Compare {
        Compare::version(key, CompareResult::Equal, 0)
    }

    /// Holds when the key exists (its version is above 0).
    pub fn exists(key: impl Into<Vec<u8>>) -> Compare {
        Compare::version(key, CompareResult::Greater, 0)
    }

    /// The wire message.
    pub fn into_proto(self) -> proto::Compare {
        self.0
    }
}

impl From<Compare> for proto::Compare {
    fn from(compare: Compare) -> Self {
        compare.0
    }
}

/// One operation of a transaction: a read, a put or a delete.
#[derive(Debug, Clone, PartialEq)]
pub struct Op(RequestOp);

impl Op {
    /// Sets `key` to `value`.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Op {
        Op::from(PutRequest { key: key.into(), value: value.into(), ..Default::default() })
    }

    /// Reads `key`.
    pub fn get(key: impl Into<Vec<u8>>) -> Op {
        Op::from(RangeRequest { key: key.into(), ..Default::default() })
    }

    /// Reads every key starting with `prefix`.
    pub fn get_prefix(prefix: impl Into<Vec<u8>>) -> Op {
        let (key, range_end) = prefix_range(&prefix.into());
        Op::from(RangeRequest { key, range_end, ..Default::default() })
    }

    /// Deletes `key`.
    pub fn delete(key: impl Into<Vec<u8>>) -> Op {
        Op::from(DeleteRangeRequest { key: key.into(), ..Default::default() })
    }

    /// Deletes every key starting with `prefix`.
    pub fn delete_prefix(prefix: impl Into<Vec<u8>>) -> Op {
        let (key, range_end) = prefix_range(&prefix.into());
        Op::from(DeleteRangeRequest { key, range_end, ..Default::default() })
    }

    /// The wire message.
    pub fn into_proto(self) -> RequestOp {
        self.0
    }
}

impl From<RangeRequest> for Op {
    fn from(request: RangeRequest) -> Self {
        Op(RequestOp { request: Some(Request::Range(request)) })
    }
}

impl From<PutRequest> for Op {
    fn from(request: PutRequest) -> Self {
        Op(RequestOp { request: Some(Request::Put(request)) })
    }
}

impl From<DeleteRangeRequest> for Op {
    fn from(request: DeleteRangeRequest) -> Self {
        Op(RequestOp { request: Some(Request::DeleteRange(request)) })
    }
}

impl From<Op> for RequestOp {
    fn from(op: Op) -> Self {
        op.0
    }
}

/// A transaction: if every [`Compare`] holds, the `and_then` operations run, else the
/// `or_else` ones; atomically, in one revision. Pass it to [`Client::txn`](crate::Client::txn).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Txn {
    request: TxnRequest,
}

impl Txn {
    /// An empty transaction: no conditions (so it succeeds), no operations.
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Adds conditions; all of them must hold for the `and_then` branch to run.
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Txn {
        self.request.compare.extend(compares.into_iter().map(Compare::into_proto));
        self
    }

    /// Adds operations run when every condition holds.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = Op>) -> Txn {
        self.request.success.extend(ops.into_iter().map(Op::into_proto));
        self
    }

    /// Adds operations run when some condition does not hold.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = Op>) -> Txn {
        self.request.failure.extend(ops.into_iter().map(Op::into_proto));
        self
    }

    /// Sets the request id that makes retries safe. Without one, the client picks a fresh id.
    pub fn request_id(mut self, id: impl Into<String>) -> Txn {
        self.request.request_id = id.into();
        self
    }

    /// The wire message.
    pub fn into_request(self) -> TxnRequest {
        self.request
    }
}

impl From<Txn> for TxnRequest {
    fn from(txn: Txn) -> Self {
        txn.request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"a"), b"b");
        assert_eq!(prefix_end(b"app/"), b"app0");
        assert_eq!(prefix_end(&[1, 2, 0xfe]), vec![1, 2, 0xff]);
    }

    #[test]
    fn prefix_end_drops_trailing_ff_bytes() {
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b");
        assert_eq!(prefix_end(&[b'a', 0xff, 0xff]), b"b");
        assert_eq!(prefix_end(&[0x01, 0xfe, 0xff]), vec![0x01, 0xff]);
    }

    #[test]
    fn prefix_end_of_empty_or_all_ff_means_every_key_after() {
        assert_eq!(prefix_end(b""), vec![0]);
        assert_eq!(prefix_end(&[0xff]), vec![0]);
        assert_eq!(prefix_end(&[0xff, 0xff, 0xff]), vec![0]);
    }

    #[test]
    fn the_empty_prefix_selects_every_key() {
        assert_eq!(prefix_range(b""), (vec![0], vec![0]));
        assert_eq!(prefix_range(b"a"), (b"a".to_vec(), b"b".to_vec()));
        assert_eq!(
            Op::get_prefix("").into_proto().request,
            Some(Request::Range(RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() }))
        );
    }

    #[test]
    fn compare_builders_fill_key_result_and_target() {
        let c = Compare::value("k", CompareResult::NotEqual, "v").into_proto();
        assert_eq!(
            c,
            proto::Compare {
                result: CompareResult::NotEqual as i32,
                key: b"k".to_vec(),
                target: Some(Target::Value(b"v".to_vec())),
            }
        );
        assert_eq!(
            Compare::version("k", CompareResult::Equal, 3).into_proto().target,
            Some(Target::Version(3))
        );
        assert_eq!(
            Compare::create_revision("k", CompareResult::Less, 7).into_proto().target,
            Some(Target::CreateRevision(7))
        );
        let m = Compare::mod_revision("k", CompareResult::Greater, 9).into_proto();
        assert_eq!((m.result(), m.target), (CompareResult::Greater, Some(Target::ModRevision(9))));
        let missing = Compare::missing("k").into_proto();
        assert_eq!((missing.result(), missing.target), (CompareResult::Equal, Some(Target::Version(0))));
        let exists = Compare::exists("k").into_proto();
        assert_eq!((exists.result(), exists.target), (CompareResult::Greater, Some(Target::Version(0))));
    }

    #[test]
    fn op_builders_make_the_matching_request() {
        assert_eq!(
            Op::put("k", "v").into_proto().request,
            Some(Request::Put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() }))
        );
        assert_eq!(
            Op::get("k").into_proto().request,
            Some(Request::Range(RangeRequest { key: b"k".to_vec(), ..Default::default() }))
        );
        assert_eq!(
            Op::get_prefix("a/").into_proto().request,
            Some(Request::Range(RangeRequest {
                key: b"a/".to_vec(),
                range_end: b"a0".to_vec(),
                ..Default::default()
            }))
        );
        assert_eq!(
            Op::delete("k").into_proto().request,
            Some(Request::DeleteRange(DeleteRangeRequest { key: b"k".to_vec(), ..Default::default() }))
        );
        assert_eq!(
            Op::delete_prefix("a/").into_proto().request,
            Some(Request::DeleteRange(DeleteRangeRequest {
                key: b"a/".to_vec(),
                range_end: b"a0".to_vec(),
                ..Default::default()
            }))
        );
    }

    #[test]
    fn txn_collects_compares_and_both_branches_in_order() {
        let request: TxnRequest = Txn::new()
            .when([Compare::version("k", CompareResult::Equal, 1)])
            .when([Compare::exists("other")])
            .and_then([Op::put("k", "2"), Op::delete("other")])
            .or_else([Op::get("k")])
            .request_id("id-1")
            .into();
        assert_eq!(request.compare.len(), 2);
        assert_eq!(request.compare[1].key, b"other");
        assert_eq!(request.success, vec![Op::put("k", "2").into_proto(), Op::delete("other").into_proto()]);
        assert_eq!(request.failure, vec![Op::get("k").into_proto()]);
        assert_eq!(request.request_id, "id-1");
    }

    #[test]
    fn an_empty_txn_has_no_request_id_so_the_client_picks_one() {
        assert_eq!(Txn::new().into_request(), TxnRequest::default());
    }
}
