"""The API server with its controllers run by hand over a memory store: apply, place,
report, scale, delete, and every kind of bad input answered with a 4xx and no change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.client import ApiError
from corral.client.assignments import merge_assignments
from corral.testing.server import ServerHarness, server_harness

WEB = {"name": "shop", "services": {"web": {
    "instances": 3, "command": ["python3", "app.py", "--port", "${PORT_HTTP}"],
    "resources": {"cpu": 0.25, "memory": "128MiB"}, "ports": [{"name": "http"}]}}}
NODE = {"name": "n1", "address": "10.0.0.1", "capacity": {"cpu": 2.0, "memory": 4 << 30},
        "port_range": [20000, 20100], "drivers": {"process": ""}}


@pytest.fixture
async def srv(tmp_path: Path) -> Any:
    async with server_harness(tmp_path) as s:
        yield s


async def _running(srv: ServerHarness, app: str = "shop") -> list[dict[str, Any]]:
    return [i for i in await srv.client.list_instances(app=app)]


async def test_health_needs_no_token_but_everything_else_does(srv: ServerHarness) -> None:
    anon = srv.anonymous()
    assert (await anon.request("GET", "/healthz")) == {"ok": True}
    for method, path in [("GET", "/v1/apps"), ("GET", "/v1/nodes"), ("GET", "/v1/events"),
                         ("POST", "/v1/apps"), ("GET", "/v1/instances"), ("GET", "/metrics"),
                         ("GET", "/v1/status"), ("GET", "/openapi.json"),
                         ("GET", "/docs")]:
        with pytest.raises(ApiError) as err:
            await anon.request(method, path)
        assert err.value.status in ((401, 404) if path == "/docs" else (401,)), path
    await anon.close()


async def test_openapi_spec_is_served_with_a_token(srv: ServerHarness) -> None:
    spec = await srv.client.request("GET", "/openapi.json")
    assert spec["info"]["title"] == "Corral"
    assert {"/v1/apps", "/v1/instances", "/v1/nodes", "/v1/events"} <= set(spec["paths"])


async def test_wrong_token_is_refused(srv: ServerHarness) -> None:
    import httpx

    from corral.client import Client, ClientConfig

    bad = Client(ClientConfig(addr="http://corral", token="nope"),
                 transport=httpx.ASGITransport(app=srv.app))
    with pytest.raises(ApiError) as err:
        await bad.list_apps()
    assert err.value.status == 401 and "invalid token" in err.value.message
    await bad.close()


async def test_apply_places_instances_with_unique_ports(srv: ServerHarness) -> None:
    await srv.client.register_node(NODE)
    result = await srv.client.apply(WEB)
    assert result["created"] and result["version"] == 1
    assert [c["change"] for c in result["diff"]] == ["added"]
    await srv.reconcile()
    instances = await _running(srv)
    assert len(instances) == 3
    assert {i["state"] for i in instances} == {"scheduled"}
    ports = [i["ports"]["http"] for i in instances]
    assert len(set(ports)) == 3 and all(20000 <= p <= 20100 for p in ports)
    assert {i["node"] for i in instances} == {"n1"}
    assert {i["address"] for i in instances} == {"10.0.0.1"}
    node = (await srv.client.list_nodes())[0]
    assert node["allocated"] == {"cpu": 0.75, "memory": 3 * 128 << 20, "instances": 3}


async def test_reapplying_the_same_spec_changes_nothing(srv: ServerHarness) -> None:
    await srv.client.apply(WEB)
    rev = await srv.ctx.store.revision()
    again = await srv.client.apply(WEB)
    assert not again["changed"] and again["version"] == 1
    assert await srv.ctx.store.revision() == rev


async def test_plan_writes_nothing(srv: ServerHarness) -> None:
    result = await srv.client.apply(WEB, dry_run=True)
    assert result["created"] and result["diff"][0]["change"] == "added"
    assert await srv.client.list_apps() == []


async def test_impossible_request_stays_pending_with_reason(srv: ServerHarness) -> None:
    await srv.client.register_node(NODE)
    huge = {"name": "big", "services": {"db": {"command": ["x"],
                                                "resources": {"memory": "64GiB"}}}}
    await srv.client.apply(huge)
    await srv.reconcile()
    [inst] = await _running(srv, "big")
    assert inst["state"] == "pending"
    assert "memory" in inst["reason"] and "1 node" in inst["reason"], inst["reason"]
    events = await srv.client.events(topic="instance")
    assert any(e["type"] == "placement-failed" for e in events)


async def test_no_nodes_gives_a_reason(srv: ServerHarness) -> None:
    await srv.client.apply(WEB)
    await srv.reconcile()
    reasons = {i["reason"] for i in await _running(srv)}
    assert len(reasons) == 1 and "no node" in reasons.pop()


async def test_scale_up_and_down_keeps_existing_instances(srv: ServerHarness) -> None:
    await srv.client.register_node(NODE)
    await srv.client.apply(WEB)
    await srv.reconcile()
    before = {i["id"] for i in await _running(srv)}
    bigger = {**WEB, "services": {"web": {**WEB["services"]["web"], "instances": 5}}}
    result = await srv.client.apply(bigger)
    assert result["diff"][0]["change"] == "scaled"
    await srv.reconcile()
    after = {i["id"] for i in await _running(srv)}
    assert before < after and len(after) == 5
    smaller = {**WEB, "services": {"web": {**WEB["services"]["web"], "instances": 1}}}
    await srv.client.apply(smaller)
    await srv.reconcile()
    live = [i for i in await _running(srv) if i["desired"] == "run"]
    assert len(live) == 1
    stopping = [i for i in await _running(srv) if i["desired"] == "stop"]
    assert len(stopping) == 4 and all("scaled down" in i["reason"] for i in stopping)
    assert live[0]["slot"] == 0


async def test_changed_spec_starts_a_rolling_deployment(srv: ServerHarness) -> None:
    await srv.client.register_node(NODE)
    await srv.client.apply(WEB)
    await srv.reconcile()
    old = {i["id"] for i in await _running(srv)}
    changed = {**WEB, "services": {"web": {**WEB["services"]["web"], "env": {"V": "2"}}}}
    result = await srv.client.apply(changed)
    assert result["diff"][0] == {"kind": "service", "name": "web", "change": "updated",
                                 "fields": ["env"], "instances": [3, 3]}
    assert [d["service"] for d in result["deployments"]] == ["web"]
    await srv.reconcile()
    insts = [i for i in await _running(srv) if i["desired"] == "run"]
    # start before stop: the old ones run on beside one new one (tests/server/
    # test_deployments.py follows a rollout to its end)
    assert {i["id"] for i in insts} > old and len(insts) == 4
    assert [i["version"] for i in insts if i["id"] not in old] == [2]


async def test_agent_reports_move_the_state_machine(srv: ServerHarness) -> None:
    await srv.client.register_node(NODE)
    await srv.client.apply(WEB)
    await srv.reconcile()
    inst = (await _running(srv))[0]
    for state in ("starting", "running"):
        await srv.client.report_status(inst["id"], {"node": "n1", "state": state, "pid": 42})
    got = await srv.client.get_instance(inst["id"])
    assert got["state"] == "running" and got["pid"] == 42
    with pytest.raises(ApiError) as err:  # running -> pending is not a transition
        await srv.client.report_status(inst["id"], {"node": "n1", "state": "pending"})
    assert err.value.status == 409
    with pytest.raises(ApiError) as err:  # another node cannot report for it
        await srv.client.report_status(inst["id"], {"node": "n2", "state": "exited"})
    assert err.value.status == 403
    assert (await srv.client.get_instance(inst["id"]))["state"] == "running"
    types = [e["type"] for e in await srv.client.events(key=inst["id"])]
    assert types == ["pending", "scheduled", "starting", "running"]


async def test_delete_stops_everything_then_forgets(srv: ServerHarness) -> None:
    await srv.client.register_node(NODE)
    await srv.client.apply(WEB)
    await srv.reconcile()
    await srv.client.delete_app("shop")
    await srv.reconcile()
    insts = await _running(srv)
    assert insts and all(i["desired"] == "stop" for i in insts)
    assert (await srv.client.get_app("shop"))["status"] == "deleting"
    for i in insts:  # the agent stops each
        await srv.client.report_status(i["id"], {"node": "n1", "state": "stopped"})
    await srv.reconcile()
    with pytest.raises(ApiError) as err:
        await srv.client.get_app("shop")
    assert err.value.status == 404
    assert await srv.client.list_instances(all=True) == []
    with pytest.raises(ApiError) as err:
        await srv.client.app_version("shop", 1)
    assert err.value.status == 404


@pytest.mark.parametrize(("spec", "needle"), [
    ({"name": "x", "servces": {}}, "servces"),
    ({"name": "x", "services": {"w": {"command": ["a"], "instances": "three"}}}, "instances"),
    ({"name": "x", "services": {"w": {"command": ["a"], "resources": {"cpu": -1}}}}, "cpu"),
    ({"name": "x", "services": {"w": {"command": ["a"], "resources": {"memory": "-5MiB"}}}},
     "memory"),
    ({"name": "x", "services": {"w": {"instances": 1}}}, "command"),
    ({"name": "Bad Name"}, "name"),
    ({"name": "x", "services": {"w": {"command": ["a"], "artifact": "./web"}}}, "artifact"),
    ({"name": "x", "services": {"w": {"command": ["a"], "artifact": "sha256:" + "0" * 64}}},
     "never uploaded"),
])
async def test_bad_specs_are_refused_and_change_nothing(srv: ServerHarness, spec: Any,
                                                        needle: str) -> None:
    rev = await srv.ctx.store.revision()
    with pytest.raises(ApiError) as err:
        await srv.client.apply(spec)
    assert err.value.status == 422
    assert needle in err.value.message
    assert await srv.ctx.store.revision() == rev


async def test_malformed_bodies_get_4xx_not_500(srv: ServerHarness) -> None:
    for kwargs in ({"content": b"{not json", "headers": {"content-type": "application/json"}},
                   {"json": {"nospec": 1}}, {"json": [1, 2]}):
        with pytest.raises(ApiError) as err:
            await srv.client.request("POST", "/v1/apps", **kwargs)
        assert 400 <= err.value.status < 500
    with pytest.raises(ApiError) as err:
        await srv.client.request("GET", "/v1/events", params={"since": "abc"})
    assert err.value.status == 422
    with pytest.raises(ApiError) as err:
        await srv.client.request("GET", "/v1/events", params={"topic": "nope"})
    assert err.value.status == 400
    with pytest.raises(ApiError) as err:
        await srv.client.get_instance("does-not-exist")
    assert err.value.status == 404


async def test_node_lease_expiry_marks_node_down_and_instances_lost(srv: ServerHarness) -> None:
    reg = await srv.client.register_node(NODE)
    await srv.client.apply(WEB)
    await srv.reconcile()
    await srv.clock.advance(srv.ctx.config.node_ttl / 2)
    await srv.client.heartbeat("n1", reg["lease_id"])
    await srv.clock.advance(srv.ctx.config.node_ttl / 2 + 1)
    await srv.reconcile()
    assert (await srv.client.list_nodes())[0]["state"] == "ready"
    await srv.clock.advance(srv.ctx.config.node_ttl + 1)
    await srv.reconcile(rounds=1)
    assert (await srv.client.list_nodes())[0]["state"] == "down"
    lost = await srv.client.list_instances(all=True)
    assert {i["state"] for i in lost if i["node"] == "n1"} >= {"lost"}
    with pytest.raises(ApiError) as err:
        await srv.client.heartbeat("n1", reg["lease_id"])
    assert err.value.status == 404
    # the node comes back: ready again, and the lost instances were replaced (pending)
    await srv.client.register_node(NODE)
    await srv.reconcile()
    assert (await srv.client.list_nodes())[0]["state"] == "ready"
    live = [i for i in await srv.client.list_instances() if i["desired"] == "run"]
    assert len(live) == 3 and {i["state"] for i in live} == {"scheduled"}


async def test_long_poll_returns_on_change(srv: ServerHarness) -> None:
    import asyncio

    await srv.client.register_node(NODE)
    first = await srv.client.node_instances("n1", index=0, wait=1)
    assert first["instances"] == []
    waiter = asyncio.create_task(srv.client.node_instances("n1", index=first["index"],
                                                           wait=30))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await srv.client.apply(WEB)
    await srv.reconcile()
    answer = await asyncio.wait_for(waiter, 10)
    assert answer["index"] > first["index"]
    assert len(answer["instances"]) == 3


async def test_a_long_poll_for_changes_sends_only_the_changed_records(
        srv: ServerHarness) -> None:
    await srv.client.register_node(NODE)
    await srv.client.apply(WEB)
    await srv.reconcile()
    full = await srv.client.node_instances("n1", index=0, wait=0, changes=True)
    ids = [i["id"] for i in full["instances"]]
    assert full["since"] == 0 and full["ids"] == ids == sorted(ids) and len(ids) == 3
    await srv.client.report_statuses("n1", [{"id": ids[1], "state": "starting"}])
    delta = await srv.client.node_instances("n1", index=full["index"], wait=5, changes=True)
    assert delta["since"] == full["index"] and delta["ids"] == ids
    assert [(i["id"], i["state"]) for i in delta["instances"]] == [(ids[1], "starting")]
    held, complete = merge_assignments(
        {i["id"]: i for i in full["instances"]}, delta, lambda data: data)
    assert complete and [(i["id"], i["state"]) for i in held.values()] == [
        (ids[0], "scheduled"), (ids[1], "starting"), (ids[2], "scheduled")]
    # the same answer, whole, to an agent that does not ask for changes
    whole = await srv.client.node_instances("n1", index=full["index"], wait=5)
    assert "ids" not in whole and [i["id"] for i in whole["instances"]] == ids
    # an index the server's store never reached: counted from nothing
    ahead = await srv.client.node_instances("n1", index=delta["index"] + 1000, wait=0,
                                            changes=True)
    assert ahead["since"] == 0 and [i["id"] for i in ahead["instances"]] == ids


async def test_usage_is_kept_per_node_and_shown_in_views(srv: ServerHarness) -> None:
    await srv.client.register_node(NODE)
    await srv.client.register_node({**NODE, "name": "n2"})
    await srv.client.apply({**WEB, "services": {"web": {**WEB["services"]["web"],
                                                          "instances": 1}}})
    await srv.reconcile()
    [inst] = await srv.client.list_instances()
    other = "n2" if inst["node"] == "n1" else "n1"
    assert inst["usage_cpu"] is None and inst["usage_memory"] is None
    # another node cannot report for it
    answer = await srv.client.report_usage(other, {inst["id"]: {"cpu": 9.0, "memory": 1}})
    assert answer == {"accepted": 0}
    answer = await srv.client.report_usage(inst["node"], {
        inst["id"]: {"cpu": 0.25, "memory": 50 << 20, "pids": 3}, "unknown": {"memory": 1}})
    assert answer == {"accepted": 1}
    got = await srv.client.get_instance(inst["id"])
    assert got["usage_cpu"] == 0.25 and got["usage_memory"] == 50 << 20
    node = next(n for n in await srv.client.list_nodes() if n["name"] == inst["node"])
    assert node["used"] == {"cpu": 0.25, "memory": 50 << 20}
    with pytest.raises(ApiError) as err:
        await srv.client.report_usage(inst["node"], {inst["id"]: {"memory": -1}})
    assert err.value.status == 422


async def test_unusable_driver_is_not_placed_and_says_why(srv: ServerHarness) -> None:
    await srv.client.register_node({**NODE, "drivers": {"process": "",
                                                        "oci": "runc is not installed"}})
    spec = {"name": "boxed", "services": {"db": {"command": ["x"],
                                                  "isolation": {"driver": "oci"}}}}
    await srv.client.apply(spec)
    await srv.reconcile()
    [inst] = await srv.client.list_instances(app="boxed")
    assert inst["state"] == "pending" and "oci" in inst["reason"], inst["reason"]
    # the node learns the driver (agent restarted with runc installed): placed
    await srv.client.register_node({**NODE, "drivers": {"process": "", "oci": ""}})
    await srv.reconcile()
    [inst] = await srv.client.list_instances(app="boxed")
    assert inst["state"] == "scheduled" and inst["node"] == "n1"


async def test_an_empty_usage_report_clears_the_nodes_samples(srv: ServerHarness) -> None:
    await srv.client.register_node(NODE)
    await srv.client.apply({**WEB, "services": {"web": {**WEB["services"]["web"],
                                                          "instances": 1}}})
    await srv.reconcile()
    [inst] = await srv.client.list_instances()
    await srv.client.report_usage("n1", {inst["id"]: {"cpu": 0.5, "memory": 10}})
    assert (await srv.client.list_nodes())[0]["used"] == {"cpu": 0.5, "memory": 10}
    await srv.client.report_usage("n1", {})
    assert (await srv.client.list_nodes())[0]["used"] == {"cpu": 0.0, "memory": 0}


async def test_an_adopted_instance_may_report_running_from_scheduled(
        srv: ServerHarness) -> None:
    await srv.client.register_node(NODE)
    await srv.client.apply({**WEB, "services": {"web": {**WEB["services"]["web"],
                                                          "instances": 1}}})
    await srv.reconcile()
    [inst] = await srv.client.list_instances()
    assert inst["state"] == "scheduled"
    await srv.client.report_status(inst["id"], {"node": "n1", "state": "running",
                                                "reason": "adopted after an agent restart"})
    assert (await srv.client.get_instance(inst["id"]))["state"] == "running"


async def _run_all(srv: ServerHarness) -> None:
    """Every scheduled instance reports starting and running (as its agent would)."""
    for inst in await srv.client.list_instances():
        if inst["state"] == "scheduled" and inst["desired"] == "run":
            for state in ("starting", "running"):
                await srv.client.report_status(inst["id"], {"node": inst["node"],
                                                            "state": state, "pid": 7})
        elif inst["desired"] == "stop" and inst["state"] not in ("stopped", "lost"):
            await srv.client.report_status(inst["id"], {"node": inst["node"],
                                                        "state": "stopped"})


async def test_drain_moves_instances_max_parallel_at_a_time(srv: ServerHarness) -> None:
    await srv.client.register_node(NODE)
    spec = {**WEB, "services": {"web": {**WEB["services"]["web"], "instances": 3,
                                        "update": {"max_parallel": 1}}}}
    await srv.client.apply(spec)
    await srv.reconcile()
    await _run_all(srv)
    await srv.client.register_node({**NODE, "name": "n2", "address": "10.0.0.2"})
    node = await srv.client.drain_node("n1")
    assert node["state"] == "draining"
    on_n2_max = 0
    for _ in range(12):
        await srv.reconcile(rounds=1)
        insts = await srv.client.list_instances()
        migrating = [i for i in insts if i["migrate"] and i["desired"] == "run"]
        assert len(migrating) <= 1  # max_parallel
        live = [i for i in insts if i["desired"] == "run" and not i["migrate"]]
        running = [i for i in insts if i["desired"] == "run" and i["state"] == "running"]
        assert len(running) >= 3 or len(live) < 3  # capacity never drops while draining
        on_n2_max = max(on_n2_max, sum(1 for i in live if i["node"] == "n2"))
        await _run_all(srv)
    insts = [i for i in await srv.client.list_instances() if i["desired"] == "run"]
    assert len(insts) == 3 and {i["node"] for i in insts} == {"n2"}
    assert on_n2_max == 3
    nodes = {n["name"]: n["state"] for n in await srv.client.list_nodes()}
    assert nodes == {"n1": "ineligible", "n2": "ready"}
    types = [e["type"] for e in await srv.client.events(topic="node")]
    assert "draining" in types and "drained" in types
    assert (await srv.client.uncordon_node("n1"))["state"] == "ready"


async def test_drain_deadline_stops_what_is_left(srv: ServerHarness) -> None:
    await srv.client.register_node(NODE)
    await srv.client.apply(WEB)
    await srv.reconcile()
    await _run_all(srv)
    await srv.client.drain_node("n1", deadline=30)  # nowhere to go: no other node
    await srv.reconcile()
    assert all(i["desired"] == "run" for i in await srv.client.list_instances())
    await srv.clock.advance(31)
    # keep the node alive past the fake time jump
    await srv.client.register_node(NODE)
    await srv.reconcile(rounds=1)
    stopping = [i for i in await srv.client.list_instances() if i["desired"] == "stop"]
    assert len(stopping) == 3 and all("deadline" in i["reason"] for i in stopping)


async def test_cordon_keeps_instances_but_takes_no_new_ones(srv: ServerHarness) -> None:
    await srv.client.register_node(NODE)
    await srv.client.apply({**WEB, "services": {"web": {**WEB["services"]["web"],
                                                          "instances": 1}}})
    await srv.reconcile()
    assert (await srv.client.cordon_node("n1"))["state"] == "ineligible"
    await srv.client.apply(WEB)  # scale to 3
    await srv.reconcile()
    insts = await srv.client.list_instances()
    assert sum(1 for i in insts if i["node"] == "n1") == 1
    assert sum(1 for i in insts if i["state"] == "pending") == 2
    await srv.client.uncordon_node("n1")
    await srv.reconcile()
    assert {i["state"] for i in await srv.client.list_instances()} == {"scheduled"}
    with pytest.raises(ApiError) as err:
        await srv.client.drain_node("nope")
    assert err.value.status == 404


def test_heartbeat_ttl_grows_with_the_cluster() -> None:
    from corral.server.context import ServerConfig, heartbeat_ttl

    config = ServerConfig(data_dir=Path("/nonexistent"), node_ttl=10.0,
                          max_heartbeats_per_second=50.0)
    assert heartbeat_ttl(config, 1) == 10.0
    assert heartbeat_ttl(config, 100) == 10.0
    # 10,000 nodes heartbeating 3 times per TTL stay within 50/s
    ttl = heartbeat_ttl(config, 10_000)
    assert ttl == 600.0 and 10_000 * 3 / ttl <= 50.0


async def test_register_and_heartbeat_answer_the_current_ttl(srv: ServerHarness) -> None:
    first = await srv.client.register_node(NODE)
    assert first["ttl"] == srv.ctx.config.node_ttl
    assert first["heartbeat_interval"] == first["ttl"] / 3
    beat = await srv.client.heartbeat("n1", first["lease_id"])
    assert beat["ttl"] == first["ttl"]
