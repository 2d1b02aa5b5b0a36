"""The connection side of the client, and the calls that need no state of their own (keys,
transactions, locks by sequencer, the registry, the cluster's status).

Retry contract (as the Rust client's): a call is sent again, to another member, only when that
cannot apply it twice. Reads have no effect; every write carries a request id chosen before its
first attempt and kept across attempts, and the server applies an id at most once. Only
UNAVAILABLE and DEADLINE_EXCEEDED are retried; an error that says the request itself is wrong
(INVALID_ARGUMENT, FAILED_PRECONDITION, …) comes back at once.
"""

import collections
import ipaddress
import logging
import math
import os
import threading
import time
import uuid
import weakref
from typing import Callable, Dict, Iterable, List, Optional, Sequence, TypeVar, Union

import grpc

from .errors import APPLIED_REVISION_METADATA, SETTLED_METADATA, LatchError, trailing
from .txn import Bytes, Txn, _key_range, as_bytes, prefix_range
from .v1 import (cluster_pb2, cluster_pb2_grpc, election_pb2, election_pb2_grpc, kv_pb2, kv_pb2_grpc,
                 lock_pb2, lock_pb2_grpc, maintenance_pb2, maintenance_pb2_grpc, registry_pb2,
                 registry_pb2_grpc, session_pb2, session_pb2_grpc, watch_pb2_grpc)

#: Where a client connects when it is given no endpoints and $LATCH_ENDPOINTS is unset.
DEFAULT_ENDPOINT = "127.0.0.1:7379"
#: Metadata of a follower's answers (and of an UNAVAILABLE one): the leader's client address,
#: where writes go.
LEADER_ADDR_METADATA = "latch-leader-addr"
#: Metadata of every answer of a member: its cluster (16 hex digits). Every request after the
#: client's first answer (or from the first, given ``cluster_id=``) names that cluster under the
#: same key, and a member of another cluster refuses it (UNAVAILABLE, nothing done): a stale
#: leader hint never makes a write land in the other one. A request sent before the first answer
#: that another cluster's member serves (an endpoint list mixing two clusters) fails INTERNAL.
CLUSTER_ID_METADATA = "latch-cluster-id"
#: First pause between two attempts; doubled after each failed one, up to MAX_BACKOFF.
INITIAL_BACKOFF = 0.02
MAX_BACKOFF = 0.5
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
#: Most calls of one client with a hedge under way at once: a cluster slower than ``hedge_after``
#: for every call would otherwise be sent every call twice (the Rust client's ``MAX_HEDGES``).
MAX_HEDGES = 8
#: Seconds a member that failed a call is not taken for the leader on another member's word: a
#: client that cannot reach the leader its peers reach (a partition of its own, a wrong
#: --advertise-client-addr) sends its writes through a member it reaches instead of back to the
#: leader on every write, paying a timeout each time.
DISTRUSTED_FOR = 10.0
#: Most members a client learns from leader hints, besides those it was given: past it, a hint
#: naming an unknown address takes the place of the oldest learnt one that is neither the leader
#: nor where calls start, so members naming ever new addresses (a cluster whose members move)
#: cannot grow the list without bound, and a long-lived client still follows its leader.
MAX_HINTED_TARGETS = 16
#: Failures of an acquire that leave nothing to withdraw: refused as asked (a bad request, no such
#: session, the other mode, an id used before), whichever attempt answered; so is a queue or
#: request over a limit, when the member marks it (``LatchError.over_limit``). Any other failure
#: may have come after an attempt was queued.
SETTLED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
           grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
#: Failures of a withdrawal that asking again would meet alike.
WITHDRAWAL_REFUSED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED,
                      grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
#: Attempts at withdrawing an acquire given up in the background, the first pause before them
#: (doubling).
WITHDRAW_ATTEMPTS = 8
WITHDRAW_BACKOFF = 0.25
#: Pings on idle connections, so that a member that vanished is noticed (seconds).
KEEPALIVE_INTERVAL_MS = 5000
KEEPALIVE_TIMEOUT_MS = 5000
#: Largest response accepted (a watch's fragment or a large range): the server bounds its own.
MAX_RECEIVE_BYTES = 256 << 20

T = TypeVar("T")

_log = logging.getLogger(__name__)

_SERVICES = {
    "kv": kv_pb2_grpc.KVStub,
    "cluster": cluster_pb2_grpc.ClusterStub,
    "session": session_pb2_grpc.SessionStub,
    "lock": lock_pb2_grpc.LockStub,
    "election": election_pb2_grpc.ElectionStub,
    "watch": watch_pb2_grpc.WatchStub,
    "registry": registry_pb2_grpc.RegistryStub,
    "maintenance": maintenance_pb2_grpc.MaintenanceStub,
}


def request_id() -> str:
    """A fresh id for a write: the same id on every attempt makes a retry safe."""
    return str(uuid.uuid4())


def parse_endpoint(endpoint: str) -> str:
    """``host:port`` from ``host:port`` or ``http://host:port`` (an IPv6 host in brackets:
    ``[::1]:7379``); ValueError naming the endpoint and the problem. One endpoint only: a ','
    (two endpoints in one list element) or a second ':' outside brackets is refused."""
    e = endpoint.strip()
    if "," in e:
        raise ValueError(f"endpoint {endpoint!r}: one host:port per endpoint, not a ','-separated list "
                         "(give a list of endpoints, or one string of them to Client)")
    for scheme in ("http://", "grpc://"):
        if e.startswith(scheme):
            e = e[len(scheme):]
    e = e.rstrip("/")
    host, sep, port = e.rpartition(":")
    if "://" in e or "/" in e or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint {endpoint!r}: expected host:port (a port from 1 to 65535)")
    if host.startswith("["):
        one_host = host.endswith("]") and len(host) > 2 and "[" not in host[1:] and "]" not in host[:-1]
    else:
        one_host = not any(c in host for c in ":[]")
    if not one_host:
        raise ValueError(f"endpoint {endpoint!r}: expected host:port with one ':' "
                         "(an IPv6 address goes in brackets: [::1]:7379)")
    return e


class _WaitOver(Exception):
    """An acquire's time allowed ran out before another attempt could be sent: ``error`` (a
    LatchError) is what the acquire fails with, once withdrawn."""

    def __init__(self, error: LatchError):
        super().__init__(str(error))
        self.error = error


class Backoff:
    """Pauses between attempts: INITIAL_BACKOFF, doubled after each up to MAX_BACKOFF, and
    back to the first after a success (``reset``)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._next = INITIAL_BACKOFF

    def pause(self) -> float:
        """The pause to take now; the next one doubles."""
        pause, self._next = self._next, min(self._next * 2, MAX_BACKOFF)
        return pause


def _endpoint_or_none(text: Optional[str]) -> Optional[str]:
    """A leader hint as an endpoint; None if it names none usable (a wildcard address such as
    ``0.0.0.0``, which a member bound to it names itself by, is no host to go to)."""
    try:
        addr = parse_endpoint(text) if text else None
    except ValueError:
        return None
    if addr is not None and _is_wildcard(addr.rpartition(":")[0].strip("[]")):
        return None
    return addr


def _is_wildcard(host: str) -> bool:
    """Whether ``host`` is an IP address that means any address (0.0.0.0, ::, ::ffff:0.0.0.0)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_unspecified or (mapped is not None and mapped.is_unspecified)


def _unary(target: "_Target", service: str, method: str, request, timeout: Optional[float]):
    """One unary call at ``target``: its answer and the answer's initial metadata."""
    response, call = getattr(target.stub(service), method).with_call(request, timeout=timeout)
    return response, call.initial_metadata()


def _unary_future(target: "_Target", service: str, method: str, request, timeout: Optional[float]):
    """One unary call at ``target``, under way: a ``grpc.Future`` that is also its ``grpc.Call``."""
    return getattr(target.stub(service), method).future(request, timeout=timeout)


