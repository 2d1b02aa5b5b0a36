"""Locks with fencing sequencers, and a sequencer's string form.

A grant's sequencer names the lock, the mode, the holding session and a generation that strictly
increases per lock name for the life of the cluster. Hand its token to whatever the holder
writes to, and have that check it (``Client.check_sequencer``, a transaction's
``Compare.sequencer_valid``, or a larger-generation-wins rule): a paused ex-holder then cannot
write after its session ended.

A session holds a lock once, however many of its ``Lock``\ s ask for it: the server answers a
session that holds already with the same hold (re-entrant), and one release ends it. So a
``Session`` hands out one ``Lock`` per name at a time, as the Rust client's ``Session::lock``
its guards: a second ``Session.lock`` of the name waits for the session's *turn* at the name,
which the first ``Lock`` holds until its release was answered (``_Turns``). Otherwise releasing
one ``Lock`` would release what another (or the next turn of a loop) believes it holds.
"""

import logging
import threading
import time
import weakref
from typing import Dict, Optional

import grpc

from .client import seconds
from .errors import LatchError
from .v1 import lock_pb2

_log = logging.getLogger(__name__)

#: Seconds a ``Session.lock`` waits for its session's turn at a name before it logs a warning.
TURN_WAIT_WARNING = 5.0

_PREFIX = "latch1"
_KINDS = {"LX": (False, lock_pb2.EXCLUSIVE), "LS": (False, lock_pb2.SHARED),
          "EX": (True, lock_pb2.EXCLUSIVE), "ES": (True, lock_pb2.SHARED)}


class LockNotAcquired(Exception):
    """A lock not granted within the time allowed: a member answered it busy, or
    (``waited_for_turn``) the time ran out waiting for the session's turn at the name, held by
    another ``Lock`` of the session or the background withdrawal of an acquire given up, and
    nothing was sent."""

    def __init__(self, name: str, wait: Optional[float], *, waited_for_turn: bool = False):
        self.name = name
        self.wait = wait
        self.waited_for_turn = waited_for_turn
        if waited_for_turn:
            super().__init__(f"lock {name!r} was not granted within {wait} s: the session's turn at the name "
                             f"did not come (another Lock of this session, or the withdrawal of an acquire "
                             f"given up, holds it); nothing was sent")
        else:
            super().__init__(f"lock {name!r} was not granted within {wait} s")


def format_sequencer(seq: lock_pb2.Sequencer) -> str:
    """The string form of a sequencer (``latch1:CLUSTER:KIND:GENERATION:SESSION:NAME``); its
    ``token`` field is ignored."""
    kind = ("E" if seq.election else "L") + ("S" if seq.mode == lock_pb2.SHARED else "X")
    session = seq.session_id.replace("%", "%25").replace(":", "%3A")
    return f"{_PREFIX}:{seq.cluster_id:016x}:{kind}:{seq.generation}:{session}:{seq.name}"


def parse_sequencer(token: str) -> lock_pb2.Sequencer:
    """Parses a sequencer's string form; ValueError naming what is wrong. The result carries
    ``token`` as its token."""
    parts = token.split(":", 5)
    expected = " (expected latch1:CLUSTER:KIND:GENERATION:SESSION:NAME)"
    if len(parts) < 6:
        raise ValueError(f"not a Latch sequencer: {6 - len(parts)} of its six parts missing{expected}")
    prefix, cluster, kind, generation, session, name = parts
    if prefix != _PREFIX:
        raise ValueError(f"not a Latch sequencer: it does not begin with latch1:{expected}")
    if len(cluster) != 16 or any(c not in "0123456789abcdefABCDEF" for c in cluster):
        raise ValueError(f"not a Latch sequencer: the cluster id is not 16 hex digits{expected}")
    if kind not in _KINDS:
        raise ValueError(f"not a Latch sequencer: the kind is not one of LX, LS, EX, ES{expected}")
    if not generation.isdigit() or int(generation) == 0 or int(generation) >= 1 << 64:
        raise ValueError(f"not a Latch sequencer: the generation is not a positive integer{expected}")
    if not session:
        raise ValueError(f"not a Latch sequencer: the session is empty{expected}")
    if not name:
        raise ValueError(f"not a Latch sequencer: the name is empty{expected}")
    election, mode = _KINDS[kind]
    return lock_pb2.Sequencer(name=name, mode=mode, generation=int(generation),
                              session_id=session.replace("%3A", ":").replace("%25", "%"),
                              cluster_id=int(cluster, 16), election=election, token=token)


