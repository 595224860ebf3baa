"""The event stream without sockets: filters, retention (the pure plan with made-up times,
and the gc that applies it), 410 Gone for a `since` retention deleted, bad input."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from corral.client import ApiError
from corral.server import keys
from corral.server.event_retention import StoredEvent, plan_pruning, prune_events
from corral.server.eventfeed import EventFilter, event_scope
from corral.testing.server import ServerHarness, server_harness


@pytest.fixture
async def srv(tmp_path: Path) -> Any:
    async with server_harness(tmp_path) as s:
        yield s


async def _write(srv: ServerHarness, n: int, *, topic: str = "token", app: str | None = None,
                 namespace: str = "default", per_txn: int = 1) -> list[int]:
    revisions = []
    for i in range(n):
        txn = srv.ctx.records.txn()
        for j in range(per_txn):
            payload = {"app": app, "namespace": namespace} if app else {}
            txn.event(topic, f"k{i}-{j}", "created", f"event {i}.{j}", payload)
        rev = await txn.commit()
        assert rev is not None
        revisions.append(rev)
    return revisions


def test_scope_comes_from_the_payload_or_the_key() -> None:
    assert event_scope({"topic": "instance", "key": "i1",
                        "payload": {"app": "shop", "namespace": "prod"}}) == ("prod", "shop")
    assert event_scope({"topic": "app", "key": "prod/shop", "payload": {}}) == ("prod", "shop")
    assert event_scope({"topic": "job", "key": "default/shop/report",
                        "payload": {}}) == ("default", "shop")
    assert event_scope({"topic": "node", "key": "n1", "payload": {}}) == (None, None)
    flt = EventFilter(topics=frozenset({"instance"}), app="shop")
    assert flt.matches({"topic": "instance", "key": "i1", "payload": {"app": "shop"}})
    assert not flt.matches({"topic": "instance", "key": "i1", "payload": {"app": "blog"}})
    assert not flt.matches({"topic": "app", "key": "default/shop", "payload": {}})
    assert EventFilter(namespace="prod").matches({"topic": "app", "key": "prod/x"})
    assert not EventFilter(namespace="prod").matches({"topic": "node", "key": "n1"})


def test_plan_prunes_by_count_and_age_oldest_index_first() -> None:
    events = [StoredEvent(index=10 + i, time=1000.0 + i, key=f"/events/{i}")
              for i in range(10)]
    by_count = plan_pruning(events, now=2000.0, keep_count=7, keep_age=0)
    assert [e.index for e in by_count] == [10, 11, 12]
    by_age = plan_pruning(events, now=1010.0, keep_count=0, keep_age=5.5)
    assert [e.index for e in by_age] == [10, 11, 12, 13, 14]  # times 1000..1004 < 1004.5
    assert plan_pruning(events, now=1010.0, keep_count=0, keep_age=0) == []
    # Index order, not time order: a clock that stepped back never leaves a hole below
    # the watermark (index 21 is kept because 20, newer in time, is kept too).
    skewed = [StoredEvent(index=20, time=500.0, key="/events/a"),
              StoredEvent(index=21, time=100.0, key="/events/b"),
              StoredEvent(index=19, time=100.0, key="/events/c")]
    assert [e.index for e in plan_pruning(skewed, now=1000.0, keep_count=0,
                                          keep_age=400)] == [19, 20, 21]
    assert [e.index for e in plan_pruning(skewed, now=1000.0, keep_count=0,
                                          keep_age=800)] == [19]
    # The events of one index go together.
    pair = [StoredEvent(index=5, time=1.0, key="/events/a"),
            StoredEvent(index=5, time=1.0, key="/events/b"),
            StoredEvent(index=6, time=1.0, key="/events/c")]
    assert len(plan_pruning(pair, now=10.0, keep_count=2, keep_age=0)) == 2


async def test_filters_topic_list_key_app_and_namespace(srv: ServerHarness) -> None:
    await _write(srv, 2, topic="instance", app="shop")
    await _write(srv, 1, topic="instance", app="shop", namespace="prod")
    await _write(srv, 2, topic="deployment", app="blog")
    await _write(srv, 1, topic="node")
    everything = await srv.client.events()
    assert [e["index"] for e in everything] == sorted(e["index"] for e in everything)
    assert len(everything) == 6
    shop = await srv.client.events(topic="instance", app="shop")
    assert len(shop) == 3
    assert len(await srv.client.events(app="shop", namespace="default")) == 2
    assert len(await srv.client.events(topic=["instance", "node"])) == 4
    assert len(await srv.client.request("GET", "/v1/events",
                                        params={"topic": "deployment,node"})) == 3
    assert [e["key"] for e in await srv.client.events(key="k1")] == ["k1-0", "k1-0"]
    newest = await srv.client.events(limit=2)
    assert [e["index"] for e in newest] == [e["index"] for e in everything[-2:]]
    after = await srv.client.events(since=everything[2]["index"])
    assert after == everything[3:]


async def test_bad_input_is_a_4xx(srv: ServerHarness) -> None:
    for params, headers in [({"topic": "instance,nope"}, {}), ({"since": "-1"}, {}),
                            ({"format": "xml"}, {}), ({}, {"last-event-id": "abc"}),
                            ({"limit": "x"}, {})]:
        with pytest.raises(ApiError) as err:
            await srv.client.request("GET", "/v1/events", params=params, headers=headers)
        assert 400 <= err.value.status < 500, params


async def test_retention_deletes_oldest_and_old_since_is_gone(srv: ServerHarness) -> None:
    revisions = await _write(srv, 30, per_txn=2)
    srv.ctx.config = dataclasses.replace(srv.ctx.config, event_retention_count=20,
                                         event_retention_age=0)
    assert await prune_events(srv.ctx, batch=7) == 40
    kept = await srv.client.events()
    assert len(kept) == 20
    assert [e["index"] for e in kept][::2] == revisions[20:]  # numbering unchanged
    watermark = await srv.ctx.store.get(keys.EVENTS_PRUNED)
    assert watermark is not None and int(watermark.value) == revisions[19]
    assert await srv.client.events(since=revisions[19]) == kept
    with pytest.raises(ApiError) as err:
        await srv.client.events(since=revisions[5])
    assert err.value.status == 410
    assert err.value.details["pruned_through"] == revisions[19]
    assert "since=" in err.value.message
    with pytest.raises(ApiError) as err:
        await srv.client.request("GET", "/v1/events", params={"follow": "true", "since": 3})
    assert err.value.status == 410
    assert err.value.details["oldest_index"] == revisions[20]
    # By age: everything written before now - age goes, the rest stays.
    await srv.clock.advance(100)
    newer = await _write(srv, 3)
    srv.ctx.config = dataclasses.replace(srv.ctx.config, event_retention_count=0,
                                         event_retention_age=50)
    assert await prune_events(srv.ctx) == 20
    assert [e["index"] for e in await srv.client.events(since=revisions[-1])] == newer


async def test_gc_controller_prunes_events(srv: ServerHarness) -> None:
    from corral.server.controllers.gc import reconcile_gc

    await _write(srv, 12)
    srv.ctx.config = dataclasses.replace(srv.ctx.config, event_retention_count=5)
    await reconcile_gc(srv.ctx)
    assert len(await srv.client.events()) == 5


async def test_a_lost_instance_is_told_to_followers_of_its_app(srv: ServerHarness) -> None:
    node = {"name": "n1", "address": "10.0.0.1", "capacity": {"cpu": 2.0, "memory": 4 << 30},
            "port_range": [20000, 20100], "drivers": {"process": ""}}
    await srv.client.register_node(node)
    await srv.client.apply({"name": "shop", "services": {"web": {
        "instances": 2, "command": ["sleep", "100"],
        "resources": {"cpu": 0.25, "memory": "64MiB"}}}})
    await srv.reconcile()
    await srv.clock.advance(srv.ctx.config.node_ttl * 2 + 1)
    await srv.reconcile(rounds=1)
    events = await srv.client.events(topic="instance", app="shop")
    lost = [e for e in events if e["type"] == "lost"]
    assert len(lost) == 2
    assert all("lost: node n1 is down" in e["message"] for e in lost)
    scheduled = [e for e in events if e["type"] == "scheduled"]
    assert all("scheduled on n1" in e["message"] for e in scheduled)
    assert await srv.client.events(topic="instance", app="blog") == []


async def test_retention_prunes_a_burst_over_several_bounded_passes(
        srv: ServerHarness) -> None:
    """Each pass reads and deletes at most `most` events, never splits one transaction's
    events, and the passes together end where one unbounded pass would."""
    revisions = await _write(srv, 30, per_txn=2)
    srv.ctx.config = dataclasses.replace(srv.ctx.config, event_retention_count=20,
                                         event_retention_age=0)
    passes = []
    while (deleted := await prune_events(srv.ctx, batch=4, most=9)) > 0:
        passes.append(deleted)
        watermark = await srv.ctx.store.get(keys.EVENTS_PRUNED)
        assert watermark is not None
        left = [e["index"] for e in await srv.client.events()]
        # whole transactions only: both events of each index are kept or both gone
        assert all(left.count(i) == 2 for i in set(left))
        assert min(left) > int(watermark.value)
    # 9 read, the last index's pair held back when every one read was doomed
    assert passes == [8, 8, 8, 8, 8] and sum(passes) == 40
    kept = await srv.client.events()
    assert [e["index"] for e in kept][::2] == revisions[20:]
    assert await prune_events(srv.ctx, most=9) == 0
