"""The Python client against a real cluster: $LATCH_ENDPOINTS names it (tests/it/python.rs
starts one and runs this file; by hand: ``LATCH_ENDPOINTS=127.0.0.1:7379 python3 -m unittest
discover -s clients/python/tests``). Every test works under a prefix of its own; two of them
compact the cluster's history up to their own last write."""

import logging
import math
import os
import queue
import socket
import re
import subprocess
import sys
import threading
import time
import unittest
import uuid
from typing import Optional

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import latch  # noqa: E402
from latch.v1 import (election_pb2, election_pb2_grpc, kv_pb2, kv_pb2_grpc, lock_pb2, lock_pb2_grpc,  # noqa: E402
                      registry_pb2, session_pb2, session_pb2_grpc, watch_pb2, watch_pb2_grpc)

ENDPOINTS = os.environ.get("LATCH_ENDPOINTS")
#: How long a test waits for something the cluster must do (not a measure of speed).
PATIENCE = float(os.environ.get("LATCH_TEST_PATIENCE", "30"))


def unique(what: str) -> str:
    return f"py-test/{what}/{uuid.uuid4().hex[:8]}/"


def in_thread(f):
    """Runs ``f`` in a thread; the returned queue gets its result or its exception."""
    out = queue.Queue()

    def run():
        try:
            out.put(f())
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out.put(e)

    threading.Thread(target=run, daemon=True).start()
    return out


def result(out: queue.Queue):
    try:
        value = out.get(timeout=PATIENCE)
    except queue.Empty:
        raise AssertionError(f"nothing came within {PATIENCE} s") from None
    if isinstance(value, BaseException):
        raise value
    return value