class Lock:
    """A held lock: ``sequencer`` (``token``, ``generation``); released by ``release()`` or
    on leaving its ``with`` block. Holding it is only as sure as its session: check
    ``session.state`` before acting, and fence what you write with the token. It holds its
    session's turn at the name until its release was answered: the session's next
    ``Session.lock`` of the name waits until then."""

    def __init__(self, session, sequencer: lock_pb2.Sequencer, turn: Optional["_Turn"] = None):
        self.session = session
        self.sequencer = sequencer
        self.released = False
        self._turn = turn
        # A Lock dropped unreleased (an error path) would keep its turn, and so the session's
        # next lock of the name waiting, for ever: its finalizer releases it in the background.
        self._finalizer = None
        if turn is not None:
            self._finalizer = weakref.finalize(self, _release_dropped, session.client, turn, sequencer.token)
            self._finalizer.atexit = False

    @classmethod
    def acquire(cls, session, name: str, *, shared: bool = False, wait: Optional[float] = None,
                lock_delay: Optional[float] = None) -> "Lock":
        """``Session.lock``: ``Client.acquire`` for ``session`` in the session's turn at ``name``,
        raising ``LockNotAcquired`` when a member answered it not granted in time (or the time
        allowed ran out waiting for the turn: nothing was sent), and the ``LatchError`` when no
        member answered (the cluster unreachable, as ``Client.acquire``). The ``Lock`` returned
        holds the turn until it is released.

        Should the acquire fail unsettled and its withdrawal go on in the background, the turn
        goes with that withdrawal: a grant it finds, come first (nobody holds a ``Lock`` of it),
        is released there, and only then does the session's next lock of the name go out — so
        that one can never re-enter the hold the release ends, and gets a grant of its own."""
        wait = seconds(wait, "wait", none_ok=True)
        seconds(lock_delay, "lock_delay", none_ok=True)
        start = time.monotonic()
        ended = getattr(session, "ended", None)
        if ended is not None and ended.is_set():
            raise _ended_error(name)
        turn = session._turns.take(name, wait)
        if turn is None:
            raise LockNotAcquired(name, wait, waited_for_turn=True)
        try:
            token = turn.unreleased()
            if token is not None:
                # A release never answered may still be on its way: should it land after this
                # acquire re-entered the same hold, it would end it. So it goes first, answered.
                turn.release(session.client, token)
            left = None if wait is None else max(0.0, wait - (time.monotonic() - start))
            seq = session.client._acquire(name, session.id, shared=shared, wait=left, lock_delay=lock_delay,
                                          turn=turn)
        except BaseException:
            if not turn.withdrawing:  # else the background withdrawal gives it back
                turn.give_back()
            raise
        if seq is None:
            turn.give_back()
            raise LockNotAcquired(name, wait)
        return cls(session, seq, turn)

    @property
    def token(self) -> str:
        """The sequencer's string form, to hand to what the holder writes to."""
        return self.sequencer.token

    @property
    def generation(self) -> int:
        """The fencing token: larger for every later grant of this lock."""
        return self.sequencer.generation

    def release(self) -> None:
        """Releases the lock; a lock already lost (its session ended, or released) counts as
        released. The session's turn at the name is given back once the release was answered,
        or failed: then the session's next ``Session.lock`` of the name sends it again, and has
        it answered, before asking for the name (calling ``release()`` again sends it too)."""
        if self.released:
            return
        if self._finalizer is not None:
            self._finalizer.detach()
        turn, self._turn = self._turn, None
        if turn is not None:
            turn.set_releasing()
            try:
                turn.release(self.session.client, self.token)
            finally:
                turn.give_back()
        else:
            turns = getattr(self.session, "_turns", None)
            if turns is None:
                _release(self.session.client, self.token)
            else:
                turns.release(self.session.client, self.sequencer.name, self.token, note=False)
        self.released = True

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Lock({self.sequencer.name!r}, generation={self.generation}, session={self.session.id!r})"


def _ended_error(name: str) -> LatchError:
    return LatchError(grpc.StatusCode.FAILED_PRECONDITION,
                      f"lock {name!r}: the session ended: nothing it would lock could be trusted")


