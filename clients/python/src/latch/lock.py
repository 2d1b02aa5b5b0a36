"""Locks with fencing sequencers, and a sequencer's string form.

A grant's sequencer names the lock, the mode, the holding session and a generation that strictly
increases per lock name for the life of the cluster. Hand its token to whatever the holder
writes to, and have that check it (``Client.check_sequencer``, a transaction's
``Compare.sequencer_valid``, or a larger-generation-wins rule): a paused ex-holder then cannot
write after its session ended.
"""

from typing import Optional

import grpc

from .errors import LatchError
from .v1 import lock_pb2

_PREFIX = "latch1"
_KINDS = {"LX": (False, lock_pb2.EXCLUSIVE), "LS": (False, lock_pb2.SHARED),
          "EX": (True, lock_pb2.EXCLUSIVE), "ES": (True, lock_pb2.SHARED)}


class LockNotAcquired(Exception):
    """A lock not granted within the time allowed."""

    def __init__(self, name: str, wait: Optional[float]):
        self.name = name
        self.wait = wait
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
    ``session.state`` before acting, and fence what you write with the token."""

    def __init__(self, session, sequencer: lock_pb2.Sequencer):
        self.session = session
        self.sequencer = sequencer
        self.released = False

    @classmethod
    def acquire(cls, session, name: str, *, shared: bool = False, wait: Optional[float] = None,
                lock_delay: Optional[float] = None) -> "Lock":
        """``Session.lock``: ``Client.acquire`` for ``session``, raising ``LockNotAcquired`` when
        a member answered it not granted in time, and the ``LatchError`` when no member answered
        (the cluster unreachable, as ``Client.acquire``). A grant that only the background
        withdrawal of a failed or interrupted acquire finds stays the session's, and is logged as
        a warning: lock it again to get it back in a ``Lock``, else it is released when the
        session ends. It is not released there: the session may hold it again already, in a
        ``Lock`` of an acquire sent since (the member answers a session's own hold)."""
        seq = session.client.acquire(name, session.id, shared=shared, wait=wait, lock_delay=lock_delay)
        if seq is None:
            raise LockNotAcquired(name, wait)
        return cls(session, seq)

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
        released."""
        if self.released:
            return
        try:
            self.session.client.release(self.token)
        except LatchError as e:
            if e.code != grpc.StatusCode.FAILED_PRECONDITION:
                raise
        self.released = True

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Lock({self.sequencer.name!r}, generation={self.generation}, session={self.session.id!r})"