def _metadata_value(metadata, key: str) -> Optional[str]:
    for k, v in metadata or ():
        if k == key:
            return v.decode() if isinstance(v, bytes) else v
    return None


def _settled(failure: grpc.RpcError) -> bool:
    """Whether a write's refusal is its request id's outcome, which every attempt of it meets:
    a member refused it as applied (``SETTLED_METADATA``), or answered that it was applied."""
    return (trailing(failure, SETTLED_METADATA) == "true"
            or trailing(failure, APPLIED_REVISION_METADATA) is not None)


def _cluster_id(text: Optional[str]) -> Optional[str]:
    """A cluster id as answers name it (16 hex digits, lowercase), or None."""
    if text is None or len(text) != 16 or any(c not in "0123456789abcdefABCDEF" for c in text):
        return None
    return text.lower()


class _Cluster:
    """The cluster a client talks to: the one it was told, else the one its first answer named,
    for the client's life."""

    def __init__(self):
        self.id: Optional[str] = None
        self._lock = threading.Lock()

    def learn(self, named: Optional[str]) -> bool:
        """Learns the cluster an answer names (``CLUSTER_ID_METADATA``), if none is known yet;
        whether the answer came from another cluster than this one."""
        named = _cluster_id(named)
        if named is not None and self.id is None:
            with self._lock:
                if self.id is None:
                    self.id = named
        return self.foreign(named)

    def foreign(self, named: Optional[str]) -> bool:
        """Whether an answer that named cluster ``named`` came from another cluster than this one."""
        named = _cluster_id(named)
        return named is not None and self.id is not None and named != self.id


class _CallDetails(collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                                           "wait_for_ready", "compression")),
                   grpc.ClientCallDetails):
    pass


