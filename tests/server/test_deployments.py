"""Rolling deployments through the in-process server: fake agents report instance states,
a FakeClock moves time, and the controllers run by hand (`srv.reconcile()`), so every step
of a rollout is checked: the order, the capacity, the deadlines, superseding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.server.controllers.applications import reconcile_applications
from corral.testing.server import ServerHarness, server_harness
from tests.server.rollouts import NODE, agents, deployments, live, settle, spec


@pytest.fixture
async def srv(tmp_path: Path) -> Any:
    async with server_harness(tmp_path) as s:
        await s.client.register_node(NODE)
        yield s


async def test_first_apply_starts_a_deployment_that_succeeds(srv: ServerHarness) -> None:
    result = await srv.client.apply(spec("1"))
    [started] = result["deployments"]
    await srv.reconcile()
    assert len(await live(srv)) == 3  # nothing to replace: all at once
    [dep] = await deployments(srv)
    assert dep.id == started["id"] and dep.status == "running"
    assert dep.previous_version is None and dep.version == 1 and dep.cause == "apply"
    await agents(srv)
    await srv.reconcile()
    assert (await deployments(srv))[0].status == "running"  # healthy, not yet 2s
    await srv.clock.advance(2)
    await srv.reconcile()
    [dep] = await deployments(srv)
    assert (dep.status, dep.healthy, dep.desired, dep.placed) == ("successful", 3, 3, 3)
    types = [e["type"] for e in await srv.client.events(topic="deployment")]
    assert types == ["created", "successful"]


async def test_healthy_rollout_replaces_one_at_a_time_start_before_stop(
        srv: ServerHarness) -> None:
    await srv.client.apply(spec("1"))
    await settle(srv)
    old = {i["id"] for i in await live(srv)}
    result = await srv.client.apply(spec("2"))
    assert result["version"] == 2 and len(result["deployments"]) == 1
    stopped_order: list[str] = []
    for _ in range(40):
        await srv.reconcile()
        insts = await live(srv)
        new = [i for i in insts if i["version"] == 2]
        pending_new = [i for i in new if i["state"] != "healthy"]
        assert len(pending_new) <= 1, insts  # max_parallel
        assert len(insts) <= 4, insts  # desired + max_surge
        # capacity: healthy instances never below desired
        assert sum(1 for i in insts if i["state"] == "healthy") >= 3, insts
        for inst in await srv.client.list_instances():
            if inst["desired"] == "stop" and inst["id"] not in stopped_order:
                # an old one stops only once a new one was healthy for min_healthy_time
                assert inst["id"] in old
                ready = [i for i in new if i["state"] == "healthy"]
                assert ready, insts
                stopped_order.append(inst["id"])
        if (await deployments(srv))[-1].status != "running":
            break
        await agents(srv)
        await srv.clock.advance(1)
    [_, dep] = await deployments(srv)
    assert dep.status == "successful", dep
    assert (dep.previous_version, dep.version, dep.healthy) == (1, 2, 3)
    assert set(stopped_order) == old
    final = await live(srv)
    assert len(final) == 3 and {i["version"] for i in final} == {2}
    # highest slot first, and each new instance took a free slot
    assert sorted(i["slot"] for i in final) == [0, 1, 2]
    events = [e for e in await srv.client.events(topic="deployment") if e["key"] == dep.id]
    assert [e["type"] for e in events] == ["created"] + ["progress"] * 3 + ["successful"]
    stops = [e for e in await srv.client.events(topic="instance")
             if e["type"] == "stop-requested"]
    assert all(f"replaced by version 2 (deployment {dep.id})" in e["message"] for e in stops)


async def test_stop_waits_for_min_healthy_time(srv: ServerHarness) -> None:
    await srv.client.apply(spec("1", min_healthy_time="10s"))
    await srv.reconcile()
    await agents(srv)
    await srv.clock.advance(9)
    await agents(srv)
    await srv.clock.advance(1)
    await srv.reconcile()
    await srv.client.apply(spec("2", min_healthy_time="10s"))
    await srv.reconcile()
    await agents(srv)  # the new one is healthy from now
    for waited in range(9):
        # the controller asks to be woken when the new instance will have been healthy 10s
        assert await reconcile_applications(srv.ctx) == 10 - waited
        assert len(await live(srv)) == 4
        await srv.clock.advance(1)
        await agents(srv)
    await srv.clock.advance(1)
    await reconcile_applications(srv.ctx)
    insts = await live(srv)
    assert len(insts) == 4  # one old stopped, a second new one started
    assert sorted(i["version"] for i in insts) == [1, 1, 2, 2]


async def test_never_healthy_version_fails_at_healthy_deadline_old_keep_running(
        srv: ServerHarness) -> None:
    await srv.client.apply(spec("1"))
    await settle(srv)
    old = {i["id"] for i in await live(srv)}
    [first] = await deployments(srv)
    await srv.client.apply(spec("2", healthy_deadline="30s"))

    def only_v1(inst: dict[str, Any]) -> bool:
        return bool(inst["version"] == 1)

    for _ in range(29):
        await srv.reconcile()
        await agents(srv, only_v1)
        await srv.clock.advance(1)
        assert (await deployments(srv))[-1].status == "running"
    await srv.clock.advance(1)
    await agents(srv, only_v1)
    await srv.reconcile()
    [_, dep] = await deployments(srv)
    assert dep.status == "failed", dep
    assert "not healthy within healthy_deadline 30s" in dep.reason, dep.reason
    assert dep.healthy == 0 and dep.desired == 3
    insts = await live(srv)
    # the old instances keep running; the never-healthy new one is not needed beside them
    assert {i["id"] for i in insts} == old
    assert first.status == "successful"
    for _ in range(5):  # nothing more happens
        await srv.clock.advance(60)
        await agents(srv, only_v1)
        await srv.reconcile()
    assert {i["id"] for i in await live(srv)} == old
    events = [e for e in await srv.client.events(topic="deployment") if e["key"] == dep.id]
    assert [e["type"] for e in events] == ["created", "failed"]
    assert events[-1]["payload"]["status"] == "failed"


async def test_no_progress_within_progress_deadline_fails(srv: ServerHarness) -> None:
    await srv.client.apply(spec("1"))
    await settle(srv)
    await srv.client.apply(spec("2", healthy_deadline="15s", progress_deadline="20s"))
    await srv.reconcile()
    await srv.clock.advance(10)
    await agents(srv, lambda i: False)
    # the new instance ends (as a lost one would); its replacement is younger than its
    # healthy_deadline when the progress deadline passes
    [new] = [i for i in await live(srv) if i["version"] == 2]
    await srv.client.report_status(new["id"], {"node": "n1", "state": "stopped"})
    await srv.reconcile()
    await srv.clock.advance(9)
    await agents(srv, lambda i: False)
    await srv.reconcile()
    assert (await deployments(srv))[-1].status == "running"
    await srv.clock.advance(1)
    await agents(srv, lambda i: False)
    await srv.reconcile()
    dep = (await deployments(srv))[-1]
    assert dep.status == "failed" and dep.reason == (
        "no progress within progress_deadline 20s: 0/3 new instances ready")


async def test_a_new_apply_supersedes_the_running_deployment(srv: ServerHarness) -> None:
    await srv.client.apply(spec("1"))
    await settle(srv)
    await srv.client.apply(spec("2"))
    await srv.reconcile()
    await agents(srv)
    await srv.clock.advance(3)
    await srv.reconcile()  # one v1 replaced by a v2, a second v2 started
    assert {i["version"] for i in await live(srv)} == {1, 2}
    result = await srv.client.apply(spec("3"))
    [v1, v2, v3] = await deployments(srv)
    assert v2.status == "cancelled" and f"superseded by deployment {v3.id}" in v2.reason
    assert v3.status == "running" and result["deployments"][0]["id"] == v3.id
    assert v1.status == "successful"
    for _ in range(40):
        await srv.reconcile()
        insts = await live(srv)
        assert sum(1 for i in insts if i["state"] == "healthy") >= 3, insts
        if (await deployments(srv))[-1].status != "running":
            break
        await agents(srv)
        await srv.clock.advance(1)
    assert (await deployments(srv))[-1].status == "successful"
    assert {i["version"] for i in await live(srv)} == {3}
    types = [(e["key"], e["type"]) for e in await srv.client.events(topic="deployment")]
    assert (v2.id, "cancelled") in types


async def test_a_pure_scale_starts_no_deployment(srv: ServerHarness) -> None:
    await srv.client.apply(spec("1"))
    await settle(srv)
    result = await srv.client.apply(spec("1", instances=5))
    assert result["deployments"] == []
    await srv.reconcile()
    assert len(await live(srv)) == 5  # at once: nothing is replaced
    assert len(await deployments(srv)) == 1


async def test_max_surge_zero_stops_before_it_starts(srv: ServerHarness) -> None:
    await srv.client.apply(spec("1", max_surge=0, max_parallel=2))
    await settle(srv)
    await srv.client.apply(spec("2", max_surge=0, max_parallel=2))
    await srv.reconcile(rounds=1)
    insts = await live(srv)
    assert len(insts) == 3
    assert sorted(i["version"] for i in insts) == [1, 2, 2]
    for _ in range(20):
        await agents(srv)
        await srv.clock.advance(1)
        await srv.reconcile()
        assert len(await live(srv)) <= 3
    assert (await deployments(srv))[-1].status == "successful"


async def test_scaling_down_mid_rollout(srv: ServerHarness) -> None:
    await srv.client.apply(spec("1", instances=4))
    await settle(srv)
    await srv.client.apply(spec("2", instances=4))
    await srv.reconcile()
    await srv.client.apply(spec("2", instances=2))  # a pure scale of the new version
    for _ in range(20):
        await agents(srv)
        await srv.clock.advance(1)
        await srv.reconcile()
    assert (await deployments(srv))[-1].status == "successful"
    insts = await live(srv)
    assert len(insts) == 2 and {i["version"] for i in insts} <= {2, 3}  # 3: the scale


async def test_deleting_the_app_cancels_its_deployment_and_forgets_it(
        srv: ServerHarness) -> None:
    await srv.client.apply(spec("1"))
    await settle(srv)
    await srv.client.apply(spec("2"))
    await srv.reconcile()
    await srv.client.delete_app("shop")
    await srv.reconcile()
    assert (await deployments(srv))[-1].status == "cancelled"
    await agents(srv)
    await srv.reconcile()
    assert await deployments(srv) == []


async def test_removing_a_service_cancels_its_deployment(srv: ServerHarness) -> None:
    two = spec("1")
    two["services"]["api"] = {**two["services"]["web"]}
    await srv.client.apply(two)
    await settle(srv)
    changed = spec("1")
    changed["services"]["api"] = {**two["services"]["web"], "env": {"V": "2"}}
    await srv.client.apply(changed)
    result = await srv.client.apply(spec("1"))  # api removed mid-rollout
    assert result["deployments"] == []
    api = [d for d in await deployments(srv) if d.service == "api"]
    assert [d.status for d in api] == ["successful", "cancelled"]
    assert api[-1].reason == "service removed"
    await srv.reconcile()
    assert {i["service"] for i in await live(srv)} == {"web"}


async def test_gc_keeps_the_newest_deployments_of_each_service(srv: ServerHarness) -> None:
    import dataclasses

    from corral.server.controllers.gc import reconcile_gc

    srv.ctx.config = dataclasses.replace(srv.ctx.config, deployment_retention=2)
    for v in "1234":
        await srv.client.apply(spec(v))
    await reconcile_gc(srv.ctx)
    assert [(d.version, d.status) for d in await deployments(srv)] == [
        (3, "cancelled"), (4, "running")]
