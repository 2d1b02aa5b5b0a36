"""Sessions: Chubby's sessions, etcd's leases, kept alive by a background thread.

How sure the client can be that its session lives: every keepalive the leader acknowledges
grants a lease counted from when the keepalive was sent, and the cluster does not expire the
session before it runs out. The client keeps that lease on its own clock (``lease_left()``):

- ``SessionState.SAFE``: the lease has more than a third of the TTL left.
- ``SessionState.JEOPARDY``: keepalives are failing and less than a third is left. Once
  ``lease_left()`` is 0 the cluster may have expired the session: whoever acts on what it owns
  (a lock) must stop. The thread keeps trying for ``grace`` past the lease; an answer within it
  makes the session SAFE again.
- ``SessionState.EXPIRED``: the cluster said the session is gone, or the grace passed without an
  answer, or it was closed. Final.
"""

import enum
import logging
import threading
import time
from typing import Optional

import grpc

from .client import request_id, seconds
from .errors import LatchError
from .v1 import session_pb2


class SessionState(enum.Enum):
    SAFE = "safe"
    JEOPARDY = "jeopardy"
    EXPIRED = "expired"


class Session:
    """A session and the thread that keeps it alive. ``with client.session(10) as s: ...``
    closes it on exit (deleting its ephemeral keys, releasing its locks). Close it, or abandon
    it: the thread holds it, so a session dropped without either lives as long as the process
    keeps it alive (as etcd's leases with a keepalive do)."""

    def __init__(self, client, session_id: str, ttl: float, lease_end: float, grace: float):
        self.client = client
        self.id = session_id
        self.ttl = ttl
        self.grace = grace
        self._lease_end = lease_end
        self._lock = threading.Lock()
        self._stop = threading.Event()
        #: Set once the session is EXPIRED (gone, lost, or closed).
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._keep_alive_loop, name=f"latch-session-{session_id}",
                                        daemon=True)
        self._thread.start()

    @classmethod
    def create(cls, client, ttl: float, *, name: str = "", grace: Optional[float] = None) -> "Session":
        if seconds(ttl, "ttl") == 0:
            raise ValueError("ttl: 0 s; a session needs a positive TTL")
        seconds(grace, "grace", none_ok=True)
        request = session_pb2.CreateSessionRequest(ttl_ms=round(ttl * 1000), name=name,
                                                   request_id=request_id())
        sent = time.monotonic()
        response = client._call("session", "Create", request)
        granted = response.ttl_ms / 1000
        return cls(client, response.id, granted, sent + granted, granted if grace is None else grace)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Session({self.id!r}, ttl={self.ttl}, state={self.state.value})"

    def lease_left(self) -> float:
        """Seconds of the last granted lease left on this client's clock (0 when run out)."""
        with self._lock:
            return max(0.0, self._lease_end - time.monotonic())

    @property
    def state(self) -> SessionState:
        if self.ended.is_set():
            return SessionState.EXPIRED
        return SessionState.JEOPARDY if self.lease_left() < self.ttl / 3 else SessionState.SAFE

    def close(self) -> None:
        """Stops the keepalives and ends the session in the cluster (NOT_FOUND ignored: it
        ended already)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        try:
            self.client._call("session", "Close", session_pb2.CloseSessionRequest(id=self.id,
                                                                                  request_id=request_id()))
        except LatchError as e:
            if e.code != grpc.StatusCode.NOT_FOUND:
                raise
        finally:
            self.ended.set()

    def abandon(self) -> None:
        """Stops the keepalives without closing: the cluster expires the session after its
        TTL, as if this process had died (its locks then go through their lock-delay). The
        session counts as EXPIRED here at once: nothing it owns may be acted on any more."""
        self._stop.set()
        self._thread.join()
        self.ended.set()

    def lock(self, name: str, *, shared: bool = False, wait: Optional[float] = None,
             lock_delay: Optional[float] = None):
        """Lock ``name`` held by this session, as a context manager that releases it on exit;
        ``wait`` seconds (None: as long as it takes; 0: try once). Raises ``LockNotAcquired``
        when not granted in time."""
        from .lock import Lock

        return Lock.acquire(self, name, shared=shared, wait=wait, lock_delay=lock_delay)

    # -- the keepalive thread -------------------------------------------------------------------

    def _keep_alive_loop(self) -> None:
        """Until stopped, or the session is gone or lost; then EXPIRED, whatever ended it."""
        try:
            self._keep_alive_until_ended()
        except Exception as e:  # noqa: BLE001 - a thread has no caller to raise to
            logging.getLogger(__name__).warning("session %s: keepalives stopped: %r", self.id, e)
        finally:
            if not self._stop.is_set():
                self.ended.set()

    def _keep_alive_until_ended(self) -> None:
        retry = min(max(self.ttl / 10, 0.05), 1.0)
        with self._lock:
            # Half the TTL into the lease, which counts from before the Create was sent.
            next_at = min(time.monotonic() + self.ttl / 2, self._lease_end - self.ttl / 2)
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            with self._lock:
                give_up_at = self._lease_end + self.grace
            sent = time.monotonic()
            if sent >= give_up_at:
                return
            try:
                ack = self._keep_alive_once(give_up_at)
            except LatchError as e:
                if self._stop.is_set() or self.client.closed:
                    return
                if e.code == grpc.StatusCode.NOT_FOUND and self._gone(give_up_at):
                    return
                next_at = time.monotonic() + retry
                continue
            granted = ack.granted_ms / 1000
            with self._lock:
                self._lease_end = max(self._lease_end, sent + granted)
            # When half the TTL is left of the grant: the leader then renews the lease in its log
            # and grants it whole again, so about half the TTL stays in hand through a leader change.
            next_at = sent + max(granted - self.ttl / 2, granted / 4)

    def _keep_alive_once(self, until: float) -> session_pb2.KeepAliveResponse:
        def attempt(target, timeout):
            answers = target.stub("session").KeepAlive(iter([session_pb2.KeepAliveRequest(id=self.id)]),
                                                       timeout=timeout)
            try:
                for answer in answers:
                    return answer
            finally:
                answers.cancel()
            raise _Unanswered()

        try:
            return self.client._attempts("Session.KeepAlive", attempt, until=until, stop=self._stop)
        except _Unanswered:
            raise LatchError(grpc.StatusCode.UNAVAILABLE, "the keepalive stream ended without an answer")

    def _gone(self, until: float) -> bool:
        """Whether a linearizable read confirms the session is gone (a deposed leader may say
        NOT_FOUND of a session it has not heard of yet)."""
        try:
            self.client._call("session", "Get", session_pb2.GetSessionRequest(id=self.id), until=until,
                              stop=self._stop)
            return False
        except LatchError as e:
            return e.code == grpc.StatusCode.NOT_FOUND


class _Unanswered(Exception):
    pass
