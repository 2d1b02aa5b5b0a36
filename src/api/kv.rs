//! The KV service: Range, Put, DeleteRange, Txn, Compact.
//!
//! Writes are proposed as a `Command` and answered with the outcome the fsm produced (the same
//! one on a retry of the request id). Reads are linearizable through ReadIndex unless the
//! request asks for `serializable`; either way they are served from this member's applied state.
//! A read at a past revision scans the history after it: it runs off the async runtime, a few at
//! a time (`past`). So does a scan of the current revision (a range or a read-only txn with a
//! `range_end`, `KvService::scan`); a single key is read on the runtime.

pub(super) mod convert;
mod past;

use std::sync::Arc;

use latch_proto::internal::{command::Body, outcome};
use latch_proto::v1::kv_server::{Kv, KvServer};
use latch_proto::v1::{request_op, *};
use prost::Message as _;
use redb::ReadableDatabase as _;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use super::{ApiError, Context};
use crate::config::Limits;
use crate::fsm::history::RevisionError;

pub struct KvService {
    ctx: Context,
    /// The member's slots for reads at a past revision (one service per member).
    past: past::PastReads,
    /// The member's slots for scans at the current revision ([`KvService::scan`]).
    scans: Arc<Semaphore>,
}

/// Scans at the current revision one member runs at once; more wait for a slot, a second at
/// most (`past::PAST_READ_WAIT`), and are then refused UNAVAILABLE (the clients retry).
const SCAN_SLOTS: usize = 4;

impl KvService {
    pub fn server(ctx: Context) -> KvServer<KvService> {
        let max = ctx.limits.max_request_bytes * 2 + 64 * 1024;
        let past = past::PastReads::new(ctx.limits.max_past_reads);
        KvServer::new(KvService { ctx, past, scans: Arc::new(Semaphore::new(SCAN_SLOTS)) })
            .max_decoding_message_size(max)
            .max_encoding_message_size(usize::MAX)
    }
}

impl KvService {
    /// `read` on a read transaction of its own, on tokio's blocking pool, in one of the
    /// member's [`SCAN_SLOTS`] (refused if none frees within a second): a read whose cost grows
    /// with the rows it selects (a scan counts every row, however few it returns) would stall
    /// this member's peer streams and every other call on its worker, and unbounded, fill the
    /// blocking pool. The transaction opens in the slot, after the caller's ReadIndex: a queue
    /// of scans pins no pages, and each reads at least what its ReadIndex confirmed.
    async fn scan<T: Send + 'static>(
        &self,
        read: impl FnOnce(&redb::ReadTransaction) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        // UNAVAILABLE, not RESOURCE_EXHAUSTED: a shortage of the moment, which the clients
        // retry, on another member first.
        let slot = past::admit(&self.scans, || {
            ApiError::Unavailable(format!(
                "scans (ranges with a range_end): this member runs {SCAN_SLOTS} at once and none ended \
                 within {:?}; another member may have a slot (a limit does not shorten a count, which \
                 reads every row selected)",
                past::PAST_READ_WAIT
            ))
        })
        .await?;
        let db = self.ctx.node.db().clone();
        let scan = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            Ok::<_, ApiError>(read(&db.begin_read()?))
        });
        scan.await.map_err(|e| ApiError::Internal(format!("a scan failed: {e}")))?
    }
}

