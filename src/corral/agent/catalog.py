"""The service catalog as this agent sees it: one long poll per namespace, shared by every
runner of the node that renders templates.

A runner whose service has `templates` subscribes to the namespaces its templates read
(its own, plus any other a template names in `service(..., namespace=...)`). The first
subscription to a namespace starts a feed: a loop of blocking `GET /v1/services?namespace=
&digest=&wait=` calls, each answered when the catalog's digest differs from the one the
feed holds (or after `wait`). Every new digest sets the wake event of each subscriber;
the last subscription closed stops the feed. So a hundred instances with templates on one
node still mean one long poll per namespace, however many of them there are.

The feed watches the whole namespace (no `app` filter): a template may read another app's
services through `service(name, app=...)`, and one namespace-wide poll serves every app of
the namespace at the cost of some wake-ups for changes of apps nobody reads (those render
unchanged bytes and so do nothing).

On an error (server unreachable, an older server without the route) the feed keeps the last
catalog it had, retries with backoff (0.2 s doubling to 5 s), and remembers the error so a
runner still waiting for a first answer can say why.

Neighbours: `agent/agent.py` owns the one `CatalogWatcher` and passes it to each `Runner`;
`agent/templates.py` renders from the catalogs; the catalog route is `GET /v1/services`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from corral.clock import Clock

__all__ = ["Catalog", "CatalogWatcher", "Fetch", "Subscription", "canonical_catalog"]

log = logging.getLogger(__name__)

# The catalog route's answer: {"digest": "<hex>", "services": [ENTRY, ...]}, canonicalised.
Catalog = Mapping[str, Any]
# (namespace, digest or None, wait seconds or None) -> the answer of GET /v1/services.
Fetch = Callable[[str, str | None, float | None], Awaitable[Mapping[str, Any]]]


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def _instance_key(inst: Mapping[str, Any]) -> tuple[str, int, str]:
    port = inst.get("port")
    return (str(inst.get("address") or ""), port if isinstance(port, int) else -1,
            str(inst.get("id", "")))


def canonical_catalog(answer: Mapping[str, Any]) -> dict[str, Any]:
    """The catalog in one order whatever order the server sent: entries by (namespace, app,
    service), instances by (address, port, id), every mapping by key. The server sorts
    too; sorting again here keeps rendering deterministic (STYLE.md rule 5) even against a
    server that does not."""
    entries = []
    for entry in answer.get("services") or ():
        instances = sorted((_canonical(i) for i in entry.get("instances") or ()),
                           key=_instance_key)
        entries.append({**_canonical(entry), "instances": instances})
    entries.sort(key=lambda e: (str(e.get("namespace", "")), str(e.get("app", "")),
                                str(e.get("service", ""))))
    return {"digest": str(answer.get("digest", "")), "services": entries}


class _Feed:
    """One namespace's catalog and the poll that keeps it current."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.catalog: dict[str, Any] | None = None
        self.error = ""
        self.ready = asyncio.Event()
        self.subscribers: set[Subscription] = set()
        self.task: asyncio.Task[None] | None = None


class Subscription:
    """A runner's interest in one namespace's catalog. `wake` (the runner's own event, which
    may be shared by several subscriptions) is set on every new digest."""

    def __init__(self, watcher: CatalogWatcher, feed: _Feed, wake: asyncio.Event) -> None:
        self._watcher = watcher
        self._feed = feed
        self.wake = wake
        self.closed = False

    @property
    def namespace(self) -> str:
        return self._feed.namespace

    @property
    def latest(self) -> Catalog | None:
        """The newest catalog, or None before the first answer."""
        return self._feed.catalog

    @property
    def error(self) -> str:
        """Why the last call failed ("" after a success)."""
        return self._feed.error

    async def catalog(self) -> Catalog:
        """The newest catalog, waiting for the first answer if there is none yet."""
        await self._feed.ready.wait()
        assert self._feed.catalog is not None
        return self._feed.catalog

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._watcher._unsubscribe(self._feed, self)


class CatalogWatcher:
    def __init__(self, fetch: Fetch, *, clock: Clock, wait: float = 30.0) -> None:
        self._fetch = fetch
        self._clock = clock
        self._wait = wait
        self._feeds: dict[str, _Feed] = {}

    def subscribe(self, namespace: str, wake: asyncio.Event) -> Subscription:
        feed = self._feeds.get(namespace)
        if feed is None:
            feed = self._feeds[namespace] = _Feed(namespace)
        sub = Subscription(self, feed, wake)
        feed.subscribers.add(sub)
        if feed.task is None:
            feed.task = asyncio.create_task(self._poll(feed), name=f"catalog-{namespace}")
        if feed.catalog is not None:
            wake.set()
        return sub

    @property
    def polls(self) -> dict[str, int]:
        """Namespaces polled now -> their subscriber count (for tests and debugging)."""
        return {ns: len(f.subscribers) for ns, f in sorted(self._feeds.items())
                if f.task is not None}

    def _unsubscribe(self, feed: _Feed, sub: Subscription) -> None:
        feed.subscribers.discard(sub)
        if feed.subscribers:
            return
        # Nobody left: stop polling and forget it (a later subscriber starts afresh).
        if feed.task is not None:
            feed.task.cancel()
        if self._feeds.get(feed.namespace) is feed:
            del self._feeds[feed.namespace]

    async def close(self) -> None:
        tasks = [f.task for f in self._feeds.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        self._feeds.clear()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poll(self, feed: _Feed) -> None:
        delay = 0.2
        digest: str | None = None
        while True:
            started = self._clock.monotonic()
            try:
                answer = await self._fetch(feed.namespace, digest,
                                           self._wait if digest is not None else None)
                catalog = canonical_catalog(answer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # unreachable, refused, or an answer of the wrong shape
                feed.error = str(exc) or type(exc).__name__
                log.warning("service catalog of namespace %s: %s", feed.namespace, feed.error,
                            extra={"namespace": feed.namespace})
                await self._clock.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.2
            feed.error = ""
            if catalog["digest"] == digest:
                # The wait ran out unchanged. A server that answers at once instead of
                # waiting must not turn this loop into a busy one.
                if self._clock.monotonic() - started < 1.0:
                    await self._clock.sleep(1.0)
                continue
            digest = catalog["digest"]
            feed.catalog = catalog
            feed.ready.set()
            for sub in list(feed.subscribers):
                sub.wake.set()
