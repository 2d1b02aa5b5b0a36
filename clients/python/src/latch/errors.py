"""Every failure of a call: the gRPC code, the server's message, and where it happened."""

from typing import Optional

import grpc

#: Trailing metadata of a read or watch refused because its revision is compacted.
COMPACT_REVISION_METADATA = "latch-compact-revision"


class LatchError(Exception):
    """A call that failed. ``code`` is the ``grpc.StatusCode``; ``message`` is the server's
    words (or, for a failure of the connection, the transport's); ``endpoint`` the member that
    answered last."""

    def __init__(self, code: grpc.StatusCode, message: str, endpoint: str = "",
                 compact_revision: Optional[int] = None):
        self.code = code
        self.message = message
        self.endpoint = endpoint
        #: For OUT_OF_RANGE (a compacted revision): the compact revision, above which the
        #: history still is.
        self.compact_revision = compact_revision
        where = f" (at {endpoint})" if endpoint else ""
        super().__init__(f"{code.name}: {message}{where}")

    @classmethod
    def from_rpc(cls, error: grpc.RpcError, endpoint: str) -> "LatchError":
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        compacted = trailing(error, COMPACT_REVISION_METADATA)
        try:
            compact_revision = int(compacted) if compacted else None
        except ValueError:
            compact_revision = None
        return cls(code or grpc.StatusCode.UNKNOWN, details or "", endpoint, compact_revision)


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