def _release_dropped(client, turn: "_Turn", token: str) -> None:
    """A ``Lock``'s finalizer, when it was dropped unreleased: its release is sent from a daemon
    thread (noted first, so that should it fail, the session's next lock of the name sends it
    again) and its turn given back once that was answered or failed."""

    def run():
        # All of it here, none in the finalizer: the collector may run that in a thread that
        # holds a logging handler's lock, while another logs under the turns' lock.
        _log.warning("lock %r: a Lock was dropped unreleased; releasing it in the background", turn.name)
        turn.set_releasing()
        try:
            turn.release(client, token)
        except BaseException as e:  # noqa: BLE001 - a thread has no caller to raise to
            _log.warning("lock %r: releasing a Lock dropped unreleased failed: %s; the session's next lock of "
                         "the name sends the release again", turn.name, e)
        finally:
            turn.give_back()

    # Before the thread starts: the dropping thread may lock the name again at once, and must
    # then wait for this release, not be told it holds the name already.
    turn.dropped()
    try:
        threading.Thread(target=run, name=f"latch-release-{turn.name}", daemon=True).start()
    except BaseException:  # noqa: BLE001 - no thread (interpreter shutting down, say)
        turn.note_unreleased(token)
        turn.give_back()


def _release(client, token: str) -> None:
    """Releases ``token``; FAILED_PRECONDITION (it held no more) counts as released."""
    try:
        client.release(token)
    except LatchError as e:
        if e.code != grpc.StatusCode.FAILED_PRECONDITION:
            raise


class _Name:
    """A name's turn in ``_Turns``: whether a turn holds it, whether that turn only has a release
    or a withdrawal left (``releasing``), how many turns hold or await it (``users``), and the
    condition (on the map's lock) its waiters wait on."""

    def __init__(self, lock) -> None:
        self.held = False
        self.releasing = False
        #: The thread that took the turn (the object: an ident is reused once its thread ended),
        #: until only its release or withdrawal is left: a second lock of the name from it would
        #: wait for itself.
        self.holder: Optional[threading.Thread] = None
        #: Set, without the map's lock, by the finalizer of the holder's ``Lock`` dropped
        #: unreleased: the holder's thread no longer holds the turn, whose release is on its way
        #: in the background (a lock of the name from that thread waits for it).
        self.dropped = False
        self.users = 0
        self.free = threading.Condition(lock)


