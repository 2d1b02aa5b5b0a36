"""Elections, built on locks: a campaign waits in the FIFO queue of the election's exclusive lock;
the holder leads and publishes a value. A leadership carries a sequencer like a lock's: fence
what the leader writes with ``leadership.sequencer.token``."""

import time
from typing import Iterator, Optional

import grpc

from .client import RETRYABLE, Backoff, request_id, seconds
from .errors import LatchError
from .txn import Bytes, as_bytes
from .v1 import election_pb2


class Election:
    def __init__(self, client, name: str):
        self.client = client
        self.name = name

    def campaign(self, session, value: Bytes, *, lock_delay: Optional[float] = None) -> election_pb2.Leadership:
        """Waits until ``session`` (a Session or its id) leads, then returns the leadership.
        A session that leads already gets its leadership back. A campaign that fails after it
        may have been queued, or is interrupted, is withdrawn (as ``Client.acquire`` is)."""
        request = election_pb2.CampaignRequest(name=self.name, session_id=_session_id(session),
                                               value=as_bytes(value, "value"), request_id=request_id())
        if lock_delay is not None:
            request.lock_delay_ms = round(seconds(lock_delay, "lock_delay") * 1000)
        response, found = self.client._call_or_withdraw("election", "Campaign", self.name, request, None)
        return (found if response is None else response).leader

    def proclaim(self, leadership: election_pb2.Leadership, value: Bytes) -> None:
        """Publishes a new value; FAILED_PRECONDITION unless the leadership still leads."""
        request = election_pb2.ProclaimRequest(sequencer=leadership.sequencer.token, value=as_bytes(value, "value"),
                                               request_id=request_id())
        self.client._write("election", "Proclaim", request)

    def leader(self) -> Optional[election_pb2.Leadership]:
        """The current leadership, or None when nobody leads. Linearizable."""
        try:
            return self.client._call("election", "Leader", election_pb2.LeaderRequest(name=self.name)).leader
        except LatchError as e:
            if e.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def describe(self) -> Optional[election_pb2.ElectionInfo]:
        """The leader, the candidates waiting in order (the head leads next) and the lock-delay;
        None when nobody leads, campaigns or delays. Linearizable."""
        response = self.client._call("election", "Describe", election_pb2.DescribeElectionRequest(name=self.name))
        return response.election if response.HasField("election") else None

    def resign(self, leadership: election_pb2.Leadership) -> None:
        """Gives up leadership; the next candidate leads at once."""
        self.client._write("election", "Resign",
                          election_pb2.ResignRequest(sequencer=leadership.sequencer.token, request_id=request_id()))

    def observe(self) -> Iterator[Optional[election_pb2.Leadership]]:
        """The current leadership, then every change of leader or value (None while nobody
        leads). Moves to another member when the one it reads from fails; a change seen again
        there is not repeated. The generator ends when closed (``close()``)."""
        last, last_revision = _NOTHING, 0
        backoff = Backoff()
        i = self.client.preferred()
        while True:
            target = self.client.target(i)
            call = target.stub("election", "streams").Observe(election_pb2.ObserveRequest(name=self.name))
            try:
                for response in call:
                    backoff.reset()
                    if response.header.revision < last_revision:
                        continue  # a member behind the last one: what it says was seen already
                    last_revision = response.header.revision
                    leadership = response.leader if response.HasField("leader") else None
                    seen = None if leadership is None else leadership.SerializeToString(deterministic=True)
                    if seen != last:
                        last = seen
                        yield leadership
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE:
                    raise LatchError.from_rpc(e, target.addr) from None
            finally:
                call.cancel()
            i += 1
            time.sleep(backoff.pause())


_NOTHING = object()


def _session_id(session) -> str:
    return session if isinstance(session, str) else session.id
