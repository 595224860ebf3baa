"""The event stream's fan-out: one subscription to the store's commits for the whole
server, handed to every follower of `GET /v1/events?follow=true` through a bounded buffer.

Events are store keys under `/events/`, written in the transaction of the change they
describe (`server/records.py`); an event's index is the revision of that transaction. The
feed sees every commit (`Store.subscribe`, called before the write returns), keeps the last
`ring_size` events in memory for cheap replays (a client resuming after a disconnect or a
`fell-behind`), and appends each commit's events to every follower's buffer.

A follower's buffer holds at most `buffer` events. A commit that does not fit is not
queued: the follower is marked as having fallen behind at the last index it was given
whole, gets what is queued, then one `{"type": "fell-behind", "index": N}` and its stream
ends; it resumes with `since=N` and misses nothing. So a consumer that stops reading costs
one bounded buffer and never slows a writer or another follower (Nomad's event broker
drops slow subscribers the same way). Rejected: following with one store watch per
client. It decodes every event once per client, and a stalled client would pin history.

Replay: events after `since` and up to the revision the follower registered at come from
the ring when it reaches back far enough, else from the store; later ones from the
follower's buffer. The two meet at that revision, so there is no gap and no duplicate.
Retention (`server/event_retention.py`) deletes the oldest events and records the highest
index it deleted under `keys.EVENTS_PRUNED`: a `since` below it would silently skip events,
so it is refused (`Gone`, HTTP 410) instead.

Neighbours: `server/api/events.py` (the HTTP endpoint), `server/event_retention.py`
(pruning), `server/metrics.py` (reads `stats`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from corral.model.codec import load_json, to_data
from corral.model.event import Event
from corral.server import keys
from corral.store.base import EventType, Store, WatchEvent

__all__ = [
    "Entry", "EventFeed", "EventFilter", "FeedItem", "FeedStats", "FellBehind", "Follower", "Gone",
    "Heartbeat", "event_scope", "groups",
]


class Gone(Exception):
    """Events after `requested` are no longer all retained."""

    def __init__(self, requested: int, pruned_through: int, oldest: int | None) -> None:
        oldest_text = f"the oldest retained event has index {oldest}" if oldest else \
            "no older event is retained"
        super().__init__(f"events after index {requested} are gone: retention deleted them "
                         f"up to index {pruned_through} ({oldest_text}); resume with "
                         f"since={pruned_through} to get every event still retained")
        self.requested = requested
        self.pruned_through = pruned_through
        self.oldest = oldest


class Entry:
    """One event as committed: its index and stored bytes, decoded once on first use and
    shared by every follower."""

    __slots__ = ("_data", "_line", "index", "raw")

    def __init__(self, index: int, raw: bytes) -> None:
        self.index = index
        self.raw = raw
        self._data: dict[str, Any] | None = None
        self._line: bytes | None = None

    @property
    def data(self) -> dict[str, Any]:
        """The event as the API shows it (`model/event.py` fields, `index` filled in)."""
        if self._data is None:
            # through the model: stored events leave out fields at their default
            data = to_data(load_json(Event, self.raw))
            data["index"] = self.index
            self._data = data
        return self._data

    @property
    def json(self) -> bytes:
        if self._line is None:
            self._line = json.dumps(self.data, sort_keys=True).encode()
        return self._line


def event_scope(data: dict[str, Any]) -> tuple[str | None, str | None]:
    """The (namespace, application) an event is about, or Nones: instance and deployment
    events carry them in their payload, `app` events are keyed `<ns>/<app>` and `job`
    events `<ns>/<app>/<job>`; node and token events belong to no application."""
    payload = data.get("payload") or {}
    app = payload.get("app")
    if isinstance(app, str):
        namespace = payload.get("namespace")
        return (namespace if isinstance(namespace, str) else None), app
    if data.get("topic") in ("app", "job"):
        parts = str(data.get("key", "")).split("/")
        if len(parts) >= 2:
            return parts[0], parts[1]
    return None, None


@dataclass(frozen=True, slots=True, kw_only=True)
class EventFilter:
    """Which events a reader wants: any of `topics` (empty: all), keys starting with
    `key`, and events about application `app` and/or `namespace`."""

    topics: frozenset[str] = frozenset()
    key: str = ""
    app: str = ""
    namespace: str = ""

    def matches(self, data: dict[str, Any]) -> bool:
        if self.topics and data.get("topic") not in self.topics:
            return False
        if self.key and not str(data.get("key", "")).startswith(self.key):
            return False
        if self.app or self.namespace:
            namespace, app = event_scope(data)
            if self.app and app != self.app:
                return False
            if self.namespace and namespace != self.namespace:
                return False
        return True


@dataclass(frozen=True, slots=True)
class FellBehind:
    """The follower's buffer overflowed: everything up to `index` was delivered."""

    index: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Nothing happened for a while (lets the endpoint keep proxies from closing)."""


# A batch of events (one or more whole commits, in index order), a heartbeat, or the end.
FeedItem = list[Entry] | Heartbeat | FellBehind


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedStats:
    followers: int
    buffered: int  # events queued in all followers' buffers
    largest_buffer: int
    fell_behind: int  # followers cut off since the server started
    delivered: int  # events handed to followers (after filtering)
    ring: int


@dataclass(slots=True, eq=False)
class Follower:
    """One client's live tail: whole commits appended by the feed, taken by `next`."""

    limit: int
    registered_at: int  # every event with a higher index reaches the buffer
    buffer: deque[Entry] = field(default_factory=deque)
    given_through: int = 0  # the newest index whose events are all in the buffer
    fell_behind: int | None = None
    counted: bool = False  # its falling behind is in the feed's statistics
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, entries: Sequence[Entry], revision: int) -> bool:
        """Queue one commit's events; False (and fallen behind) if they do not fit."""
        if self.fell_behind is not None:
            return False
        if len(self.buffer) + len(entries) > self.limit:
            self.fell_behind = self.given_through
            self.wake.set()
            return False
        self.buffer.extend(entries)
        self.given_through = revision
        self.wake.set()
        return True

    def take(self) -> list[Entry]:
        items = list(self.buffer)
        self.buffer.clear()
        self.wake.clear()
        return items