class _Turns:
    """A session's turns at its lock names, one per name at a time (the Rust client's
    ``Turns``): a name's entry is made when a turn takes or awaits it and goes when none does,
    so the map holds only the names in use. Once the session ended, no turn is taken (nothing
    the session would lock could be trusted)."""

    def __init__(self) -> None:
        # Re-entrant: a dropped Lock's finalizer (``_release_dropped``) may run in a thread that
        # holds it, from the garbage collector.
        self._lock = threading.RLock()
        self._names: Dict[str, _Name] = {}
        # For a name, the sequencer of a release sent but never answered. Kept when the name's
        # entry goes: at most one per name the session locked.
        self._unreleased: Dict[str, str] = {}
        self._ended = False

    def take(self, name: str, wait: Optional[float]) -> Optional["_Turn"]:
        """The session's turn at ``name``, waiting at most ``wait`` seconds for it (None: as
        long as it takes); None when that ran out. With ``wait`` 0, None at once whenever a
        turn holds the name (a ``Lock``, its release, or a background withdrawal). Raises a
        ``LatchError`` (FAILED_PRECONDITION) at once when the session ended, or ended while
        this waited, and when this thread holds the turn already (it would wait for itself).
        A wait longer than ``TURN_WAIT_WARNING`` seconds is logged as a warning, once."""
        me = threading.current_thread()
        start = time.monotonic()
        deadline = None if wait is None else start + wait
        with self._lock:
            if self._ended:
                raise _ended_error(name)
            entry = self._names.get(name)
            if entry is None:
                entry = self._names[name] = _Name(self._lock)
            entry.users += 1
            taken = False
            try:
                said = warned = False
                while entry.held and not self._ended:
                    if wait == 0:
                        return None  # a Lock, its release or a withdrawal holds it
                    if entry.holder is me and not entry.dropped:
                        raise LatchError(grpc.StatusCode.FAILED_PRECONDITION,
                                         f"this thread holds the session's lock {name!r} already; release it "
                                         f"first")
                    now = time.monotonic()
                    left = None if deadline is None else deadline - now
                    if left is not None and left <= 0:
                        return None
                    if not said:
                        said = True
                        _log.debug("lock %r: waiting for the session's turn at the name", name)
                    if not warned:
                        until_warning = start + TURN_WAIT_WARNING - now
                        if until_warning <= 0:
                            warned = True
                            _log.warning("lock %r: waited %.0f s for the session's turn at the name (another "
                                         "Lock of this session, or the withdrawal of an acquire given up, "
                                         "holds it)", name, now - start)
                        else:
                            left = until_warning if left is None else min(left, until_warning)
                    entry.free.wait(left)
                if self._ended:
                    raise _ended_error(name)
                entry.held, entry.releasing, entry.holder, entry.dropped, taken = True, False, me, False, True
                return _Turn(self, name, entry)
            finally:
                if not taken:
                    self._leave(name, entry)

    def end(self) -> None:
        """The session ended: no turn is taken any more, and those waiting raise."""
        with self._lock:
            self._ended = True
            for entry in self._names.values():
                entry.free.notify_all()

    def release(self, client, name: str, token: str, *, note: bool = True) -> None:
        """Releases ``token`` (of lock ``name``): noted as unanswered before it is sent (with
        ``note``), and no longer once the cluster answered it (released, or FAILED_PRECONDITION:
        it held no more). Any other failure is raised, the release left noted."""
        if note:
            with self._lock:
                self._unreleased[name] = token
        _release(client, token)
        with self._lock:
            if self._unreleased.get(name) == token:
                del self._unreleased[name]

    def note_unreleased(self, name: str, token: str) -> None:
        with self._lock:
            self._unreleased[name] = token

    def unreleased(self, name: str) -> Optional[str]:
        with self._lock:
            return self._unreleased.get(name)

    def names_in_use(self):
        """The names a turn holds or awaits, sorted."""
        with self._lock:
            return sorted(self._names)

    def _set_releasing(self, name: str) -> None:
        with self._lock:
            entry = self._names.get(name)
            if entry is not None and entry.held:
                entry.releasing = True
                entry.holder = None

    def _give_back(self, name: str) -> None:
        with self._lock:
            entry = self._names.get(name)
            if entry is None:
                return
            entry.held = entry.releasing = entry.dropped = False
            entry.holder = None
            entry.free.notify_all()
            self._leave(name, entry)

    def _leave(self, name: str, entry: _Name) -> None:
        """Counts a turn off ``name`` (the lock held); forgets the name when none is left."""
        entry.users -= 1
        if entry.users == 0 and self._names.get(name) is entry:
            del self._names[name]


class _Turn:
    """A session's turn at one lock name (the Rust client's ``Turn``): from ``Session.lock``
    until its ``Lock``'s release was answered (or failed), or, when the acquire failed
    unsettled, until its background withdrawal settled (``withdrawing``; the withdrawal gives it
    back). ``give_back()`` hands it to the next waiter; a second call does nothing."""

    def __init__(self, turns: _Turns, name: str, entry: Optional[_Name] = None, *, counted: bool = True):
        self._turns = turns
        self.name = name
        self._entry = entry
        self._held = counted
        #: Handed to the background withdrawal of a failed acquire, which gives it back.
        self.withdrawing = False

    def dropped(self) -> None:
        """Its ``Lock`` was dropped unreleased: the holder's thread no longer holds it. A plain
        write, without the map's lock (the garbage collector runs finalizers in whatever thread
        it is in, which may hold a lock another thread logs under while holding the map's)."""
        if self._entry is not None:
            self._entry.dropped = True

    def set_releasing(self) -> None:
        """Only a release (or a withdrawal) is left of this turn: a try-once lock of the name
        waits for it rather than give up."""
        self._turns._set_releasing(self.name)

    def hand_to_withdrawal(self) -> None:
        """The turn goes with the background withdrawal of the acquire sent in it."""
        self.withdrawing = True
        self.set_releasing()

    def unreleased(self) -> Optional[str]:
        """The sequencer of a release of this name sent but never answered, if one was."""
        return self._turns.unreleased(self.name)

    def note_unreleased(self, token: str) -> None:
        """Notes ``token`` as a release not yet answered: the session's next lock of the name
        sends it first."""
        self._turns.note_unreleased(self.name, token)

    def release(self, client, token: str) -> None:
        """Releases ``token`` in this turn (``_Turns.release``)."""
        self._turns.release(client, self.name, token)

    def give_back(self) -> None:
        if self._held:
            self._held = False
            self._turns._give_back(self.name)
