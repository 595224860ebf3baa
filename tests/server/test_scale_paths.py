"""What issue 8 changed on the control plane's hot paths, over the in-process server and
memory store: the batched status endpoint, long polls woken per node, and the in-memory
index (`server/index.py`) that must always equal the store."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest

from corral.client import ApiError
from corral.model.codec import dump_json, load_json
from corral.model.instance import TERMINAL_STATES, DesiredState, Instance, InstanceState
from corral.model.node import Node, NodeState
from corral.scheduler import Snapshot, node_usage
from corral.scheduler.colocation import Colocation
from corral.server import keys
from corral.server.controllers import applications
from corral.server.index import IdsInUse, StateIndex
from corral.store import MemoryStore, SqliteStore
from corral.store.base import Store
from corral.testing.factories import make_instance, make_node
from corral.testing.server import ServerHarness, server_harness

WEB = {"name": "shop", "services": {"web": {
    "instances": 3, "command": ["sleep", "1000"],
    "resources": {"cpu": 0.25, "memory": "128MiB"}, "ports": [{"name": "http"}]}}}


def node_body(name: str) -> dict[str, Any]:
    return {"name": name, "address": "10.0.0.1", "capacity": {"cpu": 2.0, "memory": 4 << 30},
            "port_range": [20000, 20100], "drivers": {"process": ""}}


@pytest.fixture
async def srv(tmp_path: Path) -> Any:
    async with server_harness(tmp_path) as s:
        yield s


async def placed(srv: ServerHarness) -> list[dict[str, Any]]:
    await srv.client.register_node(node_body("n1"))
    await srv.client.apply(WEB)
    await srv.reconcile()
    return list(await srv.client.list_instances(app="shop"))


async def test_a_batch_applies_reports_in_order_in_one_write(srv: ServerHarness) -> None:
    insts = await placed(srv)
    ids = [i["id"] for i in insts]
    revision = await srv.ctx.store.revision()
    answer = await srv.client.report_statuses("n1", [
        {"id": ids[0], "state": "starting"}, {"id": ids[0], "state": "running", "pid": 9},
        {"id": ids[1], "state": "starting"}])
    assert answer["results"] == [{"id": ids[0], "changed": True},
                                 {"id": ids[0], "changed": True},
                                 {"id": ids[1], "changed": True}]
    assert await srv.ctx.store.revision() == revision + 1  # one transaction
    first = await srv.client.get_instance(ids[0])
    assert (first["state"], first["pid"]) == ("running", 9)
    assert (await srv.client.get_instance(ids[1]))["state"] == "starting"
    types = [e["type"] for e in await srv.client.events(key=ids[0])]
    assert types == ["pending", "scheduled", "starting", "running"]  # an event per report


async def test_a_refused_report_does_not_hold_up_the_others(srv: ServerHarness) -> None:
    ids = [i["id"] for i in await placed(srv)]
    await srv.client.register_node(node_body("n2"))
    answer = await srv.client.report_statuses("n1", [
        {"id": "nosuch", "state": "running"},
        {"id": ids[0], "state": "pending"},  # scheduled -> pending: no such transition
        {"id": ids[1], "state": "running"}])
    results = answer["results"]
    assert [r.get("status") for r in results] == [404, 409, None]
    assert "no instance" in results[0]["error"] and "cannot go" in results[1]["error"]
    assert (await srv.client.get_instance(ids[1]))["state"] == "running"
    # n2's report about n1's instance is refused for that instance only.
    other = await srv.client.report_statuses("n2", [{"id": ids[2], "state": "running"}])
    assert other["results"][0]["status"] == 403
    assert (await srv.client.get_instance(ids[2]))["state"] == "scheduled"


async def test_a_node_may_report_only_for_itself(srv: ServerHarness) -> None:
    await placed(srv)
    joined = await srv.join("n3")
    try:
        with pytest.raises(ApiError) as err:
            await joined.client.report_statuses("n1", [])
        assert err.value.status == 403
        assert await joined.client.report_statuses("n3", []) == {"results": []}
    finally:
        await joined.client.close()


async def test_bad_batches_are_4xx(srv: ServerHarness) -> None:
    for body in ({"reports": [{"id": "x", "state": "dancing"}]}, {"reports": "no"}, {}):
        with pytest.raises(ApiError) as err:
            await srv.client.request("PUT", "/v1/nodes/n1/status", json=body)
        assert err.value.status == 422


async def test_a_long_poll_sleeps_through_other_nodes_changes(srv: ServerHarness) -> None:
    await srv.client.register_node(node_body("n1"))
    await srv.client.register_node(node_body("n2"))
    first = await srv.client.node_instances("n2", index=0, wait=1)
    waiter = asyncio.create_task(srv.client.node_instances("n2", index=first["index"],
                                                           wait=30))
    await srv.client.apply(WEB)
    await srv.reconcile()  # bin-packing puts all three on n1
    assert {i["node"] for i in await srv.client.list_instances(app="shop")} == {"n1"}
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await srv.client.drain_node("n1")
    await srv.reconcile()  # replacements go to n2: now n2's poll answers
    answer = await asyncio.wait_for(waiter, 10)
    assert answer["instances"] and {i["node"] for i in answer["instances"]} == {"n2"}


# the index against the store


def random_instance(rng: random.Random, n: int) -> Instance:
    node = rng.choice([None, "a", "b", "c"])
    state = rng.choice(list(InstanceState)) if node else InstanceState.PENDING
    return make_instance(f"i{n}", node=node, state=state, cpu=rng.choice([0.1, 0.25, 1]),
                         ports={"http": 20000 + n} if node else {},
                         desired=rng.choice([DesiredState.RUN, DesiredState.RUN,
                                             DesiredState.STOP]),
                         app=rng.choice(["shop", "blog"]), service=rng.choice(["web", "db"]),
                         kind=rng.choice(["service", "service", "job"]),
                         migrate=bool(node) and rng.random() < 0.3)


def check_index(index: StateIndex, instances: dict[str, Instance], nodes: list[Node]) -> None:
    assert {v.record.id: v.record for v in index.instances.ordered()} == instances
    assert [v.record.id for v in index.instances.ordered()] == sorted(instances)
    expected = node_usage(Snapshot(nodes=tuple(nodes), instances=tuple(instances.values())))
    assert index.usage() == {k: u for k, u in expected.items() if u.instances}
    assert set(index.pending) == {i.id for i in instances.values() if i.node is None
                                  and i.state == "pending" and i.desired == "run"}
    for node in nodes:
        assert [v.record.id for v in index.on_node(node.name)] == sorted(
            i.id for i in instances.values() if i.node == node.name)
    apps = sorted({(i.namespace, i.app) for i in instances.values()})
    assert index.apps() == apps
    for ns, app in apps:
        assert [v.record for v in index.of_app(ns, app)] == [
            instances[k] for k in sorted(instances) if instances[k].app == app]
        assert [v.record for v in index.jobs_of_app(ns, app)] == [
            instances[k] for k in sorted(instances)
            if instances[k].app == app and instances[k].kind == "job"]
    assert set(index.migrating) == {i.id for i in instances.values() if i.migrate}
    assert set(index.ended) == {i.id for i in instances.values()
                                if i.state in TERMINAL_STATES}
    # What the scheduler's colocation counts from every record, the index keeps.
    services = {(i.namespace, i.app, i.service) for i in instances.values()}
    counted = Colocation(Snapshot(nodes=tuple(nodes), instances=tuple(instances.values())))
    assert index.placed(services) == {
        key: dict(counted.on_node(key)) for key in services if counted.on_node(key)}
    assert all(index.in_use(i) for i in instances) and not index.in_use("i-none")
    taken = IdsInUse(index)
    taken.add("fresh")
    assert "fresh" in taken and next(iter(instances)) in taken and "other" not in taken


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_the_index_equals_the_store_through_random_writes(tmp_path: Path,
                                                                backend: str) -> None:
    store: Store = MemoryStore() if backend == "memory" else \
        await SqliteStore.open(tmp_path / "state.db")
    rng = random.Random(8)
    nodes = [make_node(name) for name in ("a", "b", "c")]
    try:
        for node in nodes:
            await store.put(keys.node(node.name), dump_json(node))
        instances: dict[str, Instance] = {}
        for n in range(40):  # some written before the index loads
            inst = random_instance(rng, n)
            instances[inst.id] = inst
            await store.put(keys.instance(inst.id), dump_json(inst))
        index = StateIndex(store)
        loading = asyncio.create_task(index.ready())
        for step in range(300):  # writes racing the load, then after it
            if step == 5:
                await loading
            n = rng.randrange(60)
            if rng.random() < 0.2 and f"i{n}" in instances:
                del instances[f"i{n}"]
                await store.delete(keys.instance(f"i{n}"))
            else:
                inst = random_instance(rng, n)
                instances[inst.id] = inst
                await store.put(keys.instance(inst.id), dump_json(inst))
        check_index(index, instances, nodes)
        for app in ("shop", "blog"):  # the revision of an application's newest change
            inst = make_instance("i-last", app=app)
            instances[inst.id] = inst
            revision = await store.put(keys.instance(inst.id), dump_json(inst))
            assert index.app_revision("default", app) == revision
        assert index.app_revision("default", "nothing") == 0
        check_index(index, instances, nodes)
        stored, _ = await store.range(keys.INSTANCES)
        assert [(kv.key, load_json(Instance, kv.value), kv.mod_revision) for kv in stored] == [
            (keys.instance(v.record.id), v.record, v.mod_revision)
            for v in index.instances.ordered()]
    finally:
        await store.close()


# the applications controller reconciles what changed


async def test_only_changed_applications_are_reconciled(
        srv: ServerHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    await srv.client.register_node(node_body("n1"))
    await srv.client.apply(WEB)
    await srv.client.apply({**WEB, "name": "blog"})
    await srv.reconcile()
    seen: list[str] = []
    real = applications._reconcile_app

    async def spy(ctx: Any, app: Any, *args: Any) -> Any:
        seen.append(app.record.name)
        return await real(ctx, app, *args)

    monkeypatch.setattr(applications, "_reconcile_app", spy)
    await applications.reconcile_applications(srv.ctx)
    await applications.reconcile_applications(srv.ctx)
    assert seen == [], "nothing changed: nothing to reconcile"

    # One instance of shop changes (its agent reports it running): shop alone.
    [shop] = [i for i in await srv.client.list_instances(app="shop")][:1]
    item = await srv.ctx.records.get(Instance, keys.instance(shop["id"]))
    assert item is not None
    await srv.ctx.records.txn().put(
        keys.instance(shop["id"]), dataclasses.replace(item.record, state=InstanceState.RUNNING),
        expect=item.mod_revision).commit()
    await applications.reconcile_applications(srv.ctx)
    assert seen == ["shop"]

    # A scale of blog (its record changes): blog alone, and it creates the instance.
    seen.clear()
    await srv.client.apply({**WEB, "name": "blog", "services": {"web": {
        **WEB["services"]["web"], "instances": 4}}})
    await applications.reconcile_applications(srv.ctx)
    assert seen == ["blog"]
    assert len(await srv.client.list_instances(app="blog")) == 4

    # Once per resync period every application is looked at, changed or not.
    seen.clear()
    await applications.reconcile_applications(srv.ctx)  # blog's own write: once more
    seen.clear()
    await srv.clock.advance(applications.CONTROLLER.resync)
    await applications.reconcile_applications(srv.ctx)
    assert sorted(seen) == ["blog", "shop"]


async def test_a_stopping_server_answers_every_long_poll_at_once() -> None:
    store = MemoryStore()
    index = StateIndex(store)
    await index.ready()
    waiting = asyncio.create_task(index.wait_node("n1", 1, timeout=300))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    index.release_waiters()
    assert await asyncio.wait_for(waiting, 5) == 1  # nothing newer than asked
    # and a poll that starts afterwards does not wait either
    assert await asyncio.wait_for(index.wait_node("n2", 1, timeout=300), 5) == 1
    index.close()


async def test_a_long_poll_wakes_for_instructions_not_for_its_own_reports() -> None:
    store = MemoryStore()
    index = StateIndex(store)
    await index.ready()
    inst = make_instance("i1", node="n1", state=InstanceState.SCHEDULED)
    at = await store.put(keys.instance("i1"), dump_json(inst))

    async def woken(change: Instance) -> bool:
        nonlocal at
        poll = asyncio.create_task(index.wait_node("n1", at, timeout=300))
        await asyncio.sleep(0)
        at = await store.put(keys.instance("i1"), dump_json(change))
        await asyncio.sleep(0.01)
        done = poll.done()
        poll.cancel()
        return done

    running = dataclasses.replace(inst, state=InstanceState.RUNNING, pid=42, updated_at=5.0)
    assert not await woken(running), "the agent's own report came back to it"
    stop = dataclasses.replace(running, desired=DesiredState.STOP)
    assert await woken(stop), "a stop request is news to the agent"
    lost = dataclasses.replace(stop, state=InstanceState.LOST, reason="node down")
    assert await woken(lost), "so is the server declaring it lost"
    index.close()


async def test_the_index_lists_nodes_without_a_lease_and_draining_nodes() -> None:
    store = MemoryStore()
    await store.put(keys.node("a"), dump_json(make_node("a")))
    await store.put(keys.node_alive("a"), b"1")
    index = StateIndex(store)
    await index.ready()
    assert (index.unalive, index.draining) == (set(), set())
    await store.put(keys.node("b"), dump_json(make_node("b")))  # registered, no lease yet
    assert index.unalive == {"b"}
    await store.put(keys.node_alive("b"), b"2")
    await store.delete(keys.node_alive("a"))  # a's lease expired
    assert index.unalive == {"a"}
    await store.put(keys.node("b"), dump_json(dataclasses.replace(
        make_node("b"), state=NodeState.DRAINING)))
    assert index.draining == {"b"}
    await store.put(keys.node("b"), dump_json(make_node("b")))  # uncordoned
    await store.delete(keys.node("a"))
    assert (index.unalive, index.draining) == (set(), set())
    index.close()