@unittest.skipUnless(ENDPOINTS, "needs LATCH_ENDPOINTS: tests/it/python.rs starts a cluster and sets it")
class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = latch.Client(ENDPOINTS)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    # -- keys and transactions ---------------------------------------------------------------

    def test_writes_go_to_the_leader_a_follower_names_and_reads_stay_where_they_were(self):
        p = unique("routing")
        # $LATCH_ENDPOINTS: a dead port, then a follower (tests/it/python.rs): reads go to the
        # follower; writes, once it named the leader, to the leader.
        with latch.Client(ENDPOINTS) as client:
            reader = client.get(p + "k", serializable=True)  # settles where reads go
            reads_at = client.range(p + "k", serializable=True).header.member_id
            self.assertIsNone(reader, "a fresh key")
            deadline = time.monotonic() + PATIENCE
            while True:
                leader = client.status().leader
                written = client.put(p + "k", "v").header
                if written.member_id == leader != 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            self.assertEqual(written.member_id, leader, f"within {PATIENCE} s a put is answered by the leader")
            self.assertNotEqual(reads_at, leader, "the endpoints given start with a follower")
            after = [client.put(p + "k", str(i)).header for i in range(3)]
            self.assertEqual([h.member_id for h in after], [leader] * 3, "and later writes stay at the leader")
            read = client.range(p + "k", serializable=True)
            self.assertEqual(read.kvs[0].value, b"2", "a serializable read sees the client's own last write")
            self.assertGreaterEqual(read.header.revision, after[-1].revision)

    def test_a_put_is_read_back_with_its_revisions_and_a_delete_removes_it(self):
        p = unique("kv")
        first = self.client.put(p + "a", "1").header.revision
        second = self.client.put(p + "a", b"2", prev_kv=True)
        self.assertEqual(second.prev_kv.value, b"1", "prev_kv carries the value the put replaced")
        kv = self.client.get(p + "a")
        self.assertEqual((kv.value, kv.version, kv.create_revision, kv.mod_revision),
                         (b"2", 2, first, second.header.revision), "the key's value, version and revisions")
        self.assertEqual(self.client.get(p + "a", revision=first).value, b"1", "a read at the first revision")
        self.client.put(p + "b", "3")
        self.assertEqual([kv.key for kv in self.client.get_prefix(p)], [(p + "a").encode(), (p + "b").encode()])
        self.assertEqual(self.client.delete(p, prefix=True), 2, "both keys under the prefix deleted")
        self.assertIsNone(self.client.get(p + "a"), "a deleted key reads as absent")

    def test_a_prefix_larger_than_one_answer_is_read_whole_page_by_page(self):
        p = unique("paged-kv")
        # tests/it/python.rs bounds an answer at 16 KiB: 30 values of 1 KiB take two pages, and
        # one of 17 KiB fills a page alone.
        for i in range(30):
            self.client.put(f"{p}{i:02}", b"x" * (17 * 1024 if i == 20 else 1024))
        first = self.client.range(p, latch.prefix_end(p))
        self.assertTrue(first.more and len(first.kvs) < 30, "one answer does not hold them all")
        keys = [kv.key for kv in self.client.get_prefix(p)]
        self.assertEqual(keys, [f"{p}{i:02}".encode() for i in range(30)], "every key, once, in key order")

    def test_a_saved_snapshot_holds_the_last_write_and_checks_whole(self):
        import json
        import tempfile

        prefix = unique("snapshot")
        written = self.client.put(prefix + "k", "v").header.revision
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "backup.snap")
            header = self.client.save_snapshot(path)
            self.assertGreaterEqual(header.revision, written, "the snapshot holds every acknowledged write")
            self.assertFalse(os.path.exists(path + ".part"), "a whole save leaves no .part file")
            with open(path, "rb") as f:
                self.assertEqual(f.read(8), b"LATCHSNP", "the file begins as a snapshot file does")
            # The server's own check of the file: `latch snapshot status` (tests/it/python.rs names it).
            status = subprocess.run([os.environ["LATCH_BIN"], "snapshot", "status", path, "--output", "json"],
                                    capture_output=True, text=True, check=False)
            self.assertEqual(status.returncode, 0, status.stderr)
            described = json.loads(status.stdout)
            self.assertEqual(described["revision"], header.revision, "the file is at the header's revision")
            self.assertEqual(described["member_id"], header.member_id, "the file names the member that sent it")

    def test_a_transaction_runs_the_branch_its_compares_choose(self):
        p = unique("txn")
        self.client.put(p + "k", "v1")
        cas = latch.Txn().when([latch.Compare.value(p + "k", "==", "v1")]).and_then([latch.Op.put(p + "k", "v2")])
        self.assertTrue(self.client.txn(cas).succeeded, "the compare holds: the success branch runs")
        again = self.client.txn(latch.Txn().when([latch.Compare.value(p + "k", "==", "v1")])
                                .and_then([latch.Op.put(p + "k", "v3")]).or_else([latch.Op.get(p + "k")]))
        self.assertFalse(again.succeeded, "the value changed: the failure branch runs")
        self.assertEqual(again.responses[0].range.kvs[0].value, b"v2", "the failure branch read the key")
        absent = latch.Txn().when([latch.Compare.version(p + "new", "==", 0)]).and_then([latch.Op.put(p + "new", "x")])
        self.assertTrue(self.client.txn(absent).succeeded, "version 0: the key did not exist")

    def test_a_compacted_revision_is_refused_naming_the_compact_revision(self):
        p = unique("compact")
        old, now = self._two_writes_then_compact(p + "k", p + "k")
        with self.assertRaises(latch.LatchError) as caught:
            self.client.get(p + "k", revision=old)
        self.assertEqual(caught.exception.code, grpc.StatusCode.OUT_OF_RANGE)
        self.assertGreaterEqual(caught.exception.compact_revision, now, "the error names the compact revision")

    def test_bad_input_gets_an_error_naming_the_problem(self):
        with self.assertRaises(latch.LatchError) as caught:
            self.client.put("", "v")
        self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("key", caught.exception.message, "the server's message names the key")
        with self.assertRaisesRegex(ValueError, "host:port"):
            latch.Client(["127.0.0.1"])
        with self.assertRaisesRegex(ValueError, "compare result"):
            latch.Compare.value("k", "=~", "v")
        with self.assertRaisesRegex(ValueError, "the kind is not one of"):
            latch.parse_sequencer("latch1:0000000000000001:QQ:1:s:name")
        with self.assertRaisesRegex(ValueError, "host:port"):
            latch.Client(["https://127.0.0.1:7379"])
        with self.client.session(ttl=10) as s:
            with self.assertRaisesRegex(ValueError, "wait: nan"):
                s.lock(unique("bad") + "l", wait=float("nan"))
            with self.assertRaisesRegex(ValueError, "lock_delay: -1"):
                s.lock(unique("bad") + "l", lock_delay=-1)
        with self.assertRaises(latch.LatchError) as caught:
            self.client.session(ttl=0.001)
        self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT, "a TTL under the server's minimum")
        with self.assertRaises(latch.LatchError) as caught:
            self.client.replace_member(9)
        self.assertEqual(caught.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("member 9 is not a member of this cluster", caught.exception.message)

    # -- sessions, locks, elections ----------------------------------------------------------

    def test_an_ephemeral_key_goes_with_its_closed_session(self):
        p = unique("ephemeral")
        with self.client.session(ttl=10) as s:
            self.assertEqual(s.state, latch.SessionState.SAFE)
            self.client.put(p + "k", "v", session=s.id)
            self.assertEqual(self.client.get(p + "k").session, s.id, "the key names its session")
        self.assertEqual(s.state, latch.SessionState.EXPIRED, "a closed session is expired for good")
        self.assertIsNone(self.client.get(p + "k"), "the session's key was deleted with it")

    def test_a_session_kept_alive_outlives_its_ttl_many_times(self):
        with self.client.session(ttl=2) as s:
            # Time is what is tested here: three TTLs, about six keepalives.
            time.sleep(6)
            self.assertNotEqual(s.state, latch.SessionState.EXPIRED, "keepalives were answered")
            self.assertGreater(s.lease_left(), 0, "the client holds a lease")
            self.assertEqual(self.client.session_info(s.id).id, s.id, "the cluster still has the session")

    def test_an_abandoned_session_is_expired_by_the_cluster_and_its_lock_fenced(self):
        p = unique("expiry")
        before = self.client.status().header.revision
        s = self.client.session(ttl=1)
        lock = s.lock(p + "lock", wait=0, lock_delay=0)
        # Watch the session's end (from before it began) rather than sleeping for it.
        ended = self.client.watch(s.id, target="sessions", start_revision=before + 1)
        s.abandon()
        self.assertEqual(s.state, latch.SessionState.EXPIRED, "an abandoned session may not be acted on")

        def until_deleted():
            for batch in ended:
                if any(e.type == watch_pb2.Event.DELETE for e in batch.events):
                    return batch.revision
            return None

        self.assertIsNotNone(result(in_thread(until_deleted)), "the session's end was watched")
        ended.cancel()
        check = self.client.check_sequencer(lock.token)
        self.assertFalse(check.valid, "the expired holder's sequencer no longer holds")
        fenced = self.client.txn(latch.Txn().when([latch.Compare.sequencer_valid(lock.token)])
                                 .and_then([latch.Op.put(p + "resource", "stale write")]))
        self.assertFalse(fenced.succeeded, "a write fenced by the stale sequencer does not happen")
        self.assertIsNone(self.client.get(p + "resource"))

    def test_an_exclusive_lock_is_granted_to_one_session_at_a_time_with_growing_generations(self):
        name = unique("lock") + "l"
        with self.client.session(ttl=10) as a, self.client.session(ttl=10) as b:
            held = a.lock(name, wait=0)
            with self.assertRaises(latch.LockNotAcquired):
                b.lock(name, wait=0)
            waiting = in_thread(lambda: b.lock(name, wait=None))
            info = self._eventually(lambda: (lambda i: i if i and i.waiters else None)(self.client.describe_lock(name)))
            self.assertEqual([w.session_id for w in info.waiters], [b.id], "b waits in the queue")
            self.assertEqual([h.session_id for h in info.holders], [a.id], "a holds")
            held.release()
            second = result(waiting)
            self.assertGreater(second.generation, held.generation, "a later grant has a larger fencing token")
            self.assertFalse(self.client.check_sequencer(held.token).valid, "the released sequencer is invalid")
            self.assertTrue(self.client.check_sequencer(second.token).valid)
            self.assertEqual(latch.parse_sequencer(second.token).session_id, b.id)
            second.release()
        self.assertIsNone(self.client.describe_lock(name), "nobody holds or awaits the lock")

    def test_shared_holders_hold_together_and_an_exclusive_request_is_refused_until_they_release(self):
        name = unique("shared") + "l"
        with self.client.session(ttl=10) as a, self.client.session(ttl=10) as b, self.client.session(ttl=10) as c:
            ra = a.lock(name, shared=True, wait=0)
            rb = b.lock(name, shared=True, wait=0)
            self.assertEqual(rb.sequencer.mode, lock_pb2.SHARED)
            with self.assertRaises(latch.LockNotAcquired):
                c.lock(name, wait=0)
            ra.release()
            rb.release()
            c.lock(name, wait=0).release()

    def test_an_election_hands_leadership_on_and_an_observer_sees_each_change(self):
        name = unique("election") + "e"
        election = self.client.election(name)
        with self.client.session(ttl=10) as a, self.client.session(ttl=10) as b:
            first = election.campaign(a, "a")
            observed = election.observe()
            self.assertEqual(next(observed).value, b"a", "the observer starts with the current leader")
            election.proclaim(first, "a2")
            self.assertEqual(next(observed).value, b"a2", "a proclaimed value is observed")
            waiting = in_thread(lambda: election.campaign(b, "b"))
            election.resign(first)
            second = result(waiting)
            self.assertEqual(second.value, b"b")
            self.assertGreater(second.sequencer.generation, first.sequencer.generation)
            seen = next(observed)
            while seen is None or seen.value != b"b":  # a moment without a leader may show in between
                seen = next(observed)
            self.assertEqual(election.leader().sequencer.session_id, b.id)
            observed.close()
            election.resign(second)
        self.assertIsNone(election.leader(), "nobody leads after both resigned")

    def test_an_election_is_described_with_its_leader_and_its_candidates_in_order(self):
        prefix = unique("described")
        election = self.client.election(prefix + "e")
        self.assertIsNone(election.describe(), "nobody leads or campaigns yet")
        with self.client.session(ttl=10) as a, self.client.session(ttl=10) as b:
            first = election.campaign(a, "a")
            waiting = in_thread(lambda: election.campaign(b, "b"))
            info = self._eventually(lambda: (lambda i: i if i and i.candidates else None)(election.describe()))
            self.assertEqual(info.leader.sequencer.token, first.sequencer.token, "a leads")
            self.assertEqual(info.leader.value, b"a")
            self.assertEqual([(c.session_id, c.value) for c in info.candidates], [(b.id, b"b")],
                             "b waits, with the value it will publish")
            self.assertFalse(info.delayed)
            self.assertEqual(self.client.list_elections(prefix), [info], "List shows it as Describe does")
            election.resign(first)
            second = result(waiting)
            self.assertEqual(election.describe().leader.sequencer.token, second.sequencer.token, "b leads")
            election.resign(second)
        self.assertIsNone(election.describe(), "nobody leads or campaigns once both resigned")

    # -- the registry ------------------------------------------------------------------------

    def test_a_session_bound_instance_is_listed_until_its_session_ends_and_a_ttl_check_takes_heartbeats(self):
        service = "py-" + uuid.uuid4().hex[:8]
        with self.client.session(ttl=10) as s:
            self.client.register(service, "a", "10.0.0.1", 8080, tags=["v1"], session=s.id)
            self.client.register(service, "b", "10.0.0.2", 8080, check=latch.Check.ttl(30))
            self.assertEqual(self.client.heartbeat(service, "b", "all good"), registry_pb2.PASSING)
            listed = {(i.instance.id, i.instance.address) for i in self.client.instances(service)}
            self.assertEqual(listed, {("a", "10.0.0.1"), ("b", "10.0.0.2")}, "both instances are listed")
            self.assertEqual([i.instance.id for i in self.client.instances(service, tag="v1")], ["a"])
            summary = [x for x in self.client.services() if x.name == service]
            self.assertEqual([(x.instances, x.passing) for x in summary], [(2, 2)], "the service's counts")
        self.assertEqual([i.instance.id for i in self.client.instances(service)], ["b"],
                         "the session's instance went with it")
        self.client.deregister(service, "b")
        self.assertEqual(self.client.instances(service), [])
        with self.assertRaisesRegex(ValueError, "interval: -1"):
            latch.Check.http("http://127.0.0.1:1/", interval=-1)

    def test_instances_and_services_larger_than_one_answer_are_read_page_by_page(self):
        # tests/it/python.rs bounds an answer at 16 KiB: 40 instances of about 500 bytes, and
        # 20 services of about 1.3 KB of tags each, take two pages or more.
        p = "pg-" + uuid.uuid4().hex[:8]
        pad = {"pad": "x" * 450}
        for n in range(40):
            self.client.register(p + "-big", f"i{n:02}", "10.0.0.1", 8000 + n, meta=pad)
        first = self.client._call("registry", "List", registry_pb2.ListRequest(service=p + "-big"))
        self.assertTrue(first.more and len(first.instances) < 40, "one answer does not hold them all")
        listed = [i.instance.id for i in self.client.instances(p + "-big")]
        self.assertEqual(listed, [f"i{n:02}" for n in range(40)], "every instance, in id order, each once")
        for n in range(20):
            tags = [f"t{n:02}-{k:02}-" + "y" * 34 for k in range(30)]
            self.client.register(f"{p}-s{n:02}", "a", "10.0.0.1", 9000, tags=tags)
        first = self.client._call("registry", "Services", registry_pb2.ServicesRequest(start_after=p + "-big"))
        self.assertTrue(first.more, "one answer does not hold the 20 services' tags")
        names = [s.name for s in self.client.services() if s.name.startswith(p + "-s")]
        self.assertEqual(names, [f"{p}-s{n:02}" for n in range(20)], "every service, in order, each once")
        with self.assertRaises(latch.LatchError) as caught:
            self.client._call("registry", "List", registry_pb2.ListRequest(start_after="no-slash"))
        self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("start_after", caught.exception.message, "the error names the field")

    # -- watches -----------------------------------------------------------------------------

    def test_a_watch_delivers_every_revision_once_in_order_with_previous_values(self):
        p = unique("watch")
        start = self.client.put(p + "a", "1").header.revision
        second = self.client.put(p + "a", "2").header.revision
        txn = latch.Txn().and_then([latch.Op.put(p + "b", "x"), latch.Op.delete(p + "a")])
        last = self.client.txn(txn).header.revision
        batches = []
        with self.client.watch(p, prefix=True, start_revision=start, prev_kv=True) as w:
            for batch in w:
                batches.append(batch)
                if batch.revision >= last:
                    break
        self.assertEqual([b.revision for b in batches], [start, second, last], "one batch per revision, in order")
        self.assertEqual([(e.type, e.kv.key) for e in batches[-1].events],
                         [(watch_pb2.Event.PUT, (p + "b").encode()), (watch_pb2.Event.DELETE, (p + "a").encode())],
                         "a transaction's events come together, in its order")
        self.assertEqual(batches[1].events[0].prev_kv.value, b"1", "prev_kv of the second put")

    def test_a_watch_from_now_gets_every_write_after_it_was_made(self):
        p = unique("from-now")
        self.client.put(p + "before", "x")
        # A client whose first endpoint is down: the watch must still start when it is made.
        with latch.Client(["127.0.0.1:1"] + ENDPOINTS.split(",")) as fresh, fresh.watch(p, prefix=True) as w:
            after = self.client.put(p + "after", "y").header.revision
            batch = result(in_thread(lambda: next(w)))
        self.assertEqual((batch.revision, [e.kv.key for e in batch.events]), (after, [(p + "after").encode()]),
                         "the first write after watch() returned is the first event, the one before it is not")

    def test_a_compacted_start_gets_a_snapshot_then_the_events_after_it(self):
        p = unique("snapshot")
        old, now = self._two_writes_then_compact(p + "a", p + "b")
        with self.assertRaises(latch.LatchError) as caught:
            next(iter(self.client.watch(p, prefix=True, start_revision=old)))
        self.assertEqual(caught.exception.code, grpc.StatusCode.OUT_OF_RANGE, "on_compacted=error refuses")
        self.assertGreaterEqual(caught.exception.compact_revision, now, "naming the compact revision")
        with self.client.watch(p, prefix=True, start_revision=old, on_compacted="snapshot") as w:
            snapshot = next(w)
            self.assertTrue(snapshot.snapshot, "the first batch is the range's state")
            self.assertEqual(sorted(kv.key for kv in snapshot.kvs), [(p + "a").encode(), (p + "b").encode()])
            after = self.client.put(p + "c", "3").header.revision
            batch = next(w)
            while batch.revision < after:
                batch = next(w)
            self.assertEqual([e.kv.key for e in batch.events], [(p + "c").encode()], "then the events after it")

    def test_a_typed_watch_sees_a_lock_change_hands(self):
        name = unique("locks") + "l"
        start = self.client.status().header.revision + 1
        with self.client.session(ttl=10) as s:
            s.lock(name, wait=0).release()
        with self.client.watch(name, target="locks", start_revision=start) as w:
            first = next(w)
            info = lock_pb2.LockInfo.FromString(first.events[0].kv.value)
            self.assertEqual([h.session_id for h in info.holders], [s.id], "the grant, as a LockInfo")
            self.assertEqual(next(w).events[0].type, watch_pb2.Event.DELETE, "then the release")

    def _two_writes_then_compact(self, first: str, second: str):
        """Puts ``first`` then ``second`` and compacts at the second put: the first put's
        revision is then compacted. Returns both revisions."""
        old = self.client.put(first, "1").header.revision
        now = self.client.put(second, "2").header.revision
        self.client.compact(now)
        return old, now

    def _eventually(self, probe):
        """Polls ``probe`` until it returns something true (a bounded wait for a named state)."""
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            value = probe()
            if value:
                return value
            time.sleep(0.01)
        self.fail(f"{probe} never held within {PATIENCE} s")


class OfflineTest(unittest.TestCase):
    """What needs no cluster."""

    def test_a_page_that_does_not_start_after_the_one_before_fails_instead_of_looping(self):
        from latch.client import _moved_on

        _moved_on("web/b", "web/c")
        _moved_on("web-a/", "web/")  # key order: '-' sorts before '/'
        with self.assertRaises(latch.LatchError) as caught:
            _moved_on("web/b", "web/a")
        self.assertEqual(caught.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("not after 'web/b'", caught.exception.message)
        with self.assertRaises(latch.LatchError):
            _moved_on("web/b", "web/b")

    def test_a_cluster_id_is_exactly_sixteen_hex_digits_and_is_kept_in_lower_case(self):
        from latch.client import _cluster_id
        self.assertEqual(_cluster_id("0123456789ABCDEF"), "0123456789abcdef")
        for bad in [None, "", "123", "0x23456789abcdef", "+123456789abcdef", "-123456789abcdef",
                    "0123456789abcdef0", " 123456789abcdef", "0123456789abcdeg", "０１２３４５６７８９ａｂｃｄｅｆ"]:
            self.assertIsNone(_cluster_id(bad), f"{bad!r} is not 16 hex digits and must not be taken as a cluster id")

    def test_prefix_end_increments_the_last_byte_below_0xff(self):
        self.assertEqual(latch.prefix_end("a/"), b"a0")
        self.assertEqual(latch.prefix_end(b"a\xff\xff"), b"b")
        self.assertEqual(latch.prefix_end(b""), b"\0", "the empty prefix: every key")
        self.assertEqual(latch.prefix_end(b"\xff"), b"\0")

    def test_a_sequencer_survives_its_string_form_with_colons_and_percents_in_the_session(self):
        seq = lock_pb2.Sequencer(name="jobs:nightly/a", mode=lock_pb2.SHARED, generation=42, session_id="s:1%2",
                                 cluster_id=0xABC, election=True)
        token = latch.format_sequencer(seq)
        self.assertEqual(token, "latch1:0000000000000abc:ES:42:s%3A1%252:jobs:nightly/a",
                         "the Rust crate's format: the name last and as is, ':' and '%' escaped in the session")
        back = latch.parse_sequencer(token)
        seq.token = token
        self.assertEqual(back, seq)

    def test_endpoints_are_host_and_port_with_an_optional_http_scheme(self):
        self.assertEqual(latch.Client("http://127.0.0.1:7379/, 127.0.0.2:1").endpoints,
                         ["127.0.0.1:7379", "127.0.0.2:1"])
        for bad in ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "https://h:1", "h:1/path", ":7379"]:
            with self.assertRaisesRegex(ValueError, "host:port", msg=bad):
                latch.Client([bad])
        with self.assertRaisesRegex(ValueError, "no endpoints"):
            latch.Client(" , ")
        self.assertEqual(latch.Client(["[::1]:7379"]).endpoints, ["[::1]:7379"], "an IPv6 host in brackets")

    def test_an_endpoint_holding_a_list_or_a_second_colon_is_refused_naming_it(self):
        with self.assertRaisesRegex(ValueError, r"endpoint 'a:1,b:2': one host:port per endpoint"):
            latch.Client(["a:1,b:2"])
        for bad in ["a:1:2", "::1:7379", "[::1:7379", "a]:1"]:
            with self.assertRaisesRegex(ValueError, rf"endpoint {re.escape(repr(bad))}.*one ':'.*brackets", msg=bad):
                latch.Client([bad])

    def test_an_empty_prefix_selects_every_key_as_key_0_to_range_end_0_in_every_call(self):
        self.assertEqual(latch.prefix_range(""), (b"\0", b"\0"), "the empty key is no key: from \\0 on")
        self.assertEqual(latch.prefix_range("a/"), (b"a/", b"a0"))
        self.assertEqual((latch.Op.get("", prefix=True).range.key, latch.Op.get("", prefix=True).range.range_end),
                         (b"\0", b"\0"))
        delete = latch.Op.delete(b"", prefix=True).delete_range
        self.assertEqual((delete.key, delete.range_end), (b"\0", b"\0"))
        sent = []

        def call(service, method, request, **kw):
            sent.append((method, request.key, request.range_end))
            return {"Range": kv_pb2.RangeResponse(), "DeleteRange": kv_pb2.DeleteRangeResponse()}[method]

        client = latch.Client("127.0.0.1:1")  # nobody listens: every call is answered here
        client._call = client._write = call
        client.get_prefix("")
        client.delete("", prefix=True)
        client.delete("k")
        watch = client.watch("", prefix=True)  # from now: a count of the range first
        watch.cancel()
        client.close()
        self.assertEqual(sent, [("Range", b"\0", b"\0"), ("DeleteRange", b"\0", b"\0"), ("DeleteRange", b"k", b""),
                                ("Range", b"\0", b"\0")])
        self.assertEqual((watch._create.key, watch._create.range_end), (b"\0", b"\0"), "the watch's own range")

    def test_a_grant_of_nothing_waits_a_retry_interval_and_an_absurd_grant_is_capped_at_a_day(self):
        from latch.session import MAX_TTL, _lease_seconds, _next_keepalive_at

        self.assertAlmostEqual(_next_keepalive_at(sent=100.0, granted=0.0, ttl=1.0, retry=0.1, now=100.5), 100.6,
                               msg="a grant of nothing: not back to back, a retry interval after now")
        self.assertEqual(_next_keepalive_at(sent=100.0, granted=10.0, ttl=10.0, retry=1.0, now=100.1), 105.0,
                         "a whole grant: when half the TTL is left of it")
        self.assertEqual(_next_keepalive_at(sent=100.0, granted=4.0, ttl=10.0, retry=0.5, now=100.1), 101.0,
                         "a grant under half the TTL: a quarter into it")
        self.assertEqual(MAX_TTL, 86400.0)
        self.assertEqual(_lease_seconds(10 ** 15), MAX_TTL, "an absurd grant")
        self.assertEqual(_lease_seconds(-5), 0.0, "a negative grant is none")
        client = latch.Client("127.0.0.1:1")
        client._write = lambda *a, **kw: session_pb2.CreateSessionResponse(id="s", ttl_ms=2 ** 62)
        session = latch.Session.create(client, 10)
        self.assertEqual((session.ttl, session.grace), (MAX_TTL, MAX_TTL), "an absurd TTL granted at create")
        self.assertLessEqual(session.lease_left(), MAX_TTL)
        session.abandon()
        client.close()

    def test_a_sessions_turn_at_a_name_is_one_at_a_time_forgotten_when_unused_and_refused_once_it_ended(self):
        from latch.lock import _Turns

        turns = _Turns()
        waits = threading.Event()
        said_waiting_for_turn(self, waits)
        first = turns.take("a", None)
        self.assertIsNone(turns.take("a", 0), "a name a turn holds is not taken a second time")
        self.assertIsNone(result(in_thread(lambda: turns.take("a", 0.01))), "nor within a wait that runs out")
        # The thread holding the turn would wait for itself: refused at once, whatever the wait.
        for wait in (0.01, None):
            with self.assertRaises(latch.LatchError) as caught:
                turns.take("a", wait)
            self.assertEqual(caught.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
            self.assertIn("this thread holds the session's lock 'a' already", caught.exception.message)
        other = turns.take("b", 0)
        self.assertIsNotNone(other, "another name is free")
        waits.clear()
        waiting = in_thread(lambda: turns.take("a", None))
        self.assertTrue(waits.wait(PATIENCE), "a second turn at a held name waits")
        first.give_back()
        second = result(waiting)
        first.give_back()  # a second give-back does nothing
        self.assertIsNone(turns.take("a", 0), "the waiter holds it now")
        second.give_back()
        other.give_back()
        self.assertEqual(turns.names_in_use(), [], "a name no turn holds or awaits is forgotten")
        # A try-once gives up at once on a turn with only its withdrawal left; a wait waits for
        # it, even in the thread whose acquire is being withdrawn (it holds no Lock of it).
        withdrawing = turns.take("c", None)
        withdrawing.hand_to_withdrawal()
        self.assertIsNone(turns.take("c", 0), "a try-once does not wait for a withdrawal")
        waits.clear()
        attempt = in_thread(lambda: turns.take("c", None))
        self.assertTrue(waits.wait(PATIENCE), "a wait waits for it")
        withdrawing.give_back()
        result(attempt).give_back()
        # The session ended: a waiter raises, and no turn is taken any more.
        held = turns.take("d", None)
        waits.clear()
        waiting = in_thread(lambda: turns.take("d", None))
        self.assertTrue(waits.wait(PATIENCE), "waiting behind the holder")
        turns.end()
        for refused in (lambda: result(waiting), lambda: turns.take("e", None), lambda: turns.take("e", 0)):
            with self.assertRaises(latch.LatchError) as caught:
                refused()
            self.assertEqual(caught.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
            self.assertIn("the session ended", caught.exception.message)
        held.give_back()
        self.assertEqual(turns.names_in_use(), [])


class SlowBeforeAnyEvent(watch_pb2_grpc.WatchServicer):
    """A member that answers each watch's create, then cancels it SLOW before any event (a
    snapshot its client did not read in time); records each create's start revision."""

    def __init__(self):
        self.starts = []

    def Watch(self, requests, context):
        create = next(requests).create
        self.starts.append(create.start_revision)
        header = kv_pb2.ResponseHeader(revision=create.start_revision - 1)
        yield watch_pb2.WatchResponse(header=header, watch_id=create.watch_id, created=True)
        yield watch_pb2.WatchResponse(header=header, watch_id=create.watch_id, canceled=True,
                                      cancel_reason=watch_pb2.WatchResponse.SLOW,
                                      cancel_message="the client did not read the snapshot in time")
        while context.is_active():
            time.sleep(0.01)


class CutOffLocks(lock_pb2_grpc.LockServicer):
    """A member whose acquires never settle for session "cut" (UNAVAILABLE, as from a member cut
    off from the leader after the request was queued), find no session "gone", find the queue
    full for session "full" (RESOURCE_EXHAUSTED marked as the member's own limit) and meet the
    transport's RESOURCE_EXHAUSTED for session "calm" (no mark, as HTTP/2's ENHANCE_YOUR_CALM);
    records each acquire's and each withdrawal's request id."""

    def __init__(self):
        self.acquires, self.withdrawals = [], []

    def Acquire(self, request, context):
        self.acquires.append((request.session_id, request.request_id))
        if request.session_id == "gone":
            context.abort(grpc.StatusCode.NOT_FOUND, "session gone not found")
        if request.session_id == "full":
            context.set_trailing_metadata([("latch-over-limit", "true")])
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full (--max-lock-waiters)")
        if request.session_id == "calm":
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "ENHANCE_YOUR_CALM")
        context.abort(grpc.StatusCode.UNAVAILABLE, "cut off from the leader")

    def Withdraw(self, request, context):
        self.withdrawals.append((request.name, request.request_id))
        return lock_pb2.WithdrawResponse()


class PagedLocksAndElections(lock_pb2_grpc.LockServicer, election_pb2_grpc.ElectionServicer):
    """A member holding locks and elections ``a``…``e`` that answers two names a page (``more``
    while any follow); records each page's ``start_after``."""

    NAMES = ["a", "b", "c", "d", "e"]

    def __init__(self):
        self.asked = []

    def _page(self, request):
        self.asked.append(request.start_after)
        after = [n for n in self.NAMES if n.startswith(request.prefix) and n > request.start_after]
        return after[:2], len(after) > 2

    def ListLocks(self, request, context):
        names, more = self._page(request)
        return lock_pb2.ListLocksResponse(locks=[lock_pb2.LockInfo(name=n) for n in names], more=more)

    def List(self, request, context):
        names, more = self._page(request)
        return election_pb2.ListElectionsResponse(elections=[election_pb2.ElectionInfo(name=n) for n in names],
                                                  more=more)


class ScriptedMemberTest(unittest.TestCase):
    """The client against an in-process gRPC member that plays a script."""

    def serve(self, add, member) -> str:
        from concurrent import futures
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        add(member, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.addCleanup(server.stop, None)
        return f"127.0.0.1:{port}"

    def test_an_acquire_given_up_after_its_request_may_have_been_queued_is_withdrawn_by_its_request_id(self):
        member = CutOffLocks()
        endpoint = self.serve(lock_pb2_grpc.add_LockServicer_to_server, member)
        with latch.Client(endpoint, request_timeout=1.0, retry_budget=0.3) as client:
            with self.assertRaises(latch.LatchError) as refused:
                client.acquire("l", "gone", wait=0.2)
            self.assertEqual(refused.exception.code, grpc.StatusCode.NOT_FOUND, "refused as asked")
            with self.assertRaises(latch.LatchError) as full:
                client.acquire("l", "full", wait=0.2)
            self.assertTrue(full.exception.over_limit, f"the member's own refusal: {full.exception}")
            with self.assertRaises(latch.LatchError) as unsettled:
                # Try once: the retry budget, not a wait, ends it, with the member's own error
                # (a wait that ran out: test_an_acquire_whose_wait_ran_out_while_failing_is_withdrawn_and_fails).
                client.acquire("l", "cut", wait=0)
            self.assertEqual(unsettled.exception.code, grpc.StatusCode.UNAVAILABLE, str(unsettled.exception))
            with self.assertRaises(latch.LatchError) as calm:
                client.acquire("l", "calm", wait=0.2)
            self.assertEqual(calm.exception.code, grpc.StatusCode.RESOURCE_EXHAUSTED, str(calm.exception))
            self.assertFalse(calm.exception.over_limit, "unmarked: it may have come after the request was queued")
        cut = {i for s, i in member.acquires if s == "cut"}
        calm = {i for s, i in member.acquires if s == "calm"}
        self.assertEqual(len(cut), 1, f"one request id across retries: {member.acquires}")
        self.assertEqual(member.withdrawals, [("l", cut.pop()), ("l", calm.pop())],
                         "the acquires given up unsettled, and only they, were withdrawn under their own "
                         "ids before their errors left")

    def test_locks_and_elections_are_listed_a_page_at_a_time_until_none_follow(self):
        member = PagedLocksAndElections()
        endpoint = self.serve(lock_pb2_grpc.add_LockServicer_to_server, member)
        with latch.Client(endpoint) as client:
            self.assertEqual([l.name for l in client.list_locks()], member.NAMES, "every page, in order")
            self.assertEqual(member.asked, ["", "b", "d"], "each page asked after the last name of the one before")
        member = PagedLocksAndElections()
        endpoint = self.serve(election_pb2_grpc.add_ElectionServicer_to_server, member)
        with latch.Client(endpoint) as client:
            self.assertEqual([e.name for e in client.list_elections()], member.NAMES)
            self.assertEqual(member.asked, ["", "b", "d"])

    def test_a_watch_cut_off_as_slow_again_and_again_with_nothing_delivered_ends_with_the_members_reason(self):
        member = SlowBeforeAnyEvent()
        endpoint = self.serve(watch_pb2_grpc.add_WatchServicer_to_server, member)
        with latch.Client(endpoint) as client:
            watch = client.watch("k", start_revision=5)
            with self.assertRaises(latch.LatchError) as caught:
                next(watch)
            watch.cancel()
        e = caught.exception
        self.assertEqual(e.code, grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        self.assertIn("did not read the snapshot in time", str(e))
        self.assertIn("3 times in a row at revision 5", str(e), "asking again repeated it")
        self.assertEqual(member.starts, [5, 5, 5], "asked three times from revision 5, then given up")


class FrozenOrGrantingSessions(session_pb2_grpc.SessionServicer):
    """A member whose keepalives either never answer (``frozen``: SIGSTOPped, cut off) until the
    client cancels them, or grant the whole TTL after ``delay`` seconds; it closes any session. Records, per
    session, that a keepalive reached it (``reached``), that a frozen one was cancelled
    (``cancelled``) and that one was granted (``granted``)."""

    def __init__(self, frozen: bool, ttl_ms: int = 0, delay: float = 0):
        self.frozen, self.ttl_ms, self.delay = frozen, ttl_ms, delay
        self._events = {}
        self._lock = threading.Lock()
        #: Frozen keepalives held now.
        self.held = 0

    def event(self, what: str, session_id: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault((what, session_id), threading.Event())

    def KeepAlive(self, requests, context):
        for request in requests:
            self.event("reached", request.id).set()
            if self.frozen:
                ended = threading.Event()
                context.add_callback(ended.set)
                with self._lock:
                    self.held += 1
                ended.wait(PATIENCE)
                with self._lock:
                    self.held -= 1
                self.event("cancelled", request.id).set()
                return
            time.sleep(self.delay)
            self.event("granted", request.id).set()
            yield session_pb2.KeepAliveResponse(id=request.id, ttl_ms=self.ttl_ms, granted_ms=self.ttl_ms)

    def Close(self, request, context):
        return session_pb2.CloseSessionResponse()


class LateGrantLocks(lock_pb2_grpc.LockServicer):
    """A member whose acquires never settle (UNAVAILABLE), and whose withdrawals fail too until
    ``grant`` is set, then find the acquire granted first, under the token ``tok-<session>``;
    records each release's sequencer (and sets ``released``)."""

    def __init__(self):
        self.grant = threading.Event()
        self.released = threading.Event()
        self.releases = []
        self._sessions = {}

    def Acquire(self, request, context):
        self._sessions[request.request_id] = request.session_id
        context.abort(grpc.StatusCode.UNAVAILABLE, "cut off from the leader")

    def Withdraw(self, request, context):
        if not self.grant.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "cut off from the leader")
        session = self._sessions[request.request_id]
        return lock_pb2.WithdrawResponse(held=True, sequencer=lock_pb2.Sequencer(
            name=request.name, generation=7, session_id=session, token=f"tok-{session}"))

    def Release(self, request, context):
        self.releases.append(request.sequencer)
        self.released.set()
        return lock_pb2.ReleaseResponse()


class ReentrantLocks(lock_pb2_grpc.LockServicer):
    """A member holding its locks as the cluster does for one session, re-entrantly: an acquire
    while the session holds the lock is answered with that same hold (its sequencer), else it is
    granted anew, as ``tok-<generation>`` (the generation growing); a release ends the hold its
    sequencer names (FAILED_PRECONDITION for any other). With ``lose_first``, the first acquire
    is granted but its answer lost (UNAVAILABLE, again for each resend), and its withdrawals
    fail (UNAVAILABLE) until ``settle`` is set, then find that grant if it still holds. Records
    ``acquire <token>`` and ``release <token>`` in ``events``, in order, and sets
    ``second_acquire`` when an acquire of a second request id comes."""

    def __init__(self, lose_first: bool = False):
        self.lose_first = lose_first
        self.settle = threading.Event()
        self.second_acquire = threading.Event()
        self.events = []
        self._lock = threading.Lock()
        self._hold = None
        self._generation = 0
        self._requests = []
        self._lost = {}  # request id -> the sequencer granted, whose answer was lost

    def Acquire(self, request, context):
        with self._lock:
            if request.request_id in self._lost:  # a resend of the lost one
                context.abort(grpc.StatusCode.UNAVAILABLE, "cut off from the leader")
            self._requests.append(request.request_id)
            if self._hold is None:
                self._generation += 1
                self._hold = lock_pb2.Sequencer(name=request.name, generation=self._generation,
                                                session_id=request.session_id, token=f"tok-{self._generation}")
            seq = lock_pb2.Sequencer()
            seq.CopyFrom(self._hold)
            self.events.append(f"acquire {seq.token}")
            if len(self._requests) == 2:
                self.second_acquire.set()
            lost = self.lose_first and len(self._requests) == 1
            if lost:
                self._lost[request.request_id] = seq
        if lost:
            context.abort(grpc.StatusCode.UNAVAILABLE, "cut off from the leader")
        return lock_pb2.AcquireResponse(acquired=True, sequencer=seq)

    def Withdraw(self, request, context):
        if not self.settle.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "cut off from the leader")
        with self._lock:
            seq = self._lost.get(request.request_id)
            if seq is not None and self._hold is not None and self._hold.token == seq.token:
                return lock_pb2.WithdrawResponse(held=True, sequencer=seq)
        return lock_pb2.WithdrawResponse()

    def Release(self, request, context):
        with self._lock:
            if self._hold is None or self._hold.token != request.sequencer:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the sequencer holds no more")
            self._hold = None
            self.events.append(f"release {request.sequencer}")
        return lock_pb2.ReleaseResponse()


def idle_session(client: latch.Client) -> latch.Session:
    """A session whose keepalive thread sends nothing within a test (half an hour away)."""
    return latch.Session(client, "locker", ttl=3600, lease_end=time.monotonic() + 3600, grace=0)


def said_waiting_for_turn(test: unittest.TestCase, event: threading.Event) -> None:
    """Sets ``event`` when a ``Session.lock`` says (at DEBUG) that it waits for its session's turn
    at a name, for the rest of ``test``."""
    class Said(logging.Handler):
        def emit(self, record):
            if "waiting for the session's turn" in record.getMessage():
                event.set()

    logger, said = logging.getLogger("latch.lock"), Said()
    test.addCleanup(logger.setLevel, logger.level)
    test.addCleanup(logger.removeHandler, said)
    logger.setLevel(logging.DEBUG)
    logger.addHandler(said)


def join_withdrawals(*names: str) -> None:
    """Waits for the background withdrawals of lock ``names`` to end (their threads)."""
    for thread in threading.enumerate():
        if thread.name in {f"latch-withdraw-{n}" for n in names}:
            thread.join(PATIENCE)
            if thread.is_alive():
                raise AssertionError(f"{thread.name} still runs after {PATIENCE} s")


class SlowFailingLocks(lock_pb2_grpc.LockServicer):
    """A member whose acquires fail UNAVAILABLE after ``delay`` s (the first ``failures`` of
    them; later ones answer "not acquired" at once); withdrawals find nothing granted. Records
    each acquire's (request id, wait_ms) and each withdrawal's request id."""

    def __init__(self, delay: float, failures: int):
        self.delay, self.failures = delay, failures
        self.acquires, self.withdrawals = [], []

    def Acquire(self, request, context):
        self.acquires.append((request.request_id, request.wait_ms))
        if len(self.acquires) <= self.failures:
            time.sleep(self.delay)  # the member's own slowness, not a wait for the client
            context.abort(grpc.StatusCode.UNAVAILABLE, "cut off from the leader")
        return lock_pb2.AcquireResponse(acquired=False)

    def Withdraw(self, request, context):
        self.withdrawals.append(request.request_id)
        return lock_pb2.WithdrawResponse()


class InCluster:
    """A member of ``cluster`` (16 hex digits; None: one that names none), as a member's answers
    name it; it refuses a request naming another one (UNAVAILABLE, nothing recorded), as
    a member does. ``named``: the cluster each request named (None: none), refused ones too."""

    def __init__(self, cluster: Optional[str] = None):
        self.cluster = cluster
        self.named = []
        #: False: it serves a request naming another cluster, as one naming none.
        self.checks = True

    def _refused(self, context) -> bool:
        asked = dict(context.invocation_metadata()).get("latch-cluster-id")
        self.named.append(asked)
        if self.cluster is not None:
            context.set_trailing_metadata([("latch-cluster-id", self.cluster)])
        if self.checks and self.cluster is not None and asked is not None and asked != self.cluster:
            context.abort(grpc.StatusCode.UNAVAILABLE, "this member belongs to another cluster")
        return False

    def _initial(self, context, metadata=()):
        named = [("latch-cluster-id", self.cluster)] if self.cluster is not None else []
        if named or metadata:
            context.send_initial_metadata(named + list(metadata))


class NamingKV(kv_pb2_grpc.KVServicer, InCluster):
    """A member that answers puts at revisions counting up from 10 and reads at ``read_at``
    (a serializable one) or at its last put (a linearizable one), as ``member_id``; when
    ``leader`` is set, every answer names it (``latch-leader-addr``), as a follower's do.
    Records each call as ``(method, serializable)``."""

    def __init__(self, member_id: int, read_at: int = 1, cluster: Optional[str] = None):
        InCluster.__init__(self, cluster)
        self.member_id, self.read_at = member_id, read_at
        self.leader: Optional[str] = None
        self.calls = []
        self.revision = 10

    def _answer(self, context):
        self._refused(context)
        self._initial(context, [("latch-leader-addr", self.leader)] if self.leader is not None else [])

    def Put(self, request, context):
        self._answer(context)
        self.calls.append(("Put", None))
        self.revision += 1
        return kv_pb2.PutResponse(header=kv_pb2.ResponseHeader(member_id=self.member_id, revision=self.revision))

    def Range(self, request, context):
        self._answer(context)
        self.calls.append(("Range", request.serializable))
        at = self.read_at if request.serializable else 100
        return kv_pb2.RangeResponse(header=kv_pb2.ResponseHeader(member_id=self.member_id, revision=at))


class CutOffKV(kv_pb2_grpc.KVServicer, InCluster):
    """A leader this client cannot use: every call fails UNAVAILABLE, naming ``leader`` (else
    nobody), and its cluster when it has one, saying the write stays proposed if ``unsettled``.
    Counts them."""

    def __init__(self, cluster: Optional[str] = None, leader: Optional[str] = None, unsettled: bool = False):
        InCluster.__init__(self, cluster)
        self.leader = leader
        self.unsettled = unsettled
        self.calls = 0

    def Put(self, request, context):
        self._refused(context)
        self.calls += 1
        trailing = [("latch-cluster-id", self.cluster)] if self.cluster is not None else []
        if self.leader is not None:
            trailing.append(("latch-leader-addr", self.leader))
        if self.unsettled:
            trailing.append(("latch-unsettled", "true"))
        context.set_trailing_metadata(trailing)
        context.abort(grpc.StatusCode.UNAVAILABLE, "cut off")


class HeldKV(kv_pb2_grpc.KVServicer):
    """A member that holds every read and put until released (``release``), or 10 s; ``reached``
    is set once one arrived; ``put_ids`` has the request id of each put."""

    def __init__(self):
        self.reached, self.release = threading.Event(), threading.Event()
        self.put_ids = []

    def Range(self, request, context):
        self.reached.set()
        self.release.wait(10)
        return kv_pb2.RangeResponse()

    def Put(self, request, context):
        self.put_ids.append(request.request_id)
        self.reached.set()
        self.release.wait(10)
        return kv_pb2.PutResponse()


class HeldWatch(watch_pb2_grpc.WatchServicer):
    """A member that opens each watch and then holds it, sending nothing, until released
    (``release``) or 60 s; ``reached`` is set once one opened, ``ended`` once its client ended it."""

    def __init__(self):
        self.reached, self.release, self.ended = threading.Event(), threading.Event(), threading.Event()

    def Watch(self, requests, context):
        create = next(requests).create
        context.add_callback(self.ended.set)
        yield watch_pb2.WatchResponse(header=kv_pb2.ResponseHeader(revision=create.start_revision - 1),
                                      watch_id=create.watch_id, created=True)
        self.reached.set()
        self.release.wait(60)


class HeldOnceKV(HeldKV):
    """A member that holds its first put as ``HeldKV`` does, and fails the later ones
    UNAVAILABLE, as a member that knows no leader does."""

    def Put(self, request, context):
        if self.put_ids:
            # The member's own answer (naming its cluster), not a connection's failure.
            context.set_trailing_metadata([("latch-cluster-id", "00000000000000aa")])
            context.abort(grpc.StatusCode.UNAVAILABLE, "no leader is known")
        return super().Put(request, context)


class HeldOnceOverLimitKV(HeldKV):
    """A member that holds its first put as ``HeldKV`` does, and refuses the later ones at once
    over one of its limits, before proposing them (no ``latch-settled``)."""

    def Put(self, request, context):
        if self.put_ids:
            context.set_trailing_metadata([("latch-cluster-id", "00000000000000aa"), ("latch-over-limit", "true")])
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "member 2 holds 10000 sessions (--max-sessions)")
        return super().Put(request, context)


class RefusingKV(kv_pb2_grpc.KVServicer):
    """A member that refuses every put at once, for good, as applied (the session it names is
    gone): marked settled, the request id's outcome."""

    def Put(self, request, context):
        context.set_trailing_metadata([("latch-cluster-id", "00000000000000aa"), ("latch-settled", "true")])
        context.abort(grpc.StatusCode.NOT_FOUND, "session 'gone' not found")


class OverLimitKV(kv_pb2_grpc.KVServicer):
    """A member that refuses every put at once over one of its limits, as a member does."""

    def Put(self, request, context):
        context.set_trailing_metadata([("latch-over-limit", "true")])
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "member 2 holds 10000 sessions, the most it may (--max-sessions)")

    def Range(self, request, context):
        context.set_trailing_metadata([("latch-over-limit", "true")])
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "the answer is over --max-response-bytes")


