//! The KV API edge: `latch.v1` requests to the log's internal commands, and the fsm's internal
//! results to `latch.v1` responses. Nothing else converts between the two, so the public API and
//! the on-disk format change independently.

use latch_proto::internal as log;
use latch_proto::v1;

use crate::api::{lock, ApiError};

pub(super) fn range(r: &v1::RangeRequest) -> log::Range {
    log::Range {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        limit: r.limit,
        keys_only: r.keys_only,
        count_only: r.count_only,
        revision: r.revision,
    }
}

pub(super) fn put(p: v1::PutRequest) -> log::Put {
    log::Put { key: p.key, value: p.value, prev_kv: p.prev_kv, session: p.session, sequential: p.sequential }
}

pub(super) fn delete_range(d: v1::DeleteRangeRequest) -> log::DeleteRange {
    log::DeleteRange { key: d.key, range_end: d.range_end, prev_kv: d.prev_kv }
}

/// A txn; a sequencer compare must be of this cluster (`cluster_id`).
pub(super) fn txn(t: v1::TxnRequest, cluster_id: u64) -> Result<log::Txn, ApiError> {
    let ops = |ops: Vec<v1::RequestOp>| ops.into_iter().map(op).collect();
    let compare = t.compare.into_iter().map(|c| compare(c, cluster_id)).collect::<Result<_, _>>()?;
    Ok(log::Txn { compare, success: ops(t.success), failure: ops(t.failure) })
}

fn compare(c: v1::Compare, cluster_id: u64) -> Result<log::Compare, ApiError> {
    use log::compare::Target as L;
    use v1::compare::Target as V;
    let target = match c.target {
        None => None,
        Some(V::Value(v)) => Some(L::Value(v)),
        Some(V::Version(n)) => Some(L::Version(n)),
        Some(V::CreateRevision(n)) => Some(L::CreateRevision(n)),
        Some(V::ModRevision(n)) => Some(L::ModRevision(n)),
        Some(V::Session(s)) => Some(L::Session(s)),
        Some(V::Sequencer(token)) => {
            Some(L::Sequencer(lock::sequencer_of(&token, cluster_id, "compare.sequencer")?))
        }
    };
    // The two enums number their results alike (EQUAL 0, GREATER 1, LESS 2, NOT_EQUAL 3); an
    // unknown number is passed on for the fsm to reject by name.
    let result = match v1::compare::CompareResult::try_from(c.result) {
        Ok(v1::compare::CompareResult::Equal) => log::compare::Result::Equal as i32,
        Ok(v1::compare::CompareResult::Greater) => log::compare::Result::Greater as i32,
        Ok(v1::compare::CompareResult::Less) => log::compare::Result::Less as i32,
        Ok(v1::compare::CompareResult::NotEqual) => log::compare::Result::NotEqual as i32,
        Err(_) => c.result,
    };
    Ok(log::Compare { result, key: c.key, target })
}

fn op(o: v1::RequestOp) -> log::Op {
    let op = o.request.map(|r| match r {
        v1::request_op::Request::Range(r) => log::op::Op::Range(range(&r)),
        v1::request_op::Request::Put(p) => log::op::Op::Put(put(p)),
        v1::request_op::Request::DeleteRange(d) => log::op::Op::DeleteRange(delete_range(d)),
    });
    log::Op { op }
}

pub(in crate::api) fn key_value(kv: log::KeyValue) -> v1::KeyValue {
    v1::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        session: kv.session,
    }
}

pub(super) fn range_response(r: log::RangeResult, header: v1::ResponseHeader) -> v1::RangeResponse {
    v1::RangeResponse {
        header: Some(header),
        kvs: r.kvs.into_iter().map(key_value).collect(),
        more: r.more,
        count: r.count,
    }
}

pub(super) fn put_response(r: log::PutResult, header: v1::ResponseHeader) -> v1::PutResponse {
    v1::PutResponse { header: Some(header), prev_kv: r.prev_kv.map(key_value), key: r.key }
}

pub(super) fn delete_response(r: log::DeleteResult, header: v1::ResponseHeader) -> v1::DeleteRangeResponse {
    v1::DeleteRangeResponse {
        header: Some(header),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(key_value).collect(),
    }
}

/// A txn's response; every op's response carries the txn's header.
pub(super) fn txn_response(r: log::TxnResult, header: v1::ResponseHeader) -> v1::TxnResponse {
    let responses = r
        .results
        .into_iter()
        .filter_map(|o| {
            let h = header;
            let response = match o.result? {
                log::op_result::Result::Range(r) => v1::response_op::Response::Range(range_response(r, h)),
                log::op_result::Result::Put(p) => v1::response_op::Response::Put(put_response(p, h)),
                log::op_result::Result::DeleteRange(d) => {
                    v1::response_op::Response::DeleteRange(delete_response(d, h))
                }
            };
            Some(v1::ResponseOp { response: Some(response) })
        })
        .collect();
    v1::TxnResponse { header: Some(header), succeeded: r.succeeded, responses }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_results_keep_their_meaning_across_the_edge() {
        for (v, l) in [
            (v1::compare::CompareResult::Equal, log::compare::Result::Equal),
            (v1::compare::CompareResult::Greater, log::compare::Result::Greater),
            (v1::compare::CompareResult::Less, log::compare::Result::Less),
            (v1::compare::CompareResult::NotEqual, log::compare::Result::NotEqual),
        ] {
            let c = compare(v1::Compare { result: v as i32, key: b"k".to_vec(), target: None }, 1)
                .expect("converts");
            assert_eq!(c.result, l as i32, "{v:?} should become {l:?}");
        }
    }

    #[test]
    fn a_txn_keeps_its_compares_and_ops_in_order() {
        let t = v1::TxnRequest {
            compare: vec![v1::Compare {
                result: v1::compare::CompareResult::Less as i32,
                key: b"a".to_vec(),
                target: Some(v1::compare::Target::ModRevision(7)),
            }],
            success: vec![
                v1::RequestOp {
                    request: Some(v1::request_op::Request::Put(v1::PutRequest {
                        key: b"p".to_vec(),
                        ..Default::default()
                    })),
                },
                v1::RequestOp {
                    request: Some(v1::request_op::Request::Range(v1::RangeRequest {
                        key: b"r".to_vec(),
                        limit: 3,
                        ..Default::default()
                    })),
                },
            ],
            failure: vec![v1::RequestOp { request: None }],
            request_id: "ignored".into(),
        };
        let l = txn(t, 1).expect("converts");
        assert_eq!(l.compare[0].target, Some(log::compare::Target::ModRevision(7)));
        assert!(matches!(&l.success[0].op, Some(log::op::Op::Put(p)) if p.key == b"p"));
        assert!(matches!(&l.success[1].op, Some(log::op::Op::Range(r)) if r.limit == 3));
        assert_eq!(l.failure[0].op, None, "an empty op stays empty, for the fsm to reject by name");
    }
}