class EventFeed:
    def __init__(self, store: Store, *, ring_size: int = 4096, buffer: int = 4096) -> None:
        self._store = store
        self._ring: deque[Entry] = deque()
        self._ring_size = ring_size
        self._buffer = buffer
        self._ring_floor = 0  # the ring holds every event with a higher index
        self._revision = 0
        self._pruned_through = 0
        self._followers: set[Follower] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._starting: asyncio.Lock | None = None
        self._fell_behind = 0
        self._delivered = 0
        self._written: Counter[str] = Counter()
        self.placements = 0  # `instance` events of type `scheduled` seen (metrics)

    @property
    def pruned_through(self) -> int:
        return self._pruned_through

    @property
    def revision(self) -> int:
        return self._revision

    async def start(self) -> None:
        """Subscribe to the store (idempotent; the API calls it on first use too, so a
        harness that never runs the app's lifespan still streams)."""
        if self._unsubscribe is not None:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._unsubscribe is not None:
                return
            # Subscribe first, then read: a commit in between is in the ring and at or
            # below the revision read, so the ring is complete above its floor.
            self._unsubscribe = self._store.subscribe(self._on_commit)
            revision = await self._store.revision()
            self._ring_floor = revision
            self._revision = max(self._revision, revision)
            kv = await self._store.get(keys.EVENTS_PRUNED)
            if kv is not None:
                self._pruned_through = max(self._pruned_through, _parse_index(kv.value))

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for follower in self._followers:
            follower.wake.set()

    def _on_commit(self, events: Sequence[WatchEvent]) -> None:
        if not events:
            return
        revision = events[0].kv.mod_revision
        entries: list[Entry] = []
        for ev in events:
            key = ev.kv.key
            if ev.type != EventType.PUT:
                continue
            if key.startswith(keys.EVENTS):
                entries.append(Entry(ev.kv.create_revision, ev.kv.value))
                topic, kind = _topic_and_type(ev.kv.value)
                self._written[topic] += 1
                if topic == "instance" and kind == "scheduled":
                    self.placements += 1
            elif key == keys.EVENTS_PRUNED:
                self._pruned_through = max(self._pruned_through, _parse_index(ev.kv.value))
        self._revision = max(self._revision, revision)
        if not entries:
            return
        ring = self._ring
        ring.extend(entries)
        while len(ring) > self._ring_size:
            self._ring_floor = max(self._ring_floor, ring.popleft().index)
        for follower in self._followers:
            if not follower.offer(entries, revision) and not follower.counted:
                follower.counted = True
                self._fell_behind += 1

    def written_by_topic(self) -> dict[str, int]:
        return dict(self._written)

    def stats(self) -> FeedStats:
        sizes = [len(f.buffer) for f in self._followers]
        return FeedStats(followers=len(sizes), buffered=sum(sizes),
                         largest_buffer=max(sizes, default=0), fell_behind=self._fell_behind,
                         delivered=self._delivered, ring=len(self._ring))

    def is_gone(self, since: int) -> bool:
        """Whether retention may have deleted events after `since` (0 asks for everything
        retained, so it never is)."""
        return 0 < since < self._pruned_through

    async def gone(self, since: int) -> Gone:
        """The error for a `since` that `is_gone`, with the oldest retained index."""
        oldest = next((e.index for e in self._ring if e.index > self._pruned_through), None)
        if oldest is None or self._ring_floor > self._pruned_through:
            kvs, _ = await self._store.range(keys.EVENTS)
            oldest = min((kv.create_revision for kv in kvs), default=None)
        return Gone(since, self._pruned_through, oldest)

    async def backlog(self, since: int, upto: int) -> list[Entry]:
        """Every retained event with `since < index <= upto`, in index order. Raises
        `Gone` if retention deleted some of them (also while they were being read); since 0
        means every retained event."""
        if self.is_gone(since):
            raise await self.gone(since)
        if since >= self._ring_floor:
            found = [e for e in self._ring if since < e.index <= upto]
        else:
            kvs, _ = await self._store.range(keys.EVENTS)
            kvs = [kv for kv in kvs if since < kv.create_revision <= upto]
            kvs.sort(key=lambda kv: (kv.create_revision, kv.key))
            found = [Entry(kv.create_revision, kv.value) for kv in kvs]
        if self.is_gone(since):
            raise await self.gone(since)
        return found

    async def read(self, since: int, flt: EventFilter, limit: int = 0) -> list[dict[str, Any]]:
        """The retained events after `since` that `flt` matches, oldest first; `limit` > 0:
        only the newest that many."""
        await self.start()
        if limit:
            # The newest few (`corral events --limit N`) come from the ring when it holds
            # enough of them: no read of every retained event from the store.
            if self.is_gone(since):
                raise await self.gone(since)
            recent = [e.data for e in self._ring if since < e.index <= self._revision
                      and flt.matches(e.data)]
            if len(recent) >= limit:
                return recent[-limit:]
        matched = [e.data for e in await self.backlog(since, self._revision)
                   if flt.matches(e.data)]
        return matched[-limit:] if limit else matched

    @contextlib.asynccontextmanager
    async def follow(self, since: int, flt: EventFilter, *, limit: int = 0,
                     heartbeat: float = 15.0) -> AsyncIterator[AsyncIterator[FeedItem]]:
        """A follower from `since`: yields an iterator of batches of matching events (the
        backlog first, then live ones), `Heartbeat`s after `heartbeat` quiet seconds,
        and a final `FellBehind` if its buffer overflowed. Raises `Gone` on entry."""
        await self.start()
        if self.is_gone(since):
            raise await self.gone(since)
        follower = Follower(limit=self._buffer, registered_at=self._revision,
                            given_through=self._revision)
        self._followers.add(follower)
        try:
            backlog = await self.backlog(since, follower.registered_at)
            yield self._items(follower, backlog, flt, limit, heartbeat)
        finally:
            self._followers.discard(follower)

    async def _items(self, follower: Follower, backlog: list[Entry], flt: EventFilter,
                     limit: int, heartbeat: float) -> AsyncIterator[FeedItem]:
        first = [e for e in backlog if flt.matches(e.data)]
        if limit:
            first = first[-limit:]
        if first:
            self._delivered += len(first)
            yield first
        while True:
            if not follower.buffer and follower.fell_behind is None:
                if self._unsubscribe is None:
                    return  # the server is stopping
                try:
                    await asyncio.wait_for(follower.wake.wait(), heartbeat)
                except TimeoutError:
                    yield Heartbeat()
                    continue
            matched = [e for e in follower.take() if flt.matches(e.data)]
            if matched:
                self._delivered += len(matched)
                yield matched
            if follower.fell_behind is not None and not follower.buffer:
                yield FellBehind(follower.fell_behind)
                return


def groups(entries: Iterable[Entry]) -> list[list[Entry]]:
    """Consecutive events of one index together (a batch holds whole commits)."""
    out: list[list[Entry]] = []
    for e in entries:
        if out and out[-1][0].index == e.index:
            out[-1].append(e)
        else:
            out.append([e])
    return out


def _topic_and_type(raw: bytes) -> tuple[str, str]:
    """An event's topic and type without decoding it all: records are encoded with sorted
    keys (`model/codec.py`), so `topic` and `type` are the last two top-level keys, after
    the payload, and the last `,"topic":` is the top-level one."""
    at = raw.rfind(b',"topic":')
    if at < 0:
        return "unknown", ""
    try:
        tail = json.loads(b"{" + raw[at + 1:])
    except ValueError:
        return "unknown", ""
    return str(tail.get("topic", "unknown")), str(tail.get("type", ""))


def _parse_index(value: bytes) -> int:
    try:
        return int(value.decode())
    except (UnicodeDecodeError, ValueError):
        return 0