/// The fsm answered a write with another kind of result than the command's.
fn mismatched(what: &str) -> ApiError {
    ApiError::Internal(format!("the state machine answered a {what} with another kind of outcome"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            match req.range_end.is_empty() {
                true => check_key(&self.ctx.limits, "key", &req.key)?,
                false => check_range_start(&self.ctx.limits, &req.key)?,
            }
            super::page_limit(req.limit)?;
            if req.revision < 0 {
                return Err(ApiError::InvalidArgument {
                    field: "revision",
                    problem: format!("{} is negative (0 = the current revision)", req.revision),
                });
            }
            if req.serializable {
                self.ctx.node.read_serializable().await?;
            } else {
                self.ctx.node.read_index().await?;
            }
            let max = self.ctx.limits.max_response_bytes;
            let txn = self.ctx.node.db().begin_read()?;
            // At the current revision (0, or named: pages of a list read at one revision, etcd
            // style, while nothing changed) there is nothing to undo: read here, not in a slot.
            let current = req.revision == 0 || req.revision == crate::fsm::applied(&txn)?.revision;
            let (revision, result) = if current && req.range_end.is_empty() {
                crate::fsm::range(&txn, &convert::range(&req), max)?
            } else if current {
                // A scan counts every row it selects, however few it returns: in a slot.
                drop(txn);
                let range = convert::range(&req);
                self.scan(move |txn| crate::fsm::range(txn, &range, max)).await??
            } else {
                drop(txn);
                self.past.range(self.ctx.node.db().clone(), convert::range(&req), max).await?
            };
            Ok(convert::range_response(result, self.ctx.header(revision)))
        };
        self.ctx.answer(run).await
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            check_request(&self.ctx.limits, req.encoded_len())?;
            check_put(&self.ctx.limits, &req)?;
            check_request_id(&req.request_id)?;
            let id = req.request_id.clone();
            match self.ctx.write(&id, Body::Put(convert::put(req))).await? {
                (header, outcome::Result::Put(r)) => Ok(convert::put_response(r, header)),
                _ => Err(mismatched("put")),
            }
        };
        self.ctx.answer(run).await
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            check_request(&self.ctx.limits, req.encoded_len())?;
            check_key(&self.ctx.limits, "key", &req.key)?;
            check_request_id(&req.request_id)?;
            let id = req.request_id.clone();
            match self.ctx.write(&id, Body::DeleteRange(convert::delete_range(req))).await? {
                (header, outcome::Result::DeleteRange(r)) => Ok(convert::delete_response(r, header)),
                _ => Err(mismatched("delete")),
            }
        };
        self.ctx.answer(run).await
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            check_request(&self.ctx.limits, req.encoded_len())?;
            check_txn(&self.ctx.limits, &req)?;
            check_request_id(&req.request_id)?;
            let id = req.request_id.clone();
            let size = req.encoded_len();
            let txn = convert::txn(req, self.ctx.node.cluster_id)?;
            if crate::fsm::writes_nothing(&txn) {
                // Only compares and ranges: a linearizable read, as etcd serves it, not a log
                // entry every member applies (and builds the ranges' results for) alike.
                self.ctx.node.read_index_holding(size).await?;
                let max = self.ctx.limits.max_response_bytes;
                let scans = txn.success.iter().chain(&txn.failure).any(|o| {
                    matches!(&o.op, Some(latch_proto::internal::op::Op::Range(r)) if !r.range_end.is_empty())
                });
                let answer = if scans {
                    self.scan(move |read| crate::fsm::read_txn(read, &txn, max)).await??
                } else {
                    crate::fsm::read_txn(&self.ctx.node.db().begin_read()?, &txn, max)?
                };
                return match answer {
                    (revision, outcome::Result::Txn(r)) => {
                        Ok(convert::txn_response(r, self.ctx.header(revision)))
                    }
                    (_, outcome::Result::Rejected(why)) => Err(ApiError::Rejected(why)),
                    _ => Err(mismatched("txn")),
                };
            }
            match self.ctx.write(&id, Body::Txn(txn)).await? {
                (header, outcome::Result::Txn(r)) => Ok(convert::txn_response(r, header)),
                _ => Err(mismatched("txn")),
            }
        };
        self.ctx.answer(run).await
    }

    async fn compact(&self, req: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            if req.revision <= 0 {
                return Err(ApiError::InvalidArgument {
                    field: "revision",
                    problem: format!("{} is not a revision (revisions start at 1)", req.revision),
                });
            }
            check_request_id(&req.request_id)?;
            let body = Body::Compact(latch_proto::internal::Compact { revision: req.revision });
            let (header, result) = self.ctx.write(&req.request_id, body).await.map_err(|e| match e {
                ApiError::Revision(RevisionError::Compacted { compact_revision, .. }) => {
                    ApiError::Revision(RevisionError::Compacted { asked: req.revision, compact_revision })
                }
                e => e,
            })?;
            Ok(CompactionResponse { compact_revision: compacted(result)?, header: Some(header) })
        };
        self.ctx.answer(run).await
    }
}

/// Compact's answer to an outcome: the compact revision now, or why not.
fn compacted(result: outcome::Result) -> Result<i64, ApiError> {
    match result {
        outcome::Result::Compact(c) => Ok(c.compact_revision),
        _ => Err(mismatched("compact")),
    }
}

