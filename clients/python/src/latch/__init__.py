"""The Python client of Latch, a coordination service with a Raft-replicated key-value core.

    import latch

    with latch.Client(["127.0.0.1:7379"]) as client:
        client.put("greeting", "hello")
        print(client.get("greeting").value)          # b'hello'
        with client.session(ttl=10) as session:
            with session.lock("jobs/nightly") as lock:
                run_the_job(fencing_token=lock.token)

What is here: ``Client`` (keys, transactions, compaction, the registry, the cluster's status;
retries on another member, with request ids that make a retried write apply once),
``Txn``/``Compare``/``Op``; ``Session`` (kept alive by a thread, with Chubby's states); ``Lock``
and sequencers (``parse_sequencer``, ``Client.check_sequencer``, ``Compare.sequencer_valid``);
``Election``; ``Watch`` (resumes by itself); the registry (``Client.register``, ``Check``,
``Client.instances``); ``LatchError``; and the wire types, ``latch.v1``.
"""

from .client import DEFAULT_ENDPOINT, Check, Client
from .election import Election
from .errors import LatchError
from .lock import Lock, LockNotAcquired, format_sequencer, parse_sequencer
from .session import Session, SessionState
from .txn import Compare, Op, Txn, prefix_end, prefix_range
from .watch import Watch, WatchBatch

__all__ = [
    "DEFAULT_ENDPOINT", "Check", "Client", "Compare", "Election", "LatchError", "Lock", "LockNotAcquired", "Op", "Session",
    "SessionState", "Txn", "Watch", "WatchBatch", "format_sequencer", "parse_sequencer", "prefix_end",
    "prefix_range",
]
