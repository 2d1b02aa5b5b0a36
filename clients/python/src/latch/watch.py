"""Watches that resume by themselves.

A ``Watch`` yields ``WatchBatch``es: the events of one revision together (fragments of a large
revision are put back together first), a snapshot of the watched range (``on_compacted =
"snapshot"``), or a progress notice. When its member fails, or cancels it as SLOW, it creates the
watch again — on the next member — from the revision after the last it delivered, so that the
caller sees every revision once, in order, with no gap (etcd's six guarantees, docs/watches.md).
A compacted start revision raises ``LatchError`` (OUT_OF_RANGE, with ``compact_revision``) unless
the watch asked for a snapshot.
"""

import dataclasses
import threading
import weakref
from typing import List, Optional

import grpc

from .client import RETRYABLE, Backoff
from .errors import LatchError
from .v1 import kv_pb2, watch_pb2

_TARGETS = {
    "keys": watch_pb2.WatchCreateRequest.KEYS,
    "sessions": watch_pb2.WatchCreateRequest.SESSIONS,
    "locks": watch_pb2.WatchCreateRequest.LOCKS,
    "elections": watch_pb2.WatchCreateRequest.ELECTIONS,
    "registry": watch_pb2.WatchCreateRequest.REGISTRY,
}
_ON_COMPACTED = {"error": watch_pb2.WatchCreateRequest.ERROR, "snapshot": watch_pb2.WatchCreateRequest.SNAPSHOT}
_R = watch_pb2.WatchResponse
#: SLOW cancels in a row at the same revision, nothing delivered between, after which a watch
#: ends with the member's reason (a snapshot its client does not read within the member's
#: --watch-snapshot-deadline: asking again would repeat it, silently).
SLOW_WITHOUT_PROGRESS = 3


@dataclasses.dataclass
class WatchBatch:
    """What a watch delivered at ``revision``: its ``events`` (all of that revision's); or, with
    ``snapshot``, the watched range's ``kvs`` at that revision (replace what you had); or, with
    ``progress``, that every event up to it was delivered."""

    revision: int
    events: List[watch_pb2.Event] = dataclasses.field(default_factory=list)
    snapshot: bool = False
    kvs: List[kv_pb2.KeyValue] = dataclasses.field(default_factory=list)
    progress: bool = False


