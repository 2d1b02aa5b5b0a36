"""Short ways to write a transaction: ``Txn().when(...).and_then(...).or_else(...)``, with
``Compare`` and ``Op`` builders, and ``prefix_range``/``prefix_end`` for ranges."""

from typing import Iterable, Tuple, Union

from .v1 import kv_pb2

Bytes = Union[str, bytes]

_RESULTS = {
    "==": kv_pb2.Compare.EQUAL,
    "!=": kv_pb2.Compare.NOT_EQUAL,
    ">": kv_pb2.Compare.GREATER,
    "<": kv_pb2.Compare.LESS,
}


def as_bytes(value: Bytes, what: str = "key") -> bytes:
    """Keys and values are bytes; a str is taken as UTF-8."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")


def prefix_end(prefix: Bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``: the prefix with its
    last byte below 0xff incremented (and what follows it dropped); ``b"\\0"`` (every key from
    ``key`` on) for an empty prefix or one of 0xff bytes only. For a whole range use
    ``prefix_range``: the empty prefix also needs a key other than the empty one."""
    p = bytearray(as_bytes(prefix, "prefix"))
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return b"\0"
    p[-1] += 1
    return bytes(p)


def prefix_range(prefix: Bytes) -> Tuple[bytes, bytes]:
    """``(key, range_end)`` selecting every key that starts with ``prefix``. The empty prefix
    selects every key: ``(b"\\0", b"\\0")``, as the Rust client's ``prefix_range`` and etcd's
    client do, since the empty key is no key (a member refuses it). Every call that takes a
    prefix (``Client.get_prefix``, ``Client.delete``/``Client.watch`` with ``prefix=True``,
    ``Op.get``/``Op.delete`` with ``prefix=True``) sends this."""
    p = as_bytes(prefix, "prefix")
    if not p:
        return b"\0", b"\0"
    return p, prefix_end(p)


def _key_range(key: Bytes, prefix: bool) -> Tuple[bytes, bytes]:
    """``(key, range_end)`` of one key, or with ``prefix`` of every key starting with it."""
    return prefix_range(key) if prefix else (as_bytes(key), b"")


class Compare:
    """One condition of a transaction: ``Compare.value(key, "==", b"v")``; the result is one of
    ``==``, ``!=``, ``>``, ``<``."""

    @staticmethod
    def _make(key: Bytes, result: str, **target) -> kv_pb2.Compare:
        if result not in _RESULTS:
            raise ValueError(f"compare result {result!r}: expected one of {', '.join(_RESULTS)}")
        return kv_pb2.Compare(key=as_bytes(key), result=_RESULTS[result], **target)

    @staticmethod
    def value(key: Bytes, result: str, value: Bytes) -> kv_pb2.Compare:
        return Compare._make(key, result, value=as_bytes(value, "value"))

    @staticmethod
    def version(key: Bytes, result: str, version: int) -> kv_pb2.Compare:
        """Version 0: the key does not exist."""
        return Compare._make(key, result, version=version)

    @staticmethod
    def create_revision(key: Bytes, result: str, revision: int) -> kv_pb2.Compare:
        return Compare._make(key, result, create_revision=revision)

    @staticmethod
    def mod_revision(key: Bytes, result: str, revision: int) -> kv_pb2.Compare:
        return Compare._make(key, result, mod_revision=revision)

    @staticmethod
    def sequencer_valid(sequencer: str) -> kv_pb2.Compare:
        """Holds while ``sequencer`` (a lock's token) still holds its lock: fences a write."""
        return kv_pb2.Compare(result=kv_pb2.Compare.EQUAL, sequencer=sequencer)


class Op:
    """One operation of a transaction's branch."""

    @staticmethod
    def put(key: Bytes, value: Bytes, *, session: str = "") -> kv_pb2.RequestOp:
        return kv_pb2.RequestOp(put=kv_pb2.PutRequest(key=as_bytes(key), value=as_bytes(value, "value"),
                                                      session=session))

    @staticmethod
    def get(key: Bytes, *, prefix: bool = False) -> kv_pb2.RequestOp:
        """Reads ``key`` (with ``prefix``, every key starting with it: ``prefix_range``)."""
        k, end = _key_range(key, prefix)
        return kv_pb2.RequestOp(range=kv_pb2.RangeRequest(key=k, range_end=end))

    @staticmethod
    def delete(key: Bytes, *, prefix: bool = False) -> kv_pb2.RequestOp:
        """Deletes ``key`` (with ``prefix``, every key starting with it: ``prefix_range``)."""
        k, end = _key_range(key, prefix)
        return kv_pb2.RequestOp(delete_range=kv_pb2.DeleteRangeRequest(key=k, range_end=end))


class Txn:
    """``Txn().when([...]).and_then([...]).or_else([...])``: if every compare holds, the
    ``and_then`` ops run, else the ``or_else`` ops; atomically, in one revision."""

    def __init__(self) -> None:
        self.request = kv_pb2.TxnRequest()

    def when(self, compares: Iterable[kv_pb2.Compare]) -> "Txn":
        self.request.compare.extend(compares)
        return self

    def and_then(self, ops: Iterable[kv_pb2.RequestOp]) -> "Txn":
        self.request.success.extend(ops)
        return self

    def or_else(self, ops: Iterable[kv_pb2.RequestOp]) -> "Txn":
        self.request.failure.extend(ops)
        return self
