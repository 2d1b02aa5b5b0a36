"""Two workers and one lock, and a resource that fences them: what makes Latch's locks safe where
a lock alone is not (a paused ex-holder wakes up believing it still holds the lock).

Worker A takes the lock, then stalls: it stops keeping its session alive, as a process in a long
pause would. Its session expires, the lock-delay passes, and worker B is granted the lock with a
larger fencing token. A wakes and writes with its old token: the resource, which remembers the
largest token it accepted, rejects it. Latch checks the token too (``check_sequencer``) and
fences its own keys with it (a transaction's ``Compare.sequencer_valid``).

Start a server (``cargo run --release -- server --dev``), then
``python3 clients/python/examples/distributed_lock.py`` (``$LATCH_ENDPOINTS`` for another cluster).
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import latch  # noqa: E402


class Resource:
    """A downstream store that accepts a write only with a fencing token at least as large as
    every one it accepted before."""

    def __init__(self):
        self.largest_token = 0
        self.contents = []

    def write(self, token: int, what: str) -> None:
        if token < self.largest_token:
            raise PermissionError(f"token {token} is stale: {self.largest_token} was already used")
        self.largest_token = token
        self.contents.append(what)


def main() -> int:
    resource = Resource()
    name = "example/report-writer"
    with latch.Client() as client:
        a_session = client.session(ttl=1, name="worker A")
        # A short lock-delay, so the example does not wait the default 5 s.
        a = a_session.lock(name, lock_delay=0.5)
        print(f"A holds {name} with fencing token {a.generation}")
        resource.write(a.generation, "A: part 1")
        a_session.abandon()  # A stalls: nobody keeps its session alive any more

        with client.session(ttl=5, name="worker B") as b_session:
            print("A stalls; B waits for the lock…")
            waited = time.monotonic()
            with b_session.lock(name, lock_delay=0.5) as b:
                print(f"B holds {name} with fencing token {b.generation} after "
                      f"{time.monotonic() - waited:.1f} s (A's TTL, then the lock-delay)")
                resource.write(b.generation, "B: the whole report")
                try:
                    resource.write(a.generation, "A: part 2")  # A wakes, believing it holds the lock
                    raise SystemExit("the resource accepted a stale token")
                except PermissionError as why:
                    print(f"the resource rejects A: {why}")
                check = client.check_sequencer(a.token)
                print(f"check_sequencer(A): valid={check.valid} ({check.reason})")
                for who, lock in (("A", a), ("B", b)):
                    fenced = latch.Txn().when([latch.Compare.sequencer_valid(lock.token)]).and_then(
                        [latch.Op.put("example/report", who)])
                    print(f"{who}'s fenced txn succeeded: {client.txn(fenced).succeeded}")
        print(f"resource: {resource.contents}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
