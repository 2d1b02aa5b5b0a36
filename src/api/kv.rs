//! The KV service: Range, Put, DeleteRange, Txn, Compact.
//!
//! Writes are proposed as a `Command` and answered with the outcome the fsm produced (the same
//! one on a retry of the request id). Reads are linearizable through ReadIndex unless the
//! request asks for `serializable`; either way they are served from this member's applied state.
//! A read at a past revision scans the history after it: it runs off the async runtime, a few at
//! a time (`past`).

pub(super) mod convert;
mod past;

use latch_proto::internal::{command::Body, outcome};
use latch_proto::v1::kv_server::{Kv, KvServer};
use latch_proto::v1::{request_op, *};
use prost::Message as _;
use tonic::{Request, Response, Status};

use super::{ApiError, Context};
use crate::config::Limits;
use crate::fsm::history::RevisionError;

pub struct KvService {
    ctx: Context,
    /// The member's slots for reads at a past revision (one service per member).
    past: past::PastReads,
}

impl KvService {
    pub fn server(ctx: Context) -> KvServer<KvService> {
        let max = ctx.limits.max_request_bytes * 2 + 64 * 1024;
        let past = past::PastReads::new(ctx.limits.max_past_reads);
        KvServer::new(KvService { ctx, past })
            .max_decoding_message_size(max)
            .max_encoding_message_size(usize::MAX)
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
            check_key(&self.ctx.limits, "key", &req.key)?;
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
            let (revision, result) = if current {
                crate::fsm::range(&txn, &convert::range(&req), max)?
            } else {
                drop(txn);
                self.past.range(self.ctx.node.db().clone(), convert::range(&req), max).await?
            };
            Ok(convert::range_response(result, self.ctx.header(revision)))
        };
        run.await.map(Response::new).map_err(|e| self.ctx.to_status(e))
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
        run.await.map(Response::new).map_err(|e| self.ctx.to_status(e))
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
        run.await.map(Response::new).map_err(|e| self.ctx.to_status(e))
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
                let read = self.ctx.node.db().begin_read()?;
                return match crate::fsm::read_txn(&read, &txn, max)? {
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
        run.await.map(Response::new).map_err(|e| self.ctx.to_status(e))
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
        run.await.map(Response::new).map_err(|e| self.ctx.to_status(e))
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
/// and 20 digits; deletes may overlap each other (what one deletes, the other finds gone).
fn check_writes_once(branch: &str, ops: &[RequestOp]) -> Result<(), ApiError> {
    use std::ops::Bound;
    let twice = |key: &[u8], how: &str| ApiError::InvalidArgument {
        field: "txn",
        problem: format!("{branch} writes key {:?} twice ({how})", String::from_utf8_lossy(key)),
    };
    let deletes: Vec<&DeleteRangeRequest> = ops
        .iter()
        .filter_map(|o| match &o.request {
            Some(request_op::Request::DeleteRange(d)) => Some(d),
            _ => None,
        })
        .collect();
    let mut put: Vec<&[u8]> = Vec::new();
    for o in ops {
        let Some(request_op::Request::Put(p)) = &o.request else { continue };
        // The keys this put may write, first and last (both included).
        let (first, last) = if p.sequential {
            let digits = |d: u8| [p.key.as_slice(), &[d; crate::fsm::SEQUENCE_DIGITS]].concat();
            (digits(b'0'), digits(b'9'))
        } else {
            if put.contains(&p.key.as_slice()) {
                return Err(twice(&p.key, "two puts"));
            }
            put.push(&p.key);
            (p.key.clone(), p.key.clone())
        };
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
