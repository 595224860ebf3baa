"""One subscription to the store's commits for the whole server, fanned out as "something
under this prefix changed after revision R" to any number of waiters: controllers waiting
for work, CLI clients following progress.

Waiters get no payload, only a wake-up, and re-read the state they care about (level-
triggered: a missed or merged wake-up never loses a change). It is fed by the store's
commit stream (`Store.subscribe`), so it is never behind a write that has returned and
needs no history (nothing to replay, no compaction to survive).

Agents' long polls do not wait here: `server/index.py` wakes each node's poll only for
changes to that node's instances, so one change wakes one agent, not all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence

from corral.store.base import Store, WatchEvent

__all__ = ["WatchHub"]


def _top(key: str) -> str:
    # "/instances/abc" -> "/instances/"
    end = key.find("/", 1)
    return key if end < 0 else key[: end + 1]


class WatchHub:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._revision = 0
        self._by_prefix: dict[str, int] = {}
        # Replaced on every commit; waiters hold the old one, which is set (no lock to
        # re-acquire per waiter, as a Condition would need).
        self._changed = asyncio.Event()
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def revision(self) -> int:
        return self._revision

    def revision_of(self, prefixes: Iterable[str]) -> int:
        return max((self._by_prefix.get(p, 0) for p in prefixes), default=0)

    async def start(self) -> None:
        self._revision = await self._store.revision()
        self._unsubscribe = self._store.subscribe(self._on_commit)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _on_commit(self, events: Sequence[WatchEvent]) -> None:
        """One commit, all its events at once (`Store.subscribe`): one wake-up per commit,
        not per key, however many keys it wrote."""
        by_prefix = self._by_prefix
        for event in events:
            rev = event.kv.mod_revision
            top = _top(event.kv.key)
            if by_prefix.get(top, 0) < rev:
                by_prefix[top] = rev
            if rev > self._revision:
                self._revision = rev
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, index: int, prefixes: Iterable[str], timeout: float) -> int:
        """Return once a key under one of `prefixes` changed at a revision > `index`, or after
        `timeout` seconds. Returns the revision to wait from next time (the hub's revision,
        which is never below `index`)."""
        tops = tuple(prefixes)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.revision_of(tops) <= index:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return max(self._revision, index)
