//! The key-value calls, the cluster status and a member's replacement, as methods of [`Client`].

use crate::client::Channel;
use latch_proto::v1::{
    cluster_client::ClusterClient, kv_client::KvClient, AddMemberRequest, AddMemberResponse,
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, KeyValue, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RemoveMemberRequest, RemoveMemberResponse,
    ReplaceMemberRequest, ReplaceMemberResponse, StatusRequest, StatusResponse, TxnRequest, TxnResponse,
};

use crate::{prefix_range, Client, Error};
use tonic::Code;

/// A KV stub on `channel`. Answers may be large (a range of many 1 MiB values): the client
/// accepts what the server chose to send.
fn kv(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel).max_decoding_message_size(usize::MAX)
}

/// Gives a write its request id, if the caller did not, before the first attempt: every retry
/// then carries the same id and the server applies the write at most once. A UUIDv7 is
/// time-ordered, so the server's table of remembered ids grows at one end (few pages rewritten
/// per commit) rather than at random places.
fn ensure_request_id(id: &mut String) {
    if id.is_empty() {
        *id = uuid::Uuid::now_v7().to_string();
    }
}

impl Client {
    /// Sets `key` to `value`.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<PutResponse, Error> {
        self.put_request(PutRequest { key: key.into(), value: value.into(), ..Default::default() }).await
    }

    /// Sends this put as it is (e.g. with `prev_kv`), with a fresh request id if it has none.
    pub async fn put_request(&self, mut request: PutRequest) -> Result<PutResponse, Error> {
        ensure_request_id(&mut request.request_id);
        self.write("Put", |channel| {
            let request = request.clone();
            async move { kv(channel).put(request).await }
        })
        .await
    }

    /// The current kv of `key`, or `None` if it does not exist. Linearizable.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>, Error> {
        let response = self.range(RangeRequest { key: key.into(), ..Default::default() }).await?;
        Ok(response.kvs.into_iter().next())
    }

    /// Every kv whose key starts with `prefix` (the empty prefix: every key), in key order, as
    /// of one revision, however many answers that takes ([`range_all`](Client::range_all)).
    /// Linearizable. For a limit, a count or the revision read at, use
    /// [`range_all`](Client::range_all).
    pub async fn get_prefix(&self, prefix: impl Into<Vec<u8>>) -> Result<Vec<KeyValue>, Error> {
        let (key, range_end) = prefix_range(&prefix.into());
        let response = self.range_all(RangeRequest { key, range_end, ..Default::default() }).await?;
        Ok(response.kvs)
    }

    /// Reads every kv this request selects, up to its `limit` (0: no limit): a member answers
    /// at most `--max-response-bytes` at a time and says `more`, so the rest is read page by
    /// page, each from the key after the last so far and at the revision the first page was
    /// read at (the request's own, or the one it answered at), so that the kvs are one
    /// revision's. `more` then says only whether keys past the limit match; `count` and the
    /// header are the first page's. Fails OUT_OF_RANGE if that revision is compacted between
    /// two pages. A serializable page that reaches a member behind that revision (after a
    /// failover) is asked again linearizably.
    pub async fn range_all(&self, mut request: RangeRequest) -> Result<RangeResponse, Error> {
        let mut response = self.range(request.clone()).await?;
        let limit = request.limit;
        if request.revision == 0 {
            request.revision = response.header.as_ref().map_or(0, |h| h.revision);
        }
        while response.more && !request.count_only && (limit == 0 || (response.kvs.len() as i64) < limit) {
            // A page always holds its first kv, so each one moves the start on. (A member takes
            // a range's start one byte longer than a key: the key after the longest.)
            let Some(last) = response.kvs.last() else { break };
            request.key = [last.key.as_slice(), &[0]].concat();
            if limit > 0 {
                request.limit = limit - response.kvs.len() as i64;
            }
            let page = match self.range(request.clone()).await {
                Err(e)
                    if request.serializable
                        && e.code() == Code::OutOfRange
                        && e.compact_revision().is_none() =>
                {
                    self.range(RangeRequest { serializable: false, ..request.clone() }).await?
                }
                page => page?,
            };
            response.more = page.more;
            response.kvs.extend(page.kvs);
        }
        Ok(response)
    }

    /// Reads the keys this request selects (one key, a prefix, or `[key, range_end)`).
    ///
    /// A serializable read sees at least this client's own acknowledged writes (keys,
    /// sessions, locks, registrations): writes go to the leader while reads stay where they
    /// are ([`ClientOptions::writes_to_leader`](crate::ClientOptions::writes_to_leader)), so
    /// a member that answers below the client's last write is asked again, linearizably. A
    /// read at a past revision up to that write is asked linearizably from the start (a member
    /// behind it would refuse the revision as one it has not reached).
    pub async fn range(&self, mut request: RangeRequest) -> Result<RangeResponse, Error> {
        if request.serializable && request.revision > 0 && request.revision <= self.written() {
            request.serializable = false;
        }
        let read = |request: RangeRequest| {
            self.call("Range", move |channel| {
                let request = request.clone();
                async move { kv(channel).range(request).await }
            })
        };
        let response = read(request.clone()).await?;
        if !self.behind_own_writes(request.serializable, response.header.as_ref()) {
            return Ok(response);
        }
        request.serializable = false;
        read(request).await
    }

    /// Forgets the history at and below `revision`: reads and watches from there on fail
    /// OUT_OF_RANGE ([`Error::compact_revision`](crate::Error::compact_revision) names it).
    /// Compacting at or below the compact revision in force fails the same way.
    pub async fn compact(&self, revision: i64) -> Result<CompactionResponse, Error> {
        let mut request = CompactionRequest { revision, request_id: String::new() };
        ensure_request_id(&mut request.request_id);
        self.write("Compact", |channel| {
            let request = request.clone();
            async move { kv(channel).compact(request).await }
        })
        .await
    }

    /// Deletes `key`; returns how many keys were deleted (0 or 1).
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<i64, Error> {
        let response =
            self.delete_range(DeleteRangeRequest { key: key.into(), ..Default::default() }).await?;
        Ok(response.deleted)
    }

    /// Deletes every key starting with `prefix` (the empty prefix: every key); returns how many
    /// were deleted.
    pub async fn delete_prefix(&self, prefix: impl Into<Vec<u8>>) -> Result<i64, Error> {
        let (key, range_end) = prefix_range(&prefix.into());
        let response = self.delete_range(DeleteRangeRequest { key, range_end, ..Default::default() }).await?;
        Ok(response.deleted)
    }

    /// Sends this delete as it is, with a fresh request id if it has none.
    pub async fn delete_range(&self, mut request: DeleteRangeRequest) -> Result<DeleteRangeResponse, Error> {
        ensure_request_id(&mut request.request_id);
        self.write("DeleteRange", |channel| {
            let request = request.clone();
            async move { kv(channel).delete_range(request).await }
        })
        .await
    }

    /// Runs a transaction — a [`Txn`](crate::Txn) or a raw `TxnRequest` — with a fresh request
    /// id if it has none. `succeeded` tells which branch ran.
    pub async fn txn(&self, request: impl Into<TxnRequest>) -> Result<TxnResponse, Error> {
        let mut request = request.into();
        ensure_request_id(&mut request.request_id);
        self.write("Txn", |channel| {
            let request = request.clone();
            async move { kv(channel).txn(request).await }
        })
        .await
    }

    /// The cluster as the answering member sees it: leader, term, and every member with its
    /// addresses, role, applied index, build and cluster version.
    pub async fn cluster_status(&self) -> Result<StatusResponse, Error> {
        // The member asks the others within the deadline each attempt tells it (`Stamp`), so
        // that one that does not answer is shown unreachable in time.
        self.call(
            "Status",
            |channel| async move { ClusterClient::new(channel).status(StatusRequest {}).await },
        )
        .await
    }

    /// Replaces `member`, which lost its data dir and is stopped: the leader makes it a learner,
    /// so that it may start again on an empty data dir, catch up and vote again (`Cluster.ReplaceMember`). Returns the raft log index of the change (0: it
    /// was a learner already); safe to retry.
    pub async fn replace_member(&self, member: u64) -> Result<ReplaceMemberResponse, Error> {
        self.write("ReplaceMember", |channel| async move {
            ClusterClient::new(channel).replace_member(ReplaceMemberRequest { member }).await
        })
        .await
    }

    /// Adds `member` to the cluster as a learner at `peer_addr` (`Cluster.AddMember`): it is
    /// then started with the answer's `initial_cluster` (and token, and `peers` as `--peers`
    /// when not empty), its id and `--peer-addr`, catches up, and votes once it has. Returns the
    /// raft log index of the change (0: added already at that address); safe to retry.
    pub async fn add_member(&self, member: u64, peer_addr: &str) -> Result<AddMemberResponse, Error> {
        let peer_addr = peer_addr.to_string();
        self.write("AddMember", |channel| {
            let peer_addr = peer_addr.clone();
            async move { ClusterClient::new(channel).add_member(AddMemberRequest { member, peer_addr }).await }
        })
        .await
    }

    /// Removes `member` from the cluster for good, running or not (`Cluster.RemoveMember`): its
    /// peers drop its messages and it stops. Returns the raft log index of the change (0: it was
    /// removed already); safe to retry. A leader asked to remove itself hands leadership over
    /// first and answers UNAVAILABLE, which this retries.
    pub async fn remove_member(&self, member: u64) -> Result<RemoveMemberResponse, Error> {
        self.write("RemoveMember", |channel| async move {
            ClusterClient::new(channel).remove_member(RemoveMemberRequest { member }).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_request_id_is_filled_and_a_given_one_kept() {
        let mut id = String::new();
        ensure_request_id(&mut id);
        assert_eq!(
            uuid::Uuid::parse_str(&id).map(|u| u.get_version_num()),
            Ok(7),
            "a time-ordered UUIDv7 is expected"
        );
        let mut given = "mine".to_string();
        ensure_request_id(&mut given);
        assert_eq!(given, "mine");
    }
}
