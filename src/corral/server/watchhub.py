"""One store watch for the whole server, fanned out as "something under this prefix changed
after revision R" to any number of waiters: agents long-polling for their instances,
controllers waiting for work, CLI clients following progress.

Waiters get no payload, only a wake-up, and re-read the state they care about (level-
triggered: a missed or merged wake-up never loses a change). This keeps one watch per
server however many agents poll, instead of one per agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from corral.store.base import CompactedError, Store, StoreError

__all__ = ["WatchHub"]

log = logging.getLogger(__name__)


def _top(key: str) -> str:
    # "/instances/abc" -> "/instances/"
    end = key.find("/", 1)
    return key if end < 0 else key[: end + 1]


class WatchHub:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._revision = 0
        self._by_prefix: dict[str, int] = {}
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    @property
    def revision(self) -> int:
        return self._revision

    def revision_of(self, prefixes: Iterable[str]) -> int:
        return max((self._by_prefix.get(p, 0) for p in prefixes), default=0)

    async def start(self) -> None:
        self._revision = await self._store.revision()
        self._task = asyncio.create_task(self._run(), name="watchhub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                watch = self._store.watch("/", start_revision=self._revision + 1)
                try:
                    async for ev in watch:
                        rev = ev.kv.mod_revision
                        top = _top(ev.kv.key)
                        self._by_prefix[top] = max(self._by_prefix.get(top, 0), rev)
                        if rev > self._revision:
                            self._revision = rev
                        async with self._changed:
                            self._changed.notify_all()
                finally:
                    await watch.aclose()
            except CompactedError:
                # History we had not seen is gone: tell every waiter "everything changed".
                self._revision = await self._store.revision()
                for top in list(self._by_prefix):
                    self._by_prefix[top] = self._revision
                async with self._changed:
                    self._changed.notify_all()
            except StoreError:
                log.exception("store watch failed; retrying")
                await asyncio.sleep(0.5)

    async def wait(self, index: int, prefixes: Iterable[str], timeout: float) -> int:
        """Return once a key under one of `prefixes` changed at a revision > `index`, or after
        `timeout` seconds. Returns the revision to wait from next time (the hub's revision,
        which is never below `index`)."""
        tops = tuple(prefixes)

        async def changed() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: self.revision_of(tops) > index)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed(), timeout)
        return max(self._revision, index)
