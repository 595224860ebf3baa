"""Auto-revert, canaries and the deployments API over the in-process server: a failed
rollout with `auto_revert` puts the last good spec back as a new version; a canary
deployment runs N new instances beside the old ones until it is promoted or failed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.client import ApiError
from corral.testing.server import ServerHarness, server_harness
from tests.server.rollouts import NODE, agents, deployments, live, roll, settle, spec


@pytest.fixture
async def srv(tmp_path: Path) -> Any:
    async with server_harness(tmp_path) as s:
        await s.client.register_node(NODE)
        yield s


def only_v1(inst: dict[str, Any]) -> bool:
    return bool(inst["version"] == 1)


async def test_auto_revert_brings_the_last_good_spec_back(srv: ServerHarness) -> None:
    await srv.client.apply(spec("1", auto_revert=True))
    await settle(srv)
    v1 = {i["id"] for i in await live(srv)}
    await srv.client.apply(spec("2", auto_revert=True, healthy_deadline="10s"))
    for _ in range(9):
        await srv.reconcile()
        await agents(srv, only_v1)
        await srv.clock.advance(1)
        assert len(await deployments(srv)) == 2
    await srv.clock.advance(1)
    await agents(srv, only_v1)
    await srv.reconcile(rounds=1)
    [first, failed, revert] = await deployments(srv)
    assert failed.status == "failed" and failed.version == 2
    assert (revert.cause, revert.version, revert.previous_version) == ("auto-revert", 3, 2)
    assert revert.status == "running"
    assert f"deployment {failed.id} (version 2) failed: back to version 1's spec" in \
        revert.reason
    app = await srv.client.get_app("shop")
    assert app["version"] == 3 and app["spec"]["services"]["web"]["env"] == {"V": "1"}
    stored = await srv.client.app_version("shop", 3)
    assert stored["cause"] == "auto-revert" and stored["created_at"] == srv.clock.now()
    # The version-1 instances run the spec version 3 asks for: they are kept, the
    # never-healthy version-2 instance goes.
    done = await roll(srv, only_v1)
    assert done.id == revert.id and done.status == "successful", done
    assert {i["id"] for i in await live(srv)} == v1
    types = [(e["key"], e["type"]) for e in await srv.client.events(topic="deployment")]
    assert types[-4:] == [(failed.id, "failed"), (revert.id, "created"),
                          (revert.id, "progress"), (revert.id, "successful")]
    assert first.status == "successful"


async def test_a_failed_revert_is_not_reverted_again(srv: ServerHarness) -> None:
    await srv.client.apply(spec("1", auto_revert=True, healthy_deadline="10s"))
    await settle(srv)
    await srv.client.apply(spec("2", auto_revert=True, healthy_deadline="10s"))
    await srv.reconcile()
    for inst in await live(srv):  # from now on nothing is healthy, the old ones neither
        if inst["state"] == "healthy":
            await srv.client.report_status(inst["id"], {"node": "n1", "state": "unhealthy"})
    for _ in range(40):
        await srv.reconcile()
        await agents(srv, lambda inst: False)
        await srv.clock.advance(1)
    assert [(d.version, d.cause, d.status) for d in await deployments(srv)] == [
        (1, "apply", "successful"), (2, "apply", "failed"), (3, "auto-revert", "failed")]
    assert (await srv.client.get_app("shop"))["version"] == 3


async def test_without_auto_revert_a_failure_is_left_alone(srv: ServerHarness) -> None:
    await srv.client.apply(spec("1"))
    await settle(srv)
    await srv.client.apply(spec("2", healthy_deadline="10s"))
    assert (await roll(srv, only_v1)).status == "failed"
    await roll(srv, only_v1, rounds=5)
    assert len(await deployments(srv)) == 2
    assert (await srv.client.get_app("shop"))["version"] == 2


async def test_canary_runs_beside_the_old_ones_until_promoted(srv: ServerHarness) -> None:
    await srv.client.apply(spec("1", canary=1))
    await settle(srv)
    result = await srv.client.apply(spec("2", canary=1, progress_deadline="30s"))
    [started] = result["deployments"]
    assert started["canaries"] == 1
    with pytest.raises(ApiError) as err:  # the canary is not ready yet
        await srv.client.promote_deployment(started["id"])
    assert err.value.status == 409 and "0 of 1 canaries" in err.value.message
    for _ in range(60):  # long past progress_deadline: waiting for a person is no failure
        await srv.reconcile()
        await agents(srv)
        await srv.clock.advance(1)
        insts = await live(srv)
        assert sorted(i["version"] for i in insts) == [1, 1, 1, 2]
    [dep] = await srv.client.list_deployments(app="shop", status="running")
    assert dep["id"] == started["id"] and dep["waiting_for_promotion"]
    assert "waiting for `corral deployment promote shop/web`" in dep["reason"]
    promoted = await srv.client.promote_deployment(dep["id"])
    assert promoted["promoted"] and not promoted["waiting_for_promotion"]
    assert (await srv.client.promote_deployment(dep["id"]))["promoted"]  # harmless twice
    done = await roll(srv)
    assert done.status == "successful" and done.healthy == 3
    assert {i["version"] for i in await live(srv)} == {2}
    types = [e["type"] for e in await srv.client.events(topic="deployment")
             if e["key"] == dep["id"]]
    assert types[:3] == ["created", "progress", "promoted"] and types[-1] == "successful"


async def test_a_first_deployment_has_no_canaries(srv: ServerHarness) -> None:
    result = await srv.client.apply(spec("1", canary=2))
    assert result["deployments"][0]["canaries"] == 0
    assert (await roll(srv)).status == "successful"


async def test_failing_a_canary_deployment_with_auto_revert(srv: ServerHarness) -> None:
    await srv.client.apply(spec("1", canary=1, auto_revert=True))
    await settle(srv)
    v1 = {i["id"] for i in await live(srv)}
    result = await srv.client.apply(spec("2", canary=1, auto_revert=True))
    await srv.reconcile()
    answer = await srv.client.fail_deployment(result["deployments"][0]["id"],
                                              reason="bad latency")
    assert answer["status"] == "failed" and answer["reason"] == "failed by request: bad latency"
    assert answer["reverted"]["version"] == 3
    done = await roll(srv)
    assert done.cause == "auto-revert" and done.status == "successful"
    assert {i["id"] for i in await live(srv)} == v1
    with pytest.raises(ApiError) as err:
        await srv.client.fail_deployment(answer["id"])
    assert err.value.status == 409 and "is failed" in err.value.message


async def test_deployments_api_lists_and_refuses_what_it_cannot_do(
        srv: ServerHarness) -> None:
    await srv.client.apply(spec("1"))
    await settle(srv)
    await srv.client.apply(spec("2"))
    listed = await srv.client.list_deployments(app="shop")
    assert [(d["version"], d["status"]) for d in listed] == [(1, "successful"),
                                                             (2, "running")]
    assert await srv.client.list_deployments(app="other") == []
    assert (await srv.client.get_deployment(listed[1]["id"]))["version"] == 2
    with pytest.raises(ApiError) as err:
        await srv.client.promote_deployment(listed[1]["id"])
    assert err.value.status == 409 and "no canaries" in err.value.message
    with pytest.raises(ApiError) as err:
        await srv.client.promote_deployment(listed[0]["id"])
    assert err.value.status == 409 and "is successful" in err.value.message
    with pytest.raises(ApiError) as err:
        await srv.client.get_deployment("nope")
    assert err.value.status == 404
    with pytest.raises(ApiError) as err:
        await srv.client.list_deployments(status="bogus")
    assert err.value.status == 422
    answer = await srv.client.fail_deployment(listed[1]["id"])
    assert answer["reverted"] is None  # no auto_revert