pub(super) fn check_request(limits: &Limits, len: usize) -> Result<(), ApiError> {
    if len > limits.max_request_bytes {
        return Err(ApiError::OverLimit(format!(
            "request is {len} bytes, over the limit of {} (--max-request-bytes)",
            limits.max_request_bytes
        )));
    }
    Ok(())
}

/// Most bytes of a client's request id.
pub(super) const MAX_REQUEST_ID_BYTES: usize = 64;

pub(super) fn check_request_id(id: &str) -> Result<(), ApiError> {
    if id.len() > MAX_REQUEST_ID_BYTES {
        return Err(ApiError::InvalidArgument {
            field: "request_id",
            problem: format!("is {} bytes, at most {MAX_REQUEST_ID_BYTES} allowed", id.len()),
        });
    }
    Ok(())
}

fn check_key(limits: &Limits, field: &'static str, key: &[u8]) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::InvalidArgument { field, problem: "must not be empty".into() });
    }
    if key.len() > limits.max_key_bytes {
        return Err(ApiError::OverLimit(format!(
            "{field} is {} bytes, over the limit of {} (--max-key-bytes)",
            key.len(),
            limits.max_key_bytes
        )));
    }
    Ok(())
}

/// A range's start may be one byte longer than a key: the key after the longest one (KEY + 0),
/// where the next page of a range goes on from.
fn check_range_start(limits: &Limits, key: &[u8]) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::InvalidArgument { field: "key", problem: "must not be empty".into() });
    }
    if key.len() > limits.max_key_bytes + 1 {
        return Err(ApiError::OverLimit(format!(
            "key is {} bytes, over the limit of {} for a range's start (--max-key-bytes, and one \
             byte for the key after the longest)",
            key.len(),
            limits.max_key_bytes + 1
        )));
    }
    Ok(())
}

fn check_put(limits: &Limits, req: &PutRequest) -> Result<(), ApiError> {
    check_key(limits, "key", &req.key)?;
    if req.sequential && req.key.len() + crate::fsm::SEQUENCE_DIGITS > limits.max_key_bytes {
        return Err(ApiError::OverLimit(format!(
            "key: a sequential key is the prefix and {} digits, {} bytes, over the limit of {} (--max-key-bytes)",
            crate::fsm::SEQUENCE_DIGITS,
            req.key.len() + crate::fsm::SEQUENCE_DIGITS,
            limits.max_key_bytes
        )));
    }
    if !req.session.is_empty() {
        crate::fsm::sessions::check_id(req.session.as_bytes())
            .map_err(|problem| ApiError::InvalidArgument { field: "session", problem })?;
    }
    if req.value.len() > limits.max_value_bytes {
        return Err(ApiError::OverLimit(format!(
            "value is {} bytes, over the limit of {} (--max-value-bytes)",
            req.value.len(),
            limits.max_value_bytes
        )));
    }
    Ok(())
}

/// Checks every op and compare, and that no branch writes a key twice (`check_writes_once`).
fn check_txn(limits: &Limits, req: &TxnRequest) -> Result<(), ApiError> {
    let ops = req.compare.len() + req.success.len() + req.failure.len();
    if ops > limits.max_txn_ops {
        return Err(ApiError::OverLimit(format!(
            "transaction has {ops} operations (compares and ops), over the limit of {} (--max-txn-ops)",
            limits.max_txn_ops
        )));
    }
    for c in &req.compare {
        // A sequencer compare names no key (its lock is in the sequencer).
        if !matches!(c.target, Some(compare::Target::Sequencer(_))) {
            check_key(limits, "compare.key", &c.key)?;
        }
        if c.target.is_none() {
            return Err(ApiError::InvalidArgument { field: "compare.target", problem: "must be set".into() });
        }
        let result = compare::CompareResult::try_from(c.result).map_err(|_| ApiError::InvalidArgument {
            field: "compare.result",
            problem: format!("{} is not a compare result", c.result),
        })?;
        let sequencer = matches!(c.target, Some(compare::Target::Sequencer(_)));
        if sequencer && !matches!(result, compare::CompareResult::Equal | compare::CompareResult::NotEqual) {
            return Err(ApiError::InvalidArgument {
                field: "compare.result",
                problem: format!(
                    "{} is not a sequencer compare: EQUAL holds while the sequencer holds its lock, NOT_EQUAL once it does not",
                    result.as_str_name()
                ),
            });
        }
    }
    for (branch, ops) in [("success", &req.success), ("failure", &req.failure)] {
        check_writes_once(branch, ops)?;
        for op in ops {
            match &op.request {
                Some(request_op::Request::Range(r)) => {
                    check_key(limits, "range.key", &r.key)?;
                    super::page_limit(r.limit).map_err(|_| ApiError::InvalidArgument {
                        field: "range.limit",
                        problem: format!("{} is negative (0 = no limit)", r.limit),
                    })?;
                    if r.revision != 0 {
                        return Err(ApiError::InvalidArgument {
                            field: "range.revision",
                            problem:
                                "a read at a past revision is not served inside a transaction; use Range"
                                    .into(),
                        });
                    }
                }
                Some(request_op::Request::Put(p)) => check_put(limits, p)?,
                Some(request_op::Request::DeleteRange(d)) => check_key(limits, "delete_range.key", &d.key)?,
                None => {
                    return Err(ApiError::InvalidArgument {
                        field: "txn",
                        problem: format!("an op of {branch} has no request set"),
                    })
                }
            }
        }
    }
    Ok(())
}