class LateNoLeaderKV(kv_pb2_grpc.KVServicer):
    """A member that answers each put after 0.5 s UNAVAILABLE, naming its cluster, as a member
    that knows no leader does: its own answer, which settles nothing."""

    def Put(self, request, context):
        time.sleep(0.5)
        context.set_trailing_metadata([("latch-cluster-id", "00000000000000aa")])
        context.abort(grpc.StatusCode.UNAVAILABLE, "no leader is known")


class SlowKV(kv_pb2_grpc.KVServicer):
    """A member that answers each put after ``delay``: UNAVAILABLE when ``fail``, else as
    member ``member_id``; ``ids`` has the request id of each put."""

    def __init__(self, delay: float, fail: bool, member_id: int = 0):
        self.delay, self.fail, self.member_id = delay, fail, member_id
        self.ids = []

    def Put(self, request, context):
        self.ids.append(request.request_id)
        time.sleep(self.delay)
        if self.fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no leader")
        return kv_pb2.PutResponse(header=kv_pb2.ResponseHeader(member_id=self.member_id, revision=42))


class AppliedBeforeKV(NamingKV):
    """Reads as ``NamingKV``; every put fails FAILED_PRECONDITION as applied before at ``revision``,
    its answer's data not kept, as a retry whose first answer was lost is answered."""

    def __init__(self, revision: int):
        super().__init__(member_id=1, read_at=5)
        self.applied_at = revision

    def Put(self, request, context):
        self.calls.append(("Put", None))
        context.set_trailing_metadata([("latch-applied-revision", str(self.applied_at))])
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "applied before; its answer's data is not kept")


