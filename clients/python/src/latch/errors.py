"""Every failure of a call: the gRPC code, the server's message, and where it happened."""

from typing import Optional

import grpc

#: Trailing metadata of a read or watch refused because its revision is compacted.
COMPACT_REVISION_METADATA = "latch-compact-revision"
#: Trailing metadata of a write that was applied but whose answer's data the server no longer
#: holds (FAILED_PRECONDITION "was applied"): a retry whose first attempt's answer was lost, or a
#: write the member fell too far behind to carry the answer of. Its revision, and for a
#: transaction which branch ran.
APPLIED_REVISION_METADATA = "latch-applied-revision"
TXN_SUCCEEDED_METADATA = "latch-txn-succeeded"
#: Trailing metadata (``true``) of a member's own RESOURCE_EXHAUSTED: the request was over one of
#: its limits and nothing was queued or changed (without it, the code may come from the transport).
OVER_LIMIT_METADATA = "latch-over-limit"
#: Trailing metadata (``true``) of a write's failure after which it may still take effect: the
#: member could not commit it before the call's deadline, and it stays proposed.
UNSETTLED_METADATA = "latch-unsettled"
#: Trailing metadata (``true``) of a member's refusal of a write it applied: the request id's
#: outcome, which every attempt of the write meets. A refusal without it (made before proposing,
#: on the member's own limits, or no member's) leaves another attempt free to take effect.
SETTLED_METADATA = "latch-settled"
#: Trailing metadata naming the cluster of the member that answered.
_CLUSTER_ID_METADATA = "latch-cluster-id"


class LatchError(Exception):
    """A call that failed. ``code`` is the ``grpc.StatusCode``; ``message`` is the server's
    words (or, for a failure of the connection, the transport's); ``endpoint`` the member that
    answered last."""

    def __init__(self, code: grpc.StatusCode, message: str, endpoint: str = "",
                 compact_revision: Optional[int] = None, applied_revision: Optional[int] = None,
                 txn_succeeded: Optional[bool] = None, over_limit: bool = False):
        self.code = code
        self.message = message
        self.endpoint = endpoint
        #: For OUT_OF_RANGE (a compacted revision): the compact revision, above which the
        #: history still is.
        self.compact_revision = compact_revision
        #: For a write that WAS applied (at this revision) although its answer's data
        #: (``prev_kv``, a transaction's reads) is not there: a retry after a lost answer (the
        #: server does not keep such data), or, on a first attempt too, a member with too many
        #: answers on their way to hold this one's data. Do not send it again; read what it
        #: needs. ``txn_succeeded``: which branch ran.
        self.applied_revision = applied_revision
        self.txn_succeeded = txn_succeeded
        #: RESOURCE_EXHAUSTED marked by the member as over one of its limits: nothing queued or
        #: changed (not set on a write's refusal after another of its attempts went unanswered:
        #: that one may still take effect, ``unsettled``).
        self.over_limit = over_limit and code == grpc.StatusCode.RESOURCE_EXHAUSTED
        #: A write may still take effect after this failure, or after one of the call's earlier
        #: attempts: unanswered in time, cut off after the request went out, or answered by a
        #: member that could not commit it in time (``UNSETTLED_METADATA``).
        self.unsettled = code == grpc.StatusCode.DEADLINE_EXCEEDED
        where = f" (at {endpoint})" if endpoint else ""
        super().__init__(f"{code.name}: {message}{where}")

    @classmethod
    def from_rpc(cls, error: grpc.RpcError, endpoint: str) -> "LatchError":
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        succeeded = trailing(error, TXN_SUCCEEDED_METADATA)
        failed = cls(code or grpc.StatusCode.UNKNOWN, details or "", endpoint,
                     _int(trailing(error, COMPACT_REVISION_METADATA)), _int(trailing(error, APPLIED_REVISION_METADATA)),
                     None if succeeded is None else succeeded == "true",
                     trailing(error, OVER_LIMIT_METADATA) == "true")
        # A connection lost after the request went out (no member's answer, and not one never
        # made) leaves it as unsettled as a timeout does.
        cut = (code == grpc.StatusCode.UNAVAILABLE and trailing(error, _CLUSTER_ID_METADATA) is None
               and "failed to connect" not in (details or "").lower())
        failed.unsettled = failed.unsettled or cut or trailing(error, UNSETTLED_METADATA) == "true"
        return failed

    @property
    def already_applied(self) -> bool:
        """The write was applied, its answer's data not kept (see ``applied_revision``)."""
        return self.applied_revision is not None


def _int(text: Optional[str]) -> Optional[int]:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def trailing(error: grpc.RpcError, key: str) -> Optional[str]:
    """A trailing metadata value of a failed call, if the server sent it."""
    try:
        metadata = error.trailing_metadata() or ()
    except Exception:  # a failure made locally may carry none
        return None
    for k, v in metadata:
        if k == key:
            return v.decode() if isinstance(v, bytes) else v
    return None
