"""`MemoryStore`: the in-memory `Store` backend, for tests and throwaway clusters.

Neighbours: implements the protocol in `store.base`; `store.sqlite` is its durable twin and
both pass `tests/store/conformance.py`; `store.open_store("memory://")` builds one.

No operation awaits anything while it reads or changes state, so under asyncio every call is
atomic without a lock. History is one flat list of events, oldest first, kept until
`compact`; a watcher is only a position in that list, so a watcher that never reads holds
nothing but an index and never holds up a writer.
"""

from __future__ import annotations

import asyncio
import dataclasses
from bisect import bisect_left, insort
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field

from corral.store.base import (
    CompactedError,
    Compare,
    Delete,
    EventType,
    KeyValue,
    Listener,
    Op,
    Put,
    StoreError,
    TxnResult,
    WatchEvent,
    compare_holds,
    notify,
    prefix_end,
)

__all__ = ["MemoryStore"]


@dataclass(slots=True)
class _Lease:
    ttl: float
    expires_at: float
    keys: set[str] = field(default_factory=set)


def _event_revision(event: WatchEvent) -> int:
    return event.kv.mod_revision


class MemoryStore:
    """A `Store` that lives in this process only. Create it inside or outside a loop."""

    def __init__(self) -> None:
        self._kv: dict[str, KeyValue] = {}
        self._keys: list[str] = []  # sorted; kept beside the dict so range is a slice
        self._leases: dict[int, _Lease] = {}
        self._revision = 0
        self._compact_revision = 0  # newest revision dropped from history
        self._history: list[WatchEvent] = []
        self._dropped = 0  # events ever cut from the front of _history by compact
        # Replaced on every commit; waiters hold the old one, which is set. A Condition
        # would need its lock re-acquired by every watcher on every commit.
        self._changed = asyncio.Event()
        self._closed = False
        self._listeners: list[Listener] = []

    # reads

    async def revision(self) -> int:
        self._check_open()
        return self._revision

    async def get(self, key: str) -> KeyValue | None:
        self._check_open()
        return self._kv.get(key)

    async def range(self, prefix: str, *, limit: int = 0,
                    keys_only: bool = False) -> tuple[list[KeyValue], int]:
        self._check_open()
        if limit < 0:
            raise ValueError(f"range limit must be >= 0, not {limit}")
        keys = self._under(prefix)
        if limit:
            keys = keys[:limit]
        found = [self._kv[k] for k in keys]
        if keys_only:
            found = [dataclasses.replace(kv, value=b"") for kv in found]
        return found, self._revision

    async def count(self, prefix: str) -> tuple[int, int]:
        self._check_open()
        return len(self._under(prefix)), self._revision

    # writes

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        return (await self.txn((), [Put(key=key, value=value, lease=lease)])).revision

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        return (await self.txn((), [Delete(key=key, prefix=prefix)])).revision

    async def txn(self, compares: Sequence[Compare], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> TxnResult:
        self._check_open()
        # Every compare is evaluated (no short cut) so a malformed one always raises.
        results = [compare_holds(c, self._kv.get(c.key)) for c in compares]
        succeeded = all(results)
        self._commit(success if succeeded else failure)
        return TxnResult(succeeded=succeeded, revision=self._revision)

    async def compact(self, revision: int) -> None:
        self._check_open()
        if revision > self._revision:
            raise ValueError(f"cannot compact at {revision}: the store is at {self._revision}")
        if revision - 1 <= self._compact_revision:
            return
        cut = bisect_left(self._history, revision, key=_event_revision)
        del self._history[:cut]
        self._dropped += cut
        self._compact_revision = revision - 1

    # leases

    async def lease_grant(self, lease_id: int, ttl: float, *, now: float) -> None:
        self._check_open()
        _check_lease(lease_id, ttl)
        lease = self._leases.get(lease_id)
        if lease is None:
            self._leases[lease_id] = _Lease(ttl=ttl, expires_at=now + ttl)
        else:
            lease.ttl, lease.expires_at = ttl, now + ttl

    async def lease_keepalive(self, lease_id: int, *, now: float) -> bool:
        self._check_open()
        lease = self._leases.get(lease_id)
        if lease is None or lease.expires_at <= now:
            return False
        lease.expires_at = now + lease.ttl
        return True

    async def lease_revoke(self, lease_id: int) -> int:
        self._check_open()
        self._revoke(lease_id)
        return self._revision

    async def expire_leases(self, *, now: float) -> list[int]:
        self._check_open()
        expired = sorted(i for i, lease in self._leases.items() if lease.expires_at <= now)
        for lease_id in expired:
            self._revoke(lease_id)
        return expired

    # watch

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def watch(self, prefix: str, *,
              start_revision: int = 0) -> AsyncGenerator[WatchEvent, None]:
        if start_revision < 0:
            raise ValueError(f"start_revision must be >= 0, not {start_revision}")
        # Fixed now, not at the first iteration, so a change made between creating the
        # watch and first reading it is not lost.
        start = start_revision or self._revision + 1
        return self._watch(prefix, start)

    async def _watch(self, prefix: str, start: int) -> AsyncGenerator[WatchEvent, None]:
        if start <= self._compact_revision:
            raise CompactedError(start, self._compact_revision)
        position = self._dropped + bisect_left(self._history, start, key=_event_revision)
        wanted = start
        while True:
            self._check_open()
            index = position - self._dropped
            if index < 0:
                # compacted while this watcher lagged: its next events are gone
                raise CompactedError(wanted, self._compact_revision)
            if index == len(self._history):
                await self._changed.wait()
                continue
            event = self._history[index]
            position += 1
            wanted = event.kv.mod_revision
            # the revision test matters when `start` was still in the future at the bisect
            if wanted >= start and event.kv.key.startswith(prefix):
                yield event

    async def close(self) -> None:
        self._closed = True
        self._wake()

    # internals

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")

    def _under(self, prefix: str) -> list[str]:
        lo = bisect_left(self._keys, prefix)
        end = prefix_end(prefix)
        hi = bisect_left(self._keys, end) if end else len(self._keys)
        return self._keys[lo:hi]

    def _commit(self, ops: Sequence[Op]) -> None:
        """Apply `ops` at one new revision, or leave the revision alone if nothing changes.
        Checks run before the first change, so a refused transaction changes nothing."""
        for op in ops:
            if isinstance(op, Put):
                if not op.key:
                    raise ValueError("cannot put the empty key")
                if op.lease and op.lease not in self._leases:
                    raise StoreError(f"put {op.key!r}: lease {op.lease} does not exist")
            elif not op.key and not op.prefix:
                raise ValueError("cannot delete the empty key")
        revision = self._revision + 1
        events: list[WatchEvent] = []
        for op in ops:
            if isinstance(op, Put):
                events.append(self._put(op, revision))
            elif op.prefix:
                events.extend(self._delete(key, revision) for key in self._under(op.key))
            elif op.key in self._kv:
                events.append(self._delete(op.key, revision))
        if events:
            self._revision = revision
            self._history.extend(events)
            self._wake()
            notify(self._listeners, events)

    def _put(self, op: Put, revision: int) -> WatchEvent:
        prev = self._kv.get(op.key)
        if prev is None:
            insort(self._keys, op.key)
        elif prev.lease:
            self._leases[prev.lease].keys.discard(op.key)
        if op.lease:
            self._leases[op.lease].keys.add(op.key)
        kv = KeyValue(key=op.key, value=op.value, mod_revision=revision, lease=op.lease,
                      create_revision=prev.create_revision if prev else revision,
                      version=prev.version + 1 if prev else 1)
        self._kv[op.key] = kv
        return WatchEvent(type=EventType.PUT, kv=kv)

    def _delete(self, key: str, revision: int) -> WatchEvent:
        prev = self._kv.pop(key)
        del self._keys[bisect_left(self._keys, key)]
        if prev.lease:
            self._leases[prev.lease].keys.discard(key)
        gone = KeyValue(key=key, value=b"", create_revision=0, mod_revision=revision, version=0)
        return WatchEvent(type=EventType.DELETE, kv=gone)

    def _revoke(self, lease_id: int) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None:
            self._commit([Delete(key=key) for key in sorted(lease.keys)])
            del self._leases[lease_id]

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


def _check_lease(lease_id: int, ttl: float) -> None:
    if lease_id <= 0:
        raise ValueError(f"lease ids are positive (0 means no lease), not {lease_id}")
    if ttl <= 0:
        raise ValueError(f"lease ttl must be > 0, not {ttl}")
