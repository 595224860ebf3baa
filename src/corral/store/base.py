"""The `Store` protocol, modelled on etcd v3: one global revision, keys with create/mod
revisions and versions, compare-and-swap transactions, watches that replay from any revision
still in history, and leases with a TTL.

The store keeps no clock and makes no random ids: callers pass `now` and lease ids in, so
the same calls give the same result on every backend and in tests with a fake clock. Leases
expire only when a caller runs `expire_leases(now)`.

Backends: `memory` (tests), `sqlite` (embedded default), later `etcd`. Every backend passes
`tests/store/conformance.py`. Keys are `str` paths such as `/instances/abc`; values `bytes`.
Neighbours: only `server/` uses a store (agents and the CLI go through the API).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

__all__ = [
    "CompactedError", "Compare", "CompareTarget", "Delete", "EventType", "KeyValue", "Listener",
    "Op", "Put", "Store", "StoreError", "TxnResult", "WatchEvent", "compare_holds",
    "notify", "prefix_end",
]

_log = logging.getLogger(__name__)


class StoreError(Exception):
    """The store could not do what was asked (closed, corrupt, unreachable)."""


class CompactedError(StoreError):
    """A watch asked for a revision older than the oldest one kept in history."""

    def __init__(self, requested: int, compact_revision: int) -> None:
        super().__init__(f"revision {requested} is compacted; oldest kept is "
                         f"{compact_revision + 1}")
        self.requested = requested
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int  # 1 at creation, +1 on each put; a deleted key's version is back to 0
    lease: int = 0


class CompareTarget(StrEnum):
    MOD = "mod_revision"  # 0 means "the key does not exist"
    CREATE = "create_revision"
    VERSION = "version"
    VALUE = "value"


@dataclass(frozen=True, slots=True, kw_only=True)
class Compare:
    """`key`'s target compared with `value` by `op` (`==`, `!=`, `<`, `>`).

    A missing key has mod/create revision and version 0 and value b"" (as in etcd)."""

    key: str
    target: CompareTarget = CompareTarget.MOD
    op: str = "=="
    value: int | bytes = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Delete:
    key: str
    prefix: bool = False  # delete every key starting with `key`


Op = Put | Delete


@dataclass(frozen=True, slots=True, kw_only=True)
class TxnResult:
    succeeded: bool
    revision: int  # the store's revision after the transaction (unchanged if nothing written)


class EventType(StrEnum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchEvent:
    """A change. No previous value (etcd's optional `prev_kv`): nothing here needs one,
    and keeping one per change doubled the bytes of an update in SQLite's history."""

    type: EventType
    kv: KeyValue  # for DELETE: the key, value b"", mod_revision = the deleting revision


# Called with the events of one commit (see `Store.subscribe`).
Listener = Callable[[Sequence[WatchEvent]], None]


@runtime_checkable
class Store(Protocol):
    """All methods are coroutines except `watch`, which returns an async iterator."""

    async def revision(self) -> int:
        """The current revision (0 for an empty, never-written store)."""
        ...

    async def get(self, key: str) -> KeyValue | None: ...

    async def range(self, prefix: str, *, limit: int = 0,
                    keys_only: bool = False) -> tuple[list[KeyValue], int]:
        """Every key starting with `prefix`, sorted by key, and the revision read at.
        `limit` > 0 returns at most that many. `keys_only` (as in etcd): every value is
        b"", the rest of each KeyValue as stored; for callers that need keys and
        revisions of many large values."""
        ...

    async def count(self, prefix: str) -> tuple[int, int]:
        """How many keys start with `prefix`, and the revision read at (etcd's
        `count_only`): without reading them, for callers that only need how many."""
        ...

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Unconditional put; returns the new revision."""
        ...

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Returns the new revision, or the current one if nothing was deleted."""
        ...

    async def txn(self, compares: Sequence[Compare], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> TxnResult:
        """If every compare holds, apply `success`, else `failure`, atomically. All writes of
        one transaction share one new revision; a transaction that writes nothing does not
        advance the revision."""
        ...

    def watch(self, prefix: str, *,
              start_revision: int = 0) -> AsyncGenerator[WatchEvent, None]:
        """Changes to keys under `prefix` with revision >= `start_revision` (0: only future
        changes), in revision order, then live ones, forever. Raises `CompactedError` (on the
        first iteration) if `start_revision` is no longer in history. Closing the iterator
        (`aclose()`) ends the watch. A slow consumer must not block writers."""
        ...

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` (a plain function, on the event loop) with the events of every
        later commit: all events of one commit in one call, commits in revision order, and
        before the call that wrote returns to its caller, so a reader that keeps what it is
        told is never behind a write it has seen complete. No history, no compaction:
        what a watch gives a consumer far away, this gives the server's own in-memory
        indexes (`server/index.py`). A listener must be quick and must not raise (what it
        raises is logged and dropped). Returns a function that unsubscribes."""
        ...

    async def compact(self, revision: int) -> None:
        """Drop history older than `revision`; watches from before it then fail."""
        ...

    async def lease_grant(self, lease_id: int, ttl: float, *, now: float) -> None:
        """Create (or refresh) lease `lease_id` expiring at `now + ttl`."""
        ...

    async def lease_keepalive(self, lease_id: int, *, now: float) -> bool:
        """Push the expiry to `now + ttl`; False if the lease does not exist (expired).
        A lease whose expiry is <= `now` counts as expired even before `expire_leases` has
        removed it, so a late keepalive never revives it (re-grant it instead)."""
        ...

    async def lease_revoke(self, lease_id: int) -> int:
        """Delete the lease and every key attached to it; returns the revision."""
        ...

    async def expire_leases(self, *, now: float) -> list[int]:
        """Revoke every lease whose expiry is <= now; returns their ids."""
        ...

    async def close(self) -> None: ...


_ORDER = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b, ">": lambda a, b: a > b,
}


def compare_holds(compare: Compare, kv: KeyValue | None) -> bool:
    """Whether `compare` holds for `kv` (None: the key is missing). Shared by the backends
    that evaluate compares themselves, so they cannot disagree on the missing-key rule.
    Raises ValueError for an unknown operator or a value of the wrong type."""
    order = _ORDER.get(compare.op)
    if order is None:
        raise ValueError(f"compare on {compare.key!r}: unknown operator {compare.op!r}")
    if compare.target is CompareTarget.VALUE:
        if not isinstance(compare.value, bytes):
            raise ValueError(f"compare on {compare.key!r}: value needs bytes")
        return bool(order(kv.value if kv else b"", compare.value))
    if not isinstance(compare.value, int) or isinstance(compare.value, bool):
        raise ValueError(f"compare on {compare.key!r}: {compare.target} needs an int")
    actual = getattr(kv, compare.target.value) if kv else 0
    return bool(order(actual, compare.value))


def notify(listeners: Sequence[Listener], events: Sequence[WatchEvent]) -> None:
    """Hand one commit's events to every listener; one that raises does not stop the rest
    (nor the write, which has happened)."""
    for listener in listeners:
        try:
            listener(events)
        except Exception:
            _log.exception("store listener %r failed", listener)


def prefix_end(prefix: str) -> str:
    """The smallest key greater than every key starting with `prefix`."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else ""
