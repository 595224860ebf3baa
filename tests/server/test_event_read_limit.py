"""`GET /v1/events?limit=N` (`EventFeed.read`) answers the newest N from the in-memory ring
when it holds them, and from the store otherwise: the same events either way."""

from __future__ import annotations

import json

from corral.server import keys
from corral.server.eventfeed import EventFeed, EventFilter
from corral.store import MemoryStore

ANY = EventFilter(topics=frozenset(), key="", app="", namespace="")
NODES = EventFilter(topics=frozenset({"node"}), key="", app="", namespace="")


async def test_read_with_limit_gives_the_newest_from_the_ring_or_the_store() -> None:
    store = MemoryStore()
    feed = EventFeed(store, ring_size=4)
    await feed.start()
    for i in range(10):
        topic = "node" if i % 3 == 0 else "instance"  # node events at 0, 3, 6, 9
        await store.put(keys.event(i, 0), json.dumps(
            {"topic": topic, "key": f"k{i}", "type": "t", "time": 0.0, "message": str(i),
             "payload": {}}).encode())
    everything = await feed.read(0, ANY)
    assert [e["message"] for e in everything] == [str(i) for i in range(10)]
    # In the ring (the newest 4): no store read needed, the same answer.
    assert await feed.read(0, ANY, limit=3) == everything[-3:]
    # Only 2 node events in the ring: the store answers, still the newest 3 of them.
    assert [e["message"] for e in await feed.read(0, NODES, limit=3)] == ["3", "6", "9"]
    assert await feed.read(everything[-2]["index"], ANY, limit=5) == everything[-1:]
    await feed.stop()