class OneEventWatch(watch_pb2_grpc.WatchServicer, InCluster):
    """A member that serves each watch one event at its start revision (key ``key``), then ends
    the stream (as a member that stopped would), naming its cluster in the stream's headers."""

    def __init__(self, key: str, cluster: str):
        InCluster.__init__(self, cluster)
        self.key = key

    def Watch(self, requests, context):
        create = next(requests).create
        self._refused(context)
        self._initial(context)
        at = create.start_revision
        header = kv_pb2.ResponseHeader(revision=at - 1)
        yield watch_pb2.WatchResponse(header=header, watch_id=create.watch_id, created=True)
        kv = kv_pb2.KeyValue(key=self.key.encode(), value=b"v", create_revision=at, mod_revision=at, version=1)
        yield watch_pb2.WatchResponse(header=kv_pb2.ResponseHeader(revision=at), watch_id=create.watch_id,
                                      events=[watch_pb2.Event(type=watch_pb2.Event.PUT, kv=kv)])


def serve(test: unittest.TestCase, add, member) -> str:
    """Starts an in-process gRPC member playing ``member``; its address."""
    from concurrent import futures
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    add(member, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    test.addCleanup(server.stop, None)
    return f"127.0.0.1:{port}"


class OfflineScriptedTest(unittest.TestCase):
    """Sessions and locks against in-process members that play a script (no cluster)."""

    def test_a_keepalive_a_frozen_member_holds_is_hedged_to_the_next_member_whose_grant_counts(self):
        frozen = FrozenOrGrantingSessions(frozen=True)
        granting = FrozenOrGrantingSessions(frozen=False, ttl_ms=1200)
        endpoints = [serve(self, session_pb2_grpc.add_SessionServicer_to_server, m) for m in (frozen, granting)]
        # A request timeout far past the test's patience: only the hedge can renew the lease in time.
        with latch.Client(endpoints, request_timeout=600, retry_budget=600) as client:
            # The lease ran out as it starts: the first keepalive goes out at once, to the frozen
            # member (the preferred one); a sixth of the TTL (0.2 s) later a second goes to the next.
            session = latch.Session(client, "s", ttl=1.2, lease_end=time.monotonic(), grace=600)
            self.assertTrue(frozen.event("reached", "s").wait(PATIENCE), "the first went to the frozen member")
            self.assertTrue(granting.event("granted", "s").wait(PATIENCE), "the hedge reached the next member")
            deadline = time.monotonic() + PATIENCE
            while session.lease_left() == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            self.assertGreater(session.lease_left(), 0, "the hedge's grant renewed the lease")
            self.assertNotEqual(session.state, latch.SessionState.EXPIRED)
            # The first attempt runs on (a member only slow would answer it); the session's end
            # cancels it.
            session.abandon()
            self.assertTrue(frozen.event("cancelled", "s").wait(PATIENCE),
                            "the attempt still held by the frozen member was cancelled once the session ended")

    def test_hedges_around_a_frozen_leader_leave_one_first_attempt_running_per_client(self):
        frozen = FrozenOrGrantingSessions(frozen=True)
        granting = FrozenOrGrantingSessions(frozen=False, ttl_ms=1200)
        endpoints = [serve(self, session_pb2_grpc.add_SessionServicer_to_server, m) for m in (frozen, granting)]
        with latch.Client(endpoints, request_timeout=600, retry_budget=600) as client:
            ids = ["a", "b", "c"]
            sessions = [latch.Session(client, i, ttl=1.2, lease_end=time.monotonic(), grace=600) for i in ids]
            for i in ids:
                self.assertTrue(granting.event("granted", i).wait(PATIENCE), f"session {i}'s hedge was granted")
            deadline = time.monotonic() + PATIENCE
            while frozen.held != 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            self.assertEqual(frozen.held, 1, "the frozen member holds one first attempt (the one left to run on), "
                                             "the others were cancelled")
            for session in sessions:
                session.abandon()
            deadline = time.monotonic() + PATIENCE
            while frozen.held != 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            self.assertEqual(frozen.held, 0, "the sessions' end cancels the one left")

    def test_a_leader_that_was_only_slow_is_where_writes_start_again_once_it_answers(self):
        # The first member answers keepalives after 2.5 s; the hedge (a sixth of 12 s) goes to the
        # second after 2 s, which grants at once.
        slow = FrozenOrGrantingSessions(frozen=False, ttl_ms=12000, delay=2.5)
        quick = FrozenOrGrantingSessions(frozen=False, ttl_ms=12000)
        endpoints = [serve(self, session_pb2_grpc.add_SessionServicer_to_server, m) for m in (slow, quick)]
        with latch.Client(endpoints, request_timeout=600, retry_budget=600) as client:
            session = latch.Session(client, "s", ttl=12, lease_end=time.monotonic(), grace=600)
            self.assertTrue(slow.event("reached", "s").wait(PATIENCE), "the first went to the slow member")
            self.assertTrue(quick.event("granted", "s").wait(PATIENCE), "the hedge reached the next member")
            self.assertTrue(slow.event("granted", "s").wait(PATIENCE), "the slow member answered in the end")
            deadline = time.monotonic() + PATIENCE
            while client._write_start() != 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            self.assertEqual(client._write_start(), 0, "writes start at the slow member again once it answered, "
                             "not only once it is no longer distrusted")
            session.abandon()

    def test_a_followers_answer_naming_the_leader_sends_later_writes_there_and_reads_stay(self):
        follower, leader = NamingKV(member_id=2), NamingKV(member_id=1)
        add = kv_pb2_grpc.add_KVServicer_to_server
        follower_addr, leader_addr = serve(self, add, follower), serve(self, add, leader)
        follower.leader = leader_addr
        with latch.Client([follower_addr]) as client:
            answered = [client.put("k", str(i)).header.member_id for i in range(3)]
            self.assertEqual(answered, [2, 1, 1], "the first put at the follower given, the next at the leader "
                             "it named")
            self.assertEqual(client.endpoints, [follower_addr, leader_addr], "the leader named is known")
            # The follower's serializable read is below the put at 12 on the leader: asked again.
            read = client.range("k", serializable=True)
            self.assertEqual((read.header.member_id, read.header.revision), (2, 100),
                             "a read stays on the follower and never answers below the client's own write")
            self.assertEqual(follower.calls[-2:], [("Range", True), ("Range", False)],
                             "the serializable read behind the write was asked again linearizably")
            follower.read_at = 50
            self.assertEqual(client.range("k", serializable=True).header.revision, 50,
                             "a serializable read at or past the client's writes is kept")
            client.range("k", serializable=True, revision=12)
            self.assertEqual(follower.calls[-1], ("Range", False), "a read at the revision of the client's own "
                             "write is asked linearizably at once (a member behind would not have it yet)")
        follower.calls.clear()
        with latch.Client([follower_addr], writes_to_leader=False) as client:
            answered = [client.put("k", str(i)).header.member_id for i in range(3)]
            self.assertEqual(answered, [2, 2, 2], "writes_to_leader=False keeps writes where reads go")
            self.assertEqual(client.endpoints, [follower_addr], "and learns no leader")

    def test_a_leader_that_failed_a_write_is_not_taken_back_on_a_followers_word_at_the_next_write(self):
        # A partition of the client's own: the follower keeps naming a leader the client cannot reach.
        cut_off, follower = CutOffKV(), NamingKV(member_id=2)
        add = kv_pb2_grpc.add_KVServicer_to_server
        follower.leader = serve(self, add, cut_off)
        with latch.Client([serve(self, add, follower)]) as client:
            answered = [client.put("k", str(i)).header.member_id for i in range(4)]
        self.assertEqual(answered, [2, 2, 2, 2], "every write is acknowledged by the follower")
        self.assertEqual(cut_off.calls, 1, "the leader that failed a write is not tried again while distrusted")

    def test_a_leader_that_answered_unavailable_naming_the_cluster_is_taken_back_at_a_followers_word(self):
        # An election under way: the member named the leader answers UNAVAILABLE naming no
        # leader, but it answered (it named the cluster), so it is not passed over as unreachable.
        electing, follower = CutOffKV(cluster="0000000000000007"), NamingKV(member_id=2, cluster="0000000000000007")
        add = kv_pb2_grpc.add_KVServicer_to_server
        follower.leader = serve(self, add, electing)
        with latch.Client([serve(self, add, follower)]) as client:
            answered = [client.put("k", str(i)).header.member_id for i in range(4)]
        self.assertEqual(answered, [2, 2, 2, 2], "every write is acknowledged by the follower")
        self.assertEqual(electing.calls, 3, "each put after the first goes to the member named the leader, "
                         "which answered and stays trusted")

    def test_a_call_that_ends_on_a_dead_endpoint_leads_with_what_a_live_member_answered(self):
        # Two of three members down: however the retries fall, the call ends leading with what
        # the live member said, not with a refused connection to a dead one.
        live = serve(self, kv_pb2_grpc.add_KVServicer_to_server, CutOffKV(cluster="0000000000000007"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{s.getsockname()[1]}"
        with latch.Client([dead, live], request_timeout=0.2, retry_budget=0.6) as client:
            for _ in range(3):
                with self.assertRaises(latch.LatchError) as caught:
                    client.put("k", "v")
                failure = caught.exception
                self.assertEqual((failure.code, failure.endpoint), (grpc.StatusCode.UNAVAILABLE, live), str(failure))
                self.assertIn("kv.Put: cut off (retried for", str(failure))
                self.assertIn(f"last tried {dead}: failed to connect", str(failure))
                self.assertFalse(failure.unsettled, "the live member refused the write")
                self.assertNotIn("may still take effect", str(failure))

    def test_a_write_given_up_unsettled_says_it_may_still_take_effect(self):
        live = serve(self, kv_pb2_grpc.add_KVServicer_to_server,
                     CutOffKV(cluster="0000000000000007", unsettled=True))
        with latch.Client([live], request_timeout=0.2, retry_budget=0.3) as client:
            with self.assertRaises(latch.LatchError) as caught:
                client.put("k", "v")
        self.assertTrue(caught.exception.unsettled, str(caught.exception))
        self.assertEqual(str(caught.exception).count("may still take effect: read before sending it again"), 1,
                         str(caught.exception))

    def test_a_member_of_another_cluster_refuses_the_clients_calls_and_they_go_on_to_one_of_its_own(self):
        ours, theirs = "0000000000000001", "0000000000000002"
        add = kv_pb2_grpc.add_KVServicer_to_server
        foreign = NamingKV(member_id=9, cluster=theirs)
        follower = CutOffKV(cluster=ours, leader=serve(self, add, foreign))
        leader = NamingKV(member_id=1, cluster=ours)
        with latch.Client([serve(self, add, follower), serve(self, add, leader)]) as client:
            answered = [client.put("k", str(i)).header.member_id for i in range(2)]
        self.assertEqual(answered, [1, 1], "both puts are acknowledged by the leader of the client's cluster")
        self.assertEqual(foreign.calls, [], "the other cluster's member applied nothing")
        self.assertEqual(foreign.named, [ours], "it was asked once, the request naming the client's cluster")
        self.assertEqual(follower.named[0], None, "the very first request names no cluster: none is known yet")
        self.assertEqual(leader.named, [ours, ours], "every request after the first answer names the cluster")

    def test_a_call_whose_every_endpoint_is_another_clusters_member_fails_once_each_refused(self):
        ours, theirs = "0000000000000001", "0000000000000002"
        add = kv_pb2_grpc.add_KVServicer_to_server
        first, second = NamingKV(member_id=8, cluster=theirs), NamingKV(member_id=9, cluster=theirs)
        with latch.Client([serve(self, add, first), serve(self, add, second)], cluster_id=ours) as client:
            with self.assertRaises(latch.LatchError) as failed:
                client.put("k", "v")
        said = str(failed.exception)
        self.assertIn("every endpoint this client knows", said)
        self.assertIn(ours, said, "the error names the client's cluster")
        self.assertFalse(failed.exception.unsettled, "another cluster's refusals did nothing")
        self.assertEqual((first.calls, second.calls), ([], []), "nothing was applied")
        self.assertEqual((first.named, second.named), ([ours], [ours]), "each endpoint was asked once")

    def test_a_client_told_its_cluster_names_it_from_the_first_request_and_no_other_cluster_serves_it(self):
        ours, theirs = "0000000000000001", "0000000000000002"
        add = kv_pb2_grpc.add_KVServicer_to_server
        foreign = NamingKV(member_id=9, cluster=theirs)
        member = NamingKV(member_id=1, cluster=ours)
        with latch.Client([serve(self, add, foreign), serve(self, add, member)], cluster_id=ours.upper()) as client:
            self.assertEqual(client.put("k", "v").header.member_id, 1, "the member of the client's cluster answers")
        self.assertEqual(foreign.calls, [], "the other cluster's member, listed first, applied nothing")
        self.assertEqual(foreign.named, [ours], "it was asked once, the first request already naming cluster 1")
        self.assertEqual(member.named, [ours])
        for bad in ("0x01", "1", "000000000000000g", "+000000000000001"):
            with self.assertRaises(ValueError, msg=f"{bad!r} is no cluster id") as refused:
                latch.Client(["127.0.0.1:1"], cluster_id=bad)
            self.assertIn("16 hex digits", str(refused.exception))

    def test_a_write_applied_before_its_failed_answer_names_its_revision_and_floors_the_clients_reads(self):
        member = AppliedBeforeKV(revision=42)
        with latch.Client([serve(self, kv_pb2_grpc.add_KVServicer_to_server, member)]) as client:
            with self.assertRaises(latch.LatchError) as failed:
                client.put("k", "v")
            self.assertEqual(failed.exception.applied_revision, 42, "the error names the revision it was applied at")
            self.assertTrue(failed.exception.already_applied)
            client.range("k", serializable=True)
        self.assertEqual(member.calls[-2:], [("Range", True), ("Range", False)],
                         "a serializable read at 5, below the write applied at 42, is asked again linearizably")

    def test_a_success_naming_another_cluster_is_an_error_not_an_acknowledgement(self):
        ours, theirs = "0000000000000001", "0000000000000002"
        stray = NamingKV(member_id=9, cluster=theirs)
        stray.checks = False
        with latch.Client([serve(self, kv_pb2_grpc.add_KVServicer_to_server, stray)], cluster_id=ours) as client:
            with self.assertRaises(latch.LatchError) as failed:
                client.put("k", "v")
        self.assertEqual(failed.exception.code, grpc.StatusCode.INTERNAL, str(failed.exception))
        self.assertIn(theirs, str(failed.exception))
        self.assertIn(ours, str(failed.exception))
        self.assertEqual(stray.calls, [("Put", None)], "served once, and not asked again")

    def test_a_watch_learns_its_cluster_from_its_stream_and_a_stream_another_cluster_serves_is_opened_elsewhere(self):
        ours, theirs = "0000000000000001", "0000000000000002"
        add = watch_pb2_grpc.add_WatchServicer_to_server
        own, stray = OneEventWatch("ours", ours), OneEventWatch("theirs", theirs)
        stray.checks = False  # it serves a watch naming another cluster: only the client's check stops it
        with latch.Client([serve(self, add, own), serve(self, add, stray)]) as client:
            watch = client.watch("k", start_revision=5)
            got = result(in_thread(lambda: [next(watch) for _ in range(2)]))
            watch.cancel()
        self.assertEqual([(b.revision, [e.kv.key for e in b.events]) for b in got], [(5, [b"ours"]), (6, [b"ours"])],
                         "every event delivered is the client's cluster's; the other cluster's stream was dropped")
        self.assertEqual(own.named[0], None, "the first stream names no cluster: none is known yet")
        self.assertEqual(stray.named, [ours], "the reopened stream named the cluster the first stream's headers did")
        self.assertEqual(own.named[1:], [ours])

    def test_hints_past_the_bound_replace_the_oldest_learnt_member_not_in_use(self):
        from latch.client import MAX_HINTED_TARGETS
        hint = lambda p: f"127.0.0.2:{8000 + p}"  # noqa: E731
        with latch.Client(["127.0.0.1:7379"]) as client:
            learnt = [client._target_of(hint(p)) for p in range(MAX_HINTED_TARGETS)]
            self.assertEqual(learnt, list(range(1, MAX_HINTED_TARGETS + 1)), "hints up to the bound are learnt")
            self.assertEqual(client._target_of(hint(0)), 1, "a hint already learnt is still followed")
            self.assertEqual(client._target_of("127.0.0.1:7379"), 0, "so is one naming a given member")
            # Full: writes start at the second learnt member; the first one learnt gives way,
            # then the third (the second is in use), and the given member never does.
            client._leader = 2
            past = MAX_HINTED_TARGETS
            old = client.target(1)
            self.assertEqual(client._target_of(hint(past)), 1, "the oldest learnt member gives way")
            # A call still on the replaced member says nothing of the one that took its place.
            client._answered(1, old, True, None)
            self.assertEqual(client._leader, 2, "an answer of the replaced member makes nothing the leader")
            client._after_unanswered(1, old)
            self.assertNotIn(1, client._failed, "its silence does not make the new member distrusted")
            self.assertEqual(client._target_of(hint(past + 1)), 3, "the leader's entry is passed over")
            self.assertEqual(len(client.endpoints), 1 + MAX_HINTED_TARGETS)
            self.assertEqual(client.endpoints[:4], ["127.0.0.1:7379", hint(past), hint(1), hint(past + 1)])
            self.assertNotIn(hint(0), client.endpoints, "the replaced member is gone")

    def test_a_leader_hint_naming_a_wildcard_address_is_ignored(self):
        follower = NamingKV(member_id=2)
        follower_addr = serve(self, kv_pb2_grpc.add_KVServicer_to_server, follower)
        follower.leader = "0.0.0.0:7379"
        with latch.Client([follower_addr]) as client:
            answered = [client.put("k", str(i)).header.member_id for i in range(2)]
            self.assertEqual(answered, [2, 2], "a member bound to a wildcard address names no host to go to")
            self.assertEqual(client.endpoints, [follower_addr])

    def test_a_call_told_to_stay_ends_with_its_members_failure_and_tries_no_other(self):
        from latch.client import _unary

        members = [CutOffKV(), CutOffKV()]
        endpoints = [serve(self, kv_pb2_grpc.add_KVServicer_to_server, m) for m in members]
        put = kv_pb2.PutRequest(key=b"k", value=b"v", request_id="r")
        with latch.Client(endpoints, retry_budget=0.5) as client:
            attempt = lambda t, timeout: _unary(t, "kv", "Put", put, timeout)  # noqa: E731
            stay = threading.Event()
            stay.set()
            with self.assertRaises(latch.LatchError) as caught:
                client._attempts("KV.Put", attempt, write=True, stay=stay)
            self.assertEqual(caught.exception.code, grpc.StatusCode.UNAVAILABLE, "the member's own failure")
            self.assertEqual([m.calls for m in members], [1, 0], "no other member was tried")
            with self.assertRaises(latch.LatchError):
                client._attempts("KV.Put", attempt, write=True)
            self.assertGreater(members[1].calls, 0, "without it, the call moves on")

    def _hedging(self, first, second, timeout: float) -> latch.Client:
        """A client of members ``first`` and ``second`` (KV servicers) that hedges after 0.1 s,
        its request timeout and retry budget both ``timeout``."""
        endpoints = [serve(self, kv_pb2_grpc.add_KVServicer_to_server, m) for m in (first, second)]
        client = latch.Client(endpoints, request_timeout=timeout, retry_budget=timeout, hedge_after=0.1)
        self.addCleanup(client.close)
        return client

    def test_a_call_to_a_member_that_stopped_answering_is_sent_to_the_next_one_too_and_answered_there(self):
        held, live = HeldKV(), NamingKV(member_id=2)
        self.addCleanup(held.release.set)
        # Without the hedge, each call would wait out the 3 s request timeout and budget: fail.
        client = self._hedging(held, live, timeout=3)
        self.assertEqual(client.put("k", "v").header.member_id, 2, "the hedged put is answered by the next member")
        self.assertTrue(held.reached.wait(PATIENCE), "the put went first to the first member")
        self.assertEqual(len(held.put_ids), 1)
        self.assertTrue(held.put_ids[0], "the put carries a request id")
        client.get("k")
        self.assertEqual(live.calls, [("Put", None), ("Range", False)], "the second member answered both")

    def test_a_hedge_refused_for_good_ends_the_call_at_once_with_that_answer(self):
        held, refusing = HeldKV(), RefusingKV()
        self.addCleanup(held.release.set)
        client = self._hedging(held, refusing, timeout=2)
        started = time.monotonic()
        with self.assertRaises(latch.LatchError) as caught:
            client.put("k", "v", session="gone")
        # (It once waited out the first member, then said the write may still take effect.)
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND, f"the member's answer: {caught.exception}")
        self.assertLess(time.monotonic() - started, 1.5, "not after the unanswered member's whole timeout")
        # Refused at apply: the request id's outcome, which the other attempt shares.
        self.assertFalse(caught.exception.unsettled, str(caught.exception))

    def test_a_hedge_refused_before_it_was_proposed_is_decided_by_the_attempt_still_under_way(self):
        # review-s70-2 M2: a refusal over the member's own limit (members may set theirs
        # differently) settles nothing; the first attempt, still under way, decides.
        slow = SlowKV(delay=0.3, fail=False, member_id=1)
        client = self._hedging(slow, OverLimitKV(), timeout=0.6)
        self.assertEqual(client.put("k", "v").header.member_id, 1, "the first attempt's answer serves the call")
        self.assertEqual(len(slow.ids), 1, "asked once")
        held = HeldKV()
        self.addCleanup(held.release.set)
        client = self._hedging(held, OverLimitKV(), timeout=0.6)
        with self.assertRaises(latch.LatchError) as caught:
            client.put("k", "v")
        self.assertEqual(caught.exception.code, grpc.StatusCode.RESOURCE_EXHAUSTED, "the member's refusal ends it")
        self.assertTrue(caught.exception.unsettled, f"the first attempt, unanswered, may take effect: {caught.exception}")
        self.assertFalse(caught.exception.over_limit, f"not 'nothing was changed': {caught.exception}")
        self.assertIn("the write may still take effect", str(caught.exception))

    def test_a_refusal_before_proposing_after_an_unanswered_attempt_says_the_write_may_still_take_effect(self):
        member = HeldOnceOverLimitKV()
        self.addCleanup(member.release.set)
        client = latch.Client([serve(self, kv_pb2_grpc.add_KVServicer_to_server, member)], request_timeout=0.2,
                              retry_budget=0.6, hedge_after=None)
        self.addCleanup(client.close)
        with self.assertRaises(latch.LatchError) as caught:
            client.put("k", "v")
        self.assertEqual(caught.exception.code, grpc.StatusCode.RESOURCE_EXHAUSTED, str(caught.exception))
        self.assertTrue(caught.exception.unsettled, f"the first attempt may still take effect: {caught.exception}")
        self.assertFalse(caught.exception.over_limit, str(caught.exception))
        self.assertIn("the write may still take effect", caught.exception.message)

    def test_a_first_attempt_cut_while_its_hedge_went_on_is_reported_unsettled_to_the_retries(self):
        # review-s70-2 M2, scenario 2: the first attempt's cut (after the request went out) was
        # dropped while the hedge went on, and a call that then gave up said nothing of it.
        cut, late = SlowKV(0.3, fail=True), LateNoLeaderKV()
        client = self._hedging(cut, late, timeout=3)

        def put(t, timeout):
            return latch.client._unary_future(t, "kv", "Put", kv_pb2.PutRequest(key=b"k", value=b"v"), timeout)

        outcome, ended_at, dropped = client._hedged(put, 0, client.target(0), 3)
        self.assertIsInstance(outcome, grpc.RpcError, "both attempts failed")
        self.assertEqual(outcome.code(), grpc.StatusCode.UNAVAILABLE, "the hedge's own answer ends it")
        self.assertEqual(ended_at[0], 1, "it ended on the hedge, at the second member")
        self.assertTrue(dropped, "the first attempt's cut, dropped while the hedge went on, leaves it unsettled")

    def test_a_hedged_read_refused_over_a_limit_stays_over_the_limit(self):
        held, refusing = HeldKV(), OverLimitKV()
        self.addCleanup(held.release.set)
        client = self._hedging(held, refusing, timeout=2)
        with self.assertRaises(latch.LatchError) as caught:
            client.get("k")
        self.assertTrue(caught.exception.over_limit, f"a read so refused changed nothing: {caught.exception}")
        self.assertFalse(caught.exception.unsettled)

    def test_a_hedge_answered_applied_before_is_what_the_call_ends_with_when_the_first_times_out(self):
        held, applied = HeldKV(), AppliedBeforeKV(revision=77)
        self.addCleanup(held.release.set)
        client = self._hedging(held, applied, timeout=1)
        with self.assertRaises(latch.LatchError) as caught:
            client.put("k", "v", prev_kv=True)
        # (It was once dropped: the call ended DEADLINE_EXCEEDED, naming no revision.)
        self.assertEqual(caught.exception.applied_revision, 77, f"applied at 77: {caught.exception}")
        self.assertEqual(client._written, 77, "the applied write is the floor of the client's serializable reads")

    def test_a_first_attempt_failing_for_now_leaves_its_hedge_to_answer(self):
        first, second = SlowKV(0.4, fail=True), SlowKV(0.5, fail=False, member_id=2)
        client = self._hedging(first, second, timeout=3)
        self.assertEqual(client.put("k", "v").header.member_id, 2, "the hedge answered")
        # (The hedge was once cancelled, and the put sent to the second member again.)
        self.assertEqual(len(second.ids), 1, "the second member was sent the put once")

    def test_a_write_one_of_whose_attempts_went_unanswered_says_it_may_still_take_effect(self):
        # Every attempt unanswered; or the first, the later ones met a member that knows no leader:
        # the first member may hold it proposed, whatever the last attempt met.
        for member, code in ((HeldKV(), grpc.StatusCode.DEADLINE_EXCEEDED), (HeldOnceKV(), grpc.StatusCode.UNAVAILABLE)):
            self.addCleanup(member.release.set)
            client = latch.Client([serve(self, kv_pb2_grpc.add_KVServicer_to_server, member)], request_timeout=0.2,
                                  retry_budget=0.6)
            self.addCleanup(client.close)
            with self.assertRaises(latch.LatchError) as caught:
                client.put("k", "v")
            self.assertEqual(caught.exception.code, code, str(caught.exception))
            self.assertIn("the write may still take effect", caught.exception.message)

    def test_a_client_refuses_a_hedge_after_that_is_no_positive_number(self):
        for bad in (0, -1, math.inf):
            with self.assertRaises(ValueError, msg=f"hedge_after={bad}"):
                latch.Client(["127.0.0.1:7379"], hedge_after=bad)

    def _learnt_first(self, held: str) -> latch.Client:
        """A client that learnt 16 members from hints, the first of them ``held`` (the others are
        never asked), and whose calls and streams start there."""
        from latch.client import MAX_HINTED_TARGETS

        client = latch.Client(["127.0.0.1:1"], request_timeout=30)
        for addr in [held] + [f"127.0.0.2:{8000 + n}" for n in range(MAX_HINTED_TARGETS - 1)]:
            client._target_of(addr)
        client._preferred = 1
        return client

    def test_close_ends_a_call_in_flight_on_a_member_a_hint_replaced(self):
        member = HeldKV()
        client = self._learnt_first(serve(self, kv_pb2_grpc.add_KVServicer_to_server, member))
        self.addCleanup(member.release.set)
        read = in_thread(lambda: client.get("a"))
        self.assertTrue(member.reached.wait(PATIENCE), "the read reached the learnt member")
        client._preferred = 0  # reads moved on meanwhile; then a hint replaces the first learnt member
        self.assertEqual(client._target_of("127.0.0.3:9000"), 1)
        client.close()
        with self.assertRaises(latch.LatchError) as caught:
            result(read)
        self.assertEqual(caught.exception.code, grpc.StatusCode.CANCELLED,
                         "the read on the replaced member ended with the client, not 10 s later")

    def test_a_member_taken_just_before_close_opens_no_connection_after_it(self):
        client = latch.Client(["127.0.0.1:7379"])
        member = client.target(0)  # a call about to go out takes its member
        client.close()
        with self.assertRaises(latch.LatchError) as caught:
            member.stub("kv")
        self.assertEqual(caught.exception.code, grpc.StatusCode.CANCELLED, "no connection nobody would close")

    def test_close_ends_a_watch_on_a_member_a_hint_replaced(self):
        import gc

        member = HeldWatch()
        client = self._learnt_first(serve(self, watch_pb2_grpc.add_WatchServicer_to_server, member))
        self.addCleanup(member.release.set)
        watch = client.watch("k", start_revision=5)
        self.assertTrue(member.reached.wait(PATIENCE), "the watch opened on the learnt member")
        client._preferred = 0  # then a hint replaces that member, and nothing else holds it
        self.assertEqual(client._target_of("127.0.0.3:9000"), 1)
        gc.collect()
        client.close()
        self.assertTrue(member.ended.wait(PATIENCE), "the client's close ended the watch's stream (it is held 60 s)")
        watch.cancel()

    def test_a_not_found_outranks_the_other_attempts_failure(self):
        from latch.session import Session

        # A session without its thread, whose attempts are scripted: the first never answers
        # (the queue stays empty for the hedge's delay); once the second goes out, both fail.
        session = Session.__new__(Session)
        order = [latch.LatchError(grpc.StatusCode.NOT_FOUND, "no session s"),
                 latch.LatchError(grpc.StatusCode.UNAVAILABLE, "cut off")]
        started = []

        def start(until, cap, answers, at, stay=None, granted_sets=None):
            started.append(cap)
            flight = type("Flight", (), {"cancel": lambda self: None})()
            if cap is not None:  # the second: both answers come now, the NOT_FOUND first
                for error in order:
                    answers.put((flight, None, error))
            return flight

        session._start_keep_alive = start
        session.client = type("C", (), {"_write_start": lambda self: 0, "target": lambda self, i: None,
                                        "_after_unanswered": lambda self, i, target: i + 1})()
        with self.assertRaises(latch.LatchError) as caught:
            session._keep_alive_hedged(until=time.monotonic() + 60, hedge_after=0.01)
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND, "the session may be gone: said so")
        self.assertEqual(started, [None, 0.01], "the second attempt capped at the hedge's delay")
        order.reverse()
        started.clear()
        with self.assertRaises(latch.LatchError) as caught:
            session._keep_alive_hedged(until=time.monotonic() + 60, hedge_after=0.01)
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND, "whichever attempt said it")

    def test_close_and_abandon_cancel_a_keepalive_in_flight_instead_of_waiting_out_its_timeout(self):
        frozen = FrozenOrGrantingSessions(frozen=True)
        endpoint = serve(self, session_pb2_grpc.add_SessionServicer_to_server, frozen)
        # Neither the request timeout nor the hedge (a sixth of 3600 s) comes within the test's patience.
        with latch.Client(endpoint, request_timeout=600, retry_budget=600) as client:
            for end in ("close", "abandon"):
                session = latch.Session(client, end, ttl=3600, lease_end=time.monotonic(), grace=3600)
                self.assertTrue(frozen.event("reached", end).wait(PATIENCE), "a keepalive is in flight")
                result(in_thread(getattr(session, end)))
                self.assertTrue(frozen.event("cancelled", end).wait(PATIENCE), f"{end}() cancelled the keepalive")
                self.assertEqual(session.state, latch.SessionState.EXPIRED)

    def test_a_grant_only_the_background_withdrawal_found_is_released_for_session_lock_and_kept_for_acquire(self):
        member = LateGrantLocks()
        endpoint = serve(self, lock_pb2_grpc.add_LockServicer_to_server, member)
        warned = []
        said = threading.Event()

        class Said(logging.Handler):
            def emit(self, record):
                if record.levelno >= logging.WARNING and "its session holds it" in record.getMessage():
                    warned.append(record.getMessage())
                    said.set()

        handler = Said()
        logging.getLogger("latch.client").addHandler(handler)
        self.addCleanup(logging.getLogger("latch.client").removeHandler, handler)
        with latch.Client(endpoint, request_timeout=1.0, retry_budget=0.3) as client:
            session = idle_session(client)
            with self.assertRaises(latch.LatchError) as caught:
                session.lock("late-lock", wait=0)
            self.assertEqual(caught.exception.code, grpc.StatusCode.UNAVAILABLE, "unsettled, and the first "
                             "withdrawal failed too: it goes on in the background")
            with self.assertRaises(latch.LatchError):
                client.acquire("late-acquire", "raw", wait=0)
            member.grant.set()
            # Session.lock's: nobody holds a Lock of it, and its turn keeps the session's next lock
            # of the name from re-entering it meanwhile, so it is released.
            self.assertTrue(member.released.wait(PATIENCE), "the late grant of Session.lock is released")
            # A bare acquire's: kept (the caller may have acquired again and hold it now), and said.
            self.assertTrue(said.wait(PATIENCE), "the late grant of acquire is said")
            join_withdrawals("late-lock", "late-acquire")
            self.assertEqual(member.releases, ["tok-locker"], "only Session.lock's late grant was released")
            self.assertEqual(len(warned), 1, warned)
            self.assertIn("'late-acquire'", warned[0])
            self.assertEqual(session._turns.names_in_use(), [], "the withdrawal gave the turn back")
            session.abandon()

    def test_a_second_session_lock_of_a_name_waits_while_the_first_lock_holds_it_and_goes_after_its_release(self):
        member = ReentrantLocks()
        endpoint = serve(self, lock_pb2_grpc.add_LockServicer_to_server, member)
        sent_or_waiting = member.second_acquire
        said_waiting_for_turn(self, sent_or_waiting)
        with latch.Client(endpoint, request_timeout=5, retry_budget=5) as client:
            session = idle_session(client)
            first = session.lock("l", wait=0)
            self.assertEqual(first.token, "tok-1")
            # Sent, each would be answered with the first's hold (re-entrant), which its release ends.
            with self.assertRaises(latch.LockNotAcquired) as caught:
                session.lock("l", wait=0)
            self.assertTrue(caught.exception.waited_for_turn)
            with self.assertRaises(latch.LockNotAcquired) as caught:
                result(in_thread(lambda: session.lock("l", wait=0.05)))  # the wait runs out waiting for the turn
            self.assertTrue(caught.exception.waited_for_turn)
            self.assertIn("nothing was sent", str(caught.exception))
            # The thread holding it would wait for itself: refused at once.
            with self.assertRaises(latch.LatchError) as caught:
                session.lock("l", wait=PATIENCE)
            self.assertEqual(caught.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
            self.assertIn("release it first", caught.exception.message)
            self.assertEqual(member.events, ["acquire tok-1"], "none was sent")
            sent_or_waiting.clear()
            second = in_thread(lambda: session.lock("l", wait=PATIENCE))
            self.assertTrue(sent_or_waiting.wait(PATIENCE), "the second lock is under way")
            first.release()
            second = result(second)
            self.assertEqual(second.token, "tok-2", "a grant of its own, not the first's hold")
            self.assertEqual(member.events, ["acquire tok-1", "release tok-1", "acquire tok-2"],
                             "sent only once the first's release was answered")
            second.release()
            self.assertEqual(session._turns.names_in_use(), [], "a name no turn holds or awaits is forgotten")
            session.abandon()
            # Ended client-side: nothing it would lock could be trusted, so nothing is sent.
            for wait in (0, None):
                with self.assertRaises(latch.LatchError) as caught:
                    session.lock("l", wait=wait)
                self.assertEqual(caught.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
                self.assertIn("the session ended", caught.exception.message)
            self.assertEqual(len(member.events), 4, member.events)

    def test_a_lock_dropped_unreleased_is_released_in_the_background_and_gives_its_turn_back(self):
        import gc

        member = ReentrantLocks()
        endpoint = serve(self, lock_pb2_grpc.add_LockServicer_to_server, member)
        with latch.Client(endpoint, request_timeout=5, retry_budget=5) as client:
            session = idle_session(client)
            self.assertEqual(session.lock("l", wait=0).token, "tok-1")  # dropped, never released
            gc.collect()
            again = session.lock("l", wait=PATIENCE)  # the same thread: it holds no turn any more
            self.assertEqual(again.token, "tok-2", "a grant of its own, sent after the dropped one's release")
            self.assertEqual(member.events, ["acquire tok-1", "release tok-1", "acquire tok-2"])
            again.release()
            self.assertEqual(session._turns.names_in_use(), [])
            session.abandon()

    def test_a_turn_whose_lock_was_dropped_is_waited_for_by_its_thread_before_the_background_release_begins(self):
        from latch.lock import _Turns

        # The finalizer of a Lock dropped unreleased marks its turn before the thread that
        # releases it starts; a lock of the name from the dropping thread, in between, waits for
        # that release instead of being told the thread holds the name already.
        turns = _Turns()
        turn = turns.take("l", None)
        with self.assertRaises(latch.LatchError) as caught:
            turns.take("l", None)
        self.assertIn("holds the session's lock 'l' already", caught.exception.message, "while its Lock lives")
        turn.dropped()
        self.assertIsNone(turns.take("l", 0.05), "waits (and here runs out), the release not begun yet")
        turn.give_back()
        self.assertIsNotNone(turns.take("l", 0.05), "the turn once given back")

    def test_a_session_lock_retried_while_the_first_ones_withdrawal_runs_waits_for_it_then_gets_a_fresh_grant(self):
        member = ReentrantLocks(lose_first=True)
        endpoint = serve(self, lock_pb2_grpc.add_LockServicer_to_server, member)
        sent_or_waiting = member.second_acquire
        said_waiting_for_turn(self, sent_or_waiting)
        with latch.Client(endpoint, request_timeout=1.0, retry_budget=0.3) as client:
            session = idle_session(client)
            with self.assertRaises(latch.LatchError) as caught:
                session.lock("l", wait=0)
            self.assertEqual(caught.exception.code, grpc.StatusCode.UNAVAILABLE, "granted, but the answer lost, "
                             "and the first withdrawal failed: it goes on in the background")
            # A try-once gives up at once, nothing sent, while the withdrawal holds the turn.
            with self.assertRaises(latch.LockNotAcquired) as caught:
                session.lock("l", wait=0)
            self.assertTrue(caught.exception.waited_for_turn)
            # A wait waits for the withdrawal (nobody holds a Lock of the name), rather than
            # re-enter the grant the withdrawal is about to find and release.
            retried = in_thread(lambda: session.lock("l", wait=PATIENCE))
            self.assertTrue(sent_or_waiting.wait(PATIENCE), "the retried lock is under way")
            member.settle.set()
            retried = result(retried)
            self.assertEqual(retried.token, "tok-2", "a fresh grant, never the released one")
            self.assertEqual(member.events, ["acquire tok-1", "release tok-1", "acquire tok-2"],
                             "the late grant released before the retried lock was sent")
            retried.release()
            self.assertEqual(session._turns.names_in_use(), [])
            session.abandon()

    def test_a_retried_acquire_waits_only_what_is_left_of_its_wait(self):
        member = SlowFailingLocks(delay=0.3, failures=1)
        endpoint = serve(self, lock_pb2_grpc.add_LockServicer_to_server, member)
        with latch.Client(endpoint, request_timeout=5, retry_budget=5) as client:
            self.assertIsNone(client.acquire("l", "s", wait=3), "not granted: the member said so")
        (first_id, first_wait), (second_id, second_wait) = member.acquires
        self.assertEqual(first_id, second_id, "one request id across attempts")
        self.assertLessEqual(first_wait, 3000)
        self.assertLessEqual(second_wait, first_wait - 300, "the second asks for what is left, not 3 s again")
        self.assertGreater(second_wait, 0, "and still waits (0 would mean try once)")

    def test_an_acquire_whose_wait_ran_out_while_failing_is_withdrawn_and_fails(self):
        member = SlowFailingLocks(delay=0.3, failures=100)
        endpoint = serve(self, lock_pb2_grpc.add_LockServicer_to_server, member)
        with latch.Client(endpoint, request_timeout=5, retry_budget=5) as client:
            # No member answered: unreachable, not busy (None / LockNotAcquired would say busy).
            with self.assertRaises(latch.LatchError) as caught:
                client.acquire("l", "s", wait=0.2)
            self.assertEqual(caught.exception.code, grpc.StatusCode.DEADLINE_EXCEEDED, str(caught.exception))
            self.assertIn("0.2 s", caught.exception.message, "it names the wait")
            self.assertIn("UNAVAILABLE", caught.exception.message, "and the last attempt's error")
            session = idle_session(client)
            with self.assertRaises(latch.LatchError) as caught:
                session.lock("l", wait=0.2)
            self.assertEqual(caught.exception.code, grpc.StatusCode.DEADLINE_EXCEEDED, str(caught.exception))
            session.abandon()
        ids = [i for i, _ in member.acquires]
        self.assertEqual(len(ids), 2, f"one attempt each: none sent past the wait: {member.acquires}")
        self.assertEqual(member.withdrawals, ids, "each withdrawn under its own id before the answer left")


class GeneratedTest(unittest.TestCase):
    def test_the_wire_types_are_generated_from_the_proto_files_as_they_are(self):
        script = os.path.join(os.path.dirname(__file__), "..", "generate.py")
        run = subprocess.run([sys.executable, script, "--check"], capture_output=True, text=True)
        self.assertEqual(run.returncode, 0, run.stderr)


if __name__ == "__main__":
    unittest.main()
