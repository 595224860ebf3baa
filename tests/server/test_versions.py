"""History, rollback and rolling restart over the in-process server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.client import ApiError
from corral.testing.server import ServerHarness, server_harness
from tests.server.rollouts import NODE, deployments, live, roll, settle, spec


@pytest.fixture
async def srv(tmp_path: Path) -> Any:
    async with server_harness(tmp_path) as s:
        await s.client.register_node(NODE)
        yield s


def two_services(web: str, api: str) -> dict[str, Any]:
    body = spec(web)
    body["services"]["api"] = {**spec(api)["services"]["web"], "instances": 1}
    return body


async def test_history_lists_versions_changes_and_deployments(srv: ServerHarness) -> None:
    await srv.client.apply(spec("1"))
    await settle(srv)
    t1 = srv.clock.now()
    await srv.client.apply(spec("2"))
    await roll(srv)
    await srv.client.apply(spec("2", instances=4))
    versions = await srv.client.history("shop")
    assert [(v["version"], v["cause"], v["current"]) for v in versions] == [
        (1, "apply", False), (2, "apply", False), (3, "apply", True)]
    assert versions[0]["created_at"] < t1 <= versions[1]["created_at"]
    assert versions[1]["changes"] == [{"kind": "service", "name": "web", "change": "updated",
                                       "fields": ["env"], "instances": [3, 3]}]
    assert versions[2]["changes"][0]["change"] == "scaled"
    assert [[d["status"] for d in v["deployments"]] for v in versions] == [
        ["successful"], ["successful"], []]
    with pytest.raises(ApiError) as err:
        await srv.client.history("nope")
    assert err.value.status == 404


async def test_rollback_applies_an_earlier_spec_as_a_new_version(srv: ServerHarness) -> None:
    await srv.client.apply(spec("1"))
    await settle(srv)
    await srv.client.apply(spec("2"))
    await roll(srv)
    await srv.client.apply(spec("2", instances=5))  # a scale: nothing to roll back
    result = await srv.client.rollback("shop")
    assert (result["version"], result["rolled_back_to"], result["changed"]) == (4, 1, True)
    app = await srv.client.get_app("shop")
    web = app["spec"]["services"]["web"]
    assert web["env"] == {"V": "1"} and web["instances"] == 5  # the count is kept
    [dep] = result["deployments"]
    done = await roll(srv)
    assert (done.id, done.cause, done.status, done.version) == (dep["id"], "rollback",
                                                                "successful", 4)
    assert len(await live(srv)) == 5
    stored = await srv.client.app_version("shop", 4)
    assert stored["cause"] == "rollback" and stored["reason"] == "back to version 1"
    again = await srv.client.rollback("shop", version=4)  # what runs already
    assert not again["changed"] and again["deployments"] == []


async def test_rollback_of_one_service(srv: ServerHarness) -> None:
    await srv.client.apply(two_services("1", "1"))
    await settle(srv)
    await srv.client.apply(two_services("2", "2"))
    await roll(srv)
    result = await srv.client.rollback("shop", service="api", version=1)
    assert [d["service"] for d in result["deployments"]] == ["api"]
    services = (await srv.client.get_app("shop"))["spec"]["services"]
    assert services["api"]["env"] == {"V": "1"} and services["web"]["env"] == {"V": "2"}


async def test_rollback_refuses_what_it_cannot_do(srv: ServerHarness) -> None:
    await srv.client.apply(spec("1"))
    for kwargs, status, needle in [
            ({}, 409, "no earlier version"),
            ({"version": 7}, 404, "no version 7"),
            ({"service": "nope", "version": 1}, 404, "no service 'nope'")]:
        with pytest.raises(ApiError) as err:
            await srv.client.rollback("shop", **kwargs)
        assert err.value.status == status and needle in err.value.message, err.value.message
    assert (await srv.client.get_app("shop"))["version"] == 1


async def test_restart_replaces_every_instance_without_a_new_version(
        srv: ServerHarness) -> None:
    await srv.client.apply(two_services("1", "1"))
    await settle(srv)
    before = {i["id"]: i["service"] for i in await live(srv)}
    result = await srv.client.restart("shop", service="web")
    assert result["version"] == 1 and result["services"] == ["web"]
    [dep] = result["deployments"]
    done = await roll(srv)
    assert (done.id, done.cause, done.generation, done.version, done.status) == (
        dep["id"], "restart", 1, 1, "successful")
    after = await live(srv)
    web_before = {i for i, s in before.items() if s == "web"}
    assert not web_before & {i["id"] for i in after}  # every web instance replaced
    assert {i["id"] for i in after if i["service"] == "api"} == \
        {i for i, s in before.items() if s == "api"}
    assert {i["generation"] for i in after if i["service"] == "web"} == {1}
    app = await srv.client.get_app("shop")
    assert app["version"] == 1
    row = next(r for r in app["services"] if r["service"] == "web")
    assert row["deployment"]["cause"] == "restart" and row["ready"] == 3
    # a later apply keeps the generation: a scale replaces nothing
    bigger = two_services("1", "1")
    bigger["services"]["web"]["instances"] = 4
    await srv.client.apply(bigger)
    await roll(srv, rounds=3)
    assert {i["id"] for i in after} < {i["id"] for i in await live(srv)}
    assert len([d for d in await deployments(srv) if d.service == "web"]) == 2
    with pytest.raises(ApiError) as err:
        await srv.client.restart("shop", service="nope")
    assert err.value.status == 404


async def test_status_shows_each_services_latest_deployment(srv: ServerHarness) -> None:
    await srv.client.apply(spec("1"))
    await settle(srv)
    await srv.client.apply(spec("2"))
    [app] = await srv.client.list_apps()
    dep = app["services"][0]["deployment"]
    assert (dep["version"], dep["status"], dep["desired"]) == (2, "running", 3)


async def test_scale_is_a_new_version_that_replaces_nothing(srv: ServerHarness) -> None:
    await srv.client.apply(spec("1"))
    await settle(srv)
    before = {i["id"] for i in await live(srv)}
    result = await srv.client.scale("shop", service="web", instances=5)
    assert (result["version"], result["from"], result["to"], result["changed"]) == (
        2, 3, 5, True)
    await settle(srv)
    after = {i["id"] for i in await live(srv)}
    assert before < after and len(after) == 5
    assert [d.version for d in await deployments(srv)] == [1]  # no deployment started
    [*_, v2] = await srv.client.history("shop")
    assert (v2["cause"], v2["reason"]) == ("scale", "web: 3 -> 5 instances")
    down = await srv.client.scale("shop", service="web", instances=1)
    await settle(srv)
    assert down["version"] == 3 and len(await live(srv)) == 1
    same = await srv.client.scale("shop", service="web", instances=1)
    assert (same["version"], same["changed"]) == (3, False)
    for kwargs, status in [({"service": "nope", "instances": 1}, 404),
                           ({"service": "web", "instances": -1}, 422)]:
        with pytest.raises(ApiError) as err:
            await srv.client.scale("shop", **kwargs)
        assert err.value.status == status, err.value.message
    with pytest.raises(ApiError) as err:
        await srv.client.scale("nope", service="web", instances=1)
    assert err.value.status == 404