class Watch:
    def __init__(self, client, key: bytes, range_end: bytes, *, start_revision: int, prev_kv: bool, no_put: bool,
                 no_delete: bool, on_compacted: str, progress_notify: bool, target: str):
        if target not in _TARGETS:
            raise ValueError(f"watch target {target!r}: expected one of {', '.join(_TARGETS)}")
        if on_compacted not in _ON_COMPACTED:
            raise ValueError(f"on_compacted {on_compacted!r}: expected one of {', '.join(_ON_COMPACTED)}")
        if start_revision < 0:
            raise ValueError(f"start_revision {start_revision}: a revision is never negative")
        self.client = client
        self._create = watch_pb2.WatchCreateRequest(key=key, range_end=range_end, prev_kv=prev_kv, no_put=no_put,
                                                    no_delete=no_delete, progress_notify=progress_notify,
                                                    on_compacted=_ON_COMPACTED[on_compacted],
                                                    target=_TARGETS[target])
        #: The first revision not yet delivered; 0 until a member said where "now" is.
        self.next_revision = start_revision
        self._closed = threading.Event()
        #: Set to end the current stream's request side (each stream has its own).
        self._stream_done = threading.Event()
        self._call = None
        self._responses = None
        #: The member the stream is on (``_open``).
        self._member = None
        # Whether the current stream's initial metadata was checked for the cluster it names.
        self._cluster_checked = False
        self._target = 0
        self._backoff = Backoff()
        # The next revision the last SLOW cancel left, and how many in a row left it there.
        self._slow_at = (0, 0)
        self._pending: Optional[WatchBatch] = None
        # A watch dropped without cancel() still ends its stream and the thread grpc runs its
        # requests on.
        self._finalizer = weakref.finalize(self, _end, self._closed, self._stream_done)
        self._target = client.preferred()
        if start_revision == 0:
            # "Now" is the cluster's revision as a linearizable read sees it when the watch is
            # made: a write that returned before watch() is not delivered, every later one is,
            # whichever member serves the watch and whenever the stream opens.
            now = client.range(key, range_end, count_only=True).header.revision
            self.next_revision = now + 1
        self._open()

    def __iter__(self) -> "Watch":
        return self

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()

    def cancel(self) -> None:
        """Ends the watch; iteration stops."""
        self._closed.set()
        self._end_stream()

    def _end_stream(self) -> None:
        self._stream_done.set()
        if self._call is not None:
            self._call.cancel()
        self._call = self._responses = self._member = None

    def _open(self) -> None:
        create = watch_pb2.WatchCreateRequest()
        create.CopyFrom(self._create)
        create.start_revision = self.next_revision
        done = self._stream_done = threading.Event()
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _end, self._closed, done)

        def requests():
            yield watch_pb2.WatchRequest(create=create)
            # The request side stays open while the stream lives: a half-closed stream is an ended one.
            done.wait()

        target = self.client.target(self._target)
        # Held while the stream lives: a member a hint replaces meanwhile is closed with the
        # client only while something holds it (``Client._retired``).
        self._member = target
        self._addr = target.addr
        self._call = target.stub("watch", "streams").Watch(requests())
        self._responses = iter(self._call)
        self._pending = None
        self._cluster_checked = False
        if self._closed.is_set():  # cancel() raced this open
            self._end_stream()

    def _reopen_elsewhere(self) -> None:
        """The stream failed: the next member, after a pause that grows while failures repeat."""
        self._end_stream()
        self._target += 1
        if self._closed.wait(self._backoff.pause()):
            raise StopIteration

    def _fail(self, error: LatchError) -> LatchError:
        """Ends the watch for good with ``error``."""
        self._closed.set()
        self._end_stream()
        return error

    def __next__(self) -> WatchBatch:
        while True:
            if self._closed.is_set():
                self._end_stream()
                raise StopIteration
            if self._responses is None:
                self._open()
                continue
            # The stream's call, kept: a cancel() from another thread meanwhile clears _call.
            call = self._call
            try:
                r = next(self._responses)
            except StopIteration:
                self._reopen_elsewhere()
                continue
            except grpc.RpcError as e:
                if self._closed.is_set():
                    raise StopIteration from None
                if e.code() in RETRYABLE or e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    # RESOURCE_EXHAUSTED: the member cut the stream for its queued bytes.
                    self._reopen_elsewhere()
                    continue
                raise self._fail(LatchError.from_rpc(e, self._addr)) from None
            if not self._cluster_checked:
                # A stream opened before the client knew its cluster names none, so a member of
                # another cluster (in an endpoint list that mixes two) may serve it: its events
                # are not this cluster's, and the stream goes elsewhere.
                self._cluster_checked = True
                if self.client._from_another_cluster(call.initial_metadata()):
                    self._reopen_elsewhere()
                    continue
            batch = self._take(r)
            if batch is not None:
                self._backoff.reset()
                return batch

    def _take(self, r: watch_pb2.WatchResponse) -> Optional[WatchBatch]:
        """What response ``r`` adds; a batch when one is whole."""
        if r.canceled:
            return self._canceled(r)
        if r.created:
            if self.next_revision == 0:
                self.next_revision = r.header.revision + 1
            return None
        revision = r.header.revision
        if r.progress:
            if revision < self.next_revision - 1:
                return None  # a member behind the last one (after a resume): nothing new
            # Every event up to it was delivered: a resume starts after it.
            self.next_revision = revision + 1
            return WatchBatch(revision=revision, progress=True)
        if revision < self.next_revision and not r.snapshot:
            return None  # delivered already (a resume's start overlapped)
        if self._pending is None or self._pending.revision != revision:
            self._pending = WatchBatch(revision=revision, snapshot=r.snapshot)
        self._pending.events.extend(r.events)
        self._pending.kvs.extend(r.snapshot_kvs)
        if r.fragment:
            return None
        batch, self._pending = self._pending, None
        self.next_revision = revision + 1
        return batch

    def _canceled(self, r: watch_pb2.WatchResponse) -> Optional[WatchBatch]:
        reason = r.cancel_reason
        if reason == _R.CLIENT:
            self._closed.set()
            self._end_stream()
            raise StopIteration
        if reason in (_R.SLOW, _R.UNAVAILABLE, _R.RESOURCE_EXHAUSTED):
            # Resume after the last revision fully delivered, on the next member (SLOW names it;
            # a member over its limits or cut off may serve it later, or another now).
            if reason == _R.SLOW:
                self.next_revision = max(self.next_revision, r.header.revision + 1)
                at, times = self._slow_at
                times = times + 1 if at == self.next_revision else 1
                self._slow_at = (self.next_revision, times)
                if times >= SLOW_WITHOUT_PROGRESS:
                    raise self._fail(LatchError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"{r.cancel_message} (canceled so {times} times in a row at revision {self.next_revision}, "
                        "nothing delivered between)", self._addr))
            self._reopen_elsewhere()
            return None
        if reason == _R.COMPACTED:
            raise self._fail(LatchError(
                grpc.StatusCode.OUT_OF_RANGE,
                f"revision {self.next_revision} is compacted (compact revision {r.compact_revision})",
                self._addr, r.compact_revision))
        raise self._fail(LatchError(grpc.StatusCode.INVALID_ARGUMENT, r.cancel_message or "the watch was refused",
                                    self._addr))


def _end(closed: threading.Event, stream_done: threading.Event) -> None:
    closed.set()
    stream_done.set()