class _NameCluster(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Puts the cluster the client talks to, once known, on each request."""

    def __init__(self, cluster: _Cluster):
        self._cluster = cluster

    def _named(self, details):
        cluster = self._cluster.id
        if cluster is None:
            return details
        metadata = list(details.metadata or ()) + [(CLUSTER_ID_METADATA, cluster)]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._named(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._named(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._named(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._named(details), requests)


def _named(metadata) -> Optional[str]:
    """The leader an answer's metadata names (``LEADER_ADDR_METADATA``), if usable."""
    return _endpoint_or_none(_metadata_value(metadata, LEADER_ADDR_METADATA))


def seconds(value: Optional[float], what: str, *, none_ok: bool = False) -> Optional[float]:
    """``value`` checked as a finite, non-negative number of seconds (None where allowed)."""
    if value is None and none_ok:
        return None
    if not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        allowed = " or None" if none_ok else ""
        raise ValueError(f"{what}: {value!r} is not a finite number of seconds >= 0{allowed}")
    return float(value)


class Check:
    """How the cluster decides an instance is healthy (``Client.register(check=...)``)."""

    @staticmethod
    def session() -> registry_pb2.HealthCheck:
        """Healthy while its session lives (the default with a session)."""
        return registry_pb2.HealthCheck(kind=registry_pb2.HealthCheck.SESSION)

    @staticmethod
    def ttl(ttl: float, *, deregister_after: float = 0) -> registry_pb2.HealthCheck:
        """Critical unless ``Client.heartbeat`` comes every ``ttl`` seconds."""
        return registry_pb2.HealthCheck(kind=registry_pb2.HealthCheck.TTL, ttl_ms=_ms(ttl, "ttl"),
                                        deregister_after_ms=_ms(deregister_after, "deregister_after"))

    @staticmethod
    def http(url: str, *, interval: float = 10, timeout: float = 0,
             deregister_after: float = 0) -> registry_pb2.HealthCheck:
        """The leader GETs ``url`` every ``interval`` seconds; a 2xx answer passes. A probe
        takes at most ``timeout`` seconds (0: the member's default, 5 s or the interval if
        shorter)."""
        return Check._probe(registry_pb2.HealthCheck.HTTP, interval, timeout, deregister_after, url=url)

    @staticmethod
    def tcp(address: str, *, interval: float = 10, timeout: float = 0,
            deregister_after: float = 0) -> registry_pb2.HealthCheck:
        """The leader connects to ``address`` (host:port) every ``interval`` seconds, taking
        at most ``timeout`` seconds (0: the member's default)."""
        return Check._probe(registry_pb2.HealthCheck.TCP, interval, timeout, deregister_after, tcp_address=address)

    @staticmethod
    def _probe(kind: int, interval: float, timeout: float, deregister_after: float,
               **target: str) -> registry_pb2.HealthCheck:
        """A check the leader runs itself, every ``interval`` seconds."""
        return registry_pb2.HealthCheck(kind=kind, interval_ms=_ms(interval, "interval"),
                                        timeout_ms=_ms(timeout, "timeout"),
                                        deregister_after_ms=_ms(deregister_after, "deregister_after"), **target)


def _moved_on(after: str, first: str) -> None:
    """Checks that a page begins after the key it was asked to start after: a member that
    ignores ``start_after`` (one older than this client) would answer the first page again and
    again."""
    if first.encode() <= after.encode():
        raise LatchError(grpc.StatusCode.FAILED_PRECONDITION,
                         f"the member answered a page starting at {first!r}, not after {after!r}: "
                         "it does not page (a member older than this client?)")


def _ms(value: float, what: str) -> int:
    return round(seconds(value, what) * 1000)


class _Target:
    """One member: a connection for calls, and one of its own for long-lived streams (a stream
    its caller does not read must never hold up the calls, session keepalives among them)."""

    def __init__(self, addr: str, cluster: _Cluster):
        self.addr = addr
        self._name_cluster = _NameCluster(cluster)
        self._channels: Dict[str, grpc.Channel] = {}
        self._stubs: Dict[tuple, object] = {}
        self._lock = threading.Lock()
        #: Once closed, no connection is opened again (a call that took this member just before
        #: its client closed would otherwise run on a connection nobody closes).
        self._closed = False

    def stub(self, service: str, lane: str = "calls"):
        with self._lock:
            if self._closed:
                raise LatchError(grpc.StatusCode.CANCELLED, "the client was closed", self.addr)
            stub = self._stubs.get((service, lane))
            if stub is None:
                channel = self._channels.get(lane)
                if channel is None:
                    options = [
                        ("grpc.keepalive_time_ms", KEEPALIVE_INTERVAL_MS),
                        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
                        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
                        ("grpc.max_send_message_length", MAX_RECEIVE_BYTES),
                        # A connection of this channel's own, not one shared with the other lane.
                        ("grpc.use_local_subchannel_pool", 1),
                        ("grpc.enable_retries", 0),
                    ]
                    channel = grpc.insecure_channel(self.addr, options=options)
                    self._channels[lane] = channel
                stub = _SERVICES[service](grpc.intercept_channel(channel, self._name_cluster))
                self._stubs[(service, lane)] = stub
            return stub

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
            self._stubs.clear()


class Client:
    """A handle on a Latch cluster, safe to share between threads.

    ``endpoints``: ``"host:port"`` strings (a comma-separated string too); by default
    ``$LATCH_ENDPOINTS``, else 127.0.0.1:7379. Connections open lazily, on the first call that
    needs them. Any member serves any call (followers forward writes to the leader); when one
    does not answer, the call moves on to the next endpoint, or to the leader a member names.
    Every answer of a follower names the leader, and writes go there once one is known, as the
    Rust client's do; reads and streams stay on the member that answered the last read. A
    client reads its own writes: a serializable read answered below the revision of its last
    acknowledged write is asked again, linearizably.

    ``request_timeout``: how long one attempt at one member may take (seconds, default 5).
    ``retry_budget``: how long a call keeps retrying across members (default 10).
    ``writes_to_leader``: False keeps writes on the member reads go to (a follower forwards
    them), and learns no leader from answers.
    ``cluster_id``: the cluster the client must talk to (16 hex digits, as ``latch cluster
    status`` shows it; by default ``$LATCH_CLUSTER_ID``, else the cluster the first answer
    names). Every request names it from the first, and a member of another cluster refuses it.
    ``hedge_after``: seconds a call may go unanswered before it is sent to the next member too,
    the first answer serving it (default 1; at most half the request timeout; None: never). A
    member frozen with its sockets open (stopped, a stuck VM) would otherwise hold each call for
    the whole request timeout. Calls that wait on the server (a lock's wait, a campaign) and
    keepalives (hedged by the lease) are not sent twice; a write keeps its request id, so a
    hedged write applies once.
    """

    def __init__(self, endpoints: Union[None, str, Sequence[str]] = None, *, request_timeout: float = 5.0,
                 retry_budget: float = 10.0, writes_to_leader: bool = True, cluster_id: Optional[str] = None,
                 hedge_after: Optional[float] = 1.0):
        if endpoints is None:
            endpoints = os.environ.get("LATCH_ENDPOINTS") or DEFAULT_ENDPOINT
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        addrs = [parse_endpoint(e) for e in endpoints]
        if not addrs:
            raise ValueError("no endpoints: give at least one host:port")
        if not (0 < request_timeout < math.inf and 0 <= retry_budget < math.inf):
            raise ValueError(f"request_timeout must be a finite number of seconds > 0 and retry_budget "
                             f"one >= 0 (got {request_timeout} and {retry_budget})")
        if cluster_id is None:
            cluster_id = os.environ.get("LATCH_CLUSTER_ID") or None
        pinned = _cluster_id(cluster_id)
        if cluster_id is not None and pinned is None:
            raise ValueError(f"cluster_id {cluster_id!r} is not a cluster id: expected 16 hex digits, "
                             f"as `latch cluster status` shows it")
        if hedge_after is not None and not 0 < hedge_after < math.inf:
            raise ValueError(f"hedge_after must be a finite number of seconds > 0, or None (got {hedge_after})")
        self.request_timeout = request_timeout
        self.retry_budget = retry_budget
        self.writes_to_leader = writes_to_leader
        self.hedge_after = hedge_after
        #: The cluster this client talks to, once an answer named it; every request names it.
        self._cluster = _Cluster()
        self._cluster.id = pinned
        self._targets: List[_Target] = []
        for addr in addrs:
            if addr not in (t.addr for t in self._targets):
                self._targets.append(_Target(addr, self._cluster))
        #: How many of the first targets were given (the rest were learnt from leader hints).
        self._given = len(self._targets)
        #: The learnt member (counted from ``_given``) a hint replaces next once
        #: ``MAX_HINTED_TARGETS`` were learnt: the oldest, as each replacement moves it on. What
        #: a call still on a replaced member says is charged to nobody (``_holds``).
        self._next_replaced = 0
        #: Members a hint replaced that a call or stream may still be on: ``close()`` closes them
        #: too. Each leaves the set when nothing holds it any more.
        self._retired: "weakref.WeakSet[_Target]" = weakref.WeakSet()
        self._preferred = 0
        #: Where writes start: the member a follower last named, or that last answered a write.
        self._leader: Optional[int] = None
        #: The highest revision of this client's acknowledged writes: the floor of its reads.
        self._written = 0
        #: When each member that failed a call since it last answered one failed it (monotonic).
        self._failed: Dict[int, float] = {}
        #: Whether a hedged keepalive's first attempt runs on only to learn whether its member
        #: answers (``_take_probe``): one at a time, so a leader frozen for long, hedged around
        #: by every session's keepalives, holds at most one of them.
        self._probing = False
        #: How many calls have a hedge under way (``MAX_HEDGES`` at most).
        self._hedging = 0
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Closes every connection; calls in flight fail CANCELLED, later ones at once."""
        with self._lock:
            self._closed = True
            targets = list(self._targets) + list(self._retired)
        for t in targets:
            t.close()

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    @property
    def endpoints(self) -> List[str]:
        """The members known: those given, then leaders that members named (the 16 most
        recent, each new one in the place of the oldest not in use)."""
        with self._lock:
            return [t.addr for t in self._targets]

    # -- the retry loop ------------------------------------------------------------------------

    def _target_of(self, addr: str) -> Optional[int]:
        """The index of the member at ``addr``, a leader a member named: added if new; once
        ``MAX_HINTED_TARGETS`` were learnt from hints, in place of the oldest learnt one that is
        neither the leader nor the preferred member."""
        with self._lock:
            for i, t in enumerate(self._targets):
                if t.addr == addr:
                    return i
            if len(self._targets) - self._given < MAX_HINTED_TARGETS:
                self._targets.append(_Target(addr, self._cluster))
                return len(self._targets) - 1
            for k in range(MAX_HINTED_TARGETS):
                i = self._given + (self._next_replaced + k) % MAX_HINTED_TARGETS
                if i not in (self._leader, self._preferred):
                    break
            else:
                return None
            _log.debug("a leader hint naming %s replaces %s, the oldest learnt member", addr, self._targets[i].addr)
            self._next_replaced = (i - self._given + 1) % MAX_HINTED_TARGETS
            self._failed.pop(i, None)
            self._retired.add(self._targets[i])
            self._targets[i] = _Target(addr, self._cluster)
            return i

    def preferred(self) -> int:
        """The index of the member that answered last: where calls and streams start."""
        with self._lock:
            return self._preferred

    def _from_another_cluster(self, metadata) -> bool:
        """Learns the cluster a stream's initial ``metadata`` names, if none is known yet;
        whether it names another cluster than this client's."""
        return self._cluster.learn(_metadata_value(metadata, CLUSTER_ID_METADATA))

    def target(self, i: int) -> _Target:
        """The ``i``-th known member (modulo how many); CANCELLED once the client is closed."""
        with self._lock:
            if self._closed:
                raise LatchError(grpc.StatusCode.CANCELLED, "the client was closed")
            return self._targets[i % len(self._targets)]

    def _write_start(self) -> int:
        """The member a write starts at now: the leader, when known (and writes go there), else
        the preferred one."""
        with self._lock:
            return self._leader if self._leader is not None and self.writes_to_leader else self._preferred

    def _take_probe(self) -> bool:
        """The turn to let an attempt run on only to learn whether its member answers, if no
        other such attempt of this client runs; ``_end_probe`` gives it back."""
        with self._lock:
            taken, self._probing = not self._probing, True
            return taken

    def _end_probe(self) -> None:
        with self._lock:
            self._probing = False

    def _after_unanswered(self, i: int, target: "_Target") -> int:
        """The member after ``i``, whose ``target`` stopped answering a call and is distrusted
        as the leader for a while (unless a hint put another member in its place meanwhile):
        where a hedged keepalive's second attempt starts, whatever other calls did meanwhile
        (hedges of several sessions at once all leave ``i``)."""
        with self._lock:
            i %= len(self._targets)
            if self._holds(i, target):
                self._failed[i] = time.monotonic()
            return (i + 1) % len(self._targets)

    def _holds(self, i: int, target: "_Target") -> bool:
        """Whether ``target`` is still at ``i`` (the caller holds ``_lock``): a hint may have put
        another member in the place of a learnt one while a call was on it, and what that call
        says is then charged to nobody."""
        return self._targets[i] is target

    def _trusted(self, addr: str) -> Optional[int]:
        """The index of the leader a member named, unless that member failed a call within
        ``DISTRUSTED_FOR`` and has not answered one since."""
        i = self._target_of(addr)
        if i is None:
            return None
        with self._lock:
            failed = self._failed.get(i)
        if failed is not None and time.monotonic() - failed < DISTRUSTED_FOR:
            _log.debug("ignoring a leader hint naming %s, which failed a call just now", addr)
            return None
        return i

    def _answered(self, i: int, target: "_Target", write: bool, named: Optional[str]) -> None:
        """Records who answered (``target``, at ``i``): a read's member becomes the preferred
        one; a write's, the leader unless it named another. A leader named by any answer is where
        writes go next, unless it failed a call within ``DISTRUSTED_FOR``. If a hint put another
        member at ``i`` meanwhile, only the named leader is recorded."""
        with self._lock:
            i %= len(self._targets)
            if self._holds(i, target):
                self._failed.pop(i, None)
                if write:
                    self._leader = i
                else:
                    self._preferred = i
        leader = self._trusted(named) if named is not None and self.writes_to_leader else None
        if leader is not None:
            with self._lock:
                self._leader = leader

    def _wrote(self, response) -> None:
        """Records the revision of an acknowledged write (its answer's header)."""
        revision = response.header.revision if response.HasField("header") else 0
        with self._lock:
            self._written = max(self._written, revision)

    def _behind_own_writes(self, serializable: bool, response) -> bool:
        """Whether a read answered with ``response`` is serializable and below the revision of
        this client's last acknowledged write: then it is asked again linearizably, so that the
        client reads its own writes (a follower may be behind the leader its writes went to)."""
        with self._lock:
            written = self._written
        return serializable and response.header.revision < written

    def _attempts(self, what: str, attempt: Callable[["_Target", Optional[float]], T], *,
                  wait: Optional[float] = 0.0, until: Optional[float] = None,
                  stop: Optional[threading.Event] = None, cap: Optional[float] = None,
                  write: bool = False, start: Optional[int] = None,
                  stay: Optional[threading.Event] = None,
                  hedged: Optional[Callable[["_Target", Optional[float]], grpc.Future]] = None) -> T:
        """Runs ``attempt(target, timeout)`` on one member after another until one answers,
        an error that must not be retried comes back, or the retry budget is spent. An attempt
        returns ``(result, initial metadata)``: a leader the metadata names is where writes go
        next. ``write``: the call starts at the leader, when known (at member ``start`` when
        given), and its answer leaves where reads go as it was.
        ``wait``: how long the call itself may wait on the server (a lock's wait), added to
        each attempt's timeout; ``None`` for no timeout at all. No attempt's timeout passes the
        end of the whole call (its budget, ``retry_budget + wait``). ``until``: a
        ``time.monotonic()`` instant no attempt may outlast (DEADLINE_EXCEEDED after it).
        ``stop``: an event that ends the retries (CANCELLED) when set. ``cap``: the longest any
        one attempt may take (a hedged keepalive's second attempt). ``stay``: an event that,
        once set, makes the next failure end the call, tried on no other member (a hedged
        keepalive's first attempt, once its hedge was granted). ``hedged``: ``attempt`` started
        and not waited for (a unary call's future): an attempt unanswered for ``hedge_after`` is
        then sent to the next member too (``_hedged``)."""
        per_attempt = None if wait is None else self.request_timeout + wait
        if cap is not None:
            per_attempt = cap if per_attempt is None else min(per_attempt, cap)
        budget = math.inf if wait is None else max(self.retry_budget + wait, per_attempt)
        deadline = time.monotonic() + budget
        if until is not None:
            deadline = min(deadline, until)
        backoff = Backoff()
        # Whether an attempt went unanswered in time: a write may then take effect yet.
        unsettled = False
        # The latest failure a member answered itself (named its cluster): it says why, where a
        # connection never made does not, so a call ending on one of those leads with it.
        last_answer: Optional[LatchError] = None
        # The endpoints a member of another cluster answered at, in this call.
        foreign_at: set = set()
        with self._lock:
            # A write routed to the leader (unless told to keep writes on the endpoints given).
            to_leader = write and self.writes_to_leader
            if start is not None:
                i = start % len(self._targets)
            else:
                i = self._leader if to_leader and self._leader is not None else self._preferred
        hinted = False
        while True:
            target = self.target(i)
            with self._lock:
                n = len(self._targets)
            timeout = per_attempt
            if deadline < math.inf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LatchError(grpc.StatusCode.DEADLINE_EXCEEDED, f"{what}: out of time", target.addr)
                timeout = left if timeout is None else min(timeout, left)
            failed_at = i % max(n, 1)
            # Whether the hedged attempts dropped a failure that left the write unsettled.
            dropped = False
            try:
                if hedged is not None and self.hedge_after is not None and n > 1 and timeout is not None:
                    outcome, ended_at, dropped = self._hedged(hedged, failed_at, target, timeout, write=write)
                    if ended_at is not None:
                        i, target = ended_at
                        failed_at = i
                    if isinstance(outcome, grpc.RpcError):
                        raise outcome
                    result, metadata = outcome
                else:
                    result, metadata = attempt(target, timeout)
            except grpc.RpcError as e:
                error = LatchError.from_rpc(e, target.addr)
                # An attempt dropped while the other went on may have been cut after it went out.
                unsettled = unsettled or (write and (error.unsettled or dropped))
                named = _cluster_id(trailing(e, CLUSTER_ID_METADATA))
                # A member of another cluster refused the call: no member of ours, whatever it
                # says of its own leader; the call goes on to the next member.
                foreign = self._cluster.learn(named)
                if (error.code not in RETRYABLE and not foreign) or (stay is not None and stay.is_set()):
                    if write and not _settled(e):
                        # Refused before proposing, or by no member: an attempt unanswered, or
                        # still under way when the hedge was refused, may still take effect
                        # (and so the refusal is no "nothing was changed").
                        error.unsettled = error.unsettled or unsettled
                        error.over_limit = error.over_limit and not error.unsettled
                    raise error from None
                if named is not None and not foreign:
                    foreign_at.discard(target.addr)  # the address's latest answer is ours
                if foreign:
                    foreign_at.add(target.addr)
                    with self._lock:
                        known = {t.addr for t in self._targets}
                    if known <= foreign_at:
                        # Every endpoint known is another cluster's member: retrying cannot reach
                        # this one.
                        every = LatchError(error.code,
                                           f"{what}: every endpoint this client knows ({', '.join(sorted(known))}) "
                                           f"answered as a member of another cluster than {self._cluster.id}, the "
                                           f"one it talks to, and did nothing: check the endpoints (and cluster_id) "
                                           f"({error.message})", target.addr)
                        every.unsettled = unsettled
                        raise every from None
                hint = None if foreign else _endpoint_or_none(trailing(e, LEADER_ADDR_METADATA))
                # Named our cluster: the member itself answered (the connection is fine).
                answered = named is not None and not foreign
                if answered:
                    last_answer = error
                with self._lock:
                    ours = self._holds(failed_at, target)
                    if not hint and not answered and ours:
                        # A member that answered, or named the leader, is there; one that did not may not be.
                        self._failed[failed_at] = time.monotonic()
                hinted_at = self._trusted(hint) if hint and hint != target.addr else None
                if hinted_at is not None:
                    # Straight to the leader named, the first time; members that keep naming
                    # each other (an election under way) get the backoff too.
                    i, pause = hinted_at, backoff.pause() if hinted else 0.0
                    hinted = True
                else:
                    i, pause, hinted = (i + 1) % max(n, 1), backoff.pause(), False
                if to_leader:
                    # The member that failed a write is no longer taken for the leader; one
                    # named instead is (a leader another call learnt meanwhile stays). Reads
                    # stay where they were.
                    with self._lock:
                        if hinted:
                            self._leader = i
                        elif self._leader == failed_at and ours:
                            self._leader = None
                if time.monotonic() + pause >= deadline:
                    lead, also = error, ""
                    never_sent = "failed to connect" in error.message.lower()
                    if never_sent and last_answer is not None:
                        lead, also = last_answer, f"; last tried {error.endpoint}: {error.message}"
                    gave_up = LatchError(lead.code, f"{what}: {lead.message} (retried for {budget:.1f} s{also})",
                                         lead.endpoint, lead.compact_revision)
                    gave_up.unsettled = unsettled
                    raise gave_up from None
                if stop is None:
                    time.sleep(pause)
                elif stop.wait(pause):
                    raise LatchError(grpc.StatusCode.CANCELLED, f"{what}: stopped", target.addr) from None
                if stay is not None and stay.is_set():
                    raise error from None  # told to stay while it paused: no other member
                continue
            named = _cluster_id(_metadata_value(metadata, CLUSTER_ID_METADATA))
            if self._cluster.learn(named):
                # Sent before the client knew its cluster (naming none), it reached a member of
                # another one, which served it: perhaps with effect there, and not this cluster's
                # answer. INTERNAL, which no caller takes for its own cluster's verdict.
                raise LatchError(grpc.StatusCode.INTERNAL,
                                 f"{what}: answered by a member of cluster {named}, not of cluster "
                                 f"{self._cluster.id} that this client talks to (its endpoints name members "
                                 f"of two clusters; give it cluster_id=); the request may have taken effect there",
                                 target.addr)
            self._answered(i, target, to_leader, _named(metadata))
            return result

    def _call(self, service: str, method: str, request, *, wait: Optional[float] = 0.0,
              until: Optional[float] = None, stop: Optional[threading.Event] = None, write: bool = False):
        """A read (one that changes nothing): on the member reads go to; a ``write``, see
        ``_write``. One that waits on nothing of the server's is hedged (``hedge_after``)."""
        hedged = None
        if wait == 0.0:
            def hedged(t, timeout):
                return _unary_future(t, service, method, request, timeout)
        return self._attempts(f"{service}.{method}", lambda t, timeout: _unary(t, service, method, request, timeout),
                              wait=wait, until=until, stop=stop, write=write, hedged=hedged)

    def _hedged(self, start: Callable[["_Target", Optional[float]], grpc.Future], i: int, target: "_Target",
                timeout: float, *, write: bool = False):
        """One attempt at ``target`` (member ``i``), sent to the member after it too once
        unanswered for ``hedge_after`` (at most half of ``timeout``); both end by ``timeout``.
        Returns how the call ended — the first answer, ``(result, initial metadata)``, or the
        failure (a ``grpc.RpcError``) the caller's retries go on from — with ``(index, member)``
        of the one after when it came from that one (else None), as the Rust client's calls do:
        a failure that retrying cannot mend (NOT_FOUND, say) ends the call at once, whichever
        attempt met it; a retryable one leaves the other attempt to wait for; an answer that a
        write was applied before, its data not kept, waits for the other attempt's whole answer
        and is what the call ends with when that one fails. The attempt still going when the
        call ends is cancelled; a write carries its request id to both, so it applies once. A
        ``write``'s refusal that settles nothing (not marked ``SETTLED_METADATA``: made before
        proposing, on the member's own limits) waits for the other attempt too, which may still
        take effect, or has: its answer decides, and the refusal ends the call only if that one
        fails. Third, whether a failure that left the write unsettled (cut, timed out) was dropped
        while the other attempt went on, so that the call's retries (or the refusal) still say
        so."""
        ended = threading.Event()
        first = start(target, timeout)
        first.add_done_callback(lambda _: ended.set())
        after = min(self.hedge_after, timeout / 2)
        flights = [(first, None)]
        hedging = False
        # An answer that the write was applied before, its data not kept, held back while the
        # other attempt may still bring the whole answer; with the attempt it came from.
        applied_before = None
        # A write's refusal that settles nothing, held while the other attempt may answer.
        refused = None
        dropped = False
        try:
            if not ended.wait(after):
                with self._lock:
                    j = (i + 1) % len(self._targets)
                    hedging = self._hedging < MAX_HEDGES
                    self._hedging += hedging
                other = self.target(j)
                if hedging and other is not target:
                    _log.debug("no answer from %s within %.1f s; sending the call to %s too", target.addr,
                               after, other.addr)
                    second = start(other, max(timeout - after, 0.001))
                    second.add_done_callback(lambda _: ended.set())
                    flights.append((second, (j, other)))
            while True:
                ended.wait()
                ended.clear()
                for flight, at in list(flights):
                    if not flight.done():
                        continue
                    flights.remove((flight, at))
                    failure = flight.exception()
                    if failure is None:
                        if at is not None:
                            # The first went unanswered: not taken for the leader on a member's
                            # word for a while, lest every write wait for it again.
                            self._after_unanswered(i, target)
                        return (flight.result(), flight.initial_metadata()), at, False
                    if flights and trailing(failure, APPLIED_REVISION_METADATA) is not None:
                        applied_before = (failure, at)
                        continue
                    foreign = self._cluster.foreign(trailing(failure, CLUSTER_ID_METADATA))
                    if failure.code() in RETRYABLE or foreign:
                        dropped = dropped or (not foreign and LatchError.from_rpc(failure, "").unsettled)
                        if flights:
                            continue
                        # The other attempt's refusal, held, ends the call rather than this.
                        ending = refused or (failure, at)
                    elif write and not _settled(failure):
                        refused = refused or (failure, at)
                        if flights:
                            continue
                        ending = refused
                    else:
                        ending = (failure, at)
                    # That the write took effect, when the other attempt said so, comes first.
                    if applied_before is not None:
                        return applied_before[0], applied_before[1], False
                    return ending[0], ending[1], dropped
        finally:
            for flight, _ in flights:
                flight.cancel()
            if hedging:
                with self._lock:
                    self._hedging -= 1

    def _write(self, service: str, method: str, request, *, wait: Optional[float] = 0.0,
               until: Optional[float] = None, stop: Optional[threading.Event] = None):
        """A write (its request id makes a retry safe): sent first to the leader, when known;
        its revision becomes the floor of this client's serializable reads."""
        try:
            response = self._call(service, method, request, wait=wait, until=until, stop=stop, write=True)
        except LatchError as e:
            if e.applied_revision is not None:
                # Applied, its answer's data not kept: its revision is a floor all the same.
                with self._lock:
                    self._written = max(self._written, e.applied_revision)
            if e.unsettled:
                # An attempt left unanswered may have been applied, or be yet, whatever the
                # last one met (a timed-out write's ambiguity, etcd's too).
                said = LatchError(e.code, f"{e.message}; the write may still take effect: read before sending "
                                  f"it again", e.endpoint, e.compact_revision, e.applied_revision, e.txn_succeeded,
                                  e.over_limit)
                said.unsettled = True
                raise said from None
            raise
        self._wrote(response)
        return response

    # -- keys ----------------------------------------------------------------------------------

    def get(self, key: Bytes, *, serializable: bool = False, revision: int = 0) -> Optional[kv_pb2.KeyValue]:
        """The kv of ``key``, or None. Linearizable unless ``serializable`` (the answering
        member's applied state); ``revision`` reads the past (OUT_OF_RANGE once compacted)."""
        kvs = self.range(key, serializable=serializable, revision=revision).kvs
        return kvs[0] if kvs else None

    def get_prefix(self, prefix: Bytes, *, serializable: bool = False) -> List[kv_pb2.KeyValue]:
        """Every kv whose key starts with ``prefix``, in key order (every kv for ``""``), as of
        one revision, however many answers that takes: a member answers at most
        ``--max-response-bytes`` at a time and says ``more``, so the rest is read page by page,
        each from the key after the last so far, at the revision the first page was read at (a
        serializable page that reaches a member behind it is asked again linearizably)."""
        key, end = prefix_range(prefix)
        page = self.range(key, end, serializable=serializable)
        kvs, revision = list(page.kvs), page.header.revision
        # A page always holds its first kv, so each one moves the start on. (A member takes a
        # range's start one byte longer than a key: the key after the longest.)
        while page.more and page.kvs:
            start = page.kvs[-1].key + b"\0"
            try:
                page = self.range(start, end, serializable=serializable, revision=revision)
            except LatchError as e:
                if not (serializable and e.code == grpc.StatusCode.OUT_OF_RANGE and e.compact_revision is None):
                    raise
                page = self.range(start, end, revision=revision)
            kvs.extend(page.kvs)
        return kvs

    def range(self, key: Bytes, range_end: Bytes = b"", *, limit: int = 0, serializable: bool = False,
              keys_only: bool = False, count_only: bool = False, revision: int = 0) -> kv_pb2.RangeResponse:
        """The keys in ``[key, range_end)`` (just ``key`` when ``range_end`` is empty; every key
        from ``key`` on when it is ``b"\\0"``)."""
        request = kv_pb2.RangeRequest(key=as_bytes(key), range_end=as_bytes(range_end, "range_end"),
                                      limit=limit, serializable=serializable, keys_only=keys_only,
                                      count_only=count_only, revision=revision)
        with self._lock:
            if serializable and 0 < revision <= self._written:
                # A member behind the client's own write would refuse the revision as one it
                # has not reached: asked linearizably from the start.
                request.serializable = False
        response = self._call("kv", "Range", request)
        if revision == 0 and self._behind_own_writes(serializable, response):
            request.serializable = False
            response = self._call("kv", "Range", request)
        return response

    def put(self, key: Bytes, value: Bytes, *, session: str = "", prev_kv: bool = False,
            sequential: bool = False) -> kv_pb2.PutResponse:
        """Sets ``key`` to ``value``: ephemeral when bound to ``session`` (deleted when it
        ends); with ``sequential``, at ``key`` followed by a number that grows with every such
        put (``response.key``). ``response.header.revision`` is the write's revision."""
        request = kv_pb2.PutRequest(key=as_bytes(key), value=as_bytes(value, "value"), session=session,
                                    prev_kv=prev_kv, sequential=sequential, request_id=request_id())
        return self._write("kv", "Put", request)

    def delete(self, key: Bytes, *, prefix: bool = False) -> int:
        """Deletes ``key`` (every key starting with it, with ``prefix``: every key for ``""``);
        how many were deleted."""
        k, end = _key_range(key, prefix)
        request = kv_pb2.DeleteRangeRequest(key=k, range_end=end, request_id=request_id())
        return self._write("kv", "DeleteRange", request).deleted

    def txn(self, txn: Union[Txn, kv_pb2.TxnRequest]) -> kv_pb2.TxnResponse:
        """Runs a transaction atomically; ``succeeded`` tells which branch ran."""
        request = kv_pb2.TxnRequest()
        request.CopyFrom(txn.request if isinstance(txn, Txn) else txn)
        if not request.request_id:
            request.request_id = request_id()
        return self._write("kv", "Txn", request)

    def compact(self, revision: int) -> int:
        """Forgets the history at and below ``revision``; returns the compact revision."""
        request = kv_pb2.CompactionRequest(revision=revision, request_id=request_id())
        return self._write("kv", "Compact", request).compact_revision

    def status(self) -> cluster_pb2.StatusResponse:
        """The cluster as the answering member sees it: leader, term, members."""
        return self._call("cluster", "Status", cluster_pb2.StatusRequest())

    def replace_member(self, member: int) -> int:
        """Replaces ``member``, which lost its data dir and is stopped: the leader makes it a
        learner, so that it may start again on an empty data dir, catch up, and vote again. The
        raft log index of the change (0: it was a learner already); safe to retry."""
        return self._write("cluster", "ReplaceMember", cluster_pb2.ReplaceMemberRequest(member=member)).index

    def add_member(self, member: int, peer_addr: str) -> cluster_pb2.AddMemberResponse:
        """Adds ``member`` to the cluster as a learner at ``peer_addr``; it is then started with the
        answer's ``initial_cluster`` (and ``initial_cluster_token``, and ``peers`` as ``--peers``
        when not empty), its id and ``--peer-addr``, catches up, and votes once it has. The answer's ``index`` is the raft log index of the
        change (0: added already at that address); safe to retry."""
        return self._write("cluster", "AddMember", cluster_pb2.AddMemberRequest(member=member, peer_addr=peer_addr))

    def remove_member(self, member: int) -> int:
        """Removes ``member`` from the cluster for good, running or not: its peers drop its
        messages and it stops. The raft log index of the change (0: it was removed already);
        safe to retry."""
        return self._write("cluster", "RemoveMember", cluster_pb2.RemoveMemberRequest(member=member)).index

    def save_snapshot(self, path: Union[str, os.PathLike], *, serializable: bool = False) -> kv_pb2.ResponseHeader:
        """Writes the whole replicated state of one member (the first that answers) to ``path``,
        as ``latch snapshot save`` does: into ``path`` + ".part", synced, then renamed to
        ``path`` once the member sent all of it (``latch snapshot status`` checks a file,
        ``latch snapshot restore`` makes a new cluster from one). By default the member first
        catches up with the leader, so the file holds every write acknowledged before the call;
        ``serializable`` takes its state as it stands. Returns the member's header: its id, and
        the snapshot's revision. A stream that breaks part way leaves nothing and raises."""
        path = os.fspath(path)
        part = path + ".part"
        start = self.preferred()
        last: Optional[LatchError] = None
        for k in range(len(self.endpoints)):
            target = self.target(start + k)
            call = target.stub("maintenance", "streams").Snapshot(
                maintenance_pb2.SnapshotRequest(serializable=serializable))
            header, whole = None, False
            try:
                with open(part, "wb") as out:
                    for response in call:
                        header = header or response.header
                        if response.last:
                            whole = True
                            break
                        out.write(response.blob)
                    out.flush()
                    os.fsync(out.fileno())
            except grpc.RpcError as e:
                os.remove(part)
                last = LatchError.from_rpc(e, target.addr)
                if header is not None or e.code() not in RETRYABLE:
                    raise last from None
                continue  # no part of it came: another member may serve it
            except BaseException:
                if os.path.exists(part):
                    os.remove(part)
                raise
            finally:
                call.cancel()
            if not whole:
                os.remove(part)
                raise LatchError(grpc.StatusCode.UNAVAILABLE,
                                 "the member's snapshot stream ended before the end of the file: take it again",
                                 target.addr)
            os.replace(part, path)
            directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            return header
        raise last or LatchError(grpc.StatusCode.UNAVAILABLE, "no member to take a snapshot from")

    # -- sessions ------------------------------------------------------------------------------

    def session(self, ttl: float = 10.0, *, name: str = "", grace: Optional[float] = None):
        """A new session of ``ttl`` seconds, kept alive by a background thread until closed
        (a context manager: closed on exit)."""
        from .session import Session

        return Session.create(self, ttl, name=name, grace=grace)

    def session_info(self, session_id: str) -> session_pb2.SessionInfo:
        """What the cluster knows of a session; NOT_FOUND once it ended."""
        return self._call("session", "Get", session_pb2.GetSessionRequest(id=session_id)).session

    # -- locks ---------------------------------------------------------------------------------

    def acquire(self, name: str, session_id: str, *, shared: bool = False, wait: Optional[float] = 0.0,
                lock_delay: Optional[float] = None) -> Optional[lock_pb2.Sequencer]:
        """Asks for lock ``name`` for the session; its sequencer, or None if not granted within
        ``wait`` seconds (0: try once; None: wait as long as it takes). ``lock_delay``: seconds
        the lock stays ungranted after this holder's session expires (0 … 60; 5 by default).

        None means a member answered "not acquired" (the lock is busy). An acquire no member
        answered raises instead (the cluster is unreachable): ``wait`` counts from this call, an
        attempt sent again (on another member, after a failure) asks the member to wait only what
        is left of it, no attempt outlasts the call's retry budget, and none is sent once ``wait``
        ran out; the acquire is then withdrawn and, unless the withdrawal finds it granted (its
        sequencer is returned), fails: DEADLINE_EXCEEDED naming the wait and the last attempt's
        error, or that error itself when the retry budget ran out first.

        An acquire that fails after its request may have been queued (a member cut off, the
        retry budget spent, the wait out) or is interrupted is withdrawn before the error
        leaves, or in the background (``_withdraw``). A grant that background withdrawal finds,
        after the caller was answered, stays the session's (and is logged as a warning): acquire
        again to get it back (the server answers a session's own hold), else it is released when
        the session ends. It is never released for this call, which knows nothing of the
        session's other acquires: one sent again meanwhile may hold it already. (``Session.lock``
        releases it: its turn at the name keeps the session's next lock of the name waiting.)"""
        return self._acquire(name, session_id, shared=shared, wait=wait, lock_delay=lock_delay, turn=None)

    def _acquire(self, name: str, session_id: str, *, shared: bool, wait: Optional[float],
                 lock_delay: Optional[float], turn) -> Optional[lock_pb2.Sequencer]:
        """``acquire``, sent in a session's ``turn`` at the name (``Session.lock``; a
        ``latch.lock._Turn``) when given. Should its withdrawal go on in the background, the
        turn goes with it (``_withdraw``) and ``turn.withdrawing`` says so; else the caller
        keeps it."""
        request = lock_pb2.AcquireRequest(name=name, session_id=session_id,
                                          mode=lock_pb2.SHARED if shared else lock_pb2.EXCLUSIVE,
                                          request_id=request_id())
        wait = seconds(wait, "wait", none_ok=True)
        if wait is None:
            request.wait_forever = True
        elif wait > 0:
            request.wait_ms = max(1, round(wait * 1000))  # 0 would mean "try once"
        if lock_delay is not None:
            request.lock_delay_ms = round(seconds(lock_delay, "lock_delay") * 1000)
        # The end of the time allowed, fixed once: each attempt waits only what is left of it.
        until = time.monotonic() + wait if wait else None
        last: List[Optional[LatchError]] = [None]  # the last attempt's failure

        def attempt(target: _Target, timeout: Optional[float]):
            if until is not None:
                left = until - time.monotonic()
                if left <= 0 and last[0] is not None:  # the first attempt goes out however short the wait
                    error = last[0]
                    raise _WaitOver(LatchError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"lock.Acquire {name!r}: no member answered within the wait of {wait:g} s "
                        f"(the last attempt: {error.code.name}: {error.message})", error.endpoint))
                left = max(left, 0.001)
                request.wait_ms = max(1, round(left * 1000))
                # The member answers "not acquired" after ``left``; the attempt's timeout (within
                # the call's budget already) gives it the request timeout beyond that, no more.
                timeout = min(timeout, self.request_timeout + left)
            try:
                return _unary(target, "lock", "Acquire", request, timeout)
            except grpc.RpcError as e:
                last[0] = LatchError.from_rpc(e, target.addr)
                raise

        def send():
            response = self._attempts("lock.Acquire", attempt, wait=wait, write=True)
            self._wrote(response)
            return response

        response, found = self._call_or_withdraw("lock", "Acquire", name, request, wait, send=send, turn=turn)
        if found is not None:
            return found.sequencer  # granted after all
        return response.sequencer if response is not None and response.acquired else None

    def _call_or_withdraw(self, service: str, method: str, name: str, request, wait: Optional[float], *,
                          send: Optional[Callable[[], object]] = None, turn=None):
        """Sends an Acquire or a Campaign (by ``send()``; by default ``_call`` with ``wait``):
        ``(response, None)``, or when the call failed after its request may have been queued,
        ``(None, answer)`` with the answer of its withdrawal (``_withdraw``) when that says it
        was granted after all. Else the failure is raised, once withdrawn: a call whose time
        allowed ran out (``_WaitOver``) or whose retries failed unanswered (UNAVAILABLE,
        DEADLINE_EXCEEDED) is never "not granted", as no member said so. A failure that settles
        the request (``SETTLED``, a member's own limit) is raised without a withdrawal. ``turn``:
        the session's turn at the lock name the Acquire was sent in (``_withdraw``)."""
        try:
            return (send() if send is not None else self._write(service, method, request, wait=wait)), None
        except _WaitOver as e:
            error = e.error
        except LatchError as e:
            if (e.code in SETTLED or e.over_limit) and not e.unsettled:
                raise
            error = e
        except BaseException:  # interrupted (KeyboardInterrupt) during or between attempts
            self._withdraw(service, name, request.request_id, first_here=False, turn=turn)
            raise
        found = self._withdraw(service, name, request.request_id, first_here=True, turn=turn)
        granted = found is not None and (found.held if service == "lock" else found.HasField("leader"))
        if granted:
            return None, found
        raise error

    def _withdraw(self, service: str, name: str, acquire_id: str, *, first_here: bool, turn=None):
        """Gives up the acquire (``service`` "lock") or campaign ("election") sent under
        ``acquire_id`` (Lock.Withdraw, Election.Withdraw): a request given up while its outcome
        is unknown (a member cut off, the retry budget spent, an interrupt) leaves no wait
        behind to be granted to a session whose caller was told it did not get it. With
        ``first_here``, one try of at most ``request_timeout`` before returning (so that a
        ``with Client(...)`` block that ends on the error does not close the client first);
        then, or at once, a daemon thread retries for about a minute while the client is open.
        A grant that came first is kept, as the member's own withdrawal keeps it: the first
        try's answer is returned (its ``held``/``leader`` says so; None if it did not answer),
        for the caller to hand the grant on instead of the error.

        A lock's grant found by the background retries, after the caller was answered, nobody
        holds a ``Lock`` of. Sent in a session's ``turn`` at the name (``Session.lock``), it is
        released (Release with its sequencer) in that turn, which the thread holds until the
        withdrawal settled and gives back only then: the session's next lock of the name waits
        for it, so it cannot re-enter the hold that release ends. Without a turn (a bare
        ``acquire``), it is kept and logged as a warning: the session holds it until it releases
        it (acquiring it again gets it back) or ends, as the caller may have acquired again
        meanwhile, which the member answers with this same hold."""
        if service == "lock":
            request = lock_pb2.WithdrawRequest(name=name, request_id=acquire_id)
        else:
            request = election_pb2.WithdrawCandidacyRequest(name=name, request_id=acquire_id)

        answer = None

        def once(until: Optional[float]) -> bool:
            nonlocal answer
            try:
                answer = self._write(service, "Withdraw", request, until=until)
                return True
            except LatchError as e:
                return e.code in WITHDRAWAL_REFUSED or self.closed
            except Exception:  # noqa: BLE001 - the client closed under the call, say
                return self.closed

        if first_here:
            try:
                if once(time.monotonic() + self.request_timeout):
                    return answer
            except BaseException:  # interrupted (KeyboardInterrupt): the retries go on in the background
                self._withdraw(service, name, acquire_id, first_here=False, turn=turn)
                raise

        def retry():
            try:
                pause = WITHDRAW_BACKOFF
                for _ in range(WITHDRAW_ATTEMPTS):
                    time.sleep(pause)
                    pause *= 2
                    if self.closed:
                        return
                    if once(None):
                        if service == "lock" and answer is not None and answer.held:
                            if turn is None:
                                _log.warning("lock %r: a request given up had been granted first (generation "
                                             "%d): its session holds it until it releases it or ends (acquire "
                                             "it again to get it back)", name, answer.sequencer.generation)
                            else:
                                self._release_late_grant(name, answer.sequencer, turn)
                        return
                _log.warning("%s %r: a request given up could not be withdrawn; its session's end will withdraw "
                             "it", service, name)
            finally:
                if turn is not None:
                    turn.give_back()

        if turn is not None:
            turn.hand_to_withdrawal()  # before the thread starts: it may give the turn back at once
        try:
            threading.Thread(target=retry, name=f"latch-withdraw-{name}", daemon=True).start()
        except BaseException:
            if turn is not None:
                turn.give_back()  # no withdrawal holds it (the caller's give-back does nothing)
            raise
        return None

    def _release_late_grant(self, name: str, sequencer: lock_pb2.Sequencer, turn) -> None:
        """Releases a grant a ``Session.lock``'s background withdrawal found, in its ``turn``;
        a release that fails stays noted there, for the session's next lock of the name to send
        again first."""
        try:
            turn.release(self, sequencer.token)
        except Exception as e:  # noqa: BLE001 - a thread has no caller to raise to
            _log.warning("lock %r: releasing a request given up, granted first (generation %d), failed: %s; the "
                         "session's next lock of the name sends the release again", name, sequencer.generation, e)
            return
        _log.debug("lock %r: a request given up had been granted first (generation %d): released", name,
                   sequencer.generation)

    def release(self, sequencer: str) -> None:
        """Releases the hold that ``sequencer`` (its token) names; FAILED_PRECONDITION when it
        holds nothing."""
        self._write("lock", "Release", lock_pb2.ReleaseRequest(sequencer=sequencer, request_id=request_id()))

    def check_sequencer(self, sequencer: str) -> lock_pb2.CheckSequencerResponse:
        """Whether ``sequencer`` still holds its lock (``valid``), and if not, ``reason``."""
        return self._call("lock", "CheckSequencer", lock_pb2.CheckSequencerRequest(sequencer=sequencer))

    def describe_lock(self, name: str) -> Optional[lock_pb2.LockInfo]:
        """Holders, waiters in order and lock-delay of ``name``; None when nobody holds,
        awaits or delays it."""
        response = self._call("lock", "DescribeLock", lock_pb2.DescribeLockRequest(name=name))
        return response.lock if response.HasField("lock") else None

    def list_locks(self, prefix: str = "") -> List[lock_pb2.LockInfo]:
        """The locks whose names begin with ``prefix``, in name order: every page of them."""
        return self._every_page("lock", "ListLocks", lock_pb2.ListLocksRequest(prefix=prefix), "locks")

    def list_elections(self, prefix: str = "") -> List[election_pb2.ElectionInfo]:
        """The elections whose names begin with ``prefix``, in name order, each with its leader,
        candidates and lock-delay: every page of them."""
        return self._every_page("election", "List", election_pb2.ListElectionsRequest(prefix=prefix), "elections")

    def _every_page(self, service: str, method: str, request, items: str) -> list:
        """Every page of a list paged by name: each asked with ``start_after`` the last name of
        the page before, and read at its own revision (as a paged list in etcd)."""
        out: list = []
        while True:
            page = self._call(service, method, request)
            found = list(getattr(page, items))
            if out and found:
                _moved_on(request.start_after, found[0].name)
            out.extend(found)
            if not found or not page.more:
                return out
            request.start_after = found[-1].name

    def election(self, name: str):
        """Election ``name``: campaign, proclaim, leader, observe, resign."""
        from .election import Election

        return Election(self, name)

    # -- watches -------------------------------------------------------------------------------

    def watch(self, key: Bytes, range_end: Bytes = b"", *, prefix: bool = False, start_revision: int = 0,
              prev_kv: bool = False, no_put: bool = False, no_delete: bool = False,
              on_compacted: str = "error", progress_notify: bool = False, target: str = "keys"):
        """A watch of ``key`` (of every key starting with it, with ``prefix``: every key for
        ``""``; or of ``[key, range_end)``) from ``start_revision`` (0: from now). Iterate it for
        ``WatchBatch``es; it resumes by itself on another member after a failure, from the
        revision after the last it delivered. Cancel it with ``cancel()`` (or ``with``)."""
        from .watch import Watch

        if prefix:
            k, end = prefix_range(key)
        else:
            k, end = as_bytes(key), as_bytes(range_end, "range_end")
        return Watch(self, k, end, start_revision=start_revision, prev_kv=prev_kv, no_put=no_put,
                     no_delete=no_delete, on_compacted=on_compacted, progress_notify=progress_notify,
                     target=target)

    # -- the registry --------------------------------------------------------------------------

    def register(self, service: str, instance_id: str, address: str, port: int, *,
                 tags: Iterable[str] = (), meta: Optional[Dict[str, str]] = None, weight: int = 0,
                 session: str = "", check: Optional[registry_pb2.HealthCheck] = None) -> registry_pb2.InstanceInfo:
        """Registers an instance (bound to ``session`` when given: gone when it ends)."""
        instance = registry_pb2.ServiceInstance(service=service, id=instance_id, address=address, port=port,
                                                tags=list(tags), meta=meta or {}, weight=weight)
        request = registry_pb2.RegisterRequest(instance=instance, session=session, request_id=request_id())
        if check is not None:
            request.check.CopyFrom(check)
        return self._write("registry", "Register", request).instance

    def deregister(self, service: str, instance_id: str) -> None:
        self._write("registry", "Deregister",
                   registry_pb2.DeregisterRequest(service=service, id=instance_id, request_id=request_id()))

    def heartbeat(self, service: str, instance_id: str, output: str = "") -> int:
        """Passes an instance's TTL check (``Check.ttl``) for another TTL; its health after
        (``registry_pb2.PASSING`` or ``CRITICAL``)."""
        request = registry_pb2.HeartbeatRequest(service=service, id=instance_id, output=output,
                                                request_id=request_id())
        return self._write("registry", "Heartbeat", request).health

    def _read_page(self, method: str, request):
        """A page of the registry; asked again linearizably when serializable and behind this
        client's own writes."""
        page = self._call("registry", method, request)
        if self._behind_own_writes(request.serializable, page):
            request.serializable = False
            page = self._call("registry", method, request)
        return page

    def services(self, *, serializable: bool = False) -> List[registry_pb2.ServiceSummary]:
        """Every service with its instance counts and tags, in the order of the registry's
        keys (see ``instances``); read a page at a time, as the members cut the answer."""
        services: List[registry_pb2.ServiceSummary] = []
        while True:
            after = services[-1].name if services else ""
            request = registry_pb2.ServicesRequest(serializable=serializable, start_after=after)
            page = self._read_page("Services", request)
            if after and page.services:
                # Services follow one another as their keys "service/..." do.
                _moved_on(after + "/", page.services[0].name + "/")
            services.extend(page.services)
            if not page.more or not page.services:
                return services

    def instances(self, service: str = "", *, tag: str = "", include_critical: bool = False,
                  serializable: bool = False) -> List[registry_pb2.InstanceInfo]:
        """The instances of ``service`` (all services when empty): the passing ones, unless
        ``include_critical``. In the order of their keys ``service/id`` (``web-a/x`` before
        ``web/x``: '-' sorts before '/'); read a page at a time as the members cut the answer,
        each page at its own revision."""
        instances: List[registry_pb2.InstanceInfo] = []
        while True:
            last = instances[-1].instance if instances else None
            request = registry_pb2.ListRequest(service=service, tag=tag, include_critical=include_critical,
                                               serializable=serializable,
                                               start_after=f"{last.service}/{last.id}" if last else "")
            page = self._read_page("List", request)
            if last is not None and page.instances:
                first = page.instances[0].instance
                _moved_on(request.start_after, f"{first.service}/{first.id}")
            instances.extend(page.instances)
            if not page.more or not page.instances:
                return instances