/// A branch may write each key once, as etcd requires: no key put twice, and no put of a key a
/// delete of the same branch selects, in either order. Otherwise the outcome would hang on the
/// order of the ops, and one revision would hold two changes of one key (two history rows, two
/// events of one key in one watch response). A sequential put may write any key of its prefix
/// and 20 digits, so a put or delete of such a key beside it is refused too; deletes may overlap
/// each other (what one deletes, the other finds gone).
fn check_writes_once(branch: &str, ops: &[RequestOp]) -> Result<(), ApiError> {
    use std::ops::Bound;
    let twice = |key: &[u8], how: &str| ApiError::InvalidArgument {
        field: "txn",
        problem: format!("{branch} writes key {:?} twice ({how})", String::from_utf8_lossy(key)),
    };
    let (mut puts, mut deletes): (Vec<&PutRequest>, Vec<&DeleteRangeRequest>) = (Vec::new(), Vec::new());
    for o in ops {
        match &o.request {
            Some(request_op::Request::Put(p)) => puts.push(p),
            Some(request_op::Request::DeleteRange(d)) => deletes.push(d),
            _ => {}
        }
    }
    // The keys a sequential put of `prefix` may write, first and last (both included).
    let span = |prefix: &[u8]| {
        let digits = |d: u8| [prefix, &[d; crate::fsm::SEQUENCE_DIGITS]].concat();
        (digits(b'0'), digits(b'9'))
    };
    for (i, p) in puts.iter().enumerate() {
        let (first, last) = if p.sequential { span(&p.key) } else { (p.key.clone(), p.key.clone()) };
        if !p.sequential {
            if puts[..i].iter().any(|q| !q.sequential && q.key == p.key) {
                return Err(twice(&p.key, "two puts"));
            }
            // A sequential put writes its prefix and exactly 20 digits.
            let in_span = |q: &&&PutRequest| {
                q.sequential
                    && p.key.len() == q.key.len() + crate::fsm::SEQUENCE_DIGITS
                    && p.key.starts_with(&q.key)
                    && p.key[q.key.len()..].iter().all(u8::is_ascii_digit)
            };
            if let Some(q) = puts.iter().find(in_span) {
                return Err(ApiError::InvalidArgument {
                    field: "txn",
                    problem: format!(
                        "{branch} puts key {:?}, which its sequential put of prefix {:?} may write",
                        String::from_utf8_lossy(&p.key),
                        String::from_utf8_lossy(&q.key)
                    ),
                });
            }
        }
        for d in &deletes {
            let Some((Bound::Included(from), to)) = crate::fsm::selection(&d.key, &d.range_end) else {
                continue;
            };
            let below_end = match to {
                Bound::Included(to) => first.as_slice() <= to,
                Bound::Excluded(to) => first.as_slice() < to,
                Bound::Unbounded => true,
            };
            if from <= last.as_slice() && below_end {
                return Err(if p.sequential {
                    ApiError::InvalidArgument {
                        field: "txn",
                        problem: format!(
                            "{branch} has a sequential put of prefix {:?} and a delete_range that may select its key",
                            String::from_utf8_lossy(&p.key)
                        ),
                    }
                } else {
                    twice(&p.key, "a put and a delete_range that selects it")
                });
            }
        }
    }
    Ok(())
}
