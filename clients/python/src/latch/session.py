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

A keepalive unanswered after a sixth of the TTL (at least 0.1 s) is sent again beside it, starting
at the next member and giving each member it tries a sixth of the TTL; the first grant counts
(the Rust client's ``keep_alive_hedged``, docs/sessions.md). A member that stopped answering
(SIGSTOPped, cut off) then costs a keepalive that long, not the request timeout, while a link
slower than that still renews through the first attempt.
"""

import enum
import logging
import queue
import threading
import time
from typing import Optional, Set

import grpc

from .client import request_id, seconds
from .errors import LatchError
from .lock import _Turns
from .v1 import session_pb2

#: The longest TTL or grant the client takes a member's word for (a day, past any member's
#: --session-ttl-max, as the Rust client's): a larger answer is not a lease it could keep.
MAX_TTL = 24 * 3600.0
#: The least a keepalive unanswered waits before a second goes out beside it (seconds); else a
#: sixth of the TTL.
MIN_HEDGE_AFTER = 0.1


def _lease_seconds(ms: int) -> float:
    """A TTL or grant a member sent (milliseconds) as seconds: none if negative, at most MAX_TTL."""
    return min(max(ms, 0) / 1000, MAX_TTL)


def _next_keepalive_at(sent: float, granted: float, ttl: float, retry: float, now: float) -> float:
    """When to send the keepalive after one sent at ``sent`` and granted ``granted`` seconds:
    when half the TTL is left of the grant (the leader then renews the lease in its log and
    grants it whole again, so about half the TTL stays in hand through a leader change), or a
    quarter into a grant shorter than that; never sooner than ``retry`` after ``now`` (a grant
    of nothing would have the keepalives sent back to back)."""
    return max(sent + max(granted - ttl / 2, granted / 4), now + retry)


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
        # The calls in flight for the keepalive thread, cancelled when it is stopped.
        self._in_flight: Set[_InFlight] = set()
        #: Set once the session is EXPIRED (gone, lost, or closed).
        self.ended = threading.Event()
        # The session's turns at its lock names: one Lock per name at a time (Session.lock).
        self._turns = _Turns()
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
        response = client._write("session", "Create", request)
        granted = _lease_seconds(response.ttl_ms)
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
        """Stops the keepalives (cancelling any in flight, so that a member that does not
        answer holds nothing up) and ends the session in the cluster (NOT_FOUND ignored: it
        ended already)."""
        self._stop_keepalives()
        try:
            self.client._write("session", "Close", session_pb2.CloseSessionRequest(id=self.id,
                                                                                  request_id=request_id()))
        except LatchError as e:
            if e.code != grpc.StatusCode.NOT_FOUND:
                raise
        finally:
            self._ended()

    def abandon(self) -> None:
        """Stops the keepalives without closing: the cluster expires the session after its
        TTL, as if this process had died (its locks then go through their lock-delay). The
        session counts as EXPIRED here at once: nothing it owns may be acted on any more.
        A keepalive in flight is cancelled."""
        self._stop_keepalives()
        self._ended()

    def _ended(self) -> None:
        """The session is EXPIRED: ``ended`` is set, and no lock of it waits for another's turn
        any more (nothing it held is held)."""
        self.ended.set()
        self._turns.end()

    def _stop_keepalives(self) -> None:
        """Stops the keepalive thread: no more keepalives, those in flight (and the read that
        settles a NOT_FOUND) cancelled; returns once the thread ended."""
        self._stop.set()
        with self._lock:
            in_flight = list(self._in_flight)
        for flight in in_flight:
            flight.cancel()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def lock(self, name: str, *, shared: bool = False, wait: Optional[float] = None,
             lock_delay: Optional[float] = None):
        """Lock ``name`` held by this session, as a context manager that releases it on exit;
        ``wait`` seconds (None: as long as it takes; 0: try once). Raises ``LockNotAcquired``
        when a member answered it not granted in time, a ``LatchError`` when no member answered
        (``Lock.acquire``).

        One ``Lock`` per name per session at a time, as the Rust client's guards (the session
        holds a lock once, and one release ends that hold, whoever asked): while a ``Lock`` of
        this session holds ``name``, this waits until it was released and the release answered,
        and that wait counts against ``wait`` (``LockNotAcquired``, nothing sent, saying so, when
        it runs out; a warning is logged once it lasted some seconds). A thread that holds the
        name's turn and locks it again gets a ``LatchError`` (FAILED_PRECONDITION) at once rather
        than wait for itself. With ``wait=0`` it raises ``LockNotAcquired`` at once whenever the
        turn is held: by a ``Lock``, its release on its way, or the background withdrawal of an
        acquire given up. That withdrawal keeps the session's turn at the name until it settled
        (seconds while the cluster answers; about a minute of retries when it does not) and
        releases a grant it finds, come first, before the next lock of the name goes out, which
        then gets a grant of its own. A release that failed is sent again, and answered, before
        the name is asked for anew (up to the client's retry budget, whatever ``wait``). A
        ``Lock`` dropped unreleased is released in the background when it is collected. Once
        the session ended, this raises a ``LatchError`` (FAILED_PRECONDITION) at once, and so
        does a lock waiting for its turn when it ends.
        """
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
                self._ended()

    def _keep_alive_until_ended(self) -> None:
        retry = min(max(self.ttl / 10, 0.05), 1.0)
        hedge_after = max(self.ttl / 6, MIN_HEDGE_AFTER)
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
                ack = self._keep_alive_hedged(give_up_at, hedge_after)
            except LatchError as e:
                if self._stop.is_set() or self.client.closed:
                    return
                if e.code == grpc.StatusCode.NOT_FOUND and self._gone(give_up_at):
                    return
                next_at = time.monotonic() + retry
                continue
            granted = _lease_seconds(ack.granted_ms)
            with self._lock:
                self._lease_end = max(self._lease_end, sent + granted)
            next_at = _next_keepalive_at(sent, granted, self.ttl, retry, time.monotonic())

    def _keep_alive_hedged(self, until: float, hedge_after: float) -> session_pb2.KeepAliveResponse:
        """One keepalive that waits on no member for long (the Rust client's
        ``keep_alive_hedged``): when none answered within ``hedge_after``, a second goes out
        beside it, starting at the member after the one the first went to and giving each member
        it tries at most ``hedge_after`` (a follower's hint may name the very member that stopped
        answering). The first grant counts; if neither grants, a NOT_FOUND (the session may be
        gone) before the other's failure. When the second is granted first, the first runs on
        (until ``until``, or the session's end cancels it; one such attempt per client at a
        time): a member that was only slow answers it and is taken for the leader again, instead
        of being passed over for a while as if it had stopped answering. Any other attempt still
        going is cancelled."""
        answers: "queue.Queue" = queue.Queue()
        start = self.client._write_start()
        first_target = self.client.target(start)
        # Set once the second is granted: the first, left to run on, stays on its member.
        granted = threading.Event()
        attempts = [self._start_keep_alive(until, None, answers, start, granted)]
        running_on = None
        try:
            try:
                ack, failed = answers.get(timeout=hedge_after)[1:]
            except queue.Empty:
                pass
            else:
                return _granted_or_raise(ack, failed)
            after = self.client._after_unanswered(start, first_target)
            attempts.append(self._start_keep_alive(until, hedge_after, answers, after, granted_sets=granted))
            flight, ack, failed = answers.get()
            if failed is None:
                if flight is attempts[1] and self.client._take_probe():
                    running_on = attempts[0]
                    running_on.when_ended(self.client._end_probe)
                return ack
            ack, last = answers.get()[1:]
            if last is None:
                return ack
            if _code(failed) == grpc.StatusCode.NOT_FOUND and _code(last) != grpc.StatusCode.NOT_FOUND:
                raise failed
            raise last
        finally:
            for attempt in attempts:
                if attempt is not running_on:
                    attempt.cancel()  # the one still going, if any

    def _start_keep_alive(self, until: float, cap: Optional[float], answers: "queue.Queue",
                          start: int, stay: Optional[threading.Event] = None,
                          granted_sets: Optional[threading.Event] = None) -> "_InFlight":
        """Starts one keepalive at member ``start`` (with the client's retries over the members,
        each member given at most ``cap`` when set, and none after ``stay`` is set) on a thread
        of its own; ``(flight, ack, None)`` or ``(flight, None, error)`` goes to ``answers``,
        ``flight`` being what it returns. A grant sets ``granted_sets`` first (the hedge's grant
        stops the first attempt's moving on as soon as it comes)."""
        flight = self._begin()

        def attempt(target, timeout):
            answers_of = target.stub("session").KeepAlive(iter([session_pb2.KeepAliveRequest(id=self.id)]),
                                                          timeout=timeout)
            flight.track(answers_of)
            try:
                for answer in answers_of:
                    return answer, answers_of.initial_metadata()
            finally:
                answers_of.cancel()
            raise _Unanswered()

        def run():
            try:
                ack = self.client._attempts("Session.KeepAlive", attempt, until=until, stop=flight.stop, cap=cap,
                                            write=True, start=start, stay=stay)
                if granted_sets is not None:
                    granted_sets.set()
                answers.put((flight, ack, None))
            except _Unanswered:
                answers.put((flight, None, LatchError(grpc.StatusCode.UNAVAILABLE,
                                                      "the keepalive stream ended without an answer")))
            except BaseException as e:  # noqa: BLE001 - handed to the keepalive thread
                answers.put((flight, None, e))
            finally:
                try:
                    self._end(flight)
                finally:
                    # The client's background attempt is given back however the above ended.
                    flight.ended()

        threading.Thread(target=run, name=f"latch-keepalive-{self.id}", daemon=True).start()
        return flight

    def _begin(self) -> "_InFlight":
        """A call about to go out for the keepalive thread, cancelled by ``_stop_keepalives``
        (at once if that came first)."""
        flight = _InFlight()
        with self._lock:
            self._in_flight.add(flight)
            stopping = self._stop.is_set()
        if stopping:
            flight.cancel()
        return flight

    def _end(self, flight: "_InFlight") -> None:
        with self._lock:
            self._in_flight.discard(flight)

    def _gone(self, until: float) -> bool:
        """Whether a linearizable read confirms the session is gone (a deposed leader may say
        NOT_FOUND of a session it has not heard of yet)."""
        flight = self._begin()

        def attempt(target, timeout):
            call = target.stub("session").Get.future(session_pb2.GetSessionRequest(id=self.id), timeout=timeout)
            flight.track(call)
            try:
                return call.result(), call.initial_metadata()
            except grpc.FutureCancelledError:
                raise LatchError(grpc.StatusCode.CANCELLED, "session.Get: stopped", target.addr) from None

        try:
            self.client._attempts("session.Get", attempt, until=until, stop=flight.stop)
            return False
        except LatchError as e:
            return e.code == grpc.StatusCode.NOT_FOUND
        finally:
            self._end(flight)


class _InFlight:
    """The call one attempt (with its retries) has in flight, and the event that ends its
    retries: ``cancel()`` sets it and cancels the call, whichever comes first."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._call = None
        self._ended = False
        self._on_end = None

    def when_ended(self, callback) -> None:
        """Calls ``callback`` once the attempt ended (at once if it has)."""
        with self._lock:
            ended = self._ended
            if not ended:
                self._on_end = callback
        if ended:
            callback()

    def ended(self) -> None:
        """The attempt (with its retries) is over."""
        with self._lock:
            self._ended, callback = True, self._on_end
        if callback is not None:
            callback()

    def track(self, call) -> None:
        """The call now in flight (cancelled at once if ``cancel()`` came first)."""
        with self._lock:
            self._call = call
            cancelled = self.stop.is_set()
        if cancelled:
            call.cancel()

    def cancel(self) -> None:
        self.stop.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()


def _code(error: BaseException):
    return getattr(error, "code", None)


def _granted_or_raise(ack, failed):
    if failed is not None:
        raise failed
    return ack


class _Unanswered(Exception):
    pass
